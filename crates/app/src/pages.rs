//! Handlers: the home page, posts (HTML and JSON API), `/api/whoami`, `/healthz`, 404.

use std::sync::Arc;

use axum::Form;
use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;
use serde_json::json;
use webstack_common::forward::{X_FORWARDED_PROTO, X_REQUEST_ID, X_WEBSTACK_WEB_HOST};
use webstack_db::gtid::GtidPos;
use webstack_db::router::Router;

use crate::error::ApiError;
use crate::posts::{self, NewPost, Post};
use crate::{AppError, AppState};

/// What the handlers read of a request's head: the fields the tiers in front set, and the
/// session's cookie. Taken from the head in place; axum's `HeaderMap` extractor would clone
/// every field of every request to read these few.
pub struct Asked {
    /// The web host that proxied the request, as its web server stated it (the web role
    /// overwrites any client-sent value); `None` when the app is reached directly.
    web_host: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: the scheme the client used at the lb.
    proto: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
    /// The session's last write position (its cookie), for read-your-writes.
    session: Option<GtidPos>,
}

impl<S: Send + Sync> FromRequestParts<S> for Asked {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let headers = &parts.headers;
        Ok(Self {
            web_host: headers.get(&X_WEBSTACK_WEB_HOST).cloned(),
            proto: headers.get(&X_FORWARDED_PROTO).cloned(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            session: posts::session_position(headers),
        })
    }
}

impl Asked {
    fn web_host(&self) -> Option<&str> {
        self.web_host.as_ref().and_then(|v| v.to_str().ok())
    }

    fn proto(&self) -> Option<&str> {
        self.proto.as_ref().and_then(|v| v.to_str().ok())
    }

    fn behind_https(&self) -> bool {
        self.proto.as_ref().is_some_and(|v| v == "https")
    }

    fn request_id(&self) -> Option<&str> {
        self.request_id.as_ref().and_then(|v| v.to_str().ok())
    }
}

fn db(state: &AppState) -> Result<&Arc<Router>, AppError> {
    state
        .db
        .as_ref()
        .ok_or_else(|| AppError::Unavailable("this topology has no database".into()))
}

/// Which nodes serve reads and take writes right now (names, or null).
fn db_nodes(state: &AppState) -> (Option<String>, Option<String>) {
    match &state.db {
        None => (None, None),
        Some(router) => (
            router.reader(None).ok().map(|n| n.name.clone()),
            router.writer().ok().map(|n| n.name.clone()),
        ),
    }
}

pub async fn home(
    State(state): State<Arc<AppState>>,
    asked: Asked,
) -> Result<Html<String>, AppError> {
    let (mut db_read, db_write) = db_nodes(&state);
    let (posts, db_error) = match &state.db {
        None => (Vec::new(), None),
        Some(router) => {
            match posts::recent(router, &state.metrics, 10, asked.session.as_ref()).await {
                Ok((posts, node)) => {
                    db_read = Some(node.name.clone());
                    (posts, None)
                }
                Err(error) => {
                    // The page says what the visitor can do; the detail goes to the log.
                    tracing::warn!(%error, "the home page shows no posts");
                    (Vec::new(), Some(error.public_message()))
                }
            }
        }
    };
    let page = state.render(
        "home.html",
        context! {
            site => &state.config.site_name,
            web_host => asked.web_host(),
            app_host => &state.config.host_name,
            proto => asked.proto(),
            request_id => asked.request_id(),
            has_db => state.db.is_some(),
            db_read, db_write, db_error,
            posts => minijinja::Value::from(minijinja::value::Serde(&posts)),
            author_max => posts::AUTHOR_MAX, body_max => posts::BODY_MAX,
        },
    )?;
    Ok(Html(page))
}

fn parse_id(id: &str) -> Result<u64, AppError> {
    id.parse::<u64>()
        .map_err(|_| AppError::BadInput(format!("post id {id:?} is not a number")))
}

pub async fn post_page(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    asked: Asked,
) -> Result<Html<String>, AppError> {
    let id = parse_id(&id)?;
    let (post, node) = posts::get(db(&state)?, &state.metrics, id, asked.session.as_ref()).await?;
    let post = post.ok_or(AppError::NotFound)?;
    Ok(Html(state.render("post.html", context! { site => &state.config.site_name, post => minijinja::Value::from(minijinja::value::Serde(&post)), db_read => &node.name })?))
}

/// The HTML form (axum's `Form`: `application/x-www-form-urlencoded`, unknown fields refused):
/// 303 (`Redirect::to`) to the new post, so a reload does not post twice.
pub async fn create_from_form(
    State(state): State<Arc<AppState>>,
    asked: Asked,
    form: Result<Form<NewPost>, FormRejection>,
) -> Result<Response, AppError> {
    let Form(new) = form.map_err(|rejection| AppError::BadInput(rejection.body_text()))?;
    let new = new.validate()?;
    let (post, gtid) = posts::create(db(&state)?, &state.metrics, &new).await?;
    let mut response = Redirect::to(&format!("/posts/{}", post.id)).into_response();
    set_session(&mut response, &gtid, asked.behind_https());
    Ok(response)
}

fn set_session(response: &mut Response, gtid: &str, secure: bool) {
    // Unknown (the primary went away right after the commit): the session keeps its cookie.
    if gtid.is_empty() {
        return;
    }
    if let Ok(value) = HeaderValue::from_str(&posts::session_cookie(gtid, secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

#[derive(Deserialize)]
pub struct ListQuery {
    limit: Option<String>,
}

pub async fn api_list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<ListQuery>,
    asked: Asked,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = match query.limit.as_deref() {
        None => 20,
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                AppError::BadInput(format!("limit {text:?}: expected a number from 1 to 100"))
            })?,
    };
    let (posts, node) =
        posts::recent(db(&state)?, &state.metrics, limit, asked.session.as_ref()).await?;
    Ok(Json(json!({ "posts": posts, "db_read": node.name })))
}

pub async fn api_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    asked: Asked,
) -> Result<Json<Post>, ApiError> {
    let id = parse_id(&id)?;
    let (post, _) = posts::get(db(&state)?, &state.metrics, id, asked.session.as_ref()).await?;
    Ok(Json(post.ok_or(AppError::NotFound)?))
}

/// `POST /api/posts` with `{"author": ..., "body": ...}`: 201 with the stored post.
pub async fn api_create(
    State(state): State<Arc<AppState>>,
    asked: Asked,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new: NewPost = serde_json::from_slice(&body).map_err(|error| {
        AppError::BadInput(format!(
            "expected a JSON object {{\"author\": string, \"body\": string}}: {error}"
        ))
    })?;
    let new = new.validate()?;
    let (post, gtid) = posts::create(db(&state)?, &state.metrics, &new).await?;
    let location = format!("/api/posts/{}", post.id);
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(post),
    )
        .into_response();
    set_session(&mut response, &gtid, asked.behind_https());
    Ok(response)
}

pub async fn whoami(State(state): State<Arc<AppState>>, asked: Asked) -> Json<serde_json::Value> {
    let (db_read, db_write) = db_nodes(&state);
    Json(
        json!({ "web": asked.web_host(), "app": state.config.host_name, "db_read": db_read, "db_write": db_write }),
    )
}

/// For the load balancer: 200 while this server can serve reads (writes may be down), 503 only
/// when it can serve nothing.
pub async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    let (db_read, db_write) = db_nodes(&state);
    let can_read = state.db.is_none() || db_read.is_some();
    let status = if can_read {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if can_read { "ok" } else { "unavailable" },
        "app": state.config.host_name,
        "read": can_read,
        "write": state.db.is_none() || db_write.is_some(),
        "db_read": db_read,
        "db_write": db_write,
    });
    (status, Json(body)).into_response()
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

    /// The app without a database, with the site's templates.
    fn config(access_log: Option<webstack_common::access_log::Settings>) -> Config {
        Config {
            host_name: "web-01".into(),
            site_name: "www.foobar.com".into(),
            templates_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../site/templates"),
            db: None,
            maxconn: 16,
            access_log,
            server_timing: true,
            unix_socket: None,
        }
    }

    fn state() -> Arc<AppState> {
        Arc::new(AppState::load(config(None), &mut Default::default()).unwrap())
    }

    #[tokio::test]
    async fn requests_are_counted_by_route_template_and_timed_for_the_client() {
        let mut registry = prometheus_client::registry::Registry::default();
        let logs = tempfile::tempdir().unwrap();
        let log = webstack_common::access_log::Settings::for_role(
            logs.path(),
            "web-01",
            "app",
            webstack_common::access_log::Format::Json,
        );
        let state = AppState::load(config(Some(log.clone())), &mut registry).unwrap();
        let app = router(Arc::new(state));
        for path in ["/api/whoami", "/posts/7", "/no/such/page"] {
            let request = Request::get(path)
                .header("x-forwarded-for", "198.51.100.9, 127.0.0.10")
                .header("x-request-id", "r-1")
                .body(Body::empty())
                .unwrap();
            let response = app.clone().oneshot(request).await.unwrap();
            let timing = response.headers()["server-timing"].to_str().unwrap();
            assert!(timing.starts_with("app;dur="), "{path}: {timing}");
        }
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
        for line in [
            "webstack_app_requests_total{route=\"/api/whoami\",code=\"200\"} 1",
            // The template, never the raw path (bounded cardinality).
            "webstack_app_requests_total{route=\"/posts/{id}\",code=\"503\"} 1",
            "webstack_app_requests_total{route=\"unmatched\",code=\"404\"} 1",
            "webstack_app_request_duration_seconds_count{route=\"/api/whoami\"} 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("/posts/7"), "{text}");

        // One access line per request: the client the lb saw, the route template, the id.
        webstack_common::access_log::flush_all();
        let lines = std::fs::read_to_string(&log.path).unwrap();
        let lines: Vec<serde_json::Value> = lines
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[1]["client"], "198.51.100.9");
        assert_eq!(lines[1]["path"], "/posts/7");
        assert_eq!(lines[1]["route"], "/posts/{id}");
        assert_eq!(lines[1]["status"], 503);
        assert_eq!(lines[1]["request_id"], "r-1");
    }

    async fn send(request: Request<Body>) -> (StatusCode, String) {
        let response = router(state()).oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    async fn get(path: &str, web: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::get(path);
        if let Some(web) = web {
            request = request.header("x-webstack-web-host", web);
        }
        send(request.body(Body::empty()).unwrap()).await
    }

    #[tokio::test]
    async fn whoami_names_web_and_app_hosts() {
        let (status, body) = get("/api/whoami", Some("web-02")).await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"web": "web-02", "app": "web-01", "db_read": null, "db_write": null})
        );
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

    /// The fields the tiers in front set reach the page, and the session cookie its position.
    #[tokio::test]
    async fn what_the_front_states_reaches_the_handlers() {
        let request = Request::get("/")
            .header("x-webstack-web-host", "web-02")
            .header("x-forwarded-proto", "https")
            .header("x-request-id", "req-42")
            .body(Body::empty())
            .unwrap();
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("<td>https</td>"), "{body}");
        assert!(body.contains("<code>req-42</code>"), "{body}");
        // Without them, the page says nothing of either.
        let (_, body) = get("/", None).await;
        assert!(
            !body.contains("Client protocol") && !body.contains("Request id"),
            "{body}"
        );

        let cookie = format!("a=1; {}=0-1-7; b=2", crate::posts::SESSION_COOKIE);
        let (mut parts, ()) = Request::get("/")
            .header("cookie", cookie)
            .body(())
            .unwrap()
            .into_parts();
        let asked = <super::Asked as axum::extract::FromRequestParts<()>>::from_request_parts(
            &mut parts,
            &(),
        )
        .await
        .unwrap();
        assert_eq!(
            asked.session,
            Some(webstack_db::gtid::GtidPos::parse("0-1-7"))
        );
        assert!(!asked.behind_https() && asked.web_host().is_none());
    }

    #[tokio::test]
    async fn unknown_path_is_404_page() {
        let (status, body) = get("/nope", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("does not exist"));
    }

    #[tokio::test]
    async fn bad_api_input_is_400_json_before_touching_a_database() {
        let post = |body: &'static str| {
            Request::post("/api/posts")
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap()
        };
        for (body, expected) in [
            ("not json", "expected a JSON object"),
            ("[1,2]", "expected a JSON object"),
            ("{\"author\": \"a\"}", "missing field `body`"),
            (
                "{\"author\": \"a\", \"body\": \"b\", \"admin\": true}",
                "unknown field `admin`",
            ),
            ("{\"author\": 5, \"body\": \"b\"}", "invalid type"),
            ("{\"author\": \"\", \"body\": \"b\"}", "author is required"),
        ] {
            let (status, text) = send(post(body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert!(
                json["error"].as_str().unwrap().contains(expected),
                "{body}: {text}"
            );
        }
        let (status, text) = get("/api/posts?limit=0", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let (status, _) = get("/api/posts/abc", None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let big = Request::post("/api/posts")
            .body(Body::from(vec![b'x'; 100_000]))
            .unwrap();
        assert_eq!(send(big).await.0, StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn without_a_database_posts_answer_503_and_health_stays_ok() {
        let (status, text) = send(
            Request::post("/api/posts")
                .body(Body::from("{\"author\":\"a\",\"body\":\"b\"}"))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert!(text.contains("no database"));
        let (status, _) = get("/healthz", None).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn form_input_is_checked() {
        let form = |body: &'static str| {
            Request::post("/posts")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap()
        };
        let (status, text) = send(form("author=a&body=b&extra=1")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("unknown field `extra`"), "{text}");
        let (status, text) = send(form("author=a")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("missing field `body`"), "{text}");
        let (status, text) = send(form("author=%3Cscript%3E&body=%00")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("body contains control characters"), "{text}");
        assert!(!text.contains("<script"), "{text}");
        // Not a form at all.
        let json = Request::post("/posts")
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap();
        let (status, text) = send(json).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("x-www-form-urlencoded"), "{text}");
        // A valid form gets as far as the database (none here: 503).
        assert_eq!(
            send(form("author=ada&body=hello+world%21")).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn every_template_renders_with_posts_and_escapes_them() {
        use minijinja::context;
        let state = state();
        let posts = vec![crate::posts::Post {
            id: 7,
            author: "<b>ada</b>".into(),
            body: "<script>x</script>\nline two".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
        }];
        let home = state
            .render("home.html", context! { site => "s", app_host => "web-01", has_db => true, db_read => "web-02", db_write => "web-01", posts => minijinja::Value::from(minijinja::value::Serde(&posts)) })
            .unwrap();
        assert!(
            home.contains("/posts/7")
                && home.contains("&lt;script&gt;")
                && !home.contains("<script>x"),
            "{home}"
        );
        assert!(home.contains("<form method=\"post\" action=\"/posts\""));
        let page = state
            .render("post.html", context! { site => "s", post => minijinja::Value::from(minijinja::value::Serde(&posts[0])), db_read => "web-02" })
            .unwrap();
        assert!(
            page.contains("&lt;b&gt;ada&lt;&#x2f;b&gt;") && !page.contains("<b>ada"),
            "{page}"
        );
        let error = state
            .render(
                "error.html",
                context! { site => "s", status => 404, message => "<i>" },
            )
            .unwrap();
        assert!(error.contains("&lt;i&gt;"));
    }

    #[test]
    fn missing_templates_fail_at_startup() {
        let dir =
            std::env::temp_dir().join(format!("webstack-empty-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = AppState::load(
            Config {
                host_name: "a".into(),
                site_name: "b".into(),
                templates_dir: dir.clone(),
                db: None,
                maxconn: 16,
                access_log: None,
                server_timing: false,
                unix_socket: None,
            },
            &mut Default::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("home.html"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
