//! One request's path through the app: its `X-Request-Id` (set by the lb, kept by the web
//! server) follows every database statement it makes (task-local), so the app's access line
//! and each statement's `sql` log line carry the same id as the lb's and the web server's
//! access lines. With `app.server_timing`, the response says how long the app and the
//! database took (`Server-Timing: app;dur=.., db;dur=..`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use webstack_common::access_log::{AccessLog, Entry, Value};
use webstack_common::forward::X_REQUEST_ID;

use crate::metrics::Metrics;

tokio::task_local! {
    static TRACE: Arc<Trace>;
}

/// What one request did in the database.
#[derive(Debug, Default)]
struct Trace {
    id: String,
    db: Mutex<DbTime>,
}

#[derive(Debug, Default)]
struct DbTime {
    statements: u32,
    seconds: f64,
    nodes: Vec<String>,
}

/// Records a statement in the current request's trace, and logs it with the request's id
/// (target `sql`, debug level: `RUST_LOG=sql=debug` shows every statement).
pub fn statement(node: &str, kind: &str, took: Duration, ok: bool) {
    let _ = TRACE.try_with(|trace| {
        let mut db = trace.db.lock().unwrap_or_else(|e| e.into_inner());
        db.statements += 1;
        db.seconds += took.as_secs_f64();
        if !db.nodes.iter().any(|n| n == node) {
            db.nodes.push(node.to_string());
        }
        tracing::debug!(
            target: "sql",
            request_id = %trace.id,
            node,
            kind,
            ms = took.as_secs_f64() * 1000.0,
            ok,
            "statement"
        );
    });
}

/// The request as its access line tells it.
struct Seen {
    client: std::net::IpAddr,
    uri: axum::http::Uri,
    version: axum::http::Version,
    referer: Option<HeaderValue>,
    user_agent: Option<HeaderValue>,
}

/// The address the lb took the request from: in the topology's chain (client -> lb -> web ->
/// app) the lb appends its peer to `X-Forwarded-For` and the web server appends the lb, so it
/// is the second address from the right (the only one when a request came to the web server
/// directly, which then names whoever sent it). With `trusted_proxies` that is the proxy; the
/// lb's own line names the client behind it. The unspecified address when there is none.
fn client_of(headers: &axum::http::HeaderMap) -> std::net::IpAddr {
    let mut addresses: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let last = addresses.pop();
    addresses
        .pop()
        .or(last)
        .and_then(|a| a.parse().ok())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// The middleware's settings.
#[derive(Clone, Debug)]
pub struct Tracking {
    pub metrics: Metrics,
    pub access_log: Option<AccessLog>,
    pub server_timing: bool,
}

/// Counts and times every request by its matched route, runs it inside its trace, writes the
/// access line and, when enabled, the `Server-Timing` header.
pub async fn track(State(tracking): State<Tracking>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_string();
    let id = request
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string();
    let method = request.method().clone();
    // What the access line says of the request, taken before the handler owns it.
    let seen = tracking.access_log.is_some().then(|| Seen {
        client: client_of(request.headers()),
        uri: request.uri().clone(),
        version: request.version(),
        referer: request.headers().get(axum::http::header::REFERER).cloned(),
        user_agent: request
            .headers()
            .get(axum::http::header::USER_AGENT)
            .cloned(),
    });
    let trace = Arc::new(Trace {
        id,
        db: Mutex::default(),
    });
    let started = Instant::now();
    let mut response = TRACE.scope(trace.clone(), next.run(request)).await;
    let took = started.elapsed();
    tracking
        .metrics
        .request(&route, response.status().as_u16(), took);
    let db = trace.db.lock().unwrap_or_else(|e| e.into_inner());
    if tracking.server_timing {
        let mut value = format!("app;dur={:.1}", took.as_secs_f64() * 1000.0);
        if db.statements > 0 {
            value.push_str(&format!(", db;dur={:.1}", db.seconds * 1000.0));
        }
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().append("server-timing", value);
        }
    }
    if let (Some(log), Some(seen)) = (&tracking.access_log, seen) {
        let nodes = db.nodes.join(",");
        log.log(&Entry {
            client: seen.client,
            method: method.as_str(),
            target: seen.uri.path_and_query().map_or("/", |p| p.as_str()),
            version: match seen.version {
                axum::http::Version::HTTP_10 => "HTTP/1.0",
                axum::http::Version::HTTP_2 => "HTTP/2.0",
                _ => "HTTP/1.1",
            },
            status: response.status().as_u16(),
            bytes: response
                .headers()
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok()),
            duration: took,
            request_id: trace.id.as_bytes(),
            referer: seen.referer.as_ref().map(HeaderValue::as_bytes),
            user_agent: seen.user_agent.as_ref().map(HeaderValue::as_bytes),
            extra: &[
                ("route", Value::Text(&route)),
                ("db_statements", Value::Number(u64::from(db.statements))),
                ("db_ms", Value::Millis(Duration::from_secs_f64(db.seconds))),
                ("db_nodes", Value::Text(&nodes)),
            ],
        });
    }
    drop(db);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn statements_are_added_to_the_request_they_belong_to_only() {
        let trace = Arc::new(Trace {
            id: "r1".into(),
            db: Mutex::default(),
        });
        TRACE
            .scope(trace.clone(), async {
                statement("web-01", "write", Duration::from_millis(2), true);
                statement("web-02", "read", Duration::from_millis(1), true);
                statement("web-02", "read", Duration::from_millis(1), false);
            })
            .await;
        // Outside any request: nothing recorded, nothing panics.
        statement("web-01", "read", Duration::from_millis(5), true);
        let db = trace.db.lock().unwrap();
        assert_eq!(db.statements, 3);
        assert!((db.seconds - 0.004).abs() < 1e-9);
        assert_eq!(db.nodes, ["web-01", "web-02"]);
    }
}
