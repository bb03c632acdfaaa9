//! The request path for HTTP/2 clients (hyper's server and client): pick a server, forward the
//! request over a pooled keep-alive connection, retry idempotent requests elsewhere when a
//! connection fails, and answer 502/503/504 itself when no server can. The decisions both
//! paths share (plain-HTTP answers, error statuses and texts, retry rules) live here; HTTP/1
//! clients take the faster path in `h1`.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use webstack_common::forward::{self, RequestIds, X_FORWARDED_PROTO, X_REQUEST_ID};

use crate::Config;
use crate::balance::Balancer;
use crate::metrics::Metrics;
use crate::server::{ActiveGuard, Server};
use crate::tls::CertStore;
use crate::tls::acme::Challenges;
use crate::upstream::{Lease, SendError, Upstream};

/// What goes upstream: the client's body, or nothing (so a retry can resend it).
pub type UpstreamBody = Either<Incoming, Empty<Bytes>>;
/// What goes back to the client: the server's body, or our own short error.
pub type ProxyBody = Either<Tracked, Full<Bytes>>;

/// Who caused a failed attempt: decides the status and whether another server may be tried.
pub(crate) enum Failure {
    /// No response head came back: the connection could not be made, or it closed or reset
    /// before any response (a pooled connection the server was just closing, a server that
    /// died). An idempotent request may go to another server (HAProxy's
    /// `retry-on conn-failure empty-response`); `connect` says which, for the error metric.
    Unreachable {
        connect: bool,
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The server took longer than `timeouts.server`.
    Timeout,
    /// The server answered something that is not HTTP/1 (HTTP/1 path only).
    Invalid(&'static str),
}

/// What the lb answers itself on plain HTTP when TLS is on.
pub(crate) enum PlainHttpAnswer {
    /// An ACME HTTP-01 key authorization.
    Challenge(String),
    /// 308 to this HTTPS URL.
    Redirect(String),
}

/// One worker's request path: shared balancer and metrics, its own connection pools.
pub struct Proxy {
    pub(crate) config: Config,
    pub(crate) balancer: Arc<Balancer>,
    /// HTTP/2 requests (hyper's client connections).
    upstream: Upstream,
    /// HTTP/1 requests (raw keep-alive sockets, see `h1`).
    pub(crate) pool: crate::h1::pool::Pool,
    pub(crate) metrics: Metrics,
    pub(crate) request_ids: RequestIds,
    /// The Strict-Transport-Security value, built once.
    pub(crate) hsts: Option<HeaderValue>,
    /// With TLS on: the certificates (a plain HTTP request for a name they cover is redirected)
    /// and the pending ACME HTTP-01 challenges.
    tls: Option<(Arc<CertStore>, Arc<Challenges>)>,
}

/// `host:port` -> `host` (keeping IPv6 brackets).
pub(crate) fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    }
}

impl Proxy {
    /// `balancer` is shared by every worker, so round-robin is exact across them.
    pub fn new(
        config: Config,
        balancer: Arc<Balancer>,
        metrics: Metrics,
        tls: Option<(Arc<CertStore>, Arc<Challenges>)>,
    ) -> Self {
        let upstream = Upstream::new(config.servers.len(), config.timeouts.connect);
        let pool = crate::h1::pool::Pool::new(config.servers.len(), config.timeouts.connect);
        let hsts = config
            .tls
            .as_ref()
            .and_then(|t| t.hsts_max_age)
            .and_then(|age| HeaderValue::from_str(&format!("max-age={}", age.as_secs())).ok());
        Self {
            hsts,
            tls,
            balancer,
            config,
            upstream,
            pool,
            metrics,
            request_ids: RequestIds::default(),
        }
    }

    /// One request; `secure` when it came over TLS.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        request: Request<Incoming>,
        secure: bool,
    ) -> Response<ProxyBody> {
        if !secure {
            if let Some(answer) = self.answer_plain_http(&request) {
                return answer;
            }
        }
        let mut response = self.forward(peer, request, secure).await;
        if secure {
            if let Some(hsts) = &self.hsts {
                response
                    .headers_mut()
                    .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        response
    }

    /// With TLS on, plain HTTP gets what only the lb can answer: an ACME HTTP-01 challenge
    /// response, or a 308 to the HTTPS URL (308 keeps the method and body) for the names we hold
    /// a certificate for. Addresses and other names, the health path and unknown challenges go
    /// through (a redirect to a name without a certificate would only trade one error for
    /// another).
    fn answer_plain_http(&self, request: &Request<Incoming>) -> Option<Response<ProxyBody>> {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host());
        let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
        match self.plain_http_answer(target, host)? {
            PlainHttpAnswer::Challenge(answer) => {
                let mut response = Response::new(Either::Right(Full::from(answer)));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                );
                Some(response)
            }
            PlainHttpAnswer::Redirect(location) => {
                let mut response = self.plain(StatusCode::PERMANENT_REDIRECT, REDIRECT_TEXT);
                if let Ok(value) = HeaderValue::from_str(&location) {
                    response.headers_mut().insert(http::header::LOCATION, value);
                }
                Some(response)
            }
        }
    }

    /// The decision behind `answer_plain_http`, shared with the HTTP/1 path: `target` is the
    /// path and query, `host` the Host header.
    pub(crate) fn plain_http_answer(
        &self,
        target: &str,
        host: Option<&str>,
    ) -> Option<PlainHttpAnswer> {
        let (certificates, challenges) = self.tls.as_ref()?;
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        if let Some(token) = path.strip_prefix("/.well-known/acme-challenge/") {
            return challenges.answer(token).map(PlainHttpAnswer::Challenge);
        }
        let tls = self.config.tls.as_ref().filter(|t| t.redirect_http)?;
        if path == self.config.health.path {
            return None;
        }
        let host = host.map(strip_port).filter(|h| certificates.covers(h))?;
        Some(PlainHttpAnswer::Redirect(match tls.https_port {
            443 => format!("https://{host}{target}"),
            port => format!("https://{host}:{port}{target}"),
        }))
    }

    async fn forward(
        &self,
        peer: SocketAddr,
        request: Request<Incoming>,
        secure: bool,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let request_id = self.request_ids.next();
        let method = request.method().clone();
        // Kept for the access log only (a cheap reference-counted clone of the URI).
        let uri = self.config.access_log.then(|| request.uri().clone());
        let (mut parts, body) = request.into_parts();

        forward::strip_hop_by_hop(&mut parts.headers);
        forward::append_forwarded_for(&mut parts.headers, peer.ip());
        parts.headers.insert(
            &X_FORWARDED_PROTO,
            HeaderValue::from_static(if secure { "https" } else { "http" }),
        );
        // Whatever the client spoke, the web servers are spoken to in HTTP/1.1.
        parts.version = http::Version::HTTP_11;
        // HTTP/2 carries the host in :authority; the HTTP/1.1 server behind needs a Host header
        // (an HTTP/1.0 client may send none: then the server's address).
        if let Some(authority) = parts.uri.authority() {
            if !parts.headers.contains_key(http::header::HOST) {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(http::header::HOST, host);
                }
            }
            // Servers get the origin form: the path and query.
            parts.uri = parts
                .uri
                .path_and_query()
                .cloned()
                .map_or_else(|| Uri::from_static("/"), Uri::from);
        }
        parts.headers.insert(&X_REQUEST_ID, request_id.clone());

        // Only a request without a body can be sent twice; only an idempotent one should be.
        let replayable = body.is_end_stream() && is_idempotent(&parts.method);
        let mut body = Some(body);
        let mut tried = Tried::default();
        let mut last_failure = None;

        // A 502/503/504 answered by a server whose request could go elsewhere: kept, and sent
        // only if no other server can take the request.
        let mut fallback: Option<(Response<ProxyBody>, Arc<Server>)> = None;
        let (mut response, server) = loop {
            let candidate = if tried.count > self.config.retries {
                None
            } else {
                self.balancer.select(&|s| !tried.contains(s.index))
            };
            let Some(server) = candidate else {
                break match (fallback, last_failure) {
                    (Some((response, server)), _) => (response, Some(server)),
                    (None, None) => (
                        self.error(StatusCode::SERVICE_UNAVAILABLE, "no_server"),
                        None,
                    ),
                    (None, failure) => (self.error_for(failure), None),
                };
            };
            if tried.count > 0 {
                self.metrics.retries.inc();
            }
            tried.insert(server.index);

            let upstream_body = match body.take() {
                Some(body) if !replayable => Either::Left(body),
                _ => Either::Right(Empty::new()),
            };
            let mut upstream = Request::from_parts(parts.clone(), upstream_body);
            if !upstream.headers().contains_key(http::header::HOST) {
                if let Ok(host) = HeaderValue::from_str(server.authority.as_str()) {
                    upstream.headers_mut().insert(http::header::HOST, host);
                }
            }

            let guard = server.begin();
            match self.send(&server, upstream).await {
                Ok((response, lease)) if replayable && is_retryable_status(response.status()) => {
                    // HAProxy's `retry-on 502 503 504`: the server (its app, for a web server)
                    // could not serve this; an idempotent request may go to another one.
                    tracing::warn!(server = %server.config.name, status = response.status().as_u16(), "server answered an error, trying another");
                    server.recheck.notify_one();
                    fallback = Some((response.map(|b| Tracked::new(b, guard, lease)), server));
                }
                Ok((response, lease)) => {
                    break (
                        response.map(|b| Tracked::new(b, guard, lease)),
                        Some(server),
                    );
                }
                Err(Failure::Unreachable { connect, error }) if replayable => {
                    tracing::warn!(server = %server.config.name, %error, "server unreachable, trying another");
                    server.recheck.notify_one();
                    last_failure = Some(Failure::Unreachable { connect, error });
                }
                Err(failure) => {
                    if let Failure::Unreachable { .. } = failure {
                        server.recheck.notify_one();
                    }
                    break (self.error_for(Some(failure)), Some(server));
                }
            }
        };

        forward::strip_hop_by_hop(response.headers_mut());
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, request_id.clone());
        let status = response.status();
        if let Some(server) = &server {
            server.responses(status.as_u16()).inc();
            server
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
        }
        if self.config.access_log {
            tracing::info!(
                target: "access",
                client = %peer.ip(),
                method = %method,
                path = %uri.as_ref().and_then(|u| u.path_and_query()).map_or("", |p| p.as_str()),
                status = status.as_u16(),
                server = server.as_ref().map_or("-", |s| s.config.name.as_str()),
                attempts = tried.count,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = request_id.to_str().unwrap_or(""),
            );
        }
        response
    }

    async fn send(
        &self,
        server: &Server,
        request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), Failure> {
        let send = self
            .upstream
            .send(server.index, server.config.addr, request);
        match tokio::time::timeout(self.config.timeouts.server, send).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Ok(exchange)) => Ok(exchange),
            // `send` fails only before a response head: the server answered nothing.
            Ok(Err(error)) => Err(Failure::Unreachable {
                connect: matches!(error, SendError::Connect(_)),
                error: error.into(),
            }),
        }
    }

    fn error_for(&self, failure: Option<Failure>) -> Response<ProxyBody> {
        let (status, kind) = self.failure_status(failure.as_ref());
        self.error(status, kind)
    }

    /// Logs a failure and names the status and error kind (metric label) it is answered with.
    pub(crate) fn failure_status(&self, failure: Option<&Failure>) -> (StatusCode, &'static str) {
        match failure {
            Some(Failure::Unreachable { error, .. }) => {
                tracing::warn!(%error, "request failed")
            }
            Some(Failure::Timeout) => tracing::warn!("server response timed out"),
            Some(Failure::Invalid(what)) => tracing::warn!(error = what, "invalid response"),
            None => {}
        }
        match failure {
            Some(Failure::Timeout) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            Some(Failure::Unreachable { connect: true, .. }) => {
                (StatusCode::BAD_GATEWAY, "connect")
            }
            Some(Failure::Unreachable { connect: false, .. }) => {
                (StatusCode::BAD_GATEWAY, "no_response")
            }
            Some(Failure::Invalid(_)) => (StatusCode::BAD_GATEWAY, "bad_response"),
            None => (StatusCode::SERVICE_UNAVAILABLE, "no_server"),
        }
    }

    fn plain(&self, status: StatusCode, text: &'static str) -> Response<ProxyBody> {
        let mut response = Response::new(Either::Right(Full::new(Bytes::from_static(
            text.as_bytes(),
        ))));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    }

    fn error(&self, status: StatusCode, kind: &'static str) -> Response<ProxyBody> {
        self.metrics.error(kind);
        let mut response = self.plain(status, error_text(status));
        response.headers_mut().insert(
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        );
        response
    }
}

pub(crate) const REDIRECT_TEXT: &str = "308 Permanent Redirect: this site is served over HTTPS.\n";

/// The body of an error the lb answers itself.
pub(crate) fn error_text(status: StatusCode) -> &'static str {
    match status {
        StatusCode::SERVICE_UNAVAILABLE => {
            "503 Service Unavailable: no server is available to handle this request.\n"
        }
        StatusCode::GATEWAY_TIMEOUT => "504 Gateway Timeout: the server did not answer in time.\n",
        _ => "502 Bad Gateway: the server could not be reached or sent an invalid response.\n",
    }
}

/// The servers a request already tried: a bitset, so the common path allocates nothing (the
/// first 128 servers; beyond that a list).
#[derive(Default)]
pub(crate) struct Tried {
    bits: u128,
    more: Vec<usize>,
    pub(crate) count: u32,
}

impl Tried {
    pub(crate) fn insert(&mut self, index: usize) {
        self.count += 1;
        match u32::try_from(index).ok().filter(|&i| i < 128) {
            Some(i) => self.bits |= 1 << i,
            None => self.more.push(index),
        }
    }

    pub(crate) fn contains(&self, index: usize) -> bool {
        match u32::try_from(index).ok().filter(|&i| i < 128) {
            Some(i) => self.bits & (1 << i) != 0,
            None => self.more.contains(&index),
        }
    }
}

pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A server's response body that keeps the server's in-flight slot until it is fully sent, so
/// leastconn sees slow downloads as load, and returns the connection to its pool once the body
/// has been read to the end (a body abandoned midway takes its connection with it).
pub struct Tracked {
    inner: Incoming,
    lease: Option<Lease>,
    _guard: ActiveGuard,
}

impl Tracked {
    fn new(inner: Incoming, guard: ActiveGuard, lease: Lease) -> ProxyBody {
        let mut tracked = Tracked {
            inner,
            lease: Some(lease),
            _guard: guard,
        };
        if tracked.inner.is_end_stream() {
            tracked.release();
        }
        Either::Left(tracked)
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.idle.checkin(lease.sender);
        }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = Pin::new(&mut self.inner).poll_frame(cx);
        let complete = match &frame {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            _ => false,
        };
        if complete {
            self.release();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::Tried;

    #[test]
    fn tried_servers_are_remembered_beyond_the_bitset() {
        let mut tried = Tried::default();
        for i in [0, 5, 127, 128, 1000] {
            assert!(!tried.contains(i));
            tried.insert(i);
            assert!(tried.contains(i));
        }
        assert_eq!(tried.count, 5);
        assert!(!tried.contains(6) && !tried.contains(129));
    }
}
