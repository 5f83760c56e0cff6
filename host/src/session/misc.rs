//! The verbs without transaction state of their own: RSET, NOOP, QUIT, HELP, VRFY, and the
//! refusals for what the proxy does not offer (EXPN, BDAT, STARTTLS, AUTH).

use super::{Flow, Session};
use crate::replies;
use crate::smtp::Command;

impl Session {
    pub(super) async fn rset(&mut self) -> Flow {
        self.reset_transaction().await;
        self.reply(replies::ok());
        Flow::Continue
    }

    pub(super) fn noop(&mut self) -> Flow {
        self.reply(replies::ok());
        Flow::Continue
    }

    pub(super) fn quit(&mut self) -> Flow {
        self.reply(replies::bye(&self.ctx.hostname));
        Flow::Close
    }

    pub(super) fn help(&mut self) -> Flow {
        self.reply(replies::help());
        Flow::Continue
    }

    pub(super) fn vrfy(&mut self) -> Flow {
        self.reply(replies::vrfy());
        Flow::Continue
    }

    pub(super) fn not_implemented(&mut self, cmd: &Command) -> Flow {
        self.error(replies::not_implemented(cmd.verb()))
    }
}
