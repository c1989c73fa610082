use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::model::filter::{
    ActiveFaults, CorsPolicy, FaultAbort, FaultDelay, FaultPolicy, FilterSetting, FilterSettings,
};
use crate::model::route::{
    Action, ClusterSpecifier, HeaderMatcher, HeaderMutation, HeaderRule, PathMatch, RouteAction,
    RouteMatch,
};
use crate::model::StringMatcher;

fn route(filters: FilterSettings) -> Route {
    Route {
        name: "r".into(),
        route_match: RouteMatch {
            path: PathMatch::Prefix("/".into()),
            case_sensitive: true,
            headers: vec![],
            query_parameters: vec![],
        },
        action: Action::Route(RouteAction {
            cluster: ClusterSpecifier::Cluster("web".into()),
            timeout: None,
            retry_policy: None,
            prefix_rewrite: None,
            regex_rewrite: None,
            host_rewrite: None,
            hash_policy: vec![],
            upgrades: vec![],
            stream_limit: None,
            idle_timeout: None,
            mirrors: vec![],
            rate_limits: vec![],
        }),
        headers: HeaderMutation::default(),
        filters,
        cors: None,
        buffer_limit: None,
    }
}

fn vhost(filters: FilterSettings) -> VirtualHost {
    VirtualHost {
        name: "v".into(),
        domains: vec![],
        routes: vec![],
        retry_policy: None,
        headers: HeaderMutation::default(),
        filters,
        cors: None,
        mirrors: vec![],
        buffer_limit: None,
        rate_limits: vec![],
        attempt_count_in_request: false,
        attempt_count_in_response: false,
    }
}

fn table() -> RouteConfiguration {
    RouteConfiguration {
        name: "t".into(),
        virtual_hosts: vec![],
        headers: HeaderMutation::default(),
        filters: FilterSettings::new(),
        mirrors: vec![],
        ignore_port_in_host_matching: false,
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn head<'a>(method: &'a str, headers: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method,
        authority: "web",
        path: "/",
        scheme: "http",
        headers,
    }
}

fn no_fault() -> FaultPolicy {
    FaultPolicy {
        delay: None,
        abort: None,
        upstream_cluster: None,
        headers: vec![],
        downstream_nodes: vec![],
        max_active_faults: None,
    }
}

fn fault_filter(policy: FaultPolicy) -> HttpFilters {
    HttpFilters(vec![HttpFilter {
        name: "fault".into(),
        disabled: false,
        kind: FilterKind::Fault {
            policy: Arc::new(policy),
            active: ActiveFaults::default(),
        },
    }])
}

fn cors_filter() -> HttpFilters {
    HttpFilters(vec![HttpFilter {
        name: "cors".into(),
        disabled: false,
        kind: FilterKind::Cors,
    }])
}

/// A client of no identity on loopback.
fn client() -> crate::rbac::Subject<'static> {
    crate::rbac::Subject {
        head: None,
        peer: "127.0.0.1:40000".parse().unwrap(),
        direct: "127.0.0.1".parse().unwrap(),
        remote_ip: "127.0.0.1".parse().unwrap(),
        local: "127.0.0.1:80".parse().unwrap(),
        sni: None,
        principal: None,
    }
}

fn setting(policy: FilterPolicy) -> FilterSettings {
    [(
        match &policy {
            FilterPolicy::Fault(_) => "fault".to_owned(),
            FilterPolicy::Cors(_) => "cors".to_owned(),
            FilterPolicy::LocalRateLimit(_) => "rl".to_owned(),
            FilterPolicy::RateLimit(_) => "global_rl".to_owned(),
            FilterPolicy::ExtAuthz(_) => "ext_authz".to_owned(),
            FilterPolicy::ExtProc(_) => "ext_proc".to_owned(),
            FilterPolicy::Compressor(_) => "compressor".to_owned(),
            FilterPolicy::Jwt(_) => "jwt".to_owned(),
            FilterPolicy::ApiKeyAuth(_) => "api_key_auth".to_owned(),
            FilterPolicy::BasicAuth(_) => "basic_auth".to_owned(),
            FilterPolicy::Csrf(_) => "csrf".to_owned(),
            FilterPolicy::Rbac(_) => "rbac".to_owned(),
            FilterPolicy::StatefulSession(_) => "session".to_owned(),
        },
        FilterSetting {
            disabled: false,
            policy: Some(policy),
        },
    )]
    .into()
}

fn abort(status: AbortStatus, numerator: u32) -> Option<FaultAbort> {
    Some(FaultAbort {
        status,
        percentage: Fraction {
            numerator,
            denominator: 100,
        },
    })
}

/// Runs `filters` for a request with `hs` through `route` and `vhost`.
async fn run_with(
    filters: &HttpFilters,
    route: &Route,
    vhost: &VirtualHost,
    method: &str,
    hs: &[(&str, &str)],
    grpc: bool,
) -> (Option<Answer>, Filtered) {
    let t = table();
    let levels = Levels {
        route,
        vhost,
        table: &t,
    };
    let h = headers(hs);
    let metrics = ProxyMetrics::unregistered();
    let buckets = ConnBuckets::default();
    let mut filtered = Filtered::default();
    let cx = Context {
        levels,
        cluster: Some("web"),
        grpc,
        metrics: &metrics,
        buckets: &buckets,
        client: client(),
        services: &NoServices,
        end_of_stream: true,
        buffer_limit: 1 << 20,
        body: None,
    };
    let answer = run(filters, 0, cx, &head(method, &h), &mut filtered).await;
    (answer.expect("no body is read"), filtered)
}

#[test]
fn fractions() {
    let half = Fraction {
        numerator: 50,
        denominator: 100,
    };
    assert_eq!((0..1000).filter(|r| half.chooses(*r)).count(), 500);
    assert!((0..1000).all(|r| !Fraction::NONE.chooses(r)));
    assert!((0..1000).all(|r| Fraction::ALL.chooses(r)));
    let over = Fraction {
        numerator: 200,
        denominator: 100,
    };
    assert!(over.chooses(99), "more than the denominator is all");
    assert_eq!(half.capped(10).numerator, 10);
    assert_eq!(
        half.capped(90).numerator,
        50,
        "a header cannot raise the share"
    );
}

#[test]
fn delay_flags_are_joined_once() {
    assert_eq!(delayed("-"), "DI");
    let a = delayed("UF");
    assert_eq!(a, "DI,UF");
    assert!(std::ptr::eq(a, delayed("UF")), "made once, then reused");
}

#[tokio::test]
async fn aborts_answer_with_the_configured_status() {
    let mut p = no_fault();
    p.abort = abort(AbortStatus::Http(503), 100);
    let f = fault_filter(p);
    let (answer, filtered) = run_with(
        &f,
        &route(Default::default()),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    let (resp, flags) = answer.expect("aborted");
    assert_eq!(resp.status(), 503);
    assert_eq!(flags, "FI");
    assert!(!filtered.delayed);

    // The same abort to a gRPC client is a gRPC status.
    let (answer, _) = run_with(
        &f,
        &route(Default::default()),
        &vhost(Default::default()),
        "POST",
        &[],
        true,
    )
    .await;
    let (resp, _) = answer.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "14", "503 is UNAVAILABLE");

    // A gRPC status to a gRPC client, and (as Envoy does) a plain 200 to another.
    let mut p = no_fault();
    p.abort = abort(AbortStatus::Grpc(8), 100);
    let f = fault_filter(p);
    let (answer, _) = run_with(
        &f,
        &route(Default::default()),
        &vhost(Default::default()),
        "POST",
        &[],
        true,
    )
    .await;
    assert_eq!(answer.unwrap().0.headers()["grpc-status"], "8");
    let (answer, _) = run_with(
        &f,
        &route(Default::default()),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    let resp = answer.unwrap().0;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("grpc-status").is_none());
}

#[tokio::test]
async fn the_routes_settings_replace_the_filters_own() {
    // The filter aborts everything; the route's own settings (no abort) win.
    let mut own = no_fault();
    own.abort = abort(AbortStatus::Http(500), 100);
    let f = fault_filter(own);
    let quiet = setting(FilterPolicy::Fault(Arc::new(no_fault())));
    let (answer, _) = run_with(
        &f,
        &route(quiet.clone()),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    assert!(answer.is_none());
    // The virtual host's settings apply when the route has none.
    let (answer, _) = run_with(
        &f,
        &route(Default::default()),
        &vhost(quiet),
        "GET",
        &[],
        false,
    )
    .await;
    assert!(answer.is_none());
    // Disabled on the route: the filter does not run.
    let off: FilterSettings = [(
        "fault".to_owned(),
        FilterSetting {
            disabled: true,
            policy: None,
        },
    )]
    .into();
    let (answer, _) = run_with(
        &f,
        &route(off),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    assert!(answer.is_none());
    // Disabled in the connection manager, turned on by a route.
    let mut f2 = f.clone();
    f2.0[0].disabled = true;
    let (answer, _) = run_with(
        &f2,
        &route(Default::default()),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    assert!(answer.is_none(), "disabled filters do not run");
    let on: FilterSettings = [(
        "fault".to_owned(),
        FilterSetting {
            disabled: false,
            policy: None,
        },
    )]
    .into();
    let (answer, _) = run_with(
        &f2,
        &route(on),
        &vhost(Default::default()),
        "GET",
        &[],
        false,
    )
    .await;
    assert_eq!(answer.unwrap().0.status(), 500);
}

#[tokio::test]
async fn faults_apply_only_to_matching_requests() {
    let mut p = no_fault();
    p.abort = abort(AbortStatus::Http(503), 100);
    p.headers = vec![HeaderMatcher {
        name: "x-canary".into(),
        rule: HeaderRule::Value(StringMatcher::exact("yes")),
        invert: false,
        treat_missing_as_empty: false,
    }];
    p.downstream_nodes = vec!["node-a".into()];
    let f = fault_filter(p.clone());
    let (r, v) = (route(Default::default()), vhost(Default::default()));
    let both = [
        ("x-canary", "yes"),
        ("x-envoy-downstream-service-node", "node-a"),
    ];
    assert!(run_with(&f, &r, &v, "GET", &both, false).await.0.is_some());
    assert!(run_with(&f, &r, &v, "GET", &both[..1], false)
        .await
        .0
        .is_none());
    assert!(run_with(&f, &r, &v, "GET", &both[1..], false)
        .await
        .0
        .is_none());
    // Another cluster than the fault's.
    p.upstream_cluster = Some("other".into());
    let f = fault_filter(p);
    assert!(run_with(&f, &r, &v, "GET", &both, false).await.0.is_none());
}

#[tokio::test]
async fn header_faults_take_status_and_share_from_the_request() {
    let mut p = no_fault();
    p.abort = abort(AbortStatus::Header, 100);
    let f = fault_filter(p);
    let (r, v) = (route(Default::default()), vhost(Default::default()));
    assert!(run_with(&f, &r, &v, "GET", &[], false).await.0.is_none());
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "GET",
        &[("x-envoy-fault-abort-request", "429")],
        false,
    )
    .await;
    assert_eq!(a.unwrap().0.status(), 429);
    // Out of range: no abort (Envoy takes 200-599 only), unless a gRPC status is asked.
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "GET",
        &[("x-envoy-fault-abort-request", "700")],
        false,
    )
    .await;
    assert!(a.is_none());
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "POST",
        &[("x-envoy-fault-abort-grpc-request", "4")],
        true,
    )
    .await;
    assert_eq!(a.unwrap().0.headers()["grpc-status"], "4");
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "GET",
        &[
            ("x-envoy-fault-abort-request", "429"),
            ("x-envoy-fault-abort-request-percentage", "0"),
        ],
        false,
    )
    .await;
    assert!(a.is_none(), "the header's share of 0");
}

#[tokio::test(start_paused = true)]
async fn delays_hold_the_request_then_maybe_abort() {
    let mut p = no_fault();
    p.delay = Some(FaultDelay {
        duration: DelaySource::Fixed(Duration::from_secs(3)),
        percentage: Fraction::ALL,
    });
    let f = fault_filter(p.clone());
    let (r, v) = (route(Default::default()), vhost(Default::default()));
    let t0 = tokio::time::Instant::now();
    let (a, filtered) = run_with(&f, &r, &v, "GET", &[], false).await;
    assert!(a.is_none());
    assert_eq!(t0.elapsed(), Duration::from_secs(3));
    assert_eq!(filtered.flags("-"), "DI");
    assert_eq!(filtered.flags("UT"), "DI,UT");

    // Delay, then abort.
    p.abort = abort(AbortStatus::Http(500), 100);
    let f = fault_filter(p.clone());
    let (a, filtered) = run_with(&f, &r, &v, "GET", &[], false).await;
    let (resp, flags) = a.unwrap();
    assert_eq!(
        (resp.status().as_u16(), filtered.flags(flags)),
        (500, "DI,FI")
    );

    // Header delay: the request's milliseconds.
    p.abort = None;
    p.delay = Some(FaultDelay {
        duration: DelaySource::Header,
        percentage: Fraction::ALL,
    });
    let f = fault_filter(p);
    let t0 = tokio::time::Instant::now();
    let (_, filtered) = run_with(
        &f,
        &r,
        &v,
        "GET",
        &[("x-envoy-fault-delay-request", "250")],
        false,
    )
    .await;
    assert_eq!(t0.elapsed(), Duration::from_millis(250));
    assert!(filtered.delayed);
    let (_, filtered) = run_with(&f, &r, &v, "GET", &[], false).await;
    assert!(!filtered.delayed, "no header, no delay");
}

#[tokio::test]
async fn max_active_faults_bounds_faults_in_progress() {
    let mut p = no_fault();
    p.abort = abort(AbortStatus::Http(503), 100);
    p.max_active_faults = Some(1);
    let f = fault_filter(p);
    let FilterKind::Fault { active, .. } = &f.0[0].kind else {
        unreachable!()
    };
    let (r, v) = (route(Default::default()), vhost(Default::default()));
    // One fault in progress (held by its request's `Filtered`): the next is not injected.
    let (a, held) = run_with(&f, &r, &v, "GET", &[], false).await;
    assert!(a.is_some());
    assert_eq!(active.now(), 1);
    let (a, _) = run_with(&f, &r, &v, "GET", &[], false).await;
    assert!(a.is_none(), "over max_active_faults");
    drop(held);
    assert_eq!(active.now(), 0);
    let (a, _) = run_with(&f, &r, &v, "GET", &[], false).await;
    assert!(a.is_some());
}

fn cors_policy() -> CorsPolicy {
    CorsPolicy {
        allow_origin: vec![StringMatcher::exact("https://a.example")],
        allow_methods: HeaderText::new("GET, PUT"),
        allow_headers: HeaderText::new("x-a"),
        expose_headers: HeaderText::new("x-b"),
        max_age: HeaderText::new("60"),
        ..Default::default()
    }
}

#[tokio::test]
async fn cors_preflights_and_simple_requests() {
    let f = cors_filter();
    let v = vhost(setting(FilterPolicy::Cors(Arc::new(cors_policy()))));
    let r = route(Default::default());
    let preflight =
        |origin: &'static str| [("origin", origin), ("access-control-request-method", "PUT")];
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "OPTIONS",
        &preflight("https://a.example"),
        false,
    )
    .await;
    let resp = a.expect("answered").0;
    let h = resp.headers();
    assert_eq!(resp.status(), 200);
    assert_eq!(h["access-control-allow-origin"], "https://a.example");
    assert_eq!(h["access-control-allow-methods"], "GET, PUT");
    assert_eq!(h["access-control-allow-headers"], "x-a");
    assert_eq!(h["access-control-max-age"], "60");
    assert!(h.get("access-control-allow-credentials").is_none());

    // Another origin's preflight goes on upstream (Envoy's default)...
    let (a, mut filtered) = run_with(
        &f,
        &r,
        &v,
        "OPTIONS",
        &preflight("https://b.example"),
        false,
    )
    .await;
    assert!(a.is_none());
    let mut out = HeaderMap::new();
    filtered.finish_response(&mut out);
    assert!(out.is_empty(), "nothing added for an origin not allowed");
    // ...or is answered without an allowed origin when the policy says so.
    let strict = CorsPolicy {
        forward_not_matching_preflights: Some(false),
        ..cors_policy()
    };
    let v2 = vhost(setting(FilterPolicy::Cors(Arc::new(strict))));
    let (a, _) = run_with(
        &f,
        &r,
        &v2,
        "OPTIONS",
        &preflight("https://b.example"),
        false,
    )
    .await;
    let resp = a.unwrap().0;
    assert!(resp.headers().get("access-control-allow-origin").is_none());

    // A simple request from an allowed origin: the response names it.
    let (a, mut filtered) =
        run_with(&f, &r, &v, "GET", &[("origin", "https://a.example")], false).await;
    assert!(a.is_none());
    let mut out = HeaderMap::new();
    filtered.finish_response(&mut out);
    assert_eq!(out["access-control-allow-origin"], "https://a.example");
    assert_eq!(out["access-control-expose-headers"], "x-b");
    // An OPTIONS without access-control-request-method is not a preflight.
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "OPTIONS",
        &[("origin", "https://a.example")],
        false,
    )
    .await;
    assert!(a.is_none());
}

#[tokio::test]
async fn cors_fields_merge_from_the_most_specific_level() {
    let f = cors_filter();
    // The route sets only the methods and credentials; origins and the rest come from the
    // virtual host.
    let route_policy = CorsPolicy {
        allow_methods: HeaderText::new("*"),
        allow_credentials: Some(true),
        ..Default::default()
    };
    let r = route(setting(FilterPolicy::Cors(Arc::new(route_policy))));
    let v = vhost(setting(FilterPolicy::Cors(Arc::new(cors_policy()))));
    let (a, _) = run_with(
        &f,
        &r,
        &v,
        "OPTIONS",
        &[
            ("origin", "https://a.example"),
            ("access-control-request-method", "DELETE"),
        ],
        false,
    )
    .await;
    let resp = a.unwrap().0;
    let h = resp.headers();
    assert_eq!(
        h["access-control-allow-methods"], "DELETE",
        "`*`: the requested method"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-headers"], "x-a");
    assert_eq!(h["access-control-allow-origin"], "https://a.example");
}

#[tokio::test]
async fn cors_enabled_shares_and_the_deprecated_field() {
    let f = cors_filter();
    let r = route(Default::default());
    let origin = [("origin", "https://a.example")];
    // Enforced on none: nothing happens.
    let off = CorsPolicy {
        filter_enabled: Some(Fraction::NONE),
        ..cors_policy()
    };
    let v = vhost(setting(FilterPolicy::Cors(Arc::new(off.clone()))));
    let (_, filtered) = run_with(&f, &r, &v, "GET", &origin, false).await;
    assert!(filtered.cors.is_none());
    // Shadow: checked and counted, not enforced.
    let shadow = CorsPolicy {
        shadow_enabled: Some(Fraction::ALL),
        ..off
    };
    let v = vhost(setting(FilterPolicy::Cors(Arc::new(shadow))));
    let t = table();
    let h = headers(&origin);
    let metrics = ProxyMetrics::unregistered();
    let mut filtered = Filtered::default();
    let levels = Levels {
        route: &r,
        vhost: &v,
        table: &t,
    };
    let buckets = ConnBuckets::default();
    let cx = Context {
        levels,
        cluster: Some("web"),
        grpc: false,
        metrics: &metrics,
        buckets: &buckets,
        client: client(),
        services: &NoServices,
        end_of_stream: true,
        buffer_limit: 1 << 20,
        body: None,
    };
    let answer = run(&f, 0, cx, &head("GET", &h), &mut filtered).await;
    assert!(matches!(answer, Ok(None)));
    assert!(filtered.cors.is_none());
    assert_eq!(
        metrics
            .cors_origins
            .get_or_create(&crate::metrics::CorsLabels { origin: "valid" })
            .get(),
        1
    );
    // The deprecated `cors` of a virtual host, when no level has filter settings.
    let mut v = vhost(Default::default());
    v.cors = Some(Arc::new(cors_policy()));
    let (_, filtered) = run_with(&f, &r, &v, "GET", &origin, false).await;
    assert!(filtered.cors.is_some());
    // A policy that allows `*` allows every origin.
    let mut v = vhost(Default::default());
    v.cors = Some(Arc::new(CorsPolicy {
        allow_origin: vec![StringMatcher::exact("*")],
        ..Default::default()
    }));
    let (_, mut filtered) =
        run_with(&f, &r, &v, "GET", &[("origin", "https://z.example")], false).await;
    let mut out = HeaderMap::new();
    filtered.finish_response(&mut out);
    assert_eq!(out["access-control-allow-origin"], "https://z.example");
}

fn rate_limit(max_tokens: u32, enabled: Fraction, enforced: Fraction) -> Arc<RateLimitPolicy> {
    Arc::new(RateLimitPolicy {
        stat_prefix: "rl".into(),
        status: 429,
        bucket: Some(TokenBucket::new(max_tokens, 1, Duration::from_secs(60))),
        filter_enabled: enabled,
        filter_enforced: enforced,
        request_headers_to_add_when_not_enforced: vec![],
        response_headers_to_add: vec![],
        per_connection: false,
        x_ratelimit_headers: false,
        grpc_resource_exhausted: false,
        descriptors: vec![],
        rate_limits: vec![],
        stage: 0,
        vh_rate_limits: Default::default(),
        always_consume_default: true,
    })
}

fn rate_limit_filter(policy: Arc<RateLimitPolicy>) -> HttpFilters {
    HttpFilters(vec![HttpFilter {
        name: "rl".into(),
        disabled: false,
        kind: FilterKind::LocalRateLimit(policy),
    }])
}

fn tokens(p: &RateLimitPolicy) -> u32 {
    p.bucket.as_ref().unwrap().shared.lock().unwrap().tokens
}

#[tokio::test]
async fn rate_limits_check_only_enabled_requests() {
    let (r, v) = (route(FilterSettings::new()), vhost(FilterSettings::new()));
    // Unset `filter_enabled` (none of the requests, Envoy's safe default): the bucket is
    // not even looked at.
    let off = rate_limit(1, Fraction::NONE, Fraction::ALL);
    let filters = rate_limit_filter(off.clone());
    for _ in 0..3 {
        let (answer, _) = run_with(&filters, &r, &v, "GET", &[], false).await;
        assert!(answer.is_none());
    }
    assert_eq!(tokens(&off), 1);

    // Enabled and enforced: one token, then 429 flagged RL.
    let on = rate_limit(1, Fraction::ALL, Fraction::ALL);
    let filters = rate_limit_filter(on.clone());
    assert!(run_with(&filters, &r, &v, "GET", &[], false)
        .await
        .0
        .is_none());
    let (answer, _) = run_with(&filters, &r, &v, "GET", &[], false).await;
    let (resp, flags) = answer.unwrap();
    assert_eq!((resp.status().as_u16(), flags), (429, "RL"));

    // A route's settings bring their own bucket: full, while the filter's is empty.
    let own = rate_limit(2, Fraction::ALL, Fraction::ALL);
    let r = route(setting(FilterPolicy::LocalRateLimit(own.clone())));
    assert!(run_with(&filters, &r, &v, "GET", &[], false)
        .await
        .0
        .is_none());
    assert_eq!((tokens(&own), tokens(&on)), (1, 0));
}

#[test]
fn origins_as_host_and_port() {
    for (value, want) in [
        ("https://app.example.com:8443/x?y", "app.example.com:8443"),
        ("http://web", "web"),
        ("https://user:pw@example.com/", "example.com"),
        ("web:8080", "web:8080"),
        ("null", "null"),
        ("://x", "://x"),
    ] {
        assert_eq!(host_and_port(value), want, "{value}");
    }
}

#[test]
fn basic_credentials_decode_with_or_without_padding() {
    assert_eq!(
        basic_credentials(b"dXNlcjpwYTpzcw=="),
        Some(("user".into(), "pa:ss".into()))
    );
    assert_eq!(
        basic_credentials(b"dXNlcjpwYTpzcw"),
        Some(("user".into(), "pa:ss".into()))
    );
    // No colon, not base64, not UTF-8.
    assert_eq!(basic_credentials(b"dXNlcg=="), None);
    assert_eq!(basic_credentials(b"!!!"), None);
    assert_eq!(basic_credentials(b"/w=="), None);
}

#[test]
fn session_values_name_hosts() {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let addr: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
    // Myelin's (and Envoy's first) form, quoted or not.
    assert_eq!(super::session_host(&b64(b"10.0.0.7:8080")), Some(addr));
    assert_eq!(
        super::session_host(&format!("\"{}\"", b64(b"10.0.0.7:8080"))),
        Some(addr)
    );
    // Envoy's `envoy.Cookie` message: address, then expiry in seconds since the epoch.
    let message = |expires: u64| {
        let mut m = vec![0x0a, 13];
        m.extend_from_slice(b"10.0.0.7:8080");
        m.push(0x10);
        let mut v = expires;
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                m.push(byte);
                break;
            }
            m.push(byte | 0x80);
        }
        b64(&m)
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(super::session_host(&message(now + 600)), Some(addr));
    assert_eq!(super::session_host(&message(now - 600)), None);
    for bad in ["", "!!!", &b64(b"not an address"), &b64(&[0x0a, 40, b'1'])] {
        assert_eq!(super::session_host(bad), None, "{bad}");
    }
}

#[test]
fn sessions_answer_only_when_the_host_changed() {
    use crate::model::filter::{SessionPolicy, SessionState};
    let a: std::net::SocketAddr = "10.0.0.7:8080".parse().unwrap();
    let b: std::net::SocketAddr = "10.0.0.8:8080".parse().unwrap();
    let cookie = Arc::new(SessionPolicy {
        state: SessionState::Cookie {
            name: "s".into(),
            path: String::new(),
            ttl: None,
            attributes: vec![("Secure".into(), String::new())],
        },
        strict: false,
    });
    let session = super::Session {
        policy: cookie,
        requested: Some(a),
    };
    let mut h = HeaderMap::new();
    session.answer(a, &mut h);
    assert!(h.is_empty());
    session.answer(b, &mut h);
    assert_eq!(
        h["set-cookie"],
        "s=\"MTAuMC4wLjg6ODA4MA==\"; Secure; HttpOnly"
    );
}

/// No rate limit service: every call fails.
struct NoServices;

impl crate::services::Services for NoServices {
    fn send<'a>(
        &'a self,
        _: &'a str,
        _: http::Request<bytes::Bytes>,
        _: bool,
    ) -> crate::services::Pending<'a, Result<crate::services::Reply, String>> {
        Box::pin(async { Err("no services in unit tests".to_owned()) })
    }

    fn send_detached(&self, _: &str, _: http::Request<bytes::Bytes>, _: Duration) {}

    fn open<'a>(
        &'a self,
        _: &'a str,
    ) -> crate::services::Pending<'a, Result<crate::services::Opener, String>> {
        Box::pin(async { Err("no streams in unit tests".to_owned()) })
    }
}

/// A rate limit service that answers every call with `reply` (`Err`: fails) and keeps the
/// clusters it was called for.
struct Canned {
    reply: fn() -> Result<crate::services::Reply, String>,
    calls: std::sync::Mutex<Vec<String>>,
}

impl crate::services::Services for Canned {
    fn send<'a>(
        &'a self,
        cluster: &'a str,
        _: http::Request<bytes::Bytes>,
        _: bool,
    ) -> crate::services::Pending<'a, Result<crate::services::Reply, String>> {
        self.calls.lock().unwrap().push(cluster.to_owned());
        Box::pin(async move { (self.reply)() })
    }

    fn send_detached(&self, cluster: &str, _: http::Request<bytes::Bytes>, _: Duration) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{cluster} (detached)"));
    }

    fn open<'a>(
        &'a self,
        _: &'a str,
    ) -> crate::services::Pending<'a, Result<crate::services::Opener, String>> {
        Box::pin(async { Err("no streams in unit tests".to_owned()) })
    }
}

fn global_policy() -> GlobalRateLimitPolicy {
    GlobalRateLimitPolicy {
        domain: "d".into(),
        stage: 0,
        request_type: RequestType::Both,
        service: crate::model::filter::GrpcService {
            cluster: "rls".into(),
            authority: "rls".into(),
            metadata: vec![],
        },
        timeout: Duration::from_millis(20),
        failure_mode_deny: Fraction::NONE,
        status: 429,
        status_on_error: 500,
        grpc_resource_exhausted: false,
        x_ratelimit_headers: false,
        x_envoy_ratelimited: true,
        response_headers_to_add: vec![],
        stat_prefix: "g".into(),
        filter_enabled: Fraction::ALL,
        filter_enforced: Fraction::ALL,
        rate_limits: vec![RateLimitEntry {
            stage: 0,
            actions: vec![RateLimitAction::GenericKey {
                key: "generic_key".into(),
                value: "v".into(),
            }],
            hits: crate::model::route::Hits::One,
            on_stream_done: false,
        }],
    }
}

/// Runs a global rate limit filter of `policy` against `service` for a request with `hs`:
/// the answer, what it left, the calls made and the filter's outcomes.
async fn run_global(
    policy: GlobalRateLimitPolicy,
    service: &Canned,
    hs: &[(&str, &str)],
    grpc: bool,
) -> (Option<Answer>, Filtered, usize, Vec<(&'static str, u64)>) {
    let f = HttpFilters(vec![HttpFilter {
        name: "global_rl".into(),
        disabled: false,
        kind: FilterKind::RateLimit(Arc::new(policy)),
    }]);
    let (r, v, t) = (
        route(FilterSettings::new()),
        vhost(FilterSettings::new()),
        table(),
    );
    let levels = Levels {
        route: &r,
        vhost: &v,
        table: &t,
    };
    let h = headers(hs);
    let metrics = ProxyMetrics::unregistered();
    let buckets = ConnBuckets::default();
    let mut filtered = Filtered::default();
    let before = service.calls.lock().unwrap().len();
    let cx = Context {
        levels,
        cluster: Some("web"),
        grpc,
        metrics: &metrics,
        buckets: &buckets,
        client: client(),
        services: service,
        end_of_stream: true,
        buffer_limit: 1 << 20,
        body: None,
    };
    let answer = run(&f, 0, cx, &head("GET", &h), &mut filtered)
        .await
        .expect("no body is read");
    let calls = service.calls.lock().unwrap().len() - before;
    let outcomes = [
        "ok",
        "over_limit",
        "over_limit_not_enforced",
        "error_allowed",
        "error_denied",
    ]
    .into_iter()
    .map(|o| {
        let n = metrics
            .rate_limit_service
            .get_or_create(&crate::metrics::RateLimitLabels {
                stat_prefix: crate::metrics::StatPrefix("g".into()),
                outcome: o,
            })
            .get();
        (o, n)
    })
    .filter(|(_, n)| *n > 0)
    .collect();
    (answer, filtered, calls, outcomes)
}

#[tokio::test]
async fn the_global_rate_limit_filter_follows_the_services_word() {
    let ok = Canned {
        reply: || {
            Ok(crate::ratelimit::test_reply(
                false,
                &[("x-down", "1")],
                &[("x-up", "2")],
            ))
        },
        calls: Default::default(),
    };
    let over = Canned {
        reply: || Ok(crate::ratelimit::test_reply(true, &[("x-down", "1")], &[])),
        calls: Default::default(),
    };
    let failing = Canned {
        reply: || Err("refused".into()),
        calls: Default::default(),
    };

    // OK: the request goes on with the service's headers for it and its response.
    let (a, mut filtered, calls, outcomes) = run_global(global_policy(), &ok, &[], false).await;
    assert!(a.is_none());
    assert_eq!((calls, outcomes), (1, vec![("ok", 1)]));
    let (mut up, mut down) = (HeaderMap::new(), HeaderMap::new());
    filtered.finish_request(&mut up);
    filtered.finish_response(&mut down);
    assert_eq!(up["x-up"], "2");
    assert_eq!(down["x-down"], "1");
    assert!(!down.contains_key("x-envoy-ratelimited"));

    // OVER_LIMIT: 429 RL with the service's headers and Envoy's, the policy's own; for a
    // gRPC client UNAVAILABLE, or RESOURCE_EXHAUSTED when configured.
    let mut p = global_policy();
    p.response_headers_to_add = vec![crate::model::route::HeaderValueOption {
        name: "x-limited".into(),
        value: "yes".into(),
        append_action: crate::model::route::AppendAction::OverwriteIfExistsOrAdd,
        keep_empty_value: false,
    }];
    let (a, _, _, outcomes) = run_global(p, &over, &[], false).await;
    let (resp, flags) = a.expect("answered");
    assert_eq!((resp.status().as_u16(), flags), (429, "RL"));
    assert_eq!(resp.headers()["x-envoy-ratelimited"], "true");
    assert_eq!(resp.headers()["x-down"], "1");
    assert_eq!(resp.headers()["x-limited"], "yes");
    assert_eq!(outcomes, vec![("over_limit", 1)]);
    let (a, _, _, _) = run_global(global_policy(), &over, &[], true).await;
    assert_eq!(a.unwrap().0.headers()["grpc-status"], "14");
    let mut p = global_policy();
    p.grpc_resource_exhausted = true;
    p.x_envoy_ratelimited = false;
    let (a, _, _, _) = run_global(p, &over, &[], true).await;
    let resp = a.unwrap().0;
    assert_eq!(resp.headers()["grpc-status"], "8");
    assert!(!resp.headers().contains_key("x-envoy-ratelimited"));

    // Not enforced: the request goes on, and its response says it was over.
    let mut p = global_policy();
    p.filter_enforced = Fraction::NONE;
    let (a, mut filtered, _, outcomes) = run_global(p, &over, &[], false).await;
    assert!(a.is_none());
    assert_eq!(outcomes, vec![("over_limit_not_enforced", 1)]);
    let mut down = HeaderMap::new();
    filtered.finish_response(&mut down);
    assert_eq!(down["x-envoy-ratelimited"], "true");

    // No answer: on, or `status_on_error` RLSE under failure_mode_deny.
    let (a, _, _, outcomes) = run_global(global_policy(), &failing, &[], false).await;
    assert!(a.is_none());
    assert_eq!(outcomes, vec![("error_allowed", 1)]);
    let mut p = global_policy();
    p.failure_mode_deny = Fraction::ALL;
    p.status_on_error = 503;
    let (a, _, _, outcomes) = run_global(p, &failing, &[], false).await;
    let (resp, flags) = a.expect("denied");
    assert_eq!((resp.status().as_u16(), flags), (503, "RLSE"));
    assert_eq!(outcomes, vec![("error_denied", 1)]);

    // No call: the filter not enabled, a request of the other type, no descriptor.
    let mut p = global_policy();
    p.filter_enabled = Fraction::NONE;
    assert_eq!(run_global(p, &over, &[], false).await.2, 0);
    let mut p = global_policy();
    p.request_type = RequestType::Internal;
    assert_eq!(run_global(p.clone(), &over, &[], false).await.2, 0);
    let internal = [("x-envoy-internal", "true")];
    assert_eq!(run_global(p, &over, &internal, false).await.2, 1);
    let mut p = global_policy();
    p.request_type = RequestType::External;
    assert_eq!(run_global(p, &over, &internal, false).await.2, 0);
    let mut p = global_policy();
    p.rate_limits = vec![RateLimitEntry {
        stage: 0,
        actions: vec![RateLimitAction::RequestHeaders {
            header: "x-user".into(),
            key: "user".into(),
            skip_if_absent: false,
        }],
        hits: crate::model::route::Hits::One,
        on_stream_done: false,
    }];
    let (a, _, calls, outcomes) = run_global(p, &over, &[], false).await;
    assert!(a.is_none() && calls == 0 && outcomes.is_empty());

    // Entries for the end of the stream: left for then (not in this call), whatever the
    // answer now; one whose hits come from dynamic metadata never makes a descriptor.
    let mut p = global_policy();
    let entry = |value: &str, hits, on_stream_done| RateLimitEntry {
        stage: 0,
        actions: vec![RateLimitAction::GenericKey {
            key: "cost".into(),
            value: value.into(),
        }],
        hits,
        on_stream_done,
    };
    use crate::model::route::Hits;
    p.rate_limits = vec![
        entry("now", Hits::Number(4), false),
        entry("later", Hits::Number(2), true),
        entry("metadata", Hits::Never, true),
    ];
    let (a, mut filtered, calls, _) = run_global(p, &over, &[], false).await;
    assert!(a.is_some() && calls == 1);
    let done = filtered
        .take_stream_done()
        .expect("a call for the end of the stream");
    assert_eq!(
        done.descriptors,
        [Descriptor {
            entries: vec![("cost".into(), "later".into())],
            hits: Some(2),
        }]
    );
    assert_eq!(done.domain, "d");
    assert_eq!(ok.calls.lock().unwrap()[0], "rls");
}

#[test]
fn api_keys_from_their_sources_and_clients_by_route() {
    use crate::model::filter::{
        ApiKeyAuthPolicy, ApiKeyAuthRoute, ApiKeyForwarding, ApiKeySource as S, ApiKeys,
    };
    let keys = |pairs: &[(&str, &str)]| {
        ApiKeys(
            pairs
                .iter()
                .map(|(k, c)| ((*k).to_owned(), (*c).to_owned()))
                .collect(),
        )
    };
    let policy = ApiKeyAuthPolicy {
        keys: keys(&[("key1", "client-1"), ("key 2", "client-2")]),
        sources: vec![
            S::Header("x-api-key".into()),
            S::Query("api_key".into()),
            S::Cookie("api_key".into()),
        ],
        forwarding: ApiKeyForwarding {
            header: Some("x-client-id".into()),
            hide_credentials: true,
        },
    };
    let metrics = ProxyMetrics::unregistered();
    let check = |route: Option<&ApiKeyAuthRoute>, path: &str, hs: &[(&str, &str)]| {
        let h = headers(hs);
        let head = RequestHead {
            path,
            ..head("GET", &h)
        };
        let mut filtered = Filtered::default();
        let answer = api_key_auth(&policy, route, &head, false, &metrics, &mut filtered);
        let status = answer.map(|(r, _)| r.status().as_u16());
        // What goes upstream.
        let mut out = h.clone();
        let uri: http::Uri = path.parse().unwrap();
        let uri = filtered.rewritten_uri(&uri).unwrap_or(uri);
        filtered.finish_request(&mut out);
        (status, out, uri.to_string())
    };

    // Sources in order; a header's `Bearer ` prefix dropped; the query percent-decoded.
    let (s, out, _) = check(None, "/", &[("x-api-key", "Bearer key1")]);
    assert_eq!(s, None);
    assert_eq!(out["x-client-id"], "client-1");
    assert!(!out.contains_key("x-api-key"), "hidden");
    let (s, out, uri) = check(None, "/p?a=1&api_key=key%202&b=2", &[]);
    assert_eq!(s, None);
    assert_eq!(out["x-client-id"], "client-2");
    assert_eq!(uri, "/p?a=1&b=2", "the key's parameter hidden");
    let (s, out, _) = check(None, "/", &[("cookie", "a=1; api_key=key1; b=2")]);
    assert_eq!(s, None);
    assert_eq!(out["cookie"], "a=1; b=2");
    // A wrong key in the first source fails even with a good one later (Envoy's order);
    // no key; an unknown one.
    assert_eq!(
        check(None, "/?api_key=key1", &[("x-api-key", "nope")]).0,
        Some(401)
    );
    assert_eq!(check(None, "/", &[]).0, Some(401));
    assert_eq!(check(None, "/", &[("x-api-key", "key3")]).0, Some(401));

    // A route's clients, and keys and sources of its own.
    let route = ApiKeyAuthRoute {
        keys: ApiKeys::default(),
        sources: vec![],
        allowed_clients: vec!["client-2".into()],
        forwarding: ApiKeyForwarding::default(),
    };
    assert_eq!(
        check(Some(&route), "/", &[("x-api-key", "key1")]).0,
        Some(403)
    );
    let (s, out, _) = check(Some(&route), "/", &[("x-api-key", "key 2")]);
    assert_eq!(s, None);
    assert!(
        out.contains_key("x-api-key") && !out.contains_key("x-client-id"),
        "the route's forwarding replaces the filter's"
    );
    let own = ApiKeyAuthRoute {
        keys: keys(&[("route-key", "client-9")]),
        sources: vec![S::Header("x-route-key".into())],
        allowed_clients: vec![],
        forwarding: ApiKeyForwarding::default(),
    };
    assert_eq!(
        check(Some(&own), "/", &[("x-api-key", "key1")]).0,
        Some(401)
    );
    assert_eq!(
        check(Some(&own), "/", &[("x-route-key", "route-key")]).0,
        None
    );
    let count = |o| {
        metrics
            .api_key_auth
            .get_or_create(&crate::metrics::ApiKeyLabels { outcome: o })
            .get()
    };
    assert_eq!(
        (count("allowed"), count("unauthorized"), count("forbidden")),
        (5, 4, 1)
    );
}
