//! Filter plugins: WebAssembly components run in a sandbox at each SMTP stage.
//!
//! - [`engine`]: the wasmtime engine, epoch ticker, minimal WASI linker, plugin preparation;
//! - [`cache`]: the on-disk cache of compiled plugins;
//! - [`bindings`]: the generated bindings of `wit/filter.wit`;
//! - [`sandbox`]: one call in a fresh Store with limits, and fault classification;
//! - [`chain`]: running the plugins of a stage in order, merging verdicts, applying edits;
//! - [`validate`]: the checks on everything a plugin returns;
//! - [`breaker`]: the per-plugin circuit breaker;
//! - [`kv`]: the shared key-value store behind the host imports.

pub mod bindings;
pub mod breaker;
pub mod cache;
pub mod chain;
pub mod engine;
pub mod kv;
pub mod sandbox;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::bindings::{FilterPre, Manifest, Stage};
use self::breaker::Breaker;
use self::cache::{CompileCache, Origin};
use self::chain::{Outcome, PluginSession, StageState};
use self::engine::PluginEngine;
use self::kv::KvStore;
use self::sandbox::{Answer, Call, CallState, HostContext, SandboxSpec};
use crate::config::{BreakerConfig, Config, OnError, PluginConfig, PluginLimits};

/// Time allowed for a plugin's `manifest()` at load.
const MANIFEST_BUDGET: Duration = Duration::from_secs(1);

/// One loaded plugin.
pub struct Plugin {
    pub name: Arc<str>,
    pub manifest: Manifest,
    pre: FilterPre<CallState>,
    config_json: Arc<str>,
    pub on_error: OnError,
    pub limits: PluginLimits,
    breaker: Breaker,
    breaker_config: BreakerConfig,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

/// The configured plugins, compiled and ready; shared by all sessions.
#[derive(Debug)]
pub struct Plugins {
    engine: Option<PluginEngine>,
    list: Vec<Plugin>,
    kv: Arc<KvStore>,
}

/// A manifest in words: `name version: stages data,rcpt; body headers; edits add-header`.
pub fn describe(m: &Manifest) -> String {
    fn words<T: std::fmt::Debug>(items: &[T]) -> String {
        if items.is_empty() {
            return "none".into();
        }
        items.iter().map(|i| kebab(&format!("{i:?}"))).collect::<Vec<_>>().join(",")
    }
    fn kebab(debug: &str) -> String {
        let name = debug.rsplit("::").next().unwrap_or(debug);
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }
    format!(
        "{} {}: stages {}; body {}; edits {}",
        m.name,
        m.version,
        words(&m.stages),
        kebab(&format!("{:?}", m.body)),
        words(&m.edits)
    )
}

/// What loading reports, for logs and tests.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub name: String,
    pub origin: Origin,
    pub elapsed: Duration,
}

impl Plugins {
    /// No plugins: every stage continues.
    pub fn none() -> Self {
        Self { engine: None, list: Vec::new(), kv: Arc::new(KvStore::new()) }
    }

    /// Compiles (or loads from the compile cache) every configured plugin and reads its
    /// manifest. Any failure is an error naming the plugin: the proxy does not start with a
    /// plugin it cannot run.
    pub async fn load(config: &Config) -> anyhow::Result<(Self, Vec<LoadReport>)> {
        if config.plugins.is_empty() {
            return Ok((Self::none(), Vec::new()));
        }
        let max_memory = config.plugins.iter().map(|p| p.limits.memory.bytes()).max().unwrap_or(32 << 20);
        let engine = PluginEngine::new(config.sandbox.max_in_flight, max_memory)?;
        let cache = CompileCache::open(config.sandbox.cache_dir.as_deref());
        let mut list = Vec::new();
        let mut reports = Vec::new();
        let kv = Arc::new(KvStore::new());
        for pc in &config.plugins {
            let started = Instant::now();
            let (plugin, origin) = load_one(&engine, &cache, pc, &kv)
                .await
                .with_context(|| format!("plugin `{}` ({})", pc.name, pc.path.display()))?;
            let elapsed = started.elapsed();
            tracing::info!(
                plugin = %plugin.name,
                manifest = %describe(&plugin.manifest),
                ?origin,
                load_ms = elapsed.as_secs_f64() * 1000.0,
                "plugin loaded"
            );
            reports.push(LoadReport { name: pc.name.clone(), origin, elapsed });
            list.push(plugin);
        }
        Ok((Self { engine: Some(engine), list, kv }, reports))
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The plugins in chain order.
    pub fn list(&self) -> &[Plugin] {
        &self.list
    }

    /// Some plugin is called at `stage`.
    pub fn wants(&self, stage: Stage) -> bool {
        self.list.iter().any(|p| p.manifest.stages.contains(&stage))
    }

    /// The most body octets any data-stage plugin may see.
    pub fn max_body_needed(&self) -> usize {
        self.list
            .iter()
            .filter(|p| p.manifest.stages.contains(&Stage::Data) && p.manifest.body == bindings::BodyAccess::Full)
            .map(|p| p.limits.max_body.bytes() as usize)
            .max()
            .unwrap_or(0)
    }

    /// Some plugin may quarantine.
    pub fn may_quarantine(&self) -> bool {
        self.list.iter().any(|p| p.manifest.edits.contains(&bindings::EditKind::Quarantine))
    }

    /// Runs the plugins of one stage over `state`.
    pub async fn run<S: StageState>(&self, session: &mut PluginSession, state: &mut S) -> Outcome {
        if self.list.is_empty() {
            return Outcome::Continue;
        }
        self.run_stage(session, state).await
    }

    fn spec<'a>(&'a self, plugin: &'a Plugin) -> SandboxSpec<'a> {
        let engine = self.engine.as_ref().expect("plugins are loaded with an engine");
        SandboxSpec {
            engine: &engine.engine,
            pre: &plugin.pre,
            memory: plugin.limits.memory.bytes() as usize,
            in_flight: &engine.in_flight,
        }
    }
}

async fn load_one(
    engine: &PluginEngine,
    cache: &CompileCache,
    pc: &PluginConfig,
    kv: &Arc<KvStore>,
) -> anyhow::Result<(Plugin, Origin)> {
    let wasm = std::fs::read(&pc.path).context("cannot read the plugin file")?;
    let (pre, origin) = engine.prepare(&wasm, cache)?;
    let config_json: Arc<str> =
        serde_json::to_string(&pc.config).context("plugin config is not representable as JSON")?.into();
    let name: Arc<str> = pc.name.as_str().into();
    let host = HostContext::new(name.clone(), "load".into(), config_json.clone(), kv.clone(), HashMap::new(), 1 << 20);
    let spec = SandboxSpec {
        engine: &engine.engine,
        pre: &pre,
        memory: pc.limits.memory.bytes() as usize,
        in_flight: &engine.in_flight,
    };
    let manifest = match sandbox::run(&spec, host, MANIFEST_BUDGET, Call::Manifest).await.0 {
        Ok(Answer::Manifest(manifest)) => manifest,
        Ok(Answer::Decision(_)) => anyhow::bail!("manifest() returned a decision"),
        Err(fault) => anyhow::bail!("manifest() failed ({}): {} {}", fault.kind, fault.detail, fault.stderr),
    };
    if manifest.stages.is_empty() {
        tracing::warn!(plugin = %name, "the plugin declares no stages and will never be called");
    }
    let plugin = Plugin {
        name,
        manifest,
        pre,
        config_json,
        on_error: pc.on_error,
        limits: pc.limits.clone(),
        breaker: Breaker::new(pc.breaker.clone()),
        breaker_config: pc.breaker.clone(),
    };
    Ok((plugin, origin))
}
