//! Envoy bootstrap files: `node`, `static_resources`, `dynamic_resources` and `admin`, read
//! through the same conversion as xDS (`crate::convert`).
//!
//! Every problem is collected with its field path from the top of the file
//! (`static_resources.listeners[1].filter_chains[0]...`), so `myelin validate` can list them
//! all. Forms of Envoy's v1/v2 API are rejected by name before anything else, since their
//! fields would otherwise surface as puzzling "unknown field" errors.

use std::net::SocketAddr;

use myelin_proxy::model;
use serde::Serialize;
use serde_json::Value;
use xds_api::pb::envoy::config::{cluster::v3 as cpb, core::v3 as core, listener::v3 as lpb};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as tpb;
use xds_api::pb::google::protobuf as pb;

use crate::convert::{self, json, Rejection};

/// `node`: how this proxy introduces itself to a control plane.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Node {
    pub id: String,
    pub cluster: String,
    /// `node.metadata`, passed to the control plane as given.
    pub metadata: Option<Value>,
}

impl Node {
    /// The `envoy.config.core.v3.Node` sent in the first request of every ADS stream, with
    /// Myelin as the user agent.
    pub fn to_proto(&self) -> core::Node {
        core::Node {
            id: self.id.clone(),
            cluster: self.cluster.clone(),
            metadata: self
                .metadata
                .as_ref()
                .and_then(|m| match to_proto_value(m).kind {
                    Some(pb::value::Kind::StructValue(s)) => Some(s),
                    _ => None,
                }),
            user_agent_name: "myelin".into(),
            user_agent_version_type: Some(core::node::UserAgentVersionType::UserAgentVersion(
                env!("CARGO_PKG_VERSION").into(),
            )),
            ..Default::default()
        }
    }
}

/// JSON -> `google.protobuf.Value` (the proto3 JSON mapping of `Struct`, in reverse).
fn to_proto_value(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(pb::NullValue::NullValue as i32),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(pb::ListValue {
            values: items.iter().map(to_proto_value).collect(),
        }),
        Value::Object(m) => Kind::StructValue(pb::Struct {
            fields: m
                .iter()
                .map(|(k, v)| (k.clone(), to_proto_value(v)))
                .collect(),
        }),
    };
    pb::Value { kind: Some(kind) }
}

/// The ADS flavour (`dynamic_resources.ads_config.api_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AdsApi {
    /// `GRPC`: state of the world.
    Grpc,
    /// `DELTA_GRPC`: incremental.
    DeltaGrpc,
}

/// `dynamic_resources`: where ADS comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdsSource {
    pub api: AdsApi,
    /// The static cluster that reaches the control plane (`envoy_grpc.cluster_name`).
    pub cluster: String,
}

/// A converted bootstrap.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Bootstrap {
    pub node: Option<Node>,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    pub ads: Option<AdsSource>,
    pub listeners: Vec<model::listener::Listener>,
    pub clusters: Vec<model::cluster::Cluster>,
    pub secrets: Vec<model::secret::Secret>,
}

/// Top-level keys that only tune Envoy internals (watchdogs, stats): accepted and ignored.
const IGNORED: &[&str] = &[
    "watchdog",
    "watchdogs",
    "stats_config",
    "stats_sinks",
    "stats_flush_interval",
];
/// Top-level keys accepted only when empty (`{}`), as the Envoy examples write them.
const EMPTY_ONLY: &[&str] = &["cluster_manager", "overload_manager", "layered_runtime"];

/// Reads the Envoy sections of a parsed bootstrap document. `myelin` (Myelin's own section)
/// is skipped here; any other unknown top-level key is a problem.
pub fn from_value(doc: &Value) -> Result<Bootstrap, Vec<String>> {
    let mut errs = Vec::new();
    let mut out = Bootstrap::default();
    let Some(top) = doc.as_object() else {
        return Err(vec![". : a bootstrap must be a mapping".into()]);
    };
    for (key, value) in top {
        match key.as_str() {
            "myelin" => {}
            "node" => out.node = node(value, &mut errs),
            "admin" => out.admin = admin(value, &mut errs),
            "dynamic_resources" => out.ads = dynamic(value, &mut errs),
            "static_resources" => static_resources(value, &mut out, &mut errs),
            k if IGNORED.contains(&k) => {}
            k if EMPTY_ONLY.contains(&k) => {
                if value.as_object().is_none_or(|m| !m.is_empty()) {
                    errs.push(format!(
                        "{k}: not supported (only an empty {k}: {{}} is accepted)"
                    ));
                }
            }
            k => errs.push(format!("{k}: not supported")),
        }
    }
    if let Some(ads) = &out.ads {
        if !out.clusters.iter().any(|c| c.name == ads.cluster)
            && !errs
                .iter()
                .any(|e| e.starts_with("static_resources.clusters"))
        {
            errs.push(format!(
                "dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: no static cluster named {:?}",
                ads.cluster
            ));
        }
    }
    if errs.is_empty() {
        Ok(out)
    } else {
        Err(errs)
    }
}

fn node(v: &Value, errs: &mut Vec<String>) -> Option<Node> {
    let Some(m) = v.as_object() else {
        errs.push("node: must be a mapping".into());
        return None;
    };
    let mut n = Node::default();
    for (k, v) in m {
        match (k.as_str(), v) {
            ("id", Value::String(s)) => n.id = s.clone(),
            ("cluster", Value::String(s)) => n.cluster = s.clone(),
            ("metadata", v @ Value::Object(_)) => n.metadata = Some(v.clone()),
            ("metadata", v) => errs.push(format!("node.metadata: must be a mapping (value {v})")),
            ("locality" | "user_agent_name", _) => {}
            (k, v) => errs.push(format!("node.{k}: not supported (value {v})")),
        }
    }
    Some(n)
}

fn admin(v: &Value, errs: &mut Vec<String>) -> Option<SocketAddr> {
    let mut addr = None;
    for (k, v) in v.as_object().into_iter().flatten() {
        match k.as_str() {
            "address" => match socket_address(&v["socket_address"]) {
                Ok(a) => addr = Some(a),
                Err(e) => errs.push(format!("admin.address.socket_address: {e}")),
            },
            // Where Envoy writes its admin access log: Myelin logs admin access through tracing.
            "access_log_path" | "access_log" | "profile_path" => {}
            k => errs.push(format!("admin.{k}: not supported")),
        }
    }
    addr
}

fn socket_address(v: &Value) -> Result<SocketAddr, String> {
    let ip = v["address"].as_str().ok_or("address: missing")?;
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|e| format!("address {ip:?}: {e} (an IP address is needed here)"))?;
    let port = v["port_value"].as_u64().ok_or("port_value: missing")?;
    let port = u16::try_from(port).map_err(|_| format!("port_value {port}: out of range"))?;
    Ok(SocketAddr::new(ip, port))
}

fn dynamic(v: &Value, errs: &mut Vec<String>) -> Option<AdsSource> {
    let mut ads = None;
    for (k, v) in v.as_object().into_iter().flatten() {
        let p = format!("dynamic_resources.{k}");
        match k.as_str() {
            "ads_config" => ads = ads_config(v, &p, errs),
            "cds_config" | "lds_config" => {
                let only_ads = v.as_object().is_some_and(|m| {
                    m.contains_key("ads")
                        && m.iter()
                            .all(|(k, v)| k == "ads" || (k == "resource_api_version" && v == "V3"))
                });
                if !only_ads {
                    errs.push(format!(
                        "{p}: only `ads: {{}}` is supported (config comes over ADS)"
                    ));
                }
            }
            _ => errs.push(format!("{p}: not supported")),
        }
    }
    ads
}

fn ads_config(v: &Value, p: &str, errs: &mut Vec<String>) -> Option<AdsSource> {
    let api = match v["api_type"].as_str() {
        Some("GRPC") => AdsApi::Grpc,
        Some("DELTA_GRPC") => AdsApi::DeltaGrpc,
        other => {
            errs.push(format!(
                "{p}.api_type: {other:?}: only GRPC and DELTA_GRPC are supported"
            ));
            return None;
        }
    };
    for (k, v) in v.as_object().into_iter().flatten() {
        match k.as_str() {
            "api_type" | "grpc_services" | "set_node_on_first_message_only" => {}
            "transport_api_version" if v == "V3" => {}
            k => errs.push(format!("{p}.{k}: not supported")),
        }
    }
    let services = v["grpc_services"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if services.len() != 1 {
        errs.push(format!(
            "{p}.grpc_services: exactly one service is supported, got {}",
            services.len()
        ));
        return None;
    }
    match services[0]["envoy_grpc"]["cluster_name"].as_str() {
        Some(c) => Some(AdsSource {
            api,
            cluster: c.to_owned(),
        }),
        None => {
            errs.push(format!(
                "{p}.grpc_services[0]: only envoy_grpc with a cluster_name is supported (google_grpc is not)"
            ));
            None
        }
    }
}

fn static_resources(v: &Value, out: &mut Bootstrap, errs: &mut Vec<String>) {
    for (k, v) in v.as_object().into_iter().flatten() {
        let p = format!("static_resources.{k}");
        let items = v.as_array().map(Vec::as_slice).unwrap_or_default();
        match k.as_str() {
            "listeners" => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(l) =
                        resource::<lpb::Listener, _>(item, &ip, errs, convert::listener)
                    {
                        out.listeners.push(l);
                    }
                }
            }
            "clusters" => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(c) = resource::<cpb::Cluster, _>(item, &ip, errs, convert::cluster)
                    {
                        out.clusters.push(c);
                    }
                }
            }
            "secrets" => {
                for (i, item) in items.iter().enumerate() {
                    let ip = format!("{p}[{i}]");
                    if let Some(s) = resource::<tpb::Secret, _>(item, &ip, errs, convert::secret) {
                        out.secrets.push(s);
                    }
                }
            }
            _ => errs.push(format!("{p}: not supported")),
        }
    }
}

/// One static resource: deprecated forms, then YAML -> proto, then proto -> model.
fn resource<P, M>(
    v: &Value,
    path: &str,
    errs: &mut Vec<String>,
    conv: impl Fn(&P) -> Result<M, Vec<Rejection>>,
) -> Option<M>
where
    P: serde::de::DeserializeOwned + prost::Name,
{
    let before = errs.len();
    deprecated_forms(v, path, errs);
    if errs.len() > before {
        return None;
    }
    let proto: P = match json::from_value(v.clone()) {
        Ok(p) => p,
        Err(e) => {
            errs.push(e.at(path));
            return None;
        }
    };
    match conv(&proto) {
        Ok(m) => Some(m),
        Err(rs) => {
            errs.extend(rs.into_iter().map(|r| r.prefixed(path).to_string()));
            None
        }
    }
}

/// Envoy v1/v2 forms, named for what they are.
fn deprecated_forms(v: &Value, path: &str, errs: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{path}.{k}");
                match k.as_str() {
                    "deprecated_v1" => errs.push(format!(
                        "{p}: the deprecated Envoy v1 filter format is not supported (Myelin reads the v3 API only)"
                    )),
                    "config" if m.contains_key("name") => errs.push(format!(
                        "{p}: the untyped `config` of the v1/v2 API is not supported; use `typed_config` with an \"@type\""
                    )),
                    "use_original_dst" => errs.push(format!(
                        "{p}: deprecated v1/v2 listener field; Myelin hands captured connections to listeners by original destination itself"
                    )),
                    _ => {}
                }
                deprecated_forms(child, &p, errs);
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                deprecated_forms(item, &format!("{path}[{i}]"), errs);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str) -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/envoy")
            .join(name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (CI has shared/ beside the repo)", path.display()));
        serde_yaml::from_str(&text).unwrap()
    }

    #[test]
    fn ads_bootstrap_is_accepted() {
        let b = from_value(&load("ads.yaml")).unwrap();
        assert_eq!(
            b.ads,
            Some(AdsSource {
                api: AdsApi::Grpc,
                cluster: "ads_cluster".into()
            })
        );
        assert_eq!(b.node.as_ref().unwrap().id, "envoy_node");
        assert_eq!(b.node.as_ref().unwrap().cluster, "envoy_cluster");
        assert_eq!(b.clusters[0].name, "ads_cluster");
        assert!(b.clusters[0].tcp_keepalive.is_some());
    }

    #[test]
    fn deprecated_v1_is_rejected_by_name() {
        let errs = from_value(&load("original-dst-deprecated-v1.yaml")).unwrap_err();
        let all = errs.join("\n");
        assert!(all.contains("static_resources.listeners[0].filter_chains[0].filters[0].config: the untyped `config`"), "{all}");
        assert!(
            all.contains("filters[0].config.deprecated_v1: the deprecated Envoy v1"),
            "{all}"
        );
        assert!(
            all.contains("static_resources.listeners[0].use_original_dst: deprecated"),
            "{all}"
        );
    }

    #[test]
    fn problems_carry_paths_from_the_top() {
        let errs = from_value(&load("envoyproxy_io_proxy.yaml")).unwrap_err();
        assert!(
            errs[0].starts_with("static_resources.listeners[0]"),
            "{errs:?}"
        );
        let doc: Value = serde_yaml::from_str(
            "admin: { address: { socket_address: { address: localhost, port_value: 9901 } } }\n\
             dynamic_resources: { ads_config: { api_type: REST } }\n\
             tracing: { http: {} }\n\
             cluster_manager: { outlier_detection: {} }\n",
        )
        .unwrap();
        let errs = from_value(&doc).unwrap_err();
        assert!(
            errs[0].starts_with("admin.address.socket_address: address \"localhost\""),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("dynamic_resources.ads_config.api_type: Some(\"REST\")")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e == "tracing: not supported"),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("cluster_manager: not supported")),
            "{errs:?}"
        );
    }

    #[test]
    fn node_goes_to_the_control_plane_with_its_metadata() {
        let doc: Value = serde_yaml::from_str(
            "node: { id: n1, cluster: c1, metadata: { ISTIO_VERSION: \"1.24\", labels: { app: web }, n: 3, on: true, l: [a, ~] } }\n",
        )
        .unwrap();
        let p = from_value(&doc).unwrap().node.unwrap().to_proto();
        assert_eq!((p.id.as_str(), p.cluster.as_str()), ("n1", "c1"));
        assert_eq!(p.user_agent_name, "myelin");
        let md = p.metadata.unwrap().fields;
        let kind = |k: &str| md[k].kind.clone().unwrap();
        assert_eq!(
            kind("ISTIO_VERSION"),
            pb::value::Kind::StringValue("1.24".into())
        );
        assert_eq!(kind("n"), pb::value::Kind::NumberValue(3.0));
        assert_eq!(kind("on"), pb::value::Kind::BoolValue(true));
        let pb::value::Kind::StructValue(labels) = kind("labels") else {
            panic!("labels: {:?}", kind("labels"))
        };
        assert_eq!(
            labels.fields["app"].kind,
            Some(pb::value::Kind::StringValue("web".into()))
        );
        let pb::value::Kind::ListValue(l) = kind("l") else {
            panic!("l: {:?}", kind("l"))
        };
        assert_eq!(l.values.len(), 2);

        let doc: Value = serde_yaml::from_str("node: { id: n1, metadata: [a] }\n").unwrap();
        assert_eq!(
            from_value(&doc).unwrap_err(),
            ["node.metadata: must be a mapping (value [\"a\"])"]
        );
    }

    #[test]
    fn ads_cluster_must_exist() {
        let doc: Value = serde_yaml::from_str(
            "dynamic_resources:\n  ads_config: { api_type: DELTA_GRPC, grpc_services: [ { envoy_grpc: { cluster_name: cp } } ] }\n",
        )
        .unwrap();
        let errs = from_value(&doc).unwrap_err();
        assert_eq!(
            errs,
            ["dynamic_resources.ads_config.grpc_services[0].envoy_grpc.cluster_name: no static cluster named \"cp\""]
        );
    }
}
