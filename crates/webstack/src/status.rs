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
            "{:<10} {:<7} {:<22} {:<8} {:<11} {:<10} {:<8} DETAIL",
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
                "{:<10} {:<7} {:<22} {:<8} {:<11} {:<10} {:<8} {detail}",
                u.host, u.role, u.address, pid, u.state, health, u.restarts
            )?;
        }
        for u in &reply.units {
            write_certificates(&mut out, &u.host, &u.detail)?;
        }
    }
    write_stdout(&out)
}

/// An lb's certificates (names, expiry, where from) and its ACME client's state.
fn write_certificates(
    out: &mut String,
    host: &str,
    detail: &serde_json::Value,
) -> std::fmt::Result {
    use std::fmt::Write as _;
    let Some(certificates) = detail.get("certificates").and_then(|c| c.as_array()) else {
        return Ok(());
    };
    writeln!(out, "\ncertificates of {host}:")?;
    let text = |value: &serde_json::Value, key: &str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_string()
    };
    for cert in certificates {
        let names: Vec<&str> = cert
            .get("names")
            .and_then(|n| n.as_array())
            .map(|n| n.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let days = cert.get("days_left").and_then(|d| d.as_i64()).unwrap_or(0);
        writeln!(
            out,
            "  {:<36} expires {} ({days} days)  {:<8} {}",
            names.join(", "),
            text(cert, "expires"),
            text(cert, "origin"),
            text(cert, "path"),
        )?;
    }
    if let Some(acme) = detail.get("acme").filter(|a| !a.is_null()) {
        write!(
            out,
            "  acme: {} ({})",
            text(acme, "state"),
            text(acme, "directory")
        )?;
        if let Some(error) = acme.get("last_error").and_then(|e| e.as_str()) {
            let failures = acme.get("failures").and_then(|f| f.as_u64()).unwrap_or(0);
            write!(out, ", {failures} failed order(s), last: {error}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// Writes to stdout; a reader that went away (`status | head`) is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
