//! TLS termination: rustls settings (TLS 1.2 and 1.3 only, AEAD suites with forward secrecy
//! only, ALPN h2 and http/1.1, session tickets and a session cache), the certificates picked by
//! SNI and swapped without a restart (`store`), where they come from (`local_ca`, `acme`), and
//! the TLS accept loop, which serves HTTP/2 or HTTP/1.1 as ALPN decided.

pub mod acme;
mod local_ca;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use webstack_common::Shutdown;
use webstack_common::serve::accept_loop;

pub use local_ca::LocalCa;
pub use store::{CertStore, CertificateInfo, check as check_certificate};

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
    #[error("{path}: not a valid X.509 certificate: {message}")]
    BadCertificate { path: PathBuf, message: String },
    #[error("{path}: not a PEM private key: {message}")]
    BadKey { path: PathBuf, message: String },
    #[error("{key} is not the key of the certificate in {cert}: {source}")]
    KeyMismatch {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS settings rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

pub(crate) fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    webstack_common::files::write_atomic(path, text.as_bytes(), mode).map_err(|source| {
        TlsError::Write {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// The crypto provider for every TLS setting: ring's suites are all AEAD with (EC)DHE key
/// exchange (no CBC, no RSA key exchange).
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls server settings; `certificates` picks the certificate for each handshake.
pub fn server_config(certificates: Arc<CertStore>) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order (strongest first), not the client's: a client offering a weaker suite first
    // still gets the strongest both support (testssl's cipher_order check).
    config.ignore_client_order = true;
    // Resumption: stateless tickets (rotated) and a stateful cache for TLS 1.2 clients.
    config.ticketer = rustls::crypto::ring::Ticketer::new()?;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(16 * 1024);
    Ok(Arc::new(config))
}

/// Accepts TLS connections until `shutdown`, within `options`' connection limit and the
/// per-client limits (`limits::admit`, before the handshake: a PROXY header comes first):
/// handshake within `handshake_timeout`, then HTTP/2 (`webstack_http2`, each stream to the
/// handler `make_service` gives; closed when idle for the header timeout) when ALPN chose h2,
/// else HTTP/1.1 with `serve_h1`.
#[allow(clippy::too_many_arguments)]
pub async fn serve_tls<M, S, R, B, H, F>(
    listener: TcpListener,
    clients: Arc<crate::limits::ClientTable>,
    acceptor: TlsAcceptor,
    handshake_timeout: Duration,
    options: &webstack_common::HttpOptions,
    make_service: M,
    serve_h1: H,
    shutdown: Shutdown,
) where
    M: Fn(SocketAddr) -> S + Clone + Send + 'static,
    S: FnMut(webstack_http2::RequestHead, webstack_http2::RequestBody) -> R + Send + 'static,
    R: std::future::Future<Output = webstack_http2::Reply<B>> + Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
    H: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>, SocketAddr, Shutdown) -> F
        + Clone
        + Send
        + 'static,
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let idle = options.header_read_timeout;
    accept_loop(
        listener,
        &options.connections,
        options.share.clone(),
        shutdown,
        |stream, peer, conn_shutdown| {
            let (make_service, acceptor, serve_h1, clients) = (
                make_service.clone(),
                acceptor.clone(),
                serve_h1.clone(),
                clients.clone(),
            );
            async move {
                let Some((stream, peer, _counted)) =
                    crate::limits::admit(&clients, stream, peer, handshake_timeout).await
                else {
                    return;
                };
                let service = make_service(peer);
                let tls =
                    match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(error)) => {
                            return tracing::debug!(client = %peer, %error, "TLS handshake failed");
                        }
                        Err(_) => return tracing::debug!(client = %peer, "TLS handshake timed out"),
                    };
                if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                    let options = webstack_http2::Options {
                        idle,
                        ..Default::default()
                    };
                    let shutdown = async move { conn_shutdown.triggered().await };
                    webstack_http2::serve(tls, service, options, shutdown).await
                } else {
                    serve_h1(tls, peer, conn_shutdown).await
                }
            }
        },
    )
    .await
}
