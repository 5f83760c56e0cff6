//! Postfix's `smtp-sink` as a real upstream, dumping every message to a file (or, for the
//! memory tests, throwing them away).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{WAIT, free_port};

pub struct SmtpSink {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl SmtpSink {
    pub async fn start() -> Self {
        Self::spawn(true).await
    }

    /// A sink that keeps no messages.
    pub async fn discarding() -> Self {
        Self::spawn(false).await
    }

    async fn spawn(dump: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let port = free_port();
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        // smtp-sink insists on dropping privileges when started as root.
        if unsafe { libc::geteuid() } == 0 {
            cmd.args(["-u", "nobody"]);
        }
        let template = format!("{}/msg.", dir.path().display());
        if dump {
            cmd.args(["-d", &template]);
        }
        cmd.args([&format!("127.0.0.1:{port}"), "128"]).stdout(Stdio::null()).stderr(Stdio::null());
        let child = cmd.spawn().expect("smtp-sink runs (the Debian package `postfix`; scripts/setup installs it)");
        let deadline = std::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "smtp-sink did not start listening");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self { port, child, dir }
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// The dumped messages so far.
    pub fn dumps(&self) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(self.dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
    }

    /// The message part of a dump: smtp-sink's own `X-*` records and its `Received:` header
    /// removed, and the empty line it writes after every message. Line endings are LF.
    pub fn message_of(dump: &[u8]) -> &[u8] {
        let mut i = 0;
        let mut seen_received = false;
        loop {
            let line_end = i + dump[i..].iter().position(|&b| b == b'\n').expect("dump has header lines") + 1;
            let line = &dump[i..line_end];
            let continuation = matches!(line.first(), Some(b' ' | b'\t'));
            if line.starts_with(b"X-") || continuation || (!seen_received && line.starts_with(b"Received:")) {
                seen_received |= line.starts_with(b"Received:");
                i = line_end;
            } else {
                let end = dump.len() - usize::from(dump.ends_with(b"\n\n"));
                return &dump[i..end];
            }
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
