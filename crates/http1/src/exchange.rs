//! One request/response exchange on a server connection: the request goes out while the
//! response head is read, so a server that answers before it has read the whole request body
//! (a 413 after the head, then a close) is heard instead of being lost to the reset that follows
//! (HAProxy and nginx forward such an early response too).

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncRead;

use crate::body::read_head_some;
use crate::head::{self, Response, ResponseRewrite};
use crate::pool::Conn;
use crate::retry::Failure;

/// Largest response head accepted from a server.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How far the request got when its response head arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// All of it: the connection is at a message boundary once the response is read.
    Complete,
    /// Not all of its body: the server answered first (or stopped reading). The connection
    /// cannot be reused, and the rest of the client's body is still to be read or dropped.
    Partial,
}

/// Why the request could not be sent.
#[derive(Debug)]
pub enum PumpError<E> {
    /// Writing to the server failed: it closed or reset (perhaps after answering).
    Write(std::io::Error),
    /// The request body's sender (the client) failed; `E` says how.
    Source(E),
}

/// The end of an exchange's first half.
pub enum HeadOutcome<E> {
    Response(Response, Sent),
    /// No usable response head: the server's fault.
    Failed(Failure),
    /// The client's body failed: nothing to answer (or the caller refuses the request).
    Source(E),
}

/// Reads a final response head from `src` into `buf`, rewritten into `back`; interim (1xx)
/// responses are dropped. The final head stays in `buf`: the caller advances past its
/// `head_len`, after parsing it again with other rules if it must (an early response that
/// closes the client connection). No timer of its own: see `response_head`.
pub async fn read_head<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut BytesMut,
    back: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
) -> Result<Response, Failure> {
    let mut interim = false;
    loop {
        if !buf.is_empty() {
            match head::parse_response(buf, back, rewrite) {
                // Interim responses (103 Early Hints; 100 cannot come, Expect is not
                // forwarded) are dropped.
                Ok(Some(response)) if response.status < 200 && response.status != 101 => {
                    buf.advance(response.head_len);
                    interim = true;
                    continue;
                }
                Ok(Some(response)) => return Ok(response),
                Ok(None) if buf.len() > MAX_RESPONSE_HEAD => {
                    return Err(Failure::Invalid("response head too large"));
                }
                Ok(None) => {}
                Err(what) => return Err(Failure::Invalid(what)),
            }
        }
        let nothing_yet = buf.is_empty() && !interim;
        // Room for a head first: a connection waiting for its server's answer holds no more.
        match read_head_some(src, buf).await {
            Ok(n) if n > 0 => {}
            // Closed or reset before a response: the server answered nothing.
            result if nothing_yet => {
                let error = result
                    .err()
                    .unwrap_or_else(|| std::io::ErrorKind::UnexpectedEof.into());
                return Err(Failure::Unreachable {
                    connect: false,
                    error,
                });
            }
            _ => return Err(Failure::Invalid("connection closed in the response head")),
        }
    }
}

/// A request without a body: `head` written on `conn`, then the response head read within
/// `server_timeout` (past the head, in `conn.buf`, is the response body).
pub async fn send_bodyless(
    conn: &mut Conn,
    head: &[u8],
    back: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
    server_timeout: Duration,
    idle: Duration,
) -> Result<Response, Failure> {
    if let Err(error) = crate::body::write_two(&mut conn.stream, head, &[], idle).await {
        return Err(Failure::Unreachable {
            connect: false,
            error,
        });
    }
    let read = read_head(&mut conn.stream, &mut conn.buf, back, rewrite);
    // The connection's own timer: one wheel entry for its life, not one per request (each
    // request's deadline is later than the last one's).
    let deadline = tokio::time::Instant::now() + server_timeout;
    let response = tokio::select! {
        biased;
        result = read => result?,
        () = conn.response_timer.until(deadline) => return Err(Failure::Timeout),
    };
    conn.buf.advance(response.head_len);
    Ok(response)
}

/// Runs `pump` (which sends the request: its head and body) while reading the response head
/// with `read_head`. The server timeout starts once the request is sent, or once writing it
/// failed (a server that stopped reading may still have answered): a slow upload is not a slow
/// server. An error answer (4xx, 5xx) that comes first ends the pump where it is
/// (`Sent::Partial`): the server wants no more of the body. Any other early answer (a server
/// that answers while it reads, an echo) waits for the body to be sent, as the server expects.
pub async fn response_head<P, E, R>(
    pump: P,
    src: &mut R,
    buf: &mut BytesMut,
    back: &mut Vec<u8>,
    rewrite: &ResponseRewrite<'_>,
    server_timeout: Duration,
) -> HeadOutcome<E>
where
    P: Future<Output = Result<(), PumpError<E>>>,
    R: AsyncRead + Unpin,
{
    let mut pump = std::pin::pin!(pump);
    let head = read_head(src, buf, back, rewrite);
    let mut head = std::pin::pin!(head);
    let deadline = tokio::time::sleep(Duration::MAX);
    let mut deadline = std::pin::pin!(deadline);
    let mut sent = None;
    // A head that came while the body still goes out, and is not an error: held until the
    // pump is done.
    let mut early = None;
    loop {
        tokio::select! {
            biased;
            result = &mut head, if early.is_none() => {
                let response = match result {
                    Ok(response) => response,
                    Err(failure) => return HeadOutcome::Failed(failure),
                };
                match sent {
                    Some(sent) => return HeadOutcome::Response(response, sent),
                    None if response.status >= 400 => {
                        return HeadOutcome::Response(response, Sent::Partial);
                    }
                    None => early = Some(response),
                }
            }
            result = &mut pump, if sent.is_none() => {
                let done = match result {
                    Ok(()) => Sent::Complete,
                    Err(PumpError::Write(error)) => {
                        tracing::debug!(%error, "the server stopped reading the request");
                        Sent::Partial
                    }
                    Err(PumpError::Source(error)) => return HeadOutcome::Source(error),
                };
                if let Some(response) = early.take() {
                    return HeadOutcome::Response(response, done);
                }
                sent = Some(done);
                deadline.as_mut().reset(tokio::time::Instant::now() + server_timeout);
            }
            () = &mut deadline, if sent.is_some() => return HeadOutcome::Failed(Failure::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::tests::rewrite;
    use crate::pool::Pool;
    use crate::stream::Endpoint;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    /// A server that answers the first `answered` requests of its one connection at once and
    /// then reads on without answering.
    async fn server(answered: usize) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (mut seen, mut buf) = (0, [0u8; 1024]);
            loop {
                let n = socket.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    return;
                }
                // Each request is one small head, read whole.
                seen += 1;
                if seen <= answered {
                    let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                    socket.write_all(answer).await.unwrap();
                }
            }
        });
        addr
    }

    /// The connection's timer is armed by its first request and left there by the next ones:
    /// a later request still gets its whole server timeout (the timer fires at the earlier
    /// deadline and moves on), never less, and a timeout is a timeout.
    #[tokio::test(start_paused = true)]
    async fn each_bodyless_request_gets_its_whole_server_timeout_from_one_timer() {
        let addr = server(2).await;
        let pool = Pool::new(1, Duration::from_secs(5));
        let mut conn = pool.connect(Endpoint::Tcp(addr)).await.unwrap();
        let timeout = Duration::from_secs(30);
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut back = Vec::new();
        let idle = Duration::from_secs(60);
        for _ in 0..2 {
            let response = send_bodyless(&mut conn, head, &mut back, &rewrite(), timeout, idle)
                .await
                .unwrap();
            assert_eq!(response.status, 200);
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
        // Armed for the first request's deadline (20 s from now): the third waits 30 s.
        let start = Instant::now();
        let outcome = send_bodyless(&mut conn, head, &mut back, &rewrite(), timeout, idle).await;
        assert!(matches!(outcome, Err(Failure::Timeout)), "{outcome:?}");
        let waited = start.elapsed();
        assert!(
            waited >= timeout && waited < timeout + Duration::from_millis(5),
            "{waited:?}"
        );
    }
}
