//! The admin listener every role process serves: `/live` (the process runs), `/ready` (the role
//! can do its job: the LB after its first health sweep) and `/metrics`: OpenMetrics when the
//! scraper asks for it (Prometheus does), the classic text format otherwise (curl, promtool).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::metrics::Format;
use crate::{HttpOptions, Shutdown, serve_http};

/// Readiness flag and metrics registry of one role process.
#[derive(Clone)]
pub struct Admin {
    ready: Arc<AtomicBool>,
    registry: Arc<Registry>,
    /// Role-specific facts for `webstack status` (e.g. a db node's replication state).
    status: Arc<RwLock<serde_json::Value>>,
    /// Routes of the role's own (the lb's runtime API).
    extra: Option<Router>,
}

impl Admin {
    /// `registry` holds every metric the role registered before serving.
    /// `webstack_build_info` and the `process_*` families are added here.
    pub fn new(mut registry: Registry) -> Self {
        crate::metrics::register_process(&mut registry);
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            registry: Arc::new(registry),
            status: Arc::new(RwLock::new(serde_json::Value::Null)),
            extra: None,
        }
    }

    /// Adds the role's own routes next to `/live`, `/ready`, `/metrics` and `/status`.
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.extra = Some(routes);
        self
    }

    pub fn set_status(&self, status: serde_json::Value) {
        *self.status.write().unwrap_or_else(|e| e.into_inner()) = status;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The admin routes, without a socket (tests call it with `oneshot`).
    pub fn router(&self) -> Router {
        let common = Router::new()
            .route("/live", get(|| async { "live\n" }))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics))
            .route("/status", get(status))
            .with_state(self.clone());
        match &self.extra {
            Some(extra) => common.merge(extra.clone()),
            None => common,
        }
    }
}

async fn ready(State(admin): State<Admin>) -> impl IntoResponse {
    if admin.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn status(State(admin): State<Admin>) -> axum::Json<serde_json::Value> {
    axum::Json(
        admin
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

async fn metrics(State(admin): State<Admin>, headers: HeaderMap) -> impl IntoResponse {
    let format = Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    match format.encode(&admin.registry) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, format.content_type())],
            body,
        ),
        Err(error) => {
            tracing::error!(%error, "cannot encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain")],
                String::new(),
            )
        }
    }
}

/// Serves the admin routes on `listener` until `shutdown`.
pub async fn serve_admin(listener: TcpListener, admin: Admin, shutdown: Shutdown) {
    let router = admin.router();
    serve_http(
        listener,
        HttpOptions::default(),
        move |_| hyper_util::service::TowerToHyperService::new(router.clone()),
        shutdown,
    )
    .await
}
