//! Least connections, weighted: the server with the fewest in-flight requests per unit of weight
//! wins; ties go round-robin so idle servers share evenly.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::Select;
use crate::server::Server;

#[derive(Default)]
pub struct LeastConn {
    /// Where the tie-breaking scan starts; advances on every pick.
    next: AtomicUsize,
}

impl LeastConn {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Select for LeastConn {
    fn select(
        &self,
        servers: &[Arc<Server>],
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<Arc<Server>> {
        let len = servers.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut best: Option<&Arc<Server>> = None;
        for step in 0..len {
            let server = &servers[(start + step) % len];
            if !accept(server) {
                continue;
            }
            // (active + 1) / weight, compared by cross-multiplying to stay in integers: the +1
            // counts the request being placed, so weights matter even when all are idle.
            let better = best.is_none_or(|b| {
                (server.active() + 1) * u64::from(b.weight())
                    < (b.active() + 1) * u64::from(server.weight())
            });
            if better {
                best = Some(server);
            }
        }
        best.cloned()
    }
}

#[cfg(test)]
mod tests {
    use crate::Algorithm;
    use crate::balance::Balancer;
    use crate::balance::tests::{counts, servers};

    #[test]
    fn idle_servers_share_evenly() {
        let set = servers(&[(1, false), (1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::LeastConn, &set);
        assert_eq!(counts(&balancer, 300, 3), vec![100, 100, 100]);
    }

    #[test]
    fn new_requests_avoid_the_busy_server() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::LeastConn, &set);
        // Server 0 holds three slow requests.
        let held: Vec<_> = (0..3).map(|_| set[0].begin()).collect();
        for _ in 0..3 {
            let picked = balancer.select(&|_| true).unwrap();
            assert_eq!(picked.index, 1);
            // Requests that finish at once do not accumulate.
            drop(picked.begin());
        }
        // Once server 1 holds as many, they share again.
        let also: Vec<_> = (0..3).map(|_| set[1].begin()).collect();
        assert_eq!(counts(&balancer, 10, 2), vec![5, 5]);
        drop((held, also));
        assert_eq!(set[0].active(), 0);
    }

    #[test]
    fn unequal_load_fills_the_least_loaded_first() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::LeastConn, &set);
        let _held: Vec<_> = (0..4).map(|_| set[0].begin()).collect();
        // Holding each new request: server 1 gets them until it too has 4.
        let mut placed = Vec::new();
        for _ in 0..4 {
            let s = balancer.select(&|_| true).unwrap();
            assert_eq!(s.index, 1);
            placed.push(s.begin());
        }
        let next: Vec<_> = (0..2)
            .map(|_| {
                let s = balancer.select(&|_| true).unwrap();
                placed.push(s.begin());
                s.index
            })
            .collect();
        assert!(
            next.contains(&0) && next.contains(&1),
            "then they alternate: {next:?}"
        );
    }

    #[test]
    fn weight_scales_the_share_of_in_flight_requests() {
        let set = servers(&[(3, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::LeastConn, &set);
        let mut held = Vec::new();
        for _ in 0..40 {
            let s = balancer.select(&|_| true).unwrap();
            held.push(s.begin());
        }
        assert_eq!((set[0].active(), set[1].active()), (30, 10));
    }
}
