//! The identities of the workloads on this node: a certificate and key per SPIFFE ID,
//! in memory only, and the trust bundle. Handshakes read the current state, so a
//! certificate replaced by rotation is used from the next handshake on while
//! connections already up keep theirs.
//!
//! Which certificate the HBONE server presents is chosen by SNI: the client names the
//! identity it expects as `<hash>.spiffe.myelin.invalid` ([`sni_for`]): SPIFFE IDs are
//! URIs, not DNS names, and a fixed-length hash keeps any identity within a DNS label.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SignatureScheme};

use super::ca::Issued;
use super::verify::{ClientIdentityVerifier, ServerIdentityVerifier};
use super::SpiffeId;

/// ALPN of HBONE connections.
pub const ALPN_H2: &[u8] = b"h2";

/// The proxy's one crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The SNI under which the HBONE server presents `id`'s certificate.
pub fn sni_for(id: &SpiffeId) -> ServerName<'static> {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.to_string().as_bytes());
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    ServerName::try_from(format!("{hex}.spiffe.myelin.invalid"))
        .expect("a hex label under a fixed domain is a valid DNS name")
}

/// Why identities could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A certificate or key rustls refuses.
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    /// The trust bundle is unusable.
    #[error("trust bundle: {0}")]
    Bundle(String),
}

/// A workload's certificate, ready for handshakes.
struct Cert {
    key: Arc<CertifiedKey>,
    not_before: SystemTime,
    not_after: SystemTime,
}

struct State {
    roots: Arc<RootCertStore>,
    certs: HashMap<SpiffeId, Arc<Cert>>,
    by_sni: HashMap<String, SpiffeId>,
}

/// The certificates of this node's workloads and the trust bundle.
pub struct Identities {
    trust_domain: String,
    provider: Arc<CryptoProvider>,
    state: Arc<ArcSwap<State>>,
    /// Rebuilt when the bundle changes (the client verifier holds the roots).
    server: ArcSwap<ServerConfig>,
}

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load();
        let mut ids: Vec<String> = state.certs.keys().map(ToString::to_string).collect();
        ids.sort();
        f.debug_struct("Identities")
            .field("trust_domain", &self.trust_domain)
            .field("roots", &state.roots.len())
            .field("identities", &ids)
            .finish()
    }
}

/// What [`Identities::certificate`] tells about one identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Identities {
    /// No workload certificates yet; `bundle`: the trust anchors (DER).
    pub fn new(
        trust_domain: &str,
        bundle: &[CertificateDer<'static>],
    ) -> Result<Arc<Identities>, IdentityError> {
        let provider = provider();
        let roots = Arc::new(roots(bundle)?);
        let state = Arc::new(ArcSwap::from_pointee(State {
            roots: roots.clone(),
            certs: HashMap::new(),
            by_sni: HashMap::new(),
        }));
        let server = server_config(trust_domain, &provider, roots, state.clone())?;
        Ok(Arc::new(Identities {
            trust_domain: trust_domain.to_owned(),
            provider,
            state,
            server: ArcSwap::from_pointee(server),
        }))
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Replaces the trust bundle (new handshakes use it).
    pub fn set_bundle(&self, bundle: &[CertificateDer<'static>]) -> Result<(), IdentityError> {
        let roots = Arc::new(roots(bundle)?);
        let server = server_config(
            &self.trust_domain,
            &self.provider,
            roots.clone(),
            self.state.clone(),
        )?;
        self.state.rcu(|s| State {
            roots: roots.clone(),
            certs: s.certs.clone(),
            by_sni: s.by_sni.clone(),
        });
        self.server.store(Arc::new(server));
        Ok(())
    }

    /// Installs (or replaces: rotation) the certificate of `issued.id`.
    pub fn insert(&self, issued: &Issued) -> Result<(), IdentityError> {
        let key = self
            .provider
            .key_provider
            .load_private_key(issued.private_key())?;
        let cert = Arc::new(Cert {
            key: Arc::new(CertifiedKey::new(vec![issued.cert.clone()], key)),
            not_before: issued.not_before,
            not_after: issued.not_after,
        });
        let id = issued.id.clone();
        let sni = sni_for(&id).to_str().into_owned();
        self.state.rcu(|s| {
            let mut certs = s.certs.clone();
            let mut by_sni = s.by_sni.clone();
            certs.insert(id.clone(), cert.clone());
            by_sni.insert(sni.clone(), id.clone());
            State {
                roots: s.roots.clone(),
                certs,
                by_sni,
            }
        });
        Ok(())
    }

    /// Forgets `id` (its workload left the node).
    pub fn remove(&self, id: &SpiffeId) {
        self.state.rcu(|s| {
            let mut certs = s.certs.clone();
            let mut by_sni = s.by_sni.clone();
            certs.remove(id);
            by_sni.retain(|_, v| v != id);
            State {
                roots: s.roots.clone(),
                certs,
                by_sni,
            }
        });
    }

    /// The validity of `id`'s current certificate.
    pub fn certificate(&self, id: &SpiffeId) -> Option<CertInfo> {
        self.state.load().certs.get(id).map(|c| CertInfo {
            not_before: c.not_before,
            not_after: c.not_after,
        })
    }

    /// Every identity with a certificate, and its validity.
    pub fn certificates(&self) -> Vec<(SpiffeId, CertInfo)> {
        self.state
            .load()
            .certs
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    CertInfo {
                        not_before: c.not_before,
                        not_after: c.not_after,
                    },
                )
            })
            .collect()
    }

    /// The HBONE server's config: TLS 1.3, ALPN h2, a client certificate required and
    /// verified against the bundle, our certificate chosen by SNI.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.load_full()
    }

    /// An HBONE client config: presents `source`'s certificate and accepts only a
    /// server with one of the `expected` identities (any of our trust domain when
    /// empty). Connect with [`sni_for`] of the identity expected.
    pub fn client_config(
        &self,
        source: &SpiffeId,
        expected: Vec<SpiffeId>,
    ) -> Result<ClientConfig, IdentityError> {
        let verifier = ServerIdentityVerifier::new(
            self.state.load().roots.clone(),
            &self.trust_domain,
            expected,
            self.provider.clone(),
        );
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_cert_resolver(Arc::new(ClientCert {
                state: self.state.clone(),
                id: source.clone(),
            }));
        config.alpn_protocols = vec![ALPN_H2.to_vec()];
        Ok(config)
    }
}

fn roots(bundle: &[CertificateDer<'static>]) -> Result<RootCertStore, IdentityError> {
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(bundle.iter().cloned());
    if added == 0 || ignored > 0 {
        return Err(IdentityError::Bundle(format!(
            "{added} usable trust anchors, {ignored} unparsable"
        )));
    }
    Ok(roots)
}

fn server_config(
    trust_domain: &str,
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    state: Arc<ArcSwap<State>>,
) -> Result<ServerConfig, IdentityError> {
    let verifier = ClientIdentityVerifier::new(roots, trust_domain, provider.clone())
        .map_err(|e| IdentityError::Bundle(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(ServerCert(state)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// Presents the certificate of the identity the client named by SNI.
struct ServerCert(Arc<ArcSwap<State>>);

impl fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerCert")
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name()?;
        let state = self.0.load();
        let id = state.by_sni.get(sni)?;
        state.certs.get(id).map(|c| c.key.clone())
    }
}

/// Presents the current certificate of one source identity.
struct ClientCert {
    state: Arc<ArcSwap<State>>,
    id: SpiffeId,
}

impl fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCert")
            .field("id", &self.id.to_string())
            .finish()
    }
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.state.load().certs.get(&self.id).map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
