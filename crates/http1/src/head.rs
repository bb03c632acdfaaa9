//! HTTP/1 message heads: parsed with httparse (or taken from hyper's parts), checked for the
//! framing ambiguities request smuggling lives on (RFC 9112 §6), and rewritten for the next hop
//! in one pass straight into an output buffer (hop-by-hop headers out, `X-Forwarded-*` in),
//! without a header map or an allocation per header. One set of rules for every path: the lb's
//! HTTP/1 and HTTP/2 clients and the web server's requests to its app.

use std::borrow::Cow;
use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;

/// Header lines accepted in one head (HAProxy's `tune.http.maxhdr` is 101).
pub const MAX_HEADERS: usize = 100;

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` bytes (0 for no body).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes the connection (responses only).
    Close,
}

/// A request head that cannot be forwarded: the status to answer and why, for the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

const fn refuse(status: u16, reason: &'static str) -> Refusal {
    Refusal { status, reason }
}

impl Refusal {
    /// The answer's body: `400 Bad Request: malformed request head.`
    pub fn text(&self) -> String {
        let status =
            http::StatusCode::from_u16(self.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        format!(
            "{} {}: {}.\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            self.reason
        )
    }
}

/// The header fields the proxy acts on; everything else is copied as it came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Connection,
    KeepAlive,
    ProxyConnection,
    Te,
    Trailer,
    TransferEncoding,
    Upgrade,
    ContentLength,
    Host,
    Expect,
    XForwardedFor,
    XForwardedProto,
    XRequestId,
    StrictTransportSecurity,
    /// Found for the access log, forwarded as any other field.
    Referer,
    UserAgent,
    Other,
}

impl Field {
    fn of(name: &str) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known);
        // The length first: most names are rejected by one integer comparison.
        match name.len() {
            2 if is("te") => Self::Te,
            4 if is("host") => Self::Host,
            6 if is("expect") => Self::Expect,
            7 if is("trailer") => Self::Trailer,
            7 if is("upgrade") => Self::Upgrade,
            7 if is("referer") => Self::Referer,
            10 if is("connection") => Self::Connection,
            10 if is("keep-alive") => Self::KeepAlive,
            10 if is("user-agent") => Self::UserAgent,
            12 if is("x-request-id") => Self::XRequestId,
            14 if is("content-length") => Self::ContentLength,
            15 if is("x-forwarded-for") => Self::XForwardedFor,
            16 if is("proxy-connection") => Self::ProxyConnection,
            17 if is("transfer-encoding") => Self::TransferEncoding,
            17 if is("x-forwarded-proto") => Self::XForwardedProto,
            25 if is("strict-transport-security") => Self::StrictTransportSecurity,
            _ => Self::Other,
        }
    }

    /// No rule of a hop's is about it by name: forwarded unless `Connection` lists it.
    fn other(self) -> bool {
        matches!(self, Self::Other | Self::Referer | Self::UserAgent)
    }

    /// Describes one connection, never forwarded (RFC 9110 §7.6.1).
    fn hop_by_hop(self) -> bool {
        matches!(
            self,
            Self::Connection
                | Self::KeepAlive
                | Self::ProxyConnection
                | Self::Te
                | Self::Trailer
                | Self::TransferEncoding
                | Self::Upgrade
        )
    }
}

/// What the `Connection` header(s) said: `close`, `keep-alive`, and other names, which are
/// hop-by-hop headers of this connection too.
#[derive(Default)]
struct ConnectionTokens<'a> {
    close: bool,
    keep_alive: bool,
    listed: Vec<&'a str>,
}

impl<'a> ConnectionTokens<'a> {
    fn add(&mut self, value: &'a [u8]) {
        let Ok(value) = std::str::from_utf8(value) else {
            return;
        };
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            if token.eq_ignore_ascii_case("close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case("keep-alive") {
                self.keep_alive = true;
            } else {
                self.listed.push(token);
            }
        }
    }

    fn lists(&self, name: &str) -> bool {
        self.listed.iter().any(|l| l.eq_ignore_ascii_case(name))
    }
}

/// Every `Content-Length` line and list element must be the same decimal number.
#[derive(Default)]
struct ContentLength {
    seen: bool,
    value: Option<u64>,
    invalid: bool,
}

impl ContentLength {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        for element in value.split(|&b| b == b',') {
            let element = element.trim_ascii();
            let parsed = (!element.is_empty()
                && element.len() <= 19
                && element.iter().all(u8::is_ascii_digit))
            .then(|| {
                element
                    .iter()
                    .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))
            });
            match (parsed, self.value) {
                (None, _) => self.invalid = true,
                (Some(n), Some(before)) if n != before => self.invalid = true,
                (Some(n), _) => self.value = Some(n),
            }
        }
    }
}

/// `Transfer-Encoding`: whether chunked is the final coding, and whether any other is present.
#[derive(Default)]
struct TransferCodings {
    seen: bool,
    chunked_last: bool,
    other: bool,
    /// `chunked` before another coding: chunked twice or not last, both invalid.
    misplaced_chunked: bool,
}

impl TransferCodings {
    fn add(&mut self, value: &[u8]) {
        self.seen = true;
        for coding in value.split(|&b| b == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                continue;
            }
            if self.chunked_last {
                self.misplaced_chunked = true;
            }
            self.chunked_last = coding.eq_ignore_ascii_case(b"chunked");
            self.other |= !self.chunked_last;
        }
    }
}

/// A request head, parsed and rewritten. Ranges point into the forwarded head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    /// Bytes of the client's buffer the head took (0 when built from hyper's parts).
    pub head_len: usize,
    pub method: Range<usize>,
    pub target: Range<usize>,
    /// The `Host` value as forwarded; None for an HTTP/1.0 request without one.
    pub host: Option<Range<usize>>,
    /// The client's `X-Request-Id`, when this hop keeps it (`Forwarding::keep_request_id`).
    pub request_id: Option<Range<usize>>,
    /// The incoming `X-Forwarded-For` addresses (every line's, comma-separated) as forwarded,
    /// before the one this hop appends; empty when none came.
    pub forwarded_for: Range<usize>,
    /// GET, HEAD, OPTIONS, PUT, DELETE, TRACE: may be sent again after a failure.
    pub idempotent: bool,
    pub is_head: bool,
    pub body: Framing,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
    pub http10: bool,
    /// `Expect: 100-continue`: we answer 100 ourselves (as nginx does) and do not forward it.
    pub expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` header, forwarded (WebSocket): after a 101 the
    /// connection becomes a two-way byte stream.
    pub upgrade: bool,
    /// The first `Referer` and `User-Agent` values as forwarded (for the access log).
    pub referer: Option<Range<usize>>,
    pub user_agent: Option<Range<usize>>,
}

impl Request {
    /// No body: the request can be sent again as it is.
    pub fn bodyless(&self) -> bool {
        self.body == Framing::Length(0)
    }

    /// The forwarded head's `Referer` value (`head`: the buffer the head was written to).
    pub fn referer<'a>(&self, head: &'a [u8]) -> Option<&'a [u8]> {
        self.referer.clone().and_then(|range| head.get(range))
    }

    /// The forwarded head's `User-Agent` value.
    pub fn user_agent<'a>(&self, head: &'a [u8]) -> Option<&'a [u8]> {
        self.user_agent.clone().and_then(|range| head.get(range))
    }

    /// Ends the forwarded head in `out` for one server: its address as `Host` when the client
    /// sent none (HTTP/1.0), then the blank line. `base` is where the head ended before any
    /// server's ending (a retry writes its own over it).
    pub fn end_head_for(&self, out: &mut Vec<u8>, base: usize, server: &str) {
        out.truncate(base);
        if self.host.is_none() {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(server.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// What this hop says about the request's sender, and which of the sender's own statements it
/// keeps.
pub struct Forwarding<'a> {
    /// Appended to `X-Forwarded-For`.
    pub client: IpAddr,
    /// `X-Forwarded-Proto`: the edge (the lb) sets it from its own listener, replacing what the
    /// client said; `None` keeps the incoming value (a hop behind the lb), `http` if none came.
    pub proto: Option<&'static str>,
    /// Keep the incoming `X-Request-Id` (a hop behind the lb); the edge drops it and adds its own.
    pub keep_request_id: bool,
    /// A header this hop sets, replacing any incoming one of that name (the web server tells
    /// its app which web host the request came through).
    pub own_header: Option<(&'a str, &'a [u8])>,
    /// `Upgrade` may be forwarded (an HTTP/1.1 client; HTTP/2 has no Upgrade).
    pub upgrade: bool,
}

impl Forwarding<'_> {
    /// The edge's rules: the client's proxy headers are not trusted.
    pub fn edge(client: IpAddr, secure: bool) -> Forwarding<'static> {
        Forwarding {
            client,
            proto: Some(if secure { "https" } else { "http" }),
            keep_request_id: false,
            own_header: None,
            upgrade: true,
        }
    }
}

/// One header line, as httparse or the HTTP/2 layer hands it over.
pub trait HeaderLine {
    fn name(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl HeaderLine for httparse::Header<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn value(&self) -> &[u8] {
        self.value
    }
}

impl HeaderLine for (&str, &[u8]) {
    fn name(&self) -> &str {
        self.0
    }

    fn value(&self) -> &[u8] {
        self.1
    }
}

/// Parses a request head at the start of `input` and writes the head to forward into `out`
/// (see `rewrite_request`). `Ok(None)`: incomplete.
pub fn parse_request(
    input: &[u8],
    out: &mut Vec<u8>,
    forwarding: &Forwarding<'_>,
) -> Result<Option<Request>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "too many header fields"));
        }
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(refuse(400, "malformed request line"));
    };
    let head = Head {
        method,
        target,
        authority: None,
        http10: version == 0,
        body_hint: None,
    };
    let mut request = rewrite_request(&head, parsed.headers, out, forwarding)?;
    request.head_len = head_len;
    Ok(Some(request))
}

/// The head of an HTTP/2 request (its pseudo-fields and fields as the client sent them, which
/// the HTTP/2 layer checked), rewritten by the same rules as a raw one. `path` is None only for
/// CONNECT. `body_end`: the body is known to be empty. Refused as a raw head would be (a
/// CONNECT, an unsupported Expect, more than `MAX_HEADERS` fields).
pub fn rewrite_h2(
    method: &str,
    path: Option<&str>,
    authority: Option<&str>,
    headers: &[(&str, &[u8])],
    body_end: bool,
    out: &mut Vec<u8>,
    forwarding: &Forwarding<'_>,
) -> Result<Request, Refusal> {
    if headers.len() > MAX_HEADERS {
        return Err(refuse(431, "too many header fields"));
    }
    let head = Head {
        method,
        target: path.unwrap_or("/"),
        authority,
        http10: false,
        // HTTP/2 frames its body itself: a body without a length goes on chunked.
        body_hint: Some(if body_end {
            Framing::Length(0)
        } else {
            Framing::Chunked
        }),
    };
    rewrite_request(&head, headers, out, forwarding)
}

/// The request line's parts, from either parser.
struct Head<'a> {
    method: &'a str,
    target: &'a str,
    /// The authority given apart from the target (HTTP/2's `:authority`).
    authority: Option<&'a str>,
    http10: bool,
    /// How the body is framed when no `Content-Length` or `Transfer-Encoding` says it (HTTP/2
    /// has neither). None: a raw head, where that means no body.
    body_hint: Option<Framing>,
}

/// Checks a request head and writes the head to forward into `out`: request line, the
/// client's end-to-end headers, `Content-Length` or `Transfer-Encoding`, `X-Forwarded-For` (the
/// client's address appended to every earlier line's list) and `X-Forwarded-Proto`, the hop's
/// own header, and `Connection: upgrade` + `Upgrade` for an upgrade. The caller adds
/// `X-Request-Id` (unless kept), `Host` if there was none, and the blank line.
fn rewrite_request<H: HeaderLine>(
    head: &Head<'_>,
    headers: &[H],
    out: &mut Vec<u8>,
    forwarding: &Forwarding<'_>,
) -> Result<Request, Refusal> {
    let (method, http10) = (head.method, head.http10);
    if method == "CONNECT" {
        return Err(refuse(405, "CONNECT is not supported"));
    }

    // The request target: origin form, `*` for OPTIONS, or absolute form (whose authority
    // replaces Host, RFC 9112 §3.2.2). User information is refused wherever it comes from.
    if head.authority.is_some_and(|a| a.contains('@')) {
        return Err(refuse(400, "invalid request target"));
    }
    let mut authority = head.authority.map(Cow::Borrowed);
    let target: Cow<'_, str> = if head.target.starts_with('/') {
        Cow::Borrowed(head.target)
    } else if head.target == "*" && method == "OPTIONS" {
        Cow::Borrowed("*")
    } else {
        let uri: http::Uri = head
            .target
            .parse()
            .map_err(|_| refuse(400, "invalid request target"))?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.authority()) else {
            return Err(refuse(400, "invalid request target"));
        };
        if !matches!(scheme, "http" | "https") || host.as_str().contains('@') {
            return Err(refuse(400, "invalid request target"));
        }
        authority = Some(Cow::Owned(host.as_str().to_owned()));
        // The parsed URI's own path and query, never a search in the text (`http://t/` holds
        // its host inside "http").
        let path = match uri.path() {
            "" => "/",
            path => path,
        };
        match uri.query() {
            Some(query) => Cow::Owned(format!("{path}?{query}")),
            None => Cow::Owned(path.to_owned()),
        }
    };

    let mut connection = ConnectionTokens::default();
    let mut length = ContentLength::default();
    let mut codings = TransferCodings::default();
    let mut hosts = 0;
    let mut expect_continue = false;
    let mut upgrade_value = None;
    let own = forwarding.own_header.map(|(name, _)| name);
    // Each name classified once; the later passes reuse it.
    let mut fields = [Field::Other; MAX_HEADERS];
    for (header, slot) in headers.iter().zip(fields.iter_mut()) {
        *slot = Field::of(header.name());
        match *slot {
            Field::Connection => connection.add(header.value()),
            Field::ContentLength => length.add(header.value()),
            Field::TransferEncoding => codings.add(header.value()),
            Field::Host => hosts += 1,
            Field::Upgrade => upgrade_value = Some(header.value()),
            Field::Expect
                if header
                    .value()
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue") =>
            {
                expect_continue = true;
            }
            Field::Expect => return Err(refuse(417, "unsupported Expect")),
            _ => {}
        }
    }
    if hosts > 1 {
        return Err(refuse(400, "more than one Host header"));
    }
    if hosts == 0 && !http10 && authority.is_none() {
        return Err(refuse(400, "HTTP/1.1 request without Host"));
    }
    // Both framings, or a Transfer-Encoding the server might read differently: the classic
    // smuggling vectors. Refused, as nginx does.
    let body = match (codings.seen, length.seen) {
        (true, true) => {
            return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
        }
        (true, false) if http10 => {
            return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        (true, false) if codings.misplaced_chunked => {
            return Err(refuse(400, "chunked is not the final transfer coding"));
        }
        (true, false) if codings.other || !codings.chunked_last => {
            return Err(refuse(501, "unsupported transfer coding"));
        }
        (true, false) => Framing::Chunked,
        (false, true) => match (length.invalid, length.value) {
            (false, Some(n)) => Framing::Length(n),
            _ => return Err(refuse(400, "invalid Content-Length")),
        },
        (false, false) => head.body_hint.unwrap_or(Framing::Length(0)),
    };
    let upgrade = forwarding.upgrade
        && !http10
        && body == Framing::Length(0)
        && connection.lists("upgrade")
        && upgrade_value.is_some_and(|v| !v.trim_ascii().is_empty());

    out.clear();
    crate::recycle::take_scratch(out, 1024);
    let method_range = push(out, method.as_bytes());
    out.push(b' ');
    let target_range = push(out, target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut host = None;
    if let Some(authority) = &authority {
        out.extend_from_slice(b"Host: ");
        host = Some(push(out, authority.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
    let (mut request_id, mut referer, mut user_agent) = (None, None, None);
    for (header, &field) in headers.iter().zip(&fields) {
        let skip = field.hop_by_hop()
            || matches!(
                field,
                Field::ContentLength | Field::Expect | Field::XForwardedFor
            )
            || (field == Field::XForwardedProto && forwarding.proto.is_some())
            || (field == Field::XRequestId
                && (!forwarding.keep_request_id || request_id.is_some()))
            || (field == Field::Host && authority.is_some())
            || (field.other()
                && (own.is_some_and(|own| header.name().eq_ignore_ascii_case(own))
                    || (!connection.listed.is_empty() && connection.lists(header.name()))));
        if skip {
            continue;
        }
        let value = push_header(out, header);
        match field {
            Field::Host => host = Some(value),
            Field::XRequestId => request_id = Some(value),
            Field::Referer if referer.is_none() => referer = Some(trimmed(out, value)),
            Field::UserAgent if user_agent.is_none() => user_agent = Some(trimmed(out, value)),
            _ => {}
        }
    }
    match body {
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) if length.seen => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(upgrade_value.unwrap_or_default().trim_ascii());
        out.extend_from_slice(b"\r\n");
    }
    // One X-Forwarded-For list: every earlier line's addresses, then the client's.
    out.extend_from_slice(b"X-Forwarded-For: ");
    let earlier = out.len();
    for (header, &field) in headers.iter().zip(&fields) {
        if field == Field::XForwardedFor {
            let value = header.value().trim_ascii();
            if !value.is_empty() {
                out.extend_from_slice(value);
                out.extend_from_slice(b", ");
            }
        }
    }
    let forwarded_for = earlier..out.len().saturating_sub(2).max(earlier);
    push_address(out, forwarding.client);
    out.extend_from_slice(b"\r\n");
    match forwarding.proto {
        Some(proto) => {
            out.extend_from_slice(b"X-Forwarded-Proto: ");
            out.extend_from_slice(proto.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        None if !fields[..headers.len().min(MAX_HEADERS)].contains(&Field::XForwardedProto) => {
            out.extend_from_slice(b"X-Forwarded-Proto: http\r\n");
        }
        None => {}
    }
    if let Some((name, value)) = forwarding.own_header {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    let keep_alive = if http10 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    Ok(Request {
        head_len: 0,
        method: method_range,
        target: target_range,
        host,
        request_id,
        forwarded_for,
        idempotent: is_idempotent(method),
        is_head: method == "HEAD",
        body,
        keep_alive,
        http10,
        expect_continue,
        upgrade,
        referer,
        user_agent,
    })
}

/// `range` of `out` without the whitespace around it.
fn trimmed(out: &[u8], range: Range<usize>) -> Range<usize> {
    let value = &out[range.clone()];
    let start = range.start + (value.len() - value.trim_ascii_start().len());
    let end = range.end - (value.len() - value.trim_ascii_end().len());
    start..end.max(start)
}

/// GET, HEAD, OPTIONS, PUT, DELETE, TRACE (RFC 9110 §9.2.2): repeating one has the effect of
/// sending it once, so it may be sent to another server after a failure.
pub fn is_idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    )
}

fn push(out: &mut Vec<u8>, bytes: &[u8]) -> Range<usize> {
    let start = out.len();
    out.extend_from_slice(bytes);
    start..out.len()
}

/// `HTTP/1.1 <status> <reason>` and its line end.
pub fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A number in decimal (the formatting machinery costs more than the rest of a short head).
pub fn push_decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An address as `Display` writes it; IPv4, the common case, without the formatting machinery.
pub fn push_address(out: &mut Vec<u8>, address: IpAddr) {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_decimal(out, u64::from(octet));
            }
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{address}");
        }
    }
}

/// Copies one header line as it came; returns where its value landed.
fn push_header<H: HeaderLine>(out: &mut Vec<u8>, header: &H) -> Range<usize> {
    out.extend_from_slice(header.name().as_bytes());
    out.extend_from_slice(b": ");
    let value = push(out, header.value());
    out.extend_from_slice(b"\r\n");
    value
}

/// A server's response head, parsed and rewritten for the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    /// Bytes of the server connection's buffer the head took.
    pub head_len: usize,
    pub status: u16,
    pub body: Framing,
    /// The server keeps the connection open for another request.
    pub reusable: bool,
    /// The client connection stays open after this response (what `Connection` says to it).
    pub keep_alive: bool,
    /// A chunked body goes to an HTTP/1.0 client: sent without the chunk framing.
    pub dechunk: bool,
    /// A 101 to a forwarded upgrade: both connections become one byte stream.
    pub upgrade: bool,
}

/// How the response head is rewritten for this client.
#[derive(Clone, Copy)]
pub struct ResponseRewrite<'a> {
    pub request_is_head: bool,
    /// The client asked for keep-alive and the lb is not draining.
    pub client_keep_alive: bool,
    pub client_http10: bool,
    pub request_id: &'a [u8],
    /// `Strict-Transport-Security` value to set (HTTPS only).
    pub hsts: Option<&'a [u8]>,
    /// The request asked for an upgrade: a 101 is forwarded with its `Upgrade`.
    pub request_upgrade: bool,
    /// `Server-Timing: <name>;dur=<ms since start>` added (opt-in, per tier).
    pub timing: Option<(&'a str, std::time::Instant)>,
    /// A header this hop sets, replacing the server's of that name (`X-Served-By`).
    pub own_header: Option<(&'a str, &'a [u8])>,
}

/// Parses a response head at the start of `input` and writes the head for the client into
/// `out`. `Ok(None)`: incomplete. Interim (1xx) responses parse like any other; the caller
/// skips them.
pub fn parse_response(
    input: &[u8],
    out: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
) -> Result<Option<Response>, &'static str> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(input) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("malformed response head"),
    };
    let (Some(status), Some(version)) = (parsed.code, parsed.version) else {
        return Err("malformed status line");
    };
    if status < 100 {
        return Err("status code below 100");
    }
    let mut connection = ConnectionTokens::default();
    let mut length = ContentLength::default();
    let mut codings = TransferCodings::default();
    let mut upgrade_value = None;
    let mut fields = [Field::Other; MAX_HEADERS];
    for (header, slot) in parsed.headers.iter().zip(fields.iter_mut()) {
        *slot = Field::of(header.name);
        match *slot {
            Field::Connection => connection.add(header.value),
            Field::ContentLength => length.add(header.value),
            Field::TransferEncoding => codings.add(header.value),
            Field::Upgrade => upgrade_value = Some(header.value),
            _ => {}
        }
    }
    // A 101 switches protocols only for an upgrade we forwarded, to one the server names.
    let upgrade = status == 101;
    if upgrade && !(rewrite.request_upgrade && upgrade_value.is_some()) {
        return Err("101 Switching Protocols without an upgrade");
    }
    // RFC 9112 §6.3, in order.
    let body = if rewrite.request_is_head || status < 200 || status == 204 || status == 304 {
        Framing::Length(0)
    } else if codings.seen {
        if codings.chunked_last && !codings.misplaced_chunked {
            Framing::Chunked
        } else {
            Framing::Close
        }
    } else if length.seen {
        match (length.invalid, length.value) {
            (false, Some(n)) => Framing::Length(n),
            _ => return Err("invalid Content-Length"),
        }
    } else {
        Framing::Close
    };
    let server_keeps = if version == 0 {
        connection.keep_alive && !connection.close
    } else {
        !connection.close
    };
    let reusable =
        server_keeps && body != Framing::Close && !(codings.seen && length.seen) && !upgrade;
    let dechunk = body == Framing::Chunked && rewrite.client_http10;
    let keep_alive = rewrite.client_keep_alive && body != Framing::Close && !dechunk && !upgrade;

    out.clear();
    push_status_line(out, status, parsed.reason.unwrap_or(""));
    for (header, &field) in parsed.headers.iter().zip(&fields) {
        let skip = field.hop_by_hop()
            || field == Field::XRequestId
            || (field == Field::StrictTransportSecurity && rewrite.hsts.is_some())
            || (field == Field::ContentLength && codings.seen)
            || (field.other()
                && ((!connection.listed.is_empty() && connection.lists(header.name))
                    || rewrite
                        .own_header
                        .is_some_and(|(name, _)| header.name.eq_ignore_ascii_case(name))));
        if skip {
            continue;
        }
        push_header(out, header);
    }
    if body == Framing::Chunked && !dechunk {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    let connection = if upgrade {
        out.extend_from_slice(b"Upgrade: ");
        out.extend_from_slice(upgrade_value.unwrap_or_default().trim_ascii());
        out.extend_from_slice(b"\r\n");
        Persistence::Upgrade
    } else {
        Persistence::of(keep_alive, rewrite.client_http10)
    };
    if let Some((name, started)) = rewrite.timing {
        server_timing(out, name, started.elapsed());
    }
    if let Some((name, value)) = rewrite.own_header {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    finish_head(out, rewrite.request_id, rewrite.hsts, connection);
    Ok(Some(Response {
        head_len,
        status,
        body,
        reusable,
        keep_alive,
        dechunk,
        upgrade,
    }))
}

/// What happens to the client connection after a response, as its `Connection` header says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persistence {
    Close,
    /// Kept open; an HTTP/1.0 client needs to be told (`Connection: keep-alive`).
    KeepAlive {
        http10: bool,
    },
    /// A 101: the connection now carries the upgraded protocol.
    Upgrade,
}

impl Persistence {
    pub fn of(keep_alive: bool, client_http10: bool) -> Self {
        if keep_alive {
            Self::KeepAlive {
                http10: client_http10,
            }
        } else {
            Self::Close
        }
    }
}

/// One `Server-Timing` line: this tier's time from the request to the response head.
pub fn server_timing(out: &mut Vec<u8>, name: &str, took: std::time::Duration) {
    use std::io::Write as _;
    let _ = write!(
        out,
        "Server-Timing: {name};dur={:.1}\r\n",
        took.as_secs_f64() * 1000.0
    );
}

/// The lines every response to the client ends with: request id, HSTS, what happens to the
/// connection, and the blank line.
pub fn finish_head(
    out: &mut Vec<u8>,
    request_id: &[u8],
    hsts: Option<&[u8]>,
    connection: Persistence,
) {
    out.extend_from_slice(b"X-Request-Id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n");
    if let Some(hsts) = hsts {
        out.extend_from_slice(b"Strict-Transport-Security: ");
        out.extend_from_slice(hsts);
        out.extend_from_slice(b"\r\n");
    }
    match connection {
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Persistence::KeepAlive { http10: true } => {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        Persistence::KeepAlive { http10: false } => {}
        Persistence::Upgrade => out.extend_from_slice(b"Connection: upgrade\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn forwarding() -> Forwarding<'static> {
        Forwarding::edge("192.0.2.7".parse().unwrap(), false)
    }

    fn request(head: &str) -> Result<(Request, String), Refusal> {
        let mut out = Vec::new();
        let request = parse_request(head.as_bytes(), &mut out, &forwarding())?.expect("complete");
        Ok((request, String::from_utf8(out).unwrap()))
    }

    fn refused(head: &str) -> u16 {
        request(head).expect_err(head).status
    }

    #[test]
    fn a_simple_request_is_rewritten_for_the_server() {
        let (r, out) = request(
            "GET /a?b=1 HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 203.0.113.1\r\nX-Forwarded-Proto: https\r\nX-Request-Id: mine\r\nAccept: */*\r\n\r\nrest",
        )
        .unwrap();
        assert_eq!(
            out,
            "GET /a?b=1 HTTP/1.1\r\nHost: www.foobar.com\r\nAccept: */*\r\nX-Forwarded-For: 203.0.113.1, 192.0.2.7\r\nX-Forwarded-Proto: http\r\n"
        );
        assert_eq!(&out[r.target.clone()], "/a?b=1");
        assert_eq!(&out[r.method.clone()], "GET");
        assert_eq!(&out[r.host.clone().unwrap()], "www.foobar.com");
        assert_eq!(r.body, Framing::Length(0));
        assert!(r.keep_alive && r.idempotent && r.bodyless() && !r.http10);
    }

    #[test]
    fn referer_and_user_agent_are_found_while_the_head_is_rewritten() {
        let (r, out) = request(
            "GET / HTTP/1.1\r\nHost: a\r\nuser-AGENT:  curl/8.5 \r\nReferer: https://a/b\r\nReferer: second\r\nUser-Agent: second\r\n\r\n",
        )
        .unwrap();
        // Forwarded as they came (both lines of each), the first of each kept for the log.
        assert!(out.contains("user-AGENT: curl/8.5\r\nReferer: https://a/b\r\nReferer: second\r\nUser-Agent: second\r\n"), "{out}");
        assert_eq!(r.user_agent(out.as_bytes()), Some(&b"curl/8.5"[..]));
        assert_eq!(r.referer(out.as_bytes()), Some(&b"https://a/b"[..]));
        let (r, _) = request("GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.referer, r.user_agent), (None, None));
        // Listed in `Connection`: hop-by-hop, neither forwarded nor logged.
        let (r, out) =
            request("GET / HTTP/1.1\r\nHost: a\r\nConnection: user-agent\r\nUser-Agent: x\r\n\r\n")
                .unwrap();
        assert!(!out.to_ascii_lowercase().contains("user-agent"), "{out}");
        assert_eq!(r.user_agent, None);
        let (r, out) = request("GET / HTTP/1.1\r\nHost: a\r\nReferer:\r\n\r\n").unwrap();
        assert_eq!(r.referer(out.as_bytes()), Some(&b""[..]));
    }

    #[test]
    fn addresses_and_numbers_are_written_as_display_writes_them() {
        for address in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.12.3",
            "::1",
            "2001:db8::7",
            "::ffff:192.0.2.1",
        ] {
            let mut out = Vec::new();
            push_address(&mut out, address.parse().unwrap());
            assert_eq!(out, address.as_bytes());
        }
        for n in [0, 7, 42, 65535, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        let mut out = Vec::new();
        push_status_line(&mut out, 404, "Not Found");
        assert_eq!(out, b"HTTP/1.1 404 Not Found\r\n");
    }

    #[test]
    fn the_head_length_excludes_what_follows() {
        let head = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut out = Vec::new();
        let input = format!("{head}GET /next HTTP/1.1\r\n");
        let r = parse_request(input.as_bytes(), &mut out, &forwarding())
            .unwrap()
            .unwrap();
        assert_eq!(r.head_len, head.len());
    }

    #[test]
    fn an_incomplete_head_asks_for_more() {
        let mut out = Vec::new();
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n", &mut out, &forwarding()),
            Ok(None)
        );
    }

    #[test]
    fn bodies_are_framed_once() {
        let (r, out) =
            request("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n").unwrap();
        assert_eq!(r.body, Framing::Length(5));
        assert!(out.contains("Content-Length: 5\r\n"));
        let (r, out) =
            request("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(r.body, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
        assert!(!r.bodyless());
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        for head in [
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n folded\r\n\r\n",
            "GET nowhere HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(refused(head), 400, "{head:?}");
        }
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(refused("CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n"), 405);
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
            417
        );
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: 1\r\n"))
            .collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")),
            431
        );
    }

    #[test]
    fn absolute_form_and_http10() {
        let (r, out) =
            request("GET http://www.foobar.com:8080/p?q HTTP/1.1\r\nHost: ignored\r\n\r\n")
                .unwrap();
        assert!(
            out.starts_with("GET /p?q HTTP/1.1\r\nHost: www.foobar.com:8080\r\n"),
            "{out}"
        );
        assert!(!out.contains("ignored"));
        assert_eq!(&out[r.host.unwrap()], "www.foobar.com:8080");
        // The path comes from the parsed URI: a host that also appears in the scheme, no path,
        // only a query.
        for (target, host, path) in [
            ("http://t/", "t", "/"),
            ("http://t", "t", "/"),
            ("http://h/x?http://h/y", "h", "/x?http://h/y"),
            ("https://t?q=1", "t", "/?q=1"),
        ] {
            let (r, out) = request(&format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n"))
                .unwrap_or_else(|e| panic!("{target}: {e:?}"));
            assert_eq!(&out[r.target.clone()], path, "{target}");
            assert_eq!(&out[r.host.unwrap()], host, "{target}");
        }
        let (r, out) = request("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        assert_eq!(&out[r.target], "*");

        let (r, _) = request("GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(r.http10 && !r.keep_alive && r.host.is_none());
        let (r, _) = request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert!(r.keep_alive);
        let (r, _) = request("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!r.keep_alive);
        let (r, out) = request(
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        )
        .unwrap();
        assert!(r.expect_continue && !out.contains("Expect"));
    }

    #[test]
    fn upgrades_are_forwarded_only_when_asked_and_bodyless() {
        let (r, out) = request(
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        )
        .unwrap();
        assert!(r.upgrade);
        assert!(
            out.contains("Connection: upgrade\r\nUpgrade: websocket\r\n")
                && out.contains("Sec-WebSocket-Key: k\r\n"),
            "{out}"
        );
        // Upgrade without Connection: upgrade, or in HTTP/1.0: an ordinary request.
        for head in [
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
            "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: x\r\nContent-Length: 1\r\n\r\n",
        ] {
            let (r, out) = request(head).unwrap();
            assert!(!r.upgrade && !out.contains("Upgrade"), "{head}");
        }
        let no_upgrade = Forwarding {
            upgrade: false,
            ..forwarding()
        };
        let mut out = Vec::new();
        let r = parse_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
            &mut out,
            &no_upgrade,
        )
        .unwrap()
        .unwrap();
        assert!(!r.upgrade);

        let asked = ResponseRewrite {
            request_upgrade: true,
            timing: None,
            own_header: None,
            ..rewrite()
        };
        let (r, out) = response(
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: a\r\n\r\n",
            &asked,
        );
        assert!(r.upgrade && !r.reusable && r.body == Framing::Length(0));
        assert!(
            out.contains("Upgrade: websocket\r\n") && out.ends_with("Connection: upgrade\r\n\r\n"),
            "{out}"
        );
        let mut out = Vec::new();
        assert!(
            parse_response(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
                &mut out,
                &rewrite()
            )
            .is_err(),
            "a 101 nobody asked for"
        );
    }

    #[test]
    fn a_hop_behind_the_edge_keeps_proto_and_request_id_and_sets_its_own_header() {
        let inner = Forwarding {
            client: "127.0.0.10".parse().unwrap(),
            proto: None,
            keep_request_id: true,
            own_header: Some(("X-Webstack-Web-Host", b"web-01")),
            upgrade: true,
        };
        let mut out = Vec::new();
        let r = parse_request(
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nX-Request-Id: abc\r\nX-Request-Id: def\r\nX-Webstack-Web-Host: forged\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n\r\n",
            &mut out,
            &inner,
        )
        .unwrap()
        .unwrap();
        let out = String::from_utf8(out).unwrap();
        assert_eq!(&out[r.request_id.clone().unwrap()], "abc");
        assert!(!out.contains("def") && !out.contains("forged"), "{out}");
        assert!(out.contains("X-Forwarded-Proto: https\r\n"), "{out}");
        assert!(out.contains("X-Webstack-Web-Host: web-01\r\n"), "{out}");
        assert!(
            out.contains("X-Forwarded-For: 1.2.3.4, 5.6.7.8, 127.0.0.10\r\n"),
            "every line merged, the client appended: {out}"
        );
        // What came before this hop, for the lb's trusted-proxy rule.
        assert_eq!(&out[r.forwarded_for.clone()], "1.2.3.4, 5.6.7.8");
        let mut out = Vec::new();
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out, &inner)
            .unwrap()
            .unwrap();
        assert!(r.forwarded_for.is_empty());
        let mut out = Vec::new();
        parse_request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", &mut out, &inner)
            .unwrap()
            .unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .contains("X-Forwarded-Proto: http\r\n")
        );
    }

    #[test]
    fn http2_heads_follow_the_same_rules() {
        let mut out = Vec::new();
        // The authority apart from the path, a body without a length.
        let fields: [(&str, &[u8]); 3] = [
            ("x-forwarded-for", b"10.0.0.1"),
            ("te", b"trailers"),
            ("x-request-id", b"client"),
        ];
        let h2 = |method, path, authority, fields: &[(&str, &[u8])], end, out: &mut Vec<u8>| {
            out.clear();
            rewrite_h2(method, path, authority, fields, end, out, &forwarding())
        };
        let r = h2(
            "POST",
            Some("/p?q=1"),
            Some("www.foobar.com"),
            &fields,
            false,
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(
            text.starts_with("POST /p?q=1 HTTP/1.1\r\nHost: www.foobar.com\r\n"),
            "{text}"
        );
        assert_eq!(r.body, Framing::Chunked);
        assert!(text.contains("Transfer-Encoding: chunked\r\n"), "{text}");
        assert!(
            text.contains("X-Forwarded-For: 10.0.0.1, 192.0.2.7\r\n"),
            "{text}"
        );
        assert!(!text.contains("te:") && !text.contains("client"), "{text}");
        assert!(!r.idempotent);
        let with_length: [(&str, &[u8]); 2] = [("host", b"h"), ("content-length", b"3")];
        let r = h2("PUT", Some("/x"), None, &with_length, false, &mut out).unwrap();
        assert_eq!(r.body, Framing::Length(3));
        let r = h2("GET", Some("/"), None, &[("host", b"h")], true, &mut out).unwrap();
        assert!(r.bodyless() && r.idempotent);
        let userinfo = h2("GET", Some("/"), Some("user@h"), &[], true, &mut out);
        assert_eq!(userinfo.unwrap_err().status, 400);
        let no_host = h2("GET", Some("/"), None, &[], true, &mut out);
        assert_eq!(no_host.unwrap_err().status, 400);
        let refusal = Refusal {
            status: 431,
            reason: "too many header fields",
        };
        assert_eq!(
            refusal.text(),
            "431 Request Header Fields Too Large: too many header fields.\n"
        );
        let many = vec![("x-a", &b"1"[..]); MAX_HEADERS + 1];
        let too_many = h2("GET", Some("/"), Some("h"), &many, true, &mut out);
        assert_eq!(too_many.unwrap_err().status, 431);
        let connect = h2("CONNECT", None, Some("h:443"), &[], true, &mut out);
        assert_eq!(connect.unwrap_err().status, 405);
    }

    fn response(head: &str, rewrite: &ResponseRewrite<'_>) -> (Response, String) {
        let mut out = Vec::new();
        let response = parse_response(head.as_bytes(), &mut out, rewrite)
            .unwrap()
            .expect("complete");
        (response, String::from_utf8(out).unwrap())
    }

    /// A plain rewrite: keep-alive client, no HSTS, no timing (exchange's tests use it too).
    pub(crate) fn rewrite() -> ResponseRewrite<'static> {
        ResponseRewrite {
            request_is_head: false,
            client_keep_alive: true,
            client_http10: false,
            request_id: b"id",
            hsts: None,
            request_upgrade: false,
            timing: None,
            own_header: None,
        }
    }

    #[test]
    fn responses_are_rewritten_for_the_client() {
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-Request-Id: theirs\r\nX-Served-By: web-01\r\n\r\nok",
            &rewrite(),
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Served-By: web-01\r\nX-Request-Id: id\r\n\r\n"
        );
        assert_eq!(r.body, Framing::Length(2));
        assert!(r.reusable && r.keep_alive && !r.dechunk);

        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n",
            &rewrite(),
        );
        assert_eq!(r.body, Framing::Chunked);
        assert!(
            !r.reusable,
            "both framings: the server connection is not reused"
        );
        assert!(!out.contains("Content-Length") && out.contains("Transfer-Encoding: chunked"));

        let (r, out) = response("HTTP/1.0 200 OK\r\n\r\n", &rewrite());
        assert_eq!(r.body, Framing::Close);
        assert!(!r.reusable && !r.keep_alive && out.contains("Connection: close"));

        let head = ResponseRewrite {
            request_is_head: true,
            ..rewrite()
        };
        let (r, out) = response("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", &head);
        assert_eq!(r.body, Framing::Length(0));
        assert!(out.contains("Content-Length: 100"));
    }

    #[test]
    fn chunked_to_an_http10_client_is_dechunked() {
        let old = ResponseRewrite {
            client_http10: true,
            ..rewrite()
        };
        let (r, out) = response(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            &old,
        );
        assert!(r.dechunk && !r.keep_alive);
        assert!(!out.contains("Transfer-Encoding") && out.contains("Connection: close"));
    }

    #[test]
    fn bad_responses_are_errors() {
        let mut out = Vec::new();
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 000 Zero\r\n\r\n",
            "HTTP/1.1 099 Low\r\n\r\n",
            "garbage\r\n\r\n",
        ] {
            assert!(
                parse_response(head.as_bytes(), &mut out, &rewrite()).is_err(),
                "{head}"
            );
        }
    }
}
