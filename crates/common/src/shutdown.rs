//! Designed shutdown: a signal starts a drain, every connection task is tracked, and the drain
//! has a grace timeout after which the remaining connections are dropped.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long in-flight requests get to finish after a stop signal, in every role process.
pub const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Shared by the accept loops and every connection task of one role process.
#[derive(Clone, Default)]
pub struct Shutdown {
    /// Cancelled once: accept loops stop, connections finish their current request and close.
    token: CancellationToken,
    /// The token's state for `is_triggered`, which every request asks: a load of a line all
    /// threads only read (the token's own check locks a mutex every connection shares).
    triggered: Arc<AtomicBool>,
    /// Every connection task, so the drain knows when the last one is gone.
    tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start the drain. Idempotent.
    pub fn trigger(&self) {
        self.triggered.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.triggered.load(Ordering::Acquire)
    }

    /// Resolves once the drain has started.
    pub async fn triggered(&self) {
        self.token.cancelled().await
    }

    /// Spawn a task the drain waits for (a connection, a health checker).
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Trigger the drain and wait up to `grace` for every tracked task. Returns `true` when all
    /// finished in time, `false` when the grace ran out (the caller then exits anyway).
    pub async fn drain(&self, grace: Duration) -> bool {
        self.trigger();
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

/// Waits for SIGTERM or SIGINT and names the one that came.
pub async fn termination_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_tracked_tasks_within_grace() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn(async move {
            s.triggered().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        });
        assert!(shutdown.drain(Duration::from_secs(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_gives_up_after_grace() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        assert!(!shutdown.drain(Duration::from_secs(1)).await);
        assert!(shutdown.is_triggered());
    }
}
