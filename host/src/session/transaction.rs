//! The mail transaction: everything scoped to MAIL … end of data — the envelope, the notes
//! plugins set meanwhile, the sender's SPF result and whether the upstream side still holds.
//! It is begun at MAIL and ended in one place, [`Session::end_transaction`], which logs it and
//! resets the upstream transaction if one is still open.

use std::time::Instant;

use super::Session;
use crate::auth::{MessageChecks, Spf};
use crate::filter::host::Notes;
use crate::smtp::command::MailFrom;
use crate::smtp::{Mailbox, Reply};

#[derive(Debug)]
pub(super) struct Transaction {
    pub mail: MailFrom,
    /// Recipients the upstream accepted.
    pub recipients: Vec<Mailbox>,
    pub started: Instant,
    /// The upstream connection was lost inside this transaction: nothing more can succeed.
    pub broken: bool,
    /// Notes plugins set during the transaction; they end with it.
    pub notes: Notes,
    /// SPF for the MAIL FROM identity, when authentication is on.
    pub spf_mail: Option<Spf>,
    /// DKIM, ARC and DMARC of the received message, and our `Authentication-Results:` header.
    pub message_auth: Option<MessageChecks>,
    /// The received message holds octets outside ASCII.
    pub eight_bit: bool,
}

impl Transaction {
    pub fn new(mail: MailFrom, spf_mail: Option<Spf>) -> Self {
        Self {
            mail,
            recipients: Vec::new(),
            started: Instant::now(),
            broken: false,
            notes: Notes::default(),
            spf_mail,
            message_auth: None,
            eight_bit: false,
        }
    }
}

/// How a transaction ended.
#[derive(Debug)]
pub(super) enum Ending<'a> {
    /// The message was received to its end and the client got `reply` for it.
    Answered { size: u64, reply: &'a Reply },
    /// RSET, or a new HELO/EHLO.
    Reset,
    /// The client went away, stalled or was shut down before its message was complete.
    Abandoned(&'static str),
}

impl Session {
    /// Ends the transaction: logs how, and abandons whatever is still open upstream (nothing
    /// after a completed DATA). Every transaction ends here.
    pub(super) async fn end_transaction(&mut self, txn: Transaction, ending: Ending<'_>) {
        match ending {
            Ending::Answered { size, reply } => self.log_transaction(&txn, size, reply),
            Ending::Reset => tracing::debug!(sender = %txn.mail.sender, "transaction reset"),
            Ending::Abandoned(why) => {
                tracing::info!(sender = %txn.mail.sender, recipients = txn.recipients.len(), "{why}; nothing relayed")
            }
        }
        drop(txn);
        self.upstream.rset().await;
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
            duration_ms = txn.started.elapsed().as_millis() as u64,
            "transaction"
        );
    }
}
