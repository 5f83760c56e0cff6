//! The integration suite: the proxy in front of a recording upstream, Postfix's smtp-sink and
//! the embedded Maildir, driven by raw sockets, swaks and Python's smtplib. Everything listens
//! on 127.0.0.1 and every wait is bounded.

mod support;

mod auth;
mod author_kit;
mod bounds;
mod clients;
mod examples;
mod happy_path;
mod lifecycle;
mod limits;
mod operations;
mod plugins;
mod polyglot;
mod postfix;
mod record_replay;
mod sandbox;
mod scale_out;
mod shadow;
mod smuggling;
mod tls;
mod upstream_faults;
