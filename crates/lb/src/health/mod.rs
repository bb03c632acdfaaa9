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
/// `server.recheck` brings the next check forward, but never closer than a quarter interval
/// to the last one: a route that fails every request must not turn each into a check.
pub async fn run_checker(server: Arc<Server>, config: HealthConfig, sweep: Arc<FirstSweep>) {
    let mut state = HealthState::new();
    let mut first = true;
    loop {
        let checked_at = tokio::time::Instant::now();
        let result = check_once(&server, &config).await;
        if let Err(error) = &result {
            server.metrics.health_checks_failed.inc();
            tracing::debug!(server = %server.config.name, %error, "health check failed");
        }
        let now = unix_now();
        server.metrics.last_check.set(now);
        if server.take_ejected() && state.is_up() {
            state.force_down();
            server.set_up(false);
            server.metrics.state_since.set(now);
        }
        if let Some(up) = state.record(result.is_ok(), config.rise, config.fall) {
            server.set_up(up);
            server.metrics.state_since.set(now);
            // Back after being down (not the first check): its slow start begins.
            if up && !first {
                server.came_back();
            }
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
            _ = server.recheck.notified() => {
                tokio::time::sleep_until(checked_at + early_spacing(&config)).await;
            }
        }
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The least time between two checks of one server when failed requests ask for one early.
fn early_spacing(config: &HealthConfig) -> Duration {
    config.interval / 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_requests_bring_checks_forward_at_most_once_per_quarter_interval() {
        use std::sync::atomic::AtomicU32;
        // A server whose checks are counted: a listener that accepts and answers 200.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let checks = Arc::new(AtomicU32::new(0));
        let counted = checks.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
            }
        });
        let metrics = crate::metrics::Metrics::register(&mut Default::default());
        let server = Arc::new(Server::new(
            0,
            crate::ServerConfig {
                name: "s".into(),
                addr,
                weight: 1,
                backup: false,
                maxconn: 0,
            },
            metrics.server("s"),
        ));
        let config = HealthConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(8),
            timeout: Duration::from_secs(1),
            rise: 1,
            fall: 1,
            eject_after: 0,
            max_ejected_percent: 50,
        };
        let sweep = FirstSweep::new(1, || {});
        tokio::spawn(run_checker(server.clone(), config, sweep));
        // Let the first check happen, then hammer it with passive failures for 8 s.
        while checks.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        for _ in 0..800 {
            server.recheck.notify_one();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let seen = checks.load(Ordering::SeqCst);
        // One check at 0 s, then one per 2 s, brought forward from the 8 s schedule: 4 or 5 in
        // 8 s (not 800; without the early checks, 2).
        assert!((4..=5).contains(&seen), "{seen} checks");
    }
}
