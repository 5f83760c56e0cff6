//! The filter core: the configured plugins, run in order at each stage they declare, with the
//! merge and edit rules of the plugin contract (`wit/filter.wit`). It knows no WebAssembly: a
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

use self::api::{BodyAccess, Call, Connection, Decision, EditKind, Manifest, Stage};
use self::breaker::{Breaker, Transition};
use self::host::{HostContext, NoteScopes};
use self::kv::KvStore;
pub use self::sandbox::{Fault, FaultKind, Sandbox};
use self::stages::StageState;
use self::validate::Verdict;
use crate::config::{OnError, PluginConfig, PluginLimits};
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

/// One loaded plugin: what it declared, its policies, and the sandbox that runs it.
pub struct Plugin {
    pub name: Arc<str>,
    pub manifest: Manifest,
    pub on_error: OnError,
    pub limits: PluginLimits,
    config_json: Arc<str>,
    breaker: Breaker,
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
            limits: config.limits.clone(),
            config_json: plugin_config_json(config)?.into(),
            breaker: Breaker::new(config.breaker.clone()),
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

/// The configured plugins in order, and the host state they share; one per process.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Plugin>,
    kv: Arc<KvStore>,
}

impl Chain {
    pub fn new(plugins: Vec<Plugin>, kv: Arc<KvStore>) -> Self {
        Self { plugins, kv }
    }

    /// No plugins: every stage continues.
    pub fn empty() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// The plugins in chain order.
    pub fn plugins(&self) -> &[Plugin] {
        &self.plugins
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
    /// verdicts. `state` ends up as the last successful plugin left it.
    pub async fn run<S: StageState>(&self, conn: &Connection, mut notes: NoteScopes<'_>, state: &mut S) -> Outcome {
        for plugin in self.plugins.iter().filter(|p| p.manifest.declares(S::STAGE)) {
            let verdict = if plugin.breaker.allows_call() {
                self.call(plugin, conn, &mut notes, state).await
            } else {
                tracing::debug!(plugin = %plugin.name, stage = %S::STAGE, "circuit open: plugin bypassed");
                None
            };
            let reply = match verdict {
                None => match on_error(plugin, S::STAGE) {
                    Outcome::Continue => continue,
                    outcome => return outcome,
                },
                Some(Verdict::Continue) => continue,
                Some(Verdict::Accept) => return Outcome::Continue,
                Some(Verdict::Reject(reply)) => Outcome::Reject(reply),
                Some(Verdict::Tempfail(reply)) => Outcome::Tempfail(reply),
                Some(Verdict::Disconnect(reply)) => Outcome::Disconnect(reply),
            };
            tracing::info!(
                plugin = %plugin.name,
                version = %plugin.manifest.version,
                stage = %S::STAGE,
                outcome = ?reply,
                "plugin verdict"
            );
            return reply;
        }
        Outcome::Continue
    }

    /// Calls one plugin and applies its answer to `state`: the checked verdict, or `None` after
    /// a fault (logged, counted by the breaker, with the state and notes untouched).
    async fn call<S: StageState>(
        &self,
        plugin: &Plugin,
        conn: &Connection,
        notes: &mut NoteScopes<'_>,
        state: &mut S,
    ) -> Option<Verdict> {
        let started = Instant::now();
        let host = HostContext::new(
            plugin.name.clone(),
            conn.session_id.clone(),
            plugin.config_json.clone(),
            self.kv.clone(),
            notes.visible_to(&plugin.name),
            plugin.limits.host_data.bytes() as usize,
        );
        let call = Call { conn, input: state.input(plugin) };
        let (answer, host) = plugin.sandbox.call(call, host, plugin.budget(S::STAGE)).await;
        let latency_us = started.elapsed().as_micros() as u64;
        let decided = answer.and_then(|decision| apply(plugin, state, decision).map_err(Fault::from));
        match plugin.breaker.record(decided.is_ok()) {
            Some(Transition::Opened) => tracing::warn!(
                plugin = %plugin.name,
                cooldown = ?plugin.breaker.cooldown(),
                "circuit breaker opened: plugin bypassed by its on_error policy"
            ),
            Some(Transition::Closed) => tracing::info!(plugin = %plugin.name, "circuit breaker closed"),
            None => {}
        }
        match decided {
            Ok((verdict, edited, edits)) => {
                notes.commit(&plugin.name, host.into_note_writes());
                if let Some(edited) = edited {
                    *state = edited;
                }
                tracing::debug!(
                    plugin = %plugin.name,
                    version = %plugin.manifest.version,
                    stage = %S::STAGE,
                    verdict = ?verdict,
                    edits,
                    latency_us,
                    "plugin decision"
                );
                Some(verdict)
            }
            Err(fault) => {
                tracing::warn!(
                    plugin = %plugin.name,
                    version = %plugin.manifest.version,
                    stage = %S::STAGE,
                    fault = %fault.kind,
                    detail = %fault.detail,
                    stderr = ?fault.stderr,
                    latency_us,
                    on_error = ?plugin.on_error,
                    "plugin fault"
                );
                None
            }
        }
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
