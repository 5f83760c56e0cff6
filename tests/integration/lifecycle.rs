//! Timeouts, graceful shutdown, crashes and the command line, observed from outside.

use std::time::Duration;

use tokio::process::Command;

use crate::support::*;

#[tokio::test(start_paused = true)]
async fn idle_client_gets_421_after_the_default_five_minutes() {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start("", &format!("maildir:{}", dir.path().display())).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let started = tokio::time::Instant::now();
    let r = c.reply_within(Duration::from_secs(3600)).await.expect("421 before closing");
    assert_eq!(r.code, 421, "{r:?}");
    assert!(r.text().contains("4.4.2"), "{r:?}");
    assert_eq!(started.elapsed().as_secs(), 300);
    c.closed().await;
    proxy.stop().await;
}

/// A proxy with default settings and a Maildir upstream, and a client that just got its 354.
async fn in_data_with_defaults() -> (tempfile::TempDir, TestProxy, Client) {
    let dir = tempfile::tempdir().unwrap();
    let proxy = TestProxy::start("", &format!("maildir:{}", dir.path().display())).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    (dir, proxy, c)
}

#[tokio::test(start_paused = true)]
async fn a_client_stalling_in_data_gets_421_and_nothing_is_delivered() {
    let (dir, proxy, mut c) = in_data_with_defaults().await;
    c.send("Subject: stalled\r\n\r\nhalf").await;
    let r = c.reply_within(Duration::from_secs(3600)).await.expect("421");
    assert_eq!(r.code, 421, "{r:?}");
    c.closed().await;
    proxy.stop().await;
    assert_eq!(std::fs::read_dir(dir.path().join("new")).unwrap().count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_below_the_minimum_data_rate_gets_421() {
    // 1 KiB/s minimum after the 5 minute idle allowance: one byte every 200 s never trips the
    // idle timeout, but the transfer as a whole is far too slow.
    let (dir, proxy, mut c) = in_data_with_defaults().await;
    let started = tokio::time::Instant::now();
    let reply = loop {
        c.send("x").await;
        // A slow client, in simulated time: the proxy answers only when it gives up.
        if let Some(reply) = c.reply_if_any(Duration::from_secs(200)).await {
            break reply;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "the proxy never gave up");
    };
    assert_eq!(reply.code, 421, "{reply:?}");
    assert!(started.elapsed() >= Duration::from_secs(300) && started.elapsed() < Duration::from_secs(600));
    c.closed().await;
    proxy.stop().await;
    assert_eq!(std::fs::read_dir(dir.path().join("new")).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_transactions_finish_and_closes_idle_sessions() {
    let up = Recorder::start(Script::default()).await;
    let mut proxy = TestProxy::start("[timeouts]\nshutdown_grace = \"20s\"\n", &up.url()).await;
    let mut idle = proxy.client().await;
    idle.greet().await;
    let mut busy = proxy.client().await;
    busy.greet().await;
    busy.cmd("MAIL FROM:<a@example.org>", 250).await;

    proxy.begin_shutdown();
    let r = idle.expect(421).await;
    assert!(r.text().contains("4.3.2"), "{r:?}");
    idle.closed().await;
    // The transaction in flight completes...
    busy.cmd("RCPT TO:<b@example.net>", 250).await;
    busy.cmd("DATA", 354).await;
    busy.send(stuff(b"Subject: last one\r\n\r\nbody\r\n")).await;
    busy.expect(250).await;
    // ...and then the session is closed.
    busy.expect(421).await;
    busy.closed().await;
    proxy.join().await;
    assert_eq!(up.messages().len(), 1);
    assert!(tokio::net::TcpStream::connect(proxy.addr).await.is_err(), "listener closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_expiry_closes_stuck_transactions_with_421() {
    let up = Recorder::start(Script::default()).await;
    let mut proxy = TestProxy::start("[timeouts]\nshutdown_grace = \"200ms\"\n", &up.url()).await;
    let mut stuck = proxy.client().await;
    stuck.greet().await;
    stuck.cmd("MAIL FROM:<a@example.org>", 250).await;
    stuck.cmd("RCPT TO:<b@example.net>", 250).await;
    stuck.cmd("DATA", 354).await;
    stuck.send("Subject: never finished\r\n\r\n").await;
    proxy.begin_shutdown();
    let r = stuck.expect(421).await;
    assert!(r.text().contains("4.3.2"), "{r:?}");
    stuck.closed().await;
    proxy.join().await;
    up.all_closed().await;
    assert!(up.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_data_leaves_no_message_upstream() {
    let up = Recorder::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(&["--upstream", &up.url()], dir.path()).await;
    let mut c = bin.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    c.send("Subject: interrupted\r\n\r\nthe first half of a message").await;
    bin.signal(libc::SIGKILL);
    tokio::time::timeout(WAIT, bin.child.wait()).await.unwrap().unwrap();
    up.all_closed().await;
    assert!(up.messages().is_empty());
    assert!(!up.commands().iter().any(|l| l == "DATA"), "{:?}", up.commands());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(&["--upstream", "maildir:out"], dir.path()).await;
    let mut idle = bin.client().await;
    idle.greet().await;
    let mut busy = bin.client().await;
    busy.greet().await;
    busy.cmd("MAIL FROM:<a@example.org>", 250).await;
    busy.cmd("RCPT TO:<b@example.net>", 250).await;
    bin.signal(libc::SIGTERM);
    idle.expect(421).await;
    busy.cmd("DATA", 354).await;
    busy.send(stuff(b"Subject: during shutdown\r\n\r\nbody\r\n")).await;
    busy.expect(250).await;
    busy.expect(421).await;
    let status = tokio::time::timeout(WAIT, bin.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    assert_eq!(std::fs::read_dir(dir.path().join("out/new")).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_upstream_mail_goes_to_the_default_maildir() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(&[], dir.path()).await;
    let mut c = bin.client().await;
    c.greet().await;
    let reply = c.send_mail("a@example.org", &["b@example.net"], &stuff(b"Subject: default\r\n\r\nhello\r\n")).await;
    assert_eq!(reply.code, 250);
    c.cmd("QUIT", 221).await;
    let delivered: Vec<_> = std::fs::read_dir(dir.path().join("mail-out/new")).unwrap().collect();
    assert_eq!(delivered.len(), 1);
}

#[tokio::test]
async fn check_config_names_the_file_and_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[server]\nlisten = \"127.0.0.1:2525\"\n[upstream]\nurl = \"smtp://127.0.0.1:25\"\n")
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtp")).arg("check-config").arg(&good).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("smtp://127.0.0.1:25"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[limits]\nmax_recipients = \"many\"\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtp")).arg("check-config").arg(&bad).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("limits.max_recipients") && err.contains("line 2"), "{err}");

    // The examples as an operator would adapt them: the spool directory exists on their host.
    for example in
        ["quickstart.toml", "in-front-of-postfix.toml", "postfix-proxy-filter.toml", "behind-a-balancer.toml"]
    {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/").to_string() + example;
        let text = std::fs::read_to_string(&path).unwrap();
        let adapted = dir.path().join(example);
        std::fs::write(&adapted, text.replace("/var/spool/wasmtp", &dir.path().display().to_string())).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_wasmtp"))
            .args(["check-config", "--no-plugins"])
            .arg(&adapted)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{example}: {}", String::from_utf8_lossy(&out.stderr));
    }

    // With plugins, check-config compiles and loads them and shows their manifests.
    let with_plugin = dir.path().join("plugins.toml");
    let cache = dir.path().join("cache");
    let text = format!(
        "[sandbox]\ncache_dir = {cache:?}\n[[plugins]]\nname = \"stamper\"\npath = {:?}\n[[plugins]]\nname = \"missing\"\npath = \"nope.wasm\"\n",
        wasmtp_test_artifacts::HEADER_STAMPER
    );
    std::fs::write(&with_plugin, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtp")).arg("check-config").arg(&with_plugin).output().await.unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plugin `missing` (field `plugins[1]`, nope.wasm)"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).lines().any(|l| l == "ok"), "no ok before a failure");
    let good = std::fs::read_to_string(&with_plugin).unwrap();
    std::fs::write(&with_plugin, &good[..good.rfind("[[plugins]]").unwrap()]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wasmtp")).arg("check-config").arg(&with_plugin).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("plugin stamper: header-stamper")
            && stdout.contains("stages data; body headers; edits add-header,remove-header"),
        "{stdout}"
    );
}
