//! The web server role (Nginx's job): serves the site's static files and proxies everything
//! else to the application server of the same host over keep-alive.

mod config;
mod guard;
mod proxy;
mod statics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use webstack_common::forward::{X_REQUEST_ID, X_SERVED_BY};
use webstack_common::serve::BoxBody;
use webstack_common::{Admin, HttpOptions, Shutdown, serve_http};

pub use config::Config;

/// A configured web server, ready to serve.
pub struct WebServer {
    config: Config,
    statics: statics::Statics,
    proxy: proxy::AppProxy,
    served_by: Option<HeaderValue>,
    metrics: metrics::Metrics,
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
    pub fn new(config: Config, registry: &mut Registry) -> Self {
        let served_by = config
            .expose_server_name
            .then(|| HeaderValue::from_str(&config.host_name).ok())
            .flatten();
        Self {
            statics: statics::Statics::new(&config),
            proxy: proxy::AppProxy::new(&config),
            metrics: metrics::Metrics::register(registry),
            served_by,
            config,
        }
    }

    /// Serves `listener` until `shutdown`; ready as soon as it accepts.
    pub async fn run(self, listener: TcpListener, admin: Admin, shutdown: Shutdown) {
        let options = HttpOptions {
            header_read_timeout: self.config.client_header_timeout,
            connections: webstack_common::ConnectionLimit::new(self.config.maxconn),
            ..HttpOptions::default()
        };
        let this = Arc::new(self);
        admin.set_ready(true);
        serve_http(
            listener,
            options,
            move |peer| {
                let this = this.clone();
                hyper::service::service_fn(move |request| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.handle(peer, request).await) }
                })
            },
            shutdown,
        )
        .await;
        admin.set_ready(false);
    }

    /// One request: refuse unsafe paths, serve a static file, or proxy to the app.
    pub async fn handle(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<BoxBody> {
        let started = Instant::now();
        let method = request.method().clone();
        // A reference-counted copy of the URI (no allocation) so the path outlives `request`.
        let uri = request.uri().clone();
        let path = uri.path();
        let request_id = request.headers().get(&X_REQUEST_ID).cloned();

        let (handler, mut response) = if let Err(reason) = guard::check_path(request.uri()) {
            tracing::debug!(%path, reason, "refused request path");
            (
                "guard",
                plain(StatusCode::BAD_REQUEST, "400 Bad Request: invalid path.\n"),
            )
        } else if let Some(file_path) = statics::static_path(path) {
            ("static", self.statics.serve(request, file_path).await)
        } else {
            ("app", self.proxy.forward(peer, request).await)
        };

        let status = response.status().as_u16();
        if let Some(name) = &self.served_by {
            response.headers_mut().insert(&X_SERVED_BY, name.clone());
        }
        self.metrics.record(handler, status);
        if self.config.access_log {
            tracing::info!(
                target: "access",
                client = %peer.ip(),
                method = %method,
                path = %path,
                status,
                handler,
                duration_ms = started.elapsed().as_secs_f64() * 1000.0,
                request_id = request_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
            );
        }
        response
    }
}

/// A short plain-text response of our own.
pub(crate) fn plain(status: StatusCode, text: impl Into<Bytes>) -> Response<BoxBody> {
    use http_body_util::BodyExt;
    let body = Full::new(text.into());
    let mut response = Response::new(body.map_err(|never| match never {}).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
