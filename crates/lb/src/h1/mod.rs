//! The HTTP/1 request path (plain HTTP, and HTTPS when ALPN picks http/1.1): HAProxy's model of
//! one stream over two connections. The client connection's task reads a request head, rewrites
//! it in one pass (`head`), writes it with the body to a pooled server connection (`pool`),
//! reads the response head and moves the body back (`body`), all without a header map, a
//! channel or a second task. HTTP/2 clients go through hyper (`proxy.rs`).

pub mod body;
pub mod head;
pub mod pool;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use webstack_common::{HttpOptions, Shutdown};

use crate::proxy::{Failure, PlainHttpAnswer, Proxy, REDIRECT_TEXT, Tried};
use crate::server::{ActiveGuard, Server};
use body::{BUFFER, RelayError};
use head::{Forwarding, Refusal, Request, Response, ResponseRewrite};
use pool::Conn;

/// A body read or write that makes no progress for this long ends the exchange (HAProxy's
/// `timeout client` / `timeout server` for data).
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest response head accepted from a server.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// The client side of one connection.
struct Client<C> {
    io: C,
    /// Bytes read and not yet used: the rest of a request, or pipelined ones.
    buf: BytesMut,
    peer: SocketAddr,
    secure: bool,
    /// The stream is no longer at a request boundary (a refused request, a request body cut
    /// short): answer, then close, reading what the client still sends for a moment so the
    /// answer is not lost to a TCP reset (nginx's lingering close).
    broken: bool,
}

/// How long, and how much, a broken connection is read and discarded before it closes.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1024 * 1024;

enum Next {
    Request(Request),
    Close,
    Refuse(Refusal),
}

/// Why one attempt on one server failed.
enum AttemptError {
    /// A server-side failure before any response: decides retry and status.
    Server(Failure),
    /// The client went away or sent a broken body: nothing to answer (or a 400 was sent).
    Client,
}

/// What the lb sends back for a request.
struct Answer {
    server: Arc<Server>,
    conn: Conn,
    response: Response,
    /// The rewritten response head (owned only when the answer was held back as a fallback).
    held_head: Option<Vec<u8>>,
    _guard: ActiveGuard,
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
            io,
            buf: BytesMut::with_capacity(BUFFER),
            peer,
            secure,
            broken: false,
        };
        // Reused for every request of the connection: the forwarded head, the response head.
        let mut out = Vec::with_capacity(1024);
        let mut back = Vec::with_capacity(1024);
        let stop = shutdown.triggered();
        let mut stop = std::pin::pin!(stop);
        loop {
            match read_request(&mut client, &mut out, &options, &mut stop).await {
                Next::Request(request) => {
                    let draining = shutdown.is_triggered();
                    let keep = self
                        .exchange(&mut client, &request, &mut out, &mut back, draining)
                        .await;
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
            let drain = async {
                let mut discarded = 0;
                while discarded < LINGER_BYTES {
                    client.buf.clear();
                    match client.io.read_buf(&mut client.buf).await {
                        Ok(n) if n > 0 => discarded += n,
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER, drain).await;
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
        let text = format!(
            "{} {}: {}.\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            refusal.reason
        );
        let id = self.request_ids.next_bytes();
        let local = Local {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes(),
            location: None,
            request_id: &id,
        };
        self.answer_local(client, back, &local, false, false, false)
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
                    request_id: &request_id,
                };
                return self
                    .answer_local(
                        client,
                        back,
                        &local,
                        request.is_head,
                        client_keep,
                        request.http10,
                    )
                    .await
                    && self.skip_body(client, request).await;
            }
        }

        let hsts = self.hsts_for(client.secure);
        let rewrite = ResponseRewrite {
            request_is_head: request.is_head,
            client_keep_alive: client_keep,
            client_http10: request.http10,
            request_id: &request_id,
            hsts,
        };
        // Only a request without a body can be sent twice; only an idempotent one should be.
        let replayable = request.bodyless() && request.idempotent;
        let mut tried = Tried::default();
        let mut last_failure = None;
        // A 502/503/504 from a server whose request could go elsewhere: kept, and sent only
        // if no other server can take the request.
        let mut fallback: Option<Answer> = None;
        let answer = loop {
            let candidate = if tried.count > self.config.retries {
                None
            } else {
                self.balancer.select(&|s| !tried.contains(s.index))
            };
            let Some(server) = candidate else {
                break fallback.ok_or((None, last_failure));
            };
            if tried.count > 0 {
                self.metrics.retries.inc();
            }
            tried.insert(server.index);
            let guard = server.begin();
            // The forwarded head for this server: a Host if the client sent none (HTTP/1.0).
            out.truncate(base);
            if request.host.is_none() {
                out.extend_from_slice(b"Host: ");
                out.extend_from_slice(server.authority.as_str().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
            match self
                .attempt(client, request, &server, out, back, &rewrite, replayable)
                .await
            {
                Ok((conn, response)) if replayable && is_retryable(response.status) => {
                    // HAProxy's `retry-on 502 503 504`.
                    tracing::warn!(server = %server.config.name, status = response.status, "server answered an error, trying another");
                    server.recheck.notify_one();
                    fallback = Some(Answer {
                        server,
                        conn,
                        response,
                        held_head: Some(back.clone()),
                        _guard: guard,
                    });
                }
                Ok((conn, response)) => {
                    break Ok(Answer {
                        server,
                        conn,
                        response,
                        held_head: None,
                        _guard: guard,
                    });
                }
                Err(AttemptError::Client) => return false,
                // Nothing was sent after a failed connect, so any request may go on; after
                // no response, only a replayable one.
                Err(AttemptError::Server(Failure::Unreachable { connect, error }))
                    if connect || replayable =>
                {
                    server.recheck.notify_one();
                    tracing::warn!(server = %server.config.name, %error, "server unreachable or no response, trying another");
                    last_failure = Some(Failure::Unreachable { connect, error });
                }
                Err(AttemptError::Server(failure)) => {
                    if let Failure::Unreachable { .. } = failure {
                        server.recheck.notify_one();
                    }
                    break Err((Some(server), Some(failure)));
                }
            }
        };

        let (mut answer, waited) = match answer {
            Ok(answer) => (answer, started.elapsed()),
            Err((server, failure)) => {
                let (status, kind) = self.failure_status(failure.as_ref());
                self.metrics.error(kind);
                if let Some(server) = &server {
                    server.responses(status.as_u16()).inc();
                }
                let local = Local {
                    status,
                    content_type: "text/plain; charset=utf-8",
                    body: crate::proxy::error_text(status).as_bytes(),
                    location: None,
                    request_id: &request_id,
                };
                let keep = self
                    .answer_local(
                        client,
                        back,
                        &local,
                        request.is_head,
                        client_keep && !client.broken,
                        request.http10,
                    )
                    .await;
                self.access_log(
                    client,
                    request,
                    out,
                    status.as_u16(),
                    server.as_deref(),
                    &tried,
                    started,
                    &request_id,
                );
                return keep;
            }
        };

        let head = answer.held_head.as_deref().unwrap_or(back);
        let sent = body::relay(
            &mut answer.conn.stream,
            &mut answer.conn.buf,
            answer.response.body,
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
        let server = &answer.server;
        match &sent {
            Ok(()) if answer.response.reusable && answer.conn.buf.is_empty() => {
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
        server.responses(answer.response.status).inc();
        server.metrics.duration.observe(waited.as_secs_f64());
        self.access_log(
            client,
            request,
            out,
            answer.response.status,
            Some(server),
            &tried,
            started,
            &request_id,
        );
        answer.response.keep_alive && sent.is_ok()
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
    ) -> Result<(Conn, Response), AttemptError>
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
                        error: error.into(),
                    })
                })
        };
        let mut conn = match self.pool.checkout(server.index) {
            Some(conn) => conn,
            None => connect().await?,
        };
        loop {
            match self
                .send_once(client, request, &mut conn, out, back, rewrite)
                .await
            {
                Ok(response) => return Ok((conn, response)),
                Err(AttemptError::Server(Failure::Unreachable { .. }))
                    if conn.reused && replayable =>
                {
                    conn = connect().await?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes the request (head and body) on `conn` and reads the response head into `back`.
    async fn send_once<C>(
        &self,
        client: &mut Client<C>,
        request: &Request,
        conn: &mut Conn,
        out: &[u8],
        back: &mut Vec<u8>,
        rewrite: &ResponseRewrite<'_>,
    ) -> Result<Response, AttemptError>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let unreachable = |error: std::io::Error| {
            AttemptError::Server(Failure::Unreachable {
                connect: false,
                error: error.into(),
            })
        };
        if request.bodyless() {
            body::write_two(&mut conn.stream, out, &[], BODY_TIMEOUT)
                .await
                .map_err(unreachable)?;
        } else {
            if request.expect_continue && !request.http10 && client.buf.is_empty() {
                body::write_two(
                    &mut client.io,
                    b"HTTP/1.1 100 Continue\r\n\r\n",
                    &[],
                    BODY_TIMEOUT,
                )
                .await
                .map_err(|_| AttemptError::Client)?;
                body::flush(&mut client.io, BODY_TIMEOUT)
                    .await
                    .map_err(|_| AttemptError::Client)?;
            }
            let sent = body::relay(
                &mut client.io,
                &mut client.buf,
                request.body,
                false,
                &mut conn.stream,
                out,
                BODY_TIMEOUT,
            )
            .await;
            match sent {
                Ok(()) => {}
                Err(RelayError::Write(error)) => {
                    // Part of the body may be unread: this connection cannot go on.
                    client.broken = true;
                    return Err(unreachable(error));
                }
                Err(RelayError::Read(error)) => {
                    tracing::debug!(client = %client.peer, %error, "client went away during the request body");
                    return Err(AttemptError::Client);
                }
                Err(RelayError::Malformed(body::Malformed(what))) => {
                    let refusal = Refusal {
                        status: 400,
                        reason: what,
                    };
                    self.refuse(client, back, refusal).await;
                    return Err(AttemptError::Client);
                }
            }
        }

        let deadline = tokio::time::Instant::now() + self.config.timeouts.server;
        let mut interim = false;
        loop {
            if !conn.buf.is_empty() {
                match head::parse_response(&conn.buf, back, rewrite) {
                    // Interim responses (103 Early Hints; 100 cannot come, Expect is not
                    // forwarded) are dropped. 101 cannot be honoured: Upgrade is not forwarded.
                    Ok(Some(response)) if response.status == 101 => {
                        return Err(AttemptError::Server(Failure::Invalid(
                            "101 Switching Protocols without an upgrade",
                        )));
                    }
                    Ok(Some(response)) if response.status < 200 => {
                        conn.buf.advance(response.head_len);
                        interim = true;
                        continue;
                    }
                    Ok(Some(response)) => {
                        conn.buf.advance(response.head_len);
                        return Ok(response);
                    }
                    Ok(None) if conn.buf.len() > MAX_RESPONSE_HEAD => {
                        return Err(AttemptError::Server(Failure::Invalid(
                            "response head too large",
                        )));
                    }
                    Ok(None) => {}
                    Err(what) => return Err(AttemptError::Server(Failure::Invalid(what))),
                }
            }
            let nothing_yet = conn.buf.is_empty() && !interim;
            let read = tokio::time::timeout_at(
                deadline,
                body::read_some(&mut conn.stream, &mut conn.buf, BUFFER),
            )
            .await;
            match read {
                Err(_) => return Err(AttemptError::Server(Failure::Timeout)),
                Ok(Ok(n)) if n > 0 => {}
                // Closed or reset before a response: the server answered nothing.
                Ok(result) if nothing_yet => {
                    let error = result
                        .err()
                        .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
                    return Err(unreachable(error));
                }
                Ok(_) => {
                    return Err(AttemptError::Server(Failure::Invalid(
                        "connection closed in the response head",
                    )));
                }
            }
        }
    }

    /// The request body of a request answered locally, read and dropped so the connection can
    /// serve the next one. Returns whether it could.
    async fn skip_body<C>(&self, client: &mut Client<C>, request: &Request) -> bool
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        if request.bodyless() {
            return true;
        }
        let mut sink = tokio::io::sink();
        body::relay(
            &mut client.io,
            &mut client.buf,
            request.body,
            false,
            &mut sink,
            &[],
            BODY_TIMEOUT,
        )
        .await
        .is_ok()
    }

    fn hsts_for(&self, secure: bool) -> Option<&[u8]> {
        if secure {
            self.hsts.as_ref().map(http::HeaderValue::as_bytes)
        } else {
            None
        }
    }

    /// Writes a response of the lb's own. Returns whether the connection stays open.
    async fn answer_local<C>(
        &self,
        client: &mut Client<C>,
        back: &mut Vec<u8>,
        local: &Local<'_>,
        is_head: bool,
        keep_alive: bool,
        http10: bool,
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
        if local.status.is_server_error() {
            back.extend_from_slice(b"Cache-Control: no-store\r\n");
        }
        if let Some(location) = local.location {
            let _ = write!(back, "Location: {location}\r\n");
        }
        head::finish_head(
            back,
            local.request_id,
            self.hsts_for(client.secure),
            keep_alive,
            http10,
        );
        let body = if is_head { &[][..] } else { local.body };
        body::write_two(&mut client.io, back, body, BODY_TIMEOUT)
            .await
            .is_ok()
            && body::flush(&mut client.io, BODY_TIMEOUT).await.is_ok()
            && keep_alive
    }

    #[allow(clippy::too_many_arguments)]
    fn access_log<C>(
        &self,
        client: &Client<C>,
        request: &Request,
        out: &[u8],
        status: u16,
        server: Option<&Server>,
        tried: &Tried,
        started: Instant,
        request_id: &[u8],
    ) {
        if !self.config.access_log {
            return;
        }
        let text = |range: &std::ops::Range<usize>| {
            std::str::from_utf8(&out[range.clone()]).unwrap_or("-")
        };
        tracing::info!(
            target: "access",
            client = %client.peer.ip(),
            method = text(&request.method),
            path = text(&request.target),
            status,
            server = server.map_or("-", |s| s.config.name.as_str()),
            attempts = tried.count,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            request_id = std::str::from_utf8(request_id).unwrap_or(""),
        );
    }
}

/// A response the lb writes itself.
struct Local<'a> {
    status: StatusCode,
    content_type: &'a str,
    body: &'a [u8],
    location: Option<&'a str>,
    request_id: &'a [u8],
}

fn is_retryable(status: u16) -> bool {
    StatusCode::from_u16(status).is_ok_and(crate::proxy::is_retryable_status)
}

/// Reads the next request head within the header timeout (which also bounds an idle
/// keep-alive connection). An idle connection closes at once when the lb drains.
async fn read_request<C, S>(
    client: &mut Client<C>,
    out: &mut Vec<u8>,
    options: &HttpOptions,
    stop: &mut S,
) -> Next
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: Future<Output = ()> + Unpin,
{
    let forwarding = Forwarding {
        client: client.peer.ip(),
        secure: client.secure,
    };
    let deadline = tokio::time::Instant::now() + options.header_read_timeout;
    loop {
        if !client.buf.is_empty() {
            match head::parse_request(&client.buf, out, &forwarding) {
                Ok(Some(request)) => {
                    client.buf.advance(request.head_len);
                    return Next::Request(request);
                }
                Ok(None) if client.buf.len() >= options.max_header_bytes => {
                    return Next::Refuse(Refusal {
                        status: 431,
                        reason: "request head too large",
                    });
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
            () = &mut *stop, if idle => return Next::Close,
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
