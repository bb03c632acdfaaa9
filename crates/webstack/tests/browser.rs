//! What a visitor sees, in a real browser: Debian's `chromium`, headless, loads the site's home
//! page from a running topology; the DOM it built is checked, and a screenshot is kept in the
//! test's folder (`WEBSTACK_KEEP_TEST_DIRS=1` keeps it for a look).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use webstack_testkit::http::{self, get};
use webstack_testkit::topology::{output_within, toml_with_db};
use webstack_testkit::{Topology, assert_eventually};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// Headless chromium with a profile of its own and nothing that reaches outside this machine.
fn chromium(profile: &Path) -> Command {
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()));
    command
}

/// The DOM chromium built for `url`.
fn dom(profile: &Path, url: &str) -> String {
    let out = output_within(
        chromium(profile).arg("--dump-dom").arg(url),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "chromium (apt-get install chromium): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A PNG of `url` as chromium renders it.
fn screenshot(profile: &Path, url: &str, file: &Path) {
    let out = output_within(
        chromium(profile)
            .arg(format!("--screenshot={}", file.display()))
            .arg(url),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(file).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn the_home_page_in_a_browser_shows_the_hosts_the_posts_and_never_a_database_error() {
    let topology = Topology::start(EXE, "browser", 49, &toml_with_db(49, 2, ""));
    let profile = topology.dir.path().join("chromium");
    let post = serde_json::json!({ "author": "ada", "body": "Hello from a <b>browser</b> test" });
    let created = http::request(
        topology.lb(),
        "POST",
        "/api/posts",
        &[("Content-Type", "application/json")],
        post.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.text());

    // Through the lb: the hosts it went through, the post (escaped), the form.
    let site = format!("http://{}/", topology.lb());
    let page = dom(&profile, &site);
    for expected in [
        "<h1>Welcome to www.foobar.com</h1>",
        "id=\"web-host\">web-0",
        "id=\"app-host\">web-0",
        "id=\"db-write\">web-01</td>",
        "Hello from a &lt;b&gt;browser&lt;/b&gt; test",
        "<form method=\"post\" action=\"/posts\"",
    ] {
        assert!(page.contains(expected), "{expected:?} in the page:\n{page}");
    }
    screenshot(&profile, &site, &topology.dir.path().join("home.png"));

    // Both database nodes stopped: a web server still serves the page, which says so in our
    // words; what MariaDB or the driver said goes to the log only.
    for host in ["web-02/db", "web-01/db"] {
        assert!(topology.cli(&["stop", host]).status.success());
    }
    let direct = topology.web(1);
    assert_eventually!(
        get(direct, "/healthz", &[]).is_ok_and(|r| r.status == 503),
        Duration::from_secs(15),
        "the app knows no database is reachable"
    );
    let url = format!("http://{direct}/");
    let page = dom(&profile, &url);
    assert!(page.contains("class=\"error\""), "{page}");
    assert!(
        page.contains("The database is unavailable; try again shortly"),
        "{page}"
    );
    assert!(
        !page.contains("No posts yet"),
        "an outage is not an empty site:\n{page}"
    );
    for raw in [
        "mysql",
        "MySQL",
        "Connection refused",
        "os error",
        "Driver",
        "Io(",
    ] {
        assert!(!page.contains(raw), "{raw:?} shown to a visitor:\n{page}");
    }
    screenshot(
        &profile,
        &url,
        &topology.dir.path().join("home-without-database.png"),
    );
}
