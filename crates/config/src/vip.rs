//! The site's address shared by several lb hosts (`lb.vip`, `[lb.vrrp]`) and the settings of
//! namespace mode (`[netns]`): validated here, resolved for one lb host in `Config::lb`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::validate::Checker;
use crate::{Config, ConfigError, Host, Role, file};

/// `lb.vip` and `[lb.vrrp]`, validated.
#[derive(Clone, Debug)]
pub(crate) struct VipSettings {
    pub address: IpAddr,
    pub advert_interval: Duration,
    pub router_id: u8,
    pub interface: Option<String>,
    pub program: PathBuf,
}

/// `[netns]`, validated: where `webstack up --netns` puts the hosts.
#[derive(Clone, Debug)]
pub struct NetnsSettings {
    /// Prefix of every namespace's name.
    pub prefix: String,
    /// The hosts' private IPv4 network and its prefix length; None when not configured.
    pub network: Option<(Ipv4Addr, u8)>,
    /// The client namespace's address.
    pub client: Option<IpAddr>,
}

impl NetnsSettings {
    /// The namespace of a host (or of `switch`, `client`).
    pub fn namespace(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

fn roles_span(files: &[file::HostFile], host: &str) -> std::ops::Range<usize> {
    files
        .iter()
        .find(|f| f.name.get_ref() == host)
        .map_or(0..0, |f| f.roles.span())
}

/// Several lb hosts need a VIP; a VIP is an IPv4 address of its own, on loopback exactly when
/// the lb hosts are (one machine: the stand-in; machines or namespaces: VRRP).
pub(crate) fn vip_settings(
    check: &Checker,
    site_name: &str,
    lb: &file::LbFile,
    hosts: &[Host],
    files: &[file::HostFile],
) -> Result<Option<VipSettings>, ConfigError> {
    let lbs: Vec<&Host> = hosts.iter().filter(|h| h.has(Role::Lb)).collect();
    let Some(vip) = &lb.vip else {
        if lbs.len() > 1 {
            let names: Vec<&str> = lbs.iter().map(|h| h.name.as_str()).collect();
            return Err(check.error(
                roles_span(files, &lbs[1].name),
                format!(
                    "role lb is on {} hosts ({}): set lb.vip, the site's address they share (DNS points there)",
                    lbs.len(),
                    names.join(", ")
                ),
            ));
        }
        return Ok(None);
    };
    let address = *vip.get_ref();
    let span = vip.span();
    let IpAddr::V4(v4) = address else {
        return Err(check.error(span, format!("lb.vip {address}: expected an IPv4 address")));
    };
    check.ensure(
        !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        span.clone(),
        format!("lb.vip {address}: expected a unicast address"),
    )?;
    if let Some(host) = hosts.iter().find(|h| h.address == address) {
        return Err(check.error(
            span,
            format!(
                "lb.vip {address} is host {}'s address: the site's address must be its own, it moves between the lb hosts",
                host.name
            ),
        ));
    }
    for host in &lbs {
        check.ensure(
            host.address.is_loopback() == address.is_loopback(),
            span.clone(),
            format!(
                "lb.vip {address} and lb host {} ({}): expected both on loopback (one machine, the stand-in) or neither (VRRP between machines)",
                host.name, host.address
            ),
        )?;
    }
    let advert_interval = check.positive(&lb.vrrp.advert_interval, "lb.vrrp.advert_interval")?;
    check.ensure(
        advert_interval >= Duration::from_millis(10)
            && advert_interval <= Duration::from_millis(40_950)
            && advert_interval.as_millis() % 10 == 0,
        lb.vrrp.advert_interval.span(),
        "lb.vrrp.advert_interval: expected 10ms to 40.95s in steps of 10ms (VRRPv3 counts centiseconds)",
    )?;
    let router_id = match *lb.vrrp.router_id.get_ref() {
        0 => derived_router_id(site_name, address),
        id @ 1..=255 => id as u8,
        id => {
            return Err(check.error(
                lb.vrrp.router_id.span(),
                format!(
                    "lb.vrrp.router_id = {id}: expected 1 to 255 (or 0 to derive it from the site)"
                ),
            ));
        }
    };
    let interface = match &lb.vrrp.interface {
        Some(name) => {
            let text = name.get_ref();
            check.ensure(
                !text.is_empty()
                    && text.len() <= 15
                    && text
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b)),
                name.span(),
                format!("lb.vrrp.interface {text:?}: expected an interface name (1 to 15 letters, digits, '-', '_', '.')"),
            )?;
            Some(text.clone())
        }
        None => None,
    };
    let program = PathBuf::from(lb.vrrp.program.get_ref());
    if !address.is_loopback() {
        check.ensure(
            program.is_absolute() && program.is_file(),
            lb.vrrp.program.span(),
            format!(
                "lb.vrrp.program: {} is not a program file: a non-loopback lb.vip moves by VRRP (apt-get install keepalived)",
                program.display()
            ),
        )?;
    }
    Ok(Some(VipSettings {
        address,
        advert_interval,
        router_id,
        interface,
        program,
    }))
}

/// A virtual router id that belongs to the site and its address: two sites on one network
/// segment do not collide by default (one in 255 still may: then set `lb.vrrp.router_id`).
fn derived_router_id(site_name: &str, vip: IpAddr) -> u8 {
    let id = crate::server_id(&format!("{site_name}/{vip}"));
    (id % 255) as u8 + 1
}

/// `"10.77.0.0/24"` as an address and a prefix length.
fn parse_network(text: &str) -> Option<(Ipv4Addr, u8)> {
    let (address, length) = text.split_once('/')?;
    let address: Ipv4Addr = address.parse().ok()?;
    let length: u8 = length.parse().ok()?;
    (length <= 32).then_some((address, length))
}

/// True when `address` is in `network` and is neither its network nor its broadcast address.
fn usable_in(address: IpAddr, (network, length): (Ipv4Addr, u8)) -> bool {
    let IpAddr::V4(v4) = address else {
        return false;
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(length)).unwrap_or(0);
    let (a, n) = (u32::from(v4), u32::from(network));
    a & mask == n & mask && a & !mask != 0 && a & !mask != !mask
}

pub(crate) fn netns_settings(
    check: &Checker,
    netns: &file::NetnsFile,
    hosts: &[Host],
    vip: Option<&VipSettings>,
) -> Result<NetnsSettings, ConfigError> {
    let prefix = netns.prefix.get_ref();
    check.ensure(
        !prefix.is_empty()
            && prefix.len() <= 8
            && prefix
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
        netns.prefix.span(),
        format!("netns.prefix {prefix:?}: expected 1 to 8 lowercase letters, digits or '-'"),
    )?;
    let network = match &netns.network {
        None => None,
        Some(text) => {
            let Some((address, length)) = parse_network(text.get_ref())
                .filter(|(a, l)| (8..=30).contains(l) && a.is_private())
            else {
                return Err(check.error(
                    text.span(),
                    format!(
                        "netns.network {:?}: expected a private IPv4 network from /8 to /30, like \"10.77.0.0/24\"",
                        text.get_ref()
                    ),
                ));
            };
            Some((address, length))
        }
    };
    let client = netns.client.as_ref().map(|c| *c.get_ref());
    if let Some(network) = network {
        let client_span = netns.client.as_ref().map_or(0..0, Spanned::span);
        let Some(client) = client else {
            return Err(check.error(
                netns.network.as_ref().map_or(0..0, Spanned::span),
                "netns.client is not set: namespace mode needs the client namespace's address in netns.network",
            ));
        };
        let text = netns.network.as_ref().map_or("", |n| n.get_ref().as_str());
        check.ensure(
            usable_in(client, network),
            client_span.clone(),
            format!("netns.client {client}: expected an address of netns.network {text}"),
        )?;
        if let Some(host) = hosts.iter().find(|h| h.address == client) {
            return Err(check.error(
                client_span,
                format!("netns.client {client} is host {}'s address", host.name),
            ));
        }
        if vip.is_some_and(|v| v.address == client) {
            return Err(check.error(client_span, format!("netns.client {client} is lb.vip")));
        }
        for host in hosts {
            check.ensure(
                host.name != "switch" && host.name != "client",
                netns.network.as_ref().map_or(0..0, Spanned::span),
                format!(
                    "host name {:?} is taken in namespace mode (the bridge's and the clients' namespaces): rename the host",
                    host.name
                ),
            )?;
            check.ensure(
                usable_in(host.address, network),
                netns.network.as_ref().map_or(0..0, Spanned::span),
                format!(
                    "host {} ({}) is outside netns.network {text}: in namespace mode every host is on it",
                    host.name, host.address
                ),
            )?;
        }
        if let Some(vip) = vip {
            check.ensure(
                usable_in(vip.address, network),
                netns.network.as_ref().map_or(0..0, Spanned::span),
                format!("lb.vip {} is outside netns.network {text}", vip.address),
            )?;
        }
    }
    Ok(NetnsSettings {
        prefix: prefix.clone(),
        network,
        client,
    })
}

impl Config {
    /// The site's address, when several lb hosts share one.
    pub fn vip(&self) -> Option<IpAddr> {
        self.vip.as_ref().map(|v| v.address)
    }

    /// Where clients reach the site over plain HTTP: the VIP, or the (only) lb host.
    pub fn site_addr(&self) -> Option<std::net::SocketAddr> {
        let ip = self
            .vip()
            .or_else(|| self.hosts_with(Role::Lb).next().map(|h| h.address))?;
        Some(std::net::SocketAddr::new(ip, self.ports(Role::Lb).service))
    }

    /// True when the VIP moves by VRRP (keepalived), false on loopback (the stand-in).
    pub fn uses_vrrp(&self) -> bool {
        self.vip().is_some_and(|a| !a.is_loopback())
    }

    /// How `host`'s lb takes part in serving the VIP.
    pub(crate) fn vip_config(
        &self,
        host: &Host,
        state_dir: &Path,
    ) -> Option<webstack_lb::VipConfig> {
        let vip = self.vip.as_ref()?;
        let peers = self.hosts_with(Role::Lb).filter(|h| h.name != host.name);
        let run_dir = state_dir.join("run");
        let mode = if vip.address.is_loopback() {
            webstack_lb::VipMode::StandIn {
                run_dir,
                peers: peers.map(|h| h.name.clone()).collect(),
            }
        } else {
            webstack_lb::VipMode::Vrrp(webstack_lb::VrrpConfig {
                program: vip.program.clone(),
                advert_interval: vip.advert_interval,
                router_id: vip.router_id,
                interface: vip.interface.clone(),
                address: host.address,
                peers: peers.map(|h| h.address).collect(),
                log_file: state_dir
                    .join("logs")
                    .join(format!("{}-keepalived.log", host.name)),
                run_dir,
            })
        };
        Some(webstack_lb::VipConfig {
            address: vip.address,
            host: host.name.clone(),
            mode,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_hold_their_usable_addresses() {
        let net = parse_network("10.77.0.0/24").unwrap();
        assert!(usable_in("10.77.0.10".parse().unwrap(), net));
        assert!(!usable_in("10.77.0.0".parse().unwrap(), net));
        assert!(!usable_in("10.77.0.255".parse().unwrap(), net));
        assert!(!usable_in("10.77.1.1".parse().unwrap(), net));
        assert!(parse_network("10.77.0.0").is_none());
        assert!(parse_network("10.77.0.0/33").is_none());
    }

    #[test]
    fn router_ids_stay_in_range() {
        for n in 0..200u8 {
            let id = derived_router_id("www.foobar.com", IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)));
            assert!(id >= 1);
        }
    }
}
