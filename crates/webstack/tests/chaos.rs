//! The long consistency run (`bench/chaos`): faults injected one after another on a failover
//! topology under a steady write loop, with a ledger of every acknowledged post. After each
//! fault every acknowledged post is on the primary and on the replica, and both hold the same
//! posts (no write survives only on an old primary). Ignored in the suite (the suite runs
//! `failover.rs`, one fault of each kind); `bench/chaos` runs it with 100 faults and writes the
//! table it prints into `bench/results/`.
//!
//! Settings (environment): WEBSTACK_CHAOS_FAULTS (default 12), WEBSTACK_CHAOS_FREEZE_SECS
//! (default 10), WEBSTACK_CHAOS_OUT (a file for the markdown table).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use webstack_testkit::ledger::{
    HOSTS, Ledger, SETTLE, Writer, assert_ledger_kept, ids_on, mariadbd_pid, other, pid_of,
    settled_primary, wait_roles,
};
use webstack_testkit::topology::{text, toml_with_failover};
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const KINDS: [&str; 6] = [
    "stop of the primary's host",
    "kill -9 of the primary (db role + mariadbd)",
    "freeze of the primary's mariadbd",
    "switchover",
    "kill -9 of the primary during a switchover",
    "replica lagging when the primary stops",
];

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn kill_node(topology: &Topology, host: &str) {
    let (role, server) = (pid_of(topology, host, "db"), mariadbd_pid(topology, host));
    let _ = kill(Pid::from_raw(server), Signal::SIGKILL);
    let _ = kill(Pid::from_raw(role), Signal::SIGKILL);
}

/// One fault of `kind` under writes; returns the ledger of that period.
fn inject(topology: &Topology, kind: &str, freeze: Duration) -> Ledger {
    let primary = settled_primary(topology);
    let writer = Writer::start(topology.lb());
    assert!(
        writer.wait_for(10, SETTLE),
        "{kind}: writes before the fault"
    );
    match kind {
        "stop of the primary's host" => {
            assert!(topology.cli(&["stop", &primary]).status.success());
            assert!(writer.wait_for(10, SETTLE), "{kind}: writes resumed");
            assert!(topology.cli(&["start", &primary]).status.success());
        }
        "kill -9 of the primary (db role + mariadbd)" => kill_node(topology, &primary),
        "freeze of the primary's mariadbd" => {
            let server = mariadbd_pid(topology, &primary);
            kill(Pid::from_raw(server), Signal::SIGSTOP).unwrap();
            std::thread::sleep(freeze);
            // Usually gone already: its role killed it when it gave up the key.
            let _ = kill(Pid::from_raw(server), Signal::SIGCONT);
        }
        "switchover" => {
            let out = topology.db(&["switchover"]);
            assert!(out.status.success(), "{}", text(&out));
        }
        "kill -9 of the primary during a switchover" => {
            let config = topology.config_path.clone();
            let switchover = std::thread::spawn(move || {
                std::process::Command::new(EXE)
                    .args(["db", "switchover", "-c"])
                    .arg(config)
                    .output()
            });
            std::thread::sleep(Duration::from_millis(100));
            kill_node(topology, &primary);
            let _ = switchover.join();
        }
        "replica lagging when the primary stops" => {
            let replica = other(&primary);
            topology.admin_sql(replica, "STOP SLAVE IO_THREAD").unwrap();
            assert!(
                writer.wait_for(10, SETTLE),
                "{kind}: writes without the replica"
            );
            assert!(topology.cli(&["stop", &primary]).status.success());
            assert_eventually!(
                topology.detail(replica, "db")["refused"].as_str().is_some(),
                SETTLE,
                "{kind}: promotion refused"
            );
            // The old primary comes back: it has every write, it leads again.
            assert!(topology.cli(&["start", &primary]).status.success());
            topology
                .admin_sql(replica, "START SLAVE IO_THREAD")
                .unwrap();
        }
        other => panic!("unknown fault {other}"),
    }
    assert!(
        writer.wait_for(20, SETTLE),
        "{kind}: writes did not resume:\n{}",
        text(&topology.cli(&["status"]))
    );
    writer.stop()
}

#[test]
#[ignore = "long: run by bench/chaos"]
fn chaos() {
    let faults = env_number("WEBSTACK_CHAOS_FAULTS", 12) as usize;
    let freeze = Duration::from_secs(env_number("WEBSTACK_CHAOS_FREEZE_SECS", 10));
    let topology = Topology::start(EXE, "chaos", 58, &toml_with_failover(58, 2));
    let began = Instant::now();
    let mut acked = Vec::new();
    let mut rows: BTreeMap<&str, Vec<Ledger>> = BTreeMap::new();
    for n in 0..faults {
        let kind = KINDS[n % KINDS.len()];
        let ledger = inject(&topology, kind, freeze);
        let primary = settled_primary(&topology);
        wait_roles(&topology, &primary);
        acked.extend(ledger.acked.iter().copied());
        let all = Ledger {
            acked: acked.clone(),
            ..Ledger::default()
        };
        assert_ledger_kept(&topology, &all, &HOSTS);
        // Nothing only on one node: an old primary kept no write the new one lacks.
        assert_eventually!(
            ids_on(&topology, HOSTS[0]) == ids_on(&topology, HOSTS[1]),
            SETTLE,
            "after {kind}: both nodes hold the same posts (only on {}: {:?})",
            HOSTS[0],
            ids_on(&topology, HOSTS[0])
                .difference(&ids_on(&topology, HOSTS[1]))
                .take(10)
                .collect::<HashSet<_>>()
        );
        println!(
            "fault {}/{faults}: {kind}: {} acknowledged, {} unanswered, longest gap {:?} {:?}",
            n + 1,
            ledger.acked.len(),
            ledger.errors.len(),
            ledger.longest_gap,
            ledger.errors.iter().take(3).collect::<Vec<_>>()
        );
        rows.entry(kind).or_default().push(ledger);
    }
    let mut table = format!(
        "{faults} faults in {:.0} s; {} writes acknowledged, every one found on both nodes after \
         each fault, and no post on one node only.\n\n\
         | fault | runs | longest time without an acknowledged write: p50 / max | writes answered 503 (in flight, outcome unknown) | other errors |\n\
         |---|---|---|---|---|\n",
        began.elapsed().as_secs_f64(),
        acked.len()
    );
    for kind in KINDS {
        let Some(runs) = rows.get(kind) else { continue };
        let mut gaps: Vec<Duration> = runs.iter().map(|l| l.longest_gap).collect();
        gaps.sort();
        let unknown: usize = runs
            .iter()
            .flat_map(|l| &l.errors)
            .filter(|(status, body)| *status == 503 && body.contains("may or may not"))
            .count();
        let other: usize = runs.iter().map(|l| l.errors.len()).sum::<usize>() - unknown;
        table.push_str(&format!(
            "| {kind} | {} | {:.2} s / {:.2} s | {unknown} | {other} |\n",
            runs.len(),
            gaps[gaps.len() / 2].as_secs_f64(),
            gaps[gaps.len() - 1].as_secs_f64(),
        ));
    }
    println!("{table}");
    if let Ok(path) = std::env::var("WEBSTACK_CHAOS_OUT") {
        std::fs::write(path, &table).unwrap();
    }
}
