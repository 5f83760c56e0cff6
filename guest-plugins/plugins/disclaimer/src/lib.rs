//! disclaimer: appends a footer to every message body.
//!
//! - A single-part `text/*` message (or one without `Content-Type`) in 7bit, 8bit or
//!   quoted-printable gets the footer after a `-- ` separator line (encoded as
//!   quoted-printable when the body is).
//! - A multipart message gets a new `text/plain` part before its closing boundary, except
//!   `multipart/alternative`, where readers would show only the new part.
//! - Anything else (base64 or binary bodies, non-text single parts, a multipart without a
//!   closing boundary) is left alone, and so is a body the plugin did not see whole
//!   (`body-truncated`): a body is never replaced with a cut copy.
//!
//! ```toml
//! [[plugins]]
//! name = "disclaimer"
//! path = "disclaimer.wasm"
//! limits.max_body = "25MiB"  # bodies longer than max_body are not stamped
//! [plugins.config]
//! text = """
//! This message passed through wasmtp.
//! Second line."""
//! ```

use serde::Deserialize;
use wasmtp_plugin::mime::HeaderValue;
use wasmtp_plugin::{
    BodyAccess, Connection, Decision, EditKind, Envelope, Filter, Level, Manifest, Message, Stage, export,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    text: String,
}

impl Default for Config {
    fn default() -> Self {
        Config { text: "This message passed through wasmtp.".into() }
    }
}

struct Disclaimer;

impl Filter for Disclaimer {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("disclaimer", env!("CARGO_PKG_VERSION"))
            .stages([Stage::Data])
            .body(BodyAccess::Full)
            .edits([EditKind::ReplaceBody])
    }

    fn on_data(config: &Config, _conn: &Connection, _envelope: &Envelope, message: &Message) -> Decision {
        match stamp(&config.text, message) {
            Ok(body) => Decision::next().replace_body(body),
            Err((level, why)) => {
                wasmtp_plugin::log(level, &format!("{why}: no disclaimer added"));
                Decision::next()
            }
        }
    }
}

/// The body with the footer `text` added, or why it is left alone (and how loudly to say so).
fn stamp(text: &str, message: &Message) -> Result<Vec<u8>, (Level, String)> {
    let skip = |level, why: &str| Err((level, why.to_string()));
    let Some(body) = message.body.as_deref() else {
        return skip(Level::Warn, "no body (body access is not full)");
    };
    if message.body_truncated {
        return skip(Level::Warn, "body truncated (longer than max_body)");
    }
    // The footer's lines: CR, LF and CR LF all end a line; NULs are dropped.
    let text = text.replace("\r\n", "\n").replace('\r', "\n").replace('\0', "");
    let lines: Vec<&str> = text.trim_end_matches('\n').split('\n').collect();
    if lines.iter().all(|l| l.trim().is_empty()) {
        return skip(Level::Debug, "empty text");
    }

    let content_type = message.header("Content-Type").map(HeaderValue::parse).unwrap_or_default();
    let encoding = message.header("Content-Transfer-Encoding").unwrap_or("").trim().to_ascii_lowercase();
    if content_type.value == "multipart/alternative" {
        // Readers show the last alternative they can render: a new part would replace the text.
        return skip(Level::Info, "multipart/alternative is left alone");
    }
    let new_body = if content_type.value.starts_with("multipart/") {
        let Some(boundary) = content_type.param("boundary").filter(|b| !b.is_empty()) else {
            return skip(Level::Info, "multipart without boundary");
        };
        match add_part(body, &boundary, &lines) {
            Some(new_body) => new_body,
            None => return skip(Level::Info, "multipart without closing boundary"),
        }
    } else if !content_type.value.is_empty() && !content_type.value.starts_with("text/") {
        return skip(Level::Info, &format!("single part of type {}", content_type.value));
    } else {
        match encoding.as_str() {
            "" | "7bit" | "8bit" => append(body, "-- ", lines.iter().map(|l| l.as_bytes().to_vec())),
            "quoted-printable" => append(body, "--=20", lines.iter().map(|l| encode_qp(l))),
            other => return skip(Level::Info, &format!("body in transfer encoding {other}")),
        }
    };
    Ok(crlf_only(new_body))
}

/// `body` (ending in CR LF) + a blank line + `separator` + the footer lines.
fn append(body: &[u8], separator: &str, lines: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut out = body.to_vec();
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(separator.as_bytes());
    out.extend_from_slice(b"\r\n");
    for line in lines {
        out.extend(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Inserts a text/plain part before the closing `--boundary--` line, if there is one.
fn add_part(body: &[u8], boundary: &str, lines: &[&str]) -> Option<Vec<u8>> {
    let closing = format!("--{boundary}--");
    // The first line that is the closing delimiter (trailing white space allowed).
    let mut offset = 0;
    let mut at = None;
    for raw in body.split_inclusive(|&b| b == b'\n') {
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.strip_prefix(closing.as_bytes()).is_some_and(|rest| rest.iter().all(|b| *b == b' ' || *b == b'\t')) {
            at = Some(offset);
            break;
        }
        offset += raw.len();
    }
    let at = at?;
    let mut out = Vec::with_capacity(body.len() + 200);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{}\r\n",
            lines.join("\r\n")
        )
        .as_bytes(),
    );
    out.extend_from_slice(&body[at..]);
    Some(out)
}

/// One footer line in quoted-printable: `=`, non-ASCII and control bytes and white space at
/// the line end escaped.
fn encode_qp(line: &str) -> Vec<u8> {
    let bytes = line.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let last = i + 1 == bytes.len();
        if b == b'=' || b >= 0x7f || (b < b' ' && b != b'\t') || (last && (b == b' ' || b == b'\t')) {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        } else {
            out.push(b);
        }
    }
    out
}

/// Makes every line ending CR LF and drops NULs, as a replacement body must be.
fn crlf_only(body: Vec<u8>) -> Vec<u8> {
    if !body.iter().enumerate().any(|(i, &b)| {
        b == 0 || (b == b'\r' && body.get(i + 1) != Some(&b'\n')) || (b == b'\n' && (i == 0 || body[i - 1] != b'\r'))
    }) {
        return body; // the usual case: already clean
    }
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            0 => {}
            b'\r' if body.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            b'\r' | b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

export!(Disclaimer);

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)], body: &str) -> Message {
        Message::new(headers, body.as_bytes())
    }

    fn stamped(text: &str, headers: &[(&str, &str)], body: &str) -> Option<String> {
        stamp(text, &message(headers, body)).ok().map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn appends_to_plain_text() {
        assert_eq!(stamped("Footer\nline 2\n", &[], "Hi\r\n").unwrap(), "Hi\r\n\r\n-- \r\nFooter\r\nline 2\r\n");
        assert_eq!(stamped("F", &[("Content-Transfer-Encoding", "8BIT")], "Hi").unwrap(), "Hi\r\n\r\n-- \r\nF\r\n");
        assert_eq!(
            stamped(
                "a=b é ",
                &[("Content-Type", "text/plain"), ("Content-Transfer-Encoding", "quoted-printable")],
                "x\r\n"
            )
            .unwrap(),
            "x\r\n\r\n--=20\r\na=3Db =C3=A9=20\r\n"
        );
    }

    #[test]
    fn adds_a_part_to_multiparts() {
        let headers = [("Content-Type", "multipart/mixed; boundary=\"XY\"")];
        let body = "pre\r\n--XY\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XY--\r\nepilogue\r\n--XY--\r\n";
        assert_eq!(
            stamped("T1\r\nT2", &headers, body).unwrap(),
            "pre\r\n--XY\r\nContent-Type: text/plain\r\n\r\nhi\r\n--XY\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\n\r\nT1\r\nT2\r\n--XY--\r\nepilogue\r\n--XY--\r\n"
        );
        assert_eq!(stamped("T", &headers, "--XY\r\n\r\nhi\r\n"), None); // no closing boundary
    }

    #[test]
    fn leaves_other_bodies_alone() {
        assert_eq!(stamped("T", &[("Content-Transfer-Encoding", "base64")], "aGk=\r\n"), None);
        assert_eq!(stamped("T", &[("Content-Type", "application/pdf")], "%PDF\r\n"), None);
        assert_eq!(stamped("", &[], "x\r\n"), None);
        let mut truncated = message(&[], "x\r\n");
        truncated.body_truncated = true;
        assert!(stamp("T", &truncated).is_err());
    }

    #[test]
    fn output_is_crlf_only() {
        assert_eq!(crlf_only(b"a\nb\rc\r\n\0d\r".to_vec()), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(stamped("a\rb\0", &[], "x\r\n").unwrap(), "x\r\n\r\n-- \r\na\r\nb\r\n");
    }
}
