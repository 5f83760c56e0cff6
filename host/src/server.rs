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

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::auth::Auth;
use crate::config::{Config, ServerConfig};
use crate::replies;
use crate::session::{self, SessionContext};
use crate::shutdown;
use crate::upstream::UpstreamTarget;
use crate::upstream::maildir::Maildir;

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

/// Binds the listening socket with a large backlog.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Runs the proxy on `listener` until `shutdown` resolves, then drains.
pub async fn run(listener: TcpListener, config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let upstream = UpstreamTarget::from_config(&config)?;
    let url = config.upstream_url();
    if config.upstream.url.is_none() {
        tracing::warn!(%url, "no upstream configured: delivering to the embedded Maildir");
    }
    match upstream.probe().await {
        Ok(caps) => tracing::info!(%url, ?caps, "upstream ready"),
        Err(err) => tracing::warn!(%url, error = %err, "upstream not reachable yet; sessions will retry"),
    }
    let (chain, _) = crate::wasm::load(&config).await?;
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
    let ctx = Arc::new(SessionContext::new(config, upstream, signal, Arc::new(chain), quarantine, auth));
    tracing::info!(listen = %listener.local_addr()?, hostname = %ctx.hostname, "accepting connections");

    let mut sessions = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match admission.admit(peer.ip()) {
                    Ok(admitted) => {
                        let ctx = ctx.clone();
                        sessions.spawn(async move {
                            session::run(stream, peer, ctx).await;
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
                },
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(joined) = sessions.join_next(), if !sessions.is_empty() => log_panic(joined),
        }
    }

    drop(listener);
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
