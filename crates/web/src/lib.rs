//! The web server role (Nginx's job): serves the site's static files and proxies everything
//! else to the application server of the same host over keep-alive, on the HTTP/1 core the lb
//! uses (`webstack_http1::server`): one task per client connection, no header map.

mod config;
mod guard;
mod h1;
mod statics;

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use webstack_common::access_log::AccessLog;
use webstack_common::forward::RequestIds;
use webstack_common::serve::accept_loop;
use webstack_common::{Admin, ConnectionLimit, Shutdown};
use webstack_http1::pool::Pool;

pub use config::Config;
/// Descriptors the open-file cache may hold at once.
pub const OPEN_FILES_MAX: usize = statics::CACHE_MAX;

/// A configured web server, ready to serve.
pub struct WebServer {
    config: Config,
    statics: statics::Statics,
    /// Connections to the one app server (index 0).
    pool: Pool,
    authority: String,
    /// `X-Served-By: <host>` when the host name is exposed.
    served_by: Option<String>,
    request_ids: RequestIds,
    metrics: metrics::Metrics,
    access_log: Option<AccessLog>,
}

mod metrics {
    //! The web server's metric names.
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    pub struct Labels {
        /// static or app
        pub handler: &'static str,
        /// 1xx .. 5xx
        pub code: &'static str,
    }

    const HANDLERS: [&str; 3] = ["guard", "static", "app"];
    const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

    /// Every handler x status class counter, fetched from the family once: the request path
    /// only increments an atomic.
    #[derive(Clone)]
    pub struct Metrics {
        responses: [[Counter; 5]; 3],
    }

    impl Metrics {
        pub fn register(registry: &mut Registry) -> Self {
            let family = Family::<Labels, Counter>::default();
            registry.sub_registry_with_prefix("webstack_web").register(
                "responses",
                "Responses by handler (path guard, static files or the app) and status class",
                family.clone(),
            );
            let responses = HANDLERS.map(|handler| {
                CLASSES.map(|code| family.get_or_create(&Labels { handler, code }).clone())
            });
            Self { responses }
        }

        pub fn record(&self, handler: &'static str, status: u16) {
            let h = HANDLERS.iter().position(|&h| h == handler).unwrap_or(2);
            self.responses[h][usize::from(status / 100).clamp(1, 5) - 1].inc();
        }
    }
}

impl WebServer {
    /// Fails when the access log cannot be opened.
    pub fn new(config: Config, registry: &mut Registry) -> std::io::Result<Self> {
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| log.open())
            .transpose()?;
        let served_by = config
            .expose_server_name
            .then(|| config.host_name.clone())
            .filter(|name| http::HeaderValue::from_str(name).is_ok());
        Ok(Self {
            statics: statics::Statics::new(
                &config.static_root,
                &config.cache_control,
                config.file_check_interval,
            ),
            pool: Pool::new(1, config.app_connect_timeout),
            authority: config.app_addr.to_string(),
            metrics: metrics::Metrics::register(registry),
            request_ids: RequestIds::default(),
            served_by,
            access_log,
            config,
        })
    }

    /// Serves `listener` until `shutdown`; ready as soon as it accepts. Connections run on the
    /// process's multi-thread runtime (`web.threads` workers: by default its share of the
    /// host's cores, next to the app's), sharing one pool of app connections: measured against
    /// the lb's model (a current-thread runtime and a pool per worker), it proxied to the app
    /// with less CPU here, where the web server, the app and the clients share the cores
    /// (bench/results/2026-11-30-web.md).
    pub async fn run(self, listener: TcpListener, admin: Admin, shutdown: Shutdown) {
        let limit = ConnectionLimit::new(self.config.maxconn);
        let this = Arc::new(self);
        admin.set_ready(true);
        accept_loop(
            listener,
            &limit,
            None,
            shutdown,
            |stream, peer, shutdown| this.clone().serve(stream, peer, shutdown),
        )
        .await;
        admin.set_ready(false);
    }
}
