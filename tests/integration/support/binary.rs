//! The real `wasmtp` binary as an operator runs it: started with arguments or a configuration
//! file, ready once it logs that it accepts connections, its log kept so tests can wait for a
//! line (bounded), and signalled by its pid.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::{Client, WAIT, free_port};

/// The binary's stderr, line by line.
#[derive(Clone)]
struct Log {
    lines: Arc<Mutex<Vec<String>>>,
    count: watch::Receiver<usize>,
}

pub struct Binary {
    pub child: Child,
    /// The port of its (first) smtp listener.
    pub port: u16,
    log: Log,
}

impl Binary {
    /// Starts `serve --listen 127.0.0.1:<free port>` with `args` in `dir`.
    pub async fn start(args: &[&str], dir: &Path) -> Self {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut all = vec!["serve", "--listen", &listen];
        all.extend_from_slice(args);
        Self::spawn(&all, dir, &[], port).await
    }

    /// Starts `serve --config <config>` in `dir` with extra environment; `port` is where the
    /// configuration listens.
    pub async fn start_config(config: &Path, dir: &Path, env: &[(&str, &str)], port: u16) -> Self {
        let config = config.to_str().expect("utf-8 path");
        Self::spawn(&["serve", "--config", config], dir, env, port).await
    }

    async fn spawn(args: &[&str], dir: &Path, env: &[(&str, &str)], port: u16) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmtp"));
        command
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("wasmtp binary runs");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0);
        let mut reader = BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = lines.clone();
        // Keeps draining the log so the binary never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                let mut lines = kept.lock().unwrap();
                lines.push(line);
                count_tx.send_replace(lines.len());
            }
            // The sender drops here: waiters learn the binary exited.
        });
        let bin = Self { child, port, log: Log { lines, count } };
        bin.wait_for_log("accepting connections", 0).await;
        bin
    }

    pub async fn client(&self) -> Client {
        Client::connect(([127, 0, 0, 1], self.port).into()).await
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("running") as i32
    }

    pub fn signal(&self, signal: i32) {
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// Log lines so far: pass it to [`Binary::wait_for_log`] to wait for a line written later.
    pub fn log_len(&self) -> usize {
        self.log.lines.lock().unwrap().len()
    }

    pub fn log(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Waits (bounded) for a line after the first `after` lines that contains `needle`.
    pub async fn wait_for_log(&self, needle: &str, after: usize) -> String {
        let mut count = self.log.count.clone();
        let found = async {
            loop {
                if let Some(line) = self.log.lines.lock().unwrap().iter().skip(after).find(|l| l.contains(needle)) {
                    return line.clone();
                }
                if count.changed().await.is_err() {
                    panic!("wasmtp exited before logging `{needle}`:\n{}", self.log());
                }
            }
        };
        match tokio::time::timeout(WAIT, found).await {
            Ok(line) => line,
            Err(_) => panic!("no `{needle}` in the log within {WAIT:?}:\n{}", self.log()),
        }
    }
}
