//! TLS termination: the certificate (PEM files, or a local CA and a leaf generated on first
//! start), rustls settings (TLS 1.2 and 1.3 only, AEAD suites with forward secrecy only, ALPN
//! h2 and http/1.1, session tickets and a session cache) and the TLS accept loop, which serves
//! HTTP/2 or HTTP/1.1 as ALPN decided.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use webstack_common::serve::{accept_loop, serve_connection, serve_connection_h2};
use webstack_common::{HttpOptions, Shutdown};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate in it")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS settings rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the local CA and the site's certificate live in the state dir.
pub struct LocalCa {
    pub dir: PathBuf,
}

impl LocalCa {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("tls"),
        }
    }

    /// The CA certificate clients trust (`curl --cacert`).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub fn site_cert(&self) -> PathBuf {
        self.dir.join("site.pem")
    }

    pub fn site_key(&self) -> PathBuf {
        self.dir.join("site.key")
    }

    /// Creates the CA and a leaf for `names` on first use; later starts reuse them, unless the
    /// names changed (then only a new leaf is issued).
    pub fn ensure(&self, names: &[String]) -> Result<(), TlsError> {
        fs::create_dir_all(&self.dir).map_err(|source| TlsError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let names_file = self.dir.join("site.names");
        let wanted = names.join("\n");
        let current = fs::read_to_string(&names_file).unwrap_or_default();
        if self.site_cert().exists()
            && self.site_key().exists()
            && self.ca_cert().exists()
            && current == wanted
        {
            return Ok(());
        }
        let ca_key_path = self.dir.join("ca.key");
        let ca_params = ca_params()?;
        let ca_key = match fs::read_to_string(&ca_key_path) {
            Ok(pem) if self.ca_cert().exists() => rcgen::KeyPair::from_pem(&pem)?,
            _ => {
                let key = rcgen::KeyPair::generate()?;
                let cert = ca_params.self_signed(&key)?;
                write_file(&ca_key_path, &key.serialize_pem(), 0o600)?;
                write_file(&self.ca_cert(), &cert.pem(), 0o644)?;
                key
            }
        };
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let mut leaf = rcgen::CertificateParams::new(names.to_vec())?;
        leaf.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut leaf, 397);
        let leaf_key = rcgen::KeyPair::generate()?;
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
        let ca_pem = fs::read_to_string(self.ca_cert()).map_err(|source| TlsError::Read {
            path: self.ca_cert(),
            source,
        })?;
        write_file(&self.site_key(), &leaf_key.serialize_pem(), 0o600)?;
        write_file(
            &self.site_cert(),
            &format!("{}{}", leaf_cert.pem(), ca_pem),
            0o644,
        )?;
        write_file(&names_file, &wanted, 0o644)?;
        Ok(())
    }
}

fn ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "webstack local CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, 3650);
    Ok(params)
}

/// Valid from yesterday (clock skew) to `days` from now.
fn set_validity(params: &mut rcgen::CertificateParams, days: u64) {
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let date = |day: u64| {
        let (y, m, d) = civil_from_days(day as i64);
        rcgen::date_time_ymd(y, m, d)
    };
    params.not_before = date(today.saturating_sub(1));
    params.not_after = date(today + days);
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i32, u8, u8) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    ((y + i64::from(m <= 2)) as i32, m as u8, d as u8)
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    webstack_common::files::write_atomic(path, text.as_bytes(), mode).map_err(|source| {
        TlsError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// rustls server settings from a PEM chain and key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Read {
            path: cert.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read {
            path: cert.to_path_buf(),
            source: std::io::Error::other(e.to_string()),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::BadKey {
        path: key.to_path_buf(),
        message: e.to_string(),
    })?;
    // ring's suites are all AEAD with (EC)DHE key exchange: no CBC, no RSA key exchange.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order (strongest first), not the client's: a client offering a weaker suite first
    // still gets the strongest both support (testssl's cipher_order check).
    config.ignore_client_order = true;
    // Resumption: stateless tickets (rotated) and a stateful cache for TLS 1.2 clients.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(config))
}

/// Accepts TLS connections until `shutdown`: handshake within `handshake_timeout`, then HTTP/2
/// when ALPN chose h2, else HTTP/1.1.
pub async fn serve_tls<M, S, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    options: HttpOptions,
    make_service: M,
    shutdown: Shutdown,
) where
    M: Fn(SocketAddr) -> S,
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    accept_loop(listener, shutdown, |stream, peer, conn_shutdown| {
        let (service, acceptor, options) = (make_service(peer), acceptor.clone(), options.clone());
        async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    return tracing::debug!(client = %peer, %error, "TLS handshake failed");
                }
                Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_connection_h2(tls, service, conn_shutdown).await
            } else {
                serve_connection(tls, service, options, conn_shutdown).await
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn local_ca_is_created_once_and_serves() {
        let dir = std::env::temp_dir().join(format!("webstack-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let ca = LocalCa::new(&dir);
        ca.ensure(&["www.example.test".into(), "example.test".into()])
            .unwrap();
        let first = fs::read(ca.ca_cert()).unwrap();
        ca.ensure(&["www.example.test".into(), "example.test".into()])
            .unwrap();
        assert_eq!(first, fs::read(ca.ca_cert()).unwrap(), "reused");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(ca.site_key()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(dir.join("tls/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let config = server_config(&ca.site_cert(), &ca.site_key()).unwrap();
        assert!(config.ignore_client_order, "the server's cipher order");
        assert_eq!(
            config.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        // New names: a new leaf from the same CA.
        ca.ensure(&["other.test".into()]).unwrap();
        assert_eq!(first, fs::read(ca.ca_cert()).unwrap());
        assert!(matches!(
            server_config(&ca.ca_cert(), &ca.ca_cert()),
            Err(TlsError::BadKey { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
