//! wasmtp: a filtering SMTP proxy that relays to an existing mail server in lockstep.
//!
//! Module map (data flows top to bottom: client bytes → session → upstream → reply):
//! - [`server`]: listener, connection limit, graceful shutdown;
//! - [`session`]: the per-connection SMTP state machine, one file per verb family;
//! - [`smtp`]: the pure wire codec (command parsing, data receiving, replies);
//! - [`message`]: message buffering (memory, then disk) and the `Received:` header;
//! - [`upstream`]: the lockstep SMTP relay and the embedded Maildir delivery;
//! - [`auth`]: SPF, DKIM, DMARC, ARC and iprev with mail-auth, and DKIM signing;
//! - [`config`]: the TOML configuration; [`cli`]: the command line; [`shutdown`]: drain signals.

pub mod auth;
pub mod cli;
pub mod config;
pub mod message;
pub mod plugins;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod smtp;
pub mod upstream;

pub use config::Config;
