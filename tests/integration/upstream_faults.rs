//! Upstream faults at every stage — 4xx, 5xx, hanging, closing — reach the client as the
//! matching 4xx/5xx and never as a false 250; client aborts never complete a message upstream.

use std::time::{Duration, Instant};

use crate::support::*;

/// Short upstream budgets so hangs are detected quickly (tested values, not sleeps).
pub(crate) const FAST: &str = "[timeouts]\nidle = \"30s\"\n[upstream]\nconnect_timeout = \"300ms\"\n\
                    command_timeout = \"300ms\"\ndata_timeout = \"500ms\"\n";

#[derive(Debug, Clone, Copy, PartialEq)]
enum At {
    Greeting,
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

/// What the client should see: a reply class.
fn expected_class(fault: &Fault) -> u16 {
    match fault {
        Fault::Reply(line) if line.starts_with('5') => 5,
        _ => 4,
    }
}

/// Runs one transaction against an upstream with `fault` at `at`; returns the client's replies
/// to MAIL, RCPT and (if it got that far) the final reply.
async fn run_case(at: At, fault: Fault) {
    let mut script = Script::default();
    let slot = match at {
        At::Greeting => &mut script.greeting,
        At::Mail => &mut script.mail,
        At::Rcpt => &mut script.rcpt,
        At::Data => &mut script.data,
        At::EndOfData => &mut script.end_of_data,
    };
    *slot = Some(fault.clone());
    let up = Recorder::start(script).await;
    let proxy = TestProxy::start(FAST, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    let class = expected_class(&fault);
    let case = format!("{at:?} {fault:?}");

    c.send("MAIL FROM:<a@example.org>\r\n").await;
    let mail = c.reply().await;
    if matches!(at, At::Greeting | At::Mail) {
        assert_eq!(mail.code / 100, class, "{case}: MAIL got {mail:?}");
        if fault_is_421(&fault) {
            assert_eq!(mail.code, 451, "{case}: a 421 upstream must not close the client's session");
        }
        c.cmd("QUIT", 221).await;
        finish(&up, proxy, &case).await;
        return;
    }
    assert_eq!(mail.code, 250, "{case}");
    c.send("RCPT TO:<b@example.net>\r\n").await;
    let rcpt = c.reply().await;
    if at == At::Rcpt {
        assert_eq!(rcpt.code / 100, class, "{case}: RCPT got {rcpt:?}");
        // No recipient: DATA is refused, never a 250 for a message.
        c.cmd("DATA", 554).await;
        c.cmd("QUIT", 221).await;
        finish(&up, proxy, &case).await;
        return;
    }
    assert_eq!(rcpt.code, 250, "{case}");
    c.cmd("DATA", 354).await;
    c.send(stuff(b"Subject: fault\r\n\r\nbody\r\n")).await;
    let started = Instant::now();
    let final_reply = c.reply().await;
    assert_eq!(final_reply.code / 100, class, "{case}: final reply {final_reply:?}");
    if matches!(fault, Fault::Hang) {
        let budget = if at == At::EndOfData { Duration::from_millis(500) } else { Duration::from_millis(300) };
        assert!(started.elapsed() >= budget, "{case}: answered before the budget ran out");
    }
    c.cmd("QUIT", 221).await;
    finish(&up, proxy, &case).await;
}

fn fault_is_421(fault: &Fault) -> bool {
    matches!(fault, Fault::Reply(line) if line.starts_with("421"))
}

async fn finish(up: &Recorder, proxy: TestProxy, case: &str) {
    proxy.stop().await;
    assert!(up.messages().iter().all(|m| !m.accepted), "{case}: upstream accepted a message");
}

fn faults() -> Vec<Fault> {
    vec![
        Fault::Reply("451 4.3.0 Try again later"),
        Fault::Reply("421 4.3.2 Going down"),
        Fault::Reply("554 5.7.1 Go away"),
        Fault::Hang,
        Fault::Close,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_greeting_and_mail() {
    for at in [At::Greeting, At::Mail] {
        for fault in faults() {
            run_case(at, fault).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_rcpt() {
    for fault in faults() {
        run_case(At::Rcpt, fault).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_at_data_and_end_of_data() {
    for at in [At::Data, At::EndOfData] {
        for fault in faults() {
            run_case(at, fault).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_is_a_tempfail() {
    let port = free_port(); // nothing listens here
    let proxy = TestProxy::start(FAST, &format!("smtp://127.0.0.1:{port}")).await;
    let mut c = proxy.client().await;
    let ehlo = c.greet().await;
    assert!(!ehlo.text().contains("8BITMIME"), "nothing end-to-end is promised for an unknown upstream");
    let r = c.cmd("MAIL FROM:<a@example.org>", 451).await;
    assert!(r.text().contains("4.4.1"), "{r:?}");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_rset_quit_and_disconnect_reach_the_upstream() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(FAST, &up.url()).await;

    // RSET is passed on.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("RSET", 250).await;
    up.saw_command("RSET").await;
    c.cmd("QUIT", 221).await;
    up.all_closed().await;
    assert_eq!(up.commands().last().map(String::as_str), Some("QUIT"));

    // A client that disconnects mid-DATA leaves nothing upstream: no DATA was ever sent there.
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    c.send("Subject: half\r\n\r\nhalf a messa").await;
    drop(c);
    up.all_closed().await;
    assert!(up.messages().is_empty());
    assert!(!up.commands().iter().any(|l| l == "DATA"), "{:?}", up.commands());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_connect_upstream_only_for_mail() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(FAST, &up.url()).await;
    // The start-up probe learned the capabilities and left.
    up.closed_connections(1).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("NOOP", 250).await;
    assert_eq!(up.connections(), 1, "EHLO and NOOP do not need the upstream");
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    assert_eq!(up.connections(), 2);
    c.cmd("RSET", 250).await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    assert_eq!(up.connections(), 2, "the upstream connection is reused across transactions");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_reused_across_sessions() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start_pooled(wasmtp::Config::parse(FAST).unwrap(), &up.url()).await;
    up.closed_connections(1).await; // the start-up probe
    for i in 0..3 {
        let mut c = proxy.client().await;
        c.greet().await;
        let reply = c.send_mail("a@example.org", &["b@example.net"], &stuff(b"Subject: pooled\r\n\r\nx\r\n")).await;
        assert_eq!(reply.code, 250, "message {i}");
        c.cmd("QUIT", 221).await;
    }
    assert_eq!(up.connections(), 2, "three sessions shared one upstream connection");
    assert_eq!(up.messages().len(), 3);

    // The upstream closes the idle connection; the next session notices and reconnects.
    up.drop_connections();
    up.all_closed().await;
    let mut c = proxy.client().await;
    c.greet().await;
    let reply = c.send_mail("a@example.org", &["b@example.net"], &stuff(b"Subject: after\r\n\r\nx\r\n")).await;
    assert_eq!(reply.code, 250, "a stale pooled connection is replaced, not reported");
    c.cmd("QUIT", 221).await;
    proxy.stop().await;
    assert_eq!(up.messages().len(), 4);
    up.all_closed().await;
    assert_eq!(up.commands().last().map(String::as_str), Some("QUIT"), "pooled connections get QUIT at shutdown");
}

/// What the client was promised is checked against the connection that carries the
/// transaction: an upstream that drops 8BITMIME and SMTPUTF8 and lowers SIZE never gets raw
/// 8-bit data, a UTF-8 envelope or an oversized message, on a pooled or on a fresh connection,
/// and EHLO replies follow it within a probe interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_follow_the_connection_that_carries_the_transaction() {
    for pooled in [true, false] {
        let up = Recorder::start(Script::default()).await;
        let mut config = wasmtp::Config::parse(FAST).unwrap();
        config.upstream.probe_interval = Duration::from_millis(100);
        let proxy = if pooled {
            TestProxy::start_pooled(config, &up.url()).await
        } else {
            TestProxy::start_with(config, &up.url()).await
        };
        let eight_bit = stuff("Subject: caf\u{e9}\r\n\r\ncr\u{e8}me br\u{fb}l\u{e9}e\r\n".as_bytes());
        let mut c = proxy.client().await;
        c.greet().await;
        c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME", 250).await;
        c.cmd("RCPT TO:<b@example.org>", 250).await;
        c.cmd("DATA", 354).await;
        c.send(&eight_bit).await;
        c.expect(250).await;
        c.cmd("QUIT", 221).await;
        c.closed().await;

        up.set_extensions(vec!["PIPELINING", "SIZE 1000", "ENHANCEDSTATUSCODES"]);
        let mut c = proxy.client().await;
        c.greet().await;
        let r = c.cmd("MAIL FROM:<a@example.org> BODY=8BITMIME", 554).await;
        assert_eq!(r.lines, ["554 5.6.3 The upstream does not accept 8-bit data"], "pooled={pooled}");
        // The EHLO above promised SMTPUTF8 and a large SIZE: the connection decides.
        let r = c.cmd("MAIL FROM:<a@example.org> SMTPUTF8", 553).await;
        assert_eq!(r.lines, ["553 5.6.7 The upstream does not accept SMTPUTF8"]);
        let r = c.cmd("MAIL FROM:<a@example.org> SIZE=5000", 552).await;
        assert_eq!(r.lines, ["552 5.3.4 Message size exceeds the upstream's limit"]);
        // No SIZE given: refused at the end of data, never a 250.
        c.cmd("MAIL FROM:<a@example.org>", 250).await;
        c.cmd("RCPT TO:<b@example.org>", 250).await;
        c.cmd("DATA", 354).await;
        c.send(stuff(&sample_message(4000))).await;
        let r = c.expect(552).await;
        assert_eq!(r.lines, ["552 5.3.4 Message size exceeds the upstream's limit"]);
        // 8-bit data without BODY=8BITMIME: refused, never sent raw.
        c.cmd("MAIL FROM:<a@example.org>", 250).await;
        c.cmd("RCPT TO:<b@example.org>", 250).await;
        c.cmd("DATA", 354).await;
        c.send(&eight_bit).await;
        c.expect(554).await;
        c.cmd("QUIT", 221).await;
        c.closed().await;
        assert_eq!(up.messages().len(), 1, "pooled={pooled}: only the first message reached the upstream");
        assert!(!up.commands().iter().any(|l| l.starts_with("MAIL") && l.contains("SMTPUTF8")));

        // Within a probe interval, EHLO advertises the upstream's new SIZE.
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let mut c = proxy.client().await;
            let ehlo = c.greet().await;
            c.cmd("QUIT", 221).await;
            if ehlo.lines.iter().any(|l| l.ends_with("SIZE 1000")) {
                assert!(!ehlo.lines.iter().any(|l| l.ends_with("8BITMIME") || l.ends_with("SMTPUTF8")), "{ehlo:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "EHLO still promises the old limits: {ehlo:?}");
            up.saw_command("EHLO").await;
        }
        proxy.stop().await;
    }
}
