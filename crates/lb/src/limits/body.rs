//! The request body's floor rate and size bound, as a wrapper around the client connection
//! (Apache's `mod_reqtimeout` `body=grace,MinRate=rate`): while a body is being read, the
//! deadline is `grace` after its start plus one second per `rate` bytes received, so a client
//! trickling a few bytes now and then (slowhttptest -B) is cut once it falls behind, however
//! often each read resets the inactivity timeout. Off between bodies: the wrapper then only
//! passes reads and writes through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Why a body read was refused: the request gets this status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("the request body arrives slower than the floor rate")]
    TooSlow,
    #[error("the request body is larger than the limit")]
    TooLarge,
}

impl LimitError {
    pub fn status(self) -> u16 {
        match self {
            Self::TooSlow => 408,
            Self::TooLarge => 413,
        }
    }

    /// The limit behind an I/O error, if it was one of ours.
    pub fn of(error: &io::Error) -> Option<Self> {
        error.get_ref()?.downcast_ref::<Self>().copied()
    }
}

/// One body's accounting.
struct Floor {
    /// Bytes per second; 0: no floor, only the size bound.
    rate: u32,
    grace: Duration,
    /// When the lb first asked for the body, plus the grace, plus the time the lb did not ask
    /// (None until it first asks).
    base: Option<Instant>,
    /// The last read handed bytes over at this time; the next poll ends the pause.
    paused_since: Option<Instant>,
    received: u64,
    /// Bytes this body may bring (counted raw: chunk framing included).
    budget: u64,
    deadline: Pin<Box<Sleep>>,
}

impl Floor {
    fn deadline(&self, base: Instant) -> Instant {
        base + Duration::from_secs_f64(self.received as f64 / f64::from(self.rate.max(1)))
    }
}

/// A client connection whose body reads are metered while `arm`ed.
pub struct Paced<C> {
    io: C,
    floor: Option<Floor>,
}

/// A plain client connection waits for its next request without a buffer; a TLS one keeps
/// its own.
impl webstack_http1::server::IdleRead for Paced<tokio::net::TcpStream> {
    const CAN_TELL: bool = true;

    fn poll_idle_readable(
        &self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.io.poll_read_ready(cx)
    }
}

impl webstack_http1::server::IdleRead
    for Paced<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>
{
}

impl<C> Paced<C> {
    pub fn new(io: C) -> Self {
        Self { io, floor: None }
    }

    /// Until `disarm`, reads must keep up with `rate` bytes per second after `grace` (from the
    /// first read on), and bring at most `budget` bytes, of which `already` came with the head.
    pub fn arm(&mut self, rate: u32, grace: Duration, budget: u64, already: u64) {
        self.floor = Some(Floor {
            rate,
            grace,
            base: None,
            paused_since: None,
            received: already,
            budget,
            deadline: Box::pin(tokio::time::sleep_until(Instant::now() + grace)),
        });
    }

    pub fn disarm(&mut self) {
        self.floor = None;
    }
}

fn refused(why: LimitError) -> io::Error {
    let kind = match why {
        LimitError::TooSlow => io::ErrorKind::TimedOut,
        LimitError::TooLarge => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, why)
}

impl<C: AsyncRead + Unpin> AsyncRead for Paced<C> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(floor) = this.floor.as_mut() else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        if floor.rate != 0 {
            let now = Instant::now();
            let base = match (floor.base, floor.paused_since.take()) {
                (None, _) => now + floor.grace,
                (Some(base), Some(paused)) => base + now.saturating_duration_since(paused),
                (Some(base), None) => base,
            };
            if floor.base != Some(base) {
                floor.base = Some(base);
                let deadline = floor.deadline(base);
                floor.deadline.as_mut().reset(deadline);
            }
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                floor.received += n;
                if floor.received > floor.budget {
                    return Poll::Ready(Err(refused(LimitError::TooLarge)));
                }
                if let Some(base) = floor.base.filter(|_| n != 0) {
                    let deadline = floor.deadline(base);
                    floor.deadline.as_mut().reset(deadline);
                    floor.paused_since = Some(Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if floor.rate != 0 => {
                ready!(floor.deadline.as_mut().poll(cx));
                Poll::Ready(Err(refused(LimitError::TooSlow)))
            }
            other => other,
        }
    }
}

impl<C: AsyncWrite + Unpin> AsyncWrite for Paced<C> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An HTTP/2 request body held to the size bound: an error past `max` bytes of data, after
/// which the client's stream is still there to drain (`into_inner`), so it reads our 413
/// instead of a reset.
pub struct Capped<B> {
    inner: B,
    left: u64,
    exceeded: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> Capped<B> {
    pub fn new(inner: B, max: u64) -> Self {
        Self {
            inner,
            left: max,
            exceeded: false,
        }
    }

    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.exceeded {
            return Poll::Ready(Some(Err(Box::new(LimitError::TooLarge))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
            None => return Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            let n = data.len() as u64;
            if n > this.left {
                this.exceeded = true;
                return Poll::Ready(Some(Err(Box::new(LimitError::TooLarge))));
            }
            this.left -= n;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read(paced: &mut Paced<tokio::io::DuplexStream>) -> io::Result<usize> {
        let mut buf = [0u8; 64];
        paced.read(&mut buf).await
    }

    /// Writes `chunk` every `every` until the reader is gone.
    fn writer(
        mut client: tokio::io::DuplexStream,
        chunk: &'static [u8],
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if client.write_all(chunk).await.is_err() {
                    return;
                }
            }
        })
    }

    /// Reads until an error or `limit`; the error, and when it came.
    async fn read_until_error(
        paced: &mut Paced<tokio::io::DuplexStream>,
        limit: Duration,
    ) -> Option<(io::Error, Duration)> {
        let started = Instant::now();
        let reading = async {
            loop {
                if let Err(error) = read(paced).await {
                    return (error, started.elapsed());
                }
            }
        };
        tokio::time::timeout(limit, reading).await.ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_cut_once_it_falls_behind_the_floor() {
        let (client, server) = tokio::io::duplex(1024);
        let mut paced = Paced::new(server);
        paced.arm(100, Duration::from_secs(2), u64::MAX, 0);
        // 10 bytes each second: 0.1 s of credit each, so the deadline moves less than time.
        let writer = writer(client, b"0123456789", Duration::from_secs(1));
        let (error, took) = read_until_error(&mut paced, Duration::from_secs(60))
            .await
            .expect("cut");
        assert_eq!(LimitError::of(&error), Some(LimitError::TooSlow));
        // Grace 2 s plus 0.1 s per 10 bytes: cut between 2 and 3 seconds in.
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(3),
            "{took:?}"
        );
        writer.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_at_the_rate_passes_and_disarmed_reads_wait_for_ever() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut paced = Paced::new(server);
        paced.arm(100, Duration::from_secs(1), u64::MAX, 0);
        // 60 bytes every 500 ms: 120 B/s against a floor of 100, for a minute.
        let writer = writer(client, &[b'x'; 60], Duration::from_millis(500));
        assert!(
            read_until_error(&mut paced, Duration::from_secs(60))
                .await
                .is_none(),
            "never cut"
        );
        writer.abort();
        paced.disarm();
        let idle = tokio::time::timeout(Duration::from_secs(600), read(&mut paced)).await;
        assert!(!matches!(idle, Ok(Err(_))), "no floor between bodies");
    }

    #[tokio::test(start_paused = true)]
    async fn time_the_lb_spends_elsewhere_is_not_the_clients() {
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut paced = Paced::new(server);
        // Armed 30 s before the lb first asks (a slow connect to a server), then the client's
        // first bytes take 0.5 s: within the grace, which starts at the first ask.
        paced.arm(100, Duration::from_secs(1), u64::MAX, 0);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (_, first) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                client.write_all(&[b'x'; 50]).await.unwrap();
            },
            read(&mut paced)
        );
        assert_eq!(first.unwrap(), 50);
        // The lb writes those bytes to a slow server for 30 s before it asks again: not the
        // client's time either; its next bytes in 0.5 s keep up.
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (_, second) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                client.write_all(&[b'x'; 50]).await.unwrap();
            },
            read(&mut paced)
        );
        assert_eq!(second.unwrap(), 50);
    }

    #[tokio::test]
    async fn a_body_over_its_budget_is_refused() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut paced = Paced::new(server);
        // 5 bytes came with the head: 10 more may follow.
        paced.arm(0, Duration::ZERO, 15, 5);
        client.write_all(b"0123456789").await.unwrap();
        assert_eq!(read(&mut paced).await.unwrap(), 10);
        client.write_all(b"0").await.unwrap();
        let error = read(&mut paced).await.unwrap_err();
        assert_eq!(LimitError::of(&error), Some(LimitError::TooLarge));
    }
}
