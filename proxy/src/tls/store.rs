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
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
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

/// The domain under which SNI names identities.
const SNI_SUFFIX: &str = ".spiffe.myelin.invalid";

/// At most this many identities are named in one SNI: 7 labels of 32 hex digits and the
/// suffix stay within the 253 characters of a DNS name.
pub const SNI_MAX_IDENTITIES: usize = 7;

/// The SNI label of `id`: the first 16 bytes of its SHA-256, in hex.
fn sni_label(id: &SpiffeId) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, id.to_string().as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The SNI under which the HBONE server presents `id`'s certificate.
pub fn sni_for(id: &SpiffeId) -> ServerName<'static> {
    sni_for_any(std::slice::from_ref(id))
}

/// The SNI naming several acceptable identities, in order of preference
/// (`<hash1>.<hash2>....spiffe.myelin.invalid`, the first [`SNI_MAX_IDENTITIES`]): the
/// server presents the certificate of the first one it holds. Used when a cluster's SAN
/// list, not the endpoint, says who the peer may be.
pub fn sni_for_any(ids: &[SpiffeId]) -> ServerName<'static> {
    let labels: Vec<String> = ids.iter().take(SNI_MAX_IDENTITIES).map(sni_label).collect();
    let name = if labels.is_empty() {
        // Names no identity: the server has no certificate for it and refuses.
        format!("none{SNI_SUFFIX}")
    } else {
        format!("{}{SNI_SUFFIX}", labels.join("."))
    };
    ServerName::try_from(name).expect("hex labels under a fixed domain are a valid DNS name")
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
    /// SNI label ([`sni_label`]) -> identity.
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
        Self::with_roots(trust_domain, roots(bundle)?)
    }

    /// No workload certificates and no trust bundle yet (SDS delivers both): until
    /// [`Identities::set_bundle`], every peer is refused as untrusted.
    pub fn without_bundle(trust_domain: &str) -> Result<Arc<Identities>, IdentityError> {
        Self::with_roots(trust_domain, RootCertStore::empty())
    }

    fn with_roots(
        trust_domain: &str,
        roots: RootCertStore,
    ) -> Result<Arc<Identities>, IdentityError> {
        let provider = provider();
        let roots = Arc::new(roots);
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

    /// Whether a trust bundle is set.
    pub fn has_bundle(&self) -> bool {
        !self.state.load().roots.is_empty()
    }

    /// Installs (or replaces: rotation) the certificate of `issued.id`.
    pub fn insert(&self, issued: &Issued) -> Result<(), IdentityError> {
        self.insert_chain(
            &issued.id,
            vec![issued.cert.clone()],
            issued.private_key(),
            CertInfo {
                not_before: issued.not_before,
                not_after: issued.not_after,
            },
        )
    }

    /// Installs (or replaces: rotation) the certificate of `id`: `chain` is the leaf
    /// first, then intermediates; `key` must be the leaf's (else
    /// [`rustls::Error::InconsistentKeys`]). Whether the leaf names `id` is the caller's
    /// check.
    pub fn insert_chain(
        &self,
        id: &SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        validity: CertInfo,
    ) -> Result<(), IdentityError> {
        let key = self.provider.key_provider.load_private_key(key)?;
        let certified = CertifiedKey::new(chain, key);
        match certified.keys_match() {
            // A key type whose public half rustls cannot derive: as rustls' own
            // `CertifiedKey::from_der`, accept it.
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => return Err(e.into()),
        }
        let cert = Arc::new(Cert {
            key: Arc::new(certified),
            not_before: validity.not_before,
            not_after: validity.not_after,
        });
        let id = id.clone();
        let sni = sni_label(&id);
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
        let labels = hello.server_name()?.strip_suffix(SNI_SUFFIX)?;
        let state = self.0.load();
        // The first named identity this node holds.
        labels
            .split('.')
            .filter_map(|label| state.by_sni.get(label))
            .find_map(|id| state.certs.get(id))
            .map(|c| c.key.clone())
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
