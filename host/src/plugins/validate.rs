//! Checks everything a plugin returns before it has any effect (DESIGN §2.2, §2.5): reply class
//! against verdict, enhanced code against reply code, line length and characters, addresses
//! in rewrites, header and body syntax, and edits against the manifest and the stage. A
//! violation is a fault of the plugin — never written to the wire, never silently "fixed".

use super::bindings::{self, Edit, EditKind, Stage};
use crate::smtp::{EnhancedCode, Mailbox, Reply};

/// Longest header field line we let a plugin create (RFC 5322 §2.1.1), CRLF excluded.
const MAX_HEADER_LINE: usize = 998;
const MAX_QUARANTINE_REASON: usize = 200;

/// A verdict, checked and converted to the host's reply type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Accept,
    Reject(Reply),
    Tempfail(Reply),
    Disconnect(Reply),
}

pub fn verdict(v: &bindings::Verdict) -> Result<Verdict, String> {
    Ok(match v {
        bindings::Verdict::Continue => Verdict::Continue,
        bindings::Verdict::Accept => Verdict::Accept,
        bindings::Verdict::Reject(r) => Verdict::Reject(reply(r, "reject", |c| (500..600).contains(&c))?),
        bindings::Verdict::Tempfail(r) => Verdict::Tempfail(reply(r, "tempfail", |c| (400..500).contains(&c))?),
        bindings::Verdict::Disconnect(r) => Verdict::Disconnect(reply(r, "disconnect", |c| (400..600).contains(&c))?),
    })
}

fn reply(r: &bindings::Reply, verdict: &str, code_ok: impl Fn(u16) -> bool) -> Result<Reply, String> {
    if !code_ok(r.code) {
        return Err(format!("reply code {} does not fit a {verdict} verdict", r.code));
    }
    let class = (r.code / 100) as u8;
    let enhanced = match &r.enhanced {
        None => EnhancedCode::new(class, 0, 0),
        Some(text) => EnhancedCode::parse(text).ok_or_else(|| format!("invalid enhanced status code {text:?}"))?,
    };
    if r.lines.is_empty() {
        return Err("reply has no text lines".into());
    }
    let reply = Reply::multiline(r.code, Some(enhanced), r.lines.clone());
    reply.validate().map_err(|e| e.to_string())?;
    Ok(reply)
}

/// Which edit kinds each stage can apply.
pub fn allowed_at(stage: Stage, kind: EditKind) -> bool {
    match stage {
        Stage::Connect | Stage::Ehlo => false,
        Stage::Mail => kind == EditKind::SetSender,
        Stage::Rcpt => matches!(kind, EditKind::AddRecipient | EditKind::RemoveRecipient),
        Stage::Data => true,
    }
}

pub fn kind_of(edit: &Edit) -> EditKind {
    match edit {
        Edit::SetSender(_) => EditKind::SetSender,
        Edit::AddRecipient(_) => EditKind::AddRecipient,
        Edit::RemoveRecipient(_) => EditKind::RemoveRecipient,
        Edit::AddHeader(_) => EditKind::AddHeader,
        Edit::InsertHeader(_) => EditKind::InsertHeader,
        Edit::ChangeHeader(_) => EditKind::ChangeHeader,
        Edit::RemoveHeader(_) => EditKind::RemoveHeader,
        Edit::ReplaceBody(_) => EditKind::ReplaceBody,
        Edit::Quarantine(_) => EditKind::Quarantine,
    }
}

/// Checks that an edit is declared in the manifest and allowed at the stage.
pub fn permitted(edit: &Edit, stage: Stage, declared: &[EditKind]) -> Result<(), String> {
    let kind = kind_of(edit);
    if !declared.contains(&kind) {
        return Err(format!("edit {kind:?} is not declared in the manifest"));
    }
    if !allowed_at(stage, kind) {
        return Err(format!("edit {kind:?} is not allowed at the {stage:?} stage"));
    }
    Ok(())
}

/// An address from a rewrite. `utf8` says whether the transaction may carry UTF-8 addresses.
pub fn address(a: &bindings::Address, utf8: bool, recipient: bool) -> Result<Mailbox, String> {
    if !a.params.is_empty() {
        return Err("addresses in edits must not carry ESMTP parameters".into());
    }
    if !recipient && a.mailbox.is_empty() {
        return Ok(Mailbox::null());
    }
    Mailbox::parse(&a.mailbox, utf8, recipient).map_err(|e| format!("invalid address {:?}: {e}", a.mailbox))
}

pub fn header_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty() && name.len() <= 200 && name.bytes().all(|b| (33..=126).contains(&b) && b != b':');
    if ok { Ok(()) } else { Err(format!("invalid header name {name:?}")) }
}

pub fn header_value(name: &str, value: &str) -> Result<(), String> {
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("header {name:?} value contains CR, LF, NUL or another control character"));
    }
    if name.len() + 2 + value.len() > MAX_HEADER_LINE {
        return Err(format!("header {name:?} would be longer than {MAX_HEADER_LINE} octets"));
    }
    Ok(())
}

/// A replacement body: CRLF line endings only, no NUL, within the message size limit.
pub fn body(body: &[u8], max: u64) -> Result<(), String> {
    if body.len() as u64 > max {
        return Err(format!("replacement body of {} octets exceeds the message size limit", body.len()));
    }
    if body.contains(&0) {
        return Err("replacement body contains NUL".into());
    }
    for (i, &b) in body.iter().enumerate() {
        let bare_lf = b == b'\n' && (i == 0 || body[i - 1] != b'\r');
        let bare_cr = b == b'\r' && body.get(i + 1) != Some(&b'\n');
        if bare_lf || bare_cr {
            return Err("replacement body contains a bare CR or LF".into());
        }
    }
    Ok(())
}

pub fn quarantine_reason(reason: &str) -> Result<(), String> {
    if reason.len() > MAX_QUARANTINE_REASON || reason.chars().any(char::is_control) {
        return Err("invalid quarantine reason".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16, enhanced: Option<&str>, lines: &[&str]) -> bindings::Reply {
        bindings::Reply {
            code,
            enhanced: enhanced.map(String::from),
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn reply_class_must_fit_the_verdict() {
        assert!(verdict(&bindings::Verdict::Reject(r(550, Some("5.7.1"), &["no"]))).is_ok());
        assert!(verdict(&bindings::Verdict::Reject(r(250, Some("2.0.0"), &["no"]))).is_err());
        assert!(verdict(&bindings::Verdict::Tempfail(r(550, None, &["no"]))).is_err());
        assert!(verdict(&bindings::Verdict::Reject(r(550, Some("4.7.1"), &["no"]))).is_err());
        assert!(verdict(&bindings::Verdict::Reject(r(550, Some("5.7"), &["no"]))).is_err());
        assert!(verdict(&bindings::Verdict::Reject(r(550, None, &[]))).is_err());
        assert!(verdict(&bindings::Verdict::Reject(r(550, None, &["evil\r\n250 OK"]))).is_err());
        assert!(verdict(&bindings::Verdict::Reject(r(550, None, &[&"x".repeat(600)]))).is_err());
        let Ok(Verdict::Disconnect(reply)) = verdict(&bindings::Verdict::Disconnect(r(421, None, &["bye"]))) else {
            panic!()
        };
        assert_eq!(reply.to_bytes(), b"421 4.0.0 bye\r\n");
    }

    #[test]
    fn edits_are_checked() {
        let a = |m: &str| bindings::Address { mailbox: m.into(), params: vec![] };
        assert!(address(&a("x@example.org"), false, false).is_ok());
        assert!(address(&a(""), false, false).is_ok());
        assert!(address(&a(""), false, true).is_err());
        assert!(address(&a("evil@example.org>\r\nRCPT TO:<x@y"), false, false).is_err());
        assert!(address(&a("jö@example.org"), false, true).is_err());
        assert!(address(&a("jö@example.org"), true, true).is_ok());
        assert!(header_name("X-Ok").is_ok());
        assert!(header_name("Bad Name").is_err());
        assert!(header_value("X", "a\r\nBcc: x").is_err());
        assert!(header_value("X", "tab\tok").is_ok());
        assert!(body(b"ok\r\n", 100).is_ok());
        assert!(body(b"bare\n", 100).is_err());
        assert!(body(b"bare\rx", 100).is_err());
        assert!(body(b"x", 0).is_err());
        let declared = [EditKind::SetSender];
        assert!(permitted(&Edit::SetSender(a("x@y.z")), Stage::Mail, &declared).is_ok());
        assert!(permitted(&Edit::SetSender(a("x@y.z")), Stage::Rcpt, &declared).is_err());
        assert!(permitted(&Edit::AddRecipient(a("x@y.z")), Stage::Rcpt, &declared).is_err());
    }
}
