//! The shared key-value store behind the `kv-*` host imports: in memory, namespaced per
//! plugin, with expiry. The single-node default; a shared backend can take its place behind the
//! same three operations.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longest key, in octets.
pub const MAX_KEY: usize = 256;
/// Largest value, in octets.
pub const MAX_VALUE: usize = 64 << 10;
/// Entries kept across all plugins before new keys are refused.
const MAX_ENTRIES: usize = 200_000;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|t| t > now)
    }
}

type Id = (String, String);

/// What an entry takes: its namespace, key and value.
fn octets(id: &Id, value: &[u8]) -> usize {
    id.0.len() + id.1.len() + value.len()
}

#[derive(Debug, Default)]
struct Entries {
    map: HashMap<Id, Entry>,
    /// The sum of [`octets`] over `map`.
    bytes: usize,
}

impl Entries {
    fn insert(&mut self, id: Id, entry: Entry) {
        self.bytes += octets(&id, &entry.value);
        if let Some(old) = self.map.get(&id) {
            self.bytes -= octets(&id, &old.value);
        }
        self.map.insert(id, entry);
    }

    /// Drops expired entries when the store is full; false if it is still full.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.map.len() < MAX_ENTRIES {
            return true;
        }
        let bytes = &mut self.bytes;
        self.map.retain(|id, e| {
            let live = e.live(now);
            if !live {
                *bytes -= octets(id, &e.value);
            }
            live
        });
        self.map.len() < MAX_ENTRIES
    }
}

/// The store, shared by every session and kept across configuration reloads.
#[derive(Debug, Default)]
pub struct KvStore {
    entries: Mutex<Entries>,
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let entries = self.lock();
        entries.map.get(&(namespace.to_string(), key.to_string())).filter(|e| e.live(now)).map(|e| e.value.clone())
    }

    /// Stores a value; returns false when the store is full.
    pub fn set(&self, namespace: &str, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut entries = self.lock();
        if !entries.make_room(now) {
            return false;
        }
        entries.insert((namespace.to_string(), key.to_string()), Entry { value, expires: ttl.map(|t| now + t) });
        true
    }

    /// Adds `delta` to a decimal counter; `ttl` applies when the counter is (re)created.
    /// Returns `None` when the store is full.
    pub fn incr(&self, namespace: &str, key: &str, delta: i64, ttl: Option<Duration>) -> Option<i64> {
        let now = Instant::now();
        let mut entries = self.lock();
        let id = (namespace.to_string(), key.to_string());
        if let Some(entry) = entries.map.get(&id).filter(|e| e.live(now)) {
            let current = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            let next = current.saturating_add(delta);
            let expires = entry.expires;
            entries.insert(id, Entry { value: next.to_string().into_bytes(), expires });
            return Some(next);
        }
        if !entries.make_room(now) {
            return None;
        }
        entries.insert(id, Entry { value: delta.to_string().into_bytes(), expires: ttl.map(|t| now + t) });
        Some(delta)
    }

    /// Entries held and the octets of their keys and values (expired ones included until
    /// they are swept).
    pub fn usage(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.map.len(), entries.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn values_and_counters_expire() {
        let kv = KvStore::new();
        assert!(kv.set("a", "k", b"v".to_vec(), Some(Duration::from_secs(10))));
        assert_eq!(kv.get("a", "k"), Some(b"v".to_vec()));
        assert_eq!(kv.get("b", "k"), None, "namespaces are separate");
        assert_eq!(kv.incr("a", "n", 1, Some(Duration::from_secs(5))), Some(1));
        assert_eq!(kv.incr("a", "n", 2, Some(Duration::from_secs(500))), Some(3));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(kv.incr("a", "n", 1, None), Some(1), "the window ended");
        assert_eq!(kv.get("a", "k"), Some(b"v".to_vec()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(kv.get("a", "k"), None);
        assert_eq!(kv.incr("a", "k2", 1, None), Some(1));
        assert!(kv.set("a", "k2", b"text".to_vec(), None));
        assert_eq!(kv.incr("a", "k2", 1, None), Some(1), "non-numbers count from zero");
        assert_eq!(kv.usage(), (3, 3 + 4 + 3), "a/k, a/n, a/k2 with their values");
    }
}
