//! The database tier's validated settings, built by `webstack-config` from the topology file.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Everything the `db` role of one host needs: where its MariaDB lives and whom it serves.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub host_name: String,
    /// The host's address: MariaDB binds it (never 0.0.0.0).
    pub address: IpAddr,
    pub port: u16,
    /// Unique per node in the topology, derived from the host's name.
    pub server_id: u32,
    /// The node that is primary when the cluster is first bootstrapped (with failover, only
    /// then: afterwards etcd's leader key decides).
    pub primary_name: String,
    pub primary_addr: SocketAddr,
    /// Holds `db/<host>/` (data, config, socket) and `secrets/`.
    pub state_dir: PathBuf,
    /// The application's schema.
    pub database: String,
    /// The server and bootstrap programs, from Debian's `mariadb-server`.
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
    /// A primary waits this long for a replica's acknowledgement before committing without it.
    pub semi_sync_timeout: Duration,
    /// InnoDB buffer pool, e.g. `128M`.
    pub buffer_pool_size: String,
    /// Addresses of db hosts (replication accounts), app hosts (the app account) and every host
    /// (the monitoring account): each account may log in only from those.
    pub db_hosts: Vec<IpAddr>,
    pub app_hosts: Vec<IpAddr>,
    pub all_hosts: Vec<IpAddr>,
    /// Every db node by host name, this one included.
    pub peers: Vec<(String, SocketAddr)>,
    /// The etcd cluster that decides who is primary; `None` runs without failover
    /// (`primary_name` is the primary for good).
    pub failover: Option<webstack_coord::Cluster>,
}

impl NodeConfig {
    pub fn is_primary(&self) -> bool {
        self.host_name == self.primary_name
    }

    pub fn node_dir(&self) -> PathBuf {
        self.state_dir.join("db").join(&self.host_name)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.node_dir().join("data")
    }

    pub fn socket(&self) -> PathBuf {
        self.node_dir().join("mariadb.sock")
    }

    pub fn defaults_file(&self) -> PathBuf {
        self.node_dir().join("my.cnf")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.node_dir().join("mariadbd.pid")
    }

    /// This node's address for replicas and the app.
    pub fn service_addr(&self) -> SocketAddr {
        SocketAddr::new(self.address, self.port)
    }

    /// The failover term this node last held as primary, written when it is promoted.
    pub fn term_file(&self) -> PathBuf {
        self.node_dir().join("term")
    }

    pub fn error_log(&self) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{}-mariadbd.log", self.host_name))
    }
}

/// What the application needs to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Every db node by host name; the router finds the primary itself.
    pub nodes: Vec<(String, SocketAddr)>,
    pub user: String,
    /// Shown as `[redacted]` by `Debug`.
    pub password: webstack_common::secret::Secret,
    pub database: String,
    /// A replica more than this many transactions behind the primary gets no reads.
    pub max_replica_lag: u64,
    /// How often every node's role and position are polled.
    pub poll_interval: Duration,
    pub connect_timeout: Duration,
    /// One request's statements on a node, connection included; longer is a 503.
    pub query_timeout: Duration,
    /// With failover: how long a write waits for a primary before a 503.
    pub write_hold: Duration,
    /// The etcd cluster whose leader key names the primary; `None`: the writable node is.
    pub coordination: Option<webstack_coord::Cluster>,
}
