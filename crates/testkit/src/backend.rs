//! Fake backends: real HTTP servers on their own loopback address that name themselves, echo
//! the request headers and body they got, sleep on `/slow?ms=N`, send `/bytes?n=N` bytes (with
//! a length) or `/chunked?n=N` (in chunks), stream a body back as it comes (`/stream-echo`), and
//! can be told to fail health checks.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// A running fake backend; stops when dropped.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    /// `/healthz` answers 500 while set.
    pub unhealthy: Arc<AtomicBool>,
    /// Requests received (health checks excluded).
    pub hits: Arc<AtomicUsize>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Backend {
    pub fn start(addr: SocketAddr, name: &str) -> Backend {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let unhealthy = Arc::new(AtomicBool::new(false));
        let hits = Arc::new(AtomicUsize::new(0));
        let (name_c, unhealthy_c, hits_c) = (name.to_string(), unhealthy.clone(), hits.clone());
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (name, unhealthy, hits) = (name_c.clone(), unhealthy_c.clone(), hits_c.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        handle(req, name.clone(), unhealthy.clone(), hits.clone())
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            addr,
            name: name.to_string(),
            unhealthy,
            hits,
            runtime: Some(runtime),
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // Waits until the tasks are gone (the listener closed), so a test that drops a backend
        // to kill it finds it dead.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// A body of unknown length, so hyper sends it chunked: the pieces, one frame each.
pub struct Pieces(std::collections::VecDeque<Bytes>);

impl http_body::Body for Pieces {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

/// `n` bytes of a repeating pattern (so a shifted or cut body shows).
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz"[i % 36])
        .collect()
}

type Reply = http::Response<Either<Either<Full<Bytes>, Pieces>, Incoming>>;

async fn handle(
    req: http::Request<Incoming>,
    name: String,
    unhealthy: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
) -> Result<Reply, Infallible> {
    let path = req.uri().path().to_string();
    let n: usize = req
        .uri()
        .query()
        .and_then(|q| q.strip_prefix("n="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if path == "/bytes" {
        hits.fetch_add(1, Ordering::SeqCst);
        return Ok(http::Response::new(Either::Left(Either::Left(Full::from(
            pattern(n),
        )))));
    }
    if path == "/chunked" {
        hits.fetch_add(1, Ordering::SeqCst);
        let data = Bytes::from(pattern(n));
        let pieces = (0..n)
            .step_by(1000)
            .map(|i| data.slice(i..(i + 1000).min(n)))
            .collect();
        return Ok(http::Response::new(Either::Left(Either::Right(Pieces(
            pieces,
        )))));
    }
    if path == "/stream-echo" {
        // The body comes back as it is read: the response starts before the request ends.
        hits.fetch_add(1, Ordering::SeqCst);
        return Ok(http::Response::new(Either::Right(req.into_body())));
    }
    if path == "/healthz" {
        let status = if unhealthy.load(Ordering::SeqCst) {
            500
        } else {
            200
        };
        return Ok(http::Response::builder()
            .status(status)
            .body(Either::Left(Either::Left(Full::new(Bytes::from(
                "health\n",
            )))))
            .unwrap());
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if path == "/slow" {
        let ms: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: serde_json::Map<String, serde_json::Value> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").to_string()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "server": name,
        "path": path,
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
        "body_len": body.len(),
    })
    .to_string();
    Ok(http::Response::builder()
        .header("x-served-by", name.as_str())
        .header("content-type", "application/json")
        .body(Either::Left(Either::Left(Full::new(Bytes::from(body)))))
        .unwrap())
}
