//! Picking a server: the algorithm ranks candidates, the caller's `accept` filter (health,
//! servers already tried) stays outside the algorithm, and backups are used only when no
//! regular server is acceptable.

mod leastconn;
mod p2c;
pub mod queue;
mod roundrobin;

use std::sync::Arc;

use crate::Algorithm;
use crate::server::Server;

pub use leastconn::LeastConn;
pub use p2c::P2c;
pub use roundrobin::RoundRobin;

/// An algorithm over a fixed set of servers.
pub trait Select: Send + Sync {
    /// The best server among `servers` for which `accept` is true.
    fn select(
        &self,
        servers: &[Arc<Server>],
        accept: &dyn Fn(&Server) -> bool,
    ) -> Option<Arc<Server>>;

    /// The servers' weights changed (`webstack lb weight`): algorithms that precompute from
    /// them start over.
    fn reweigh(&self, _servers: &[Arc<Server>]) {}
}

/// The backend set split into regular and backup servers, each with its own algorithm state.
pub struct Balancer {
    /// A returning server's ramp (`Server::ramp_admits`).
    slowstart: std::time::Duration,
    /// Requests waiting for a server below its `maxconn`.
    pub queue: Arc<queue::Queue>,
    /// Serializes ejection decisions (a rare path): two workers never both take the last
    /// allowed ejection.
    ejecting: std::sync::Mutex<()>,
    regular: Vec<Arc<Server>>,
    backup: Vec<Arc<Server>>,
    regular_algo: Box<dyn Select>,
    backup_algo: Box<dyn Select>,
}

impl Balancer {
    pub fn new(algorithm: Algorithm, servers: &[Arc<Server>]) -> Self {
        Self::with_slowstart(algorithm, servers, std::time::Duration::ZERO)
    }

    pub fn with_slowstart(
        algorithm: Algorithm,
        servers: &[Arc<Server>],
        slowstart: std::time::Duration,
    ) -> Self {
        Self::with_queue(
            algorithm,
            servers,
            slowstart,
            queue::QueueMetrics::unregistered(),
        )
    }

    pub fn with_queue(
        algorithm: Algorithm,
        servers: &[Arc<Server>],
        slowstart: std::time::Duration,
        metrics: queue::QueueMetrics,
    ) -> Self {
        let queue = Arc::new(queue::Queue::new(metrics));
        for server in servers {
            server.use_queue(queue.clone());
        }
        let (backup, regular): (Vec<_>, Vec<_>) =
            servers.iter().cloned().partition(|s| s.config.backup);
        let make = |set: &[Arc<Server>]| -> Box<dyn Select> {
            match algorithm {
                Algorithm::RoundRobin => Box::new(RoundRobin::new(set)),
                Algorithm::LeastConn => Box::new(LeastConn::new()),
                Algorithm::P2c => Box::new(P2c::new()),
            }
        };
        Self {
            slowstart,
            queue,
            ejecting: std::sync::Mutex::new(()),
            regular_algo: make(&regular),
            backup_algo: make(&backup),
            regular,
            backup,
        }
    }

    /// A server in rotation (healthy, not drained or in maintenance) accepted by `accept`,
    /// regular first, then backup.
    pub fn select(&self, accept: &dyn Fn(&Server) -> bool) -> Option<Arc<Server>> {
        // A server in its slow start turns down a share of the picks; if that leaves nobody, it
        // takes the request after all (better than a 503). Backups only when no regular server
        // is in rotation (not when they are merely full: then the request queues).
        let ramped = |s: &Server| {
            s.in_rotation() && !s.is_full() && accept(s) && s.ramp_admits(self.slowstart)
        };
        let healthy = |s: &Server| s.in_rotation() && !s.is_full() && accept(s);
        let (set, algo) = if self.regular.iter().any(|s| s.in_rotation()) {
            (&self.regular, &self.regular_algo)
        } else {
            (&self.backup, &self.backup_algo)
        };
        algo.select(set, &ramped)
            .or_else(|| algo.select(set, &healthy))
    }

    /// Whether a server that `accept`s would take the request but for its `maxconn`: then the
    /// request waits in the queue instead of failing.
    pub fn any_full(&self, accept: &dyn Fn(&Server) -> bool) -> bool {
        let regular_up = self.regular.iter().any(|s| s.in_rotation());
        let set = if regular_up {
            &self.regular
        } else {
            &self.backup
        };
        set.iter()
            .any(|s| s.in_rotation() && s.is_full() && accept(s))
    }

    pub fn slowstart(&self) -> std::time::Duration {
        self.slowstart
    }

    /// Ejects `server` if the bound allows: at most `percent` of the servers out at once,
    /// counting those down by their checks too (one may be, of two or more), and never the
    /// last regular server in rotation. Returns whether it did.
    pub fn eject_if_allowed(&self, server: &Server, percent: u32) -> bool {
        let _one_at_a_time = self
            .ejecting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !server.is_up() || !self.may_eject(percent) {
            return false;
        }
        let others_in_rotation = self
            .regular
            .iter()
            .filter(|s| s.index != server.index && s.in_rotation())
            .count();
        if !server.config.backup && others_in_rotation == 0 {
            return false;
        }
        server.eject();
        true
    }

    /// Whether one more server may be out: at most `percent` of them are (ejected or down),
    /// at least one of two or more.
    pub fn may_eject(&self, percent: u32) -> bool {
        let all = self.regular.len() + self.backup.len();
        let out = self
            .regular
            .iter()
            .chain(&self.backup)
            .filter(|s| s.is_ejected() || !s.is_up())
            .count();
        all >= 2 && out < (all * percent as usize / 100).max(1)
    }

    /// After a weight change.
    pub fn reweigh(&self) {
        self.regular_algo.reweigh(&self.regular);
        self.backup_algo.reweigh(&self.backup);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ServerConfig;
    use crate::metrics::Metrics;

    pub fn servers(weights: &[(u32, bool)]) -> Vec<Arc<Server>> {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Metrics::register(&mut registry);
        weights
            .iter()
            .enumerate()
            .map(|(i, &(weight, backup))| {
                let config = ServerConfig {
                    name: format!("s{i}"),
                    addr: ([127, 0, 0, 1], 10000 + i as u16).into(),
                    weight,
                    backup,
                    maxconn: 0,
                };
                let server = Arc::new(Server::new(i, config.clone(), metrics.server(&config.name)));
                server.set_up(true);
                server
            })
            .collect()
    }

    pub fn counts(balancer: &Balancer, n: usize, len: usize) -> Vec<usize> {
        let mut counts = vec![0; len];
        for _ in 0..n {
            counts[balancer.select(&|_| true).unwrap().index] += 1;
        }
        counts
    }

    #[test]
    fn backups_only_when_no_regular_server_is_up() {
        let set = servers(&[(1, false), (1, false), (1, true)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        assert_eq!(counts(&balancer, 10, 3), vec![5, 5, 0]);
        set[0].set_up(false);
        set[1].set_up(false);
        assert_eq!(counts(&balancer, 4, 3), vec![0, 0, 4]);
        set[2].set_up(false);
        assert!(balancer.select(&|_| true).is_none());
        set[1].set_up(true);
        assert_eq!(counts(&balancer, 3, 3), vec![0, 3, 0]);
    }

    #[test]
    fn drained_and_maintained_servers_get_nothing_new() {
        use crate::server::AdminState;
        for algorithm in [Algorithm::RoundRobin, Algorithm::LeastConn] {
            // (P2c's shares are random: its own tests.)
            let set = servers(&[(1, false), (1, false), (1, true)]);
            let balancer = Balancer::new(algorithm, &set);
            set[0].set_admin_state(AdminState::Drain);
            assert_eq!(counts(&balancer, 10, 3), vec![0, 10, 0]);
            // Both regular servers out: the backup takes over, as when they are down.
            set[1].set_admin_state(AdminState::Maint);
            assert_eq!(counts(&balancer, 4, 3), vec![0, 0, 4]);
            set[0].set_admin_state(AdminState::Ready);
            set[1].set_admin_state(AdminState::Ready);
            assert_eq!(counts(&balancer, 10, 3), vec![5, 5, 0]);
        }
    }

    #[test]
    fn a_returning_server_ramps_from_a_tenth_of_its_share() {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::with_slowstart(
            Algorithm::RoundRobin,
            &set,
            std::time::Duration::from_secs(3600),
        );
        set[1].came_back();
        // At the start of an hour-long ramp it turns down 9 picks in 10 of those that land on
        // it: about a tenth of the requests instead of half.
        let shares = counts(&balancer, 2000, 2);
        assert!((150..=250).contains(&shares[1]), "{shares:?}");
        // Alone in rotation, it takes everything anyway.
        set[0].set_up(false);
        assert_eq!(counts(&balancer, 100, 2), vec![0, 100]);
        // Without a ramp, its full share.
        set[0].set_up(true);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        assert_eq!(counts(&balancer, 100, 2), vec![50, 50]);
    }

    #[test]
    fn at_most_the_configured_part_of_the_servers_is_ejected() {
        let set = servers(&[(1, false), (1, false), (1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &set);
        assert!(balancer.eject_if_allowed(&set[0], 50));
        assert!(balancer.eject_if_allowed(&set[1], 50));
        assert!(
            !balancer.eject_if_allowed(&set[2], 50),
            "two of four is half"
        );
        assert!(set[2].in_rotation());
        // Of two, one may go; never the last one in rotation, whatever the percentage.
        let pair = servers(&[(1, false), (1, false)]);
        let balancer = Balancer::new(Algorithm::RoundRobin, &pair);
        pair[1].set_up(false);
        assert!(!balancer.eject_if_allowed(&pair[0], 100));
        pair[1].set_up(true);
        assert!(balancer.eject_if_allowed(&pair[0], 50));
        assert!(!balancer.eject_if_allowed(&pair[1], 100));
    }

    #[test]
    fn accept_filter_skips_servers_already_tried() {
        for algorithm in [Algorithm::RoundRobin, Algorithm::LeastConn, Algorithm::P2c] {
            let set = servers(&[(1, false), (1, false)]);
            let balancer = Balancer::new(algorithm, &set);
            for _ in 0..5 {
                let first = balancer.select(&|_| true).unwrap();
                let second = balancer.select(&|s| s.index != first.index).unwrap();
                assert_ne!(first.index, second.index);
                assert!(
                    balancer
                        .select(&|s| s.index != first.index && s.index != second.index)
                        .is_none()
                );
            }
        }
    }
}
