//! Envoy-style YAML/JSON -> `xds-api` types, for the file source and tests.
//!
//! `xds-api` 0.2's pbjson impls read proto field names and lowerCamelCase JSON names, but
//! not the canonical proto3 JSON mapping of well-known types: a `Duration` must be
//! `{seconds, nanos}` (not `"5s"`), a wrapper (`UInt32Value`, `BoolValue`) `{value: ...}`,
//! a `Struct` `{fields: {k: {string_value: ...}}}`, and an `Any` `{"@type", value:
//! <encoded bytes>}` (not the message's fields inline). Envoy configs, and what istioctl
//! or egctl print, use the canonical forms, so [`normalize`] rewrites a parsed document
//! first, walking it with the protobuf type each value is read as (the message's
//! descriptor from `xds_api::FILE_DESCRIPTOR_SET`, or [`ext::JSON_MESSAGES`] for the
//! messages Myelin writes by hand):
//! - a key that names a field, by proto name or JSON name, is renamed to the proto name;
//! - a `Duration` string like `"5s"`/`"0.25s"` becomes `{seconds, nanos}`;
//! - a scalar read as a wrapper becomes `{value}`;
//! - a `Struct`, `Value` or `ListValue` is free-form JSON (no renaming inside) in pbjson's
//!   form;
//! - an `Any` with `"@type"` is read as that type (normalized the same way), encoded, and
//!   replaced with `{"@type", value: [bytes]}`; a type Myelin does not know becomes an
//!   empty `Any` of that type, which the conversion then rejects by type name;
//! - a map's values are read as its value type, its keys taken as written.
//!
//! A key that names no field is left as it is, so that serde's error names it; so is a
//! value of a type with no descriptor (none reachable from the types Myelin reads).

use std::collections::HashMap;
use std::sync::LazyLock;

use prost::{Message, Name};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use xds_api::pb::google::protobuf::{
    field_descriptor_proto, DescriptorProto, FieldDescriptorProto, FileDescriptorSet,
};

use super::ext;

/// A document that does not deserialize into the xDS type. Displays as
/// [`JsonError::at`] from the document's top.
#[derive(Debug)]
pub enum JsonError {
    /// serde's error (it names the unknown or mistyped field) and where it is.
    Serde {
        /// Path of the offending field inside the document (`.` when at the top).
        path: String,
        /// serde's message.
        error: serde_json::Error,
    },
    /// An embedded `Any` that does not deserialize as its `@type`.
    Any {
        /// Path of the `Any` inside the document.
        path: String,
        /// The `@type`.
        type_url: String,
        /// What went wrong.
        error: Box<JsonError>,
    },
}

impl std::fmt::Display for JsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.at("."))
    }
}

impl std::error::Error for JsonError {}

impl JsonError {
    /// One line naming the whole path of the offending field from `prefix` on, through
    /// embedded `Any`s (`static_resources.listeners[0].filter_chains[0].filters[0]
    /// .typed_config.scheme: unknown field ...`), with serde's list of every expected field
    /// left out.
    pub fn at(&self, prefix: &str) -> String {
        self.at_in(prefix, None)
    }

    fn at_in(&self, prefix: &str, type_url: Option<&str>) -> String {
        match self {
            JsonError::Serde { path, error } => {
                let msg = error.to_string();
                let msg = match msg
                    .strip_prefix("unknown field `")
                    .and_then(|r| r.split_once('`'))
                {
                    Some((field, _)) => match type_url {
                        Some(t) => format!(
                            "unknown field `{field}`: {} has no such field (a typo, or a field of \
                             another Envoy version?)",
                            t.rsplit('/').next().unwrap_or(t)
                        ),
                        None => format!("unknown field `{field}`"),
                    },
                    None => msg,
                };
                format!("{}: {msg}", join_path(prefix, path))
            }
            JsonError::Any {
                path,
                type_url,
                error,
            } => error.at_in(&join_path(prefix, path), Some(type_url)),
        }
    }
}

fn join_path(prefix: &str, path: &str) -> String {
    match (prefix, path) {
        (p, "." | "") => p.to_owned(),
        ("" | ".", p) => p.to_owned(),
        (a, b) if b.starts_with('[') => format!("{a}{b}"),
        (a, b) => format!("{a}.{b}"),
    }
}

fn parse_duration(s: &str) -> Option<Value> {
    let num = s.strip_suffix('s')?;
    let (secs, frac) = num.split_once('.').unwrap_or((num, ""));
    let neg = secs.starts_with('-');
    let seconds: i64 = secs.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    let nanos = if neg { -nanos } else { nanos };
    Some(serde_json::json!({"seconds": seconds, "nanos": nanos}))
}

/// Deserializes an Envoy-style document (already parsed from YAML or JSON) as `T`.
pub fn from_value<T: DeserializeOwned + Name>(mut v: Value) -> Result<T, JsonError> {
    normalize(&mut v, &T::full_name())?;
    deserialize(v)
}

/// serde_json deserialization that reports the path of the field that failed
/// (`serde_path_to_error`: serde's own error only names the field).
fn deserialize<T: DeserializeOwned>(v: Value) -> Result<T, JsonError> {
    serde_path_to_error::deserialize(v).map_err(|e| JsonError::Serde {
        path: e.path().to_string(),
        error: e.into_inner(),
    })
}

/// How a field's value is read.
#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// A scalar, an enum, or a raw field of `ext`: taken as written.
    Plain,
    /// A message, by full protobuf name.
    Message(String),
}

/// A field of a message, from its descriptor or from [`ext::JSON_MESSAGES`].
#[derive(Debug)]
struct Field {
    name: String,
    json_name: String,
    kind: Kind,
    /// Repeated (and not a map): `kind` applies to each element.
    repeated: bool,
    /// A map: its values are read as this (its keys are strings or numbers as written).
    map_value: Option<Kind>,
}

/// Every message the loader can walk, by full protobuf name: `xds-api`'s descriptor set
/// (decoded once per process), then the hand-written messages of `ext`.
static MESSAGES: LazyLock<HashMap<String, Vec<Field>>> = LazyLock::new(index);

fn index() -> HashMap<String, Vec<Field>> {
    fn collect<'a>(
        prefix: &str,
        m: &'a DescriptorProto,
        out: &mut HashMap<String, &'a DescriptorProto>,
    ) {
        let name = match prefix {
            "" => m.name().to_owned(),
            p => format!("{p}.{}", m.name()),
        };
        for nested in &m.nested_type {
            collect(&name, nested, out);
        }
        out.insert(name, m);
    }
    let set = FileDescriptorSet::decode(xds_api::FILE_DESCRIPTOR_SET)
        .expect("xds-api's FILE_DESCRIPTOR_SET decodes");
    let mut descriptors = HashMap::new();
    for file in &set.file {
        for m in &file.message_type {
            collect(file.package(), m, &mut descriptors);
        }
    }
    let kind_of = |f: &FieldDescriptorProto| match f.r#type() {
        field_descriptor_proto::Type::Message | field_descriptor_proto::Type::Group => {
            Kind::Message(f.type_name().trim_start_matches('.').to_owned())
        }
        _ => Kind::Plain,
    };
    let mut out = HashMap::new();
    for (name, m) in &descriptors {
        let fields = m
            .field
            .iter()
            .map(|f| {
                let kind = kind_of(f);
                let repeated = f.label() == field_descriptor_proto::Label::Repeated;
                // A map field is a repeated message of its `*Entry` type (`key` 1, `value` 2).
                let map_value = match &kind {
                    Kind::Message(t) if repeated => descriptors
                        .get(t)
                        .filter(|e| e.options.as_ref().is_some_and(|o| o.map_entry()))
                        .and_then(|e| e.field.iter().find(|f| f.number() == 2))
                        .map(kind_of),
                    _ => None,
                };
                Field {
                    name: f.name().to_owned(),
                    json_name: f.json_name.clone().unwrap_or_else(|| lower_camel(f.name())),
                    kind,
                    repeated: repeated && map_value.is_none(),
                    map_value,
                }
            })
            .collect();
        out.insert(name.clone(), fields);
    }
    for (name, fields) in ext::JSON_MESSAGES {
        let fields = fields
            .iter()
            .map(|f| Field {
                name: f.name.to_owned(),
                json_name: lower_camel(f.name),
                kind: match f.message {
                    Some(m) if !f.map => Kind::Message(m.to_owned()),
                    _ => Kind::Plain,
                },
                repeated: f.repeated,
                map_value: f
                    .message
                    .filter(|_| f.map)
                    .map(|m| Kind::Message(m.to_owned())),
            })
            .collect();
        let had = out.insert((*name).to_owned(), fields);
        // Should `xds-api` come to generate one of them, ext's struct is to give way to it.
        debug_assert!(had.is_none(), "{name} has a descriptor: drop it from ext");
    }
    out
}

/// A proto field name's JSON name as protoc derives it: each letter after `_` upper-cased,
/// the `_`s dropped (`accept_http_10` -> `acceptHttp10`).
fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        match c {
            '_' => upper = true,
            c if upper => {
                out.push(c.to_ascii_uppercase());
                upper = false;
            }
            c => out.push(c),
        }
    }
    out
}

const WRAPPERS: &[&str] = &[
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
];

/// Rewrites a document read as the message `full_name` (e.g.
/// `envoy.config.cluster.v3.Cluster`) from the canonical proto3 JSON forms into what
/// `xds-api`'s pbjson impls and `ext`'s serde derives read.
pub fn normalize(v: &mut Value, full_name: &str) -> Result<(), JsonError> {
    normalize_as(v, &Kind::Message(full_name.to_owned()), "")
}

fn normalize_as(v: &mut Value, kind: &Kind, path: &str) -> Result<(), JsonError> {
    let Kind::Message(ty) = kind else {
        return Ok(());
    };
    match ty.as_str() {
        "google.protobuf.Duration" => {
            if let Some(d) = v.as_str().and_then(parse_duration) {
                *v = d;
            }
        }
        t if WRAPPERS.contains(&t) => {
            if !v.is_object() && !v.is_null() {
                *v = serde_json::json!({ "value": v.take() });
            }
        }
        "google.protobuf.Struct" => {
            if v.is_object() {
                *v = pb_struct(v.take());
            }
        }
        "google.protobuf.Value" => *v = pb_value(v.take()),
        "google.protobuf.ListValue" => {
            if let Value::Array(items) = v {
                let values: Vec<Value> = items.drain(..).map(pb_value).collect();
                *v = serde_json::json!({ "values": values });
            }
        }
        "google.protobuf.Any" => {
            if let Value::Object(map) = v {
                any(map, path)?;
            }
        }
        _ => {
            if let (Value::Object(map), Some(fields)) = (v, MESSAGES.get(ty)) {
                message(map, fields, path)?;
            }
        }
    }
    Ok(())
}

/// A message's fields, renamed to their proto names and each read as its type.
fn message(map: &mut Map<String, Value>, fields: &[Field], path: &str) -> Result<(), JsonError> {
    let keys: Vec<String> = map.keys().cloned().collect();
    for key in keys {
        let Some(f) = fields.iter().find(|f| f.name == key || f.json_name == key) else {
            continue; // Left for serde to name as an unknown field.
        };
        let mut child = map.remove(&key).expect("a key of the map");
        // Both spellings given: both kept, for pbjson to report the duplicate.
        let key = if map.contains_key(&f.name) {
            key
        } else {
            f.name.clone()
        };
        let p = join_path(path, &key);
        match (&f.map_value, &mut child) {
            (Some(value), Value::Object(entries)) => {
                for (k, v) in entries.iter_mut() {
                    normalize_as(v, value, &join_path(&p, k))?;
                }
            }
            (None, Value::Array(items)) if f.repeated => {
                for (i, item) in items.iter_mut().enumerate() {
                    normalize_as(item, &f.kind, &format!("{p}[{i}]"))?;
                }
            }
            (None, _) if !f.repeated => normalize_as(&mut child, &f.kind, &p)?,
            _ => {} // Not the field's shape: left for serde to reject.
        }
        map.insert(key, child);
    }
    Ok(())
}

/// An `Any` written as its message's fields next to `"@type"`: read as that type and
/// encoded, giving the `{"@type", value: [bytes]}` that `xds-api`'s `Any` reads.
fn any(map: &mut Map<String, Value>, path: &str) -> Result<(), JsonError> {
    let Some(Value::String(url)) = map.get("@type").cloned() else {
        return Ok(());
    };
    if map.contains_key("value") && map.len() <= 2 {
        return Ok(()); // Already `{"@type", value}`.
    }
    map.remove("@type");
    let body = Value::Object(std::mem::take(map));
    let bytes = encode_any(&url, body).map_err(|e| JsonError::Any {
        path: path.to_owned(),
        type_url: url.clone(),
        error: Box::new(e),
    })?;
    map.insert("@type".into(), Value::String(url));
    map.insert(
        "value".into(),
        Value::Array(bytes.into_iter().map(Value::from).collect()),
    );
    Ok(())
}

/// A JSON object as pbjson reads a `google.protobuf.Struct` (`{fields: {k: {string_value:
/// ...}}}`); anything else is left for serde to reject.
fn pb_struct(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let fields: Map<String, Value> = m.into_iter().map(|(k, v)| (k, pb_value(v))).collect();
            serde_json::json!({ "fields": fields })
        }
        other => other,
    }
}

/// Any JSON value as pbjson reads a `google.protobuf.Value` (`{string_value: ...}`, ...).
fn pb_value(v: Value) -> Value {
    match v {
        Value::Null => serde_json::json!({ "null_value": "NULL_VALUE" }),
        Value::Bool(b) => serde_json::json!({ "bool_value": b }),
        Value::Number(n) => serde_json::json!({ "number_value": n }),
        Value::String(s) => serde_json::json!({ "string_value": s }),
        Value::Array(a) => {
            serde_json::json!({ "list_value": { "values": a.into_iter().map(pb_value).collect::<Vec<_>>() } })
        }
        o @ Value::Object(_) => serde_json::json!({ "struct_value": pb_struct(o) }),
    }
}

/// The body of an `Any` (its `"@type"` removed) read as the type and encoded; a type
/// Myelin does not read gives no bytes.
fn encode_any(url: &str, body: Value) -> Result<Vec<u8>, JsonError> {
    fn enc<T: DeserializeOwned + Message + Name>(body: Value) -> Result<Vec<u8>, JsonError> {
        Ok(from_value::<T>(body)?.encode_to_vec())
    }
    let name = url.rsplit('/').next().unwrap_or(url);
    match name {
        "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager" => {
            enc::<HttpConnectionManager>(body)
        }
        "envoy.extensions.filters.http.router.v3.Router" => enc::<Router>(body),
        "envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy" => enc::<ext::TcpProxy>(body),
        "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext" => {
            enc::<ext::UpstreamTlsContext>(body)
        }
        "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext" => {
            enc::<ext::DownstreamTlsContext>(body)
        }
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => {
            enc::<ext::UpstreamHttpProtocolOptions>(body)
        }
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig" => {
            enc::<ext::UuidRequestIdConfig>(body)
        }
        "envoy.extensions.http.original_ip_detection.custom_header.v3.CustomHeaderConfig" => {
            enc::<ext::CustomHeaderConfig>(body)
        }
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => enc::<ext::HttpFault>(body),
        "envoy.extensions.filters.http.cors.v3.Cors" => enc::<ext::Cors>(body),
        "envoy.extensions.filters.http.cors.v3.CorsPolicy" => enc::<ext::CorsPolicy>(body),
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
            enc::<ext::LocalRateLimit>(body)
        }
        "envoy.extensions.filters.http.ratelimit.v3.RateLimit" => enc::<ext::HttpRateLimit>(body),
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthz" => enc::<ext::ExtAuthz>(body),
        "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor" => {
            enc::<ext::ExternalProcessor>(body)
        }
        "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute" => {
            enc::<ext::ExtProcPerRoute>(body)
        }
        "envoy.extensions.filters.http.compressor.v3.Compressor" => enc::<ext::Compressor>(body),
        "envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol" => {
            enc::<ext::ListenerProxyProtocol>(body)
        }
        "envoy.extensions.transport_sockets.proxy_protocol.v3.ProxyProtocolUpstreamTransport" => {
            enc::<ext::ProxyProtocolUpstreamTransport>(body)
        }
        "envoy.extensions.filters.http.compressor.v3.CompressorPerRoute" => {
            enc::<ext::CompressorPerRoute>(body)
        }
        "envoy.extensions.compression.gzip.compressor.v3.Gzip" => enc::<ext::Gzip>(body),
        "envoy.extensions.compression.brotli.compressor.v3.Brotli" => enc::<ext::Brotli>(body),
        "envoy.extensions.compression.zstd.compressor.v3.Zstd" => enc::<ext::Zstd>(body),
        "envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute" => {
            enc::<ext::ExtAuthzPerRoute>(body)
        }
        "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication" => {
            enc::<ext::JwtAuthentication>(body)
        }
        "envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig" => {
            enc::<ext::JwtPerRoute>(body)
        }
        "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth" => enc::<ext::ApiKeyAuth>(body),
        "envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuthPerRoute" => {
            enc::<ext::ApiKeyAuthPerRoute>(body)
        }
        "envoy.extensions.filters.http.ratelimit.v3.RateLimitPerRoute" => {
            enc::<ext::RateLimitPerRoute>(body)
        }
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuth" => enc::<ext::BasicAuth>(body),
        "envoy.extensions.filters.http.basic_auth.v3.BasicAuthPerRoute" => {
            enc::<ext::BasicAuthPerRoute>(body)
        }
        "envoy.extensions.filters.http.csrf.v3.CsrfPolicy" => enc::<ext::CsrfPolicy>(body),
        "envoy.extensions.filters.http.rbac.v3.RBAC" => enc::<ext::HttpRbac>(body),
        "envoy.extensions.filters.http.rbac.v3.RBACPerRoute" => enc::<ext::HttpRbacPerRoute>(body),
        "envoy.extensions.filters.network.rbac.v3.RBAC" => enc::<ext::NetworkRbac>(body),
        "envoy.extensions.matching.input_matchers.ip.v3.Ip" => enc::<ext::IpMatcher>(body),
        "envoy.extensions.filters.http.health_check.v3.HealthCheck" => {
            enc::<ext::HealthCheckFilter>(body)
        }
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSession" => {
            enc::<ext::StatefulSession>(body)
        }
        "envoy.extensions.filters.http.stateful_session.v3.StatefulSessionPerRoute" => {
            enc::<ext::StatefulSessionPerRoute>(body)
        }
        "envoy.extensions.http.stateful_session.cookie.v3.CookieBasedSessionState" => {
            enc::<ext::CookieSessionState>(body)
        }
        "envoy.extensions.http.stateful_session.header.v3.HeaderBasedSessionState" => {
            enc::<ext::HeaderSessionState>(body)
        }
        n if ext::INPUTS_WITHOUT_SETTINGS.contains(&n) => {
            // No fields to normalize: read as it is.
            Ok(deserialize::<ext::NoSettings>(body)?.encode_to_vec())
        }
        "envoy.config.rbac.v3.Action" => enc::<xds_api::pb::envoy::config::rbac::v3::Action>(body),
        "envoy.type.matcher.v3.HttpRequestHeaderMatchInput" => {
            enc::<xds_api::pb::envoy::r#type::matcher::v3::HttpRequestHeaderMatchInput>(body)
        }
        "envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin" => {
            enc::<super::lb_policy::RoundRobin>(body)
        }
        "envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest" => {
            enc::<super::lb_policy::LeastRequest>(body)
        }
        "envoy.extensions.load_balancing_policies.random.v3.Random" => {
            enc::<super::lb_policy::Random>(body)
        }
        "envoy.extensions.load_balancing_policies.maglev.v3.Maglev" => {
            enc::<super::lb_policy::Maglev>(body)
        }
        "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash" => {
            enc::<super::lb_policy::RingHash>(body)
        }
        "envoy.config.route.v3.FilterConfig" => {
            enc::<xds_api::pb::envoy::config::route::v3::FilterConfig>(body)
        }
        "envoy.config.listener.v3.Listener" => enc::<Listener>(body),
        "envoy.config.route.v3.RouteConfiguration" => enc::<RouteConfiguration>(body),
        "envoy.config.cluster.v3.Cluster" => enc::<Cluster>(body),
        "envoy.config.endpoint.v3.ClusterLoadAssignment" => enc::<ClusterLoadAssignment>(body),
        "envoy.extensions.transport_sockets.tls.v3.Secret" => enc::<Secret>(body),
        // Unknown to Myelin: an empty Any of that type; the conversion rejects it by name.
        _ => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message written by hand that can stand in an `Any` is encoded by
    /// [`encode_any`]: one that is not would silently lose its fields in files (a type it
    /// does not know is an empty `Any`), while the xDS path works. A field that is not
    /// there makes a known type fail; an unknown type gives no bytes and no error.
    #[test]
    fn hand_written_messages_are_encoded_in_anys() {
        // Messages only ever found inside others, never on their own in an `Any`.
        let nested = [
            "envoy.extensions.filters.common.fault.v3.FaultDelay",
            "envoy.extensions.filters.http.fault.v3.FaultAbort",
            "envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
            ext::LOCALITY_LB,
            ext::ROUTE_RATE_LIMIT,
            ext::ADDRESS_MATCHER,
            "envoy.extensions.filters.http.jwt_authn.v3.JwtProvider",
            "envoy.extensions.filters.http.jwt_authn.v3.RemoteJwks",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtHeader",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtClaimToHeader",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirement",
            "envoy.extensions.filters.http.jwt_authn.v3.JwtRequirementOrList",
            "envoy.extensions.filters.http.jwt_authn.v3.ProviderWithAudiences",
            "envoy.extensions.filters.http.jwt_authn.v3.RequirementRule",
            ext::API_KEY_CREDENTIAL,
            ext::API_KEY_SOURCE,
            "envoy.extensions.filters.http.ext_authz.v3.HttpService",
            "envoy.extensions.filters.http.ext_authz.v3.AuthorizationRequest",
            "envoy.extensions.filters.http.ext_authz.v3.AuthorizationResponse",
            "envoy.extensions.filters.http.ext_authz.v3.CheckSettings",
            "envoy.extensions.filters.http.ext_authz.v3.BufferSettings",
            "envoy.extensions.filters.http.compressor.v3.Compressor.CommonDirectionConfig",
            "envoy.extensions.filters.http.compressor.v3.Compressor.RequestDirectionConfig",
            "envoy.extensions.filters.http.compressor.v3.Compressor.ResponseDirectionConfig",
            "envoy.extensions.filters.http.compressor.v3.CompressorOverrides",
            "envoy.extensions.filters.http.compressor.v3.ResponseDirectionOverrides",
            ext::API_KEY_FORWARDING,
            "envoy.config.core.v3.ProxyProtocolConfig (newer)",
            "envoy.config.core.v3.TlvEntry",
            "envoy.extensions.filters.http.ext_proc.v3.HeaderForwardingRules",
            "envoy.extensions.filters.http.ext_proc.v3.ExtProcOverrides",
        ];
        let missing: Vec<&str> = ext::JSON_MESSAGES
            .iter()
            .map(|(name, _)| *name)
            .filter(|name| {
                let last = name.rsplit('.').next().unwrap();
                let parent = name[..name.len() - last.len() - 1]
                    .rsplit('.')
                    .next()
                    .unwrap();
                // `Pkg.Message.Nested` is not a type of its own in an `Any`.
                !parent.starts_with(char::is_uppercase) && !nested.contains(name)
            })
            .filter(|name| encode_any(name, serde_json::json!({"\u{1}": 0})).is_ok())
            .collect();
        assert!(missing.is_empty(), "not in encode_any: {missing:#?}");
    }

    #[test]
    fn errors_name_the_whole_path_through_anys() {
        let doc: Value = serde_yaml::from_str(
            r#"
name: l
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: x
      schemez: https
"#,
        )
        .unwrap();
        let e = from_value::<Listener>(doc).unwrap_err();
        assert_eq!(
            e.at("static_resources.listeners[0]"),
            "static_resources.listeners[0].filter_chains[0].filters[0].typed_config.schemez: \
             unknown field `schemez`: envoy.extensions.filters.network.http_connection_manager.v3.\
             HttpConnectionManager has no such field (a typo, or a field of another Envoy version?)"
        );
        let doc: Value = serde_yaml::from_str("name: c\nconnect_timeoutz: 1s\n").unwrap();
        let e = from_value::<Cluster>(doc).unwrap_err();
        assert_eq!(
            e.at("clusters[2]"),
            "clusters[2].connect_timeoutz: unknown field `connect_timeoutz`"
        );
    }

    #[test]
    fn path_normalization_as_istio_writes_it() {
        let doc: Value = serde_yaml::from_str(
            r#"
name: l
address: {socket_address: {address: 0.0.0.0, port_value: 80}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: x
      normalize_path: true
      merge_slashes: true
      path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
      rds: {route_config_name: r}
      http_filters: [{name: envoy.filters.http.router}]
"#,
        )
        .unwrap();
        let l = super::super::listener(&from_value::<Listener>(doc).unwrap()).unwrap();
        let myelin_proxy::model::listener::NetworkFilter::HttpConnectionManager(h) =
            &l.filter_chains[0].filter
        else {
            panic!("{:?}", l.filter_chains[0].filter);
        };
        assert_eq!(
            h.headers.path,
            myelin_proxy::model::listener::PathNormalization {
                escaped_slashes: myelin_proxy::model::listener::EscapedSlashes::UnescapeAndRedirect,
                normalize: true,
                merge_slashes: true,
            }
        );
    }

    #[test]
    fn endpoint_metadata_is_free_form_json() {
        let v: Value = serde_yaml::from_str(
            r#"
cluster_name: db
endpoints:
- lb_endpoints:
  - endpoint: {address: {socket_address: {address: 10.78.1.2, port_value: 9000}}}
    metadata:
      filter_metadata:
        myelin.io/hbone: {node: 10.78.0.1, timeout: 5s, n: 1, on: true, l: [a], s: {x: null}}
"#,
        )
        .unwrap();
        let cla: ClusterLoadAssignment = from_value(v).unwrap();
        let m = super::super::cluster_load_assignment(&cla).unwrap_err();
        // Read as given (the duration-looking string stays a string), then judged by the
        // converter.
        let msgs: Vec<String> = m.iter().map(ToString::to_string).collect();
        assert_eq!(
            msgs,
            [
                "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone].l: not supported",
                "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone].n: not supported",
                "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone].on: not supported",
                "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone].s: not supported",
                "endpoints[0].lb_endpoints[0].metadata.filter_metadata[myelin.io/hbone].timeout: not supported",
            ]
        );
    }

    #[test]
    fn durations() {
        for (s, want) in [
            ("5s", Some((5, 0))),
            ("0.1s", Some((0, 100_000_000))),
            ("1.000000001s", Some((1, 1))),
            ("-1.5s", Some((-1, -500_000_000))),
            ("5", None),
            ("5ms", None),
            ("1.0000000001s", None),
        ] {
            let got = parse_duration(s)
                .map(|v| (v["seconds"].as_i64().unwrap(), v["nanos"].as_i64().unwrap()));
            assert_eq!(got, want, "{s}");
        }
    }

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn every_message_named_is_known() {
        for (name, fields) in MESSAGES.iter() {
            for f in fields {
                for kind in [&f.kind].into_iter().chain(&f.map_value) {
                    if let Kind::Message(t) = kind {
                        assert!(MESSAGES.contains_key(t), "{name}.{}: {t}", f.name);
                    }
                }
            }
        }
        let l = &MESSAGES["envoy.config.listener.v3.Listener"];
        let f = l
            .iter()
            .find(|f| f.name == "per_connection_buffer_limit_bytes");
        assert_eq!(
            f.map(|f| (f.json_name.as_str(), &f.kind)),
            Some((
                "perConnectionBufferLimitBytes",
                &Kind::Message("google.protobuf.UInt32Value".into())
            ))
        );
        assert_eq!(lower_camel("accept_http_10"), "acceptHttp10");
        assert_eq!(
            lower_camel("http2_protocol_options"),
            "http2ProtocolOptions"
        );
        assert_eq!(lower_camel("consecutive_5xx"), "consecutive5xx");
    }

    const LISTENER_SNAKE: &str = r#"
name: ingress
address: {socket_address: {address: 0.0.0.0, port_value: 8080}}
per_connection_buffer_limit_bytes: 32768
listener_filters_timeout: 5s
max_connections_to_accept_per_socket_event: 4
filter_chains:
- filter_chain_match:
    destination_port: 8080
    prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]
  filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: ingress
      codec_type: AUTO
      stream_idle_timeout: 300s
      request_timeout: 0.5s
      use_remote_address: true
      normalize_path: true
      path_with_escaped_slashes_action: UNESCAPE_AND_REDIRECT
      common_http_protocol_options: {idle_timeout: 60s, max_headers_count: 100}
      http2_protocol_options: {max_concurrent_streams: 100, initial_stream_window_size: 65536}
      http_protocol_options: {accept_http_10: true}
      upgrade_configs: [{upgrade_type: websocket, enabled: false}]
      tracing: {spawn_upstream_span: true}
      route_config:
        name: local
        virtual_hosts:
        - name: all
          domains: ['*']
          routes:
          - match: {prefix: /, case_sensitive: false}
            route: {cluster: backend, timeout: 15s}
      http_filters:
      - name: envoy.filters.http.router
        typed_config:
          '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          suppress_envoy_headers: true
          dynamic_stats: false
- filter_chain_match: {server_names: [tcp.example.com]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: tcp
      idle_timeout: 10s
      max_connect_attempts: 3
      weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}
      tunneling_config:
        hostname: upstream.example.com:443
        use_post: true
        headers_to_add: [{header: {key: x-tunnel, value: '1'}, append: false}]
"#;

    const LISTENER_CAMEL: &str = r#"
name: ingress
address: {socketAddress: {address: 0.0.0.0, portValue: 8080}}
perConnectionBufferLimitBytes: 32768
listenerFiltersTimeout: 5s
maxConnectionsToAcceptPerSocketEvent: 4
filterChains:
- filterChainMatch:
    destinationPort: 8080
    prefixRanges: [{addressPrefix: 10.0.0.0, prefixLen: 8}]
  filters:
  - name: envoy.filters.network.http_connection_manager
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      statPrefix: ingress
      codecType: AUTO
      streamIdleTimeout: 300s
      requestTimeout: 0.5s
      useRemoteAddress: true
      normalizePath: true
      pathWithEscapedSlashesAction: UNESCAPE_AND_REDIRECT
      commonHttpProtocolOptions: {idleTimeout: 60s, maxHeadersCount: 100}
      http2ProtocolOptions: {maxConcurrentStreams: 100, initialStreamWindowSize: 65536}
      httpProtocolOptions: {acceptHttp10: true}
      upgradeConfigs: [{upgradeType: websocket, enabled: false}]
      tracing: {spawnUpstreamSpan: true}
      routeConfig:
        name: local
        virtualHosts:
        - name: all
          domains: ['*']
          routes:
          - match: {prefix: /, caseSensitive: false}
            route: {cluster: backend, timeout: 15s}
      httpFilters:
      - name: envoy.filters.http.router
        typedConfig:
          '@type': type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          suppressEnvoyHeaders: true
          dynamicStats: false
- filterChainMatch: {serverNames: [tcp.example.com]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      statPrefix: tcp
      idleTimeout: 10s
      maxConnectAttempts: 3
      weightedClusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}
      tunnelingConfig:
        hostname: upstream.example.com:443
        usePost: true
        headersToAdd: [{header: {key: x-tunnel, value: '1'}, append: false}]
"#;

    const CLUSTER_SNAKE: &str = r#"
name: backend
type: STRICT_DNS
connect_timeout: 10s
lb_policy: LEAST_REQUEST
dns_lookup_family: V4_ONLY
dns_refresh_rate: 30s
per_connection_buffer_limit_bytes: 1024
typed_extension_protocol_options:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    common_http_protocol_options: {idle_timeout: 30s, max_requests_per_connection: 100}
    explicit_http_config:
      http2_protocol_options:
        max_concurrent_streams: 50
        connection_keepalive: {interval: 30s, timeout: 5s}
circuit_breakers:
  thresholds: [{priority: DEFAULT, max_connections: 100, max_pending_requests: 10, track_remaining: true}]
outlier_detection:
  consecutive_5xx: 5
  interval: 10s
  base_ejection_time: 30s
  max_ejection_percent: 50
  consecutive_local_origin_failure: 3
health_checks:
- timeout: 1s
  interval: 5s
  healthy_threshold: 2
  unhealthy_threshold: 3
  http_health_check: {path: /healthz}
preconnect_policy: {per_upstream_preconnect_ratio: 1.5, predictive_preconnect_ratio: 2}
load_assignment:
  cluster_name: backend
  endpoints:
  - lb_endpoints:
    - endpoint: {address: {socket_address: {address: backend.example.com, port_value: 80}}}
      load_balancing_weight: 2
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: backend.example.com
    common_tls_context:
      alpn_protocols: [h2, http/1.1]
      validation_context:
        trusted_ca: {filename: /etc/ssl/ca.pem}
        match_typed_subject_alt_names: [{san_type: DNS, matcher: {exact: backend.example.com}}]
upstream_connection_options: {tcp_keepalive: {keepalive_probes: 3, keepalive_time: 30}}
"#;

    const CLUSTER_CAMEL: &str = r#"
name: backend
type: STRICT_DNS
connectTimeout: 10s
lbPolicy: LEAST_REQUEST
dnsLookupFamily: V4_ONLY
dnsRefreshRate: 30s
perConnectionBufferLimitBytes: 1024
typedExtensionProtocolOptions:
  envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
    '@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
    commonHttpProtocolOptions: {idleTimeout: 30s, maxRequestsPerConnection: 100}
    explicitHttpConfig:
      http2ProtocolOptions:
        maxConcurrentStreams: 50
        connectionKeepalive: {interval: 30s, timeout: 5s}
circuitBreakers:
  thresholds: [{priority: DEFAULT, maxConnections: 100, maxPendingRequests: 10, trackRemaining: true}]
outlierDetection:
  consecutive5xx: 5
  interval: 10s
  baseEjectionTime: 30s
  maxEjectionPercent: 50
  consecutiveLocalOriginFailure: 3
healthChecks:
- timeout: 1s
  interval: 5s
  healthyThreshold: 2
  unhealthyThreshold: 3
  httpHealthCheck: {path: /healthz}
preconnectPolicy: {perUpstreamPreconnectRatio: 1.5, predictivePreconnectRatio: 2}
loadAssignment:
  clusterName: backend
  endpoints:
  - lbEndpoints:
    - endpoint: {address: {socketAddress: {address: backend.example.com, portValue: 80}}}
      loadBalancingWeight: 2
transportSocket:
  name: envoy.transport_sockets.tls
  typedConfig:
    '@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    sni: backend.example.com
    commonTlsContext:
      alpnProtocols: [h2, http/1.1]
      validationContext:
        trustedCa: {filename: /etc/ssl/ca.pem}
        matchTypedSubjectAltNames: [{sanType: DNS, matcher: {exact: backend.example.com}}]
upstreamConnectionOptions: {tcpKeepalive: {keepaliveProbes: 3, keepaliveTime: 30}}
"#;

    const ROUTES_SNAKE: &str = r#"
name: routes
validate_clusters: true
max_direct_response_body_size_bytes: 4096
ignore_port_in_host_matching: true
request_headers_to_add: [{header: {key: x-via, value: myelin}, append_action: OVERWRITE_IF_EXISTS_OR_ADD}]
virtual_hosts:
- name: vh
  domains: [example.com]
  require_tls: NONE
  typed_per_filter_config:
    envoy.filters.http.fault:
      '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      delay: {fixed_delay: 0.2s, percentage: {numerator: 10, denominator: HUNDRED}}
      max_active_faults: 3
  routes:
  - match:
      safe_regex: {regex: '^/api/.*'}
      headers: [{name: x-canary, string_match: {exact: 'yes'}}]
    route:
      weighted_clusters: {clusters: [{name: a, weight: 80}, {name: b, weight: 20}]}
      timeout: 2s
      retry_policy: {retry_on: 5xx, num_retries: 3, per_try_timeout: 0.25s, retry_back_off: {base_interval: 0.1s}}
      hash_policy: [{header: {header_name: x-user}}]
      request_mirror_policies: [{cluster: shadow, trace_sampled: false}]
  - match: {prefix: /old}
    redirect: {path_redirect: /new, response_code: PERMANENT_REDIRECT}
  - match: {path: /ok}
    direct_response: {status: 200, body: {inline_string: ok}}
"#;

    const ROUTES_CAMEL: &str = r#"
name: routes
validateClusters: true
maxDirectResponseBodySizeBytes: 4096
ignorePortInHostMatching: true
requestHeadersToAdd: [{header: {key: x-via, value: myelin}, appendAction: OVERWRITE_IF_EXISTS_OR_ADD}]
virtualHosts:
- name: vh
  domains: [example.com]
  requireTls: NONE
  typedPerFilterConfig:
    envoy.filters.http.fault:
      '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      delay: {fixedDelay: 0.2s, percentage: {numerator: 10, denominator: HUNDRED}}
      maxActiveFaults: 3
  routes:
  - match:
      safeRegex: {regex: '^/api/.*'}
      headers: [{name: x-canary, stringMatch: {exact: 'yes'}}]
    route:
      weightedClusters: {clusters: [{name: a, weight: 80}, {name: b, weight: 20}]}
      timeout: 2s
      retryPolicy: {retryOn: 5xx, numRetries: 3, perTryTimeout: 0.25s, retryBackOff: {baseInterval: 0.1s}}
      hashPolicy: [{header: {headerName: x-user}}]
      requestMirrorPolicies: [{cluster: shadow, traceSampled: false}]
  - match: {prefix: /old}
    redirect: {pathRedirect: /new, responseCode: PERMANENT_REDIRECT}
  - match: {path: /ok}
    directResponse: {status: 200, body: {inlineString: ok}}
"#;

    fn typed_config(f: &xds_api::pb::envoy::config::listener::v3::Filter) -> &[u8] {
        use xds_api::pb::envoy::config::listener::v3::filter::ConfigType;
        match &f.config_type {
            Some(ConfigType::TypedConfig(a)) => &a.value,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn camel_case_documents_read_as_snake_case_ones() {
        use xds_api::pb::google::protobuf::{BoolValue, Duration, UInt32Value};

        let camel: Listener = from_value(yaml(LISTENER_CAMEL)).unwrap();
        assert_eq!(camel, from_value::<Listener>(yaml(LISTENER_SNAKE)).unwrap());
        assert_eq!(
            camel.max_connections_to_accept_per_socket_event,
            Some(UInt32Value { value: 4 })
        );
        let hcm = HttpConnectionManager::decode(typed_config(&camel.filter_chains[0].filters[0]))
            .unwrap();
        assert_eq!(
            hcm.stream_idle_timeout,
            Some(Duration {
                seconds: 300,
                nanos: 0
            })
        );
        assert_eq!(
            hcm.common_http_protocol_options.unwrap().max_headers_count,
            Some(UInt32Value { value: 100 })
        );
        assert!(hcm.http_protocol_options.unwrap().accept_http_10);
        assert_eq!(
            hcm.tracing.unwrap().spawn_upstream_span,
            Some(BoolValue { value: true })
        );
        let tcp = ext::TcpProxy::decode(typed_config(&camel.filter_chains[1].filters[0])).unwrap();
        assert_eq!(tcp.stat_prefix, "tcp");
        assert_eq!(tcp.weighted_clusters.unwrap().clusters[1].weight, 3);
        let tunnel = tcp.tunneling_config.unwrap();
        assert!(tunnel.use_post);
        // A wrapper in a message of the descriptor set inside a message of ext.
        #[allow(deprecated)]
        let append = tunnel.headers_to_add[0].append;
        assert_eq!(append, Some(BoolValue { value: false }));

        let camel: Cluster = from_value(yaml(CLUSTER_CAMEL)).unwrap();
        assert_eq!(camel, from_value::<Cluster>(yaml(CLUSTER_SNAKE)).unwrap());
        let opts = ext::UpstreamHttpProtocolOptions::decode(
            &*camel.typed_extension_protocol_options
                ["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                .value,
        )
        .unwrap();
        assert_eq!(
            opts.common_http_protocol_options
                .unwrap()
                .max_requests_per_connection,
            Some(UInt32Value { value: 100 })
        );
        let h2 = opts
            .explicit_http_config
            .unwrap()
            .http2_protocol_options
            .unwrap();
        assert_eq!(h2.max_concurrent_streams, Some(UInt32Value { value: 50 }));
        assert_eq!(
            h2.connection_keepalive.unwrap().interval,
            Some(Duration {
                seconds: 30,
                nanos: 0
            })
        );
        let outlier = camel.outlier_detection.as_ref().unwrap();
        assert_eq!(outlier.consecutive_5xx, Some(UInt32Value { value: 5 }));

        let camel: RouteConfiguration = from_value(yaml(ROUTES_CAMEL)).unwrap();
        assert_eq!(
            camel,
            from_value::<RouteConfiguration>(yaml(ROUTES_SNAKE)).unwrap()
        );
        let fault = ext::HttpFault::decode(
            &*camel.virtual_hosts[0].typed_per_filter_config["envoy.filters.http.fault"].value,
        )
        .unwrap();
        assert_eq!(
            fault.delay.unwrap().fixed_delay,
            Some(Duration {
                seconds: 0,
                nanos: 200_000_000
            })
        );
        assert_eq!(fault.max_active_faults, Some(UInt32Value { value: 3 }));
        // And Myelin converts it.
        super::super::route_configuration(&camel).unwrap();
    }

    #[test]
    fn wrappers_from_plain_scalars() {
        use xds_api::pb::envoy::config::route::v3::{rate_limit, route};
        use xds_api::pb::google::protobuf::{BoolValue, DoubleValue, UInt32Value};

        let l: Listener = from_value(yaml(
            "name: l\nmax_connections_to_accept_per_socket_event: 1\n",
        ))
        .unwrap();
        assert_eq!(
            l.max_connections_to_accept_per_socket_event,
            Some(UInt32Value { value: 1 })
        );

        let c: Cluster = from_value(yaml(
            r#"
name: c
health_checks: [{healthy_threshold: 2, unhealthy_threshold: 4}]
outlier_detection: {consecutive_local_origin_failure: 7}
preconnect_policy: {per_upstream_preconnect_ratio: 1.5, predictive_preconnect_ratio: 3}
"#,
        ))
        .unwrap();
        let hc = &c.health_checks[0];
        assert_eq!(hc.healthy_threshold, Some(UInt32Value { value: 2 }));
        assert_eq!(hc.unhealthy_threshold, Some(UInt32Value { value: 4 }));
        assert_eq!(
            c.outlier_detection
                .unwrap()
                .consecutive_local_origin_failure,
            Some(UInt32Value { value: 7 })
        );
        let pre = c.preconnect_policy.unwrap();
        assert_eq!(
            pre.per_upstream_preconnect_ratio,
            Some(DoubleValue { value: 1.5 })
        );
        assert_eq!(
            pre.predictive_preconnect_ratio,
            Some(DoubleValue { value: 3.0 })
        );

        let rc: RouteConfiguration = from_value(yaml(
            r#"
name: r
validate_clusters: false
max_direct_response_body_size_bytes: 8192
virtual_hosts:
- name: v
  domains: ['*']
  rate_limits:
  - actions:
    - header_value_match: {descriptor_value: a, expect_match: false, headers: [{name: x}]}
    - query_parameter_value_match: {descriptor_value: b, expect_match: true, query_parameters: [{name: q}]}
  routes:
  - match: {prefix: /}
    route: {cluster: c, request_mirror_policies: [{cluster: m, trace_sampled: false}]}
"#,
        ))
        .unwrap();
        assert_eq!(rc.validate_clusters, Some(BoolValue { value: false }));
        assert_eq!(
            rc.max_direct_response_body_size_bytes,
            Some(UInt32Value { value: 8192 })
        );
        let actions = &rc.virtual_hosts[0].rate_limits[0].actions;
        let Some(rate_limit::action::ActionSpecifier::HeaderValueMatch(h)) =
            &actions[0].action_specifier
        else {
            panic!("{actions:?}")
        };
        assert_eq!(h.expect_match, Some(BoolValue { value: false }));
        let Some(rate_limit::action::ActionSpecifier::QueryParameterValueMatch(q)) =
            &actions[1].action_specifier
        else {
            panic!("{actions:?}")
        };
        assert_eq!(q.expect_match, Some(BoolValue { value: true }));
        let Some(route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
            panic!()
        };
        assert_eq!(
            a.request_mirror_policies[0].trace_sampled,
            Some(BoolValue { value: false })
        );

        let l: Listener = from_value(yaml(
            r#"
name: l
filter_chains:
- filters:
  - name: hcm
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      tracing: {spawn_upstream_span: false}
"#,
        ))
        .unwrap();
        let hcm =
            HttpConnectionManager::decode(typed_config(&l.filter_chains[0].filters[0])).unwrap();
        assert_eq!(
            hcm.tracing.unwrap().spawn_upstream_span,
            Some(BoolValue { value: false })
        );
    }

    /// The keys of a `google.protobuf.Struct` (its `fields`), of a `struct_value` inside.
    fn struct_keys(s: &xds_api::pb::google::protobuf::Struct) -> Vec<&str> {
        let mut keys: Vec<&str> = s.fields.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    fn struct_value(
        v: &xds_api::pb::google::protobuf::Value,
    ) -> &xds_api::pb::google::protobuf::Struct {
        match &v.kind {
            Some(xds_api::pb::google::protobuf::value::Kind::StructValue(s)) => s,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn struct_fields_are_free_form() {
        // `TransportSocketMatch.match` is a `Struct`: its keys are the endpoint metadata's,
        // never renamed (`tlsMode` is not a field name to turn into `tls_mode`).
        for doc in [
            r#"
name: c
transport_socket_matches:
- name: mtls
  match: {tlsMode: istio, acme.io/Zone: us-east-1, weight: 1, nested: {camelKey: [1, x]}}
  transport_socket: {name: envoy.transport_sockets.raw_buffer}
"#,
            r#"
name: c
transportSocketMatches:
- name: mtls
  match: {tlsMode: istio, acme.io/Zone: us-east-1, weight: 1, nested: {camelKey: [1, x]}}
  transportSocket: {name: envoy.transport_sockets.raw_buffer}
"#,
        ] {
            let c: Cluster = from_value(yaml(doc)).unwrap();
            let m = c.transport_socket_matches[0].r#match.as_ref().unwrap();
            assert_eq!(
                struct_keys(m),
                ["acme.io/Zone", "nested", "tlsMode", "weight"]
            );
            assert_eq!(struct_keys(struct_value(&m.fields["nested"])), ["camelKey"]);
        }
        // `Value` and `ListValue` likewise.
        use xds_api::pb::google::protobuf::{value::Kind, ListValue};
        let l: ListValue = from_value(serde_json::json!([{"camelKey": null}, "s"])).unwrap();
        assert_eq!(struct_keys(struct_value(&l.values[0])), ["camelKey"]);
        assert_eq!(l.values[1].kind, Some(Kind::StringValue("s".into())));
        let v: xds_api::pb::google::protobuf::Value = from_value(serde_json::json!(2.5)).unwrap();
        assert_eq!(v.kind, Some(Kind::NumberValue(2.5)));
    }

    #[test]
    fn map_keys_are_taken_as_written() {
        let rc: RouteConfiguration = from_value(yaml(
            r#"
name: r
virtualHosts:
- name: v
  domains: ['*']
  typedPerFilterConfig:
    Acme.Filters.HTTP.Fault_V3:
      '@type': type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
      abort: {httpStatus: 503, percentage: {numerator: 1}}
"#,
        ))
        .unwrap();
        let tpfc = &rc.virtual_hosts[0].typed_per_filter_config;
        assert_eq!(
            tpfc.keys().collect::<Vec<_>>(),
            ["Acme.Filters.HTTP.Fault_V3"]
        );
        let fault = ext::HttpFault::decode(&*tpfc["Acme.Filters.HTTP.Fault_V3"].value).unwrap();
        assert_eq!(fault.abort.unwrap().http_status, Some(503));

        let c: Cluster = from_value(yaml(
            r#"
name: c
metadata:
  filterMetadata:
    envoy.lb: {canary: true}
    Acme.IO/Team: {ownerName: x, on_call: {primaryContact: y}}
"#,
        ))
        .unwrap();
        let fm = &c.metadata.unwrap().filter_metadata;
        let mut namespaces: Vec<&str> = fm.keys().map(String::as_str).collect();
        namespaces.sort_unstable();
        assert_eq!(namespaces, ["Acme.IO/Team", "envoy.lb"]);
        let team = &fm["Acme.IO/Team"];
        assert_eq!(struct_keys(team), ["on_call", "ownerName"]);
        assert_eq!(
            struct_keys(struct_value(&team.fields["on_call"])),
            ["primaryContact"]
        );
    }

    #[test]
    fn unknown_keys_are_named_as_written() {
        let e = from_value::<Cluster>(yaml("name: c\nconnectTimeoutz: 1s\n")).unwrap_err();
        assert_eq!(
            e.at("clusters[2]"),
            "clusters[2].connectTimeoutz: unknown field `connectTimeoutz`"
        );
        // Through renamed keys (the path names them by their proto names) into a message of
        // ext, and into a message of the descriptor set inside it.
        let doc = r#"
name: l
filterChains:
- filters:
  - name: tcp
    typedConfig:
      '@type': type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      statPrefix: t
      tunnelingConfig: {hostname: h, headersToAdd: [{header: {key: k, value: v}, appendz: true}]}
"#;
        let e = from_value::<Listener>(yaml(doc)).unwrap_err();
        assert_eq!(
            e.at("listeners[0]"),
            "listeners[0].filter_chains[0].filters[0].typed_config.tunneling_config.\
             headers_to_add[0].appendz: unknown field `appendz`: envoy.extensions.filters.\
             network.tcp_proxy.v3.TcpProxy has no such field (a typo, or a field of another \
             Envoy version?)"
        );
        let e =
            from_value::<Listener>(yaml(&doc.replace("statPrefix", "statPrefixz"))).unwrap_err();
        assert_eq!(
            e.at("listeners[0]"),
            "listeners[0].filter_chains[0].filters[0].typed_config.statPrefixz: unknown field \
             `statPrefixz`: envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy has no such \
             field (a typo, or a field of another Envoy version?)"
        );
    }
}
