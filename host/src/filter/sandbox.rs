//! The one thing the filter core needs from a plugin runtime: run one call within a budget and
//! say what the plugin decided or why it failed. The WebAssembly runtime implements it; the
//! chain's unit tests implement it with a scripted fake.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use super::api::{Call, Decision};
use super::host::HostContext;
use super::validate::Violation;

/// Why a plugin call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The call ran past its time limit.
    Timeout,
    /// The plugin tried to grow its memory past its limit.
    Memory,
    /// A trap: panic, stack overflow, out-of-bounds access, unreachable.
    Crash,
    /// An interpreted guest's uncaught exception (a Python traceback, a JavaScript error).
    Exception,
    /// The plugin broke a host-call limit (too many calls, too much data, oversized keys).
    HostCallBudget,
    /// The host failed while serving the plugin.
    Host,
    /// The plugin answered, but the answer breaks the contract.
    Invalid,
    /// No sandbox slot became free within the call's time limit.
    Busy,
}

impl FaultKind {
    /// The kind's name in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Timeout => "timeout",
            FaultKind::Memory => "memory",
            FaultKind::Crash => "crash",
            FaultKind::Exception => "exception",
            FaultKind::HostCallBudget => "host-call-budget",
            FaultKind::Host => "host-error",
            FaultKind::Invalid => "invalid-answer",
            FaultKind::Busy => "busy",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call: what happened, the detail, what the plugin wrote to stderr (and stdout), and
/// the guest's backtrace when it trapped (innermost frame first; empty otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub detail: String,
    pub stderr: String,
    pub backtrace: String,
}

impl Fault {
    pub fn new(kind: FaultKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into(), stderr: String::new(), backtrace: String::new() }
    }
}

impl From<Violation> for Fault {
    fn from(violation: Violation) -> Self {
        Fault::new(FaultKind::Invalid, violation.to_string())
    }
}

/// What a call returns: the plugin's (unvalidated) decision or the fault, and the host context
/// back with the notes the call wrote.
pub type CallResult = (Result<Decision, Fault>, HostContext);

/// A plugin runtime holding one loaded plugin.
pub trait Sandbox: Send + Sync {
    /// Runs `call` in a fresh sandbox, within `budget` of wall-clock time.
    fn call<'a>(
        &'a self,
        call: Call<'a>,
        host: HostContext,
        budget: Duration,
    ) -> Pin<Box<dyn Future<Output = CallResult> + Send + 'a>>;
}
