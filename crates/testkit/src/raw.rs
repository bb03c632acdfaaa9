//! Servers that speak HTTP/1 by hand on their own threads, for behaviour a framework would not
//! show: one that answers 413 right after a request head and closes without reading the body
//! (as hyper does for a body over its limit), a WebSocket echo server (tungstenite), and one
//! that records the exact bytes of every request it gets.
//! `/healthz` answers 200 on each, so a load balancer keeps them in rotation.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A server started on `addr`; it runs until the test process ends.
pub struct RawServer {
    pub addr: SocketAddr,
    /// Requests answered (health checks excluded).
    pub answered: Arc<AtomicUsize>,
}

impl RawServer {
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

/// Reads one request head (up to its blank line) and returns it with what came after it.
fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    read_head_after(stream, Vec::new())
}

fn serve(
    addr: SocketAddr,
    handle: impl Fn(TcpStream, Arc<AtomicUsize>) + Send + Sync + 'static,
) -> RawServer {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let answered = Arc::new(AtomicUsize::new(0));
    let (count, handle) = (answered.clone(), Arc::new(handle));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (count, handle) = (count.clone(), handle.clone());
            std::thread::spawn(move || handle(stream, count));
        }
    });
    RawServer { addr, answered }
}

/// Answers every request but `/healthz` with `413` as soon as its head is in, then closes
/// the connection with the body unread (the kernel resets it). Every other answer says
/// `Connection: close`; the rest say nothing about it (as hyper does).
pub fn start_early_answer(addr: SocketAddr) -> RawServer {
    serve(addr, |mut stream, answered| {
        while let Some((head, _)) = read_head(&mut stream) {
            if head.contains(" /healthz ") {
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .is_err()
                {
                    return;
                }
                continue;
            }
            let n = answered.fetch_add(1, Ordering::SeqCst);
            let close = if n % 2 == 0 {
                "Connection: close\r\n"
            } else {
                ""
            };
            let body = "the body is too large\n";
            // One write, sent at once: what is still unsent when the socket closes with unread
            // data is lost to the reset.
            let answer = format!(
                "HTTP/1.1 413 Payload Too Large\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{close}\r\n{body}",
                body.len()
            );
            let _ = stream.set_nodelay(true);
            let _ = stream.write_all(answer.as_bytes());
            return;
        }
    })
}

/// A WebSocket echo server: every message comes back as it was sent.
pub fn start_websocket_echo(addr: SocketAddr) -> RawServer {
    serve(addr, |stream, answered| {
        // Peek at the head: health checks are plain HTTP, one per connection (so a pooled
        // connection never carries a WebSocket handshake to the health check code).
        let mut peek = [0u8; 64];
        let n = stream.peek(&mut peek).unwrap_or(0);
        if String::from_utf8_lossy(&peek[..n]).contains(" /healthz ") {
            let mut stream = stream;
            if read_head(&mut stream).is_some() {
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                );
            }
            return;
        }
        let Ok(mut socket) = tungstenite::accept(stream) else {
            return;
        };
        answered.fetch_add(1, Ordering::SeqCst);
        while let Ok(message) = socket.read() {
            if message.is_close() {
                break;
            }
            if (message.is_text() || message.is_binary()) && socket.send(message).is_err() {
                break;
            }
        }
    })
}

/// Keeps every request it receives as the bytes that came (head and body: a `Content-Length`
/// body, or a chunked one up to its last chunk), and answers each `200 recorded`.
pub struct Recorder {
    pub server: RawServer,
    pub requests: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    /// The requests recorded so far, health checks excluded, as text.
    pub fn texts(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r).into_owned())
            .filter(|r| !r.contains(" /healthz "))
            .collect()
    }
}

pub fn start_recorder(addr: SocketAddr) -> Recorder {
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = requests.clone();
    let server = serve(addr, move |mut stream, answered| {
        let mut pending = Vec::new();
        loop {
            let Some((head, rest)) = read_head_after(&mut stream, std::mem::take(&mut pending))
            else {
                return;
            };
            let mut raw = head.clone().into_bytes();
            let mut body = rest;
            let lower = head.to_ascii_lowercase();
            let length = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let chunked = lower.contains("transfer-encoding: chunked");
            let mut chunk = [0u8; 4096];
            loop {
                let complete = match (length, chunked) {
                    (Some(n), _) => body.len() >= n,
                    (None, true) => body.windows(5).any(|w| w == b"0\r\n\r\n"),
                    _ => true,
                };
                if complete {
                    break;
                }
                match stream.read(&mut chunk) {
                    Ok(n) if n > 0 => body.extend_from_slice(&chunk[..n]),
                    _ => return,
                }
            }
            let used = match (length, chunked) {
                (Some(n), _) => n,
                (None, true) => body
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map_or(0, |p| p + 5),
                _ => 0,
            };
            pending = body.split_off(used.min(body.len()));
            raw.extend_from_slice(&body);
            if !head.contains(" /healthz ") {
                answered.fetch_add(1, Ordering::SeqCst);
            }
            kept.lock().unwrap().push(raw);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nrecorded\n")
                .is_err()
            {
                return;
            }
        }
    });
    Recorder { server, requests }
}

/// `read_head` starting with bytes already read.
fn read_head_after(stream: &mut TcpStream, mut buf: Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Some((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}
