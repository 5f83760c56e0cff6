//! What each stage works on, how a plugin is called with it, and how edits change it. The chain
//! applies a plugin's edits to a copy of the state, so they take effect all together or not at
//! all, and the next plugin is called with the result.

use std::sync::Arc;

use super::Plugin;
use super::api::{self, Address, BodyAccess, Edit, Envelope, Param, Stage, StageInput};
use super::validate::{self, Violation};
use crate::message::HeaderSection;
use crate::message::headers::Field;
use crate::smtp::Mailbox;

/// The state one stage works on.
pub trait StageState: Clone {
    const STAGE: Stage;

    /// The input of a call to `plugin` with the current state.
    fn input(&self, plugin: &Plugin) -> StageInput<'_>;

    /// Applies one edit already checked against the manifest and the stage.
    fn apply(&mut self, edit: Edit, plugin: &Plugin) -> Result<(), Violation>;
}

fn envelope<'a>(sender: &Mailbox, recipients: impl Iterator<Item = &'a Mailbox>) -> Envelope {
    Envelope {
        sender: Some(Address::new(sender.as_str())),
        recipients: recipients.map(|r| Address::new(r.as_str())).collect(),
    }
}

/// Connect and ehlo have nothing to edit; the manifest check already refused every edit there.
fn nothing_to_edit(edit: &Edit, stage: Stage) -> Violation {
    Violation::WrongStage { kind: edit.kind(), stage }
}

/// The connect stage.
#[derive(Debug, Clone)]
pub struct ConnectState;

impl StageState for ConnectState {
    const STAGE: Stage = Stage::Connect;

    fn input(&self, _: &Plugin) -> StageInput<'_> {
        StageInput::Connect
    }

    fn apply(&mut self, edit: Edit, _: &Plugin) -> Result<(), Violation> {
        Err(nothing_to_edit(&edit, Self::STAGE))
    }
}

/// The ehlo stage: the HELO/EHLO argument.
#[derive(Debug, Clone)]
pub struct EhloState(pub String);

impl StageState for EhloState {
    const STAGE: Stage = Stage::Ehlo;

    fn input(&self, _: &Plugin) -> StageInput<'_> {
        StageInput::Ehlo { helo: &self.0 }
    }

    fn apply(&mut self, edit: Edit, _: &Plugin) -> Result<(), Violation> {
        Err(nothing_to_edit(&edit, Self::STAGE))
    }
}

/// The mail stage: the sender, which plugins may rewrite.
#[derive(Debug, Clone)]
pub struct MailState {
    pub sender: Mailbox,
    /// The client's parameters, shown to plugins.
    pub params: Vec<Param>,
    /// SMTPUTF8 was requested: rewrites may use UTF-8.
    pub utf8: bool,
}

impl StageState for MailState {
    const STAGE: Stage = Stage::Mail;

    fn input(&self, _: &Plugin) -> StageInput<'_> {
        StageInput::Mail { sender: Address { mailbox: self.sender.as_str().to_string(), params: self.params.clone() } }
    }

    fn apply(&mut self, edit: Edit, _: &Plugin) -> Result<(), Violation> {
        match edit {
            Edit::SetSender(a) => self.sender = validate::address(&a, self.utf8, false)?,
            other => return Err(nothing_to_edit(&other, Self::STAGE)),
        }
        Ok(())
    }
}

/// The rcpt stage: the recipient being added, whether it stays, and the recipients plugins add
/// in its place or beside it (aliases).
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

impl RcptState {
    pub fn new(sender: Mailbox, accepted: Vec<Mailbox>, recipient: Mailbox, utf8: bool) -> Self {
        Self { sender, accepted, recipient, keep: true, added: Vec::new(), utf8 }
    }

    /// The recipients to relay for this RCPT, in order, each once.
    pub fn to_relay(&self) -> Vec<Mailbox> {
        let mut relay: Vec<Mailbox> = Vec::new();
        if self.keep {
            relay.push(self.recipient.clone());
        }
        relay.extend(self.added.iter().filter(|a| **a != self.recipient).cloned());
        relay
    }
}

impl StageState for RcptState {
    const STAGE: Stage = Stage::Rcpt;

    fn input(&self, _: &Plugin) -> StageInput<'_> {
        StageInput::Rcpt {
            envelope: envelope(&self.sender, self.accepted.iter().chain(&self.added)),
            recipient: Address::new(self.recipient.as_str()),
        }
    }

    fn apply(&mut self, edit: Edit, _: &Plugin) -> Result<(), Violation> {
        match edit {
            Edit::AddRecipient(a) => {
                let mailbox = validate::address(&a, self.utf8, true)?;
                if !self.added.contains(&mailbox) {
                    self.added.push(mailbox);
                }
            }
            Edit::RemoveRecipient(m) => {
                if self.keep && self.recipient.is(&m) {
                    self.keep = false;
                } else if let Some(i) = self.added.iter().position(|a| a.is(&m)) {
                    self.added.remove(i);
                } else {
                    return Err(Violation::NotRemovableHere(m));
                }
            }
            other => return Err(nothing_to_edit(&other, Self::STAGE)),
        }
        Ok(())
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
    /// Plugins changed the sender or the recipients: the upstream transaction must be replayed.
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

    pub fn body_len(&self) -> u64 {
        self.replaced_body.as_ref().map_or(self.original_body_len, |b| b.len() as u64)
    }

    /// The message as a plugin with `access` sees it, the body cut at `max_body`.
    fn message_for(&self, access: BodyAccess, max_body: usize) -> api::Message<'_> {
        let body = (access == BodyAccess::Full).then(|| {
            let full: &[u8] = self.replaced_body.as_deref().map_or(&self.original_body, |b| b);
            &full[..full.len().min(max_body)]
        });
        api::Message {
            headers: (access != BodyAccess::None).then_some(&self.headers),
            body_truncated: body.is_some_and(|b| (b.len() as u64) < self.body_len()),
            body,
            size: self.headers.rendered_len(self.body_len() == 0) as u64 + self.body_len(),
        }
    }
}

impl StageState for DataState {
    const STAGE: Stage = Stage::Data;

    fn input(&self, plugin: &Plugin) -> StageInput<'_> {
        StageInput::Data {
            envelope: envelope(&self.sender, self.recipients.iter()),
            message: self.message_for(plugin.manifest.body, plugin.limits.max_body.bytes() as usize),
        }
    }

    fn apply(&mut self, edit: Edit, plugin: &Plugin) -> Result<(), Violation> {
        match edit {
            Edit::SetSender(a) => {
                self.sender = validate::address(&a, self.utf8, false)?;
                self.envelope_changed = true;
            }
            Edit::AddRecipient(a) => {
                let mailbox = validate::address(&a, self.utf8, true)?;
                if !self.recipients.contains(&mailbox) {
                    self.recipients.push(mailbox);
                    self.envelope_changed = true;
                }
            }
            Edit::RemoveRecipient(m) => {
                let i = self.recipients.iter().position(|r| r.is(&m)).ok_or(Violation::NoSuchRecipient(m))?;
                self.recipients.remove(i);
                if self.recipients.is_empty() {
                    return Err(Violation::NoRecipientsLeft);
                }
                self.envelope_changed = true;
            }
            Edit::AddHeader(h) => {
                validate::header(&h.name, &h.value)?;
                self.headers.append(Field::new(&h.name, &h.value));
            }
            Edit::InsertHeader { index, header: h } => {
                validate::header(&h.name, &h.value)?;
                let fields = self.headers.len();
                if index as usize > fields {
                    return Err(Violation::InsertPosition { index, fields });
                }
                self.headers.insert(index as usize, Field::new(&h.name, &h.value));
            }
            Edit::ChangeHeader { name, occurrence, value } => {
                validate::header_value(&name, &value)?;
                if !self.headers.set_value(&name, occurrence, &value) {
                    return Err(Violation::NoSuchHeader { edit: api::EditKind::ChangeHeader, name, occurrence });
                }
            }
            Edit::RemoveHeader { name, occurrence } => {
                if !self.headers.remove(&name, occurrence) {
                    return Err(Violation::NoSuchHeader { edit: api::EditKind::RemoveHeader, name, occurrence });
                }
            }
            Edit::ReplaceBody(body) => {
                validate::body(&body, self.max_size)?;
                self.replaced_body = Some(Arc::new(body));
            }
            Edit::Quarantine(reason) => {
                validate::quarantine_reason(&reason)?;
                self.quarantine = Some((plugin.name.clone(), reason));
            }
        }
        Ok(())
    }
}
