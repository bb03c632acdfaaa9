//! A writer that posts through the lb in a loop and records every acknowledged post id (the
//! ledger), each refusal, and the longest time without an acknowledgement: what the failover
//! tests and the chaos run check a database failover against.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Topology;
use crate::assert_eventually;
use crate::topology::text;

/// The db hosts of `toml_with_failover`.
pub const HOSTS: [&str; 2] = ["web-01", "web-02"];
/// Long enough for a failover on a loaded machine plus a replica catching up.
pub const SETTLE: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// Ids of posts answered 201.
    pub acked: Vec<u64>,
    /// Every other answer: status (0: no HTTP answer) and body.
    pub errors: Vec<(u16, String)>,
    /// The longest time between two acknowledgements (a held write counts when answered).
    pub longest_gap: Duration,
}

pub struct Writer {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts posting to `lb` (`POST /api/posts`), one request at a time.
    pub fn start(lb: SocketAddr) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let thread = {
            let (stop, ledger) = (stop.clone(), ledger.clone());
            std::thread::spawn(move || {
                let mut last = Instant::now();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let body =
                        serde_json::json!({"author": "ledger", "body": format!("write {n}")})
                            .to_string();
                    let answer = crate::http::request(
                        lb,
                        "POST",
                        "/api/posts",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    );
                    let mut ledger = ledger.lock().unwrap();
                    match answer {
                        Ok(response) if response.status == 201 => {
                            let now = Instant::now();
                            ledger.longest_gap = ledger.longest_gap.max(now - last);
                            last = now;
                            if let Some(id) = response.json()["id"].as_u64() {
                                ledger.acked.push(id);
                            }
                        }
                        Ok(response) => ledger.errors.push((response.status, response.text())),
                        Err(error) => ledger.errors.push((0, error)),
                    }
                    drop(ledger);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Writer {
            stop,
            ledger,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Waits (bounded) until `more` further writes have been acknowledged.
    pub fn wait_for(&self, more: usize, limit: Duration) -> bool {
        let target = self.acked() + more;
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if self.acked() >= target {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops after the request in flight and returns the ledger.
    pub fn stop(mut self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.ledger.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn role_of(topology: &Topology, host: &str) -> String {
    topology.detail(host, "db")["role"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Waits until `primary` is the primary and every other node a ready replica.
pub fn wait_roles(topology: &Topology, primary: &str) {
    assert_eventually!(
        HOSTS.iter().all(|h| {
            let unit = topology.unit(h, "db");
            let ready = unit["healthy"] == true;
            ready && (role_of(topology, h) == "primary") == (*h == primary)
        }),
        SETTLE,
        "{primary} primary and the other db node a ready replica:\n{}",
        text(&topology.cli(&["status"]))
    );
}

pub fn ids_on(topology: &Topology, host: &str) -> HashSet<u64> {
    topology
        .admin_sql(host, "SELECT id FROM foobar.posts")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|id| id.parse().ok())
        .collect()
}

/// Every acknowledged id is on every node in `hosts` (replicas may need a moment to apply).
pub fn assert_ledger_kept(topology: &Topology, ledger: &Ledger, hosts: &[&str]) {
    for host in hosts {
        assert_eventually!(
            {
                let ids = ids_on(topology, host);
                ledger.acked.iter().all(|id| ids.contains(id))
            },
            SETTLE,
            "every acknowledged post is on {host} (missing: {:?})",
            {
                let ids = ids_on(topology, host);
                ledger
                    .acked
                    .iter()
                    .filter(|id| !ids.contains(id))
                    .take(10)
                    .collect::<Vec<_>>()
            }
        );
    }
}

/// Answers a failover may give: none but the explicit "outcome unknown" 503 of a write that was
/// in flight on the primary when it died (its commit may or may not have happened).
pub fn assert_only_in_flight_losses(ledger: &Ledger, what: &str) {
    let unexpected: Vec<_> = ledger
        .errors
        .iter()
        .filter(|(status, body)| !(*status == 503 && body.contains("may or may not be stored")))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{what}: writes refused: {unexpected:?}"
    );
    assert!(
        ledger.errors.len() <= 2,
        "{what}: more in-flight writes lost than were in flight: {:?}",
        ledger.errors
    );
}

/// Runs `fault` under a steady write loop; returns the ledger once writes flow again.
pub fn under_writes(topology: &Topology, what: &str, fault: impl FnOnce()) -> Ledger {
    let writer = Writer::start(topology.lb());
    assert!(
        writer.wait_for(10, SETTLE),
        "{what}: writes before the fault"
    );
    fault();
    assert!(
        writer.wait_for(20, SETTLE),
        "{what}: writes did not resume:\n{}",
        text(&topology.cli(&["status"]))
    );
    let ledger = writer.stop();
    println!(
        "{what}: {} writes acknowledged, {} refused, longest time without an answer {:?}",
        ledger.acked.len(),
        ledger.errors.len(),
        ledger.longest_gap
    );
    ledger
}

pub fn pid_of(topology: &Topology, host: &str, role: &str) -> i32 {
    topology.unit(host, role)["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{host}/{role} has no pid")) as i32
}

pub fn mariadbd_pid(topology: &Topology, host: &str) -> i32 {
    std::fs::read_to_string(
        topology
            .state_dir()
            .join("db")
            .join(host)
            .join("mariadbd.pid"),
    )
    .unwrap()
    .trim()
    .parse()
    .unwrap()
}

/// The current primary, once there is exactly one and the other node is a ready replica.
pub fn settled_primary(topology: &Topology) -> String {
    let mut primary = String::new();
    assert_eventually!(
        {
            let primaries: Vec<_> = HOSTS
                .iter()
                .filter(|h| role_of(topology, h) == "primary")
                .collect();
            if let [one] = primaries.as_slice() {
                primary = one.to_string();
            }
            primaries.len() == 1
                && HOSTS
                    .iter()
                    .all(|h| topology.unit(h, "db")["healthy"] == true)
        },
        SETTLE,
        "one primary and a ready replica:\n{}",
        text(&topology.cli(&["status"]))
    );
    primary
}

/// The other db node of `toml_with_failover`.
pub fn other(host: &str) -> &'static str {
    if host == HOSTS[0] { HOSTS[1] } else { HOSTS[0] }
}
