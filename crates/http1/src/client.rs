//! Forwarding a request of the lb's HTTP/2 clients over a pooled HTTP/1 connection, by the same
//! rules as the raw path: the head rewritten by `head::rewrite_h2`, the body framed as on the
//! wire (chunked when it has no length), the response head read while the body goes out
//! (`exchange`), and the response body streamed back straight from the connection
//! (`ResponseBody`), which returns to its pool once the body has been read to the end.

use std::future::Future as _;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

use crate::body::{self, BUFFER, BodyState, SizeLine};
use crate::exchange::{self, HeadOutcome, PumpError, Sent};
use crate::head::{Framing, Response, ResponseRewrite};
use crate::pool::{Conn, Pool};
use crate::retry::Failure;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// The server's side: decides the status (502/504) and whether to try elsewhere.
    Server(Failure),
    /// The client's body failed (reset, too long or short for its length, stalled).
    Client(BoxError),
}

/// Where a request goes: a server of a pool, and whether it can be sent twice.
pub struct Target<'a> {
    pub pool: &'a Pool,
    /// The server's index in the pool.
    pub server: usize,
    pub addr: crate::stream::Endpoint<'a>,
    /// An idempotent request without a body.
    pub replayable: bool,
}

impl Target<'_> {
    /// A new connection to the server; failing to connect is the server's failure.
    pub async fn connect(&self) -> Result<Conn, Failure> {
        self.pool
            .connect(self.addr)
            .await
            .map_err(|error| Failure::Unreachable {
                connect: true,
                error,
            })
    }

    /// A kept connection to the server, or a new one.
    pub async fn conn(&self) -> Result<Conn, Failure> {
        match self.pool.checkout(self.server, self.replayable) {
            Some(conn) => Ok(conn),
            None => self.connect().await,
        }
    }
}

/// `send` on a pooled connection to `target` (or a new one). A pooled connection that turns
/// out closed before any answer (the server closed it while idle) gets a replayable request
/// again on a fresh one. Returns the connection with the response head.
#[allow(clippy::too_many_arguments)]
pub async fn send_pooled<B>(
    target: &Target<'_>,
    head: &[u8],
    framing: Framing,
    body: &mut B,
    back: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
    server_timeout: Duration,
    idle: Duration,
) -> Result<(Conn, Response, Sent), SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut conn = target.conn().await.map_err(SendError::Server)?;
    loop {
        let sent = send(
            &mut conn,
            head,
            framing,
            body,
            back,
            rewrite,
            server_timeout,
            idle,
        )
        .await;
        match sent {
            Ok((response, sent)) => return Ok((conn, response, sent)),
            Err(SendError::Server(failure))
                if conn.worth_a_fresh_try(target.replayable, &failure) =>
            {
                conn = target.connect().await.map_err(SendError::Server)?;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Sends `head` and then `body` (framed as `framing` says) on `conn`, and reads the response
/// head into `back`. `server_timeout` bounds the wait for the head once the request is out;
/// `idle` bounds each read of the client's body and each write to the server.
#[allow(clippy::too_many_arguments)]
pub async fn send<B>(
    conn: &mut Conn,
    head: &[u8],
    framing: Framing,
    body: &mut B,
    back: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
    server_timeout: Duration,
    idle: Duration,
) -> Result<(Response, Sent), SendError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    if framing == Framing::Length(0) {
        return exchange::send_bodyless(conn, head, back, rewrite, server_timeout, idle)
            .await
            .map(|response| (response, Sent::Complete))
            .map_err(SendError::Server);
    }
    let (mut src, mut dst) = conn.stream.split();
    let pump = pump(body, framing, &mut dst, head, idle);
    match exchange::response_head(pump, &mut src, &mut conn.buf, back, rewrite, server_timeout)
        .await
    {
        HeadOutcome::Response(response, sent) => {
            bytes::Buf::advance(&mut conn.buf, response.head_len);
            Ok((response, sent))
        }
        HeadOutcome::Failed(failure) => Err(SendError::Server(failure)),
        HeadOutcome::Source(error) => Err(SendError::Client(error)),
    }
}

/// Writes `head`, then the body's data frames as `framing` says (trailers dropped).
async fn pump<B, W>(
    body: &mut B,
    framing: Framing,
    dst: &mut W,
    head: &[u8],
    idle: Duration,
) -> Result<(), PumpError<BoxError>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
    W: AsyncWrite + Unpin,
{
    let mut head = head;
    let mut left = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    loop {
        let frame = match body::within(idle, body.frame()).await {
            None => return Err(PumpError::Source("the request body stalled".into())),
            Some(None) => break,
            Some(Some(Err(error))) => return Err(PumpError::Source(error.into())),
            Some(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        let written = match &mut left {
            Some(left) => {
                *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                    PumpError::Source("the request body is longer than its Content-Length".into())
                })?;
                body::write_two(dst, head, &data, idle).await
            }
            None => {
                let line = SizeLine::new(data.len());
                let mut slices = [
                    IoSlice::new(head),
                    IoSlice::new(line.as_bytes()),
                    IoSlice::new(&data),
                    IoSlice::new(b"\r\n"),
                ];
                body::write_all(dst, &mut slices, idle).await
            }
        };
        written.map_err(PumpError::Write)?;
        head = &[];
    }
    let end: &[u8] = match left {
        Some(0) => &[],
        Some(_) => {
            return Err(PumpError::Source(
                "the request body is shorter than its Content-Length".into(),
            ));
        }
        None => b"0\r\n\r\n",
    };
    if !head.is_empty() || !end.is_empty() {
        body::write_two(dst, head, end, idle)
            .await
            .map_err(PumpError::Write)?;
    }
    Ok(())
}

/// `drain` in a task of its own, when anything is left of `body`.
pub fn drain_rest<B>(body: B)
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    if !body.is_end_stream() {
        tokio::spawn(drain(body));
    }
}

/// Reads and drops what is left of a request body hyper is still receiving, within the linger
/// bounds (`body::LINGER_*`): an HTTP/1 connection stays usable when it all came, an HTTP/2
/// stream ends without a reset the client might take for an error.
pub async fn drain<B>(mut body: B)
where
    B: Body<Data = Bytes> + Unpin,
{
    let read = async {
        let mut seen = 0;
        loop {
            match tokio::time::timeout(body::LINGER_IDLE, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > body::LINGER_BYTES {
                        return;
                    }
                }
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(body::LINGER_TIME, read).await;
}

/// Where a connection goes when its response body has been read to the end.
pub struct Return {
    pub pool: Arc<Pool>,
    pub server: usize,
}

/// A server's response body, read from its connection as hyper asks for it: `Content-Length`
/// bytes, chunked (decoded; trailers dropped), or until the server closes. `idle` bounds each
/// wait for the server. Holds `hold` (the lb's in-flight slot) until the body ends.
pub struct ResponseBody {
    conn: Option<Conn>,
    state: BodyState,
    /// The pool the connection goes back to, when it can be reused.
    back_to: Option<Return>,
    idle: Duration,
    /// Runs while the body waits on the server (not while hyper does not ask for more); made
    /// at the first wait (a small body usually came with its head and never waits).
    timer: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    hold: Option<Box<dyn Send + Sync>>,
}

impl ResponseBody {
    /// `back_to`: where the connection goes once the body has been read to the end, when it
    /// can be reused (the server keeps it and the whole request went out); `None` closes it.
    pub fn new(
        conn: Conn,
        framing: Framing,
        back_to: Option<Return>,
        idle: Duration,
        hold: Option<Box<dyn Send + Sync>>,
    ) -> Self {
        let mut body = Self {
            conn: Some(conn),
            state: BodyState::new(framing),
            back_to,
            idle,
            timer: None,
            waiting: false,
            hold,
        };
        if body.state.is_done() {
            body.finish();
        }
        body
    }

    /// The body ended: the connection goes back to its pool (if it may) and the hold ends.
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let (Some(conn), Some(back_to)) = (self.conn.take(), self.back_to.take()) {
            if conn.buf.is_empty() {
                back_to.pool.checkin(back_to.server, conn);
            }
        }
        self.hold = None;
    }

    /// Takes the next piece of data out of what is buffered, if there is one.
    fn buffered(&mut self) -> Result<Option<Bytes>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        match &mut self.state {
            BodyState::Done => Ok(None),
            BodyState::Length(left) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (*left).min(buf.len() as u64) as usize;
                *left -= take as u64;
                let data = buf.split_to(take).freeze();
                if *left == 0 {
                    self.finish();
                }
                Ok(Some(data))
            }
            BodyState::Close => Ok((!buf.is_empty()).then(|| buf.split().freeze())),
            BodyState::Chunked(decoder) => {
                while !buf.is_empty() {
                    let (used, data) = decoder
                        .advance(buf)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.0))?;
                    match data.filter(|d| !d.is_empty()) {
                        Some(data) => {
                            bytes::Buf::advance(buf, data.start);
                            let piece = buf.split_to(data.len()).freeze();
                            return Ok(Some(piece));
                        }
                        None => bytes::Buf::advance(buf, used),
                    }
                    if decoder.is_done() {
                        self.finish();
                        return Ok(None);
                    }
                }
                Ok(None)
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        loop {
            match this.buffered() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) if this.state.is_done() => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if conn.buf.capacity() - conn.buf.len() < BUFFER / 4 {
                conn.buf.reserve(BUFFER);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf) {
                Poll::Ready(Ok(0)) if this.state == BodyState::Close => {
                    // Close-delimited: the end. The connection is spent.
                    this.back_to = None;
                    this.finish();
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
                }
                Poll::Ready(Ok(_)) => this.waiting = false,
                Poll::Ready(Err(error)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error)));
                }
                Poll::Pending => {
                    let idle = this.idle;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                    if !std::mem::replace(&mut this.waiting, true) {
                        timer.as_mut().reset(tokio::time::Instant::now() + idle);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        this.conn = None;
                        return Poll::Ready(Some(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the server sent no more of its response body in time",
                        ))));
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.state.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(left) => SizeHint::with_exact(left),
            _ => SizeHint::default(),
        }
    }
}
