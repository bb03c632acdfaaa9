//! Command-line arguments (clap derive) and the `check` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use webstack_config::{Config, Role};

/// webstack: load balancer, web servers, application servers and their database, from one
/// topology file.
#[derive(Parser)]
#[command(name = "webstack", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Validate a topology file and exit 0 (valid) or 1 (invalid), like `nginx -t`.
    Check(ConfigArg),
    /// Run every host of the topology on this machine, each role its own process.
    Up(UpArgs),
    /// Run the roles of one host (production: one per machine).
    Run(RunArgs),
    /// Show every host and role of a running `up` with its health.
    Status(StatusArgs),
    /// Stop a host or one role (HOST or HOST/ROLE) of a running `up`.
    Stop(TargetArgs),
    /// Start again a host or role stopped with `webstack stop`.
    Start(TargetArgs),
    /// The database cluster: who is primary (etcd's view), switchover, forced failover.
    Db(DbArgs),
    /// Run a command inside a host's network namespace (`up --netns`), or `client`'s.
    Exec(ExecArgs),
    /// The nftables rules each host needs, derived from the topology: show or check them.
    Firewall(FirewallArgs),
    /// The lbs' servers at runtime: list them, drain, maintenance, ready, weight.
    Lb(crate::lb_cli::LbArgs),
    /// Restart a web host without a failed request: drain, restart web and app, back in
    /// rotation once every lb sees it up; `--rolling` for every web host in turn.
    Restart(crate::lb_cli::RestartArgs),
}

#[derive(Args)]
pub struct FirewallArgs {
    #[command(subcommand)]
    pub command: FirewallCommand,
    #[arg(short, long, default_value = "webstack.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum FirewallCommand {
    /// Print the ruleset of one host (or of every host), ready for `nft -f`.
    Show {
        #[arg(long)]
        host: Option<String>,
    },
    /// Validate every host's ruleset with `nft -c` (through a user namespace when not root).
    Check,
    /// Apply one host's ruleset on this machine (root): only webstack's table is replaced.
    Apply {
        #[arg(long)]
        host: String,
    },
}

#[derive(Args)]
pub struct ExecArgs {
    /// A host of the topology, or `client` (the clients' namespace) or `switch`.
    pub host: String,
    #[arg(short, long, default_value = "webstack.toml")]
    pub config: PathBuf,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct DbArgs {
    #[command(subcommand)]
    pub command: DbCommand,
    #[arg(short, long, default_value = "webstack.toml", global = true)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum DbCommand {
    /// The primary, its term, the last primary report and every node, as etcd holds them.
    Status,
    /// Planned: the primary stops taking writes, a replica with every write takes over (writes
    /// are held meanwhile, none refused), the old primary becomes its replica.
    Switchover {
        /// The replica to promote (default: one that has every write).
        #[arg(long)]
        to: Option<String>,
    },
    /// Promote HOST when the automatic rule refuses to (semi-sync was off, a replica is
    /// missing writes): the transactions only the old primary had are lost.
    Failover {
        /// The db host to promote.
        #[arg(long, value_name = "HOST")]
        force: String,
    },
    /// Rebuild a replica (one whose history diverged) from the primary: its db role is
    /// stopped, its node folder moved aside (kept for inspection), and it starts again from
    /// nothing, replicating the primary's whole binary log. Runs against a running `up` (or
    /// `run --host`) through its state dir.
    Rebuild {
        /// The db host to rebuild (never the primary).
        host: String,
        #[arg(long, default_value = ".webstack")]
        state_dir: PathBuf,
    },
}

#[derive(Args)]
pub struct ConfigArg {
    /// The topology file.
    #[arg(short, long, default_value = "webstack.toml")]
    pub config: PathBuf,
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(short, long, default_value = "webstack.toml")]
    pub config: PathBuf,
    /// Each host in a network namespace of its own on a private bridge, running `webstack run
    /// --host` (root only; needs [netns] in the topology, e.g. examples/netns.toml).
    #[arg(long)]
    pub netns: bool,
    /// Where logs, pid files and the control socket live.
    #[arg(long, default_value = ".webstack")]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct RunArgs {
    /// The host of the topology to run.
    #[arg(long)]
    pub host: String,
    /// Run only this role, in this process (what the supervisor starts for each role).
    #[arg(long, value_parser = parse_role)]
    pub role: Option<Role>,
    #[arg(short, long, default_value = "webstack.toml")]
    pub config: PathBuf,
    #[arg(long, default_value = ".webstack")]
    pub state_dir: PathBuf,
    /// Started by a supervisor: exit when standard input closes (the supervisor is gone).
    #[arg(long, hide = true)]
    pub supervised: bool,
    /// Started by `up --netns`: the host is a namespace (the firewall is applied by default).
    #[arg(long, hide = true)]
    pub in_netns: bool,
}

#[derive(Args)]
pub struct StatusArgs {
    #[arg(long, default_value = ".webstack")]
    pub state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Wait up to SECS for every role to be healthy: exit 0 when they are, 1 on timeout.
    #[arg(long, value_name = "SECS", value_parser = parse_wait)]
    pub wait: Option<f64>,
}

#[derive(Args)]
pub struct TargetArgs {
    /// HOST or HOST/ROLE, e.g. `web-01` or `web-01/app`.
    pub target: String,
    #[arg(long, default_value = ".webstack")]
    pub state_dir: PathBuf,
}

/// Longest `status --wait`: a day.
const MAX_WAIT_SECS: f64 = 86_400.0;

/// Seconds from 0 to a day, fractions allowed (`0.5`); not `inf`, `nan` or negative.
fn parse_wait(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) if (0.0..=MAX_WAIT_SECS).contains(&secs) => Ok(secs),
        _ => Err(format!(
            "{text:?}: expected a number of seconds from 0 to {MAX_WAIT_SECS}"
        )),
    }
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name)
        .ok_or_else(|| format!("unknown role {name:?}: expected lb, web, app, db or etcd"))
}

/// The topology's host names, for error messages: "lb-01, lb-02, web-01".
pub fn host_names(config: &Config) -> String {
    config
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(Config::load(path)?)
}

/// `webstack check`: the verdict and a one-line summary.
pub fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            let hosts: Vec<String> = config
                .hosts
                .iter()
                .map(|h| {
                    let roles: Vec<_> = h.roles.iter().map(|r| r.as_str()).collect();
                    format!("{} ({})", h.name, roles.join("+"))
                })
                .collect();
            let failover = match config.coordination() {
                Some(_) => {
                    let members: Vec<&str> = config
                        .hosts_with(Role::Etcd)
                        .map(|h| h.name.as_str())
                        .collect();
                    format!("; database failover through etcd on {}", members.join(", "))
                }
                None if config.has_db() => {
                    "; no database failover (no etcd members: the first primary stays primary)"
                        .into()
                }
                None => String::new(),
            };
            let vip = match config.vip() {
                Some(vip) => {
                    let lbs: Vec<&str> = config
                        .hosts_with(Role::Lb)
                        .map(|h| h.name.as_str())
                        .collect();
                    let how = if config.uses_vrrp() {
                        "VRRP (keepalived)"
                    } else {
                        "the loopback stand-in"
                    };
                    format!("; site address {vip} shared by {} ({how})", lbs.join(", "))
                }
                None => String::new(),
            };
            println!(
                "{}: ok: site {}, hosts {}{vip}{failover}",
                path.display(),
                config.site_name,
                hosts.join(", ")
            );
            let monitoring = check_monitoring(&config);
            if let Some(warning) = config.firewall_lockout_warning() {
                eprintln!("warning: {warning}");
            }
            let firewall = check_firewall(&config, false);
            if monitoring == ExitCode::SUCCESS && firewall == ExitCode::SUCCESS {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("{error}");
            ExitCode::FAILURE
        }
    }
}

/// Runs Prometheus' and Alertmanager's own checkers on what each monitor host would generate,
/// when they are installed (`promtool`, `amtool`).
fn check_monitoring(config: &Config) -> ExitCode {
    let (promtool, amtool) = (Path::new(PROMTOOL), Path::new(AMTOOL));
    let Some(host) = config.hosts_with(Role::Monitor).next() else {
        return ExitCode::SUCCESS;
    };
    if !promtool.is_file() && !amtool.is_file() {
        println!(
            "monitoring: not checked (promtool and amtool are not installed: apt-get install prometheus prometheus-alertmanager)"
        );
        return ExitCode::SUCCESS;
    }
    let monitor = config.monitor(host, Path::new("/nonexistent-state"));
    let results = match webstack_monitor::generate::check(&monitor, promtool, amtool) {
        Ok(results) => results,
        Err(error) => {
            eprintln!("monitoring: cannot check: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut ok = true;
    for result in results {
        if result.ok {
            println!("monitoring: {}: ok", result.what);
        } else {
            ok = false;
            eprintln!("monitoring: {} failed:\n{}", result.what, result.output);
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `webstack firewall show|check`.
pub fn firewall(args: &FirewallArgs) -> anyhow::Result<ExitCode> {
    let config = load(&args.config)?;
    match &args.command {
        FirewallCommand::Show { host } => {
            let hosts: Vec<_> = match host {
                Some(name) => vec![config.host(name).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no host {name} in {}; hosts: {}",
                        args.config.display(),
                        host_names(&config)
                    )
                })?],
                None => config.hosts.iter().collect(),
            };
            for host in hosts {
                print!("{}", webstack_firewall::render(&config.firewall(host)));
            }
            Ok(ExitCode::SUCCESS)
        }
        FirewallCommand::Check => Ok(check_firewall(&config, true)),
        FirewallCommand::Apply { host } => {
            apply_firewall(&config, host)?;
            println!("firewall: {host}: applied (nft list table inet webstack shows it)");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Applies `host`'s ruleset on this machine (or namespace).
pub fn apply_firewall(config: &Config, host: &str) -> anyhow::Result<()> {
    let host = config.host(host).ok_or_else(|| {
        anyhow::anyhow!(
            "no host {host} in {}; hosts: {}",
            config.path.display(),
            host_names(config)
        )
    })?;
    let nft = Path::new(NFT);
    if !nft.is_file() {
        anyhow::bail!("nft is not installed (apt-get install nftables)");
    }
    webstack_firewall::apply(nft, &webstack_firewall::render(&config.firewall(host)))
        .map_err(|error| anyhow::anyhow!("cannot apply the firewall of {}: {error}", host.name))
}

/// Removes webstack's table from this machine (or namespace).
pub fn remove_firewall() -> anyhow::Result<()> {
    webstack_firewall::remove(Path::new(NFT))
        .map_err(|error| anyhow::anyhow!("cannot remove the firewall: {error}"))
}

/// `nft -c` on every host's ruleset; `required`: fail when nft is missing (else say so).
fn check_firewall(config: &Config, required: bool) -> ExitCode {
    let nft = Path::new(NFT);
    if !nft.is_file() {
        let what = "firewall: not checked (nft is not installed: apt-get install nftables)";
        if required {
            eprintln!("{what}");
            return ExitCode::FAILURE;
        }
        println!("{what}");
        return ExitCode::SUCCESS;
    }
    let mut ok = true;
    for host in &config.hosts {
        match webstack_firewall::check(nft, &webstack_firewall::render(&config.firewall(host))) {
            Ok(()) => println!("firewall: {}: nft -c: ok", host.name),
            Err(error) => {
                ok = false;
                eprintln!("firewall: {}: nft -c failed:\n{error}", host.name);
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

const NFT: &str = "/usr/sbin/nft";
const PROMTOOL: &str = "/usr/bin/promtool";
const AMTOOL: &str = "/usr/bin/amtool";

#[cfg(test)]
mod tests {
    #[test]
    fn wait_takes_seconds_within_a_day() {
        assert_eq!(super::parse_wait("2.5"), Ok(2.5));
        assert_eq!(super::parse_wait("0"), Ok(0.0));
        for bad in ["inf", "-inf", "nan", "-1", "86401", "1e300", "", "x"] {
            assert!(super::parse_wait(bad).is_err(), "{bad}");
        }
    }
}
