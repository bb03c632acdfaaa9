//! A connection to a server over TCP or a Unix socket (nginx's `proxy_pass http://unix:`): the
//! web server reaches the app of its own host through the app's socket file, which skips the
//! TCP/IP stack on both sides of every request; the lb's servers are always TCP. One enum, so
//! the pool, the exchange and the relays stay one copy for both.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream, tcp, unix};

/// How long a connect to a Unix socket with a full accept queue waits before it tries again.
const FULL_QUEUE_RETRY: std::time::Duration = std::time::Duration::from_millis(5);

/// Where a server listens.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint<'a> {
    Tcp(SocketAddr),
    Unix(&'a Path),
    /// The socket, or the TCP address when no server listens on the socket (no such file, or
    /// a file nobody accepts on): an app started with `unix_socket = false` next to a web
    /// server started before the change is still reached.
    UnixOrTcp(&'a Path, SocketAddr),
}

impl std::fmt::Display for Endpoint<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
            Endpoint::UnixOrTcp(path, addr) => write!(f, "unix:{} or {addr}", path.display()),
        }
    }
}

/// An open connection to a server.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects to `endpoint` (no timeout: the pool bounds it). TCP without Nagle: a head and
    /// its body go out as written. A Unix socket whose accept queue is full refuses at once
    /// (`EAGAIN`) where TCP would let the SYN come again: tried again every few milliseconds,
    /// so a busy app makes the connect wait, as over TCP, not fail.
    pub async fn connect(endpoint: Endpoint<'_>) -> io::Result<Stream> {
        match endpoint {
            Endpoint::Tcp(addr) => connect_tcp(addr).await,
            Endpoint::Unix(path) => connect_unix(path).await,
            Endpoint::UnixOrTcp(path, addr) => match connect_unix(path).await {
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    connect_tcp(addr).await
                }
                connected => connected,
            },
        }
    }

    /// Borrowed halves, to read the response while the request body is still written.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match self {
            Stream::Tcp(stream) => {
                let (read, write) = stream.split();
                (ReadHalf::Tcp(read), WriteHalf::Tcp(write))
            }
            Stream::Unix(stream) => {
                let (read, write) = stream.split();
                (ReadHalf::Unix(read), WriteHalf::Unix(write))
            }
        }
    }

    /// Whether the runtime has seen it readable (see `TcpStream::poll_read_ready`).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(stream) => stream.poll_read_ready(cx),
            Stream::Unix(stream) => stream.poll_read_ready(cx),
        }
    }

    /// A non-blocking read.
    pub fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(stream) => stream.try_read(buf),
            Stream::Unix(stream) => stream.try_read(buf),
        }
    }
}

async fn connect_tcp(addr: SocketAddr) -> io::Result<Stream> {
    let stream = TcpStream::connect(addr).await?;
    let _ = stream.set_nodelay(true);
    Ok(Stream::Tcp(stream))
}

async fn connect_unix(path: &Path) -> io::Result<Stream> {
    loop {
        match UnixStream::connect(path).await {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::sleep(FULL_QUEUE_RETRY).await;
            }
            connected => return connected.map(Stream::Unix),
        }
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(stream) => stream.as_fd(),
            Stream::Unix(stream) => stream.as_fd(),
        }
    }
}

/// Forwards `AsyncRead` calls of an enum of streams to the one it holds.
macro_rules! forward_read {
    ($type:ident $(, $life:lifetime)?) => {
        impl$(<$life>)? AsyncRead for $type$(<$life>)? {
            fn poll_read(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &mut ReadBuf<'_>,
            ) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
                    $type::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
                }
            }
        }
    };
}

/// Forwards `AsyncWrite` calls of an enum of streams to the one it holds.
macro_rules! forward_write {
    ($type:ident $(, $life:lifetime)?) => {
        impl$(<$life>)? AsyncWrite for $type$(<$life>)? {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
                    $type::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
                }
            }

            fn poll_write_vectored(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                bufs: &[IoSlice<'_>],
            ) -> Poll<io::Result<usize>> {
                match self.get_mut() {
                    $type::Tcp(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
                    $type::Unix(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
                }
            }

            fn is_write_vectored(&self) -> bool {
                true
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Tcp(stream) => Pin::new(stream).poll_flush(cx),
                    $type::Unix(stream) => Pin::new(stream).poll_flush(cx),
                }
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                match self.get_mut() {
                    $type::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
                    $type::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
                }
            }
        }
    };
}

forward_read!(Stream);
forward_write!(Stream);
forward_read!(ReadHalf, 'a);
forward_write!(WriteHalf, 'a);

/// The read half of `Stream::split`.
#[derive(Debug)]
pub enum ReadHalf<'a> {
    Tcp(tcp::ReadHalf<'a>),
    Unix(unix::ReadHalf<'a>),
}

/// The write half of `Stream::split`.
#[derive(Debug)]
pub enum WriteHalf<'a> {
    Tcp(tcp::WriteHalf<'a>),
    Unix(unix::WriteHalf<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_unix_endpoint_carries_bytes_both_ways_and_through_split_halves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).await.unwrap();
            conn.write_all(b"pong!").await.unwrap();
            buf
        });
        let mut stream = Stream::connect(Endpoint::Unix(&path)).await.unwrap();
        let (mut read, mut write) = stream.split();
        write.write_all(b"ping!").await.unwrap();
        let mut answer = [0u8; 5];
        read.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"pong!");
        assert_eq!(&server.await.unwrap(), b"ping!");
        assert_eq!(
            Endpoint::Unix(&path).to_string(),
            format!("unix:{}", path.display())
        );
    }

    #[tokio::test]
    async fn a_shut_down_write_half_is_the_end_of_the_stream_for_the_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut all = Vec::new();
            conn.read_to_end(&mut all).await.unwrap();
            conn.write_all(b"bye").await.unwrap();
            all
        });
        let mut stream = Stream::connect(Endpoint::Unix(&path)).await.unwrap();
        let (mut read, mut write) = stream.split();
        let bufs = [IoSlice::new(b"head "), IoSlice::new(b"body")];
        let mut written = 0;
        while written < 9 {
            written += write.write_vectored(&bufs).await.unwrap();
        }
        write.shutdown().await.unwrap();
        let mut answer = Vec::new();
        read.read_to_end(&mut answer).await.unwrap();
        assert_eq!(
            answer, b"bye",
            "the read half still reads after the write half is shut"
        );
        assert_eq!(server.await.unwrap(), b"head body");
    }

    #[tokio::test]
    async fn a_full_accept_queue_makes_the_connect_wait_not_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        // A backlog of one, never accepted: the queue fills after a connection or two.
        let socket =
            socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&socket2::SockAddr::unix(&path).unwrap())
            .unwrap();
        socket.listen(1).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener = tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(
            std::os::fd::OwnedFd::from(socket),
        ))
        .unwrap();
        let mut queued = Vec::new();
        let waiting = loop {
            let connect = Box::pin(Stream::connect(Endpoint::Unix(&path)));
            match tokio::time::timeout(std::time::Duration::from_millis(200), connect).await {
                Ok(stream) => queued.push(stream.unwrap()),
                Err(_) => break true,
            }
            assert!(queued.len() < 64, "the queue never filled");
        };
        assert!(waiting, "a connect to a full queue waits");
        // Room again: the next connect gets through.
        let (_first, _) = listener.accept().await.unwrap();
        let (_second, _) = listener.accept().await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            Stream::connect(Endpoint::Unix(&path)),
        )
        .await
        .expect("connected once the app accepted")
        .unwrap();
    }

    #[tokio::test]
    async fn unix_or_tcp_takes_the_socket_when_it_is_served_else_the_port() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.sock");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let either = Endpoint::UnixOrTcp(&path, addr);
        // No file: the port.
        let stream = Stream::connect(either).await.unwrap();
        assert!(matches!(stream, Stream::Tcp(_)), "{stream:?}");
        // A file nobody accepts on (an app killed, then started without its socket): the port.
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(listener);
        let stream = Stream::connect(either).await.unwrap();
        assert!(matches!(stream, Stream::Tcp(_)), "{stream:?}");
        // Served: the socket.
        std::fs::remove_file(&path).unwrap();
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let stream = Stream::connect(either).await.unwrap();
        assert!(matches!(stream, Stream::Unix(_)), "{stream:?}");
    }

    #[tokio::test]
    async fn a_missing_socket_file_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let error = Stream::connect(Endpoint::Unix(&dir.path().join("none.sock")))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
