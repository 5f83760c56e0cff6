//! XFORWARD (Postfix's XFORWARD_README) from a trusted client: when Postfix runs wasmtp as its
//! `smtpd_proxy_filter`, the proxy's client is Postfix, and XFORWARD says who Postfix's client
//! is. From listed addresses only; the real client then stands in for the peer in what plugins
//! see, in SPF, in our `Received:` and in what the upstream is told.

use std::net::{IpAddr, SocketAddr};

use super::{Flow, Session};
use crate::replies;

/// What a trusted XFORWARD said about the real client.
#[derive(Debug, Clone, Default)]
pub(super) struct Forwarded {
    addr: Option<IpAddr>,
    port: Option<u16>,
    name: Option<String>,
    helo: Option<String>,
}

/// `xtext` (RFC 3461 §4) decoding: `+XX` is the octet XX.
fn decode_xtext(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// A value (`None` for Postfix's "unknown" markers), or `Err` for one that is not valid xtext.
fn known(value: &str) -> Result<Option<String>, ()> {
    let value = decode_xtext(value).ok_or(())?;
    if value.len() > 255 {
        return Err(());
    }
    Ok((!matches!(value.as_str(), "[UNAVAILABLE]" | "[TEMPUNAVAIL]" | "")).then_some(value))
}

impl Forwarded {
    /// Applies `NAME=... ADDR=... PORT=... HELO=... PROTO=...`; `None` for a malformed one.
    fn apply(&mut self, attributes: &str) -> Option<()> {
        for attribute in attributes.split(' ').filter(|a| !a.is_empty()) {
            let (name, value) = attribute.split_once('=')?;
            match name.to_ascii_uppercase().as_str() {
                "ADDR" => {
                    self.addr = match known(value).ok()? {
                        Some(v) => Some(v.strip_prefix("IPV6:").unwrap_or(&v).parse().ok()?),
                        None => None,
                    }
                }
                "PORT" => self.port = known(value).ok()?.map(|v| v.parse()).transpose().ok()?,
                "NAME" => self.name = known(value).ok()?.filter(|n| n != "unknown"),
                "HELO" => self.helo = known(value).ok()?,
                "PROTO" | "IDENT" | "SOURCE" => {}
                _ => return None,
            }
        }
        Some(())
    }
}

impl Session {
    pub(super) fn xforward_trusted(&self) -> bool {
        self.listener.xforward_from.iter().any(|net| net.contains(&self.peer.ip()))
    }

    pub(super) fn xforward(&mut self, attributes: &str) -> Flow {
        if !self.xforward_trusted() {
            return self.error(replies::xforward_not_authorized());
        }
        if self.transaction.is_some() {
            return self.error(replies::bad_sequence("XFORWARD inside a mail transaction"));
        }
        let mut forwarded = self.forwarded.clone().unwrap_or_default();
        if forwarded.apply(attributes).is_none() {
            return self.error(replies::parse_error(&crate::smtp::command::ParseError::Parameters));
        }
        let client = (forwarded.addr.unwrap_or(self.peer.ip()), forwarded.port.unwrap_or(0));
        let (name, helo) = (forwarded.name.clone(), forwarded.helo.clone());
        self.upstream.set_client(|c| {
            (c.ip, c.port) = client;
            c.name = name;
            if let Some(helo) = helo {
                c.helo = Some(helo);
            }
        });
        self.forwarded = Some(forwarded);
        self.reply(replies::ok());
        Flow::Continue
    }

    /// The client the session acts for: the peer, or who a trusted XFORWARD named.
    pub(super) fn client_addr(&self) -> SocketAddr {
        match &self.forwarded {
            Some(f) => SocketAddr::new(f.addr.unwrap_or(self.peer.ip()), f.port.unwrap_or(self.peer.port())),
            None => self.peer,
        }
    }

    /// The client's verified host name: iprev's, or a trusted XFORWARD's.
    pub(super) fn client_name(&self) -> Option<String> {
        if let Some(f) = &self.forwarded {
            return f.name.clone();
        }
        self.iprev.as_ref().and_then(|i| i.check.verified_name()).map(String::from)
    }

    /// The client's HELO name: its own, or a trusted XFORWARD's.
    pub(super) fn client_helo(&self) -> Option<&str> {
        self.forwarded.as_ref().and_then(|f| f.helo.as_deref()).or_else(|| self.helo.as_ref().map(|h| h.name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_postfix_forwards() {
        let mut f = Forwarded::default();
        f.apply("NAME=client.example ADDR=192.0.2.7 PORT=4711 HELO=client.example IDENT=123 PROTO=ESMTP SOURCE=REMOTE")
            .unwrap();
        assert_eq!(f.addr, Some("192.0.2.7".parse().unwrap()));
        assert_eq!(
            (f.port, f.name.as_deref(), f.helo.as_deref()),
            (Some(4711), Some("client.example"), Some("client.example"))
        );
        f.apply("NAME=[UNAVAILABLE] ADDR=IPV6:2001:db8::1").unwrap();
        assert_eq!((f.name.as_deref(), f.addr), (None, Some("2001:db8::1".parse().unwrap())));
        f.apply("HELO=a+20b").unwrap();
        assert_eq!(f.helo.as_deref(), Some("a b"));
        assert!(f.apply("ADDR=not-an-address").is_none());
        assert!(f.apply("BOGUS=1").is_none());
        assert!(f.apply("HELO=evil+0D+0Ax").is_none());
    }
}
