//! Keep-alive connections to the servers for requests that came over HTTP/2 (HTTP/1 clients
//! use `h1::pool`): one pool per worker and server, on hyper's low-level HTTP/1.1 client. A worker is a single thread, so a pool's lock is never contended; there is
//! no key to hash, no URI to rebuild and no task spawned per request (hyper-util's general
//! client does all three). A connection goes back to its pool when its response body has been
//! read to the end, and is reused last-in first-out so idle ones age out.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::proxy::UpstreamBody;

/// An idle connection older than this is closed instead of reused: shorter than the web
/// server's keep-alive timeout, so we never send on a connection the server is closing.
const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept per server and worker.
const MAX_IDLE: usize = 256;

/// Why no response head came back.
#[derive(Debug)]
pub enum SendError {
    /// The TCP connection could not be made (refused, unreachable, `connect` timeout).
    Connect(std::io::Error),
    /// The connection failed or closed before a response head.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(error) => write!(f, "connect: {error}"),
            Self::Request(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for SendError {}

/// The idle connections to one server.
#[derive(Default)]
pub struct Idle(Mutex<Vec<(SendRequest<UpstreamBody>, Instant)>>);

impl Idle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(SendRequest<UpstreamBody>, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used connection that is ready; closed and expired ones are dropped.
    fn checkout(&self) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = self.lock();
        // Connections whose previous exchange the connection task has not wrapped up yet
        // (rare): kept for later, not closed.
        let mut settling = Vec::new();
        let mut found = None;
        while let Some((sender, since)) = idle.pop() {
            if sender.is_closed() || since.elapsed() >= IDLE_TIMEOUT {
                continue;
            }
            if sender.is_ready() {
                found = Some(sender);
                break;
            }
            settling.push((sender, since));
        }
        idle.append(&mut settling);
        found
    }

    /// Returns a connection whose exchange is complete.
    pub fn checkin(&self, sender: SendRequest<UpstreamBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < MAX_IDLE {
            idle.push((sender, Instant::now()));
        }
    }
}

/// One worker's connections to every server, indexed like the servers.
pub struct Upstream {
    idle: Vec<Arc<Idle>>,
    connect_timeout: Duration,
}

/// A connection in use, to be checked in when its response is complete.
pub struct Lease {
    pub sender: SendRequest<UpstreamBody>,
    pub idle: Arc<Idle>,
}

impl Upstream {
    pub fn new(servers: usize, connect_timeout: Duration) -> Self {
        Self {
            idle: (0..servers).map(|_| Arc::default()).collect(),
            connect_timeout,
        }
    }

    /// Sends `request` to server `index` at `addr`: on a pooled connection, or a new one when
    /// none is idle, or when the pooled one turns out closed before the request went out.
    pub async fn send(
        &self,
        index: usize,
        addr: SocketAddr,
        mut request: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let idle = &self.idle[index];
        if let Some(mut sender) = idle.checkout() {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        idle: idle.clone(),
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Not sent: the server had closed it. A fresh connection takes the request.
                    Some(unsent) => request = unsent,
                    None => return Err(SendError::Request(error.into_error())),
                },
            }
        }
        let mut sender = self.connect(addr).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(SendError::Request)?;
        let lease = Lease {
            sender,
            idle: idle.clone(),
        };
        Ok((response, lease))
    }

    async fn connect(&self, addr: SocketAddr) -> Result<SendRequest<UpstreamBody>, SendError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr))
                .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => return Err(SendError::Connect(error)),
                Err(_) => {
                    return Err(SendError::Connect(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connect timed out",
                    )));
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Request)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "server connection ended");
            }
        });
        Ok(sender)
    }
}
