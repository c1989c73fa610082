//! Listeners: which configuration serves a connection, chosen by the captured
//! connection's original destination (or by the socket it was accepted on when the
//! listener binds its own port), then a filter chain inside it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::cluster::{CertificateSource, ValidationSource};
use super::opt_duration_str;
use super::proxy_protocol::ProxyProtocolListener;
use super::rbac::RbacConfig;
use super::route::RouteConfiguration;

/// A listener (Envoy `config.listener.v3.Listener`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Listener {
    /// Unique name (the LDS resource name).
    pub name: String,
    /// The address captured connections were going to (or the address to bind).
    /// An unspecified IP (`0.0.0.0`, `::`) matches any address with this port.
    pub address: SocketAddr,
    /// Bind a real socket on `address` (a plain reverse-proxy listener). When false the
    /// listener only serves captured connections handed over by original destination.
    pub bind_to_port: bool,
    /// `socket_address.ipv4_compat`: a listener on `::` takes IPv4 connections too (a bound
    /// one as a dual-stack socket; a captured one for IPv4 destinations of its port that no
    /// `0.0.0.0` listener takes). Without it a `::` listener is IPv6 only, as in Envoy.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ipv4_compat: bool,
    /// Filter chains, tried by [`FilterChainMatch`] (most specific wins, as in Envoy).
    pub filter_chains: Vec<FilterChain>,
    /// Serves connections no filter chain matches; without it they are closed.
    pub default_filter_chain: Option<FilterChain>,
    /// What its listener filters do before a filter chain is picked.
    #[serde(skip_serializing_if = "ListenerFilters::is_default")]
    pub listener_filters: ListenerFilters,
}

/// A listener's filters that act (`tls_inspector`, `http_inspector` and `original_dst` are
/// what Myelin does anyway) and the bound on them all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerFilters {
    /// `envoy.filters.listener.proxy_protocol`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<ProxyProtocolListener>,
    /// `listener_filters_timeout`: how long reading a PROXY protocol header and a TLS
    /// ClientHello may take together (default [`DEFAULT_LISTENER_FILTERS_TIMEOUT`]; `None`:
    /// no bound, `0s` in the config).
    #[serde(serialize_with = "opt_duration_str")]
    pub timeout: Option<Duration>,
    /// `continue_on_listener_filters_timeout`: a connection whose listener filters time out
    /// is served with what they found so far (else it is closed).
    pub continue_on_timeout: bool,
}

/// Envoy's default `listener_filters_timeout`.
pub const DEFAULT_LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for ListenerFilters {
    fn default() -> Self {
        Self {
            proxy_protocol: None,
            timeout: Some(DEFAULT_LISTENER_FILTERS_TIMEOUT),
            continue_on_timeout: false,
        }
    }
}

impl ListenerFilters {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A filter chain: match criteria and the terminal network filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterChain {
    /// Name (for logs and `/config_dump`); may be empty.
    pub name: String,
    /// Which connections this chain takes.
    pub filter_chain_match: FilterChainMatch,
    /// RBAC network filters (`envoy.filters.network.rbac`) before `filter`, in order:
    /// each decides once per connection, after the TLS handshake when the chain
    /// terminates TLS; one that denies closes the connection.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub rbac: Arc<[RbacConfig]>,
    /// What serves the connection.
    pub filter: NetworkFilter,
    /// TLS the proxy terminates before the filter (`transport_socket`
    /// `envoy.transport_sockets.tls`); `None`: the bytes as they come (`raw_buffer`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<DownstreamTls>,
    /// `transport_socket_connect_timeout`: how long the TLS handshake may take; `None`:
    /// [`DEFAULT_TLS_HANDSHAKE_TIMEOUT`].
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_duration_str"
    )]
    pub handshake_timeout: Option<Duration>,
}

/// How long a downstream TLS handshake may take when its filter chain does not say
/// (Envoy has no bound by default; a node proxy does not keep a silent client forever).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Downstream TLS of a filter chain (Envoy `DownstreamTlsContext`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownstreamTls {
    /// The certificates served (at least one), inline or by SDS name; per handshake the
    /// first whose DNS SANs cover the client's SNI, else the first.
    pub certificates: Vec<CertificateSource>,
    /// How client certificates are verified; `None`: none is asked for.
    pub validation: Option<ValidationSource>,
    /// `require_client_certificate`: a client without a valid certificate is refused.
    pub require_client_certificate: bool,
    /// `require_sni`: a client that sends no SNI is refused.
    pub require_sni: bool,
    /// ALPN protocols offered, in the server's order of preference (empty: no ALPN).
    pub alpn_protocols: Vec<String>,
    /// `tls_params.tls_minimum_protocol_version` (`None`: TLS 1.2, Envoy's default).
    pub min_version: Option<TlsVersion>,
    /// `tls_params.tls_maximum_protocol_version` (`None`: TLS 1.3).
    pub max_version: Option<TlsVersion>,
    /// `tls_params` cipher suites, curves and signature algorithms.
    #[serde(skip_serializing_if = "TlsAlgorithms::is_default")]
    pub algorithms: TlsAlgorithms,
    /// `disable_stateless_session_resumption`: no session tickets.
    pub disable_stateless_resumption: bool,
    /// `disable_stateful_session_resumption`: no session-ID cache.
    pub disable_stateful_resumption: bool,
    /// `prefer_client_ciphers`: the client's cipher order wins (Envoy's default: the
    /// server's).
    pub prefer_client_ciphers: bool,
}

/// A TLS context's `tls_params` restrictions beyond the versions (`crate::tls::params`):
/// BoringSSL names Myelin speaks, in the config's order. `None`: the defaults; `Some` with
/// names left out that Myelin knows but does not speak (the converter leaves them out).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsAlgorithms {
    /// `cipher_suites`: the TLS 1.2 suites (TLS 1.3's are not configurable, as in Envoy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher_suites: Option<Vec<String>>,
    /// `ecdh_curves`: the key exchange groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecdh_curves: Option<Vec<String>>,
    /// `signature_algorithms`: what the peer may sign with and what this side signs with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signature_algorithms: Option<Vec<String>>,
}

impl TlsAlgorithms {
    /// Whether it narrows nothing.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// A TLS protocol version Myelin speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    /// TLS 1.2.
    #[serde(rename = "TLSv1_2")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLSv1_3")]
    Tls13,
}

/// Envoy `FilterChainMatch`: every set criterion must hold; empty lists and `None`
/// match anything.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct FilterChainMatch {
    /// The original destination port.
    pub destination_port: Option<u16>,
    /// The original destination address is in one of these ranges.
    pub prefix_ranges: Vec<CidrRange>,
    /// TLS SNI: exact names or `*.suffix` wildcards.
    pub server_names: Vec<String>,
    /// `raw_buffer` or `tls` (as detected).
    pub transport_protocol: Option<String>,
    /// ALPN or detected protocol names (`h2c`, `http/1.1`, ...).
    pub application_protocols: Vec<String>,
}

/// An address range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CidrRange {
    /// The network address.
    pub address: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

impl CidrRange {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let bits = u32::from(self.prefix_len.min(32));
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let bits = u32::from(self.prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The terminal network filter of a chain.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkFilter {
    /// `envoy.filters.network.http_connection_manager`.
    /// Boxed: the largest variant by far, and a listener is config, built once per update.
    HttpConnectionManager(Box<HttpConnectionManager>),
    /// `envoy.filters.network.tcp_proxy`.
    TcpProxy(TcpProxy),
}

/// HTTP connection manager settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpConnectionManager {
    /// Stats prefix (kept for `/config_dump`; metrics use Myelin's own labels).
    pub stat_prefix: String,
    /// Where the routes come from.
    pub route: RouteSource,
    /// Whole-request timeout (`request_timeout`); `None`: disabled (Envoy's default).
    #[serde(serialize_with = "opt_duration_str")]
    pub request_timeout: Option<Duration>,
    /// `request_headers_timeout`: from a request head's first byte to its last (HTTP/1.1);
    /// `None`: no limit (Envoy's default).
    #[serde(serialize_with = "opt_duration_str")]
    pub request_headers_timeout: Option<Duration>,
    /// Idle time of a stream before it is reset (`stream_idle_timeout`); Envoy default
    /// 5 min, `None`: disabled.
    #[serde(serialize_with = "opt_duration_str")]
    pub stream_idle_timeout: Option<Duration>,
    /// Idle time of a downstream connection with no streams
    /// (`common_http_protocol_options.idle_timeout`); Envoy default 1 h, `None`: disabled.
    #[serde(serialize_with = "opt_duration_str")]
    pub idle_timeout: Option<Duration>,
    /// The longest a stream may last from its start
    /// (`common_http_protocol_options.max_stream_duration`), unless its route says
    /// otherwise; `None`: no bound (Envoy's default).
    #[serde(serialize_with = "opt_duration_str")]
    pub max_stream_duration: Option<Duration>,
    /// Upgrade types (`Upgrade:` header values, lowercase, e.g. `websocket`; `connect` for
    /// the CONNECT method) proxied upstream (`upgrade_configs`); other upgrades are
    /// refused with 403, as in Envoy.
    pub upgrade_types: Vec<String>,
    /// What an HTTP/2 client is told in SETTINGS (`http2_protocol_options`).
    pub http2: Http2Settings,
    /// What the connection manager itself does to every request's and response's headers.
    /// Shared: every connection of the listener holds it.
    pub headers: Arc<HeaderHandling>,
    /// `max_request_headers_kb`: a request whose head (HTTP/1.1: request line and header
    /// fields) or header list (HTTP/2, as RFC 9113 counts it) is larger is answered 431.
    pub max_request_headers_kb: u32,
    /// The listener's `per_connection_buffer_limit_bytes` (Envoy's default 1 MiB), which
    /// Envoy's connection manager makes the limit of what a request's filters hold of a body
    /// (external processing's whole bodies: longer ones are a 413 or 500) and of the
    /// request body kept for retries (with the route's `per_request_buffer_limit_bytes`);
    /// `0`: no limit, as in Envoy. Reads and writes are bounded by backpressure, not by it.
    pub buffer_limit: u32,
    /// The HTTP filters before the router, in order (shared by the listener's connections).
    pub http_filters: Arc<super::filter::HttpFilters>,
    /// What request headers its codec takes (`common_http_protocol_options`).
    pub header_limits: HeaderLimits,
    /// `local_reply_config`: how the proxy's own replies are rewritten.
    pub local_reply: Option<Arc<super::local_reply::LocalReplyConfig>>,
}

/// A connection manager's rules for request header fields, checked before anything else
/// reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HeaderLimits {
    /// `max_headers_count`: more fields than this are answered 431 (default 100, Envoy's).
    pub max_count: u32,
    /// `headers_with_underscores_action`.
    pub underscores: UnderscoreAction,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_count: DEFAULT_MAX_HEADERS_COUNT,
            underscores: UnderscoreAction::Allow,
        }
    }
}

/// Envoy's default `max_headers_count`.
pub const DEFAULT_MAX_HEADERS_COUNT: u32 = 100;

/// `headers_with_underscores_action`: what becomes of a request header whose name has an
/// underscore (a name some servers read as the same as its dashed form).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnderscoreAction {
    /// Kept (Envoy's default).
    #[default]
    Allow,
    /// The request is answered 400.
    RejectRequest,
    /// The header is removed.
    DropHeader,
}

/// Envoy's default `max_request_headers_kb`, also what connections without a connection
/// manager get.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;

/// Envoy's default listener `per_connection_buffer_limit_bytes`, also what connections
/// without a connection manager get.
pub const DEFAULT_BUFFER_LIMIT: u32 = 1 << 20;

/// A buffer limit in bytes (`0`: none, as Envoy reads it).
pub fn buffer_limit_bytes(limit: u32) -> usize {
    match limit {
        0 => usize::MAX,
        n => n as usize,
    }
}

/// What a connection manager does to the headers of every request before its routes see it,
/// and of every response (upstream or local) before the client does: Envoy's
/// `ConnectionManagerUtility`. The defaults are Envoy's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeaderHandling {
    /// `use_remote_address`: the client is the connection's peer (its address is appended
    /// to `x-forwarded-for`, `x-forwarded-proto` is overwritten); otherwise the client is
    /// whatever `x-forwarded-for` says (Envoy's default).
    pub use_remote_address: bool,
    /// `xff_num_trusted_hops`: proxies in front of this one whose `x-forwarded-for` entries
    /// are trusted.
    pub xff_num_trusted_hops: u32,
    /// `skip_xff_append`: with `use_remote_address`, leave `x-forwarded-for` as it came.
    pub skip_xff_append: bool,
    /// `internal_address_config.cidr_ranges`: clients counted as internal (they keep their
    /// `x-envoy-*` request headers and get `x-envoy-internal: true`). Empty: none is, as in
    /// Envoy since 1.36.
    pub internal_cidrs: Vec<CidrRange>,
    /// `via`: appended to the `via` header of requests and responses.
    pub via: Option<HeaderText>,
    /// `generate_request_id` (default on): a request without `x-request-id`, or an edge
    /// request (see [`HeaderHandling::use_remote_address`]) unless
    /// `preserve_external_request_id`, gets a new UUID.
    pub generate_request_id: bool,
    /// `preserve_external_request_id`.
    pub preserve_external_request_id: bool,
    /// `always_set_request_id_in_response`: the response carries the request's
    /// `x-request-id`.
    pub always_set_request_id_in_response: bool,
    /// The `server` response header (`server_name`, `server_header_transformation`).
    pub server: ServerHeader,
    /// What is done to every request's path before routing (and forwarding).
    pub path: PathNormalization,
    /// What is done to every request's host before routing (and forwarding).
    pub host: HostNormalization,
    /// `scheme_header_transformation.scheme_to_overwrite`: every request's scheme (HTTP/2's
    /// `:scheme`, and `x-forwarded-proto`) becomes this one. `None` (the default): the
    /// request's own, as Envoy reads it (HTTP/2's `:scheme`, an absolute URI's, else
    /// `x-forwarded-proto` after the rules above).
    pub scheme_to_overwrite: Option<RequestScheme>,
    /// `scheme_header_transformation.match_upstream`: an HTTP/2 upstream is sent `https`
    /// when the request goes over TLS (a cluster with upstream TLS: the HBONE tunnel),
    /// else `http`. Routes still see the request's own scheme.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scheme_match_upstream: bool,
    /// `original_ip_detection_extensions` with the custom header extension: the client is
    /// the address this header names (instead of `x-forwarded-for`'s; `use_remote_address`
    /// cannot be set with it, as in Envoy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_address_header: Option<ClientAddressHeader>,
    /// `http_protocol_options.accept_http_10`, `default_host_for_http_10`.
    pub http10: Http10,
    /// `forward_client_cert_details`: what becomes of a request's
    /// `x-forwarded-client-cert` (XFCC).
    pub forward_client_cert: ForwardClientCert,
    /// `set_current_client_cert_details`: what an `APPEND_FORWARD` or `SANITIZE_SET` XFCC
    /// element says of the client's certificate. No connection manager here terminates the
    /// client's TLS yet (captured connections come in plain), so these are kept, not used.
    pub client_cert_details: ClientCertDetails,
}

/// What a connection manager does with HTTP/1.0 requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Http10 {
    /// Envoy's default: answered 426 `Upgrade Required`.
    #[default]
    Refuse,
    /// `accept_http_10`: served; one without a `Host` gets `default_host_for_http_10`'s
    /// when it is set.
    Accept { default_host: Option<String> },
}

/// Envoy's `envoy.extensions.http.original_ip_detection.custom_header`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClientAddressHeader {
    /// `header_name` (lowercase); its first value, an IP address, is the client's.
    pub name: String,
    /// `allow_extension_to_set_address_as_trusted`: the address found may make the request
    /// internal (by `internal_address_config`).
    pub trusted: bool,
    /// `reject_with_status`: a request without an address there is answered this (403
    /// when the code given is outside 400..=511, as Envoy); `None`: the client is the
    /// connection's peer then, not trusted.
    pub reject_status: Option<u16>,
}

/// `forward_client_cert_details` (XFCC, `x-forwarded-client-cert`). Over a connection
/// without a client certificate, every mode but `AlwaysForwardOnly` removes the header
/// (Envoy's rule): a client cannot claim another's identity with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardClientCert {
    /// `SANITIZE` (Envoy's default): always removed.
    #[default]
    Sanitize,
    /// `FORWARD_ONLY`: kept when the client connection is mutual TLS.
    ForwardOnly,
    /// `APPEND_FORWARD`: with mutual TLS, the client's certificate details appended.
    AppendForward,
    /// `SANITIZE_SET`: with mutual TLS, replaced by the client's certificate details.
    SanitizeSet,
    /// `ALWAYS_FORWARD_ONLY`: always kept as it came.
    AlwaysForwardOnly,
}

/// `set_current_client_cert_details`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClientCertDetails {
    pub subject: bool,
    pub cert: bool,
    pub chain: bool,
    pub dns: bool,
    pub uri: bool,
}

impl Default for HeaderHandling {
    fn default() -> Self {
        Self {
            use_remote_address: false,
            xff_num_trusted_hops: 0,
            skip_xff_append: false,
            internal_cidrs: Vec::new(),
            via: None,
            generate_request_id: true,
            preserve_external_request_id: false,
            always_set_request_id_in_response: false,
            server: ServerHeader::Overwrite(HeaderText::from_static(ServerHeader::DEFAULT_NAME)),
            path: PathNormalization::default(),
            host: HostNormalization::default(),
            scheme_to_overwrite: None,
            scheme_match_upstream: false,
            client_address_header: None,
            http10: Http10::Refuse,
            forward_client_cert: ForwardClientCert::Sanitize,
            client_cert_details: ClientCertDetails::default(),
        }
    }
}

/// The connection manager's path normalization, applied in this order to the path (not the
/// query) of every request that has one, before routing; the result is what routes match and
/// what goes upstream. All off by default, as in Envoy. The logic is `crate::path`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PathNormalization {
    /// `path_with_escaped_slashes_action`: what happens to `%2F` and `%5C` (either case).
    pub escaped_slashes: EscapedSlashes,
    /// `normalize_path`: RFC 3986 normalization as Envoy does it (dot segments removed,
    /// unreserved characters decoded, `\` read as `/`); a path with a NUL is refused (400).
    pub normalize: bool,
    /// `merge_slashes`: runs of `/` become one.
    pub merge_slashes: bool,
}

/// A request's scheme as routes see it (`:scheme`) and redirects keep it: the two Envoy
/// takes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestScheme {
    #[default]
    Http,
    Https,
}

impl RequestScheme {
    /// `http` or `https`, read without regard to case (as Envoy's `schemeIsValid`).
    pub fn parse(s: &[u8]) -> Option<Self> {
        if s.eq_ignore_ascii_case(b"http") {
            Some(Self::Http)
        } else if s.eq_ignore_ascii_case(b"https") {
            Some(Self::Https)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }
}

/// A connection manager's rules for a request's host (`Host`, or HTTP/2's `:authority`):
/// applied before routing, so they also change what goes upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct HostNormalization {
    /// `strip_matching_host_port` / `strip_any_host_port`.
    pub strip_port: StripPort,
    /// `strip_trailing_host_dot`: `example.com.` becomes `example.com` (and
    /// `example.com.:80` `example.com:80`).
    pub strip_trailing_dot: bool,
}

impl HostNormalization {
    /// Whether any rule is on (when none is, a request's host is not looked at).
    pub fn any(&self) -> bool {
        self.strip_port != StripPort::Keep || self.strip_trailing_dot
    }
}

/// Which port is taken off a request's host (never a `CONNECT`'s, whose authority is its
/// destination).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StripPort {
    /// None (Envoy's default).
    #[default]
    Keep,
    /// `strip_matching_host_port`: the port the request came to (the listener's).
    Matching,
    /// `strip_any_host_port`: any port.
    Any,
}

impl PathNormalization {
    /// Whether any step is on (when none is, a request's path is not even looked at).
    pub fn any(&self) -> bool {
        self.normalize
            || self.merge_slashes
            || self.escaped_slashes != EscapedSlashes::KeepUnchanged
    }
}

/// `path_with_escaped_slashes_action`: what a connection manager does with a path that has
/// escaped slashes (`%2F`, `%2f`, `%5C`, `%5c`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// `KEEP_UNCHANGED`, and Envoy's `IMPLEMENTATION_SPECIFIC_DEFAULT`: nothing.
    #[default]
    KeepUnchanged,
    /// `REJECT_REQUEST`: answer 400.
    RejectRequest,
    /// `UNESCAPE_AND_REDIRECT`: answer 307 with the unescaped (and otherwise normalized)
    /// path as `location`; to a gRPC request, 400.
    UnescapeAndRedirect,
    /// `UNESCAPE_AND_FORWARD`: unescape (`%2F` to `/`, `%5C` to `\`) and go on.
    UnescapeAndForward,
}

/// The `server` header of responses (`server_header_transformation`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServerHeader {
    /// `OVERWRITE` (Envoy's default): always this name.
    Overwrite(HeaderText),
    /// `APPEND_IF_ABSENT`: this name when the upstream sent none.
    AppendIfAbsent(HeaderText),
    /// `PASS_THROUGH`: the upstream's, or none.
    PassThrough,
}

impl ServerHeader {
    /// `server_name` when the connection manager names none (Envoy's is `envoy`).
    pub const DEFAULT_NAME: &'static str = "myelin";
}

/// A header value from config, checked once when the config is built: a request clones it
/// (a reference count), it does not parse or copy it. Shown as its text in `/config_dump`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderText(http::HeaderValue);

impl HeaderText {
    /// `text`, if it is a valid header value.
    pub fn new(text: &str) -> Option<Self> {
        http::HeaderValue::from_str(text).ok().map(Self)
    }

    /// A constant value (it must be a valid header value).
    pub const fn from_static(text: &'static str) -> Self {
        Self(http::HeaderValue::from_static(text))
    }

    /// The value.
    pub fn value(&self) -> &http::HeaderValue {
        &self.0
    }

    /// The value as text (a valid header value is visible ASCII or more).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }
}

impl Serialize for HeaderText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// The HTTP/2 settings a connection manager announces to its clients
/// (`http2_protocol_options`). Unset fields take Myelin's defaults, which bound what one
/// client connection can make the node buffer (Envoy's are 2^31-1 streams and 256 MiB
/// windows; a control plane that wants those says so).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Http2Settings {
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`: streams beyond it are refused (`REFUSED_STREAM`).
    pub max_concurrent_streams: u32,
    /// `SETTINGS_INITIAL_WINDOW_SIZE`: request body bytes a stream may send before the
    /// proxy has passed them on.
    pub initial_stream_window_size: u32,
    /// The connection's receive window, raised to this with a `WINDOW_UPDATE`.
    pub initial_connection_window_size: u32,
    /// `SETTINGS_HEADER_TABLE_SIZE`: the HPACK dynamic table the client may use.
    pub hpack_table_size: u32,
    /// PINGs to the client, the connection closed when one goes unanswered
    /// (`connection_keepalive`); `None`: none.
    pub connection_keepalive: Option<crate::model::cluster::Http2Keepalive>,
    /// `allow_connect`: announce `SETTINGS_ENABLE_CONNECT_PROTOCOL` and take extended
    /// CONNECT requests (RFC 8441, e.g. WebSocket over HTTP/2), which are upgrades of the
    /// type their `:protocol` names, allowed or refused by `upgrade_configs` like the
    /// HTTP/1.1 ones.
    pub allow_connect: bool,
}

impl Http2Settings {
    /// Myelin's default `SETTINGS_MAX_CONCURRENT_STREAMS`.
    pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 200;
    /// Myelin's default stream and connection windows (1 MiB).
    pub const DEFAULT_WINDOW: u32 = 1 << 20;
    /// The HPACK table every HTTP/2 peer starts with (RFC 7541).
    pub const DEFAULT_HPACK_TABLE_SIZE: u32 = 4096;
}

impl Default for Http2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: Self::DEFAULT_MAX_CONCURRENT_STREAMS,
            initial_stream_window_size: Self::DEFAULT_WINDOW,
            initial_connection_window_size: Self::DEFAULT_WINDOW,
            hpack_table_size: Self::DEFAULT_HPACK_TABLE_SIZE,
            connection_keepalive: None,
            allow_connect: false,
        }
    }
}

/// Routes of an HTTP connection manager.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteSource {
    /// Fetched over RDS under this name.
    Rds(String),
    /// Given inline.
    Inline(RouteConfiguration),
}

/// TCP proxy settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpProxy {
    /// Stats prefix (kept for `/config_dump`).
    pub stat_prefix: String,
    /// Where connections go.
    pub cluster: TcpCluster,
    /// Close after this long with no bytes either way; Envoy default 1 h, `None`: disabled.
    #[serde(serialize_with = "opt_duration_str")]
    pub idle_timeout: Option<Duration>,
    /// `tunneling_config`: the bytes go to the cluster's endpoint inside an HTTP `CONNECT`
    /// (HTTP/2 or HTTP/1.1, as the cluster speaks) instead of over plain TCP.
    pub tunneling: Option<Tunneling>,
}

/// How a TCP proxy tunnels its connections (`tunneling_config`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tunneling {
    /// The `CONNECT`'s authority: literal text with `%DOWNSTREAM_LOCAL_ADDRESS%` and
    /// `%DOWNSTREAM_LOCAL_PORT%` (the connection's original destination) filled in.
    pub hostname: String,
    /// Headers added to the `CONNECT`.
    pub headers_to_add: Vec<super::route::HeaderValueOption>,
}

impl Tunneling {
    /// The `CONNECT`'s authority for a connection to `dst` (its original destination, or
    /// the listener's address).
    pub fn authority(&self, dst: SocketAddr) -> String {
        self.hostname
            .replace("%DOWNSTREAM_LOCAL_ADDRESS%", &dst.to_string())
            .replace("%DOWNSTREAM_LOCAL_PORT%", &dst.port().to_string())
    }
}

/// Upstream of a TCP proxy.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpCluster {
    /// One cluster.
    Cluster(String),
    /// A cluster picked per connection by weight.
    Weighted(Vec<WeightedCluster>),
}

/// A cluster and its weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WeightedCluster {
    /// Cluster name.
    pub name: String,
    /// Relative weight (at least 1).
    pub weight: u32,
    /// What a route's request does when it goes to this cluster (`ClusterWeight`'s header
    /// changes and host rewrite); `None`: nothing of its own (always for TCP proxies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<Box<ClusterRouting>>,
}

/// A route's changes for one of its weighted clusters (Gateway API's filters on one
/// `backendRef`, as Envoy Gateway writes them).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ClusterRouting {
    /// Its header changes, made before the route's (the most specific first, as Envoy).
    pub headers: super::route::HeaderMutation,
    /// `host_rewrite_literal`: the request's `Host`, instead of what the route sets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_rewrite: Option<String>,
}

/// Envoy's default TCP and HTTP connection idle timeout.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Envoy's default HTTP stream idle timeout.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_contains() {
        let r = |a: &str, p| CidrRange {
            address: a.parse().unwrap(),
            prefix_len: p,
        };
        let cases = [
            (r("10.0.0.0", 8), "10.1.2.3", true),
            (r("10.0.0.0", 8), "11.1.2.3", false),
            (r("10.0.0.0", 0), "1.2.3.4", true),
            (r("10.0.0.7", 32), "10.0.0.7", true),
            (r("10.0.0.0", 8), "::ffff:10.0.0.1", true),
            (r("fd00::", 16), "fd00:1::1", true),
            (r("fd00::", 16), "fd01::1", false),
            (r("fd00::", 16), "10.0.0.1", false),
        ];
        for (range, ip, want) in cases {
            assert_eq!(range.contains(ip.parse().unwrap()), want, "{range:?} {ip}");
        }
    }
}
