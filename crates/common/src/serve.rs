//! The HTTP connection loop every role uses: accept, spawn a tracked task per connection, serve
//! it with hyper, and on shutdown let in-flight requests finish before closing.
//!
//! The loop is generic over the I/O type of a connection so that the TLS listener (a later
//! issue) hands `TlsStream`s to the same `serve_connection`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::{Body, Incoming};
use hyper::service::Service;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::Shutdown;

/// Per-listener HTTP settings.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// How long a client may take to send a request's headers (also bounds idle keep-alive
    /// connections waiting for their next request): slowloris protection.
    pub header_read_timeout: Duration,
    /// Largest accepted request head (request line + headers); larger gets 431.
    pub max_header_bytes: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
        }
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
    accept_loop(listener, shutdown, |stream, peer, shutdown| {
        serve_connection(stream, make_service(peer), options.clone(), shutdown)
    })
    .await
}

/// Accepts connections until `shutdown` triggers and runs `handle` for each as a tracked task
/// (so the drain waits for it). Shared by the plain HTTP and the TLS listeners.
pub async fn accept_loop<H, F>(listener: TcpListener, shutdown: Shutdown, handle: H)
where
    H: Fn(tokio::net::TcpStream, SocketAddr, Shutdown) -> F,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
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
        shutdown.spawn(handle(stream, peer, shutdown.clone()));
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

/// Serves one HTTP/2 connection (after TLS with ALPN h2); on shutdown, sends GOAWAY and lets
/// open streams finish.
pub async fn serve_connection_h2<I, S, B>(io: I, service: S, shutdown: Shutdown)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_concurrent_streams(250);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(%error, "HTTP/2 connection ended with an error");
            }
        }
        _ = shutdown.triggered() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
