//! Several proxies behind one balancer: plugin state shared in a real `redis-server`, per-plugin
//! key-value quotas, PROXY protocol headers (raw, and from a real HAProxy), node ids.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::redis::RedisServer;
use crate::support::*;

/// A configuration file for a proxy process with a Maildir upstream in `dir`.
fn proxy_config(dir: &Path, port: u16, node: &str, redis: &str, plugins: &str) -> PathBuf {
    let path = dir.join("wasmtp.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"proxy.test\"\nnode_id = \"{node}\"\n\
         [upstream]\nurl = \"maildir:mail\"\n[kv]\nbackend = \"{redis}\"\n\
         [sandbox]\ncache_dir = {:?}\n{plugins}",
        shared_compile_cache()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn delivered(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir.join("mail/new")) {
        Ok(entries) => entries.map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap()).collect(),
        Err(_) => Vec::new(),
    }
}

fn mail(subject: &str) -> Vec<u8> {
    stuff(format!("Subject: {subject}\r\n\r\nbody\r\n").as_bytes())
}

/// The MAIL reply a client gets from a fresh session.
async fn mail_code(addr: SocketAddr) -> u16 {
    let mut c = Client::connect(addr).await;
    c.greet().await;
    c.send("MAIL FROM:<a@example.org>\r\n").await;
    let code = c.reply().await.code;
    c.send("QUIT\r\n").await;
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_share_one_rate_limit_and_one_store_in_redis() {
    let redis = RedisServer::start().await;
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let limiter = format!(
        "[[plugins]]\nname = \"ratelimit\"\npath = {:?}\n[plugins.config]\nlimit = 10\nwindow_secs = 2\n",
        wasm::RATE_LIMITER
    );
    let shared = |kv: &str| {
        format!(
            "[[plugins]]\nname = \"shared\"\npath = {:?}\n[plugins.config.manifest]\nstages = [\"data\"]\n\
             [plugins.config.stages.data.kv]\n{kv}\n",
            wasm::SCRIPTED
        )
    };
    let (port_a, port_b) = (free_port(), free_port());
    let config_a = proxy_config(
        a.path(),
        port_a,
        "node-a",
        &redis.url(),
        &(limiter.clone() + &shared("set = [\"greeting\", \"from A\"]")),
    );
    let config_b = proxy_config(b.path(), port_b, "node-b", &redis.url(), &(limiter + &shared("read = \"greeting\"")));
    let proxy_a = Binary::start_config(&config_a, a.path(), &[], port_a).await;
    let proxy_b = Binary::start_config(&config_b, b.path(), &[], port_b).await;
    let addrs: [SocketAddr; 2] = [([127, 0, 0, 1], port_a).into(), ([127, 0, 0, 1], port_b).into()];

    // 20 messages from one client address, alternating between the proxies: 10 pass in all.
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(mail_code(addrs[i % 2]).await);
    }
    assert_eq!(codes.iter().filter(|&&c| c == 250).count(), 10, "{codes:?}");
    assert!(codes[10..].iter().all(|&c| c == 450), "the 11th and later are tempfailed: {codes:?}");
    // The counter lives in Redis, with the window as its TTL.
    let key = "wasmtp:{ratelimit}:v:ip:127.0.0.1";
    assert_eq!(redis.cli(&["GET", key]), "20");
    let pttl: i64 = redis.cli(&["PTTL", key]).parse().unwrap();
    assert!(pttl > 0 && pttl <= 2000, "PTTL {pttl}");
    // Redis expires the counter, and the next message passes.
    let deadline = Instant::now() + WAIT;
    while redis.cli(&["EXISTS", key]) != "0" {
        assert!(Instant::now() < deadline, "the counter never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(mail_code(addrs[1]).await, 250);

    // A value stored through one proxy is read through the other.
    let mut c = Client::connect(addrs[0]).await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["x@example.net"], &mail("via A")).await.code, 250);
    let mut c = Client::connect(addrs[1]).await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["x@example.net"], &mail("via B")).await.code, 250);
    let seen_a = delivered(a.path()).concat();
    assert!(seen_a.contains("X-Scripted-KV: read=- stored=1 refused=0 error=-"), "{seen_a}");
    let seen_b = delivered(b.path()).concat();
    assert!(seen_b.contains("X-Scripted-KV: read=from A stored=0"), "{seen_b}");
    // Session ids carry the node id, so logs from both proxies can be merged.
    assert!(seen_a.contains("id node-a-") && seen_b.contains("id node-b-"), "{seen_a}\n{seen_b}");
    assert!(proxy_a.log().contains("id=node-a-"), "{}", proxy_a.log());
    drop((proxy_a, proxy_b));
}

/// Plugins of both contract versions on Redis: `reader` (0.2) reads and stores a value,
/// `legacy` (0.1) counts messages.
fn redis_chain(redis: &str) -> wasmtp::Config {
    let reader = plugin(
        "reader",
        wasm::SCRIPTED,
        json!({"manifest": {"stages": ["data"]}, "stages": {"data": {"kv": {"set": ["k", "v"], "read": "k"}}}}),
    );
    let mut config = with_plugins(vec![reader, plugin("legacy", wasm::LEGACY_V0_1, json!({}))]);
    config.kv.backend = Some(redis.to_string());
    config
}

/// Sends one message and returns the reply to its end of data and how long that took.
async fn send_timed(proxy: &TestProxy, subject: &str) -> (u16, Duration) {
    let mut c = proxy.client().await;
    c.greet().await;
    let started = Instant::now();
    let code = c.send_mail("a@example.org", &["x@example.net"], &mail(subject)).await.code;
    let elapsed = started.elapsed();
    c.send("QUIT\r\n").await;
    (code, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_each_plugins_decision_and_kv_recovers_without_a_restart() {
    let mut redis = RedisServer::start().await;
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_admin(redis_chain(&redis.url()), &up.url()).await;
    let budget = wasmtp::config::PluginLimits::default().data_time;

    assert_eq!(send_timed(&proxy, "up").await.0, 250);
    let first = String::from_utf8_lossy(&up.messages()[0].wire).into_owned();
    assert!(
        first.contains("X-Scripted-KV: read=v stored=1 refused=0") && first.contains("X-Legacy: 0.1 message 1"),
        "{first}"
    );

    // Killed: the 0.2 plugin gets an error it reports; the 0.1 plugin's counter cannot count,
    // so its call fails and its on_error policy (tempfail) answers.
    redis.kill();
    let (code, elapsed) = send_timed(&proxy, "down").await;
    assert_eq!(code, 451, "legacy's on_error = tempfail");
    assert!(elapsed < budget, "{elapsed:?}");
    // Frozen (accepting connections, answering nothing): calls give up at [kv] timeout.
    redis.restart().await;
    assert_eq!(send_timed(&proxy, "back").await.0, 250, "kv works again without restarting wasmtp");
    redis.freeze(true);
    let (code, elapsed) = send_timed(&proxy, "frozen").await;
    redis.freeze(false);
    assert_eq!(code, 451);
    assert!(elapsed < budget, "nothing waits past the plugin's budget: {elapsed:?}");
    assert_eq!(send_timed(&proxy, "thawed").await.0, 250);

    let (_, metrics) = http_get(&format!("{}/metrics", proxy.admin_url())).await;
    let failures = |plugin: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("wasmtp_kv_failures_total") && l.contains(&format!("plugin=\"{plugin}\"")))
            .filter(|l| l.contains("reason=\"unavailable\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum::<u64>()
    };
    assert!(failures("reader") >= 2 && failures("legacy") >= 2, "{metrics}");
    proxy.stop().await;
    let relayed: Vec<String> = up.messages().iter().map(|m| String::from_utf8_lossy(&m.wire).into_owned()).collect();
    assert_eq!(relayed.len(), 3, "up, back and thawed; the others were tempfailed");
    // The restarted Redis keeps nothing (the test runs it without persistence): counting
    // starts over there, and goes on in it.
    assert!(relayed[1].contains("X-Legacy: 0.1 message 1"), "{}", relayed[1]);
    // The count sent to the frozen Redis was made when it thawed, although the plugin had
    // given up on it: a write that timed out may still have happened.
    assert!(relayed[2].contains("X-Legacy: 0.1 message 3"), "{}", relayed[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_is_verified_against_the_configured_ca() {
    let certs = crate::support::certs::TestCerts::new();
    let redis = RedisServer::start_tls(certs.leaf("127.0.0.1"), certs.ca.clone()).await;
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let up = Recorder::start(Script::default()).await;
    let mut config = redis_chain(&url);
    config.kv.tls_ca_file = Some(certs.ca.clone());
    // The first operation opens the connection, TLS handshake included, which an unoptimised
    // build on a busy machine can take longer over than the default budget; this test is
    // about whom the proxy trusts, not how fast.
    config.kv.timeout = Duration::from_secs(2);
    for plugin in &mut config.plugins {
        plugin.limits.data_time = Duration::from_secs(5);
    }
    let proxy = TestProxy::start_with(config, &up.url()).await;
    assert_eq!(send_timed(&proxy, "tls").await.0, 250);
    let relayed = String::from_utf8_lossy(&up.messages()[0].wire).into_owned();
    assert!(relayed.contains("X-Scripted-KV: read=v stored=1 refused=0"), "{relayed}");
    assert_eq!(redis.cli(&["GET", "wasmtp:{reader}:v:k"]), "v", "stored in the TLS server");
    proxy.stop().await;

    // Without the CA the server's certificate is not trusted: kv calls fail, mail does not wait.
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(redis_chain(&url), &up.url()).await;
    let (code, elapsed) = send_timed(&proxy, "untrusted").await;
    assert_eq!(code, 451, "legacy's counter cannot count: on_error = tempfail");
    assert!(elapsed < wasmtp::config::PluginLimits::default().data_time, "{elapsed:?}");
    proxy.stop().await;
}

/// Plugin `filler` writes twenty 64 KiB values per message under a 512 KiB quota; `other`
/// stores one small value.
fn quota_chain() -> wasmtp::Config {
    let mut filler = plugin(
        "filler",
        wasm::SCRIPTED,
        json!({"manifest": {"stages": ["data"]}, "stages": {"data": {"kv": {"fill": {"count": 20, "size": 65536}}}}}),
    );
    filler.limits.kv_bytes = wasmtp::config::ByteSize(512 << 10);
    filler.limits.host_data = wasmtp::config::ByteSize(2 << 20);
    let other = plugin(
        "other",
        wasm::SCRIPTED,
        json!({"manifest": {"stages": ["data"]}, "stages": {"data": {"kv": {"set": ["k", "small"], "read": "k"}}}}),
    );
    with_plugins(vec![filler, other])
}

async fn quota_holds(config: wasmtp::Config) {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_admin(config, &up.url()).await;
    for i in 0..3 {
        assert_eq!(send_timed(&proxy, &format!("fill {i}")).await.0, 250);
    }
    let relayed: Vec<String> = up.messages().iter().map(|m| String::from_utf8_lossy(&m.wire).into_owned()).collect();
    // 7 values of 64 KiB and their keys fit in 512 KiB, with the plugin's two counters
    // (`calls:data` and `fill-sequence`).
    let refusal =
        "stored=7 refused=13 error=KvError::Unavailable(\"key-value quota exceeded: the plugin holds 9 entries";
    assert!(relayed[0].contains(refusal), "{}", relayed[0]);
    assert!(relayed[2].contains("stored=0 refused=20"), "{}", relayed[2]);
    for message in &relayed {
        assert!(message.contains("X-Scripted-KV: read=small stored=1 refused=0"), "other is unaffected: {message}");
    }
    let (_, metrics) = http_get(&format!("{}/metrics", proxy.admin_url())).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("wasmtp_kv_failures_total")
            && l.contains("plugin=\"filler\"")
            && l.contains("reason=\"quota\"")
            && l.ends_with(" 53")),
        "{metrics}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_plugin_at_its_quota_is_refused_in_the_embedded_store_and_others_are_not() {
    quota_holds(quota_chain()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_at_its_quota_is_refused_in_redis_and_others_are_not() {
    let redis = RedisServer::start().await;
    let mut config = quota_chain();
    config.kv.backend = Some(redis.url());
    quota_holds(config).await;
    assert_eq!(redis.cli(&["ZCARD", "wasmtp:{filler}:idx"]), "9", "7 values and two counters");
}

/// A proxy whose one listener expects PROXY headers from `trusted`.
async fn proxied(up: &Recorder, trusted: &str) -> TestProxy {
    let trusted: ipnet::IpNet = trusted.parse().unwrap();
    TestProxy::start_listener(wasmtp::Config::default(), &up.url(), |listener| {
        listener.proxy_protocol = true;
        listener.proxy_trusted = vec![trusted];
    })
    .await
}

fn v2_header(source: &str, destination: &str) -> Vec<u8> {
    let (source, destination): (SocketAddr, SocketAddr) = (source.parse().unwrap(), destination.parse().unwrap());
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (source, destination),
    )
    .build()
    .unwrap()
}

/// Sends `header` (in `pieces` writes) and one message; returns the relayed message.
async fn through_header(proxy: &TestProxy, up: &Recorder, header: &[u8], pieces: usize) -> String {
    let mut c = Client::connect(proxy.addr).await;
    let step = header.len().div_ceil(pieces);
    for chunk in header.chunks(step) {
        c.send(chunk).await;
    }
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["x@example.net"], &mail("proxied")).await.code, 250);
    c.send("QUIT\r\n").await;
    let messages = up.messages();
    String::from_utf8_lossy(&messages.last().unwrap().wire).into_owned()
}

#[tokio::test]
async fn proxy_headers_from_a_trusted_balancer_name_the_real_client() {
    let up = Recorder::start(Script::default()).await;
    let proxy = proxied(&up, "127.0.0.0/8").await;
    let cases: [(&[u8], &str, usize); 5] = [
        (b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n", "[192.0.2.7]", 1),
        (b"PROXY TCP6 2001:db8::7 2001:db8::1 51234 25\r\n", "[IPv6:2001:db8::7]", 1),
        (&v2_header("192.0.2.8:1025", "198.51.100.1:25"), "[192.0.2.8]", 1),
        (&v2_header("[2001:db8::8]:1025", "[2001:db8::1]:25"), "[IPv6:2001:db8::8]", 1),
        // Split across writes: the proxy waits for the rest.
        (b"PROXY TCP4 192.0.2.9 198.51.100.1 51234 25\r\n", "[192.0.2.9]", 4),
    ];
    for (header, client, pieces) in cases {
        let message = through_header(&proxy, &up, header, pieces).await;
        assert!(message.contains(&format!("({client})")), "{client}: {message}");
    }
    // A balancer's health check (v1 UNKNOWN) is the balancer's own connection.
    let message = through_header(&proxy, &up, b"PROXY UNKNOWN\r\n", 1).await;
    assert!(message.contains("([127.0.0.1])"), "{message}");

    // The header and pipelined SMTP in one write: nothing after the header is lost.
    let mut c = Client::connect(proxy.addr).await;
    c.send(b"PROXY TCP4 192.0.2.10 198.51.100.1 51234 25\r\nEHLO client.example\r\n").await;
    c.expect(220).await;
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test]
async fn untrusted_malformed_and_missing_proxy_headers_close_without_a_greeting() {
    let up = Recorder::start(Script::default()).await;
    let logs = Logs::global();
    let proxy = proxied(&up, "127.0.0.0/8").await;
    for bad in [&b"EHLO no-header.example\r\n"[..], b"PROXY TCP4 192.0.2.7 nonsense\r\n", b"PROXY TCP9 1 2 3 4\r\n"] {
        let mut c = Client::connect(proxy.addr).await;
        c.send(bad).await;
        assert_eq!(c.closed().await, b"", "{:?}", String::from_utf8_lossy(bad));
    }
    let mut garbage_v2 = v2_header("192.0.2.8:1025", "198.51.100.1:25");
    garbage_v2[12] = 0x99;
    let mut c = Client::connect(proxy.addr).await;
    c.send(&garbage_v2).await;
    assert_eq!(c.closed().await, b"");
    proxy.stop().await;
    assert!(logs.text().contains("invalid PROXY header"), "the operator sees why");

    // A balancer outside proxy_trusted is not believed, whatever it sends.
    let proxy = proxied(&up, "10.0.0.0/8").await;
    let mut c = Client::connect(proxy.addr).await;
    c.send(b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 25\r\n").await;
    assert_eq!(c.closed().await, b"");
    proxy.stop().await;
    assert!(logs.text().contains("PROXY header from an untrusted peer"));
    assert!(up.messages().is_empty(), "no session reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_haproxy_in_front_passes_the_client_address() {
    let up = Recorder::start(Script::default()).await;
    let proxy = proxied(&up, "127.0.0.1/32").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("haproxy.cfg");
    std::fs::write(
        &config,
        format!(
            "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend smtp\n  bind 127.0.0.1:{port}\n  default_backend wasmtp\n\
             backend wasmtp\n  server proxy {} send-proxy-v2\n",
            proxy.addr
        ),
    )
    .unwrap();
    let mut haproxy = tokio::process::Command::new("/usr/sbin/haproxy")
        .args(["-db", "-f", config.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("haproxy runs (the Debian package `haproxy`; scripts/setup --test installs it)");
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(Instant::now() < deadline, "haproxy did not start listening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The client connects from 127.0.0.2; HAProxy reaches the proxy from 127.0.0.1.
    let mut c = Client::connect_from(([127, 0, 0, 1], port).into(), [127, 0, 0, 2].into()).await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["x@example.net"], &mail("via haproxy")).await.code, 250);
    c.cmd("QUIT", 221).await;
    let message = String::from_utf8_lossy(&up.messages()[0].wire).into_owned();
    assert!(message.contains("([127.0.0.2])"), "{message}");
    let _ = haproxy.kill().await;
    proxy.stop().await;
}

#[tokio::test]
async fn a_proxy_listener_needs_trusted_balancers() {
    let error =
        wasmtp::Config::parse("[[listeners]]\naddress = \"127.0.0.1:2525\"\nproxy_protocol = true\n").unwrap_err();
    assert!(format!("{error:#}").contains("listeners[0].proxy_trusted"), "{error:#}");
    let error = wasmtp::Config::parse("[kv]\nbackend = \"memcached://x\"\n").unwrap_err();
    assert!(format!("{error:#}").contains("kv.backend"), "{error:#}");
}
