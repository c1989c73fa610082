//! The proxy's own configuration model.
//!
//! The proxy knows nothing about xDS or Kubernetes: the agent (static file, kube watcher)
//! and the `xds` crate fill these types. [`ProxyConfig`] holds the local workloads (so a
//! captured connection can be attributed to its source) and the proxy-wide timeouts.
//!
//! The submodules hold the typed traffic model that the `xds` crate converts Envoy v3
//! resources into, one module per resource type: [`listener`], [`route`], [`cluster`],
//! [`endpoint`], [`secret`]. Values are plain data (compiled regexes included), checked
//! once at conversion, `Serialize` for `/config_dump`. The data path reads them through
//! [`crate::traffic`], which indexes them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

use crate::tls::SpiffeId;

pub mod cluster;
pub mod endpoint;
pub mod ext_authz;
pub mod ext_proc;
pub mod filter;
pub mod health_check;
pub mod jwt;
pub mod listener;
pub mod local_reply;
pub mod proxy_protocol;
pub mod rbac;
pub mod route;
pub mod secret;
mod types;

pub use cluster::Cluster;
pub use endpoint::ClusterLoadAssignment;
pub use listener::Listener;
pub use route::RouteConfiguration;
pub use secret::Secret;
pub use types::{DataSource, MetadataValue, Regex, StringMatcher, StringPattern};

/// A workload (pod) running on this node whose traffic the proxy captures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Workload {
    /// Workload name (usually the pod's owner, e.g. the Deployment name).
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account, the basis of the SPIFFE identity.
    pub service_account: String,
    /// The pod IP: captured connections whose peer has this address belong to the workload.
    pub ip: IpAddr,
}

/// A configuration that does not hold together.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Two workloads claim the same IP, so connections from it cannot be attributed.
    #[error(
        "workloads {first} and {second} both have ip {ip}: each pod IP must belong to one workload \
         (is a stale pod still listed?)"
    )]
    DuplicateWorkloadIp {
        /// The shared address.
        ip: IpAddr,
        /// `namespace/name` of the first workload with this IP.
        first: String,
        /// `namespace/name` of the second workload with this IP.
        second: String,
    },
    /// `connect_timeout` is zero: every upstream connect would fail.
    #[error("connect_timeout must be greater than zero")]
    ZeroConnectTimeout,
}

/// Everything the proxy needs to serve connections. Shared as an `Arc` snapshot; a
/// connection keeps the snapshot it started with.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyConfig {
    workloads: Vec<Workload>,
    /// How long protocol detection waits for the client's first bytes before treating
    /// the connection as opaque TCP (server-first protocols send nothing). Default 100 ms.
    #[serde(serialize_with = "duration_str")]
    pub sniff_timeout: Duration,
    /// Upstream TCP connect timeout. Default 5 s.
    #[serde(serialize_with = "duration_str")]
    pub connect_timeout: Duration,
    /// After a drain starts, how long open connections may keep going before they are
    /// closed by force. Default 5 s.
    #[serde(serialize_with = "duration_str")]
    pub drain_deadline: Duration,
    /// The SPIFFE trust domain of workload identities
    /// (`spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`). Default
    /// `cluster.local`.
    pub trust_domain: String,
    /// Write one JSON access-log line per request and per opaque connection on the
    /// tracing target `myelin::access`. Default off.
    pub access_log: bool,
    // Built from `workloads` at construction; the reason `workloads` is private.
    #[serde(skip)]
    by_ip: HashMap<IpAddr, usize>,
    /// Meshed workloads on other nodes: traffic to them goes over HBONE (mutual TLS to their
    /// node's proxy). Set with [`ProxyConfig::with_remote`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    remote: Vec<RemoteWorkload>,
    #[serde(skip)]
    remote_by_ip: HashMap<IpAddr, usize>,
    /// Who may connect to which local workload; set exactly when mutual TLS is configured
    /// (workload identities exist). Read by the HBONE server for tunnels and by the
    /// proxy for pod-to-pod connections on this node. Set with
    /// [`ProxyConfig::with_inbound_policy`].
    #[serde(skip_serializing_if = "Option::is_none")]
    inbound: Option<InboundPolicy>,
}

/// Which source identities may connect to which local workloads (`myelin.mtls.inbound_allow`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboundPolicy {
    /// Per destination workload (`namespace/name`): the identities allowed. A workload
    /// not listed accepts every meshed identity (any of our trust domain).
    pub allow: HashMap<String, Vec<SpiffeId>>,
}

impl InboundPolicy {
    /// Whether `source` may connect to the workload `namespace/workload`.
    pub fn allows(&self, namespace: &str, workload: &str, source: &SpiffeId) -> bool {
        self.allowed(namespace, workload)
            .is_none_or(|ids| ids.contains(source))
    }

    /// The identities allowed to connect to `namespace/workload`; `None`: every one.
    pub fn allowed(&self, namespace: &str, workload: &str) -> Option<&[SpiffeId]> {
        if self.allow.is_empty() {
            return None;
        }
        self.allow
            .get(&format!("{namespace}/{workload}"))
            .map(Vec::as_slice)
    }
}

impl Serialize for InboundPolicy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let sorted: std::collections::BTreeMap<&str, Vec<String>> = self
            .allow
            .iter()
            .map(|(k, ids)| (k.as_str(), ids.iter().map(ToString::to_string).collect()))
            .collect();
        sorted.serialize(s)
    }
}

/// A meshed workload on another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemoteWorkload {
    /// Workload name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account: the identity its node must present for it.
    pub service_account: String,
    /// The pod IP.
    pub ip: IpAddr,
    /// Its node's HBONE address (`node address:15008`).
    pub node: std::net::SocketAddr,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            workloads: Vec::new(),
            sniff_timeout: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
            drain_deadline: Duration::from_secs(5),
            trust_domain: "cluster.local".into(),
            access_log: false,
            by_ip: HashMap::new(),
            remote: Vec::new(),
            remote_by_ip: HashMap::new(),
            inbound: None,
        }
    }
}

impl ProxyConfig {
    /// A config with these workloads and default timeouts. Fails if two workloads share an IP.
    pub fn new(workloads: Vec<Workload>) -> Result<Self, ConfigError> {
        let mut by_ip = HashMap::with_capacity(workloads.len());
        for (i, w) in workloads.iter().enumerate() {
            if let Some(&prev) = by_ip.get(&w.ip) {
                let p: &Workload = &workloads[prev];
                return Err(ConfigError::DuplicateWorkloadIp {
                    ip: w.ip,
                    first: format!("{}/{}", p.namespace, p.name),
                    second: format!("{}/{}", w.namespace, w.name),
                });
            }
            by_ip.insert(w.ip, i);
        }
        Ok(Self {
            workloads,
            by_ip,
            ..Self::default()
        })
    }

    /// Adds the meshed workloads of other nodes. Fails if one shares an IP with a local
    /// workload or another remote one.
    pub fn with_remote(mut self, remote: Vec<RemoteWorkload>) -> Result<Self, ConfigError> {
        let mut by_ip = HashMap::with_capacity(remote.len());
        for (i, r) in remote.iter().enumerate() {
            let clash = match (self.by_ip.get(&r.ip), by_ip.get(&r.ip)) {
                (Some(&l), _) => Some(format!(
                    "{}/{}",
                    self.workloads[l].namespace, self.workloads[l].name
                )),
                (None, Some(&p)) => {
                    let p: &RemoteWorkload = &remote[p];
                    Some(format!("{}/{}", p.namespace, p.name))
                }
                (None, None) => None,
            };
            if let Some(first) = clash {
                return Err(ConfigError::DuplicateWorkloadIp {
                    ip: r.ip,
                    first,
                    second: format!("{}/{}", r.namespace, r.name),
                });
            }
            by_ip.insert(r.ip, i);
        }
        self.remote = remote;
        self.remote_by_ip = by_ip;
        Ok(self)
    }

    /// The SPIFFE ID its node presents for a remote workload.
    pub fn remote_principal(&self, r: &RemoteWorkload) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, r.namespace, r.service_account
        )
    }

    /// The meshed workload on another node that owns `ip`, if any.
    pub fn remote_by_ip(&self, ip: IpAddr) -> Option<&RemoteWorkload> {
        if self.remote.is_empty() {
            return None;
        }
        let ip = ip.to_canonical();
        self.remote_by_ip.get(&ip).map(|&i| &self.remote[i])
    }

    /// Turns on authorization and destination-side reporting of connections to local
    /// workloads, with `policy` (the agent does so when `myelin.mtls` is configured: only
    /// then do workloads have identities). The HBONE server checks tunnels against the
    /// same policy.
    pub fn with_inbound_policy(mut self, policy: InboundPolicy) -> Self {
        self.inbound = Some(policy);
        self
    }

    /// The inbound policy; `None`: mutual TLS is off and same-node connections are only
    /// reported by their source.
    pub fn inbound_policy(&self) -> Option<&InboundPolicy> {
        self.inbound.as_ref()
    }

    /// Checks cross-field rules (the workload index is already checked by [`ProxyConfig::new`]).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroConnectTimeout);
        }
        Ok(())
    }

    /// The local workloads, in the order they were given.
    pub fn workloads(&self) -> &[Workload] {
        &self.workloads
    }

    /// The SPIFFE ID of a workload.
    pub fn principal(&self, w: &Workload) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, w.namespace, w.service_account
        )
    }

    /// The workload that owns `ip`, if any. IPv4-mapped IPv6 addresses (from a dual-stack
    /// listener) match the IPv4 workload.
    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<&Workload> {
        let ip = ip.to_canonical();
        self.by_ip.get(&ip).map(|&i| &self.workloads[i])
    }
}

/// Serializes a duration the way Envoy's JSON does (`"5s"`, `"0.100s"`), so `/config_dump`
/// reads like the rest of the mesh's config.
pub(crate) fn duration_str<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*d))
}

/// [`duration_str`] for an optional duration (`None` serializes as `null`).
pub(crate) fn opt_duration_str<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&format_duration(*d)),
        None => s.serialize_none(),
    }
}

fn format_duration(d: Duration) -> String {
    let nanos = d.subsec_nanos();
    if nanos == 0 {
        return format!("{}s", d.as_secs());
    }
    let frac = format!("{nanos:09}");
    format!("{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wl(name: &str, ip: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "default".into(),
            service_account: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    #[test]
    fn lookup_by_ip() {
        let cfg = ProxyConfig::new(vec![wl("a", "10.0.0.1"), wl("b", "fd00::2")]).unwrap();
        assert_eq!(
            cfg.workload_by_ip("10.0.0.1".parse().unwrap())
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            cfg.workload_by_ip("::ffff:10.0.0.1".parse().unwrap())
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            cfg.workload_by_ip("fd00::2".parse().unwrap()).unwrap().name,
            "b"
        );
        assert!(cfg.workload_by_ip("10.0.0.3".parse().unwrap()).is_none());
        assert_eq!(cfg.workloads().len(), 2);
    }

    #[test]
    fn duplicate_ip_is_rejected() {
        let err = ProxyConfig::new(vec![wl("a", "10.0.0.1"), wl("b", "10.0.0.1")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "workloads default/a and default/b both have ip 10.0.0.1: each pod IP must belong to \
             one workload (is a stale pod still listed?)"
        );
    }

    #[test]
    fn defaults_and_validate() {
        let mut cfg = ProxyConfig::default();
        assert_eq!(cfg.sniff_timeout, Duration::from_millis(100));
        assert_eq!(cfg.connect_timeout, Duration::from_secs(5));
        assert!(cfg.validate().is_ok());
        cfg.connect_timeout = Duration::ZERO;
        assert_eq!(cfg.validate(), Err(ConfigError::ZeroConnectTimeout));
    }

    #[test]
    fn serializes_for_config_dump() {
        let cfg = ProxyConfig::new(vec![wl("a", "10.0.0.1")]).unwrap();
        let json = serde_json::to_value(&cfg).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "workloads": [{"name": "a", "namespace": "default", "service_account": "a", "ip": "10.0.0.1"}],
                "sniff_timeout": "0.1s",
                "connect_timeout": "5s",
                "drain_deadline": "5s",
                "trust_domain": "cluster.local",
                "access_log": false,
            })
        );
        let back: Workload = serde_json::from_value(json["workloads"][0].clone()).unwrap();
        assert_eq!(back, cfg.workloads()[0]);
    }

    #[test]
    fn duration_format() {
        for (d, want) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(100), "0.1s"),
            (Duration::from_millis(1250), "1.25s"),
            (Duration::from_nanos(1), "0.000000001s"),
        ] {
            assert_eq!(format_duration(d), want);
        }
    }
}
