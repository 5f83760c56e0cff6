//! One plugin call in its own sandbox: a fresh `Store` with memory limits, an epoch deadline,
//! a bounded stderr and the call's host services; instantiate, call, drop. A trap poisons only
//! that Store, which is dropped with everything in it.
//!
//! Failures are classified the way they were measured on wasmtime 48: `Trap::Interrupt` is a
//! timeout; a denied memory growth (recorded by our limiter, because a Rust OOM otherwise looks
//! like a panic) is a memory fault; a refused host call is the plugin's fault (or the host's,
//! for a full store); a trap after an interpreter printed its uncaught exception (a Python
//! traceback, a JavaScript error) is the plugin's exception, with its text; any other trap is
//! a crash; anything else came from the host side. Traps carry the guest's wasm backtrace
//! (function names; the example guests keep theirs for this).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::component::Needs;
use super::contract::Bindings;
use super::engine::PluginEngine;
use crate::filter::api::{Call, Manifest};
use crate::filter::host::{HostCallError, HostContext};
use crate::filter::sandbox::CallResult;
use crate::filter::{Fault, FaultKind, Sandbox};

/// Guest output (stderr and stdout together) kept per call.
const STDERR_CAPACITY: usize = 4 << 10;
/// Frames of a guest backtrace kept in a fault.
const BACKTRACE_FRAMES: usize = 12;

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
    bindings: Bindings,
    /// What one instantiation takes, for the Store's limits.
    needs: Needs,
    /// The plugin's memory limit in octets.
    memory: usize,
    /// This plugin's share of the engine's instance pool.
    slots: tokio::sync::Semaphore,
}

impl WasmSandbox {
    pub fn new(engine: Arc<PluginEngine>, bindings: Bindings, needs: Needs, memory: usize, slots: u32) -> Self {
        Self { engine, bindings, needs, memory, slots: tokio::sync::Semaphore::new(slots as usize) }
    }

    /// The contract version the plugin was built for.
    pub fn contract(&self) -> &'static str {
        self.bindings.version()
    }

    /// Calls the plugin's `init` with its configuration in a sandbox of its own: `Ok(Err(text))`
    /// is the plugin refusing the configuration.
    pub async fn init(&self, host: HostContext, config: &str, budget: Duration) -> Result<Result<(), String>, Fault> {
        let mut sandbox = self.open(host, budget).await.map_err(|(fault, _)| fault)?;
        let result = self.bindings.init(&mut sandbox.store, config).await;
        sandbox.close(result).0
    }

    /// Reads the plugin's manifest in a sandbox of its own.
    pub async fn manifest(&self, host: HostContext, budget: Duration) -> Result<Manifest, Fault> {
        let mut sandbox = self.open(host, budget).await.map_err(|(fault, _)| fault)?;
        let result = self.bindings.manifest(&mut sandbox.store).await;
        sandbox.close(result).0
    }

    /// A fresh Store for one call within `budget`, once a slot of the instance pool is free.
    async fn open(&self, host: HostContext, budget: Duration) -> Result<OpenSandbox<'_>, (Fault, HostContext)> {
        // A free slot is taken at once; only a call that has to wait arms a timer for it.
        let permit = match self.slots.try_acquire() {
            Ok(permit) => permit,
            Err(_) => match tokio::time::timeout(budget, self.slots.acquire()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err((Fault::new(FaultKind::Busy, "no sandbox slot free"), host)),
            },
        };
        let stderr = BoundedStderr::default();
        // No preopened directory, environment or arguments; every socket denied (the
        // builder's default address check denies too; this says it where it is decided).
        let wasi = WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .stdout(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        // The pool holds exactly what the plugin needs; the Store's own limits leave a margin
        // so that the pool, not a second count, is what a plugin runs into.
        let n = self.needs;
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.memory)
            .instances(n.core_instances as usize * 2 + 8)
            .tables(n.tables as usize + 8)
            .memories(n.memories as usize + 4)
            .build();
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
            let result = self.bindings.call(&mut sandbox.store, &call).await;
            sandbox.close(result)
        })
    }
}

fn classify(err: &wasmtime::Error, memory_denied: bool, output: String) -> Fault {
    let trap = err.downcast_ref::<Trap>().copied();
    let host_call = err.downcast_ref::<HostCallError>();
    let output = without_rust_hint(&output);
    let (kind, detail) = match (trap, host_call) {
        (Some(Trap::Interrupt), _) => (FaultKind::Timeout, "time limit exceeded".to_string()),
        _ if memory_denied => (FaultKind::Memory, "memory limit exceeded".to_string()),
        (_, Some(refused)) if refused.is_plugin_fault() => (FaultKind::HostCallBudget, refused.to_string()),
        (_, Some(refused)) => (FaultKind::Host, refused.to_string()),
        (Some(Trap::StackOverflow), _) => (FaultKind::Crash, "stack overflow".to_string()),
        (Some(Trap::UnreachableCodeReached), _) => match uncaught(&output) {
            Some(Uncaught::Panic(message)) => (FaultKind::Crash, format!("panic: {message}")),
            Some(Uncaught::Exception(text)) => (FaultKind::Exception, text),
            None => (FaultKind::Crash, Trap::UnreachableCodeReached.to_string()),
        },
        (Some(trap), _) => (FaultKind::Crash, trap.to_string()),
        (None, None) => (FaultKind::Host, format!("{:#}", err.root_cause())),
    };
    let backtrace = err.downcast_ref::<wasmtime::WasmBacktrace>().map(backtrace).unwrap_or_default();
    Fault { kind, detail, stderr: output, backtrace }
}

/// What a guest printed before it trapped on `unreachable`, as each toolchain prints it.
enum Uncaught {
    /// Rust: `thread '…' panicked at src/lib.rs:12:5:` and the message on the next line.
    Panic(String),
    /// Python (componentize-py): a traceback ending in `Kind: text`; JavaScript
    /// (componentize-js): the error's message on the line before `Stack:`.
    Exception(String),
}

fn uncaught(output: &str) -> Option<Uncaught> {
    let lines: Vec<&str> = output.lines().collect();
    // An interpreter's own runtime panics after printing the exception, so the exception
    // is looked for first.
    if let Some(at) = lines.iter().rposition(|l| l.starts_with("Traceback (most recent call last)")) {
        // Frames and source lines are indented; the exception line is not.
        let text = lines[at + 1..].iter().find(|l| !l.is_empty() && !l.starts_with(char::is_whitespace));
        return Some(Uncaught::Exception(text.copied().unwrap_or("Python exception").to_string()));
    }
    if let Some(at) = lines.iter().position(|l| l.trim_end() == "Stack:") {
        let text = lines[..at].iter().rev().find(|l| !l.trim().is_empty()).map_or("JavaScript exception", |l| l.trim());
        return Some(Uncaught::Exception(text.to_string()));
    }
    let at = lines.iter().position(|l| l.contains("panicked at "))?;
    let location = lines[at].split_once("panicked at ").map_or("", |(_, l)| l.trim().trim_end_matches(':'));
    let message = lines.get(at + 1).map_or("", |l| l.trim());
    Some(Uncaught::Panic(format!("{message} (at {location})")))
}

/// Rust's panic message tells the reader to set `RUST_BACKTRACE=1`, which a plugin cannot; the
/// host logs the guest's backtrace itself, so the hint goes.
fn without_rust_hint(output: &str) -> String {
    output.lines().filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE=1`")).collect::<Vec<_>>().join("\n")
}

/// The innermost frames of a guest backtrace, `module!function` (Rust names demangled, without
/// their hash; the code index when the guest carries no names), innermost first. The frames of
/// Rust's panic and abort machinery on top are left out: the frame that panicked is the news.
fn backtrace(trace: &wasmtime::WasmBacktrace) -> String {
    let frames: Vec<String> = trace
        .frames()
        .iter()
        .map(|frame| {
            let module = frame.module().name().unwrap_or("plugin");
            match frame.func_name() {
                Some(name) => format!("{module}!{:#}", rustc_demangle::demangle(name)),
                None => format!("{module}!<wasm function {}>", frame.func_index()),
            }
        })
        .collect();
    let machinery = frames.iter().take_while(|f| is_panic_machinery(f)).count();
    let frames = if machinery < frames.len() { &frames[machinery..] } else { &frames[..] };
    let mut shown = frames.iter().take(BACKTRACE_FRAMES).cloned().collect::<Vec<_>>();
    if frames.len() > BACKTRACE_FRAMES {
        shown.push(format!("… {} more", frames.len() - BACKTRACE_FRAMES));
    }
    shown.join(" <- ")
}

/// A frame of the standard library's panic and abort path.
fn is_panic_machinery(frame: &str) -> bool {
    let function = frame.split_once('!').map_or(frame, |(_, f)| f);
    ["abort", "std::", "core::panicking", "__rustc::", "rust_begin_unwind", "__rust_"]
        .iter()
        .any(|prefix| function.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_guests_print_when_they_die() {
        let rust = "thread '<unnamed>' panicked at src/lib.rs:170:18:\nhostile plugin panicked on purpose\n\
                    note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace";
        let clean = without_rust_hint(rust);
        assert!(!clean.contains("RUST_BACKTRACE"));
        assert!(
            matches!(uncaught(&clean), Some(Uncaught::Panic(m)) if m == "hostile plugin panicked on purpose (at src/lib.rs:170:18)")
        );
        // As componentize-py 0.25 and componentize-js 0.23 print them.
        let python = "Traceback (most recent call last):\n  File \"/0/app.py\", line 63, in on_data\n\
                      RuntimeError: probe exception: boom\n\nthread '<unnamed>' (1) panicked at \
                      runtime/src/lib.rs:1280:25:\nPython function threw an unexpected exception\nstack backtrace:";
        assert!(matches!(uncaught(python), Some(Uncaught::Exception(t)) if t == "RuntimeError: probe exception: boom"));
        let js = "probe exception: boom\nStack:\n  onData@probe/plugin.js:42:33\n\n\
                  Redirecting call to abort() to mozalloc_abort";
        assert!(matches!(uncaught(js), Some(Uncaught::Exception(t)) if t == "probe exception: boom"));
        assert!(uncaught("just some output").is_none());
    }
}
