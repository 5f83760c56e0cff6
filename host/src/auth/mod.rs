//! Sender authentication, computed once by the host with `mail-auth`: iprev at connect, SPF
//! (HELO and MAIL FROM) at MAIL, DKIM, ARC and DMARC at DATA; the `Authentication-Results:`
//! header (RFC 8601); and DKIM signing of relayed mail after all plugin edits.
//!
//! Each check returns the host's own result type ([`results`]) next to mail-auth's output, which
//! only the header needs; the session keeps that one value per check. Every check runs within
//! `auth.dns_timeout`: a DNS failure or timeout is `temperror`, never a hang and never a silent
//! pass.

pub mod results;

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::Context;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcOutput, DmarcResult,
    IprevOutput, IprevResult, MessageAuthenticator, SpfOutput, SpfResult,
};
use rustls_pki_types::{PrivateKeyDer, pem::PemObject};

pub use self::results::{AuthResult, AuthResults, DkimCheck, DmarcCheck, DmarcPolicy, IprevCheck, SpfCheck};
use crate::config::{AuthConfig, DkimSignConfig, SignAlgorithm};

/// The configured checks and the resolver they share.
pub struct Auth {
    authenticator: MessageAuthenticator,
    config: AuthConfig,
    authserv_id: String,
    signer: Option<Signer>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").field("config", &self.config).finish_non_exhaustive()
    }
}

/// The DKIM signer of `[auth.sign]`, built once from its key.
enum Signer {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// The error recorded when a check ran out of time.
fn dns_timeout() -> mail_auth::Error {
    mail_auth::Error::Io("DNS timeout".into())
}

/// iprev for the client: the result plugins see, and mail-auth's output for the header.
#[derive(Debug)]
pub struct Iprev {
    pub check: IprevCheck,
    output: IprevOutput,
}

impl Iprev {
    fn new(output: IprevOutput) -> Self {
        Self { check: iprev_check(&output), output }
    }
}

/// SPF for one identity: the result plugins see, and mail-auth's output for the header and DMARC.
#[derive(Debug)]
pub struct Spf {
    pub check: SpfCheck,
    output: SpfOutput,
}

impl Spf {
    fn new(output: SpfOutput) -> Self {
        Self { check: spf_check(&output), output }
    }
}

/// The session's facts and results from before DATA, for the header and DMARC.
#[derive(Debug, Clone, Copy)]
pub struct EarlierChecks<'a> {
    pub client_ip: IpAddr,
    pub helo: &'a str,
    pub mail_from: &'a str,
    pub iprev: Option<&'a Iprev>,
    pub spf_helo: Option<&'a Spf>,
    pub spf_mail: Option<&'a Spf>,
}

/// What the data stage computed, for plugins and for the header.
#[derive(Debug, Default)]
pub struct MessageChecks {
    pub dkim: Vec<DkimCheck>,
    pub arc: Option<AuthResult>,
    pub dmarc: Option<DmarcCheck>,
    /// Our `Authentication-Results:` header, CRLF-terminated.
    pub header: String,
}

impl Auth {
    /// Builds the resolver and loads the signing key. `None` when `[auth]` is not enabled.
    pub fn from_config(config: &AuthConfig, hostname: &str) -> anyhow::Result<Option<Self>> {
        if !config.enabled && config.sign.is_none() {
            return Ok(None);
        }
        let mut options = ResolverOpts::default();
        options.timeout = config.dns_timeout;
        options.attempts = 1;
        // With explicit name servers, answers come from them alone, not from /etc/hosts.
        options.use_hosts_file = ResolveHosts::Never;
        let authenticator = if config.nameservers.is_empty() {
            MessageAuthenticator::new_system_conf().context("cannot read the system resolver configuration")?
        } else {
            let servers = config
                .nameservers
                .iter()
                .map(|addr| {
                    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                    for connection in &mut server.connections {
                        connection.port = addr.port();
                    }
                    server
                })
                .collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
                .context("cannot set up the DNS resolver")?
        };
        let signer = config.sign.as_ref().map(Signer::load).transpose()?;
        Ok(Some(Self {
            authenticator,
            config: config.clone(),
            authserv_id: config.authserv_id.clone().unwrap_or_else(|| hostname.to_string()),
            signer,
        }))
    }

    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    pub fn checks_enabled(&self) -> bool {
        self.config.enabled
    }

    fn within<T>(&self, work: impl Future<Output = T>, timed_out: impl FnOnce() -> T) -> impl Future<Output = T> {
        let budget = self.config.dns_timeout + Duration::from_millis(100);
        async move { tokio::time::timeout(budget, work).await.unwrap_or_else(|_| timed_out()) }
    }

    /// iprev for the client address, if enabled.
    pub async fn iprev(&self, ip: IpAddr) -> Option<Iprev> {
        if !(self.config.enabled && self.config.iprev) {
            return None;
        }
        let timeout = || IprevOutput { result: IprevResult::TempError(dns_timeout()), ptr: None };
        Some(Iprev::new(self.within(self.authenticator.verify_iprev(ip), timeout).await))
    }

    /// SPF for the HELO identity, if enabled.
    pub async fn spf_helo(&self, ip: IpAddr, helo: &str) -> Option<Spf> {
        if !(self.config.enabled && self.config.spf) {
            return None;
        }
        let params = SpfParameters::verify_ehlo(ip, helo, &self.authserv_id);
        let timeout = || SpfOutput::new(helo.to_string()).with_result(SpfResult::TempError);
        Some(Spf::new(self.within(self.authenticator.verify_spf(params), timeout).await))
    }

    /// SPF for the MAIL FROM identity (`postmaster@helo` for the null sender), if enabled.
    pub async fn spf_mail(&self, ip: IpAddr, helo: &str, sender: &str) -> Option<Spf> {
        if !(self.config.enabled && self.config.spf) {
            return None;
        }
        let sender = if sender.is_empty() { format!("postmaster@{helo}") } else { sender.to_string() };
        let domain = sender.rsplit_once('@').map_or(helo, |(_, d)| d).to_string();
        let params = SpfParameters::verify_mail_from(ip, helo, &self.authserv_id, &sender);
        let timeout = || SpfOutput::new(domain).with_result(SpfResult::TempError);
        Some(Spf::new(self.within(self.authenticator.verify_spf(params), timeout).await))
    }

    /// DKIM, ARC and DMARC over the received message, and the `Authentication-Results:`
    /// header covering every check of the transaction.
    pub async fn message(&self, raw: &[u8], earlier: &EarlierChecks<'_>) -> MessageChecks {
        let EarlierChecks { client_ip, helo, mail_from, iprev, spf_helo, spf_mail } = *earlier;
        let mut results = AuthenticationResults::new(&self.authserv_id);
        if let Some(iprev) = iprev {
            results = results.with_iprev_result(&iprev.output, client_ip);
        }
        if let Some(spf) = spf_helo {
            results = results.with_spf_ehlo_result(&spf.output, client_ip, helo);
        }
        if let Some(spf) = spf_mail {
            results = results.with_spf_mailfrom_result(&spf.output, client_ip, mail_from, helo);
        }
        let mut checks = MessageChecks::default();
        let Some(message) = (self.config.enabled).then(|| AuthenticatedMessage::parse(raw)).flatten() else {
            checks.header = results.to_header();
            return checks;
        };
        let from_domain = message.from().rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase()).unwrap_or_default();
        let dkim: Vec<DkimOutput<'_>> = if self.config.dkim {
            let timeout = || vec![DkimOutput::temp_err(dns_timeout())];
            self.within(self.authenticator.verify_dkim(&message), timeout).await
        } else {
            Vec::new()
        };
        if self.config.dkim {
            results = results.with_dkim_results(&dkim, message.from());
            checks.dkim = dkim.iter().map(dkim_check).collect();
            // mail-auth passes over DKIM-Signature fields it cannot parse at all; RFC 6376
            // §6.1.1 makes them PERMFAIL, so plugins hear of them.
            for error in &message.errors {
                if std::str::from_utf8(error.name).is_ok_and(|n| n.eq_ignore_ascii_case("DKIM-Signature"))
                    && !matches!(error.header, mail_auth::Error::Dkim(_))
                {
                    checks.dkim.push(DkimCheck {
                        result: AuthResult::Permerror,
                        domain: String::new(),
                        selector: String::new(),
                        detail: Some(error.header.to_string()),
                    });
                }
            }
        }
        if self.config.arc {
            let timeout = || ArcOutput::default().with_result(DkimResult::TempError(dns_timeout()));
            let arc = self.within(self.authenticator.verify_arc(&message), timeout).await;
            results = results.with_arc_result(&arc, client_ip);
            checks.arc = Some(arc_result(arc.result()));
        }
        if self.config.dmarc && self.config.dkim && self.config.spf {
            let none = SpfOutput::new(String::new()).with_result(SpfResult::None);
            let spf = spf_mail.map_or(&none, |spf| &spf.output);
            let mail_from_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
            let params = DmarcParameters::new(&message, &dkim, mail_from_domain, spf);
            let timeout = || {
                DmarcOutput::new(from_domain.clone())
                    .with_dkim_result(DmarcResult::TempError(dns_timeout()))
                    .with_spf_result(DmarcResult::TempError(dns_timeout()))
            };
            let dmarc = self.within(self.authenticator.verify_dmarc(params), timeout).await;
            results = results.with_dmarc_result(&dmarc);
            checks.dmarc = Some(dmarc_check(&dmarc));
        }
        checks.header = results.to_header();
        checks
    }

    /// A signer to feed the final message to, chunk by chunk, when signing is configured: only
    /// the header section is buffered, the body is hashed as it streams by.
    pub fn signing(&self) -> Option<Signing<'_>> {
        Some(match self.signer.as_ref()? {
            Signer::Rsa(signer) => Signing::Rsa(signer.sign_streaming()),
            Signer::Ed25519(signer) => Signing::Ed25519(signer.sign_streaming()),
        })
    }
}

/// A DKIM signature being computed over a message as it streams.
pub enum Signing<'a> {
    Rsa(mail_auth::dkim::DkimSigningStream<'a, RsaKey<Sha256>>),
    Ed25519(mail_auth::dkim::DkimSigningStream<'a, Ed25519Key>),
}

impl Signing<'_> {
    pub fn write(&mut self, chunk: &[u8]) {
        match self {
            Signing::Rsa(stream) => stream.write(chunk),
            Signing::Ed25519(stream) => stream.write(chunk),
        }
    }

    /// The `DKIM-Signature:` header field, CRLF-terminated.
    pub fn finish(self) -> Result<String, mail_auth::Error> {
        let signature = match self {
            Signing::Rsa(stream) => stream.finish(),
            Signing::Ed25519(stream) => stream.finish(),
        };
        signature.map(|s| s.to_header())
    }
}

impl Signer {
    fn load(config: &DkimSignConfig) -> anyhow::Result<Self> {
        let path = &config.key_file;
        let der = PrivateKeyDer::from_pem_file(path)
            .map_err(|e| anyhow::anyhow!("cannot read the DKIM key {}: {e}", path.display()))?;
        let headers: Vec<&str> = config.headers.iter().map(String::as_str).collect();
        Ok(match config.algorithm {
            SignAlgorithm::Rsa => {
                let key = RsaKey::<Sha256>::from_key_der(der)
                    .map_err(|e| anyhow::anyhow!("{} is not a usable RSA key: {e}", path.display()))?;
                Signer::Rsa(
                    DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(headers),
                )
            }
            SignAlgorithm::Ed25519 => {
                let PrivateKeyDer::Pkcs8(pkcs8) = der else {
                    anyhow::bail!("{}: an Ed25519 key must be PKCS#8 PEM", path.display());
                };
                let key = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
                    .map_err(|e| anyhow::anyhow!("{} is not a usable Ed25519 key: {e}", path.display()))?;
                Signer::Ed25519(
                    DkimSigner::from_key(key).domain(&config.domain).selector(&config.selector).headers(headers),
                )
            }
        })
    }
}

/// mail-auth's DKIM result in RFC 8601 words. A body hash mismatch is reported by mail-auth as
/// `neutral`; RFC 6376 §6.1.3 makes it a PERMFAIL, so plugins see `fail`.
fn dkim_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Neutral(mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch)) => {
            AuthResult::Fail
        }
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::Neutral(_) => AuthResult::Neutral,
        DkimResult::Fail(_) => AuthResult::Fail,
        DkimResult::PermError(_) => AuthResult::Permerror,
        DkimResult::TempError(_) => AuthResult::Temperror,
        DkimResult::None => AuthResult::None,
    }
}

/// ARC knows pass, fail and none (RFC 8617 §4.4); a chain mail-auth calls neutral (a broken
/// message signature, say) did not validate: fail.
fn arc_result(r: &DkimResult) -> AuthResult {
    match r {
        DkimResult::Pass => AuthResult::Pass,
        DkimResult::None => AuthResult::None,
        DkimResult::TempError(_) => AuthResult::Temperror,
        DkimResult::PermError(_) => AuthResult::Permerror,
        DkimResult::Fail(_) | DkimResult::Neutral(_) => AuthResult::Fail,
    }
}

fn dkim_check(output: &DkimOutput<'_>) -> DkimCheck {
    // A signature that could not even be parsed is reported without one: PERMFAIL.
    let malformed = output.signature().is_none() && !matches!(output.result(), DkimResult::Pass | DkimResult::None);
    let detail = match output.result() {
        DkimResult::Neutral(e) | DkimResult::Fail(e) | DkimResult::PermError(e) | DkimResult::TempError(e) => {
            Some(e.to_string())
        }
        DkimResult::Pass | DkimResult::None => None,
    };
    DkimCheck {
        result: if malformed { AuthResult::Permerror } else { dkim_result(output.result()) },
        domain: output.signature().map(|s| s.d.clone()).unwrap_or_default(),
        selector: output.signature().map(|s| s.s.clone()).unwrap_or_default(),
        detail,
    }
}

fn spf_check(output: &SpfOutput) -> SpfCheck {
    let result = match output.result() {
        SpfResult::Pass => AuthResult::Pass,
        SpfResult::Fail => AuthResult::Fail,
        SpfResult::SoftFail => AuthResult::Softfail,
        SpfResult::Neutral => AuthResult::Neutral,
        SpfResult::TempError => AuthResult::Temperror,
        SpfResult::PermError => AuthResult::Permerror,
        SpfResult::None => AuthResult::None,
    };
    SpfCheck { result, domain: output.domain().to_string() }
}

fn iprev_check(output: &IprevOutput) -> IprevCheck {
    let result = match &output.result {
        IprevResult::Pass => AuthResult::Pass,
        IprevResult::Fail(_) => AuthResult::Fail,
        IprevResult::TempError(_) => AuthResult::Temperror,
        IprevResult::PermError(_) => AuthResult::Permerror,
        IprevResult::None => AuthResult::None,
    };
    let names = output.ptr.as_ref().map(|p| p.iter().map(|n| n.trim_end_matches('.').to_string()).collect());
    IprevCheck { result, names: names.unwrap_or_default() }
}

fn dmarc_check(output: &DmarcOutput) -> DmarcCheck {
    let aligned = |r: &DmarcResult| matches!(r, DmarcResult::Pass);
    let (spf, dkim) = (output.spf_result(), output.dkim_result());
    let policy = output.policy();
    // mail-auth ranks the SPF and DKIM outcomes and tells "no record" (none) from "a record and
    // nothing aligned" (fail).
    let result = match output.result() {
        DmarcResult::Pass => AuthResult::Pass,
        DmarcResult::Fail(_) => AuthResult::Fail,
        DmarcResult::TempError(_) => AuthResult::Temperror,
        DmarcResult::PermError(_) => AuthResult::Permerror,
        DmarcResult::None => AuthResult::None,
    };
    let policy = match policy {
        mail_auth::dmarc::Policy::None => DmarcPolicy::None,
        mail_auth::dmarc::Policy::Quarantine => DmarcPolicy::Quarantine,
        mail_auth::dmarc::Policy::Reject => DmarcPolicy::Reject,
        mail_auth::dmarc::Policy::Unspecified => DmarcPolicy::Unspecified,
    };
    DmarcCheck {
        result,
        domain: output.domain().to_string(),
        policy,
        spf_aligned: aligned(spf),
        dkim_aligned: aligned(dkim),
    }
}

#[cfg(test)]
mod tests {
    use mail_auth::dkim::DkimError;

    use super::*;

    #[test]
    fn a_dkim_body_hash_mismatch_is_a_failure() {
        let mismatch = DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch));
        assert_eq!(dkim_result(&mismatch), AuthResult::Fail);
        let other_neutral = DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::SignatureExpired));
        assert_eq!(dkim_result(&other_neutral), AuthResult::Neutral);
        assert_eq!(dkim_result(&DkimResult::Pass), AuthResult::Pass);
        assert_eq!(dkim_result(&DkimResult::Fail(dns_timeout())), AuthResult::Fail);
        assert_eq!(dkim_result(&DkimResult::TempError(dns_timeout())), AuthResult::Temperror);
        assert_eq!(dkim_result(&DkimResult::PermError(dns_timeout())), AuthResult::Permerror);
        assert_eq!(dkim_result(&DkimResult::None), AuthResult::None);
    }

    #[test]
    fn an_arc_chain_that_does_not_validate_fails() {
        let neutral = DkimResult::Neutral(mail_auth::Error::Dkim(DkimError::FailedBodyHashMatch));
        assert_eq!(arc_result(&neutral), AuthResult::Fail);
        assert_eq!(arc_result(&DkimResult::Fail(dns_timeout())), AuthResult::Fail);
        assert_eq!(arc_result(&DkimResult::Pass), AuthResult::Pass);
        assert_eq!(arc_result(&DkimResult::None), AuthResult::None);
        assert_eq!(arc_result(&DkimResult::TempError(dns_timeout())), AuthResult::Temperror);
    }

    #[test]
    fn spf_results_keep_their_names_and_domain() {
        let cases = [
            (SpfResult::Pass, AuthResult::Pass),
            (SpfResult::Fail, AuthResult::Fail),
            (SpfResult::SoftFail, AuthResult::Softfail),
            (SpfResult::Neutral, AuthResult::Neutral),
            (SpfResult::TempError, AuthResult::Temperror),
            (SpfResult::PermError, AuthResult::Permerror),
            (SpfResult::None, AuthResult::None),
        ];
        for (spf, expected) in cases {
            let check = Spf::new(SpfOutput::new("example.org".into()).with_result(spf)).check;
            assert_eq!(check, SpfCheck { result: expected, domain: "example.org".into() });
        }
    }

    #[test]
    fn iprev_names_lose_their_trailing_dot_and_only_a_pass_verifies_one() {
        let pass = Iprev::new(IprevOutput {
            result: IprevResult::Pass,
            ptr: Some(std::sync::Arc::from(vec!["mx.example.org.".into(), "other.example.".into()])),
        });
        assert_eq!(pass.check.names, ["mx.example.org", "other.example"]);
        assert_eq!(pass.check.verified_name(), Some("mx.example.org"));
        let fail = Iprev::new(IprevOutput {
            result: IprevResult::Fail(dns_timeout()),
            ptr: Some(std::sync::Arc::from(vec!["mx.example.org.".into()])),
        });
        assert_eq!(fail.check.result, AuthResult::Fail);
        assert_eq!(fail.check.verified_name(), None);
        let timeout = Iprev::new(IprevOutput { result: IprevResult::TempError(dns_timeout()), ptr: None });
        assert_eq!(timeout.check, IprevCheck { result: AuthResult::Temperror, names: vec![] });
    }

    #[test]
    fn dmarc_keeps_the_alignment_of_each_identity() {
        let output = DmarcOutput::new("example.org".into())
            .with_dkim_result(DmarcResult::Pass)
            .with_spf_result(DmarcResult::Fail(mail_auth::Error::NotAligned));
        let check = dmarc_check(&output);
        assert_eq!(check.result, AuthResult::Pass, "one aligned pass is enough");
        assert_eq!((check.spf_aligned, check.dkim_aligned), (false, true));
        assert_eq!(check.domain, "example.org");
        assert_eq!(check.policy, DmarcPolicy::None, "mail-auth starts from p=none");
        let none = dmarc_check(&DmarcOutput::new("example.org".into()));
        assert_eq!(none.result, AuthResult::None);
    }
}
