//! The firewall proved in namespace mode (`webstack up --netns`, where each host applies its
//! rules at start): the whole connection matrix from every host and from the client, the site
//! working end to end through the rules (requests, writes replicated, VRRP, every Prometheus
//! target scraped), only our table in each host, and a ruleset without the VRRP rule caught:
//! both lbs take the site's address. Needs root (CI is root); skipped with the reason where
//! namespaces cannot be made.

use std::process::Command;
use std::time::Duration;

use webstack_testkit::topology::{TEST_CLIENT_LIMITS, cannot_make_namespaces};
use webstack_testkit::{Topology, assert_eventually, site_dir};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const NET: &str = "10.79.0";

fn prefix() -> String {
    format!("f{}-", std::process::id() % 100_000)
}

fn topology_text(prefix: &str) -> String {
    let site = site_dir();
    format!(
        "[netns]\nprefix = \"{prefix}\"\nnetwork = \"{NET}.0/24\"\nclient = \"{NET}.100\"\n\n\
         [site]\nname = \"www.foobar.com\"\n\n\
         [[host]]\nname = \"lb-01\"\naddress = \"{NET}.8\"\nroles = [\"lb\", \"etcd\", \"monitor\"]\n\n\
         [[host]]\nname = \"lb-02\"\naddress = \"{NET}.9\"\nroles = [\"lb\"]\n\n\
         [[host]]\nname = \"web-01\"\naddress = \"{NET}.11\"\nroles = [\"web\", \"app\", \"db\", \"etcd\"]\n\n\
         [[host]]\nname = \"web-02\"\naddress = \"{NET}.12\"\nroles = [\"web\", \"app\", \"db\", \"etcd\"]\n\n\
         [lb]\nvip = \"{NET}.10\"\nport = 80\n\n[lb.health]\ninterval = \"200ms\"\ntimeout = \"2s\"\n\n\
         [lb.tls]\nredirect_http = false\n\n\
         [web]\nstatic_root = \"{}\"\nexpose_server_name = true\n\n[app]\ntemplates = \"{}\"\n\n\
         [db]\nprimary = \"web-01\"\npoll_interval = \"200ms\"\n\n\
         [monitor]\nscrape_interval = \"1s\"\n",
        site.join("static").display(),
        site.join("templates").display()
    )
}

/// Runs `command` in namespace `<prefix><name>` (a host, or `client`).
fn inside(prefix: &str, name: &str, command: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &format!("{prefix}{name}")])
        .args(command)
        .output()
        .expect("ip netns exec")
}

/// Whether a TCP connection from namespace `from` to `to:port` is accepted within 2 s
/// (refused and dropped both count as not).
fn connects(prefix: &str, from: &str, to: &str, port: u16) -> bool {
    let script = format!("echo > /dev/tcp/{to}/{port}");
    inside(prefix, from, &["timeout", "2", "bash", "-c", &script])
        .status
        .success()
}

fn holders(topology: &Topology) -> Vec<&'static str> {
    ["lb-01", "lb-02"]
        .into_iter()
        .filter(|h| topology.detail(h, "lb")["vip"]["holder"] == true)
        .collect()
}

#[test]
fn the_rules_allow_exactly_the_topologys_traffic_and_the_site_works_through_them() {
    if let Some(why) = cannot_make_namespaces(&format!("{}probe", prefix())) {
        eprintln!("skipped: {why}");
        return;
    }
    let prefix = prefix();
    let mut topology = Topology::start_netns(
        EXE,
        "firewall-netns",
        &(topology_text(&prefix) + TEST_CLIENT_LIMITS),
    );
    let address = |host: &str| match host {
        "lb-01" => format!("{NET}.8"),
        "lb-02" => format!("{NET}.9"),
        "web-01" => format!("{NET}.11"),
        "web-02" => format!("{NET}.12"),
        _ => format!("{NET}.10"),
    };

    // Only our table, in every host.
    for host in ["lb-01", "lb-02", "web-01", "web-02"] {
        let tables = inside(&prefix, host, &["nft", "list", "tables"]);
        assert_eq!(
            String::from_utf8_lossy(&tables.stdout).trim(),
            "table inet webstack",
            "{host}"
        );
    }

    // The matrix: (from, to, port, allowed).
    let matrix: &[(&str, &str, u16, bool)] = &[
        ("client", "vip", 80, true),
        ("client", "lb-02", 80, true),
        ("client", "web-01", 8000, false),
        ("client", "web-01", 9000, false),
        ("client", "web-01", 3306, false),
        ("client", "web-01", 9101, false),
        ("client", "lb-01", 9100, false),
        ("client", "lb-01", 9200, false),
        ("client", "web-01", 22, false),
        ("lb-01", "web-01", 8000, true),
        ("lb-02", "web-02", 8000, true),
        ("lb-01", "web-01", 9000, false),
        ("lb-02", "web-01", 3306, false),
        ("web-02", "web-01", 3306, true),
        ("web-01", "web-02", 3306, true),
        ("web-02", "web-01", 8000, false),
        ("web-02", "web-01", 2379, true),
        ("web-02", "lb-01", 2380, true),
        ("lb-02", "web-01", 2379, false),
        ("lb-01", "web-02", 9103, true),
        ("lb-01", "web-02", 9105, true),
        ("lb-02", "web-02", 9103, false),
        ("web-01", "lb-01", 9290, false),
    ];
    let mut wrong = Vec::new();
    for (from, to, port, allowed) in matrix {
        if connects(&prefix, from, &address(to), *port) != *allowed {
            wrong.push(format!(
                "{from} -> {to}:{port} should be {}",
                if *allowed { "open" } else { "closed" }
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // The site through the rules: a write from the client lands on the primary and is read
    // back from the replica; one lb holds the VIP; Prometheus scrapes every target.
    let post = inside(
        &prefix,
        "client",
        &[
            "curl",
            "-s",
            "-m",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"author":"fw","body":"through the firewall"}"#,
            &format!("http://{NET}.10/api/posts"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&post.stdout), "201");
    assert_eventually!(
        String::from_utf8_lossy(
            &inside(
                &prefix,
                "client",
                &[
                    "curl",
                    "-s",
                    "-m",
                    "5",
                    &format!("http://{NET}.10/api/posts?limit=5")
                ]
            )
            .stdout
        )
        .contains("through the firewall"),
        Duration::from_secs(20),
        "the post is read back through the lb"
    );
    assert_eventually!(
        topology.detail("web-02", "db")["lag_transactions"] == 0
            && topology.detail("web-02", "db")["io_running"] == "Yes",
        Duration::from_secs(20),
        "the replica replicates through the rules: {}",
        topology.detail("web-02", "db")
    );
    assert_eventually!(
        holders(&topology).len() == 1,
        Duration::from_secs(20),
        "one lb holds the VIP: {:?}",
        holders(&topology)
    );
    let targets = || {
        let out = inside(
            &prefix,
            "lb-01",
            &[
                "curl",
                "-s",
                "-m",
                "5",
                &format!("http://{NET}.8:9290/api/v1/targets"),
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap_or_default()
    };
    assert_eventually!(
        targets()["data"]["activeTargets"]
            .as_array()
            .is_some_and(|t| !t.is_empty() && t.iter().all(|t| t["health"] == "up")),
        Duration::from_secs(60),
        "every target scraped through the rules: {}",
        targets()
    );

    // The rules' counters, as each host's supervisor exports them: the client's connections
    // were counted by the lb that took them.
    let host_metrics = |host: &str| {
        String::from_utf8_lossy(
            &inside(
                &prefix,
                host,
                &[
                    "curl",
                    "-s",
                    "-m",
                    "5",
                    &format!("http://{}:9105/metrics", address(host)),
                ],
            )
            .stdout,
        )
        .into_owned()
    };
    let counted = |host: &str| {
        host_metrics(host).lines().any(|l| {
            l.starts_with("webstack_firewall_packets_total{rule=\"accepted_lb_http\"}")
                && !l.ends_with(" 0")
        })
    };
    assert_eventually!(
        counted("lb-01") || counted("lb-02"),
        Duration::from_secs(10),
        "an lb's accept counter in its metrics:\n{}\n{}",
        host_metrics("lb-01"),
        host_metrics("lb-02")
    );
    assert!(
        host_metrics("web-01")
            .contains("webstack_firewall_packets_total{rule=\"accepted_web_from_lb\"}"),
        "{}",
        host_metrics("web-01")
    );

    // Rulesets without the VRRP accept rule (what a renderer that forgot it would make): the
    // lbs stop hearing each other and both take the address; the right rules again: one
    // holder. (On one lb alone it depends on the tie-break: the higher address keeps or takes
    // the VIP and the lower one, still hearing it, yields; so both lbs get the broken rules.)
    let config = topology.config_path.to_string_lossy().into_owned();
    for lb in ["lb-01", "lb-02"] {
        let shown = Command::new(EXE)
            .args(["firewall", "show", "--host", lb, "-c", &config])
            .output()
            .unwrap();
        let without_vrrp: String = String::from_utf8_lossy(&shown.stdout)
            .lines()
            // The accept rule only: VRRP stays untracked, as a copy of the rules would keep it.
            .filter(|l| !l.contains("counter name accepted_lb_vrrp accept"))
            .map(|l| format!("{l}\n"))
            .collect();
        let file = topology.dir.path().join(format!("{lb}-without-vrrp.nft"));
        std::fs::write(&file, &without_vrrp).unwrap();
        let applied = inside(&prefix, lb, &["nft", "-f", &file.to_string_lossy()]);
        assert!(applied.status.success(), "{applied:?}");
    }
    assert_eventually!(
        holders(&topology).len() == 2,
        Duration::from_secs(20),
        "without the VRRP rule both lbs take the address: {:?}",
        holders(&topology)
    );
    for lb in ["lb-01", "lb-02"] {
        let restored = inside(
            &prefix,
            lb,
            &[EXE, "firewall", "apply", "--host", lb, "-c", &config],
        );
        assert!(restored.status.success(), "{restored:?}");
    }
    assert_eventually!(
        holders(&topology).len() == 1,
        Duration::from_secs(20),
        "with the rule back, one holder: {:?}",
        holders(&topology)
    );
    assert!(topology.stop().is_some_and(|s| s.success()));
}
