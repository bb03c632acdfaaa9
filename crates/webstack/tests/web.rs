//! The web role's proxy to its app, with the app replaced by servers that behave in ways a
//! framework hides: one that answers 413 before reading the body and closes, and a WebSocket
//! echo server. The web role runs alone (`webstack run --host web-01 --role web`), then behind
//! an lb, as in a real topology.

use std::time::Duration;

use webstack_testkit::Topology;
use webstack_testkit::http::{self, get};
use webstack_testkit::raw::{start_early_answer, start_websocket_echo};
use webstack_testkit::topology::toml;

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// Body sizes: small, over the 1 MiB discard bound, far over.
const SIZES: [usize; 3] = [200 * 1024, 5 * 1024 * 1024, 50 * 1024 * 1024];

#[test]
fn an_early_answer_from_the_app_reaches_the_client_through_web_and_lb() {
    let app = start_early_answer(([127, 0, 25, 11], 9000).into());
    let mut topology = Topology::write(EXE, "web-early", 25, &toml(25, 1, ""));
    let web_admin = ([127, 0, 25, 11], 9101).into();
    topology.run_role("web-01", "web", web_admin);
    let lb_admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", lb_admin);

    for run in 0..100 {
        let len = SIZES[run % SIZES.len()];
        // Straight to the web server, and through the lb in front of it.
        let target = if run % 2 == 0 {
            topology.web(1)
        } else {
            topology.lb()
        };
        let r = http::post_streaming(target, "/api/posts", len)
            .unwrap_or_else(|e| panic!("run {run}, {len} bytes to {target}: {e}"));
        assert_eq!(
            r.status,
            413,
            "run {run}, {len} bytes to {target}: {}",
            r.text()
        );
        assert_eq!(r.text(), "the body is too large\n");
    }
    assert_eq!(app.answered(), 100);
}

#[test]
fn websockets_go_through_lb_and_web_to_the_app() {
    let app = start_websocket_echo(([127, 0, 26, 11], 9000).into());
    let mut topology = Topology::write(EXE, "web-websocket", 26, &toml(26, 1, ""));
    topology.run_role("web-01", "web", ([127, 0, 26, 11], 9101).into());
    let lb_admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", lb_admin);

    for target in [topology.web(1), topology.lb()] {
        let stream = std::net::TcpStream::connect(target).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let url = format!("ws://{target}/live");
        let (mut socket, response) = tungstenite::client(url.as_str(), stream)
            .unwrap_or_else(|e| panic!("upgrade through {target}: {e}"));
        assert_eq!(response.status(), 101);
        for text in ["one", "two", &"y".repeat(70_000)] {
            socket.send(tungstenite::Message::text(text)).unwrap();
            let echo = socket.read().unwrap();
            assert_eq!(echo.into_text().unwrap().as_str(), text, "through {target}");
        }
        socket
            .send(tungstenite::Message::binary(vec![0u8, 1, 2, 255]))
            .unwrap();
        assert_eq!(
            socket.read().unwrap().into_data().as_ref(),
            &[0u8, 1, 2, 255][..]
        );
        socket.close(None).unwrap();
    }
    assert_eq!(app.answered(), 2);
    assert_eq!(get(topology.lb(), "/healthz", &[]).unwrap().status, 200);
}

#[test]
fn the_web_server_keeps_the_lbs_statements_and_adds_its_own() {
    use webstack_testkit::raw::start_recorder;
    let app = start_recorder(([127, 0, 27, 11], 9000).into());
    let mut topology = Topology::write(EXE, "web-headers", 27, &toml(27, 1, ""));
    topology.run_role("web-01", "web", ([127, 0, 27, 11], 9101).into());

    let r = get(
        topology.web(1),
        "/api/whoami",
        &[
            ("X-Forwarded-For", "192.0.2.1"),
            ("X-Forwarded-For", "192.0.2.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "from-the-lb"),
            ("X-Webstack-Web-Host", "forged"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "gone"),
        ],
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-served-by"), Some("web-01"));
    let texts = app.texts();
    // Header names as hyper hands them over: lowercase.
    let seen = texts
        .iter()
        .find(|r| r.contains(" /api/whoami "))
        .unwrap()
        .to_ascii_lowercase();
    for line in [
        "x-forwarded-for: 192.0.2.1, 192.0.2.2, 127.0.0.1\r\n",
        "x-forwarded-proto: https\r\n",
        "x-webstack-web-host: web-01\r\n",
        "x-request-id: from-the-lb\r\n",
    ] {
        assert!(seen.contains(line), "{line:?} in {seen}");
    }
    assert!(!seen.contains("forged") && !seen.contains("gone"), "{seen}");
    // A request id of its own when none came.
    get(topology.web(1), "/api/again", &[]).unwrap();
    let texts = app.texts();
    let again = texts.iter().find(|r| r.contains(" /api/again ")).unwrap();
    assert!(again.contains("X-Request-Id: "), "{again}");
}
