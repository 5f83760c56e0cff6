//! Where accepted mail goes: the lockstep SMTP relay ([`smtp`]) or the embedded Maildir
//! delivery ([`maildir`]). The session drives one [`Upstream`] per client connection through
//! MAIL, RCPT, DATA and RSET and relays what it answers.
//!
//! Every failure here — unreachable, hanging, closing, refusing, disk full — is an
//! [`UpstreamError`], which the session turns into a 4xx for its client, so no message is ever
//! acknowledged that the upstream did not take.

mod connection;
pub mod maildir;
pub mod smtp;

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{Config, UpstreamUrl};
use crate::message::Outgoing;
use crate::metrics::Metrics;
use crate::replies;
use crate::smtp::command::{Body, MailFrom};
use crate::smtp::{EnhancedCode, Mailbox, Reply};

/// What the upstream can carry, learned from its EHLO reply; the session advertises only what
/// both sides support.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Its SIZE limit; `None` when it advertised no limit (or `SIZE 0`).
    pub size: Option<u64>,
    /// It advertised SIZE at all (so the parameter may be passed on).
    pub size_param: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub pipelining: bool,
    pub starttls: bool,
    pub xforward: bool,
    /// Postfix's XCLIENT and the attributes it accepts.
    pub xclient: Xclient,
    /// The SASL mechanisms the proxy can relay (RFC 4954), as the upstream offers them.
    pub auth_plain: bool,
    pub auth_login: bool,
}

/// The XCLIENT attributes an upstream lists (Postfix's XCLIENT_README); all false when it does
/// not offer XCLIENT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Xclient {
    pub offered: bool,
    pub addr: bool,
    pub port: bool,
    pub name: bool,
    pub helo: bool,
    pub proto: bool,
    pub login: bool,
    pub destaddr: bool,
    pub destport: bool,
}

impl Capabilities {
    /// What we assume before the upstream has ever answered: nothing end-to-end.
    pub const UNKNOWN: Self = Self {
        size: None,
        size_param: false,
        eight_bit_mime: false,
        smtputf8: false,
        pipelining: false,
        starttls: false,
        xforward: false,
        xclient: Xclient {
            offered: false,
            addr: false,
            port: false,
            name: false,
            helo: false,
            proto: false,
            login: false,
            destaddr: false,
            destport: false,
        },
        auth_plain: false,
        auth_login: false,
    };
    /// Embedded delivery stores anything.
    pub const LOCAL: Self = Self { eight_bit_mime: true, smtputf8: true, pipelining: true, ..Self::UNKNOWN };

    /// The AUTH mechanisms to advertise, e.g. `"PLAIN LOGIN"`; empty when none can be relayed.
    pub fn auth_mechanisms(&self) -> String {
        let mut mechanisms = Vec::new();
        if self.auth_plain {
            mechanisms.push("PLAIN");
        }
        if self.auth_login {
            mechanisms.push("LOGIN");
        }
        mechanisms.join(" ")
    }
}

/// The capabilities in words, for logs: `size=10240000 8bitmime pipelining auth=PLAIN`.
impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.size {
            Some(size) => write!(f, "size={size}")?,
            None => f.write_str("size=unlimited")?,
        }
        for (on, name) in [
            (self.eight_bit_mime, "8bitmime"),
            (self.smtputf8, "smtputf8"),
            (self.pipelining, "pipelining"),
            (self.starttls, "starttls"),
            (self.xforward, "xforward"),
            (self.xclient.offered, "xclient"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        let auth = self.auth_mechanisms();
        if !auth.is_empty() {
            write!(f, " auth={}", auth.replace(' ', ","))?;
        }
        Ok(())
    }
}

/// The SMTP stage an upstream operation belongs to, for errors and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Connect,
    Greeting,
    Ehlo,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Rset,
    Quit,
    StartTls,
    Auth,
    Xclient,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::EndOfData => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
            Stage::StartTls => "STARTTLS",
            Stage::Auth => "AUTH",
            Stage::Xclient => "XCLIENT",
        })
    }
}

/// An upstream failure. Any of them ends the upstream connection.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to upstream {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("upstream did not answer in time at {0}")]
    Timeout(Stage),
    #[error("upstream closed the connection at {0}")]
    Closed(Stage),
    /// A command that needs an open upstream transaction came after the transaction was lost.
    #[error("no upstream transaction at {0}: it was lost earlier")]
    NoTransaction(Stage),
    #[error("upstream I/O error at {stage}: {source}")]
    Io { stage: Stage, source: std::io::Error },
    #[error("upstream sent an invalid reply at {stage}: {detail}")]
    Protocol { stage: Stage, detail: String },
    #[error("upstream refused the session at {stage}: {reply}")]
    Refused { stage: Stage, reply: Reply },
    #[error("local delivery failed: {0}")]
    Local(std::io::Error),
    #[error("upstream TLS failed: {0}")]
    Tls(String),
}

impl UpstreamError {
    /// The reply the client gets. A refusal at greeting or EHLO is passed on with its class
    /// (421, which would close the client's session, becomes 451); everything else is a
    /// transient failure the client retries later.
    pub fn client_reply(&self) -> Reply {
        match self {
            UpstreamError::Refused { reply, .. } if reply.code() == 421 => {
                reply.clone().with_code(451, Some(EnhancedCode::new(4, 4, 0)))
            }
            UpstreamError::Refused { reply, .. } => reply.clone(),
            UpstreamError::Connect { .. } => replies::upstream_unavailable(),
            UpstreamError::Timeout(_) => replies::upstream_no_answer(),
            UpstreamError::Closed(_) | UpstreamError::Io { .. } | UpstreamError::NoTransaction(_) => {
                replies::upstream_lost()
            }
            UpstreamError::Protocol { .. } => replies::upstream_protocol_error(),
            UpstreamError::Local(_) => replies::local_delivery_failed(),
            UpstreamError::Tls(_) => replies::upstream_tls_failed(),
        }
    }
}

/// Facts about the client that an upstream may want (XCLIENT, XFORWARD).
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: IpAddr,
    pub port: u16,
    /// The client's host name, when iprev verified it (or a trusted XFORWARD said it).
    pub name: Option<String>,
    pub helo: Option<String>,
    pub esmtp: bool,
    /// The address the client connected to.
    pub local: Option<std::net::SocketAddr>,
}

/// The target all sessions share: built from the configuration (and kept across reloads that
/// do not change it).
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    kind: TargetKind,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Clone)]
enum TargetKind {
    Smtp(Arc<smtp::SmtpTarget>),
    Maildir(Arc<maildir::Maildir>),
}

impl UpstreamTarget {
    /// Builds the target; a Maildir is created (with `tmp/`, `new/`, `cur/`) if missing.
    pub fn from_config(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let kind = match config.upstream_url() {
            UpstreamUrl::Smtp { host, port } => TargetKind::Smtp(Arc::new(smtp::SmtpTarget::new(host, port, config)?)),
            UpstreamUrl::Maildir(path) => {
                TargetKind::Maildir(Arc::new(maildir::Maildir::create(path, config.hostname())?))
            }
        };
        Ok(Self { kind, metrics })
    }

    /// Whether this is the embedded Maildir delivery.
    pub fn is_maildir(&self) -> bool {
        matches!(self.kind, TargetKind::Maildir(_))
    }

    /// A fresh per-session upstream. Nothing is connected until it is needed. A `dedicated`
    /// session's connection is opened for it alone and never pooled.
    pub fn session(&self, client: ClientInfo, dedicated: bool) -> Upstream {
        let inner = match &self.kind {
            TargetKind::Smtp(target) => Inner::Smtp(Box::new(smtp::SmtpRelay::new(target.clone(), client, dedicated))),
            TargetKind::Maildir(maildir) => Inner::Maildir(maildir::MaildirSession::new(maildir.clone())),
        };
        Upstream { inner, metrics: self.metrics.clone() }
    }

    /// Closes idle pooled upstream connections politely (at shutdown).
    pub async fn close_idle(&self) {
        if let TargetKind::Smtp(target) = &self.kind {
            target.close_idle().await;
        }
    }

    /// Probes the upstream every `interval` from now on (SMTP only): what its EHLO offers is
    /// what EHLO replies to clients promise, pooled connections are dropped when it changes,
    /// and readiness follows whether it answers. The probing stops once the target is dropped.
    pub fn watch(&self, interval: std::time::Duration) {
        if let TargetKind::Smtp(target) = &self.kind {
            let target = Arc::downgrade(target);
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(interval);
                ticks.tick().await;
                loop {
                    ticks.tick().await;
                    let Some(target) = target.upgrade() else { return };
                    target.refresh().await;
                }
            });
        }
    }

    /// Learns the upstream's capabilities ahead of the first client (SMTP only); a failure is
    /// returned for logging, and sessions then try again themselves.
    pub async fn probe(&self) -> Result<Capabilities, UpstreamError> {
        match &self.kind {
            TargetKind::Smtp(target) => target.probe().await,
            TargetKind::Maildir(_) => Ok(Capabilities::LOCAL),
        }
    }

    /// Whether mail can go out now, as far as the proxy knows: the SMTP upstream answered the
    /// last connection attempt (a session's or the periodic probe's); the Maildir exists.
    pub fn reachable(&self) -> bool {
        match &self.kind {
            TargetKind::Smtp(target) => target.reachable(),
            TargetKind::Maildir(maildir) => maildir.root().join("new").is_dir(),
        }
    }
}

/// One session's upstream.
#[derive(Debug)]
pub struct Upstream {
    inner: Inner,
    metrics: Arc<Metrics>,
}

#[derive(Debug)]
enum Inner {
    Smtp(Box<smtp::SmtpRelay>),
    Maildir(maildir::MaildirSession),
}

/// A transaction's sender as it is relayed.
#[derive(Debug, Clone)]
pub struct Sender<'a> {
    pub mailbox: &'a Mailbox,
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
}

impl<'a> From<&'a MailFrom> for Sender<'a> {
    fn from(m: &'a MailFrom) -> Self {
        Self { mailbox: &m.sender, size: m.size, body: m.body, smtputf8: m.smtputf8 }
    }
}

impl Upstream {
    /// The capabilities to intersect with ours for an EHLO reply. For SMTP this may connect
    /// when nothing is known yet.
    pub async fn capabilities(&mut self) -> Capabilities {
        match &mut self.inner {
            Inner::Smtp(relay) => relay.capabilities().await,
            Inner::Maildir(_) => Capabilities::LOCAL,
        }
    }

    /// Tells the upstream the client's HELO name (kept for XCLIENT and XFORWARD).
    pub fn set_helo(&mut self, helo: &str, esmtp: bool) {
        if let Inner::Smtp(relay) = &mut self.inner {
            relay.client.helo = Some(helo.to_string());
            relay.client.esmtp = esmtp;
        }
    }

    /// Tells the upstream who the client is, when that is learned after connecting (iprev, or
    /// a trusted XFORWARD).
    pub fn set_client(&mut self, update: impl FnOnce(&mut ClientInfo)) {
        if let Inner::Smtp(relay) = &mut self.inner {
            update(&mut relay.client);
        }
    }

    /// The capabilities of this session's current upstream connection, if it has one (what the
    /// transaction is carried on), else what the upstream announced last.
    pub fn current_capabilities(&self) -> Capabilities {
        match &self.inner {
            Inner::Smtp(relay) => relay.current_capabilities(),
            Inner::Maildir(_) => Capabilities::LOCAL,
        }
    }

    /// Counts a command's reply (or its failure) by stage and class, with its latency.
    fn observed(
        &self,
        stage: &'static str,
        started: Instant,
        result: Result<Reply, UpstreamError>,
    ) -> Result<Reply, UpstreamError> {
        self.metrics.upstream_reply(stage, result.as_ref().ok().map(Reply::code), started.elapsed());
        result
    }

    pub async fn mail(&mut self, sender: &Sender<'_>) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Smtp(relay) => relay.mail(sender).await,
            Inner::Maildir(session) => Ok(session.mail(sender)),
        };
        self.observed("mail", started, result)
    }

    pub async fn rcpt(&mut self, recipient: &Mailbox) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Smtp(relay) => relay.rcpt(recipient).await,
            Inner::Maildir(session) => Ok(session.rcpt(recipient)),
        };
        self.observed("rcpt", started, result)
    }

    /// Sends the message and returns the upstream's final reply. Only a 2xx here means the
    /// message was taken.
    pub async fn data(&mut self, message: &mut Outgoing<'_>) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Smtp(relay) => relay.data(message).await,
            Inner::Maildir(session) => session.deliver(message).await,
        };
        self.observed("data", started, result)
    }

    /// Starts the transaction again with a new envelope (after plugins changed it at DATA):
    /// RSET, MAIL, RCPT for each recipient. Returns the first refusal, if any: a message is
    /// relayed only when every recipient is accepted again, so no recipient is lost silently.
    pub async fn replay(
        &mut self,
        sender: &Sender<'_>,
        recipients: &[Mailbox],
    ) -> Result<Option<Reply>, UpstreamError> {
        self.rset().await;
        let reply = self.mail(sender).await?;
        if !reply.is_positive() {
            return Ok(Some(reply));
        }
        for recipient in recipients {
            let reply = self.rcpt(recipient).await?;
            if !reply.is_positive() {
                self.rset().await;
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    /// Abandons the current transaction, if any. Failures drop the upstream connection.
    pub async fn rset(&mut self) {
        match &mut self.inner {
            Inner::Smtp(relay) => relay.rset().await,
            Inner::Maildir(session) => session.rset(),
        }
    }

    /// Ends the upstream session politely.
    pub async fn quit(&mut self) {
        if let Inner::Smtp(relay) = &mut self.inner {
            relay.quit().await;
        }
    }

    /// One step of an AUTH exchange relayed to the upstream (SMTP only; the embedded Maildir
    /// has nobody to check credentials).
    pub async fn auth(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Smtp(relay) => relay.auth(line).await,
            Inner::Maildir(_) => Err(UpstreamError::Closed(Stage::Auth)),
        };
        self.observed("auth", started, result)
    }

    /// The capabilities of this session's own upstream connection (opening it if needed; a
    /// failure to open it counts as an upstream error at `connect`).
    pub async fn connection_capabilities(&mut self) -> Result<Capabilities, UpstreamError> {
        let started = Instant::now();
        let result = match &mut self.inner {
            Inner::Smtp(relay) => relay.connection_capabilities().await,
            Inner::Maildir(_) => Ok(Capabilities::LOCAL),
        };
        if result.is_err() {
            self.metrics.upstream_reply("connect", None, started.elapsed());
        }
        result
    }

    /// The upstream's name for logs.
    pub fn describe(&self) -> String {
        match &self.inner {
            Inner::Smtp(relay) => relay.describe(),
            Inner::Maildir(session) => session.describe(),
        }
    }
}
