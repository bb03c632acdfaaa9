//! The application's database router: a connection pool per node, writes to the one writable
//! node, reads to a replica within the lag bound (or the primary). It finds the primary by
//! polling `@@read_only` on every node, so a failover needs no change on the app hosts.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder, Pool, PoolConstraints, PoolOpts};

use crate::ClientConfig;
use crate::gtid::GtidPos;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("no writable database node (the primary is unreachable)")]
    NoPrimary,
    #[error("more than one database node is writable ({0}); refusing writes until one is fenced")]
    SplitBrain(String),
    #[error("no database node is reachable")]
    NoNode,
    #[error("database: {0}")]
    Sql(#[from] mysql_async::Error),
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
}

/// One database node as the router last saw it.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    pool: Pool,
    state: RwLock<NodeState>,
}

#[derive(Clone, Debug, Default)]
pub struct NodeState {
    pub reachable: bool,
    pub read_only: bool,
    pub position: GtidPos,
}

impl Node {
    pub fn state(&self) -> NodeState {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A pooled connection, bounded by the connect timeout.
    pub async fn conn(&self, timeout: Duration) -> Result<Conn, RouteError> {
        match tokio::time::timeout(timeout, self.pool.get_conn()).await {
            Ok(conn) => Ok(conn?),
            Err(_) => Err(RouteError::Timeout(timeout)),
        }
    }
}

pub struct Router {
    nodes: Vec<Arc<Node>>,
    config: ClientConfig,
    next_reader: AtomicUsize,
}

impl Router {
    pub fn new(config: ClientConfig) -> Arc<Router> {
        let nodes = config
            .nodes
            .iter()
            .map(|(name, addr)| {
                let opts = OptsBuilder::default()
                    .ip_or_hostname(addr.ip().to_string())
                    .tcp_port(addr.port())
                    .user(Some(config.user.clone()))
                    .pass(Some(config.password.clone()))
                    .db_name(Some(config.database.clone()))
                    .prefer_socket(false)
                    .init(vec!["SET time_zone = '+00:00'"])
                    .pool_opts(
                        PoolOpts::default()
                            .with_constraints(PoolConstraints::new(0, 20).expect("0 <= 20")),
                    );
                Arc::new(Node {
                    name: name.clone(),
                    addr: *addr,
                    pool: Pool::new(opts),
                    state: RwLock::new(NodeState::default()),
                })
            })
            .collect();
        Arc::new(Router {
            nodes,
            config,
            next_reader: AtomicUsize::new(0),
        })
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// Polls every node forever (spawn it); `refresh` once first so routing starts informed.
    pub async fn poll(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Asks every node, concurrently, whether it is writable and how far it got.
    pub async fn refresh(&self) {
        let checks = self.nodes.iter().map(|node| {
            let node = node.clone();
            let timeout = self.config.connect_timeout;
            tokio::spawn(async move {
                let probe = async {
                    let mut conn = node.pool.get_conn().await?;
                    conn.query_first::<(bool, String), _>("SELECT @@read_only, @@gtid_current_pos").await
                };
                let state = match tokio::time::timeout(timeout, probe).await {
                    Ok(Ok(Some((read_only, pos)))) => NodeState { reachable: true, read_only, position: GtidPos::parse(&pos) },
                    _ => NodeState::default(),
                };
                let was = node.state();
                if was.reachable != state.reachable || was.read_only != state.read_only {
                    tracing::info!(node = %node.name, reachable = state.reachable, read_only = state.read_only, "database node changed");
                }
                *node.state.write().unwrap_or_else(|e| e.into_inner()) = state;
            })
        });
        for check in checks.collect::<Vec<_>>() {
            let _ = check.await;
        }
    }

    /// Records that `node` failed a request, so routing avoids it until the next poll says
    /// otherwise.
    pub fn mark_unreachable(&self, node: &Node) {
        node.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .reachable = false;
    }

    /// The node writes go to: the only reachable writable one.
    pub fn writer(&self) -> Result<Arc<Node>, RouteError> {
        let writable: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| {
                matches!(
                    n.state(),
                    NodeState {
                        reachable: true,
                        read_only: false,
                        ..
                    }
                )
            })
            .collect();
        match writable.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(RouteError::NoPrimary),
            many => Err(RouteError::SplitBrain(
                many.iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
        }
    }

    /// The node a read goes to: a replica within the lag bound that has applied `after` (the
    /// session's last write, for read-your-writes), else the primary, else (primary down) the
    /// most advanced reachable node, so reads survive the primary's loss.
    pub fn reader(&self, after: Option<&GtidPos>) -> Result<Arc<Node>, RouteError> {
        let writer = self.writer().ok();
        let primary_pos = writer.as_ref().map(|w| w.state().position);
        let replicas: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| {
                let state = n.state();
                state.reachable
                    && state.read_only
                    && primary_pos
                        .as_ref()
                        .is_none_or(|p| state.position.behind(p) <= self.config.max_replica_lag)
                    && after.is_none_or(|a| state.position.includes(a))
            })
            .collect();
        if !replicas.is_empty() {
            let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % replicas.len();
            return Ok(replicas[i].clone());
        }
        if let Some(writer) = writer {
            return Ok(writer);
        }
        self.nodes
            .iter()
            .filter(|n| n.state().reachable)
            .max_by_key(|n| GtidPos::default().behind(&n.state().position))
            .cloned()
            .ok_or(RouteError::NoNode)
    }
}
