//! Meshed endpoints on other nodes: an endpoint whose EDS metadata says `myelin.io/hbone`
//! is reached through an HBONE tunnel to its node, and that node must present the
//! endpoint's identity (the metadata's `identity`), else one of the identities of the
//! cluster's SAN list (the exact URI SANs of its upstream TLS validation context, as
//! Istio's `ISTIO_MUTUAL` clusters list the service accounts behind a service). Decided
//! once per cluster build; the data path looks the endpoint up by address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::cluster::ValidationSource;
use crate::model::endpoint::HboneEndpoint;
use crate::model::secret::SanType;
use crate::model::{Cluster, StringPattern};
use crate::tls::SpiffeId;

/// Where an HBONE tunnel to a meshed endpoint goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HboneTarget {
    /// The node's HBONE server.
    pub node: SocketAddr,
    /// The identities the node may present for the endpoint (at least one), in order of
    /// preference.
    pub expected: Vec<SpiffeId>,
}

/// What the traffic config says about reaching an address through HBONE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HboneLookup {
    /// Through this tunnel.
    Tunnel(Arc<HboneTarget>),
    /// Meshed, but the config does not say how to verify it: connections fail closed.
    Invalid(Arc<str>),
}

/// The SPIFFE IDs of a cluster's SAN list for endpoints of transport socket `socket`
/// ([`Cluster::socket_for`]: the cluster's own TLS context, or a transport socket match's):
/// its inline validation context's (or the inline part of a combined one) exact,
/// case-sensitive URI SAN matchers that are workload identities. Other matchers cannot
/// name an identity to ask the node for.
pub fn cluster_identities(cluster: &Cluster, socket: usize) -> Vec<SpiffeId> {
    let ctx = match cluster.tls_of(socket).and_then(|t| t.validation.as_ref()) {
        Some(ValidationSource::Inline(v) | ValidationSource::Combined { default: v, .. }) => v,
        Some(ValidationSource::Sds(_)) | None => return Vec::new(),
    };
    let mut ids = Vec::new();
    for m in &ctx.match_subject_alt_names {
        if m.san_type != SanType::Uri || m.matcher.ignore_case {
            continue;
        }
        if let StringPattern::Exact(s) = &m.matcher.pattern {
            if let Ok(id) = s.parse::<SpiffeId>() {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    ids
}

/// How endpoint `addr` of `cluster`, with HBONE metadata `ep` and transport socket
/// `socket`, is reached.
pub fn resolve(
    cluster: &Cluster,
    socket: usize,
    addr: SocketAddr,
    ep: &HboneEndpoint,
) -> HboneLookup {
    let expected = match &ep.identity {
        Some(id) => vec![id.clone()],
        None => cluster_identities(cluster, socket),
    };
    if expected.is_empty() {
        return HboneLookup::Invalid(
            format!(
                "endpoint {addr} of cluster {:?} is a meshed workload on node {} \
                 (myelin.io/hbone) without an identity, and the cluster's upstream TLS \
                 context has no exact URI SAN that is a SPIFFE ID: nothing to verify the \
                 node against",
                cluster.name, ep.node
            )
            .into(),
        );
    }
    HboneLookup::Tunnel(Arc::new(HboneTarget {
        node: ep.node,
        expected,
    }))
}

/// Adds `lookup` for `addr` to `index`. The same address in several clusters must agree
/// (it is one pod); when it does not, the address fails closed.
pub(crate) fn merge<S: std::hash::BuildHasher>(
    index: &mut HashMap<SocketAddr, HboneLookup, S>,
    addr: SocketAddr,
    lookup: &HboneLookup,
) {
    match index.get(&addr) {
        None => {
            index.insert(addr, lookup.clone());
        }
        Some(old) if old == lookup => {}
        Some(HboneLookup::Invalid(_)) => {}
        Some(HboneLookup::Tunnel(_)) => {
            index.insert(
                addr,
                HboneLookup::Invalid(
                    format!(
                        "endpoint {addr} has different myelin.io/hbone metadata (node or \
                         identities) in different clusters"
                    )
                    .into(),
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cluster::UpstreamTls;
    use crate::model::secret::{SanMatcher, ValidationContext};
    use crate::model::StringMatcher;

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "test", sa).unwrap()
    }

    fn san(t: SanType, pattern: StringPattern, ignore_case: bool) -> SanMatcher {
        SanMatcher {
            san_type: t,
            matcher: StringMatcher {
                pattern,
                ignore_case,
            },
        }
    }

    fn exact_uri(s: &str) -> SanMatcher {
        san(SanType::Uri, StringPattern::Exact(s.into()), false)
    }

    fn cluster(validation: Option<ValidationSource>) -> Cluster {
        use crate::model::cluster::{DnsLookupFamily, LbPolicy, UpstreamProtocol};
        Cluster {
            name: "db".into(),
            discovery: crate::model::cluster::Discovery::Eds { service_name: None },
            lb_policy: LbPolicy::RoundRobin,
            connect_timeout: std::time::Duration::from_secs(1),
            circuit_breakers: vec![],
            outlier_detection: None,
            health_checks: vec![],
            ignore_health_on_host_removal: false,
            proxy_protocol: None,
            tls: validation.map(|v| UpstreamTls {
                sni: None,
                alpn_protocols: vec![],
                certificates: vec![],
                validation: Some(v),
                auto_sni_san_validation: false,
                min_version: None,
                max_version: None,
                algorithms: Default::default(),
            }),
            transport_socket_matches: vec![],
            auto_sni: Default::default(),
            protocol: UpstreamProtocol::Http1,
            load_assignment: None,
            dns_lookup_family: DnsLookupFamily::Auto,
            dns_refresh_rate: None,
            tcp_keepalive: None,
            connection_life: Default::default(),
            locality_weighted: false,
        }
    }

    fn inline(sans: Vec<SanMatcher>) -> Option<ValidationSource> {
        Some(ValidationSource::Inline(ValidationContext {
            trusted_ca: None,
            match_subject_alt_names: sans,
        }))
    }

    #[test]
    fn expected_identities_from_the_endpoint_else_the_cluster() {
        let node: SocketAddr = "10.78.0.1:15008".parse().unwrap();
        let addr: SocketAddr = "10.78.1.2:9000".parse().unwrap();
        let (db, db2) = (id("db"), id("db-v2"));
        let sans = vec![
            exact_uri(&db.to_string()),
            // Not usable: not URI, not exact, case-insensitive, not a workload identity.
            san(SanType::Dns, StringPattern::Exact("db.test".into()), false),
            san(
                SanType::Uri,
                StringPattern::Prefix("spiffe://cluster.local/".into()),
                false,
            ),
            san(
                SanType::Uri,
                StringPattern::Exact(id("x").to_string()),
                true,
            ),
            exact_uri("spiffe://cluster.local"),
            exact_uri(&db2.to_string()),
            exact_uri(&db.to_string()),
        ];
        let tunnel =
            |expected: Vec<SpiffeId>| HboneLookup::Tunnel(Arc::new(HboneTarget { node, expected }));
        let with_id = HboneEndpoint {
            node,
            identity: Some(id("pinned")),
        };
        let without = HboneEndpoint {
            node,
            identity: None,
        };
        let cases = [
            // The endpoint's own identity wins over the cluster's list.
            (
                cluster(inline(sans.clone())),
                &with_id,
                Some(vec![id("pinned")]),
            ),
            (cluster(None), &with_id, Some(vec![id("pinned")])),
            // Else the cluster's usable URI SANs, in order, once each.
            (
                cluster(inline(sans.clone())),
                &without,
                Some(vec![db.clone(), db2.clone()]),
            ),
            (
                cluster(Some(ValidationSource::Combined {
                    default: ValidationContext {
                        trusted_ca: None,
                        match_subject_alt_names: vec![exact_uri(&db2.to_string())],
                    },
                    sds: "ROOTCA".into(),
                })),
                &without,
                Some(vec![db2.clone()]),
            ),
            // Nothing to verify against: fails closed.
            (cluster(None), &without, None),
            (
                cluster(Some(ValidationSource::Sds("ROOTCA".into()))),
                &without,
                None,
            ),
            (cluster(inline(sans[1..5].to_vec())), &without, None),
        ];
        for (c, ep, want) in cases {
            let got = resolve(&c, 0, addr, ep);
            match want {
                Some(expected) => assert_eq!(got, tunnel(expected), "{c:?} {ep:?}"),
                None => assert!(
                    matches!(&got, HboneLookup::Invalid(m) if m.contains("nothing to verify")),
                    "{got:?}"
                ),
            }
        }
    }

    #[test]
    fn one_address_in_several_clusters_must_agree() {
        let addr: SocketAddr = "10.78.1.2:9000".parse().unwrap();
        let t = |node: &str| {
            HboneLookup::Tunnel(Arc::new(HboneTarget {
                node: node.parse().unwrap(),
                expected: vec![id("db")],
            }))
        };
        let mut index = HashMap::new();
        merge(&mut index, addr, &t("10.78.0.1:15008"));
        merge(&mut index, addr, &t("10.78.0.1:15008"));
        assert_eq!(index[&addr], t("10.78.0.1:15008"));
        merge(&mut index, addr, &t("10.79.0.1:15008"));
        assert!(matches!(&index[&addr], HboneLookup::Invalid(m) if m.contains("different")));
        // Stays closed.
        merge(&mut index, addr, &t("10.78.0.1:15008"));
        assert!(matches!(&index[&addr], HboneLookup::Invalid(_)));
    }
}
