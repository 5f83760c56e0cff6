//! DATA: answer 354 ourselves, receive the whole message (bounded, spilled to disk when large),
//! decide on what was received, and only then relay it upstream and pass the upstream's final
//! reply back — so the client hears 250 only for a message the upstream took.

use std::time::{Duration, Instant, SystemTime};

use tokio::time::Instant as TokioInstant;

use std::sync::Arc;

use super::io::{DATA_READ, ReadOutcome};
use super::{Flow, Session, Transaction};
use crate::auth::{Auth, EarlierChecks};
use crate::message::headers::MAX_HEADER_SECTION;
use crate::message::outgoing::Body;
use crate::message::{HeaderSection, MessageBuffer, Outgoing, TraceInfo, received_header};
use crate::plugins::bindings::Stage;
use crate::plugins::chain::{DataState, Outcome};
use crate::smtp::data::{DataReceiver, Faults, LineEndings};
use crate::smtp::{Mailbox, Reply};
use crate::upstream::Sender;
use crate::upstream::maildir::MaildirSession;

/// How receiving the message ended.
enum Received {
    Complete {
        message: Box<MessageBuffer>,
        faults: Faults,
        spool_error: Option<std::io::Error>,
        size: u64,
    },
    /// The client went away or stopped sending: there is nobody to answer.
    ClientGone,
    /// Idle or too slow: the client gets a 421.
    TimedOut,
    Shutdown,
}

impl Session {
    pub(super) async fn data(&mut self) -> Flow {
        let Some(txn) = &self.transaction else {
            return self.error(Reply::enhanced(503, (5, 5, 1), "Need MAIL command"));
        };
        if txn.recipients.is_empty() {
            self.reply(Reply::enhanced(554, (5, 5, 1), "No valid recipients"));
            return Flow::Continue;
        }
        if txn.broken {
            self.reply(Reply::enhanced(451, (4, 4, 2), "Upstream connection lost, try again later"));
            return Flow::Continue;
        }
        let header = self.trace_header(txn);
        self.reply(Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        if self.io.flush().await.is_err() {
            return Flow::Close;
        }

        let received = self.receive().await;
        let txn = self.transaction.take().expect("checked above");
        self.io.shrink_input();
        if !matches!(received, Received::Complete { .. }) {
            self.plugin_session.end_transaction();
        }
        match received {
            Received::Complete { mut message, faults, spool_error, size } => {
                // A client that sends bare CR, bare LF or NUL is not speaking SMTP: whatever it
                // pipelined after this message is not trusted either, so the session ends after
                // the refusal (as Postfix's smtpd_forbid_bare_newline does).
                let hostile = faults.bad_line_endings() && self.ctx.config.server.line_endings == LineEndings::Reject;
                let (reply, flow) = match refusal(&faults, spool_error.as_ref(), &self.ctx.config) {
                    Some(reply) => {
                        self.upstream.rset().await;
                        (reply, Flow::Continue)
                    }
                    None => self.filter_and_relay(&txn, &mut message, header).await,
                };
                self.plugin_session.end_transaction();
                self.log_transaction(&txn, size, &reply);
                self.reply(reply);
                if flow == Flow::Close {
                    return Flow::Close;
                }
                if hostile {
                    return Flow::Close;
                }
                if faults.bad_line_endings() && !self.io.input.is_empty() {
                    // Normalised, the message went on; commands pipelined behind sloppy line
                    // endings are exactly what smuggling looks like, so they are not executed.
                    return self.synchronization_error(&crate::smtp::Command::Data);
                }
                Flow::Continue
            }
            Received::ClientGone => {
                tracing::info!(sender = %txn.mail.sender, "client left during DATA; nothing relayed");
                Flow::Close
            }
            Received::TimedOut => {
                tracing::info!(sender = %txn.mail.sender, "client too slow during DATA; nothing relayed");
                self.reply(Reply::enhanced(
                    421,
                    (4, 4, 2),
                    format!("{} Timeout during DATA, closing connection", self.ctx.hostname),
                ));
                Flow::Close
            }
            Received::Shutdown => {
                self.reply(Reply::enhanced(421, (4, 3, 2), format!("{} Service shutting down", self.ctx.hostname)));
                Flow::Close
            }
        }
    }

    /// Runs the data stage over the received message, then relays it (or quarantines it) as the
    /// plugins left it. Returns the client's reply and whether the session goes on.
    async fn filter_and_relay(
        &mut self,
        txn: &Transaction,
        message: &mut MessageBuffer,
        trace: String,
    ) -> (Reply, Flow) {
        let plugins = self.ctx.plugins.clone();
        let auth = self.ctx.auth.clone();
        if !plugins.wants(Stage::Data) && auth.is_none() {
            let mut out = Outgoing::unchanged(trace.into_bytes(), message);
            return (self.relay(&mut out).await, Flow::Continue);
        }
        let local_failure = |err: std::io::Error| {
            tracing::error!(error = %err, "cannot read the buffered message");
            (Reply::enhanced(451, (4, 3, 0), "Local error reading the message, try again later"), Flow::Continue)
        };
        let mut headers = match message.read_header_section(MAX_HEADER_SECTION).await {
            Ok(head) => HeaderSection::parse(&head),
            Err(err) => return local_failure(err),
        };
        let mut auth_header = String::new();
        if let Some(auth) = &auth {
            if auth.checks_enabled() {
                let raw = match message.read_prefix(0, message.len() as usize).await {
                    Ok(raw) => raw,
                    Err(err) => return local_failure(err),
                };
                let helo = self.helo.as_ref().map_or("", |h| h.name.as_str()).to_string();
                let earlier = EarlierChecks {
                    client_ip: self.peer.ip(),
                    helo: &helo,
                    mail_from: txn.mail.sender.as_str(),
                    iprev: self.auth_state.iprev.as_ref(),
                    spf_helo: self.auth_state.spf_helo.as_ref().map(|(_, spf)| spf),
                    spf_mail: self.auth_state.spf_mail.as_ref(),
                };
                let checks = auth.message(&raw, &earlier).await;
                let results = self.plugin_session.auth_mut();
                results.dkim = checks.dkim;
                results.arc = checks.arc;
                results.dmarc = checks.dmarc;
                auth_header = checks.header;
            }
            remove_forged_auth_results(&mut headers, auth.authserv_id());
        }
        let body_offset = headers.body_offset;
        let body_len = message.len().saturating_sub(body_offset);
        let original_body = match message.read_prefix(body_offset, plugins.max_body_needed()).await {
            Ok(body) => body,
            Err(err) => return local_failure(err),
        };
        let mut state = DataState::new(
            txn.mail.sender.clone(),
            txn.recipients.clone(),
            headers,
            Arc::new(original_body),
            body_len,
            txn.mail.smtputf8,
            self.ctx.config.limits.max_message_size.bytes(),
        );
        match plugins.run(&mut self.plugin_session, &mut state).await {
            Outcome::Continue => {}
            Outcome::Reject(reply) | Outcome::Tempfail(reply) => {
                self.upstream.rset().await;
                return (reply, Flow::Continue);
            }
            Outcome::Disconnect(reply) => {
                self.upstream.rset().await;
                return (reply, Flow::Close);
            }
        }

        let body_is_empty = state.replaced_body.as_ref().map_or(body_len == 0, |b| b.is_empty());
        let mut prefix = Vec::new();
        if let Some((plugin, reason)) = &state.quarantine {
            prefix.extend_from_slice(format!("X-Wasmtp-Quarantine: {plugin}: {reason}\r\n").as_bytes());
        }
        prefix.extend_from_slice(trace.as_bytes());
        prefix.extend_from_slice(auth_header.as_bytes());
        prefix.extend_from_slice(&state.headers.render(body_is_empty));
        let body = match state.replaced_body.take() {
            Some(body) => Body::Replaced(Arc::unwrap_or_clone(body)),
            None => Body::Original { offset: body_offset },
        };
        let mut out = Outgoing::new(prefix, body, message);
        if let Some(auth) = &auth
            && state.quarantine.is_none()
        {
            // Signed last, over the message exactly as it leaves, so no edit can break it.
            match sign(auth, &mut out).await {
                Ok(None) => {}
                Ok(Some(signature)) => out.prepend(signature.as_bytes()),
                Err(err) => {
                    tracing::error!(error = %err, "DKIM signing failed");
                    self.upstream.rset().await;
                    return (
                        Reply::enhanced(451, (4, 3, 0), "Cannot sign the message right now, try again later"),
                        Flow::Continue,
                    );
                }
            }
        }
        let sender = Sender {
            mailbox: &state.sender,
            size: txn.mail.size.map(|_| out.len()),
            body: txn.mail.body,
            smtputf8: txn.mail.smtputf8,
        };

        if let Some((plugin, reason)) = &state.quarantine {
            self.upstream.rset().await;
            let reply = self.quarantine(&sender, &state.recipients, &mut out).await;
            tracing::info!(%plugin, %reason, %reply, "message quarantined");
            return (reply, Flow::Continue);
        }
        if state.envelope_changed {
            tracing::info!(sender = %state.sender, recipients = ?state.recipients, "envelope changed by plugins: replaying upstream");
            match self.upstream.replay(&sender, &state.recipients).await {
                Ok(None) => {}
                Ok(Some(refusal)) => return (refusal, Flow::Continue),
                Err(err) => {
                    tracing::warn!(error = %err, "upstream failed replaying the envelope");
                    return (err.client_reply(), Flow::Continue);
                }
            }
        }
        (self.relay(&mut out).await, Flow::Continue)
    }

    /// Sends the message upstream and returns the upstream's final reply (or a 4xx).
    async fn relay(&mut self, out: &mut Outgoing<'_>) -> Reply {
        match self.upstream.data(out).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, "upstream failed at DATA");
                err.client_reply()
            }
        }
    }

    /// Delivers into the quarantine Maildir instead of the upstream.
    async fn quarantine(&self, sender: &Sender<'_>, recipients: &[Mailbox], out: &mut Outgoing<'_>) -> Reply {
        let Some(maildir) = &self.ctx.quarantine else {
            tracing::error!("quarantine requested but no quarantine Maildir is set up");
            return Reply::enhanced(451, (4, 3, 0), "Cannot store the message right now, try again later");
        };
        let mut session = MaildirSession::new(maildir.clone());
        session.mail(sender);
        for recipient in recipients {
            session.rcpt(recipient);
        }
        match session.deliver(out).await {
            Ok(_) => Reply::enhanced(250, (2, 0, 0), "Ok: message accepted"),
            Err(err) => {
                tracing::error!(error = %err, "quarantine delivery failed");
                err.client_reply()
            }
        }
    }

    fn trace_header(&self, txn: &Transaction) -> String {
        let helo = self.helo.as_ref().expect("MAIL needs HELO");
        let protocol = match (helo.esmtp, txn.mail.smtputf8) {
            (_, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, false) => "SMTP",
        };
        let id = format!("{}.{}", self.id, self.transactions + 1);
        let single = match txn.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        received_header(&TraceInfo {
            helo: &helo.name,
            client_ip: self.peer.ip(),
            hostname: &self.ctx.hostname,
            protocol,
            id: &id,
            single_recipient: single,
            time: SystemTime::now(),
        })
    }

    /// Reads the message up to its end of data. Whatever happens, input is consumed exactly to
    /// the end of data, so the next command is read from the right place.
    async fn receive(&mut self) -> Received {
        let config = &self.ctx.config;
        let limits = &config.limits;
        let mut receiver =
            DataReceiver::new(config.server.line_endings, limits.max_message_size.bytes(), limits.max_line_length);
        let mut message = MessageBuffer::new(limits.memory_buffer.bytes() as usize, &self.ctx.spool_dir);
        let mut spool_error = None;
        let idle = config.timeouts.idle;
        let min_rate = config.timeouts.min_data_rate.bytes();
        let started = TokioInstant::now();
        let mut content = Vec::with_capacity(DATA_READ);
        loop {
            if !self.io.input.is_empty() {
                let fed = receiver.feed(&self.io.input, &mut content);
                let _ = self.io.input.split_to(fed.consumed);
                if spool_error.is_none()
                    && let Err(err) = message.append(&content).await
                {
                    tracing::error!(error = %err, spool = %self.ctx.spool_dir.display(), "cannot buffer message");
                    spool_error = Some(err);
                }
                content.clear();
                if fed.done {
                    let size = receiver.size();
                    return Received::Complete {
                        message: Box::new(message),
                        faults: receiver.faults(),
                        spool_error,
                        size,
                    };
                }
            }
            // Each read may take up to `idle`; the whole transfer may take `idle` plus the time
            // the minimum rate allows for what arrived so far.
            let allowance = if min_rate == 0 {
                Duration::MAX
            } else {
                idle + Duration::from_secs_f64(receiver.size() as f64 / min_rate as f64)
            };
            let deadline =
                (TokioInstant::now() + idle).min(started.checked_add(allowance).unwrap_or(started + idle * 1000));
            let shutdown = self.ctx.shutdown.clone();
            tokio::select! {
                outcome = tokio::time::timeout_at(deadline, self.io.read_more(DATA_READ)) => match outcome {
                    Err(_) => return Received::TimedOut,
                    Ok(ReadOutcome::Data) => {}
                    Ok(ReadOutcome::Eof | ReadOutcome::Failed(_)) => return Received::ClientGone,
                },
                _ = shutdown.expired() => return Received::Shutdown,
            }
        }
    }

    fn log_transaction(&mut self, txn: &Transaction, size: u64, reply: &Reply) {
        self.transactions += 1;
        let outcome = match reply.code() {
            200..=299 => "delivered",
            400..=499 => "tempfailed",
            _ => "rejected",
        };
        tracing::info!(
            sender = %txn.mail.sender,
            recipients = txn.recipients.len(),
            size,
            outcome,
            upstream = %self.upstream.describe(),
            reply = %reply,
            duration_ms = Instant::now().duration_since(txn.started).as_millis() as u64,
            "transaction"
        );
    }
}

/// The reply for a message that must not be relayed, if any.
fn refusal(faults: &Faults, spool_error: Option<&std::io::Error>, config: &crate::config::Config) -> Option<Reply> {
    if faults.too_big {
        return Some(Reply::enhanced(552, (5, 3, 4), "Message size exceeds fixed limit"));
    }
    if faults.bad_line_endings() && config.server.line_endings == LineEndings::Reject {
        return Some(Reply::enhanced(
            550,
            (5, 6, 0),
            "Message contains bare CR, bare LF or NUL; send lines ending in CRLF",
        ));
    }
    if faults.long_line {
        return Some(Reply::enhanced(
            550,
            (5, 6, 0),
            format!("Message contains a line longer than {} octets", config.limits.max_line_length),
        ));
    }
    if spool_error.is_some() {
        return Some(Reply::enhanced(451, (4, 3, 0), "Cannot store the message right now, try again later"));
    }
    None
}

/// Removes `Authentication-Results:` fields that claim our authserv-id: only we may write
/// those (RFC 8601 §5).
fn remove_forged_auth_results(headers: &mut HeaderSection, authserv_id: &str) {
    while let Some(i) = headers.fields.iter().position(|f| {
        f.name.eq_ignore_ascii_case("Authentication-Results")
            && f.value.split(';').next().is_some_and(|id| id.trim().eq_ignore_ascii_case(authserv_id))
    }) {
        tracing::info!(authserv_id, "removed an Authentication-Results header claiming our authserv-id");
        headers.remove(i);
    }
}

/// The DKIM signature of the outgoing message, if signing is configured.
async fn sign(auth: &Auth, out: &mut Outgoing<'_>) -> Result<Option<String>, String> {
    let mut whole = Vec::with_capacity(out.len() as usize);
    out.rewind().await.map_err(|e| e.to_string())?;
    while let Some(chunk) = out.next_chunk().await.map_err(|e| e.to_string())? {
        whole.extend_from_slice(chunk);
    }
    auth.sign(&whole).transpose()
}
