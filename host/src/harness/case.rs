//! The fixtures file of `wasmtp plugin test`: the plugin's settings and a list of cases, each
//! a session's inputs (connection facts, envelope, message, authentication results) and what
//! the plugin is expected to decide at each stage.
//!
//! ```toml
//! [config]                         # the plugin's [plugins.config] table
//! phrases = ["buy now"]
//!
//! [[case]]
//! name = "a phrase is refused"
//! from = "a@example.org"
//! rcpt = ["b@example.net"]
//! message = "spam.eml"             # relative to this file; or message_text = """..."""
//! auth.spf_mail = { result = "fail", domain = "example.org" }
//! expect.data = "reject"           # or a table, below
//! expect.rcpt = { verdict = "continue" }
//! [case.expect.data]
//! verdict = "reject"
//! reply = "5.7.1"                  # text the reply must contain
//! headers = ["X-Guard: hit"]       # fields present after the edits
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::auth::AuthResults;
use crate::config::PluginLimits;
use crate::filter::api::Stage;

/// A fixtures file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixtures {
    /// The plugin's settings, as `[plugins.config]` would give them.
    #[serde(default)]
    pub config: toml::Table,
    /// The plugin's limits, as `[plugins.limits]` would give them.
    #[serde(default)]
    pub limits: PluginLimits,
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

impl Fixtures {
    /// Reads a fixtures file; relative message paths become relative to its directory.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut fixtures: Fixtures = toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        for (i, case) in fixtures.cases.iter_mut().enumerate() {
            if case.name.is_empty() {
                case.name = format!("case {}", i + 1);
            }
            if let Some(message) = &mut case.message {
                *message = dir.join(&*message);
            }
            for stage in case.expect.keys() {
                parse_stage(stage)
                    .with_context(|| format!("{}: case `{}`, field `expect`", path.display(), case.name))?;
            }
        }
        Ok(fixtures)
    }
}

/// One session's inputs and expectations.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Case {
    pub name: String,
    pub client_ip: IpAddr,
    /// The client's host name, as iprev verified it.
    pub client_name: Option<String>,
    pub helo: String,
    /// The client used TLS (TLSv1.3).
    pub tls: bool,
    /// The client authenticated (SMTP AUTH) as this user.
    pub authenticated_as: Option<String>,
    pub from: String,
    /// MAIL parameters as plugins see them: `SIZE=1234`, `BODY=8BITMIME`, `SMTPUTF8`.
    pub mail_params: Vec<String>,
    pub rcpt: Vec<String>,
    /// An `.eml` file: the message as the client sends it (LF line ends become CRLF).
    pub message: Option<PathBuf>,
    /// The message inline, instead of a file.
    pub message_text: Option<String>,
    /// Authentication results, each visible from the stage the proxy computes it at: iprev
    /// from connect, SPF of the HELO name from ehlo, SPF of MAIL FROM from mail, DKIM, ARC
    /// and DMARC at data.
    pub auth: AuthResults,
    /// By stage name: the verdict expected, or a table of expectations.
    pub expect: BTreeMap<String, Expect>,
}

impl Default for Case {
    fn default() -> Self {
        Self {
            name: String::new(),
            client_ip: IpAddr::from([192, 0, 2, 1]),
            client_name: None,
            helo: "client.example".into(),
            tls: false,
            authenticated_as: None,
            from: "sender@example.org".into(),
            mail_params: Vec::new(),
            rcpt: vec!["recipient@example.net".into()],
            message: None,
            message_text: None,
            auth: AuthResults::default(),
            expect: BTreeMap::new(),
        }
    }
}

impl Case {
    /// The message the client sends, CRLF-terminated lines.
    pub fn message_bytes(&self) -> anyhow::Result<Vec<u8>> {
        let raw = match (&self.message, &self.message_text) {
            (Some(path), _) => std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            (None, Some(text)) => text.clone().into_bytes(),
            (None, None) => DEFAULT_MESSAGE.as_bytes().to_vec(),
        };
        Ok(crlf(&raw))
    }
}

/// What a case is given when it names no message.
const DEFAULT_MESSAGE: &str = "From: sender@example.org\r\nTo: recipient@example.net\r\n\
Subject: wasmtp plugin test\r\nMessage-ID: <plugin-test@example.org>\r\n\r\nHello.\r\n";

/// Bare LF line ends become CRLF, as an SMTP client would send them; CRLF stays.
pub fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    for (i, &b) in raw.iter().enumerate() {
        if b == b'\n' && (i == 0 || raw[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What a stage's call is expected to give.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Expect {
    Verdict(ExpectedVerdict),
    Detail(ExpectDetail),
}

impl Expect {
    pub fn detail(&self) -> ExpectDetail {
        match self {
            Expect::Verdict(verdict) => ExpectDetail { verdict: Some(*verdict), ..ExpectDetail::default() },
            Expect::Detail(detail) => detail.clone(),
        }
    }
}

/// A verdict, or `fault`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectedVerdict {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Disconnect,
    Fault,
}

impl ExpectedVerdict {
    pub fn name(self) -> &'static str {
        match self {
            ExpectedVerdict::Continue => "continue",
            ExpectedVerdict::Accept => "accept",
            ExpectedVerdict::Reject => "reject",
            ExpectedVerdict::Tempfail => "tempfail",
            ExpectedVerdict::Disconnect => "disconnect",
            ExpectedVerdict::Fault => "fault",
        }
    }
}

/// Expectations of one stage; every one given must hold (at rcpt: for every recipient).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExpectDetail {
    pub verdict: Option<ExpectedVerdict>,
    /// Text the reply (code, enhanced code and lines) must contain.
    pub reply: Option<String>,
    /// The fault's kind (`timeout`, `memory`, `crash`, `exception`, …), with `verdict = "fault"`.
    pub fault: Option<String>,
    /// `Name: value` fields the header section holds after the stage.
    pub headers: Vec<String>,
    /// Field names the header section no longer holds after the stage.
    pub absent_headers: Vec<String>,
    /// The sender after the stage.
    pub sender: Option<String>,
    /// The recipients after the stage (at rcpt: those relayed for the recipient).
    pub recipients: Option<Vec<String>>,
    /// Text the body must contain after the stage.
    pub body_contains: Option<String>,
    /// The message is quarantined (data).
    pub quarantine: Option<bool>,
}

/// A stage by its name in fixtures.
pub fn parse_stage(name: &str) -> anyhow::Result<Stage> {
    Ok(match name {
        "connect" => Stage::Connect,
        "ehlo" => Stage::Ehlo,
        "mail" => Stage::Mail,
        "rcpt" => Stage::Rcpt,
        "data" => Stage::Data,
        other => anyhow::bail!("`{other}` is not a stage (connect, ehlo, mail, rcpt, data)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lf_becomes_crlf_and_crlf_stays() {
        assert_eq!(crlf(b"a\nb\r\nc"), b"a\r\nb\r\nc\r\n");
        assert_eq!(crlf(b"\n"), b"\r\n");
    }

    #[test]
    fn a_fixture_reads_with_defaults_and_both_expectation_forms() {
        let text = r#"
            [config]
            phrases = ["x"]
            [[case]]
            rcpt = ["a@example.net", "b@example.net"]
            auth.spf_mail = { result = "fail", domain = "example.org" }
            expect.mail = "continue"
            [case.expect.data]
            verdict = "reject"
            headers = ["X-A: 1"]
        "#;
        let f: Fixtures = toml::from_str(text).unwrap();
        let case = &f.cases[0];
        assert_eq!(case.helo, "client.example");
        assert_eq!(case.auth.spf_mail.as_ref().unwrap().result, crate::auth::AuthResult::Fail);
        assert_eq!(case.expect["mail"].detail().verdict, Some(ExpectedVerdict::Continue));
        assert_eq!(case.expect["data"].detail().headers, ["X-A: 1"]);
        let typo = toml::from_str::<Fixtures>("[[case]]\nexpect.data = { verdikt = \"reject\" }\n").unwrap_err();
        assert!(typo.to_string().contains("expect"), "{typo}");
    }
}
