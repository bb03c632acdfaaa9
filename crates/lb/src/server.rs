//! One backend server as the request path sees it: its settings, whether it is up, whether an
//! operator took it out of rotation and its weight now (the runtime API, `control`), how many
//! requests it holds now, and its metric handles (created once, so the hot path only touches
//! atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};

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
    /// What an operator said (`AdminState` as a number): only `Ready` takes new requests.
    admin: AtomicU8,
    /// The weight in force: the topology's until an operator changes it.
    weight: AtomicU32,
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
        metrics.weight.set(i64::from(config.weight));
        Self {
            index,
            authority,
            up: AtomicBool::new(false),
            admin: AtomicU8::new(AdminState::Ready as u8),
            weight: AtomicU32::new(config.weight),
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

    /// Up and not taken out by an operator: may get new requests.
    pub fn in_rotation(&self) -> bool {
        self.is_up() && self.admin_state() == AdminState::Ready
    }

    pub fn admin_state(&self) -> AdminState {
        AdminState::from_u8(self.admin.load(Ordering::Acquire))
    }

    /// Puts the server in `state`; returns the one it was in.
    pub(crate) fn set_admin_state(&self, state: AdminState) -> AdminState {
        let before = AdminState::from_u8(self.admin.swap(state as u8, Ordering::AcqRel));
        for s in AdminState::ALL {
            self.metrics.admin_state(s).set(i64::from(s == state));
        }
        before
    }

    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    pub(crate) fn set_weight(&self, weight: u32) {
        self.weight.store(weight, Ordering::Relaxed);
        self.metrics.weight.set(i64::from(weight));
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

/// What an operator said about a server (HAProxy's `set server ... state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AdminState {
    /// In rotation (while its health checks pass).
    Ready = 0,
    /// No new requests; those in flight finish. Health checks go on.
    Drain = 1,
    /// Out of rotation for maintenance. Health checks go on.
    Maint = 2,
}

impl AdminState {
    pub const ALL: [AdminState; 3] = [Self::Ready, Self::Drain, Self::Maint];

    fn from_u8(n: u8) -> Self {
        match n {
            1 => Self::Drain,
            2 => Self::Maint,
            _ => Self::Ready,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "ready",
            Self::Drain => "drain",
            Self::Maint => "maint",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Holds one in-flight slot of a server; dropping it releases the slot.
pub struct ActiveGuard(Arc<Server>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}
