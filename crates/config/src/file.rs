//! The topology file as written: serde structs with named defaults and no unknown keys.
//! Values that later checks must point at are `Spanned`, so errors carry their line.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::Role;

pub use webstack_common::access_log::Format as AccessLogFormat;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub site: SiteFile,
    #[serde(rename = "host", default)]
    pub hosts: Vec<HostFile>,
    #[serde(default)]
    pub lb: LbFile,
    #[serde(default)]
    pub web: WebFile,
    #[serde(default)]
    pub app: AppFile,
    pub db: Option<DbFile>,
    #[serde(default)]
    pub etcd: EtcdFile,
    #[serde(default)]
    pub netns: NetnsFile,
    #[serde(default)]
    pub monitor: MonitorFile,
    #[serde(default)]
    pub firewall: FirewallFile,
}

/// `[firewall]`: the nftables rules derived from the topology.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallFile {
    /// Networks that may reach ssh and every admin port (`["10.0.0.0/24"]`).
    pub admin: Vec<Spanned<String>>,
    pub ssh_port: Spanned<u16>,
    /// `webstack run --host` applies the host's rules at start; default: only in namespace mode.
    pub apply: Option<bool>,
    /// ... and removes them at a clean stop.
    pub remove_at_stop: bool,
    /// Per-source flood limits on the lb hosts' site ports, far above the lb's own limits.
    pub flood_guard: bool,
}

impl Default for FirewallFile {
    fn default() -> Self {
        Self {
            admin: Vec::new(),
            ssh_port: Spanned::new(0..0, 22),
            apply: None,
            remove_at_stop: false,
            flood_guard: true,
        }
    }
}

/// `[monitor]`: Prometheus, Alertmanager and the dashboard on the hosts with role `monitor`,
/// and the port every host's supervisor serves its own metrics on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorFile {
    /// The dashboard, and the webhook Alertmanager calls.
    pub port: Spanned<u16>,
    pub admin_port: Spanned<u16>,
    /// Every host's supervisor: `/metrics` with each role's state and restarts.
    pub host_port: Spanned<u16>,
    pub prometheus_port: Spanned<u16>,
    pub alertmanager_port: Spanned<u16>,
    /// Alertmanager's gossip between monitor hosts.
    pub cluster_port: Spanned<u16>,
    pub scrape_interval: Spanned<HumanDuration>,
    /// How long Prometheus keeps samples; `retention_size` bounds the disk as well.
    pub retention: Spanned<HumanDuration>,
    pub retention_size: Spanned<String>,
    pub prometheus: Spanned<String>,
    pub alertmanager: Spanned<String>,
    /// More receivers of every alert (webhook URLs), besides the dashboards.
    pub webhooks: Vec<Spanned<String>>,
}

impl Default for MonitorFile {
    fn default() -> Self {
        Self {
            port: Spanned::new(0..0, 9200),
            admin_port: Spanned::new(0..0, 9106),
            host_port: Spanned::new(0..0, 9105),
            prometheus_port: Spanned::new(0..0, 9290),
            alertmanager_port: Spanned::new(0..0, 9293),
            cluster_port: Spanned::new(0..0, 9294),
            scrape_interval: Spanned::new(0..0, HumanDuration::secs(5)),
            retention: Spanned::new(0..0, HumanDuration::secs(15 * 86_400)),
            retention_size: Spanned::new(0..0, "1GB".into()),
            prometheus: Spanned::new(0..0, "/usr/bin/prometheus".into()),
            alertmanager: Spanned::new(0..0, "/usr/bin/prometheus-alertmanager".into()),
            webhooks: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteFile {
    pub name: Spanned<String>,
    #[serde(default)]
    pub aliases: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    pub name: Spanned<String>,
    pub address: Spanned<IpAddr>,
    pub roles: Spanned<Vec<Spanned<Role>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbFile {
    pub port: Spanned<u16>,
    pub admin_port: Spanned<u16>,
    pub algorithm: Algorithm,
    pub retries: Spanned<u32>,
    pub access_log: bool,
    /// `json` or `combined`.
    pub access_log_format: AccessLogFormat,
    /// `Server-Timing: lb;dur=..` on responses (opt-in).
    pub server_timing: bool,
    /// Worker threads; 0 means one per CPU core.
    pub threads: Spanned<u32>,
    /// Client connections at once over both ports; more wait in the listen backlog.
    pub maxconn: Spanned<u32>,
    /// A returning server's ramp to its full share of requests.
    pub slowstart: Spanned<HumanDuration>,
    /// Requests each server serves at once (0: no limit); more wait in the queue.
    pub server_maxconn: Spanned<u32>,
    /// The longest wait in that queue.
    pub queue_timeout: Spanned<HumanDuration>,
    pub limits: LimitsFile,
    pub health: HealthFile,
    pub timeouts: LbTimeoutsFile,
    pub tls: TlsFile,
    /// Per-server overrides: `[[lb.server]] host = "web-01"  weight = 2  backup = true`.
    pub server: Vec<ServerFile>,
    /// The site's address, shared by the lb hosts (DNS points here); moves to a survivor.
    pub vip: Option<Spanned<IpAddr>>,
    pub vrrp: VrrpFile,
}

/// `[lb.limits]`: what one client may do (see `webstack_lb::Limits`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsFile {
    /// Requests per second per client; 0: off.
    pub rate: Spanned<u32>,
    pub burst: Spanned<u32>,
    pub connections_per_client: Spanned<u32>,
    /// Bytes per second; 0: off.
    pub min_body_rate: Spanned<u32>,
    pub body_grace: Spanned<HumanDuration>,
    /// A size such as "100MiB".
    pub max_body: Spanned<String>,
    /// Networks (`address/prefix`) whose X-Forwarded-For names the client.
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Networks whose connections must start with a PROXY protocol header.
    pub proxy_protocol: Vec<Spanned<String>>,
}

impl Default for LimitsFile {
    fn default() -> Self {
        let defaults = webstack_lb::Limits::default();
        Self {
            rate: Spanned::new(0..0, defaults.rate),
            burst: Spanned::new(0..0, defaults.burst),
            connections_per_client: Spanned::new(0..0, defaults.connections_per_client),
            min_body_rate: Spanned::new(0..0, defaults.min_body_rate),
            body_grace: Spanned::new(0..0, HumanDuration(defaults.body_grace)),
            max_body: Spanned::new(0..0, "100MiB".into()),
            trusted_proxies: Vec::new(),
            proxy_protocol: Vec::new(),
        }
    }
}

/// `[lb.vrrp]`: how keepalived moves a non-loopback `lb.vip` between the lb hosts.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VrrpFile {
    /// Seconds between adverts; a dead master is noticed after about three of them.
    pub advert_interval: Spanned<HumanDuration>,
    /// VRRP's virtual router id, 1 to 255; 0 derives one from the site's name.
    pub router_id: Spanned<u32>,
    /// The interface that carries the VIP; default: the one holding the host's address.
    pub interface: Option<Spanned<String>>,
    pub program: Spanned<String>,
}

impl Default for VrrpFile {
    fn default() -> Self {
        Self {
            advert_interval: Spanned::new(0..0, HumanDuration(Duration::from_millis(100))),
            router_id: Spanned::new(0..0, 0),
            interface: None,
            program: Spanned::new(0..0, "/usr/sbin/keepalived".into()),
        }
    }
}

/// `[netns]`: settings of `webstack up --netns` (each host in a network namespace).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetnsFile {
    /// Prefix of every namespace's name (`ws-lb-01`, `ws-switch`, `ws-client`).
    pub prefix: Spanned<String>,
    /// The private network of the hosts, the VIP and the client, e.g. "10.77.0.0/24".
    pub network: Option<Spanned<String>>,
    /// The client namespace's address.
    pub client: Option<Spanned<IpAddr>>,
}

impl Default for NetnsFile {
    fn default() -> Self {
        Self {
            prefix: Spanned::new(0..0, "ws-".into()),
            network: None,
            client: None,
        }
    }
}

impl Default for LbFile {
    fn default() -> Self {
        Self {
            port: Spanned::new(0..0, 8080),
            admin_port: Spanned::new(0..0, 9100),
            // Measured best with a slow server (bench/results/2026-11-29-balance.md).
            algorithm: Algorithm::P2c,
            retries: Spanned::new(0..0, 2),
            access_log: true,
            access_log_format: AccessLogFormat::Json,
            server_timing: false,
            threads: Spanned::new(0..0, 0),
            maxconn: Spanned::new(0..0, 10_000),
            slowstart: Spanned::new(0..0, HumanDuration::secs(10)),
            server_maxconn: Spanned::new(0..0, 0),
            queue_timeout: Spanned::new(0..0, HumanDuration::secs(5)),
            limits: LimitsFile::default(),
            health: HealthFile::default(),
            timeouts: LbTimeoutsFile::default(),
            tls: TlsFile::default(),
            server: Vec::new(),
            vip: None,
            vrrp: VrrpFile::default(),
        }
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    RoundRobin,
    LeastConn,
    P2c,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub host: Spanned<String>,
    #[serde(default = "one")]
    pub weight: Spanned<u32>,
    #[serde(default)]
    pub backup: bool,
    /// Requests it serves at once; default `lb.server_maxconn`.
    #[serde(default)]
    pub maxconn: Option<Spanned<u32>>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthFile {
    pub path: Spanned<String>,
    pub interval: Spanned<HumanDuration>,
    pub timeout: Spanned<HumanDuration>,
    pub rise: Spanned<u32>,
    pub fall: Spanned<u32>,
    /// Consecutive failed requests that eject a server before its checks do; 0: off.
    pub eject_after: Spanned<u32>,
    /// At most this percentage of the servers ejected at once.
    pub max_ejected_percent: Spanned<u32>,
}

impl Default for HealthFile {
    fn default() -> Self {
        Self {
            path: Spanned::new(0..0, "/healthz".into()),
            interval: Spanned::new(0..0, HumanDuration::secs(1)),
            timeout: Spanned::new(0..0, HumanDuration::secs(1)),
            rise: Spanned::new(0..0, 2),
            fall: Spanned::new(0..0, 2),
            eject_after: Spanned::new(0..0, 5),
            max_ejected_percent: Spanned::new(0..0, 50),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFile {
    pub enabled: bool,
    pub port: Spanned<u16>,
    /// PEM certificate chain and key; both or neither (then a local CA issues one).
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// More certificates, picked by SNI: `[[lb.tls.certificates]] cert = "..."  key = "..."`.
    pub certificates: Vec<CertificateFile>,
    /// Certificates for the site's names from an ACME CA (Let's Encrypt): `[lb.tls.acme]`.
    pub acme: Option<AcmeFile>,
    pub handshake_timeout: Spanned<HumanDuration>,
    pub redirect_http: bool,
    /// 0 turns HSTS off.
    pub hsts_max_age: Spanned<HumanDuration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateFile {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    /// The CA's directory URL.
    pub directory: Spanned<String>,
    /// Contact addresses for the account (expiry notices): `mailto:` added when missing.
    #[serde(default)]
    pub contact: Vec<Spanned<String>>,
    /// A PEM root to trust for the directory's own HTTPS (a private or test CA such as pebble).
    #[serde(default)]
    pub ca_cert: Option<Spanned<String>>,
    /// Renew when less than this is left of the certificate's validity.
    #[serde(default = "thirty_days")]
    pub renew_before: Spanned<HumanDuration>,
    /// Whether the terms of service of the CA are agreed to (required by the CA).
    pub agree_terms: Spanned<bool>,
}

fn thirty_days() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::secs(30 * 86_400))
}

impl Default for TlsFile {
    fn default() -> Self {
        Self {
            enabled: true,
            port: Spanned::new(0..0, 8443),
            cert: None,
            key: None,
            certificates: Vec::new(),
            acme: None,
            handshake_timeout: Spanned::new(0..0, HumanDuration::secs(10)),
            redirect_http: true,
            hsts_max_age: Spanned::new(0..0, HumanDuration::secs(365 * 86_400)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbTimeoutsFile {
    pub client_header: Spanned<HumanDuration>,
    pub connect: Spanned<HumanDuration>,
    pub server: Spanned<HumanDuration>,
    /// An upgraded connection (WebSocket) idle both ways.
    pub tunnel: Spanned<HumanDuration>,
}

impl Default for LbTimeoutsFile {
    fn default() -> Self {
        Self {
            client_header: Spanned::new(0..0, HumanDuration::secs(10)),
            connect: Spanned::new(0..0, HumanDuration::secs(2)),
            server: Spanned::new(0..0, HumanDuration::secs(30)),
            tunnel: Spanned::new(0..0, HumanDuration::secs(600)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebFile {
    pub port: Spanned<u16>,
    pub admin_port: Spanned<u16>,
    pub static_root: Spanned<String>,
    pub cache_control: Spanned<String>,
    pub file_check_interval: Spanned<HumanDuration>,
    pub expose_server_name: bool,
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// `Server-Timing: web;dur=..` on proxied responses (opt-in).
    pub server_timing: bool,
    pub maxconn: Spanned<u32>,
    /// Worker threads; 0: the host's cores, shared with the app when the host runs both.
    pub threads: Spanned<u32>,
    pub timeouts: WebTimeoutsFile,
}

impl Default for WebFile {
    fn default() -> Self {
        Self {
            port: Spanned::new(0..0, 8000),
            admin_port: Spanned::new(0..0, 9101),
            static_root: Spanned::new(0..0, "site/static".into()),
            cache_control: Spanned::new(0..0, "public, max-age=3600".into()),
            file_check_interval: Spanned::new(0..0, HumanDuration::secs(1)),
            expose_server_name: false,
            access_log: true,
            access_log_format: AccessLogFormat::Json,
            server_timing: false,
            maxconn: Spanned::new(0..0, 10_000),
            threads: Spanned::new(0..0, 0),
            timeouts: WebTimeoutsFile::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebTimeoutsFile {
    pub client_header: Spanned<HumanDuration>,
    pub app_connect: Spanned<HumanDuration>,
    pub app_response: Spanned<HumanDuration>,
}

impl Default for WebTimeoutsFile {
    fn default() -> Self {
        Self {
            client_header: Spanned::new(0..0, HumanDuration::secs(10)),
            app_connect: Spanned::new(0..0, HumanDuration::secs(2)),
            app_response: Spanned::new(0..0, HumanDuration::secs(30)),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppFile {
    pub port: Spanned<u16>,
    pub admin_port: Spanned<u16>,
    pub templates: Spanned<String>,
    pub maxconn: Spanned<u32>,
    pub access_log: bool,
    pub access_log_format: AccessLogFormat,
    /// `Server-Timing: app;dur=.., db;dur=..` on responses (opt-in).
    pub server_timing: bool,
    /// The app also listens on a Unix socket in the state dir, and its host's web server
    /// proxies through it instead of TCP.
    pub unix_socket: bool,
    /// Worker threads; 0: the host's cores, shared with the web server when the host runs both.
    pub threads: Spanned<u32>,
}

impl Default for AppFile {
    fn default() -> Self {
        Self {
            port: Spanned::new(0..0, 9000),
            admin_port: Spanned::new(0..0, 9102),
            templates: Spanned::new(0..0, "site/templates".into()),
            maxconn: Spanned::new(0..0, 10_000),
            access_log: true,
            access_log_format: AccessLogFormat::Json,
            server_timing: false,
            unix_socket: true,
            threads: Spanned::new(0..0, 0),
        }
    }
}

/// A duration written as a human string: `"500ms"`, `"2s"`, `"1m 30s"`.
#[derive(Clone, Copy, Debug)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    const fn secs(secs: u64) -> Self {
        Self(Duration::from_secs(secs))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom(
                "expected a duration as a string with a unit, like \"500ms\", \"2s\" or \"1m\"",
            )
        })?;
        humantime::parse_duration(text.trim())
            .map(HumanDuration)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "invalid duration {text:?}: expected a number with a unit, like \"500ms\", \"2s\" or \"1m\""
                ))
            })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DbFile {
    /// The host that is primary when the cluster is first bootstrapped.
    pub primary: Spanned<String>,
    #[serde(default = "db_port")]
    pub port: Spanned<u16>,
    #[serde(default = "db_admin_port")]
    pub admin_port: Spanned<u16>,
    #[serde(default = "db_database")]
    pub database: Spanned<String>,
    #[serde(default = "db_max_lag")]
    pub max_replica_lag: u64,
    #[serde(default = "db_poll")]
    pub poll_interval: Spanned<HumanDuration>,
    #[serde(default = "db_semi_sync")]
    pub semi_sync_timeout: Spanned<HumanDuration>,
    /// One request's statements on a node, connection included.
    #[serde(default = "db_query_timeout")]
    pub query_timeout: Spanned<HumanDuration>,
    #[serde(default = "db_buffer_pool")]
    pub buffer_pool_size: Spanned<String>,
    /// With failover: how long a write waits for a primary during a failover before a 503.
    #[serde(default = "db_write_hold")]
    pub write_hold: Spanned<HumanDuration>,
    #[serde(default = "db_mariadbd")]
    pub mariadbd: Spanned<String>,
    #[serde(default = "db_install_db")]
    pub install_db: Spanned<String>,
}

fn db_port() -> Spanned<u16> {
    Spanned::new(0..0, 3306)
}
fn db_admin_port() -> Spanned<u16> {
    Spanned::new(0..0, 9103)
}
fn db_database() -> Spanned<String> {
    Spanned::new(0..0, "foobar".into())
}
fn db_max_lag() -> u64 {
    100
}
fn db_poll() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration(Duration::from_millis(500)))
}
fn db_semi_sync() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::secs(1))
}
fn db_query_timeout() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::secs(5))
}
fn db_write_hold() -> Spanned<HumanDuration> {
    Spanned::new(0..0, HumanDuration::secs(5))
}
fn db_buffer_pool() -> Spanned<String> {
    Spanned::new(0..0, "64M".into())
}
fn db_mariadbd() -> Spanned<String> {
    Spanned::new(0..0, "/usr/sbin/mariadbd".into())
}
fn db_install_db() -> Spanned<String> {
    Spanned::new(0..0, "/usr/bin/mariadb-install-db".into())
}

/// `[etcd]`: the coordination cluster's members are the hosts with role `etcd`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EtcdFile {
    /// Client port (the db roles, the apps and `etcdctl` connect here).
    pub port: Spanned<u16>,
    /// Raft traffic between members.
    pub peer_port: Spanned<u16>,
    pub admin_port: Spanned<u16>,
    pub program: Spanned<String>,
    pub heartbeat_interval: Spanned<HumanDuration>,
    pub election_timeout: Spanned<HumanDuration>,
    /// The primary's leader key lives this long without renewal: a dead primary is replaced
    /// after at most this.
    pub lease_ttl: Spanned<HumanDuration>,
}

impl Default for EtcdFile {
    fn default() -> Self {
        Self {
            port: Spanned::new(0..0, 2379),
            peer_port: Spanned::new(0..0, 2380),
            admin_port: Spanned::new(0..0, 9104),
            program: Spanned::new(0..0, "/usr/bin/etcd".into()),
            heartbeat_interval: Spanned::new(0..0, HumanDuration(Duration::from_millis(100))),
            election_timeout: Spanned::new(0..0, HumanDuration::secs(1)),
            lease_ttl: Spanned::new(0..0, HumanDuration::secs(2)),
        }
    }
}
