//! Smooth weighted round-robin, precomputed: the schedule nginx's algorithm produces for the
//! weights (e.g. 5:1:1 gives a a b a c a a, not a a a a a b c) is laid out once (again when an
//! operator changes a weight), and each pick is one atomic increment into it, so the request
//! path takes no lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use arc_swap::ArcSwap;

use super::Select;
use crate::server::Server;

pub struct RoundRobin {
    /// Indices into the server slice, in smooth weighted order; one full cycle.
    schedule: ArcSwap<Vec<usize>>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(servers: &[Arc<Server>]) -> Self {
        Self {
            schedule: ArcSwap::from_pointee(Self::schedule(servers)),
            next: AtomicUsize::new(0),
        }
    }

    fn schedule(servers: &[Arc<Server>]) -> Vec<usize> {
        let weights: Vec<i64> = servers
            .iter()
            .map(|s| i64::from(s.weight().max(1)))
            .collect();
        let total: i64 = weights.iter().sum();
        let mut current = vec![0i64; weights.len()];
        let mut schedule = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, w) in current.iter_mut().zip(&weights) {
                *c += w;
            }
            // Highest current weight wins; the first one on ties.
            let best =
                (0..current.len()).fold(
                    0,
                    |best, i| if current[i] > current[best] { i } else { best },
                );
            current[best] -= total;
            schedule.push(best);
        }
        schedule
    }
}

impl Select for RoundRobin {
    fn select(
        &self,
        servers: &[Arc<Server>],
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<Arc<Server>> {
        let schedule = self.schedule.load();
        let len = schedule.len();
        if len == 0 {
            return None;
        }
        let pick = |slot: usize| &servers[schedule[slot % len]];
        // Each look consumes a slot: a skipped server's slot is used up rather than handed to
        // its neighbour, so the others keep their relative weights (2:1 stays 2:1).
        let first = self.next.fetch_add(1, Ordering::Relaxed);
        let consumed = std::iter::once(first)
            .chain((1..len).map(|_| self.next.fetch_add(1, Ordering::Relaxed)));
        if let Some(server) = consumed.map(pick).find(|server| accept(server)) {
            return Some(server.clone());
        }
        // Concurrent pickers may have taken every slot of the acceptable servers between our
        // looks: scan one whole cycle, so a server that is acceptable is always found.
        (first..first + len)
            .map(pick)
            .find(|server| accept(server))
            .cloned()
    }

    fn reweigh(&self, servers: &[Arc<Server>]) {
        self.schedule.store(Arc::new(Self::schedule(servers)));
    }
}

#[cfg(test)]
mod tests {
    use crate::Algorithm;
    use crate::balance::Balancer;
    use crate::balance::tests::{counts, servers};

    #[test]
    fn a_weight_changed_at_runtime_changes_the_schedule() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        assert_eq!(counts(&balancer, 100, 2), vec![50, 50]);
        set[0].set_weight(3);
        balancer.reweigh();
        assert_eq!(counts(&balancer, 100, 2), vec![75, 25]);
    }

    #[test]
    fn equal_weights_alternate() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        let picks: Vec<_> = (0..6)
            .map(|_| balancer.select(&|_| true).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 1, 0, 1, 0, 1]);
    }

    #[test]
    fn weights_are_respected_and_interleaved() {
        let set = servers(&[(5, false), (1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        let picks: Vec<_> = (0..7)
            .map(|_| balancer.select(&|_| true).unwrap().index)
            .collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(counts(&balancer, 700, 3), vec![500, 100, 100]);
    }

    #[test]
    fn concurrent_picks_always_find_the_one_healthy_server() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = std::sync::Arc::new(Balancer::new(Algorithm::RoundRobin, &set));
        set[0].set_up(false);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let balancer = balancer.clone();
                std::thread::spawn(move || {
                    (0..20_000).all(|_| balancer.select(&|_| true).is_some_and(|s| s.index == 1))
                })
            })
            .collect();
        assert!(threads.into_iter().all(|t| t.join().unwrap()));
    }

    #[test]
    fn a_down_server_gives_its_share_to_the_others() {
        let set = servers(&[(2, false), (1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        set[1].set_up(false);
        let got = counts(&balancer, 300, 3);
        assert_eq!(got[1], 0);
        assert_eq!(got[0] + got[2], 300);
        assert!(
            got[0] > got[2],
            "weight 2 still gets more than weight 1: {got:?}"
        );
    }
}
