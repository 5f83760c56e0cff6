//! Authentication results in the host's own words (RFC 8601 result names): what the session
//! keeps, what the filter core hands to plugins, and what the plugin contract converts. Nothing
//! here knows mail-auth or WebAssembly; [`super`] maps mail-auth's outputs to these types.
//! They read and write as TOML and JSON, as test fixtures give them (`wasmtp plugin test`).

use serde::{Deserialize, Serialize};

/// The result of one authentication check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthResult {
    Pass,
    Fail,
    Softfail,
    Neutral,
    None,
    Temperror,
    Permerror,
}

/// iprev (RFC 8601 §3): the client's PTR names and whether one of them resolves back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IprevCheck {
    pub result: AuthResult,
    /// PTR names of the client address, without the trailing dot.
    #[serde(default)]
    pub names: Vec<String>,
}

impl IprevCheck {
    /// The client's verified host name: the first PTR name, when iprev passed.
    pub fn verified_name(&self) -> Option<&str> {
        (self.result == AuthResult::Pass).then(|| self.names.first().map(String::as_str)).flatten()
    }
}

/// SPF (RFC 7208) for one identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpfCheck {
    pub result: AuthResult,
    /// The domain checked: the HELO name, or the MAIL FROM domain.
    pub domain: String,
}

/// One DKIM signature (RFC 6376).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimCheck {
    pub result: AuthResult,
    /// `d=`; empty when the signature could not be parsed.
    pub domain: String,
    /// `s=`.
    #[serde(default)]
    pub selector: String,
    /// Why the signature did not pass, when it did not.
    #[serde(default)]
    pub detail: Option<String>,
}

/// The DMARC policy that applies to the author domain, after `sp=` and `np=` selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DmarcPolicy {
    None,
    Quarantine,
    Reject,
    /// No record, or no policy found.
    Unspecified,
}

fn unspecified() -> DmarcPolicy {
    DmarcPolicy::Unspecified
}

/// DMARC (RFC 7489) for the RFC 5322 From domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DmarcCheck {
    pub result: AuthResult,
    pub domain: String,
    #[serde(default = "unspecified")]
    pub policy: DmarcPolicy,
    #[serde(default)]
    pub spf_aligned: bool,
    #[serde(default)]
    pub dkim_aligned: bool,
}

/// Every result known at a stage: iprev from connect, SPF from MAIL, DKIM, ARC and DMARC from
/// DATA. A check that is switched off (or not reached yet) is absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthResults {
    pub iprev: Option<IprevCheck>,
    pub spf_helo: Option<SpfCheck>,
    pub spf_mail: Option<SpfCheck>,
    pub dkim: Vec<DkimCheck>,
    pub arc: Option<AuthResult>,
    pub dmarc: Option<DmarcCheck>,
}
