//! Coordination: the etcd cluster webstack runs (one member per host with role `etcd`) and
//! what its users share: where it is, the key layout, and a bounded client connection.
//! The database failover agent (webstack-db) and the app's router build on this.

pub mod member;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use etcd_client;
pub use member::MemberConfig;

/// Where the cluster is and where webstack's keys live in it.
#[derive(Clone, Debug)]
pub struct Cluster {
    /// `http://address:port` of every member.
    pub endpoints: Vec<String>,
    /// `/webstack/<site>/`: every key of this site starts with it.
    pub prefix: String,
    /// The database leader key's lease: a dead primary is replaced after at most this.
    pub lease_ttl: Duration,
    /// Connections made so far: where the next one starts.
    pub attempts: Arc<AtomicUsize>,
}

/// One connection attempt, and one request: an etcd without quorum makes calls hang, and
/// every caller must see that as "unreachable" quickly instead of freezing.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1000);
const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);

impl Cluster {
    /// The key of `name` under this site's prefix (`db/leader` -> `/webstack/<site>/db/leader`).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A client of one member that answers, trying each in turn (from a different one per
    /// process and per call), with bounded calls. One member per client on purpose: the
    /// client's own balancing over several endpoints keeps sending requests to a dead member
    /// ("tcp connect error"), so callers drop the client on an error and connect again.
    pub async fn connect(&self) -> Result<etcd_client::Client, etcd_client::Error> {
        let n = self.endpoints.len().max(1);
        // Each call starts one member further: after a failure, another member is tried first.
        let first =
            (std::process::id() as usize + self.attempts.fetch_add(1, Ordering::Relaxed)) % n;
        let mut last = None;
        for i in 0..self.endpoints.len() {
            let endpoint = &self.endpoints[(first + i) % n];
            match connect_one(endpoint).await {
                Ok(client) => return Ok(client),
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            etcd_client::Error::InvalidArgs("the topology names no etcd member".into())
        }))
    }
}

/// A client of `endpoint`, once it has answered a status request.
async fn connect_one(endpoint: &str) -> Result<etcd_client::Client, etcd_client::Error> {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(1));
    let attempt = async {
        let mut client = etcd_client::Client::connect([endpoint], Some(options)).await?;
        client.status().await?;
        Ok(client)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT * 2, attempt).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::InvalidArgs(format!(
            "etcd member {endpoint} did not answer within {:?}",
            CONNECT_TIMEOUT * 2
        ))),
    }
}

/// `name=http://address:port,...`: etcd's `--initial-cluster`.
pub(crate) fn initial_cluster(members: &[(String, SocketAddr)]) -> String {
    members
        .iter()
        .map(|(name, peer)| format!("{name}=http://{peer}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_initial_cluster() {
        let cluster = Cluster {
            endpoints: vec!["http://127.0.0.10:2379".into()],
            prefix: "/webstack/www.foobar.com/".into(),
            lease_ttl: Duration::from_secs(2),
            attempts: Default::default(),
        };
        assert_eq!(
            cluster.key("db/leader"),
            "/webstack/www.foobar.com/db/leader"
        );
        let members = [
            ("lb-01".to_string(), "127.0.0.10:2380".parse().unwrap()),
            ("web-01".to_string(), "127.0.0.11:2380".parse().unwrap()),
        ];
        assert_eq!(
            initial_cluster(&members),
            "lb-01=http://127.0.0.10:2380,web-01=http://127.0.0.11:2380"
        );
    }
}
