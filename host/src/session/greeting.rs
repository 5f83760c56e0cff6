//! HELO and EHLO: the client introduces itself; EHLO gets the extensions both the proxy and
//! the upstream support.

use super::{Advertised, Flow, Helo, Session};
use crate::filter::Outcome;
use crate::filter::stages::EhloState;
use crate::smtp::Reply;

impl Session {
    pub(super) async fn helo(&mut self, name: String, esmtp: bool) -> Flow {
        // A new HELO/EHLO resets any transaction (RFC 5321 §4.1.4).
        self.reset_transaction().await;
        if let Some(recording) = &mut self.recording {
            recording.helos.push(name.clone());
        }
        let outcome = self.run_session_stage(&mut EhloState(name.clone())).await;
        if outcome != Outcome::Continue {
            return self.refuse(outcome);
        }
        self.upstream.set_helo(&name, esmtp);
        let hostname = self.ctx.hostname.clone();
        let ours = self.ctx.config.limits.max_message_size.bytes();
        if !esmtp {
            self.advertised = Advertised { size: ours, eight_bit_mime: false, smtputf8: false };
            self.reply(Reply::new(250, None, hostname));
            self.helo = Some(Helo { name, esmtp });
            return Flow::Continue;
        }
        let caps = self.upstream.capabilities().await;
        self.advertised = Advertised {
            size: caps.size.map_or(ours, |theirs| theirs.min(ours)),
            eight_bit_mime: caps.eight_bit_mime,
            smtputf8: caps.smtputf8,
        };
        let mut lines = vec![format!("{hostname} greets {}", crate::message::reply_safe(&name))];
        lines.push("PIPELINING".into());
        lines.push(format!("SIZE {}", self.advertised.size));
        if self.advertised.eight_bit_mime {
            lines.push("8BITMIME".into());
        }
        if self.advertised.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if self.offers_starttls() {
            lines.push("STARTTLS".into());
        }
        if self.xforward_trusted() {
            lines.push("XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE".into());
        }
        if self.offers_auth() {
            let mechanisms = caps.auth_mechanisms();
            if !mechanisms.is_empty() {
                lines.push(format!("AUTH {mechanisms}"));
            }
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        self.reply(Reply::multiline(250, None, lines));
        self.helo = Some(Helo { name, esmtp });
        Flow::Continue
    }
}
