//! Limits and protocol errors: line lengths, sequence errors, recipients, sizes, error counts.

use crate::support::*;

const MT: &str = "[timeouts]\nidle = \"30s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_limits_and_recovery() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    // 512 octets including CRLF is the limit (RFC 5321 §4.5.3.1.4).
    let noop_512 = format!("NOOP {}", "x".repeat(512 - 2 - 5));
    c.cmd(&noop_512, 250).await;
    let noop_513 = format!("NOOP {}", "x".repeat(513 - 2 - 5));
    let r = c.cmd(&noop_513, 500).await;
    assert!(r.text().contains("5.5.2 Line too long"), "{r:?}");
    // 1 MiB without CRLF: dropped as it arrives, one 500 once the line ends.
    let junk = vec![b'A'; 1 << 20];
    c.send(&junk).await;
    c.send("\r\n").await;
    c.expect(500).await;
    c.cmd("NOOP", 250).await;
    // MAIL may carry parameters up to 2048 octets.
    let long_mail = format!("MAIL FROM:<a@example.org> SIZE=10{}", " BODY=7BIT".repeat(100));
    assert!(long_mail.len() > 512 && long_mail.len() < 2046);
    c.cmd(&long_mail, 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    // Data lines of 1000 octets (998 + CRLF) are relayed intact.
    let mut body = b"Subject: wide\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'w', 998));
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body).await;
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    assert_eq!(strip_our_received(&up.messages()[0].wire), &body[..]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_and_syntax_errors() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start("[limits]\nmax_errors = 50\n", &up.url()).await;
    let mut c = proxy.client().await;
    c.expect(220).await;
    c.cmd("MAIL FROM:<a@example.org>", 503).await;
    c.cmd("EHLO client.example", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 503).await;
    c.cmd("DATA", 503).await;
    c.cmd("FROBNICATE", 500).await;
    c.cmd("MAIL FROM:<a@example.org> SIZE=abc", 501).await;
    c.cmd("MAIL FROM:<not an address>", 553).await;
    c.cmd("MAIL FROM:<a@example.org> FOO=bar", 555).await;
    c.cmd("VRFY someone", 252).await;
    c.cmd("EXPN list", 502).await;
    c.cmd("BDAT 10 LAST", 502).await;
    c.cmd("HELP", 214).await;
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("MAIL FROM:<a@example.org>", 503).await;
    c.cmd("DATA", 554).await; // no valid recipients
    c.cmd("RCPT TO:<Postmaster>", 250).await;
    c.cmd("RCPT TO:<>", 553).await;
    c.cmd("RCPT TO:<jöran@example.net>", 553).await; // needs SMTPUTF8
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_recipients_and_too_many_errors() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start("[limits]\nmax_recipients = 3\nmax_errors = 4\n", &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    for i in 0..3 {
        c.cmd(&format!("RCPT TO:<r{i}@example.net>"), 250).await;
    }
    let r = c.cmd("RCPT TO:<r3@example.net>", 452).await;
    assert!(r.text().contains("4.5.3"), "{r:?}");
    c.cmd("RSET", 250).await;
    for _ in 0..3 {
        c.cmd("BOGUS", 500).await;
    }
    c.send("BOGUS\r\n").await;
    c.expect(500).await;
    let r = c.expect(421).await;
    assert!(r.text().contains("4.7.0"), "{r:?}");
    c.closed().await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_size_limits() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start("[limits]\nmax_message_size = \"100KiB\"\n", &up.url()).await;
    let mut c = proxy.client().await;
    let ehlo = c.greet().await;
    assert!(ehlo.text().contains("SIZE 102400"), "{ehlo:?}");
    let r = c.cmd("MAIL FROM:<a@example.org> SIZE=102401", 552).await;
    assert!(r.text().contains("5.3.4"), "{r:?}");
    // Without SIZE the limit is enforced after reading to the real end of data.
    let reply = c.send_mail("a@example.org", &["b@example.net"], &stuff(&sample_message(200_000))).await;
    assert_eq!(reply.code, 552, "{reply:?}");
    assert!(reply.text().contains("5.3.4"));
    // The session goes on, in step with the client.
    let reply = c.send_mail("a@example.org", &["b@example.net"], &stuff(&sample_message(50_000))).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    c.cmd("QUIT", 221).await;
    assert_eq!(up.messages().len(), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_above_the_cap_is_refused_not_split() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start("[limits]\nmax_line_length = 2000\n", &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let mut body = b"Subject: too wide\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'w', 1999));
    body.extend_from_slice(b"\r\n.\r\n");
    let reply = c.send_mail("a@example.org", &["b@example.net"], &body).await;
    assert_eq!(reply.code, 550, "{reply:?}");
    assert!(reply.text().contains("5.6.0"));
    c.cmd("QUIT", 221).await;
    assert!(up.messages().is_empty());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_control_of_its_own() {
    let up = Recorder::start(Script::default()).await;
    let mut config = wasmtp::Config::default();
    config.relay.accept_domains = vec!["example.org".into(), "*.example.net".into()];
    config.relay.relay_networks = vec!["127.0.0.5/32".parse().unwrap()];
    let proxy = TestProxy::start_with(config, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@EXAMPLE.org>", 250).await;
    c.cmd("RCPT TO:<c@mx.example.net>", 250).await;
    c.cmd("RCPT TO:<Postmaster>", 250).await;
    let r = c.cmd("RCPT TO:<x@elsewhere.example>", 554).await;
    assert_eq!(r.lines, ["554 5.7.1 Relay access denied"]);
    c.cmd("QUIT", 221).await;
    let mut trusted = Client::connect_from(proxy.addr, "127.0.0.5".parse().unwrap()).await;
    trusted.greet().await;
    trusted.cmd("MAIL FROM:<a@example.org>", 250).await;
    trusted.cmd("RCPT TO:<x@elsewhere.example>", 250).await;
    trusted.cmd("QUIT", 221).await;
    proxy.stop().await;
    let relayed = up.commands().iter().filter(|l| l.contains("elsewhere")).count();
    assert_eq!(relayed, 1, "only the trusted client's recipient reached the upstream");
}
