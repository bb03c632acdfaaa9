//! The `Date` header of answers a proxy writes itself (RFC 9110 §6.6.1 requires one from an
//! origin with a clock): formatted at most once a second per thread.

use std::cell::RefCell;
use std::time::UNIX_EPOCH;

/// `Sun, 06 Nov 1994 08:49:37 GMT` is always 29 bytes.
const LEN: usize = 29;

thread_local! {
    static CACHED: RefCell<(u64, [u8; LEN])> = const { RefCell::new((u64::MAX, [0; LEN])) };
}

/// Now, as an IMF-fixdate.
pub fn now() -> [u8; LEN] {
    // To the kernel's last tick: a second's precision is all the header has.
    let now = crate::coarse::system_now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            let mut bytes = [b' '; LEN];
            let n = text.len().min(LEN);
            bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
            *cached = (second, bytes);
        }
        cached.1
    })
}

/// Appends `Date: <now>\r\n`.
pub fn push_header(out: &mut Vec<u8>) {
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(&now());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_date_parses_back_as_now() {
        let text = String::from_utf8(super::now().to_vec()).unwrap();
        let parsed = httpdate::parse_http_date(&text).unwrap();
        let skew = std::time::SystemTime::now()
            .duration_since(parsed)
            .unwrap_or_default();
        assert!(skew.as_secs() <= 2, "{text}");
        assert!(text.ends_with(" GMT"));
    }
}
