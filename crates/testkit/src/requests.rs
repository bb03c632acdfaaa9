//! A request loop for failover tests: requests against one address, one at a time, each on a
//! new connection (a `while curl` loop), on a thread of its own, optionally inside a network
//! namespace; every outcome with its time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::http::get;

pub struct RequestLoop {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<(Instant, Result<u16, String>)>>,
}

impl RequestLoop {
    /// Starts the loop; with `netns` (a file in /run/netns), its thread first joins that
    /// network namespace, so its connections start there.
    pub fn start(netns: Option<PathBuf>, addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            if let Some(path) = netns {
                let file = std::fs::File::open(&path).expect("open the namespace");
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .expect("join the namespace");
            }
            let mut outcomes = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let result = get(addr, "/api/whoami", &[]).map(|r| r.status);
                outcomes.push((Instant::now(), result));
            }
            outcomes
        });
        Self { stop, handle }
    }

    pub fn finish(self) -> Outcomes {
        self.stop.store(true, Ordering::Relaxed);
        Outcomes(self.handle.join().expect("the request loop"))
    }
}

/// What the loop saw.
pub struct Outcomes(pub Vec<(Instant, Result<u16, String>)>);

impl Outcomes {
    pub fn answered(&self) -> usize {
        self.0.iter().filter(|(_, r)| *r == Ok(200)).count()
    }

    pub fn failures(&self) -> Vec<String> {
        self.0
            .iter()
            .filter(|(_, r)| *r != Ok(200))
            .map(|(_, r)| format!("{r:?}"))
            .collect()
    }

    /// The failed requests that got neither an answer nor a FIN or reset: their client waited
    /// out `http::request`'s timeouts (5 s to connect, 10 s for the answer).
    pub fn hung(&self) -> Vec<String> {
        self.failures()
            .into_iter()
            .filter(|f| f.contains("timed out") || f.contains("Resource temporarily unavailable"))
            .collect()
    }

    /// From the first failed request to the last (zero without failures).
    pub fn failing_for(&self) -> Duration {
        let failed: Vec<Instant> = self
            .0
            .iter()
            .filter(|(_, r)| *r != Ok(200))
            .map(|(t, _)| *t)
            .collect();
        match (failed.first(), failed.last()) {
            (Some(first), Some(last)) => *last - *first,
            _ => Duration::ZERO,
        }
    }

    /// The longest time between two answered requests (what a client waited at worst).
    pub fn longest_silence(&self) -> Duration {
        let answered: Vec<Instant> = self
            .0
            .iter()
            .filter(|(_, r)| *r == Ok(200))
            .map(|(t, _)| *t)
            .collect();
        answered
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default()
    }
}

/// With `WEBSTACK_HA_OUT` set (by `bench/ha`), appends one row of the results table to it.
pub fn record(mode: &str, event: &str, outcomes: &Outcomes) {
    let Ok(path) = std::env::var("WEBSTACK_HA_OUT") else {
        return;
    };
    use std::io::Write;
    let row = format!(
        "| {mode} | {event} | {} | {} | {} | {:.0?} | {:.0?} |\n",
        outcomes.answered(),
        outcomes.failures().len(),
        outcomes.hung().len(),
        outcomes.failing_for(),
        outcomes.longest_silence()
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the results file");
    file.write_all(row.as_bytes()).expect("write the results");
}
