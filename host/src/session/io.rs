//! The client connection as the session uses it: an input buffer filled from the socket, and
//! an output buffer of replies flushed before the session waits for input (RFC 2920 §3.2) or
//! hands control to the client (354, closing).

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::smtp::Reply;

/// Input is read in pieces of this size while reading commands (kept small: idle sessions are
/// many) and of [`DATA_READ`] within DATA.
pub const COMMAND_READ: usize = 4 << 10;
pub const DATA_READ: usize = 64 << 10;

#[derive(Debug)]
pub struct ClientIo {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    /// Bytes received and not yet consumed.
    pub input: BytesMut,
    output: Vec<u8>,
    write_timeout: Duration,
}

/// What a read produced.
#[derive(Debug)]
pub enum ReadOutcome {
    /// Some bytes were appended to `input`.
    Data,
    /// The client closed its side.
    Eof,
    Failed(std::io::Error),
}

impl ClientIo {
    pub fn new(reader: OwnedReadHalf, writer: OwnedWriteHalf, write_timeout: Duration) -> Self {
        Self { reader, writer, input: BytesMut::new(), output: Vec::new(), write_timeout }
    }

    pub fn queue(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Writes queued replies. A client that does not read them within the write timeout is
    /// treated as gone.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(self.write_timeout, self.writer.write_all(&self.output)).await;
        self.output.clear();
        match result {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "client does not read replies")),
        }
    }

    /// Reads more input. Cancel-safe: if the future is dropped, no bytes are lost.
    pub async fn read_more(&mut self, chunk: usize) -> ReadOutcome {
        if self.input.capacity() - self.input.len() < chunk / 4 {
            self.input.reserve(chunk);
        }
        match self.reader.read_buf(&mut self.input).await {
            Ok(0) => ReadOutcome::Eof,
            Ok(_) => ReadOutcome::Data,
            Err(e) => ReadOutcome::Failed(e),
        }
    }

    /// Gives back the memory of a large input buffer once it is empty (after DATA).
    pub fn shrink_input(&mut self) {
        if self.input.is_empty() && self.input.capacity() > COMMAND_READ {
            self.input = BytesMut::new();
        }
    }

    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
    }
}
