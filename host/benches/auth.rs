//! The latency sender authentication adds per message, against a local DNS server (dnsmasq on
//! loopback, as in the tests): `cargo bench -p wasmtp --bench auth`. The same DKIM-signed
//! message is sent through the proxy (embedded Maildir upstream) with `[auth]` off and on, each
//! on a fresh connection, alternating; the figure is the median time from connect to the final
//! 250, and the difference. A benchmark prints, it never fails.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/dkim/");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn reply(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return line;
        }
    }
}

/// One message on a fresh connection; returns the time to its final reply.
fn send(addr: SocketAddr, wire: &[u8]) -> Duration {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    reply(&mut r);
    for cmd in ["EHLO mail.example.org", "MAIL FROM:<a@example.org>", "RCPT TO:<b@example.org>", "DATA"] {
        w.write_all(format!("{cmd}\r\n").as_bytes()).unwrap();
        reply(&mut r);
    }
    w.write_all(wire).unwrap();
    let fin = reply(&mut r);
    assert!(fin.starts_with("250"), "{fin}");
    let elapsed = started.elapsed();
    w.write_all(b"QUIT\r\n").unwrap();
    reply(&mut r);
    elapsed
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("auth bench: skipped outside `cargo bench`");
        return;
    }
    let key = |f: &str| std::fs::read_to_string(format!("{KEYS}{f}")).unwrap().trim().to_string();
    let dns_port = free_port();
    let mut dns = Command::new("/usr/sbin/dnsmasq")
        .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"])
        .args(["--listen-address=127.0.0.1", "--pid-file=", "--log-facility=-", "--local=/#/"])
        .arg(format!("--port={dns_port}"))
        .arg("--host-record=mail.example.org,127.0.0.1")
        .arg("--txt-record=mail.example.org,v=spf1 a -all")
        .arg("--txt-record=example.org,v=spf1 ip4:127.0.0.1 -all")
        .arg(format!("--txt-record=sel._domainkey.example.org,v=DKIM1; k=rsa; p={}", key("rsa.pub.b64")))
        .arg("--txt-record=_dmarc.example.org,v=DMARC1; p=reject")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (scripts/setup --test installs dnsmasq-base)");
    wait_port(([127, 0, 0, 1], dns_port).into());

    let rsa = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::from_pem_file(format!("{KEYS}rsa.pem")).unwrap()).unwrap();
    let mut message = "From: a@example.org\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n".to_string();
    while message.len() < 5 << 10 {
        message.push_str("A line of a typical message body, long enough to be realistic here.\r\n");
    }
    let signature = DkimSigner::from_key(rsa)
        .domain("example.org")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .sign(message.as_bytes())
        .unwrap();
    let wire = format!("{}{message}.\r\n", signature.to_header()).into_bytes();

    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let start = |auth: bool| {
        let mut config = wasmtp::Config::default();
        config.upstream.url =
            Some(format!("maildir:{}", dir.path().join(if auth { "on" } else { "off" }).display()).parse().unwrap());
        config.server.hostname = Some("bench.localhost".into());
        config.auth.enabled = auth;
        config.auth.nameservers = vec![([127, 0, 0, 1], dns_port).into()];
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(wasmtp::server::run(listener, config, std::future::pending::<()>()));
        wait_port(addr);
        addr
    };
    let off = start(false);
    let on = start(true);
    for _ in 0..50 {
        send(off, &wire);
        send(on, &wire);
    }
    let (mut t_off, mut t_on) = (Vec::new(), Vec::new());
    for _ in 0..500 {
        t_off.push(send(off, &wire));
        t_on.push(send(on, &wire));
    }
    t_off.sort();
    t_on.sort();
    let med = |v: &[Duration]| v[v.len() / 2].as_secs_f64() * 1e6;
    let p99 = |v: &[Duration]| v[v.len() * 99 / 100].as_secs_f64() * 1e6;
    println!("sender authentication latency, 5 KiB DKIM-signed message, connect to final 250 (500 messages each):");
    println!("  auth off: median {:.0} us, p99 {:.0} us (baseline)", med(&t_off), p99(&t_off));
    println!(
        "  auth on (iprev, SPF helo + mail, DKIM, ARC, DMARC; local DNS): median {:.0} us, p99 {:.0} us",
        med(&t_on),
        p99(&t_on)
    );
    println!("  added: {:.0} us per message ({:.2}x baseline)", med(&t_on) - med(&t_off), med(&t_on) / med(&t_off));
    let _ = dns.kill();
    let _ = dns.wait();
}
