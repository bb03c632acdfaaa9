//! A real ACME CA for tests: Debian's `pebble`, with `pebble-challtestsrv` as its DNS server
//! answering every name with the test's lb address, all on 127.0.`net`.1. Its HTTPS listener
//! uses a certificate from a throwaway CA made here; both processes stop when dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    dir: PathBuf,
    net: u8,
    children: Vec<Child>,
}

/// Where pebble's ACME directory listens.
const ACME_PORT: u16 = 14000;
/// Pebble's management interface (`/roots/0`: the root that signs issued certificates).
const MANAGEMENT_PORT: u16 = 15000;
const DNS_PORT: u16 = 8053;

impl Pebble {
    /// Starts pebble for a topology on 127.0.`net`.0/24 whose lb (`.10`) serves HTTP-01 on
    /// `http_port`. Files go to `dir`.
    pub fn start(dir: &Path, net: u8, http_port: u16) -> Pebble {
        std::fs::create_dir_all(dir).expect("pebble dir");
        let ip = format!("127.0.{net}.1");
        write_https_certificate(dir, &ip);
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("{ip}:{ACME_PORT}"),
                "managementListenAddress": format!("{ip}:{MANAGEMENT_PORT}"),
                "certificate": dir.join("pebble.pem"),
                "privateKey": dir.join("pebble.key"),
                "httpPort": http_port,
                "tlsPort": 5001,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("pebble config");
        let mut pebble = Pebble {
            dir: dir.to_path_buf(),
            net,
            children: Vec::new(),
        };
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("pebble log");
        let dns = Command::new("pebble-challtestsrv")
            .args([
                "-defaultIPv4",
                &format!("127.0.{net}.10"),
                "-defaultIPv6",
                "",
            ])
            .args(["-dns01", &format!("{ip}:{DNS_PORT}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("{ip}:8055")])
            .stdin(Stdio::null())
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err"))
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        pebble.children.push(dns);
        let server = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &format!("{ip}:{DNS_PORT}")])
            // No random validation delays, no random nonce rejections: a deterministic CA.
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdin(Stdio::null())
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err"))
            .spawn()
            .expect("pebble (apt-get install pebble)");
        pebble.children.push(server);
        for port in [ACME_PORT, DNS_PORT] {
            pebble.wait_for(port);
        }
        pebble
    }

    fn wait_for(&self, port: u16) {
        let addr = SocketAddr::from(([127, 0, self.net, 1], port));
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble not listening on {addr}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The ACME directory URL.
    pub fn directory(&self) -> String {
        format!("https://127.0.{}.1:{ACME_PORT}/dir", self.net)
    }

    /// The CA that signed pebble's own HTTPS certificate (`lb.tls.acme.ca_cert`).
    pub fn https_ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Fetches the root that signs the certificates pebble issues (it is new at every start).
    pub fn issuing_root(&self) -> PathBuf {
        let path = self.dir.join("issuing-root.pem");
        let out = Command::new("curl")
            .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
            .arg(self.https_ca())
            .arg(format!(
                "https://127.0.{}.1:{MANAGEMENT_PORT}/roots/0",
                self.net
            ))
            .arg("-o")
            .arg(&path)
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "pebble's root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        path
    }

    /// What pebble printed (its log, then its errors).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        read("pebble.log") + &read("pebble.err")
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            crate::topology::terminate(child);
        }
    }
}

/// A throwaway CA (`ca.pem`) and a certificate for `ip` signed by it (`pebble.pem`/`.key`).
fn write_https_certificate(dir: &Path, ip: &str) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "pebble test HTTPS CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec![ip.to_string(), "localhost".into()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write");
    std::fs::write(dir.join("pebble.pem"), leaf.pem()).expect("write");
    std::fs::write(dir.join("pebble.key"), key.serialize_pem()).expect("write");
}
