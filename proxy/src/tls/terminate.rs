//! TLS the proxy terminates on a listener's filter chain (Envoy's `DownstreamTlsContext`:
//! HTTPS gateways, TLS-terminating TCP proxies). Built once per config build from the
//! chain's context and the SDS Secrets of that config:
//! - certificates: per handshake the first whose DNS SANs cover the client's SNI and whose
//!   key can sign with a scheme the client offers, else the first the client can use (as
//!   Envoy picks among a context's certificates); `require_sni` refuses a client without SNI;
//! - client certificates: asked for when there is a validation context, required with
//!   `require_client_certificate`, verified against `trusted_ca` and the SAN rules (Envoy's
//!   default validator);
//! - TLS 1.2 to 1.3 unless `tls_params` narrows it (and its TLS 1.2 cipher suites, key
//!   exchange groups and signature algorithms, `super::params`); ALPN as configured; session resumption
//!   by session ID and by ticket unless disabled; the server's cipher order unless
//!   `prefer_client_ciphers`.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, OtherError, ServerConfig,
    SignatureScheme,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::material::{
    certificate, certificate_chain_and_key, dns_name_match, roots, san_matches, validation,
    versions, NoMatchingSan, Secrets,
};
use super::params;
use crate::model::listener::DownstreamTls;
use crate::model::secret::SanMatcher;

/// A filter chain's downstream TLS, ready to accept.
pub struct TlsTermination {
    config: Arc<ServerConfig>,
    /// How long a handshake may take.
    handshake_timeout: Duration,
}

impl std::fmt::Debug for TlsTermination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTermination")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl TlsTermination {
    /// Builds the server side of `tls`, looking SDS names up with `secret`. The error says
    /// what is missing or wrong.
    pub(crate) fn build(
        tls: &DownstreamTls,
        handshake_timeout: Duration,
        secret: impl Secrets,
    ) -> Result<Self, String> {
        let provider = params::provider_for(&tls.algorithms);
        let allowed = params::schemes(&tls.algorithms);
        let mut certs = Vec::with_capacity(tls.certificates.len());
        for c in &tls.certificates {
            let cert = certificate(c, &secret)?;
            let (chain, key) = certificate_chain_and_key(&cert)?;
            let names = dns_names(&chain[0]);
            let key = provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| format!("the private key cannot be used: {e}"))?;
            let certified = params::restrict_key(chain, key, allowed.as_ref());
            certified
                .keys_match()
                .map_err(|e| format!("the private key is not the certificate's: {e}"))?;
            certs.push((names, Arc::new(certified)));
        }
        if certs.is_empty() {
            return Err("no certificate to serve".into());
        }
        let versions = versions(tls.min_version, tls.max_version)?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS versions: {e}"))?;
        let builder = match validation(tls.validation.as_ref(), &secret)? {
            None if tls.require_client_certificate => {
                return Err("require_client_certificate needs a validation context".into())
            }
            None => builder.with_no_client_auth(),
            Some((None, sans)) if !sans.is_empty() => {
                return Err(
                    "SAN-based verification of client certificates without trusted_ca \
                            is insecure and not allowed (as in Envoy)"
                        .into(),
                )
            }
            Some((None, _)) => {
                return Err(
                    "a validation context without trusted_ca cannot verify client \
                            certificates"
                        .into(),
                )
            }
            Some((Some(pem), sans)) => {
                let webpki =
                    WebPkiClientVerifier::builder_with_provider(roots(&pem)?, provider.clone());
                let webpki = if tls.require_client_certificate {
                    webpki
                } else {
                    webpki.allow_unauthenticated()
                };
                let inner = webpki
                    .build()
                    .map_err(|e| format!("trusted_ca cannot verify clients: {e}"))?;
                builder.with_client_cert_verifier(Arc::new(ClientVerifier {
                    inner,
                    sans,
                    allowed,
                }))
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(Resolver {
            certs,
            require_sni: tls.require_sni,
        }));
        config.alpn_protocols = tls
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        config.ignore_client_order = !tls.prefer_client_ciphers;
        if tls.disable_stateful_resumption {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        }
        if !tls.disable_stateless_resumption {
            config.ticketer = rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("session tickets: {e}"))?;
        }
        Ok(TlsTermination {
            config: Arc::new(config),
            handshake_timeout,
        })
    }

    /// The rustls server config (for the handshake).
    pub(crate) fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// How long a handshake may take (the chain's `transport_socket_connect_timeout`).
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

/// The identity a client certificate gives its holder, as Envoy's RBAC `authenticated`
/// reads it: the first URI SAN, else the first DNS SAN, else the subject; `None` for a
/// certificate that does not parse.
pub(crate) fn peer_identity(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).ok()?;
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        let names = &san.value.general_names;
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        });
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(d) => Some(*d),
            _ => None,
        });
        if let Some(name) = uri.or(dns) {
            return Some(name.to_owned());
        }
    }
    Some(x509.subject().to_string())
}

/// The DNS SANs of a certificate (for SNI selection).
fn dns_names(leaf: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x509)) = X509Certificate::from_der(leaf.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect()
}

/// Picks the certificate for a handshake (see the module's text).
#[derive(Debug)]
struct Resolver {
    /// Each certificate with its DNS SANs, in the context's order.
    certs: Vec<(Vec<String>, Arc<CertifiedKey>)>,
    require_sni: bool,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        if sni.is_none() && self.require_sni {
            return None;
        }
        let usable = |k: &CertifiedKey| k.key.choose_scheme(hello.signature_schemes()).is_some();
        let named = sni.and_then(|sni| {
            self.certs
                .iter()
                .find(|(names, k)| names.iter().any(|n| dns_name_match(sni, n)) && usable(k))
        });
        named
            .or_else(|| self.certs.iter().find(|(_, k)| usable(k)))
            .map(|(_, k)| k.clone())
    }
}

/// webpki's client verification, then the SAN rules.
#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    sans: Vec<SanMatcher>,
    /// `tls_params.signature_algorithms`; `None`: any.
    allowed: Option<Arc<[SignatureScheme]>>,
}

impl ClientVerifier {
    fn check_scheme(&self, dss: &DigitallySignedStruct) -> Result<(), Error> {
        if params::allows(self.allowed.as_ref(), dss.scheme) {
            Ok(())
        } else {
            Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))
        }
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.sans.is_empty() && !san_matches(&self.sans, end_entity)? {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NoMatchingSan)),
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        self.check_scheme(dss)?;
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, Error> {
        self.check_scheme(dss)?;
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        params::narrow(self.inner.supported_verify_schemes(), self.allowed.as_ref())
    }
}
