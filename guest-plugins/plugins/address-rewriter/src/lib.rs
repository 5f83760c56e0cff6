//! address-rewriter: expands recipient aliases and masquerades sender domains.
//!
//! ```toml
//! [[plugins]]
//! name = "rewriter"
//! path = "address_rewriter.wasm"
//! [plugins.config]
//! # RCPT TO:<sales@example.org> is replaced by these recipients (matched case-insensitively).
//! # A single string is accepted too; an empty list is ignored (it never drops a recipient).
//! aliases = { "sales@example.org" = ["ann@example.org", "bob@example.org"], "info@example.org" = "ann@example.org" }
//! # MAIL FROM:<joe@internal.example> becomes MAIL FROM:<joe@example.org>; <> stays <>.
//! masquerade = { "internal.example" = "example.org" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;
use wasmtp_plugin::{
    Address, BodyAccess, Connection, Decision, EditKind, Envelope, Filter, Level, Manifest, Stage, export,
};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Mailbox -> replacement mailboxes.
    aliases: BTreeMap<String, Targets>,
    /// Sender domain -> replacement domain.
    masquerade: BTreeMap<String, String>,
}

/// One mailbox or a list of them.
#[derive(Debug)]
enum Targets {
    One(String),
    Many(Vec<String>),
}

/// By hand rather than as an untagged enum: serde buffers an untagged value and formats an
/// error for each variant that does not match it, and the configuration is parsed on every
/// call (each call is a fresh sandbox), so a list of targets cost a thrown-away error message
/// per alias per call.
impl<'de> Deserialize<'de> for Targets {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Targets;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mailbox or a list of mailboxes")
            }

            fn visit_str<E: serde::de::Error>(self, mailbox: &str) -> Result<Targets, E> {
                Ok(Targets::One(mailbox.to_owned()))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Targets, A::Error> {
                let mut many = Vec::new();
                while let Some(mailbox) = seq.next_element()? {
                    many.push(mailbox);
                }
                Ok(Targets::Many(many))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Targets {
    fn as_slice(&self) -> &[String] {
        match self {
            Targets::One(one) => std::slice::from_ref(one),
            Targets::Many(many) => many,
        }
    }
}

/// Looks `key` up in `map`, ignoring case on both sides.
fn lookup<'a, V>(map: &'a BTreeMap<String, V>, key: &str) -> Option<&'a V> {
    let key = key.to_lowercase();
    map.iter().find(|(k, _)| k.to_lowercase() == key).map(|(_, v)| v)
}

struct AddressRewriter;

impl Filter for AddressRewriter {
    type Config = Config;

    /// Only the stages the configuration needs are declared, so the host does not call the
    /// plugin for nothing (an alias table alone needs no MAIL call, and vice versa).
    fn manifest(config: &Config) -> Manifest {
        let (mail, rcpt) = (!config.masquerade.is_empty(), !config.aliases.is_empty());
        let stages = [(mail, Stage::Mail), (rcpt, Stage::Rcpt)].into_iter().filter(|(on, _)| *on).map(|(_, s)| s);
        Manifest::new("address-rewriter", env!("CARGO_PKG_VERSION")).stages(stages).body(BodyAccess::None).edits([
            EditKind::SetSender,
            EditKind::AddRecipient,
            EditKind::RemoveRecipient,
        ])
    }

    fn on_mail(config: &Config, _conn: &Connection, sender: &Address) -> Decision {
        // The null sender has no domain and rsplit_once finds none: it is left alone.
        let Some((local, domain)) = sender.mailbox.rsplit_once('@') else {
            return Decision::next();
        };
        match lookup(&config.masquerade, domain) {
            Some(new_domain) if !new_domain.eq_ignore_ascii_case(domain) => {
                Decision::next().set_sender(&format!("{local}@{new_domain}"))
            }
            _ => Decision::next(),
        }
    }

    fn on_rcpt(config: &Config, _conn: &Connection, _envelope: &Envelope, recipient: &Address) -> Decision {
        let Some(targets) = lookup(&config.aliases, &recipient.mailbox) else {
            return Decision::next();
        };
        if targets.as_slice().is_empty() {
            wasmtp_plugin::log(Level::Warn, &format!("alias {} has no targets; ignored", recipient.mailbox));
            return Decision::next();
        }
        // Removing the recipient being added means it is not relayed; the targets replace it.
        let mut decision = Decision::next().remove_recipient(&recipient.mailbox);
        for target in targets.as_slice() {
            decision = decision.add_recipient(target);
        }
        decision
    }
}

export!(AddressRewriter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_alias_is_one_mailbox_or_a_list_and_nothing_else() {
        let config: Config = wasmtp_plugin::parse_config(
            r#"{"aliases": {"info@example.org": "ann@example.org", "sales@example.org": ["ann@example.org", "bob@example.org"], "none@example.org": []}}"#,
        )
        .unwrap();
        let targets = |k: &str| config.aliases[k].as_slice().to_vec();
        assert_eq!(targets("info@example.org"), ["ann@example.org"]);
        assert_eq!(targets("sales@example.org"), ["ann@example.org", "bob@example.org"]);
        assert!(targets("none@example.org").is_empty());

        for bad in [r#"{"aliases": {"a@example.org": 5}}"#, r#"{"aliases": {"a@example.org": [5]}}"#] {
            let err = wasmtp_plugin::parse_config::<Config>(bad).unwrap_err();
            assert!(
                err.contains("expected a mailbox or a list of mailboxes") || err.contains("expected a string"),
                "{err}"
            );
        }
    }
}
