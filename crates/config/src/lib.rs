//! The topology file (`webstack.toml`): parse it into `FileConfig`, validate every invariant with
//! the file, line and what was expected, and hand each role its own validated `Config`.

mod error;
mod file;
mod validate;
mod vip;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use webstack_common::access_log::Settings as AccessLogSettings;

pub use error::ConfigError;
pub use vip::NetnsSettings;

/// The longest path a Unix socket address holds (`sun_path`, 108 bytes with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A role a host can run. The start order of a host's roles follows the declaration order here:
/// a server starts before whatever sends it traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Etcd,
    Db,
    App,
    Web,
    Lb,
    /// Prometheus, Alertmanager and the dashboard: started last, as it watches the others.
    Monitor,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Etcd,
        Role::Db,
        Role::App,
        Role::Web,
        Role::Lb,
        Role::Monitor,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::Db => "db",
            Role::App => "app",
            Role::Web => "web",
            Role::Lb => "lb",
            Role::Monitor => "monitor",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One machine of the topology.
#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Every role of this host binds this address.
    pub address: IpAddr,
    /// Sorted in start order, no duplicates.
    pub roles: Vec<Role>,
}

impl Host {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// Ports of one role: the service port and the admin port (`/live`, `/ready`, `/metrics`).
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub service: u16,
    pub admin: u16,
}

/// The validated topology.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from (absolute), passed on to role processes.
    pub path: PathBuf,
    pub site_name: String,
    pub site_aliases: Vec<String>,
    pub hosts: Vec<Host>,
    lb: webstack_lb::Config,
    lb_ports: Ports,
    web: webstack_web::Config,
    web_ports: Ports,
    app: webstack_app::Config,
    app_ports: Ports,
    /// How the web servers and apps run next to each other on a host.
    pairing: WebAppPairing,
    db: Option<DbSettings>,
    db_ports: Ports,
    etcd: EtcdSettings,
    etcd_ports: Ports,
    vip: Option<vip::VipSettings>,
    monitor: MonitorSettings,
    monitor_ports: Ports,
    firewall: FirewallSettings,
    /// `[netns]`: used by `webstack up --netns` only.
    pub netns: vip::NetnsSettings,
}

/// `web.threads`, `app.threads` (0: a share of the host's cores) and `app.unix_socket`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WebAppPairing {
    pub web_threads: usize,
    pub app_threads: usize,
    pub unix_socket: bool,
}

/// `[etcd]` settings; the members are the hosts with role `etcd`.
#[derive(Clone, Debug)]
pub(crate) struct EtcdSettings {
    pub peer_port: u16,
    pub program: PathBuf,
    pub heartbeat_interval: std::time::Duration,
    pub election_timeout: std::time::Duration,
    pub lease_ttl: std::time::Duration,
}

/// `[monitor]` settings; the monitor hosts are the hosts with role `monitor`.
#[derive(Clone, Debug)]
pub(crate) struct MonitorSettings {
    pub host_port: u16,
    pub prometheus_port: u16,
    pub alertmanager_port: u16,
    pub cluster_port: u16,
    pub scrape_interval: std::time::Duration,
    pub retention_time: std::time::Duration,
    pub retention_size: String,
    pub prometheus: PathBuf,
    pub alertmanager: PathBuf,
    pub webhooks: Vec<String>,
}

/// `[firewall]` settings.
#[derive(Clone, Debug)]
pub(crate) struct FirewallSettings {
    pub admin: Vec<String>,
    pub ssh_port: u16,
    pub apply: Option<bool>,
    pub remove_at_stop: bool,
    pub flood_guard: bool,
}

/// `[db]` settings shared by every db node and the app's router.
#[derive(Clone, Debug)]
pub(crate) struct DbSettings {
    pub primary: String,
    pub database: String,
    pub max_replica_lag: u64,
    pub poll_interval: std::time::Duration,
    pub semi_sync_timeout: std::time::Duration,
    pub query_timeout: std::time::Duration,
    pub write_hold: std::time::Duration,
    pub buffer_pool_size: String,
    pub mariadbd: PathBuf,
    pub install_db: PathBuf,
}

impl Config {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        Self::parse(&text, &path)
    }

    /// Validates topology text; relative paths in it are taken from `path`'s folder.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file: file::FileConfig =
            toml::from_str(text).map_err(|error| ConfigError::from_toml(path, text, &error))?;
        validate::validate(file, text, path)
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|host| host.name == name)
    }

    pub fn ports(&self, role: Role) -> Ports {
        match role {
            Role::Lb => self.lb_ports,
            Role::Web => self.web_ports,
            Role::App => self.app_ports,
            Role::Db => self.db_ports,
            Role::Etcd => self.etcd_ports,
            Role::Monitor => self.monitor_ports,
        }
    }

    /// Where `role` of `host` serves traffic.
    pub fn service_addr(&self, host: &Host, role: Role) -> SocketAddr {
        SocketAddr::new(host.address, self.ports(role).service)
    }

    /// Where `role` of `host` serves `/live`, `/ready` and `/metrics`.
    pub fn admin_addr(&self, host: &Host, role: Role) -> SocketAddr {
        SocketAddr::new(host.address, self.ports(role).admin)
    }

    /// The load balancer's settings on `host` (the same on every lb host but for its part in
    /// the VIP). ACME's certificate and, when no files are configured, the local CA's leaf live
    /// in `state_dir/tls/`.
    pub fn lb(&self, host: &Host, state_dir: &Path) -> webstack_lb::Config {
        let mut lb = self.lb.clone();
        lb.vip = self.vip_config(host, state_dir);
        lb.access_log = lb
            .access_log
            .map(|log| AccessLogSettings::for_role(state_dir, &host.name, "lb", log.format));
        let uses_local_ca = self.uses_local_ca();
        if let Some(tls) = lb.tls.as_mut() {
            if let Some(acme) = tls.acme.as_mut() {
                acme.names = self.site_names();
                acme.dir = state_dir.join("tls/acme");
                tls.certificates.push(webstack_lb::CertificateSource {
                    cert: acme.cert_path(),
                    key: acme.key_path(),
                    origin: webstack_lb::CertificateOrigin::Acme,
                });
            }
            if uses_local_ca {
                let ca = webstack_lb::tls::LocalCa::new(state_dir);
                tls.certificates.push(webstack_lb::CertificateSource {
                    cert: ca.site_cert(),
                    key: ca.site_key(),
                    origin: webstack_lb::CertificateOrigin::LocalCa,
                });
            }
        }
        lb
    }

    /// The names the site's certificate covers: the site name and its aliases.
    pub fn site_names(&self) -> Vec<String> {
        std::iter::once(self.site_name.clone())
            .chain(self.site_aliases.iter().cloned())
            .collect()
    }

    /// True when the lb's certificate comes from the local CA: TLS on and no certificate files
    /// configured (with ACME, the local CA serves until the first certificate is issued).
    pub fn uses_local_ca(&self) -> bool {
        self.lb
            .tls
            .as_ref()
            .is_some_and(|t| t.certificates.is_empty())
    }

    /// True when the lb gets its certificate from an ACME CA.
    pub fn uses_acme(&self) -> bool {
        self.lb.tls.as_ref().is_some_and(|t| t.acme.is_some())
    }

    /// The HTTPS port, when TLS is on.
    pub fn https_port(&self) -> Option<u16> {
        self.lb.tls.as_ref().map(|t| t.https_port)
    }

    /// The web server's settings on `host`: it proxies to the app of the same host.
    pub fn web(&self, host: &Host, state_dir: &Path) -> webstack_web::Config {
        webstack_web::Config {
            host_name: host.name.clone(),
            app_addr: self.service_addr(host, Role::App),
            // Validation puts an app on every web host.
            app_socket: self.app_socket(host, state_dir),
            access_log: self
                .web
                .access_log
                .as_ref()
                .map(|log| AccessLogSettings::for_role(state_dir, &host.name, "web", log.format)),
            ..self.web.clone()
        }
    }

    /// The application server's settings on `host`; the database password comes from the
    /// state dir's secrets (never from the topology file).
    pub fn app(
        &self,
        host: &Host,
        state_dir: &Path,
    ) -> Result<webstack_app::Config, webstack_db::secrets::SecretError> {
        let db = match &self.db {
            None => None,
            Some(db) => Some(webstack_db::ClientConfig {
                nodes: self
                    .hosts_with(Role::Db)
                    .map(|h| (h.name.clone(), self.service_addr(h, Role::Db)))
                    .collect(),
                user: webstack_db::provision::APP_USER.to_string(),
                password: webstack_db::secrets::read(state_dir, "app")?,
                database: db.database.clone(),
                max_replica_lag: db.max_replica_lag,
                poll_interval: db.poll_interval,
                connect_timeout: std::time::Duration::from_secs(2),
                query_timeout: db.query_timeout,
                write_hold: db.write_hold,
                coordination: self.coordination(),
            }),
        };
        Ok(webstack_app::Config {
            host_name: host.name.clone(),
            db,
            unix_socket: self.app_socket(host, state_dir),
            access_log: self
                .app
                .access_log
                .as_ref()
                .map(|log| AccessLogSettings::for_role(state_dir, &host.name, "app", log.format)),
            ..self.app.clone()
        })
    }

    /// Worker threads of the process that runs `role` on `host`: the web server's and the app's
    /// `threads`, or, when that is 0, the cores divided among those two roles of the host (one
    /// runtime per role, each sized as if it had the machine, would let work-stealing threads
    /// outnumber the cores: measured in docs/performance.md). None for the other roles: the
    /// lb sizes its own workers (`lb.threads`), MariaDB and etcd are other programs.
    pub fn worker_threads(&self, host: &Host, role: Role) -> Option<usize> {
        let setting = match role {
            Role::Web => self.pairing.web_threads,
            Role::App => self.pairing.app_threads,
            _ => return None,
        };
        if setting > 0 {
            return Some(setting);
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let sharing = [Role::Web, Role::App]
            .iter()
            .filter(|r| host.has(**r))
            .count();
        Some((cores / sharing.max(1)).max(1))
    }

    /// The Unix socket of `host`'s app in the state dir, when `app.unix_socket` is on (the app
    /// listens there, the web server of the same host connects there). None, with a warning,
    /// when the path is longer than a socket address holds: both roles then use TCP.
    pub fn app_socket(&self, host: &Host, state_dir: &Path) -> Option<PathBuf> {
        if !self.pairing.unix_socket {
            return None;
        }
        let path = state_dir
            .join("run")
            .join(format!("{}-app.sock", host.name));
        if webstack_app::UnixSocket::longest_path(&path) > MAX_SOCKET_PATH {
            tracing::warn!(
                path = %path.display(),
                "the app's Unix socket path is longer than {MAX_SOCKET_PATH} bytes: web and app use TCP (a shorter --state-dir lifts this)"
            );
            return None;
        }
        Some(path)
    }

    /// True when the topology has a database tier.
    pub fn has_db(&self) -> bool {
        self.db.is_some()
    }

    /// The db node settings of `host`.
    pub fn db_node(&self, host: &Host, state_dir: &Path) -> Option<webstack_db::NodeConfig> {
        let db = self.db.as_ref()?;
        if !host.has(Role::Db) {
            return None;
        }
        let primary = self.host(&db.primary)?;
        Some(webstack_db::NodeConfig {
            host_name: host.name.clone(),
            address: host.address,
            port: self.db_ports.service,
            server_id: server_id(&host.name),
            primary_name: primary.name.clone(),
            primary_addr: self.service_addr(primary, Role::Db),
            state_dir: state_dir.to_path_buf(),
            database: db.database.clone(),
            mariadbd: db.mariadbd.clone(),
            install_db: db.install_db.clone(),
            semi_sync_timeout: db.semi_sync_timeout,
            buffer_pool_size: db.buffer_pool_size.clone(),
            db_hosts: self.hosts_with(Role::Db).map(|h| h.address).collect(),
            app_hosts: self.hosts_with(Role::App).map(|h| h.address).collect(),
            all_hosts: self.hosts.iter().map(|h| h.address).collect(),
            peers: self
                .hosts_with(Role::Db)
                .map(|h| (h.name.clone(), self.service_addr(h, Role::Db)))
                .collect(),
            failover: self.coordination(),
        })
    }

    /// The etcd cluster the database's failover is coordinated through, when the topology has
    /// one (hosts with role `etcd`) and a database to fail over.
    pub fn coordination(&self) -> Option<webstack_coord::Cluster> {
        let members: Vec<_> = self.hosts_with(Role::Etcd).collect();
        if members.is_empty() || self.db.is_none() {
            return None;
        }
        Some(webstack_coord::Cluster {
            endpoints: members
                .iter()
                .map(|h| format!("http://{}", self.service_addr(h, Role::Etcd)))
                .collect(),
            prefix: format!("/webstack/{}/", self.site_name),
            lease_ttl: self.etcd.lease_ttl,
            attempts: Default::default(),
        })
    }

    /// The etcd member of `host`: its data in `state_dir/etcd/<host>/`.
    pub fn etcd_member(&self, host: &Host, state_dir: &Path) -> webstack_coord::MemberConfig {
        let peer = |h: &Host| SocketAddr::new(h.address, self.etcd.peer_port);
        webstack_coord::MemberConfig {
            name: host.name.clone(),
            client_addr: self.service_addr(host, Role::Etcd),
            peer_addr: peer(host),
            initial_cluster: self
                .hosts_with(Role::Etcd)
                .map(|h| (h.name.clone(), peer(h)))
                .collect(),
            cluster_token: format!("webstack-{}", self.site_name),
            data_dir: state_dir.join("etcd").join(&host.name),
            log: state_dir
                .join("logs")
                .join(format!("{}-etcd.log", host.name)),
            program: self.etcd.program.clone(),
            heartbeat_interval: self.etcd.heartbeat_interval,
            election_timeout: self.etcd.election_timeout,
        }
    }

    /// `db.max_replica_lag` (0 without a database).
    pub fn max_replica_lag(&self) -> u64 {
        self.db.as_ref().map_or(0, |db| db.max_replica_lag)
    }

    /// Where `host`'s supervisor serves its `/metrics` (roles' states, restarts, the state
    /// dir's disk): Prometheus' job `host`.
    pub fn host_metrics_addr(&self, host: &Host) -> SocketAddr {
        SocketAddr::new(host.address, self.monitor.host_port)
    }

    /// Everything Prometheus scrapes: every role's admin port, every host's supervisor, and
    /// each monitor host's Prometheus and Alertmanager.
    pub fn scrape_targets(&self) -> Vec<webstack_monitor::Target> {
        let target = |job: &str, host: &Host, role: &str, addr| webstack_monitor::Target {
            job: job.into(),
            host: host.name.clone(),
            role: role.into(),
            addr,
        };
        let mut targets = Vec::new();
        for host in &self.hosts {
            targets.push(target("host", host, "host", self.host_metrics_addr(host)));
            for role in &host.roles {
                targets.push(target(
                    role.as_str(),
                    host,
                    role.as_str(),
                    self.admin_addr(host, *role),
                ));
            }
            if host.has(Role::Monitor) {
                let at = |port| SocketAddr::new(host.address, port);
                targets.push(target(
                    "prometheus",
                    host,
                    "monitor",
                    at(self.monitor.prometheus_port),
                ));
                targets.push(target(
                    "alertmanager",
                    host,
                    "monitor",
                    at(self.monitor.alertmanager_port),
                ));
            }
        }
        targets
    }

    /// The monitor role's settings on `host`; its files and data live in
    /// `state_dir/monitor/<host>/`.
    pub fn monitor(&self, host: &Host, state_dir: &Path) -> webstack_monitor::Config {
        let m = &self.monitor;
        webstack_monitor::Config {
            site: self.site_name.clone(),
            host: host.name.clone(),
            address: host.address,
            port: self.monitor_ports.service,
            prometheus_port: m.prometheus_port,
            alertmanager_port: m.alertmanager_port,
            cluster_port: m.cluster_port,
            monitors: self.hosts_with(Role::Monitor).map(|h| h.address).collect(),
            targets: self.scrape_targets(),
            hosts: self
                .hosts
                .iter()
                .map(|h| webstack_monitor::HostView {
                    name: h.name.clone(),
                    address: h.address,
                    roles: h.roles.iter().map(|r| r.to_string()).collect(),
                })
                .collect(),
            vip: self.vip(),
            scrape_interval: m.scrape_interval,
            retention_time: m.retention_time,
            retention_size: m.retention_size.clone(),
            prometheus: m.prometheus.clone(),
            alertmanager: m.alertmanager.clone(),
            webhooks: m.webhooks.clone(),
            dir: state_dir.join("monitor").join(&host.name),
            logs: state_dir.join("logs"),
        }
    }

    /// Whether `webstack run --host` applies the host's firewall at start: `firewall.apply`,
    /// by default only in namespace mode (`netns`), where the namespace is all the host has.
    pub fn firewall_applied(&self, netns: bool) -> bool {
        self.firewall.apply.unwrap_or(netns)
    }

    /// When the rules are applied on real machines (`firewall.apply = true`) with no
    /// `firewall.admin` network, ssh and the admin ports are closed to every operator: said
    /// by `webstack check` before it locks anyone out.
    pub fn firewall_lockout_warning(&self) -> Option<String> {
        (self.firewall.apply == Some(true) && self.firewall.admin.is_empty()).then(|| {
            format!(
                "{}: firewall.apply = true and firewall.admin is empty: once applied, ssh (port {}) and the admin ports answer no operator; add your network, e.g. admin = [\"192.0.2.0/24\"]",
                self.path.display(),
                self.firewall.ssh_port
            )
        })
    }

    /// Whether a clean stop of `webstack run --host` removes the rules it applied.
    pub fn firewall_removed_at_stop(&self) -> bool {
        self.firewall.remove_at_stop
    }

    /// `host`'s firewall: what its roles serve, to exactly the hosts that need it.
    pub fn firewall(&self, host: &Host) -> webstack_firewall::HostRules {
        use webstack_firewall::{Protocol, Rule, Source};
        let set = |role: Role| -> (String, Vec<IpAddr>) {
            (
                format!("{role}_hosts"),
                self.hosts_with(role).map(|h| h.address).collect(),
            )
        };
        let sets: Vec<(String, Vec<IpAddr>)> = Role::ALL
            .into_iter()
            .map(set)
            .filter(|(_, members)| !members.is_empty())
            .collect();
        let from = |role: Role| Source::Set(format!("{role}_hosts"));
        let tcp = |name: &str, from: Source, ports: Vec<u16>| Rule {
            name: name.into(),
            from,
            protocol: Protocol::Tcp,
            ports,
        };
        let mut rules = Vec::new();
        if host.has(Role::Lb) {
            let mut ports = vec![self.lb_ports.service];
            ports.extend(self.https_port());
            rules.push(tcp("lb_http", Source::Anyone, ports));
            if self.uses_vrrp() {
                rules.push(Rule {
                    name: "lb_vrrp".into(),
                    from: from(Role::Lb),
                    protocol: Protocol::Vrrp,
                    ports: Vec::new(),
                });
            }
        }
        if host.has(Role::Web) {
            rules.push(tcp(
                "web_from_lb",
                from(Role::Lb),
                vec![self.web_ports.service],
            ));
        }
        // The app is reached by its own host's web server only: over `lo`, accepted above all.
        if host.has(Role::Db) {
            rules.push(tcp(
                "db_from_app",
                from(Role::App),
                vec![self.db_ports.service],
            ));
            rules.push(tcp(
                "db_from_db",
                from(Role::Db),
                vec![self.db_ports.service],
            ));
        }
        if host.has(Role::Etcd) {
            let client = vec![self.etcd_ports.service];
            for role in [Role::App, Role::Db, Role::Etcd] {
                if self.hosts_with(role).next().is_some() {
                    rules.push(tcp(
                        &format!("etcd_from_{role}"),
                        from(role),
                        client.clone(),
                    ));
                }
            }
            rules.push(tcp(
                "etcd_peers",
                from(Role::Etcd),
                vec![self.etcd.peer_port],
            ));
        }
        let mut admin_ports: Vec<u16> = host.roles.iter().map(|r| self.ports(*r).admin).collect();
        admin_ports.push(self.monitor.host_port);
        if self.hosts_with(Role::Monitor).next().is_some() {
            rules.push(tcp(
                "admin_from_monitor",
                from(Role::Monitor),
                admin_ports.clone(),
            ));
        }
        if host.has(Role::Monitor) {
            let m = &self.monitor;
            let ui = vec![
                self.monitor_ports.service,
                m.prometheus_port,
                m.alertmanager_port,
            ];
            rules.push(tcp("monitor_from_monitor", from(Role::Monitor), ui.clone()));
            rules.push(tcp(
                "monitor_cluster",
                from(Role::Monitor),
                vec![m.cluster_port],
            ));
            rules.push(Rule {
                name: "monitor_cluster_udp".into(),
                from: from(Role::Monitor),
                protocol: Protocol::Udp,
                ports: vec![m.cluster_port],
            });
            admin_ports.extend(ui);
        }
        admin_ports.push(self.firewall.ssh_port);
        rules.push(tcp("admin", Source::Admin, admin_ports));
        webstack_firewall::HostRules {
            host: host.name.clone(),
            sets,
            admin: self.firewall.admin.clone(),
            rules,
            flood_guard: (host.has(Role::Lb) && self.firewall.flood_guard)
                .then(|| self.flood_guard()),
        }
    }

    /// The lb hosts' flood guard: ten times what the lb's per-client limits let one client do
    /// (and never under 1000 new connections a second or 1000 open), so a client the lb would
    /// answer itself never meets it; the proxies in front of the lb are left alone.
    fn flood_guard(&self) -> webstack_firewall::FloodGuard {
        let limits = &self.lb.limits;
        let mut ports = vec![self.lb_ports.service];
        ports.extend(self.https_port());
        let rate = if limits.rate == 0 { 1000 } else { limits.rate };
        let connections = match limits.connections_per_client {
            0 => 10_000,
            n => n,
        };
        webstack_firewall::FloodGuard {
            ports,
            new_per_second: rate.saturating_mul(10).max(1000),
            burst: limits.burst.saturating_mul(10).max(2000),
            connections: connections.saturating_mul(10).max(1000),
            exempt: limits
                .trusted_proxies
                .iter()
                .chain(&limits.proxy_protocol)
                .map(ToString::to_string)
                .collect(),
        }
    }

    pub fn hosts_with(&self, role: Role) -> impl Iterator<Item = &Host> {
        self.hosts.iter().filter(move |h| h.has(role))
    }
}

/// A MariaDB `server_id` that belongs to the host's name, not to its place in the file:
/// reordering or inserting hosts never hands a replica the id of another node (it would skip
/// that node's events). FNV-1a, never 0; `webstack check` refuses two hosts with one id.
pub fn server_id(host_name: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in host_name.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.max(1)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The repository's default topology, with paths anchored at the repository root.
    fn default_text() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../webstack.toml"))
            .unwrap()
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../webstack.toml"),
        )
    }

    #[test]
    fn the_default_topology_builds_every_role() {
        let config = parse(&default_text()).unwrap();
        assert_eq!(config.site_name, "www.foobar.com");
        let names: Vec<_> = config.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["lb-01", "lb-02", "web-01", "web-02"]);
        let lb = config.lb(config.host("lb-01").unwrap(), Path::new("/srv/state"));
        assert_eq!(lb.algorithm, webstack_lb::Algorithm::P2c);
        // Two lbs share the site's address; on loopback by the stand-in.
        assert_eq!(config.site_addr().unwrap().to_string(), "127.0.0.10:8080");
        assert!(!config.uses_vrrp());
        let vip = lb.vip.expect("lb.vip is set");
        assert_eq!(vip.host, "lb-01");
        match vip.mode {
            webstack_lb::VipMode::StandIn { run_dir, peers } => {
                assert_eq!(run_dir, Path::new("/srv/state/run"));
                assert_eq!(peers, ["lb-02"]);
            }
            other => panic!("expected the stand-in on loopback, got {other:?}"),
        }
        let servers: Vec<_> = lb
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.addr.to_string(), s.weight, s.backup))
            .collect();
        assert_eq!(
            servers,
            [
                ("web-01", "127.0.0.11:8000".into(), 1, false),
                ("web-02", "127.0.0.12:8000".into(), 1, false)
            ]
        );
        assert_eq!(lb.health.rise, 2);
        assert_eq!(lb.health.interval, std::time::Duration::from_secs(1));
        let web01 = config.host("web-01").unwrap();
        assert_eq!(
            web01.roles,
            [Role::Etcd, Role::Db, Role::App, Role::Web],
            "roles sorted in start order"
        );
        let state = Path::new("/srv/state");
        let primary = config.db_node(web01, state).unwrap();
        let replica = config
            .db_node(config.host("web-02").unwrap(), state)
            .unwrap();
        assert!(primary.is_primary() && !replica.is_primary());
        assert_eq!(
            (primary.server_id, replica.server_id),
            (server_id("web-01"), server_id("web-02")),
            "server ids belong to the names"
        );
        assert_ne!(primary.server_id, replica.server_id);
        let cluster = config.coordination().expect("failover is on by default");
        assert_eq!(
            cluster.endpoints,
            [
                "http://127.0.0.8:2379",
                "http://127.0.0.11:2379",
                "http://127.0.0.12:2379"
            ]
        );
        assert_eq!(cluster.prefix, "/webstack/www.foobar.com/");
        assert!(primary.failover.is_some());
        let member = config.etcd_member(web01, state);
        assert_eq!(member.peer_addr.to_string(), "127.0.0.11:2380");
        assert_eq!(member.initial_cluster.len(), 3);
        assert_eq!(member.data_dir, Path::new("/srv/state/etcd/web-01"));
        assert_eq!(replica.primary_addr.to_string(), "127.0.0.11:3306");
        assert_eq!(
            replica.address.to_string(),
            "127.0.0.12",
            "bound to the host's own address"
        );
        assert_eq!(
            replica.socket(),
            Path::new("/srv/state/db/web-02/mariadb.sock")
        );
        assert!(
            config
                .db_node(config.host("lb-01").unwrap(), state)
                .is_none(),
            "lb-01 runs no db"
        );
        let web = config.web(web01, state);
        assert_eq!(
            web.app_addr.to_string(),
            "127.0.0.11:9000",
            "each web server proxies to its own host's app"
        );
        assert_eq!(
            web.access_log.map(|log| log.path),
            Some(state.join("logs/web-01-web.access.log")),
            "each role's access log next to its own log"
        );
        assert!(web.expose_server_name);
        assert!(web.static_root.ends_with("site/static"));
        assert_eq!(
            config
                .app(web01, Path::new("/nonexistent"))
                .map(|a| a.host_name)
                .ok(),
            None,
            "no secrets, no app config"
        );
        assert_eq!(
            config
                .admin_addr(config.host("lb-01").unwrap(), Role::Lb)
                .to_string(),
            "127.0.0.8:9100"
        );
    }

    #[test]
    fn omitted_sections_take_their_defaults() {
        let text = "[site]\nname = \"a.example\"\n[[host]]\nname = \"h\"\naddress = \"127.0.0.5\"\nroles = [\"lb\", \"web\", \"app\"]\n[lb]\nport = 8081\n";
        let config = parse(text).unwrap();
        let lb = config.lb(config.host("h").unwrap(), Path::new("/srv/state"));
        assert_eq!(lb.algorithm, webstack_lb::Algorithm::P2c);
        assert_eq!(lb.retries, 2);
        assert_eq!(lb.slowstart, std::time::Duration::from_secs(10));
        assert_eq!(
            (lb.health.eject_after, lb.health.max_ejected_percent),
            (5, 50)
        );
        assert_eq!(lb.timeouts.server, std::time::Duration::from_secs(30));
        assert_eq!(config.ports(Role::Web).service, 8000);
        assert_eq!(config.ports(Role::Lb).service, 8081);
        assert_eq!(lb.servers[0].addr.to_string(), "127.0.0.5:8000");
    }

    #[test]
    fn errors_point_at_the_line_and_say_what_was_expected() {
        let text = default_text().replace("interval = \"1s\"", "interval = \"soon\"");
        let error = parse(&text).unwrap_err();
        let line = text.lines().position(|l| l.contains("\"soon\"")).unwrap() + 1;
        assert_eq!(error.line(), Some(line));
        let shown = error.to_string();
        assert!(shown.contains(&format!("webstack.toml:{line}:")), "{shown}");
        assert!(shown.contains("invalid duration \"soon\""), "{shown}");
        assert!(
            shown.contains("interval = \"soon\""),
            "the offending line is quoted: {shown}"
        );
    }

    #[test]
    fn web_and_app_share_the_hosts_cores_unless_told_and_meet_over_the_apps_socket() {
        let config = parse(&default_text()).unwrap();
        let state = Path::new("/srv/state");
        let web01 = config.host("web-01").unwrap();
        assert!(web01.has(Role::Web) && web01.has(Role::App));
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let half = (cores / 2).max(1);
        assert_eq!(config.worker_threads(web01, Role::Web), Some(half));
        assert_eq!(config.worker_threads(web01, Role::App), Some(half));
        let lb01 = config.host("lb-01").unwrap();
        assert_eq!(
            config.worker_threads(lb01, Role::Lb),
            None,
            "lb.threads sizes the lb"
        );
        let socket = state.join("run/web-01-app.sock");
        assert_eq!(config.web(web01, state).app_socket, Some(socket.clone()));
        // The app's side (`Config::app` reads the database's secret: not in this state dir).
        assert_eq!(config.app_socket(web01, state), Some(socket));
        // A state dir too deep for a socket address: both roles use TCP.
        let deep = PathBuf::from(format!("/{}", "d".repeat(100)));
        assert_eq!(config.web(web01, &deep).app_socket, None);
        assert_eq!(config.app_socket(web01, &deep), None);

        let set = default_text()
            .replace("[web]\n", "[web]\nthreads = 3\n")
            .replace("[app]\n", "[app]\nthreads = 5\nunix_socket = false\n");
        let config = parse(&set).unwrap();
        let web01 = config.host("web-01").unwrap();
        assert_eq!(config.worker_threads(web01, Role::Web), Some(3));
        assert_eq!(config.worker_threads(web01, Role::App), Some(5));
        assert_eq!(config.web(web01, state).app_socket, None);
        assert_eq!(config.app_socket(web01, state), None);

        let text = default_text().replace("[app]\n", "[app]\nthreads = 300\n");
        let error = parse(&text).unwrap_err();
        let line = text.lines().position(|l| l == "threads = 300").unwrap() + 1;
        assert_eq!(error.line(), Some(line));
        assert!(
            error
                .to_string()
                .contains("app.threads = 300: expected 0 (the host's cores, shared by its web server and app) to 256"),
            "{error}"
        );
    }

    #[test]
    fn the_web_file_check_interval_is_bounded() {
        let web = |text: &str| {
            let config = parse(text).unwrap();
            let host = config.hosts.iter().find(|h| h.has(Role::Web)).unwrap();
            config.web(host, Path::new("/tmp")).file_check_interval
        };
        assert_eq!(web(&default_text()), std::time::Duration::from_secs(1));
        let every_request =
            default_text().replace("[web]\n", "[web]\nfile_check_interval = \"0s\"\n");
        assert_eq!(web(&every_request), std::time::Duration::ZERO);
        let text = default_text().replace("[web]\n", "[web]\nfile_check_interval = \"2h\"\n");
        let error = parse(&text).unwrap_err();
        let line = text.lines().position(|l| l.contains("\"2h\"")).unwrap() + 1;
        assert_eq!(error.line(), Some(line));
        assert!(
            error
                .to_string()
                .contains("web.file_check_interval: expected 0s (a check at every request) to 1h"),
            "{error}"
        );
    }

    #[test]
    fn the_db_section_is_checked() {
        let text = default_text().replace("primary = \"web-01\"", "primary = \"lb-01\"");
        let error = parse(&text).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("db.primary \"lb-01\" is not a host with role db"),
            "{error}"
        );
        assert_eq!(
            error.line(),
            Some(
                text.lines()
                    .position(|l| l.contains("primary = \"lb-01\""))
                    .unwrap()
                    + 1
            )
        );
        let without = &default_text()[..default_text().find("[db]").unwrap()];
        assert!(
            parse(without)
                .unwrap_err()
                .to_string()
                .contains("has role db but there is no [db] section")
        );
        let text = default_text().replace("database = \"foobar\"", "database = \"foo-bar; drop\"");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("expected 1 to 64 letters, digits or '_'")
        );
        let text = default_text().replace("port = 3306", "port = 9000");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("would bind the same port")
        );
    }

    #[test]
    fn tls_settings_are_checked() {
        let config = parse(&default_text()).unwrap();
        let lb = config.lb(config.host("lb-01").unwrap(), Path::new("/srv/state"));
        let tls = lb.tls.expect("TLS is on by default");
        assert_eq!(
            tls.certificates,
            [webstack_lb::CertificateSource {
                cert: "/srv/state/tls/site.pem".into(),
                key: "/srv/state/tls/site.key".into(),
                origin: webstack_lb::CertificateOrigin::LocalCa,
            }],
            "the local CA's leaf"
        );
        assert!(tls.acme.is_none());
        assert_eq!((tls.https_port, tls.redirect_http), (8443, true));
        assert_eq!(
            tls.hsts_max_age,
            Some(std::time::Duration::from_secs(365 * 86_400))
        );
        assert_eq!(config.site_names(), ["www.foobar.com", "foobar.com"]);
        let error_of = |insert: &str| {
            let text = default_text().replace("port = 8443 ", &format!("{insert}\nport = 8443 "));
            parse(&text).unwrap_err().to_string()
        };
        let error = error_of("cert = \"site/static/robots.txt\"");
        assert!(
            error.contains("lb.tls.cert and lb.tls.key go together"),
            "{error}"
        );
        let error = error_of("cert = \"nope.pem\"\nkey = \"nope.key\"");
        // The inserted `cert` takes the line `port = 8443` had.
        let line = 1 + default_text()
            .lines()
            .position(|l| l.starts_with("port = 8443 "))
            .unwrap();
        assert!(
            error.contains("lb.tls.cert: ") && error.contains(&format!(":{line}:8")),
            "{error}"
        );
        let text = default_text().replace("port = 8443 ", "port = 8080 ");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("would bind the same port")
        );
        let text = default_text().replace(
            "redirect_http = true",
            "redirect_http = false\nenabled = false",
        );
        let config = parse(&text).unwrap();
        assert!(
            config
                .lb(config.host("lb-01").unwrap(), Path::new("/x"))
                .tls
                .is_none()
        );
    }

    #[test]
    fn certificate_files_and_acme() {
        // Files are parsed and matched by `check`, as the lb does at start: not a certificate
        // is refused; a real pair passes.
        let with_files = |cert: &str, key: &str| {
            default_text().replace(
                "[lb.health]",
                &format!("[[lb.tls.certificates]]\ncert = \"{cert}\"\nkey = \"{key}\"\n\n\
                 [lb.tls.acme]\ndirectory = \"https://127.0.0.1:14000/dir\"\ncontact = [\"ops@foobar.com\"]\nagree_terms = true\n\n[lb.health]"),
            )
        };
        let error = parse(&with_files(
            "site/static/robots.txt",
            "site/static/robots.txt",
        ))
        .unwrap_err()
        .to_string();
        assert!(error.contains("no PEM certificate"), "{error}");
        let dir = std::env::temp_dir().join(format!("webstack-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pair = rcgen::generate_simple_self_signed(vec!["www.foobar.com".into()]).unwrap();
        std::fs::write(dir.join("site.pem"), pair.cert.pem()).unwrap();
        std::fs::write(dir.join("site.key"), pair.signing_key.serialize_pem()).unwrap();
        let text = with_files(
            &dir.join("site.pem").display().to_string(),
            &dir.join("site.key").display().to_string(),
        );
        let config = parse(&text).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(!config.uses_local_ca(), "files configured: no local CA");
        let tls = config
            .lb(config.host("lb-01").unwrap(), Path::new("/srv/state"))
            .tls
            .unwrap();
        let origins: Vec<_> = tls.certificates.iter().map(|c| c.origin).collect();
        use webstack_lb::CertificateOrigin::{Acme, File};
        assert_eq!(origins, [File, Acme], "files first, then ACME's");
        let acme = tls.acme.unwrap();
        assert_eq!(acme.names, ["www.foobar.com", "foobar.com"]);
        assert_eq!(acme.contact, ["mailto:ops@foobar.com"]);
        assert_eq!(acme.cert_path(), Path::new("/srv/state/tls/acme/site.pem"));
        assert_eq!(acme.renew_before.as_secs(), 30 * 86_400);

        let acme_error = |body: &str| {
            let text = default_text().replace(
                "[lb.health]",
                &format!("[lb.tls.acme]\n{body}\n\n[lb.health]"),
            );
            parse(&text).unwrap_err().to_string()
        };
        let error = acme_error("directory = \"http://ca.test/dir\"\nagree_terms = true");
        assert!(
            error.contains("expected the CA's directory URL, https://"),
            "{error}"
        );
        let error = acme_error("directory = \"https://ca.test/dir\"\nagree_terms = false");
        assert!(error.contains("agree_terms must be true"), "{error}");
        let error = acme_error("directory = \"https://ca.test/dir\"");
        assert!(error.contains("agree_terms"), "{error}");
        let error = acme_error(
            "directory = \"https://ca.test/dir\"\nagree_terms = true\nca_cert = \"nope.pem\"",
        );
        assert!(error.contains("lb.tls.acme.ca_cert: "), "{error}");
        let error = acme_error(
            "directory = \"https://ca.test/dir\"\nagree_terms = true\ncontact = [\"nobody\"]",
        );
        assert!(error.contains("expected an e-mail address"), "{error}");
        let error =
            acme_error("directory = \"https://ca.test/dir\"\nagree_terms = true\nrenew = \"1d\"");
        assert!(error.contains("unknown field `renew`"), "{error}");
    }

    #[test]
    fn zero_durations_and_ports_are_refused() {
        let text = default_text().replace("timeout = \"1s\"", "timeout = \"0s\"");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("lb.health.timeout must be longer than 0")
        );
        let text = default_text().replace("port = 8000", "port = 0");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("port 0 is not a port")
        );
        let text = default_text().replace("port = 8080 ", "port = 70000 ");
        assert!(parse(&text).is_err(), "70000 does not fit a port");
    }

    #[test]
    fn every_host_needs_its_own_name_and_address() {
        let text = default_text().replace("address = \"127.0.0.12\"", "address = \"127.0.0.11\"");
        let error = parse(&text).unwrap_err().to_string();
        assert!(
            error.contains("address 127.0.0.11 is already host web-01's"),
            "{error}"
        );
        let text = default_text().replace("address = \"127.0.0.12\"", "address = \"0.0.0.0\"");
        assert!(
            parse(&text)
                .unwrap_err()
                .to_string()
                .contains("unspecified")
        );
    }

    #[test]
    fn server_ids_survive_reordering_hosts() {
        let text = default_text();
        let reordered = text
            .replacen("name = \"web-01\"", "name = \"web-xx\"", 1)
            .replacen("name = \"web-02\"", "name = \"web-01\"", 1)
            .replacen("name = \"web-xx\"", "name = \"web-02\"", 1);
        let state = Path::new("/srv/state");
        let (a, b) = (parse(&text).unwrap(), parse(&reordered).unwrap());
        for name in ["web-01", "web-02"] {
            assert_eq!(
                a.db_node(a.host(name).unwrap(), state).unwrap().server_id,
                b.db_node(b.host(name).unwrap(), state).unwrap().server_id,
            );
        }
        assert_ne!(server_id(""), 0);
    }

    #[test]
    fn etcd_needs_an_odd_number_of_members_and_its_program() {
        let two = default_text().replacen(
            "roles = [\"lb\", \"etcd\", \"monitor\"]",
            "roles = [\"lb\", \"monitor\"]",
            1,
        );
        let error = parse(&two).unwrap_err().to_string();
        assert!(
            error.contains("role etcd is on 2 host(s) (web-01, web-02)")
                && error.contains("odd number of at least 3"),
            "{error}"
        );
        let none = default_text().replace(", \"etcd\"", "");
        let config = parse(&none).unwrap();
        assert!(config.coordination().is_none(), "no members: no failover");
        let missing =
            default_text().replace("[etcd]\n", "[etcd]\nprogram = \"/nonexistent/etcd\"\n");
        let error = parse(&missing).unwrap_err().to_string();
        assert!(
            error.contains("etcd.program") && error.contains("apt-get install etcd-server"),
            "{error}"
        );
        let short = default_text().replace("lease_ttl = \"2s\"", "lease_ttl = \"1s\"");
        let error = parse(&short).unwrap_err().to_string();
        assert!(error.contains("etcd.lease_ttl"), "{error}");
        let clash = default_text().replace("peer_port = 2380", "peer_port = 3306");
        let error = parse(&clash).unwrap_err().to_string();
        assert!(
            error.contains("etcd.peer_port = 3306 is also db.port"),
            "{error}"
        );
    }

    #[test]
    fn the_vip_is_checked() {
        let vip = "vip = \"127.0.0.10\"";
        let cases = [
            // Two lbs need the address they share.
            (
                vip,
                "",
                "",
                "role lb is on 2 hosts (lb-01, lb-02): set lb.vip",
            ),
            (
                vip,
                "vip = \"127.0.0.11\"",
                "",
                "lb.vip 127.0.0.11 is host web-01's address",
            ),
            (
                vip,
                "vip = \"::1\"",
                "",
                "lb.vip ::1: expected an IPv4 address",
            ),
            (vip, "vip = \"10.1.1.10\"", "", "expected both on loopback"),
            (
                vip,
                vip,
                "router_id = 300",
                "lb.vrrp.router_id = 300: expected 1 to 255",
            ),
            (
                vip,
                vip,
                "advert_interval = \"5ms\"",
                "lb.vrrp.advert_interval: expected 10ms to 40.95s",
            ),
        ];
        for (from, to, vrrp, wanted) in cases {
            let mut text = default_text().replacen(from, to, 1);
            if !vrrp.is_empty() {
                text.push_str(&format!("\n[lb.vrrp]\n{vrrp}\n"));
            }
            let error = parse(&text).unwrap_err().to_string();
            assert!(error.contains(wanted), "{wanted:?} not in {error}");
            assert!(error.contains("webstack.toml:"), "has a line: {error}");
        }
    }

    #[test]
    fn namespace_mode_settings_are_checked() {
        let netns = |network: &str, client: &str| {
            default_text().replace("127.0.0.", "10.77.0.").replace(
                "[site]",
                &format!("[netns]\nnetwork = \"{network}\"\nclient = \"{client}\"\n\n[site]"),
            )
        };
        let config = parse(&netns("10.77.0.0/24", "10.77.0.100")).unwrap();
        assert!(config.uses_vrrp());
        assert_eq!(
            config.netns.network,
            Some(("10.77.0.0".parse().unwrap(), 24))
        );
        assert_eq!(config.netns.namespace("lb-01"), "ws-lb-01");
        let vip = config
            .lb(config.host("lb-02").unwrap(), Path::new("/s"))
            .vip
            .unwrap();
        match vip.mode {
            webstack_lb::VipMode::Vrrp(vrrp) => {
                assert_eq!(vrrp.address.to_string(), "10.77.0.9");
                assert_eq!(
                    vrrp.peers,
                    ["10.77.0.8".parse::<std::net::IpAddr>().unwrap()]
                );
                assert_eq!(vrrp.advert_interval, std::time::Duration::from_millis(100));
            }
            other => panic!("expected VRRP off loopback, got {other:?}"),
        }
        for ((network, client), wanted) in [
            (
                ("8.8.0.0/16", "8.8.0.100"),
                "expected a private IPv4 network",
            ),
            (
                ("10.77.0.0/24", "10.78.0.100"),
                "netns.client 10.78.0.100: expected an address of netns.network",
            ),
            (
                ("10.77.0.0/24", "10.77.0.11"),
                "netns.client 10.77.0.11 is host web-01's address",
            ),
            (
                ("10.77.1.0/24", "10.77.1.100"),
                "host lb-01 (10.77.0.8) is outside netns.network",
            ),
        ] {
            let error = parse(&netns(network, client)).unwrap_err().to_string();
            assert!(error.contains(wanted), "{wanted:?} not in {error}");
        }
    }
}
