//! MAIL and RCPT: the envelope, checked against what was advertised, passed through the plugin
//! chain (which may rewrite it), and relayed live so the upstream's answer for the sender and for
//! each recipient reaches the client.

use super::record::{self, TransactionRecord};
use super::transaction::Transaction;
use super::{Flow, Session, mailboxes};
use crate::filter::Outcome;
use crate::filter::api::Param;
use crate::filter::api::Stage;
use crate::filter::host::NoteScopes;
use crate::filter::stages::{MailState, RcptState, StageState};
use crate::replies;
use crate::smtp::command::{Body, MailFrom, RcptTo};
use crate::smtp::{Mailbox, Reply};
use crate::upstream::Sender;

/// The client's MAIL parameters as plugins see them.
fn mail_params(mail: &MailFrom) -> Vec<Param> {
    let mut params = Vec::new();
    if let Some(size) = mail.size {
        params.push(Param { name: "SIZE".into(), value: Some(size.to_string()) });
    }
    if let Some(body) = mail.body {
        let value = if body == Body::EightBitMime { "8BITMIME" } else { "7BIT" };
        params.push(Param { name: "BODY".into(), value: Some(value.into()) });
    }
    if mail.smtputf8 {
        params.push(Param { name: "SMTPUTF8".into(), value: None });
    }
    params
}

impl Session {
    /// Runs the plugins of `S::STAGE` over `state` inside `txn`.
    pub(super) async fn run_transaction_stage<S: StageState>(
        &mut self,
        txn: &mut Transaction,
        state: &mut S,
    ) -> Outcome {
        let chain = self.listener.chain.clone();
        let Some(conn) = self.stage_facts(Some(txn), chain.wants(S::STAGE)) else { return Outcome::Continue };
        let notes = NoteScopes { session: &mut self.notes, transaction: Some(&mut txn.notes) };
        let Some(record) = self.recording.as_mut().and_then(|r| r.transaction()) else {
            return chain.run(&conn, notes, state).await;
        };
        let recipient = (S::STAGE == Stage::Rcpt).then(|| record.rcpt.last().cloned()).flatten();
        let mut decisions = record::Decisions { out: &mut record.decisions, recipient };
        chain.run_observed(&conn, notes, state, &mut decisions).await
    }

    pub(super) async fn mail(&mut self, mut mail: MailFrom) -> Flow {
        let Some(helo) = &self.helo else {
            return self.error(replies::bad_sequence("Send HELO/EHLO first"));
        };
        if self.transaction.is_some() {
            return self.error(replies::bad_sequence("Nested MAIL command"));
        }
        if self.listener.mode.submission() && self.authenticated_as.is_none() {
            return self.error(replies::authentication_required());
        }
        let has_params = mail.size.is_some() || mail.body.is_some() || mail.smtputf8 || !mail.unknown.is_empty();
        if has_params && !helo.esmtp {
            return self.error(replies::not_supported("MAIL parameters without EHLO are"));
        }
        if let Some(param) = mail.unknown.first() {
            return self.error(replies::not_supported(&format!("Parameter {param} is")));
        }
        if mail.body == Some(Body::EightBitMime) && !self.advertised.eight_bit_mime {
            return self.error(replies::not_supported("BODY=8BITMIME is"));
        }
        if mail.smtputf8 && !self.advertised.smtputf8 {
            return self.error(replies::not_supported("SMTPUTF8 is"));
        }
        if mail.size.is_some_and(|size| size > self.advertised.size) {
            self.reply(replies::message_too_big());
            return Flow::Continue;
        }

        // The transaction begins here, so notes set at the mail stage belong to it; refused, it
        // simply ends: nothing was opened upstream.
        let spf_mail = self.authenticate_sender(&mail).await;
        let mut txn = Transaction::new(mail.clone(), spf_mail);
        let mut state = MailState { sender: mail.sender.clone(), params: mail_params(&mail), utf8: mail.smtputf8 };
        if let Some(recording) = &mut self.recording {
            let from = mail.sender.as_str().to_string();
            let mail_params = state.params.iter().map(Param::to_string).collect();
            recording.transactions.push(TransactionRecord { from, mail_params, ..TransactionRecord::default() });
        }
        let outcome = self.run_transaction_stage(&mut txn, &mut state).await;
        if outcome != Outcome::Continue {
            return self.refuse(outcome);
        }
        if state.sender.as_str() != mail.sender.as_str() {
            tracing::info!(from = %mail.sender, to = %state.sender, "sender rewritten by a plugin");
        }
        mail.sender = state.sender;

        // What the client was promised is checked against the connection that will carry
        // the transaction: the upstream may have changed since (a restart, a reload).
        let caps = match self.upstream.connection_capabilities().await {
            Ok(caps) => caps,
            Err(err) => {
                tracing::warn!(error = %err, sender = %mail.sender, "upstream failed at MAIL");
                self.reply(err.client_reply());
                return Flow::Continue;
            }
        };
        let refusal = if mail.size.is_some_and(|size| caps.size.is_some_and(|max| size > max)) {
            Some(replies::too_big_for_upstream())
        } else if mail.body == Some(Body::EightBitMime) && !caps.eight_bit_mime {
            Some(replies::upstream_cannot_take_8bit())
        } else if mail.smtputf8 && !caps.smtputf8 {
            Some(replies::upstream_cannot_take_utf8())
        } else {
            None
        };
        if let Some(refusal) = refusal {
            tracing::info!(sender = %mail.sender, reply = %refusal, "the upstream connection cannot carry this transaction");
            self.reply(refusal);
            return Flow::Continue;
        }

        let reply = match self.upstream.mail(&Sender::from(&mail)).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, sender = %mail.sender, "upstream failed at MAIL");
                err.client_reply()
            }
        };
        if reply.is_positive() {
            txn.mail = mail;
            self.transaction = Some(txn);
        } else {
            tracing::info!(sender = %mail.sender, %reply, "sender refused");
        }
        self.reply(reply);
        Flow::Continue
    }

    /// SPF for the HELO identity (once per HELO name) and the MAIL FROM identity, for plugins
    /// and the `Authentication-Results:` header. Returns the MAIL FROM result.
    async fn authenticate_sender(&mut self, mail: &MailFrom) -> Option<crate::auth::Spf> {
        let auth = self.ctx.auth.clone()?;
        let helo = self.helo.as_ref().map_or(String::new(), |h| h.name.clone());
        let ip = self.client_addr().ip();
        if self.spf_helo.as_ref().is_none_or(|(name, _)| *name != helo) {
            self.spf_helo = auth.spf_helo(ip, &helo).await.map(|spf| (helo.clone(), spf));
        }
        auth.spf_mail(ip, &helo, mail.sender.as_str()).await
    }

    pub(super) async fn rcpt(&mut self, rcpt: RcptTo) -> Flow {
        let Some(mut txn) = self.transaction.take() else {
            return self.error(replies::bad_sequence("Need MAIL before RCPT"));
        };
        let flow = self.rcpt_in(&mut txn, rcpt).await;
        self.transaction = Some(txn);
        flow
    }

    async fn rcpt_in(&mut self, txn: &mut Transaction, rcpt: RcptTo) -> Flow {
        if let Some(param) = rcpt.unknown.first() {
            return self.error(replies::not_supported(&format!("Parameter {param} is")));
        }
        if rcpt.recipient.is_utf8() && !txn.mail.smtputf8 {
            self.reply(replies::needs_smtputf8());
            return Flow::Continue;
        }
        if txn.broken {
            self.reply(replies::upstream_lost());
            return Flow::Continue;
        }
        if txn.recipients.len() >= self.ctx.config.limits.max_recipients {
            self.reply(replies::too_many_recipients());
            return Flow::Continue;
        }
        if !self.may_relay_to(&rcpt.recipient) {
            tracing::info!(recipient = %rcpt.recipient, "relay refused");
            self.reply(replies::relay_denied());
            return Flow::Continue;
        }

        if let Some(record) = self.recording.as_mut().and_then(|r| r.transaction()) {
            record.rcpt.push(rcpt.recipient.as_str().to_string());
        }
        let mut state =
            RcptState::new(txn.mail.sender.clone(), txn.recipients.clone(), rcpt.recipient.clone(), txn.mail.smtputf8);
        let outcome = self.run_transaction_stage(txn, &mut state).await;
        if outcome != Outcome::Continue {
            return self.refuse(outcome);
        }
        let relay = state.to_relay();
        if relay.is_empty() {
            tracing::info!(recipient = %rcpt.recipient, "recipient dropped by a plugin");
            self.reply(replies::recipient_ok());
            return Flow::Continue;
        }
        if relay.len() != 1 || relay[0].as_str() != rcpt.recipient.as_str() {
            tracing::info!(recipient = %rcpt.recipient, relayed = %mailboxes(&relay), "recipient rewritten by a plugin");
        }
        let reply = self.relay_recipients(txn, relay).await;
        self.reply(reply);
        Flow::Continue
    }

    /// Relay control of the proxy's own (`[relay]`): off while no domains are listed.
    fn may_relay_to(&self, recipient: &Mailbox) -> bool {
        let relay = &self.ctx.config.relay;
        if relay.accept_domains.is_empty() || self.authenticated_as.is_some() {
            return true;
        }
        let ip = self.client_addr().ip();
        if relay.relay_networks.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        // Postmaster, without a domain, is always ours (RFC 5321 §4.5.1).
        recipient.as_str().rsplit_once('@').is_none_or(|(_, domain)| relay.accepts(domain))
    }

    /// Relays each recipient upstream. The client hears the first refusal if there is one (so
    /// no recipient it asked for is dropped without it knowing), else the first acceptance.
    async fn relay_recipients(&mut self, txn: &mut Transaction, relay: Vec<Mailbox>) -> Reply {
        let max = self.ctx.config.limits.max_recipients;
        let mut first_ok = None;
        let mut first_refusal = None;
        for recipient in relay {
            let reply = if txn.recipients.len() >= max {
                replies::too_many_recipients()
            } else {
                match self.upstream.rcpt(&recipient).await {
                    Ok(reply) => reply,
                    Err(err) => {
                        tracing::warn!(error = %err, %recipient, "upstream failed at RCPT");
                        txn.broken = true;
                        err.client_reply()
                    }
                }
            };
            if reply.is_positive() {
                txn.recipients.push(recipient);
                first_ok.get_or_insert(reply);
            } else {
                tracing::info!(%recipient, %reply, "recipient refused");
                first_refusal.get_or_insert(reply);
            }
        }
        first_refusal.or(first_ok).expect("at least one recipient was relayed")
    }
}
