//! The site's address (VIP) shared by the lb hosts: which lb serves it now, and how it moves.
//! On one machine's loopback the lbs pass one listening socket between them (`standin`); on
//! real machines and in network namespaces keepalived moves the address by VRRP (`keepalived`).

pub mod keepalived;
pub mod standin;

use std::net::IpAddr;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::{VipConfig, VipMode};

/// This lb's part in serving the VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipState {
    /// Holds the address: the site's traffic comes here.
    Master,
    /// Ready to take over.
    Backup,
    /// Cannot take over (keepalived not running, no healthy server, stopping).
    Fault,
}

impl VipState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Master => "master",
            Self::Backup => "backup",
            Self::Fault => "fault",
        }
    }
}

/// The VIP as this lb sees it: settings, state, and the metric that says who holds it.
pub struct Vip {
    pub config: VipConfig,
    pub state: watch::Sender<VipState>,
}

impl Vip {
    pub fn new(config: VipConfig) -> Self {
        let first = match config.mode {
            // Until this lb has the sockets and tried the lock.
            VipMode::StandIn { .. } => VipState::Backup,
            // Until keepalived reports.
            VipMode::Vrrp(_) => VipState::Fault,
        };
        Self {
            config,
            state: watch::channel(first).0,
        }
    }

    pub fn address(&self) -> IpAddr {
        self.config.address
    }

    pub fn mode(&self) -> &'static str {
        match self.config.mode {
            VipMode::StandIn { .. } => "stand-in",
            VipMode::Vrrp(_) => "vrrp",
        }
    }

    /// The status document's `vip` part.
    pub fn status(&self) -> serde_json::Value {
        let state = *self.state.borrow();
        serde_json::json!({
            "address": self.config.address.to_string(),
            "mode": self.mode(),
            "state": state.as_str(),
            "holder": state == VipState::Master,
        })
    }

    /// One line for `webstack status`.
    pub fn summary(&self) -> String {
        match *self.state.borrow() {
            VipState::Master => format!("holds VIP {}", self.config.address),
            VipState::Backup => format!("standby for VIP {}", self.config.address),
            VipState::Fault => format!("cannot take VIP {} (fault)", self.config.address),
        }
    }
}

/// Keeps `webstack_lb_vip_holder{host}` equal to 1 while this lb holds the VIP.
pub async fn export_holder(mut state: watch::Receiver<VipState>, gauge: Gauge) {
    loop {
        gauge.set(i64::from(*state.borrow_and_update() == VipState::Master));
        if state.changed().await.is_err() {
            return;
        }
    }
}
