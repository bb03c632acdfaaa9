//! A one-shot HTTP GET on a fresh connection, bounded by a timeout: the LB's active health
//! check and the supervisor's readiness poll. A pooled connection could hide a dead listener.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("{0:?} is not a request path")]
    BadRequest(String),
}

/// Sends `GET path` with `Host: host` on a new connection and returns the response head.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<http::Response<Incoming>, ProbeError> {
    // Built first: a bad path or host is our caller's mistake, not the server's.
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "webstack-probe")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| ProbeError::BadRequest(format!("{host} {path}")))?;
    let stream = TcpStream::connect(addr)
        .await
        .map_err(ProbeError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender.send_request(request).await?)
}

/// `GET path` to `addr`; the response status, or why there was none.
pub async fn get_status(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<StatusCode, ProbeError> {
    tokio::time::timeout(timeout, async { Ok(get(addr, host, path).await?.status()) })
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}

/// `GET path` and the whole (small) response body.
pub async fn get_body(
    addr: SocketAddr,
    host: &str,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ProbeError> {
    let attempt = async {
        let response = get(addr, host, path).await?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(ProbeError::Timeout(timeout)))
}
