//! One plugin call in its own sandbox: a fresh `Store` with memory limits, an epoch deadline,
//! a bounded stderr and a host-call budget; instantiate, call, drop. A trap poisons only that
//! Store, which is dropped with everything in it (DESIGN §2.3, §4a).
//!
//! Failures are classified the way they were measured on wasmtime 48
//! (../shared/notes/wasmtime-48-measured.md §5): `Trap::Interrupt` is a timeout; a denied
//! memory growth (recorded by our limiter, because a Rust OOM otherwise looks like a panic) is
//! a memory fault; any other trap is a crash; an error that is not a trap came from the host
//! side (a host-call budget overrun, for instance).

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, StoreLimits, StoreLimitsBuilder, Trap, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{self, Connection, Decision, Envelope, Manifest, Message};
use super::kv::{self, KvStore};

/// Guest stderr kept per call.
const STDERR_CAPACITY: usize = 4 << 10;
/// Most host calls in one plugin call.
const MAX_HOST_CALLS: u32 = 10_000;

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The call ran past its time limit.
    Timeout,
    /// The plugin tried to grow its memory past its limit.
    Memory,
    /// A trap: panic, stack overflow, out-of-bounds access, unreachable.
    Crash,
    /// An error raised by the host while serving the plugin (e.g. the host-call budget).
    Host,
    /// The plugin answered, but the answer breaks the contract.
    Invalid,
    /// No sandbox slot became free within the call's time limit.
    Busy,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Crash => "crash",
            FaultKind::Host => "host-error",
            FaultKind::Invalid => "invalid-answer",
            FaultKind::Busy => "busy",
        })
    }
}

/// A failed call: what happened, the detail, and what the plugin wrote to stderr.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail: String,
    pub stderr: String,
}

impl Fault {
    pub fn invalid(detail: impl Into<String>) -> Self {
        Self { kind: FaultKind::Invalid, detail: detail.into(), stderr: String::new() }
    }
}

/// Host-side state a plugin call may read and change through the `host` imports.
#[derive(Debug)]
pub struct HostContext {
    pub plugin: Arc<str>,
    pub session: Arc<str>,
    pub config_json: Arc<str>,
    pub kv: Arc<KvStore>,
    /// The plugin's notes as visible to this call; writes land here too.
    pub notes: HashMap<String, String>,
    /// Notes written by this call, applied by the caller only if the call succeeds.
    pub note_writes: Vec<(String, String)>,
    /// Octets still allowed through host calls in this call.
    pub data_budget: usize,
    calls: u32,
}

impl HostContext {
    pub fn new(
        plugin: Arc<str>,
        session: Arc<str>,
        config_json: Arc<str>,
        kv: Arc<KvStore>,
        notes: HashMap<String, String>,
        data_budget: usize,
    ) -> Self {
        Self { plugin, session, config_json, kv, notes, note_writes: Vec::new(), data_budget, calls: 0 }
    }

    /// Charges one host call moving `bytes`; an overrun traps the call.
    fn charge(&mut self, bytes: usize) -> wasmtime::Result<()> {
        self.calls += 1;
        if self.calls > MAX_HOST_CALLS {
            wasmtime::bail!("plugin made more than {MAX_HOST_CALLS} host calls in one call");
        }
        self.data_budget = self
            .data_budget
            .checked_sub(bytes)
            .ok_or_else(|| wasmtime::format_err!("plugin exceeded its host-call data budget"))?;
        Ok(())
    }

    fn check_key(key: &str) -> wasmtime::Result<()> {
        if key.len() > kv::MAX_KEY {
            wasmtime::bail!("key longer than {} octets", kv::MAX_KEY);
        }
        Ok(())
    }
}

impl bindings::TypesHost for CallState {}

impl bindings::HostImports for CallState {
    fn log(&mut self, level: bindings::Level, message: String) -> wasmtime::Result<()> {
        self.host.charge(message.len())?;
        let message: String = message.chars().take(2000).map(|c| if c.is_control() { ' ' } else { c }).collect();
        let (plugin, session) = (&*self.host.plugin, &*self.host.session);
        match level {
            bindings::Level::Trace => tracing::trace!(plugin, session, "{message}"),
            bindings::Level::Debug => tracing::debug!(plugin, session, "{message}"),
            bindings::Level::Info => tracing::info!(plugin, session, "{message}"),
            bindings::Level::Warn => tracing::warn!(plugin, session, "{message}"),
            bindings::Level::Error => tracing::error!(plugin, session, "{message}"),
        }
        Ok(())
    }

    fn config(&mut self) -> wasmtime::Result<String> {
        self.host.charge(self.host.config_json.len())?;
        Ok(self.host.config_json.to_string())
    }

    fn notes_get(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        self.host.charge(key.len())?;
        let value = self.host.notes.get(&key).cloned();
        self.host.charge(value.as_ref().map_or(0, String::len))?;
        Ok(value)
    }

    fn notes_set(&mut self, key: String, value: String) -> wasmtime::Result<()> {
        self.host.charge(key.len() + value.len())?;
        HostContext::check_key(&key)?;
        if value.len() > kv::MAX_VALUE {
            wasmtime::bail!("note larger than {} octets", kv::MAX_VALUE);
        }
        self.host.notes.insert(key.clone(), value.clone());
        self.host.note_writes.push((key, value));
        Ok(())
    }

    fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.host.charge(key.len())?;
        let value = self.host.kv.get(&self.host.plugin, &key);
        self.host.charge(value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> wasmtime::Result<()> {
        self.host.charge(key.len() + value.len())?;
        HostContext::check_key(&key)?;
        if value.len() > kv::MAX_VALUE {
            wasmtime::bail!("value larger than {} octets", kv::MAX_VALUE);
        }
        if !self.host.kv.set(&self.host.plugin, &key, value, ttl_ms.map(Duration::from_millis)) {
            tracing::warn!(plugin = &*self.host.plugin, "key-value store full; value not stored");
        }
        Ok(())
    }

    fn kv_incr(&mut self, key: String, delta: i64, ttl_ms: Option<u64>) -> wasmtime::Result<i64> {
        self.host.charge(key.len() + 8)?;
        HostContext::check_key(&key)?;
        match self.host.kv.incr(&self.host.plugin, &key, delta, ttl_ms.map(Duration::from_millis)) {
            Some(n) => Ok(n),
            None => wasmtime::bail!("key-value store full"),
        }
    }
}

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

/// Which export to call, with its arguments.
pub enum Call<'a> {
    Manifest,
    Connect(&'a Connection),
    Ehlo(&'a Connection, &'a str),
    Mail(&'a Connection, &'a bindings::Address),
    Rcpt(&'a Connection, &'a Envelope, &'a bindings::Address),
    Data(&'a Connection, &'a Envelope, &'a Message),
}

/// What an export returned.
pub enum Answer {
    Manifest(Manifest),
    Decision(Decision),
}

/// What the sandbox needs to know about the plugin it runs.
pub struct SandboxSpec<'a> {
    pub engine: &'a wasmtime::Engine,
    pub pre: &'a bindings::FilterPre<CallState>,
    pub memory: usize,
    pub in_flight: &'a tokio::sync::Semaphore,
}

/// Runs one call in a fresh sandbox within `budget`. Returns the answer (or the fault) and the
/// host context back, with the notes the call wrote.
pub async fn run(
    spec: &SandboxSpec<'_>,
    host: HostContext,
    budget: Duration,
    call: Call<'_>,
) -> (Result<Answer, Fault>, HostContext) {
    let permit = match tokio::time::timeout(budget, spec.in_flight.acquire()).await {
        Ok(Ok(permit)) => permit,
        _ => {
            let fault = Fault { kind: FaultKind::Busy, detail: "no sandbox slot free".into(), stderr: String::new() };
            return (Err(fault), host);
        }
    };
    let stderr = BoundedStderr::default();
    let wasi = WasiCtxBuilder::new().stderr(stderr.clone()).build();
    let limits = StoreLimitsBuilder::new().memory_size(spec.memory).instances(32).tables(32).memories(8).build();
    let state = CallState { wasi, table: ResourceTable::new(), limiter: Limiter { limits, denied: false }, host };
    let mut store = Store::new(spec.engine, state);
    store.limiter(|s| &mut s.limiter);
    let started = Instant::now();
    // The deadline covers instantiation too. Every tick the callback yields to the executor
    // (a spinning plugin never blocks other sessions), and traps once the budget is spent.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if started.elapsed() >= budget { Err(Trap::Interrupt.into()) } else { Ok(UpdateDeadline::Yield(1)) }
    });
    let result = invoke(&mut store, spec.pre, call).await;
    drop(permit);
    let denied = store.data().limiter.denied;
    let state = store.into_data();
    let result = result.map_err(|err| classify(&err, denied, stderr.contents()));
    (result, state.host)
}

async fn invoke(
    store: &mut Store<CallState>,
    pre: &bindings::FilterPre<CallState>,
    call: Call<'_>,
) -> wasmtime::Result<Answer> {
    let filter = pre.instantiate_async(&mut *store).await?;
    Ok(match call {
        Call::Manifest => Answer::Manifest(filter.call_manifest(&mut *store).await?),
        Call::Connect(conn) => Answer::Decision(filter.call_on_connect(&mut *store, conn).await?),
        Call::Ehlo(conn, helo) => Answer::Decision(filter.call_on_ehlo(&mut *store, conn, helo).await?),
        Call::Mail(conn, sender) => Answer::Decision(filter.call_on_mail(&mut *store, conn, sender).await?),
        Call::Rcpt(conn, env, rcpt) => Answer::Decision(filter.call_on_rcpt(&mut *store, conn, env, rcpt).await?),
        Call::Data(conn, env, msg) => Answer::Decision(filter.call_on_data(&mut *store, conn, env, msg).await?),
    })
}

fn classify(err: &wasmtime::Error, memory_denied: bool, stderr: String) -> Fault {
    let trap = err.downcast_ref::<Trap>().copied();
    let (kind, detail) = match trap {
        Some(Trap::Interrupt) => (FaultKind::Timeout, "time limit exceeded".to_string()),
        _ if memory_denied => (FaultKind::Memory, "memory limit exceeded".to_string()),
        Some(Trap::StackOverflow) => (FaultKind::Crash, "stack overflow".to_string()),
        Some(Trap::UnreachableCodeReached) if stderr.contains("panicked") => (FaultKind::Crash, "panic".to_string()),
        Some(trap) => (FaultKind::Crash, trap.to_string()),
        None => (FaultKind::Host, format!("{:#}", err.root_cause())),
    };
    Fault { kind, detail, stderr }
}
