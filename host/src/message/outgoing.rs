//! The message as it leaves the proxy: our `Received:` header and the (possibly edited) header
//! section in memory, then the body — the original bytes from the [`MessageBuffer`] or a
//! plugin's replacement.

use std::sync::Arc;

use super::{CHUNK, MessageBuffer};

/// Where the body comes from.
#[derive(Debug)]
pub enum Body {
    /// The received content from this offset on.
    Original { offset: u64 },
    /// A plugin's replacement body.
    Replaced(Arc<Vec<u8>>),
}

/// A message ready to be streamed: read it with [`Outgoing::rewind`] and
/// [`Outgoing::next_chunk`].
#[derive(Debug)]
pub struct Outgoing<'a> {
    prefix: Vec<u8>,
    body: Body,
    buffer: &'a mut MessageBuffer,
    /// Read position: `None` before the prefix, then body reading.
    prefix_sent: bool,
    replaced_pos: usize,
}

impl<'a> Outgoing<'a> {
    /// `prefix` is everything before the body (trace header, header section, blank line).
    pub fn new(prefix: Vec<u8>, body: Body, buffer: &'a mut MessageBuffer) -> Self {
        Self { prefix, body, buffer, prefix_sent: false, replaced_pos: 0 }
    }

    /// The received message unchanged behind `prefix` (the trace header).
    pub fn unchanged(prefix: Vec<u8>, buffer: &'a mut MessageBuffer) -> Self {
        Self::new(prefix, Body::Original { offset: 0 }, buffer)
    }

    /// Puts `header` (a complete header field) in front of everything else.
    pub fn prepend(&mut self, header: &[u8]) {
        self.prefix.splice(0..0, header.iter().copied());
    }

    /// Octets that will be sent.
    pub fn len(&self) -> u64 {
        self.prefix.len() as u64
            + match &self.body {
                Body::Original { offset } => self.buffer.len().saturating_sub(*offset),
                Body::Replaced(body) => body.len() as u64,
            }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub async fn rewind(&mut self) -> std::io::Result<()> {
        self.prefix_sent = false;
        self.replaced_pos = 0;
        if let Body::Original { offset } = self.body {
            self.buffer.rewind().await?;
            self.buffer.seek(offset).await?;
        }
        Ok(())
    }

    /// The next piece of the message, or `None` at the end.
    pub async fn next_chunk(&mut self) -> std::io::Result<Option<&[u8]>> {
        if !self.prefix_sent {
            self.prefix_sent = true;
            if !self.prefix.is_empty() {
                return Ok(Some(&self.prefix));
            }
        }
        match &self.body {
            Body::Original { .. } => self.buffer.next_chunk().await,
            Body::Replaced(body) => {
                let start = self.replaced_pos.min(body.len());
                let end = (start + CHUNK).min(body.len());
                self.replaced_pos = end;
                Ok((end > start).then(|| &body[start..end]))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(out: &mut Outgoing<'_>) -> Vec<u8> {
        let mut all = Vec::new();
        out.rewind().await.unwrap();
        while let Some(chunk) = out.next_chunk().await.unwrap() {
            all.extend_from_slice(chunk);
        }
        all
    }

    #[tokio::test]
    async fn streams_prefix_then_body() {
        let dir = tempfile::tempdir().unwrap();
        let mut buffer = MessageBuffer::new(8, dir.path());
        buffer.append(b"Subject: x\r\n\r\nbody text\r\n").await.unwrap();
        let mut out = Outgoing::new(b"P: 1\r\n".to_vec(), Body::Original { offset: 14 }, &mut buffer);
        assert_eq!(collect(&mut out).await, b"P: 1\r\nbody text\r\n");
        assert_eq!(collect(&mut out).await, b"P: 1\r\nbody text\r\n", "rewind restarts");
        assert_eq!(out.len(), 17);
        let mut out =
            Outgoing::new(b"P: 1\r\n\r\n".to_vec(), Body::Replaced(Arc::new(b"new\r\n".to_vec())), &mut buffer);
        assert_eq!(collect(&mut out).await, b"P: 1\r\n\r\nnew\r\n");
    }
}
