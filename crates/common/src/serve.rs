//! The HTTP connection loop every role uses: accept within the connection limit, spawn a
//! tracked task per connection, serve it with hyper (HTTP/1.1), and on shutdown let in-flight
//! requests finish before closing. The accept loop is generic over what serves a connection,
//! so the lb's own HTTP/1 path and its TLS listener (HTTP/2 by `webstack_http2`) share it, and
//! over the listening socket: TCP, or the app's Unix socket for the web server of its host.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::Semaphore;

use crate::Shutdown;

/// Per-listener HTTP settings.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a client may take to send a request's headers (also bounds idle keep-alive
    /// connections waiting for their next request, and HTTP/2 connections without an open
    /// stream): slowloris protection.
    pub header_read_timeout: Duration,
    /// Largest accepted request head (request line + headers); larger gets 431.
    pub max_header_bytes: usize,
    /// How many connections are served at once.
    pub connections: ConnectionLimit,
    /// This worker's place among workers accepting on the same sockets (the lb's); None alone.
    pub share: Option<AcceptShare>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            connections: ConnectionLimit::new(1024),
            share: None,
        }
    }
}

/// At most so many connections at once (HAProxy's `maxconn`): the accept loop waits for a
/// free slot before it accepts, so excess connections wait in the listen backlog instead of
/// being refused. Clones share the slots (the lb's HTTP and HTTPS listeners, all workers).
#[derive(Clone, Debug)]
pub struct ConnectionLimit(Arc<Semaphore>);

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(
            max.clamp(1, Semaphore::MAX_PERMITS),
        )))
    }

    /// Connections that could be accepted now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Workers accepting on one shared listening socket (the lb's): the kernel wakes all of them
/// for a new connection and the first to ask gets it, so one busy worker could end up with
/// most connections. Each counts its open connections; one holding more than the least busy
/// worker plus one lets its own tasks run a few times (`SHARE_YIELDS`) before it accepts,
/// leaving the connection to a less busy worker woken by the same event (or taking it if none
/// did). Never a timer: a worker that sleeps while busy costs more than an uneven spread. `SO_REUSEPORT` would spread connections
/// too, but would let any process of the same user join the socket.
#[derive(Clone, Debug)]
pub struct AcceptShare {
    open: Arc<[AtomicUsize]>,
    me: usize,
}

/// How many turns a crowded worker leaves a new connection to the others.
const SHARE_YIELDS: usize = 8;

impl AcceptShare {
    /// One share per worker, all counting together.
    pub fn for_workers(workers: usize) -> Vec<AcceptShare> {
        let open: Arc<[AtomicUsize]> = (0..workers.max(1)).map(|_| AtomicUsize::new(0)).collect();
        (0..workers.max(1))
            .map(|me| AcceptShare {
                open: open.clone(),
                me,
            })
            .collect()
    }

    fn crowded(&self) -> bool {
        let mine = self.open[self.me].load(Ordering::Relaxed);
        let least = self
            .open
            .iter()
            .map(|o| o.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        mine > least + 1
    }

    /// Counts one more open connection of this worker until the guard drops.
    fn opened(&self) -> OpenGuard {
        self.open[self.me].fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }
}

struct OpenGuard(AcceptShare);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open[self.0.me].fetch_sub(1, Ordering::Relaxed);
    }
}

/// A listening socket the accept loop takes connections from.
pub trait Listener: Send {
    type Stream: Send + 'static;
    /// Who connected: a TCP client's address; nothing useful for a Unix socket's.
    type Peer;
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
    /// Set up a new connection before it is served.
    fn prepare(stream: &Self::Stream);
}

impl Listener for TcpListener {
    type Stream = TcpStream;
    type Peer = SocketAddr;

    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(TcpStream, SocketAddr)>> + Send {
        TcpListener::accept(self)
    }

    /// Without Nagle: answers go out as written.
    fn prepare(stream: &TcpStream) {
        let _ = stream.set_nodelay(true);
    }
}

/// A borrowed listener, for a caller that still owns the socket afterwards.
impl<L: Listener + Sync> Listener for &L {
    type Stream = L::Stream;
    type Peer = L::Peer;

    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(L::Stream, L::Peer)>> + Send {
        (**self).accept()
    }

    fn prepare(stream: &L::Stream) {
        L::prepare(stream);
    }
}

impl Listener for UnixListener {
    type Stream = UnixStream;
    type Peer = tokio::net::unix::SocketAddr;

    fn accept(
        &self,
    ) -> impl std::future::Future<
        Output = std::io::Result<(UnixStream, tokio::net::unix::SocketAddr)>,
    > + Send {
        UnixListener::accept(self)
    }

    fn prepare(_: &UnixStream) {}
}

/// Boxed body type used where responses of different origins meet.
pub type BoxBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Accepts connections until `shutdown` triggers. `make_service` builds the per-connection
/// service from the client's address.
pub async fn serve_http<L, M, S, B>(
    listener: L,
    options: HttpOptions,
    make_service: M,
    shutdown: Shutdown,
) where
    L: Listener,
    L::Stream: AsyncRead + AsyncWrite + Unpin,
    M: Fn(L::Peer) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limit = options.connections.clone();
    accept_loop(
        listener,
        &limit,
        None,
        shutdown,
        |stream, peer, shutdown| {
            serve_connection(stream, make_service(peer), options.clone(), shutdown)
        },
    )
    .await
}

/// Accepts connections until `shutdown` triggers and runs `handle` for each as a tracked task
/// (so the drain waits for it), at most `limit` at once; with `share`, evenly among the workers
/// accepting on the same socket. Shared by the plain HTTP and the TLS listeners.
pub async fn accept_loop<L, H, F>(
    listener: L,
    limit: &ConnectionLimit,
    share: Option<AcceptShare>,
    shutdown: Shutdown,
    handle: H,
) where
    L: Listener,
    H: Fn(L::Stream, L::Peer, Shutdown) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let mut full_since: Option<std::time::Instant> = None;
    loop {
        // Accept only while a slot is free. The slot is taken after the accept, so listeners
        // waiting in `accept` hold none (the lb has several); one racing another for the last
        // slot waits for the next one, already accepted.
        if limit.available() == 0 {
            if full_since.is_none() {
                tracing::warn!(
                    "connection limit reached: new connections wait in the listen backlog"
                );
                full_since = Some(std::time::Instant::now());
            }
            tokio::select! {
                biased;
                _ = shutdown.triggered() => break,
                slot = limit.0.acquire() => drop(slot),
            }
            continue;
        }
        if let Some(since) = full_since.take() {
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "accepting again"
            );
        }
        for _ in 0..SHARE_YIELDS {
            if !share.as_ref().is_some_and(AcceptShare::crowded) {
                break;
            }
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            biased;
            _ = shutdown.triggered() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        L::prepare(&stream);
        let slot = match limit.0.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => tokio::select! {
                biased;
                _ = shutdown.triggered() => break,
                slot = limit.0.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            },
        };
        let open = share.as_ref().map(AcceptShare::opened);
        shutdown.spawn(Holding {
            connection: handle(stream, peer, shutdown.clone()),
            _held: (slot, open),
        });
    }
}

pin_project_lite::pin_project! {
    /// A connection's future and what it holds until it ends (its slot, its share of the
    /// worker's connections). Not an `async` block around it: that would keep the future twice
    /// in the task (as captured and as awaited), ~1.7 KiB more per connection.
    struct Holding<F, H> {
        // Dropped first (fields drop in order): the socket closes before the slot is free.
        #[pin]
        connection: F,
        _held: H,
    }
}

impl<F: std::future::Future, H> std::future::Future for Holding<F, H> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().connection.poll(cx)
    }
}

/// Serves one HTTP/1.1 connection; on shutdown, finishes the request in flight then closes.
pub async fn serve_connection<I, S, B>(io: I, service: S, options: HttpOptions, shutdown: Shutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_header_size(options.max_header_bytes)
        .max_buf_size(options.max_header_bytes.max(8192) * 2)
        .keep_alive(true);
    // Upgrades (WebSocket) are handed to the service's task once its 101 went out.
    let conn = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "connection ended with an error");
            }
        }
        _ = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            if let Err(error) = conn.await {
                tracing::debug!(%error, "connection ended with an error while draining");
            }
        }
    }
}

#[cfg(test)]
mod share_tests {
    use super::AcceptShare;

    #[test]
    fn a_worker_ahead_of_the_least_busy_by_two_leaves_new_connections_to_it() {
        let shares = AcceptShare::for_workers(2);
        let (a, b) = (&shares[0], &shares[1]);
        let first = a.opened();
        assert!(!a.crowded(), "one ahead is within the share");
        let second = a.opened();
        assert!(a.crowded() && !b.crowded());
        let _on_b = b.opened();
        assert!(!a.crowded());
        drop((first, second));
        assert!(!a.crowded() && !b.crowded());
    }
}
