//! One connection to the upstream SMTP server: its socket (plain, or TLS after STARTTLS), what
//! its EHLO offered, and the exchange of commands and replies — every reply validated, and an
//! upstream that sends anything nobody asked for treated as a protocol error.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{Capabilities, Stage, UpstreamError};
use crate::smtp::{EnhancedCode, Reply};
use crate::tls::{Negotiated, UpstreamTlsClient};

/// Longest reply line accepted from the upstream.
const MAX_LINE: usize = 4096;
/// Most lines in one upstream reply.
const MAX_LINES: usize = 100;
/// How long a QUIT may take before the connection is simply dropped.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug)]
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
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

/// One open upstream connection.
#[derive(Debug)]
pub(super) struct Connection {
    io: BufReader<Stream>,
    /// What the upstream's last EHLO on this connection offered.
    pub caps: Capabilities,
    /// The TLS session, after STARTTLS.
    pub tls: Option<Negotiated>,
    /// XCLIENT told the upstream who the client is: the connection belongs to that session
    /// and is never pooled (Postfix accepts no second identity on it).
    pub bound: bool,
    /// The upstream offered XCLIENT on this connection but refused it: not asked again here.
    pub xclient_refused: bool,
}

impl Connection {
    /// Connects within `limit`.
    pub async fn open(addr: String, host: &str, port: u16, limit: Duration) -> Result<Self, UpstreamError> {
        let stream = match timeout(limit, TcpStream::connect((host, port))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => return Err(UpstreamError::Timeout(Stage::Connect)),
        };
        stream.set_nodelay(true).map_err(|source| UpstreamError::Io { stage: Stage::Connect, source })?;
        Ok(Self {
            io: BufReader::with_capacity(16 << 10, Stream::Plain(stream)),
            caps: Capabilities::UNKNOWN,
            tls: None,
            bound: false,
            xclient_refused: false,
        })
    }

    /// Writes `bytes` (one or more complete command lines, or message data) within `limit`.
    pub async fn send(&mut self, bytes: &[u8], stage: Stage, limit: Duration) -> Result<(), UpstreamError> {
        let stream = self.io.get_mut();
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        match timeout(limit, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(UpstreamError::Io { stage, source }),
            Err(_) => Err(UpstreamError::Timeout(stage)),
        }
    }

    /// Sends one command and reads its reply. The upstream must have been silent before it and
    /// must send nothing after the reply: an upstream out of step is a protocol error, and the
    /// connection is never used again.
    pub async fn command(&mut self, line: &str, stage: Stage, limit: Duration) -> Result<Reply, UpstreamError> {
        debug_assert!(!line.contains(['\r', '\n', '\0']));
        self.check_quiet(stage)?;
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.send(&wire, stage, limit).await?;
        let reply = self.read_reply(stage, limit).await?;
        self.nothing_buffered(stage)?;
        Ok(reply)
    }

    /// Fails if bytes of a reply nobody asked for are already buffered.
    pub fn nothing_buffered(&self, stage: Stage) -> Result<(), UpstreamError> {
        if self.io.buffer().is_empty() {
            Ok(())
        } else {
            Err(UpstreamError::Protocol { stage, detail: "the upstream sent more than one reply".into() })
        }
    }

    /// Fails if the upstream sent anything since its last reply, or closed the connection,
    /// without waiting for it. Looks without blocking: one poll of the socket.
    pub fn check_quiet(&mut self, stage: Stage) -> Result<(), UpstreamError> {
        self.nothing_buffered(stage)?;
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(self.io.get_mut()).poll_read(&mut cx, &mut buf) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Err(UpstreamError::Closed(stage)),
            Poll::Ready(Ok(())) => {
                Err(UpstreamError::Protocol { stage, detail: "the upstream sent data nobody asked for".into() })
            }
            Poll::Ready(Err(source)) => Err(UpstreamError::Io { stage, source }),
        }
    }

    /// Reads one (possibly multiline) reply within `limit`.
    pub async fn read_reply(&mut self, stage: Stage, limit: Duration) -> Result<Reply, UpstreamError> {
        match timeout(limit, self.read_reply_inner(stage)).await {
            Ok(result) => result,
            Err(_) => Err(UpstreamError::Timeout(stage)),
        }
    }

    async fn read_reply_inner(&mut self, stage: Stage) -> Result<Reply, UpstreamError> {
        let protocol = |detail: &str| UpstreamError::Protocol { stage, detail: detail.to_string() };
        let mut code = None;
        let mut texts = Vec::new();
        loop {
            let line = self.read_line(stage).await?;
            let line = String::from_utf8_lossy(&line);
            let bytes = line.as_bytes();
            if bytes.len() < 3 || !bytes[..3].iter().all(u8::is_ascii_digit) {
                return Err(protocol("line does not start with a reply code"));
            }
            let this_code: u16 = line[..3].parse().map_err(|_| protocol("bad reply code"))?;
            if !(200..=599).contains(&this_code) && !matches!(this_code, 334 | 354) {
                return Err(protocol("reply code out of range"));
            }
            if !fits(stage, this_code) {
                return Err(protocol("reply code does not fit the command"));
            }
            if *code.get_or_insert(this_code) != this_code {
                return Err(protocol("reply lines carry different codes"));
            }
            let (last, text) = match bytes.get(3) {
                None => (true, ""),
                Some(b' ') => (true, &line[4..]),
                Some(b'-') => (false, &line[4..]),
                Some(_) => return Err(protocol("bad separator after reply code")),
            };
            texts.push(text.to_string());
            if last {
                break;
            }
            if texts.len() >= MAX_LINES {
                return Err(protocol("reply has too many lines"));
            }
        }
        let code = code.expect("at least one line was read");
        Ok(Reply::parse_upstream(code, &texts, default_enhanced(stage)))
    }

    /// One line without its line ending; a lone LF is accepted as a line end from the upstream.
    async fn read_line(&mut self, stage: Stage) -> Result<Vec<u8>, UpstreamError> {
        let mut line = Vec::new();
        loop {
            let buf = self.io.fill_buf().await.map_err(|source| UpstreamError::Io { stage, source })?;
            if buf.is_empty() {
                return Err(UpstreamError::Closed(stage));
            }
            let (take, done) = match memchr::memchr(b'\n', buf) {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if line.len() + take > MAX_LINE {
                return Err(UpstreamError::Protocol { stage, detail: "reply line too long".into() });
            }
            line.extend_from_slice(&buf[..take]);
            self.io.consume(take);
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    /// STARTTLS (RFC 3207) and the TLS handshake, within `limit`. The caller says EHLO again.
    pub async fn start_tls(&mut self, client: &UpstreamTlsClient, limit: Duration) -> Result<(), UpstreamError> {
        let reply = self.command("STARTTLS", Stage::StartTls, limit).await?;
        if reply.code() != 220 {
            return Err(UpstreamError::Refused { stage: Stage::StartTls, reply });
        }
        let Stream::Plain(tcp) = std::mem::replace(self.io.get_mut(), Stream::Gone) else {
            return Err(UpstreamError::Tls("STARTTLS on a connection that is not plain TCP".into()));
        };
        let (connector, name) = client.connector();
        let tls = match timeout(limit, connector.connect(name, tcp)).await {
            Err(_) => return Err(UpstreamError::Timeout(Stage::StartTls)),
            Ok(Err(err)) => return Err(UpstreamError::Tls(err.to_string())),
            Ok(Ok(tls)) => tls,
        };
        self.tls = Some(Negotiated::of(tls.get_ref().1, None));
        *self.io.get_mut() = Stream::Tls(Box::new(tls));
        Ok(())
    }

    pub async fn quit(&mut self) {
        let _ = timeout(QUIT_TIMEOUT, async {
            let stream = self.io.get_mut();
            if stream.write_all(b"QUIT\r\n").await.is_ok() && stream.flush().await.is_ok() {
                let _ = self.read_reply_inner(Stage::Quit).await;
            }
            let _ = self.io.get_mut().shutdown().await;
        })
        .await;
    }
}

/// Whether a reply code answers the command of `stage`: 354 answers DATA and nothing else,
/// DATA is answered by 354 or a refusal; 334 continues AUTH and nothing else.
fn fits(stage: Stage, code: u16) -> bool {
    match stage {
        Stage::Data => code == 354 || code >= 400,
        Stage::Auth => code != 354,
        _ => !matches!(code, 334 | 354),
    }
}

/// The enhanced code for an upstream reply that carried none.
fn default_enhanced(stage: Stage) -> impl Fn(u8) -> EnhancedCode {
    move |class| match (class, stage) {
        (2, Stage::Mail) => EnhancedCode::new(2, 1, 0),
        (2, Stage::Rcpt) => EnhancedCode::new(2, 1, 5),
        (2, Stage::EndOfData) => EnhancedCode::new(2, 6, 0),
        (2, Stage::Auth) => EnhancedCode::new(2, 7, 0),
        (class, _) => EnhancedCode::new(class, 0, 0),
    }
}
