//! One backend server as the request path sees it: its settings, whether it is up, how many
//! requests it holds now, and its metric handles (created once, so the hot path only touches
//! atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::uri::Authority;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;

use crate::ServerConfig;
use crate::metrics::ServerMetrics;

pub struct Server {
    /// Position in the backend set: the key algorithms and retries use.
    pub index: usize,
    pub config: ServerConfig,
    /// `host:port` of the server, for the upstream request URI.
    pub authority: Authority,
    /// Written by this server's health checker only; read by every request.
    up: AtomicBool,
    /// In-flight requests (response body not yet finished): leastconn's measure, also exported.
    active: Gauge,
    /// Wakes the health checker early after a passive failure (connection refused).
    pub(crate) recheck: Notify,
    pub(crate) metrics: ServerMetrics,
}

impl Server {
    pub fn new(index: usize, config: ServerConfig, metrics: ServerMetrics) -> Self {
        let authority = Authority::try_from(config.addr.to_string())
            .expect("a socket address is a valid authority");
        Self {
            index,
            authority,
            up: AtomicBool::new(false),
            active: metrics.active.clone(),
            recheck: Notify::new(),
            metrics,
            config,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics.up.set(i64::from(up));
    }

    pub fn active(&self) -> u64 {
        self.active.get().max(0) as u64
    }

    pub fn weight(&self) -> u32 {
        self.config.weight
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.clone())
    }

    pub(crate) fn responses(&self, status: u16) -> &Counter {
        &self.metrics.responses[usize::from(status / 100).clamp(1, 5) - 1]
    }
}

/// Holds one in-flight slot of a server; dropping it releases the slot.
pub struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}
