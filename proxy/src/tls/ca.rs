//! The embedded certificate authority of standalone mode: mints the SPIFFE certificates
//! of the workloads on this node when no SDS server provides them. Keys are ECDSA P-256
//! (rcgen with ring, the one crypto provider of the proxy).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::SpiffeId;

/// A certificate authority: its certificate and signing key.
pub struct Ca {
    trust_domain: String,
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Ca")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Why a CA could not be created or loaded, or a certificate not issued.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct CaError {
    what: &'static str,
    source: rcgen::Error,
}

fn ca_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> CaError {
    move |source| CaError { what, source }
}

/// A workload certificate and its key, as issued.
pub struct Issued {
    /// The identity in its URI SAN.
    pub id: SpiffeId,
    /// The leaf certificate (the CA is the trust anchor; there are no intermediates).
    pub cert: CertificateDer<'static>,
    /// Its private key (PKCS#8), only ever in memory.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// Validity.
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("id", &self.id.to_string())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Clone for Issued {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
        }
    }
}

impl Issued {
    /// The private key in the form rustls takes.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    /// The certificate, PEM (as an SDS Secret carries it).
    pub fn cert_pem(&self) -> String {
        pem("CERTIFICATE", self.cert.as_ref())
    }

    /// The private key, PEM (PKCS#8), for a control plane that serves it over SDS (tests,
    /// the demo). The agent itself never writes a workload key anywhere.
    pub fn key_pem(&self) -> String {
        pem("PRIVATE KEY", self.key.secret_pkcs8_der())
    }

    /// The certificate's serial number (big-endian bytes).
    pub fn serial(&self) -> Vec<u8> {
        serial_of(&self.cert).unwrap_or_default()
    }
}

/// The serial number of a DER certificate (big-endian bytes).
pub fn serial_of(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    Some(x509.raw_serial().to_vec())
}

/// RFC 7468 text encoding.
fn pem(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::with_capacity(der.len().div_ceil(3) * 4);
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    fastrand::fill(&mut bytes);
    // Positive (high bit clear) and non-zero, as RFC 5280 asks.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    time::OffsetDateTime::from(t)
}

impl Ca {
    /// A new self-signed CA for `trust_domain`, valid from now for `lifetime`.
    pub fn generate(trust_domain: &str, lifetime: Duration) -> Result<Ca, CaError> {
        let key = KeyPair::generate().map_err(ca_err("generating the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Myelin");
        dn.push(DnType::CommonName, format!("Myelin CA {trust_domain}"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}")
                .try_into()
                .map_err(ca_err("the trust domain as a URI"))?,
        )];
        let now = SystemTime::now();
        params.not_before = offset(now - Duration::from_secs(60));
        params.not_after = offset(now + lifetime);
        params.serial_number = Some(serial());
        let cert = params
            .self_signed(&key)
            .map_err(ca_err("self-signing the CA certificate"))?;
        Ok(Ca {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and key (PEM), e.g. files the config points to.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Ca, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(ca_err("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(ca_err("reading the CA certificate"))?;
        let der = pem_to_der(cert_pem).ok_or(CaError {
            what: "reading the CA certificate",
            source: rcgen::Error::CouldNotParseCertificate,
        })?;
        Ok(Ca {
            trust_domain: trust_domain.to_owned(),
            cert_pem: cert_pem.to_owned(),
            cert_der: der,
            issuer,
        })
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The CA certificate (the trust anchor), PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA key, PEM (for writing a demo CA out; workload keys never leave memory).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A certificate for `id`, valid from now for `lifetime`.
    pub fn issue(&self, id: &SpiffeId, lifetime: Duration) -> Result<Issued, CaError> {
        let now = SystemTime::now();
        // A minute of slack for clocks that are a little behind ours.
        self.issue_between(id, now - Duration::from_secs(60), now + lifetime)
    }

    /// A certificate for `id`, valid between `not_before` and `not_after` (tests make
    /// expired ones with this).
    pub fn issue_between(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Issued, CaError> {
        let key = KeyPair::generate().map_err(ca_err("generating a workload key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            id.to_string()
                .try_into()
                .map_err(ca_err("the SPIFFE ID as a URI"))?,
        )];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        params.serial_number = Some(serial());
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(ca_err("signing a workload certificate"))?;
        Ok(Issued {
            id: id.clone(),
            cert: cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            not_before,
            not_after,
        })
    }
}

/// The DER of the first certificate in `pem`.
pub(crate) fn pem_to_der(pem: &str) -> Option<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes()).next()?.ok()
}
