//! The HTTP/1 request path (plain HTTP, and HTTPS when ALPN picks http/1.1): HAProxy's model of
//! one stream over two connections. The client connection's task reads a request head, rewrites
//! it in one pass, writes it with the body to a pooled server connection while it reads the
//! response head (so an early answer is heard), and moves the response body back, all without a
//! header map, a channel or a second task. The codec, the pool and the retry rule are
//! `webstack_http1`'s; HTTP/2 clients go through hyper (`proxy.rs`) onto the same pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite};
use webstack_common::{HttpOptions, Shutdown};
use webstack_http1::body::RelayError;
use webstack_http1::client::Target;
use webstack_http1::exchange::Sent;
use webstack_http1::head::{
    Forwarding, Framing, Persistence, Refusal, Request, Response, ResponseRewrite,
};
use webstack_http1::pool::Conn;
use webstack_http1::retry::Attempts;
use webstack_http1::server::{ClientConn, HeadLimits, IdleRead, Local, Next, SendFailure, text};
use webstack_http1::stream::Endpoint;

use crate::limits::{LimitError, Paced};
use crate::proxy::{
    Access, AttemptError, Forwarded, PlainHttpAnswer, Proxy, REDIRECT_TEXT, RequestHeaders,
    TOO_MANY_TEXT, retry_after,
};
use crate::server::{ActiveGuard, Server};

/// The client side of one connection; its request bodies held to the floor rate and size
/// bound.
type Client<C> = ClientConn<Paced<C>>;

/// A response head from a server, and what became of the request.
struct Answer {
    conn: Conn,
    response: Response,
    /// The rewritten response head (owned only when the answer was held back as a fallback).
    held_head: Option<Vec<u8>>,
    /// `Partial`: the server answered before it had the whole body.
    sent: Sent,
    /// The server's in-flight slot, held until its response has been relayed.
    guard: Option<ActiveGuard>,
}

impl Proxy {
    /// Serves one HTTP/1 connection until the client closes it, it idles past the header
    /// timeout, or the lb drains (the request in flight finishes first).
    pub async fn serve_h1<C>(
        self: Arc<Self>,
        io: C,
        peer: SocketAddr,
        secure: bool,
        options: HttpOptions,
        shutdown: Shutdown,
    ) where
        C: AsyncRead + AsyncWrite + Unpin,
        Paced<C>: IdleRead,
    {
        let mut client = ClientConn::new(Paced::new(io), peer, secure);
        let forwarding = Forwarding::edge(peer.ip(), secure);
        let limits = HeadLimits {
            timeout: options.header_read_timeout,
            max_bytes: options.max_header_bytes,
        };
        // The forwarded head and the response head: kept from one request to the next only
        // when the next is already buffered (pipelined), else released while the connection
        // waits (`release_idle`).
        let (mut out, mut back) = (Vec::new(), Vec::new());
        let stop = shutdown.triggered();
        let mut stop = std::pin::pin!(stop);
        let mut fresh = true;
        loop {
            client.release_idle(&mut [&mut out, &mut back]);
            match client
                .read_request(&mut out, &forwarding, limits, &mut stop, fresh)
                .await
            {
                Next::Request(request) => {
                    fresh = false;
                    webstack_http1::recycle::take_scratch(&mut back, 1024);
                    let draining = shutdown.is_triggered();
                    // Boxed: the exchange's state is allocated while a request is served, not
                    // carried by every idle keep-alive connection's task.
                    let keep = Box::pin(self.exchange(
                        &mut client,
                        &request,
                        &mut out,
                        &mut back,
                        draining,
                    ))
                    .await;
                    client.io.disarm();
                    if !keep || client.broken || shutdown.is_triggered() {
                        break;
                    }
                }
                Next::Close => break,
                Next::Refuse(refusal) => {
                    let id = self.refuse(&mut client, &mut back, refusal).await;
                    self.log_refused_head(client.peer.ip(), &refusal, &id, client.waiting_since);
                    break;
                }
            }
        }
        client.close().await;
    }

    /// Answers a request that cannot be served with its status and reason; the connection
    /// closes after it. Returns the answer's request id.
    async fn refuse<C>(
        &self,
        client: &mut Client<C>,
        back: &mut Vec<u8>,
        refusal: Refusal,
    ) -> [u8; 32]
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let id = self.request_ids.next_bytes();
        client
            .refuse(back, &refusal, &id, self.hsts_for(client.secure))
            .await;
        id
    }

    /// The access line of a head refused while it was read (400, 408, 414, 431; 405, 417, 501
    /// for a method, expectation or framing refused at the head): no method or target, as the
    /// head was not understood, did not all come, or was not taken.
    fn log_refused_head(
        &self,
        peer: std::net::IpAddr,
        refusal: &Refusal,
        request_id: &[u8],
        waited: Instant,
    ) {
        self.access_log(&Access {
            client: peer,
            method: "-",
            path: "-",
            status: refusal.status,
            server: None,
            attempts: 0,
            started: waited,
            request_id,
            version: "-",
            bytes: Some(refusal.text().len() as u64),
            headers: RequestHeaders::None,
        });
    }

    /// One request: answered locally, or forwarded with retries. Returns whether the client
    /// connection stays open.
    async fn exchange<C>(
        &self,
        client: &mut Client<C>,
        request: &Request,
        out: &mut Vec<u8>,
        back: &mut Vec<u8>,
        draining: bool,
    ) -> bool
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let request_id = self.request_ids.next_bytes();
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(&request_id);
        out.extend_from_slice(b"\r\n");
        let base = out.len();
        let client_keep = request.keep_alive && !draining;
        client.begin(request, started);
        let who = self.client_of(client.peer.ip(), || {
            std::borrow::Cow::Borrowed(&out[request.forwarded_for.clone()])
        });
        client.who = who;
        if let Some(refused) = self.over_limit(who, request) {
            // The body is not needed: a short one is dropped, a long one closes.
            let keep = refused.status != StatusCode::PAYLOAD_TOO_LARGE
                && client.may_keep_after_answer(client_keep);
            let error = LocalError {
                status: refused.status,
                body: &refused.text,
                retry_after: refused.retry_after,
                server: None,
                attempts: 0,
                request_id: &request_id,
            };
            return self
                .answer_error(client, back, out, request, &error, keep)
                .await;
        }
        if !request.bodyless() {
            let limits = self.clients.limits();
            // A length was checked against the bound above; chunked is counted as it comes,
            // from what came with the head on.
            let budget = match request.body {
                Framing::Chunked => limits.max_body,
                _ => u64::MAX,
            };
            let already = client.buf.len() as u64;
            client
                .io
                .arm(limits.min_body_rate, limits.body_grace, budget, already);
        }

        if !client.secure {
            let target = std::str::from_utf8(&out[request.target.clone()]).unwrap_or("/");
            let host = request
                .host
                .clone()
                .and_then(|h| std::str::from_utf8(&out[h]).ok());
            if let Some(answer) = self.plain_http_answer(target, host) {
                let (status, content_type, body, location) = match &answer {
                    PlainHttpAnswer::Challenge(key) => (
                        StatusCode::OK,
                        "application/octet-stream",
                        key.as_bytes(),
                        None,
                    ),
                    PlainHttpAnswer::Redirect(location) => (
                        StatusCode::PERMANENT_REDIRECT,
                        "text/plain; charset=utf-8",
                        REDIRECT_TEXT.as_bytes(),
                        Some(location.as_str()),
                    ),
                };
                let location = location.map(|l| format!("Location: {l}"));
                let headers: Vec<&[u8]> = location.iter().map(|l| l.as_bytes()).collect();
                let local = Local {
                    status,
                    content_type,
                    body,
                    headers: &headers,
                    request_id: &request_id,
                    hsts: None,
                };
                // The body is not needed: a short one is dropped, a long one closes.
                let keep = client.may_keep_after_answer(client_keep);
                let connection = Persistence::of(keep, request.http10);
                let kept = client
                    .answer(back, &local, request.is_head, connection)
                    .await;
                return client.finish_body(kept).await;
            }
        }

        let rewrite = ResponseRewrite {
            request_is_head: request.is_head,
            client_keep_alive: client_keep,
            client_http10: request.http10,
            request_id: &request_id,
            hsts: self.hsts_for(client.secure),
            request_upgrade: request.upgrade,
            timing: self.config.server_timing.then_some(("lb", started)),
            own_header: None,
        };
        let replayable = request.bodyless() && request.idempotent;
        let mut attempts = Attempts::new(self.config.retries, replayable);
        let outcome = loop {
            let (server, guard) = match self.next_server(&mut attempts).await {
                Ok(found) => found,
                Err(outcome) => break outcome,
            };
            request.end_head_for(out, base, server.authority.as_str());
            let attempt_started = Instant::now();
            let result = self
                .attempt(client, request, &server, out, back, &rewrite, replayable)
                .await
                .map(|(conn, response, sent)| {
                    // An answer that may be held back keeps its head: the next attempt
                    // reuses `back`.
                    let held_head = attempts.holds(response.status).then(|| back.clone());
                    let status = response.status;
                    let answer = Answer {
                        conn,
                        response,
                        held_head,
                        sent,
                        guard: Some(guard),
                    };
                    (status, answer)
                });
            self.sample(&server, attempt_started, &result);
            if let Some(outcome) = self.after_attempt(&mut attempts, server, result) {
                break outcome;
            }
        };

        let failed = match outcome {
            Forwarded::Answer(answer, server) => Ok((answer, server)),
            Forwarded::Abandoned => return false,
            Forwarded::Failed(server, failure) => {
                let status = self.answer_failure(failure.as_ref(), server.as_deref());
                Err((status, crate::proxy::error_text(status), None, server))
            }
            Forwarded::QueueTimeout => {
                self.metrics.error("queue_timeout");
                let status = StatusCode::SERVICE_UNAVAILABLE;
                Err((status, crate::proxy::QUEUE_TEXT, Some(1), None))
            }
        };
        let (mut answer, server) = match failed {
            Ok(found) => found,
            Err((status, body, retry_after, server)) => {
                // No server read the body (or one stopped in it): dropped if short, else close.
                let keep = client.may_keep_after_answer(client_keep);
                let error = LocalError {
                    status,
                    body,
                    retry_after,
                    server: server.as_deref(),
                    attempts: attempts.tried().count(),
                    request_id: &request_id,
                };
                return self
                    .answer_error(client, back, out, request, &error, keep)
                    .await;
            }
        };
        // Time to the response head, for the metrics.
        self.answered(&server, answer.response.status, started);

        let held = answer.held_head.take();
        let head = held.as_deref().unwrap_or(back);
        let keep = if answer.response.upgrade {
            client
                .tunnel(&mut answer.conn, head, self.config.timeouts.tunnel)
                .await;
            false
        } else {
            let sent = client
                .relay_response(&mut answer.conn, &answer.response, head)
                .await;
            match &sent {
                Ok(())
                    if answer.response.reusable
                        && answer.sent == Sent::Complete
                        && answer.conn.buf.is_empty() =>
                {
                    self.pool.checkin(server.index, answer.conn);
                }
                Ok(()) => {}
                Err(RelayError::Write(error)) => {
                    tracing::debug!(client = %client.peer, %error, "client went away during the response");
                }
                Err(error) => {
                    tracing::warn!(server = %server.config.name, %error, "response body cut short");
                }
            }
            // The server's part is over: leastconn stops counting it while the rest of the
            // client's body (after an early answer) is read and dropped, or the connection closes.
            drop(answer.guard.take());
            // After an early answer the rest of the body is read and dropped to keep the
            // connection, or it closes.
            let keep = answer.response.keep_alive && sent.is_ok();
            client.finish_body(keep).await
        };
        self.access_log(&Access {
            client: who,
            method: text(out, &request.method),
            path: text(out, &request.target),
            status: answer.response.status,
            server: Some(&server),
            attempts: attempts.tried().count(),
            started,
            request_id: &request_id,
            version: version(request),
            bytes: match answer.response.body {
                Framing::Length(n) => Some(n),
                _ => None,
            },
            headers: RequestHeaders::H1(out, request),
        });
        keep
    }

    /// Sends the request to `server` and reads its response head (a pooled connection the
    /// server had closed gets the replayable request again on a fresh one). A body over the
    /// client limits is refused here (408, 413) and logged.
    #[allow(clippy::too_many_arguments)]
    async fn attempt<C>(
        &self,
        client: &mut Client<C>,
        request: &Request,
        server: &Server,
        out: &[u8],
        back: &mut Vec<u8>,
        rewrite: &ResponseRewrite<'_>,
        replayable: bool,
    ) -> Result<(Conn, Response, Sent), AttemptError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let target = Target {
            pool: &self.pool,
            server: server.index,
            addr: Endpoint::Tcp(server.config.addr),
            replayable,
        };
        let timeout = self.config.timeouts.server;
        let sent = client
            .send_pooled(&target, request, out, back, rewrite, timeout)
            .await;
        match sent {
            Ok(answered) => Ok(answered),
            Err(SendFailure::Server(failure)) => Err(AttemptError::Server(failure)),
            Err(SendFailure::Malformed(what)) => {
                let refusal = Refusal {
                    status: 400,
                    reason: what,
                };
                self.refuse(client, back, refusal).await;
                Err(AttemptError::Client)
            }
            Err(SendFailure::Client(error)) => {
                let Some(limit) = LimitError::of(&error) else {
                    tracing::debug!(client = %client.peer, %error, "client went away during the request body");
                    return Err(AttemptError::Client);
                };
                tracing::info!(client = %client.peer, %error, "request refused");
                let kind = match limit {
                    LimitError::TooSlow => "body_rate",
                    LimitError::TooLarge => "body_size",
                };
                self.clients.metrics().limited(kind).inc();
                let refusal = Refusal {
                    status: limit.status(),
                    reason: match limit {
                        LimitError::TooSlow => "the request body arrived too slowly",
                        LimitError::TooLarge => "the request body is larger than this site accepts",
                    },
                };
                self.refuse(client, back, refusal).await;
                self.access_log(&Access {
                    client: client.who,
                    method: text(out, &request.method),
                    path: text(out, &request.target),
                    status: limit.status(),
                    server: None,
                    attempts: 0,
                    started: client.started,
                    request_id: rewrite.request_id,
                    version: version(request),
                    bytes: None,
                    headers: RequestHeaders::H1(out, request),
                });
                Err(AttemptError::Client)
            }
        }
    }

    fn hsts_for(&self, secure: bool) -> Option<&[u8]> {
        if secure {
            self.hsts.as_ref().map(http::HeaderValue::as_bytes)
        } else {
            None
        }
    }

    /// Answers with an error of the lb's own (plain text), logs it, and settles what is left
    /// of the request body (`finish_body`). Returns whether the connection stays open.
    async fn answer_error<C>(
        &self,
        client: &mut Client<C>,
        back: &mut Vec<u8>,
        out: &[u8],
        request: &Request,
        error: &LocalError<'_>,
        keep: bool,
    ) -> bool
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let retry_after = error.retry_after.map(|s| format!("Retry-After: {s}"));
        let headers: Vec<&[u8]> = retry_after.iter().map(|h| h.as_bytes()).collect();
        let local = Local {
            status: error.status,
            content_type: "text/plain; charset=utf-8",
            body: error.body.as_bytes(),
            headers: &headers,
            request_id: error.request_id,
            hsts: self.hsts_for(client.secure),
        };
        let connection = Persistence::of(keep, request.http10);
        let kept = client
            .answer(back, &local, request.is_head, connection)
            .await;
        self.access_log(&Access {
            client: client.who,
            method: text(out, &request.method),
            path: text(out, &request.target),
            status: error.status.as_u16(),
            server: error.server,
            attempts: error.attempts,
            started: client.started,
            request_id: error.request_id,
            version: version(request),
            bytes: Some(if request.is_head {
                0
            } else {
                error.body.len() as u64
            }),
            headers: RequestHeaders::H1(out, request),
        });
        client.finish_body(kept).await
    }
}

/// An error answer of the lb's own, and what its access log line says.
struct LocalError<'a> {
    status: StatusCode,
    body: &'a str,
    retry_after: Option<u64>,
    server: Option<&'a Server>,
    attempts: u32,
    request_id: &'a [u8],
}

/// A request a per-client limit refuses before any server sees it.
struct OverLimit {
    status: StatusCode,
    text: std::borrow::Cow<'static, str>,
    retry_after: Option<u64>,
}

impl Proxy {
    /// The client's request rate (429 with `Retry-After`), then the body's declared size (413).
    fn over_limit(&self, client: std::net::IpAddr, request: &Request) -> Option<OverLimit> {
        if let Err(wait) = self.clients.request(client) {
            return Some(OverLimit {
                status: StatusCode::TOO_MANY_REQUESTS,
                text: TOO_MANY_TEXT.into(),
                retry_after: Some(retry_after(wait)),
            });
        }
        let max = self.clients.limits().max_body;
        match request.body {
            Framing::Length(n) if n > max => {
                self.clients.metrics().limited("body_size").inc();
                Some(OverLimit {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    text: crate::proxy::too_large_text(max).into(),
                    retry_after: None,
                })
            }
            _ => None,
        }
    }
}

/// The request's protocol version, for the access log.
fn version(request: &Request) -> &'static str {
    if request.http10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    }
}
