//! STARTTLS (RFC 3207) and implicit TLS (RFC 8314): the handshake, and what the session forgets
//! after it — the client's HELO, what was advertised, and everything plugins learned since the
//! greeting — so nothing said in plaintext carries over into the encrypted session.

use super::{Advertised, Flow, Session};
use crate::replies;

impl Session {
    pub(super) async fn starttls(&mut self) -> Flow {
        if self.io.is_tls() {
            return self.error(replies::tls_already_active());
        }
        if self.transaction.is_some() {
            return self.error(replies::bad_sequence("STARTTLS inside a mail transaction"));
        }
        let Some(tls) = self.ctx.tls.clone() else {
            self.reply(replies::tls_not_available());
            return Flow::Continue;
        };
        self.reply(replies::ready_to_start_tls());
        if self.io.flush().await.is_err() {
            return Flow::Close;
        }
        let handshake = self.io.start_tls(&tls.acceptor(), self.ctx.config.tls.handshake_timeout).await;
        self.ctx.metrics.tls_handshake("starttls", handshake.is_ok());
        match handshake {
            Ok(negotiated) => {
                tracing::debug!(version = %negotiated.version, cipher = %negotiated.cipher, "STARTTLS");
                self.tls = Some(negotiated);
                // Back to just after the greeting (RFC 3207 §4.2).
                self.helo = None;
                self.spf_helo = None;
                self.advertised = Advertised {
                    size: self.ctx.config.limits.max_message_size.bytes(),
                    eight_bit_mime: false,
                    smtputf8: false,
                };
                self.notes = self.notes_at_greeting.clone();
                Flow::Continue
            }
            Err(err) => {
                tracing::info!(error = %err, "STARTTLS handshake failed; closing");
                Flow::Close
            }
        }
    }

    /// The handshake of an implicit-TLS listener, before the greeting. False: close.
    pub(super) async fn implicit_tls(&mut self) -> bool {
        let Some(tls) = self.ctx.tls.clone() else { return false };
        let handshake = self.io.start_tls(&tls.acceptor(), self.ctx.config.tls.handshake_timeout).await;
        self.ctx.metrics.tls_handshake("implicit", handshake.is_ok());
        match handshake {
            Ok(negotiated) => {
                self.tls = Some(negotiated);
                true
            }
            Err(err) => {
                tracing::info!(error = %err, "TLS handshake failed; closing");
                false
            }
        }
    }

    /// STARTTLS may be offered: a certificate is there and the connection is not TLS yet.
    pub(super) fn offers_starttls(&self) -> bool {
        self.ctx.tls.is_some() && !self.io.is_tls()
    }
}
