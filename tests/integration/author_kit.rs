//! The plugin author's tools, run as an author runs them: the `wasmtp` binary's
//! `plugin test` over the example plugins and their fixtures files.

use std::path::Path;
use std::process::Stdio;

use wasmtp_test_artifacts as wasm;

use crate::support::*;

/// `examples/fixtures/NAME`.
fn example_fixture(name: &str) -> String {
    format!("{}/../examples/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `wasmtp ARGS` in `dir`: the exit status, stdout and stderr.
async fn wasmtp(args: &[&str], dir: &Path) -> (i32, String, String) {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtp"))
        .args(args)
        .current_dir(dir)
        .env("XDG_CACHE_HOME", shared_compile_cache())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(WAIT * 3, run).await.expect("wasmtp exits within the bound").expect("wasmtp runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn plugin_test_passes_the_example_fixtures_with_authentication_results() {
    let dir = tempfile::tempdir().unwrap();
    for (plugin, fixtures, summary) in [
        (wasm::CONTENT_GUARD, "content-guard.toml", "3 case(s), 3 with expectations: 3 passed, 0 failed"),
        (wasm::AUTH_POLICY, "auth-policy.toml", "6 case(s), 6 with expectations: 6 passed, 0 failed"),
    ] {
        let (status, out, err) =
            wasmtp(&["plugin", "test", plugin, "--fixtures", &example_fixture(fixtures)], dir.path()).await;
        assert_eq!(status, 0, "{fixtures}: {out}\n{err}");
        assert!(out.contains(summary), "{out}");
        assert!(!out.contains("FAILED"), "{out}");
    }
    // What each stage did is printed: the refusal with the reply the client hears, the edit,
    // and the message after it as a diff.
    let (_, out, _) = wasmtp(
        &["plugin", "test", wasm::CONTENT_GUARD, "--fixtures", &example_fixture("content-guard.toml")],
        dir.path(),
    )
    .await;
    assert!(out.contains("the client hears: 550 5.7.1 Attachment type .exe is not accepted"), "{out}");
    assert!(out.contains("edit: change-header Subject #1: [SUSPICIOUS] urgent"), "{out}");
    assert!(out.contains("-Subject: urgent\n    +Subject: [SUSPICIOUS] urgent"), "{out}");
}

#[tokio::test]
async fn a_wrong_expectation_exits_non_zero_and_says_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(example_fixture("invoice.eml"), dir.path().join("invoice.eml")).unwrap();
    std::fs::write(
        dir.path().join("wrong.toml"),
        r#"
[config]
forbidden_extensions = ["exe"]
suspicious_words = ["wire transfer"]
tag = "[SUSPICIOUS]"

[[case]]
name = "right"
expect.data = "reject"
message = "invoice.eml"

[[case]]
name = "wrong verdict"
message = "invoice.eml"
expect.data = "continue"

[[case]]
name = "wrong edit"
message_text = "Subject: pay\n\nwire transfer now\n"
expect.data = { verdict = "continue", headers = ["Subject: [SPAM] pay"] }

[[case]]
name = "a stage it does not declare"
expect.mail = "continue"
"#,
    )
    .unwrap();
    let (status, out, err) = wasmtp(&["plugin", "test", wasm::CONTENT_GUARD, "-f", "wrong.toml"], dir.path()).await;
    assert_eq!(status, 1, "{out}\n{err}");
    assert!(out.contains("4 case(s), 4 with expectations: 1 passed, 3 failed"), "{out}");
    assert!(
        out.contains("data: expected verdict continue, got reject (550 5.7.1 Attachment type .exe is not accepted)"),
        "{out}"
    );
    assert!(
        out.contains("data: expected header `Subject: [SPAM] pay`, found [\"Subject: [SUSPICIOUS] pay\"]"),
        "{out}"
    );
    assert!(out.contains("+Subject: [SUSPICIOUS] pay"), "the message diff shows what the plugin did: {out}");
    assert!(
        out.contains("mail: expected a call, but `content_guard` was not called (its manifest does not declare it)")
    );
    assert!(
        err.contains(
            "3 case(s) did not meet their expectations: wrong verdict, wrong edit, a stage it does not declare"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_hostile_plugin_shows_its_fault_with_backtrace_and_what_it_printed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hostile.toml"),
        r#"
[config]
behaviour = "trap"
stages = ["mail"]

[[case]]
name = "traps at mail"
expect.mail = { verdict = "fault", fault = "crash", reply = "unreachable" }
"#,
    )
    .unwrap();
    let (status, out, err) = wasmtp(&["plugin", "test", wasm::HOSTILE, "-f", "hostile.toml"], dir.path()).await;
    assert_eq!(status, 0, "the fault was expected: {out}\n{err}");
    assert!(
        out.contains("mail     hostile: fault (crash): wasm trap: wasm `unreachable` instruction executed"),
        "{out}"
    );
    assert!(
        out.contains("backtrace: hostile.wasm!hostile::trap_here <- hostile.wasm!hostile::act <- hostile.wasm!on-mail"),
        "{out}"
    );
    assert!(out.contains("the client hears: 451 4.3.0"), "on_error tempfail by default: {out}");

    // A panic at data, with --on-error reject and --config instead of a fixtures file.
    std::fs::write(dir.path().join("panic.toml"), "behaviour = \"panic\"\nstages = [\"data\"]\n").unwrap();
    let (status, out, err) =
        wasmtp(&["plugin", "test", wasm::HOSTILE, "--config", "panic.toml", "--on-error", "reject"], dir.path()).await;
    assert_eq!(status, 0, "no expectations: {out}\n{err}");
    assert!(out.contains("fault (crash): panic: hostile plugin panicked on purpose"), "{out}");
    assert!(out.contains("stderr: thread '<unnamed>' (1) panicked at"), "what the guest printed: {out}");
    assert!(out.contains("the client hears: 550 5.7.0"), "{out}");

    // A plugin that cannot load is an error naming it.
    std::fs::write(dir.path().join("bad.toml"), "behaviour = 3\n").unwrap();
    let (status, _, err) = wasmtp(&["plugin", "test", wasm::HOSTILE, "--config", "bad.toml"], dir.path()).await;
    assert_eq!(status, 1);
    assert!(err.contains("plugin `hostile`"), "{err}");
}
