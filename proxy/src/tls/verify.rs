//! Peer verification for mutual TLS between nodes: the chain must lead to the trust
//! bundle, and the leaf must carry exactly one SPIFFE ID (URI SAN) of our trust domain,
//! and, on the client side, one of the identities the endpoint is expected to have.
//! Every refusal has a reason ([`RejectReason`]) that the HBONE server counts.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::SpiffeId;

/// Why a peer was refused at the TLS handshake (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The client sent no certificate.
    NoCertificate,
    /// The chain does not lead to the trust bundle (another CA, another trust domain's
    /// CA).
    UntrustedIssuer,
    /// The certificate has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// No SPIFFE ID, or more than one, in the URI SANs.
    NoSpiffeId,
    /// A SPIFFE ID of another trust domain (signed by a CA we trust).
    OtherTrustDomain,
    /// Not the identity the endpoint was expected to have.
    WrongIdentity,
    /// Malformed, bad signature, wrong key usage, or another certificate problem.
    BadCertificate,
    /// The handshake failed for a reason that is not the certificate (protocol version,
    /// ALPN, a reset).
    Handshake,
}

impl RejectReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::NoCertificate => "no_certificate",
            RejectReason::UntrustedIssuer => "untrusted_issuer",
            RejectReason::Expired => "expired",
            RejectReason::NotYetValid => "not_yet_valid",
            RejectReason::NoSpiffeId => "no_spiffe_id",
            RejectReason::OtherTrustDomain => "other_trust_domain",
            RejectReason::WrongIdentity => "wrong_identity",
            RejectReason::BadCertificate => "bad_certificate",
            RejectReason::Handshake => "handshake",
        }
    }

    /// The reason behind a rustls error (ours, or webpki's).
    pub fn of_error(e: &Error) -> RejectReason {
        match e {
            Error::NoCertificatesPresented => RejectReason::NoCertificate,
            Error::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    RejectReason::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    RejectReason::NotYetValid
                }
                CertificateError::UnknownIssuer => RejectReason::UntrustedIssuer,
                CertificateError::Other(o) => {
                    o.0.downcast_ref::<Rejected>()
                        .map_or(RejectReason::BadCertificate, |r| r.0)
                }
                _ => RejectReason::BadCertificate,
            },
            _ => RejectReason::Handshake,
        }
    }

    /// The reason behind a failed `accept`/`connect` of tokio-rustls.
    pub fn of_io(e: &std::io::Error) -> RejectReason {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
            .map_or(RejectReason::Handshake, RejectReason::of_error)
    }
}

/// Our own refusals, carried inside rustls' error.
#[derive(Debug)]
struct Rejected(RejectReason);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer certificate refused: {}", self.0.as_str())
    }
}

impl std::error::Error for Rejected {}

fn reject(r: RejectReason) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Rejected(r)))))
}

/// The one SPIFFE ID in the URI SANs of `cert`.
pub fn spiffe_id_of(cert: &CertificateDer<'_>) -> Result<SpiffeId, RejectReason> {
    let (_, x509) =
        X509Certificate::from_der(cert.as_ref()).map_err(|_| RejectReason::BadCertificate)?;
    let san = x509
        .subject_alternative_name()
        .map_err(|_| RejectReason::BadCertificate)?
        .ok_or(RejectReason::NoSpiffeId)?;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
        _ => None,
    });
    match (uris.next(), uris.next()) {
        (Some(u), None) => u.parse().map_err(|_| RejectReason::NoSpiffeId),
        _ => Err(RejectReason::NoSpiffeId),
    }
}

/// Checks the identity of a verified leaf.
fn check_identity(
    cert: &CertificateDer<'_>,
    trust_domain: &str,
    expected: &[SpiffeId],
) -> Result<SpiffeId, Error> {
    let id = spiffe_id_of(cert).map_err(reject)?;
    if id.trust_domain() != trust_domain {
        return Err(reject(RejectReason::OtherTrustDomain));
    }
    if !expected.is_empty() && !expected.contains(&id) {
        return Err(reject(RejectReason::WrongIdentity));
    }
    Ok(id)
}

/// The HBONE client's check of the destination node's certificate: the bundle, our
/// trust domain, and one of the `expected` identities (any of the trust domain when
/// empty). The server name is not checked: SPIFFE certificates carry no DNS names.
#[derive(Debug)]
pub(crate) struct ServerIdentityVerifier {
    roots: Arc<RootCertStore>,
    trust_domain: String,
    expected: Vec<SpiffeId>,
    provider: Arc<CryptoProvider>,
}

impl ServerIdentityVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        expected: Vec<SpiffeId>,
        provider: Arc<CryptoProvider>,
    ) -> Self {
        Self {
            roots,
            trust_domain: trust_domain.to_owned(),
            expected,
            provider,
        }
    }
}

impl ServerCertVerifier for ServerIdentityVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        check_identity(end_entity, &self.trust_domain, &self.expected)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configs offer TLS 1.3 only.
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The HBONE server's check of a client: webpki's chain verification against the
/// bundle, then a SPIFFE ID of our trust domain (which workloads may call which is the
/// inbound policy's business, after the handshake). Without a bundle yet (SDS has not
/// delivered it) every client is refused as untrusted.
#[derive(Debug)]
pub(crate) struct ClientIdentityVerifier {
    /// `None`: no trust anchors yet.
    inner: Option<Arc<dyn ClientCertVerifier>>,
    trust_domain: String,
    provider: Arc<CryptoProvider>,
}

impl ClientIdentityVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        trust_domain: &str,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, rustls::server::VerifierBuilderError> {
        let inner = if roots.is_empty() {
            None
        } else {
            Some(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots,
                    provider.clone(),
                )
                .build()?,
            )
        };
        Ok(Self {
            inner,
            trust_domain: trust_domain.to_owned(),
            provider,
        })
    }
}

impl ClientCertVerifier for ClientIdentityVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.as_ref().map_or(&[], |i| i.root_hint_subjects())
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let Some(inner) = &self.inner else {
            return Err(Error::InvalidCertificate(CertificateError::UnknownIssuer));
        };
        inner.verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.trust_domain, &[])?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        // The configs offer TLS 1.3 only.
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
