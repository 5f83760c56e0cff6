//! DATA: answer 354 ourselves, receive the whole message (bounded, spilled to disk when large),
//! refuse what cannot be relayed, and hand the rest to [`super::message`], which filters and
//! relays it — so the client hears 250 only for a message the upstream took.

use std::time::{Duration, SystemTime};

use tokio::time::Instant as TokioInstant;

use super::io::{DATA_READ, ReadOutcome};
use super::transaction::{Ending, Transaction};
use super::{Flow, Session};
use crate::config::Config;
use crate::message::{MessageBuffer, TraceInfo, received_header};
use crate::replies;
use crate::smtp::Reply;
use crate::smtp::data::{DataReceiver, Faults, LineEndings};

/// How receiving the message ended.
enum Received {
    Complete {
        message: Box<MessageBuffer>,
        faults: Faults,
        spool_error: Option<std::io::Error>,
        size: u64,
        /// Some octet is outside ASCII.
        eight_bit: bool,
    },
    /// The client went away or stopped sending: there is nobody to answer.
    ClientGone,
    /// Idle or too slow: the client gets a 421.
    TimedOut,
    Shutdown,
}

/// What the client hears for its message, and whether the session goes on.
#[derive(Debug)]
pub(super) struct Answer {
    pub reply: Reply,
    pub flow: Flow,
}

impl Answer {
    pub fn reply(reply: Reply) -> Self {
        Self { reply, flow: Flow::Continue }
    }
}

impl Session {
    pub(super) async fn data(&mut self) -> Flow {
        let Some(txn) = &self.transaction else {
            return self.error(replies::bad_sequence("Need MAIL command"));
        };
        if txn.recipients.is_empty() {
            self.reply(replies::no_valid_recipients());
            return Flow::Continue;
        }
        if txn.broken {
            self.reply(replies::upstream_lost());
            return Flow::Continue;
        }
        let trace = self.trace_header(txn);
        self.reply(replies::start_data());
        if self.io.flush().await.is_err() {
            return Flow::Close;
        }

        let received = self.receive().await;
        let mut txn = self.transaction.take().expect("checked above");
        self.io.shrink_input();
        let (mut message, faults, spool_error, size) = match received {
            Received::Complete { message, faults, spool_error, size, eight_bit } => {
                txn.eight_bit = eight_bit;
                (message, faults, spool_error, size)
            }
            Received::ClientGone => {
                self.end_transaction(txn, Ending::Abandoned("client left during DATA")).await;
                return Flow::Close;
            }
            Received::TimedOut => {
                self.end_transaction(txn, Ending::Abandoned("client too slow during DATA")).await;
                self.reply(replies::data_timeout(&self.ctx.hostname));
                return Flow::Close;
            }
            Received::Shutdown => {
                self.end_transaction(txn, Ending::Abandoned("shut down during DATA")).await;
                self.reply(replies::shutting_down(&self.ctx.hostname));
                return Flow::Close;
            }
        };
        let answer = match refusal(&faults, spool_error.as_ref(), &self.ctx.config) {
            Some(reply) => Answer::reply(reply),
            None => self.filter_and_relay(&mut txn, &mut message, trace).await,
        };
        self.end_transaction(txn, Ending::Answered { size, reply: &answer.reply }).await;
        self.reply(answer.reply);
        // A client that sends bare CR, bare LF or NUL is not speaking SMTP: whatever it
        // pipelined after this message is not trusted either, so the session ends after the
        // refusal (as Postfix's smtpd_forbid_bare_newline does).
        let hostile = faults.bad_line_endings() && self.ctx.config.server.line_endings == LineEndings::Reject;
        if answer.flow == Flow::Close || hostile {
            return Flow::Close;
        }
        if faults.bad_line_endings() && !self.io.input.is_empty() {
            // Normalised, the message went on; commands pipelined behind sloppy line endings
            // are exactly what smuggling looks like, so they are not executed.
            return self.synchronization_error(&crate::smtp::Command::Data);
        }
        Flow::Continue
    }

    fn trace_header(&self, txn: &Transaction) -> String {
        let helo = self.helo.as_ref().expect("MAIL needs HELO");
        let helo_name = self.client_helo().unwrap_or(&helo.name);
        // RFC 3848 and RFC 6531: S for TLS, A for an authenticated client.
        let base = match (helo.esmtp, txn.mail.smtputf8) {
            (_, true) => "UTF8SMTP",
            (true, false) => "ESMTP",
            (false, false) => "SMTP",
        };
        let secured = if self.tls.is_some() { "S" } else { "" };
        let authenticated = if self.authenticated_as.is_some() { "A" } else { "" };
        let protocol = if base == "SMTP" { base.to_string() } else { format!("{base}{secured}{authenticated}") };
        let tls = self.tls.as_ref().map(|t| format!("using {} with cipher {}", t.version, t.cipher));
        let id = format!("{}.{}", self.id, self.transactions + 1);
        let single = match txn.recipients.as_slice() {
            [only] => Some(only.as_str()),
            _ => None,
        };
        received_header(&TraceInfo {
            helo: helo_name,
            client_ip: self.client_addr().ip(),
            hostname: &self.ctx.hostname,
            protocol: &protocol,
            tls: tls.as_deref(),
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
        let mut eight_bit = false;
        loop {
            if !self.io.input.is_empty() {
                let fed = receiver.feed(&self.io.input, &mut content);
                let _ = self.io.input.split_to(fed.consumed);
                eight_bit = eight_bit || !content.is_ascii();
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
                        eight_bit,
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
}

/// The reply for a message that must not be relayed, if any.
fn refusal(faults: &Faults, spool_error: Option<&std::io::Error>, config: &Config) -> Option<Reply> {
    if faults.too_big {
        return Some(replies::message_too_big());
    }
    if faults.bad_line_endings() && config.server.line_endings == LineEndings::Reject {
        return Some(replies::bare_line_ending_in_data());
    }
    if faults.long_line {
        return Some(replies::data_line_too_long(config.limits.max_line_length));
    }
    if spool_error.is_some() {
        return Some(replies::cannot_store());
    }
    None
}
