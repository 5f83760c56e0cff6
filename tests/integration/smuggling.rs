//! SMTP smuggling: every fake end-of-data sequence in tests/data/smuggling_vectors.json, each
//! followed by a smuggled transaction from `spoof@`, plus pipelining past sync points and
//! awkward read boundaries. Nothing from `spoof@` may ever reach the upstream.

use crate::support::*;

const REJECT: &str = "[timeouts]\nidle = \"30s\"\n";
const NORMALIZE: &str = "[server]\nline_endings = \"normalize\"\n[timeouts]\nidle = \"30s\"\n";

const SMUGGLED: &str = "MAIL FROM:<spoof@evil.example>\r\nRCPT TO:<victim@example.net>\r\nDATA\r\n\
                        From: spoof@evil.example\r\nSubject: smuggled\r\n\r\nspoofed\r\n.\r\n";

struct Vector {
    id: String,
    bytes: Vec<u8>,
}

fn vectors() -> Vec<Vector> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/smuggling_vectors.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let list = json["vectors"].as_array().unwrap();
    assert!(list.len() >= 16);
    list.iter()
        .map(|v| {
            let escaped = v["bytes"].as_str().unwrap();
            let bytes = escaped.replace("\\r", "\r").replace("\\n", "\n").replace("\\u0000", "\0").into_bytes();
            Vector { id: v["id"].as_str().unwrap().to_string(), bytes }
        })
        .collect()
}

/// Nothing the upstream saw came from, or was addressed as, the smuggled transaction.
fn assert_nothing_smuggled(up: &Recorder, id: &str) {
    for cmd in up.commands() {
        assert!(!cmd.contains("spoof@"), "{id}: upstream received {cmd:?}");
    }
    for m in up.messages() {
        assert!(!m.mail_from.contains("spoof@"), "{id}: upstream received a message from spoof@");
    }
}

/// Starts a proxy with `config`, opens a legitimate transaction and sends a body line, the
/// vector and a smuggled transaction as its data; returns what the client got first.
async fn smuggle(config: &str, vector: &Vector) -> (Recorder, TestProxy, Client, client::Reply) {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(config, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<legit@example.org>", 250).await;
    c.cmd("RCPT TO:<victim@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    c.send([b"Subject: legit\r\n\r\nbody\r\n".as_slice(), &vector.bytes, SMUGGLED.as_bytes()].concat()).await;
    let reply = c.reply().await;
    (up, proxy, c, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_vector_is_refused_and_nothing_is_smuggled() {
    for vector in vectors() {
        let (up, proxy, mut c, reply) = smuggle(REJECT, &vector).await;
        if vector.id == "nulsuffix" {
            // A genuine end of data followed by "\0MAIL FROM": the message is fine, the NUL
            // command is refused, RCPT has no MAIL, and the smuggled DATA (with its body
            // already sent) is a synchronisation error.
            assert_eq!(reply.code, 250, "{}: {reply:?}", vector.id);
            c.expect(500).await;
            c.expect(503).await;
            let r = c.expect(554).await;
            assert!(r.text().contains("5.5.0"), "{r:?}");
            assert_eq!(up.messages().len(), 1);
        } else {
            assert_eq!(reply.code, 550, "{}: {reply:?}", vector.id);
            assert!(reply.text().contains("5.6.0"), "{}: {reply:?}", vector.id);
            assert!(up.messages().is_empty(), "{}: a message reached the upstream", vector.id);
        }
        // The session ends: the client showed it cannot be trusted to frame its input.
        c.closed().await;
        up.all_closed().await;
        assert_nothing_smuggled(&up, &vector.id);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalize_relays_the_smuggled_text_as_content_only() {
    for vector in vectors() {
        let (up, proxy, mut c, reply) = smuggle(NORMALIZE, &vector).await;
        assert_eq!(reply.code, 250, "{}: {reply:?}", vector.id);
        let genuine_end = vector.id == "nulsuffix" || vector.id == "nulprefix";
        if vector.id == "nulsuffix" {
            // The message was clean; "\0MAIL" is refused and the smuggled DATA is a sync error.
            c.expect(500).await;
            c.expect(503).await;
        }
        if genuine_end {
            // Commands pipelined after a message that needed normalising are not executed.
            let r = c.expect(554).await;
            assert!(r.text().contains("5.5.0"), "{r:?}");
            c.closed().await;
        } else {
            c.cmd("QUIT", 221).await;
        }
        up.all_closed().await;
        assert_nothing_smuggled(&up, &vector.id);
        let msgs = up.messages();
        assert_eq!(msgs.len(), 1, "{}", vector.id);
        let wire = &msgs[0].wire;
        assert!(!wire.contains(&0), "{}: NUL relayed", vector.id);
        for (i, &b) in wire.iter().enumerate() {
            assert!(b != b'\n' || wire[i - 1] == b'\r', "{}: bare LF relayed", vector.id);
            assert!(b != b'\r' || wire.get(i + 1) == Some(&b'\n'), "{}: bare CR relayed", vector.id);
        }
        let body = &wire[..wire.len() - 3];
        assert!(!body.windows(5).any(|w| w == b"\r\n.\r\n"), "{}: early end of data relayed", vector.id);
        if !genuine_end {
            assert!(String::from_utf8_lossy(wire).contains("spoofed"), "{}: smuggled text kept as content", vector.id);
        }
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_transactions_in_one_write_are_a_synchronisation_error() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(REJECT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.send(
        "MAIL FROM:<legit@example.org>\r\nRCPT TO:<a@example.net>\r\nDATA\r\nSubject: one\r\n\r\none\r\n.\r\n\
         MAIL FROM:<spoof@evil.example>\r\nRCPT TO:<a@example.net>\r\nDATA\r\nSubject: two\r\n\r\ntwo\r\n.\r\n",
    )
    .await;
    c.expect(250).await;
    c.expect(250).await;
    let r = c.expect(554).await;
    assert!(r.text().contains("5.5.0"), "{r:?}");
    c.closed().await;
    up.all_closed().await;
    assert!(up.messages().is_empty());
    assert_nothing_smuggled(&up, "two-in-one-write");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_sent_before_354_is_never_read_as_a_message() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(REJECT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<legit@example.org>", 250).await;
    c.cmd("RCPT TO:<a@example.net>", 250).await;
    c.send("DATA\r\nSubject: early\r\n\r\nearly\r\n.\r\n").await;
    c.expect(554).await;
    c.closed().await;
    up.all_closed().await;
    assert!(up.messages().is_empty());
    assert!(!up.commands().iter().any(|l| l == "DATA"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminator_one_byte_per_write() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start(REJECT, &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    c.send("Subject: slow\r\n\r\nbody").await;
    for b in b"\r\n.\r\n" {
        c.send([*b]).await;
    }
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    assert_eq!(strip_our_received(&up.messages()[0].wire), b"Subject: slow\r\n\r\nbody\r\n.\r\n");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_line_across_the_read_buffer_with_the_dot_just_past_it() {
    let up = Recorder::start(Script::default()).await;
    let proxy = TestProxy::start("[limits]\nmax_line_length = 200000\n", &up.url()).await;
    let mut c = proxy.client().await;
    c.greet().await;
    c.cmd("MAIL FROM:<a@example.org>", 250).await;
    c.cmd("RCPT TO:<b@example.net>", 250).await;
    c.cmd("DATA", 354).await;
    // The proxy reads 64 KiB at a time: this line ends so that ".\r\n" starts just past it.
    let head = b"Subject: long\r\n\r\n";
    let line_len = (64 << 10) - head.len() - 2 + 1;
    let mut body = head.to_vec();
    body.extend(std::iter::repeat_n(b'x', line_len));
    body.extend_from_slice(b"\r\n.\r\n");
    c.send(&body).await;
    c.expect(250).await;
    c.cmd("QUIT", 221).await;
    let msgs = up.messages();
    assert_eq!(strip_our_received(&msgs[0].wire), &body[..]);
    proxy.stop().await;
}
