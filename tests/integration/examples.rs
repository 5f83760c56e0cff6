//! The example plugins doing their jobs through the real proxy: what the client hears and what
//! the upstream receives.

use std::time::Duration;

use serde_json::json;
use wasmtp_test_artifacts as wasm;

use crate::support::*;

async fn proxy(plugins: Vec<wasmtp::config::PluginConfig>) -> (TestProxy, Recorder) {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_with(with_plugins(plugins), &up.url()).await;
    (proxy, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_rewriter_expands_aliases_and_masquerades_senders() {
    let config = json!({
        "aliases": {"sales@example.org": ["ann@example.org", "bob@example.org"], "info@example.org": "ann@example.org"},
        "masquerade": {"internal.example": "example.org"}
    });
    let (proxy, up) = proxy(vec![plugin("rewriter", wasm::ADDRESS_REWRITER, config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<joe@Internal.Example>", 250).await;
    c.cmd("RCPT TO:<Sales@example.org>", 250).await;
    c.cmd("RCPT TO:<carol@example.org>", 250).await;
    c.cmd("DATA", 354).await;
    c.send(stuff(b"Subject: hi\r\n\r\nhello\r\n")).await;
    c.expect(250).await;
    // The null sender is never masqueraded.
    c.cmd("MAIL FROM:<>", 250).await;
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let m = &up.messages()[0];
    assert_eq!(m.mail_from, "MAIL FROM:<joe@example.org>");
    assert_eq!(m.rcpts, ["RCPT TO:<ann@example.org>", "RCPT TO:<bob@example.org>", "RCPT TO:<carol@example.org>"]);
    assert!(up.commands().contains(&"MAIL FROM:<>".to_string()));
    assert!(!up.commands().iter().any(|l| l.to_ascii_lowercase().contains("sales@")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_stamper_adds_and_removes_headers() {
    let config = json!({"add": {"X-Filtered-By": "wasmtp"}, "remove": ["X-Spam-Flag"]});
    let (proxy, up) = proxy(vec![plugin("stamper", wasm::HEADER_STAMPER, config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let message = b"X-Spam-Flag: YES\r\nSubject: hi\r\nx-spam-flag: again\r\n\r\nbody\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(message)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert_eq!(
        strip_our_received(&up.messages()[0].wire),
        b"Subject: hi\r\nX-Filtered-By: wasmtp\r\n\r\nbody\r\n.\r\n"
    );
}

const EXE_MAIL: &str = "From: a@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n\
--XYZ\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n\
--XYZ\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment;\r\n filename*=UTF-8''invoice%2Epdf.EXE\r\n\
Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--XYZ--\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_guard_refuses_forbidden_attachments_and_tags_suspicious_mail() {
    let (proxy, up) = proxy(vec![plugin("guard", wasm::CONTENT_GUARD, json!({}))]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let r = c.send_mail("a@example.org", &["b@example.net"], &stuff(EXE_MAIL.as_bytes())).await;
    assert_eq!(r.code, 550, "{r:?}");
    assert!(r.text().contains("5.7.1") && r.text().contains(".exe"), "{r:?}");

    let phishy =
        b"Subject: Account notice\r\nContent-Type: text/plain\r\n\r\nPlease VERIFY  your\r\naccount today.\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(phishy)).await.code, 250);
    let clean = b"Subject: Lunch\r\n\r\nNoon?\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(clean)).await.code, 250);
    // A phrase anywhere in a longer body (at the start, in the middle, at the very end), in any
    // case and across a line break; and one that is not quite it.
    let filler = "a line of ordinary text, typical of a message body.\r\n".repeat(20);
    let offsets = [0, 15, 16, 17, 500, filler.len() - 3, filler.len()];
    for (i, at) in offsets.iter().enumerate() {
        let (head, tail) = filler.split_at(*at);
        let text = if i % 2 == 0 { "Wire\r\n transfer" } else { "wire TRANSFER" };
        let message = format!("Subject: m{i}\r\n\r\n{head}{text}{tail}");
        assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(message.as_bytes())).await.code, 250);
    }
    let near_miss = format!("Subject: near\r\n\r\n{filler}wire transfe");
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(near_miss.as_bytes())).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;

    let msgs = up.messages();
    assert_eq!(msgs.len(), 3 + offsets.len(), "the .exe message never went upstream");
    for (i, at) in offsets.iter().enumerate() {
        let subject = format!("Subject: [SUSPICIOUS] m{i}\r\n");
        assert!(strip_our_received(&msgs[2 + i].wire).starts_with(subject.as_bytes()), "phrase at {at} not found");
    }
    assert!(strip_our_received(&msgs[2 + offsets.len()].wire).starts_with(b"Subject: near\r\n"));
    assert_eq!(
        strip_our_received(&msgs[0].wire),
        b"Subject: [SUSPICIOUS] Account notice\r\nContent-Type: text/plain\r\n\r\nPlease VERIFY  your\r\naccount today.\r\n.\r\n"
    );
    assert_eq!(strip_our_received(&msgs[1].wire), &stuff(clean)[..]);
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_tempfails_past_the_limit_per_client_ip() {
    let config = json!({"limit": 2, "window_secs": 60});
    let (proxy, _up) = proxy(vec![plugin("ratelimit", wasm::RATE_LIMITER, config)]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    for _ in 0..2 {
        c.cmd("MAIL FROM:<a@example.org>", 250).await;
        c.cmd("RSET", 250).await;
    }
    let r = c.cmd("MAIL FROM:<a@example.org>", 450).await;
    assert!(r.text().contains("4.7.1") && r.text().contains("127.0.0.1"), "{r:?}");
    // Another connection from the same address shares the count.
    let mut other = proxy.client().await;
    other.greet().await;
    other.cmd("MAIL FROM:<b@example.org>", 450).await;
    // The window ends with its TTL.
    tokio::time::advance(Duration::from_secs(61)).await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("QUIT", 221).await;
    other.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disclaimer_appends_a_footer() {
    let (proxy, up) =
        proxy(vec![plugin("disclaimer", wasm::DISCLAIMER, json!({"text": "Sent through wasmtp."}))]).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let plain = b"Subject: plain\r\nContent-Type: text/plain\r\n\r\nHello.\r\n.leading dot\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(plain)).await.code, 250);
    let mixed = b"Subject: mixed\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nHi\r\n--b1--\r\n";
    assert_eq!(c.send_mail("a@example.org", &["b@example.net"], &stuff(mixed)).await.code, 250);
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    let msgs = up.messages();
    assert_eq!(
        unstuff(strip_our_received(&msgs[0].wire)),
        b"Subject: plain\r\nContent-Type: text/plain\r\n\r\nHello.\r\n.leading dot\r\n\r\n-- \r\nSent through wasmtp.\r\n"
    );
    let second = String::from_utf8(unstuff(strip_our_received(&msgs[1].wire))).unwrap();
    assert!(
        second.ends_with("Hi\r\n--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nSent through wasmtp.\r\n--b1--\r\n"),
        "{second}"
    );
}
