//! Cluster -> [`model::Cluster`], with the upstream TLS context and HTTP protocol options.

use std::sync::Arc;

use myelin_proxy::model::{self, cluster as mc};
use xds_api::pb::envoy::config::cluster::v3 as pb;
use xds_api::pb::envoy::config::core::v3 as core;

use super::{endpoint, ext, idx, join, secret, Cx, Reason, Rejection};

const TLS_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
const HTTP_OPTIONS_KEY: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const HTTP_OPTIONS_URL: &str =
    "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
const USE_HTTP_OPTIONS: &str = "use `typed_extension_protocol_options` with `envoy.extensions.upstreams.http.v3.HttpProtocolOptions`";

/// Converts a cluster (CDS resource).
#[allow(deprecated)]
pub fn cluster(c: &pb::Cluster) -> Result<model::Cluster, Vec<Rejection>> {
    use pb::cluster::{
        ClusterDiscoveryType as CDT, DiscoveryType as DT, DnsLookupFamily as DF, LbPolicy as LB,
    };
    let mut cx = Cx::default();
    let p = "";
    let pb::Cluster {
        transport_socket_matches,
        name,
        alt_stat_name: _,
        eds_cluster_config,
        connect_timeout,
        per_connection_buffer_limit_bytes: _,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        dns_refresh_rate,
        dns_failure_refresh_rate,
        respect_dns_ttl,
        dns_lookup_family,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        wait_for_warm_on_init: _,
        outlier_detection,
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata: _,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        ignore_health_on_host_removal,
        filters,
        load_balancing_policy,
        lrs_server,
        track_timeout_budgets: _,
        upstream_config,
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        cluster_discovery_type,
        lb_config,
    } = c;
    if name.is_empty() {
        cx.reject("name", Reason::Missing);
    }
    for (field, set) in [
        (
            "max_requests_per_connection",
            max_requests_per_connection.is_some(),
        ),
        (
            "upstream_http_protocol_options",
            upstream_http_protocol_options.is_some(),
        ),
        (
            "common_http_protocol_options",
            common_http_protocol_options.is_some(),
        ),
        ("http_protocol_options", http_protocol_options.is_some()),
        ("http2_protocol_options", http2_protocol_options.is_some()),
        ("protocol_selection", *protocol_selection != 0),
    ] {
        if set {
            cx.reject(
                field,
                Reason::Deprecated {
                    field,
                    instead: USE_HTTP_OPTIONS,
                },
            );
        }
    }
    for (field, set) in [
        ("dns_resolvers", !dns_resolvers.is_empty()),
        ("use_tcp_for_dns_lookups", *use_tcp_for_dns_lookups),
        ("dns_resolution_config", dns_resolution_config.is_some()),
    ] {
        if set {
            cx.reject(
                field,
                Reason::Deprecated {
                    field,
                    instead: "Myelin uses the node's resolver; remove it",
                },
            );
        }
    }
    let health_checks = super::health_check::health_checks(&mut cx, p, health_checks);
    cx.unsupported(p, "dns_failure_refresh_rate", dns_failure_refresh_rate);
    // `respect_dns_ttl` (Envoy Gateway sets it): a host name is resolved at every connect,
    // so no answer outlives its TTL in Myelin's hands anyway.
    let _ = respect_dns_ttl;
    cx.unsupported(p, "typed_dns_resolver_config", typed_dns_resolver_config);
    cx.unsupported(p, "upstream_bind_config", upstream_bind_config);
    cx.unsupported(p, "lb_subset_config", lb_subset_config);
    let locality_weighted_common = common_lb_config.as_ref().is_some_and(|c| {
        super::lb_policy::common_lb_config(&mut cx, &join(p, "common_lb_config"), c)
    });
    let tcp_keepalive = upstream_connection_options
        .as_ref()
        .and_then(|o| connection_options(&mut cx, &join(p, "upstream_connection_options"), o));
    cx.unsupported(
        p,
        "close_connections_on_host_health_failure",
        close_connections_on_host_health_failure,
    );
    cx.unsupported(p, "filters", filters);
    cx.unsupported(p, "lrs_server", lrs_server);
    cx.unsupported(p, "upstream_config", upstream_config);
    // `preconnect_policy` (Envoy Gateway's BackendTrafficPolicy writes it): when connections
    // are opened ahead of requests, not what the requests get; Myelin opens them on demand.
    let _ = preconnect_policy;
    cx.unsupported(
        p,
        "connection_pool_per_downstream_connection",
        connection_pool_per_downstream_connection,
    );
    if let Some(lbc) = lb_config {
        let field = match lbc {
            pb::cluster::LbConfig::RingHashLbConfig(_) => "ring_hash_lb_config",
            pb::cluster::LbConfig::MaglevLbConfig(_) => "maglev_lb_config",
            pb::cluster::LbConfig::OriginalDstLbConfig(_) => "original_dst_lb_config",
            pb::cluster::LbConfig::LeastRequestLbConfig(_) => "least_request_lb_config",
            pb::cluster::LbConfig::RoundRobinLbConfig(_) => "round_robin_lb_config",
        };
        cx.reject(field, Reason::NotSupported);
    }

    let discovery = match cluster_discovery_type {
        None => Some(mc::Discovery::Static),
        Some(CDT::Type(t)) => match DT::try_from(*t) {
            Ok(DT::Static) => Some(mc::Discovery::Static),
            Ok(DT::StrictDns) => Some(mc::Discovery::StrictDns),
            Ok(DT::LogicalDns) => Some(mc::Discovery::LogicalDns),
            Ok(DT::OriginalDst) => Some(mc::Discovery::OriginalDst),
            Ok(DT::Eds) => {
                let service_name = eds_cluster_config.as_ref().and_then(|e| {
                    // eds_config (the config source) is ADS for Myelin, whatever it says.
                    (!e.service_name.is_empty()).then(|| e.service_name.clone())
                });
                Some(mc::Discovery::Eds { service_name })
            }
            Err(_) => {
                cx.reject("type", Reason::UnsupportedValue(format!("value {t}")));
                None
            }
        },
        Some(CDT::ClusterType(ct)) => {
            cx.reject(
                "cluster_type",
                Reason::UnsupportedValue(format!("custom cluster type `{}`", ct.name)),
            );
            None
        }
    };
    if eds_cluster_config.is_some() && !matches!(discovery, Some(mc::Discovery::Eds { .. }) | None)
    {
        cx.reject(
            "eds_cluster_config",
            Reason::Invalid("set on a cluster whose type is not EDS".into()),
        );
    }
    // A typed `load_balancing_policy` wins over `lb_policy` (Envoy ignores the enum then).
    let typed = load_balancing_policy.as_ref().map(|l| {
        super::lb_policy::load_balancing_policy(&mut cx, &join(p, "load_balancing_policy"), l)
    });
    let lb_policy = match LB::try_from(*lb_policy) {
        _ if typed.is_some() => mc::LbPolicy::RoundRobin,
        Ok(LB::RoundRobin) => mc::LbPolicy::RoundRobin,
        Ok(LB::LeastRequest) => mc::LbPolicy::LeastRequest,
        Ok(LB::Random) => mc::LbPolicy::Random,
        Ok(LB::RingHash) => mc::LbPolicy::RingHash,
        Ok(LB::Maglev) => mc::LbPolicy::Maglev,
        Ok(other) => {
            cx.reject(
                "lb_policy",
                Reason::UnsupportedValue(other.as_str_name().to_owned()),
            );
            mc::LbPolicy::RoundRobin
        }
        Err(_) => {
            cx.reject(
                "lb_policy",
                Reason::UnsupportedValue(format!("value {lb_policy}")),
            );
            mc::LbPolicy::RoundRobin
        }
    };
    let dns_lookup_family = match DF::try_from(*dns_lookup_family) {
        Ok(DF::Auto) => mc::DnsLookupFamily::Auto,
        Ok(DF::V4Only) => mc::DnsLookupFamily::V4Only,
        Ok(DF::V6Only) => mc::DnsLookupFamily::V6Only,
        Ok(DF::V4Preferred) => mc::DnsLookupFamily::V4Preferred,
        Ok(DF::All) => mc::DnsLookupFamily::All,
        Err(_) => {
            cx.reject(
                "dns_lookup_family",
                Reason::UnsupportedValue(format!("value {dns_lookup_family}")),
            );
            mc::DnsLookupFamily::Auto
        }
    };
    let connect_timeout = match connect_timeout {
        None => mc::DEFAULT_CONNECT_TIMEOUT,
        Some(d) => match cx.duration("connect_timeout", d) {
            Some(d) if d.is_zero() => {
                cx.reject(
                    "connect_timeout",
                    Reason::Invalid("must be greater than zero".into()),
                );
                d
            }
            Some(d) => d,
            None => mc::DEFAULT_CONNECT_TIMEOUT,
        },
    };
    let dns_refresh_rate = dns_refresh_rate
        .as_ref()
        .and_then(|d| cx.duration("dns_refresh_rate", d));
    let circuit_breakers = breakers(&mut cx, circuit_breakers.as_ref());
    let outlier_detection = outlier_detection
        .as_ref()
        .map(|o| outlier(&mut cx, "outlier_detection", o));
    let (tls, proxy_protocol) = transport_socket.as_ref().map_or((None, None), |t| {
        upstream_socket(&mut cx, "transport_socket", t)
    });
    let transport_socket_matches = transport_socket_matches
        .iter()
        .enumerate()
        .map(|(i, m)| socket_match(&mut cx, &idx("", "transport_socket_matches", i), m))
        .collect();
    let mut protocol = mc::UpstreamProtocol::Http1;
    let mut connection_life = mc::ConnectionLife::default();
    let mut auto_sni = mc::AutoSni::default();
    for (key, any) in typed_extension_protocol_options {
        let kp = format!("typed_extension_protocol_options[{key}]");
        if key != HTTP_OPTIONS_KEY || any.type_url != HTTP_OPTIONS_URL {
            cx.reject(
                kp,
                Reason::UnsupportedValue(format!("extension `{key}` (type `{}`)", any.type_url)),
            );
            continue;
        }
        if let Some(o) =
            cx.decode::<ext::UpstreamHttpProtocolOptions>(&kp, HTTP_OPTIONS_URL, &any.value)
        {
            if let Some(p) = http_options(&mut cx, &kp, &o, &mut connection_life, &mut auto_sni) {
                protocol = p;
            }
        }
    }
    let load_assignment = load_assignment
        .as_ref()
        .map(|la| endpoint::load_assignment(&mut cx, "load_assignment", la));
    match (&discovery, &load_assignment) {
        (
            Some(mc::Discovery::Static | mc::Discovery::StrictDns | mc::Discovery::LogicalDns),
            None,
        ) => {
            cx.reject(
                "load_assignment",
                Reason::Invalid("required for STATIC and DNS clusters".into()),
            );
        }
        (Some(mc::Discovery::Static), Some(la)) => {
            for (i, l) in la.localities.iter().enumerate() {
                for (j, e) in l.endpoints.iter().enumerate() {
                    if matches!(e.address, model::endpoint::EndpointAddress::Dns { .. }) {
                        cx.reject(
                            format!("load_assignment.endpoints[{i}].lb_endpoints[{j}].endpoint.address.socket_address.address"),
                            Reason::Invalid("a STATIC cluster needs IP addresses (use STRICT_DNS or LOGICAL_DNS for host names)".into()),
                        );
                    }
                }
            }
        }
        (Some(mc::Discovery::LogicalDns), Some(la)) => {
            let n: usize = la.localities.iter().map(|l| l.endpoints.len()).sum();
            if n != 1 {
                cx.reject(
                    "load_assignment",
                    Reason::Invalid(format!(
                        "a LOGICAL_DNS cluster needs exactly one endpoint, not {n}"
                    )),
                );
            }
        }
        _ => {}
    }
    let Some(discovery) = discovery else {
        return Err(cx.errs);
    };
    if discovery == mc::Discovery::OriginalDst && !health_checks.is_empty() {
        cx.reject(
            "health_checks",
            Reason::Invalid("an ORIGINAL_DST cluster has no endpoints to check".into()),
        );
    }
    let (lb_policy, locality_weighted) = match typed {
        Some(Some(b)) => (b.policy, b.locality_weighted || locality_weighted_common),
        _ => (lb_policy, locality_weighted_common),
    };
    cx.finish(model::Cluster {
        name: name.clone(),
        discovery,
        lb_policy,
        locality_weighted,
        connect_timeout,
        circuit_breakers,
        outlier_detection,
        health_checks,
        ignore_health_on_host_removal: *ignore_health_on_host_removal,
        tls,
        proxy_protocol,
        transport_socket_matches,
        auto_sni,
        protocol,
        load_assignment,
        dns_lookup_family,
        dns_refresh_rate,
        tcp_keepalive,
        connection_life,
    })
}

/// The upstream side of `core.HttpProtocolOptions`: how long a connection lives.
fn connection_life(cx: &mut Cx, p: &str, o: &core::HttpProtocolOptions) -> mc::ConnectionLife {
    let core::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_headers_count,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = o;
    cx.unsupported(p, "max_headers_count", max_headers_count);
    cx.unsupported(p, "max_stream_duration", max_stream_duration);
    cx.unsupported(
        p,
        "headers_with_underscores_action",
        headers_with_underscores_action,
    );
    // `0s` is "never" for the idle timeout (kept as zero), "unbounded" for the age.
    let idle_timeout = idle_timeout
        .as_ref()
        .and_then(|d| cx.duration(&join(p, "idle_timeout"), d));
    let max_connection_duration = max_connection_duration
        .as_ref()
        .and_then(|d| cx.duration(&join(p, "max_connection_duration"), d))
        .filter(|d| !d.is_zero());
    let max_requests_per_connection = match max_requests_per_connection.as_ref().map(|v| v.value) {
        Some(0) => {
            cx.reject(
                join(p, "max_requests_per_connection"),
                Reason::Invalid("must be at least 1".into()),
            );
            None
        }
        n => n,
    };
    mc::ConnectionLife {
        idle_timeout,
        max_requests_per_connection,
        max_connection_duration,
    }
}

fn connection_options(
    cx: &mut Cx,
    p: &str,
    o: &pb::UpstreamConnectionOptions,
) -> Option<mc::TcpKeepalive> {
    let pb::UpstreamConnectionOptions {
        tcp_keepalive,
        set_local_interface_name_on_upstream_connections,
        happy_eyeballs_config,
    } = o;
    cx.unsupported(
        p,
        "set_local_interface_name_on_upstream_connections",
        set_local_interface_name_on_upstream_connections,
    );
    cx.unsupported(p, "happy_eyeballs_config", happy_eyeballs_config);
    let core::TcpKeepalive {
        keepalive_probes,
        keepalive_time,
        keepalive_interval,
    } = tcp_keepalive.as_ref()?;
    let secs = |v: &Option<xds_api::pb::google::protobuf::UInt32Value>| {
        v.as_ref()
            .map(|v| std::time::Duration::from_secs(u64::from(v.value)))
    };
    Some(mc::TcpKeepalive {
        probes: keepalive_probes.as_ref().map(|v| v.value),
        time: secs(keepalive_time),
        interval: secs(keepalive_interval),
    })
}

/// `KeepaliveSettings` of `http2_protocol_options`, for clusters and connection managers
/// (`connection_idle_interval` is the caller's: it means something only to a client).
pub(super) fn http2_keepalive(
    cx: &mut Cx,
    p: &str,
    k: &core::KeepaliveSettings,
) -> Option<mc::Http2Keepalive> {
    let core::KeepaliveSettings {
        interval,
        timeout,
        interval_jitter,
        connection_idle_interval: _,
    } = k;
    let Some(timeout) = timeout.as_ref() else {
        cx.reject(join(p, "timeout"), Reason::Invalid("is required".into()));
        return None;
    };
    let timeout = cx.duration(&join(p, "timeout"), timeout)?;
    if timeout < std::time::Duration::from_millis(1) {
        cx.reject(
            join(p, "timeout"),
            Reason::Invalid("must be at least 1ms".into()),
        );
        return None;
    }
    let interval_jitter_bp = match interval_jitter {
        None => mc::Http2Keepalive::DEFAULT_JITTER_BP,
        Some(j) if (0.0..=100.0).contains(&j.value) => (j.value * 100.0).round() as u16,
        Some(j) => {
            cx.reject(
                join(p, "interval_jitter"),
                Reason::Invalid(format!("{} is not a percentage (0 to 100)", j.value)),
            );
            return None;
        }
    };
    Some(mc::Http2Keepalive {
        interval: interval
            .as_ref()
            .and_then(|d| cx.duration(&join(p, "interval"), d))
            .filter(|d| !d.is_zero()),
        timeout,
        interval_jitter_bp,
    })
}

fn breakers(cx: &mut Cx, cb: Option<&pb::CircuitBreakers>) -> Vec<mc::Thresholds> {
    let mut out = vec![mc::Thresholds::envoy_default(mc::RoutingPriority::Default)];
    let Some(cb) = cb else { return out };
    let p = "circuit_breakers";
    cx.unsupported(p, "per_host_thresholds", &cb.per_host_thresholds);
    for (i, t) in cb.thresholds.iter().enumerate() {
        let tp = idx(p, "thresholds", i);
        let pb::circuit_breakers::Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            track_remaining: _,
            max_connection_pools,
        } = t;
        cx.unsupported(&tp, "max_connection_pools", max_connection_pools);
        let priority = match core::RoutingPriority::try_from(*priority) {
            Ok(core::RoutingPriority::High) => mc::RoutingPriority::High,
            _ => mc::RoutingPriority::Default,
        };
        let d = mc::Thresholds::envoy_default(priority);
        let t = mc::Thresholds {
            priority,
            max_connections: max_connections
                .as_ref()
                .map_or(d.max_connections, |v| v.value),
            max_pending_requests: max_pending_requests
                .as_ref()
                .map_or(d.max_pending_requests, |v| v.value),
            max_requests: max_requests.as_ref().map_or(d.max_requests, |v| v.value),
            max_retries: max_retries.as_ref().map_or(d.max_retries, |v| v.value),
            retry_budget: retry_budget.as_ref().map(|b| mc::RetryBudget {
                budget_percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                min_retry_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
            }),
        };
        if let Some(slot) = out.iter_mut().find(|o| o.priority == priority) {
            *slot = t;
        } else {
            out.push(t);
        }
    }
    out
}

fn outlier(cx: &mut Cx, p: &str, o: &pb::OutlierDetection) -> mc::OutlierDetection {
    let pb::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        success_rate_minimum_hosts,
        success_rate_request_volume,
        success_rate_stdev_factor,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        consecutive_local_origin_failure,
        enforcing_consecutive_local_origin_failure,
        enforcing_local_origin_success_rate,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        enforcing_failure_percentage_local_origin,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        successful_active_health_check_uneject_host,
        monitors,
    } = o;
    cx.unsupported(p, "max_ejection_time_jitter", max_ejection_time_jitter);
    cx.unsupported(
        p,
        "successful_active_health_check_uneject_host",
        successful_active_health_check_uneject_host,
    );
    cx.unsupported(p, "monitors", monitors);
    let d = mc::OutlierDetection::default();
    let u = |v: &Option<xds_api::pb::google::protobuf::UInt32Value>, d: u32| {
        v.as_ref().map_or(d, |v| v.value)
    };
    let mut dur = |field: &str, v: &Option<xds_api::pb::google::protobuf::Duration>, d| {
        v.as_ref()
            .and_then(|v| cx.duration(&join(p, field), v))
            .unwrap_or(d)
    };
    let out = mc::OutlierDetection {
        consecutive_5xx: u(consecutive_5xx, d.consecutive_5xx),
        consecutive_gateway_failure: u(consecutive_gateway_failure, d.consecutive_gateway_failure),
        enforcing_consecutive_5xx: u(enforcing_consecutive_5xx, d.enforcing_consecutive_5xx),
        enforcing_consecutive_gateway_failure: u(
            enforcing_consecutive_gateway_failure,
            d.enforcing_consecutive_gateway_failure,
        ),
        interval: dur("interval", interval, d.interval),
        base_ejection_time: dur(
            "base_ejection_time",
            base_ejection_time,
            d.base_ejection_time,
        ),
        max_ejection_time: dur("max_ejection_time", max_ejection_time, d.max_ejection_time),
        max_ejection_percent: u(max_ejection_percent, d.max_ejection_percent),
        enforcing_success_rate: u(enforcing_success_rate, d.enforcing_success_rate),
        success_rate_minimum_hosts: u(success_rate_minimum_hosts, d.success_rate_minimum_hosts),
        success_rate_request_volume: u(success_rate_request_volume, d.success_rate_request_volume),
        success_rate_stdev_factor: u(success_rate_stdev_factor, d.success_rate_stdev_factor),
        failure_percentage_threshold: u(
            failure_percentage_threshold,
            d.failure_percentage_threshold,
        ),
        enforcing_failure_percentage: u(
            enforcing_failure_percentage,
            d.enforcing_failure_percentage,
        ),
        failure_percentage_minimum_hosts: u(
            failure_percentage_minimum_hosts,
            d.failure_percentage_minimum_hosts,
        ),
        failure_percentage_request_volume: u(
            failure_percentage_request_volume,
            d.failure_percentage_request_volume,
        ),
        split_external_local_origin_errors: *split_external_local_origin_errors,
        consecutive_local_origin_failure: u(
            consecutive_local_origin_failure,
            d.consecutive_local_origin_failure,
        ),
        enforcing_consecutive_local_origin_failure: u(
            enforcing_consecutive_local_origin_failure,
            d.enforcing_consecutive_local_origin_failure,
        ),
        enforcing_local_origin_success_rate: u(
            enforcing_local_origin_success_rate,
            d.enforcing_local_origin_success_rate,
        ),
        enforcing_failure_percentage_local_origin: u(
            enforcing_failure_percentage_local_origin,
            d.enforcing_failure_percentage_local_origin,
        ),
    };
    for (field, v) in [
        ("max_ejection_percent", out.max_ejection_percent),
        ("enforcing_success_rate", out.enforcing_success_rate),
        (
            "failure_percentage_threshold",
            out.failure_percentage_threshold,
        ),
        (
            "enforcing_failure_percentage",
            out.enforcing_failure_percentage,
        ),
        ("enforcing_consecutive_5xx", out.enforcing_consecutive_5xx),
        (
            "enforcing_consecutive_gateway_failure",
            out.enforcing_consecutive_gateway_failure,
        ),
        (
            "enforcing_consecutive_local_origin_failure",
            out.enforcing_consecutive_local_origin_failure,
        ),
        (
            "enforcing_local_origin_success_rate",
            out.enforcing_local_origin_success_rate,
        ),
        (
            "enforcing_failure_percentage_local_origin",
            out.enforcing_failure_percentage_local_origin,
        ),
    ] {
        if v > 100 {
            cx.reject(
                join(p, field),
                Reason::Invalid(format!("{v} is not a percentage")),
            );
        }
    }
    out
}

/// One of `transport_socket_matches`: its criteria (the `match` Struct, compared with the
/// endpoints' `envoy.transport_socket_match` metadata) and its socket (TLS, or `None` for
/// `raw_buffer`; a missing socket is plain TCP, as Envoy's default).
fn socket_match(
    cx: &mut Cx,
    p: &str,
    m: &pb::cluster::TransportSocketMatch,
) -> mc::TransportSocketMatch {
    let pb::cluster::TransportSocketMatch {
        name,
        r#match,
        transport_socket,
    } = m;
    let criteria = r#match
        .iter()
        .flat_map(|s| &s.fields)
        .map(|(k, v)| (k.clone(), super::common::metadata_value(v)))
        .collect();
    let (tls, proxy_protocol) = transport_socket.as_ref().map_or((None, None), |t| {
        upstream_socket(cx, &join(p, "transport_socket"), t)
    });
    mc::TransportSocketMatch {
        name: name.clone(),
        criteria,
        tls,
        proxy_protocol,
    }
}

/// A cluster's transport socket: TLS (or plain bytes), possibly inside the PROXY protocol
/// socket, which sends its header first and then hands the connection to the socket it
/// wraps.
fn upstream_socket(
    cx: &mut Cx,
    p: &str,
    t: &core::TransportSocket,
) -> (
    Option<mc::UpstreamTls>,
    Option<Arc<myelin_proxy::model::proxy_protocol::UpstreamProxyProtocol>>,
) {
    let proxy = match &t.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any))
            if any.type_url == super::proxy_protocol::UPSTREAM_URL =>
        {
            super::proxy_protocol::upstream(cx, p, &any.value)
        }
        _ => return (upstream_tls(cx, p, t), None),
    };
    let Some((proxy, inner)) = proxy else {
        return (None, None);
    };
    let ip = join(&join(p, "typed_config"), "transport_socket");
    (upstream_tls(cx, &ip, &inner), Some(Arc::new(proxy)))
}

fn upstream_tls(cx: &mut Cx, p: &str, t: &core::TransportSocket) -> Option<mc::UpstreamTls> {
    let tp = join(p, "typed_config");
    let bytes = secret::tls_transport_socket(cx, p, t, TLS_URL)?;
    let u: ext::UpstreamTlsContext = cx.decode(&tp, TLS_URL, bytes)?;
    let ext::UpstreamTlsContext {
        common_tls_context,
        sni,
        allow_renegotiation,
        max_session_keys: _,
        enforce_rsa_key_usage,
        auto_host_sni,
        auto_sni_san_validation,
    } = &u;
    cx.unsupported(&tp, "allow_renegotiation", allow_renegotiation);
    cx.unsupported(&tp, "enforce_rsa_key_usage", enforce_rsa_key_usage);
    cx.unsupported(&tp, "auto_host_sni", auto_host_sni);
    let mut out = mc::UpstreamTls {
        sni: (!sni.is_empty()).then(|| sni.clone()),
        alpn_protocols: vec![],
        certificates: vec![],
        validation: None,
        auto_sni_san_validation: *auto_sni_san_validation,
        min_version: None,
        max_version: None,
        algorithms: Default::default(),
    };
    let Some(c) = common_tls_context else {
        return Some(out);
    };
    let cp = join(&tp, "common_tls_context");
    if let Some(t) = &c.tls_params {
        (out.min_version, out.max_version, out.algorithms) =
            super::listener::tls_params(cx, &join(&cp, "tls_params"), t);
    }
    let common = secret::common_tls_context(cx, &cp, c);
    out.alpn_protocols = common.alpn_protocols;
    out.certificates = common.certificates;
    out.validation = common.validation;
    Some(out)
}

fn http_options(
    cx: &mut Cx,
    p: &str,
    o: &ext::UpstreamHttpProtocolOptions,
    life: &mut mc::ConnectionLife,
    auto: &mut mc::AutoSni,
) -> Option<mc::UpstreamProtocol> {
    let ext::UpstreamHttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        explicit_http_config,
        use_downstream_protocol_config,
        auto_config,
        http_filters,
    } = o;
    if let Some(c) = common_http_protocol_options {
        *life = connection_life(cx, &join(p, "common_http_protocol_options"), c);
    }
    if let Some(u) = upstream_http_protocol_options {
        let up = join(p, "upstream_http_protocol_options");
        let core::UpstreamHttpProtocolOptions {
            auto_sni,
            auto_san_validation,
            override_auto_sni_header,
        } = u;
        if *auto_san_validation && !*auto_sni {
            cx.reject(
                join(&up, "auto_san_validation"),
                Reason::UnsupportedValue(
                    "without auto_sni (Myelin checks the certificate against the SNI it sends)"
                        .into(),
                ),
            );
        }
        let header = (!override_auto_sni_header.is_empty()).then(|| {
            if http::HeaderName::from_bytes(override_auto_sni_header.as_bytes()).is_err() {
                cx.reject(
                    join(&up, "override_auto_sni_header"),
                    Reason::Invalid(format!("{override_auto_sni_header:?} is not a header name")),
                );
            }
            override_auto_sni_header.to_ascii_lowercase()
        });
        *auto = mc::AutoSni {
            sni: *auto_sni,
            san_validation: *auto_san_validation,
            header,
        };
    }
    cx.unsupported(p, "http_filters", http_filters);
    let h2 = |cx: &mut Cx, pp: &str, c: &ext::ProtocolConfig| -> Option<mc::Http2Options> {
        // `http_protocol_options: {}` is how HTTP/1.1 is chosen explicitly; its settings
        // are not supported.
        if let Some(h1) = &c.http_protocol_options {
            cx.unsupported(pp, "http_protocol_options", h1);
        }
        cx.unsupported(pp, "http3_protocol_options", &c.http3_protocol_options);
        let Some(h) = &c.http2_protocol_options else {
            return None;
        };
        let hp = join(pp, "http2_protocol_options");
        #[allow(deprecated)]
        let core::Http2ProtocolOptions {
            hpack_table_size,
            max_concurrent_streams,
            initial_stream_window_size,
            initial_connection_window_size,
            allow_connect,
            allow_metadata,
            max_outbound_frames: _,
            max_outbound_control_frames: _,
            max_consecutive_inbound_frames_with_empty_payload: _,
            max_inbound_priority_frames_per_stream: _,
            max_inbound_window_update_frames_per_data_frame_sent: _,
            stream_error_on_invalid_http_messaging,
            override_stream_error_on_invalid_http_message,
            custom_settings_parameters,
            connection_keepalive,
            use_oghttp2_codec: _,
        } = h;
        cx.unsupported(&hp, "hpack_table_size", hpack_table_size);
        cx.unsupported(&hp, "allow_metadata", allow_metadata);
        cx.unsupported(
            &hp,
            "stream_error_on_invalid_http_messaging",
            stream_error_on_invalid_http_messaging,
        );
        cx.unsupported(
            &hp,
            "override_stream_error_on_invalid_http_message",
            override_stream_error_on_invalid_http_message,
        );
        cx.unsupported(
            &hp,
            "custom_settings_parameters",
            custom_settings_parameters,
        );
        let connection_keepalive = connection_keepalive.as_ref().and_then(|k| {
            let kp = join(&hp, "connection_keepalive");
            // A PING before reusing an idle connection: hyper's client has no such hook.
            cx.unsupported(&kp, "connection_idle_interval", &k.connection_idle_interval);
            http2_keepalive(cx, &kp, k)
        });
        Some(mc::Http2Options {
            allow_connect: *allow_connect,
            connection_keepalive,
            max_concurrent_streams: cx.u32_in(
                &join(&hp, "max_concurrent_streams"),
                max_concurrent_streams,
                super::listener::H2_STREAMS,
            ),
            initial_stream_window_size: cx.u32_in(
                &join(&hp, "initial_stream_window_size"),
                initial_stream_window_size,
                super::listener::H2_WINDOW,
            ),
            initial_connection_window_size: cx.u32_in(
                &join(&hp, "initial_connection_window_size"),
                initial_connection_window_size,
                super::listener::H2_WINDOW,
            ),
        })
    };
    match (explicit_http_config, use_downstream_protocol_config) {
        (Some(e), None) => {
            let ep = join(p, "explicit_http_config");
            Some(match h2(cx, &ep, e) {
                Some(o) => mc::UpstreamProtocol::Http2(o),
                None => mc::UpstreamProtocol::Http1,
            })
        }
        (None, Some(d)) => {
            let dp = join(p, "use_downstream_protocol_config");
            Some(mc::UpstreamProtocol::UseDownstream(
                h2(cx, &dp, d).unwrap_or_default(),
            ))
        }
        (None, None) if auto_config.is_some() => {
            let a = auto_config.as_ref().expect("checked");
            let ap = join(p, "auto_config");
            cx.unsupported(
                &ap,
                "alternate_protocols_cache_options",
                &a.alternate_protocols_cache_options,
            );
            let c = ext::ProtocolConfig {
                http_protocol_options: a.http_protocol_options.clone(),
                http2_protocol_options: Some(a.http2_protocol_options.clone().unwrap_or_default()),
                http3_protocol_options: a.http3_protocol_options.clone(),
            };
            Some(mc::UpstreamProtocol::Auto(
                h2(cx, &ap, &c).unwrap_or_default(),
            ))
        }
        _ => {
            cx.reject(p, Reason::Invalid("exactly one of `explicit_http_config`, `use_downstream_protocol_config` or `auto_config` is required".into()));
            None
        }
    }
}
