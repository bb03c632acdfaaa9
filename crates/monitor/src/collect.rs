//! What the dashboard shows, read straight from the roles every couple of seconds (each
//! host's supervisor, each lb's and db node's `/metrics` and `/status`), so it works without
//! Prometheus; when Prometheus answers, its query API adds the req/s history (sparklines).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use webstack_common::Shutdown;
use webstack_common::probe::get_body;

use crate::expo::{self, Sample};
use crate::{Config, Target};

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How far back the sparklines reach.
const HISTORY: Duration = Duration::from_secs(300);

/// The dashboard's data, as its templates read it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overview {
    pub site: String,
    pub updated: String,
    /// healthy, degraded or down.
    pub verdict: &'static str,
    pub problems: Vec<String>,
    /// True when Prometheus answered (sparklines present).
    pub history: bool,
    pub vip: Option<VipView>,
    pub hosts: Vec<HostState>,
    pub lbs: Vec<LbView>,
    pub db: DbView,
    pub certificates: Vec<CertView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct VipView {
    pub address: String,
    pub holder: Option<String>,
    pub holders: Vec<String>,
    /// ok (one holder), none, or split (more than one).
    pub state: &'static str,
}

#[derive(Clone, Debug, Serialize)]
pub struct HostState {
    pub name: String,
    pub address: String,
    pub up: bool,
    pub roles: Vec<RoleState>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RoleState {
    pub role: String,
    pub up: bool,
    pub ready: bool,
    pub detail: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LbView {
    pub host: String,
    pub up: bool,
    pub holds_vip: bool,
    pub servers: Vec<ServerView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ServerView {
    pub name: String,
    /// up, down or unknown.
    pub state: &'static str,
    pub since: String,
    pub last_check: String,
    pub in_flight: i64,
    pub rps: String,
    pub errors_ps: String,
    pub p50_ms: String,
    pub p99_ms: String,
    /// SVG polyline points in a 100x20 box; empty without history.
    pub spark: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DbView {
    pub primary: Option<String>,
    pub term: Option<i64>,
    pub nodes: Vec<DbNodeView>,
}

#[derive(Clone, Debug, Serialize)]
pub struct DbNodeView {
    pub host: String,
    pub up: bool,
    pub role: String,
    pub read_only: bool,
    pub gtid: String,
    pub io: String,
    pub sql: String,
    pub lag: String,
    pub semi_sync: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct CertView {
    pub names: String,
    pub origin: String,
    pub expires: String,
    pub days_left: i64,
    pub warn: bool,
}

/// One target's answers in one round.
#[derive(Clone, Debug, Default)]
struct Reading {
    metrics: Option<Vec<Sample>>,
    status: Option<serde_json::Value>,
    error: Option<String>,
}

/// Polls the roles and keeps the latest overview.
pub struct Collector {
    config: Arc<Config>,
    latest: Arc<RwLock<Overview>>,
    /// The previous round's lb metrics (rates and quantiles are differences) and its time.
    previous: HashMap<String, (Vec<Sample>, f64)>,
}

impl Collector {
    pub fn new(config: Arc<Config>) -> Collector {
        let latest = Arc::new(RwLock::new(Overview {
            site: config.site.clone(),
            verdict: "down",
            problems: vec!["no data yet".into()],
            ..Overview::default()
        }));
        Collector {
            config,
            latest,
            previous: HashMap::new(),
        }
    }

    /// The handle the dashboard reads.
    pub fn latest(&self) -> Arc<RwLock<Overview>> {
        self.latest.clone()
    }

    /// Collects every `min(scrape interval, 2 s)` until `shutdown`.
    pub async fn run(mut self, shutdown: Shutdown) {
        let every = self.config.scrape_interval.min(Duration::from_secs(2));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.triggered() => return,
            }
            let overview = self.round().await;
            *self.latest.write().unwrap_or_else(|e| e.into_inner()) = overview;
        }
    }

    async fn round(&mut self) -> Overview {
        let wanted: Vec<Target> = self
            .config
            .targets
            .iter()
            .filter(|t| matches!(t.job.as_str(), "host" | "lb" | "db"))
            .cloned()
            .collect();
        let mut set = tokio::task::JoinSet::new();
        for target in wanted {
            set.spawn(async move {
                let reading = read(&target).await;
                (target, reading)
            });
        }
        let history = self.history();
        let mut readings: HashMap<(String, String), Reading> = HashMap::new();
        while let Some(Ok((target, reading))) = set.join_next().await {
            readings.insert((target.job.clone(), target.host.clone()), reading);
        }
        let history = history.await;
        let now = unix_now();
        let mut overview = Overview {
            site: self.config.site.clone(),
            updated: clock(now),
            history: history.is_some(),
            ..Overview::default()
        };
        let history = history.unwrap_or_default();

        for host in &self.config.hosts {
            let reading = readings.get(&("host".to_string(), host.name.clone()));
            overview.hosts.push(host_state(host, reading));
        }
        for target in self.config.targets.iter().filter(|t| t.job == "lb") {
            let reading = readings
                .get(&("lb".to_string(), target.host.clone()))
                .cloned()
                .unwrap_or_default();
            let previous = self.previous.get(&target.host);
            let view = lb_view(&target.host, &reading, previous, now, &history);
            if let Some(samples) = &reading.metrics {
                self.previous
                    .insert(target.host.clone(), (samples.clone(), now));
            }
            certificates(&reading, &mut overview.certificates);
            overview.lbs.push(view);
        }
        for target in self.config.targets.iter().filter(|t| t.job == "db") {
            let reading = readings
                .get(&("db".to_string(), target.host.clone()))
                .cloned()
                .unwrap_or_default();
            overview.db.nodes.push(db_node(&target.host, &reading));
            if let Some(term) = reading
                .status
                .as_ref()
                .and_then(|s| s.get("term"))
                .and_then(serde_json::Value::as_i64)
            {
                overview.db.term = Some(overview.db.term.map_or(term, |t: i64| t.max(term)));
            }
        }
        overview.db.primary = overview
            .db
            .nodes
            .iter()
            .find(|n| n.role == "primary")
            .map(|n| n.host.clone());
        if let Some(address) = self.config.vip {
            let holders: Vec<String> = overview
                .lbs
                .iter()
                .filter(|lb| lb.holds_vip)
                .map(|lb| lb.host.clone())
                .collect();
            overview.vip = Some(VipView {
                address: address.to_string(),
                holder: (holders.len() == 1).then(|| holders[0].clone()),
                state: match holders.len() {
                    0 => "none",
                    1 => "ok",
                    _ => "split",
                },
                holders,
            });
        }
        judge(&mut overview);
        overview
    }

    /// Req/s per (lb host, server) over the last five minutes from Prometheus, as sparkline
    /// points; None when Prometheus does not answer.
    fn history(
        &self,
    ) -> impl std::future::Future<Output = Option<HashMap<(String, String), String>>> + use<> {
        let addr = self.config.prometheus_addr();
        let run = self.config.has_programs();
        let step = self
            .config
            .scrape_interval
            .max(Duration::from_secs(5))
            .as_secs();
        async move {
            if !run {
                return None;
            }
            let end = unix_now();
            let start = end - HISTORY.as_secs_f64();
            let query = "sum by (host, server) (rate(webstack_lb_responses_total[30s]))";
            let path = format!(
                "/api/v1/query_range?query={}&start={start:.0}&end={end:.0}&step={step}",
                percent_encode(query)
            );
            let (status, body) = get_body(addr, &addr.to_string(), &path, PROBE_TIMEOUT)
                .await
                .ok()?;
            if !status.is_success() {
                return None;
            }
            let json: serde_json::Value = serde_json::from_slice(&body).ok()?;
            let mut out = HashMap::new();
            for series in json["data"]["result"].as_array()? {
                let host = series["metric"]["host"].as_str().unwrap_or("").to_string();
                let server = series["metric"]["server"]
                    .as_str()
                    .unwrap_or("")
                    .to_string();
                let points: Vec<(f64, f64)> = series["values"]
                    .as_array()
                    .map(|values| {
                        values
                            .iter()
                            .filter_map(|v| {
                                Some((v[0].as_f64()?, v[1].as_str()?.parse::<f64>().ok()?))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert((host, server), sparkline(&points, start, end));
            }
            Some(out)
        }
    }
}

async fn read(target: &Target) -> Reading {
    let host = target.addr.to_string();
    let mut reading = Reading::default();
    match get_body(target.addr, &host, "/metrics", PROBE_TIMEOUT).await {
        Ok((status, body)) if status.is_success() => {
            reading.metrics = Some(expo::parse(&String::from_utf8_lossy(&body)));
        }
        Ok((status, _)) => reading.error = Some(format!("/metrics answered {status}")),
        Err(error) => reading.error = Some(error.to_string()),
    }
    if reading.metrics.is_some() && target.job != "host" {
        if let Ok((status, body)) = get_body(target.addr, &host, "/status", PROBE_TIMEOUT).await {
            if status.is_success() {
                reading.status = serde_json::from_slice(&body).ok();
            }
        }
    }
    reading
}

fn host_state(host: &crate::HostView, reading: Option<&Reading>) -> HostState {
    let metrics = reading.and_then(|r| r.metrics.as_ref());
    let roles = host
        .roles
        .iter()
        .map(|role| {
            let Some(samples) = metrics else {
                return RoleState {
                    role: role.clone(),
                    up: false,
                    ready: false,
                    detail: format!(
                        "host unreachable: {}",
                        reading
                            .and_then(|r| r.error.clone())
                            .unwrap_or_else(|| "no answer".into())
                    ),
                };
            };
            let up =
                expo::value(samples, "webstack_supervisor_role_up", &[("role", role)]) == Some(1.0);
            let state = samples
                .iter()
                .find(|s| {
                    s.name == "webstack_supervisor_role_state"
                        && s.label("role") == Some(role.as_str())
                        && s.value == 1.0
                })
                .and_then(|s| s.label("state"))
                .unwrap_or("unknown");
            RoleState {
                role: role.clone(),
                up,
                ready: up,
                detail: if up {
                    "ready".into()
                } else {
                    state.to_string()
                },
            }
        })
        .collect::<Vec<_>>();
    HostState {
        name: host.name.clone(),
        address: host.address.to_string(),
        up: roles.iter().any(|r| r.up),
        roles,
    }
}

fn lb_view(
    host: &str,
    reading: &Reading,
    previous: Option<&(Vec<Sample>, f64)>,
    now: f64,
    history: &HashMap<(String, String), String>,
) -> LbView {
    let Some(samples) = &reading.metrics else {
        return LbView {
            host: host.into(),
            up: false,
            holds_vip: false,
            servers: Vec::new(),
        };
    };
    let mut names: Vec<&str> = samples
        .iter()
        .filter(|s| s.name == "webstack_lb_server_up")
        .filter_map(|s| s.label("server"))
        .collect();
    names.sort_unstable();
    names.dedup();
    let servers = names
        .into_iter()
        .map(|name| {
            let with = [("server", name)];
            let state = match expo::value(samples, "webstack_lb_server_up", &with) {
                Some(1.0) => "up",
                Some(_) => "down",
                None => "unknown",
            };
            let ago = |metric: &str| {
                expo::value(samples, metric, &with)
                    .filter(|t| *t > 0.0)
                    .map_or("-".into(), |t| ago(now - t))
            };
            let responses = |s: &[Sample], code: Option<&str>| {
                let mut with = vec![("server", name)];
                if let Some(code) = code {
                    with.push(("code", code));
                }
                expo::sum(s, "webstack_lb_responses_total", &with)
            };
            let (rps, errors_ps, p50, p99) = match previous {
                Some((before, then)) if now > *then => {
                    let seconds = now - then;
                    let rate = |code| {
                        ((responses(samples, code) - responses(before, code)) / seconds).max(0.0)
                    };
                    let old = expo::buckets(before, "webstack_lb_response_duration_seconds", &with);
                    let new =
                        expo::buckets(samples, "webstack_lb_response_duration_seconds", &with);
                    let ms = |q| {
                        expo::quantile(q, &old, &new)
                            .map_or("-".into(), |s| format!("{:.1}", s * 1000.0))
                    };
                    (
                        format!("{:.1}", rate(None)),
                        format!("{:.1}", rate(Some("5xx"))),
                        ms(0.5),
                        ms(0.99),
                    )
                }
                _ => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            ServerView {
                name: name.to_string(),
                state,
                since: ago("webstack_lb_server_state_since_timestamp_seconds"),
                last_check: ago("webstack_lb_server_last_check_timestamp_seconds"),
                in_flight: expo::value(samples, "webstack_lb_server_active_requests", &with)
                    .unwrap_or(0.0) as i64,
                rps,
                errors_ps,
                p50_ms: p50,
                p99_ms: p99,
                spark: history
                    .get(&(host.to_string(), name.to_string()))
                    .cloned()
                    .unwrap_or_default(),
            }
        })
        .collect();
    LbView {
        host: host.into(),
        up: true,
        holds_vip: expo::value(samples, "webstack_lb_vip_holder", &[("host", host)]) == Some(1.0),
        servers,
    }
}

fn certificates(reading: &Reading, out: &mut Vec<CertView>) {
    let Some(list) = reading
        .status
        .as_ref()
        .and_then(|s| s.get("certificates"))
        .and_then(serde_json::Value::as_array)
    else {
        return;
    };
    for cert in list {
        let names = cert["names"]
            .as_array()
            .map(|names| {
                names
                    .iter()
                    .filter_map(serde_json::Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        let view = CertView {
            names,
            origin: cert["origin"].as_str().unwrap_or("-").into(),
            expires: cert["expires"]
                .as_str()
                .unwrap_or("-")
                .chars()
                .take(10)
                .collect(),
            days_left: cert["days_left"].as_i64().unwrap_or(0),
            warn: cert["days_left"].as_i64().unwrap_or(0) <= 14,
        };
        if !out
            .iter()
            .any(|c| c.names == view.names && c.expires == view.expires && c.origin == view.origin)
        {
            out.push(view);
        }
    }
}

fn db_node(host: &str, reading: &Reading) -> DbNodeView {
    let text = |key: &str| {
        reading
            .status
            .as_ref()
            .and_then(|s| s.get(key))
            .map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            })
            .unwrap_or_else(|| "-".into())
    };
    let Some(status) = &reading.status else {
        return DbNodeView {
            host: host.into(),
            up: false,
            role: "down".into(),
            read_only: false,
            gtid: "-".into(),
            io: "-".into(),
            sql: "-".into(),
            lag: "-".into(),
            semi_sync: "-".into(),
            error: reading.error.clone().unwrap_or_else(|| "no answer".into()),
        };
    };
    let role = text("role");
    let semi_sync = match reading
        .metrics
        .as_ref()
        .and_then(|m| expo::value(m, "webstack_db_semi_sync_primary_status", &[]))
    {
        Some(v) if role == "primary" => if v == 1.0 { "on" } else { "off" }.to_string(),
        _ => "-".into(),
    };
    DbNodeView {
        host: host.into(),
        up: role != "down" && !role.is_empty(),
        read_only: status["read_only"].as_bool().unwrap_or(false),
        gtid: text("gtid_current_pos"),
        io: text("io_running"),
        sql: text("sql_running"),
        lag: text("lag_transactions"),
        semi_sync,
        error: [text("last_error"), text("blocked"), text("refused")]
            .into_iter()
            .filter(|t| t != "-")
            .collect::<Vec<_>>()
            .join("; "),
        role,
    }
}

/// The verdict and the list of problems, in words a person on call understands.
fn judge(overview: &mut Overview) {
    let mut problems = Vec::new();
    let mut down = false;
    for host in &overview.hosts {
        let down_roles: Vec<&str> = host
            .roles
            .iter()
            .filter(|r| !r.up)
            .map(|r| r.role.as_str())
            .collect();
        if !host.up {
            problems.push(format!(
                "{} is down ({} unreachable)",
                host.name,
                down_roles.join(", ")
            ));
        } else if !down_roles.is_empty() {
            for role in &host.roles {
                if !role.up {
                    problems.push(format!(
                        "{}/{} is down ({})",
                        host.name, role.role, role.detail
                    ));
                }
            }
        }
    }
    let serving: Vec<&LbView> = match &overview.vip {
        Some(_) => overview.lbs.iter().filter(|lb| lb.holds_vip).collect(),
        None => overview.lbs.iter().filter(|lb| lb.up).collect(),
    };
    if serving.is_empty() {
        down = true;
        problems.push(match &overview.vip {
            Some(vip) => format!("no load balancer holds the site's address {}", vip.address),
            None => "no load balancer is up".into(),
        });
    }
    if let Some(vip) = &overview.vip {
        if vip.state == "split" {
            problems.push(format!(
                "two load balancers hold {}: {}",
                vip.address,
                vip.holders.join(", ")
            ));
        }
    }
    for lb in &serving {
        if !lb.servers.is_empty() && lb.servers.iter().all(|s| s.state != "up") {
            down = true;
            problems.push(format!("{} has no healthy web server", lb.host));
        }
        for server in lb.servers.iter().filter(|s| s.state == "down") {
            let text = format!("{} is out of rotation", server.name);
            if !problems.contains(&text) {
                problems.push(text);
            }
        }
    }
    if !overview.db.nodes.is_empty() {
        if overview.db.primary.is_none() {
            down = true;
            problems.push("no database primary: writes are unavailable".into());
        }
        for node in &overview.db.nodes {
            if node.role == "replica" && (node.io != "Yes" || node.sql != "Yes") {
                problems.push(format!(
                    "replication to {} is stopped (IO {}, SQL {})",
                    node.host, node.io, node.sql
                ));
            }
            if node.role == "primary" && node.semi_sync == "off" {
                problems.push(format!(
                    "semi-sync is off on {}: acknowledged writes may exist only there",
                    node.host
                ));
            }
        }
    }
    for cert in &overview.certificates {
        if cert.warn {
            problems.push(format!(
                "certificate for {} expires in {} days",
                cert.names, cert.days_left
            ));
        }
    }
    overview.verdict = if down {
        "down"
    } else if problems.is_empty() {
        "healthy"
    } else {
        "degraded"
    };
    overview.problems = problems;
}

fn sparkline(points: &[(f64, f64)], start: f64, end: f64) -> String {
    let max = points.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    if points.is_empty() || end <= start {
        return String::new();
    }
    points
        .iter()
        .map(|(t, v)| {
            let x = (t - start) / (end - start) * 100.0;
            let y = if max > 0.0 {
                19.0 - v / max * 18.0
            } else {
                19.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percent_encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// HH:MM:SS UTC of a unix time.
pub fn clock(unix: f64) -> String {
    let secs = unix as u64 % 86_400;
    format!(
        "{:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn ago(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 10.0 {
        format!("{seconds:.1}s ago")
    } else if seconds < 120.0 {
        format!("{seconds:.0}s ago")
    } else if seconds < 7200.0 {
        format!("{:.0}m ago", seconds / 60.0)
    } else {
        format!("{:.0}h ago", seconds / 3600.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, up: bool) -> HostState {
        HostState {
            name: name.into(),
            address: "127.0.0.1".into(),
            up,
            roles: vec![RoleState {
                role: "web".into(),
                up,
                ready: up,
                detail: if up { "ready" } else { "stopped" }.into(),
            }],
        }
    }

    fn server(name: &str, state: &'static str) -> ServerView {
        ServerView {
            name: name.into(),
            state,
            since: "-".into(),
            last_check: "-".into(),
            in_flight: 0,
            rps: "-".into(),
            errors_ps: "-".into(),
            p50_ms: "-".into(),
            p99_ms: "-".into(),
            spark: String::new(),
        }
    }

    #[test]
    fn a_stopped_web_host_degrades_the_site_and_no_server_left_takes_it_down() {
        let mut overview = Overview {
            hosts: vec![host("web-01", true), host("web-02", false)],
            lbs: vec![LbView {
                host: "lb-01".into(),
                up: true,
                holds_vip: false,
                servers: vec![server("web-01", "up"), server("web-02", "down")],
            }],
            ..Overview::default()
        };
        judge(&mut overview);
        assert_eq!(overview.verdict, "degraded");
        assert!(
            overview
                .problems
                .contains(&"web-02 is down (web unreachable)".to_string())
        );
        assert!(
            overview
                .problems
                .contains(&"web-02 is out of rotation".to_string())
        );

        overview.lbs[0].servers[0].state = "down";
        judge(&mut overview);
        assert_eq!(overview.verdict, "down");
        assert!(
            overview
                .problems
                .contains(&"lb-01 has no healthy web server".to_string())
        );
    }

    #[test]
    fn no_vip_holder_is_down_and_a_healthy_site_is_healthy() {
        let mut overview = Overview {
            hosts: vec![host("lb-01", true)],
            vip: Some(VipView {
                address: "127.0.0.10".into(),
                holder: None,
                holders: vec![],
                state: "none",
            }),
            lbs: vec![LbView {
                host: "lb-01".into(),
                up: true,
                holds_vip: false,
                servers: vec![server("web-01", "up")],
            }],
            ..Overview::default()
        };
        judge(&mut overview);
        assert_eq!(overview.verdict, "down");
        overview.lbs[0].holds_vip = true;
        overview.vip.as_mut().unwrap().state = "ok";
        judge(&mut overview);
        assert_eq!(overview.verdict, "healthy", "{:?}", overview.problems);
    }

    #[test]
    fn sparkline_points_fit_the_box() {
        let line = sparkline(&[(0.0, 0.0), (50.0, 10.0), (100.0, 5.0)], 0.0, 100.0);
        assert_eq!(line, "0.0,19.0 50.0,1.0 100.0,10.0");
        assert_eq!(sparkline(&[], 0.0, 1.0), "");
    }
}
