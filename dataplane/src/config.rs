//! The standalone configuration file (`myelin run --config FILE`).
//!
//! The file has the shape of an Envoy bootstrap: Myelin's own settings live under `myelin:`,
//! and every other top-level key is Envoy's (`node`, `static_resources`, `dynamic_resources`,
//! `admin`, ...), read by `myelin_xds::bootstrap` through the same conversion as xDS. On top of
//! that, `run` needs a few things the conversion alone does not check: the static cluster that
//! `dynamic_resources.ads_config` names must give one address to dial, a control plane needs
//! `node.id`, and the admin listener's address may come from either section but not differ.
//!
//! Parsing happens once: each error names the field path and the value, and [`Config::load`]
//! never returns a half-valid config.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use myelin_proxy::golden::{GuardConfig, Naming};
use myelin_proxy::model::{cluster::Discovery, endpoint::EndpointAddress};
use myelin_xds::bootstrap::{AdsApi, Bootstrap, Node};
use serde::{Deserialize, Serialize};

/// A problem with the configuration: which field, which value, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: {field} = {value:?}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        value: String,
        reason: String,
    },
    /// The Envoy sections: every problem, each with its field path.
    #[error("{path}: {} problem(s) in the Envoy sections:\n  {}", problems.len(), problems.join("\n  "))]
    Envoy {
        path: PathBuf,
        problems: Vec<String>,
    },
}

/// Whether the kernel may splice sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpliceSetting {
    /// The startup self-test decides (`spliced` if the whole path works, else `tcp`).
    #[default]
    Auto,
    /// Never splice: captured connections go through the proxy over plain TCP.
    Off,
}

/// Myelin's part of the file. The other top-level keys are the Envoy sections: they are not
/// ignored but read (and unknown ones rejected by name) by `myelin_xds::bootstrap`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct File {
    pub myelin: Myelin,
}

/// Myelin's own section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Myelin {
    pub node: NodeSection,
    /// Port of the capture listener on the node address.
    #[serde(default = "default_capture_port")]
    pub capture_port: u16,
    /// cgroup v2 directory holding the node's pods and the agent: the eBPF attach point.
    /// Relative paths are under the cgroup v2 mount.
    pub cgroup_root: PathBuf,
    /// Names the bpffs pin directory (`/sys/fs/bpf/myelin/<instance>`). Default: node name.
    #[serde(default)]
    pub instance: Option<String>,
    #[serde(default)]
    pub splice: SpliceSetting,
    /// Destination ports never captured (e.g. 22).
    #[serde(default)]
    pub excluded_ports: Vec<u16>,
    /// Destination CIDRs never captured (e.g. the node's link-local range).
    #[serde(default)]
    pub excluded_cidrs: Vec<String>,
    /// The admin API (`/ready`, `/config_dump`). Default: Envoy's `admin.address` if the file
    /// has one, else `127.0.0.1:15000`; when both are set they must be the same.
    #[serde(default)]
    pub admin_address: Option<SocketAddr>,
    #[serde(default = "default_metrics")]
    pub metrics_address: SocketAddr,
    /// Detach and unpin the kernel programs when the agent exits (default: keep them, so
    /// a restart finds them in place).
    #[serde(default)]
    pub uninstall_on_exit: bool,
    /// Protocol detection timeout in milliseconds (server-first protocols wait this long).
    #[serde(default = "default_sniff_ms")]
    pub protocol_detection_timeout_ms: u64,
    /// The SPIFFE trust domain of workload identities
    /// (`spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The golden metrics: names and cardinality guard.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Workload identities and the HBONE server (mutual TLS between nodes). Off without it.
    #[serde(default)]
    pub mtls: Option<MtlsSection>,
    #[serde(default)]
    pub workloads: Vec<WorkloadSection>,
}

/// `myelin.mtls`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsSection {
    /// The embedded CA's certificate and key (PEM files), shared by the nodes of a mesh.
    /// Both or neither; neither: a CA is created in memory at start (the demo: its
    /// certificates convince no other node).
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    #[serde(default)]
    pub ca_key: Option<PathBuf>,
    /// Lifetime of workload certificates (`24h`, `10m`, `30s`); each is renewed at half of
    /// what is left of it.
    #[serde(default = "default_cert_lifetime")]
    pub cert_lifetime: String,
    /// Where workload certificates and the trust bundle come from: `ca` (the embedded CA
    /// above) or `sds` (xDS `Secret`s: a `tls_certificate` named by each workload's SPIFFE
    /// ID and the `ROOTCA` validation context, from ADS or `static_resources.secrets`).
    #[serde(default)]
    pub identity_source: IdentitySource,
    /// The HBONE server's port on the node address.
    #[serde(default = "default_hbone_port")]
    pub hbone_port: u16,
    /// Per destination workload (`namespace/name`), the SPIFFE IDs allowed to open tunnels
    /// to it; a workload not listed accepts every identity of the trust domain.
    #[serde(default)]
    pub inbound_allow: std::collections::BTreeMap<String, Vec<String>>,
    /// Meshed workloads on other nodes: connections to them go through an HBONE tunnel to
    /// their node (`node`: its address; the HBONE port is this config's `hbone_port`).
    #[serde(default)]
    pub remote_workloads: Vec<RemoteWorkloadSection>,
    /// The inbound mode of this node's workloads unless a workload sets its own
    /// (`myelin.workloads[].mtls_mode`): `permissive` (Istio's default) or `strict`.
    #[serde(default)]
    pub mode: InboundMode,
}

/// What a workload accepts besides connections through the node's proxy (Istio's
/// PeerAuthentication `mtls.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Plaintext from outside the mesh is let in, and recorded in the golden TCP metrics
    /// with `connection_security_policy="none"`.
    #[default]
    #[serde(alias = "PERMISSIVE")]
    Permissive,
    /// Only connections through the node's proxy (so, from another node, only over HBONE
    /// with mTLS): the kernel drops any other TCP handshake to the workload.
    #[serde(alias = "STRICT")]
    Strict,
}

/// One entry of `myelin.mtls.remote_workloads`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RemoteWorkloadSection {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    pub ip: Ipv4Addr,
    /// Its node's address.
    pub node: Ipv4Addr,
}

fn default_cert_lifetime() -> String {
    "24h".into()
}
fn default_hbone_port() -> u16 {
    myelin_proxy::hbone::PORT
}

/// `myelin.mtls.identity_source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentitySource {
    /// The embedded CA issues and renews the certificates.
    #[default]
    Ca,
    /// The control plane sends them as SDS Secrets and rotates them.
    Sds,
}

/// The validated `myelin.mtls`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MtlsConfig {
    /// CA certificate and key files; `None`: a CA created at start.
    pub ca_files: Option<(PathBuf, PathBuf)>,
    #[serde(serialize_with = "duration_secs")]
    pub cert_lifetime: Duration,
    /// Where certificates come from.
    pub identity_source: IdentitySource,
    /// Where the HBONE server listens.
    pub hbone: SocketAddrV4,
    /// Destination workload (`namespace/name`) -> allowed SPIFFE IDs.
    pub inbound_allow: std::collections::BTreeMap<String, Vec<String>>,
    /// Meshed workloads on other nodes.
    pub remote_workloads: Vec<RemoteWorkloadSection>,
}

/// `myelin.metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// `myelin` (`myelin_requests_total`, seconds) or `istio` (`istio_requests_total`,
    /// milliseconds, Istio's label names).
    #[serde(default)]
    pub naming: MetricsNaming,
    /// Label sets per golden metric; new ones beyond it are recorded under one overflow set.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Label sets not updated for this long are removed (`30s`, `10m`, `1h`, `1h30m`).
    #[serde(default = "default_idle_expiry")]
    pub idle_expiry: String,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            naming: MetricsNaming::default(),
            max_series: default_max_series(),
            idle_expiry: default_idle_expiry(),
        }
    }
}

/// `myelin.metrics.naming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricsNaming {
    /// Myelin's names.
    #[default]
    Myelin,
    /// Istio's standard metric and label names, for existing dashboards.
    Istio,
}

impl From<MetricsNaming> for Naming {
    fn from(n: MetricsNaming) -> Naming {
        match n {
            MetricsNaming::Myelin => Naming::Myelin,
            MetricsNaming::Istio => Naming::Istio,
        }
    }
}

/// The validated `myelin.metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MetricsConfig {
    pub naming: MetricsNaming,
    pub max_series: usize,
    #[serde(serialize_with = "duration_secs")]
    pub idle_expiry: Duration,
}

impl MetricsConfig {
    /// The golden metrics' cardinality guard.
    pub fn guard(&self) -> GuardConfig {
        GuardConfig {
            max_series: self.max_series,
            idle_expiry: self.idle_expiry,
        }
    }
}

fn duration_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{}s", d.as_secs_f64()))
}

/// `myelin.node`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: String,
    /// The node's address: the capture listener binds here.
    pub address: Ipv4Addr,
}

/// Per-workload splice policy.
///
/// Splicing puts the app's socket into a sockmap, and on the kernels we run on that changes
/// its receive path (`tcp_bpf_recvmsg`): a **blocking** `recv()` woken without data returns
/// `EAGAIN` instead of waiting again. Non-blocking apps (event loops: Go, Node, tokio, Envoy,
/// curl, ...) retry and never notice; blocking apps can fail a read. The startup self-test
/// measures whether blocking reads survive splicing on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadSplice {
    /// Spliced only if the self-test found blocking reads safe on this node.
    #[default]
    Auto,
    /// The workload uses non-blocking sockets only: spliced whenever the spliced path works.
    Nonblocking,
    /// Never spliced (still captured and proxied).
    Off,
}

/// One entry of `myelin.workloads`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    /// The pod's cgroup; relative paths are under `cgroup_root`.
    pub cgroup: PathBuf,
    pub ip: Ipv4Addr,
    /// Per-workload splice policy (its traffic is captured and proxied either way).
    #[serde(default)]
    pub splice: WorkloadSplice,
    /// Overrides `myelin.mtls.mode` for this workload; `strict` needs `myelin.mtls`.
    #[serde(default)]
    pub mtls_mode: Option<InboundMode>,
}

fn default_capture_port() -> u16 {
    15001
}
fn default_admin() -> SocketAddr {
    "127.0.0.1:15000".parse().expect("literal")
}
fn default_metrics() -> SocketAddr {
    "127.0.0.1:15020".parse().expect("literal")
}
fn default_sniff_ms() -> u64 {
    100
}
fn default_sa() -> String {
    "default".into()
}
fn default_trust_domain() -> String {
    "cluster.local".into()
}
fn default_max_series() -> usize {
    10_000
}
fn default_idle_expiry() -> String {
    "10m".into()
}

/// The validated, resolved configuration the agent runs with.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub source: PathBuf,
    pub node_name: String,
    pub capture: SocketAddrV4,
    pub cgroup_root: PathBuf,
    pub instance: String,
    pub splice: SpliceSetting,
    pub excluded_ports: Vec<u16>,
    pub excluded_cidrs: Vec<(Ipv4Addr, u8)>,
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub uninstall_on_exit: bool,
    pub sniff_timeout: Duration,
    pub trust_domain: String,
    pub metrics: MetricsConfig,
    /// Mutual TLS between nodes, if `myelin.mtls` is set.
    pub mtls: Option<MtlsConfig>,
    pub workloads: Vec<Workload>,
    /// Where ADS comes from, if `dynamic_resources.ads_config` is set.
    pub ads: Option<AdsTarget>,
    /// The converted Envoy sections. Not serialized here: `/config_dump` shows the static
    /// resources in its `xds` view, with versions.
    #[serde(skip)]
    pub bootstrap: Bootstrap,
}

/// The control plane to stream ADS from: `dynamic_resources.ads_config` resolved against the
/// static cluster it names.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdsTarget {
    /// The gRPC URI, `http://ADDRESS:PORT`. A host name (STRICT_DNS, LOGICAL_DNS) is resolved
    /// at every connect, so a control plane that moves is found again on reconnect.
    pub server: String,
    /// The static cluster it comes from.
    pub cluster: String,
    /// State of the world (`grpc`) or incremental (`delta_grpc`).
    pub api: AdsApi,
    /// The cluster's `connect_timeout`.
    pub connect_timeout: Duration,
    /// Who this proxy is to the control plane.
    pub node: Node,
}

/// A resolved workload.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub cgroup: PathBuf,
    pub ip: Ipv4Addr,
    pub splice: WorkloadSplice,
    /// The inbound mode in force (the workload's own, else `myelin.mtls.mode`).
    pub mtls_mode: InboundMode,
}

impl Config {
    /// Reads, parses and validates `path`. `cgroup2` is the cgroup v2 mount point used to
    /// resolve relative cgroup paths.
    pub fn load(path: &Path, cgroup2: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, cgroup2)
    }

    /// Parses and validates `text` (named `path` in messages).
    pub fn parse(text: &str, path: &Path, cgroup2: &Path) -> Result<Config, ConfigError> {
        let syntax = |e: serde_yaml::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.to_string(),
        };
        // Myelin's section straight from the text, so serde's messages keep their lines.
        let file: File = serde_yaml::from_str(text).map_err(syntax)?;
        let doc: serde_json::Value = serde_yaml::from_str(text).map_err(syntax)?;
        let invalid = |field: &str, value: &dyn fmt::Display, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field: field.to_owned(),
            value: value.to_string(),
            reason: reason.to_owned(),
        };
        let m = file.myelin;
        if m.node.name.is_empty() {
            return Err(invalid("myelin.node.name", &"", "must not be empty"));
        }
        let addr = m.node.address;
        if addr.is_unspecified() || addr.is_loopback() || addr.is_multicast() {
            return Err(invalid(
                "myelin.node.address",
                &addr,
                "must be a unicast, non-loopback address the pods can reach (loopback is never captured)",
            ));
        }
        if m.capture_port == 0 {
            return Err(invalid("myelin.capture_port", &0, "must not be 0"));
        }
        let instance = m.instance.clone().unwrap_or_else(|| m.node.name.clone());
        let inst_ok = !instance.is_empty()
            && instance.len() <= 64
            && instance
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !inst_ok {
            return Err(invalid(
                "myelin.instance",
                &instance,
                "must be 1-64 characters of [A-Za-z0-9_-] (it names a bpffs directory; set it explicitly if the node name has other characters)",
            ));
        }
        let cgroup_root = if m.cgroup_root.is_absolute() {
            m.cgroup_root.clone()
        } else {
            cgroup2.join(&m.cgroup_root)
        };
        if !cgroup_root.starts_with(cgroup2) {
            return Err(invalid(
                "myelin.cgroup_root",
                &m.cgroup_root.display(),
                &format!("must be inside the cgroup v2 mount {}", cgroup2.display()),
            ));
        }
        let mut cidrs = Vec::new();
        for (i, c) in m.excluded_cidrs.iter().enumerate() {
            cidrs.push(
                parse_cidr(c).map_err(|reason| {
                    invalid(&format!("myelin.excluded_cidrs[{i}]"), c, &reason)
                })?,
            );
        }
        for (i, p) in m.excluded_ports.iter().enumerate() {
            if *p == 0 {
                return Err(invalid(
                    &format!("myelin.excluded_ports[{i}]"),
                    p,
                    "must not be 0",
                ));
            }
        }
        if let Err(reason) = check_trust_domain(&m.trust_domain) {
            return Err(invalid("myelin.trust_domain", &m.trust_domain, &reason));
        }
        if m.metrics.max_series == 0 {
            return Err(invalid(
                "myelin.metrics.max_series",
                &0,
                "must be at least 1 (every new label set would be recorded as overflow)",
            ));
        }
        let idle_expiry = parse_duration(&m.metrics.idle_expiry).map_err(|reason| {
            invalid(
                "myelin.metrics.idle_expiry",
                &m.metrics.idle_expiry,
                &reason,
            )
        })?;
        if idle_expiry < Duration::from_secs(1) {
            return Err(invalid(
                "myelin.metrics.idle_expiry",
                &m.metrics.idle_expiry,
                "must be at least 1s (keep it well above the scrape interval: an expired \
                 series starts again from zero)",
            ));
        }
        let mtls = match &m.mtls {
            None => None,
            Some(t) => {
                let ca_files =
                    match (&t.ca_cert, &t.ca_key) {
                        (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                        (None, None) => None,
                        _ => return Err(invalid(
                            "myelin.mtls.ca_cert",
                            &t.ca_cert.as_deref().unwrap_or(Path::new("")).display(),
                            "ca_cert and ca_key go together (neither: a CA is created at start)",
                        )),
                    };
                if t.identity_source == IdentitySource::Sds && ca_files.is_some() {
                    return Err(invalid(
                        "myelin.mtls.ca_cert",
                        &t.ca_cert.as_deref().unwrap_or(Path::new("")).display(),
                        "is for identity_source: ca; with sds the certificates and the trust \
                         bundle come from SDS Secrets",
                    ));
                }
                let cert_lifetime = parse_duration(&t.cert_lifetime).map_err(|reason| {
                    invalid("myelin.mtls.cert_lifetime", &t.cert_lifetime, &reason)
                })?;
                if cert_lifetime < Duration::from_secs(2) {
                    return Err(invalid(
                        "myelin.mtls.cert_lifetime",
                        &t.cert_lifetime,
                        "must be at least 2s (certificates are renewed at half their lifetime)",
                    ));
                }
                if t.hbone_port == 0 || t.hbone_port == m.capture_port {
                    return Err(invalid(
                        "myelin.mtls.hbone_port",
                        &t.hbone_port,
                        "must be a port other than 0 and the capture port",
                    ));
                }
                for (key, ids) in &t.inbound_allow {
                    if key.split('/').count() != 2 || key.split('/').any(str::is_empty) {
                        return Err(invalid(
                            &format!("myelin.mtls.inbound_allow[{key:?}]"),
                            key,
                            "keys are destination workloads as namespace/name",
                        ));
                    }
                    for (i, id) in ids.iter().enumerate() {
                        if let Err(e) = id.parse::<myelin_proxy::tls::SpiffeId>() {
                            return Err(invalid(
                                &format!("myelin.mtls.inbound_allow[{key:?}][{i}]"),
                                id,
                                &e.to_string(),
                            ));
                        }
                    }
                }
                let mut remote_ips = std::collections::HashMap::new();
                for (i, r) in t.remote_workloads.iter().enumerate() {
                    let field = |f: &str| format!("myelin.mtls.remote_workloads[{i}].{f}");
                    if let Some(prev) = remote_ips.insert(r.ip, i) {
                        return Err(invalid(
                            &field("ip"),
                            &r.ip,
                            &format!("already used by myelin.mtls.remote_workloads[{prev}]"),
                        ));
                    }
                    if r.name.is_empty() || r.namespace.is_empty() {
                        return Err(invalid(
                            &field("name"),
                            &r.name,
                            "name and namespace must not be empty",
                        ));
                    }
                    if r.node == addr {
                        return Err(invalid(
                            &field("node"),
                            &r.node,
                            "is this node: its workloads belong in myelin.workloads",
                        ));
                    }
                    if m.workloads.iter().any(|w| w.ip == r.ip) {
                        return Err(invalid(
                            &field("ip"),
                            &r.ip,
                            "is a local workload's address",
                        ));
                    }
                }
                Some(MtlsConfig {
                    ca_files,
                    cert_lifetime,
                    identity_source: t.identity_source,
                    hbone: SocketAddrV4::new(addr, t.hbone_port),
                    inbound_allow: t.inbound_allow.clone(),
                    remote_workloads: t.remote_workloads.clone(),
                })
            }
        };
        let mut workloads = Vec::new();
        let mut seen_ips = std::collections::HashMap::new();
        for (i, w) in m.workloads.iter().enumerate() {
            let field = |f: &str| format!("myelin.workloads[{i}].{f}");
            if w.name.is_empty() {
                return Err(invalid(&field("name"), &"", "must not be empty"));
            }
            if w.namespace.is_empty() {
                return Err(invalid(&field("namespace"), &"", "must not be empty"));
            }
            if let Some(prev) = seen_ips.insert(w.ip, i) {
                return Err(invalid(
                    &field("ip"),
                    &w.ip,
                    &format!("already used by myelin.workloads[{prev}]"),
                ));
            }
            if w.ip == addr {
                return Err(invalid(&field("ip"), &w.ip, "is the node address"));
            }
            let cgroup = if w.cgroup.is_absolute() {
                w.cgroup.clone()
            } else {
                cgroup_root.join(&w.cgroup)
            };
            if !cgroup.starts_with(&cgroup_root) || cgroup == cgroup_root {
                return Err(invalid(
                    &field("cgroup"),
                    &w.cgroup.display(),
                    &format!(
                        "must be a cgroup below cgroup_root {}",
                        cgroup_root.display()
                    ),
                ));
            }
            let node_mode = m.mtls.as_ref().map(|t| t.mode).unwrap_or_default();
            let mtls_mode = w.mtls_mode.unwrap_or(node_mode);
            if mtls_mode == InboundMode::Strict && m.mtls.is_none() {
                return Err(invalid(
                    &field("mtls_mode"),
                    &"strict",
                    "needs myelin.mtls (without it, traffic from other nodes could not reach the workload at all)",
                ));
            }
            workloads.push(Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                cgroup,
                ip: w.ip,
                splice: w.splice,
                mtls_mode,
            });
        }
        let (bootstrap, ads) = envoy_sections(&doc).map_err(|problems| ConfigError::Envoy {
            path: path.to_owned(),
            problems,
        })?;
        let admin_address = admin_address(m.admin_address, bootstrap.admin)
            .map_err(|reason| invalid("admin.address", &bootstrap.admin.expect("set"), &reason))?;
        let sds = mtls
            .as_ref()
            .is_some_and(|t| t.identity_source == IdentitySource::Sds);
        if sds && ads.is_none() && bootstrap.secrets.is_empty() {
            return Err(invalid(
                "myelin.mtls.identity_source",
                &"sds",
                "needs dynamic_resources.ads_config or static_resources.secrets to deliver the \
                 workload certificates and the ROOTCA bundle",
            ));
        }
        Ok(Config {
            source: path.to_owned(),
            node_name: m.node.name,
            capture: SocketAddrV4::new(addr, m.capture_port),
            cgroup_root,
            instance,
            splice: m.splice,
            excluded_ports: m.excluded_ports,
            excluded_cidrs: cidrs,
            admin_address,
            metrics_address: m.metrics_address,
            uninstall_on_exit: m.uninstall_on_exit,
            sniff_timeout: Duration::from_millis(m.protocol_detection_timeout_ms),
            trust_domain: m.trust_domain,
            metrics: MetricsConfig {
                naming: m.metrics.naming,
                max_series: m.metrics.max_series,
                idle_expiry,
            },
            mtls,
            workloads,
            ads,
            bootstrap,
        })
    }

    /// `myelin validate`: checks every section of a file without starting anything: Myelin's
    /// own section (optional here, so plain Envoy bootstraps can be checked) and the Envoy
    /// sections through the xDS conversion. Returns a one-line summary, or every problem,
    /// each with its field path.
    pub fn validate_file(path: &Path, cgroup2: &Path) -> Result<String, Vec<String>> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![ConfigError::Read {
                path: path.to_owned(),
                source: e,
            }
            .to_string()]
        })?;
        let doc: serde_json::Value =
            serde_yaml::from_str(&text).map_err(|e| vec![format!("{}: {e}", path.display())])?;
        let mut problems = Vec::new();
        let mut summary = Vec::new();
        // Myelin's `admin_address` as written (None: not set), once its section is valid.
        let mut myelin_admin = None;
        if let Some(m) = doc.get("myelin") {
            let only_myelin = serde_json::json!({ "myelin": m });
            let yaml = serde_yaml::to_string(&only_myelin).expect("JSON values are YAML");
            match Self::parse(&yaml, path, cgroup2) {
                Ok(c) => {
                    summary.push(format!(
                        "myelin: node {}, {} workloads",
                        c.node_name,
                        c.workloads.len()
                    ));
                    let written = m.get("admin_address").is_some().then_some(c.admin_address);
                    myelin_admin = Some(written);
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        match envoy_sections(&doc) {
            Ok((b, ads)) => {
                summary.push(format!(
                    "envoy: {} listeners, {} clusters, {} secrets{}",
                    b.listeners.len(),
                    b.clusters.len(),
                    b.secrets.len(),
                    ads.as_ref()
                        .map(|a| format!(
                            ", ADS ({:?}) via cluster {} at {}",
                            a.api, a.cluster, a.server
                        ))
                        .unwrap_or_default()
                ));
                if let (Some(mine), Some(envoy)) = (myelin_admin, b.admin) {
                    if let Err(reason) = admin_address(mine, Some(envoy)) {
                        problems.push(
                            ConfigError::Invalid {
                                path: path.to_owned(),
                                field: "admin.address".into(),
                                value: envoy.to_string(),
                                reason,
                            }
                            .to_string(),
                        );
                    }
                }
            }
            Err(errs) => {
                problems.extend(errs.into_iter().map(|e| format!("{}: {e}", path.display())))
            }
        }
        if problems.is_empty() {
            Ok(summary.join("; "))
        } else {
            Err(problems)
        }
    }

    /// The proxy's model of this configuration.
    pub fn proxy_config(&self) -> myelin_proxy::model::ProxyConfig {
        let workloads = self
            .workloads
            .iter()
            .map(|w| myelin_proxy::model::Workload {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                service_account: w.service_account.clone(),
                ip: IpAddr::V4(w.ip),
            })
            .collect();
        // Duplicate IPs were rejected above, so this cannot fail.
        let mut pc = myelin_proxy::model::ProxyConfig::new(workloads)
            .expect("workload IPs are unique after validation");
        pc.sniff_timeout = self.sniff_timeout;
        pc.trust_domain = self.trust_domain.clone();
        let Some(m) = &self.mtls else {
            return pc;
        };
        // Identities exist: the HBONE server and the same-node path authorize with this.
        let allow = m
            .inbound_allow
            .iter()
            .map(|(workload, ids)| {
                let ids = ids
                    .iter()
                    .map(|id| id.parse().expect("inbound_allow ids are checked at load"))
                    .collect();
                (workload.clone(), ids)
            })
            .collect();
        pc = pc.with_inbound_policy(myelin_proxy::model::InboundPolicy { allow });
        let remote = m
            .remote_workloads
            .iter()
            .map(|r| myelin_proxy::model::RemoteWorkload {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
                service_account: r.service_account.clone(),
                ip: IpAddr::V4(r.ip),
                node: std::net::SocketAddr::V4(SocketAddrV4::new(r.node, m.hbone.port())),
            })
            .collect();
        pc.with_remote(remote)
            .expect("remote workload IPs are unique and not local after validation")
    }
}

/// The Envoy sections as `run` uses them: converted (`myelin_xds::bootstrap`), static names
/// unique per type, and the ADS source resolved to an address. Every problem is listed.
fn envoy_sections(doc: &serde_json::Value) -> Result<(Bootstrap, Option<AdsTarget>), Vec<String>> {
    let bootstrap = myelin_xds::bootstrap::from_value(doc)?;
    let mut errs = Vec::new();
    unique_names(
        "listeners",
        bootstrap.listeners.iter().map(|l| l.name.as_str()),
        &mut errs,
    );
    unique_names(
        "clusters",
        bootstrap.clusters.iter().map(|c| c.name.as_str()),
        &mut errs,
    );
    unique_names(
        "secrets",
        bootstrap.secrets.iter().map(|s| s.name.as_str()),
        &mut errs,
    );
    let ads = ads_target(&bootstrap, &mut errs);
    if errs.is_empty() {
        Ok((bootstrap, ads))
    } else {
        Err(errs)
    }
}

/// Static resources of a type are keyed by name (as in Envoy, which refuses duplicates).
fn unique_names<'a>(what: &str, names: impl Iterator<Item = &'a str>, errs: &mut Vec<String>) {
    let mut seen = std::collections::HashMap::new();
    for (i, name) in names.enumerate() {
        if let Some(first) = seen.insert(name, i) {
            errs.push(format!(
                "static_resources.{what}[{i}].name: {name:?} is already used by static_resources.{what}[{first}]"
            ));
        }
    }
}

const ADS_CLUSTER_FIELD: &str =
    "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name";

/// `dynamic_resources.ads_config` resolved against its static cluster. The cluster must give
/// exactly one address to dial before any xDS has arrived: a STATIC endpoint, or a host name of
/// a STRICT_DNS or LOGICAL_DNS cluster (resolved at connect time). A control plane also needs
/// to know who is asking, so `node.id` is required here (and only here).
fn ads_target(b: &Bootstrap, errs: &mut Vec<String>) -> Option<AdsTarget> {
    let ads = b.ads.as_ref()?;
    let before = errs.len();
    let node = b.node.clone().unwrap_or_default();
    if node.id.is_empty() {
        errs.push(
            "node.id: required when dynamic_resources.ads_config is set (control planes identify \
             the proxy by it)"
                .into(),
        );
    }
    let Some((i, cluster)) = b
        .clusters
        .iter()
        .enumerate()
        .find(|(_, c)| c.name == ads.cluster)
    else {
        errs.push(format!(
            "{ADS_CLUSTER_FIELD}: no static cluster named {:?}",
            ads.cluster
        ));
        return None;
    };
    let p = format!("static_resources.clusters[{i}]");
    let envoy_type = match cluster.discovery {
        Discovery::Static | Discovery::StrictDns | Discovery::LogicalDns => None,
        Discovery::Eds { .. } => Some("EDS"),
        Discovery::OriginalDst => Some("ORIGINAL_DST"),
    };
    if let Some(t) = envoy_type {
        errs.push(format!(
            "{p}.type: {t}: the ADS cluster {:?} must be STATIC, STRICT_DNS or LOGICAL_DNS \
             (its address is needed before any xDS has arrived)",
            ads.cluster
        ));
        return None;
    }
    if cluster.tls.is_some() {
        errs.push(format!(
            "{p}.transport_socket: TLS to the control plane is not supported yet (the ADS \
             connection is plaintext HTTP/2)"
        ));
    }
    let endpoints: Vec<&EndpointAddress> = cluster
        .load_assignment
        .iter()
        .flat_map(|la| &la.localities)
        .flat_map(|l| &l.endpoints)
        .map(|e| &e.address)
        .collect();
    let server = match endpoints.as_slice() {
        [EndpointAddress::Socket(a)] => format!("http://{a}"),
        [EndpointAddress::Dns { host, port }] => match host.parse::<IpAddr>() {
            Ok(ip) => format!("http://{}", SocketAddr::new(ip, *port)),
            Err(_) => format!("http://{host}:{port}"),
        },
        other => {
            errs.push(format!(
                "{p}.load_assignment: the ADS cluster {:?} needs exactly one endpoint with a \
                 socket_address (Myelin dials one control-plane address), found {}",
                ads.cluster,
                other.len()
            ));
            String::new()
        }
    };
    (errs.len() == before).then(|| AdsTarget {
        server,
        cluster: ads.cluster.clone(),
        api: ads.api,
        connect_timeout: cluster.connect_timeout,
        node,
    })
}

/// The admin listener's address: Myelin's `admin_address`, else Envoy's `admin.address`, else
/// `127.0.0.1:15000`. Both set and different is an error: neither can be said to win.
fn admin_address(
    myelin: Option<SocketAddr>,
    envoy: Option<SocketAddr>,
) -> Result<SocketAddr, String> {
    match (myelin, envoy) {
        (Some(m), Some(e)) if m != e => Err(format!(
            "differs from myelin.admin_address = {m}: both name the admin listener; set one of \
             them (or the same address in both)"
        )),
        (Some(a), _) | (None, Some(a)) => Ok(a),
        (None, None) => Ok(default_admin()),
    }
}

/// A SPIFFE trust domain name: lowercase letters, digits, dots, dashes and underscores
/// (SPIFFE ID specification, section 2.1), at most 255 characters.
fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() {
        return Err("must not be empty".into());
    }
    if td.len() > 255 {
        return Err("must be at most 255 characters".into());
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(format!(
            "{c:?} is not allowed: a SPIFFE trust domain has only lowercase letters, digits, \
             '.', '-' and '_' (e.g. cluster.local)"
        ));
    }
    Ok(())
}

/// A duration as Prometheus and Go write them: one or more NUMBER UNIT pairs, units `ms`,
/// `s`, `m`, `h`, `d` (`500ms`, `30s`, `10m`, `1h30m`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a duration such as 30s, 10m, 1h or 1h30m (units ms, s, m, h, d)";
    let s = text.trim();
    if s.is_empty() {
        return Err(HINT.into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let unit_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || unit_len == 0 {
            return Err(HINT.into());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| HINT.to_string())?;
        let unit = match &rest[digits..digits + unit_len] {
            "ms" => Duration::from_millis(1),
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            "d" => Duration::from_secs(86_400),
            _ => return Err(HINT.into()),
        };
        let part = u32::try_from(n)
            .ok()
            .and_then(|n| unit.checked_mul(n))
            .ok_or("too large")?;
        total = total.checked_add(part).ok_or("too large")?;
        rest = &rest[digits + unit_len..];
    }
    Ok(total)
}

fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (ip, len) = s
        .split_once('/')
        .ok_or("expected ADDRESS/PREFIX, e.g. 169.254.0.0/16")?;
    let ip: Ipv4Addr = ip.parse().map_err(|e| format!("bad address: {e}"))?;
    let len: u8 = len.parse().map_err(|e| format!("bad prefix length: {e}"))?;
    if len > 32 {
        return Err("prefix length must be 0-32".into());
    }
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
myelin:
  node: { name: node-a, address: 10.77.0.1 }
  cgroup_root: myelin-node-a
  excluded_ports: [22]
  excluded_cidrs: ["169.254.0.0/16"]
  workloads:
    - { name: client, namespace: demo, cgroup: pods/client, ip: 10.77.1.2 }
    - { name: server, namespace: demo, service_account: web, cgroup: pods/server, ip: 10.77.1.3, splice: off }
    - { name: curl, namespace: demo, cgroup: pods/curl, ip: 10.77.1.4, splice: nonblocking }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(
            text,
            Path::new("mesh.yaml"),
            Path::new("/sys/fs/cgroup/unified"),
        )
    }

    #[test]
    fn good_config_resolves_paths_and_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.capture, "10.77.0.1:15001".parse().unwrap());
        assert_eq!(
            c.cgroup_root,
            Path::new("/sys/fs/cgroup/unified/myelin-node-a")
        );
        assert_eq!(c.instance, "node-a");
        assert_eq!(
            c.workloads[0].cgroup,
            Path::new("/sys/fs/cgroup/unified/myelin-node-a/pods/client")
        );
        assert_eq!(c.workloads[0].service_account, "default");
        assert_eq!(c.workloads[0].splice, WorkloadSplice::Auto);
        assert_eq!(c.workloads[1].splice, WorkloadSplice::Off);
        assert_eq!(c.workloads[2].splice, WorkloadSplice::Nonblocking);
        assert_eq!(c.excluded_cidrs, vec![("169.254.0.0".parse().unwrap(), 16)]);
        assert_eq!(c.splice, SpliceSetting::Auto);
        assert_eq!(c.admin_address, "127.0.0.1:15000".parse().unwrap());
        assert_eq!(c.metrics_address, "127.0.0.1:15020".parse().unwrap());
        assert_eq!(c.proxy_config().workloads().len(), 3);
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(c.proxy_config().trust_domain, "cluster.local");
        assert_eq!(
            c.metrics,
            MetricsConfig {
                naming: MetricsNaming::Myelin,
                max_series: 10_000,
                idle_expiry: Duration::from_secs(600),
            }
        );
    }

    /// GOOD with `lines` added to Myelin's section.
    fn with_myelin(lines: &str) -> String {
        GOOD.replacen("  workloads:\n", &format!("{lines}  workloads:\n"), 1)
    }

    #[test]
    fn inbound_modes_default_to_permissive_and_strict_needs_mtls() {
        let c = parse(GOOD).unwrap();
        assert!(c
            .workloads
            .iter()
            .all(|w| w.mtls_mode == InboundMode::Permissive));
        // The node's mode, overridden per workload.
        let text = with_myelin(
            "  mtls: { mode: strict }
",
        )
        .replacen("splice: off }", "splice: off, mtls_mode: PERMISSIVE }", 1);
        let c = parse(&text).unwrap();
        let modes: Vec<_> = c.workloads.iter().map(|w| w.mtls_mode).collect();
        assert_eq!(
            modes,
            [
                InboundMode::Strict,
                InboundMode::Permissive,
                InboundMode::Strict
            ]
        );
        // STRICT without mTLS would cut the workload off from other nodes: refused by name.
        let text = GOOD.replacen("splice: off }", "splice: off, mtls_mode: strict }", 1);
        match parse(&text) {
            Err(ConfigError::Invalid { field, .. }) => {
                assert_eq!(field, "myelin.workloads[1].mtls_mode")
            }
            other => panic!("{other:?}"),
        }
        let text = GOOD.replacen("splice: off }", "splice: off, mtls_mode: sometimes }", 1);
        assert!(matches!(parse(&text), Err(ConfigError::Syntax { .. })));
    }

    #[test]
    fn metrics_and_trust_domain() {
        let c = parse(&with_myelin(
            "  trust_domain: prod.example-1.org\n  metrics: { naming: istio, max_series: 50, idle_expiry: 1h30m }\n",
        ))
        .unwrap();
        assert_eq!(c.trust_domain, "prod.example-1.org");
        let pc = c.proxy_config();
        assert_eq!(
            pc.principal(&pc.workloads()[0]),
            "spiffe://prod.example-1.org/ns/demo/sa/default"
        );
        assert_eq!(c.metrics.naming, MetricsNaming::Istio);
        assert_eq!(Naming::from(c.metrics.naming), Naming::Istio);
        assert_eq!(c.metrics.guard().max_series, 50);
        assert_eq!(c.metrics.guard().idle_expiry, Duration::from_secs(5400));
        // Only the fields given change.
        let c = parse(&with_myelin("  metrics: { idle_expiry: 45s }\n")).unwrap();
        assert_eq!(c.metrics.naming, MetricsNaming::Myelin);
        assert_eq!(c.metrics.max_series, 10_000);
        assert_eq!(c.metrics.idle_expiry, Duration::from_secs(45));
        let dump = serde_json::to_value(&c).unwrap();
        assert_eq!(
            dump["metrics"],
            serde_json::json!({ "naming": "myelin", "max_series": 10000, "idle_expiry": "45s" })
        );
        assert_eq!(dump["trust_domain"], "cluster.local");
    }

    #[test]
    fn bad_metrics_and_trust_domain_name_field_and_value() {
        let cases: &[(&str, &[&str])] = &[
            (
                "  metrics: { max_series: 0 }\n",
                &["myelin.metrics.max_series = \"0\": must be at least 1"],
            ),
            (
                "  metrics: { idle_expiry: 10x }\n",
                &["myelin.metrics.idle_expiry = \"10x\": expected a duration such as 30s"],
            ),
            (
                "  metrics: { idle_expiry: 500ms }\n",
                &["myelin.metrics.idle_expiry = \"500ms\": must be at least 1s"],
            ),
            (
                "  metrics: { idle_expiry: \"\" }\n",
                &["myelin.metrics.idle_expiry = \"\": expected a duration"],
            ),
            (
                "  metrics: { naming: prometheus }\n",
                &["myelin.metrics.naming", "prometheus", "myelin", "istio"],
            ),
            (
                "  metrics: { nameing: istio }\n",
                &["myelin.metrics", "unknown field `nameing`"],
            ),
            (
                "  trust_domain: Cluster.Local\n",
                &["myelin.trust_domain = \"Cluster.Local\": 'C' is not allowed"],
            ),
            (
                "  trust_domain: \"\"\n",
                &["myelin.trust_domain = \"\": must not be empty"],
            ),
        ];
        for (lines, wants) in cases {
            let err = parse(&with_myelin(lines)).expect_err(lines).to_string();
            for want in *wants {
                assert!(
                    err.contains(want),
                    "{lines}: {err:?} should contain {want:?}"
                );
            }
        }
    }

    #[test]
    fn durations() {
        let ok: &[(&str, u64)] = &[
            ("1s", 1_000),
            ("500ms", 500),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            (" 90s ", 90_000),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(*ms)),
                "{text}"
            );
        }
        for bad in ["", "10", "m", "1.5h", "10 m", "-1s", "1y", "99999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    /// Each bad input names its field and value.
    #[test]
    fn bad_configs_name_field_and_value() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "10.77.0.1 }",
                "127.0.0.1 }",
                "myelin.node.address = \"127.0.0.1\"",
            ),
            (
                "ip: 10.77.1.3,",
                "ip: 10.77.1.2,",
                "myelin.workloads[1].ip = \"10.77.1.2\"",
            ),
            (
                "169.254.0.0/16",
                "169.254.0.0/40",
                "myelin.excluded_cidrs[0] = \"169.254.0.0/40\"",
            ),
            (
                "169.254.0.0/16",
                "nonsense",
                "myelin.excluded_cidrs[0] = \"nonsense\"",
            ),
            ("[22]", "[0]", "myelin.excluded_ports[0] = \"0\""),
            (
                "cgroup: pods/client",
                "cgroup: /elsewhere",
                "myelin.workloads[0].cgroup = \"/elsewhere\"",
            ),
            (
                "cgroup_root: myelin-node-a",
                "cgroup_root: /tmp/x",
                "myelin.cgroup_root = \"/tmp/x\"",
            ),
            (
                "name: node-a",
                "name: \"node a\"",
                "myelin.instance = \"node a\"",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "case {from} did not apply");
            let err = parse(&text).expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} should contain {want:?}");
        }
    }

    #[test]
    fn syntax_errors_and_unknown_fields_say_where() {
        let err = parse(&GOOD.replace("excluded_ports", "exclude_ports"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `exclude_ports`"), "{err}");
        let err = parse(&GOOD.replace("10.77.1.2", "10.77.1.999"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("myelin.workloads[0].ip"), "{err}");
        let err = parse(&GOOD.replace("splice: off", "splice: sometimes"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("myelin.workloads[1].splice") && err.contains("sometimes"),
            "{err}"
        );
    }

    /// A static cluster named `name` with one endpoint per address (`type` as given).
    fn cluster(name: &str, ty: &str, addrs: &[&str], extra: &str) -> String {
        let eps: Vec<String> = addrs
            .iter()
            .map(|a| {
                format!("{{ endpoint: {{ address: {{ socket_address: {{ address: {a}, port_value: 15010 }} }} }} }}")
            })
            .collect();
        format!(
            "  - name: {name}\n    type: {ty}\n{extra}    load_assignment:\n      cluster_name: {name}\n      endpoints: [ {{ lb_endpoints: [ {} ] }} ]\n",
            eps.join(", ")
        )
    }

    /// GOOD plus `node`, ADS through cluster `cp` (`api` GRPC or DELTA_GRPC), and `clusters`.
    fn with_ads(node: &str, api: &str, clusters: &str) -> String {
        format!(
            "{GOOD}{node}dynamic_resources:\n  ads_config: {{ api_type: {api}, grpc_services: [ {{ envoy_grpc: {{ cluster_name: cp }} }} ] }}\n  cds_config: {{ ads: {{}} }}\nstatic_resources:\n  clusters:\n{clusters}"
        )
    }

    const NODE: &str = "node: { id: sidecar~10.77.0.1~node-a.ns~ns.svc.cluster.local, cluster: mesh, metadata: { ZONE: a } }\n";

    #[test]
    fn envoy_sections_are_read_for_run() {
        let text = format!(
            "{GOOD}static_resources:\n  clusters:\n{}",
            cluster("backend", "STATIC", &["10.77.1.3"], "")
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.bootstrap.clusters.len(), 1);
        assert_eq!(c.bootstrap.clusters[0].name, "backend");
        assert_eq!(c.ads, None);
        // Without ADS, no node is needed.
        assert!(c.bootstrap.node.is_none());
    }

    #[test]
    fn unknown_top_level_keys_are_rejected_by_name_not_ignored() {
        let err = parse(&format!("{GOOD}mylein: {{}}\ntracing: {{ http: {{}} }}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("mylein: not supported"), "{err}");
        assert!(err.contains("tracing: not supported"), "{err}");
        assert!(err.contains("2 problem(s)"), "{err}");
    }

    #[test]
    fn ads_comes_from_the_static_cluster_it_names() {
        let cases: &[(&str, &str, &[&str], &str, AdsApi)] = &[
            (
                "GRPC",
                "STATIC",
                &["10.77.0.9"],
                "http://10.77.0.9:15010",
                AdsApi::Grpc,
            ),
            (
                "DELTA_GRPC",
                "STATIC",
                &["fd00::9"],
                "http://[fd00::9]:15010",
                AdsApi::DeltaGrpc,
            ),
            (
                "GRPC",
                "STRICT_DNS",
                &["istiod.istio-system.svc"],
                "http://istiod.istio-system.svc:15010",
                AdsApi::Grpc,
            ),
            (
                "GRPC",
                "LOGICAL_DNS",
                &["cp.example"],
                "http://cp.example:15010",
                AdsApi::Grpc,
            ),
        ];
        for (api, ty, addrs, server, want_api) in cases {
            let text = with_ads(
                NODE,
                api,
                &cluster("cp", ty, addrs, "    connect_timeout: 2s\n"),
            );
            let c = parse(&text).unwrap_or_else(|e| panic!("{ty} {addrs:?}: {e}"));
            let ads = c.ads.expect("ADS configured");
            assert_eq!(ads.server, *server);
            assert_eq!(ads.api, *want_api);
            assert_eq!(ads.cluster, "cp");
            assert_eq!(ads.connect_timeout, Duration::from_secs(2));
            assert_eq!(
                ads.node.id,
                "sidecar~10.77.0.1~node-a.ns~ns.svc.cluster.local"
            );
            assert_eq!(ads.node.cluster, "mesh");
            assert_eq!(ads.node.metadata, Some(serde_json::json!({ "ZONE": "a" })));
            // The ADS cluster is an ordinary static cluster too.
            assert_eq!(c.bootstrap.clusters[0].name, "cp");
        }
    }

    /// What `run` needs beyond the conversion, each named by its field path.
    #[test]
    fn ads_problems_name_their_field() {
        let cp = cluster("cp", "STATIC", &["10.77.0.9"], "");
        let cases: Vec<(String, &str)> = vec![
            (
                with_ads(NODE, "GRPC", &cluster("other", "STATIC", &["10.77.0.9"], "")),
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: no static cluster named \"cp\"",
            ),
            (
                with_ads(NODE, "GRPC", &cluster("cp", "STATIC", &[], "")),
                "static_resources.clusters[0].load_assignment: the ADS cluster \"cp\" needs exactly one endpoint with a socket_address (Myelin dials one control-plane address), found 0",
            ),
            (
                with_ads(NODE, "GRPC", &cluster("cp", "STATIC", &["10.77.0.9", "10.77.0.10"], "")),
                "static_resources.clusters[0].load_assignment: the ADS cluster \"cp\" needs exactly one endpoint",
            ),
            (
                with_ads(
                    NODE,
                    "GRPC",
                    "  - { name: cp, type: EDS, eds_cluster_config: { eds_config: { ads: {} } } }\n",
                ),
                "static_resources.clusters[0].type: EDS: the ADS cluster \"cp\" must be STATIC, STRICT_DNS or LOGICAL_DNS",
            ),
            (
                with_ads(NODE, "GRPC", &format!("{}{cp}", cluster("a", "STATIC", &["10.77.0.8"], ""))),
                "",
            ),
            (with_ads("", "GRPC", &cp), "node.id: required when dynamic_resources.ads_config is set"),
            (
                with_ads("node: { cluster: mesh }\n", "GRPC", &cp),
                "node.id: required when dynamic_resources.ads_config is set",
            ),
            (
                with_ads(NODE, "GRPC", &format!("{cp}{}", cluster("cp", "STATIC", &["10.77.0.8"], ""))),
                "static_resources.clusters[1].name: \"cp\" is already used by static_resources.clusters[0]",
            ),
            (
                with_ads(NODE, "REST", &cp),
                "dynamic_resources.ads_config.api_type: Some(\"REST\"): only GRPC and DELTA_GRPC are supported",
            ),
        ];
        for (text, want) in &cases {
            match parse(text) {
                Ok(c) if want.is_empty() => {
                    assert_eq!(c.ads.unwrap().server, "http://10.77.0.9:15010")
                }
                Ok(c) => panic!("{want}: accepted: {:?}", c.ads),
                Err(e) => {
                    let e = e.to_string();
                    assert!(
                        !want.is_empty() && e.contains(want),
                        "{e}\nshould contain {want:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn every_envoy_problem_is_listed() {
        let x = cluster("x", "STATIC", &["10.77.0.8"], "");
        let text = with_ads(
            "",
            "GRPC",
            &format!("  - {{ name: cp, type: EDS, eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }} }}\n{x}{x}"),
        );
        let err = parse(&text).unwrap_err();
        let ConfigError::Envoy { problems, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let all = err.to_string();
        for want in [
            "node.id: required",
            "static_resources.clusters[0].type: EDS",
            "static_resources.clusters[2].name: \"x\" is already used by static_resources.clusters[1]",
        ] {
            assert!(all.contains(want), "{want} not in {all}");
        }
    }

    #[test]
    fn identity_source_is_the_ca_or_sds_with_somewhere_for_the_secrets_to_come_from() {
        let mtls = |m: &str, text: String| {
            text.replacen("  workloads:\n", &format!("  mtls: {m}\n  workloads:\n"), 1)
        };
        let c = parse(&mtls("{}", GOOD.to_owned())).unwrap();
        assert_eq!(c.mtls.unwrap().identity_source, IdentitySource::Ca);
        let ads = with_ads(NODE, "GRPC", &cluster("cp", "STATIC", &["10.77.0.9"], ""));
        let c = parse(&mtls("{ identity_source: sds }", ads.clone())).unwrap();
        assert_eq!(c.mtls.unwrap().identity_source, IdentitySource::Sds);
        let secrets = "static_resources:\n  secrets:\n  - name: ROOTCA\n    validation_context: { trusted_ca: { filename: /etc/myelin/root.pem } }\n";
        let c = parse(&format!(
            "{}{secrets}",
            mtls("{ identity_source: sds }", GOOD.to_owned())
        ))
        .unwrap();
        assert_eq!(c.mtls.unwrap().identity_source, IdentitySource::Sds);
        for (text, want) in [
            (
                mtls("{ identity_source: sds }", GOOD.to_owned()),
                "myelin.mtls.identity_source = \"sds\": needs dynamic_resources.ads_config or static_resources.secrets",
            ),
            (
                mtls("{ identity_source: sds, ca_cert: /ca.pem, ca_key: /ca.key }", ads),
                "myelin.mtls.ca_cert = \"/ca.pem\": is for identity_source: ca",
            ),
            (
                mtls("{ identity_source: spiffe }", GOOD.to_owned()),
                "unknown variant `spiffe`, expected `ca` or `sds`",
            ),
        ] {
            let e = parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}\nshould contain {want:?}");
        }
    }

    #[test]
    fn admin_address_comes_from_either_section_but_not_two_different_ones() {
        let envoy_admin = |a: &str| {
            format!("admin:\n  access_log_path: /dev/null\n  address: {{ socket_address: {{ address: {a}, port_value: 9901 }} }}\n")
        };
        let mine = |a: &str| {
            GOOD.replace(
                "  excluded_ports",
                &format!("  admin_address: \"{a}\"\n  excluded_ports"),
            )
        };
        let cases: Vec<(String, Result<&str, &str>)> = vec![
            (GOOD.to_owned(), Ok("127.0.0.1:15000")),
            (mine("127.0.0.1:16000"), Ok("127.0.0.1:16000")),
            (format!("{GOOD}{}", envoy_admin("0.0.0.0")), Ok("0.0.0.0:9901")),
            (format!("{}{}", mine("127.0.0.1:9901"), envoy_admin("127.0.0.1")), Ok("127.0.0.1:9901")),
            (
                format!("{}{}", mine("127.0.0.1:15000"), envoy_admin("0.0.0.0")),
                Err("admin.address = \"0.0.0.0:9901\": differs from myelin.admin_address = 127.0.0.1:15000"),
            ),
        ];
        for (text, want) in cases {
            match (parse(&text), want) {
                (Ok(c), Ok(addr)) => assert_eq!(c.admin_address, addr.parse().unwrap()),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{e}"),
                (got, want) => panic!("{got:?} but wanted {want:?}"),
            }
        }
    }
}
