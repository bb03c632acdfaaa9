//! Moving a message body from one connection to the other: `Content-Length` bytes, chunked
//! (validated chunk by chunk and re-emitted in canonical form, or unwrapped for an HTTP/1.0
//! client), or everything until the server closes. Reads and writes go through the connections'
//! own buffers; what follows the body (a pipelined request) stays in the source buffer.
//!
//! Chunked bodies are never passed on as they came: the receiver sees `{size:x}\r\n` lines of
//! our own, no extensions and no trailers, so a chunk-size line two parsers could read
//! differently (`5 5`, `5;a\nb`) cannot reach a server.

use std::io::{self, IoSlice};
use std::ops::Range;
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::head::Framing;

/// Read size for a connection buffer (HAProxy's `tune.bufsize` is 16 KiB too).
pub const BUFFER: usize = 16 * 1024;
/// Largest read of a body: a 64 KiB response moves in one read and one write instead of four
/// of each (pooled connections give the memory back, see `pool::Pool::checkin`).
pub const MAX_READ: usize = 64 * 1024;
/// A chunk-size line with its extensions, or one trailer line, may not be longer.
const MAX_LINE: usize = 4096;
/// Trailer lines after the last chunk.
const MAX_TRAILERS: usize = 100;
/// Chunk data pieces smaller than this are copied next to their framing and written together;
/// larger ones are written from the buffer they came in.
const COPY_BELOW: usize = 4096;

/// A body read or write that makes no progress for this long ends the exchange (HAProxy's
/// `timeout client` / `timeout server` for data), on every path.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// A body nobody will use (the server answered before it was all sent, or the connection
/// closes) is still read and dropped for a while, at most this long, this long between reads,
/// and this many bytes, so the client can finish sending and read the answer instead of losing
/// it to a TCP reset (nginx: `lingering_time`, `lingering_timeout`).
pub const LINGER_TIME: Duration = Duration::from_secs(5);
pub const LINGER_IDLE: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: u64 = 64 * 1024 * 1024;

/// A chunked body's syntax error (the sender is broken or malicious).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Hex digits of a chunk size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size (RFC 9112's BWS): only more of it, `;` or CR may follow.
    SizeSpace {
        size: u64,
        len: usize,
    },
    /// After `;`: extensions up to CR (dropped on re-emission).
    Extension {
        size: u64,
        len: usize,
    },
    /// LF ending the size line.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// A trailer line (or the final empty line); `len` bytes so far.
    Trailer {
        len: usize,
        lines: usize,
    },
    TrailerLf {
        empty: bool,
        lines: usize,
    },
    Done,
}

/// A streaming validator of the chunked coding (RFC 9112 §7.1): strict CRLFs, bounded lines,
/// a size of at most 16 hex digits, nothing but whitespace between a size and `;` or CR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunked {
    state: State,
}

impl Default for Chunked {
    fn default() -> Self {
        Self {
            state: State::Size { size: 0, digits: 0 },
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes framing from `input` up to and including the next piece of chunk data (or to
    /// the end of the input, or of the body). Returns the bytes consumed and where in them the
    /// data piece is.
    pub fn advance(&mut self, input: &[u8]) -> Result<(usize, Option<Range<usize>>), Malformed> {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            self.state = match self.state {
                State::Size { size, digits } => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < 16 => {
                        let value = (byte as char).to_digit(16).unwrap_or(0);
                        State::Size {
                            size: size * 16 + u64::from(value),
                            digits: digits + 1,
                        }
                    }
                    _ if digits == 16 && byte.is_ascii_hexdigit() => {
                        return Err(Malformed("chunk size too large"));
                    }
                    b'\r' if digits > 0 => State::SizeLf { size },
                    b';' if digits > 0 => State::Extension { size, len: 1 },
                    b' ' | b'\t' if digits > 0 => State::SizeSpace { size, len: 1 },
                    _ => return Err(Malformed("invalid chunk size")),
                },
                State::SizeSpace { size, len } => match byte {
                    _ if len >= MAX_LINE => return Err(Malformed("chunk size line too long")),
                    b' ' | b'\t' => State::SizeSpace { size, len: len + 1 },
                    b';' => State::Extension { size, len: len + 1 },
                    b'\r' => State::SizeLf { size },
                    _ => return Err(Malformed("invalid chunk size")),
                },
                State::Extension { size, len } => match byte {
                    b'\r' => State::SizeLf { size },
                    _ if len >= MAX_LINE => return Err(Malformed("chunk extension too long")),
                    b'\t' | b' '..=b'~' | 0x80.. => State::Extension { size, len: len + 1 },
                    _ => return Err(Malformed("control character in a chunk extension")),
                },
                State::SizeLf { size } => match byte {
                    b'\n' if size == 0 => State::Trailer { len: 0, lines: 0 },
                    b'\n' => State::Data { left: size },
                    _ => return Err(Malformed("chunk size line without CRLF")),
                },
                State::Data { left } => {
                    let available = (input.len() - i) as u64;
                    let take = left.min(available) as usize;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    return Ok((i + take, Some(i..i + take)));
                }
                State::DataCr => match byte {
                    b'\r' => State::DataLf,
                    _ => return Err(Malformed("chunk data longer than its size")),
                },
                State::DataLf => match byte {
                    b'\n' => State::Size { size: 0, digits: 0 },
                    _ => return Err(Malformed("chunk data without CRLF")),
                },
                State::Trailer { len, lines } => match byte {
                    b'\r' => State::TrailerLf {
                        empty: len == 0,
                        lines,
                    },
                    _ if len >= MAX_LINE => return Err(Malformed("trailer line too long")),
                    b'\t' | b' '..=b'~' | 0x80.. => State::Trailer {
                        len: len + 1,
                        lines,
                    },
                    _ => return Err(Malformed("control character in the trailer")),
                },
                State::TrailerLf { empty, lines } => match byte {
                    b'\n' if empty => State::Done,
                    b'\n' if lines < MAX_TRAILERS => State::Trailer {
                        len: 0,
                        lines: lines + 1,
                    },
                    b'\n' => return Err(Malformed("too many trailer lines")),
                    _ => return Err(Malformed("trailer line without CRLF")),
                },
                State::Done => return Ok((i, None)),
            };
            i += 1;
            if self.state == State::Done {
                return Ok((i, None));
            }
        }
        Ok((i, None))
    }
}

/// How much of a message body is still to come from its sender. A relay updates it only once
/// what it read has been passed on, so a relay stopped midway (an early response) leaves it
/// exact, and `discard` can read the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyState {
    Length(u64),
    Chunked(Chunked),
    /// Until the sender closes (responses only).
    Close,
    Done,
}

impl BodyState {
    pub fn new(framing: Framing) -> Self {
        match framing {
            Framing::Length(0) => Self::Done,
            Framing::Length(n) => Self::Length(n),
            Framing::Chunked => Self::Chunked(Chunked::default()),
            Framing::Close => Self::Close,
        }
    }

    pub fn is_done(&self) -> bool {
        *self == Self::Done
    }
}

/// Why a body could not be moved.
#[derive(Debug)]
pub enum RelayError {
    /// Reading the sending side failed, timed out, or it closed before the body ended.
    Read(io::Error),
    /// Writing to the receiving side failed or timed out.
    Write(io::Error),
    /// The chunked coding was broken.
    Malformed(Malformed),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(error) => write!(f, "read: {error}"),
            Self::Write(error) => write!(f, "write: {error}"),
            Self::Malformed(Malformed(what)) => f.write_str(what),
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no progress within the timeout")
}

/// `fut` within `limit`, the deadline set only when `fut` does not finish on its first poll:
/// most reads of a body already received, writes and flushes do, and a deadline costs a
/// clock read and the timer wheel's work on every call. `None` when the time ran out.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| match fut.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await;
    match first {
        Some(output) => Some(output),
        None => tokio::time::timeout(limit, fut).await.ok(),
    }
}

/// Reads more into `buf` within `idle`, room for up to `want` bytes (at least a quarter
/// buffer, at most `MAX_READ`); 0 means the peer closed.
pub async fn read_more<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    want: usize,
    idle: Duration,
) -> io::Result<usize> {
    within(idle, read_some(src, buf, want))
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

/// `read_more` without a timer of its own, for callers that wait under a deadline already
/// (one timer per wait, not two).
pub async fn read_some<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    let want = want.clamp(BUFFER, MAX_READ);
    if buf.capacity() - buf.len() < want.min(BUFFER / 4)
        || (buf.is_empty() && buf.capacity() < want)
    {
        buf.reserve(want);
    }
    src.read_buf(buf).await
}

/// Room for a request head (and a response head): what a TLS connection holds while it waits
/// for its next request (a plain socket holds nothing then).
pub const HEAD_BUFFER: usize = 4 * 1024;

/// Reads part of a request head into `buf`: an empty buffer gets `HEAD_BUFFER` (most heads fit),
/// a head that does not fit doubles it, up to the caller's head bound.
pub async fn read_head_some<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
) -> io::Result<usize> {
    src.read_buf(head_room(buf)).await
}

/// `buf` with room for the next read of a head: grown by at least a head's worth (doubling a
/// long one) when little is left.
pub fn head_room(buf: &mut BytesMut) -> &mut BytesMut {
    crate::recycle::take_head(buf);
    if buf.capacity() - buf.len() < HEAD_BUFFER / 4 {
        buf.reserve(buf.len().max(HEAD_BUFFER));
    }
    buf
}

/// Writes every slice, in as few system calls as the kernel takes, within `idle` per call.
pub async fn write_all<W: AsyncWrite + Unpin>(
    dst: &mut W,
    mut slices: &mut [IoSlice<'_>],
    idle: Duration,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut slices, 0);
    while !slices.is_empty() {
        let written = match within(idle, dst.write_vectored(slices)).await {
            Some(result) => result?,
            None => return Err(timed_out()),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut slices, written);
    }
    Ok(())
}

/// Writes `first` then `second` (either may be empty); see `write_all`.
pub async fn write_two<W: AsyncWrite + Unpin>(
    dst: &mut W,
    first: &[u8],
    second: &[u8],
    idle: Duration,
) -> io::Result<()> {
    write_all(dst, &mut [IoSlice::new(first), IoSlice::new(second)], idle).await
}

/// Sends `head` followed by the rest of the body `body` says is to come, read from `src`
/// (starting with what `buf` already holds): as it came for a length or a close-delimited
/// body, canonically re-chunked for a chunked one, or without the chunk framing when
/// `dechunk` (an HTTP/1.0 client). `idle` bounds every read and write. What follows the body
/// stays in `buf`; `body` says how far it got when an error stops it.
pub async fn relay<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    body: &mut BodyState,
    dechunk: bool,
    dst: &mut W,
    head: &[u8],
    idle: Duration,
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut head = head;
    // Chunk framing and small data pieces, written together (reused across reads).
    let mut framed = Vec::new();
    loop {
        let want = match body {
            BodyState::Done => {
                if !head.is_empty() {
                    write_two(dst, head, &[], idle)
                        .await
                        .map_err(RelayError::Write)?;
                }
                return Ok(());
            }
            BodyState::Length(left) => {
                let take = ((*left).min(buf.len() as u64)) as usize;
                if !head.is_empty() || take > 0 {
                    write_two(dst, head, &buf[..take], idle)
                        .await
                        .map_err(RelayError::Write)?;
                    head = &[];
                    buf.advance(take);
                    *left -= take as u64;
                }
                if *left == 0 {
                    *body = BodyState::Done;
                    continue;
                }
                usize::try_from(*left).unwrap_or(MAX_READ)
            }
            BodyState::Close => {
                if !head.is_empty() || !buf.is_empty() {
                    write_two(dst, head, buf, idle)
                        .await
                        .map_err(RelayError::Write)?;
                    head = &[];
                    buf.clear();
                }
                MAX_READ
            }
            BodyState::Chunked(chunked) => {
                let mut decoder = *chunked;
                let (used, large) = frame_chunks(&mut decoder, buf, dechunk, &mut framed)
                    .map_err(RelayError::Malformed)?;
                if !head.is_empty() || used > 0 {
                    // A large piece goes out from `buf`, with its own framing unless dechunked.
                    let data = large.clone().map_or(&[][..], |range| &buf[range]);
                    let line = SizeLine::new(data.len());
                    let (size_line, end) = if dechunk || data.is_empty() {
                        (&[][..], &[][..])
                    } else {
                        (line.as_bytes(), &b"\r\n"[..])
                    };
                    let mut slices = [
                        IoSlice::new(head),
                        IoSlice::new(&framed),
                        IoSlice::new(size_line),
                        IoSlice::new(data),
                        IoSlice::new(end),
                    ];
                    write_all(dst, &mut slices, idle)
                        .await
                        .map_err(RelayError::Write)?;
                    head = &[];
                    buf.advance(used);
                }
                *body = if decoder.is_done() {
                    BodyState::Done
                } else {
                    BodyState::Chunked(decoder)
                };
                // Done, or stopped after a large piece with more buffered: no read needed.
                if body.is_done() || large.is_some() {
                    continue;
                }
                MAX_READ
            }
        };
        match read_more(src, buf, want, idle).await {
            Ok(0) if *body == BodyState::Close => {
                *body = BodyState::Done;
            }
            Ok(0) => return Err(RelayError::Read(io::ErrorKind::UnexpectedEof.into())),
            Ok(_) => {}
            Err(error) => return Err(RelayError::Read(error)),
        }
    }
}

/// A chunk-size line of our own: up to 16 hex digits and CRLF.
pub(crate) struct SizeLine {
    bytes: [u8; 18],
    len: usize,
}

impl SizeLine {
    pub(crate) fn new(size: usize) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 16];
        let mut n = size;
        let mut count = 0;
        loop {
            digits[15 - count] = HEX[n & 0xf];
            count += 1;
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        let mut bytes = [0u8; 18];
        bytes[..count].copy_from_slice(&digits[16 - count..]);
        bytes[count..count + 2].copy_from_slice(b"\r\n");
        Self {
            bytes,
            len: count + 2,
        }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Decodes the chunked framing in `buf` and writes its canonical form into `framed` (just the
/// data when `dechunk`): each data piece as one chunk, the end as `0\r\n\r\n` (trailers
/// dropped). Stops after a data piece of `COPY_BELOW` bytes or more, which is returned (where it
/// is in `buf`) to be written from `buf` itself, after `framed`. Returns the bytes of `buf`
/// consumed.
fn frame_chunks(
    decoder: &mut Chunked,
    buf: &[u8],
    dechunk: bool,
    framed: &mut Vec<u8>,
) -> Result<(usize, Option<Range<usize>>), Malformed> {
    framed.clear();
    let mut used = 0;
    while used < buf.len() && !decoder.is_done() {
        let (n, data) = decoder.advance(&buf[used..])?;
        let data = data
            .filter(|d| !d.is_empty())
            .map(|d| used + d.start..used + d.end);
        used += n;
        let Some(data) = data else { continue };
        if data.len() >= COPY_BELOW {
            return Ok((used, Some(data)));
        }
        let line = SizeLine::new(data.len());
        if !dechunk {
            framed.extend_from_slice(line.as_bytes());
        }
        framed.extend_from_slice(&buf[data]);
        if !dechunk {
            framed.extend_from_slice(b"\r\n");
        }
    }
    if decoder.is_done() && !dechunk {
        framed.extend_from_slice(b"0\r\n\r\n");
    }
    Ok((used, None))
}

/// Reads and drops the rest of a body, reading at most `max_bytes` more from `src` within
/// `idle` per read. True when the body ended (the connection is at a message boundary again).
pub async fn discard<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    body: &mut BodyState,
    max_bytes: u64,
    idle: Duration,
) -> bool {
    if body.is_done() {
        return true;
    }
    let mut limited = src.take(max_bytes);
    relay(
        &mut limited,
        buf,
        body,
        true,
        &mut tokio::io::sink(),
        &[],
        idle,
    )
    .await
    .is_ok()
}

/// Flushes buffered output (a TLS stream holds records until flushed).
pub async fn flush<W: AsyncWrite + Unpin>(dst: &mut W, idle: Duration) -> io::Result<()> {
    within(idle, dst.flush())
        .await
        .unwrap_or_else(|| Err(timed_out()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn within_answers_at_once_later_or_none_when_the_time_runs_out() {
        let limit = Duration::from_secs(5);
        assert_eq!(within(limit, async { 1 }).await, Some(1));
        let later = tokio::time::sleep(Duration::from_secs(4));
        assert_eq!(within(limit, later).await, Some(()));
        let started = tokio::time::Instant::now();
        let never = std::future::pending::<()>();
        assert_eq!(within(limit, never).await, None);
        assert_eq!(
            started.elapsed(),
            limit,
            "the deadline counts from the first poll"
        );
    }

    /// Feeds `input` in pieces of `step` bytes; returns the data and the bytes consumed.
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), Malformed> {
        let mut chunked = Chunked::default();
        let mut data = Vec::new();
        let mut pos = 0;
        while pos < input.len() && !chunked.is_done() {
            let end = (pos + step).min(input.len());
            let mut piece = &input[pos..end];
            while !piece.is_empty() && !chunked.is_done() {
                let (used, range) = chunked.advance(piece)?;
                if let Some(range) = range {
                    data.extend_from_slice(&piece[range]);
                }
                piece = &piece[used..];
                pos += used;
            }
        }
        assert!(chunked.is_done(), "incomplete");
        Ok((data, pos))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let body =
            b"5\r\nhello\r\n7;name=value\r\n, world\r\n3 \t;x\r\n!!!\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, used) = decode(body, step).unwrap();
            assert_eq!(data, b"hello, world!!!", "step {step}");
            assert_eq!(&body[used..], b"NEXT", "step {step}");
        }
        assert_eq!(decode(b"0\r\n\r\n", 1).unwrap().0, b"");
        assert_eq!(
            decode(b"A\r\n0123456789\r\n0\r\n\r\n", 4).unwrap().0,
            b"0123456789"
        );
    }

    #[test]
    fn broken_chunked_bodies_are_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello!\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"-1\r\n",
            b";ext\r\n",
            b"0\r\nX: 1\n\r\n",
            // A size two parsers could read differently.
            b"5 5\r\nhello\r\n0\r\n\r\n",
            b"5 x\r\n",
            b"5;a\nb\r\n",
            b"5;a\x00\r\n",
            b"0\r\nX: a\x01\r\n\r\n",
        ] {
            let mut chunked = Chunked::default();
            let mut input = bad;
            let result = loop {
                match chunked.advance(input) {
                    Err(error) => break Err(error),
                    Ok((used, _)) if used == 0 || chunked.is_done() => break Ok(()),
                    Ok((used, _)) => input = &input[used..],
                }
            };
            assert!(result.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    async fn relay_all(input: &[u8], framing: Framing, dechunk: bool) -> (Vec<u8>, BytesMut) {
        // The source is empty: everything is already buffered, as after a head read.
        let mut src: &[u8] = &[];
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        let mut body = BodyState::new(framing);
        relay(
            &mut src,
            &mut buf,
            &mut body,
            dechunk,
            &mut out,
            b"HEAD|",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert!(body.is_done());
        (out, buf)
    }

    #[tokio::test]
    async fn relay_moves_exactly_one_body_and_rechunks_canonically() {
        let big = "x".repeat(5000);
        let big_in = format!("1388;ext=1\r\n{big}\r\n0\r\nTrailer: dropped\r\n\r\nNEXT");
        let big_out = format!("1388\r\n{big}\r\n0\r\n\r\n");
        let cases: [(Framing, bool, &[u8], &[u8]); 6] = [
            (Framing::Length(5), false, b"helloNEXT", b"hello"),
            (Framing::Length(0), false, b"NEXT", b""),
            (
                Framing::Chunked,
                false,
                b"2;a=b\r\nhi\r\n0\r\nX-T: 1\r\n\r\nNEXT",
                b"2\r\nhi\r\n0\r\n\r\n",
            ),
            (
                Framing::Chunked,
                true,
                b"2\r\nhi\r\n3\r\nyou\r\n0\r\n\r\nNEXT",
                b"hiyou",
            ),
            (
                Framing::Chunked,
                false,
                big_in.as_bytes(),
                big_out.as_bytes(),
            ),
            (Framing::Chunked, true, big_in.as_bytes(), big.as_bytes()),
        ];
        for (framing, dechunk, input, expected) in cases {
            let (out, buf) = relay_all(input, framing, dechunk).await;
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&[&b"HEAD|"[..], expected].concat()),
                "{framing:?} dechunk {dechunk}"
            );
            assert_eq!(&buf[..], b"NEXT");
        }
    }

    #[tokio::test]
    async fn relay_reads_the_rest_and_notices_truncation() {
        let mut src: &[u8] = b"lo";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let mut out = Vec::new();
        let mut body = BodyState::new(Framing::Length(10));
        let cut = relay(
            &mut src,
            &mut buf,
            &mut body,
            false,
            &mut out,
            b"",
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(cut, Err(RelayError::Read(_))), "{cut:?}");
        assert_eq!(out, b"hello");
        assert_eq!(body, BodyState::Length(5), "progress kept for a discard");

        let mut src: &[u8] = b" world";
        let mut buf = BytesMut::from(&b"hello"[..]);
        let mut out = Vec::new();
        let mut body = BodyState::new(Framing::Close);
        relay(
            &mut src,
            &mut buf,
            &mut body,
            false,
            &mut out,
            b"",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(out, b"hello world");
    }

    #[tokio::test]
    async fn discard_reads_the_rest_within_its_bound() {
        let rest = vec![b'x'; 1000];
        let mut src: &[u8] = &rest;
        let mut buf = BytesMut::from(&b"abc"[..]);
        let mut body = BodyState::new(Framing::Length(1003));
        assert!(discard(&mut src, &mut buf, &mut body, 1000, Duration::from_secs(1)).await);
        let mut src: &[u8] = &rest;
        let mut body = BodyState::new(Framing::Length(1003));
        assert!(
            !discard(
                &mut src,
                &mut BytesMut::new(),
                &mut body,
                999,
                Duration::from_secs(1)
            )
            .await,
            "more than the bound"
        );
        let mut src: &[u8] = b"ld\r\n0\r\n\r\n";
        let mut buf = BytesMut::from(&b"5\r\nwor"[..]);
        let mut body = BodyState::new(Framing::Chunked);
        assert!(discard(&mut src, &mut buf, &mut body, 100, Duration::from_secs(1)).await);
    }

    #[test]
    fn size_lines_are_lowercase_hex() {
        for (n, line) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (5000, "1388\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let l = SizeLine::new(n);
            assert_eq!(l.as_bytes(), line.as_bytes());
        }
    }
}
