//! The runtime API on the lb's admin port (HAProxy's runtime API, `set server ... state|weight`):
//! `GET /servers` lists every server's state; `POST /servers/{name}/{drain|maint|ready}` and
//! `POST /servers/{name}/weight/{n}` change it. Changes need the control token
//! (`Authorization: Bearer`, from `<state dir>/secrets/lb-control.token`); the admin port is
//! reachable from the monitor hosts and the admin networks only (docs/security.md). The state
//! lives in this lb process: a SIGHUP keeps it, a restart starts every server `ready` again.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use webstack_common::secret::Secret;

use crate::balance::Balancer;
use crate::server::{AdminState, Server};

/// What the runtime API acts on.
pub struct Control {
    servers: Vec<Arc<Server>>,
    balancer: Arc<Balancer>,
    /// None: no token file, so no change is accepted.
    token: Option<Secret>,
}

impl Control {
    pub fn new(servers: Vec<Arc<Server>>, balancer: Arc<Balancer>, token: Option<Secret>) -> Self {
        Self {
            servers,
            balancer,
            token,
        }
    }

    /// The servers as `GET /servers` and `webstack status` show them.
    pub fn servers_json(&self) -> serde_json::Value {
        self.servers
            .iter()
            .map(|s| {
                json!({
                    "name": s.config.name,
                    "address": s.config.addr.to_string(),
                    "up": s.is_up(),
                    "state": s.admin_state(),
                    "weight": s.weight(),
                    "configured_weight": s.config.weight,
                    "backup": s.config.backup,
                    "in_flight": s.active(),
                    "maxconn": s.config.maxconn,
                    "ramp": s.ramp(self.balancer.slowstart()),
                    "ejected": s.is_ejected(),
                    "last_check": s.metrics.last_check.get(),
                    "since": s.metrics.state_since.get(),
                })
            })
            .collect()
    }

    /// Requests waiting in the lb's queue now.
    pub fn queue_len(&self) -> usize {
        self.balancer.queue.len()
    }

    fn server(&self, name: &str) -> Option<&Arc<Server>> {
        self.servers.iter().find(|s| s.config.name == name)
    }

    /// Whether the request carries the control token (compared in constant time).
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let expected = token.expose().as_bytes();
        given.len() == expected.len()
            && given
                .bytes()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }

    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/servers", get(list))
            .route("/servers/{name}/{state}", post(set_state))
            .route("/servers/{name}/weight/{weight}", post(set_weight))
            .with_state(self)
    }
}

async fn list(State(control): State<Arc<Control>>) -> Response {
    axum::Json(control.servers_json()).into_response()
}

fn refuse(status: StatusCode, text: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text + "\n",
    )
        .into_response()
}

/// The checks both changes share: the token, then the server's name. Err: the refusal's
/// status and text.
fn target<'a>(
    control: &'a Control,
    headers: &HeaderMap,
    name: &str,
) -> Result<&'a Arc<Server>, (StatusCode, String)> {
    if control.token.is_none() {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "no control token (secrets/lb-control.token in the state dir): changes are off".into(),
        ));
    }
    if !control.authorized(headers) {
        return Err((
            StatusCode::UNAUTHORIZED,
            "a change needs the control token: Authorization: Bearer <secrets/lb-control.token>"
                .into(),
        ));
    }
    control.server(name).ok_or_else(|| {
        let names: Vec<&str> = control
            .servers
            .iter()
            .map(|s| s.config.name.as_str())
            .collect();
        (
            StatusCode::NOT_FOUND,
            format!("no server {name:?}: servers are {}", names.join(", ")),
        )
    })
}

async fn set_state(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((name, state)): Path<(String, String)>,
) -> Response {
    let server = match target(&control, &headers, &name) {
        Ok(server) => server,
        Err((status, text)) => return refuse(status, text),
    };
    let Some(state) = AdminState::parse(&state) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("{state:?} is not a state: expected ready, drain or maint"),
        );
    };
    let before = server.set_admin_state(state);
    if before != state {
        tracing::info!(server = %name, from = before.as_str(), to = state.as_str(), "server state set by an operator");
    }
    axum::Json(
        json!({ "server": name, "state": state, "was": before, "in_flight": server.active() }),
    )
    .into_response()
}

async fn set_weight(
    State(control): State<Arc<Control>>,
    headers: HeaderMap,
    Path((name, weight)): Path<(String, String)>,
) -> Response {
    let server = match target(&control, &headers, &name) {
        Ok(server) => server,
        Err((status, text)) => return refuse(status, text),
    };
    let Some(weight) = weight.parse::<u32>().ok().filter(|w| (1..=256).contains(w)) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            format!("weight {weight:?}: expected 1 to 256"),
        );
    };
    let before = server.weight();
    server.set_weight(weight);
    control.balancer.reweigh();
    tracing::info!(server = %name, from = before, to = weight, "server weight set by an operator");
    axum::Json(json!({ "server": name, "weight": weight, "was": before })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Algorithm;
    use crate::balance::tests::servers;
    use axum::body::Body;
    use tower::ServiceExt;

    fn control(token: Option<&str>) -> (Arc<Control>, Vec<Arc<Server>>) {
        let set = servers(&[(1, false), (1, false)]);
        let balancer = Arc::new(Balancer::new(Algorithm::RoundRobin, &set));
        let control = Control::new(
            set.clone(),
            balancer,
            token.map(|t| Secret::from(t.to_string())),
        );
        (Arc::new(control), set)
    }

    async fn call(
        control: &Arc<Control>,
        method: &str,
        uri: &str,
        token: Option<&str>,
    ) -> (StatusCode, String) {
        let mut request = axum::http::Request::builder().method(method).uri(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let response = control
            .clone()
            .router()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn changes_need_the_token_and_name_a_server_and_a_state() {
        let (control, set) = control(Some("s3cret"));
        let (status, _) = call(&control, "POST", "/servers/s0/drain", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(&control, "POST", "/servers/s0/drain", Some("wrong!")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(set[0].admin_state(), AdminState::Ready);
        let (status, body) = call(&control, "POST", "/servers/s9/drain", Some("s3cret")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("servers are s0, s1"), "{body}");
        let (status, body) = call(&control, "POST", "/servers/s0/sleep", Some("s3cret")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("expected ready, drain or maint"), "{body}");
        let (status, body) = call(&control, "POST", "/servers/s0/weight/0", Some("s3cret")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

        let (status, body) = call(&control, "POST", "/servers/s0/drain", Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(set[0].admin_state(), AdminState::Drain);
        let (status, _) = call(&control, "POST", "/servers/s1/weight/7", Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(set[1].weight(), 7);
        let (_, list) = call(&control, "GET", "/servers", None).await;
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(list[0]["state"], "drain");
        assert_eq!(list[1]["weight"], 7);
        assert_eq!(list[1]["configured_weight"], 1);
    }

    #[tokio::test]
    async fn without_a_token_file_nothing_changes() {
        let (control, set) = control(None);
        let (status, body) = call(&control, "POST", "/servers/s0/maint", Some("")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(set[0].admin_state(), AdminState::Ready);
    }
}
