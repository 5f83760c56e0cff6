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
            Ending::Reset => {
                self.ctx.metrics.transaction("reset", None);
                tracing::debug!(sender = %txn.mail.sender, "transaction reset");
            }
            Ending::Abandoned(why) => {
                self.ctx.metrics.transaction("abandoned", None);
                tracing::info!(
                    sender = %txn.mail.sender,
                    recipients = txn.recipients.len(),
                    outcome = "abandoned",
                    duration_ms = txn.started.elapsed().as_millis() as u64,
                    "{why}; nothing relayed"
                );
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
        self.ctx.metrics.transaction(outcome, Some(size));
        tracing::info!(
            sender = %txn.mail.sender,
            recipients = txn.recipients.len(),
            size,
            outcome,
            upstream = %self.upstream.describe(),
            queue_id = queue_id(reply).unwrap_or("-"),
            reply = %reply,
            duration_ms = txn.started.elapsed().as_millis() as u64,
            generation = self.ctx.generation,
            "transaction"
        );
    }
}

/// The upstream's queue id in its reply to a message, in the forms MTAs use: Postfix's
/// `queued as 4XyZ12`, Exim's `OK id=1abc-000123-XY`, Sendmail's `4AB12cd Message accepted`
/// (too ambiguous to guess: not recognised), the embedded Maildir's `delivered as <file>`.
fn queue_id(reply: &Reply) -> Option<&str> {
    if !reply.is_positive() {
        return None;
    }
    let text = reply.lines().last()?;
    fn word(rest: &str) -> Option<&str> {
        let id = rest.split(|c: char| c.is_ascii_whitespace() || c == ')' || c == ';').next().unwrap_or("");
        (!id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic())).then_some(id)
    }
    let lower = text.to_ascii_lowercase();
    for marker in ["queued as ", "delivered as "] {
        if let Some(at) = lower.find(marker) {
            return word(&text[at + marker.len()..]);
        }
    }
    if let Some(at) = lower.find("id=") {
        return word(&text[at + 3..]);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::queue_id;
    use crate::smtp::Reply;

    #[test]
    fn queue_ids_of_common_mtas() {
        let reply = |code, text: &str| Reply::new(code, None, text);
        assert_eq!(queue_id(&reply(250, "2.0.0 Ok: queued as 4dLk3x1Qz9z9")), Some("4dLk3x1Qz9z9"));
        assert_eq!(queue_id(&reply(250, "OK id=1vQx2A-000Abc-1X")), Some("1vQx2A-000Abc-1X"));
        assert_eq!(queue_id(&reply(250, "Ok: delivered as 1733100000.M1P2.host")), Some("1733100000.M1P2.host"));
        assert_eq!(queue_id(&reply(250, "ok (queued as ABC123)")), Some("ABC123"));
        assert_eq!(queue_id(&reply(250, "Ok")), None);
        assert_eq!(queue_id(&reply(451, "queued as nothing")), None);
    }
}
