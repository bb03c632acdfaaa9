//! From `FileConfig` to `Config`: every invariant of a working topology, each failure explained
//! with the place in the file it comes from.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::file::{self, FileConfig, HumanDuration};
use crate::{Config, ConfigError, DbSettings, EtcdSettings, Host, Ports, Role};

/// The longest duration any key takes (HSTS's max-age is a year; two leave room).
const MAX_DURATION: Duration = Duration::from_secs(2 * 366 * 86_400);

/// Collects the location context so each check is one line.
pub(crate) struct Checker<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Checker<'_> {
    pub(crate) fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        // Defaults carry an empty 0..0 span: no line to show.
        let span = (span != (0..0)).then_some(span);
        ConfigError::at(self.path, self.text, span, message.into())
    }

    pub(crate) fn ensure(
        &self,
        ok: bool,
        span: Range<usize>,
        message: impl Into<String>,
    ) -> Result<(), ConfigError> {
        if ok {
            Ok(())
        } else {
            Err(self.error(span, message))
        }
    }

    pub(crate) fn positive(
        &self,
        value: &Spanned<HumanDuration>,
        key: &str,
    ) -> Result<Duration, ConfigError> {
        let duration = self.bounded(value, key)?;
        self.ensure(
            !duration.is_zero(),
            value.span(),
            format!("{key} must be longer than 0"),
        )?;
        Ok(duration)
    }

    /// Any duration: at most `MAX_DURATION` (deadlines are computed from now; a century would
    /// overflow the clock).
    fn bounded(&self, value: &Spanned<HumanDuration>, key: &str) -> Result<Duration, ConfigError> {
        let duration = value.get_ref().0;
        self.ensure(
            duration <= MAX_DURATION,
            value.span(),
            format!(
                "{key} is longer than {} days",
                MAX_DURATION.as_secs() / 86_400
            ),
        )?;
        Ok(duration)
    }

    /// A connection limit: 1 to a million.
    fn maxconn(&self, value: &Spanned<u32>, key: &str) -> Result<usize, ConfigError> {
        let n = *value.get_ref();
        self.ensure(
            (1..=1_000_000).contains(&n),
            value.span(),
            format!("{key} = {n}: expected 1 to 1000000 connections"),
        )?;
        Ok(n as usize)
    }

    /// A folder named relative to the topology file, which must exist.
    fn folder(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        self.existing(value, key, "folder", Path::is_dir)
    }

    /// A file named relative to the topology file, which must exist.
    fn file(&self, value: &Spanned<String>, key: &str) -> Result<PathBuf, ConfigError> {
        self.existing(value, key, "file", Path::is_file)
    }

    fn existing(
        &self,
        value: &Spanned<String>,
        key: &str,
        kind: &str,
        exists: fn(&Path) -> bool,
    ) -> Result<PathBuf, ConfigError> {
        let base = self.path.parent().unwrap_or(Path::new("."));
        let path = base.join(value.get_ref());
        self.ensure(
            exists(&path),
            value.span(),
            format!(
                "{key}: {} is not a {kind} (relative paths start at the topology file's folder)",
                path.display()
            ),
        )?;
        Ok(path)
    }
}

fn is_dns_label_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_site_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label_name)
}

pub fn validate(file: FileConfig, text: &str, path: &Path) -> Result<Config, ConfigError> {
    let check = Checker { path, text };

    // [site]
    let site_name = file.site.name.get_ref().clone();
    check.ensure(
        is_site_name(&site_name),
        file.site.name.span(),
        format!("site.name {site_name:?} is not a host name: expected lowercase labels of a-z, 0-9 and '-', separated by dots"),
    )?;
    let mut site_aliases = Vec::new();
    for alias in &file.site.aliases {
        check.ensure(
            is_site_name(alias.get_ref()),
            alias.span(),
            format!("site.aliases: {:?} is not a host name", alias.get_ref()),
        )?;
        site_aliases.push(alias.get_ref().clone());
    }

    // [[host]]
    check.ensure(
        !file.hosts.is_empty(),
        0..0,
        "no [[host]] entries: the topology needs at least one lb host and one web host",
    )?;
    let mut hosts = Vec::new();
    let mut names = HashMap::new();
    let mut addresses = HashMap::new();
    for host in &file.hosts {
        let name = host.name.get_ref();
        check.ensure(
            is_dns_label_name(name),
            host.name.span(),
            format!(
                "host name {name:?}: expected lowercase letters, digits and '-' (like \"web-01\")"
            ),
        )?;
        if names.insert(name.clone(), ()).is_some() {
            return Err(check.error(
                host.name.span(),
                format!("duplicate host name {name:?}: every host needs its own name"),
            ));
        }
        let address = *host.address.get_ref();
        check.ensure(!address.is_unspecified(), host.address.span(), format!("host {name}: address {address} is unspecified; give the address the host's roles bind"))?;
        if let Some(other) = addresses.insert(address, name.clone()) {
            return Err(check.error(host.address.span(), format!("host {name}: address {address} is already host {other}'s; every host needs its own address")));
        }
        let mut roles = BTreeSet::new();
        for role in host.roles.get_ref() {
            if !roles.insert(*role.get_ref()) {
                return Err(check.error(
                    role.span(),
                    format!("host {name}: role {} listed twice", role.get_ref()),
                ));
            }
        }
        check.ensure(
            !roles.is_empty(),
            host.roles.span(),
            format!(
                "host {name}: roles is empty; expected some of \"lb\", \"web\", \"app\", \"db\", \"etcd\", \"monitor\""
            ),
        )?;
        check.ensure(
            !roles.contains(&Role::Web) || roles.contains(&Role::App),
            host.roles.span(),
            format!("host {name}: role web needs role app on the same host (the web server proxies dynamic requests to its own host's app)"),
        )?;
        hosts.push(Host {
            name: name.clone(),
            address,
            roles: roles.into_iter().collect(),
        });
    }
    let first_host = file.hosts[0].name.span();
    check.ensure(
        hosts.iter().any(|h| h.has(Role::Lb)),
        first_host.clone(),
        "no host has role \"lb\": nothing would receive the site's traffic",
    )?;
    check.ensure(
        hosts.iter().any(|h| h.has(Role::Web)),
        first_host,
        "no host has role \"web\": the load balancer would have no server",
    )?;

    // Ports: each role's two ports must differ from every other port on a host that runs both.
    let lb_ports = ports(&check, &file.lb.port, &file.lb.admin_port)?;
    let web_ports = ports(&check, &file.web.port, &file.web.admin_port)?;
    let app_ports = ports(&check, &file.app.port, &file.app.admin_port)?;
    let (default_db_port, default_db_admin) = (Spanned::new(0..0, 3306), Spanned::new(0..0, 9103));
    let (db_port, db_admin) = file
        .db
        .as_ref()
        .map_or((&default_db_port, &default_db_admin), |db| {
            (&db.port, &db.admin_port)
        });
    let db_ports = ports(&check, db_port, db_admin)?;
    let etcd_ports = ports(&check, &file.etcd.port, &file.etcd.admin_port)?;
    let monitor_ports = ports(&check, &file.monitor.port, &file.monitor.admin_port)?;
    let m = &file.monitor;
    let all_ports = [
        ("lb.port", &file.lb.port),
        ("lb.admin_port", &file.lb.admin_port),
        ("web.port", &file.web.port),
        ("web.admin_port", &file.web.admin_port),
        ("app.port", &file.app.port),
        ("app.admin_port", &file.app.admin_port),
        ("db.port", db_port),
        ("lb.tls.port", &file.lb.tls.port),
        ("db.admin_port", db_admin),
        ("etcd.port", &file.etcd.port),
        ("etcd.peer_port", &file.etcd.peer_port),
        ("etcd.admin_port", &file.etcd.admin_port),
        ("monitor.port", &m.port),
        ("monitor.admin_port", &m.admin_port),
        ("monitor.prometheus_port", &m.prometheus_port),
        ("monitor.alertmanager_port", &m.alertmanager_port),
        ("monitor.cluster_port", &m.cluster_port),
        // Every host's supervisor serves its metrics here, whatever its roles.
        ("host.port", &m.host_port),
    ];
    let role_of = |key: &str| match &key[..key.find('.').unwrap_or(0)] {
        "lb" => Role::Lb,
        "web" => Role::Web,
        "db" => Role::Db,
        "etcd" => Role::Etcd,
        "monitor" => Role::Monitor,
        _ => Role::App,
    };
    for host in &hosts {
        let mut seen: HashMap<u16, (&str, &Spanned<u16>)> = HashMap::new();
        for (key, port) in all_ports
            .iter()
            .filter(|(key, _)| key.starts_with("host.") || host.has(role_of(key)))
        {
            check.ensure(
                *port.get_ref() != 0,
                port.span(),
                format!("{key} = 0 is not a port: expected 1 to 65535"),
            )?;
            if let Some((other_key, other)) = seen.insert(*port.get_ref(), (key, port)) {
                // Blame the port the file sets explicitly (a default has no line).
                let (blamed, blamed_key, innocent_key) = if port.span() == (0..0) {
                    (other, other_key, *key)
                } else {
                    (*port, *key, other_key)
                };
                return Err(check.error(
                    blamed.span(),
                    format!("{blamed_key} = {} is also {innocent_key} on host {}: the two would bind the same port", port.get_ref(), host.name),
                ));
            }
        }
    }

    let lb = lb_config(&check, &file.lb, &hosts, web_ports.service)?;
    let web = web_config(&check, &file.web)?;
    let app = webstack_app::Config {
        host_name: String::new(),
        site_name: site_name.clone(),
        templates_dir: templates(&check, &file.app.templates)?,
        db: None,
        maxconn: check.maxconn(&file.app.maxconn, "app.maxconn")?,
        access_log: access_log(file.app.access_log, file.app.access_log_format),
        server_timing: file.app.server_timing,
        // The host's socket, filled in by `Config::app`.
        unix_socket: None,
    };
    let pairing = crate::WebAppPairing {
        web_threads: role_threads(&check, &file.web.threads, "web.threads")?,
        app_threads: role_threads(&check, &file.app.threads, "app.threads")?,
        unix_socket: file.app.unix_socket,
    };
    let db = db_settings(&check, file.db.as_ref(), &hosts, &file.hosts)?;
    let etcd = etcd_settings(&check, &file.etcd, &hosts, &file.hosts)?;
    let vip = crate::vip::vip_settings(&check, &site_name, &file.lb, &hosts, &file.hosts)?;
    let netns = crate::vip::netns_settings(&check, &file.netns, &hosts, vip.as_ref())?;
    let monitor = monitor_settings(&check, &file.monitor)?;
    let firewall = firewall_settings(&check, &file.firewall)?;

    Ok(Config {
        path: path.to_path_buf(),
        site_name,
        site_aliases,
        hosts,
        lb,
        lb_ports,
        web,
        web_ports,
        app,
        app_ports,
        pairing,
        db,
        db_ports,
        etcd,
        etcd_ports,
        vip,
        monitor,
        monitor_ports,
        firewall,
        netns,
    })
}

/// `[firewall]`: admin networks as `address/prefix`.
fn firewall_settings(
    check: &Checker,
    firewall: &file::FirewallFile,
) -> Result<crate::FirewallSettings, ConfigError> {
    let mut admin = Vec::new();
    for network in &firewall.admin {
        let text = network.get_ref();
        let parsed = text.split_once('/').and_then(|(address, prefix)| {
            let address: std::net::IpAddr = address.parse().ok()?;
            let prefix: u8 = prefix.parse().ok()?;
            let max = if address.is_ipv4() { 32 } else { 128 };
            (prefix <= max).then_some(())
        });
        check.ensure(
            parsed.is_some(),
            network.span(),
            format!("firewall.admin: {text:?} is not a network: expected address/prefix, like \"10.0.0.0/24\""),
        )?;
        admin.push(text.clone());
    }
    check.ensure(
        *firewall.ssh_port.get_ref() != 0,
        firewall.ssh_port.span(),
        "firewall.ssh_port = 0 is not a port: expected 1 to 65535",
    )?;
    Ok(crate::FirewallSettings {
        admin,
        ssh_port: *firewall.ssh_port.get_ref(),
        apply: firewall.apply,
        remove_at_stop: firewall.remove_at_stop,
        flood_guard: firewall.flood_guard,
    })
}

/// `[monitor]`: a scrape interval Prometheus accepts, a bounded retention, webhook URLs.
fn monitor_settings(
    check: &Checker,
    monitor: &file::MonitorFile,
) -> Result<crate::MonitorSettings, ConfigError> {
    let interval = check.positive(&monitor.scrape_interval, "monitor.scrape_interval")?;
    check.ensure(
        interval >= Duration::from_millis(100) && interval <= Duration::from_secs(15),
        monitor.scrape_interval.span(),
        "monitor.scrape_interval: expected 100ms to 15s (the alert rules' rate windows need at least four samples)",
    )?;
    let retention = check.positive(&monitor.retention, "monitor.retention")?;
    check.ensure(
        retention >= Duration::from_secs(3600),
        monitor.retention.span(),
        "monitor.retention: expected at least 1h (Prometheus keeps samples this long)",
    )?;
    let size = monitor.retention_size.get_ref();
    let digits = size.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    check.ensure(
        digits.parse::<u64>().is_ok_and(|n| n > 0)
            && ["KB", "MB", "GB", "TB", "PB"].contains(&&size[digits.len()..]),
        monitor.retention_size.span(),
        format!("monitor.retention_size {size:?}: expected a size such as \"512MB\" or \"1GB\""),
    )?;
    for hook in &monitor.webhooks {
        let url = hook.get_ref();
        check.ensure(
            (url.starts_with("http://") || url.starts_with("https://"))
                && url.parse::<http::Uri>().is_ok(),
            hook.span(),
            format!("monitor.webhooks: {url:?} is not an http:// or https:// URL"),
        )?;
    }
    Ok(crate::MonitorSettings {
        host_port: *monitor.host_port.get_ref(),
        prometheus_port: *monitor.prometheus_port.get_ref(),
        alertmanager_port: *monitor.alertmanager_port.get_ref(),
        cluster_port: *monitor.cluster_port.get_ref(),
        scrape_interval: interval,
        retention_time: retention,
        retention_size: size.clone(),
        prometheus: PathBuf::from(monitor.prometheus.get_ref()),
        alertmanager: PathBuf::from(monitor.alertmanager.get_ref()),
        webhooks: monitor
            .webhooks
            .iter()
            .map(|h| h.get_ref().clone())
            .collect(),
    })
}

/// `[etcd]` and its members: none (no failover), or an odd number of at least 3, so that
/// losing any one host keeps a quorum.
fn etcd_settings(
    check: &Checker,
    etcd: &file::EtcdFile,
    hosts: &[Host],
    files: &[file::HostFile],
) -> Result<EtcdSettings, ConfigError> {
    let members: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::Etcd)).collect();
    if let Some(last) = members.last() {
        let span = files
            .iter()
            .find(|f| f.name.get_ref() == &last.name)
            .map_or(0..0, |f| f.roles.span());
        let names: Vec<&str> = members.iter().map(|h| h.name.as_str()).collect();
        check.ensure(
            members.len() >= 3 && members.len() % 2 == 1,
            span,
            format!(
                "role etcd is on {} host(s) ({}): expected an odd number of at least 3 on distinct hosts, \
                 so that losing any one keeps a quorum (database failover is refused otherwise); \
                 remove role etcd from every host to run without failover",
                members.len(),
                names.join(", ")
            ),
        )?;
        let program = Path::new(etcd.program.get_ref());
        check.ensure(
            program.is_absolute() && program.is_file(),
            etcd.program.span(),
            format!(
                "etcd.program: {} is not a program file (install Debian's etcd: apt-get install etcd-server)",
                program.display()
            ),
        )?;
    }
    let heartbeat_interval = check.positive(&etcd.heartbeat_interval, "etcd.heartbeat_interval")?;
    let election_timeout = check.positive(&etcd.election_timeout, "etcd.election_timeout")?;
    check.ensure(
        election_timeout >= heartbeat_interval * 5,
        etcd.election_timeout.span(),
        "etcd.election_timeout must be at least 5 times etcd.heartbeat_interval (etcd's own rule)",
    )?;
    let lease_ttl = check.positive(&etcd.lease_ttl, "etcd.lease_ttl")?;
    check.ensure(
        lease_ttl.as_millis() % 1000 == 0 && lease_ttl >= election_timeout * 3 / 2,
        etcd.lease_ttl.span(),
        "etcd.lease_ttl: expected whole seconds, at least 1.5 times etcd.election_timeout (etcd's minimum)",
    )?;
    Ok(EtcdSettings {
        peer_port: *etcd.peer_port.get_ref(),
        program: PathBuf::from(etcd.program.get_ref()),
        heartbeat_interval,
        election_timeout,
        lease_ttl,
    })
}

/// The templates folder: it exists, and the app would load it (every template compiles, the
/// ones every page needs are there).
fn templates(check: &Checker, value: &Spanned<String>) -> Result<PathBuf, ConfigError> {
    let dir = check.folder(value, "app.templates")?;
    if let Err(error) = webstack_app::load_templates(&dir) {
        return Err(check.error(value.span(), format!("app.templates: {error}")));
    }
    Ok(dir)
}

fn db_settings(
    check: &Checker,
    db: Option<&file::DbFile>,
    hosts: &[Host],
    files: &[file::HostFile],
) -> Result<Option<DbSettings>, ConfigError> {
    let db_hosts: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::Db)).collect();
    let Some(db) = db else {
        if let Some(host) = db_hosts.first() {
            let span = files
                .iter()
                .find(|f| f.name.get_ref() == &host.name)
                .map_or(0..0, |f| f.roles.span());
            return Err(check.error(
                span,
                format!(
                    "host {} has role db but there is no [db] section: set at least db.primary",
                    host.name
                ),
            ));
        }
        return Ok(None);
    };
    let primary = db.primary.get_ref();
    check.ensure(
        db_hosts.iter().any(|h| &h.name == primary),
        db.primary.span(),
        format!("db.primary {primary:?} is not a host with role db"),
    )?;
    let database = db.database.get_ref();
    check.ensure(
        !database.is_empty()
            && database.len() <= 64
            && database
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        db.database.span(),
        format!("db.database {database:?}: expected 1 to 64 letters, digits or '_'"),
    )?;
    let pool = db.buffer_pool_size.get_ref();
    let digits = pool.strip_suffix(['K', 'M', 'G']).unwrap_or("");
    check.ensure(
        !digits.is_empty() && digits.len() <= 9 && digits.bytes().all(|b| b.is_ascii_digit()),
        db.buffer_pool_size.span(),
        format!("db.buffer_pool_size {pool:?}: expected a size like \"64M\" or \"1G\""),
    )?;
    for (key, program) in [
        ("db.mariadbd", &db.mariadbd),
        ("db.install_db", &db.install_db),
    ] {
        let path = Path::new(program.get_ref());
        check.ensure(
            path.is_absolute() && path.is_file(),
            program.span(),
            format!(
                "{key}: {} is not a program file (install Debian's MariaDB: apt-get install mariadb-server)",
                path.display()
            ),
        )?;
    }
    let mut ids = HashMap::new();
    for host in &db_hosts {
        if let Some(other) = ids.insert(crate::server_id(&host.name), &host.name) {
            return Err(check.error(
                db.primary.span(),
                format!("db hosts {other} and {} would get the same MariaDB server_id (derived from the name); rename one", host.name),
            ));
        }
    }
    Ok(Some(DbSettings {
        primary: primary.clone(),
        database: database.clone(),
        max_replica_lag: db.max_replica_lag,
        poll_interval: check.positive(&db.poll_interval, "db.poll_interval")?,
        semi_sync_timeout: check.positive(&db.semi_sync_timeout, "db.semi_sync_timeout")?,
        query_timeout: check.positive(&db.query_timeout, "db.query_timeout")?,
        write_hold: check.bounded(&db.write_hold, "db.write_hold")?,
        buffer_pool_size: pool.clone(),
        mariadbd: PathBuf::from(db.mariadbd.get_ref()),
        install_db: PathBuf::from(db.install_db.get_ref()),
    }))
}

fn ports(
    check: &Checker,
    service: &Spanned<u16>,
    admin: &Spanned<u16>,
) -> Result<Ports, ConfigError> {
    for port in [service, admin] {
        check.ensure(
            *port.get_ref() != 0,
            port.span(),
            "port 0 is not a port: expected 1 to 65535",
        )?;
    }
    check.ensure(
        service.get_ref() != admin.get_ref(),
        admin.span(),
        "admin_port must differ from port",
    )?;
    Ok(Ports {
        service: *service.get_ref(),
        admin: *admin.get_ref(),
    })
}

fn lb_config(
    check: &Checker,
    lb: &file::LbFile,
    hosts: &[Host],
    web_port: u16,
) -> Result<webstack_lb::Config, ConfigError> {
    let health = &lb.health;
    let path = health.path.get_ref();
    check.ensure(
        path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok(),
        health.path.span(),
        format!(
            "lb.health.path {path:?}: expected a request path starting with '/', without spaces or control characters (percent-encode them)"
        ),
    )?;
    for (key, value) in [
        ("lb.health.rise", &health.rise),
        ("lb.health.fall", &health.fall),
    ] {
        check.ensure(
            (1..=100).contains(value.get_ref()),
            value.span(),
            format!(
                "{key} = {}: expected 1 to 100 consecutive checks",
                value.get_ref()
            ),
        )?;
    }
    check.ensure(
        *lb.threads.get_ref() <= 256,
        lb.threads.span(),
        format!(
            "lb.threads = {}: expected 0 (one per core) to 256",
            lb.threads.get_ref()
        ),
    )?;
    check.ensure(
        *lb.retries.get_ref() <= 10,
        lb.retries.span(),
        format!("lb.retries = {}: expected 0 to 10", lb.retries.get_ref()),
    )?;

    let mut overrides: HashMap<&str, &file::ServerFile> = HashMap::new();
    for server in &lb.server {
        let name = server.host.get_ref().as_str();
        let target = hosts.iter().find(|h| h.name == name);
        check.ensure(
            target.is_some_and(|h| h.has(Role::Web)),
            server.host.span(),
            format!("lb.server: {name:?} is not a host with role web"),
        )?;
        check.ensure(
            (1..=256).contains(server.weight.get_ref()),
            server.weight.span(),
            format!(
                "lb.server {name}: weight {} out of range: expected 1 to 256",
                server.weight.get_ref()
            ),
        )?;
        if let Some(maxconn) = &server.maxconn {
            check.ensure(
                *maxconn.get_ref() <= 1_000_000,
                maxconn.span(),
                format!(
                    "lb.server {name}: maxconn {} out of range: expected 0 (no limit) to 1000000",
                    maxconn.get_ref()
                ),
            )?;
        }
        if overrides.insert(name, server).is_some() {
            return Err(check.error(
                server.host.span(),
                format!("lb.server: {name:?} listed twice"),
            ));
        }
    }
    let servers: Vec<_> = hosts
        .iter()
        .filter(|h| h.has(Role::Web))
        .map(|h| {
            let over = overrides.get(h.name.as_str());
            webstack_lb::ServerConfig {
                name: h.name.clone(),
                addr: std::net::SocketAddr::new(h.address, web_port),
                weight: over.map_or(1, |o| *o.weight.get_ref()),
                backup: over.is_some_and(|o| o.backup),
                maxconn: over
                    .and_then(|o| o.maxconn.as_ref())
                    .map_or(*lb.server_maxconn.get_ref(), |m| *m.get_ref()),
            }
        })
        .collect();
    let server_maxconn = *lb.server_maxconn.get_ref();
    check.ensure(
        server_maxconn <= 1_000_000,
        lb.server_maxconn.span(),
        format!("lb.server_maxconn = {server_maxconn}: expected 0 (no limit) to 1000000"),
    )?;
    let backup_span = lb.server.first().map_or(0..0, |s| s.host.span());
    check.ensure(
        servers.iter().any(|s| !s.backup),
        backup_span,
        "every lb server is a backup: at least one must take regular traffic",
    )?;

    Ok(webstack_lb::Config {
        algorithm: match lb.algorithm {
            file::Algorithm::RoundRobin => webstack_lb::Algorithm::RoundRobin,
            file::Algorithm::LeastConn => webstack_lb::Algorithm::LeastConn,
            file::Algorithm::P2c => webstack_lb::Algorithm::P2c,
        },
        servers,
        health: webstack_lb::HealthConfig {
            path: health.path.get_ref().clone(),
            interval: check.positive(&health.interval, "lb.health.interval")?,
            timeout: check.positive(&health.timeout, "lb.health.timeout")?,
            rise: *health.rise.get_ref(),
            fall: *health.fall.get_ref(),
            eject_after: *health.eject_after.get_ref(),
            max_ejected_percent: {
                let percent = *health.max_ejected_percent.get_ref();
                check.ensure(
                    percent <= 100,
                    health.max_ejected_percent.span(),
                    format!("lb.health.max_ejected_percent = {percent}: expected 0 to 100"),
                )?;
                percent
            },
        },
        timeouts: webstack_lb::Timeouts {
            client_header: check
                .positive(&lb.timeouts.client_header, "lb.timeouts.client_header")?,
            connect: check.positive(&lb.timeouts.connect, "lb.timeouts.connect")?,
            server: check.positive(&lb.timeouts.server, "lb.timeouts.server")?,
            tunnel: check.positive(&lb.timeouts.tunnel, "lb.timeouts.tunnel")?,
        },
        retries: *lb.retries.get_ref(),
        maxconn: check.maxconn(&lb.maxconn, "lb.maxconn")?,
        slowstart: check.bounded(&lb.slowstart, "lb.slowstart")?,
        queue_timeout: check.positive(&lb.queue_timeout, "lb.queue_timeout")?,
        limits: limits_settings(check, &lb.limits)?,
        access_log: access_log(lb.access_log, lb.access_log_format),
        server_timing: lb.server_timing,
        tls: tls_settings(check, &lb.tls)?,
        vip: None,
        threads: threads(&lb.threads),
    })
}

/// `[lb.limits]`: bounded numbers, a size, networks.
fn limits_settings(
    check: &Checker,
    limits: &file::LimitsFile,
) -> Result<webstack_lb::Limits, ConfigError> {
    let rate = *limits.rate.get_ref();
    check.ensure(
        rate <= 1_000_000,
        limits.rate.span(),
        format!("lb.limits.rate = {rate}: expected 0 (off) to 1000000 requests per second"),
    )?;
    let burst = *limits.burst.get_ref();
    check.ensure(
        rate == 0 || (1..=1_000_000).contains(&burst),
        limits.burst.span(),
        format!("lb.limits.burst = {burst}: expected 1 to 1000000 requests (a client may send so many at once)"),
    )?;
    let max_body = limits.max_body.get_ref();
    let max_body_bytes = parse_size(max_body).filter(|&n| n > 0);
    check.ensure(
        max_body_bytes.is_some(),
        limits.max_body.span(),
        format!("lb.limits.max_body {max_body:?}: expected a size such as \"10MiB\", \"512KB\" or \"1GiB\""),
    )?;
    let connections = *limits.connections_per_client.get_ref();
    check.ensure(
        connections <= 1_000_000,
        limits.connections_per_client.span(),
        format!("lb.limits.connections_per_client = {connections}: expected 0 (off) to 1000000"),
    )?;
    let min_body_rate = *limits.min_body_rate.get_ref();
    check.ensure(
        min_body_rate <= 1_000_000_000,
        limits.min_body_rate.span(),
        format!("lb.limits.min_body_rate = {min_body_rate}: expected 0 (off) to 1000000000 bytes per second"),
    )?;
    let body_grace = check.bounded(&limits.body_grace, "lb.limits.body_grace")?;
    check.ensure(
        min_body_rate == 0 || body_grace >= Duration::from_secs(1),
        limits.body_grace.span(),
        "lb.limits.body_grace: expected at least 1s while min_body_rate is on (a client needs time to start its body)",
    )?;
    Ok(webstack_lb::Limits {
        rate,
        burst,
        connections_per_client: connections,
        min_body_rate,
        body_grace,
        max_body: max_body_bytes.unwrap_or(u64::MAX),
        trusted_proxies: networks(check, &limits.trusted_proxies, "lb.limits.trusted_proxies")?,
        proxy_protocol: networks(check, &limits.proxy_protocol, "lb.limits.proxy_protocol")?,
    })
}

/// A list of proxies' networks: `address/prefix` or an address, never everyone (`/0` would let
/// any client name its own address).
fn networks(
    check: &Checker,
    list: &[Spanned<String>],
    key: &str,
) -> Result<Vec<webstack_lb::Network>, ConfigError> {
    let mut out = Vec::new();
    for network in list {
        let text = network.get_ref();
        let parsed = webstack_lb::Network::parse(text);
        check.ensure(
            parsed.is_some(),
            network.span(),
            format!("{key}: {text:?} is not a network: expected address/prefix, like \"10.0.0.0/8\", or an address"),
        )?;
        check.ensure(
            parsed.is_some_and(|n| n.prefix > 0),
            network.span(),
            format!("{key}: {text:?} is every address: any client could name itself; list the proxies' own networks"),
        )?;
        out.extend(parsed);
    }
    Ok(out)
}

/// `512`, `64KB`, `10MB`, `1GB` (powers of 1000) or `64KiB`, `10MiB`, `1GiB` (powers of 1024);
/// None when it is not one.
fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000 * 1000,
        "GB" => 1000 * 1000 * 1000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(unit)
}

/// TLS settings with the certificate files as configured; `Config::lb` adds ACME's and the local
/// CA's, which live in the state dir.
fn tls_settings(
    check: &Checker,
    tls: &file::TlsFile,
) -> Result<Option<webstack_lb::TlsSettings>, ConfigError> {
    if !tls.enabled {
        return Ok(None);
    }
    check.ensure(
        *tls.port.get_ref() != 0,
        tls.port.span(),
        "port 0 is not a port: expected 1 to 65535",
    )?;
    let mut certificates = Vec::new();
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => certificates.push(certificate_files(check, cert, key)?),
        (None, None) => {}
        (Some(one), None) | (None, Some(one)) => {
            return Err(check.error(
                one.span(),
                "lb.tls.cert and lb.tls.key go together: set both, or neither for a local CA",
            ));
        }
    }
    for entry in &tls.certificates {
        certificates.push(certificate_files(check, &entry.cert, &entry.key)?);
    }
    let hsts = check.bounded(&tls.hsts_max_age, "lb.tls.hsts_max_age")?;
    Ok(Some(webstack_lb::TlsSettings {
        certificates,
        acme: tls
            .acme
            .as_ref()
            .map(|a| acme_settings(check, a))
            .transpose()?,
        handshake_timeout: check.positive(&tls.handshake_timeout, "lb.tls.handshake_timeout")?,
        redirect_http: tls.redirect_http,
        hsts_max_age: (!hsts.is_zero()).then_some(hsts),
        https_port: *tls.port.get_ref(),
    }))
}

/// A configured chain and key: both files exist, parse, and go together (the lb refuses to
/// start otherwise, so `check` says it first).
fn certificate_files(
    check: &Checker,
    cert: &Spanned<String>,
    key: &Spanned<String>,
) -> Result<webstack_lb::CertificateSource, ConfigError> {
    let source = webstack_lb::CertificateSource {
        cert: check.file(cert, "lb.tls.cert")?,
        key: check.file(key, "lb.tls.key")?,
        origin: webstack_lb::CertificateOrigin::File,
    };
    if let Err(error) = webstack_lb::tls::check_certificate(&source) {
        let span = match &error {
            webstack_lb::tls::TlsError::BadKey { .. } => key.span(),
            _ => cert.span(),
        };
        return Err(check.error(span, format!("lb.tls: {error}")));
    }
    Ok(source)
}

fn acme_settings(
    check: &Checker,
    acme: &file::AcmeFile,
) -> Result<webstack_lb::AcmeSettings, ConfigError> {
    let directory = acme.directory.get_ref();
    check.ensure(
        directory.starts_with("https://") && directory.parse::<http::Uri>().is_ok(),
        acme.directory.span(),
        "lb.tls.acme.directory: expected the CA's directory URL, https://...",
    )?;
    check.ensure(
        *acme.agree_terms.get_ref(),
        acme.agree_terms.span(),
        "lb.tls.acme.agree_terms must be true: the CA issues nothing without agreement to its terms of service",
    )?;
    let mut contact = Vec::new();
    for address in &acme.contact {
        let text = address.get_ref().trim();
        check.ensure(
            text.contains('@') || text.contains(':'),
            address.span(),
            "lb.tls.acme.contact: expected an e-mail address",
        )?;
        contact.push(if text.contains(':') {
            text.to_string()
        } else {
            format!("mailto:{text}")
        });
    }
    let ca_cert = acme
        .ca_cert
        .as_ref()
        .map(|value| {
            let path = check.file(value, "lb.tls.acme.ca_cert")?;
            let pem = std::fs::read(&path).unwrap_or_default();
            check.ensure(
                webstack_lb::tls::acme::parses_as_roots(&pem),
                value.span(),
                format!(
                    "lb.tls.acme.ca_cert: {} holds no PEM certificate",
                    path.display()
                ),
            )?;
            Ok(path)
        })
        .transpose()?;
    Ok(webstack_lb::AcmeSettings {
        directory: directory.clone(),
        contact,
        ca_cert,
        names: Vec::new(),
        dir: PathBuf::new(),
        renew_before: check.positive(&acme.renew_before, "lb.tls.acme.renew_before")?,
    })
}

/// A `threads` setting: 0 means one per CPU core.
fn threads(setting: &toml::Spanned<u32>) -> usize {
    match *setting.get_ref() {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// An access log's settings, its path filled in per host (`Config::lb`, `web`, `app`).
fn access_log(
    on: bool,
    format: webstack_common::access_log::Format,
) -> Option<webstack_common::access_log::Settings> {
    on.then(|| webstack_common::access_log::Settings {
        path: PathBuf::new(),
        format,
    })
}

fn web_config(check: &Checker, web: &file::WebFile) -> Result<webstack_web::Config, ConfigError> {
    let cache_control = web.cache_control.get_ref();
    check.ensure(
        http::HeaderValue::from_str(cache_control).is_ok(),
        web.cache_control.span(),
        "web.cache_control is not a valid header value",
    )?;
    let file_check_interval = web.file_check_interval.get_ref().0;
    check.ensure(
        file_check_interval <= Duration::from_secs(3600),
        web.file_check_interval.span(),
        "web.file_check_interval: expected 0s (a check at every request) to 1h",
    )?;
    Ok(webstack_web::Config {
        host_name: String::new(),
        static_root: check.folder(&web.static_root, "web.static_root")?,
        cache_control: cache_control.clone(),
        file_check_interval,
        expose_server_name: web.expose_server_name,
        app_addr: ([127, 0, 0, 1], 0).into(),
        app_socket: None,
        app_connect_timeout: check
            .positive(&web.timeouts.app_connect, "web.timeouts.app_connect")?,
        app_response_timeout: check
            .positive(&web.timeouts.app_response, "web.timeouts.app_response")?,
        client_header_timeout: check
            .positive(&web.timeouts.client_header, "web.timeouts.client_header")?,
        access_log: access_log(web.access_log, web.access_log_format),
        server_timing: web.server_timing,
        maxconn: check.maxconn(&web.maxconn, "web.maxconn")?,
    })
}

/// A web or app `threads` setting, 0 (the host's share of its cores, see
/// `Config::worker_threads`) to 256.
fn role_threads(
    check: &Checker,
    setting: &toml::Spanned<u32>,
    key: &str,
) -> Result<usize, ConfigError> {
    check.ensure(
        *setting.get_ref() <= 256,
        setting.span(),
        format!(
            "{key} = {}: expected 0 (the host's cores, shared by its web server and app) to 256",
            setting.get_ref()
        ),
    )?;
    Ok(*setting.get_ref() as usize)
}
