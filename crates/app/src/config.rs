//! The application server's validated settings, built by `webstack-config`.

use std::path::PathBuf;

/// Everything the `app` role of one host needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// This host's name, shown on pages and in `/api/whoami`.
    pub host_name: String,
    /// The site's public name (`www.foobar.com`), used in page titles.
    pub site_name: String,
    /// Folder of the site's HTML templates (`site/templates/`).
    pub templates_dir: PathBuf,
    /// The database cluster, when the topology has one.
    pub db: Option<webstack_db::ClientConfig>,
    /// Client connections (from the host's web server) served at once; more wait in the
    /// listen backlog.
    pub maxconn: usize,
    /// The access log (one line per request, buffered), or none.
    pub access_log: Option<webstack_common::access_log::Settings>,
    /// `Server-Timing: app;dur=.., db;dur=..` on every response (opt-in: it tells clients
    /// how long the backend took).
    pub server_timing: bool,
    /// A Unix socket to listen on besides the TCP port, for the web server of this host.
    pub unix_socket: Option<PathBuf>,
}
