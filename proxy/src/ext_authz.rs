//! External authorization (`envoy.filters.http.ext_authz`, run by [`crate::filters`]): the
//! request is described to a service of the operator's, which says whether it goes on,
//! as Envoy's filter (`ext_authz.cc`) and its two clients (`ext_authz_grpc_impl.cc`,
//! `ext_authz_http_impl.cc`) do:
//!
//! - **gRPC** (`grpc_service`): one `envoy.service.auth.v3.Authorization/Check` call with
//!   the request's attributes (peers, method, path, host, scheme, headers, the route's
//!   `context_extensions`, the metadata namespaces asked for, the start of its body with
//!   `with_request_body`). `status.code` 0 lets the request through with the answer's
//!   header and query changes (`ok_response`); any other code denies it with the answer's
//!   status (403 when none), headers and body (`denied_response`); a failed call, a gRPC
//!   error status or an `error_response` is an error.
//! - **HTTP** (`http_service`): the request's method, `path_prefix` + path, host and
//!   allowed headers (always `authorization`), and the start of its body with
//!   `with_request_body`; `200` lets it through (the `allowed_upstream_headers` of the
//!   answer set on it, `x-envoy-auth-headers-to-remove` removed from it,
//!   `allowed_client_headers_on_success` added to its response), a `5xx` or no answer is
//!   an error, any other status is the answer to the client (with
//!   `allowed_client_headers`, by default all but `host`).
//!
//! A denial is answered with the service's status and flag `UAEX`; an error with
//! `status_on_error` (403 by default) and `UAEX`, unless `failure_mode_allow` lets the
//! request through; an answer whose changes are invalid (with `validate_mutations`) with
//! `500` `UAEX`. The call goes through the connection's own upstream pools
//! ([`crate::services`]), bounded by the service's timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use prost::Message;

use crate::body::ReadAhead;
use crate::filters::{Answer, DynamicMetadata};
use crate::metrics::ProxyMetrics;
use crate::model::ext_authz::{AuthzService, BodySettings, ExtAuthzPolicy, HttpAuthzService};
use crate::model::ext_proc::MutationRules;
use crate::model::filter::GrpcService;
use crate::model::StringMatcher;
use crate::rbac::Subject;
use crate::services::{
    apply, edit_of, Action, Edit, HeaderMapProto, HeaderValueOptionProto, HeaderValueProto, Reply,
    Services,
};
use crate::traffic::router::RequestHead;

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";
const PARTIAL_BODY: &str = "x-envoy-auth-partial-body";
const FAILURE_MODE_ALLOWED: HeaderName =
    HeaderName::from_static("x-envoy-auth-failure-mode-allowed");
/// The headers an HTTP service always gets (Envoy's `toRequestMatchers` with HTTP
/// headers added).
const HTTP_ALWAYS: [&str; 4] = ["authorization", ":method", ":path", ":authority"];

// The messages of `envoy/service/auth/v3/{external_auth,attribute_context}.proto` the proxy
// writes and reads, with their tags there (and the few core and well-known types inside
// them). Declared with prost rather than taken from `xds-api`: the proxy crate carries no
// xDS types (its model is the interface), and `xds-api` 0.2's `CheckResponse` predates
// fields Envoy reads now. The integration test's server uses `xds-api`'s, so the two must
// agree on the tags.

/// `CheckRequest`.
#[derive(Clone, PartialEq, Message)]
struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    attributes: Option<AttributeContext>,
}

/// `AttributeContext`.
#[derive(Clone, PartialEq, Message)]
struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    source: Option<Peer>,
    #[prost(message, optional, tag = "2")]
    destination: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    request: Option<RequestAttributes>,
    #[prost(map = "string, string", tag = "10")]
    context_extensions: HashMap<String, String>,
    #[prost(message, optional, tag = "11")]
    metadata_context: Option<Metadata>,
    #[prost(message, optional, tag = "12")]
    tls_session: Option<TlsSession>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, Message)]
struct Peer {
    #[prost(message, optional, tag = "1")]
    address: Option<Address>,
    #[prost(string, tag = "2")]
    service: String,
    #[prost(string, tag = "4")]
    principal: String,
}

/// `config.core.v3.Address` (its `socket_address`).
#[derive(Clone, PartialEq, Message)]
struct Address {
    #[prost(message, optional, tag = "1")]
    socket_address: Option<SocketAddressProto>,
}

/// `config.core.v3.SocketAddress` (TCP: protocol 0).
#[derive(Clone, PartialEq, Message)]
struct SocketAddressProto {
    #[prost(string, tag = "2")]
    address: String,
    #[prost(uint32, tag = "3")]
    port_value: u32,
}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, Message)]
struct RequestAttributes {
    #[prost(message, optional, tag = "1")]
    time: Option<Timestamp>,
    #[prost(message, optional, tag = "2")]
    http: Option<HttpRequest>,
}

/// `google.protobuf.Timestamp`.
#[derive(Clone, PartialEq, Message)]
struct Timestamp {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, Message)]
struct HttpRequest {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    method: String,
    #[prost(map = "string, string", tag = "3")]
    headers: HashMap<String, String>,
    #[prost(string, tag = "4")]
    path: String,
    #[prost(string, tag = "5")]
    host: String,
    #[prost(string, tag = "6")]
    scheme: String,
    #[prost(int64, tag = "9")]
    size: i64,
    #[prost(string, tag = "10")]
    protocol: String,
    /// `body`, a string in the proto: bytes here, so a body that is not UTF-8 goes as it
    /// is, as Envoy sends it (`pack_as_bytes` is for services that refuse that).
    #[prost(bytes = "bytes", tag = "11")]
    body: Bytes,
    #[prost(bytes = "bytes", tag = "12")]
    raw_body: Bytes,
    #[prost(message, optional, tag = "13")]
    header_map: Option<HeaderMapProto>,
}

/// `AttributeContext.TLSSession`.
#[derive(Clone, PartialEq, Message)]
struct TlsSession {
    #[prost(string, tag = "1")]
    sni: String,
}

/// `config.core.v3.Metadata` (its `filter_metadata`).
#[derive(Clone, PartialEq, Message)]
struct Metadata {
    #[prost(map = "string, message", tag = "1")]
    filter_metadata: HashMap<String, Struct>,
}

/// `google.protobuf.Struct`.
#[derive(Clone, PartialEq, Message)]
struct Struct {
    #[prost(map = "string, message", tag = "1")]
    fields: HashMap<String, Value>,
}

/// `google.protobuf.Value` (dynamic metadata in Myelin holds strings only).
#[derive(Clone, PartialEq, Message)]
struct Value {
    #[prost(string, optional, tag = "3")]
    string_value: Option<String>,
}

/// `CheckResponse`.
#[derive(Clone, PartialEq, Message)]
struct CheckResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<RpcStatus>,
    #[prost(message, optional, tag = "2")]
    denied_response: Option<DeniedHttpResponse>,
    #[prost(message, optional, tag = "3")]
    ok_response: Option<OkHttpResponse>,
    /// `ErrorResponse` (newer Envoy): only its presence is read.
    #[prost(bytes = "vec", optional, tag = "5")]
    error_response: Option<Vec<u8>>,
}

/// `google.rpc.Status`.
#[derive(Clone, PartialEq, Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
}

/// `DeniedHttpResponse`.
#[derive(Clone, PartialEq, Message)]
struct DeniedHttpResponse {
    #[prost(message, optional, tag = "1")]
    status: Option<HttpStatus>,
    #[prost(message, repeated, tag = "2")]
    headers: Vec<HeaderValueOptionProto>,
    #[prost(string, tag = "3")]
    body: String,
}

/// `type.v3.HttpStatus`.
#[derive(Clone, PartialEq, Message)]
struct HttpStatus {
    #[prost(int32, tag = "1")]
    code: i32,
}

/// `OkHttpResponse`.
#[derive(Clone, PartialEq, Message)]
struct OkHttpResponse {
    #[prost(message, repeated, tag = "2")]
    headers: Vec<HeaderValueOptionProto>,
    #[prost(string, repeated, tag = "5")]
    headers_to_remove: Vec<String>,
    #[prost(message, repeated, tag = "6")]
    response_headers_to_add: Vec<HeaderValueOptionProto>,
    #[prost(message, repeated, tag = "7")]
    query_parameters_to_set: Vec<QueryParameter>,
    #[prost(string, repeated, tag = "8")]
    query_parameters_to_remove: Vec<String>,
}

/// `config.core.v3.QueryParameter`.
#[derive(Clone, PartialEq, Message)]
struct QueryParameter {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// What a request the service let through gets changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Allowed {
    /// Changes to the request going upstream, in order.
    pub(crate) request: Vec<Edit>,
    /// Headers removed from it (after the changes).
    pub(crate) remove: Vec<HeaderName>,
    /// Changes to its response.
    pub(crate) response: Vec<Edit>,
    /// Query parameters set (each replacing the parameter's values).
    pub(crate) query_set: Vec<(String, String)>,
    /// Query parameters removed.
    pub(crate) query_remove: Vec<String>,
}

impl Allowed {
    /// Applies the request's changes to `headers`.
    pub(crate) fn edit_request(&self, headers: &mut HeaderMap) {
        apply(headers, &self.request);
        for name in &self.remove {
            headers.remove(name);
        }
    }

    /// Applies the response's changes to `headers`.
    pub(crate) fn edit_response(&self, headers: &mut HeaderMap) {
        apply(headers, &self.response);
    }
}

/// The service's word on a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Let through, with these changes.
    Ok(Allowed),
    /// Denied: the answer to the client.
    Denied {
        status: u16,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
    },
    /// No usable answer.
    Error(String),
    /// An answer with changes that are not valid (`validate_mutations`).
    Invalid(String),
}

/// What the check is about, besides the request's head.
pub(crate) struct Check<'a> {
    pub(crate) policy: &'a ExtAuthzPolicy,
    /// The route's `context_extensions`, merged over its levels.
    pub(crate) context_extensions: HashMap<String, String>,
    pub(crate) head: &'a RequestHead<'a>,
    pub(crate) client: &'a Subject<'a>,
    /// The request's dynamic metadata (for `metadata_context_namespaces`).
    pub(crate) metadata: &'a DynamicMetadata,
    /// The start of the request's body and how much of it to tell (`with_request_body`);
    /// `None`: no body is told (not asked for, or the request has none).
    pub(crate) body: Option<(&'a ReadAhead, BodySettings)>,
}

impl Check<'_> {
    /// The body told (cut to the limit) and the value of `x-envoy-auth-partial-body`:
    /// `"true"` when it is less than the whole body.
    fn told_body(&self) -> Option<(Bytes, &'static str)> {
        let (read, settings) = self.body?;
        let told = read.data.len().min(settings.max_bytes as usize);
        let partial = told < read.data.len() || !read.whole;
        Some((
            read.data.slice(..told),
            if partial { "true" } else { "false" },
        ))
    }

    /// A body longer than a filter that allows no partial bodies may buffer.
    fn too_long(&self) -> bool {
        self.body.is_some_and(|(read, settings)| {
            !settings.allow_partial && read.data.len() > settings.max_bytes as usize
        })
    }
}

/// Runs the filter for a request whose route has it on: `Ok(Some(_))` with the changes
/// when the request goes on after a check, `Ok(None)` when it goes on unchecked (or
/// unchanged), `Err` with the answer when it does not.
pub(crate) async fn run(
    services: &dyn Services,
    check: Check<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
) -> Result<Option<Allowed>, Answer> {
    let policy = check.policy;
    let enabled = policy.filter_enabled.chooses(fastrand::u32(..))
        && policy.filter_enabled_metadata.as_ref().is_none_or(|m| {
            let value = match m.path.as_slice() {
                [key] => check.metadata.get(&m.filter, key),
                _ => None,
            };
            m.matches(value)
        });
    if !enabled {
        metrics.ext_authz(&policy.stat_prefix, "disabled");
        if policy.deny_at_disable {
            return Err(local_answer(policy.status_on_error, "", grpc));
        }
        return Ok(None);
    }
    if check.too_long() {
        // Envoy's connection manager answers it, over the filter's buffer limit.
        return Err(answer(413, "Payload Too Large", grpc, "-"));
    }
    let verdict = match tokio::time::timeout(policy.timeout, ask(services, &check)).await {
        Ok(Verdict::Ok(allowed)) => checked(allowed, policy.header_rules.as_ref()),
        Ok(v) => v,
        Err(_) => Verdict::Error(format!("no answer within {:?}", policy.timeout)),
    };
    match verdict {
        Verdict::Ok(allowed) => {
            metrics.ext_authz(&policy.stat_prefix, "ok");
            Ok(Some(allowed))
        }
        Verdict::Denied {
            status,
            headers,
            mut body,
        } => {
            metrics.ext_authz(&policy.stat_prefix, "denied");
            if policy.max_denied_body > 0 {
                body.truncate(policy.max_denied_body as usize);
            }
            Err(denial(status, headers, body, grpc))
        }
        Verdict::Error(error) => {
            tracing::debug!(target: "myelin::ext_authz", %error, "no usable answer from the authorization service");
            if policy.failure_mode_allow {
                metrics.ext_authz(&policy.stat_prefix, "failure_mode_allowed");
                let mut allowed = Allowed::default();
                if policy.failure_mode_allow_header_add {
                    allowed.request.push(Edit {
                        name: FAILURE_MODE_ALLOWED,
                        value: HeaderValue::from_static("true"),
                        action: Action::Add,
                    });
                }
                return Ok(Some(allowed));
            }
            metrics.ext_authz(&policy.stat_prefix, "error");
            Err(local_answer(policy.status_on_error, "", grpc))
        }
        Verdict::Invalid(error) => {
            tracing::debug!(target: "myelin::ext_authz", %error, "the authorization service's answer is refused");
            metrics.ext_authz(&policy.stat_prefix, "invalid");
            Err(local_answer(500, "", grpc))
        }
    }
}

/// The request changes of an answer that `rules` allow (`decoder_header_mutation_rules`:
/// Envoy's `Checker` over the headers to set, add and append and those to remove; `host`
/// is never removed, the request would be malformed): the others are skipped, or with
/// `disallow_is_error` the answer is refused (a `500`, Envoy's `rejectResponse`). Without
/// rules, only a removal of `host` is skipped.
fn checked(mut allowed: Allowed, rules: Option<&MutationRules>) -> Verdict {
    let allows = |name: &HeaderName| rules.is_none_or(|r| r.allows(name.as_str()));
    let removable = |name: &HeaderName| *name != header::HOST && allows(name);
    let refused = allowed.request.iter().map(|e| &e.name).find(|n| !allows(n));
    let refused = refused.or_else(|| allowed.remove.iter().find(|n| !removable(n)));
    if let (Some(name), Some(rules)) = (refused, rules) {
        if rules.disallow_is_error {
            return Verdict::Invalid(format!("a change of {name} the mutation rules refuse"));
        }
        tracing::debug!(target: "myelin::ext_authz", %name, "a change the mutation rules refuse is skipped");
    }
    allowed.request.retain(|e| allows(&e.name));
    allowed.remove.retain(removable);
    Verdict::Ok(allowed)
}

/// A local answer with flag `UAEX`.
fn local_answer(status: u16, body: &str, grpc: bool) -> Answer {
    answer(status, body, grpc, "UAEX")
}

/// A local answer with `flags`.
fn answer(status: u16, body: &str, grpc: bool, flags: &'static str) -> Answer {
    let resp = crate::http::local_response(status, body.to_owned());
    let resp = crate::http::for_grpc(resp, body, grpc);
    (crate::local_reply::mark(resp, status, body, None), flags)
}

/// The answer to a denied request: the service's status and body, its headers replacing
/// the answer's own (Envoy's `sendLocalReply` with the denial's headers: each named header
/// removed, then all added).
fn denial(status: u16, headers: Vec<(HeaderName, HeaderValue)>, body: Bytes, grpc: bool) -> Answer {
    let text = String::from_utf8_lossy(&body).into_owned();
    let mut resp = if text.is_empty() {
        crate::http::local_response(status, text.clone())
    } else {
        crate::http::text_response(status, text.clone())
    };
    let h = resp.headers_mut();
    for (name, _) in &headers {
        h.remove(name);
    }
    for (name, value) in headers {
        h.append(name, value);
    }
    let resp = crate::http::for_grpc(resp, &text, grpc);
    (crate::local_reply::mark(resp, status, &text, None), "UAEX")
}

/// Asks the service.
async fn ask(services: &dyn Services, check: &Check<'_>) -> Verdict {
    match &check.policy.service {
        AuthzService::Grpc(service) => {
            let req = match check_call(service, check) {
                Ok(r) => r,
                Err(e) => return Verdict::Error(e),
            };
            match services.send(&service.cluster, req, true).await {
                Ok(reply) => grpc_verdict(reply, check.policy.validate_mutations),
                Err(e) => Verdict::Error(e),
            }
        }
        AuthzService::Http(service) => {
            let req = match http_request(service, check) {
                Ok(r) => r,
                Err(e) => return Verdict::Error(e),
            };
            match services.send(&service.cluster, req, false).await {
                Ok(reply) => http_verdict(service, reply),
                Err(e) => Verdict::Error(e),
            }
        }
    }
}

/// Whether the request header `name` is told to the service.
/// (Never the client's own `x-envoy-auth-partial-body`: that one is the filter's.)
fn told(policy: &ExtAuthzPolicy, http_service: bool, name: &str) -> bool {
    name != PARTIAL_BODY && listed(policy, http_service, name)
}

/// Whether the lists (`allowed_headers`, `disallowed_headers`, an HTTP service's own few)
/// let a header named `name` go to the service.
fn listed(policy: &ExtAuthzPolicy, http_service: bool, name: &str) -> bool {
    if policy.disallowed_headers.iter().any(|m| m.matches(name)) {
        return false;
    }
    let always = http_service && HTTP_ALWAYS.contains(&name);
    always
        || policy
            .allowed_headers
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| m.matches(name)))
}

/// The request's headers as Envoy's header map has them: the pseudo-headers first, then
/// the others in order.
fn head_fields<'h>(head: &'h RequestHead<'h>) -> impl Iterator<Item = (&'h str, &'h [u8])> + 'h {
    let pseudo = [
        (":authority", head.authority.as_bytes()),
        (":path", head.path.as_bytes()),
        (":method", head.method.as_bytes()),
        (":scheme", head.scheme.as_bytes()),
    ];
    pseudo.into_iter().filter(|(_, v)| !v.is_empty()).chain(
        head.headers
            .iter()
            // The Host header of an HTTP/1.1 request is its `:authority`.
            .filter(|(n, _)| **n != header::HOST)
            .map(|(n, v)| (n.as_str(), v.as_bytes())),
    )
}

/// The `Check` call.
fn check_call(service: &GrpcService, check: &Check<'_>) -> Result<Request<Bytes>, String> {
    let policy = check.policy;
    let head = check.head;
    let client = check.client;
    let mut headers = HashMap::new();
    let mut header_map = Vec::new();
    for (name, value) in head_fields(head) {
        if !told(policy, false, name) {
            continue;
        }
        if policy.encode_raw_headers {
            header_map.push(HeaderValueProto {
                key: name.to_owned(),
                value: String::new(),
                raw_value: value.to_vec(),
            });
        } else {
            let value = String::from_utf8_lossy(value);
            headers
                .entry(name.to_owned())
                .and_modify(|v: &mut String| {
                    v.push(',');
                    v.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
    }
    let told_body = check.told_body();
    if let Some((_, value)) = &told_body {
        let value = *value;
        if policy.encode_raw_headers {
            header_map.push(HeaderValueProto {
                key: PARTIAL_BODY.to_owned(),
                value: String::new(),
                raw_value: value.as_bytes().to_vec(),
            });
        } else {
            headers.insert(PARTIAL_BODY.to_owned(), value.to_owned());
        }
    }
    let (body, raw_body) = match told_body {
        Some((b, _)) if check.body.is_some_and(|(_, s)| s.pack_as_bytes) => (Bytes::new(), b),
        Some((b, _)) => (b, Bytes::new()),
        None => (Bytes::new(), Bytes::new()),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let peer = |addr: SocketAddr, principal: Option<&str>, service: &str| Peer {
        address: Some(Address {
            socket_address: Some(SocketAddressProto {
                address: addr.ip().to_string(),
                port_value: u32::from(addr.port()),
            }),
        }),
        service: service.to_owned(),
        principal: principal.unwrap_or_default().to_owned(),
    };
    let downstream_cluster = head
        .headers
        .get("x-envoy-downstream-service-cluster")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let source = SocketAddr::new(client.remote_ip, client.peer.port());
    let mut filter_metadata = HashMap::new();
    for namespace in &policy.metadata_namespaces {
        let fields: HashMap<String, Value> = check
            .metadata
            .entries(namespace)
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    Value {
                        string_value: Some(v.to_owned()),
                    },
                )
            })
            .collect();
        if !fields.is_empty() {
            filter_metadata.insert(namespace.clone(), Struct { fields });
        }
    }
    let message = CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(source, client.principal, downstream_cluster)),
            destination: Some(peer(client.local, None, "")),
            request: Some(RequestAttributes {
                time: Some(Timestamp {
                    seconds: now.as_secs() as i64,
                    nanos: now.subsec_nanos() as i32,
                }),
                http: Some(HttpRequest {
                    id: fastrand::u64(..).to_string(),
                    method: head.method.to_owned(),
                    headers,
                    path: head.path.to_owned(),
                    host: head.authority.to_owned(),
                    scheme: head.scheme.to_owned(),
                    size: check.body.map_or(0, |(read, _)| read.data.len() as i64),
                    protocol: String::new(),
                    body,
                    raw_body,
                    header_map: policy.encode_raw_headers.then_some(HeaderMapProto {
                        headers: header_map,
                    }),
                }),
            }),
            context_extensions: check.context_extensions.clone(),
            metadata_context: (!filter_metadata.is_empty()).then_some(Metadata { filter_metadata }),
            tls_session: policy.include_tls_session.then(|| TlsSession {
                sni: client.sni.unwrap_or_default().to_owned(),
            }),
        }),
    };
    crate::services::grpc_request(service, CHECK_PATH, &message, policy.timeout)
}

/// Reads a `CheckResponse`.
fn grpc_verdict(reply: Reply, validate: bool) -> Verdict {
    let message = match reply.grpc_message() {
        Ok(m) => m,
        Err(e) => return Verdict::Error(e),
    };
    let r = match CheckResponse::decode(message) {
        Ok(r) => r,
        Err(e) => return Verdict::Error(format!("the check's answer: {e}")),
    };
    let code = r.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let Some(ok) = r.ok_response else {
            return Verdict::Ok(Allowed::default());
        };
        return match ok_changes(ok, validate) {
            Ok(a) => Verdict::Ok(a),
            Err(e) => Verdict::Invalid(e),
        };
    }
    if r.error_response.is_some() {
        return Verdict::Error(format!("an error_response (status code {code})"));
    }
    let Some(denied) = r.denied_response else {
        return Verdict::Denied {
            status: 403,
            headers: Vec::new(),
            body: Bytes::new(),
        };
    };
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .filter(|c| (100..1000).contains(c))
        .unwrap_or(403);
    let mut headers = Vec::new();
    for option in denied.headers {
        match edit_of(option, validate) {
            Ok(Some(e)) => headers.push((e.name, e.value)),
            Ok(None) => {}
            Err(e) => return Verdict::Invalid(e),
        }
    }
    Verdict::Denied {
        status,
        headers,
        body: Bytes::from(denied.body),
    }
}

/// What an `ok_response` changes.
fn ok_changes(ok: OkHttpResponse, validate: bool) -> Result<Allowed, String> {
    let mut allowed = Allowed::default();
    for option in ok.headers {
        if let Some(e) = edit_of(option, validate)? {
            allowed.request.push(e);
        }
    }
    for option in ok.response_headers_to_add {
        if let Some(e) = edit_of(option, validate)? {
            allowed.response.push(e);
        }
    }
    for name in ok.headers_to_remove {
        // A pseudo-header is no `HeaderName`: never removed (`host`: see `checked`).
        if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
            allowed.remove.push(n);
        }
    }
    for q in ok.query_parameters_to_set {
        if validate && !(url_encoded(&q.key) && url_encoded(&q.value)) {
            return Err(format!("the query parameter {:?}", q.key));
        }
        allowed.query_set.push((q.key, q.value));
    }
    allowed.query_remove = ok.query_parameters_to_remove;
    Ok(allowed)
}

/// Whether a query parameter's key or value is percent-encoded as a URL needs (Envoy's
/// `queryParameterIsUrlEncoded`).
fn url_encoded(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'%' | b'+'))
}

/// The check request to an HTTP service.
fn http_request(service: &HttpAuthzService, check: &Check<'_>) -> Result<Request<Bytes>, String> {
    let head = check.head;
    let uri = format!(
        "http://{}{}{}",
        head.authority, service.path_prefix, head.path
    );
    let told_body = check.told_body();
    let has_body = told_body.is_some();
    let (body, partial) = told_body.unwrap_or_default();
    let length = HeaderValue::from(body.len());
    let mut req = Request::builder()
        .method(head.method)
        .uri(uri)
        .body(body)
        .map_err(|e| format!("the check request: {e}"))?;
    let headers = req.headers_mut();
    for (name, value) in head.headers {
        if *name == header::HOST || *name == header::CONTENT_LENGTH {
            continue;
        }
        if told(check.policy, true, name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers.insert(header::CONTENT_LENGTH, length);
    // The partial-body header goes as the request's headers do: when the allow list
    // names it (Envoy puts it in the check's headers, which its HTTP client filters).
    if has_body && listed(check.policy, true, PARTIAL_BODY) {
        headers.insert(PARTIAL_BODY, HeaderValue::from_static(partial));
    }
    crate::traffic::router::mutate_headers(headers, &service.headers_to_add, &[]);
    Ok(req)
}

/// Reads an HTTP service's answer.
fn http_verdict(service: &HttpAuthzService, reply: Reply) -> Verdict {
    let status = reply.status.as_u16();
    if reply.status.is_server_error() {
        return Verdict::Error(format!("HTTP status {status}"));
    }
    let any = |list: &[StringMatcher], name: &str| list.iter().any(|m| m.matches(name));
    if reply.status == StatusCode::OK {
        let mut allowed = Allowed::default();
        for v in reply.headers.get_all(HEADERS_TO_REMOVE) {
            let Ok(v) = v.to_str() else { continue };
            for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                // `host`: see `checked`.
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    allowed.remove.push(n);
                }
            }
        }
        for (name, value) in &reply.headers {
            if name == HEADERS_TO_REMOVE {
                continue;
            }
            let edit = |action| Edit {
                name: name.clone(),
                value: value.clone(),
                action,
            };
            if any(&service.upstream, name.as_str()) {
                allowed.request.push(edit(Action::Set));
            }
            if any(&service.upstream_append, name.as_str()) {
                allowed.request.push(edit(Action::Add));
            }
            if any(&service.client_on_success, name.as_str()) {
                allowed.response.push(edit(Action::Add));
            }
        }
        return Verdict::Ok(allowed);
    }
    // The answer's own framing is not the client's.
    const ALWAYS: [&str; 3] = ["content-length", "www-authenticate", "location"];
    let headers = reply
        .headers
        .iter()
        .filter(|(name, _)| {
            let n = name.as_str();
            let hop = matches!(
                n,
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
            );
            let listed = match &service.client {
                None => *name != header::HOST,
                Some(list) => ALWAYS.contains(&n) || any(list, n),
            };
            listed && !hop
        })
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    Verdict::Denied {
        status,
        headers,
        body: reply.body,
    }
}

/// Applies the query changes of `set` and `remove` to a path's query: a set parameter
/// replaces the first of its name (the others dropped), or is added at the end.
pub(crate) fn rewrite_query(path: &str, set: &[(String, String)], remove: &[String]) -> String {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let mut pairs: Vec<(String, Option<String>)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
            None => (p.to_owned(), None),
        })
        .collect();
    pairs.retain(|(k, _)| !remove.contains(k));
    for (key, value) in set {
        let mut seen = false;
        pairs.retain_mut(|(k, v)| {
            if k != key {
                return true;
            }
            if seen {
                return false;
            }
            seen = true;
            *v = Some(value.clone());
            true
        });
        if !seen {
            pairs.push((key.clone(), Some(value.clone())));
        }
    }
    if pairs.is_empty() {
        return base.to_owned();
    }
    let query: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| match v {
            Some(v) => format!("{k}={v}"),
            None => k,
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests;
