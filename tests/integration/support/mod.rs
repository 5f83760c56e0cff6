//! Test harness: the proxy in-process on 127.0.0.1:0, a raw-socket SMTP client, a recording
//! upstream with fault injection, and Postfix's smtp-sink as a real upstream.

pub mod binary;
pub mod certs;
pub mod client;
pub mod dns;
pub mod logs;
pub mod postfix;
pub mod recorder;
pub mod redis;
pub mod sink;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use wasmtp::config::{ListenerConfig, ListenerMode};
use wasmtp::server::BoundListener;

pub use binary::Binary;
pub use client::Client;
pub use logs::Logs;
pub use recorder::{Fault, Recorder, Script};
pub use sink::SmtpSink;

/// Every wait in the tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// The proxy running inside the test's runtime.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// Every listener's address, in the order they were asked for.
    pub addrs: Vec<SocketAddr>,
    /// The admin listener's address, when it has one.
    pub admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestProxy {
    /// Starts the proxy with `toml` as its configuration file and `upstream` as its upstream URL.
    pub async fn start(toml: &str, upstream: &str) -> Self {
        Self::start_with(wasmtp::Config::parse(toml).expect("test config is valid"), upstream).await
    }

    /// Starts the proxy with a configuration built by the test.
    pub async fn start_with(mut config: wasmtp::Config, upstream: &str) -> Self {
        // Most tests watch upstream connections open and close per session.
        config.upstream.pool_size = 0;
        Self::start_pooled(config, upstream).await
    }

    /// Starts the proxy keeping the configuration's upstream connection pool.
    pub async fn start_pooled(config: wasmtp::Config, upstream: &str) -> Self {
        Self::start_listeners(config, upstream, &[ListenerMode::Smtp]).await
    }

    /// Starts the proxy with one listener per mode on free loopback ports (no pooling).
    pub async fn start_modes(mut config: wasmtp::Config, upstream: &str, modes: &[ListenerMode]) -> Self {
        config.upstream.pool_size = 0;
        Self::start_listeners(config, upstream, modes).await
    }

    /// Starts the proxy with one `smtp` listener set up by `tweak` (no pooling).
    pub async fn start_listener(
        mut config: wasmtp::Config,
        upstream: &str,
        tweak: impl FnOnce(&mut ListenerConfig),
    ) -> Self {
        config.upstream.pool_size = 0;
        Self::start_tweaked(config, upstream, &[ListenerMode::Smtp], tweak).await
    }

    async fn start_listeners(config: wasmtp::Config, upstream: &str, modes: &[ListenerMode]) -> Self {
        Self::start_tweaked(config, upstream, modes, |_| {}).await
    }

    /// Starts the proxy with an admin listener on a free loopback port (no pooling).
    pub async fn start_admin(mut config: wasmtp::Config, upstream: &str) -> Self {
        config.upstream.pool_size = 0;
        config.admin.listen = Some("127.0.0.1:0".parse().unwrap());
        Self::start_tweaked(config, upstream, &[ListenerMode::Smtp], |_| {}).await
    }

    /// The admin listener's `http://` base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin.expect("started with an admin listener"))
    }

    async fn start_tweaked(
        mut config: wasmtp::Config,
        upstream: &str,
        modes: &[ListenerMode],
        tweak: impl FnOnce(&mut ListenerConfig),
    ) -> Self {
        let mut tweak = Some(tweak);
        config.upstream.url = Some(upstream.parse().expect("upstream url"));
        if config.sandbox.cache_dir.is_none() {
            config.sandbox.cache_dir = Some(shared_compile_cache());
        }
        config.server.hostname = Some("proxy.test".into());
        let mut listeners = Vec::new();
        for &mode in modes {
            let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let mut listener = ListenerConfig::smtp(tcp.local_addr().unwrap());
            listener.mode = mode;
            if let Some(tweak) = tweak.take() {
                tweak(&mut listener);
            }
            listeners.push(BoundListener { tcp, config: listener });
        }
        let addrs: Vec<_> = listeners.iter().map(|l| l.config.address).collect();
        let (stop, stopped) = oneshot::channel::<()>();
        let mut server = wasmtp::server::Server::new(listeners, config.clone());
        let mut admin = None;
        if let Some(listen) = config.admin.listen {
            let tcp = TcpListener::bind(listen).await.expect("bind admin");
            admin = Some(tcp.local_addr().unwrap());
            server = server.with_admin(tcp);
        }
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self { addr: addrs[0], addrs, admin, stop: Some(stop), task }
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr).await
    }

    /// Asks the server to shut down (as SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.begin_shutdown();
        tokio::time::timeout(WAIT, &mut self.task).await.expect("server stops").unwrap().unwrap();
    }

    /// Waits for a proxy that should not have started and returns why it did not.
    pub async fn failed(self) -> String {
        let result = tokio::time::timeout(WAIT, self.task).await.expect("server ends").unwrap();
        format!("{:#}", result.expect_err("the proxy should refuse to start"))
    }

    pub async fn join(&mut self) {
        tokio::time::timeout(WAIT, &mut self.task).await.expect("server stops").unwrap().unwrap();
    }
}

/// One compile cache for the whole test run, so each plugin is compiled once.
pub fn shared_compile_cache() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_path_buf()
}

/// `examples/quickstart.toml` as an operator runs it, for a test: the plugins built for the
/// tests, the admin endpoint on a free port and the shared compile cache. Relative paths
/// (the Maildir, the quarantine) are relative to the directory the proxy runs in.
pub fn quickstart_toml() -> String {
    let repo = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut quickstart = std::fs::read_to_string(format!("{repo}/examples/quickstart.toml")).unwrap();
    for (file, built) in [
        ("rate_limiter", wasmtp_test_artifacts::RATE_LIMITER),
        ("address_rewriter", wasmtp_test_artifacts::ADDRESS_REWRITER),
        ("content_guard", wasmtp_test_artifacts::CONTENT_GUARD),
        ("header_stamper", wasmtp_test_artifacts::HEADER_STAMPER),
    ] {
        quickstart = quickstart.replace(&format!("guest-plugins/target/wasm32-wasip2/release/{file}.wasm"), built);
    }
    quickstart = quickstart.replace("127.0.0.1:9025", &format!("127.0.0.1:{}", free_port()));
    let cache = format!("[sandbox]\ncache_dir = {:?}\n", shared_compile_cache());
    quickstart.replace("[sandbox]\n", &cache)
}

/// A `[[plugins]]` entry for a test: `config` is the plugin's free-form table.
pub fn plugin(name: &str, wasm: &str, config: serde_json::Value) -> wasmtp::config::PluginConfig {
    let config = serde_json::from_value(config).expect("plugin config is a table");
    wasmtp::config::PluginConfig { config, ..wasmtp::config::PluginConfig::new(name, wasm) }
}

/// A default configuration with these plugins, in order.
pub fn with_plugins(plugins: Vec<wasmtp::config::PluginConfig>) -> wasmtp::Config {
    wasmtp::Config { plugins, ..Default::default() }
}

/// A plain HTTP GET with Python's urllib (a client independent of the proxy's own HTTP stack):
/// the status and the body.
pub async fn http_get(url: &str) -> (u16, String) {
    http("GET", url).await
}

/// A request with `method` and no body, by Python's urllib: the status and the body.
pub async fn http(method: &str, url: &str) -> (u16, String) {
    const SCRIPT: &str = r#"
import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[2], method=sys.argv[1])
try:
    response = urllib.request.urlopen(request, timeout=15)
    code, body = response.status, response.read()
except urllib.error.HTTPError as e:
    code, body = e.code, e.read()
sys.stdout.write(str(code) + "\n" + body.decode())
"#;
    let request = tokio::process::Command::new("python3").args(["-c", SCRIPT, method, url]).output();
    let out = tokio::time::timeout(WAIT, request).await.expect("HTTP request within the bound").expect("python3 runs");
    assert!(out.status.success(), "python3: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, body) = text.split_once('\n').expect("status line");
    (code.parse().expect("status code"), body.to_string())
}

/// A free loopback port for programs that cannot take port 0.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Undoes dot-stuffing of a wire message that ends in `CRLF.CRLF` (written independently of the
/// proxy's own receiver).
pub fn unstuff(wire: &[u8]) -> Vec<u8> {
    let body = wire.strip_suffix(b".\r\n").expect("wire message ends with .CRLF");
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Removes the first header if it is a `Received:` header added by the proxy, returning the rest.
pub fn strip_our_received(message: &[u8]) -> &[u8] {
    assert!(message.starts_with(b"Received: from "), "message starts with our Received header");
    let mut i = 0;
    loop {
        let nl = i + message[i..].iter().position(|&b| b == b'\n').expect("header line end");
        i = nl + 1;
        if !matches!(message.get(i), Some(b' ' | b'\t')) {
            return &message[i..];
        }
    }
}

/// A deterministic message of about `size` bytes with lines of varying length, some starting
/// with dots, CRLF line endings.
pub fn sample_message(size: usize) -> Vec<u8> {
    let mut m = b"From: sender@example.org\r\nTo: rcpt@example.net\r\nSubject: sample\r\n\r\n".to_vec();
    let mut i = 0usize;
    while m.len() < size {
        let len = (i * 37) % 200;
        if i.is_multiple_of(7) {
            m.push(b'.');
        }
        m.extend((0..len).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789 "[(i + j) % 37]));
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

/// Dot-stuffs a CRLF message for sending by hand and appends the terminator.
pub fn stuff(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 64);
    for line in content.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}
