//! `wasmtp replay`: sessions recorded by `[record]` run again through a chain — usually the
//! configured one with a new build of some plugin — and every plugin decision compared with
//! the one recorded.
//!
//! A replay has no upstream and no network: a recipient goes on to the data stage when the
//! plugins let it (the upstream's refusals are not replayed), the key-value store starts
//! empty, and authentication results are the recorded ones. Decisions are compared as
//! [`Called::summary`](crate::filter::Called::summary) puts them — verdict, reply and edits —
//! keyed by stage, recipient and plugin (and how many times that key came before, in the
//! same session or transaction).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;

use super::case::Case;
use super::{Runner, Step, ended};
use crate::config::Config;
use crate::filter::Chain;
use crate::session::record::{RecordedDecision, SessionRecord, TransactionRecord};

/// The chain each recorded session ran through: its listener's plugins.
pub struct Chains {
    all: Chain,
    listeners: Vec<(SocketAddr, Chain)>,
}

impl Chains {
    pub fn new(all: Chain, config: &Config) -> Self {
        let listeners =
            config.listeners().iter().filter_map(|l| Some((l.address, all.subset(l.plugins.as_ref()?)))).collect();
        Self { all, listeners }
    }

    fn of(&self, listener: Option<SocketAddr>) -> &Chain {
        self.listeners.iter().find(|(address, _)| Some(*address) == listener).map_or(&self.all, |(_, chain)| chain)
    }
}

/// A decision that differs between the recording and the replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub session: String,
    /// The transaction (from 1), for mail, rcpt and data.
    pub transaction: Option<usize>,
    pub plugin: String,
    pub stage: String,
    pub recipient: Option<String>,
    /// `None`: the plugin was not called there.
    pub old: Option<String>,
    pub new: Option<String>,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.session)?;
        if let Some(n) = self.transaction {
            write!(f, " transaction {n}")?;
        }
        write!(f, ": {} at {}", self.plugin, self.stage)?;
        if let Some(rcpt) = &self.recipient {
            write!(f, " <{rcpt}>")?;
        }
        let shown = |d: &Option<String>| d.clone().unwrap_or_else(|| "(not called)".into());
        write!(f, ": {} → {}", shown(&self.old), shown(&self.new))
    }
}

/// What a replay came to.
#[derive(Debug, Default)]
pub struct Replayed {
    pub sessions: usize,
    pub transactions: usize,
    /// Decisions compared (recorded or replayed).
    pub decisions: usize,
    pub differences: Vec<Difference>,
    /// Sessions whose message bodies were redacted when recorded.
    pub redacted: usize,
}

impl Replayed {
    /// `replayed 20 sessions (20 transactions): 3 of 140 decisions differ, in 3 sessions`.
    pub fn summary(&self) -> String {
        let mut sessions: Vec<&str> = self.differences.iter().map(|d| d.session.as_str()).collect();
        sessions.dedup();
        let mut out = format!(
            "replayed {} session(s) ({} transaction(s)): {} of {} decision(s) differ, in {} session(s)",
            self.sessions,
            self.transactions,
            self.differences.len(),
            self.decisions,
            sessions.len()
        );
        if self.redacted > 0 {
            out.push_str(&format!("; {} session(s) had their bodies redacted", self.redacted));
        }
        out
    }
}

/// Replays every recording in `records` (read from `dir`, where their messages are).
pub async fn replay(chains: &Chains, dir: &Path, records: &[SessionRecord]) -> anyhow::Result<Replayed> {
    let mut replayed = Replayed::default();
    for record in records {
        let chain = chains.of(record.listener);
        let mut runner = Runner::new(chain, &session_case(record), &record.session);
        let greeting = runner.greet(&record.helos).await;
        let new = decisions(&greeting);
        compare(&mut replayed, record, None, &record.decisions, &new);
        let mut open = !ended(&greeting);
        for (i, txn) in record.transactions.iter().enumerate() {
            let mut new = Vec::new();
            if open {
                let message = match &txn.message {
                    Some(file) => {
                        let path = dir.join(file);
                        Some(std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?)
                    }
                    None => None,
                };
                let case = transaction_case(record, txn);
                let steps = runner
                    .transaction(&case, message.as_deref())
                    .await
                    .with_context(|| format!("session {}, transaction {}", record.session, i + 1))?;
                open = !steps.iter().any(|s| matches!(s.outcome, crate::filter::Outcome::Disconnect(_)));
                new = decisions(&steps);
            }
            compare(&mut replayed, record, Some(i + 1), &txn.decisions, &new);
        }
        replayed.sessions += 1;
        replayed.transactions += record.transactions.len();
        replayed.redacted += usize::from(record.transactions.iter().any(|t| t.body_redacted));
    }
    Ok(replayed)
}

/// The session's connection facts as a harness case.
fn session_case(record: &SessionRecord) -> Case {
    let defaults = Case::default();
    Case {
        name: record.session.clone(),
        client_ip: record.client.map_or(defaults.client_ip, |c| c.ip()),
        client_name: record.client_name.clone(),
        tls: record.tls.is_some(),
        authenticated_as: record.authenticated_as.clone(),
        auth: record.auth.clone(),
        ..defaults
    }
}

/// A transaction's envelope and authentication results as a harness case.
fn transaction_case(record: &SessionRecord, txn: &TransactionRecord) -> Case {
    Case {
        from: txn.from.clone(),
        mail_params: txn.mail_params.clone(),
        rcpt: txn.rcpt.clone(),
        auth: txn.auth.clone(),
        ..session_case(record)
    }
}

/// The steps' decisions, as a recording keeps them.
fn decisions(steps: &[Step]) -> Vec<RecordedDecision> {
    steps
        .iter()
        .flat_map(|step| {
            step.calls.iter().map(|call| RecordedDecision {
                plugin: call.plugin.clone(),
                stage: step.stage.name().to_string(),
                recipient: step.recipient.clone(),
                decision: call.result.called().summary(),
            })
        })
        .collect()
}

/// Pairs the old and new decisions by (stage, recipient, plugin, occurrence) and keeps the
/// pairs that differ, in the recording's order, then those only the replay has.
fn compare(
    replayed: &mut Replayed,
    record: &SessionRecord,
    transaction: Option<usize>,
    old: &[RecordedDecision],
    new: &[RecordedDecision],
) {
    type Key<'a> = (&'a str, Option<&'a str>, &'a str, usize);
    fn keyed(list: &[RecordedDecision]) -> Vec<(Key<'_>, &RecordedDecision)> {
        let mut seen: HashMap<(&str, Option<&str>, &str), usize> = HashMap::new();
        list.iter()
            .map(|d| {
                let base = (d.stage.as_str(), d.recipient.as_deref(), d.plugin.as_str());
                let n = seen.entry(base).or_default();
                *n += 1;
                ((base.0, base.1, base.2, *n), d)
            })
            .collect()
    }
    let (old, new) = (keyed(old), keyed(new));
    let new_by_key: HashMap<Key<'_>, &RecordedDecision> = new.iter().copied().collect();
    let old_by_key: HashMap<Key<'_>, &RecordedDecision> = old.iter().copied().collect();
    let difference = |d: &RecordedDecision, old: Option<&str>, new: Option<&str>| Difference {
        session: record.session.clone(),
        transaction,
        plugin: d.plugin.clone(),
        stage: d.stage.clone(),
        recipient: d.recipient.clone(),
        old: old.map(String::from),
        new: new.map(String::from),
    };
    for (key, d) in &old {
        let replayed_decision = new_by_key.get(key).map(|n| n.decision.as_str());
        if replayed_decision != Some(d.decision.as_str()) {
            replayed.differences.push(difference(d, Some(&d.decision), replayed_decision));
        }
    }
    for (key, d) in &new {
        if !old_by_key.contains_key(key) {
            replayed.differences.push(difference(d, None, Some(&d.decision)));
        }
    }
    replayed.decisions += old.len().max(new.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(plugin: &str, stage: &str, recipient: Option<&str>, text: &str) -> RecordedDecision {
        RecordedDecision {
            plugin: plugin.into(),
            stage: stage.into(),
            recipient: recipient.map(String::from),
            decision: text.into(),
        }
    }

    #[test]
    fn only_decisions_that_changed_appeared_or_vanished_are_differences() {
        let record = SessionRecord { session: "s1".into(), ..SessionRecord::default() };
        let old = [
            decision("a", "rcpt", Some("x@example.org"), "continue"),
            decision("a", "rcpt", Some("y@example.org"), "continue"),
            decision("b", "data", None, "continue; add-header X: 1"),
            decision("c", "data", None, "continue"),
        ];
        let new = [
            decision("a", "rcpt", Some("x@example.org"), "continue"),
            decision("a", "rcpt", Some("y@example.org"), "reject 550 5.1.1 no"),
            decision("b", "data", None, "continue; add-header X: 1"),
            decision("d", "data", None, "continue"),
        ];
        let mut replayed = Replayed::default();
        compare(&mut replayed, &record, Some(1), &old, &new);
        let lines: Vec<String> = replayed.differences.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            lines,
            [
                "s1 transaction 1: a at rcpt <y@example.org>: continue → reject 550 5.1.1 no",
                "s1 transaction 1: c at data: continue → (not called)",
                "s1 transaction 1: d at data: (not called) → continue",
            ]
        );
        assert_eq!(replayed.decisions, 4);
    }
}
