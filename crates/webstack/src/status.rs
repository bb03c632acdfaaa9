//! `webstack status`: every host and role of a running supervisor with its health, as a table
//! or JSON; `--wait` polls until all are healthy.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::cli::StatusArgs;
use crate::control::{self, Reply, Request};

fn all_healthy(reply: &Reply) -> bool {
    !reply.units.is_empty() && reply.units.iter().all(|u| u.healthy)
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let Some(wait) = args.wait else {
        let reply = control::request(&args.state_dir, &Request::Status).await?;
        print(&reply, args.json)?;
        return Ok(ExitCode::SUCCESS);
    };
    let deadline = Instant::now() + Duration::from_secs_f64(wait.max(0.0));
    loop {
        let last = control::request(&args.state_dir, &Request::Status).await;
        match &last {
            Ok(reply) if all_healthy(reply) => {
                print(reply, args.json)?;
                return Ok(ExitCode::SUCCESS);
            }
            _ if Instant::now() >= deadline => {
                match last {
                    Ok(reply) => print(&reply, args.json)?,
                    Err(error) => eprintln!("webstack status: {error:#}"),
                }
                eprintln!("webstack status: not every role became healthy within {wait}s");
                return Ok(ExitCode::FAILURE);
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn print(reply: &Reply, json: bool) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(reply)?)?;
    } else {
        writeln!(out, "site {}", reply.site)?;
        writeln!(
            out,
            "{:<10} {:<5} {:<22} {:<8} {:<11} {:<10} {:<8} DETAIL",
            "HOST", "ROLE", "ADDRESS", "PID", "STATE", "HEALTH", "RESTARTS"
        )?;
        for u in &reply.units {
            let pid = u.pid.map_or("-".to_string(), |p| p.to_string());
            let health = match (u.healthy, u.pid) {
                (true, _) => "ready",
                (false, Some(_)) => "not ready",
                (false, None) => "-",
            };
            let detail = u
                .detail
                .get("summary")
                .and_then(|s| s.as_str())
                .unwrap_or("");
            writeln!(
                out,
                "{:<10} {:<5} {:<22} {:<8} {:<11} {:<10} {:<8} {detail}",
                u.host, u.role, u.address, pid, u.state, health, u.restarts
            )?;
        }
    }
    write_stdout(&out)
}

/// Writes to stdout; a reader that went away (`status | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
