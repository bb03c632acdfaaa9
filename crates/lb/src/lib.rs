//! The load balancer role (HAProxy's job): an HTTP reverse proxy over the web servers with
//! health checks, weighted round-robin or leastconn, retries and backup servers.

pub mod balance;
mod config;
mod h1;
pub mod health;
mod metrics;
mod proxy;
mod server;
pub mod tls;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use webstack_common::{Admin, HttpOptions, Shutdown};

pub use config::*;
pub use proxy::Proxy;
pub use server::Server;

/// A configured load balancer, its metrics registered and certificates loaded, ready to serve.
pub struct LoadBalancer {
    config: Config,
    servers: Vec<Arc<Server>>,
    metrics: metrics::Metrics,
    tls: Option<Tls>,
}

/// HTTPS state shared by the workers, the certificate watcher and the ACME client.
struct Tls {
    certificates: Arc<tls::CertStore>,
    acceptor: tokio_rustls::TlsAcceptor,
    acme: Option<Arc<tls::acme::AcmeClient>>,
    challenges: Arc<tls::acme::Challenges>,
}

/// How often certificate files are checked for changes.
const CERTIFICATE_POLL: std::time::Duration = std::time::Duration::from_secs(2);

impl LoadBalancer {
    /// Fails when TLS is on and a configured certificate does not load (HAProxy refuses to
    /// start on a bad certificate too: better than serving without one).
    pub fn new(config: Config, registry: &mut Registry) -> Result<Self, tls::TlsError> {
        let metrics = metrics::Metrics::register(registry);
        let servers: Vec<_> = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Server::new(i, s.clone(), metrics.server(&s.name))))
            .collect();
        let tls = match &config.tls {
            Some(settings) => {
                let certificates = Arc::new(tls::CertStore::load(settings.certificates.clone())?);
                let acceptor = tls::server_config(certificates.clone())?.into();
                let challenges = Arc::new(tls::acme::Challenges::default());
                let acme = settings.acme.clone().map(|acme| {
                    Arc::new(tls::acme::AcmeClient::new(
                        acme,
                        certificates.clone(),
                        challenges.clone(),
                    ))
                });
                Some(Tls {
                    certificates,
                    acceptor,
                    acme,
                    challenges,
                })
            }
            None => None,
        };
        Ok(Self {
            config,
            servers,
            metrics,
            tls,
        })
    }

    /// Runs health checks, the certificate watcher and the ACME client on the current runtime,
    /// and serves each listener on a worker thread of its own (one single-threaded runtime per
    /// listener, see `workers`) until `shutdown`. Ready once every server has been checked once.
    /// `tls_listeners` (one per worker, possibly none) serve HTTPS.
    pub async fn run(
        self,
        listeners: Vec<std::net::TcpListener>,
        mut tls_listeners: Vec<std::net::TcpListener>,
        admin: Admin,
        shutdown: Shutdown,
    ) {
        let handshake_timeout = self
            .config
            .tls
            .as_ref()
            .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout);
        let ready = admin.clone();
        let sweep = health::FirstSweep::new(self.servers.len(), move || ready.set_ready(true));
        let mut background = tokio::task::JoinSet::new();
        for server in &self.servers {
            background.spawn(health::run_checker(
                server.clone(),
                self.config.health.clone(),
                sweep.clone(),
            ));
        }
        if let Some(tls) = &self.tls {
            background.spawn(tls.certificates.clone().watch(CERTIFICATE_POLL));
            if let Some(acme) = &tls.acme {
                background.spawn(acme.clone().run());
            }
            background.spawn(publish_tls_status(
                tls.certificates.clone(),
                tls.acme.clone(),
                admin.clone(),
            ));
        }
        // One connection limit for every worker and both ports (HAProxy's frontend maxconn).
        let options = HttpOptions {
            header_read_timeout: self.config.timeouts.client_header,
            connections: webstack_common::ConnectionLimit::new(self.config.maxconn),
            ..HttpOptions::default()
        };
        let balancer = Arc::new(balance::Balancer::new(self.config.algorithm, &self.servers));
        let mut threads = Vec::new();
        for (n, listener) in listeners.into_iter().enumerate() {
            // Each worker has its own proxy: its own keep-alive pool, so a request and its
            // upstream connection stay on one thread. Health and load counters are shared.
            let proxy = Arc::new(Proxy::new(
                self.config.clone(),
                balancer.clone(),
                self.metrics.clone(),
                self.tls
                    .as_ref()
                    .map(|t| (t.certificates.clone(), t.challenges.clone())),
            ));
            let (options, shutdown) = (options.clone(), shutdown.clone());
            let tls = tls_listeners
                .pop()
                .zip(self.tls.as_ref().map(|t| t.acceptor.clone()))
                .map(|(l, a)| (l, a, handshake_timeout));
            let spawned = std::thread::Builder::new()
                .name(format!("lb-worker-{n}"))
                .spawn(move || {
                    workers::serve_on_own_runtime(listener, tls, options, proxy, shutdown)
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(error) => tracing::error!(%error, "cannot start a worker thread"),
            }
        }
        shutdown.triggered().await;
        admin.set_ready(false);
        background.abort_all();
        // Workers return once their connections drained (or the grace ran out).
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
                .await;
    }
}

/// Keeps the admin `/status` document current: each certificate's names and expiry, and the
/// ACME client's state (`webstack status` shows them).
async fn publish_tls_status(
    certificates: Arc<tls::CertStore>,
    acme: Option<Arc<tls::acme::AcmeClient>>,
    admin: Admin,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        let list = certificates.certificates();
        let summary = list
            .iter()
            .map(|c| {
                format!(
                    "{} until {} ({})",
                    c.names.first().map_or("-", String::as_str),
                    c.expires.get(..10).unwrap_or(&c.expires),
                    c.origin.as_str()
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let certificates_json: Vec<_> = list
            .iter()
            .map(|c| {
                let mut value = serde_json::to_value(c).unwrap_or_default();
                value["days_left"] = c.days_left().into();
                value
            })
            .collect();
        admin.set_status(serde_json::json!({
            "summary": format!("tls: {summary}"),
            "certificates": certificates_json,
            "acme": acme.as_ref().map(|a| a.status()),
        }));
    }
}

mod workers {
    //! One worker: a current-thread tokio runtime serving one `SO_REUSEPORT` listener. No work
    //! stealing and no cross-thread wake-ups on the request path; the kernel spreads new
    //! connections across the workers' listeners.

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use webstack_common::serve::accept_loop;
    use webstack_common::shutdown::DRAIN_GRACE;
    use webstack_common::{HttpOptions, Shutdown};

    use crate::Proxy;

    pub fn serve_on_own_runtime(
        listener: std::net::TcpListener,
        tls: Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor, Duration)>,
        options: HttpOptions,
        proxy: Arc<Proxy>,
        shutdown: Shutdown,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return tracing::error!(%error, "cannot start a worker runtime"),
        };
        runtime.block_on(async move {
            let listener = match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => listener,
                Err(error) => return tracing::error!(%error, "cannot use the listener"),
            };
            // HTTP/2 (TLS with ALPN h2 only) goes through hyper and `Proxy::handle`.
            let h2_service = |peer| {
                let proxy = proxy.clone();
                hyper::service::service_fn(move |request| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(peer, request).await) }
                })
            };
            let limit = options.connections.clone();
            let plain = accept_loop(
                listener,
                &limit,
                shutdown.clone(),
                |stream, peer, shutdown| {
                    proxy
                        .clone()
                        .serve_h1(stream, peer, false, options.clone(), shutdown)
                },
            );
            let https_h1 = {
                let (proxy, options) = (proxy.clone(), options.clone());
                move |stream, peer, shutdown| {
                    proxy
                        .clone()
                        .serve_h1(stream, peer, true, options.clone(), shutdown)
                }
            };
            let https = async {
                let Some((listener, acceptor, handshake_timeout)) = tls else {
                    return;
                };
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => return tracing::error!(%error, "cannot use the TLS listener"),
                };
                crate::tls::serve_tls(
                    listener,
                    acceptor,
                    handshake_timeout,
                    &options,
                    h2_service,
                    https_h1,
                    shutdown.clone(),
                )
                .await
            };
            tokio::join!(plain, https);
            // Connection tasks live on this runtime: keep it until they are done.
            shutdown.drain(DRAIN_GRACE).await;
        });
    }
}
