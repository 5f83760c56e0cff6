//! Bounded work: no plugin and no client can make the proxy do unbounded work, hold the
//! sandbox pool, grow without bound or flood the log; an upstream out of step is dropped.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

fn hostile(name: &str, behaviour: &str, stage: &str, time: Duration) -> wasmtp::config::PluginConfig {
    let mut p = plugin(name, wasm::HOSTILE, json!({"behaviour": behaviour, "stages": [stage]}));
    p.limits.time = time;
    p.limits.data_time = time;
    p
}

/// The log lines naming `plugin`.
fn lines_of(logs: &Logs, plugin: &str) -> Vec<String> {
    let display = format!("plugin={plugin} ");
    let debug = format!("plugin=\"{plugin}\"");
    logs.text().lines().filter(|l| l.contains(&display) || l.contains(&debug)).map(String::from).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_blocked_in_a_wasi_call_is_stopped_at_its_budget() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let budget = Duration::from_millis(100);
    for behaviour in ["sleep", "block"] {
        let name = format!("blocked-{behaviour}");
        let proxy =
            TestProxy::start_with(with_plugins(vec![hostile(&name, behaviour, "mail", budget)]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        let started = Instant::now();
        let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
        let took = started.elapsed();
        assert_eq!(r.lines, ["451 4.3.0 Temporary filter failure, try again later"]);
        assert!(took >= budget && took < budget + Duration::from_millis(100), "{behaviour}: {took:?}");
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let faults: Vec<_> = lines_of(&logs, &name).into_iter().filter(|l| l.contains("plugin fault")).collect();
        assert!(faults.iter().any(|l| l.contains("fault=timeout")), "{behaviour}: {faults:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_plugin_cannot_starve_another() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let mut sleeper = hostile("pool-hog", "sleep", "mail", Duration::from_millis(100));
    sleeper.on_error = wasmtp::config::OnError::Continue;
    sleeper.breaker.failures = u32::MAX;
    let neighbour = hostile("good-neighbour", "ok", "mail", Duration::from_millis(500));
    let proxy = TestProxy::start_with(with_plugins(vec![sleeper, neighbour]), &up.url()).await;
    let sessions: Vec<_> = (0..200)
        .map(|i| {
            let addr = proxy.addr;
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.greet().await;
                let r = c.cmd(&format!("MAIL FROM:<sender{i}@example.org>"), 250).await;
                c.cmd("QUIT", 221).await;
                r.code
            })
        })
        .collect();
    for session in sessions {
        assert_eq!(tokio::time::timeout(WAIT, session).await.unwrap().unwrap(), 250);
    }
    proxy.stop().await;
    let neighbour = lines_of(&logs, "good-neighbour");
    assert!(
        !neighbour.iter().any(|l| l.contains("plugin fault") || l.contains("circuit breaker")),
        "the well-behaved plugin was hurt: {neighbour:?}"
    );
    let hog = lines_of(&logs, "pool-hog");
    assert!(hog.iter().any(|l| l.contains("fault=timeout")), "{hog:?}");
}

/// A message with `n` `X-Internal:` fields and a short body, CRLF, dot-stuffed for the wire.
fn many_fields(n: usize) -> Vec<u8> {
    let mut m: Vec<u8> = (0..n).flat_map(|i| format!("X-Internal: {i}\r\n").into_bytes()).collect();
    m.extend_from_slice(b"Subject: fields\r\n\r\nbody\r\n");
    stuff(&m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_section_of_80000_fields_is_refused_in_bounded_time() {
    let up = Recorder::start(Script::default()).await;
    let stamper = plugin("stamper", wasm::HEADER_STAMPER, json!({"remove": ["X-Internal"]}));
    let proxy = TestProxy::start_with(with_plugins(vec![stamper]), &up.url()).await;
    // Another session keeps its latency meanwhile.
    let mut other = proxy.client().await;
    other.greet().await;

    let mut c = proxy.client().await;
    c.greet().await;
    let started = Instant::now();
    let r = c.send_mail("a@example.org", &["b@example.org"], &many_fields(80_000)).await;
    let took = started.elapsed();
    assert_eq!(r.lines, ["552 5.3.4 Too many header fields"]);
    assert!(took < Duration::from_secs(5), "{took:?}");
    let ping = Instant::now();
    other.cmd("NOOP", 250).await;
    assert!(ping.elapsed() < Duration::from_millis(500), "{:?}", ping.elapsed());

    // Just under the cap the plugin's 999 removals apply.
    c.cmd("RSET", 250).await;
    let started = Instant::now();
    let r = c.send_mail("a@example.org", &["b@example.org"], &many_fields(999)).await;
    assert_eq!(r.code, 250, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    let relayed = up.messages().pop().expect("relayed");
    assert!(!String::from_utf8_lossy(&relayed.wire).contains("X-Internal"));
    c.cmd("QUIT", 221).await;
    other.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_answers_are_faults_within_the_budget() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let mut edits = plugin(
        "edit-flood",
        wasm::HOSTILE,
        json!({"behaviour": "many-edits", "stages": ["data"], "edits": ["insert-header"]}),
    );
    edits.limits.data_time = Duration::from_secs(1);
    edits.limits.memory = wasmtp::config::ByteSize(64 << 20);
    let lines = hostile("line-flood", "many-lines", "mail", Duration::from_millis(500));
    let proxy = TestProxy::start_with(with_plugins(vec![edits, lines]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
    assert_eq!(r.lines.len(), 1, "20 000 lines never reach the client");
    c.cmd("MAIL FROM:<good@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.org>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(stuff(b"Subject: x\r\n\r\nbody\r\n")).await;
    let started = Instant::now();
    let r = c.expect(451).await;
    assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
    assert_eq!(r.lines, ["451 4.3.0 Temporary filter failure, try again later"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    for plugin in ["edit-flood", "line-flood"] {
        let faults = lines_of(&logs, plugin);
        assert!(faults.iter().any(|l| l.contains("fault=invalid-answer")), "{plugin}: {faults:?}");
    }
    assert!(up.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_log_output_is_capped_per_call() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(
        with_plugins(vec![hostile("spammer", "log-spam", "mail", Duration::from_secs(2))]),
        &up.url(),
    )
    .await;
    let mut c = proxy.client().await;
    c.greet().await;
    for _ in 0..3 {
        c.cmd("MAIL FROM:<a@example.org>", 250).await;
        c.cmd("RSET", 250).await;
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let lines = lines_of(&logs, "spammer");
    let spam = lines.iter().filter(|l| l.contains("ssssssssss")).count();
    let summaries = lines.iter().filter(|l| l.contains("over its per-call limit was dropped")).count();
    assert_eq!(spam as u64, 3 * wasmtp::filter::host::MAX_LOG_LINES, "4000 lines per call were written: {spam}");
    assert_eq!(summaries, 3, "{lines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_session_notes_are_bounded() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let mut hog = hostile("note-hog", "note-hog", "ehlo", Duration::from_millis(500));
    hog.on_error = wasmtp::config::OnError::Continue;
    hog.breaker.failures = u32::MAX;
    let proxy = TestProxy::start_with(with_plugins(vec![hog]), &up.url()).await;
    let mut c = proxy.client().await;
    c.expect(220).await;
    for _ in 0..20 {
        c.cmd("EHLO client.example", 250).await;
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let faults: Vec<_> = lines_of(&logs, "note-hog").into_iter().filter(|l| l.contains("plugin fault")).collect();
    // 64 KiB per session: the first 60 KiB note fits, every later one is refused.
    assert_eq!(faults.len(), 10, "faults are logged at most 10 per window: {faults:?}");
    assert!(faults.iter().all(|l| l.contains("fault=host-call-budget")), "{faults:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_address_cannot_take_every_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = wasmtp::Config::default();
    config.server.max_connections_per_ip = 5;
    config.server.connection_limit_exempt = vec![];
    let proxy = TestProxy::start_with(config, &format!("maildir:{}", dir.path().display())).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut c = proxy.client().await;
        c.greet().await;
        held.push(c);
    }
    let mut refused = proxy.client().await;
    let r = refused.expect(421).await;
    assert_eq!(r.lines, ["421 4.7.0 Too many connections from your address, try again later"]);
    refused.closed().await;
    let mut first = held.remove(0);
    first.cmd("QUIT", 221).await;
    first.closed().await;
    let mut again = proxy.client().await;
    again.greet().await;
    again.cmd("QUIT", 221).await;
    for mut c in held {
        c.cmd("QUIT", 221).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_out_of_step_is_a_protocol_error_and_never_pooled() {
    // 354 to MAIL, with control characters: never relayed raw.
    let up = Recorder::start(Script { mail: Some(Fault::Reply("354 \x1b[31mred\x07")), ..Default::default() }).await;
    let proxy = TestProxy::start(crate::upstream_faults::FAST, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
    assert_eq!(r.lines, ["451 4.5.0 Upstream protocol error, try again later"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    // 354 and 250 in one write: the client never hears the 250 the upstream did not mean.
    let up = Recorder::start(Script { data: Some(Fault::Reply("354 go ahead\r\n250 2.0.0 Ok")), ..Default::default() })
        .await;
    let proxy = TestProxy::start(crate::upstream_faults::FAST, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.org>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(stuff(b"Subject: x\r\n\r\nbody\r\n")).await;
    assert_eq!(c.reply().await.code, 451);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    // An extra line after MAIL's reply, on a pooled connection: the next session gets a
    // connection of its own, not the stale line as its answer.
    let up =
        Recorder::start(Script { mail: Some(Fault::Reply("250 2.1.0 Ok\r\n250 2.1.0 stale")), ..Default::default() })
            .await;
    let proxy = TestProxy::start_pooled(wasmtp::Config::parse(crate::upstream_faults::FAST).unwrap(), &up.url()).await;
    for _ in 0..2 {
        let mut c = proxy.client().await;
        c.greet().await;
        c.cmd("MAIL FROM:<a@example.org>", 451).await;
        c.cmd("QUIT", 221).await;
        c.closed().await;
    }
    proxy.stop().await;
    assert_eq!(up.connections(), 3, "the probe, then one fresh connection per session");
}

#[tokio::test(start_paused = true)]
async fn shutdown_while_the_upstream_holds_the_message_relays_its_answer() {
    let up = Recorder::start(Script {
        end_of_data: Some(Fault::After(Duration::from_secs(100), "250 2.0.0 Ok: queued late")),
        ..Default::default()
    })
    .await;
    let proxy = TestProxy::start("[timeouts]\nshutdown_grace = \"1s\"\n", &up.url()).await;
    let mut proxy = proxy;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.org>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(stuff(b"Subject: late\r\n\r\nbody\r\n")).await;
    up.saw_command("DATA").await;
    proxy.begin_shutdown();
    let r = c.reply_within(Duration::from_secs(3600)).await.expect("the upstream's answer");
    assert_eq!(r.lines, ["250 2.0.0 Ok: queued late"]);
    c.closed().await;
    proxy.join().await;
}
