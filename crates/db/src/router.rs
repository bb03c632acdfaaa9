//! The application's database router: a connection pool per node, writes to the primary,
//! reads to a replica within the lag bound (or the primary). With failover, the primary is the
//! node etcd's leader key names *and* that answers `@@read_only = 0` (both, or no writes);
//! without, the one writable node. It polls every node, so a failover needs no change on the
//! app hosts.

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
    #[error("cannot learn the primary from etcd ({0}); refusing writes rather than guessing")]
    NoCoordination(String),
    #[error(
        "the primary failed while this write was being committed: it may or may not be stored; \
         check before sending it again"
    )]
    OutcomeUnknown,
}

/// One database node as the router last saw it.
pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    /// The application's connections.
    pool: Pool,
    /// The poll's own connection, so a pool busy with requests never starves it (a poll that
    /// times out would take a healthy primary for a dead one).
    poll: tokio::sync::Mutex<Option<Conn>>,
    opts: mysql_async::Opts,
    state: RwLock<NodeState>,
}

/// One node in the router's view (see `Router::view`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    pub name: String,
    pub reachable: bool,
    pub writer: bool,
    pub reader: bool,
    /// Transactions behind the writer; None without a writer or when unreachable.
    pub lag_transactions: Option<u64>,
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

    /// Asks the node whether it is writable and how far it got, on the poll's own connection
    /// (opened again after any failure), within `timeout`.
    async fn probe(&self, timeout: Duration) -> NodeState {
        let mut slot = self.poll.lock().await;
        let ask = async {
            if slot.is_none() {
                *slot = Some(Conn::new(self.opts.clone()).await?);
            }
            let Some(conn) = slot.as_mut() else {
                return Ok(None);
            };
            conn.query_first::<(bool, String), _>("SELECT @@read_only, @@gtid_current_pos")
                .await
        };
        match tokio::time::timeout(timeout, ask).await {
            Ok(Ok(Some((read_only, position)))) => NodeState {
                reachable: true,
                read_only,
                position: GtidPos::parse(&position),
            },
            _ => {
                // A failed or interrupted query leaves the connection in no known state.
                *slot = None;
                NodeState::default()
            }
        }
    }
}

/// Who etcd says the primary is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderView {
    /// Not asked yet, or etcd did not answer (why).
    Unknown(String),
    /// No leader key: a failover is under way (or refused).
    Nobody,
    /// The leader key names `host` in `term`.
    Node { host: String, term: i64 },
}

/// Connections the app keeps to each node: a fixed-size pool (HikariCP's recommendation, its
/// `minimumIdle` left equal to `maximumPoolSize`), opened when the app starts (`warm`) and kept
/// however long they idle, so a load, even its first seconds, logs in nowhere. A request
/// beyond them waits for one to be returned; one that could not be opened at start or was
/// closed (its node restarted) is opened again on demand.
const POOL_SIZE: usize = 20;
/// What one app holds on each node: its pool and the poll's own connection (`provision` sizes
/// `max_connections` by it).
pub(crate) const CONNECTIONS_PER_APP: usize = POOL_SIZE + 1;
/// Prepared statements kept per connection (the app has a handful).
const STATEMENT_CACHE: usize = 64;

pub struct Router {
    nodes: Vec<Arc<Node>>,
    config: ClientConfig,
    next_reader: AtomicUsize,
    /// With failover: a connection to etcd, and what its leader key said last.
    etcd: tokio::sync::Mutex<Option<webstack_coord::etcd_client::Client>>,
    leader: RwLock<LeaderView>,
    /// When `refresh_soon` last finished; its lock makes concurrent callers share one refresh.
    refreshed: tokio::sync::Mutex<Option<std::time::Instant>>,
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
                    .pass(Some(config.password.expose().to_string()))
                    .db_name(Some(config.database.clone()))
                    .prefer_socket(false)
                    // Run once per connection: pooled connections keep it (no reset below).
                    .init(vec!["SET time_zone = '+00:00'"])
                    .stmt_cache_size(STATEMENT_CACHE)
                    .pool_opts(
                        PoolOpts::default()
                            .with_constraints(
                                PoolConstraints::new(POOL_SIZE, POOL_SIZE).expect("min <= max"),
                            )
                            // The app sets no session state beyond `init`, so COM_RESET_CONNECTION
                            // would only add a round trip and empty the prepared-statement cache.
                            .with_reset_connection(false),
                    );
                let opts = mysql_async::Opts::from(opts);
                Arc::new(Node {
                    name: name.clone(),
                    addr: *addr,
                    pool: Pool::new(opts.clone()),
                    poll: tokio::sync::Mutex::new(None),
                    opts,
                    state: RwLock::new(NodeState::default()),
                })
            })
            .collect();
        Arc::new(Router {
            nodes,
            config,
            next_reader: AtomicUsize::new(0),
            etcd: tokio::sync::Mutex::new(None),
            leader: RwLock::new(LeaderView::Unknown("not asked yet".into())),
            refreshed: tokio::sync::Mutex::new(None),
        })
    }

    /// How long a write may wait for a primary during a failover.
    pub fn write_hold(&self) -> Duration {
        if self.config.coordination.is_some() {
            self.config.write_hold
        } else {
            Duration::ZERO
        }
    }

    pub fn leader(&self) -> LeaderView {
        self.leader
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_leader(&self, view: LeaderView) {
        let mut slot = self.leader.write().unwrap_or_else(|e| e.into_inner());
        if *slot != view {
            tracing::info!(?view, "primary according to etcd");
            *slot = view;
        }
    }

    /// Reads the leader key (a connection is made on first use and after a failure; one
    /// failed member is not a verdict: the read is tried once more on another).
    async fn ask_etcd(&self, cluster: &webstack_coord::Cluster) {
        let mut slot = self.etcd.lock().await;
        let mut why = String::new();
        for _ in 0..2 {
            if slot.is_none() {
                match cluster.connect().await {
                    Ok(client) => *slot = Some(client),
                    Err(error) => {
                        why = error.to_string();
                        continue;
                    }
                }
            }
            let Some(client) = slot.as_mut() else {
                continue;
            };
            let key = cluster.key("db/leader");
            let answer =
                tokio::time::timeout(webstack_coord::REQUEST_TIMEOUT, client.get(key, None)).await;
            match answer {
                Ok(Ok(response)) => {
                    let view = match response.kvs().first() {
                        None => LeaderView::Nobody,
                        Some(kv) => {
                            match serde_json::from_slice::<crate::failover::Leader>(kv.value()) {
                                Ok(leader) => LeaderView::Node {
                                    host: leader.host,
                                    term: kv.create_revision(),
                                },
                                Err(_) => {
                                    LeaderView::Unknown("the leader key is unreadable".into())
                                }
                            }
                        }
                    };
                    self.set_leader(view);
                    return;
                }
                Ok(Err(error)) => why = error.to_string(),
                Err(_) => why = "etcd did not answer".into(),
            }
            *slot = None;
        }
        self.set_leader(LeaderView::Unknown(why));
    }

    pub fn nodes(&self) -> &[Arc<Node>] {
        &self.nodes
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config.connect_timeout
    }

    /// How long one request's statements may take on a node, connection included.
    pub fn query_timeout(&self) -> Duration {
        self.config.query_timeout
    }

    /// Polls every node forever (spawn it); `refresh` once first so routing starts informed.
    pub async fn poll(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Opens each node's pool to its size, all nodes and connections at once. Each connection
    /// goes back to its pool as soon as it is open, so requests arriving meanwhile are not kept
    /// waiting for the slowest login. Best effort: a login that fails or takes longer than
    /// `WARM_LIMIT` (a node that is down) is left to be made on demand.
    pub async fn warm(&self) {
        const WARM_LIMIT: Duration = Duration::from_secs(10);
        let opening = self.nodes.iter().flat_map(|node| {
            (0..POOL_SIZE).map(move |_| async move {
                tokio::time::timeout(WARM_LIMIT, node.pool.get_conn())
                    .await
                    .is_ok_and(|conn| conn.is_ok())
            })
        });
        let opened = futures_util::future::join_all(opening).await;
        tracing::debug!(
            opened = opened.iter().filter(|ok| **ok).count(),
            of = opened.len(),
            "database pools warmed"
        );
    }

    /// Logs out of every node when the app stops (call it once the server has drained): the
    /// pools' and the polls' connections say goodbye (`COM_QUIT`) instead of vanishing with
    /// the process, which MariaDB counts in `Aborted_clients` and logs as an aborted connection,
    /// 21 lines per node at each app restart with fixed pools. Bounded: a connection still
    /// taken (a detached exchange waiting out its deadline) or a node that does not answer is
    /// left to the process's exit after `CLOSE_LIMIT`.
    pub async fn close(&self) {
        const CLOSE_LIMIT: Duration = Duration::from_secs(3);
        let closing = self.nodes.iter().map(|node| async move {
            let poll = node.poll.lock().await.take();
            if let Some(conn) = poll {
                let _ = conn.disconnect().await;
            }
            let _ = node.pool.clone().disconnect().await;
        });
        if tokio::time::timeout(CLOSE_LIMIT, futures_util::future::join_all(closing))
            .await
            .is_err()
        {
            tracing::debug!("database connections not all closed in time");
        }
    }

    /// Asks every node, concurrently, whether it is writable and how far it got, and etcd
    /// who the primary is.
    pub async fn refresh(&self) {
        if let Some(cluster) = &self.config.coordination {
            self.ask_etcd(cluster).await;
        }
        let checks = self.nodes.iter().map(|node| {
            let node = node.clone();
            let timeout = self.config.connect_timeout;
            tokio::spawn(async move {
                let state = node.probe(timeout).await;
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

    /// What writes need, now: etcd's leader and that node's answer, shared by every caller that
    /// asks while one runs (held writes poll this) and skipped when one finished within the
    /// last 50 ms. Never waits on the other nodes (a frozen one would hold every write).
    pub async fn refresh_soon(&self) {
        let mut last = self.refreshed.lock().await;
        if last.is_some_and(|at| at.elapsed() < Duration::from_millis(50)) {
            return;
        }
        let limit = self.config.connect_timeout;
        let _ = tokio::time::timeout(limit, async {
            if let Some(cluster) = &self.config.coordination {
                self.ask_etcd(cluster).await;
            }
            let leader = match self.leader() {
                LeaderView::Node { host, .. } => self.nodes.iter().find(|n| n.name == host),
                _ => None,
            };
            let probed: Vec<_> = match leader {
                Some(node) => vec![node.clone()],
                None => self.nodes.clone(),
            };
            let checks = probed.into_iter().map(|node| {
                tokio::spawn(async move {
                    let state = node.probe(limit).await;
                    *node.state.write().unwrap_or_else(|e| e.into_inner()) = state;
                })
            });
            for check in checks.collect::<Vec<_>>() {
                let _ = check.await;
            }
        })
        .await;
        *last = Some(std::time::Instant::now());
    }

    /// Records that `node` failed a request, so routing avoids it until the next poll says
    /// otherwise.
    pub fn mark_unreachable(&self, node: &Node) {
        node.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .reachable = false;
    }

    /// The node writes go to: the one etcd names, when it answers as writable (with failover);
    /// else the only reachable writable one.
    pub fn writer(&self) -> Result<Arc<Node>, RouteError> {
        let states: Vec<_> = self.nodes.iter().map(|n| (n, n.state())).collect();
        self.writer_among(&states).cloned()
    }

    fn writer_among<'a>(
        &self,
        states: &[(&'a Arc<Node>, NodeState)],
    ) -> Result<&'a Arc<Node>, RouteError> {
        if self.config.coordination.is_none() {
            return writer_of(states);
        }
        match self.leader() {
            LeaderView::Unknown(why) => Err(RouteError::NoCoordination(why)),
            LeaderView::Nobody => Err(RouteError::NoPrimary),
            LeaderView::Node { host, .. } => states
                .iter()
                .find(|(n, s)| n.name == host && s.reachable && !s.read_only)
                .map(|(n, _)| *n)
                // Named but not yet writable (being promoted), or unreachable: no writes.
                .ok_or(RouteError::NoPrimary),
        }
    }

    /// The node a read goes to: a replica within the lag bound that has applied `after` (the
    /// session's last write, for read-your-writes), else the primary. With no primary, the most
    /// advanced reachable replica (round-robin among equals), so reads survive the primary's
    /// loss without going back in time more than they must.
    pub fn reader(&self, after: Option<&GtidPos>) -> Result<Arc<Node>, RouteError> {
        let states = self.reachable_states();
        let writer = self.writer_among(&states).ok();
        // The position reads are measured against, and how far behind it a replica may be.
        let (reference, allowed_lag) = match writer {
            Some(writer) => (writer.state().position, self.config.max_replica_lag),
            None => (most_advanced(&states), 0),
        };
        let replicas: Vec<_> = states
            .iter()
            .filter(|(_, state)| {
                state.read_only
                    && state.position.behind(&reference) <= allowed_lag
                    && after.is_none_or(|a| state.position.includes(a))
            })
            .collect();
        if !replicas.is_empty() {
            let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % replicas.len();
            return Ok(replicas[i].0.clone());
        }
        if let Some(writer) = writer {
            return Ok(writer.clone());
        }
        // The session's write is on no reachable node: the most advanced one, as best effort
        // (with several replication domains, the one with the most transactions).
        states
            .iter()
            .find(|(_, s)| s.position.includes(&reference))
            .or_else(|| {
                states
                    .iter()
                    .max_by_key(|(_, s)| GtidPos::default().behind(&s.position))
            })
            .map(|(n, _)| (*n).clone())
            .ok_or(RouteError::NoNode)
    }

    /// How the router sees each node right now (the app's metrics): where writes go, which
    /// nodes take reads, and how far behind the writer each one is.
    pub fn view(&self) -> Vec<NodeView> {
        let all: Vec<_> = self.nodes.iter().map(|n| (n, n.state())).collect();
        let reachable: Vec<_> = all.iter().filter(|(_, s)| s.reachable).cloned().collect();
        let writer = self.writer_among(&reachable).ok().cloned();
        let reference = writer.as_ref().map(|w| w.state().position);
        let mut view: Vec<NodeView> = all
            .iter()
            .map(|(node, state)| {
                let lag = reference
                    .as_ref()
                    .filter(|_| state.reachable)
                    .map(|r| state.position.behind(r));
                NodeView {
                    name: node.name.clone(),
                    reachable: state.reachable,
                    writer: writer.as_ref().is_some_and(|w| Arc::ptr_eq(w, node)),
                    reader: state.reachable
                        && state.read_only
                        && lag.is_some_and(|lag| lag <= self.config.max_replica_lag),
                    lag_transactions: lag,
                }
            })
            .collect();
        // With no replica in bounds, reads go to the writer.
        if !view.iter().any(|n| n.reader) {
            for node in view.iter_mut().filter(|n| n.writer) {
                node.reader = true;
            }
        }
        view
    }

    /// Every reachable node with its state as last polled.
    fn reachable_states(&self) -> Vec<(&Arc<Node>, NodeState)> {
        self.nodes
            .iter()
            .map(|n| (n, n.state()))
            .filter(|(_, s)| s.reachable)
            .collect()
    }

    /// For a session whose last write (`after`) no replica has applied yet (as last polled): a
    /// replica within the lag bound, where its read can wait for that write
    /// (`MASTER_GTID_WAIT`) instead of loading the primary. `None` when there is none.
    pub fn catching_up_reader(&self, after: &GtidPos) -> Option<Arc<Node>> {
        let states = self.reachable_states();
        let writer = self.writer_among(&states).ok()?;
        let reference = writer.state().position;
        let candidates: Vec<_> = states
            .iter()
            .filter(|(n, state)| {
                !Arc::ptr_eq(n, writer)
                    && state.read_only
                    && state.position.behind(&reference) <= self.config.max_replica_lag
                    && !state.position.includes(after)
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % candidates.len();
        Some(candidates[i].0.clone())
    }
}

/// The only reachable writable node among `states`.
fn writer_of<'a>(states: &[(&'a Arc<Node>, NodeState)]) -> Result<&'a Arc<Node>, RouteError> {
    let writable: Vec<_> = states
        .iter()
        .filter(|(_, s)| s.reachable && !s.read_only)
        .map(|(n, _)| *n)
        .collect();
    match writable.as_slice() {
        [one] => Ok(one),
        [] => Err(RouteError::NoPrimary),
        many => Err(RouteError::SplitBrain(
            many.iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )),
    }
}

/// The furthest position among `states`: per domain the highest sequence any node applied,
/// so a node includes it only if it is at least as far as every other one everywhere.
fn most_advanced(states: &[(&Arc<Node>, NodeState)]) -> GtidPos {
    states.iter().fold(GtidPos::default(), |furthest, (_, s)| {
        furthest.union(&s.position)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r_config() -> ClientConfig {
        ClientConfig {
            nodes: vec![
                ("a".into(), SocketAddr::from(([127, 0, 0, 1], 1))),
                ("b".into(), SocketAddr::from(([127, 0, 0, 1], 2))),
            ],
            user: "u".into(),
            password: "p".to_string().into(),
            database: "d".into(),
            max_replica_lag: 10,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            write_hold: Duration::from_secs(5),
            coordination: None,
        }
    }

    /// A router over three nodes that are never connected to; states are set by hand.
    fn router(max_replica_lag: u64) -> Arc<Router> {
        let nodes = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    SocketAddr::from(([127, 0, 0, 1], 1 + i as u16)),
                )
            })
            .collect();
        Router::new(ClientConfig {
            nodes,
            user: "u".into(),
            password: "p".to_string().into(),
            database: "d".into(),
            max_replica_lag,
            poll_interval: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            query_timeout: Duration::from_secs(1),
            write_hold: Duration::ZERO,
            coordination: None,
        })
    }

    fn set(router: &Router, i: usize, reachable: bool, read_only: bool, position: &str) {
        *router.nodes[i].state.write().unwrap() = NodeState {
            reachable,
            read_only,
            position: GtidPos::parse(position),
        };
    }

    fn reads(router: &Router, after: Option<&str>, n: usize) -> Vec<String> {
        let after = after.map(GtidPos::parse);
        let mut names: Vec<_> = (0..n)
            .map(|_| router.reader(after.as_ref()).unwrap().name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    #[tokio::test]
    async fn reads_go_to_replicas_within_the_lag_bound_else_the_primary() {
        let r = router(10);
        set(&r, 0, true, false, "0-1-100");
        set(&r, 1, true, true, "0-1-95");
        set(&r, 2, true, true, "0-1-50");
        assert_eq!(r.writer().unwrap().name, "a");
        assert_eq!(reads(&r, None, 4), ["b"], "c is 50 behind");
        assert_eq!(reads(&r, Some("0-1-98"), 4), ["a"], "read-your-writes");
        set(&r, 2, true, true, "0-1-100");
        assert_eq!(reads(&r, None, 4), ["b", "c"]);
        assert_eq!(reads(&r, Some("0-1-98"), 4), ["c"]);
    }

    #[tokio::test]
    async fn with_the_primary_down_reads_go_to_the_most_advanced_replica() {
        let r = router(1000);
        set(&r, 0, false, false, "");
        set(&r, 1, true, true, "0-1-95");
        set(&r, 2, true, true, "0-1-50");
        assert!(matches!(r.writer(), Err(RouteError::NoPrimary)));
        assert_eq!(reads(&r, None, 4), ["b"], "never the one 45 behind");
        set(&r, 2, true, true, "0-1-95");
        assert_eq!(reads(&r, None, 4), ["b", "c"], "equals share");
        // A session's write no reachable node has: the most advanced still answers.
        assert_eq!(reads(&r, Some("0-1-99"), 4).len(), 1);
        set(&r, 1, false, true, "0-1-95");
        set(&r, 2, false, true, "0-1-95");
        assert!(matches!(r.reader(None), Err(RouteError::NoNode)));
    }

    #[tokio::test]
    async fn with_failover_writes_go_only_to_the_node_etcd_names_when_it_is_writable() {
        let r = Router::new(ClientConfig {
            coordination: Some(webstack_coord::Cluster {
                endpoints: vec!["http://127.0.0.1:1".into()],
                prefix: "/t/".into(),
                lease_ttl: Duration::from_secs(2),
                attempts: Default::default(),
            }),
            ..r_config()
        });
        set(&r, 0, true, false, "0-1-10");
        set(&r, 1, true, true, "0-1-10");
        assert!(
            matches!(r.writer(), Err(RouteError::NoCoordination(_))),
            "etcd not asked yet"
        );
        r.set_leader(LeaderView::Node {
            host: "a".into(),
            term: 5,
        });
        assert_eq!(r.writer().unwrap().name, "a");
        // etcd names b (just promoted), a still answers writable: neither takes writes.
        r.set_leader(LeaderView::Node {
            host: "b".into(),
            term: 9,
        });
        assert!(matches!(r.writer(), Err(RouteError::NoPrimary)));
        set(&r, 1, true, false, "0-1-10");
        assert_eq!(
            r.writer().unwrap().name,
            "b",
            "a is stale: never written to"
        );
        r.set_leader(LeaderView::Nobody);
        assert!(matches!(r.writer(), Err(RouteError::NoPrimary)));
        assert_eq!(r.write_hold(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_session_ahead_of_every_replica_waits_on_one_that_is_catching_up() {
        let r = router(10);
        set(&r, 0, true, false, "0-1-100");
        set(&r, 1, true, true, "0-1-97");
        set(&r, 2, true, true, "0-1-50");
        let after = GtidPos::parse("0-1-99");
        assert_eq!(
            r.reader(Some(&after)).unwrap().name,
            "a",
            "no replica has it yet"
        );
        let waiting = r
            .catching_up_reader(&after)
            .expect("b is within the lag bound");
        assert_eq!(waiting.name, "b", "never c, 50 behind");
        set(&r, 1, true, true, "0-1-99");
        assert!(
            r.catching_up_reader(&after).is_none(),
            "b has it: no wait needed"
        );
        set(&r, 1, false, true, "0-1-97");
        assert!(
            r.catching_up_reader(&after).is_none(),
            "unreachable replicas are no help"
        );
    }

    #[tokio::test]
    async fn two_writable_nodes_take_no_writes() {
        let r = router(10);
        set(&r, 0, true, false, "0-1-10");
        set(&r, 1, true, false, "0-1-10");
        set(&r, 2, true, true, "0-1-10");
        assert!(matches!(r.writer(), Err(RouteError::SplitBrain(names)) if names == "a, b"));
        assert_eq!(reads(&r, None, 3), ["c"]);
    }
}
