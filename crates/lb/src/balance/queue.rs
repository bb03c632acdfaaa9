//! The lb's queue (HAProxy's backend queue): when every server that could take a request is at
//! its `maxconn`, the request waits here, in arrival order, until one frees a slot or
//! `queue_timeout` passes. Bounded by the lb's own `maxconn` (an HTTP/1 connection has at most
//! one request waiting; an HTTP/2 one up to its 250 streams). A request that arrives while
//! others wait queues behind them; wake-ups go oldest first, but a woken request that finds the
//! slot taken waits again at the back: close to arrival order, not strictly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

pub struct Queue {
    /// Woken (one waiter, oldest first) when a server frees a slot.
    freed: Notify,
    waiting: AtomicUsize,
    metrics: QueueMetrics,
}

/// The queue's metric handles.
#[derive(Clone)]
pub struct QueueMetrics {
    pub length: Gauge,
    pub wait: Histogram,
    pub timeouts: Counter,
}

impl QueueMetrics {
    pub fn unregistered() -> Self {
        Self {
            length: Gauge::default(),
            wait: Histogram::new([0.001, 0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0]),
            timeouts: Counter::default(),
        }
    }
}

impl Queue {
    pub fn new(metrics: QueueMetrics) -> Self {
        Self {
            freed: Notify::new(),
            waiting: AtomicUsize::new(0),
            metrics,
        }
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A server freed a slot: the oldest waiter tries again.
    pub fn slot_freed(&self) {
        if !self.is_empty() {
            self.freed.notify_one();
        }
    }

    /// Waits in line until `pick` finds a server (it is tried again each time a slot frees,
    /// and once at the start), at most `timeout`. None: timed out.
    pub async fn wait_for<T>(
        &self,
        timeout: Duration,
        mut pick: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        // Counted while waiting, also when the request is dropped meanwhile (its client left).
        let _waiting = Waiting::new(self);
        let found = loop {
            let notified = self.freed.notified();
            tokio::pin!(notified);
            // Registered before looking: a slot freed in between is not missed.
            notified.as_mut().enable();
            if let Some(found) = pick() {
                break Some(found);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                break None;
            }
        };
        match &found {
            Some(_) => {
                self.metrics.wait.observe(started.elapsed().as_secs_f64());
                // Another slot may be free too: pass the turn on.
                self.slot_freed();
            }
            None => {
                self.metrics.timeouts.inc();
            }
        }
        found
    }
}

/// One request in the queue, counted until dropped.
struct Waiting<'a>(&'a Queue);

impl<'a> Waiting<'a> {
    fn new(queue: &'a Queue) -> Self {
        queue.waiting.fetch_add(1, Ordering::SeqCst);
        queue.metrics.length.inc();
        Self(queue)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.length.dec();
    }
}
