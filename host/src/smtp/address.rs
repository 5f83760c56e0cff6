//! Envelope addresses: the `<path>` of MAIL FROM and RCPT TO (RFC 5321 §4.1.2, RFC 6531 for
//! SMTPUTF8), parsed strictly so that only well-formed mailboxes are ever relayed upstream.

use std::fmt;

const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_PATH: usize = 256;

/// A mailbox as it appears between the angle brackets, without any source route.
/// The empty mailbox is the null reverse-path `<>`.
///
/// Two mailboxes are equal when their local parts are equal as written and their domains are
/// equal ignoring ASCII case (RFC 5321 §2.4: the local part may be case-sensitive, domains are
/// not); `Postmaster` is equal in any case (§4.5.1). [`Mailbox::is`] applies the same rule to a
/// plain string. The text is kept as the client wrote it.
#[derive(Clone, Debug)]
pub struct Mailbox(String);

/// The mailbox's local part and domain, split at the last `@` (none for `Postmaster` and `<>`).
fn split(mailbox: &str) -> (&str, Option<&str>) {
    match mailbox.rsplit_once('@') {
        Some((local, domain)) => (local, Some(domain)),
        None => (mailbox, None),
    }
}

fn same_mailbox(a: &str, b: &str) -> bool {
    match (split(a), split(b)) {
        ((la, Some(da)), (lb, Some(db))) => la == lb && da.eq_ignore_ascii_case(db),
        ((la, None), (lb, None)) => la.eq_ignore_ascii_case(lb),
        _ => false,
    }
}

impl PartialEq for Mailbox {
    fn eq(&self, other: &Self) -> bool {
        same_mailbox(&self.0, &other.0)
    }
}

impl Eq for Mailbox {}

impl std::hash::Hash for Mailbox {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match split(&self.0) {
            (local, Some(domain)) => {
                local.hash(state);
                for b in domain.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
            (name, None) => {
                for b in name.bytes() {
                    state.write_u8(b.to_ascii_lowercase());
                }
            }
        }
    }
}

impl Mailbox {
    pub fn null() -> Self {
        Self(String::new())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_null(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `other` names this mailbox, by the same rule as `==`.
    pub fn is(&self, other: &str) -> bool {
        same_mailbox(&self.0, other)
    }

    /// True when any octet is outside ASCII (needs SMTPUTF8 upstream).
    pub fn is_utf8(&self) -> bool {
        !self.0.is_ascii()
    }

    /// Parses a bare mailbox such as `jane@example.org` (no angle brackets), as used by
    /// configuration and later by plugin rewrites. The special recipient `Postmaster` is allowed
    /// when `allow_postmaster` is set.
    pub fn parse(s: &str, utf8: bool, allow_postmaster: bool) -> Result<Self, AddressError> {
        if allow_postmaster && s.eq_ignore_ascii_case("postmaster") {
            return Ok(Self(s.to_string()));
        }
        validate_mailbox(s, utf8)?;
        Ok(Self(s.to_string()))
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("address must be enclosed in <>")]
    MissingBrackets,
    #[error("address syntax error")]
    Syntax,
    #[error("address is too long")]
    TooLong,
    #[error("address contains non-ASCII characters but SMTPUTF8 was not requested")]
    NeedsUtf8,
}

/// Parses `<path>` at the start of `s` and returns the mailbox and the rest of the line.
/// A source route (`<@a,@b:user@c>`) is accepted and dropped, as RFC 5321 §C allows.
pub fn parse_path(s: &str, utf8: bool) -> Result<(Mailbox, &str), AddressError> {
    let inner_start = s.strip_prefix('<').ok_or(AddressError::MissingBrackets)?;
    let end = find_closing_bracket(inner_start).ok_or(AddressError::MissingBrackets)?;
    let inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if inner.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    let mailbox = match inner.strip_prefix('@') {
        Some(_) => {
            let (route, mailbox) = inner.split_once(':').ok_or(AddressError::Syntax)?;
            for hop in route.split(',') {
                let domain = hop.strip_prefix('@').ok_or(AddressError::Syntax)?;
                validate_domain(domain, utf8)?;
            }
            mailbox
        }
        None => inner,
    };
    if mailbox.is_empty() {
        return Ok((Mailbox::null(), rest));
    }
    Ok((Mailbox::parse(mailbox, utf8, true)?, rest))
}

/// Finds the `>` that closes the path, skipping over quoted strings in the local part.
fn find_closing_bracket(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn validate_mailbox(s: &str, utf8: bool) -> Result<(), AddressError> {
    if s.len() > MAX_PATH {
        return Err(AddressError::TooLong);
    }
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    let at = s.rfind('@').ok_or(AddressError::Syntax)?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if local.starts_with('"') {
        validate_quoted_string(local)?;
    } else {
        validate_dot_string(local)?;
    }
    if domain.starts_with('[') { validate_address_literal(domain) } else { validate_domain(domain, utf8) }
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn validate_dot_string(s: &str) -> Result<(), AddressError> {
    if s.is_empty() || s.split('.').any(|atom| atom.is_empty() || !atom.chars().all(is_atext)) {
        return Err(AddressError::Syntax);
    }
    Ok(())
}

fn validate_quoted_string(s: &str) -> Result<(), AddressError> {
    let inner = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')).ok_or(AddressError::Syntax)?;
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(q) if (' '..='~').contains(&q) => {}
                _ => return Err(AddressError::Syntax),
            },
            '"' => return Err(AddressError::Syntax),
            c if c.is_control() => return Err(AddressError::Syntax),
            _ => {}
        }
    }
    Ok(())
}

fn validate_domain(s: &str, utf8: bool) -> Result<(), AddressError> {
    if s.is_empty() || s.len() > MAX_DOMAIN {
        return Err(AddressError::Syntax);
    }
    if !utf8 && !s.is_ascii() {
        return Err(AddressError::NeedsUtf8);
    }
    for label in s.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control()));
        if !ok {
            return Err(AddressError::Syntax);
        }
    }
    Ok(())
}

fn validate_address_literal(s: &str) -> Result<(), AddressError> {
    let inner = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')).ok_or(AddressError::Syntax)?;
    let valid = if let Some(v6) = inner.strip_prefix("IPv6:") {
        v6.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        inner.parse::<std::net::Ipv4Addr>().is_ok()
    };
    if valid { Ok(()) } else { Err(AddressError::Syntax) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> String {
        parse_path(s, false).map(|(m, _)| m.as_str().to_string()).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn accepts_valid_paths() {
        assert_eq!(ok("<jane@example.org>"), "jane@example.org");
        assert_eq!(ok("<>"), "");
        assert_eq!(ok("<Postmaster>"), "Postmaster");
        assert_eq!(ok("<\"john doe\"@example.org>"), "\"john doe\"@example.org");
        assert_eq!(ok("<@relay.example,@b.example:joe@example.org>"), "joe@example.org");
        assert_eq!(ok("<a.b+tag@[192.0.2.1]>"), "a.b+tag@[192.0.2.1]");
        assert_eq!(ok("<x@[IPv6:2001:db8::1]>"), "x@[IPv6:2001:db8::1]");
        let (m, rest) = parse_path("<a@b.c> SIZE=10", false).unwrap();
        assert_eq!((m.as_str(), rest), ("a@b.c", " SIZE=10"));
    }

    #[test]
    fn refuses_malformed_paths() {
        for bad in [
            "jane@example.org",
            "<jane@example.org",
            "<jane>",
            "<jane@>",
            "<@example.org>",
            "<ja ne@example.org>",
            "<jane..doe@example.org>",
            "<.jane@example.org>",
            "<jane@-example.org>",
            "<jane@exa_mple.org>",
            "<jane@[300.1.1.1]>",
            "<\"unterminated@example.org>",
            "<jane@example.org\u{7f}>",
        ] {
            assert!(parse_path(bad, false).is_err(), "{bad:?} should be refused");
        }
        let long = format!("<{}@example.org>", "a".repeat(65));
        assert_eq!(parse_path(&long, false).unwrap_err(), AddressError::TooLong);
    }

    #[test]
    fn mailboxes_compare_with_the_domain_case_insensitive() {
        let m = |s: &str| Mailbox::parse(s, true, true).unwrap();
        assert_eq!(m("jane@Example.ORG"), m("jane@example.org"));
        assert_ne!(m("Jane@example.org"), m("jane@example.org"), "the local part is compared as written");
        assert_eq!(m("postmaster"), m("Postmaster"));
        assert_ne!(m("postmaster"), m("postmaster@example.org"));
        assert!(m("a@B.example").is("a@b.EXAMPLE"));
        assert!(!m("a@b.example").is("b@b.example"));
        assert_eq!(Mailbox::null(), Mailbox::null());
        let hash = |m: &Mailbox| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            m.hash(&mut h);
            h.finish()
        };
        assert_eq!(hash(&m("jane@Example.ORG")), hash(&m("jane@example.org")));
        let set: std::collections::HashSet<Mailbox> = [m("x@A.example"), m("x@a.example")].into_iter().collect();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn utf8_needs_smtputf8() {
        assert_eq!(parse_path("<jöran@exämple.org>", false).unwrap_err(), AddressError::NeedsUtf8);
        assert_eq!(parse_path("<jöran@exämple.org>", true).unwrap().0.as_str(), "jöran@exämple.org");
    }
}
