//! rate-limiter: at most `limit` messages (MAIL commands) per client IP in a fixed window.
//!
//! The counter lives in the shared key-value store (`ip:<address>`), so with a shared backend
//! the limit holds across every proxy. The window starts with the first MAIL of an address
//! and lasts `window_secs`; then the count starts over.
//!
//! ```toml
//! [[plugins]]
//! name = "ratelimit"
//! path = "rate_limiter.wasm"
//! [plugins.config]
//! limit = 100         # messages per window (default 100)
//! window_secs = 3600  # window length in seconds (default 3600; 0 counts as 1)
//! ```

use std::time::Duration;

use serde::Deserialize;
use wasmtp_plugin::{Address, BodyAccess, Connection, Decision, Filter, Level, Manifest, Stage, export, kv};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    limit: u64,
    window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { limit: 100, window_secs: 3600 }
    }
}

struct RateLimiter;

impl Filter for RateLimiter {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("rate-limiter", env!("CARGO_PKG_VERSION")).stages([Stage::Mail]).body(BodyAccess::None)
    }

    fn on_mail(config: &Config, conn: &Connection, _sender: &Address) -> Decision {
        let window = Duration::from_secs(config.window_secs.max(1));
        let count = match kv::incr(&format!("ip:{}", conn.client_ip), 1, Some(window)) {
            Ok(count) => count,
            // A store that cannot count must not stop mail: the limit is a courtesy, not a
            // security boundary. Say so once per message in the log.
            Err(err) => {
                wasmtp_plugin::log(Level::Warn, &format!("not rate limited: {err}"));
                return Decision::next();
            }
        };
        if count > i64::try_from(config.limit).unwrap_or(i64::MAX) {
            return Decision::tempfail(
                450,
                "4.7.1",
                &format!("Too many messages from {}, try again later", conn.client_ip),
            );
        }
        Decision::next()
    }
}

export!(RateLimiter);

#[cfg(all(test, not(target_family = "wasm")))] // the mock host is for native tests
mod tests {
    use wasmtp_plugin::Verdict;
    use wasmtp_plugin::testing::{self, MockHost};

    use super::*;

    #[test]
    fn counts_per_client_in_the_store_and_tempfails_over_the_limit() {
        let host = MockHost::new().config(r#"{"limit": 2}"#).install();
        let conn = testing::connection("192.0.2.7");
        let sender = testing::address("a@example.org");
        for _ in 0..2 {
            assert!(matches!(testing::on_mail::<RateLimiter>(&conn, &sender).verdict, Verdict::Continue));
        }
        let third = testing::on_mail::<RateLimiter>(&conn, &sender);
        assert!(format!("{third:?}").contains("Too many messages from 192.0.2.7"), "{third:?}");
        assert_eq!(host.kv_value("ip:192.0.2.7").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn lets_mail_through_when_the_store_is_unavailable() {
        let host = MockHost::new().kv_unavailable("redis down").install();
        let decision = testing::on_mail::<RateLimiter>(&testing::connection("192.0.2.7"), &testing::address(""));
        assert!(matches!(decision.verdict, Verdict::Continue));
        assert_eq!(host.logs().len(), 1);
        assert!(host.logs()[0].1.starts_with("not rate limited:"), "{:?}", host.logs());
    }
}
