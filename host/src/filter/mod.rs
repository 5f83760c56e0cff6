//! The filter core: the configured plugins, run in order at each stage they declare, with the
//! merge and edit rules of the plugin contract (`wit/0.2.0/filter.wit`). It knows no WebAssembly: a
//! plugin is an [`api::Manifest`], its policies and a [`Sandbox`] to call.
//!
//! - [`api`]: the stage inputs and plugin answers in plain Rust;
//! - [`stages`]: what each stage works on and how edits change it;
//! - [`validate`]: the checks on everything a plugin returns;
//! - [`sandbox`]: the runtime interface, and faults;
//! - [`host`]: the host services of a call (log, config, notes, key-value), bounded;
//! - [`kv`]: the shared key-value store;
//! - [`breaker`]: the per-plugin circuit breaker.
//!
//! The rules: the first reject, tempfail or disconnect ends the stage; `accept` skips the
//! remaining plugins of that stage only; `continue` passes on. A plugin's edits are validated
//! and applied all together or not at all, and the next plugin sees the result. A fault (trap,
//! timeout, invalid answer) applies the plugin's `on_error` policy and feeds its breaker.

pub mod api;
pub mod breaker;
pub mod host;
pub mod kv;
pub mod sandbox;
pub mod stages;
pub mod validate;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use self::api::{BodyAccess, Call, Connection, Decision, Edit, EditKind, Manifest, Stage};
use self::breaker::{Breaker, Ticket, Transition};
use self::host::{HostContext, LogBudget, NoteScopes};
use self::kv::Kv;
pub use self::sandbox::{Fault, FaultKind, Sandbox};
use self::stages::StageState;
use self::validate::Verdict;
use crate::config::{OnError, PluginConfig, PluginLimits, PluginMode};
use crate::metrics::Metrics;
use crate::replies;
use crate::smtp::Reply;

/// What a stage means for the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go on (every plugin continued or one accepted).
    Continue,
    Reject(Reply),
    Tempfail(Reply),
    /// Send the reply and close the connection.
    Disconnect(Reply),
}

impl Outcome {
    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Continue => "continue",
            Outcome::Reject(_) => "reject",
            Outcome::Tempfail(_) => "tempfail",
            Outcome::Disconnect(_) => "disconnect",
        }
    }

    pub fn reply(&self) -> Option<&Reply> {
        match self {
            Outcome::Continue => None,
            Outcome::Reject(r) | Outcome::Tempfail(r) | Outcome::Disconnect(r) => Some(r),
        }
    }
}

/// What became of one plugin call, as an [`Observer`] sees it.
#[derive(Debug)]
pub enum Called<'a> {
    /// The plugin answered; its edits (when the observer asked for them) took effect, unless
    /// it is a shadow.
    Decided {
        verdict: &'a Verdict,
        edits: &'a [Edit],
    },
    Fault(&'a Fault),
    /// Its circuit breaker is open: not called.
    Bypassed,
}

impl Called<'_> {
    /// The call in one line — verdict, reply and edits, a fault's kind — the form recordings
    /// keep and `wasmtp replay` compares. A fault's detail is left out: it holds timings and
    /// addresses that differ from run to run.
    pub fn summary(&self) -> String {
        match self {
            Called::Decided { verdict, edits } => {
                let mut out = verdict.name().to_string();
                if let Some(reply) = verdict.reply() {
                    out.push(' ');
                    out.push_str(&reply.to_string());
                }
                for (i, edit) in edits.iter().enumerate() {
                    out.push_str(if i == 0 { "; " } else { ", " });
                    out.push_str(&edit.to_string());
                }
                out
            }
            Called::Fault(fault) => format!("fault ({})", fault.kind),
            Called::Bypassed => "bypassed (circuit breaker open)".into(),
        }
    }
}

/// Watches a stage's plugin calls: the offline test harness and session recording use it to
/// see each plugin's decision, not only the stage's outcome. The session runs with `()`.
pub trait Observer: Send {
    /// Whether [`Called::Decided`] should carry the edits (a copy the chain makes only then).
    fn wants_edits(&self) -> bool {
        false
    }

    fn called(&mut self, plugin: &Plugin, stage: Stage, called: Called<'_>);
}

impl Observer for () {
    fn called(&mut self, _: &Plugin, _: Stage, _: Called<'_>) {}
}

/// One loaded plugin: what it declared, its policies, and the sandbox that runs it.
pub struct Plugin {
    pub name: Arc<str>,
    pub manifest: Manifest,
    pub on_error: OnError,
    pub mode: PluginMode,
    pub limits: PluginLimits,
    config_json: Arc<str>,
    breaker: Breaker,
    fault_log: FaultLog,
    sandbox: Box<dyn Sandbox>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin").field("name", &self.name).field("manifest", &self.manifest).finish_non_exhaustive()
    }
}

impl Plugin {
    /// A plugin as configured by `config`, with the manifest it declared at load.
    pub fn new(
        config: &PluginConfig,
        manifest: Manifest,
        sandbox: Box<dyn Sandbox>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            name: config.name.as_str().into(),
            manifest,
            on_error: config.on_error,
            mode: config.mode,
            limits: config.limits.clone(),
            config_json: plugin_config_json(config)?.into(),
            breaker: Breaker::new(config.breaker.clone()),
            fault_log: FaultLog::default(),
            sandbox,
        })
    }

    /// The wall-clock budget of one call at `stage`.
    pub fn budget(&self, stage: Stage) -> Duration {
        if stage == Stage::Data { self.limits.data_time } else { self.limits.time }
    }
}

/// The plugin's `[plugins.config]` table as the JSON text plugins read.
pub fn plugin_config_json(config: &PluginConfig) -> Result<String, serde_json::Error> {
    serde_json::to_string(&config.config)
}

/// The configured plugins in order, and the host state they share; one per configuration
/// generation (the key-value store outlives generations).
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Arc<Plugin>>,
    kv: Arc<Kv>,
    metrics: Arc<Metrics>,
}

impl Chain {
    pub fn new(plugins: Vec<Plugin>, kv: Arc<Kv>, metrics: Arc<Metrics>) -> Self {
        Self { plugins: plugins.into_iter().map(Arc::new).collect(), kv, metrics }
    }

    /// The plugins named in `names`, in chain order, sharing their state (breakers, the store)
    /// with this chain: a listener's own plugin set.
    pub fn subset(&self, names: &[String]) -> Self {
        let plugins = self.plugins.iter().filter(|p| names.iter().any(|n| **n == *p.name)).cloned().collect();
        Self { plugins, kv: self.kv.clone(), metrics: self.metrics.clone() }
    }

    /// No plugins: every stage continues.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugins in chain order.
    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.plugins.iter().map(|p| &**p)
    }

    /// Some plugin is called at `stage`.
    pub fn wants(&self, stage: Stage) -> bool {
        self.plugins.iter().any(|p| p.manifest.declares(stage))
    }

    /// The most body octets any data-stage plugin may see.
    pub fn max_body_needed(&self) -> usize {
        self.plugins
            .iter()
            .filter(|p| p.manifest.declares(Stage::Data) && p.manifest.body == BodyAccess::Full)
            .map(|p| p.limits.max_body.bytes() as usize)
            .max()
            .unwrap_or(0)
    }

    /// Some plugin may quarantine.
    pub fn may_quarantine(&self) -> bool {
        self.plugins.iter().any(|p| p.manifest.may(EditKind::Quarantine))
    }

    /// Runs every plugin that declares `S::STAGE` over `state`, in order, and merges their
    /// verdicts. `state` ends up as the last successful live plugin left it.
    ///
    /// Shadow plugins are called at their place in the chain on a copy of the state (or, when
    /// the stage ended before their place, on the state it ended with), and their verdicts are
    /// only compared with the stage's outcome.
    pub async fn run<S: StageState>(&self, conn: &Connection, notes: NoteScopes<'_>, state: &mut S) -> Outcome {
        self.run_observed(conn, notes, state, &mut ()).await
    }

    /// [`Chain::run`], telling `observer` what became of each call.
    pub async fn run_observed<S: StageState>(
        &self,
        conn: &Connection,
        mut notes: NoteScopes<'_>,
        state: &mut S,
        observer: &mut dyn Observer,
    ) -> Outcome {
        let mut plugins = self.plugins.iter().filter(|p| p.manifest.declares(S::STAGE));
        let mut shadows = Vec::new();
        let mut outcome = Outcome::Continue;
        for plugin in plugins.by_ref() {
            if plugin.mode == PluginMode::Shadow {
                let mut copy = state.clone();
                shadows.push((plugin, self.admit_and_call(plugin, conn, &mut notes, &mut copy, observer).await));
                continue;
            }
            let ended = match self.admit_and_call(plugin, conn, &mut notes, state, observer).await {
                None => Some(on_error(plugin, S::STAGE)).filter(|o| *o != Outcome::Continue),
                Some((Verdict::Continue, _)) => None,
                Some((Verdict::Accept, _)) => Some(Outcome::Continue),
                Some((Verdict::Reject(reply), _)) => Some(Outcome::Reject(reply)),
                Some((Verdict::Tempfail(reply), _)) => Some(Outcome::Tempfail(reply)),
                Some((Verdict::Disconnect(reply), _)) => Some(Outcome::Disconnect(reply)),
            };
            if let Some(ended) = ended {
                outcome = ended;
                break;
            }
        }
        for plugin in plugins.filter(|p| p.mode == PluginMode::Shadow) {
            let mut copy = state.clone();
            shadows.push((plugin, self.admit_and_call(plugin, conn, &mut notes, &mut copy, observer).await));
        }
        for (plugin, called) in shadows {
            if let Some((verdict, edits)) = called {
                self.compare_shadow(plugin, S::STAGE, &verdict, edits, &outcome);
            }
        }
        outcome
    }

    /// Calls `plugin` unless its breaker is open: the checked verdict and the number of edits
    /// applied to `state`, or `None` after a fault or while bypassed.
    async fn admit_and_call<S: StageState>(
        &self,
        plugin: &Plugin,
        conn: &Connection,
        notes: &mut NoteScopes<'_>,
        state: &mut S,
        observer: &mut dyn Observer,
    ) -> Option<(Verdict, usize)> {
        match plugin.breaker.admit() {
            Some(ticket) => self.call(plugin, ticket, conn, notes, state, observer).await,
            None => {
                observer.called(plugin, S::STAGE, Called::Bypassed);
                self.metrics.plugin_bypassed(&plugin.name, S::STAGE.name());
                tracing::debug!(plugin = %plugin.name, stage = %S::STAGE, "circuit open: plugin bypassed");
                None
            }
        }
    }

    /// Logs and counts a shadow plugin's verdict that differs from what the live chain did
    /// at that stage: another outcome (accept and continue are one), or another reply code.
    fn compare_shadow(&self, plugin: &Plugin, stage: Stage, verdict: &Verdict, edits: usize, live: &Outcome) {
        let shadow = match verdict {
            Verdict::Continue | Verdict::Accept => "continue",
            other => other.name(),
        };
        let same_code = verdict.reply().map(Reply::code) == live.reply().map(Reply::code);
        if shadow == live.name() && same_code {
            return;
        }
        self.metrics.shadow_disagreement(&plugin.name, stage.name(), live.name(), shadow);
        tracing::warn!(
            plugin = %plugin.name,
            version = %plugin.manifest.version,
            stage = %stage,
            live = live.name(),
            live_reply = %live.reply().map(brief).unwrap_or_default(),
            shadow,
            shadow_reply = %verdict.reply().map(brief).unwrap_or_default(),
            shadow_edits = edits,
            "shadow plugin disagrees with the live chain"
        );
    }

    /// The breaker state of every plugin, for the metrics.
    pub fn report_breakers(&self) {
        for plugin in &self.plugins {
            self.metrics.set_breaker(&plugin.name, plugin.breaker.gauge());
        }
    }

    /// The key-value store the plugins share.
    pub fn kv(&self) -> &Arc<Kv> {
        &self.kv
    }

    /// Calls one plugin and applies its answer to `state`: the checked verdict, or `None` after
    /// a fault (logged, counted by the breaker, with the state and notes untouched).
    ///
    /// The call runs under a timer of its own: whatever the sandbox does — guest code, or a
    /// host or WASI call that blocks — it is dropped at its budget (plus a few ticks of the
    /// sandbox's own clock, which stops spinning guests first and keeps their stderr).
    async fn call<S: StageState>(
        &self,
        plugin: &Plugin,
        ticket: Ticket<'_>,
        conn: &Connection,
        notes: &mut NoteScopes<'_>,
        state: &mut S,
        observer: &mut dyn Observer,
    ) -> Option<(Verdict, usize)> {
        let started = Instant::now();
        let logs = Arc::new(LogBudget::default());
        let host = HostContext::new(
            plugin.name.clone(),
            conn.session_id.clone(),
            plugin.config_json.clone(),
            self.kv.clone(),
            notes.visible_to(&plugin.name),
            plugin.limits.host_data.bytes() as usize,
        )
        .with_notes_limit(plugin.limits.notes.bytes() as usize)
        .with_kv_quota(kv::Quota::of(&plugin.limits))
        .with_metrics(self.metrics.clone())
        .with_log_budget(logs.clone());
        let budget = plugin.budget(S::STAGE);
        let call = Call { conn, input: state.input(plugin) };
        let answer = tokio::time::timeout(budget + OVERRUN_GRACE, plugin.sandbox.call(call, host, budget)).await;
        let elapsed = started.elapsed();
        let latency_us = elapsed.as_micros() as u64;
        let (answer, note_writes) = match answer {
            Ok((answer, host)) => (answer, host.into_note_writes()),
            Err(_) => (Err(Fault::new(FaultKind::Timeout, "time limit exceeded in a host or WASI call")), Vec::new()),
        };
        logs.report(&plugin.name);
        let mut edits_seen = Vec::new();
        let decided = answer.and_then(|decision| {
            if observer.wants_edits() {
                edits_seen = decision.edits.clone();
            }
            apply(plugin, state, decision).map_err(Fault::from)
        });
        match &decided {
            Ok((verdict, _, _)) => observer.called(plugin, S::STAGE, Called::Decided { verdict, edits: &edits_seen }),
            Err(fault) => observer.called(plugin, S::STAGE, Called::Fault(fault)),
        }
        // Waiting for a free slot says nothing about the plugin's health: it does not count.
        let busy = matches!(&decided, Err(fault) if fault.kind == FaultKind::Busy);
        let transition = if busy { None } else { plugin.breaker.record(ticket, decided.is_ok()) };
        match transition {
            Some(Transition::Opened) => tracing::warn!(
                plugin = %plugin.name,
                cooldown = %humantime::format_duration(plugin.breaker.cooldown()),
                "circuit breaker opened: plugin bypassed by its on_error policy"
            ),
            Some(Transition::Closed) => tracing::info!(plugin = %plugin.name, "circuit breaker closed"),
            None => {}
        }
        match decided {
            Ok((verdict, edited, edits)) => {
                self.metrics.plugin_call(&plugin.name, S::STAGE.name(), verdict.name(), elapsed);
                notes.commit(&plugin.name, note_writes);
                if let Some(edited) = edited {
                    *state = edited;
                }
                // A decision that changes something is the operator's business; a plain
                // continue is only worth a debug line.
                let reply = verdict.reply().map(brief).unwrap_or_default();
                if matches!(verdict, Verdict::Continue) && edits == 0 {
                    tracing::debug!(
                        plugin = %plugin.name,
                        version = %plugin.manifest.version,
                        stage = %S::STAGE,
                        verdict = verdict.name(),
                        latency_us,
                        "plugin decision"
                    );
                } else {
                    tracing::info!(
                        plugin = %plugin.name,
                        version = %plugin.manifest.version,
                        stage = %S::STAGE,
                        verdict = verdict.name(),
                        edits,
                        latency_us,
                        reply = %reply,
                        "plugin decision"
                    );
                }
                Some((verdict, edits))
            }
            Err(fault) => {
                self.metrics.plugin_call(&plugin.name, S::STAGE.name(), "fault", elapsed);
                self.metrics.plugin_fault(&plugin.name, S::STAGE.name(), fault.kind.name());
                if let Some(suppressed) = plugin.fault_log.admit() {
                    tracing::warn!(
                        plugin = %plugin.name,
                        version = %plugin.manifest.version,
                        stage = %S::STAGE,
                        fault = %fault.kind,
                        // Debug-quoted: a plugin's text cannot start a log line of its own.
                        detail = ?truncated(&fault.detail, MAX_LOGGED_DETAIL),
                        stderr = ?truncated(&fault.stderr, MAX_LOGGED_DETAIL * 4),
                        backtrace = ?truncated(&fault.backtrace, MAX_LOGGED_DETAIL * 4),
                        latency_us,
                        on_error = match plugin.mode {
                            PluginMode::Live => plugin.on_error.name(),
                            PluginMode::Shadow => "none (shadow)",
                        },
                        suppressed_since_last = suppressed,
                        "plugin fault"
                    );
                }
                None
            }
        }
    }
}

/// How long past its budget a call may take before the chain drops it; a few ticks of the
/// sandbox's own epoch clock, so a spinning guest is stopped (and classified) by the sandbox.
const OVERRUN_GRACE: Duration = Duration::from_millis(5);
/// Most edits one call may return; more is an invalid answer.
pub const MAX_EDITS_PER_CALL: usize = 1000;
/// Longest fault detail written to the log, in characters.
const MAX_LOGGED_DETAIL: usize = 300;

/// `text` cut at `max` characters, with its full length when cut.
fn truncated(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((cut, _)) => format!("{}… ({} octets)", &text[..cut], text.len()),
    }
}

/// A reply for the log: its first line, cut, and its size when it is longer.
fn brief(reply: &Reply) -> String {
    let first = format!("{} {}", reply.code(), reply.lines().first().map_or("", String::as_str));
    let lines = reply.lines().len();
    if lines == 1 && first.chars().count() <= 200 {
        return first;
    }
    let octets = reply.to_bytes().len();
    format!("{} ({lines} lines, {octets} octets)", truncated(&first, 200))
}

/// At most [`FaultLog::PER_WINDOW`] fault lines per plugin per window; the rest are counted and
/// the count goes with the next line written.
#[derive(Debug, Default)]
struct FaultLog {
    state: std::sync::Mutex<(Option<Instant>, u32, u64)>,
}

impl FaultLog {
    const PER_WINDOW: u32 = 10;
    const WINDOW: Duration = Duration::from_secs(10);

    /// `Some(suppressed since the last line)` when this fault may be logged.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, logged, suppressed) = &mut *guard;
        if start.is_none_or(|s| now.duration_since(s) >= Self::WINDOW) {
            *start = Some(now);
            *logged = 0;
        }
        if *logged >= Self::PER_WINDOW {
            *suppressed += 1;
            return None;
        }
        *logged += 1;
        Some(std::mem::take(suppressed))
    }
}

/// Checks a decision and applies its edits to a copy of the state, all or nothing: the verdict,
/// the edited state (`None` without edits) and the number of edits.
fn apply<S: StageState>(
    plugin: &Plugin,
    state: &S,
    decision: Decision,
) -> Result<(Verdict, Option<S>, usize), validate::Violation> {
    let verdict = validate::verdict(&decision.verdict)?;
    let count = decision.edits.len();
    if count > MAX_EDITS_PER_CALL {
        return Err(validate::Violation::TooManyEdits(count));
    }
    if count == 0 {
        return Ok((verdict, None, 0));
    }
    let mut edited = state.clone();
    for edit in decision.edits {
        validate::permitted(edit.kind(), S::STAGE, &plugin.manifest)?;
        edited.apply(edit, plugin)?;
    }
    Ok((verdict, Some(edited), count))
}

/// The outcome a fault (or an open breaker) leads to under the plugin's policy.
fn on_error(plugin: &Plugin, stage: Stage) -> Outcome {
    let at_connect = stage == Stage::Connect;
    match plugin.on_error {
        OnError::Continue => Outcome::Continue,
        OnError::Tempfail if at_connect => Outcome::Disconnect(replies::filter_tempfail(true)),
        OnError::Tempfail => Outcome::Tempfail(replies::filter_tempfail(false)),
        OnError::Reject => Outcome::Reject(replies::filter_reject(at_connect)),
    }
}
