//! A connection after a forwarded 101 (WebSocket and other upgrades): bytes both ways, each
//! side's end passed on as a half close, until both sides are done or nothing moved for the
//! idle timeout (HAProxy's `timeout tunnel`).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// How long an upgraded connection may stay silent in both directions.
pub const TUNNEL_IDLE: Duration = Duration::from_secs(600);

/// Relays `a` <-> `b` until both directions ended, one failed, or nothing moved for `idle`.
/// Returns the bytes moved a -> b and b -> a.
pub async fn tunnel<A, B>(a: &mut A, b: &mut B, idle: Duration) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let mut a = Watched {
        io: a,
        start,
        last: &last,
    };
    let mut b = Watched {
        io: b,
        start,
        last: &last,
    };
    let copy = tokio::io::copy_bidirectional(&mut a, &mut b);
    let watch = async {
        loop {
            let moved = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let quiet_until = moved + idle;
            if Instant::now() >= quiet_until {
                return;
            }
            tokio::time::sleep_until(quiet_until).await;
        }
    };
    tokio::select! {
        result = copy => result,
        () = watch => Err(io::Error::new(io::ErrorKind::TimedOut, "the upgraded connection was idle too long")),
    }
}

/// An I/O object that records when bytes last moved through it.
struct Watched<'a, T: ?Sized> {
    io: &'a mut T,
    start: Instant,
    last: &'a AtomicU64,
}

impl<T: ?Sized> Watched<'_, T> {
    fn moved(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin + ?Sized> AsyncRead for Watched<'_, T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut *this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.moved();
        }
        result
    }
}

impl<T: AsyncWrite + Unpin + ?Sized> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut *this.io).poll_write(cx, data);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.moved();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_move_both_ways_until_both_sides_end() {
        let (mut client, mut a) = tokio::io::duplex(1024);
        let (mut b, mut server) = tokio::io::duplex(1024);
        let relay =
            tokio::spawn(async move { tunnel(&mut a, &mut b, Duration::from_secs(5)).await });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        server.write_all(b"pong!").await.unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong!");
        client.shutdown().await.unwrap();
        server.shutdown().await.unwrap();
        assert_eq!(relay.await.unwrap().unwrap(), (4, 5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_ends_after_the_idle_timeout() {
        let (_client, mut a) = tokio::io::duplex(64);
        let (mut b, _server) = tokio::io::duplex(64);
        let error = tunnel(&mut a, &mut b, Duration::from_secs(30))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    }
}
