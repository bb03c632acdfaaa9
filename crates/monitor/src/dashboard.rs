//! The dashboard (server-rendered HTML, refreshed by a small script that fetches the
//! `/overview` fragment) and Alertmanager's webhook (`POST /api/alerts`): received alerts are
//! logged, counted, shown on the dashboard and in the role's `/status` (`webstack status`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use minijinja::value::Serde;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use webstack_common::{Admin, HttpOptions, Shutdown, serve_http};

use crate::Config;
use crate::collect::{Overview, clock};

const DASHBOARD: &str = include_str!("../assets/dashboard.html");
const OVERVIEW: &str = include_str!("../assets/overview.html");
/// Alertmanager's webhook bodies are small; anything larger is not one.
const MAX_WEBHOOK_BYTES: usize = 1024 * 1024;

/// The monitor role's own metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    received: Counter,
    firing: Gauge,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let metrics = Metrics::default();
        let monitor = registry.sub_registry_with_prefix("webstack_monitor");
        monitor.register(
            "alerts_received",
            "Alert notifications received from Alertmanager's webhook (firing and resolved)",
            metrics.received.clone(),
        );
        monitor.register(
            "alerts_firing",
            "Alerts firing, as Alertmanager last notified them",
            metrics.firing.clone(),
        );
        metrics
    }
}

/// One alert as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
pub struct AlertView {
    pub name: String,
    pub severity: String,
    pub summary: String,
    pub action: String,
    pub since: String,
    pub state: String,
    pub labels: HashMap<String, String>,
}

/// The alerts received so far, by Alertmanager's fingerprint.
#[derive(Clone, Debug)]
pub struct Alerts {
    firing: Arc<Mutex<HashMap<String, AlertView>>>,
    received_any: Arc<std::sync::atomic::AtomicBool>,
    metrics: Metrics,
}

/// Alertmanager's webhook payload (version 4), the parts we read.
#[derive(Debug, Deserialize)]
struct Webhook {
    alerts: Vec<WebhookAlert>,
}

#[derive(Debug, Deserialize)]
struct WebhookAlert {
    /// firing or resolved.
    status: String,
    #[serde(flatten)]
    alert: ApiAlert,
}

impl Alerts {
    pub fn new(metrics: Metrics) -> Alerts {
        Alerts {
            firing: Arc::default(),
            received_any: Arc::default(),
            metrics,
        }
    }

    /// Firing alerts, most severe first.
    pub fn firing(&self) -> Vec<AlertView> {
        let mut list: Vec<AlertView> = self
            .firing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let rank = |s: &str| match s {
            "critical" => 0,
            "warning" => 1,
            _ => 2,
        };
        list.sort_by(|a, b| {
            rank(&a.severity)
                .cmp(&rank(&b.severity))
                .then_with(|| a.name.cmp(&b.name))
                .then_with(|| a.summary.cmp(&b.summary))
        });
        list
    }

    fn receive(&self, webhook: Webhook) {
        self.received_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        for WebhookAlert { status, alert } in webhook.alerts {
            self.metrics.received.inc();
            let key = alert.key();
            let view = alert.view(&status);
            // One line per notification: the log is where an operator looks afterwards.
            tracing::warn!(alert = %view.name, state = %status, summary = %view.summary, "alert");
            if status == "firing" {
                firing.insert(key, view);
            } else {
                firing.remove(&key);
            }
        }
        self.metrics.firing.set(firing.len() as i64);
    }

    /// Replaces the firing alerts with Alertmanager's own list (its v2 API): what a lost
    /// webhook call or a restart of this role missed is caught up here.
    fn replace_all(&self, alerts: Vec<ApiAlert>) {
        self.received_any
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut firing = self.firing.lock().unwrap_or_else(|e| e.into_inner());
        firing.clear();
        for alert in alerts {
            firing.insert(alert.key(), alert.view("firing"));
        }
        self.metrics.firing.set(firing.len() as i64);
    }

    fn source(&self) -> &'static str {
        if self.received_any.load(std::sync::atomic::Ordering::Relaxed) {
            "alertmanager"
        } else {
            "no word from alertmanager yet"
        }
    }
}

/// One alert as Alertmanager describes it, in its v2 API and in its webhook, the parts we read.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ApiAlert {
    #[serde(default)]
    labels: HashMap<String, String>,
    #[serde(default)]
    annotations: HashMap<String, String>,
    #[serde(default)]
    starts_at: String,
    #[serde(default)]
    fingerprint: String,
}

impl ApiAlert {
    /// Alertmanager's fingerprint, or the sorted labels when it sent none.
    fn key(&self) -> String {
        if !self.fingerprint.is_empty() {
            return self.fingerprint.clone();
        }
        let mut labels: Vec<_> = self.labels.iter().collect();
        labels.sort();
        format!("{labels:?}")
    }

    fn view(self, state: &str) -> AlertView {
        let label = |k: &str| self.labels.get(k).cloned().unwrap_or_default();
        let annotation = |k: &str| self.annotations.get(k).cloned().unwrap_or_default();
        AlertView {
            name: label("alertname"),
            severity: label("severity"),
            summary: annotation("summary"),
            action: annotation("action"),
            since: since(&self.starts_at),
            state: state.to_string(),
            labels: self.labels,
        }
    }
}

/// How often the dashboard reads Alertmanager's list of alerts.
const RECONCILE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Every `RECONCILE_EVERY`, takes the active (neither silenced nor inhibited) alerts from this
/// host's Alertmanager; the webhook stays the fast path and the log of every notification.
pub async fn reconcile(config: Arc<Config>, alerts: Alerts) {
    let addr = config.alertmanager_addr();
    let mut tick = tokio::time::interval(RECONCILE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let answer = webstack_common::probe::get_body(
            addr,
            &addr.to_string(),
            "/api/v2/alerts?active=true&silenced=false&inhibited=false",
            std::time::Duration::from_secs(2),
        )
        .await;
        match answer {
            Ok((status, body)) if status.is_success() => {
                match serde_json::from_slice::<Vec<ApiAlert>>(&body) {
                    Ok(list) => alerts.replace_all(list),
                    Err(error) => tracing::warn!(%error, "cannot read Alertmanager's alerts"),
                }
            }
            // Not up yet, or restarting: the last list (and the webhook) stand.
            _ => {}
        }
    }
}

/// "19:39:58" from Alertmanager's RFC 3339 `startsAt`.
fn since(starts_at: &str) -> String {
    starts_at
        .split('T')
        .nth(1)
        .map(|time| time.chars().take(8).collect())
        .unwrap_or_default()
}

#[derive(Clone)]
struct Dashboard {
    config: Arc<Config>,
    overview: Arc<RwLock<Overview>>,
    alerts: Alerts,
    templates: Arc<minijinja::Environment<'static>>,
}

fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.add_template("dashboard.html", DASHBOARD)
        .expect("the dashboard template compiles (a unit test renders it)");
    env.add_template("overview.html", OVERVIEW)
        .expect("the overview template compiles (a unit test renders it)");
    env
}

impl Dashboard {
    /// The template context: the collected overview with the firing alerts folded into the
    /// verdict (a critical alert is a problem even when every role answers).
    fn context(&self) -> minijinja::Value {
        let mut overview = self
            .overview
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let alerts = self.alerts.firing();
        for alert in alerts.iter().filter(|a| a.severity == "critical") {
            // A problem the roles already showed (the same host or server) is not repeated.
            let subject = ["host", "server"]
                .iter()
                .filter_map(|k| alert.labels.get(*k))
                .find(|v| !v.is_empty());
            let known = subject.is_some_and(|subject| {
                overview
                    .problems
                    .iter()
                    .any(|p| p.contains(subject.as_str()))
            });
            if !known {
                overview
                    .problems
                    .push(format!("alert {}: {}", alert.name, alert.summary));
            }
            if overview.verdict == "healthy" {
                overview.verdict = "degraded";
            }
        }
        minijinja::context! {
            alerts => minijinja::Value::from(Serde(&alerts)),
            alerts_source => self.alerts.source(),
            prometheus => self.config.has_programs().then(|| self.config.prometheus_addr().to_string()),
            alertmanager => self.config.has_programs().then(|| self.config.alertmanager_addr().to_string()),
            ..minijinja::Value::from(Serde(&overview))
        }
    }

    fn render(&self, name: &str) -> Response {
        match self
            .templates
            .get_template(name)
            .and_then(|t| t.render(self.context()))
        {
            Ok(html) => ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response(),
            Err(error) => {
                tracing::error!(%error, "cannot render the dashboard");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render the dashboard\n",
                )
                    .into_response()
            }
        }
    }
}

/// The dashboard's routes, without a socket.
pub fn router(config: Arc<Config>, overview: Arc<RwLock<Overview>>, alerts: Alerts) -> Router {
    let dashboard = Dashboard {
        config,
        overview,
        alerts,
        templates: Arc::new(templates()),
    };
    Router::new()
        .route(
            "/",
            get(|State(d): State<Dashboard>| async move { d.render("dashboard.html") }),
        )
        .route(
            "/overview",
            get(|State(d): State<Dashboard>| async move { d.render("overview.html") }),
        )
        .route(
            "/api/overview",
            get(|State(d): State<Dashboard>| async move { axum::Json(d.context()) }),
        )
        .route("/api/alerts", get(list_alerts).post(receive_alerts))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_WEBHOOK_BYTES))
        .with_state(dashboard)
}

async fn list_alerts(State(dashboard): State<Dashboard>) -> axum::Json<Vec<AlertView>> {
    axum::Json(dashboard.alerts.firing())
}

/// The client address of a dashboard connection.
#[derive(Clone, Copy, Debug)]
struct Peer(std::net::SocketAddr);

/// Only the Alertmanagers (on the monitor hosts) and this machine may post alerts: anyone
/// else who reaches the dashboard's port could otherwise paint false alerts on it.
async fn receive_alerts(
    State(dashboard): State<Dashboard>,
    peer: Option<axum::Extension<Peer>>,
    body: axum::body::Bytes,
) -> Response {
    let allowed = peer.is_some_and(|axum::Extension(Peer(peer))| {
        peer.ip().is_loopback() || dashboard.config.monitors.contains(&peer.ip())
    });
    if !allowed {
        return (
            StatusCode::FORBIDDEN,
            "alerts are taken from the monitor hosts' Alertmanagers only\n",
        )
            .into_response();
    }
    match serde_json::from_slice::<Webhook>(&body) {
        Ok(webhook) => {
            dashboard.alerts.receive(webhook);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => (
            StatusCode::BAD_REQUEST,
            format!("expected Alertmanager's webhook JSON: {error}\n"),
        )
            .into_response(),
    }
}

/// Serves the dashboard on `listener` until `shutdown`.
pub async fn serve(
    config: Arc<Config>,
    listener: TcpListener,
    overview: Arc<RwLock<Overview>>,
    alerts: Alerts,
    shutdown: Shutdown,
) {
    let router = router(config, overview, alerts);
    serve_http(
        listener,
        HttpOptions::default(),
        move |peer| {
            use tower::Layer as _;
            hyper_util::service::TowerToHyperService::new(
                axum::Extension(Peer(peer)).layer(router.clone()),
            )
        },
        shutdown,
    )
    .await
}

/// Keeps the admin `/status` current: where the dashboard, Prometheus and Alertmanager are,
/// and the firing alerts (`webstack status` prints the summary).
pub async fn publish_status(config: Arc<Config>, alerts: Alerts, admin: Admin) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let firing = alerts.firing();
        let mut summary = format!("dashboard http://{}/", config.dashboard_addr());
        if !config.has_programs() {
            summary.push_str("; prometheus/alertmanager not installed");
        }
        if firing.is_empty() {
            summary.push_str("; no alert firing");
        } else {
            let names: Vec<String> = firing
                .iter()
                .map(|a| format!("{} ({})", a.name, a.summary))
                .collect();
            summary.push_str(&format!("; {} firing: {}", firing.len(), names.join(", ")));
        }
        admin.set_status(serde_json::json!({
            "summary": summary,
            "dashboard": format!("http://{}/", config.dashboard_addr()),
            "prometheus": config.has_programs().then(|| format!("http://{}/", config.prometheus_addr())),
            "alertmanager": config.has_programs().then(|| format!("http://{}/", config.alertmanager_addr())),
            "alerts": firing,
            "updated": clock(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())),
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alertmanagers_list_replaces_what_the_webhook_said() {
        let alerts = Alerts::new(Metrics::default());
        let list: Vec<ApiAlert> = serde_json::from_value(serde_json::json!([{
            "labels": {"alertname": "WebstackHostDown", "host": "web-02", "severity": "critical"},
            "annotations": {"summary": "web-02 is down"},
            "startsAt": "2026-11-29T19:39:58.123Z",
            "fingerprint": "abc",
            "status": {"state": "active", "inhibitedBy": [], "silencedBy": []}
        }]))
        .unwrap();
        alerts.replace_all(list);
        assert_eq!(alerts.firing()[0].summary, "web-02 is down");
        alerts.replace_all(Vec::new());
        assert!(alerts.firing().is_empty(), "resolved: gone from the list");
        assert_eq!(alerts.metrics.firing.get(), 0);
    }

    #[test]
    fn webhook_alerts_fire_and_resolve_by_fingerprint() {
        let alerts = Alerts::new(Metrics::default());
        let payload = |status: &str| {
            serde_json::from_value::<Webhook>(serde_json::json!({
                "version": "4", "status": status, "receiver": "webstack",
                "alerts": [{
                    "status": status,
                    "labels": {"alertname": "WebstackHostDown", "host": "web-02", "severity": "critical"},
                    "annotations": {"summary": "web-02 is down", "action": "webstack start web-02"},
                    "startsAt": "2026-11-29T19:39:58.123Z",
                    "fingerprint": "abc"
                }]
            }))
            .unwrap()
        };
        alerts.receive(payload("firing"));
        let firing = alerts.firing();
        assert_eq!(firing.len(), 1);
        assert_eq!(firing[0].name, "WebstackHostDown");
        assert_eq!(firing[0].since, "19:39:58");
        assert_eq!(alerts.metrics.firing.get(), 1);
        alerts.receive(payload("resolved"));
        assert!(alerts.firing().is_empty());
        assert_eq!(alerts.metrics.received.get(), 2);
    }
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::collect::{HostState, Overview, RoleState};

    #[test]
    fn the_dashboard_renders_every_host_escaped_with_its_state() {
        let overview = Overview {
            site: "www.foobar.com".into(),
            updated: "19:40:01 UTC".into(),
            verdict: "degraded",
            problems: vec!["web-02 is down <script>".into()],
            hosts: vec![
                HostState {
                    name: "web-01".into(),
                    address: "127.0.0.11".into(),
                    up: true,
                    roles: vec![RoleState {
                        role: "web".into(),
                        up: true,
                        ready: true,
                        detail: "ready".into(),
                    }],
                },
                HostState {
                    name: "web-02".into(),
                    address: "127.0.0.12".into(),
                    up: false,
                    roles: vec![RoleState {
                        role: "web".into(),
                        up: false,
                        ready: false,
                        detail: "stopped".into(),
                    }],
                },
            ],
            ..Overview::default()
        };
        let config = Arc::new(crate::generate::tests::sample());
        let dashboard = Dashboard {
            config,
            overview: Arc::new(RwLock::new(overview)),
            alerts: Alerts::new(Metrics::default()),
            templates: Arc::new(templates()),
        };
        let page = dashboard
            .templates
            .get_template("dashboard.html")
            .unwrap()
            .render(dashboard.context())
            .unwrap();
        assert!(page.contains("id=\"host-web-01\""), "{page}");
        assert!(page.contains("id=\"host-web-02\""), "{page}");
        assert!(page.contains("data-verdict=\"degraded\""), "{page}");
        assert!(!page.contains("<script>\""), "escaped");
        assert!(page.contains("&lt;script&gt;"), "{page}");
        assert!(
            !page.contains("http://") || !page.contains("src=\"http"),
            "no external assets"
        );
    }
}

#[cfg(test)]
mod webhook_tests {
    use super::*;
    use tower::ServiceExt as _;

    async fn post_from(peer: Option<&str>) -> StatusCode {
        let config = Arc::new(crate::generate::tests::sample());
        let router = router(config, Arc::default(), Alerts::new(Metrics::default()));
        let mut request = axum::http::Request::post("/api/alerts")
            .body(axum::body::Body::from(r#"{"alerts": []}"#))
            .unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(Peer(peer.parse().unwrap()));
        }
        router.oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn only_the_monitor_hosts_and_this_machine_may_post_alerts() {
        assert_eq!(
            post_from(Some("127.0.0.9:40000")).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post_from(Some("127.0.0.1:40000")).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            post_from(Some("192.0.2.7:40000")).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(post_from(None).await, StatusCode::FORBIDDEN);
    }
}
