//! The client side of an HTTP/1 connection, shared by the lb and the web server: reading request
//! heads within the header timeout (408, 414, 431), answers of our own, sending a request with
//! its body to a server connection while that server's answer is heard, relaying the answer
//! back, settling the rest of a request body nobody read (read and drop a short one, else
//! close) and nginx's lingering close. What to do with a request is the caller's.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::body::{
    self, BODY_TIMEOUT, BodyState, HEAD_BUFFER, LINGER_BYTES, LINGER_IDLE, LINGER_TIME, Malformed,
    RelayError,
};
use crate::client::Target;
use crate::exchange::{self, HeadOutcome, PumpError, Sent};
use crate::head::{self, Forwarding, Persistence, Refusal, Request, Response, ResponseRewrite};
use crate::lazy_timer::LazyTimer;
use crate::pool::Conn;
use crate::retry::Failure;
use crate::{date, recycle, tunnel};

/// A request body nobody needed (an early or local answer came first) is read and dropped to
/// keep the connection open when at most this much of it is left; a longer one closes it.
pub const DISCARD_MAX: u64 = 1024 * 1024;
/// How long the rest of such a body may take to arrive.
pub const DISCARD_TIME: Duration = Duration::from_secs(2);
/// How long a connection accepted just before a drain may take to send its first request.
pub const FRESH_GRACE: Duration = Duration::from_secs(1);

/// Bounds on a request head.
#[derive(Clone, Copy, Debug)]
pub struct HeadLimits {
    /// The whole head must arrive within this (also how long a keep-alive connection idles).
    pub timeout: Duration,
    /// Longer heads are refused (414 without a line end yet, else 431).
    pub max_bytes: usize,
}

/// One client connection and where its current request stands.
pub struct ClientConn<C> {
    pub io: C,
    /// Bytes read and not yet used: the rest of a request, or pipelined ones.
    pub buf: BytesMut,
    pub peer: SocketAddr,
    /// The current request's client: `peer`, or who a trusted proxy says it is.
    pub who: IpAddr,
    /// When the current request's head was read.
    pub started: Instant,
    /// When the wait for the last head began (`read_request`): a refused head's access line
    /// counts from it.
    pub waiting_since: Instant,
    pub secure: bool,
    /// What is still to come of the current request's body: the relay to a server keeps it
    /// exact, so after any answer the rest can be read and dropped (or the connection closed).
    pub body: BodyState,
    /// The request asked `Expect: 100-continue` and has had no `100` yet: its client may not
    /// send the body at all, so an answer of ours closes the connection rather than wait for it.
    pub continue_pending: bool,
    /// The header timeout's timer, kept from one request to the next (`LazyTimer`).
    header_timer: LazyTimer,
    /// The stream is no longer at a request boundary (a refused request, a request body cut
    /// short or left unread): answer, then close, reading what the client still sends for a
    /// while so the answer is not lost to a TCP reset (nginx's lingering close).
    pub broken: bool,
}

/// A connection that can say whether a read would find data without reading (a plain socket):
/// one waiting for its next request then holds no buffer at all, as nginx's and HAProxy's idle
/// keep-alive connections. A TLS stream cannot tell (it may hold decrypted bytes already) and
/// keeps its head buffer.
pub trait IdleRead {
    /// Whether `poll_idle_readable` can tell.
    const CAN_TELL: bool = false;

    /// Ready when a read would find data (or the end of the stream).
    fn poll_idle_readable(&self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IdleRead for tokio::net::TcpStream {
    const CAN_TELL: bool = true;

    fn poll_idle_readable(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.poll_read_ready(cx)
    }
}

/// Waits until `io` has data (when it can tell), then reads part of a head: a buffer is made
/// only once there is something to put in it. A readiness that finds nothing (tokio reports a
/// fresh socket ready before its first read) gives the empty buffer back before waiting again.
async fn idle_read<C: AsyncRead + IdleRead + Unpin>(
    io: &mut C,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if !C::CAN_TELL {
        return body::read_head_some(io, buf).await;
    }
    std::future::poll_fn(|cx| {
        std::task::ready!(io.poll_idle_readable(cx))?;
        let read =
            tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut *io), cx, body::head_room(buf));
        if read.is_pending() && buf.is_empty() {
            recycle::give_head(buf);
        }
        read
    })
    .await
}

/// What the connection holds next.
pub enum Next {
    Request(Request),
    Close,
    Refuse(Refusal),
}

/// A response we write ourselves.
pub struct Local<'a> {
    pub status: http::StatusCode,
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// More header lines, each `Name: value` without the line end.
    pub headers: &'a [&'a [u8]],
    pub request_id: &'a [u8],
    pub hsts: Option<&'a [u8]>,
}

/// Why a request could not be sent to a server.
#[derive(Debug)]
pub enum SendFailure {
    /// The server failed (its connection, or no answer in time).
    Server(Failure),
    /// The client went away or stopped sending its body.
    Client(std::io::Error),
    /// The client's chunked body was malformed.
    Malformed(&'static str),
}

impl<C: AsyncRead + AsyncWrite + Unpin> ClientConn<C> {
    pub fn new(io: C, peer: SocketAddr, secure: bool) -> Self {
        let now = Instant::now();
        Self {
            io,
            buf: BytesMut::new(),
            peer,
            who: peer.ip(),
            started: now,
            waiting_since: now,
            secure,
            body: BodyState::Done,
            continue_pending: false,
            header_timer: LazyTimer::default(),
            broken: false,
        }
    }

    /// Gives back the memory of a connection's scratch buffers (heads it wrote) before it waits
    /// for its next request, unless that request is here already: an idle keep-alive
    /// connection holds no buffer. `out` regrows in `read_request`; callers regrow the others.
    pub fn release_idle(&self, scratch: &mut [&mut Vec<u8>]) {
        if self.buf.is_empty() {
            for buf in scratch {
                recycle::give_scratch(buf);
            }
        }
    }

    /// Starts a request's body bookkeeping: what is to come, and whether a `100 Continue` is
    /// owed before it.
    pub fn begin(&mut self, request: &Request, started: Instant) {
        self.started = started;
        self.body = BodyState::new(request.body);
        self.continue_pending = request.expect_continue && !request.http10 && self.buf.is_empty();
    }

    /// Whether an answer of ours may keep the connection: the client wants it and the rest of
    /// the body (if any) is short enough to read and drop.
    pub fn may_keep_after_answer(&self, client_keep: bool) -> bool {
        client_keep && !self.broken && !self.continue_pending && discardable(&self.body)
    }

    /// Writes a response of our own. Returns whether the connection stays open.
    pub async fn answer(
        &mut self,
        back: &mut Vec<u8>,
        local: &Local<'_>,
        is_head: bool,
        connection: Persistence,
    ) -> bool {
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
        for line in local.headers {
            back.extend_from_slice(line);
            back.extend_from_slice(b"\r\n");
        }
        head::finish_head(back, local.request_id, local.hsts, connection);
        let body = if is_head { &[][..] } else { local.body };
        body::write_two(&mut self.io, back, body, BODY_TIMEOUT)
            .await
            .is_ok()
            && body::flush(&mut self.io, BODY_TIMEOUT).await.is_ok()
            && connection != Persistence::Close
    }

    /// Refuses what cannot be served (plain text with the reason); the connection closes
    /// after it.
    pub async fn refuse(
        &mut self,
        back: &mut Vec<u8>,
        refusal: &Refusal,
        request_id: &[u8],
        hsts: Option<&[u8]>,
    ) {
        self.broken = true;
        let status =
            http::StatusCode::from_u16(refusal.status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let text = refusal.text();
        let local = Local {
            status,
            content_type: "text/plain; charset=utf-8",
            body: text.as_bytes(),
            headers: &[],
            request_id,
            hsts,
        };
        self.answer(back, &local, false, Persistence::Close).await;
    }

    /// After an answer, the rest of the request body nobody read: none left, the connection
    /// goes on as `keep` says; a short rest is read and dropped (within `DISCARD_MAX` bytes and
    /// `DISCARD_TIME`) to keep it; otherwise, or when that fails, it is closed with a lingering
    /// read (`broken`). Returns whether the connection stays open.
    pub async fn finish_body(&mut self, keep: bool) -> bool {
        if self.body.is_done() {
            return keep;
        }
        if !keep {
            self.broken = true;
            return false;
        }
        let done = tokio::time::timeout(
            DISCARD_TIME,
            body::discard(
                &mut self.io,
                &mut self.buf,
                &mut self.body,
                DISCARD_MAX,
                BODY_TIMEOUT,
            ),
        )
        .await
        .unwrap_or(false);
        self.broken |= !done;
        done
    }

    /// Writes the request (`out`: its head) and its body on `conn` while reading the response
    /// head into `back`, sending `100 Continue` first when the client waits for it. Returns the
    /// head and how much of the request went out (`self.body` says what is left of the body).
    pub async fn send_request(
        &mut self,
        request: &Request,
        conn: &mut Conn,
        out: &[u8],
        back: &mut Vec<u8>,
        rewrite: &ResponseRewrite<'_>,
        server_timeout: Duration,
    ) -> Result<(Response, Sent), SendFailure> {
        if request.bodyless() {
            return exchange::send_bodyless(conn, out, back, rewrite, server_timeout, BODY_TIMEOUT)
                .await
                .map(|response| (response, Sent::Complete))
                .map_err(SendFailure::Server);
        }
        if self.continue_pending {
            let sent = body::write_two(
                &mut self.io,
                b"HTTP/1.1 100 Continue\r\n\r\n",
                &[],
                BODY_TIMEOUT,
            )
            .await;
            let sent = match sent {
                Ok(()) => body::flush(&mut self.io, BODY_TIMEOUT).await,
                Err(error) => Err(error),
            };
            sent.map_err(SendFailure::Client)?;
            self.continue_pending = false;
        }
        let outcome = {
            let (mut from_server, mut to_server) = conn.stream.split();
            let pump = async {
                body::relay(
                    &mut self.io,
                    &mut self.buf,
                    &mut self.body,
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
                if sent == Sent::Partial && rewrite.client_keep_alive && !discardable(&self.body) {
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
                self.broken |= !self.body.is_done();
                Err(SendFailure::Server(failure))
            }
            HeadOutcome::Source(RelayError::Malformed(Malformed(what))) => {
                self.broken = true;
                Err(SendFailure::Malformed(what))
            }
            HeadOutcome::Source(RelayError::Read(error) | RelayError::Write(error)) => {
                self.broken = true;
                Err(SendFailure::Client(error))
            }
        }
    }

    /// `send_request` on a pooled connection to `target` (or a new one). A pooled connection
    /// that turns out closed before any answer (the server closed it while idle) gets a
    /// replayable request again on a fresh one. Returns the connection with the response head.
    #[allow(clippy::too_many_arguments)]
    pub async fn send_pooled(
        &mut self,
        target: &Target<'_>,
        request: &Request,
        out: &[u8],
        back: &mut Vec<u8>,
        rewrite: &ResponseRewrite<'_>,
        server_timeout: Duration,
    ) -> Result<(Conn, Response, Sent), SendFailure> {
        let mut conn = target.conn().await.map_err(SendFailure::Server)?;
        loop {
            match self
                .send_request(request, &mut conn, out, back, rewrite, server_timeout)
                .await
            {
                Ok((response, sent)) => return Ok((conn, response, sent)),
                Err(SendFailure::Server(failure))
                    if conn.worth_a_fresh_try(target.replayable, &failure) =>
                {
                    conn = target.connect().await.map_err(SendFailure::Server)?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Sends `head` and the response body from `conn` to the client.
    pub async fn relay_response(
        &mut self,
        conn: &mut Conn,
        response: &Response,
        head: &[u8],
    ) -> Result<(), RelayError> {
        let mut response_body = BodyState::new(response.body);
        body::relay(
            &mut conn.stream,
            &mut conn.buf,
            &mut response_body,
            response.dechunk,
            &mut self.io,
            head,
            BODY_TIMEOUT,
        )
        .await?;
        body::flush(&mut self.io, BODY_TIMEOUT)
            .await
            .map_err(RelayError::Write)
    }

    /// After a 101: `head` to the client, then bytes both ways until either side is done or
    /// neither sends for `idle`.
    pub async fn tunnel(&mut self, conn: &mut Conn, head: &[u8], idle: Duration) {
        // What either side sent right after its head belongs to the new protocol.
        let ready = body::write_two(&mut self.io, head, &conn.buf, BODY_TIMEOUT).await;
        let ready = ready.is_ok()
            && body::flush(&mut self.io, BODY_TIMEOUT).await.is_ok()
            && body::write_two(&mut conn.stream, &self.buf, &[], BODY_TIMEOUT)
                .await
                .is_ok();
        conn.buf.clear();
        self.buf.clear();
        if !ready {
            return;
        }
        if let Err(error) = tunnel::tunnel(&mut self.io, &mut conn.stream, idle).await {
            tracing::debug!(client = %self.peer, %error, "upgraded connection ended");
        }
    }

    /// Ends the connection: a TLS client gets its close_notify, a client that does not read
    /// gets no more time, and a `broken` one has what it still sends read for a while.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
        if self.broken {
            let mut rest = (&mut self.io).take(LINGER_BYTES);
            let buf = &mut self.buf;
            let drain = async {
                loop {
                    buf.clear();
                    match tokio::time::timeout(LINGER_IDLE, rest.read_buf(buf)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => break,
                    }
                }
            };
            let _ = tokio::time::timeout(LINGER_TIME, drain).await;
        }
    }
}

impl<C: AsyncRead + AsyncWrite + IdleRead + Unpin> ClientConn<C> {
    /// Reads the next request head into `out` (rewritten as `forwarding` says) within the
    /// header timeout, which also bounds an idle keep-alive connection. An idle connection
    /// closes at once when `stop` fires, but a `fresh` one (accepted, no request yet) gets
    /// `FRESH_GRACE` for its request: it was accepted just before the drain and its request is
    /// on its way (after the handshake, for TLS).
    pub async fn read_request<S>(
        &mut self,
        out: &mut Vec<u8>,
        forwarding: &Forwarding<'_>,
        limits: HeadLimits,
        stop: &mut S,
        fresh: bool,
    ) -> Next
    where
        S: Future<Output = ()> + Unpin,
    {
        let now = tokio::time::Instant::now();
        self.waiting_since = now.into_std();
        let mut deadline = now + limits.timeout;
        // `stop` fired while this fresh connection waits for its request (polled once only).
        let mut stopped = false;
        // Waiting for its next request, a connection keeps no buffer when it can wait for data
        // without one (`IdleRead`), else only room for a head (a body may have grown it).
        if self.buf.is_empty() {
            if C::CAN_TELL {
                recycle::give_head(&mut self.buf);
            } else if self.buf.capacity() > HEAD_BUFFER {
                self.buf = BytesMut::with_capacity(HEAD_BUFFER);
            }
        }
        loop {
            if !self.buf.is_empty() {
                match head::parse_request(&self.buf, out, forwarding) {
                    Ok(Some(request)) => {
                        self.buf.advance(request.head_len);
                        return Next::Request(request);
                    }
                    Ok(None) if self.buf.len() >= limits.max_bytes => {
                        // No line end yet: the request line alone is too long (nginx: 414).
                        let refusal = if self.buf.contains(&b'\n') {
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
            let idle = self.buf.is_empty();
            let read = tokio::select! {
                biased;
                read = idle_read(&mut self.io, &mut self.buf) => Some(read),
                () = self.header_timer.until(deadline) => None,
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
                Some(Ok(n)) if n > 0 => {}
                Some(_) => return Next::Close,
                None if idle => return Next::Close,
                None => {
                    return Next::Refuse(Refusal {
                        status: 408,
                        reason: "the request head took too long",
                    });
                }
            }
        }
    }
}

/// Whether the rest of a body is short enough to read and drop instead of closing.
pub fn discardable(rest: &BodyState) -> bool {
    match rest {
        BodyState::Done => true,
        BodyState::Length(left) => *left <= DISCARD_MAX,
        BodyState::Chunked(_) | BodyState::Close => false,
    }
}

/// A range of a head in `out` as text (for logs).
pub fn text<'a>(out: &'a [u8], range: &std::ops::Range<usize>) -> &'a str {
    std::str::from_utf8(&out[range.clone()]).unwrap_or("-")
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        timeout: Duration::from_secs(30),
        max_bytes: 8192,
    };

    /// Reads the next request, or gives up after a while (nothing sent: it waits).
    async fn next_within(
        conn: &mut ClientConn<tokio::net::TcpStream>,
        out: &mut Vec<u8>,
        wait: Duration,
    ) -> Option<Next> {
        let forwarding = Forwarding::edge(conn.peer.ip(), false);
        let mut stop = std::pin::pin!(std::future::pending::<()>());
        tokio::time::timeout(
            wait,
            conn.read_request(out, &forwarding, LIMITS, &mut stop, false),
        )
        .await
        .ok()
    }

    /// The connection is polled (its read finds nothing), then waits holding no head buffer.
    async fn waits_without_a_buffer(
        conn: &mut ClientConn<tokio::net::TcpStream>,
        out: &mut Vec<u8>,
    ) {
        assert!(
            next_within(conn, out, Duration::from_millis(50))
                .await
                .is_none()
        );
        assert_eq!(conn.buf.capacity(), 0);
    }

    /// An idle keep-alive connection, fresh or between requests, holds no buffer: not the head
    /// buffer (tokio reports a new socket readable before its first read, which finds nothing)
    /// and not the connection's scratch heads, unless the next request is there already.
    #[tokio::test]
    async fn an_idle_connection_holds_no_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let mut conn = ClientConn::new(server, peer, false);
        let (mut out, mut back) = (Vec::new(), vec![0u8; 100]);

        // Fresh.
        waits_without_a_buffer(&mut conn, &mut out).await;

        // One request served, then waiting for the next.
        client
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let next = next_within(&mut conn, &mut out, Duration::from_secs(30)).await;
        assert!(matches!(next, Some(Next::Request(_))));
        conn.release_idle(&mut [&mut out, &mut back]);
        assert_eq!((out.capacity(), back.capacity()), (0, 0));
        waits_without_a_buffer(&mut conn, &mut out).await;

        // Two requests in one write: after the first, the second is already here, and the
        // scratch heads are kept for it.
        client
            .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\nGET /c HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let Some(Next::Request(first)) =
            next_within(&mut conn, &mut out, Duration::from_secs(30)).await
        else {
            panic!("no first request");
        };
        assert_eq!(text(&out, &first.target), "/b");
        back.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        conn.release_idle(&mut [&mut out, &mut back]);
        assert!(out.capacity() > 0 && back.capacity() > 0);
        let Some(Next::Request(second)) =
            next_within(&mut conn, &mut out, Duration::from_secs(30)).await
        else {
            panic!("no second request");
        };
        assert_eq!(text(&out, &second.target), "/c");
    }
}
