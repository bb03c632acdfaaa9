//! Whole-topology tests: the real `webstack up` on this test's own loopback network, real role
//! processes, real sockets. Each test owns its network (127.0.N.0/24), so they run in parallel.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use webstack_testkit::http::{self, get};
use webstack_testkit::topology::{text, toml};
use webstack_testkit::{Topology, assert_eventually, process_alive};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

fn served_by(topology: &Topology, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let r = get(topology.lb(), "/", &[]).unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        *seen
            .entry(r.header("x-served-by").unwrap_or("?").to_string())
            .or_default() += 1;
    }
    seen
}

#[test]
fn the_site_is_served_through_both_web_hosts() {
    let topology = Topology::start(
        EXE,
        "topo-site",
        21,
        &toml(21, 2, "algorithm = \"roundrobin\""),
    );

    // 20 GETs through the load balancer reach both web hosts, each page naming its hosts.
    topology.wait_servers_up(&["web-01", "web-02"]);
    let seen = served_by(&topology, 20);
    assert_eq!(seen.get("web-01"), Some(&10), "{seen:?}");
    assert_eq!(seen.get("web-02"), Some(&10), "{seen:?}");

    let page = get(topology.lb(), "/", &[]).unwrap();
    let host = page.header("x-served-by").unwrap().to_string();
    assert!(
        page.text()
            .contains(&format!("<td id=\"web-host\">{host}</td>")),
        "{}",
        page.text()
    );
    assert!(
        page.text()
            .contains(&format!("<td id=\"app-host\">{host}</td>"))
    );
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(
        page.header("x-request-id").map(str::len),
        Some(32),
        "the LB adds a request id"
    );

    let who = get(topology.lb(), "/api/whoami", &[]).unwrap();
    let json = who.json();
    assert_eq!(
        json["web"], json["app"],
        "web and app of one host serve together: {json}"
    );
    assert_eq!(json["web"].as_str(), who.header("x-served-by"));

    // A client cannot pretend to be a web host.
    let spoofed = get(
        topology.web(1),
        "/api/whoami",
        &[("X-Webstack-Web-Host", "evil")],
    )
    .unwrap();
    assert_eq!(spoofed.json()["web"], "web-01");

    let missing = get(topology.lb(), "/no/such/page", &[]).unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.header("x-served-by").is_some());

    // Every role is healthy in `status`.
    let status = topology.status();
    let units = status["units"].as_array().unwrap();
    assert_eq!(units.len(), 5);
    assert!(
        units
            .iter()
            .all(|u| u["healthy"] == true && u["state"] == "running"),
        "{status}"
    );
    let table = text(&topology.cli(&["status"]));
    assert!(
        table.contains("lb-01") && table.contains("ready"),
        "{table}"
    );
    // Only this user may talk to the supervisor.
    use std::os::unix::fs::PermissionsExt;
    let socket = std::fs::metadata(topology.state_dir().join("control.sock")).unwrap();
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);

    // Each web server reaches its app through the app's Unix socket (this user's only), not
    // TCP: its kept connections to the app are Unix sockets, none goes to the app's port.
    for (n, host) in [(1, "web-01"), (2, "web-02")] {
        assert_eq!(
            get(topology.web(n), "/api/whoami", &[]).unwrap().status,
            200
        );
        let path = topology.state_dir().join(format!("run/{host}-app.sock"));
        let app_socket = std::fs::metadata(&path).unwrap();
        assert_eq!(app_socket.permissions().mode() & 0o777, 0o600, "{path:?}");
        let web = unit_pid(&topology, host, "web");
        assert_eq!(
            tcp_connections_to(web, 9000),
            0,
            "{host}/web has TCP connections to the app's port"
        );
        let app = unit_pid(&topology, host, "app");
        assert!(
            accepted_on(app, &path) > 0,
            "{host}/app holds no connection accepted on its Unix socket"
        );
    }
    // The app's TCP port still answers (monitoring, an operator's curl).
    let direct = get(([127, 0, 21, 11], 9000).into(), "/api/whoami", &[]).unwrap();
    assert_eq!(direct.status, 200);
}

/// The pid of `host`'s `role` process, from `status`.
fn unit_pid(topology: &Topology, host: &str, role: &str) -> u32 {
    topology.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["host"] == host && u["role"] == role)
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> std::collections::HashSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_string_lossy().into_owned();
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect()
}

/// TCP connections of process `pid` to `port` (/proc/net/tcp: "sl local rem st ... inode",
/// addresses as HEX:PORT).
fn tcp_connections_to(pid: u32, port: u16) -> usize {
    let inodes = socket_inodes(pid);
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9
                && fields[2].ends_with(&format!(":{port:04X}"))
                && inodes.contains(fields[9])
        })
        .count()
}

/// Connections process `pid` accepted on a Unix socket in the folder of `path` (/proc/net/unix:
/// "Num RefCount Protocol Flags Type St Inode Path"; an accepted socket shows the name its
/// listener was bound to, the private name it had before it was renamed to `path`; St 03 =
/// connected).
fn accepted_on(pid: u32, path: &std::path::Path) -> usize {
    let inodes = socket_inodes(pid);
    let folder = std::fs::canonicalize(path.parent().unwrap()).unwrap();
    let prefix = format!("{}/", folder.display());
    std::fs::read_to_string("/proc/net/unix")
        .unwrap()
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 7
                && fields[5] == "03"
                && inodes.contains(fields[6])
                && fields[7].starts_with(&prefix)
        })
        .count()
}

#[test]
fn static_files_have_validators_ranges_and_no_way_out_of_the_root() {
    let topology = Topology::start(EXE, "topo-static", 24, &toml(24, 2, ""));
    let lb = topology.lb();

    let css = get(lb, "/static/style.css", &[]).unwrap();
    assert_eq!(css.status, 200);
    assert_eq!(css.header("content-type"), Some("text/css"));
    assert_eq!(css.header("cache-control"), Some("public, max-age=3600"));
    let etag = css.header("etag").expect("ETag").to_string();
    assert!(etag.starts_with('"'), "strong ETag: {etag}");
    let modified = css
        .header("last-modified")
        .expect("Last-Modified")
        .to_string();
    let on_disk = std::fs::read(webstack_testkit::site_dir().join("static/style.css")).unwrap();
    assert_eq!(css.body, on_disk);

    // Revalidation: 304 with an empty body, on ETag and on date, from either web host.
    for _ in 0..2 {
        let not_modified = get(lb, "/static/style.css", &[("If-None-Match", &etag)]).unwrap();
        assert_eq!(not_modified.status, 304);
        assert!(not_modified.body.is_empty());
        assert_eq!(
            get(lb, "/static/style.css", &[("If-Modified-Since", &modified)])
                .unwrap()
                .status,
            304
        );
    }
    assert_eq!(
        get(lb, "/static/style.css", &[("If-None-Match", "\"other\"")])
            .unwrap()
            .status,
        200
    );

    // Ranges: 206 with the exact bytes, 416 when unsatisfiable.
    let range = get(lb, "/static/style.css", &[("Range", "bytes=0-9")]).unwrap();
    assert_eq!(range.status, 206);
    assert_eq!(range.body, on_disk[..10]);
    assert_eq!(
        range.header("content-range"),
        Some(format!("bytes 0-9/{}", on_disk.len()).as_str())
    );
    let tail = get(lb, "/static/style.css", &[("Range", "bytes=-5")]).unwrap();
    assert_eq!(tail.body, on_disk[on_disk.len() - 5..]);
    let beyond = get(lb, "/static/style.css", &[("Range", "bytes=999999-")]).unwrap();
    assert_eq!(beyond.status, 416);

    // Precompressed sibling served to clients that accept gzip.
    let gz = get(lb, "/static/style.css", &[("Accept-Encoding", "gzip")]).unwrap();
    assert_eq!(gz.header("content-encoding"), Some("gzip"));
    assert_ne!(gz.body, on_disk);

    assert_eq!(
        get(lb, "/favicon.ico", &[]).unwrap().header("content-type"),
        Some("image/x-icon")
    );
    assert!(
        get(lb, "/robots.txt", &[])
            .unwrap()
            .text()
            .contains("User-agent")
    );
    assert_eq!(get(lb, "/static/missing.css", &[]).unwrap().status, 404);
    assert_eq!(
        http::request(lb, "POST", "/static/style.css", &[], b"x")
            .unwrap()
            .status,
        405
    );

    // Traversal, sent as raw bytes so no client library normalizes them: always 400 or 404,
    // never a file from outside the root.
    let probes = [
        "/static/../webstack.toml",
        "/static/../../Cargo.toml",
        "/static/%2e%2e/%2e%2e/Cargo.toml",
        "/static/%2E%2E/templates/home.html",
        "/static/..%2f..%2fCargo.toml",
        "/static/..%5c..%5cCargo.toml",
        "/static/..\\..\\Cargo.toml",
        "/static/style.css%00.txt",
        "/static/%00",
        "/static//etc/passwd",
        "/static/./../templates/base.html",
        "/..%2f..%2f..%2fetc/passwd",
        "/static/%c0%ae%c0%ae/Cargo.toml",
    ];
    for probe in probes {
        let raw = http::raw(
            lb,
            format!("GET {probe} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            Duration::from_secs(5),
        )
        .unwrap();
        let response = http::parse(&raw, false).unwrap_or_else(|e| panic!("{probe}: {e}"));
        assert!(
            matches!(response.status, 400 | 404),
            "{probe} answered {}: {}",
            response.status,
            response.text()
        );
        let body = response.text();
        assert!(
            !body.contains("[workspace]") && !body.contains("root:") && !body.contains("{%"),
            "{probe} leaked a file"
        );
    }
}

#[test]
fn stopping_a_web_host_takes_it_out_of_rotation_without_failed_requests() {
    let topology = Topology::start(EXE, "topo-failover", 22, &toml(22, 2, ""));
    topology.wait_servers_up(&["web-01", "web-02"]);
    let lb = topology.lb();

    // Traffic flows the whole time; not one request may fail.
    let running = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (running, failures) = (running.clone(), failures.clone());
            std::thread::spawn(move || {
                let mut sent = 0;
                while running.load(Ordering::SeqCst) {
                    match get(lb, "/api/whoami", &[]) {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => {
                            failures
                                .lock()
                                .unwrap()
                                .push(format!("{} {}", r.status, r.text()))
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                    sent += 1;
                    // Steady traffic that leaves the (debug-built) roles room on 2 cores.
                    std::thread::sleep(Duration::from_millis(20));
                }
                sent
            })
        })
        .collect();

    let stop = topology.cli(&["stop", "web-01"]);
    assert!(stop.status.success(), "{}", text(&stop));
    assert!(
        text(&stop).contains("stopped web-01/web") && text(&stop).contains("web-01/app"),
        "{}",
        text(&stop)
    );

    let seen = served_by(&topology, 30);
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        vec!["web-02"],
        "all from web-02 while web-01 is stopped"
    );
    let status = topology.status();
    let web01: Vec<_> = status["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| u["host"] == "web-01")
        .collect();
    assert!(
        web01
            .iter()
            .all(|u| u["state"] == "stopped" && u["pid"].is_null()),
        "{status}"
    );

    let start = topology.cli(&["start", "web-01"]);
    assert!(start.status.success(), "{}", text(&start));
    assert_eventually!(
        served_by(&topology, 6).contains_key("web-01"),
        Duration::from_secs(15),
        "web-01 back in rotation"
    );

    // Only the app of web-01 stops: its web server's health check (proxied to the app) fails,
    // so the LB takes the whole host out.
    assert!(topology.cli(&["stop", "web-01/app"]).status.success());
    assert_eventually!(
        served_by(&topology, 6).keys().eq(["web-02"]),
        Duration::from_secs(15),
        "web-01 out after its app stopped"
    );
    assert!(topology.cli(&["start", "web-01/app"]).status.success());
    assert_eventually!(
        served_by(&topology, 6).contains_key("web-01"),
        Duration::from_secs(15),
        "web-01 back after its app started"
    );

    running.store(false, Ordering::SeqCst);
    let sent: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let failures = failures.lock().unwrap();
    assert!(sent > 50, "background traffic ran ({sent} requests)");
    assert!(
        failures.is_empty(),
        "{} of {sent} background requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Bad targets are refused with a reason.
    let bad = topology.cli(&["stop", "web-09"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).contains("names no role"), "{}", text(&bad));
    let bad = topology.cli(&["stop", "web-01/dns"]);
    assert!(text(&bad).contains("unknown role"), "{}", text(&bad));
    let bad = topology.cli(&["stop", "web-01/db"]);
    assert!(
        text(&bad).contains("HOST one of web-01, web-02, lb-01"),
        "this topology has no db: {}",
        text(&bad)
    );
}

#[test]
fn crashed_roles_restart_and_sigterm_leaves_no_process_behind() {
    let mut topology = Topology::start(EXE, "topo-lifecycle", 23, &toml(23, 2, ""));

    // A second supervisor on the same state dir is refused before it touches anything.
    let second = topology.cli(&["up", "-c", topology.config_path.to_str().unwrap()]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        text(&second).contains("already running"),
        "{}",
        text(&second)
    );

    // SIGHUP (reload) to a role that has nothing to reload leaves it running.
    let web_pid = topology.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["host"] == "web-01" && u["role"] == "web")
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(web_pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    assert_eventually!(
        topology.log("web-01", "web").contains("SIGHUP received"),
        Duration::from_secs(10),
        "{}",
        topology.log("web-01", "web")
    );
    assert!(
        webstack_testkit::process_alive(web_pid),
        "SIGHUP must not stop a role"
    );

    // SIGKILL one role: the supervisor notices and starts it again.
    let app_pid = topology.status()["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["host"] == "web-02" && u["role"] == "app")
        .unwrap()["pid"]
        .as_u64()
        .unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(app_pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert_eventually!(
        {
            let s = topology.status();
            let app = s["units"]
                .as_array()
                .unwrap()
                .iter()
                .find(|u| u["host"] == "web-02" && u["role"] == "app")
                .cloned()
                .unwrap();
            app["restarts"] == 1
                && app["healthy"] == true
                && app["pid"].as_u64() != Some(app_pid as u64)
        },
        Duration::from_secs(20),
        "web-02/app restarted"
    );
    assert!(
        topology.up_log().contains("web-02/app exited unexpectedly"),
        "{}",
        topology.up_log()
    );
    assert_eventually!(
        served_by(&topology, 6).len() == 2,
        Duration::from_secs(15),
        "web-02 back in rotation"
    );

    let mut pids = topology.role_pids();
    pids.push(topology.up_pid().unwrap());
    assert_eq!(pids.len(), 6);
    let status = topology.stop().unwrap();
    assert!(status.success(), "up exits 0 on SIGTERM: {status}");
    for pid in pids {
        assert!(
            !process_alive(pid),
            "process {pid} is still running after up stopped"
        );
    }
    assert!(!topology.state_dir().join("control.sock").exists());
    // The apps' sockets go with them; web-02's was replaced after the SIGKILL left it behind.
    for host in ["web-01", "web-02"] {
        let path = topology.state_dir().join(format!("run/{host}-app.sock"));
        assert!(!path.exists(), "{path:?} left behind");
    }
    assert!(topology.up_log().contains("stopped"));
    assert!(
        get(topology.lb(), "/", &[]).is_err(),
        "nothing listens any more"
    );

    // A new `up` on the same state dir starts again.
    let again = Topology::start(
        EXE,
        "topo-lifecycle-again",
        23,
        &std::fs::read_to_string(&topology.config_path).unwrap(),
    );
    assert_eq!(get(again.lb(), "/healthz", &[]).unwrap().status, 200);
}
