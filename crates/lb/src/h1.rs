//! The HTTP/1 request path (plain HTTP, and HTTPS when ALPN picks http/1.1): HAProxy's model of
//! one stream over two connections. The client connection's task reads a request head, rewrites
//! it in one pass, writes it with the body to a pooled server connection while it reads the
//! response head (so an early answer is heard), and moves the response body back, all without a
//! header map, a channel or a second task. The codec, the pool and the retry rule are
//! `webstack_http1`'s; HTTP/2 clients go through hyper (`proxy.rs`) onto the same pool.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use webstack_common::{HttpOptions, Shutdown};
use webstack_http1::body::{
    self, BODY_TIMEOUT, BUFFER, BodyState, LINGER_BYTES, LINGER_IDLE, LINGER_TIME, RelayError,
};
use webstack_http1::exchange::{self, HeadOutcome, PumpError, Sent};
use webstack_http1::head::{
    self, Forwarding, Framing, Persistence, Refusal, Request, Response, ResponseRewrite,
};
use webstack_http1::pool::Conn;
use webstack_http1::retry::{Attempts, Failure};
use webstack_http1::{date, tunnel};

use crate::limits::{LimitError, Paced};
use crate::proxy::{
    Access, AttemptError, Forwarded, PlainHttpAnswer, Proxy, REDIRECT_TEXT, TOO_MANY_TEXT,
    retry_after,
};
use crate::server::{ActiveGuard, Server};

/// A request body the lb did not need (an early or local answer came first) is read and
/// dropped to keep the connection open when at most this much of it is left; a longer one
/// closes the connection.
const DISCARD_MAX: u64 = 1024 * 1024;
/// How long the rest of such a body may take to arrive.
const DISCARD_TIME: Duration = Duration::from_secs(2);
/// How long a connection accepted just before a drain may take to send its first request.
const FRESH_GRACE: Duration = Duration::from_secs(1);

/// The client side of one connection.
struct Client<C> {
    /// The connection, its request bodies held to the floor rate and size bound.
    io: Paced<C>,
    /// Bytes read and not yet used: the rest of a request, or pipelined ones.
    buf: BytesMut,
    peer: SocketAddr,
    /// The current request's client: `peer`, or who a trusted proxy's `X-Forwarded-For` names.
    who: std::net::IpAddr,
    /// When the current request's head was read.
    started: Instant,
    secure: bool,
    /// What is still to come of the current request's body: the relay to a server keeps it
    /// exact, so after any answer the rest can be read and dropped (or the connection closed).
    body: BodyState,
    /// The request asked `Expect: 100-continue` and has had no `100` yet: its client may not
    /// send the body at all, so an answer of ours closes the connection rather than wait for it.
    continue_pending: bool,
    /// The stream is no longer at a request boundary (a refused request, a request body cut
    /// short or left unread): answer, then close, reading what the client still sends for a
    /// while so the answer is not lost to a TCP reset (nginx's lingering close).
    broken: bool,
}

enum Next {
    Request(Request),
    Close,
    Refuse(Refusal),
}

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
    {
        let mut client = Client {
            io: Paced::new(io),
            buf: BytesMut::with_capacity(BUFFER),
            peer,
            who: peer.ip(),
            started: Instant::now(),
            secure,
            body: BodyState::Done,
            continue_pending: false,
            broken: false,
        };
        // Reused for every request of the connection: the forwarded head, the response head.
        let mut out = Vec::with_capacity(1024);
        let mut back = Vec::with_capacity(1024);
        let stop = shutdown.triggered();
        let mut stop = std::pin::pin!(stop);
        let mut fresh = true;
        loop {
            match read_request(&mut client, &mut out, &options, &mut stop, fresh).await {
                Next::Request(request) => {
                    fresh = false;
                    let draining = shutdown.is_triggered();
                    let keep = self
                        .exchange(&mut client, &request, &mut out, &mut back, draining)
                        .await;
                    client.io.disarm();
                    if !keep || client.broken || shutdown.is_triggered() {
                        break;
                    }
                }
                Next::Close => break,
                Next::Refuse(refusal) => {
                    self.refuse(&mut client, &mut back, refusal).await;
                    break;
                }
            }
        }
        // A TLS client gets its close_notify; a client that does not read gets no more time.
        let _ = tokio::time::timeout(Duration::from_secs(1), client.io.shutdown()).await;
        if client.broken {
            let mut rest = (&mut client.io).take(LINGER_BYTES);
            let drain = async {
                loop {
                    client.buf.clear();
                    match tokio::time::timeout(LINGER_IDLE, rest.read_buf(&mut client.buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        }
    }

    /// Answers a request that cannot be served with its status and reason; the connection
    /// closes after it.
    async fn refuse<C>(&self, client: &mut Client<C>, back: &mut Vec<u8>, refusal: Refusal)
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        client.broken = true;
        let status = StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
        let text = refusal.text();
        let id = self.request_ids.next_bytes();
        let local = Local {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes(),
            location: None,
            retry_after: None,
            request_id: &id,
        };
        self.answer_local(client, back, &local, false, Persistence::Close)
            .await;
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
        client.body = BodyState::new(request.body);
        client.continue_pending =
            request.expect_continue && !request.http10 && client.buf.is_empty();
        let who = self.client_of(client.peer.ip(), || {
            std::borrow::Cow::Borrowed(&out[request.forwarded_for.clone()])
        });
        client.who = who;
        client.started = started;
        if let Some(refused) = self.over_limit(who, request) {
            // The body is not needed: a short one is dropped, a long one closes.
            let keep = client_keep
                && refused.status != StatusCode::PAYLOAD_TOO_LARGE
                && !client.continue_pending
                && discardable(&client.body);
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
                let local = Local {
                    status,
                    content_type,
                    body,
                    location,
                    retry_after: None,
                    request_id: &request_id,
                };
                // The body is not needed: a short one is dropped, a long one closes.
                let keep = client_keep && !client.continue_pending && discardable(&client.body);
                let connection = Persistence::of(keep, request.http10);
                let kept = self
                    .answer_local(client, back, &local, request.is_head, connection)
                    .await;
                return self.finish_body(client, kept).await;
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
                let keep = client_keep
                    && !client.broken
                    && !client.continue_pending
                    && discardable(&client.body);
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
            self.tunnel(client, &mut answer, head).await;
            false
        } else {
            let mut response_body = BodyState::new(answer.response.body);
            let sent = body::relay(
                &mut answer.conn.stream,
                &mut answer.conn.buf,
                &mut response_body,
                answer.response.dechunk,
                &mut client.io,
                head,
                BODY_TIMEOUT,
            )
            .await;
            let sent = match sent {
                Ok(()) => body::flush(&mut client.io, BODY_TIMEOUT)
                    .await
                    .map_err(RelayError::Write),
                Err(error) => Err(error),
            };
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
            self.finish_body(client, keep).await
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
        });
        keep
    }

    /// After a 101: the head to the client, then bytes both ways until either side is done.
    async fn tunnel<C>(&self, client: &mut Client<C>, answer: &mut Answer, head: &[u8])
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let conn = &mut answer.conn;
        // What either side sent right after its head belongs to the new protocol.
        let ready = body::write_two(&mut client.io, head, &conn.buf, BODY_TIMEOUT).await;
        let ready = ready.is_ok()
            && body::flush(&mut client.io, BODY_TIMEOUT).await.is_ok()
            && body::write_two(&mut conn.stream, &client.buf, &[], BODY_TIMEOUT)
                .await
                .is_ok();
        conn.buf.clear();
        client.buf.clear();
        if !ready {
            return;
        }
        if let Err(error) = tunnel::tunnel(
            &mut client.io,
            &mut conn.stream,
            self.config.timeouts.tunnel,
        )
        .await
        {
            tracing::debug!(client = %client.peer, %error, "upgraded connection ended");
        }
    }

    /// Sends the request to `server` and reads its response head. A pooled connection the
    /// server had closed gets the (replayable) request again on a fresh one.
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
        let connect = || async {
            self.pool
                .connect(server.config.addr)
                .await
                .map_err(|error| {
                    AttemptError::Server(Failure::Unreachable {
                        connect: true,
                        error,
                    })
                })
        };
        let mut conn = match self.pool.checkout(server.index, replayable) {
            Some(conn) => conn,
            None => connect().await?,
        };
        loop {
            match self
                .send_once(client, request, &mut conn, out, back, rewrite)
                .await
            {
                Ok((response, sent)) => return Ok((conn, response, sent)),
                Err(AttemptError::Server(failure))
                    if conn.worth_a_fresh_try(replayable, &failure) =>
                {
                    conn = connect().await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes the request (head and body) on `conn` while reading the response head into
    /// `back`. Returns the head and how much of the request went out (`client.body` says what
    /// is left of the client's body).
    async fn send_once<C>(
        &self,
        client: &mut Client<C>,
        request: &Request,
        conn: &mut Conn,
        out: &[u8],
        back: &mut Vec<u8>,
        rewrite: &ResponseRewrite<'_>,
    ) -> Result<(Response, Sent), AttemptError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let server_timeout = self.config.timeouts.server;
        if request.bodyless() {
            return exchange::send_bodyless(conn, out, back, rewrite, server_timeout, BODY_TIMEOUT)
                .await
                .map(|response| (response, Sent::Complete))
                .map_err(AttemptError::Server);
        }

        if client.continue_pending {
            let sent = body::write_two(
                &mut client.io,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &[],
                BODY_TIMEOUT,
            )
            .await;
            if sent.is_err() || body::flush(&mut client.io, BODY_TIMEOUT).await.is_err() {
                return Err(AttemptError::Client);
            }
            client.continue_pending = false;
        }
        let outcome = {
            let (mut from_server, mut to_server) = conn.stream.split();
            let pump = async {
                body::relay(
                    &mut client.io,
                    &mut client.buf,
                    &mut client.body,
                    false,
                    &mut to_server,
                    out,
                    BODY_TIMEOUT,
                )
                .await
                .map_err(|error| match error {
                    RelayError::Write(error) => PumpError::Write(error),
                    other => PumpError::Source(other),
                })
            };
            exchange::response_head(
                pump,
                &mut from_server,
                &mut conn.buf,
                back,
                rewrite,
                server_timeout,
            )
            .await
        };
        match outcome {
            HeadOutcome::Response(mut response, sent) => {
                // An early answer keeps the client connection only if the rest of the body is
                // short enough to be read and dropped.
                if sent == Sent::Partial && rewrite.client_keep_alive && !discardable(&client.body)
                {
                    let closing = ResponseRewrite {
                        client_keep_alive: false,
                        ..*rewrite
                    };
                    if let Ok(Some(again)) = head::parse_response(&conn.buf, back, &closing) {
                        response = again;
                    }
                }
                conn.buf.advance(response.head_len);
                Ok((response, sent))
            }
            HeadOutcome::Failed(failure) => {
                // Part of the body may be unread: this client connection cannot go on.
                client.broken |= !client.body.is_done();
                Err(AttemptError::Server(failure))
            }
            HeadOutcome::Source(RelayError::Malformed(body::Malformed(what))) => {
                let refusal = Refusal {
                    status: 400,
                    reason: what,
                };
                self.refuse(client, back, refusal).await;
                Err(AttemptError::Client)
            }
            HeadOutcome::Source(RelayError::Read(error)) if LimitError::of(&error).is_some() => {
                let limit = LimitError::of(&error).expect("checked");
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
                });
                Err(AttemptError::Client)
            }
            HeadOutcome::Source(error) => {
                tracing::debug!(client = %client.peer, %error, "client went away during the request body");
                Err(AttemptError::Client)
            }
        }
    }

    /// After an answer, the rest of the request body nobody read: none left, the connection
    /// goes on as `keep` says; a short rest is read and dropped (within `DISCARD_MAX` bytes and
    /// `DISCARD_TIME`) to keep it; otherwise, or when that fails, it is closed with a lingering
    /// read (`broken`). Returns whether the connection stays open.
    async fn finish_body<C>(&self, client: &mut Client<C>, keep: bool) -> bool
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        if client.body.is_done() {
            return keep;
        }
        if !keep {
            client.broken = true;
            return false;
        }
        let done = tokio::time::timeout(
            DISCARD_TIME,
            body::discard(
                &mut client.io,
                &mut client.buf,
                &mut client.body,
                DISCARD_MAX,
                BODY_TIMEOUT,
            ),
        )
        .await
        .unwrap_or(false);
        client.broken |= !done;
        done
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
        let local = Local {
            status: error.status,
            content_type: "text/plain; charset=utf-8",
            body: error.body.as_bytes(),
            location: None,
            retry_after: error.retry_after,
            request_id: error.request_id,
        };
        let connection = Persistence::of(keep, request.http10);
        let kept = self
            .answer_local(client, back, &local, request.is_head, connection)
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
        });
        self.finish_body(client, kept).await
    }

    /// Writes a response of the lb's own. Returns whether the connection stays open.
    async fn answer_local<C>(
        &self,
        client: &mut Client<C>,
        back: &mut Vec<u8>,
        local: &Local<'_>,
        is_head: bool,
        connection: Persistence,
    ) -> bool
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        use std::io::Write;
        back.clear();
        let _ = write!(
            back,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            local.status.as_u16(),
            local.status.canonical_reason().unwrap_or(""),
            local.content_type,
            local.body.len()
        );
        date::push_header(back);
        if local.status.is_server_error() {
            back.extend_from_slice(b"Cache-Control: no-store\r\n");
        }
        if let Some(location) = local.location {
            let _ = write!(back, "Location: {location}\r\n");
        }
        if let Some(seconds) = local.retry_after {
            let _ = write!(back, "Retry-After: {seconds}\r\n");
        }
        head::finish_head(
            back,
            local.request_id,
            self.hsts_for(client.secure),
            connection,
        );
        let body = if is_head { &[][..] } else { local.body };
        body::write_two(&mut client.io, back, body, BODY_TIMEOUT)
            .await
            .is_ok()
            && body::flush(&mut client.io, BODY_TIMEOUT).await.is_ok()
            && connection != Persistence::Close
    }
}

/// Whether the rest of a body is short enough to read and drop instead of closing.
fn discardable(rest: &BodyState) -> bool {
    match rest {
        BodyState::Done => true,
        BodyState::Length(left) => *left <= DISCARD_MAX,
        BodyState::Chunked(_) | BodyState::Close => false,
    }
}

/// A range of the forwarded head as text, for the access log.
fn text<'a>(out: &'a [u8], range: &std::ops::Range<usize>) -> &'a str {
    std::str::from_utf8(&out[range.clone()]).unwrap_or("-")
}

/// A response the lb writes itself.
struct Local<'a> {
    status: StatusCode,
    content_type: &'a str,
    body: &'a [u8],
    location: Option<&'a str>,
    /// `Retry-After` in seconds (a 429).
    retry_after: Option<u64>,
    request_id: &'a [u8],
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

/// Reads the next request head within the header timeout (which also bounds an idle
/// keep-alive connection). An idle connection closes at once when the lb drains, but a `fresh`
/// one (accepted, no request yet) gets `FRESH_GRACE` for its request: it was accepted just
/// before the drain and its request is on its way (after the handshake, for TLS).
async fn read_request<C, S>(
    client: &mut Client<C>,
    out: &mut Vec<u8>,
    options: &HttpOptions,
    stop: &mut S,
    fresh: bool,
) -> Next
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()> + Unpin,
{
    let forwarding = Forwarding::edge(client.peer.ip(), client.secure);
    let mut deadline = tokio::time::Instant::now() + options.header_read_timeout;
    // `stop` fired while this fresh connection waits for its request (polled once only).
    let mut stopped = false;
    loop {
        if !client.buf.is_empty() {
            match head::parse_request(&client.buf, out, &forwarding) {
                Ok(Some(request)) => {
                    client.buf.advance(request.head_len);
                    return Next::Request(request);
                }
                Ok(None) if client.buf.len() >= options.max_header_bytes => {
                    // No line end yet: the request line alone is too long (nginx: 414).
                    let refusal = if client.buf.contains(&b'\n') {
                        Refusal {
                            status: 431,
                            reason: "request head too large",
                        }
                    } else {
                        Refusal {
                            status: 414,
                            reason: "request target too long",
                        }
                    };
                    return Next::Refuse(refusal);
                }
                Ok(None) => {}
                Err(refusal) => return Next::Refuse(refusal),
            }
        }
        let idle = client.buf.is_empty();
        let read = tokio::select! {
            biased;
            read = tokio::time::timeout_at(
                deadline,
                body::read_some(&mut client.io, &mut client.buf, BUFFER),
            ) => read,
            () = &mut *stop, if idle && !stopped => {
                if !fresh {
                    return Next::Close;
                }
                stopped = true;
                deadline = deadline.min(tokio::time::Instant::now() + FRESH_GRACE);
                continue;
            }
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Next::Close,
            Err(_) if idle => return Next::Close,
            Err(_) => {
                return Next::Refuse(Refusal {
                    status: 408,
                    reason: "the request head took too long",
                });
            }
        }
    }
}
