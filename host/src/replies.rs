//! Every reply the proxy writes itself, by name, in one place: so a text is written once, its
//! code and enhanced status code agree (RFC 3463), and the unit tests check them all. Replies
//! that come from outside (the upstream, plugins) are validated where they arrive instead.

use crate::smtp::address::AddressError;
use crate::smtp::command::ParseError;
use crate::smtp::{EnhancedCode, Reply};

fn r(code: u16, (class, subject, detail): (u8, u16, u16), text: impl Into<String>) -> Reply {
    Reply::enhanced(code, (class, subject, detail), text)
}

// The session's own progress.

pub fn greeting(hostname: &str) -> Reply {
    Reply::new(220, None, format!("{hostname} ESMTP wasmtp"))
}

pub fn ok() -> Reply {
    r(250, (2, 0, 0), "Ok")
}

pub fn sender_ok() -> Reply {
    r(250, (2, 1, 0), "Ok")
}

pub fn recipient_ok() -> Reply {
    r(250, (2, 1, 5), "Ok")
}

/// A message stored by the proxy itself (quarantine).
pub fn message_accepted() -> Reply {
    r(250, (2, 0, 0), "Ok: message accepted")
}

/// A message durably in the embedded Maildir.
pub fn delivered_as(name: &str) -> Reply {
    r(250, (2, 0, 0), format!("Ok: delivered as {name}"))
}

pub fn start_data() -> Reply {
    Reply::new(354, None, "End data with <CR><LF>.<CR><LF>")
}

pub fn bye(hostname: &str) -> Reply {
    r(221, (2, 0, 0), format!("{hostname} Bye"))
}

pub fn help() -> Reply {
    Reply::multiline(
        214,
        Some(EnhancedCode::new(2, 0, 0)),
        vec![
            "wasmtp: a filtering SMTP proxy".into(),
            "Commands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP VRFY".into(),
        ],
    )
}

pub fn vrfy() -> Reply {
    r(252, (2, 5, 0), "Cannot VRFY user, but will accept message and attempt delivery")
}

// Closing the session.

pub fn shutting_down(hostname: &str) -> Reply {
    r(421, (4, 3, 2), format!("{hostname} Service shutting down"))
}

pub fn idle_timeout(hostname: &str) -> Reply {
    r(421, (4, 4, 2), format!("{hostname} Idle timeout, closing connection"))
}

pub fn data_timeout(hostname: &str) -> Reply {
    r(421, (4, 4, 2), format!("{hostname} Timeout during DATA, closing connection"))
}

pub fn too_many_errors(hostname: &str) -> Reply {
    r(421, (4, 7, 0), format!("{hostname} Too many errors, closing connection"))
}

pub fn too_many_connections() -> Reply {
    r(421, (4, 7, 0), "Too many connections, try again later")
}

pub fn too_many_connections_from_you() -> Reply {
    r(421, (4, 7, 0), "Too many connections from your address, try again later")
}

pub fn synchronization_error() -> Reply {
    r(554, (5, 5, 0), "Protocol synchronization error: input sent before our reply")
}

// Commands refused by the session.

pub fn parse_error(error: &ParseError) -> Reply {
    match error {
        ParseError::InvalidUtf8 => r(500, (5, 5, 2), "Command contains invalid UTF-8"),
        ParseError::LineTooLong => line_too_long(),
        ParseError::Unknown => r(500, (5, 5, 2), "Command not recognized"),
        ParseError::NoArguments(verb) => r(501, (5, 5, 4), format!("Syntax: {verb} takes no arguments")),
        ParseError::Usage(usage) => r(501, (5, 5, 4), format!("Syntax: {usage}")),
        ParseError::Parameters => r(501, (5, 5, 4), "Syntax error in parameters"),
        ParseError::Address { error: error @ AddressError::NeedsUtf8, .. } => r(553, (5, 6, 7), error.to_string()),
        ParseError::Address { error, recipient: false } => r(553, (5, 1, 7), format!("Bad sender address: {error}")),
        ParseError::Address { error, recipient: true } => r(553, (5, 1, 3), format!("Bad recipient address: {error}")),
    }
}

pub fn line_too_long() -> Reply {
    r(500, (5, 5, 2), "Line too long")
}

pub fn bare_line_ending_in_command() -> Reply {
    r(500, (5, 5, 2), "Bare CR, bare LF or NUL in command; use CRLF")
}

pub fn not_implemented(verb: &str) -> Reply {
    r(502, (5, 5, 1), format!("{verb} not implemented"))
}

/// A command out of sequence: `what` says what was expected.
pub fn bad_sequence(what: &str) -> Reply {
    r(503, (5, 5, 1), what)
}

pub fn refused_connection_only_quit() -> Reply {
    r(503, (5, 5, 1), "Connection refused by policy; only QUIT is accepted")
}

/// An ESMTP feature the client used but was not offered: "`what` not supported".
pub fn not_supported(what: &str) -> Reply {
    r(555, (5, 5, 4), format!("{what} not supported"))
}

pub fn needs_smtputf8() -> Reply {
    r(553, (5, 6, 7), "Non-ASCII address needs SMTPUTF8")
}

pub fn too_many_recipients() -> Reply {
    r(452, (4, 5, 3), "Too many recipients")
}

pub fn no_valid_recipients() -> Reply {
    r(554, (5, 5, 1), "No valid recipients")
}

// The message.

pub fn message_too_big() -> Reply {
    r(552, (5, 3, 4), "Message size exceeds fixed limit")
}

pub fn too_many_header_fields() -> Reply {
    r(552, (5, 3, 4), "Too many header fields")
}

pub fn bare_line_ending_in_data() -> Reply {
    r(550, (5, 6, 0), "Message contains bare CR, bare LF or NUL; send lines ending in CRLF")
}

pub fn data_line_too_long(max: usize) -> Reply {
    r(550, (5, 6, 0), format!("Message contains a line longer than {max} octets"))
}

pub fn cannot_store() -> Reply {
    r(451, (4, 3, 0), "Cannot store the message right now, try again later")
}

pub fn cannot_read_message() -> Reply {
    r(451, (4, 3, 0), "Local error reading the message, try again later")
}

pub fn cannot_sign() -> Reply {
    r(451, (4, 3, 0), "Cannot sign the message right now, try again later")
}

// The upstream failed: the client keeps the message and retries.

pub fn upstream_unavailable() -> Reply {
    r(451, (4, 4, 1), "Upstream server unavailable, try again later")
}

pub fn upstream_no_answer() -> Reply {
    r(451, (4, 4, 2), "Upstream server did not answer, try again later")
}

pub fn upstream_lost() -> Reply {
    r(451, (4, 4, 2), "Upstream connection lost, try again later")
}

pub fn upstream_protocol_error() -> Reply {
    r(451, (4, 5, 0), "Upstream protocol error, try again later")
}

pub fn local_delivery_failed() -> Reply {
    r(451, (4, 3, 0), "Local delivery failed, try again later")
}

pub fn upstream_tls_failed() -> Reply {
    r(451, (4, 7, 0), "Upstream TLS unavailable, try again later")
}

// TLS and AUTH.

pub fn ready_to_start_tls() -> Reply {
    r(220, (2, 0, 0), "Ready to start TLS")
}

pub fn xforward_not_authorized() -> Reply {
    r(550, (5, 7, 0), "Error: insufficient authorization")
}

pub fn relay_denied() -> Reply {
    r(554, (5, 7, 1), "Relay access denied")
}

pub fn upstream_cannot_take_8bit() -> Reply {
    r(554, (5, 6, 3), "The upstream does not accept 8-bit data")
}

pub fn upstream_cannot_take_utf8() -> Reply {
    r(553, (5, 6, 7), "The upstream does not accept SMTPUTF8")
}

pub fn too_big_for_upstream() -> Reply {
    r(552, (5, 3, 4), "Message size exceeds the upstream's limit")
}

pub fn tls_already_active() -> Reply {
    r(503, (5, 5, 1), "TLS already active")
}

pub fn tls_not_available() -> Reply {
    r(454, (4, 7, 0), "TLS not available due to temporary reason")
}

pub fn authenticated() -> Reply {
    r(235, (2, 7, 0), "Authentication successful")
}

pub fn authentication_required() -> Reply {
    r(530, (5, 7, 0), "Authentication required")
}

pub fn encryption_required() -> Reply {
    r(538, (5, 7, 11), "Encryption required for requested authentication mechanism")
}

pub fn auth_mechanism_unknown() -> Reply {
    r(504, (5, 5, 4), "Unrecognized authentication type")
}

pub fn auth_cancelled() -> Reply {
    r(501, (5, 5, 4), "Authentication cancelled")
}

pub fn auth_temporary_failure() -> Reply {
    r(454, (4, 7, 0), "Temporary authentication failure")
}

pub fn too_many_auth_failures(hostname: &str) -> Reply {
    r(421, (4, 7, 0), format!("{hostname} Too many authentication failures, closing connection"))
}

// A plugin failed and its `on_error` policy decides. At connect the reply is a greeting: 421
// closes, 554 refuses the session.

pub fn filter_tempfail(at_connect: bool) -> Reply {
    r(if at_connect { 421 } else { 451 }, (4, 3, 0), "Temporary filter failure, try again later")
}

pub fn filter_reject(at_connect: bool) -> Reply {
    r(if at_connect { 554 } else { 550 }, (5, 7, 0), "Refused by filter policy")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_is_valid() {
        let host = "mx.example.org";
        let replies = [
            greeting(host),
            ok(),
            sender_ok(),
            recipient_ok(),
            message_accepted(),
            delivered_as("1.M2P3Q4.host"),
            bye(host),
            help(),
            vrfy(),
            shutting_down(host),
            idle_timeout(host),
            data_timeout(host),
            too_many_errors(host),
            too_many_connections(),
            too_many_connections_from_you(),
            synchronization_error(),
            line_too_long(),
            bare_line_ending_in_command(),
            not_implemented("EXPN"),
            bad_sequence("Send HELO/EHLO first"),
            refused_connection_only_quit(),
            not_supported("SMTPUTF8 is"),
            needs_smtputf8(),
            too_many_recipients(),
            no_valid_recipients(),
            message_too_big(),
            too_many_header_fields(),
            bare_line_ending_in_data(),
            data_line_too_long(65536),
            cannot_store(),
            cannot_read_message(),
            cannot_sign(),
            upstream_unavailable(),
            upstream_no_answer(),
            upstream_lost(),
            upstream_protocol_error(),
            local_delivery_failed(),
            upstream_tls_failed(),
            ready_to_start_tls(),
            tls_already_active(),
            xforward_not_authorized(),
            relay_denied(),
            upstream_cannot_take_8bit(),
            upstream_cannot_take_utf8(),
            too_big_for_upstream(),
            tls_not_available(),
            authenticated(),
            authentication_required(),
            encryption_required(),
            auth_mechanism_unknown(),
            auth_cancelled(),
            auth_temporary_failure(),
            too_many_auth_failures(host),
            filter_tempfail(true),
            filter_tempfail(false),
            filter_reject(true),
            filter_reject(false),
        ];
        for reply in replies {
            assert_eq!(reply.validate(), Ok(()), "{reply}");
        }
        assert_eq!(start_data().code(), 354);
    }

    #[test]
    fn parse_errors_map_to_their_codes() {
        let cases = [
            (ParseError::InvalidUtf8, "500 5.5.2 Command contains invalid UTF-8\r\n"),
            (ParseError::Unknown, "500 5.5.2 Command not recognized\r\n"),
            (ParseError::NoArguments("DATA"), "501 5.5.4 Syntax: DATA takes no arguments\r\n"),
            (ParseError::Usage("MAIL FROM:<address>"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n"),
            (ParseError::Parameters, "501 5.5.4 Syntax error in parameters\r\n"),
            (
                ParseError::Address { error: AddressError::NeedsUtf8, recipient: true },
                "553 5.6.7 address contains non-ASCII characters but SMTPUTF8 was not requested\r\n",
            ),
            (
                ParseError::Address { error: AddressError::Syntax, recipient: false },
                "553 5.1.7 Bad sender address: address syntax error\r\n",
            ),
            (
                ParseError::Address { error: AddressError::Syntax, recipient: true },
                "553 5.1.3 Bad recipient address: address syntax error\r\n",
            ),
        ];
        for (error, wire) in cases {
            assert_eq!(String::from_utf8(parse_error(&error).to_bytes()).unwrap(), wire);
        }
    }
}
