//! Operating the proxy: reloads under load (SIGHUP and `wasmtp reload`), the admin endpoints
//! scraped by a real HTTP client, dropping privileges, systemd readiness, honest
//! `check-config`, named log fields, and starting under an address-space limit.

use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

/// The value of the sample `series` (name with labels, as printed) in a scrape.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn mail(subject: &str) -> Vec<u8> {
    stuff(format!("From: a@example.org\r\nSubject: {subject}\r\n\r\nbody of {subject}\r\n").as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_messages_rejects_and_plugin_faults_happen() {
    let up = Recorder::start(Script::default()).await;
    let mut crashy = plugin("crashy", wasm::HOSTILE, json!({"behaviour": "panic", "stages": ["mail"]}));
    crashy.on_error = wasmtp::config::OnError::Continue;
    let config = with_plugins(vec![crashy, plugin("bouncer", wasm::SDK_EXAMPLE, json!({}))]);
    let proxy = TestProxy::start_admin(config, &up.url()).await;
    let metrics_url = format!("{}/metrics", proxy.admin_url());

    let (status, before) = http_get(&metrics_url).await;
    assert_eq!(status, 200);
    assert_eq!(sample(&before, "wasmtp_transactions_total{outcome=\"delivered\"}"), None, "{before}");
    assert_eq!(sample(&before, "wasmtp_connections_open"), Some(0.0), "{before}");
    assert_eq!(sample(&before, "wasmtp_config_generation"), Some(1.0));

    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("good@example.org", &["b@example.net"], &mail("one")).await.code, 250);
    let (_, after_one) = http_get(&metrics_url).await;
    assert_eq!(sample(&after_one, "wasmtp_connections_open"), Some(1.0), "{after_one}");
    assert_eq!(sample(&after_one, "wasmtp_transactions_total{outcome=\"delivered\"}"), Some(1.0), "{after_one}");
    assert_eq!(sample(&after_one, "wasmtp_upstream_replies_total{stage=\"data\",class=\"2xx\"}"), Some(1.0));
    assert_eq!(sample(&after_one, "wasmtp_message_size_bytes_count"), Some(1.0));
    assert_eq!(
        sample(&after_one, "wasmtp_plugin_calls_total{plugin=\"bouncer\",stage=\"data\",verdict=\"continue\"}"),
        Some(1.0),
        "{after_one}"
    );

    // A plugin fault (the sender is not `good…`): counted, and on_error = continue lets it on.
    assert_eq!(c.send_mail("bad@example.org", &["b@example.net"], &mail("two")).await.code, 250);
    // A reject at MAIL by the bouncer, after another fault.
    c.cmd("MAIL FROM:<x@spam.example>", 550).await;
    let (_, after) = http_get(&metrics_url).await;
    assert_eq!(sample(&after, "wasmtp_transactions_total{outcome=\"delivered\"}"), Some(2.0), "{after}");
    assert_eq!(
        sample(&after, "wasmtp_plugin_faults_total{plugin=\"crashy\",stage=\"mail\",fault=\"crash\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&after, "wasmtp_plugin_calls_total{plugin=\"bouncer\",stage=\"mail\",verdict=\"reject\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "wasmtp_plugin_breaker_state{plugin=\"crashy\"}"), Some(0.0));
    assert_eq!(sample(&after, "wasmtp_upstream_up"), Some(1.0));
    assert!(
        sample(&after, "wasmtp_plugin_call_duration_seconds_count{plugin=\"bouncer\",stage=\"mail\"}") >= Some(3.0)
    );
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_turns_unready_when_the_upstream_goes_down() {
    let sink = SmtpSink::start().await;
    let proxy = TestProxy::start_admin(wasmtp::Config::default(), &sink.url()).await;
    assert_eq!(http_get(&format!("{}/healthz", proxy.admin_url())).await, (200, "ok\n".into()));
    assert_eq!(http_get(&format!("{}/readyz", proxy.admin_url())).await, (200, "ready\n".into()));
    assert_eq!(http("POST", &format!("{}/metrics", proxy.admin_url())).await.0, 405);
    assert_eq!(http_get(&format!("{}/nothing", proxy.admin_url())).await.0, 404);

    drop(sink);
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 451).await;
    let (status, why) = http_get(&format!("{}/readyz", proxy.admin_url())).await;
    assert_eq!(status, 503);
    assert!(why.contains("not reachable"), "{why}");
    let (_, metrics) = http_get(&format!("{}/metrics", proxy.admin_url())).await;
    assert_eq!(sample(&metrics, "wasmtp_upstream_up"), Some(0.0));
    assert_eq!(sample(&metrics, "wasmtp_upstream_replies_total{stage=\"connect\",class=\"error\"}"), Some(1.0));
    // Started without a configuration file to read again, an in-process proxy refuses reloads.
    let (status, body) = http("POST", &format!("{}/reload", proxy.admin_url())).await;
    assert_eq!(status, 500, "{body}");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

/// A configuration file for the binary: `port` for SMTP, `admin` for the admin listener,
/// Maildir delivery into `dir/mail`, the test run's compile cache (unless `extra` drops
/// privileges: then `dir/cache`), `extra` in `[server]` and `plugins` (TOML).
fn binary_config(dir: &Path, port: u16, admin: u16, extra: &str, plugins: &str) -> PathBuf {
    let path = dir.join("wasmtp.toml");
    let cache = if extra.contains("user") { dir.join("cache") } else { shared_compile_cache() };
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"proxy.test\"\n{extra}\n\
         [upstream]\nurl = \"maildir:mail\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [sandbox]\ncache_dir = {cache:?}\n{plugins}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Replaces `path` with a copy of `from` in one rename, as a deployment would.
fn install(from: &str, path: &Path) {
    let tmp = path.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The delivered messages, as text.
fn delivered(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir.join("mail/new"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect()
}

async fn wasmtp(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmtp")).args(args).output().await.unwrap()
}

const OLD_BUILD: &str = "[[plugins]]\nname = \"gen\"\npath = \"gen.wasm\"\n\
    [plugins.config.manifest]\nstages = [\"data\"]\nedits = [\"add-header\"]\n\
    [plugins.config.stages.data]\nedits = [{ add-header = [\"X-Generation\", \"old\"] }]\n";
const NEW_BUILD: &str =
    "[[plugins]]\nname = \"gen\"\npath = \"gen.wasm\"\n[plugins.config]\nadd = { \"X-Generation\" = \"new\" }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_a_plugin_under_load_and_sessions_keep_their_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    install(wasm::SCRIPTED, &dir.path().join("gen.wasm"));
    let config = binary_config(dir.path(), port, admin, "", OLD_BUILD);
    let bin = Binary::start_config(&config, dir.path(), &[], port).await;

    // 20 sessions inside a transaction on the first generation.
    let mut old = Vec::new();
    for i in 0..20 {
        let mut c = bin.client().await;
        c.greet().await;
        c.cmd(&format!("MAIL FROM:<old{i}@example.org>"), 250).await;
        c.cmd("RCPT TO:<b@example.net>", 250).await;
        old.push(c);
    }
    // A changed build of the plugin, and SIGHUP.
    install(wasm::HEADER_STAMPER, &dir.path().join("gen.wasm"));
    binary_config(dir.path(), port, admin, "", NEW_BUILD);
    let mark = bin.log_len();
    bin.signal(libc::SIGHUP);
    let reloaded = bin.wait_for_log("reloaded", mark).await;
    assert!(reloaded.contains("generation=2"), "{reloaded}");

    // New sessions get the new build while the old ones are still open.
    for i in 0..20 {
        let mut c = bin.client().await;
        c.greet().await;
        assert_eq!(c.send_mail("new@example.org", &["b@example.net"], &mail(&format!("new-{i}"))).await.code, 250);
        c.cmd("QUIT", 221).await;
    }
    // The old sessions finish on the generation they started with.
    for (i, c) in old.iter_mut().enumerate() {
        c.cmd("DATA", 354).await;
        c.send(mail(&format!("old-{i}"))).await;
        c.expect(250).await;
        c.cmd("QUIT", 221).await;
    }
    let messages = delivered(dir.path());
    assert_eq!(messages.len(), 40, "no message lost or refused");
    for message in &messages {
        let generation = if message.contains("Subject: old-") { "old" } else { "new" };
        assert!(message.contains(&format!("X-Generation: {generation}")), "{message}\n{}", bin.log());
    }
    let released = bin.wait_for_log("generation released", mark).await;
    assert!(released.contains("generation=1"), "{released}");

    // A broken configuration changes nothing, and says why; `wasmtp reload` reports it.
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap() + "[limits]\nmax_recipients = \"many\"\n")
        .unwrap();
    let out = wasmtp(&["reload", "--config", config.to_str().unwrap()]).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("reload failed") && err.contains("limits.max_recipients"), "{err}");
    let mut c = bin.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("after@example.org", &["b@example.net"], &mail("after-broken")).await.code, 250);
    let last = delivered(dir.path()).into_iter().find(|m| m.contains("after-broken")).unwrap();
    assert!(last.contains("X-Generation: new"), "{last}");

    // A plugin that fails to load is a failed reload as well.
    binary_config(dir.path(), port, admin, "", &NEW_BUILD.replace("gen.wasm", "missing.wasm"));
    let out = wasmtp(&["reload", "--config", config.to_str().unwrap()]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin `gen`"), "{out:?}");
    binary_config(dir.path(), port, admin, "", NEW_BUILD);
    let out = wasmtp(&["reload", "--config", config.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "reloaded: generation 3");
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{admin}/metrics")).await;
    assert_eq!(sample(&metrics, "wasmtp_reloads_total{outcome=\"ok\"}"), Some(2.0), "{metrics}");
    assert_eq!(sample(&metrics, "wasmtp_reloads_total{outcome=\"failed\"}"), Some(2.0));
    assert_eq!(sample(&metrics, "wasmtp_config_generation"), Some(3.0));
    c.cmd("QUIT", 221).await;
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count()
}

/// Waits until the proxy's metrics say no client connection is open any more (its side of the
/// last one closed after the client saw EOF), polling within the test's bound.
async fn no_open_connections(admin: u16) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, metrics) = http_get(&format!("http://127.0.0.1:{admin}/metrics")).await;
        if sample(&metrics, "wasmtp_connections_open") == Some(0.0) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "a connection stays open: {metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Five plugins, as a real deployment might run them.
fn five_plugins() -> String {
    [
        ("ratelimit", wasm::RATE_LIMITER, ""),
        ("rewriter", wasm::ADDRESS_REWRITER, ""),
        ("guard", wasm::CONTENT_GUARD, ""),
        ("stamper", wasm::HEADER_STAMPER, "[plugins.config]\nadd = { \"X-Filtered-By\" = \"wasmtp\" }\n"),
        ("bouncer", wasm::SDK_EXAMPLE, ""),
    ]
    .iter()
    .map(|(name, path, config)| format!("[[plugins]]\nname = \"{name}\"\npath = {path:?}\n{config}"))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_reloads_in_a_row_leak_neither_memory_nor_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = binary_config(dir.path(), port, admin, "", &five_plugins());
    let bin = Binary::start_config(&config, dir.path(), &[], port).await;
    let config = config.to_str().unwrap();
    let mut sent = 0;
    let reload_and_send = async |sent: &mut usize| {
        let mark = bin.log_len();
        let out = wasmtp(&["reload", "--config", config]).await;
        assert!(out.status.success(), "{out:?}");
        let mut c = bin.client().await;
        c.greet().await;
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &mail("reload")).await.code, 250);
        c.cmd("QUIT", 221).await;
        c.closed().await;
        no_open_connections(admin).await;
        *sent += 1;
        // The generation before is freed once nothing uses it.
        bin.wait_for_log("generation released", mark).await;
    };
    // Warm up: allocator arenas, the pools of the first reloads.
    for _ in 0..3 {
        reload_and_send(&mut sent).await;
    }
    let (rss, fds) = (rss_kib(bin.pid()), open_fds(bin.pid()));
    for _ in 0..10 {
        reload_and_send(&mut sent).await;
    }
    let (rss_after, fds_after) = (rss_kib(bin.pid()), open_fds(bin.pid()));
    println!("10 reloads with 5 plugins: RSS {rss} -> {rss_after} KiB, descriptors {fds} -> {fds_after}");
    assert_eq!(fds_after, fds, "file descriptors leak across reloads");
    assert!(rss_after < rss + 8 * 1024, "RSS grew from {rss} to {rss_after} KiB over 10 reloads");
    assert_eq!(delivered(dir.path()).len(), sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_as_root_it_serves_as_nobody_and_the_compile_cache_still_works() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: dropping privileges needs the test to run as root");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    // The unprivileged user must be able to reach its files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (port, admin) = (free_port(), free_port());
    let plugins = format!("[[plugins]]\nname = \"stamper\"\npath = {:?}\n", wasm::HEADER_STAMPER);
    let extra = "user = \"nobody\"\npid_file = \"wasmtp.pid\"";
    let config = binary_config(dir.path(), port, admin, extra, &plugins);
    let bin = Binary::start_config(&config, dir.path(), &[], port).await;

    let status = std::fs::read_to_string(format!("/proc/{}/status", bin.pid())).unwrap();
    let ids = |field: &str| status.lines().find(|l| l.starts_with(field)).unwrap().to_string();
    let nobody = nix_user("nobody");
    assert_eq!(ids("Uid:").split_whitespace().skip(1).collect::<Vec<_>>(), vec![nobody.0.as_str(); 4]);
    assert_eq!(ids("Gid:").split_whitespace().skip(1).collect::<Vec<_>>(), vec![nobody.1.as_str(); 4]);
    assert_eq!(std::fs::read_to_string(dir.path().join("wasmtp.pid")).unwrap().trim(), bin.pid().to_string());

    let mut c = bin.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &mail("as nobody")).await.code, 250);
    c.cmd("QUIT", 221).await;
    assert_eq!(delivered(dir.path()).len(), 1);

    // A reload runs as nobody and loads the plugin from the cache root compiled it into.
    let mark = bin.log_len();
    let out = wasmtp(&["reload", "--config", config.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    let loaded = bin.wait_for_log("plugin loaded", mark).await;
    assert!(loaded.contains("origin=\"cache\""), "{loaded}");
}

/// `(uid, gid)` of a user, from the password database.
fn nix_user(name: &str) -> (String, String) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let fields: Vec<_> = passwd.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap().split(':').collect();
    (fields[2].to_string(), fields[3].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_reloading_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&socket_path).unwrap();
    let (port, admin) = (free_port(), free_port());
    let config = binary_config(dir.path(), port, admin, "", "");
    let bin =
        Binary::start_config(&config, dir.path(), &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())], port).await;
    let mut buf = vec![0u8; 4096];
    let mut next = async || {
        let n = tokio::time::timeout(WAIT, socket.recv(&mut buf)).await.expect("a notification").unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert_eq!(next().await, "READY=1\n");
    bin.signal(libc::SIGHUP);
    let reloading = next().await;
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading}");
    assert_eq!(next().await, "READY=1\n");
    bin.signal(libc::SIGTERM);
    assert_eq!(next().await, "STOPPING=1\n");
}

#[tokio::test]
async fn check_config_fails_naming_the_field_and_never_says_ok() {
    let dir = tempfile::tempdir().unwrap();
    let check = async |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = wasmtp(&["check-config", path.to_str().unwrap()]).await;
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!stdout.lines().any(|l| l == "ok"), "{name}: {stdout}");
        assert!(!out.status.success(), "{name}");
        stderr.into_owned()
    };
    let err = check("spool.toml", "[server]\nspool_dir = \"/nonexistent/spool\"\n").await;
    assert!(err.contains("server.spool_dir") && err.contains("not a directory"), "{err}");
    let err = check("plugin.toml", "[[plugins]]\nname = \"gone\"\npath = \"/nonexistent/gone.wasm\"\n").await;
    assert!(err.contains("plugins[0]") && err.contains("cannot read the plugin file"), "{err}");
    std::fs::write(dir.path().join("garbage.pem"), "not a certificate\n").unwrap();
    let garbage = format!(
        "[tls]\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n",
        dir.path().join("garbage.pem"),
        dir.path().join("garbage.pem")
    );
    let err = check("cert.toml", &garbage).await;
    assert!(err.contains("tls.certificates[0]") && err.contains("garbage.pem"), "{err}");
    let err = check("user.toml", "[server]\nuser = \"no-such-user-here\"\n").await;
    assert!(err.contains("server.user"), "{err}");
    let err = check("maildir.toml", "[upstream]\nurl = \"maildir:/proc/mail\"\n").await;
    assert!(err.contains("upstream.url"), "{err}");

    // And `ok` when everything passes, last.
    let path = dir.path().join("good.toml");
    std::fs::write(&path, format!("[server]\nspool_dir = {:?}\n", dir.path())).unwrap();
    let out = wasmtp(&["check-config", path.to_str().unwrap()]).await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().last(), Some("ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_give_named_fields_for_transactions_and_plugin_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let plugins =
        format!("[[plugins]]\nname = \"bouncer\"\npath = {:?}\n[log]\nformat = \"json\"\n", wasm::SDK_EXAMPLE);
    let config = binary_config(dir.path(), port, admin, "", &plugins);
    let bin = Binary::start_config(&config, dir.path(), &[], port).await;
    let mut c = bin.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &mail("logged")).await.code, 250);
    c.cmd("MAIL FROM:<x@spam.example>", 550).await;
    c.cmd("QUIT", 221).await;
    let line = bin.wait_for_log("\"transaction\"", 0).await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &event["fields"];
    assert_eq!(fields["outcome"], "delivered", "{line}");
    assert_eq!(fields["sender"], "<a@example.org>");
    assert!(fields["queue_id"].as_str().is_some_and(|id| id.len() > 5 && id != "-"), "{line}");
    assert!(fields["duration_ms"].is_u64());
    let line = bin.wait_for_log("\"verdict\":\"reject\"", 0).await;
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let fields = &event["fields"];
    assert_eq!(fields["message"], "plugin decision");
    assert_eq!(fields["plugin"], "bouncer");
    assert_eq!(fields["version"], "1.0.0");
    assert_eq!(fields["stage"], "mail");
    assert!(fields["latency_us"].is_u64(), "{line}");
    assert!(fields["reply"].as_str().unwrap().starts_with("550 "), "{line}");
    assert!(!bin.log().contains("Reply {") && !bin.log().contains("Mailbox("), "no Debug structs in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_starts_under_an_8_gib_address_space_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(dir.path().join("quickstart.toml"), quickstart_toml()).unwrap();
    let listen = format!("127.0.0.1:{port}");
    let command = format!("ulimit -v 8388608 && exec {} \"$@\"", env!("CARGO_BIN_EXE_wasmtp"));
    let mut child = Command::new("bash")
        .args(["-c", &command, "wasmtp", "serve", "--config", "quickstart.toml", "--listen", &listen])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut log = tokio::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let started = tokio::time::timeout(WAIT, async {
        let mut line = String::new();
        while log.read_line(&mut line).await.unwrap() > 0 {
            seen.push_str(&line);
            if line.contains("accepting connections") {
                return true;
            }
            line.clear();
        }
        false
    })
    .await
    .expect("starts within the bound");
    assert!(started, "the quickstart did not start under ulimit -v 8388608:\n{seen}");
    assert!(seen.contains("instance pool"), "the instance pool fits: {seen}");
    let pid = child.id().unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| status.lines().find(|l| l.starts_with(name)).unwrap().to_string();
    println!("quickstart at start: {} {}", field("VmSize:"), field("VmRSS:"));
    let mut c = Client::connect(([127, 0, 0, 1], port).into()).await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.org"], &mail("under a limit")).await.code, 250);
    c.cmd("QUIT", 221).await;
    tokio::spawn(async move { while log.read_line(&mut String::new()).await.is_ok_and(|n| n > 0) {} });
}
