//! ClusterLoadAssignment -> [`model::ClusterLoadAssignment`], with the HBONE endpoint
//! metadata (`myelin.io/hbone`) read into [`me::HboneEndpoint`].

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use myelin_proxy::model::{self, endpoint as me, MetadataValue};
use myelin_proxy::tls::SpiffeId;
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::config::endpoint::v3 as pb;

use super::common::metadata_value;
use super::{idx, join, Cx, Reason, Rejection};

/// Converts an EDS resource (or a cluster's inline `load_assignment`).
pub fn cluster_load_assignment(
    c: &pb::ClusterLoadAssignment,
) -> Result<model::ClusterLoadAssignment, Vec<Rejection>> {
    let mut cx = Cx::default();
    let out = load_assignment(&mut cx, "", c);
    cx.finish(out)
}

pub(crate) fn load_assignment(
    cx: &mut Cx,
    p: &str,
    c: &pb::ClusterLoadAssignment,
) -> model::ClusterLoadAssignment {
    let pb::ClusterLoadAssignment {
        cluster_name,
        endpoints,
        named_endpoints,
        policy,
    } = c;
    cx.unsupported(p, "named_endpoints", named_endpoints);
    if let Some(pol) = policy {
        #[allow(deprecated)]
        let pb::cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = pol;
        let pp = join(p, "policy");
        cx.unsupported(&pp, "drop_overloads", drop_overloads);
        cx.unsupported(&pp, "overprovisioning_factor", overprovisioning_factor);
        cx.unsupported(&pp, "endpoint_stale_after", endpoint_stale_after);
        cx.unsupported(&pp, "weighted_priority_health", weighted_priority_health);
    }
    model::ClusterLoadAssignment {
        cluster_name: cluster_name.clone(),
        localities: endpoints
            .iter()
            .enumerate()
            .map(|(i, l)| locality(cx, &idx(p, "endpoints", i), l))
            .collect(),
    }
}

fn locality(cx: &mut Cx, p: &str, l: &pb::LocalityLbEndpoints) -> me::LocalityEndpoints {
    let pb::LocalityLbEndpoints {
        locality,
        lb_endpoints,
        load_balancing_weight,
        priority,
        proximity,
        lb_config,
    } = l;
    cx.unsupported(p, "proximity", proximity);
    cx.unsupported(p, "leds_cluster_locality_config", lb_config);
    me::LocalityEndpoints {
        locality: locality.as_ref().map(|l| me::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        }),
        priority: *priority,
        load_balancing_weight: load_balancing_weight.as_ref().map(|w| w.value),
        endpoints: lb_endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| lb_endpoint(cx, &idx(p, "lb_endpoints", i), e))
            .collect(),
    }
}

fn lb_endpoint(cx: &mut Cx, p: &str, e: &pb::LbEndpoint) -> Option<me::Endpoint> {
    use pb::lb_endpoint::HostIdentifier as H;
    let pb::LbEndpoint {
        health_status,
        metadata,
        load_balancing_weight,
        host_identifier,
    } = e;
    let health_status = match core::HealthStatus::try_from(*health_status) {
        Ok(core::HealthStatus::Unknown) => me::HealthStatus::Unknown,
        Ok(core::HealthStatus::Healthy) => me::HealthStatus::Healthy,
        Ok(core::HealthStatus::Unhealthy) => me::HealthStatus::Unhealthy,
        Ok(core::HealthStatus::Draining) => me::HealthStatus::Draining,
        Ok(core::HealthStatus::Timeout) => me::HealthStatus::Timeout,
        Ok(core::HealthStatus::Degraded) => me::HealthStatus::Degraded,
        Err(_) => {
            cx.reject(
                join(p, "health_status"),
                Reason::UnsupportedValue(format!("value {health_status}")),
            );
            me::HealthStatus::Unknown
        }
    };
    let weight = load_balancing_weight.as_ref().map_or(1, |w| w.value);
    if weight == 0 {
        cx.reject(
            join(p, "load_balancing_weight"),
            Reason::Invalid("must be at least 1".into()),
        );
    }
    let mut md = BTreeMap::new();
    if let Some(m) = metadata {
        cx.unsupported(
            &join(p, "metadata"),
            "typed_filter_metadata",
            &m.typed_filter_metadata,
        );
        for (k, s) in &m.filter_metadata {
            md.insert(
                k.clone(),
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), metadata_value(v)))
                    .collect(),
            );
        }
    }
    let mut health_check = None;
    let address = match host_identifier {
        Some(H::Endpoint(ep)) => {
            let ep_p = join(p, "endpoint");
            let pb::Endpoint {
                address,
                health_check_config,
                hostname: _,
                additional_addresses,
            } = ep;
            cx.unsupported(&ep_p, "additional_addresses", additional_addresses);
            health_check = health_check_config.as_ref().and_then(|c| {
                super::health_check::endpoint_health_check(
                    cx,
                    &join(&ep_p, "health_check_config"),
                    c,
                )
            });
            match address {
                Some(a) => endpoint_address(cx, &join(&ep_p, "address"), a),
                None => {
                    cx.reject(join(&ep_p, "address"), Reason::Missing);
                    None
                }
            }
        }
        Some(H::EndpointName(_)) => {
            cx.reject(join(p, "endpoint_name"), Reason::NotSupported);
            None
        }
        None => {
            cx.reject(join(p, "endpoint"), Reason::Missing);
            None
        }
    };
    let hbone = md.get(me::HBONE_METADATA).and_then(|fields| {
        let hp = format!(
            "{}[{}]",
            join(p, "metadata.filter_metadata"),
            me::HBONE_METADATA
        );
        hbone_metadata(cx, &hp, fields)
    });
    let address = address?;
    if hbone.is_some() && !matches!(address, me::EndpointAddress::Socket(_)) {
        cx.reject(
            join(p, "endpoint.address"),
            Reason::Invalid(format!(
                "an endpoint with {} metadata needs an IP address (the tunnel's target)",
                me::HBONE_METADATA
            )),
        );
    }
    Some(me::Endpoint {
        address,
        health_status,
        load_balancing_weight: weight,
        metadata: md,
        hbone,
        health_check,
    })
}

/// The [`me::HBONE_METADATA`] fields: `node` (`ip` or `ip:port`, port 15008 by default)
/// and `identity` (a SPIFFE ID, optional).
fn hbone_metadata(
    cx: &mut Cx,
    p: &str,
    fields: &BTreeMap<String, MetadataValue>,
) -> Option<me::HboneEndpoint> {
    let mut node = None;
    let mut identity = None;
    let mut ok = true;
    for (k, v) in fields {
        let fp = join(p, k);
        let MetadataValue::String(text) = v else {
            if k == "node" || k == "identity" {
                cx.reject(fp, Reason::Invalid("must be a string".into()));
            } else {
                cx.reject(fp, Reason::NotSupported);
            }
            ok = false;
            continue;
        };
        match k.as_str() {
            "node" => {
                let parsed = text.parse::<SocketAddr>().or_else(|_| {
                    text.parse::<IpAddr>()
                        .map(|ip| SocketAddr::new(ip, myelin_proxy::hbone::PORT))
                });
                match parsed {
                    Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => node = Some(a),
                    _ => {
                        cx.reject(
                            fp,
                            Reason::Invalid(format!(
                                "{text:?} is not a node address (`ip` or `ip:port`, port 15008 \
                                 by default)"
                            )),
                        );
                        ok = false;
                    }
                }
            }
            "identity" => match text.parse::<SpiffeId>() {
                Ok(id) => identity = Some(id),
                Err(e) => {
                    cx.reject(fp, Reason::Invalid(e.to_string()));
                    ok = false;
                }
            },
            _ => {
                cx.reject(fp, Reason::NotSupported);
                ok = false;
            }
        }
    }
    let Some(node) = node else {
        if ok {
            cx.reject(join(p, "node"), Reason::Missing);
        }
        return None;
    };
    ok.then_some(me::HboneEndpoint { node, identity })
}

/// An IP:port, or a host name:port (resolved by DNS clusters; rejected for others by the
/// cluster conversion).
fn endpoint_address(cx: &mut Cx, p: &str, a: &core::Address) -> Option<me::EndpointAddress> {
    use core::address::Address as A;
    use core::socket_address::PortSpecifier as P;
    let Some(A::SocketAddress(s)) = &a.address else {
        return super::listener::socket_address(cx, p, a).map(me::EndpointAddress::Socket);
    };
    let sp = join(p, "socket_address");
    let port = match s.port_specifier {
        Some(P::PortValue(v)) => cx.u16(&join(&sp, "port_value"), v, "port")?,
        _ => return super::listener::socket_address(cx, p, a).map(me::EndpointAddress::Socket),
    };
    match s.address.parse::<IpAddr>() {
        Ok(_) => super::listener::socket_address(cx, p, a).map(me::EndpointAddress::Socket),
        Err(_) if !s.address.is_empty() && s.resolver_name.is_empty() => {
            if s.protocol != core::socket_address::Protocol::Tcp as i32 {
                cx.reject(
                    join(&sp, "protocol"),
                    Reason::UnsupportedValue("UDP".into()),
                );
            }
            Some(me::EndpointAddress::Dns {
                host: s.address.to_ascii_lowercase(),
                port,
            })
        }
        Err(_) => super::listener::socket_address(cx, p, a)
            .map(|a: SocketAddr| me::EndpointAddress::Socket(a)),
    }
}
