//! The plugins' key-value store: `kv-incr` latency seen from inside a plugin (the scripted
//! fixture times 1000 increments per message with the guest's monotonic clock), embedded
//! store against a private `redis-server` on loopback, same run; and the embedded store's
//! memory at the default per-plugin quota, filled with counters and with 64 KiB values.
//! `cargo bench -p wasmtp --bench kv` (needs redis-server: `scripts/setup --test`).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use wasmtp::config::{ListenerConfig, PluginConfig};
use wasmtp::filter::kv::{MemoryKv, Quota};
use wasmtp::server::{BoundListener, Server};
use wasmtp_test_artifacts as wasm;

const MESSAGES: usize = 30;
const INCRS_PER_MESSAGE: u32 = 1000;

/// Sends one message and waits for the end-of-data reply.
async fn send(addr: std::net::SocketAddr) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut expect = async |code: &str| loop {
        let line = lines.next_line().await.unwrap().expect("reply");
        assert!(line.starts_with(code), "expected {code}, got {line}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220").await;
    for (command, code) in
        [("EHLO bench\r\n", "250"), ("MAIL FROM:<a@example.org>\r\n", "250"), ("RCPT TO:<b@example.net>\r\n", "250")]
    {
        write.write_all(command.as_bytes()).await.unwrap();
        expect(code).await;
    }
    write.write_all(b"DATA\r\n").await.unwrap();
    expect("354").await;
    write.write_all(b"Subject: kv\r\n\r\nbody\r\n.\r\n").await.unwrap();
    expect("250").await;
    write.write_all(b"QUIT\r\n").await.unwrap();
}

/// The plugin's p50 and p99 per message (µs), over [`MESSAGES`] messages.
async fn plugin_side(backend: Option<String>) -> (Vec<f64>, Vec<f64>) {
    let mail = tempfile::tempdir().unwrap();
    let mut config = wasmtp::Config::default();
    config.sandbox.cache_dir = Some(std::env::temp_dir().join("wasmtp-bench-cache"));
    config.upstream.url = Some(format!("maildir:{}", mail.path().display()).parse().unwrap());
    config.kv.backend = backend;
    let mut counter = PluginConfig::new("counter", wasm::SCRIPTED);
    let table: toml::Table = toml::from_str(&format!(
        "[manifest]\nstages = [\"data\"]\n[stages.data.kv]\nincr = {{ key = \"n\", count = {INCRS_PER_MESSAGE} }}\n"
    ))
    .unwrap();
    counter.config = table;
    config.plugins = vec![counter];
    let smtp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = smtp.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = Server::new(vec![BoundListener { config: ListenerConfig::smtp(addr), tcp: smtp }], config);
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    for _ in 0..MESSAGES + 2 {
        send(addr).await;
    }
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let (mut p50, mut p99) = (Vec::new(), Vec::new());
    for entry in std::fs::read_dir(mail.path().join("new")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let field = |name: &str| -> f64 {
            let at = text.find(name).unwrap_or_else(|| panic!("no {name} in {text}")) + name.len();
            text[at..].split_whitespace().next().unwrap().parse().unwrap()
        };
        assert!(!text.contains("incr=(error"), "{text}");
        p50.push(field("incr_p50_us="));
        p99.push(field("incr_p99_us="));
    }
    p50.sort_by(f64::total_cmp);
    p99.sort_by(f64::total_cmp);
    // The first two messages warm the compile cache and the connection.
    (p50.split_off(2), p99.split_off(2))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// RSS growth (MiB) of filling one namespace of the embedded store with `value_size` values
/// until the default quota refuses them (or `writes` is reached), and the entries kept.
fn memory_at_quota(writes: usize, value_size: usize) -> (f64, usize) {
    let kv = MemoryKv::new();
    let quota = Quota::default();
    let before = rss_kib();
    let value = vec![b'7'; value_size];
    for i in 0..writes {
        let key = format!("ip:203.0.113.{}:{i}", i % 256);
        let _ = kv.set("plugin", &key, value.clone(), Some(Duration::from_secs(3600)), &quota);
    }
    let grown = (rss_kib().saturating_sub(before)) as f64 / 1024.0;
    let (entries, _) = kv.usage();
    drop(kv);
    // SAFETY: gives freed heap pages back to the system, so the next measurement starts low.
    unsafe { libc::malloc_trim(0) };
    (grown, entries)
}

fn main() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(["--dir", dir.path().to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (scripts/setup --test installs it)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let (memory, redis_side) = runtime
        .block_on(async { (plugin_side(None).await, plugin_side(Some(format!("redis://127.0.0.1:{port}"))).await) });
    let _ = redis.kill();
    let _ = redis.wait();
    let median = |v: &[f64]| v[v.len() / 2];
    println!(
        "kv-incr seen from a plugin ({MESSAGES} messages x {INCRS_PER_MESSAGE} increments; medians over messages):"
    );
    println!("| store | p50 µs | p99 µs |");
    println!("|---|---|---|");
    println!("| embedded | {:.1} | {:.1} |", median(&memory.0), median(&memory.1));
    println!("| redis on loopback | {:.1} | {:.1} |", median(&redis_side.0), median(&redis_side.1));
    println!(
        "ratio redis / embedded: p50 {:.1}x, p99 {:.1}x",
        median(&redis_side.0) / median(&memory.0),
        median(&redis_side.1) / median(&memory.1)
    );

    let (counters_mib, counters) = memory_at_quota(120_000, 2);
    let (values_mib, values) = memory_at_quota(10_000, 64 << 10);
    println!();
    println!(
        "embedded store, one plugin at the default quota ({} entries, {} MiB):",
        Quota::default().entries,
        Quota::default().bytes >> 20
    );
    println!("| writes | kept | RSS growth MiB |");
    println!("|---|---|---|");
    println!("| 120 000 counters (~30-octet keys) | {counters} | {counters_mib:.1} |");
    println!("| 10 000 values of 64 KiB | {values} | {values_mib:.1} |");
}
