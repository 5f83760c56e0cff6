//! Plugins at every stage, seen from outside: what the client hears and exactly what the
//! upstream receives. Uses the `scripted` fixture for the contract and the example plugins for
//! their own behaviour.

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

fn scripted(name: &str, config: serde_json::Value) -> wasmtp::config::PluginConfig {
    plugin(name, wasm::SCRIPTED, config)
}

/// One transaction through a proxy with `plugins`; returns the client and the recorder.
async fn proxy_with(plugins: Vec<wasmtp::config::PluginConfig>) -> (TestProxy, Recorder) {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(with_plugins(plugins), &up.url()).await;
    (proxy, up)
}

const MESSAGE: &[u8] = b"From: a@example.org\r\nSubject: hello\r\nX-Old: 1\r\n\r\nbody line\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verdicts_reach_the_client_with_code_enhanced_code_and_every_line() {
    for (stage, verdict, code) in [
        ("ehlo", "reject", 550),
        ("mail", "reject", 553),
        ("rcpt", "tempfail", 450),
        ("data", "reject", 554),
        ("mail", "disconnect", 421),
    ] {
        let config = json!({"stages": {stage: {"verdict": verdict, "code": code, "enhanced": format!("{}.7.{}", code / 100, 9), "lines": ["first line", "second line"]}}});
        let (proxy, up) = proxy_with(vec![scripted("s", config)]).await;
        let mut c = proxy.client().await;
        c.expect(220).await;
        let expected =
            vec![format!("{code}-{}.7.9 first line", code / 100), format!("{code} {}.7.9 second line", code / 100)];
        let reply = async |c: &mut Client, line: &str| {
            c.send(format!("{line}\r\n")).await;
            c.reply().await
        };
        let mut got = reply(&mut c, "EHLO client.example").await;
        if stage != "ehlo" {
            assert_eq!(got.code, 250);
            got = reply(&mut c, "MAIL FROM:<a@example.org>").await;
        }
        if !matches!(stage, "ehlo" | "mail") {
            assert_eq!(got.code, 250);
            got = reply(&mut c, "RCPT TO:<b@example.net>").await;
        }
        if stage == "data" {
            assert_eq!(got.code, 250);
            c.cmd("DATA", 354).await;
            c.send(stuff(MESSAGE)).await;
            got = c.reply().await;
        }
        assert_eq!(got.lines, expected, "{stage} {verdict}");
        if verdict == "disconnect" {
            c.closed().await;
        } else {
            c.cmd("QUIT", 221).await;
        }
        proxy.stop().await;
        assert!(up.messages().is_empty(), "{stage} {verdict}: nothing relayed");
        assert!(!up.commands().iter().any(|l| l.starts_with("DATA")), "{stage} {verdict}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reject_gives_554_and_503_to_all_but_quit() {
    let config =
        json!({"stages": {"connect": {"verdict": "reject", "code": 550, "enhanced": "5.7.1", "lines": ["go away"]}}});
    let (proxy, _up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    let greeting = c.expect(554).await;
    assert_eq!(greeting.lines, ["554 5.7.1 go away"]);
    c.cmd("EHLO client.example", 503).await;
    c.cmd("MAIL FROM:<a@example.org>", 503).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_and_accept_relay_as_normal() {
    let config = json!({"stages": {"mail": {"verdict": "accept"}, "rcpt": {"verdict": "continue"}, "data": {"verdict": "accept"}}});
    let (proxy, up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(MESSAGE)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert_eq!(strip_our_received(&up.messages()[0].wire), &stuff(MESSAGE)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_and_message_edits_reach_the_upstream_exactly() {
    let config = json!({
        "manifest": {"stages": ["mail", "rcpt", "data"], "body": "full",
                     "edits": ["set-sender", "add-recipient", "remove-recipient", "add-header", "insert-header",
                               "change-header", "remove-header", "replace-body"]},
        "stages": {
            "mail": {"edits": [{"set-sender": "rewritten@example.org"}]},
            "rcpt": {"edits": [{"remove-recipient": "alias@example.net"}, {"add-recipient": "real1@example.net"}, {"add-recipient": "real2@example.net"}]},
            "data": {"edits": [
                {"insert-header": [0, "X-First", "inserted"]},
                {"change-header": ["Subject", 1, "changed"]},
                {"remove-header": ["X-Old", 1]},
                {"add-header": ["X-Last", "appended"]},
                {"replace-body": "new body\r\n"}
            ]}
        }
    });
    let (proxy, up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("orig@example.org", &["alias@example.net"], &stuff(MESSAGE)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let m = &up.messages()[0];
    assert_eq!(m.mail_from, "MAIL FROM:<rewritten@example.org>");
    assert_eq!(m.rcpts, ["RCPT TO:<real1@example.net>", "RCPT TO:<real2@example.net>"]);
    assert_eq!(
        strip_our_received(&m.wire),
        b"X-First: inserted\r\nFrom: a@example.org\r\nSubject: changed\r\nX-Last: appended\r\n\r\nnew body\r\n.\r\n"
    );
    assert!(!up.commands().iter().any(|l| l.contains("alias@")), "the removed recipient never went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envelope_edits_at_data_replay_mail_and_rcpt_upstream() {
    let config = json!({
        "manifest": {"stages": ["data"], "edits": ["set-sender", "add-recipient", "remove-recipient"]},
        "stages": {"data": {"edits": [
            {"set-sender": "bounces@example.org"},
            {"remove-recipient": "b@example.net"},
            {"add-recipient": "c@example.net"}
        ]}}
    });
    let (proxy, up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.net", "d@example.net"], &stuff(MESSAGE)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let commands = up.commands();
    let replay = commands.iter().position(|l| l == "RSET").expect("upstream transaction reset");
    assert_eq!(
        commands[replay..replay + 5],
        ["RSET", "MAIL FROM:<bounces@example.org>", "RCPT TO:<d@example.net>", "RCPT TO:<c@example.net>", "DATA"]
    );
    let m = &up.messages()[0];
    assert_eq!(m.rcpts, ["RCPT TO:<d@example.net>", "RCPT TO:<c@example.net>"]);
    assert_eq!(strip_our_received(&m.wire), &stuff(MESSAGE)[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_order_merge_rules_and_edit_visibility() {
    // A changes the subject; B sees A's edit (its echo header says so).
    let a = scripted(
        "a",
        json!({
            "manifest": {"name": "a", "stages": ["data"], "body": "headers", "edits": ["change-header"]},
            "stages": {"data": {"edits": [{"change-header": ["Subject", 1, "changed by a"]}]}}
        }),
    );
    let b = scripted(
        "b",
        json!({
            "manifest": {"name": "b", "stages": ["mail", "data"], "body": "full"},
            "stages": {"data": {"echo_header": true}}
        }),
    );
    let (proxy, up) = proxy_with(vec![a, b]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("s@example.org", &["r@example.net"], &stuff(MESSAGE)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let wire = String::from_utf8(up.messages()[0].wire.clone()).unwrap();
    assert!(wire.contains("Subject: changed by a\r\n"), "{wire}");
    assert!(
        wire.contains(
            "X-Scripted-Seen: b saw subject=changed by a headers=3 body=11 rcpts=r@example.net sender=s@example.org\r\n"
        ),
        "{wire}"
    );

    // accept skips the rest of its stage only; the first reject ends a stage.
    let a = scripted(
        "a",
        json!({"manifest": {"stages": ["mail", "rcpt"]}, "stages": {"mail": {"verdict": "accept"}, "rcpt": {"verdict": "reject", "code": 550, "lines": ["a says no"]}}}),
    );
    let b = scripted(
        "b",
        json!({"manifest": {"stages": ["mail", "rcpt"]}, "stages": {"mail": {"verdict": "reject", "lines": ["b rejects mail"]}, "rcpt": {"verdict": "tempfail", "lines": ["b tempfails"]}}}),
    );
    let (proxy, _up) = proxy_with(vec![a, b]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<s@example.org>", 250).await; // a accepted: b's reject never ran
    let r = c.cmd("RCPT TO:<r@example.net>", 550).await; // a rejected first: b never ran
    assert_eq!(r.lines, ["550 5.0.0 a says no"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_is_enforced() {
    // Undeclared stage: the rejecting mail entry is never called.
    let config = json!({"manifest": {"stages": ["data"]}, "stages": {"mail": {"verdict": "reject"}}});
    let (proxy, _up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    // Undeclared edit: a fault, handled by on_error (tempfail by default); nothing relayed.
    let config = json!({"manifest": {"stages": ["data"], "edits": []}, "stages": {"data": {"edits": [{"add-header": ["X-Sneaky", "1"]}]}}});
    let (proxy, up) = proxy_with(vec![scripted("s", config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.send_mail("a@example.org", &["b@example.net"], &stuff(MESSAGE)).await;
    assert_eq!(r.lines, ["451 4.3.0 Temporary filter failure, try again later"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert!(up.messages().is_empty());

    // An edit kind that is declared but not allowed at the stage is a fault too.
    let config = json!({"manifest": {"stages": ["mail"], "edits": ["add-header"]}, "stages": {"mail": {"edits": [{"add-header": ["X", "1"]}]}}});
    let mut p = scripted("s", config);
    p.on_error = wasmtp::config::OnError::Reject;
    let (proxy, _up) = proxy_with(vec![p]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<a@example.org>", 550).await;
    assert!(r.text().contains("5.7.0"), "{r:?}");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_delivers_to_the_quarantine_maildir_not_upstream() {
    let quarantine = tempfile::tempdir().unwrap();
    let config = json!({"manifest": {"stages": ["data"], "edits": ["quarantine"]}, "stages": {"data": {"edits": [{"quarantine": "looks odd"}]}}});
    let mut config_all = with_plugins(vec![scripted("q", config)]);
    config_all.sandbox.quarantine = quarantine.path().to_path_buf();
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(config_all, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.send_mail("a@example.org", &["b@example.net"], &stuff(MESSAGE)).await;
    assert_eq!(r.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert!(up.messages().is_empty());
    assert!(!up.commands().iter().any(|l| l == "DATA"));
    let files: Vec<_> = std::fs::read_dir(quarantine.path().join("new")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    let stored = String::from_utf8(std::fs::read(&files[0]).unwrap()).unwrap();
    assert!(stored.contains("X-Wasmtp-Quarantine: q: looks odd\n"), "{stored}");
    assert!(stored.ends_with("Subject: hello\nX-Old: 1\n\nbody line\n"), "{stored}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_example_behaves_as_documented() {
    let (proxy, up) = proxy_with(vec![plugin("bouncer", wasm::SDK_EXAMPLE, json!({}))]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<x@spam.example>", 550).await;
    assert_eq!(r.lines, ["550 5.7.1 Mail from spam.example is refused"]);
    assert_eq!(c.send_mail("ok@example.org", &["b@example.net"], &stuff(MESSAGE)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let wire = strip_our_received(&up.messages()[0].wire).to_vec();
    assert_eq!(
        wire,
        b"From: a@example.org\r\nSubject: hello\r\nX-Old: 1\r\nX-Bouncer: checked hello\r\n\r\nbody line\r\n.\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_compile_cache_skips_compilation() {
    let cache = tempfile::tempdir().unwrap();
    let mut config = with_plugins(vec![plugin("stamper", wasm::HEADER_STAMPER, json!({}))]);
    config.sandbox.cache_dir = Some(cache.path().to_path_buf());
    let (_, cold) = wasmtp::wasm::load(&config).await.unwrap();
    assert_eq!(cold.plugins[0].origin, wasmtp::wasm::cache::Origin::Compiled);
    let (_, warm) = wasmtp::wasm::load(&config).await.unwrap();
    assert_eq!(warm.plugins[0].origin, wasmtp::wasm::cache::Origin::Cache);
    // A damaged cache entry is recompiled, not trusted.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        std::fs::write(entry.unwrap().path(), b"garbage").unwrap();
    }
    let (_, again) = wasmtp::wasm::load(&config).await.unwrap();
    assert_eq!(again.plugins[0].origin, wasmtp::wasm::cache::Origin::Compiled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_that_cannot_load_stops_the_start_with_its_name() {
    let mut config = with_plugins(vec![plugin("broken", "/nonexistent/plugin.wasm", json!({}))]);
    config.sandbox.cache_dir = Some(shared_compile_cache());
    let err = wasmtp::wasm::load(&config).await.unwrap_err();
    assert!(format!("{err:#}").contains("plugin `broken`"), "{err:#}");
}
