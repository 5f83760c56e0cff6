//! Sender authentication against a real DNS server on loopback (dnsmasq with the test zones of
//! support/dns.rs): SPF, DKIM, DMARC, ARC and iprev as plugins see them, the
//! Authentication-Results header, DKIM signing after plugin edits, and a dead DNS server.

use std::time::{Duration, Instant};

use mail_auth::arc::ArcSealer;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::{AuthenticatedMessage, AuthenticationResults, DkimResult, MessageAuthenticator};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};
use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::dns::{CLIENT_IP, TestDns};
use crate::support::*;

fn key_path(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/dkim/").to_string() + name
}

fn rsa_key() -> RsaKey<Sha256> {
    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_file(key_path("rsa.pem")).unwrap()).unwrap()
}

fn ed_key() -> Ed25519Key {
    let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_file(key_path("ed25519.pem")).unwrap() else { panic!() };
    Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der()).unwrap()
}

fn sign_rsa(message: &str, domain: &str, canonicalization: Canonicalization) -> String {
    let signature = DkimSigner::from_key(rsa_key())
        .domain(domain)
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .header_canonicalization(canonicalization)
        .body_canonicalization(canonicalization)
        .sign(message.as_bytes())
        .unwrap();
    format!("{}{message}", signature.to_header())
}

fn sign_ed(message: &str) -> String {
    let signature = DkimSigner::from_key(ed_key())
        .domain("example.org")
        .selector("ed")
        .headers(["From", "To", "Subject"])
        .sign(message.as_bytes())
        .unwrap();
    format!("{}{message}", signature.to_header())
}

fn authenticator(dns: &TestDns) -> MessageAuthenticator {
    let mut server = NameServerConfig::udp_and_tcp(dns.addr.ip());
    for c in &mut server.connections {
        c.port = dns.addr.port();
    }
    MessageAuthenticator::new(ResolverConfig::from_name_servers(vec![server]), ResolverOpts::default()).unwrap()
}

/// A proxy with authentication on, the auth-echo fixture, and `more` plugins after it.
async fn auth_proxy(
    dns: &TestDns,
    more: Vec<wasmtp::config::PluginConfig>,
    tweak: impl FnOnce(&mut wasmtp::Config),
) -> (TestProxy, Recorder) {
    let mut plugins = vec![plugin("echo", wasm::AUTH_ECHO, json!({}))];
    plugins.extend(more);
    let mut config = with_plugins(plugins);
    config.auth.enabled = true;
    config.auth.nameservers = vec![dns.addr];
    config.auth.dns_timeout = Duration::from_secs(2);
    tweak(&mut config);
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(config, &up.url()).await;
    (proxy, up)
}

/// The X-Auth-Seen value of a relayed message.
fn seen(m: &crate::support::recorder::Message) -> String {
    let text = String::from_utf8_lossy(&m.wire).into_owned();
    let line =
        text.lines().find(|l| l.starts_with("X-Auth-Seen: ")).unwrap_or_else(|| panic!("no X-Auth-Seen in {text}"));
    line["X-Auth-Seen: ".len()..].to_string()
}

fn plain(from: &str, subject: &str) -> String {
    format!("From: {from}\r\nTo: rcpt@example.net\r\nSubject: {subject}\r\n\r\nHello.\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_for_helo_and_mail_from_as_a_plugin_sees_it() {
    let dns = TestDns::start().await;
    let (proxy, up) = auth_proxy(&dns, vec![], |_| {}).await;
    let cases = [
        ("example.org", "pass"),
        ("fail.example", "fail"),
        ("soft.example", "softfail"),
        ("neutral.example", "neutral"),
        ("nospf.example", "none"),
        ("perm.example", "permerror"),
        ("include.example", "pass"),
        ("redirect.example", "pass"),
        ("macro.example", "pass"),
        ("loop.example", "permerror"),
        ("temp.example", "temperror"),
    ];
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;
    for (domain, _) in &cases {
        let message = stuff(plain(&format!("a@{domain}"), domain).as_bytes());
        let reply = c.send_mail(&format!("a@{domain}"), &["rcpt@example.net"], &message).await;
        assert_eq!(reply.code, 250, "{domain}: {reply:?}");
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let msgs = up.messages();
    for ((domain, result), m) in cases.iter().zip(&msgs) {
        let seen = seen(m);
        assert!(seen.contains("spf-helo=pass(mail.example.org)"), "{seen}");
        assert!(seen.contains(&format!("spf-mail={result}({domain})")), "{domain}: {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_signatures_are_verified() {
    let dns = TestDns::start().await;
    let (proxy, up) = auth_proxy(&dns, vec![], |_| {}).await;
    let base = plain("a@example.org", "signed");
    let relaxed = sign_rsa(&base, "example.org", Canonicalization::Relaxed);
    let simple = sign_rsa(&base, "example.org", Canonicalization::Simple);
    let ed = sign_ed(&base);
    let body_changed = relaxed.replace("Hello.", "Hello!");
    let header_changed = relaxed.replace("Subject: signed", "Subject: altered");
    let no_key = relaxed.replace("s=sel;", "s=nokey;");
    let malformed = format!("DKIM-Signature: v=1; a=rsa-sha256; d=; b=!!!\r\n{base}");
    let cases = [
        (relaxed, "dkim=pass(example.org/sel)"),
        (simple, "dkim=pass(example.org/sel)"),
        (ed, "dkim=pass(example.org/ed)"),
        (body_changed, "dkim=fail(example.org/sel)"),
        (header_changed, "dkim=fail(example.org/sel)"),
        (no_key, "dkim=permerror(example.org/nokey)"),
        (malformed, "dkim=permerror(/)"),
        (base.clone(), "dkim=-"),
    ];
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;
    for (message, _) in &cases {
        let reply = c.send_mail("a@example.org", &["rcpt@example.net"], &stuff(message.as_bytes())).await;
        assert_eq!(reply.code, 250, "{reply:?}");
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    for ((_, expected), m) in cases.iter().zip(&up.messages()) {
        let seen = seen(m);
        assert!(seen.contains(expected), "expected {expected} in {seen}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_alignment_policy_and_subdomains_with_auth_policy() {
    let dns = TestDns::start().await;
    let quarantine = tempfile::tempdir().unwrap();
    let qdir = quarantine.path().to_path_buf();
    let policy = plugin("auth-policy", wasm::AUTH_POLICY, json!({}));
    let (proxy, up) = auth_proxy(&dns, vec![policy], move |c| c.sandbox.quarantine = qdir).await;
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;

    // Aligned: From example.org, DKIM d=example.org.
    let aligned = sign_rsa(&plain("a@example.org", "aligned"), "example.org", Canonicalization::Relaxed);
    assert_eq!(c.send_mail("bounce@other.example", &["r@example.net"], &stuff(aligned.as_bytes())).await.code, 250);
    // Misaligned: From example.org but signed by other.example and sent from other.example.
    let misaligned = sign_rsa(&plain("a@example.org", "misaligned"), "other.example", Canonicalization::Relaxed);
    let r = c.send_mail("bounce@other.example", &["r@example.net"], &stuff(misaligned.as_bytes())).await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().contains("5.7.1") && r.text().contains("DMARC policy of example.org"), "{r:?}");
    // A subdomain without a record gets the organisational domain's sp=quarantine.
    let sub = plain("x@sub.example.org", "subdomain");
    assert_eq!(c.send_mail("x@sub.example.org", &["r@example.net"], &stuff(sub.as_bytes())).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let msgs = up.messages();
    assert_eq!(
        msgs.len(),
        1,
        "only the aligned message went upstream: {:?}",
        msgs.iter().map(seen).collect::<Vec<_>>()
    );
    assert!(seen(&msgs[0]).contains("dmarc=pass(example.org,reject,dkim)"), "{}", seen(&msgs[0]));
    let stored: Vec<_> = std::fs::read_dir(quarantine.path().join("new")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(stored.len(), 1);
    let q = std::fs::read_to_string(&stored[0]).unwrap();
    assert!(q.contains("dmarc=fail(sub.example.org,quarantine,unaligned)"), "{q}");
    assert!(q.contains("X-Wasmtp-Quarantine: auth-policy: DMARC policy of sub.example.org asks for quarantine"), "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arc_chains_valid_and_broken() {
    let dns = TestDns::start().await;
    let checker = authenticator(&dns);
    let original = sign_rsa(&plain("a@example.org", "forwarded"), "example.org", Canonicalization::Relaxed);
    let parsed = AuthenticatedMessage::parse(original.as_bytes()).unwrap();
    let arc = checker.verify_arc(&parsed).await;
    let dkim = checker.verify_dkim(&parsed).await;
    assert!(matches!(dkim[0].result(), DkimResult::Pass));
    let results = AuthenticationResults::new("forwarder.example").with_dkim_results(&dkim, "a@example.org");
    let set = ArcSealer::from_key(rsa_key())
        .domain("example.org")
        .selector("sel")
        .headers(["From", "To", "Subject", "DKIM-Signature"])
        .seal(&parsed, &results, &arc)
        .unwrap();
    let sealed = format!("{}{original}", set.to_header());
    let broken = sealed.replace("Hello.", "Hello, changed after sealing.");

    let (proxy, up) = auth_proxy(&dns, vec![], |_| {}).await;
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;
    for message in [&sealed, &broken] {
        assert_eq!(c.send_mail("a@example.org", &["r@example.net"], &stuff(message.as_bytes())).await.code, 250);
    }
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let msgs = up.messages();
    assert!(seen(&msgs[0]).contains("arc=pass"), "{}", String::from_utf8_lossy(&msgs[0].wire));
    assert!(seen(&msgs[1]).contains("arc=fail"), "{}", seen(&msgs[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_signature_after_plugin_edits_verifies_at_the_upstream_and_results_are_stamped() {
    let dns = TestDns::start().await;
    let stamper = plugin("stamper", wasm::HEADER_STAMPER, json!({"add": {"X-Stamped": "yes"}}));
    let (proxy, up) = auth_proxy(&dns, vec![stamper], |c| {
        c.auth.authserv_id = Some("mx.example.org".into());
        c.auth.sign = Some(wasmtp::config::DkimSignConfig {
            domain: "example.org".into(),
            selector: "proxy".into(),
            key_file: key_path("proxy-rsa.pem").into(),
            algorithm: wasmtp::config::SignAlgorithm::Rsa,
            headers: vec!["From".into(), "To".into(), "Subject".into(), "X-Stamped".into()],
        });
    })
    .await;
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;
    let forged = "Authentication-Results: mx.example.org; spf=pass smtp.mailfrom=evil@example.org\r\n\
                  Authentication-Results: other.example; spf=none\r\n";
    let message = format!("{forged}{}", plain("a@example.org", "to be signed"));
    assert_eq!(c.send_mail("a@example.org", &["r@example.net"], &stuff(message.as_bytes())).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let relayed = unstuff(&up.messages()[0].wire);
    let text = String::from_utf8_lossy(&relayed).into_owned();
    assert!(text.starts_with("DKIM-Signature: "), "{text}");
    assert!(text.contains("X-Stamped: yes\r\n"), "{text}");
    assert!(!text.contains("spf=pass smtp.mailfrom=evil@example.org"), "forged results removed: {text}");
    assert!(text.contains("Authentication-Results: other.example; spf=none"), "foreign results kept: {text}");
    let ours = text.split("Authentication-Results: mx.example.org;").nth(1).expect("our Authentication-Results");
    for part in ["iprev=", "spf=pass", "arc=none", "dmarc=pass"] {
        assert!(ours.split("\r\n\r\n").next().unwrap().contains(part), "{part} in {ours}");
    }
    // Verified the way any receiver would: against the published key.
    let parsed = AuthenticatedMessage::parse(&relayed).unwrap();
    let dkim = authenticator(&dns).verify_dkim(&parsed).await;
    let ours: Vec<_> = dkim.iter().filter(|d| d.signature().is_some_and(|s| s.s == "proxy")).collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(ours[0].result(), &DkimResult::Pass, "{dkim:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_dns_server_gives_temperror_within_the_timeout() {
    let dead: std::net::SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut config = with_plugins(vec![
        plugin("echo", wasm::AUTH_ECHO, json!({})),
        plugin("auth-policy", wasm::AUTH_POLICY, json!({})),
    ]);
    config.auth.enabled = true;
    config.auth.nameservers = vec![dead];
    config.auth.dns_timeout = Duration::from_millis(300);
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(config, &up.url()).await;
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await; // after iprev gave up
    c.cmd("EHLO mail.example.org", 250).await;
    let started = Instant::now();
    let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
    assert!(r.text().contains("4.7.24"), "auth-policy tempfails on SPF temperror: {r:?}");
    // Two SPF checks (HELO and MAIL FROM), each bounded by the 300 ms DNS budget.
    assert!(started.elapsed() < Duration::from_secs(2), "two checks of 300 ms took {:?}", started.elapsed());
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert!(up.messages().is_empty());
}

/// iprev over loopback: the resolver answers PTR queries for 127.0.0.0/8 with `localhost` itself
/// (RFC 6761 §6.3), whatever a DNS server says, and `localhost` resolves to 127.0.0.1 only. So a
/// client on 127.0.0.1 passes (and gets a verified client name) and one on 127.0.0.2 fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iprev_passes_only_when_the_ptr_name_resolves_back() {
    let dns = TestDns::start().await;
    let (proxy, up) = auth_proxy(&dns, vec![], |_| {}).await;
    for ip in ["127.0.0.1", "127.0.0.2"] {
        let mut c = Client::connect_from(proxy.addr, ip.parse().unwrap()).await;
        c.expect(220).await;
        c.cmd("EHLO mail.example.org", 250).await;
        let message = stuff(plain("a@example.org", ip).as_bytes());
        assert_eq!(c.send_mail("a@example.org", &["r@example.net"], &message).await.code, 250);
        c.cmd("QUIT", 221).await;
    }
    proxy.stop().await;
    let msgs = up.messages();
    assert!(seen(&msgs[0]).contains("iprev=pass(localhost)") && seen(&msgs[0]).contains("client-name=localhost"));
    assert!(seen(&msgs[1]).contains("iprev=fail(localhost)") && !seen(&msgs[1]).contains("client-name="));
}

/// Anonymous memory (heap) of a process, in KiB.
fn rss_anon_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).expect("RssAnon in /proc status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_large_messages_keeps_the_heap_bounded() {
    const MESSAGES: usize = 20;
    const SIZE: usize = 40 << 20;
    let dns = TestDns::start().await;
    let sink = SmtpSink::discarding().await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wasmtp.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"proxy.test\"\nspool_dir = {spool:?}\n\
             [upstream]\nurl = \"{}\"\n[auth]\nenabled = true\nnameservers = [\"{}\"]\n[log]\nlevel = \"warn\"\n",
            sink.url(),
            dns.addr,
            spool = dir.path().display().to_string(),
        ),
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtp"))
        .args(["serve", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(Instant::now() < deadline, "wasmtp did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // One DKIM-signed 40 MiB message, so every session verifies a body hash over all of it.
    let mut body = String::with_capacity(SIZE);
    while body.len() < SIZE {
        body.push_str("a line of a large attachment, base64 or not, it does not matter here....\r\n");
    }
    let message =
        sign_rsa(&format!("{}{body}", plain("a@example.org", "large")), "example.org", Canonicalization::Relaxed);
    let wire = std::sync::Arc::new(stuff(message.as_bytes()));
    let baseline = rss_anon_kib(pid);
    let sessions: Vec<_> = (0..MESSAGES)
        .map(|_| {
            let wire = wire.clone();
            tokio::spawn(async move {
                let mut c = Client::connect(addr).await;
                c.greet().await;
                // Twenty 40 MiB body hashes on two cores in an unoptimised build: the reply
                // gets the whole test's bound, not the default per-reply one (this test is
                // about memory, not speed).
                let r =
                    c.send_mail_within("a@example.org", &["rcpt@example.net"], &wire, Duration::from_secs(120)).await;
                c.cmd("QUIT", 221).await;
                r.code
            })
        })
        .collect();
    let mut peak = baseline;
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    for session in sessions {
        let mut session = session;
        loop {
            peak = peak.max(rss_anon_kib(pid));
            match tokio::time::timeout(Duration::from_millis(20), &mut session).await {
                Ok(code) => {
                    done.push(code.unwrap());
                    break;
                }
                Err(_) => assert!(Instant::now() < deadline, "sessions did not finish"),
            }
        }
    }
    assert_eq!(done, vec![250; MESSAGES]);
    let grown_mib = (peak.saturating_sub(baseline)) as f64 / 1024.0;
    println!("heap grew by {grown_mib:.1} MiB for {MESSAGES} concurrent verifications of 40 MiB messages");
    // The documented bound: per message in flight, `limits.memory_buffer` (1 MiB) plus the
    // header section and I/O buffers; a copy of each message would be 800 MiB here.
    assert!(grown_mib < (MESSAGES * 4) as f64, "heap grew by {grown_mib:.1} MiB");
    child.kill().await.unwrap();
}

/// A recording keeps every authentication result a stage saw, so a replay of the same plugins
/// decides the same: auth-echo's header lists every result, so one missing would differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_sessions_replay_with_the_authentication_results_they_had() {
    use wasmtp::harness::replay::{Chains, replay};

    let dns = TestDns::start().await;
    let recordings = tempfile::tempdir().unwrap();
    let quarantine = tempfile::tempdir().unwrap();
    let (dir, qdir) = (recordings.path().to_path_buf(), quarantine.path().to_path_buf());
    let policy = || plugin("auth-policy", wasm::AUTH_POLICY, json!({}));
    let (proxy, _up) = auth_proxy(&dns, vec![policy()], move |c| {
        c.record.dir = Some(dir);
        c.sandbox.quarantine = qdir;
    })
    .await;
    let mut c = Client::connect_from(proxy.addr, CLIENT_IP).await;
    c.expect(220).await;
    c.cmd("EHLO mail.example.org", 250).await;
    let aligned = sign_rsa(&plain("a@example.org", "aligned"), "example.org", Canonicalization::Relaxed);
    assert_eq!(c.send_mail("a@example.org", &["r@example.net"], &stuff(aligned.as_bytes())).await.code, 250);
    let misaligned = sign_rsa(&plain("a@example.org", "misaligned"), "other.example", Canonicalization::Relaxed);
    assert_eq!(c.send_mail("bounce@other.example", &["r@example.net"], &stuff(misaligned.as_bytes())).await.code, 550);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let records = wasmtp::session::record::read_dir(recordings.path()).unwrap();
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert!(record.auth.iprev.is_some() && record.auth.spf_helo.is_some(), "{record:#?}");
    assert_eq!(record.transactions.len(), 2);
    for txn in &record.transactions {
        assert!(txn.auth.spf_mail.is_some() && !txn.auth.dkim.is_empty() && txn.auth.dmarc.is_some(), "{txn:#?}");
    }
    let echoed = record.transactions[0].decisions.iter().find(|d| d.plugin == "echo" && d.stage == "data");
    assert!(echoed.is_some_and(|d| d.decision.contains("dmarc=pass(example.org")), "{record:#?}");

    let config = with_plugins(vec![plugin("echo", wasm::AUTH_ECHO, json!({})), policy()]);
    let (chain, _) = wasmtp::wasm::load(&config).await.unwrap();
    let replayed = replay(&Chains::new(chain, &config), recordings.path(), &records).await.unwrap();
    assert!(replayed.differences.is_empty(), "{:#?}", replayed.differences);
    assert!(replayed.decisions >= 6, "{}", replayed.summary());
}
