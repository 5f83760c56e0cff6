//! wasmtp in front of a real Postfix (a private instance per test, see support/postfix.rs):
//! submission with AUTH checked by Postfix's SASL; XCLIENT, so Postfix's own restrictions
//! judge the real client; wasmtp as Postfix's before-queue filter; Postfix stopping,
//! starting and reloading under a running proxy.

use serde_json::json;
use wasmtp::config::ListenerMode;
use wasmtp_test_artifacts as wasm;

use crate::support::certs::TestCerts;
use crate::support::client::tls_connector;
use crate::support::postfix::{BLOCKED_CLIENT, Listeners, Postfix, TRUSTED_CLIENT};
use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_with_auth_checked_by_postfix() {
    let postfix = Postfix::start(Listeners { submission: true, ..Default::default() }).await;
    let certs = TestCerts::new();
    let mut config = with_plugins(vec![plugin("echo", wasm::AUTH_ECHO, json!({}))]);
    config.tls.certificates = vec![certs.leaf("mx.test")];
    let upstream = format!("smtp://127.0.0.1:{}", postfix.submission_port);
    let proxy = TestProxy::start_modes(config, &upstream, &[ListenerMode::Submission]).await;
    let connector = tls_connector(&certs.ca_der);

    let mut c = proxy.client().await;
    let ehlo = c.greet().await;
    assert!(!ehlo.lines.iter().any(|l| l.contains("AUTH")), "AUTH is offered only after TLS: {ehlo:?}");
    c.cmd("MAIL FROM:<alice@example.test>", 530).await;
    c.cmd("STARTTLS", 220).await;
    c.tls(&connector, "mx.test").await.unwrap();
    let ehlo = c.cmd("EHLO client.example", 250).await;
    assert!(ehlo.lines.iter().any(|l| l.contains("AUTH PLAIN LOGIN")), "{ehlo:?}");
    // alice / wrong, then alice / secret (RFC 4616 PLAIN).
    let r = c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", 535).await;
    assert!(r.text().contains("authentication failed"), "Postfix's own answer: {r:?}");
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==", 235).await;
    let r = c
        .send_mail("alice@example.test", &["bob@example.test"], &stuff(b"Subject: submitted\r\n\r\nhello bob\r\n"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    c.cmd("QUIT", 221).await;
    let delivered = postfix.wait_mailbox("bob", 1).await;
    assert!(delivered[0].contains("X-Conn-Seen: tls=TLSv1.3/"), "{}", delivered[0]);
    assert!(delivered[0].contains("authenticated-as=alice"), "{}", delivered[0]);
    assert!(delivered[0].contains("with ESMTPSA id"), "our Received: says TLS and AUTH: {}", delivered[0]);

    // Three failures end the session.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("STARTTLS", 220).await;
    c.tls(&connector, "mx.test").await.unwrap();
    c.cmd("EHLO client.example", 250).await;
    c.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", 535).await;
    c.cmd("AUTH LOGIN", 334).await;
    c.cmd("YWxpY2U=", 334).await;
    c.cmd("d3Jvbmc=", 535).await;
    c.send("AUTH PLAIN AGFsaWNlAHdyb25n\r\n").await;
    c.expect(535).await;
    c.expect(421).await;
    c.closed().await;
    proxy.stop().await;
    assert!(!postfix.log().contains("secret"));
}

/// A client of the proxy from `ip`, after EHLO.
async fn client_from(proxy: &TestProxy, ip: &str) -> Client {
    let mut c = Client::connect_from(proxy.addr, ip.parse().unwrap()).await;
    c.greet().await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_xclient_postfix_sees_and_checks_the_real_client() {
    let dns = crate::support::dns::TestDns::start().await;
    let postfix = Postfix::start(Listeners { xclient: true, ..Default::default() }).await;
    let mut config = with_plugins(vec![]);
    config.auth.enabled = true;
    config.auth.nameservers = vec![dns.addr];
    let upstream = format!("smtp://127.0.0.1:{}", postfix.xclient_port);
    let proxy = TestProxy::start_with(config, &upstream).await;
    let body = stuff(b"Subject: through wasmtp\r\n\r\nhello\r\n");

    // 127.0.0.2: in Postfix's mynetworks. (Its name does not verify: on loopback the resolver
    // answers every PTR with `localhost`; the name XCLIENT sends is tested against the
    // recording upstream.)
    let mut c = client_from(&proxy, TRUSTED_CLIENT).await;
    assert_eq!(c.send_mail("someone@example.org", &["alice@example.test"], &body).await.code, 250);
    c.cmd("MAIL FROM:<someone@example.org>", 250).await;
    c.cmd("RCPT TO:<outside@elsewhere.example>", 250).await;
    c.cmd("QUIT", 221).await;
    let delivered = postfix.wait_mailbox("alice", 1).await;
    assert!(
        delivered[0].contains("from client.example (unknown [127.0.0.2])"),
        "Postfix's Received: names the real client, its verified name and its HELO:\n{}\n{}",
        delivered[0],
        postfix.log()
    );
    assert!(postfix.log().contains("client=unknown[127.0.0.2]"), "{}", postfix.log());

    // 127.0.0.4 is not in mynetworks: relaying is refused through wasmtp exactly as directly.
    let mut c = client_from(&proxy, "127.0.0.4").await;
    c.cmd("MAIL FROM:<someone@example.org>", 250).await;
    let through = c.cmd("RCPT TO:<outside@elsewhere.example>", 554).await;
    assert!(through.text().contains("5.7.1") && through.text().contains("Relay access denied"), "{through:?}");
    // A user Postfix does not know: its own 550 5.1.1, per recipient.
    let unknown = c.cmd("RCPT TO:<nobody@example.test>", 550).await;
    assert!(unknown.text().contains("5.1.1"), "{unknown:?}");
    c.cmd("RCPT TO:<alice@example.test>", 250).await;
    c.cmd("QUIT", 221).await;
    let direct = std::net::SocketAddr::from(([127, 0, 0, 1], postfix.xclient_port));
    let mut d = Client::connect_from(direct, "127.0.0.4".parse().unwrap()).await;
    d.greet().await;
    d.cmd("MAIL FROM:<someone@example.org>", 250).await;
    let directly = d.cmd("RCPT TO:<outside@elsewhere.example>", 554).await;
    assert_eq!(directly.lines[0].split(':').next(), through.lines[0].split(':').next());
    d.cmd("QUIT", 221).await;

    // check_client_access judges the real client: 127.0.0.3 is refused.
    let mut c = client_from(&proxy, BLOCKED_CLIENT).await;
    c.cmd("MAIL FROM:<someone@example.org>", 250).await;
    let blocked = c.cmd("RCPT TO:<alice@example.test>", 554).await;
    assert!(blocked.text().contains("Client host rejected"), "{blocked:?}");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_postfixs_before_queue_filter() {
    let after_filter = free_port();
    let guard = plugin("guard", wasm::CONTENT_GUARD, json!({}));
    let proxy =
        TestProxy::start_listener(with_plugins(vec![guard]), &format!("smtp://127.0.0.1:{after_filter}"), |listener| {
            listener.xforward_from = vec!["127.0.0.0/8".parse().unwrap()]
        })
        .await;
    let postfix =
        Postfix::start(Listeners { proxy_filter: Some((proxy.addr.port(), after_filter)), ..Default::default() }).await;
    let front = std::net::SocketAddr::from(([127, 0, 0, 1], postfix.proxy_in_port));

    let mut c = Client::connect_from(front, "127.0.0.4".parse().unwrap()).await;
    c.greet().await;
    let r = c
        .send_mail("someone@example.org", &["alice@example.test"], &stuff(b"Subject: filtered\r\n\r\nclean\r\n"))
        .await;
    assert_eq!(r.code, 250, "{r:?}");
    // A plugin's refusal reaches Postfix's client at the end of data.
    c.cmd("MAIL FROM:<someone@example.org>", 250).await;
    c.cmd("RCPT TO:<alice@example.test>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(stuff(
        b"Subject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
          Content-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Disposition: attachment; filename=invoice.exe\r\n\r\nMZ\r\n--b--\r\n",
    ))
    .await;
    let refused = c.expect(550).await;
    assert!(refused.text().contains("5.7.1"), "{refused:?}");
    c.cmd("QUIT", 221).await;

    let delivered = postfix.wait_mailbox("alice", 1).await;
    assert_eq!(delivered.len(), 1);
    // Our Received: names the real client XFORWARD told us about, not Postfix at 127.0.0.1.
    assert!(delivered[0].contains("([127.0.0.4])\n\tby proxy.test (wasmtp)"), "{}", delivered[0]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_stopping_restarting_and_reloading_under_a_running_proxy() {
    let postfix = Postfix::start(Listeners { xclient: true, ..Default::default() }).await;
    let upstream = format!("smtp://127.0.0.1:{}", postfix.xclient_port);
    let proxy = TestProxy::start_pooled(wasmtp::Config::default(), &upstream).await;
    let body = stuff(b"Subject: lifecycle\r\n\r\nhello\r\n");
    let send = async |expected: u16| {
        let mut c = client_from(&proxy, TRUSTED_CLIENT).await;
        let r = c.cmd("MAIL FROM:<someone@example.org>", expected).await;
        if expected == 250 {
            c.cmd("RCPT TO:<alice@example.test>", 250).await;
            c.cmd("DATA", 354).await;
            c.send(&body).await;
            c.expect(250).await;
        }
        c.cmd("QUIT", 221).await;
        r
    };
    send(250).await;
    postfix.run("stop");
    let down = send(451).await;
    assert!(down.text().contains("4.4.1"), "{down:?}");
    postfix.run("start");
    postfix.wait_ready().await;
    send(250).await;
    postfix.run("reload");
    send(250).await;
    postfix.wait_mailbox("alice", 3).await;
    proxy.stop().await;
}
