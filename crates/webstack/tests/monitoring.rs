//! Monitoring end to end, with the real programs: every role's `/metrics` passes `promtool check
//! metrics`; the monitor role's Prometheus scrapes every target; stopping a web host fires the
//! host-down and out-of-rotation alerts in Alertmanager, which calls the dashboard's webhook;
//! the dashboard, driven in headless Chromium through chromedriver, shows the host down within
//! seconds and up again after it starts, when the alerts resolve.

use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use webstack_testkit::http::get;
use webstack_testkit::topology::{TEST_CLIENT_LIMITS, output_within};
use webstack_testkit::webdriver::Browser;
use webstack_testkit::{Topology, assert_eventually, site_dir};

const EXE: &str = env!("CARGO_BIN_EXE_webstack");
const NET: u8 = 60;

/// The default topology's shape on 127.0.60.0/24: two lbs (both monitors) sharing a VIP, two
/// web hosts with db and etcd, Prometheus scraping every second.
fn topology_toml() -> String {
    let site = site_dir();
    format!(
        r#"[site]
name = "www.foobar.com"

[[host]]
name = "lb-01"
address = "127.0.{NET}.8"
roles = ["lb", "etcd", "monitor"]

[[host]]
name = "lb-02"
address = "127.0.{NET}.9"
roles = ["lb", "monitor"]

[[host]]
name = "web-01"
address = "127.0.{NET}.11"
roles = ["web", "app", "db", "etcd"]

[[host]]
name = "web-02"
address = "127.0.{NET}.12"
roles = ["web", "app", "db", "etcd"]

[lb]
vip = "127.0.{NET}.10"
server_timing = true

[lb.health]
interval = "200ms"
timeout = "2s"
rise = 2
fall = 2

[lb.tls]
redirect_http = false

[web]
static_root = "{static_root}"
expose_server_name = true
server_timing = true

[app]
templates = "{templates}"
server_timing = true

[db]
primary = "web-01"
poll_interval = "200ms"
query_timeout = "3s"

[monitor]
scrape_interval = "1s"
"#,
        static_root = site.join("static").display(),
        templates = site.join("templates").display(),
    )
}

fn addr(last: u8, port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, NET, last], port))
}

/// `promtool check metrics` on `text` (its stdin).
fn promtool_check_metrics(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Active alerts in Alertmanager's API as (alertname, host, server).
fn active_alerts(alertmanager: SocketAddr) -> Vec<(String, String, String)> {
    let Ok(response) = get(alertmanager, "/api/v2/alerts?active=true", &[]) else {
        return Vec::new();
    };
    if response.status != 200 {
        return Vec::new();
    }
    response
        .json()
        .as_array()
        .map(|alerts| {
            alerts
                .iter()
                .map(|a| {
                    let label = |k: &str| a["labels"][k].as_str().unwrap_or("").to_string();
                    (label("alertname"), label("host"), label("server"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has(alerts: &[(String, String, String)], name: &str, host: &str, server: &str) -> bool {
    alerts
        .iter()
        .any(|(n, h, s)| n == name && h == host && s == server)
}

#[test]
fn every_role_is_scraped_a_stopped_web_host_alerts_and_the_dashboard_shows_it() {
    let mut topology = Topology::start(
        EXE,
        "monitoring",
        NET,
        &(topology_toml() + TEST_CLIENT_LIMITS),
    );

    // 1. Every role's admin endpoint and every host's supervisor: the classic text passes
    // promtool; Prometheus' own Accept header gets OpenMetrics.
    let mut endpoints = Vec::new();
    for (last, ports) in [
        (8, &[9100, 9104, 9106, 9105][..]),
        (9, &[9100, 9106, 9105][..]),
        (11, &[9101, 9102, 9103, 9104, 9105][..]),
        (12, &[9101, 9102, 9103, 9104, 9105][..]),
    ] {
        for port in ports {
            endpoints.push(addr(last, *port));
        }
    }
    for endpoint in &endpoints {
        let classic = get(*endpoint, "/metrics", &[]).unwrap();
        assert_eq!(classic.status, 200, "{endpoint}");
        assert!(
            classic
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
            "{endpoint}: {:?}",
            classic.header("content-type")
        );
        let text = classic.text();
        assert!(text.contains("webstack_build_info{"), "{endpoint}:\n{text}");
        assert!(text.contains("process_resident_memory_bytes"), "{endpoint}");
        let (ok, said) = promtool_check_metrics(&text);
        assert!(ok, "promtool check metrics on {endpoint}:\n{said}\n{text}");
        let open = get(
            *endpoint,
            "/metrics",
            &[(
                "Accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )],
        )
        .unwrap();
        assert!(
            open.header("content-type")
                .is_some_and(|t| t.starts_with("application/openmetrics-text")),
            "{endpoint}"
        );
        assert!(open.text().ends_with("# EOF\n"), "{endpoint}");
    }
    // The server's statistics are sampled each second and cleared while a sample fails (a
    // busy moment, a fence and re-promotion): they are there once a sample succeeds.
    let families = [
        "webstack_db_gtid_sequence{domain=\"0\",source=\"binlog\"}",
        "webstack_db_semi_sync_primary_status",
        "webstack_db_innodb_buffer_pool_pages{state=\"data\"}",
    ];
    let db_metrics = || {
        get(addr(11, 9103), "/metrics", &[])
            .map(|r| r.text())
            .unwrap_or_default()
    };
    assert_eventually!(
        {
            let text = db_metrics();
            families.iter().all(|family| text.contains(family))
        },
        Duration::from_secs(30),
        "{families:?} in\n{}",
        db_metrics()
    );
    let host_metrics = get(addr(12, 9105), "/metrics", &[]).unwrap().text();
    assert!(
        host_metrics.contains("webstack_supervisor_role_up{role=\"web\"} 1"),
        "{host_metrics}"
    );

    // One request's path: the lb's request id in the web server's, the app's access lines and
    // the database time; Server-Timing from every tier.
    let site = addr(10, 8080);
    let response = get(site, "/api/posts?limit=2", &[]).unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let id = response
        .header("x-request-id")
        .expect("a request id")
        .to_string();
    let timings: Vec<&str> = response
        .headers
        .get_all("server-timing")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let timings = timings.join(", ");
    for tier in ["lb;dur=", "web;dur=", "app;dur=", "db;dur="] {
        assert!(timings.contains(tier), "{tier} in Server-Timing: {timings}");
    }
    let served_by = response
        .header("x-served-by")
        .expect("X-Served-By")
        .to_string();
    assert_eventually!(
        topology.access_log(&served_by, "web").contains(&id)
            && topology.access_log(&served_by, "app").contains(&id)
            && (topology.access_log("lb-01", "lb").contains(&id)
                || topology.access_log("lb-02", "lb").contains(&id)),
        Duration::from_secs(10),
        "request id {id} in the lb's, {served_by}'s web and app access logs"
    );
    let app_line = topology
        .access_log(&served_by, "app")
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_default()
        .to_string();
    assert!(app_line.contains("db_statements"), "{app_line}");

    // 2. Prometheus (from the state dir's config) reports every target up.
    let prometheus = addr(8, 9290);
    let expected = endpoints.len() + 4; // and each monitor's Prometheus and Alertmanager
    assert_eventually!(
        get(prometheus, "/api/v1/targets?state=active", &[]).is_ok_and(|r| {
            let json = r.json();
            let targets = json["data"]["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            targets.len() == expected && targets.iter().all(|t| t["health"] == "up")
        }),
        Duration::from_secs(60),
        "every target up in Prometheus: {}",
        get(prometheus, "/api/v1/targets?state=active", &[])
            .map(|r| r.text())
            .unwrap_or_default()
    );
    assert!(
        std::fs::read_to_string(topology.state_dir().join("monitor/lb-01/prometheus.yml"))
            .unwrap()
            .contains("job_name: \"db\""),
        "the generated config is in the state dir"
    );

    // The two monitors' Alertmanagers are one cluster (each notification goes out once).
    assert_eventually!(
        get(addr(8, 9293), "/api/v2/status", &[]).is_ok_and(|r| {
            let json = r.json();
            json["cluster"]["status"] == "ready"
                && json["cluster"]["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2)
        }),
        Duration::from_secs(60),
        "a two-peer Alertmanager cluster: {}",
        get(addr(8, 9293), "/api/v2/status", &[])
            .map(|r| r.text())
            .unwrap_or_default()
    );
    let etcd_metrics = get(addr(8, 9104), "/metrics", &[]).unwrap().text();
    assert!(
        etcd_metrics.contains("webstack_etcd_healthy 1"),
        "{etcd_metrics}"
    );

    // 3. The dashboard in a real browser: every host, web-02 up.
    let browser = Browser::start(&topology.dir.path().join("chromium"));
    let dashboard = format!("http://{}/", addr(8, 9200));
    browser.goto(&dashboard);
    for host in ["lb-01", "lb-02", "web-01", "web-02"] {
        assert!(
            browser
                .attribute(&format!("#host-{host}"), "data-state")
                .is_some(),
            "{host} on the dashboard:\n{}",
            browser.text("body")
        );
    }
    assert_eventually!(
        browser.attribute("#host-web-02", "data-state").as_deref() == Some("up")
            && browser
                .attribute("#lb-lb-01-server-web-02", "data-state")
                .as_deref()
                == Some("up"),
        Duration::from_secs(30),
        "web-02 up on the dashboard:\n{}",
        browser.text("body")
    );
    browser.screenshot(&topology.dir.path().join("dashboard-healthy.png"));

    // 4. web-02 stopped: the dashboard says so within seconds (its script refreshes the page).
    assert!(topology.cli(&["stop", "web-02"]).status.success());
    let stopped = Instant::now();
    assert_eventually!(
        browser.attribute("#host-web-02", "data-state").as_deref() == Some("down")
            && browser
                .attribute("#lb-lb-01-server-web-02", "data-state")
                .as_deref()
                == Some("down"),
        Duration::from_secs(15),
        "web-02 down on the dashboard:\n{}",
        browser.text("body")
    );
    eprintln!(
        "the dashboard showed web-02 down {:.1}s after the stop",
        stopped.elapsed().as_secs_f64()
    );
    let verdict = browser.attribute("#overview-root", "data-verdict");
    assert_eq!(
        verdict.as_deref(),
        Some("degraded"),
        "{}",
        browser.text("body")
    );
    assert!(
        browser.text("#problems").contains("web-02"),
        "{}",
        browser.text("body")
    );

    // 5. The alerts fire in Alertmanager (rule's `for` 15 s plus scrapes and evaluation).
    let alertmanager = addr(8, 9293);
    let mut last_seen = Vec::new();
    assert_eventually!(
        {
            let alerts = active_alerts(alertmanager);
            if alerts != last_seen {
                eprintln!(
                    "{:.1}s: Alertmanager has {alerts:?}",
                    stopped.elapsed().as_secs_f64()
                );
                last_seen = alerts.clone();
            }
            has(&alerts, "WebstackHostDown", "web-02", "")
                && has(&alerts, "WebstackWebServerOutOfRotation", "", "web-02")
        },
        Duration::from_secs(90),
        "host-down and out-of-rotation alerts for web-02: {:?}",
        active_alerts(alertmanager)
    );
    eprintln!(
        "alerts active in Alertmanager {:.1}s after the stop",
        stopped.elapsed().as_secs_f64()
    );
    // ... and reach the dashboard through the webhook, and `webstack status`.
    assert_eventually!(
        browser.text("#alerts").contains("WebstackHostDown"),
        Duration::from_secs(30),
        "the webhook's alert on the dashboard:\n{}",
        browser.text("body")
    );
    browser.screenshot(&topology.dir.path().join("dashboard-web-02-down.png"));
    // `status` shows what the supervisor last polled from the monitor (every 500 ms).
    let status = || String::from_utf8_lossy(&topology.cli(&["status"]).stdout).into_owned();
    assert_eventually!(
        status().contains("firing: ") && status().contains("WebstackHostDown"),
        Duration::from_secs(10),
        "the firing alerts in `webstack status`:\n{}",
        status()
    );
    // Logged when Alertmanager's webhook call comes; the dashboard may have it sooner from the
    // catch-up read of Alertmanager's API (a loaded machine showed that order).
    assert_eventually!(
        topology
            .log("lb-01", "monitor")
            .contains("WebstackHostDown"),
        Duration::from_secs(30),
        "the alert is logged"
    );

    // 6. Started again: the dashboard shows it up, the alerts resolve.
    assert!(topology.cli(&["start", "web-02"]).status.success());
    assert_eventually!(
        browser.attribute("#host-web-02", "data-state").as_deref() == Some("up"),
        Duration::from_secs(30),
        "web-02 up again on the dashboard:\n{}",
        browser.text("body")
    );
    assert_eventually!(
        {
            let alerts = active_alerts(alertmanager);
            !has(&alerts, "WebstackHostDown", "web-02", "")
                && !has(&alerts, "WebstackWebServerOutOfRotation", "", "web-02")
        },
        Duration::from_secs(90),
        "the alerts resolve: {:?}",
        active_alerts(alertmanager)
    );
    drop(browser);
    assert!(topology.stop().is_some_and(|s| s.success()));
}

#[test]
fn check_runs_prometheus_and_alertmanagers_own_checkers_and_refuses_bad_monitor_settings() {
    let topology = Topology::write(EXE, "monitoring-check", NET, &topology_toml());
    let out = output_within(
        Command::new(EXE)
            .arg("check")
            .arg("--config")
            .arg(&topology.config_path),
        Duration::from_secs(60),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "monitoring: promtool check config: ok",
        "monitoring: promtool check rules: ok",
        "monitoring: promtool test rules: ok",
        "monitoring: amtool check-config: ok",
    ] {
        assert!(said.contains(line), "{line:?} in\n{said}");
    }

    for (bad, expected) in [
        (
            "scrape_interval = \"10ms\"",
            "monitor.scrape_interval: expected 100ms to 15s",
        ),
        (
            "webhooks = [\"ftp://x\"]",
            "monitor.webhooks: \"ftp://x\" is not an http:// or https:// URL",
        ),
        (
            "retention_size = \"lots\"",
            "monitor.retention_size \"lots\": expected a size",
        ),
        (
            "prometheus_port = 9100",
            "is also lb.admin_port on host lb-01",
        ),
    ] {
        let text = topology_toml().replace("scrape_interval = \"1s\"", bad);
        let path = topology.dir.path().join("bad.toml");
        std::fs::write(&path, &text).unwrap();
        let out = output_within(
            Command::new(EXE).arg("check").arg("--config").arg(&path),
            Duration::from_secs(60),
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(said.contains(expected), "{expected:?} in\n{said}");
        assert!(said.contains("bad.toml:"), "file and line in\n{said}");
    }
}
