//! The load balancer's validated settings, built by `webstack-config` from the topology file.

use std::net::SocketAddr;
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
    /// One log line per request under the `access` target.
    pub access_log: bool,
    /// Worker threads, each with its own listener (`SO_REUSEPORT`) and connection pool.
    pub threads: usize,
    /// HTTPS on a second port; None when TLS is off.
    pub tls: Option<TlsSettings>,
}

/// TLS termination settings.
#[derive(Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate chain and key (configured, or the local CA's leaf in the state dir).
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    /// A client must finish its handshake within this time.
    pub handshake_timeout: Duration,
    /// Plain HTTP answers 308 to the HTTPS URL (except ACME challenges).
    pub redirect_http: bool,
    /// `Strict-Transport-Security: max-age=...` on HTTPS responses; None: not sent.
    pub hsts_max_age: Option<Duration>,
    /// The HTTPS port written in redirect URLs (omitted when 443).
    pub https_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// Smooth weighted round-robin (as nginx does): even spread, weights respected.
    RoundRobin,
    /// Fewest in-flight requests relative to weight; ties broken round-robin.
    LeastConn,
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
}

#[derive(Clone, Debug)]
pub struct Timeouts {
    /// A client must send a complete request head within this time.
    pub client_header: Duration,
    /// TCP connect to a server.
    pub connect: Duration,
    /// From sending the request to a server until its response head arrives.
    pub server: Duration,
}
