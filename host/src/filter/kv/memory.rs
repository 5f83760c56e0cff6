//! The embedded store: one process's memory, one map per plugin namespace, and an expiry queue
//! ordered by deadline, so expired entries are dropped oldest first a few at a time under the
//! lock, never by scanning the whole store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use super::{KvError, Quota};

/// Expired entries dropped per operation at most (amortised: each is dropped once). A quota
/// check sweeps its own namespace's expired entries on top, so a full plugin whose entries
/// have expired is never refused.
const SWEEP_PER_OPERATION: usize = 64;

/// An expiry deadline made unique by a sequence number.
type Deadline = (Instant, u64);

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Deadline>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|(t, _)| t > now)
    }
}

/// One plugin's entries.
#[derive(Debug, Default)]
struct Namespace {
    map: HashMap<Arc<str>, Entry>,
    /// Octets of keys and values in `map`.
    bytes: usize,
}

#[derive(Debug, Default)]
struct Entries {
    namespaces: HashMap<Arc<str>, Namespace>,
    /// Every entry with a deadline, by deadline.
    expiry: BTreeMap<Deadline, (Arc<str>, Arc<str>)>,
    sequence: u64,
}

impl Entries {
    fn deadline(&mut self, now: Instant, ttl: Option<Duration>) -> Option<Deadline> {
        ttl.map(|ttl| {
            self.sequence += 1;
            (now + ttl, self.sequence)
        })
    }

    /// Drops up to `limit` entries whose deadline has passed.
    fn sweep(&mut self, now: Instant, limit: usize) {
        for _ in 0..limit {
            let Some(entry) = self.expiry.first_entry() else { return };
            if entry.key().0 > now {
                return;
            }
            let (namespace, key) = entry.remove();
            self.remove(&namespace, &key);
        }
    }

    /// Removes an entry and its place in the expiry queue.
    fn remove(&mut self, namespace: &str, key: &str) {
        let Some(ns) = self.namespaces.get_mut(namespace) else { return };
        if let Some(old) = ns.map.remove(key) {
            ns.bytes -= key.len() + old.value.len();
            if let Some(deadline) = old.expires {
                self.expiry.remove(&deadline);
            }
        }
        if ns.map.is_empty() {
            self.namespaces.remove(namespace);
        }
    }

    /// Stores `entry`, or refuses it when it would take the namespace past `quota`.
    fn put(&mut self, namespace: &str, key: &str, entry: Entry, now: Instant, quota: &Quota) -> Result<(), KvError> {
        let (old_bytes, exists) = match self.namespaces.get(namespace).and_then(|ns| ns.map.get(key)) {
            Some(old) => (key.len() + old.value.len(), true),
            None => (0, false),
        };
        let fits = |ns: Option<&Namespace>| {
            let (entries, bytes) = ns.map_or((0, 0), |ns| (ns.map.len(), ns.bytes));
            let entries_after = entries + usize::from(!exists);
            let bytes_after = bytes - old_bytes + key.len() + entry.value.len();
            (entries_after <= quota.entries && bytes_after <= quota.bytes, entries, bytes)
        };
        if !fits(self.namespaces.get(namespace)).0 {
            self.sweep_namespace(namespace, now);
            let (ok, entries, bytes) = fits(self.namespaces.get(namespace));
            if !ok {
                return Err(KvError::quota(entries, bytes, quota));
            }
        }
        self.remove(namespace, key);
        let ns_name: Arc<str> = namespace.into();
        let key: Arc<str> = key.into();
        if let Some(deadline) = entry.expires {
            self.expiry.insert(deadline, (ns_name.clone(), key.clone()));
        }
        let ns = self.namespaces.entry(ns_name).or_default();
        ns.bytes += key.len() + entry.value.len();
        ns.map.insert(key, entry);
        Ok(())
    }

    /// Drops every expired entry of one namespace: the rare path of a namespace at its quota.
    fn sweep_namespace(&mut self, namespace: &str, now: Instant) {
        let Some(ns) = self.namespaces.get(namespace) else { return };
        let expired: Vec<Arc<str>> = ns.map.iter().filter(|(_, e)| !e.live(now)).map(|(k, _)| k.clone()).collect();
        for key in expired {
            self.remove(namespace, &key);
        }
    }
}

/// The embedded store, shared by every session and kept across configuration reloads.
#[derive(Debug, Default)]
pub struct MemoryKv {
    entries: Mutex<Entries>,
}

impl MemoryKv {
    pub fn new() -> Self {
        Self::default()
    }

    /// The store, with a little expiry done on the way.
    fn lock(&self, now: Instant) -> MutexGuard<'_, Entries> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.sweep(now, SWEEP_PER_OPERATION);
        entries
    }

    pub fn get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let entries = self.lock(now);
        let entry = entries.namespaces.get(namespace)?.map.get(key)?;
        entry.live(now).then(|| entry.value.clone())
    }

    pub fn set(
        &self,
        namespace: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<(), KvError> {
        let now = Instant::now();
        let mut entries = self.lock(now);
        let expires = entries.deadline(now, ttl);
        entries.put(namespace, key, Entry { value, expires }, now, quota)
    }

    pub fn incr(
        &self,
        namespace: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: &Quota,
    ) -> Result<i64, KvError> {
        let now = Instant::now();
        let mut entries = self.lock(now);
        let live = entries.namespaces.get(namespace).and_then(|ns| ns.map.get(key)).filter(|e| e.live(now));
        let live = live.map(|entry| {
            let current = std::str::from_utf8(&entry.value).ok().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
            (current, entry.expires)
        });
        // A counter keeps its deadline; `put` moves it to the new entry.
        let (next, expires) = match live {
            Some((current, expires)) => (current.saturating_add(delta), expires),
            None => (delta, entries.deadline(now, ttl)),
        };
        let entry = Entry { value: next.to_string().into_bytes(), expires };
        entries.put(namespace, key, entry, now, quota).map(|()| next)
    }

    /// Entries held and the octets of their keys and values (expired ones included until
    /// they are swept).
    pub fn usage(&self) -> (usize, usize) {
        let entries = self.lock(Instant::now());
        entries.namespaces.values().fold((0, 0), |(n, b), ns| (n + ns.map.len(), b + ns.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOMY: Quota = Quota { entries: 1000, bytes: 1 << 20 };

    #[tokio::test(start_paused = true)]
    async fn values_and_counters_expire() {
        let kv = MemoryKv::new();
        kv.set("a", "k", b"v".to_vec(), Some(Duration::from_secs(10)), &ROOMY).unwrap();
        assert_eq!(kv.get("a", "k"), Some(b"v".to_vec()));
        assert_eq!(kv.get("b", "k"), None, "namespaces are separate");
        assert_eq!(kv.incr("a", "n", 1, Some(Duration::from_secs(5)), &ROOMY), Ok(1));
        assert_eq!(kv.incr("a", "n", 2, Some(Duration::from_secs(500)), &ROOMY), Ok(3));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(kv.incr("a", "n", 1, None, &ROOMY), Ok(1), "the window ended");
        assert_eq!(kv.get("a", "k"), Some(b"v".to_vec()));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(kv.get("a", "k"), None);
        assert_eq!(kv.incr("a", "k2", 1, None, &ROOMY), Ok(1));
        kv.set("a", "k2", b"text".to_vec(), None, &ROOMY).unwrap();
        assert_eq!(kv.incr("a", "k2", 1, None, &ROOMY), Ok(1), "non-numbers count from zero");
        assert_eq!(kv.usage(), (2, 1 + 1 + 2 + 1), "a/k expired and swept; a/n and a/k2 remain");
    }

    #[tokio::test(start_paused = true)]
    async fn a_plugin_at_its_quota_is_refused_and_others_are_not() {
        let kv = MemoryKv::new();
        let quota = Quota { entries: 3, bytes: 100 };
        for key in ["a", "b", "c"] {
            kv.set("full", key, b"v".to_vec(), Some(Duration::from_secs(10)), &quota).unwrap();
        }
        let refused = kv.set("full", "d", b"v".to_vec(), None, &quota);
        assert!(matches!(refused, Err(KvError::QuotaExceeded(_))), "{refused:?}");
        assert!(kv.incr("full", "e", 1, None, &quota).is_err(), "a new counter is a new entry");
        kv.set("full", "a", b"replaced".to_vec(), None, &quota).expect("replacing an entry adds none");
        kv.set("other", "d", b"v".to_vec(), None, &quota).expect("another plugin has its own quota");
        let too_big = kv.set("other", "big", vec![0; 100], None, &quota);
        assert!(matches!(too_big, Err(KvError::QuotaExceeded(_))), "octets count too");
        tokio::time::advance(Duration::from_secs(11)).await;
        kv.set("full", "d", b"v".to_vec(), None, &quota).expect("expired entries make room");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_needs_no_scan_of_the_store() {
        let kv = MemoryKv::new();
        let quota = Quota { entries: 100_000, bytes: 64 << 20 };
        for i in 0..10_000 {
            kv.set("p", &format!("k{i}"), vec![1; 10], Some(Duration::from_secs(1 + i % 7)), &quota).unwrap();
        }
        kv.set("p", "kept", b"v".to_vec(), None, &quota).unwrap();
        tokio::time::advance(Duration::from_secs(8)).await;
        // Each operation drops a bounded number of the oldest expired entries.
        let mut operations = 0;
        while kv.usage().0 > 1 {
            operations += 1;
            assert!(operations <= 10_000 / SWEEP_PER_OPERATION + 2, "expiry does not keep up");
        }
        assert_eq!(kv.get("p", "kept"), Some(b"v".to_vec()));
        let entries = kv.entries.lock().unwrap();
        assert!(entries.expiry.is_empty());
    }
}
