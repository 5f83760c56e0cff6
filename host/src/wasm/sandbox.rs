//! One plugin call in its own sandbox: a fresh `Store` with memory limits, an epoch deadline,
//! a bounded stderr and the call's host services; instantiate, call, drop. A trap poisons only
//! that Store, which is dropped with everything in it.
//!
//! Failures are classified the way they were measured on wasmtime 48: `Trap::Interrupt` is a
//! timeout; a denied memory growth (recorded by our limiter, because a Rust OOM otherwise looks
//! like a panic) is a memory fault; a refused host call is the plugin's fault (or the host's,
//! for a full store); any other trap is a crash; anything else came from the host side.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::engine::PluginEngine;
use super::v0_1;
use crate::filter::api::{Call, Manifest};
use crate::filter::host::{HostCallError, HostContext};
use crate::filter::sandbox::CallResult;
use crate::filter::{Fault, FaultKind, Sandbox};

/// Guest stderr kept per call.
const STDERR_CAPACITY: usize = 4 << 10;

/// Wraps `StoreLimits` to remember that it refused a memory growth.
struct Limiter {
    limits: StoreLimits,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.table_growing(current, desired, maximum)?;
        self.denied |= !allowed;
        Ok(allowed)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// Everything a Store holds for one call.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limiter: Limiter,
    pub host: HostContext,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Guest stderr that keeps the first few KiB and silently drops the rest (wasmtime's own
/// memory pipe traps when full, which would turn a chatty plugin into a crashing one).
#[derive(Clone, Default)]
struct BoundedStderr(Arc<Mutex<Vec<u8>>>);

impl BoundedStderr {
    fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).trim_end().to_string()
    }
}

impl IsTerminal for BoundedStderr {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for BoundedStderr {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for BoundedStderr {
    async fn ready(&mut self) {}
}

impl OutputStream for BoundedStderr {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        let mut buf = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let room = STDERR_CAPACITY.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 << 10)
    }
}

/// One loaded plugin component, ready to be instantiated for each call.
pub struct WasmSandbox {
    engine: Arc<PluginEngine>,
    pre: v0_1::FilterPre<CallState>,
    /// The plugin's memory limit in octets.
    memory: usize,
    /// This plugin's share of the engine's instance pool.
    slots: tokio::sync::Semaphore,
}

impl WasmSandbox {
    pub fn new(engine: Arc<PluginEngine>, pre: v0_1::FilterPre<CallState>, memory: usize, slots: u32) -> Self {
        Self { engine, pre, memory, slots: tokio::sync::Semaphore::new(slots as usize) }
    }

    /// Reads the plugin's manifest in a sandbox of its own.
    pub async fn manifest(&self, host: HostContext, budget: Duration) -> Result<Manifest, Fault> {
        let mut sandbox = match self.open(host, budget).await {
            Ok(sandbox) => sandbox,
            Err((fault, _)) => return Err(fault),
        };
        let result = v0_1::manifest(&mut sandbox.store, &self.pre).await;
        sandbox.close(result).0
    }

    /// A fresh Store for one call within `budget`, once a slot of the instance pool is free.
    async fn open(&self, host: HostContext, budget: Duration) -> Result<OpenSandbox<'_>, (Fault, HostContext)> {
        let permit = match tokio::time::timeout(budget, self.slots.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => return Err((Fault::new(FaultKind::Busy, "no sandbox slot free"), host)),
        };
        let stderr = BoundedStderr::default();
        let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
        let limits = StoreLimitsBuilder::new().memory_size(self.memory).instances(32).tables(32).memories(8).build();
        let state = CallState { wasi, table: ResourceTable::new(), limiter: Limiter { limits, denied: false }, host };
        let mut store = Store::new(&self.engine.engine, state);
        store.limiter(|s| &mut s.limiter);
        let started = Instant::now();
        // The deadline covers instantiation too. Every tick the callback yields to the executor
        // (a spinning plugin never blocks other sessions), and traps once the budget is spent.
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if started.elapsed() >= budget { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
        });
        Ok(OpenSandbox { store, stderr, _permit: permit })
    }
}

/// A Store ready for one call, holding its slot of the instance pool until it is closed.
struct OpenSandbox<'a> {
    store: Store<CallState>,
    stderr: BoundedStderr,
    _permit: tokio::sync::SemaphorePermit<'a>,
}

impl OpenSandbox<'_> {
    /// Drops the Store (and whatever the call left in it) and classifies a failure.
    fn close<T>(self, result: wasmtime::Result<T>) -> (Result<T, Fault>, HostContext) {
        let denied = self.store.data().limiter.denied;
        let state = self.store.into_data();
        (result.map_err(|err| classify(&err, denied, self.stderr.contents())), state.host)
    }
}

impl Sandbox for WasmSandbox {
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        host: HostContext,
        budget: Duration,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>> {
        Box::pin(async move {
            let mut sandbox = match self.open(host, budget).await {
                Ok(sandbox) => sandbox,
                Err((fault, host)) => return (Err(fault), host),
            };
            let result = v0_1::call(&mut sandbox.store, &self.pre, &call).await;
            sandbox.close(result)
        })
    }
}

fn classify(err: &wasmtime::Error, memory_denied: bool, stderr: String) -> Fault {
    let trap = err.downcast_ref::<Trap>().copied();
    let host_call = err.downcast_ref::<HostCallError>();
    let (kind, detail) = match (trap, host_call) {
        (Some(Trap::Interrupt), _) => (FaultKind::Timeout, "time limit exceeded".to_string()),
        _ if memory_denied => (FaultKind::Memory, "memory limit exceeded".to_string()),
        (_, Some(refused)) if refused.is_plugin_fault() => (FaultKind::HostCallBudget, refused.to_string()),
        (_, Some(refused)) => (FaultKind::Host, refused.to_string()),
        (Some(Trap::StackOverflow), _) => (FaultKind::Crash, "stack overflow".to_string()),
        (Some(Trap::UnreachableCodeReached), _) if stderr.contains("panicked") => {
            (FaultKind::Crash, "panic".to_string())
        }
        (Some(trap), _) => (FaultKind::Crash, trap.to_string()),
        (None, None) => (FaultKind::Host, format!("{:#}", err.root_cause())),
    };
    Fault { kind, detail, stderr }
}
