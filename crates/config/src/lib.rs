//! The topology file (`webstack.toml`): parse it into `FileConfig`, validate every invariant with
//! the file, line and what was expected, and hand each role its own validated `Config`.

mod error;
mod file;
mod validate;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use error::ConfigError;

/// A role a host can run. The start order of a host's roles follows the declaration order here:
/// a server starts before whatever sends it traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    App,
    Web,
    Lb,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::App, Role::Web, Role::Lb];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Web => "web",
            Role::Lb => "lb",
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
}

impl Config {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
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

    /// The load balancer's settings (the same on every lb host).
    pub fn lb(&self) -> webstack_lb::Config {
        self.lb.clone()
    }

    /// The web server's settings on `host`: it proxies to the app of the same host.
    pub fn web(&self, host: &Host) -> webstack_web::Config {
        webstack_web::Config {
            host_name: host.name.clone(),
            app_addr: self.service_addr(host, Role::App),
            ..self.web.clone()
        }
    }

    /// The application server's settings on `host`.
    pub fn app(&self, host: &Host) -> webstack_app::Config {
        webstack_app::Config {
            host_name: host.name.clone(),
            ..self.app.clone()
        }
    }
}
