//! TLS to upstream hosts that are not meshed workloads (a cluster's
//! `envoy.transport_sockets.tls` `UpstreamTlsContext`, Istio's `DestinationRule` TLS modes
//! `SIMPLE` and `MUTUAL`, Envoy Gateway's backend TLS): TLS 1.2 or 1.3 as Envoy's client
//! defaults, the context's SNI (none when unset, as Envoy), ALPN as configured or else the
//! codec's own (`h2` or `http/1.1`, as Envoy sets it for HTTP upstreams; none for a TCP
//! proxy), the first client certificate when one is given, and the peer verified as
//! Envoy's default validator does:
//! - with no validation context, or one without `trusted_ca`, the server's certificate is
//!   not verified (Envoy's default; a SAN rule without `trusted_ca` is refused, as Envoy
//!   refuses it: "SAN-based verification without trusted CA is insecure");
//! - with `trusted_ca`, the chain must lead to it (validity included); the host name is
//!   not compared with the SNI (Envoy does not, unless `auto_sni_san_validation`);
//! - with `match_typed_subject_alt_names`, one SAN of the leaf must match one rule (DNS
//!   SANs compared as Envoy's `dnsNameMatch` for exact rules: a `*.` wildcard SAN covers one
//!   label).
//!
//! Certificates and trust anchors named by SDS are taken from the Secrets of the config the
//! cluster is built with; files are read then. A context that cannot be built (a Secret
//! not delivered yet, a bad PEM) leaves the cluster's TLS endpoints unreachable with the
//! reason (503 `UF`), never reached in plain text.

use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::cluster::{CertificateSource, UpstreamTls, ValidationSource};
use crate::model::secret::{SanMatcher, SanType, Secret, SecretKind, TlsCertificate};
use crate::model::{DataSource, StringPattern};

/// Which ALPN list a connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// The context's list as it is (a TCP proxy: no codec to name).
    AsConfigured,
    /// The context's list, else `http/1.1`.
    Http1,
    /// The context's list, else `h2`.
    Http2,
}

/// A cluster's upstream TLS, ready to connect.
pub struct TlsOrigin {
    /// By [`Alpn`] (the same config when the context names its protocols).
    configs: [Arc<ClientConfig>; 3],
    /// The SNI; `None`: none is sent.
    sni: Option<ServerName<'static>>,
    /// Tells connections of different TLS settings apart in the pools (a digest of the
    /// context and of the Secrets' bytes it was built from).
    key: u64,
}

impl std::fmt::Debug for TlsOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsOrigin")
            .field("sni", &self.sni)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl TlsOrigin {
    /// Builds the client side of `tls`, looking SDS names up with `secret`. The error says
    /// what is missing or wrong.
    pub fn build(
        tls: &UpstreamTls,
        secret: impl Fn(&str) -> Option<Arc<Secret>>,
    ) -> Result<TlsOrigin, String> {
        let mut digest = std::hash::DefaultHasher::new();
        format!("{tls:?}").hash(&mut digest);
        let verifier = Arc::new(PeerVerifier::new(
            validation(tls.validation.as_ref(), &secret, &mut digest)?,
            super::store::provider(),
        )?);
        let builder = ClientConfig::builder_with_provider(super::store::provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        // Envoy presents the first certificate of an upstream context.
        let mut config = match tls.certificates.first() {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let cert = match c {
                    CertificateSource::Inline(c) => c.clone(),
                    CertificateSource::Sds(name) => match secret(name).as_deref() {
                        Some(Secret {
                            kind: SecretKind::TlsCertificate(c),
                            ..
                        }) => c.clone(),
                        Some(_) => {
                            return Err(format!(
                                "SDS secret {name:?} is a validation context, not a certificate"
                            ))
                        }
                        None => return Err(format!("SDS secret {name:?} has not arrived")),
                    },
                };
                let (chain, key) = client_certificate(&cert, &mut digest)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("the client certificate cannot be used: {e}"))?
            }
        };
        let sni = match &tls.sni {
            None => None,
            Some(s) => Some(
                ServerName::try_from(s.clone())
                    .map_err(|_| format!("sni {s:?} is not a DNS name or an IP address"))?,
            ),
        };
        config.alpn_protocols = tls
            .alpn_protocols
            .iter()
            .map(|p| p.as_bytes().to_vec())
            .collect();
        let as_configured = Arc::new(config.clone());
        let with = |p: &[u8]| {
            if tls.alpn_protocols.is_empty() {
                let mut c = config.clone();
                c.alpn_protocols = vec![p.to_vec()];
                Arc::new(c)
            } else {
                as_configured.clone()
            }
        };
        let configs = [as_configured.clone(), with(b"http/1.1"), with(b"h2")];
        Ok(TlsOrigin {
            configs,
            sni,
            key: digest.finish(),
        })
    }

    /// Tells connections of different TLS settings apart in the pools.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// The TLS handshake over `tcp`, connected to `addr`. Without an SNI the handshake
    /// names `addr`'s IP, which rustls never sends as SNI.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
        alpn: Alpn,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = &self.configs[match alpn {
            Alpn::AsConfigured => 0,
            Alpn::Http1 => 1,
            Alpn::Http2 => 2,
        }];
        let name = self
            .sni
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        TlsConnector::from(config.clone()).connect(name, tcp).await
    }
}

/// A validation context as the verifier takes it: the trust anchors' PEM (`None`: the
/// chain is not verified) and the SAN rules.
type Validation = (Option<Vec<u8>>, Vec<SanMatcher>);

/// The validation context in force: inline, from SDS, or an SDS one merged into inline
/// defaults (protobuf merge, as Envoy's `combined_validation_context`: the Secret's
/// `trusted_ca` when set, the SAN rules of both).
fn validation(
    source: Option<&ValidationSource>,
    secret: &impl Fn(&str) -> Option<Arc<Secret>>,
    digest: &mut impl Hasher,
) -> Result<Option<Validation>, String> {
    let from_sds = |name: &str| match secret(name).as_deref() {
        Some(Secret {
            kind: SecretKind::ValidationContext(v),
            ..
        }) => Ok(v.clone()),
        Some(_) => Err(format!(
            "SDS secret {name:?} is a certificate, not a validation context"
        )),
        None => Err(format!("SDS secret {name:?} has not arrived")),
    };
    let v = match source {
        None => return Ok(None),
        Some(ValidationSource::Inline(v)) => v.clone(),
        Some(ValidationSource::Sds(name)) => from_sds(name)?,
        Some(ValidationSource::Combined { default, sds }) => {
            let dynamic = from_sds(sds)?;
            let mut v = default.clone();
            if dynamic.trusted_ca.is_some() {
                v.trusted_ca = dynamic.trusted_ca;
            }
            v.match_subject_alt_names
                .extend(dynamic.match_subject_alt_names);
            v
        }
    };
    format!("{:?}", v.match_subject_alt_names).hash(digest);
    let ca = match &v.trusted_ca {
        Some(d) => {
            let pem = read(d, "trusted_ca")?;
            pem.hash(digest);
            Some(pem)
        }
        None => None,
    };
    Ok(Some((ca, v.match_subject_alt_names)))
}

fn read(d: &DataSource, what: &str) -> Result<Vec<u8>, String> {
    match d {
        DataSource::Inline(b) => Ok(b.clone()),
        DataSource::Filename(p) => {
            std::fs::read(p).map_err(|e| format!("reading {what} from {}: {e}", p.display()))
        }
    }
}

fn client_certificate(
    c: &TlsCertificate,
    digest: &mut impl Hasher,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain_pem = read(&c.certificate_chain, "certificate_chain")?;
    let key_pem = read(&c.private_key, "private_key")?;
    chain_pem.hash(digest);
    key_pem.hash(digest);
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate_chain is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("certificate_chain holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("private_key is not a PEM private key: {e}"))?;
    Ok((chain, key))
}

/// Envoy's default certificate validator, client side (see the module's text).
#[derive(Debug)]
struct PeerVerifier {
    /// `None`: the chain is not verified.
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<SanMatcher>,
    provider: Arc<CryptoProvider>,
}

impl PeerVerifier {
    fn new(validation: Option<Validation>, provider: Arc<CryptoProvider>) -> Result<Self, String> {
        let (ca, sans) = validation.unwrap_or_default();
        let roots = match ca {
            None if !sans.is_empty() => {
                return Err(
                    "SAN-based verification of peer certificates without trusted_ca \
                            is insecure and not allowed (as in Envoy)"
                        .into(),
                )
            }
            None => None,
            Some(pem) => {
                let mut roots = RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&pem) {
                    let c = c.map_err(|e| format!("trusted_ca is not PEM certificates: {e}"))?;
                    roots
                        .add(c)
                        .map_err(|e| format!("trusted_ca holds an unusable certificate: {e}"))?;
                }
                if roots.is_empty() {
                    return Err("trusted_ca holds no PEM certificate".into());
                }
                Some(Arc::new(roots))
            }
        };
        Ok(Self {
            roots,
            sans,
            provider,
        })
    }
}

/// Why a server certificate's names were refused.
#[derive(Debug)]
struct NoMatchingSan;

impl std::fmt::Display for NoMatchingSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no subject alternative name of the certificate matches the cluster's rules")
    }
}

impl std::error::Error for NoMatchingSan {}

/// Whether a DNS SAN (possibly `*.`-wildcarded) covers `name` (Envoy's `dnsNameMatch`).
fn dns_name_match(name: &str, san: &str) -> bool {
    if name.eq_ignore_ascii_case(san) {
        return true;
    }
    let Some(rest) = san.strip_prefix("*.") else {
        return false;
    };
    name.split_once('.')
        .is_some_and(|(first, tail)| !first.is_empty() && tail.eq_ignore_ascii_case(rest))
}

fn san_matches(rules: &[SanMatcher], cert: &CertificateDer<'_>) -> Result<bool, Error> {
    let bad = |_| Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(bad)?;
    let Some(san) = x509
        .subject_alternative_name()
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?
    else {
        return Ok(false);
    };
    for name in &san.value.general_names {
        let (kind, value) = match name {
            GeneralName::DNSName(d) => (SanType::Dns, (*d).to_owned()),
            GeneralName::URI(u) => (SanType::Uri, (*u).to_owned()),
            GeneralName::RFC822Name(e) => (SanType::Email, (*e).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => (
                    SanType::IpAddress,
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string(),
                ),
                16 => (
                    SanType::IpAddress,
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))
                        .to_string(),
                ),
                _ => continue,
            },
            _ => continue,
        };
        for r in rules.iter().filter(|r| r.san_type == kind) {
            let hit = match (&r.matcher.pattern, kind) {
                (StringPattern::Exact(p), SanType::Dns) => dns_name_match(p, &value),
                _ => r.matcher.matches(&value),
            };
            if hit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if !self.sans.is_empty() && !san_matches(&self.sans, end_entity)? {
            return Err(Error::InvalidCertificate(CertificateError::Other(
                OtherError(Arc::new(NoMatchingSan)),
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_dns_sans_cover_one_label() {
        assert!(dns_name_match("api.example.com", "api.example.com"));
        assert!(dns_name_match("API.example.com", "api.EXAMPLE.com"));
        assert!(dns_name_match("api.example.com", "*.example.com"));
        assert!(!dns_name_match("a.api.example.com", "*.example.com"));
        assert!(!dns_name_match("example.com", "*.example.com"));
        assert!(!dns_name_match(".example.com", "*.example.com"));
        assert!(!dns_name_match("api.example.com", "*.other.com"));
    }
}
