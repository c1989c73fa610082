//! The real Envoy configs in `../shared/data/envoy/` through the YAML route and the
//! conversion: what converts and what is rejected, by path.

use super::*;
use xds_api::pb::envoy::config::{cluster::v3 as cpb, listener::v3 as lpb};

fn load(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data/envoy")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (CI has shared/ beside the repo)", path.display()));
    serde_yaml::from_str(&text).unwrap()
}

/// Converts every listener and cluster of a bootstrap's `static_resources`; returns the
/// converted names and every rejection message, prefixed by where the resource sits.
fn convert_static(doc: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let sr = &doc["static_resources"];
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    for (i, l) in sr["listeners"].as_array().into_iter().flatten().enumerate() {
        let l: lpb::Listener = json::from_value(l.clone()).unwrap();
        match listener(&l) {
            Ok(m) => ok.push(m.name),
            Err(e) => errs.extend(e.into_iter().map(|r| {
                r.prefixed(&format!("static_resources.listeners[{i}]"))
                    .to_string()
            })),
        }
    }
    for (i, c) in sr["clusters"].as_array().into_iter().flatten().enumerate() {
        let c: cpb::Cluster = json::from_value(c.clone()).unwrap();
        match cluster(&c) {
            Ok(m) => ok.push(m.name),
            Err(e) => errs.extend(e.into_iter().map(|r| {
                r.prefixed(&format!("static_resources.clusters[{i}]"))
                    .to_string()
            })),
        }
    }
    (ok, errs)
}

#[test]
fn envoy_demo() {
    // Envoy's own demo, whole: its second listener answers every request with a local
    // reply that `local_reply_config` turns into the welcome page.
    let (ok, errs) = convert_static(&load("envoy-demo.yaml"));
    assert_eq!(ok, ["listener_0", "listener_1", "loopback"]);
    assert!(errs.is_empty(), "{errs:?}");
}

#[test]
fn envoy_demo_listener_0_model() {
    let doc = load("envoy-demo.yaml");
    let l: lpb::Listener =
        json::from_value(doc["static_resources"]["listeners"][0].clone()).unwrap();
    let m = listener(&l).unwrap();
    assert_eq!(m.address, "0.0.0.0:10000".parse().unwrap());
    assert!(m.bind_to_port);
    let model::listener::NetworkFilter::HttpConnectionManager(h) = &m.filter_chains[0].filter
    else {
        panic!()
    };
    assert_eq!(h.stat_prefix, "ingress_http");
    let model::listener::RouteSource::Inline(rc) = &h.route else {
        panic!()
    };
    assert_eq!(rc.name, "proxy");
    assert_eq!(
        rc.virtual_hosts[0].domains,
        [model::route::DomainMatch::Any]
    );
    let model::route::Action::Route(a) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.cluster,
        model::route::ClusterSpecifier::Cluster("loopback".into())
    );
    assert_eq!(a.timeout, Some(std::time::Duration::from_secs(15)));
}

#[test]
fn envoyproxy_io_proxy() {
    let doc = load("envoyproxy_io_proxy.yaml");
    // The listener's connection manager sets `scheme_header_transformation: OVERWRITE_SCHEME`
    // and `scheme: https`, a shape that is not in the v3 API (the message is
    // `{scheme_to_overwrite, match_upstream}`): it fails to deserialize, naming the field.
    let l = doc["static_resources"]["listeners"][0].clone();
    let e = json::from_value::<lpb::Listener>(l)
        .unwrap_err()
        .at("listeners[0]");
    assert_eq!(
        e,
        "listeners[0].filter_chains[0].filters[0].typed_config.scheme: unknown field `scheme`: \
         envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager has \
         no such field (a typo, or a field of another Envoy version?)"
    );
    // The cluster (LOGICAL_DNS, upstream TLS with SNI) converts.
    let c: cpb::Cluster = json::from_value(doc["static_resources"]["clusters"][0].clone()).unwrap();
    let c = cluster(&c).unwrap();
    assert_eq!(c.discovery, model::cluster::Discovery::LogicalDns);
    assert_eq!(c.connect_timeout, std::time::Duration::from_secs(30));
    assert_eq!(c.dns_lookup_family, model::cluster::DnsLookupFamily::V4Only);
    assert_eq!(
        c.tls.as_ref().unwrap().sni.as_deref(),
        Some("www.envoyproxy.io")
    );
    assert_eq!(
        c.load_assignment.unwrap().localities[0].endpoints[0].address,
        model::endpoint::EndpointAddress::Dns {
            host: "www.envoyproxy.io".into(),
            port: 443
        }
    );
    // In the v3 shape (`scheme_to_overwrite: https`, what the file means) the listener
    // converts whole: every request's scheme becomes `https`, and the host rewrite is read.
    let mut l = doc["static_resources"]["listeners"][0].clone();
    let tc = &mut l["filter_chains"][0]["filters"][0]["typed_config"];
    tc.as_object_mut().unwrap().remove("scheme");
    tc["scheme_header_transformation"] = serde_json::json!({"scheme_to_overwrite": "https"});
    let l: lpb::Listener = json::from_value(l).unwrap();
    let m = listener(&l).unwrap();
    let model::listener::NetworkFilter::HttpConnectionManager(h) = &m.filter_chains[0].filter
    else {
        panic!()
    };
    assert_eq!(
        h.headers.scheme_to_overwrite,
        Some(model::listener::RequestScheme::Https)
    );
    let model::listener::RouteSource::Inline(rc) = &h.route else {
        panic!()
    };
    let model::route::Action::Route(a) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.host_rewrite,
        Some(model::route::HostRewrite::Literal(
            "www.envoyproxy.io".into()
        ))
    );
}

#[test]
fn yaml_with_wrappers_durations_and_nested_any() {
    let yaml = r#"
name: l
address: {socket_address: {address: 10.0.0.1, port_value: 80}}
bind_to_port: false
filter_chains:
- filter_chain_match: {destination_port: 80, prefix_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}
  filters:
  - name: envoy.filters.network.tcp_proxy
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
      stat_prefix: t
      weighted_clusters: {clusters: [{name: a, weight: 1}, {name: b, weight: 3}]}
      idle_timeout: 0.5s
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: h
      rds: {route_config_name: r1}
      request_timeout: 2s
      http_filters:
      - name: envoy.filters.http.router
        typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}
"#;
    let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let l: lpb::Listener = json::from_value(v).unwrap();
    let m = listener(&l).unwrap();
    assert!(!m.bind_to_port);
    let fc = &m.filter_chains[0];
    assert_eq!(fc.filter_chain_match.destination_port, Some(80));
    assert_eq!(fc.filter_chain_match.prefix_ranges[0].prefix_len, 8);
    let model::listener::NetworkFilter::TcpProxy(t) = &fc.filter else {
        panic!()
    };
    assert_eq!(t.idle_timeout, Some(std::time::Duration::from_millis(500)));
    assert_eq!(
        t.cluster,
        model::listener::TcpCluster::Weighted(vec![
            model::listener::WeightedCluster {
                name: "a".into(),
                weight: 1,
                routing: None
            },
            model::listener::WeightedCluster {
                name: "b".into(),
                weight: 3,
                routing: None
            },
        ])
    );
    let model::listener::NetworkFilter::HttpConnectionManager(h) = &m.filter_chains[1].filter
    else {
        panic!()
    };
    assert_eq!(h.route, model::listener::RouteSource::Rds("r1".into()));
    assert_eq!(h.request_timeout, Some(std::time::Duration::from_secs(2)));
}

#[test]
fn yaml_v2_config_instead_of_typed_config_is_named() {
    let yaml = r#"
name: l
address: {socket_address: {address: 0.0.0.0, port_value: 80}}
filter_chains:
- filters:
  - name: envoy.tcp_proxy
    config: {stat_prefix: t, cluster: c}
"#;
    let v: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    let e = json::from_value::<lpb::Listener>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `config`"), "{e}");
}
