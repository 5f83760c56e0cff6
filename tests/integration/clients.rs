//! Real SMTP clients through the proxy: swaks and Python's smtplib.

use tokio::process::Command;

use crate::support::*;

const MT: &str = "";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_delivers_through_the_proxy() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let out = tokio::time::timeout(
        WAIT,
        Command::new("swaks")
            .args(["--server", &proxy.addr.ip().to_string(), "--port", &proxy.addr.port().to_string()])
            .args(["--from", "swaks@example.org", "--to", "one@example.net,two@example.net"])
            .args(["--header", "Subject: via swaks", "--body", "line one\n.leading dot\nline three"])
            .args(["--pipeline"])
            .output(),
    )
    .await
    .expect("swaks finishes")
    .expect("swaks runs (Debian package `swaks`; scripts/setup installs it)");
    let transcript = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{transcript}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!transcript.contains("<** ") && transcript.contains("250 2.0.0 Ok: queued as REC1"), "{transcript}");
    let msgs = up.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts.len(), 2);
    let content = String::from_utf8(unstuff(&msgs[0].wire)).unwrap();
    assert!(content.contains("Subject: via swaks\r\n"), "{content}");
    assert!(content.contains("\r\n.leading dot\r\n"), "{content}");
    proxy.stop().await;
}

const SMTPLIB: &str = r#"
import smtplib, sys
host, port = sys.argv[1], int(sys.argv[2])
msg = b"From: py@example.org\r\nTo: rcpt@example.net\r\nSubject: via smtplib\r\n\r\n.dot line\r\nno final newline"
with smtplib.SMTP(host, port, timeout=20) as s:
    s.ehlo("python.example")
    assert s.has_extn("pipelining") and s.has_extn("size"), s.esmtp_features
    refused = s.sendmail("py@example.org", ["rcpt@example.net", "unknown@example.net"], msg)
    assert list(refused) == ["unknown@example.net"], refused
    code, text = s.noop()
    assert code == 250
print("sent")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_smtplib_delivers_through_the_proxy() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(MT, &up.url()).await;
    let out = tokio::time::timeout(
        WAIT,
        Command::new("python3")
            .args(["-c", SMTPLIB, &proxy.addr.ip().to_string(), &proxy.addr.port().to_string()])
            .output(),
    )
    .await
    .expect("python finishes")
    .expect("python3 runs");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let msgs = up.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].rcpts, vec!["RCPT TO:<rcpt@example.net>"]);
    let content = unstuff(&msgs[0].wire);
    assert!(strip_our_received(&content).ends_with(b"\r\n\r\n.dot line\r\nno final newline\r\n"));
    proxy.stop().await;
}
