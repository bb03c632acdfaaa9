//! A request's head as a client sent it: pseudo-fields and regular fields checked by RFC 9113's
//! rules (§8.2, §8.3) and left where HPACK decoded them, in one buffer, with no map or URI built
//! (a proxy writes them out again as they are).

use std::ops::Range;

use bytes::Bytes;

use crate::hpack::{Field, is_connection_specific, zero_bytes};

/// A request the client sent that HTTP/2 calls malformed (RFC 9113 §8.1.1): the stream is
/// reset (PROTOCOL_ERROR). The reason is for the debug log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// A checked request head. Names are lower-case tokens; values hold no control character but
/// horizontal tab and no white space at either end; `:method` is a token, `:authority`
/// `host[:port]`, `:path` origin form (or `*`) without a fragment. Cookie crumbs are joined
/// into one `cookie` field, the last (RFC 9113 §8.2.3).
#[derive(Debug, Clone)]
pub struct RequestHead {
    arena: Bytes,
    method: Range<usize>,
    scheme: Option<Range<usize>>,
    authority: Option<Range<usize>>,
    path: Option<Range<usize>>,
    fields: Vec<Field>,
    content_length: Option<u64>,
}

impl RequestHead {
    /// Checks the fields HPACK decoded into `arena` (which gets the joined cookie, if any).
    pub(crate) fn check(mut arena: Vec<u8>, decoded: &[Field]) -> Result<Self, Malformed> {
        let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
        let mut fields = Vec::with_capacity(decoded.len());
        let mut content_length: Option<u64> = None;
        let mut cookies: Vec<Range<usize>> = Vec::new();
        let mut cookie_name = 0..0;
        for field in decoded {
            let name = &arena[field.name.clone()];
            let value = &arena[field.value.clone()];
            if let Some(pseudo) = name.strip_prefix(b":") {
                if !fields.is_empty() || !cookies.is_empty() {
                    return Err(Malformed("a pseudo-header after a regular field"));
                }
                let slot = match pseudo {
                    b"method" => &mut method,
                    b"scheme" => &mut scheme,
                    b"authority" => &mut authority,
                    b"path" => &mut path,
                    _ => return Err(Malformed("an unknown pseudo-header")),
                };
                if slot.replace(field.value.clone()).is_some() {
                    return Err(Malformed("a repeated pseudo-header"));
                }
                continue;
            }
            if name.is_empty() || !name.iter().all(|&b| NAME_BYTE[usize::from(b)]) {
                return Err(if name.iter().any(u8::is_ascii_uppercase) {
                    Malformed("an upper-case field name")
                } else {
                    Malformed("an invalid field name")
                });
            }
            if is_connection_specific(name) {
                return Err(Malformed("a connection-specific field"));
            }
            if !valid_value(value) {
                return Err(Malformed("an invalid field value"));
            }
            if value.first().is_some_and(|b| matches!(b, b' ' | b'\t'))
                || value.last().is_some_and(|b| matches!(b, b' ' | b'\t'))
            {
                return Err(Malformed("a field value with white space around it"));
            }
            match name {
                b"te" if value != b"trailers" => {
                    return Err(Malformed("TE other than trailers"));
                }
                b"content-length" => {
                    let n = std::str::from_utf8(value)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or(Malformed("an invalid content-length"))?;
                    if content_length.is_some_and(|m| m != n) {
                        return Err(Malformed("content-length values that differ"));
                    }
                    content_length = Some(n);
                }
                b"cookie" => {
                    // Crumbs are joined into one field for HTTP/1 (RFC 9113 §8.2.3).
                    cookies.push(field.value.clone());
                    cookie_name = field.name.clone();
                    continue;
                }
                _ => {}
            }
            fields.push(field.clone());
        }
        if let Some(first) = cookies.first() {
            let value = if cookies.len() == 1 {
                first.clone()
            } else {
                let start = arena.len();
                for (i, crumb) in cookies.iter().enumerate() {
                    if i > 0 {
                        arena.extend_from_slice(b"; ");
                    }
                    arena.extend_from_within(crumb.clone());
                }
                start..arena.len()
            };
            fields.push(Field {
                name: cookie_name,
                value,
            });
        }
        let method = method.ok_or(Malformed("no :method"))?;
        if !is_token(&arena[method.clone()]) {
            return Err(Malformed("an invalid :method"));
        }
        if let Some(range) = &authority
            && !valid_authority(&arena[range.clone()])
        {
            return Err(Malformed("an invalid :authority"));
        }
        if &arena[method.clone()] == b"CONNECT" {
            // The lb refuses CONNECT itself (405); it carries only :authority.
            if scheme.is_some() || path.is_some() || authority.is_none() {
                return Err(Malformed(
                    "CONNECT with :scheme or :path, or without :authority",
                ));
            }
        } else {
            let scheme = scheme.as_ref().ok_or(Malformed("no :scheme"))?;
            if !valid_scheme(&arena[scheme.clone()]) {
                return Err(Malformed("an invalid :scheme"));
            }
            let path = path.as_ref().ok_or(Malformed("no :path"))?;
            let text = &arena[path.clone()];
            if text.is_empty() {
                return Err(Malformed("an empty :path"));
            }
            // Origin form, or `*` (OPTIONS): what HTTP/1 carries in its request line. No
            // fragment (RFC 9113 §8.3.1: path and query only).
            if !(text[0] == b'/' || text == b"*") || !valid_path(text) {
                return Err(Malformed("an invalid :path"));
            }
        }
        Ok(RequestHead {
            arena: Bytes::from(arena),
            method,
            scheme,
            authority,
            path,
            fields,
            content_length,
        })
    }

    pub fn method(&self) -> &str {
        self.text(&self.method)
    }

    pub fn is_head(&self) -> bool {
        &self.arena[self.method.clone()] == b"HEAD"
    }

    pub fn scheme(&self) -> Option<&str> {
        self.scheme.as_ref().map(|r| self.text(r))
    }

    pub fn authority(&self) -> Option<&str> {
        self.authority.as_ref().map(|r| self.text(r))
    }

    /// `:path` (absent only for CONNECT).
    pub fn path(&self) -> Option<&str> {
        self.path.as_ref().map(|r| self.text(r))
    }

    /// The declared `content-length`.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }

    /// The regular fields in the client's order (the joined cookie last).
    pub fn fields(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.fields
            .iter()
            .map(|f| (self.text(&f.name), &self.arena[f.value.clone()]))
    }

    /// The first value of the (lower-case) field `name`.
    pub fn get<'a>(&'a self, name: &str) -> Option<&'a [u8]> {
        self.get_all(name).next()
    }

    /// Every value of the (lower-case) field `name`, in order.
    pub fn get_all<'a, 'n>(
        &'a self,
        name: &'n str,
    ) -> impl Iterator<Item = &'a [u8]> + use<'a, 'n> {
        self.fields
            .iter()
            .filter(move |f| &self.arena[f.name.clone()] == name.as_bytes())
            .map(|f| &self.arena[f.value.clone()])
    }

    /// Checked ASCII (see `check`): never empty by failure.
    fn text(&self, range: &Range<usize>) -> &str {
        std::str::from_utf8(&self.arena[range.clone()]).unwrap_or_default()
    }
}

/// Bytes of a field name HTTP/2 allows that HTTP/1 can carry too: lower-case token characters
/// (RFC 9110 §5.6.2).
static NAME_BYTE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = matches!(b as u8,
            b'a'..=b'z' | b'0'..=b'9' | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
            | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~');
        b += 1;
    }
    table
};

fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes
            .iter()
            .all(|&b| NAME_BYTE[usize::from(b)] || b.is_ascii_uppercase())
}

/// Visible ASCII but `#`, or UTF-8 beyond ASCII (which the HTTP/1 path passes on too).
fn valid_path(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&b| ((0x21..=0x7e).contains(&b) && b != b'#') || b >= 0x80)
        && (bytes.is_ascii() || std::str::from_utf8(bytes).is_ok())
}

/// `host[:port]` as RFC 3986 §3.2 has it without user information (RFC 9113 §8.3.1 forbids
/// it): a registered name, an IPv4 address or a bracketed IPv6 literal, and digits for the
/// port. It becomes the HTTP/1 `Host`: nothing of a path, query or fragment.
fn valid_authority(bytes: &[u8]) -> bool {
    let (host, port) = match bytes.first() {
        None => return false,
        Some(b'[') => {
            let Some(close) = bytes.iter().position(|&b| b == b']') else {
                return false;
            };
            let literal = &bytes[1..close];
            if literal.is_empty()
                || !literal
                    .iter()
                    .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
            {
                return false;
            }
            match &bytes[close + 1..] {
                [] => return true,
                [b':', port @ ..] => (&b"["[..], port),
                _ => return false,
            }
        }
        Some(_) => match bytes.iter().rposition(|&b| b == b':') {
            Some(colon) => (&bytes[..colon], &bytes[colon + 1..]),
            None => (bytes, &b""[..]),
        },
    };
    let name_byte = |&b: &u8| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    };
    (host == b"[" || (!host.is_empty() && host.iter().all(name_byte)))
        && port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
}

fn valid_scheme(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(u8::is_ascii_alphabetic)
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// No control character but horizontal tab, no DEL (what `http::HeaderValue` refuses, and
/// RFC 9113 §8.2.1's NUL, CR and LF among them); eight bytes at a time, as most values are
/// plain text.
fn valid_value(value: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x80 * ONES;
    let mut chunks = value.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte under 0x20 (only for bytes under 0x80: the others are fine) or 0x7f.
        let below_space = word.wrapping_sub(0x20 * ONES) & !word & HIGH;
        let del = zero_bytes(word ^ (0x7f * ONES));
        if (below_space | del) != 0 && !chunk.iter().all(|&b| valid_value_byte(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| valid_value_byte(b))
}

fn valid_value_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(fields: &[(&str, &str)]) -> Result<RequestHead, Malformed> {
        let mut arena = Vec::new();
        let mut decoded = Vec::new();
        for (name, value) in fields {
            let start = arena.len();
            arena.extend_from_slice(name.as_bytes());
            let mid = arena.len();
            arena.extend_from_slice(value.as_bytes());
            decoded.push(Field {
                name: start..mid,
                value: mid..arena.len(),
            });
        }
        RequestHead::check(arena, &decoded)
    }

    const GET: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "example.com"),
        (":path", "/a?b=c"),
    ];

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        GET.iter().chain(extra).copied().collect()
    }

    #[test]
    fn a_request_keeps_its_fields_in_order_and_joins_its_cookies_last() {
        let head = head(&with(&[
            ("cookie", "a=1"),
            ("accept", "*/*"),
            ("cookie", "b=2"),
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-for", "192.0.2.2"),
            ("content-length", "5"),
        ]))
        .unwrap();
        assert_eq!(
            (head.method(), head.scheme(), head.authority(), head.path()),
            ("GET", Some("https"), Some("example.com"), Some("/a?b=c"))
        );
        let fields: Vec<_> = head.fields().collect();
        assert_eq!(
            fields,
            [
                ("accept", &b"*/*"[..]),
                ("x-forwarded-for", b"192.0.2.1"),
                ("x-forwarded-for", b"192.0.2.2"),
                ("content-length", b"5"),
                ("cookie", b"a=1; b=2"),
            ]
        );
        assert_eq!(
            head.get_all("x-forwarded-for").collect::<Vec<_>>(),
            [&b"192.0.2.1"[..], b"192.0.2.2"]
        );
        assert_eq!(head.get("cookie"), Some(&b"a=1; b=2"[..]));
        assert_eq!(head.content_length(), Some(5));
        assert!(!head.is_head());
        // One crumb is kept where it is.
        let one = super::tests::head(&with(&[("cookie", "a=1")])).unwrap();
        assert_eq!(one.get("cookie"), Some(&b"a=1"[..]));
    }

    #[test]
    fn malformed_requests_are_refused_with_their_reason() {
        for (fields, why) in [
            (with(&[("Accept", "x")]), "an upper-case field name"),
            (with(&[("a b", "x")]), "an invalid field name"),
            (with(&[("a(b", "x")]), "an invalid field name"),
            (with(&[("", "x")]), "an invalid field name"),
            (
                with(&[("connection", "close")]),
                "a connection-specific field",
            ),
            (with(&[("x", "a\r\nb: c")]), "an invalid field value"),
            (with(&[("x", "a\0b")]), "an invalid field value"),
            (with(&[("x", "0123456\x7f89")]), "an invalid field value"),
            (
                with(&[("x", " a")]),
                "a field value with white space around it",
            ),
            (with(&[("te", "gzip")]), "TE other than trailers"),
            (
                with(&[("content-length", "1x")]),
                "an invalid content-length",
            ),
            (
                with(&[("content-length", "1"), ("content-length", "2")]),
                "content-length values that differ",
            ),
            (
                vec![(":method", "GET"), ("x", "y"), (":path", "/")],
                "a pseudo-header after a regular field",
            ),
            (with(&[(":path", "/b")]), "a repeated pseudo-header"),
            (
                with(&[("cookie", "a"), (":path", "/b")]),
                "a pseudo-header after a regular field",
            ),
            (
                vec![(":method", "GET"), (":method", "GET")],
                "a repeated pseudo-header",
            ),
            (vec![(":protocol", "x")], "an unknown pseudo-header"),
            (vec![(":scheme", "https"), (":path", "/")], "no :method"),
            (
                vec![(":method", "G T"), (":scheme", "https"), (":path", "/")],
                "an invalid :method",
            ),
            (vec![(":method", "GET"), (":path", "/")], "no :scheme"),
            (
                vec![(":method", "GET"), (":scheme", "h s"), (":path", "/")],
                "an invalid :scheme",
            ),
            (vec![(":method", "GET"), (":scheme", "https")], "no :path"),
            (
                vec![(":method", "GET"), (":scheme", "https"), (":path", "")],
                "an empty :path",
            ),
            (
                vec![(":method", "GET"), (":scheme", "https"), (":path", "/a b")],
                "an invalid :path",
            ),
            (
                vec![(":method", "GET"), (":scheme", "https"), (":path", "a")],
                "an invalid :path",
            ),
            (
                vec![
                    (":method", "GET"),
                    (":scheme", "https"),
                    (":authority", "a\nb"),
                    (":path", "/"),
                ],
                "an invalid :authority",
            ),
            (
                vec![
                    (":method", "CONNECT"),
                    (":authority", "a:443"),
                    (":path", "/"),
                ],
                "CONNECT with :scheme or :path, or without :authority",
            ),
        ] {
            assert_eq!(head(&fields).unwrap_err(), Malformed(why), "{fields:?}");
        }
        let connect = head(&[(":method", "CONNECT"), (":authority", "a:443")]).unwrap();
        assert_eq!((connect.method(), connect.path()), ("CONNECT", None));
        let star = head(&[(":method", "OPTIONS"), (":scheme", "https"), (":path", "*")]).unwrap();
        assert_eq!(star.path(), Some("*"));
        assert!(head(&with(&[("x", "a\tb"), ("y", "é")])).is_ok());
    }

    #[test]
    fn authority_and_path_are_what_http1_can_carry() {
        let request = |authority: &str, path: &str| {
            head(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":authority", authority),
                (":path", path),
            ])
        };
        for good in [
            "h",
            "h:",
            "h:8443",
            "www.foobar.com",
            "127.0.0.1:80",
            "[::1]",
            "[::1]:443",
            "[::ffff:1.2.3.4]",
            "a_b-c~d%20",
        ] {
            let head = request(good, "/é?a=%2F").unwrap();
            assert_eq!(
                (head.authority(), head.path()),
                (Some(good), Some("/é?a=%2F"))
            );
        }
        for bad in [
            "",
            "a\nb",
            "a.example/x?",
            "a b",
            "user@h",
            "h:80x",
            "h:123456",
            "[::1",
            "[::1]x",
            "[]",
            "[::g]",
            "h#",
            "h\\x",
            ":80",
            "a:b:c",
            "h\"",
        ] {
            assert_eq!(
                request(bad, "/").unwrap_err(),
                Malformed("an invalid :authority"),
                "{bad:?}"
            );
        }
        for bad in ["/a#b", "/\u{7f}", "/a b", "a", "/\t"] {
            assert_eq!(
                request("h", bad).unwrap_err(),
                Malformed("an invalid :path"),
                "{bad:?}"
            );
        }
        // Bytes that are not UTF-8 (HPACK carries any octets).
        let arena = b":methodGET:schemehttps:path/\xff".to_vec();
        let fields = [(0, 7, 10), (10, 17, 22), (22, 27, arena.len())].map(|(n, v, e)| Field {
            name: n..v,
            value: v..e,
        });
        assert_eq!(
            RequestHead::check(arena, &fields).unwrap_err(),
            Malformed("an invalid :path")
        );
    }

    #[test]
    fn values_are_checked_eight_bytes_at_a_time_as_byte_by_byte() {
        for b in 0..=255u8 {
            for len in [1, 7, 8, 9, 17] {
                for at in [0, len / 2, len - 1] {
                    let mut value = vec![b'a'; len];
                    value[at] = b;
                    assert_eq!(
                        valid_value(&value),
                        valid_value_byte(b),
                        "{b:#x} {len} {at}"
                    );
                }
            }
        }
    }
}
