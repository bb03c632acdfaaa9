//! The application's metrics: requests by route and status with latency, database queries by
//! node and kind (read/write) with latency and errors, writes held or refused during a
//! failover, and the router's view of the cluster (writer, readers, lag), read at each scrape.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use webstack_db::router::Router;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    /// The route's template (`/posts/{id}`), never the raw path: bounded cardinality.
    route: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueryLabels {
    node: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

/// A read or a write: the two ways the router sends a statement.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Read,
    Write,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
        }
    }
}

fn seconds_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The app's metric families, registered once per process.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<RouteLabels, Counter>,
    request_duration: Family<RouteLabel, Histogram, fn() -> Histogram>,
    queries: Family<QueryLabels, Counter>,
    query_errors: Family<QueryLabels, Counter>,
    query_duration: Family<KindLabel, Histogram, fn() -> Histogram>,
    pub writes_held: Counter,
    pub writes_refused: Counter,
}

impl Metrics {
    /// Registers the families; with a database, also the router's view, read at each scrape.
    pub fn register(registry: &mut Registry, router: Option<Arc<Router>>) -> Metrics {
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(seconds_histogram),
            queries: Family::default(),
            query_errors: Family::default(),
            query_duration: Family::new_with_constructor(seconds_histogram),
            writes_held: Counter::default(),
            writes_refused: Counter::default(),
        };
        let app = registry.sub_registry_with_prefix("webstack_app");
        app.register(
            "requests",
            "HTTP requests answered, by route template and status code",
            metrics.requests.clone(),
        );
        app.register(
            "request_duration_seconds",
            "Time to answer a request, by route template",
            metrics.request_duration.clone(),
        );
        app.register(
            "db_queries",
            "Database statements sent, by node and kind (read or write)",
            metrics.queries.clone(),
        );
        app.register(
            "db_query_errors",
            "Database statements that failed or timed out, by node and kind",
            metrics.query_errors.clone(),
        );
        app.register(
            "db_query_duration_seconds",
            "Time of a database statement including the connection, by kind",
            metrics.query_duration.clone(),
        );
        app.register(
            "db_writes_held",
            "Writes that waited for a primary (a failover was under way)",
            metrics.writes_held.clone(),
        );
        app.register(
            "db_writes_refused",
            "Writes answered 503 because no primary took them within db.write_hold",
            metrics.writes_refused.clone(),
        );
        if let Some(router) = router {
            app.register_collector(Box::new(RouterView(router)));
        }
        metrics
    }

    /// Records one answered request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        self.request_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&RouteLabels {
                route: route.to_string(),
                code: status.to_string(),
            })
            .inc();
    }

    /// Records one statement sent to `node` (and adds it to the request's trace).
    pub fn query(&self, node: &str, kind: Kind, took: Duration, ok: bool) {
        crate::trace::statement(node, kind.as_str(), took, ok);
        let labels = QueryLabels {
            node: node.to_string(),
            kind: kind.as_str(),
        };
        self.queries.get_or_create(&labels).inc();
        if !ok {
            self.query_errors.get_or_create(&labels).inc();
        }
        self.query_duration
            .get_or_create(&KindLabel {
                kind: kind.as_str(),
            })
            .observe(took.as_secs_f64());
    }
}

/// One gauge's value for a node of the router's view (None: no sample).
type NodeValue = fn(&webstack_db::router::NodeView) -> Option<i64>;

/// The router's view of the cluster at scrape time.
struct RouterView(Arc<Router>);

impl std::fmt::Debug for RouterView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RouterView")
    }
}

impl Collector for RouterView {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let view = self.0.view();
        let families: [(&str, &str, NodeValue); 3] = [
            ("db_writer", "1 for the node the app sends writes to", |n| {
                Some(i64::from(n.writer))
            }),
            (
                "db_reader",
                "1 for each node the app may send reads to",
                |n| Some(i64::from(n.reader)),
            ),
            (
                "db_lag_transactions",
                "Transactions each node is behind the writer, as the app's router sees it",
                |n| n.lag_transactions.map(|l| l as i64),
            ),
        ];
        for (name, help, value) in families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for node in &view {
                if let Some(value) = value(node) {
                    ConstGauge::new(value)
                        .encode(family.encode_family(&[("node", node.name.as_str())])?)?;
                }
            }
        }
        Ok(())
    }
}
