//! Traffic management with `webstack up` and the CLI: `webstack lb servers`, drain (new
//! requests move to the other server, a request in flight finishes, and the command waits for
//! it), ready, maint, weight; all under a loop of GETs and POSTs that must see no failure. And
//! the runtime API's refusals: no token, a wrong host.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use webstack_testkit::http::{self, get};
use webstack_testkit::topology::{output_within, text, toml_with_db};
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const NET: u8 = 65;

fn lb_cli(topology: &Topology, args: &[&str]) -> Output {
    let mut command = Command::new(EXE);
    command
        .arg("lb")
        .args(args)
        .arg("-c")
        .arg(&topology.config_path)
        .arg("--state-dir")
        .arg(topology.state_dir());
    output_within(&mut command, Duration::from_secs(120))
}

/// One request of the loop: when it started and ended, what it was, its status (or error) and the web host
/// that served it.
struct Outcome {
    started: Instant,
    at: Instant,
    what: &'static str,
    status: Result<u16, String>,
    served_by: Option<String>,
}

/// GETs and POSTs (new connection each) until stopped.
fn load(lb: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<Vec<Outcome>> {
    std::thread::spawn(move || {
        let mut outcomes = Vec::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let started = Instant::now();
            let (what, response) = if n % 3 == 0 {
                let body = format!("author=drain&body=during+a+drain+{n}");
                let headers = [("Content-Type", "application/x-www-form-urlencoded")];
                (
                    "POST /posts",
                    http::request(lb, "POST", "/posts", &headers, body.as_bytes()),
                )
            } else {
                ("GET /api/whoami", get(lb, "/api/whoami", &[]))
            };
            outcomes.push(Outcome {
                started,
                at: Instant::now(),
                what,
                served_by: response
                    .as_ref()
                    .ok()
                    .and_then(|r| r.header("x-served-by").map(str::to_owned)),
                status: response.map(|r| r.status),
            });
            std::thread::sleep(Duration::from_millis(5));
        }
        outcomes
    })
}

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter(|o| !matches!(o.status, Ok(200) | Ok(303)))
        .map(|o| format!("{}: {:?}", o.what, o.status))
        .collect()
}

/// Sends a POST head and the first half of its body, so the request is in flight on a server;
/// the rest is sent by `finish_slow_post`.
fn start_slow_post(lb: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(lb).unwrap();
    stream
        .write_all(b"POST /posts HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 26\r\n\r\nauthor=slow&b")
        .unwrap();
    stream
}

fn finish_slow_post(mut stream: TcpStream) -> u16 {
    stream.write_all(b"ody=in+flight").unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    http::parse(&raw, false).map_or(0, |r| r.status)
}

/// `GET /api/whoami` on a keep-alive connection: the web host that served it, or None when
/// the connection gave no answer.
fn keep_alive_get(stream: &mut TcpStream) -> Option<String> {
    stream
        .write_all(b"GET /api/whoami HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n")
        .ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())?;
            if raw.len() >= end + 4 + length {
                assert!(head.starts_with("http/1.1 200"), "{head}");
                return head
                    .lines()
                    .find_map(|l| l.strip_prefix("x-served-by:"))
                    .map(|v| v.trim().to_string());
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

/// Each lb's view through `GET /servers` on its admin port.
fn servers(topology: &Topology) -> serde_json::Value {
    get(topology.lb_admin(), "/servers", &[]).unwrap().json()
}

#[test]
fn drain_ready_maint_and_weight_move_traffic_without_a_failed_request() {
    // Round-robin, no slow start: the weight check below counts exact shares.
    let config = toml_with_db(NET, 2, "algorithm = \"roundrobin\"\nslowstart = \"0s\"");
    let topology = Topology::start(EXE, "traffic", NET, &config);
    topology.wait_servers_up(&["web-01", "web-02"]);
    let lb = topology.lb();

    let out = lb_cli(&topology, &["servers"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = text(&out);
    for line in [
        "lb-01:",
        "web-01     up    ready  weight 1",
        "web-02     up    ready  weight 1",
    ] {
        assert!(listed.contains(line), "{line:?} in {listed}");
    }

    // A request in flight on one server (found before the loop starts: then it is the only
    // one): drain that one under the loop. The command returns only once the request finished.
    let slow = start_slow_post(lb);
    let mut holder;
    assert_eventually!(
        {
            holder = servers(&topology)
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["in_flight"].as_u64() > Some(0))
                .and_then(|s| s["name"].as_str().map(str::to_owned))
                .unwrap_or_default();
            !holder.is_empty()
        },
        Duration::from_secs(10),
        "the slow POST is in flight on a server"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = load(lb, stop.clone());
    let other = if holder == "web-01" {
        "web-02"
    } else {
        "web-01"
    };
    let finisher = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(2));
        finish_slow_post(slow)
    });
    // A keep-alive client: its connection outlives the drain.
    let mut keep_alive = TcpStream::connect(lb).unwrap();
    keep_alive
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert!(keep_alive_get(&mut keep_alive).is_some());
    let drain_started = Instant::now();
    let out = lb_cli(&topology, &["drain", &holder]);
    let drained_at = Instant::now();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("lb-01: {holder} drain (was ready)")),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("drained: no request in flight"),
        "{}",
        text(&out)
    );
    assert!(
        drained_at - drain_started >= Duration::from_millis(500),
        "the drain waited for the request in flight"
    );
    let slow_status = finisher.join().unwrap();
    assert_eq!(slow_status, 303, "the request in flight finished");
    // The keep-alive client's next requests, on the same connection, go to the other server.
    for _ in 0..5 {
        let served_by = keep_alive_get(&mut keep_alive).expect("the connection stays open");
        assert_eq!(served_by, other);
    }
    // Every request after the drain goes to the other server.
    std::thread::sleep(Duration::from_secs(1));
    let metrics = get(topology.lb_admin(), "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains(&format!(
            "webstack_lb_server_admin_state{{server=\"{holder}\",state=\"drain\"}} 1"
        )),
        "{metrics}"
    );
    let status = text(&topology.cli(&["status"]));
    assert!(
        status.contains(&format!("servers: {holder} drain")),
        "{status}"
    );

    // Back in rotation: it gets requests again. (A change takes effect before its command
    // returns: each window below ends when the next command starts.)
    let ready_sent = Instant::now();
    let out = lb_cli(&topology, &["ready", &holder]);
    assert!(out.status.success(), "{}", text(&out));
    let ready_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));

    // Maintenance of the other one: everything to the first.
    let maint_sent = Instant::now();
    let out = lb_cli(&topology, &["maint", other]);
    assert!(out.status.success(), "{}", text(&out));
    let maint_at = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let ready_other_at = Instant::now();
    let out = lb_cli(&topology, &["ready", other]);
    assert!(out.status.success(), "{}", text(&out));

    stop.store(true, Ordering::Relaxed);
    let outcomes = loop_thread.join().unwrap();
    assert!(outcomes.len() > 50, "the loop ran: {}", outcomes.len());
    assert!(
        failures(&outcomes).is_empty(),
        "failed requests: {:?}",
        failures(&outcomes)
    );
    // Requests that started after `from` and ended before `to`.
    let served = |from: Instant, to: Instant| -> Vec<&str> {
        outcomes
            .iter()
            .filter(|o| o.started > from && o.at < to)
            .filter_map(|o| o.served_by.as_deref())
            .collect()
    };
    let while_drained = served(drained_at, ready_sent);
    assert!(
        !while_drained.is_empty() && while_drained.iter().all(|s| *s == other),
        "{while_drained:?}"
    );
    let while_ready = served(ready_at, maint_sent);
    assert!(
        while_ready.contains(&holder.as_str()),
        "back in rotation: {while_ready:?}"
    );
    let while_maint = served(maint_at, ready_other_at);
    assert!(
        !while_maint.is_empty() && while_maint.iter().all(|s| *s == holder),
        "{while_maint:?}"
    );

    // Weight: 3 to 1, exactly, with round-robin and nothing else running.
    let out = lb_cli(&topology, &["weight", "web-01", "3"]);
    assert!(
        out.status.success() && text(&out).contains("web-01 weight 3 (was 1)"),
        "{}",
        text(&out)
    );
    let mut counts = [0usize; 2];
    for _ in 0..400 {
        let response = get(lb, "/api/whoami", &[]).unwrap();
        match response.header("x-served-by") {
            Some("web-01") => counts[0] += 1,
            Some("web-02") => counts[1] += 1,
            other => panic!("served by {other:?}"),
        }
    }
    assert_eq!(counts, [300, 100]);
    assert_eq!(servers(&topology)[0]["weight"], 3);

    // Refusals: a host that is not a web host; a change without the token.
    let out = lb_cli(&topology, &["drain", "web-09"]);
    assert!(
        !out.status.success() && text(&out).contains("\"web-09\" is not a web host"),
        "{}",
        text(&out)
    );
    let raw = http::raw(
        topology.lb_admin(),
        b"POST /servers/web-01/maint HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(
        String::from_utf8_lossy(&raw).starts_with("HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert_eq!(servers(&topology)[0]["state"], "ready");
}

#[test]
fn a_rolling_restart_of_every_web_host_fails_no_request() {
    const NET: u8 = 66;
    // A short slow start: the rolling restart waits for each host's before the next.
    let config = toml_with_db(NET, 2, "slowstart = \"2s\"");
    let topology = Topology::start(EXE, "rolling", NET, &config);
    topology.wait_servers_up(&["web-01", "web-02"]);
    let pid = |host: &str, role: &str| topology.unit(host, role)["pid"].as_u64();
    let before: Vec<_> = ["web-01", "web-02"]
        .iter()
        .flat_map(|h| ["web", "app", "db"].map(|r| pid(h, r)))
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let loop_thread = load(topology.lb(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let mut command = Command::new(EXE);
    command
        .args(["restart", "--rolling", "-c"])
        .arg(&topology.config_path)
        .arg("--state-dir")
        .arg(topology.state_dir());
    let out = output_within(&mut command, Duration::from_secs(300));
    // Both back at their full share (the last one's slow start over), then a second of load.
    assert_eventually!(
        servers(&topology)
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["ramp"] == 1000),
        Duration::from_secs(30),
        "every slow start over"
    );
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    let outcomes = loop_thread.join().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("restarted: web-01, web-02"),
        "{}",
        text(&out)
    );

    assert!(
        failures(&outcomes).is_empty(),
        "failed requests: {:?}",
        failures(&outcomes)
    );
    assert!(
        outcomes.iter().filter(|o| o.what == "POST /posts").count() > 10,
        "POSTs ran throughout"
    );
    let after: Vec<_> = ["web-01", "web-02"]
        .iter()
        .flat_map(|h| ["web", "app", "db"].map(|r| pid(h, r)))
        .collect();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        let restarted = i % 3 != 2;
        assert!(b.is_some() && a.is_some(), "{before:?} {after:?}");
        assert_eq!(b != a, restarted, "role {i}: {before:?} -> {after:?}");
    }
    // Both back in rotation (p2c may favour either while their latency estimates differ).
    assert!(
        servers(&topology)
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "ready" && s["up"] == true)
    );

    // A host that is not a web host, or no host at all, is refused before anything changes.
    let mut command = Command::new(EXE);
    command
        .args(["restart", "lb-01", "-c"])
        .arg(&topology.config_path)
        .arg("--state-dir")
        .arg(topology.state_dir());
    let out = output_within(&mut command, Duration::from_secs(30));
    assert!(
        !out.status.success() && text(&out).contains("\"lb-01\" is not a web host"),
        "{}",
        text(&out)
    );
}

/// Where `n` GETs of /api/whoami went: (web-01's, web-02's).
fn spread(lb: SocketAddr, n: usize) -> (usize, usize) {
    let mut counts = (0, 0);
    for _ in 0..n {
        let response = get(lb, "/api/whoami", &[]).unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        match response.header("x-served-by") {
            Some("web-01") => counts.0 += 1,
            Some("web-02") => counts.1 += 1,
            other => panic!("served by {other:?}"),
        }
    }
    counts
}

#[test]
fn failed_requests_eject_a_server_before_its_checks_and_it_comes_back_slowly() {
    const NET: u8 = 67;
    // Checks every 2 s (fall 2): failed requests notice first. Round-robin: shares are exact.
    let config =
        webstack_testkit::topology::toml(NET, 2, "algorithm = \"roundrobin\"\nslowstart = \"20s\"")
            .replace("interval = \"200ms\"", "interval = \"2s\"");
    let topology = Topology::start(EXE, "ejection", NET, &config);
    topology.wait_servers_up(&["web-01", "web-02"]);
    let lb = topology.lb();

    // web-02's app stops: its web server answers 502. Requests still succeed (retried on
    // web-01) and after 5 failures in a row web-02 is out, before a check has seen it.
    let out = topology.cli(&["stop", "web-02/app"]);
    assert!(out.status.success(), "{}", text(&out));
    let (_, to_web_02) = spread(lb, 40);
    assert_eq!(to_web_02, 0, "every answer came from web-01");
    let metrics = get(topology.lb_admin(), "/metrics", &[]).unwrap().text();
    assert!(
        metrics.contains("webstack_lb_server_ejections_total{server=\"web-02\"} 1"),
        "{metrics}"
    );
    assert_eq!(servers(&topology)[1]["up"], false);

    // Its app back: the checks bring it back, and it ramps up over 20 s.
    let out = topology.cli(&["start", "web-02/app"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eventually!(
        servers(&topology)[1]["up"] == true,
        Duration::from_secs(30),
        "web-02 back in rotation"
    );
    let early = spread(lb, 200);
    assert_eventually!(
        servers(&topology)[1]["ramp"] == 1000,
        Duration::from_secs(60),
        "web-02's slow start over"
    );
    let late = spread(lb, 200);
    assert_eq!(late, (100, 100), "its full share once the ramp is over");
    assert!(
        early.1 < late.1 && early.1 > 0,
        "a smaller share while ramping: {early:?} then {late:?}"
    );
}
