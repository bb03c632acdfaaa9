//! One backend server as the request path sees it: its settings, whether it is up, whether an
//! operator took it out of rotation and its weight now (the runtime API, `control`), how many
//! requests it holds now, and its metric handles (created once, so the hot path only touches
//! atomics).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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
    /// Consecutive failed requests (passive checks) and whether they took it out of rotation
    /// (its checker then needs `rise` successes to bring it back).
    failures: AtomicU32,
    /// Out of rotation after failed requests, until it is up again.
    ejected: AtomicBool,
    /// The ejection its checker has not seen yet.
    eject_pending: AtomicBool,
    /// When it last came back into rotation (ns on `clock`; 0: never, no ramp), and the
    /// share-of-picks credit of its slow start.
    back_since: AtomicU64,
    ramp_credit: AtomicU32,
    /// The lb's queue, told when a slot frees (set by the `Balancer`).
    queue: std::sync::OnceLock<Arc<crate::balance::queue::Queue>>,
    /// Peak-EWMA of the time to a response head, in ns, and when it was last updated (ns on
    /// `clock`): p2c's latency estimate.
    latency: AtomicU64,
    latency_at: AtomicU64,
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
            failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            eject_pending: AtomicBool::new(false),
            back_since: AtomicU64::new(0),
            ramp_credit: AtomicU32::new(0),
            queue: std::sync::OnceLock::new(),
            latency: AtomicU64::new(0),
            latency_at: AtomicU64::new(clock()),
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
        if up {
            self.ejected.store(false, Ordering::Release);
        }
        self.up.store(up, Ordering::Release);
        if up {
            self.wake_queue();
        }
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
        if state == AdminState::Ready && before != AdminState::Ready {
            self.came_back();
        }
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

    /// Adds one time to a response head to the latency estimate: a slower one is taken at
    /// once (peak), a faster one weighs by how long ago the last was (EWMA with `DECAY`).
    /// Concurrent updates may lose one another's sample: an estimate, not a count.
    pub fn observe_latency(&self, rtt: Duration) {
        let now = clock();
        let sample = rtt.as_nanos() as f64;
        let stored = self.latency.load(Ordering::Relaxed) as f64;
        let w = (-(now.saturating_sub(self.latency_at.load(Ordering::Relaxed)) as f64)
            / DECAY.as_nanos() as f64)
            .exp();
        let next = if sample > stored * w {
            sample
        } else {
            stored * w + sample * (1.0 - w)
        };
        self.latency.store(next as u64, Ordering::Relaxed);
        self.latency_at.store(now, Ordering::Relaxed);
    }

    /// The latency estimate now, in ns: it decays towards zero while no answer comes, so a
    /// server that was slow gets tried again.
    pub fn latency_estimate(&self) -> f64 {
        self.latency_estimate_at(clock())
    }

    fn latency_estimate_at(&self, now: u64) -> f64 {
        let idle = now.saturating_sub(self.latency_at.load(Ordering::Relaxed)) as f64;
        self.latency.load(Ordering::Relaxed) as f64 * (-idle / DECAY.as_nanos() as f64).exp()
    }

    /// A request to it failed (connect, or a 5xx answer): the count of consecutive ones.
    pub(crate) fn passive_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn passive_success(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Out of rotation after failed requests, until its checks bring it back.
    pub(crate) fn eject(&self) {
        // Out first, then told to the checker: it never sees the flag before the server is
        // down (and sets it up again only after `rise` successes).
        self.ejected.store(true, Ordering::Release);
        self.set_up(false);
        self.eject_pending.store(true, Ordering::Release);
        self.metrics.ejections.inc();
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Ordering::Acquire)
    }

    /// For the checker: whether it was ejected since it last asked.
    pub(crate) fn take_ejected(&self) -> bool {
        self.eject_pending.swap(false, Ordering::AcqRel)
    }

    /// It came back into rotation now: its slow start begins.
    pub(crate) fn came_back(&self) {
        self.ramp_credit.store(0, Ordering::Relaxed);
        // What it measured before it went away (failed attempts count as a second) says
        // nothing of it now: p2c starts it afresh, and the slow start bounds its share.
        self.latency.store(0, Ordering::Relaxed);
        self.latency_at.store(clock(), Ordering::Relaxed);
        self.back_since.store(clock().max(1), Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        self.wake_queue();
    }

    /// Requests waiting in the queue may have a server now.
    fn wake_queue(&self) {
        if let Some(queue) = self.queue.get() {
            queue.slot_freed();
        }
    }

    /// Its slow start, in thousandths of its full share (1000: none or over).
    pub fn ramp(&self, slowstart: Duration) -> u32 {
        let since = self.back_since.load(Ordering::Acquire);
        if since == 0 || slowstart.is_zero() {
            return 1000;
        }
        let elapsed = clock().saturating_sub(since) as f64 / slowstart.as_nanos() as f64;
        (elapsed * 1000.0).clamp(100.0, 1000.0) as u32
    }

    /// Whether this pick may go to it during its slow start: `ramp` in 1000 picks do.
    pub(crate) fn ramp_admits(&self, slowstart: Duration) -> bool {
        let ramp = self.ramp(slowstart);
        if ramp >= 1000 {
            return true;
        }
        // Add this pick's credit; a whole pick's worth (1000) admits it and is spent, in one
        // atomic step, so racing picks never wrap the counter.
        let mut admitted = false;
        let _ = self
            .ramp_credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |credit| {
                let credit = credit.saturating_add(ramp);
                admitted = credit >= 1000;
                Some(if admitted { credit - 1000 } else { credit })
            });
        admitted
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> ActiveGuard {
        self.active.inc();
        ActiveGuard(self.clone())
    }

    /// `begin` within its `maxconn`: None when it is full (a racing pick took the last slot).
    pub fn try_begin(self: &Arc<Self>) -> Option<ActiveGuard> {
        let before = self.active.inc();
        let max = i64::from(self.config.maxconn);
        if max != 0 && before >= max {
            self.active.dec();
            // A request woken for a slot this racer briefly counted must look again.
            self.wake_queue();
            return None;
        }
        Some(ActiveGuard(self.clone()))
    }

    /// At its `maxconn` now.
    pub fn is_full(&self) -> bool {
        self.config.maxconn != 0 && self.active() >= u64::from(self.config.maxconn)
    }

    pub(crate) fn use_queue(&self, queue: Arc<crate::balance::queue::Queue>) {
        let _ = self.queue.set(queue);
    }

    pub(crate) fn responses(&self, status: u16) -> &Counter {
        &self.metrics.responses[usize::from(status / 100).clamp(1, 5) - 1]
    }
}

/// How fast the latency estimate forgets (Linkerd's default decay).
const DECAY: Duration = Duration::from_secs(10);

/// Nanoseconds since the first call: the latency estimate's clock.
fn clock() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
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
        if self.0.config.maxconn != 0
            && let Some(queue) = self.0.queue.get()
        {
            queue.slot_freed();
        }
    }
}
