//! Forwarding dynamic requests to this host's application server over pooled keep-alive
//! connections, on the HTTP/1 core the lb uses (`webstack_http1`): the same header rules
//! (the lb's `X-Forwarded-Proto` and `X-Request-Id` kept, `X-Webstack-Web-Host` set), early
//! responses heard while the body goes out, and upgrades (WebSocket) relayed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use webstack_common::forward::{RequestIds, X_WEBSTACK_WEB_HOST};
use webstack_common::serve::BoxBody;
use webstack_http1::body::BODY_TIMEOUT;
use webstack_http1::client::{self, ResponseBody, Return, SendError, Target};
use webstack_http1::exchange::Sent;
use webstack_http1::head::{self, Forwarding, ResponseRewrite};
use webstack_http1::pool::{Conn, Pool};
use webstack_http1::retry::Failure;
use webstack_http1::tunnel::{TUNNEL_IDLE, tunnel};

use crate::{Config, plain};

pub struct AppProxy {
    /// Connections to the one app server (index 0).
    pool: Arc<Pool>,
    addr: SocketAddr,
    authority: String,
    host_name: String,
    response_timeout: Duration,
    request_ids: RequestIds,
    server_timing: bool,
}

impl AppProxy {
    pub fn new(config: &Config) -> Self {
        Self {
            pool: Arc::new(Pool::new(1, config.app_connect_timeout)),
            addr: config.app_addr,
            authority: config.app_addr.to_string(),
            host_name: config.host_name.clone(),
            response_timeout: config.app_response_timeout,
            request_ids: RequestIds::default(),
            server_timing: config.server_timing,
        }
    }

    pub async fn forward(
        &self,
        peer: SocketAddr,
        mut request: Request<Incoming>,
    ) -> Response<BoxBody> {
        let started = std::time::Instant::now();
        let upgrade = request
            .headers()
            .contains_key(http::header::UPGRADE)
            .then(|| hyper::upgrade::on(&mut request));
        let (parts, mut body) = request.into_parts();
        let mut out = Vec::with_capacity(1024);
        let forwarding = Forwarding {
            client: peer.ip(),
            proto: None,
            keep_request_id: true,
            own_header: Some((X_WEBSTACK_WEB_HOST.as_str(), self.host_name.as_bytes())),
            upgrade: upgrade.is_some(),
        };
        let request = match head::rewrite_parts(&parts, body.is_end_stream(), &mut out, &forwarding)
        {
            Ok(request) => request,
            Err(refusal) => {
                let status =
                    StatusCode::from_u16(refusal.status).unwrap_or(StatusCode::BAD_REQUEST);
                client::drain_rest(body);
                return plain(status, refusal.text());
            }
        };
        let request_id = match &request.request_id {
            Some(range) => out[range.clone()].to_vec(),
            None => {
                let id = self.request_ids.next_bytes();
                out.extend_from_slice(b"X-Request-Id: ");
                out.extend_from_slice(&id);
                out.extend_from_slice(b"\r\n");
                id.to_vec()
            }
        };
        let base = out.len();
        request.end_head_for(&mut out, base, &self.authority);
        let rewrite = ResponseRewrite {
            request_is_head: request.is_head,
            client_keep_alive: true,
            client_http10: false,
            request_id: &request_id,
            hsts: None,
            request_upgrade: request.upgrade,
            timing: self.server_timing.then_some(("web", started)),
        };
        let replayable = request.bodyless() && request.idempotent;
        let mut back = Vec::with_capacity(1024);
        let target = Target {
            pool: &self.pool,
            server: 0,
            addr: self.addr,
            replayable,
        };
        let sent = client::send_pooled(
            &target,
            &out,
            request.body,
            &mut body,
            &mut back,
            &rewrite,
            self.response_timeout,
            BODY_TIMEOUT,
        )
        .await;
        let (conn, response, sent) = match sent {
            Ok(exchanged) => exchanged,
            Err(SendError::Server(failure)) => {
                tracing::warn!(error = %failure, app = %self.addr, "app request failed");
                client::drain_rest(body);
                return match failure {
                    Failure::Timeout => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        "504 Gateway Timeout: the application server did not answer in time.\n",
                    ),
                    _ => plain(
                        StatusCode::BAD_GATEWAY,
                        "502 Bad Gateway: the application server could not be reached.\n",
                    ),
                };
            }
            Err(SendError::Client(error)) => {
                tracing::debug!(client = %peer, %error, "the client's request body failed");
                return plain(
                    StatusCode::BAD_REQUEST,
                    "400 Bad Request: the request body failed.\n",
                );
            }
        };
        let head = client::response_parts(&back, &response);
        if response.upgrade {
            if let Some(upgrade) = upgrade {
                tokio::spawn(relay_upgraded(upgrade, conn));
            }
            return head.map(|()| {
                http_body_util::Empty::new()
                    .map_err(|n| match n {})
                    .boxed_unsync()
            });
        }
        // The app answered before it had the whole body: the rest is read and dropped
        // (bounded), so hyper can keep the client connection instead of closing it under the
        // answer.
        client::drain_rest(body);
        let back_to = (response.reusable && sent == Sent::Complete).then(|| Return {
            pool: self.pool.clone(),
            server: 0,
        });
        let body = ResponseBody::new(conn, response.body, back_to, BODY_TIMEOUT, None);
        head.map(|()| body.map_err(Into::into).boxed_unsync())
    }
}

/// After the 101 went out: the client's upgraded connection and the app's, joined.
async fn relay_upgraded(upgrade: hyper::upgrade::OnUpgrade, mut conn: Conn) {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(error) => return tracing::debug!(%error, "the client's upgrade failed"),
    };
    let mut client = TokioIo::new(upgraded);
    // What the app sent right after its 101 belongs to the new protocol.
    if !conn.buf.is_empty() {
        let early = std::mem::take(&mut conn.buf);
        if webstack_http1::body::write_two(&mut client, &early, &[], BODY_TIMEOUT)
            .await
            .is_err()
        {
            return;
        }
    }
    if let Err(error) = tunnel(&mut client, &mut conn.stream, TUNNEL_IDLE).await {
        tracing::debug!(%error, "upgraded connection ended");
    }
}
