//! The plugin chain: plugins run in configuration order at each stage they declare, with the
//! merge and edit rules of DESIGN §4:
//! - the first reject, tempfail or disconnect ends the stage; `accept` skips the remaining
//!   plugins of that stage only; `continue` passes on;
//! - a plugin's edits are validated and applied all together or not at all, and the next
//!   plugin sees the result;
//! - a fault (trap, timeout, invalid answer) applies the plugin's `on_error` policy, and feeds
//!   its circuit breaker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::bindings::{self, BodyAccess, Connection, Edit, Stage};
use super::breaker::Transition;
use super::sandbox::{self, Answer, Call, Fault, HostContext};
use super::validate::{self, Verdict};
use super::{Plugin, Plugins};
use crate::config::OnError;
use crate::message::HeaderSection;
use crate::message::headers::Field;
use crate::smtp::{Mailbox, Reply};

/// What a stage means for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on (every plugin continued or one accepted).
    Continue,
    Reject(Reply),
    Tempfail(Reply),
    /// Send the reply and close the connection.
    Disconnect(Reply),
}

/// A session's plugin state: the connection facts plugins see and their notes.
#[derive(Debug)]
pub struct PluginSession {
    conn: Connection,
    session_id: Arc<str>,
    /// Notes set outside a transaction, per plugin.
    session_notes: HashMap<Arc<str>, HashMap<String, String>>,
    /// Notes set inside the current transaction, per plugin.
    transaction_notes: HashMap<Arc<str>, HashMap<String, String>>,
    in_transaction: bool,
}

impl PluginSession {
    pub fn new(session_id: &str, client: std::net::SocketAddr) -> Self {
        Self {
            conn: Connection {
                session_id: session_id.to_string(),
                client_ip: client.ip().to_string(),
                client_port: client.port(),
                client_name: None,
                helo: None,
                tls: None,
                authenticated_as: None,
                auth: crate::auth::no_results(),
            },
            session_id: session_id.into(),
            session_notes: HashMap::new(),
            transaction_notes: HashMap::new(),
            in_transaction: false,
        }
    }

    pub fn set_helo(&mut self, helo: &str) {
        self.conn.helo = Some(helo.to_string());
    }

    /// The authentication results plugins see from now on.
    pub fn auth_mut(&mut self) -> &mut bindings::AuthResults {
        &mut self.conn.auth
    }

    /// The client's verified host name (iprev pass).
    pub fn set_client_name(&mut self, name: Option<String>) {
        self.conn.client_name = name;
    }

    /// Notes set from now on end with the transaction.
    pub fn begin_transaction(&mut self) {
        self.in_transaction = true;
    }

    pub fn end_transaction(&mut self) {
        self.in_transaction = false;
        self.transaction_notes.clear();
        let auth = &mut self.conn.auth;
        auth.spf_mail = None;
        auth.dkim.clear();
        auth.arc = None;
        auth.dmarc = None;
    }

    fn notes_for(&self, plugin: &Arc<str>) -> HashMap<String, String> {
        let mut notes = self.session_notes.get(plugin).cloned().unwrap_or_default();
        if let Some(txn) = self.transaction_notes.get(plugin) {
            notes.extend(txn.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        notes
    }

    fn commit_notes(&mut self, plugin: &Arc<str>, writes: Vec<(String, String)>) {
        if writes.is_empty() {
            return;
        }
        let scope = if self.in_transaction { &mut self.transaction_notes } else { &mut self.session_notes };
        scope.entry(plugin.clone()).or_default().extend(writes);
    }
}

/// The state one stage works on: how to call a plugin with it and how edits change it.
pub trait StageState: Clone {
    const STAGE: Stage;

    /// Calls the plugin's export for this stage with the current state.
    fn call(
        &self,
        plugin: &Plugin,
        plugins: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> impl std::future::Future<Output = (Result<Answer, Fault>, HostContext)> + Send;

    /// Applies one validated-for-kind edit; an error makes the whole call a fault.
    fn apply(&mut self, edit: &Edit, plugin: &Plugin) -> Result<(), String>;
}

impl Plugins {
    /// Runs every plugin that declares `S::STAGE` over `state`, in order.
    pub(super) async fn run_stage<S: StageState>(&self, session: &mut PluginSession, state: &mut S) -> Outcome {
        for plugin in &self.list {
            if !plugin.manifest.stages.contains(&S::STAGE) {
                continue;
            }
            if !plugin.breaker.allows_call() {
                tracing::debug!(plugin = %plugin.name, stage = ?S::STAGE, "circuit open: plugin bypassed");
                match on_error(plugin, S::STAGE) {
                    Outcome::Continue => continue,
                    outcome => return outcome,
                }
            }
            let started = Instant::now();
            let host = HostContext::new(
                plugin.name.clone(),
                session.session_id.clone(),
                plugin.config_json.clone(),
                self.kv.clone(),
                session.notes_for(&plugin.name),
                plugin.limits.host_data.bytes() as usize,
            );
            let (answer, host) = state.call(plugin, self, host, &session.conn).await;
            let latency_us = started.elapsed().as_micros() as u64;
            let decided = answer.and_then(|answer| match answer {
                Answer::Decision(decision) => check_and_apply(plugin, state, &decision),
                Answer::Manifest(_) => Err(Fault::invalid("manifest returned for a stage call")),
            });
            let success = decided.is_ok();
            match plugin.breaker.record(success) {
                Some(Transition::Opened) => tracing::warn!(
                    plugin = %plugin.name,
                    cooldown = ?plugin.breaker_config.cooldown,
                    "circuit breaker opened: plugin bypassed by its on_error policy"
                ),
                Some(Transition::Closed) => tracing::info!(plugin = %plugin.name, "circuit breaker closed"),
                None => {}
            }
            let (verdict, next_state, edits) = match decided {
                Ok(ok) => ok,
                Err(fault) => {
                    tracing::warn!(
                        plugin = %plugin.name,
                        version = %plugin.manifest.version,
                        stage = ?S::STAGE,
                        fault = %fault.kind,
                        detail = %fault.detail,
                        stderr = ?fault.stderr,
                        latency_us,
                        on_error = ?plugin.on_error,
                        "plugin fault"
                    );
                    match on_error(plugin, S::STAGE) {
                        Outcome::Continue => continue,
                        outcome => return outcome,
                    }
                }
            };
            session.commit_notes(&plugin.name, host.note_writes);
            *state = next_state;
            tracing::debug!(
                plugin = %plugin.name,
                version = %plugin.manifest.version,
                stage = ?S::STAGE,
                verdict = ?verdict,
                edits,
                latency_us,
                "plugin decision"
            );
            match verdict {
                Verdict::Continue => {}
                Verdict::Accept => return Outcome::Continue,
                Verdict::Reject(reply) => return log_refusal(plugin, S::STAGE, Outcome::Reject(reply)),
                Verdict::Tempfail(reply) => return log_refusal(plugin, S::STAGE, Outcome::Tempfail(reply)),
                Verdict::Disconnect(reply) => return log_refusal(plugin, S::STAGE, Outcome::Disconnect(reply)),
            }
        }
        Outcome::Continue
    }
}

fn log_refusal(plugin: &Plugin, stage: Stage, outcome: Outcome) -> Outcome {
    tracing::info!(plugin = %plugin.name, version = %plugin.manifest.version, ?stage, ?outcome, "plugin verdict");
    outcome
}

/// Validates a decision and applies its edits to a copy of the state (all or nothing).
fn check_and_apply<S: StageState>(
    plugin: &Plugin,
    state: &S,
    decision: &bindings::Decision,
) -> Result<(Verdict, S, usize), Fault> {
    let verdict = validate::verdict(&decision.verdict).map_err(Fault::invalid)?;
    let mut next = state.clone();
    for edit in &decision.edits {
        validate::permitted(edit, S::STAGE, &plugin.manifest.edits).map_err(Fault::invalid)?;
        next.apply(edit, plugin).map_err(Fault::invalid)?;
    }
    Ok((verdict, next, decision.edits.len()))
}

/// The outcome a fault (or an open breaker) leads to under the plugin's policy.
fn on_error(plugin: &Plugin, stage: Stage) -> Outcome {
    match (plugin.on_error, stage) {
        (OnError::Continue, _) => Outcome::Continue,
        (OnError::Tempfail, Stage::Connect) => {
            Outcome::Disconnect(Reply::enhanced(421, (4, 3, 0), "Temporary filter failure, try again later"))
        }
        (OnError::Tempfail, _) => {
            Outcome::Tempfail(Reply::enhanced(451, (4, 3, 0), "Temporary filter failure, try again later"))
        }
        (OnError::Reject, Stage::Connect) => {
            Outcome::Reject(Reply::enhanced(554, (5, 7, 0), "Refused by filter policy"))
        }
        (OnError::Reject, _) => Outcome::Reject(Reply::enhanced(550, (5, 7, 0), "Refused by filter policy")),
    }
}

fn no_edits(edit: &Edit) -> Result<(), String> {
    Err(format!("edit {:?} is not allowed at this stage", validate::kind_of(edit)))
}

fn address(mailbox: &Mailbox, params: Vec<bindings::Param>) -> bindings::Address {
    bindings::Address { mailbox: mailbox.as_str().to_string(), params }
}

fn envelope(sender: Option<&Mailbox>, recipients: &[Mailbox]) -> bindings::Envelope {
    bindings::Envelope {
        sender: sender.map(|s| address(s, vec![])),
        recipients: recipients.iter().map(|r| address(r, vec![])).collect(),
    }
}

/// The connect stage: nothing to edit.
#[derive(Debug, Clone)]
pub struct ConnectState;

impl StageState for ConnectState {
    const STAGE: Stage = Stage::Connect;

    async fn call(
        &self,
        p: &Plugin,
        ps: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> (Result<Answer, Fault>, HostContext) {
        sandbox::run(&ps.spec(p), host, p.limits.time, Call::Connect(conn)).await
    }

    fn apply(&mut self, edit: &Edit, _: &Plugin) -> Result<(), String> {
        no_edits(edit)
    }
}

/// The ehlo stage: the HELO/EHLO argument.
#[derive(Debug, Clone)]
pub struct EhloState(pub String);

impl StageState for EhloState {
    const STAGE: Stage = Stage::Ehlo;

    async fn call(
        &self,
        p: &Plugin,
        ps: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> (Result<Answer, Fault>, HostContext) {
        sandbox::run(&ps.spec(p), host, p.limits.time, Call::Ehlo(conn, &self.0)).await
    }

    fn apply(&mut self, edit: &Edit, _: &Plugin) -> Result<(), String> {
        no_edits(edit)
    }
}

/// The mail stage: the sender, which plugins may rewrite.
#[derive(Debug, Clone)]
pub struct MailState {
    pub sender: Mailbox,
    /// The client's parameters, shown to plugins.
    pub params: Vec<(String, Option<String>)>,
    /// SMTPUTF8 was requested: rewrites may use UTF-8.
    pub utf8: bool,
}

impl StageState for MailState {
    const STAGE: Stage = Stage::Mail;

    async fn call(
        &self,
        p: &Plugin,
        ps: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> (Result<Answer, Fault>, HostContext) {
        let params = self
            .params
            .iter()
            .map(|(name, value)| bindings::Param { name: name.clone(), value: value.clone() })
            .collect();
        let sender = address(&self.sender, params);
        sandbox::run(&ps.spec(p), host, p.limits.time, Call::Mail(conn, &sender)).await
    }

    fn apply(&mut self, edit: &Edit, _: &Plugin) -> Result<(), String> {
        match edit {
            Edit::SetSender(a) => self.sender = validate::address(a, self.utf8, false)?,
            other => return no_edits(other),
        }
        Ok(())
    }
}

/// The rcpt stage: the recipient being added, whether it stays, and recipients plugins add.
#[derive(Debug, Clone)]
pub struct RcptState {
    pub sender: Mailbox,
    /// Recipients accepted earlier in the transaction.
    pub accepted: Vec<Mailbox>,
    pub recipient: Mailbox,
    /// The recipient being added is still to be relayed.
    pub keep: bool,
    pub added: Vec<Mailbox>,
    pub utf8: bool,
}

impl StageState for RcptState {
    const STAGE: Stage = Stage::Rcpt;

    async fn call(
        &self,
        p: &Plugin,
        ps: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> (Result<Answer, Fault>, HostContext) {
        let mut so_far = self.accepted.clone();
        so_far.extend(self.added.iter().cloned());
        let env = envelope(Some(&self.sender), &so_far);
        let rcpt = address(&self.recipient, vec![]);
        sandbox::run(&ps.spec(p), host, p.limits.time, Call::Rcpt(conn, &env, &rcpt)).await
    }

    fn apply(&mut self, edit: &Edit, _: &Plugin) -> Result<(), String> {
        match edit {
            Edit::AddRecipient(a) => {
                let mailbox = validate::address(a, self.utf8, true)?;
                if !self.added.contains(&mailbox) {
                    self.added.push(mailbox);
                }
            }
            Edit::RemoveRecipient(m) => {
                if self.keep && same_mailbox(self.recipient.as_str(), m) {
                    self.keep = false;
                } else if let Some(i) = self.added.iter().position(|a| same_mailbox(a.as_str(), m)) {
                    self.added.remove(i);
                } else {
                    return Err(format!(
                        "remove-recipient {m:?}: at the rcpt stage only the recipient being added \
                         (or one added by a plugin) can be removed"
                    ));
                }
            }
            other => return no_edits(other),
        }
        Ok(())
    }
}

/// Mailboxes compare with the domain case-insensitive and the local part as given.
fn same_mailbox(a: &str, b: &str) -> bool {
    match (a.rsplit_once('@'), b.rsplit_once('@')) {
        (Some((la, da)), Some((lb, db))) => la == lb && da.eq_ignore_ascii_case(db),
        _ => a.eq_ignore_ascii_case(b),
    }
}

/// The data stage: envelope, header section and body, all editable.
#[derive(Debug, Clone)]
pub struct DataState {
    pub sender: Mailbox,
    pub recipients: Vec<Mailbox>,
    pub headers: HeaderSection,
    /// A plugin's replacement body, if any.
    pub replaced_body: Option<Arc<Vec<u8>>>,
    /// Quarantine requested: (plugin, reason).
    pub quarantine: Option<(Arc<str>, String)>,
    pub envelope_changed: bool,
    pub utf8: bool,
    /// The original body as far as any plugin may see it.
    pub original_body: Arc<Vec<u8>>,
    /// Length of the whole original body.
    pub original_body_len: u64,
    pub max_size: u64,
}

impl DataState {
    /// The state before the first plugin: the envelope and the message as received.
    pub fn new(
        sender: Mailbox,
        recipients: Vec<Mailbox>,
        headers: HeaderSection,
        original_body: Arc<Vec<u8>>,
        original_body_len: u64,
        utf8: bool,
        max_size: u64,
    ) -> Self {
        Self {
            sender,
            recipients,
            headers,
            replaced_body: None,
            quarantine: None,
            envelope_changed: false,
            utf8,
            original_body,
            original_body_len,
            max_size,
        }
    }

    fn body_len(&self) -> u64 {
        self.replaced_body.as_ref().map_or(self.original_body_len, |b| b.len() as u64)
    }

    fn message_for(&self, access: BodyAccess, max_body: usize) -> bindings::Message {
        let headers = match access {
            BodyAccess::None => vec![],
            _ => self
                .headers
                .fields
                .iter()
                .map(|f| bindings::Header { name: f.name.clone(), value: f.value.clone() })
                .collect(),
        };
        let (body, truncated) = match access {
            BodyAccess::Full => {
                let full: &[u8] = self.replaced_body.as_deref().map_or(&self.original_body, |b| b);
                let seen = &full[..full.len().min(max_body)];
                (Some(seen.to_vec()), (seen.len() as u64) < self.body_len())
            }
            _ => (None, false),
        };
        let size = self.headers.render(self.body_len() == 0).len() as u64 + self.body_len();
        bindings::Message { headers, body, body_truncated: truncated, size }
    }
}

impl StageState for DataState {
    const STAGE: Stage = Stage::Data;

    async fn call(
        &self,
        p: &Plugin,
        ps: &Plugins,
        host: HostContext,
        conn: &Connection,
    ) -> (Result<Answer, Fault>, HostContext) {
        let env = envelope(Some(&self.sender), &self.recipients);
        let message = self.message_for(p.manifest.body, p.limits.max_body.bytes() as usize);
        sandbox::run(&ps.spec(p), host, p.limits.data_time, Call::Data(conn, &env, &message)).await
    }

    fn apply(&mut self, edit: &Edit, plugin: &Plugin) -> Result<(), String> {
        match edit {
            Edit::SetSender(a) => {
                self.sender = validate::address(a, self.utf8, false)?;
                self.envelope_changed = true;
            }
            Edit::AddRecipient(a) => {
                let mailbox = validate::address(a, self.utf8, true)?;
                if !self.recipients.contains(&mailbox) {
                    self.recipients.push(mailbox);
                    self.envelope_changed = true;
                }
            }
            Edit::RemoveRecipient(m) => {
                let i = self
                    .recipients
                    .iter()
                    .position(|r| same_mailbox(r.as_str(), m))
                    .ok_or_else(|| format!("remove-recipient {m:?}: no such recipient"))?;
                self.recipients.remove(i);
                if self.recipients.is_empty() {
                    return Err("edits removed every recipient; use reject or quarantine instead".into());
                }
                self.envelope_changed = true;
            }
            Edit::AddHeader(h) => {
                validate::header_name(&h.name)?;
                validate::header_value(&h.name, &h.value)?;
                self.headers.append(Field::new(&h.name, &h.value));
            }
            Edit::InsertHeader(ins) => {
                let h = &ins.header;
                validate::header_name(&h.name)?;
                validate::header_value(&h.name, &h.value)?;
                let index = ins.index as usize;
                if index > self.headers.fields.len() {
                    return Err(format!("insert-header at {index}: only {} fields", self.headers.fields.len()));
                }
                self.headers.insert(index, Field::new(&h.name, &h.value));
            }
            Edit::ChangeHeader(c) => {
                validate::header_value(&c.name, &c.value)?;
                let i = self
                    .headers
                    .find(&c.name, c.occurrence)
                    .ok_or_else(|| format!("change-header: no occurrence {} of {:?}", c.occurrence, c.name))?;
                self.headers.set_value(i, &c.value);
            }
            Edit::RemoveHeader(r) => {
                let i = self
                    .headers
                    .find(&r.name, r.occurrence)
                    .ok_or_else(|| format!("remove-header: no occurrence {} of {:?}", r.occurrence, r.name))?;
                self.headers.remove(i);
            }
            Edit::ReplaceBody(body) => {
                validate::body(body, self.max_size)?;
                self.replaced_body = Some(Arc::new(body.clone()));
            }
            Edit::Quarantine(reason) => {
                validate::quarantine_reason(reason)?;
                self.quarantine = Some((plugin.name.clone(), reason.clone()));
            }
        }
        Ok(())
    }
}
