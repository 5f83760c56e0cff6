//! Plugins in any language, as their authors meet them: the Python and JavaScript example
//! plugins (built from source by scripts/build-polyglot with the pinned componentize-py and
//! componentize-js) load with no composition step and behave like the Rust one; what they may
//! not do is denied without hurting the host; a configuration the plugin refuses stops the
//! start with the plugin's own message; a 0.1.0 plugin still runs; and guest failures are
//! logged with what the guest said and where it was.

use std::time::Duration;

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

/// The interpreted plugins take seconds to compile: the tests here run one at a time, and the
/// first compiles all of them into the shared cache (so no proxy of a test keeps its client
/// waiting for a greeting while it compiles).
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    static COMPILED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    let guard = LOCK.lock().await;
    COMPILED
        .get_or_init(async || {
            for path in [wasm::EXTERNAL_TAGGER_PY, wasm::EXTERNAL_TAGGER_JS, wasm::PROBE_PY, wasm::PROBE_JS] {
                let started = std::time::Instant::now();
                // Compiling fills the cache whatever `init` then says of the empty config.
                let _ = wasmtp::wasm::load(&cached(vec![plugin("warm-up", path, json!({"mode": "raise"}))])).await;
                eprintln!("compiled {path} in {:?}", started.elapsed());
            }
        })
        .await;
    guard
}

fn tagger(name: &str, path: &str) -> wasmtp::config::PluginConfig {
    let config = json!({"internal_domains": ["example.org"], "reject_recipients": ["blocked@example.net"]});
    plugin(name, path, config)
}

/// A configuration with these plugins and the test run's compile cache, for loading them
/// without a proxy.
fn cached(plugins: Vec<wasmtp::config::PluginConfig>) -> wasmtp::Config {
    let mut config = with_plugins(plugins);
    config.sandbox.cache_dir = Some(shared_compile_cache());
    config
}

/// The three taggers, by language.
const TAGGERS: [(&str, &str); 3] =
    [("rust", wasm::EXTERNAL_TAGGER), ("python", wasm::EXTERNAL_TAGGER_PY), ("js", wasm::EXTERNAL_TAGGER_JS)];

fn message(subject: &str) -> Vec<u8> {
    stuff(format!("From: someone\r\nSubject: {subject}\r\n\r\nbody\r\n").as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_taggers_behave_like_the_rust_one() {
    let _serial = one_at_a_time().await;
    for (language, path) in TAGGERS {
        let up = Recorder::start(Script::default()).await;
        let proxy = TestProxy::start_with(with_plugins(vec![tagger(language, path)]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        // External sender: the refused recipient gets the plugin's reply, the message is tagged.
        c.cmd("MAIL FROM:<outsider@elsewhere.example>", 250).await;
        let refused = c.cmd("RCPT TO:<Blocked@Example.NET>", 550).await;
        assert_eq!(refused.lines, ["550 5.7.1 recipient refused by policy"], "{language}");
        c.cmd("RCPT TO:<ok@example.net>", 250).await;
        c.cmd("DATA", 354).await;
        c.send(message("hello")).await;
        assert_eq!(c.reply().await.code, 250, "{language}");
        // Internal sender: untouched.
        assert_eq!(c.send_mail("colleague@EXAMPLE.org", &["ok@example.net"], &message("hi")).await.code, 250);
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let messages = up.messages();
        assert_eq!(messages.len(), 2, "{language}");
        let external = String::from_utf8_lossy(strip_our_received(&unstuff(&messages[0].wire))).into_owned();
        assert_eq!(messages[0].rcpts, ["RCPT TO:<ok@example.net>"], "{language}");
        assert!(external.contains("\r\nSubject: [EXTERNAL] hello\r\n"), "{language}: {external}");
        assert!(external.contains("\r\nX-External-Sender: yes\r\n"), "{language}: {external}");
        let internal = String::from_utf8_lossy(strip_our_received(&unstuff(&messages[1].wire))).into_owned();
        assert!(internal.contains("\r\nSubject: hi\r\n") && !internal.contains("X-External"), "{language}: {internal}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_sessions_through_a_python_plugin_get_no_451() {
    let _serial = one_at_a_time().await;
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    // The budgets are the test's, not the pool's: 50 interpreted calls at once on two cores,
    // in an unoptimised host, share the CPU for longer than the 100 ms default.
    let mut python = tagger("python-50", wasm::EXTERNAL_TAGGER_PY);
    python.limits.time = Duration::from_secs(5);
    python.limits.data_time = Duration::from_secs(5);
    let plugins = vec![python];
    let proxy = TestProxy::start_with(with_plugins(plugins), &up.url()).await;
    let mut sessions = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut c = proxy.client().await;
        sessions.spawn(async move {
            c.greet().await;
            c.cmd(&format!("MAIL FROM:<sender{i}@outside.example>"), 250).await;
            c.send("RCPT TO:<ok@example.net>\r\n").await;
            let rcpt = c.reply().await;
            if rcpt.code != 250 {
                return rcpt;
            }
            c.cmd("DATA", 354).await;
            c.send(message(&format!("concurrent {i}"))).await;
            let reply = c.reply().await;
            c.cmd("QUIT", 221).await;
            reply
        });
    }
    let mut replies = Vec::new();
    while let Some(reply) = sessions.join_next().await {
        replies.push(reply.unwrap());
    }
    proxy.stop().await;
    let faults: Vec<String> =
        logs.text().lines().filter(|l| l.contains("plugin=python-50 ")).map(str::to_string).collect();
    assert!(replies.iter().all(|r| r.code == 250), "{replies:?}\n{}", faults.join("\n"));
    assert_eq!(up.messages().len(), 50);
    assert!(up.messages().iter().all(|m| String::from_utf8_lossy(&m.wire).contains("Subject: [EXTERNAL] concurrent")));
}

fn probe(name: &str, path: &str, mode: &str) -> wasmtp::config::PluginConfig {
    let mut p = plugin(name, path, json!({"mode": mode}));
    p.limits.data_time = Duration::from_secs(10);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sockets_and_http_are_denied_and_the_message_follows_the_plugin() {
    let _serial = one_at_a_time().await;
    let logs = Logs::global();
    let up = Recorder::start(Script::default()).await;
    // Python sees each denial as an exception it can catch, and says so in a header.
    for mode in ["file", "socket", "http"] {
        let name = format!("probe-py-{mode}");
        let proxy = TestProxy::start_with(with_plugins(vec![probe(&name, wasm::PROBE_PY, mode)]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &message(mode)).await.code, 250, "{mode}");
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let got = String::from_utf8_lossy(&up.messages().last().unwrap().wire).into_owned();
        let probe = got.lines().find(|l| l.starts_with("X-Probe:")).unwrap_or_else(|| panic!("{mode}: {got}"));
        assert!(probe.starts_with(&format!("X-Probe: {mode} denied")), "{mode}: {probe}");
    }
    // componentize-js turns a `fetch` it was built without into a trap: a fault, handled by
    // the plugin's on_error policy, and the host goes on.
    let mut js = probe("probe-js-http", wasm::PROBE_JS, "http");
    js.on_error = wasmtp::config::OnError::Continue;
    let proxy = TestProxy::start_with(with_plugins(vec![js]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &message("js")).await.code, 250);
    c.cmd("NOOP", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("plugin fault") && l.contains("plugin=probe-js-http ") && l.contains("fault=crash")),
        "{text}"
    );
    assert!(!String::from_utf8_lossy(&up.messages().last().unwrap().wire).contains("X-Probe"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_plugin_config_stops_check_config_and_serve_with_the_plugins_message() {
    let _serial = one_at_a_time().await;
    // A Rust plugin (typed config with deny_unknown_fields) through the real binary.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    let text = format!(
        "[sandbox]\ncache_dir = {:?}\n[[plugins]]\nname = \"guard\"\npath = {:?}\n[plugins.config]\nforbidden_extensionz = [\"exe\"]\n",
        dir.path().join("cache"),
        wasm::CONTENT_GUARD
    );
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    for args in [vec!["check-config", path], vec!["serve", "--config", path, "--listen", "127.0.0.1:0"]] {
        let command = args[0];
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtp")).args(&args).output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{command}: {err}");
        assert!(err.contains("plugin `guard` (field `plugins[0]`"), "{command}: {err}");
        assert!(
            err.contains("the plugin refused its configuration")
                && err.contains("unknown field `forbidden_extensionz`"),
            "{command}: {err}"
        );
    }
    // The Python and JavaScript helpers check their plugin's settings the same way.
    for (name, path) in [("python", wasm::EXTERNAL_TAGGER_PY), ("js", wasm::EXTERNAL_TAGGER_JS)] {
        let p = plugin(name, path, json!({"internal_domainz": ["example.org"]}));
        let Err(err) = wasmtp::wasm::load(&cached(vec![p])).await else { panic!("{name}: loaded") };
        let err = format!("{err:#}");
        assert!(err.contains(&format!("plugin `{name}`")) && err.contains("internal_domainz"), "{name}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_for_contract_0_1_still_loads_and_runs() {
    let _serial = one_at_a_time().await;
    let p = plugin("legacy", wasm::LEGACY_V0_1, json!({}));
    let (_chain, loaded) = wasmtp::wasm::load(&cached(vec![p.clone()])).await.unwrap();
    assert_eq!(loaded.plugins[0].contract, "0.1.0");
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(with_plugins(vec![p]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    for i in 1..=2 {
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &message("old")).await.code, 250);
        let got = String::from_utf8_lossy(&up.messages().last().unwrap().wire).into_owned();
        assert!(got.contains(&format!("X-Legacy: 0.1 message {i}\r\n")), "{got}");
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test]
async fn every_import_the_host_lacks_is_named_at_once() {
    let _serial = one_at_a_time().await;
    let p = plugin("strange", wasm::UNKNOWN_IMPORTS, json!({}));
    let Err(err) = wasmtp::wasm::load(&cached(vec![p])).await else { panic!("loaded") };
    let err = format!("{err:#}");
    assert!(err.contains("imports 2 interfaces this host does not provide"), "{err}");
    assert!(err.contains("`example:strange/first`") && err.contains("`example:strange/second`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_timeouts_panics_and_exceptions_are_logged_with_where_the_guest_was() {
    let _serial = one_at_a_time().await;
    let logs = Logs::global();
    let hostile = |behaviour: &str| {
        let mut p = plugin(&format!("bt-{behaviour}"), wasm::HOSTILE, json!({"behaviour": behaviour}));
        p.limits.time = Duration::from_millis(200);
        p
    };
    let up = Recorder::start(Script::default()).await;
    for (behaviour, kind, frame) in
        [("trap", "crash", "trap_here"), ("spin", "timeout", "spin_forever"), ("panic", "crash", "hostile::act")]
    {
        let proxy = TestProxy::start_with(with_plugins(vec![hostile(behaviour)]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        c.cmd("MAIL FROM:<a@example.org>", 451).await;
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let text = logs.text();
        let line = text
            .lines()
            .find(|l| l.contains("plugin fault") && l.contains(&format!("plugin=bt-{behaviour} ")))
            .unwrap_or_else(|| panic!("{behaviour}: no fault logged in\n{text}"));
        assert!(line.contains(&format!("fault={kind}")), "{behaviour}: {line}");
        let backtrace = line.split("backtrace=").nth(1).unwrap_or("");
        assert!(backtrace.contains(frame), "{behaviour}: the backtrace names {frame}: {line}");
        if behaviour == "panic" {
            assert!(
                line.contains("panic: hostile plugin panicked on purpose (at fixtures/hostile/src/lib.rs:"),
                "{line}"
            );
            assert!(!line.contains("RUST_BACKTRACE"), "no hint a plugin cannot follow: {line}");
        }
    }
    // An uncaught Python or JavaScript exception is the plugin's exception, with its text.
    for (name, path) in [("raise-py", wasm::PROBE_PY), ("raise-js", wasm::PROBE_JS)] {
        let proxy = TestProxy::start_with(with_plugins(vec![probe(name, path, "raise")]), &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &message("raise")).await.code, 451);
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let text = logs.text();
        let line = text
            .lines()
            .find(|l| l.contains("plugin fault") && l.contains(&format!("plugin={name} ")))
            .unwrap_or_else(|| panic!("{name}: no fault logged in\n{text}"));
        assert!(line.contains("fault=exception") && line.contains("probe exception: boom"), "{name}: {line}");
    }
}

#[test]
fn the_sdk_carries_the_released_contract_unchanged() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let released = std::fs::read_to_string(root.join("wit/0.2.0/filter.wit")).unwrap();
    let vendored = std::fs::read_to_string(root.join("guest-plugins/sdk/wit/filter.wit")).unwrap();
    assert!(released == vendored, "guest-plugins/sdk/wit/filter.wit differs from wit/0.2.0/filter.wit");
}
