//! A real DNS server on loopback for the mail authentication tests: dnsmasq (Debian package
//! `dnsmasq-base`) serving the test zones from command-line records, never the internet.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{WAIT, free_port};

/// The address the authentication tests connect from (it has PTR and SPF records).
pub const CLIENT_IP: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

pub struct TestDns {
    pub addr: SocketAddr,
    child: Child,
}

fn key(name: &str) -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/dkim/").to_string() + name;
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

impl TestDns {
    /// Starts dnsmasq with the test zones (see the records below).
    pub async fn start() -> Self {
        let port = free_port();
        let rsa = key("rsa.pub.b64");
        let ed = key("ed25519.pub.b64");
        let proxy = key("proxy-rsa.pub.b64");
        let mut records: Vec<String> = vec![
            // The test client connects from 127.0.0.2; HELO SPF via the a mechanism.
            "--host-record=mail.example.org,127.0.0.2".into(),
            "--txt-record=mail.example.org,v=spf1 a -all".into(),
            // SPF, one domain per result.
            "--txt-record=example.org,v=spf1 ip4:127.0.0.2 -all".into(),
            "--txt-record=fail.example,v=spf1 -all".into(),
            "--txt-record=soft.example,v=spf1 ~all".into(),
            "--txt-record=neutral.example,v=spf1 ?all".into(),
            // A syntax error (include without a domain): permerror (RFC 7208 §4.6).
            "--txt-record=perm.example,v=spf1 include -all".into(),
            "--txt-record=include.example,v=spf1 include:example.org -all".into(),
            "--txt-record=redirect.example,v=spf1 redirect=example.org".into(),
            "--txt-record=macro.example,v=spf1 exists:%{ir}.ip.macro.example -all".into(),
            "--host-record=2.0.0.127.ip.macro.example,127.0.0.3".into(),
            // Every other name is answered NXDOMAIN here, never forwarded.
            "--local=/#/".into(),
            // temp.example is delegated to a server that does not answer: SERVFAIL.
            "--server=/temp.example/127.0.0.1#1".into(),
            // DKIM keys.
            format!("--txt-record=sel._domainkey.example.org,v=DKIM1; k=rsa; p={rsa}"),
            format!("--txt-record=ed._domainkey.example.org,v=DKIM1; k=ed25519; p={ed}"),
            format!("--txt-record=proxy._domainkey.example.org,v=DKIM1; k=rsa; p={proxy}"),
            format!("--txt-record=sel._domainkey.other.example,v=DKIM1; k=rsa; p={rsa}"),
            // DMARC: example.org rejects, its subdomains quarantine; other.example monitors.
            "--txt-record=_dmarc.example.org,v=DMARC1; p=reject; sp=quarantine".into(),
            "--txt-record=_dmarc.other.example,v=DMARC1; p=none".into(),
            "--host-record=sub.example.org,127.0.0.9".into(),
            "--host-record=other.example,127.0.0.10".into(),
        ];
        // An SPF record that needs more than 10 DNS lookups (RFC 7208 §4.6.4): permerror.
        let includes: Vec<String> = (1..=11).map(|i| format!("include:l{i}.loop.example")).collect();
        records.push(format!("--txt-record=loop.example,v=spf1 {} -all", includes.join(" ")));
        for i in 1..=11 {
            records.push(format!("--txt-record=l{i}.loop.example,v=spf1 -all"));
        }
        let child = Command::new("/usr/sbin/dnsmasq")
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--bind-interfaces"])
            .args(["--listen-address=127.0.0.1", "--pid-file=", "--log-facility=-"])
            .arg(format!("--port={port}"))
            .args(&records)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq runs (Debian package dnsmasq-base; scripts/setup --test installs it)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let deadline = std::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "dnsmasq did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { addr, child }
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
