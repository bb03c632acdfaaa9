//! The failover agent inside each db role (Patroni's model): it publishes its node's state in
//! etcd under a lease, holds the leader key while its node is primary, fences its node the
//! moment it cannot prove it still leads, and competes for the key under the promotion rule
//! (`decide.rs`) when there is no primary. One `tick` every 200 ms; see LIFECYCLE.md.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use mysql_async::prelude::*;
use webstack_coord::Cluster;
use webstack_coord::etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
};

use super::decide::{Decision, Leader, Member, PrimaryReport, decide};
use crate::gtid::GtidPos;
use crate::node::{NodeError, NodeStatus};
use crate::provision::{self, REPL_USER, sql_string};
use crate::{NodeConfig, secrets};

/// How often the agent looks at its node and at etcd.
pub const TICK: Duration = Duration::from_millis(200);
/// The lease is renewed this often (the TTL is at least 2 s).
const RENEW_EVERY: Duration = Duration::from_millis(300);
/// A node whose mariadbd has not answered for this long stops renewing its lease: its leader
/// key, if it holds it, expires, and a replica takes over.
const HEALTH_GRACE: Duration = Duration::from_millis(600);
/// A planned handover waits this long for a replica to receive the last writes.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);
/// A promotion waits this long for the relay log to be applied.
const APPLY_WAIT_SECS: u32 = 5;
/// `SET GLOBAL read_only = ON` waits for commits in progress; longer than this, it is ended.
const FENCE_LIMIT: Duration = Duration::from_millis(500);
/// One look at the node; a mariadbd that takes longer is not answering.
const INSPECT_LIMIT: Duration = Duration::from_millis(700);
/// The longest a promotion may take (the caller bounds a tick by this).
pub const PROMOTE_LIMIT: Duration = Duration::from_secs(APPLY_WAIT_SECS as u64 + 4);
/// A replica this many transactions behind (or less) counts as caught up for semi-sync.
const CAUGHT_UP: u64 = 10;
/// A node that fails to become primary this many times in a row gives the key up.
const PROMOTE_ATTEMPTS: u32 = 5;
/// Every member record is rewritten at least this often even when nothing changed.
const REPUBLISH_EVERY: Duration = Duration::from_secs(1);

/// The keys of the database under the site's prefix.
struct Keys {
    leader: String,
    members: String,
    primary: String,
    bootstrapped: String,
    force: String,
    switchover: String,
    all: String,
}

impl Keys {
    fn new(cluster: &Cluster) -> Keys {
        Keys {
            leader: cluster.key("db/leader"),
            members: cluster.key("db/members/"),
            primary: cluster.key("db/primary"),
            bootstrapped: cluster.key("db/bootstrapped"),
            force: cluster.key("db/force"),
            switchover: cluster.key("db/switchover"),
            all: cluster.key("db/"),
        }
    }
}

/// The key names an operator's command writes: `webstack db failover --force` and
/// `webstack db switchover`.
pub fn force_key(cluster: &Cluster) -> String {
    Keys::new(cluster).force
}
pub fn switchover_key(cluster: &Cluster) -> String {
    Keys::new(cluster).switchover
}
pub fn leader_key(cluster: &Cluster) -> String {
    Keys::new(cluster).leader
}

/// The lease this role's keys live on, kept alive by a task while the node is healthy.
#[derive(Default)]
struct Lease {
    /// 0: none yet (or it expired).
    id: AtomicI64,
    /// When the last renewal that etcd confirmed was sent.
    renewed: Mutex<Option<Instant>>,
    /// Renewals stop after this: the node's mariadbd was last seen answering before it.
    healthy_until: Mutex<Option<Instant>>,
    /// Set while this node takes writes as the leader: the watchdog fences it the moment the
    /// lease is no longer proven, whatever the agent's tick is busy with.
    leading: std::sync::atomic::AtomicBool,
    /// The running mariadbd's pid (0: none), for the watchdog and a release.
    server_pid: std::sync::atomic::AtomicI32,
}

impl Lease {
    fn id(&self) -> i64 {
        self.id.load(Ordering::SeqCst)
    }

    fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// SIGKILL to the running mariadbd: it restarts read-only as a replica, and crash recovery
    /// truncates what no replica acknowledged.
    fn kill_server(&self) {
        let pid = self.server_pid.load(Ordering::SeqCst);
        if pid > 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn renewed_within(&self, limit: Duration) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|at| at.elapsed() < limit)
    }

    fn healthy(&self) -> bool {
        self.healthy_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }
}

/// Grants the lease and keeps it alive while the node is healthy; a lease that expired
/// (etcd answered TTL 0) is replaced by a new one. Its own connection, made again after any
/// failure (to whichever member answers).
async fn keep_lease(cluster: Cluster, lease: Arc<Lease>) {
    let ttl = cluster.lease_ttl;
    let mut stream = None;
    let mut connection: Option<Client> = None;
    loop {
        tokio::time::sleep(RENEW_EVERY).await;
        if !lease.healthy() {
            continue;
        }
        if connection.is_none() {
            connection = cluster.connect().await.ok();
            stream = None;
        }
        let Some(client) = connection.as_mut() else {
            continue;
        };
        if lease.id() == 0 {
            let ttl = ttl.as_secs().max(2) as i64;
            match client.lease_grant(ttl, None).await {
                Ok(granted) => {
                    lease.id.store(granted.id(), Ordering::SeqCst);
                    *lease.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                    stream = None;
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot grant a lease");
                    connection = None;
                    continue;
                }
            }
        }
        let sent = Instant::now();
        let renewal = async {
            if stream.is_none() {
                stream = Some(client.lease_keep_alive(lease.id()).await?);
            }
            let (keeper, responses) = stream.as_mut().expect("set above");
            keeper.keep_alive().await?;
            responses.message().await
        };
        match tokio::time::timeout(webstack_coord::REQUEST_TIMEOUT, renewal).await {
            Ok(Ok(Some(response))) if response.ttl() > 0 => {
                *lease.renewed.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
            }
            Ok(Ok(Some(_))) => {
                tracing::warn!(lease = lease.id(), "the lease expired; taking a new one");
                lease.id.store(0, Ordering::SeqCst);
                stream = None;
            }
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => {
                stream = None;
                connection = None;
            }
        }
    }
}

/// Fences a leader whose lease is no longer proven, between the agent's ticks (a tick may be
/// busy for seconds with etcd or a promotion): read_only at once, or SIGKILL of mariadbd if
/// read_only does not take within `FENCE_LIMIT` (commits waiting for a replica hold it up).
async fn watchdog(config: NodeConfig, lease: Arc<Lease>, fence_after: Duration) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if !lease.leading.load(Ordering::SeqCst) || lease.renewed_within(fence_after) {
            continue;
        }
        lease.set_leading(false);
        let fenced = async {
            let password = secrets::read(&config.state_dir, "admin").ok()?;
            let mut conn = crate::node::connect(&config, password.expose())
                .await
                .ok()?;
            conn.query_drop("SET GLOBAL read_only = ON").await.ok()?;
            let _ = conn.disconnect().await;
            Some(())
        };
        match tokio::time::timeout(FENCE_LIMIT, fenced).await {
            Ok(Some(())) => tracing::warn!("the lease is not proven: fenced (read_only)"),
            _ => {
                tracing::error!(
                    "the lease is not proven and read_only did not take: killing mariadbd"
                );
                lease.kill_server();
            }
        }
    }
}

/// Semi-sync status of the local server.
#[derive(Clone, Debug, Default)]
struct SemiSync {
    enabled: bool,
    on: bool,
    clients: u64,
    waiting: u64,
}

/// One look at the local node.
#[derive(Clone, Debug, Default)]
struct Facts {
    read_only: bool,
    current_pos: String,
    binlog_pos: String,
    received_pos: String,
    source: Option<String>,
    io_running: Option<String>,
    sql_running: Option<String>,
    io_errno: u32,
    sql_errno: u32,
    last_error: Option<String>,
    semi: SemiSync,
}

async fn inspect(conn: &mut Conn) -> Result<Facts, NodeError> {
    let (read_only, current_pos, binlog_pos, enabled): (bool, String, String, bool) = conn
        .query_first(
            "SELECT @@read_only, @@gtid_current_pos, @@gtid_binlog_pos, @@rpl_semi_sync_master_enabled",
        )
        .await?
        .unwrap_or_default();
    let mut facts = Facts {
        read_only,
        received_pos: current_pos.clone(),
        current_pos,
        binlog_pos,
        ..Facts::default()
    };
    facts.semi.enabled = enabled;
    let replica: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
    if let Some(row) = replica {
        let text = |name: &str| row.get::<Option<String>, _>(name).flatten();
        facts.io_running = text("Slave_IO_Running");
        facts.sql_running = text("Slave_SQL_Running");
        facts.source = match (text("Master_Host"), text("Master_Port")) {
            (Some(host), Some(port)) if !host.is_empty() => Some(format!("{host}:{port}")),
            _ => None,
        };
        facts.io_errno = text("Last_IO_Errno")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        facts.sql_errno = text("Last_SQL_Errno")
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        facts.last_error = [text("Last_IO_Error"), text("Last_SQL_Error")]
            .into_iter()
            .flatten()
            .find(|e| !e.is_empty());
        if let Some(io_pos) = text("Gtid_IO_Pos") {
            facts.received_pos = GtidPos::parse(&facts.current_pos)
                .union(&GtidPos::parse(&io_pos))
                .to_string();
        }
    }
    let status: Vec<(String, String)> = conn
        .query("SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_%'")
        .await?;
    for (name, value) in status {
        match name.as_str() {
            "Rpl_semi_sync_master_status" => facts.semi.on = value == "ON",
            "Rpl_semi_sync_master_clients" => facts.semi.clients = value.parse().unwrap_or(0),
            "Rpl_semi_sync_master_wait_sessions" => facts.semi.waiting = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    Ok(facts)
}

/// What etcd holds under `db/`, read in one request.
#[derive(Default)]
struct Snapshot {
    leader: Option<(Leader, KeyValue)>,
    /// Set when the leader key holds something that is not a leader record.
    leader_unreadable: bool,
    members: Vec<Member>,
    report: Option<PrimaryReport>,
    report_revision: i64,
    bootstrapped: bool,
    force: Option<String>,
    switchover: Option<Option<String>>,
}

/// What the node should be told after a tick.
pub struct Tick {
    pub status: NodeStatus,
    pub ready: bool,
    /// Kill mariadbd now (SIGKILL): it is a primary under an old term. It restarts as a replica
    /// and crash recovery truncates what no replica acknowledged.
    pub kill: bool,
}

pub struct Agent {
    config: NodeConfig,
    metrics: super::metrics::Metrics,
    cluster: Cluster,
    keys: Keys,
    client: Option<Client>,
    lease: Arc<Lease>,
    keeper: Option<tokio::task::JoinHandle<()>>,
    watchdog: Option<tokio::task::JoinHandle<()>>,
    published: Option<(Member, Instant)>,
    reported: Option<(PrimaryReport, Instant)>,
    /// Since when commits have been waiting for a replica's acknowledgement.
    semi_waiting_since: Option<Instant>,
    /// The leader's term as last seen, and whether this node holds it.
    term: Option<i64>,
    /// Why no node is promoted, when one is refused.
    refusal: Option<String>,
    /// Set on shutdown: a node that is stopping does not compete.
    stopping: bool,
    /// Looks at the node that failed in a row.
    inspect_failures: u32,
    /// Promotions that failed in a row: after `PROMOTE_ATTEMPTS` the key is given up.
    promote_failures: u32,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for task in [self.keeper.take(), self.watchdog.take()]
            .into_iter()
            .flatten()
        {
            task.abort();
        }
    }
}

impl Agent {
    pub fn new(config: NodeConfig, cluster: Cluster, metrics: super::metrics::Metrics) -> Agent {
        Agent {
            metrics,
            keys: Keys::new(&cluster),
            config,
            cluster,
            client: None,
            lease: Arc::new(Lease::default()),
            keeper: None,
            watchdog: None,
            published: None,
            reported: None,
            semi_waiting_since: None,
            term: None,
            refusal: None,
            stopping: false,
            inspect_failures: 0,
            promote_failures: 0,
        }
    }

    /// The mariadbd this agent's node runs now (0 when none).
    pub fn set_server_pid(&self, pid: u32) {
        self.lease
            .server_pid
            .store(i32::try_from(pid).unwrap_or(0), Ordering::SeqCst);
        if pid == 0 {
            self.lease.set_leading(false);
        }
    }

    /// mariadbd just answered: the lease may be renewed a little longer.
    fn alive(&self) {
        self.healthy_for(HEALTH_GRACE);
    }

    /// The lease is renewed for `period` from now without another look at mariadbd (a step
    /// known to take long while the server is busy with it).
    fn healthy_for(&self, period: Duration) {
        *self
            .lease
            .healthy_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + period);
    }

    /// The condition of every write that only the leader may make: the leader key is on this
    /// role's lease. (Callers check the lease is not 0: etcd compares a missing key's as 0.)
    fn holds_key(&self) -> Compare {
        Compare::lease(self.keys.leader.as_str(), CompareOp::Equal, self.lease.id())
    }

    /// Deletes the leader key, with `also`, if this node holds it; true when it did.
    async fn give_up_key(&self, client: &mut Client, also: Vec<TxnOp>) -> bool {
        if self.lease.id() == 0 {
            return false;
        }
        let mut ops = vec![TxnOp::delete(self.keys.leader.as_str(), None)];
        ops.extend(also);
        let give_up = Txn::new().when([self.holds_key()]).and_then(ops);
        matches!(
            tokio::time::timeout(webstack_coord::REQUEST_TIMEOUT, client.txn(give_up)).await,
            Ok(Ok(response)) if response.succeeded()
        )
    }

    /// A leader must fence itself before its lease can expire anywhere: well inside the TTL.
    fn fence_after(&self) -> Duration {
        self.cluster.lease_ttl * 3 / 5
    }

    async fn client(&mut self) -> Option<Client> {
        if self.client.is_none() {
            match self.cluster.connect().await {
                Ok(client) => {
                    if self.keeper.is_none() {
                        self.keeper = Some(tokio::spawn(keep_lease(
                            self.cluster.clone(),
                            self.lease.clone(),
                        )));
                        self.watchdog = Some(tokio::spawn(watchdog(
                            self.config.clone(),
                            self.lease.clone(),
                            self.fence_after(),
                        )));
                    }
                    self.client = Some(client);
                }
                Err(error) => tracing::warn!(%error, "cannot reach etcd"),
            }
        }
        self.client.clone()
    }

    async fn snapshot(&self, client: &mut Client) -> Result<Snapshot, NodeError> {
        let response = client
            .get(
                self.keys.all.as_str(),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .map_err(coord)?;
        let mut snapshot = Snapshot::default();
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            let value = kv.value();
            if key == self.keys.leader {
                match serde_json::from_slice::<Leader>(value) {
                    Ok(leader) => snapshot.leader = Some((leader, kv.clone())),
                    Err(_) => snapshot.leader_unreadable = true,
                }
            } else if key.starts_with(&self.keys.members) {
                if let Ok(member) = serde_json::from_slice::<Member>(value) {
                    snapshot.members.push(member);
                }
            } else if key == self.keys.primary {
                snapshot.report = serde_json::from_slice(value).ok();
                snapshot.report_revision = kv.mod_revision();
            } else if key == self.keys.bootstrapped {
                snapshot.bootstrapped = true;
            } else if key == self.keys.force {
                snapshot.force = Some(String::from_utf8_lossy(value).trim().to_string());
            } else if key == self.keys.switchover {
                let to = String::from_utf8_lossy(value).trim().to_string();
                snapshot.switchover = Some((!to.is_empty()).then_some(to));
            }
        }
        Ok(snapshot)
    }

    /// One round: look at the node and at etcd, then act. An error means mariadbd did not
    /// answer (the caller reconnects); etcd trouble is handled here.
    pub async fn tick(&mut self, conn: &mut Conn) -> Result<Tick, NodeError> {
        let facts = match tokio::time::timeout(INSPECT_LIMIT, inspect(conn)).await {
            Ok(Ok(facts)) => {
                self.inspect_failures = 0;
                facts
            }
            outcome => {
                // A primary whose mariadbd stopped answering (frozen, hung) gives the key up at
                // once rather than let its lease run out: a replica with every acknowledged
                // write takes over in a fraction of a second. (It cannot take a write
                // meanwhile: none is acknowledged without a replica.) A query error is given
                // one more chance, on a fresh connection (the caller opens one).
                self.inspect_failures += 1;
                let error = match outcome {
                    Ok(Err(error)) => error,
                    _ => NodeError::Unresponsive(INSPECT_LIMIT),
                };
                if matches!(error, NodeError::Unresponsive(_)) || self.inspect_failures >= 2 {
                    self.release().await;
                }
                return Err(error);
            }
        };
        self.alive();
        match self.act(conn, &facts).await {
            Err(NodeError::Coordination(error)) => {
                // The member this agent talks to failed mid-way: another one next time.
                tracing::warn!(%error, "etcd request failed; connecting again");
                self.client = None;
                Ok(self.status(&facts, None, format!("etcd: {error}"), false))
            }
            other => other,
        }
    }

    /// The rest of a tick, once the node has answered.
    async fn act(&mut self, conn: &mut Conn, facts: &Facts) -> Result<Tick, NodeError> {
        let facts = facts.clone();
        let me = self.config.host_name.clone();

        let snapshot = match self.client().await {
            Some(mut client) => match self.snapshot(&mut client).await {
                Ok(snapshot) => Some((client, snapshot)),
                Err(error) => {
                    tracing::warn!(%error, "cannot read etcd; connecting again");
                    self.client = None;
                    None
                }
            },
            None => None,
        };
        self.metrics
            .etcd_connected
            .set(i64::from(snapshot.is_some()));
        let Some((mut client, snapshot)) = snapshot else {
            // Without etcd nobody can prove who leads: a writable node fences itself once its
            // lease may be gone.
            if !facts.read_only && !self.lease.renewed_within(self.fence_after()) {
                return self.fence(conn, &facts, "etcd is unreachable").await;
            }
            return Ok(self.status(&facts, None, "etcd unreachable".into(), false));
        };

        let mut leader = snapshot.leader.clone();
        // The same host under an earlier lease: this role restarted while the key held.
        if let Some((record, kv)) = &leader
            && record.host == me
            && kv.lease() != self.lease.id()
            && self.lease.id() != 0
            && !self.stopping
            && self.has_everything(&facts, &snapshot)
        {
            let take = Txn::new()
                .when([Compare::mod_revision(
                    self.keys.leader.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    self.keys.leader.as_str(),
                    serde_json::to_vec(record).unwrap_or_default(),
                    Some(PutOptions::new().with_lease(self.lease.id())),
                )]);
            match client.txn(take).await {
                Ok(response) if response.succeeded() => {
                    tracing::info!(
                        term = kv.create_revision(),
                        "took over the leader key after a restart"
                    );
                    leader = self.snapshot(&mut client).await.ok().and_then(|s| s.leader);
                }
                _ => leader = None,
            }
        }

        self.publish(&mut client, &facts, &snapshot).await;

        let i_lead = leader.as_ref().is_some_and(|(record, kv)| {
            record.host == me
                && kv.lease() == self.lease.id()
                && self.lease.renewed_within(self.fence_after())
        });
        self.lease.set_leading(i_lead && !facts.read_only);
        if !facts.read_only && !i_lead {
            let why = match &leader {
                Some((record, kv)) if record.host != me => {
                    format!("term {} belongs to {}", kv.create_revision(), record.host)
                }
                _ => "this node cannot prove it holds the leader key".to_string(),
            };
            return self.fence(conn, &facts, &why).await;
        }

        match leader {
            Some((_, kv)) if i_lead => {
                self.term = Some(kv.create_revision());
                self.refusal = None;
                self.lead(conn, &mut client, &facts, &snapshot, kv.create_revision())
                    .await
            }
            Some((record, kv)) => {
                self.term = Some(kv.create_revision());
                self.refusal = None;
                if record.host == me {
                    // Our own key on another lease, not taken over (stopping, or no lease yet).
                    return Ok(self.status(
                        &facts,
                        Some(&snapshot),
                        "waiting for the lease".into(),
                        false,
                    ));
                }
                self.follow(conn, &facts, &snapshot, &record).await
            }
            None if snapshot.leader_unreadable => Ok(self.status(
                &facts,
                Some(&snapshot),
                "the leader key in etcd is unreadable".into(),
                false,
            )),
            None => self.elect(&mut client, &facts, &snapshot).await,
        }
    }

    /// `SET GLOBAL read_only = ON`, which waits for commits in progress: past `FENCE_LIMIT`
    /// it is ended (with its connection: the caller opens a new one), because a read_only still
    /// pending on the server would hold up every statement after it.
    async fn set_read_only(&self, conn: &mut Conn) -> Result<(), NodeError> {
        let id = conn.id();
        match tokio::time::timeout(FENCE_LIMIT, conn.query_drop("SET GLOBAL read_only = ON")).await
        {
            Ok(result) => Ok(result?),
            Err(_) => {
                self.kill_connection(id).await;
                Err(NodeError::Unresponsive(FENCE_LIMIT))
            }
        }
    }

    /// Ends connection `id` on the local server, from a new admin connection.
    async fn kill_connection(&self, id: u32) {
        let Ok(password) = secrets::read(&self.config.state_dir, "admin") else {
            return;
        };
        if let Ok(mut admin) = crate::node::connect(&self.config, password.expose()).await {
            let _ = tokio::time::timeout(FENCE_LIMIT, admin.query_drop(format!("KILL {id}"))).await;
            let _ = admin.disconnect().await;
        }
    }

    /// Deletes the leader key if this node holds it (on this role's lease).
    async fn release(&mut self) {
        let Some(mut client) = self.client.clone() else {
            return;
        };
        // The member record goes too: a replica must not wait for it to expire, nor count this
        // node as live.
        let member = format!("{}{}", self.keys.members, self.config.host_name);
        if self
            .give_up_key(&mut client, vec![TxnOp::delete(member, None)])
            .await
        {
            // A slow (not frozen) server would still take writes: it is killed, and restarts
            // as a replica.
            self.lease.set_leading(false);
            self.lease.kill_server();
            tracing::error!("mariadbd does not answer: gave up the leader key and killed it");
        }
    }

    /// True when this node has received every write any live node received: only then may it
    /// (again) be the primary. After a crash, recovery truncates binlog transactions a replica
    /// may already hold; leading anyway would make that replica diverge.
    fn has_everything(&self, facts: &Facts, snapshot: &Snapshot) -> bool {
        let mine = GtidPos::parse(&facts.received_pos);
        snapshot
            .members
            .iter()
            .filter(|m| m.host != self.config.host_name)
            .all(|m| mine.includes(&GtidPos::parse(&m.received_pos)))
    }

    /// Writes this node's member record when it changed (or every second), on the lease.
    async fn publish(&mut self, client: &mut Client, facts: &Facts, snapshot: &Snapshot) {
        if self.lease.id() == 0 {
            return;
        }
        let member = Member {
            host: self.config.host_name.clone(),
            address: self.config.service_addr().to_string(),
            read_only: facts.read_only,
            current_pos: facts.current_pos.clone(),
            received_pos: facts.received_pos.clone(),
            source: facts.source.clone(),
            io_running: facts.io_running.clone(),
            sql_running: facts.sql_running.clone(),
            phase: self.phase(facts, snapshot),
        };
        if self
            .published
            .as_ref()
            .is_some_and(|(last, at)| *last == member && at.elapsed() < REPUBLISH_EVERY)
        {
            return;
        }
        let key = format!("{}{}", self.keys.members, self.config.host_name);
        let put = client
            .put(
                key,
                serde_json::to_vec(&member).unwrap_or_default(),
                Some(PutOptions::new().with_lease(self.lease.id())),
            )
            .await;
        match put {
            Ok(_) => self.published = Some((member, Instant::now())),
            Err(error) => {
                tracing::debug!(%error, "cannot publish the member record");
                // A lease that etcd no longer knows: the keeper will take a new one.
                if error.to_string().contains("lease not found") {
                    self.lease.id.store(0, Ordering::SeqCst);
                }
            }
        }
    }

    fn phase(&self, facts: &Facts, snapshot: &Snapshot) -> String {
        if !facts.read_only {
            return "primary".into();
        }
        if facts.io_errno == 1236 {
            return "diverged".into();
        }
        if facts.source.is_some() && snapshot.leader.is_some() {
            return "replica".into();
        }
        "waiting".into()
    }

    /// A writable node that may not be: read_only now; a node that a newer term replaced is
    /// killed instead (its unacknowledged commits are truncated when it restarts as a replica).
    async fn fence(
        &mut self,
        conn: &mut Conn,
        facts: &Facts,
        why: &str,
    ) -> Result<Tick, NodeError> {
        let replaced = why.starts_with("term ");
        if !replaced {
            if facts.semi.enabled && facts.semi.on && facts.semi.waiting > 0 {
                // Commits wait for a replica's acknowledgement, which never times out here: no
                // write completes without a replica holding it, so the node is fenced already.
                // (read_only would wait behind those commits, and hold up everything else.)
                return Ok(self.status(facts, None, format!("fenced by semi-sync: {why}"), false));
            }
            self.set_read_only(conn).await?;
            self.metrics.fences.inc();
            tracing::warn!(why, "fenced: this node no longer takes writes");
            let mut facts = facts.clone();
            facts.read_only = true;
            return Ok(self.status(&facts, None, format!("fenced: {why}"), false));
        }
        self.metrics.fences.inc();
        tracing::error!(
            why,
            "fencing: killing mariadbd, which restarts as a replica"
        );
        let mut tick = self.status(facts, None, format!("fenced: {why}"), false);
        tick.kill = true;
        Ok(tick)
    }

    /// This node leads: make it writable if it is not yet, keep semi-sync and the report
    /// current, and hand over when a switchover is asked for.
    async fn lead(
        &mut self,
        conn: &mut Conn,
        client: &mut Client,
        facts: &Facts,
        snapshot: &Snapshot,
        term: i64,
    ) -> Result<Tick, NodeError> {
        if facts.read_only {
            if !self.has_everything(facts, snapshot) {
                // Crash recovery truncated writes a replica holds: that replica must lead.
                self.give_up_key(client, Vec::new()).await;
                tracing::warn!("a replica holds writes this node lacks: giving up the leader key");
                return Ok(self.status(
                    facts,
                    Some(snapshot),
                    "gave up the leader key to a more advanced replica".into(),
                    false,
                ));
            }
            match self.promote(conn, client, term).await {
                Ok(()) => self.promote_failures = 0,
                Err(error) if self.promote_failures + 1 >= PROMOTE_ATTEMPTS => {
                    self.promote_failures = 0;
                    self.give_up_key(client, Vec::new()).await;
                    tracing::error!(%error, "cannot become primary: gave up the leader key");
                    return Ok(self.status(
                        facts,
                        Some(snapshot),
                        format!("gave up the leader key: {error}"),
                        false,
                    ));
                }
                Err(error) => {
                    self.promote_failures += 1;
                    tracing::error!(%error, "promotion failed; trying again");
                    return Ok(self.status(
                        facts,
                        Some(snapshot),
                        format!("promoting: {error}"),
                        false,
                    ));
                }
            }
            let facts = inspect(conn).await?;
            return Ok(self.status(
                &facts,
                Some(snapshot),
                format!("primary, term {term}"),
                true,
            ));
        }
        if let Some(target) = snapshot.switchover.clone() {
            let _ = client.delete(self.keys.switchover.as_str(), None).await;
            let outcome = self.step_down(conn, client, target).await;
            let facts = inspect(conn).await?;
            return Ok(self.status(&facts, Some(snapshot), outcome, false));
        }
        self.manage_semi_sync(conn, client, facts, snapshot, term)
            .await?;
        Ok(self.status(facts, Some(snapshot), format!("primary, term {term}"), true))
    }

    /// Becoming primary: apply what was received, stop replicating, record the report (semi-sync
    /// off until a replica is back), then take writes.
    async fn promote(
        &mut self,
        conn: &mut Conn,
        client: &mut Client,
        term: i64,
    ) -> Result<(), NodeError> {
        let began = Instant::now();
        // Stopping an I/O thread whose primary froze can take until its read times out
        // (slave_net_timeout): the lease is this node's to keep meanwhile.
        self.healthy_for(PROMOTE_LIMIT);
        stop_receiving(conn).await?;
        self.alive();
        let stopped_io = began.elapsed();
        let row: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
        let io_pos = row
            .and_then(|r| r.get::<Option<String>, _>("Gtid_IO_Pos").flatten())
            .unwrap_or_default();
        if !io_pos.is_empty() {
            let waited: Option<i64> = conn
                .exec_first("SELECT MASTER_GTID_WAIT(?, ?)", (&io_pos, APPLY_WAIT_SECS))
                .await?;
            if waited != Some(0) {
                return Err(NodeError::Unresponsive(Duration::from_secs(
                    APPLY_WAIT_SECS.into(),
                )));
            }
        }
        self.alive();
        let applied = began.elapsed();
        conn.query_drop("STOP SLAVE").await?;
        conn.query_drop("RESET SLAVE ALL").await?;
        conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
            .await?;
        self.alive();
        let binlog_pos: Option<String> = conn.query_first("SELECT @@gtid_binlog_pos").await?;
        let report = PrimaryReport {
            host: self.config.host_name.clone(),
            term,
            semi_sync: false,
            binlog_pos: binlog_pos.unwrap_or_default(),
            next: None,
        };
        if !self.write_report(client, &report, true).await {
            return Err(NodeError::Coordination(
                "cannot record the promotion in etcd".into(),
            ));
        }
        conn.query_drop("SET GLOBAL read_only = OFF").await?;
        self.lease.set_leading(true);
        for statement in provision::schema_statements(&self.config.database) {
            conn.query_drop(statement).await?;
        }
        let _ = webstack_common::files::write_atomic(
            &self.config.term_file(),
            format!("{term}\n").as_bytes(),
            0o600,
        );
        self.alive();
        self.metrics.promotions.inc();
        tracing::info!(
            term,
            stopped_io_ms = stopped_io.as_millis() as u64,
            applied_ms = applied.as_millis() as u64,
            total_ms = began.elapsed().as_millis() as u64,
            "promoted: this node is the primary"
        );
        Ok(())
    }

    /// Writes the primary report, only while this node holds the leader key. `force` writes
    /// even when unchanged.
    async fn write_report(
        &mut self,
        client: &mut Client,
        report: &PrimaryReport,
        force: bool,
    ) -> bool {
        // etcd compares a missing key's lease as 0: without a lease, no write at all.
        if self.lease.id() == 0 {
            return false;
        }
        if !force
            && self
                .reported
                .as_ref()
                .is_some_and(|(last, at)| last == report && at.elapsed() < REPUBLISH_EVERY)
        {
            return true;
        }
        let txn = Txn::new().when([self.holds_key()]).and_then([TxnOp::put(
            self.keys.primary.as_str(),
            serde_json::to_vec(report).unwrap_or_default(),
            None,
        )]);
        match client.txn(txn).await {
            Ok(response) if response.succeeded() => {
                self.metrics.semi_sync.set(i64::from(report.semi_sync));
                self.reported = Some((report.clone(), Instant::now()));
                true
            }
            Ok(_) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot write the primary report");
                false
            }
        }
    }

    /// Semi-sync on the primary. The server never gives up waiting by itself (its timeout is
    /// infinite); this does, after `semi_sync_timeout` without an acknowledgement or at once
    /// without a replica, and records it in etcd *before* commits go on without one, so a
    /// promotion is never judged on a stale "semi-sync on".
    async fn manage_semi_sync(
        &mut self,
        conn: &mut Conn,
        client: &mut Client,
        facts: &Facts,
        snapshot: &Snapshot,
        term: i64,
    ) -> Result<(), NodeError> {
        let report = |semi_sync: bool| PrimaryReport {
            host: self.config.host_name.clone(),
            term,
            semi_sync,
            binlog_pos: facts.binlog_pos.clone(),
            next: None,
        };
        let semi = &facts.semi;
        if semi.waiting > 0 {
            self.semi_waiting_since.get_or_insert_with(Instant::now);
        } else {
            self.semi_waiting_since = None;
        }
        if !semi.enabled {
            self.write_report(client, &report(false), false).await;
            // Only with a replica that has (nearly) caught up: one far behind would hold every
            // commit until it has, and semi-sync would flap off and on.
            let mine = GtidPos::parse(&facts.binlog_pos);
            let address = self.config.service_addr().to_string();
            let caught_up = snapshot.members.iter().any(|m| {
                m.source.as_deref() == Some(address.as_str())
                    && m.io_running.as_deref() == Some("Yes")
                    && GtidPos::parse(&m.received_pos).behind(&mine) <= CAUGHT_UP
            });
            if semi.clients > 0 && caught_up {
                tracing::info!("a replica is connected: semi-sync on");
                conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = ON")
                    .await?;
            }
            return Ok(());
        }
        if !semi.on {
            // Enabled, and on again once a replica has caught up.
            self.write_report(client, &report(false), false).await;
            return Ok(());
        }
        let stalled = self
            .semi_waiting_since
            .is_some_and(|since| since.elapsed() >= self.config.semi_sync_timeout);
        if semi.clients == 0 || stalled {
            if self.write_report(client, &report(false), true).await {
                tracing::warn!(
                    clients = semi.clients,
                    "no replica acknowledges: semi-sync off (recorded in etcd: no automatic \
                     promotion until a replica has caught up)"
                );
                conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
                    .await?;
            }
            return Ok(());
        }
        self.write_report(client, &report(true), false).await;
        Ok(())
    }

    /// A planned handover: stop taking writes, wait until a replica has everything, record it,
    /// and give up the leader key so that replica takes it at once. Returns what happened.
    async fn step_down(
        &mut self,
        conn: &mut Conn,
        client: &mut Client,
        target: Option<String>,
    ) -> String {
        let Some(term) = self.term else {
            return "not the primary".into();
        };
        if self.lease.id() == 0 {
            return "no lease".into();
        }
        // The handover waits for a replica; the lease is this node's to keep meanwhile.
        self.healthy_for(HANDOVER_WAIT + HEALTH_GRACE);
        self.lease.set_leading(false);
        if let Err(error) = self.set_read_only(conn).await {
            return format!("cannot stop writes: {error}");
        }
        let binlog_pos: String = conn
            .query_first("SELECT @@gtid_binlog_pos")
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        let wanted = GtidPos::parse(&binlog_pos);
        let me = self.config.host_name.clone();
        let address = self.config.service_addr().to_string();
        let deadline = Instant::now() + HANDOVER_WAIT;
        let mut successor = None;
        while Instant::now() < deadline {
            if let Ok(snapshot) = self.snapshot(client).await {
                successor = snapshot
                    .members
                    .iter()
                    .filter(|m| m.host != me && target.as_ref().is_none_or(|t| *t == m.host))
                    .filter(|m| m.source.as_deref() == Some(address.as_str()))
                    .filter(|m| GtidPos::parse(&m.received_pos).includes(&wanted))
                    .map(|m| m.host.clone())
                    .min();
            }
            if successor.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let report = PrimaryReport {
            host: me,
            term,
            semi_sync: successor.is_some(),
            binlog_pos,
            next: successor.clone(),
        };
        let txn = Txn::new().when([self.holds_key()]).and_then([
            TxnOp::put(
                self.keys.primary.as_str(),
                serde_json::to_vec(&report).unwrap_or_default(),
                None,
            ),
            TxnOp::delete(self.keys.leader.as_str(), None),
        ]);
        match (client.txn(txn).await, successor) {
            (Ok(response), Some(next)) if response.succeeded() => {
                tracing::info!(
                    next,
                    "stepped down: handing over to a replica with every write"
                );
                format!("stepped down for {next}")
            }
            (Ok(response), None) if response.succeeded() => {
                tracing::warn!(
                    "stepped down, but no replica has every write: no automatic promotion"
                );
                "stepped down; no replica has every write".into()
            }
            _ => {
                tracing::warn!("could not give up the leader key");
                "could not hand over".into()
            }
        }
    }

    /// On shutdown: a primary hands over so a replica takes writes at once; anyone stops
    /// competing.
    pub async fn shutdown(&mut self, conn: Option<&mut Conn>) {
        self.stopping = true;
        let Some(conn) = conn else { return };
        let Some(mut client) = self.client.clone() else {
            return;
        };
        let leads = match self.snapshot(&mut client).await {
            Ok(snapshot) => snapshot.leader.is_some_and(|(record, kv)| {
                record.host == self.config.host_name && kv.lease() == self.lease.id()
            }),
            Err(_) => false,
        };
        if leads {
            let outcome = tokio::time::timeout(
                HANDOVER_WAIT + Duration::from_secs(2),
                self.step_down(conn, &mut client, None),
            )
            .await;
            tracing::info!(?outcome, "shutdown handover");
            let read_only: Option<bool> =
                conn.query_first("SELECT @@read_only").await.ok().flatten();
            if read_only != Some(true) {
                // Not handed over and maybe still writable: it must not outlive its lease.
                tracing::error!("the handover failed: killing mariadbd before the lease goes");
                self.lease.kill_server();
            }
        }
    }

    /// Last, once mariadbd has stopped: the lease goes, and with it this node's keys.
    pub async fn revoke(&mut self) {
        let (Some(mut client), lease) = (self.client.clone(), self.lease.id()) else {
            return;
        };
        if lease != 0 {
            let _ = tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease)).await;
        }
    }

    /// Replicate from the leader (by GTID, keeping what this node wrote as a primary).
    async fn follow(
        &mut self,
        conn: &mut Conn,
        facts: &Facts,
        snapshot: &Snapshot,
        leader: &Leader,
    ) -> Result<Tick, NodeError> {
        if facts.semi.enabled {
            // A replica that waits for acknowledgements of what it applies stalls its applier
            // (it was the primary until a moment ago).
            conn.query_drop("SET GLOBAL rpl_semi_sync_master_enabled = OFF")
                .await?;
        }
        let stopped = facts.io_running.as_deref() == Some("No")
            && facts.sql_running.as_deref() == Some("No")
            && facts.last_error.is_none();
        // ER_GTID_STRICT_OUT_OF_ORDER: this node's binary log already holds the transaction the
        // applier is at (a commit that was written, then waited for an acknowledgement when the
        // node was primary): take the binary log's position as the replication position.
        let duplicate = facts.sql_errno == 1950;
        if facts.source.as_deref() != Some(leader.address.as_str()) || stopped || duplicate {
            self.replicate_from(conn, &leader.address).await?;
            tracing::info!(primary = %leader.host, "replicating from the primary");
        }
        let facts = inspect(conn).await?;
        let note = match (facts.io_errno, &facts.last_error) {
            (1236, Some(error)) => format!(
                "diverged from {}: {error}; rebuild this node (see docs/database.md)",
                leader.host
            ),
            (_, Some(error)) => format!("replica of {}, error: {error}", leader.host),
            _ => format!("replica of {}", leader.host),
        };
        let ready = facts.io_running.as_deref() == Some("Yes")
            && facts.sql_running.as_deref() == Some("Yes");
        Ok(self.status(&facts, Some(snapshot), note, ready))
    }

    async fn replicate_from(&mut self, conn: &mut Conn, address: &str) -> Result<(), NodeError> {
        let repl = secrets::read(&self.config.state_dir, "repl")?;
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "3306"));
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port: u16 = port.parse().unwrap_or(3306);
        conn.query_drop("STOP SLAVE").await?;
        // Everything this node applied or wrote is in its binary log (log_slave_updates): that
        // is where replication resumes, whoever wrote it. (MASTER_DEMOTE_TO_SLAVE takes
        // @@gtid_current_pos, which skips a last transaction of another server's that this
        // node binlogged but never recorded as applied.)
        let binlog_pos: Option<String> = conn.query_first("SELECT @@gtid_binlog_pos").await?;
        if let Some(pos) = binlog_pos.filter(|p| !p.is_empty()) {
            conn.exec_drop("SET GLOBAL gtid_slave_pos = ?", (pos,))
                .await?;
        }
        conn.query_drop(format!(
            "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, \
             MASTER_PASSWORD = {}, MASTER_USE_GTID = slave_pos, \
             MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 0.5",
            sql_string(host),
            sql_string(REPL_USER),
            sql_string(repl.expose()),
        ))
        .await?;
        conn.query_drop("START SLAVE").await?;
        Ok(())
    }

    /// No leader: bootstrap the cluster (first start) or compete under the promotion rule.
    async fn elect(
        &mut self,
        client: &mut Client,
        facts: &Facts,
        snapshot: &Snapshot,
    ) -> Result<Tick, NodeError> {
        let me = self.config.host_name.clone();
        if self.stopping || self.lease.id() == 0 {
            return Ok(self.status(facts, Some(snapshot), "no primary".into(), false));
        }
        let leader = serde_json::to_vec(&Leader {
            host: me.clone(),
            address: self.config.service_addr().to_string(),
        })
        .unwrap_or_default();
        let on_lease = || Some(PutOptions::new().with_lease(self.lease.id()));
        if !snapshot.bootstrapped {
            if me != self.config.primary_name {
                let note = format!(
                    "waiting for {} to bootstrap the cluster",
                    self.config.primary_name
                );
                return Ok(self.status(facts, Some(snapshot), note, false));
            }
            let txn = Txn::new()
                .when([
                    Compare::version(self.keys.bootstrapped.as_str(), CompareOp::Equal, 0),
                    Compare::version(self.keys.leader.as_str(), CompareOp::Equal, 0),
                ])
                .and_then([
                    TxnOp::put(self.keys.bootstrapped.as_str(), me.as_bytes(), None),
                    TxnOp::put(self.keys.leader.as_str(), leader, on_lease()),
                ]);
            if client.txn(txn).await.map_err(coord)?.succeeded() {
                tracing::info!("bootstrapped the cluster: this node is the first primary");
            }
            return Ok(self.status(facts, Some(snapshot), "bootstrapping".into(), false));
        }
        // This node's own facts are fresher than its record in etcd.
        let mut members: Vec<Member> = snapshot
            .members
            .iter()
            .filter(|m| m.host != me)
            .cloned()
            .collect();
        members.push(Member {
            host: me.clone(),
            received_pos: facts.received_pos.clone(),
            current_pos: facts.current_pos.clone(),
            read_only: facts.read_only,
            ..Member::default()
        });
        let db_hosts: Vec<String> = self
            .config
            .peers
            .iter()
            .map(|(name, _)| name.clone())
            .collect();
        let decision = decide(
            &me,
            snapshot.report.as_ref(),
            &members,
            &db_hosts,
            snapshot.force.as_deref(),
        );
        match decision {
            Decision::Promote => {
                let mut when = vec![
                    Compare::version(self.keys.leader.as_str(), CompareOp::Equal, 0),
                    Compare::mod_revision(
                        self.keys.primary.as_str(),
                        CompareOp::Equal,
                        snapshot.report_revision,
                    ),
                ];
                if snapshot.force.is_none() {
                    when.push(Compare::version(
                        self.keys.force.as_str(),
                        CompareOp::Equal,
                        0,
                    ));
                }
                let txn = Txn::new().when(when).and_then([
                    TxnOp::put(self.keys.leader.as_str(), leader, on_lease()),
                    TxnOp::delete(self.keys.force.as_str(), None),
                ]);
                let won = client.txn(txn).await.map_err(coord)?.succeeded();
                self.refusal = None;
                if won {
                    tracing::warn!(
                        forced = snapshot.force.is_some(),
                        last_primary = snapshot.report.as_ref().map(|r| r.host.as_str()),
                        "took the leader key: promoting this node"
                    );
                }
                Ok(self.status(facts, Some(snapshot), "promoting".into(), false))
            }
            Decision::Wait(why) => {
                self.refusal = None;
                Ok(self.status(facts, Some(snapshot), format!("no primary: {why}"), false))
            }
            Decision::Refuse(why) => {
                if self.refusal.as_deref() != Some(why.as_str()) {
                    tracing::error!(%why, "no automatic promotion");
                }
                self.refusal = Some(why.clone());
                Ok(self.status(facts, Some(snapshot), why, false))
            }
        }
    }

    fn status(
        &self,
        facts: &Facts,
        snapshot: Option<&Snapshot>,
        note: String,
        ready: bool,
    ) -> Tick {
        self.metrics.term.set(self.term.unwrap_or(0));
        self.metrics
            .primary
            .set(i64::from(!facts.read_only && ready));
        self.metrics
            .promotion_refused
            .set(i64::from(self.refusal.is_some()));
        let primary_pos = snapshot.and_then(|s| {
            let (leader, _) = s.leader.as_ref()?;
            s.members
                .iter()
                .find(|m| m.host == leader.host)
                .map(|m| GtidPos::parse(&m.current_pos))
        });
        let lag = match (facts.read_only, primary_pos) {
            (true, Some(primary)) => Some(GtidPos::parse(&facts.current_pos).behind(&primary)),
            _ => None,
        };
        let role = if !facts.read_only {
            "primary"
        } else if facts.source.is_some() {
            "replica"
        } else {
            "standby"
        };
        let mut summary = with_refusal(&note, self.refusal.as_deref());
        if role == "replica" {
            summary.push_str(&format!(
                ", io {} sql {}, lag {} trx",
                facts.io_running.as_deref().unwrap_or("-"),
                facts.sql_running.as_deref().unwrap_or("-"),
                lag.map_or("?".to_string(), |l| l.to_string())
            ));
        }
        if let Some(term) = self.term {
            if !summary.contains("term") {
                summary.push_str(&format!(", term {term}"));
            }
        }
        summary.push_str(&format!(
            ", gtid {}",
            if facts.current_pos.is_empty() {
                "-"
            } else {
                &facts.current_pos
            }
        ));
        Tick {
            status: NodeStatus {
                role: role.into(),
                read_only: facts.read_only,
                gtid_current_pos: facts.current_pos.clone(),
                io_running: facts.io_running.clone(),
                sql_running: facts.sql_running.clone(),
                lag_transactions: lag,
                seconds_behind_master: None,
                last_error: facts.last_error.clone(),
                term: self.term,
                failover: Some(note.clone()),
                refused: self.refusal.clone(),
                // A refusal is not final (the old primary may come back); divergence is.
                blocked: note.starts_with("diverged").then(|| note.clone()),
                summary,
            },
            ready,
            kill: false,
        }
    }
}

/// Stops the replication I/O thread. `STOP SLAVE IO_THREAD` alone, on a thread blocked reading
/// from a frozen primary, waits 2 s before it signals the thread a second time (measured on
/// 10.11: always 2.0 s); a `KILL` of the thread first makes the STOP's own signal the second.
async fn stop_receiving(conn: &mut Conn) -> Result<(), NodeError> {
    let io_threads: Vec<u64> = conn
        .query("SELECT ID FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_IO'")
        .await?;
    for id in io_threads {
        let _ = conn.query_drop(format!("KILL {id}")).await;
    }
    conn.query_drop("STOP SLAVE IO_THREAD").await?;
    Ok(())
}

fn coord(error: webstack_coord::etcd_client::Error) -> NodeError {
    NodeError::Coordination(error.to_string())
}

/// A tick's note, and the standing refusal when the tick was about something else (etcd out of
/// reach for a moment, say): `status` keeps saying why nothing is promoted, as `refused` does.
fn with_refusal(note: &str, refusal: Option<&str>) -> String {
    match refusal {
        Some(refusal) if !note.contains(refusal) => format!("{note}; {refusal}"),
        _ => note.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::with_refusal;

    #[test]
    fn a_standing_refusal_stays_in_the_summary_whatever_the_tick_was_about() {
        let refusal = "promotion refused: web-02 is down and semi-sync was off on it";
        assert_eq!(with_refusal(refusal, Some(refusal)), refusal, "said once");
        assert_eq!(
            with_refusal("etcd: connection refused", Some(refusal)),
            format!("etcd: connection refused; {refusal}")
        );
        assert_eq!(with_refusal("primary, term 7", None), "primary, term 7");
    }
}
