//! What one client may do, and who the client is: the per-client table (request rate and open
//! connections), the PROXY protocol from the peers configured to send it, `X-Forwarded-For`
//! from trusted proxies, and the request body's floor rate and size bound. The settings are swapped whole on SIGHUP (`ClientTable::reload`).

mod body;
pub mod proxy_protocol;
mod table;

pub use body::{Capped, LimitError, Paced};
pub use table::{ClientTable, ConnectionGuard};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::Limits;

/// A new connection, before anything is read from it for HTTP or TLS. From a peer in
/// `proxy_protocol`, a PROXY header must come first and names the client; then the client's
/// connection count is checked, except for a trusted proxy's own connections (one proxy carries
/// many clients; its requests are still limited per client through `X-Forwarded-For`). None:
/// refused; a client over its share is reset (it gets no answer to wait for).
pub async fn admit(
    table: &Arc<ClientTable>,
    mut stream: TcpStream,
    peer: SocketAddr,
    header_timeout: Duration,
) -> Option<(TcpStream, SocketAddr, Option<ConnectionGuard>)> {
    let limits = table.limits();
    let mut client = peer;
    if limits.proxy_protocol.iter().any(|n| n.contains(peer.ip())) {
        drop(limits);
        match proxy_protocol::read_header(&mut stream, header_timeout).await {
            Ok(Some(source)) => client = source,
            // LOCAL or UNKNOWN: the proxy's own connection (a health check).
            Ok(None) => {}
            Err(proxy_protocol::HeaderError::Idle) => {
                tracing::debug!(proxy = %peer, "no PROXY header in time; closed");
                return None;
            }
            Err(error) => {
                tracing::warn!(proxy = %peer, %error, "refused: no valid PROXY header from a PROXY protocol peer");
                table.metrics().limited("proxy_header").inc();
                return None;
            }
        }
    } else if limits.trusts(peer.ip()) {
        return Some((stream, client, None));
    }
    match table.connect(client.ip()) {
        Ok(guard) => Some((stream, client, guard)),
        Err(table::OverShare) => {
            tracing::debug!(%client, "connection refused: the client holds its share");
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            None
        }
    }
}

impl Limits {
    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.iter().any(|n| n.contains(ip))
    }

    /// The client of a request that came from `peer` with this `X-Forwarded-For` list (all its
    /// lines joined by commas): `peer` itself unless it is trusted; else, from the right, the
    /// first address that is not a trusted proxy (nginx's `real_ip_recursive`). An entry that
    /// is not an address stops the walk at the last trusted hop: only trusted proxies wrote
    /// what lies to its right.
    pub fn client_behind(&self, peer: IpAddr, forwarded_for: &[u8]) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for entry in forwarded_for.rsplit(|&b| b == b',') {
            let Some(ip) = std::str::from_utf8(entry.trim_ascii())
                .ok()
                .and_then(parse_forwarded_address)
            else {
                return client;
            };
            client = ip;
            if !self.trusts(ip) {
                return ip;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, maybe with a port (`192.0.2.1:4711`, `[2001:db8::1]:80`).
fn parse_forwarded_address(entry: &str) -> Option<IpAddr> {
    if let Ok(ip) = entry.parse() {
        return Some(ip);
    }
    entry
        .parse::<std::net::SocketAddr>()
        .ok()
        .map(|addr| addr.ip())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Network;

    fn limits(trusted: &[&str]) -> Limits {
        Limits {
            trusted_proxies: trusted.iter().map(|t| Network::parse(t).unwrap()).collect(),
            ..Limits::default()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let limits = limits(&["10.0.0.0/8"]);
        assert_eq!(
            limits.client_behind(ip("192.0.2.9"), b"203.0.113.1"),
            ip("192.0.2.9")
        );
        assert_eq!(limits.client_behind(ip("192.0.2.9"), b""), ip("192.0.2.9"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let limits = limits(&["10.0.0.0/8", "2001:db8::/32"]);
        // The client put a forged address first; the proxies appended what they saw.
        let list = b"198.51.100.66, 203.0.113.7, 10.1.2.3";
        assert_eq!(
            limits.client_behind(ip("10.0.0.1"), list),
            ip("203.0.113.7")
        );
        assert_eq!(
            limits.client_behind(ip("10.0.0.1"), b"[2001:db9::1]:443, 2001:db8::5"),
            ip("2001:db9::1")
        );
        // Every hop trusted: the leftmost is as far as we can see.
        assert_eq!(
            limits.client_behind(ip("10.0.0.1"), b"10.9.9.9"),
            ip("10.9.9.9")
        );
        // No list: the trusted peer itself.
        assert_eq!(limits.client_behind(ip("10.0.0.1"), b""), ip("10.0.0.1"));
        // Garbage stops the walk at the last address a trusted proxy wrote.
        assert_eq!(
            limits.client_behind(ip("10.0.0.1"), b"203.0.113.7, unknown, 10.2.2.2"),
            ip("10.2.2.2")
        );
    }

    #[test]
    fn networks_match_by_prefix_and_mapped_addresses_count_as_ipv4() {
        let net = Network::parse("192.168.0.0/16").unwrap();
        assert!(net.contains(ip("192.168.200.1")));
        assert!(!net.contains(ip("192.169.0.1")));
        assert!(net.contains(ip("::ffff:192.168.1.1")));
        assert!(Network::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        assert!(Network::parse("::/0").unwrap().contains(ip("2001:db8::1")));
        assert_eq!(Network::parse("10.0.0.1").unwrap().prefix, 32);
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("10.0.0/8").is_none());
        assert!(Network::parse("fe80::/129").is_none());
    }
}
