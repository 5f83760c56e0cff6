//! The SMTP wire codec: pure functions and state machines, no I/O. The session feeds bytes in
//! and writes the replies these types render.
//!
//! - [`line`](mod@line): CRLF framing of command lines with a hard length limit;
//! - [`command`]: command parsing into [`Command`];
//! - [`address`]: envelope address syntax;
//! - [`data`]: the DATA receiver (end-of-data detection, unstuffing, line-ending policy) and
//!   the dot-stuffer used when relaying;
//! - [`reply`]: replies, enhanced status codes and their validation.

pub mod address;
pub mod command;
pub mod data;
pub mod line;
pub mod reply;

pub use address::Mailbox;
pub use command::Command;
pub use reply::{EnhancedCode, Reply};
