//! The offline harness behind `wasmtp plugin test` and `wasmtp replay`: runs a session's inputs
//! through a loaded chain — the real sandboxes, limits and validation — stage by stage as a client
//! would drive them, with no network and no upstream, and keeps what each plugin decided.
//!
//! - [`case`]: the fixtures format (inputs and expectations);
//! - [`report`]: the text report, the expectations check and the message diff;
//! - [`replay`]: `wasmtp replay`, recorded sessions run again and their decisions compared.

pub mod case;
pub mod replay;
pub mod report;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;

use self::case::Case;
use crate::auth::AuthResults;
use crate::filter::api::{Connection, Edit, Param, Stage, TlsInfo};
use crate::filter::host::{NoteScopes, Notes};
use crate::filter::stages::{ConnectState, DataState, EhloState, MailState, RcptState, StageState};
use crate::filter::validate::Verdict;
use crate::filter::{Called, Chain, Fault, Observer, Outcome, Plugin};
use crate::message::HeaderSection;
use crate::smtp::Mailbox;

/// Most header fields the harness parses, as `limits.max_header_fields` defaults.
const MAX_HEADER_FIELDS: usize = 1000;
/// The size limit replacement bodies are checked against, as `limits.max_message_size` defaults.
const MAX_MESSAGE_SIZE: u64 = 50 << 20;

/// What one plugin call came to.
#[derive(Debug, Clone)]
pub enum CallResult {
    Decided { verdict: Verdict, edits: Vec<Edit> },
    Fault(Fault),
    Bypassed,
}

impl CallResult {
    /// As the chain's observers see it.
    pub fn called(&self) -> Called<'_> {
        match self {
            CallResult::Decided { verdict, edits } => Called::Decided { verdict, edits },
            CallResult::Fault(fault) => Called::Fault(fault),
            CallResult::Bypassed => Called::Bypassed,
        }
    }
}

/// One plugin's call at one stage.
#[derive(Debug, Clone)]
pub struct CallRecord {
    pub plugin: String,
    pub shadow: bool,
    pub result: CallResult,
}

/// What a stage left to look at afterwards.
#[derive(Debug, Clone)]
pub enum After {
    Nothing,
    /// The sender after the mail stage.
    Sender(Mailbox),
    /// The recipients relayed for this RCPT.
    Recipients(Vec<Mailbox>),
    /// The transaction as the data stage left it.
    Data(Box<DataState>),
}

/// One stage as it ran.
#[derive(Debug, Clone)]
pub struct Step {
    pub stage: Stage,
    /// The recipient, at rcpt.
    pub recipient: Option<String>,
    pub calls: Vec<CallRecord>,
    pub outcome: Outcome,
    pub after: After,
}

/// A whole case as it ran.
#[derive(Debug, Clone)]
pub struct Trace {
    pub steps: Vec<Step>,
    /// The message as the client sent it.
    pub message: Vec<u8>,
}

impl Trace {
    /// The steps of `stage` (several at rcpt).
    pub fn at(&self, stage: Stage) -> impl Iterator<Item = &Step> {
        self.steps.iter().filter(move |s| s.stage == stage)
    }

    /// The data stage's result, when the session got that far.
    pub fn data(&self) -> Option<&DataState> {
        self.steps.iter().find_map(|s| match &s.after {
            After::Data(state) => Some(&**state),
            _ => None,
        })
    }
}

/// Collects a stage's calls.
#[derive(Default)]
struct Calls(Vec<CallRecord>);

impl Observer for Calls {
    fn wants_edits(&self) -> bool {
        true
    }

    fn called(&mut self, plugin: &Plugin, _: Stage, called: Called<'_>) {
        let result = match called {
            Called::Decided { verdict, edits } => {
                CallResult::Decided { verdict: verdict.clone(), edits: edits.to_vec() }
            }
            Called::Fault(fault) => CallResult::Fault(fault.clone()),
            Called::Bypassed => CallResult::Bypassed,
        };
        let shadow = plugin.mode == crate::config::PluginMode::Shadow;
        self.0.push(CallRecord { plugin: plugin.name.to_string(), shadow, result });
    }
}

/// Runs `case` through `chain`: connect, ehlo, mail, each rcpt, data, stopping where a client
/// would have to stop (a refused greeting, HELO or MAIL, no recipient left, a disconnect).
pub async fn run(chain: &Chain, case: &Case, session_id: &str) -> anyhow::Result<Trace> {
    let message = case.message_bytes()?;
    let mut run = Runner::new(chain, case, session_id);
    let mut steps = run.greet(std::slice::from_ref(&case.helo)).await;
    if !ended(&steps) {
        steps.extend(run.transaction(case, Some(&message)).await?);
    }
    Ok(Trace { steps, message })
}

/// The session so far ended: a refusal at connect, ehlo or mail, or a disconnect anywhere.
pub fn ended(steps: &[Step]) -> bool {
    steps.last().is_some_and(|s| match s.outcome {
        Outcome::Continue => false,
        Outcome::Disconnect(_) => true,
        _ => s.stage != Stage::Rcpt,
    })
}

/// `s` as the sender or a recipient (UTF-8 only with SMTPUTF8).
fn mailbox(s: &str, recipient: bool, utf8: bool) -> anyhow::Result<Mailbox> {
    if s.is_empty() && !recipient {
        return Ok(Mailbox::null());
    }
    Mailbox::parse(s, utf8, recipient).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A case's session: its connection facts and notes, kept from stage to stage and across
/// its transactions.
pub struct Runner<'c> {
    chain: &'c Chain,
    conn: Connection,
    /// The HELO name's SPF, visible from ehlo on.
    spf_helo: Option<crate::auth::SpfCheck>,
    session: Notes,
    transaction: Option<Notes>,
}

impl<'c> Runner<'c> {
    /// A session with `case`'s connection facts; its iprev and HELO SPF results.
    pub fn new(chain: &'c Chain, case: &Case, session_id: &str) -> Self {
        let mut conn = Connection::new(session_id.into(), SocketAddr::new(case.client_ip, 49152));
        conn.client_name = case.client_name.clone();
        conn.tls = case.tls.then(|| TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS13_AES_256_GCM_SHA384".into(),
            sni: None,
        });
        conn.authenticated_as = case.authenticated_as.clone();
        conn.auth = AuthResults { iprev: case.auth.iprev.clone(), ..AuthResults::default() };
        let spf_helo = case.auth.spf_helo.clone();
        Self { chain, conn, spf_helo, session: Notes::default(), transaction: None }
    }

    /// Connect, then ehlo with each name in turn, until the session ends.
    pub async fn greet(&mut self, helos: &[String]) -> Vec<Step> {
        let mut steps = vec![self.stage(&mut ConnectState, None).await];
        for helo in helos {
            if ended(&steps) {
                break;
            }
            self.conn.helo = Some(helo.clone());
            self.conn.auth.spf_helo = self.spf_helo.clone();
            steps.push(self.stage(&mut EhloState(helo.clone()), None).await);
        }
        steps
    }

    /// One transaction of `case` (its envelope and MAIL-to-DATA authentication results): mail,
    /// each rcpt, and data when there is a `message` and a recipient left.
    pub async fn transaction(&mut self, case: &Case, message: Option<&[u8]>) -> anyhow::Result<Vec<Step>> {
        let params: Vec<Param> = case.mail_params.iter().map(|p| Param::parse(p)).collect();
        let utf8 = params.iter().any(|p| p.name.eq_ignore_ascii_case("SMTPUTF8"));
        let sender = mailbox(&case.from, false, utf8).context("field `from`")?;
        let mut recipients = Vec::new();
        for rcpt in &case.rcpt {
            recipients.push(mailbox(rcpt, true, utf8).with_context(|| format!("field `rcpt`: `{rcpt}`"))?);
        }
        let message = match message {
            Some(message) => {
                let headers = HeaderSection::parse(message, MAX_HEADER_FIELDS)
                    .map_err(|e| anyhow::anyhow!("the message: {e}"))?;
                let body = message[headers.body_offset as usize..].to_vec();
                Some((headers, body))
            }
            None => None,
        };

        let auth = &mut self.conn.auth;
        auth.spf_mail = case.auth.spf_mail.clone();
        (auth.dkim, auth.arc, auth.dmarc) = (Vec::new(), None, None);
        self.transaction = Some(Notes::default());
        let mut steps = Vec::new();
        let mut mail = MailState { sender, params, utf8 };
        let mut step = self.stage(&mut mail, None).await;
        step.after = After::Sender(mail.sender.clone());
        steps.push(step);
        let mut accepted: Vec<Mailbox> = Vec::new();
        if !ended(&steps) {
            for recipient in recipients {
                let mut rcpt = RcptState::new(mail.sender.clone(), accepted.clone(), recipient.clone(), utf8);
                let mut step = self.stage(&mut rcpt, Some(recipient.as_str().to_string())).await;
                if step.outcome == Outcome::Continue {
                    for mailbox in rcpt.to_relay() {
                        if !accepted.contains(&mailbox) {
                            accepted.push(mailbox);
                        }
                    }
                }
                step.after = After::Recipients(rcpt.to_relay());
                let disconnected = matches!(step.outcome, Outcome::Disconnect(_));
                steps.push(step);
                if disconnected {
                    break;
                }
            }
        }
        let disconnected = steps.iter().any(|s| matches!(s.outcome, Outcome::Disconnect(_)));
        if let Some((headers, body)) = message
            && !ended(&steps)
            && !disconnected
            && !accepted.is_empty()
        {
            let auth = &mut self.conn.auth;
            auth.dkim = case.auth.dkim.clone();
            auth.arc = case.auth.arc;
            auth.dmarc = case.auth.dmarc.clone();
            let len = body.len() as u64;
            let mut data = DataState::new(mail.sender, accepted, headers, Arc::new(body), len, utf8, MAX_MESSAGE_SIZE);
            let mut step = self.stage(&mut data, None).await;
            step.after = After::Data(Box::new(data));
            steps.push(step);
        }
        self.transaction = None;
        Ok(steps)
    }

    async fn stage<S: StageState>(&mut self, state: &mut S, recipient: Option<String>) -> Step {
        let mut calls = Calls::default();
        let notes = NoteScopes { session: &mut self.session, transaction: self.transaction.as_mut() };
        let outcome = self.chain.run_observed(&self.conn, notes, state, &mut calls).await;
        Step { stage: S::STAGE, recipient, calls: calls.0, outcome, after: After::Nothing }
    }
}
