//! The load balancer's metric names and families, in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServerLabel {
    pub server: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    pub server: String,
    /// Status class: 1xx .. 5xx. Never a raw path.
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HostLabel {
    pub host: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The certificate's first DNS name.
    pub name: String,
    /// local-ca, acme or file.
    pub origin: String,
}

/// A gauge holding seconds since the epoch.
pub type Timestamp = Gauge<f64, AtomicU64>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabel {
    /// no_server, connect, no_response, timeout
    pub kind: &'static str,
}

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Families registered once per process.
#[derive(Clone)]
pub struct Metrics {
    responses: Family<ResponseLabels, Counter>,
    duration: Family<ServerLabel, Histogram, fn() -> Histogram>,
    up: Family<ServerLabel, Gauge>,
    active: Family<ServerLabel, Gauge>,
    health_checks_failed: Family<ServerLabel, Counter>,
    pub retries: Counter,
    pub errors: Family<ErrorLabel, Counter>,
    vip_holder: Family<HostLabel, Gauge>,
    state_since: Family<ServerLabel, Timestamp>,
    last_check: Family<ServerLabel, Timestamp>,
    certificate_expiry: Family<CertificateLabels, Timestamp>,
    admin_state: Family<AdminStateLabels, Gauge>,
    weight: Family<ServerLabel, Gauge>,
    ejections: Family<ServerLabel, Counter>,
    pub queue: crate::balance::queue::QueueMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminStateLabels {
    pub server: String,
    /// ready, drain, maint
    pub state: &'static str,
}

/// One server's handles, fetched from the families once at startup.
#[derive(Clone)]
pub struct ServerMetrics {
    pub responses: [Counter; 5],
    pub duration: Histogram,
    pub up: Gauge,
    pub active: Gauge,
    pub health_checks_failed: Counter,
    /// When the server last went up or down (or was first checked).
    pub state_since: Timestamp,
    pub last_check: Timestamp,
    /// 1 for the operator's state of the server, 0 for the others.
    admin_states: [Gauge; 3],
    pub weight: Gauge,
    /// Times failed requests took it out of rotation (passive outlier ejection).
    pub ejections: Counter,
}

impl ServerMetrics {
    pub fn admin_state(&self, state: crate::server::AdminState) -> &Gauge {
        &self.admin_states[state as usize]
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            responses: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
            up: Family::default(),
            active: Family::default(),
            health_checks_failed: Family::default(),
            retries: Counter::default(),
            errors: Family::default(),
            vip_holder: Family::default(),
            state_since: Family::default(),
            last_check: Family::default(),
            certificate_expiry: Family::default(),
            admin_state: Family::default(),
            weight: Family::default(),
            ejections: Family::default(),
            queue: crate::balance::queue::QueueMetrics::unregistered(),
        };
        let r = registry.sub_registry_with_prefix("webstack_lb");
        r.register(
            "responses",
            "Responses sent to clients, by server and status class",
            metrics.responses.clone(),
        );
        r.register(
            "response_duration_seconds",
            "Time from request to response head, by server",
            metrics.duration.clone(),
        );
        r.register(
            "server_up",
            "1 when the server is in rotation (health checks pass)",
            metrics.up.clone(),
        );
        r.register(
            "server_active_requests",
            "Requests in flight to the server",
            metrics.active.clone(),
        );
        r.register(
            "health_check_failures",
            "Failed active health checks",
            metrics.health_checks_failed.clone(),
        );
        r.register(
            "retries",
            "Attempts on another server after a failed connect, a connection closed before an answer, or a 502/503/504 to a replayable request",
            metrics.retries.clone(),
        );
        r.register(
            "errors",
            "Requests answered by the load balancer itself with an error, by cause",
            metrics.errors.clone(),
        );
        r.register(
            "vip_holder",
            "1 while this lb (host) holds the site's address, lb.vip",
            metrics.vip_holder.clone(),
        );
        r.register(
            "server_state_since_timestamp_seconds",
            "When the server last went up or down (its first check counts), seconds since the epoch",
            metrics.state_since.clone(),
        );
        r.register(
            "server_last_check_timestamp_seconds",
            "When the server's last active health check ended, seconds since the epoch",
            metrics.last_check.clone(),
        );
        r.register(
            "server_admin_state",
            "1 for the state an operator put the server in (ready, drain, maint: webstack lb ...), 0 for the others",
            metrics.admin_state.clone(),
        );
        r.register(
            "queue_length",
            "Requests waiting for a server below its maxconn",
            metrics.queue.length.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Time requests waited in the queue before a server took them",
            metrics.queue.wait.clone(),
        );
        r.register(
            "queue_timeouts",
            "Requests answered 503 after waiting queue_timeout for a server",
            metrics.queue.timeouts.clone(),
        );
        r.register(
            "server_ejections",
            "Times consecutive failed requests took the server out of rotation before its health checks did",
            metrics.ejections.clone(),
        );
        r.register(
            "server_weight",
            "The server's weight in force (the topology's, or an operator's: webstack lb weight)",
            metrics.weight.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "The not-after time of each certificate the lb serves, seconds since the epoch",
            metrics.certificate_expiry.clone(),
        );
        metrics
    }

    /// Replaces the certificate expiry series with `certificates` (name, origin, not-after).
    pub fn set_certificates(&self, certificates: &[(String, String, i64)]) {
        self.certificate_expiry.clear();
        for (name, origin, not_after) in certificates {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    name: name.clone(),
                    origin: origin.clone(),
                })
                .set(*not_after as f64);
        }
    }

    /// The holder gauge of this lb host.
    pub fn vip_holder(&self, host: &str) -> Gauge {
        self.vip_holder
            .get_or_create(&HostLabel {
                host: host.to_string(),
            })
            .clone()
    }

    pub fn server(&self, name: &str) -> ServerMetrics {
        let label = ServerLabel {
            server: name.to_string(),
        };
        ServerMetrics {
            responses: CLASSES.map(|code| {
                self.responses
                    .get_or_create(&ResponseLabels {
                        server: name.to_string(),
                        code,
                    })
                    .clone()
            }),
            duration: self.duration.get_or_create(&label).clone(),
            up: self.up.get_or_create(&label).clone(),
            active: self.active.get_or_create(&label).clone(),
            health_checks_failed: self.health_checks_failed.get_or_create(&label).clone(),
            state_since: self.state_since.get_or_create(&label).clone(),
            last_check: self.last_check.get_or_create(&label).clone(),
            admin_states: crate::server::AdminState::ALL.map(|state| {
                let gauge = self
                    .admin_state
                    .get_or_create(&AdminStateLabels {
                        server: name.to_string(),
                        state: state.as_str(),
                    })
                    .clone();
                gauge.set(i64::from(state == crate::server::AdminState::Ready));
                gauge
            }),
            weight: self.weight.get_or_create(&label).clone(),
            ejections: self.ejections.get_or_create(&label).clone(),
        }
    }

    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabel { kind }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    /// rate, connections, body_rate, body_size, proxy_header
    pub limit: &'static str,
}

/// The per-client limits' counters (`limits::ClientTable`).
#[derive(Clone)]
pub struct LimitMetrics {
    limited: Family<LimitLabel, Counter>,
    /// Clients in the table after the last sweep.
    pub clients: Gauge,
    /// New clients left untracked because the table was full.
    pub table_full: Counter,
}

/// Every `limit` label value, created at start so each series exists from the first scrape.
const LIMITS: [&str; 5] = [
    "rate",
    "connections",
    "body_rate",
    "body_size",
    "proxy_header",
];

impl LimitMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            limited: Family::default(),
            clients: Gauge::default(),
            table_full: Counter::default(),
        };
        for limit in LIMITS {
            metrics.limited(limit);
        }
        let r = registry.sub_registry_with_prefix("webstack_lb");
        r.register(
            "limited",
            "Requests or connections refused by a per-client limit: rate (429), connections (closed), body_rate (408), body_size (413), proxy_header (a trusted proxy's bad PROXY header)",
            metrics.limited.clone(),
        );
        r.register(
            "limit_clients",
            "Client addresses tracked by the per-client limits",
            metrics.clients.clone(),
        );
        r.register(
            "limit_table_full",
            "New clients left unlimited because the per-client table was full",
            metrics.table_full.clone(),
        );
        metrics
    }

    pub fn limited(&self, limit: &'static str) -> Counter {
        self.limited.get_or_create(&LimitLabel { limit }).clone()
    }
}
