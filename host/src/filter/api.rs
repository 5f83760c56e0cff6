//! The filter API in plain Rust: what a plugin is called with at each stage and what it answers.
//! The plugin contract (`wit/0.2.0/filter.wit`) is one rendering of these types; its converter lives
//! with the WebAssembly runtime, so the chain, the edit model and the merge rules are written and
//! tested against these alone.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::auth::AuthResults;
use crate::message::HeaderSection;

/// The SMTP stages a plugin can be called at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// A client connected; before the greeting.
    Connect,
    /// The client sent HELO or EHLO.
    Ehlo,
    /// The client sent MAIL FROM; before it is relayed upstream.
    Mail,
    /// The client sent RCPT TO; before it is relayed upstream.
    Rcpt,
    /// The whole message was received; before anything of it goes upstream.
    Data,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Ehlo => "ehlo",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much of the message a plugin sees at the data stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyAccess {
    None,
    Headers,
    Full,
}

impl BodyAccess {
    pub fn name(self) -> &'static str {
        match self {
            BodyAccess::None => "none",
            BodyAccess::Headers => "headers",
            BodyAccess::Full => "full",
        }
    }
}

/// The kinds of edit; a plugin may only return the kinds its manifest declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EditKind {
    SetSender,
    AddRecipient,
    RemoveRecipient,
    AddHeader,
    InsertHeader,
    ChangeHeader,
    RemoveHeader,
    ReplaceBody,
    Quarantine,
}

impl EditKind {
    pub fn name(self) -> &'static str {
        match self {
            EditKind::SetSender => "set-sender",
            EditKind::AddRecipient => "add-recipient",
            EditKind::RemoveRecipient => "remove-recipient",
            EditKind::AddHeader => "add-header",
            EditKind::InsertHeader => "insert-header",
            EditKind::ChangeHeader => "change-header",
            EditKind::RemoveHeader => "remove-header",
            EditKind::ReplaceBody => "replace-body",
            EditKind::Quarantine => "quarantine",
        }
    }

    /// Whether an edit of this kind can take effect at `stage`.
    pub fn allowed_at(self, stage: Stage) -> bool {
        match stage {
            Stage::Connect | Stage::Ehlo => false,
            Stage::Mail => self == EditKind::SetSender,
            Stage::Rcpt => matches!(self, EditKind::AddRecipient | EditKind::RemoveRecipient),
            Stage::Data => true,
        }
    }
}

impl fmt::Display for EditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a plugin is and what it needs; read once at load and enforced on every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// The stages to be called at; a plugin is never called at another.
    pub stages: Vec<Stage>,
    pub body: BodyAccess,
    /// The edit kinds the plugin may return.
    pub edits: Vec<EditKind>,
}

impl Manifest {
    pub fn declares(&self, stage: Stage) -> bool {
        self.stages.contains(&stage)
    }

    pub fn may(&self, kind: EditKind) -> bool {
        self.edits.contains(&kind)
    }
}

/// A manifest in words: `name version: stages data,rcpt; body headers; edits add-header`.
impl fmt::Display for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn words<'a>(items: impl ExactSizeIterator<Item = &'a str>) -> String {
            if items.len() == 0 { "none".into() } else { items.collect::<Vec<_>>().join(",") }
        }
        write!(
            f,
            "{} {}: stages {}; body {}; edits {}",
            self.name,
            self.version,
            words(self.stages.iter().map(|s| s.name())),
            self.body.name(),
            words(self.edits.iter().map(|e| e.name()))
        )
    }
}

/// TLS parameters of the client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
}

/// Facts about the client connection, as known at the current stage.
#[derive(Debug, Clone)]
pub struct Connection {
    pub session_id: Arc<str>,
    pub client: SocketAddr,
    /// The client's host name, only when iprev verified it.
    pub client_name: Option<String>,
    /// The HELO/EHLO argument, from the ehlo stage on.
    pub helo: Option<String>,
    pub tls: Option<TlsInfo>,
    pub authenticated_as: Option<String>,
    pub auth: AuthResults,
}

impl Connection {
    /// A connection known only by its session id and client address.
    pub fn new(session_id: Arc<str>, client: SocketAddr) -> Self {
        Self {
            session_id,
            client,
            client_name: None,
            helo: None,
            tls: None,
            authenticated_as: None,
            auth: AuthResults::default(),
        }
    }
}

/// An ESMTP parameter of MAIL or RCPT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

/// `NAME=value`, or `NAME` without a value.
impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl Param {
    /// Reads the [`Display`](fmt::Display) form back.
    pub fn parse(text: &str) -> Self {
        match text.split_once('=') {
            Some((name, value)) => Self { name: name.to_string(), value: Some(value.to_string()) },
            None => Self { name: text.to_string(), value: None },
        }
    }
}

/// An envelope address as plugins see and rewrite it: the mailbox without angle brackets
/// ("" is the null sender) and, as the client gave them, its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub mailbox: String,
    pub params: Vec<Param>,
}

impl Address {
    pub fn new(mailbox: &str) -> Self {
        Self { mailbox: mailbox.to_string(), params: Vec::new() }
    }
}

/// The envelope so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub sender: Option<Address>,
    pub recipients: Vec<Address>,
}

/// A header field as plugins see it: the value unfolded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The message at the data stage, after earlier plugins' edits, limited to the plugin's body
/// access. Borrowed from the chain's state; a converter copies what the sandbox needs.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// `None` with body access `none`.
    pub headers: Option<&'a HeaderSection>,
    /// Present only with body access `full`, cut at the plugin's `max_body`.
    pub body: Option<&'a [u8]>,
    /// `body` holds only the start of a longer body.
    pub body_truncated: bool,
    /// The size of the whole message in octets.
    pub size: u64,
}

/// What a stage call carries besides the connection.
#[derive(Debug, Clone)]
pub enum StageInput<'a> {
    Connect,
    Ehlo { helo: &'a str },
    Mail { sender: Address },
    Rcpt { envelope: Envelope, recipient: Address },
    Data { envelope: Envelope, message: Message<'a> },
}

impl StageInput<'_> {
    pub fn stage(&self) -> Stage {
        match self {
            StageInput::Connect => Stage::Connect,
            StageInput::Ehlo { .. } => Stage::Ehlo,
            StageInput::Mail { .. } => Stage::Mail,
            StageInput::Rcpt { .. } => Stage::Rcpt,
            StageInput::Data { .. } => Stage::Data,
        }
    }
}

/// One call of one plugin.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub conn: &'a Connection,
    pub input: StageInput<'a>,
}

/// A reply as a plugin wrote it, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginReply {
    pub code: u16,
    /// `class.subject.detail`; the host uses `class.0.0` when absent.
    pub enhanced: Option<String>,
    pub lines: Vec<String>,
}

/// A plugin's verdict, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    Accept,
    Reject(PluginReply),
    Tempfail(PluginReply),
    Disconnect(PluginReply),
}

/// A change a plugin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    SetSender(Address),
    AddRecipient(Address),
    RemoveRecipient(String),
    AddHeader(Header),
    InsertHeader { index: u32, header: Header },
    ChangeHeader { name: String, occurrence: u32, value: String },
    RemoveHeader { name: String, occurrence: u32 },
    ReplaceBody(Vec<u8>),
    Quarantine(String),
}

impl Edit {
    pub fn kind(&self) -> EditKind {
        match self {
            Edit::SetSender(_) => EditKind::SetSender,
            Edit::AddRecipient(_) => EditKind::AddRecipient,
            Edit::RemoveRecipient(_) => EditKind::RemoveRecipient,
            Edit::AddHeader(_) => EditKind::AddHeader,
            Edit::InsertHeader { .. } => EditKind::InsertHeader,
            Edit::ChangeHeader { .. } => EditKind::ChangeHeader,
            Edit::RemoveHeader { .. } => EditKind::RemoveHeader,
            Edit::ReplaceBody(_) => EditKind::ReplaceBody,
            Edit::Quarantine(_) => EditKind::Quarantine,
        }
    }
}

/// An edit in one line, as logs, `wasmtp plugin test` and recordings show it.
impl fmt::Display for Edit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Edit::SetSender(a) => write!(f, "set-sender <{}>", a.mailbox),
            Edit::AddRecipient(a) => write!(f, "add-recipient <{}>", a.mailbox),
            Edit::RemoveRecipient(m) => write!(f, "remove-recipient <{m}>"),
            Edit::AddHeader(h) => write!(f, "add-header {}: {}", h.name, h.value),
            Edit::InsertHeader { index, header } => {
                write!(f, "insert-header at {index}: {}: {}", header.name, header.value)
            }
            Edit::ChangeHeader { name, occurrence, value } => write!(f, "change-header {name} #{occurrence}: {value}"),
            Edit::RemoveHeader { name, occurrence } => write!(f, "remove-header {name} #{occurrence}"),
            Edit::ReplaceBody(body) => write!(f, "replace-body ({} octets)", body.len()),
            Edit::Quarantine(reason) => write!(f, "quarantine: {reason}"),
        }
    }
}

/// A plugin's answer at a stage, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub edits: Vec<Edit>,
}

impl Decision {
    /// Continue without edits.
    pub fn next() -> Self {
        Self { verdict: Verdict::Continue, edits: Vec::new() }
    }
}
