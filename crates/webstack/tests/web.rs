//! The web role's proxy to its app, with the app replaced by servers that behave in ways a
//! framework hides: one that answers 413 before reading the body and closes, and a WebSocket
//! echo server. The web role runs alone (`webstack run --host web-01 --role web`), then behind
//! an lb, as in a real topology. These apps listen on TCP (`app.unix_socket = false`, or the
//! web server's fallback to the port when no socket is served); the real app's Unix socket is
//! the path of every other topology test.

use std::time::Duration;

use webstack_testkit::http::{self, get};
use webstack_testkit::raw::{start_early_answer, start_websocket_echo};
use webstack_testkit::topology::toml;
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// Body sizes: small, over the 1 MiB discard bound, far over.
const SIZES: [usize; 3] = [200 * 1024, 5 * 1024 * 1024, 50 * 1024 * 1024];

#[test]
fn an_early_answer_from_the_app_reaches_the_client_through_web_and_lb() {
    let app = start_early_answer(([127, 0, 25, 11], 9000).into());
    let mut topology = Topology::write(EXE, "web-early", 25, &tcp_app(toml(25, 1, "")));
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
    let mut topology = Topology::write(EXE, "web-websocket", 26, &tcp_app(toml(26, 1, "")));
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
    // The topology says the app has its Unix socket (the default); this app listens on TCP
    // only, as an app started with `unix_socket = false` would: the web server finds no socket
    // and reaches it on its port.
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

/// The topology with the web server proxying to its app over TCP, where the test's app listens.
fn tcp_app(topology: String) -> String {
    topology.replace("[app]\n", "[app]\nunix_socket = false\n")
}

/// A file of `len` bytes that differs at every offset from one `seed` to another.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

/// Replaces `path` the way deploy tools do (a new file renamed over the old), with its own
/// modification time so the new version's validators differ however fast this runs.
fn replace(path: &std::path::Path, content: &[u8], mtime_secs: u64) {
    let fresh = path.with_extension("new");
    std::fs::write(&fresh, content).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&fresh)
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(mtime_secs))
        .unwrap();
    std::fs::rename(&fresh, path).unwrap();
}

#[test]
fn files_large_and_small_with_ranges_versions_and_short_error_pages() {
    const NET: u8 = 69;
    // The site's files plus a large one, in a folder of this test's own.
    let root = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(webstack_testkit::site_dir().join("static")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), root.path().join(entry.file_name())).unwrap();
    }
    let big_path = root.path().join("big.bin");
    let big = pattern(3 * 1024 * 1024 + 7, 1);
    replace(&big_path, &big, 1_700_000_000);
    let config = toml(NET, 1, "")
        .replace(
            &webstack_testkit::site_dir()
                .join("static")
                .display()
                .to_string(),
            &root.path().display().to_string(),
        )
        // Files change under it below: checked at every request, not once a second.
        .replace(
            "expose_server_name = true\n",
            "expose_server_name = true\naccess_log_format = \"combined\"\nfile_check_interval = \"0s\"\n",
        );
    let topology = Topology::start(EXE, "web-files", NET, &config);
    let web = topology.web(1);
    let lb = topology.lb();

    // A precompressed file fetched by its own name first is that file, and later never the
    // variant of the file it compresses (nor the other way round).
    let direct = get(web, "/static/style.css.gz", &[]).unwrap();
    assert_eq!(direct.status, 200);
    assert!(direct.header("content-encoding").is_none());
    assert_ne!(direct.header("content-type"), Some("text/css"));
    let variant = get(web, "/static/style.css", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(variant.header("content-encoding"), Some("gzip"));
    assert_eq!(variant.header("content-type"), Some("text/css"));
    assert_eq!(variant.body, direct.body);
    assert_eq!(
        get(web, "/static//style.css", &[]).unwrap().body,
        std::fs::read(root.path().join("style.css")).unwrap(),
        "empty segments are dropped"
    );

    // Large: whole (sendfile), HEAD, ranges at both ends, through the lb too.
    for addr in [web, lb] {
        let whole = get(addr, "/static/big.bin", &[]).unwrap();
        assert_eq!(whole.status, 200);
        assert!(whole.body == big, "the whole large file, byte for byte");
        assert_eq!(
            whole.header("content-type"),
            Some("application/octet-stream")
        );
    }
    let head = http::request(
        web,
        "HEAD",
        "/static/big.bin",
        &[("Range", "bytes=0-9")],
        &[],
    )
    .unwrap();
    assert_eq!(head.status, 200, "Range is for GET only");
    assert_eq!(
        head.header("content-length"),
        Some(big.len().to_string().as_str())
    );
    assert!(head.body.is_empty());
    let middle = get(
        web,
        "/static/big.bin",
        &[("Range", "bytes=2000000-2000099")],
    )
    .unwrap();
    assert_eq!(middle.status, 206);
    assert!(middle.body == big[2_000_000..2_000_100]);
    assert_eq!(
        middle.header("content-range"),
        Some(format!("bytes 2000000-2000099/{}", big.len()).as_str())
    );
    let tail = get(web, "/static/big.bin", &[("Range", "bytes=-10")]).unwrap();
    assert!(tail.status == 206 && tail.body == big[big.len() - 10..]);

    // Several ranges: 206 multipart/byteranges, from memory (a small file) and with sendfile
    // (a large one, through the lb too); overlapping ones coalesced; too many: the whole file.
    let css = std::fs::read(root.path().join("style.css")).unwrap();
    let several = get(web, "/static/style.css", &[("Range", "bytes=0-1,5-6")]).unwrap();
    assert_eq!(
        byteranges(&several),
        vec![
            (format!("bytes 0-1/{}", css.len()), css[0..2].to_vec()),
            (format!("bytes 5-6/{}", css.len()), css[5..7].to_vec())
        ]
    );
    for addr in [web, lb] {
        let parts = get(
            addr,
            "/static/big.bin",
            &[("Range", "bytes=2000000-2000099,-10,0-9")],
        )
        .unwrap();
        let n = big.len();
        assert_eq!(
            byteranges(&parts),
            // In the order asked (they do not overlap).
            vec![
                (
                    format!("bytes 2000000-2000099/{n}"),
                    big[2_000_000..2_000_100].to_vec()
                ),
                (
                    format!("bytes {}-{}/{n}", n - 10, n - 1),
                    big[n - 10..].to_vec()
                ),
                (format!("bytes 0-9/{n}"), big[..10].to_vec()),
            ]
        );
    }
    let overlapping = get(web, "/static/style.css", &[("Range", "bytes=0-9,5-19")]).unwrap();
    assert_eq!(overlapping.status, 206);
    assert_eq!(overlapping.body, css[..20]);
    let many = (0..17)
        .map(|i| format!("{}-{}", i * 4, i * 4))
        .collect::<Vec<_>>();
    let many = get(
        web,
        "/static/style.css",
        &[("Range", &format!("bytes={}", many.join(",")))],
    )
    .unwrap();
    assert_eq!((many.status, many.body.len()), (200, css.len()));

    // A resumed download of a file that changed meanwhile gets the new file whole, not a
    // slice of it glued to the old one (If-Range, RFC 9110 §13.1.5).
    let old_etag = get(web, "/static/big.bin", &[])
        .unwrap()
        .header("etag")
        .unwrap()
        .to_string();
    let old_date = head.header("last-modified").unwrap().to_string();
    let new = pattern(big.len(), 2);
    replace(&big_path, &new, 1_700_000_100);
    for validator in [&old_etag, &old_date] {
        let resumed = get(
            web,
            "/static/big.bin",
            &[("Range", "bytes=1000-"), ("If-Range", validator)],
        )
        .unwrap();
        assert_eq!(resumed.status, 200, "If-Range {validator}");
        assert!(resumed.body == new, "the new version, whole");
    }
    let current = get(web, "/static/big.bin", &[]).unwrap();
    let new_etag = current.header("etag").unwrap().to_string();
    assert_ne!(new_etag, old_etag);
    let resumed = get(
        web,
        "/static/big.bin",
        &[("Range", "bytes=1000-"), ("If-Range", &new_etag)],
    )
    .unwrap();
    assert!(resumed.status == 206 && resumed.body == new[1000..]);
    assert_eq!(
        get(web, "/static/big.bin", &[("If-None-Match", &old_etag)])
            .unwrap()
            .status,
        200,
        "the old validator no longer matches"
    );
    assert_eq!(
        get(web, "/static/big.bin", &[("If-None-Match", &new_etag)])
            .unwrap()
            .status,
        304
    );
    // A small file changes too, and its kept copy with it.
    replace(
        &root.path().join("robots.txt"),
        b"User-agent: *\nDisallow: /x\n",
        1_700_000_200,
    );
    assert!(
        get(web, "/robots.txt", &[])
            .unwrap()
            .text()
            .contains("Disallow: /x")
    );

    // Preconditions, precompressed siblings, HEAD.
    assert_eq!(
        get(web, "/static/big.bin", &[("If-Match", &old_etag)])
            .unwrap()
            .status,
        412
    );
    let gz = get(
        web,
        "/static/style.css",
        &[("Accept-Encoding", "br;q=0, gzip")],
    )
    .unwrap();
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_eq!(gz.header("vary"), Some("Accept-Encoding"));
    let refused = get(web, "/static/style.css", &[("Accept-Encoding", "gzip;q=0")]).unwrap();
    assert!(refused.header("content-encoding").is_none() && refused.body == css);

    // Error answers carry a short page saying what went wrong, like nginx's.
    let answers = [
        (get(web, "/static/missing.css", &[]).unwrap(), 404),
        (
            http::request(web, "POST", "/static/style.css", &[], b"x").unwrap(),
            405,
        ),
        (
            get(web, "/static/style.css", &[("If-Match", "\"nope\"")]).unwrap(),
            412,
        ),
        (
            get(web, "/static/style.css", &[("Range", "bytes=99999-")]).unwrap(),
            416,
        ),
        (get(web, "/static/%2e%2e/x", &[]).unwrap(), 400),
    ];
    for (answer, status) in answers {
        assert_eq!(answer.status, status);
        assert!(
            answer.text().starts_with(&status.to_string()) && answer.text().len() > 20,
            "{status}: {:?}",
            answer.text()
        );
        assert_eq!(answer.header("x-served-by"), Some("web-01"));
    }
    let not_allowed = http::request(web, "PUT", "/static/style.css", &[], b"x").unwrap();
    assert_eq!(not_allowed.header("allow"), Some("GET, HEAD"));
    let unsatisfiable = get(web, "/static/style.css", &[("Range", "bytes=99999-")]).unwrap();
    assert_eq!(
        unsatisfiable.header("content-range"),
        Some(format!("bytes */{}", css.len()).as_str())
    );

    // The access log: combined format, buffered (lines within a second), reopened on SIGUSR1
    // to `up` after logrotate moved it away.
    let line = |log: &str, needle: &str| log.lines().any(|l| l.contains(needle));
    assert_eventually!(
        line(
            &topology.access_log("web-01", "web"),
            "\"GET /static/big.bin HTTP/1.1\" 206 100 \"-\" \"-\""
        ),
        Duration::from_secs(10),
        "a combined line for the range request:\n{}",
        topology.access_log("web-01", "web")
    );
    // Referer and User-Agent as the client sent them (the first of each; escaped as nginx does).
    let referred = get(
        web,
        "/static/style.css",
        &[
            ("Referer", "https://ref.example/a?b=\"c\""),
            ("User-Agent", "agent/1.0 (test)"),
            ("User-Agent", "second"),
        ],
    )
    .unwrap();
    assert_eq!(referred.status, 200);
    let needle = format!(
        "\"GET /static/style.css HTTP/1.1\" 200 {} \"https://ref.example/a?b=\\x22c\\x22\" \"agent/1.0 (test)\"",
        css.len()
    );
    assert_eventually!(
        line(&topology.access_log("web-01", "web"), &needle),
        Duration::from_secs(10),
        "a combined line with the referer and user agent ({needle}):\n{}",
        topology.access_log("web-01", "web")
    );
    // A head the web server cannot read is logged too, as nginx does: `"-" 400`.
    let garbage = http::raw(web, b"NOT HTTP AT ALL\r\n\r\n", Duration::from_secs(5)).unwrap();
    assert!(garbage.starts_with(b"HTTP/1.1 400"));
    assert_eventually!(
        line(&topology.access_log("web-01", "web"), "\"-\" 400 "),
        Duration::from_secs(10),
        "a combined line for the refused head:\n{}",
        topology.access_log("web-01", "web")
    );
    let path = topology.state_dir().join("logs/web-01-web.access.log");
    let rotated = path.with_extension("log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let up = nix::unistd::Pid::from_raw(topology.up_pid().unwrap() as i32);
    nix::sys::signal::kill(up, nix::sys::signal::Signal::SIGUSR1).unwrap();
    assert_eventually!(
        path.exists() && topology.up_log().contains("SIGUSR1: access logs reopening"),
        Duration::from_secs(10),
        "the access log reopened:\n{}",
        topology.up_log()
    );
    get(web, "/robots.txt?after-rotation", &[]).unwrap();
    assert_eventually!(
        line(
            &topology.access_log("web-01", "web"),
            "/robots.txt?after-rotation"
        ),
        Duration::from_secs(10),
        "the new request in the new file"
    );
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(line(&old, "/static/big.bin") && !line(&old, "after-rotation"));
    assert!(
        topology
            .log("web-01", "web")
            .contains("access log reopened")
    );
}

/// The parts of a 206 `multipart/byteranges` answer: each one's `Content-Range` and bytes
/// (read by the length its range says, so binary data cannot fool it).
fn byteranges(r: &http::Response) -> Vec<(String, Vec<u8>)> {
    assert_eq!(r.status, 206, "{}", r.text());
    let boundary = r
        .header("content-type")
        .and_then(|t| t.strip_prefix("multipart/byteranges; boundary="))
        .unwrap_or_else(|| panic!("{:?}", r.header("content-type")))
        .to_string();
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    let mut parts = Vec::new();
    let mut rest = &r.body[..];
    loop {
        let open = format!("--{boundary}\r\n");
        // Every boundary line follows a CRLF, the first one too (nginx's layout).
        rest = rest
            .strip_prefix(b"\r\n".as_slice())
            .unwrap_or_else(|| panic!("a CRLF: {}", String::from_utf8_lossy(rest)));
        if rest == format!("--{boundary}--\r\n").as_bytes() {
            return parts;
        }
        rest = rest
            .strip_prefix(open.as_bytes())
            .unwrap_or_else(|| panic!("a boundary: {}", String::from_utf8_lossy(rest)));
        let end = rest.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8(rest[..end].to_vec()).unwrap();
        rest = &rest[end + 4..];
        let range = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Range: "))
            .unwrap()
            .to_string();
        let (from, to) = range["bytes ".len()..]
            .split_once('/')
            .unwrap()
            .0
            .split_once('-')
            .unwrap();
        let len = to.parse::<usize>().unwrap() - from.parse::<usize>().unwrap() + 1;
        parts.push((range, rest[..len].to_vec()));
        rest = &rest[len..];
    }
}
