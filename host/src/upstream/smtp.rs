//! The lockstep SMTP client: one upstream connection per client session, opened at the first
//! MAIL (or earlier, when the upstream's capabilities are not known yet), driven command by
//! command so the upstream's own replies reach the client.
//!
//! Writes to the upstream are coalesced: the message goes out in chunks of at least 64 KiB with
//! the final `.` in the same write as the end of the body, and TCP_NODELAY is set, so no
//! message waits for a delayed ACK (lockstep proxies that write the final dot alone lose about
//! 40 ms per message to Nagle's algorithm).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::timeout;

use super::{Capabilities, ClientInfo, Sender, Stage, UpstreamError};
use crate::config::Config;
use crate::message::{CHUNK, Outgoing};
use crate::smtp::command::Body;
use crate::smtp::data::DotStuffer;
use crate::smtp::{EnhancedCode, Mailbox, Reply};

/// Longest reply line accepted from the upstream.
const MAX_LINE: usize = 4096;
/// Most lines in one upstream reply.
const MAX_LINES: usize = 100;
/// How long a QUIT may take before the connection is simply dropped.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

/// The configured upstream server, shared by all sessions, with the capabilities it announced
/// most recently.
#[derive(Debug)]
pub struct SmtpTarget {
    host: String,
    port: u16,
    helo_name: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    data_timeout: Duration,
    known: RwLock<Option<Capabilities>>,
    /// Idle connections kept for the next session (after a completed or reset transaction).
    pool: Mutex<Vec<(Connection, Instant)>>,
    pool_size: usize,
    pool_idle: Duration,
}

impl SmtpTarget {
    pub fn new(host: String, port: u16, config: &Config) -> Self {
        let up = &config.upstream;
        Self {
            host,
            port,
            helo_name: up.helo_name.clone().unwrap_or_else(|| config.hostname()),
            connect_timeout: up.connect_timeout,
            command_timeout: up.command_timeout,
            data_timeout: up.data_timeout,
            known: RwLock::new(None),
            pool: Mutex::new(Vec::new()),
            pool_size: up.pool_size,
            pool_idle: up.pool_idle,
        }
    }

    fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The capabilities from the most recent EHLO, if any upstream session got that far.
    pub fn known_capabilities(&self) -> Option<Capabilities> {
        *self.known.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Connects, reads the greeting and says EHLO (HELO if EHLO is refused).
    async fn connect(&self) -> Result<Connection, UpstreamError> {
        let addr = self.addr();
        let stream = match timeout(self.connect_timeout, TcpStream::connect((self.host.as_str(), self.port))).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(source)) => return Err(UpstreamError::Connect { addr, source }),
            Err(_) => return Err(UpstreamError::Timeout(Stage::Connect)),
        };
        stream.set_nodelay(true).map_err(|source| UpstreamError::Io { stage: Stage::Connect, source })?;
        let (read, write) = stream.into_split();
        let mut conn = Connection {
            reader: BufReader::with_capacity(16 << 10, read),
            writer: write,
            caps: Capabilities::UNKNOWN,
            xforward: false,
        };
        let greeting = conn.read_reply(Stage::Greeting, self.connect_timeout).await?;
        conn.nothing_buffered(Stage::Greeting)?;
        if !greeting.is_positive() {
            return Err(UpstreamError::Refused { stage: Stage::Greeting, reply: greeting });
        }
        let ehlo = conn.command(&format!("EHLO {}", self.helo_name), Stage::Ehlo, self.command_timeout).await?;
        if ehlo.is_positive() {
            (conn.caps, conn.xforward) = parse_ehlo(&ehlo);
        } else {
            let helo = conn.command(&format!("HELO {}", self.helo_name), Stage::Ehlo, self.command_timeout).await?;
            if !helo.is_positive() {
                return Err(UpstreamError::Refused { stage: Stage::Ehlo, reply: helo });
            }
        }
        *self.known.write().unwrap_or_else(|e| e.into_inner()) = Some(conn.caps);
        Ok(conn)
    }

    /// An idle connection from the pool, if one is fresh enough and the upstream has neither
    /// closed it nor sent anything on it while it was idle.
    fn checkout(&self) -> Option<Connection> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((mut conn, since)) = pool.pop() {
            if since.elapsed() >= self.pool_idle {
                continue;
            }
            match conn.check_quiet(Stage::Mail) {
                Ok(()) => return Some(conn),
                Err(err) => tracing::debug!(error = %err, "dropping a pooled upstream connection"),
            }
        }
        None
    }

    /// Keeps an idle connection for a later session; false when the pool is full.
    fn checkin(&self, conn: Connection) -> Result<(), Connection> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|(_, since)| since.elapsed() < self.pool_idle);
        if pool.len() >= self.pool_size {
            return Err(conn);
        }
        pool.push((conn, Instant::now()));
        Ok(())
    }

    /// Says QUIT on every pooled connection (at shutdown).
    pub async fn close_idle(&self) {
        let idle: Vec<_> = std::mem::take(&mut *self.pool.lock().unwrap_or_else(|e| e.into_inner()));
        for (mut conn, _) in idle {
            conn.quit().await;
        }
    }

    /// Connects once to learn the capabilities, then says QUIT.
    pub async fn probe(&self) -> Result<Capabilities, UpstreamError> {
        let mut conn = self.connect().await?;
        let caps = conn.caps;
        conn.quit().await;
        Ok(caps)
    }
}

/// Reads the EHLO keywords this relay cares about.
fn parse_ehlo(reply: &Reply) -> (Capabilities, bool) {
    let mut caps = Capabilities::UNKNOWN;
    let mut xforward = false;
    for line in reply.lines().iter().skip(1) {
        let mut words = line.split_ascii_whitespace();
        let keyword = words.next().unwrap_or("").to_ascii_uppercase();
        match keyword.as_str() {
            "SIZE" => {
                caps.size_param = true;
                caps.size = words.next().and_then(|n| n.parse::<u64>().ok()).filter(|&n| n > 0);
            }
            "8BITMIME" => caps.eight_bit_mime = true,
            "SMTPUTF8" => caps.smtputf8 = true,
            "PIPELINING" => caps.pipelining = true,
            "XFORWARD" => xforward = true,
            _ => {}
        }
    }
    (caps, xforward)
}

/// The enhanced code for an upstream reply that carried none.
fn default_enhanced(stage: Stage) -> impl Fn(u8) -> EnhancedCode {
    move |class| match (class, stage) {
        (2, Stage::Mail) => EnhancedCode::new(2, 1, 0),
        (2, Stage::Rcpt) => EnhancedCode::new(2, 1, 5),
        (2, Stage::EndOfData) => EnhancedCode::new(2, 6, 0),
        (class, _) => EnhancedCode::new(class, 0, 0),
    }
}

/// One open upstream connection.
#[derive(Debug)]
struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    caps: Capabilities,
    xforward: bool,
}

impl Connection {
    async fn write(&mut self, bytes: &[u8], stage: Stage, limit: Duration) -> Result<(), UpstreamError> {
        match timeout(limit, self.writer.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(UpstreamError::Io { stage, source }),
            Err(_) => Err(UpstreamError::Timeout(stage)),
        }
    }

    /// Sends one command and reads its reply. The upstream must have been silent before it and
    /// must send nothing after the reply: an upstream out of step is a protocol error, and the
    /// connection is never used again.
    async fn command(&mut self, line: &str, stage: Stage, limit: Duration) -> Result<Reply, UpstreamError> {
        debug_assert!(!line.contains(['\r', '\n', '\0']));
        self.check_quiet(stage)?;
        let mut wire = Vec::with_capacity(line.len() + 2);
        wire.extend_from_slice(line.as_bytes());
        wire.extend_from_slice(b"\r\n");
        self.write(&wire, stage, limit).await?;
        let reply = self.read_reply(stage, limit).await?;
        self.nothing_buffered(stage)?;
        Ok(reply)
    }

    /// Fails if bytes of a reply nobody asked for are already buffered.
    fn nothing_buffered(&self, stage: Stage) -> Result<(), UpstreamError> {
        if self.reader.buffer().is_empty() {
            Ok(())
        } else {
            Err(UpstreamError::Protocol { stage, detail: "the upstream sent more than one reply".into() })
        }
    }

    /// Fails if the upstream sent anything since its last reply, or closed the connection,
    /// without waiting for it.
    fn check_quiet(&mut self, stage: Stage) -> Result<(), UpstreamError> {
        self.nothing_buffered(stage)?;
        let mut probe = [0u8; 1];
        match self.reader.get_ref().try_read(&mut probe) {
            Ok(0) => Err(UpstreamError::Closed(stage)),
            Ok(_) => Err(UpstreamError::Protocol { stage, detail: "the upstream sent data nobody asked for".into() }),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(source) => Err(UpstreamError::Io { stage, source }),
        }
    }

    /// Reads one (possibly multiline) reply within `limit`.
    async fn read_reply(&mut self, stage: Stage, limit: Duration) -> Result<Reply, UpstreamError> {
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
            if !(200..=599).contains(&this_code) && this_code != 354 {
                return Err(protocol("reply code out of range"));
            }
            // 354 answers DATA and nothing else; DATA is answered by 354 or a refusal.
            if (this_code == 354) != (stage == Stage::Data) && !(stage == Stage::Data && this_code >= 400) {
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
            let buf = self.reader.fill_buf().await.map_err(|source| UpstreamError::Io { stage, source })?;
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
            self.reader.consume(take);
            if done {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
        }
    }

    async fn quit(&mut self) {
        let _ = timeout(QUIT_TIMEOUT, async {
            if self.writer.write_all(b"QUIT\r\n").await.is_ok() {
                let _ = self.read_reply_inner(Stage::Quit).await;
            }
            let _ = self.writer.shutdown().await;
        })
        .await;
    }
}

/// Sends XFORWARD (when offered) and MAIL FROM with the parameters the upstream understands.
async fn mail_on(
    conn: &mut Connection,
    sender: &Sender<'_>,
    client: &ClientInfo,
    limit: Duration,
) -> Result<Reply, UpstreamError> {
    let xforward = conn.xforward.then(|| {
        let helo = client.helo.as_deref().unwrap_or("[UNAVAILABLE]");
        format!(
            "XFORWARD ADDR={} PORT={} HELO={} PROTO={}",
            xtext(&client.ip.to_string()),
            client.port,
            xtext(helo),
            if client.esmtp { "ESMTP" } else { "SMTP" }
        )
    });
    let mut line = format!("MAIL FROM:<{}>", sender.mailbox.as_str());
    if let Some(size) = sender.size
        && conn.caps.size_param
    {
        line.push_str(&format!(" SIZE={size}"));
    }
    if let Some(body) = sender.body
        && conn.caps.eight_bit_mime
    {
        line.push_str(match body {
            Body::SevenBit => " BODY=7BIT",
            Body::EightBitMime => " BODY=8BITMIME",
        });
    }
    if sender.smtputf8 && conn.caps.smtputf8 {
        line.push_str(" SMTPUTF8");
    }
    let Some(xforward) = xforward else {
        return conn.command(&line, Stage::Mail, limit).await;
    };
    if !conn.caps.pipelining {
        let reply = conn.command(&xforward, Stage::Mail, limit).await?;
        if !reply.is_positive() {
            tracing::warn!(%reply, "upstream refused XFORWARD");
        }
        return conn.command(&line, Stage::Mail, limit).await;
    }
    // PIPELINING (RFC 2920): XFORWARD and MAIL in one write, then both replies in order.
    let wire = format!("{xforward}\r\n{line}\r\n");
    conn.check_quiet(Stage::Mail)?;
    conn.write(wire.as_bytes(), Stage::Mail, limit).await?;
    let reply = conn.read_reply(Stage::Mail, limit).await?;
    if !reply.is_positive() {
        tracing::warn!(%reply, "upstream refused XFORWARD");
    }
    let reply = conn.read_reply(Stage::Mail, limit).await?;
    conn.nothing_buffered(Stage::Mail)?;
    Ok(reply)
}

/// `xtext` (RFC 3461 §4) for XFORWARD attribute values.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// One session's relay state.
#[derive(Debug)]
pub struct SmtpRelay {
    target: Arc<SmtpTarget>,
    conn: Option<Connection>,
    /// `conn` came from the pool and has not answered in this session yet.
    reused: bool,
    client: ClientInfo,
    in_transaction: bool,
}

impl SmtpRelay {
    pub fn new(target: Arc<SmtpTarget>, client: ClientInfo) -> Self {
        Self { target, conn: None, reused: false, client, in_transaction: false }
    }

    pub fn describe(&self) -> String {
        format!("smtp://{}", self.target.addr())
    }

    pub fn set_helo(&mut self, helo: &str, esmtp: bool) {
        self.client.helo = Some(helo.to_string());
        self.client.esmtp = esmtp;
    }

    pub async fn capabilities(&mut self) -> Capabilities {
        if let Some(conn) = &self.conn {
            return conn.caps;
        }
        if let Some(caps) = self.target.known_capabilities() {
            return caps;
        }
        match self.connection().await {
            Ok(conn) => conn.caps,
            Err(err) => {
                tracing::warn!(upstream = %self.describe(), error = %err, "upstream capabilities unknown");
                Capabilities::UNKNOWN
            }
        }
    }

    async fn connection(&mut self) -> Result<&mut Connection, UpstreamError> {
        if self.conn.is_none() {
            self.conn = match self.target.checkout() {
                Some(conn) => {
                    self.reused = true;
                    Some(conn)
                }
                None => Some(self.target.connect().await?),
            };
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// A 421 means the upstream is closing its side: forget the connection and pass the reply
    /// on as 451, since the client's own session with us goes on.
    fn closing(&mut self, reply: Reply) -> Reply {
        if reply.code() != 421 {
            return reply;
        }
        tracing::warn!(%reply, "upstream is closing the connection");
        self.conn = None;
        self.in_transaction = false;
        let enhanced = reply.enhanced_code().unwrap_or(EnhancedCode::new(4, 0, 0));
        reply.with_code(451, Some(enhanced))
    }

    /// Forgets the connection after a failure: the upstream transaction is gone with it.
    fn fail<T>(&mut self, err: UpstreamError) -> Result<T, UpstreamError> {
        self.conn = None;
        self.in_transaction = false;
        Err(err)
    }

    pub async fn mail(&mut self, sender: &Sender<'_>) -> Result<Reply, UpstreamError> {
        let timeout = self.target.command_timeout;
        let client = self.client.clone();
        let mut result = match self.connection().await {
            Ok(conn) => mail_on(conn, sender, &client, timeout).await,
            Err(err) => Err(err),
        };
        if std::mem::take(&mut self.reused)
            && matches!(result, Err(UpstreamError::Closed(_) | UpstreamError::Io { .. }))
        {
            // A pooled connection the upstream closed while it was idle: try a fresh one.
            self.conn = None;
            result = match self.connection().await {
                Ok(conn) => mail_on(conn, sender, &client, timeout).await,
                Err(err) => Err(err),
            };
            self.reused = false;
        }
        match result {
            Ok(reply) => {
                self.in_transaction = reply.is_positive();
                Ok(self.closing(reply))
            }
            Err(err) => self.fail(err),
        }
    }

    pub async fn rcpt(&mut self, recipient: &Mailbox) -> Result<Reply, UpstreamError> {
        let Some(conn) = self.conn.as_mut().filter(|_| self.in_transaction) else {
            return Err(UpstreamError::NoTransaction(Stage::Rcpt));
        };
        let line = format!("RCPT TO:<{}>", recipient.as_str());
        match conn.command(&line, Stage::Rcpt, self.target.command_timeout).await {
            Ok(reply) => Ok(self.closing(reply)),
            Err(err) => self.fail(err),
        }
    }

    pub async fn data(&mut self, message: &mut Outgoing<'_>) -> Result<Reply, UpstreamError> {
        let Some(conn) = self.conn.as_mut().filter(|_| self.in_transaction) else {
            return Err(UpstreamError::NoTransaction(Stage::Data));
        };
        let (command_timeout, data_timeout) = (self.target.command_timeout, self.target.data_timeout);
        let go_ahead = match conn.command("DATA", Stage::Data, command_timeout).await {
            Ok(reply) => reply,
            Err(err) => return self.fail(err),
        };
        if go_ahead.code() != 354 {
            let go_ahead = self.closing(go_ahead);
            // A refused DATA leaves the MAIL/RCPT state upstream: reset it.
            self.rset().await;
            return Ok(go_ahead);
        }
        let result = match send_message(conn, message, data_timeout).await {
            Ok(()) => conn.read_reply(Stage::EndOfData, data_timeout).await,
            Err(err) => Err(err),
        };
        self.in_transaction = false;
        match result {
            Ok(reply) => Ok(self.closing(reply)),
            Err(err) => self.fail(err),
        }
    }

    pub async fn rset(&mut self) {
        if !std::mem::take(&mut self.in_transaction) {
            return;
        }
        let Some(conn) = self.conn.as_mut() else { return };
        match conn.command("RSET", Stage::Rset, self.target.command_timeout).await {
            Ok(reply) if reply.is_positive() => {}
            Ok(reply) => {
                tracing::warn!(%reply, "upstream refused RSET; dropping the connection");
                self.conn = None;
            }
            Err(err) => {
                tracing::warn!(error = %err, "upstream RSET failed; dropping the connection");
                self.conn = None;
            }
        }
    }

    /// Ends this session's use of the upstream: a clean connection goes back to the pool for
    /// the next session, anything else gets QUIT.
    pub async fn quit(&mut self) {
        let clean = !std::mem::take(&mut self.in_transaction);
        if let Some(conn) = self.conn.take() {
            let leftover = if clean { self.target.checkin(conn).err() } else { Some(conn) };
            if let Some(mut conn) = leftover {
                conn.quit().await;
            }
        }
    }
}

/// Streams the dot-stuffed message, coalesced into large writes, final dot included in the last.
async fn send_message(conn: &mut Connection, message: &mut Outgoing<'_>, limit: Duration) -> Result<(), UpstreamError> {
    let io_error = |source| UpstreamError::Io { stage: Stage::Data, source };
    // The upstream said 354 and nothing else; anything it sends from here on is checked when
    // its end-of-data reply is read.
    conn.check_quiet(Stage::Data)?;
    let mut stuffer = DotStuffer::new();
    let mut out = Vec::with_capacity(CHUNK + CHUNK / 8);
    message.rewind().await.map_err(io_error)?;
    while let Some(chunk) = message.next_chunk().await.map_err(io_error)? {
        stuffer.stuff(chunk, &mut out);
        if out.len() >= CHUNK {
            conn.write(&out, Stage::Data, limit).await?;
            out.clear();
        }
    }
    stuffer.finish(&mut out);
    conn.write(&out, Stage::Data, limit).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_ehlo_keywords() {
        let reply = Reply::multiline(
            250,
            None,
            ["mx.example", "PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8", "XFORWARD NAME ADDR"]
                .map(String::from)
                .to_vec(),
        );
        let (caps, xforward) = parse_ehlo(&reply);
        assert_eq!(
            caps,
            Capabilities {
                size: Some(10_240_000),
                size_param: true,
                eight_bit_mime: true,
                smtputf8: true,
                pipelining: true
            }
        );
        assert!(xforward);
        let (caps, _) = parse_ehlo(&Reply::multiline(250, None, vec!["x".into(), "SIZE 0".into()]));
        assert_eq!((caps.size, caps.size_param), (None, true));
    }

    #[test]
    fn xtext_escapes() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
