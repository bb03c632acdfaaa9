//! One role in this process: bind its service and admin listeners on the host's address, run
//! it, and drain on SIGTERM/SIGINT (or when the supervisor's pipe closes).

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use prometheus_client::registry::Registry;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use webstack_common::shutdown::{DRAIN_GRACE, termination_signal};
use webstack_common::{Admin, Shutdown, serve_admin, telemetry};
use webstack_config::{Config, Role};

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({what})"))
}

pub async fn run(
    config: Config,
    host_name: &str,
    role: Role,
    state_dir: &Path,
    supervised: bool,
) -> anyhow::Result<ExitCode> {
    telemetry::init();
    // SIGUSR1 means "reopen the access log" (logrotate's postrotate, nginx's convention): the
    // handler is in place before anything else, so a rotation during a slow start (TLS, a
    // database's first bootstrap) cannot end the process with the signal's default action.
    let usr1 = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())
        .context("cannot handle SIGUSR1")?;
    let open_files = raise_open_files();
    let host = config
        .host(host_name)
        .expect("checked by the caller")
        .clone();
    if !host.has(role) {
        anyhow::bail!("host {host_name} does not run role {role}");
    }
    let label = format!("{host_name}/{role}");
    let listener = match role {
        // MariaDB and etcd bind their ports themselves; the lb binds one socket per worker below.
        Role::Db | Role::Lb | Role::Etcd => None,
        _ => Some(bind(config.service_addr(&host, role), &label).await?),
    };
    let admin_listener = bind(config.admin_addr(&host, role), &format!("{label} admin")).await?;

    let shutdown = Shutdown::new();
    let mut registry = Registry::default();
    // The lb's step before draining (hand the VIP over), and its limits to reload on SIGHUP.
    let mut handoff = None;
    let mut reloadable_limits = None;
    // The lb's runtime API, served on its admin port.
    let mut extra_routes = None;
    // Build the role first (it registers its metrics), then the admin listener that shows them.
    let start: Box<dyn FnOnce(Admin) -> tokio::task::JoinHandle<()>> = match role {
        Role::Etcd => {
            let member = config.etcd_member(&host, state_dir);
            let metrics = webstack_coord::member::MemberMetrics::register(&mut registry);
            let shutdown = shutdown.clone();
            Box::new(move |admin| {
                tokio::spawn(async move {
                    if let Err(error) =
                        webstack_coord::member::run(member, admin, metrics, shutdown.clone()).await
                    {
                        tracing::error!(%error, "the etcd member failed");
                        eprintln!("webstack: etcd: {error}");
                        std::process::exit(1);
                    }
                })
            })
        }
        Role::Db => {
            let node = config
                .db_node(&host, state_dir)
                .context("this host has no db settings")?;
            let metrics = webstack_db::failover::metrics::Metrics::register(&mut registry);
            let stats = webstack_db::metrics::ServerStats::register(
                &mut registry,
                config.max_replica_lag(),
            );
            let shutdown = shutdown.clone();
            Box::new(move |admin| {
                tokio::spawn(async move {
                    if let Err(error) =
                        webstack_db::node::run(node, metrics, stats, admin, shutdown.clone()).await
                    {
                        tracing::error!(%error, "the database node failed");
                        eprintln!("webstack: db: {error}");
                        std::process::exit(1);
                    }
                })
            })
        }
        Role::Lb => {
            let mut lb_config = config.lb(&host, state_dir);
            // Room for pools, certificates and logs.
            lb_config.maxconn = within_open_files("lb", lb_config.maxconn, open_files, 256);
            if config.uses_local_ca() {
                webstack_lb::tls::LocalCa::new(state_dir)
                    .ensure(&config.site_names())
                    .context("cannot create the local certificate authority")?;
            }
            let mut lb = webstack_lb::LoadBalancer::new(lb_config, &mut registry)
                .context("cannot start the load balancer")?;
            let listeners = lb
                .listen(
                    host.address,
                    config.ports(role).service,
                    config.https_port(),
                )
                .await?;
            handoff = Some(lb.handoff());
            reloadable_limits = Some(lb.clients());
            let token_path = webstack_common::secret::control_token_path(state_dir);
            let token = webstack_common::secret::read_file(&token_path)
                .inspect_err(|error| {
                    tracing::warn!(path = %token_path.display(), %error, "no control token: `webstack lb` changes are refused");
                })
                .ok();
            extra_routes = Some(lb.control(token).router());
            let shutdown = shutdown.clone();
            Box::new(move |admin| tokio::spawn(lb.run(listeners, admin, shutdown)))
        }
        Role::Web => {
            let listener = listener.expect("bound above");
            let mut web_config = config.web(&host, state_dir);
            // Room for the open-file cache's descriptors and the logs.
            let reserved = 256 + webstack_web::OPEN_FILES_MAX as u64;
            web_config.maxconn = within_open_files("web", web_config.maxconn, open_files, reserved);
            let web = webstack_web::WebServer::new(web_config, &mut registry)
                .context("cannot start the web server")?;
            let shutdown = shutdown.clone();
            Box::new(move |admin| tokio::spawn(web.run(listener, admin, shutdown)))
        }
        Role::Monitor => {
            let listener = listener.expect("bound above");
            let monitor = config.monitor(&host, state_dir);
            let metrics = webstack_monitor::Metrics::register(&mut registry);
            let shutdown = shutdown.clone();
            Box::new(move |admin| {
                tokio::spawn(async move {
                    if let Err(error) =
                        webstack_monitor::run(monitor, listener, admin, metrics, shutdown).await
                    {
                        tracing::error!(%error, "the monitor failed");
                        eprintln!("webstack: monitor: {error}");
                        std::process::exit(1);
                    }
                })
            })
        }
        Role::App => {
            let listener = listener.expect("bound above");
            let app_config = config
                .app(&host, state_dir)
                .context("cannot read the database password")?;
            // After the TCP port: bound, it says no other app of this host runs, so a socket
            // file left at the path is stale.
            let unix = match &app_config.unix_socket {
                Some(path) => Some(webstack_app::UnixSocket::bind(path).with_context(|| {
                    format!("cannot listen on the app's Unix socket {}", path.display())
                })?),
                None => None,
            };
            let state = webstack_app::AppState::load(app_config, &mut registry)
                .context("cannot start the application")?;
            let shutdown = shutdown.clone();
            Box::new(move |admin| {
                tokio::spawn(webstack_app::run(state, listener, unix, admin, shutdown))
            })
        }
    };
    let mut admin = Admin::new(registry);
    if let Some(routes) = extra_routes {
        admin = admin.with_routes(routes);
    }
    let admin_shutdown = Shutdown::new();
    let admin_task = tokio::spawn(serve_admin(
        admin_listener,
        admin.clone(),
        admin_shutdown.clone(),
    ));
    // SIGHUP means "reload" (the lb re-reads its certificates, and its limits from the
    // topology file), never "exit": without a handler the default action would kill the process.
    let reload = reloadable_limits.map(|table| {
        (
            table,
            config.path.clone(),
            host_name.to_string(),
            state_dir.to_path_buf(),
        )
    });
    let hangups = tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received");
                if let Some((table, path, host, state_dir)) = &reload {
                    reload_limits(table, path, host, state_dir);
                }
            }
        }
    });
    let reopens = tokio::spawn(async move {
        let mut usr1 = usr1;
        while usr1.recv().await.is_some() {
            webstack_common::access_log::reopen_all();
        }
    });
    let serving = start(admin);
    tracing::info!(
        role = %role,
        host = host_name,
        // The runtime main.rs built: sized by `web.threads` / `app.threads` for those roles.
        threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "started"
    );

    let reason = tokio::select! {
        signal = termination_signal() => signal,
        _ = supervisor_gone(supervised) => "supervisor gone",
    };
    let held_on_lo = match handoff {
        Some(handoff) => handoff.run().await,
        None => None,
    };
    tracing::info!(reason, "draining");
    let drain = async {
        let drained = shutdown.drain(DRAIN_GRACE).await;
        if !drained {
            tracing::warn!(grace = ?DRAIN_GRACE, "drain grace expired; closing remaining connections");
        }
        let _ = serving.await;
    };
    match held_on_lo {
        // The VIP leaves `lo` only after the drain: its answers and resets go out from it.
        Some(held) => held.hold_while(drain).await,
        None => drain.await,
    }
    hangups.abort();
    reopens.abort();
    webstack_common::access_log::flush_all();
    admin_shutdown.trigger();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `maxconn` bounded by the open-file limit: each client connection may hold a connection to
/// the next tier too, and `reserved` descriptors are kept for everything else (with a warning
/// when the setting is higher).
fn within_open_files(role: &str, maxconn: usize, open_files: u64, reserved: u64) -> usize {
    let fits = (open_files.saturating_sub(reserved) / 2) as usize;
    if maxconn > fits {
        tracing::warn!(
            maxconn,
            open_files,
            "{role}.maxconn is more than the open-file limit allows; serving {fits} at once"
        );
    }
    maxconn.min(fits).max(1)
}

/// Reads the topology file again and puts this lb's `[lb.limits]` in force; a file that does
/// not load leaves the limits as they were (and says why).
fn reload_limits(
    table: &webstack_lb::limits::ClientTable,
    path: &Path,
    host_name: &str,
    state_dir: &Path,
) {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(error) => {
            tracing::error!(%error, "SIGHUP: the topology file does not load; limits unchanged");
            eprintln!("webstack: SIGHUP: limits unchanged: {error}");
            return;
        }
    };
    match config.host(host_name) {
        Some(host) => table.reload(config.lb(host, state_dir).limits),
        None => tracing::error!(
            host = host_name,
            "SIGHUP: this host is no longer in the topology file; limits unchanged"
        ),
    }
}

/// Raises this process's soft limit on open files to its hard limit (nginx's
/// `worker_rlimit_nofile`, HAProxy does the same): a busy lb needs two descriptors per
/// connection. Returns the limit in force.
fn raise_open_files() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Resolves when standard input reaches end of file: the supervisor holds the other end of the
/// pipe, so this fires even if it was killed with SIGKILL. Never resolves when not supervised.
async fn supervisor_gone(supervised: bool) {
    if !supervised {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    loop {
        match stdin.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}
