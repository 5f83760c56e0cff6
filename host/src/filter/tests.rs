//! The chain's rules, driven by a scripted fake sandbox: no WebAssembly is compiled here.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::api::{
    Address, BodyAccess, Call, Connection, Decision, Edit, EditKind, Header, Manifest, PluginReply, Stage, StageInput,
    Verdict,
};
use super::host::{HostContext, NoteScopes, Notes};
use super::kv::Kv;
use super::sandbox::CallResult;
use super::stages::{ConnectState, DataState, MailState, RcptState, StageState};
use super::{Chain, Fault, FaultKind, Outcome, Plugin, Sandbox};
use crate::config::{BreakerConfig, OnError, PluginConfig};
use crate::message::HeaderSection;
use crate::replies;
use crate::smtp::Mailbox;

type Script = dyn Fn(&Call<'_>, &mut HostContext) -> Result<Decision, Fault> + Send + Sync;

/// A sandbox that answers with a script and counts its calls.
struct Fake {
    script: Box<Script>,
    calls: Arc<AtomicUsize>,
}

impl Sandbox for Fake {
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        mut host: HostContext,
        _budget: Duration,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let result = (self.script)(&call, &mut host);
        Box::pin(std::future::ready((result, host)))
    }
}

/// A sandbox whose calls never end, like a guest blocked in a host call the sandbox's own clock
/// cannot interrupt.
struct Hanging;

impl Sandbox for Hanging {
    fn call<'a>(
        &'a self,
        _: Call<'a>,
        _: HostContext,
        _: Duration,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(std::future::pending())
    }
}

/// A plugin under test: its manifest, policy and script; `calls` counts how often it ran.
struct TestPlugin {
    config: PluginConfig,
    manifest: Manifest,
    script: Box<Script>,
    calls: Arc<AtomicUsize>,
}

fn plugin(
    name: &str,
    stages: &[Stage],
    script: impl Fn(&Call<'_>, &mut HostContext) -> Result<Decision, Fault> + Send + Sync + 'static,
) -> TestPlugin {
    TestPlugin {
        config: PluginConfig::new(name, "fake.wasm"),
        manifest: Manifest {
            name: name.into(),
            version: "1.0".into(),
            stages: stages.to_vec(),
            body: BodyAccess::Full,
            edits: vec![],
        },
        script: Box::new(script),
        calls: Arc::new(AtomicUsize::new(0)),
    }
}

impl TestPlugin {
    fn edits(mut self, edits: &[EditKind]) -> Self {
        self.manifest.edits = edits.to_vec();
        self
    }

    fn body(mut self, body: BodyAccess) -> Self {
        self.manifest.body = body;
        self
    }

    fn on_error(mut self, on_error: OnError) -> Self {
        self.config.on_error = on_error;
        self
    }

    fn breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.config.breaker = BreakerConfig { failures, cooldown };
        self
    }

    fn shadow(mut self) -> Self {
        self.config.mode = crate::config::PluginMode::Shadow;
        self
    }

    fn counter(&self) -> Arc<AtomicUsize> {
        self.calls.clone()
    }
}

fn chain(plugins: Vec<TestPlugin>) -> Chain {
    let plugins = plugins
        .into_iter()
        .map(|p| {
            let sandbox = Fake { script: p.script, calls: p.calls };
            Plugin::new(&p.config, p.manifest, Box::new(sandbox)).unwrap()
        })
        .collect();
    Chain::new(plugins, Arc::new(Kv::default()), Arc::default())
}

fn conn() -> Connection {
    Connection::new("S1".into(), "192.0.2.1:4000".parse().unwrap())
}

fn mailbox(s: &str) -> Mailbox {
    Mailbox::parse(s, false, true).unwrap()
}

fn reply(code: u16, enhanced: &str, text: &str) -> PluginReply {
    PluginReply { code, enhanced: Some(enhanced.into()), lines: vec![text.into()] }
}

fn answer(verdict: Verdict, edits: Vec<Edit>) -> Result<Decision, Fault> {
    Ok(Decision { verdict, edits })
}

fn next() -> Result<Decision, Fault> {
    Ok(Decision::next())
}

fn mail_state(sender: &str) -> MailState {
    MailState { sender: mailbox(sender), params: vec![], utf8: false }
}

fn data_state(message: &[u8]) -> DataState {
    let headers = HeaderSection::parse(message, 1000).unwrap();
    let body = message[headers.body_offset as usize..].to_vec();
    let len = body.len() as u64;
    DataState::new(
        mailbox("a@example.org"),
        vec![mailbox("b@example.org"), mailbox("c@example.org")],
        headers,
        Arc::new(body),
        len,
        false,
        1 << 20,
    )
}

const MESSAGE: &[u8] = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody\r\n";

/// Runs one stage outside a transaction.
async fn run<S: StageState>(chain: &Chain, state: &mut S) -> Outcome {
    let mut notes = Notes::default();
    chain.run(&conn(), NoteScopes { session: &mut notes, transaction: None }, state).await
}

fn count(c: &AtomicUsize) -> usize {
    c.load(Ordering::SeqCst)
}

#[tokio::test]
async fn the_first_refusal_ends_the_stage() {
    let first = plugin("first", &[Stage::Mail], |_, _| next());
    let refuser = plugin("refuser", &[Stage::Mail], |_, _| answer(Verdict::Reject(reply(550, "5.7.1", "no")), vec![]));
    let after = plugin("after", &[Stage::Mail], |_, _| next());
    let (first_calls, after_calls) = (first.counter(), after.counter());
    let chain = chain(vec![first, refuser, after]);
    let outcome = run(&chain, &mut mail_state("a@example.org")).await;
    let Outcome::Reject(r) = outcome else { panic!("{outcome:?}") };
    assert_eq!(r.to_bytes(), b"550 5.7.1 no\r\n");
    assert_eq!((count(&first_calls), count(&after_calls)), (1, 0));
}

#[tokio::test]
async fn shadows_are_called_in_place_or_after_the_end_and_never_obeyed() {
    let rewrite = |_: &Call<'_>, _: &mut HostContext| {
        answer(Verdict::Reject(reply(550, "5.7.1", "shadow")), vec![Edit::SetSender(Address::new("x@example.org"))])
    };
    // Before the live refuser: called on the state as it stands there.
    let early = plugin("early", &[Stage::Mail], rewrite).edits(&[EditKind::SetSender]).shadow();
    let refuser = plugin("refuser", &[Stage::Mail], |_, _| answer(Verdict::Reject(reply(550, "5.7.1", "no")), vec![]));
    // After it: the stage ended, yet the shadow still runs, for the comparison.
    let late = plugin("late", &[Stage::Mail], |_, _| Err(Fault::new(FaultKind::Crash, "boom"))).shadow();
    let late = late.on_error(OnError::Continue);
    let live_after = plugin("live-after", &[Stage::Mail], |_, _| next());
    let counters = [early.counter(), late.counter(), live_after.counter()];
    let ordered = chain(vec![early, refuser, late, live_after]);
    let mut state = mail_state("a@example.org");
    let outcome = run(&ordered, &mut state).await;
    assert_eq!(outcome, Outcome::Reject(crate::smtp::Reply::enhanced(550, (5, 7, 1), "no")));
    assert_eq!(state.sender, mailbox("a@example.org"), "the shadow's edit did not take effect");
    assert_eq!(counters.each_ref().map(|c| count(c)), [1, 1, 0]);

    // A shadow's refusal or fault never ends a stage the live plugins continue.
    let naysayer = plugin("naysayer", &[Stage::Mail], rewrite).edits(&[EditKind::SetSender]).shadow();
    let faulty = plugin("faulty", &[Stage::Mail], |_, _| Err(Fault::new(FaultKind::Crash, "boom"))).shadow();
    let chain = chain(vec![naysayer, faulty.on_error(OnError::Reject)]);
    let mut state = mail_state("a@example.org");
    assert_eq!(run(&chain, &mut state).await, Outcome::Continue);
    assert_eq!(state.sender, mailbox("a@example.org"));
}

#[tokio::test]
async fn tempfail_and_disconnect_keep_the_plugins_reply() {
    let tempfail = chain(vec![plugin("t", &[Stage::Mail], |_, _| {
        answer(Verdict::Tempfail(reply(451, "4.7.1", "later")), vec![])
    })]);
    assert_eq!(
        run(&tempfail, &mut mail_state("a@example.org")).await,
        Outcome::Tempfail(crate::smtp::Reply::enhanced(451, (4, 7, 1), "later"))
    );
    let disconnect = chain(vec![plugin("d", &[Stage::Mail], |_, _| {
        answer(Verdict::Disconnect(reply(421, "4.7.0", "bye")), vec![])
    })]);
    assert_eq!(
        run(&disconnect, &mut mail_state("a@example.org")).await,
        Outcome::Disconnect(crate::smtp::Reply::enhanced(421, (4, 7, 0), "bye"))
    );
}

#[tokio::test]
async fn accept_skips_the_rest_of_its_stage_only() {
    let accepter = plugin("accepter", &[Stage::Mail], |_, _| answer(Verdict::Accept, vec![]));
    let later = plugin("later", &[Stage::Mail, Stage::Rcpt], |_, _| next());
    let later_calls = later.counter();
    let chain = chain(vec![accepter, later]);
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Continue);
    assert_eq!(count(&later_calls), 0, "accept skipped the rest of the mail stage");
    let mut rcpt = RcptState::new(mailbox("a@example.org"), vec![], mailbox("b@example.org"), false);
    assert_eq!(run(&chain, &mut rcpt).await, Outcome::Continue);
    assert_eq!(count(&later_calls), 1, "the next stage runs every plugin again");
}

#[tokio::test]
async fn a_plugin_is_called_only_at_the_stages_it_declares() {
    let data_only = plugin("data-only", &[Stage::Data], |_, _| panic!("called outside its stage"));
    let chain = chain(vec![data_only]);
    assert_eq!(run(&chain, &mut ConnectState).await, Outcome::Continue);
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Continue);
    assert!(chain.wants(Stage::Data) && !chain.wants(Stage::Mail));
}

#[tokio::test]
async fn later_plugins_see_earlier_edits() {
    let rewriter = plugin("rewriter", &[Stage::Mail, Stage::Data], |call, _| match call.input {
        StageInput::Mail { .. } => {
            answer(Verdict::Continue, vec![Edit::SetSender(Address::new("x@rewritten.example"))])
        }
        _ => answer(Verdict::Continue, vec![Edit::AddHeader(Header { name: "X-First".into(), value: "1".into() })]),
    })
    .edits(&[EditKind::SetSender, EditKind::AddHeader]);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let observer = plugin("observer", &[Stage::Mail, Stage::Data], move |call, _| {
        let what = match &call.input {
            StageInput::Mail { sender } => sender.mailbox.clone(),
            StageInput::Data { message, .. } => {
                let headers = message.headers.unwrap();
                headers.iter().map(|f| format!("{}: {}", f.name, f.value)).collect::<Vec<_>>().join("; ")
            }
            _ => unreachable!(),
        };
        record.lock().unwrap().push(what);
        next()
    });
    let chain = chain(vec![rewriter, observer]);
    let mut mail = mail_state("a@example.org");
    assert_eq!(run(&chain, &mut mail).await, Outcome::Continue);
    assert_eq!(mail.sender.as_str(), "x@rewritten.example");
    let mut data = data_state(MESSAGE);
    assert_eq!(run(&chain, &mut data).await, Outcome::Continue);
    assert_eq!(*seen.lock().unwrap(), ["x@rewritten.example", "From: a@example.org; Subject: hello; X-First: 1"]);
}

#[tokio::test]
async fn a_plugins_edits_apply_all_together_or_not_at_all() {
    let half_valid = plugin("half", &[Stage::Data], |_, _| {
        answer(
            Verdict::Continue,
            vec![
                Edit::AddHeader(Header { name: "X-Applied".into(), value: "1".into() }),
                Edit::SetSender(Address::new("b@example.org")),
                Edit::InsertHeader { index: 99, header: Header { name: "X-Bad".into(), value: "x".into() } },
            ],
        )
    })
    .edits(&[EditKind::AddHeader, EditKind::InsertHeader, EditKind::SetSender])
    .on_error(OnError::Continue);
    let chain = chain(vec![half_valid]);
    let mut data = data_state(MESSAGE);
    let before = data.headers.clone();
    assert_eq!(run(&chain, &mut data).await, Outcome::Continue, "on_error = continue");
    assert_eq!(data.headers, before, "the valid first edit was not applied either");
    assert_eq!(data.sender.as_str(), "a@example.org");
    assert!(!data.envelope_changed);
}

#[tokio::test]
async fn an_undeclared_edit_is_a_fault() {
    let sneaky = plugin("sneaky", &[Stage::Data], |_, _| {
        answer(Verdict::Continue, vec![Edit::AddHeader(Header { name: "X-Sneaky".into(), value: "1".into() })])
    });
    let sneaky = chain(vec![sneaky]);
    let mut data = data_state(MESSAGE);
    assert_eq!(run(&sneaky, &mut data).await, Outcome::Tempfail(replies::filter_tempfail(false)));
    assert!(!data.headers.find("X-Sneaky", 1));

    let wrong_stage = plugin("wrong-stage", &[Stage::Mail], |_, _| {
        answer(Verdict::Continue, vec![Edit::AddHeader(Header { name: "X".into(), value: "1".into() })])
    })
    .edits(&[EditKind::AddHeader]);
    let wrong_stage = chain(vec![wrong_stage]);
    assert_eq!(
        run(&wrong_stage, &mut mail_state("a@example.org")).await,
        Outcome::Tempfail(replies::filter_tempfail(false))
    );
}

#[tokio::test]
async fn an_invalid_reply_is_a_fault_not_a_reply() {
    let liar = plugin("liar", &[Stage::Mail], |_, _| {
        answer(Verdict::Reject(PluginReply { code: 250, enhanced: None, lines: vec!["ok".into()] }), vec![])
    })
    .on_error(OnError::Reject);
    let chain = chain(vec![liar]);
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Reject(replies::filter_reject(false)));
}

#[tokio::test]
async fn each_on_error_policy_decides_after_a_fault() {
    let faulty = |on_error| {
        plugin("faulty", &[Stage::Connect, Stage::Mail], |_, _| Err(Fault::new(FaultKind::Crash, "panic")))
            .on_error(on_error)
    };
    let cases = [
        (
            OnError::Tempfail,
            Outcome::Disconnect(replies::filter_tempfail(true)),
            Outcome::Tempfail(replies::filter_tempfail(false)),
        ),
        (
            OnError::Reject,
            Outcome::Reject(replies::filter_reject(true)),
            Outcome::Reject(replies::filter_reject(false)),
        ),
        (OnError::Continue, Outcome::Continue, Outcome::Continue),
    ];
    for (policy, at_connect, at_mail) in cases {
        let after = plugin("after", &[Stage::Mail], |_, _| next());
        let after_calls = after.counter();
        let chain = chain(vec![faulty(policy), after]);
        assert_eq!(run(&chain, &mut ConnectState).await, at_connect, "{policy:?} at connect");
        assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, at_mail, "{policy:?} at mail");
        let expected_after = usize::from(policy == OnError::Continue);
        assert_eq!(count(&after_calls), expected_after, "{policy:?}: later plugins run only when it continues");
    }
    assert_eq!(replies::filter_tempfail(true).code(), 421);
    assert_eq!(replies::filter_reject(true).code(), 554);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_opens_after_repeated_faults_and_closes_after_a_good_trial() {
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let state = healthy.clone();
    let flaky = plugin("flaky", &[Stage::Mail], move |_, _| {
        if state.load(Ordering::SeqCst) { next() } else { Err(Fault::new(FaultKind::Crash, "panic")) }
    })
    .breaker(2, Duration::from_secs(30));
    let calls = flaky.counter();
    let chain = chain(vec![flaky]);
    let tempfail = Outcome::Tempfail(replies::filter_tempfail(false));
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, tempfail);
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, tempfail);
    assert_eq!(count(&calls), 2);
    // Open: bypassed by its policy without being called, even though it would now succeed.
    healthy.store(true, Ordering::SeqCst);
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, tempfail);
    assert_eq!(count(&calls), 2, "an open breaker does not call the plugin");
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, tempfail);
    assert_eq!(count(&calls), 2, "still open before the cooldown ends");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Continue, "the trial succeeds");
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Continue, "and the breaker is closed");
    assert_eq!(count(&calls), 4);
}

#[tokio::test]
async fn notes_persist_per_scope_and_a_failed_call_writes_none() {
    let writer = plugin("writer", &[Stage::Connect, Stage::Mail], |call, host| {
        let seen = host.notes_get("seen").unwrap();
        match call.input {
            StageInput::Connect => host.notes_set("seen".into(), "connect".into()).unwrap(),
            _ => {
                assert_eq!(seen.as_deref(), Some("connect"), "session notes are visible in a transaction");
                host.notes_set("seen".into(), "mail".into()).unwrap();
                host.notes_set("broken".into(), "x".into()).unwrap();
                // The invalid reply makes the call a fault: none of its notes stay.
                return answer(Verdict::Reject(PluginReply { code: 200, enhanced: None, lines: vec![] }), vec![]);
            }
        }
        next()
    })
    .on_error(OnError::Continue);
    let chain = chain(vec![writer]);
    let mut session = Notes::default();
    let mut transaction = Notes::default();
    chain.run(&conn(), NoteScopes { session: &mut session, transaction: None }, &mut ConnectState).await;
    let scopes = NoteScopes { session: &mut session, transaction: Some(&mut transaction) };
    chain.run(&conn(), scopes, &mut mail_state("a@example.org")).await;
    let scopes = NoteScopes { session: &mut session, transaction: Some(&mut transaction) };
    let visible = scopes.visible_to("writer");
    assert_eq!(visible.get("seen").map(String::as_str), Some("connect"));
    assert!(!visible.contains_key("broken"));
}

#[tokio::test]
async fn data_plugins_see_only_the_body_access_they_declared() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let observer = |name: &str, body: BodyAccess| {
        let record = seen.clone();
        plugin(name, &[Stage::Data], move |call, _| {
            let StageInput::Data { message, .. } = &call.input else { unreachable!() };
            record.lock().unwrap().push((
                message.headers.map(|h| h.len()),
                message.body.map(<[u8]>::to_vec),
                message.body_truncated,
                message.size,
            ));
            next()
        })
        .body(body)
    };
    let mut cut = observer("cut", BodyAccess::Full);
    cut.config.limits.max_body = crate::config::ByteSize(2);
    let chain = chain(vec![
        observer("none", BodyAccess::None),
        observer("headers", BodyAccess::Headers),
        observer("full", BodyAccess::Full),
        cut,
    ]);
    assert_eq!(chain.max_body_needed(), 10 << 20);
    run(&chain, &mut data_state(MESSAGE)).await;
    let size = MESSAGE.len() as u64;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            (None, None, false, size),
            (Some(2), None, false, size),
            (Some(2), Some(b"body\r\n".to_vec()), false, size),
            (Some(2), Some(b"bo".to_vec()), true, size),
        ]
    );
}

fn data_edit(edit: Edit) -> Result<DataState, super::validate::Violation> {
    let config = PluginConfig::new("editor", "fake.wasm");
    let manifest = Manifest {
        name: "editor".into(),
        version: "1".into(),
        stages: vec![Stage::Data],
        body: BodyAccess::Full,
        edits: vec![],
    };
    let plugin =
        Plugin::new(&config, manifest, Box::new(Fake { script: Box::new(|_, _| next()), calls: Default::default() }))
            .unwrap();
    let mut state = data_state(MESSAGE);
    state.apply(edit, &plugin)?;
    Ok(state)
}

#[test]
fn envelope_edits_decide_whether_the_upstream_transaction_is_replayed() {
    let changed = |edit| data_edit(edit).unwrap().envelope_changed;
    assert!(changed(Edit::SetSender(Address::new("new@example.org"))));
    assert!(changed(Edit::AddRecipient(Address::new("d@example.org"))));
    assert!(changed(Edit::RemoveRecipient("c@example.org".into())));
    assert!(!changed(Edit::AddRecipient(Address::new("b@EXAMPLE.org"))), "already a recipient: nothing to replay");
    assert!(!changed(Edit::AddHeader(Header { name: "X".into(), value: "1".into() })));
    assert!(!changed(Edit::ReplaceBody(b"new\r\n".to_vec())));
    assert!(!changed(Edit::Quarantine("spam".into())));
    let removed = data_edit(Edit::RemoveRecipient("C@example.ORG".into()));
    assert!(removed.is_err(), "the local part is case-sensitive");
    let state = data_edit(Edit::RemoveRecipient("c@EXAMPLE.ORG".into())).unwrap();
    assert_eq!(state.recipients, [mailbox("b@example.org")]);
    let mut state = state;
    let plugin_config = PluginConfig::new("editor", "fake.wasm");
    let manifest =
        Manifest { name: "e".into(), version: "1".into(), stages: vec![], body: BodyAccess::None, edits: vec![] };
    let plugin = Plugin::new(
        &plugin_config,
        manifest,
        Box::new(Fake { script: Box::new(|_, _| next()), calls: Default::default() }),
    )
    .unwrap();
    assert_eq!(
        state.apply(Edit::RemoveRecipient("b@example.org".into()), &plugin),
        Err(super::validate::Violation::NoRecipientsLeft)
    );
}

#[test]
fn header_and_body_edits_change_the_message() {
    let state =
        data_edit(Edit::ChangeHeader { name: "subject".into(), occurrence: 1, value: "changed".into() }).unwrap();
    assert_eq!(state.headers.render(false), b"From: a@example.org\r\nSubject: changed\r\n\r\n");
    let state = data_edit(Edit::RemoveHeader { name: "FROM".into(), occurrence: 1 }).unwrap();
    assert_eq!(state.headers.render(false), b"Subject: hello\r\n\r\n");
    assert!(data_edit(Edit::RemoveHeader { name: "From".into(), occurrence: 2 }).is_err());
    let state = data_edit(Edit::ReplaceBody(b"new body\r\n".to_vec())).unwrap();
    assert_eq!(state.body_len(), 10);
    assert!(data_edit(Edit::ReplaceBody(b"bare\n".to_vec())).is_err());
    let state = data_edit(Edit::Quarantine("looks like spam".into())).unwrap();
    assert_eq!(state.quarantine, Some(("editor".into(), "looks like spam".to_string())));
}

#[tokio::test]
async fn rcpt_aliases_replace_the_recipient_and_each_is_relayed_once() {
    let aliaser = plugin("aliaser", &[Stage::Rcpt], |_, _| {
        answer(
            Verdict::Continue,
            vec![
                Edit::RemoveRecipient("team@example.org".into()),
                Edit::AddRecipient(Address::new("a@example.org")),
                Edit::AddRecipient(Address::new("b@example.org")),
                Edit::AddRecipient(Address::new("b@EXAMPLE.ORG")),
            ],
        )
    })
    .edits(&[EditKind::AddRecipient, EditKind::RemoveRecipient]);
    let chain = chain(vec![aliaser]);
    let mut rcpt = RcptState::new(mailbox("s@example.org"), vec![], mailbox("team@example.org"), false);
    assert_eq!(run(&chain, &mut rcpt).await, Outcome::Continue);
    assert_eq!(rcpt.to_relay(), [mailbox("a@example.org"), mailbox("b@example.org")]);

    let mut same = RcptState::new(mailbox("s@example.org"), vec![], mailbox("x@example.org"), false);
    same.added.push(mailbox("x@EXAMPLE.org"));
    assert_eq!(same.to_relay(), [mailbox("x@example.org")], "an alias equal to the recipient is relayed once");
}

#[tokio::test(start_paused = true)]
async fn a_call_that_never_returns_ends_at_its_budget() {
    let mut config = PluginConfig::new("sleeper", "fake.wasm");
    config.limits.time = Duration::from_millis(100);
    config.on_error = OnError::Tempfail;
    let manifest = Manifest {
        name: "sleeper".into(),
        version: "1".into(),
        stages: vec![Stage::Mail],
        body: BodyAccess::None,
        edits: vec![],
    };
    let chain = Chain::new(
        vec![Plugin::new(&config, manifest, Box::new(Hanging)).unwrap()],
        Arc::new(Kv::default()),
        Arc::default(),
    );
    let started = tokio::time::Instant::now();
    assert_eq!(run(&chain, &mut mail_state("a@example.org")).await, Outcome::Tempfail(replies::filter_tempfail(false)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(100) && took <= Duration::from_millis(110), "{took:?}");
}

#[tokio::test]
async fn busy_faults_do_not_feed_the_breaker() {
    let crowded = plugin("crowded", &[Stage::Mail], |_, _| Err(Fault::new(FaultKind::Busy, "no sandbox slot free")))
        .breaker(1, Duration::from_secs(60));
    let calls = crowded.counter();
    let chain = chain(vec![crowded]);
    for _ in 0..5 {
        assert_eq!(
            run(&chain, &mut mail_state("a@example.org")).await,
            Outcome::Tempfail(replies::filter_tempfail(false))
        );
    }
    assert_eq!(count(&calls), 5, "the breaker never opened: every call was tried");
}

#[tokio::test]
async fn answers_are_bounded() {
    let many_edits = plugin("many-edits", &[Stage::Data], |_, _| {
        let edit = Edit::AddHeader(Header { name: "X-Spam".into(), value: "1".into() });
        answer(Verdict::Continue, vec![edit; super::MAX_EDITS_PER_CALL + 1])
    })
    .edits(&[EditKind::AddHeader])
    .on_error(OnError::Continue);
    let chain1 = chain(vec![many_edits]);
    let mut data = data_state(MESSAGE);
    assert_eq!(run(&chain1, &mut data).await, Outcome::Continue);
    assert_eq!(data.headers.len(), 2, "none of the edits applied");

    let long_reply = plugin("long-reply", &[Stage::Mail], |_, _| {
        let lines = vec!["no".to_string(); super::validate::MAX_REPLY_LINES + 1];
        answer(Verdict::Reject(PluginReply { code: 550, enhanced: None, lines }), vec![])
    })
    .on_error(OnError::Reject);
    let chain2 = chain(vec![long_reply]);
    assert_eq!(run(&chain2, &mut mail_state("a@example.org")).await, Outcome::Reject(replies::filter_reject(false)));
}

#[tokio::test]
async fn a_full_answer_of_header_removals_applies_in_order() {
    let n = super::MAX_EDITS_PER_CALL;
    let mut message: Vec<u8> = (0..n).flat_map(|i| format!("X-Internal: {i}\r\n").into_bytes()).collect();
    message.extend_from_slice(b"Subject: kept\r\n\r\nbody\r\n");
    // As header-stamper does: from the last occurrence backwards.
    let stripper = plugin("stripper", &[Stage::Data], move |_, _| {
        let edits = (1..=n as u32).rev().map(|occurrence| Edit::RemoveHeader { name: "x-internal".into(), occurrence });
        answer(Verdict::Continue, edits.collect())
    })
    .edits(&[EditKind::RemoveHeader]);
    let chain = chain(vec![stripper]);
    let headers = HeaderSection::parse(&message, n + 1).unwrap();
    let body = Arc::new(b"body\r\n".to_vec());
    let mut state =
        DataState::new(mailbox("a@example.org"), vec![mailbox("b@example.org")], headers, body, 6, false, 1 << 30);
    assert_eq!(run(&chain, &mut state).await, Outcome::Continue);
    assert_eq!(state.headers.render(false), b"Subject: kept\r\n\r\n");
}
