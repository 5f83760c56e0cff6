//! One client session: the SMTP state machine, one tokio task per connection.
//!
//! The session reads lines through [`crate::smtp::line::LineReader`], parses them into commands
//! and hands each to its verb's handler (one file per verb family: `greeting` for HELO/EHLO,
//! `envelope` for MAIL/RCPT, `data` for DATA and `message` for what follows it, `misc` for the
//! rest). A refused command is a reply, not an error. Replies queue up and are flushed before the
//! session waits for input, so pipelined commands get their replies in one write. What belongs
//! to one mail transaction lives in its `Transaction` (`transaction.rs`).

mod data;
mod envelope;
mod greeting;
mod io;
mod message;
mod misc;
pub mod record;
mod submission;
mod tls;
mod transaction;
mod xforward;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpStream;

use crate::auth::{Auth, AuthResults, Iprev, Spf};
use crate::config::{Config, ListenerMode};
use crate::filter::api::{Connection, TlsInfo};
use crate::filter::host::{NoteScopes, Notes};
use crate::filter::stages::{ConnectState, StageState};
use crate::filter::{Chain, Outcome};
use crate::metrics::Metrics;
use crate::replies;
use crate::shutdown::ShutdownSignal;
use crate::smtp::Reply;
use crate::smtp::command::{self, Command};
use crate::smtp::line::{Line, LineReader};
use crate::tls::{Negotiated, ServerTls};
use crate::upstream::maildir::Maildir;
use crate::upstream::{ClientInfo, Upstream, UpstreamTarget};
use io::{ClientIo, ReadOutcome};
use transaction::{Ending, Transaction};

/// What every session of one configuration generation shares. A session keeps the context it
/// started with to its end, whatever reloads happen meanwhile.
#[derive(Debug)]
pub struct SessionContext {
    pub config: Config,
    /// Which reading of the configuration this is (1 at start, +1 per reload).
    pub generation: u64,
    pub hostname: String,
    pub upstream: UpstreamTarget,
    pub spool_dir: PathBuf,
    pub shutdown: ShutdownSignal,
    pub chain: Arc<Chain>,
    /// Where quarantined messages go (present when a plugin may quarantine).
    pub quarantine: Option<Arc<Maildir>>,
    /// Sender authentication (present when `[auth]` is enabled or signing is configured).
    pub auth: Option<Arc<Auth>>,
    /// The server side of TLS, for STARTTLS and implicit-TLS listeners.
    pub tls: Option<Arc<ServerTls>>,
    pub metrics: Arc<Metrics>,
    pub ids: Arc<SessionIds>,
    /// Where sessions are recorded (`[record]`), when they are.
    pub recorder: Option<Arc<record::Recorder>>,
    /// Last: dropped after everything above.
    pub released: Released,
}

/// What a listener's sessions need to know about it.
#[derive(Debug)]
pub struct ListenerContext {
    pub address: SocketAddr,
    pub mode: ListenerMode,
    /// The plugins this listener runs.
    pub chain: Arc<Chain>,
    /// AUTH without TLS for clients on loopback addresses (submission only).
    pub allow_plaintext_auth: bool,
    /// Clients whose XFORWARD is believed (a Postfix `smtpd_proxy_filter` in front).
    pub xforward_from: Vec<ipnet::IpNet>,
    /// On a PROXY protocol listener, the balancers whose header is believed.
    pub proxy_trusted: Option<Vec<ipnet::IpNet>>,
}

/// Session ids: `<node>-<counter>`, unique within the process, across restarts (the counter
/// starts from the clock) and across the proxies behind one balancer (each has its node id).
#[derive(Debug)]
pub struct SessionIds {
    node: String,
    counter: AtomicU64,
}

impl SessionIds {
    pub fn new(node: &str) -> Self {
        let start = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) << 20;
        Self { node: node.to_string(), counter: AtomicU64::new(start) }
    }

    fn next(&self) -> Arc<str> {
        format!("{}-{:013X}", self.node, self.counter.fetch_add(1, Ordering::Relaxed)).into()
    }
}

/// Logs that a generation is gone once everything it held has been dropped: the last field
/// of [`SessionContext`].
#[derive(Debug)]
pub struct Released(pub u64);

impl Drop for Released {
    fn drop(&mut self) {
        tracing::info!(generation = self.0, "configuration generation released: its last session ended");
    }
}

impl SessionContext {
    /// Where messages too large for memory spill: `server.spool_dir`, or the temp directory.
    pub fn spool_dir_of(config: &Config) -> PathBuf {
        config.server.spool_dir.clone().unwrap_or_else(std::env::temp_dir)
    }
}

/// Mailboxes for a log field: `a@example.org,b@example.org`.
fn mailboxes(list: &[crate::smtp::Mailbox]) -> String {
    list.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(",")
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

/// What ended a wait for client input.
enum Input {
    Line(Line),
    Eof,
    IdleTimeout,
    Shutdown,
    Failed(std::io::Error),
}

pub struct Session {
    io: ClientIo,
    lines: LineReader,
    peer: SocketAddr,
    id: Arc<str>,
    helo: Option<Helo>,
    advertised: Advertised,
    transaction: Option<Transaction>,
    upstream: Upstream,
    errors: u32,
    /// Transactions answered so far (for the `Received:` id).
    transactions: u32,
    /// Notes plugins set outside a transaction; they last for the session.
    notes: Notes,
    /// A connect-stage plugin refused the client: only QUIT is served.
    refused: bool,
    /// iprev for the client, when authentication is on.
    iprev: Option<Iprev>,
    /// SPF for the HELO name it was computed for.
    spf_helo: Option<(String, Spf)>,
    /// The TLS session, after STARTTLS or on an implicit-TLS listener.
    tls: Option<Negotiated>,
    /// The identity the upstream accepted in an AUTH exchange.
    authenticated_as: Option<String>,
    auth_failures: u32,
    /// The session notes as the connect stage left them: what STARTTLS returns to.
    notes_at_greeting: Notes,
    /// The client as a trusted XFORWARD described it (Postfix in front of the proxy).
    forwarded: Option<xforward::Forwarded>,
    /// This session's recording, when `[record]` is on and its directory has room.
    recording: Option<record::SessionRecord>,
    // Last, so they are dropped last: when a generation is released, its sessions' sockets
    // are closed.
    listener: Arc<ListenerContext>,
    ctx: Arc<SessionContext>,
}

/// Runs a session on an accepted connection until it ends. `peer` is the client (behind a
/// balancer, the one its PROXY header named) and `destination` the address it connected to,
/// when a PROXY header gave it.
pub async fn run(
    stream: TcpStream,
    peer: SocketAddr,
    destination: Option<SocketAddr>,
    listener: Arc<ListenerContext>,
    ctx: Arc<SessionContext>,
) {
    let _ = stream.set_nodelay(true);
    let client = ClientInfo {
        ip: peer.ip(),
        port: peer.port(),
        name: None,
        helo: None,
        esmtp: false,
        local: destination.or_else(|| stream.local_addr().ok()),
    };
    let upstream = ctx.upstream.session(client, listener.mode.submission());
    let max_size = ctx.config.limits.max_message_size.bytes();
    let id = ctx.ids.next();
    let recording = ctx.recorder.as_ref().and_then(|r| r.begin(&id)).map(|mut recording| {
        recording.listener = Some(listener.address);
        recording
    });
    let mut session = Session {
        io: ClientIo::new(stream, ctx.config.timeouts.idle),
        listener,
        lines: LineReader::new(command::MAX_MAIL_RCPT_LINE),
        peer,
        id,
        helo: None,
        advertised: Advertised { size: max_size, eight_bit_mime: false, smtputf8: false },
        transaction: None,
        upstream,
        errors: 0,
        transactions: 0,
        notes: Notes::default(),
        refused: false,
        iprev: None,
        spf_helo: None,
        tls: None,
        authenticated_as: None,
        auth_failures: 0,
        notes_at_greeting: Notes::default(),
        forwarded: None,
        recording,
        ctx,
    };
    let span = tracing::info_span!("session", id = %session.id, client = %peer);
    let _ = tracing::Instrument::instrument(session.serve(), span).await;
}

impl Session {
    async fn serve(&mut self) {
        tracing::debug!("connected");
        if self.listener.mode == ListenerMode::Submissions && !self.implicit_tls().await {
            self.io.close().await;
            return;
        }
        if self.ctx.shutdown.is_draining() {
            self.reply(replies::shutting_down(&self.ctx.hostname));
        } else if self.greet().await == Flow::Continue {
            while self.step().await == Flow::Continue {}
        }
        if let Some(txn) = self.transaction.take() {
            self.end_transaction(txn, Ending::Abandoned("transaction abandoned by the client")).await;
        }
        self.upstream.quit().await;
        self.io.close().await;
        self.finish_recording().await;
        tracing::debug!("closed");
    }

    /// The connection facts plugins see at this point of the session.
    fn facts(&self, txn: Option<&Transaction>) -> Connection {
        let mut conn = Connection::new(self.id.clone(), self.client_addr());
        conn.helo = self.client_helo().map(String::from);
        conn.tls = self.tls.as_ref().map(|t| TlsInfo {
            version: t.version.clone(),
            cipher: t.cipher.clone(),
            sni: t.sni.clone(),
        });
        conn.authenticated_as = self.authenticated_as.clone();
        conn.client_name = self.client_name();
        let message = txn.and_then(|t| t.message_auth.as_ref());
        conn.auth = AuthResults {
            iprev: self.iprev.as_ref().map(|i| i.check.clone()),
            spf_helo: self.spf_helo.as_ref().map(|(_, spf)| spf.check.clone()),
            spf_mail: txn.and_then(|t| t.spf_mail.as_ref()).map(|spf| spf.check.clone()),
            dkim: message.map_or_else(Vec::new, |m| m.dkim.clone()),
            arc: message.and_then(|m| m.arc),
            dmarc: message.and_then(|m| m.dmarc.clone()),
        };
        conn
    }

    /// The connection facts for a stage whose plugins run (`wanted`). The recording notes the
    /// stage's authentication results either way: a new build may run where none runs now.
    fn stage_facts(&mut self, txn: Option<&Transaction>, wanted: bool) -> Option<Connection> {
        if !wanted && self.recording.is_none() {
            return None;
        }
        let conn = self.facts(txn);
        if let Some(recording) = &mut self.recording {
            recording.auth_results(&conn.auth);
        }
        wanted.then_some(conn)
    }

    /// Runs the plugins of `S::STAGE` over `state` outside any transaction.
    async fn run_session_stage<S: StageState>(&mut self, state: &mut S) -> Outcome {
        let chain = self.listener.chain.clone();
        let Some(conn) = self.stage_facts(None, chain.wants(S::STAGE)) else { return Outcome::Continue };
        let notes = NoteScopes { session: &mut self.notes, transaction: None };
        let Some(recording) = &mut self.recording else { return chain.run(&conn, notes, state).await };
        let mut decisions = record::Decisions { out: &mut recording.decisions, recipient: None };
        chain.run_observed(&conn, notes, state, &mut decisions).await
    }

    /// Hands the session's recording to the recorder, with the facts known only at the end.
    async fn finish_recording(&mut self) {
        let (Some(mut record), Some(recorder)) = (self.recording.take(), self.ctx.recorder.clone()) else {
            return;
        };
        record.client = Some(self.client_addr());
        record.client_name = self.client_name();
        record.tls = self.tls.as_ref().map(|t| t.version.clone());
        record.authenticated_as = self.authenticated_as.clone();
        recorder.finish(record).await;
    }

    /// Runs the connect stage and sends the greeting it allows.
    async fn greet(&mut self) -> Flow {
        if let Some(auth) = self.ctx.auth.clone() {
            self.iprev = auth.iprev(self.peer.ip()).await;
            let name = self.client_name();
            self.upstream.set_client(|client| client.name = name);
        }
        match self.run_session_stage(&mut ConnectState).await {
            Outcome::Continue => {
                self.notes_at_greeting = self.notes.clone();
                self.reply(replies::greeting(&self.ctx.hostname));
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
                Err(error) => self.error(replies::parse_error(&error)),
            },
            Input::Line(Line::TooLong) => self.error(replies::line_too_long()),
            Input::Line(Line::Invalid) => self.error(replies::bare_line_ending_in_command()),
            Input::Eof => Flow::Close,
            Input::IdleTimeout => {
                self.reply(replies::idle_timeout(&self.ctx.hostname));
                Flow::Close
            }
            Input::Shutdown => {
                self.reply(replies::shutting_down(&self.ctx.hostname));
                Flow::Close
            }
            Input::Failed(err) => {
                tracing::debug!(error = %err, "client connection failed");
                Flow::Close
            }
        }
    }

    async fn dispatch(&mut self, cmd: Command) -> Flow {
        // After STARTTLS whatever the client pipelined is discarded rather than refused: the
        // handshake starts from a clean slate (RFC 3207 §4.2).
        if cmd.is_sync_point() && cmd != Command::StartTls && !self.io.input.is_empty() {
            return self.synchronization_error(&cmd);
        }
        if self.refused && !matches!(cmd, Command::Quit) {
            return self.error(replies::refused_connection_only_quit());
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
            Command::StartTls => self.starttls().await,
            Command::Auth(start) => self.auth(start).await,
            Command::Xforward(attributes) => self.xforward(&attributes),
            Command::Expn | Command::Bdat => self.not_implemented(&cmd),
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
        self.reply(replies::synchronization_error());
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
            self.reply(replies::too_many_errors(&self.ctx.hostname));
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

    /// Ends the open transaction, if any, as reset (RSET, or a new HELO/EHLO).
    async fn reset_transaction(&mut self) {
        if let Some(txn) = self.transaction.take() {
            self.end_transaction(txn, Ending::Reset).await;
        }
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
