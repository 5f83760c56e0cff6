//! The WebAssembly runtime behind the filter core: plugins are components for the
//! `wasmtp:filter` world, each call in a fresh wasmtime sandbox.
//!
//! - [`component`]: what a component needs from the pool, and the imports the host lacks;
//! - [`engine`]: the wasmtime engine, epoch ticker and deny-by-default WASI linker;
//! - [`cache`]: the on-disk cache of compiled plugins;
//! - [`sandbox`]: one call in a fresh Store with limits, and fault classification;
//! - [`contract`]: the contract version a plugin was built for, and its calls;
//! - [`borrowed`]: the message record lowered from the host's data without copying it;
//! - [`v0_1`], [`v0_2`]: the bindings of each released `wasmtp:filter` and their conversion
//!   to the filter API, with what they share in [`shared`].

mod borrowed;
pub mod cache;
pub mod component;
pub mod contract;
pub mod engine;
pub mod sandbox;
mod shared;
pub mod v0_1;
pub mod v0_2;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::cache::{CompileCache, Origin};
use self::component::Needs;
use self::engine::{Allocation, PluginEngine, PoolPlan};
use self::sandbox::WasmSandbox;
use crate::config::{Config, PluginConfig};
use crate::filter::host::HostContext;
use crate::filter::kv::Kv;
use crate::filter::{Chain, Plugin};
use crate::metrics::Metrics;

/// Time allowed for a plugin's `init` and `manifest` at load each; generous, because an
/// interpreted guest's first call may warm caches.
const LOAD_CALL_BUDGET: Duration = Duration::from_secs(5);

/// What loading reports, for logs and tests.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub name: String,
    pub origin: Origin,
    pub elapsed: Duration,
    /// The contract version the plugin was built for.
    pub contract: &'static str,
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

/// Compiles (or loads from the compile cache) every configured plugin, checks its configuration
/// with its `init` and reads its manifest, on an engine of its own (a reload's new plugins never
/// compete with the old ones for pool slots), whose pool is sized from what the plugins need.
/// Any failure is an error naming the plugin: the proxy does not start, or a reload does not
/// happen, with a plugin it cannot run.
pub async fn load_with(config: &Config, kv: Arc<Kv>, metrics: Arc<Metrics>) -> anyhow::Result<(Chain, Loaded)> {
    if config.plugins.is_empty() {
        return Ok((Chain::new(Vec::new(), kv, metrics), Loaded { allocation: None, plugins: Vec::new() }));
    }
    let mut plan = PoolPlan::default();
    let mut files = Vec::new();
    for (i, pc) in config.plugins.iter().enumerate() {
        let context = || which_plugin(i, pc);
        let wasm = std::fs::read(&pc.path).context("cannot read the plugin file").with_context(context)?;
        let needs = Needs::of(&wasm).with_context(context)?;
        let memory = pc.limits.memory.bytes();
        if needs.initial_memory > memory {
            return Err(anyhow::anyhow!(
                "the plugin's memory starts at {}, more than its `limits.memory` of {}; raise `limits.memory` \
                 (interpreted guests need more: Python about 13 MiB, JavaScript about 9 MiB, plus their working set)",
                bytesize::ByteSize(needs.initial_memory).display().iec(),
                bytesize::ByteSize(memory).display().iec(),
            ))
            .with_context(context);
        }
        plan.plugins.push((concurrency(config, pc), needs));
        plan.max_memory = plan.max_memory.max(memory);
        files.push(wasm);
    }
    let engine = Arc::new(PluginEngine::new(&plan)?);
    let cache = CompileCache::open(config.sandbox.cache_dir.as_deref());
    let mut plugins = Vec::new();
    let mut reports = Vec::new();
    for (i, ((pc, wasm), (share, needs))) in config.plugins.iter().zip(&files).zip(&plan.plugins).enumerate() {
        let started = Instant::now();
        let (plugin, origin, contract) =
            load_one(&engine, &cache, pc, wasm, *share, *needs, &kv).await.with_context(|| which_plugin(i, pc))?;
        let elapsed = started.elapsed();
        tracing::info!(
            plugin = %plugin.name,
            manifest = %plugin.manifest,
            contract,
            origin = origin.name(),
            load_ms = elapsed.as_secs_f64() * 1000.0,
            core_instances = needs.core_instances,
            memories = needs.memories,
            "plugin loaded"
        );
        reports.push(LoadReport { name: pc.name.clone(), origin, elapsed, contract });
        plugins.push(plugin);
    }
    let loaded = Loaded { allocation: Some(engine.allocation), plugins: reports };
    Ok((Chain::new(plugins, kv, metrics), loaded))
}

/// How load errors name a plugin: its name, its field in the configuration and its file.
fn which_plugin(index: usize, plugin: &PluginConfig) -> String {
    format!("plugin `{}` (field `plugins[{index}]`, {})", plugin.name, plugin.path.display())
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
    wasm: &[u8],
    concurrency: u32,
    needs: Needs,
    kv: &Arc<Kv>,
) -> anyhow::Result<(Plugin, Origin, &'static str)> {
    let (bindings, origin) = engine.prepare(wasm, cache)?;
    let sandbox = WasmSandbox::new(engine.clone(), bindings, needs, pc.limits.memory.bytes() as usize, concurrency);
    let contract = sandbox.contract();
    let config_json = crate::filter::plugin_config_json(pc).context("plugin config is not representable as JSON")?;
    let host = || {
        HostContext::new(
            pc.name.as_str().into(),
            "load".into(),
            config_json.as_str().into(),
            kv.clone(),
            HashMap::new(),
            1 << 20,
        )
    };
    let failed = |call: &str, fault: crate::filter::Fault| {
        let mut text = format!("{call} failed ({}): {}", fault.kind, fault.detail);
        for (what, value) in [("output", &fault.stderr), ("backtrace", &fault.backtrace)] {
            if !value.is_empty() {
                text.push_str(&format!("\n  {what}: {}", value.replace('\n', "\n    ")));
            }
        }
        anyhow::anyhow!(text)
    };
    match sandbox.init(host(), &config_json, LOAD_CALL_BUDGET).await {
        Ok(Ok(())) => {}
        Ok(Err(refusal)) => anyhow::bail!("the plugin refused its configuration: {refusal}"),
        Err(fault) => return Err(failed("init", fault)),
    }
    let manifest = sandbox.manifest(host(), LOAD_CALL_BUDGET).await.map_err(|fault| failed("manifest()", fault))?;
    if manifest.stages.is_empty() {
        tracing::warn!(plugin = %pc.name, "the plugin declares no stages and will never be called");
    }
    let plugin = Plugin::new(pc, manifest, Box::new(sandbox)).context("plugin config is not representable as JSON")?;
    Ok((plugin, origin, contract))
}
