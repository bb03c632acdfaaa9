//! One HTTP/2 server connection, driven by one task: it reads frames, starts each stream's
//! handler as a future of its own (a `FuturesUnordered`, so a wake polls only what woke), and
//! writes every response itself, batching a round's frames into one write. No locks between
//! streams and the connection except a request body's queue.
//!
//! Limits, each answering a known attack on HTTP/2 servers:
//! - streams the client resets before their answer (rapid reset, CVE-2023-44487) and streams
//!   we reset for the client's errors draw on a budget that refills slowly: GOAWAY
//!   ENHANCE_YOUR_CALM once it is spent;
//! - frames that make us work but carry nothing (PING, SETTINGS, PRIORITY, empty DATA and
//!   CONTINUATION, unknown types: CVE-2019-9512/9515/9518) draw on another;
//! - a header block is bounded before it is decoded (CONTINUATION flood, 2024) and the decoded
//!   list after (431);
//! - nothing more is read while a round's output is unsent: a client that does not read our
//!   ACKs and answers stops being read, and is cut once no byte has moved for `stall`.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::task::AtomicWaker;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response};
use http_body::Body;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::body::{Inbox, Note, Notes, RequestBody};
use crate::frame::{self, Head, Reason, flag, kind, setting};
use crate::hpack::{self, Decoder, Field};
use crate::request::{Malformed, RequestHead};

/// How a connection behaves; `Options::default()` is what the lb uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// SETTINGS_MAX_CONCURRENT_STREAMS: more open at once are refused (REFUSED_STREAM).
    pub max_concurrent_streams: u32,
    /// GOAWAY once no stream has been open for this long.
    pub idle: Duration,
    /// A PING after this long without a frame from the client...
    pub ping_interval: Duration,
    /// ...and the connection closed if its ACK takes longer than this.
    pub ping_timeout: Duration,
    /// Closed when an answer has waited this long on the client: its flow-control window
    /// stays shut, or the socket takes nothing.
    pub stall: Duration,
    /// SETTINGS_MAX_HEADER_LIST_SIZE: a larger request head is answered 431.
    pub max_header_list: usize,
    /// The receive window of each stream (SETTINGS_INITIAL_WINDOW_SIZE) and of the connection:
    /// how much of the request bodies may wait, unread by their handlers.
    pub stream_window: u32,
    pub connection_window: u32,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_concurrent_streams: 250,
            idle: Duration::from_secs(60),
            ping_interval: Duration::from_secs(30),
            ping_timeout: Duration::from_secs(20),
            stall: Duration::from_secs(75),
            max_header_list: 16 * 1024,
            stream_window: 1 << 20,
            connection_window: 1 << 20,
        }
    }
}

/// Bytes of output that stop reading and pulling bodies until they are written.
const OUT_HIGH: usize = 64 * 1024;
/// The read buffer: a whole frame of the largest size we allow fits.
const READ_BUFFER: usize = 32 * 1024;
/// Our SETTINGS_HEADER_TABLE_SIZE (the decoder's table).
const TABLE_SIZE: usize = 4096;
/// Buffers of idle connections, kept per thread for the next busy one (HAProxy's buffer
/// pools): an idle HTTP/2 connection holds no read or write buffer, and a busy one takes a
/// ready one instead of allocating it.
mod buffers {
    use std::cell::RefCell;
    use std::thread::LocalKey;

    /// Kept per kind and thread.
    const KEEP: usize = 64;

    type Kept<T> = RefCell<Vec<T>>;

    thread_local! {
        static READS: Kept<Box<[u8]>> = const { RefCell::new(Vec::new()) };
        static WRITES: Kept<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// `try_with` and `try_borrow_mut`: a connection may be dropped while the thread's locals
    /// are, and a pool is never waited for.
    fn pop<T: 'static>(pool: &'static LocalKey<Kept<T>>) -> Option<T> {
        pool.try_with(|kept| kept.try_borrow_mut().ok()?.pop())
            .ok()
            .flatten()
    }

    fn keep<T: 'static>(pool: &'static LocalKey<Kept<T>>, buf: T) {
        let _ = pool.try_with(|kept| {
            if let Ok(mut kept) = kept.try_borrow_mut()
                && kept.len() < KEEP
            {
                kept.push(buf);
            }
        });
    }

    pub fn take_read() -> Box<[u8]> {
        pop(&READS).unwrap_or_else(|| vec![0; super::READ_BUFFER].into_boxed_slice())
    }

    pub fn give_read(buf: Box<[u8]>) {
        if buf.len() == super::READ_BUFFER {
            keep(&READS, buf);
        }
    }

    /// A write buffer's first size.
    pub const WRITE: usize = 4096;

    pub fn take_write() -> Vec<u8> {
        pop(&WRITES).unwrap_or_else(|| Vec::with_capacity(WRITE))
    }

    /// Kept when it is between 4 KiB and twice the output bound (a large answer's burst goes
    /// back to the allocator): at most 64 x 128 KiB per thread.
    pub fn give_write(mut buf: Vec<u8>) {
        if (WRITE..=2 * super::OUT_HIGH).contains(&buf.capacity()) {
            buf.clear();
            keep(&WRITES, buf);
        }
    }
}

/// Budgets: (burst, refilled per second).
const RESET_BUDGET: (f64, f64) = (200.0, 20.0);
const IDLE_FRAME_BUDGET: (f64, f64) = (1000.0, 200.0);

/// A stream's answer: its status, fields as a map and/or already encoded (a proxy that has
/// the fields as bytes encodes them straight from there, `hpack::encode_http1_fields`), and
/// its body.
#[derive(Debug)]
pub struct Reply<B> {
    pub status: http::StatusCode,
    pub headers: HeaderMap,
    /// HPACK field representations (`hpack::encode_field`), sent after `headers`.
    pub encoded: Vec<u8>,
    pub body: B,
}

impl<B> From<Response<B>> for Reply<B> {
    fn from(response: Response<B>) -> Reply<B> {
        let (parts, body) = response.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            encoded: Vec::new(),
            body,
        }
    }
}

/// Serves one connection (after TLS with ALPN h2, or prior knowledge) until it ends: the
/// client goes away, an error, `idle`, or `shutdown` (then GOAWAY, and open streams finish).
pub async fn serve<I, S, F, B>(
    io: I,
    service: S,
    options: Options,
    shutdown: impl Future<Output = ()>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(RequestHead, RequestBody) -> F,
    F: Future<Output = Reply<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut conn = Connection::new(io, service, options);
    let result = std::future::poll_fn(|cx| {
        if !conn.going_away && shutdown.as_mut().poll(cx).is_ready() {
            conn.go_away(Reason::NoError);
        }
        conn.poll(cx)
    })
    .await;
    if let Err(error) = result {
        tracing::debug!(%error, "HTTP/2 connection ended with an error");
    }
}

/// Why a connection ended early.
#[derive(Debug)]
enum Ended {
    Io(std::io::Error),
    /// We sent GOAWAY with this reason.
    Protocol(Reason, &'static str),
    Timeout(&'static str),
}

impl std::fmt::Display for Ended {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Io(e) => write!(f, "{e}"),
            Ended::Protocol(reason, what) => write!(f, "{what} ({reason:?})"),
            Ended::Timeout(what) => f.write_str(what),
        }
    }
}

/// A connection error: GOAWAY with the reason, then close.
struct ConnError(Reason, &'static str);

/// Lets the connection drop a stream's handler or body pull that is still running.
#[derive(Default)]
struct Cancel {
    cancelled: AtomicBool,
    waker: AtomicWaker,
}

impl Cancel {
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        self.waker.wake();
    }
}

type Handler<B> = Pin<Box<dyn Future<Output = Reply<B>> + Send>>;

/// What runs for a stream outside the connection's own code.
enum Task<B: Body> {
    /// The handler, until its response.
    Respond(u32, Arc<Cancel>, Handler<B>),
    /// The response body, until its next frame.
    Pull(u32, Arc<Cancel>, Option<B>),
}

enum Event<B: Body<Data = Bytes>> {
    Response(u32, Reply<B>),
    Frame(u32, B, Option<Result<http_body::Frame<Bytes>, B::Error>>),
    Cancelled,
}

impl<B: Body<Data = Bytes> + Unpin> Future for Task<B> {
    type Output = Event<B>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Event<B>> {
        let this = self.get_mut();
        let cancel = match this {
            Task::Respond(_, cancel, _) | Task::Pull(_, cancel, _) => cancel,
        };
        cancel.waker.register(cx.waker());
        if cancel.cancelled.load(Ordering::Acquire) {
            return Poll::Ready(Event::Cancelled);
        }
        match this {
            Task::Respond(id, _, handler) => handler
                .as_mut()
                .poll(cx)
                .map(|response| Event::Response(*id, response)),
            Task::Pull(id, _, body) => {
                let inner = body.as_mut().expect("a pull is polled until it is ready");
                Pin::new(inner)
                    .poll_frame(cx)
                    .map(|frame| Event::Frame(*id, body.take().expect("present"), frame))
            }
        }
    }
}

/// The sending side of a stream.
enum Sending<B> {
    /// The handler runs.
    Waiting,
    Body {
        /// None while a `Task::Pull` holds it.
        body: Option<B>,
        /// Data the windows have not let out yet.
        pending: Bytes,
        /// The body has ended (after `pending`, and `trailers` if any).
        end: bool,
        trailers: Option<HeaderMap>,
    },
    Done,
}

struct Stream<B> {
    send: Sending<B>,
    send_window: i64,
    /// The handler's end of the request body; None once the body ended, was dropped, or
    /// there was none.
    inbox: Option<Arc<Inbox>>,
    /// The client may still send DATA.
    recv_open: bool,
    recv_window: i64,
    /// Received and consumed but not yet given back in a WINDOW_UPDATE.
    recv_unacked: usize,
    /// Declared `content-length` and what came.
    length: Option<u64>,
    received: u64,
    cancel: Arc<Cancel>,
    /// Waiting for this stream's own window since then.
    blocked_since: Option<Instant>,
    /// In `Connection::ready`.
    queued: bool,
    /// The request was HEAD: the answer has no content.
    head_request: bool,
}

/// Hashes a stream id with one multiplication (Fibonacci hashing, the high half folded into
/// the low one where the map takes its bucket). SipHash's resistance to chosen keys buys
/// nothing here: a connection's map holds at most `max_concurrent_streams` ids, which the
/// client must pick in increasing order.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u32(u32::from(byte) ^ (self.0 as u32));
        }
    }

    fn write_u32(&mut self, id: u32) {
        let product = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = product ^ (product >> 32);
    }
}

/// A slowly refilling allowance.
struct Budget {
    left: f64,
    burst: f64,
    per_second: f64,
    at: Instant,
}

impl Budget {
    fn new((burst, per_second): (f64, f64), now: Instant) -> Budget {
        Budget {
            left: burst,
            burst,
            per_second,
            at: now,
        }
    }

    /// Takes one; false when none is left.
    fn take(&mut self) -> bool {
        if self.left < 1.0 {
            let now = Instant::now();
            let refill = now.duration_since(self.at).as_secs_f64() * self.per_second;
            self.left = (self.left + refill).min(self.burst);
            self.at = now;
            if self.left < 1.0 {
                return false;
            }
        }
        self.left -= 1.0;
        true
    }
}

/// A header block arriving over HEADERS and CONTINUATION frames.
struct Partial {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

struct Connection<I, S, B: Body> {
    io: I,
    service: S,
    options: Options,
    read: Box<[u8]>,
    read_start: usize,
    read_end: usize,
    preface_done: bool,
    settings_seen: bool,
    out: Vec<u8>,
    out_sent: usize,
    needs_flush: bool,
    /// The output has waited on the socket since then (no byte written since).
    write_blocked_since: Option<Instant>,
    /// Data has waited for the connection's window since then.
    window_blocked_since: Option<Instant>,
    decoder: Decoder,
    arena: Vec<u8>,
    fields: Vec<Field>,
    block: Vec<u8>,
    partial: Option<Partial>,
    streams: HashMap<u32, Stream<B>, BuildHasherDefault<StreamIdHasher>>,
    tasks: FuturesUnordered<Task<B>>,
    notes: Arc<Notes>,
    noted: Vec<Note>,
    /// Streams with data to send, waiting for the connection's window or for the output to
    /// drain.
    ready: VecDeque<u32>,
    /// The connection's windows: ours to send in, and the client's to send in.
    send_window: i64,
    recv_window: i64,
    recv_unacked: usize,
    peer_max_frame: usize,
    peer_initial_window: i64,
    /// The highest stream the client opened.
    last_stream: u32,
    going_away: bool,
    /// The last stream our GOAWAY named.
    goaway_last: Option<u32>,
    peer_going_away: bool,
    eof: bool,
    /// Ending: nothing is read, the output is flushed, then the connection closes.
    closing: bool,
    /// Why it ends early, reported once it has.
    ended: Option<Ended>,
    /// The TLS close began then (everything else written).
    shutdown_since: Option<Instant>,
    /// The client lowered SETTINGS_HEADER_TABLE_SIZE to this: the next header block says so
    /// (RFC 7541 §4.2), though the encoder uses no table.
    table_update: Option<usize>,
    encoder_table: usize,
    /// When the last stream ended (or the connection began).
    idle_since: Instant,
    last_read: Instant,
    ping_sent: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    timer_at: Instant,
    resets: Budget,
    idle_frames: Budget,
}

impl<I, S, F, B> Connection<I, S, B>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: FnMut(RequestHead, RequestBody) -> F,
    F: Future<Output = Reply<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    fn new(io: I, service: S, options: Options) -> Self {
        let now = Instant::now();
        let mut out = buffers::take_write();
        frame::write_settings(
            &mut out,
            &[
                (
                    setting::MAX_CONCURRENT_STREAMS,
                    options.max_concurrent_streams,
                ),
                (setting::INITIAL_WINDOW_SIZE, options.stream_window),
                (
                    setting::MAX_HEADER_LIST_SIZE,
                    options.max_header_list as u32,
                ),
                (setting::ENABLE_PUSH, 0),
            ],
        );
        let recv_window = i64::from(options.connection_window.max(frame::DEFAULT_WINDOW));
        if recv_window > i64::from(frame::DEFAULT_WINDOW) {
            frame::write_window_update(
                &mut out,
                0,
                (recv_window - i64::from(frame::DEFAULT_WINDOW)) as u32,
            );
        }
        let far = now + Duration::from_secs(86_400);
        Connection {
            io,
            service,
            read: buffers::take_read(),
            read_start: 0,
            read_end: 0,
            preface_done: false,
            settings_seen: false,
            out,
            out_sent: 0,
            needs_flush: false,
            write_blocked_since: None,
            window_blocked_since: None,
            decoder: Decoder::new(TABLE_SIZE),
            arena: Vec::new(),
            fields: Vec::new(),
            block: Vec::new(),
            partial: None,
            streams: HashMap::default(),
            tasks: FuturesUnordered::new(),
            notes: Arc::new(Notes::default()),
            noted: Vec::new(),
            ready: VecDeque::new(),
            send_window: i64::from(frame::DEFAULT_WINDOW),
            recv_window,
            recv_unacked: 0,
            peer_max_frame: frame::DEFAULT_MAX_FRAME,
            peer_initial_window: i64::from(frame::DEFAULT_WINDOW),
            last_stream: 0,
            going_away: false,
            goaway_last: None,
            peer_going_away: false,
            eof: false,
            closing: false,
            ended: None,
            shutdown_since: None,
            table_update: None,
            encoder_table: TABLE_SIZE,
            idle_since: now,
            last_read: now,
            ping_sent: None,
            timer: Box::pin(tokio::time::sleep_until(far)),
            timer_at: far,
            resets: Budget::new(RESET_BUDGET, now),
            idle_frames: Budget::new(IDLE_FRAME_BUDGET, now),
            options,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        self.notes.waker.register(cx.waker());
        if self.out.capacity() < buffers::WRITE && self.out_sent == 0 {
            // Given back while idle (or a few bytes written since, a GOAWAY): a pooled one.
            let mut pooled = buffers::take_write();
            pooled.extend_from_slice(&self.out);
            self.out = pooled;
        }
        loop {
            let mut progress = false;
            self.take_notes();
            if !self.eof && self.unsent() < OUT_HIGH {
                match self.poll_read(cx) {
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Ready(Err(error)) => {
                        self.fail(error);
                        progress = true;
                    }
                    Poll::Pending => {}
                }
            }
            while self.unsent() < OUT_HIGH {
                match self.tasks.poll_next_unpin(cx) {
                    Poll::Ready(Some(event)) => {
                        progress = true;
                        if let Err(error) = self.on_event(event, cx) {
                            self.fail(error);
                            break;
                        }
                    }
                    Poll::Ready(None) | Poll::Pending => break,
                }
            }
            if self.unsent() < OUT_HIGH {
                self.pump_ready(cx);
            }
            match self.poll_write(cx) {
                Poll::Ready(Ok(wrote)) => progress |= wrote,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(Ended::Io(error))),
                Poll::Pending => {}
            }
            if self.finished() {
                // All written: the TLS close. Nothing more is read or sent (no PING); the
                // close is bounded by the stall timer from its start.
                self.eof = true;
                self.shutdown_since.get_or_insert_with(Instant::now);
                match Pin::new(&mut self.io).poll_shutdown(cx) {
                    Poll::Ready(_) => return Poll::Ready(self.ended.take().map_or(Ok(()), Err)),
                    Poll::Pending => {}
                }
            }
            match self.poll_timers(cx) {
                Poll::Ready(Ok(())) => progress = true,
                // Even the close is stuck (the client reads nothing): the end, reported by
                // what began it.
                Poll::Ready(Err(ended)) if self.closing || self.shutdown_since.is_some() => {
                    return Poll::Ready(Err(self.ended.take().unwrap_or(ended)));
                }
                Poll::Ready(Err(ended)) => {
                    self.close(ended);
                    progress = true;
                }
                Poll::Pending => {}
            }
            if !progress {
                self.give_back_buffers();
                return Poll::Pending;
            }
        }
    }

    /// While nothing is open and nothing half read or unsent, the buffers wait in the
    /// thread's pools, not in this connection.
    fn give_back_buffers(&mut self) {
        if !self.streams.is_empty() {
            return;
        }
        if self.read_start == self.read_end && !self.read.is_empty() {
            buffers::give_read(std::mem::take(&mut self.read));
        }
        if self.unsent() == 0 && !self.needs_flush && self.out.capacity() != 0 {
            buffers::give_write(std::mem::take(&mut self.out));
        }
    }

    /// All done: nothing open, nothing left to write, and nothing more will come.
    fn finished(&self) -> bool {
        let no_more = self.eof || self.going_away || self.peer_going_away;
        no_more && self.streams.is_empty() && self.unsent() == 0 && !self.needs_flush
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.out_sent
    }

    /// A connection error: GOAWAY with the reason, then the end (`close`).
    fn fail(&mut self, error: ConnError) {
        let ConnError(reason, what) = error;
        if !self.eof {
            let last = self.goaway_last();
            frame::write_goaway(&mut self.out, last, reason);
        }
        self.close(Ended::Protocol(reason, what));
    }

    /// Drops every stream and reads nothing more; the connection ends once what is written
    /// is flushed (`finished`), or when the stall timer says it never will be.
    fn close(&mut self, ended: Ended) {
        self.drop_all_streams();
        self.going_away = true;
        self.eof = true;
        self.closing = true;
        self.ended.get_or_insert(ended);
    }

    fn drop_all_streams(&mut self) {
        for (_, stream) in self.streams.drain() {
            stream.cancel.cancel();
            if let Some(inbox) = stream.inbox {
                inbox.discard();
            }
        }
        self.tasks.clear();
        self.ready.clear();
    }

    /// The last stream a GOAWAY may name: never more than an earlier GOAWAY said.
    fn goaway_last(&self) -> u32 {
        self.goaway_last
            .map_or(self.last_stream, |last| last.min(self.last_stream))
    }

    /// Sends GOAWAY (once): no new streams, the open ones finish.
    fn go_away(&mut self, reason: Reason) {
        if !self.going_away {
            self.going_away = true;
            self.goaway_last = Some(self.last_stream);
            frame::write_goaway(&mut self.out, self.last_stream, reason);
        }
    }

    // ---- reading -------------------------------------------------------------------------

    /// Reads what the socket has and handles every whole frame in it. Ready(Ok) when
    /// something was read (or the client closed).
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnError>> {
        let mut any = false;
        if self.read.is_empty() {
            self.read = buffers::take_read();
        }
        loop {
            if self.read_end == self.read.len() {
                // Room for the rest of the frame at the front.
                self.read.copy_within(self.read_start..self.read_end, 0);
                self.read_end -= self.read_start;
                self.read_start = 0;
            }
            let mut buf = ReadBuf::new(&mut self.read[self.read_end..]);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    if n == 0 {
                        self.eof = true;
                        self.drop_all_streams();
                        return Poll::Ready(Ok(()));
                    }
                    self.read_end += n;
                    any = true;
                    self.last_read = Instant::now();
                    self.ping_sent = None;
                    self.parse_frames(cx)?;
                    if self.unsent() >= OUT_HIGH || self.eof {
                        return Poll::Ready(Ok(()));
                    }
                }
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "HTTP/2 read failed");
                    self.eof = true;
                    self.drop_all_streams();
                    return Poll::Ready(Ok(()));
                }
                Poll::Pending if any => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn parse_frames(&mut self, cx: &mut Context<'_>) -> Result<(), ConnError> {
        if !self.preface_done {
            let have = &self.read[self.read_start..self.read_end];
            let n = have.len().min(frame::PREFACE.len());
            if have[..n] != frame::PREFACE[..n] {
                return Err(ConnError(Reason::ProtocolError, "not an HTTP/2 preface"));
            }
            if n < frame::PREFACE.len() {
                return Ok(());
            }
            self.read_start += n;
            self.preface_done = true;
        }
        while self.read_end - self.read_start >= frame::HEAD_LEN {
            let head = Head::parse(&self.read[self.read_start..]);
            if head.len > frame::DEFAULT_MAX_FRAME {
                return Err(ConnError(Reason::FrameSizeError, "frame over 16384 bytes"));
            }
            let end = self.read_start + frame::HEAD_LEN + head.len;
            if end > self.read_end {
                break;
            }
            let start = self.read_start + frame::HEAD_LEN;
            self.read_start = end;
            // The payload is copied out of the read buffer only where it is kept (DATA,
            // header blocks); the buffer itself is not touched until the next read.
            let payload = std::mem::take(&mut self.read);
            let result = self.on_frame(head, &payload[start..end], cx);
            self.read = payload;
            result?;
            if self.eof {
                break;
            }
        }
        if self.read_start == self.read_end {
            self.read_start = 0;
            self.read_end = 0;
        }
        Ok(())
    }

    fn on_frame(
        &mut self,
        head: Head,
        payload: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<(), ConnError> {
        if !self.settings_seen {
            if head.kind != kind::SETTINGS || head.has(flag::ACK) {
                return Err(ConnError(
                    Reason::ProtocolError,
                    "first frame is not SETTINGS",
                ));
            }
            self.settings_seen = true;
        }
        if let Some(partial) = &self.partial
            && (head.kind != kind::CONTINUATION || head.stream != partial.stream)
        {
            return Err(ConnError(
                Reason::ProtocolError,
                "a header block was interrupted",
            ));
        }
        match head.kind {
            kind::DATA => self.on_data(head, payload),
            kind::HEADERS => self.on_headers(head, payload),
            kind::CONTINUATION => self.on_continuation(head, payload),
            kind::PRIORITY => {
                if head.stream == 0 {
                    return Err(ConnError(Reason::ProtocolError, "PRIORITY on stream 0"));
                }
                if head.len != 5 {
                    if self.streams.contains_key(&head.stream) {
                        self.reset_stream(head.stream, Reason::FrameSizeError)?;
                    } else if head.stream > self.last_stream {
                        // No RST_STREAM on a stream that was never opened.
                        return Err(ConnError(Reason::FrameSizeError, "PRIORITY not 5 bytes"));
                    }
                }
                self.idle_frame()
            }
            kind::RST_STREAM => self.on_reset(head, payload),
            kind::SETTINGS => self.on_settings(head, payload, cx),
            kind::PUSH_PROMISE => Err(ConnError(
                Reason::ProtocolError,
                "PUSH_PROMISE from a client",
            )),
            kind::PING => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError, "PING on a stream"));
                }
                if head.len != 8 {
                    return Err(ConnError(Reason::FrameSizeError, "PING not 8 bytes"));
                }
                if !head.has(flag::ACK) {
                    self.idle_frame()?;
                    let mut data = [0; 8];
                    data.copy_from_slice(payload);
                    frame::write_ping(&mut self.out, true, data);
                }
                Ok(())
            }
            kind::GOAWAY => {
                if head.stream != 0 {
                    return Err(ConnError(Reason::ProtocolError, "GOAWAY on a stream"));
                }
                if head.len < 8 {
                    return Err(ConnError(Reason::FrameSizeError, "GOAWAY under 8 bytes"));
                }
                self.peer_going_away = true;
                Ok(())
            }
            kind::WINDOW_UPDATE => self.on_window_update(head, payload, cx),
            // Unknown types are ignored (RFC 9113 §4.1), within the budget.
            _ => self.idle_frame(),
        }
    }

    fn idle_frame(&mut self) -> Result<(), ConnError> {
        if self.idle_frames.take() {
            Ok(())
        } else {
            Err(ConnError(
                Reason::EnhanceYourCalm,
                "too many frames that carry nothing",
            ))
        }
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError, "DATA on stream 0"));
        }
        let len = payload.len();
        self.recv_window -= len as i64;
        if self.recv_window < 0 {
            return Err(ConnError(
                Reason::FlowControlError,
                "DATA over the connection's window",
            ));
        }
        let Some((start, end)) = frame::unpad(&head, payload) else {
            return Err(ConnError(
                Reason::ProtocolError,
                "DATA padding longer than the frame",
            ));
        };
        let data = &payload[start..end];
        let end_stream = head.has(flag::END_STREAM);
        if data.is_empty() && !end_stream {
            self.idle_frame()?;
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(ConnError(
                    Reason::ProtocolError,
                    "DATA on a stream never opened",
                ));
            }
            // A stream that has ended or was reset: dropped, the window given back.
            self.release_connection(len);
            return Ok(());
        };
        if !stream.recv_open {
            self.release_connection(len);
            return self.reset_stream(head.stream, Reason::StreamClosed);
        }
        stream.recv_window -= len as i64;
        if stream.recv_window < 0 {
            self.release_connection(len);
            return self.reset_stream(head.stream, Reason::FlowControlError);
        }
        stream.received += data.len() as u64;
        let too_long = stream.length.is_some_and(|n| stream.received > n);
        let too_short = end_stream && stream.length.is_some_and(|n| stream.received != n);
        if too_long || too_short {
            self.release_connection(len);
            return self.reset_stream(head.stream, Reason::ProtocolError);
        }
        // Padding is given back at once; the data when its handler takes it.
        let mut at_once = len - data.len();
        match &stream.inbox {
            Some(inbox) => {
                // Not kept when the reader has just gone (its note not yet seen).
                if !data.is_empty() && !inbox.data(data) {
                    at_once += data.len();
                }
                if end_stream {
                    inbox.end(None);
                }
            }
            None => at_once += data.len(),
        }
        if end_stream {
            stream.recv_open = false;
            stream.inbox = None;
        }
        if at_once > 0 {
            self.release(head.stream, at_once);
        }
        if end_stream {
            self.maybe_close(head.stream);
        }
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError, "HEADERS on stream 0"));
        }
        let Some((mut start, end)) = frame::unpad(&head, payload) else {
            return Err(ConnError(
                Reason::ProtocolError,
                "HEADERS padding longer than the frame",
            ));
        };
        let mut self_dependent = false;
        if head.has(flag::PRIORITY) {
            if end < start + 5 {
                return Err(ConnError(
                    Reason::FrameSizeError,
                    "HEADERS priority cut short",
                ));
            }
            let dependency =
                u32::from_be_bytes(payload[start..start + 4].try_into().expect("4 bytes"));
            self_dependent = dependency & 0x7fff_ffff == head.stream;
            start += 5;
        }
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        block.extend_from_slice(&payload[start..end]);
        let partial = Partial {
            stream: head.stream,
            end_stream: head.has(flag::END_STREAM),
            block,
        };
        if !head.has(flag::END_HEADERS) {
            self.partial = Some(partial);
            return Ok(());
        }
        self.on_block(partial, self_dependent)
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        let Some(mut partial) = self.partial.take() else {
            return Err(ConnError(
                Reason::ProtocolError,
                "CONTINUATION without HEADERS",
            ));
        };
        if payload.is_empty() && !head.has(flag::END_HEADERS) {
            self.idle_frame()?;
        }
        partial.block.extend_from_slice(payload);
        // The block is bounded before it is decoded. Clients Huffman-code a string only where
        // that makes it shorter, so a block is about the size of its header list at most:
        // twice the list's bound leaves room for any real one.
        if partial.block.len() > self.options.max_header_list * 2 + 1024 {
            return Err(ConnError(Reason::EnhanceYourCalm, "header block too large"));
        }
        if !head.has(flag::END_HEADERS) {
            self.partial = Some(partial);
            return Ok(());
        }
        self.on_block(partial, false)
    }

    /// A whole header block: a new request, or a stream's trailers.
    fn on_block(&mut self, partial: Partial, self_dependent: bool) -> Result<(), ConnError> {
        let Partial {
            stream: id,
            end_stream,
            block,
        } = partial;
        self.arena.clear();
        self.fields.clear();
        let decoded = self.decoder.decode(
            &block,
            self.options.max_header_list,
            &mut self.arena,
            &mut self.fields,
        );
        self.block = block;
        let list = match decoded {
            Ok(list) => list,
            Err(_) => {
                return Err(ConnError(
                    Reason::CompressionError,
                    "header block not decodable",
                ));
            }
        };
        if let Some(stream) = self.streams.get_mut(&id) {
            // Trailers: they end the stream, and carry no pseudo-fields.
            if !stream.recv_open {
                return self.reset_stream(id, Reason::StreamClosed);
            }
            let pseudo = self
                .fields
                .iter()
                .any(|f| self.arena.get(f.name.start) == Some(&b':'));
            if !end_stream || pseudo || list > self.options.max_header_list {
                return self.reset_stream(id, Reason::ProtocolError);
            }
            if stream.length.is_some_and(|n| n != stream.received) {
                return self.reset_stream(id, Reason::ProtocolError);
            }
            let trailers = fields_to_map(&self.arena, &self.fields);
            stream.recv_open = false;
            if let Some(inbox) = stream.inbox.take() {
                inbox.end(trailers);
            }
            self.maybe_close(id);
            return Ok(());
        }
        if id <= self.last_stream {
            // A stream that has ended or was reset: its block was decoded for the table's
            // sake, nothing more.
            return Ok(());
        }
        if id % 2 == 0 {
            return Err(ConnError(
                Reason::ProtocolError,
                "a client opened an even stream",
            ));
        }
        self.last_stream = id;
        if self.going_away {
            // After our GOAWAY: not processed, the client may retry it elsewhere.
            return Ok(());
        }
        if self_dependent {
            return self.reset_stream(id, Reason::ProtocolError);
        }
        if self.streams.len() >= self.options.max_concurrent_streams as usize {
            return self.reset_stream(id, Reason::RefusedStream);
        }
        if list > self.options.max_header_list {
            self.answer_local(id, 431, end_stream);
            return Ok(());
        }
        let request = match RequestHead::check(std::mem::take(&mut self.arena), &self.fields) {
            Ok(head) => head,
            Err(Malformed(why)) => {
                tracing::debug!(stream = id, why, "malformed HTTP/2 request; stream reset");
                return self.reset_stream(id, Reason::ProtocolError);
            }
        };
        let length = request.content_length();
        if end_stream && length.is_some_and(|n| n != 0) {
            return self.reset_stream(id, Reason::ProtocolError);
        }
        let inbox = (!end_stream).then(|| Inbox::new(id, self.notes.clone()));
        let body = match &inbox {
            Some(inbox) => {
                // Looked for only when a body follows. Another expectation is the handler's
                // to refuse (417): it reads no body then.
                let expect_continue = request
                    .get("expect")
                    .is_some_and(|value| value.eq_ignore_ascii_case(b"100-continue"));
                RequestBody::new(inbox.clone(), length, expect_continue)
            }
            None => RequestBody::empty(),
        };
        let head_request = request.is_head();
        let cancel = Arc::new(Cancel::default());
        let handler: Handler<B> = Box::pin((self.service)(request, body));
        self.tasks.push(Task::Respond(id, cancel.clone(), handler));
        self.streams.insert(
            id,
            Stream {
                send: Sending::Waiting,
                send_window: self.peer_initial_window,
                inbox,
                recv_open: !end_stream,
                recv_window: i64::from(self.options.stream_window),
                recv_unacked: 0,
                length,
                received: 0,
                cancel,
                blocked_since: None,
                queued: false,
                head_request,
            },
        );
        Ok(())
    }

    fn on_reset(&mut self, head: Head, payload: &[u8]) -> Result<(), ConnError> {
        if head.stream == 0 {
            return Err(ConnError(Reason::ProtocolError, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(ConnError(Reason::FrameSizeError, "RST_STREAM not 4 bytes"));
        }
        if head.stream > self.last_stream {
            return Err(ConnError(
                Reason::ProtocolError,
                "RST_STREAM on a stream never opened",
            ));
        }
        if let Some(stream) = self.streams.remove(&head.stream) {
            let answered = matches!(stream.send, Sending::Done);
            self.drop_stream(stream);
            if !answered && !self.resets.take() {
                return Err(ConnError(Reason::EnhanceYourCalm, "too many streams reset"));
            }
        }
        Ok(())
    }

    fn on_settings(
        &mut self,
        head: Head,
        payload: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<(), ConnError> {
        if head.stream != 0 {
            return Err(ConnError(Reason::ProtocolError, "SETTINGS on a stream"));
        }
        if head.has(flag::ACK) {
            if !payload.is_empty() {
                return Err(ConnError(
                    Reason::FrameSizeError,
                    "SETTINGS ACK with a payload",
                ));
            }
            return Ok(());
        }
        if payload.len() % 6 != 0 {
            return Err(ConnError(
                Reason::FrameSizeError,
                "SETTINGS not a multiple of 6 bytes",
            ));
        }
        self.idle_frame()?;
        for value in payload.chunks_exact(6) {
            let id = u16::from_be_bytes([value[0], value[1]]);
            let value = u32::from_be_bytes([value[2], value[3], value[4], value[5]]);
            match id {
                setting::ENABLE_PUSH if value > 1 => {
                    return Err(ConnError(Reason::ProtocolError, "ENABLE_PUSH not 0 or 1"));
                }
                setting::INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > frame::MAX_WINDOW {
                        return Err(ConnError(
                            Reason::FlowControlError,
                            "INITIAL_WINDOW_SIZE over 2^31-1",
                        ));
                    }
                    let delta = i64::from(value) - self.peer_initial_window;
                    self.peer_initial_window = i64::from(value);
                    for stream in self.streams.values_mut() {
                        stream.send_window += delta;
                        if stream.send_window > frame::MAX_WINDOW {
                            return Err(ConnError(
                                Reason::FlowControlError,
                                "a stream's window over 2^31-1",
                            ));
                        }
                    }
                    if delta > 0 {
                        let ids: Vec<u32> = self.streams.keys().copied().collect();
                        for id in ids {
                            self.pump(id, cx);
                        }
                    }
                }
                setting::MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(ConnError(
                            Reason::ProtocolError,
                            "MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = value as usize;
                }
                setting::HEADER_TABLE_SIZE if (value as usize) < self.encoder_table => {
                    // The encoder uses no table, but the client expects to hear that its
                    // new, smaller limit is in force.
                    self.encoder_table = value as usize;
                    self.table_update = Some(value as usize);
                }
                // The other settings bound what a client sends, not what we do.
                _ => {}
            }
        }
        frame::write_settings_ack(&mut self.out);
        Ok(())
    }

    fn on_window_update(
        &mut self,
        head: Head,
        payload: &[u8],
        cx: &mut Context<'_>,
    ) -> Result<(), ConnError> {
        if payload.len() != 4 {
            return Err(ConnError(
                Reason::FrameSizeError,
                "WINDOW_UPDATE not 4 bytes",
            ));
        }
        let increment =
            i64::from(u32::from_be_bytes(payload.try_into().expect("4 bytes")) & 0x7fff_ffff);
        if head.stream == 0 {
            if increment == 0 {
                return Err(ConnError(Reason::ProtocolError, "WINDOW_UPDATE of 0"));
            }
            self.send_window += increment;
            if self.send_window > frame::MAX_WINDOW {
                return Err(ConnError(
                    Reason::FlowControlError,
                    "connection window over 2^31-1",
                ));
            }
            if self.send_window > 0 {
                self.window_blocked_since = None;
            }
            return Ok(());
        }
        let Some(stream) = self.streams.get_mut(&head.stream) else {
            if head.stream > self.last_stream {
                return Err(ConnError(
                    Reason::ProtocolError,
                    "WINDOW_UPDATE on a stream never opened",
                ));
            }
            return Ok(());
        };
        if increment == 0 {
            return self.reset_stream(head.stream, Reason::ProtocolError);
        }
        stream.send_window += increment;
        if stream.send_window > frame::MAX_WINDOW {
            return self.reset_stream(head.stream, Reason::FlowControlError);
        }
        stream.blocked_since = None;
        self.pump(head.stream, cx);
        Ok(())
    }

    // ---- streams -------------------------------------------------------------------------

    /// Resets a stream for the client's error (RST_STREAM with `reason`), within the budget.
    fn reset_stream(&mut self, id: u32, reason: Reason) -> Result<(), ConnError> {
        frame::write_reset(&mut self.out, id, reason);
        if let Some(stream) = self.streams.remove(&id) {
            self.drop_stream(stream);
        }
        if self.resets.take() {
            Ok(())
        } else {
            Err(ConnError(Reason::EnhanceYourCalm, "too many streams reset"))
        }
    }

    /// Forgets a stream that was removed from the map: its tasks stop, its body reader
    /// hears of the end.
    fn drop_stream(&mut self, stream: Stream<B>) {
        stream.cancel.cancel();
        if let Some(inbox) = stream.inbox {
            // What its reader had not taken: the room goes back to the connection.
            let thrown = inbox.discard();
            self.release_connection(thrown);
        }
        if self.streams.is_empty() {
            self.idle_since = Instant::now();
        }
    }

    /// Removes a stream whose answer is sent once nothing more will come from the client
    /// either (or nobody reads it: then the client is told to stop with NO_ERROR).
    fn maybe_close(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !matches!(stream.send, Sending::Done) {
            return;
        }
        if stream.recv_open {
            if stream.inbox.is_some() {
                // The handler (or a drain of the rest) still reads the body.
                return;
            }
            frame::write_reset(&mut self.out, id, Reason::NoError);
        }
        if let Some(stream) = self.streams.remove(&id) {
            self.drop_stream(stream);
        }
    }

    /// An interim `100 (Continue)` on a stream whose handler waits for the body and has not
    /// answered yet (RFC 9113 §8.1: informational HEADERS before the final ones).
    fn send_continue(&mut self, id: u32) {
        let Some(stream) = self.streams.get(&id) else {
            return;
        };
        if !stream.recv_open || !matches!(stream.send, Sending::Waiting) {
            return;
        }
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        if let Some(size) = self.table_update.take() {
            hpack::encode_table_size(&mut block, size);
        }
        hpack::encode_status(&mut block, 100);
        self.write_headers(id, &block, false);
        self.block = block;
    }

    /// A local answer without a body (431), ending the stream.
    fn answer_local(&mut self, id: u32, status: u16, end_stream: bool) {
        let mut block = std::mem::take(&mut self.block);
        block.clear();
        if let Some(size) = self.table_update.take() {
            hpack::encode_table_size(&mut block, size);
        }
        hpack::encode_status(&mut block, status);
        hpack::encode_field(&mut block, b"content-length", b"0", false);
        self.write_headers(id, &block, true);
        self.block = block;
        if !end_stream {
            frame::write_reset(&mut self.out, id, Reason::NoError);
        }
    }

    fn take_notes(&mut self) {
        let mut noted = std::mem::take(&mut self.noted);
        self.notes.take(&mut noted);
        for note in &noted {
            match *note {
                Note::Consumed(id, n) => self.release(id, n),
                Note::Dropped(id, thrown) => {
                    self.release(id, thrown);
                    if let Some(stream) = self.streams.get_mut(&id) {
                        stream.inbox = None;
                        self.maybe_close(id);
                    }
                }
                Note::Continue(id) => self.send_continue(id),
            }
        }
        self.noted = noted;
    }

    /// `n` bytes of stream `id`'s DATA are consumed (or thrown away): the windows reopen, in
    /// WINDOW_UPDATEs of at least half a window so they stay few.
    fn release(&mut self, id: u32, n: usize) {
        self.release_connection(n);
        if let Some(stream) = self.streams.get_mut(&id)
            && stream.recv_open
        {
            stream.recv_unacked += n;
            if stream.recv_unacked >= self.options.stream_window as usize / 2 {
                frame::write_window_update(&mut self.out, id, stream.recv_unacked as u32);
                stream.recv_window += stream.recv_unacked as i64;
                stream.recv_unacked = 0;
            }
        }
    }

    fn release_connection(&mut self, n: usize) {
        self.recv_unacked += n;
        if self.recv_unacked >= self.options.connection_window as usize / 2 {
            frame::write_window_update(&mut self.out, 0, self.recv_unacked as u32);
            self.recv_window += self.recv_unacked as i64;
            self.recv_unacked = 0;
        }
    }

    // ---- answers -------------------------------------------------------------------------

    fn on_event(&mut self, event: Event<B>, cx: &mut Context<'_>) -> Result<(), ConnError> {
        match event {
            Event::Cancelled => {}
            Event::Response(id, reply) => {
                if !self.streams.contains_key(&id) {
                    return Ok(());
                }
                let Reply {
                    status,
                    headers,
                    encoded,
                    body,
                } = reply;
                let head_request = self.streams.get(&id).is_some_and(|s| s.head_request);
                // A response to HEAD has no content (RFC 9110 §9.3.2), whatever the body says.
                let end = head_request || body.is_end_stream();
                let mut block = std::mem::take(&mut self.block);
                block.clear();
                if let Some(size) = self.table_update.take() {
                    hpack::encode_table_size(&mut block, size);
                }
                encode_head(&mut block, status.as_u16(), &headers);
                block.extend_from_slice(&encoded);
                // The length of a body known in advance, as hyper said it, where no field
                // does and one is allowed (not 1xx, 204, 304).
                let bodiless = status.is_informational()
                    || status == http::StatusCode::NO_CONTENT
                    || status == http::StatusCode::NOT_MODIFIED;
                if encoded.is_empty()
                    && !bodiless
                    && !head_request
                    && !headers.contains_key(http::header::CONTENT_LENGTH)
                    && let Some(n) = body.size_hint().exact()
                {
                    let mut digits = itoa::Buffer::new();
                    let digits = digits.format(n).as_bytes();
                    hpack::encode_field(&mut block, b"content-length", digits, false);
                }
                self.write_headers(id, &block, end);
                self.block = block;
                let stream = self.streams.get_mut(&id).expect("checked above");
                if end {
                    stream.send = Sending::Done;
                    self.maybe_close(id);
                } else {
                    stream.send = Sending::Body {
                        body: Some(body),
                        pending: Bytes::new(),
                        end: false,
                        trailers: None,
                    };
                    self.pump(id, cx);
                }
            }
            Event::Frame(id, body, frame) => {
                let Some(stream) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                if let Sending::Body { body: slot, .. } = &mut stream.send {
                    *slot = Some(body);
                }
                self.on_body_frame(id, frame);
                self.pump(id, cx);
            }
        }
        Ok(())
    }

    /// What the response body gave: data to send, trailers, its end, or an error (the
    /// stream is reset: the client must not take a cut answer for a whole one).
    fn on_body_frame(&mut self, id: u32, frame: Option<Result<http_body::Frame<Bytes>, B::Error>>) {
        let Some(stream) = self.streams.get_mut(&id) else {
            return;
        };
        let Sending::Body {
            body,
            pending,
            end,
            trailers,
        } = &mut stream.send
        else {
            return;
        };
        match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    *pending = data;
                    if body.as_ref().is_some_and(Body::is_end_stream) {
                        *end = true;
                    }
                }
                Err(frame) => {
                    *trailers = frame.into_trailers().ok();
                    *end = true;
                }
            },
            None => *end = true,
            Some(Err(error)) => {
                tracing::debug!(stream = id, %error, "HTTP/2 response body failed; stream reset");
                frame::write_reset(&mut self.out, id, Reason::InternalError);
                if let Some(stream) = self.streams.remove(&id) {
                    self.drop_stream(stream);
                }
            }
        }
    }

    /// Sends what stream `id` may: pending data within both windows and the frame size,
    /// then its end, or asks its body for more.
    fn pump(&mut self, id: u32, cx: &mut Context<'_>) {
        loop {
            let Some(stream) = self.streams.get_mut(&id) else {
                return;
            };
            let Sending::Body {
                body,
                pending,
                end,
                trailers,
            } = &mut stream.send
            else {
                return;
            };
            if !pending.is_empty() {
                if stream.send_window <= 0 {
                    stream.blocked_since.get_or_insert_with(Instant::now);
                    return;
                }
                // Its own window is open: whatever holds it now is not the client's window.
                stream.blocked_since = None;
                if self.out.len() - self.out_sent >= OUT_HIGH || self.send_window <= 0 {
                    if self.send_window <= 0 {
                        self.window_blocked_since.get_or_insert_with(Instant::now);
                    }
                    if !stream.queued {
                        stream.queued = true;
                        self.ready.push_back(id);
                    }
                    return;
                }
                let n = (pending.len() as i64)
                    .min(self.send_window)
                    .min(stream.send_window)
                    .min(self.peer_max_frame as i64) as usize;
                let last = n == pending.len() && *end && trailers.is_none();
                frame::write_head(
                    &mut self.out,
                    n,
                    kind::DATA,
                    if last { flag::END_STREAM } else { 0 },
                    id,
                );
                self.out.extend_from_slice(&pending[..n]);
                pending.advance(n);
                self.send_window -= n as i64;
                stream.send_window -= n as i64;
                if last {
                    stream.send = Sending::Done;
                    self.maybe_close(id);
                    return;
                }
                continue;
            }
            if *end {
                match trailers.take() {
                    Some(trailers) => {
                        let mut block = std::mem::take(&mut self.block);
                        block.clear();
                        if let Some(size) = self.table_update.take() {
                            hpack::encode_table_size(&mut block, size);
                        }
                        for (name, value) in &trailers {
                            hpack::encode_field(
                                &mut block,
                                name.as_str().as_bytes(),
                                value.as_bytes(),
                                value.is_sensitive(),
                            );
                        }
                        stream.send = Sending::Done;
                        self.write_headers(id, &block, true);
                        self.block = block;
                    }
                    None => {
                        stream.send = Sending::Done;
                        frame::write_head(&mut self.out, 0, kind::DATA, flag::END_STREAM, id);
                    }
                }
                self.maybe_close(id);
                return;
            }
            let Some(inner) = body.as_mut() else {
                // A pull is under way.
                return;
            };
            if self.out.len() - self.out_sent >= OUT_HIGH {
                if !stream.queued {
                    stream.queued = true;
                    self.ready.push_back(id);
                }
                return;
            }
            match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(frame) => self.on_body_frame(id, frame),
                Poll::Pending => {
                    let body = body.take();
                    let cancel = stream.cancel.clone();
                    self.tasks.push(Task::Pull(id, cancel, body));
                    return;
                }
            }
        }
    }

    /// Streams waiting for the connection's window or for room in the output, in turn.
    fn pump_ready(&mut self, cx: &mut Context<'_>) {
        let mut turns = self.ready.len();
        while turns > 0 && self.send_window > 0 && self.unsent() < OUT_HIGH {
            turns -= 1;
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            if let Some(stream) = self.streams.get_mut(&id) {
                stream.queued = false;
                self.pump(id, cx);
            }
        }
    }

    /// Appends a header block as HEADERS and, past the client's frame size, CONTINUATIONs.
    fn write_headers(&mut self, id: u32, block: &[u8], end_stream: bool) {
        let max = self.peer_max_frame;
        let mut chunks = block.chunks(max).peekable();
        let first = chunks.next().unwrap_or(&[]);
        let mut flags = if end_stream { flag::END_STREAM } else { 0 };
        if chunks.peek().is_none() {
            flags |= flag::END_HEADERS;
        }
        frame::write_head(&mut self.out, first.len(), kind::HEADERS, flags, id);
        self.out.extend_from_slice(first);
        while let Some(chunk) = chunks.next() {
            let flags = if chunks.peek().is_none() {
                flag::END_HEADERS
            } else {
                0
            };
            frame::write_head(&mut self.out, chunk.len(), kind::CONTINUATION, flags, id);
            self.out.extend_from_slice(chunk);
        }
    }

    // ---- writing and time ----------------------------------------------------------------

    /// Writes the output. Ready(Ok(true)) when bytes moved.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<bool>> {
        let mut wrote = false;
        while self.out_sent < self.out.len() {
            match Pin::new(&mut self.io).poll_write(cx, &self.out[self.out_sent..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.out_sent += n;
                    self.needs_flush = true;
                    wrote = true;
                    // A client that reads slowly but reads is not stalled.
                    self.write_blocked_since = None;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    self.write_blocked_since.get_or_insert_with(Instant::now);
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        self.out.clear();
        self.out_sent = 0;
        if self.needs_flush {
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.needs_flush = false,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    self.write_blocked_since.get_or_insert_with(Instant::now);
                    return if wrote {
                        Poll::Ready(Ok(true))
                    } else {
                        Poll::Pending
                    };
                }
            }
        }
        self.write_blocked_since = None;
        if wrote {
            Poll::Ready(Ok(true))
        } else {
            Poll::Ready(Ok(false))
        }
    }

    /// The earliest moment something is due: GOAWAY for idleness, a PING or its timeout, a
    /// stall.
    fn next_deadline(&self) -> Instant {
        let mut due = self.last_read + self.options.ping_interval;
        if let Some(sent) = self.ping_sent {
            due = sent + self.options.ping_timeout;
        }
        if self.streams.is_empty() && !self.going_away {
            due = due.min(self.idle_since + self.options.idle);
        }
        for since in [
            self.write_blocked_since,
            self.window_blocked_since,
            self.shutdown_since,
        ]
        .into_iter()
        .flatten()
        {
            due = due.min(since + self.options.stall);
        }
        for stream in self.streams.values() {
            if let Some(since) = stream.blocked_since {
                due = due.min(since + self.options.stall);
            }
        }
        due
    }

    /// Fires what is due. Ready(Ok) when something was done, Ready(Err) when the connection
    /// must end.
    fn poll_timers(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Ended>> {
        let due = self.next_deadline();
        if due < self.timer_at {
            self.timer_at = due;
            self.timer.as_mut().reset(due);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        let now = Instant::now();
        let mut acted = false;
        if let Some(sent) = self.ping_sent
            && now >= sent + self.options.ping_timeout
        {
            return Poll::Ready(Err(Ended::Timeout("the client answered no PING")));
        }
        // The connection's window counts only while some stream still waits for it.
        if !self.ready.iter().any(|id| self.streams.contains_key(id)) {
            self.window_blocked_since = None;
        }
        let stalled = |since: Option<Instant>| since.is_some_and(|s| now >= s + self.options.stall);
        if stalled(self.shutdown_since) {
            return Poll::Ready(Err(Ended::Timeout("the client took nothing of the close")));
        }
        if stalled(self.write_blocked_since)
            || stalled(self.window_blocked_since)
            || self.streams.values().any(|s| {
                s.blocked_since
                    .is_some_and(|since| now >= since + self.options.stall)
            })
        {
            return Poll::Ready(Err(Ended::Timeout("the client stopped reading an answer")));
        }
        if self.ping_sent.is_none()
            && self.shutdown_since.is_none()
            && now >= self.last_read + self.options.ping_interval
        {
            frame::write_ping(&mut self.out, false, *b"webstack");
            self.ping_sent = Some(now);
            acted = true;
        }
        if self.streams.is_empty() && !self.going_away && now >= self.idle_since + self.options.idle
        {
            tracing::debug!(idle = ?self.options.idle, "idle HTTP/2 connection closed");
            self.go_away(Reason::NoError);
            acted = true;
        }
        let next = self.next_deadline().max(now + Duration::from_millis(1));
        self.timer_at = next;
        self.timer.as_mut().reset(next);
        let _ = self.timer.as_mut().poll(cx);
        if acted {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }
}

impl<I, S, B: Body> Drop for Connection<I, S, B> {
    /// However the connection ends (an I/O error too), handlers still holding a request body
    /// (a drain) hear of it.
    fn drop(&mut self) {
        for stream in self.streams.values() {
            stream.cancel.cancel();
            if let Some(inbox) = &stream.inbox {
                inbox.discard();
            }
        }
        buffers::give_read(std::mem::take(&mut self.read));
        buffers::give_write(std::mem::take(&mut self.out));
    }
}

/// The response head: `:status`, then the fields, without those HTTP/2 forbids (RFC 9113
/// §8.2.2).
fn encode_head(block: &mut Vec<u8>, status: u16, headers: &HeaderMap) {
    hpack::encode_status(block, status);
    for (name, value) in headers {
        if is_connection_specific(name) {
            continue;
        }
        hpack::encode_field(
            block,
            name.as_str().as_bytes(),
            value.as_bytes(),
            value.is_sensitive(),
        );
    }
}

fn is_connection_specific(name: &HeaderName) -> bool {
    hpack::is_connection_specific(name.as_str().as_bytes())
}

/// Trailers from decoded fields (invalid ones are left out: they reach no one).
fn fields_to_map(arena: &[u8], fields: &[Field]) -> Option<HeaderMap> {
    let mut map = HeaderMap::new();
    for field in fields {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&arena[field.name.clone()]),
            HeaderValue::from_bytes(&arena[field.value.clone()]),
        ) else {
            continue;
        };
        if !is_connection_specific(&name) {
            map.append(name, value);
        }
    }
    (!map.is_empty()).then_some(map)
}
