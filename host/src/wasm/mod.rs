//! The WebAssembly runtime behind the filter core: plugins are components for the
//! `wasmtp:filter` world, each call in a fresh wasmtime sandbox.
//!
//! - [`engine`]: the wasmtime engine, epoch ticker and minimal WASI linker;
//! - [`cache`]: the on-disk cache of compiled plugins;
//! - [`sandbox`]: one call in a fresh Store with limits, and fault classification;
//! - [`v0_1`]: the bindings of `wasmtp:filter@0.1.0` and their conversion to the filter API.

pub mod cache;
pub mod engine;
pub mod sandbox;
pub mod v0_1;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::cache::{CompileCache, Origin};
use self::engine::{Allocation, PluginEngine};
use self::sandbox::WasmSandbox;
use crate::config::{Config, PluginConfig};
use crate::filter::host::HostContext;
use crate::filter::kv::KvStore;
use crate::filter::{Chain, Plugin};
use crate::metrics::Metrics;

/// Time allowed for a plugin's `manifest()` at load.
const MANIFEST_BUDGET: Duration = Duration::from_secs(1);

/// What loading reports, for logs and tests.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub name: String,
    pub origin: Origin,
    pub elapsed: Duration,
}

/// What a loaded chain runs on: the engine's memory allocation and each plugin's load.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub allocation: Option<Allocation>,
    pub plugins: Vec<LoadReport>,
}

/// [`load_with`] a store and metrics of the chain's own (`check-config`, tests, benchmarks).
pub async fn load(config: &Config) -> anyhow::Result<(Chain, Loaded)> {
    load_with(config, Arc::default(), Arc::default()).await
}

/// Compiles (or loads from the compile cache) every configured plugin and reads its manifest,
/// on an engine of its own (a reload's new plugins never compete with the old ones for pool
/// slots). Any failure is an error naming the plugin: the proxy does not start, or a reload
/// does not happen, with a plugin it cannot run.
pub async fn load_with(config: &Config, kv: Arc<KvStore>, metrics: Arc<Metrics>) -> anyhow::Result<(Chain, Loaded)> {
    if config.plugins.is_empty() {
        return Ok((Chain::new(Vec::new(), kv, metrics), Loaded { allocation: None, plugins: Vec::new() }));
    }
    let max_memory = config.plugins.iter().map(|p| p.limits.memory.bytes()).max().unwrap_or(32 << 20);
    let shares: Vec<u32> = config.plugins.iter().map(|p| concurrency(config, p)).collect();
    let engine = Arc::new(PluginEngine::new(shares.iter().sum(), max_memory)?);
    let cache = CompileCache::open(config.sandbox.cache_dir.as_deref());
    let mut plugins = Vec::new();
    let mut reports = Vec::new();
    for (i, (pc, share)) in config.plugins.iter().zip(shares).enumerate() {
        let started = Instant::now();
        let (plugin, origin) = load_one(&engine, &cache, pc, share, &kv)
            .await
            .with_context(|| format!("plugin `{}` (field `plugins[{i}]`, {})", pc.name, pc.path.display()))?;
        let elapsed = started.elapsed();
        tracing::info!(
            plugin = %plugin.name,
            manifest = %plugin.manifest,
            origin = origin.name(),
            load_ms = elapsed.as_secs_f64() * 1000.0,
            "plugin loaded"
        );
        reports.push(LoadReport { name: pc.name.clone(), origin, elapsed });
        plugins.push(plugin);
    }
    let loaded = Loaded { allocation: Some(engine.allocation), plugins: reports };
    Ok((Chain::new(plugins, kv, metrics), loaded))
}

/// A plugin's share of the instance pool: its own calls wait only for each other, so a slow
/// plugin can make only itself busy.
fn concurrency(config: &Config, plugin: &PluginConfig) -> u32 {
    let fair = config.sandbox.max_in_flight / config.plugins.len().max(1) as u32;
    plugin.limits.concurrency.unwrap_or(fair.max(MIN_CONCURRENCY))
}

/// The smallest default share of the instance pool.
const MIN_CONCURRENCY: u32 = 4;

async fn load_one(
    engine: &Arc<PluginEngine>,
    cache: &CompileCache,
    pc: &PluginConfig,
    concurrency: u32,
    kv: &Arc<KvStore>,
) -> anyhow::Result<(Plugin, Origin)> {
    let wasm = std::fs::read(&pc.path).context("cannot read the plugin file")?;
    let (pre, origin) = engine.prepare(&wasm, cache)?;
    let sandbox = WasmSandbox::new(engine.clone(), pre, pc.limits.memory.bytes() as usize, concurrency);
    let config_json = crate::filter::plugin_config_json(pc).context("plugin config is not representable as JSON")?;
    let host = HostContext::new(
        pc.name.as_str().into(),
        "load".into(),
        config_json.into(),
        kv.clone(),
        HashMap::new(),
        1 << 20,
    );
    let manifest = sandbox
        .manifest(host, MANIFEST_BUDGET)
        .await
        .map_err(|fault| anyhow::anyhow!("manifest() failed ({}): {} {}", fault.kind, fault.detail, fault.stderr))?;
    if manifest.stages.is_empty() {
        tracing::warn!(plugin = %pc.name, "the plugin declares no stages and will never be called");
    }
    let plugin = Plugin::new(pc, manifest, Box::new(sandbox)).context("plugin config is not representable as JSON")?;
    Ok((plugin, origin))
}
