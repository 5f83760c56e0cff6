//! What `wasmtp plugin test` prints of a [`Trace`] — per stage each plugin's verdict, the
//! reply the client would hear, each edit, faults with what the guest printed and its
//! backtrace, and the message after the edits as a diff — and the check of a case's
//! expectations against it.

use std::fmt::Write as _;

use super::case::{Case, ExpectDetail, ExpectedVerdict, parse_stage};
use super::{After, CallResult, Step, Trace};
use crate::filter::validate::Verdict;

/// Longest diff printed, in lines.
const MAX_DIFF_LINES: usize = 200;

/// The trace in words, indented by two spaces.
pub fn render(trace: &Trace) -> String {
    let mut out = String::new();
    for step in &trace.steps {
        let label = match &step.recipient {
            Some(rcpt) => format!("{} <{rcpt}>", step.stage),
            None => step.stage.to_string(),
        };
        if step.calls.is_empty() {
            continue;
        }
        for call in &step.calls {
            let shadow = if call.shadow { " [shadow]" } else { "" };
            let _ = write!(out, "  {label:<8} {}{shadow}: ", call.plugin);
            match &call.result {
                CallResult::Decided { verdict, edits } => {
                    out.push_str(verdict.name());
                    if let Some(reply) = verdict.reply() {
                        let _ = write!(out, " {reply}");
                    }
                    out.push('\n');
                    for edit in edits {
                        let _ = writeln!(out, "             edit: {}", edit);
                    }
                }
                CallResult::Fault(fault) => {
                    let _ = writeln!(out, "fault ({}): {}", fault.kind, fault.detail);
                    for (what, text) in [("stderr", &fault.stderr), ("backtrace", &fault.backtrace)] {
                        if !text.trim().is_empty() {
                            let _ = writeln!(
                                out,
                                "             {what}: {}",
                                text.trim().replace('\n', "\n               ")
                            );
                        }
                    }
                }
                CallResult::Bypassed => out.push_str("bypassed (circuit breaker open)\n"),
            }
        }
        if let Some(reply) = step.outcome.reply() {
            let _ = writeln!(out, "  {:<8} the client hears: {reply}", "");
        }
    }
    if let Some(diff) = message_diff(trace) {
        out.push_str("  message after edits:\n");
        for line in diff.lines().take(MAX_DIFF_LINES) {
            let _ = writeln!(out, "    {line}");
        }
        let lines = diff.lines().count();
        if lines > MAX_DIFF_LINES {
            let _ = writeln!(out, "    … {} more lines", lines - MAX_DIFF_LINES);
        }
    }
    out
}

/// The message as the client sent it against the message after the data stage's edits, as a
/// unified diff; `None` when nothing changed or the session never reached data.
pub fn message_diff(trace: &Trace) -> Option<String> {
    let data = trace.data()?;
    let body: &[u8] = data.replaced_body.as_deref().map_or(&data.original_body, |b| b);
    let mut after = data.headers.render(body.is_empty());
    after.extend_from_slice(body);
    if after == trace.message {
        return None;
    }
    let (before, after) = (String::from_utf8_lossy(&trace.message), String::from_utf8_lossy(&after));
    let diff = similar::TextDiff::from_lines(&*before, &*after);
    Some(diff.unified_diff().context_radius(2).header("as received", "after edits").to_string().replace('\r', ""))
}

/// Every way the trace falls short of the case's expectations for `plugin`, in words.
pub fn check(trace: &Trace, case: &Case, plugin: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for (name, expect) in &case.expect {
        let Ok(stage) = parse_stage(name) else {
            failures.push(format!("`{name}` is not a stage"));
            continue;
        };
        let steps: Vec<&Step> = trace.at(stage).collect();
        let called: Vec<(&Step, &CallResult)> = steps
            .iter()
            .flat_map(|s| s.calls.iter().filter(|c| c.plugin == plugin).map(move |c| (*s, &c.result)))
            .collect();
        if called.is_empty() {
            let why = if steps.is_empty() { "the session ended before it" } else { "its manifest does not declare it" };
            failures.push(format!("{stage}: expected a call, but `{plugin}` was not called ({why})"));
            continue;
        }
        for (step, result) in called {
            let at = match &step.recipient {
                Some(rcpt) => format!("{stage} <{rcpt}>"),
                None => stage.to_string(),
            };
            check_call(&at, &expect.detail(), step, result, &mut failures);
        }
    }
    failures
}

fn check_call(at: &str, expect: &ExpectDetail, step: &Step, result: &CallResult, failures: &mut Vec<String>) {
    let (got, reply) = match result {
        CallResult::Decided { verdict, .. } => (verdict.name(), verdict.reply().map(|r| r.to_string())),
        CallResult::Fault(fault) => ("fault", Some(format!("{}: {}", fault.kind, fault.detail))),
        CallResult::Bypassed => ("bypassed", None),
    };
    let shown = || reply.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
    if let Some(want) = expect.verdict
        && want.name() != got
    {
        failures.push(format!("{at}: expected verdict {}, got {got}{}", want.name(), shown()));
    }
    if let Some(want) = &expect.reply {
        let heard = step.outcome.reply().map(|r| r.to_string());
        let text = match result {
            CallResult::Decided { verdict: Verdict::Continue | Verdict::Accept, .. } => heard,
            _ => reply.clone().or(heard),
        };
        if !text.as_deref().is_some_and(|t| t.contains(want.as_str())) {
            failures
                .push(format!("{at}: expected a reply containing {want:?}, got {}", text.as_deref().unwrap_or("none")));
        }
    }
    if let Some(want) = &expect.fault {
        let kind = match result {
            CallResult::Fault(fault) => fault.kind.name().to_string(),
            _ => "none".into(),
        };
        if &kind != want {
            failures.push(format!("{at}: expected a fault of kind {want}, got {kind}"));
        }
        if expect.verdict.is_some_and(|v| v != ExpectedVerdict::Fault) {
            failures.push(format!("{at}: `fault` goes with verdict = \"fault\""));
        }
    }
    check_state(at, expect, &step.after, failures);
}

/// The expectations on what the stage left: sender, recipients, header fields, body, quarantine.
fn check_state(at: &str, expect: &ExpectDetail, after: &After, failures: &mut Vec<String>) {
    let (sender, recipients, data) = match after {
        After::Nothing => (None, None, None),
        After::Sender(sender) => (Some(sender.as_str()), None, None),
        After::Recipients(r) => (None, Some(r.iter().map(|m| m.as_str().to_string()).collect::<Vec<_>>()), None),
        After::Data(d) => {
            (Some(d.sender.as_str()), Some(d.recipients.iter().map(|m| m.as_str().to_string()).collect()), Some(&**d))
        }
    };
    let unavailable = |what: &str, failures: &mut Vec<String>| {
        failures.push(format!("{at}: `{what}` cannot be checked at this stage"));
    };
    if let Some(want) = &expect.sender {
        match sender {
            Some(got) if got.eq_ignore_ascii_case(want) => {}
            Some(got) => failures.push(format!("{at}: expected sender <{want}>, got <{got}>")),
            None => unavailable("sender", failures),
        }
    }
    if let Some(want) = &expect.recipients {
        match &recipients {
            Some(got) if got.len() == want.len() && got.iter().zip(want).all(|(g, w)| g.eq_ignore_ascii_case(w)) => {}
            Some(got) => failures.push(format!("{at}: expected recipients {want:?}, got {got:?}")),
            None => unavailable("recipients", failures),
        }
    }
    let wants_data = !expect.headers.is_empty()
        || !expect.absent_headers.is_empty()
        || expect.body_contains.is_some()
        || expect.quarantine.is_some();
    let Some(data) = data else {
        if wants_data {
            unavailable("headers, absent_headers, body_contains, quarantine", failures);
        }
        return;
    };
    for want in &expect.headers {
        let (name, value) = want.split_once(':').map_or((want.as_str(), None), |(n, v)| (n.trim(), Some(v.trim())));
        let found =
            data.headers.iter().any(|f| f.name.eq_ignore_ascii_case(name) && value.is_none_or(|v| f.value.trim() == v));
        if !found {
            let present: Vec<String> = data
                .headers
                .iter()
                .filter(|f| f.name.eq_ignore_ascii_case(name))
                .map(|f| format!("{}: {}", f.name, f.value))
                .collect();
            failures.push(format!("data: expected header `{want}`, found {present:?}"));
        }
    }
    for name in &expect.absent_headers {
        if data.headers.iter().any(|f| f.name.eq_ignore_ascii_case(name)) {
            failures.push(format!("data: expected no `{name}` field, but the message has one"));
        }
    }
    if let Some(want) = &expect.body_contains {
        let body: &[u8] = data.replaced_body.as_deref().map_or(&data.original_body, |b| b);
        if !String::from_utf8_lossy(body).contains(want.as_str()) {
            failures.push(format!("data: expected the body to contain {want:?}"));
        }
    }
    if let Some(want) = expect.quarantine {
        let got = data.quarantine.is_some();
        if got != want {
            failures.push(format!("data: expected quarantine = {want}, got {got}"));
        }
    }
}
