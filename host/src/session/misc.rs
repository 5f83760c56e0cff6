//! The verbs without transaction state of their own: RSET, NOOP, QUIT, HELP, VRFY, and the
//! refusals for what the proxy does not offer (EXPN, BDAT, STARTTLS, AUTH).

use super::{Flow, Session};
use crate::smtp::{Command, Reply};

impl Session {
    pub(super) async fn rset(&mut self) -> Flow {
        self.reset_transaction().await;
        self.reply(Reply::enhanced(250, (2, 0, 0), "Ok"));
        Flow::Continue
    }

    pub(super) fn noop(&mut self) -> Flow {
        self.reply(Reply::enhanced(250, (2, 0, 0), "Ok"));
        Flow::Continue
    }

    pub(super) fn quit(&mut self) -> Flow {
        self.reply(Reply::enhanced(221, (2, 0, 0), format!("{} Bye", self.ctx.hostname)));
        Flow::Close
    }

    pub(super) fn help(&mut self) -> Flow {
        self.reply(Reply::multiline(
            214,
            Some(crate::smtp::EnhancedCode::new(2, 0, 0)),
            vec![
                "wasmtp: a filtering SMTP proxy".into(),
                "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".into(),
            ],
        ));
        Flow::Continue
    }

    pub(super) fn vrfy(&mut self) -> Flow {
        self.reply(Reply::enhanced(252, (2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery"));
        Flow::Continue
    }

    pub(super) fn not_implemented(&mut self, cmd: &Command) -> Flow {
        self.error(Reply::enhanced(502, (5, 5, 1), format!("{} not implemented", cmd.verb())))
    }
}
