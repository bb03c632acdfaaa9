//! `webstack up --netns`: every host of the topology in a network namespace of its own
//! (`ws-lb-01`, ...), attached by a veth pair to a bridge that lives in a namespace of its own
//! (`ws-switch`), plus `ws-client` for clients. Each host runs `webstack run --host NAME` (the
//! production mode) with a state dir of its own, as a separate machine would; this process
//! creates the namespaces, gives each host the site's secrets, starts and stops the hosts,
//! answers the control socket for all of them, and removes everything it created, also what
//! a crashed `up` left behind when the state dir proves it was its own. Nothing is configured
//! in the machine's own namespace: no address, no route, no link.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use webstack_common::shutdown::termination_signal;
use webstack_config::{Config, Role};

use crate::control::{self, Reply, Request};

/// A host's first start includes a database bootstrap; `run --host` bounds each role itself.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
/// A host supervisor stops its roles front to back; a db role may take 75 s.
const HOST_STOP_TIMEOUT: Duration = Duration::from_secs(100);
const BRIDGE: &str = "br0";

/// The namespaces, links and addresses of one topology.
struct Plan {
    switch: String,
    client: Namespace,
    hosts: Vec<Namespace>,
    prefix_len: u8,
}

struct Namespace {
    /// The topology's host name (or `client`).
    name: String,
    netns: String,
    address: std::net::IpAddr,
    /// The veth end on the bridge, in the switch's namespace.
    switch_port: String,
}

impl Plan {
    fn new(config: &Config) -> anyhow::Result<Self> {
        let netns = &config.netns;
        let (Some((_, prefix_len)), Some(client)) = (netns.network, netns.client) else {
            bail!(
                "{}: namespace mode needs [netns] network and client (the hosts' private network, e.g. examples/netns.toml)",
                config.path.display()
            );
        };
        let hosts = config
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| Namespace {
                name: h.name.clone(),
                netns: netns.namespace(&h.name),
                address: h.address,
                switch_port: format!("port{i}"),
            })
            .collect();
        Ok(Self {
            switch: netns.namespace("switch"),
            client: Namespace {
                name: "client".into(),
                netns: netns.namespace("client"),
                address: client,
                switch_port: "client".into(),
            },
            hosts,
            prefix_len,
        })
    }

    /// Every namespace, switch first.
    fn namespaces(&self) -> Vec<String> {
        std::iter::once(self.switch.clone())
            .chain(std::iter::once(self.client.netns.clone()))
            .chain(self.hosts.iter().map(|h| h.netns.clone()))
            .collect()
    }
}

/// Runs `ip ARGS`, its error output in the error.
async fn ip(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("cannot run `ip` (Debian's iproute2)")?;
    if !output.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

async fn existing_namespaces() -> anyhow::Result<Vec<String>> {
    Ok(ip(&["netns", "list"])
        .await?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn owner_path(state_dir: &Path) -> PathBuf {
    state_dir.join("run/netns-owner.json")
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Owner {
    pid: u32,
    namespaces: Vec<String>,
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
    })
}

/// Removes namespaces of this topology that a previous `up` of this state dir left (it
/// crashed); refuses namespaces it cannot prove are its own.
async fn clean_leftovers(plan: &Plan, state_dir: &Path) -> anyhow::Result<()> {
    let existing = existing_namespaces().await?;
    let present: Vec<String> = plan
        .namespaces()
        .into_iter()
        .filter(|n| existing.contains(n))
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let owner: Option<Owner> = fs::read(owner_path(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    match owner {
        Some(owner)
            if webstack_common::child::runs_this_program(owner.pid)
                && owner.pid != std::process::id() =>
        {
            bail!(
                "namespaces {} belong to a running `webstack up --netns` (pid {}) with state dir {}",
                present.join(", "),
                owner.pid,
                state_dir.display()
            )
        }
        Some(owner) if present.iter().all(|n| owner.namespaces.contains(n)) => {
            println!(
                "webstack: removing namespaces left by an earlier `up --netns` (pid {}): {}",
                owner.pid,
                present.join(", ")
            );
            remove_namespaces(&present).await;
            Ok(())
        }
        _ => bail!(
            "namespace {} exists but was not created by `webstack up --netns` with state dir {}: remove it (ip netns del {}) or set netns.prefix",
            present[0],
            state_dir.display(),
            present[0]
        ),
    }
}

/// Stops what still runs in each namespace (only processes inside namespaces this state dir
/// proved its own), then deletes them; their veths go with them.
async fn remove_namespaces(namespaces: &[String]) {
    for netns in namespaces {
        let pids: Vec<i32> = ip(&["netns", "pids", netns])
            .await
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        // The hosts of a crashed `up` got SIGTERM too and may still be stopping (a database
        // shuts down cleanly): give them the time a host stop takes.
        let deadline = Instant::now() + HOST_STOP_TIMEOUT;
        while pids.iter().any(|&p| alive(p as u32)) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for &pid in pids.iter().filter(|&&p| alive(p as u32)) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if let Err(error) = ip(&["netns", "del", netns]).await {
            eprintln!("webstack: {error:#}");
        }
    }
}

/// Creates the switch, the client and one namespace per host, each host's veth on the bridge.
/// Every namespace made is pushed to `made` as soon as it exists, so a failure (a name another
/// `up` took meanwhile) removes only this run's.
async fn create(plan: &Plan, made: &mut Vec<String>) -> anyhow::Result<()> {
    let switch = plan.switch.as_str();
    ip(&["netns", "add", switch]).await?;
    made.push(switch.to_string());
    ip(&["-n", switch, "link", "set", "lo", "up"]).await?;
    ip(&["-n", switch, "link", "add", BRIDGE, "type", "bridge"]).await?;
    ip(&["-n", switch, "link", "set", BRIDGE, "up"]).await?;
    for ns in std::iter::once(&plan.client).chain(&plan.hosts) {
        let netns = ns.netns.as_str();
        ip(&["netns", "add", netns]).await?;
        made.push(netns.to_string());
        // Made in the switch's namespace with its peer straight in the host's: no link is
        // ever in the machine's own namespace.
        ip(&[
            "-n",
            switch,
            "link",
            "add",
            &ns.switch_port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            netns,
        ])
        .await?;
        ip(&[
            "-n",
            switch,
            "link",
            "set",
            &ns.switch_port,
            "master",
            BRIDGE,
            "up",
        ])
        .await?;
        let cidr = format!("{}/{}", ns.address, plan.prefix_len);
        ip(&["-n", netns, "addr", "add", &cidr, "dev", "eth0"]).await?;
        ip(&["-n", netns, "link", "set", "eth0", "up"]).await?;
        ip(&["-n", netns, "link", "set", "lo", "up"]).await?;
    }
    Ok(())
}

/// One host: its namespace, state dir and `webstack run --host` process.
struct Host {
    name: String,
    state_dir: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

/// The files every host needs from the start, made once and copied to each host's state dir
/// (in production: copied to each machine, see docs/operations.md): the database accounts'
/// passwords and the local CA with the site's certificate; the lbs' ACME folder is shared.
fn hand_out_secrets(config: &Config, state_dir: &Path, hosts: &[Host]) -> anyhow::Result<()> {
    if config.has_db() {
        webstack_db::secrets::ensure_all(state_dir)
            .context("cannot create the database secrets")?;
    }
    let token = webstack_common::secret::control_token_path(state_dir);
    if config.hosts_with(Role::Lb).next().is_some() {
        webstack_common::secret::ensure_file(&token)
            .context("cannot create the lb control token")?;
    }
    if config.uses_local_ca() {
        webstack_lb::tls::LocalCa::new(state_dir)
            .ensure(&config.site_names())
            .context("cannot create the local certificate authority")?;
    }
    for host in hosts {
        let roles = config
            .host(&host.name)
            .map(|h| h.roles.clone())
            .unwrap_or_default();
        // Each host gets what its roles read, no more: the passwords where a database or an
        // app runs, the site's certificate (not the CA's key) where an lb runs.
        if roles.contains(&Role::Db) || roles.contains(&Role::App) {
            copy_dir(
                &state_dir.join("secrets"),
                &host.state_dir.join("secrets"),
                &["lb-control.token"],
            )?;
        }
        // The lbs check the runtime API's token.
        if roles.contains(&Role::Lb) {
            use std::os::unix::fs::PermissionsExt;
            let to = webstack_common::secret::control_token_path(&host.state_dir);
            if let Some(dir) = to.parent() {
                fs::create_dir_all(dir)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
            }
            fs::copy(&token, &to).with_context(|| format!("cannot copy {}", token.display()))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o600))?;
        }
        if roles.contains(&Role::Lb) {
            copy_dir(
                &state_dir.join("tls"),
                &host.state_dir.join("tls"),
                &["ca.key"],
            )?;
        }
        // The lbs share one ACME folder, as production shares it between machines: the VIP
        // holder orders, every lb loads the certificate and answers the CA's challenges.
        let is_lb = config.host(&host.name).is_some_and(|h| h.has(Role::Lb));
        if is_lb && config.uses_acme() {
            let shared = state_dir.join("tls/acme");
            let link = host.state_dir.join("tls/acme");
            fs::create_dir_all(&shared)?;
            if fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(&shared, &link)
                    .with_context(|| format!("cannot link {}", link.display()))?;
            }
        }
    }
    Ok(())
}

/// Copies the files of `from` (not its folders, not `except`) into `to`, made 0700.
fn copy_dir(from: &Path, to: &Path, except: &[&str]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if !from.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if except.iter().any(|e| entry.file_name() == *e) {
            continue;
        }
        if entry.file_type()?.is_file() {
            let target = to.join(entry.file_name());
            fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Starts `webstack run --host NAME` inside the host's namespace. It gets SIGTERM if this
/// process dies (`setpriv --pdeathsig`), so a crashed `up` leaves no host running.
fn spawn_host(config: &Config, exe: &Path, netns: &str, host: &mut Host) -> anyhow::Result<()> {
    fs::create_dir_all(&host.state_dir)?;
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&host.log)
        .with_context(|| format!("cannot open {}", host.log.display()))?;
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "setpriv",
            "--pdeathsig",
            "TERM",
            "--",
        ])
        .arg(exe)
        .args(["run", "--in-netns", "--host", &host.name, "--config"])
        .arg(&config.path)
        .arg("--state-dir")
        .arg(&host.state_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start host {}", host.name))?;
    host.child = Some(child);
    Ok(())
}

/// Waits until every host's supervisor reports all its roles healthy.
async fn wait_ready(hosts: &mut [Host]) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut ready = vec![false; hosts.len()];
    while ready.iter().any(|r| !r) {
        for (i, host) in hosts.iter_mut().enumerate() {
            if ready[i] {
                continue;
            }
            if let Some(status) = host
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "host {} exited during startup ({status}); last lines of {}:\n{}",
                    host.name,
                    host.log.display(),
                    crate::supervisor::tail(&host.log, 15)
                );
            }
            if let Ok(reply) = control::request(&host.state_dir, &Request::Status).await
                && !reply.units.is_empty()
                && reply.units.iter().all(|u| u.healthy)
            {
                ready[i] = true;
                println!("  {:<12} ready ({} roles)", host.name, reply.units.len());
            }
        }
        if Instant::now() >= deadline {
            bail!("not every host became ready within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// SIGTERM to each host (lb hosts first, so the site stops taking traffic before its servers
/// go), then wait for each to exit.
async fn stop_hosts(hosts: &mut [Host], config: &Config) {
    hosts.sort_by_key(|h| !config.host(&h.name).is_some_and(|c| c.has(Role::Lb)));
    for host in hosts.iter_mut() {
        let Some(child) = host.child.as_mut() else {
            continue;
        };
        webstack_common::child::stop(child, HOST_STOP_TIMEOUT, &format!("host {}", host.name))
            .await;
        host.child = None;
    }
}

/// `webstack up --netns`.
pub async fn up(config: Config, state_dir: PathBuf) -> anyhow::Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "webstack up --netns needs root: it creates network namespaces (run it as root, or use `webstack up` for loopback mode)"
        );
    }
    // SIGHUP (certificates) and SIGUSR1 (access logs) go to every host's supervisor, which
    // passes them on to its roles; handled from the first moment, so neither ends `up` with
    // its default action (SIGUSR1's terminates: logrotate's postrotate would have stopped the
    // whole topology and left its namespaces behind).
    use tokio::signal::unix::{SignalKind, signal};
    let hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let reopens = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let plan = Plan::new(&config)?;
    for dir in [
        state_dir.join("run"),
        state_dir.join("logs"),
        state_dir.join("hosts"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let state_dir = fs::canonicalize(&state_dir)?;
    {
        // Root writes secrets and runs programs from here: nobody else may plant links in it.
        use std::os::unix::fs::MetadataExt;
        let meta = fs::metadata(&state_dir)?;
        if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
            bail!(
                "state dir {} must be owned by root and writable by root only in namespace mode (it holds every host's secrets): use another --state-dir, or chown root and chmod go-w it",
                state_dir.display()
            );
        }
    }
    let listener = crate::supervisor::bind_control(&state_dir).await?;
    if let Err(error) = clean_leftovers(&plan, &state_dir).await {
        let _ = fs::remove_file(control::socket_path(&state_dir));
        return Err(error);
    }
    let owner = Owner {
        pid: std::process::id(),
        namespaces: plan.namespaces(),
    };
    fs::write(owner_path(&state_dir), serde_json::to_vec(&owner)?)?;
    println!(
        "webstack: starting {} in network namespaces ({}*; state in {})",
        config.site_name,
        config.netns.prefix,
        state_dir.display()
    );
    let mut hosts: Vec<Host> = plan
        .hosts
        .iter()
        .map(|ns| Host {
            name: ns.name.clone(),
            state_dir: state_dir.join("hosts").join(&ns.name),
            child: None,
            log: state_dir.join("logs").join(format!("{}.log", ns.name)),
        })
        .collect();
    let exe = std::env::current_exe().context("cannot find the webstack executable")?;
    let mut made = Vec::new();
    let started = async {
        create(&plan, &mut made).await?;
        hand_out_secrets(&config, &state_dir, &hosts)?;
        for (host, ns) in hosts.iter_mut().zip(&plan.hosts) {
            spawn_host(&config, &exe, &ns.netns, host)?;
        }
        wait_ready(&mut hosts).await
    };
    let result = tokio::select! {
        result = started => result,
        signal = termination_signal() => Err(anyhow::anyhow!("interrupted by {signal} while starting")),
    };
    let hosts = Arc::new(tokio::sync::Mutex::new(hosts));
    let code = match result {
        Err(error) => {
            eprintln!("webstack: {error:#}");
            ExitCode::FAILURE
        }
        Ok(()) => {
            print_endpoints(&config, &plan, &state_dir);
            let tasks = [
                tokio::spawn(control_loop(listener, hosts.clone())),
                tokio::spawn(forward_to_hosts(
                    hosts.clone(),
                    hangups,
                    Signal::SIGHUP,
                    "certificates reloading",
                )),
                tokio::spawn(forward_to_hosts(
                    hosts.clone(),
                    reopens,
                    Signal::SIGUSR1,
                    "access logs reopening",
                )),
            ];
            let signal = termination_signal().await;
            println!("webstack: {signal}: stopping");
            for task in &tasks {
                task.abort();
            }
            ExitCode::SUCCESS
        }
    };
    stop_hosts(&mut hosts.lock().await, &config).await;
    remove_namespaces(&made).await;
    let _ = fs::remove_file(owner_path(&state_dir));
    let _ = fs::remove_file(control::socket_path(&state_dir));
    println!("webstack: stopped; namespaces removed");
    Ok(code)
}

/// Passes each `incoming` signal on to every host's supervisor (which passes it to its roles).
async fn forward_to_hosts(
    hosts: Arc<tokio::sync::Mutex<Vec<Host>>>,
    mut incoming: tokio::signal::unix::Signal,
    forwarded: Signal,
    what: &str,
) {
    while incoming.recv().await.is_some() {
        let pids: Vec<u32> = hosts
            .lock()
            .await
            .iter()
            .filter_map(|h| h.child.as_ref()?.id())
            .collect();
        println!(
            "webstack: {}: {what} on {} host(s)",
            forwarded.as_str(),
            pids.len()
        );
        for pid in pids {
            let _ = kill(Pid::from_raw(pid as i32), forwarded);
        }
    }
}

fn print_endpoints(config: &Config, plan: &Plan, state_dir: &Path) {
    println!(
        "webstack: {} is up, one network namespace per host",
        config.site_name
    );
    if let Some(site) = config.site_addr() {
        println!(
            "  http://{site}/  the site (lb.vip, moved by keepalived), from the client namespace: webstack exec client -c {} -- curl http://{site}/",
            config.path.display()
        );
    }
    for ns in &plan.hosts {
        println!(
            "  {:<12} {:<16} namespace {}",
            ns.name,
            ns.address.to_string(),
            ns.netns
        );
    }
    println!(
        "  client       {:<16} namespace {}; switch: namespace {} (bridge {BRIDGE})",
        plan.client.address.to_string(),
        plan.client.netns,
        plan.switch
    );
    let state = state_dir.display();
    println!(
        "  each host's state in {state}/hosts/HOST; `webstack status --state-dir {state}`; Ctrl-C stops everything and removes the namespaces"
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

/// Answers `status`, `stop` and `start` for every host, by asking each host's supervisor.
async fn control_loop(listener: UnixListener, hosts: Arc<tokio::sync::Mutex<Vec<Host>>>) {
    let dirs: Vec<(String, PathBuf)> = hosts
        .lock()
        .await
        .iter()
        .map(|h| (h.name.clone(), h.state_dir.clone()))
        .collect();
    let dirs = Arc::new(dirs);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(answer(stream, dirs.clone()));
    }
}

async fn answer(stream: UnixStream, dirs: Arc<Vec<(String, PathBuf)>>) {
    control::answer_one(stream, |request| async move {
        let target = match &request {
            Request::Stop { target } | Request::Start { target } => target.as_str(),
            Request::Status => {
                let mut all = Reply {
                    ok: true,
                    ..Reply::default()
                };
                for (_, dir) in dirs.iter() {
                    if let Ok(reply) = control::request(dir, &Request::Status).await {
                        all.site = reply.site;
                        all.units.extend(reply.units);
                    }
                }
                return all;
            }
        };
        let host = target.split('/').next().unwrap_or_default();
        match dirs.iter().find(|(name, _)| name == host) {
            Some((_, dir)) => control::request(dir, &request)
                .await
                .unwrap_or_else(|e| Reply::failure(format!("{e:#}"))),
            None => Reply::failure(format!(
                "{target:?} names no host: expected HOST or HOST/ROLE with HOST one of {}",
                dirs.iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    })
    .await;
}

/// `webstack exec HOST -- CMD`: runs CMD in the host's namespace (or `client`, `switch`).
pub fn exec(config: &Config, host: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let known = host == "client" || host == "switch" || config.host(host).is_some();
    if !known {
        bail!(
            "{host:?} is not a host of {} (hosts: {}, or client, switch)",
            config.path.display(),
            crate::cli::host_names(config)
        );
    }
    let Some((program, args)) = command.split_first() else {
        bail!("nothing to run: webstack exec {host} -- COMMAND [ARGS...]");
    };
    let netns = config.netns.namespace(host);
    if !Path::new("/run/netns").join(&netns).exists() {
        bail!(
            "namespace {netns} does not exist: is `webstack up --netns -c {}` running?",
            config.path.display()
        );
    }
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new("ip")
        .args(["netns", "exec", &netns, program])
        .args(args)
        .exec();
    bail!("cannot run `ip netns exec {netns} {program}`: {error}")
}
