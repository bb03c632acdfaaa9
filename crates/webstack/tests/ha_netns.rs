//! The load balancer's address in namespace mode (`webstack up --netns`): every host in a network
//! namespace of its own, keepalived (VRRP) moving the VIP between lb-01 and lb-02. From the
//! client's namespace a request loop runs against the VIP while the holder's keepalived is
//! killed, its lb role is killed, its link goes down (the host dies) and it is stopped cleanly.
//! Needs root (CI is root); skipped with the reason where namespaces cannot be made.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use webstack_testkit::requests::{Outcomes, RequestLoop};
use webstack_testkit::topology::{TEST_CLIENT_LIMITS, cannot_make_namespaces};
use webstack_testkit::{Topology, assert_eventually, site_dir};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const LBS: [&str; 2] = ["lb-01", "lb-02"];
const VIP: &str = "10.78.0.10";

/// A prefix of our own per test process: namespaces of a run never meet another's.
fn prefix() -> String {
    format!("t{}-", std::process::id() % 100_000)
}

fn topology_text(prefix: &str) -> String {
    let site = site_dir();
    format!(
        "[netns]\nprefix = \"{prefix}\"\nnetwork = \"10.78.0.0/24\"\nclient = \"10.78.0.100\"\n\n\
         [site]\nname = \"www.foobar.com\"\n\n\
         [[host]]\nname = \"lb-01\"\naddress = \"10.78.0.8\"\nroles = [\"lb\"]\n\n\
         [[host]]\nname = \"lb-02\"\naddress = \"10.78.0.9\"\nroles = [\"lb\"]\n\n\
         [[host]]\nname = \"web-01\"\naddress = \"10.78.0.11\"\nroles = [\"web\", \"app\"]\n\n\
         [[host]]\nname = \"web-02\"\naddress = \"10.78.0.12\"\nroles = [\"web\", \"app\"]\n\n\
         [lb]\nvip = \"{VIP}\"\n\n[lb.health]\ninterval = \"200ms\"\ntimeout = \"2s\"\n\n\
         [lb.tls]\nredirect_http = false\n\n\
         [web]\nstatic_root = \"{}\"\nexpose_server_name = true\n\n[app]\ntemplates = \"{}\"\n",
        site.join("static").display(),
        site.join("templates").display()
    )
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lb hosts whose eth0 carries the VIP: the ground truth, whatever status says.
fn vip_on(prefix: &str) -> Vec<&'static str> {
    LBS.into_iter()
        .filter(|h| {
            ip(&[
                "-n",
                &format!("{prefix}{h}"),
                "-o",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .contains(&format!(" {VIP}/"))
        })
        .collect()
}

fn holders(topology: &Topology) -> Vec<&'static str> {
    LBS.into_iter()
        .filter(|h| topology.detail(h, "lb")["vip"]["holder"] == true)
        .collect()
}

/// Waits for one holder, as both its status and the interfaces say; returns it.
fn settled(topology: &Topology, prefix: &str) -> &'static str {
    assert_eventually!(
        vip_on(prefix).len() == 1 && holders(topology) == vip_on(prefix),
        Duration::from_secs(30),
        "one lb holds the VIP: on {:?}, status {:?}",
        vip_on(prefix),
        holders(topology)
    );
    vip_on(prefix)[0]
}

fn other(host: &str) -> &'static str {
    if host == "lb-01" { "lb-02" } else { "lb-01" }
}

/// The switch's port of `host` (`port<i>`, i its place in the topology).
fn switch_port(host: &str) -> &'static str {
    if host == "lb-01" { "port0" } else { "port1" }
}

struct Scenario {
    name: &'static str,
    outcomes: Outcomes,
}

/// Runs `fault` on the holder under a request loop from the client namespace; checks that the
/// other lb took the address and the client saw no failure after the first second.
fn under_requests(
    topology: &Topology,
    prefix: &str,
    name: &'static str,
    fault: impl FnOnce(&'static str),
) -> (Scenario, &'static str) {
    let holder = settled(topology, prefix);
    let client = PathBuf::from("/run/netns").join(format!("{prefix}client"));
    let vip: SocketAddr = format!("{VIP}:8080").parse().unwrap();
    let requests = RequestLoop::start(Some(client), vip);
    std::thread::sleep(Duration::from_millis(700));
    let fault_at = Instant::now();
    fault(holder);
    std::thread::sleep(Duration::from_millis(2500));
    let outcomes = requests.finish();
    // When each failure ended, from the fault (a timeout ends 10 s after its request began).
    let failed: Vec<String> = outcomes
        .0
        .iter()
        .filter(|(_, r)| *r != Ok(200))
        .take(3)
        .map(|(t, r)| format!("{:+.3}s {r:?}", signed_secs(*t, fault_at)))
        .collect();
    eprintln!(
        "{name} ({holder}): {} answered, {} failed over {:?}, longest silence {:?}: {failed:?}",
        outcomes.answered(),
        outcomes.failures().len(),
        outcomes.failing_for(),
        outcomes.longest_silence(),
    );
    assert!(outcomes.answered() > 10, "{name}: the loop ran");
    assert!(
        outcomes.failing_for() < Duration::from_secs(1),
        "{name}: the client saw failures for {:?}",
        outcomes.failing_for()
    );
    assert_eq!(
        settled(topology, prefix),
        other(holder),
        "{name}: the address moved"
    );
    (Scenario { name, outcomes }, holder)
}

/// `t - from` in seconds, negative when `t` came first.
fn signed_secs(t: Instant, from: Instant) -> f64 {
    match t.checked_duration_since(from) {
        Some(after) => after.as_secs_f64(),
        None => -(from - t).as_secs_f64(),
    }
}

/// Waits until `host`'s lb is back and a standby; the holder keeps the address (nopreempt).
fn back_as_standby(topology: &Topology, prefix: &str, host: &str) {
    assert_eventually!(
        topology.unit(host, "lb")["healthy"] == true
            && topology.detail(host, "lb")["vip"]["state"] == "backup",
        Duration::from_secs(30),
        "{host} back as a standby: {}",
        topology.detail(host, "lb")
    );
    for _ in 0..5 {
        assert_eq!(vip_on(prefix), vec![other(host)], "no split brain");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
}

fn run_scenarios(topology: &Topology, prefix: &str) -> Vec<Scenario> {
    let mut done = Vec::new();
    let host_dir = |host: &str| topology.state_dir.join("hosts").join(host);

    // Both of keepalived's processes at once (as the OOM killer would): no priority-0 advert,
    // the other lb takes over after three missed adverts.
    let (scenario, victim) = under_requests(topology, prefix, "keepalived killed", |holder| {
        let address = if holder == "lb-01" {
            "10.78.0.8"
        } else {
            "10.78.0.9"
        };
        for file in ["pid", "vrrp.pid"] {
            let pid_file = host_dir(holder).join(format!("run/keepalived-{address}.{file}"));
            let pid = std::fs::read_to_string(&pid_file).expect("keepalived's pid files");
            kill(pid.trim().parse().unwrap());
        }
    });
    done.push(scenario);
    back_as_standby(topology, prefix, victim);

    let (scenario, victim) = under_requests(topology, prefix, "lb role killed", |holder| {
        kill(topology.unit(holder, "lb")["pid"].as_u64().expect("a pid") as u32);
    });
    // What the killed lb was serving fails, but at once: the kernel's FIN or reset for its
    // connections goes out even when keepalived, killed with it, took the address away first
    // (the VIP's sockets are transparent), and the lb started again completes no handshake on
    // an address it then takes away.
    let hung = scenario.outcomes.hung();
    assert!(hung.is_empty(), "lb role killed: requests hung: {hung:?}");
    done.push(scenario);
    back_as_standby(topology, prefix, victim);

    let (scenario, victim) = under_requests(topology, prefix, "link down", |holder| {
        ip(&[
            "-n",
            &format!("{prefix}switch"),
            "link",
            "set",
            switch_port(holder),
            "down",
        ]);
    });
    done.push(scenario);
    ip(&[
        "-n",
        &format!("{prefix}switch"),
        "link",
        "set",
        switch_port(victim),
        "up",
    ]);
    back_as_standby(topology, prefix, victim);

    let (scenario, victim) = under_requests(topology, prefix, "clean stop", |holder| {
        let out = topology.cli(&["stop", &format!("{holder}/lb")]);
        assert!(out.status.success(), "{out:?}");
    });
    // No connection is refused, reset or left hanging. The old holder completes no handshake
    // once it starts handing the address over (a SYN then is sent again a second later, to the
    // new holder): one that met the new holder's announcement would have its request go to a
    // host that never saw the connection, answered with a reset, or, where a TIME_WAIT socket
    // or conntrack entry of an earlier connection on the same ports is left there (this loop
    // reuses its ports within seconds), with silence until the client gives up.
    let failures = scenario.outcomes.failures();
    assert!(
        failures.is_empty(),
        "a clean stop fails no request: {failures:?}"
    );
    done.push(scenario);
    let out = topology.cli(&["start", &format!("{victim}/lb")]);
    assert!(out.status.success(), "{out:?}");
    back_as_standby(topology, prefix, victim);
    done
}

#[test]
fn keepalived_moves_the_vip_between_namespaces_and_up_removes_them() {
    if let Some(reason) = cannot_make_namespaces(&format!("{}probe", prefix())) {
        eprintln!("skipped: {reason}");
        return;
    }
    let prefix = prefix();
    let mut topology = Topology::start_netns(
        EXE,
        "ha-netns",
        &(topology_text(&prefix) + TEST_CLIENT_LIMITS),
    );
    // Nothing of this mode in the machine's own namespace.
    assert!(!ip(&["-o", "addr"]).contains("10.78.0."));
    assert!(!ip(&["route"]).contains("10.78.0."));
    let scenarios = run_scenarios(&topology, &prefix);
    for s in &scenarios {
        webstack_testkit::requests::record("namespaces (VRRP)", s.name, &s.outcomes);
    }

    // `up` crashes: its hosts stop (they get SIGTERM when it dies), its namespaces stay; the
    // next `up` on the same state dir proves them its own, removes them and starts again.
    let ours = |prefix: &str| -> Vec<String> {
        ip(&["netns", "list"])
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(str::to_string)
            .collect()
    };
    // SIGUSR1 (logrotate's postrotate) reaches every host's roles and leaves `up` running.
    let up = topology.up_pid().expect("up runs");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up as i32),
        nix::sys::signal::Signal::SIGUSR1,
    )
    .unwrap();
    let host_log = |host: &str| {
        std::fs::read_to_string(topology.state_dir().join(format!("logs/{host}.log")))
            .unwrap_or_default()
    };
    assert_eventually!(
        topology
            .up_log()
            .contains("SIGUSR1: access logs reopening on")
            && host_log("lb-01").contains("SIGUSR1: access logs reopening in"),
        Duration::from_secs(10),
        "SIGUSR1 passed on to the hosts:\n{}\n{}",
        topology.up_log(),
        host_log("lb-01")
    );
    settled(&topology, &prefix);
    kill(up);
    assert!(topology.stop().is_some(), "the killed up is reaped");
    assert_eq!(ours(&prefix).len(), 6, "a crashed up leaves its namespaces");
    topology.restart();
    assert!(
        topology
            .up_log()
            .contains("removing namespaces left by an earlier")
    );
    settled(&topology, &prefix);

    assert!(
        topology.stop().is_some_and(|s| s.success()),
        "{}",
        topology.up_log()
    );
    assert_eq!(
        ours(&prefix),
        Vec::<String>::new(),
        "up removes every namespace it made"
    );
}
