//! The db role's metrics about its MariaDB server, sampled about once a second on the role's
//! own connection and exported at scrape time: role and read_only, GTID positions per domain
//! and source, replication threads, errors and lag, semi-sync, connections and InnoDB basics.
//! (mysqld_exporter exports no GTID positions, and no replica status without `SLAVE
//! MONITOR`; the role has both at hand.)

use std::sync::{Arc, RwLock};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::gtid::GtidPos;
use crate::node::NodeStatus;

/// `SHOW GLOBAL STATUS` variables we export.
const STATUS_VARIABLES: [&str; 16] = [
    "Threads_connected",
    "Connections",
    "Questions",
    "Slow_queries",
    "Rpl_semi_sync_master_status",
    "Rpl_semi_sync_master_clients",
    "Rpl_semi_sync_master_yes_tx",
    "Rpl_semi_sync_master_no_tx",
    "Innodb_buffer_pool_pages_data",
    "Innodb_buffer_pool_pages_free",
    "Innodb_buffer_pool_pages_dirty",
    "Innodb_buffer_pool_pages_total",
    "Innodb_rows_read",
    "Innodb_rows_inserted",
    "Innodb_rows_updated",
    "Innodb_rows_deleted",
];

/// One sample of the server.
#[derive(Clone, Debug, Default)]
pub struct ServerSample {
    /// (source, position): current, binlog, slave.
    gtid: Vec<(&'static str, GtidPos)>,
    max_connections: f64,
    status: Vec<(String, f64)>,
    io_errno: Option<f64>,
    sql_errno: Option<f64>,
}

impl ServerSample {
    fn status(&self, name: &str) -> Option<f64> {
        self.status
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }

    /// Reads the server (three short queries).
    pub async fn read(conn: &mut Conn) -> Result<ServerSample, mysql_async::Error> {
        let (current, binlog, slave, max_connections): (String, String, String, u64) = conn
            .query_first(
                "SELECT @@gtid_current_pos, @@gtid_binlog_pos, @@gtid_slave_pos, @@max_connections",
            )
            .await?
            .unwrap_or_default();
        let list = STATUS_VARIABLES
            .iter()
            .map(|v| format!("'{v}'"))
            .collect::<Vec<_>>()
            .join(",");
        let status: Vec<(String, String)> = conn
            .query(format!(
                "SHOW GLOBAL STATUS WHERE Variable_name IN ({list})"
            ))
            .await?;
        let replica: Option<mysql_async::Row> = conn.query_first("SHOW SLAVE STATUS").await?;
        let errno = |name: &str| {
            replica
                .as_ref()
                .and_then(|row| row.get::<Option<String>, _>(name).flatten())
                .and_then(|v| v.parse::<f64>().ok())
        };
        Ok(ServerSample {
            gtid: vec![
                ("current", GtidPos::parse(&current)),
                ("binlog", GtidPos::parse(&binlog)),
                ("slave", GtidPos::parse(&slave)),
            ],
            max_connections: max_connections as f64,
            status: status
                .into_iter()
                .map(|(name, value)| {
                    // ON/OFF for the semi-sync status.
                    let value = match value.as_str() {
                        "ON" => 1.0,
                        "OFF" => 0.0,
                        other => other.parse().unwrap_or(0.0),
                    };
                    (name, value)
                })
                .collect(),
            io_errno: errno("Last_IO_Errno"),
            sql_errno: errno("Last_SQL_Errno"),
        })
    }
}

#[derive(Debug, Default)]
struct Latest {
    status: Option<NodeStatus>,
    server: Option<ServerSample>,
}

/// The handle the node loop updates and the scrape reads.
#[derive(Clone, Debug)]
pub struct ServerStats {
    latest: Arc<RwLock<Latest>>,
}

impl ServerStats {
    /// Registers the collector; `max_replica_lag` is exported with it, so the lag alert
    /// follows the topology's bound.
    pub fn register(registry: &mut Registry, max_replica_lag: u64) -> ServerStats {
        let stats = ServerStats {
            latest: Arc::default(),
        };
        registry.register_collector(Box::new(StatsCollector {
            latest: stats.latest.clone(),
            max_replica_lag,
        }));
        stats
    }

    pub fn set_status(&self, status: &NodeStatus) {
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .status = Some(status.clone());
    }

    /// A new sample, or None when the server could not be read (its series disappear).
    pub fn set_server(&self, sample: Option<ServerSample>) {
        self.latest
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .server = sample;
    }
}

#[derive(Debug)]
struct StatsCollector {
    latest: Arc<RwLock<Latest>>,
    max_replica_lag: u64,
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(value);
    gauge.encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: f64,
) -> Result<(), std::fmt::Error> {
    let counter = ConstCounter::new(value);
    counter.encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

impl Collector for StatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let latest = self.latest.read().unwrap_or_else(|e| e.into_inner());
        let e = &mut encoder;
        gauge(
            e,
            "webstack_db_max_replica_lag_transactions",
            "The topology's bound: a replica further behind gets no reads",
            self.max_replica_lag as f64,
        )?;
        let Some(status) = &latest.status else {
            return gauge(
                e,
                "webstack_db_up",
                "1 while mariadbd answers the db role",
                0.0,
            );
        };
        let up = status.role == "primary" || status.role == "replica";
        gauge(
            e,
            "webstack_db_up",
            "1 while mariadbd answers the db role",
            f64::from(u8::from(up)),
        )?;
        if !up {
            return Ok(());
        }
        gauge(
            e,
            "webstack_db_read_only",
            "1 while the server refuses writes (a replica, or a fenced primary)",
            f64::from(u8::from(status.read_only)),
        )?;
        if status.role == "replica" {
            let yes = |v: &Option<String>| f64::from(u8::from(v.as_deref() == Some("Yes")));
            gauge(
                e,
                "webstack_db_replica_io_running",
                "1 while the replica's I/O thread runs (receives the primary's binlog)",
                yes(&status.io_running),
            )?;
            gauge(
                e,
                "webstack_db_replica_sql_running",
                "1 while the replica's SQL thread runs (applies what it received)",
                yes(&status.sql_running),
            )?;
            if let Some(lag) = status.lag_transactions {
                gauge(
                    e,
                    "webstack_db_replica_lag_transactions",
                    "Transactions the replica is behind the primary's binlog",
                    lag as f64,
                )?;
            }
            if let Some(seconds) = status.seconds_behind_master {
                gauge(
                    e,
                    "webstack_db_replica_lag_seconds",
                    "Seconds_Behind_Master as the replica reports it",
                    seconds as f64,
                )?;
            }
        }
        let Some(server) = &latest.server else {
            return Ok(());
        };
        if status.role == "replica" {
            let mut family = e.encode_descriptor(
                "webstack_db_replica_last_errno",
                "The replica thread's last error number (0: none), by thread (io, sql)",
                None,
                MetricType::Gauge,
            )?;
            for (thread, errno) in [("io", server.io_errno), ("sql", server.sql_errno)] {
                ConstGauge::new(errno.unwrap_or(0.0))
                    .encode(family.encode_family(&[("thread", thread)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "webstack_db_gtid_sequence",
                "The last GTID sequence number per replication domain, by source (current, binlog, slave)",
                None,
                MetricType::Gauge,
            )?;
            for (source, pos) in &server.gtid {
                for (domain, sequence) in pos.sequences() {
                    let domain = domain.to_string();
                    ConstGauge::new(sequence as f64).encode(
                        family.encode_family(&[("domain", domain.as_str()), ("source", source)])?,
                    )?;
                }
            }
        }
        let status_of = |name: &str| server.status(name).unwrap_or(0.0);
        gauge(
            e,
            "webstack_db_semi_sync_primary_status",
            "1 while semi-synchronous replication is on as the primary sees it (0: fell back to async)",
            status_of("Rpl_semi_sync_master_status"),
        )?;
        gauge(
            e,
            "webstack_db_semi_sync_primary_clients",
            "Replicas connected with semi-sync acknowledgement",
            status_of("Rpl_semi_sync_master_clients"),
        )?;
        counter(
            e,
            "webstack_db_semi_sync_yes_transactions",
            "Commits a replica acknowledged",
            status_of("Rpl_semi_sync_master_yes_tx"),
        )?;
        counter(
            e,
            "webstack_db_semi_sync_no_transactions",
            "Commits that went without a replica's acknowledgement (timeout or no replica)",
            status_of("Rpl_semi_sync_master_no_tx"),
        )?;
        gauge(
            e,
            "webstack_db_threads_connected",
            "Client connections open (Threads_connected)",
            status_of("Threads_connected"),
        )?;
        counter(
            e,
            "webstack_db_connections",
            "Connection attempts since the server started",
            status_of("Connections"),
        )?;
        gauge(
            e,
            "webstack_db_max_connections",
            "The server's max_connections",
            server.max_connections,
        )?;
        counter(
            e,
            "webstack_db_queries",
            "Statements clients sent (Questions)",
            status_of("Questions"),
        )?;
        counter(
            e,
            "webstack_db_slow_queries",
            "Statements slower than long_query_time",
            status_of("Slow_queries"),
        )?;
        {
            let mut family = e.encode_descriptor(
                "webstack_db_innodb_buffer_pool_pages",
                "InnoDB buffer pool pages, by state (data, free, dirty, total)",
                None,
                MetricType::Gauge,
            )?;
            for state in ["data", "free", "dirty", "total"] {
                let value = status_of(&format!("Innodb_buffer_pool_pages_{state}"));
                ConstGauge::new(value).encode(family.encode_family(&[("state", state)])?)?;
            }
        }
        {
            let mut family = e.encode_descriptor(
                "webstack_db_innodb_row_operations",
                "InnoDB row operations, by operation (read, inserted, updated, deleted)",
                None,
                MetricType::Counter,
            )?;
            for operation in ["read", "inserted", "updated", "deleted"] {
                let value = status_of(&format!("Innodb_rows_{operation}"));
                ConstCounter::new(value)
                    .encode(family.encode_family(&[("operation", operation)])?)?;
            }
        }
        Ok(())
    }
}
