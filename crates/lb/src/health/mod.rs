//! Active health checks: one task per server sends `GET <path>` on a fresh connection every
//! interval; `HealthState` turns results into up/down flips with rise/fall hysteresis.

mod state;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use webstack_common::probe::{ProbeError, get_status};

pub use state::HealthState;

use crate::HealthConfig;
use crate::server::Server;

/// Why a check failed, for the log line of a flip.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error("status {0}")]
    Status(http::StatusCode),
}

/// One check: `GET <path>` on a fresh connection; any 2xx or 3xx is a success.
pub async fn check_once(server: &Server, config: &HealthConfig) -> Result<(), CheckError> {
    let status = get_status(
        server.config.addr,
        server.authority.as_str(),
        &config.path,
        config.timeout,
    )
    .await?;
    if status.is_success() || status.is_redirection() {
        Ok(())
    } else {
        Err(CheckError::Status(status))
    }
}

/// Counts servers that still owe their first check; calls `on_ready` once when none do.
pub struct FirstSweep {
    pending: AtomicUsize,
    on_ready: Box<dyn Fn() + Send + Sync>,
}

impl FirstSweep {
    pub fn new(servers: usize, on_ready: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        let sweep = Arc::new(Self {
            pending: AtomicUsize::new(servers),
            on_ready: Box::new(on_ready),
        });
        if servers == 0 {
            (sweep.on_ready)();
        }
        sweep
    }

    fn done_one(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            (self.on_ready)();
        }
    }
}

/// Checks `server` forever (until the task is dropped). A passive failure reported through
/// `server.recheck` brings the next check forward.
pub async fn run_checker(server: Arc<Server>, config: HealthConfig, sweep: Arc<FirstSweep>) {
    let mut state = HealthState::new();
    let mut first = true;
    loop {
        let result = check_once(&server, &config).await;
        if let Err(error) = &result {
            server.metrics.health_checks_failed.inc();
            tracing::debug!(server = %server.config.name, %error, "health check failed");
        }
        if let Some(up) = state.record(result.is_ok(), config.rise, config.fall) {
            server.set_up(up);
            match &result {
                Ok(()) => {
                    tracing::info!(server = %server.config.name, addr = %server.config.addr, "server is UP")
                }
                Err(error) => {
                    tracing::warn!(server = %server.config.name, addr = %server.config.addr, %error, "server is DOWN")
                }
            }
        }
        if std::mem::take(&mut first) {
            sweep.done_one();
        }
        // After a failure while up, check again sooner (HAProxy's fastinter) to confirm.
        let wait = if result.is_err() && state.is_up() {
            config.interval / 2
        } else {
            config.interval
        };
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(10))) => {}
            _ = server.recheck.notified() => {}
        }
    }
}
