//! # wasmtp-plugin: filter plugins for wasmtp in plain Rust
//!
//! A plugin is a type implementing [`Filter`], exported with [`export!`]. Each method is one
//! SMTP stage; its default lets the message through, so a plugin overrides only the stages it
//! cares about — and lists them in its [`Manifest`], because the host calls a plugin only at
//! the stages the manifest declares.
//!
//! A plugin's settings (`[plugins.config]` in the wasmtp configuration) arrive as its
//! [`Filter::Config`], deserialized by the SDK. The host checks them once when it loads the
//! plugin (the contract's `init`), so a typo stops `wasmtp check-config` and the start with
//! the plugin's own message, naming the plugin; no SMTP client ever sees it.
//!
//! Every call runs in a fresh sandbox: statics and heap do not survive between calls. Keep state
//! in [`notes`] (per transaction) or [`kv`] (shared, with expiry).
//!
//! The complete example below is `fixtures/sdk-example` in this repository, built and tested
//! by the host's test suite as it stands here:
//!
//! ```no_run
#![doc = include_str!("../../fixtures/sdk-example/src/lib.rs")]
//! ```
//!
//! Build it as a `cdylib` for `wasm32-wasip2` (`cargo build --release --target wasm32-wasip2`)
//! and list the `.wasm` file under `[[plugins]]` in the wasmtp configuration. The SDK carries
//! its own copy of the contract (`wit/filter.wit`, `wasmtp:filter@0.2.0`), so it builds
//! outside this repository too.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "filter",
        pub_export_macro: true,
        export_macro_name: "__export_filter",
        default_bindings_module: "wasmtp_plugin::bindings",
    });
}

use bindings::wasmtp::filter::host as wit_host;
pub use bindings::wasmtp::filter::types::{
    Address, AuthResult, AuthResults, BodyAccess, Connection, Decision, DkimCheck, DmarcCheck, DmarcPolicy, Edit,
    EditKind, Envelope, Header, HeaderChange, HeaderInsert, HeaderRef, IprevCheck, Manifest, Message, Param, Reply,
    SpfCheck, Stage, TlsInfo, Verdict,
};
pub use wit_host::{KvError, Level};

/// A filter plugin. Each method is called at one SMTP stage, only if the manifest lists it,
/// with the plugin's settings.
///
/// Every method returns a [`Decision`]: a verdict ([`Decision::next`], [`Decision::accept`],
/// [`Decision::reject`], [`Decision::tempfail`], [`Decision::disconnect`]) plus edits. Edits
/// must be of a kind the manifest lists and allowed at the stage, or the host treats the call
/// as a fault and applies the plugin's `on_error` policy.
pub trait Filter {
    /// The plugin's settings, deserialized from its `[plugins.config]` table (JSON on the wire;
    /// a missing table is `{}`). Use `#[serde(deny_unknown_fields)]` so a misspelt key is an
    /// error at load, and [`NoConfig`] for a plugin without settings.
    type Config: serde::de::DeserializeOwned;

    /// What the plugin is and needs. Called once when the host loads the plugin, after its
    /// settings passed (so the stages can depend on them).
    fn manifest(config: &Self::Config) -> Manifest;

    /// A client connected, before the greeting. Rejecting here makes the greeting a 554 and
    /// every command but QUIT a 503.
    fn on_connect(config: &Self::Config, conn: &Connection) -> Decision {
        let _ = (config, conn);
        Decision::next()
    }

    /// The client said HELO or EHLO.
    fn on_ehlo(config: &Self::Config, conn: &Connection, helo: &str) -> Decision {
        let _ = (config, conn, helo);
        Decision::next()
    }

    /// The client sent MAIL FROM. Allowed edit: set-sender (applied before MAIL is relayed).
    fn on_mail(config: &Self::Config, conn: &Connection, sender: &Address) -> Decision {
        let _ = (config, conn, sender);
        Decision::next()
    }

    /// The client sent RCPT TO; `envelope` holds what was accepted so far. Allowed edits:
    /// add-recipient, remove-recipient (removing `recipient` itself means it is not relayed).
    fn on_rcpt(config: &Self::Config, conn: &Connection, envelope: &Envelope, recipient: &Address) -> Decision {
        let _ = (config, conn, envelope, recipient);
        Decision::next()
    }

    /// The whole message arrived, nothing of it has gone upstream yet. Every edit kind is
    /// allowed; envelope edits make the host replay MAIL/RCPT upstream.
    fn on_data(config: &Self::Config, conn: &Connection, envelope: &Envelope, message: &Message) -> Decision {
        let _ = (config, conn, envelope, message);
        Decision::next()
    }
}

/// The settings of a plugin that has none: only an empty (or missing) table is accepted.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Exports a [`Filter`] implementation as the plugin's component exports.
#[macro_export]
macro_rules! export {
    ($filter:ty) => {
        const _: () = {
            struct __WasmtpExport;
            type __Config = <$filter as $crate::Filter>::Config;

            impl $crate::bindings::Guest for __WasmtpExport {
                fn init(config: ::std::string::String) -> ::std::result::Result<(), ::std::string::String> {
                    $crate::parse_config::<__Config>(&config).map(drop)
                }
                fn manifest() -> $crate::Manifest {
                    match $crate::parse_config::<__Config>(&$crate::config_json()) {
                        Ok(config) => <$filter as $crate::Filter>::manifest(&config),
                        // The host calls `init` first and refuses the plugin when it fails, so
                        // this only happens when something else than wasmtp loads the plugin.
                        Err(err) => panic!("{err}"),
                    }
                }
                fn on_connect(conn: $crate::Connection) -> $crate::Decision {
                    $crate::with_config(|c: &__Config| <$filter as $crate::Filter>::on_connect(c, &conn))
                }
                fn on_ehlo(conn: $crate::Connection, helo: ::std::string::String) -> $crate::Decision {
                    $crate::with_config(|c: &__Config| <$filter as $crate::Filter>::on_ehlo(c, &conn, &helo))
                }
                fn on_mail(conn: $crate::Connection, sender: $crate::Address) -> $crate::Decision {
                    $crate::with_config(|c: &__Config| <$filter as $crate::Filter>::on_mail(c, &conn, &sender))
                }
                fn on_rcpt(
                    conn: $crate::Connection,
                    envelope: $crate::Envelope,
                    recipient: $crate::Address,
                ) -> $crate::Decision {
                    $crate::with_config(|c: &__Config| {
                        <$filter as $crate::Filter>::on_rcpt(c, &conn, &envelope, &recipient)
                    })
                }
                fn on_data(
                    conn: $crate::Connection,
                    envelope: $crate::Envelope,
                    message: $crate::Message,
                ) -> $crate::Decision {
                    $crate::with_config(|c: &__Config| {
                        <$filter as $crate::Filter>::on_data(c, &conn, &envelope, &message)
                    })
                }
            }

    $crate::bindings::__export_filter!(__WasmtpExport with_types_in $crate::bindings);
        };
    };
}

/// Parses a plugin's settings from their JSON text, with the path of the offending field in
/// the message (e.g. "unknown field `forbidden_extensionz`, expected one of ... at line 1").
pub fn parse_config<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, String> {
    let json = if json.trim().is_empty() { "{}" } else { json };
    serde_json::from_str(json).map_err(|e| format!("invalid plugin config: {e}"))
}

/// Runs a stage with the plugin's settings. They passed `init` when the plugin was loaded, so
/// a failure here is the host's doing; the detail goes to the log and the client gets a plain
/// temporary failure, never the plugin's internal error text.
#[doc(hidden)]
pub fn with_config<T: serde::de::DeserializeOwned>(stage: impl FnOnce(&T) -> Decision) -> Decision {
    match parse_config::<T>(&config_json()) {
        Ok(config) => stage(&config),
        Err(err) => {
            log(Level::Error, &err);
            Decision::tempfail(451, "4.3.0", "Temporary local problem, try again later")
        }
    }
}

impl Manifest {
    /// A manifest with no stages, no body access and no edits; add them with the builders.
    pub fn new(name: &str, version: &str) -> Self {
        Manifest { name: name.into(), version: version.into(), stages: vec![], body: BodyAccess::None, edits: vec![] }
    }

    pub fn stages(mut self, stages: impl IntoIterator<Item = Stage>) -> Self {
        self.stages.extend(stages);
        self
    }

    pub fn body(mut self, body: BodyAccess) -> Self {
        self.body = body;
        self
    }

    pub fn edits(mut self, edits: impl IntoIterator<Item = EditKind>) -> Self {
        self.edits.extend(edits);
        self
    }
}

impl Reply {
    /// A one-line reply; `enhanced` such as "5.7.1" (or "" for the host's default).
    pub fn new(code: u16, enhanced: &str, text: &str) -> Self {
        Reply { code, enhanced: (!enhanced.is_empty()).then(|| enhanced.to_string()), lines: vec![text.to_string()] }
    }

    /// Adds another line of text.
    pub fn line(mut self, text: &str) -> Self {
        self.lines.push(text.to_string());
        self
    }
}

impl Decision {
    /// No objection: the next plugin of the stage runs.
    pub fn next() -> Self {
        Decision { verdict: Verdict::Continue, edits: vec![] }
    }

    /// Accept at this stage: later plugins of the same stage are skipped.
    pub fn accept() -> Self {
        Decision { verdict: Verdict::Accept, edits: vec![] }
    }

    /// Refuse permanently (`code` 5xx).
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Self {
        Decision { verdict: Verdict::Reject(Reply::new(code, enhanced, text)), edits: vec![] }
    }

    /// Refuse temporarily (`code` 4xx).
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Self {
        Decision { verdict: Verdict::Tempfail(Reply::new(code, enhanced, text)), edits: vec![] }
    }

    /// Reply (4xx or 5xx) and close the connection.
    pub fn disconnect(code: u16, enhanced: &str, text: &str) -> Self {
        Decision { verdict: Verdict::Disconnect(Reply::new(code, enhanced, text)), edits: vec![] }
    }

    /// A decision with the given verdict reply, for multi-line replies built with [`Reply`].
    pub fn with_verdict(verdict: Verdict) -> Self {
        Decision { verdict, edits: vec![] }
    }

    /// Adds any edit.
    pub fn edit(mut self, edit: Edit) -> Self {
        self.edits.push(edit);
        self
    }

    pub fn set_sender(self, mailbox: &str) -> Self {
        self.edit(Edit::SetSender(Address { mailbox: mailbox.into(), params: vec![] }))
    }

    pub fn add_recipient(self, mailbox: &str) -> Self {
        self.edit(Edit::AddRecipient(Address { mailbox: mailbox.into(), params: vec![] }))
    }

    pub fn remove_recipient(self, mailbox: &str) -> Self {
        self.edit(Edit::RemoveRecipient(mailbox.into()))
    }

    pub fn add_header(self, name: &str, value: &str) -> Self {
        self.edit(Edit::AddHeader(Header { name: name.into(), value: value.into() }))
    }

    pub fn insert_header(self, index: u32, name: &str, value: &str) -> Self {
        self.edit(Edit::InsertHeader(HeaderInsert { index, header: Header { name: name.into(), value: value.into() } }))
    }

    /// Changes the `occurrence`-th (from 1) header called `name`.
    pub fn change_header(self, name: &str, occurrence: u32, value: &str) -> Self {
        self.edit(Edit::ChangeHeader(HeaderChange { name: name.into(), occurrence, value: value.into() }))
    }

    /// Removes the `occurrence`-th (from 1) header called `name`.
    pub fn remove_header(self, name: &str, occurrence: u32) -> Self {
        self.edit(Edit::RemoveHeader(HeaderRef { name: name.into(), occurrence }))
    }

    pub fn replace_body(self, body: Vec<u8>) -> Self {
        self.edit(Edit::ReplaceBody(body))
    }

    pub fn quarantine(self, reason: &str) -> Self {
        self.edit(Edit::Quarantine(reason.into()))
    }
}

impl Message {
    /// A message with these headers and full body, as a plugin's unit tests need one.
    pub fn new(headers: &[(&str, &str)], body: &[u8]) -> Self {
        Message {
            headers: headers.iter().map(|(n, v)| Header { name: n.to_string(), value: v.to_string() }).collect(),
            body: Some(body.to_vec()),
            body_truncated: false,
            size: body.len() as u64,
        }
    }

    /// The value of the first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }

    /// All values of headers called `name`, in order.
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
    }
}

impl Address {
    /// The domain after the last `@`, if any.
    pub fn domain(&self) -> Option<&str> {
        self.mailbox.rsplit_once('@').map(|(_, d)| d)
    }
}

/// The host's imports: the real ones inside the sandbox, [`testing::MockHost`] in a native
/// `cargo test`, so a plugin's stages can be tested without a host.
#[cfg(target_family = "wasm")]
mod host {
    pub use super::wit_host::{config, kv_get, kv_incr, kv_set, log, notes_get, notes_set};
}
#[cfg(not(target_family = "wasm"))]
use testing::mock as host;

/// Writes to the host's log, tagged with the plugin and session.
pub fn log(level: Level, message: &str) {
    host::log(level, message);
}

/// The plugin's `config` table as JSON text.
pub fn config_json() -> String {
    host::config()
}

/// Per-transaction notes, private to the plugin.
pub mod notes {
    use super::host;

    pub fn get(key: &str) -> Option<String> {
        host::notes_get(key)
    }

    pub fn set(key: &str, value: &str) {
        host::notes_set(key, value)
    }
}

/// The shared key-value store, private to the plugin, with optional expiry.
pub mod kv {
    use std::time::Duration;

    use super::{KvError, host};

    fn millis(ttl: Option<Duration>) -> Option<u64> {
        ttl.map(|d| d.as_millis().min(u128::from(u64::MAX)) as u64)
    }

    /// The value at `key`, if any. An error means the store could not answer; what that means
    /// for the message is the plugin's call (usually `tempfail`, or let it through).
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        host::kv_get(key)
    }

    pub fn set(key: &str, value: &[u8], ttl: Option<Duration>) -> Result<(), KvError> {
        host::kv_set(key, value, millis(ttl))
    }

    /// Adds `delta` to a counter; `ttl` applies when the counter is created (a fixed window).
    pub fn incr(key: &str, delta: i64, ttl: Option<Duration>) -> Result<i64, KvError> {
        host::kv_incr(key, delta, millis(ttl))
    }
}

/// A scripted host for native `cargo test`s of a plugin (not in the `.wasm` build).
///
/// Install a [`MockHost`](testing::MockHost) with the plugin's configuration, notes and store
/// contents, then call the plugin's stages through [`testing::on_connect`] … [`testing::on_data`]:
/// they parse the configuration and call the [`Filter`] method as the exported entry point does
/// in the sandbox. Log lines, notes and the store are read back from the handle.
///
/// ```
/// use wasmtp_plugin::testing::MockHost;
/// use wasmtp_plugin::{kv, log, Level};
///
/// let host = MockHost::new().config(r#"{"limit": 2}"#).install();
/// assert_eq!(kv::incr("ip:192.0.2.1", 1, None).unwrap(), 1);
/// log(Level::Info, "counted");
/// assert_eq!(host.logs(), vec![(Level::Info, "counted".to_string())]);
/// assert_eq!(wasmtp_plugin::config_json(), r#"{"limit": 2}"#);
/// ```
///
/// Without an installed host, a host call panics with a message saying so (in that test only).
#[cfg(not(target_family = "wasm"))]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    use super::{Address, AuthResults, Connection, Decision, Envelope, Filter, KvError, Level, Message};

    #[derive(Debug, Default)]
    struct State {
        config: String,
        notes: HashMap<String, String>,
        kv: HashMap<String, Vec<u8>>,
        kv_unavailable: Option<String>,
        logs: Vec<(Level, String)>,
    }

    thread_local! {
        static HOST: RefCell<Option<Rc<RefCell<State>>>> = const { RefCell::new(None) };
    }

    /// What the mock host answers; [`MockHost::install`] makes it this thread's host.
    #[derive(Debug)]
    pub struct MockHost(State);

    impl Default for MockHost {
        fn default() -> Self {
            Self::new()
        }
    }

    impl MockHost {
        /// A host with the configuration `{}`, no notes and an empty store.
        pub fn new() -> Self {
            MockHost(State { config: "{}".into(), ..State::default() })
        }

        /// The plugin's configuration, as the JSON text the host hands over.
        pub fn config(mut self, json: &str) -> Self {
            self.0.config = json.to_string();
            self
        }

        /// A note already set by an earlier stage.
        pub fn note(mut self, key: &str, value: &str) -> Self {
            self.0.notes.insert(key.into(), value.into());
            self
        }

        /// A value already in the store (a counter is its decimal text).
        pub fn kv_value(mut self, key: &str, value: &[u8]) -> Self {
            self.0.kv.insert(key.into(), value.to_vec());
            self
        }

        /// Every store operation fails with `kv-error::unavailable(reason)`.
        pub fn kv_unavailable(mut self, reason: &str) -> Self {
            self.0.kv_unavailable = Some(reason.into());
            self
        }

        /// Makes this the host of the current thread's host calls until the handle is dropped.
        pub fn install(self) -> Installed {
            let state = Rc::new(RefCell::new(self.0));
            HOST.with(|h| *h.borrow_mut() = Some(state.clone()));
            Installed(state)
        }
    }

    /// The installed host: read back what the plugin did.
    #[derive(Debug)]
    pub struct Installed(Rc<RefCell<State>>);

    impl Installed {
        /// The log lines written so far, in order.
        pub fn logs(&self) -> Vec<(Level, String)> {
            self.0.borrow().logs.clone()
        }

        /// A note's value.
        pub fn note(&self, key: &str) -> Option<String> {
            self.0.borrow().notes.get(key).cloned()
        }

        /// A store entry's value.
        pub fn kv_value(&self, key: &str) -> Option<Vec<u8>> {
            self.0.borrow().kv.get(key).cloned()
        }
    }

    impl Drop for Installed {
        fn drop(&mut self) {
            HOST.with(|h| {
                let mut current = h.borrow_mut();
                if current.as_ref().is_some_and(|s| Rc::ptr_eq(s, &self.0)) {
                    *current = None;
                }
            });
        }
    }

    /// A connection from `client_ip` (port 25000, session `test`), with no EHLO, TLS,
    /// authentication or sender-authentication results yet; set fields as a test needs.
    pub fn connection(client_ip: &str) -> Connection {
        Connection {
            session_id: "test".into(),
            client_ip: client_ip.into(),
            client_port: 25000,
            client_name: None,
            helo: None,
            tls: None,
            authenticated_as: None,
            auth: AuthResults { iprev: None, spf_helo: None, spf_mail: None, dkim: Vec::new(), arc: None, dmarc: None },
        }
    }

    /// An address without parameters.
    pub fn address(mailbox: &str) -> Address {
        Address { mailbox: mailbox.into(), params: Vec::new() }
    }

    /// An envelope from `sender` (empty: the null sender) to `recipients`.
    pub fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
        Envelope {
            sender: (!sender.is_empty()).then(|| address(sender)),
            recipients: recipients.iter().map(|r| address(r)).collect(),
        }
    }

    /// Calls `on_connect` as the exported entry point does: configuration parsed, then the stage.
    pub fn on_connect<F: Filter>(conn: &Connection) -> Decision {
        super::with_config(|c: &F::Config| F::on_connect(c, conn))
    }

    /// Calls `on_ehlo` as the exported entry point does.
    pub fn on_ehlo<F: Filter>(conn: &Connection, helo: &str) -> Decision {
        super::with_config(|c: &F::Config| F::on_ehlo(c, conn, helo))
    }

    /// Calls `on_mail` as the exported entry point does.
    pub fn on_mail<F: Filter>(conn: &Connection, sender: &Address) -> Decision {
        super::with_config(|c: &F::Config| F::on_mail(c, conn, sender))
    }

    /// Calls `on_rcpt` as the exported entry point does.
    pub fn on_rcpt<F: Filter>(conn: &Connection, envelope: &Envelope, recipient: &Address) -> Decision {
        super::with_config(|c: &F::Config| F::on_rcpt(c, conn, envelope, recipient))
    }

    /// Calls `on_data` as the exported entry point does.
    pub fn on_data<F: Filter>(conn: &Connection, envelope: &Envelope, message: &Message) -> Decision {
        super::with_config(|c: &F::Config| F::on_data(c, conn, envelope, message))
    }

    /// The host calls, answered by the installed [`MockHost`].
    pub(crate) mod mock {
        use super::{HOST, KvError, Level, State};

        fn with<R>(f: impl FnOnce(&mut State) -> R) -> R {
            HOST.with(|h| {
                let host = h.borrow();
                let state = host.as_ref().expect(
                    "a wasmtp host call outside the sandbox: install a \
                     wasmtp_plugin::testing::MockHost first",
                );
                f(&mut state.borrow_mut())
            })
        }

        pub fn log(level: Level, message: &str) {
            with(|s| s.logs.push((level, message.to_string())));
        }

        pub fn config() -> String {
            with(|s| s.config.clone())
        }

        pub fn notes_get(key: &str) -> Option<String> {
            with(|s| s.notes.get(key).cloned())
        }

        pub fn notes_set(key: &str, value: &str) {
            with(|s| {
                s.notes.insert(key.into(), value.into());
            });
        }

        fn available(s: &State) -> Result<(), KvError> {
            s.kv_unavailable.as_ref().map_or(Ok(()), |reason| Err(KvError::Unavailable(reason.clone())))
        }

        pub fn kv_get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
            with(|s| available(s).map(|()| s.kv.get(key).cloned()))
        }

        pub fn kv_set(key: &str, value: &[u8], _ttl: Option<u64>) -> Result<(), KvError> {
            with(|s| {
                available(s)?;
                s.kv.insert(key.into(), value.to_vec());
                Ok(())
            })
        }

        /// Counters are decimal text, as in the host's store; expiry is not simulated.
        pub fn kv_incr(key: &str, delta: i64, _ttl: Option<u64>) -> Result<i64, KvError> {
            with(|s| {
                available(s)?;
                let current = s.kv.get(key).and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
                let next = current.unwrap_or(0).saturating_add(delta);
                s.kv.insert(key.into(), next.to_string().into_bytes());
                Ok(next)
            })
        }
    }
}

/// Parsing of structured MIME header values such as `Content-Type` and `Content-Disposition`.
///
/// ```
/// use wasmtp_plugin::mime::HeaderValue;
///
/// let ct = HeaderValue::parse(r#"Multipart/Mixed; Boundary="a;b""#);
/// assert_eq!(ct.value, "multipart/mixed");
/// assert_eq!(ct.param("boundary").as_deref(), Some("a;b"));
///
/// let cd = HeaderValue::parse("attachment; filename*=utf-8''%E2%82%AC%20rates.pdf");
/// assert_eq!(cd.param("filename").as_deref(), Some("€ rates.pdf"));
/// ```
pub mod mime {
    /// A header value split into its main value and its parameters.
    #[derive(Debug, Clone, Default, PartialEq, Eq)]
    pub struct HeaderValue {
        /// The part before the first `;`, trimmed and lowercased, e.g. `multipart/mixed`.
        pub value: String,
        /// The parameters in order: lowercased names, values unquoted but otherwise raw
        /// (RFC 2231 forms such as `filename*0*` are kept as given; [`HeaderValue::param`]
        /// decodes them).
        pub params: Vec<(String, String)>,
    }

    impl HeaderValue {
        /// Parses `type/subtype; name=value; name="quoted; value"`. Never fails: malformed
        /// pieces are skipped.
        pub fn parse(header_value: &str) -> Self {
            let mut segments = split_outside_quotes(header_value).into_iter();
            let value = segments.next().unwrap_or_default().trim().to_ascii_lowercase();
            let params = segments
                .filter_map(|segment| {
                    let (name, value) = segment.split_once('=')?;
                    let name = name.trim().to_ascii_lowercase();
                    (!name.is_empty()).then(|| (name, unquote(value.trim())))
                })
                .collect();
            HeaderValue { value, params }
        }

        /// The first parameter called exactly `name` (no RFC 2231 decoding).
        pub fn get(&self, name: &str) -> Option<&str> {
            self.params.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        /// The parameter `name`, preferring the RFC 2231 forms (`name*=charset'lang'value`,
        /// continuations `name*0`, `name*1*`, ...) over the plain one. Encoded text is
        /// percent-decoded and read as UTF-8 (invalid sequences become U+FFFD).
        pub fn param(&self, name: &str) -> Option<String> {
            let name = name.to_ascii_lowercase();
            if let Some(v) = self.get(&format!("{name}*")) {
                return Some(decode_extended(v));
            }
            // Continuations: name*0, name*1*, ... up to the first gap.
            let mut bytes = Vec::new();
            let mut found = false;
            for index in 0..1000u32 {
                let plain = format!("{name}*{index}");
                if let Some(v) = self.get(&plain) {
                    bytes.extend_from_slice(v.as_bytes());
                } else if let Some(v) = self.get(&format!("{plain}*")) {
                    // Only the first segment carries the charset'language' prefix.
                    let v = if index == 0 { strip_charset(v) } else { v };
                    bytes.extend(percent_decode(v));
                } else {
                    break;
                }
                found = true;
            }
            if found {
                return Some(String::from_utf8_lossy(&bytes).into_owned());
            }
            self.get(&name).map(str::to_string)
        }
    }

    /// Splits on `;` outside double quotes, keeping quotes and escapes in the pieces.
    fn split_outside_quotes(s: &str) -> Vec<&str> {
        let mut pieces = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, c) in s.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                ';' if !quoted => {
                    pieces.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        pieces.push(&s[start..]);
        pieces
    }

    /// Removes surrounding quotes and backslash escapes; an unquoted value is returned as is.
    fn unquote(v: &str) -> String {
        let Some(rest) = v.strip_prefix('"') else {
            return v.to_string();
        };
        let mut out = String::with_capacity(rest.len());
        let mut chars = rest.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => out.extend(chars.next()),
                c => out.push(c),
            }
        }
        out
    }

    /// `charset'lang'%xx...` to text.
    fn decode_extended(v: &str) -> String {
        String::from_utf8_lossy(&percent_decode(strip_charset(v))).into_owned()
    }

    /// Drops the `charset'language'` prefix of an RFC 2231 value, if present.
    fn strip_charset(v: &str) -> &str {
        let mut parts = v.splitn(3, '\'');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(_), Some(_), Some(rest)) => rest,
            _ => v,
        }
    }

    /// Decodes `%xx` escapes; a malformed escape is kept literally.
    pub fn percent_decode(v: &str) -> Vec<u8> {
        let bytes = v.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn parses_parameters() {
            let v = HeaderValue::parse(
                r#" Attachment ; FileName = "a \"b\".txt" ;broken; size=12; x*0*=us-ascii'en'a%2; x*1="b"; x*3=c"#,
            );
            assert_eq!(v.value, "attachment");
            assert_eq!(v.get("filename"), Some(r#"a "b".txt"#));
            assert_eq!(v.param("size").as_deref(), Some("12"));
            assert_eq!(v.param("x").as_deref(), Some("a%2b")); // bad escape kept; stops at the gap
            assert_eq!(HeaderValue::parse("").value, "");
            assert_eq!(HeaderValue::parse("text/plain; name=\"unterminated").get("name"), Some("unterminated"));
            assert_eq!(percent_decode("%41%+1%4"), b"A%+1%4");
        }
    }
}
