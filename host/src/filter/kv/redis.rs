//! The shared store in Redis (`[kv] backend = "redis://…"`): several proxies behind one
//! balancer see the same values and counters, so a rate limit counts across all of them.
//!
//! Client: the `redis` crate's `ConnectionManager`, one multiplexed connection per proxy
//! (concurrent operations are pipelined on it) that reconnects by itself after Redis restarts;
//! it is created lazily, so the proxy starts and serves mail while Redis is down. Every
//! operation is bounded by `[kv] timeout`, well inside a plugin's time budget.
//!
//! Layout, per plugin namespace (the `{…}` hash tag keeps one namespace on one cluster slot):
//! - `<prefix>:{<plugin>}:v:<key>` holds a value, with Redis's own expiry (`PX`);
//! - `<prefix>:{<plugin>}:idx`, a sorted set of the plugin's keys by expiry time (`+inf` for
//!   none), so expired keys leave the quota accounting a few at a time, oldest first;
//! - `<prefix>:{<plugin>}:size`, a hash of each key's octets, and `…:bytes`, their sum.
//!
//! Writes run as Lua scripts, so the quota check and the write are one atomic step even with
//! many proxies writing at once; reads are a plain `GET`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Script};

use super::{KvError, Quota};
use crate::config::KvConfig;

/// Expired keys each write drops from a namespace's accounting at most (amortised: each key
/// is dropped once).
const SWEEP_PER_WRITE: usize = 64;

/// Shared by both write scripts: the time, and the sweep of expired keys' accounting.
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
for _, k in ipairs(expired) do
  local n = tonumber(redis.call('HGET', KEYS[3], k) or '0')
  redis.call('HDEL', KEYS[3], k)
  redis.call('ZREM', KEYS[2], k)
  redis.call('DECRBY', KEYS[4], n)
end
-- Creates or replaces the value if the namespace's quota allows; {1, ''} or {0, 'entries bytes'}.
local function put(value, ttl)
  local old = redis.call('HGET', KEYS[3], ARGV[1])
  local entries = redis.call('ZCARD', KEYS[2])
  local bytes = tonumber(redis.call('GET', KEYS[4]) or '0')
  local size = #ARGV[1] + #value
  local old_size = tonumber(old or '0')
  local entries_after = entries
  if not old then entries_after = entries + 1 end
  if entries_after > tonumber(ARGV[4]) or bytes - old_size + size > tonumber(ARGV[5]) then
    return {0, entries .. ' ' .. bytes}
  end
  if ttl > 0 then
    redis.call('SET', KEYS[1], value, 'PX', ttl)
    redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
  else
    redis.call('SET', KEYS[1], value)
    redis.call('ZADD', KEYS[2], '+inf', ARGV[1])
  end
  redis.call('HSET', KEYS[3], ARGV[1], size)
  redis.call('INCRBY', KEYS[4], size - old_size)
  return {1, ''}
end
"#;

/// ARGV: key, value, ttl in ms (0: none), quota entries, quota octets, sweep bound.
const SET: &str = r#"
return put(ARGV[2], tonumber(ARGV[3]))
"#;

/// ARGV: key, delta, ttl in ms (0: none) for a new counter, quota entries, quota octets,
/// sweep bound. A live counter keeps its expiry; a value that is not a decimal number counts
/// from zero (as in the embedded store). Returns {1, new value} or {0, 'entries bytes'}.
const INCR: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local ok, counted = pcall(redis.call, 'INCRBY', KEYS[1], ARGV[2])
  if not ok then
    redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  end
  local value = redis.call('GET', KEYS[1])
  local size = #ARGV[1] + #value
  local old_size = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
  if redis.call('ZSCORE', KEYS[2], ARGV[1]) == false then
    local pttl = redis.call('PTTL', KEYS[1])
    if pttl > 0 then redis.call('ZADD', KEYS[2], now + pttl, ARGV[1]) else redis.call('ZADD', KEYS[2], '+inf', ARGV[1]) end
  end
  redis.call('HSET', KEYS[3], ARGV[1], size)
  redis.call('INCRBY', KEYS[4], size - old_size)
  return {1, value}
end
local created = put(ARGV[2], tonumber(ARGV[3]))
if created[1] == 1 then return {1, ARGV[2]} end
return created
"#;

/// The Redis backend of [`super::Kv`].
pub struct RedisKv {
    connection: ConnectionManager,
    timeout: Duration,
    prefix: String,
    set: Script,
    incr: Script,
    /// The backend URL without its password, for errors.
    shown: String,
}

impl std::fmt::Debug for RedisKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisKv").field("backend", &self.shown).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl RedisKv {
    /// A client for `url`; nothing is connected until the first operation.
    pub fn new(url: &str, config: &KvConfig) -> anyhow::Result<Self> {
        let shown = redact(url);
        let client = match &config.tls_ca_file {
            None => Client::open(url),
            Some(path) => {
                let root_cert =
                    std::fs::read(path).map_err(|e| anyhow::anyhow!("kv.tls_ca_file {}: {e}", path.display()))?;
                Client::build_with_tls(url, redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
            }
        }
        .map_err(|e| anyhow::anyhow!("kv.backend {shown}: {e}"))?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.timeout))
            .set_response_timeout(Some(config.timeout))
            // Reconnecting is retried on the next operations, not inside one.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        let connection = ConnectionManager::new_lazy_with_config(client, manager)
            .map_err(|e| anyhow::anyhow!("kv.backend {shown}: {e}"))?;
        tracing::info!(backend = %shown, timeout = ?config.timeout, "key-value store in Redis");
        Ok(Self {
            connection,
            timeout: config.timeout,
            prefix: config.prefix.clone(),
            set: Script::new(&format!("{PRELUDE}{SET}")),
            incr: Script::new(&format!("{PRELUDE}{INCR}")),
            shown,
        })
    }

    /// The namespace's keys: the value's, the expiry index, the sizes, the sum of sizes.
    fn keys(&self, namespace: &str, key: &str) -> [String; 4] {
        let base = format!("{}:{{{namespace}}}", self.prefix);
        [format!("{base}:v:{key}"), format!("{base}:idx"), format!("{base}:size"), format!("{base}:bytes")]
    }

    /// Runs one operation within the timeout.
    async fn bounded<T>(&self, operation: impl Future<Output = redis::RedisResult<T>>) -> Result<T, KvError> {
        match tokio::time::timeout(self.timeout, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(KvError::Unavailable(format!("redis {}: {e}", self.shown))),
            Err(_) => Err(KvError::Unavailable(format!(
                "redis {} did not answer within {}ms",
                self.shown,
                self.timeout.as_millis()
            ))),
        }
    }

    pub async fn get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let [value_key, ..] = self.keys(namespace, key);
        let mut connection = self.connection.clone();
        self.bounded(async move { connection.get::<_, Option<Vec<u8>>>(value_key).await }).await
    }

    /// Runs a write script: `Ok(text)` when it happened, the quota error when it did not.
    async fn write(
        &self,
        script: &Script,
        namespace: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<String, KvError> {
        let keys = self.keys(namespace, key);
        let ttl_ms = ttl.map_or(0, |t| t.as_millis().max(1) as u64);
        let mut invocation = script.prepare_invoke();
        for k in &keys {
            invocation.key(k);
        }
        invocation.arg(key).arg(value).arg(ttl_ms).arg(quota.entries).arg(quota.bytes).arg(SWEEP_PER_WRITE);
        let mut connection = self.connection.clone();
        let (done, text): (i64, String) = self.bounded(invocation.invoke_async(&mut connection)).await?;
        if done == 1 {
            return Ok(text);
        }
        let mut held = text.split(' ').map(|n| n.parse::<usize>().unwrap_or(0));
        Err(KvError::quota(held.next().unwrap_or(0), held.next().unwrap_or(0), quota))
    }

    pub async fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<(), KvError> {
        self.write(&self.set, namespace, key, &value, ttl, quota).await.map(drop)
    }

    pub async fn incr(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<i64, KvError> {
        let value = self.write(&self.incr, namespace, key, delta.to_string().as_bytes(), ttl, quota).await?;
        value
            .parse()
            .map_err(|_| KvError::Unavailable(format!("redis {} answered {value:?} for a counter", self.shown)))
    }
}

/// The URL without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(super::redact("redis://:s3cret@10.0.0.5:6379/0"), "redis://***@10.0.0.5:6379/0");
        assert_eq!(super::redact("rediss://cache.example:6380"), "rediss://cache.example:6380");
    }
}
