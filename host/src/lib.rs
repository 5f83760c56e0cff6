//! wasmtp: a filtering SMTP proxy that relays to an existing mail server in lockstep.
//!
//! Module map; data flows top to bottom (client bytes → session → filter chain → upstream →
//! reply), and every module imports only from modules below it:
//! - [`cli`], [`server`]: the command line; the listener, connection limit and graceful
//!   shutdown ([`shutdown`]);
//! - [`session`]: the per-connection SMTP state machine, one file per verb family, and the
//!   mail transaction;
//! - [`wasm`]: the WebAssembly runtime that loads plugins and runs each call in a fresh
//!   sandbox; the one place that knows the plugin contract's bindings;
//! - [`filter`]: the filter core in plain Rust — the chain, the edit model, verdict merging,
//!   validation, host services — behind a `Sandbox` trait;
//! - [`upstream`]: the lockstep SMTP relay and the embedded Maildir delivery;
//! - [`auth`]: SPF, DKIM, DMARC, ARC and iprev with mail-auth, and DKIM signing;
//! - [`message`]: message buffering (memory, then disk), header sections, the `Received:` header;
//! - [`replies`]: every reply the proxy writes itself;
//! - [`smtp`]: the pure wire codec (command parsing, data receiving, replies);
//! - [`config`]: the TOML configuration.

pub mod auth;
pub mod cli;
pub mod config;
pub mod filter;
pub mod message;
pub mod replies;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod smtp;
pub mod upstream;
pub mod wasm;

pub use config::Config;
