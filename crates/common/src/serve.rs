//! The HTTP connection loop every role uses: accept within the connection limit, spawn a
//! tracked task per connection, serve it with hyper (HTTP/1.1, or HTTP/2 after TLS), and on
//! shutdown let in-flight requests finish before closing. The accept loop is generic over what
//! serves a connection, so the lb's own HTTP/1 path and the TLS listener share it.

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
use tokio::net::TcpListener;
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

/// Boxed body type used where responses of different origins meet.
pub type BoxBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// Accepts connections until `shutdown` triggers. `make_service` builds the per-connection
/// service from the client's address.
pub async fn serve_http<M, S, B>(
    listener: TcpListener,
    options: HttpOptions,
    make_service: M,
    shutdown: Shutdown,
) where
    M: Fn(SocketAddr) -> S,
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
pub async fn accept_loop<H, F>(
    listener: TcpListener,
    limit: &ConnectionLimit,
    share: Option<AcceptShare>,
    shutdown: Shutdown,
    handle: H,
) where
    H: Fn(tokio::net::TcpStream, SocketAddr, Shutdown) -> F,
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
        let _ = stream.set_nodelay(true);
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

/// An HTTP/2 connection whose peer answers no ping for this long is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// A response body hyper has not asked for more of in this long means the client stopped
/// reading it (its flow-control window stays shut, while it may still answer pings): the
/// connection closes, as an HTTP/1 client's would when a write to it stalls. Longer than the
/// 60 s a body waiting on its server may go without being asked (it wakes itself then).
const H2_STALL: Duration = Duration::from_secs(75);

/// Serves one HTTP/2 connection (after TLS with ALPN h2): pings a silent peer, sends GOAWAY
/// once no stream has been open for `idle` or on shutdown (open streams finish), and closes it
/// when a response body has waited on the client for `H2_STALL`.
pub async fn serve_connection_h2<I, S, B>(io: I, service: S, idle: Duration, shutdown: Shutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(250)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    let streams = Arc::new(streams::OpenStreams::default());
    let service = streams::Counted {
        inner: service,
        streams: streams.clone(),
    };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
            return;
        }
        _ = shutdown.triggered() => {}
        () = streams.idle_for(idle) => tracing::debug!(?idle, "idle HTTP/2 connection closed"),
        () = streams.stalled(H2_STALL) => {
            // Dropping the connection resets its streams and frees what they hold.
            return tracing::warn!(stall = ?H2_STALL, "HTTP/2 client stopped reading a response; connection closed");
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

mod streams {
    //! Which HTTP/2 streams are open: counted from the request to the end of the response
    //! body, so a connection is idle only when nothing is in flight.

    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use http::{Request, Response};
    use http_body::{Body, Frame, SizeHint};
    use hyper::service::Service;
    use tokio::time::Instant;

    #[derive(Default)]
    pub struct OpenStreams {
        open: AtomicUsize,
        /// Milliseconds since `start` when the last stream ended.
        last_end: AtomicU64,
        start: std::sync::OnceLock<Instant>,
        /// Response bodies in hyper's hands, by id: how many times hyper has asked each for
        /// more (a counter, so asking costs one atomic add, not a lock and a clock read).
        bodies: std::sync::Mutex<std::collections::HashMap<u64, Arc<AtomicU64>>>,
        next_body: AtomicU64,
    }

    impl OpenStreams {
        fn bodies(
            &self,
        ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, Arc<AtomicU64>>> {
            self.bodies.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// A new response body: its id, and the counter to bump each time hyper asks it for
        /// more.
        pub fn new_body(&self) -> (u64, Arc<AtomicU64>) {
            let id = self.next_body.fetch_add(1, Ordering::Relaxed);
            let asked = Arc::new(AtomicU64::new(0));
            self.bodies().insert(id, asked.clone());
            (id, asked)
        }

        /// Body `id` is gone (ended, or its stream reset).
        pub fn forget(&self, id: u64) {
            self.bodies().remove(&id);
        }

        /// Resolves once some body has not been asked for more for `limit` (its counter
        /// unchanged over four looks `limit / 4` apart).
        pub async fn stalled(&self, limit: Duration) {
            const LOOKS: u32 = 4;
            // Per body: the count at the last look, and for how many looks it has not moved.
            let mut seen: std::collections::HashMap<u64, (u64, u32)> = Default::default();
            loop {
                tokio::time::sleep(limit / LOOKS).await;
                let bodies = self.bodies();
                seen.retain(|id, _| bodies.contains_key(id));
                for (id, asked) in bodies.iter() {
                    let now = asked.load(Ordering::Relaxed);
                    match seen.entry(*id) {
                        // First seen: nothing to compare with yet.
                        std::collections::hash_map::Entry::Vacant(entry) => {
                            entry.insert((now, 0));
                        }
                        std::collections::hash_map::Entry::Occupied(mut entry) => {
                            let (count, still) = entry.get_mut();
                            if *count == now {
                                *still += 1;
                            } else {
                                (*count, *still) = (now, 0);
                            }
                            if *still >= LOOKS {
                                return;
                            }
                        }
                    }
                }
            }
        }

        fn start(&self) -> Instant {
            *self.start.get_or_init(Instant::now)
        }

        fn opened(&self) {
            self.open.fetch_add(1, Ordering::AcqRel);
        }

        fn closed(&self) {
            let ms = self.start().elapsed().as_millis() as u64;
            self.last_end.store(ms, Ordering::Release);
            self.open.fetch_sub(1, Ordering::AcqRel);
        }

        /// Resolves once no stream has been open for `idle`.
        pub async fn idle_for(&self, idle: Duration) {
            let start = self.start();
            loop {
                let quiet_since =
                    start + Duration::from_millis(self.last_end.load(Ordering::Acquire));
                let due = quiet_since + idle;
                if self.open.load(Ordering::Acquire) == 0 && Instant::now() >= due {
                    return;
                }
                // Streams open, or quiet for less than `idle`: look again a while later.
                tokio::time::sleep_until(due.max(Instant::now() + idle / 4)).await;
            }
        }
    }

    /// A service whose responses count as open streams until their bodies end.
    #[derive(Clone)]
    pub struct Counted<S> {
        pub inner: S,
        pub streams: Arc<OpenStreams>,
    }

    impl<S, B, Req> Service<Request<Req>> for Counted<S>
    where
        S: Service<Request<Req>, Response = Response<B>>,
        S::Future: Send + 'static,
        B: Body + Unpin,
    {
        type Response = Response<Tracked<B>>;
        type Error = S::Error;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

        fn call(&self, request: Request<Req>) -> Self::Future {
            self.streams.opened();
            let guard = Guard(self.streams.clone());
            let response = self.inner.call(request);
            let streams = self.streams.clone();
            Box::pin(async move {
                let response = response.await?;
                let (id, asked) = streams.new_body();
                Ok(response.map(|body| Tracked {
                    inner: body,
                    id,
                    asked,
                    streams,
                    _guard: guard,
                }))
            })
        }
    }

    struct Guard(Arc<OpenStreams>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.closed();
        }
    }

    /// A response body that keeps its stream counted until it is dropped, and says when hyper
    /// last asked it for more.
    pub struct Tracked<B> {
        inner: B,
        id: u64,
        asked: Arc<AtomicU64>,
        streams: Arc<OpenStreams>,
        _guard: Guard,
    }

    impl<B> Drop for Tracked<B> {
        fn drop(&mut self) {
            self.streams.forget(self.id);
        }
    }

    impl<B: Body + Unpin> Body for Tracked<B> {
        type Data = B::Data;
        type Error = B::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
            self.asked.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_frame(cx)
        }

        fn is_end_stream(&self) -> bool {
            self.inner.is_end_stream()
        }

        fn size_hint(&self) -> SizeHint {
            self.inner.size_hint()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test(start_paused = true)]
        async fn a_body_the_client_stops_reading_is_noticed_one_read_often_is_not() {
            let streams = Arc::new(OpenStreams::default());
            let (_, read) = streams.new_body();
            let (stuck, _) = streams.new_body();
            let watching = {
                let streams = streams.clone();
                tokio::spawn(async move { streams.stalled(Duration::from_secs(75)).await })
            };
            // `read` is asked for more every 10 s; `stuck` never again.
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                read.fetch_add(1, Ordering::Relaxed);
                assert!(!watching.is_finished(), "nothing stalled for 75 s yet");
            }
            tokio::time::sleep(Duration::from_secs(40)).await;
            assert!(watching.is_finished(), "the stuck body was noticed");

            // Once the stuck body is gone, a connection whose bodies are read is never closed.
            streams.forget(stuck);
            let watching = {
                let streams = streams.clone();
                tokio::spawn(async move { streams.stalled(Duration::from_secs(75)).await })
            };
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(10)).await;
                read.fetch_add(1, Ordering::Relaxed);
            }
            assert!(!watching.is_finished());
        }

        #[tokio::test(start_paused = true)]
        async fn a_body_that_comes_between_two_looks_gets_the_whole_limit() {
            let streams = Arc::new(OpenStreams::default());
            let watching = {
                let streams = streams.clone();
                tokio::spawn(async move { streams.stalled(Duration::from_secs(75)).await })
            };
            // Looks at 18.75 s, 37.5 s, ...; the body arrives just before the first and is
            // never asked for more: not stalled before 75 s have passed since it arrived.
            tokio::time::sleep(Duration::from_secs(18)).await;
            let (_, _asked) = streams.new_body();
            tokio::time::sleep(Duration::from_secs(74)).await;
            assert!(!watching.is_finished(), "stalled before the limit");
            tokio::time::sleep(Duration::from_secs(20)).await;
            assert!(watching.is_finished(), "the stuck body was noticed");
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
