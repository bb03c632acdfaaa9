//! `AppError`: what a handler can fail with, turned into a response that never leaks internals.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("template: {0}")]
    Template(#[from] minijinja::Error),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        // The detail goes to the log; the client learns only that it was our fault.
        tracing::error!(error = %self, "request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            "500 Internal Server Error\n",
        )
            .into_response()
    }
}
