//! Moving a message body from one connection to the other: `Content-Length` bytes, chunked
//! (validated chunk by chunk and passed on as it came, or unwrapped for an HTTP/1.0 client), or
//! everything until the server closes. Reads and writes go through the connections' own
//! buffers; what follows the body (a pipelined request) stays in the source buffer.

use std::io::{self, IoSlice};
use std::ops::Range;
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
    /// After the size: extensions up to CR.
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
/// a size of at most 16 hex digits.
#[derive(Clone, Debug)]
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
                    b';' | b' ' | b'\t' if digits > 0 => State::Extension { size, len: 1 },
                    _ => return Err(Malformed("invalid chunk size")),
                },
                State::Extension { size, len } => match byte {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(Malformed("bare LF in a chunk extension")),
                    _ if len >= MAX_LINE => return Err(Malformed("chunk extension too long")),
                    _ => State::Extension { size, len: len + 1 },
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
                    b'\n' => return Err(Malformed("bare LF in the trailer")),
                    _ if len >= MAX_LINE => return Err(Malformed("trailer line too long")),
                    _ => State::Trailer {
                        len: len + 1,
                        lines,
                    },
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

/// Reads more into `buf` within `idle`, room for up to `want` bytes (at least a quarter
/// buffer, at most `MAX_READ`); 0 means the peer closed.
pub async fn read_more<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    want: usize,
    idle: Duration,
) -> io::Result<usize> {
    match tokio::time::timeout(idle, read_some(src, buf, want)).await {
        Ok(result) => result,
        Err(_) => Err(timed_out()),
    }
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

/// Writes `first` then `second` (either may be empty) in as few system calls as the kernel
/// takes, within `idle` per call.
pub async fn write_two<W: AsyncWrite + Unpin>(
    dst: &mut W,
    mut first: &[u8],
    mut second: &[u8],
    idle: Duration,
) -> io::Result<()> {
    while !first.is_empty() || !second.is_empty() {
        let slices = [IoSlice::new(first), IoSlice::new(second)];
        let written = match tokio::time::timeout(idle, dst.write_vectored(&slices)).await {
            Ok(result) => result?,
            Err(_) => return Err(timed_out()),
        };
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_first = written.min(first.len());
        first = &first[from_first..];
        second = &second[written - from_first..];
    }
    Ok(())
}

/// Sends `head` followed by the body framed by `framing`, read from `src` (starting with what
/// `buf` already holds). `dechunk` strips the chunked framing (for an HTTP/1.0 client).
/// `idle` bounds every read and write. What follows the body stays in `buf`.
pub async fn relay<R, W>(
    src: &mut R,
    buf: &mut BytesMut,
    framing: Framing,
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
    match framing {
        Framing::Length(mut left) => loop {
            let take = (left.min(buf.len() as u64)) as usize;
            if !head.is_empty() || take > 0 {
                write_two(dst, head, &buf[..take], idle)
                    .await
                    .map_err(RelayError::Write)?;
                head = &[];
                buf.advance(take);
                left -= take as u64;
            }
            if left == 0 {
                return Ok(());
            }
            let want = usize::try_from(left).unwrap_or(MAX_READ);
            match read_more(src, buf, want, idle).await {
                Ok(0) => return Err(RelayError::Read(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(error) => return Err(RelayError::Read(error)),
            }
        },
        Framing::Close => loop {
            if !head.is_empty() || !buf.is_empty() {
                write_two(dst, head, buf, idle)
                    .await
                    .map_err(RelayError::Write)?;
                head = &[];
                buf.clear();
            }
            match read_more(src, buf, MAX_READ, idle).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(error) => return Err(RelayError::Read(error)),
            }
        },
        Framing::Chunked => {
            let mut chunked = Chunked::default();
            loop {
                if dechunk {
                    // Data pieces only, one write each.
                    while !buf.is_empty() && !chunked.is_done() {
                        let (used, data) = chunked.advance(buf).map_err(RelayError::Malformed)?;
                        if let Some(data) = data.filter(|d| !d.is_empty()) {
                            write_two(dst, head, &buf[data], idle)
                                .await
                                .map_err(RelayError::Write)?;
                            head = &[];
                        }
                        buf.advance(used);
                    }
                    if !head.is_empty() {
                        write_two(dst, head, &[], idle)
                            .await
                            .map_err(RelayError::Write)?;
                        head = &[];
                    }
                } else {
                    // Everything up to the end of the body, as it came.
                    let mut used = 0;
                    while used < buf.len() && !chunked.is_done() {
                        used += chunked
                            .advance(&buf[used..])
                            .map_err(RelayError::Malformed)?
                            .0;
                    }
                    if !head.is_empty() || used > 0 {
                        write_two(dst, head, &buf[..used], idle)
                            .await
                            .map_err(RelayError::Write)?;
                        head = &[];
                        buf.advance(used);
                    }
                }
                if chunked.is_done() {
                    return Ok(());
                }
                match read_more(src, buf, MAX_READ, idle).await {
                    Ok(0) => return Err(RelayError::Read(io::ErrorKind::UnexpectedEof.into())),
                    Ok(_) => {}
                    Err(error) => return Err(RelayError::Read(error)),
                }
            }
        }
    }
}

/// Flushes buffered output (a TLS stream holds records until flushed).
pub async fn flush<W: AsyncWrite + Unpin>(dst: &mut W, idle: Duration) -> io::Result<()> {
    match tokio::time::timeout(idle, dst.flush()).await {
        Ok(result) => result,
        Err(_) => Err(timed_out()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let body = b"5\r\nhello\r\n7;name=value\r\n, world\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (data, used) = decode(body, step).unwrap();
            assert_eq!(data, b"hello, world", "step {step}");
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

    #[tokio::test]
    async fn relay_moves_exactly_one_body() {
        let cases: [(Framing, bool, &[u8], &[u8]); 4] = [
            (Framing::Length(5), false, b"helloNEXT", b"hello"),
            (Framing::Length(0), false, b"NEXT", b""),
            (
                Framing::Chunked,
                false,
                b"2\r\nhi\r\n0\r\n\r\nNEXT",
                b"2\r\nhi\r\n0\r\n\r\n",
            ),
            (
                Framing::Chunked,
                true,
                b"2\r\nhi\r\n3\r\nyou\r\n0\r\n\r\nNEXT",
                b"hiyou",
            ),
        ];
        for (framing, dechunk, input, expected) in cases {
            // The source is empty: everything is already buffered, as after a head read.
            let mut src: &[u8] = &[];
            let mut buf = BytesMut::from(input);
            let mut out = Vec::new();
            relay(
                &mut src,
                &mut buf,
                framing,
                dechunk,
                &mut out,
                b"HEAD|",
                Duration::from_secs(1),
            )
            .await
            .unwrap();
            assert_eq!(out, [&b"HEAD|"[..], expected].concat(), "{framing:?}");
            assert_eq!(&buf[..], b"NEXT");
        }
    }

    #[tokio::test]
    async fn relay_reads_the_rest_and_notices_truncation() {
        let mut src: &[u8] = b"lo";
        let mut buf = BytesMut::from(&b"hel"[..]);
        let mut out = Vec::new();
        let cut = relay(
            &mut src,
            &mut buf,
            Framing::Length(10),
            false,
            &mut out,
            b"",
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(cut, Err(RelayError::Read(_))), "{cut:?}");
        assert_eq!(out, b"hello");

        let mut src: &[u8] = b" world";
        let mut buf = BytesMut::from(&b"hello"[..]);
        let mut out = Vec::new();
        relay(
            &mut src,
            &mut buf,
            Framing::Close,
            false,
            &mut out,
            b"",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        assert_eq!(out, b"hello world");
    }
}
