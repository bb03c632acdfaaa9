//! Power of two choices over peak-EWMA latency (Finagle's and Linkerd's balancer): two servers
//! drawn at random among the acceptable ones, and the one with the lower cost wins, the cost
//! being its latency estimate times its requests in flight plus one, over its weight. The
//! estimate jumps up to a slower answer at once (peak) and decays towards faster ones, and
//! towards zero while the server gets no traffic, so a server that was slow is tried again.
//! Two random candidates avoid the herd that "always the least loaded" makes when several lbs
//! share stale views; no lock and no allocation per pick (a thread-local random source).

use std::cell::Cell;
use std::sync::Arc;

use super::Select;
use crate::server::Server;

#[derive(Default)]
pub struct P2c;

impl P2c {
    pub fn new() -> Self {
        Self
    }
}

thread_local! {
    static RANDOM: Cell<u64> = Cell::new(seed());
}

/// A per-thread seed: the standard library's per-process random hasher keys, mixed with the
/// thread's id.
fn seed() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
}

/// A uniform index below `n` (xorshift64*, Lemire's multiply-shift for the range).
fn below(n: usize) -> usize {
    let x = RANDOM.with(|state| {
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    });
    (((x >> 32) * n as u64) >> 32) as usize
}

/// An acceptable server other than `not`: two random draws, then a scan from a random start,
/// so one is found whenever there is one.
fn draw(
    servers: &[Arc<Server>],
    accept: &dyn Fn(&Server) -> bool,
    not: Option<usize>,
) -> Option<usize> {
    let n = servers.len();
    let ok = |i: usize| Some(i) != not && accept(&servers[i]);
    for _ in 0..2 {
        let i = below(n);
        if ok(i) {
            return Some(i);
        }
    }
    let start = below(n);
    (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
}

/// Latency estimate (ns, at least 1 µs so in-flight counts matter before the first sample)
/// times (in flight + 1), over the weight.
fn cost(server: &Server) -> f64 {
    server.latency_estimate().max(1_000.0) * (server.active() as f64 + 1.0)
        / f64::from(server.weight().max(1))
}

impl Select for P2c {
    fn select(
        &self,
        servers: &[Arc<Server>],
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<Arc<Server>> {
        if servers.is_empty() {
            return None;
        }
        let first = draw(servers, accept, None)?;
        let Some(second) = draw(servers, accept, Some(first)) else {
            return Some(servers[first].clone());
        };
        let (a, b) = (&servers[first], &servers[second]);
        Some(if cost(b) < cost(a) { b } else { a }.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::Algorithm;
    use crate::balance::Balancer;
    use crate::balance::tests::{counts, servers};

    #[test]
    fn idle_equal_servers_share_evenly_and_every_server_is_reachable() {
        let set = servers(&[(1, false), (1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::P2c, &set);
        let shares = counts(&balancer, 3000, 3);
        assert!(shares.iter().all(|&c| c > 500), "{shares:?}");
        // One acceptable server: always found.
        for _ in 0..100 {
            let pick = balancer.select(&|s| s.index == 2).unwrap();
            assert_eq!(pick.index, 2);
        }
        assert!(balancer.select(&|_| false).is_none());
    }

    #[test]
    fn the_faster_server_wins_unless_it_holds_far_more_requests() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::P2c, &set);
        set[0].observe_latency(Duration::from_millis(1));
        set[1].observe_latency(Duration::from_millis(50));
        // Two servers: both are drawn every time, the faster wins.
        assert_eq!(counts(&balancer, 100, 2), vec![100, 0]);
        // In flight counts: 60 requests held by the fast one make it cost more than the slow.
        let held: Vec<_> = (0..60).map(|_| set[0].begin()).collect();
        assert_eq!(counts(&balancer, 10, 2), vec![0, 10]);
        drop(held);
        assert_eq!(counts(&balancer, 100, 2), vec![100, 0]);
        // Back after being down, its old estimate (failed attempts count as a second) is
        // forgotten: it is not shunned for a minute.
        set[1].observe_latency(Duration::from_secs(1));
        set[1].came_back();
        assert_eq!(set[1].latency_estimate(), 0.0);
    }
}
