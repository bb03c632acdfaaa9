//! The lb's listening sockets: one socket per address and port, shared by every worker (each
//! registers a duplicate of it with its own runtime). No `SO_REUSEPORT`: with it, any process of
//! the same user could join the site's port and receive a share of its connections.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// The listen backlog: connections wait here while every worker is busy (and, for the VIP on
/// loopback, while the standby takes over).
const BACKLOG: i32 = 4096;

/// One listening socket of the lb.
pub struct Listener {
    pub socket: std::net::TcpListener,
    /// Serves HTTPS (else plain HTTP).
    pub tls: bool,
    /// The VIP's socket on loopback, shared with the other lbs: accept on it only while this lb
    /// holds the VIP.
    pub gated: bool,
}

/// Binds `addr`. `freebind` allows an address not (yet) on any interface: a VIP that
/// keepalived adds when this host becomes master.
pub fn bind(addr: SocketAddr, freebind: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Only for sockets in TIME_WAIT: Linux never lets two sockets listen on one address this way.
    socket.set_reuse_address(true)?;
    if freebind {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

/// `bind` with the address and what it is for in the error.
pub fn bind_for(addr: SocketAddr, freebind: bool, what: &str) -> io::Result<std::net::TcpListener> {
    bind(addr, freebind).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} ({what}): {error}"),
        )
    })
}
