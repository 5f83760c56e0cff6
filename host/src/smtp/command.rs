//! The command parser: one CRLF-free command line in, a typed [`Command`] or the reply that
//! refuses it out. Pure: framing (finding CRLF, line limits, bare CR/LF) is done by
//! [`super::line::LineReader`] before a line gets here.

use super::address::{AddressError, Mailbox, parse_path};
use super::reply::Reply;

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
    /// Recognised so it can be refused clearly; STARTTLS is not offered.
    StartTls,
    /// Recognised so it can be refused clearly; AUTH is not offered.
    Auth,
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
            Command::Auth => "AUTH",
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
/// extensions lengthen it; DESIGN §2.4 sets 2048).
pub const MAX_MAIL_RCPT_LINE: usize = 2048;
/// Longest line for every other command, CRLF included.
pub const MAX_COMMAND_LINE: usize = 512;

fn syntax(text: &str) -> Reply {
    Reply::enhanced(501, (5, 5, 4), text)
}

/// Parses one command line (without its CRLF). `line_len` limits were applied by the reader for
/// the longest case; the shorter limit for commands other than MAIL/RCPT is applied here.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line =
        std::str::from_utf8(line).map_err(|_| Reply::enhanced(500, (5, 5, 2), "Command contains invalid UTF-8"))?;
    let (verb, args) = match line.split_once(' ') {
        Some((verb, args)) => (verb, args),
        None => (line, ""),
    };
    let verb = verb.to_ascii_uppercase();
    let is_mail_or_rcpt = verb == "MAIL" || verb == "RCPT";
    if !is_mail_or_rcpt && line.len() + 2 > MAX_COMMAND_LINE {
        return Err(line_too_long());
    }
    let no_args = |cmd: Command| {
        if args.trim().is_empty() {
            Ok(cmd)
        } else {
            Err(syntax(&format!("Syntax: {} takes no arguments", cmd.verb())))
        }
    };
    match verb.as_str() {
        "HELO" | "EHLO" => {
            let domain = args.trim();
            if domain.is_empty() || domain.contains(' ') {
                return Err(syntax(&format!("Syntax: {verb} hostname")));
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
        "VRFY" if args.trim().is_empty() => Err(syntax("Syntax: VRFY address")),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "BDAT" => Ok(Command::Bdat),
        "STARTTLS" => Ok(Command::StartTls),
        "AUTH" => Ok(Command::Auth),
        _ => Err(Reply::enhanced(500, (5, 5, 2), "Command not recognized")),
    }
}

/// The reply for a command line over its limit.
pub fn line_too_long() -> Reply {
    Reply::enhanced(500, (5, 5, 2), "Line too long")
}

/// Strips `FROM:` / `TO:` (case-insensitive), allowing spaces after the colon as many clients
/// send them.
fn strip_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword).then(|| args[keyword.len()..].trim_start_matches(' '))
}

/// Splits the parameters after a path into `KEY[=VALUE]` items (RFC 5321 §4.1.2 esmtp-param).
fn parameters(rest: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err(syntax("Syntax error in parameters"));
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
            return Err(syntax("Syntax error in parameters"));
        }
        params.push((key.to_ascii_uppercase(), value));
    }
    Ok(params)
}

fn address_reply(err: AddressError, recipient: bool) -> Reply {
    match (err, recipient) {
        (AddressError::NeedsUtf8, _) => Reply::enhanced(553, (5, 6, 7), err.to_string()),
        (_, false) => Reply::enhanced(553, (5, 1, 7), format!("Bad sender address: {err}")),
        (_, true) => Reply::enhanced(553, (5, 1, 3), format!("Bad recipient address: {err}")),
    }
}

fn parse_mail(args: &str) -> Result<MailFrom, Reply> {
    let path = strip_keyword(args, "FROM:").ok_or_else(|| syntax("Syntax: MAIL FROM:<address>"))?;
    // SMTPUTF8 decides whether the path may hold UTF-8, so look for it first.
    let smtputf8 = path.split(' ').skip(1).any(|p| p.eq_ignore_ascii_case("SMTPUTF8"));
    let (sender, rest) = parse_path(path, smtputf8).map_err(|e| address_reply(e, false))?;
    let mut mail = MailFrom { sender, size: None, body: None, smtputf8, unknown: Vec::new() };
    for (key, value) in parameters(rest)? {
        match (key.as_str(), value) {
            ("SIZE", Some(v)) if v.len() <= 20 && v.bytes().all(|b| b.is_ascii_digit()) => {
                mail.size = Some(v.parse().map_err(|_| syntax("Syntax: SIZE=<octets>"))?);
            }
            ("SIZE", _) => return Err(syntax("Syntax: SIZE=<octets>")),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => mail.body = Some(Body::SevenBit),
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => mail.body = Some(Body::EightBitMime),
            ("BODY", _) => return Err(syntax("Syntax: BODY=7BIT or BODY=8BITMIME")),
            ("SMTPUTF8", None) => {}
            ("SMTPUTF8", Some(_)) => return Err(syntax("Syntax: SMTPUTF8 takes no value")),
            _ => mail.unknown.push(key),
        }
    }
    Ok(mail)
}

fn parse_rcpt(args: &str) -> Result<RcptTo, Reply> {
    let path = strip_keyword(args, "TO:").ok_or_else(|| syntax("Syntax: RCPT TO:<address>"))?;
    // Whether UTF-8 is allowed depends on the transaction; the session re-checks it.
    let (recipient, rest) = parse_path(path, true).map_err(|e| address_reply(e, true))?;
    if recipient.is_null() {
        return Err(address_reply(AddressError::Syntax, true));
    }
    let unknown = parameters(rest)?.into_iter().map(|(k, _)| k).collect();
    Ok(RcptTo { recipient, unknown })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(line: &str) -> u16 {
        parse(line.as_bytes()).expect_err(line).code()
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
    fn refuses_malformed_commands_with_the_right_code() {
        assert_eq!(code("FOO"), 500);
        assert_eq!(code("EHLO"), 501);
        assert_eq!(code("DATA now"), 501);
        assert_eq!(code("MAIL <a@b.example>"), 501);
        assert_eq!(code("MAIL FROM:a@b.example"), 553);
        assert_eq!(code("MAIL FROM:<a@b.example> SIZE=abc"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> SIZE=99999999999999999999999"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> SIZE"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example> BODY=BINARYMIME"), 501);
        assert_eq!(code("MAIL FROM:<a@b.example>SIZE=1"), 501);
        assert_eq!(code("MAIL FROM:<jö@b.example>"), 553);
        assert_eq!(code("RCPT TO:<>"), 553);
        assert_eq!(code("VRFY"), 501);
        assert_eq!(parse(b"NOOP \xff").unwrap_err().code(), 500);
    }

    #[test]
    fn command_line_limits() {
        let noop_512 = format!("NOOP {}", "x".repeat(512 - 2 - 5));
        assert_eq!(parse(noop_512.as_bytes()), Ok(Command::Noop));
        let noop_513 = format!("NOOP {}", "x".repeat(513 - 2 - 5));
        assert_eq!(code(&noop_513), 500);
        let mail =
            format!("MAIL FROM:<a@b.example> {}", (0..100).map(|i| format!("X{i}=v")).collect::<Vec<_>>().join(" "));
        assert!(mail.len() > 512);
        assert!(matches!(parse(mail.as_bytes()), Ok(Command::Mail(_))));
    }
}
