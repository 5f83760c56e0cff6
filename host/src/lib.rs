//! wasmtp: a filtering SMTP proxy that relays to an existing mail server in lockstep.
//!
//! Module map; data flows top to bottom (client bytes → session → filter chain → upstream →
//! reply), and every module imports only from modules below it:
//! - [`cli`], [`server`]: the command line; the listeners, configuration generations and
//!   reloads, connection limits, the admin endpoints, privileges and graceful shutdown
//!   ([`shutdown`]);
//! - [`harness`]: the offline test harness behind `wasmtp plugin test` and `wasmtp replay` (a
//!   loaded chain over written or recorded sessions, no network);
//! - [`scaffold`]: `wasmtp plugin new`, standalone plugin projects in Rust, Python and
//!   JavaScript;
//! - [`session`]: the per-connection SMTP state machine, one file per verb family, the mail
//!   transaction, and session recording (`[record]`);
//! - [`wasm`]: the WebAssembly runtime that loads plugins and runs each call in a fresh
//!   sandbox; the one place that knows the plugin contract's bindings;
//! - [`filter`]: the filter core in plain Rust — the chain, the edit model, verdict merging,
//!   validation, host services — behind a `Sandbox` trait;
//! - [`upstream`]: the lockstep SMTP relay and the embedded Maildir delivery;
//! - [`auth`]: SPF, DKIM, DMARC, ARC and iprev with mail-auth, and DKIM signing;
//! - [`tls`]: rustls for STARTTLS and implicit TLS, server and upstream side;
//! - [`message`]: message buffering (memory, then disk), header sections, the `Received:` header;
//! - [`replies`]: every reply the proxy writes itself;
//! - [`smtp`]: the pure wire codec (command parsing, data receiving, replies);
//! - [`config`]: the TOML configuration;
//! - [`metrics`]: the Prometheus metrics every layer records into.

pub mod auth;
pub mod cli;
pub mod config;
pub mod filter;
pub mod harness;
pub mod message;
pub mod metrics;
pub mod replies;
pub mod scaffold;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod smtp;
pub mod tls;
pub mod upstream;
pub mod wasm;

pub use config::Config;

/// The module map above, checked: each module may use only the modules listed after it here.
#[cfg(test)]
mod layering {
    const LAYERS: &[&str] = &[
        "cli", "server", "harness", "scaffold", "session", "wasm", "filter", "upstream", "auth", "tls", "message",
        "replies", "config", "shutdown", "smtp", "metrics",
    ];

    fn sources(path: &std::path::Path, out: &mut Vec<(std::path::PathBuf, String)>) {
        if path.is_dir() {
            for entry in std::fs::read_dir(path).unwrap() {
                sources(&entry.unwrap().path(), out);
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
            out.push((path.to_path_buf(), std::fs::read_to_string(path).unwrap()));
        }
    }

    #[test]
    fn no_module_uses_one_above_it() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for (level, module) in LAYERS.iter().enumerate() {
            let mut files = Vec::new();
            sources(&src.join(module), &mut files);
            sources(&src.join(format!("{module}.rs")), &mut files);
            assert!(!files.is_empty(), "no sources for `{module}`");
            for (path, text) in files {
                for (i, _) in text.match_indices("crate::") {
                    let used: String =
                        text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                    let Some(used_level) = LAYERS.iter().position(|m| *m == used) else { continue };
                    assert!(
                        used_level >= level,
                        "{} (`{module}`) uses `crate::{used}`, which is above it in the module map",
                        path.display()
                    );
                }
            }
        }
    }
}
