//! Header handling shared by every proxying role (lb -> web, web -> app): hop-by-hop headers
//! removed (RFC 9110 §7.6.1), `X-Forwarded-For` appended, request ids generated.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// Set by the web server on requests to its app: the web host's name (never the client's).
pub static X_WEBSTACK_WEB_HOST: HeaderName = HeaderName::from_static("x-webstack-web-host");

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// Removes the headers that describe one connection, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection (e.g. `Connection: close, x-foo`) are hop-by-hop too.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// Appends the client's address to `X-Forwarded-For` (`a, b, client`), as HAProxy's
/// `option forwardfor` and nginx's `$proxy_add_x_forwarded_for` do.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    use std::io::Write;
    // Formatted on the stack: one allocation (the header value) per request.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cursor, "{client}");
    let len = cursor.position() as usize;
    let ip = &buf[..len];
    let value = match headers.get(&X_FORWARDED_FOR).map(HeaderValue::as_bytes) {
        Some(existing) if !existing.trim_ascii().is_empty() => {
            HeaderValue::from_bytes(&[existing, b", ", ip].concat())
        }
        _ => HeaderValue::from_bytes(ip),
    };
    if let Ok(value) = value {
        // insert replaces every earlier X-Forwarded-For line: one list, ours appended.
        headers.insert(&X_FORWARDED_FOR, value);
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Unique request ids without a syscall per request: a random per-process prefix and a counter.
pub struct RequestIds {
    prefix: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        // RandomState is seeded from the OS's randomness: no extra dependency.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Self {
            prefix: hasher.finish(),
            counter: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.next_bytes()).expect("hex digits are a valid header value")
    }

    /// The next id as 32 hex digits on the stack (the lb's HTTP/1 path writes it straight into
    /// the forwarded head).
    pub fn next_bytes(&self) -> [u8; 32] {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut id = [0u8; 32];
        for (i, shift) in (0..16).rev().enumerate() {
            id[i] = HEX[((self.prefix >> (shift * 4)) & 0xf) as usize];
            id[16 + i] = HEX[((n >> (shift * 4)) & 0xf) as usize];
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key(header::ACCEPT));
    }

    #[test]
    fn forwarded_for_appends() {
        let mut headers = HeaderMap::new();
        append_forwarded_for(&mut headers, "10.0.0.1".parse().unwrap());
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1");
        append_forwarded_for(&mut headers, "::1".parse().unwrap());
        assert_eq!(headers[&X_FORWARDED_FOR], "10.0.0.1, ::1");
    }

    #[test]
    fn request_ids_are_unique() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(&a.to_str().unwrap()[16..], "0000000000000000");
        assert_eq!(&b.to_str().unwrap()[16..], "0000000000000001");
        assert_eq!(a.to_str().unwrap()[..16], format!("{:016x}", ids.prefix));
    }
}
