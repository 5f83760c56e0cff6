//! The listener: accepts connections up to `server.max_connections` (and
//! `server.max_connections_per_ip` from one address), runs one session task per connection,
//! and shuts down gracefully: stop accepting, let sessions finish within
//! `timeouts.shutdown_grace`, then close the rest with `421` — except a session waiting for the
//! upstream's answer to a message it sent, which relays that answer (the upstream may already
//! have the message, so closing would make the client send it twice).
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind port 0 and stop the server
//! whenever they like (the mini-redis shape).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::auth::Auth;
use crate::config::{Config, ListenerConfig, ServerConfig};
use crate::replies;
use crate::session::{self, ListenerContext, SessionContext};
use crate::shutdown;
use crate::tls::ServerTls;
use crate::upstream::maildir::Maildir;
use crate::upstream::{Capabilities, UpstreamTarget};

/// Listen backlog: a small backlog drops connections under load (seen with peers' defaults of
/// 128 in the end-to-end benchmark, `bench/e2e.sh`).
const BACKLOG: u32 = 1024;
/// After the grace period, how long sessions get to write their 421 before they are dropped
/// (a session waiting for the upstream's answer to its message gets that wait on top).
const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// How long a refused client gets to take its `421`.
const REFUSAL_WRITE: Duration = Duration::from_secs(5);

/// Open sessions per client address.
type PerAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Who may connect: a bound on all sessions and one per client address.
struct Admission {
    total: Arc<Semaphore>,
    per_ip: PerAddress,
    max_per_ip: usize,
    exempt: Vec<ipnet::IpNet>,
}

/// A session's place, given back when it is dropped.
struct Admitted {
    _total: OwnedSemaphorePermit,
    ip: Option<(IpAddr, PerAddress)>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Some((ip, per_ip)) = self.ip.take() {
            let mut counts = per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = counts.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(&ip);
                }
            }
        }
    }
}

impl Admission {
    fn new(config: &ServerConfig) -> Self {
        Self {
            total: Arc::new(Semaphore::new(config.max_connections)),
            per_ip: Arc::default(),
            max_per_ip: config.max_connections_per_ip,
            exempt: config.connection_limit_exempt.clone(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Result<Admitted, crate::smtp::Reply> {
        let total = self.total.clone().try_acquire_owned().map_err(|_| replies::too_many_connections())?;
        if self.exempt.iter().any(|net| net.contains(&ip)) {
            return Ok(Admitted { _total: total, ip: None });
        }
        let mut counts = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_default();
        if *n >= self.max_per_ip {
            return Err(replies::too_many_connections_from_you());
        }
        *n += 1;
        Ok(Admitted { _total: total, ip: Some((ip, self.per_ip.clone())) })
    }
}

/// Binds the listening socket with a large backlog. An IPv6 socket takes IPv6 only, so
/// `0.0.0.0:25` and `[::]:25` can be separate listeners.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if addr.is_ipv6() {
        set_ipv6_only(&socket)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn set_ipv6_only(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a pointer to an int of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// A bound listening socket and what it serves.
pub struct BoundListener {
    pub tcp: TcpListener,
    pub config: ListenerConfig,
}

/// Binds every configured listener; an error names the address.
pub fn bind_all(config: &Config) -> anyhow::Result<Vec<BoundListener>> {
    config
        .listeners()
        .into_iter()
        .map(|listener| {
            let tcp = bind(listener.address).with_context(|| format!("cannot listen on {}", listener.address))?;
            Ok(BoundListener { tcp, config: listener })
        })
        .collect()
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
    let upstream = UpstreamTarget::from_config(&config)?;
    let url = config.upstream_url();
    if config.upstream.url.is_none() {
        tracing::warn!(%url, "no upstream configured: delivering to the embedded Maildir");
    }
    let probed = upstream.probe().await;
    match &probed {
        Ok(caps) => tracing::info!(%url, caps = %caps, "upstream ready"),
        Err(err) => tracing::warn!(%url, error = %err, "upstream not reachable yet; sessions will retry"),
    }
    let submission = listeners.iter().any(|l| l.config.mode.submission());
    if submission {
        check_submission(&config, &upstream, probed.as_ref().ok())?;
    }
    let tls = Arc::new(ServerTls::from_config(&config.tls, &config.hostname())?);
    if tls.is_self_signed() {
        tracing::info!(
            "no TLS certificate configured: STARTTLS uses a self-signed certificate generated at start \
             (opportunistic TLS, as sending MTAs expect; configure [tls] certificates for a real one)"
        );
    } else {
        tracing::info!(certificates = ?tls.describe(), "TLS certificates loaded");
    }
    let (chain, _) = crate::wasm::load(&config).await?;
    let chain = Arc::new(chain);
    let quarantine = if chain.may_quarantine() {
        let maildir = Maildir::create(config.sandbox.quarantine.clone(), config.hostname())?;
        tracing::info!(path = %maildir.root().display(), "quarantine Maildir ready");
        Some(Arc::new(maildir))
    } else {
        None
    };
    let auth = Auth::from_config(&config.auth, &config.hostname())?.map(Arc::new);
    let (controller, signal) = shutdown::channel();
    let grace = config.timeouts.shutdown_grace;
    let admission = Admission::new(&config.server);
    // Past the grace period, a session still waiting on the upstream may wait its full timeout.
    let close_bound = CLOSE_BOUND + config.upstream.data_timeout.max(config.upstream.command_timeout);
    let contexts: Vec<_> = listeners
        .iter()
        .map(|l| {
            let chain = match &l.config.plugins {
                Some(names) => Arc::new(chain.subset(names)),
                None => chain.clone(),
            };
            let context = Arc::new(ListenerContext {
                address: l.config.address,
                mode: l.config.mode,
                chain,
                allow_plaintext_auth: l.config.allow_plaintext_auth,
                xforward_from: l.config.xforward_from.clone(),
            });
            (context, l.config.max_connections.map(|n| Arc::new(Semaphore::new(n))))
        })
        .collect();
    upstream.watch(config.upstream.probe_interval);
    let ctx = Arc::new(SessionContext::new(config, upstream, signal, chain, quarantine, auth, Some(tls.clone())));

    // One accept task per listener, all feeding this loop.
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::channel::<(TcpStream, SocketAddr, usize)>(64);
    let mut acceptors = JoinSet::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        tracing::info!(
            listen = %listener.config.address,
            mode = listener.config.mode.name(),
            hostname = %ctx.hostname,
            "accepting connections"
        );
        let accepted_tx = accepted_tx.clone();
        acceptors.spawn(async move {
            loop {
                match listener.tcp.accept().await {
                    Ok((stream, peer)) => {
                        if accepted_tx.send((stream, peer, index)).await.is_err() {
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
        });
    }
    drop(accepted_tx);
    let mut reloads = reload_signal();

    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some((stream, peer, index)) = accepted.recv() => {
                let (listener, limit) = &contexts[index];
                let admitted = admission.admit(peer.ip()).and_then(|admitted| match limit {
                    None => Ok((admitted, None)),
                    Some(limit) => limit
                        .clone()
                        .try_acquire_owned()
                        .map(|permit| (admitted, Some(permit)))
                        .map_err(|_| replies::too_many_connections()),
                });
                match admitted {
                    Ok(admitted) => {
                        let (ctx, listener) = (ctx.clone(), listener.clone());
                        sessions.spawn(async move {
                            session::run(stream, peer, listener, ctx).await;
                            drop(admitted);
                        });
                    }
                    Err(reply) => {
                        tracing::warn!(client = %peer, reply = %reply, "connection refused");
                        sessions.spawn(async move {
                            let mut stream = stream;
                            let _ = tokio::time::timeout(REFUSAL_WRITE, stream.write_all(&reply.to_bytes())).await;
                        });
                    }
                }
            }
            Some(()) = reloads.recv() => match tls.reload() {
                Ok(()) => tracing::info!(certificates = ?tls.describe(), "TLS certificates reloaded"),
                Err(err) => tracing::error!(error = %format!("{err:#}"), "TLS certificates not reloaded; the old ones stay in use"),
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => log_panic(joined),
        }
    }

    acceptors.abort_all();
    controller.start_draining();
    tracing::info!(sessions = sessions.len(), grace = ?grace, "shutting down: draining sessions");
    if tokio::time::timeout(grace, join_all(&mut sessions)).await.is_err() {
        tracing::warn!(sessions = sessions.len(), "grace period over: closing remaining sessions");
        controller.expire();
        if tokio::time::timeout(close_bound, join_all(&mut sessions)).await.is_err() {
            sessions.abort_all();
        }
    }
    ctx.upstream.close_idle().await;
    tracing::info!("stopped");
    Ok(())
}

/// A submission listener needs a real certificate and an upstream that checks credentials.
fn check_submission(config: &Config, upstream: &UpstreamTarget, probed: Option<&Capabilities>) -> anyhow::Result<()> {
    if config.tls.certificates.is_empty() {
        anyhow::bail!("a submission listener needs a TLS certificate: configure [tls] certificates");
    }
    match (upstream, probed) {
        (UpstreamTarget::Maildir(_), _) => {
            anyhow::bail!("a submission listener needs an SMTP upstream that checks credentials (AUTH), not a Maildir")
        }
        (UpstreamTarget::Smtp(_), Some(caps)) if caps.auth_mechanisms().is_empty() => anyhow::bail!(
            "a submission listener relays AUTH to the upstream, but the upstream offers no AUTH PLAIN or LOGIN \
             (with Postfix: smtpd_sasl_auth_enable = yes on the listener wasmtp relays to)"
        ),
        (UpstreamTarget::Smtp(_), None) => {
            tracing::warn!("upstream not reachable: cannot check yet that it offers AUTH for submission");
        }
        _ => {}
    }
    Ok(())
}

/// SIGHUP: reload what can be reloaded in place (the TLS certificates). Never ends the process.
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot install the SIGHUP handler");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading");
            if tx.send(()).await.is_err() {
                return;
            }
        }
    });
    #[cfg(not(unix))]
    drop(tx);
    rx
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
