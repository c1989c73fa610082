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
                kind: f
                    .message
                    .map_or(Kind::Plain, |m| Kind::Message(m.to_owned())),
                repeated: f.repeated,
                map_value: None,
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
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" => {
            enc::<ext::UpstreamHttpProtocolOptions>(body)
        }
        "envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig" => {
            enc::<ext::UuidRequestIdConfig>(body)
        }
        "envoy.extensions.filters.http.fault.v3.HTTPFault" => enc::<ext::HttpFault>(body),
        "envoy.extensions.filters.http.cors.v3.Cors" => enc::<ext::Cors>(body),
        "envoy.extensions.filters.http.cors.v3.CorsPolicy" => enc::<ext::CorsPolicy>(body),
        "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit" => {
            enc::<ext::LocalRateLimit>(body)
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
}
