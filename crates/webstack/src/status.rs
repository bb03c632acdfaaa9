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
    if json {
        println!("{}", serde_json::to_string_pretty(reply)?);
        return Ok(());
    }
    println!("site {}", reply.site);
    println!(
        "{:<10} {:<5} {:<22} {:<8} {:<11} {:<10} RESTARTS",
        "HOST", "ROLE", "ADDRESS", "PID", "STATE", "HEALTH"
    );
    for u in &reply.units {
        let pid = u.pid.map_or("-".to_string(), |p| p.to_string());
        let health = if u.healthy {
            "ready"
        } else if u.pid.is_some() {
            "not ready"
        } else {
            "-"
        };
        println!(
            "{:<10} {:<5} {:<22} {:<8} {:<11} {:<10} {}",
            u.host, u.role, u.address, pid, u.state, health, u.restarts
        );
    }
    Ok(())
}
