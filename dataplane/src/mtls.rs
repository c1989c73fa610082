//! The agent's part of mutual TLS (`myelin.mtls`): a certificate per local workload
//! identity, and the HBONE server on the node address. Keys live in memory only.
//!
//! - `identity_source: ca`: the embedded CA (from the configured files, or created at
//!   start) issues every certificate before anything is served; `myelin_proxy::tls::rotate`
//!   renews them.
//! - `identity_source: sds`: the certificates and the trust bundle are xDS `Secret`s
//!   (`myelin_proxy::tls::sds`: one per SPIFFE ID, `ROOTCA`) that the config store gets
//!   from ADS or the bootstrap; `myelin_xds::sds::follow` installs every new version. Until
//!   they arrive, HBONE handshakes fail: cross-node traffic fails closed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use myelin_proxy::drain;
use myelin_proxy::golden::GoldenMetrics;
use myelin_proxy::hbone::{HboneMetrics, Server};
use myelin_proxy::model::ProxyConfig;
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::rotate::{self, CaSource, CertSource, RotationMetrics};
use myelin_proxy::tls::sds::{SdsIdentities, SdsMetrics};
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_xds::store::ConfigStore;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, IdentitySource, MtlsConfig};
use crate::xds::Xds;

/// Lifetime of a CA the agent creates for itself (standalone demo).
const GENERATED_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Identities, their source and the HBONE server's parts, ready to be started.
pub struct Mtls {
    pub identities: Arc<Identities>,
    source: Source,
    rotation: RotationMetrics,
    /// The HBONE server's and client's metrics (one registration).
    pub hbone_metrics: Arc<HboneMetrics>,
    wanted: watch::Sender<BTreeSet<SpiffeId>>,
    hbone: SocketAddr,
}

impl std::fmt::Debug for Mtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtls")
            .field("identities", &self.identities)
            .field("hbone", &self.hbone)
            .finish_non_exhaustive()
    }
}

/// Where the certificates come from.
enum Source {
    /// Issued and renewed by the embedded CA.
    Ca(Arc<dyn CertSource>),
    /// Secrets of the config store.
    Sds {
        store: Arc<ConfigStore>,
        metrics: SdsMetrics,
    },
}

/// The SPIFFE IDs of the node's workloads.
fn workload_ids(config: &Config) -> anyhow::Result<BTreeSet<SpiffeId>> {
    let mut wanted = BTreeSet::new();
    for w in &config.workloads {
        let id = SpiffeId::new(&config.trust_domain, &w.namespace, &w.service_account)
            .with_context(|| {
                format!(
                    "workload {}/{}: namespace and service account do not make a SPIFFE ID",
                    w.namespace, w.name
                )
            })?;
        wanted.insert(id);
    }
    Ok(wanted)
}

impl Mtls {
    /// With the CA: loads or creates it and issues every local workload's certificate, so
    /// the HBONE server has them before its first handshake. With SDS: asks `xds`'s store
    /// for the workloads' Secrets (before its ADS client starts). Metrics go into
    /// `registry`.
    pub fn new(
        m: &MtlsConfig,
        config: &Config,
        xds: &Xds,
        registry: &mut Registry,
    ) -> anyhow::Result<Mtls> {
        let td = &config.trust_domain;
        let wanted = workload_ids(config)?;
        let (identities, source) = match m.identity_source {
            IdentitySource::Ca => {
                let (identities, source) = Self::ca(m, td)?;
                for id in &wanted {
                    let issued = source
                        .issue(id)
                        .map_err(|e| anyhow::anyhow!("issuing the certificate of {id}: {e}"))?;
                    identities.insert(&issued)?;
                }
                info!(identities = wanted.len(), lifetime = ?m.cert_lifetime, "workload certificates issued");
                (identities, Source::Ca(source))
            }
            IdentitySource::Sds => {
                let identities = Identities::without_bundle(td)?;
                let metrics = SdsMetrics::new(registry);
                let store = xds.store();
                let names = SdsIdentities::new(identities.clone(), wanted.clone(), metrics.clone())
                    .secret_names();
                info!(secrets = ?names, "workload certificates and the trust bundle come from SDS; until they arrive, HBONE handshakes fail");
                store.want_secrets(names);
                (identities, Source::Sds { store, metrics })
            }
        };
        let rotation = RotationMetrics::new(registry);
        let hbone_metrics = Arc::new(HboneMetrics::new(registry));
        let (wanted, _) = watch::channel(wanted);
        Ok(Mtls {
            identities,
            source,
            rotation,
            hbone_metrics,
            wanted,
            hbone: SocketAddr::V4(m.hbone),
        })
    }

    /// The embedded CA's identities (its certificate as the bundle) and certificate source.
    fn ca(m: &MtlsConfig, td: &str) -> anyhow::Result<(Arc<Identities>, Arc<dyn CertSource>)> {
        let ca = match &m.ca_files {
            Some((cert, key)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).with_context(|| {
                        format!(
                            "myelin.mtls: reading {} (CA certificate or key)",
                            p.display()
                        )
                    })
                };
                Ca::from_pem(td, &read(cert)?, &read(key)?).with_context(|| {
                    format!(
                        "myelin.mtls: {} and {} are not a CA certificate and its key",
                        cert.display(),
                        key.display()
                    )
                })?
            }
            None => {
                warn!("myelin.mtls: no ca_cert/ca_key: created a CA for this agent only; other nodes will not trust its certificates");
                Ca::generate(td, GENERATED_CA_LIFETIME).context("creating a CA")?
            }
        };
        let identities = Identities::new(td, &[ca.cert_der().clone()])
            .context("myelin.mtls: the CA certificate as trust bundle")?;
        let source: Arc<dyn CertSource> = Arc::new(CaSource {
            ca,
            lifetime: m.cert_lifetime,
        });
        Ok((identities, source))
    }

    /// Binds the HBONE server and starts it and the rotation (CA) or the SDS follower, on
    /// the current runtime. Runs until `drain` (the server) or until this value is dropped
    /// (the rotation; the SDS follower runs as long as the runtime).
    pub async fn start(
        &self,
        proxy_config: Arc<ProxyConfig>,
        golden: Arc<GoldenMetrics>,
        drain: drain::Watch,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.hbone)
            .await
            .with_context(|| format!("binding the HBONE server on {}", self.hbone))?;
        // The inbound policy is the proxy config's (`Config::proxy_config`), which the
        // proxy also applies to pod-to-pod connections on this node.
        let server = Server::new(
            self.identities.clone(),
            proxy_config,
            self.hbone_metrics.clone(),
            golden,
        );
        info!(address = %self.hbone, "HBONE server listening");
        tokio::spawn(async move {
            if let Err(e) = server.serve(listener, drain).await {
                warn!(error = %e, "HBONE server stopped");
            }
        });
        match &self.source {
            Source::Ca(source) => {
                tokio::spawn(rotate::run(
                    self.identities.clone(),
                    source.clone(),
                    self.rotation.clone(),
                    self.wanted.subscribe(),
                ));
            }
            Source::Sds { store, metrics } => {
                let sds = SdsIdentities::new(
                    self.identities.clone(),
                    self.wanted.borrow().clone(),
                    metrics.clone(),
                );
                tokio::spawn(myelin_xds::sds::follow(store.clone(), sds));
                tokio::spawn(rotate::watch_expiry(
                    self.identities.clone(),
                    self.rotation.clone(),
                ));
            }
        }
        Ok(())
    }
}
