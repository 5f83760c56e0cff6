//! Any command line: parsed or refused with a typed error, never a panic; a parsed MAIL or
//! RCPT holds a mailbox that parses again on its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wasmtp::smtp::Mailbox;
use wasmtp::smtp::command::{self, Command};

fuzz_target!(|line: &[u8]| {
    match command::parse(line) {
        Ok(Command::Mail(mail)) if !mail.sender.is_null() => {
            assert!(Mailbox::parse(mail.sender.as_str(), true, true).is_ok(), "{:?}", mail.sender);
            assert!(!mail.sender.as_str().contains(['\r', '\n', '\0', '<', '>']));
        }
        Ok(Command::Rcpt(rcpt)) => {
            assert!(Mailbox::parse(rcpt.recipient.as_str(), true, true).is_ok(), "{:?}", rcpt.recipient);
            assert!(!rcpt.recipient.as_str().contains(['\r', '\n', '\0', '<', '>']));
        }
        Ok(_) | Err(_) => {}
    }
});
