//! The load balancer's validated settings, built by `webstack-config` from the topology file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the `lb` role needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// How a server is picked among the healthy ones.
    pub algorithm: Algorithm,
    /// The web servers to balance over, in topology order.
    pub servers: Vec<ServerConfig>,
    pub health: HealthConfig,
    pub timeouts: Timeouts,
    /// How many other servers an idempotent request is tried on after a connection failure.
    pub retries: u32,
    /// The access log (one line per request, buffered), or none.
    pub access_log: Option<webstack_common::access_log::Settings>,
    /// `Server-Timing: lb;dur=..` on responses: the lb's time to the response head (opt-in).
    pub server_timing: bool,
    /// Worker threads, each accepting on every (shared) listening socket, with its own
    /// connection pool.
    pub threads: usize,
    /// Client connections served at once over both ports; more wait in the listen backlog
    /// (HAProxy's `maxconn`).
    pub maxconn: usize,
    /// A server that comes back (health checks, or `webstack lb ready`) takes a share of new
    /// requests that grows from a tenth to its full share over this time (HAProxy's
    /// `slowstart`); zero: at once.
    pub slowstart: Duration,
    /// Per-client limits (reloaded on SIGHUP).
    pub limits: Limits,
    /// How long a request may wait in the queue for a server below its `maxconn` (HAProxy's
    /// `timeout queue`); then 503 with `Retry-After`.
    pub queue_timeout: Duration,
    /// HTTPS on a second port; None when TLS is off.
    pub tls: Option<TlsSettings>,
    /// The site's address shared with the other lb hosts; None: this lb serves its own
    /// address only.
    pub vip: Option<VipConfig>,
}

/// What one client may do (HAProxy's stick-table rules, nginx's `limit_req`/`limit_conn`,
/// Apache's `mod_reqtimeout` body rate). A client is an IP address: the connection's peer, or
/// what a trusted proxy says (PROXY protocol, `X-Forwarded-For`).
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Requests per second a client may sustain (token bucket refill); 0: no request limit.
    pub rate: u32,
    /// Requests a client may send at once above its rate (the bucket's size).
    pub burst: u32,
    /// Connections one client may hold open at once; 0: no limit.
    pub connections_per_client: u32,
    /// A request body must arrive at least this fast (bytes per second) after `body_grace`;
    /// slower gets 408 and a close. 0: no floor.
    pub min_body_rate: u32,
    /// The time a body gets before the floor applies; every byte adds 1/`min_body_rate` s.
    pub body_grace: Duration,
    /// Largest request body; larger gets 413.
    pub max_body: u64,
    /// Proxies whose `X-Forwarded-For` names the client; their own connections are not held
    /// to `connections_per_client` (one proxy carries many clients).
    pub trusted_proxies: Vec<Network>,
    /// Peers that must start every connection with a PROXY protocol header naming the client
    /// (HAProxy's `accept-proxy`, nginx's `listen ... proxy_protocol`); without one the
    /// connection is closed.
    pub proxy_protocol: Vec<Network>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: 100,
            burst: 200,
            connections_per_client: 256,
            min_body_rate: 500,
            body_grace: Duration::from_secs(20),
            max_body: 100 * 1024 * 1024,
            trusted_proxies: Vec::new(),
            proxy_protocol: Vec::new(),
        }
    }
}

/// An IP network, `address/prefix`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    pub address: std::net::IpAddr,
    pub prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128). None when it
    /// is not one.
    pub fn parse(text: &str) -> Option<Self> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address.parse().ok()?, Some(prefix.parse().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = if matches!(address, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { address, prefix })
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

/// TLS termination settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// Where certificates come from, in priority order: SNI picks the first that covers the
    /// name, a client without SNI gets the first loaded. Configured files come first, then
    /// ACME's, then the local CA's leaf (when no files are configured).
    pub certificates: Vec<CertificateSource>,
    /// Automatic certificates for the site's names; None when not configured.
    pub acme: Option<AcmeSettings>,
    /// A client must finish its handshake within this time.
    pub handshake_timeout: Duration,
    /// Plain HTTP answers 308 to the HTTPS URL for the names we hold a certificate for
    /// (except ACME challenges and the health path).
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=...` on HTTPS responses; None: not sent.
    pub hsts_max_age: Option<Duration>,
    /// The HTTPS port written in redirect URLs (omitted when 443).
    pub https_port: u16,
}

/// One certificate chain and its key, as PEM files (re-read when they change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateSource {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub origin: CertificateOrigin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertificateOrigin {
    /// Configured in the topology file: must load at start.
    File,
    /// Written by the ACME client: absent until first issued.
    Acme,
    /// The local CA's leaf in the state dir.
    LocalCa,
}

impl CertificateOrigin {
    /// As `webstack status` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Acme => "acme",
            Self::LocalCa => "local-ca",
        }
    }
}

impl serde::Serialize for CertificateOrigin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// ACME (RFC 8555) with the HTTP-01 challenge, answered by the lb on its plain HTTP port.
#[derive(Clone, Debug)]
pub struct AcmeSettings {
    pub directory: String,
    /// `mailto:` URLs.
    pub contact: Vec<String>,
    /// Extra root to trust for the directory's HTTPS.
    pub ca_cert: Option<PathBuf>,
    /// The names ordered (the site's name and aliases).
    pub names: Vec<String>,
    /// Where the account and the issued certificate live (state dir).
    pub dir: PathBuf,
    pub renew_before: Duration,
}

impl AcmeSettings {
    /// The issued chain and key, once there is one.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("site.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("site.key")
    }

    pub fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (as nginx does): even spread, weights respected.
    RoundRobin,
    /// Fewest in-flight requests relative to weight; ties broken round-robin.
    LeastConn,
    /// Power of two choices over peak-EWMA latency x in-flight requests (`balance::P2c`).
    P2c,
}

/// One backend server (a web host's web role).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The host name, used in logs, metrics and the `X-Served-By` check of tests.
    pub name: String,
    pub addr: SocketAddr,
    /// Relative share of traffic, 1..=256.
    pub weight: u32,
    /// Gets traffic only when no regular server is up.
    pub backup: bool,
    /// Requests it serves at once (HAProxy's server `maxconn`); more wait in the lb's queue.
    /// 0: no limit.
    pub maxconn: u32,
}

/// Active HTTP health checks, with HAProxy's rise/fall hysteresis.
#[derive(Clone, Debug)]
pub struct HealthConfig {
    /// Path requested with GET; any 2xx or 3xx is a success.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down server up.
    pub rise: u32,
    /// Consecutive failures that take an up server down.
    pub fall: u32,
    /// Consecutive failed requests (connect failures, 5xx answers) that take a server out of
    /// rotation at once, before its checks notice (passive outlier ejection); 0: off. Its
    /// checks bring it back (`rise` successes).
    pub eject_after: u32,
    /// At most this percentage of the servers is ejected at once (at least one may be).
    pub max_ejected_percent: u32,
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A client must send a complete request head within this time.
    pub client_header: Duration,
    /// TCP connect to a server.
    pub connect: Duration,
    /// From sending the request to a server until its response head arrives.
    pub server: Duration,
    /// An upgraded connection (WebSocket) with nothing moving either way closes after this
    /// (HAProxy's `timeout tunnel`).
    pub tunnel: Duration,
}

/// The site's address (`lb.vip`), shared by the lb hosts: one of them serves it at a time.
#[derive(Clone, Debug)]
pub struct VipConfig {
    pub address: std::net::IpAddr,
    /// This lb host's name (status, metrics, file names).
    pub host: String,
    pub mode: VipMode,
}

/// How the address moves from one lb to another.
#[derive(Clone, Debug)]
pub enum VipMode {
    /// One machine's loopback, where VRRP cannot run: the lbs share one listening socket
    /// (passed over Unix sockets in `run_dir`) and whoever holds the lock file accepts on it.
    StandIn {
        run_dir: PathBuf,
        /// The other lb hosts' names: where a starting lb asks for the socket.
        peers: Vec<String>,
    },
    /// Real machines or network namespaces: keepalived (VRRPv3) moves the address.
    Vrrp(VrrpConfig),
}

/// One lb host's keepalived: what webstack generates its configuration from.
#[derive(Clone, Debug)]
pub struct VrrpConfig {
    pub program: PathBuf,
    pub advert_interval: Duration,
    pub router_id: u8,
    /// The interface carrying the VIP; None: the one holding `address`.
    pub interface: Option<String>,
    /// This host's own address (unicast source).
    pub address: std::net::IpAddr,
    /// The other lb hosts' addresses (unicast peers).
    pub peers: Vec<std::net::IpAddr>,
    /// keepalived's configuration, pid files, notify FIFO and track file.
    pub run_dir: PathBuf,
    /// keepalived's own output.
    pub log_file: PathBuf,
}
