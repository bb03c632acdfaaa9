//! The load balancer role (HAProxy's job): an HTTP reverse proxy over the web servers with
//! health checks, weighted round-robin or leastconn, retries and backup servers.

pub mod balance;
mod config;
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

/// A configured load balancer, its metrics registered, ready to serve.
pub struct LoadBalancer {
    config: Config,
    servers: Vec<Arc<Server>>,
    metrics: metrics::Metrics,
}

impl LoadBalancer {
    pub fn new(config: Config, registry: &mut Registry) -> Self {
        let metrics = metrics::Metrics::register(registry);
        let servers: Vec<_> = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Server::new(i, s.clone(), metrics.server(&s.name))))
            .collect();
        Self {
            config,
            servers,
            metrics,
        }
    }

    /// Runs health checks on the current runtime and serves each listener on a worker thread of
    /// its own (one single-threaded runtime per listener, see `workers.rs`) until `shutdown`.
    /// Ready once every server has been checked once.
    /// `tls_listeners` (one per worker, possibly none) serve HTTPS with the certificate of
    /// `config.tls`.
    pub async fn run(
        self,
        listeners: Vec<std::net::TcpListener>,
        mut tls_listeners: Vec<std::net::TcpListener>,
        admin: Admin,
        shutdown: Shutdown,
    ) {
        let acceptor = match self
            .config
            .tls
            .as_ref()
            .map(|t| tls::server_config(&t.cert, &t.key))
            .transpose()
        {
            Ok(config) => config.map(tokio_rustls::TlsAcceptor::from),
            Err(error) => {
                tracing::error!(%error, "cannot load the TLS certificate; HTTPS is off");
                tls_listeners.clear();
                None
            }
        };
        let handshake_timeout = self
            .config
            .tls
            .as_ref()
            .map_or(std::time::Duration::from_secs(10), |t| t.handshake_timeout);
        let ready = admin.clone();
        let sweep = health::FirstSweep::new(self.servers.len(), move || ready.set_ready(true));
        let mut checkers = tokio::task::JoinSet::new();
        for server in &self.servers {
            checkers.spawn(health::run_checker(
                server.clone(),
                self.config.health.clone(),
                sweep.clone(),
            ));
        }
        let options = HttpOptions {
            header_read_timeout: self.config.timeouts.client_header,
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
            ));
            let (options, shutdown) = (options.clone(), shutdown.clone());
            let tls = tls_listeners
                .pop()
                .zip(acceptor.clone())
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
        checkers.abort_all();
        // Workers return once their connections drained (or the grace ran out).
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
                .await;
    }
}

mod workers {
    //! One worker: a current-thread tokio runtime serving one `SO_REUSEPORT` listener. No work
    //! stealing and no cross-thread wake-ups on the request path; the kernel spreads new
    //! connections across the workers' listeners.

    use std::convert::Infallible;
    use std::sync::Arc;
    use std::time::Duration;

    use webstack_common::shutdown::DRAIN_GRACE;
    use webstack_common::{HttpOptions, Shutdown, serve_http};

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
                        let service = |secure: bool| {
                let proxy = proxy.clone();
                move |peer| {
                    let proxy = proxy.clone();
                    hyper::service::service_fn(move |request| {
                        let proxy = proxy.clone();
                        async move { Ok::<_, Infallible>(proxy.handle(peer, request, secure).await) }
                    })
                }
            };
            let plain = serve_http(listener, options.clone(), service(false), shutdown.clone());
            let https = async {
                let Some((listener, acceptor, handshake_timeout)) = tls else { return };
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        crate::tls::serve_tls(listener, acceptor, handshake_timeout, options.clone(), service(true), shutdown.clone()).await
                    }
                    Err(error) => tracing::error!(%error, "cannot use the TLS listener"),
                }
            };
            tokio::join!(plain, https);
            // Connection tasks live on this runtime: keep it until they are done.
            shutdown.drain(DRAIN_GRACE).await;
        });
    }
}
