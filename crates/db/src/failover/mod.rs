//! Automatic failover through etcd: the promotion rule (`decide`) and the agent that each db
//! role runs (`agent`). See docs/database.md for the failure model and what is promised.

pub mod agent;
pub mod decide;
pub mod metrics;

pub use agent::{Agent, Tick};
pub use decide::{Decision, Leader, Member, PrimaryReport, decide};
