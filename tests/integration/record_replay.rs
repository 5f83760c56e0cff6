//! Recording sessions (`[record]`) through the quickstart chain and replaying them
//! (`wasmtp replay`) against a changed build of one plugin: exactly the decisions that changed
//! are reported.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

const SESSIONS: usize = 20;

/// Session `i`'s message: every fifth one mentions "wire transfer" (a phrase content-guard
/// tags by default), the next "lottery prize" (which it does not), the next carries an .exe
/// attachment (refused), the next goes to an alias the rewriter expands.
fn message(i: usize) -> (&'static str, String) {
    let head = format!("From: a@example.org\r\nSubject: n{i} hello\r\nMessage-ID: <n{i}@example.org>\r\n");
    match i % 5 {
        0 => ("b@example.org", format!("{head}\r\nplease make the wire transfer today\r\n")),
        1 => ("b@example.org", format!("{head}\r\nyou have won the lottery prize\r\n")),
        2 => (
            "b@example.org",
            format!(
                "{head}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n\
                 --b1\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
                 --b1\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\n\
                 Content-Disposition: attachment; filename=\"setup.exe\"\r\n\
                 Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAA==\r\n--b1--\r\n"
            ),
        ),
        3 => ("team@example.org", format!("{head}\r\nfor the team\r\n")),
        _ => ("b@example.org", format!("{head}\r\njust a note\r\n")),
    }
}

/// content-guard with "wire transfer" replaced by "lottery prize" in its default phrases: a
/// new build that tags other messages, made by changing the string in its data segment.
fn changed_content_guard(dir: &Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(wasm::CONTENT_GUARD).unwrap();
    let (old, new) = (b"wire transfer", b"lottery prize");
    let mut replaced = 0;
    while let Some(at) = bytes.windows(old.len()).position(|w| w == old) {
        bytes[at..at + old.len()].copy_from_slice(new);
        replaced += 1;
    }
    assert!(replaced > 0, "content-guard's default phrases are in its data segment");
    let path = dir.join("content_guard_v2.wasm");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `wasmtp replay` (bounded): its exit code and what it printed.
async fn replay(dir: &Path, args: &[&str]) -> (i32, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        Command::new(env!("CARGO_BIN_EXE_wasmtp"))
            .args(["replay", "recordings", "--config", "wasmtp.toml"])
            .args(args)
            .current_dir(dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("replay ends within the bound")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_replayed_against_a_changed_build_report_exactly_the_changed_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = quickstart_toml().replace("127.0.0.1:2525", &format!("127.0.0.1:{port}"))
        + "\n[record]\ndir = \"recordings\"\n";
    std::fs::write(dir.path().join("wasmtp.toml"), config).unwrap();
    let mut bin = Binary::start_config(Path::new("wasmtp.toml"), dir.path(), &[], port).await;

    for i in 0..SESSIONS {
        let (rcpt, text) = message(i);
        let mut c = bin.client().await;
        c.greet().await;
        if i == SESSIONS - 2 {
            // A transaction abandoned before DATA is recorded (and replayed) too.
            c.cmd("MAIL FROM:<a@example.org>", 250).await;
            c.cmd("RCPT TO:<b@example.org>", 250).await;
            c.cmd("RSET", 250).await;
        }
        let expected = if i % 5 == 2 { 550 } else { 250 };
        assert_eq!(c.send_mail("a@example.org", &[rcpt], &stuff(text.as_bytes())).await.code, expected, "session {i}");
        if i == SESSIONS - 1 {
            let second = "From: a@example.org\r\nSubject: n19b second\r\n\r\nagain\r\n";
            assert_eq!(c.send_mail("a@example.org", &["b@example.org"], &stuff(second.as_bytes())).await.code, 250);
        }
        c.cmd("QUIT", 221).await;
    }
    bin.signal(libc::SIGTERM);
    let status = tokio::time::timeout(WAIT, bin.child.wait()).await.expect("stops within the bound").unwrap();
    assert!(status.success(), "{}", bin.log());

    let recordings = dir.path().join("recordings");
    let json: Vec<_> = std::fs::read_dir(&recordings)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert_eq!(json.len(), SESSIONS, "one recording per session");
    let mut records: Vec<serde_json::Value> =
        json.iter().map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()).collect();
    records.sort_by_key(|r| r["session"].as_str().unwrap().to_string());
    let reset = &records[SESSIONS - 2]["transactions"];
    assert_eq!(reset.as_array().unwrap().len(), 2, "{reset:#}");
    assert!(reset[0]["message"].is_null() && reset[0]["rcpt"] == serde_json::json!(["b@example.org"]), "{reset:#}");
    let refused = &records[2]["transactions"][0];
    let guard = refused["decisions"].as_array().unwrap().iter().find(|d| d["plugin"] == "guard").unwrap();
    assert_eq!(guard["decision"], "reject 550 5.7.1 Attachment type .exe is not accepted", "{refused:#}");
    let eml = recordings.join(refused["message"].as_str().unwrap());
    assert_eq!(std::fs::read_to_string(eml).unwrap(), message(2).1, "the message as the client sent it");

    // The same chain decides as it did: nothing differs, so the recording is faithful.
    let (code, out) = replay(dir.path(), &[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("replayed 20 session(s) (22 transaction(s)): 0 of "), "{out}");

    let changed = changed_content_guard(dir.path());
    let (code, out) = replay(dir.path(), &["--plugin", &format!("guard={}", changed.display())]).await;
    println!("{out}");
    assert_eq!(code, 1, "decisions differ: {out}");
    let differences: Vec<&str> = out.lines().filter(|l| l.contains(" → ")).collect();
    let tagged = |i: usize| format!("continue; change-header Subject #1: [SUSPICIOUS] n{i} hello");
    let mut expected = Vec::new();
    for i in (0..SESSIONS).filter(|i| i % 5 < 2) {
        let (old, new) = if i % 5 == 0 { (tagged(i), "continue".into()) } else { ("continue".into(), tagged(i)) };
        expected.push(format!("guard at data: {old} → {new}"));
    }
    assert_eq!(differences.len(), expected.len(), "exactly the changed decisions:\n{out}");
    for (line, want) in differences.iter().zip(&expected) {
        assert!(line.ends_with(&format!("transaction 1: {want}")), "{line}\nwanted …{want}");
    }
    assert!(out.contains(": 8 of ") && out.contains("differ, in 8 session(s)"), "{out}");
}
