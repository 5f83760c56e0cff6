//! AUTH (RFC 4954) on submission listeners, checked by the upstream in lockstep: each step of
//! the SASL exchange is relayed on the session's own upstream connection and the client hears
//! the upstream's answer, so the operator's existing SASL backend decides. Only the identity
//! is kept (for plugins and logs); credentials are never logged.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::{Flow, Input, Session};
use crate::replies;
use crate::smtp::Reply;
use crate::smtp::command::AuthStart;
use crate::smtp::line::Line;

/// The client's identity, read from what it sends: PLAIN's authentication identity, or the
/// user name LOGIN asks for first.
fn identity(mechanism: &str, response: &str) -> Option<String> {
    let decoded = STANDARD.decode(response).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let name = match mechanism {
        // [authzid] NUL authcid NUL passwd (RFC 4616)
        "PLAIN" => text.split('\0').nth(1)?.to_string(),
        _ => text,
    };
    (!name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)).then_some(name)
}

impl Session {
    /// Whether AUTH is offered now: on a submission listener, before authenticating, and over
    /// TLS (or in plaintext to loopback clients where the listener allows it).
    pub(super) fn offers_auth(&self) -> bool {
        let plaintext_ok = self.listener.allow_plaintext_auth && self.peer.ip().is_loopback();
        self.listener.mode.submission() && self.authenticated_as.is_none() && (self.io.is_tls() || plaintext_ok)
    }

    pub(super) async fn auth(&mut self, start: AuthStart) -> Flow {
        if !self.listener.mode.submission() {
            return self.error(replies::not_implemented("AUTH"));
        }
        if self.authenticated_as.is_some() {
            return self.error(replies::bad_sequence("Already authenticated"));
        }
        if self.transaction.is_some() {
            return self.error(replies::bad_sequence("AUTH inside a mail transaction"));
        }
        if !self.offers_auth() {
            return self.error(replies::encryption_required());
        }
        let caps = match self.upstream.connection_capabilities().await {
            Ok(caps) => caps,
            Err(err) => {
                tracing::warn!(error = %err, "upstream unavailable for AUTH");
                self.reply(replies::auth_temporary_failure());
                return Flow::Continue;
            }
        };
        let offered = match start.mechanism.as_str() {
            "PLAIN" => caps.auth_plain,
            "LOGIN" => caps.auth_login,
            _ => false,
        };
        if !offered {
            return self.error(replies::auth_mechanism_unknown());
        }
        let mut user = start.initial.as_deref().and_then(|initial| identity(&start.mechanism, initial));
        let mut line = match &start.initial {
            Some(initial) => format!("AUTH {} {initial}", start.mechanism),
            None => format!("AUTH {}", start.mechanism),
        };
        loop {
            let reply = match self.upstream.auth(&line).await {
                Ok(reply) => reply,
                Err(err) => {
                    tracing::warn!(error = %err, "upstream failed during AUTH");
                    self.reply(replies::auth_temporary_failure());
                    return Flow::Continue;
                }
            };
            if reply.code() != 334 {
                return self.auth_finished(reply, user);
            }
            self.reply(reply);
            let response = match self.next_input().await {
                Input::Line(Line::Complete(bytes)) => String::from_utf8(bytes).unwrap_or_else(|_| "*".into()),
                // A response that is not a line we can pass on cancels the exchange.
                Input::Line(_) => "*".into(),
                Input::Eof | Input::Failed(_) => return Flow::Close,
                Input::IdleTimeout => {
                    self.reply(replies::idle_timeout(&self.ctx.hostname));
                    return Flow::Close;
                }
                Input::Shutdown => {
                    self.reply(replies::shutting_down(&self.ctx.hostname));
                    return Flow::Close;
                }
            };
            if response.trim() == "*" {
                let _ = self.upstream.auth("*").await;
                self.reply(replies::auth_cancelled());
                return Flow::Continue;
            }
            if user.is_none() {
                user = identity(&start.mechanism, response.trim());
            }
            line = response.trim().to_string();
        }
    }

    /// Relays the upstream's final answer; counts failures, and closes after too many.
    fn auth_finished(&mut self, reply: Reply, user: Option<String>) -> Flow {
        let user_label = user.as_deref().unwrap_or("(unknown)").to_string();
        if reply.is_positive() {
            tracing::info!(user = %user_label, "client authenticated");
            self.authenticated_as = Some(user.unwrap_or_default());
            self.reply(reply);
            return Flow::Continue;
        }
        if reply.is_transient() {
            self.reply(reply);
            return Flow::Continue;
        }
        self.auth_failures += 1;
        tracing::info!(user = %user_label, failures = self.auth_failures, %reply, "authentication failed");
        self.reply(reply);
        if self.auth_failures >= self.ctx.config.limits.max_auth_failures {
            self.reply(replies::too_many_auth_failures(&self.ctx.hostname));
            return Flow::Close;
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_comes_from_plain_or_login() {
        let plain = STANDARD.encode("\0alice\0secret");
        assert_eq!(identity("PLAIN", &plain).as_deref(), Some("alice"));
        let with_authzid = STANDARD.encode("admin\0bob\0pw");
        assert_eq!(identity("PLAIN", &with_authzid).as_deref(), Some("bob"));
        assert_eq!(identity("LOGIN", &STANDARD.encode("carol")).as_deref(), Some("carol"));
        assert_eq!(identity("PLAIN", "not base64!"), None);
        assert_eq!(identity("PLAIN", &STANDARD.encode("nouser")), None);
        assert_eq!(identity("LOGIN", &STANDARD.encode("evil\r\nname")), None);
    }
}
