//! Messages go through intact: to the recording upstream byte for byte, to Postfix's smtp-sink,
//! and to the embedded Maildir.

use sha2::{Digest, Sha256};

use crate::support::*;

const MT: &str = "[timeouts]\nidle = \"30s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_byte_identical_apart_from_received_header() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    let ehlo = c.greet().await;
    for ext in ["PIPELINING", "SIZE 52428800", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.lines.iter().any(|l| l.ends_with(ext)), "{ext} missing from {ehlo:?}");
    }
    assert!(!ehlo.text().contains("CHUNKING"));
    let message = sample_message(300_000);
    let reply = c.send_mail("sender@example.org", &["rcpt@example.net"], &stuff(&message)).await;
    assert_eq!(reply.code, 250);
    assert!(reply.text().contains("queued as REC1"), "upstream's own reply is relayed: {reply:?}");
    c.cmd("QUIT", 221).await;

    let msgs = up.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].mail_from, "MAIL FROM:<sender@example.org>");
    assert_eq!(msgs[0].rcpts, vec!["RCPT TO:<rcpt@example.net>"]);
    // Byte for byte: our Received header, then the client's message stuffed exactly as sent.
    assert_eq!(msgs[0].wire, stuff(&[received_of(&msgs[0].wire), &message[..]].concat()));
    let content = unstuff(&msgs[0].wire);
    assert_eq!(strip_our_received(&content), &message[..]);
    let received = String::from_utf8_lossy(received_of(&msgs[0].wire)).into_owned();
    assert!(received.contains("from client.example ([127.0.0.1])"), "{received}");
    assert!(received.contains("by proxy.test (wasmtp) with ESMTP id"), "{received}");
    assert!(received.contains("for <rcpt@example.net>;"), "{received}");
    up.all_closed().await;
    assert_eq!(up.commands().last().map(String::as_str), Some("QUIT"));
    proxy.stop().await;
}

/// The `Received:` header at the start of a wire message.
fn received_of(wire: &[u8]) -> &[u8] {
    let rest = strip_our_received(wire);
    &wire[..wire.len() - rest.len()]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_transparency_empty_body_and_missing_final_crlf() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;

    // Lines that are or start with dots, stuffed by the client, arrive stuffed the same way.
    let dotty = b"Subject: dots\r\n\r\n.\r\n..\r\n...x\r\n. \r\nend\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(dotty)).await.code, 250);
    // Empty body.
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], b".\r\n").await.code, 250);
    // The final CRLF belongs to the terminator: "x" then CRLF.CRLF is the content "x\r\n".
    assert_eq!(
        c.send_mail("a@example.org", &["b@example.net"], b"Subject: x\r\n\r\nno newline\r\n.\r\n").await.code,
        250
    );
    c.cmd("QUIT", 221).await;

    let msgs = up.messages();
    assert_eq!(msgs.len(), 3);
    let wire0 = strip_our_received(&msgs[0].wire);
    assert_eq!(wire0, b"Subject: dots\r\n\r\n..\r\n...\r\n....x\r\n.. \r\nend\r\n.\r\n");
    assert_eq!(strip_our_received(&msgs[1].wire), b".\r\n");
    assert_eq!(strip_our_received(&msgs[2].wire), b"Subject: x\r\n\r\nno newline\r\n.\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_answers_each_recipient_and_pipelined_commands_get_ordered_replies() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.send(
        "MAIL FROM:<a@example.org>\r\nRCPT TO:<unknown@example.net>\r\nRCPT TO:<later@example.net>\r\n\
         RCPT TO:<ok@example.net>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n",
    )
    .await;
    c.expect(250).await;
    let r = c.expect(550).await;
    assert!(r.text().contains("5.1.1 No such user"), "{r:?}");
    let r = c.expect(450).await;
    assert!(r.text().contains("4.2.1"), "{r:?}");
    c.expect(250).await;
    c.expect(250).await;
    c.expect(354).await;
    c.send(stuff(b"Subject: pipelined\r\n\r\nhi\r\n")).await;
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    let msgs = up.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["RCPT TO:<ok@example.net>", "RCPT TO:<Postmaster>"]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_are_intersected_with_the_upstream() {
    let up = Recorder::start(Script { extensions: Some(vec!["SIZE 1000000"]), ..Script::default() }).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    let ehlo = c.greet().await.text();
    assert!(ehlo.contains("250-SIZE 1000000"), "smaller upstream SIZE wins: {ehlo}");
    assert!(!ehlo.contains("8BITMIME") && !ehlo.contains("SMTPUTF8"), "{ehlo}");
    assert!(ehlo.contains("PIPELINING") && ehlo.contains("ENHANCEDSTATUSCODES"), "hop-by-hop extensions stay: {ehlo}");
    c.cmd("MAIL FROM:<a@example.org> SMTPUTF8", 555).await;
    c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME", 555).await;
    c.cmd("MAIL FROM:<a@example.org> SIZE=2000000", 552).await;
    c.cmd("MAIL FROM:<a@example.org> SIZE=1000 BODY=7BIT", 250).await;
    c.cmd("QUIT", 221).await;
    up.all_closed().await;
    assert!(up.commands().iter().any(|l| l == "MAIL FROM:<a@example.org> SIZE=1000"), "{:?}", up.commands());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtputf8_is_relayed_when_both_sides_support_it() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<jörg@exämple.org> SMTPUTF8 BODY=8BITMIME", 250).await;
    c.cmd("RCPT TO:<ñandú@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    c.send("Subject: ünïcödé\r\n\r\nbody\r\n.\r\n").await;
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    let msgs = up.messages();
    assert_eq!(msgs[0].mail_from, "MAIL FROM:<jörg@exämple.org> BODY=8BITMIME SMTPUTF8");
    assert!(String::from_utf8_lossy(&msgs[0].wire).contains("with UTF8SMTP id"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_sink_receives_a_10_mib_message_intact() {
    let sink = SmtpSink::start().await;
    let proxy = TestProxy::start(MT, &sink.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let message = sample_message(10 << 20);
    let reply = c.send_mail("big@example.org", &["rcpt@example.net"], &stuff(&message)).await;
    assert_eq!(reply.code, 250, "{reply:?}");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "{dumps:?}");
    let dump = std::fs::read(&dumps[0]).unwrap();
    let delivered = SmtpSink::message_of(&dump);
    let delivered = strip_our_received(delivered);
    let expected: Vec<u8> = String::from_utf8(message).unwrap().replace("\r\n", "\n").into_bytes();
    assert_eq!(delivered.len(), expected.len());
    assert_eq!(Sha256::digest(delivered), Sha256::digest(&expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maildir_delivery_is_complete_and_durable() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("maildir:{}", dir.path().display());
    let proxy = TestProxy::start(MT, &url).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let message = sample_message(3 << 20); // above the in-memory threshold: spilled and read back
    let reply = c.send_mail("s@example.org", &["r1@example.net", "r2@example.net"], &stuff(&message)).await;
    assert_eq!(reply.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "nothing left in tmp/");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("new")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1);
    assert!(reply.text().contains(&*files[0].file_name().unwrap().to_string_lossy()), "reply names the file");
    let stored = std::fs::read(&files[0]).unwrap();
    let head = b"Return-Path: <s@example.org>\nDelivered-To: r1@example.net\nDelivered-To: r2@example.net\n";
    assert!(stored.starts_with(head));
    let rest = strip_our_received(&stored[head.len()..]);
    let expected = String::from_utf8(message).unwrap().replace("\r\n", "\n");
    assert_eq!(rest, expected.as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xforward_tells_the_upstream_about_the_real_client() {
    for extensions in [vec!["PIPELINING", "XFORWARD NAME ADDR PROTO HELO"], vec!["XFORWARD NAME ADDR PROTO HELO"]] {
        let up = Recorder::start(Script { extensions: Some(extensions), ..Script::default() }).await;
        let proxy = TestProxy::start(MT, &up.url()).await;
        let mut c = proxy.client().await;
        c.greet().await;
        assert_eq!(
            c.send_mail("a@example.org", &["b@example.net"], &stuff(b"Subject: x\r\n\r\nx\r\n")).await.code,
            250
        );
        c.cmd("QUIT", 221).await;
        proxy.stop().await;
        let commands = up.commands();
        let mail = commands.iter().position(|l| l.starts_with("MAIL FROM:")).unwrap();
        assert!(
            commands[mail - 1].starts_with("XFORWARD NAME=[UNAVAILABLE] ADDR=127.0.0.1 PORT=")
                && commands[mail - 1].ends_with(" HELO=client.example PROTO=ESMTP"),
            "{commands:?}"
        );
        assert_eq!(up.messages().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xclient_names_the_client_and_binds_the_connection_to_it() {
    let dns = crate::support::dns::TestDns::start().await;
    let extensions = vec!["PIPELINING", "XCLIENT NAME ADDR PORT PROTO HELO LOGIN", "XFORWARD NAME ADDR PROTO HELO"];
    let up = Recorder::start(Script { extensions: Some(extensions), ..Script::default() }).await;
    let mut config = wasmtp::Config::parse(MT).unwrap();
    config.auth.enabled = true;
    config.auth.nameservers = vec![dns.addr];
    let proxy = TestProxy::start_pooled(config, &up.url()).await;
    for _ in 0..2 {
        // From 127.0.0.1, whose PTR name (localhost) verifies.
        let mut c = proxy.client().await;
        c.greet().await;
        let body = stuff(b"Subject: x\r\n\r\nx\r\n");
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &body).await.code, 250);
        c.cmd("QUIT", 221).await;
        c.closed().await;
    }
    proxy.stop().await;
    let commands = up.commands();
    let xclient: Vec<_> = commands.iter().filter(|l| l.starts_with("XCLIENT")).collect();
    assert_eq!(xclient.len(), 2, "{commands:?}");
    assert!(
        xclient[0].starts_with("XCLIENT NAME=localhost HELO=client.example PROTO=ESMTP ADDR=127.0.0.1 PORT="),
        "{commands:?}"
    );
    let after = commands.iter().position(|l| l.starts_with("XCLIENT")).unwrap();
    assert_eq!(commands[after + 1], "EHLO client.example", "EHLO again, with the client's name");
    assert!(!commands.iter().any(|l| l.starts_with("XFORWARD")), "XCLIENT instead of XFORWARD: {commands:?}");
    // Bound to its session: each session had a connection of its own (plus the start-up probe).
    assert_eq!(up.connections(), 3, "{commands:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_xclient_leaves_the_connection_to_the_pool_and_is_not_asked_again() {
    // smtp-sink offers XCLIENT and answers 250: nothing changed, the upstream still sees the
    // proxy, so the connection is as good as one that never said XCLIENT.
    let extensions = vec!["PIPELINING", "XCLIENT NAME ADDR PORT PROTO HELO"];
    let up = Recorder::start(Script { extensions: Some(extensions), xclient_250: true, ..Script::default() }).await;
    let proxy = TestProxy::start_pooled(wasmtp::Config::parse(MT).unwrap(), &up.url()).await;
    for _ in 0..3 {
        let mut c = proxy.client().await;
        c.greet().await;
        let body = stuff(b"Subject: x\r\n\r\nx\r\n");
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &body).await.code, 250);
        c.cmd("QUIT", 221).await;
        c.closed().await;
    }
    proxy.stop().await;
    let commands = up.commands();
    assert_eq!(up.messages().len(), 3);
    assert_eq!(commands.iter().filter(|l| l.starts_with("XCLIENT")).count(), 1, "{commands:?}");
    // One connection carried all three sessions (plus, at most, the start-up probe's).
    assert!(up.connections() <= 2, "{} connections: {commands:?}", up.connections());
}
