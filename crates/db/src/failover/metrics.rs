//! The failover agent's metrics (the server's own are in `crate::metrics`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Default)]
pub struct Metrics {
    /// The leader key's term as this node last saw it.
    pub term: Gauge,
    /// 1 while this node holds the leader key and takes writes.
    pub primary: Gauge,
    /// 1 while no node may be promoted (the reason is in `/status` and the log).
    pub promotion_refused: Gauge,
    /// 1 while the primary report says every acknowledged write is on a replica.
    pub semi_sync: Gauge,
    /// 1 while the agent's last read of etcd succeeded.
    pub etcd_connected: Gauge,
    pub promotions: Counter,
    pub fences: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let db = registry.sub_registry_with_prefix("webstack_db");
        db.register(
            "failover_term",
            "The database term (etcd leader key revision) this node last saw",
            metrics.term.clone(),
        );
        db.register(
            "primary",
            "1 while this node holds the leader key and takes writes",
            metrics.primary.clone(),
        );
        db.register(
            "promotion_refused",
            "1 while no node may be promoted without losing acknowledged writes (reason in /status)",
            metrics.promotion_refused.clone(),
        );
        db.register(
            "semi_sync",
            "1 while this primary's report says every acknowledged write is on a replica",
            metrics.semi_sync.clone(),
        );
        db.register(
            "etcd_connected",
            "1 while this node's failover agent reads etcd (the last try succeeded)",
            metrics.etcd_connected.clone(),
        );
        db.register(
            "promotions",
            "Times this node became the primary",
            metrics.promotions.clone(),
        );
        db.register(
            "fences",
            "Times this node fenced itself (read_only, or mariadbd killed)",
            metrics.fences.clone(),
        );
        metrics
    }
}
