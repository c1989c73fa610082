//! Envoy-style YAML/JSON -> `xds-api` types, for the file source and tests.
//!
//! `xds-api` 0.2's pbjson impls do not implement the canonical proto3 JSON mapping for
//! well-known types: a `Duration` must be `{seconds, nanos}` (not `"5s"`), a wrapper
//! (`UInt32Value`, `BoolValue`) must be `{value: ...}`, and an `Any` must be
//! `{"@type", value: <encoded bytes>}` (not the message's fields inline). Envoy configs
//! use the canonical forms, so [`normalize`] rewrites a parsed document first:
//! - strings like `"5s"`/`"0.25s"` under duration-typed field names become `{seconds, nanos}`;
//! - scalars under wrapper-typed field names become `{value}`;
//! - `filter_metadata` values (`google.protobuf.Struct`, free-form JSON) become pbjson's
//!   `{fields: {k: {string_value: ...}}}`;
//! - an object with `"@type"` is decoded as that type (recursively normalized), encoded,
//!   and replaced with `{"@type", value: [bytes]}`; a type Myelin does not know becomes
//!   an empty `Any` of that type, which the conversion then rejects by type name.
//!
//! The field-name tables cover the messages Myelin converts; a field outside them keeps
//! its form and fails to deserialize with serde's message naming the field.

use prost::Message;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::extensions::filters::http::router::v3::Router;
use xds_api::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

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

/// Field names whose type is a wrapper (`google.protobuf.*Value`) in the supported messages.
const WRAPPER_FIELDS: &[&str] = &[
    "bind_to_port",
    "use_original_dst",
    "transparent",
    "freebind",
    "enable_reuse_port",
    "per_connection_buffer_limit_bytes",
    "destination_port",
    "prefix_len",
    "case_sensitive",
    "auto_host_rewrite",
    // `upgrade_configs[].enabled` (connection manager and route); QUIC's `enabled` is a
    // message, which stays as it is (only scalars are wrapped).
    "enabled",
    "append",
    "weight",
    "total_weight",
    "num_retries",
    "load_balancing_weight",
    "max_connections",
    "max_pending_requests",
    "max_requests",
    "max_retries",
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "enforcing_consecutive_5xx",
    "enforcing_consecutive_gateway_failure",
    "enforcing_success_rate",
    "max_ejection_percent",
    "min_retry_concurrency",
    "overprovisioning_factor",
    "failure_percentage_threshold",
    "failure_percentage_minimum_hosts",
    "failure_percentage_request_volume",
    "enforcing_failure_percentage",
    "max_concurrent_streams",
    "initial_stream_window_size",
    "initial_connection_window_size",
    "hpack_table_size",
    "max_outbound_frames",
    "max_outbound_control_frames",
    "max_consecutive_inbound_frames_with_empty_payload",
    "max_inbound_priority_frames_per_stream",
    "max_inbound_window_update_frames_per_data_frame_sent",
    "override_stream_error_on_invalid_http_message",
    "stream_error_on_invalid_http_message",
    "generate_request_id",
    "normalize_path",
    "pack_trace_reason",
    "use_request_id_for_trace_sampling",
    "use_remote_address",
    "max_request_headers_kb",
    "max_requests_per_connection",
    "max_headers_count",
    "max_connect_attempts",
    "success_rate_minimum_hosts",
    "success_rate_request_volume",
    "success_rate_stdev_factor",
    "respect_expected_rq_timeout",
    "dynamic_stats",
    "max_session_keys",
    "keepalive_probes",
    "keepalive_time",
    "keepalive_interval",
    "max_active_faults",
    "allow_credentials",
    "allow_private_network_access",
    "forward_not_matching_preflights",
    "tokens_per_fill",
    "always_consume_default_token_bucket",
    // `local_reply_config.mappers[].status_code`.
    "status_code",
];

fn is_duration_field(k: &str) -> bool {
    k.ends_with("timeout")
        || k.ends_with("interval")
        || k.ends_with("_time")
        || k.ends_with("_duration")
        || k == "fixed_delay"
        || k == "grpc_timeout_header_max"
        || k == "grpc_timeout_header_offset"
        || k == "grpc_timeout_offset"
        || k == "dns_refresh_rate"
        || k == "dns_failure_refresh_rate"
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
pub fn from_value<T: DeserializeOwned>(mut v: Value) -> Result<T, JsonError> {
    normalize(&mut v)?;
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

/// Rewrites canonical proto3 JSON forms into what `xds-api`'s pbjson impls read.
pub fn normalize(v: &mut Value) -> Result<(), JsonError> {
    normalize_at(v, "")
}

fn normalize_at(v: &mut Value, path: &str) -> Result<(), JsonError> {
    match v {
        Value::Array(items) => items
            .iter_mut()
            .enumerate()
            .try_for_each(|(i, item)| normalize_at(item, &format!("{path}[{i}]"))),
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "json_format" {
                    // A format's JSON is free-form too (its keys are the body's).
                    if child.is_object() {
                        *child = pb_struct(child.take());
                    }
                    continue;
                }
                if k == "filter_metadata" {
                    // Metadata values are free-form: no field-name rewriting inside.
                    if let Value::Object(namespaces) = child {
                        for ns in namespaces.values_mut() {
                            *ns = pb_struct(ns.take());
                        }
                    }
                    continue;
                }
                normalize_at(child, &join_path(path, k))?;
                if is_duration_field(k) {
                    if let Some(d) = child.as_str().and_then(parse_duration) {
                        *child = d;
                    }
                }
                if WRAPPER_FIELDS.contains(&k.as_str()) && !child.is_object() && !child.is_null() {
                    *child = serde_json::json!({ "value": child.take() });
                }
            }
            if let Some(Value::String(url)) = map.get("@type").cloned() {
                if !map.contains_key("value") || map.len() > 2 {
                    map.remove("@type");
                    let body = Value::Object(std::mem::take(map));
                    let bytes = encode_any(&url, body).map_err(|e| JsonError::Any {
                        path: path.to_owned(),
                        type_url: url.clone(),
                        error: Box::new(e),
                    })?;
                    let mut out = Map::new();
                    out.insert("@type".into(), Value::String(url));
                    out.insert(
                        "value".into(),
                        Value::Array(bytes.into_iter().map(Value::from).collect()),
                    );
                    *map = out;
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A JSON object as pbjson reads a `google.protobuf.Struct` (`{fields: {k: {string_value:
/// ...}}}`); anything else is left for serde to reject.
fn pb_struct(v: Value) -> Value {
    fn value(v: Value) -> Value {
        match v {
            Value::Null => serde_json::json!({ "null_value": "NULL_VALUE" }),
            Value::Bool(b) => serde_json::json!({ "bool_value": b }),
            Value::Number(n) => serde_json::json!({ "number_value": n }),
            Value::String(s) => serde_json::json!({ "string_value": s }),
            Value::Array(a) => {
                serde_json::json!({ "list_value": { "values": a.into_iter().map(value).collect::<Vec<_>>() } })
            }
            o @ Value::Object(_) => serde_json::json!({ "struct_value": pb_struct(o) }),
        }
    }
    match v {
        Value::Object(m) => {
            let fields: Map<String, Value> = m.into_iter().map(|(k, v)| (k, value(v))).collect();
            serde_json::json!({ "fields": fields })
        }
        other => other,
    }
}

fn encode_any(url: &str, body: Value) -> Result<Vec<u8>, JsonError> {
    fn enc<T: DeserializeOwned + Message>(body: Value) -> Result<Vec<u8>, JsonError> {
        Ok(deserialize::<T>(body)?.encode_to_vec())
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
}
