//! The application server role: the foobar.com application (HTML pages and a JSON API),
//! rendered from the site's templates.

mod config;
mod error;
pub mod metrics;
mod pages;
mod posts;
mod trace;
mod unix;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::net::TcpListener;
use webstack_common::{Admin, HttpOptions, Shutdown, serve_http};

pub use config::Config;
pub use error::AppError;
pub use unix::UnixSocket;

/// Loaded templates and settings, shared by every handler.
pub struct AppState {
    pub config: Config,
    templates: minijinja::Environment<'static>,
    /// The database router, when the topology has a database.
    db: Option<Arc<webstack_db::router::Router>>,
    metrics: metrics::Metrics,
    access_log: Option<webstack_common::access_log::AccessLog>,
}

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read templates in {path}: {source}")]
    ReadTemplates {
        path: String,
        source: std::io::Error,
    },
    #[error("template {name} is invalid: {source}")]
    BadTemplate {
        name: String,
        source: minijinja::Error,
    },
    #[error("template {0} is missing from the templates folder")]
    MissingTemplate(&'static str),
    #[error("{0}")]
    AccessLog(#[from] std::io::Error),
}

/// Templates every page needs; checked at startup so a broken deploy fails fast.
const REQUIRED_TEMPLATES: [&str; 3] = ["home.html", "post.html", "error.html"];

/// Largest accepted request body (a post is at most 5000 characters); larger gets 413.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Reads and compiles every `*.html` in `dir` and checks the ones every page needs are there:
/// what the app does at start, and `webstack check` before it.
pub fn load_templates(
    dir: &std::path::Path,
) -> Result<minijinja::Environment<'static>, StartError> {
    let mut templates = minijinja::Environment::new();
    let read_error = |source| StartError::ReadTemplates {
        path: dir.display().to_string(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(read_error)? {
        let path = entry.map_err(read_error)?.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !name.ends_with(".html") {
            continue;
        }
        let source = std::fs::read_to_string(&path).map_err(read_error)?;
        templates
            .add_template_owned(name.clone(), source)
            .map_err(|source| StartError::BadTemplate { name, source })?;
    }
    for name in REQUIRED_TEMPLATES {
        if templates.get_template(name).is_err() {
            return Err(StartError::MissingTemplate(name));
        }
    }
    Ok(templates)
}

impl AppState {
    /// Loads the templates, makes the database router and registers the app's metrics.
    pub fn load(
        config: Config,
        registry: &mut prometheus_client::registry::Registry,
    ) -> Result<Self, StartError> {
        let templates = load_templates(&config.templates_dir)?;
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| log.open())
            .transpose()?;
        let db = config.db.clone().map(webstack_db::router::Router::new);
        let metrics = metrics::Metrics::register(registry, db.clone());
        Ok(Self {
            config,
            templates,
            db,
            metrics,
            access_log,
        })
    }

    pub(crate) fn render(&self, name: &str, context: minijinja::Value) -> Result<String, AppError> {
        Ok(self.templates.get_template(name)?.render(context)?)
    }
}

/// The application's routes, without a socket (tests call them with `oneshot`).
pub fn router(state: Arc<AppState>) -> Router {
    let tracking = trace::Tracking {
        metrics: state.metrics.clone(),
        access_log: state.access_log.clone(),
        server_timing: state.config.server_timing,
    };
    Router::new()
        .route("/", get(pages::home))
        .route("/posts", post(pages::create_from_form))
        .route("/posts/{id}", get(pages::post_page))
        .route("/api/posts", get(pages::api_list).post(pages::api_create))
        .route("/api/posts/{id}", get(pages::api_get))
        .route("/api/whoami", get(pages::whoami))
        .route("/healthz", get(pages::healthz))
        .fallback(pages::not_found)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(tracking, trace::track))
        .with_state(state)
}

/// Serves the application on `listener` (and on `unix`, the socket of this host's web server)
/// until `shutdown`; the two share the connection limit.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    unix: Option<UnixSocket>,
    admin: Admin,
    shutdown: Shutdown,
) {
    let state = Arc::new(state);
    let mut background = Vec::new();
    if let Some(db) = state.db.clone() {
        // Know the cluster before the first request, then keep watching it.
        db.refresh().await;
        // The pools open while the first requests come (each connection is theirs once open).
        background.push(tokio::spawn({
            let db = db.clone();
            async move { db.warm().await }
        }));
        background.push(tokio::spawn(db.poll()));
    }
    let db = state.db.clone();
    let options = HttpOptions {
        connections: webstack_common::ConnectionLimit::new(state.config.maxconn),
        ..HttpOptions::default()
    };
    let router = router(state);
    let service = move || hyper_util::service::TowerToHyperService::new(router.clone());
    admin.set_ready(true);
    match &unix {
        Some(socket) => {
            tracing::info!(path = %socket.path().display(), "listening on a Unix socket too");
            let tcp_service = service.clone();
            tokio::join!(
                serve_http(
                    listener,
                    options.clone(),
                    move |_| tcp_service(),
                    shutdown.clone()
                ),
                serve_http(&socket.listener, options, move |_| service(), shutdown),
            );
        }
        None => serve_http(listener, options, move |_| service(), shutdown).await,
    }
    admin.set_ready(false);
    // Drained: no request will take a connection again. Nothing opens one behind the close.
    for task in background {
        task.abort();
    }
    if let Some(db) = db {
        db.close().await;
    }
}
