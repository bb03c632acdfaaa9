//! Each host's own metrics, served by its supervisor on `monitor.host_port` (Prometheus' job
//! `host`): every role's state and restarts, and the state dir's disk. The roles cannot tell
//! that they were stopped or keep crashing; the supervisor can.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

/// One role of the host at scrape time.
#[derive(Clone, Debug)]
pub(crate) struct RoleSample {
    pub role: &'static str,
    /// running, restarting, pending or stopped.
    pub state: &'static str,
    /// Running and answering `/ready`.
    pub up: bool,
    pub restarts: u32,
}

pub(crate) const STATES: [&str; 4] = ["running", "restarting", "pending", "stopped"];

type Snapshot = Arc<dyn Fn() -> Vec<RoleSample> + Send + Sync>;

/// One value of a firewall counter (packets or bytes).
type CounterValue = fn(&webstack_firewall::Counter) -> u64;

/// The host's registry: `snapshot` is called at each scrape. `firewall`: this process runs one
/// host on its own machine or namespace (`run --host`), so webstack's nftables counters here
/// are that host's.
pub(crate) fn registry(snapshot: Snapshot, state_dir: PathBuf, firewall: bool) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(HostCollector {
        snapshot,
        state_dir,
        firewall,
    }));
    registry
}

struct HostCollector {
    snapshot: Snapshot,
    state_dir: PathBuf,
    firewall: bool,
}

impl std::fmt::Debug for HostCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCollector")
            .field("state_dir", &self.state_dir)
            .finish()
    }
}

impl Collector for HostCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let roles = (self.snapshot)();
        {
            let mut family = encoder.encode_descriptor(
                "webstack_supervisor_role_up",
                "1 while the role's process runs and answers /ready",
                None,
                MetricType::Gauge,
            )?;
            for sample in &roles {
                ConstGauge::new(i64::from(sample.up))
                    .encode(family.encode_family(&[("role", sample.role)])?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "webstack_supervisor_role_state",
                "1 for the role's current state (running, restarting, pending, stopped)",
                None,
                MetricType::Gauge,
            )?;
            for sample in &roles {
                for state in STATES {
                    ConstGauge::new(i64::from(sample.state == state)).encode(
                        family.encode_family(&[("role", sample.role), ("state", state)])?,
                    )?;
                }
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "webstack_supervisor_role_restarts",
                "Times the supervisor restarted the role after it exited unexpectedly",
                None,
                MetricType::Counter,
            )?;
            for sample in &roles {
                ConstCounter::new(u64::from(sample.restarts))
                    .encode(family.encode_family(&[("role", sample.role)])?)?;
            }
        }
        if let Ok(stat) = nix::sys::statvfs::statvfs(&self.state_dir) {
            let block = stat.fragment_size() as f64;
            for (name, help, value) in [
                (
                    "webstack_supervisor_state_dir_available_bytes",
                    "Bytes available to webstack on the state dir's filesystem",
                    stat.blocks_available() as f64 * block,
                ),
                (
                    "webstack_supervisor_state_dir_size_bytes",
                    "Size of the state dir's filesystem in bytes",
                    stat.blocks() as f64 * block,
                ),
            ] {
                let gauge = ConstGauge::new(value);
                gauge.encode(encoder.encode_descriptor(
                    name,
                    help,
                    None,
                    gauge.metric_type(),
                )?)?;
            }
        }
        let nft = std::path::Path::new("/usr/sbin/nft");
        if self.firewall && nft.is_file() {
            // Empty when webstack's table is not applied here: no series then.
            let counters = webstack_firewall::counters(nft, std::time::Duration::from_secs(2));
            let families: [(&str, &str, CounterValue); 2] = [
                (
                    "webstack_firewall_packets",
                    "Packets each rule of the host's firewall counted (accepted, rejected or dropped)",
                    |c| c.packets,
                ),
                (
                    "webstack_firewall_bytes",
                    "Bytes each rule of the host's firewall counted (accepted, rejected or dropped)",
                    |c| c.bytes,
                ),
            ];
            for (name, help, value) in families.into_iter().filter(|_| !counters.is_empty()) {
                let mut family =
                    encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
                for counter in &counters {
                    ConstCounter::new(value(counter))
                        .encode(family.encode_family(&[("rule", counter.name.as_str())])?)?;
                }
            }
        }
        Ok(())
    }
}
