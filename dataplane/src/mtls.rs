//! The agent's part of mutual TLS (`myelin.mtls`): the embedded CA (from the configured
//! files, or created at start), a certificate per local workload identity issued before
//! anything is served and renewed by `myelin_proxy::tls::rotate`, and the HBONE server on
//! the node address. Keys live in memory only.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use myelin_proxy::drain;
use myelin_proxy::golden::GoldenMetrics;
use myelin_proxy::hbone::{HboneMetrics, InboundPolicy, Server};
use myelin_proxy::model::ProxyConfig;
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::rotate::{self, CaSource, CertSource, RotationMetrics};
use myelin_proxy::tls::{Identities, SpiffeId};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{Config, MtlsConfig};

/// Lifetime of a CA the agent creates for itself (standalone demo).
const GENERATED_CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Identities, their source and the HBONE server's parts, ready to be started.
pub struct Mtls {
    pub identities: Arc<Identities>,
    source: Arc<dyn CertSource>,
    rotation: RotationMetrics,
    hbone_metrics: Arc<HboneMetrics>,
    policy: InboundPolicy,
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

impl Mtls {
    /// Loads or creates the CA and issues every local workload's certificate, so the
    /// HBONE server has them before its first handshake. Metrics go into `registry`.
    pub fn new(m: &MtlsConfig, config: &Config, registry: &mut Registry) -> anyhow::Result<Mtls> {
        let td = &config.trust_domain;
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
        let mut wanted = BTreeSet::new();
        for w in &config.workloads {
            let id = SpiffeId::new(td, &w.namespace, &w.service_account).with_context(|| {
                format!(
                    "workload {}/{}: namespace and service account do not make a SPIFFE ID",
                    w.namespace, w.name
                )
            })?;
            wanted.insert(id);
        }
        for id in &wanted {
            let issued = source
                .issue(id)
                .map_err(|e| anyhow::anyhow!("issuing the certificate of {id}: {e}"))?;
            identities.insert(&issued)?;
        }
        info!(identities = wanted.len(), lifetime = ?m.cert_lifetime, "workload certificates issued");
        let mut allow = HashMap::new();
        for (workload, ids) in &m.inbound_allow {
            let ids = ids
                .iter()
                .map(|s| s.parse())
                .collect::<Result<Vec<SpiffeId>, _>>()
                .context("myelin.mtls.inbound_allow (validated at load)")?;
            allow.insert(workload.clone(), ids);
        }
        let rotation = RotationMetrics::new(registry);
        let hbone_metrics = Arc::new(HboneMetrics::new(registry));
        let (wanted, _) = watch::channel(wanted);
        Ok(Mtls {
            identities,
            source,
            rotation,
            hbone_metrics,
            policy: InboundPolicy { allow },
            wanted,
            hbone: SocketAddr::V4(m.hbone),
        })
    }

    /// Binds the HBONE server and starts it and the rotation, on the current runtime.
    /// Runs until `drain` (the server) or until this value is dropped (the rotation).
    pub async fn start(
        &self,
        proxy_config: Arc<ProxyConfig>,
        golden: Arc<GoldenMetrics>,
        drain: drain::Watch,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.hbone)
            .await
            .with_context(|| format!("binding the HBONE server on {}", self.hbone))?;
        let server = Server::new(
            self.identities.clone(),
            proxy_config,
            self.policy.clone(),
            self.hbone_metrics.clone(),
            golden,
        );
        info!(address = %self.hbone, "HBONE server listening");
        tokio::spawn(async move {
            if let Err(e) = server.serve(listener, drain).await {
                warn!(error = %e, "HBONE server stopped");
            }
        });
        tokio::spawn(rotate::run(
            self.identities.clone(),
            self.source.clone(),
            self.rotation.clone(),
            self.wanted.subscribe(),
        ));
        Ok(())
    }
}
