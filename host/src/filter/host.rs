//! The host services a plugin call may use — log, config, notes and the shared key-value store —
//! in plain Rust, bounded per call. The sandbox's bindings only forward to [`HostContext`]; a
//! [`HostCallError`] ends the call as a fault of the plugin, while a store that cannot answer
//! or a full quota is a [`KvError`] handed back to the plugin.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::kv::{self, Kv, KvError, Quota};
use crate::metrics::Metrics;

/// Most host calls in one plugin call.
pub const MAX_HOST_CALLS: u32 = 10_000;
/// Longest log message kept, in characters; the rest is cut.
const MAX_LOG_CHARS: usize = 2000;
/// Log lines one call may write; further lines are counted, and summarised in one line.
pub const MAX_LOG_LINES: u64 = 20;
/// Log octets one call may write.
pub const MAX_LOG_BYTES: u64 = 8 << 10;

/// Log levels a plugin can write at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Why a host call was refused; the call ends with a fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostCallError {
    #[error("the plugin made more than {MAX_HOST_CALLS} host calls in one call")]
    TooManyCalls,
    #[error("the plugin exceeded its host-call data budget")]
    DataBudget,
    #[error("key longer than {} octets", kv::MAX_KEY)]
    KeyTooLong,
    #[error("value larger than {} octets", kv::MAX_VALUE)]
    ValueTooLarge,
    #[error("the plugin's notes would exceed their limit of {0} octets for the session")]
    NotesFull(usize),
    /// A 0.1 plugin's counter could not be read or written: 0.1 has no way to say so but to
    /// end the call (its `on_error` policy decides).
    #[error("{0}")]
    Store(KvError),
}

impl HostCallError {
    /// The plugin broke a limit of its contract (rather than the host failing it).
    pub fn is_plugin_fault(&self) -> bool {
        !matches!(self, HostCallError::Store(_))
    }
}

/// What one call wrote to the log, and what it was not allowed to write. Shared with the
/// chain, so the summary is written even when the call is dropped at its deadline.
#[derive(Debug, Default)]
pub struct LogBudget {
    lines: AtomicU64,
    octets: AtomicU64,
    suppressed_lines: AtomicU64,
    suppressed_octets: AtomicU64,
}

impl LogBudget {
    /// Whether a line of `len` octets may still be written.
    fn take(&self, len: usize) -> bool {
        let lines = self.lines.fetch_add(1, Ordering::Relaxed) + 1;
        let octets = self.octets.fetch_add(len as u64, Ordering::Relaxed) + len as u64;
        if lines <= MAX_LOG_LINES && octets <= MAX_LOG_BYTES {
            return true;
        }
        self.suppressed_lines.fetch_add(1, Ordering::Relaxed);
        self.suppressed_octets.fetch_add(len as u64, Ordering::Relaxed);
        false
    }

    /// Logs one line for what was suppressed, if anything was.
    pub fn report(&self, plugin: &str) {
        let lines = self.suppressed_lines.load(Ordering::Relaxed);
        if lines > 0 {
            let octets = self.suppressed_octets.load(Ordering::Relaxed);
            tracing::warn!(plugin, lines, octets, "plugin log output over its per-call limit was dropped");
        }
    }
}

/// Notes plugins keep in the host for one scope (a session or a transaction), per plugin.
#[derive(Debug, Default, Clone)]
pub struct Notes {
    by_plugin: HashMap<Arc<str>, HashMap<String, String>>,
}

impl Notes {
    fn get(&self, plugin: &str) -> Option<&HashMap<String, String>> {
        self.by_plugin.get(plugin)
    }

    fn extend(&mut self, plugin: &Arc<str>, writes: Vec<(String, String)>) {
        if !writes.is_empty() {
            self.by_plugin.entry(plugin.clone()).or_default().extend(writes);
        }
    }
}

/// The notes a stage can see: the session's, and the transaction's while one is open. Writes
/// go to the innermost scope, so notes set during a transaction end with it.
#[derive(Debug)]
pub struct NoteScopes<'a> {
    pub session: &'a mut Notes,
    pub transaction: Option<&'a mut Notes>,
}

impl NoteScopes<'_> {
    /// What `plugin` sees: session notes overlaid with transaction notes.
    pub(super) fn visible_to(&self, plugin: &str) -> HashMap<String, String> {
        let mut notes = self.session.get(plugin).cloned().unwrap_or_default();
        if let Some(txn) = self.transaction.as_ref().and_then(|t| t.get(plugin)) {
            notes.extend(txn.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        notes
    }

    /// Keeps the writes of a successful call.
    pub(super) fn commit(&mut self, plugin: &Arc<str>, writes: Vec<(String, String)>) {
        match &mut self.transaction {
            Some(txn) => txn.extend(plugin, writes),
            None => self.session.extend(plugin, writes),
        }
    }
}

/// What one plugin call may read and change through host calls.
#[derive(Debug)]
pub struct HostContext {
    plugin: Arc<str>,
    session: Arc<str>,
    config_json: Arc<str>,
    kv: Arc<Kv>,
    kv_quota: Quota,
    metrics: Option<Arc<Metrics>>,
    /// The plugin's notes as this call sees them; its own writes land here too.
    notes: HashMap<String, String>,
    /// Notes written by this call, kept by the chain only if the call succeeds.
    note_writes: Vec<(String, String)>,
    /// Octets still allowed through host calls in this call.
    data_budget: usize,
    calls: u32,
    /// Octets of notes (keys and values) the plugin holds in this session, and its limit.
    notes_bytes: usize,
    notes_limit: usize,
    logs: Arc<LogBudget>,
}

impl HostContext {
    pub fn new(
        plugin: Arc<str>,
        session: Arc<str>,
        config_json: Arc<str>,
        kv: Arc<Kv>,
        notes: HashMap<String, String>,
        data_budget: usize,
    ) -> Self {
        let notes_bytes = notes.iter().map(|(k, v)| k.len() + v.len()).sum();
        Self {
            plugin,
            session,
            config_json,
            kv,
            kv_quota: Quota::default(),
            metrics: None,
            notes,
            note_writes: Vec::new(),
            data_budget,
            calls: 0,
            notes_bytes,
            notes_limit: usize::MAX,
            logs: Arc::default(),
        }
    }

    /// Bounds the octets of notes the plugin may hold in the session.
    pub fn with_notes_limit(mut self, limit: usize) -> Self {
        self.notes_limit = limit;
        self
    }

    /// Bounds what the plugin may keep in the key-value store.
    pub fn with_kv_quota(mut self, quota: Quota) -> Self {
        self.kv_quota = quota;
        self
    }

    /// Counts failed key-value operations in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts this call's log output in `logs`.
    pub fn with_log_budget(mut self, logs: Arc<LogBudget>) -> Self {
        self.logs = logs;
        self
    }

    pub fn plugin(&self) -> &str {
        &self.plugin
    }

    /// The notes this call wrote.
    pub fn into_note_writes(self) -> Vec<(String, String)> {
        self.note_writes
    }

    /// Charges one host call moving `bytes`.
    fn charge(&mut self, bytes: usize) -> Result<(), HostCallError> {
        self.calls += 1;
        if self.calls > MAX_HOST_CALLS {
            return Err(HostCallError::TooManyCalls);
        }
        self.data_budget = self.data_budget.checked_sub(bytes).ok_or(HostCallError::DataBudget)?;
        Ok(())
    }

    fn check_key(key: &str) -> Result<(), HostCallError> {
        if key.len() > kv::MAX_KEY { Err(HostCallError::KeyTooLong) } else { Ok(()) }
    }

    fn check_value(len: usize) -> Result<(), HostCallError> {
        if len > kv::MAX_VALUE { Err(HostCallError::ValueTooLarge) } else { Ok(()) }
    }

    /// Writes a line to the host's log, tagged with the plugin and the session; control
    /// characters become spaces.
    pub fn log(&mut self, level: LogLevel, message: &str) -> Result<(), HostCallError> {
        self.charge(message.len())?;
        if !self.logs.take(message.len()) {
            return Ok(());
        }
        let message: String =
            message.chars().take(MAX_LOG_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
        let (plugin, session) = (&*self.plugin, &*self.session);
        match level {
            LogLevel::Trace => tracing::trace!(plugin, session, "{message}"),
            LogLevel::Debug => tracing::debug!(plugin, session, "{message}"),
            LogLevel::Info => tracing::info!(plugin, session, "{message}"),
            LogLevel::Warn => tracing::warn!(plugin, session, "{message}"),
            LogLevel::Error => tracing::error!(plugin, session, "{message}"),
        }
        Ok(())
    }

    /// The plugin's `config` table as JSON.
    pub fn config(&mut self) -> Result<String, HostCallError> {
        self.charge(self.config_json.len())?;
        Ok(self.config_json.to_string())
    }

    pub fn notes_get(&mut self, key: &str) -> Result<Option<String>, HostCallError> {
        self.charge(key.len())?;
        let value = self.notes.get(key).cloned();
        self.charge(value.as_ref().map_or(0, String::len))?;
        Ok(value)
    }

    pub fn notes_set(&mut self, key: String, value: String) -> Result<(), HostCallError> {
        self.charge(key.len() + value.len())?;
        Self::check_key(&key)?;
        Self::check_value(value.len())?;
        let replaced = self.notes.get(&key).map_or(0, |old| key.len() + old.len());
        let bytes = (self.notes_bytes - replaced).saturating_add(key.len() + value.len());
        if bytes > self.notes_limit {
            return Err(HostCallError::NotesFull(self.notes_limit));
        }
        self.notes_bytes = bytes;
        self.notes.insert(key.clone(), value.clone());
        self.note_writes.push((key, value));
        Ok(())
    }

    /// Logs and counts a failed store operation, and hands it back.
    fn kv_failed<T>(&self, operation: &'static str, result: Result<T, KvError>) -> Result<T, KvError> {
        if let Err(error) = &result {
            kv::log_failure(&self.plugin, operation, error);
            if let Some(metrics) = &self.metrics {
                metrics.kv_failure(&self.plugin, operation, error.reason());
            }
        }
        result
    }

    /// Reads a value: the outer error ends the call (a broken limit), the inner one is the
    /// store's answer for the plugin.
    pub async fn kv_get(&mut self, key: &str) -> Result<Result<Option<Vec<u8>>, KvError>, HostCallError> {
        self.charge(key.len())?;
        let value = self.kv.get(&self.plugin, key).await;
        self.charge(value.as_ref().map_or(0, |v| v.as_ref().map_or(0, Vec::len)))?;
        Ok(self.kv_failed("get", value))
    }

    pub async fn kv_set(
        &mut self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<Result<(), KvError>, HostCallError> {
        self.charge(key.len() + value.len())?;
        Self::check_key(key)?;
        Self::check_value(value.len())?;
        let stored = self.kv.set(&self.plugin, key, value, ttl, &self.kv_quota).await;
        Ok(self.kv_failed("set", stored))
    }

    pub async fn kv_incr(
        &mut self,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
    ) -> Result<Result<i64, KvError>, HostCallError> {
        self.charge(key.len() + 8)?;
        Self::check_key(key)?;
        let counted = self.kv.incr(&self.plugin, key, delta, ttl, &self.kv_quota).await;
        Ok(self.kv_failed("incr", counted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context(budget: usize) -> HostContext {
        HostContext::new("p".into(), "s".into(), "{\"a\":1}".into(), Arc::new(Kv::default()), HashMap::new(), budget)
    }

    #[tokio::test]
    async fn every_call_is_charged_against_the_budgets() {
        let mut host = context(10);
        assert_eq!(host.config(), Ok("{\"a\":1}".into()));
        assert_eq!(host.kv_set("key", b"too long".to_vec(), None).await, Err(HostCallError::DataBudget));
        assert!(HostCallError::DataBudget.is_plugin_fault());
        let mut host = context(usize::MAX);
        for _ in 0..MAX_HOST_CALLS {
            host.log(LogLevel::Trace, "x").unwrap();
        }
        assert_eq!(host.log(LogLevel::Trace, "x"), Err(HostCallError::TooManyCalls));
    }

    #[tokio::test]
    async fn keys_and_values_are_bounded() {
        let mut host = context(usize::MAX);
        let long_key = "k".repeat(kv::MAX_KEY + 1);
        assert_eq!(host.notes_set(long_key.clone(), "v".into()), Err(HostCallError::KeyTooLong));
        assert_eq!(host.kv_incr(&long_key, 1, None).await, Err(HostCallError::KeyTooLong));
        assert_eq!(host.kv_set("k", vec![0; kv::MAX_VALUE + 1], None).await, Err(HostCallError::ValueTooLarge));
        assert!(!HostCallError::Store(KvError::Unavailable("down".into())).is_plugin_fault());
    }

    #[tokio::test]
    async fn a_full_quota_is_an_answer_for_the_plugin() {
        let mut host = context(usize::MAX).with_kv_quota(Quota { entries: 1, bytes: 100 });
        assert_eq!(host.kv_set("a", b"1".to_vec(), None).await, Ok(Ok(())));
        let refused = host.kv_set("b", b"1".to_vec(), None).await.expect("within the call's limits");
        assert!(matches!(refused, Err(KvError::QuotaExceeded(_))), "{refused:?}");
        assert_eq!(host.kv_get("a").await, Ok(Ok(Some(b"1".to_vec()))));
    }

    #[test]
    fn notes_are_bounded_per_session() {
        let mut notes = HashMap::new();
        notes.insert("old".to_string(), "x".repeat(50));
        let mut host =
            HostContext::new("p".into(), "s".into(), "{}".into(), Arc::new(Kv::default()), notes, usize::MAX)
                .with_notes_limit(100);
        host.notes_set("old".into(), "y".repeat(90)).unwrap();
        assert_eq!(host.notes_set("new".into(), "z".repeat(10)), Err(HostCallError::NotesFull(100)));
        host.notes_set("old".into(), "short".into()).unwrap();
        host.notes_set("new".into(), "z".repeat(10)).unwrap();
    }

    #[test]
    fn log_output_per_call_is_capped() {
        let logs = Arc::new(LogBudget::default());
        let mut host = context(usize::MAX).with_log_budget(logs.clone());
        for _ in 0..1000 {
            host.log(LogLevel::Trace, "spam").unwrap();
        }
        assert_eq!(logs.lines.load(Ordering::Relaxed), 1000);
        assert_eq!(logs.suppressed_lines.load(Ordering::Relaxed), 1000 - MAX_LOG_LINES);
        let logs = Arc::new(LogBudget::default());
        let mut host = context(usize::MAX).with_log_budget(logs.clone());
        host.log(LogLevel::Trace, &"x".repeat(MAX_LOG_BYTES as usize + 1)).unwrap();
        assert_eq!(logs.suppressed_lines.load(Ordering::Relaxed), 1, "one huge line is over the octet cap");
    }

    #[test]
    fn notes_are_scoped_and_writes_come_back_to_the_caller() {
        let mut session = Notes::default();
        let mut transaction = Notes::default();
        let plugin: Arc<str> = "p".into();
        let mut scopes = NoteScopes { session: &mut session, transaction: None };
        scopes.commit(&plugin, vec![("k".into(), "session".into()), ("only".into(), "s".into())]);
        let mut scopes = NoteScopes { session: &mut session, transaction: Some(&mut transaction) };
        scopes.commit(&plugin, vec![("k".into(), "txn".into())]);
        let visible = scopes.visible_to("p");
        assert_eq!(visible.get("k").map(String::as_str), Some("txn"), "transaction notes win");
        assert_eq!(visible.get("only").map(String::as_str), Some("s"));
        assert!(scopes.visible_to("other").is_empty(), "notes are private to their plugin");

        let mut host = context(usize::MAX);
        host.notes_set("n".into(), "1".into()).unwrap();
        assert_eq!(host.notes_get("n"), Ok(Some("1".into())), "a call reads its own writes");
        assert_eq!(host.into_note_writes(), vec![("n".to_string(), "1".to_string())]);
        drop(transaction);
        let scopes = NoteScopes { session: &mut session, transaction: None };
        assert_eq!(scopes.visible_to("p").get("k").map(String::as_str), Some("session"));
    }
}
