//! Workload certificates from SDS (`myelin.mtls.identity_source: sds`): the xDS `Secret`
//! resources of this node's identities become the certificates of [`Identities`].
//!
//! Naming (the convention a control plane follows):
//! - a `tls_certificate` Secret named exactly a workload's SPIFFE ID
//!   (`spiffe://<trust-domain>/ns/<ns>/sa/<sa>`) is that identity's certificate chain and
//!   key; its leaf must carry that SPIFFE ID as its one URI SAN, and the key must be the
//!   leaf's;
//! - a `validation_context` Secret named [`BUNDLE_SECRET`] (`ROOTCA`, as Istio's agent names
//!   its root) is the trust bundle (`trusted_ca`, every certificate in it).
//!
//! A new version of a Secret is a rotation: the next handshakes present the new
//! certificate, connections already up keep theirs. A Secret that does not pass the checks
//! is rejected (logged with the reason, counted in
//! `myelin_identity_secrets_rejected_total{reason}`) and the identity keeps its last good
//! certificate. A removed Secret removes the identity; a removed bundle keeps the last one
//! (no bundle would refuse every peer). Files named by a Secret (`filename` data sources)
//! are read when that Secret version is applied; keys stay in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tracing::{info, warn};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::store::CertInfo;
use super::{spiffe_id_of, Identities, SpiffeId};
use crate::model::secret::{Secret, SecretKind};
use crate::model::DataSource;

/// The name of the Secret that holds the trust bundle.
pub const BUNDLE_SECRET: &str = "ROOTCA";

/// Why a Secret was not applied (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretRejection {
    /// A validation context under an identity's name, or a certificate under the bundle's.
    WrongKind,
    /// A `filename` data source that cannot be read.
    Unreadable,
    /// No PEM certificate, or one that does not parse.
    BadCertificate,
    /// The leaf's SPIFFE ID (URI SAN) is not the Secret's name.
    NameMismatch,
    /// No PEM private key, or one rustls cannot use.
    BadKey,
    /// The private key is not the leaf certificate's.
    KeyMismatch,
    /// The leaf has expired.
    Expired,
    /// The bundle holds no usable trust anchor.
    BadBundle,
}

impl SecretRejection {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongKind => "wrong_kind",
            Self::Unreadable => "unreadable",
            Self::BadCertificate => "bad_certificate",
            Self::NameMismatch => "name_mismatch",
            Self::BadKey => "bad_key",
            Self::KeyMismatch => "key_mismatch",
            Self::Expired => "expired",
            Self::BadBundle => "bad_bundle",
        }
    }
}

/// A rejected Secret: the reason and what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Rejected {
    /// The counted reason.
    pub reason: SecretRejection,
    /// For the log.
    pub detail: String,
}

fn rejected(reason: SecretRejection, detail: impl Into<String>) -> Rejected {
    Rejected {
        reason,
        detail: detail.into(),
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// SDS identity metrics.
#[derive(Debug, Default, Clone)]
pub struct SdsMetrics {
    applied: Counter,
    rejected: Family<ReasonLabels, Counter>,
}

impl SdsMetrics {
    /// Registers `identity_secrets_applied_total` and
    /// `identity_secrets_rejected_total{reason}`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "identity_secrets_applied",
            "SDS Secrets (workload certificates and the trust bundle) applied",
            m.applied.clone(),
        );
        registry.register(
            "identity_secrets_rejected",
            "SDS Secrets rejected (the last good certificate or bundle stays), by reason",
            m.rejected.clone(),
        );
        m
    }

    /// Secrets applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Secrets rejected so far for `reason`.
    pub fn rejected(&self, reason: SecretRejection) -> u64 {
        self.rejected
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .get()
    }
}

fn read(source: &DataSource, what: &str) -> Result<Vec<u8>, Rejected> {
    match source {
        DataSource::Inline(b) => Ok(b.clone()),
        DataSource::Filename(p) => std::fs::read(p).map_err(|e| {
            rejected(
                SecretRejection::Unreadable,
                format!("reading the {what} from {}: {e}", p.display()),
            )
        }),
    }
}

fn system_time(t: x509_parser::time::ASN1Time) -> SystemTime {
    let secs = t.timestamp();
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// A workload certificate from a Secret, checked and ready for [`Identities`].
#[derive(Debug)]
pub struct LoadedCert {
    /// The identity (the Secret's name and the leaf's URI SAN).
    pub id: SpiffeId,
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The leaf's validity.
    pub validity: CertInfo,
}

/// Reads and checks the certificate of identity `id` from its Secret: a `tls_certificate`
/// whose chain parses, whose leaf names exactly `id` and has not expired at `now`, with a
/// usable key (that the key matches the leaf is checked by [`Identities::insert_chain`]).
pub fn load_certificate(
    id: &SpiffeId,
    kind: &SecretKind,
    now: SystemTime,
) -> Result<LoadedCert, Rejected> {
    let SecretKind::TlsCertificate(tls) = kind else {
        return Err(rejected(
            SecretRejection::WrongKind,
            "a validation_context under a workload identity's name (expected tls_certificate)",
        ));
    };
    let chain_pem = read(&tls.certificate_chain, "certificate chain")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            rejected(
                SecretRejection::BadCertificate,
                format!("certificate_chain is not PEM certificates: {e}"),
            )
        })?;
    let Some(leaf) = chain.first() else {
        return Err(rejected(
            SecretRejection::BadCertificate,
            "certificate_chain holds no PEM certificate",
        ));
    };
    let (_, x509) = X509Certificate::from_der(leaf.as_ref()).map_err(|e| {
        rejected(
            SecretRejection::BadCertificate,
            format!("the leaf certificate does not parse: {e}"),
        )
    })?;
    let validity = CertInfo {
        not_before: system_time(x509.validity().not_before),
        not_after: system_time(x509.validity().not_after),
    };
    match spiffe_id_of(leaf) {
        Ok(san) if san == *id => {}
        Ok(san) => {
            return Err(rejected(
                SecretRejection::NameMismatch,
                format!("the certificate's URI SAN is {san}, not the Secret's name"),
            ))
        }
        Err(r) => {
            return Err(rejected(
                SecretRejection::NameMismatch,
                format!(
                    "the certificate carries no single SPIFFE ID URI SAN ({})",
                    r.as_str()
                ),
            ))
        }
    }
    if validity.not_after <= now {
        return Err(rejected(
            SecretRejection::Expired,
            format!(
                "the certificate expired at {}",
                x509.validity().not_after.to_datetime()
            ),
        ));
    }
    let key_pem = read(&tls.private_key, "private key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
        rejected(
            SecretRejection::BadKey,
            format!("private_key is not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}"),
        )
    })?;
    Ok(LoadedCert {
        id: id.clone(),
        chain,
        key,
        validity,
    })
}

/// Reads the trust bundle from the [`BUNDLE_SECRET`] Secret: every certificate of its
/// `trusted_ca`.
pub fn load_bundle(kind: &SecretKind) -> Result<Vec<CertificateDer<'static>>, Rejected> {
    let SecretKind::ValidationContext(v) = kind else {
        return Err(rejected(
            SecretRejection::WrongKind,
            format!("a tls_certificate named {BUNDLE_SECRET} (expected a validation_context)"),
        ));
    };
    let Some(ca) = &v.trusted_ca else {
        return Err(rejected(
            SecretRejection::BadBundle,
            "validation_context.trusted_ca is not set",
        ));
    };
    let pem = read(ca, "trusted CA")?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            rejected(
                SecretRejection::BadBundle,
                format!("trusted_ca is not PEM certificates: {e}"),
            )
        })?;
    if certs.is_empty() {
        return Err(rejected(
            SecretRejection::BadBundle,
            "trusted_ca holds no PEM certificate",
        ));
    }
    Ok(certs)
}

/// Keeps [`Identities`] in step with the Secrets of the node's identities. Feed it every
/// new set of Secrets with [`SdsIdentities::apply`]; a Secret seen before (the same
/// `Arc`) is not looked at again, so a bad one is logged and counted once per version.
#[derive(Debug)]
pub struct SdsIdentities {
    identities: Arc<Identities>,
    wanted: BTreeSet<SpiffeId>,
    metrics: SdsMetrics,
    /// The last Secret looked at per identity, applied or not.
    seen: HashMap<SpiffeId, Arc<Secret>>,
    bundle: Option<Arc<Secret>>,
}

impl SdsIdentities {
    /// Certificates for the `wanted` identities (the node's workloads) go into
    /// `identities`.
    pub fn new(
        identities: Arc<Identities>,
        wanted: BTreeSet<SpiffeId>,
        metrics: SdsMetrics,
    ) -> Self {
        Self {
            identities,
            wanted,
            metrics,
            seen: HashMap::new(),
            bundle: None,
        }
    }

    /// The Secret names to subscribe to: every wanted identity and the bundle.
    pub fn secret_names(&self) -> BTreeSet<String> {
        self.wanted
            .iter()
            .map(ToString::to_string)
            .chain([BUNDLE_SECRET.to_owned()])
            .collect()
    }

    /// The identities it keeps.
    pub fn identities(&self) -> &Arc<Identities> {
        &self.identities
    }

    /// Applies the current Secrets (`secret(name)`): new versions are checked and
    /// installed, removed ones removed, bad ones rejected.
    pub fn apply(&mut self, secret: impl Fn(&str) -> Option<Arc<Secret>>) {
        self.apply_bundle(secret(BUNDLE_SECRET));
        let now = SystemTime::now();
        for id in &self.wanted {
            let name = id.to_string();
            let Some(s) = secret(&name) else {
                if self.seen.remove(id).is_some() || self.identities.certificate(id).is_some() {
                    self.identities.remove(id);
                    info!(identity = %id, "SDS: the Secret was removed; the identity has no certificate now");
                }
                continue;
            };
            if self.seen.get(id).is_some_and(|old| Arc::ptr_eq(old, &s)) {
                continue;
            }
            self.seen.insert(id.clone(), s.clone());
            let outcome = load_certificate(id, &s.kind, now).and_then(|c| {
                let validity = c.validity;
                self.identities
                    .insert_chain(&c.id, c.chain, c.key, validity)
                    .map(|()| validity)
                    .map_err(|e| match e {
                        super::IdentityError::Tls(rustls::Error::InconsistentKeys(_)) => rejected(
                            SecretRejection::KeyMismatch,
                            "the private key is not the certificate's",
                        ),
                        e => rejected(SecretRejection::BadKey, format!("private_key: {e}")),
                    })
            });
            match outcome {
                Ok(v) => {
                    self.metrics.applied.inc();
                    info!(identity = %id, not_after = ?v.not_after, "SDS: workload certificate installed");
                }
                Err(e) => self.reject(&name, &e),
            }
        }
    }

    fn apply_bundle(&mut self, secret: Option<Arc<Secret>>) {
        let Some(s) = secret else {
            if self.bundle.take().is_some() {
                warn!(
                    secret = BUNDLE_SECRET,
                    "SDS: the trust bundle Secret was removed; keeping the last bundle"
                );
            }
            return;
        };
        if self.bundle.as_ref().is_some_and(|old| Arc::ptr_eq(old, &s)) {
            return;
        }
        self.bundle = Some(s.clone());
        let outcome = load_bundle(&s.kind).and_then(|certs| {
            let n = certs.len();
            self.identities
                .set_bundle(&certs)
                .map(|()| n)
                .map_err(|e| rejected(SecretRejection::BadBundle, e.to_string()))
        });
        match outcome {
            Ok(n) => {
                self.metrics.applied.inc();
                info!(
                    secret = BUNDLE_SECRET,
                    trust_anchors = n,
                    "SDS: trust bundle installed"
                );
            }
            Err(e) => self.reject(BUNDLE_SECRET, &e),
        }
    }

    fn reject(&self, name: &str, e: &Rejected) {
        self.metrics
            .rejected
            .get_or_create(&ReasonLabels {
                reason: e.reason.as_str(),
            })
            .inc();
        warn!(
            secret = name,
            reason = e.reason.as_str(),
            error = %e,
            "SDS: Secret rejected; keeping the last good certificate or bundle"
        );
    }
}

#[cfg(test)]
mod tests;
