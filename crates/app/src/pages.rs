//! Handlers: the home page, `/api/whoami`, `/healthz` and the 404 page.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::context;
use serde_json::json;
use webstack_common::forward::{X_FORWARDED_PROTO, X_REQUEST_ID, X_WEBSTACK_WEB_HOST};

use crate::{AppError, AppState};

/// The web host that proxied the request, as its web server stated it (the web role overwrites
/// any client-sent value); `None` when the app is reached directly.
fn web_host(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&X_WEBSTACK_WEB_HOST)
        .and_then(|v| v.to_str().ok())
}

pub async fn home(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Html<String>, AppError> {
    let page = state.render(
        "home.html",
        context! {
            site => &state.config.site_name,
            web_host => web_host(&headers),
            app_host => &state.config.host_name,
            proto => headers.get(&X_FORWARDED_PROTO).and_then(|v| v.to_str().ok()),
            request_id => headers.get(&X_REQUEST_ID).and_then(|v| v.to_str().ok()),
        },
    )?;
    Ok(Html(page))
}

pub async fn whoami(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    Json(json!({ "web": web_host(&headers), "app": state.config.host_name }))
}

pub async fn healthz(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ok", "app": state.config.host_name }))
}

pub async fn not_found(State(state): State<Arc<AppState>>) -> Result<Response, AppError> {
    let page = state.render(
        "error.html",
        context! { site => &state.config.site_name, status => 404, message => "This page does not exist." },
    )?;
    Ok((StatusCode::NOT_FOUND, Html(page)).into_response())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use crate::{AppState, Config, router};

    fn state() -> Arc<AppState> {
        let templates_dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../site/templates");
        Arc::new(
            AppState::load(Config {
                host_name: "web-01".into(),
                site_name: "www.foobar.com".into(),
                templates_dir,
            })
            .unwrap(),
        )
    }

    async fn get(path: &str, web: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(path);
        if let Some(web) = web {
            request = request.header("x-webstack-web-host", web);
        }
        let response = router(state())
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn whoami_names_web_and_app_hosts() {
        let (status, body) = get("/api/whoami", Some("web-02")).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json, serde_json::json!({"web": "web-02", "app": "web-01"}));
        let (_, body) = get("/api/whoami", None).await;
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["web"],
            serde_json::Value::Null
        );
    }

    #[tokio::test]
    async fn home_page_names_hosts_and_escapes_html() {
        let (status, body) = get("/", Some("web-02")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("web-02") && body.contains("web-01"), "{body}");
        let (_, body) = get("/", Some("<script>x</script>")).await;
        assert!(!body.contains("<script>x"), "header values are escaped");
        assert!(body.contains("&lt;script&gt;"));
    }

    #[tokio::test]
    async fn unknown_path_is_404_page() {
        let (status, body) = get("/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("does not exist"));
    }

    #[test]
    fn missing_templates_fail_at_startup() {
        let dir =
            std::env::temp_dir().join(format!("webstack-empty-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = AppState::load(Config {
            host_name: "a".into(),
            site_name: "b".into(),
            templates_dir: dir.clone(),
        })
        .err()
        .unwrap();
        assert!(err.to_string().contains("home.html"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
