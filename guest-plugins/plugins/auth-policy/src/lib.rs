//! auth-policy: acts on the authentication results the host computed (the plugin does no DNS
//! and no cryptography itself).
//!
//! - DMARC `fail` with policy `reject` → `550 5.7.1`; with policy `quarantine` → the message is
//!   quarantined (set `dmarc_quarantine = "reject"` to refuse those too).
//! - SPF `fail` for MAIL FROM → `spf_fail`: `accept` (default: let DMARC decide), `reject`
//!   (`550 5.7.23` at MAIL) or `quarantine` (at DATA).
//! - `temperror` in SPF or DMARC → `451 4.7.x` when `tempfail_on_temperror` (default true), so
//!   a DNS outage delays mail instead of letting it through unchecked.
//! - A sender in one of `local_domains` must have authenticated (AUTH on a submission
//!   listener): otherwise `550 5.7.1` at MAIL, so nobody can claim a local address on port 25.
//!
//! ```toml
//! [[plugins]]
//! name = "auth-policy"
//! path = "auth_policy.wasm"
//! [plugins.config]
//! spf_fail = "accept"            # accept | reject | quarantine
//! dmarc_quarantine = "quarantine" # quarantine | reject
//! tempfail_on_temperror = true
//! local_domains = ["example.org"]  # senders here must be authenticated; none by default
//! ```

use serde::Deserialize;
use wasmtp_plugin::{
    Address, AuthResult, BodyAccess, Connection, Decision, DmarcPolicy, EditKind, Envelope, Filter, Manifest, Message,
    Stage, export,
};

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    spf_fail: SpfFail,
    dmarc_quarantine: DmarcQuarantine,
    tempfail_on_temperror: bool,
    local_domains: Vec<String>,
}

/// What to do with a message whose MAIL FROM failed SPF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SpfFail {
    Accept,
    Reject,
    Quarantine,
}

/// What to do with a message whose DMARC policy asks for quarantine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum DmarcQuarantine {
    Quarantine,
    Reject,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            spf_fail: SpfFail::Accept,
            dmarc_quarantine: DmarcQuarantine::Quarantine,
            tempfail_on_temperror: true,
            local_domains: Vec::new(),
        }
    }
}

struct AuthPolicy;

impl Filter for AuthPolicy {
    type Config = Config;

    fn manifest(_config: &Config) -> Manifest {
        Manifest::new("auth-policy", env!("CARGO_PKG_VERSION"))
            .stages([Stage::Mail, Stage::Data])
            .body(BodyAccess::None)
            .edits([EditKind::Quarantine])
    }

    fn on_mail(config: &Config, conn: &Connection, sender: &Address) -> Decision {
        let local = sender.domain().is_some_and(|d| config.local_domains.iter().any(|l| l.eq_ignore_ascii_case(d)));
        if local && conn.authenticated_as.is_none() {
            return Decision::reject(550, "5.7.1", "Authentication required to send as a local address");
        }
        let Some(spf) = &conn.auth.spf_mail else { return Decision::next() };
        match spf.result {
            AuthResult::Fail if config.spf_fail == SpfFail::Reject => {
                Decision::reject(550, "5.7.23", &format!("SPF validation failed for {}", spf.domain))
            }
            AuthResult::Temperror if config.tempfail_on_temperror => {
                Decision::tempfail(451, "4.7.24", "SPF validation error, try again later")
            }
            _ => Decision::next(),
        }
    }

    fn on_data(config: &Config, conn: &Connection, _envelope: &Envelope, _message: &Message) -> Decision {
        if let Some(dmarc) = &conn.auth.dmarc {
            match (dmarc.result, dmarc.policy) {
                (AuthResult::Fail, DmarcPolicy::Reject) => {
                    return Decision::reject(
                        550,
                        "5.7.1",
                        &format!("DMARC policy of {} rejects this message", dmarc.domain),
                    );
                }
                (AuthResult::Fail, DmarcPolicy::Quarantine) if config.dmarc_quarantine == DmarcQuarantine::Reject => {
                    return Decision::reject(
                        550,
                        "5.7.1",
                        &format!("DMARC policy of {} rejects this message", dmarc.domain),
                    );
                }
                (AuthResult::Fail, DmarcPolicy::Quarantine) => {
                    return Decision::next()
                        .quarantine(&format!("DMARC policy of {} asks for quarantine", dmarc.domain));
                }
                (AuthResult::Temperror, _) if config.tempfail_on_temperror => {
                    return Decision::tempfail(451, "4.7.5", "DMARC evaluation error, try again later");
                }
                _ => {}
            }
        }
        if config.spf_fail == SpfFail::Quarantine
            && conn.auth.spf_mail.as_ref().is_some_and(|spf| spf.result == AuthResult::Fail)
        {
            return Decision::next().quarantine("SPF validation failed");
        }
        Decision::next()
    }
}

export!(AuthPolicy);
