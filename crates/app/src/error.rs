//! `AppError`: what a handler can fail with, turned into a response that never leaks internals.
//! HTML routes answer a short page; API routes (`Api<T>`) answer `{"error": "..."}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use webstack_db::router::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadInput(String),
    #[error("not found")]
    NotFound,
    /// No database node can take this request (for writes: no primary).
    #[error("{0}")]
    Unavailable(String),
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
    #[error("database: {0}")]
    Database(String),
}

impl From<RouteError> for AppError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::OutcomeUnknown => AppError::Unavailable(error.to_string()),
            RouteError::NoPrimary | RouteError::SplitBrain(_) | RouteError::NoCoordination(_) => {
                AppError::Unavailable(format!(
                    "writes are unavailable: {error}. Reads still work; try again shortly."
                ))
            }
            RouteError::NoNode | RouteError::Timeout(_) => {
                AppError::Unavailable("the database is unavailable; try again shortly".into())
            }
            RouteError::Sql(error) => AppError::Database(error.to_string()),
        }
    }
}

impl From<mysql_async::Error> for AppError {
    fn from(error: mysql_async::Error) -> Self {
        AppError::Database(error.to_string())
    }
}

impl AppError {
    /// What a visitor may read: our own explanation, never a database's or a template's text.
    pub fn public_message(&self) -> String {
        match self {
            AppError::BadInput(message) | AppError::Unavailable(message) => message.clone(),
            AppError::NotFound => "not found".into(),
            AppError::Template(_) | AppError::Database(_) => {
                "the posts cannot be shown right now; try again shortly".into()
            }
        }
    }

    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            AppError::BadInput(message) => (StatusCode::BAD_REQUEST, message.clone()),
            AppError::NotFound => (StatusCode::NOT_FOUND, "not found".into()),
            AppError::Unavailable(message) => (StatusCode::SERVICE_UNAVAILABLE, message.clone()),
            AppError::Template(_) | AppError::Database(_) => {
                // The detail goes to the log; the client learns only that it was our fault.
                tracing::error!(error = %self, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
            }
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = self.status_and_message();
        let page = format!(
            "<!doctype html><meta charset=\"utf-8\"><title>{code}</title><link rel=\"stylesheet\" href=\"/static/style.css\">\
             <main><h1>{code}</h1><p>{}</p><p><a href=\"/\">Back to the home page</a></p></main>\n",
            escape(&message),
            code = status.as_u16()
        );
        (status, Html(page)).into_response()
    }
}

/// An API handler's error: the same causes, as JSON.
pub struct ApiError(pub AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(error: E) -> Self {
        ApiError(error.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.0.status_and_message();
        (status, Json(serde_json::json!({ "error": message }))).into_response()
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::AppError;

    #[test]
    fn visitors_never_read_a_database_error() {
        let raw = AppError::Database("Table 'foobar.posts' doesn't exist at 10.0.0.5".into());
        assert!(!raw.public_message().contains("foobar.posts"));
        let ours = AppError::Unavailable("writes are unavailable".into());
        assert_eq!(ours.public_message(), "writes are unavailable");
    }
}
