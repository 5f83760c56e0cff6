//! A received message on its way upstream: its content held in memory up to a threshold and
//! spilled to an unlinked temporary file above it ([`MessageBuffer`]), the `Received:` trace
//! header the proxy prepends (RFC 5321 §4.4), the header section as plugins see and edit it
//! ([`headers`]), and the edited message as it is sent ([`outgoing`]).

pub mod headers;
pub mod outgoing;

pub use headers::HeaderSection;
pub use outgoing::Outgoing;

use std::io::SeekFrom;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::fs::File;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Size of the chunks a message is read back in.
pub const CHUNK: usize = 64 << 10;

/// Message content, CRLF line endings, not dot-stuffed.
#[derive(Debug)]
pub struct MessageBuffer {
    memory: Vec<u8>,
    file: Option<File>,
    len: u64,
    memory_limit: usize,
    spool_dir: PathBuf,
    /// Read position in `memory` while reading back.
    read_pos: usize,
    /// Read buffer when the content is in a file.
    scratch: Vec<u8>,
}

impl MessageBuffer {
    pub fn new(memory_limit: usize, spool_dir: &Path) -> Self {
        Self {
            memory: Vec::new(),
            file: None,
            len: 0,
            memory_limit,
            spool_dir: spool_dir.to_path_buf(),
            read_pos: 0,
            scratch: Vec::new(),
        }
    }

    /// Content length in octets.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True once the content has moved to a file.
    pub fn is_spilled(&self) -> bool {
        self.file.is_some()
    }

    pub async fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.memory.len() + bytes.len() <= self.memory_limit {
            self.memory.extend_from_slice(bytes);
            return Ok(());
        }
        if self.file.is_none() {
            let dir = self.spool_dir.clone();
            let std_file = tokio::task::spawn_blocking(move || tempfile::tempfile_in(dir))
                .await
                .map_err(std::io::Error::other)??;
            let mut file = File::from_std(std_file);
            file.write_all(&std::mem::take(&mut self.memory)).await?;
            self.file = Some(file);
        }
        let file = self.file.as_mut().expect("spilled above");
        file.write_all(bytes).await
    }

    /// Starts reading the content from the beginning with [`MessageBuffer::next_chunk`].
    pub async fn rewind(&mut self) -> std::io::Result<()> {
        self.read_pos = 0;
        if let Some(file) = &mut self.file {
            file.flush().await?;
            file.seek(SeekFrom::Start(0)).await?;
        }
        Ok(())
    }

    /// Continues reading from `offset` (after [`MessageBuffer::rewind`]).
    pub async fn seek(&mut self, offset: u64) -> std::io::Result<()> {
        self.read_pos = offset.min(self.len) as usize;
        if let Some(file) = &mut self.file {
            file.flush().await?;
            file.seek(SeekFrom::Start(offset)).await?;
        }
        Ok(())
    }

    /// The whole content in place: the memory buffer, or the spilled file mapped read-only.
    pub async fn view(&mut self) -> std::io::Result<ContentView<'_>> {
        match &mut self.file {
            None => Ok(ContentView::Memory(&self.memory)),
            Some(file) => {
                file.flush().await?;
                // SAFETY: the file was created by `tempfile_in` and unlinked at once, so no other
                // process can reach it, and this buffer only appends to it; the map lives no
                // longer than this `&mut self` borrow, during which nothing is written.
                let map = unsafe { memmap2::Mmap::map(&*file)? };
                Ok(ContentView::Mapped(map))
            }
        }
    }

    /// Up to `max` octets from `offset` on, for plugin bodies.
    ///
    /// Copied from the [`view`](MessageBuffer::view), in one step. Read through tokio's `File`
    /// instead, a spilled 1 MiB body took sixteen round trips through the blocking pool (a
    /// thread wakeup each) and two copies per chunk (the file's own buffer, then ours).
    pub async fn read_prefix(&mut self, offset: u64, max: usize) -> std::io::Result<Vec<u8>> {
        let content = self.view().await?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(content.len());
        let end = start.saturating_add(max).min(content.len());
        Ok(content[start..end].to_vec())
    }

    /// Reads from the start up to and including the blank line that ends the header section
    /// (or `max` octets, or the whole message if shorter), without touching the body beyond.
    pub async fn read_header_section(&mut self, max: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.rewind().await?;
        while out.len() < max {
            let Some(chunk) = self.next_chunk().await? else { break };
            let searched_from = out.len().saturating_sub(3);
            out.extend_from_slice(&chunk[..chunk.len().min(max - out.len())]);
            if out.starts_with(b"\r\n") {
                out.truncate(2);
                break;
            }
            if let Some(end) = memchr::memmem::find(&out[searched_from..], b"\r\n\r\n") {
                out.truncate(searched_from + end + 4);
                break;
            }
        }
        Ok(out)
    }

    /// The next piece of content (at most [`CHUNK`] octets), or `None` at the end.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<&[u8]>> {
        match &mut self.file {
            None => {
                let start = self.read_pos.min(self.memory.len());
                let end = (start + CHUNK).min(self.memory.len());
                self.read_pos = end;
                Ok((end > start).then(|| &self.memory[start..end]))
            }
            Some(file) => {
                self.scratch.resize(CHUNK, 0);
                let n = file.read(&mut self.scratch).await?;
                Ok((n > 0).then(|| &self.scratch[..n]))
            }
        }
    }
}

/// A message's content in place, see [`MessageBuffer::view`].
pub enum ContentView<'a> {
    Memory(&'a [u8]),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for ContentView<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ContentView::Memory(bytes) => bytes,
            ContentView::Mapped(map) => map,
        }
    }
}

/// What the `Received:` header says about the hop.
#[derive(Debug)]
pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    /// `SMTP`, `ESMTP`, `ESMTPS`, `ESMTPSA`, `UTF8SMTPS`... (RFC 3848, RFC 6531).
    pub protocol: &'a str,
    /// The TLS session in words, e.g. `using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256`.
    pub tls: Option<&'a str>,
    pub id: &'a str,
    /// Named only when there is exactly one recipient, so a copy does not disclose the others.
    pub single_recipient: Option<&'a str>,
    pub time: SystemTime,
}

/// Renders the `Received:` header, folded, CRLF-terminated.
pub fn received_header(t: &TraceInfo<'_>) -> String {
    let ip = match t.client_ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let mut h = format!(
        "Received: from {} ([{ip}])\r\n\tby {} (wasmtp) with {} id {}",
        header_safe(t.helo),
        header_safe(t.hostname),
        t.protocol,
        t.id
    );
    if let Some(tls) = t.tls {
        h.push_str(&format!("\r\n\t({tls})"));
    }
    if let Some(rcpt) = t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", header_safe(rcpt)));
    }
    h.push_str(&format!(";\r\n\t{}\r\n", rfc5322_date(t.time)));
    h
}

/// Keeps a client-supplied word from breaking the header: only visible ASCII (and UTF-8 letters)
/// outside of comment delimiters, at most 255 characters.
pub fn header_safe(s: &str) -> String {
    let safe = |c: char| !(c.is_control() || c.is_whitespace() || is_format(c) || matches!(c, '(' | ')' | ';' | '\\'));
    cut_at_octets(s.chars().map(|c| if safe(c) { c } else { '?' }).collect(), MAX_CLIENT_WORD)
}

/// Keeps a client-supplied word from breaking a reply line: printable ASCII only, at most
/// [`MAX_CLIENT_WORD`] octets, so a reply that quotes it stays within 512 octets.
pub fn reply_safe(s: &str) -> String {
    cut_at_octets(s.chars().map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect(), MAX_CLIENT_WORD)
}

/// The most octets of a client-supplied word the proxy writes into a header or reply.
pub const MAX_CLIENT_WORD: usize = 255;

/// Unicode format characters (bidirectional overrides, zero-width joiners, the BOM...) that
/// would change how a header reads without changing what it says.
fn is_format(c: char) -> bool {
    matches!(c, '\u{ad}' | '\u{600}'..='\u{605}' | '\u{61c}' | '\u{6dd}' | '\u{70f}' | '\u{180e}'
        | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}' | '\u{feff}'
        | '\u{fff9}'..='\u{fffb}' | '\u{e0001}' | '\u{e0020}'..='\u{e007f}')
}

fn cut_at_octets(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `Mon, 23 Nov 2026 16:11:04 +0000` (RFC 5322 §3.3), in UTC.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    mail_builder::headers::date::Date::new(secs as i64).to_rfc822()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_dates() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_450_264);
        assert_eq!(rfc5322_date(t), "Mon, 23 Nov 2026 16:11:04 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn received_header_is_folded_and_safe() {
        let h = received_header(&TraceInfo {
            helo: "evil (x)\r\nBcc: y",
            client_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mx.example",
            protocol: "ESMTP",
            tls: None,
            id: "ABC",
            single_recipient: Some("a@b.example"),
            time: UNIX_EPOCH,
        });
        assert_eq!(
            h,
            "Received: from evil??x???Bcc:?y ([192.0.2.1])\r\n\tby mx.example (wasmtp) with ESMTP id ABC\r\n\
             \tfor <a@b.example>;\r\n\tThu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }

    #[test]
    fn client_words_are_cut_in_octets_and_lose_format_characters() {
        let long = "\u{1F600}".repeat(126);
        assert_eq!(long.len(), 504);
        let safe = header_safe(&long);
        assert!(safe.len() <= MAX_CLIENT_WORD, "{}", safe.len());
        assert_eq!(safe, "\u{1F600}".repeat(63));
        assert_eq!(header_safe("evil\u{202e}txt.exe"), "evil?txt.exe");
        assert_eq!(reply_safe("mx.\u{e9}xample\r\n"), "mx.?xample??");
        assert_eq!(reply_safe(&"a".repeat(1000)).len(), MAX_CLIENT_WORD);
    }

    #[tokio::test]
    async fn spills_to_disk_above_the_threshold_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut buf = MessageBuffer::new(100, dir.path());
        let mut expect = Vec::new();
        for i in 0..50u8 {
            let chunk = vec![i; 7];
            buf.append(&chunk).await.unwrap();
            expect.extend_from_slice(&chunk);
        }
        assert!(buf.is_spilled());
        assert_eq!(&*buf.view().await.unwrap(), &expect[..], "the mapped file is the content");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "spill file is unlinked");
        for _ in 0..2 {
            let mut got = Vec::new();
            buf.rewind().await.unwrap();
            while let Some(chunk) = buf.next_chunk().await.unwrap() {
                got.extend_from_slice(chunk);
            }
            assert_eq!(got, expect);
        }
    }

    #[tokio::test]
    async fn a_prefix_is_cut_at_its_bound_in_memory_and_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let content: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for memory_limit in [4096, 100] {
            let mut buf = MessageBuffer::new(memory_limit, dir.path());
            buf.append(&content[..600]).await.unwrap();
            buf.append(&content[600..]).await.unwrap();
            assert_eq!(buf.is_spilled(), memory_limit < 1000);
            assert_eq!(buf.read_prefix(10, 300).await.unwrap(), &content[10..310]);
            assert_eq!(buf.read_prefix(900, 300).await.unwrap(), &content[900..], "to the end");
            assert_eq!(buf.read_prefix(2000, 300).await.unwrap(), b"", "past the end");
            // Reading a prefix leaves the content intact for relaying.
            let mut got = Vec::new();
            buf.rewind().await.unwrap();
            while let Some(chunk) = buf.next_chunk().await.unwrap() {
                got.extend_from_slice(chunk);
            }
            assert_eq!(got, content);
        }
    }
}
