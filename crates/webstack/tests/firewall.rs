//! The firewall rules derived from the topology: `webstack firewall show` prints what nftables'
//! own parser accepts (`nft -c`), each host opens exactly its roles' ports to the hosts that
//! need them, and `webstack firewall check` / `webstack check` validate every host.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use webstack_testkit::TempDir;
use webstack_testkit::topology::text;

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

fn repo_file(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

fn webstack(args: &[&str], config: &Path) -> Output {
    Command::new(EXE)
        .args(args)
        .arg("-c")
        .arg(config)
        .output()
        .unwrap()
}

/// `nft -c -f -` on `ruleset`.
fn nft_accepts(ruleset: &str) -> (bool, String) {
    let mut child = Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft (apt-get install nftables)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(ruleset.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), text(&out))
}

#[test]
fn every_hosts_ruleset_passes_nft_and_opens_only_what_its_roles_need() {
    for topology in ["webstack.toml", "examples/netns.toml"] {
        let config = repo_file(topology);
        for host in ["lb-01", "lb-02", "web-01", "web-02"] {
            let out = webstack(&["firewall", "show", "--host", host], &config);
            assert!(out.status.success(), "{}", text(&out));
            let ruleset = String::from_utf8_lossy(&out.stdout).into_owned();
            let (ok, said) = nft_accepts(&ruleset);
            assert!(ok, "{topology} {host}: nft -c refused:\n{said}\n{ruleset}");
            let lb = host.starts_with("lb");
            // The site's ports from anyone on the lbs only; the web port from the lbs only.
            assert_eq!(ruleset.contains("accepted_lb_http accept"), lb, "{ruleset}");
            assert_eq!(
                ruleset.contains("ip saddr @lb_hosts_v4 tcp dport { 8000 }"),
                !lb,
                "{ruleset}"
            );
            // The database from the app hosts and the other db hosts, on db hosts only.
            assert_eq!(
                ruleset.contains("ip saddr @app_hosts_v4 tcp dport { 3306 }"),
                !lb,
                "{ruleset}"
            );
            // VRRP between the lbs only where keepalived runs (not on loopback).
            let vrrp = lb && topology.contains("netns");
            assert_eq!(
                ruleset.contains("ip saddr @lb_hosts_v4 meta l4proto vrrp"),
                vrrp,
                "{topology} {host}: {ruleset}"
            );
            assert!(ruleset.contains("policy drop;"), "{ruleset}");
        }
        let out = webstack(&["firewall", "check"], &config);
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            text(&out).matches("nft -c: ok").count(),
            4,
            "{}",
            text(&out)
        );
    }
}

#[test]
fn check_runs_nft_on_every_host_and_bad_firewall_settings_are_refused() {
    let out = webstack(&["check"], &repo_file("webstack.toml"));
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("firewall: web-02: nft -c: ok"),
        "{}",
        text(&out)
    );

    let unknown = webstack(
        &["firewall", "show", "--host", "web-09"],
        &repo_file("webstack.toml"),
    );
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no host web-09") && text(&unknown).contains("lb-01"),
        "{}",
        text(&unknown)
    );

    let dir = TempDir::new("firewall-bad");
    // The default topology, its relative folders made absolute (the copy lives elsewhere).
    let site = webstack_testkit::site_dir();
    let base = std::fs::read_to_string(repo_file("webstack.toml"))
        .unwrap()
        .replace("\"site/static\"", &format!("{:?}", site.join("static")))
        .replace(
            "\"site/templates\"",
            &format!("{:?}", site.join("templates")),
        );
    for (bad, expected) in [
        (
            "[firewall]\nadmin = [\"10.0.0.0/33\"]\n",
            "firewall.admin: \"10.0.0.0/33\" is not a network",
        ),
        (
            "[firewall]\nadmin = [\"office\"]\n",
            "firewall.admin: \"office\" is not a network",
        ),
        (
            "[firewall]\nssh_port = 0\n",
            "firewall.ssh_port = 0 is not a port",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, format!("{base}\n{bad}")).unwrap();
        let out = webstack(&["check"], &path);
        assert!(!out.status.success(), "{bad}");
        assert!(
            text(&out).contains(expected),
            "{expected:?} in {}",
            text(&out)
        );
        assert!(text(&out).contains("bad.toml:"), "{}", text(&out));
    }
    // An admin network opens ssh and the admin ports from it (both families).
    let path = dir.path().join("admin.toml");
    std::fs::write(
        &path,
        format!("{base}\n[firewall]\nadmin = [\"192.168.7.0/24\", \"fd07::/64\"]\n"),
    )
    .unwrap();
    let out = webstack(&["firewall", "show", "--host", "web-01"], &path);
    let ruleset = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        ruleset.contains("elements = { 192.168.7.0/24 }"),
        "{ruleset}"
    );
    assert!(
        ruleset.contains("ip saddr @admin_v4 tcp dport { 9104, 9103, 9102, 9101, 9105, 22 }"),
        "{ruleset}"
    );
    assert!(
        ruleset.contains("ip6 saddr @admin_v6 tcp dport"),
        "{ruleset}"
    );
    let (ok, said) = nft_accepts(&ruleset);
    assert!(ok, "{said}");

    // Applying on machines without an admin network would lock the operators out: said first.
    let path = dir.path().join("lockout.toml");
    std::fs::write(&path, format!("{base}\n[firewall]\napply = true\n")).unwrap();
    let out = webstack(&["check"], &path);
    assert!(
        text(&out).contains("warning:") && text(&out).contains("firewall.admin is empty"),
        "{}",
        text(&out)
    );
    let quiet = webstack(&["check"], &repo_file("webstack.toml"));
    assert!(
        !text(&quiet).contains("firewall.admin is empty"),
        "{}",
        text(&quiet)
    );

    // The lb hosts get the flood guard on the site's ports, the others do not.
    let lb = webstack(
        &["firewall", "show", "--host", "lb-01"],
        &repo_file("webstack.toml"),
    );
    let lb = String::from_utf8_lossy(&lb.stdout).into_owned();
    assert!(
        lb.contains("ct state new update @flood_rate_v4 { ip saddr limit rate over 1000/second burst 2000 packets }"),
        "{lb}"
    );
    assert!(lb.contains("ip saddr ct count over 2560 }"), "{lb}");
    assert!(!ruleset.contains("flood"), "{ruleset}");
}
