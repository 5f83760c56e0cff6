//! MAIL and RCPT: the envelope, checked against what was advertised, passed through the plugin
//! chain (which may rewrite it), and relayed live so the upstream's answer for the sender and for
//! each recipient reaches the client.

use std::time::Instant;

use super::{Flow, Session, Transaction};
use crate::plugins::chain::{MailState, Outcome, RcptState};
use crate::smtp::command::{Body, MailFrom, RcptTo};
use crate::smtp::{Mailbox, Reply};
use crate::upstream::Sender;

fn unsupported(what: &str) -> Reply {
    Reply::enhanced(555, (5, 5, 4), format!("{what} not supported"))
}

/// The client's MAIL parameters as plugins see them.
fn mail_params(mail: &MailFrom) -> Vec<(String, Option<String>)> {
    let mut params = Vec::new();
    if let Some(size) = mail.size {
        params.push(("SIZE".to_string(), Some(size.to_string())));
    }
    if let Some(body) = mail.body {
        let value = if body == Body::EightBitMime { "8BITMIME" } else { "7BIT" };
        params.push(("BODY".to_string(), Some(value.to_string())));
    }
    if mail.smtputf8 {
        params.push(("SMTPUTF8".to_string(), None));
    }
    params
}

impl Session {
    pub(super) async fn mail(&mut self, mut mail: MailFrom) -> Flow {
        let Some(helo) = &self.helo else {
            return self.error(Reply::enhanced(503, (5, 5, 1), "Send HELO/EHLO first"));
        };
        if self.transaction.is_some() {
            return self.error(Reply::enhanced(503, (5, 5, 1), "Nested MAIL command"));
        }
        let has_params = mail.size.is_some() || mail.body.is_some() || mail.smtputf8 || !mail.unknown.is_empty();
        if has_params && !helo.esmtp {
            return self.error(unsupported("MAIL parameters without EHLO are"));
        }
        if let Some(param) = mail.unknown.first() {
            return self.error(unsupported(&format!("Parameter {param} is")));
        }
        if mail.body == Some(Body::EightBitMime) && !self.advertised.eight_bit_mime {
            return self.error(unsupported("BODY=8BITMIME is"));
        }
        if mail.smtputf8 && !self.advertised.smtputf8 {
            return self.error(unsupported("SMTPUTF8 is"));
        }
        if mail.size.is_some_and(|size| size > self.advertised.size) {
            self.reply(Reply::enhanced(552, (5, 3, 4), "Message size exceeds fixed limit"));
            return Flow::Continue;
        }

        self.plugin_session.begin_transaction();
        self.authenticate_sender(&mail).await;
        let mut state = MailState { sender: mail.sender.clone(), params: mail_params(&mail), utf8: mail.smtputf8 };
        let plugins = self.ctx.plugins.clone();
        let outcome = plugins.run(&mut self.plugin_session, &mut state).await;
        if outcome != Outcome::Continue {
            self.plugin_session.end_transaction();
            return self.refuse(outcome);
        }
        if state.sender != mail.sender {
            tracing::info!(from = %mail.sender, to = %state.sender, "sender rewritten by a plugin");
            mail.sender = state.sender;
        }

        let reply = match self.upstream.mail(&Sender::from(&mail)).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, sender = %mail.sender, "upstream failed at MAIL");
                err.client_reply()
            }
        };
        if reply.is_positive() {
            self.transaction =
                Some(Transaction { mail, recipients: Vec::new(), started: Instant::now(), broken: false });
        } else {
            self.plugin_session.end_transaction();
            tracing::info!(sender = %mail.sender, %reply, "sender refused");
        }
        self.reply(reply);
        Flow::Continue
    }

    /// SPF for the HELO identity (once per HELO name) and the MAIL FROM identity, for plugins
    /// and the `Authentication-Results:` header.
    async fn authenticate_sender(&mut self, mail: &MailFrom) {
        let Some(auth) = self.ctx.auth.clone() else { return };
        let helo = self.helo.as_ref().map_or(String::new(), |h| h.name.clone());
        let ip = self.peer.ip();
        if self.auth_state.spf_helo.as_ref().is_none_or(|(name, _)| *name != helo)
            && let Some(spf) = auth.spf_helo(ip, &helo).await
        {
            self.plugin_session.auth_mut().spf_helo = Some(crate::auth::spf_check(&spf));
            self.auth_state.spf_helo = Some((helo.clone(), spf));
        }
        if let Some(spf) = auth.spf_mail(ip, &helo, mail.sender.as_str()).await {
            self.plugin_session.auth_mut().spf_mail = Some(crate::auth::spf_check(&spf));
            self.auth_state.spf_mail = Some(spf);
        }
    }

    pub(super) async fn rcpt(&mut self, rcpt: RcptTo) -> Flow {
        let Some(txn) = &self.transaction else {
            return self.error(Reply::enhanced(503, (5, 5, 1), "Need MAIL before RCPT"));
        };
        if let Some(param) = rcpt.unknown.first() {
            return self.error(unsupported(&format!("Parameter {param} is")));
        }
        if rcpt.recipient.is_utf8() && !txn.mail.smtputf8 {
            self.reply(Reply::enhanced(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8"));
            return Flow::Continue;
        }
        if txn.broken {
            self.reply(Reply::enhanced(451, (4, 4, 2), "Upstream connection lost, try again later"));
            return Flow::Continue;
        }
        if txn.recipients.len() >= self.ctx.config.limits.max_recipients {
            self.reply(Reply::enhanced(452, (4, 5, 3), "Too many recipients"));
            return Flow::Continue;
        }

        let mut state = RcptState {
            sender: txn.mail.sender.clone(),
            accepted: txn.recipients.clone(),
            recipient: rcpt.recipient.clone(),
            keep: true,
            added: Vec::new(),
            utf8: txn.mail.smtputf8,
        };
        let plugins = self.ctx.plugins.clone();
        let outcome = plugins.run(&mut self.plugin_session, &mut state).await;
        if outcome != Outcome::Continue {
            return self.refuse(outcome);
        }
        let mut relay: Vec<Mailbox> = Vec::new();
        if state.keep {
            relay.push(rcpt.recipient.clone());
        }
        relay.extend(state.added.into_iter().filter(|a| *a != rcpt.recipient));
        if relay.is_empty() {
            tracing::info!(recipient = %rcpt.recipient, "recipient dropped by a plugin");
            self.reply(Reply::enhanced(250, (2, 1, 5), "Ok"));
            return Flow::Continue;
        }
        if relay != [rcpt.recipient.clone()] {
            tracing::info!(recipient = %rcpt.recipient, relayed = ?relay, "recipient rewritten by a plugin");
        }
        let reply = self.relay_recipients(relay).await;
        self.reply(reply);
        Flow::Continue
    }

    /// Relays each recipient upstream. The client hears the first refusal if there is one (so
    /// no recipient it asked for is dropped without it knowing), else the first acceptance.
    async fn relay_recipients(&mut self, relay: Vec<Mailbox>) -> Reply {
        let max = self.ctx.config.limits.max_recipients;
        let mut first_ok = None;
        let mut first_refusal = None;
        for recipient in relay {
            let full = self.transaction.as_ref().is_some_and(|t| t.recipients.len() >= max);
            let reply = if full {
                Reply::enhanced(452, (4, 5, 3), "Too many recipients")
            } else {
                match self.upstream.rcpt(&recipient).await {
                    Ok(reply) => reply,
                    Err(err) => {
                        tracing::warn!(error = %err, %recipient, "upstream failed at RCPT");
                        if let Some(txn) = &mut self.transaction {
                            txn.broken = true;
                        }
                        err.client_reply()
                    }
                }
            };
            if reply.is_positive() {
                if let Some(txn) = &mut self.transaction {
                    txn.recipients.push(recipient);
                }
                first_ok.get_or_insert(reply);
            } else {
                tracing::info!(%recipient, %reply, "recipient refused");
                first_refusal.get_or_insert(reply);
            }
        }
        first_refusal.or(first_ok).expect("at least one recipient was relayed")
    }
}
