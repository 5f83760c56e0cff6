//! SMTP replies: a code, an optional enhanced status code (RFC 3463) and one or more text lines,
//! rendered in the multiline form of RFC 5321 §4.2.1.
//!
//! Replies built by the proxy itself come from the constructors here and are valid by
//! construction. Replies that come from outside (the upstream server, later plugins) go through
//! [`Reply::validate`] or [`Reply::parse_upstream`] before they reach a client.

use std::fmt;

/// The longest reply line we ever write, including the code and the CRLF (RFC 5321 §4.5.3.1.5).
pub const MAX_REPLY_LINE: usize = 512;

/// An enhanced status code `class.subject.detail` (RFC 3463), e.g. `5.1.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        Self { class, subject, detail }
    }

    /// Parses `class.subject.detail` with the ranges RFC 3463 allows (class 2, 4 or 5; subject
    /// and detail up to three digits).
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let number = |p: &str, max_len: usize| -> Option<u16> {
            if p.is_empty() || p.len() > max_len || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let class = number(class, 1)? as u8;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        Some(Self { class, subject: number(subject, 3)?, detail: number(detail, 3)? })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

/// Why a reply from outside the proxy cannot be written to a client as it is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidReply {
    #[error("reply code {0} is outside 200..=599")]
    Code(u16),
    #[error("enhanced status code {enhanced} does not match the class of reply code {code}")]
    EnhancedClass { code: u16, enhanced: EnhancedCode },
    #[error("reply has no text lines")]
    NoLines,
    #[error("reply line {0} contains CR, LF, NUL or another control character")]
    ControlCharacter(usize),
    #[error("reply line {0} is longer than {MAX_REPLY_LINE} octets")]
    TooLong(usize),
}

impl Reply {
    /// A reply with one line of text. `enhanced` must be of the code's class; the proxy's own
    /// replies are written with literals, which the unit tests check.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Self { code, enhanced, lines: vec![text.into()] }
    }

    /// A reply with an enhanced status code given as `(class, subject, detail)`.
    pub fn enhanced(code: u16, (class, subject, detail): (u8, u16, u16), text: impl Into<String>) -> Self {
        Self::new(code, Some(EnhancedCode::new(class, subject, detail)), text)
    }

    /// A reply with several lines; `lines` must not be empty.
    pub fn multiline(code: u16, enhanced: Option<EnhancedCode>, lines: Vec<String>) -> Self {
        debug_assert!(!lines.is_empty());
        Self { code, enhanced, lines }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    pub fn enhanced_code(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// The same reply with another code and enhanced code, text kept.
    pub fn with_code(mut self, code: u16, enhanced: Option<EnhancedCode>) -> Self {
        self.code = code;
        self.enhanced = enhanced;
        self
    }

    /// Checks every rule a reply must follow before it is written to a client (RFC 5321
    /// §4.2 and §4.5.3.1.5, RFC 3463 §2).
    pub fn validate(&self) -> Result<(), InvalidReply> {
        if !(200..=599).contains(&self.code) {
            return Err(InvalidReply::Code(self.code));
        }
        if let Some(enhanced) = self.enhanced
            && u16::from(enhanced.class) != self.code / 100
        {
            return Err(InvalidReply::EnhancedClass { code: self.code, enhanced });
        }
        if self.lines.is_empty() {
            return Err(InvalidReply::NoLines);
        }
        let prefix = self.prefix_len();
        for (i, line) in self.lines.iter().enumerate() {
            if line.chars().any(|c| c.is_control()) {
                return Err(InvalidReply::ControlCharacter(i));
            }
            if prefix + line.len() + 2 > MAX_REPLY_LINE {
                return Err(InvalidReply::TooLong(i));
            }
        }
        Ok(())
    }

    /// Length of `"250-2.1.0 "` before the text of each line.
    fn prefix_len(&self) -> usize {
        4 + self.enhanced.map_or(0, |e| e.to_string().len() + 1)
    }

    /// Appends the wire form (every line CRLF-terminated) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let rendered = match self.enhanced {
                Some(e) if line.is_empty() => format!("{}{sep}{e}\r\n", self.code),
                Some(e) => format!("{}{sep}{e} {line}\r\n", self.code),
                None => format!("{}{sep}{line}\r\n", self.code),
            };
            out.extend_from_slice(rendered.as_bytes());
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    /// Builds a reply from the lines an upstream server sent (each without CRLF, already checked
    /// to share one code). The enhanced code is taken from the first line when it is present and
    /// of the right class, else `default_enhanced` supplies one for the reply's class. Text that
    /// would make a line too long is cut, control characters become `?`: an upstream's reply is
    /// relayed faithfully where it is valid and made valid where it is not.
    pub fn parse_upstream(code: u16, texts: &[String], default_enhanced: impl Fn(u8) -> EnhancedCode) -> Self {
        let class = (code / 100) as u8;
        let mut found: Option<EnhancedCode> = None;
        let mut lines = Vec::with_capacity(texts.len().max(1));
        for text in texts {
            let (maybe_code, rest) = match text.split_once(' ') {
                Some((first, rest)) => (EnhancedCode::parse(first), rest),
                None => (EnhancedCode::parse(text), ""),
            };
            let body = match maybe_code {
                Some(e) if e.class == class => {
                    found.get_or_insert(e);
                    rest
                }
                _ => text.as_str(),
            };
            lines.push(sanitize_text(body));
        }
        if lines.is_empty() {
            lines.push(String::new());
        }
        // An intermediate reply (354) carries no enhanced status code (RFC 3463 knows 2, 4, 5).
        let enhanced = (class != 3).then(|| found.unwrap_or_else(|| default_enhanced(class)));
        let mut reply = Self { code, enhanced, lines };
        let room = MAX_REPLY_LINE - 2 - reply.prefix_len();
        for line in &mut reply.lines {
            truncate_at_char_boundary(line, room);
        }
        reply
    }
}

/// Replaces control characters with `?` so a text can be placed in a reply line.
fn sanitize_text(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(e) = self.enhanced {
            write!(f, " {e}")?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_single_and_multiline_replies() {
        assert_eq!(Reply::enhanced(250, (2, 1, 0), "Ok").to_bytes(), b"250 2.1.0 Ok\r\n");
        let multi = Reply::multiline(550, Some(EnhancedCode::new(5, 7, 1)), vec!["a".into(), "b".into()]);
        assert_eq!(multi.to_bytes(), b"550-5.7.1 a\r\n550 5.7.1 b\r\n");
        assert_eq!(Reply::new(220, None, "hi").to_bytes(), b"220 hi\r\n");
    }

    #[test]
    fn parses_enhanced_codes() {
        assert_eq!(EnhancedCode::parse("5.7.1"), Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(EnhancedCode::parse("4.123.999"), Some(EnhancedCode::new(4, 123, 999)));
        for bad in ["3.0.0", "5.1", "5.1.1.1", "5.1234.1", "x.1.1", "", "5..1"] {
            assert_eq!(EnhancedCode::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn validation_rejects_what_a_client_must_never_see() {
        assert!(Reply::enhanced(250, (2, 0, 0), "ok").validate().is_ok());
        assert_eq!(
            Reply::enhanced(250, (5, 0, 0), "x").validate(),
            Err(InvalidReply::EnhancedClass { code: 250, enhanced: EnhancedCode::new(5, 0, 0) })
        );
        assert_eq!(Reply::new(250, None, "a\r\nb").validate(), Err(InvalidReply::ControlCharacter(0)));
        assert_eq!(Reply::new(199, None, "x").validate(), Err(InvalidReply::Code(199)));
        assert_eq!(Reply::new(250, None, "x".repeat(507)).validate(), Err(InvalidReply::TooLong(0)));
        assert!(Reply::new(250, None, "x".repeat(506)).validate().is_ok());
    }

    #[test]
    fn upstream_replies_keep_their_enhanced_code_or_get_a_default() {
        let r = Reply::parse_upstream(250, &["2.0.0 Ok: queued as X".into()], |_| EnhancedCode::new(2, 6, 0));
        assert_eq!(r.to_bytes(), b"250 2.0.0 Ok: queued as X\r\n");
        let r = Reply::parse_upstream(550, &["No such user".into()], |c| EnhancedCode::new(c, 1, 1));
        assert_eq!(r.to_bytes(), b"550 5.1.1 No such user\r\n");
        let r = Reply::parse_upstream(451, &["2.0.0 mismatched".into()], |c| EnhancedCode::new(c, 0, 0));
        assert_eq!(r.to_bytes(), b"451 4.0.0 2.0.0 mismatched\r\n");
        let long = Reply::parse_upstream(250, &["x".repeat(2000)], |c| EnhancedCode::new(c, 0, 0));
        assert!(long.validate().is_ok());
    }
}
