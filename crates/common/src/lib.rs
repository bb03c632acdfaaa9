//! Pieces every role process shares: shutdown and drain, the HTTP connection loop, the admin
//! listener (`/live`, `/ready`, `/metrics`) and logging setup.

pub mod access_log;
pub mod admin;
pub mod backoff;
pub mod child;
pub mod files;
pub mod forward;
pub mod metrics;
pub mod probe;
pub mod secret;
pub mod serve;
pub mod shutdown;
pub mod telemetry;

pub use admin::{Admin, serve_admin};
pub use serve::{ConnectionLimit, HttpOptions, serve_http};
pub use shutdown::Shutdown;
