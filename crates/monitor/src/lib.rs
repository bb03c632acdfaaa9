//! The monitor role: generates Prometheus' and Alertmanager's configuration and the alert
//! rules from the topology, runs the real `prometheus` and `prometheus-alertmanager` as
//! supervised children, receives Alertmanager's webhook, and serves the dashboard.

mod children;
pub mod collect;
mod dashboard;
pub mod expo;
pub mod generate;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use webstack_common::{Admin, Shutdown};

pub use dashboard::{Alerts, Metrics};

/// The alert rules and their `promtool test rules` cases, as shipped.
pub const RULES: &str = include_str!("../assets/rules.yml");
pub const RULES_TESTS: &str = include_str!("../assets/rules.test.yml");

/// One endpoint Prometheus scrapes and the dashboard reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The Prometheus job: a role's name, or `host` for a host's supervisor.
    pub job: String,
    pub host: String,
    pub role: String,
    pub addr: SocketAddr,
}

/// One host as the dashboard draws it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostView {
    pub name: String,
    pub address: IpAddr,
    pub roles: Vec<String>,
}

/// What one monitor host runs, resolved from the topology.
#[derive(Clone, Debug)]
pub struct Config {
    pub site: String,
    pub host: String,
    pub address: IpAddr,
    /// The dashboard (and the webhook Alertmanager calls).
    pub port: u16,
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
    /// Alertmanager's gossip between monitor hosts (they deduplicate notifications).
    pub cluster_port: u16,
    /// Every monitor host's address, this one's included: each Prometheus sends alerts to
    /// every Alertmanager, and the Alertmanagers form one cluster.
    pub monitors: Vec<IpAddr>,
    pub targets: Vec<Target>,
    pub hosts: Vec<HostView>,
    /// The site's shared address, when lbs share one.
    pub vip: Option<IpAddr>,
    pub scrape_interval: Duration,
    pub retention_time: Duration,
    /// Prometheus' `--storage.tsdb.retention.size`, e.g. "1GB".
    pub retention_size: String,
    pub prometheus: PathBuf,
    pub alertmanager: PathBuf,
    /// More webhook receivers for every alert (a chat bridge, a pager).
    pub webhooks: Vec<String>,
    /// Generated files and the children's data: `<state>/monitor/<host>/`.
    pub dir: PathBuf,
    pub logs: PathBuf,
}

impl Config {
    pub fn dashboard_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    pub fn prometheus_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.prometheus_port)
    }

    pub fn alertmanager_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.alertmanager_port)
    }

    /// Whether this machine has both programs: without them the dashboard still runs (it reads
    /// the roles directly), with a note that history and alerting are off.
    pub fn has_programs(&self) -> bool {
        self.prometheus.is_file() && self.alertmanager.is_file()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Runs the monitor role until `shutdown`: the files, the children, the collector and the
/// dashboard on `listener`.
pub async fn run(
    config: Config,
    listener: TcpListener,
    admin: Admin,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<(), MonitorError> {
    let config = Arc::new(config);
    let files = generate::write_all(&config)?;
    let children = if config.has_programs() {
        vec![
            tokio::spawn(children::supervise(
                children::Program::prometheus(&config, &files),
                shutdown.clone(),
            )),
            tokio::spawn(children::supervise(
                children::Program::alertmanager(&config, &files),
                shutdown.clone(),
            )),
        ]
    } else {
        tracing::warn!(
            prometheus = %config.prometheus.display(),
            alertmanager = %config.alertmanager.display(),
            "prometheus or alertmanager is not installed: the dashboard runs without history and alerts (apt-get install prometheus prometheus-alertmanager)"
        );
        Vec::new()
    };
    let alerts = Alerts::new(metrics);
    let collector = collect::Collector::new(config.clone());
    let overview = collector.latest();
    let collecting = tokio::spawn(collector.run(shutdown.clone()));
    let reconciling = config
        .has_programs()
        .then(|| tokio::spawn(dashboard::reconcile(config.clone(), alerts.clone())));
    let status = tokio::spawn(dashboard::publish_status(
        config.clone(),
        alerts.clone(),
        admin.clone(),
    ));
    admin.set_ready(true);
    dashboard::serve(config.clone(), listener, overview, alerts, shutdown.clone()).await;
    admin.set_ready(false);
    collecting.abort();
    status.abort();
    if let Some(reconciling) = reconciling {
        reconciling.abort();
    }
    for child in children {
        let _ = child.await;
    }
    Ok(())
}
