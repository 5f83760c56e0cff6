//! The shared key-value store behind the `kv-*` host imports, namespaced per plugin, with
//! expiry and a quota per plugin (entries and octets), so one plugin filling its share never
//! starves another.
//!
//! Two backends give the same semantics: [`memory`] (the default: one process, kept across
//! reloads) and [`redis`] (`[kv] backend = "redis://…"`: shared by several proxies, so a rate
//! limit counts across all of them). A backend that cannot answer returns
//! [`KvError::Unavailable`]; the plugin decides what that means (WIT 0.2), or sees a miss (0.1).

pub mod memory;
pub mod redis;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use self::memory::MemoryKv;
pub use self::redis::RedisKv;
use crate::config::KvConfig;

/// Longest key, in octets.
pub const MAX_KEY: usize = 256;
/// Largest value, in octets.
pub const MAX_VALUE: usize = 64 << 10;

/// What one plugin may keep in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub entries: usize,
    /// Octets of keys and values.
    pub bytes: usize,
}

impl Default for Quota {
    fn default() -> Self {
        Self { entries: crate::config::DEFAULT_KV_ENTRIES, bytes: crate::config::DEFAULT_KV_BYTES as usize }
    }
}

impl Quota {
    /// A plugin's quota, from its `[plugins.limits]`.
    pub fn of(limits: &crate::config::PluginLimits) -> Self {
        Self { entries: limits.kv_entries, bytes: limits.kv_bytes.bytes() as usize }
    }
}

/// Why a store operation did not happen. Either way the plugin gets an answer it can handle;
/// neither is a fault of the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The backend could not be reached or did not answer in time.
    #[error("key-value store unavailable: {0}")]
    Unavailable(String),
    /// The write would take the plugin past its quota.
    #[error("key-value quota exceeded: {0}")]
    QuotaExceeded(String),
}

impl KvError {
    /// The metrics label.
    pub fn reason(&self) -> &'static str {
        match self {
            KvError::Unavailable(_) => "unavailable",
            KvError::QuotaExceeded(_) => "quota",
        }
    }

    fn quota(entries: usize, bytes: usize, quota: &Quota) -> Self {
        KvError::QuotaExceeded(format!(
            "the plugin holds {entries} entries and {bytes} octets (quota {} entries, {} octets)",
            quota.entries, quota.bytes
        ))
    }
}

/// The store, chosen by `[kv] backend` at start and kept across reloads.
#[derive(Debug)]
pub enum Kv {
    Memory(MemoryKv),
    Redis(RedisKv),
}

impl Default for Kv {
    fn default() -> Self {
        Kv::Memory(MemoryKv::new())
    }
}

impl Kv {
    /// The backend `config` names. Redis is connected to in the background: the proxy starts
    /// (and serves mail, with kv calls answered `unavailable`) while it cannot be reached.
    pub fn from_config(config: &KvConfig) -> anyhow::Result<Self> {
        match &config.backend {
            None => Ok(Kv::default()),
            Some(url) => Ok(Kv::Redis(RedisKv::new(url, config)?)),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Kv::Memory(_) => "memory",
            Kv::Redis(_) => "redis",
        }
    }

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Kv::Memory(kv) => Ok(kv.get(namespace, key)),
            Kv::Redis(kv) => kv.get(namespace, key).await,
        }
    }

    /// Stores a value, expiring after `ttl` when given.
    pub async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<(), KvError> {
        match self {
            Kv::Memory(kv) => kv.set(namespace, key, value, ttl, quota),
            Kv::Redis(kv) => kv.set(namespace, key, value, ttl, quota).await,
        }
    }

    /// Adds `delta` to a decimal counter (a missing or non-numeric value counts from 0);
    /// `ttl` applies when the counter is created.
    pub async fn incr(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<i64, KvError> {
        match self {
            Kv::Memory(kv) => kv.incr(namespace, key, delta, ttl, quota),
            Kv::Redis(kv) => kv.incr(namespace, key, delta, ttl, quota).await,
        }
    }

    /// Entries held and the octets of their keys and values, for the metrics: the embedded
    /// store only (Redis has its own monitoring).
    pub fn usage(&self) -> Option<(usize, usize)> {
        match self {
            Kv::Memory(kv) => Some(kv.usage()),
            Kv::Redis(_) => None,
        }
    }
}

/// Logs a failed store operation at most once a second per process, with how many were not
/// logged meanwhile: a Redis outage at thousands of messages a second must not flood the log.
/// Every failure is counted in the metrics.
pub fn log_failure(plugin: &str, operation: &str, error: &KvError) {
    static LAST: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now > last && LAST.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
        tracing::warn!(plugin, operation, suppressed, "{error}");
    } else {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
    }
}
