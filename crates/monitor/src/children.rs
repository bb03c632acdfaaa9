//! Prometheus and Alertmanager as children of the monitor role: started through `setpriv
//! --pdeathsig` (they die with the role), restarted with backoff, stopped with SIGTERM, their
//! output in `logs/<host>-prometheus.log` and `logs/<host>-alertmanager.log`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use webstack_common::Shutdown;
use webstack_common::backoff::Backoff;

use crate::Config;
use crate::generate::{Files, go_duration};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One program and its command line.
#[derive(Debug)]
pub struct Program {
    pub name: &'static str,
    pub path: PathBuf,
    pub args: Vec<String>,
    pub log: PathBuf,
}

impl Program {
    pub fn prometheus(config: &Config, files: &Files) -> Program {
        Program {
            name: "prometheus",
            path: config.prometheus.clone(),
            args: vec![
                format!("--config.file={}", files.prometheus.display()),
                format!(
                    "--storage.tsdb.path={}",
                    config.dir.join("prometheus").display()
                ),
                format!(
                    "--storage.tsdb.retention.time={}",
                    go_duration(config.retention_time)
                ),
                format!("--storage.tsdb.retention.size={}", config.retention_size),
                // No `--web.enable-lifecycle`: whoever reaches the port could stop it.
                format!("--web.listen-address={}", config.prometheus_addr()),
            ],
            log: config.logs.join(format!("{}-prometheus.log", config.host)),
        }
    }

    pub fn alertmanager(config: &Config, files: &Files) -> Program {
        let mut args = vec![
            format!("--config.file={}", files.alertmanager.display()),
            format!(
                "--storage.path={}",
                config.dir.join("alertmanager").display()
            ),
            format!("--web.listen-address={}", config.alertmanager_addr()),
        ];
        let cluster = |address| std::net::SocketAddr::new(address, config.cluster_port);
        if config.monitors.len() > 1 {
            // The Alertmanagers of every monitor host gossip silences and sent notifications,
            // so a webhook is called once per alert, not once per monitor host.
            args.push(format!(
                "--cluster.listen-address={}",
                cluster(config.address)
            ));
            args.push(format!(
                "--cluster.advertise-address={}",
                cluster(config.address)
            ));
            for peer in config.monitors.iter().filter(|a| **a != config.address) {
                args.push(format!("--cluster.peer={}", cluster(*peer)));
            }
        } else {
            args.push("--cluster.listen-address=".into());
        }
        Program {
            name: "alertmanager",
            path: config.alertmanager.clone(),
            args,
            log: config
                .logs
                .join(format!("{}-alertmanager.log", config.host)),
        }
    }

    fn spawn(&self) -> std::io::Result<tokio::process::Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let log_err = log.try_clone()?;
        webstack_common::child::dies_with_parent(&self.path)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .kill_on_drop(true)
            .spawn()
    }
}

/// Runs `program` until `shutdown`, restarting it with backoff whenever it exits.
pub async fn supervise(program: Program, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let started = Instant::now();
        match program.spawn() {
            Ok(mut child) => {
                tracing::info!(pid = child.id(), program = program.name, "started");
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(?status, program = program.name, log = %program.log.display(), "exited");
                    }
                    _ = shutdown.triggered() => {}
                }
                webstack_common::child::stop(&mut child, STOP_TIMEOUT, program.name).await;
            }
            Err(error) => {
                tracing::error!(%error, program = %program.path.display(), "cannot start");
            }
        }
        if shutdown.is_triggered() {
            return;
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return,
        }
    }
}
