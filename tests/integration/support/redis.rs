//! A private `redis-server` on a free loopback port, with no persistence, stopped by its pid;
//! it can be killed, frozen (SIGSTOP) and started again on the same port, and inspected with
//! `redis-cli`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{WAIT, free_port};

pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// For a TLS-only server: its certificate and key, and the CA that signed them.
    tls: Option<(wasmtp::config::CertificateConfig, std::path::PathBuf)>,
}

impl RedisServer {
    pub async fn start() -> Self {
        let mut redis = Self { port: free_port(), child: None, dir: tempfile::tempdir().unwrap(), tls: None };
        redis.restart().await;
        redis
    }

    /// A server that speaks only TLS on its port, with `cert` signed by the CA at `ca`.
    pub async fn start_tls(cert: wasmtp::config::CertificateConfig, ca: std::path::PathBuf) -> Self {
        let mut redis =
            Self { port: free_port(), child: None, dir: tempfile::tempdir().unwrap(), tls: Some((cert, ca)) };
        redis.restart().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &self.port.to_string()]),
            Some((cert, _)) => command.args(["--port", "0", "--tls-port", &self.port.to_string()]).args([
                "--tls-cert-file",
                cert.cert.to_str().unwrap(),
                "--tls-key-file",
                cert.key.to_str().unwrap(),
                "--tls-auth-clients",
                "no",
            ]),
        };
        let child = command
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--dir", self.dir.path().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (the Debian package `redis-server`; scripts/setup --test installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + WAIT;
        while self.cli(&["PING"]) != "PONG" {
            assert!(std::time::Instant::now() < deadline, "redis-server did not start answering");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server and waits for it to be gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes (true) or thaws (false) the server: connected clients get no answers meanwhile.
    pub fn freeze(&self, frozen: bool) {
        let pid = self.child.as_ref().expect("running").id() as i32;
        let signal = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// Runs one command with `redis-cli` and returns its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some((_, ca)) = &self.tls {
            command.args(["--tls", "--cacert", ca.to_str().unwrap()]);
        }
        let output = command.args(args).stderr(Stdio::null()).output().expect("redis-cli runs");
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A frozen server would ignore SIGKILL's cleanup until thawed; thaw it first.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}
