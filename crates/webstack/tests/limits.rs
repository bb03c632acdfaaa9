//! The lb's per-client limits with real sockets and a real topology: a client over its request
//! rate gets 429 with `Retry-After` while another is served; a client over its connection share
//! is refused while others are served; SIGHUP puts new limits in force (a broken file changes
//! nothing); a trickling request body is cut with 408 (`slowhttptest -B` included) while normal
//! requests go on; a body over the size bound gets 413; trusted proxies name the client by PROXY
//! protocol and `X-Forwarded-For`, untrusted ones cannot.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use webstack_testkit::http::{self, get};
use webstack_testkit::topology::{TEST_CLIENT_LIMITS, output_within, toml};
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// The second client's address: the first is 127.0.0.1, where loopback connections come from.
const OTHER_CLIENT: [u8; 4] = [127, 0, 0, 2];

/// A topology whose lb runs `limits` (a `[lb.limits]` body) instead of the test suite's
/// generous ones; empty: the defaults.
fn topology_with(name: &str, net: u8, limits: &str) -> Topology {
    let text = toml(net, 1, "").replace(TEST_CLIENT_LIMITS, &format!("\n[lb.limits]\n{limits}\n"));
    Topology::start(EXE, name, net, &text)
}

/// A connection to `addr` from `source` (a second client on the same machine).
fn connect_from(source: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(IpAddr::from(source), 0).into())
        .expect("bind the second client's address");
    socket
        .connect_timeout(&addr.into(), Duration::from_secs(5))
        .expect("connect");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One keep-alive `GET path` on `stream`; the status, or None when the connection gave no
/// answer (closed or reset).
fn get_on(stream: &mut TcpStream, path: &str) -> Option<http::Response> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_response(stream)
}

/// Reads one response with a Content-Length body.
fn read_response(stream: &mut TcpStream) -> Option<http::Response> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if raw.len() >= end + 4 + length {
                return http::parse(&raw[..end + 4 + length], false).ok();
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn metric(topology: &Topology, series: &str) -> f64 {
    let text = get(topology.lb_admin(), "/metrics", &[]).unwrap().text();
    text.lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_burst_from_one_client_gets_429_with_retry_after_while_another_is_served() {
    // The defaults: 100 requests a second, 200 at once.
    let topology = topology_with("limits-rate", 61, "");
    let lb = topology.lb();
    let done = Arc::new(AtomicBool::new(false));
    // The second client, at 25 requests a second, all through the first one's burst.
    let others = Arc::new(AtomicUsize::new(0));
    let other = {
        let (done, others) = (done.clone(), others.clone());
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            let mut stream = connect_from(OTHER_CLIENT, lb);
            while !done.load(Ordering::Relaxed) {
                statuses.push(get_on(&mut stream, "/static/style.css").map(|r| r.status));
                others.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(40));
            }
            statuses
        })
    };
    // The first client: eight connections as fast as they go, until 300 answers were 429 and
    // the second client had 5 answers meanwhile (bounded: 60 s).
    let (ok, limited) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let retry_after = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let flood: Vec<_> = (0..8)
        .map(|_| {
            let (ok, limited, others, retry_after) = (
                ok.clone(),
                limited.clone(),
                others.clone(),
                retry_after.clone(),
            );
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(lb).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(10)))
                    .unwrap();
                while (limited.load(Ordering::Relaxed) < 300 || others.load(Ordering::Relaxed) < 5)
                    && Instant::now() < deadline
                {
                    let response = get_on(&mut stream, "/static/style.css").expect("an answer");
                    match response.status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            retry_after
                                .lock()
                                .unwrap()
                                .push(response.header("retry-after").map(str::to_owned));
                            assert!(response.text().contains("429 Too Many Requests"));
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("unexpected status {other}"),
                    };
                }
            })
        })
        .collect();
    for thread in flood {
        thread.join().expect("the first client's thread");
    }
    done.store(true, Ordering::Relaxed);
    let other = other.join().expect("the second client");
    let (ok, limited) = (ok.load(Ordering::Relaxed), limited.load(Ordering::Relaxed));
    assert!(
        limited >= 300,
        "the first client was limited {limited} times ({ok} served)"
    );
    assert!(ok >= 200, "the whole burst (200) passes first: {ok} served");
    for value in retry_after.lock().unwrap().iter() {
        let seconds: u64 = value
            .as_deref()
            .and_then(|v| v.parse().ok())
            .expect("Retry-After in seconds");
        assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
    }
    assert!(
        other.len() >= 2,
        "the second client ran during the burst: {other:?}"
    );
    assert!(
        other.iter().all(|s| *s == Some(200)),
        "the second client is served throughout: {other:?}"
    );
    assert!(metric(&topology, "webstack_lb_limited_total{limit=\"rate\"}") >= limited as f64);
}

/// Writes the topology file with another `[lb.limits]` body and sends SIGHUP to the lb.
fn reload_with(topology: &Topology, net: u8, limits: &str) {
    let text = toml(net, 1, "").replace(TEST_CLIENT_LIMITS, &format!("\n[lb.limits]\n{limits}\n"));
    std::fs::write(&topology.config_path, text).unwrap();
    hangup_lb(topology);
}

fn hangup_lb(topology: &Topology) {
    let pid = topology.unit("lb-01", "lb")["pid"]
        .as_u64()
        .expect("the lb's pid") as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP to the lb");
}

/// Opens connections from the first client until one is refused (at most `limit` + 1); each
/// admitted one has answered a request. Returns the admitted ones.
fn fill_share(lb: SocketAddr, expected: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..expected {
        let mut stream = TcpStream::connect(lb).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let answer = get_on(&mut stream, "/static/style.css");
        assert_eq!(
            answer.map(|r| r.status),
            Some(200),
            "connection {} of the share",
            held.len() + 1
        );
        held.push(stream);
    }
    held
}

/// One more connection from the first client gets no answer: reset at once.
fn assert_refused(lb: SocketAddr) {
    let mut stream = TcpStream::connect(lb).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    assert!(
        get_on(&mut stream, "/static/style.css").is_none(),
        "a connection over the share was served"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "refused, not left hanging"
    );
}

#[test]
fn a_client_over_its_connection_share_is_refused_others_served_and_sighup_reloads() {
    const NET: u8 = 62;
    let topology = topology_with(
        "limits-connections",
        NET,
        "rate = 1000000\nburst = 1000000\nconnections_per_client = 5",
    );
    let lb = topology.lb();
    let mut held = fill_share(lb, 5);
    assert_refused(lb);
    // Another client is served, and the first one's held connections still are.
    let mut other = connect_from(OTHER_CLIENT, lb);
    assert_eq!(
        get_on(&mut other, "/static/style.css").map(|r| r.status),
        Some(200)
    );
    assert_eq!(
        get_on(&mut held[0], "/static/style.css").map(|r| r.status),
        Some(200)
    );
    // One closed: room for one more.
    held.pop();
    assert_eventually!(
        {
            let mut stream = TcpStream::connect(lb).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            get_on(&mut stream, "/static/style.css").is_some_and(|r| r.status == 200) && {
                held.push(stream);
                true
            }
        },
        Duration::from_secs(10),
        "a closed connection frees its place"
    );
    assert!(
        metric(
            &topology,
            "webstack_lb_limited_total{limit=\"connections\"}"
        ) >= 1.0
    );

    // SIGHUP: a share of 8 is in force, for the connections already open too.
    reload_with(
        &topology,
        NET,
        "rate = 1000000\nburst = 1000000\nconnections_per_client = 8",
    );
    assert_eventually!(
        topology.log("lb-01", "lb").contains("limits reloaded"),
        Duration::from_secs(10),
        "the lb says it reloaded"
    );
    held.extend(fill_share(lb, 3));
    assert_refused(lb);

    // A file that does not load changes nothing, and the lb goes on.
    std::fs::write(&topology.config_path, "[lb.limits]\nrate = \"fast\"\n").unwrap();
    hangup_lb(&topology);
    assert_eventually!(
        topology.log("lb-01", "lb").contains("limits unchanged"),
        Duration::from_secs(10),
        "the lb says why it kept its limits"
    );
    assert_refused(lb);
    assert_eq!(
        get_on(&mut held[0], "/static/style.css").map(|r| r.status),
        Some(200)
    );
    // A valid file again, for the stop.
    std::fs::write(&topology.config_path, toml(NET, 1, "")).unwrap();
}

/// A POST whose body comes 10 bytes every 300 ms: the answer it gets, and after how long.
fn trickle(lb: SocketAddr) -> (Option<http::Response>, Duration) {
    let mut stream = TcpStream::connect(lb).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    stream
        .write_all(b"POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4096\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(30) {
        if stream.write_all(b"text=xxxx&").is_err() {
            // Closed by the lb: what it sent is in the receive buffer.
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if raw.windows(4).any(|w| w == b"\r\n\r\n") && http::parse(&raw, false).is_ok() {
            break;
        }
    }
    (http::parse(&raw, false).ok(), started.elapsed())
}

#[test]
fn slow_bodies_are_cut_with_408_large_ones_refused_with_413_and_others_served() {
    const NET: u8 = 63;
    let topology = topology_with(
        "limits-body",
        NET,
        "rate = 1000000\nburst = 1000000\nmin_body_rate = 500\nbody_grace = \"2s\"\nmax_body = \"16KiB\"",
    );
    let lb = topology.lb();

    // One trickling body: 10 bytes every 300 ms is 33 B/s against a floor of 500 B/s.
    let (answer, took) = trickle(lb);
    let answer = answer.expect("an answer to the trickling body");
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(answer.text().contains("too slowly"), "{}", answer.text());
    assert!(
        took < Duration::from_secs(20),
        "cut after the grace, not at the idle timeout: {took:?}"
    );

    // slowhttptest -B: 60 connections, each sending 10 bytes a second, for 12 s, while a
    // second client keeps being served.
    let dir = webstack_testkit::TempDir::new("limits-slowhttptest");
    let done = Arc::new(AtomicBool::new(false));
    let other = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let mut stream = connect_from(OTHER_CLIENT, lb);
                statuses.push(get_on(&mut stream, "/static/style.css").map(|r| r.status));
                std::thread::sleep(Duration::from_millis(100));
            }
            statuses
        })
    };
    let prefix = dir.path().join("slow");
    let out = output_within(
        Command::new("slowhttptest")
            .args([
                "-B", "-c", "60", "-r", "60", "-i", "1", "-l", "12", "-s", "4096", "-x", "10",
                "-p", "3", "-g", "-o",
            ])
            .arg(&prefix)
            .arg("-u")
            .arg(format!("http://{lb}/posts")),
        Duration::from_secs(60),
    );
    done.store(true, Ordering::Relaxed);
    let other = other.join().expect("the second client");
    assert!(
        out.status.success(),
        "slowhttptest: {}",
        webstack_testkit::topology::text(&out)
    );
    // The statistics: seconds, closed, pending, connected, service available, one line a second.
    let csv =
        std::fs::read_to_string(prefix.with_extension("csv")).expect("slowhttptest's statistics");
    let rows: Vec<Vec<u64>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .filter(|r: &Vec<u64>| r.len() >= 4)
        .collect();
    let last = rows.last().expect("statistics rows");
    assert!(
        last[1] >= 50,
        "the slow connections were closed by the lb: {csv}"
    );
    // slowhttptest ends early once the server closed every connection (else at -l 12 s).
    let said = webstack_testkit::topology::text(&out);
    assert!(said.contains("No open connections left"), "{said}\n{csv}");
    assert!(
        other.len() >= 10 && other.iter().all(|s| *s == Some(200)),
        "normal requests served: {other:?}"
    );
    assert!(metric(&topology, "webstack_lb_limited_total{limit=\"body_rate\"}") >= 50.0);

    // A declared length over the bound (16 KiB; the app's own is 64 KiB): 413 before any
    // server sees it.
    let response = http::request(lb, "POST", "/posts", &[], &vec![b'x'; 20 * 1024]).unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response.text().contains("at most 16384 bytes"),
        "{}",
        response.text()
    );
    // A chunked body that grows over it: 413 once it does, from the lb (long before the app's
    // bound: what came with the head is at most 16 KiB).
    let mut chunked = b"POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for _ in 0..40 {
        chunked.extend_from_slice(b"1000\r\n");
        chunked.extend(std::iter::repeat_n(b'y', 4096));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let raw = http::raw(lb, &chunked, Duration::from_secs(10)).unwrap();
    let response = http::parse(&raw, false).unwrap();
    assert_eq!(response.status, 413, "{}", response.text());
    assert!(
        response.text().contains("larger than this site accepts"),
        "{}",
        response.text()
    );
    // A body at a normal pace goes through to the app (which answers it, whatever it says).
    let response = http::request(
        lb,
        "POST",
        "/posts",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"title=a&body=b",
    )
    .unwrap();
    assert!(
        ![408, 413, 429].contains(&response.status),
        "{}",
        response.status
    );
}

/// A PROXY protocol peer's address (the second client's is 127.0.0.2).
const PROXY_PEER: [u8; 4] = [127, 0, 0, 3];

/// `GET /static/style.css` from the PROXY protocol peer, `header` first: the response, or None
/// when the connection gave none.
fn get_through_proxy_protocol(lb: SocketAddr, header: &str) -> Option<http::Response> {
    let mut stream = connect_from(PROXY_PEER, lb);
    let request = format!("{header}GET /static/style.css HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_response(&mut stream)
}

/// The `client` of the lb's access log line for the request `id`.
fn logged_client(topology: &Topology, id: &str) -> String {
    let needle = format!("\"request_id\":\"{id}\"");
    let mut found;
    assert_eventually!(
        {
            found = topology
                .access_log("lb-01", "lb")
                .lines()
                .find(|l| l.contains(&needle))
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v["client"].as_str().map(str::to_owned))
                .unwrap_or_default();
            !found.is_empty()
        },
        Duration::from_secs(10),
        "the access log line of request {id}"
    );
    found
}

#[test]
fn trusted_proxies_name_the_client_and_nobody_else_can() {
    const NET: u8 = 64;
    // 127.0.0.1 is trusted for X-Forwarded-For, 127.0.0.3 speaks the PROXY protocol; each client
    // may send 3 requests at once, then 1 a second.
    let topology = topology_with(
        "limits-proxies",
        NET,
        "rate = 1\nburst = 3\ntrusted_proxies = [\"127.0.0.1/32\"]\nproxy_protocol = [\"127.0.0.3\"]",
    );
    let lb = topology.lb();
    let as_client = |client: &str| {
        let forwarded = format!("198.51.100.99, {client}");
        get(lb, "/static/style.css", &[("X-Forwarded-For", &forwarded)]).unwrap()
    };
    let id = |r: &http::Response| r.header("x-request-id").unwrap().to_owned();
    // X-Forwarded-For from the trusted proxy: the rightmost untrusted address is the client,
    // in the access log and for the limits.
    let first = as_client("203.0.113.1");
    assert_eq!(first.status, 200);
    assert_eq!(logged_client(&topology, &id(&first)), "203.0.113.1");
    let mut statuses = vec![first.status];
    while !statuses.contains(&429) && statuses.len() < 1000 {
        statuses.push(as_client("203.0.113.1").status);
    }
    assert!(
        statuses.contains(&429),
        "203.0.113.1 is limited: {statuses:?}"
    );
    // Another client behind the same proxy has a full bucket; so has the proxy itself.
    assert_eq!(as_client("203.0.113.2").status, 200);
    let own = get(lb, "/static/style.css", &[]).unwrap();
    assert_eq!(own.status, 200);
    assert_eq!(logged_client(&topology, &id(&own)), "127.0.0.1");

    // The PROXY protocol peer names its client.
    let proxied = get_through_proxy_protocol(lb, "PROXY TCP4 203.0.113.3 127.0.0.1 40000 80\r\n")
        .expect("an answer through the PROXY protocol");
    assert_eq!(proxied.status, 200);
    assert_eq!(logged_client(&topology, &id(&proxied)), "203.0.113.3");
    // It must: without a header, or with a broken one, its connection is closed unanswered.
    assert!(get_through_proxy_protocol(lb, "").is_none());
    let broken = "PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n";
    assert!(get_through_proxy_protocol(lb, broken).is_none());
    assert!(
        metric(
            &topology,
            "webstack_lb_limited_total{limit=\"proxy_header\"}"
        ) >= 2.0
    );

    // An untrusted client cannot borrow an address: its X-Forwarded-For is only passed on...
    let mut stream = connect_from(OTHER_CLIENT, lb);
    let request = "GET /static/style.css HTTP/1.1\r\nHost: www.foobar.com\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let answer = read_response(&mut stream).expect("an answer");
    assert_eq!(answer.status, 200, "not 203.0.113.1's bucket");
    assert_eq!(logged_client(&topology, &id(&answer)), "127.0.0.2");
    // ...and a PROXY header from it (or from the X-Forwarded-For proxy) is a bad request.
    for source in [OTHER_CLIENT, [127, 0, 0, 1]] {
        let mut stream = connect_from(source, lb);
        stream
            .write_all(
                b"PROXY TCP4 203.0.113.4 127.0.0.1 40000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .unwrap();
        assert_eq!(read_response(&mut stream).map(|r| r.status), Some(400));
    }
}
