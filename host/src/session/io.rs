//! The client connection as the session uses it: an input buffer filled from the socket, and
//! an output buffer of replies flushed before the session waits for input (RFC 2920 §3.2) or
//! hands control to the client (354, closing). The socket is plain TCP or TLS; STARTTLS turns
//! the one into the other in place.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::smtp::Reply;
use crate::tls::Negotiated;

/// Input is read in pieces of this size while reading commands (kept small: idle sessions are
/// many) and of [`DATA_READ`] within DATA.
pub const COMMAND_READ: usize = 4 << 10;
pub const DATA_READ: usize = 64 << 10;

/// The client's socket.
#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// During a handshake, and after a failed one.
    Gone,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is gone")
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Gone => Poll::Ready(Ok(())),
        }
    }
}

#[derive(Debug)]
pub struct ClientIo {
    stream: Stream,
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

/// Why a TLS handshake did not complete; the connection is unusable either way.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake timed out")]
    Timeout,
    #[error("TLS handshake failed: {0}")]
    Failed(io::Error),
}

impl ClientIo {
    pub fn new(stream: TcpStream, write_timeout: Duration) -> Self {
        Self { stream: Stream::Plain(stream), input: BytesMut::new(), output: Vec::new(), write_timeout }
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
        let write = async {
            self.stream.write_all(&self.output).await?;
            self.stream.flush().await
        };
        let result = tokio::time::timeout(self.write_timeout, write).await;
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
        match self.stream.read_buf(&mut self.input).await {
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

    /// Runs the server side of a TLS handshake on the plain connection, within `limit`.
    /// Whatever the client sent before it in plaintext and was not read yet is discarded, never
    /// executed (RFC 3207 §4.2).
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor, limit: Duration) -> Result<Negotiated, HandshakeError> {
        self.input.clear();
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err(HandshakeError::Failed(gone()));
        };
        let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
            Err(_) => return Err(HandshakeError::Timeout),
            Ok(Err(err)) => return Err(HandshakeError::Failed(err)),
            Ok(Ok(tls)) => tls,
        };
        let (_, conn) = tls.get_ref();
        let negotiated = Negotiated::of(conn, conn.server_name());
        self.stream = Stream::Tls(Box::new(tls));
        Ok(negotiated)
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }

    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = tokio::time::timeout(self.write_timeout, self.stream.shutdown()).await;
    }
}
