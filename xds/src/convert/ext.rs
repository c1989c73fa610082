//! Envoy messages that `xds-api` 0.2 does not generate, written out by hand with the
//! tags of the Envoy API protos: the TCP proxy filter, the upstream and downstream TLS
//! contexts (and `TlsParameters`, which `xds-api` has without `compliance_policies`) and
//! the upstream HTTP protocol options.
//!
//! Sub-messages Myelin does not support are kept as raw bytes (`Option<Vec<u8>>`), so
//! that setting them is seen (and rejected) rather than dropped; oneof members are plain
//! optional fields (the same encoding). The serde derives read Envoy-style YAML/JSON
//! (snake_case keys) for the file source; any value of a raw field counts as "set".
//! [`JSON_MESSAGES`] gives the JSON loader (`super::json`) the shape of each message, in
//! place of the descriptors that `xds-api` does not have for these packages.

use prost::Message;
use serde::Deserialize;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::rbac::v3 as rbac;
use xds_api::pb::envoy::extensions::filters::http::ext_proc::v3 as ext_proc_pb;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use xds_api::pb::google::protobuf;
use xds_api::pb::xds::r#type::matcher::v3 as xds_matcher;

pub(crate) fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
    serde::de::IgnoredAny::deserialize(d)?;
    Ok(Some(Vec::new()))
}

fn present_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Vec<u8>>, D::Error> {
    let v = Vec::<serde::de::IgnoredAny>::deserialize(d)?;
    Ok(v.iter().map(|_| Vec::new()).collect())
}

macro_rules! named {
    ($t:ty, $pkg:literal, $name:literal) => {
        impl prost::Name for $t {
            const NAME: &'static str = $name;
            const PACKAGE: &'static str = $pkg;
            fn full_name() -> String {
                format!("{}.{}", $pkg, $name)
            }
            fn type_url() -> String {
                format!("type.googleapis.com/{}.{}", $pkg, $name)
            }
        }
    };
}
pub(crate) use named;

/// `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpProxy {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub stat_prefix: String,
    #[prost(string, optional, tag = "2")]
    #[serde(default)]
    pub cluster: Option<String>,
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub weighted_clusters: Option<TcpWeightedCluster>,
    #[prost(bytes = "vec", optional, tag = "14")]
    #[serde(default, deserialize_with = "present")]
    pub on_demand: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    #[serde(default, deserialize_with = "present")]
    pub metadata_match: Option<Vec<u8>>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub idle_timeout: Option<protobuf::Duration>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub downstream_idle_timeout: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub upstream_idle_timeout: Option<Vec<u8>>,
    /// Ignored (access logs do not change traffic).
    #[prost(bytes = "vec", repeated, tag = "5")]
    #[serde(default, deserialize_with = "present_list")]
    pub access_log: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "7")]
    #[serde(default, deserialize_with = "present")]
    pub max_connect_attempts: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "18")]
    #[serde(default, deserialize_with = "present")]
    pub backoff_options: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "11")]
    #[serde(default, deserialize_with = "present_list")]
    pub hash_policy: Vec<Vec<u8>>,
    #[prost(message, optional, tag = "12")]
    #[serde(default)]
    pub tunneling_config: Option<TcpTunnelingConfig>,
    #[prost(bytes = "vec", optional, tag = "13")]
    #[serde(default, deserialize_with = "present")]
    pub max_downstream_connection_duration: Option<Vec<u8>>,
    /// Ignored (access log option, deprecated).
    #[prost(bytes = "vec", optional, tag = "15")]
    #[serde(default, deserialize_with = "present")]
    pub access_log_flush_interval: Option<Vec<u8>>,
    /// Ignored (access log option, deprecated).
    #[prost(bool, tag = "16")]
    #[serde(default)]
    pub flush_access_log_on_connected: bool,
    /// Ignored (access log options).
    #[prost(bytes = "vec", optional, tag = "17")]
    #[serde(default, deserialize_with = "present")]
    pub access_log_options: Option<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "19")]
    #[serde(default, deserialize_with = "present_list")]
    pub proxy_protocol_tlvs: Vec<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "20")]
    #[serde(default, deserialize_with = "present")]
    pub max_downstream_connection_duration_jitter_percentage: Option<Vec<u8>>,
}
named!(
    TcpProxy,
    "envoy.extensions.filters.network.tcp_proxy.v3",
    "TcpProxy"
);

/// `TcpProxy.TunnelingConfig`: the connection's bytes tunnelled in an HTTP `CONNECT`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpTunnelingConfig {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub hostname: String,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub use_post: bool,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub headers_to_add: Vec<core::HeaderValueOption>,
    /// Ignored (filter state for other network filters).
    #[prost(bool, tag = "4")]
    #[serde(default)]
    pub propagate_response_headers: bool,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub post_path: String,
    /// Ignored (filter state for other network filters).
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub propagate_response_trailers: bool,
}

/// `TcpProxy.WeightedCluster`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpWeightedCluster {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub clusters: Vec<TcpClusterWeight>,
}

/// `TcpProxy.WeightedCluster.ClusterWeight`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpClusterWeight {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
    #[prost(uint32, tag = "2")]
    #[serde(default)]
    pub weight: u32,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub metadata_match: Option<Vec<u8>>,
}

/// `envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsContext {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub common_tls_context: Option<CommonTlsContext>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub sni: String,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub allow_renegotiation: bool,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub max_session_keys: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    #[serde(default, deserialize_with = "present")]
    pub enforce_rsa_key_usage: Option<Vec<u8>>,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub auto_host_sni: bool,
    #[prost(bool, tag = "7")]
    #[serde(default)]
    pub auto_sni_san_validation: bool,
}
named!(
    UpstreamTlsContext,
    "envoy.extensions.transport_sockets.tls.v3",
    "UpstreamTlsContext"
);

/// `envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext`: a listener filter
/// chain's TLS.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamTlsContext {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub common_tls_context: Option<CommonTlsContext>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub require_client_certificate: Option<protobuf::BoolValue>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub require_sni: Option<protobuf::BoolValue>,
    /// Oneof `session_ticket_keys_type` (with the next one and
    /// `disable_stateless_session_resumption`).
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub session_ticket_keys: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    #[serde(default, deserialize_with = "present")]
    pub session_ticket_keys_sds_secret_config: Option<Vec<u8>>,
    #[prost(bool, tag = "7")]
    #[serde(default)]
    pub disable_stateless_session_resumption: bool,
    #[prost(bool, tag = "10")]
    #[serde(default)]
    pub disable_stateful_session_resumption: bool,
    #[prost(bytes = "vec", optional, tag = "6")]
    #[serde(default, deserialize_with = "present")]
    pub session_timeout: Option<Vec<u8>>,
    /// `LENIENT_STAPLING` (0), `STRICT_STAPLING` (1) or `MUST_STAPLE` (2).
    #[prost(int32, tag = "8")]
    #[serde(default, deserialize_with = "ocsp_staple_policy")]
    pub ocsp_staple_policy: i32,
    #[prost(message, optional, tag = "9")]
    #[serde(default)]
    pub full_scan_certs_on_sni_mismatch: Option<protobuf::BoolValue>,
    #[prost(bool, tag = "11")]
    #[serde(default)]
    pub prefer_client_ciphers: bool,
}
named!(
    DownstreamTlsContext,
    "envoy.extensions.transport_sockets.tls.v3",
    "DownstreamTlsContext"
);

/// `DownstreamTlsContext.OcspStaplePolicy` by value.
pub(crate) const OCSP_STAPLE_POLICIES: &[&str] =
    &["LENIENT_STAPLING", "STRICT_STAPLING", "MUST_STAPLE"];

fn ocsp_staple_policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, OCSP_STAPLE_POLICIES)
}

/// `envoy.extensions.transport_sockets.tls.v3.CommonTlsContext`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonTlsContext {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub tls_params: Option<TlsParameters>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub tls_certificates: Vec<tls::TlsCertificate>,
    #[prost(message, repeated, tag = "6")]
    #[serde(default)]
    pub tls_certificate_sds_secret_configs: Vec<tls::SdsSecretConfig>,
    #[prost(bytes = "vec", optional, tag = "14")]
    #[serde(default, deserialize_with = "present")]
    pub tls_certificate_provider_instance: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    #[serde(default, deserialize_with = "present")]
    pub tls_certificate_certificate_provider: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "11")]
    #[serde(default, deserialize_with = "present")]
    pub tls_certificate_certificate_provider_instance: Option<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub validation_context: Option<tls::CertificateValidationContext>,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub validation_context_sds_secret_config: Option<tls::SdsSecretConfig>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub combined_validation_context: Option<CombinedValidationContext>,
    #[prost(bytes = "vec", optional, tag = "10")]
    #[serde(default, deserialize_with = "present")]
    pub validation_context_certificate_provider: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "12")]
    #[serde(default, deserialize_with = "present")]
    pub validation_context_certificate_provider_instance: Option<Vec<u8>>,
    #[prost(string, repeated, tag = "4")]
    #[serde(default)]
    pub alpn_protocols: Vec<String>,
    #[prost(bytes = "vec", optional, tag = "13")]
    #[serde(default, deserialize_with = "present")]
    pub custom_handshaker: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "15")]
    #[serde(default, deserialize_with = "present")]
    pub key_log: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "16")]
    #[serde(default, deserialize_with = "present")]
    pub custom_tls_certificate_selector: Option<Vec<u8>>,
}

/// `envoy.extensions.transport_sockets.tls.v3.TlsParameters`. `xds-api` 0.2 has this
/// message but not its `compliance_policies` (tag 6, Envoy 1.32), which prost would drop
/// unseen. Its JSON shape comes from `xds-api`'s descriptor (so it is not in
/// [`JSON_MESSAGES`], which is for messages without one); `compliance_policies`, which the
/// descriptor does not name, is read by its JSON name too through a serde alias.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsParameters {
    /// A `TlsProtocol`: `TLS_AUTO` (0), `TLSv1_0` ... `TLSv1_3` (4).
    #[prost(int32, tag = "1")]
    #[serde(default, deserialize_with = "tls_protocol")]
    pub tls_minimum_protocol_version: i32,
    #[prost(int32, tag = "2")]
    #[serde(default, deserialize_with = "tls_protocol")]
    pub tls_maximum_protocol_version: i32,
    #[prost(string, repeated, tag = "3")]
    #[serde(default)]
    pub cipher_suites: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    #[serde(default)]
    pub ecdh_curves: Vec<String>,
    #[prost(string, repeated, tag = "5")]
    #[serde(default)]
    pub signature_algorithms: Vec<String>,
    /// `CompliancePolicy` values (`FIPS_202205` is 0: any element counts as set).
    #[prost(int32, repeated, tag = "6")]
    #[serde(
        default,
        alias = "compliancePolicies",
        deserialize_with = "compliance_policies"
    )]
    pub compliance_policies: Vec<i32>,
}
named!(
    TlsParameters,
    "envoy.extensions.transport_sockets.tls.v3",
    "TlsParameters"
);

/// `TlsParameters.TlsProtocol` by value.
pub(crate) const TLS_PROTOCOLS: &[&str] = &["TLS_AUTO", "TLSv1_0", "TLSv1_1", "TLSv1_2", "TLSv1_3"];

fn tls_protocol<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, TLS_PROTOCOLS)
}

fn compliance_policies<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    struct Policy(i32);
    impl<'de> Deserialize<'de> for Policy {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            named_enum(d, &["FIPS_202205"]).map(Policy)
        }
    }
    let v = Vec::<Policy>::deserialize(d)?;
    Ok(v.into_iter().map(|p| p.0).collect())
}

/// `CommonTlsContext.CombinedCertificateValidationContext`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CombinedValidationContext {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub default_validation_context: Option<tls::CertificateValidationContext>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub validation_context_sds_secret_config: Option<tls::SdsSecretConfig>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub validation_context_certificate_provider: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub validation_context_certificate_provider_instance: Option<Vec<u8>>,
}

/// `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttpProtocolOptions {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub common_http_protocol_options: Option<core::HttpProtocolOptions>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub upstream_http_protocol_options: Option<core::UpstreamHttpProtocolOptions>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub explicit_http_config: Option<ProtocolConfig>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub use_downstream_protocol_config: Option<ProtocolConfig>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub auto_config: Option<AutoHttpConfig>,
    #[prost(bytes = "vec", repeated, tag = "6")]
    #[serde(default, deserialize_with = "present_list")]
    pub http_filters: Vec<Vec<u8>>,
}
named!(
    UpstreamHttpProtocolOptions,
    "envoy.extensions.upstreams.http.v3",
    "HttpProtocolOptions"
);

/// `HttpProtocolOptions.AutoHttpConfig`: HTTP/2 or HTTP/1.1 as ALPN decides.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoHttpConfig {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub http_protocol_options: Option<core::Http1ProtocolOptions>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub http2_protocol_options: Option<core::Http2ProtocolOptions>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub http3_protocol_options: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub alternate_protocols_cache_options: Option<Vec<u8>>,
}

/// `ExplicitHttpConfig` / `UseDownstreamHttpConfig` (same tags).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProtocolConfig {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub http_protocol_options: Option<core::Http1ProtocolOptions>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub http2_protocol_options: Option<core::Http2ProtocolOptions>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub http3_protocol_options: Option<Vec<u8>>,
}

/// `envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig`, the only request ID extension
/// (Envoy's default). Both fields are about tracing: read and kept, with no effect until
/// Myelin traces.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UuidRequestIdConfig {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub pack_trace_reason: Option<protobuf::BoolValue>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub use_request_id_for_trace_sampling: Option<protobuf::BoolValue>,
}
named!(
    UuidRequestIdConfig,
    "envoy.extensions.request_id.uuid.v3",
    "UuidRequestIdConfig"
);

/// `envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig`: the
/// client's address from a header (Envoy Gateway's ClientTrafficPolicy `clientIPDetection`).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomHeaderConfig {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub header_name: String,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub allow_extension_to_set_address_as_trusted: bool,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub reject_with_status: Option<xds_api::pb::envoy::r#type::v3::HttpStatus>,
}
named!(
    CustomHeaderConfig,
    "envoy.extensions.http.original_ip_detection.custom_header.v3",
    "CustomHeaderConfig"
);

/// An empty message: the `header_*` members of the fault filter's oneofs ("the value comes
/// from a request header").
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromHeader {}

/// `envoy.extensions.filters.http.fault.v3.HTTPFault`: the fault filter's settings, in the
/// connection manager or per route.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub abort: Option<FaultAbort>,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub upstream_cluster: String,
    #[prost(message, repeated, tag = "4")]
    #[serde(default)]
    pub headers: Vec<xds_api::pb::envoy::config::route::v3::HeaderMatcher>,
    #[prost(string, repeated, tag = "5")]
    #[serde(default)]
    pub downstream_nodes: Vec<String>,
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub max_active_faults: Option<protobuf::UInt32Value>,
    #[prost(bytes = "vec", optional, tag = "7")]
    #[serde(default, deserialize_with = "present")]
    pub response_rate_limit: Option<Vec<u8>>,
    /// Runtime keys (8-14): Myelin has no runtime layer, so they name nothing to read and
    /// the configured values apply, as in an Envoy whose runtime lacks the keys.
    #[prost(string, tag = "8")]
    #[serde(default)]
    pub delay_percent_runtime: String,
    #[prost(string, tag = "9")]
    #[serde(default)]
    pub abort_percent_runtime: String,
    #[prost(string, tag = "10")]
    #[serde(default)]
    pub delay_duration_runtime: String,
    #[prost(string, tag = "11")]
    #[serde(default)]
    pub abort_http_status_runtime: String,
    #[prost(string, tag = "12")]
    #[serde(default)]
    pub max_active_faults_runtime: String,
    #[prost(string, tag = "13")]
    #[serde(default)]
    pub response_rate_limit_percent_runtime: String,
    #[prost(string, tag = "14")]
    #[serde(default)]
    pub abort_grpc_status_runtime: String,
    /// Ignored: about Envoy's per-downstream-cluster stats.
    #[prost(bool, tag = "15")]
    #[serde(default)]
    pub disable_downstream_cluster_stats: bool,
    #[prost(bytes = "vec", optional, tag = "16")]
    #[serde(default, deserialize_with = "present")]
    pub filter_metadata: Option<Vec<u8>>,
}
named!(
    HttpFault,
    "envoy.extensions.filters.http.fault.v3",
    "HTTPFault"
);

/// `envoy.extensions.filters.common.fault.v3.FaultDelay` (its oneof as optional fields).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultDelay {
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub fixed_delay: Option<protobuf::Duration>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub header_delay: Option<FromHeader>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub percentage: Option<xds_api::pb::envoy::r#type::v3::FractionalPercent>,
}

/// `envoy.extensions.filters.http.fault.v3.FaultAbort` (its oneof as optional fields).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAbort {
    #[prost(uint32, optional, tag = "2")]
    #[serde(default)]
    pub http_status: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    #[serde(default)]
    pub grpc_status: Option<u32>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub header_abort: Option<FromHeader>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub percentage: Option<xds_api::pb::envoy::r#type::v3::FractionalPercent>,
}

/// `envoy.extensions.filters.http.cors.v3.Cors`: the CORS filter in a connection manager
/// (no settings of its own).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {}
named!(Cors, "envoy.extensions.filters.http.cors.v3", "Cors");

/// `envoy.extensions.filters.http.cors.v3.CorsPolicy`: the CORS filter's per-route
/// settings.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsPolicy {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub allow_origin_string_match: Vec<xds_api::pb::envoy::r#type::matcher::v3::StringMatcher>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub allow_methods: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub allow_headers: String,
    #[prost(string, tag = "4")]
    #[serde(default)]
    pub expose_headers: String,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub max_age: String,
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub allow_credentials: Option<protobuf::BoolValue>,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub filter_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub shadow_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "9")]
    #[serde(default)]
    pub allow_private_network_access: Option<protobuf::BoolValue>,
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub forward_not_matching_preflights: Option<protobuf::BoolValue>,
}
named!(
    CorsPolicy,
    "envoy.extensions.filters.http.cors.v3",
    "CorsPolicy"
);

/// An enum field of Envoy YAML/JSON: its name (one of `names`, in value order from 0) or
/// its number.
fn named_enum<'de, D: serde::Deserializer<'de>>(d: D, names: &[&str]) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum E {
        Number(i32),
        Name(String),
    }
    match E::deserialize(d)? {
        E::Number(n) => Ok(n),
        E::Name(s) => names
            .iter()
            .position(|n| *n == s)
            .map(|i| i as i32)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown value {s:?}"))),
    }
}

fn x_ratelimit_headers_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["OFF", "DRAFT_VERSION_03"])
}

fn vh_rate_limits_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["OVERRIDE", "INCLUDE", "IGNORE"])
}

/// `envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit`: the local rate limit
/// filter, in a connection manager and per route.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimit {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub stat_prefix: String,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub status: Option<xds_api::pb::envoy::r#type::v3::HttpStatus>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub token_bucket: Option<xds_api::pb::envoy::r#type::v3::TokenBucket>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub filter_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub filter_enforced: Option<core::RuntimeFractionalPercent>,
    #[prost(message, repeated, tag = "6")]
    #[serde(default)]
    pub response_headers_to_add: Vec<core::HeaderValueOption>,
    #[prost(message, repeated, tag = "8")]
    #[serde(default)]
    pub descriptors:
        Vec<xds_api::pb::envoy::extensions::common::ratelimit::v3::LocalRateLimitDescriptor>,
    /// Only descriptors use stages.
    #[prost(uint32, tag = "9")]
    #[serde(default)]
    pub stage: u32,
    #[prost(message, repeated, tag = "10")]
    #[serde(default)]
    pub request_headers_to_add_when_not_enforced: Vec<core::HeaderValueOption>,
    #[prost(bool, tag = "11")]
    #[serde(default)]
    pub local_rate_limit_per_downstream_connection: bool,
    #[prost(int32, tag = "12")]
    #[serde(default, deserialize_with = "x_ratelimit_headers_version")]
    pub enable_x_ratelimit_headers: i32,
    /// Only descriptors read the virtual host's rate limits.
    #[prost(int32, tag = "13")]
    #[serde(default, deserialize_with = "vh_rate_limits_option")]
    pub vh_rate_limits: i32,
    /// Only descriptors make the default bucket optional.
    #[prost(message, optional, tag = "14")]
    #[serde(default)]
    pub always_consume_default_token_bucket: Option<protobuf::BoolValue>,
    #[prost(bool, tag = "15")]
    #[serde(default)]
    pub rate_limited_as_resource_exhausted: bool,
    #[prost(bytes = "vec", optional, tag = "16")]
    #[serde(default, deserialize_with = "present")]
    pub local_cluster_rate_limit: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "17")]
    #[serde(default)]
    pub rate_limits: Vec<RouteRateLimit>,
}
named!(
    LocalRateLimit,
    "envoy.extensions.filters.http.local_ratelimit.v3",
    "LocalRateLimit"
);

fn x_ratelimit_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["UNSPECIFIED", "OFF", "DRAFT_VERSION_03"])
}

use xds_api::pb::envoy::config::route::v3 as route_pb;

/// `envoy.config.route.v3.RateLimit` as Envoy has it now, past `xds-api` 0.2's schema
/// (`hits_addend`, `apply_on_stream_done`, `x_ratelimit_option`, the
/// `remote_address_match` and `query_parameters` actions, `default_value`s): the
/// `rate_limits` of the rate limit filters' configs. Route and virtual host `rate_limits`
/// are read with `xds-api`'s type (whose fields are a subset of these) and transcoded to
/// this one, so one converter reads both.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRateLimit {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub stage: Option<protobuf::UInt32Value>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub disable_key: String,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub actions: Vec<RateLimitAction>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub limit: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub hits_addend: Option<HitsAddend>,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub apply_on_stream_done: bool,
    #[prost(int32, tag = "7")]
    #[serde(default, deserialize_with = "x_ratelimit_option")]
    pub x_ratelimit_option: i32,
}

/// `envoy.config.route.v3.RateLimit.HitsAddend`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HitsAddend {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub number: Option<protobuf::UInt64Value>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub format: String,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub is_negative_hits: bool,
}

/// `envoy.config.route.v3.RateLimit.Action`: its oneof as plain optional fields.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitAction {
    #[prost(bytes = "vec", optional, tag = "1")]
    #[serde(default, deserialize_with = "present")]
    pub source_cluster: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    #[serde(default, deserialize_with = "present")]
    pub destination_cluster: Option<Vec<u8>>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub request_headers: Option<route_pb::rate_limit::action::RequestHeaders>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub remote_address: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub generic_key: Option<GenericKey>,
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub header_value_match: Option<HeaderValueMatch>,
    #[prost(bytes = "vec", optional, tag = "7")]
    #[serde(default, deserialize_with = "present")]
    pub dynamic_metadata: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    #[serde(default, deserialize_with = "present")]
    pub metadata: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    #[serde(default, deserialize_with = "present")]
    pub extension: Option<Vec<u8>>,
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub masked_remote_address: Option<route_pb::rate_limit::action::MaskedRemoteAddress>,
    #[prost(bytes = "vec", optional, tag = "11")]
    #[serde(default, deserialize_with = "present")]
    pub query_parameter_value_match: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "12")]
    #[serde(default, deserialize_with = "present")]
    pub query_parameters: Option<Vec<u8>>,
    #[prost(message, optional, tag = "13")]
    #[serde(default)]
    pub remote_address_match: Option<RemoteAddressMatch>,
}

/// `envoy.config.route.v3.RateLimit.Action.GenericKey`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericKey {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub descriptor_value: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub descriptor_key: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub default_value: String,
}

/// `envoy.config.route.v3.RateLimit.Action.HeaderValueMatch`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderValueMatch {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub descriptor_value: String,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub expect_match: Option<protobuf::BoolValue>,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub headers: Vec<route_pb::HeaderMatcher>,
    #[prost(string, tag = "4")]
    #[serde(default)]
    pub descriptor_key: String,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub default_value: String,
}

/// `envoy.config.route.v3.RateLimit.Action.RemoteAddressMatch`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteAddressMatch {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub descriptor_value: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub descriptor_key: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub default_value: String,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub address_matcher: Option<AddressMatcher>,
}

/// `envoy.type.matcher.v3.AddressMatcher` (its `xds.core.v3.CidrRange`s have the fields and
/// tags of `config.core.v3.CidrRange`).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressMatcher {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub ranges: Vec<core::CidrRange>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub invert_match: bool,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`: the JWT filter.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthentication {
    #[prost(map = "string, message", tag = "1")]
    #[serde(default)]
    pub providers: std::collections::HashMap<String, JwtProvider>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub rules: Vec<JwtRequirementRule>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub filter_state_rules: Option<Vec<u8>>,
    #[prost(bool, tag = "4")]
    #[serde(default)]
    pub bypass_cors_preflight: bool,
    #[prost(map = "string, message", tag = "5")]
    #[serde(default)]
    pub requirement_map: std::collections::HashMap<String, JwtRequirement>,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub strip_failure_response: bool,
    #[prost(string, tag = "7")]
    #[serde(default)]
    pub stat_prefix: String,
}
named!(
    JwtAuthentication,
    "envoy.extensions.filters.http.jwt_authn.v3",
    "JwtAuthentication"
);

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtProvider`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub issuer: String,
    #[prost(string, repeated, tag = "2")]
    #[serde(default)]
    pub audiences: Vec<String>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub remote_jwks: Option<RemoteJwks>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub local_jwks: Option<core::DataSource>,
    #[prost(bool, tag = "5")]
    #[serde(default)]
    pub forward: bool,
    #[prost(message, repeated, tag = "6")]
    #[serde(default)]
    pub from_headers: Vec<JwtHeader>,
    #[prost(string, repeated, tag = "7")]
    #[serde(default)]
    pub from_params: Vec<String>,
    #[prost(string, tag = "8")]
    #[serde(default)]
    pub forward_payload_header: String,
    #[prost(string, tag = "9")]
    #[serde(default)]
    pub payload_in_metadata: String,
    #[prost(uint32, tag = "10")]
    #[serde(default)]
    pub clock_skew_seconds: u32,
    #[prost(bool, tag = "11")]
    #[serde(default)]
    pub pad_forward_payload_header: bool,
    #[prost(bytes = "vec", optional, tag = "12")]
    #[serde(default, deserialize_with = "present")]
    pub jwt_cache_config: Option<Vec<u8>>,
    #[prost(string, repeated, tag = "13")]
    #[serde(default)]
    pub from_cookies: Vec<String>,
    #[prost(string, tag = "14")]
    #[serde(default)]
    pub header_in_metadata: String,
    #[prost(message, repeated, tag = "15")]
    #[serde(default)]
    pub claim_to_headers: Vec<JwtClaimToHeader>,
    #[prost(string, tag = "16")]
    #[serde(default)]
    pub failed_status_in_metadata: String,
    #[prost(bool, tag = "17")]
    #[serde(default)]
    pub clear_route_cache: bool,
    #[prost(bytes = "vec", optional, tag = "18")]
    #[serde(default, deserialize_with = "present")]
    pub normalize_payload_in_metadata: Option<Vec<u8>>,
    #[prost(message, optional, tag = "19")]
    #[serde(default)]
    pub subjects: Option<xds_api::pb::envoy::r#type::matcher::v3::StringMatcher>,
    #[prost(bool, tag = "20")]
    #[serde(default)]
    pub require_expiration: bool,
    #[prost(message, optional, tag = "21")]
    #[serde(default)]
    pub max_lifetime: Option<protobuf::Duration>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwks {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub http_uri: Option<core::HttpUri>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub cache_duration: Option<protobuf::Duration>,
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub async_fetch: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub retry_policy: Option<Vec<u8>>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtHeader`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtHeader {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub value_prefix: String,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtClaimToHeader {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub header_name: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub claim_name: String,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement`: its oneof as plain
/// optional fields.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirement {
    #[prost(string, optional, tag = "1")]
    #[serde(default)]
    pub provider_name: Option<String>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub provider_and_audiences: Option<ProviderWithAudiences>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub requires_any: Option<JwtRequirementList>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub requires_all: Option<JwtRequirementList>,
    #[prost(bytes = "vec", optional, tag = "5")]
    #[serde(default, deserialize_with = "present")]
    pub allow_missing_or_failed: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "6")]
    #[serde(default, deserialize_with = "present")]
    pub allow_missing: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "7")]
    #[serde(default, deserialize_with = "present")]
    pub extract_only_without_validation: Option<Vec<u8>>,
}

/// `JwtRequirementOrList` and `JwtRequirementAndList` (the same shape).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirementList {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub requirements: Vec<JwtRequirement>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderWithAudiences {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub provider_name: String,
    #[prost(string, repeated, tag = "2")]
    #[serde(default)]
    pub audiences: Vec<String>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.RequirementRule`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtRequirementRule {
    #[prost(message, optional, tag = "1")]
    #[serde(default, rename = "match")]
    pub r#match: Option<route_pb::RouteMatch>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub requires: Option<JwtRequirement>,
    #[prost(string, optional, tag = "3")]
    #[serde(default)]
    pub requirement_name: Option<String>,
}

/// `envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtPerRoute {
    #[prost(bool, optional, tag = "1")]
    #[serde(default)]
    pub disabled: Option<bool>,
    #[prost(string, optional, tag = "2")]
    #[serde(default)]
    pub requirement_name: Option<String>,
}
named!(
    JwtPerRoute,
    "envoy.extensions.filters.http.jwt_authn.v3",
    "PerRouteConfig"
);

/// `envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuth {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub credentials: Vec<ApiKeyCredential>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub key_sources: Vec<ApiKeySource>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub forwarding: Option<ApiKeyForwarding>,
}
named!(
    ApiKeyAuth,
    "envoy.extensions.filters.http.api_key_auth.v3",
    "ApiKeyAuth"
);

/// `envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyAuthPerRoute {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub credentials: Vec<ApiKeyCredential>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub key_sources: Vec<ApiKeySource>,
    #[prost(string, repeated, tag = "3")]
    #[serde(default)]
    pub allowed_clients: Vec<String>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub forwarding: Option<ApiKeyForwarding>,
}
named!(
    ApiKeyAuthPerRoute,
    "envoy.extensions.filters.http.api_key_auth.v3",
    "ApiKeyAuthPerRoute"
);

/// `envoy.extensions.filters.http.api_key_auth.v3.Credential`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyCredential {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub key: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub client: String,
}

/// `envoy.extensions.filters.http.api_key_auth.v3.KeySource`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySource {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub header: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub query: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub cookie: String,
}

/// `envoy.extensions.filters.http.api_key_auth.v3.Forwarding`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyForwarding {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub header: String,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub hide_credentials: bool,
}

fn override_options<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(
        d,
        &[
            "DEFAULT",
            "OVERRIDE_POLICY",
            "INCLUDE_POLICY",
            "IGNORE_POLICY",
        ],
    )
}

/// `envoy.extensions.filters.http.compressor.v3.Compressor`: response compression. Tags
/// from a current `data-plane-api` build (`envoy-data-plane` 2.2.0); `xds-api` 0.2 has
/// neither the filter nor the compression libraries.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Compressor {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub content_length: Option<protobuf::UInt32Value>,
    #[prost(string, repeated, tag = "2")]
    #[serde(default)]
    pub content_type: Vec<String>,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub disable_on_etag_header: bool,
    #[prost(bool, tag = "4")]
    #[serde(default)]
    pub remove_accept_encoding_header: bool,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub runtime_enabled: Option<core::RuntimeFeatureFlag>,
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub compressor_library: Option<core::TypedExtensionConfig>,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub request_direction_config: Option<CompressorRequestDirection>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub response_direction_config: Option<CompressorResponseDirection>,
    #[prost(bool, tag = "9")]
    #[serde(default)]
    pub choose_first: bool,
}
named!(
    Compressor,
    "envoy.extensions.filters.http.compressor.v3",
    "Compressor"
);

/// `Compressor.CommonDirectionConfig`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorCommonDirection {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub enabled: Option<core::RuntimeFeatureFlag>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub min_content_length: Option<protobuf::UInt32Value>,
    #[prost(string, repeated, tag = "3")]
    #[serde(default)]
    pub content_type: Vec<String>,
}

/// `Compressor.RequestDirectionConfig`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorRequestDirection {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub common_config: Option<CompressorCommonDirection>,
}

/// `Compressor.ResponseDirectionConfig`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorResponseDirection {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub common_config: Option<CompressorCommonDirection>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub disable_on_etag_header: bool,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub remove_accept_encoding_header: bool,
    #[prost(uint32, repeated, tag = "4")]
    #[serde(default)]
    pub uncompressible_response_codes: Vec<u32>,
    #[prost(bool, tag = "5")]
    #[serde(default)]
    pub status_header_enabled: bool,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub weaken_etag_on_compress: bool,
}

/// `envoy.extensions.filters.http.compressor.v3.CompressorPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorPerRoute {
    #[prost(bool, optional, tag = "1")]
    #[serde(default)]
    pub disabled: Option<bool>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub overrides: Option<CompressorOverrides>,
}
named!(
    CompressorPerRoute,
    "envoy.extensions.filters.http.compressor.v3",
    "CompressorPerRoute"
);

/// `envoy.extensions.filters.http.compressor.v3.CompressorOverrides`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressorOverrides {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub response_direction_config: Option<ResponseDirectionOverrides>,
    #[prost(bytes = "vec", optional, tag = "2")]
    #[serde(default, deserialize_with = "present")]
    pub compressor_library: Option<Vec<u8>>,
}

/// `envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseDirectionOverrides {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub remove_accept_encoding_header: Option<protobuf::BoolValue>,
}

/// `envoy.extensions.compression.gzip.compressor.v3.Gzip`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gzip {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub memory_level: Option<protobuf::UInt32Value>,
    #[prost(int32, tag = "2")]
    #[serde(default, deserialize_with = "gzip_level")]
    pub compression_level: i32,
    #[prost(int32, tag = "3")]
    #[serde(default, deserialize_with = "gzip_strategy")]
    pub compression_strategy: i32,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub window_bits: Option<protobuf::UInt32Value>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub chunk_size: Option<protobuf::UInt32Value>,
}
named!(
    Gzip,
    "envoy.extensions.compression.gzip.compressor.v3",
    "Gzip"
);

fn gzip_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum E {
        Number(i32),
        Name(String),
    }
    match E::deserialize(d)? {
        E::Number(n) => Ok(n),
        E::Name(s) => match s.as_str() {
            "DEFAULT_COMPRESSION" => Ok(0),
            "BEST_SPEED" => Ok(1),
            "BEST_COMPRESSION" => Ok(9),
            _ => s
                .strip_prefix("COMPRESSION_LEVEL_")
                .and_then(|n| n.parse::<i32>().ok())
                .filter(|n| (1..=9).contains(n))
                .ok_or_else(|| serde::de::Error::custom(format!("unknown value {s:?}"))),
        },
    }
}

fn gzip_strategy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(
        d,
        &[
            "DEFAULT_STRATEGY",
            "FILTERED",
            "HUFFMAN_ONLY",
            "RLE",
            "FIXED",
        ],
    )
}

/// `envoy.extensions.compression.brotli.compressor.v3.Brotli`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Brotli {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub quality: Option<protobuf::UInt32Value>,
    #[prost(int32, tag = "2")]
    #[serde(default, deserialize_with = "brotli_mode")]
    pub encoder_mode: i32,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub window_bits: Option<protobuf::UInt32Value>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub input_block_bits: Option<protobuf::UInt32Value>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub chunk_size: Option<protobuf::UInt32Value>,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub disable_literal_context_modeling: bool,
}
named!(
    Brotli,
    "envoy.extensions.compression.brotli.compressor.v3",
    "Brotli"
);

fn brotli_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["DEFAULT", "GENERIC", "TEXT", "FONT"])
}

/// `envoy.extensions.compression.zstd.compressor.v3.Zstd`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Zstd {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub compression_level: Option<protobuf::UInt32Value>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub enable_checksum: bool,
    #[prost(int32, tag = "3")]
    #[serde(default, deserialize_with = "zstd_strategy")]
    pub strategy: i32,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub dictionary: Option<Vec<u8>>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub chunk_size: Option<protobuf::UInt32Value>,
}
named!(
    Zstd,
    "envoy.extensions.compression.zstd.compressor.v3",
    "Zstd"
);

fn zstd_strategy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(
        d,
        &[
            "DEFAULT", "FAST", "DFAST", "GREEDY", "LAZY", "LAZY2", "BTLAZY2", "BTOPT", "BTULTRA",
            "BTULTRA2",
        ],
    )
}

/// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthz`: external authorization. Tags
/// from a current `data-plane-api` build (`envoy-data-plane` 2.2.0); `xds-api` 0.2 has the
/// service's messages but not the filter's.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub grpc_service: Option<core::GrpcService>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub http_service: Option<ExtAuthzHttpService>,
    #[prost(int32, tag = "12")]
    #[serde(default, deserialize_with = "api_version")]
    pub transport_api_version: i32,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub failure_mode_allow: bool,
    #[prost(bool, tag = "19")]
    #[serde(default)]
    pub failure_mode_allow_header_add: bool,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub with_request_body: Option<ExtAuthzBufferSettings>,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub clear_route_cache: bool,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub status_on_error: Option<xds_api::pb::envoy::r#type::v3::HttpStatus>,
    #[prost(bool, tag = "24")]
    #[serde(default)]
    pub validate_mutations: bool,
    #[prost(string, repeated, tag = "8")]
    #[serde(default)]
    pub metadata_context_namespaces: Vec<String>,
    #[prost(string, repeated, tag = "16")]
    #[serde(default)]
    pub typed_metadata_context_namespaces: Vec<String>,
    #[prost(string, repeated, tag = "21")]
    #[serde(default)]
    pub route_metadata_context_namespaces: Vec<String>,
    #[prost(string, repeated, tag = "22")]
    #[serde(default)]
    pub route_typed_metadata_context_namespaces: Vec<String>,
    #[prost(message, optional, tag = "9")]
    #[serde(default)]
    pub filter_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "14")]
    #[serde(default)]
    pub filter_enabled_metadata: Option<xds_api::pb::envoy::r#type::matcher::v3::MetadataMatcher>,
    #[prost(message, optional, tag = "11")]
    #[serde(default)]
    pub deny_at_disable: Option<core::RuntimeFeatureFlag>,
    #[prost(bool, tag = "10")]
    #[serde(default)]
    pub include_peer_certificate: bool,
    #[prost(string, tag = "13")]
    #[serde(default)]
    pub stat_prefix: String,
    #[prost(string, tag = "15")]
    #[serde(default)]
    pub bootstrap_metadata_labels_key: String,
    #[prost(message, optional, tag = "17")]
    #[serde(default)]
    pub allowed_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "25")]
    #[serde(default)]
    pub disallowed_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(bool, tag = "18")]
    #[serde(default)]
    pub include_tls_session: bool,
    #[prost(message, optional, tag = "20")]
    #[serde(default)]
    pub charge_cluster_response_stats: Option<protobuf::BoolValue>,
    #[prost(bool, tag = "23")]
    #[serde(default)]
    pub encode_raw_headers: bool,
    #[prost(message, optional, tag = "26")]
    #[serde(default)]
    pub decoder_header_mutation_rules:
        Option<xds_api::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules>,
    #[prost(message, optional, tag = "27")]
    #[serde(default)]
    pub enable_dynamic_metadata_ingestion: Option<protobuf::BoolValue>,
    #[prost(bytes = "vec", optional, tag = "28")]
    #[serde(default, deserialize_with = "present")]
    pub filter_metadata: Option<Vec<u8>>,
    #[prost(bool, tag = "29")]
    #[serde(default)]
    pub emit_filter_state_stats: bool,
    #[prost(uint32, tag = "30")]
    #[serde(default)]
    pub max_denied_response_body_bytes: u32,
    #[prost(bool, tag = "31")]
    #[serde(default)]
    pub enforce_response_header_limits: bool,
    #[prost(bool, tag = "32")]
    #[serde(default)]
    pub shadow_mode: bool,
}
named!(
    ExtAuthz,
    "envoy.extensions.filters.http.ext_authz.v3",
    "ExtAuthz"
);

fn api_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["AUTO", "V2", "V3"])
}

/// `envoy.extensions.filters.http.ext_authz.v3.HttpService`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzHttpService {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub server_uri: Option<core::HttpUri>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub path_prefix: String,
    #[prost(string, tag = "10")]
    #[serde(default)]
    pub path_override: String,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub authorization_request: Option<AuthorizationRequest>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub authorization_response: Option<AuthorizationResponse>,
    #[prost(bytes = "vec", optional, tag = "9")]
    #[serde(default, deserialize_with = "present")]
    pub retry_policy: Option<Vec<u8>>,
}

/// `envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationRequest {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub allowed_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, repeated, tag = "2")]
    #[serde(default)]
    pub headers_to_add: Vec<core::HeaderValue>,
}

/// `envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationResponse {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub allowed_upstream_headers:
        Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub allowed_upstream_headers_to_append:
        Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub allowed_client_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub allowed_client_headers_on_success:
        Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub dynamic_metadata_from_headers:
        Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
}

/// `envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`: the PROXY
/// protocol listener filter. Tags from a current `data-plane-api` build (`envoy-data-plane`
/// 2.2.0); `xds-api` 0.2 has neither the filter nor the upstream transport socket.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerProxyProtocol {
    /// `Rule`s (TLVs into dynamic metadata).
    #[prost(bytes = "vec", repeated, tag = "1")]
    #[serde(default, deserialize_with = "present_list")]
    pub rules: Vec<Vec<u8>>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub allow_requests_without_proxy_protocol: bool,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub pass_through_tlvs: Option<core::ProxyProtocolPassThroughTlVs>,
    /// `ProxyProtocolConfig.Version`s: `V1` (0), `V2` (1).
    #[prost(int32, repeated, tag = "4")]
    #[serde(default, deserialize_with = "proxy_protocol_versions")]
    pub disallowed_versions: Vec<i32>,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub stat_prefix: String,
    /// `TlvLocation`: `DYNAMIC_METADATA` (0), `FILTER_STATE` (1); where `rules` put TLVs.
    #[prost(int32, tag = "6")]
    #[serde(default, deserialize_with = "tlv_location")]
    pub tlv_location: i32,
}
named!(
    ListenerProxyProtocol,
    "envoy.extensions.filters.listener.proxy_protocol.v3",
    "ProxyProtocol"
);

fn proxy_protocol_version<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["V1", "V2"])
}

fn proxy_protocol_versions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
    struct Version(i32);
    impl<'de> Deserialize<'de> for Version {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            proxy_protocol_version(d).map(Version)
        }
    }
    let v = Vec::<Version>::deserialize(d)?;
    Ok(v.into_iter().map(|v| v.0).collect())
}

fn tlv_location<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["DYNAMIC_METADATA", "FILTER_STATE"])
}

/// `envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolUpstreamTransport {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub config: Option<ProxyProtocolConfig>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub transport_socket: Option<core::TransportSocket>,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub allow_unspecified_address: bool,
    #[prost(bool, tag = "4")]
    #[serde(default)]
    pub tlv_as_pool_key: bool,
}
named!(
    ProxyProtocolUpstreamTransport,
    "envoy.extensions.transport_sockets.proxy_protocol.v3",
    "ProxyProtocolUpstreamTransport"
);

/// `envoy.config.core.v3.ProxyProtocolConfig` with `added_tlvs`, which `xds-api` 0.2's
/// lacks.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocolConfig {
    #[prost(int32, tag = "1")]
    #[serde(default, deserialize_with = "proxy_protocol_version")]
    pub version: i32,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub pass_through_tlvs: Option<core::ProxyProtocolPassThroughTlVs>,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub added_tlvs: Vec<TlvEntry>,
}
named!(
    ProxyProtocolConfig,
    "envoy.config.core.v3",
    "ProxyProtocolConfig"
);

/// `envoy.config.core.v3.TlvEntry`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlvEntry {
    #[prost(uint32, tag = "1")]
    #[serde(default, rename = "type")]
    pub r#type: u32,
    /// Bytes: base64 in JSON and YAML, as protobuf's JSON mapping writes them.
    #[prost(bytes = "vec", tag = "2")]
    #[serde(default, deserialize_with = "base64_bytes")]
    pub value: Vec<u8>,
    /// A `SubstitutionFormatString`.
    #[prost(bytes = "vec", optional, tag = "3")]
    #[serde(default, deserialize_with = "present")]
    pub format_string: Option<Vec<u8>>,
}
named!(TlvEntry, "envoy.config.core.v3", "TlvEntry");

fn base64_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    let s = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s.trim()))
        .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
}

/// `envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzPerRoute {
    #[prost(bool, optional, tag = "1")]
    #[serde(default)]
    pub disabled: Option<bool>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub check_settings: Option<ExtAuthzCheckSettings>,
}
named!(
    ExtAuthzPerRoute,
    "envoy.extensions.filters.http.ext_authz.v3",
    "ExtAuthzPerRoute"
);

/// `envoy.extensions.filters.http.ext_authz.v3.CheckSettings`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzCheckSettings {
    #[prost(map = "string, string", tag = "1")]
    #[serde(default)]
    pub context_extensions: std::collections::HashMap<String, String>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub disable_request_body_buffering: bool,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub with_request_body: Option<ExtAuthzBufferSettings>,
    #[prost(bytes = "vec", optional, tag = "4")]
    #[serde(default, deserialize_with = "present")]
    pub grpc_service: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "5")]
    #[serde(default, deserialize_with = "present")]
    pub http_service: Option<Vec<u8>>,
}

/// `envoy.extensions.filters.http.ext_authz.v3.BufferSettings`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthzBufferSettings {
    #[prost(uint32, tag = "1")]
    #[serde(default)]
    pub max_request_bytes: u32,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub allow_partial_message: bool,
    #[prost(bool, tag = "3")]
    #[serde(default)]
    pub pack_as_bytes: bool,
}

/// `envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor`: external processing.
/// Tags from Envoy's `ext_proc.proto` (`xds-api` 0.2 has only its `ProcessingMode` and the
/// service's messages).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalProcessor {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub grpc_service: Option<core::GrpcService>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub failure_mode_allow: bool,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub processing_mode: Option<ext_proc_pb::ProcessingMode>,
    #[prost(string, repeated, tag = "5")]
    #[serde(default)]
    pub request_attributes: Vec<String>,
    #[prost(string, repeated, tag = "6")]
    #[serde(default)]
    pub response_attributes: Vec<String>,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub message_timeout: Option<protobuf::Duration>,
    #[prost(string, tag = "8")]
    #[serde(default)]
    pub stat_prefix: String,
    #[prost(message, optional, tag = "9")]
    #[serde(default)]
    pub mutation_rules:
        Option<xds_api::pb::envoy::config::common::mutation_rules::v3::HeaderMutationRules>,
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub max_message_timeout: Option<protobuf::Duration>,
    #[prost(bool, tag = "11")]
    #[serde(default)]
    pub disable_clear_route_cache: bool,
    #[prost(message, optional, tag = "12")]
    #[serde(default)]
    pub forward_rules: Option<ExtProcForwardRules>,
    /// A `Struct` (access-log data).
    #[prost(bytes = "vec", optional, tag = "13")]
    #[serde(default, deserialize_with = "present")]
    pub filter_metadata: Option<Vec<u8>>,
    #[prost(bool, tag = "14")]
    #[serde(default)]
    pub allow_mode_override: bool,
    #[prost(bool, tag = "15")]
    #[serde(default)]
    pub disable_immediate_response: bool,
    /// `MetadataOptions`.
    #[prost(bytes = "vec", optional, tag = "16")]
    #[serde(default, deserialize_with = "present")]
    pub metadata_options: Option<Vec<u8>>,
    #[prost(bool, tag = "17")]
    #[serde(default)]
    pub observability_mode: bool,
    /// `RouteCacheAction`: `DEFAULT` (0), `CLEAR` (1), `RETAIN` (2).
    #[prost(int32, tag = "18")]
    #[serde(default, deserialize_with = "route_cache_action")]
    pub route_cache_action: i32,
    #[prost(message, optional, tag = "19")]
    #[serde(default)]
    pub deferred_close_timeout: Option<protobuf::Duration>,
    #[prost(uint32, tag = "20")]
    #[serde(default)]
    pub max_more_chunks: u32,
}
named!(
    ExternalProcessor,
    "envoy.extensions.filters.http.ext_proc.v3",
    "ExternalProcessor"
);

fn route_cache_action<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    named_enum(d, &["DEFAULT", "CLEAR", "RETAIN"])
}

/// `envoy.extensions.filters.http.ext_proc.v3.HeaderForwardingRules`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcForwardRules {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub allowed_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub disallowed_headers: Option<xds_api::pb::envoy::r#type::matcher::v3::ListStringMatcher>,
}

/// `envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute` (a oneof of `disabled` and
/// `overrides`).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcPerRoute {
    #[prost(bool, optional, tag = "1")]
    #[serde(default)]
    pub disabled: Option<bool>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub overrides: Option<ExtProcOverrides>,
}
named!(
    ExtProcPerRoute,
    "envoy.extensions.filters.http.ext_proc.v3",
    "ExtProcPerRoute"
);

/// `envoy.extensions.filters.http.ext_proc.v3.ExtProcOverrides`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtProcOverrides {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub processing_mode: Option<ext_proc_pb::ProcessingMode>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub async_mode: bool,
    #[prost(string, repeated, tag = "3")]
    #[serde(default)]
    pub request_attributes: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    #[serde(default)]
    pub response_attributes: Vec<String>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub grpc_service: Option<core::GrpcService>,
    /// `MetadataOptions`.
    #[prost(bytes = "vec", optional, tag = "6")]
    #[serde(default, deserialize_with = "present")]
    pub metadata_options: Option<Vec<u8>>,
    #[prost(message, repeated, tag = "7")]
    #[serde(default)]
    pub grpc_initial_metadata: Vec<core::HeaderValue>,
}

/// `envoy.extensions.filters.http.ratelimit.v3.RateLimit`: the global rate limit filter.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRateLimit {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub domain: String,
    #[prost(uint32, tag = "2")]
    #[serde(default)]
    pub stage: u32,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub request_type: String,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub timeout: Option<protobuf::Duration>,
    #[prost(bool, tag = "5")]
    #[serde(default)]
    pub failure_mode_deny: bool,
    #[prost(bool, tag = "6")]
    #[serde(default)]
    pub rate_limited_as_resource_exhausted: bool,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub rate_limit_service:
        Option<xds_api::pb::envoy::config::ratelimit::v3::RateLimitServiceConfig>,
    #[prost(int32, tag = "8")]
    #[serde(default, deserialize_with = "x_ratelimit_headers_version")]
    pub enable_x_ratelimit_headers: i32,
    #[prost(bool, tag = "9")]
    #[serde(default)]
    pub disable_x_envoy_ratelimited_header: bool,
    #[prost(message, optional, tag = "10")]
    #[serde(default)]
    pub rate_limited_status: Option<xds_api::pb::envoy::r#type::v3::HttpStatus>,
    #[prost(message, repeated, tag = "11")]
    #[serde(default)]
    pub response_headers_to_add: Vec<core::HeaderValueOption>,
    #[prost(message, optional, tag = "12")]
    #[serde(default)]
    pub status_on_error: Option<xds_api::pb::envoy::r#type::v3::HttpStatus>,
    #[prost(string, tag = "13")]
    #[serde(default)]
    pub stat_prefix: String,
    #[prost(message, optional, tag = "14")]
    #[serde(default)]
    pub filter_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "15")]
    #[serde(default)]
    pub filter_enforced: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "16")]
    #[serde(default)]
    pub failure_mode_deny_percent: Option<core::RuntimeFractionalPercent>,
    #[prost(message, repeated, tag = "17")]
    #[serde(default)]
    pub rate_limits: Vec<RouteRateLimit>,
}
named!(
    HttpRateLimit,
    "envoy.extensions.filters.http.ratelimit.v3",
    "RateLimit"
);

/// `envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPerRoute {
    #[prost(int32, tag = "1")]
    #[serde(default, deserialize_with = "vh_rate_limits_option")]
    pub vh_rate_limits: i32,
    #[prost(int32, tag = "2")]
    #[serde(default, deserialize_with = "override_options")]
    pub override_option: i32,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub rate_limits: Vec<RouteRateLimit>,
    #[prost(string, tag = "4")]
    #[serde(default)]
    pub domain: String,
}
named!(
    RateLimitPerRoute,
    "envoy.extensions.filters.http.ratelimit.v3",
    "RateLimitPerRoute"
);

/// `envoy.extensions.filters.http.basic_auth.v3.BasicAuth`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub users: Option<core::DataSource>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub forward_username_header: String,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub authentication_header: String,
}
named!(
    BasicAuth,
    "envoy.extensions.filters.http.basic_auth.v3",
    "BasicAuth"
);

/// `envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthPerRoute {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub users: Option<core::DataSource>,
}
named!(
    BasicAuthPerRoute,
    "envoy.extensions.filters.http.basic_auth.v3",
    "BasicAuthPerRoute"
);

/// `envoy.extensions.filters.http.csrf.v3.CsrfPolicy`: the CSRF filter, in a connection
/// manager and per route.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CsrfPolicy {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub filter_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub shadow_enabled: Option<core::RuntimeFractionalPercent>,
    #[prost(message, repeated, tag = "3")]
    #[serde(default)]
    pub additional_origins: Vec<xds_api::pb::envoy::r#type::matcher::v3::StringMatcher>,
}
named!(
    CsrfPolicy,
    "envoy.extensions.filters.http.csrf.v3",
    "CsrfPolicy"
);

/// `envoy.extensions.filters.http.rbac.v3.RBAC`: the RBAC HTTP filter.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRbac {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub rules: Option<rbac::Rbac>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub shadow_rules: Option<rbac::Rbac>,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub shadow_rules_stat_prefix: String,
    #[prost(message, optional, tag = "4")]
    #[serde(default)]
    pub matcher: Option<xds_matcher::Matcher>,
    #[prost(message, optional, tag = "5")]
    #[serde(default)]
    pub shadow_matcher: Option<xds_matcher::Matcher>,
    #[prost(string, tag = "6")]
    #[serde(default)]
    pub rules_stat_prefix: String,
    #[prost(bool, tag = "7")]
    #[serde(default)]
    pub track_per_rule_stats: bool,
}
named!(HttpRbac, "envoy.extensions.filters.http.rbac.v3", "RBAC");

/// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRbacPerRoute {
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub rbac: Option<HttpRbac>,
}
named!(
    HttpRbacPerRoute,
    "envoy.extensions.filters.http.rbac.v3",
    "RBACPerRoute"
);

/// `envoy.extensions.filters.network.rbac.v3.RBAC`: the RBAC network filter.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRbac {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub rules: Option<rbac::Rbac>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub shadow_rules: Option<rbac::Rbac>,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub stat_prefix: String,
    /// `ONE_TIME_ON_FIRST_BYTE` (0) or `CONTINUOUS` (1).
    #[prost(int32, tag = "4")]
    #[serde(default, deserialize_with = "enforcement_type")]
    pub enforcement_type: i32,
    #[prost(string, tag = "5")]
    #[serde(default)]
    pub shadow_rules_stat_prefix: String,
    #[prost(message, optional, tag = "6")]
    #[serde(default)]
    pub matcher: Option<xds_matcher::Matcher>,
    #[prost(message, optional, tag = "7")]
    #[serde(default)]
    pub shadow_matcher: Option<xds_matcher::Matcher>,
    #[prost(message, optional, tag = "8")]
    #[serde(default)]
    pub delay_deny: Option<protobuf::Duration>,
    #[prost(bool, tag = "9")]
    #[serde(default)]
    pub enforce_on_transport_ready: bool,
}
named!(
    NetworkRbac,
    "envoy.extensions.filters.network.rbac.v3",
    "RBAC"
);

fn enforcement_type<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum E {
        N(i32),
        S(String),
    }
    match E::deserialize(d)? {
        E::N(n) => Ok(n),
        E::S(s) => match s.as_str() {
            "ONE_TIME_ON_FIRST_BYTE" => Ok(0),
            "CONTINUOUS" => Ok(1),
            other => Err(serde::de::Error::custom(format!(
                "unknown enforcement_type `{other}`"
            ))),
        },
    }
}

/// `envoy.extensions.filters.http.health_check.v3.HealthCheck`: the health check HTTP
/// filter.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFilter {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub pass_through_mode: Option<protobuf::BoolValue>,
    #[prost(message, optional, tag = "3")]
    #[serde(default)]
    pub cache_time: Option<protobuf::Duration>,
    #[prost(map = "string, message", tag = "4")]
    #[serde(default)]
    pub cluster_min_healthy_percentages:
        std::collections::HashMap<String, xds_api::pb::envoy::r#type::v3::Percent>,
    #[prost(message, repeated, tag = "5")]
    #[serde(default)]
    pub headers: Vec<xds_api::pb::envoy::config::route::v3::HeaderMatcher>,
}
named!(
    HealthCheckFilter,
    "envoy.extensions.filters.http.health_check.v3",
    "HealthCheck"
);

/// `envoy.extensions.filters.http.stateful_session.v3.StatefulSession`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatefulSession {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub session_state: Option<core::TypedExtensionConfig>,
    #[prost(bool, tag = "2")]
    #[serde(default)]
    pub strict: bool,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub stat_prefix: String,
}
named!(
    StatefulSession,
    "envoy.extensions.filters.http.stateful_session.v3",
    "StatefulSession"
);

/// `envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute` (the
/// `override` oneof as two optional fields).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatefulSessionPerRoute {
    #[prost(bool, optional, tag = "1")]
    #[serde(default)]
    pub disabled: Option<bool>,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub stateful_session: Option<StatefulSession>,
}
named!(
    StatefulSessionPerRoute,
    "envoy.extensions.filters.http.stateful_session.v3",
    "StatefulSessionPerRoute"
);

/// `envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieSessionState {
    #[prost(message, optional, tag = "1")]
    #[serde(default)]
    pub cookie: Option<SessionCookie>,
}
named!(
    CookieSessionState,
    "envoy.extensions.http.stateful_session.cookie.v3",
    "CookieBasedSessionState"
);

/// `envoy.type.http.v3.Cookie`, with the `attributes` `xds-api` 0.2 lacks (the JSON
/// loader reads it by `xds-api`'s descriptor, which leaves `attributes` as written: plain
/// strings).
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionCookie {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    #[serde(default)]
    pub ttl: Option<protobuf::Duration>,
    #[prost(string, tag = "3")]
    #[serde(default)]
    pub path: String,
    #[prost(message, repeated, tag = "4")]
    #[serde(default)]
    pub attributes: Vec<CookieAttribute>,
}

/// `envoy.type.http.v3.CookieAttribute`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CookieAttribute {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub value: String,
}

/// `envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState`.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSessionState {
    #[prost(string, tag = "1")]
    #[serde(default)]
    pub name: String,
}
named!(
    HeaderSessionState,
    "envoy.extensions.http.stateful_session.header.v3",
    "HeaderBasedSessionState"
);

/// `envoy.extensions.matching.input_matchers.ip.v3.Ip`: an address in one of the ranges.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    #[serde(default)]
    pub cidr_ranges: Vec<core::CidrRange>,
    #[prost(string, tag = "2")]
    #[serde(default)]
    pub stat_prefix: String,
}
named!(
    IpMatcher,
    "envoy.extensions.matching.input_matchers.ip.v3",
    "Ip"
);

/// The matching inputs without settings (`SourceIPInput`, `UriSanInput`, ...): one shape
/// for all of them, the type URL says which.
#[derive(Clone, PartialEq, Message, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// The matching inputs [`NoSettings`] stands for, by full name.
pub(crate) const INPUTS_WITHOUT_SETTINGS: &[&str] = &[
    "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput",
    "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
    "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
    "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput",
];

/// A field of a message above as the JSON loader reads it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JsonField {
    /// The proto field name; the loader also accepts its lowerCamelCase JSON name.
    pub name: &'static str,
    /// The full protobuf name of a message-typed field's message (read through `xds-api`'s
    /// descriptors or through this table); `None` for scalars, enums and raw fields (any
    /// value counts, so it is taken as written).
    pub message: Option<&'static str>,
    /// Repeated: `message` applies to each element.
    pub repeated: bool,
    /// A map (of string keys): `message` applies to each value.
    pub map: bool,
}

const fn p(name: &'static str) -> JsonField {
    JsonField {
        name,
        message: None,
        repeated: false,
        map: false,
    }
}

const fn m(name: &'static str, message: &'static str) -> JsonField {
    JsonField {
        name,
        message: Some(message),
        repeated: false,
        map: false,
    }
}

const fn rm(name: &'static str, message: &'static str) -> JsonField {
    JsonField {
        name,
        message: Some(message),
        repeated: true,
        map: false,
    }
}

const fn mm(name: &'static str, message: &'static str) -> JsonField {
    JsonField {
        name,
        message: Some(message),
        repeated: false,
        map: true,
    }
}

const DURATION: &str = "google.protobuf.Duration";
const UINT64_VALUE: &str = "google.protobuf.UInt64Value";
pub(crate) const LOCALITY_LB: &str =
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig";
const LOCALITY_WEIGHTED: &str =
    "envoy.extensions.load_balancing_policies.common.v3.LocalityLbConfig.LocalityWeightedLbConfig";
const BOOL_VALUE: &str = "google.protobuf.BoolValue";
const LIST_STRING_MATCHER: &str = "envoy.type.matcher.v3.ListStringMatcher";
const COMPRESSOR: &str = "envoy.extensions.filters.http.compressor.v3.Compressor";
const COMPRESSOR_COMMON: &str =
    "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig";
const EXT_AUTHZ_HTTP_SERVICE: &str = "envoy.extensions.filters.http.ext_authz.v3.HttpService";
const EXT_AUTHZ_BUFFER: &str = "envoy.extensions.filters.http.ext_authz.v3.BufferSettings";
const EXT_PROC_MODE: &str = "envoy.extensions.filters.http.ext_proc.v3.ProcessingMode";
const EXT_PROC_FORWARD: &str = "envoy.extensions.filters.http.ext_proc.v3.HeaderForwardingRules";
const EXT_PROC_OVERRIDES: &str = "envoy.extensions.filters.http.ext_proc.v3.ExtProcOverrides";
const UINT32_VALUE: &str = "google.protobuf.UInt32Value";
const PASS_THROUGH_TLVS: &str = "envoy.config.core.v3.ProxyProtocolPassThroughTLVs";
/// The newer `ProxyProtocolConfig` ([`ProxyProtocolConfig`], with `added_tlvs`), named apart
/// from `xds-api`'s descriptor of the older message.
const PROXY_PROTOCOL_CONFIG: &str = "envoy.config.core.v3.ProxyProtocolConfig (newer)";
const TLV_ENTRY: &str = "envoy.config.core.v3.TlvEntry";
const HEADER_VALUE_OPTION: &str = "envoy.config.core.v3.HeaderValueOption";
const RUNTIME_PERCENT: &str = "envoy.config.core.v3.RuntimeFractionalPercent";
const DATA_SOURCE: &str = "envoy.config.core.v3.DataSource";
const FRACTIONAL_PERCENT: &str = "envoy.type.v3.FractionalPercent";
const SDS_SECRET_CONFIG: &str = "envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig";
const VALIDATION_CONTEXT: &str =
    "envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext";
const RBAC: &str = "envoy.config.rbac.v3.RBAC";
/// The newer `RateLimit` ([`RouteRateLimit`]) and its parts, named apart from `xds-api`'s
/// descriptors of the older messages (the names only key the JSON loader's shapes).
pub(crate) const ROUTE_RATE_LIMIT: &str = "envoy.config.route.v3.RateLimit (newer)";
const RATE_LIMIT_ACTION: &str = "envoy.config.route.v3.RateLimit.Action (newer)";
const HITS_ADDEND: &str = "envoy.config.route.v3.RateLimit.HitsAddend";
const GENERIC_KEY: &str = "envoy.config.route.v3.RateLimit.Action.GenericKey (newer)";
const HEADER_VALUE_MATCH: &str = "envoy.config.route.v3.RateLimit.Action.HeaderValueMatch (newer)";
const REMOTE_ADDRESS_MATCH: &str = "envoy.config.route.v3.RateLimit.Action.RemoteAddressMatch";
pub(crate) const ADDRESS_MATCHER: &str = "envoy.type.matcher.v3.AddressMatcher";
pub(crate) const API_KEY_CREDENTIAL: &str =
    "envoy.extensions.filters.http.api_key_auth.v3.Credential";
pub(crate) const API_KEY_SOURCE: &str = "envoy.extensions.filters.http.api_key_auth.v3.KeySource";
pub(crate) const API_KEY_FORWARDING: &str =
    "envoy.extensions.filters.http.api_key_auth.v3.Forwarding";
const JWT_PROVIDER: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider";
const JWT_REQUIREMENT: &str = "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement";
/// `JwtRequirementOrList` and `JwtRequirementAndList`, one shape.
const JWT_REQUIREMENT_LIST: &str =
    "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList";
const XDS_MATCHER: &str = "xds.type.matcher.v3.Matcher";
const PROTOCOL_CONFIG: &[JsonField] = &[
    m(
        "http_protocol_options",
        "envoy.config.core.v3.Http1ProtocolOptions",
    ),
    m(
        "http2_protocol_options",
        "envoy.config.core.v3.Http2ProtocolOptions",
    ),
    p("http3_protocol_options"),
];

/// The messages above by full protobuf name, with their fields (every serde field of the
/// struct, checked by a test), for the JSON loader: `xds-api`'s descriptor set does not
/// have these packages. Raw fields are plain: their value is never read.
pub(crate) const JSON_MESSAGES: &[(&str, &[JsonField])] = &[
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        &[
            p("stat_prefix"),
            p("cluster"),
            m(
                "weighted_clusters",
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
            ),
            p("on_demand"),
            p("metadata_match"),
            m("idle_timeout", DURATION),
            p("downstream_idle_timeout"),
            p("upstream_idle_timeout"),
            p("access_log"),
            p("max_connect_attempts"),
            p("backoff_options"),
            p("hash_policy"),
            m(
                "tunneling_config",
                "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig",
            ),
            p("max_downstream_connection_duration"),
            p("access_log_flush_interval"),
            p("flush_access_log_on_connected"),
            p("access_log_options"),
            p("proxy_protocol_tlvs"),
            p("max_downstream_connection_duration_jitter_percentage"),
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.TunnelingConfig",
        &[
            p("hostname"),
            p("use_post"),
            rm("headers_to_add", HEADER_VALUE_OPTION),
            p("propagate_response_headers"),
            p("post_path"),
            p("propagate_response_trailers"),
        ],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster",
        &[rm(
            "clusters",
            "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        )],
    ),
    (
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy.WeightedCluster.ClusterWeight",
        &[p("name"), p("weight"), p("metadata_match")],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
        &[
            m(
                "common_tls_context",
                "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
            ),
            p("sni"),
            p("allow_renegotiation"),
            p("max_session_keys"),
            p("enforce_rsa_key_usage"),
            p("auto_host_sni"),
            p("auto_sni_san_validation"),
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        &[
            m(
                "common_tls_context",
                "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
            ),
            m("require_client_certificate", BOOL_VALUE),
            m("require_sni", BOOL_VALUE),
            p("session_ticket_keys"),
            p("session_ticket_keys_sds_secret_config"),
            p("disable_stateless_session_resumption"),
            p("disable_stateful_session_resumption"),
            p("session_timeout"),
            p("ocsp_staple_policy"),
            m("full_scan_certs_on_sni_mismatch", BOOL_VALUE),
            p("prefer_client_ciphers"),
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
        &[
            m(
                "tls_params",
                "envoy.extensions.transport_sockets.tls.v3.TlsParameters",
            ),
            rm(
                "tls_certificates",
                "envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
            ),
            rm("tls_certificate_sds_secret_configs", SDS_SECRET_CONFIG),
            p("tls_certificate_provider_instance"),
            p("tls_certificate_certificate_provider"),
            p("tls_certificate_certificate_provider_instance"),
            m("validation_context", VALIDATION_CONTEXT),
            m("validation_context_sds_secret_config", SDS_SECRET_CONFIG),
            m(
                "combined_validation_context",
                "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.\
                 CombinedCertificateValidationContext",
            ),
            p("validation_context_certificate_provider"),
            p("validation_context_certificate_provider_instance"),
            p("alpn_protocols"),
            p("custom_handshaker"),
            p("key_log"),
            p("custom_tls_certificate_selector"),
        ],
    ),
    (
        "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.\
         CombinedCertificateValidationContext",
        &[
            m("default_validation_context", VALIDATION_CONTEXT),
            m("validation_context_sds_secret_config", SDS_SECRET_CONFIG),
            p("validation_context_certificate_provider"),
            p("validation_context_certificate_provider_instance"),
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        &[
            m(
                "common_http_protocol_options",
                "envoy.config.core.v3.HttpProtocolOptions",
            ),
            m(
                "upstream_http_protocol_options",
                "envoy.config.core.v3.UpstreamHttpProtocolOptions",
            ),
            m(
                "explicit_http_config",
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
            ),
            m(
                "use_downstream_protocol_config",
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
            ),
            m(
                "auto_config",
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig",
            ),
            p("http_filters"),
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.ExplicitHttpConfig",
        PROTOCOL_CONFIG,
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.AutoHttpConfig",
        &[
            m(
                "http_protocol_options",
                "envoy.config.core.v3.Http1ProtocolOptions",
            ),
            m(
                "http2_protocol_options",
                "envoy.config.core.v3.Http2ProtocolOptions",
            ),
            p("http3_protocol_options"),
            p("alternate_protocols_cache_options"),
        ],
    ),
    (
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions.UseDownstreamHttpConfig",
        PROTOCOL_CONFIG,
    ),
    (
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
        &[
            m("pack_trace_reason", BOOL_VALUE),
            m("use_request_id_for_trace_sampling", BOOL_VALUE),
        ],
    ),
    (
        "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
        &[
            p("header_name"),
            p("allow_extension_to_set_address_as_trusted"),
            m("reject_with_status", "envoy.type.v3.HttpStatus"),
        ],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.HTTPFault",
        &[
            m(
                "delay",
                "envoy.extensions.filters.common.fault.v3.FaultDelay",
            ),
            m("abort", "envoy.extensions.filters.http.fault.v3.FaultAbort"),
            p("upstream_cluster"),
            rm("headers", "envoy.config.route.v3.HeaderMatcher"),
            p("downstream_nodes"),
            m("max_active_faults", UINT32_VALUE),
            p("response_rate_limit"),
            p("delay_percent_runtime"),
            p("abort_percent_runtime"),
            p("delay_duration_runtime"),
            p("abort_http_status_runtime"),
            p("max_active_faults_runtime"),
            p("response_rate_limit_percent_runtime"),
            p("abort_grpc_status_runtime"),
            p("disable_downstream_cluster_stats"),
            p("filter_metadata"),
        ],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay",
        &[
            m("fixed_delay", DURATION),
            m(
                "header_delay",
                "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
            ),
            m("percentage", FRACTIONAL_PERCENT),
        ],
    ),
    (
        "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
        &[],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort",
        &[
            p("http_status"),
            p("grpc_status"),
            m(
                "header_abort",
                "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort",
            ),
            m("percentage", FRACTIONAL_PERCENT),
        ],
    ),
    (
        "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort",
        &[],
    ),
    ("envoy.extensions.filters.http.cors.v3.Cors", &[]),
    (
        "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        &[
            rm(
                "allow_origin_string_match",
                "envoy.type.matcher.v3.StringMatcher",
            ),
            p("allow_methods"),
            p("allow_headers"),
            p("expose_headers"),
            p("max_age"),
            m("allow_credentials", BOOL_VALUE),
            m("filter_enabled", RUNTIME_PERCENT),
            m("shadow_enabled", RUNTIME_PERCENT),
            m("allow_private_network_access", BOOL_VALUE),
            m("forward_not_matching_preflights", BOOL_VALUE),
        ],
    ),
    (
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
        &[
            p("stat_prefix"),
            m("status", "envoy.type.v3.HttpStatus"),
            m("token_bucket", "envoy.type.v3.TokenBucket"),
            m("filter_enabled", RUNTIME_PERCENT),
            m("filter_enforced", RUNTIME_PERCENT),
            rm("response_headers_to_add", HEADER_VALUE_OPTION),
            rm(
                "descriptors",
                "envoy.extensions.common.ratelimit.v3.LocalRateLimitDescriptor",
            ),
            p("stage"),
            rm(
                "request_headers_to_add_when_not_enforced",
                HEADER_VALUE_OPTION,
            ),
            p("local_rate_limit_per_downstream_connection"),
            p("enable_x_ratelimit_headers"),
            p("vh_rate_limits"),
            m("always_consume_default_token_bucket", BOOL_VALUE),
            p("rate_limited_as_resource_exhausted"),
            p("local_cluster_rate_limit"),
            rm("rate_limits", ROUTE_RATE_LIMIT),
        ],
    ),
    (
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
        &[
            m("users", DATA_SOURCE),
            p("forward_username_header"),
            p("authentication_header"),
        ],
    ),
    (
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
        &[m("users", DATA_SOURCE)],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        &[
            mm("providers", JWT_PROVIDER),
            rm(
                "rules",
                "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
            ),
            p("filter_state_rules"),
            p("bypass_cors_preflight"),
            mm("requirement_map", JWT_REQUIREMENT),
            p("strip_failure_response"),
            p("stat_prefix"),
        ],
    ),
    (
        JWT_PROVIDER,
        &[
            p("issuer"),
            p("audiences"),
            m(
                "remote_jwks",
                "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
            ),
            m("local_jwks", DATA_SOURCE),
            p("forward"),
            rm(
                "from_headers",
                "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
            ),
            p("from_params"),
            p("forward_payload_header"),
            p("payload_in_metadata"),
            p("clock_skew_seconds"),
            p("pad_forward_payload_header"),
            p("jwt_cache_config"),
            p("from_cookies"),
            p("header_in_metadata"),
            rm(
                "claim_to_headers",
                "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
            ),
            p("failed_status_in_metadata"),
            p("clear_route_cache"),
            p("normalize_payload_in_metadata"),
            m("subjects", "envoy.type.matcher.v3.StringMatcher"),
            p("require_expiration"),
            m("max_lifetime", DURATION),
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
        &[
            m("http_uri", "envoy.config.core.v3.HttpUri"),
            m("cache_duration", DURATION),
            p("async_fetch"),
            p("retry_policy"),
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
        &[p("name"), p("value_prefix")],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
        &[p("header_name"), p("claim_name")],
    ),
    (
        JWT_REQUIREMENT,
        &[
            p("provider_name"),
            m(
                "provider_and_audiences",
                "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
            ),
            m("requires_any", JWT_REQUIREMENT_LIST),
            m("requires_all", JWT_REQUIREMENT_LIST),
            p("allow_missing_or_failed"),
            p("allow_missing"),
            p("extract_only_without_validation"),
        ],
    ),
    (JWT_REQUIREMENT_LIST, &[rm("requirements", JWT_REQUIREMENT)]),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
        &[p("provider_name"), p("audiences")],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
        &[
            m("match", "envoy.config.route.v3.RouteMatch"),
            m("requires", JWT_REQUIREMENT),
            p("requirement_name"),
        ],
    ),
    (
        "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
        &[p("disabled"), p("requirement_name")],
    ),
    (
        "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
        &[
            rm("credentials", API_KEY_CREDENTIAL),
            rm("key_sources", API_KEY_SOURCE),
            m("forwarding", API_KEY_FORWARDING),
        ],
    ),
    (
        "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute",
        &[
            rm("credentials", API_KEY_CREDENTIAL),
            rm("key_sources", API_KEY_SOURCE),
            p("allowed_clients"),
            m("forwarding", API_KEY_FORWARDING),
        ],
    ),
    (API_KEY_CREDENTIAL, &[p("key"), p("client")]),
    (API_KEY_SOURCE, &[p("header"), p("query"), p("cookie")]),
    (API_KEY_FORWARDING, &[p("header"), p("hide_credentials")]),
    (
        ROUTE_RATE_LIMIT,
        &[
            m("stage", UINT32_VALUE),
            p("disable_key"),
            rm("actions", RATE_LIMIT_ACTION),
            p("limit"),
            m("hits_addend", HITS_ADDEND),
            p("apply_on_stream_done"),
            p("x_ratelimit_option"),
        ],
    ),
    (
        HITS_ADDEND,
        &[
            m("number", "google.protobuf.UInt64Value"),
            p("format"),
            p("is_negative_hits"),
        ],
    ),
    (
        RATE_LIMIT_ACTION,
        &[
            p("source_cluster"),
            p("destination_cluster"),
            m(
                "request_headers",
                "envoy.config.route.v3.RateLimit.Action.RequestHeaders",
            ),
            p("remote_address"),
            m("generic_key", GENERIC_KEY),
            m("header_value_match", HEADER_VALUE_MATCH),
            p("dynamic_metadata"),
            p("metadata"),
            p("extension"),
            m(
                "masked_remote_address",
                "envoy.config.route.v3.RateLimit.Action.MaskedRemoteAddress",
            ),
            p("query_parameter_value_match"),
            p("query_parameters"),
            m("remote_address_match", REMOTE_ADDRESS_MATCH),
        ],
    ),
    (
        GENERIC_KEY,
        &[
            p("descriptor_value"),
            p("descriptor_key"),
            p("default_value"),
        ],
    ),
    (
        HEADER_VALUE_MATCH,
        &[
            p("descriptor_value"),
            m("expect_match", BOOL_VALUE),
            rm("headers", "envoy.config.route.v3.HeaderMatcher"),
            p("descriptor_key"),
            p("default_value"),
        ],
    ),
    (
        REMOTE_ADDRESS_MATCH,
        &[
            p("descriptor_value"),
            p("descriptor_key"),
            p("default_value"),
            m("address_matcher", ADDRESS_MATCHER),
        ],
    ),
    (
        ADDRESS_MATCHER,
        &[
            rm("ranges", "envoy.config.core.v3.CidrRange"),
            p("invert_match"),
        ],
    ),
    (
        COMPRESSOR,
        &[
            m("content_length", UINT32_VALUE),
            p("content_type"),
            p("disable_on_etag_header"),
            p("remove_accept_encoding_header"),
            m("runtime_enabled", "envoy.config.core.v3.RuntimeFeatureFlag"),
            m(
                "compressor_library",
                "envoy.config.core.v3.TypedExtensionConfig",
            ),
            m(
                "request_direction_config",
                "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig",
            ),
            m(
                "response_direction_config",
                "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
            ),
            p("choose_first"),
        ],
    ),
    (
        COMPRESSOR_COMMON,
        &[
            m("enabled", "envoy.config.core.v3.RuntimeFeatureFlag"),
            m("min_content_length", UINT32_VALUE),
            p("content_type"),
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig",
        &[m("common_config", COMPRESSOR_COMMON)],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
        &[
            m("common_config", COMPRESSOR_COMMON),
            p("disable_on_etag_header"),
            p("remove_accept_encoding_header"),
            p("uncompressible_response_codes"),
            p("status_header_enabled"),
            p("weaken_etag_on_compress"),
        ],
    ),
    (
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
        &[
            p("rules"),
            p("allow_requests_without_proxy_protocol"),
            m("pass_through_tlvs", PASS_THROUGH_TLVS),
            p("disallowed_versions"),
            p("stat_prefix"),
            p("tlv_location"),
        ],
    ),
    (
        "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
        &[
            m("config", PROXY_PROTOCOL_CONFIG),
            m("transport_socket", "envoy.config.core.v3.TransportSocket"),
            p("allow_unspecified_address"),
            p("tlv_as_pool_key"),
        ],
    ),
    (
        PROXY_PROTOCOL_CONFIG,
        &[
            p("version"),
            m("pass_through_tlvs", PASS_THROUGH_TLVS),
            rm("added_tlvs", TLV_ENTRY),
        ],
    ),
    (TLV_ENTRY, &[p("type"), p("value"), p("format_string")]),
    (
        "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
        &[
            p("disabled"),
            m(
                "overrides",
                "envoy.extensions.filters.http.compressor.v3.CompressorOverrides",
            ),
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.CompressorOverrides",
        &[
            m(
                "response_direction_config",
                "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides",
            ),
            p("compressor_library"),
        ],
    ),
    (
        "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides",
        &[m("remove_accept_encoding_header", BOOL_VALUE)],
    ),
    (
        "envoy.extensions.compression.gzip.compressor.v3.Gzip",
        &[
            m("memory_level", UINT32_VALUE),
            p("compression_level"),
            p("compression_strategy"),
            m("window_bits", UINT32_VALUE),
            m("chunk_size", UINT32_VALUE),
        ],
    ),
    (
        "envoy.extensions.compression.brotli.compressor.v3.Brotli",
        &[
            m("quality", UINT32_VALUE),
            p("encoder_mode"),
            m("window_bits", UINT32_VALUE),
            m("input_block_bits", UINT32_VALUE),
            m("chunk_size", UINT32_VALUE),
            p("disable_literal_context_modeling"),
        ],
    ),
    (
        "envoy.extensions.compression.zstd.compressor.v3.Zstd",
        &[
            m("compression_level", UINT32_VALUE),
            p("enable_checksum"),
            p("strategy"),
            p("dictionary"),
            m("chunk_size", UINT32_VALUE),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        &[
            m("grpc_service", "envoy.config.core.v3.GrpcService"),
            m("http_service", EXT_AUTHZ_HTTP_SERVICE),
            p("transport_api_version"),
            p("failure_mode_allow"),
            p("failure_mode_allow_header_add"),
            m("with_request_body", EXT_AUTHZ_BUFFER),
            p("clear_route_cache"),
            m("status_on_error", "envoy.type.v3.HttpStatus"),
            p("validate_mutations"),
            p("metadata_context_namespaces"),
            p("typed_metadata_context_namespaces"),
            p("route_metadata_context_namespaces"),
            p("route_typed_metadata_context_namespaces"),
            m("filter_enabled", RUNTIME_PERCENT),
            m(
                "filter_enabled_metadata",
                "envoy.type.matcher.v3.MetadataMatcher",
            ),
            m("deny_at_disable", "envoy.config.core.v3.RuntimeFeatureFlag"),
            p("include_peer_certificate"),
            p("stat_prefix"),
            p("bootstrap_metadata_labels_key"),
            m("allowed_headers", LIST_STRING_MATCHER),
            m("disallowed_headers", LIST_STRING_MATCHER),
            p("include_tls_session"),
            m("charge_cluster_response_stats", BOOL_VALUE),
            p("encode_raw_headers"),
            m(
                "decoder_header_mutation_rules",
                "envoy.config.common.mutation_rules.v3.HeaderMutationRules",
            ),
            m("enable_dynamic_metadata_ingestion", BOOL_VALUE),
            p("filter_metadata"),
            p("emit_filter_state_stats"),
            p("max_denied_response_body_bytes"),
            p("enforce_response_header_limits"),
            p("shadow_mode"),
        ],
    ),
    (
        EXT_AUTHZ_HTTP_SERVICE,
        &[
            m("server_uri", "envoy.config.core.v3.HttpUri"),
            p("path_prefix"),
            p("path_override"),
            m(
                "authorization_request",
                "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
            ),
            m(
                "authorization_response",
                "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
            ),
            p("retry_policy"),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
        &[
            m("allowed_headers", LIST_STRING_MATCHER),
            rm("headers_to_add", "envoy.config.core.v3.HeaderValue"),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
        &[
            m("allowed_upstream_headers", LIST_STRING_MATCHER),
            m("allowed_upstream_headers_to_append", LIST_STRING_MATCHER),
            m("allowed_client_headers", LIST_STRING_MATCHER),
            m("allowed_client_headers_on_success", LIST_STRING_MATCHER),
            m("dynamic_metadata_from_headers", LIST_STRING_MATCHER),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
        &[
            p("disabled"),
            m(
                "check_settings",
                "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
            ),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
        &[
            p("context_extensions"),
            p("disable_request_body_buffering"),
            m("with_request_body", EXT_AUTHZ_BUFFER),
            p("grpc_service"),
            p("http_service"),
        ],
    ),
    (
        EXT_AUTHZ_BUFFER,
        &[
            p("max_request_bytes"),
            p("allow_partial_message"),
            p("pack_as_bytes"),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        &[
            m("grpc_service", "envoy.config.core.v3.GrpcService"),
            p("failure_mode_allow"),
            m("processing_mode", EXT_PROC_MODE),
            p("request_attributes"),
            p("response_attributes"),
            m("message_timeout", DURATION),
            p("stat_prefix"),
            m(
                "mutation_rules",
                "envoy.config.common.mutation_rules.v3.HeaderMutationRules",
            ),
            m("max_message_timeout", DURATION),
            p("disable_clear_route_cache"),
            m("forward_rules", EXT_PROC_FORWARD),
            p("filter_metadata"),
            p("allow_mode_override"),
            p("disable_immediate_response"),
            p("metadata_options"),
            p("observability_mode"),
            p("route_cache_action"),
            m("deferred_close_timeout", DURATION),
            p("max_more_chunks"),
        ],
    ),
    (
        EXT_PROC_FORWARD,
        &[
            m("allowed_headers", LIST_STRING_MATCHER),
            m("disallowed_headers", LIST_STRING_MATCHER),
        ],
    ),
    (
        "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
        &[p("disabled"), m("overrides", EXT_PROC_OVERRIDES)],
    ),
    (
        EXT_PROC_OVERRIDES,
        &[
            m("processing_mode", EXT_PROC_MODE),
            p("async_mode"),
            p("request_attributes"),
            p("response_attributes"),
            m("grpc_service", "envoy.config.core.v3.GrpcService"),
            p("metadata_options"),
            rm("grpc_initial_metadata", "envoy.config.core.v3.HeaderValue"),
        ],
    ),
    (
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        &[
            p("domain"),
            p("stage"),
            p("request_type"),
            m("timeout", DURATION),
            p("failure_mode_deny"),
            p("rate_limited_as_resource_exhausted"),
            m(
                "rate_limit_service",
                "envoy.config.ratelimit.v3.RateLimitServiceConfig",
            ),
            p("enable_x_ratelimit_headers"),
            p("disable_x_envoy_ratelimited_header"),
            m("rate_limited_status", "envoy.type.v3.HttpStatus"),
            rm("response_headers_to_add", HEADER_VALUE_OPTION),
            m("status_on_error", "envoy.type.v3.HttpStatus"),
            p("stat_prefix"),
            m("filter_enabled", RUNTIME_PERCENT),
            m("filter_enforced", RUNTIME_PERCENT),
            m("failure_mode_deny_percent", RUNTIME_PERCENT),
            rm("rate_limits", ROUTE_RATE_LIMIT),
        ],
    ),
    (
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
        &[
            p("vh_rate_limits"),
            p("override_option"),
            rm("rate_limits", ROUTE_RATE_LIMIT),
            p("domain"),
        ],
    ),
    (
        "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
        &[
            m("filter_enabled", RUNTIME_PERCENT),
            m("shadow_enabled", RUNTIME_PERCENT),
            rm("additional_origins", "envoy.type.matcher.v3.StringMatcher"),
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBAC",
        &[
            m("rules", RBAC),
            m("shadow_rules", RBAC),
            p("shadow_rules_stat_prefix"),
            m("matcher", XDS_MATCHER),
            m("shadow_matcher", XDS_MATCHER),
            p("rules_stat_prefix"),
            p("track_per_rule_stats"),
        ],
    ),
    (
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
        &[m("rbac", "envoy.extensions.filters.http.rbac.v3.RBAC")],
    ),
    (
        "envoy.extensions.filters.network.rbac.v3.RBAC",
        &[
            m("rules", RBAC),
            m("shadow_rules", RBAC),
            p("stat_prefix"),
            p("enforcement_type"),
            p("shadow_rules_stat_prefix"),
            m("matcher", XDS_MATCHER),
            m("shadow_matcher", XDS_MATCHER),
            m("delay_deny", DURATION),
            p("enforce_on_transport_ready"),
        ],
    ),
    (
        "envoy.extensions.filters.http.health_check.v3.HealthCheck",
        &[
            m("pass_through_mode", BOOL_VALUE),
            m("cache_time", DURATION),
            p("cluster_min_healthy_percentages"),
            rm("headers", "envoy.config.route.v3.HeaderMatcher"),
        ],
    ),
    (
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
        &[
            m("session_state", "envoy.config.core.v3.TypedExtensionConfig"),
            p("strict"),
            p("stat_prefix"),
        ],
    ),
    (
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
        &[
            p("disabled"),
            m(
                "stateful_session",
                "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
            ),
        ],
    ),
    (
        "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
        &[m("cookie", "envoy.type.http.v3.Cookie")],
    ),
    (
        "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
        &[p("name")],
    ),
    (
        "envoy.extensions.matching.input_matchers.ip.v3.Ip",
        &[
            rm("cidr_ranges", "envoy.config.core.v3.CidrRange"),
            p("stat_prefix"),
        ],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.SourceIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DirectSourceIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.SourcePortInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DestinationIPInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.DestinationPortInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.network.v3.ServerNameInput",
        &[],
    ),
    (
        "envoy.extensions.matching.common_inputs.ssl.v3.UriSanInput",
        &[],
    ),
    // The load balancing policies (`super::lb_policy`).
    (
        LOCALITY_LB,
        &[
            p("zone_aware_lb_config"),
            m("locality_weighted_lb_config", LOCALITY_WEIGHTED),
        ],
    ),
    (LOCALITY_WEIGHTED, &[]),
    (
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin",
        &[p("slow_start_config"), m("locality_lb_config", LOCALITY_LB)],
    ),
    (
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
        &[
            m("choice_count", UINT32_VALUE),
            m("active_request_bias", "envoy.config.core.v3.RuntimeDouble"),
            p("slow_start_config"),
            m("locality_lb_config", LOCALITY_LB),
            m("enable_full_scan", BOOL_VALUE),
            p("selection_method"),
            p("connection_aware_lb_config"),
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.random.v3.Random",
        &[m("locality_lb_config", LOCALITY_LB)],
    ),
    (
        "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
        &[
            m("table_size", UINT64_VALUE),
            p("consistent_hashing_lb_config"),
            m("locality_weighted_lb_config", LOCALITY_WEIGHTED),
        ],
    ),
    (
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
        &[
            p("hash_function"),
            m("minimum_ring_size", UINT64_VALUE),
            m("maximum_ring_size", UINT64_VALUE),
            p("use_hostname_for_hashing"),
            m("hash_balance_factor", UINT32_VALUE),
            p("consistent_hashing_lb_config"),
            m("locality_weighted_lb_config", LOCALITY_WEIGHTED),
        ],
    ),
];

#[cfg(test)]
mod tests {
    use super::super::lb_policy as lb;
    use super::*;
    use serde::de::DeserializeOwned;

    /// The field names a serde derive (with `deny_unknown_fields`) reads, from its error for
    /// an unknown one: "unknown field `\u{1}`, expected one of `a`, `b`" (or "expected `a`",
    /// or "there are no fields").
    fn serde_fields<T: DeserializeOwned>() -> Vec<String> {
        let e = serde_json::from_value::<T>(serde_json::json!({"\u{1}": 0}))
            .err()
            .expect("an unknown field is an error")
            .to_string();
        let mut names: Vec<String> = e.split('`').skip(3).step_by(2).map(String::from).collect();
        names.sort();
        names
    }

    fn table(name: &str) -> Vec<String> {
        let (_, fields) = JSON_MESSAGES
            .iter()
            .find(|(n, _)| *n == name)
            .unwrap_or_else(|| panic!("{name} is not in JSON_MESSAGES"));
        let mut names: Vec<String> = fields.iter().map(|f| f.name.to_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn tls_parameters_are_the_descriptors_and_compliance_policies() {
        use prost::Message;
        use xds_api::pb::google::protobuf::FileDescriptorSet;
        let set = FileDescriptorSet::decode(xds_api::FILE_DESCRIPTOR_SET).unwrap();
        let d = set
            .file
            .iter()
            .filter(|f| f.package() == "envoy.extensions.transport_sockets.tls.v3")
            .flat_map(|f| &f.message_type)
            .find(|m| m.name() == "TlsParameters")
            .expect("xds-api describes TlsParameters");
        let mut want: Vec<String> = d.field.iter().map(|f| f.name().to_owned()).collect();
        // What `xds-api` 0.2 lacks (see the struct), read by either name.
        want.extend(["compliance_policies".into(), "compliancePolicies".into()]);
        want.sort();
        assert_eq!(serde_fields::<TlsParameters>(), want);
    }

    #[test]
    fn json_messages_list_every_serde_field() {
        macro_rules! same {
            ($($t:ty => $name:expr),* $(,)?) => {$(
                assert_eq!(table($name), serde_fields::<$t>(), "{}", $name);
            )*};
        }
        const TCP: &str = "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
        const TLS: &str = "envoy.extensions.transport_sockets.tls.v3";
        const HTTP: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
        const LB: &str = "envoy.extensions.load_balancing_policies";
        same!(
            TcpProxy => TCP,
            TcpTunnelingConfig => &format!("{TCP}.TunnelingConfig"),
            TcpWeightedCluster => &format!("{TCP}.WeightedCluster"),
            TcpClusterWeight => &format!("{TCP}.WeightedCluster.ClusterWeight"),
            UpstreamTlsContext => &format!("{TLS}.UpstreamTlsContext"),
            DownstreamTlsContext => &format!("{TLS}.DownstreamTlsContext"),
            CommonTlsContext => &format!("{TLS}.CommonTlsContext"),
            CombinedValidationContext =>
                &format!("{TLS}.CommonTlsContext.CombinedCertificateValidationContext"),
            UpstreamHttpProtocolOptions => HTTP,
            ProtocolConfig => &format!("{HTTP}.ExplicitHttpConfig"),
            AutoHttpConfig => &format!("{HTTP}.AutoHttpConfig"),
            ProtocolConfig => &format!("{HTTP}.UseDownstreamHttpConfig"),
            UuidRequestIdConfig => "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            CustomHeaderConfig =>
                "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig",
            HttpFault => "envoy.extensions.filters.http.fault.v3.HTTPFault",
            FaultDelay => "envoy.extensions.filters.common.fault.v3.FaultDelay",
            FromHeader => "envoy.extensions.filters.common.fault.v3.FaultDelay.HeaderDelay",
            FaultAbort => "envoy.extensions.filters.http.fault.v3.FaultAbort",
            FromHeader => "envoy.extensions.filters.http.fault.v3.FaultAbort.HeaderAbort",
            Cors => "envoy.extensions.filters.http.cors.v3.Cors",
            CorsPolicy => "envoy.extensions.filters.http.cors.v3.CorsPolicy",
            LocalRateLimit => "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            BasicAuth => "envoy.extensions.filters.http.basic_auth.v3.BasicAuth",
            Compressor => COMPRESSOR,
            CompressorCommonDirection => COMPRESSOR_COMMON,
            CompressorRequestDirection =>
                "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig",
            CompressorResponseDirection =>
                "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
            CompressorPerRoute => "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute",
            ListenerProxyProtocol =>
                "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol",
            ProxyProtocolUpstreamTransport =>
                "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport",
            ProxyProtocolConfig => PROXY_PROTOCOL_CONFIG,
            TlvEntry => TLV_ENTRY,
            CompressorOverrides =>
                "envoy.extensions.filters.http.compressor.v3.CompressorOverrides",
            ResponseDirectionOverrides =>
                "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides",
            Gzip => "envoy.extensions.compression.gzip.compressor.v3.Gzip",
            Brotli => "envoy.extensions.compression.brotli.compressor.v3.Brotli",
            Zstd => "envoy.extensions.compression.zstd.compressor.v3.Zstd",
            ExtAuthz => "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            ExtAuthzHttpService => EXT_AUTHZ_HTTP_SERVICE,
            AuthorizationRequest =>
                "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
            AuthorizationResponse =>
                "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
            ExtAuthzPerRoute => "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            ExtAuthzCheckSettings => "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
            ExtAuthzBufferSettings => EXT_AUTHZ_BUFFER,
            ExternalProcessor => "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            ExtProcForwardRules => EXT_PROC_FORWARD,
            ExtProcPerRoute => "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            ExtProcOverrides => EXT_PROC_OVERRIDES,
            HttpRateLimit => "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            RouteRateLimit => ROUTE_RATE_LIMIT,
            JwtAuthentication => "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            JwtProvider => JWT_PROVIDER,
            RemoteJwks => "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
            JwtHeader => "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
            JwtClaimToHeader => "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
            JwtRequirement => JWT_REQUIREMENT,
            JwtRequirementList => JWT_REQUIREMENT_LIST,
            ProviderWithAudiences =>
                "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
            JwtRequirementRule => "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
            JwtPerRoute => "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig",
            ApiKeyAuth => "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            ApiKeyAuthPerRoute =>
                "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute",
            ApiKeyCredential => API_KEY_CREDENTIAL,
            ApiKeySource => API_KEY_SOURCE,
            ApiKeyForwarding => API_KEY_FORWARDING,
            HitsAddend => HITS_ADDEND,
            RateLimitAction => RATE_LIMIT_ACTION,
            GenericKey => GENERIC_KEY,
            HeaderValueMatch => HEADER_VALUE_MATCH,
            RemoteAddressMatch => REMOTE_ADDRESS_MATCH,
            AddressMatcher => ADDRESS_MATCHER,
            RateLimitPerRoute => "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute",
            BasicAuthPerRoute => "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute",
            CsrfPolicy => "envoy.extensions.filters.http.csrf.v3.CsrfPolicy",
            HttpRbac => "envoy.extensions.filters.http.rbac.v3.RBAC",
            HttpRbacPerRoute => "envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            NetworkRbac => "envoy.extensions.filters.network.rbac.v3.RBAC",
            IpMatcher => "envoy.extensions.matching.input_matchers.ip.v3.Ip",
            HealthCheckFilter => "envoy.extensions.filters.http.health_check.v3.HealthCheck",
            StatefulSession => "envoy.extensions.filters.http.stateful_session.v3.StatefulSession",
            StatefulSessionPerRoute =>
                "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute",
            CookieSessionState =>
                "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState",
            HeaderSessionState =>
                "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState",
            lb::LocalityLbConfig => LOCALITY_LB,
            lb::LocalityWeightedLbConfig => LOCALITY_WEIGHTED,
            lb::RoundRobin => &format!("{LB}.round_robin.v3.RoundRobin"),
            lb::LeastRequest => &format!("{LB}.least_request.v3.LeastRequest"),
            lb::Random => &format!("{LB}.random.v3.Random"),
            lb::Maglev => &format!("{LB}.maglev.v3.Maglev"),
            lb::RingHash => &format!("{LB}.ring_hash.v3.RingHash"),
        );
        for name in INPUTS_WITHOUT_SETTINGS {
            assert_eq!(table(name), serde_fields::<NoSettings>(), "{name}");
        }
        assert_eq!(
            JSON_MESSAGES.len(),
            81 + 9 + INPUTS_WITHOUT_SETTINGS.len(),
            "a message of JSON_MESSAGES is not checked above"
        );
    }
}
