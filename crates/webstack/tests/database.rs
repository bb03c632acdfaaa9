//! The database tier end to end: real `mariadbd` processes provisioned by `webstack up`, GTID
//! replication, the app's router, and the real `mariadb` client to look inside.

use std::time::Duration;

use webstack_testkit::http::{self, get};
use webstack_testkit::topology::{text, toml_with_db};
use webstack_testkit::{Topology, assert_eventually, process_alive};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

fn post(topology: &Topology, author: &str, body: &str) -> http::Response {
    let json = serde_json::json!({ "author": author, "body": body }).to_string();
    http::request(
        topology.lb(),
        "POST",
        "/api/posts",
        &[("Content-Type", "application/json")],
        json.as_bytes(),
    )
    .unwrap()
}

/// A db node's facts from `status` (`Null` while they cannot be had: polled, never trusted once).
fn db_detail(topology: &Topology, host: &str) -> serde_json::Value {
    topology.try_status()["units"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|u| u["host"] == host && u["role"] == "db")
        .map_or(serde_json::Value::Null, |u| u["detail"].clone())
}

/// The app's router, as web-01's app builds it from the topology.
fn app_router(topology: &Topology) -> std::sync::Arc<webstack_db::router::Router> {
    let config = webstack_config::Config::load(&topology.config_path).unwrap();
    let host = config.host("web-01").unwrap();
    let client = config.app(host, topology.state_dir()).unwrap().db.unwrap();
    webstack_db::router::Router::new(client)
}

/// Sends ten posts straight to web-01's app while the primary's `posts` table is locked, closes
/// the ten clients while the inserts wait for the lock, unlocks, and waits until the ten posts
/// (author `gone`, body `round`) are stored.
fn abandon_writes(topology: &Topology, round: &str) {
    use std::io::{BufRead, Write};
    let password =
        std::fs::read_to_string(topology.state_dir().join("secrets/admin.password")).unwrap();
    let mut locker = std::process::Command::new("mariadb")
        .arg("-S")
        .arg(topology.state_dir().join("db/web-01/mariadb.sock"))
        // Unbuffered: each answer is written as its statement ends, not when the client exits.
        .args([
            "-u",
            "webstack_admin",
            "--batch",
            "--unbuffered",
            "--skip-column-names",
        ])
        .env("MYSQL_PWD", password.trim())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_locker = locker.stdin.take().unwrap();
    to_locker
        .write_all(b"LOCK TABLES foobar.posts WRITE;\nSELECT 'locked';\n")
        .unwrap();
    let stdout = locker.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut answer = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut answer);
        let _ = tx.send(answer);
    });
    let answer = rx.recv_timeout(Duration::from_secs(30));
    if answer.as_deref().map(str::trim) != Ok("locked") {
        let _ = locker.kill();
        let _ = locker.wait();
        panic!("the lock on posts was not taken: {answer:?}");
    }

    let app = std::net::SocketAddr::new(topology.web(1).ip(), 9000);
    let clients: Vec<std::net::TcpStream> = (0..10)
        .map(|i| {
            let body =
                serde_json::json!({ "author": "gone", "body": format!("{round} {i}") }).to_string();
            let mut client = std::net::TcpStream::connect(app).unwrap();
            client
                .write_all(
                    format!(
                        "POST /api/posts HTTP/1.1\r\nHost: app\r\n\
                         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )
                .unwrap();
            client
        })
        .collect();
    let waiting = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                   WHERE USER = 'foobar_app' AND INFO LIKE 'INSERT INTO posts%'";
    assert_eventually!(
        topology
            .admin_sql("web-01", waiting)
            .is_ok_and(|n| n.trim() == "10"),
        Duration::from_secs(10),
        "ten inserts wait for the lock"
    );
    drop(clients);
    // The app sees the clients' ends before the lock goes (if it is slower, the writes simply
    // finish with their clients gone: no less stored, no connection lost).
    std::thread::sleep(Duration::from_millis(300));
    to_locker.write_all(b"UNLOCK TABLES;\n").unwrap();
    drop(to_locker);
    assert!(locker.wait().unwrap().success());
    let stored = format!(
        "SELECT COUNT(*) FROM foobar.posts WHERE author = 'gone' AND body LIKE '{round} %'"
    );
    assert_eventually!(
        topology
            .admin_sql("web-01", &stored)
            .is_ok_and(|n| n.trim() == "10"),
        Duration::from_secs(20),
        "the ten posts whose clients went away are stored"
    );
}

#[test]
fn posts_are_written_to_the_primary_and_read_from_every_host() {
    // Statements may wait long (the abandoned writes below wait for a table lock).
    let config = toml_with_db(41, 2, "") + "query_timeout = \"20s\"\n";
    let topology = Topology::start(EXE, "db-basic", 41, &config);

    // Roles as the topology says, replication running, lag measured in transactions.
    assert_eventually!(
        db_detail(&topology, "web-02")["lag_transactions"] == 0,
        Duration::from_secs(20),
        "replica caught up"
    );
    assert_eq!(db_detail(&topology, "web-01")["role"], "primary");
    let replica = db_detail(&topology, "web-02");
    assert_eq!(
        (
            replica["role"].as_str(),
            replica["io_running"].as_str(),
            replica["sql_running"].as_str()
        ),
        (Some("replica"), Some("Yes"), Some("Yes"))
    );
    assert_eventually!(
        text(&topology.cli(&["status"])).contains("replica of web-01, io Yes sql Yes, lag 0 trx"),
        Duration::from_secs(20),
        "status table shows replication"
    );

    // Under load the router's poll does not wait for the app's pool: with every pooled
    // connection to the primary taken, the poll still finds it (on its own connection).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let router = app_router(&topology);
        router.refresh().await;
        let primary = router.writer().expect("a primary");
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(primary.conn(Duration::from_secs(10)).await.unwrap());
        }
        assert!(
            primary.conn(Duration::from_millis(300)).await.is_err(),
            "the pool is exhausted"
        );
        router.refresh().await;
        assert_eq!(router.writer().unwrap().name, "web-01");
        assert!(router.nodes().iter().all(|n| n.state().reachable));
        drop(held);
    });

    let created = post(&topology, "ada", "hello from the primary");
    assert_eq!(created.status, 201, "{}", created.text());
    let stored = created.json();
    let id = stored["id"].as_u64().unwrap();
    assert_eq!(stored["author"], "ada");
    assert_eq!(
        created.header("location"),
        Some(format!("/api/posts/{id}").as_str())
    );
    assert!(
        created.header("set-cookie").unwrap().starts_with(&format!(
            "foobar_gtid=0-{}-",
            webstack_config::server_id("web-01")
        )),
        "read-your-writes cookie"
    );

    // Readable through each web host (each app reads from the replica when it has the row).
    for web in [1, 2] {
        assert_eventually!(
            get(topology.web(web), &format!("/api/posts/{id}"), &[])
                .is_ok_and(|r| r.status == 200 && r.json()["body"] == "hello from the primary"),
            Duration::from_secs(10),
            "post readable via web-0{web}"
        );
    }
    // The replica holds the row (the real client, the app's account), and refuses writes.
    assert_eventually!(
        topology
            .sql(2, &format!("SELECT author FROM posts WHERE id = {id}"))
            .is_ok_and(|out| out.trim() == "ada"),
        Duration::from_secs(10),
        "row on the replica"
    );
    let refused = topology
        .sql(2, "INSERT INTO posts (author, body) VALUES ('x', 'y')")
        .unwrap_err();
    assert!(
        refused.contains("read-only") || refused.contains("1290"),
        "{refused}"
    );
    assert!(
        topology.sql(1, "DROP TABLE posts").is_err(),
        "the app account cannot drop tables"
    );

    let who = get(topology.lb(), "/api/whoami", &[]).unwrap().json();
    assert_eq!(who["db_write"], "web-01");
    assert_eq!(who["db_read"], "web-02");

    // The HTML form: 303 to the new post, whose page escapes what was posted.
    let form = http::request(
        topology.lb(),
        "POST",
        "/posts",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"author=eve&body=%3Cscript%3Ealert(1)%3C%2Fscript%3E",
    )
    .unwrap();
    assert_eq!(form.status, 303, "{}", form.text());
    let location = form.header("location").unwrap().to_string();
    let cookie = form
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = get(topology.lb(), &location, &[("Cookie", &cookie)]).unwrap();
    assert_eq!(
        page.status, 200,
        "read-your-writes: the new post is there at once"
    );
    assert!(
        page.text().contains("&lt;script&gt;") && !page.text().contains("<script>alert"),
        "{}",
        page.text()
    );
    let home = get(topology.lb(), "/", &[("Cookie", &cookie)])
        .unwrap()
        .text();
    assert!(
        home.contains(&location) && home.contains("id=\"db-write\">web-01"),
        "{home}"
    );

    // Hostile and malformed input.
    let injection = post(&topology, "x'); DROP TABLE posts; --", "1' OR '1'='1");
    assert_eq!(injection.status, 201, "stored verbatim, as data");
    assert_eq!(injection.json()["author"], "x'); DROP TABLE posts; --");
    // Backslashes, both quotes, a statement separator, 2- and 4-byte characters and a newline
    // come back byte for byte (the write sends its values as hex literals).
    let (author, body) = ("Zoë \\' \"", "a\\'; SELECT 1; -- \\0 🦀\nnext line\t\\");
    let tricky = post(&topology, author, body);
    assert_eq!(tricky.status, 201, "{}", tricky.text());
    assert_eq!(
        (
            tricky.json()["author"].as_str(),
            tricky.json()["body"].as_str()
        ),
        (Some(author), Some(body))
    );
    let id = tricky.json()["id"].as_u64().unwrap();
    // Read back in the same session (its cookie: read-your-writes), as MariaDB stored it.
    let cookie = tricky
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let stored = get(
        topology.lb(),
        &format!("/api/posts/{id}"),
        &[("Cookie", cookie)],
    )
    .unwrap();
    assert_eq!(stored.status, 200, "{}", stored.text());
    assert_eq!(stored.json()["body"].as_str(), Some(body), "as stored");
    assert!(
        topology
            .sql(1, "SELECT COUNT(*) FROM posts")
            .unwrap()
            .trim()
            .parse::<u32>()
            .unwrap()
            >= 3,
        "the table survived"
    );
    for (body, status) in [
        (b"{\"author\": \"a\"".to_vec(), 400),
        (b"{\"author\": \"a\", \"body\": 7}".to_vec(), 400),
        (b"[]".to_vec(), 400),
        (
            serde_json::json!({"author": "a", "body": "x".repeat(5001)})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            serde_json::json!({"author": "a".repeat(65), "body": "x"})
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            serde_json::json!({"author": "a", "body": "   "})
                .to_string()
                .into_bytes(),
            400,
        ),
        (b"{\"author\": \"a\", \"body\": \"\xff\"}".to_vec(), 400),
        (vec![b' '; 200_000], 413),
    ] {
        let r = http::request(
            topology.lb(),
            "POST",
            "/api/posts",
            &[("Content-Type", "application/json")],
            &body,
        )
        .unwrap();
        assert_eq!(r.status, status, "{}", r.text());
        if status == 400 {
            assert!(r.json()["error"].is_string());
        }
    }
    assert_eq!(
        get(topology.lb(), "/api/posts/999999", &[]).unwrap().status,
        404
    );
    assert_eq!(
        get(topology.lb(), "/posts/999999", &[]).unwrap().status,
        404
    );
    assert_eq!(
        get(topology.lb(), "/api/posts?limit=1000", &[])
            .unwrap()
            .status,
        400
    );
    let listed = get(topology.lb(), "/api/posts?limit=2", &[])
        .unwrap()
        .json();
    assert_eq!(listed["posts"].as_array().unwrap().len(), 2);

    // The app's pools are opened when it starts (20 connections to each node, kept): a burst
    // of concurrent reads, more than a pool's size per app, opens no connection anywhere.
    let app_connections = |host: &str| {
        topology
            .admin_sql(
                host,
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'foobar_app'",
            )
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert_eventually!(
        app_connections("web-01") >= 40 && app_connections("web-02") >= 40,
        Duration::from_secs(20),
        "both apps hold their 20 pooled connections to both nodes"
    );
    let connections = |host: &str| {
        topology
            .admin_sql(
                host,
                "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
                 WHERE VARIABLE_NAME = 'CONNECTIONS'",
            )
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = [connections("web-01"), connections("web-02")];
    std::thread::scope(|threads| {
        for _ in 0..50 {
            threads.spawn(|| {
                for _ in 0..10 {
                    let r = get(topology.lb(), "/api/posts?limit=5", &[]).unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                }
            });
        }
    });
    let after = [connections("web-01"), connections("web-02")];
    // Each node's second reading is one connection itself, and the routers' polls log in
    // again after a poll that took over 2 s (a busy machine); before the pools were opened at
    // start, this burst opened ~36 on the replica.
    assert!(
        after[0] - before[0] <= 10 && after[1] - before[1] <= 10,
        "500 concurrent reads opened {} and {} connections",
        after[0] - before[0],
        after[1] - before[1]
    );

    // A steady load reuses the app's pooled connections and their prepared statements:
    // MariaDB's own counters on the replica barely move (the mariadb client reading them and
    // the supervisor's polls account for a few; one connection per request was the bug).
    let counters_on = |topology: &Topology, node: u8| -> (u64, u64) {
        let out = topology
            .sql(
                node,
                "SHOW GLOBAL STATUS WHERE Variable_name IN ('Connections', 'Com_stmt_prepare')",
            )
            .unwrap();
        let value = |name: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in {out}"))
        };
        (value("Connections"), value("Com_stmt_prepare"))
    };
    let counters = |topology: &Topology| counters_on(topology, 2);
    for _ in 0..50 {
        get(topology.lb(), "/api/posts?limit=5", &[]).unwrap();
    }
    let (connections, prepares) = counters(&topology);
    for _ in 0..400 {
        let r = get(topology.lb(), "/api/posts?limit=5", &[]).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let (connections_after, prepares_after) = counters(&topology);
    assert!(
        connections_after - connections < 40 && prepares_after - prepares < 40,
        "400 reads opened {} connections and prepared {} statements",
        connections_after - connections,
        prepares_after - prepares
    );
    // Nor does the primary's, with the replica asking it for its position every second (for
    // the lag) over the same connection: in 8 s the mariadb client's own and a few reconnects
    // after a slow moment at most (the bug was one per second: 9-10).
    let (primary_connections, _) = counters_on(&topology, 1);
    std::thread::sleep(Duration::from_secs(8));
    let (primary_connections_after, _) = counters_on(&topology, 1);
    assert!(
        primary_connections_after - primary_connections <= 5,
        "the primary counted {} new connections in 8 s",
        primary_connections_after - primary_connections
    );

    // Clients that go away while their writes wait in the database: the writes are stored all
    // the same (they were sent) and cost no connection. Cancelled with the request, each
    // query's connection was closed mid-exchange: the app's pooled connections to the primary
    // went down by ten per round (and were logged in again when a load needed them).
    abandon_writes(&topology, "first");
    let pooled = app_connections("web-01");
    abandon_writes(&topology, "second");
    // A closed connection's server thread ends as soon as the lock is gone; give it the time.
    std::thread::sleep(Duration::from_secs(1));
    // One less at most: a router's poll connection being opened again after a slow moment.
    assert!(
        app_connections("web-01") + 1 >= pooled,
        "the app held {pooled} connections to the primary before ten abandoned writes, {} after",
        app_connections("web-01")
    );
    assert_eq!(post(&topology, "after", "the abandoned writes").status, 201);

    // Secrets: private files, never in the topology or the logs.
    for name in ["admin", "repl", "app", "monitor"] {
        let path = topology
            .state_dir()
            .join(format!("secrets/{name}.password"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        ) & 0o777;
        assert_eq!(mode, 0o600, "{name}");
        let secret = std::fs::read_to_string(&path).unwrap();
        for log in std::fs::read_dir(topology.state_dir().join("logs")).unwrap() {
            let log = log.unwrap().path();
            assert!(
                !std::fs::read_to_string(&log)
                    .unwrap_or_default()
                    .contains(secret.trim()),
                "{name} password in {}",
                log.display()
            );
        }
    }
}

#[test]
fn losing_the_replica_or_the_primary_keeps_the_site_up() {
    let topology = Topology::start(EXE, "db-failures", 42, &toml_with_db(42, 2, ""));
    assert_eq!(post(&topology, "ada", "before").status, 201);

    // The replica stops: reads go to the primary, writes still work.
    assert!(topology.cli(&["stop", "web-02/db"]).status.success());
    assert_eventually!(
        get(topology.lb(), "/api/whoami", &[]).is_ok_and(|r| r.json()["db_read"] == "web-01"),
        Duration::from_secs(10),
        "reads moved to the primary"
    );
    for i in 0..5 {
        assert_eq!(get(topology.lb(), "/", &[]).unwrap().status, 200);
        assert_eq!(
            post(&topology, "bob", &format!("while the replica is down {i}")).status,
            201
        );
    }
    let on_primary = topology.sql(1, "SELECT COUNT(*) FROM posts").unwrap();

    // It comes back and catches up with every row.
    assert!(topology.cli(&["start", "web-02/db"]).status.success());
    assert_eventually!(
        topology
            .sql(2, "SELECT COUNT(*) FROM posts")
            .is_ok_and(|n| n == on_primary),
        Duration::from_secs(20),
        "replica caught up"
    );
    assert_eventually!(
        db_detail(&topology, "web-02")["lag_transactions"] == 0,
        Duration::from_secs(20),
        "lag back to 0"
    );

    // The primary stops: reads keep working from the replica, writes answer 503 clearly.
    assert!(topology.cli(&["stop", "web-01/db"]).status.success());
    // Whether an app has noticed yet or not, a write is refused as unavailable (503), never
    // failed as our fault (500).
    let early = post(&topology, "carol", "right after the stop");
    assert_eq!(early.status, 503, "{}", early.text());
    // Each app polls on its own: wait until both know.
    for web in [topology.web(1), topology.web(2)] {
        assert_eventually!(
            get(web, "/healthz", &[]).is_ok_and(|r| r.json()["write"] == false),
            Duration::from_secs(10),
            "writes known down behind {web}"
        );
    }
    for _ in 0..6 {
        assert_eq!(get(topology.lb(), "/", &[]).unwrap().status, 200);
        let list = get(topology.lb(), "/api/posts", &[]).unwrap();
        assert_eq!(list.status, 200);
        assert_eq!(list.json()["db_read"], "web-02");
    }
    let refused = post(&topology, "carol", "no primary");
    assert_eq!(refused.status, 503);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("writes are unavailable"),
        "{}",
        refused.text()
    );

    assert!(topology.cli(&["start", "web-01/db"]).status.success());
    assert_eventually!(
        post(&topology, "carol", "primary back").status == 201,
        Duration::from_secs(20),
        "writes back"
    );
}

#[test]
fn two_replicas_and_a_second_up_that_keeps_the_data_and_leaves_no_database_behind() {
    // Three db hosts: one primary, two replicas.
    let mut topology = Topology::start(EXE, "db-restart", 43, &toml_with_db(43, 3, ""));
    let id = post(&topology, "ada", "survives restarts").json()["id"]
        .as_u64()
        .unwrap();
    let has_rows = |topology: &Topology, host: u8, n: &str| {
        topology
            .sql(host, "SELECT COUNT(*) FROM posts")
            .is_ok_and(|count| count.trim() == n)
    };
    for replica in [2, 3] {
        assert_eventually!(
            has_rows(&topology, replica, "1"),
            Duration::from_secs(20),
            "web-0{replica} replicated"
        );
    }
    let mariadbd: Vec<u32> = [1, 2, 3]
        .iter()
        .map(|i| {
            let path = topology
                .state_dir()
                .join(format!("db/web-{i:02}/mariadbd.pid"));
            std::fs::read_to_string(path)
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(topology.stop().unwrap().success());
    for pid in &mariadbd {
        assert!(
            !process_alive(*pid),
            "mariadbd {pid} still running after up stopped"
        );
    }
    // The apps stopped before the databases and logged out of them: no aborted connection
    // of the app's account (each app's 21 on every node, before the close).
    for i in [1, 2, 3] {
        let log = topology
            .state_dir()
            .join(format!("logs/web-{i:02}-mariadbd.log"));
        let text = std::fs::read_to_string(&log).unwrap();
        let aborted: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("Aborted connection") && line.contains("foobar_app"))
            .collect();
        assert!(
            aborted.is_empty(),
            "{}: the app's connections were aborted:\n{}",
            log.display(),
            aborted.join("\n")
        );
    }

    topology.restart();
    let kept = get(topology.lb(), &format!("/api/posts/{id}"), &[]).unwrap();
    assert_eq!(kept.json()["body"], "survives restarts");
    for host in ["web-02", "web-03"] {
        assert_eventually!(
            db_detail(&topology, host)["io_running"] == "Yes",
            Duration::from_secs(20),
            "{host} replicating again"
        );
    }
    assert_eq!(post(&topology, "ada", "after the restart").status, 201);
    for replica in [2, 3] {
        assert_eventually!(
            has_rows(&topology, replica, "2"),
            Duration::from_secs(20),
            "web-0{replica} replicated after restart"
        );
    }
}
