//! A recording upstream SMTP server for byte-exact checks and fault injection. It is written
//! independently of the proxy's codec: it frames data by looking for `CRLF.CRLF` and records
//! the raw wire bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use super::WAIT;
use super::client::Stream;

/// What the upstream does at a stage instead of its normal 2xx/354.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this reply line (without CRLF), e.g. `"451 4.3.0 Try later"`.
    Reply(&'static str),
    /// Never answer.
    Hang,
    /// Close the connection without answering.
    Close,
    /// Answer with this reply line after a while (on the test's clock, paused or not).
    After(std::time::Duration, &'static str),
}

/// The upstream's behaviour. Recipients whose local part starts with `unknown` always get
/// `550 5.1.1`, and those starting with `later` get `450 4.2.1`.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub greeting: Option<Fault>,
    pub ehlo: Option<Fault>,
    pub mail: Option<Fault>,
    pub rcpt: Option<Fault>,
    pub data: Option<Fault>,
    pub end_of_data: Option<Fault>,
    /// EHLO keywords; `None` gives PIPELINING, SIZE, 8BITMIME, SMTPUTF8, ENHANCEDSTATUSCODES.
    pub extensions: Option<Vec<&'static str>>,
    /// Offer AUTH PLAIN and LOGIN and accept this user and password only.
    pub auth: Option<(&'static str, &'static str)>,
    /// Offer STARTTLS with this server configuration.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Answer XCLIENT as Postfix's smtp-sink does (250, no new greeting) instead of 220.
    pub xclient_250: bool,
}

/// One message the upstream received completely.
#[derive(Debug, Clone)]
pub struct Message {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// Exactly the bytes between the 354 and the end of `CRLF.CRLF`.
    pub wire: Vec<u8>,
    /// Whether the upstream answered 250 to it.
    pub accepted: bool,
    /// It arrived over TLS.
    pub tls: bool,
}

#[derive(Debug, Default)]
struct State {
    /// EHLO keywords set by the test after start, replacing the script's.
    extensions: Option<Vec<&'static str>>,
    commands: Vec<String>,
    messages: Vec<Message>,
    connections: usize,
    closed_connections: usize,
}

/// A running recording upstream.
#[derive(Clone)]
pub struct Recorder {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    /// Bumped to make every open connection close at once.
    kick: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Recorder {
    pub async fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Self {
            addr,
            state: Arc::default(),
            changed: Arc::new(Notify::new()),
            kick: Arc::new(tokio::sync::watch::Sender::new(0)),
        };
        let r = recorder.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let r = r.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    r.state.lock().unwrap().connections += 1;
                    r.changed.notify_waiters();
                    let mut kicked = r.kick.subscribe();
                    tokio::select! {
                        _ = serve(stream, &script, &r) => {}
                        _ = kicked.changed() => {}
                    }
                    r.state.lock().unwrap().closed_connections += 1;
                    r.changed.notify_waiters();
                });
            }
        });
        recorder
    }

    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    pub fn messages(&self) -> Vec<Message> {
        self.state.lock().unwrap().messages.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.state.lock().unwrap().commands.clone()
    }

    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Waits (bounded) until `check` holds for the recorded state.
    async fn wait_for(&self, what: &str, check: impl Fn(&State) -> bool) {
        let wait = async {
            loop {
                let notified = self.changed.notified();
                if check(&self.state.lock().unwrap()) {
                    return;
                }
                notified.await;
            }
        };
        if tokio::time::timeout(WAIT, wait).await.is_err() {
            panic!("recording upstream: timed out waiting for {what}: {:?}", self.state.lock().unwrap());
        }
    }

    /// From now on, EHLO offers these keywords (as an upstream reconfigured and reloaded).
    pub fn set_extensions(&self, extensions: Vec<&'static str>) {
        self.state.lock().unwrap().extensions = Some(extensions);
    }

    /// Closes every open connection from the server side, as an upstream's idle timeout does.
    pub fn drop_connections(&self) {
        self.kick.send_modify(|n| *n += 1);
    }

    /// Waits until every upstream connection opened so far has been closed.
    pub async fn all_closed(&self) {
        self.wait_for("all connections closed", |s| s.closed_connections == s.connections).await;
    }

    /// Waits until exactly `n` connections were opened and all of them closed.
    pub async fn closed_connections(&self, n: usize) {
        self.wait_for("connections closed", |s| s.connections == n && s.closed_connections == n).await;
    }

    /// Waits until `n` messages were received.
    pub async fn wait_messages(&self, n: usize) {
        self.wait_for("messages", |s| s.messages.len() >= n).await;
    }

    /// Waits until a command starting with `prefix` was received.
    pub async fn saw_command(&self, prefix: &str) {
        self.wait_for(prefix, |s| s.commands.iter().any(|c| c.starts_with(prefix))).await;
    }
}

async fn serve(stream: tokio::net::TcpStream, script: &Script, r: &Recorder) -> std::io::Result<()> {
    let mut stream: Box<dyn Stream> = Box::new(stream);
    let mut buf = Vec::new();
    if !respond(&mut stream, script.greeting.as_ref(), "220 recorder.test ESMTP").await? {
        return Ok(());
    }
    let mut current: Option<Message> = None;
    let mut tls = false;
    loop {
        let Some(line) = read_line(&mut stream, &mut buf).await? else { return Ok(()) };
        r.state.lock().unwrap().commands.push(line.clone());
        r.changed.notify_waiters();
        let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let ok = match verb.as_str() {
            "EHLO" => {
                let default = vec!["PIPELINING", "SIZE 100000000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"];
                let changed = r.state.lock().unwrap().extensions.clone();
                let mut ext = changed.or_else(|| script.extensions.clone()).unwrap_or(default);
                if script.auth.is_some() {
                    ext.push("AUTH PLAIN LOGIN");
                }
                if script.tls.is_some() && !tls {
                    ext.push("STARTTLS");
                }
                let mut reply = String::from("250-recorder.test");
                for e in ext {
                    reply.push_str(&format!("\r\n250-{e}"));
                }
                reply.push_str("\r\n250 HELP");
                respond(&mut stream, script.ehlo.as_ref(), &reply).await?
            }
            "HELO" => respond(&mut stream, script.ehlo.as_ref(), "250 recorder.test").await?,
            "MAIL" => {
                let ok = respond(&mut stream, script.mail.as_ref(), "250 2.1.0 Ok").await?;
                if script.mail.is_none() {
                    current =
                        Some(Message { mail_from: line.clone(), rcpts: vec![], wire: vec![], accepted: false, tls });
                }
                ok
            }
            "RCPT" => {
                let lower = line.to_ascii_lowercase();
                if lower.contains(":<unknown") {
                    respond(&mut stream, None, "550 5.1.1 No such user").await?
                } else if lower.contains(":<later") {
                    respond(&mut stream, None, "450 4.2.1 Mailbox busy").await?
                } else {
                    let ok = respond(&mut stream, script.rcpt.as_ref(), "250 2.1.5 Ok").await?;
                    if script.rcpt.is_none()
                        && let Some(m) = &mut current
                    {
                        m.rcpts.push(line.clone());
                    }
                    ok
                }
            }
            "DATA" => {
                if !respond(&mut stream, script.data.as_ref(), "354 go ahead").await? {
                    return Ok(());
                }
                if script.data.is_some() {
                    continue;
                }
                let wire = read_data(&mut stream, &mut buf).await?;
                let Some(wire) = wire else { return Ok(()) };
                let accepted = script.end_of_data.is_none();
                let mut message = current.take().unwrap_or(Message {
                    mail_from: String::new(),
                    rcpts: vec![],
                    wire: vec![],
                    accepted,
                    tls,
                });
                message.wire = wire;
                message.accepted = accepted;
                r.state.lock().unwrap().messages.push(message);
                r.changed.notify_waiters();
                respond(&mut stream, script.end_of_data.as_ref(), "250 2.0.0 Ok: queued as REC1").await?
            }
            "RSET" => {
                current = None;
                respond(&mut stream, None, "250 2.0.0 Ok").await?
            }
            "QUIT" => {
                stream.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            "NOOP" | "XFORWARD" => respond(&mut stream, None, "250 2.0.0 Ok").await?,
            // Postfix answers XCLIENT with a new greeting.
            "XCLIENT" if script.xclient_250 => respond(&mut stream, None, "250 2.0.0 Ok").await?,
            "XCLIENT" => respond(&mut stream, None, "220 recorder.test ESMTP").await?,
            "STARTTLS" if script.tls.is_some() && !tls => {
                stream.write_all(b"220 2.0.0 Ready to start TLS\r\n").await?;
                buf.clear();
                let acceptor = tokio_rustls::TlsAcceptor::from(script.tls.clone().unwrap());
                stream = Box::new(acceptor.accept(stream).await?);
                tls = true;
                true
            }
            "AUTH" if script.auth.is_some() => {
                let (user, pass) = script.auth.unwrap();
                let ok = authenticate(&mut stream, &mut buf, &line, user, pass, r).await?;
                let reply =
                    if ok { "235 2.7.0 Authentication successful" } else { "535 5.7.8 Error: authentication failed" };
                respond(&mut stream, None, reply).await?
            }
            _ => respond(&mut stream, None, "502 5.5.2 Error: command not recognized").await?,
        };
        if !ok {
            return Ok(());
        }
    }
}

/// Runs AUTH PLAIN or LOGIN (RFC 4616, the LOGIN draft) and checks the credentials.
async fn authenticate(
    stream: &mut Box<dyn Stream>,
    buf: &mut Vec<u8>,
    line: &str,
    user: &str,
    pass: &str,
    r: &Recorder,
) -> std::io::Result<bool> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut words = line.split(' ').skip(1);
    let mechanism = words.next().unwrap_or("").to_ascii_uppercase();
    let initial = words.next().map(String::from);
    let ask = async |stream: &mut Box<dyn Stream>, buf: &mut Vec<u8>, challenge: &str| -> std::io::Result<String> {
        stream.write_all(format!("334 {challenge}\r\n").as_bytes()).await?;
        let answer = read_line(stream, buf).await?.unwrap_or_default();
        r.state.lock().unwrap().commands.push(answer.clone());
        Ok(answer)
    };
    let decode = |s: &str| String::from_utf8(b64.decode(s.trim()).unwrap_or_default()).unwrap_or_default();
    match mechanism.as_str() {
        "PLAIN" => {
            let response = match initial {
                Some(initial) => initial,
                None => ask(stream, buf, "").await?,
            };
            let plain = decode(&response);
            let mut parts = plain.split('\0').skip(1);
            Ok(parts.next() == Some(user) && parts.next() == Some(pass))
        }
        "LOGIN" => {
            let name = ask(stream, buf, &b64.encode("Username:")).await?;
            let password = ask(stream, buf, &b64.encode("Password:")).await?;
            Ok(decode(&name) == user && decode(&password) == pass)
        }
        _ => Ok(false),
    }
}

/// Sends the fault's reply or the normal one; returns false when the connection should end.
async fn respond(stream: &mut Box<dyn Stream>, fault: Option<&Fault>, normal: &str) -> std::io::Result<bool> {
    match fault {
        None => stream.write_all(format!("{normal}\r\n").as_bytes()).await.map(|_| true),
        Some(Fault::Reply(line)) => stream.write_all(format!("{line}\r\n").as_bytes()).await.map(|_| true),
        Some(Fault::Close) => Ok(false),
        Some(Fault::After(delay, line)) => {
            tokio::time::sleep(*delay).await;
            stream.write_all(format!("{line}\r\n").as_bytes()).await.map(|_| true)
        }
        Some(Fault::Hang) => {
            // Hold the connection open and silent until the proxy gives up on it.
            let mut sink = [0u8; 1024];
            while stream.read(&mut sink).await? > 0 {}
            Ok(false)
        }
    }
}

async fn read_line(stream: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> std::io::Result<Option<String>> {
    loop {
        if let Some(pos) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..pos + 2).collect();
            return Ok(Some(String::from_utf8_lossy(&line[..pos]).into_owned()));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads wire data up to and including `CRLF.CRLF` (or a lone `.CRLF` for an empty message).
async fn read_data(stream: &mut Box<dyn Stream>, buf: &mut Vec<u8>) -> std::io::Result<Option<Vec<u8>>> {
    let mut searched: usize = 0;
    loop {
        if buf.starts_with(b".\r\n") {
            return Ok(Some(buf.drain(..3).collect()));
        }
        let from = searched.saturating_sub(4);
        if let Some(pos) = buf[from..].windows(5).position(|w| w == b"\r\n.\r\n") {
            return Ok(Some(buf.drain(..from + pos + 5).collect()));
        }
        searched = buf.len();
        let mut chunk = vec![0u8; 64 << 10];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
