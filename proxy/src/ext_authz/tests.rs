use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use http::Method;

use super::*;
use crate::model::ext_authz::{MetadataMatcher, MetadataValueMatch};
use crate::model::filter::Fraction;
use crate::model::StringPattern;
use crate::services::BoolValue;

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn head<'a>(path: &'a str, h: &'a HeaderMap) -> RequestHead<'a> {
    RequestHead {
        method: "GET",
        authority: "shop.example",
        path,
        scheme: "http",
        headers: h,
    }
}

fn client() -> Subject<'static> {
    Subject {
        head: None,
        peer: "10.0.0.7:40000".parse().unwrap(),
        direct: "10.0.0.7".parse().unwrap(),
        remote_ip: "10.0.0.7".parse().unwrap(),
        local: "10.0.0.9:8080".parse().unwrap(),
        sni: Some("shop.example"),
        principal: Some("spiffe://cluster.local/ns/a/sa/client"),
    }
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher::exact(s)
}

fn grpc_policy() -> ExtAuthzPolicy {
    ExtAuthzPolicy {
        service: AuthzService::Grpc(GrpcService {
            cluster: "authz".into(),
            authority: "authz.local".into(),
            metadata: vec![("x-tenant".into(), "t1".into())],
        }),
        timeout: Duration::from_millis(200),
        failure_mode_allow: false,
        failure_mode_allow_header_add: false,
        clear_route_cache: false,
        status_on_error: 403,
        filter_enabled: Fraction::ALL,
        filter_enabled_metadata: None,
        deny_at_disable: false,
        allowed_headers: None,
        disallowed_headers: vec![exact("cookie")],
        include_peer_certificate: false,
        include_tls_session: true,
        encode_raw_headers: false,
        validate_mutations: false,
        header_rules: None,
        max_denied_body: 0,
        metadata_namespaces: vec!["envoy.filters.http.rbac".into()],
        stat_prefix: "t".into(),
        with_body: None,
    }
}

fn http_service() -> HttpAuthzService {
    HttpAuthzService {
        cluster: "authz".into(),
        path_prefix: "/auth".into(),
        headers_to_add: vec![crate::model::route::HeaderValueOption {
            name: "x-from".into(),
            value: "myelin".into(),
            append_action: crate::model::route::AppendAction::OverwriteIfExistsOrAdd,
            keep_empty_value: false,
        }],
        upstream: vec![exact("x-user")],
        upstream_append: vec![exact("x-group")],
        client: None,
        client_on_success: vec![exact("set-cookie")],
    }
}

fn http_policy(service: HttpAuthzService) -> ExtAuthzPolicy {
    ExtAuthzPolicy {
        service: AuthzService::Http(service),
        allowed_headers: Some(vec![StringMatcher {
            pattern: StringPattern::Prefix("x-".into()),
            ignore_case: false,
        }]),
        disallowed_headers: vec![],
        ..grpc_policy()
    }
}

fn decode_check(req: &Request<Bytes>) -> CheckRequest {
    let body = req.body().clone();
    assert_eq!(body[0], 0, "not compressed");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    assert_eq!(len, body.len() - 5);
    CheckRequest::decode(body.slice(5..)).unwrap()
}

#[test]
fn a_grpc_check_describes_the_request() {
    let h = headers(&[
        ("host", "shop.example"),
        ("x-user", "alice"),
        ("x-user", "admin"),
        ("cookie", "session=1"),
        ("x-envoy-downstream-service-cluster", "frontend"),
        (PARTIAL_BODY, "true"),
    ]);
    let head = head("/cart?id=7", &h);
    let policy = grpc_policy();
    let mut metadata = DynamicMetadata::default();
    metadata.set(
        "envoy.filters.http.rbac",
        "shadow_engine_result".into(),
        "allowed".into(),
    );
    let subject = client();
    let check = Check {
        policy: &policy,
        context_extensions: [("vhost".to_owned(), "shop".to_owned())].into(),
        head: &head,
        client: &subject,
        metadata: &metadata,
        body: None,
    };
    let AuthzService::Grpc(service) = &policy.service else {
        unreachable!()
    };
    let req = check_call(service, &check).unwrap();
    assert_eq!(
        req.uri().to_string(),
        "http://authz.local/envoy.service.auth.v3.Authorization/Check"
    );
    assert_eq!(req.headers()["x-tenant"], "t1");
    assert_eq!(req.headers()["grpc-timeout"], "200m");
    let attrs = decode_check(&req).attributes.unwrap();
    let http = attrs.request.unwrap().http.unwrap();
    assert_eq!(http.method, "GET");
    assert_eq!(http.path, "/cart?id=7");
    assert_eq!(http.host, "shop.example");
    assert_eq!(http.scheme, "http");
    let mut names: Vec<_> = http.headers.keys().cloned().collect();
    names.sort();
    assert_eq!(
        names,
        [
            ":authority",
            ":method",
            ":path",
            ":scheme",
            "x-envoy-downstream-service-cluster",
            "x-user"
        ],
        "all but the disallowed cookie, the client's partial-body header and the Host \
         header (which is :authority)"
    );
    assert_eq!(
        http.headers["x-user"], "alice,admin",
        "joined as Envoy does"
    );
    assert!(http.header_map.is_none());
    let source = attrs.source.unwrap();
    let addr = source.address.unwrap().socket_address.unwrap();
    assert_eq!(
        (addr.address.as_str(), addr.port_value),
        ("10.0.0.7", 40000)
    );
    assert_eq!(source.principal, "spiffe://cluster.local/ns/a/sa/client");
    assert_eq!(source.service, "frontend");
    let dest = attrs.destination.unwrap().address.unwrap();
    assert_eq!(dest.socket_address.unwrap().port_value, 8080);
    assert_eq!(attrs.context_extensions["vhost"], "shop");
    assert_eq!(attrs.tls_session.unwrap().sni, "shop.example");
    let rbac = &attrs.metadata_context.unwrap().filter_metadata["envoy.filters.http.rbac"];
    assert_eq!(
        rbac.fields["shadow_engine_result"].string_value.as_deref(),
        Some("allowed")
    );
}

#[test]
fn raw_headers_and_an_allow_list() {
    let h = headers(&[("x-user", "alice"), ("x-other", "1"), ("accept", "*/*")]);
    let head = head("/", &h);
    let policy = ExtAuthzPolicy {
        encode_raw_headers: true,
        allowed_headers: Some(vec![exact("x-user"), exact(":path")]),
        ..grpc_policy()
    };
    let metadata = DynamicMetadata::default();
    let subject = client();
    let check = Check {
        policy: &policy,
        context_extensions: HashMap::new(),
        head: &head,
        client: &subject,
        metadata: &metadata,
        body: None,
    };
    let AuthzService::Grpc(service) = &policy.service else {
        unreachable!()
    };
    let attrs = decode_check(&check_call(service, &check).unwrap())
        .attributes
        .unwrap();
    let http = attrs.request.unwrap().http.unwrap();
    assert!(http.headers.is_empty(), "header_map instead");
    let raw: Vec<_> = http
        .header_map
        .unwrap()
        .headers
        .into_iter()
        .map(|h| (h.key, String::from_utf8(h.raw_value).unwrap()))
        .collect();
    assert_eq!(
        raw,
        [
            (":path".to_owned(), "/".to_owned()),
            ("x-user".to_owned(), "alice".to_owned())
        ]
    );
    assert!(attrs.metadata_context.is_none(), "nothing in the namespace");
}

fn grpc_reply(resp: &CheckResponse, grpc_status: &str) -> Reply {
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(resp.encoded_len() as u32);
    resp.encode(&mut body).unwrap();
    Reply {
        status: StatusCode::OK,
        headers: headers(&[("content-type", "application/grpc")]),
        body: body.freeze(),
        trailers: Some(headers(&[("grpc-status", grpc_status)])),
    }
}

fn option(key: &str, value: &str, append: Option<bool>, action: i32) -> HeaderValueOptionProto {
    HeaderValueOptionProto {
        header: Some(HeaderValueProto {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }),
        append: append.map(|value| BoolValue { value }),
        append_action: action,
    }
}

fn edit(name: &'static str, value: &'static str, action: Action) -> Edit {
    Edit {
        name: HeaderName::from_static(name),
        value: HeaderValue::from_static(value),
        action,
    }
}

#[test]
fn a_grpc_ok_carries_its_changes() {
    let resp = CheckResponse {
        status: Some(RpcStatus { code: 0 }),
        ok_response: Some(OkHttpResponse {
            headers: vec![
                option("x-user", "alice", Some(false), 0),
                option("x-trace", "authz", Some(true), 0),
                option("x-group", "admins", None, 0),
                option("x-tier", "gold", None, 1),
                option("x-only", "if-there", None, 3),
            ],
            headers_to_remove: vec!["authorization".into(), "host".into()],
            response_headers_to_add: vec![option("x-authz", "yes", None, 2)],
            query_parameters_to_set: vec![QueryParameter {
                key: "from".into(),
                value: "authz".into(),
            }],
            query_parameters_to_remove: vec!["token".into()],
        }),
        ..Default::default()
    };
    let Verdict::Ok(allowed) = grpc_verdict(grpc_reply(&resp, "0"), true) else {
        panic!("not allowed")
    };
    let Verdict::Ok(allowed) = checked(allowed, None) else {
        panic!("refused without rules")
    };
    assert_eq!(
        allowed.request,
        [
            edit("x-user", "alice", Action::Set),
            edit("x-trace", "authz", Action::Join),
            edit("x-group", "admins", Action::Add),
            edit("x-tier", "gold", Action::AddIfAbsent),
            edit("x-only", "if-there", Action::OverwriteIfExists),
        ]
    );
    assert_eq!(
        allowed.remove,
        [header::AUTHORIZATION],
        "host is never removed"
    );
    assert_eq!(allowed.response, [edit("x-authz", "yes", Action::Set)]);
    assert_eq!(allowed.query_set, [("from".to_owned(), "authz".to_owned())]);
    assert_eq!(allowed.query_remove, ["token"]);

    let mut h = headers(&[
        ("x-user", "mallory"),
        ("x-trace", "client"),
        ("x-tier", "bronze"),
        ("authorization", "Bearer t"),
    ]);
    allowed.edit_request(&mut h);
    assert_eq!(h["x-user"], "alice");
    assert_eq!(h["x-trace"], "client,authz");
    assert_eq!(h["x-group"], "admins");
    assert_eq!(h["x-tier"], "bronze");
    assert!(!h.contains_key("x-only"));
    assert!(!h.contains_key("authorization"));
}

#[test]
fn grpc_denials_and_errors() {
    let denied = CheckResponse {
        status: Some(RpcStatus { code: 16 }),
        denied_response: Some(DeniedHttpResponse {
            status: Some(HttpStatus { code: 401 }),
            headers: vec![option("www-authenticate", "Bearer", None, 0)],
            body: "who are you".into(),
        }),
        ..Default::default()
    };
    assert_eq!(
        grpc_verdict(grpc_reply(&denied, "0"), false),
        Verdict::Denied {
            status: 401,
            headers: vec![(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
            body: Bytes::from_static(b"who are you"),
        }
    );
    let bare = CheckResponse {
        status: Some(RpcStatus { code: 7 }),
        ..Default::default()
    };
    assert_eq!(
        grpc_verdict(grpc_reply(&bare, "0"), false),
        Verdict::Denied {
            status: 403,
            headers: vec![],
            body: Bytes::new()
        },
        "no denied_response: 403"
    );
    let error = CheckResponse {
        status: Some(RpcStatus { code: 13 }),
        error_response: Some(vec![]),
        ..Default::default()
    };
    assert!(matches!(
        grpc_verdict(grpc_reply(&error, "0"), false),
        Verdict::Error(_)
    ));
    assert!(matches!(
        grpc_verdict(grpc_reply(&bare, "14"), false),
        Verdict::Error(e) if e == "grpc-status 14"
    ));
    // A header that is not valid HTTP: skipped, or (validate_mutations) the answer refused.
    let bad = CheckResponse {
        status: Some(RpcStatus { code: 0 }),
        ok_response: Some(OkHttpResponse {
            headers: vec![
                option("bad header", "x", None, 0),
                option("x-good", "y", None, 0),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let Verdict::Ok(a) = grpc_verdict(grpc_reply(&bad, "0"), false) else {
        panic!()
    };
    assert_eq!(a.request, [edit("x-good", "y", Action::Add)]);
    assert!(matches!(
        grpc_verdict(grpc_reply(&bad, "0"), true),
        Verdict::Invalid(_)
    ));
}

/// `decoder_header_mutation_rules`: Envoy's checker over the changes to the request.
#[tokio::test]
async fn mutation_rules_decide_which_request_changes_are_made() {
    fn reply() -> Result<Reply, String> {
        let resp = CheckResponse {
            status: Some(RpcStatus { code: 0 }),
            ok_response: Some(OkHttpResponse {
                headers: vec![
                    option("x-user", "alice", None, 0),
                    option("x-envoy-original-path", "/x", None, 0),
                    option("x-tenant", "t9", None, 0),
                ],
                headers_to_remove: vec!["x-secret".into(), "x-envoy-peer".into(), "host".into()],
                response_headers_to_add: vec![option("x-envoy-authz", "yes", None, 0)],
                ..Default::default()
            }),
            ..Default::default()
        };
        Ok(grpc_reply(&resp, "0"))
    }
    let metrics = ProxyMetrics::unregistered();
    let h = headers(&[("x-user", "mallory")]);
    let head = head("/", &h);
    let services = Canned {
        reply: Some(reply),
        requests: Mutex::default(),
    };
    let run_with = |rules: Option<MutationRules>| {
        let policy = ExtAuthzPolicy {
            header_rules: rules,
            ..grpc_policy()
        };
        let (head, services, metrics) = (&head, &services, &metrics);
        async move { run_check(services, &policy, head, false, metrics).await }
    };
    let names = |edits: &[Edit]| edits.iter().map(|e| e.name.to_string()).collect::<Vec<_>>();

    // No rules: every change but the removal of host.
    let Ok(Some(a)) = run_with(None).await else {
        panic!("not let through")
    };
    assert_eq!(
        names(&a.request),
        ["x-user", "x-envoy-original-path", "x-tenant"]
    );
    assert_eq!(a.remove, ["x-secret", "x-envoy-peer"]);

    // Envoy's default rules: no x-envoy-* header is changed, host is never removed, the
    // rest is; the response's changes are not the rules' business.
    let Ok(Some(a)) = run_with(Some(MutationRules::default())).await else {
        panic!("not let through")
    };
    assert_eq!(names(&a.request), ["x-user", "x-tenant"]);
    assert_eq!(a.remove, ["x-secret"]);
    assert_eq!(names(&a.response), ["x-envoy-authz"]);

    // An expression: x-tenant is never changed, x-envoy-peer may be.
    let rules = MutationRules {
        allow_expression: Some(crate::model::Regex::new("x-envoy-peer").unwrap()),
        disallow_expression: Some(crate::model::Regex::new("x-tenant").unwrap()),
        ..MutationRules::default()
    };
    let Ok(Some(a)) = run_with(Some(rules)).await else {
        panic!("not let through")
    };
    assert_eq!(names(&a.request), ["x-user"]);
    assert_eq!(a.remove, ["x-secret", "x-envoy-peer"]);

    // disallow_is_error: a refused change refuses the answer, a 500 flagged UAEX.
    let strict = MutationRules {
        disallow_is_error: true,
        ..MutationRules::default()
    };
    let Err((resp, flags)) = run_with(Some(strict)).await else {
        panic!("let through")
    };
    assert_eq!((resp.status().as_u16(), flags), (500, "UAEX"));
    let allow_envoy = MutationRules {
        disallow_is_error: true,
        allow_envoy: true,
        ..MutationRules::default()
    };
    let Err((resp, _)) = run_with(Some(allow_envoy)).await else {
        panic!("removing host let through")
    };
    assert_eq!(resp.status(), 500, "host may not be removed even so");
    assert_eq!(
        metrics_value(&metrics),
        [("invalid", 2), ("ok", 3)],
        "counted per request"
    );
}

#[test]
fn an_http_check_is_the_request_head_with_allowed_headers() {
    let h = headers(&[
        ("host", "shop.example"),
        ("authorization", "Bearer t"),
        ("x-user", "alice"),
        ("accept", "*/*"),
        ("content-length", "12"),
    ]);
    let head = RequestHead {
        method: "POST",
        ..head("/cart?id=7", &h)
    };
    let policy = http_policy(http_service());
    let metadata = DynamicMetadata::default();
    let subject = client();
    let check = Check {
        policy: &policy,
        context_extensions: HashMap::new(),
        head: &head,
        client: &subject,
        metadata: &metadata,
        body: None,
    };
    let AuthzService::Http(service) = &policy.service else {
        unreachable!()
    };
    let req = http_request(service, &check).unwrap();
    assert_eq!(req.method(), Method::POST);
    assert_eq!(
        req.uri().to_string(),
        "http://shop.example/auth/cart?id=7",
        "path_prefix before the path, the client's host"
    );
    let mut names: Vec<_> = req.headers().keys().map(|k| k.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        ["authorization", "content-length", "x-from", "x-user"],
        "authorization always, x-* allowed, accept not"
    );
    assert_eq!(req.headers()["content-length"], "0", "no body");
    assert_eq!(req.headers()["x-from"], "myelin");
    assert!(req.body().is_empty());
}

#[test]
fn bodies_are_told_up_to_the_limit() {
    use crate::body::ReadAhead;
    use crate::model::ext_authz::BodySettings;
    let h = headers(&[("x-user", "alice"), (PARTIAL_BODY, "false")]);
    let head = RequestHead {
        method: "POST",
        ..head("/upload", &h)
    };
    let metadata = DynamicMetadata::default();
    let subject = client();
    let settings = |max_bytes, pack_as_bytes| BodySettings {
        max_bytes,
        allow_partial: true,
        pack_as_bytes,
    };
    let read = |data: &'static [u8], whole| ReadAhead {
        data: Bytes::from_static(data),
        whole,
        trailers: None,
    };
    let grpc = grpc_policy();
    let AuthzService::Grpc(service) = &grpc.service else {
        unreachable!()
    };
    // (what was read, settings) -> (body, raw_body, partial header, size)
    let whole = read(b"hello \xff world", true);
    let started = read(b"hello", false);
    for (ahead, settings, want) in [
        (
            &whole,
            settings(64, false),
            (&b"hello \xff world"[..], &b""[..], "false", 13),
        ),
        (
            &whole,
            settings(5, false),
            (&b"hello"[..], &b""[..], "true", 13),
        ),
        (
            &whole,
            settings(64, true),
            (&b""[..], &b"hello \xff world"[..], "false", 13),
        ),
        (
            &started,
            settings(5, false),
            (&b"hello"[..], &b""[..], "true", 5),
        ),
    ] {
        let check = Check {
            policy: &grpc,
            context_extensions: HashMap::new(),
            head: &head,
            client: &subject,
            metadata: &metadata,
            body: Some((ahead, settings)),
        };
        let http = decode_check(&check_call(service, &check).unwrap())
            .attributes
            .unwrap()
            .request
            .unwrap()
            .http
            .unwrap();
        assert_eq!(
            (
                &http.body[..],
                &http.raw_body[..],
                http.headers[PARTIAL_BODY].as_str(),
                http.size
            ),
            want,
            "{settings:?}, the client's own partial-body header never told"
        );
    }
    // Without a body to tell: no body, no partial-body header.
    let check = Check {
        policy: &grpc,
        context_extensions: HashMap::new(),
        head: &head,
        client: &subject,
        metadata: &metadata,
        body: None,
    };
    let http = decode_check(&check_call(service, &check).unwrap())
        .attributes
        .unwrap()
        .request
        .unwrap()
        .http
        .unwrap();
    assert!(http.body.is_empty() && !http.headers.contains_key(PARTIAL_BODY));

    // An HTTP service gets the body itself, and the partial-body header only when its
    // allow list names it.
    let mut policy = http_policy(http_service());
    let AuthzService::Http(service) = policy.service.clone() else {
        unreachable!()
    };
    for (allowed, partial) in [("x-", Some("true")), ("x-user", None)] {
        policy.allowed_headers = Some(vec![StringMatcher {
            pattern: StringPattern::Prefix(allowed.into()),
            ignore_case: false,
        }]);
        let check = Check {
            policy: &policy,
            context_extensions: HashMap::new(),
            head: &head,
            client: &subject,
            metadata: &metadata,
            body: Some((&whole, settings(5, false))),
        };
        let req = http_request(&service, &check).unwrap();
        assert_eq!(&req.body()[..], b"hello");
        assert_eq!(req.headers()["content-length"], "5");
        assert_eq!(
            req.headers().get(PARTIAL_BODY).map(|v| v.to_str().unwrap()),
            partial,
            "allowed: {allowed}"
        );
    }
}

fn http_reply(status: u16, list: &[(&str, &str)], body: &'static str) -> Reply {
    Reply {
        status: StatusCode::from_u16(status).unwrap(),
        headers: headers(list),
        body: Bytes::from_static(body.as_bytes()),
        trailers: None,
    }
}

#[test]
fn an_http_service_answer() {
    let service = http_service();
    let ok = http_reply(
        200,
        &[
            ("x-user", "alice"),
            ("x-group", "admins"),
            ("set-cookie", "s=1"),
            ("x-other", "no"),
            (HEADERS_TO_REMOVE, "authorization, x-secret"),
        ],
        "",
    );
    let Verdict::Ok(a) = http_verdict(&service, ok) else {
        panic!()
    };
    assert_eq!(
        a.request,
        [
            edit("x-user", "alice", Action::Set),
            edit("x-group", "admins", Action::Add)
        ]
    );
    assert_eq!(a.response, [edit("set-cookie", "s=1", Action::Add)]);
    assert_eq!(
        a.remove,
        [header::AUTHORIZATION, HeaderName::from_static("x-secret")]
    );

    // Denied: every header but host (and the answer's own framing) goes to the client.
    let denied = http_reply(
        403,
        &[
            ("host", "authz"),
            ("content-length", "9"),
            ("content-type", "text/html"),
            ("x-reason", "policy"),
        ],
        "forbidden",
    );
    assert_eq!(
        http_verdict(&service, denied),
        Verdict::Denied {
            status: 403,
            headers: vec![
                (header::CONTENT_TYPE, HeaderValue::from_static("text/html")),
                (
                    HeaderName::from_static("x-reason"),
                    HeaderValue::from_static("policy")
                ),
            ],
            body: Bytes::from_static(b"forbidden"),
        }
    );
    // With `allowed_client_headers`: those, and always `www-authenticate` and `location`.
    let listed = HttpAuthzService {
        client: Some(vec![exact("x-reason")]),
        ..http_service()
    };
    let denied = http_reply(
        401,
        &[
            ("www-authenticate", "Basic"),
            ("x-reason", "login"),
            ("x-other", "no"),
        ],
        "",
    );
    let Verdict::Denied { headers, .. } = http_verdict(&listed, denied) else {
        panic!()
    };
    let names: Vec<_> = headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["www-authenticate", "x-reason"]);
    // A 5xx is an error, not a denial.
    assert!(matches!(
        http_verdict(&service, http_reply(503, &[], "down")),
        Verdict::Error(_)
    ));
}

#[test]
fn query_rewrites() {
    assert_eq!(
        rewrite_query("/p?a=1&token=x&b=2", &[], &["token".into()]),
        "/p?a=1&b=2"
    );
    assert_eq!(rewrite_query("/p?token=x", &[], &["token".into()]), "/p");
    assert_eq!(
        rewrite_query(
            "/p?a=1&from=x&from=y&flag",
            &[("from".into(), "authz".into()), ("new".into(), "1".into())],
            &[]
        ),
        "/p?a=1&from=authz&flag&new=1",
        "the first of a name replaced, the others dropped, a new one at the end"
    );
    assert_eq!(
        rewrite_query("/p", &[("a".into(), "1".into())], &[]),
        "/p?a=1"
    );
}

#[test]
fn metadata_matchers() {
    let m = |value, invert| MetadataMatcher {
        filter: "envoy.filters.http.rbac".into(),
        path: vec!["k".into()],
        value,
        invert,
    };
    let prefix = MetadataValueMatch::String(StringMatcher {
        pattern: StringPattern::Prefix("istio-ext-authz".into()),
        ignore_case: false,
    });
    assert!(m(prefix.clone(), false).matches(Some("istio-ext-authz-ns[a]")));
    assert!(!m(prefix.clone(), false).matches(Some("other")));
    assert!(!m(prefix.clone(), false).matches(None));
    assert!(m(prefix, true).matches(None));
    assert!(m(MetadataValueMatch::Present(true), false).matches(Some("")));
    assert!(!m(MetadataValueMatch::Present(false), false).matches(None));
    assert!(!m(MetadataValueMatch::OtherType, false).matches(Some("1")));
}

/// A service that answers every call with a canned reply (or fails, or never answers),
/// keeping the requests.
struct Canned {
    reply: Option<fn() -> Result<Reply, String>>,
    requests: Mutex<Vec<Request<Bytes>>>,
}

impl Services for Canned {
    fn send<'a>(
        &'a self,
        _: &'a str,
        req: Request<Bytes>,
        _: bool,
    ) -> crate::services::Pending<'a, Result<Reply, String>> {
        self.requests.lock().unwrap().push(req);
        Box::pin(async move {
            match self.reply {
                Some(f) => f(),
                None => std::future::pending().await,
            }
        })
    }

    fn send_detached(&self, _: &str, _: Request<Bytes>, _: Duration) {}

    fn open<'a>(
        &'a self,
        _: &'a str,
    ) -> crate::services::Pending<'a, Result<crate::services::Opener, String>> {
        Box::pin(async { Err("no streams in unit tests".to_owned()) })
    }
}

/// Runs the filter for `head` as [`client`] sends it, with no context extensions,
/// metadata or body.
async fn run_check(
    services: &dyn Services,
    policy: &ExtAuthzPolicy,
    head: &RequestHead<'_>,
    grpc: bool,
    metrics: &ProxyMetrics,
) -> Result<Option<Allowed>, Answer> {
    let subject = client();
    let metadata = DynamicMetadata::default();
    let check = Check {
        policy,
        context_extensions: HashMap::new(),
        head,
        client: &subject,
        metadata: &metadata,
        body: None,
    };
    run(services, check, grpc, metrics).await
}

#[tokio::test]
async fn the_filter_follows_the_services_word() {
    let metrics = ProxyMetrics::unregistered();
    let h = headers(&[("x-user", "alice")]);
    let head = head("/", &h);
    let run_with = |policy: Arc<ExtAuthzPolicy>, services: Arc<Canned>, grpc: bool| {
        let (head, metrics) = (&head, &metrics);
        async move { run_check(&*services, &policy, head, grpc, metrics).await }
    };
    let canned = |reply| {
        Arc::new(Canned {
            reply,
            requests: Mutex::default(),
        })
    };

    // Denied by an HTTP service: its status, body and headers, flag UAEX.
    let policy = Arc::new(http_policy(http_service()));
    let services = canned(Some(|| {
        Ok(http_reply(403, &[("x-reason", "policy")], "no entry"))
    }));
    let Err((resp, flags)) = run_with(policy.clone(), services.clone(), false).await else {
        panic!("not denied")
    };
    assert_eq!((resp.status().as_u16(), flags), (403, "UAEX"));
    assert_eq!(resp.headers()["x-reason"], "policy");
    assert_eq!(resp.headers()["content-type"], "text/plain");
    // A gRPC client gets the mapped status in a trailers-only answer.
    let Err((resp, _)) = run_with(policy.clone(), services, true).await else {
        panic!()
    };
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()["grpc-status"],
        "7",
        "403 is PERMISSION_DENIED"
    );

    // No answer in time: status_on_error, or through with the header when failing open.
    let slow = Arc::new(ExtAuthzPolicy {
        timeout: Duration::from_millis(20),
        status_on_error: 500,
        ..http_policy(http_service())
    });
    let Err((resp, flags)) = run_with(slow.clone(), canned(None), false).await else {
        panic!()
    };
    assert_eq!((resp.status().as_u16(), flags), (500, "UAEX"));
    let open = Arc::new(ExtAuthzPolicy {
        failure_mode_allow: true,
        failure_mode_allow_header_add: true,
        clear_route_cache: false,
        ..(*slow).clone()
    });
    let Ok(Some(allowed)) = run_with(open, canned(None), false).await else {
        panic!("not let through")
    };
    assert_eq!(
        allowed.request,
        [edit(
            "x-envoy-auth-failure-mode-allowed",
            "true",
            Action::Add
        )]
    );

    // Off by its metadata: not asked; with deny_at_disable, answered status_on_error.
    let gated = Arc::new(ExtAuthzPolicy {
        filter_enabled_metadata: Some(MetadataMatcher {
            filter: "envoy.filters.http.rbac".into(),
            path: vec!["istio_ext_authz_shadow_effective_policy_id".into()],
            value: MetadataValueMatch::Present(true),
            invert: false,
        }),
        ..http_policy(http_service())
    });
    let services = canned(Some(|| Ok(http_reply(200, &[], ""))));
    assert!(matches!(
        run_with(gated.clone(), services.clone(), false).await,
        Ok(None)
    ));
    assert!(services.requests.lock().unwrap().is_empty(), "not asked");
    let denying = Arc::new(ExtAuthzPolicy {
        deny_at_disable: true,
        ..(*gated).clone()
    });
    let Err((resp, _)) = run_with(denying, services.clone(), false).await else {
        panic!()
    };
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        metrics_value(&metrics),
        [
            ("denied", 2),
            ("disabled", 2),
            ("error", 1),
            ("failure_mode_allowed", 1)
        ]
    );
}

fn metrics_value(metrics: &ProxyMetrics) -> Vec<(&'static str, u64)> {
    let mut out: Vec<_> = [
        "ok",
        "denied",
        "error",
        "failure_mode_allowed",
        "invalid",
        "disabled",
    ]
    .into_iter()
    .map(|outcome| {
        let n = metrics
            .ext_authz
            .get_or_create(&crate::metrics::RateLimitLabels {
                stat_prefix: crate::metrics::StatPrefix("t".into()),
                outcome,
            })
            .get();
        (outcome, n)
    })
    .filter(|(_, n)| *n > 0)
    .collect();
    out.sort();
    out
}
