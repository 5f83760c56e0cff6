//! external-tagger: marks mail from outside the organisation, and refuses configured
//! recipients. The same plugin is written in Python (`guest-plugins/python/external_tagger`)
//! and JavaScript (`guest-plugins/js/external-tagger`); the tests hold all three to the same
//! behaviour and the plugins benchmark compares their cost.
//!
//! ```toml
//! [[plugins]]
//! name = "tagger"
//! path = "external_tagger.wasm"
//! [plugins.config]
//! internal_domains = ["example.org"]        # senders here are internal (case-insensitive)
//! reject_recipients = ["old@example.org"]   # refused at RCPT with 550 5.7.1
//! tag = "[EXTERNAL]"                        # prefixed to the Subject of external mail
//! header = "X-External-Sender"              # added to external mail, with the value "yes"
//! ```
//!
//! A sender is external when its domain (after the last `@`) is not internal; the null sender
//! is external.

use serde::Deserialize;
use wasmtp_plugin::{
    Address, BodyAccess, Connection, Decision, EditKind, Envelope, Filter, Manifest, Message, Stage, export,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    internal_domains: Vec<String>,
    reject_recipients: Vec<String>,
    tag: String,
    header: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            internal_domains: Vec::new(),
            reject_recipients: Vec::new(),
            tag: "[EXTERNAL]".into(),
            header: "X-External-Sender".into(),
        }
    }
}

struct ExternalTagger;

impl Filter for ExternalTagger {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("external-tagger", env!("CARGO_PKG_VERSION"))
            .stages([Stage::Rcpt, Stage::Data])
            .body(BodyAccess::Headers)
            .edits([EditKind::ChangeHeader, EditKind::AddHeader])
    }

    fn on_rcpt(config: &Config, _conn: &Connection, _envelope: &Envelope, recipient: &Address) -> Decision {
        if config.reject_recipients.iter().any(|r| r.eq_ignore_ascii_case(&recipient.mailbox)) {
            return Decision::reject(550, "5.7.1", "recipient refused by policy");
        }
        Decision::next()
    }

    fn on_data(config: &Config, _conn: &Connection, envelope: &Envelope, message: &Message) -> Decision {
        let domain = envelope.sender.as_ref().and_then(Address::domain).unwrap_or("");
        if config.internal_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            return Decision::next();
        }
        let tag = &config.tag;
        let decision = match message.header("Subject") {
            None => Decision::next().add_header("Subject", tag),
            Some(subject) if subject.starts_with(tag.as_str()) => Decision::next(),
            Some("") => Decision::next().change_header("Subject", 1, tag),
            Some(subject) => Decision::next().change_header("Subject", 1, &format!("{tag} {subject}")),
        };
        decision.add_header(&config.header, "yes")
    }
}

export!(ExternalTagger);
