//! The load balancer role (HAProxy's job): an HTTP reverse proxy over the web servers with
//! health checks, weighted round-robin or leastconn, retries and backup servers; with other lb
//! hosts it shares the site's address (`vip`).

pub mod balance;
mod config;
pub mod control;
mod h1;
pub mod health;
pub mod limits;
pub mod listen;
mod metrics;
mod proxy;
mod server;
pub mod tls;
pub mod vip;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};
use webstack_common::{Admin, HttpOptions, Shutdown};

pub use config::*;
pub use listen::Listener;
pub use proxy::Proxy;
pub use server::Server;
use vip::{Vip, VipState};

/// A configured load balancer, its metrics registered and certificates loaded, ready to serve.
pub struct LoadBalancer {
    config: Config,
    servers: Vec<Arc<Server>>,
    metrics: metrics::Metrics,
    tls: Option<Tls>,
    vip: Option<Arc<Vip>>,
    /// The stand-in's VIP sockets, kept to hand duplicates to the other lbs.
    shared_vip_sockets: Vec<OwnedFd>,
    /// With VRRP, the VIP's listening sockets, for a planned stop's handoff (`Handoff`).
    vrrp_vip_sockets: Vec<OwnedFd>,
    /// keepalived's track file, when the VIP moves by VRRP.
    track: Option<Arc<vip::keepalived::Track>>,
    /// Per-client limits, shared by every worker.
    clients: Arc<limits::ClientTable>,
    /// Picks a server for every worker; the runtime API reweighs it.
    balancer: Arc<balance::Balancer>,
    access_log: Option<webstack_common::access_log::AccessLog>,
}

/// Why the lb could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot load the TLS certificates: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("{0}")]
    AccessLog(#[from] io::Error),
}

/// HTTPS state shared by the workers, the certificate watcher and the ACME client.
struct Tls {
    certificates: Arc<tls::CertStore>,
    acceptor: tokio_rustls::TlsAcceptor,
    acme: Option<Arc<tls::acme::AcmeClient>>,
    challenges: Arc<tls::acme::Challenges>,
}

/// How often idle clients leave the per-client table.
const CLIENT_SWEEP: Duration = Duration::from_secs(10);

/// How often certificate files are checked for changes.
const CERTIFICATE_POLL: Duration = Duration::from_secs(2);

/// What a planned stop does before the lb drains: with VRRP, signal a fault so the other lb
/// takes the address while this one still serves (no connection refused or cut).
pub struct Handoff {
    track: Option<Arc<vip::keepalived::Track>>,
    state: Option<watch::Receiver<VipState>>,
    address: Option<IpAddr>,
    advert_interval: Duration,
    /// The VIP's listening sockets (VRRP).
    listeners: Vec<OwnedFd>,
}

impl Handoff {
    /// For a VIP holder: puts the address on `lo`, stops completing new handshakes on it
    /// (`listen::drop_new_connections`: their SYNs are sent again, to the other lb), signals
    /// the fault, waits (at most 1 s) until keepalived gave the address up and then
    /// `move_grace` for the other lb to announce it. The address and its listening sockets
    /// stay through the drain (the returned value's `hold_while`): an answer to a connection
    /// this lb accepted on the VIP cannot leave the host once the address is gone (the kernel
    /// finds no route from it), so its client would wait for nothing; and a SYN that still
    /// reaches this host is dropped, not refused, while a listener is there.
    pub async fn run(mut self) -> Option<HeldOnLo> {
        let (Some(track), Some(state), Some(address)) =
            (self.track.take(), self.state.as_mut(), self.address)
        else {
            return None;
        };
        if *state.borrow() != VipState::Master {
            track.stop();
            return None;
        }
        tracing::info!("stopping: handing the VIP over before draining");
        // On `lo` first, so the address never leaves this host before the other lb has it.
        let added = vip::keepalived::keep_on_lo(address).await;
        // Before the other lb can announce the address: a handshake completed here must not
        // meet the announcement (see `drop_new_connections`). A socket without the filter is
        // not kept past the drain: it would complete handshakes that nobody accepts.
        self.listeners.retain(|socket| {
            listen::drop_new_connections(socket)
                .inspect_err(|error| tracing::warn!(%error, "cannot stop new connections on the VIP before handing it over: one made as it moves may hang"))
                .is_ok()
        });
        track.stop();
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            state.wait_for(|s| *s != VipState::Master),
        )
        .await;
        tokio::time::sleep(vip::keepalived::move_grace(self.advert_interval)).await;
        Some(HeldOnLo {
            address,
            added,
            listeners: std::mem::take(&mut self.listeners),
        })
    }
}

/// The VIP kept on `lo` through a planned stop's drain (see `Handoff::run`).
pub struct HeldOnLo {
    address: IpAddr,
    added: bool,
    /// Its listening sockets, dropping SYNs, kept open as long as the address: without a
    /// listener the kernel would refuse a connection that still reaches this host.
    listeners: Vec<OwnedFd>,
}

impl HeldOnLo {
    /// Runs `drain` (the lb's drain, to its end) and takes the address off `lo` when it ends
    /// or at `HOLD_LIMIT`, whichever comes first: a hold has an end even if the drain has none.
    pub async fn hold_while<F: Future>(self, drain: F) -> F::Output {
        let mut drain = std::pin::pin!(drain);
        let done = tokio::time::timeout(vip::keepalived::HOLD_LIMIT, drain.as_mut()).await;
        if done.is_err() {
            tracing::warn!(limit = ?vip::keepalived::HOLD_LIMIT, "the drain outlasted the VIP's hold on lo; releasing it");
        }
        vip::keepalived::leave_lo(self.address, self.added, Duration::ZERO).await;
        drop(self.listeners);
        match done {
            Ok(output) => output,
            Err(_) => drain.await,
        }
    }
}

impl LoadBalancer {
    /// Fails when TLS is on and a configured certificate does not load (HAProxy refuses to
    /// start on a bad certificate too: better than serving without one), or when the access
    /// log cannot be opened.
    pub fn new(config: Config, registry: &mut Registry) -> Result<Self, StartError> {
        let access_log = config
            .access_log
            .as_ref()
            .map(|log| log.open())
            .transpose()?;
        let metrics = metrics::Metrics::register(registry);
        let clients = Arc::new(limits::ClientTable::new(
            config.limits.clone(),
            metrics::LimitMetrics::register(registry),
        ));
        let servers: Vec<_> = config
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| Arc::new(Server::new(i, s.clone(), metrics.server(&s.name))))
            .collect();
        let tls = match &config.tls {
            Some(settings) => {
                let certificates = Arc::new(tls::CertStore::load(settings.certificates.clone())?);
                let acceptor = tls::server_config(certificates.clone())?.into();
                let challenges = Arc::new(tls::acme::Challenges::new(
                    settings.acme.as_ref().map(|a| a.dir.join("challenges")),
                ));
                let acme = settings.acme.clone().map(|acme| {
                    Arc::new(tls::acme::AcmeClient::new(
                        acme,
                        certificates.clone(),
                        challenges.clone(),
                    ))
                });
                Some(Tls {
                    certificates,
                    acceptor,
                    acme,
                    challenges,
                })
            }
            None => None,
        };
        let balancer = Arc::new(balance::Balancer::with_queue(
            config.algorithm,
            &servers,
            config.slowstart,
            metrics.queue.clone(),
        ));
        let vip = config.vip.clone().map(|v| Arc::new(Vip::new(v)));
        let track = match config.vip.as_ref().map(|v| &v.mode) {
            Some(VipMode::Vrrp(vrrp)) => Some(Arc::new(vip::keepalived::Track::new(vrrp))),
            _ => None,
        };
        Ok(Self {
            config,
            servers,
            metrics,
            tls,
            vip,
            shared_vip_sockets: Vec::new(),
            vrrp_vip_sockets: Vec::new(),
            track,
            clients,
            balancer,
            access_log,
        })
    }

    /// Binds every listener: this host's own address (`own`) and, with a VIP, the site's
    /// address, on the HTTP port and the HTTPS port when TLS is on.
    pub async fn listen(
        &mut self,
        own: IpAddr,
        port: u16,
        https_port: Option<u16>,
    ) -> io::Result<Vec<Listener>> {
        let ports: Vec<(u16, bool)> = std::iter::once((port, false))
            .chain(https_port.map(|p| (p, true)))
            .collect();
        let mut listeners = Vec::new();
        for &(port, tls) in &ports {
            let what = if tls { "lb https" } else { "lb" };
            listeners.push(Listener {
                socket: listen::bind_for(SocketAddr::new(own, port), false, what)?,
                tls,
                gated: false,
            });
        }
        let Some(vip) = &self.vip else {
            return Ok(listeners);
        };
        let address = vip.address();
        match &vip.config.mode {
            VipMode::StandIn { run_dir, peers } => {
                let (run_dir, peers) = (run_dir.clone(), peers.clone());
                let numbers: Vec<u16> = ports.iter().map(|(p, _)| *p).collect();
                let sockets = tokio::task::spawn_blocking(move || {
                    vip::standin::acquire(address, &numbers, &run_dir, &peers)
                })
                .await
                .map_err(io::Error::other)??;
                for (socket, &(_, tls)) in sockets.into_iter().zip(&ports) {
                    self.shared_vip_sockets
                        .push(OwnedFd::from(socket.try_clone()?));
                    listeners.push(Listener {
                        socket,
                        tls,
                        gated: true,
                    });
                }
            }
            VipMode::Vrrp(vrrp) => {
                // Before listening: not one connection accepted on an address left over.
                vip::keepalived::remove_left_over(vrrp, address).await;
                for &(port, tls) in &ports {
                    // The address arrives when keepalived makes this host master.
                    let socket = listen::bind_for(SocketAddr::new(address, port), true, "the VIP")?;
                    self.vrrp_vip_sockets
                        .push(OwnedFd::from(socket.try_clone()?));
                    listeners.push(Listener {
                        socket,
                        tls,
                        gated: false,
                    });
                }
            }
        }
        Ok(listeners)
    }

    /// The runtime API (`control`): its routes go on the admin port. `token` (the state dir's
    /// `secrets/lb-control.token`) authorizes changes; None turns them off.
    pub fn control(&self, token: Option<webstack_common::secret::Secret>) -> Arc<control::Control> {
        Arc::new(control::Control::new(
            self.servers.clone(),
            self.balancer.clone(),
            token,
        ))
    }

    /// The per-client limits, to put new ones in force on SIGHUP (`ClientTable::reload`).
    pub fn clients(&self) -> Arc<limits::ClientTable> {
        self.clients.clone()
    }

    /// What to run on SIGTERM before draining (see `Handoff`).
    pub fn handoff(&self) -> Handoff {
        let advert_interval = match self.config.vip.as_ref().map(|v| &v.mode) {
            Some(VipMode::Vrrp(vrrp)) => vrrp.advert_interval,
            _ => Duration::ZERO,
        };
        Handoff {
            track: self.track.clone(),
            state: self.vip.as_ref().map(|v| v.state.subscribe()),
            address: self.vip.as_ref().map(|v| v.address()),
            advert_interval,
            // Called once listening: a socket that cannot be duplicated (no descriptor left)
            // only loses the handoff's SYN filter.
            listeners: self
                .vrrp_vip_sockets
                .iter()
                .filter_map(|s| s.try_clone().ok())
                .collect(),
        }
    }

    /// Runs health checks, the certificate watcher, the ACME client and the VIP on the current
    /// runtime, and serves the listeners on worker threads (one single-threaded runtime each,
    /// every worker accepting on every listener, see `workers`) until `shutdown`. Ready once
    /// every server has been checked once.
    pub async fn run(mut self, listeners: Vec<Listener>, admin: Admin, shutdown: Shutdown) {
        // Kept until the workers stopped accepting, to refuse what is left in their queue.
        let vip_sockets = std::mem::take(&mut self.vrrp_vip_sockets);
        let handshake_timeout = self
            .config
            .tls
            .as_ref()
            .map_or(Duration::from_secs(10), |t| t.handshake_timeout);
        let ready = admin.clone();
        let sweep = health::FirstSweep::new(self.servers.len(), move || ready.set_ready(true));
        let mut background = tokio::task::JoinSet::new();
        for server in &self.servers {
            background.spawn(health::run_checker(
                server.clone(),
                self.config.health.clone(),
                sweep.clone(),
            ));
        }
        // The stand-in's lock is let go only once this lb stopped accepting: `release`.
        let (release, release_when) = oneshot::channel::<()>();
        let mut vip_task = None;
        if let Some(vip) = &self.vip {
            background.spawn(vip::export_holder(
                vip.state.subscribe(),
                self.metrics.vip_holder(&vip.config.host),
            ));
            match &vip.config.mode {
                VipMode::StandIn { run_dir, .. } => {
                    vip_task = Some(tokio::spawn(vip::standin::run(
                        run_dir.clone(),
                        vip.config.host.clone(),
                        self.shared_vip_sockets,
                        vip.state.clone(),
                        shutdown.clone(),
                        release_when,
                    )));
                }
                VipMode::Vrrp(vrrp) => {
                    let track = self.track.clone().expect("made with the VRRP settings");
                    background.spawn(vip::keepalived::track_health(
                        track.clone(),
                        self.servers.clone(),
                    ));
                    vip_task = Some(tokio::spawn(vip::keepalived::run(
                        vrrp.clone(),
                        vip.clone(),
                        shutdown.clone(),
                    )));
                }
            }
        }
        background.spawn(self.clients.clone().sweep_every(CLIENT_SWEEP));
        let acme_holder = self.vip.as_ref().map(|v| v.state.subscribe());
        if let Some(tls) = &self.tls {
            background.spawn(tls.certificates.clone().watch(CERTIFICATE_POLL));
            if let Some(acme) = &tls.acme {
                background.spawn(run_acme_while_holder(acme.clone(), acme_holder));
            }
        }
        background.spawn(publish_status(
            control::Control::new(self.servers.clone(), self.balancer.clone(), None),
            self.tls
                .as_ref()
                .map(|t| (t.certificates.clone(), t.acme.clone())),
            self.vip.clone(),
            admin.clone(),
            self.metrics.clone(),
        ));
        // One connection limit for every worker and both ports (HAProxy's frontend maxconn).
        let options = HttpOptions {
            header_read_timeout: self.config.timeouts.client_header,
            connections: webstack_common::ConnectionLimit::new(self.config.maxconn),
            ..HttpOptions::default()
        };
        let balancer = self.balancer.clone();
        let gate = self.vip.as_ref().map(|v| v.state.subscribe());
        // Every worker accepts on every listening socket: they keep their shares even.
        let mut shares =
            webstack_common::serve::AcceptShare::for_workers(self.config.threads.max(1));
        // Each worker drops its sender once it stopped accepting on every listener.
        let (accepting, mut all_stopped) = mpsc::channel::<()>(1);
        let mut threads = Vec::new();
        for n in 0..self.config.threads.max(1) {
            // Each worker has its own proxy: its own keep-alive pool, so a request and its
            // upstream connection stay on one thread. Health and load counters are shared.
            let proxy = Arc::new(Proxy::new(
                self.config.clone(),
                balancer.clone(),
                self.metrics.clone(),
                self.tls
                    .as_ref()
                    .map(|t| (t.certificates.clone(), t.challenges.clone())),
                self.clients.clone(),
                self.access_log.clone(),
            ));
            let mut own = Vec::new();
            for listener in &listeners {
                match listener.socket.try_clone() {
                    Ok(socket) => own.push(workers::WorkerListener {
                        socket,
                        tls: listener.tls,
                        gate: listener.gated.then(|| gate.clone()).flatten(),
                    }),
                    Err(error) => tracing::error!(%error, "cannot share a listener with a worker"),
                }
            }
            let acceptor = self
                .tls
                .as_ref()
                .map(|t| (t.acceptor.clone(), handshake_timeout));
            let options = HttpOptions {
                share: shares.pop(),
                ..options.clone()
            };
            let (shutdown, accepting) = (shutdown.clone(), accepting.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("lb-worker-{n}"))
                .spawn(move || {
                    workers::serve_on_own_runtime(
                        own, acceptor, options, proxy, shutdown, accepting,
                    )
                });
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(error) => tracing::error!(%error, "cannot start a worker thread"),
            }
        }
        drop(accepting);
        drop(listeners);
        shutdown.triggered().await;
        admin.set_ready(false);
        // Every worker stopped accepting: the other lb may take the VIP's queue now.
        while all_stopped.recv().await.is_some() {}
        // A handoff keeps the VIP's sockets open through the drain (dropping SYNs): what waits
        // in their queue now would wait for nothing.
        vip_sockets.iter().for_each(listen::refuse_queued);
        drop(vip_sockets);
        let _ = release.send(());
        background.abort_all();
        // Workers return once their connections drained (or the grace ran out).
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
                .await;
        if let Some(task) = vip_task {
            let _ = task.await;
        }
    }
}

/// The ACME client orders and renews only on the lb that holds the VIP (the CA's validation
/// requests reach it there); the others load the certificate it writes. Without a VIP, always.
async fn run_acme_while_holder(
    acme: Arc<tls::acme::AcmeClient>,
    holder: Option<watch::Receiver<VipState>>,
) {
    let Some(mut holder) = holder else {
        return acme.run().await;
    };
    loop {
        if *holder.borrow() != VipState::Master {
            acme.standby();
        }
        if holder.wait_for(|s| *s == VipState::Master).await.is_err() {
            return;
        }
        tokio::select! {
            () = acme.clone().run() => return,
            _ = holder.wait_for(|s| *s != VipState::Master) => {
                tracing::info!("ACME: this lb no longer holds the VIP; the holder orders now");
            }
        }
    }
}

/// Keeps the admin `/status` document current: each certificate's names and expiry, the ACME
/// client's state and the VIP's (`webstack status` shows them).
async fn publish_status(
    servers: control::Control,
    tls: Option<(Arc<tls::CertStore>, Option<Arc<tls::acme::AcmeClient>>)>,
    vip: Option<Arc<Vip>>,
    admin: Admin,
    metrics: metrics::Metrics,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let mut published_expiries = Vec::new();
    loop {
        tick.tick().await;
        let mut summary = Vec::new();
        let mut status = serde_json::json!({});
        status["servers"] = servers.servers_json();
        status["queue"] = servers.queue_len().into();
        // Servers an operator took out, or whose weight differs from the topology's.
        let changed: Vec<String> = status["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let (name, state) = (s["name"].as_str()?, s["state"].as_str()?);
                let weight = if s["weight"] != s["configured_weight"] {
                    format!(" weight {}", s["weight"])
                } else {
                    String::new()
                };
                (state != "ready" || !weight.is_empty()).then(|| format!("{name} {state}{weight}"))
            })
            .collect();
        if !changed.is_empty() {
            summary.push(format!("servers: {}", changed.join(", ")));
        }
        if let Some(vip) = &vip {
            summary.push(vip.summary());
            status["vip"] = vip.status();
        }
        if let Some((certificates, acme)) = &tls {
            let list = certificates.certificates();
            let names = list
                .iter()
                .map(|c| {
                    format!(
                        "{} until {} ({})",
                        c.names.first().map_or("-", String::as_str),
                        c.expires.get(..10).unwrap_or(&c.expires),
                        c.origin.as_str()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            summary.push(format!("tls: {names}"));
            let expiries: Vec<(String, String, i64)> = list
                .iter()
                .map(|c| {
                    let name = c.names.first().cloned().unwrap_or_default();
                    (name, c.origin.as_str().to_string(), c.not_after)
                })
                .collect();
            // Replaced only on a change: a scrape between clear and set would miss them.
            if expiries != published_expiries {
                metrics.set_certificates(&expiries);
                published_expiries = expiries;
            }
            status["certificates"] = list
                .iter()
                .map(|c| {
                    let mut value = serde_json::to_value(c).unwrap_or_default();
                    value["days_left"] = c.days_left().into();
                    value
                })
                .collect();
            status["acme"] =
                serde_json::to_value(acme.as_ref().map(|a| a.status())).unwrap_or_default();
        }
        status["summary"] = summary.join("; ").into();
        admin.set_status(status);
    }
}

mod workers {
    //! One worker: a current-thread tokio runtime accepting on its duplicates of every listener.
    //! No work stealing and no cross-thread wake-ups on the request path: a connection stays on
    //! the worker that accepted it.

    use std::future::Future;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{mpsc, watch};
    use webstack_common::serve::accept_loop;
    use webstack_common::shutdown::DRAIN_GRACE;
    use webstack_common::{HttpOptions, Shutdown};

    use crate::Proxy;
    use crate::vip::VipState;

    /// This worker's duplicate of one listener.
    pub struct WorkerListener {
        pub socket: std::net::TcpListener,
        pub tls: bool,
        /// Accept only while this lb holds the VIP.
        pub gate: Option<watch::Receiver<VipState>>,
    }

    pub fn serve_on_own_runtime(
        listeners: Vec<WorkerListener>,
        acceptor: Option<(tokio_rustls::TlsAcceptor, Duration)>,
        options: HttpOptions,
        proxy: Arc<Proxy>,
        shutdown: Shutdown,
        accepting: mpsc::Sender<()>,
    ) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => return tracing::error!(%error, "cannot start a worker runtime"),
        };
        runtime.block_on(async move {
            let mut loops = tokio::task::JoinSet::new();
            for listener in listeners {
                let (proxy, options) = (proxy.clone(), options.clone());
                let (shutdown, stop) = (shutdown.clone(), shutdown.clone());
                match (listener.tls, acceptor.clone()) {
                    (false, _) => {
                        let serve = move |socket: tokio::net::TcpListener| {
                            let (proxy, options, shutdown) =
                                (proxy.clone(), options.clone(), shutdown.clone());
                            async move {
                                let limit = options.connections.clone();
                                let share = options.share.clone();
                                accept_loop(
                                    socket,
                                    &limit,
                                    share,
                                    shutdown,
                                    |stream, peer, shutdown| {
                                        let (proxy, options) = (proxy.clone(), options.clone());
                                        async move {
                                            let Some((stream, client, _counted)) =
                                                proxy.admit(stream, peer, &options).await
                                            else {
                                                return;
                                            };
                                            proxy
                                                .serve_h1(stream, client, false, options, shutdown)
                                                .await
                                        }
                                    },
                                )
                                .await
                            }
                        };
                        loops.spawn(accept_while_allowed(listener, stop, serve));
                    }
                    (true, Some((acceptor, handshake_timeout))) => {
                        let serve = move |socket: tokio::net::TcpListener| {
                            let (proxy, options, shutdown, acceptor) = (
                                proxy.clone(),
                                options.clone(),
                                shutdown.clone(),
                                acceptor.clone(),
                            );
                            async move {
                                // HTTP/2 (ALPN h2): each stream through `Proxy::handle`.
                                let h2_service = {
                                    let proxy = proxy.clone();
                                    move |peer| {
                                        let proxy = proxy.clone();
                                        move |head, body| {
                                            let proxy = proxy.clone();
                                            async move { proxy.handle(peer, head, body).await }
                                        }
                                    }
                                };
                                let https_h1 = {
                                    let (proxy, options) = (proxy.clone(), options.clone());
                                    move |stream, peer, shutdown| {
                                        proxy.clone().serve_h1(
                                            stream,
                                            peer,
                                            true,
                                            options.clone(),
                                            shutdown,
                                        )
                                    }
                                };
                                crate::tls::serve_tls(
                                    socket,
                                    proxy.clients.clone(),
                                    acceptor,
                                    handshake_timeout,
                                    &options,
                                    h2_service,
                                    https_h1,
                                    shutdown,
                                )
                                .await
                            }
                        };
                        loops.spawn(accept_while_allowed(listener, stop, serve));
                    }
                    (true, None) => tracing::error!("an HTTPS listener without TLS settings"),
                }
            }
            while loops.join_next().await.is_some() {}
            drop(accepting);
            // Connection tasks live on this runtime: keep it until they are done.
            shutdown.drain(DRAIN_GRACE).await;
        });
    }

    /// Runs `serve` on the listener until shutdown; a gated listener only while this lb holds
    /// the VIP (`serve` is stopped when it no longer does, and started again when it does).
    async fn accept_while_allowed<S, F>(listener: WorkerListener, shutdown: Shutdown, serve: S)
    where
        S: Fn(tokio::net::TcpListener) -> F,
        F: Future<Output = ()>,
    {
        let register = |socket: &std::net::TcpListener| {
            socket
                .try_clone()
                .and_then(tokio::net::TcpListener::from_std)
                .inspect_err(|error| tracing::error!(%error, "cannot use a listener"))
                .ok()
        };
        let Some(mut gate) = listener.gate else {
            if let Some(socket) = register(&listener.socket) {
                serve(socket).await;
            }
            return;
        };
        loop {
            tokio::select! {
                biased;
                () = shutdown.triggered() => return,
                held = gate.wait_for(|s| *s == VipState::Master) => if held.is_err() { return },
            }
            let Some(socket) = register(&listener.socket) else {
                return;
            };
            tokio::select! {
                () = serve(socket) => return,
                _ = gate.wait_for(|s| *s != VipState::Master) => {}
            }
        }
    }
}
