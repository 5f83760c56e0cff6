//! wasmtp in front of a real Postfix (a private instance per test, see support/postfix.rs):
//! submission with AUTH checked by Postfix's SASL.

use serde_json::json;
use wasmtp::config::ListenerMode;
use wasmtp_test_artifacts as wasm;

use crate::support::certs::TestCerts;
use crate::support::client::tls_connector;
use crate::support::postfix::{Listeners, Postfix};
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
