//! A raw-socket SMTP client for the tests: sends exact bytes and reads replies with a bound,
//! over plain TCP or, after STARTTLS (or from the start), TLS.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::WAIT;

/// A byte stream: TCP or TLS over it.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A TLS client that trusts `ca` (DER) only, and records the certificate the server sent.
pub fn tls_connector(ca: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(ca.to_vec())).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One reply as the client saw it.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    /// Every line, CRLF removed.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

pub struct Client {
    stream: Box<dyn Stream>,
    buf: Vec<u8>,
    /// The server's certificate chain (DER), once TLS is up.
    pub peer_certificates: Vec<Vec<u8>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream =
            tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.expect("connect in time").expect("connect");
        Self { stream: Box::new(stream), buf: Vec::new(), peer_certificates: Vec::new() }
    }

    /// Connects and starts TLS at once (implicit TLS, RFC 8314), asking for `server_name`.
    pub async fn connect_tls(addr: SocketAddr, connector: &tokio_rustls::TlsConnector, server_name: &str) -> Self {
        let mut client = Self::connect(addr).await;
        client.tls(connector, server_name).await.expect("TLS handshake");
        client
    }

    /// Runs the client side of a TLS handshake on this connection (after `220` to STARTTLS).
    /// Bytes already received in plaintext are dropped, as a client must.
    pub async fn tls(&mut self, connector: &tokio_rustls::TlsConnector, server_name: &str) -> std::io::Result<()> {
        self.buf.clear();
        let plain = std::mem::replace(&mut self.stream, Box::new(tokio::io::empty()));
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string()).unwrap();
        let tls = tokio::time::timeout(WAIT, connector.connect(name, plain)).await.expect("handshake in time")?;
        self.peer_certificates =
            tls.get_ref().1.peer_certificates().unwrap_or_default().iter().map(|c| c.to_vec()).collect();
        self.stream = Box::new(tls);
        Ok(())
    }

    /// Connects from a chosen loopback address (anything in 127.0.0.0/8 works on Linux).
    pub async fn connect_from(addr: SocketAddr, local: std::net::IpAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let stream = tokio::time::timeout(WAIT, socket.connect(addr)).await.expect("connect in time").expect("connect");
        Self { stream: Box::new(stream), buf: Vec::new(), peer_certificates: Vec::new() }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).await.expect("send");
    }

    /// Reads one complete reply; panics if none arrives within the bound or the line is malformed.
    pub async fn reply(&mut self) -> Reply {
        self.try_reply().await.expect("connection closed while waiting for a reply")
    }

    /// Reads one reply, or `None` if the server closed the connection first.
    pub async fn try_reply(&mut self) -> Option<Reply> {
        self.reply_within(WAIT).await
    }

    /// Like [`Client::try_reply`] with another bound (for tests on paused time).
    pub async fn reply_within(&mut self, bound: std::time::Duration) -> Option<Reply> {
        tokio::time::timeout(bound, self.read_reply()).await.expect("reply within the bound")
    }

    /// A reply if one arrives within `wait` (None otherwise, or if the server closed).
    /// Cancel-safe: bytes already read stay buffered for the next call.
    pub async fn reply_if_any(&mut self, wait: std::time::Duration) -> Option<Reply> {
        tokio::time::timeout(wait, self.read_reply()).await.ok().flatten()
    }

    async fn read_reply(&mut self) -> Option<Reply> {
        let mut lines = Vec::new();
        loop {
            let line = self.read_line().await?;
            assert!(line.len() + 2 <= 512, "reply line longer than 512 octets: {line}");
            assert!(line.len() >= 3 && line.as_bytes()[..3].iter().all(u8::is_ascii_digit), "bad reply line {line:?}");
            let code: u16 = line[..3].parse().unwrap();
            let last = line.as_bytes().get(3) != Some(&b'-');
            lines.push(line);
            if last {
                let codes: Vec<_> = lines.iter().map(|l| &l[..3]).collect();
                assert!(codes.iter().all(|c| *c == codes[0]), "mixed codes in {lines:?}");
                return Some(Reply { code, lines });
            }
        }
    }

    async fn read_line(&mut self) -> Option<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..pos + 2).collect();
                let line = String::from_utf8(line[..pos].to_vec()).expect("reply is UTF-8");
                assert!(!line.contains(['\r', '\n']), "bare CR/LF in reply {line:?}");
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads a reply and checks its code.
    pub async fn expect(&mut self, code: u16) -> Reply {
        let reply = self.reply().await;
        assert_eq!(reply.code, code, "expected {code}, got {reply:?}");
        reply
    }

    /// Sends one command line and checks the reply code.
    pub async fn cmd(&mut self, line: &str, code: u16) -> Reply {
        self.send(format!("{line}\r\n")).await;
        self.expect(code).await
    }

    /// Reads the greeting and says EHLO.
    pub async fn greet(&mut self) -> Reply {
        self.expect(220).await;
        self.cmd("EHLO client.example", 250).await
    }

    /// Runs a whole transaction with an already stuffed body and returns the final reply.
    pub async fn send_mail(&mut self, from: &str, to: &[&str], wire_body: &[u8]) -> Reply {
        self.send_mail_within(from, to, wire_body, WAIT).await
    }

    /// Like [`Client::send_mail`], waiting up to `bound` for the reply to the message.
    pub async fn send_mail_within(
        &mut self,
        from: &str,
        to: &[&str],
        wire_body: &[u8],
        bound: std::time::Duration,
    ) -> Reply {
        self.cmd(&format!("MAIL FROM:<{from}>"), 250).await;
        for rcpt in to {
            self.cmd(&format!("RCPT TO:<{rcpt}>"), 250).await;
        }
        self.cmd("DATA", 354).await;
        self.send(wire_body).await;
        self.reply_within(bound).await.expect("connection closed while waiting for a reply")
    }

    /// Waits until the server closes the connection; returns whatever else arrived.
    pub async fn closed(&mut self) -> Vec<u8> {
        let mut rest = std::mem::take(&mut self.buf);
        let mut chunk = [0u8; 4096];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("server closes in time") {
                Ok(0) | Err(_) => return rest,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
