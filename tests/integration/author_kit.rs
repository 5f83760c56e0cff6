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

/// Runs a new project's own script (`./build`, `./test`) as its author would: the exit status
/// and everything it printed.
async fn project_script(dir: &Path, script: &str) -> (i32, String) {
    let run = tokio::process::Command::new(dir.join(script))
        .current_dir(dir)
        .env("WASMTP", env!("CARGO_BIN_EXE_wasmtp"))
        .env("XDG_CACHE_HOME", shared_compile_cache())
        // Nothing of this workspace's own build may leak into the project's.
        .env_remove("RUST_LOG")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    // A cold build fetches tools and compiles a 12-18 MB interpreter component: minutes, bounded.
    let out = tokio::time::timeout(std::time::Duration::from_secs(900), run)
        .await
        .expect("the project's script finishes within 15 minutes")
        .expect("the project's script runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// One test for the three languages, one after another: each build is heavy, and the machine
/// has two cores. Ignored in the parallel run, where minutes of both cores busy would starve
/// the tests bound by time; `scripts/test` runs it alone after the suite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "heavy: scripts/test runs it alone after the suite"]
async fn plugin_new_makes_projects_that_build_test_and_filter_mail_in_every_language() {
    let root = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        let name = format!("guard-{lang}");
        let dir = root.path().join(&name);
        let (status, out, err) =
            wasmtp(&["plugin", "new", &name, "--lang", lang, "--dir", dir.to_str().unwrap()], root.path()).await;
        assert_eq!(status, 0, "{lang}: {out}\n{err}");
        assert!(out.contains("./build") && out.contains("./test"), "the next steps are printed: {out}");
        for file in ["README.md", "fixtures.toml", "sample.eml", "wasmtp.toml", "build", "test"] {
            assert!(dir.join(file).is_file(), "{lang}: {file} is made");
        }

        // The project's own test command: its build, its tests, its fixtures in the sandbox.
        let (status, out) = project_script(&dir, "test").await;
        assert_eq!(status, 0, "{lang}: ./test fails:\n{out}");
        assert!(out.contains("2 case(s), 2 with expectations: 2 passed, 0 failed"), "{lang}: {out}");
        if lang == "rust" {
            assert!(out.contains("test result: ok. 3 passed"), "the native tests ran with the mock host: {out}");
        } else {
            // Unchanged, the interpreter component is not built again (it takes many seconds).
            let (status, out) = project_script(&dir, "build").await;
            assert_eq!((status, out.trim()), (0, format!("build: {name}.wasm is up to date").as_str()), "{lang}");
        }

        // The .wasm it built filters mail in the proxy.
        let wasm = dir.join(format!("{name}.wasm"));
        let mut config = with_plugins(vec![plugin(
            &name,
            wasm.to_str().unwrap(),
            serde_json::json!({"blocked_words": ["lottery"]}),
        )]);
        // The compile cache `./test` filled (under XDG_CACHE_HOME).
        config.sandbox.cache_dir = Some(shared_compile_cache().join("wasmtp"));
        let up = Recorder::start(Script::default()).await;
        let proxy = TestProxy::start_with(config, &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        let ok = b"From: a@example.org\r\nSubject: minutes\r\n\r\nhello\r\n";
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(ok)).await.code, 250, "{lang}");
        let spam = b"From: a@example.org\r\nSubject: Lottery win\r\n\r\nhello\r\n";
        let refused = c.send_mail("a@example.org", &["b@example.net"], &stuff(spam)).await;
        assert_eq!(refused.code, 550, "{lang}: {refused:?}");
        assert!(refused.text().contains("Messages about \"lottery\" are not accepted"), "{lang}: {refused:?}");
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let delivered = up.messages();
        assert_eq!(delivered.len(), 1, "{lang}: only the harmless message is relayed");
        let message = String::from_utf8_lossy(&delivered[0].wire).into_owned();
        assert!(message.contains(&format!("X-Checked-By: {name}\r\n")), "{lang}: {message}");
    }
}
