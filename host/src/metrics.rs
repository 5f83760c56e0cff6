//! The proxy's metrics, served as Prometheus text by the admin listener (`/metrics`).
//!
//! One [`Metrics`] per running proxy; every layer records into it through the narrow methods
//! below, so the metric names and label sets are defined in this file only. Labels are bounded
//! by construction: stages, verdicts, outcomes and reply classes are fixed words, and plugin
//! names come from the configuration. No addresses, ids or reply texts ever become labels.
//!
//! Gauges that describe state rather than events (breaker states, key-value usage, upstream
//! reachability, the generation) are set just before each scrape by whoever owns that state.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    mode: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamReplyLabels {
    stage: &'static str,
    class: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    plugin: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginStageLabels {
    plugin: Arc<str>,
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginCallLabels {
    plugin: Arc<str>,
    stage: &'static str,
    verdict: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginFaultLabels {
    plugin: Arc<str>,
    stage: &'static str,
    fault: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShadowLabels {
    plugin: Arc<str>,
    stage: &'static str,
    live: &'static str,
    shadow: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KvFailureLabels {
    plugin: String,
    operation: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TlsLabels {
    kind: &'static str,
    result: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets from 50 µs to about 100 s: plugin calls take microseconds, an upstream's
/// end-of-data reply may take minutes.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00005, 2.0, 22))
}

/// Size buckets from 1 KiB to 64 MiB.
fn size_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1024.0, 2.0, 17))
}

/// A breaker's state as a number: 0 closed, 1 open, 2 half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// Every metric of one proxy.
pub struct Metrics {
    registry: Registry,
    connections_open: Gauge,
    connections: Family<ListenerLabels, Counter>,
    connections_refused: Family<ReasonLabels, Counter>,
    transactions: Family<OutcomeLabels, Counter>,
    message_size: Histogram,
    upstream_replies: Family<UpstreamReplyLabels, Counter>,
    upstream_latency: HistogramFamily<StageLabels>,
    upstream_up: Gauge,
    plugin_calls: Family<PluginCallLabels, Counter>,
    plugin_faults: Family<PluginFaultLabels, Counter>,
    shadow_disagreements: Family<ShadowLabels, Counter>,
    plugin_latency: HistogramFamily<PluginStageLabels>,
    plugin_breaker: Family<PluginLabels, Gauge>,
    generation: Gauge,
    reloads: Family<OutcomeLabels, Counter>,
    kv_entries: Gauge,
    kv_bytes: Gauge,
    kv_failures: Family<KvFailureLabels, Counter>,
    tls_handshakes: Family<TlsLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("wasmtp");
        let metrics = Self {
            connections_open: Gauge::default(),
            connections: Family::default(),
            connections_refused: Family::default(),
            transactions: Family::default(),
            message_size: size_histogram(),
            upstream_replies: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram),
            upstream_up: Gauge::default(),
            plugin_calls: Family::default(),
            plugin_faults: Family::default(),
            shadow_disagreements: Family::default(),
            plugin_latency: Family::new_with_constructor(latency_histogram),
            plugin_breaker: Family::default(),
            generation: Gauge::default(),
            reloads: Family::default(),
            kv_entries: Gauge::default(),
            kv_bytes: Gauge::default(),
            kv_failures: Family::default(),
            tls_handshakes: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register("connections_open", "Client connections open now", metrics.connections_open.clone());
        r.register("connections", "Client connections accepted, by listener mode", metrics.connections.clone());
        r.register(
            "connections_refused",
            "Client connections refused at accept, by limit",
            metrics.connections_refused.clone(),
        );
        r.register(
            "transactions",
            "Mail transactions by how they ended (delivered, tempfailed, rejected, abandoned, reset)",
            metrics.transactions.clone(),
        );
        r.register_with_unit(
            "message_size",
            "Size of messages received to their end",
            Unit::Bytes,
            metrics.message_size.clone(),
        );
        r.register(
            "upstream_replies",
            "Upstream replies by stage and class (2xx, 3xx, 4xx, 5xx, or error when none came)",
            metrics.upstream_replies.clone(),
        );
        r.register_with_unit(
            "upstream_latency",
            "Time from a command to the upstream's reply, by stage",
            Unit::Seconds,
            metrics.upstream_latency.clone(),
        );
        r.register(
            "upstream_up",
            "1 when the upstream answered its last connection attempt",
            metrics.upstream_up.clone(),
        );
        r.register(
            "plugin_calls",
            "Plugin calls by plugin, stage and verdict (fault when the call failed, bypassed while its breaker is open)",
            metrics.plugin_calls.clone(),
        );
        r.register("plugin_faults", "Plugin faults by plugin, stage and kind", metrics.plugin_faults.clone());
        r.register(
            "plugin_shadow_disagreements",
            "Stages where a shadow plugin's verdict differed from the live chain's outcome, by plugin, stage, live outcome and shadow verdict",
            metrics.shadow_disagreements.clone(),
        );
        r.register_with_unit(
            "plugin_call_duration",
            "Wall-clock time of plugin calls, instantiation included",
            Unit::Seconds,
            metrics.plugin_latency.clone(),
        );
        r.register(
            "plugin_breaker_state",
            "Circuit breaker of each plugin: 0 closed, 1 open, 2 half-open",
            metrics.plugin_breaker.clone(),
        );
        r.register(
            "config_generation",
            "Configuration generation new sessions get (1 at start, +1 per reload)",
            metrics.generation.clone(),
        );
        r.register("reloads", "Reloads by outcome (ok, failed)", metrics.reloads.clone());
        r.register("kv_entries", "Entries in the plugins' key-value store", metrics.kv_entries.clone());
        r.register_with_unit(
            "kv_size",
            "Keys and values in the plugins' key-value store",
            Unit::Bytes,
            metrics.kv_bytes.clone(),
        );
        r.register(
            "kv_failures",
            "Key-value operations that did not happen, by plugin, operation and reason (unavailable, quota)",
            metrics.kv_failures.clone(),
        );
        r.register(
            "tls_handshakes",
            "Client TLS handshakes by kind (starttls, implicit) and result",
            metrics.tls_handshakes.clone(),
        );
        Self { registry, ..metrics }
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 << 10);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// A connection accepted on a listener of `mode`; it counts as open until the guard drops.
    pub fn connection_opened(self: &Arc<Self>, mode: &'static str) -> OpenConnection {
        self.connections.get_or_create(&ListenerLabels { mode }).inc();
        self.connections_open.inc();
        OpenConnection(self.clone())
    }

    /// A connection refused at accept: `reason` names the limit.
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A transaction ended; `size` for a message received to its end.
    pub fn transaction(&self, outcome: &'static str, size: Option<u64>) {
        self.transactions.get_or_create(&OutcomeLabels { outcome }).inc();
        if let Some(size) = size {
            self.message_size.observe(size as f64);
        }
    }

    /// An upstream command answered with `code` (`None`: no reply, the upstream failed).
    pub fn upstream_reply(&self, stage: &'static str, code: Option<u16>, elapsed: Duration) {
        let class = match code {
            Some(200..=299) => "2xx",
            Some(300..=399) => "3xx",
            Some(400..=499) => "4xx",
            Some(_) => "5xx",
            None => "error",
        };
        self.upstream_replies.get_or_create(&UpstreamReplyLabels { stage, class }).inc();
        self.upstream_latency.get_or_create(&StageLabels { stage }).observe(elapsed.as_secs_f64());
    }

    pub fn set_upstream_up(&self, up: bool) {
        self.upstream_up.set(i64::from(up));
    }

    /// A plugin call that returned `verdict` (or `"fault"`) after `elapsed`.
    pub fn plugin_call(&self, plugin: &Arc<str>, stage: &'static str, verdict: &'static str, elapsed: Duration) {
        let plugin = plugin.clone();
        self.plugin_latency
            .get_or_create(&PluginStageLabels { plugin: plugin.clone(), stage })
            .observe(elapsed.as_secs_f64());
        self.plugin_calls.get_or_create(&PluginCallLabels { plugin, stage, verdict }).inc();
    }

    /// A plugin call not made because the plugin's breaker is open.
    pub fn plugin_bypassed(&self, plugin: &Arc<str>, stage: &'static str) {
        self.plugin_calls.get_or_create(&PluginCallLabels { plugin: plugin.clone(), stage, verdict: "bypassed" }).inc();
    }

    pub fn plugin_fault(&self, plugin: &Arc<str>, stage: &'static str, fault: &'static str) {
        self.plugin_faults.get_or_create(&PluginFaultLabels { plugin: plugin.clone(), stage, fault }).inc();
    }

    pub fn shadow_disagreement(
        &self,
        plugin: &Arc<str>,
        stage: &'static str,
        live: &'static str,
        shadow: &'static str,
    ) {
        self.shadow_disagreements.get_or_create(&ShadowLabels { plugin: plugin.clone(), stage, live, shadow }).inc();
    }

    pub fn set_breaker(&self, plugin: &Arc<str>, state: BreakerGauge) {
        self.plugin_breaker.get_or_create(&PluginLabels { plugin: plugin.clone() }).set(state as i64);
    }

    /// A reload attempt; `generation` is the one new sessions get afterwards.
    pub fn reload(&self, ok: bool, generation: u64) {
        self.reloads.get_or_create(&OutcomeLabels { outcome: if ok { "ok" } else { "failed" } }).inc();
        self.set_generation(generation);
    }

    pub fn set_generation(&self, generation: u64) {
        self.generation.set(generation as i64);
    }

    pub fn set_kv(&self, entries: usize, bytes: usize) {
        self.kv_entries.set(entries as i64);
        self.kv_bytes.set(bytes as i64);
    }

    /// A key-value operation the store refused or could not answer.
    pub fn kv_failure(&self, plugin: &str, operation: &'static str, reason: &'static str) {
        self.kv_failures.get_or_create(&KvFailureLabels { plugin: plugin.to_string(), operation, reason }).inc();
    }

    /// A client TLS handshake: `kind` is `starttls` or `implicit`.
    pub fn tls_handshake(&self, kind: &'static str, ok: bool) {
        self.tls_handshakes.get_or_create(&TlsLabels { kind, result: if ok { "ok" } else { "failed" } }).inc();
    }
}

/// An open client connection, counted in `connections_open` until dropped.
#[derive(Debug)]
pub struct OpenConnection(Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_and_labels() {
        let metrics = Arc::new(Metrics::new());
        let open = metrics.connection_opened("smtp");
        metrics.plugin_call(&Arc::from("guard"), "data", "reject", Duration::from_micros(80));
        metrics.upstream_reply("rcpt", Some(550), Duration::from_millis(2));
        metrics.transaction("delivered", Some(5000));
        let text = metrics.encode();
        assert!(text.contains("wasmtp_connections_open 1\n"), "{text}");
        assert!(text.contains("wasmtp_connections_total{mode=\"smtp\"} 1\n"), "{text}");
        assert!(
            text.contains("wasmtp_plugin_calls_total{plugin=\"guard\",stage=\"data\",verdict=\"reject\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("wasmtp_upstream_replies_total{stage=\"rcpt\",class=\"5xx\"} 1\n"), "{text}");
        assert!(text.contains("wasmtp_transactions_total{outcome=\"delivered\"} 1\n"), "{text}");
        assert!(text.contains("wasmtp_message_size_bytes_count 1\n"), "{text}");
        drop(open);
        assert!(metrics.encode().contains("wasmtp_connections_open 0\n"));
    }
}
