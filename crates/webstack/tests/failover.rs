//! Database failover end to end, on real processes: three etcd members, two real `mariadbd`
//! nodes, the app's router and the lb. A writer records every acknowledged post (the ledger)
//! while faults are injected; after each one, every acknowledged post must be on the new
//! primary and on the replica. Times are printed, never asserted (the machine is shared); the
//! long run with 100 faults is `bench/chaos`.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use webstack_testkit::ledger::{
    HOSTS, SETTLE, Writer, assert_ledger_kept, assert_only_in_flight_losses, mariadbd_pid, other,
    pid_of, role_of, settled_primary, under_writes, wait_roles,
};
use webstack_testkit::topology::{text, toml_with_failover};
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

fn post(topology: &Topology) -> webstack_testkit::http::Response {
    webstack_testkit::http::request(
        topology.lb(),
        "POST",
        "/api/posts",
        &[("Content-Type", "application/json")],
        br#"{"author":"t","body":"one"}"#,
    )
    .unwrap()
}

#[test]
fn the_primary_fails_over_and_no_acknowledged_write_is_lost() {
    let topology = Topology::start(EXE, "failover", 56, &toml_with_failover(56, 2));
    wait_roles(&topology, "web-01");
    let status = text(&topology.cli(&["status"]));
    assert_eq!(status.matches("member, leader").count(), 1, "{status}");
    // Semi-sync comes on once the replica has connected and caught up.
    assert_eventually!(
        {
            let view = text(&topology.db(&["status"]));
            view.contains("primary: web-01") && view.contains("semi-sync on")
        },
        SETTLE,
        "etcd's view: {}",
        text(&topology.db(&["status"]))
    );

    // Operator commands refuse what would be wrong, and say why.
    for (args, expected) in [
        (
            vec!["failover", "--force", "web-02"],
            "web-01 is the primary",
        ),
        (
            vec!["failover", "--force", "lb-01"],
            "\"lb-01\" is not a db host",
        ),
        (
            vec!["switchover", "--to", "web-01"],
            "web-01 is already the primary",
        ),
    ] {
        let out = topology.db(&args);
        assert!(
            !out.status.success() && text(&out).contains(expected),
            "{args:?}: {}",
            text(&out)
        );
    }
    let mut rebuild_primary = std::process::Command::new(EXE);
    rebuild_primary
        .args(["db", "rebuild", "web-01", "-c"])
        .arg(&topology.config_path)
        .arg("--state-dir")
        .arg(topology.state_dir());
    let out = webstack_testkit::topology::output_within(&mut rebuild_primary, SETTLE);
    assert!(
        !out.status.success() && text(&out).contains("web-01 is the primary"),
        "{}",
        text(&out)
    );

    // Read-your-writes across the switch: a session's post, written before, is read at once
    // on both web hosts after the switchover too (its cookie's GTID; a replica that has not
    // applied it yet waits for it).
    let created = post(&topology);
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_u64().unwrap();
    let cookie = created
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_string();
    let read_own = |what: &str| {
        for web in [topology.web(1), topology.web(2)] {
            let read = webstack_testkit::http::get(
                web,
                &format!("/api/posts/{id}"),
                &[("Cookie", cookie.as_str())],
            )
            .unwrap();
            assert_eq!(
                read.status, 200,
                "{what}: {web} must show the session's own post"
            );
        }
    };
    read_own("before the switchover");

    // Planned switchover: no write refused, the old primary becomes the replica.
    let ledger = under_writes(&topology, "switchover", || {
        let out = topology.db(&["switchover"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("web-02 is the primary"),
            "{}",
            text(&out)
        );
    });
    assert!(
        ledger.errors.is_empty(),
        "switchover refused writes: {:?}",
        ledger.errors
    );
    wait_roles(&topology, "web-02");
    assert_ledger_kept(&topology, &ledger, &HOSTS);
    read_own("after the switchover");

    // The primary's host stopped (planned): it hands over before it stops.
    let ledger = under_writes(&topology, "stop of the primary's host", || {
        assert!(topology.cli(&["stop", "web-02"]).status.success());
    });
    assert!(
        ledger.errors.is_empty(),
        "a planned stop refused writes: {:?}",
        ledger.errors
    );
    assert_eventually!(
        role_of(&topology, "web-01") == "primary",
        SETTLE,
        "web-01 promoted"
    );
    assert_ledger_kept(&topology, &ledger, &["web-01"]);
    // It comes back as a replica of the new primary, never as a second primary.
    let out = topology.cli(&["start", "web-02"]);
    assert!(out.status.success(), "{}", text(&out));
    wait_roles(&topology, "web-01");
    assert_ledger_kept(&topology, &ledger, &HOSTS);

    // Host death: the primary's db role and its mariadbd killed together. Its lease runs out and
    // web-02 takes over, unless the restarted role is back first and has every write (then it
    // keeps the key: a restart within the lease is not a failover). Either way nothing is lost.
    let (role, server) = (
        pid_of(&topology, "web-01", "db"),
        mariadbd_pid(&topology, "web-01"),
    );
    let ledger = under_writes(
        &topology,
        "kill -9 of the primary (db role + mariadbd)",
        || {
            let _ = kill(Pid::from_raw(server), Signal::SIGKILL);
            let _ = kill(Pid::from_raw(role), Signal::SIGKILL);
        },
    );
    assert_only_in_flight_losses(&ledger, "kill -9");
    let primary = settled_primary(&topology);
    assert_ledger_kept(&topology, &ledger, &HOSTS);

    // A frozen primary (SIGSTOP of mariadbd): its role gives up the key and kills it (a thawed
    // one that still ran would be killed as soon as it answers); it rejoins as a replica.
    let (frozen, successor) = (primary.clone(), other(&primary));
    let server = mariadbd_pid(&topology, &frozen);
    let ledger = under_writes(&topology, "freeze of the primary's mariadbd", || {
        kill(Pid::from_raw(server), Signal::SIGSTOP).unwrap();
        assert_eventually!(
            role_of(&topology, successor) == "primary",
            SETTLE,
            "{successor} promoted"
        );
        std::thread::sleep(Duration::from_secs(1));
        // Usually gone already: its role killed it when it gave up the key.
        let _ = kill(Pid::from_raw(server), Signal::SIGCONT);
    });
    assert_only_in_flight_losses(&ledger, "freeze");
    wait_roles(&topology, successor);
    assert_ledger_kept(&topology, &ledger, &HOSTS);
    let log = topology.log(&frozen, "db");
    assert!(
        log.contains("gave up the leader key and killed it")
            || log.contains("fencing: killing mariadbd"),
        "the frozen old primary was fenced (killed)"
    );
    let (primary, replica) = (successor, frozen.as_str());

    // One etcd member lost, a follower: nothing changes for the site. (The raft leader's loss
    // stops lease renewals for an election, about as long as the primary's fencing allows:
    // the primary may fence itself and fail over; not what this step is about.)
    let follower = ["lb-01", "web-01", "web-02"]
        .into_iter()
        .find(|h| topology.detail(h, "etcd")["leader"] == false)
        .expect("two of three members are followers");
    let member = pid_of(&topology, follower, "etcd");
    let ledger = under_writes(&topology, "kill -9 of an etcd member", || {
        kill(Pid::from_raw(member), Signal::SIGKILL).unwrap();
    });
    assert!(
        ledger.errors.is_empty(),
        "an etcd member's loss refused writes: {:?}",
        ledger.errors
    );
    wait_roles(&topology, primary);

    // A replica that stopped receiving (lag) when the primary goes: no automatic promotion,
    // the reason in `status`; an operator may force it.
    topology.admin_sql(replica, "STOP SLAVE IO_THREAD").unwrap();
    let writer = Writer::start(topology.lb());
    assert!(
        writer.wait_for(10, SETTLE),
        "writes go on without the replica (semi-sync off)"
    );
    let ledger = writer.stop();
    assert!(ledger.errors.is_empty(), "{:?}", ledger.errors);
    assert!(topology.cli(&["stop", primary]).status.success());
    assert_eventually!(
        topology.detail(replica, "db")["refused"]
            .as_str()
            .is_some_and(|why| why.contains("semi-sync was off") && why.contains("--force")),
        SETTLE,
        "promotion refused with the reason: {}",
        text(&topology.cli(&["status"]))
    );
    assert!(text(&topology.cli(&["status"])).contains("promotion refused"));
    let replica_admin = if replica == "web-01" {
        "127.0.56.11:9103"
    } else {
        "127.0.56.12:9103"
    };
    let metrics = webstack_testkit::http::get(replica_admin.parse().unwrap(), "/metrics", &[])
        .unwrap()
        .text();
    assert!(
        metrics.contains("webstack_db_promotion_refused 1")
            && metrics.contains("webstack_db_primary 0"),
        "{metrics}"
    );
    assert_eq!(
        post(&topology).status,
        503,
        "no primary: writes refused after the hold"
    );
    let out = topology.db(&["failover", "--force", replica]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("may be lost"),
        "the operator is told: {}",
        text(&out)
    );
    assert_eq!(post(&topology).status, 201);
    // The old primary's extra writes make it diverge: it says so instead of replicating (the
    // start may see it ready for an instant before the new primary's refusal arrives).
    let _ = topology.cli(&["start", primary]);
    assert_eventually!(
        topology.detail(primary, "db")["blocked"]
            .as_str()
            .is_some_and(|why| why.starts_with("diverged") && why.contains("rebuild")),
        SETTLE,
        "the old primary reports its divergence: {}",
        text(&topology.cli(&["status"]))
    );
    // Rebuilt from the new primary: a replica again, with exactly the new primary's posts (the
    // writes only it had are in the folder kept aside).
    let mut rebuild = std::process::Command::new(EXE);
    rebuild
        .args(["db", "rebuild", primary, "-c"])
        .arg(&topology.config_path)
        .arg("--state-dir")
        .arg(topology.state_dir());
    let out = webstack_testkit::topology::output_within(&mut rebuild, SETTLE * 2);
    assert!(out.status.success(), "{}", text(&out));
    wait_roles(&topology, replica);
    assert_eventually!(
        webstack_testkit::ledger::ids_on(&topology, primary)
            == webstack_testkit::ledger::ids_on(&topology, replica),
        SETTLE,
        "the rebuilt node holds the primary's posts"
    );
}

#[test]
fn db_commands_need_failover() {
    let topology = Topology::write(
        EXE,
        "failover-none",
        59,
        &webstack_testkit::topology::toml_with_db(59, 2, ""),
    );
    let out = topology.db(&["status"]);
    assert!(
        !out.status.success() && text(&out).contains("has no failover"),
        "{}",
        text(&out)
    );
}

#[test]
fn failover_needs_an_odd_number_of_etcd_members() {
    let text =
        toml_with_failover(57, 2).replacen("roles = [\"lb\", \"etcd\"]", "roles = [\"lb\"]", 1);
    let topology = Topology::write(EXE, "failover-check", 57, &text);
    let out = std::process::Command::new(EXE)
        .args(["check", "-c"])
        .arg(&topology.config_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = String::from_utf8_lossy(&out.stderr);
    assert!(
        message.contains("role etcd is on 2 host(s) (web-01, web-02)")
            && message.contains("odd number of at least 3"),
        "{message}"
    );
}
