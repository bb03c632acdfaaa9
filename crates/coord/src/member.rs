//! The `etcd` role: runs this host's etcd member as a child (data in the state dir, client
//! and peer URLs on the host's address only), restarts it with backoff if it dies, and
//! reports its health and whether it leads the raft group.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Child;
use webstack_common::backoff::Backoff;
use webstack_common::{Admin, Shutdown};

const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The etcd role's metrics: this member's health as the role sees it.
#[derive(Clone, Debug, Default)]
pub struct MemberMetrics {
    healthy: prometheus_client::metrics::gauge::Gauge,
    leader: prometheus_client::metrics::gauge::Gauge,
    raft_term: prometheus_client::metrics::gauge::Gauge,
}

impl MemberMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> MemberMetrics {
        let metrics = MemberMetrics::default();
        let etcd = registry.sub_registry_with_prefix("webstack_etcd");
        etcd.register(
            "healthy",
            "1 while this member has a leader and a quorum (a read through the raft log works)",
            metrics.healthy.clone(),
        );
        etcd.register(
            "leader",
            "1 while this member is the raft leader",
            metrics.leader.clone(),
        );
        etcd.register(
            "raft_term",
            "The raft term this member last reported",
            metrics.raft_term.clone(),
        );
        metrics
    }

    fn set(&self, status: &MemberStatus) {
        self.healthy.set(i64::from(status.healthy));
        self.leader.set(i64::from(status.leader));
        self.raft_term.set(status.raft_term as i64);
    }
}
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// One member of the cluster, as the topology places it.
#[derive(Clone, Debug)]
pub struct MemberConfig {
    /// The host's name is the member's name.
    pub name: String,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Every member's name and peer address.
    pub initial_cluster: Vec<(String, SocketAddr)>,
    /// Keeps members of different sites from joining each other by mistake.
    pub cluster_token: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub program: PathBuf,
    pub heartbeat_interval: Duration,
    pub election_timeout: Duration,
}

impl MemberConfig {
    fn client_url(&self) -> String {
        format!("http://{}", self.client_addr)
    }

    fn peer_url(&self) -> String {
        format!("http://{}", self.peer_addr)
    }

    /// etcd's command line. `--initial-*` only matter on the first start (an existing data
    /// dir carries the membership).
    fn args(&self) -> Vec<String> {
        vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={}", self.client_url()),
            format!("--advertise-client-urls={}", self.client_url()),
            format!("--listen-peer-urls={}", self.peer_url()),
            format!("--initial-advertise-peer-urls={}", self.peer_url()),
            format!(
                "--initial-cluster={}",
                crate::initial_cluster(&self.initial_cluster)
            ),
            "--initial-cluster-state=new".into(),
            format!("--initial-cluster-token={}", self.cluster_token),
            format!(
                "--heartbeat-interval={}",
                self.heartbeat_interval.as_millis()
            ),
            format!("--election-timeout={}", self.election_timeout.as_millis()),
            // The failover agents write a few keys per second: keep ten minutes of history.
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=10m".into(),
            "--logger=zap".into(),
            // A member coming back (restarted, reconnected) asks before it campaigns, so it
            // does not depose a working leader (the default from etcd 3.5 on).
            "--pre-vote=true".into(),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot start {program}: {source} (install Debian's etcd: apt-get install etcd-server)"
    )]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },
}

/// What `/status` and `webstack status` show for a member.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MemberStatus {
    pub healthy: bool,
    pub leader: bool,
    pub raft_term: u64,
    pub summary: String,
}

/// Runs the member until `shutdown`, then stops etcd cleanly.
pub async fn run(
    config: MemberConfig,
    admin: Admin,
    metrics: MemberMetrics,
    shutdown: Shutdown,
) -> Result<(), MemberError> {
    if let Some(parent) = config.data_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| MemberError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let mut child = spawn(&config)?;
        let started = Instant::now();
        tokio::select! {
            status = watch(&config, &mut child, &admin, &metrics) => {
                tracing::warn!(?status, "etcd exited");
            }
            _ = shutdown.triggered() => {}
        }
        admin.set_ready(false);
        metrics.set(&MemberStatus::default());
        webstack_common::child::stop(&mut child, STOP_TIMEOUT, "etcd").await;
        if shutdown.is_triggered() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        let delay = backoff.next_delay();
        tracing::info!(?delay, "restarting etcd");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return Ok(()),
        }
    }
}

fn spawn(config: &MemberConfig) -> Result<Child, MemberError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&config.log)
        .map_err(|source| MemberError::Write {
            path: config.log.clone(),
            source,
        })?;
    let log_err = log.try_clone().map_err(|source| MemberError::Write {
        path: config.log.clone(),
        source,
    })?;
    let child = webstack_common::child::dies_with_parent(&config.program)
        .args(config.args())
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| MemberError::Spawn {
            program: config.program.clone(),
            source,
        })?;
    tracing::info!(pid = child.id(), "etcd started");
    Ok(child)
}

/// Polls the member until etcd exits: ready while it serves with a quorum.
async fn watch(
    config: &MemberConfig,
    child: &mut Child,
    admin: &Admin,
    metrics: &MemberMetrics,
) -> std::io::Result<std::process::ExitStatus> {
    let cluster = crate::Cluster {
        endpoints: vec![config.client_url()],
        prefix: String::new(),
        lease_ttl: Duration::from_secs(2),
        attempts: Default::default(),
    };
    let mut client = None;
    let mut tick = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            status = child.wait() => return status,
            _ = tick.tick() => {}
        }
        if client.is_none() {
            client = cluster.connect().await.ok();
        }
        let status = match client.as_mut() {
            None => MemberStatus {
                summary: "starting".into(),
                ..MemberStatus::default()
            },
            Some(client) => inspect(client).await,
        };
        if !status.healthy {
            client = None;
        }
        admin.set_ready(status.healthy);
        metrics.set(&status);
        admin.set_status(serde_json::to_value(&status).unwrap_or_default());
    }
}

/// Healthy means this member serves linearizable reads: it has a leader and a quorum.
async fn inspect(client: &mut etcd_client::Client) -> MemberStatus {
    let status = match client.status().await {
        Ok(status) => status,
        Err(error) => {
            return MemberStatus {
                summary: format!("unreachable: {error}"),
                ..MemberStatus::default()
            };
        }
    };
    let member_id = status.header().map_or(0, |h| h.member_id());
    let leader = status.leader() != 0 && status.leader() == member_id;
    // A read through the raft log proves the quorum (status alone answers without one).
    let quorum = client.get("health", None).await;
    let healthy = status.leader() != 0 && quorum.is_ok();
    let summary = match (&quorum, leader) {
        (Err(error), _) => format!("no quorum: {error}"),
        (Ok(_), true) => format!("member, leader (term {})", status.raft_term()),
        (Ok(_), false) => format!("member, follower (term {})", status.raft_term()),
    };
    MemberStatus {
        healthy,
        leader,
        raft_term: status.raft_term(),
        summary,
    }
}
