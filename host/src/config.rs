//! Configuration: the TOML file's schema with its defaults, loading with errors that name the
//! file, the field and what was expected, and the human units (`"50MiB"`, `"5m"`) it accepts.
//!
//! Every section rejects unknown fields, so a typo is an error at start instead of a setting
//! silently ignored. `wasmtp check-config FILE` runs exactly this loading and validation.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::smtp::data::LineEndings;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub upstream: UpstreamConfig,
    pub log: LogConfig,
    pub sandbox: SandboxConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub relay: RelayConfig,
    pub admin: AdminConfig,
    pub kv: KvConfig,
    pub record: RecordConfig,
    /// Where to listen; without any, one `smtp` listener on `server.listen`.
    pub listeners: Vec<ListenerConfig>,
    /// Filter plugins, run in this order at every stage they declare.
    pub plugins: Vec<PluginConfig>,
}

/// `[admin]`: the operator's HTTP endpoint — `/metrics` (Prometheus text), `/healthz`,
/// `/readyz` and `POST /reload`. Off unless `listen` is set; keep it on loopback or a
/// management network, since anyone who reaches it can trigger reloads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: Option<SocketAddr>,
}

/// `[kv]`: the store behind the plugins' `kv-*` calls. Fixed at start (a reload that changes
/// it says it needs a restart).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// `redis://[:password@]host:port[/db]`, or `rediss://…` for TLS; unset keeps the store in
    /// this process's memory (one proxy only).
    pub backend: Option<String>,
    /// The longest a Redis operation may take, connecting included; well inside a plugin's
    /// time budget, so a stalled Redis costs a plugin an error, not its whole call.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Prefixed to every Redis key, so several deployments can share one Redis.
    pub prefix: String,
    /// CA certificates (PEM) that sign the Redis server's certificate for `rediss://`, in
    /// place of the system's roots.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for KvConfig {
    fn default() -> Self {
        Self { backend: None, timeout: Duration::from_millis(50), prefix: "wasmtp".into(), tls_ca_file: None }
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// `ip:port`; IPv6 as `[::]:25`.
    pub address: SocketAddr,
    #[serde(default)]
    pub mode: ListenerMode,
    /// Concurrent connections on this listener (within `server.max_connections`).
    pub max_connections: Option<usize>,
    /// The `[[plugins]]` (by name) sessions on this listener run, in configuration order; all
    /// of them when unset.
    pub plugins: Option<Vec<String>>,
    /// On a `submission` listener, offer AUTH without TLS to clients on loopback addresses
    /// (for a local webmail, say); never to other clients.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
    /// Clients whose XFORWARD (the real client's address, name and HELO) is believed: a
    /// Postfix that runs wasmtp as its `smtpd_proxy_filter`. XFORWARD is offered to them only.
    #[serde(default)]
    pub xforward_from: Vec<ipnet::IpNet>,
    /// Expect a PROXY protocol header (version 1 or 2) from a load balancer before anything
    /// else: the client it names is the one sessions, plugins, `Received:`, XCLIENT and the
    /// logs see. Connections without a valid header are closed without a greeting.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The balancers allowed to send PROXY headers (required with `proxy_protocol`).
    #[serde(default)]
    pub proxy_trusted: Vec<ipnet::IpNet>,
}

impl ListenerConfig {
    /// An `smtp` listener with every setting at its default.
    pub fn smtp(address: SocketAddr) -> Self {
        Self {
            address,
            mode: ListenerMode::Smtp,
            max_connections: None,
            plugins: None,
            allow_plaintext_auth: false,
            xforward_from: Vec::new(),
            proxy_protocol: false,
            proxy_trusted: Vec::new(),
        }
    }
}

/// What a listener serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerMode {
    /// Mail exchange (port 25): STARTTLS offered, no AUTH.
    #[default]
    Smtp,
    /// Message submission (port 587, RFC 6409): STARTTLS, then AUTH, required before MAIL.
    Submission,
    /// Submission over implicit TLS (port 465, RFC 8314): TLS from the first byte.
    Submissions,
}

impl ListenerMode {
    pub fn name(self) -> &'static str {
        match self {
            ListenerMode::Smtp => "smtp",
            ListenerMode::Submission => "submission",
            ListenerMode::Submissions => "submissions",
        }
    }

    /// Clients must authenticate before MAIL.
    pub fn submission(self) -> bool {
        self != ListenerMode::Smtp
    }
}

/// `[relay]`: relay control of the proxy's own, for upstreams that do not check recipients
/// themselves. Off (every recipient goes to the upstream) while `accept_domains` is empty.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Recipient domains accepted from anyone: `example.org`, or `*.example.org` for its
    /// subdomains.
    pub accept_domains: Vec<String>,
    /// Clients that may send to any domain (authenticated clients always may).
    pub relay_networks: Vec<ipnet::IpNet>,
}

impl RelayConfig {
    /// Whether `domain` is one of ours.
    pub fn accepts(&self, domain: &str) -> bool {
        self.accept_domains.iter().any(|d| match d.strip_prefix("*.") {
            Some(parent) => {
                domain.len() > parent.len() + 1
                    && domain[domain.len() - parent.len()..].eq_ignore_ascii_case(parent)
                    && domain.as_bytes()[domain.len() - parent.len() - 1] == b'.'
            }
            None => d.eq_ignore_ascii_case(domain),
        })
    }
}

/// `[tls]`: the server certificates of every listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Certificate chains with their keys (PEM). The first one a client's SNI name is valid
    /// for is used, else the first one. None: `smtp` listeners use a self-signed certificate
    /// generated at start; submission listeners refuse to start.
    pub certificates: Vec<CertificateConfig>,
    /// The TLS handshake after STARTTLS or on an implicit-TLS connection.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self { certificates: Vec::new(), handshake_timeout: Duration::from_secs(10) }
    }
}

/// One certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    /// The chain: the server's certificate first, then intermediates.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// STARTTLS to the upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamTls {
    /// STARTTLS when the upstream offers it, without verifying its certificate (unless a CA
    /// file is given); plaintext otherwise.
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or no relay at all (`4xx` to the client).
    Required,
    /// Never.
    Off,
}

impl UpstreamTls {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamTls::Opportunistic => "opportunistic",
            UpstreamTls::Required => "required",
            UpstreamTls::Off => "off",
        }
    }
}

/// `[server]`: where and how the proxy listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the one `smtp` listener when no `[[listeners]]` are configured
    /// (`127.0.0.1:2525` when unset); setting both is an error.
    pub listen: Option<SocketAddr>,
    /// Name used in the greeting, EHLO reply and `Received:` header; the system hostname when
    /// unset.
    pub hostname: Option<String>,
    /// Concurrent client connections; further clients get `421 4.7.0` and are closed.
    pub max_connections: usize,
    /// Concurrent connections from one client address (as Postfix's
    /// `smtpd_client_connection_count_limit`); further ones get `421 4.7.0`.
    pub max_connections_per_ip: usize,
    /// Client networks the per-address limit does not apply to.
    pub connection_limit_exempt: Vec<ipnet::IpNet>,
    /// Bare CR, bare LF and NUL in message data: `reject` (default) or `normalize`.
    pub line_endings: LineEndings,
    /// Directory for messages larger than `limits.memory_buffer`; the system temp directory
    /// when unset. Spilled files are unlinked at creation, so nothing is left behind.
    pub spool_dir: Option<PathBuf>,
    /// Run as this user once the listeners are bound (started as root to bind port 25); the
    /// compile cache, spool directory and Maildirs are handed to it first.
    pub user: Option<String>,
    /// Run as this group; the user's primary group when unset.
    pub group: Option<String>,
    /// Write the process id here at start (for `wasmtp reload` and init scripts); removed at
    /// exit.
    pub pid_file: Option<PathBuf>,
    /// This proxy's name among several behind one balancer (1–32 letters, digits, `-`): part
    /// of every session id and `Received:` id, so logs and recordings from several nodes can
    /// be merged. The first label of the host name when unset.
    pub node_id: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: None,
            hostname: None,
            max_connections: 1000,
            max_connections_per_ip: 50,
            connection_limit_exempt: vec!["127.0.0.0/8".parse().expect("valid"), "::1/128".parse().expect("valid")],
            line_endings: LineEndings::Reject,
            spool_dir: None,
            user: None,
            group: None,
            pid_file: None,
            node_id: None,
        }
    }
}

/// `[limits]`: how much a client may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted (advertised as SIZE, enforced after reading to the end).
    pub max_message_size: ByteSize,
    /// Recipients per transaction; more get `452 4.5.3`.
    pub max_recipients: usize,
    /// Errors (5xx replies to bad commands) before the session is closed with `421`.
    pub max_errors: u32,
    /// Longest message line, CRLF included. Longer lines are relayed intact up to this cap and
    /// the message is refused after its end above it; lines are never split or truncated.
    pub max_line_length: usize,
    /// Messages up to this size are held in memory; larger ones spill to `server.spool_dir`.
    pub memory_buffer: ByteSize,
    /// Header fields a message may have when plugins or authentication read its header
    /// section; more get `552 5.3.4` after the end of data.
    pub max_header_fields: usize,
    /// Failed AUTH attempts per session before `421 4.7.0` and close.
    pub max_auth_failures: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize(50 << 20),
            max_recipients: 100,
            max_errors: 10,
            max_line_length: 64 << 10,
            memory_buffer: ByteSize(1 << 20),
            max_header_fields: 1000,
            max_auth_failures: 3,
        }
    }
}

/// `[timeouts]`: how long the proxy waits for its client.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Longest wait for the next command, or for more data within DATA.
    #[serde(with = "duration")]
    pub idle: Duration,
    /// Slowest acceptable message transfer, in bytes per second, after the first `idle` period.
    pub min_data_rate: ByteSize,
    /// On SIGTERM, how long sessions may take to finish before they are closed with `421`.
    #[serde(with = "duration")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self { idle: Duration::from_secs(300), min_data_rate: ByteSize(1024), shutdown_grace: Duration::from_secs(30) }
    }
}

/// `[upstream]`: where accepted mail goes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `smtp://host:port` (lockstep relay) or `maildir:PATH` (embedded delivery). Unset means
    /// `maildir:./mail-out`.
    pub url: Option<UpstreamUrl>,
    /// Name sent in our EHLO; defaults to `server.hostname`.
    pub helo_name: Option<String>,
    /// Connecting and reading the greeting.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Each reply to EHLO, MAIL, RCPT, DATA, RSET.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// The reply after the final `.`: the end-of-data budget. Keep it well under the ten
    /// minutes a client waits (RFC 5321 §4.5.3.2.6).
    #[serde(with = "duration")]
    pub data_timeout: Duration,
    /// Idle upstream connections kept for reuse by later sessions (0 = a new connection for
    /// every session). Saves the connect, greeting and EHLO round trips per message.
    pub pool_size: usize,
    /// How long a pooled connection may sit idle before it is dropped; keep it below the
    /// upstream's own idle timeout (Postfix: 300s).
    #[serde(with = "duration")]
    pub pool_idle: Duration,
    /// STARTTLS to the upstream: `opportunistic` (default), `required` or `off`.
    pub tls: UpstreamTls,
    /// CA certificates (PEM) the upstream's certificate is verified against; the system's
    /// roots when unset (under `required`).
    pub tls_ca_file: Option<PathBuf>,
    /// The name the upstream's certificate must be valid for; the upstream's host when unset.
    pub tls_server_name: Option<String>,
    /// Tell the upstream who the client is with XCLIENT when it offers it (Postfix's
    /// `smtpd_authorized_xclient_hosts`), so its own restrictions judge the real client;
    /// XFORWARD otherwise.
    pub xclient: bool,
    /// How often the upstream is probed, so what EHLO replies promise follows its settings.
    #[serde(with = "duration")]
    pub probe_interval: Duration,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: None,
            helo_name: None,
            connect_timeout: Duration::from_secs(15),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(300),
            pool_size: 100,
            pool_idle: Duration::from_secs(30),
            tls: UpstreamTls::default(),
            tls_ca_file: None,
            tls_server_name: None,
            xclient: true,
            probe_interval: Duration::from_secs(10),
        }
    }
}

/// `[record]`: keep each session's inputs and the chain's decisions in `dir`, for
/// `wasmtp replay` to run again against a new plugin build. Off unless `dir` is set. Recording
/// stops (with one warning in the log) when `max_sessions` recordings or `max_bytes` are in the
/// directory; nothing there is ever deleted by the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordConfig {
    pub dir: Option<PathBuf>,
    /// Most sessions kept (counting those already in `dir`).
    pub max_sessions: u64,
    /// Most bytes kept (recordings and messages, counting those already in `dir`).
    pub max_bytes: ByteSize,
    /// Keep only the header section of each message, not its body (the replay then gives
    /// plugins an empty body).
    pub redact_bodies: bool,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self { dir: None, max_sessions: 1000, max_bytes: ByteSize(256 << 20), redact_bodies: false }
    }
}

/// The compile cache of a proxy that drops privileges, unless `sandbox.cache_dir` says otherwise.
pub const SYSTEM_CACHE_DIR: &str = "/var/cache/wasmtp";

/// `[sandbox]`: the plugin runtime shared by all plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Plugin calls running at once across all sessions, divided among the plugins (each gets
    /// at least 4, or its own `limits.concurrency`); the shares together size the instance
    /// pool. A call that finds its plugin's share busy waits up to its time limit, then counts
    /// as a `busy` fault, which does not feed the breaker.
    pub max_in_flight: u32,
    /// Where compiled plugins are cached, so a restart does not recompile them; unset means
    /// `$XDG_CACHE_HOME/wasmtp` or `~/.cache/wasmtp` (`/var/cache/wasmtp` with `server.user`).
    /// The directory is created with mode 0700 and only files the proxy wrote there itself are
    /// ever loaded.
    pub cache_dir: Option<PathBuf>,
    /// Maildir that receives quarantined messages.
    pub quarantine: PathBuf,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self { max_in_flight: 64, cache_dir: None, quarantine: PathBuf::from("./quarantine") }
    }
}

/// One `[[plugins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The name used in logs and replies.
    pub name: String,
    /// The plugin component (`.wasm`, built for wasm32-wasip2).
    pub path: PathBuf,
    /// What a fault of this plugin (trap, timeout, invalid answer) means for the message.
    #[serde(default)]
    pub on_error: OnError,
    /// `live` (the default): its verdicts and edits take effect. `shadow`: it is called at its
    /// stages like a live plugin, but nothing it answers takes effect and its faults never
    /// touch the session; where its verdict differs from the live chain's outcome, the log and
    /// `wasmtp_plugin_shadow_disagreements_total` say so.
    #[serde(default)]
    pub mode: PluginMode,
    #[serde(default)]
    pub limits: PluginLimits,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Free-form settings handed to the plugin as JSON (`host.config()`).
    #[serde(default)]
    pub config: toml::Table,
}

impl PluginConfig {
    /// A plugin entry with every setting at its default and an empty `config` table.
    pub fn new(name: &str, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.to_string(),
            path: path.into(),
            on_error: OnError::default(),
            mode: PluginMode::default(),
            limits: PluginLimits::default(),
            breaker: BreakerConfig::default(),
            config: toml::Table::new(),
        }
    }
}

/// Whether a plugin's answers take effect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginMode {
    #[default]
    Live,
    /// Called, compared with the live chain, never obeyed.
    Shadow,
}

/// A plugin's failure policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// `451 4.3.0`: the client keeps the message and retries (fail closed, no loss).
    #[default]
    Tempfail,
    /// Skip the plugin (fail open).
    Continue,
    /// Refuse with `550 5.7.0` (`554` at connect).
    Reject,
}

impl OnError {
    pub fn name(self) -> &'static str {
        match self {
            OnError::Tempfail => "tempfail",
            OnError::Continue => "continue",
            OnError::Reject => "reject",
        }
    }
}

/// `[plugins.limits]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginLimits {
    /// Wall-clock budget of one call at connect, ehlo, mail and rcpt (instantiation included).
    #[serde(with = "duration")]
    pub time: Duration,
    /// Wall-clock budget of one call at the data stage.
    #[serde(with = "duration")]
    pub data_time: Duration,
    /// Linear memory the plugin may grow to.
    pub memory: ByteSize,
    /// Longest body handed to a plugin with full body access; longer bodies are cut and
    /// flagged `body-truncated`.
    pub max_body: ByteSize,
    /// Data a plugin may pass through host calls (logs, notes, key-value) in one call.
    pub host_data: ByteSize,
    /// Notes (keys and values) the plugin may hold for one session.
    pub notes: ByteSize,
    /// Calls of this plugin that may run at once (its share of the instance pool); unset
    /// means `sandbox.max_in_flight` divided among the plugins, at least 4.
    pub concurrency: Option<u32>,
    /// Entries the plugin may keep in the key-value store; further new keys are refused
    /// (the plugin is told, and can decide).
    pub kv_entries: usize,
    /// Octets of keys and values the plugin may keep in the key-value store.
    pub kv_bytes: ByteSize,
}

/// The default key-value quota per plugin: room for a busy greylist or rate limiter (tens of
/// thousands of client addresses), and a bound on what one plugin can make the embedded
/// store hold (measured by `cargo bench --bench kv`).
pub const DEFAULT_KV_ENTRIES: usize = 100_000;
pub const DEFAULT_KV_BYTES: u64 = 16 << 20;

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            time: Duration::from_millis(100),
            data_time: Duration::from_secs(1),
            memory: ByteSize(32 << 20),
            max_body: ByteSize(10 << 20),
            host_data: ByteSize(1 << 20),
            notes: ByteSize(64 << 10),
            concurrency: None,
            kv_entries: DEFAULT_KV_ENTRIES,
            kv_bytes: ByteSize(DEFAULT_KV_BYTES),
        }
    }
}

/// `[plugins.breaker]`: after `failures` faults in a row the plugin is bypassed (by its
/// `on_error` policy, without calling it) for `cooldown`; then one call decides whether it
/// closes again.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    pub failures: u32,
    #[serde(with = "duration")]
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failures: 5, cooldown: Duration::from_secs(30) }
    }
}

/// `[auth]`: sender authentication computed by the host and handed to plugins.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Master switch. Off by default: the checks need working DNS, which a proxy in front of a
    /// private network or a test machine may not have.
    pub enabled: bool,
    /// The authserv-id of our `Authentication-Results:` header; the host name when unset.
    /// Incoming `Authentication-Results:` headers claiming it are removed as forgeries.
    pub authserv_id: Option<String>,
    /// iprev (PTR and forward confirmation) at connect.
    pub iprev: bool,
    /// SPF for the HELO and MAIL FROM identities at MAIL.
    pub spf: bool,
    /// DKIM, every signature, at DATA.
    pub dkim: bool,
    /// ARC chain validation at DATA.
    pub arc: bool,
    /// DMARC at DATA (needs `spf` and `dkim`).
    pub dmarc: bool,
    /// Name servers as `ip:port`; the system resolver (/etc/resolv.conf) when empty.
    pub nameservers: Vec<SocketAddr>,
    /// Budget of one check's DNS work; past it the check is `temperror`.
    #[serde(with = "duration")]
    pub dns_timeout: Duration,
    /// DKIM signing of relayed mail, after all plugin edits.
    pub sign: Option<DkimSignConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            authserv_id: None,
            iprev: true,
            spf: true,
            dkim: true,
            arc: true,
            dmarc: true,
            nameservers: Vec::new(),
            dns_timeout: Duration::from_secs(5),
            sign: None,
        }
    }
}

/// `[auth.sign]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSignConfig {
    /// The signing domain (`d=`).
    pub domain: String,
    /// The selector (`s=`); the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM private key: RSA (PKCS#1 or PKCS#8) or Ed25519 (PKCS#8).
    pub key_file: PathBuf,
    /// `rsa` (rsa-sha256) or `ed25519` (ed25519-sha256).
    #[serde(default)]
    pub algorithm: SignAlgorithm,
    /// Header fields to sign, in order.
    #[serde(default = "default_signed_headers")]
    pub headers: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignAlgorithm {
    #[default]
    Rsa,
    Ed25519,
}

fn default_signed_headers() -> Vec<String> {
    [
        "From",
        "To",
        "Cc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
    ]
    .map(String::from)
    .to_vec()
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `wasmtp=debug`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Human, level: "info".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Where mail goes after the proxy accepted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamUrl {
    /// Lockstep relay to an SMTP server, `host:port`.
    Smtp { host: String, port: u16 },
    /// Embedded Maildir delivery.
    Maildir(PathBuf),
}

impl UpstreamUrl {
    /// The default when no upstream is configured.
    pub fn default_maildir() -> Self {
        Self::Maildir(PathBuf::from("./mail-out"))
    }
}

impl std::str::FromStr for UpstreamUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("maildir:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err("maildir: needs a path, e.g. maildir:./mail-out".into());
            }
            return Ok(Self::Maildir(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("smtp://") {
            let rest = rest.trim_end_matches('/');
            let (host, port) = match rest.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                    let port = port.parse::<u16>().map_err(|_| format!("invalid port `{port}` in `{s}`"))?;
                    (host, port)
                }
                _ => (rest, 25),
            };
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(format!("missing host in `{s}`"));
            }
            return Ok(Self::Smtp { host: host.to_string(), port });
        }
        Err(format!("expected `smtp://host:port` or `maildir:PATH`, found `{s}`"))
    }
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Smtp { host, port } if host.contains(':') => write!(f, "smtp://[{host}]:{port}"),
            Self::Smtp { host, port } => write!(f, "smtp://{host}:{port}"),
            Self::Maildir(path) => write!(f, "maildir:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A setting written either as a bare integer or as a string with a unit.
#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrText {
    Int(u64),
    Text(String),
}

/// A size in bytes, written as an integer or as a string with a unit: `"50MiB"`, `"10 MB"`,
/// `"512KiB"`, `"1.5GiB"`, `"1024"` (parsed by the `bytesize` crate; decimal units are powers
/// of 1000, binary units of 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let size: bytesize::ByteSize =
            s.trim().parse().map_err(|e| format!("expected a size such as \"10MiB\", found `{s}`: {e}"))?;
        // bytesize saturates on overflow; a limit that large is a mistake, not "unlimited".
        if size.as_u64() == u64::MAX {
            return Err(format!("size `{s}` is too large"));
        }
        Ok(ByteSize(size.as_u64()))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match IntOrText::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a size: an integer or a string such as \"10MiB\""))?
        {
            IntOrText::Int(n) => Ok(ByteSize(n)),
            IntOrText::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// Durations written as an integer number of seconds or a string such as `"300s"`, `"5m"`,
/// `"250ms"`, `"1h"`, `"1h 30m"` (parsed by the `humantime` crate).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    use super::IntOrText;

    fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim())
            .map_err(|e| format!("expected a duration such as \"30s\" or \"5m\", found `{s}`: {e}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match IntOrText::deserialize(d)
            .map_err(|_| serde::de::Error::custom("expected a duration: seconds or a string such as \"30s\""))?
        {
            IntOrText::Int(n) => Ok(Duration::from_secs(n)),
            IntOrText::Text(s) => parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// A configuration error with the file it came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path: path.to_path_buf(), message })
    }

    /// Parses and validates configuration text; the error names the field.
    pub fn parse(text: &str) -> Result<Self, String> {
        let deserializer = toml::Deserializer::parse(text).map_err(|e| e.to_string())?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.message().to_string();
            match (path.as_str(), inner.span()) {
                (".", _) => message,
                (path, Some(span)) => format!("field `{path}` (line {}): {message}", line_of(text, span.start)),
                (path, None) => format!("field `{path}`: {message}"),
            }
        })?;
        config.validate()?;
        let mut config = config;
        if config.server.user.is_some() && config.sandbox.cache_dir.is_none() {
            // The starting user's home cache is no place for an unprivileged user's files.
            config.sandbox.cache_dir = Some(PathBuf::from(SYSTEM_CACHE_DIR));
        }
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let positive =
            |name: &str, ok: bool| if ok { Ok(()) } else { Err(format!("field `{name}`: must be greater than zero")) };
        positive("server.max_connections", self.server.max_connections > 0)?;
        if self.server.listen.is_some() && !self.listeners.is_empty() {
            return Err("field `server.listen`: set it or `[[listeners]]`, not both".into());
        }
        let mut addresses = std::collections::HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            if !addresses.insert(listener.address) {
                return Err(format!("field `listeners[{i}].address`: {} is used twice", listener.address));
            }
            positive(&format!("listeners[{i}].max_connections"), listener.max_connections != Some(0))?;
            for name in listener.plugins.iter().flatten() {
                if !self.plugins.iter().any(|p| p.name == *name) {
                    return Err(format!("field `listeners[{i}].plugins`: there is no plugin named `{name}`"));
                }
            }
            if listener.allow_plaintext_auth && listener.mode != ListenerMode::Submission {
                return Err(format!("field `listeners[{i}].allow_plaintext_auth`: only for `submission` listeners"));
            }
        }
        positive("limits.max_auth_failures", self.limits.max_auth_failures > 0)?;
        positive("server.max_connections_per_ip", self.server.max_connections_per_ip > 0)?;
        positive("limits.max_message_size", self.limits.max_message_size.0 > 0)?;
        positive("limits.max_recipients", self.limits.max_recipients > 0)?;
        positive("limits.max_errors", self.limits.max_errors > 0)?;
        positive("limits.max_header_fields", self.limits.max_header_fields > 0)?;
        positive("timeouts.idle", !self.timeouts.idle.is_zero())?;
        positive("upstream.connect_timeout", !self.upstream.connect_timeout.is_zero())?;
        positive("upstream.command_timeout", !self.upstream.command_timeout.is_zero())?;
        positive("upstream.data_timeout", !self.upstream.data_timeout.is_zero())?;
        positive("upstream.probe_interval", !self.upstream.probe_interval.is_zero())?;
        if self.limits.max_line_length < 1000 {
            return Err("field `limits.max_line_length`: must be at least 1000 (RFC 5321 §4.5.3.1.6)".into());
        }
        positive("sandbox.max_in_flight", self.sandbox.max_in_flight > 0)?;
        let mut names = std::collections::HashSet::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            if plugin.name.is_empty() || plugin.name.contains(|c: char| c.is_whitespace() || c.is_control()) {
                return Err(format!("field `plugins[{i}].name`: `{}` is not a usable name", plugin.name));
            }
            if !names.insert(plugin.name.as_str()) {
                return Err(format!("field `plugins[{i}].name`: `{}` is used twice", plugin.name));
            }
            let limits = &plugin.limits;
            positive(&format!("plugins[{i}].limits.time"), !limits.time.is_zero())?;
            positive(&format!("plugins[{i}].limits.data_time"), !limits.data_time.is_zero())?;
            if limits.memory.0 < (1 << 20) || limits.memory.0 > (4 << 30) {
                return Err(format!("field `plugins[{i}].limits.memory`: must be between 1MiB and 4GiB"));
            }
            positive(&format!("plugins[{i}].breaker.failures"), plugin.breaker.failures > 0)?;
            positive(&format!("plugins[{i}].limits.concurrency"), limits.concurrency != Some(0))?;
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.proxy_protocol && listener.proxy_trusted.is_empty() {
                return Err(format!(
                    "field `listeners[{i}].proxy_trusted`: list the load balancers' networks; \
                     `proxy_protocol` believes no one without it"
                ));
            }
            if !listener.proxy_protocol && !listener.proxy_trusted.is_empty() {
                return Err(format!("field `listeners[{i}].proxy_trusted`: only with `proxy_protocol = true`"));
            }
        }
        if let Some(url) = &self.kv.backend
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(format!(
                "field `kv.backend`: `{url}` is not a redis:// or rediss:// URL (leave it unset for the embedded store)"
            ));
        }
        positive("kv.timeout", !self.kv.timeout.is_zero())?;
        for (i, plugin) in self.plugins.iter().enumerate() {
            positive(&format!("plugins[{i}].limits.kv_entries"), plugin.limits.kv_entries > 0)?;
        }
        if let Some(node) = &self.server.node_id
            && (node.is_empty() || node.len() > 32 || !node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
        {
            return Err(format!("field `server.node_id`: `{node}` must be 1 to 32 letters, digits or `-`"));
        }
        if self.server.group.is_some() && self.server.user.is_none() {
            return Err("field `server.group`: needs `server.user`".into());
        }
        if let Some(name) = &self.server.hostname
            && (name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_graphic()))
        {
            return Err(format!("field `server.hostname`: `{name}` is not a host name"));
        }
        Ok(())
    }

    /// The listeners to open: the configured ones, or one `smtp` listener on `server.listen`.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        if self.listeners.is_empty() {
            let address = self.server.listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 2525)));
            vec![ListenerConfig::smtp(address)]
        } else {
            self.listeners.clone()
        }
    }

    /// The upstream to use: the configured one or the embedded Maildir default.
    pub fn upstream_url(&self) -> UpstreamUrl {
        self.upstream.url.clone().unwrap_or_else(UpstreamUrl::default_maildir)
    }

    /// The host name the proxy announces.
    /// This proxy's name among several: `server.node_id`, or the first label of the host name
    /// (letters, digits and `-` only). Part of every session id.
    pub fn node_id(&self) -> String {
        if let Some(node) = &self.server.node_id {
            return node.clone();
        }
        let host = self.hostname();
        let label: String = host
            .split('.')
            .next()
            .unwrap_or("")
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .take(32)
            .collect();
        if label.is_empty() { "wasmtp".into() } else { label }
    }

    pub fn hostname(&self) -> String {
        self.server.hostname.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listeners()[0].address.port(), 2525);
        assert_eq!(c.listeners()[0].mode, ListenerMode::Smtp);
        assert_eq!(c.upstream_url(), UpstreamUrl::Maildir("./mail-out".into()));
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
    }

    #[test]
    fn parses_units_and_urls() {
        let c = Config::parse(
            "[limits]\nmax_message_size = \"10MiB\"\n[timeouts]\nidle = \"5m\"\nshutdown_grace = 2\n\
             [upstream]\nurl = \"smtp://127.0.0.1:2526\"\ndata_timeout = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.limits.max_message_size, ByteSize(10 << 20));
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(c.timeouts.shutdown_grace, Duration::from_secs(2));
        assert_eq!(c.upstream.data_timeout, Duration::from_millis(250));
        let units = Config::parse(
            "[limits]\nmemory_buffer = \"512KiB\"\nmax_message_size = \"10 MB\"\n[timeouts]\nidle = \"1h 30m\"\n",
        )
        .unwrap();
        assert_eq!(units.limits.memory_buffer, ByteSize(512 << 10));
        assert_eq!(units.limits.max_message_size, ByteSize(10_000_000));
        assert_eq!(units.timeouts.idle, Duration::from_secs(5400));
        assert_eq!(c.upstream_url(), UpstreamUrl::Smtp { host: "127.0.0.1".into(), port: 2526 });
        assert_eq!(
            "smtp://[::1]:25".parse::<UpstreamUrl>().unwrap(),
            UpstreamUrl::Smtp { host: "::1".into(), port: 25 }
        );
        assert_eq!(
            "smtp://mx.example".parse::<UpstreamUrl>().unwrap(),
            UpstreamUrl::Smtp { host: "mx.example".into(), port: 25 }
        );
    }

    #[test]
    fn relay_domains() {
        let c = Config::parse("[relay]\naccept_domains = [\"example.org\", \"*.example.net\"]\n").unwrap();
        assert!(c.relay.accepts("EXAMPLE.org"));
        assert!(!c.relay.accepts("sub.example.org"));
        assert!(c.relay.accepts("mx.example.net"));
        assert!(!c.relay.accepts("example.net"));
        assert!(!c.relay.accepts("badexample.net"));
    }

    #[test]
    fn listeners() {
        let c = Config::parse(
            "[[plugins]]\nname = \"a\"\npath = \"a.wasm\"\n\
             [[listeners]]\naddress = \"0.0.0.0:25\"\n\
             [[listeners]]\naddress = \"[::]:587\"\nmode = \"submission\"\nplugins = [\"a\"]\nallow_plaintext_auth = true\n\
             [[listeners]]\naddress = \"[::]:465\"\nmode = \"submissions\"\nmax_connections = 10\n",
        )
        .unwrap();
        let modes: Vec<_> = c.listeners().iter().map(|l| (l.address.port(), l.mode)).collect();
        assert_eq!(
            modes,
            [(25, ListenerMode::Smtp), (587, ListenerMode::Submission), (465, ListenerMode::Submissions)]
        );
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:25\"\n[[listeners]]\naddress = \"127.0.0.1:26\"\n")
            .unwrap_err();
        assert!(e.contains("not both"), "{e}");
        let e = Config::parse("[[listeners]]\naddress = \"127.0.0.1:26\"\nplugins = [\"nope\"]\n").unwrap_err();
        assert!(e.contains("no plugin named `nope`"), "{e}");
        let e = Config::parse("[[listeners]]\naddress = \"127.0.0.1:26\"\nallow_plaintext_auth = true\n").unwrap_err();
        assert!(e.contains("only for `submission`"), "{e}");
        let e = Config::parse("[[listeners]]\naddress = \"127.0.0.1:26\"\nmode = \"lmtp\"\n").unwrap_err();
        assert!(e.contains("listeners[0].mode"), "{e}");
    }

    #[test]
    fn errors_name_the_field_and_what_was_expected() {
        let e = Config::parse("[server]\nlisten = \"127.0.0.1:2525\"\nlisten_addr = 1\n").unwrap_err();
        let e2 = Config::parse("[tls]\ncertificates = [{ cert = \"a.pem\" }]\n").unwrap_err();
        assert!(e2.contains("tls.certificates") && e2.contains("key"), "{e2}");
        assert!(e.contains("listen_addr") && e.contains("expected one of"), "{e}");
        let e = Config::parse("[limits]\nmax_message_size = \"ten\"\n").unwrap_err();
        assert!(e.contains("limits.max_message_size") && e.contains("line 2"), "{e}");
        let e = Config::parse("[upstream]\nurl = \"http://x\"\n").unwrap_err();
        assert!(e.contains("upstream.url") && e.contains("smtp://host:port"), "{e}");
        let e = Config::parse("[timeouts]\nidle = \"5 fortnights\"\n").unwrap_err();
        assert!(e.contains("timeouts.idle") && e.contains("unknown time unit"), "{e}");
        let e = Config::parse("[limits]\nmemory_buffer = \"5 parsecs\"\n").unwrap_err();
        assert!(e.contains("limits.memory_buffer") && e.contains("known SI unit"), "{e}");
        let e = Config::parse("[limits]\nmax_message_size = \"99999999999999EiB\"\n").unwrap_err();
        assert!(e.contains("too large"), "{e}");
        let e = Config::parse("[timeouts]\nidle = \"99999999999999999999h\"\n").unwrap_err();
        assert!(e.contains("timeouts.idle"), "an overflowing duration is an error, not a wrap: {e}");
        let e = Config::parse("[limits]\nmax_recipients = 0\n").unwrap_err();
        assert!(e.contains("limits.max_recipients"), "{e}");
    }
}
