//! The load balancer role (HAProxy's job): an HTTP reverse proxy over the web servers with
//! health checks, weighted round-robin or leastconn, retries and backup servers.

pub mod balance;
mod config;
pub mod health;
mod metrics;
mod proxy;
mod server;

use std::convert::Infallible;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use webstack_common::{Admin, HttpOptions, Shutdown, serve_http};

pub use config::*;
pub use proxy::Proxy;
pub use server::Server;

/// A configured load balancer, its metrics registered, ready to serve.
pub struct LoadBalancer {
    config: Config,
    servers: Vec<Arc<Server>>,
    proxy: Arc<Proxy>,
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
        let proxy = Arc::new(Proxy::new(config.clone(), &servers, metrics));
        Self {
            config,
            servers,
            proxy,
        }
    }

    /// Runs health checks and serves `listener` until `shutdown`. Ready once every server has
    /// been checked once.
    pub async fn run(self, listener: TcpListener, admin: Admin, shutdown: Shutdown) {
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
        let proxy = self.proxy;
        serve_http(
            listener,
            options,
            move |peer| {
                let proxy = proxy.clone();
                hyper::service::service_fn(move |request| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(peer, request).await) }
                })
            },
            shutdown,
        )
        .await;
        admin.set_ready(false);
        checkers.abort_all();
    }
}
