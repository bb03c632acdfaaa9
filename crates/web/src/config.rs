//! The web server's validated settings, built by `webstack-config` from the topology file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the `web` role of one host needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// This host's name, sent as `X-Served-By` and to the app.
    pub host_name: String,
    /// Root of the site's static files, served under `/static/`.
    pub static_root: PathBuf,
    /// Value of `Cache-Control` on static files.
    pub cache_control: String,
    /// How long a kept static file is trusted before a `stat` checks it again (nginx's
    /// `open_file_cache_valid`); zero: at every request.
    pub file_check_interval: Duration,
    /// Add `X-Served-By: <host>` to every response.
    pub expose_server_name: bool,
    /// This host's application server; everything that is not a static file goes there.
    pub app_addr: SocketAddr,
    /// The app's Unix socket on this host (`app.unix_socket`): used instead of `app_addr`.
    pub app_socket: Option<PathBuf>,
    /// Connect to the app (its Unix socket, or TCP).
    pub app_connect_timeout: Duration,
    /// From sending a request to the app until its response head arrives.
    pub app_response_timeout: Duration,
    /// A client must send a complete request head within this time.
    pub client_header_timeout: Duration,
    /// The access log (one line per request, buffered), or none.
    pub access_log: Option<webstack_common::access_log::Settings>,
    /// `Server-Timing: web;dur=..` on proxied responses (opt-in).
    pub server_timing: bool,
    /// Client connections served at once; more wait in the listen backlog.
    pub maxconn: usize,
}
