//! A one-shot HTTP request on a fresh connection, bounded by a timeout: the LB's active health
//! check, the supervisor's readiness poll, the CLI's calls to the lb's runtime API. A pooled
//! connection could hide a dead listener.

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
    send(addr, http::Method::GET, host, path, None).await
}

/// Sends `method path` (with a bearer token if given) on a new connection; the response head.
async fn send(
    addr: SocketAddr,
    method: http::Method,
    host: &str,
    path: &str,
    bearer: Option<&str>,
) -> Result<http::Response<Incoming>, ProbeError> {
    // Built first: a bad path or host is our caller's mistake, not the server's.
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "webstack-probe")
        .header(http::header::CONNECTION, "close");
    if let Some(token) = bearer {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request
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

/// `method path` with a bearer token: the status and the whole (small) response body.
pub async fn call(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ProbeError> {
    let host = addr.to_string();
    let attempt = async {
        let response = send(addr, method, &host, path, bearer).await?;
        let status = response.status();
        Ok((status, response.into_body().collect().await?.to_bytes()))
    };
    tokio::time::timeout(timeout, attempt)
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
