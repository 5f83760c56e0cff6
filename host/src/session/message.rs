//! What happens to a received message, in phases: read its header section, authenticate it,
//! run the data stage, assemble what leaves (trace and authentication headers, edited header
//! section, body), sign it, and deliver it — upstream, replaying the envelope when plugins
//! changed it, or into the quarantine. Each phase either hands its result on or ends with the
//! [`Answer`] the client hears.

use std::sync::Arc;

use super::data::Answer;
use super::transaction::Transaction;
use super::{Flow, Session};
use crate::auth::{Auth, EarlierChecks};
use crate::filter::Outcome;
use crate::filter::api::Stage;
use crate::filter::stages::DataState;
use crate::message::headers::MAX_HEADER_SECTION;
use crate::message::outgoing::Body;
use crate::message::{HeaderSection, MessageBuffer, Outgoing};
use crate::replies;
use crate::smtp::Reply;
use crate::upstream::Sender;
use crate::upstream::maildir::MaildirSession;

/// A phase's result, or the answer that ends the message's way here.
type Phase<T> = Result<T, Answer>;

fn cannot_read(err: std::io::Error) -> Answer {
    tracing::error!(error = %err, "cannot read the buffered message");
    Answer::reply(replies::cannot_read_message())
}

impl Session {
    /// Filters the received message and relays it (or quarantines it) as the plugins left it.
    pub(super) async fn filter_and_relay(
        &mut self,
        txn: &mut Transaction,
        message: &mut MessageBuffer,
        trace: String,
    ) -> Answer {
        self.record_message(message).await;
        let auth = self.ctx.auth.clone();
        if !self.listener.chain.wants(Stage::Data) && auth.is_none() {
            let mut out = Outgoing::unchanged(trace.into_bytes(), message);
            if let Some(refusal) = self.cannot_carry(txn.eight_bit, &out) {
                return refusal;
            }
            return Answer::reply(self.relay(&mut out).await);
        }
        let phases = async {
            let mut headers = read_headers(message, self.ctx.config.limits.max_header_fields).await?;
            if let Some(auth) = &auth {
                if auth.checks_enabled() {
                    self.authenticate(auth, txn, message).await?;
                }
                remove_forged_auth_results(&mut headers, auth.authserv_id());
            }
            let state = self.run_data_stage(txn, message, headers).await?;
            let auth_header = txn.message_auth.as_ref().map_or("", |checks| checks.header.as_str());
            let mut out = assemble(&state, &trace, auth_header, message);
            if let Some(auth) = &auth
                && state.quarantine.is_none()
            {
                sign(auth, &mut out).await?;
            }
            Ok(self.deliver(txn, &state, &mut out).await)
        };
        phases.await.unwrap_or_else(|answer| answer)
    }

    /// Writes the message as received into the session's recording, if there is one; a message
    /// that cannot be kept ends the recording.
    async fn record_message(&mut self, message: &mut MessageBuffer) {
        let (Some(recording), Some(recorder)) = (&mut self.recording, self.ctx.recorder.clone()) else { return };
        let kept = match message.view().await {
            Ok(raw) => recorder.message(recording, &raw).await,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read the message for the session's recording");
                false
            }
        };
        if !kept {
            self.recording = None;
        }
    }

    /// DKIM, ARC and DMARC over the received message, kept in the transaction for plugins and
    /// for our `Authentication-Results:` header.
    async fn authenticate(&self, auth: &Auth, txn: &mut Transaction, message: &mut MessageBuffer) -> Phase<()> {
        // In place: the buffer in memory, or the spilled file mapped read-only, so verifying
        // a large message adds no copy of it to the heap.
        let raw = message.view().await.map_err(cannot_read)?;
        let helo = self.helo.as_ref().map_or("", |h| h.name.as_str());
        let earlier = EarlierChecks {
            client_ip: self.client_addr().ip(),
            helo,
            mail_from: txn.mail.sender.as_str(),
            iprev: self.iprev.as_ref(),
            spf_helo: self.spf_helo.as_ref().map(|(_, spf)| spf),
            spf_mail: txn.spf_mail.as_ref(),
        };
        txn.message_auth = Some(auth.message(&raw, &earlier).await);
        Ok(())
    }

    /// Runs the data stage over the message as received.
    async fn run_data_stage(
        &mut self,
        txn: &mut Transaction,
        message: &mut MessageBuffer,
        headers: HeaderSection,
    ) -> Phase<DataState> {
        let body_offset = headers.body_offset;
        let body_len = message.len().saturating_sub(body_offset);
        let seen =
            message.read_prefix(body_offset, self.listener.chain.max_body_needed()).await.map_err(cannot_read)?;
        let mut state = DataState::new(
            txn.mail.sender.clone(),
            txn.recipients.clone(),
            headers,
            Arc::new(seen),
            body_len,
            txn.mail.smtputf8,
            self.ctx.config.limits.max_message_size.bytes(),
        );
        match self.run_transaction_stage(txn, &mut state).await {
            Outcome::Continue => Ok(state),
            Outcome::Reject(reply) | Outcome::Tempfail(reply) => Err(Answer::reply(reply)),
            Outcome::Disconnect(reply) => Err(Answer { reply, flow: Flow::Close }),
        }
    }

    /// Delivers the assembled message: into the quarantine, or upstream after replaying the
    /// envelope if plugins changed it.
    async fn deliver(&mut self, txn: &Transaction, state: &DataState, out: &mut Outgoing<'_>) -> Answer {
        let sender = Sender {
            mailbox: &state.sender,
            size: txn.mail.size.map(|_| out.len()),
            body: txn.mail.body,
            smtputf8: txn.mail.smtputf8,
        };
        if let Some((plugin, reason)) = &state.quarantine {
            // The upstream transaction is abandoned when the transaction ends.
            let reply = self.quarantine(&sender, state, out).await;
            tracing::info!(%plugin, %reason, %reply, "message quarantined");
            return Answer::reply(reply);
        }
        let eight_bit = txn.eight_bit || state.replaced_body.as_ref().is_some_and(|b| !b.is_ascii());
        if let Some(refusal) = self.cannot_carry(eight_bit, out) {
            return refusal;
        }
        if state.envelope_changed {
            tracing::info!(sender = %state.sender, recipients = %super::mailboxes(&state.recipients), "envelope changed by plugins: replaying upstream");
            match self.upstream.replay(&sender, &state.recipients).await {
                Ok(None) => {}
                Ok(Some(refusal)) => return Answer::reply(refusal),
                Err(err) => {
                    tracing::warn!(error = %err, "upstream failed replaying the envelope");
                    return Answer::reply(err.client_reply());
                }
            }
        }
        Answer::reply(self.relay(out).await)
    }

    /// The connection carrying the transaction must take the message as it is: never raw 8-bit
    /// to an upstream without 8BITMIME, never more than its SIZE.
    fn cannot_carry(&self, eight_bit: bool, out: &Outgoing<'_>) -> Option<Answer> {
        let caps = self.upstream.current_capabilities();
        if eight_bit && !caps.eight_bit_mime {
            tracing::info!("8-bit message refused: the upstream does not offer 8BITMIME");
            return Some(Answer::reply(replies::upstream_cannot_take_8bit()));
        }
        if caps.size.is_some_and(|max| out.len() > max) {
            tracing::info!(size = out.len(), "message over the upstream's SIZE");
            return Some(Answer::reply(replies::too_big_for_upstream()));
        }
        None
    }

    /// Sends the message upstream and returns the upstream's final reply (or a 4xx).
    pub(super) async fn relay(&mut self, out: &mut Outgoing<'_>) -> Reply {
        match self.upstream.data(out).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, "upstream failed at DATA");
                err.client_reply()
            }
        }
    }

    /// Delivers into the quarantine Maildir instead of the upstream.
    async fn quarantine(&self, sender: &Sender<'_>, state: &DataState, out: &mut Outgoing<'_>) -> Reply {
        let Some(maildir) = &self.ctx.quarantine else {
            tracing::error!("quarantine requested but no quarantine Maildir is set up");
            return replies::cannot_store();
        };
        let mut session = MaildirSession::new(maildir.clone());
        session.mail(sender);
        for recipient in &state.recipients {
            session.rcpt(recipient);
        }
        match session.deliver(out).await {
            Ok(_) => replies::message_accepted(),
            Err(err) => {
                tracing::error!(error = %err, "quarantine delivery failed");
                err.client_reply()
            }
        }
    }
}

async fn read_headers(message: &mut MessageBuffer, max_fields: usize) -> Phase<HeaderSection> {
    let head = message.read_header_section(MAX_HEADER_SECTION).await.map_err(cannot_read)?;
    HeaderSection::parse(&head, max_fields).map_err(|err| {
        tracing::info!(error = %err, "message refused");
        Answer::reply(replies::too_many_header_fields())
    })
}

/// The message as it leaves: the quarantine note, our trace and authentication headers, the
/// header section as plugins left it, and the body (the original bytes or a replacement).
fn assemble<'m>(state: &DataState, trace: &str, auth_header: &str, message: &'m mut MessageBuffer) -> Outgoing<'m> {
    let body_is_empty = state.body_len() == 0;
    let mut prefix = Vec::new();
    if let Some((plugin, reason)) = &state.quarantine {
        prefix.extend_from_slice(format!("X-Wasmtp-Quarantine: {plugin}: {reason}\r\n").as_bytes());
    }
    prefix.extend_from_slice(trace.as_bytes());
    prefix.extend_from_slice(auth_header.as_bytes());
    prefix.extend_from_slice(&state.headers.render(body_is_empty));
    let body = match &state.replaced_body {
        Some(body) => Body::Replaced(body.clone()),
        None => Body::Original { offset: state.headers.body_offset },
    };
    Outgoing::new(prefix, body, message)
}

/// Removes `Authentication-Results:` fields that claim our authserv-id, in one pass: only we
/// may write those (RFC 8601 §5).
fn remove_forged_auth_results(headers: &mut HeaderSection, authserv_id: &str) {
    let removed = headers.remove_where(|f| {
        f.name.eq_ignore_ascii_case("Authentication-Results")
            && f.value.split(';').next().is_some_and(|id| id.trim().eq_ignore_ascii_case(authserv_id))
    });
    if removed > 0 {
        tracing::info!(authserv_id, removed, "removed Authentication-Results fields claiming our authserv-id");
    }
}

/// Signs the outgoing message last, over exactly what leaves, so no edit can break the
/// signature; the `DKIM-Signature:` header goes in front. The message streams through the
/// signer: only its header section is held in memory.
async fn sign(auth: &Auth, out: &mut Outgoing<'_>) -> Phase<()> {
    let Some(mut signing) = auth.signing() else { return Ok(()) };
    let signed = async {
        out.rewind().await.map_err(|e| e.to_string())?;
        while let Some(chunk) = out.next_chunk().await.map_err(|e| e.to_string())? {
            signing.write(chunk);
        }
        signing.finish().map_err(|e| e.to_string())
    };
    match signed.await {
        Ok(signature) => {
            out.prepend(signature.as_bytes());
            Ok(())
        }
        Err(err) => {
            tracing::error!(error = %err, "DKIM signing failed");
            Err(Answer::reply(replies::cannot_sign()))
        }
    }
}
