//! Configuration generations: everything built from one reading of the configuration — the
//! plugin chain (on an engine of its own), the upstream target, the TLS certificates, sender
//! authentication and each listener's settings.
//!
//! New sessions get the newest generation; a session holds the one it started with to its end
//! (its `Arc`s), so a reload never changes the rules in the middle of a transaction, and an old
//! generation is freed — engine, plugins, pool — when its last session ends. Building a
//! generation either succeeds completely or changes nothing: the running one stays.
//!
//! What lives across generations is [`Fixed`] at start: the listening sockets, the connection
//! limits, the metrics, the plugins' key-value store and the session ids.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::{Config, ListenerConfig};
use crate::filter::kv::Kv;
use crate::metrics::Metrics;
use crate::session::record::Recorder;
use crate::session::{ListenerContext, Released, SessionContext, SessionIds};
use crate::shutdown::ShutdownSignal;
use crate::tls::ServerTls;
use crate::upstream::maildir::Maildir;
use crate::upstream::{Capabilities, UpstreamTarget};

/// What every generation shares, fixed at start.
pub struct Fixed {
    pub metrics: Arc<Metrics>,
    pub kv: Arc<Kv>,
    pub shutdown: ShutdownSignal,
    pub ids: Arc<SessionIds>,
    /// The listeners as bound at start, in order.
    pub bound: Vec<ListenerConfig>,
}

/// One generation: the session context and, per bound listener, its context.
pub struct Generation {
    // The listeners first: dropped before the session context, whose last field logs that the
    // generation is gone.
    pub listeners: Vec<Arc<ListenerContext>>,
    pub session: Arc<SessionContext>,
}

impl Generation {
    pub fn number(&self) -> u64 {
        self.session.generation
    }

    pub fn config(&self) -> &Config {
        &self.session.config
    }

    /// Builds generation `number` from `config`, reusing what `previous` built from the same
    /// settings (the upstream target and its pooled connections).
    pub async fn build(
        config: Config,
        number: u64,
        fixed: &Fixed,
        previous: Option<&Generation>,
    ) -> anyhow::Result<Generation> {
        let hostname = config.hostname();
        let reusable = previous
            .filter(|p| p.config().upstream == config.upstream && p.session.hostname == hostname)
            .map(|p| p.session.upstream.clone());
        let upstream = match reusable {
            Some(upstream) => upstream,
            None => {
                let upstream = UpstreamTarget::from_config(&config, fixed.metrics.clone())?;
                let url = config.upstream_url();
                if config.upstream.url.is_none() {
                    tracing::warn!(%url, "no upstream configured: delivering to the embedded Maildir");
                }
                let probed = upstream.probe().await;
                match &probed {
                    Ok(caps) => tracing::info!(%url, caps = %caps, "upstream ready"),
                    Err(err) => tracing::warn!(%url, error = %err, "upstream not reachable yet; sessions will retry"),
                }
                if fixed.bound.iter().any(|l| l.mode.submission()) {
                    check_submission(&config, &upstream, probed.as_ref().ok())?;
                }
                upstream.watch(config.upstream.probe_interval);
                upstream
            }
        };
        let tls = Arc::new(ServerTls::from_config(&config.tls, &hostname)?);
        if tls.is_self_signed() {
            tracing::info!(
                "no TLS certificate configured: STARTTLS uses a self-signed certificate generated at start \
                 (opportunistic TLS, as sending MTAs expect; configure [tls] certificates for a real one)"
            );
        } else {
            tracing::info!(certificates = %tls.describe().join(", "), "TLS certificates loaded");
        }
        let (chain, loaded) = crate::wasm::load_with(&config, fixed.kv.clone(), fixed.metrics.clone()).await?;
        if let Some(allocation) = loaded.allocation {
            tracing::info!(plugins = loaded.plugins.len(), memory = %allocation, "plugins ready");
        }
        let chain = Arc::new(chain);
        let quarantine = if chain.may_quarantine() {
            let maildir = Maildir::create(config.sandbox.quarantine.clone(), hostname.clone())?;
            tracing::info!(path = %maildir.root().display(), "quarantine Maildir ready");
            Some(Arc::new(maildir))
        } else {
            None
        };
        let auth = Auth::from_config(&config.auth, &hostname)?.map(Arc::new);
        // A reload that keeps `[record]` keeps its recorder, and with it the count of what
        // was written.
        let recorder = match previous.filter(|p| p.config().record == config.record) {
            Some(previous) => previous.session.recorder.clone(),
            None => Recorder::open(&config.record)?.map(Arc::new),
        };
        let configured = config.listeners();
        let listeners = fixed
            .bound
            .iter()
            .map(|bound| {
                // A listener no longer in the configuration keeps its settings from the start.
                let settings = configured.iter().find(|l| l.address == bound.address).unwrap_or(bound);
                let chain = match &settings.plugins {
                    Some(names) => Arc::new(chain.subset(names)),
                    None => chain.clone(),
                };
                Arc::new(ListenerContext {
                    address: bound.address,
                    mode: settings.mode,
                    chain,
                    allow_plaintext_auth: settings.allow_plaintext_auth,
                    xforward_from: settings.xforward_from.clone(),
                    proxy_trusted: settings.proxy_protocol.then(|| settings.proxy_trusted.clone()),
                })
            })
            .collect();
        let session = Arc::new(SessionContext {
            generation: number,
            hostname,
            upstream,
            spool_dir: SessionContext::spool_dir_of(&config),
            shutdown: fixed.shutdown.clone(),
            chain,
            quarantine,
            auth,
            tls: Some(tls),
            metrics: fixed.metrics.clone(),
            ids: fixed.ids.clone(),
            recorder,
            config,
            released: Released(number),
        });
        Ok(Generation { listeners, session })
    }

    /// Whether new mail can be taken: the upstream answers. (The plugins are loaded, or this
    /// generation would not exist.)
    pub fn ready(&self) -> Result<(), String> {
        if self.session.upstream.reachable() {
            Ok(())
        } else {
            Err(format!("upstream {} not reachable", self.config().upstream_url()))
        }
    }

    /// Sets the gauges that describe this generation's state, before a scrape.
    pub fn report(&self, metrics: &Metrics) {
        self.session.chain.report_breakers();
        if let Some((entries, bytes)) = self.session.chain.kv().usage() {
            metrics.set_kv(entries, bytes);
        }
        metrics.set_upstream_up(self.session.upstream.reachable());
        metrics.set_generation(self.number());
    }
}

/// A submission listener needs a real certificate and an upstream that checks credentials.
fn check_submission(config: &Config, upstream: &UpstreamTarget, probed: Option<&Capabilities>) -> anyhow::Result<()> {
    if config.tls.certificates.is_empty() {
        anyhow::bail!("a submission listener needs a TLS certificate: configure [tls] certificates");
    }
    if upstream.is_maildir() {
        anyhow::bail!("a submission listener needs an SMTP upstream that checks credentials (AUTH), not a Maildir");
    }
    match probed {
        Some(caps) if caps.auth_mechanisms().is_empty() => anyhow::bail!(
            "a submission listener relays AUTH to the upstream, but the upstream offers no AUTH PLAIN or LOGIN \
             (with Postfix: smtpd_sasl_auth_enable = yes on the listener wasmtp relays to)"
        ),
        None => tracing::warn!("upstream not reachable: cannot check yet that it offers AUTH for submission"),
        Some(_) => {}
    }
    Ok(())
}

/// The settings a reload cannot apply, named for the log: they keep their values from the
/// start until the process is restarted.
pub fn needs_restart(running: &Config, bound: &[ListenerConfig], new: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |name: &str, same: bool| {
        if !same {
            changed.push(name.to_string());
        }
    };
    let (old_server, new_server) = (&running.server, &new.server);
    check("server.max_connections", old_server.max_connections == new_server.max_connections);
    check("server.max_connections_per_ip", old_server.max_connections_per_ip == new_server.max_connections_per_ip);
    check("server.connection_limit_exempt", old_server.connection_limit_exempt == new_server.connection_limit_exempt);
    check("server.user", old_server.user == new_server.user);
    check("server.group", old_server.group == new_server.group);
    check("server.pid_file", old_server.pid_file == new_server.pid_file);
    check("admin.listen", running.admin == new.admin);
    check("kv", running.kv == new.kv);
    check("server.node_id", running.node_id() == new.node_id());
    check("log", running.log == new.log);
    let configured = new.listeners();
    for listener in bound {
        match configured.iter().find(|l| l.address == listener.address) {
            None => changed.push(format!("listener {} removed (still served)", listener.address)),
            Some(l) if l.max_connections != listener.max_connections => {
                changed.push(format!("listener {} max_connections", listener.address))
            }
            Some(_) => {}
        }
    }
    for listener in configured.iter().filter(|l| !bound.iter().any(|b| b.address == l.address)) {
        changed.push(format!("listener {} added (not listening yet)", listener.address));
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listener_and_limit_changes_need_a_restart() {
        let running = Config::parse("[server]\nlisten = \"127.0.0.1:2525\"\n").unwrap();
        let bound = running.listeners();
        let same = Config::parse("[server]\nlisten = \"127.0.0.1:2525\"\n[limits]\nmax_recipients = 5\n").unwrap();
        assert!(needs_restart(&running, &bound, &same).is_empty(), "limits apply at once");
        let moved = Config::parse("[server]\nlisten = \"127.0.0.1:2526\"\nmax_connections = 5\n").unwrap();
        assert_eq!(
            needs_restart(&running, &bound, &moved),
            [
                "server.max_connections",
                "listener 127.0.0.1:2525 removed (still served)",
                "listener 127.0.0.1:2526 added (not listening yet)"
            ]
        );
    }
}
