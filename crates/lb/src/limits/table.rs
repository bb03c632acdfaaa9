//! The per-client table (HAProxy's stick table with `http_req_rate` and `conn_cur`): for each
//! client address, its request bucket and its open connections, in one entry so a connection
//! and its requests cost one lookup each. Requests are metered by GCRA (the token bucket as one
//! timestamp: the time the bucket would be full again), which also says when the next request
//! would pass (`Retry-After`). Written here rather than taken from `governor`: its keyed limiter
//! meters rates only, and open connections would need a second table with its own expiry.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::Limits;
use crate::metrics::LimitMetrics;

/// Shards of the table: workers on different clients rarely meet on one lock.
const SHARDS: usize = 64;
/// Clients tracked at once (HAProxy's `stick-table size`): a bound on memory under a flood of
/// addresses. Beyond it a new client goes untracked (and unlimited) until idle ones expire.
pub const MAX_CLIENTS: usize = 100_000;
const PER_SHARD: usize = MAX_CLIENTS / SHARDS;

#[derive(Default)]
struct Entry {
    /// GCRA's theoretical arrival time, in nanoseconds since the table's epoch: the bucket is
    /// full again at this time.
    full_at: u64,
    /// Connections open now.
    connections: u32,
}

impl Entry {
    fn idle(&self, now: u64) -> bool {
        self.connections == 0 && self.full_at <= now
    }
}

/// Every client's entry, and the limits in force.
pub struct ClientTable {
    limits: ArcSwap<Limits>,
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    /// Picks the shard; seeded per process, so no client can aim at one shard.
    hasher: std::collections::hash_map::RandomState,
    epoch: Instant,
    metrics: LimitMetrics,
}

/// A client already holds `connections_per_client` connections.
#[derive(Debug, PartialEq, Eq)]
pub struct OverShare;

/// One open connection of a client, counted until dropped.
pub struct ConnectionGuard {
    table: Arc<ClientTable>,
    /// The client's key (`key_of`).
    key: IpAddr,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut shard = self.table.shard(self.key);
        if let Some(entry) = shard.get_mut(&self.key) {
            entry.connections = entry.connections.saturating_sub(1);
        }
    }
}

/// The table's key for a client: an IPv4 address (an IPv4-mapped IPv6 one included) as it is,
/// an IPv6 address by its /64, the block one subscriber usually holds whole: a client cannot
/// become thousands of clients by changing the low bits of its address.
pub fn key_of(client: IpAddr) -> IpAddr {
    match client.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !(u128::MAX >> 64)).into()),
        v4 => v4,
    }
}

impl ClientTable {
    pub fn new(limits: Limits, metrics: LimitMetrics) -> Self {
        Self {
            limits: ArcSwap::from_pointee(limits),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            epoch: Instant::now(),
            metrics,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> arc_swap::Guard<Arc<Limits>> {
        self.limits.load()
    }

    /// Puts new limits in force (SIGHUP). Buckets and connection counts carry over.
    pub fn reload(&self, limits: Limits) {
        if **self.limits.load() != limits {
            tracing::info!(?limits, "limits reloaded");
        }
        self.limits.store(Arc::new(limits));
    }

    pub(crate) fn metrics(&self) -> &LimitMetrics {
        &self.metrics
    }

    fn shard(&self, key: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        let index = self.hasher.hash_one(key) as usize % SHARDS;
        // A panic while holding the lock leaves counts, never broken invariants: go on.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs `f` on the entry of `key` at time `now`, creating it if there is room.
    fn with_entry<T>(&self, key: IpAddr, now: u64, f: impl FnOnce(&mut Entry) -> T) -> Option<T> {
        let mut shard = self.shard(key);
        if shard.len() >= PER_SHARD && !shard.contains_key(&key) {
            shard.retain(|_, e| !e.idle(now));
            if shard.len() >= PER_SHARD {
                self.metrics.table_full.inc();
                return None;
            }
        }
        Some(f(shard.entry(key).or_default()))
    }

    /// One request of `client`: Ok if its bucket has a token, else how long until it has one.
    pub fn request(&self, client: IpAddr) -> Result<(), Duration> {
        self.request_at(client, self.now())
    }

    /// `request` at `now` (nanoseconds since the table's epoch).
    fn request_at(&self, client: IpAddr, now: u64) -> Result<(), Duration> {
        let limits = self.limits.load();
        if limits.rate == 0 {
            return Ok(());
        }
        let interval = 1_000_000_000 / u64::from(limits.rate);
        let capacity = interval * u64::from(limits.burst.max(1));
        let verdict = self.with_entry(key_of(client), now, |entry| {
            let next = entry.full_at.max(now) + interval;
            if next - now <= capacity {
                entry.full_at = next;
                Ok(())
            } else {
                Err(Duration::from_nanos(next - now - capacity))
            }
        });
        let verdict = verdict.unwrap_or(Ok(()));
        if verdict.is_err() {
            self.metrics.limited("rate").inc();
        }
        verdict
    }

    /// A new connection of `client`: Ok with a guard counting it while open (None when the
    /// table is full: let in, uncounted), Err when the client already holds its share.
    pub fn connect(self: &Arc<Self>, client: IpAddr) -> Result<Option<ConnectionGuard>, OverShare> {
        let cap = self.limits.load().connections_per_client;
        let key = key_of(client);
        let admitted = self.with_entry(key, self.now(), |entry| {
            if cap != 0 && entry.connections >= cap {
                return false;
            }
            entry.connections += 1;
            true
        });
        match admitted {
            None => Ok(None),
            Some(true) => Ok(Some(ConnectionGuard {
                table: self.clone(),
                key,
            })),
            Some(false) => {
                self.metrics.limited("connections").inc();
                Err(OverShare)
            }
        }
    }

    /// Drops the entries of idle clients (no connection, bucket full); returns how many are
    /// left.
    pub fn sweep(&self) -> usize {
        self.sweep_at(self.now())
    }

    fn sweep_at(&self, now: u64) -> usize {
        let mut left = 0;
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            shard.retain(|_, e| !e.idle(now));
            left += shard.len();
        }
        self.metrics.clients.set(left as i64);
        left
    }

    /// Sweeps every `period`, for ever.
    pub async fn sweep_every(self: Arc<Self>, period: Duration) {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            self.sweep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(rate: u32, burst: u32, connections: u32) -> Arc<ClientTable> {
        let limits = Limits {
            rate,
            burst,
            connections_per_client: connections,
            ..Limits::default()
        };
        let mut registry = prometheus_client::registry::Registry::default();
        Arc::new(ClientTable::new(
            limits,
            LimitMetrics::register(&mut registry),
        ))
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_others_are_not_touched() {
        let table = table(10, 5, 0);
        let t = 10 * SECOND;
        for _ in 0..5 {
            assert!(table.request_at(ip(1), t).is_ok());
        }
        // The next token comes one interval (100 ms at 10/s) after the burst.
        assert_eq!(
            table.request_at(ip(1), t).unwrap_err(),
            Duration::from_millis(100)
        );
        assert!(table.request_at(ip(2), t).is_ok());
        // At the rate, every request passes.
        for i in 1..=50 {
            assert!(table.request_at(ip(1), t + i * SECOND / 10).is_ok(), "{i}");
        }
    }

    #[test]
    fn a_refused_request_costs_no_token() {
        let table = table(1, 1, 0);
        let t = 10 * SECOND;
        assert!(table.request_at(ip(1), t).is_ok());
        for _ in 0..100 {
            // Hammering does not push the client's next chance further away.
            assert_eq!(
                table.request_at(ip(1), t).unwrap_err(),
                Duration::from_secs(1)
            );
        }
        assert!(table.request_at(ip(1), t + SECOND).is_ok());
    }

    #[test]
    fn rate_zero_is_no_limit() {
        let table = table(0, 0, 0);
        for _ in 0..10_000 {
            assert!(table.request(ip(1)).is_ok());
        }
    }

    #[test]
    fn connections_are_counted_per_client_until_dropped() {
        let table = table(0, 0, 2);
        let a = table.connect(ip(1)).unwrap();
        let _b = table.connect(ip(1)).unwrap();
        assert!(table.connect(ip(1)).is_err());
        assert!(table.connect(ip(2)).is_ok());
        drop(a);
        assert!(table.connect(ip(1)).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_one_its_address() {
        let table = table(0, 0, 1);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _held = table.connect(a).unwrap();
        assert!(table.connect(b).is_err(), "same /64");
        assert!(table.connect(other).is_ok(), "another /64");
        let _v4 = table.connect(ip(7)).unwrap();
        assert!(table.connect("::ffff:192.0.2.7".parse().unwrap()).is_err());
    }

    #[test]
    fn idle_clients_are_swept_busy_ones_kept() {
        let table = table(1, 1, 0);
        let _open = table.connect(ip(1)).unwrap();
        let t = table.now();
        table.request_at(ip(2), t).unwrap();
        assert_eq!(table.sweep_at(t), 2);
        // A second on, ip(2)'s bucket is full again; ip(1) still holds a connection.
        assert_eq!(table.sweep_at(t + SECOND), 1);
    }

    #[test]
    fn a_reload_changes_the_limits_in_force() {
        let table = table(1, 1, 1);
        let _held = table.connect(ip(1)).unwrap();
        assert!(table.connect(ip(1)).is_err());
        table.reload(Limits {
            connections_per_client: 2,
            ..(**table.limits()).clone()
        });
        assert!(table.connect(ip(1)).is_ok());
    }
}
