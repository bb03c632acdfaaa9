//! The load balancer process (`webstack run --host lb-01 --role lb`) in front of fake backends
//! on real sockets: algorithms, health checks, backups, retries, timeouts, headers, bad input.

use std::time::Duration;

use webstack_testkit::backend::Backend;
use webstack_testkit::http::{self, get};
use webstack_testkit::topology::toml;
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// An lb on 127.0.`net`.10 over fake backends web-01.. (one per entry of `names`).
fn lb_over_backends(
    name: &str,
    net: u8,
    backends: usize,
    config: &str,
) -> (Topology, Vec<Backend>) {
    let started: Vec<_> = (1..=backends as u8)
        .map(|i| Backend::start(([127, 0, net, 10 + i], 8000).into(), &format!("web-{i:02}")))
        .collect();
    let mut topology = Topology::write(EXE, name, net, config);
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);
    let names: Vec<&str> = started.iter().map(|b| b.name.as_str()).collect();
    topology.wait_servers_up(&names);
    (topology, started)
}

fn hits(backends: &[Backend]) -> Vec<usize> {
    backends.iter().map(Backend::hits).collect()
}

fn metric(topology: &Topology, name: &str) -> f64 {
    let text = get(topology.lb_admin(), "/metrics", &[]).unwrap().text();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn leastconn_sends_new_requests_away_from_a_server_holding_slow_requests() {
    let (topology, backends) = lb_over_backends(
        "lb-leastconn",
        31,
        2,
        &toml(31, 2, "algorithm = \"leastconn\""),
    );
    let lb = topology.lb();
    // One slow request occupies one server for 6 s (ten quick requests take far less; the
    // client waits up to 10 s).
    let slow = std::thread::spawn(move || get(lb, "/slow?ms=6000", &[]).unwrap());
    assert_eventually!(
        hits(&backends).iter().sum::<usize>() == 1,
        Duration::from_secs(5),
        "slow request arrived"
    );
    let busy = hits(&backends).iter().position(|&h| h == 1).unwrap();
    let before = hits(&backends);
    for _ in 0..10 {
        assert_eq!(get(lb, "/", &[]).unwrap().status, 200);
    }
    let after = hits(&backends);
    assert_eq!(
        after[busy], before[busy],
        "no new request went to the busy server: {after:?}"
    );
    assert_eq!(after[1 - busy], before[1 - busy] + 10);
    assert_eq!(slow.join().unwrap().status, 200);
    // Once it is free again, both share.
    for _ in 0..10 {
        get(lb, "/", &[]).unwrap();
    }
    let last = hits(&backends);
    assert_eq!(last[busy] - after[busy], 5, "{last:?}");
}

#[test]
fn weighted_roundrobin_and_backup_servers() {
    let config = format!(
        "{}\n[[lb.server]]\nhost = \"web-01\"\nweight = 3\n\n[[lb.server]]\nhost = \"web-03\"\nbackup = true\n",
        toml(32, 3, "algorithm = \"roundrobin\"")
    );
    let (topology, backends) = lb_over_backends("lb-weights", 32, 3, &config);
    for _ in 0..40 {
        assert_eq!(get(topology.lb(), "/", &[]).unwrap().status, 200);
    }
    assert_eq!(hits(&backends), vec![30, 10, 0], "3:1, backup idle");

    // Both regular servers fail their health checks: the backup takes over, then hands back.
    backends[0]
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    backends[1]
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eventually!(
        metric(&topology, "webstack_lb_server_up{server=\"web-02\"}") == 0.0
            && metric(&topology, "webstack_lb_server_up{server=\"web-01\"}") == 0.0,
        Duration::from_secs(10),
        "regular servers down"
    );
    let before = hits(&backends);
    for _ in 0..5 {
        let r = get(topology.lb(), "/", &[]).unwrap();
        assert_eq!(r.header("x-served-by"), Some("web-03"));
    }
    assert_eq!(hits(&backends)[2] - before[2], 5);
    backends[1]
        .unhealthy
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eventually!(
        get(topology.lb(), "/", &[]).is_ok_and(|r| r.header("x-served-by") == Some("web-02")),
        Duration::from_secs(10),
        "web-02 back, backup idle again"
    );
}

#[test]
fn a_dead_server_is_retried_elsewhere_then_taken_out() {
    // Slow health checks, so requests meet the dead server before the checker does; no
    // passive ejection (`traffic.rs` tests it), so the checker is what takes it out.
    let config = toml(33, 2, "algorithm = \"roundrobin\"").replace(
        "interval = \"200ms\"",
        "interval = \"20s\"\neject_after = 0",
    );
    let (topology, mut backends) = lb_over_backends("lb-retry", 33, 2, &config);
    drop(backends.pop()); // web-02 stops listening
    for i in 0..20 {
        let r = get(topology.lb(), "/", &[]).unwrap();
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        assert_eq!(r.header("x-served-by"), Some("web-01"));
    }
    assert!(metric(&topology, "webstack_lb_retries_total") >= 1.0);
    // The connection failures woke web-02's checker, at most once per quarter interval (5 s):
    // two failed checks take it out after about 10 s, not the 20 s + 10 s of the schedule.
    assert_eventually!(
        metric(&topology, "webstack_lb_server_up{server=\"web-02\"}") == 0.0,
        Duration::from_secs(20),
        "web-02 marked down"
    );

    // A body cannot be replayed: a POST that met the dead server would get 502, never a retry
    // that could run it twice. With web-02 down, POSTs simply go to web-01.
    let post = http::request(topology.lb(), "POST", "/submit", &[], b"{}").unwrap();
    assert_eq!(post.status, 200);
}

#[test]
fn errors_the_load_balancer_answers_itself() {
    let config = toml(34, 1, "").replace(
        "[lb]\n",
        "[lb]\n[lb.timeouts]\nserver = \"300ms\"\nclient_header = \"1s\"\n",
    );
    let (topology, backends) = lb_over_backends("lb-errors", 34, 1, &config);
    let lb = topology.lb();

    // Slower than the server timeout: 504 with a short body.
    let slow = get(lb, "/slow?ms=2000", &[]).unwrap();
    assert_eq!(slow.status, 504, "{}", slow.text());
    assert!(slow.text().contains("did not answer in time"));

    // Malformed requests: 400; an oversized head: 431.
    let garbage = http::raw(lb, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(5)).unwrap();
    assert!(
        String::from_utf8_lossy(&garbage).starts_with("HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&garbage)
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100_000)
    );
    let answer = http::raw(lb, huge.as_bytes(), Duration::from_secs(5)).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // A request line longer than the whole head may be: 414.
    let long_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let answer = http::raw(lb, long_uri.as_bytes(), Duration::from_secs(5)).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 414"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // A client that never finishes its request head (slowloris) is cut off after
    // `client_header`: the connection closes instead of being held forever.
    let slowloris = http::raw(
        lb,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(10),
    );
    let answer = slowloris.expect("the lb closes the connection before the 10 s read timeout");
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Each refused head has its access line, with no method or target (as nginx logs "-").
    for status in [400, 431, 414, 408] {
        assert_eventually!(
            topology.access_log("lb-01", "lb").lines().any(|l| {
                l.contains(&format!("\"status\":{status},"))
                    && l.contains("\"method\":\"-\",\"path\":\"-\"")
            }),
            Duration::from_secs(10),
            "an access line for the refused {status}:\n{}",
            topology.access_log("lb-01", "lb")
        );
    }

    // No server left: 503.
    backends[0]
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eventually!(
        get(lb, "/", &[]).is_ok_and(|r| r.status == 503),
        Duration::from_secs(10),
        "503 once the only server is down"
    );
    let r = get(lb, "/", &[]).unwrap();
    assert!(r.text().contains("no server is available"));
    assert_eq!(r.header("x-request-id").map(str::len), Some(32));
}

#[test]
fn forwarded_headers_added_and_hop_by_hop_headers_removed() {
    let (topology, _backends) = lb_over_backends("lb-headers", 35, 1, &toml(35, 1, ""));
    let r = get(
        topology.lb(),
        "/echo?q=1",
        &[
            ("Connection", "keep-alive, X-Secret"),
            ("X-Secret", "hop"),
            ("Keep-Alive", "timeout=5"),
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "client-chosen"),
            ("X-Custom", "kept"),
            ("User-Agent", "agent/1.0 \"quoted\""),
            ("Referer", "https://ref.example/"),
        ],
    )
    .unwrap();
    let seen = r.json();
    let headers = &seen["headers"];
    assert_eq!(seen["path"], "/echo");
    assert!(
        headers.get("x-secret").is_none() && headers.get("keep-alive").is_none(),
        "{headers}"
    );
    assert_eq!(headers["x-custom"], "kept");
    let xff = headers["x-forwarded-for"].as_str().unwrap();
    assert!(xff.starts_with("203.0.113.7, 127."), "appended: {xff}");
    assert_eq!(
        headers["x-forwarded-proto"], "http",
        "the LB states the protocol it received, not the client's claim"
    );
    let id = headers["x-request-id"].as_str().unwrap();
    assert_eq!(id.len(), 32);
    assert_eq!(
        r.header("x-request-id"),
        Some(id),
        "the same id goes back to the client"
    );
    assert_eq!(
        headers["host"],
        topology.lb().to_string(),
        "Host is passed through"
    );
    // The access line: the request's id, its Referer and User-Agent (JSON-escaped).
    let logged = || {
        topology
            .access_log("lb-01", "lb")
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| line["request_id"] == id)
    };
    assert_eventually!(
        logged().is_some(),
        Duration::from_secs(10),
        "the request's access line:\n{}",
        topology.access_log("lb-01", "lb")
    );
    let line = logged().unwrap();
    assert_eq!(line["path"], "/echo?q=1", "{line}");
    assert_eq!(line["user_agent"], "agent/1.0 \"quoted\"", "{line}");
    assert_eq!(line["referer"], "https://ref.example/", "{line}");
}

/// Everything the lb answered on one connection to `bytes`, as text.
fn raw_text(lb: std::net::SocketAddr, bytes: &[u8]) -> String {
    String::from_utf8_lossy(&http::raw(lb, bytes, Duration::from_secs(10)).unwrap()).into_owned()
}

#[test]
fn http1_bodies_pipelining_and_keep_alive() {
    use std::io::{Read, Write};
    let (topology, backends) = lb_over_backends("lb-http1", 36, 1, &toml(36, 1, ""));
    let lb = topology.lb();

    // Three pipelined requests in one write: three answers in order, then the close asked for.
    let answers = raw_text(
        lb,
        b"GET /echo?1 HTTP/1.1\r\nHost: a\r\n\r\nHEAD /bytes?n=1000 HTTP/1.1\r\nHost: a\r\n\r\nGET /bytes?n=5 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(answers.matches("HTTP/1.1 200 OK").count(), 3, "{answers}");
    assert!(
        answers.contains("content-length: 1000\r\n"),
        "HEAD keeps the length: {answers}"
    );
    assert!(
        answers.ends_with("Connection: close\r\n\r\n01234"),
        "{answers}"
    );

    // Request bodies: chunked (passed on chunked) and a large one with a length.
    let chunked = raw_text(
        lb,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    let seen = http::parse(chunked.as_bytes(), false).unwrap().json();
    assert_eq!(seen["body"], "hello world");
    assert_eq!(seen["headers"]["transfer-encoding"], "chunked");
    let big = webstack_testkit::backend::pattern(300_000);
    let r = http::request(lb, "PUT", "/echo", &[], &big).unwrap();
    assert_eq!(r.json()["body_len"], 300_000);
    assert_eq!(r.json()["body"].as_str().unwrap().as_bytes(), &big[..]);

    // Responses: a large one with a length, a chunked one (kept chunked for HTTP/1.1, unwrapped
    // for HTTP/1.0), all intact.
    let r = get(lb, "/bytes?n=1048576", &[]).unwrap();
    assert_eq!(r.body, webstack_testkit::backend::pattern(1_048_576));
    let r = get(lb, "/chunked?n=25000", &[]).unwrap();
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.body, webstack_testkit::backend::pattern(25_000));
    let old = raw_text(lb, b"GET /chunked?n=2500 HTTP/1.0\r\n\r\n");
    let (head, body) = old.split_once("\r\n\r\n").unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"), "{head}");
    assert_eq!(body.as_bytes(), webstack_testkit::backend::pattern(2500));

    // HTTP/1.0 without Host: the server gets its own address as Host; keep-alive on request.
    let old = raw_text(lb, b"GET /echo HTTP/1.0\r\n\r\n");
    let seen = http::parse(old.as_bytes(), false).unwrap().json();
    assert_eq!(seen["headers"]["host"], backends[0].addr.to_string());
    let kept = raw_text(
        lb,
        b"GET /bytes?n=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /bytes?n=2 HTTP/1.0\r\n\r\n",
    );
    assert_eq!(kept.matches("200 OK").count(), 2, "{kept}");
    assert!(kept.contains("Connection: keep-alive"), "{kept}");

    // Expect: 100-continue is answered by the lb, then the body goes through.
    let mut stream = std::net::TcpStream::connect(lb).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 4\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut interim = [0u8; 25];
    stream.read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"ping").unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    let r = http::parse(&rest, false).unwrap();
    assert_eq!(r.json()["body"], "ping");
    assert!(r.json()["headers"].get("expect").is_none());
}

#[test]
fn http1_ambiguous_or_broken_requests_are_refused() {
    let (topology, backends) = lb_over_backends("lb-smuggle", 37, 1, &toml(37, 1, ""));
    let lb = topology.lb();
    let status = |bytes: &[u8]| {
        let answer = raw_text(lb, bytes);
        (
            answer.split(' ').nth(1).unwrap_or("").to_string(),
            answer
                .lines()
                .filter(|l| l.starts_with("HTTP/1.1 "))
                .count(),
        )
    };
    let before = backends[0].hits();
    for (request, expected) in [
        // CL.TE smuggling: refused, and the smuggled "G" never becomes a second request.
        (
            &b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"[..],
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            "400",
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            "501",
        ),
        (b"GET /echo HTTP/1.1\r\n\r\n", "400"),
        (b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "400"),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n", "405"),
    ] {
        let (got, responses) = status(request);
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(request));
        assert_eq!(responses, 1, "one answer, then the connection closes: {}", String::from_utf8_lossy(request));
    }
    assert_eq!(
        backends[0].hits(),
        before,
        "none of them reached the server"
    );

    // A chunked body that breaks mid-way: 400 and the connection closes.
    let answer = raw_text(
        lb,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("invalid chunk size"), "{answer}");

    // The lb still serves normally afterwards.
    assert_eq!(get(lb, "/echo", &[]).unwrap().status, 200);
}

/// A server that speaks broken HTTP on purpose, on its own thread: `/healthz` is fine,
/// `/garbage` answers something that is not HTTP, `/short` closes in the middle of its body,
/// `/nothing` closes without a word.
fn start_broken_server(addr: std::net::SocketAddr) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    let text = String::from_utf8_lossy(&head).into_owned();
                    head.clear();
                    let answer: &[u8] = if text.contains("/healthz") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                    } else if text.contains("/garbage") {
                        b"NOT HTTP AT ALL\r\n\r\n"
                    } else if text.contains("/short") {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part"
                    } else {
                        b""
                    };
                    if stream.write_all(answer).is_err() || !text.contains("/healthz") {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn http1_broken_servers_get_502_or_a_cut_connection() {
    start_broken_server(([127, 0, 38, 11], 8000).into());
    let mut topology = Topology::write(EXE, "lb-broken", 38, &toml(38, 1, ""));
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);
    let lb = topology.lb();

    let r = get(lb, "/garbage", &[]).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(
        metric(&topology, "webstack_lb_errors_total{kind=\"bad_response\"}"),
        1.0
    );

    let r = get(lb, "/nothing", &[]).unwrap();
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(metric(&topology, "webstack_lb_errors_total{kind=\"no_response\"}") >= 1.0);

    // Headers already went out: the client sees a body shorter than announced, then the close.
    let cut = raw_text(lb, b"GET /short HTTP/1.1\r\nHost: a\r\n\r\n");
    assert!(cut.starts_with("HTTP/1.1 200 OK"), "{cut}");
    assert!(cut.ends_with("\r\n\r\nonly-part"), "{cut}");

    assert_eq!(get(lb, "/healthz", &[]).unwrap().status, 200);
}

/// Body sizes for the early-answer loops: under the lb's 1 MiB discard bound, over it, far over.
const EARLY_SIZES: [usize; 3] = [200 * 1024, 5 * 1024 * 1024, 50 * 1024 * 1024];

#[test]
fn an_answer_that_comes_before_the_body_is_sent_reaches_the_client() {
    use webstack_testkit::raw::start_early_answer;
    let server = start_early_answer(([127, 0, 39, 11], 8000).into());
    let mut topology = Topology::write(EXE, "lb-early", 39, &toml(39, 1, ""));
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);

    // HTTP/1: the server answers 413 after the head and closes with the body unread.
    for run in 0..100 {
        let len = EARLY_SIZES[run % EARLY_SIZES.len()];
        let r = http::post_streaming(topology.lb(), "/api/posts", len)
            .unwrap_or_else(|e| panic!("run {run}, {len} bytes: {e}"));
        assert_eq!(r.status, 413, "run {run}, {len} bytes: {}", r.text());
        assert_eq!(r.text(), "the body is too large\n");
    }
    assert_eq!(server.answered(), 100);
    assert_eq!(
        metric(&topology, "webstack_lb_errors_total"),
        0.0,
        "no 502 was counted"
    );

    // HTTP/2 (TLS, ALPN h2): the same answers.
    let body = topology.dir.path().join("body");
    let ca = topology.state_dir().join("tls/ca.pem");
    for (run, len) in EARLY_SIZES.iter().cycle().take(30).enumerate() {
        std::fs::write(&body, vec![b'x'; *len]).unwrap();
        let out = std::process::Command::new("curl")
            .args(["-sS", "--http2", "--max-time", "30", "--cacert"])
            .arg(&ca)
            .args(["--resolve", "www.foobar.com:8443:127.0.39.10"])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg("https://www.foobar.com:8443/api/posts")
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text,
            "413 2",
            "run {run}, {len} bytes: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(metric(&topology, "webstack_lb_errors_total"), 0.0);
}

#[test]
fn an_early_answer_to_a_short_body_keeps_the_connection() {
    use std::io::{Read, Write};
    use webstack_testkit::raw::start_early_answer;
    let _server = start_early_answer(([127, 0, 40, 11], 8000).into());
    let mut topology = Topology::write(EXE, "lb-early-keep", 40, &toml(40, 1, ""));
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);

    // 100 KB announced and sent: the lb answers 413 with keep-alive, reads and drops the rest
    // of the body, and the connection serves the next request.
    let mut stream = std::net::TcpStream::connect(topology.lb()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let len = 100 * 1024;
    let mut request =
        format!("POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'x', len));
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    stream.write_all(&request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\r\n\r\nthe body is too large\nHTTP/1.1 200 OK"),
        "the second request was answered on the same connection: {answer}"
    );

    // A chunked body of unknown length: the answer closes the connection.
    let chunked = raw_text(
        topology.lb(),
        b"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    assert!(chunked.starts_with("HTTP/1.1 413"), "{chunked}");
    assert!(chunked.contains("Connection: close\r\n"), "{chunked}");
}

#[test]
fn websockets_are_relayed_after_the_upgrade() {
    use webstack_testkit::raw::start_websocket_echo;
    let server = start_websocket_echo(([127, 0, 30, 11], 8000).into());
    let mut topology = Topology::write(EXE, "lb-websocket", 30, &toml(30, 1, ""));
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);

    let stream = std::net::TcpStream::connect(topology.lb()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let url = format!("ws://{}/chat", topology.lb());
    let (mut socket, response) =
        tungstenite::client(url.as_str(), stream).expect("the upgrade goes through the lb");
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-request-id"));
    for text in ["hello", "world", &"x".repeat(100_000)] {
        socket.send(tungstenite::Message::text(text)).unwrap();
        let echo = socket.read().unwrap();
        assert_eq!(echo.into_text().unwrap().as_str(), text);
    }
    socket.close(None).unwrap();
    assert_eq!(server.answered(), 1);

    // The lb still serves plain requests afterwards.
    assert_eq!(get(topology.lb(), "/healthz", &[]).unwrap().status, 200);
}

#[test]
fn what_reaches_the_server_is_canonical_whatever_the_client_wrote() {
    use webstack_testkit::raw::start_recorder;
    let recorder = start_recorder(([127, 0, 29, 11], 8000).into());
    let config = toml(29, 1, "").replace("redirect_http = false", "redirect_http = true");
    let mut topology = Topology::write(EXE, "lb-canonical", 29, &config);
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);
    let lb = topology.lb();

    // Chunk extensions and trailers never reach the server; sizes are ours.
    let answer = raw_text(
        lb,
        b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5;ext=\"x\"\r\nhello\r\n000006 \t;e\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A size line two parsers could read differently is refused before anything is sent.
    let refused = raw_text(
        lb,
        b"POST /d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    // Absolute form: the path from the parsed URI, even when the host also appears in the
    // scheme; `OPTIONS *` is forwarded as it is, never redirected.
    for (request, line) in [
        (
            &b"GET http://t/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
            "GET / HTTP/1.1\r\nHost: t\r\n",
        ),
        (
            b"GET http://h/p?http://h/q HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            "GET /p?http://h/q HTTP/1.1\r\nHost: h\r\n",
        ),
        (
            b"OPTIONS * HTTP/1.1\r\nHost: www.foobar.com:8080\r\nConnection: close\r\n\r\n",
            "OPTIONS * HTTP/1.1\r\n",
        ),
    ] {
        let answer = raw_text(lb, request);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            recorder.texts().iter().any(|r| r.starts_with(line)),
            "{line:?} in {:?}",
            recorder.texts()
        );
    }
    let texts = recorder.texts();
    let chunked = texts.iter().find(|r| r.starts_with("POST /c ")).unwrap();
    assert!(
        chunked.ends_with("\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "canonical chunks, no extension, no trailer: {chunked:?}"
    );
    assert!(
        !texts.iter().any(|r| r.starts_with("POST /d ")),
        "{texts:?}"
    );

    // Every X-Forwarded-For line is merged, the client's address appended: HTTP/1 here, and
    // HTTP/2 below, by the same code.
    let answer = raw_text(
        lb,
        b"GET /xff HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 192.0.2.2, 192.0.2.3\r\nConnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let ca = topology.state_dir().join("tls/ca.pem");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args(["--resolve", "www.foobar.com:8443:127.0.29.10"])
        .args([
            "-H",
            "X-Forwarded-For: 192.0.2.4",
            "-H",
            "X-Forwarded-For: 192.0.2.5",
        ])
        .arg("https://www.foobar.com:8443/xff2")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "recorded\n");
    let texts = recorder.texts();
    let h1 = texts.iter().find(|r| r.starts_with("GET /xff ")).unwrap();
    assert!(
        h1.contains("X-Forwarded-For: 192.0.2.1, 192.0.2.2, 192.0.2.3, 127.0.0.1\r\n"),
        "{h1}"
    );
    let h2 = texts.iter().find(|r| r.starts_with("GET /xff2 ")).unwrap();
    assert!(
        h2.contains("X-Forwarded-For: 192.0.2.4, 192.0.2.5, 127.0.0.1\r\n")
            && h2.contains("X-Forwarded-Proto: https\r\n")
            && h2.contains("Host: www.foobar.com:8443\r\n"),
        "{h2}"
    );
}

#[test]
fn local_answers_carry_a_date() {
    let (topology, _backends) = lb_over_backends("lb-date", 28, 1, &toml(28, 1, ""));
    let refused = raw_text(topology.lb(), b"NOT HTTP\r\n\r\n");
    let date = refused
        .lines()
        .find_map(|l| l.strip_prefix("Date: "))
        .unwrap_or_else(|| panic!("no Date: {refused}"));
    assert!(date.ends_with(" GMT") && date.len() == 29, "{date}");
}

#[test]
fn connections_over_maxconn_wait_in_the_backlog_until_one_closes() {
    use std::io::{Read, Write};
    let (topology, _backends) = lb_over_backends("lb-maxconn", 44, 1, &toml(44, 1, "maxconn = 2"));
    let lb = topology.lb();
    let request = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n";
    let answered = |stream: &mut std::net::TcpStream| {
        let mut buf = [0u8; 1024];
        matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
    };
    // Two keep-alive connections take both slots.
    let mut held: Vec<_> = (0..2)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(lb).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            stream.write_all(request).unwrap();
            assert!(answered(&mut stream));
            stream
        })
        .collect();
    // A third connects (the kernel's backlog takes it) but is not served while both are open.
    let mut third = std::net::TcpStream::connect(lb).unwrap();
    third.write_all(request).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(third.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "served while the limit was reached"
    );
    // One closes: the waiting connection is accepted and answered, never refused.
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(answered(&mut third), "served once a slot was free");
}

#[test]
fn a_body_no_server_read_is_never_taken_for_the_next_request() {
    use std::io::{Read, Write};
    let (topology, backends) = lb_over_backends("lb-unread", 45, 1, &toml(45, 1, ""));
    backends[0]
        .unhealthy
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eventually!(
        get(topology.lb(), "/", &[]).is_ok_and(|r| r.status == 503),
        Duration::from_secs(10),
        "no server left"
    );
    // A body that is itself a request: answered 503, the body read and dropped, and the next
    // request on the connection is the one after the body.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut stream = std::net::TcpStream::connect(topology.lb()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{smuggled}GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        smuggled.len()
    )
    .unwrap();
    let mut answers = String::new();
    let _ = stream.read_to_string(&mut answers);
    assert_eq!(answers.matches("HTTP/1.1 503").count(), 2, "{answers}");
    // The access log is written each second: the line for /next is there once it is.
    assert_eventually!(
        topology
            .access_log("lb-01", "lb")
            .contains("\"path\":\"/next\""),
        Duration::from_secs(10),
        "/next in the access log"
    );
    let log = topology.access_log("lb-01", "lb");
    assert!(!log.contains("/smuggled"), "{log}");

    // A long body: the answer closes the connection, and is not lost to a reset while the
    // client is still sending.
    let r = http::post_streaming(topology.lb(), "/x", 5 * 1024 * 1024).unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("connection"), Some("close"));
}

#[test]
fn an_answer_of_ours_to_an_expect_continue_request_closes_without_waiting_for_the_body() {
    let config = toml(48, 1, "").replace("redirect_http = false", "redirect_http = true");
    let (topology, _backends) = lb_over_backends("lb-expect", 48, 1, &config);
    // The client waits for `100 Continue` before it sends the body; the lb answers 308 first:
    // no 100, and the connection closes instead of waiting for a body that may never come.
    let answer = raw_text(
        topology.lb(),
        b"POST /p HTTP/1.1\r\nHost: www.foobar.com:8080\r\nExpect: 100-continue\r\nContent-Length: 1000\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 308"), "{answer}");
    assert!(!answer.contains("100 Continue"), "{answer}");
    assert!(answer.contains("Connection: close\r\n"), "{answer}");
}

#[test]
fn a_redirect_before_a_long_upload_reaches_the_client() {
    let config = toml(46, 1, "").replace("redirect_http = false", "redirect_http = true");
    let (topology, _backends) = lb_over_backends("lb-redirect-upload", 46, 1, &config);
    for len in [100 * 1024, 5 * 1024 * 1024] {
        let r = http::post_streaming_as(topology.lb(), "www.foobar.com:8080", "/p", len).unwrap();
        assert_eq!(r.status, 308, "{len} bytes: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some("https://www.foobar.com:8443/p"),
            "{len} bytes"
        );
    }
}

#[test]
fn a_server_that_answers_while_it_reads_gets_the_whole_body() {
    let (topology, _backends) = lb_over_backends("lb-stream-echo", 47, 1, &toml(47, 1, ""));
    // The backend's 200 starts before the body has all arrived: the lb keeps sending it (only
    // an error answer stops the upload), and the echo comes back whole.
    let body = webstack_testkit::backend::pattern(1024 * 1024);
    let r = http::request(topology.lb(), "POST", "/stream-echo", &[], &body).unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.body == body,
        "{} bytes back of {}",
        r.body.len(),
        body.len()
    );

    // The same over HTTP/2.
    let file = topology.dir.path().join("body");
    std::fs::write(&file, &body).unwrap();
    let ca = topology.state_dir().join("tls/ca.pem");
    let out = std::process::Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "30", "--cacert"])
        .arg(&ca)
        .args(["--resolve", "www.foobar.com:8443:127.0.47.10"])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg("https://www.foobar.com:8443/stream-echo")
        .output()
        .unwrap();
    assert!(
        out.stdout == body,
        "{} bytes back over HTTP/2: {}",
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The lb's `GET /servers` entry of `name`.
fn server_view(topology: &Topology, name: &str) -> serde_json::Value {
    get(topology.lb_admin(), "/servers", &[])
        .unwrap()
        .json()
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap()
}

#[test]
fn a_server_at_its_maxconn_queues_requests_until_a_slot_frees_or_the_queue_times_out() {
    let config = toml(68, 1, "server_maxconn = 1\nqueue_timeout = \"3s\"");
    let (topology, backends) = lb_over_backends("lb-queue", 68, 1, &config);
    let lb = topology.lb();
    assert_eq!(server_view(&topology, "web-01")["maxconn"], 1);

    // One slow request holds the only slot; a second waits in the queue, then is served.
    let slow = std::thread::spawn(move || get(lb, "/slow?ms=2000", &[]).unwrap().status);
    assert_eventually!(
        server_view(&topology, "web-01")["in_flight"] == 1,
        Duration::from_secs(10),
        "the slow request holds the slot"
    );
    let queued = std::thread::spawn(move || get(lb, "/fast", &[]).unwrap().status);
    assert_eventually!(
        get(topology.lb_admin(), "/metrics", &[])
            .unwrap()
            .text()
            .contains("webstack_lb_queue_length 1"),
        Duration::from_secs(10),
        "the second request waits in the queue"
    );
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(queued.join().unwrap(), 200, "served once the slot freed");
    assert_eq!(backends[0].hits(), 2);

    // A slot held longer than the queue timeout: the waiting request gets 503 + Retry-After.
    let slow = std::thread::spawn(move || get(lb, "/slow?ms=6000", &[]).unwrap().status);
    assert_eventually!(
        server_view(&topology, "web-01")["in_flight"] == 1,
        Duration::from_secs(10),
        "the slow request holds the slot"
    );
    let refused = get(lb, "/fast", &[]).unwrap();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.text().contains("connection limit"),
        "{}",
        refused.text()
    );
    assert_eq!(slow.join().unwrap(), 200);
    assert!(metric(&topology, "webstack_lb_queue_timeouts_total") >= 1.0);
    assert!(metric(&topology, "webstack_lb_queue_wait_seconds_count") >= 1.0);
}
