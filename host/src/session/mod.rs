//! One client session: the SMTP state machine, one tokio task per connection.
//!
//! The session reads lines through [`crate::smtp::line::LineReader`], parses them into commands
//! and hands each to its verb's handler (one file per verb family: [`greeting`] for HELO/EHLO,
//! [`envelope`] for MAIL/RCPT, [`data`] for DATA, [`misc`] for the rest). A refused command is a
//! reply, not an error. Replies queue up and are flushed before the session waits for input, so
//! pipelined commands get their replies in one write.

mod data;
mod envelope;
mod greeting;
mod io;
mod misc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;

use crate::auth::Auth;
use crate::config::Config;
use crate::plugins::Plugins;
use crate::plugins::chain::{ConnectState, Outcome, PluginSession};
use crate::shutdown::ShutdownSignal;
use crate::smtp::command::{self, Command, MailFrom};
use crate::smtp::line::{Line, LineReader};
use crate::smtp::{Mailbox, Reply};
use crate::upstream::maildir::Maildir;
use crate::upstream::{ClientInfo, Upstream, UpstreamTarget};
use io::{ClientIo, ReadOutcome};

/// What every session shares.
#[derive(Debug)]
pub struct SessionContext {
    pub config: Config,
    pub hostname: String,
    pub upstream: UpstreamTarget,
    pub spool_dir: PathBuf,
    pub shutdown: ShutdownSignal,
    pub plugins: Arc<Plugins>,
    /// Where quarantined messages go (present when a plugin may quarantine).
    pub quarantine: Option<Arc<Maildir>>,
    /// Sender authentication (present when `[auth]` is enabled or signing is configured).
    pub auth: Option<Arc<Auth>>,
    ids: AtomicU64,
}

impl SessionContext {
    pub fn new(
        config: Config,
        upstream: UpstreamTarget,
        shutdown: ShutdownSignal,
        plugins: Arc<Plugins>,
        quarantine: Option<Arc<Maildir>>,
        auth: Option<Arc<Auth>>,
    ) -> Self {
        let hostname = config.hostname();
        let spool_dir = config.server.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
        // Session ids start from the clock so they do not repeat across restarts.
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) << 20;
        Self { config, hostname, upstream, spool_dir, shutdown, plugins, quarantine, auth, ids: AtomicU64::new(start) }
    }

    fn next_id(&self) -> String {
        format!("{:013X}", self.ids.fetch_add(1, Ordering::Relaxed))
    }
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// The client's HELO/EHLO.
#[derive(Debug, Clone)]
struct Helo {
    name: String,
    esmtp: bool,
}

/// What the last EHLO reply promised the client.
#[derive(Debug, Clone, Copy)]
struct Advertised {
    size: u64,
    eight_bit_mime: bool,
    smtputf8: bool,
}

/// A mail transaction between MAIL and the end of DATA (or RSET).
#[derive(Debug)]
struct Transaction {
    mail: MailFrom,
    recipients: Vec<Mailbox>,
    started: Instant,
    /// The upstream connection was lost inside this transaction: nothing more can succeed.
    broken: bool,
}

/// What ended a wait for client input.
enum Input {
    Line(Line),
    Eof,
    IdleTimeout,
    Shutdown,
    Failed(std::io::Error),
}

pub struct Session {
    ctx: Arc<SessionContext>,
    io: ClientIo,
    lines: LineReader,
    peer: SocketAddr,
    id: String,
    helo: Option<Helo>,
    advertised: Advertised,
    transaction: Option<Transaction>,
    upstream: Upstream,
    errors: u32,
    transactions: u32,
    plugin_session: PluginSession,
    /// A connect-stage plugin refused the client: only QUIT is served.
    refused: bool,
    auth_state: AuthState,
}

/// The authentication results of this session, as mail-auth reports them (for the header).
#[derive(Debug, Default)]
struct AuthState {
    iprev: Option<mail_auth::IprevOutput>,
    /// SPF for the HELO name it was computed for.
    spf_helo: Option<(String, mail_auth::SpfOutput)>,
    spf_mail: Option<mail_auth::SpfOutput>,
}

/// Runs a session on an accepted connection until it ends.
pub async fn run(stream: TcpStream, peer: SocketAddr, ctx: Arc<SessionContext>) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    let id = ctx.next_id();
    let plugin_id = id.clone();
    let upstream = ctx.upstream.session(ClientInfo { ip: peer.ip(), port: peer.port(), helo: None, esmtp: false });
    let max_size = ctx.config.limits.max_message_size.bytes();
    let mut session = Session {
        io: ClientIo::new(reader, writer, ctx.config.timeouts.idle),
        lines: LineReader::new(command::MAX_MAIL_RCPT_LINE),
        peer,
        id,
        helo: None,
        advertised: Advertised { size: max_size, eight_bit_mime: false, smtputf8: false },
        transaction: None,
        upstream,
        errors: 0,
        transactions: 0,
        plugin_session: PluginSession::new(&plugin_id, peer),
        refused: false,
        auth_state: AuthState::default(),
        ctx,
    };
    let span = tracing::info_span!("session", id = %session.id, client = %peer);
    let _ = tracing::Instrument::instrument(session.serve(), span).await;
}

impl Session {
    async fn serve(&mut self) {
        tracing::debug!("connected");
        if self.ctx.shutdown.is_draining() {
            self.reply(Reply::enhanced(421, (4, 3, 2), format!("{} Service shutting down", self.ctx.hostname)));
        } else if self.greet().await == Flow::Continue {
            while self.step().await == Flow::Continue {}
        }
        if let Some(txn) = self.transaction.take() {
            tracing::info!(sender = %txn.mail.sender, recipients = txn.recipients.len(), "transaction abandoned by the client");
        }
        self.upstream.rset().await;
        self.upstream.quit().await;
        self.io.close().await;
        tracing::debug!("closed");
    }

    /// Runs the connect stage and sends the greeting it allows.
    async fn greet(&mut self) -> Flow {
        if let Some(auth) = self.ctx.auth.clone()
            && let Some(iprev) = auth.iprev(self.peer.ip()).await
        {
            let check = crate::auth::iprev_check(&iprev);
            let verified = (check.result == crate::plugins::bindings::AuthResult::Pass)
                .then(|| check.names.first().cloned())
                .flatten();
            self.plugin_session.set_client_name(verified);
            self.plugin_session.auth_mut().iprev = Some(check);
            self.auth_state.iprev = Some(iprev);
        }
        let plugins = self.ctx.plugins.clone();
        match plugins.run(&mut self.plugin_session, &mut ConnectState).await {
            Outcome::Continue => {
                self.reply(Reply::new(220, None, format!("{} ESMTP wasmtp", self.ctx.hostname)));
                Flow::Continue
            }
            // A greeting can only be 220, 554 (then 503 to all but QUIT) or 421 (then close).
            Outcome::Reject(reply) => {
                let enhanced = reply.enhanced_code();
                self.reply(reply.with_code(554, enhanced));
                self.refused = true;
                Flow::Continue
            }
            Outcome::Tempfail(reply) | Outcome::Disconnect(reply) if reply.is_transient() => {
                let enhanced = reply.enhanced_code();
                self.reply(reply.with_code(421, enhanced));
                Flow::Close
            }
            Outcome::Tempfail(reply) | Outcome::Disconnect(reply) => {
                let enhanced = reply.enhanced_code();
                self.reply(reply.with_code(554, enhanced));
                Flow::Close
            }
        }
    }

    /// Handles one event from the client.
    async fn step(&mut self) -> Flow {
        match self.next_input().await {
            Input::Line(Line::Complete(line)) => match command::parse(&line) {
                Ok(cmd) => self.dispatch(cmd).await,
                Err(reply) => self.error(reply),
            },
            Input::Line(Line::TooLong) => self.error(command::line_too_long()),
            Input::Line(Line::Invalid) => {
                self.error(Reply::enhanced(500, (5, 5, 2), "Bare CR, bare LF or NUL in command; use CRLF"))
            }
            Input::Eof => Flow::Close,
            Input::IdleTimeout => {
                self.reply(Reply::enhanced(
                    421,
                    (4, 4, 2),
                    format!("{} Idle timeout, closing connection", self.ctx.hostname),
                ));
                Flow::Close
            }
            Input::Shutdown => {
                self.reply(Reply::enhanced(421, (4, 3, 2), format!("{} Service shutting down", self.ctx.hostname)));
                Flow::Close
            }
            Input::Failed(err) => {
                tracing::debug!(error = %err, "client connection failed");
                Flow::Close
            }
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Flow {
        if cmd.is_sync_point() && !self.io.input.is_empty() {
            return self.synchronization_error(&cmd);
        }
        if self.refused && !matches!(cmd, Command::Quit) {
            return self.error(Reply::enhanced(503, (5, 5, 1), "Connection refused by policy; only QUIT is accepted"));
        }
        match cmd {
            Command::Helo(name) => self.helo(name, false).await,
            Command::Ehlo(name) => self.helo(name, true).await,
            Command::Mail(mail) => self.mail(mail).await,
            Command::Rcpt(rcpt) => self.rcpt(rcpt).await,
            Command::Data => self.data().await,
            Command::Rset => self.rset().await,
            Command::Noop => self.noop(),
            Command::Quit => self.quit(),
            Command::Help => self.help(),
            Command::Vrfy => self.vrfy(),
            Command::Expn | Command::Bdat | Command::StartTls | Command::Auth => self.not_implemented(&cmd),
        }
    }

    /// Bytes arrived after a command the client must wait on (RFC 2920 §3.1): they are never
    /// executed. QUIT simply closes; anything else is refused and the session closed.
    fn synchronization_error(&mut self, cmd: &Command) -> Flow {
        tracing::warn!(command = cmd.verb(), pending = self.io.input.len(), "input pipelined past a sync point");
        self.io.input.clear();
        if matches!(cmd, Command::Quit) {
            return self.quit();
        }
        self.reply(Reply::enhanced(554, (5, 5, 0), "Protocol synchronization error: input sent before our reply"));
        Flow::Close
    }

    fn reply(&mut self, reply: Reply) {
        debug_assert!(reply.validate().is_ok() || reply.code() == 354, "invalid reply {reply:?}");
        self.io.queue(&reply);
    }

    /// Queues a reply to a faulty command and counts it; too many close the session.
    fn error(&mut self, reply: Reply) -> Flow {
        self.reply(reply);
        self.errors += 1;
        if self.errors >= self.ctx.config.limits.max_errors {
            tracing::info!(errors = self.errors, "too many errors");
            self.reply(Reply::enhanced(
                421,
                (4, 7, 0),
                format!("{} Too many errors, closing connection", self.ctx.hostname),
            ));
            return Flow::Close;
        }
        Flow::Continue
    }

    /// Waits for the next complete command line, flushing replies first.
    async fn next_input(&mut self) -> Input {
        loop {
            if let Some(line) = self.lines.next_line(&mut self.io.input) {
                return Input::Line(line);
            }
            if let Err(err) = self.io.flush().await {
                return Input::Failed(err);
            }
            let shutdown = self.ctx.shutdown.clone();
            let idle_session = self.transaction.is_none() && !self.lines.is_discarding();
            if idle_session && shutdown.is_draining() {
                return Input::Shutdown;
            }
            let read = tokio::time::timeout(self.ctx.config.timeouts.idle, self.io.read_more(io::COMMAND_READ));
            tokio::select! {
                outcome = read => match outcome {
                    Err(_) => return Input::IdleTimeout,
                    Ok(ReadOutcome::Data) => {}
                    Ok(ReadOutcome::Eof) => return Input::Eof,
                    Ok(ReadOutcome::Failed(err)) => return Input::Failed(err),
                },
                _ = shutdown.draining(), if idle_session => return Input::Shutdown,
                _ = shutdown.expired() => return Input::Shutdown,
            }
        }
    }

    /// Ends the current transaction here and upstream.
    async fn reset_transaction(&mut self) {
        self.end_transaction();
        self.upstream.rset().await;
    }

    /// Forgets the transaction on our side (its notes and authentication results too).
    fn end_transaction(&mut self) {
        self.transaction = None;
        self.auth_state.spf_mail = None;
        self.plugin_session.end_transaction();
    }

    /// Sends a plugin's refusal. Returns how the session goes on.
    fn refuse(&mut self, outcome: Outcome) -> Flow {
        match outcome {
            Outcome::Continue => Flow::Continue,
            Outcome::Reject(reply) | Outcome::Tempfail(reply) => {
                self.reply(reply);
                Flow::Continue
            }
            Outcome::Disconnect(reply) => {
                self.reply(reply);
                Flow::Close
            }
        }
    }
}
