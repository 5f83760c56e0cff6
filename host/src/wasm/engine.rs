//! The plugin engine: one wasmtime `Engine` per configuration generation, its epoch ticker
//! thread, and the deny-by-default WASI linker plugins are prepared against (compile or cache →
//! `InstancePre`).
//!
//! Recipe, measured on this machine kind: epoch interruption with a 1 ms ticker; a 512 KiB wasm
//! stack; the pooling allocator sized from the plugins themselves (each plugin's share of calls
//! in flight × the core instances, memories and tables one instantiation of it takes, counted
//! by [`super::component`]), with each plugin's own semaphore in front, so a call waits for a
//! slot of its plugin's share instead of failing; wasmtime's trimmed feature set (its defaults
//! turn on the concurrent component-model machinery, which doubles the cost of a call).
//!
//! WASI: every WASI 0.2 interface wasmtime-wasi implements is linked, because real toolchains
//! (componentize-py, componentize-js, wasi-libc) import filesystem and sockets whether or not
//! a plugin uses them, but a plugin gains no capability: no preopened directory, no
//! environment or arguments, every socket address and name lookup denied. `wasi:http` is not
//! linked at all. Measured: what is linked does not change the cost of a call.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::cache::{CompileCache, Origin};
use super::component::{self, Needs};
use super::contract::Bindings;
use super::sandbox::CallState;
use super::{v0_1, v0_2};

/// Pool slots whose memory is decommitted (madvise) together. Every decommit makes the kernel
/// flush the TLBs of every core the process runs on; one flush per 16 slots instead of one per
/// call cut the proxy's CPU per message by a sixth at c=50 (perf showed a third of its time in
/// those flushes). Up to `cores × 15` idle slots stay dirty in between, which bounds the RSS.
const DECOMMIT_BATCH: usize = 16;

/// Linear memory a pool slot keeps resident when its call ends: the pages the call wrote, up to
/// this much, are reset in place (found with Linux's `PAGEMAP_SCAN`, 6.7 and later; older
/// kernels reset the lowest this-many bytes) instead of being decommitted and faulted back in
/// by the next call. Decommits were the largest single cost of a plugin call under concurrency
/// (TLB shootdowns and refaults, bench/profile-2026-12-02.md). A call that writes more keeps
/// this much and decommits the rest, so idle slots hold at most this much each.
const KEEP_RESIDENT: usize = 4 << 20;

/// Epoch tick: the resolution of plugin time limits.
pub const TICK: Duration = Duration::from_millis(1);

/// The engine, linker and ticker shared by all plugins.
pub struct PluginEngine {
    pub engine: Engine,
    linker: Linker<CallState>,
    pub allocation: Allocation,
    _ticker: Ticker,
}

impl std::fmt::Debug for PluginEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginEngine").finish_non_exhaustive()
    }
}

/// Guard region after each linear memory. Memories are reserved at the plugins' own limit
/// rather than wasmtime's default 4 GiB, so accesses are bounds-checked explicitly; the guard
/// lets those checks ignore the static offset of loads and stores up to this size.
const MEMORY_GUARD: u64 = 2 << 20;

/// How plugin memory is allocated, for logs and `check-config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    /// Pre-reserved slots: `reserved` bytes of address space, taken at start.
    Pooling { reserved: u64 },
    /// Each call maps its own memory (when the pool's reservation did not fit).
    OnDemand,
}

impl std::fmt::Display for Allocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocation::Pooling { reserved } => {
                write!(f, "instance pool, {} of address space reserved", bytesize::ByteSize(*reserved).display().iec())
            }
            Allocation::OnDemand => f.write_str("on-demand (the instance pool's reservation did not fit)"),
        }
    }
}

/// What the instance pool must hold: each plugin's share of calls in flight and what one
/// instantiation of it takes.
#[derive(Debug, Clone, Default)]
pub struct PoolPlan {
    pub plugins: Vec<(u32, Needs)>,
    /// The largest plugin memory limit, in octets.
    pub max_memory: u64,
}

impl PoolPlan {
    fn total(&self, per_call: impl Fn(&Needs) -> u32) -> u32 {
        self.plugins.iter().map(|(share, needs)| share.saturating_mul(per_call(needs))).fold(0, u32::saturating_add)
    }

    fn largest(&self, per_call: impl Fn(&Needs) -> u32) -> u32 {
        self.plugins.iter().map(|(_, needs)| per_call(needs)).max().unwrap_or(0).max(1)
    }
}

/// wasmtime's default table size in the pool; raised for a plugin whose table starts larger.
const DEFAULT_TABLE_ELEMENTS: u64 = 20_000;

impl PluginEngine {
    /// An engine whose pool holds every plugin's share of calls at once, each call with the
    /// core instances, memories (of up to `plan.max_memory`) and tables its plugin needs.
    ///
    /// The pool reserves its address space up front: per memory of a call in flight, the
    /// largest plugin memory limit plus a guard, and per call a 1 MiB async stack — about
    /// 4.3 GiB for 64 calls of 32 MiB Rust plugins, instead of the half a terabyte wasmtime's
    /// 4 GiB default reservations would take. When even that cannot be reserved (`ulimit -v`,
    /// strict overcommit) the engine falls back to on-demand allocation, which maps each call's
    /// memory when it starts: slower (measured in `host/benches/plugins.rs`), but it runs.
    pub fn new(plan: &PoolPlan) -> anyhow::Result<Self> {
        let reservation = plan.max_memory.max(64 << 10).next_multiple_of(64 << 10);
        let calls = plan.total(|_| 1).max(1);
        let memories = plan.total(|n| n.memories).max(1);
        let table_elements = plan.plugins.iter().map(|(_, n)| n.table_elements).max().unwrap_or(0);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(calls)
            .total_core_instances(plan.total(|n| n.core_instances).max(1))
            .total_memories(memories)
            .total_tables(plan.total(|n| n.tables).max(1))
            .total_stacks(calls)
            .max_core_instances_per_component(plan.largest(|n| n.core_instances))
            .max_memories_per_component(plan.largest(|n| n.memories))
            .max_tables_per_component(plan.largest(|n| n.tables))
            // Per module, wasmtime's defaults (one each) unless a plugin's module has more:
            // larger figures make every slot bigger.
            .max_memories_per_module(plan.largest(|n| n.memories_per_module))
            .max_tables_per_module(plan.largest(|n| n.tables_per_module))
            .table_elements(table_elements.max(DEFAULT_TABLE_ELEMENTS) as usize)
            .max_memory_size(reservation as usize)
            .decommit_batch_size(DECOMMIT_BATCH)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT)
            .pagemap_scan(wasmtime::Enabled::Auto);
        let reserved = u64::from(memories) * (reservation + MEMORY_GUARD) + u64::from(calls) * (ASYNC_STACK as u64);
        let (engine, allocation) = match Engine::new(&engine_config(reservation, Some(pool))) {
            Ok(engine) => (engine, Allocation::Pooling { reserved }),
            Err(pooled) => {
                let engine = Engine::new(&engine_config(reservation, None))
                    .map_err(|e| anyhow::anyhow!("cannot create the plugin engine: {e:#}"))?;
                tracing::warn!(
                    error = %format!("{pooled:#}"),
                    wanted = %bytesize::ByteSize(reserved).display().iec(),
                    "cannot reserve address space for the plugin instance pool; \
                     allocating plugin memory on demand instead (slower calls)"
                );
                (engine, Allocation::OnDemand)
            }
        };
        let mut linker = Linker::<CallState>::new(&engine);
        link(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let ticker = Ticker::start(engine.clone());
        Ok(Self { engine, linker, allocation, _ticker: ticker })
    }

    /// Compiles (or loads from the cache) and links a plugin component. A component that
    /// imports what the host does not provide is refused with every such import listed.
    pub fn prepare(&self, wasm: &[u8], cache: &CompileCache) -> anyhow::Result<(Bindings, Origin)> {
        let (component, origin) = cache.load(&self.engine, wasm)?;
        let pre = match self.linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(err) => {
                let missing = component::missing_imports(&component, &self.engine);
                if missing.is_empty() {
                    anyhow::bail!("cannot link the plugin: {err:#}");
                }
                anyhow::bail!(
                    "the plugin imports {} interface{} this host does not provide:\n  {}",
                    missing.len(),
                    if missing.len() == 1 { "" } else { "s" },
                    missing.join("\n  ")
                );
            }
        };
        let version = component::contract_version(&component, &self.engine);
        Ok((Bindings::new(pre, version.as_deref())?, origin))
    }
}

/// Each call's async stack.
const ASYNC_STACK: usize = 1 << 20;

/// The engine settings; the same tunables with and without the pool, so compiled plugins (and
/// the compile cache) suit both.
fn engine_config(reservation: u64, pool: Option<PoolingAllocationConfig>) -> Config {
    let mut config = Config::new();
    config
        .epoch_interruption(true)
        .max_wasm_stack(512 << 10)
        .async_stack_size(ASYNC_STACK)
        .memory_reservation(reservation)
        .memory_guard_size(MEMORY_GUARD)
        .memory_reservation_for_growth(0)
        .guard_before_linear_memory(false);
    #[cfg(feature = "profiling")]
    if std::env::var_os("WASMTP_PERFMAP").is_some() {
        config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// Links WASI 0.2 (deny-by-default: the capabilities live in each call's `WasiCtx`, which has
/// none) and both released versions of the plugin contract.
fn link(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    v0_1::Filter::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    v0_2::Filter::add_to_linker::<CallState, HasSelf<CallState>>(linker, |s| s)?;
    Ok(())
}

/// The thread that advances the engine's epoch every [`TICK`]; stopped when dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(engine: Engine) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wasmtp-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
