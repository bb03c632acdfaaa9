//! Forwarding dynamic requests to this host's application server over pooled keep-alive
//! connections, telling the app which web host it came through.

use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use webstack_common::forward::{
    self, RequestIds, X_FORWARDED_PROTO, X_REQUEST_ID, X_WEBSTACK_WEB_HOST,
};
use webstack_common::serve::BoxBody;

use crate::{Config, plain};

pub struct AppProxy {
    client: Client<HttpConnector, Incoming>,
    authority: http::uri::Authority,
    host_name: HeaderValue,
    response_timeout: std::time::Duration,
    request_ids: RequestIds,
}

impl AppProxy {
    pub fn new(config: &Config) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.app_connect_timeout));
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(std::time::Duration::from_secs(4))
                .build(connector),
            authority: config
                .app_addr
                .to_string()
                .parse()
                .expect("a socket address is an authority"),
            host_name: HeaderValue::from_str(&config.host_name).expect("host names are validated"),
            response_timeout: config.app_response_timeout,
            request_ids: RequestIds::default(),
        }
    }

    pub async fn forward(&self, peer: SocketAddr, request: Request<Incoming>) -> Response<BoxBody> {
        let (mut parts, body) = request.into_parts();
        forward::strip_hop_by_hop(&mut parts.headers);
        forward::append_forwarded_for(&mut parts.headers, peer.ip());
        let headers = &mut parts.headers;
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
        }
        if !headers.contains_key(&X_REQUEST_ID) {
            headers.insert(&X_REQUEST_ID, self.request_ids.next());
        }
        headers.insert(&X_WEBSTACK_WEB_HOST, self.host_name.clone());

        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(self.authority.clone());
        uri.path_and_query = parts.uri.path_and_query().cloned();
        parts.uri = Uri::from_parts(uri).expect("scheme, authority and path make a URI");

        match tokio::time::timeout(
            self.response_timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await
        {
            Ok(Ok(response)) => {
                let mut response = response.map(|body| body.map_err(Into::into).boxed_unsync());
                forward::strip_hop_by_hop(response.headers_mut());
                response
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, app = %self.authority, "app request failed");
                plain(
                    StatusCode::BAD_GATEWAY,
                    "502 Bad Gateway: the application server could not be reached.\n",
                )
            }
            Err(_) => {
                tracing::warn!(app = %self.authority, "app response timed out");
                plain(
                    StatusCode::GATEWAY_TIMEOUT,
                    "504 Gateway Timeout: the application server did not answer in time.\n",
                )
            }
        }
    }
}
