//! Names of the headers webstack's roles tell each other things with, and request ids. (How
//! headers are rewritten from hop to hop is `webstack_http1::head`'s.)

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::header::HeaderName;

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_SERVED_BY: HeaderName = HeaderName::from_static("x-served-by");
/// Set by the web server on requests to its app: the web host's name (never the client's).
pub static X_WEBSTACK_WEB_HOST: HeaderName = HeaderName::from_static("x-webstack-web-host");

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
    /// The next id as 32 hex digits on the stack, written straight into a forwarded head.
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
    fn request_ids_are_unique() {
        let ids = RequestIds::default();
        let a = String::from_utf8(ids.next_bytes().to_vec()).unwrap();
        let b = String::from_utf8(ids.next_bytes().to_vec()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert_eq!(&a[16..], "0000000000000000");
        assert_eq!(&b[16..], "0000000000000001");
        assert_eq!(a[..16], format!("{:016x}", ids.prefix));
    }
}
