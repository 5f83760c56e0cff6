//! Micro benchmarks (criterion): command parsing, receiving data per MiB including unstuffing,
//! stuffing it for the wire, one plugin stage call including a fresh sandbox, and `on-data` with
//! a 100 KiB message. `cargo bench -p wasmtp --bench micro`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::json;
use wasmtp::Config;
use wasmtp::config::PluginConfig;
use wasmtp::filter::api::Connection;
use wasmtp::filter::host::{NoteScopes, Notes};
use wasmtp::filter::stages::{DataState, MailState, StageState};
use wasmtp::filter::{Chain, Outcome};
use wasmtp::message::HeaderSection;
use wasmtp::smtp::Mailbox;
use wasmtp::smtp::command;
use wasmtp::smtp::data::{DataReceiver, DotStuffer, LineEndings};
use wasmtp_test_artifacts as wasm;

fn parsing(c: &mut Criterion) {
    let mut group = c.benchmark_group("command");
    group.bench_function("parse MAIL with parameters", |b| {
        b.iter(|| command::parse(black_box(b"MAIL FROM:<sender.name@example.org> SIZE=102400 BODY=8BITMIME")))
    });
    group.bench_function("parse RCPT", |b| b.iter(|| command::parse(black_box(b"RCPT TO:<recipient@example.net>"))));
    group.finish();
}

/// A 1 MiB wire message with typical line lengths, every tenth line dot-stuffed.
fn wire_message() -> Vec<u8> {
    let mut wire = Vec::with_capacity(1 << 20);
    let mut i = 0;
    while wire.len() < (1 << 20) - 5 {
        if i % 10 == 0 {
            wire.extend_from_slice(b"..");
        }
        wire.extend_from_slice(b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n");
        i += 1;
    }
    wire.extend_from_slice(b".\r\n");
    wire
}

fn data(c: &mut Criterion) {
    let wire = wire_message();
    let mut group = c.benchmark_group("data");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("receive 1 MiB (unstuff, find end) in 64 KiB reads", |b| {
        let mut out = Vec::with_capacity(wire.len());
        b.iter(|| {
            out.clear();
            let mut rx = DataReceiver::new(LineEndings::Reject, 50 << 20, 65536);
            for chunk in wire.chunks(64 << 10) {
                rx.feed(chunk, &mut out);
            }
            black_box(out.len())
        })
    });
    let mut content = Vec::new();
    DataReceiver::new(LineEndings::Reject, 50 << 20, 65536).feed(&wire, &mut content);
    group.bench_function("stuff 1 MiB for the wire", |b| {
        let mut out = Vec::with_capacity(wire.len() + 1024);
        b.iter(|| {
            out.clear();
            let mut stuffer = DotStuffer::new();
            for chunk in content.chunks(64 << 10) {
                stuffer.stuff(chunk, &mut out);
            }
            stuffer.finish(&mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

/// Runs one stage outside any session, as a session with no notes would.
async fn run_stage<S: StageState>(chain: &Chain, state: &mut S) -> Outcome {
    let conn = Connection::new("bench".into(), "127.0.0.1:1".parse().unwrap());
    let mut notes = Notes::default();
    chain.run(&conn, NoteScopes { session: &mut notes, transaction: None }, state).await
}

fn plugin(name: &str, path: &str, config: serde_json::Value) -> PluginConfig {
    PluginConfig { config: serde_json::from_value(config).unwrap(), ..PluginConfig::new(name, path) }
}

fn plugins(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let load = |p: PluginConfig| {
        let mut config = Config { plugins: vec![p], ..Default::default() };
        config.sandbox.cache_dir = Some(cache.path().to_path_buf());
        runtime.block_on(wasmtp::wasm::load(&config)).unwrap().0
    };
    let mail = load(plugin("bouncer", wasm::SDK_EXAMPLE, json!({})));
    let reader = load(plugin("reader", wasm::HOSTILE, json!({"behaviour": "ok", "stages": ["data"], "body": "full"})));
    let sender = Mailbox::parse("someone@example.org", false, false).unwrap();

    let mut group = c.benchmark_group("plugin");
    group.bench_function("mail stage call incl. fresh sandbox", |b| {
        b.iter(|| {
            let mut state = MailState { sender: sender.clone(), params: vec![], utf8: false };
            runtime.block_on(run_stage(&mail, &mut state))
        })
    });

    let mut message = b"From: a@example.org\r\nSubject: bench\r\n\r\n".to_vec();
    while message.len() < 100 << 10 {
        message.extend_from_slice(b"a line of text of a typical length for a message body, more or less.\r\n");
    }
    let headers = HeaderSection::parse(&message, 10_000).unwrap();
    let body = Arc::new(message[headers.body_offset as usize..].to_vec());
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("on-data 100 KiB incl. fresh sandbox", |b| {
        b.iter(|| {
            let mut state = DataState::new(
                sender.clone(),
                vec![sender.clone()],
                headers.clone(),
                body.clone(),
                body.len() as u64,
                false,
                50 << 20,
            );
            runtime.block_on(run_stage(&reader, &mut state))
        })
    });
    group.finish();
}

criterion_group!(benches, parsing, data, plugins);
criterion_main!(benches);
