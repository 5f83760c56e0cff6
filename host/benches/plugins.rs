//! Plugin runtime costs, printed as figures and as ratios to their targets (a benchmark prints,
//! it never fails): `cargo bench -p wasmtp --bench plugins`.
//!
//! `SECTIONS=2,5` runs only those sections.
//!
//! 1. One small stage call including a fresh sandbox (instantiate, call, drop): p50 and p99,
//!    against an empty chain measured in the same run.
//! 2. `on-data` with a 1 MiB body including its fresh sandbox.
//! 3. How long past its budget a spinning plugin keeps running.
//! 4. A restart of the real binary with 5 plugins and a warm compile cache: time to the first
//!    accepted connection, against the same binary without plugins.
//! 5. Each plugin of the end-to-end benchmark per call (data-stage ones at 5 KiB and 1 MiB).
//! 6. The external tagger in Rust, Python and JavaScript: a data-stage call with its fresh
//!    sandbox (p50, p99, as a ratio to the Rust one), the load time cold and from the compile
//!    cache, and the resident memory with 50 calls in flight.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use wasmtp::Config;
use wasmtp::config::PluginConfig;
use wasmtp::filter::Chain;
use wasmtp::filter::Outcome;
use wasmtp::filter::api::Connection;
use wasmtp::filter::host::{NoteScopes, Notes};
use wasmtp::filter::stages::{DataState, MailState, StageState};
use wasmtp::message::HeaderSection;
use wasmtp::smtp::Mailbox;
use wasmtp_test_artifacts as wasm;

/// Runs one stage outside any session, as a session with no notes would.
async fn run_stage<S: StageState>(chain: &Chain, state: &mut S) -> Outcome {
    let conn = Connection::new("bench".into(), "127.0.0.1:1".parse().unwrap());
    let mut notes = Notes::default();
    chain.run(&conn, NoteScopes { session: &mut notes, transaction: None }, state).await
}

fn plugin(name: &str, path: &str, config: serde_json::Value) -> PluginConfig {
    PluginConfig { config: serde_json::from_value(config).unwrap(), ..PluginConfig::new(name, path) }
}

fn config_with(plugins: Vec<PluginConfig>, cache: &std::path::Path) -> Config {
    let mut config = Config { plugins, ..Default::default() };
    config.sandbox.cache_dir = Some(cache.to_path_buf());
    config
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A message of about `size` octets (typical body lines), split into its header section and body.
fn message_of_size(size: usize) -> (HeaderSection, Arc<Vec<u8>>) {
    let mut message = b"From: a@example.org\r\nTo: b@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    while message.len() < size {
        message.extend_from_slice(b"a line of text of a typical length for a message body, more or less.\r\n");
    }
    let headers = HeaderSection::parse(&message, 10_000).unwrap();
    let body = Arc::new(message[headers.body_offset as usize..].to_vec());
    (headers, body)
}

/// The data stage's state for that message, as the session builds it.
fn data_state(headers: &HeaderSection, body: &Arc<Vec<u8>>) -> DataState {
    let sender = Mailbox::parse("a@example.org", false, false).unwrap();
    let rcpt = Mailbox::parse("b@example.org", false, true).unwrap();
    DataState::new(sender, vec![rcpt], headers.clone(), body.clone(), body.len() as u64, false, 50 << 20)
}

async fn mail_call_latencies(plugins: &Chain, n: usize) -> Vec<Duration> {
    let sender = Mailbox::parse("someone@example.org", false, false).unwrap();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut state = MailState { sender: sender.clone(), params: vec![], utf8: false };
        let started = Instant::now();
        let outcome = run_stage(plugins, &mut state).await;
        samples.push(started.elapsed());
        assert_eq!(outcome, Outcome::Continue);
    }
    samples.sort();
    samples
}

async fn stage_call(cache: &std::path::Path) {
    let empty = Chain::empty();
    let (one, _) =
        wasmtp::wasm::load(&config_with(vec![plugin("bouncer", wasm::SDK_EXAMPLE, json!({}))], cache)).await.unwrap();
    mail_call_latencies(&one, 500).await; // warm-up
    let base = mail_call_latencies(&empty, 20_000).await;
    let calls = mail_call_latencies(&one, 20_000).await;
    let (p50, p99) = (percentile(&calls, 0.5), percentile(&calls, 0.99));
    println!("1. mail stage, one plugin, fresh sandbox per call (20000 calls):");
    println!("   empty chain p50 {:.2} us (baseline)", us(percentile(&base, 0.5)));
    println!(
        "   plugin call  p50 {:.1} us ({:.2}x the 25 us target), p99 {:.1} us ({:.2}x the 100 us target), max {:.1} us",
        us(p50),
        us(p50) / 25.0,
        us(p99),
        us(p99) / 100.0,
        us(*calls.last().unwrap())
    );
}

async fn data_call(cache: &std::path::Path) {
    let hostile = plugin("reader", wasm::HOSTILE, json!({"behaviour": "ok", "stages": ["data"], "body": "full"}));
    let (plugins, _) = wasmtp::wasm::load(&config_with(vec![hostile], cache)).await.unwrap();
    let (headers, body) = message_of_size((1 << 20) + 40);
    let mut samples = Vec::new();
    for i in 0..220 {
        let mut state = data_state(&headers, &body);
        let started = Instant::now();
        let outcome = run_stage(&plugins, &mut state).await;
        if i >= 20 {
            samples.push(started.elapsed());
        }
        assert_eq!(outcome, Outcome::Continue);
    }
    samples.sort();
    let p50 = percentile(&samples, 0.5);
    println!("2. data stage, 1 MiB body, full body access, fresh sandbox per call (200 calls):");
    println!(
        "   p50 {:.0} us ({:.2}x the 1 ms target), p99 {:.0} us",
        us(p50),
        us(p50) / 1000.0,
        us(percentile(&samples, 0.99))
    );
}

/// What each plugin of the end-to-end benchmark costs per message (5 KiB, and 1 MiB for the
/// data-stage ones), fresh sandbox included, so the e2e gap can be attributed.
async fn example_plugins(cache: &std::path::Path) {
    println!("5. per call of the e2e plugins, fresh sandbox (p50):");
    let rewriter =
        plugin("rewriter", wasm::ADDRESS_REWRITER, json!({"masquerade": {"internal.example": "example.org"}}));
    let stamper = plugin("stamper", wasm::HEADER_STAMPER, json!({"add": {"X-Filtered-By": "wasmtp"}}));
    let guard = plugin("guard", wasm::CONTENT_GUARD, json!({}));
    let (p, _) = wasmtp::wasm::load(&config_with(vec![rewriter], cache)).await.unwrap();
    let mail = mail_call_latencies(&p, 2000).await;
    println!("   address-rewriter at MAIL: {:.1} us", us(percentile(&mail, 0.5)));
    for (size, label, calls) in [(5 << 10, "5 KiB", 2000), (1 << 20, "1 MiB", 300)] {
        let (headers, body) = message_of_size(size);
        for (name, pc) in [("header-stamper", &stamper), ("content-guard", &guard)] {
            let (p, _) = wasmtp::wasm::load(&config_with(vec![pc.clone()], cache)).await.unwrap();
            let mut samples = Vec::new();
            for _ in 0..calls {
                let mut state = data_state(&headers, &body);
                let started = Instant::now();
                run_stage(&p, &mut state).await;
                samples.push(started.elapsed());
            }
            samples.sort();
            println!("   {name} at DATA, {label}: {:.1} us", us(percentile(&samples, 0.5)));
        }
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.split_whitespace().next());
    kib.and_then(|k| k.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
}

/// The external tagger per language.
async fn taggers_by_language() {
    let config = json!({"internal_domains": ["internal.example"], "reject_recipients": ["x@example.org"]});
    let (headers, body) = message_of_size(5 << 10);
    println!("6. external tagger at DATA (tags an external 5 KiB message), fresh sandbox per call:");
    let mut rust_p50 = None;
    for (language, path, calls) in [
        ("rust", wasm::EXTERNAL_TAGGER, 2000),
        ("python", wasm::EXTERNAL_TAGGER_PY, 300),
        ("js", wasm::EXTERNAL_TAGGER_JS, 300),
    ] {
        let cache = tempfile::tempdir().unwrap();
        let configured = || config_with(vec![plugin("tagger", path, config.clone())], cache.path());
        let started = Instant::now();
        drop(wasmtp::wasm::load(&configured()).await.unwrap());
        let cold = started.elapsed();
        let started = Instant::now();
        let (chain, _) = wasmtp::wasm::load(&configured()).await.unwrap();
        let cached = started.elapsed();
        let chain = Arc::new(chain);
        let mut samples = Vec::new();
        for i in 0..calls + 20 {
            let mut state = data_state(&headers, &body);
            let started = Instant::now();
            assert_eq!(run_stage(&chain, &mut state).await, Outcome::Continue);
            if i >= 20 {
                samples.push(started.elapsed());
            }
            let subject = state.headers.iter().find(|f| f.name.eq_ignore_ascii_case("subject"));
            assert!(subject.is_some_and(|f| f.value.starts_with("[EXTERNAL]")), "{language}: tagged");
        }
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.5), percentile(&samples, 0.99));
        let rust = *rust_p50.get_or_insert(p50);
        // 50 calls at once, twice over; the peak RSS while they run.
        let before = rss_mib();
        let mut peak = before;
        for _ in 0..2 {
            let mut inflight = tokio::task::JoinSet::new();
            for _ in 0..50 {
                let (chain, mut state) = (chain.clone(), data_state(&headers, &body));
                inflight.spawn(async move { run_stage(&chain, &mut state).await });
            }
            while let Some(outcome) = inflight.join_next().await {
                assert_eq!(outcome.unwrap(), Outcome::Continue);
                peak = peak.max(rss_mib());
            }
        }
        let target =
            if language == "rust" { String::new() } else { format!(", {:.2}x the 1.5 ms target", us(p50) / 1500.0) };
        println!(
            "   {language:6} p50 {:7.1} us ({:5.1}x rust{}), p99 {:7.1} us; load cold {:6.0} ms, cached {:5.1} ms ({:.2}x the 200 ms target); \
             RSS {before:.0} MiB, {peak:.0} MiB with 50 in flight",
            us(p50),
            us(p50) / us(rust),
            target,
            us(p99),
            cold.as_secs_f64() * 1e3,
            cached.as_secs_f64() * 1e3,
            cached.as_secs_f64() / 0.2,
        );
    }
}

async fn spin_overshoot(cache: &std::path::Path) {
    let budget = Duration::from_millis(20);
    let mut spinner = plugin("spinner", wasm::HOSTILE, json!({"behaviour": "spin"}));
    spinner.limits.time = budget;
    spinner.on_error = wasmtp::config::OnError::Tempfail;
    spinner.breaker.failures = u32::MAX;
    let (plugins, _) = wasmtp::wasm::load(&config_with(vec![spinner], cache)).await.unwrap();
    let sender = Mailbox::parse("someone@example.org", false, false).unwrap();
    let mut over = Vec::new();
    for _ in 0..50 {
        let mut state = MailState { sender: sender.clone(), params: vec![], utf8: false };
        let started = Instant::now();
        let outcome = run_stage(&plugins, &mut state).await;
        over.push(started.elapsed().saturating_sub(budget));
        assert!(matches!(outcome, Outcome::Tempfail(_)));
    }
    over.sort();
    println!("3. spinning plugin, 20 ms budget (50 calls): stopped after the budget by");
    println!(
        "   p50 {:.2} ms, max {:.2} ms ({:.2}x the 2 ms target)",
        percentile(&over, 0.5).as_secs_f64() * 1e3,
        over.last().unwrap().as_secs_f64() * 1e3,
        over.last().unwrap().as_secs_f64() * 1e3 / 2.0
    );
}

/// Starts the binary and returns the time until it greets a client.
fn time_to_first_greeting(config: &std::path::Path) -> Duration {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmtp"))
        .args(["serve", "--config"])
        .arg(config)
        .args(["--listen", &addr.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = started + Duration::from_secs(30);
    let elapsed = loop {
        assert!(Instant::now() < deadline, "wasmtp did not start");
        if let Ok(mut stream) = std::net::TcpStream::connect(addr) {
            use std::io::Read;
            let mut greeting = [0u8; 3];
            if stream.read_exact(&mut greeting).is_ok() && &greeting == b"220" {
                break started.elapsed();
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    };
    let _ = child.kill();
    let _ = child.wait();
    elapsed
}

fn restart(cache: &std::path::Path) {
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("mail");
    let bare = dir.path().join("bare.toml");
    std::fs::write(&bare, format!("[upstream]\nurl = \"maildir:{}\"\n", maildir.display())).unwrap();
    let five = dir.path().join("five.toml");
    let mut text = format!("[upstream]\nurl = \"maildir:{}\"\n[sandbox]\ncache_dir = {cache:?}\n", maildir.display());
    for (name, path) in [
        ("ratelimit", wasm::RATE_LIMITER),
        ("rewriter", wasm::ADDRESS_REWRITER),
        ("guard", wasm::CONTENT_GUARD),
        ("stamper", wasm::HEADER_STAMPER),
        ("disclaimer", wasm::DISCLAIMER),
    ] {
        text.push_str(&format!("[[plugins]]\nname = \"{name}\"\npath = {path:?}\n"));
    }
    std::fs::write(&five, text).unwrap();
    let cold = time_to_first_greeting(&five); // fills the cache
    let mut warm: Vec<_> = (0..5).map(|_| time_to_first_greeting(&five)).collect();
    let mut base: Vec<_> = (0..5).map(|_| time_to_first_greeting(&bare)).collect();
    warm.sort();
    base.sort();
    let (warm, base) = (warm[2], base[2]);
    println!("4. restart to first greeting (median of 5): no plugins {:.1} ms (baseline),", base.as_secs_f64() * 1e3);
    println!(
        "   5 plugins warm cache {:.1} ms ({:.2}x baseline, {:.2}x the 300 ms target); cold compile {:.0} ms",
        warm.as_secs_f64() * 1e3,
        warm.as_secs_f64() / base.as_secs_f64(),
        warm.as_secs_f64() / 0.3,
        cold.as_secs_f64() * 1e3
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this as a quick smoke run.
    let quick = !std::env::args().any(|a| a == "--bench");
    if quick {
        println!("plugins bench: skipped outside `cargo bench`");
        return;
    }
    println!("wasmtp plugin runtime benchmark; load average {}", loadavg());
    let cache = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // SECTIONS=2,5 runs only those sections (all by default).
    let sections = std::env::var("SECTIONS").unwrap_or_default();
    let run = |n: &str| sections.is_empty() || sections.split(',').any(|s| s.trim() == n);
    runtime.block_on(async {
        if run("1") {
            stage_call(cache.path()).await;
        }
        if run("2") {
            data_call(cache.path()).await;
        }
        if run("3") {
            spin_overshoot(cache.path()).await;
        }
        if run("5") {
            example_plugins(cache.path()).await;
        }
        if run("6") {
            taggers_by_language().await;
        }
    });
    if run("4") {
        restart(cache.path());
    }
    println!("load average {}", loadavg());
}
