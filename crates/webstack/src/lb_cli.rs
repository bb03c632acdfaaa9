//! `webstack lb`: the lbs' runtime API from the command line (HAProxy's `set server`), on every
//! lb of the topology at once: list the servers, drain one (and wait until nothing is in flight
//! on it), put it in maintenance, back in rotation, or change its weight.

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
    let token_path = webstack_common::secret::control_token_path(&args.state_dir);
    let token = webstack_common::secret::read_file(&token_path).with_context(|| {
        format!(
            "cannot read the control token {} (made by `webstack up` or `run`; on another machine, copy it from an lb host's state dir)",
            token_path.display()
        )
    })?;
    let path = match &args.command {
        LbCommand::Drain { .. } => format!("/servers/{host}/drain"),
        LbCommand::Maint { .. } => format!("/servers/{host}/maint"),
        LbCommand::Ready { .. } => format!("/servers/{host}/ready"),
        LbCommand::Weight { weight, .. } => format!("/servers/{host}/weight/{weight}"),
        LbCommand::Servers => unreachable!("answered above"),
    };
    let mut ok = true;
    for (name, addr) in &lbs {
        match probe::call(
            *addr,
            Method::POST,
            &path,
            Some(token.expose()),
            CALL_TIMEOUT,
        )
        .await
        {
            Ok((status, body)) if status.is_success() => {
                let said: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let what = match &args.command {
                    LbCommand::Weight { .. } => {
                        format!("weight {} (was {})", said["weight"], said["was"])
                    }
                    _ => format!(
                        "{} (was {})",
                        said["state"].as_str().unwrap_or("?"),
                        said["was"].as_str().unwrap_or("?")
                    ),
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
    if let LbCommand::Drain { wait, .. } = args.command {
        ok &= wait_drained(&lbs, &host, Duration::from_secs(wait)).await;
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
async fn wait_drained(lbs: &[(String, SocketAddr)], host: &str, limit: Duration) -> bool {
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
                "{host}: still {in_flight} request(s) in flight after {} s; it stays drained",
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
                println!("{name}:");
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
