//! `webstack`: the command line. Parses arguments, loads the topology, and hands over to the
//! supervisor (`up`, `run --host`), one role (`run --host --role`) or the control client.
//! Exit codes are decided here: 0 success, 1 failure (bad config included), 2 bad usage.

mod cli;
mod control;
mod db;
mod host_metrics;
mod lb_cli;
mod netns;
mod role;
mod status;
mod supervisor;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: malloc and free were ~9% of the lb's CPU under load with glibc's allocator
/// (perf, docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = role_threads(&cli.command) {
        builder.worker_threads(threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("webstack: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // Do not wait for blocking threads: a supervised role's stdin reader never returns.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("webstack: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The runtime's worker threads for a web or app role process (`Config::worker_threads`);
/// None for everything else (one per core, tokio's default), and for a topology that does not
/// load (`dispatch` says why).
fn role_threads(command: &Command) -> Option<usize> {
    let Command::Run(args) = command else {
        return None;
    };
    let config = webstack_config::Config::load(&args.config).ok()?;
    let host = config.host(&args.host)?;
    config.worker_threads(host, args.role?)
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check(args) => Ok(cli::check(&args.config)),
        Command::Up(args) => {
            let config = cli::load(&args.config)?;
            if args.netns {
                netns::up(config, args.state_dir).await
            } else {
                supervisor::run(config, None, args.state_dir).await
            }
        }
        Command::Run(args) => {
            let config = cli::load(&args.config)?;
            if config.host(&args.host).is_none() {
                anyhow::bail!(
                    "host {:?} is not in {} (hosts: {})",
                    args.host,
                    config.path.display(),
                    cli::host_names(&config)
                );
            }
            match args.role {
                Some(role) => {
                    role::run(config, &args.host, role, &args.state_dir, args.supervised).await
                }
                None => {
                    let firewall = config.firewall_applied(args.in_netns);
                    if firewall {
                        cli::apply_firewall(&config, &args.host)?;
                        println!("webstack: firewall of {} applied", args.host);
                    }
                    let remove = firewall && config.firewall_removed_at_stop();
                    let code = supervisor::run(config, Some(args.host), args.state_dir).await;
                    if remove {
                        cli::remove_firewall()?;
                    }
                    code
                }
            }
        }
        Command::Status(args) => status::run(&args).await,
        Command::Stop(args) => control::stop_or_start(&args.state_dir, "stop", &args.target).await,
        Command::Start(args) => {
            control::stop_or_start(&args.state_dir, "start", &args.target).await
        }
        Command::Db(args) => db::run(args).await,
        Command::Exec(args) => netns::exec(&cli::load(&args.config)?, &args.host, &args.command),
        Command::Firewall(args) => cli::firewall(&args),
        Command::Lb(args) => lb_cli::run(args).await,
        Command::Restart(args) => lb_cli::restart(args).await,
    }
}
