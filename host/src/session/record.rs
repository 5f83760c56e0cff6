//! Session recording (`[record]`): what each session gave the plugin chain — connection facts,
//! HELO names, envelope, message, authentication results — and what every plugin decided, one
//! JSON file per session (`<session id>.json`, messages beside it as `<session id>.<n>.eml`),
//! for `wasmtp replay` to run again against a new plugin build.
//!
//! The session fills a [`SessionRecord`] as it goes, has the [`Recorder`] write each message
//! when it is received, and hands it the record when the session ends. The recorder keeps the directory within `max_sessions` and `max_bytes` (counting what
//! is there already) and stops recording, with one warning, when a bound is reached; it never
//! deletes anything. A recording that cannot be written is logged and dropped: recording never
//! affects mail.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::auth::AuthResults;
use crate::config::RecordConfig;
use crate::filter::api::Stage;
use crate::filter::{Called, Observer, Plugin};

/// One session as recorded.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionRecord {
    pub session: String,
    /// The listener the client connected to (its plugins are the chain).
    pub listener: Option<SocketAddr>,
    pub client: Option<SocketAddr>,
    /// The client's name as iprev verified it.
    pub client_name: Option<String>,
    /// The TLS version, when the session ended under TLS.
    pub tls: Option<String>,
    pub authenticated_as: Option<String>,
    /// iprev and the HELO name's SPF, as the session's stages saw them.
    pub auth: AuthResults,
    /// Every HELO/EHLO name, in order.
    pub helos: Vec<String>,
    /// Decisions at connect and ehlo.
    pub decisions: Vec<RecordedDecision>,
    pub transactions: Vec<TransactionRecord>,
}

/// One mail transaction as recorded: from MAIL to its end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TransactionRecord {
    /// The sender as the client gave it ("" for the null sender).
    pub from: String,
    /// The MAIL parameters plugins were shown (`SIZE=1234`, `BODY=8BITMIME`, `SMTPUTF8`).
    pub mail_params: Vec<String>,
    /// Each recipient the rcpt stage was asked about, as the client gave it.
    pub rcpt: Vec<String>,
    /// SPF of MAIL FROM; DKIM, ARC and DMARC of the message.
    pub auth: AuthResults,
    /// The message as the client sent it, a file beside the recording; none when the
    /// transaction ended before its data stage.
    pub message: Option<String>,
    /// Only the message's header section was kept (`redact_bodies`).
    pub body_redacted: bool,
    /// Decisions at mail, rcpt and data.
    pub decisions: Vec<RecordedDecision>,
}

/// What one plugin decided at one stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedDecision {
    pub plugin: String,
    pub stage: String,
    /// The recipient, at rcpt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// [`Called::summary`].
    pub decision: String,
}

/// Collects the decisions of one stage's calls.
pub struct Decisions<'a> {
    pub out: &'a mut Vec<RecordedDecision>,
    pub recipient: Option<String>,
}

impl Observer for Decisions<'_> {
    fn wants_edits(&self) -> bool {
        true
    }

    fn called(&mut self, plugin: &Plugin, stage: Stage, called: Called<'_>) {
        self.out.push(RecordedDecision {
            plugin: plugin.name.to_string(),
            stage: stage.name().to_string(),
            recipient: self.recipient.clone(),
            decision: called.summary(),
        });
    }
}

/// The session fills its record as it goes; messages are written as they arrive (so a
/// session holds no message in memory for its recording), the record when the session ends.
impl SessionRecord {
    /// The transaction being recorded (the last one begun).
    pub fn transaction(&mut self) -> Option<&mut TransactionRecord> {
        self.transactions.last_mut()
    }

    /// Keeps the authentication results a stage saw: iprev and the HELO's SPF for the session,
    /// the rest for the current transaction.
    pub fn auth_results(&mut self, auth: &AuthResults) {
        self.auth.iprev = auth.iprev.clone();
        self.auth.spf_helo = auth.spf_helo.clone();
        if let Some(txn) = self.transactions.last_mut() {
            txn.auth = AuthResults { iprev: None, spf_helo: None, ..auth.clone() };
        }
    }
}

/// The length of the header section with the blank line that ends it (all of `raw` when
/// there is no body).
fn header_section_len(raw: &[u8]) -> usize {
    if raw.starts_with(b"\r\n") {
        return 2;
    }
    raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |at| at + 4)
}

/// Writes recordings into the directory, within its bounds.
#[derive(Debug)]
pub struct Recorder {
    dir: PathBuf,
    config: RecordConfig,
    /// Sessions and bytes in the directory.
    used: Mutex<(u64, u64)>,
    full: AtomicBool,
}

impl Recorder {
    /// Opens (creating) the directory and counts what is in it already.
    pub fn open(config: &RecordConfig) -> anyhow::Result<Option<Self>> {
        let Some(dir) = &config.dir else { return Ok(None) };
        std::fs::create_dir_all(dir).with_context(|| format!("field `record.dir`: cannot create {}", dir.display()))?;
        let mut used = (0, 0);
        for entry in std::fs::read_dir(dir).with_context(|| format!("field `record.dir`: {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".json") {
                used.0 += 1;
            }
            if name.ends_with(".json") || name.ends_with(".eml") {
                used.1 += entry.metadata().map_or(0, |m| m.len());
            }
        }
        tracing::info!(dir = %dir.display(), sessions = used.0, bytes = used.1, "recording sessions");
        Ok(Some(Self {
            dir: dir.clone(),
            config: config.clone(),
            used: Mutex::new(used),
            full: AtomicBool::new(false),
        }))
    }

    /// A new session's recording, unless the directory is full.
    pub fn begin(&self, session: &str) -> Option<SessionRecord> {
        if self.full.load(Ordering::Relaxed) {
            return None;
        }
        Some(SessionRecord { session: session.into(), ..SessionRecord::default() })
    }

    /// Writes the message of `recording`'s current transaction beside it (only its header
    /// section with `redact_bodies`). False when it does not fit or cannot be written: the
    /// session's recording then ends (a recording without its message could not be replayed).
    pub async fn message(&self, recording: &mut SessionRecord, raw: &[u8]) -> bool {
        let redact = self.config.redact_bodies;
        let kept = if redact { &raw[..header_section_len(raw)] } else { raw };
        let n = recording.transactions.len();
        let name = format!("{}.{n}.eml", recording.session);
        if !self.reserve(0, kept.len() as u64) {
            return false;
        }
        if let Err(err) = write(&self.dir, &name, kept.to_vec()).await {
            tracing::error!(error = %err, dir = %self.dir.display(), "cannot write a message of the session's recording");
            return false;
        }
        match recording.transaction() {
            Some(txn) => {
                txn.message = Some(name);
                txn.body_redacted = redact;
                true
            }
            None => false,
        }
    }

    /// Writes a finished session's recording, if it fits.
    pub async fn finish(&self, recording: SessionRecord) {
        let json = match serde_json::to_vec_pretty(&recording) {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(error = %err, "cannot encode the session's recording");
                return;
            }
        };
        if !self.reserve(1, json.len() as u64) {
            return;
        }
        let name = format!("{}.json", recording.session);
        if let Err(err) = write(&self.dir, &name, json).await {
            tracing::error!(error = %err, dir = %self.dir.display(), "cannot write the session's recording");
        }
    }

    /// Counts `sessions` and `bytes` as written if they fit within the bounds; once something
    /// does not, recording stops, with one warning.
    fn reserve(&self, sessions: u64, bytes: u64) -> bool {
        let mut used = self.used.lock().expect("not poisoned");
        let fits = used.0 + sessions <= self.config.max_sessions && used.1 + bytes <= self.config.max_bytes.bytes();
        if fits && !self.full.load(Ordering::Relaxed) {
            used.0 += sessions;
            used.1 += bytes;
            return true;
        }
        if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                dir = %self.dir.display(),
                sessions = used.0,
                bytes = used.1,
                max_sessions = self.config.max_sessions,
                max_bytes = self.config.max_bytes.bytes(),
                "recording stopped: record.dir reached its bound (move the recordings away and reload to go on)"
            );
        }
        false
    }
}

/// Writes `name` whole under a temporary name, then renames it, so a reader never sees half a
/// file. Messages are written before the record that names them.
async fn write(dir: &Path, name: &str, bytes: Vec<u8>) -> std::io::Result<()> {
    let temp = dir.join(format!(".{name}.tmp"));
    tokio::fs::write(&temp, bytes).await?;
    tokio::fs::rename(&temp, dir.join(name)).await
}

/// Reads the recordings in `dir`, oldest session first (session ids count up).
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<SessionRecord>> {
    let mut records = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            let record: SessionRecord = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a wasmtp recording", path.display()))?;
            records.push(record);
        }
    }
    records.sort_by(|a, b| a.session.cmp(&b.session));
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_the_header_section_and_its_blank_line() {
        assert_eq!(header_section_len(b"A: 1\r\nB: 2\r\n\r\nbody\r\n"), 14);
        assert_eq!(header_section_len(b"A: 1\r\n"), 6);
        assert_eq!(header_section_len(b"\r\nbody"), 2);
    }

    #[tokio::test]
    async fn the_recorder_stops_at_its_bound_and_counts_what_was_there() {
        let dir = tempfile::tempdir().unwrap();
        let config = RecordConfig {
            dir: Some(dir.path().into()),
            max_sessions: 2,
            redact_bodies: true,
            ..RecordConfig::default()
        };
        let recorder = Recorder::open(&config).unwrap().unwrap();
        for id in ["s1", "s2", "s3"] {
            let mut recording = recorder.begin(id).unwrap();
            recording.transactions.push(TransactionRecord::default());
            assert!(recorder.message(&mut recording, b"Subject: x\r\n\r\nsecret\r\n").await);
            recorder.finish(recording).await;
        }
        assert!(recorder.begin("s4").is_none(), "full: no new recordings");
        let records = read_dir(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.session.as_str()).collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(std::fs::read(dir.path().join("s1.1.eml")).unwrap(), b"Subject: x\r\n\r\n");
        let reopened = Recorder::open(&config).unwrap().unwrap();
        assert_eq!(reopened.used.lock().unwrap().0, 2);
    }

    #[tokio::test]
    async fn a_message_over_the_byte_bound_ends_the_recording() {
        let dir = tempfile::tempdir().unwrap();
        let max_bytes = crate::config::ByteSize(100);
        let config = RecordConfig { dir: Some(dir.path().into()), max_bytes, ..RecordConfig::default() };
        let recorder = Recorder::open(&config).unwrap().unwrap();
        let mut recording = recorder.begin("s1").unwrap();
        recording.transactions.push(TransactionRecord::default());
        assert!(!recorder.message(&mut recording, &[b'x'; 200]).await, "does not fit");
        assert!(recorder.begin("s2").is_none(), "recording stopped");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing half written");
    }
}
