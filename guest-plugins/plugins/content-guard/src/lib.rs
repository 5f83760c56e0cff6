//! content-guard: refuses messages with dangerous attachments and tags suspicious ones.
//!
//! The MIME tree is walked (nested multiparts and attached messages, up to 10 levels). A part
//! whose file name (`Content-Disposition: ...; filename=` or `filename*=` per RFC 2231, or
//! `Content-Type: ...; name=`, RFC 2047 encoded words decoded) ends in a forbidden extension
//! gets the message refused with `550 5.7.1`. Otherwise, when the subject or a `text/*` part
//! (base64 and quoted-printable decoded, ASCII case and runs of white space ignored) contains a
//! suspicious phrase, the subject is prefixed with `tag`. A truncated body is scanned as far
//! as it goes.
//!
//! ```toml
//! [[plugins]]
//! name = "guard"
//! path = "content_guard.wasm"
//! [plugins.config]
//! forbidden_extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "jar", "msi", "ps1"]
//! suspicious_words = ["password reset", "verify your account", "wire transfer"]
//! tag = "[SUSPICIOUS]"
//! ```

use std::borrow::Cow;

use serde::Deserialize;
use wasmtp_plugin::mime::HeaderValue;
use wasmtp_plugin::{
    BodyAccess, Connection, Decision, EditKind, Envelope, Filter, Level, Manifest, Message, Stage, export,
};

/// Deeper MIME nesting is not descended into (and logged).
const MAX_DEPTH: usize = 10;

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    forbidden_extensions: Vec<String>,
    suspicious_words: Vec<String>,
    tag: String,
}

impl Default for Config {
    fn default() -> Self {
        let strings = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
        Config {
            forbidden_extensions: strings(&[
                "exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "jar", "msi", "ps1",
            ]),
            suspicious_words: strings(&["password reset", "verify your account", "wire transfer"]),
            tag: "[SUSPICIOUS]".into(),
        }
    }
}

struct ContentGuard;

impl Filter for ContentGuard {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("content-guard", env!("CARGO_PKG_VERSION"))
            .stages([Stage::Data])
            .body(BodyAccess::Full)
            .edits([EditKind::ChangeHeader, EditKind::AddHeader])
    }

    fn on_data(config: &Config, _conn: &Connection, _envelope: &Envelope, message: &Message) -> Decision {
        let (decision, too_deep) = check(config, message);
        if too_deep {
            wasmtp_plugin::log(Level::Warn, "MIME nesting deeper than 10 levels was not scanned");
        }
        decision
    }
}

/// The decision for `message`, and whether part of it was nested too deep to be scanned.
fn check(config: &Config, message: &Message) -> (Decision, bool) {
    let mut scan = Scan::new(config);
    let subject = message.header("Subject");
    if let Some(subject) = subject {
        scan.search_text(decode_words(subject).as_bytes());
    }
    let headers: Vec<(String, String)> = message.headers.iter().map(|h| (h.name.clone(), h.value.clone())).collect();
    scan.entity(&headers, message.body.as_deref().unwrap_or_default(), 0);

    let decision = if let Some(ext) = scan.forbidden {
        Decision::reject(550, "5.7.1", &format!("Attachment type .{ext} is not accepted"))
    } else if !scan.suspicious || config.tag.trim().is_empty() {
        Decision::next()
    } else {
        match subject {
            Some(old) if old.starts_with(&config.tag) => Decision::next(),
            Some(old) => Decision::next().change_header("Subject", 1, &format!("{} {old}", config.tag)),
            None => Decision::next().add_header("Subject", &config.tag),
        }
    };
    (decision, scan.too_deep)
}

/// What the walk over the message found.
struct Scan {
    /// Forbidden extensions, lowercase, without the dot.
    extensions: Vec<String>,
    /// Suspicious phrases, lowercase, white space collapsed.
    words: Vec<String>,
    /// The first forbidden extension seen (as configured).
    forbidden: Option<String>,
    suspicious: bool,
    too_deep: bool,
}

impl Scan {
    fn new(config: &Config) -> Self {
        Scan {
            extensions: config
                .forbidden_extensions
                .iter()
                .map(|e| e.trim().trim_start_matches('.').to_lowercase())
                .filter(|e| !e.is_empty())
                .collect(),
            words: config.suspicious_words.iter().map(|w| normalize(w.as_bytes())).filter(|w| !w.is_empty()).collect(),
            forbidden: None,
            suspicious: false,
            too_deep: false,
        }
    }

    /// Scans one MIME entity: its file names, then its content by type.
    fn entity(&mut self, headers: &[(String, String)], body: &[u8], depth: usize) {
        if self.forbidden.is_some() {
            return;
        }
        let field = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
        let content_type = field("Content-Type").map(HeaderValue::parse).unwrap_or_default();
        let disposition = field("Content-Disposition").map(HeaderValue::parse).unwrap_or_default();
        self.check_names(&disposition, "filename");
        self.check_names(&content_type, "name");
        if self.forbidden.is_some() {
            return;
        }

        let encoding = field("Content-Transfer-Encoding").unwrap_or("").trim().to_ascii_lowercase();
        let mime_type = if content_type.value.is_empty() { "text/plain" } else { content_type.value.as_str() };
        if (mime_type.starts_with("multipart/") || mime_type.starts_with("message/")) && depth >= MAX_DEPTH {
            self.too_deep = true;
            return;
        }
        if mime_type.starts_with("multipart/") {
            if let Some(boundary) = content_type.param("boundary").filter(|b| !b.is_empty()) {
                for part in split_multipart(body, &boundary) {
                    let (part_headers, part_body) = parse_part(part);
                    self.entity(&part_headers, part_body, depth + 1);
                }
            }
        } else if mime_type == "message/rfc822" || mime_type == "message/global" {
            let decoded = decode_transfer(body, &encoding);
            let (inner_headers, inner_body) = parse_part(&decoded);
            if let Some(subject) = inner_headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("Subject")) {
                self.search_text(decode_words(&subject.1).as_bytes());
            }
            self.entity(&inner_headers, inner_body, depth + 1);
        } else if mime_type.starts_with("text/") {
            self.search_text(&decode_transfer(body, &encoding));
        }
    }

    /// Checks every form of the file name parameter `name` (plain, duplicated, RFC 2231).
    fn check_names(&mut self, value: &HeaderValue, name: &str) {
        let plain = value.params.iter().filter(|(n, _)| n == name).map(|(_, v)| Cow::Borrowed(v.as_str()));
        let decoded = value.param(name).map(Cow::Owned);
        for candidate in plain.chain(decoded) {
            let file_name = decode_words(&candidate);
            if let Some(ext) = extension(&file_name)
                && let Some(bad) = self.extensions.iter().find(|e| **e == ext)
            {
                self.forbidden = Some(bad.clone());
                return;
            }
        }
    }

    fn search_text(&mut self, text: &[u8]) {
        if self.suspicious || self.words.is_empty() {
            return;
        }
        self.suspicious = self.words.iter().any(|w| contains_phrase(text, w.as_bytes()));
    }
}

/// The extension after the last dot, lowercase. Trailing dots and spaces are ignored, as
/// Windows ignores them ("evil.exe." is evil.exe).
fn extension(file_name: &str) -> Option<String> {
    let trimmed = file_name.trim_end_matches(|c: char| c == '.' || c.is_whitespace());
    let (_, ext) = trimmed.rsplit_once('.')?;
    let ext = ext.trim();
    (!ext.is_empty() && !ext.contains(['/', '\\'])).then(|| ext.to_lowercase())
}

/// Lowercases ASCII letters and collapses every run of ASCII white space into one space, and
/// drops white space at both ends: the form phrases are configured in.
fn normalize(text: &[u8]) -> String {
    let mut out = Vec::with_capacity(text.len());
    let mut in_space = true; // also drops leading white space
    for &b in text {
        if b.is_ascii_whitespace() {
            if !in_space {
                out.push(b' ');
                in_space = true;
            }
        } else {
            out.push(b.to_ascii_lowercase());
            in_space = false;
        }
    }
    if out.last() == Some(&b' ') {
        out.pop();
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Whether `text` contains the normalized `phrase` with ASCII case ignored and each space of the
/// phrase matching a run of ASCII white space: what searching `normalize(text)` would find, in
/// place. Candidates are found with `memchr` on the phrase's first byte (either case), so a
/// 1 MiB body costs a scan at memchr's speed instead of a normalized copy of it; on a 1 MiB
/// body this cut the plugin's CPU per message several times over (bench/plugin-costs.sh).
fn contains_phrase(text: &[u8], phrase: &[u8]) -> bool {
    let Some(&first) = phrase.first() else { return true };
    let (lower, upper) = (first.to_ascii_lowercase(), first.to_ascii_uppercase());
    let mut from = 0;
    while let Some(at) = memchr::memchr2(lower, upper, &text[from..]) {
        let start = from + at;
        if matches_at(&text[start..], phrase) {
            return true;
        }
        from = start + 1;
    }
    false
}

/// Whether `text` starts with `phrase` in the sense of [`contains_phrase`].
fn matches_at(text: &[u8], phrase: &[u8]) -> bool {
    let mut i = 0;
    for &p in phrase {
        if p == b' ' {
            let run = text[i..].iter().take_while(|b| b.is_ascii_whitespace()).count();
            if run == 0 {
                return false;
            }
            i += run;
        } else {
            match text.get(i) {
                Some(b) if b.to_ascii_lowercase() == p => i += 1,
                _ => return false,
            }
        }
    }
    true
}

/// Lines of `buf` with their start offset and the line without CR LF (or a bare LF).
fn lines(buf: &[u8]) -> impl Iterator<Item = (usize, &[u8], usize)> {
    let mut offset = 0;
    buf.split_inclusive(|&b| b == b'\n').map(move |raw| {
        let start = offset;
        offset += raw.len();
        let line = raw.strip_suffix(b"\n").unwrap_or(raw);
        (start, line.strip_suffix(b"\r").unwrap_or(line), raw.len())
    })
}

/// The bodies of the parts between `--boundary` lines; a last part without closing
/// delimiter (a truncated body) runs to the end. The preamble and epilogue are dropped.
fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    for (start, line, raw_len) in lines(body) {
        let Some(rest) = line.strip_prefix(delimiter.as_bytes()) else { continue };
        let closing = rest.starts_with(b"--");
        let rest = if closing { &rest[2..] } else { rest };
        if !rest.iter().all(|b| *b == b' ' || *b == b'\t') {
            continue; // a longer boundary that merely starts with ours
        }
        if let Some(begin) = current.take() {
            parts.push(&body[begin..start]);
        }
        if closing {
            return parts;
        }
        current = Some(start + raw_len);
    }
    if let Some(begin) = current {
        parts.push(&body[begin..]);
    }
    parts
}

/// Splits an entity into its (unfolded) header fields and its body.
fn parse_part(part: &[u8]) -> (Vec<(String, String)>, &[u8]) {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (start, line, raw_len) in lines(part) {
        if line.is_empty() {
            return (headers, &part[start + raw_len..]);
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(text.trim());
            }
        } else if let Some((name, value)) = text.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    (headers, &[]) // no blank line: all headers (or a truncated header section)
}

/// The content of a part with base64 or quoted-printable undone; anything else as is.
fn decode_transfer<'a>(body: &'a [u8], encoding: &str) -> Cow<'a, [u8]> {
    match encoding {
        "base64" => Cow::Owned(decode_base64(body)),
        "quoted-printable" => Cow::Owned(decode_qp(body, false)),
        _ => Cow::Borrowed(body),
    }
}

/// Lenient base64: characters outside the alphabet are skipped, `=` ends the data.
fn decode_base64(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in input {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// Quoted-printable (`=XX`, soft line breaks); with `underscore_space` the RFC 2047 "Q" form.
fn decode_qp(input: &[u8], underscore_space: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'=' if input[i + 1..].starts_with(b"\r\n") => i += 3,
            b'=' if input[i + 1..].starts_with(b"\n") => i += 2,
            b'=' => match (input.get(i + 1).and_then(hex), input.get(i + 2).and_then(hex)) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 3;
                }
                _ => {
                    out.push(b'='); // not an escape: kept literally
                    i += 1;
                }
            },
            b'_' if underscore_space => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// The value of one hex digit.
fn hex(digit: &u8) -> Option<u8> {
    (*digit as char).to_digit(16).map(|d| d as u8)
}

/// Decodes RFC 2047 encoded words (`=?charset?B?...?=`, `=?charset?Q?...?=`) as UTF-8; white
/// space between two encoded words is dropped. Anything malformed stays as it is.
fn decode_words(s: &str) -> Cow<'_, str> {
    if !s.contains("=?") {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, candidate) = rest.split_at(start);
        match encoded_word(candidate) {
            Some((decoded, len)) => {
                if !(after_word && before.trim().is_empty()) {
                    out.push_str(before);
                }
                out.push_str(&decoded);
                rest = &candidate[len..];
                after_word = true;
            }
            None => {
                out.push_str(before);
                out.push_str("=?");
                rest = &candidate[2..];
                after_word = false;
            }
        }
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// Decodes one encoded word at the start of `s`; returns the text and the word's length.
fn encoded_word(s: &str) -> Option<(String, usize)> {
    let inner = s.strip_prefix("=?")?;
    let (_charset, inner) = inner.split_once('?')?;
    let (encoding, inner) = inner.split_once('?')?;
    let end = inner.find("?=")?;
    let text = &inner[..end];
    if text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => decode_base64(text.as_bytes()),
        "Q" | "q" => decode_qp(text.as_bytes(), true),
        _ => return None,
    };
    let len = s.len() - inner.len() + end + 2;
    Some((String::from_utf8_lossy(&bytes).into_owned(), len))
}

export!(ContentGuard);

#[cfg(test)]
mod tests {
    use wasmtp_plugin::Verdict;

    use super::*;

    fn message(headers: &[(&str, &str)], body: &str) -> Message {
        Message::new(headers, body.as_bytes())
    }

    fn verdict(headers: &[(&str, &str)], body: &str) -> String {
        format!("{:?}", check(&Config::default(), &message(headers, body)).0)
    }

    const MIXED: (&str, &str) = ("Content-Type", "multipart/mixed; boundary=\"b1\"");

    fn attachment(disposition: &str) -> String {
        format!(
            "preamble\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b1\r\n{disposition}\r\n\r\nTVqQ\r\n--b1--\r\n"
        )
    }

    #[test]
    fn refuses_forbidden_attachments() {
        for disposition in [
            "Content-Disposition: attachment; filename=\"invoice.EXE\"",
            "Content-Disposition: attachment; filename=invoice.exe",
            "Content-Disposition: attachment;\r\n\tfilename=\"invoice.pdf.exe. \"",
            "Content-Disposition: attachment; filename*=UTF-8''invoice%2Eexe",
            "Content-Disposition: attachment; filename*0=\"invo\"; filename*1*=ice%2E; filename*2=exe",
            "Content-Disposition: attachment; filename=\"=?utf-8?B?aW52b2ljZS4=?= =?utf-8?Q?exe?=\"",
            "Content-Disposition: attachment; filename=ok.txt; FILENAME=bad.exe",
            "Content-Type: application/octet-stream; NAME=\"x;y.exe\"",
        ] {
            let got = verdict(&[MIXED], &attachment(disposition));
            assert!(got.contains("Attachment type .exe is not accepted"), "{disposition}: {got}");
        }
    }

    #[test]
    fn finds_nested_and_truncated_attachments() {
        let body = "--b1\r\nContent-Type: multipart/alternative;\r\n boundary=inner\r\n\r\n--inner\r\n\
                    Content-Type: application/javascript; name=run.js\r\n\r\nx\r\n--inner--\r\n--b1--\r\n";
        assert!(verdict(&[MIXED], body).contains(".js is not"));
        // Cut off in the middle of the attachment: no closing boundaries at all.
        let body =
            "--b1\r\nContent-Type: application/zip\r\nContent-Disposition: attachment; filename=a.scr\r\n\r\nUEsDB";
        assert!(verdict(&[MIXED], body).contains(".scr is not"));
        // Inside an attached message.
        let body = "--b1\r\nContent-Type: message/rfc822\r\n\r\nSubject: fwd\r\nContent-Type: multipart/mixed; \
                    boundary=z\r\n\r\n--z\r\nContent-Disposition: attachment; filename=\"p.ps1\"\r\n\r\nx\r\n--z--\r\n--b1--\r\n";
        assert!(verdict(&[MIXED], body).contains(".ps1 is not"));
    }

    #[test]
    fn passes_harmless_messages() {
        let got = verdict(&[MIXED, ("Subject", "Hi")], &attachment("Content-Disposition: attachment; filename=a.pdf"));
        assert_eq!(got, "Decision { verdict: Verdict::Continue, edits: [] }");
        // The boundary of a longer, different boundary does not split.
        let body = "--b1x\r\nContent-Disposition: attachment; filename=a.exe\r\n\r\nx\r\n--b1x--\r\n";
        assert!(verdict(&[MIXED], body).contains("Continue"));
    }

    #[test]
    fn tags_suspicious_messages() {
        let got = verdict(&[("Subject", "Hello")], "Please VERIFY\r\n   your account today\r\n");
        assert!(got.contains("ChangeHeader") && got.contains("[SUSPICIOUS] Hello"), "{got}");
        let got = verdict(&[], "wire transfer");
        assert!(got.contains("AddHeader") && got.contains("[SUSPICIOUS]"), "{got}");
        let got = verdict(&[("Subject", "[SUSPICIOUS] Password reset")], "");
        assert_eq!(got, "Decision { verdict: Verdict::Continue, edits: [] }");
        let got = verdict(&[("Subject", "=?utf-8?q?Password_Reset?=")], "");
        assert!(got.contains("[SUSPICIOUS] =?utf-8?q?Password_Reset?="), "{got}");
        // base64 text part.
        let body = "--b1\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\nd2lyZSB0cmFu\r\nc2Zlcg==\r\n--b1--";
        assert!(verdict(&[MIXED, ("Subject", "x")], body).contains("[SUSPICIOUS] x"));
        // Not in a non-text part.
        let body = "--b1\r\nContent-Type: application/octet-stream\r\n\r\nwire transfer\r\n--b1--";
        assert!(verdict(&[MIXED, ("Subject", "x")], body).contains("Continue"));
    }

    #[test]
    #[cfg(not(target_family = "wasm"))] // the mock host is for native tests
    fn on_data_runs_natively_against_the_mock_host() {
        use wasmtp_plugin::testing::{self, MockHost};

        let host = MockHost::new().config(r#"{"tag": "[SPAM]", "suspicious_words": ["act now"]}"#).install();
        let conn = testing::connection("192.0.2.1");
        let envelope = testing::envelope("a@example.org", &["b@example.org"]);
        let decision =
            testing::on_data::<ContentGuard>(&conn, &envelope, &message(&[("Subject", "Offer")], "Please ACT\r\n now"));
        assert!(format!("{decision:?}").contains("[SPAM] Offer"), "{decision:?}");

        // Nesting past the limit is logged through the host.
        let mut deep = String::new();
        for i in 0..12 {
            deep.push_str(&format!("--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n", i + 1));
        }
        let outer = message(&[("Content-Type", "multipart/mixed; boundary=b0")], &deep);
        testing::on_data::<ContentGuard>(&conn, &envelope, &outer);
        assert_eq!(host.logs(), vec![(Level::Warn, "MIME nesting deeper than 10 levels was not scanned".to_string())]);

        // A configuration the plugin refuses is the host's problem at this point: a tempfail.
        drop(host);
        let host = MockHost::new().config(r#"{"tagg": "x"}"#).install();
        let decision = testing::on_data::<ContentGuard>(&conn, &envelope, &outer);
        assert!(matches!(decision.verdict, Verdict::Tempfail(_)), "{decision:?}");
        assert!(host.logs()[0].1.contains("unknown field `tagg`"), "{:?}", host.logs());
    }

    #[test]
    fn finds_phrases_as_the_normalized_text_would() {
        let phrases = ["wire transfer", "verify your account", "a b", "ü x"];
        let texts: &[&[u8]] = &[
            b"WIRE\r\n\t TRANSFER now",
            b"wirewire transfer",
            b"wire transfe",
            b"wire  \r\n",
            b"  verify   your\taccount",
            b"verify youraccount",
            b"a\x0bb a\x0cb",
            b"\xc3\xbc   X",
            b"\xff\xfeab a b",
            b"",
        ];
        for phrase in phrases {
            let normalized = normalize(phrase.as_bytes());
            for text in texts {
                assert_eq!(
                    contains_phrase(text, normalized.as_bytes()),
                    normalize(text).contains(normalized.as_str()),
                    "{phrase:?} in {:?}",
                    String::from_utf8_lossy(text)
                );
            }
        }
    }

    #[test]
    fn survives_odd_input() {
        let mut deep = String::new();
        for i in 0..50 {
            deep.push_str(&format!("--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n", i + 1));
        }
        let (decision, too_deep) =
            check(&Config::default(), &message(&[("Content-Type", "multipart/mixed; boundary=b0")], &deep));
        assert!(too_deep && matches!(decision.verdict, Verdict::Continue));
        for body in
            ["--", "--b1\r\n", "--b1\r\nContent-Type", "=?", "=?a?b?", "\r\n\r\n", "\u{0}\u{ff}=", "--b1\n\n--b1--"]
        {
            verdict(&[MIXED, ("Content-Transfer-Encoding", "base64"), ("Subject", "=?x?Q?=A?=")], body);
            verdict(
                &[
                    ("Content-Type", "multipart/x; boundary=\"unterminated"),
                    ("Content-Disposition", "a; filename*0*='"),
                ],
                body,
            );
        }
        assert_eq!(decode_qp(b"a=3Db=\r\nc=ZZ=", false), b"a=bc=ZZ=");
        assert_eq!(decode_base64(b"aGVs\r\nbG8=garbage"), b"hello");
        assert_eq!(extension("x.tar.GZ"), Some("gz".into()));
        assert_eq!(extension("noext"), None);
        assert_eq!(extension("dir.d/file"), None);
    }
}
