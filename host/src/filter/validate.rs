//! Checks everything a plugin returns before it has any effect: reply class against verdict,
//! enhanced code against reply code, line length and characters, addresses in rewrites, header
//! and body syntax, and edits against the manifest and the stage. A violation is a fault of the
//! plugin — never written to the wire, never silently "fixed".

use super::api::{self, EditKind, Stage};
use crate::smtp::address::AddressError;
use crate::smtp::reply::InvalidReply;
use crate::smtp::{EnhancedCode, Mailbox, Reply};

/// Longest header field line a plugin may create (RFC 5322 §2.1.1), CRLF excluded.
const MAX_HEADER_LINE: usize = 998;
const MAX_HEADER_NAME: usize = 200;
const MAX_QUARANTINE_REASON: usize = 200;
/// Most lines in a plugin's reply.
pub const MAX_REPLY_LINES: usize = 20;

/// Why a plugin's answer was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error("reply code {code} does not fit a {verdict} verdict")]
    ReplyClass { code: u16, verdict: &'static str },
    #[error("invalid enhanced status code {0:?}")]
    EnhancedCode(String),
    #[error("invalid reply: {0}")]
    Reply(#[from] InvalidReply),
    #[error("edit {0} is not declared in the manifest")]
    Undeclared(EditKind),
    #[error("edit {kind} is not allowed at the {stage} stage")]
    WrongStage { kind: EditKind, stage: Stage },
    #[error("addresses in edits must not carry ESMTP parameters")]
    AddressParams,
    #[error("invalid address {mailbox:?}: {error}")]
    Address { mailbox: String, error: AddressError },
    #[error("remove-recipient {0:?}: no such recipient")]
    NoSuchRecipient(String),
    #[error(
        "remove-recipient {0:?}: at the rcpt stage only the recipient being added (or one added by a plugin) \
         can be removed"
    )]
    NotRemovableHere(String),
    #[error("edits removed every recipient; use reject or quarantine instead")]
    NoRecipientsLeft,
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("header {0:?} value contains CR, LF, NUL or another control character")]
    HeaderControl(String),
    #[error("header {0:?} would be longer than {MAX_HEADER_LINE} octets")]
    HeaderTooLong(String),
    #[error("insert-header at {index}: only {fields} fields")]
    InsertPosition { index: u32, fields: usize },
    #[error("{edit}: no occurrence {occurrence} of {name:?}")]
    NoSuchHeader { edit: EditKind, name: String, occurrence: u32 },
    #[error("replacement body of {len} octets exceeds the message size limit")]
    BodyTooLarge { len: usize },
    #[error("replacement body contains NUL")]
    BodyNul,
    #[error("replacement body contains a bare CR or LF")]
    BodyLineEnding,
    #[error("invalid quarantine reason")]
    QuarantineReason,
    #[error("{0} edits in one answer; at most {max} are allowed", max = super::MAX_EDITS_PER_CALL)]
    TooManyEdits(usize),
    #[error("reply of {0} lines; at most {MAX_REPLY_LINES} are allowed")]
    ReplyLines(usize),
}

/// A verdict, checked and converted to the host's reply type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    Disconnect(Reply),
}

impl Verdict {
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Continue => "continue",
            Verdict::Accept => "accept",
            Verdict::Reject(_) => "reject",
            Verdict::Tempfail(_) => "tempfail",
            Verdict::Disconnect(_) => "disconnect",
        }
    }

    /// The reply a refusing verdict sends.
    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Verdict::Continue | Verdict::Accept => None,
            Verdict::Reject(r) | Verdict::Tempfail(r) | Verdict::Disconnect(r) => Some(r),
        }
    }
}

pub fn verdict(v: &api::Verdict) -> Result<Verdict, Violation> {
    Ok(match v {
        api::Verdict::Continue => Verdict::Continue,
        api::Verdict::Accept => Verdict::Accept,
        api::Verdict::Reject(r) => Verdict::Reject(reply(r, "reject", |c| (500..600).contains(&c))?),
        api::Verdict::Tempfail(r) => Verdict::Tempfail(reply(r, "tempfail", |c| (400..500).contains(&c))?),
        api::Verdict::Disconnect(r) => Verdict::Disconnect(reply(r, "disconnect", |c| (400..600).contains(&c))?),
    })
}

fn reply(r: &api::PluginReply, verdict: &'static str, code_ok: impl Fn(u16) -> bool) -> Result<Reply, Violation> {
    if !code_ok(r.code) {
        return Err(Violation::ReplyClass { code: r.code, verdict });
    }
    let class = (r.code / 100) as u8;
    let enhanced = match &r.enhanced {
        None => EnhancedCode::new(class, 0, 0),
        Some(text) => EnhancedCode::parse(text).ok_or_else(|| Violation::EnhancedCode(text.clone()))?,
    };
    if r.lines.is_empty() {
        return Err(InvalidReply::NoLines.into());
    }
    if r.lines.len() > MAX_REPLY_LINES {
        return Err(Violation::ReplyLines(r.lines.len()));
    }
    let reply = Reply::multiline(r.code, Some(enhanced), r.lines.clone());
    reply.validate()?;
    Ok(reply)
}

/// Checks that an edit is declared in the manifest and allowed at the stage.
pub fn permitted(kind: EditKind, stage: Stage, manifest: &api::Manifest) -> Result<(), Violation> {
    if !manifest.may(kind) {
        return Err(Violation::Undeclared(kind));
    }
    if !kind.allowed_at(stage) {
        return Err(Violation::WrongStage { kind, stage });
    }
    Ok(())
}

/// An address from a rewrite. `utf8` says whether the transaction may carry UTF-8 addresses.
pub fn address(a: &api::Address, utf8: bool, recipient: bool) -> Result<Mailbox, Violation> {
    if !a.params.is_empty() {
        return Err(Violation::AddressParams);
    }
    if !recipient && a.mailbox.is_empty() {
        return Ok(Mailbox::null());
    }
    Mailbox::parse(&a.mailbox, utf8, recipient)
        .map_err(|error| Violation::Address { mailbox: a.mailbox.clone(), error })
}

/// A header a plugin adds or changes: a name of printable ASCII without ':', a value without
/// control characters (tabs allowed), and a line that fits RFC 5322's limit.
pub fn header(name: &str, value: &str) -> Result<(), Violation> {
    header_name(name)?;
    header_value(name, value)
}

fn header_name(name: &str) -> Result<(), Violation> {
    let ok =
        !name.is_empty() && name.len() <= MAX_HEADER_NAME && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok { Ok(()) } else { Err(Violation::HeaderName(name.to_string())) }
}

pub fn header_value(name: &str, value: &str) -> Result<(), Violation> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Violation::HeaderControl(name.to_string()));
    }
    if name.len() + 2 + value.len() > MAX_HEADER_LINE {
        return Err(Violation::HeaderTooLong(name.to_string()));
    }
    Ok(())
}

/// A replacement body: CRLF line endings only, no NUL, within the message size limit.
pub fn body(body: &[u8], max: u64) -> Result<(), Violation> {
    if body.len() as u64 > max {
        return Err(Violation::BodyTooLarge { len: body.len() });
    }
    if memchr::memchr(0, body).is_some() {
        return Err(Violation::BodyNul);
    }
    // Every CR must be followed by LF and every LF preceded by CR.
    for i in memchr::memchr2_iter(b'\r', b'\n', body) {
        let ok = match body[i] {
            b'\r' => body.get(i + 1) == Some(&b'\n'),
            _ => i > 0 && body[i - 1] == b'\r',
        };
        if !ok {
            return Err(Violation::BodyLineEnding);
        }
    }
    Ok(())
}

pub fn quarantine_reason(reason: &str) -> Result<(), Violation> {
    if reason.len() > MAX_QUARANTINE_REASON || reason.chars().any(char::is_control) {
        return Err(Violation::QuarantineReason);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::api::{BodyAccess, Manifest, PluginReply};

    fn r(code: u16, enhanced: Option<&str>, lines: &[&str]) -> PluginReply {
        PluginReply { code, enhanced: enhanced.map(String::from), lines: lines.iter().map(|s| s.to_string()).collect() }
    }

    #[test]
    fn reply_class_must_fit_the_verdict() {
        assert!(verdict(&api::Verdict::Reject(r(550, Some("5.7.1"), &["no"]))).is_ok());
        assert_eq!(
            verdict(&api::Verdict::Reject(r(250, Some("2.0.0"), &["no"]))),
            Err(Violation::ReplyClass { code: 250, verdict: "reject" })
        );
        assert!(verdict(&api::Verdict::Tempfail(r(550, None, &["no"]))).is_err());
        assert!(verdict(&api::Verdict::Reject(r(550, Some("4.7.1"), &["no"]))).is_err());
        assert_eq!(
            verdict(&api::Verdict::Reject(r(550, Some("5.7"), &["no"]))),
            Err(Violation::EnhancedCode("5.7".into()))
        );
        assert_eq!(verdict(&api::Verdict::Reject(r(550, None, &[]))), Err(Violation::Reply(InvalidReply::NoLines)));
        assert!(verdict(&api::Verdict::Reject(r(550, None, &["evil\r\n250 OK"]))).is_err());
        assert!(verdict(&api::Verdict::Reject(r(550, None, &[&"x".repeat(600)]))).is_err());
        let Ok(Verdict::Disconnect(reply)) = verdict(&api::Verdict::Disconnect(r(421, None, &["bye"]))) else {
            panic!()
        };
        assert_eq!(reply.to_bytes(), b"421 4.0.0 bye\r\n");
    }

    #[test]
    fn edits_are_checked() {
        let a = |m: &str| api::Address::new(m);
        assert!(address(&a("x@example.org"), false, false).is_ok());
        assert!(address(&a(""), false, false).is_ok());
        assert!(address(&a(""), false, true).is_err());
        assert!(address(&a("evil@example.org>\r\nRCPT TO:<x@y"), false, false).is_err());
        assert!(address(&a("jö@example.org"), false, true).is_err());
        assert!(address(&a("jö@example.org"), true, true).is_ok());
        let with_params = api::Address { params: vec![api::Param { name: "X".into(), value: None }], ..a("x@y.z") };
        assert_eq!(address(&with_params, false, true), Err(Violation::AddressParams));
        assert!(header("X-Ok", "v").is_ok());
        assert_eq!(header("Bad Name", "v"), Err(Violation::HeaderName("Bad Name".into())));
        assert_eq!(header("X", "a\r\nBcc: x"), Err(Violation::HeaderControl("X".into())));
        assert!(header_value("X", "tab\tok").is_ok());
        assert!(header("X", &"v".repeat(996)).is_err());
        assert!(body(b"ok\r\n", 100).is_ok());
        assert!(body(b"", 100).is_ok());
        assert_eq!(body(b"bare\n", 100), Err(Violation::BodyLineEnding));
        assert_eq!(body(b"\nx", 100), Err(Violation::BodyLineEnding));
        assert_eq!(body(b"bare\rx", 100), Err(Violation::BodyLineEnding));
        assert_eq!(body(b"end\r", 100), Err(Violation::BodyLineEnding));
        assert_eq!(body(b"n\0l\r\n", 100), Err(Violation::BodyNul));
        assert_eq!(body(b"x", 0), Err(Violation::BodyTooLarge { len: 1 }));
        assert!(quarantine_reason("spam").is_ok());
        assert!(quarantine_reason("a\nb").is_err());
    }

    #[test]
    fn edits_must_be_declared_and_fit_the_stage() {
        let manifest = Manifest {
            name: "t".into(),
            version: "1".into(),
            stages: vec![Stage::Mail],
            body: BodyAccess::None,
            edits: vec![EditKind::SetSender],
        };
        assert!(permitted(EditKind::SetSender, Stage::Mail, &manifest).is_ok());
        assert!(permitted(EditKind::SetSender, Stage::Data, &manifest).is_ok());
        assert_eq!(
            permitted(EditKind::SetSender, Stage::Rcpt, &manifest),
            Err(Violation::WrongStage { kind: EditKind::SetSender, stage: Stage::Rcpt })
        );
        assert_eq!(
            permitted(EditKind::AddRecipient, Stage::Rcpt, &manifest),
            Err(Violation::Undeclared(EditKind::AddRecipient))
        );
        for kind in [EditKind::AddHeader, EditKind::Quarantine, EditKind::SetSender] {
            assert!(!kind.allowed_at(Stage::Connect) && !kind.allowed_at(Stage::Ehlo));
        }
    }
}
