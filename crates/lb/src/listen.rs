//! The lb's listening sockets: one socket per address and port, shared by every worker (each
//! registers a duplicate of it with its own runtime). No `SO_REUSEPORT`: with it, any process of
//! the same user could join the site's port and receive a share of its connections. The VIP's
//! sockets (VRRP) are transparent, stop taking new connections while the VIP is handed over,
//! and have their queue reset when the workers stop.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, SockFilter, SockRef, Socket, Type};

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

/// Binds `addr`. `vip`: an address not (yet) on any interface, which keepalived adds when this
/// host becomes master (`IP_FREEBIND`), and whose connections must still be able to send once
/// it is gone (`IP_TRANSPARENT`, see `set_transparent`).
pub fn bind(addr: SocketAddr, vip: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    // Only for sockets in TIME_WAIT: Linux never lets two sockets listen on one address this way.
    socket.set_reuse_address(true)?;
    if vip {
        if addr.is_ipv4() {
            socket.set_freebind_v4(true)?;
        } else {
            socket.set_freebind_v6(true)?;
        }
        set_transparent(&socket, addr);
    }
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    Ok(socket.into())
}

/// Lets the connections accepted on a VIP socket send from the VIP after this host lost it
/// (`IP_TRANSPARENT`, inherited by every accepted socket; the kernel checks the source address
/// of a transparent socket's packets against no interface). When an lb is killed, keepalived,
/// killed with it, may take the address off the interface before the kernel has closed the
/// dying lb's connections: their FIN or reset, and any answer of a connection still draining
/// when a hold on `lo` ends, would find no route from an address the host no longer has, and
/// their clients would wait for nothing. Needs CAP_NET_ADMIN (an lb with a VRRP VIP has it for
/// keepalived); without it the lb runs as before, with a warning.
fn set_transparent(socket: &Socket, addr: SocketAddr) {
    let set = if addr.is_ipv4() {
        socket.set_ip_transparent_v4(true)
    } else {
        socket.set_ip_transparent_v6(true)
    };
    if let Err(error) = set {
        tracing::warn!(%addr, %error, "cannot make the VIP's socket transparent (CAP_NET_ADMIN): a connection that the lb's death or a move of the address cuts may get no FIN or reset");
    }
}

/// `bind` with the address and what it is for in the error.
pub fn bind_for(addr: SocketAddr, vip: bool, what: &str) -> io::Result<std::net::TcpListener> {
    bind(addr, vip).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot listen on {addr} ({what}): {error}"),
        )
    })
}

/// Makes a listening socket drop the SYN of every new connection, with a classic BPF socket
/// filter: handshakes already under way complete and accepted connections are untouched. The lb
/// that hands the VIP over does this before it gives the address up (`Handoff::run`), so that
/// it completes no handshake the other lb might receive the rest of: a client whose ARP entry
/// moves between its SYN and its first data would otherwise send the request to a host that
/// never saw the connection, where a TIME_WAIT socket or conntrack entry of an earlier
/// connection on the same ports answers with silence instead of a reset. A dropped SYN is sent
/// again a second later, by then to the new holder.
pub fn drop_new_connections(socket: &impl AsFd) -> io::Result<()> {
    // A TCP socket's filter sees the segment from its TCP header on: byte 13 holds the flags.
    // Opcodes from linux/filter.h: BPF_LD|BPF_B|BPF_ABS, BPF_JMP|BPF_JSET|BPF_K, BPF_RET|BPF_K.
    const LOAD_BYTE: u16 = 0x30;
    const JUMP_IF_SET: u16 = 0x45;
    const RETURN: u16 = 0x06;
    const SYN: u32 = 0x02;
    let program = [
        SockFilter::new(LOAD_BYTE, 0, 0, 13),
        // SYN set: the next instruction (drop); else skip it (keep).
        SockFilter::new(JUMP_IF_SET, 0, 1, SYN),
        SockFilter::new(RETURN, 0, 0, 0),
        SockFilter::new(RETURN, 0, 0, u32::MAX),
    ];
    SockRef::from(socket).attach_filter(&program)
}

/// Accepts whatever waits in a listening socket's queue and resets it at once: the lb's workers
/// stopped accepting (a drain), but a socket kept open after them (the VIP's, through a handoff)
/// would leave a connection there that nobody answers until it closes (one that came while
/// `maxconn` was full).
pub fn refuse_queued(socket: &impl AsFd) {
    let Ok(listener) = socket
        .as_fd()
        .try_clone_to_owned()
        .map(std::net::TcpListener::from)
    else {
        return;
    };
    // Non-blocking (set at `bind`, shared by every duplicate): ends at an empty queue.
    while let Ok((stream, _)) = listener.accept() {
        let _ = SockRef::from(&stream).set_linger(Some(std::time::Duration::ZERO));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::os::fd::OwnedFd;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_listener_that_drops_new_connections_keeps_the_ones_it_has() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut before = TcpStream::connect(addr).unwrap();
        let (mut accepted, _) = accept_blocking(&listener);

        drop_new_connections(&listener).unwrap();
        // The SYN is dropped, not refused: the connect neither succeeds nor fails with a
        // reset before its own timeout (its first retransmission is a second away).
        let attempt = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let refused_or_made = attempt.connect_timeout(&addr.into(), Duration::from_millis(300));
        let error = refused_or_made.expect_err("no handshake completes");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing waits to be accepted"
        );

        // The connection made before still carries data both ways.
        before.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        accepted.write_all(b"pong").unwrap();
        before.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"pong");
    }

    #[test]
    fn connections_on_a_vip_socket_are_transparent() {
        let probe = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        if probe.set_ip_transparent_v4(true).is_err() {
            eprintln!("skipped: IP_TRANSPARENT needs CAP_NET_ADMIN (CI has it, as root)");
            return;
        }
        for address in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = bind(address.parse().unwrap(), true) else {
                eprintln!("skipped {address}: cannot bind (no IPv6 here?)");
                continue;
            };
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (accepted, _) = accept_blocking(&listener);
            // Inherited from the listener: what lets its FIN out once the address is gone.
            let accepted = SockRef::from(&accepted);
            let transparent = if address.starts_with('[') {
                accepted.ip_transparent_v6()
            } else {
                accepted.ip_transparent_v4()
            };
            assert!(transparent.unwrap(), "{address}");
        }
    }

    #[test]
    fn what_waits_in_the_queue_is_reset_not_left_waiting() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let owned = OwnedFd::from(listener.try_clone().unwrap());
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        client.set_nonblocking(true).unwrap();
        // The handshake's last ACK reaches the queue a moment after `connect` returns.
        let mut byte = [0u8; 1];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let error = loop {
            refuse_queued(&owned);
            match client.read(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => break other.expect_err("no answer comes"),
            }
            assert!(std::time::Instant::now() < deadline, "never reset");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
    }

    #[test]
    fn a_v6_listener_drops_new_connections_too() {
        let Ok(listener) = bind("[::1]:0".parse().unwrap(), false) else {
            eprintln!("skipped: no IPv6 loopback here");
            return;
        };
        drop_new_connections(&listener).unwrap();
        let attempt = Socket::new(Domain::IPV6, Type::STREAM, None).unwrap();
        let addr = listener.local_addr().unwrap();
        let error = attempt
            .connect_timeout(&addr.into(), Duration::from_millis(300))
            .expect_err("no handshake completes");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    }

    fn accept_blocking(listener: &std::net::TcpListener) -> (TcpStream, SocketAddr) {
        listener.set_nonblocking(false).unwrap();
        let pair = listener.accept().unwrap();
        listener.set_nonblocking(true).unwrap();
        pair
    }
}
