//! The server: binds nothing itself (see [`listeners`]) but runs everything on the bound
//! sockets — a configuration [`generation`] for new sessions, connection [`admission`], one
//! session task per connection, reloads, the [`admin`] listener, dropping [`privileges`], and
//! graceful shutdown: stop accepting, let sessions finish within `timeouts.shutdown_grace`,
//! then close the rest with `421` — except a session waiting for the upstream's answer to a
//! message it sent, which relays that answer (the upstream may already have the message, so
//! closing would make the client send it twice).
//!
//! A reload (SIGHUP, or `POST /reload` on the admin listener) builds the next generation off
//! the accept path; new sessions get it once it is complete, sessions in flight finish on the
//! one they started with, and a failed reload changes nothing. SIGHUP never ends the process.
//!
//! [`Server::run`] takes bound listeners and a shutdown future, so tests bind port 0 and stop
//! the server whenever they like (the mini-redis shape).

pub mod admin;
mod admission;
pub mod generation;
mod listeners;
pub mod privileges;
pub mod proxy_protocol;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use self::admission::Admission;
use self::generation::{Fixed, Generation};
pub use self::listeners::{BoundListener, bind, bind_admin, bind_all};
use crate::config::{Config, ListenerConfig};
use crate::filter::kv::Kv;
use crate::metrics::Metrics;
use crate::session;
use crate::shutdown;

/// After the grace period, how long sessions get to write their 421 before they are dropped
/// (a session waiting for the upstream's answer to its message gets that wait on top).
const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// How long a refused client gets to take its `421`.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// Reads the configuration again for a reload: the file, with the command line's overrides.
pub type ConfigLoader = Arc<dyn Fn() -> anyhow::Result<Config> + Send + Sync>;

/// A request to reload, with where to say how it went.
pub struct ReloadRequest {
    pub done: Option<oneshot::Sender<Result<u64, String>>>,
}

/// The proxy on its bound sockets.
pub struct Server {
    listeners: Vec<BoundListener>,
    admin: Option<TcpListener>,
    config: Config,
    loader: Option<ConfigLoader>,
}

/// Runs the proxy with one `smtp` listener until `shutdown` resolves, then drains.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    run_listeners(vec![BoundListener { tcp: listener, config: ListenerConfig::smtp(address) }], config, shutdown).await
}

/// Runs the proxy on `listeners` until `shutdown` resolves, then drains.
pub async fn run_listeners(
    listeners: Vec<BoundListener>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    Server::new(listeners, config).run(shutdown).await
}

impl Server {
    pub fn new(listeners: Vec<BoundListener>, config: Config) -> Self {
        Self { listeners, admin: None, config, loader: None }
    }

    /// Serves the admin endpoints on `listener`.
    pub fn with_admin(mut self, listener: TcpListener) -> Self {
        self.admin = Some(listener);
        self
    }

    /// Where reloads read the configuration; without it a reload request is refused.
    pub fn reloading_from(mut self, loader: ConfigLoader) -> Self {
        self.loader = Some(loader);
        self
    }

    /// Runs until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server { listeners, admin, config, loader } = self;
        // First, so a SIGHUP during the start is a reload, not the end of the process.
        let (reload_tx, mut reloads) = mpsc::channel::<ReloadRequest>(8);
        let hup = reload_on_sighup(reload_tx.clone());
        let (controller, signal) = shutdown::channel();
        let metrics = Arc::new(Metrics::new());
        let fixed = Arc::new(Fixed {
            metrics: metrics.clone(),
            kv: Arc::new(Kv::from_config(&config.kv)?),
            shutdown: signal.clone(),
            ids: Arc::new(session::SessionIds::new(&config.node_id())),
            bound: listeners.iter().map(|l| l.config.clone()).collect(),
        });
        let identity = privileges::configured(&config)?;
        let first = Arc::new(Generation::build(config, 1, &fixed, None).await?);
        metrics.set_generation(1);
        let pid_file = PidFile::write(first.config().server.pid_file.clone())?;
        if let Some(identity) = &identity {
            privileges::drop_to(identity, first.config())?;
        }
        let admission = Arc::new(Admission::new(&first.config().server, &fixed.bound));
        let grace = first.config().timeouts.shutdown_grace;
        let (current, current_rx) = watch::channel(first);

        let admin = admin.map(|listener| {
            let state = admin::AdminState {
                metrics: metrics.clone(),
                current: current_rx,
                reloads: reload_tx.clone(),
                shutdown: signal.clone(),
            };
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(listen = %addr, "admin listener: /metrics /healthz /readyz, POST /reload");
            }
            tokio::spawn(admin::serve(listener, Arc::new(state)))
        });
        drop(reload_tx);

        // One accept task per listener, all feeding this loop.
        let (accepted_tx, mut accepted) = mpsc::channel::<(TcpStream, SocketAddr, usize)>(64);
        let mut acceptors = JoinSet::new();
        for (index, listener) in listeners.into_iter().enumerate() {
            tracing::info!(
                listen = %listener.config.address,
                mode = listener.config.mode.name(),
                hostname = %current.borrow().session.hostname,
                "accepting connections"
            );
            acceptors.spawn(accept_loop(listener.tcp, index, accepted_tx.clone()));
        }
        drop(accepted_tx);
        notify_service_manager(&[sd_notify::NotifyState::Ready]);

        let mut reloading = Reloading::default();
        let mut sessions = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some((stream, peer, index)) = accepted.recv() => {
                    let generation = current.borrow().clone();
                    let connection = Connection {
                        listener: generation.listeners[index].clone(),
                        ctx: generation.session.clone(),
                        index,
                        admission: admission.clone(),
                        metrics: metrics.clone(),
                    };
                    sessions.spawn(connection.serve(stream, peer));
                }
                Some(request) = reloads.recv() => {
                    reloading.waiting.extend(request.done);
                    match &loader {
                        None => reloading.answer(Err("this proxy was started without a configuration to reload".into())),
                        Some(loader) if reloading.task.is_none() => {
                            reloading.start(loader.clone(), fixed.clone(), current.borrow().clone());
                        }
                        Some(_) => reloading.again = true,
                    }
                }
                built = reloading.finished(), if reloading.task.is_some() => {
                    let number = current.borrow().number();
                    match built {
                        Ok((generation, elapsed)) => {
                            let number = generation.number();
                            let plugins = generation.session.chain.plugins().count();
                            current.send_replace(Arc::new(generation));
                            // Only now: a client that connects after this line gets the new one.
                            tracing::info!(
                                generation = number,
                                plugins,
                                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                                "reloaded: new sessions get the new configuration, sessions in flight finish on theirs"
                            );
                            metrics.reload(true, number);
                            reloading.answer(Ok(number));
                        }
                        Err(why) => {
                            metrics.reload(false, number);
                            reloading.answer(Err(why));
                        }
                    }
                    notify_service_manager(&[sd_notify::NotifyState::Ready]);
                    if std::mem::take(&mut reloading.again) && let Some(loader) = &loader {
                        reloading.start(loader.clone(), fixed.clone(), current.borrow().clone());
                    }
                }
                Some(joined) = sessions.join_next(), if !sessions.is_empty() => log_panic(joined),
            }
        }

        notify_service_manager(&[sd_notify::NotifyState::Stopping]);
        hup.abort();
        if let Some(admin) = admin {
            admin.abort();
        }
        acceptors.abort_all();
        if let Some(task) = reloading.task.take() {
            task.abort();
        }
        controller.start_draining();
        let generation = current.borrow().clone();
        let config = generation.config();
        // Past the grace period, a session still waiting on the upstream may wait its full timeout.
        let close_bound = CLOSE_BOUND + config.upstream.data_timeout.max(config.upstream.command_timeout);
        tracing::info!(
            sessions = sessions.len(),
            grace = %humantime::format_duration(grace),
            "shutting down: draining sessions"
        );
        if tokio::time::timeout(grace, join_all(&mut sessions)).await.is_err() {
            tracing::warn!(sessions = sessions.len(), "grace period over: closing remaining sessions");
            controller.expire();
            if tokio::time::timeout(close_bound, join_all(&mut sessions)).await.is_err() {
                sessions.abort_all();
            }
        }
        generation.session.upstream.close_idle().await;
        drop(pid_file);
        tracing::info!("stopped");
        Ok(())
    }
}

/// An accepted connection, before it is a session.
struct Connection {
    listener: Arc<session::ListenerContext>,
    ctx: Arc<session::SessionContext>,
    index: usize,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
}

impl Connection {
    /// Reads the PROXY header on a PROXY listener, admits the client (the real one, behind a
    /// balancer) or refuses it, and runs its session.
    async fn serve(self, mut stream: TcpStream, peer: SocketAddr) {
        let proxied = match &self.listener.proxy_trusted {
            None => None,
            Some(trusted) => match proxy_protocol::read_header(&mut stream, peer, trusted).await {
                Ok(proxied) => Some(proxied),
                Err(error) => {
                    self.metrics.connection_refused("proxy_protocol");
                    tracing::warn!(peer = %peer, listen = %self.listener.address, "{error}: connection closed without a greeting");
                    return;
                }
            },
        };
        let client = proxied.map_or(peer, |p| p.client);
        match self.admission.admit(client.ip(), self.index) {
            Ok(admitted) => {
                let open = self.metrics.connection_opened(self.listener.mode.name());
                let destination = proxied.and_then(|p| p.destination);
                session::run(stream, client, destination, self.listener, self.ctx).await;
                drop((admitted, open));
            }
            Err(refusal) => {
                self.metrics.connection_refused(refusal.limit);
                tracing::warn!(client = %client, limit = refusal.limit, reply = %refusal.reply, "connection refused");
                let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(&refusal.reply.to_bytes())).await;
            }
        }
    }
}

/// Accepts connections on one listener and hands them to the server loop.
async fn accept_loop(listener: TcpListener, index: usize, accepted: mpsc::Sender<(TcpStream, SocketAddr, usize)>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if accepted.send((stream, peer, index)).await.is_err() {
                    return;
                }
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The reload in progress, if any, and who waits for its outcome.
#[derive(Default)]
struct Reloading {
    task: Option<JoinHandle<Result<(Generation, Duration), String>>>,
    waiting: Vec<oneshot::Sender<Result<u64, String>>>,
    /// Another request came while this one was being built: reload again after it.
    again: bool,
}

impl Reloading {
    fn start(&mut self, loader: ConfigLoader, fixed: Arc<Fixed>, running: Arc<Generation>) {
        notify_service_manager(&[
            sd_notify::NotifyState::Reloading,
            sd_notify::NotifyState::monotonic_usec_now().unwrap_or(sd_notify::NotifyState::Status("reloading")),
        ]);
        self.task = Some(tokio::spawn(reload(loader, fixed, running)));
    }

    async fn finished(&mut self) -> Result<(Generation, Duration), String> {
        let Some(task) = &mut self.task else { return std::future::pending().await };
        let result = task.await.unwrap_or_else(|err| Err(format!("the reload task failed: {err}")));
        self.task = None;
        result
    }

    fn answer(&mut self, result: Result<u64, String>) {
        for waiting in self.waiting.drain(..) {
            let _ = waiting.send(result.clone());
        }
    }
}

/// Reads the configuration and builds the generation after `running`: it and how long that
/// took, or why it failed (logged here).
async fn reload(
    loader: ConfigLoader,
    fixed: Arc<Fixed>,
    running: Arc<Generation>,
) -> Result<(Generation, Duration), String> {
    let started = Instant::now();
    let number = running.number() + 1;
    let built = async {
        let config = tokio::task::spawn_blocking(move || loader()).await??;
        let restart = generation::needs_restart(running.config(), &fixed.bound, &config);
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join("; "),
                "reload: these settings keep their running values until a restart"
            );
        }
        Generation::build(config, number, &fixed, Some(&running)).await
    };
    match built.await {
        Ok(generation) => Ok((generation, started.elapsed())),
        Err(err) => {
            let why = format!("{err:#}");
            tracing::error!(
                error = %why,
                running = running.number(),
                "reload failed: nothing changed, still serving the running configuration"
            );
            Err(why)
        }
    }
}

/// SIGHUP: a reload request. Never ends the process: the handler is installed before this
/// returns (a spawned task might run only after the proxy said it is ready, and a SIGHUP before
/// that would take the signal's default action and kill the process).
fn reload_on_sighup(requests: mpsc::Sender<ReloadRequest>) -> JoinHandle<()> {
    #[cfg(unix)]
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let Ok(mut hup) = hup else {
                tracing::warn!("cannot install the SIGHUP handler");
                return;
            };
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading");
                if requests.send(ReloadRequest { done: None }).await.is_err() {
                    return;
                }
            }
        }
        #[cfg(not(unix))]
        drop(requests);
    })
}

/// Tells systemd (`Type=notify-reload`) where the service stands; nothing without
/// `$NOTIFY_SOCKET`.
fn notify_service_manager(states: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager");
    }
}

/// The pid file, removed when dropped (at exit; written before privileges are dropped, so an
/// unprivileged proxy may not be able to remove it from a root-owned directory).
struct PidFile(Option<std::path::PathBuf>);

impl PidFile {
    fn write(path: Option<std::path::PathBuf>) -> anyhow::Result<Self> {
        if let Some(path) = &path {
            std::fs::write(path, format!("{}\n", std::process::id()))
                .map_err(|e| anyhow::anyhow!("cannot write server.pid_file {}: {e}", path.display()))?;
        }
        Ok(Self(path))
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn join_all(sessions: &mut JoinSet<()>) {
    while let Some(joined) = sessions.join_next().await {
        log_panic(joined);
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined
        && err.is_panic()
    {
        tracing::error!(error = %err, "session task panicked");
    }
}
