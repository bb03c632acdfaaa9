//! Keep-alive connections to the servers, for every request path (the lb's HTTP/1 and HTTP/2
//! clients, the web server's requests to its app): one pool per worker and server, plain
//! sockets (TCP, or the app's Unix socket) with their read buffers. The task serving the request writes it and reads the
//! response itself (no connection task, no channel in between). Reused last-in first-out, so
//! idle connections age out.

use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;

use super::body::BUFFER;
use super::coarse::CoarseInstant;
use super::stream::{Endpoint, Stream};

/// An idle connection older than this is closed instead of reused: shorter than the web
/// server's keep-alive timeout, so we never send on a connection the server is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per server and worker.
const MAX_IDLE: usize = 256;

/// One connection to a server and what has been read from it.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
    /// It served a request before: a failure before any response byte may just mean the
    /// server closed it while idle.
    pub reused: bool,
    /// Checked in (or opened): a tick's precision is plenty for a 4 s idle limit.
    since: CoarseInstant,
    /// The wait for a bodyless request's response head (`exchange::send_bodyless`): kept with
    /// the connection and moved only when it fires early, as the client's header timer.
    pub response_timer: crate::lazy_timer::LazyTimer,
}

impl Conn {
    /// After `failure` on this connection: whether the request should go out once more on a
    /// fresh one. Only a reused connection (the server may have closed it while it idled) that
    /// gave no answer at all, and only for a request that can be sent twice.
    pub fn worth_a_fresh_try(&self, replayable: bool, failure: &crate::retry::Failure) -> bool {
        self.reused && replayable && matches!(failure, crate::retry::Failure::Unreachable { .. })
    }

    /// Whether the server closed it or sent something unasked while it was idle, without a
    /// system call unless the runtime saw the socket become readable. `ask_kernel`: one
    /// non-blocking peek even then, for a request that cannot be sent twice: the runtime may
    /// not have seen yet the close of a server that answered early and hung up.
    fn went_stale(&self, ask_kernel: bool) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending if ask_kernel => {
                let mut probe = [std::mem::MaybeUninit::<u8>::uninit()];
                !matches!(socket2::SockRef::from(&self.stream).peek(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Poll::Pending => false,
            // Readable: end of stream, an error, or bytes nobody asked for. Or a stale
            // readiness flag, which a read that would block clears.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                !matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
            Poll::Ready(Err(_)) => true,
        }
    }
}

/// One worker's idle connections to every server, indexed like the servers.
pub struct Pool {
    idle: Vec<Mutex<Vec<Conn>>>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(servers: usize, connect_timeout: Duration) -> Self {
        Self {
            idle: (0..servers).map(|_| Mutex::default()).collect(),
            connect_timeout,
        }
    }

    fn lock(&self, server: usize) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        self.idle[server].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live connection to `server`; expired and closed ones are dropped.
    /// `replayable`: the request can go out again on a fresh connection if this one fails
    /// before an answer; one that cannot gets a connection checked with the kernel.
    pub fn checkout(&self, server: usize, replayable: bool) -> Option<Conn> {
        let mut idle = self.lock(server);
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < IDLE_TIMEOUT && !conn.went_stale(!replayable) {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose exchange is complete (nothing left unread).
    pub fn checkin(&self, server: usize, mut conn: Conn) {
        conn.reused = true;
        conn.since = CoarseInstant::now();
        // An idle connection holds no buffer: the next exchange's first read makes one.
        if conn.buf.is_empty() {
            crate::recycle::give_head(&mut conn.buf);
        } else if conn.buf.capacity() > 2 * BUFFER {
            conn.buf = BytesMut::from(&conn.buf[..]);
        }
        let mut idle = self.lock(server);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }

    /// A new connection, within the connect timeout.
    pub async fn connect(&self, endpoint: Endpoint<'_>) -> std::io::Result<Conn> {
        let stream = tokio::time::timeout(self.connect_timeout, Stream::connect(endpoint))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        // No buffer yet: the response head's read makes one the size of a head, and a body's
        // first read grows it (most answers fit in the first).
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            reused: false,
            since: CoarseInstant::now(),
            response_timer: Default::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Endpoint;

    /// A kept connection to the app's Unix socket that the app closed while it idled is not
    /// handed out again, whether the request can be sent twice or not.
    #[tokio::test]
    async fn a_unix_connection_the_server_closed_while_idle_is_dropped_at_checkout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let pool = Pool::new(1, Duration::from_secs(2));
        for replayable in [true, false] {
            let conn = pool.connect(Endpoint::Unix(&path)).await.unwrap();
            let (server_side, _) = listener.accept().await.unwrap();
            pool.checkin(0, conn);
            let kept = pool
                .checkout(0, replayable)
                .expect("an open connection is reused");
            pool.checkin(0, kept);
            drop(server_side);
            // The runtime may not have seen the close yet: give the reactor a turn.
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                pool.checkout(0, replayable).is_none(),
                "closed by the server, replayable {replayable}"
            );
        }
    }
}
