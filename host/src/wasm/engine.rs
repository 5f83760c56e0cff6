//! The plugin engine: one wasmtime `Engine` per process, its epoch ticker thread, and the minimal
//! WASI linker plugins are prepared against (compile or cache → `InstancePre`).
//!
//! Recipe, measured on this machine kind: epoch interruption with a 1 ms ticker; a 512 KiB wasm
//! stack; the pooling allocator sized to plugin calls in flight (each plugin's own semaphore in
//! front, so a call waits for a slot of its plugin's share instead of failing); wasmtime's trimmed feature set (its
//! defaults turn on the concurrent component-model machinery, which doubles the cost of a
//! call). Plugins get only `wasi:io`, `wasi:cli`, `wasi:clocks` and `wasi:random`, with no
//! environment, arguments, files or sockets; a plugin importing anything else fails to load.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use wasmtime::component::{HasData, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
use wasmtime_wasi::{WasiView, p2::bindings as wasi};

use super::cache::{CompileCache, Origin};
use super::sandbox::CallState;
use super::v0_1::{Filter, FilterPre};

/// Pool slots whose memory is decommitted (madvise) together. Every decommit makes the kernel
/// flush the TLBs of every core the process runs on; one flush per 16 slots instead of one per
/// call cut the proxy's CPU per message by a sixth at c=50 (perf showed a third of its time in
/// those flushes). Up to `cores × 15` idle slots stay dirty in between, which bounds the RSS.
const DECOMMIT_BATCH: usize = 16;

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

impl PluginEngine {
    /// `max_in_flight` calls may run at once (the plugins' shares together), each with up to
    /// `max_memory` bytes of memory.
    ///
    /// The pool reserves its address space up front: per call in flight, two linear memories of
    /// `max_memory` plus a guard, a 1 MiB async stack and a few tables — about 4.3 GiB for 64
    /// calls of 32 MiB plugins, instead of the half a terabyte wasmtime's 4 GiB default
    /// reservations would take. When even that cannot be reserved (`ulimit -v`, strict
    /// overcommit) the engine falls back to on-demand allocation, which maps each call's memory
    /// when it starts: slower (measured in `host/benches/plugins.rs`), but it runs.
    pub fn new(max_in_flight: u32, max_memory: u64) -> anyhow::Result<Self> {
        let reservation = max_memory.max(64 << 10).next_multiple_of(64 << 10);
        let mut pool = PoolingAllocationConfig::default();
        // A wasm32-wasip2 Rust component uses several core instances (main module, adapters,
        // shims) and a few tables and memories per component instance.
        pool.total_component_instances(max_in_flight)
            .total_core_instances(max_in_flight * 8)
            .total_memories(max_in_flight * 2)
            .total_tables(max_in_flight * 4)
            .total_stacks(max_in_flight)
            .max_memory_size(reservation as usize)
            .decommit_batch_size(DECOMMIT_BATCH);
        let memories = u64::from(max_in_flight) * 2;
        let reserved = memories * (reservation + MEMORY_GUARD) + u64::from(max_in_flight) * (ASYNC_STACK as u64);
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
        link_minimal_wasi(&mut linker).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Filter::add_to_linker::<CallState, HasSelf<CallState>>(&mut linker, |s| s)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let ticker = Ticker::start(engine.clone());
        Ok(Self { engine, linker, allocation, _ticker: ticker })
    }

    /// Compiles (or loads from the cache) and links a plugin component.
    pub fn prepare(&self, wasm: &[u8], cache: &CompileCache) -> anyhow::Result<(FilterPre<CallState>, Origin)> {
        let (component, origin) = cache.load(&self.engine, wasm)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let pre = FilterPre::new(pre)
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .context("the component does not export the wasmtp:filter world")?;
        Ok((pre, origin))
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
    if let Some(pool) = pool {
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    config
}

/// `wasi:io` bindings work on the resource table alone.
struct HasIo;

impl HasData for HasIo {
    type Data<'a> = &'a mut ResourceTable;
}

/// Links the WASI interfaces a std Rust guest imports and nothing more: no filesystem, no
/// sockets. Measured: what is linked does not change the cost of a call.
fn link_minimal_wasi(l: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_io::bindings::wasi::io;
    io::error::add_to_linker::<CallState, HasIo>(l, |t| t.ctx().table)?;
    io::poll::add_to_linker::<CallState, HasIo>(l, |t| t.ctx().table)?;
    io::streams::add_to_linker::<CallState, HasIo>(l, |t| t.ctx().table)?;
    wasi::cli::exit::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::environment::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::stdin::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::stdout::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::stderr::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::terminal_input::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::terminal_output::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::terminal_stdin::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::terminal_stdout::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::cli::terminal_stderr::add_to_linker::<CallState, WasiCli>(l, CallState::cli)?;
    wasi::clocks::wall_clock::add_to_linker::<CallState, WasiClocks>(l, CallState::clocks)?;
    wasi::clocks::monotonic_clock::add_to_linker::<CallState, WasiClocks>(l, CallState::clocks)?;
    wasi::random::random::add_to_linker::<CallState, WasiRandom>(l, CallState::random)?;
    wasi::random::insecure::add_to_linker::<CallState, WasiRandom>(l, CallState::random)?;
    wasi::random::insecure_seed::add_to_linker::<CallState, WasiRandom>(l, CallState::random)?;
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
