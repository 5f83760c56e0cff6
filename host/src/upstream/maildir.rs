//! The embedded default upstream: delivery into a Maildir (cr.yp.to/proto/maildir.html).
//!
//! A message is written to `tmp/`, fsynced, renamed into `new/` and the directory fsynced before
//! the client hears 250, so an acknowledged message survives a crash. Files use LF line endings
//! as Maildir readers expect, and start with `Return-Path:` and one `Delivered-To:` per recipient
//! (RFC 5321 §4.4), since a Maildir has no other place to keep the envelope.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::io::AsyncWriteExt;

use super::{Sender, UpstreamError};
use crate::message::Outgoing;
use crate::replies;
use crate::smtp::{Mailbox, Reply};

/// A Maildir root with its `tmp/`, `new/` and `cur/` folders.
#[derive(Debug)]
pub struct Maildir {
    root: PathBuf,
    hostname: String,
    sequence: AtomicU64,
}

impl Maildir {
    /// Opens the Maildir at `root`, creating it if needed.
    pub fn create(root: PathBuf, hostname: String) -> anyhow::Result<Self> {
        for sub in ["tmp", "new", "cur"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("cannot create Maildir folder {}: {e}", dir.display()))?;
        }
        // A host name with '/' or ':' would break Maildir file names.
        let hostname = hostname.replace('/', "\\057").replace(':', "\\072");
        Ok(Self { root, hostname, sequence: AtomicU64::new(0) })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A file name unique to this process and moment: `secs.M<micros>P<pid>Q<seq>.host`.
    fn unique_name(&self) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        format!(
            "{}.M{}P{}Q{}.{}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            self.sequence.fetch_add(1, Ordering::Relaxed),
            self.hostname
        )
    }
}

/// One session's delivery state: the envelope of the current transaction.
#[derive(Debug)]
pub struct MaildirSession {
    maildir: Arc<Maildir>,
    sender: Option<Mailbox>,
    recipients: Vec<Mailbox>,
}

impl MaildirSession {
    pub fn new(maildir: Arc<Maildir>) -> Self {
        Self { maildir, sender: None, recipients: Vec::new() }
    }

    pub fn describe(&self) -> String {
        format!("maildir:{}", self.maildir.root.display())
    }

    pub fn mail(&mut self, sender: &Sender<'_>) -> Reply {
        self.sender = Some(sender.mailbox.clone());
        self.recipients.clear();
        replies::sender_ok()
    }

    pub fn rcpt(&mut self, recipient: &Mailbox) -> Reply {
        self.recipients.push(recipient.clone());
        replies::recipient_ok()
    }

    pub fn rset(&mut self) {
        self.sender = None;
        self.recipients.clear();
    }

    /// Writes the message into `new/`; returns 250 only once it is durable.
    pub async fn deliver(&mut self, message: &mut Outgoing<'_>) -> Result<Reply, UpstreamError> {
        let name = self.maildir.unique_name();
        let tmp = self.maildir.root.join("tmp").join(&name);
        let new = self.maildir.root.join("new").join(&name);
        let result = self.write_durably(message, &tmp, &new).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        self.rset();
        result.map_err(UpstreamError::Local)?;
        Ok(replies::delivered_as(&name))
    }

    async fn write_durably(&self, message: &mut Outgoing<'_>, tmp: &Path, new: &Path) -> std::io::Result<()> {
        let mut file = tokio::fs::OpenOptions::new().write(true).create_new(true).open(tmp).await?;
        let mut head = format!("Return-Path: <{}>\n", self.sender.as_ref().map_or("", Mailbox::as_str));
        for rcpt in &self.recipients {
            head.push_str(&format!("Delivered-To: {}\n", rcpt.as_str()));
        }
        let mut out = Vec::with_capacity(crate::message::CHUNK);
        out.extend_from_slice(head.as_bytes());
        let mut crlf = CrlfToLf::default();
        message.rewind().await?;
        while let Some(chunk) = message.next_chunk().await? {
            crlf.convert(chunk, &mut out);
            file.write_all(&out).await?;
            out.clear();
        }
        crlf.finish(&mut out);
        file.write_all(&out).await?;
        file.sync_all().await?;
        drop(file);
        tokio::fs::rename(tmp, new).await?;
        let dir = new.parent().expect("new/ has a parent").to_path_buf();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }
}

/// Converts CRLF to LF across chunk boundaries.
#[derive(Debug, Default)]
struct CrlfToLf {
    pending_cr: bool,
}

impl CrlfToLf {
    fn convert(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        for &b in chunk {
            if std::mem::take(&mut self.pending_cr) && b != b'\n' {
                out.push(b'\r');
            }
            if b == b'\r' {
                self.pending_cr = true;
            } else {
                out.push(b);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_line_endings_across_chunks() {
        let mut c = CrlfToLf::default();
        let mut out = Vec::new();
        for chunk in [&b"a\r"[..], b"\nb\r\n\r", b"x\r"] {
            c.convert(chunk, &mut out);
        }
        c.finish(&mut out);
        assert_eq!(out, b"a\nb\n\rx\r");
    }
}
