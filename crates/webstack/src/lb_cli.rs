//! `webstack lb`: the lbs' runtime API from the command line (HAProxy's `set server`), on every
//! lb of the topology at once: list the servers, drain one (and wait until nothing is in flight
//! on it), put it in maintenance, back in rotation, or change its weight. And `webstack
//! restart`: drain a web host, restart its web and app roles, wait until every lb sees it up,
//! put it back; `--rolling` does every web host in turn.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use http::Method;
use webstack_common::probe;
use webstack_config::{Config, Role};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Args)]
pub struct LbArgs {
    #[command(subcommand)]
    pub command: LbCommand,
    #[arg(short, long, default_value = "webstack.toml", global = true)]
    pub config: PathBuf,
    /// Where the control token is (`secrets/lb-control.token`).
    #[arg(long, default_value = ".webstack", global = true)]
    pub state_dir: PathBuf,
}

#[derive(Subcommand)]
pub enum LbCommand {
    /// Every server as each lb sees it: health, state, weight, requests in flight, last check.
    Servers,
    /// No new requests to HOST; those in flight finish. Waits until none is left on any lb.
    Drain {
        host: String,
        /// Longest wait for the requests in flight, in seconds (the server stays drained).
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// HOST out of rotation for maintenance (its health checks go on).
    Maint { host: String },
    /// HOST back in rotation.
    Ready { host: String },
    /// HOST's weight (1 to 256) until the next restart of the lbs.
    Weight { host: String, weight: u32 },
}

#[derive(Args)]
pub struct RestartArgs {
    /// The web host to restart (its web and app roles); omit with `--rolling`.
    pub host: Option<String>,
    /// Every web host, one after the other.
    #[arg(long)]
    pub rolling: bool,
    /// Longest wait for the requests in flight on a drained host, in seconds.
    #[arg(long, default_value_t = 60)]
    pub drain_wait: u64,
    #[arg(short, long, default_value = "webstack.toml")]
    pub config: PathBuf,
    #[arg(long, default_value = ".webstack")]
    pub state_dir: PathBuf,
}

/// How long every lb may take to see a restarted host up (its health checks' rise).
const UP_WAIT: Duration = Duration::from_secs(60);

/// Every lb's admin address, by host name.
fn lbs(config: &Config) -> Vec<(String, SocketAddr)> {
    config
        .hosts_with(Role::Lb)
        .map(|h| (h.name.clone(), config.admin_addr(h, Role::Lb)))
        .collect()
}

pub async fn run(args: LbArgs) -> anyhow::Result<ExitCode> {
    let config = crate::cli::load(&args.config)?;
    let lbs = lbs(&config);
    if lbs.is_empty() {
        anyhow::bail!("{} has no host with role lb", config.path.display());
    }
    let host = match &args.command {
        LbCommand::Servers => return Ok(servers(&lbs).await),
        LbCommand::Drain { host, .. }
        | LbCommand::Maint { host }
        | LbCommand::Ready { host }
        | LbCommand::Weight { host, .. } => host.clone(),
    };
    if !config.hosts_with(Role::Web).any(|h| h.name == host) {
        anyhow::bail!(
            "{host:?} is not a web host of {} (web hosts: {})",
            config.path.display(),
            config
                .hosts_with(Role::Web)
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let token = read_token(&args.state_dir)?;
    let path = match &args.command {
        LbCommand::Drain { .. } => format!("/servers/{host}/drain"),
        LbCommand::Maint { .. } => format!("/servers/{host}/maint"),
        LbCommand::Ready { .. } => format!("/servers/{host}/ready"),
        LbCommand::Weight { weight, .. } => format!("/servers/{host}/weight/{weight}"),
        LbCommand::Servers => unreachable!("answered above"),
    };
    let mut ok = change(&lbs, &token, &host, &path).await;
    if let LbCommand::Drain { wait, .. } = args.command {
        ok &= wait_drained(&lbs, &host, Duration::from_secs(wait), "it stays drained").await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn read_token(state_dir: &std::path::Path) -> anyhow::Result<webstack_common::secret::Secret> {
    let path = webstack_common::secret::control_token_path(state_dir);
    webstack_common::secret::read_file(&path).with_context(|| {
        format!(
            "cannot read the control token {} (made by `webstack up` or `run`; on another machine, copy it from an lb host's state dir)",
            path.display()
        )
    })
}

/// POSTs `path` (a change of `host`) to every lb and says what each did; false if any failed.
async fn change(
    lbs: &[(String, SocketAddr)],
    token: &webstack_common::secret::Secret,
    host: &str,
    path: &str,
) -> bool {
    let mut ok = true;
    for (name, addr) in lbs {
        match probe::call(
            *addr,
            Method::POST,
            path,
            Some(token.expose()),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok((status, body)) if status.is_success() => {
                let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let what = if said["weight"].is_null() {
                    format!(
                        "{} (was {})",
                        said["state"].as_str().unwrap_or("?"),
                        said["was"].as_str().unwrap_or("?")
                    )
                } else {
                    format!("weight {} (was {})", said["weight"], said["was"])
                };
                println!("{name}: {host} {what}");
            }
            Ok((status, body)) => {
                ok = false;
                eprintln!(
                    "{name}: {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Err(error) => {
                ok = false;
                eprintln!("{name}: cannot reach its admin port {addr}: {error}");
            }
        }
    }
    ok
}

/// `webstack restart HOST` / `webstack restart --rolling`: for each web host, drain it on every
/// lb (waiting for its requests in flight, bounded), restart its web and app roles through the
/// supervisor (front to back, then back to front: `start` returns when a role is ready), wait
/// until every lb's health checks see it up, and put it back in rotation. The host's other
/// roles (db, etcd, monitor) keep running: the database has its own planned move (`webstack db
/// switchover`).
pub async fn restart(args: RestartArgs) -> anyhow::Result<ExitCode> {
    let config = crate::cli::load(&args.config)?;
    let web_hosts: Vec<String> = config
        .hosts_with(Role::Web)
        .map(|h| h.name.clone())
        .collect();
    let hosts = match (&args.host, args.rolling) {
        (Some(host), false) if web_hosts.contains(host) => vec![host.clone()],
        (Some(host), false) => anyhow::bail!(
            "{host:?} is not a web host of {} (web hosts: {})",
            config.path.display(),
            web_hosts.join(", ")
        ),
        (None, true) if web_hosts.len() >= 2 => web_hosts,
        (None, true) => {
            anyhow::bail!("a rolling restart needs two web hosts: the other one serves")
        }
        _ => anyhow::bail!("name one web host, or --rolling for all of them"),
    };
    let token = read_token(&args.state_dir)?;
    let lbs = lbs(&config);
    for host in &hosts {
        let roles: Vec<Role> = [Role::Web, Role::App]
            .into_iter()
            .filter(|r| config.host(host).is_some_and(|h| h.has(*r)))
            .collect();
        // Another server must serve meanwhile, on every lb.
        for (name, addr) in &lbs {
            let others = list(*addr)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            let covered = others.iter().any(|s| {
                s["name"] != host.as_str()
                    && s["up"] == true
                    && s["state"] == "ready"
                    && s["backup"] == false
            });
            if !covered {
                anyhow::bail!(
                    "{name} has no other web server in rotation: restarting {host} would leave the site without one; nothing changed"
                );
            }
        }
        let put_back = format!("`webstack lb ready {host}` puts it back");
        println!("{host}: draining");
        if !change(&lbs, &token, host, &format!("/servers/{host}/drain")).await {
            anyhow::bail!(
                "{host}: not drained on every lb, nothing restarted; it may be drained on some: {put_back}"
            );
        }
        // Bounded: past it the restart goes on (what is left in flight is cut).
        wait_drained(
            &lbs,
            host,
            Duration::from_secs(args.drain_wait),
            "restarting anyway: they are cut",
        )
        .await;
        let steps = roles
            .iter()
            .map(|r| ("stop", *r))
            .chain(roles.iter().rev().map(|r| ("start", *r)));
        for (op, role) in steps {
            let target = format!("{host}/{role}");
            let request = if op == "stop" {
                crate::control::Request::Stop { target }
            } else {
                crate::control::Request::Start { target }
            };
            let reply = crate::control::request(&args.state_dir, &request)
                .await
                .with_context(|| {
                    format!("{host}/{role}: cannot {op}; {host} stays drained: {put_back}")
                })?;
            if !reply.ok {
                anyhow::bail!(
                    "{host}/{role}: cannot {op}: {}; {host} stays drained: {put_back}",
                    reply.error.unwrap_or_default()
                );
            }
        }
        println!("{host}: restarted; waiting for every lb to see it up");
        if !wait_until(&lbs, host, UP_WAIT, |s| s["up"] == true).await {
            anyhow::bail!(
                "{host}: not up on every lb after {} s; it stays drained",
                UP_WAIT.as_secs()
            );
        }
        if !change(&lbs, &token, host, &format!("/servers/{host}/ready")).await {
            anyhow::bail!("{host}: not back in rotation on every lb: {put_back}");
        }
        // The next host waits for this one's slow start: it serves alone meanwhile.
        if Some(host) != hosts.last()
            && !wait_until(&lbs, host, RAMP_WAIT, |s| s["ramp"] == 1000).await
        {
            eprintln!(
                "{host}: its slow start is not over after {} s; going on",
                RAMP_WAIT.as_secs()
            );
        }
    }
    println!("restarted: {}", hosts.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Longest wait for a restarted host's slow start before the next host of a rolling restart.
const RAMP_WAIT: Duration = Duration::from_secs(120);

/// Waits until every lb's entry of `host` satisfies `ready` (bounded by `limit`).
async fn wait_until(
    lbs: &[(String, SocketAddr)],
    host: &str,
    limit: Duration,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> bool {
    let started = Instant::now();
    loop {
        let mut all = true;
        for (_, addr) in lbs {
            all &= list(*addr)
                .await
                .is_ok_and(|servers| servers.iter().any(|s| s["name"] == host && ready(s)));
        }
        if all {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One lb's servers, or why there are none.
async fn list(addr: SocketAddr) -> Result<Vec<serde_json::Value>, String> {
    let (status, body) = probe::call(addr, Method::GET, "/servers", None, CALL_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}"));
    }
    serde_json::from_slice::<Vec<serde_json::Value>>(&body).map_err(|e| e.to_string())
}

/// Waits until no lb holds a request to `host`; says how it went.
async fn wait_drained(
    lbs: &[(String, SocketAddr)],
    host: &str,
    limit: Duration,
    on_timeout: &str,
) -> bool {
    let started = Instant::now();
    loop {
        let mut in_flight = 0;
        for (name, addr) in lbs {
            match list(*addr).await {
                Ok(servers) => {
                    in_flight += servers
                        .iter()
                        .filter(|s| s["name"] == host)
                        .filter_map(|s| s["in_flight"].as_u64())
                        .sum::<u64>();
                }
                Err(error) => {
                    eprintln!("{name}: cannot list its servers: {error}");
                    return false;
                }
            }
        }
        if in_flight == 0 {
            println!(
                "{host}: drained: no request in flight on any lb ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return true;
        }
        if started.elapsed() >= limit {
            eprintln!(
                "{host}: still {in_flight} request(s) in flight after {} s; {on_timeout}",
                limit.as_secs()
            );
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `webstack lb servers`: one table per lb.
async fn servers(lbs: &[(String, SocketAddr)]) -> ExitCode {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut ok = true;
    for (name, addr) in lbs {
        match list(*addr).await {
            Ok(servers) => {
                let queue = probe::call(*addr, Method::GET, "/status", None, CALL_TIMEOUT)
                    .await
                    .ok()
                    .and_then(|(_, body)| serde_json::from_slice::<serde_json::Value>(&body).ok())
                    .and_then(|status| status["queue"].as_u64());
                match queue {
                    Some(queue) => println!("{name}: {queue} request(s) queued"),
                    None => println!("{name}:"),
                }
                for s in servers {
                    let ago = |key: &str| {
                        s[key]
                            .as_f64()
                            .filter(|t| *t > 0.0)
                            .map_or("-".to_string(), |t| {
                                format!("{:.1} s ago", (now - t).max(0.0))
                            })
                    };
                    println!(
                        "  {:<10} {:<5} {:<6} weight {:<4} in flight {:<5} last check {:<12} since {}",
                        s["name"].as_str().unwrap_or("?"),
                        if s["up"] == true { "up" } else { "down" },
                        s["state"].as_str().unwrap_or("?"),
                        s["weight"],
                        s["in_flight"],
                        ago("last_check"),
                        ago("since"),
                    );
                }
            }
            Err(error) => {
                ok = false;
                eprintln!("{name}: cannot list its servers at {addr}: {error}");
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
