//! Picking a server: the algorithm ranks candidates, the caller's `accept` filter (health,
//! servers already tried) stays outside the algorithm, and backups are used only when no
//! regular server is acceptable.

mod leastconn;
mod roundrobin;

use std::sync::Arc;

use crate::Algorithm;
use crate::server::Server;

pub use leastconn::LeastConn;
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
    regular: Vec<Arc<Server>>,
    backup: Vec<Arc<Server>>,
    regular_algo: Box<dyn Select>,
    backup_algo: Box<dyn Select>,
}

impl Balancer {
    pub fn new(algorithm: Algorithm, servers: &[Arc<Server>]) -> Self {
        let (backup, regular): (Vec<_>, Vec<_>) =
            servers.iter().cloned().partition(|s| s.config.backup);
        let make = |set: &[Arc<Server>]| -> Box<dyn Select> {
            match algorithm {
                Algorithm::RoundRobin => Box::new(RoundRobin::new(set)),
                Algorithm::LeastConn => Box::new(LeastConn::new()),
            }
        };
        Self {
            regular_algo: make(&regular),
            backup_algo: make(&backup),
            regular,
            backup,
        }
    }

    /// A server in rotation (healthy, not drained or in maintenance) accepted by `accept`,
    /// regular first, then backup.
    pub fn select(&self, accept: &dyn Fn(&Server) -> bool) -> Option<Arc<Server>> {
        let healthy = |s: &Server| s.in_rotation() && accept(s);
        self.regular_algo
            .select(&self.regular, &healthy)
            .or_else(|| self.backup_algo.select(&self.backup, &healthy))
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
    fn accept_filter_skips_servers_already_tried() {
        for algorithm in [Algorithm::RoundRobin, Algorithm::LeastConn] {
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
