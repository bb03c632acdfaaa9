//! The PROXY protocol (HAProxy's specification, versions 1 and 2), required from the peers
//! configured to send it (`lb.limits.proxy_protocol`): an outer balancer or CDN that speaks TCP
//! to us tells who its client was. The header is taken off the connection before anything else
//! (TLS included). It is never optional: from such a peer a connection without one is refused,
//! or a client passed through unchanged could name any address; from anyone else it is never
//! read (on the HTTP port it is then a malformed request, 400).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included.
const V1_MAX: usize = 107;
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Address block plus TLVs we accept in a v2 header (the specification allows 64 KiB).
const V2_MAX_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    /// Nothing arrived in time (a connection opened ahead of need): closed quietly.
    #[error("nothing arrived in time")]
    Idle,
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the PROXY header the connection must start with, within `timeout`. Ok(Some): the
/// client it names; Ok(None): a header without an address (`LOCAL`, `UNKNOWN`: the proxy's own
/// connection, such as a health check).
pub async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut seen = 0;
    let result = tokio::time::timeout(timeout, read(stream, &mut seen)).await;
    match result {
        Ok(result) => result,
        Err(_) if seen == 0 => Err(HeaderError::Idle),
        Err(_) => Err(HeaderError::Invalid("PROXY header incomplete in time")),
    }
}

async fn read(
    stream: &mut TcpStream,
    seen_bytes: &mut usize,
) -> Result<Option<SocketAddr>, HeaderError> {
    let mut peeked = [0u8; V1_MAX];
    loop {
        let n = stream.peek(&mut peeked).await?;
        *seen_bytes = n;
        if n == 0 {
            return Err(HeaderError::Missing);
        }
        let seen = &peeked[..n];
        let v1 = V1_PREFIX.starts_with(&seen[..n.min(V1_PREFIX.len())]);
        let v2 = V2_SIGNATURE.starts_with(&seen[..n.min(V2_SIGNATURE.len())]);
        if !v1 && !v2 {
            return Err(HeaderError::Missing);
        }
        if v1 && n >= V1_PREFIX.len() {
            let Some(end) = seen.windows(2).position(|w| w == b"\r\n") else {
                if n == V1_MAX {
                    return Err(HeaderError::Invalid("PROXY v1 header without CRLF"));
                }
                wait_for_more(stream, n).await?;
                continue;
            };
            let mut line = vec![0u8; end + 2];
            stream.read_exact(&mut line).await?;
            return parse_v1(&line[..end]);
        }
        if v2 && n >= 16 {
            let len = usize::from(u16::from_be_bytes([seen[14], seen[15]]));
            if len > V2_MAX_LEN {
                return Err(HeaderError::Invalid("PROXY v2 header too long"));
            }
            let mut header = vec![0u8; 16 + len];
            stream.read_exact(&mut header).await?;
            return parse_v2(&header);
        }
        wait_for_more(stream, n).await?;
    }
}

/// Waits until more than `seen` bytes can be peeked. `peek` returns at once while any bytes
/// are there (and readiness stays set), so this polls: a header split over packets is rare,
/// and the caller's timeout bounds it.
async fn wait_for_more(stream: &TcpStream, seen: usize) -> io::Result<()> {
    let mut probe = [0u8; V1_MAX];
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if stream.peek(&mut probe).await? > seen {
            return Ok(());
        }
    }
}

fn invalid(what: &'static str) -> HeaderError {
    HeaderError::Invalid(what)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.1 56324 443` (without its CRLF).
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let line = std::str::from_utf8(line).map_err(|_| invalid("PROXY v1 header not ASCII"))?;
    let mut fields = line.split(' ');
    let (_, family) = (fields.next(), fields.next());
    match family {
        Some("UNKNOWN") => return Ok(None),
        Some("TCP4" | "TCP6") => {}
        _ => return Err(invalid("PROXY v1 header: unknown protocol")),
    }
    let (Some(source), Some(_destination), Some(port), Some(_), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(invalid("PROXY v1 header: wrong number of fields"));
    };
    let ip: IpAddr = source
        .parse()
        .map_err(|_| invalid("PROXY v1 header: bad source address"))?;
    if ip.is_ipv4() != (family == Some("TCP4")) {
        return Err(invalid(
            "PROXY v1 header: address does not match the protocol",
        ));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("PROXY v1 header: bad source port"))?;
    Ok(Some(SocketAddr::new(ip, port)))
}

/// The binary header: signature, version and command, family, length, addresses, TLVs.
fn parse_v2(header: &[u8]) -> Result<Option<SocketAddr>, HeaderError> {
    let (version, command) = (header[12] >> 4, header[12] & 0x0f);
    if version != 2 {
        return Err(invalid("PROXY v2 header: unknown version"));
    }
    let body = &header[16..];
    match command {
        0 => return Ok(None),
        1 => {}
        _ => return Err(invalid("PROXY v2 header: unknown command")),
    }
    match header[13] {
        // TCP or UDP over IPv4: source, destination, source port, destination port.
        0x11 | 0x12 if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Ok(Some(SocketAddr::new(ip.into(), port)))
        }
        0x21 | 0x22 if body.len() >= 36 => {
            let octets: [u8; 16] = body[..16].try_into().expect("length checked");
            let port = u16::from_be_bytes([body[32], body[33]]);
            Ok(Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)))
        }
        // AF_UNSPEC or a Unix socket: no address to use.
        0x00 | 0x31 | 0x32 => Ok(None),
        _ => Err(invalid("PROXY v2 header: bad address block")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// Sends `bytes` (in two pieces, split at `split`) and reads the header on the other side;
    /// returns what it named and what the connection holds after it.
    async fn exchange(
        bytes: Vec<u8>,
        split: usize,
    ) -> (Result<Option<SocketAddr>, HeaderError>, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            stream.write_all(&bytes[..split]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(30)).await;
            stream.write_all(&bytes[split..]).await.unwrap();
            stream.shutdown().await.unwrap();
        });
        let (mut stream, _) = listener.accept().await.unwrap();
        let header = read_header(&mut stream, Duration::from_secs(5)).await;
        let mut rest = Vec::new();
        if header.is_ok() {
            stream.read_to_end(&mut rest).await.unwrap();
        }
        sender.await.unwrap();
        (header, rest)
    }

    #[tokio::test]
    async fn v1_names_the_client_and_leaves_the_request() {
        let text = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 80\r\nGET / HTTP/1.1\r\n\r\n".to_vec();
        let (header, rest) = exchange(text, 9).await;
        assert_eq!(header.unwrap(), Some("203.0.113.7:40000".parse().unwrap()));
        assert_eq!(rest, b"GET / HTTP/1.1\r\n\r\n");
        let text = b"PROXY TCP6 2001:db8::7 2001:db8::1 4000 443\r\n".to_vec();
        let (header, _) = exchange(text, 3).await;
        assert_eq!(header.unwrap(), Some("[2001:db8::7]:4000".parse().unwrap()));
        let (header, rest) = exchange(b"PROXY UNKNOWN\r\nx".to_vec(), 1).await;
        assert_eq!((header.unwrap(), rest), (None, b"x".to_vec()));
    }

    #[tokio::test]
    async fn v2_names_the_client() {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 192, 0, 2, 1, 0x9c, 0x40, 0, 80,
        ]);
        bytes.extend_from_slice(b"GET");
        let (header, rest) = exchange(bytes, 5).await;
        assert_eq!(header.unwrap(), Some("203.0.113.9:40000".parse().unwrap()));
        assert_eq!(rest, b"GET");
        // LOCAL: the proxy's own connection.
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(exchange(bytes, 16).await.0.unwrap(), None);
    }

    #[tokio::test]
    async fn no_header_is_refused_and_so_are_bad_ones() {
        let (header, _) = exchange(b"GET / HTTP/1.1\r\n\r\n".to_vec(), 2).await;
        assert!(matches!(header, Err(HeaderError::Missing)), "{header:?}");
        for bad in [
            &b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n"[..],
            b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",
            b"PROXY SCTP 203.0.113.7 192.0.2.1 1 2\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 2\r\n",
        ] {
            let (header, _) = exchange(bad.to_vec(), 4).await;
            assert!(
                matches!(header, Err(HeaderError::Invalid(_))),
                "{bad:?}: {header:?}"
            );
        }
        let mut long = b"PROXY TCP4 ".to_vec();
        long.extend(std::iter::repeat_n(b'1', 200));
        assert!(exchange(long, 50).await.0.is_err());
    }

    #[tokio::test]
    async fn a_silent_connection_is_idle_not_invalid() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let header = read_header(&mut stream, Duration::from_millis(100)).await;
        assert!(matches!(header, Err(HeaderError::Idle)), "{header:?}");
        drop(client);
    }
}
