//! TLS with rustls and its `ring` provider (pure Rust and assembly built by `cc`; no cmake or
//! Go toolchain as `aws-lc-rs` needs): the server side for STARTTLS and implicit-TLS listeners
//! — certificate chains and keys from PEM files, chosen by SNI, TLS 1.2 and 1.3 only, read
//! again by every configuration reload — and the client side for STARTTLS to the upstream.
//!
//! Without a configured certificate, the server side uses a self-signed one generated in memory
//! at start: opportunistic STARTTLS (RFC 3207, RFC 7435) is what every sending MTA expects on
//! port 25, and senders do not verify it. Submission listeners refuse to start without a real
//! certificate.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::config::{CertificateConfig, TlsConfig, UpstreamTls};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS 1.2 and 1.3 only.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// One certificate chain with its key, and the file it came from.
struct Loaded {
    key: Arc<CertifiedKey>,
    /// DER of the leaf, to check SNI names against.
    leaf: CertificateDer<'static>,
    source: String,
}

/// The server certificates of one configuration generation.
struct Certificates {
    loaded: Vec<Loaded>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for Certificates {
    /// The first certificate valid for the client's SNI name, else the first one.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = &self.loaded;
        let wanted = hello.server_name().and_then(|name| ServerName::try_from(name.to_string()).ok());
        let matching = wanted.and_then(|name| {
            loaded.iter().find(|l| {
                webpki::EndEntityCert::try_from(&l.leaf)
                    .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        matching.or(loaded.first()).map(|l| l.key.clone())
    }
}

/// The server side: what listeners hand to `tokio_rustls`.
pub struct ServerTls {
    certificates: Arc<Certificates>,
    config: Arc<rustls::ServerConfig>,
    self_signed: bool,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls").field("self_signed", &self.self_signed).finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the configured certificates, or generates a self-signed one for `hostname`.
    pub fn from_config(config: &TlsConfig, hostname: &str) -> anyhow::Result<Self> {
        let self_signed = config.certificates.is_empty();
        let loaded = if self_signed { vec![self_signed_for(hostname)?] } else { load_all(&config.certificates)? };
        let certificates = Arc::new(Certificates { loaded });
        let server = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(certificates.clone());
        Ok(Self { certificates, config: Arc::new(server), self_signed })
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }

    /// The certificate is generated, not configured.
    pub fn is_self_signed(&self) -> bool {
        self.self_signed
    }

    /// Where each certificate came from, for logs and `check-config`.
    pub fn describe(&self) -> Vec<String> {
        self.certificates.loaded.iter().map(|l| l.source.clone()).collect()
    }
}

fn load_all(files: &[CertificateConfig]) -> anyhow::Result<Vec<Loaded>> {
    files.iter().enumerate().map(|(i, f)| load(f).with_context(|| format!("field `tls.certificates[{i}]`"))).collect()
}

/// Loads one chain and its key, and checks that they belong together and that the leaf is
/// valid now: an error names the file.
fn load(files: &CertificateConfig) -> anyhow::Result<Loaded> {
    let cert_path = files.cert.display();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| anyhow::anyhow!("cannot read the certificate file {cert_path}: {e}"))?;
    let leaf = chain.first().cloned().with_context(|| format!("{cert_path}: no certificate in the file"))?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| anyhow::anyhow!("cannot read the key file {}: {e}", files.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| anyhow::anyhow!("{}: not a usable private key: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| anyhow::anyhow!("{cert_path} and {} do not belong together: {e}", files.key.display()))?;
    check_validity(&leaf, &files.cert)?;
    Ok(Loaded { key: Arc::new(certified), leaf, source: cert_path.to_string() })
}

/// Refuses a leaf certificate that has expired or is not valid yet.
fn check_validity(leaf: &CertificateDer<'_>, path: &Path) -> anyhow::Result<()> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| anyhow::anyhow!("{}: cannot parse the certificate: {e}", path.display()))?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let validity = cert.validity();
    if now > validity.not_after.timestamp() {
        anyhow::bail!("{}: the certificate expired on {}", path.display(), validity.not_after);
    }
    if now < validity.not_before.timestamp() {
        anyhow::bail!("{}: the certificate is not valid before {}", path.display(), validity.not_before);
    }
    Ok(())
}

fn self_signed_for(hostname: &str) -> anyhow::Result<Loaded> {
    let generated = rcgen::generate_simple_self_signed(vec![hostname.to_string()])
        .context("cannot generate a self-signed certificate")?;
    let leaf = CertificateDer::from(generated.cert.der().to_vec());
    let key = PrivateKeyDer::try_from(generated.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("self-signed key: {e}"))?;
    let signing = provider().key_provider.load_private_key(key).context("self-signed key")?;
    Ok(Loaded {
        key: Arc::new(CertifiedKey::new(vec![leaf.clone()], signing)),
        leaf,
        source: format!("self-signed for {hostname}"),
    })
}

/// What a TLS session negotiated, for plugins, headers and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// e.g. "TLSv1.3".
    pub version: String,
    /// e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: String,
    /// The name the client asked for (SNI), if any.
    pub sni: Option<String>,
}

impl Negotiated {
    pub fn of(conn: &rustls::CommonState, sni: Option<&str>) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
            Some(other) => format!("{other:?}"),
            None => "unknown".to_string(),
        };
        let cipher = conn.negotiated_cipher_suite().map_or("unknown".to_string(), |s| format!("{:?}", s.suite()));
        Self { version, cipher, sni: sni.map(String::from) }
    }
}

/// The client side, for STARTTLS to the upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTlsClient {
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
}

impl UpstreamTlsClient {
    /// `None` when upstream TLS is off. Under `opportunistic` the upstream's certificate is not
    /// verified (encryption against passive eavesdropping, as opportunistic SMTP TLS is, RFC
    /// 7435); under `required` it is verified against `ca_file` (or the system's roots) for
    /// `server_name` (or the upstream's host).
    pub fn new(
        mode: UpstreamTls,
        ca_file: Option<&PathBuf>,
        server_name: Option<&str>,
        host: &str,
    ) -> anyhow::Result<Option<Self>> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)
            .context("TLS versions")?;
        let config = match mode {
            UpstreamTls::Off => return Ok(None),
            UpstreamTls::Opportunistic if ca_file.is_none() => {
                builder.dangerous().with_custom_certificate_verifier(Arc::new(Unverified)).with_no_client_auth()
            }
            UpstreamTls::Opportunistic | UpstreamTls::Required => {
                let mut roots = rustls::RootCertStore::empty();
                match ca_file {
                    Some(path) => {
                        for cert in CertificateDer::pem_file_iter(path)
                            .map_err(|e| anyhow::anyhow!("cannot read the CA file {}: {e}", path.display()))?
                        {
                            let cert = cert.map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                            roots.add(cert).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                        }
                    }
                    None => {
                        for cert in rustls_native_certs::load_native_certs().certs {
                            let _ = roots.add(cert);
                        }
                    }
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
        };
        let name = server_name.unwrap_or(host).to_string();
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| anyhow::anyhow!("`{name}` is not a TLS server name: {e}"))?;
        Ok(Some(Self { config: Arc::new(config), server_name }))
    }

    pub fn connector(&self) -> (tokio_rustls::TlsConnector, ServerName<'static>) {
        (tokio_rustls::TlsConnector::from(self.config.clone()), self.server_name.clone())
    }
}

/// Accepts any certificate: opportunistic TLS encrypts without authenticating the peer.
#[derive(Debug)]
struct Unverified;

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &provider().signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider().signature_verification_algorithms.supported_schemes()
    }
}
