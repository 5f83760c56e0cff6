//! Whatever a plugin answers at the data stage, the chain either refuses it as a fault or
//! applies it: and then the reply is valid SMTP, the envelope holds addresses that parse, and
//! the header section renders without a bare CR or LF. No answer panics the host.
#![no_main]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wasmtp::config::{OnError, PluginConfig};
use wasmtp::filter::api::{self, BodyAccess, Call, Connection, EditKind, Manifest, Stage};
use wasmtp::filter::host::{HostContext, NoteScopes, Notes};
use wasmtp::filter::kv::KvStore;
use wasmtp::filter::sandbox::CallResult;
use wasmtp::filter::stages::DataState;
use wasmtp::filter::{Chain, Outcome, Plugin, Sandbox};
use wasmtp::message::HeaderSection;
use wasmtp::smtp::Mailbox;

#[derive(Debug, Clone, Arbitrary)]
enum Verdict {
    Continue,
    Accept,
    Reject(u16, Option<String>, Vec<String>),
    Tempfail(u16, Option<String>, Vec<String>),
    Disconnect(u16, Option<String>, Vec<String>),
}

#[derive(Debug, Clone, Arbitrary)]
enum Edit {
    SetSender(String),
    AddRecipient(String),
    RemoveRecipient(String),
    AddHeader(String, String),
    InsertHeader(u32, String, String),
    ChangeHeader(String, u32, String),
    RemoveHeader(String, u32),
    ReplaceBody(Vec<u8>),
    Quarantine(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    verdict: Verdict,
    edits: Vec<Edit>,
    headers: Vec<(String, String)>,
}

fn reply(code: u16, enhanced: Option<String>, lines: Vec<String>) -> api::PluginReply {
    api::PluginReply { code, enhanced, lines }
}

fn convert(input: &Input) -> api::Decision {
    let verdict = match input.verdict.clone() {
        Verdict::Continue => api::Verdict::Continue,
        Verdict::Accept => api::Verdict::Accept,
        Verdict::Reject(c, e, l) => api::Verdict::Reject(reply(c, e, l)),
        Verdict::Tempfail(c, e, l) => api::Verdict::Tempfail(reply(c, e, l)),
        Verdict::Disconnect(c, e, l) => api::Verdict::Disconnect(reply(c, e, l)),
    };
    let header = |name: String, value: String| api::Header { name, value };
    let edits = input
        .edits
        .iter()
        .cloned()
        .map(|e| match e {
            Edit::SetSender(m) => api::Edit::SetSender(api::Address::new(&m)),
            Edit::AddRecipient(m) => api::Edit::AddRecipient(api::Address::new(&m)),
            Edit::RemoveRecipient(m) => api::Edit::RemoveRecipient(m),
            Edit::AddHeader(n, v) => api::Edit::AddHeader(header(n, v)),
            Edit::InsertHeader(index, n, v) => api::Edit::InsertHeader { index, header: header(n, v) },
            Edit::ChangeHeader(name, occurrence, value) => api::Edit::ChangeHeader { name, occurrence, value },
            Edit::RemoveHeader(name, occurrence) => api::Edit::RemoveHeader { name, occurrence },
            Edit::ReplaceBody(body) => api::Edit::ReplaceBody(body),
            Edit::Quarantine(reason) => api::Edit::Quarantine(reason),
        })
        .collect();
    api::Decision { verdict, edits }
}

/// A sandbox that gives the chain one prepared answer.
struct Scripted(Mutex<Option<api::Decision>>);

impl Sandbox for Scripted {
    fn call<'a>(
        &'a self,
        _: Call<'a>,
        host: HostContext,
        _: Duration,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        let decision = self.0.lock().unwrap().take().unwrap_or_else(api::Decision::next);
        Box::pin(std::future::ready((Ok(decision), host)))
    }
}

fuzz_target!(|input: Input| {
    let mut message = Vec::new();
    for (name, value) in &input.headers {
        // What a client can send at all: the DATA receiver refuses (or, normalising, drops) bare
        // CR, LF and NUL before any plugin runs.
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') || value.contains(['\r', '\n', '\0']) {
            return;
        }
        message.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
    }
    message.extend_from_slice(b"\r\nbody\r\n");
    let Ok(headers) = HeaderSection::parse(&message, 1000) else { return };
    let mut config = PluginConfig::new("fuzzed", "fuzzed.wasm");
    config.on_error = OnError::Continue;
    let all = [
        EditKind::SetSender,
        EditKind::AddRecipient,
        EditKind::RemoveRecipient,
        EditKind::AddHeader,
        EditKind::InsertHeader,
        EditKind::ChangeHeader,
        EditKind::RemoveHeader,
        EditKind::ReplaceBody,
        EditKind::Quarantine,
    ];
    let manifest =
        Manifest { name: "fuzzed".into(), version: "1".into(), stages: vec![Stage::Data], body: BodyAccess::Full, edits: all.to_vec() };
    let sandbox = Scripted(Mutex::new(Some(convert(&input))));
    let chain = Chain::new(vec![Plugin::new(&config, manifest, Box::new(sandbox)).unwrap()], Arc::new(KvStore::new()));
    let sender = Mailbox::parse("a@example.org", false, false).unwrap();
    let rcpt = Mailbox::parse("b@example.org", false, true).unwrap();
    let body = Arc::new(b"body\r\n".to_vec());
    let mut state = DataState::new(sender, vec![rcpt], headers, body, 6, false, 1 << 20);
    let conn = Connection::new("fuzz".into(), "192.0.2.1:25".parse().unwrap());
    let mut notes = Notes::default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
    let outcome = runtime.block_on(chain.run(&conn, NoteScopes { session: &mut notes, transaction: None }, &mut state));
    if let Some(reply) = outcome.reply() {
        assert!(reply.validate().is_ok(), "{reply:?}");
    }
    if outcome == Outcome::Continue || outcome.reply().is_some() {
        let rendered = state.headers.render(false);
        for (i, &b) in rendered.iter().enumerate() {
            match b {
                b'\r' => assert_eq!(rendered.get(i + 1), Some(&b'\n')),
                b'\n' => assert!(i > 0 && rendered[i - 1] == b'\r'),
                0 => panic!("NUL in a header"),
                _ => {}
            }
        }
        assert!(!state.recipients.is_empty());
        for mailbox in state.recipients.iter().chain([&state.sender]) {
            assert!(!mailbox.as_str().contains(['\r', '\n', '\0', '<', '>']), "{mailbox:?}");
        }
    }
});
