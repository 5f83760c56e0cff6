//! Shadow plugins (`mode = "shadow"`): called at their stages, never obeyed; what they would
//! have done differently is logged and counted.

use serde_json::json;
use wasmtp::config::PluginMode;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

const MESSAGE: &[u8] = b"From: a@example.org\r\nSubject: hello\r\n\r\nbody line\r\n";

fn shadow(mut plugin: wasmtp::config::PluginConfig) -> wasmtp::config::PluginConfig {
    plugin.mode = PluginMode::Shadow;
    plugin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_rejects_everything_changes_nothing_and_every_disagreement_is_logged() {
    let logs = Logs::global();
    let reject = |code: u16| json!({"verdict": "reject", "code": code, "lines": ["shadow says no"]});
    // Rejects at every stage and edits what it may: none of it may reach client or upstream.
    let naysayer = shadow(plugin(
        "shadow-naysayer",
        wasm::SCRIPTED,
        json!({
            "manifest": {"stages": ["connect", "ehlo", "mail", "rcpt", "data"], "body": "full",
                         "edits": ["set-sender", "add-header", "replace-body"]},
            "stages": {
                "connect": reject(554), "ehlo": reject(550), "mail": reject(550), "rcpt": reject(550),
                "data": {"verdict": "reject", "code": 554, "lines": ["shadow says no"],
                         "edits": [{"add-header": ["X-Shadow", "1"]}, {"replace-body": "shadow body\r\n"}]}
            }
        }),
    ));
    // A shadow that panics: its faults must not touch the session either, whatever its policy.
    let mut crasher =
        shadow(plugin("shadow-crasher", wasm::HOSTILE, json!({"behaviour": "panic", "stages": ["mail"]})));
    crasher.on_error = wasmtp::config::OnError::Reject;
    // A live plugin beside them, whose edit does take effect.
    let live = plugin(
        "live-stamper",
        wasm::SCRIPTED,
        json!({"manifest": {"stages": ["data"], "edits": ["add-header"]},
               "stages": {"data": {"edits": [{"add-header": ["X-Live", "1"]}]}}}),
    );
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_admin(with_plugins(vec![naysayer, crasher, live]), &up.url()).await;
    const SESSIONS: usize = 3;
    for _ in 0..SESSIONS {
        let mut c = proxy.client().await;
        c.greet().await;
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(MESSAGE)).await.code, 250);
        c.cmd("QUIT", 221).await;
    }
    let (_, metrics) = http_get(&format!("{}/metrics", proxy.admin_url())).await;
    proxy.stop().await;

    let delivered = up.messages();
    assert_eq!(delivered.len(), SESSIONS, "every message delivered");
    for m in &delivered {
        assert_eq!(m.mail_from, "MAIL FROM:<a@example.org>");
        let message = String::from_utf8_lossy(strip_our_received(&m.wire)).into_owned();
        assert_eq!(message, "From: a@example.org\r\nSubject: hello\r\nX-Live: 1\r\n\r\nbody line\r\n.\r\n");
    }

    let text = logs.text();
    let disagreements: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("shadow plugin disagrees") && l.contains("plugin=shadow-naysayer "))
        .collect();
    assert_eq!(disagreements.len(), SESSIONS * 5, "one per stage per session: {disagreements:#?}");
    for stage in ["connect", "ehlo", "mail", "rcpt", "data"] {
        let line = disagreements.iter().find(|l| l.contains(&format!("stage={stage} "))).expect(stage);
        assert!(line.contains("live=\"continue\"") && line.contains("shadow=\"reject\""), "{line}");
        assert!(line.contains("shadow says no"), "the reply it would have sent: {line}");
    }
    assert!(
        disagreements.iter().any(|l| l.contains("stage=data") && l.contains("shadow_edits=2")),
        "{disagreements:#?}"
    );
    assert!(
        metrics.contains(
            "wasmtp_plugin_shadow_disagreements_total{plugin=\"shadow-naysayer\",stage=\"data\",live=\"continue\",shadow=\"reject\"} 3"
        ),
        "{metrics}"
    );
    // The crasher's faults are logged as faults, with no policy applied, and never disagree.
    let crasher_faults: Vec<&str> =
        text.lines().filter(|l| l.contains("plugin fault") && l.contains("plugin=shadow-crasher ")).collect();
    assert!(!crasher_faults.is_empty(), "the shadow's faults are logged");
    assert!(crasher_faults.iter().all(|l| l.contains("on_error=\"none (shadow)\"")), "{crasher_faults:#?}");
    assert!(!text.lines().any(|l| l.contains("shadow plugin disagrees") && l.contains("plugin=shadow-crasher ")));
}
