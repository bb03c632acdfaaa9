//! `webstack db`: the database cluster as etcd sees it (`status`), a planned switchover, and
//! a promotion forced on an operator's word when the automatic rule refuses one.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use webstack_config::{Config, Role};
use webstack_coord::etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use webstack_db::failover::{Leader, Member, PrimaryReport, agent};

use crate::cli::{DbArgs, DbCommand};
use crate::control;

/// How long a switchover or a forced promotion may take before the command gives up waiting.
const WAIT: Duration = Duration::from_secs(15);
/// A forced promotion's key lives this long at most (on a lease).
const FORCE_TTL_SECS: i64 = 30;

pub async fn run(args: DbArgs) -> anyhow::Result<ExitCode> {
    let config = crate::cli::load(&args.config)?;
    let Some(cluster) = config.coordination() else {
        bail!(
            "{} has no failover: give role \"etcd\" to 3 (or 5) hosts and keep a [db] section",
            config.path.display()
        );
    };
    let mut client = cluster
        .connect()
        .await
        .context("cannot reach etcd (is the topology running?)")?;
    match args.command {
        DbCommand::Status => {
            let view = View::read(&mut client, &cluster).await?;
            print!("{}", view.describe());
            Ok(ExitCode::SUCCESS)
        }
        DbCommand::Switchover { to } => switchover(&config, &cluster, &mut client, to).await,
        DbCommand::Failover { force } => {
            force_failover(&config, &cluster, &mut client, force).await
        }
        DbCommand::Rebuild { host, state_dir } => {
            rebuild(&config, &cluster, &mut client, &host, &state_dir).await
        }
    }
}

/// Stops `host`'s db role, moves its node folder aside, and starts it again: it provisions an
/// empty node, which the agent points at the primary, and replicates the primary's binary log
/// from the start (webstack never purges binary logs).
async fn rebuild(
    config: &Config,
    cluster: &webstack_coord::Cluster,
    client: &mut Client,
    host: &str,
    state_dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    check_db_host(config, host)?;
    let view = View::read(client, cluster).await?;
    match &view.leader {
        Some((leader, _)) if leader.host == host => {
            bail!("{host} is the primary: switch over first (`webstack db switchover`)")
        }
        None => bail!("there is no primary to rebuild {host} from (`webstack db status`)"),
        Some(_) => {}
    }
    let target = format!("{host}/db");
    let stop = control::Request::Stop {
        target: target.clone(),
    };
    if let Some(error) = control::request(state_dir, &stop).await?.error {
        bail!("cannot stop {target}: {error}");
    }
    let node = state_dir.join("db").join(host);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let kept = state_dir
        .join("db")
        .join(format!("{host}.diverged-{stamp}"));
    if node.exists() {
        std::fs::rename(&node, &kept).with_context(|| {
            format!("cannot move {} aside to {}", node.display(), kept.display())
        })?;
    }
    let start = control::Request::Start {
        target: target.clone(),
    };
    if let Some(error) = control::request(state_dir, &start).await?.error {
        bail!(
            "{target} did not come back: {error} (its old data is in {})",
            kept.display()
        );
    }
    println!(
        "rebuilt {host} from the primary: it replicates again; its old data is kept in {}",
        kept.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// What etcd holds about the database.
struct View {
    leader: Option<(Leader, i64)>,
    report: Option<PrimaryReport>,
    members: Vec<Member>,
}

impl View {
    async fn read(client: &mut Client, cluster: &webstack_coord::Cluster) -> anyhow::Result<View> {
        let response = client
            .get(cluster.key("db/"), Some(GetOptions::new().with_prefix()))
            .await
            .context("cannot read etcd")?;
        let mut view = View {
            leader: None,
            report: None,
            members: Vec::new(),
        };
        for kv in response.kvs() {
            let key = kv.key_str().unwrap_or_default();
            if key == agent::leader_key(cluster) {
                view.leader = serde_json::from_slice(kv.value())
                    .ok()
                    .map(|leader| (leader, kv.create_revision()));
            } else if key == cluster.key("db/primary") {
                view.report = serde_json::from_slice(kv.value()).ok();
            } else if key.starts_with(&cluster.key("db/members/")) {
                view.members
                    .extend(serde_json::from_slice::<Member>(kv.value()).ok());
            }
        }
        Ok(view)
    }

    fn describe(&self) -> String {
        let mut out = String::new();
        match &self.leader {
            Some((leader, term)) => {
                out += &format!(
                    "primary: {} ({}), term {term}\n",
                    leader.host, leader.address
                )
            }
            None => {
                out +=
                    "primary: none (a failover is under way, or refused: see `webstack status`)\n"
            }
        }
        if let Some(report) = &self.report {
            out += &format!(
                "last primary report: {} term {}, semi-sync {}, binlog {}\n",
                report.host,
                report.term,
                if report.semi_sync { "on" } else { "OFF" },
                if report.binlog_pos.is_empty() {
                    "-"
                } else {
                    &report.binlog_pos
                },
            );
        }
        for m in &self.members {
            out += &format!(
                "member {}: {}, read_only {}, gtid {}, received {}{}\n",
                m.host,
                m.phase,
                m.read_only,
                if m.current_pos.is_empty() {
                    "-"
                } else {
                    &m.current_pos
                },
                if m.received_pos.is_empty() {
                    "-"
                } else {
                    &m.received_pos
                },
                m.source
                    .as_deref()
                    .map(|s| format!(", from {s}"))
                    .unwrap_or_default(),
            );
        }
        out
    }
}

fn check_db_host(config: &Config, host: &str) -> anyhow::Result<()> {
    if config.hosts_with(Role::Db).any(|h| h.name == host) {
        return Ok(());
    }
    let names: Vec<&str> = config
        .hosts_with(Role::Db)
        .map(|h| h.name.as_str())
        .collect();
    bail!("{host:?} is not a db host (db hosts: {})", names.join(", "))
}

/// Waits until the leader key names a node other than `from` (any, or `to`) and it is writable.
async fn wait_for_new_primary(
    client: &mut Client,
    cluster: &webstack_coord::Cluster,
    from: Option<&str>,
    to: Option<&str>,
) -> anyhow::Result<(String, i64)> {
    let deadline = Instant::now() + WAIT;
    loop {
        let view = View::read(client, cluster).await?;
        if let Some((leader, term)) = &view.leader {
            let moved =
                from.is_none_or(|f| f != leader.host) && to.is_none_or(|t| t == leader.host);
            let writable = view
                .members
                .iter()
                .any(|m| m.host == leader.host && !m.read_only);
            if moved && writable {
                return Ok((leader.host.clone(), *term));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no new primary within {WAIT:?}; `webstack db status` shows the state:\n{}",
                view.describe()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn switchover(
    config: &Config,
    cluster: &webstack_coord::Cluster,
    client: &mut Client,
    to: Option<String>,
) -> anyhow::Result<ExitCode> {
    let view = View::read(client, cluster).await?;
    let Some((leader, _)) = &view.leader else {
        bail!("there is no primary to switch over from; `webstack db status` says why");
    };
    if let Some(to) = &to {
        check_db_host(config, to)?;
        if *to == leader.host {
            bail!("{to} is already the primary");
        }
    }
    let began = Instant::now();
    client
        .put(
            agent::switchover_key(cluster),
            to.clone().unwrap_or_default(),
            None,
        )
        .await
        .context("cannot ask for the switchover")?;
    let (host, term) =
        wait_for_new_primary(client, cluster, Some(&leader.host), to.as_deref()).await?;
    println!(
        "switched over: {host} is the primary (term {term}) after {} ms; {} becomes its replica",
        began.elapsed().as_millis(),
        leader.host
    );
    Ok(ExitCode::SUCCESS)
}

async fn force_failover(
    config: &Config,
    cluster: &webstack_coord::Cluster,
    client: &mut Client,
    host: String,
) -> anyhow::Result<ExitCode> {
    check_db_host(config, &host)?;
    let view = View::read(client, cluster).await?;
    if let Some((leader, term)) = &view.leader {
        bail!(
            "{} is the primary (term {term}): a forced promotion is only for when there is none; \
             use `webstack db switchover --to {host}`",
            leader.host
        );
    }
    let Some(member) = view.members.iter().find(|m| m.host == host) else {
        bail!("{host}'s db role is not reporting to etcd: start it first");
    };
    if let Some(report) = &view.report {
        let lost = webstack_db::gtid::GtidPos::parse(&member.received_pos)
            .behind(&webstack_db::gtid::GtidPos::parse(&report.binlog_pos));
        eprintln!(
            "webstack: forcing {host} to be the primary. The last primary ({}) reported binlog {}; \
             {host} received {}: at least {lost} transaction(s) the old primary reported may be lost{}.",
            report.host,
            report.binlog_pos,
            member.received_pos,
            if report.semi_sync {
                ""
            } else {
                ", and any it acknowledged without semi-sync"
            }
        );
    }
    let began = Instant::now();
    // Only while there is no primary, and never for long: a forced promotion that does not
    // happen (the host went away) must not decide a failover months later.
    let lease = client
        .lease_grant(FORCE_TTL_SECS, None)
        .await
        .context("cannot record the forced promotion")?
        .id();
    let record = Txn::new()
        .when([Compare::version(
            agent::leader_key(cluster),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(
            agent::force_key(cluster),
            host.clone(),
            Some(PutOptions::new().with_lease(lease)),
        )]);
    if !client
        .txn(record)
        .await
        .context("cannot record the forced promotion")?
        .succeeded()
    {
        bail!("a primary appeared meanwhile: nothing forced (`webstack db status`)");
    }
    let (host, term) = match wait_for_new_primary(client, cluster, None, Some(&host)).await {
        Ok(done) => done,
        Err(error) => {
            // Withdrawn, so it does not block every later promotion.
            let _ = client.delete(agent::force_key(cluster), None).await;
            return Err(error.context("the forced promotion was withdrawn"));
        }
    };
    println!(
        "forced: {host} is the primary (term {term}) after {} ms",
        began.elapsed().as_millis()
    );
    Ok(ExitCode::SUCCESS)
}
