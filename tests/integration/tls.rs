//! TLS: STARTTLS on smtp listeners and implicit TLS on submissions listeners with real clients
//! (openssl s_client, swaks, Python's smtplib) and certificates generated here; STARTTLS
//! injection; broken handshakes; SNI; certificate files that cannot be used; AUTH relayed to
//! the upstream; STARTTLS to the upstream.

use std::process::Stdio;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use wasmtp::config::{ListenerMode, UpstreamTls};
use wasmtp_test_artifacts as wasm;

use crate::support::certs::TestCerts;
use crate::support::client::tls_connector;
use crate::support::*;

/// A configuration with the `mx.test` certificate and the auth-echo fixture.
fn tls_config(certs: &TestCerts) -> wasmtp::Config {
    let mut config = with_plugins(vec![plugin("echo", wasm::AUTH_ECHO, json!({}))]);
    config.tls.certificates = vec![certs.leaf("mx.test")];
    config
}

fn header<'a>(wire: &'a str, name: &str) -> &'a str {
    wire.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {wire}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_with_swaks_python_and_openssl_delivers() {
    let certs = TestCerts::new();
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(tls_config(&certs), &up.url()).await;
    let port = proxy.addr.port().to_string();

    let swaks = tokio::process::Command::new("swaks")
        .args(["--server", "127.0.0.1", "--port", &port, "--tls", "--from", "swaks@example.org"])
        .args(["--to", "rcpt@example.net", "--body", "over TLS from swaks", "--hide-all"])
        .output()
        .await
        .expect("swaks runs (scripts/setup --test installs it)");
    assert!(swaks.status.success(), "{}", String::from_utf8_lossy(&swaks.stderr));

    let script = format!(
        "import smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.check_hostname = False\n\
         s = smtplib.SMTP('127.0.0.1', {port}, timeout=20)\n\
         s.starttls(context=ctx)\n\
         s.sendmail('python@example.org', ['rcpt@example.net'], 'Subject: py\\r\\n\\r\\nover TLS from Python\\r\\n')\n\
         s.quit()\n",
        ca = certs.ca.display().to_string()
    );
    let python = tokio::process::Command::new("python3").arg("-c").arg(script).output().await.unwrap();
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));

    // openssl s_client, driven line by line: each command waits for its reply.
    let mut openssl = tokio::process::Command::new("openssl")
        .args(["s_client", "-starttls", "smtp", "-quiet", "-crlf", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-CAfile", &certs.ca.display().to_string(), "-servername", "mx.test", "-verify_return_error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = openssl.stdin.take().unwrap();
    let mut stdout = BufReader::new(openssl.stdout.take().unwrap()).lines();
    let mut exchange = async |line: &str| -> String {
        stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        loop {
            let reply = tokio::time::timeout(WAIT, stdout.next_line()).await.unwrap().unwrap().expect("a reply");
            if reply.as_bytes().get(3) != Some(&b'-') {
                return reply;
            }
        }
    };
    assert!(exchange("EHLO openssl.example").await.starts_with("250 "));
    assert!(exchange("MAIL FROM:<openssl@example.org>").await.starts_with("250 "));
    assert!(exchange("RCPT TO:<rcpt@example.net>").await.starts_with("250 "));
    assert!(exchange("DATA").await.starts_with("354 "));
    assert!(exchange("Subject: openssl\n\nover TLS from openssl\n.").await.starts_with("250 "));
    exchange("QUIT").await;
    drop(stdin);
    let _ = tokio::time::timeout(WAIT, openssl.wait()).await;

    up.wait_messages(3).await;
    for m in up.messages() {
        let wire = String::from_utf8_lossy(&m.wire).into_owned();
        let received = wire.split("\r\n").take(4).collect::<Vec<_>>().join(" ");
        assert!(received.contains("with ESMTPS id"), "{received}");
        assert!(received.contains("(using TLSv1.3 with cipher TLS13_"), "{received}");
        assert!(header(&wire, "X-Conn-Seen:").contains("tls=TLSv1.3/TLS13_"), "{wire}");
        assert!(wire.contains("over TLS from"));
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_pipelined_after_starttls_is_executed() {
    let certs = TestCerts::new();
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(tls_config(&certs), &up.url()).await;
    let connector = tls_connector(&certs.ca_der);
    for injected in ["RSET\r\n", "MAIL FROM:<injected@example.org>\r\n"] {
        let mut c = proxy.client().await;
        let ehlo = c.greet().await;
        assert!(ehlo.lines.iter().any(|l| l.ends_with("STARTTLS")), "{ehlo:?}");
        c.send(format!("STARTTLS\r\n{injected}")).await;
        c.expect(220).await;
        c.tls(&connector, "mx.test").await.expect("handshake");
        let ehlo = c.cmd("EHLO client.example", 250).await;
        assert!(!ehlo.lines.iter().any(|l| l.contains("STARTTLS")), "no STARTTLS after TLS: {ehlo:?}");
        // The pipelined MAIL was never executed: RCPT has no transaction to join.
        c.cmd("RCPT TO:<b@example.org>", 503).await;
        c.cmd("STARTTLS", 503).await;
        c.cmd("QUIT", 221).await;
    }
    assert!(!up.commands().iter().any(|l| l.contains("injected")), "{:?}", up.commands());

    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("STARTTLS now", 501).await;
    assert_eq!(r.lines, ["501 5.5.4 Syntax: STARTTLS takes no arguments"]);
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("STARTTLS", 503).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_handshakes_close_only_their_own_session() {
    let certs = TestCerts::new();
    let up = Recorder::start(Script::default()).await;
    let mut config = tls_config(&certs);
    config.tls.handshake_timeout = Duration::from_millis(500);
    let proxy = TestProxy::start_with(config, &up.url()).await;
    let mut bystander = proxy.client().await;
    bystander.greet().await;

    // Garbage instead of a ClientHello.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("STARTTLS", 220).await;
    c.send(b"\x16\x03\x01\x00\x05hello this is not TLS at all\r\n").await;
    c.closed().await;

    // A client that goes away mid-handshake.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("STARTTLS", 220).await;
    c.send(b"\x16\x03\x01").await;
    drop(c);

    // A handshake that never comes: closed after the handshake timeout.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("STARTTLS", 220).await;
    let started = std::time::Instant::now();
    c.closed().await;
    assert!(started.elapsed() >= Duration::from_millis(500), "{:?}", started.elapsed());

    bystander.cmd("NOOP", 250).await;
    bystander.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_follows_sni() {
    let certs = TestCerts::new();
    let up = Recorder::start(Script::default()).await;
    let mut config = with_plugins(vec![]);
    let (mx, other) = (certs.leaf("mx.test"), certs.leaf("other.test"));
    config.tls.certificates = vec![mx.clone(), other.clone()];
    let proxy = TestProxy::start_with(config, &up.url()).await;
    let connector = tls_connector(&certs.ca_der);
    for (name, expected) in [("mx.test", &mx), ("other.test", &other)] {
        let mut c = proxy.client().await;
        c.greet().await;
        c.cmd("STARTTLS", 220).await;
        c.tls(&connector, name).await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf = rustls::pki_types::CertificateDer::from_pem_file(&expected.cert).unwrap();
        assert_eq!(c.peer_certificates[0], leaf.to_vec(), "{name}");
        c.cmd("EHLO client.example", 250).await;
        c.cmd("QUIT", 221).await;
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_certificate_files_stop_the_start_with_a_clear_error() {
    let certs = TestCerts::new();
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("expired", certs.expired("mx.test"), "expired"),
        ("mismatched", certs.mismatched("mx.test"), "do not belong together"),
    ];
    for (name, files, expected) in cases {
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &path,
            format!(
                "[[tls.certificates]]\ncert = {:?}\nkey = {:?}\n",
                files.cert.display().to_string(),
                files.key.display().to_string()
            ),
        )
        .unwrap();
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_wasmtp"))
            .arg("check-config")
            .arg(&path)
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}");
        assert!(err.contains(expected) && err.contains(&files.cert.display().to_string()), "{name}: {err}");
        assert!(!String::from_utf8_lossy(&out.stdout).contains("ok"), "{name}");
    }

    // A submission listener without a certificate, or in front of an upstream without AUTH.
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_modes(with_plugins(vec![]), &up.url(), &[ListenerMode::Submission]).await;
    assert!(proxy.failed().await.contains("needs a TLS certificate"));
    let mut config = with_plugins(vec![]);
    config.tls.certificates = vec![certs.leaf("mx.test")];
    let proxy = TestProxy::start_modes(config, &up.url(), &[ListenerMode::Submission]).await;
    let err = proxy.failed().await;
    assert!(err.contains("offers no AUTH"), "{err}");
}

/// An upstream that checks `alice`/`secret`, and a proxy with an smtp, a submission and a
/// submissions listener in front of it.
async fn submission_proxy(certs: &TestCerts) -> (TestProxy, Recorder) {
    let up = Recorder::start(Script { auth: Some(("alice", "secret")), ..Default::default() }).await;
    let proxy = TestProxy::start_modes(
        tls_config(certs),
        &up.url(),
        &[ListenerMode::Smtp, ListenerMode::Submission, ListenerMode::Submissions],
    )
    .await;
    (proxy, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_relays_auth_to_the_upstream() {
    let certs = TestCerts::new();
    let (proxy, up) = submission_proxy(&certs).await;
    let connector = tls_connector(&certs.ca_der);
    let submission = proxy.addrs[1];

    let mut c = Client::connect(submission).await;
    let ehlo = c.greet().await;
    assert!(!ehlo.lines.iter().any(|l| l.contains("AUTH")), "AUTH only after TLS: {ehlo:?}");
    c.cmd("MAIL FROM:<alice@example.org>", 530).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 538).await;
    c.cmd("STARTTLS", 220).await;
    c.tls(&connector, "mx.test").await.unwrap();
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")), "{ehlo:?}");
    // Wrong password: the upstream's 535 reaches the client.
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", 535).await;
    assert_eq!(r.lines, ["535 5.7.8 Error: authentication failed"]);
    // LOGIN, step by step.
    c.cmd("AUTH LOGIN", 334).await;
    c.cmd("YWxpY2U=", 334).await;
    c.cmd("c2VjcmV0", 235).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 503).await;
    let r = c.send_mail("alice@example.org", &["rcpt@example.net"], &stuff(b"Subject: submitted\r\n\r\nhi\r\n")).await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", 221).await;

    // Too many failures: 421.
    let mut c = Client::connect(submission).await;
    c.greet().await;
    c.cmd("STARTTLS", 220).await;
    c.tls(&connector, "mx.test").await.unwrap();
    c.cmd("EHLO client.example", 250).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", 535).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", 535).await;
    c.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n").await;
    c.expect(535).await;
    c.expect(421).await;
    c.closed().await;

    // Implicit TLS: TLS from the first byte, AUTH offered at once.
    let mut c = Client::connect_tls(proxy.addrs[2], &connector, "mx.test").await;
    let ehlo = c.greet().await;
    assert!(ehlo.lines.iter().any(|l| l.ends_with("AUTH PLAIN LOGIN")), "{ehlo:?}");
    assert!(!ehlo.lines.iter().any(|l| l.contains("STARTTLS")), "{ehlo:?}");
    c.cmd("QUIT", 221).await;

    // Implicit TLS with Python's SMTP_SSL and login().
    let script = format!(
        "import smtplib, ssl\n\
         ctx = ssl.create_default_context(cafile={ca:?})\n\
         ctx.check_hostname = False\n\
         s = smtplib.SMTP_SSL('127.0.0.1', {port}, context=ctx, timeout=20)\n\
         s.login('alice', 'secret')\n\
         s.sendmail('alice@example.org', ['rcpt@example.net'], 'Subject: ssl\\r\\n\\r\\nimplicit TLS\\r\\n')\n\
         s.quit()\n",
        ca = certs.ca.display().to_string(),
        port = proxy.addrs[2].port()
    );
    let python = tokio::process::Command::new("python3").arg("-c").arg(script).output().await.unwrap();
    assert!(python.status.success(), "{}", String::from_utf8_lossy(&python.stderr));

    up.wait_messages(2).await;
    for m in up.messages() {
        let wire = String::from_utf8_lossy(&m.wire).into_owned();
        assert!(wire.split("\r\n").take(3).any(|l| l.contains("with ESMTPSA id")), "{wire}");
        assert!(header(&wire, "X-Conn-Seen:").ends_with("authenticated-as=alice"), "{wire}");
    }
    // No credentials anywhere but in the upstream's own exchange.
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_starttls_opportunistic_and_required() {
    let certs = TestCerts::new();
    let upstream_cert = certs.leaf("127.0.0.1");
    let server = {
        let chain = rustls::pki_types::CertificateDer::pem_file_iter(&upstream_cert.cert)
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&upstream_cert.key).unwrap();
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap()
    };
    let up = Recorder::start(Script { tls: Some(std::sync::Arc::new(server)), ..Default::default() }).await;
    let plain = Recorder::start(Script::default()).await;
    let wire = stuff(b"Subject: upstream tls\r\n\r\nbody\r\n");

    // Opportunistic: encrypted whenever offered, the certificate not verified.
    let proxy = TestProxy::start_with(with_plugins(vec![]), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.org"], &wire).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    up.wait_messages(1).await;
    assert!(up.messages()[0].tls, "the message went over TLS");

    // Required, verified against the CA: delivered; against an upstream without STARTTLS: 4xx.
    let mut config = with_plugins(vec![]);
    config.upstream.tls = UpstreamTls::Required;
    config.upstream.tls_ca_file = Some(certs.ca.clone());
    let proxy = TestProxy::start_with(config.clone(), &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    assert_eq!(c.send_mail("a@example.org", &["b@example.org"], &wire).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let proxy = TestProxy::start_with(config, &plain.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
    assert_eq!(r.lines, ["451 4.7.0 Upstream TLS unavailable, try again later"]);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert!(plain.messages().is_empty() && !plain.commands().iter().any(|l| l.starts_with("MAIL")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_senders_must_authenticate() {
    let certs = TestCerts::new();
    let up = Recorder::start(Script { auth: Some(("alice", "secret")), ..Default::default() }).await;
    let mut config = with_plugins(vec![plugin("policy", wasm::AUTH_POLICY, json!({"local_domains": ["example.org"]}))]);
    config.tls.certificates = vec![certs.leaf("mx.test")];
    let proxy = TestProxy::start_modes(config, &up.url(), &[ListenerMode::Smtp, ListenerMode::Submission]).await;

    let mut mx = proxy.client().await;
    mx.greet().await;
    let r = mx.cmd("MAIL FROM:<alice@EXAMPLE.org>", 550).await;
    assert_eq!(r.lines, ["550 5.7.1 Authentication required to send as a local address"]);
    mx.cmd("MAIL FROM:<someone@elsewhere.example>", 250).await;
    mx.cmd("QUIT", 221).await;

    let mut submission = Client::connect(proxy.addrs[1]).await;
    submission.greet().await;
    submission.cmd("STARTTLS", 220).await;
    submission.tls(&tls_connector(&certs.ca_der), "mx.test").await.unwrap();
    submission.cmd("EHLO client.example", 250).await;
    submission.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 235).await;
    submission.cmd("MAIL FROM:<alice@example.org>", 250).await;
    submission.cmd("QUIT", 221).await;
    proxy.stop().await;
}
