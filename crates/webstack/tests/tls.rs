//! HTTPS at the load balancer, checked with real clients (curl, openssl): TLS 1.2 and 1.3 with
//! the local CA, TLS 1.1 refused, HTTP/2 through ALPN proxied end to end, the 308 redirect from
//! plain HTTP, HSTS, and X-Forwarded-Proto reaching the app.

use std::process::Command;

use webstack_testkit::Topology;
use webstack_testkit::http::{self, get};
use webstack_testkit::topology::toml;

const EXE: &str = env!("CARGO_BIN_EXE_webstack");

/// `curl` against https://www.foobar.com:8443`path` resolved to our lb, trusting our CA.
fn curl(topology: &Topology, path: &str, extra: &[&str]) -> (bool, String) {
    let ca = topology.state_dir().join("tls/ca.pem");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&ca)
        .args([
            "--resolve",
            &format!("www.foobar.com:8443:127.0.{}.10", topology.net),
        ])
        .args(["-D", "-", "-w", "\nhttp_version=%{http_version}\n"])
        .args(extra)
        .arg(format!("https://www.foobar.com:8443{path}"))
        .output()
        .expect("curl (apt-get install curl)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn https_with_the_local_ca_http2_redirect_and_hsts() {
    let config = toml(51, 2, "").replace("redirect_http = false", "redirect_http = true");
    let topology = Topology::start(EXE, "tls", 51, &config);

    // HTTP/2 through ALPN, proxied to the web and app servers behind.
    let (ok, out) = curl(&topology, "/", &["--http2"]);
    assert!(ok, "{out}");
    assert!(out.contains("http_version=2"), "{out}");
    assert!(out.contains("HTTP/2 200"), "{out}");
    assert!(
        out.contains("strict-transport-security: max-age=31536000"),
        "HSTS on HTTPS: {out}"
    );
    assert!(
        out.contains("<th>Client protocol</th><td>https</td>"),
        "X-Forwarded-Proto reaches the app: {out}"
    );
    let (ok, out) = curl(&topology, "/api/whoami", &["--http2"]);
    assert!(ok && out.contains("\"app\":\"web-0"), "{out}");

    // HTTP/1.1 over TLS, and each protocol version on its own.
    let (ok, out) = curl(&topology, "/static/style.css", &["--http1.1"]);
    assert!(
        ok && out.contains("http_version=1.1") && out.contains("HTTP/1.1 200"),
        "{out}"
    );
    for version in [
        ["--tlsv1.2", "--tls-max", "1.2"],
        ["--tlsv1.3", "--tls-max", "1.3"],
    ] {
        let (ok, out) = curl(&topology, "/", &version);
        assert!(ok && out.contains(" 200"), "{version:?}: {out}");
    }

    // TLS 1.1 and 1.0 are refused.
    for old in ["-tls1_1", "-tls1"] {
        let out = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.{}.10:8443", topology.net),
                old,
                "-servername",
                "www.foobar.com",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !out.status.success() || !text.contains("Cipher is"),
            "{old} must not negotiate: {text}"
        );
    }

    // Plain HTTP: 308 to the same URL on HTTPS, keeping host, path and query.
    let plain = get(topology.lb(), "/x?y=1", &[("Host", "www.foobar.com:8080")]);
    let plain = plain.unwrap();
    assert_eq!(plain.status, 308);
    assert_eq!(
        plain.header("location"),
        Some("https://www.foobar.com:8443/x?y=1")
    );
    assert!(
        plain.header("strict-transport-security").is_none(),
        "HSTS only over HTTPS"
    );
    let post = http::request(
        topology.lb(),
        "POST",
        "/api/posts",
        &[("Host", "foobar.com")],
        b"{}",
    )
    .unwrap();
    assert_eq!(post.status, 308, "308 keeps the method: {}", post.text());
    // ACME HTTP-01 challenges stay on plain HTTP.
    let challenge = get(
        topology.lb(),
        "/.well-known/acme-challenge/token",
        &[("Host", "www.foobar.com")],
    )
    .unwrap();
    assert_eq!(challenge.status, 404, "forwarded, not redirected");

    // The CA's key and the site's key are private.
    use std::os::unix::fs::PermissionsExt;
    for key in ["tls/ca.key", "tls/site.key"] {
        let mode = std::fs::metadata(topology.state_dir().join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    assert!(
        topology.up_log().contains("tls/ca.pem (curl --cacert)"),
        "{}",
        topology.up_log()
    );
}
