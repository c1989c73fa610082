//! The PROXY protocol (HAProxy's, v1 text and v2 binary) as listeners read it (Envoy's
//! `envoy.filters.listener.proxy_protocol`) and clusters write it (the transport socket
//! `envoy.transport_sockets.upstream_proxy_protocol`).

use std::sync::Arc;

use serde::Serialize;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum ProxyProtocolVersion {
    /// The text form (`PROXY TCP4 ...\r\n`).
    V1,
    /// The binary form (with TLVs).
    V2,
}

impl ProxyProtocolVersion {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocolVersion::V1 => "v1",
            ProxyProtocolVersion::V2 => "v2",
        }
    }
}

/// Which TLVs of a v2 header pass (`ProxyProtocolPassThroughTLVs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub enum TlvFilter {
    /// The field unset: none.
    #[default]
    None,
    /// `INCLUDE_ALL` (the field set with its default match type): every TLV.
    All,
    /// `INCLUDE`: the TLVs of these types.
    Only(Vec<u8>),
}

impl TlvFilter {
    /// Whether a TLV of type `kind` passes.
    pub fn passes(&self, kind: u8) -> bool {
        match self {
            TlvFilter::None => false,
            TlvFilter::All => true,
            TlvFilter::Only(kinds) => kinds.contains(&kind),
        }
    }
}

/// `envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol`: a connection to the
/// listener opens with a PROXY protocol header, which says whose connection it is (the
/// client's address and the address it connected to, before a proxy or load balancer in
/// front of this one). The header is read before anything else, whatever the order of the
/// listener's filters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProxyProtocolListener {
    /// `allow_requests_without_proxy_protocol`: a connection whose first bytes are not a
    /// header of an allowed version is served as it is.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub optional: bool,
    /// `disallowed_versions`: a header of one of these closes the connection (or, when
    /// `optional`, is served as data).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disallowed: Vec<ProxyProtocolVersion>,
    /// `pass_through_tlvs`: the TLVs of a v2 header kept for the headers of upstream
    /// connections ([`UpstreamProxyProtocol::pass_through`] chooses among them again).
    #[serde(skip_serializing_if = "is_none_filter")]
    pub pass_through: TlvFilter,
    /// `stat_prefix`: the metrics' `stat_prefix` label.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub stat_prefix: Arc<str>,
}

impl ProxyProtocolListener {
    /// Whether headers of `version` are taken.
    pub fn allows(&self, version: ProxyProtocolVersion) -> bool {
        !self.disallowed.contains(&version)
    }
}

/// One TLV the proxy adds to the v2 headers it sends (`TlvEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tlv {
    /// Its type (0-255).
    pub kind: u8,
    /// Its value (not empty).
    pub value: Vec<u8>,
}

/// `envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport`:
/// every upstream connection of the cluster (or of a transport socket match) opens with a
/// PROXY protocol header naming the downstream connection's client and the address it
/// connected to, before anything else (TLS included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamProxyProtocol {
    /// `config.version` (default V1).
    pub version: ProxyProtocolVersion,
    /// `config.pass_through_tlvs`: the downstream header's TLVs sent on (v2).
    #[serde(skip_serializing_if = "is_none_filter")]
    pub pass_through: TlvFilter,
    /// `config.added_tlvs`: TLVs of the proxy's own (v2), ahead of passed-through ones of
    /// other types.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_tlvs: Vec<Tlv>,
}

fn is_none_filter(f: &TlvFilter) -> bool {
    *f == TlvFilter::None
}
