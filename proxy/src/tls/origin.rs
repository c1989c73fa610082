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
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error, OtherError, RootCertStore,
    SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::material::{
    certificate, certificate_chain_and_key, roots, san_matches, validation, versions,
    NoMatchingSan, Secrets, Validation,
};
use crate::model::cluster::{AutoSni, UpstreamTls};
use crate::model::secret::{SanMatcher, SanType};
use crate::model::StringMatcher;

/// Which ALPN list a connection offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// The context's list as it is (a TCP proxy: no codec to name).
    AsConfigured,
    /// The context's list, else `http/1.1`.
    Http1,
    /// The context's list, else `h2`.
    Http2,
    /// The context's list, else `h2` and `http/1.1` (`auto_config`: the server picks).
    Auto,
}

/// A cluster's upstream TLS, ready to connect.
pub struct TlsOrigin {
    /// By [`Alpn`] (the same config when the context names its protocols).
    configs: [Arc<ClientConfig>; 4],
    /// `auto_config`: whether each endpoint's server picked `h2` on its first connection.
    learned: std::sync::Mutex<std::collections::HashMap<SocketAddr, bool>>,
    /// The SNI; `None`: none is sent.
    sni: Option<ServerName<'static>>,
    /// `auto_sni`: each connection's SNI from the request's host (`Some(header)`: from
    /// that header instead of the authority).
    auto_sni: Option<Option<http::HeaderName>>,
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
    pub(crate) fn build(
        tls: &UpstreamTls,
        auto: &AutoSni,
        secret: impl Secrets,
    ) -> Result<TlsOrigin, String> {
        let mut digest = std::hash::DefaultHasher::new();
        format!("{tls:?}{auto:?}").hash(&mut digest);
        let validation = validation(tls.validation.as_ref(), &secret)?;
        // The trust anchors and the client certificate by value: a new version of a Secret
        // is a new pool, the same bytes in a rebuilt cluster are not.
        format!("{validation:?}").hash(&mut digest);
        let provider = super::params::provider_for(&tls.algorithms);
        let allowed = super::params::schemes(&tls.algorithms);
        let verifier = Arc::new(PeerVerifier::new(
            validation,
            tls.auto_sni_san_validation || auto.san_validation,
            provider.clone(),
            allowed.clone(),
        )?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions(tls.min_version, tls.max_version)?)
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        // Envoy presents the first certificate of an upstream context.
        let mut config = match tls.certificates.first() {
            None => builder.with_no_client_auth(),
            Some(c) => {
                let (chain, key) = certificate_chain_and_key(&certificate(c, &secret)?)?;
                for c in &chain {
                    c.as_ref().hash(&mut digest);
                }
                key.secret_der().hash(&mut digest);
                match &allowed {
                    None => builder
                        .with_client_auth_cert(chain, key)
                        .map_err(|e| format!("the client certificate cannot be used: {e}"))?,
                    Some(_) => {
                        let key = provider.key_provider.load_private_key(key).map_err(|e| {
                            format!("the client certificate's key cannot be used: {e}")
                        })?;
                        let certified = super::params::restrict_key(chain, key, allowed.as_ref());
                        builder.with_client_cert_resolver(Arc::new(ClientCert(Arc::new(certified))))
                    }
                }
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
        let with = |ps: &[&[u8]]| {
            if tls.alpn_protocols.is_empty() {
                let mut c = config.clone();
                c.alpn_protocols = ps.iter().map(|p| p.to_vec()).collect();
                Arc::new(c)
            } else {
                as_configured.clone()
            }
        };
        let configs = [
            as_configured.clone(),
            with(&[b"http/1.1"]),
            with(&[b"h2"]),
            with(&[b"h2", b"http/1.1"]),
        ];
        let auto_sni = auto.sni.then(|| {
            auto.header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok())
        });
        Ok(TlsOrigin {
            configs,
            learned: Default::default(),
            sni,
            auto_sni,
            key: digest.finish(),
        })
    }

    /// With `auto_sni`, the SNI for a request with this URI and these headers: its host
    /// (the override header's when the request has it, else the authority or `Host`),
    /// without the port; `None`
    /// when there is none or it is an IP address (no SNI, as Envoy).
    pub(crate) fn sni_for(&self, uri: &http::Uri, headers: &http::HeaderMap) -> Option<Arc<str>> {
        let header = self.auto_sni.as_ref()?;
        // The override header when the request has it, else the authority (Envoy's
        // fallback).
        let host = match header.as_ref().and_then(|h| headers.get(h)) {
            Some(v) => v.to_str().ok()?,
            None => match uri.authority() {
                Some(a) => a.as_str(),
                None => headers.get(http::header::HOST)?.to_str().ok()?,
            },
        };
        let host = host.parse::<http::uri::Authority>().ok()?;
        let host = host.host().trim_start_matches('[').trim_end_matches(']');
        if host.parse::<std::net::IpAddr>().is_ok() {
            return None;
        }
        ServerName::try_from(host).ok()?;
        Some(host.to_ascii_lowercase().into())
    }

    /// Tells connections of different TLS settings apart in the pools.
    pub fn key(&self) -> u64 {
        self.key
    }

    /// `auto_config`: whether `addr`'s server picked `h2` (`None`: not connected yet).
    pub(crate) fn learned_h2(&self, addr: SocketAddr) -> Option<bool> {
        crate::lock(&self.learned).get(&addr).copied()
    }

    /// `auto_config`: what `addr`'s server picked on a connection.
    pub(crate) fn learn(&self, addr: SocketAddr, h2: bool) {
        crate::lock(&self.learned).insert(addr, h2);
    }

    /// The TLS handshake over `tcp`, connected to `addr`, with SNI `sni` (the request's,
    /// [`TlsOrigin::sni_for`]) or else the context's. Without an SNI the handshake names
    /// `addr`'s IP, which rustls never sends as SNI.
    pub(crate) async fn connect(
        &self,
        addr: SocketAddr,
        tcp: TcpStream,
        alpn: Alpn,
        sni: Option<&str>,
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let config = &self.configs[match alpn {
            Alpn::AsConfigured => 0,
            Alpn::Http1 => 1,
            Alpn::Http2 => 2,
            Alpn::Auto => 3,
        }];
        let name = match sni.and_then(|s| ServerName::try_from(s.to_owned()).ok()) {
            Some(name) => name,
            None => self
                .sni
                .clone()
                .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into())),
        };
        TlsConnector::from(config.clone()).connect(name, tcp).await
    }
}

/// Envoy's default certificate validator, client side (see the module's text).
#[derive(Debug)]
struct PeerVerifier {
    /// `None`: the chain is not verified.
    roots: Option<Arc<RootCertStore>>,
    sans: Vec<SanMatcher>,
    /// `auto_sni_san_validation` / `auto_san_validation`: a SAN must name the SNI sent.
    sni_san: bool,
    provider: Arc<CryptoProvider>,
    /// `tls_params.signature_algorithms`; `None`: any the provider verifies.
    allowed: Option<Arc<[SignatureScheme]>>,
}

/// The client certificate, for a context that narrows its signature algorithms (its key
/// signs only with those).
#[derive(Debug)]
struct ClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl PeerVerifier {
    fn new(
        validation: Option<Validation>,
        sni_san: bool,
        provider: Arc<CryptoProvider>,
        allowed: Option<Arc<[SignatureScheme]>>,
    ) -> Result<Self, String> {
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
            Some(pem) => Some(roots(&pem)?),
        };
        Ok(Self {
            roots,
            sans,
            sni_san,
            provider,
            allowed,
        })
    }
}

impl PeerVerifier {
    fn check_scheme(&self, dss: &DigitallySignedStruct) -> Result<(), Error> {
        if super::params::allows(self.allowed.as_ref(), dss.scheme) {
            Ok(())
        } else {
            Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ))
        }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let no_match = || {
            Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(NoMatchingSan))))
        };
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
            if !self.sans.is_empty() && !san_matches(&self.sans, end_entity)? {
                return Err(no_match());
            }
        }
        // The name sent (a DNS name; an IP address is only the handshake's placeholder when
        // there is no SNI, and then there is nothing to check).
        if self.sni_san {
            if let ServerName::DnsName(name) = server_name {
                let rule = SanMatcher {
                    san_type: SanType::Dns,
                    matcher: StringMatcher::exact(name.as_ref()),
                };
                if !san_matches(std::slice::from_ref(&rule), end_entity)? {
                    return Err(no_match());
                }
            }
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.check_scheme(dss)?;
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
        self.check_scheme(dss)?;
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        super::params::narrow(
            self.provider
                .signature_verification_algorithms
                .supported_schemes(),
            self.allowed.as_ref(),
        )
    }
}
