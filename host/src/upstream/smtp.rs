//! The lockstep SMTP client: one upstream connection per client session, opened at the first
//! MAIL (or earlier, when the upstream's capabilities are not known yet), driven command by
//! command so the upstream's own replies reach the client.
//!
//! Writes to the upstream are coalesced: the message goes out in chunks of at least 64 KiB with
//! the final `.` in the same write as the end of the body, and TCP_NODELAY is set, so no
//! message waits for a delayed ACK (lockstep proxies that write the final dot alone lose about
//! 40 ms per message to Nagle's algorithm).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use super::connection::Connection;
use super::{Capabilities, ClientInfo, Sender, Stage, UpstreamError};
use crate::config::{Config, UpstreamTls};
use crate::message::{CHUNK, Outgoing};
use crate::smtp::command::Body;
use crate::smtp::data::DotStuffer;
use crate::smtp::{EnhancedCode, Mailbox, Reply};
use crate::tls::UpstreamTlsClient;

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
    tls_mode: UpstreamTls,
    tls: Option<UpstreamTlsClient>,
    /// Tell the upstream who the client is with XCLIENT when it offers it.
    xclient: bool,
    known: RwLock<Option<Capabilities>>,
    /// The last connection attempt got as far as a usable session.
    reachable: AtomicBool,
    /// Idle connections kept for the next session (after a completed or reset transaction).
    pool: Mutex<Vec<(Connection, Instant)>>,
    pool_size: usize,
    pool_idle: Duration,
}

impl SmtpTarget {
    pub fn new(host: String, port: u16, config: &Config) -> anyhow::Result<Self> {
        let up = &config.upstream;
        let tls = UpstreamTlsClient::new(up.tls, up.tls_ca_file.as_ref(), up.tls_server_name.as_deref(), &host)?;
        Ok(Self {
            helo_name: up.helo_name.clone().unwrap_or_else(|| config.hostname()),
            connect_timeout: up.connect_timeout,
            command_timeout: up.command_timeout,
            data_timeout: up.data_timeout,
            tls_mode: up.tls,
            tls,
            xclient: up.xclient,
            known: RwLock::new(None),
            reachable: AtomicBool::new(false),
            pool: Mutex::new(Vec::new()),
            pool_size: up.pool_size,
            pool_idle: up.pool_idle,
            host,
            port,
        })
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

    /// Whether the last connection attempt (a session's or a probe's) succeeded.
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Connects, reads the greeting, says EHLO (HELO if EHLO is refused) and, as `upstream.tls`
    /// says, STARTTLS and EHLO again.
    async fn connect(&self) -> Result<Connection, UpstreamError> {
        let connected = self.open_session().await;
        self.reachable.store(connected.is_ok(), Ordering::Relaxed);
        connected
    }

    async fn open_session(&self) -> Result<Connection, UpstreamError> {
        let mut conn = Connection::open(self.addr(), &self.host, self.port, self.connect_timeout).await?;
        let greeting = conn.read_reply(Stage::Greeting, self.connect_timeout).await?;
        conn.nothing_buffered(Stage::Greeting)?;
        if !greeting.is_positive() {
            return Err(UpstreamError::Refused { stage: Stage::Greeting, reply: greeting });
        }
        self.ehlo(&mut conn).await?;
        match (&self.tls, conn.caps.starttls) {
            (Some(client), true) => {
                conn.start_tls(client, self.connect_timeout).await?;
                self.ehlo(&mut conn).await?;
            }
            _ if self.tls_mode == UpstreamTls::Required => {
                return Err(UpstreamError::Tls("the upstream does not offer STARTTLS".into()));
            }
            _ => {}
        }
        self.learned(conn.caps);
        Ok(conn)
    }

    async fn ehlo(&self, conn: &mut Connection) -> Result<(), UpstreamError> {
        self.ehlo_as(conn, &self.helo_name).await
    }

    /// EHLO (HELO if EHLO is refused) with `name`; the connection's capabilities are what the
    /// reply offers.
    async fn ehlo_as(&self, conn: &mut Connection, name: &str) -> Result<(), UpstreamError> {
        let ehlo = conn.command(&format!("EHLO {name}"), Stage::Ehlo, self.command_timeout).await?;
        if ehlo.is_positive() {
            conn.caps = parse_ehlo(&ehlo);
            return Ok(());
        }
        let helo = conn.command(&format!("HELO {name}"), Stage::Ehlo, self.command_timeout).await?;
        if !helo.is_positive() {
            return Err(UpstreamError::Refused { stage: Stage::Ehlo, reply: helo });
        }
        conn.caps = Capabilities::UNKNOWN;
        Ok(())
    }

    /// An idle connection from the pool, if one is fresh enough, the upstream has neither
    /// closed it nor sent anything on it while it was idle, and it answers a new EHLO — whose
    /// reply, not the old one, says what the connection can carry now.
    async fn checkout(&self) -> Option<Connection> {
        loop {
            let (mut conn, since) = self.pool.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            if since.elapsed() >= self.pool_idle {
                continue;
            }
            if let Err(err) = conn.check_quiet(Stage::Ehlo) {
                tracing::debug!(error = %err, "dropping a pooled upstream connection");
                continue;
            }
            match self.ehlo(&mut conn).await {
                Ok(()) => {
                    self.learned(conn.caps);
                    return Some(conn);
                }
                Err(err) => tracing::debug!(error = %err, "dropping a pooled upstream connection"),
            }
        }
    }

    /// Remembers the capabilities an EHLO just offered; when they changed, connections pooled
    /// before may be on a server process with the old settings, so they are dropped.
    fn learned(&self, caps: Capabilities) {
        let old = self.known.write().unwrap_or_else(|e| e.into_inner()).replace(caps);
        if old.is_some_and(|old| old != caps) {
            tracing::info!(upstream = %self.addr(), caps = %caps, "upstream capabilities changed; pooled connections dropped");
            self.pool.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// Probes the upstream once (see [`super::UpstreamTarget::watch`]).
    pub async fn refresh(&self) {
        match self.connect().await {
            Ok(mut conn) => conn.quit().await,
            Err(err) => tracing::debug!(upstream = %self.addr(), error = %err, "upstream probe failed"),
        }
    }

    /// Keeps an idle connection for a later session; gives it back when the pool is full.
    fn checkin(&self, conn: Connection) -> Option<Connection> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.retain(|(_, since)| since.elapsed() < self.pool_idle);
        if pool.len() >= self.pool_size {
            return Some(conn);
        }
        pool.push((conn, Instant::now()));
        None
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
fn parse_ehlo(reply: &Reply) -> Capabilities {
    let mut caps = Capabilities::UNKNOWN;
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
            "STARTTLS" => caps.starttls = true,
            "XFORWARD" => caps.xforward = true,
            "XCLIENT" => {
                caps.xclient.offered = true;
                for attribute in words {
                    match attribute.to_ascii_uppercase().as_str() {
                        "ADDR" => caps.xclient.addr = true,
                        "PORT" => caps.xclient.port = true,
                        "NAME" => caps.xclient.name = true,
                        "HELO" => caps.xclient.helo = true,
                        "PROTO" => caps.xclient.proto = true,
                        "LOGIN" => caps.xclient.login = true,
                        "DESTADDR" => caps.xclient.destaddr = true,
                        "DESTPORT" => caps.xclient.destport = true,
                        _ => {}
                    }
                }
            }
            "AUTH" => {
                for mechanism in words {
                    match mechanism.to_ascii_uppercase().as_str() {
                        "PLAIN" => caps.auth_plain = true,
                        "LOGIN" => caps.auth_login = true,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    caps
}

/// Sends XFORWARD (when offered) and MAIL FROM with the parameters the upstream understands.
async fn mail_on(
    conn: &mut Connection,
    sender: &Sender<'_>,
    client: &ClientInfo,
    limit: Duration,
) -> Result<Reply, UpstreamError> {
    // XFORWARD (Postfix's XFORWARD_README) when the connection was not told with XCLIENT.
    let xforward = (conn.caps.xforward && !conn.bound).then(|| {
        let helo = client.helo.as_deref().unwrap_or("[UNAVAILABLE]");
        format!(
            "XFORWARD NAME={} ADDR={} PORT={} HELO={} PROTO={}",
            xtext(client.name.as_deref().unwrap_or("[UNAVAILABLE]")),
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
    conn.send(wire.as_bytes(), Stage::Mail, limit).await?;
    let reply = conn.read_reply(Stage::Mail, limit).await?;
    if !reply.is_positive() {
        tracing::warn!(%reply, "upstream refused XFORWARD");
    }
    let reply = conn.read_reply(Stage::Mail, limit).await?;
    conn.nothing_buffered(Stage::Mail)?;
    Ok(reply)
}

/// Tells the upstream who the client is (Postfix's XCLIENT_README): the attributes it lists, in
/// as few commands as fit in 512 octets, ADDR and PORT in the last (after ADDR changes, the
/// upstream judges further XCLIENT commands by the new address). Each answer is a new 220
/// greeting; then EHLO again with the client's own HELO name, which is what the upstream's
/// Received: header shows. A refusal leaves the upstream judging the proxy itself (logged).
async fn xclient(target: &SmtpTarget, conn: &mut Connection, client: &ClientInfo) -> Result<(), UpstreamError> {
    let offered = conn.caps.xclient;
    let mut first: Vec<String> = Vec::new();
    if offered.name {
        first.push(format!("NAME={}", xtext(client.name.as_deref().unwrap_or("[UNAVAILABLE]"))));
    }
    if offered.helo
        && let Some(helo) = &client.helo
    {
        first.push(format!("HELO={}", xtext(helo)));
    }
    if offered.proto {
        first.push(format!("PROTO={}", if client.esmtp { "ESMTP" } else { "SMTP" }));
    }
    if let Some(local) = client.local {
        if offered.destaddr {
            first.push(format!("DESTADDR={}", xclient_addr(local.ip())));
        }
        if offered.destport {
            first.push(format!("DESTPORT={}", local.port()));
        }
    }
    let mut last = Vec::new();
    if offered.addr {
        last.push(format!("ADDR={}", xclient_addr(client.ip)));
    }
    if offered.port {
        last.push(format!("PORT={}", client.port));
    }
    let whole = first.iter().chain(&last).cloned().collect::<Vec<_>>().join(" ");
    let commands =
        if whole.len() + "XCLIENT \r\n".len() <= 512 { vec![whole] } else { vec![first.join(" "), last.join(" ")] };
    for attributes in commands.iter().filter(|a| !a.is_empty()) {
        // Bound from the first attempt on: until the upstream says what it did, the
        // connection may already carry this client's identity.
        conn.bound = true;
        let reply = conn.command(&format!("XCLIENT {attributes}"), Stage::Xclient, target.command_timeout).await?;
        if reply.code() != 220 {
            tracing::warn!(%reply, "upstream refused XCLIENT; it sees the proxy as the client");
            // A refused first command changed nothing: the connection still speaks for the
            // proxy, so it may serve other sessions, which do not ask again on it.
            if attributes == &commands[0] {
                conn.bound = false;
                conn.xclient_refused = true;
            }
            return Ok(());
        }
    }
    let helo = client.helo.clone().unwrap_or_else(|| target.helo_name.clone());
    target.ehlo_as(conn, &helo).await
}

/// An address as XCLIENT writes it: IPv6 with the `IPV6:` prefix.
fn xclient_addr(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_string(),
        std::net::IpAddr::V6(v6) => format!("IPV6:{v6}"),
    }
}

/// `xtext` (RFC 3461 §4) for XFORWARD and XCLIENT attribute values.
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
    pub(super) client: ClientInfo,
    in_transaction: bool,
    /// The session's connection is its own: opened fresh, never pooled (an AUTH exchange
    /// binds it to the session's identity).
    dedicated: bool,
}

impl SmtpRelay {
    pub fn new(target: Arc<SmtpTarget>, client: ClientInfo, dedicated: bool) -> Self {
        Self { target, conn: None, client, in_transaction: false, dedicated }
    }

    pub fn describe(&self) -> String {
        format!("smtp://{}", self.target.addr())
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

    /// The connection this session's commands go over: checked out of the pool (answering a
    /// new EHLO) or opened, and — the first time the session uses it — told who the client is
    /// with XCLIENT, which binds it to this session.
    async fn connection(&mut self) -> Result<&mut Connection, UpstreamError> {
        if self.conn.is_none() {
            let pooled = if self.dedicated { None } else { self.target.checkout().await };
            self.conn = Some(match pooled {
                Some(conn) => conn,
                None => self.target.connect().await?,
            });
        }
        let conn = self.conn.as_mut().expect("connected above");
        if !conn.bound && !conn.xclient_refused && self.target.xclient && conn.caps.xclient.offered {
            xclient(&self.target, conn, &self.client).await?;
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// What the current connection can carry (or, before there is one, what the upstream
    /// announced last).
    pub fn current_capabilities(&self) -> Capabilities {
        match &self.conn {
            Some(conn) => conn.caps,
            None => self.target.known_capabilities().unwrap_or(Capabilities::UNKNOWN),
        }
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
        let result = match self.connection().await {
            Ok(conn) => mail_on(conn, sender, &client, timeout).await,
            Err(err) => Err(err),
        };
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

    /// One step of an AUTH exchange (RFC 4954): the client's `AUTH` command or its response to
    /// a `334`, relayed on the session's own connection; the upstream's reply comes back.
    pub async fn auth(&mut self, line: &str) -> Result<Reply, UpstreamError> {
        let timeout = self.target.command_timeout;
        let result = match self.connection().await {
            Ok(conn) => conn.command(line, Stage::Auth, timeout).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(reply) => Ok(self.closing(reply)),
            Err(err) => self.fail(err),
        }
    }

    /// The capabilities of the session's own connection, opening it if needed.
    pub async fn connection_capabilities(&mut self) -> Result<Capabilities, UpstreamError> {
        match self.connection().await {
            Ok(conn) => Ok(conn.caps),
            Err(err) => self.fail(err),
        }
    }

    /// Ends this session's use of the upstream: a clean connection goes back to the pool for
    /// the next session, anything else gets QUIT.
    pub async fn quit(&mut self) {
        // A connection told about this client (XCLIENT) or used for its AUTH is its alone.
        let bound = self.dedicated || self.conn.as_ref().is_some_and(|c| c.bound);
        let clean = !std::mem::take(&mut self.in_transaction) && !bound;
        if let Some(conn) = self.conn.take() {
            let leftover = if clean { self.target.checkin(conn) } else { Some(conn) };
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
            conn.send(&out, Stage::Data, limit).await?;
            out.clear();
        }
    }
    stuffer.finish(&mut out);
    conn.send(&out, Stage::Data, limit).await
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
        let caps = parse_ehlo(&reply);
        assert_eq!(
            caps,
            Capabilities {
                size: Some(10_240_000),
                size_param: true,
                eight_bit_mime: true,
                smtputf8: true,
                pipelining: true,
                xforward: true,
                ..Capabilities::UNKNOWN
            }
        );
        let caps = parse_ehlo(&Reply::multiline(
            250,
            None,
            vec!["x".into(), "XCLIENT NAME ADDR PROTO HELO REVERSE_NAME PORT LOGIN DESTADDR DESTPORT".into()],
        ));
        assert!(caps.xclient.offered && caps.xclient.addr && caps.xclient.destport && caps.xclient.login);
        let caps = parse_ehlo(&Reply::multiline(
            250,
            None,
            vec!["x".into(), "AUTH LOGIN plain CRAM-MD5".into(), "STARTTLS".into()],
        ));
        assert!(caps.auth_plain && caps.auth_login && caps.starttls);
        let caps = parse_ehlo(&Reply::multiline(250, None, vec!["x".into(), "SIZE 0".into()]));
        assert_eq!((caps.size, caps.size_param), (None, true));
    }

    #[test]
    fn xtext_escapes() {
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }
}
