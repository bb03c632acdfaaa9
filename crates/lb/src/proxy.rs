//! One worker's request path: its shared balancer and metrics, its own pool of server
//! connections, and what both client protocols share (the plain-HTTP answers, error statuses
//! and texts, the access log). HTTP/1 clients take `h1`; HTTP/2 clients (hyper's server) come
//! here to `handle`, which forwards over the same pool by the same rules
//! (`webstack_http1::client`, `webstack_http1::retry`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body::Body as _;
use http_body_util::{Either, Full};
use webstack_common::access_log::{AccessLog, Entry, Value};
use webstack_common::forward::RequestIds;
use webstack_http1::client::{self, ResponseBody, Return, SendError, Target};
use webstack_http1::exchange::Sent;
use webstack_http1::head::{self, Forwarding, ResponseRewrite};
use webstack_http1::pool::Pool;
use webstack_http1::retry::{Attempts, Failure, GiveUp};
use webstack_http1::stream::Endpoint;
use webstack_http2::{Reply, RequestBody, RequestHead, hpack};

use crate::Config;
use crate::balance::Balancer;
use crate::limits::{Capped, ClientTable, ConnectionGuard, LimitError};
use crate::metrics::Metrics;
use crate::server::{ActiveGuard, Server};
use crate::tls::CertStore;
use crate::tls::acme::Challenges;
use webstack_http1::body::BODY_TIMEOUT;

/// What goes back to an HTTP/2 client: the server's body, or our own short answer.
pub type ProxyBody = Either<ResponseBody, Full<Bytes>>;

/// What the lb answers itself on plain HTTP when TLS is on.
pub(crate) enum PlainHttpAnswer {
    /// An ACME HTTP-01 key authorization.
    Challenge(String),
    /// 308 to this HTTPS URL.
    Redirect(String),
}

/// One worker's request path: shared balancer and metrics, its own connection pool.
pub struct Proxy {
    pub(crate) config: Config,
    pub(crate) balancer: Arc<Balancer>,
    /// Keep-alive connections to the servers, for both client protocols.
    pub(crate) pool: Arc<Pool>,
    pub(crate) metrics: Metrics,
    pub(crate) request_ids: RequestIds,
    /// The Strict-Transport-Security value, built once.
    pub(crate) hsts: Option<HeaderValue>,
    /// With TLS on: the certificates (a plain HTTP request for a name they cover is redirected)
    /// and the pending ACME HTTP-01 challenges.
    tls: Option<(Arc<CertStore>, Arc<Challenges>)>,
    /// Per-client limits, shared by every worker.
    pub(crate) clients: Arc<ClientTable>,
    /// Shared by every worker too.
    access_log: Option<AccessLog>,
}

/// Why one attempt on one server gave no response head.
pub(crate) enum AttemptError {
    /// A server-side failure: decides retry and status.
    Server(Failure),
    /// The client went away or broke its request: nothing to answer (or it was answered).
    Client,
}

/// What became of a request after its attempts.
pub(crate) enum Forwarded<T> {
    /// A server's answer (or the 5xx held back, when no other server did better).
    Answer(T, Arc<Server>),
    /// No answer: the failure to report (`None`: no server could be tried, 503), and the server
    /// it came from.
    Failed(Option<Arc<Server>>, Option<Failure>),
    /// The client is gone or was refused: nothing more to send.
    Abandoned,
    /// Every server that could take it stayed at its `maxconn` for `queue_timeout`.
    QueueTimeout,
}

/// One line of the access log, the same for both client protocols.
pub(crate) struct Access<'a> {
    pub client: IpAddr,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub server: Option<&'a Server>,
    pub attempts: u32,
    pub started: Instant,
    pub request_id: &'a [u8],
    /// `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`.
    pub version: &'static str,
    /// Response body bytes, when the response said.
    pub bytes: Option<u64>,
    /// The request's headers, for `Referer` and `User-Agent`.
    pub headers: RequestHeaders<'a>,
}

/// A request's headers as either client protocol holds them.
#[derive(Clone, Copy)]
pub(crate) enum RequestHeaders<'a> {
    /// None read (a refused head).
    None,
    /// An HTTP/1 request and the head it was rewritten to (where its fields were found).
    H1(&'a [u8], &'a webstack_http1::head::Request),
    /// An HTTP/2 client's (names lower-case).
    H2(&'a RequestHead),
}

impl<'a> RequestHeaders<'a> {
    fn referer(self) -> Option<&'a [u8]> {
        match self {
            RequestHeaders::None => None,
            RequestHeaders::H1(head, request) => request.referer(head),
            RequestHeaders::H2(head) => head.get("referer"),
        }
    }

    fn user_agent(self) -> Option<&'a [u8]> {
        match self {
            RequestHeaders::None => None,
            RequestHeaders::H1(head, request) => request.user_agent(head),
            RequestHeaders::H2(head) => head.get("user-agent"),
        }
    }
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
        clients: Arc<ClientTable>,
        access_log: Option<AccessLog>,
    ) -> Self {
        let pool = Arc::new(Pool::new(config.servers.len(), config.timeouts.connect));
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
            pool,
            metrics,
            request_ids: RequestIds::default(),
            clients,
            access_log,
        }
    }

    /// A new plain HTTP connection through the per-client limits (`limits::admit`): the
    /// stream, the client (a trusted proxy's PROXY header may name it) and its count.
    pub(crate) async fn admit(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        options: &webstack_common::HttpOptions,
    ) -> Option<(tokio::net::TcpStream, SocketAddr, Option<ConnectionGuard>)> {
        crate::limits::admit(&self.clients, stream, peer, options.header_read_timeout).await
    }

    /// The client of a request on a connection from `peer`: `peer`, or, when it is a trusted
    /// proxy, who its `X-Forwarded-For` names. `forwarded_for` is only called then.
    pub(crate) fn client_of<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl FnOnce() -> std::borrow::Cow<'a, [u8]>,
    ) -> IpAddr {
        let limits = self.clients.limits();
        if limits.trusted_proxies.is_empty() || !limits.trusts(peer) {
            return peer;
        }
        limits.client_behind(peer, &forwarded_for())
    }

    /// With TLS on, plain HTTP gets what only the lb can answer: an ACME HTTP-01 challenge
    /// response, or a 308 to the HTTPS URL (308 keeps the method and body) for the names we hold
    /// a certificate for. Addresses and other names, the health path, `OPTIONS *` and unknown
    /// challenges go through (a redirect to a name without a certificate would only trade one
    /// error for another). `target` is the path and query, `host` the Host header.
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
        // `*` (asterisk form) names the server, not a resource: there is no URL to send it to.
        if path == self.config.health.path || !path.starts_with('/') {
            return None;
        }
        let host = host.map(strip_port).filter(|h| certificates.covers(h))?;
        Some(PlainHttpAnswer::Redirect(match tls.https_port {
            443 => format!("https://{host}{target}"),
            port => format!("https://{host}:{port}{target}"),
        }))
    }

    /// The retry loop of both client protocols, in two halves around the attempt (an async
    /// closure cannot carry it: its future would not be `Send`): servers as the balancer picks
    /// them, each tried once, until one answers or the one rule (`webstack_http1::retry`) says
    /// stop. This half: the next server, or what became of the request when none is left.
    pub(crate) async fn next_server<T>(
        &self,
        attempts: &mut Attempts<(T, Arc<Server>)>,
    ) -> Result<(Arc<Server>, ActiveGuard), Forwarded<T>> {
        let found = if attempts.may_try_another() {
            let tried = attempts.tried();
            let accept = |s: &Server| !tried.contains(s.index);
            let pick = || self.pick(&accept);
            let queue = &self.balancer.queue;
            match pick() {
                Some(found) if queue.is_empty() => Some(found),
                found => {
                    // Others wait already (this one queues behind them), or every server that
                    // could take it is at its maxconn: wait for a slot.
                    let waiting_ahead = found.is_some();
                    drop(found);
                    // With a held 5xx answer (and its server's slot), no waiting: it is sent.
                    if !attempts.holds_fallback()
                        && (waiting_ahead || self.balancer.any_full(&accept))
                    {
                        match queue.wait_for(self.config.queue_timeout, pick).await {
                            Some(found) => Some(found),
                            None => return Err(Forwarded::QueueTimeout),
                        }
                    } else {
                        None
                    }
                }
            }
        } else {
            None
        };
        let Some((server, guard)) = found else {
            return Err(match attempts.give_up() {
                GiveUp::Fallback((answer, server)) => Forwarded::Answer(answer, server),
                GiveUp::Failed(failure) => Forwarded::Failed(None, failure),
            });
        };
        if attempts.begin(server.index) {
            self.metrics.retries.inc();
        }
        Ok((server, guard))
    }

    /// A server `accept`ed by the balancer, with one of its slots: a racing pick may take the
    /// last slot of the one chosen, so it looks again (a few times).
    fn pick(&self, accept: &dyn Fn(&Server) -> bool) -> Option<(Arc<Server>, ActiveGuard)> {
        for _ in 0..4 {
            let server = self.balancer.select(accept)?;
            if let Some(guard) = server.try_begin() {
                return Some((server, guard));
            }
        }
        None
    }

    /// The other half: one attempt's result. `Some` when the request is done (answered,
    /// failed, or abandoned by its client), `None` to try another server.
    pub(crate) fn after_attempt<T>(
        &self,
        attempts: &mut Attempts<(T, Arc<Server>)>,
        server: Arc<Server>,
        result: Result<(u16, T), AttemptError>,
    ) -> Option<Forwarded<T>> {
        // A 500 is the application's answer (a bug, a bad input): only a server that cannot
        // answer (connect, timeout, no response, 502/503/504) counts towards its ejection.
        match &result {
            Ok((status, _)) => self.passive(&server, !matches!(status, 502..=504)),
            Err(AttemptError::Server(_)) => self.passive(&server, false),
            Err(AttemptError::Client) => {}
        }
        match result {
            Ok((status, answer)) => {
                if attempts.holds(status) {
                    tracing::warn!(server = %server.config.name, status, "server answered an error, trying another");
                    server.recheck.notify_one();
                }
                attempts
                    .answered(status, (answer, server))
                    .map(|(answer, server)| Forwarded::Answer(answer, server))
            }
            Err(AttemptError::Client) => Some(Forwarded::Abandoned),
            Err(AttemptError::Server(failure)) => {
                if let Failure::Unreachable { .. } = failure {
                    server.recheck.notify_one();
                }
                let text = failure.to_string();
                match attempts.failed(failure) {
                    Ok(()) => {
                        tracing::warn!(server = %server.config.name, error = text, "trying another server");
                        None
                    }
                    Err(failure) => Some(Forwarded::Failed(Some(server), Some(failure))),
                }
            }
        }
    }

    /// One attempt's time to its response head, for p2c's latency estimate (only p2c reads it:
    /// the others skip its clock and exp()). Its own time, not the request's: the queue and
    /// earlier attempts are not the server's (a request body's upload still counts). An attempt that failed on
    /// the server's side counts as at least a second, so a server that fails fast does not
    /// look fast.
    pub(crate) fn sample<T>(
        &self,
        server: &Server,
        attempt_started: Instant,
        result: &Result<(u16, T), AttemptError>,
    ) {
        if self.config.algorithm != crate::Algorithm::P2c {
            return;
        }
        let took = attempt_started.elapsed();
        match result {
            Ok(_) => server.observe_latency(took),
            Err(AttemptError::Server(_)) => {
                server.observe_latency(took.max(std::time::Duration::from_secs(1)))
            }
            Err(AttemptError::Client) => {}
        }
    }

    /// A request's outcome on `server`, for passive outlier ejection: `eject_after` failures
    /// in a row (connect failures, no answer, 502/503/504) take it out of rotation at once;
    /// its health checks bring it back. A client's own failure counts for nothing.
    fn passive(&self, server: &Server, ok: bool) {
        if ok {
            return server.passive_success();
        }
        let health = &self.config.health;
        if health.eject_after == 0 || !server.is_up() {
            return;
        }
        let failures = server.passive_failure();
        if failures >= health.eject_after
            && self
                .balancer
                .eject_if_allowed(server, health.max_ejected_percent)
        {
            tracing::warn!(server = %server.config.name, failures, "server ejected after failed requests; its health checks will bring it back");
            server.recheck.notify_one();
        }
    }

    /// Records a server's answer in its metrics (status class, time to the response head).
    pub(crate) fn answered(&self, server: &Server, status: u16, started: Instant) {
        let took = started.elapsed();
        server.responses(status).inc();
        server.metrics.duration.observe(took.as_secs_f64());
    }

    /// One request of an HTTP/2 client (always over TLS): its head rewritten by the rules of
    /// the HTTP/1 path, forwarded over the worker's pool with the same retries.
    pub async fn handle(
        &self,
        peer: SocketAddr,
        head: RequestHead,
        body: RequestBody,
    ) -> Reply<ProxyBody> {
        let started = Instant::now();
        let request_id = self.request_ids.next_bytes();
        let client = self.client_of(peer.ip(), || {
            let lines: Vec<&[u8]> = head.get_all("x-forwarded-for").collect();
            std::borrow::Cow::Owned(lines.join(&b","[..]))
        });
        if let Err(wait) = self.clients.request(client) {
            client::drain_rest(body);
            let mut response = self.local(
                StatusCode::TOO_MANY_REQUESTS,
                Bytes::from_static(TOO_MANY_TEXT.as_bytes()),
                &request_id,
            );
            response
                .headers
                .insert(http::header::RETRY_AFTER, retry_after(wait).into());
            self.access_log(&Access {
                client,
                method: head.method(),
                path: head.path().unwrap_or("/"),
                status: 429,
                server: None,
                attempts: 0,
                started,
                request_id: &request_id,
                version: "HTTP/2.0",
                bytes: Some(TOO_MANY_TEXT.len() as u64),
                headers: RequestHeaders::H2(&head),
            });
            return response;
        }
        // The body bound: a declared length over it is refused at once, a longer stream once
        // it passes it (`Capped`).
        let max_body = self.clients.limits().max_body;
        let declared = head.content_length();
        if declared.is_some_and(|n| n > max_body) {
            self.clients.metrics().limited("body_size").inc();
            client::drain_rest(body);
            return self.local(
                StatusCode::PAYLOAD_TOO_LARGE,
                Bytes::from(too_large_text(max_body)),
                &request_id,
            );
        }
        let mut body = Capped::new(body, max_body);
        let mut too_large = false;
        let mut out = Vec::with_capacity(1024);
        // HTTP/2 has no Upgrade (RFC 9113 §8.6).
        let forwarding = Forwarding {
            upgrade: false,
            ..Forwarding::edge(peer.ip(), true)
        };
        let fields: Vec<(&str, &[u8])> = head.fields().collect();
        let rewritten = head::rewrite_h2(
            head.method(),
            head.path(),
            head.authority(),
            &fields,
            body.is_end_stream(),
            &mut out,
            &forwarding,
        );
        drop(fields);
        let request = match rewritten {
            Ok(request) => request,
            Err(refusal) => {
                let status =
                    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
                client::drain_rest(body.into_inner());
                return self.local(status, Bytes::from(refusal.text()), &request_id);
            }
        };
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(&request_id);
        out.extend_from_slice(b"\r\n");
        let base = out.len();
        let rewrite = ResponseRewrite {
            request_is_head: request.is_head,
            client_keep_alive: true,
            client_http10: false,
            request_id: &request_id,
            hsts: self.hsts.as_ref().map(HeaderValue::as_bytes),
            request_upgrade: false,
            timing: self.config.server_timing.then_some(("lb", started)),
            own_header: None,
        };
        let replayable = request.bodyless() && request.idempotent;
        let mut attempts = Attempts::new(self.config.retries, replayable);
        let mut back = Vec::with_capacity(1024);
        let outcome = loop {
            let (server, guard) = match self.next_server(&mut attempts).await {
                Ok(found) => found,
                Err(outcome) => break outcome,
            };
            request.end_head_for(&mut out, base, server.authority.as_str());
            let target = Target {
                pool: &self.pool,
                server: server.index,
                addr: Endpoint::Tcp(server.config.addr),
                replayable,
            };
            let attempt_started = Instant::now();
            let sent = client::send_pooled(
                &target,
                &out,
                request.body,
                &mut body,
                &mut back,
                &rewrite,
                self.config.timeouts.server,
                BODY_TIMEOUT,
            )
            .await;
            let result = match sent {
                Ok((conn, response, sent)) => {
                    // The fields go to HPACK straight from the head the server's was
                    // rewritten into, with no map in between.
                    let mut encoded = Vec::with_capacity(back.len());
                    hpack::encode_http1_fields(&mut encoded, &back);
                    let back_to = (response.reusable && sent == Sent::Complete).then(|| Return {
                        pool: self.pool.clone(),
                        server: server.index,
                    });
                    let hold: Box<dyn Send + Sync> = Box::new(guard);
                    let body =
                        ResponseBody::new(conn, response.body, back_to, BODY_TIMEOUT, Some(hold));
                    let reply = Reply {
                        status: StatusCode::from_u16(response.status)
                            .unwrap_or(StatusCode::BAD_GATEWAY),
                        headers: http::HeaderMap::new(),
                        encoded,
                        body: Either::Left(body),
                    };
                    Ok((response.status, (reply, sent)))
                }
                Err(SendError::Server(failure)) => Err(AttemptError::Server(failure)),
                Err(SendError::Client(error)) => {
                    too_large = error.downcast_ref::<LimitError>().is_some();
                    tracing::debug!(client = %peer, %error, "the client's request body failed");
                    Err(AttemptError::Client)
                }
            };
            self.sample(&server, attempt_started, &result);
            if let Some(outcome) = self.after_attempt(&mut attempts, server, result) {
                break outcome;
            }
        };
        let method = &out[request.method.clone()];
        let path = &out[request.target.clone()];
        let (response, server) = match outcome {
            Forwarded::Answer((response, _), server) => {
                self.answered(&server, response.status.as_u16(), started);
                (response, Some(server))
            }
            Forwarded::Failed(server, failure) => {
                let status = self.answer_failure(failure.as_ref(), server.as_deref());
                let text = Bytes::from_static(error_text(status).as_bytes());
                (self.local(status, text, &request_id), server)
            }
            Forwarded::QueueTimeout => {
                self.metrics.error("queue_timeout");
                let text = Bytes::from_static(QUEUE_TEXT.as_bytes());
                let mut response = self.local(StatusCode::SERVICE_UNAVAILABLE, text, &request_id);
                response
                    .headers
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                (response, None)
            }
            Forwarded::Abandoned if too_large => {
                self.clients.metrics().limited("body_size").inc();
                let text = Bytes::from(too_large_text(max_body));
                (
                    self.local(StatusCode::PAYLOAD_TOO_LARGE, text, &request_id),
                    None,
                )
            }
            Forwarded::Abandoned => {
                let text = Bytes::from_static(b"400 Bad Request: the request body failed.\n");
                (self.local(StatusCode::BAD_REQUEST, text, &request_id), None)
            }
        };
        // A body no server read all of (an early answer, a failure): read and dropped for a
        // while, so the client finishes its upload and reads the answer (a reset stream is an
        // error to some clients).
        client::drain_rest(body.into_inner());
        self.access_log(&Access {
            client,
            method: std::str::from_utf8(method).unwrap_or("-"),
            path: std::str::from_utf8(path).unwrap_or("-"),
            status: response.status.as_u16(),
            server: server.as_deref(),
            attempts: attempts.tried().count(),
            started,
            request_id: &request_id,
            version: "HTTP/2.0",
            // A server's answer: its Content-Length (none left unread yet); ours: the text.
            bytes: response.body.size_hint().exact(),
            headers: RequestHeaders::H2(&head),
        });
        response
    }

    /// Logs why no server answered, counts it, and names the status the client gets.
    pub(crate) fn answer_failure(
        &self,
        failure: Option<&Failure>,
        server: Option<&Server>,
    ) -> StatusCode {
        let (status, kind) = match failure {
            Some(failure) => {
                tracing::warn!(server = server.map_or("-", |s| s.config.name.as_str()), error = %failure, "request failed");
                failure.status()
            }
            None => (StatusCode::SERVICE_UNAVAILABLE, "no_server"),
        };
        self.metrics.error(kind);
        if let Some(server) = server {
            server.responses(status.as_u16()).inc();
        }
        status
    }

    /// A short plain-text answer of the lb's own to an HTTP/2 client.
    fn local(&self, status: StatusCode, text: Bytes, request_id: &[u8]) -> Reply<ProxyBody> {
        let mut response = Reply {
            status,
            headers: http::HeaderMap::with_capacity(6),
            encoded: Vec::new(),
            body: Either::Right(Full::new(text)),
        };
        let headers = &mut response.headers;
        if let Ok(date) = HeaderValue::from_bytes(&webstack_http1::date::now()) {
            headers.insert(http::header::DATE, date);
        }
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if status.is_server_error() {
            headers.insert(
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            );
        }
        if let Ok(id) = HeaderValue::from_bytes(request_id) {
            headers.insert("x-request-id", id);
        }
        if let Some(hsts) = &self.hsts {
            headers.insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        response
    }

    /// One access log line, when the access log is on.
    pub(crate) fn access_log(&self, access: &Access<'_>) {
        let Some(log) = &self.access_log else {
            return;
        };
        let server = access.server.map_or("-", |s| s.config.name.as_str());
        log.log(&Entry {
            client: access.client,
            method: access.method,
            target: access.path,
            version: access.version,
            status: access.status,
            bytes: access.bytes,
            duration: access.started.elapsed(),
            request_id: access.request_id,
            referer: access.headers.referer(),
            user_agent: access.headers.user_agent(),
            extra: &[
                ("server", Value::Text(server)),
                ("attempts", Value::Number(u64::from(access.attempts))),
            ],
        });
    }
}

pub(crate) const QUEUE_TEXT: &str = "503 Service Unavailable: every server is at its connection limit and none freed a slot in time; retry later.\n";

pub(crate) const TOO_MANY_TEXT: &str =
    "429 Too Many Requests: this client sends requests faster than the site allows; retry later.\n";

/// The body of a 413 for a request body over `max` bytes (both client protocols).
pub(crate) fn too_large_text(max: u64) -> String {
    format!("413 Content Too Large: this site accepts request bodies of at most {max} bytes.\n")
}

/// `Retry-After` in whole seconds, at least 1.
pub(crate) fn retry_after(wait: std::time::Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
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

#[cfg(test)]
mod tests {
    use webstack_http1::head::{self, ResponseRewrite};
    use webstack_http2::hpack::{self, Decoder};

    /// What an HTTP/2 client gets of a server's head: every field `parse_response` wrote for
    /// the client, none of the HTTP/1 connection's.
    #[test]
    fn an_http2_client_gets_every_field_of_the_rewritten_head() {
        let server = b"HTTP/1.1 302 Found\r\nLocation: http://a.example:8080/x?y=1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nX-Empty:\r\nX-Spaced:  v  \r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let rewrite = ResponseRewrite {
            request_is_head: false,
            client_keep_alive: true,
            client_http10: false,
            request_id: b"rid",
            hsts: Some(b"max-age=60"),
            request_upgrade: false,
            timing: None,
            own_header: None,
        };
        let mut back = Vec::new();
        let response = head::parse_response(server, &mut back, &rewrite)
            .unwrap()
            .unwrap();
        assert_eq!(response.status, 302);
        let mut block = Vec::new();
        hpack::encode_http1_fields(&mut block, &back);
        let (mut arena, mut fields) = (Vec::new(), Vec::new());
        Decoder::new(4096)
            .decode(&block, usize::MAX, &mut arena, &mut fields)
            .unwrap();
        let got: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|f| (&arena[f.name.clone()], &arena[f.value.clone()]))
            .collect();
        let mut want: Vec<(&[u8], &[u8])> = vec![
            (b"location", b"http://a.example:8080/x?y=1"),
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-empty", b""),
            (b"x-spaced", b"v"),
            (b"content-length", b"0"),
            (b"x-request-id", b"rid"),
            (b"strict-transport-security", b"max-age=60"),
        ];
        let mut got_sorted = got.clone();
        got_sorted.sort();
        want.sort();
        assert_eq!(got_sorted, want, "{got:?}");
    }
}
