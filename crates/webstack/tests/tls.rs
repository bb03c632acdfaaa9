//! HTTPS at the load balancer, checked with real clients (curl, openssl): TLS 1.2 and 1.3 with
//! the local CA, TLS 1.1 refused, HTTP/2 through ALPN proxied end to end, the 308 redirect from
//! plain HTTP, HSTS, and X-Forwarded-Proto reaching the app; several certificates picked by
//! SNI and replaced on disk while an open connection keeps working; ACME against a real pebble.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use webstack_testkit::http::{self, get};
use webstack_testkit::pebble::Pebble;
use webstack_testkit::topology::{toml, toml_with_two_lbs};
use webstack_testkit::{Topology, assert_eventually};

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
    let config = toml(51, 2, "")
        .replace("redirect_http = false", "redirect_http = true")
        .replace(
            "burst = 1000000\n",
            "burst = 1000000\nmax_body = \"16KiB\"\n",
        );
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

    // The body bound holds for HTTP/2 too: a declared length over it, and a stream without one.
    let body = topology.dir.path().join("body.bin");
    std::fs::write(&body, vec![b'x'; 100 * 1024]).unwrap();
    let file = format!("@{}", body.display());
    let (ok, out) = curl(&topology, "/posts", &["--http2", "--data-binary", &file]);
    assert!(ok && out.contains("HTTP/2 413"), "{out}");
    assert!(out.contains("at most 16384 bytes"), "{out}");
    let streamed = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c 200000 /dev/zero | curl -sS --max-time 10 --http2 --cacert {} --resolve www.foobar.com:8443:127.0.{}.10 -X POST -T - -D - https://www.foobar.com:8443/posts",
            topology.state_dir().join("tls/ca.pem").display(),
            topology.net
        ))
        .output()
        .expect("sh and curl");
    let said = String::from_utf8_lossy(&streamed.stdout);
    assert!(
        // The lb's own answer (the app's bound, 64 KiB, is never reached).
        said.contains("HTTP/2 413") && said.contains("at most 16384 bytes"),
        "{said}{}",
        String::from_utf8_lossy(&streamed.stderr)
    );

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
    // Names without a certificate (an address) and the health path stay on plain HTTP.
    let by_address = get(topology.lb(), "/x?y=1", &[]).unwrap();
    assert_eq!(by_address.status, 404, "forwarded: {}", by_address.text());
    let health = get(topology.lb(), "/healthz", &[("Host", "www.foobar.com")]).unwrap();
    assert_eq!(health.status, 200, "{}", health.text());
    let post = http::request(
        topology.lb(),
        "POST",
        "/api/posts",
        &[("Host", "www.foobar.com")],
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
    // Printed once every role is up, which `status --wait` may see first.
    assert_eventually!(
        topology.up_log().contains("tls/ca.pem (curl --cacert)"),
        Duration::from_secs(10),
        "{}",
        topology.up_log()
    );
    // `status` names the certificate and its expiry.
    let shows_certificate = |status: String| {
        status.contains("certificates of lb-01:")
            && status.contains("www.foobar.com")
            && status.contains("expires 20")
            && status.contains("local-ca")
    };
    assert_eventually!(
        shows_certificate(status_text(&topology)),
        Duration::from_secs(10),
        "{}",
        status_text(&topology)
    );
}

/// `webstack status` as a person reads it.
fn status_text(topology: &Topology) -> String {
    String::from_utf8_lossy(&topology.cli(&["status"]).stdout).into_owned()
}

/// The ACME client state of the lb that orders (with two lbs: the VIP holder; the other says
/// "standby") from `webstack status --json` ("" before the first report).
fn acme_state(topology: &Topology) -> String {
    topology.try_status()["units"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["detail"]["acme"]["state"].as_str())
        .find(|state| !state.is_empty() && *state != "standby")
        .unwrap_or_default()
        .to_string()
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to `addr` for `name` (sent as SNI when `sni`), trusting `roots`.
fn tls_connect(
    addr: SocketAddr,
    name: &str,
    roots: &[&Path],
    sni: bool,
) -> Result<TlsStream, String> {
    tls_connect_alpn(addr, name, roots, sni, b"http/1.1")
}

/// `tls_connect` offering one ALPN protocol.
fn tls_connect_alpn(
    addr: SocketAddr,
    name: &str,
    roots: &[&Path],
    sni: bool,
    alpn: &[u8],
) -> Result<TlsStream, String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        for cert in CertificateDer::pem_file_iter(root).unwrap() {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(store)
        .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![alpn.to_vec()];
    let name = ServerName::try_from(name.to_string()).unwrap();
    let connection = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(connection, tcp);
    while stream.conn.is_handshaking() {
        stream
            .conn
            .complete_io(&mut stream.sock)
            .map_err(|e| format!("handshake: {e}"))?;
    }
    Ok(stream)
}

/// The leaf certificate the server presented.
fn served(stream: &TlsStream) -> Vec<u8> {
    stream.conn.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate in a PEM file.
fn leaf_in(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// One keep-alive request on an open connection.
fn request_on(stream: &mut TlsStream, host: &str, path: &str) -> http::Response {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").unwrap();
    stream.flush().unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        if let Ok(response) = http::parse(&buffer, false) {
            let complete = response
                .header("content-length")
                .and_then(|l| l.parse::<usize>().ok())
                .is_some_and(|l| response.body.len() == l);
            if complete {
                return response;
            }
        }
        let n = stream.read(&mut chunk).expect("read the response");
        assert!(
            n > 0,
            "closed before a whole response: {}",
            String::from_utf8_lossy(&buffer)
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// A CA for certificate files the topology is configured with.
struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: PathBuf,
}

impl TestCa {
    fn new(dir: &Path) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test CA");
        let pem = dir.join("test-ca.pem");
        std::fs::write(&pem, params.self_signed(&key).unwrap().pem()).unwrap();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes `name.pem` and `name.key` into `dir` for `names`, each file replaced atomically
    /// (as certbot or an operator's `mv` would).
    fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{file}.pem")),
            dir.join(format!("{file}.key")),
        );
        for (path, text) in [(&key_path, key.serialize_pem()), (&cert_path, cert.pem())] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
        (cert_path, key_path)
    }
}

#[test]
fn certificates_by_sni_replaced_without_dropping_connections() {
    let net = 52;
    let mut topology = Topology::write(EXE, "tls-sni", net, "");
    let dir = topology.state_dir().parent().unwrap().to_path_buf();
    let ca = TestCa::new(&dir);
    let (a_cert, a_key) = ca.issue(&dir, "a", &["a.test"]);
    let (b_cert, b_key) = ca.issue(&dir, "b", &["*.b.test"]);
    // An open connection must outlive the waits below (the lb closes idle ones after the header
    // timeout).
    let config = toml(net, 1, "[lb.timeouts]\nclient_header = \"60s\"").replace(
        "[lb.tls]\nredirect_http = false\n",
        &format!(
            "[lb.tls]\ncert = \"{}\"\nkey = \"{}\"\n[[lb.tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            a_cert.display(),
            a_key.display(),
            b_cert.display(),
            b_key.display()
        ),
    );
    std::fs::write(dir.join("webstack.toml"), config).unwrap();
    topology.restart();
    let https = SocketAddr::from(([127, 0, net, 10], 8443));
    let roots = [ca.pem.as_path()];

    // SNI picks the certificate; no SNI gets the first configured.
    let b = tls_connect(https, "api.b.test", &roots, true).unwrap();
    assert_eq!(served(&b), leaf_in(&b_cert), "*.b.test for api.b.test");
    let a = tls_connect(https, "a.test", &roots, true).unwrap();
    assert_eq!(served(&a), leaf_in(&a_cert));
    let no_sni = tls_connect(https, "a.test", &roots, false).unwrap();
    assert_eq!(served(&no_sni), leaf_in(&a_cert), "the default certificate");
    assert_eventually!(
        status_text(&topology).contains("*.b.test") && status_text(&topology).contains("a.test"),
        Duration::from_secs(10),
        "status lists every certificate: {}",
        status_text(&topology)
    );

    // An open connection, then a new certificate for a.test on disk.
    let mut old = tls_connect(https, "a.test", &roots, true).unwrap();
    assert_eq!(
        request_on(&mut old, "a.test", "/static/robots.txt").status,
        200
    );
    let old_leaf = served(&old);
    ca.issue(&dir, "a", &["a.test", "a2.test"]);
    assert_eventually!(
        tls_connect(https, "a2.test", &roots, true).is_ok_and(|s| served(&s) == leaf_in(&a_cert)),
        Duration::from_secs(15),
        "the new certificate serves new handshakes:\n{}",
        topology.log("lb-01", "lb")
    );
    let again = request_on(&mut old, "a.test", "/static/robots.txt");
    assert_eq!(again.status, 200, "the old connection keeps working");
    assert_eq!(served(&old), old_leaf);

    // A broken file: logged, and the previous certificate stays in service.
    let b_leaf = leaf_in(&b_cert);
    std::fs::write(&b_cert, "not a certificate").unwrap();
    assert_eventually!(
        topology
            .log("lb-01", "lb")
            .contains("the previous one stays in service"),
        Duration::from_secs(15),
        "{}",
        topology.log("lb-01", "lb")
    );
    let b = tls_connect(https, "api.b.test", &roots, true).unwrap();
    assert_eq!(served(&b), b_leaf);

    // SIGHUP to `up` reaches the lb, which reloads everything.
    let up = nix::unistd::Pid::from_raw(topology.up_pid().unwrap() as i32);
    nix::sys::signal::kill(up, nix::sys::signal::Signal::SIGHUP).unwrap();
    assert_eventually!(
        topology
            .log("lb-01", "lb")
            .contains("SIGHUP: reloading certificates"),
        Duration::from_secs(10),
        "{}\n{}",
        topology.up_log(),
        topology.log("lb-01", "lb")
    );
    assert!(
        topology
            .up_log()
            .contains("SIGHUP: certificates reloading on 1 lb")
    );
    assert_eq!(
        request_on(&mut old, "a.test", "/").status,
        200,
        "still the same connection"
    );
}

#[test]
fn acme_certificate_from_pebble() {
    let net = 53;
    let mut topology = Topology::write(EXE, "tls-acme", net, "");
    let dir = topology.state_dir().parent().unwrap().to_path_buf();
    let pebble = Pebble::start(&dir.join("pebble"), net, 8080);
    // Two lbs share the site's address: the holder orders, both serve what it gets.
    let config = toml_with_two_lbs(net, 1, "").replace(
        "redirect_http = false\n",
        &format!(
            "redirect_http = false\n[lb.tls.acme]\ndirectory = \"{}\"\nca_cert = \"{}\"\ncontact = [\"ops@foobar.com\"]\nagree_terms = true\n",
            pebble.directory(),
            pebble.https_ca().display()
        ),
    );
    std::fs::write(dir.join("webstack.toml"), config).unwrap();
    topology.restart();

    let acme_cert = topology.state_dir().join("tls/acme/site.pem");
    assert_eventually!(
        acme_state(&topology) == "valid",
        Duration::from_secs(60),
        "an ACME certificate:\n{}\npebble:\n{}",
        lb_logs(&topology),
        pebble.log()
    );
    // Validated over HTTP-01 through our lb, issued by pebble's root, and served.
    assert!(
        pebble.log().contains("/.well-known/acme-challenge/"),
        "{}",
        pebble.log()
    );
    let https = SocketAddr::from(([127, 0, net, 10], 8443));
    let root = pebble.issuing_root();
    let mut stream = tls_connect(https, "www.foobar.com", &[root.as_path()], true).unwrap();
    assert_eq!(served(&stream), leaf_in(&acme_cert));
    assert_eq!(
        request_on(&mut stream, "www.foobar.com", "/static/robots.txt").status,
        200
    );
    // The standby loads the same certificate (its own address), and did not order one.
    for own in [8, 9] {
        let addr = SocketAddr::from(([127, 0, net, own], 8443));
        assert_eventually!(
            tls_connect(addr, "www.foobar.com", &[root.as_path()], true)
                .is_ok_and(|s| served(&s) == leaf_in(&acme_cert)),
            Duration::from_secs(10),
            "the lb on {addr} serves the ACME certificate"
        );
    }
    assert_eq!(pebble.log().matches("Issued certificate").count(), 1);
    use std::os::unix::fs::PermissionsExt;
    for secret in ["tls/acme/site.key", "tls/acme/account.json"] {
        let mode = std::fs::metadata(topology.state_dir().join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret}");
    }
    let status = status_text(&topology);
    assert!(
        status.contains("acme: valid")
            && status.contains("acme: standby")
            && status.contains("tls/acme/site.pem"),
        "{status}"
    );

    // A restart reuses the account and the certificate: no new order.
    let issued = std::fs::read(&acme_cert).unwrap();
    topology.stop();
    topology.restart();
    assert_eventually!(
        acme_state(&topology) == "valid",
        Duration::from_secs(20),
        "{}",
        lb_logs(&topology)
    );
    assert_eq!(
        std::fs::read(&acme_cert).unwrap(),
        issued,
        "the same certificate"
    );
    assert_eq!(
        pebble.log().matches("Issued certificate").count(),
        1,
        "{}",
        pebble.log()
    );

    // The CA forgets the account (pebble keeps no state across restarts) while a certificate
    // is due: the stored account is dropped and a new one registered, not every order failed.
    topology.stop();
    drop(pebble);
    let account = topology.state_dir().join("tls/acme/account.json");
    let old_account = std::fs::read(&account).unwrap();
    for file in ["tls/acme/site.pem", "tls/acme/site.key"] {
        std::fs::remove_file(topology.state_dir().join(file)).unwrap();
    }
    let pebble = Pebble::start(&dir.join("pebble"), net, 8080);
    topology.restart();
    assert_eventually!(
        acme_state(&topology) == "valid",
        Duration::from_secs(60),
        "a certificate with a new account:\n{}\npebble:\n{}",
        lb_logs(&topology),
        pebble.log()
    );
    assert_ne!(std::fs::read(&account).unwrap(), old_account);
    assert!(
        lb_logs(&topology).contains("the CA does not know the stored account"),
        "{}",
        lb_logs(&topology)
    );
    let root = pebble.issuing_root();
    let stream = tls_connect(https, "www.foobar.com", &[root.as_path()], true).unwrap();
    assert_eq!(served(&stream), leaf_in(&acme_cert));
}

/// Both lbs' logs: either may be the one that orders.
fn lb_logs(topology: &Topology) -> String {
    topology.log("lb-01", "lb") + &topology.log("lb-02", "lb")
}

#[test]
fn acme_failures_are_retried_and_reported_while_the_local_ca_serves() {
    let net = 54;
    let mut topology = Topology::write(EXE, "tls-acme-down", net, "");
    let dir = topology.state_dir().parent().unwrap().to_path_buf();
    // A directory where nothing listens.
    let config = toml(net, 1, "").replace(
        "redirect_http = false\n",
        &format!(
            "redirect_http = false\n[lb.tls.acme]\ndirectory = \"https://127.0.{net}.1:14000/dir\"\nagree_terms = true\n"
        ),
    );
    std::fs::write(dir.join("webstack.toml"), config).unwrap();
    topology.restart();
    assert_eventually!(
        acme_state(&topology) == "retrying",
        Duration::from_secs(30),
        "{}",
        topology.log("lb-01", "lb")
    );
    let log = topology.log("lb-01", "lb");
    assert!(
        log.contains("ACME: no certificate") && log.contains("retry_in"),
        "{log}"
    );
    let status = status_text(&topology);
    assert!(
        status.contains("acme: retrying") && status.contains("failed order"),
        "{status}"
    );
    // HTTPS works meanwhile, with the local CA.
    let ca = topology.state_dir().join("tls/ca.pem");
    let https = SocketAddr::from(([127, 0, net, 10], 8443));
    let mut stream = tls_connect(https, "www.foobar.com", &[ca.as_path()], true).unwrap();
    assert_eq!(
        request_on(&mut stream, "www.foobar.com", "/static/robots.txt").status,
        200
    );
}

#[test]
fn an_idle_http2_connection_is_closed_with_a_goaway() {
    use webstack_testkit::backend::Backend;
    let _backend = Backend::start(([127, 0, 55, 11], 8000).into(), "web-01");
    let config = toml(55, 1, "").replace("[lb]\n", "[lb]\n[lb.timeouts]\nclient_header = \"1s\"\n");
    let mut topology = Topology::write(EXE, "tls-h2-idle", 55, &config);
    let admin = topology.lb_admin();
    topology.run_role("lb-01", "lb", admin);
    let ca = topology.state_dir().join("tls/ca.pem");
    let addr: SocketAddr = ([127, 0, 55, 10], 8443).into();
    let mut stream = tls_connect_alpn(addr, "www.foobar.com", &[&ca], true, b"h2").unwrap();
    assert_eq!(stream.conn.alpn_protocol(), Some(&b"h2"[..]));
    // The client preface and an empty SETTINGS frame, then nothing: no stream is ever opened.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .unwrap();
    stream.flush().unwrap();
    // Frames until a GOAWAY (type 7), within the 10 s read timeout.
    let mut goaway = false;
    let mut header = [0u8; 9];
    while !goaway {
        if stream.read_exact(&mut header).is_err() {
            break;
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).unwrap();
        goaway = header[3] == 7;
        if goaway {
            assert_eq!(&payload[4..8], &[0, 0, 0, 0], "GOAWAY with NO_ERROR");
        }
        if header[3] == 4 && header[4] & 1 == 0 {
            // Acknowledge the server's SETTINGS, as a client must.
            stream.write_all(b"\0\0\0\x04\x01\0\0\0\0").unwrap();
            stream.flush().unwrap();
        }
    }
    assert!(goaway, "the lb sent GOAWAY to an idle HTTP/2 connection");
}

/// The lb's HTTP/2 server against an independent implementation, Python's h2 (Debian's
/// python3-h2; `tests/h2/interop.py`): twenty streams at once through a 1000-byte window, an
/// upload three times the lb's windows, a stream reset and the next one answered, PING, and the
/// client's GOAWAY.
#[test]
fn http2_interop_with_an_independent_client() {
    let net = 70;
    let topology = Topology::start(EXE, "tls-h2-interop", net, &toml(net, 2, ""));
    let css = std::fs::metadata(webstack_testkit::site_dir().join("static/style.css"))
        .unwrap()
        .len();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/h2/interop.py");
    let out = Command::new("timeout")
        .args(["120", "/usr/bin/python3"])
        .arg(&script)
        .arg(topology.state_dir().join("tls/ca.pem"))
        .arg(format!("127.0.{net}.10"))
        .arg(css.to_string())
        .output()
        .expect("timeout and /usr/bin/python3 (apt-get install python3 python3-h2)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("ok: closed after the client's GOAWAY"),
        "{said}"
    );
}
