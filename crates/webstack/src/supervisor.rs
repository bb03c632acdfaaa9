//! The supervisor behind `webstack up` (every host) and `webstack run --host` (one host): starts
//! each role as its own OS process in dependency order, restarts crashed ones with backoff,
//! answers the control socket (status, stop, start), and on SIGTERM/SIGINT stops everything,
//! front to back (lb, web, app, db), leaving no process behind. States: LIFECYCLE.md.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::{UnixListener, UnixStream};
use tokio::process::{Child, Command};
use webstack_common::backoff::Backoff;
use webstack_common::probe::{get_body, get_status};
use webstack_common::shutdown::termination_signal;
use webstack_config::{Config, Role};

use crate::control::{self, Reply, Request, UnitStatus};

/// How long a role may take to become ready after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// A database node's first start runs mariadb-install-db and waits for replication.
const DB_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a role may take to drain and exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// A db role first gives mariadbd its clean shutdown (up to 60 s, see the db role): killed
/// sooner, the role could not stop it, and mariadbd would outlive us.
const DB_STOP_TIMEOUT: Duration = Duration::from_secs(75);
/// One `/ready` or `/status` probe of a role (generous: a loaded machine answers slowly, and
/// a slow answer is not an unhealthy role).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A role that ran this long before crashing restarts after the first backoff again.
const STABLE_AFTER: Duration = Duration::from_secs(30);

/// One role process of one host.
struct Unit {
    host: String,
    role: Role,
    service: SocketAddr,
    admin: SocketAddr,
    /// The running process; its stdin pipe stays open so the child notices if we die.
    child: Option<Child>,
    /// False once an operator stopped it (or during shutdown): no restart.
    wanted: bool,
    healthy: bool,
    /// The role's own `/status` facts (a db node's replication state), when it has some.
    detail: serde_json::Value,
    restarts: u32,
    backoff: Backoff,
    restart_at: Option<Instant>,
    started_at: Instant,
}

impl Unit {
    fn label(&self) -> String {
        format!("{}/{}", self.host, self.role)
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    fn state(&self) -> &'static str {
        match (&self.child, self.wanted, self.restart_at) {
            (Some(_), _, _) => "running",
            (None, true, Some(_)) => "restarting",
            (None, true, None) => "pending",
            (None, false, _) => "stopped",
        }
    }

    fn status(&self) -> UnitStatus {
        let state = self.state();
        UnitStatus {
            host: self.host.clone(),
            role: self.role.to_string(),
            address: self.service.to_string(),
            admin: self.admin.to_string(),
            pid: self.pid(),
            state: state.into(),
            healthy: self.healthy,
            detail: self.detail.clone(),
            restarts: self.restarts,
        }
    }
}

struct Supervisor {
    config: Config,
    exe: PathBuf,
    state_dir: PathBuf,
    units: Mutex<Vec<Unit>>,
}

type Shared = Arc<Supervisor>;

/// Runs the supervisor until a termination signal; `only_host` limits it to one host.
pub async fn run(
    config: Config,
    only_host: Option<String>,
    state_dir: PathBuf,
) -> anyhow::Result<ExitCode> {
    // SIGHUP and SIGUSR1 are forwarded to the roles; handled from the first moment, so neither
    // can end the supervisor with its default action while it starts.
    use tokio::signal::unix::{SignalKind, signal};
    let hangups = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let reopens = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    for dir in [
        state_dir.clone(),
        state_dir.join("logs"),
        state_dir.join("run"),
    ] {
        fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let state_dir = fs::canonicalize(&state_dir)?;
    let listener = bind_control(&state_dir).await?;
    if config.hosts_with(Role::Lb).next().is_some() {
        // The lb runtime API's token (`webstack lb ...`), before any lb reads it.
        webstack_common::secret::ensure_file(&webstack_common::secret::control_token_path(
            &state_dir,
        ))
        .context("cannot create the lb control token")?;
    }
    if config.has_db() {
        // Created here, once, before any role starts: two db nodes must not race to make them.
        webstack_db::secrets::ensure_all(&state_dir)
            .context("cannot create the database secrets")?;
        for host in config
            .hosts_with(Role::Db)
            .filter(|h| only_host.as_ref().is_none_or(|o| *o == h.name))
        {
            let node = config.db_node(host, &state_dir).expect("db host");
            for program in [&node.mariadbd, &node.install_db] {
                if !program.exists() {
                    cleanup(&state_dir);
                    anyhow::bail!(
                        "{} not found: the db role needs Debian's MariaDB (apt-get install mariadb-server)",
                        program.display()
                    );
                }
            }
        }
    }
    let runs_lb = config
        .hosts_with(Role::Lb)
        .any(|h| only_host.as_ref().is_none_or(|o| *o == h.name));
    if runs_lb && config.uses_local_ca() {
        // Once, before the lbs start: two lbs must not race to make the CA.
        if let Err(error) = webstack_lb::tls::LocalCa::new(&state_dir).ensure(&config.site_names())
        {
            cleanup(&state_dir);
            anyhow::bail!("cannot create the local certificate authority: {error}");
        }
    }
    fs::write(
        state_dir.join("run/supervisor.pid"),
        format!("{}\n", std::process::id()),
    )?;

    let mut units = Vec::new();
    for role in Role::ALL {
        for host in config
            .hosts
            .iter()
            .filter(|h| h.has(role) && only_host.as_ref().is_none_or(|o| *o == h.name))
        {
            units.push(Unit {
                host: host.name.clone(),
                role,
                service: config.service_addr(host, role),
                admin: config.admin_addr(host, role),
                child: None,
                wanted: true,
                healthy: false,
                detail: serde_json::Value::Null,
                restarts: 0,
                backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
                restart_at: None,
                started_at: Instant::now(),
            });
        }
    }
    let sup: Shared = Arc::new(Supervisor {
        exe: std::env::current_exe().context("cannot find the webstack executable")?,
        config,
        state_dir: state_dir.clone(),
        units: Mutex::new(units),
    });

    let host_metrics = match serve_host_metrics(&sup, only_host.as_deref()).await {
        Ok(tasks) => tasks,
        Err(error) => {
            cleanup(&state_dir);
            return Err(error);
        }
    };
    println!(
        "webstack: starting {} (state in {})",
        sup.config.site_name,
        state_dir.display()
    );
    // `status` answers from the first moment, also while a slow start (a database's first
    // bootstrap) is under way.
    let tasks = [
        tokio::spawn(health_loop(sup.clone())),
        tokio::spawn(control_loop(sup.clone(), listener)),
        tokio::spawn(forward_hangups(sup.clone(), hangups)),
        tokio::spawn(forward_reopens(sup.clone(), reopens)),
    ];
    let started = tokio::select! {
        result = start_all(&sup) => result,
        signal = termination_signal() => Err(anyhow::anyhow!("interrupted by {signal} while starting")),
    };
    if let Err(error) = started {
        eprintln!("webstack: {error:#}");
        for task in &tasks {
            task.abort();
        }
        stop_all(&sup).await;
        cleanup(&state_dir);
        return Ok(ExitCode::FAILURE);
    }
    print_endpoints(&sup);

    let reaper = tokio::spawn(reap_loop(sup.clone()));
    let signal = termination_signal().await;
    println!("webstack: {signal}: stopping");
    reaper.abort();
    for task in &tasks {
        task.abort();
    }
    stop_all(&sup).await;
    for task in host_metrics {
        task.abort();
    }
    cleanup(&state_dir);
    println!("webstack: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Serves each host's `/metrics` (roles' states and restarts, the state dir's disk) on its
/// address and `monitor.host_port`.
async fn serve_host_metrics(
    sup: &Shared,
    only_host: Option<&str>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for host in sup
        .config
        .hosts
        .iter()
        .filter(|h| only_host.is_none_or(|o| o == h.name))
    {
        let addr = sup.config.host_metrics_addr(host);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} ({} metrics)", host.name))?;
        let weak = Arc::downgrade(sup);
        let name = host.name.clone();
        let snapshot = Arc::new(move || {
            let Some(sup) = weak.upgrade() else {
                return Vec::new();
            };
            let units = sup.units.lock().unwrap_or_else(|e| e.into_inner());
            units
                .iter()
                .filter(|u| u.host == name)
                .map(|u| crate::host_metrics::RoleSample {
                    role: u.role.as_str(),
                    state: u.state(),
                    up: u.child.is_some() && u.healthy,
                    restarts: u.restarts,
                })
                .collect()
        });
        let admin = webstack_common::Admin::new(crate::host_metrics::registry(
            snapshot,
            sup.state_dir.clone(),
            only_host.is_some(),
        ));
        admin.set_ready(true);
        tasks.push(tokio::spawn(webstack_common::serve_admin(
            listener,
            admin,
            webstack_common::Shutdown::new(),
        )));
    }
    Ok(tasks)
}

/// Binds the control socket, refusing when another supervisor already answers on it.
pub(crate) async fn bind_control(state_dir: &Path) -> anyhow::Result<UnixListener> {
    let path = control::socket_path(state_dir);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            anyhow::bail!(
                "a webstack supervisor is already running with state dir {} (see `webstack status --state-dir {}`)",
                state_dir.display(),
                state_dir.display()
            );
        }
        fs::remove_file(&path)
            .with_context(|| format!("cannot remove stale {}", path.display()))?;
    }
    // Made under a private name, set to 0600 (only this user may stop or start roles), then
    // renamed into place: no moment with the umask's wider mode.
    let fresh = state_dir.join(format!(".control.{}.sock", std::process::id()));
    let _ = fs::remove_file(&fresh);
    let listener = UnixListener::bind(&fresh)
        .with_context(|| format!("cannot create the control socket {}", fresh.display()))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fresh, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&fresh, &path))
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    Ok(listener)
}

fn cleanup(state_dir: &Path) {
    let _ = fs::remove_file(control::socket_path(state_dir));
    let _ = fs::remove_file(state_dir.join("run/supervisor.pid"));
}

impl Supervisor {
    fn log_path(&self, unit: &Unit) -> PathBuf {
        self.state_dir
            .join("logs")
            .join(format!("{}-{}.log", unit.host, unit.role))
    }

    fn pid_path(&self, unit: &Unit) -> PathBuf {
        self.state_dir
            .join("run")
            .join(format!("{}-{}.pid", unit.host, unit.role))
    }

    /// Starts the process of `unit`: its output appended to its log file, its stdin a pipe
    /// from us, in its own process group so a terminal's Ctrl-C reaches only the supervisor.
    fn spawn(&self, unit: &mut Unit) -> anyhow::Result<()> {
        let log_path = self.log_path(unit);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut command = Command::new(&self.exe);
        command
            .arg("run")
            .args([
                "--host",
                &unit.host,
                "--role",
                unit.role.as_str(),
                "--supervised",
            ])
            .arg("--config")
            .arg(&self.config.path)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0)
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", unit.label()))?;
        if let Some(pid) = child.id() {
            let _ = fs::write(self.pid_path(unit), format!("{pid}\n"));
        }
        unit.child = Some(child);
        unit.healthy = false;
        unit.started_at = Instant::now();
        unit.restart_at = None;
        Ok(())
    }

    /// Checks every child once: a dead one is reaped, and restarted later if still wanted.
    fn reap(&self) {
        let mut units = self.units.lock().unwrap();
        let now = Instant::now();
        for unit in units.iter_mut() {
            let Some(child) = unit.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            unit.child = None;
            unit.healthy = false;
            let _ = fs::remove_file(self.pid_path(unit));
            if unit.wanted {
                if unit.started_at.elapsed() > STABLE_AFTER {
                    unit.backoff.reset();
                }
                let delay = unit.backoff.next_delay();
                println!(
                    "webstack: {} exited unexpectedly ({status}); restarting in {delay:?}",
                    unit.label(),
                );
                unit.restart_at = Some(now + delay);
            }
        }
        for unit in units.iter_mut().filter(|u| u.wanted && u.child.is_none()) {
            if unit.restart_at.is_some_and(|at| at <= now) {
                unit.restarts += 1;
                if let Err(error) = self.spawn(unit) {
                    eprintln!("webstack: {error:#}");
                    unit.restart_at = Some(now + unit.backoff.peek());
                }
            }
        }
    }

    /// Indices of the units a `HOST` or `HOST/ROLE` target names.
    fn resolve(&self, target: &str) -> Result<Vec<usize>, String> {
        let (host, role) = match target.split_once('/') {
            Some((host, role)) => (
                host,
                Some(Role::parse(role).ok_or_else(|| {
                    format!("unknown role {role:?}: expected lb, web, app or db")
                })?),
            ),
            None => (target, None),
        };
        let units = self.units.lock().unwrap();
        let found: Vec<usize> = (0..units.len())
            .filter(|&i| units[i].host == host && role.is_none_or(|r| units[i].role == r))
            .collect();
        if found.is_empty() {
            let mut known: Vec<String> = Vec::new();
            for unit in units.iter() {
                if !known.contains(&unit.host) {
                    known.push(unit.host.clone());
                }
            }
            return Err(format!(
                "{target:?} names no role of this supervisor: expected HOST or HOST/ROLE with HOST one of {}",
                known.join(", ")
            ));
        }
        Ok(found)
    }

    fn snapshot(&self) -> Reply {
        let units = self.units.lock().unwrap();
        Reply {
            ok: true,
            site: self.config.site_name.clone(),
            units: units.iter().map(Unit::status).collect(),
            ..Reply::default()
        }
    }
}

/// Starts every unit, one role at a time in start order (app, web, lb), waiting for each wave
/// to be ready before the next, so the LB's first health sweep finds live servers.
async fn start_all(sup: &Shared) -> anyhow::Result<()> {
    for role in Role::ALL {
        let wave: Vec<usize> = {
            let mut units = sup.units.lock().unwrap();
            let mut wave = Vec::new();
            for (i, unit) in units.iter_mut().enumerate().filter(|(_, u)| u.role == role) {
                sup.spawn(unit)?;
                wave.push(i);
            }
            wave
        };
        for i in wave {
            let began = Instant::now();
            wait_ready(sup, i).await?;
            let units = sup.units.lock().unwrap();
            let unit = &units[i];
            println!(
                "  {:<12} {:<22} ready  (pid {}, {:.1}s)",
                unit.label(),
                unit.service.to_string(),
                unit.pid().unwrap_or(0),
                began.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}

/// Polls a unit's `/ready` until 200; fails early, with its log's tail, if the process exits.
async fn wait_ready(sup: &Shared, index: usize) -> anyhow::Result<()> {
    let timeout = if sup.units.lock().unwrap()[index].role == Role::Db {
        DB_READY_TIMEOUT
    } else {
        READY_TIMEOUT
    };
    let deadline = Instant::now() + timeout;
    loop {
        let (admin, label, exited) = {
            let mut units = sup.units.lock().unwrap();
            let unit = &mut units[index];
            let exited = match unit.child.as_mut() {
                Some(child) => child.try_wait().ok().flatten().map(|s| s.to_string()),
                None => Some("not running".into()),
            };
            (unit.admin, unit.label(), exited)
        };
        if let Some(status) = exited {
            let log = sup.log_path(&sup.units.lock().unwrap()[index]);
            anyhow::bail!(
                "{label} exited during startup ({status}); last lines of {}:\n{}",
                log.display(),
                tail(&log, 15)
            );
        }
        if matches!(get_status(admin, "localhost", "/ready", Duration::from_millis(500)).await, Ok(s) if s.is_success())
        {
            sup.units.lock().unwrap()[index].healthy = true;
            return Ok(());
        }
        // A db node that cannot get ready by itself (diverged, promotion refused) says so.
        if sup.units.lock().unwrap()[index].role == Role::Db
            && let Ok((_, body)) =
                get_body(admin, "localhost", "/status", Duration::from_millis(500)).await
            && let Ok(status) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Some(blocked) = status.get("blocked").and_then(|b| b.as_str())
        {
            anyhow::bail!("{label} runs but cannot become ready: {blocked}");
        }
        if Instant::now() >= deadline {
            let log = sup.log_path(&sup.units.lock().unwrap()[index]);
            anyhow::bail!(
                "{label} did not become ready within {timeout:?}; last lines of {}:\n{}",
                log.display(),
                tail(&log, 15)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `lines` lines of a log file (for a start that failed).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn print_endpoints(sup: &Shared) {
    let config = &sup.config;
    let units = sup.units.lock().unwrap();
    println!("webstack: {} is up", config.site_name);
    if let (Some(vip), Some(site)) = (config.vip(), config.site_addr()) {
        let how = if config.uses_vrrp() {
            "keepalived (VRRP) moves it"
        } else {
            "one lb serves it at a time, the other takes over"
        };
        println!("  http://{site}/  the site: lb.vip {vip}, shared by the lb hosts ({how})");
    }
    for unit in units.iter().rev() {
        let what = match unit.role {
            Role::Etcd => "coordination (etcd)",
            Role::Db => "database (MariaDB)",
            Role::Lb => "load balancer: the site",
            Role::Web => "web server",
            Role::App => "application server",
            Role::Monitor => "monitoring dashboard (Prometheus, Alertmanager)",
        };
        if let (Role::Lb, Some(port)) = (unit.role, config.https_port()) {
            println!(
                "  https://{}/  load balancer over HTTPS ({})",
                SocketAddr::new(unit.service.ip(), port),
                unit.host
            );
        }
        let scheme = if unit.role == Role::Db {
            "mysql"
        } else {
            "http"
        };
        println!(
            "  {scheme}://{}/  {what} ({}), admin http://{}/metrics",
            unit.service, unit.host, unit.admin
        );
    }
    let state = sup.state_dir.display();
    if config.uses_local_ca() && config.https_port().is_some() {
        let ca = webstack_lb::tls::LocalCa::new(&sup.state_dir).ca_cert();
        if config.uses_acme() {
            println!(
                "  HTTPS certificates come from ACME (`webstack status` shows progress); until the first is issued, from a local CA: trust {} (curl --cacert)",
                ca.display()
            );
        } else {
            println!(
                "  HTTPS certificates come from a local CA: trust {} (curl --cacert)",
                ca.display()
            );
        }
    }
    println!(
        "  logs in {state}/logs; `webstack status --state-dir {state}`; Ctrl-C stops everything"
    );
    let _ = std::io::stdout().flush();
}

async fn reap_loop(sup: Shared) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        sup.reap();
    }
}

/// SIGHUP to the supervisor reaches every running lb, which reloads its certificates (as
/// `kill -HUP` does to one lb process).
async fn forward_hangups(sup: Shared, mut hangup: tokio::signal::unix::Signal) {
    while hangup.recv().await.is_some() {
        let pids: Vec<u32> = {
            let units = sup.units.lock().unwrap();
            units
                .iter()
                .filter(|u| u.role == Role::Lb)
                .filter_map(|u| u.child.as_ref().and_then(|c| c.id()))
                .collect()
        };
        println!(
            "webstack: SIGHUP: certificates reloading on {} lb process(es)",
            pids.len()
        );
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGHUP);
        }
    }
}

/// SIGUSR1 to the supervisor reaches every lb, web and app process, which reopen their access
/// logs (logrotate's `postrotate`; nginx's convention).
async fn forward_reopens(sup: Shared, mut usr1: tokio::signal::unix::Signal) {
    while usr1.recv().await.is_some() {
        let pids: Vec<u32> = {
            let units = sup.units.lock().unwrap();
            units
                .iter()
                .filter(|u| matches!(u.role, Role::Lb | Role::Web | Role::App))
                .filter_map(|u| u.child.as_ref().and_then(|c| c.id()))
                .collect()
        };
        println!(
            "webstack: SIGUSR1: access logs reopening in {} process(es)",
            pids.len()
        );
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGUSR1);
        }
    }
}

/// Polls every running unit's `/ready` so `status` answers from fresh facts.
async fn health_loop(sup: Shared) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probes: Vec<(usize, SocketAddr, Role)> = {
            let units = sup.units.lock().unwrap();
            units
                .iter()
                .enumerate()
                .filter(|(_, u)| u.child.is_some())
                .map(|(i, u)| (i, u.admin, u.role))
                .collect()
        };
        let checks = probes.into_iter().map(|(i, admin, role)| async move {
            let ok = matches!(get_status(admin, "localhost", "/ready", PROBE_TIMEOUT).await, Ok(s) if s.is_success());
            // A db node also reports its replication state, an lb its certificates; None when
            // the role did not answer (its last facts stay).
            let detail = match role {
                Role::Db | Role::Lb | Role::Etcd | Role::Monitor => get_body(admin, "localhost", "/status", PROBE_TIMEOUT)
                    .await
                    .ok()
                    .and_then(|(_, body)| serde_json::from_slice(&body).ok()),
                _ => Some(serde_json::Value::Null),
            };
            (i, ok, detail)
        });
        let mut handles = Vec::new();
        for check in checks {
            handles.push(tokio::spawn(check));
        }
        for handle in handles {
            if let Ok((i, ok, detail)) = handle.await {
                let mut units = sup.units.lock().unwrap();
                let unit = &mut units[i];
                unit.healthy = ok && unit.child.is_some();
                if unit.child.is_none() {
                    unit.detail = serde_json::Value::Null;
                } else if let Some(detail) = detail {
                    unit.detail = detail;
                }
            }
        }
    }
}

async fn control_loop(sup: Shared, listener: UnixListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(handle_control(sup.clone(), stream));
    }
}

async fn handle_control(sup: Shared, stream: UnixStream) {
    control::answer_one(stream, |request| async move {
        match request {
            Request::Status => sup.snapshot(),
            Request::Stop { target } => stop_target(&sup, &target).await,
            Request::Start { target } => start_target(&sup, &target).await,
        }
    })
    .await;
}

/// SIGTERM to each named unit (front to back), then wait for them to exit; SIGKILL stragglers.
async fn stop_units(sup: &Shared, mut indices: Vec<usize>) -> Vec<String> {
    indices.sort_by_key(|&i| std::cmp::Reverse(sup.units.lock().unwrap()[i].role));
    let mut stopped = Vec::new();
    for i in indices {
        let pid = {
            let mut units = sup.units.lock().unwrap();
            let unit = &mut units[i];
            unit.wanted = false;
            unit.restart_at = None;
            unit.healthy = false;
            unit.detail = serde_json::Value::Null;
            unit.pid()
        };
        let Some(pid) = pid else { continue };
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        let limit = if sup.units.lock().unwrap()[i].role == Role::Db {
            DB_STOP_TIMEOUT
        } else {
            STOP_TIMEOUT
        };
        let deadline = Instant::now() + limit;
        loop {
            sup.reap();
            let gone = sup.units.lock().unwrap()[i].child.is_none();
            if gone {
                break;
            }
            if Instant::now() >= deadline {
                let mut units = sup.units.lock().unwrap();
                let label = units[i].label();
                if let Some(child) = units[i].child.as_mut() {
                    eprintln!("webstack: {label} did not stop within {limit:?}; killing it");
                    let _ = child.start_kill();
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let units = sup.units.lock().unwrap();
        stopped.push(format!("{} (pid {pid})", units[i].label()));
    }
    stopped
}

async fn stop_target(sup: &Shared, target: &str) -> Reply {
    let indices = match sup.resolve(target) {
        Ok(indices) => indices,
        Err(error) => return Reply::failure(error),
    };
    let stopped = stop_units(sup, indices).await;
    let message = if stopped.is_empty() {
        format!("{target} was already stopped")
    } else {
        format!("stopped {}", stopped.join(", "))
    };
    println!("webstack: {message}");
    Reply {
        message: Some(message),
        ..sup.snapshot()
    }
}

async fn start_target(sup: &Shared, target: &str) -> Reply {
    let mut indices = match sup.resolve(target) {
        Ok(indices) => indices,
        Err(error) => return Reply::failure(error),
    };
    indices.sort_by_key(|&i| sup.units.lock().unwrap()[i].role);
    let mut started = Vec::new();
    for i in indices {
        {
            let mut units = sup.units.lock().unwrap();
            let unit = &mut units[i];
            unit.wanted = true;
            unit.backoff.reset();
            if unit.child.is_some() {
                continue;
            }
            if let Err(error) = sup.spawn(unit) {
                return Reply::failure(format!("{error:#}"));
            }
        }
        if let Err(error) = wait_ready(sup, i).await {
            return Reply::failure(format!("{error:#}"));
        }
        let units = sup.units.lock().unwrap();
        started.push(format!(
            "{} (pid {})",
            units[i].label(),
            units[i].pid().unwrap_or(0)
        ));
    }
    let message = if started.is_empty() {
        format!("{target} was already running")
    } else {
        format!("started {}", started.join(", "))
    };
    println!("webstack: {message}");
    Reply {
        message: Some(message),
        ..sup.snapshot()
    }
}

/// Stops every unit, front to back.
async fn stop_all(sup: &Shared) {
    let all: Vec<usize> = (0..sup.units.lock().unwrap().len()).collect();
    stop_units(sup, all).await;
}
