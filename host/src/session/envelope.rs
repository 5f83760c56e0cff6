//! MAIL and RCPT: the envelope, checked against what was advertised and relayed live so the
//! upstream's answer for the sender and for each recipient reaches the client.

use std::time::Instant;

use super::{Flow, Session, Transaction};
use crate::smtp::Reply;
use crate::smtp::command::{Body, MailFrom, RcptTo};
use crate::upstream::Sender;

fn unsupported(what: &str) -> Reply {
    Reply::enhanced(555, (5, 5, 4), format!("{what} not supported"))
}

impl Session {
    pub(super) async fn mail(&mut self, mail: MailFrom) -> Flow {
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
            tracing::info!(sender = %mail.sender, %reply, "sender refused");
        }
        self.reply(reply);
        Flow::Continue
    }

    pub(super) async fn rcpt(&mut self, rcpt: RcptTo) -> Flow {
        let max = self.ctx.config.limits.max_recipients;
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
        if txn.recipients.len() >= max {
            self.reply(Reply::enhanced(452, (4, 5, 3), "Too many recipients"));
            return Flow::Continue;
        }
        let reply = match self.upstream.rcpt(&rcpt.recipient).await {
            Ok(reply) => reply,
            Err(err) => {
                tracing::warn!(error = %err, recipient = %rcpt.recipient, "upstream failed at RCPT");
                if let Some(txn) = &mut self.transaction {
                    txn.broken = true;
                }
                err.client_reply()
            }
        };
        if let Some(txn) = &mut self.transaction
            && reply.is_positive()
        {
            txn.recipients.push(rcpt.recipient);
        }
        self.reply(reply);
        Flow::Continue
    }
}
