//! The cost of STARTTLS on the client side, end to end: the real binary in front of Postfix's
//! smtp-sink, driven by clients in this process that send 5 KiB messages, one connection per
//! message, with and without STARTTLS, in the same run. Prints messages/s and the proxy's CPU
//! per 1000 messages with their ratio to plain, and the RSS per idle TLS session with 10 000
//! of them. `cargo bench -p wasmtp --bench tls` (needs smtp-sink: scripts/setup --test).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Raises the open-file limit to its hard maximum (10 000 sessions need 10 000 descriptors).
fn raise_nofile() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain calls with a valid pointer to an rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn reply(stream: &mut BufReader<Box<dyn Io>>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await.unwrap();
        assert!(line.len() >= 4, "connection closed");
        if line.as_bytes()[3] == b' ' {
            return line;
        }
    }
}

async fn command(stream: &mut BufReader<Box<dyn Io>>, line: &str, code: &str) {
    stream.get_mut().write_all(line.as_bytes()).await.unwrap();
    let r = reply(stream).await;
    assert!(r.starts_with(code), "{line:?} got {r:?}");
}

fn connector() -> tokio_rustls::TlsConnector {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects, says EHLO and, with `tls`, STARTTLS and EHLO again.
async fn open(addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>) -> BufReader<Box<dyn Io>> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut stream = BufReader::new(Box::new(tcp) as Box<dyn Io>);
    reply(&mut stream).await;
    command(&mut stream, "EHLO bench.example\r\n", "250").await;
    let Some(connector) = tls else { return stream };
    command(&mut stream, "STARTTLS\r\n", "220").await;
    let name = rustls::pki_types::ServerName::try_from("bench.localhost").unwrap();
    let tls = connector.connect(name, stream.into_inner()).await.unwrap();
    let mut stream = BufReader::new(Box::new(tls) as Box<dyn Io>);
    command(&mut stream, "EHLO bench.example\r\n", "250").await;
    stream
}

async fn send_one(addr: SocketAddr, tls: Option<&tokio_rustls::TlsConnector>, body: &[u8]) {
    let mut s = open(addr, tls).await;
    command(&mut s, "MAIL FROM:<a@example.org>\r\n", "250").await;
    command(&mut s, "RCPT TO:<b@example.org>\r\n", "250").await;
    command(&mut s, "DATA\r\n", "354").await;
    s.get_mut().write_all(body).await.unwrap();
    let r = reply(&mut s).await;
    assert!(r.starts_with("250"), "{r}");
    command(&mut s, "QUIT\r\n", "221").await;
}

/// `count` messages over `conc` parallel clients: (messages/s, proxy CPU s per 1000).
async fn run(addr: SocketAddr, pid: u32, tls: bool, conc: usize, count: usize) -> (f64, f64) {
    let connector = Arc::new(connector());
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    while body.len() < 5120 {
        body.extend_from_slice(b"a line of text of a typical length for a message body, more or less.\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let body = Arc::new(body);
    let cpu = cpu_seconds(pid);
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..conc)
        .map(|_| {
            let (connector, body, next) = (connector.clone(), body.clone(), next.clone());
            tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                    send_one(addr, tls.then_some(&*connector), &body).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    (count as f64 / elapsed, (cpu_seconds(pid) - cpu) * 1000.0 / count as f64)
}

fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_wasmtp"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("tls bench: skipped outside `cargo bench`");
        return;
    }
    raise_nofile();
    let sink_port = free_port();
    let mut sink = Command::new("/usr/sbin/smtp-sink")
        .args(["-u", "nobody", &format!("127.0.0.1:{sink_port}"), "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink (scripts/setup --test installs postfix)");
    wait_port(sink_port);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("wasmtp.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nhostname = \"bench.localhost\"\nmax_connections = 20000\n\
             [upstream]\nurl = \"smtp://127.0.0.1:{sink_port}\"\n[log]\nlevel = \"warn\"\n"
        ),
    )
    .unwrap();
    let mut proxy = start(&config);
    wait_port(port);
    let pid = proxy.id();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!("wasmtp STARTTLS benchmark: 5 KiB messages, one connection each, self-signed certificate");
    println!("| case | plain msg/s | STARTTLS msg/s | ratio | plain CPU s/1000 | STARTTLS CPU s/1000 | ratio |");
    println!("|---|---|---|---|---|---|---|");
    runtime.block_on(async {
        run(addr, pid, true, 10, 300).await; // warm-up
        for (conc, count) in [(10, 3000), (50, 5000)] {
            let (plain_mps, plain_cpu) = run(addr, pid, false, conc, count).await;
            let (tls_mps, tls_cpu) = run(addr, pid, true, conc, count).await;
            println!(
                "| c={conc} | {plain_mps:.0} | {tls_mps:.0} | {:.2} | {plain_cpu:.2} | {tls_cpu:.2} | {:.2} |",
                tls_mps / plain_mps,
                tls_cpu / plain_cpu
            );
        }
        // Idle TLS sessions: past STARTTLS and the second EHLO, then held open.
        let before = rss_kib(pid);
        let connector = connector();
        let mut idle = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            idle.push(open(addr, Some(&connector)).await);
        }
        let after = rss_kib(pid);
        println!(
            "10000 idle TLS sessions: proxy RSS {:.1} MiB before, {:.1} MiB with them: {:.1} KiB per session",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after - before) as f64 / 10_000.0
        );
        drop(idle);
    });
    let _ = proxy.kill();
    let _ = proxy.wait();
    let _ = sink.kill();
    let _ = sink.wait();
}
