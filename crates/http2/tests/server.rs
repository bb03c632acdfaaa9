//! The HTTP/2 server driven frame by frame over an in-memory pipe: answers, flow control both
//! ways, trailers, malformed requests, the flood limits, idleness, stalls and shutdown.
//! (Interoperability with real clients is tested through the lb: curl, h2load, Python's h2.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use webstack_http2::frame::{self, Head, Reason, flag, kind, setting};
use webstack_http2::hpack::{self, Decoder};
use webstack_http2::{Options, Reply, RequestBody, RequestHead, serve};

/// Handlers in flight that were dropped before they answered.
static CANCELLED: AtomicUsize = AtomicUsize::new(0);

struct CountDrop;
impl Drop for CountDrop {
    fn drop(&mut self) {
        CANCELLED.fetch_add(1, Ordering::SeqCst);
    }
}

async fn handler(request: RequestHead, body: RequestBody) -> Response<Full<Bytes>> {
    let path = request.path().unwrap_or_default();
    let path = path.split('?').next().unwrap_or_default().to_owned();
    match path.as_str() {
        "/hello" => Response::builder()
            .header("content-type", "text/plain")
            .header("x-request-id", "abc")
            .body(Full::new(Bytes::from_static(b"hello world")))
            .unwrap(),
        "/big" => Response::new(Full::new(Bytes::from(vec![b'x'; 100_000]))),
        "/echo" => {
            // The body's length, its trailers' x-sum, and the cookie as HTTP/1 would see it.
            let cookie = request
                .get("cookie")
                .map(|v| String::from_utf8(v.to_vec()).unwrap())
                .unwrap_or_default();
            let collected = body.collect().await.unwrap();
            let sum = collected
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let len = collected.to_bytes().len();
            Response::new(Full::new(Bytes::from(format!("{len} {sum} {cookie}"))))
        }
        "/never" => {
            let _guard = CountDrop;
            std::future::pending::<()>().await;
            unreachable!()
        }
        _ => Response::builder()
            .status(404)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    }
}

/// A client that speaks raw frames.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
    decoder: Decoder,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Got {
    head: Head,
    payload: Vec<u8>,
}

fn options() -> Options {
    Options {
        idle: Duration::from_secs(60),
        ..Options::default()
    }
}

impl Client {
    /// A connection to a new server, its preface and ours exchanged. `settings`: ours.
    async fn connect(options: Options, settings: &[(u16, u32)]) -> Client {
        let mut client = Client::raw(options);
        let mut hello = frame::PREFACE.to_vec();
        frame::write_settings(&mut hello, settings);
        client.send(&hello).await;
        let first = client.next().await.expect("the server's SETTINGS");
        assert_eq!(first.head.kind, kind::SETTINGS);
        let mut ack = Vec::new();
        frame::write_settings_ack(&mut ack);
        client.send(&ack).await;
        client
    }

    fn raw(options: Options) -> Client {
        Client::raw_with_pipe(options, 1 << 20)
    }

    /// `pipe`: bytes the pipe holds each way (a client that does not read fills it).
    fn raw_with_pipe(options: Options, pipe: usize) -> Client {
        let (ours, theirs) = tokio::io::duplex(pipe);
        let (tx, rx) = oneshot::channel();
        let service = |request, body| async move { Reply::from(handler(request, body).await) };
        let server = tokio::spawn(serve(theirs, service, options, async move {
            let _ = rx.await;
        }));
        Client {
            io: ours,
            buf: Vec::new(),
            decoder: Decoder::new(4096),
            shutdown: Some(tx),
            server,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        // A server that has closed its end may not read everything: that is for the test to
        // see in what it reads back.
        let _ = self.io.write_all(bytes).await;
    }

    /// The next frame, or None once the server closed; bounded.
    async fn next(&mut self) -> Option<Got> {
        tokio::time::timeout(Duration::from_secs(300), async {
            loop {
                if self.buf.len() >= frame::HEAD_LEN {
                    let head = Head::parse(&self.buf);
                    if self.buf.len() >= frame::HEAD_LEN + head.len {
                        let payload =
                            self.buf[frame::HEAD_LEN..frame::HEAD_LEN + head.len].to_vec();
                        self.buf.drain(..frame::HEAD_LEN + head.len);
                        return Some(Got { head, payload });
                    }
                }
                let mut chunk = [0; 16384];
                match self.io.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
        .expect("the server answers within the bound")
    }

    /// The next frame of this kind (others skipped).
    async fn next_of(&mut self, wanted: u8) -> Option<Got> {
        loop {
            let got = self.next().await?;
            if got.head.kind == wanted {
                return Some(got);
            }
        }
    }

    fn decode(&mut self, block: &[u8]) -> Vec<(String, String)> {
        let (mut arena, mut fields) = (Vec::new(), Vec::new());
        self.decoder
            .decode(block, usize::MAX, &mut arena, &mut fields)
            .unwrap();
        fields
            .iter()
            .map(|f| {
                (
                    String::from_utf8(arena[f.name.clone()].to_vec()).unwrap(),
                    String::from_utf8(arena[f.value.clone()].to_vec()).unwrap(),
                )
            })
            .collect()
    }

    async fn request(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let block = block(fields);
        let mut out = Vec::new();
        let flags = flag::END_HEADERS | if end_stream { flag::END_STREAM } else { 0 };
        frame::write_head(&mut out, block.len(), kind::HEADERS, flags, stream);
        out.extend_from_slice(&block);
        self.send(&out).await;
    }

    async fn get(&mut self, stream: u32, path: &str) {
        self.request(stream, &get(path), true).await;
    }

    async fn data(&mut self, stream: u32, data: &[u8], end_stream: bool) {
        let mut out = Vec::new();
        let flags = if end_stream { flag::END_STREAM } else { 0 };
        frame::write_head(&mut out, data.len(), kind::DATA, flags, stream);
        out.extend_from_slice(data);
        self.send(&out).await;
    }

    /// The whole answer on `stream`: its head's fields and its body (other frames skipped).
    async fn answer(&mut self, stream: u32) -> (Vec<(String, String)>, Vec<u8>) {
        let mut head = None;
        let mut body = Vec::new();
        loop {
            let got = self.next().await.expect("an answer");
            if got.head.stream != stream {
                continue;
            }
            match got.head.kind {
                kind::HEADERS => {
                    assert!(got.head.has(flag::END_HEADERS));
                    let fields = self.decode(&got.payload);
                    head = Some(fields);
                }
                kind::DATA => body.extend_from_slice(&got.payload),
                kind::RST_STREAM => panic!("stream {stream} reset: {:?}", got.payload),
                _ => continue,
            }
            if got.head.has(flag::END_STREAM) {
                return (head.expect("a head"), body);
            }
        }
    }

    /// The reason of the RST_STREAM on `stream` (other frames skipped).
    async fn reset_of(&mut self, stream: u32) -> u32 {
        loop {
            let got = self.next().await.expect("a reset");
            if got.head.kind == kind::RST_STREAM && got.head.stream == stream {
                return u32::from_be_bytes(got.payload[..4].try_into().unwrap());
            }
        }
    }

    /// The GOAWAY's last stream and reason (other frames skipped).
    async fn goaway(&mut self) -> (u32, u32) {
        let got = self.next_of(kind::GOAWAY).await.expect("a GOAWAY");
        let last = u32::from_be_bytes(got.payload[..4].try_into().unwrap());
        let reason = u32::from_be_bytes(got.payload[4..8].try_into().unwrap());
        (last, reason)
    }

    /// Reads what comes, answering the server's PINGs as a live client does, until `until`
    /// (None: until the server closes). True if the connection was still open then.
    async fn answer_pings(&mut self, until: Option<tokio::time::Instant>) -> bool {
        loop {
            if until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                return true;
            }
            let Some(got) = self.next().await else {
                return false;
            };
            if got.head.kind == kind::PING && !got.head.has(flag::ACK) {
                let mut ack = Vec::new();
                frame::write_ping(&mut ack, true, got.payload[..8].try_into().unwrap());
                self.send(&ack).await;
            }
        }
    }

    /// Reads until the server closes; bounded.
    async fn closed(&mut self) {
        while self.next().await.is_some() {}
    }
}

fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        hpack::encode_field(&mut block, name.as_bytes(), value.as_bytes(), false);
    }
    block
}

fn get(path: &str) -> Vec<(&str, &str)> {
    vec![
        (":method", "GET"),
        (":scheme", "https"),
        (":authority", "www.foobar.com"),
        (":path", path),
    ]
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn requests_on_many_streams_get_their_answers() {
    let mut client = Client::connect(options(), &[]).await;
    client.get(1, "/hello").await;
    client.get(3, "/nothing").await;
    let (head, body) = client.answer(1).await;
    assert_eq!(field(&head, ":status"), Some("200"));
    assert_eq!(field(&head, "content-type"), Some("text/plain"));
    assert_eq!(field(&head, "x-request-id"), Some("abc"));
    assert_eq!(body, b"hello world");
    // The length of a body known in advance is said.
    assert_eq!(field(&head, "content-length"), Some("11"));
    let (head, body) = client.answer(3).await;
    assert_eq!(field(&head, ":status"), Some("404"));
    assert!(body.is_empty());
    // A PING is answered with its payload.
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, *b"12345678");
    client.send(&ping).await;
    let pong = client.next_of(kind::PING).await.unwrap();
    assert!(pong.head.has(flag::ACK));
    assert_eq!(pong.payload, b"12345678");
    // HEAD: the head alone, ending the stream, whatever the handler's body.
    let mut fields = get("/hello");
    fields[0] = (":method", "HEAD");
    client.request(5, &fields, true).await;
    let got = client.next_of(kind::HEADERS).await.unwrap();
    assert!(got.head.has(flag::END_STREAM));
    let head = client.decode(&got.payload);
    assert_eq!(field(&head, ":status"), Some("200"));
}

#[tokio::test]
async fn an_answer_waits_for_the_clients_window_and_the_frame_size() {
    // The client allows 1000 bytes per stream: the server stops there until told more.
    let mut client = Client::connect(options(), &[(setting::INITIAL_WINDOW_SIZE, 1000)]).await;
    client.get(1, "/big").await;
    let mut got = 0;
    while got < 1000 {
        let data = client.next_of(kind::DATA).await.unwrap();
        got += data.payload.len();
    }
    assert_eq!(got, 1000);
    // Nothing more comes until a WINDOW_UPDATE: a PING's ACK comes first.
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, [0; 8]);
    client.send(&ping).await;
    let next = client.next().await.unwrap();
    assert_eq!(next.head.kind, kind::PING, "{next:?}");
    // More room on the stream and the connection: the rest, in frames of at most 16384.
    let mut more = Vec::new();
    frame::write_window_update(&mut more, 1, 200_000);
    frame::write_window_update(&mut more, 0, 200_000);
    client.send(&more).await;
    loop {
        let data = client.next_of(kind::DATA).await.unwrap();
        assert!(data.payload.len() <= frame::DEFAULT_MAX_FRAME);
        got += data.payload.len();
        if data.head.has(flag::END_STREAM) {
            break;
        }
    }
    assert_eq!(got, 100_000);
}

#[tokio::test]
async fn a_request_body_reopens_the_window_as_it_is_read_and_trailers_reach_the_handler() {
    let options = Options {
        stream_window: 20_000,
        connection_window: 20_000,
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    let mut fields = get("/echo");
    fields[0] = (":method", "POST");
    fields.push(("cookie", "a=1"));
    fields.push(("cookie", "b=2"));
    client.request(1, &fields, false).await;
    // 50,000 bytes through a 20,000-byte window: only possible if the server gives room back.
    let mut sent = 0;
    let mut window = 20_000;
    while sent < 50_000 {
        while window > 0 && sent < 50_000 {
            let n = 5_000.min(window).min(50_000 - sent);
            client.data(1, &vec![b'y'; n], false).await;
            sent += n;
            window -= n;
        }
        if sent == 50_000 {
            break;
        }
        let update = client.next_of(kind::WINDOW_UPDATE).await.unwrap();
        if update.head.stream == 1 {
            window += u32::from_be_bytes(update.payload[..4].try_into().unwrap()) as usize;
        }
    }
    let mut out = Vec::new();
    let trailers = block(&[("x-sum", "42")]);
    frame::write_head(
        &mut out,
        trailers.len(),
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
    );
    out.extend_from_slice(&trailers);
    client.send(&out).await;
    let (_, body) = client.answer(1).await;
    assert_eq!(String::from_utf8(body).unwrap(), "50000 42 a=1; b=2");
}

#[tokio::test]
async fn data_over_the_window_or_the_declared_length_resets_the_stream() {
    let options = Options {
        stream_window: 1000,
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    let mut fields = get("/echo");
    fields[0] = (":method", "POST");
    client.request(1, &fields, false).await;
    client.data(1, &[0; 1001], false).await;
    assert_eq!(client.reset_of(1).await, Reason::FlowControlError as u32);
    fields.push(("content-length", "3"));
    client.request(3, &fields, false).await;
    client.data(3, b"abcd", true).await;
    assert_eq!(client.reset_of(3).await, Reason::ProtocolError as u32);
    client.request(5, &fields, false).await;
    client.data(5, b"ab", true).await;
    assert_eq!(client.reset_of(5).await, Reason::ProtocolError as u32);
    // The connection lives on.
    client.get(7, "/hello").await;
    assert_eq!(client.answer(7).await.1, b"hello world");
}

#[tokio::test]
async fn malformed_requests_are_reset_and_the_connection_lives_on() {
    let mut client = Client::connect(options(), &[]).await;
    let cases: Vec<Vec<(&str, &str)>> = vec![
        // No :path.
        vec![(":method", "GET"), (":scheme", "https")],
        // An upper-case name.
        [get("/hello"), vec![("X-Upper", "1")]].concat(),
        // A connection-specific field.
        [get("/hello"), vec![("connection", "close")]].concat(),
        // TE other than trailers.
        [get("/hello"), vec![("te", "gzip")]].concat(),
        // A pseudo-header after a regular field.
        vec![
            (":method", "GET"),
            ("accept", "*/*"),
            (":scheme", "https"),
            (":path", "/"),
        ],
        // A repeated or unknown pseudo-header.
        [get("/hello"), vec![(":path", "/again")]].concat(),
        [get("/hello"), vec![(":protocol", "websocket")]].concat(),
        // An empty :path.
        get(""),
    ];
    let mut stream = 1;
    for fields in &cases {
        client.request(stream, fields, true).await;
        assert_eq!(
            client.reset_of(stream).await,
            Reason::ProtocolError as u32,
            "{fields:?}"
        );
        stream += 2;
    }
    client.get(stream, "/hello").await;
    assert_eq!(client.answer(stream).await.1, b"hello world");
}

#[tokio::test]
async fn a_head_over_the_list_limit_is_answered_431() {
    let options = Options {
        max_header_list: 1000,
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    let big = "v".repeat(2000);
    client
        .request(1, &[get("/hello"), vec![("x-big", &big)]].concat(), true)
        .await;
    let (head, _) = client.answer(1).await;
    assert_eq!(field(&head, ":status"), Some("431"));
    client.get(3, "/hello").await;
    assert_eq!(client.answer(3).await.1, b"hello world");
}

#[tokio::test]
async fn streams_over_the_concurrency_limit_are_refused() {
    let options = Options {
        max_concurrent_streams: 2,
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    client.get(1, "/never").await;
    client.get(3, "/never").await;
    client.get(5, "/hello").await;
    assert_eq!(client.reset_of(5).await, Reason::RefusedStream as u32);
}

#[tokio::test]
async fn a_reset_stream_drops_its_handler() {
    let mut client = Client::connect(options(), &[]).await;
    let before = CANCELLED.load(Ordering::SeqCst);
    client.get(1, "/never").await;
    // Let the handler start.
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, [1; 8]);
    client.send(&ping).await;
    client.next_of(kind::PING).await.unwrap();
    let mut reset = Vec::new();
    frame::write_reset(&mut reset, 1, Reason::Cancel);
    frame::write_ping(&mut reset, false, [2; 8]);
    client.send(&reset).await;
    client.next_of(kind::PING).await.unwrap();
    assert!(CANCELLED.load(Ordering::SeqCst) > before);
}

#[tokio::test]
async fn rapid_resets_end_the_connection_with_enhance_your_calm() {
    let mut client = Client::connect(options(), &[]).await;
    let mut stream = 1;
    let mut out = Vec::new();
    let block = block(&get("/never"));
    for _ in 0..400 {
        frame::write_head(
            &mut out,
            block.len(),
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            stream,
        );
        out.extend_from_slice(&block);
        frame::write_reset(&mut out, stream, Reason::Cancel);
        stream += 2;
    }
    client.send(&out).await;
    let (_, reason) = client.goaway().await;
    assert_eq!(reason, Reason::EnhanceYourCalm as u32);
    client.closed().await;
}

#[tokio::test]
async fn floods_of_frames_that_carry_nothing_end_the_connection() {
    for flood in [kind::PING, kind::SETTINGS, kind::PRIORITY] {
        let mut client = Client::connect(options(), &[]).await;
        let mut out = Vec::new();
        for i in 0..3000u32 {
            match flood {
                kind::PING => frame::write_ping(&mut out, false, [0; 8]),
                kind::SETTINGS => frame::write_settings(&mut out, &[]),
                _ => {
                    frame::write_head(&mut out, 5, kind::PRIORITY, 0, 1 + 2 * i);
                    out.extend_from_slice(&[0, 0, 0, 0, 16]);
                }
            }
        }
        client.send(&out).await;
        let (_, reason) = client.goaway().await;
        assert_eq!(reason, Reason::EnhanceYourCalm as u32, "flood of {flood}");
        client.closed().await;
    }
}

#[tokio::test]
async fn an_endless_header_block_is_cut_before_it_is_decoded() {
    let mut client = Client::connect(options(), &[]).await;
    let mut out = Vec::new();
    frame::write_head(&mut out, 1, kind::HEADERS, 0, 1);
    out.push(0x82);
    client.send(&out).await;
    let mut sent = 0;
    let chunk = vec![0x82u8; 16_000];
    // Far more than any limit; the server stops reading at its bound.
    while sent < 400_000 {
        let mut out = Vec::new();
        frame::write_head(&mut out, chunk.len(), kind::CONTINUATION, 0, 1);
        out.extend_from_slice(&chunk);
        client.send(&out).await;
        sent += chunk.len();
    }
    let (_, reason) = client.goaway().await;
    assert_eq!(reason, Reason::EnhanceYourCalm as u32);
    client.closed().await;
}

#[tokio::test]
async fn protocol_errors_end_the_connection_with_goaway() {
    // Each: the frames after the handshake, and the GOAWAY reason expected.
    let mut cases: Vec<(Vec<u8>, Reason)> = Vec::new();
    let mut even = Vec::new();
    let block = block(&get("/hello"));
    frame::write_head(
        &mut even,
        block.len(),
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        2,
    );
    even.extend_from_slice(&block);
    cases.push((even, Reason::ProtocolError));
    let mut bad_hpack = Vec::new();
    frame::write_head(
        &mut bad_hpack,
        1,
        kind::HEADERS,
        flag::END_HEADERS | flag::END_STREAM,
        1,
    );
    bad_hpack.push(0x80);
    cases.push((bad_hpack, Reason::CompressionError));
    let mut big = Vec::new();
    frame::write_head(&mut big, 20_000, kind::DATA, 0, 1);
    big.extend_from_slice(&[0; 20_000]);
    cases.push((big, Reason::FrameSizeError));
    let mut idle_data = Vec::new();
    frame::write_head(&mut idle_data, 1, kind::DATA, 0, 9);
    idle_data.push(0);
    cases.push((idle_data, Reason::ProtocolError));
    let mut zero_update = Vec::new();
    frame::write_window_update(&mut zero_update, 0, 0);
    cases.push((zero_update, Reason::ProtocolError));
    let mut push = Vec::new();
    frame::write_head(&mut push, 4, kind::PUSH_PROMISE, flag::END_HEADERS, 1);
    push.extend_from_slice(&[0, 0, 0, 2]);
    cases.push((push, Reason::ProtocolError));
    let mut bad_settings = Vec::new();
    frame::write_settings(&mut bad_settings, &[(setting::MAX_FRAME_SIZE, 100)]);
    cases.push((bad_settings, Reason::ProtocolError));
    let mut overflow = Vec::new();
    frame::write_window_update(&mut overflow, 0, 0x7fff_ffff);
    cases.push((overflow, Reason::FlowControlError));
    for (frames, expected) in cases {
        let mut client = Client::connect(options(), &[]).await;
        client.send(&frames).await;
        let (_, reason) = client.goaway().await;
        assert_eq!(reason, expected as u32, "{frames:?}");
        client.closed().await;
    }
    // Not HTTP/2 at all, and a first frame that is not SETTINGS.
    let mut client = Client::raw(options());
    client.send(b"GET / HTTP/1.1\r\n\r\n").await;
    client.closed().await;
    let mut client = Client::raw(options());
    let mut hello = frame::PREFACE.to_vec();
    frame::write_ping(&mut hello, false, [0; 8]);
    client.send(&hello).await;
    let (_, reason) = client.goaway().await;
    assert_eq!(reason, Reason::ProtocolError as u32);
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_gets_goaway_and_closes() {
    let options = Options {
        idle: Duration::from_secs(5),
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    client.get(1, "/hello").await;
    client.answer(1).await;
    let (last, reason) = client.goaway().await;
    assert_eq!((last, reason), (1, Reason::NoError as u32));
    client.closed().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_after_the_stall_bound() {
    // A stream window of 0: the answer can never be sent.
    let mut client = Client::connect(options(), &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
    client.get(1, "/hello").await;
    cut_after_the_stall_bound(client).await;
    // The connection's window never reopened (100,000 bytes, 65,535 allowed).
    let mut client = Client::connect(options(), &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]).await;
    client.get(1, "/big").await;
    cut_after_the_stall_bound(client).await;
}

async fn cut_after_the_stall_bound(mut client: Client) {
    // The client answers the server's PINGs meanwhile: it is alive, it only never opens its
    // window.
    let started = tokio::time::Instant::now();
    assert!(!client.answer_pings(None).await);
    assert!(started.elapsed() >= options().stall);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_reads_nothing_at_all_is_cut_and_the_server_task_ends() {
    // A pipe of 4 KiB: the answer fills it, and the PINGs and the GOAWAY find no room either.
    let mut client = Client::raw_with_pipe(options(), 4096);
    let mut hello = frame::PREFACE.to_vec();
    frame::write_settings(&mut hello, &[(setting::INITIAL_WINDOW_SIZE, 1 << 30)]);
    frame::write_window_update(&mut hello, 0, 1 << 30);
    hello.extend_from_slice(&{
        let block = block(&get("/big"));
        let mut out = Vec::new();
        frame::write_head(
            &mut out,
            block.len(),
            kind::HEADERS,
            flag::END_HEADERS | flag::END_STREAM,
            1,
        );
        out.extend_from_slice(&block);
        out
    });
    client.send(&hello).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(600), &mut client.server)
        .await
        .expect("the server gives up on the client")
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(50),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn body_data_nobody_reads_gives_its_room_back() {
    // A connection window of 65,535 (the default), 20,000 per stream.
    let options = Options {
        stream_window: 20_000,
        connection_window: 65_535,
        ..options()
    };
    let mut client = Client::connect(options, &[]).await;
    let mut post = get("/never");
    post[0] = (":method", "POST");
    // 20,000 bytes each to two handlers that never read, whose streams the client resets...
    for stream in [1, 3] {
        client.request(stream, &post, false).await;
        client.data(stream, &[1; 10_000], false).await;
        client.data(stream, &[1; 10_000], false).await;
        let mut reset = Vec::new();
        frame::write_reset(&mut reset, stream, Reason::Cancel);
        client.send(&reset).await;
    }
    // ...and 20,000 to a handler that answers at once and drops the body.
    post[3] = (":path", "/hello");
    client.request(5, &post, false).await;
    client.data(5, &[1; 10_000], false).await;
    client.data(5, &[1; 10_000], false).await;
    assert_eq!(client.answer(5).await.1, b"hello world");
    // 60,000 of the 65,535 are spent unless they came back: 15,000 more (within the stream's
    // window) would be a flow control error, and are answered only if the server gave the
    // room back.
    post[3] = (":path", "/echo");
    client.request(7, &post, false).await;
    for chunk in 0..3 {
        client.data(7, &[2; 5_000], chunk == 2).await;
    }
    let (_, body) = client.answer(7).await;
    assert!(body.starts_with(b"15000 "), "{body:?}");
}

#[tokio::test]
async fn a_smaller_table_the_client_asks_for_is_acknowledged_in_the_next_block() {
    let mut client = Client::connect(options(), &[(setting::HEADER_TABLE_SIZE, 0)]).await;
    client.get(1, "/hello").await;
    let got = client.next_of(kind::HEADERS).await.unwrap();
    assert_eq!(
        got.payload[0], 0x20,
        "a size update to 0 first: {:?}",
        got.payload
    );
    let head = client.decode(&got.payload);
    assert_eq!(field(&head, ":status"), Some("200"));
    client.get(3, "/hello").await;
    let got = client.next_of(kind::HEADERS).await.unwrap();
    assert_ne!(got.payload[0], 0x20, "only once");
}

#[tokio::test(start_paused = true)]
async fn a_window_opened_by_settings_is_not_taken_for_a_stall() {
    let long_idle = Options {
        idle: Duration::from_secs(3600),
        ..options()
    };
    let mut client = Client::connect(long_idle, &[(setting::INITIAL_WINDOW_SIZE, 0)]).await;
    client.get(1, "/hello").await;
    client.next_of(kind::HEADERS).await.unwrap();
    let mut more = Vec::new();
    frame::write_settings(&mut more, &[(setting::INITIAL_WINDOW_SIZE, 65_535)]);
    client.send(&more).await;
    let data = client.next_of(kind::DATA).await.unwrap();
    assert_eq!(data.payload, b"hello world");
    // Well past the stall bound, answering the server's PINGs: the connection lives on.
    let until = tokio::time::Instant::now() + options().stall * 2;
    assert!(
        client.answer_pings(Some(until)).await,
        "the connection lives on"
    );
    client.get(3, "/hello").await;
    assert_eq!(client.answer(3).await.1, b"hello world");
}

#[tokio::test(start_paused = true)]
async fn a_stream_reset_while_it_waited_for_the_connections_window_is_no_stall() {
    let long_idle = Options {
        idle: Duration::from_secs(3600),
        ..options()
    };
    // The stream may take 1 MiB, the connection 65,535: /big (100,000) waits for the latter.
    let mut client = Client::connect(long_idle, &[(setting::INITIAL_WINDOW_SIZE, 1 << 20)]).await;
    client.get(1, "/big").await;
    let mut got = 0;
    while got < 65_535 {
        got += client.next_of(kind::DATA).await.unwrap().payload.len();
    }
    let mut reset = Vec::new();
    frame::write_reset(&mut reset, 1, Reason::Cancel);
    client.send(&reset).await;
    // Well past the stall bound, answering PINGs: nothing waits, so nothing stalls.
    let until = tokio::time::Instant::now() + options().stall * 2;
    assert!(
        client.answer_pings(Some(until)).await,
        "the connection lives on"
    );
    let mut more = Vec::new();
    frame::write_window_update(&mut more, 0, 100_000);
    client.send(&more).await;
    client.get(3, "/hello").await;
    assert_eq!(client.answer(3).await.1, b"hello world");
}

/// A transport whose close never completes (a TLS close_notify the client never takes).
struct StuckClose(DuplexStream);

impl tokio::io::AsyncRead for StuckClose {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for StuckClose {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_close_that_never_completes_is_bounded_whatever_the_client_sends() {
    let (mut ours, theirs) = tokio::io::duplex(1 << 20);
    let short_idle = Options {
        idle: Duration::from_secs(5),
        ..options()
    };
    let service = |request, body| async move { Reply::from(handler(request, body).await) };
    let server = tokio::spawn(serve(
        StuckClose(theirs),
        service,
        short_idle,
        std::future::pending(),
    ));
    let mut hello = frame::PREFACE.to_vec();
    frame::write_settings(&mut hello, &[]);
    ours.write_all(&hello).await.unwrap();
    // After the idle GOAWAY the client keeps sending frames that cost nothing, and reads
    // nothing more.
    let started = tokio::time::Instant::now();
    let mut ack = Vec::new();
    frame::write_settings_ack(&mut ack);
    let keep_sending = async {
        loop {
            tokio::time::sleep(Duration::from_secs(10)).await;
            if ours.write_all(&ack).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(600), async {
        tokio::select! {
            ended = server => ended.unwrap(),
            () = keep_sending => unreachable!(),
        }
    })
    .await
    .expect("the server gives up on the close");
    let took = started.elapsed();
    assert!(
        took >= options().stall && took < options().stall * 2,
        "{took:?}"
    );
}

#[tokio::test]
async fn shutdown_sends_goaway_and_lets_open_streams_finish() {
    let mut client = Client::connect(options(), &[]).await;
    let mut fields = get("/echo");
    fields[0] = (":method", "POST");
    client.request(1, &fields, false).await;
    // The stream is open (its handler reads the body: a PING's ACK says the server has read
    // the request); now the server is told to stop.
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, [0; 8]);
    client.send(&ping).await;
    client.next_of(kind::PING).await.unwrap();
    client.shutdown.take().unwrap().send(()).unwrap();
    let (last, reason) = client.goaway().await;
    assert_eq!((last, reason), (1, Reason::NoError as u32));
    // A new stream after GOAWAY is not served; the open one is.
    client.get(3, "/hello").await;
    client.data(1, b"abc", true).await;
    let (_, body) = client.answer(1).await;
    assert!(body.starts_with(b"3 "), "{body:?}");
    client.closed().await;
    // A later GOAWAY never names a stream past the first one's (stream 1 stays open).
    let mut client = Client::connect(options(), &[]).await;
    client.get(1, "/never").await;
    let mut ping = Vec::new();
    frame::write_ping(&mut ping, false, [0; 8]);
    client.send(&ping).await;
    client.next_of(kind::PING).await.unwrap();
    client.shutdown.take().unwrap().send(()).unwrap();
    assert_eq!(client.goaway().await, (1, Reason::NoError as u32));
    client.get(3, "/hello").await;
    let mut bad = Vec::new();
    frame::write_window_update(&mut bad, 0, 0);
    client.send(&bad).await;
    assert_eq!(client.goaway().await, (1, Reason::ProtocolError as u32));
    tokio::time::timeout(Duration::from_secs(10), client.server)
        .await
        .expect("the server task ends")
        .unwrap();
}

#[tokio::test]
async fn a_body_held_back_for_100_continue_is_asked_for_when_the_handler_reads_it() {
    let mut client = Client::connect(options(), &[]).await;
    let mut fields = get("/echo");
    fields[0] = (":method", "POST");
    fields.push(("expect", "100-continue"));
    client.request(1, &fields, false).await;
    // The handler reads the body: an interim 100, the stream left open.
    let interim = client.next_of(kind::HEADERS).await.unwrap();
    assert_eq!(interim.head.stream, 1);
    assert!(!interim.head.has(flag::END_STREAM));
    assert_eq!(
        field(&client.decode(&interim.payload), ":status"),
        Some("100")
    );
    client.data(1, b"after", true).await;
    let (head, body) = client.answer(1).await;
    assert_eq!(field(&head, ":status"), Some("200"));
    assert_eq!(String::from_utf8(body).unwrap(), "5  ");

    // A handler that answers without reading invites no body: the first head is the answer.
    let mut fields = get("/hello");
    fields[0] = (":method", "POST");
    fields.push(("expect", "100-continue"));
    client.request(3, &fields, false).await;
    let first = client.next_of(kind::HEADERS).await.unwrap();
    assert_eq!(first.head.stream, 3);
    assert_eq!(
        field(&client.decode(&first.payload), ":status"),
        Some("200")
    );
}
