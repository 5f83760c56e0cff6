//! Containment: every hostile fixture gets its plugin's `on_error` outcome within the time limit
//! (plus a margin), the proxy stays up, other sessions go on meanwhile, the fault is logged with
//! the plugin's name and kind, and the circuit breaker opens and closes.

use std::time::{Duration, Instant};

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

fn hostile(name: &str, behaviour: &str, time: Duration) -> wasmtp::config::PluginConfig {
    let mut p = plugin(name, wasm::HOSTILE, json!({"behaviour": behaviour}));
    p.limits.time = time;
    p
}

#[tokio::test]
async fn every_hostile_fixture_is_contained() {
    let logs = Logs::global();
    let limit = Duration::from_millis(300);
    let cases = [
        ("spin", "timeout"),
        ("alloc", "memory"),
        ("huge-edit", "memory"),
        ("recurse", "crash"),
        ("recurse-small", "crash"),
        ("panic", "crash"),
        ("invalid-reply", "invalid-answer"),
        ("crlf-reply", "invalid-answer"),
        ("crlf-rewrite", "invalid-answer"),
        ("host-loop", "host-call-budget"),
    ];
    let up = Recorder::start(Script::default()).await;
    let plugins = cases.iter().map(|(b, _)| hostile(&format!("hostile-{b}"), b, limit)).collect::<Vec<_>>();
    for (i, (behaviour, kind)) in cases.iter().enumerate() {
        // One proxy per fixture, the fixture alone in its chain.
        let proxy = TestProxy::start_with(with_plugins(vec![plugins[i].clone()]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        let started = Instant::now();
        let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
        let elapsed = started.elapsed();
        assert_eq!(r.lines, ["451 4.3.0 Temporary filter failure, try again later"], "{behaviour}");
        assert!(elapsed < limit + Duration::from_secs(2), "{behaviour}: took {elapsed:?}");
        if *behaviour == "spin" {
            assert!(elapsed >= limit, "{behaviour}: stopped before its limit ({elapsed:?})");
        }
        // The proxy is still there and the session still works.
        c.cmd("NOOP", 250).await;
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let logs = logs.text();
        let line = logs
            .lines()
            .find(|l| l.contains("plugin fault") && l.contains(&format!("plugin=hostile-{behaviour} ")))
            .unwrap_or_else(|| panic!("{behaviour}: no fault logged in\n{logs}"));
        assert!(line.contains(&format!("fault={kind}")), "{behaviour}: {line}");
        if *behaviour == "panic" {
            assert!(line.contains("hostile plugin panicked on purpose"), "stderr is logged: {line}");
        }
    }
    // Nothing a hostile plugin produced reached the upstream.
    assert!(up.commands().iter().all(|l| !l.contains("evil") && !l.contains("victim")));
    assert!(up.messages().is_empty());
}

#[tokio::test]
async fn other_sessions_go_on_while_a_plugin_spins() {
    let up = Recorder::start(Script::default()).await;
    // The spin's budget is what the other session must beat; under the full suite's load on
    // two cores its four round trips once took longer than 1.5 s, so it gets 3 s.
    let limit = Duration::from_secs(3);
    let proxy = TestProxy::start_with(with_plugins(vec![hostile("spinner", "spin", limit)]), &up.url()).await;
    let mut spinning = proxy.client().await;
    spinning.greet().await;
    let started = Instant::now();
    spinning.send("MAIL FROM:<a@example.org>\r\n").await;
    // While that call spins on this very thread, another client is served.
    let mut other = proxy.client().await;
    other.greet().await;
    other.cmd("NOOP", 250).await;
    other.cmd("MAIL FROM:<good@example.org>", 250).await;
    let other_done = started.elapsed();
    spinning.expect(451).await;
    assert!(other_done < limit, "the other session waited for the spinning plugin ({other_done:?})");
    other.cmd("QUIT", 221).await;
    spinning.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test]
async fn on_error_continue_and_reject() {
    let up = Recorder::start(Script::default()).await;
    let mut skip = hostile("skip", "panic", Duration::from_millis(300));
    skip.on_error = wasmtp::config::OnError::Continue;
    let proxy = TestProxy::start_with(with_plugins(vec![skip]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let mut refuse = hostile("refuse", "panic", Duration::from_millis(300));
    refuse.on_error = wasmtp::config::OnError::Reject;
    let proxy = TestProxy::start_with(with_plugins(vec![refuse]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<a@example.org>", 550).await;
    assert_eq!(r.lines, ["550 5.7.0 Refused by filter policy"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(start_paused = true)]
async fn the_circuit_breaker_opens_and_closes() {
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    let mut p = hostile("flaky", "panic", Duration::from_millis(300));
    p.breaker.failures = 2;
    p.breaker.cooldown = Duration::from_secs(30);
    let proxy = TestProxy::start_with(with_plugins(vec![p]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    // "good" senders pass this fixture; others make it panic.
    c.cmd("MAIL FROM:<good@example.org>", 250).await;
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<bad@example.org>", 451).await;
    c.cmd("MAIL FROM:<bad@example.org>", 451).await;
    assert!(logs.text().lines().any(|l| l.contains("circuit breaker opened") && l.contains("plugin=flaky")));
    // Open: the plugin is bypassed by its policy, even for a sender it would let through.
    c.cmd("MAIL FROM:<good@example.org>", 451).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    // After the cooldown a successful trial closes the breaker.
    c.cmd("MAIL FROM:<good@example.org>", 250).await;
    assert!(logs.text().lines().any(|l| l.contains("circuit breaker closed") && l.contains("plugin=flaky")));
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<bad@example.org>", 451).await;
    c.cmd("MAIL FROM:<good@example.org>", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test]
async fn chatty_stderr_is_bounded_and_harmless() {
    let up = Recorder::start(Script::default()).await;
    let proxy =
        TestProxy::start_with(with_plugins(vec![hostile("chatty", "stderr", Duration::from_millis(500))]), &up.url())
            .await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}
