//! Static files from the site's `static/` folder, served by tower-http's `ServeDir`: strong
//! ETag, Last-Modified, 304 on If-None-Match / If-Modified-Since, Range (206/416),
//! precompressed `.gz`/`.br` siblings, and our Cache-Control.

use http::{HeaderValue, Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tower::ServiceExt;
use tower_http::services::ServeDir;
use webstack_common::serve::BoxBody;

use crate::Config;

/// Which file path a request path maps to, when it is a static file: `/static/x` -> `/x`, and
/// the two root files browsers and crawlers ask for.
pub fn static_path(path: &str) -> Option<&str> {
    match path {
        "/favicon.ico" | "/robots.txt" => Some(path),
        _ => path
            .strip_prefix("/static")
            .filter(|rest| rest.starts_with('/')),
    }
}

pub struct Statics {
    dir: ServeDir,
    cache_control: HeaderValue,
}

impl Statics {
    pub fn new(config: &Config) -> Self {
        Self {
            dir: ServeDir::new(&config.static_root)
                .precompressed_gzip()
                .precompressed_br()
                .append_index_html_on_directories(false),
            cache_control: HeaderValue::from_str(&config.cache_control)
                .unwrap_or(HeaderValue::from_static("no-cache")),
        }
    }

    pub async fn serve(&self, request: Request<Incoming>, file_path: &str) -> Response<BoxBody> {
        let (mut parts, body) = request.into_parts();
        let query = parts
            .uri
            .query()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        parts.uri = match format!("{file_path}{query}").parse::<Uri>() {
            Ok(uri) => uri,
            Err(_) => {
                return crate::plain(
                    http::StatusCode::BAD_REQUEST,
                    "400 Bad Request: invalid path.\n",
                );
            }
        };
        let request = Request::from_parts(parts, body);
        let response = match self.dir.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let mut response = response.map(|body| body.map_err(Into::into).boxed_unsync());
        if response.status().is_success() || response.status() == http::StatusCode::NOT_MODIFIED {
            response
                .headers_mut()
                .insert(http::header::CACHE_CONTROL, self.cache_control.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::static_path;

    #[test]
    fn maps_static_paths() {
        assert_eq!(static_path("/static/style.css"), Some("/style.css"));
        assert_eq!(static_path("/favicon.ico"), Some("/favicon.ico"));
        assert_eq!(static_path("/robots.txt"), Some("/robots.txt"));
        assert_eq!(static_path("/staticx/a"), None);
        assert_eq!(static_path("/static"), None);
        assert_eq!(static_path("/"), None);
        assert_eq!(static_path("/api/whoami"), None);
    }
}
