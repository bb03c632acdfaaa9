//! The database tier: a real MariaDB primary-replica cluster provisioned and supervised by
//! webstack (`node`), and the client-side router the application uses (`router`).

mod config;
pub mod failover;
pub mod gtid;
pub mod metrics;
pub mod node;
pub mod provision;
pub mod router;
pub mod secrets;

pub use config::{ClientConfig, NodeConfig};
