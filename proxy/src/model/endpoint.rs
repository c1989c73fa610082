//! Endpoints of a cluster (Envoy `config.endpoint.v3.ClusterLoadAssignment`), by
//! locality and priority, with per-endpoint health, weight and metadata.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use super::health_check::EndpointHealthCheck;
use super::types::MetadataValue;
use crate::tls::SpiffeId;

/// The endpoints of one cluster (the EDS resource, or a cluster's `load_assignment`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterLoadAssignment {
    /// The cluster (or EDS service) name.
    pub cluster_name: String,
    /// Endpoint groups.
    pub localities: Vec<LocalityEndpoints>,
}

/// Endpoints of one locality at one priority.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalityEndpoints {
    /// Where they are, if said.
    pub locality: Option<Locality>,
    /// 0 is the highest; lower priorities take traffic when higher ones are unhealthy.
    pub priority: u32,
    /// Weight of this locality among others of its priority (locality-weighted
    /// balancing); `None`: not given.
    pub load_balancing_weight: Option<u32>,
    /// The endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A locality.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Locality {
    /// Region.
    pub region: String,
    /// Zone.
    pub zone: String,
    /// Sub-zone.
    pub sub_zone: String,
}

/// One endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Endpoint {
    /// Where to connect.
    pub address: EndpointAddress,
    /// Health as reported by the control plane.
    pub health_status: HealthStatus,
    /// Weight among the locality's endpoints (default 1).
    pub load_balancing_weight: u32,
    /// `filter_metadata` (e.g. `istio` workload labels, `envoy.lb` subsets) as JSON.
    pub metadata: BTreeMap<String, BTreeMap<String, MetadataValue>>,
    /// A meshed workload on another node, reached through HBONE (the
    /// [`HBONE_METADATA`] metadata); `None`: connect to the address directly.
    pub hbone: Option<HboneEndpoint>,
    /// `health_check_config`: where and how active health checks reach it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_check: Option<EndpointHealthCheck>,
}

/// The `filter_metadata` namespace that marks an endpoint as a meshed workload on another
/// node: `node` (its node's address, `ip` or `ip:port`, port 15008 by default) and
/// `identity` (the SPIFFE ID its node must present for it; optional, else the cluster's
/// SAN list).
pub const HBONE_METADATA: &str = "myelin.io/hbone";

/// How a meshed endpoint on another node is reached: an HBONE tunnel (mutual TLS) to its
/// node's proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct HboneEndpoint {
    /// The node's HBONE server.
    pub node: SocketAddr,
    /// The identity the node must present for the endpoint; `None`: one of the cluster's
    /// URI SANs (its upstream TLS validation context).
    #[serde(serialize_with = "opt_display")]
    pub identity: Option<SpiffeId>,
}

fn opt_display<S: serde::Serializer>(v: &Option<SpiffeId>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// An endpoint's address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointAddress {
    /// An IP address and port.
    Socket(SocketAddr),
    /// A host name to resolve (DNS clusters).
    Dns {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
}

/// Envoy `config.core.v3.HealthStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Not known: treated as healthy.
    Unknown,
    /// Healthy.
    Healthy,
    /// Unhealthy: takes no traffic.
    Unhealthy,
    /// Draining: takes no new traffic.
    Draining,
    /// Health check timed out: treated as unhealthy.
    Timeout,
    /// Degraded: used only when there are not enough healthy hosts.
    Degraded,
}

impl HealthStatus {
    /// Whether the endpoint takes new traffic in the normal case.
    pub fn is_routable(self) -> bool {
        matches!(self, Self::Unknown | Self::Healthy)
    }
}
