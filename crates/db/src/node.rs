//! The `db` role: provisions this host's MariaDB, runs `mariadbd` as a child (restarted with
//! backoff if it dies), makes it primary or replica, and reports its replication state.
//! See LIFECYCLE.md beside this file.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use tokio::process::Child;
use webstack_common::backoff::Backoff;
use webstack_common::{Admin, Shutdown};

use crate::failover::{self, Agent};
use crate::gtid::GtidPos;
use crate::metrics::{ServerSample, ServerStats};
use crate::provision::{self, ADMIN_USER, MONITOR_USER, REPL_USER, sql_string};
use crate::{NodeConfig, secrets};

const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// One connection attempt to mariadbd, and one round of status queries: a server that hangs
/// makes the node not ready instead of freezing the role.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const INSPECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Accounts, schema and replication set up after a start.
const CONFIGURE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    #[error(
        "cannot start {program}: {source} (install Debian's mariadb-server: apt-get install mariadb-server)"
    )]
    Spawn {
        program: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("mariadbd did not accept connections within {0:?}; see its log")]
    StartTimeout(Duration),
    #[error("mariadbd exited during startup ({0}); see its log")]
    ExitedEarly(std::process::ExitStatus),
    #[error("SQL: {0}")]
    Sql(#[from] mysql_async::Error),
    #[error("mariadbd did not answer within {0:?}")]
    Unresponsive(Duration),
    #[error("etcd: {0}")]
    Coordination(String),
}

/// Runs `work` within `limit`; a timeout is an error like any other.
async fn bounded<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, NodeError>>,
) -> Result<T, NodeError> {
    tokio::time::timeout(limit, work)
        .await
        .unwrap_or(Err(NodeError::Unresponsive(limit)))
}

/// A new admin connection over the socket, within `CONNECT_TIMEOUT`.
pub(crate) async fn connect(config: &NodeConfig, password: &str) -> Result<Conn, NodeError> {
    bounded(CONNECT_TIMEOUT, async {
        Ok(Conn::new(admin_opts(config, password)).await?)
    })
    .await
}

/// What `/status` and `webstack status` show for a node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeStatus {
    /// primary, replica, or down.
    pub role: String,
    pub read_only: bool,
    pub gtid_current_pos: String,
    pub io_running: Option<String>,
    pub sql_running: Option<String>,
    /// Transactions behind the primary (None when the primary cannot be asked).
    pub lag_transactions: Option<u64>,
    pub seconds_behind_master: Option<u64>,
    pub last_error: Option<String>,
    /// With failover: the leader key's term as last seen, what the agent is doing, and why no
    /// node may be promoted when that is the case.
    pub term: Option<i64>,
    pub failover: Option<String>,
    pub refused: Option<String>,
    /// Set when the node cannot become ready by itself (its history diverged from the
    /// primary's): what an operator must do. `webstack start` reports it instead of waiting.
    pub blocked: Option<String>,
    /// One line for the status table.
    pub summary: String,
}

/// Runs the node until `shutdown`, then stops `mariadbd` cleanly.
pub async fn run(
    config: NodeConfig,
    metrics: failover::metrics::Metrics,
    stats: ServerStats,
    admin: Admin,
    shutdown: Shutdown,
) -> Result<(), NodeError> {
    let admin_password = secrets::read(&config.state_dir, "admin")?;
    let admin_password = admin_password.expose();
    // The first bootstrap takes a while: a stop meanwhile ends it (mariadb-install-db is
    // killed with its future) instead of waiting for it.
    let mut init_file = tokio::select! {
        prepared = provision::prepare(&config, admin_password) => prepared?,
        _ = shutdown.triggered() => return Ok(()),
    };
    stop_stale(&config).await;
    // Without failover no agent sets the primary gauge: the node loop does, from the role.
    let primary = metrics.primary.clone();
    // With failover, one agent for the life of the role: it keeps the lease (and the leader
    // key) across a restart of mariadbd.
    let mut agent = config
        .failover
        .clone()
        .map(|cluster| Agent::new(config.clone(), cluster, metrics));
    let mut backoff = Backoff::new(Duration::from_millis(500), MAX_BACKOFF);
    loop {
        let mut child = spawn(&config, init_file.as_deref())?;
        if let Some(agent) = agent.as_ref() {
            agent.set_server_pid(child.id().unwrap_or(0));
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            result = serve(&config, admin_password, &mut child, &admin, &stats, &primary, agent.as_mut()) => result,
            _ = shutdown.triggered() => Ok(()),
        };
        admin.set_ready(false);
        // mariadbd is gone (or going): no stale role, threads or positions in the metrics.
        stats.set_status(&NodeStatus {
            role: "down".into(),
            summary: "mariadbd is not running".into(),
            ..NodeStatus::default()
        });
        stats.set_server(None);
        primary.set(0);
        if shutdown.is_triggered() {
            if let Some(agent) = agent.as_mut() {
                // A primary hands over before it stops, so writes move at once.
                let mut conn = connect(&config, admin_password).await.ok();
                agent.shutdown(conn.as_mut()).await;
            }
            webstack_common::child::stop(&mut child, STOP_TIMEOUT, "mariadbd").await;
            if let Some(agent) = agent.as_mut() {
                agent.set_server_pid(0);
                agent.revoke().await;
            }
            return Ok(());
        }
        match outcome {
            Ok(()) => tracing::warn!("mariadbd exited"),
            Err(error) => tracing::error!(%error, "mariadbd failed"),
        }
        webstack_common::child::stop(&mut child, STOP_TIMEOUT, "mariadbd").await;
        if let Some(agent) = agent.as_ref() {
            agent.set_server_pid(0);
        }
        if started.elapsed() > Duration::from_secs(30) {
            backoff.reset();
        }
        // The init file is only for the very first start; keep it until a start succeeded.
        if init_file.as_ref().is_some_and(|f| !f.exists()) {
            init_file = None;
        }
        let delay = backoff.next_delay();
        tracing::info!(?delay, "restarting mariadbd");
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.triggered() => return Ok(()),
        }
    }
}

fn spawn(config: &NodeConfig, init_file: Option<&Path>) -> Result<Child, NodeError> {
    // It dies with this role: a mariadbd whose role was killed must not stay writable behind
    // everyone's back.
    let mut command = webstack_common::child::dies_with_parent(&config.mariadbd);
    command.arg(format!(
        "--defaults-file={}",
        config.defaults_file().display()
    ));
    if config.failover.is_some() {
        // Every start is a replica's: crash recovery truncates binlog transactions that no
        // replica acknowledged (semi-sync AFTER_SYNC), so an old primary never keeps a
        // history the new one lacks.
        command.arg("--init-rpl-role=SLAVE");
    }
    if let Some(init) = init_file {
        command.arg(format!("--init-file={}", init.display()));
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn().map_err(|source| NodeError::Spawn {
        program: config.mariadbd.clone(),
        source,
    })?;
    tracing::info!(pid = child.id(), "mariadbd started");
    Ok(child)
}

/// A mariadbd left running by an earlier webstack process that died without stopping it
/// (its pid file names it): stopped before we start our own on the same data dir.
async fn stop_stale(config: &NodeConfig) {
    let Ok(text) = std::fs::read_to_string(config.pid_file()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    let is_ours = std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| {
        String::from_utf8_lossy(&cmd).contains(&config.defaults_file().display().to_string())
    });
    if !is_ours {
        return;
    }
    tracing::warn!(pid, "stopping a mariadbd left over from an earlier run");
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

fn admin_opts(config: &NodeConfig, password: &str) -> OptsBuilder {
    OptsBuilder::default()
        .socket(Some(config.socket().display().to_string()))
        .user(Some(ADMIN_USER))
        .pass(Some(password.to_string()))
        .prefer_socket(true)
}

/// Waits for mariadbd, configures it, then watches it until it exits.
async fn serve(
    config: &NodeConfig,
    admin_password: &str,
    child: &mut Child,
    admin: &Admin,
    stats: &ServerStats,
    primary: &prometheus_client::metrics::gauge::Gauge,
    mut agent: Option<&mut Agent>,
) -> Result<(), NodeError> {
    let deadline = Instant::now() + START_TIMEOUT;
    let mut conn = loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(NodeError::ExitedEarly(status));
        }
        match connect(config, admin_password).await {
            Ok(conn) => break conn,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => return Err(NodeError::StartTimeout(START_TIMEOUT)),
        }
    };
    let _ = std::fs::remove_file(config.node_dir().join("init.sql"));
    if agent.is_some() {
        bounded(CONFIGURE_TIMEOUT, configure_accounts(config, &mut conn)).await?;
        tracing::info!("mariadb configured; the failover agent decides its role");
    } else {
        bounded(CONFIGURE_TIMEOUT, configure(config, &mut conn)).await?;
        tracing::info!(
            role = if config.is_primary() {
                "primary"
            } else {
                "replica"
            },
            "mariadb configured"
        );
    }

    let monitor_password = secrets::read(&config.state_dir, "monitor")
        .map(|s| s.expose().to_string())
        .unwrap_or_default();
    let every = if agent.is_some() {
        failover::agent::TICK
    } else {
        Duration::from_secs(1)
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The server's statistics on a connection and task of their own: a slow `SHOW GLOBAL
    // STATUS` must never delay the failover agent's tick (its lease).
    let sampler = tokio::spawn(sample_server(
        config.clone(),
        admin_password.to_string(),
        stats.clone(),
    ));
    let _sampler = AbortOnDrop(sampler);
    // A replica's connection to its primary, for the lag (without failover).
    let mut primary_link: Option<Conn> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(|source| NodeError::Spawn { program: config.mariadbd.clone(), source })?;
                tracing::warn!(%status, "mariadbd exited");
                return Ok(());
            }
            _ = tick.tick() => {
                let looked = match agent.as_deref_mut() {
                    Some(agent) => match bounded(failover::agent::PROMOTE_LIMIT, agent.tick(&mut conn)).await {
                        Ok(tick) if tick.kill => {
                            if let Some(pid) = child.id() {
                                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                            }
                            let _ = child.wait().await;
                            return Ok(());
                        }
                        Ok(tick) => Ok((tick.status, tick.ready)),
                        Err(error) => Err(error),
                    },
                    None => bounded(INSPECT_TIMEOUT, inspect(config, &mut conn, &monitor_password, &mut primary_link))
                        .await
                        .map(|status| {
                            let ready = match status.role.as_str() {
                                "primary" => true,
                                "replica" => status.io_running.as_deref() == Some("Yes") && status.sql_running.as_deref() == Some("Yes"),
                                _ => false,
                            };
                            (status, ready)
                        }),
                };
                let (status, ready) = match looked {
                    Ok(looked) => looked,
                    Err(error) => {
                        tracing::warn!(%error, "cannot inspect mariadb");
                        // A new connection for the next round (an interrupted query leaves this
                        // one in no known state); the server may be restarting. The link to the
                        // primary too: the timeout may have cut its query short.
                        primary_link = None;
                        if let Ok(fresh) = connect(config, admin_password).await {
                            conn = fresh;
                        }
                        (NodeStatus { role: "down".into(), summary: format!("unreachable: {error}"), ..NodeStatus::default() }, false)
                    }
                };
                admin.set_ready(ready);
                admin.set_status(serde_json::to_value(&status).unwrap_or_default());
                stats.set_status(&status);
                if agent.is_none() {
                    primary.set(i64::from(status.role == "primary"));
                }
            }
        }
    }
}

/// Accounts for replication, the app and monitoring, on every node and not binlogged (each
/// node has its own), so new hosts get theirs and passwords follow the secrets.
async fn configure_accounts(config: &NodeConfig, conn: &mut Conn) -> Result<(), NodeError> {
    let repl = secrets::read(&config.state_dir, "repl")?;
    let app = secrets::read(&config.state_dir, "app")?;
    let monitor = secrets::read(&config.state_dir, "monitor")?;
    conn.query_drop("SET SESSION sql_log_bin = 0").await?;
    for statement in
        provision::account_statements(config, repl.expose(), app.expose(), monitor.expose())
    {
        conn.query_drop(statement).await?;
    }
    conn.query_drop("SET SESSION sql_log_bin = 1").await?;
    Ok(())
}

/// Without failover, makes the node what the topology says: on the primary writable with the
/// schema; on a replica read-only and replicating from the primary by GTID.
async fn configure(config: &NodeConfig, conn: &mut Conn) -> Result<(), NodeError> {
    configure_accounts(config, conn).await?;
    let repl = secrets::read(&config.state_dir, "repl")?;

    if config.is_primary() {
        // A node that replicated before (e.g. an old primary coming back) stops doing so.
        conn.query_drop("STOP SLAVE").await?;
        conn.query_drop("SET GLOBAL read_only = OFF").await?;
        conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = ON")
            .await?;
        for statement in provision::schema_statements(&config.database) {
            conn.query_drop(statement).await?;
        }
        return Ok(());
    }

    conn.query_drop("SET GLOBAL read_only = ON").await?;
    conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
        .await?;
    let current: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    let configured_host = current
        .as_ref()
        .and_then(|row| row.get::<Option<String>, _>("Master_Host").flatten());
    let primary_host = config.primary_addr.ip().to_string();
    if configured_host.as_deref() != Some(primary_host.as_str()) {
        conn.query_drop("STOP SLAVE").await?;
        // CHANGE MASTER takes no placeholders: literals, quoted.
        conn.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, MASTER_PASSWORD = {}, \
             MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1",
            sql_string(&primary_host),
            config.primary_addr.port(),
            sql_string(REPL_USER),
            sql_string(repl.expose()),
        ))
        .await?;
    }
    conn.query_drop("START SLAVE").await?;
    Ok(())
}

/// The node's role, replication threads and lag (asking the primary for its position).
async fn inspect(
    config: &NodeConfig,
    conn: &mut Conn,
    monitor_password: &str,
    primary_link: &mut Option<Conn>,
) -> Result<NodeStatus, NodeError> {
    let (read_only, pos): (bool, String) = conn
        .query_first("SELECT @@read_only, @@gtid_current_pos")
        .await?
        .unwrap_or((true, String::new()));
    let replica: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    let mut status = NodeStatus {
        read_only,
        gtid_current_pos: pos.clone(),
        ..NodeStatus::default()
    };
    if !read_only {
        status.role = "primary".into();
        status.summary = format!("primary, writable, gtid {pos}");
        return Ok(status);
    }
    status.role = "replica".into();
    if let Some(row) = replica {
        let text = |name: &str| row.get::<Option<String>, _>(name).flatten();
        status.io_running = text("Slave_IO_Running");
        status.sql_running = text("Slave_SQL_Running");
        status.seconds_behind_master = text("Seconds_Behind_Master").and_then(|s| s.parse().ok());
        status.last_error = [text("Last_IO_Error"), text("Last_SQL_Error")]
            .into_iter()
            .flatten()
            .find(|e| !e.is_empty());
    }
    status.lag_transactions = primary_position(config, monitor_password, primary_link)
        .await
        .map(|primary| GtidPos::parse(&pos).behind(&primary));
    status.summary = format!(
        "replica of {}, io {} sql {}, lag {} trx",
        config.primary_name,
        status.io_running.as_deref().unwrap_or("-"),
        status.sql_running.as_deref().unwrap_or("-"),
        status
            .lag_transactions
            .map_or("?".to_string(), |l| l.to_string()),
    );
    if let Some(error) = &status.last_error {
        status.summary.push_str(&format!(", error: {error}"));
    }
    Ok(status)
}

/// How often the server's statistics are read for the metrics.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Reads the server's statistics every `SAMPLE_EVERY` (reconnecting after a failure) until
/// aborted; a failed read clears them, so stale numbers are never exported.
async fn sample_server(config: NodeConfig, password: String, stats: ServerStats) {
    let mut conn: Option<Conn> = None;
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if conn.is_none() {
            conn = connect(&config, &password).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            stats.set_server(None);
            continue;
        };
        match bounded(INSPECT_TIMEOUT, async { Ok(ServerSample::read(c).await?) }).await {
            Ok(sample) => stats.set_server(Some(sample)),
            Err(error) => {
                tracing::debug!(%error, "cannot read the server's statistics");
                stats.set_server(None);
                conn = None;
            }
        }
    }
}

/// Aborts a task when its owner's scope ends (here: when `serve` returns or is dropped).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The primary's binlog position, on `link`: one connection kept open across calls (a new one
/// each second counted one more connection on the primary per replica per second, which hid
/// the app's own in MariaDB's `Connections`), opened again after a failure or a timeout (an
/// interrupted query leaves it in no known state).
async fn primary_position(
    config: &NodeConfig,
    monitor_password: &str,
    link: &mut Option<Conn>,
) -> Option<GtidPos> {
    let attempt = async {
        if link.is_none() {
            let opts = OptsBuilder::default()
                .ip_or_hostname(config.primary_addr.ip().to_string())
                .tcp_port(config.primary_addr.port())
                .user(Some(MONITOR_USER))
                .pass(Some(monitor_password.to_string()))
                .prefer_socket(false);
            *link = Some(Conn::new(opts).await.ok()?);
        }
        let conn = link.as_mut()?;
        conn.query_first::<String, _>("SELECT @@gtid_binlog_pos")
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(1), attempt).await {
        Ok(Some(pos)) => pos.map(|p| GtidPos::parse(&p)),
        _ => {
            *link = None;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sql_strings_are_quoted() {
        assert_eq!(crate::provision::sql_string("abc"), "'abc'");
        assert_eq!(crate::provision::sql_string("a'b\\c"), "'a\\'b\\\\c'");
    }
}
