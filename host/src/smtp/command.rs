//! The command parser: one CRLF-free command line in, a typed [`Command`] or a typed
//! [`ParseError`] out; the session turns errors into replies (as smtp-proto does). Pure: framing
//! (finding CRLF, line limits, bare CR/LF) is done by [`super::line::LineReader`] before a line
//! gets here.

use super::address::{AddressError, Mailbox, parse_path};

/// A parsed client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Helo(String),
    Ehlo(String),
    Mail(MailFrom),
    Rcpt(RcptTo),
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Expn,
    /// Recognised so it can be refused clearly; CHUNKING is never advertised.
    Bdat,
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth(AuthStart),
    /// `XFORWARD attribute=value ...` (Postfix's XFORWARD_README), as given.
    Xforward(String),
}

/// The start of an AUTH exchange.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthStart {
    /// Upper-cased, e.g. `PLAIN`.
    pub mechanism: String,
    /// The initial response, base64 (`=` for an empty one), if the client sent it.
    pub initial: Option<String>,
}

/// Never shows the initial response: it may hold a password.
impl std::fmt::Debug for AuthStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStart").field("mechanism", &self.mechanism).finish_non_exhaustive()
    }
}

/// Why a command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("command contains invalid UTF-8")]
    InvalidUtf8,
    #[error("command line too long")]
    LineTooLong,
    #[error("command not recognized")]
    Unknown,
    /// The verb takes no arguments.
    #[error("{0} takes no arguments")]
    NoArguments(&'static str),
    /// The arguments do not fit the verb; the usage it expects.
    #[error("syntax: {0}")]
    Usage(&'static str),
    /// An ESMTP parameter is malformed.
    #[error("syntax error in parameters")]
    Parameters,
    #[error("bad {} address: {error}", if *.recipient { "recipient" } else { "sender" })]
    Address { error: AddressError, recipient: bool },
}

impl Command {
    /// Commands after which nothing may follow in the same write (RFC 2920 §3.1 sync points that
    /// change how the following bytes are read). Bytes already buffered after one of these are a
    /// protocol-synchronisation error.
    pub fn is_sync_point(&self) -> bool {
        matches!(self, Command::Data | Command::Bdat | Command::StartTls | Command::Quit)
    }

    /// The verb as a client would write it, for logs.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Helo(_) => "HELO",
            Command::Ehlo(_) => "EHLO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Help => "HELP",
            Command::Vrfy => "VRFY",
            Command::Expn => "EXPN",
            Command::Bdat => "BDAT",
            Command::StartTls => "STARTTLS",
            Command::Auth(_) => "AUTH",
            Command::Xforward(_) => "XFORWARD",
        }
    }
}

/// `BODY=` values (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    SevenBit,
    EightBitMime,
}

/// MAIL FROM with its ESMTP parameters, already checked for syntax.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    pub sender: Mailbox,
    pub size: Option<u64>,
    pub body: Option<Body>,
    pub smtputf8: bool,
    /// Parameters the proxy does not know; refused by the session with 555.
    pub unknown: Vec<String>,
}

/// RCPT TO with its ESMTP parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    pub recipient: Mailbox,
    /// Parameters the proxy does not know; refused by the session with 555.
    pub unknown: Vec<String>,
}

/// Longest line for MAIL and RCPT, which may carry parameters (RFC 5321 §4.5.3.1.4 lets
/// extensions lengthen it by what they need; 2048 leaves room for every parameter we accept).
pub const MAX_MAIL_RCPT_LINE: usize = 2048;
/// Longest line for every other command, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;

/// Parses one command line (without its CRLF). The reader applied the longest limit (MAIL and
/// RCPT); the shorter limit for every other command is applied here.
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    let (verb, args) = match line.split_once(' ') {
        Some((verb, args)) => (verb, args),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let is_mail_or_rcpt = verb == "MAIL" || verb == "RCPT";
    if !is_mail_or_rcpt && line.len() + 2 > MAX_COMMAND_LINE {
        return Err(ParseError::LineTooLong);
    }
    let no_args =
        |cmd: Command| if args.trim().is_empty() { Ok(cmd) } else { Err(ParseError::NoArguments(cmd.verb())) };
    match verb.as_str() {
        "HELO" | "EHLO" => {
            let domain = args.trim();
            if domain.is_empty() || domain.contains(' ') {
                return Err(ParseError::Usage(if verb == "HELO" { "HELO hostname" } else { "EHLO hostname" }));
            }
            let domain = domain.to_string();
            Ok(if verb == "HELO" { Command::Helo(domain) } else { Command::Ehlo(domain) })
        }
        "MAIL" => parse_mail(args).map(Command::Mail),
        "RCPT" => parse_rcpt(args).map(Command::Rcpt),
        "DATA" => no_args(Command::Data),
        "RSET" => no_args(Command::Rset),
        "QUIT" => no_args(Command::Quit),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if args.trim().is_empty() => Err(ParseError::Usage("VRFY address")),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "BDAT" => Ok(Command::Bdat),
        "STARTTLS" => no_args(Command::StartTls),
        "AUTH" => parse_auth(args).map(Command::Auth),
        "XFORWARD" if !args.trim().is_empty() => Ok(Command::Xforward(args.trim().to_string())),
        "XFORWARD" => Err(ParseError::Usage("XFORWARD attribute=value ...")),
        _ => Err(ParseError::Unknown),
    }
}

/// Strips `FROM:` / `TO:` (case-insensitive), allowing spaces after the colon as many clients
/// send them.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// Splits the parameters after a path into `KEY[=VALUE]` items (RFC 5321 §4.1.2 esmtp-param).
fn parameters(rest: &str) -> Result<Vec<(String, Option<&str>)>, ParseError> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(ParseError::Parameters);
    }
    let mut params = Vec::new();
    for item in rest.split(' ').filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (item, None),
        };
        let key_ok = key.starts_with(|c: char| c.is_ascii_alphanumeric())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let value_ok = value.is_none_or(|v| !v.is_empty() && v.chars().all(|c| c != '=' && !c.is_control()));
        if !key_ok || !value_ok {
            return Err(ParseError::Parameters);
        }
        params.push((key.to_ascii_uppercase(), value));
    }
    Ok(params)
}

fn parse_mail(args: &str) -> Result<MailFrom, ParseError> {
    let path = strip_keyword(args, "FROM:").ok_or(ParseError::Usage("MAIL FROM:<address>"))?;
    // SMTPUTF8 decides whether the path may hold UTF-8, so look for it first.
    let smtputf8 = path.split(' ').skip(1).any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
    let (sender, rest) = parse_path(path, smtputf8).map_err(|error| ParseError::Address { error, recipient: false })?;
    let mut mail = MailFrom { sender, size: None, body: None, smtputf8, unknown: Vec::new() };
    for (key, value) in parameters(rest)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                mail.size = Some(v.parse().map_err(|_| ParseError::Usage("SIZE=<octets>"))?);
            }
            ("SIZE", _) => return Err(ParseError::Usage("SIZE=<octets>")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mail.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => mail.body = Some(Body::EightBitMime),
            ("BODY", _) => return Err(ParseError::Usage("BODY=7BIT or BODY=8BITMIME")),
            ("SMTPUTF8", None) => {}
            ("SMTPUTF8", Some(_)) => return Err(ParseError::Usage("SMTPUTF8 takes no value")),
            _ => mail.unknown.push(key),
        }
    }
    Ok(mail)
}

fn parse_auth(args: &str) -> Result<AuthStart, ParseError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let mechanism = words.next().ok_or(ParseError::Usage("AUTH mechanism [initial-response]"))?;
    let initial = words.next();
    let mechanism_ok = mechanism.len() <= 20
        && mechanism
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    let initial_ok =
        initial.is_none_or(|i| i == "=" || i.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b)));
    if !mechanism_ok || !initial_ok || words.next().is_some() {
        return Err(ParseError::Usage("AUTH mechanism [initial-response]"));
    }
    Ok(AuthStart { mechanism: mechanism.to_ascii_uppercase(), initial: initial.map(String::from) })
}

fn parse_rcpt(args: &str) -> Result<RcptTo, ParseError> {
    let path = strip_keyword(args, "TO:").ok_or(ParseError::Usage("RCPT TO:<address>"))?;
    // Whether UTF-8 is allowed depends on the transaction; the session re-checks it.
    let (recipient, rest) = parse_path(path, true).map_err(|error| ParseError::Address { error, recipient: true })?;
    if recipient.is_null() {
        return Err(ParseError::Address { error: AddressError::Syntax, recipient: true });
    }
    let unknown = parameters(rest)?.into_iter().map(|(k, _)| k).collect();
    Ok(RcptTo { recipient, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(line: &str) -> ParseError {
        parse(line.as_bytes()).expect_err(line)
    }

    fn address_error(line: &str) -> (AddressError, bool) {
        match error(line) {
            ParseError::Address { error, recipient } => (error, recipient),
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn parses_every_verb_case_insensitively() {
        assert_eq!(parse(b"ehlo client.example"), Ok(Command::Ehlo("client.example".into())));
        assert_eq!(parse(b"HELO [192.0.2.1]"), Ok(Command::Helo("[192.0.2.1]".into())));
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"RSET"), Ok(Command::Rset));
        assert_eq!(parse(b"NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"HELP me"), Ok(Command::Help));
        assert_eq!(parse(b"VRFY jane"), Ok(Command::Vrfy));
        assert_eq!(parse(b"EXPN list"), Ok(Command::Expn));
        assert_eq!(parse(b"BDAT 10 LAST"), Ok(Command::Bdat));
        assert_eq!(parse(b"STARTTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"STARTTLS now"), Err(ParseError::NoArguments("STARTTLS")));
        assert_eq!(
            parse(b"auth plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth(AuthStart { mechanism: "PLAIN".into(), initial: Some("AGFsaWNlAHNlY3JldA==".into()) }))
        );
        assert_eq!(parse(b"AUTH LOGIN"), Ok(Command::Auth(AuthStart { mechanism: "LOGIN".into(), initial: None })));
        assert!(parse(b"AUTH").is_err());
        assert!(parse(b"AUTH PLAIN not*base64").is_err());
        let debug = format!("{:?}", parse(b"AUTH PLAIN c2VjcmV0").unwrap());
        assert!(!debug.contains("c2VjcmV0"), "{debug}");
    }

    #[test]
    fn parses_mail_parameters() {
        let Ok(Command::Mail(m)) = parse(b"MAIL FROM:<a@b.example> SIZE=1000 BODY=8BITMIME") else { panic!() };
        assert_eq!((m.sender.as_str(), m.size, m.body), ("a@b.example", Some(1000), Some(Body::EightBitMime)));
        let Ok(Command::Mail(m)) = parse(b"mail from: <> body=7bit") else { panic!() };
        assert!(m.sender.is_null());
        assert_eq!(m.body, Some(Body::SevenBit));
        let Ok(Command::Mail(m)) = parse("MAIL FROM:<jö@b.example> SMTPUTF8".as_bytes()) else { panic!() };
        assert!(m.smtputf8);
        let Ok(Command::Mail(m)) = parse(b"MAIL FROM:<a@b.example> X-FOO=bar") else { panic!() };
        assert_eq!(m.unknown, vec!["X-FOO".to_string()]);
        let Ok(Command::Rcpt(r)) = parse(b"RCPT TO:<Postmaster>") else { panic!() };
        assert_eq!(r.recipient.as_str(), "Postmaster");
    }

    #[test]
    fn refuses_malformed_commands_with_the_right_error() {
        assert_eq!(error("FOO"), ParseError::Unknown);
        assert_eq!(error("EHLO"), ParseError::Usage("EHLO hostname"));
        assert_eq!(error("DATA now"), ParseError::NoArguments("DATA"));
        assert_eq!(error("MAIL <a@b.example>"), ParseError::Usage("MAIL FROM:<address>"));
        assert_eq!(address_error("MAIL FROM:a@b.example"), (AddressError::MissingBrackets, false));
        assert_eq!(error("MAIL FROM:<a@b.example> SIZE=abc"), ParseError::Usage("SIZE=<octets>"));
        assert_eq!(error("MAIL FROM:<a@b.example> SIZE=99999999999999999999999"), ParseError::Usage("SIZE=<octets>"));
        assert_eq!(error("MAIL FROM:<a@b.example> SIZE"), ParseError::Usage("SIZE=<octets>"));
        assert_eq!(error("MAIL FROM:<a@b.example> BODY=BINARYMIME"), ParseError::Usage("BODY=7BIT or BODY=8BITMIME"));
        assert_eq!(error("MAIL FROM:<a@b.example>SIZE=1"), ParseError::Parameters);
        assert_eq!(address_error("MAIL FROM:<jö@b.example>"), (AddressError::NeedsUtf8, false));
        assert_eq!(address_error("RCPT TO:<>"), (AddressError::Syntax, true));
        assert_eq!(error("VRFY"), ParseError::Usage("VRFY address"));
        assert_eq!(parse(b"NOOP \xff"), Err(ParseError::InvalidUtf8));
    }

    #[test]
    fn command_line_limits() {
        let noop_512 = format!("NOOP {}", "x".repeat(512 - 2 - 5));
        assert_eq!(parse(noop_512.as_bytes()), Ok(Command::Noop));
        let noop_513 = format!("NOOP {}", "x".repeat(513 - 2 - 5));
        assert_eq!(error(&noop_513), ParseError::LineTooLong);
        let mail =
            format!("MAIL FROM:<a@b.example> {}", (0..100).map(|i| format!("X{i}=v")).collect::<Vec<_>>().join(" "));
        assert!(mail.len() > 512);
        assert!(matches!(parse(mail.as_bytes()), Ok(Command::Mail(_))));
    }
}
