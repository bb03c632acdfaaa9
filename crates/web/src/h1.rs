//! One client connection of the web server: each request is refused (path guard), answered
//! from a static file, or forwarded to the app over a pooled keep-alive connection with the
//! lb's header rules (the lb's `X-Forwarded-Proto` and `X-Request-Id` kept,
//! `X-Webstack-Web-Host` set), early answers heard while the body goes out, and upgrades
//! (WebSocket) relayed.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::StatusCode;
use tokio::io::Interest;
use tokio::net::TcpStream;
use webstack_common::Shutdown;
use webstack_common::access_log::{Entry, Value};
use webstack_common::forward::X_WEBSTACK_WEB_HOST;
use webstack_http1::body::{self, BODY_TIMEOUT};
use webstack_http1::client::Target;
use webstack_http1::exchange::Sent;
use webstack_http1::head::{Forwarding, Persistence, Request, ResponseRewrite};
use webstack_http1::retry::Failure;
use webstack_http1::server::{ClientConn, HeadLimits, Local, Next, SendFailure, text};
use webstack_http1::stream::Endpoint;
use webstack_http1::{date, head, tunnel};

use crate::WebServer;
use crate::statics::{self, Coding, Conditions, Decision, Multipart};

type Client = ClientConn<TcpStream>;

/// The largest head a client may send (as the lb).
const MAX_HEAD: usize = 64 * 1024;

/// What one request became, for the metrics and the access log.
struct Outcome {
    handler: &'static str,
    status: u16,
    /// The connection stays open.
    keep: bool,
    bytes: Option<u64>,
}

impl WebServer {
    /// Serves one client connection until it closes, idles past the header timeout, or the
    /// server drains (the request in flight finishes first).
    pub(crate) async fn serve(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: Shutdown,
    ) {
        let mut client = ClientConn::new(stream, peer, false);
        let forwarding = Forwarding {
            client: peer.ip(),
            proto: None,
            keep_request_id: true,
            own_header: Some((
                X_WEBSTACK_WEB_HOST.as_str(),
                self.config.host_name.as_bytes(),
            )),
            upgrade: true,
        };
        let limits = HeadLimits {
            timeout: self.config.client_header_timeout,
            max_bytes: MAX_HEAD,
        };
        // The forwarded head, the response head, the request id: kept from one request to the
        // next only when the next is already buffered (pipelined), else released while the
        // connection waits (`release_idle`).
        let (mut out, mut back, mut id) = (Vec::new(), Vec::new(), Vec::new());
        let stop = shutdown.triggered();
        let mut stop = std::pin::pin!(stop);
        let mut fresh = true;
        loop {
            client.release_idle(&mut [&mut out, &mut back, &mut id]);
            match client
                .read_request(&mut out, &forwarding, limits, &mut stop, fresh)
                .await
            {
                Next::Request(request) => {
                    fresh = false;
                    webstack_http1::recycle::take_scratch(&mut back, 1024);
                    id.reserve(64);
                    let started = Instant::now();
                    client.begin(&request, started);
                    let keep_alive = request.keep_alive && !shutdown.is_triggered();
                    // Boxed: the exchange's state is allocated while a request is served, not
                    // carried by every idle keep-alive connection's task.
                    let outcome = Box::pin(self.exchange(
                        &mut client,
                        &request,
                        &mut out,
                        &mut back,
                        &mut id,
                        keep_alive,
                    ))
                    .await;
                    self.metrics.record(outcome.handler, outcome.status);
                    self.access_log(&client, &out, &request, &outcome, &id, started);
                    if !outcome.keep || client.broken || shutdown.is_triggered() {
                        break;
                    }
                }
                Next::Close => break,
                Next::Refuse(refusal) => {
                    let id = self.request_ids.next_bytes();
                    client.refuse(&mut back, &refusal, &id, None).await;
                    self.metrics.record("guard", refusal.status);
                    if let Some(log) = &self.access_log {
                        // No method or target: the head was not understood, or not all came.
                        log.log(&Entry {
                            client: client.peer.ip(),
                            method: "-",
                            target: "-",
                            version: "-",
                            status: refusal.status,
                            bytes: Some(refusal.text().len() as u64),
                            duration: client.waiting_since.elapsed(),
                            request_id: &id,
                            referer: None,
                            user_agent: None,
                            extra: &[("handler", Value::Text("guard"))],
                        });
                    }
                    break;
                }
            }
        }
        client.close().await;
    }

    /// One request, answered: refused, from a file, or by the app.
    async fn exchange(
        &self,
        client: &mut Client,
        request: &Request,
        out: &mut Vec<u8>,
        back: &mut Vec<u8>,
        id: &mut Vec<u8>,
        keep_alive: bool,
    ) -> Outcome {
        // The lb's request id, or one of our own for a request that did not come through it.
        id.clear();
        match &request.request_id {
            Some(range) => id.extend_from_slice(&out[range.clone()]),
            None => {
                let own = self.request_ids.next_bytes();
                id.extend_from_slice(&own);
                out.extend_from_slice(b"X-Request-Id: ");
                out.extend_from_slice(&own);
                out.extend_from_slice(b"\r\n");
            }
        }
        let target = text(out, &request.target);
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        if let Err(reason) = crate::guard::check_path(path) {
            tracing::debug!(path, reason, "refused request path");
            return self
                .own_answer(client, back, request, id, keep_alive, Own::BadPath)
                .await
                .with("guard");
        }
        if let Some(file) = statics::static_path(path) {
            // Checked by the guard: well-formed escapes of UTF-8, no dot segments. Empty
            // segments are dropped: `/static//a.css` is one file under one name (in the cache
            // too), as the kernel reads it.
            let decoded = if file.contains('%') {
                percent_encoding::percent_decode_str(file).decode_utf8_lossy()
            } else {
                std::borrow::Cow::Borrowed(file)
            };
            let mut file = String::with_capacity(decoded.len());
            for segment in decoded.split('/').filter(|s| !s.is_empty()) {
                file.push('/');
                file.push_str(segment);
            }
            return self
                .serve_file(client, back, out, request, id, keep_alive, &file)
                .await
                .with("static");
        }
        self.forward(client, request, out, back, id, keep_alive)
            .await
            .with("app")
    }

    /// A static file: GET and HEAD only, with its validators, conditions and ranges.
    #[allow(clippy::too_many_arguments)]
    async fn serve_file(
        &self,
        client: &mut Client,
        back: &mut Vec<u8>,
        out: &[u8],
        request: &Request,
        id: &[u8],
        keep_alive: bool,
        file: &str,
    ) -> Answered {
        let method = text(out, &request.method);
        if method != "GET" && method != "HEAD" {
            return self
                .own_answer(client, back, request, id, keep_alive, Own::MethodNotAllowed)
                .await;
        }
        let conditions = Conditions::of(out);
        // The file itself first (a missing one costs one `stat`); a precompressed sibling
        // counts only next to it, and only for a client that takes its coding.
        let Some(identity) = self.statics.open(file, Coding::Identity) else {
            return self
                .own_answer(client, back, request, id, keep_alive, Own::NotFound)
                .await;
        };
        let version = [(Coding::Brotli, "br"), (Coding::Gzip, "gzip")]
            .into_iter()
            .filter(|(_, name)| conditions.accepts(name))
            .find_map(|(coding, _)| self.statics.open(file, coding))
            .unwrap_or(identity);
        let ranges = !request.is_head;
        let (start, end, status) = match statics::decide(&version, &conditions, ranges) {
            Decision::Whole => (0, version.len, StatusCode::OK),
            Decision::Part { start, end } => (start, end, StatusCode::PARTIAL_CONTENT),
            Decision::Parts(parts) => {
                return self
                    .serve_parts(client, back, request, id, keep_alive, &version, &parts)
                    .await;
            }
            Decision::NotModified => {
                back.clear();
                back.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\n");
                back.extend_from_slice(&version.validators);
                return self
                    .finish_file_head(
                        client,
                        back,
                        request,
                        id,
                        keep_alive,
                        StatusCode::NOT_MODIFIED,
                    )
                    .await;
            }
            Decision::PreconditionFailed => {
                return self
                    .own_answer(
                        client,
                        back,
                        request,
                        id,
                        keep_alive,
                        Own::PreconditionFailed,
                    )
                    .await;
            }
            Decision::Unsatisfiable => {
                let own = Own::Unsatisfiable(version.len);
                return self
                    .own_answer(client, back, request, id, keep_alive, own)
                    .await;
            }
        };
        back.clear();
        head::push_status_line(
            back,
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
        );
        back.extend_from_slice(&version.headers);
        if status == StatusCode::PARTIAL_CONTENT {
            let _ = write!(
                back,
                "Content-Range: bytes {start}-{}/{}\r\n",
                end - 1,
                version.len
            );
        }
        back.extend_from_slice(b"Content-Length: ");
        head::push_decimal(back, end - start);
        back.extend_from_slice(b"\r\n");
        let keep = client.may_keep_after_answer(keep_alive);
        self.end_head(back, request, id, keep);
        let sent = if request.is_head {
            body::write_two(&mut client.io, back, &[], BODY_TIMEOUT).await
        } else if let Some(bytes) = &version.bytes {
            body::write_two(
                &mut client.io,
                back,
                &bytes[start as usize..end as usize],
                BODY_TIMEOUT,
            )
            .await
        } else if let Some(file) = &version.file {
            match send_more(&client.io, back).await {
                Ok(()) => send_file(&client.io, file, start, end - start).await,
                Err(error) => Err(error),
            }
        } else {
            Err(no_content())
        };
        let kept = finish_file(client, keep, sent).await;
        let bytes = if request.is_head { 0 } else { end - start };
        (status.as_u16(), kept, Some(bytes))
    }

    /// Several ranges of a file: 206 `multipart/byteranges` (nginx's layout; the boundary is a
    /// fresh id of ours, never the client's), each part from memory or with `sendfile`.
    #[allow(clippy::too_many_arguments)]
    async fn serve_parts(
        &self,
        client: &mut Client,
        back: &mut Vec<u8>,
        request: &Request,
        id: &[u8],
        keep_alive: bool,
        version: &statics::Version,
        parts: &[(u64, u64)],
    ) -> Answered {
        let boundary = self.request_ids.next_bytes();
        let boundary = String::from_utf8_lossy(&boundary);
        let body = Multipart::new(parts, version.len, version.content_type, &boundary);
        back.clear();
        back.extend_from_slice(b"HTTP/1.1 206 Partial Content\r\n");
        let _ = write!(
            back,
            "Content-Type: multipart/byteranges; boundary={boundary}\r\n"
        );
        back.extend_from_slice(&version.headers[version.content_type_line..]);
        let _ = write!(back, "Content-Length: {}\r\n", body.length);
        let keep = client.may_keep_after_answer(keep_alive);
        self.end_head(back, request, id, keep);
        let sent = if let Some(bytes) = &version.bytes {
            // A small file: the whole answer in one buffer, one write.
            let mut all = Vec::with_capacity(body.length as usize);
            for (head, (start, end)) in body.heads.iter().zip(parts) {
                all.extend_from_slice(head);
                all.extend_from_slice(&bytes[*start as usize..*end as usize]);
            }
            all.extend_from_slice(&body.closing);
            body::write_two(&mut client.io, back, &all, BODY_TIMEOUT).await
        } else if let Some(file) = &version.file {
            async {
                send_more(&client.io, back).await?;
                for (head, (start, end)) in body.heads.iter().zip(parts) {
                    send_more(&client.io, head).await?;
                    send_file(&client.io, file, *start, end - start).await?;
                }
                body::write_two(&mut client.io, &body.closing, &[], BODY_TIMEOUT).await
            }
            .await
        } else {
            Err(no_content())
        };
        let kept = finish_file(client, keep, sent).await;
        (206, kept, Some(body.length))
    }

    /// Ends a 304's head and writes it.
    async fn finish_file_head(
        &self,
        client: &mut Client,
        back: &mut Vec<u8>,
        request: &Request,
        id: &[u8],
        keep_alive: bool,
        status: StatusCode,
    ) -> Answered {
        let keep = client.may_keep_after_answer(keep_alive);
        self.end_head(back, request, id, keep);
        let sent = body::write_two(&mut client.io, back, &[], BODY_TIMEOUT).await;
        let kept = client.finish_body(keep && sent.is_ok()).await;
        (status.as_u16(), kept, Some(0))
    }

    /// The lines every head of ours ends with: date, server name, request id, connection.
    fn end_head(&self, back: &mut Vec<u8>, request: &Request, id: &[u8], keep: bool) {
        date::push_header(back);
        if let Some(name) = &self.served_by {
            back.extend_from_slice(b"X-Served-By: ");
            back.extend_from_slice(name.as_bytes());
            back.extend_from_slice(b"\r\n");
        }
        head::finish_head(back, id, None, Persistence::of(keep, request.http10));
    }

    /// An error answer of ours: a short plain-text page.
    async fn own_answer(
        &self,
        client: &mut Client,
        back: &mut Vec<u8>,
        request: &Request,
        id: &[u8],
        keep_alive: bool,
        own: Own,
    ) -> Answered {
        let (status, body) = own.status_and_text();
        let content_range;
        let served_by;
        let mut headers: [&[u8]; 2] = [&[], &[]];
        let mut n = 0;
        match own {
            Own::MethodNotAllowed => {
                headers[n] = b"Allow: GET, HEAD";
                n += 1;
            }
            Own::Unsatisfiable(len) => {
                content_range = format!("Content-Range: bytes */{len}");
                headers[n] = content_range.as_bytes();
                n += 1;
            }
            _ => {}
        }
        if let Some(name) = &self.served_by {
            served_by = format!("X-Served-By: {name}");
            headers[n] = served_by.as_bytes();
            n += 1;
        }
        let local = Local {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes(),
            headers: &headers[..n],
            request_id: id,
            hsts: None,
        };
        let keep = client.may_keep_after_answer(keep_alive);
        let kept = client
            .answer(
                back,
                &local,
                request.is_head,
                Persistence::of(keep, request.http10),
            )
            .await;
        let bytes = if request.is_head {
            0
        } else {
            body.len() as u64
        };
        (status.as_u16(), client.finish_body(kept).await, Some(bytes))
    }

    /// Forwards the request to the app and relays its answer.
    async fn forward(
        &self,
        client: &mut Client,
        request: &Request,
        out: &mut Vec<u8>,
        back: &mut Vec<u8>,
        id: &[u8],
        keep_alive: bool,
    ) -> Answered {
        let base = out.len();
        request.end_head_for(out, base, &self.authority);
        let rewrite = ResponseRewrite {
            request_is_head: request.is_head,
            client_keep_alive: keep_alive,
            client_http10: request.http10,
            request_id: id,
            hsts: None,
            request_upgrade: request.upgrade,
            timing: self.config.server_timing.then_some(("web", client.started)),
            own_header: self
                .served_by
                .as_ref()
                .map(|name| ("X-Served-By", name.as_bytes())),
        };
        let addr = self.app_endpoint();
        let target = Target {
            pool: &self.pool,
            server: 0,
            addr,
            replayable: request.bodyless() && request.idempotent,
        };
        let timeout = self.config.app_response_timeout;
        let sent = client
            .send_pooled(&target, request, out, back, &rewrite, timeout)
            .await;
        let (mut conn, response, sent) = match sent {
            Ok(answer) => answer,
            Err(SendFailure::Server(failure)) => {
                return self
                    .app_failed(client, back, request, id, keep_alive, &failure)
                    .await;
            }
            Err(SendFailure::Malformed(reason)) => {
                let refusal = head::Refusal {
                    status: 400,
                    reason,
                };
                client.refuse(back, &refusal, id, None).await;
                return (400, false, None);
            }
            Err(SendFailure::Client(error)) => {
                // Nothing was answered: nginx's 499 in the access log.
                tracing::debug!(client = %client.peer, %error, "the client's request body failed");
                return (499, false, None);
            }
        };
        if response.upgrade {
            client.tunnel(&mut conn, back, tunnel::TUNNEL_IDLE).await;
            return (response.status, false, None);
        }
        let relayed = client.relay_response(&mut conn, &response, back).await;
        match &relayed {
            Ok(()) if response.reusable && sent == Sent::Complete && conn.buf.is_empty() => {
                self.pool.checkin(0, conn);
            }
            Ok(()) => {}
            Err(webstack_http1::body::RelayError::Write(error)) => {
                tracing::debug!(client = %client.peer, %error, "client went away during the response");
            }
            Err(error) => tracing::warn!(app = %addr, %error, "response body cut short"),
        }
        // After an early answer the rest of the body is read and dropped to keep the
        // connection, or it closes.
        let keep = response.keep_alive && relayed.is_ok();
        let bytes = match response.body {
            webstack_http1::head::Framing::Length(n) => Some(n),
            _ => None,
        };
        (response.status, client.finish_body(keep).await, bytes)
    }

    /// Where the app listens: its Unix socket when it has one (its TCP port when nothing
    /// listens there: an app started with `unix_socket = false`), else its TCP address.
    fn app_endpoint(&self) -> Endpoint<'_> {
        match &self.config.app_socket {
            Some(path) => Endpoint::UnixOrTcp(path, self.config.app_addr),
            None => Endpoint::Tcp(self.config.app_addr),
        }
    }

    /// 502 or 504 when the app could not answer.
    async fn app_failed(
        &self,
        client: &mut Client,
        back: &mut Vec<u8>,
        request: &Request,
        id: &[u8],
        keep_alive: bool,
        failure: &Failure,
    ) -> Answered {
        tracing::warn!(error = %failure, app = %self.app_endpoint(), "app request failed");
        let own = match failure {
            Failure::Timeout => Own::AppTimeout,
            _ => Own::AppUnreachable,
        };
        self.own_answer(client, back, request, id, keep_alive, own)
            .await
    }

    fn access_log(
        &self,
        client: &Client,
        out: &[u8],
        request: &Request,
        outcome: &Outcome,
        id: &[u8],
        started: Instant,
    ) {
        let Some(log) = &self.access_log else {
            return;
        };
        log.log(&Entry {
            client: client.peer.ip(),
            method: text(out, &request.method),
            target: text(out, &request.target),
            version: if request.http10 {
                "HTTP/1.0"
            } else {
                "HTTP/1.1"
            },
            status: outcome.status,
            bytes: outcome.bytes,
            duration: started.elapsed(),
            request_id: id,
            referer: request.referer(out),
            user_agent: request.user_agent(out),
            extra: &[("handler", Value::Text(outcome.handler))],
        });
    }
}

/// What a handler did: status, whether the connection stays open, body bytes sent (when
/// known).
type Answered = (u16, bool, Option<u64>);

trait With {
    fn with(self, handler: &'static str) -> Outcome;
}

impl With for Answered {
    fn with(self, handler: &'static str) -> Outcome {
        Outcome {
            handler,
            status: self.0,
            keep: self.1,
            bytes: self.2,
        }
    }
}

/// The answers the web server writes itself.
#[derive(Clone, Copy)]
enum Own {
    BadPath,
    NotFound,
    MethodNotAllowed,
    PreconditionFailed,
    /// The file's length, for `Content-Range: bytes */len`.
    Unsatisfiable(u64),
    AppUnreachable,
    AppTimeout,
}

impl Own {
    fn status_and_text(self) -> (StatusCode, &'static str) {
        match self {
            Own::BadPath => (StatusCode::BAD_REQUEST, "400 Bad Request: invalid path.\n"),
            Own::NotFound => (StatusCode::NOT_FOUND, "404 Not Found: no such file.\n"),
            Own::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "405 Method Not Allowed: static files answer GET and HEAD only.\n",
            ),
            Own::PreconditionFailed => (
                StatusCode::PRECONDITION_FAILED,
                "412 Precondition Failed: the file is not the version the request names.\n",
            ),
            Own::Unsatisfiable(_) => (
                StatusCode::RANGE_NOT_SATISFIABLE,
                "416 Range Not Satisfiable: no requested range is within the file.\n",
            ),
            Own::AppUnreachable => (
                StatusCode::BAD_GATEWAY,
                "502 Bad Gateway: the application server could not be reached.\n",
            ),
            Own::AppTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "504 Gateway Timeout: the application server did not answer in time.\n",
            ),
        }
    }
}

/// Writes a head that the file's bytes follow at once, flagged `MSG_MORE` (nginx's
/// `tcp_nopush`): the kernel sends it in the first full segment with the data rather than
/// alone; a small segment before every large body keeps the client's receive window small.
async fn send_more(stream: &TcpStream, mut head: &[u8]) -> std::io::Result<()> {
    use rustix::net::SendFlags;
    while !head.is_empty() {
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::net::send(stream, head, SendFlags::MORE | SendFlags::NOSIGNAL)
                .map_err(Into::into)
        });
        match sent {
            Ok(n) => head = &head[n..],
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                writable(stream).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// After a file's answer: a client that went away is logged; whether the connection stays.
async fn finish_file(client: &mut Client, keep: bool, sent: std::io::Result<()>) -> bool {
    if let Err(error) = &sent {
        tracing::debug!(client = %client.peer, %error, "client went away during a file");
    }
    client.finish_body(keep && sent.is_ok()).await
}

/// A kept version holds its bytes or its descriptor; this is the error if it has neither.
fn no_content() -> std::io::Error {
    std::io::Error::other("a file version with neither bytes nor a descriptor")
}

/// Waits until the socket takes more, within the body timeout.
async fn writable(stream: &TcpStream) -> std::io::Result<()> {
    match tokio::time::timeout(BODY_TIMEOUT, stream.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// Sends `count` bytes of `file` from `offset` with `sendfile(2)`: the kernel copies from the
/// page cache to the socket, nothing passes through user space. The offset is the call's own,
/// so one descriptor serves any number of requests at once.
async fn send_file(
    stream: &TcpStream,
    file: &std::fs::File,
    mut offset: u64,
    mut count: u64,
) -> std::io::Result<()> {
    /// Per call, so one large file does not hold the worker thread for long.
    const STEP: u64 = 1024 * 1024;
    while count > 0 {
        let step = count.min(STEP) as usize;
        let sent = stream.try_io(Interest::WRITABLE, || {
            rustix::fs::sendfile(stream, file, Some(&mut offset), step).map_err(Into::into)
        });
        match sent {
            // The file became shorter than its head said: the connection cannot go on.
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => count -= n as u64,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                writable(stream).await?;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}
