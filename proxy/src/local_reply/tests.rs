use std::time::Duration;

use futures_util::FutureExt;
use http::{HeaderMap, HeaderValue, Response};
use http_body_util::BodyExt;

use super::*;
use crate::model::local_reply::{BodyFormat, CmpOp, Comparison, Format, JsonValue, ResponseMapper};
use crate::model::route::{AppendAction, HeaderValueOption};

fn body_of(resp: Response<ProxyBody>) -> String {
    // Local replies' bodies are whole: ready at once.
    let bytes = resp
        .into_body()
        .collect()
        .now_or_never()
        .expect("a whole body")
        .unwrap()
        .to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn facts(flags: &'static str, grpc: bool) -> Facts<'static> {
    Facts {
        flags,
        grpc,
        request: None,
        protocol: "HTTP/1.1",
        elapsed: Duration::from_millis(12),
    }
}

fn reply(code: u16, body: &str) -> Response<ProxyBody> {
    mark(
        crate::http::text_response(code, body.to_owned()),
        code,
        body,
        None,
    )
}

fn text(t: &str) -> Option<BodyFormat> {
    Some(BodyFormat {
        format: Format::Text(Template::parse(t).unwrap()),
        content_type: None,
        omit_empty_values: false,
    })
}

fn mapper(filter: ReplyFilter) -> ResponseMapper {
    ResponseMapper {
        filter,
        status_code: None,
        body: None,
        body_format_override: None,
        headers_to_add: vec![],
    }
}

#[test]
fn the_first_matching_mapper_rewrites_status_body_and_headers() {
    let cfg = LocalReplyConfig {
        mappers: vec![
            ResponseMapper {
                status_code: Some(401),
                body: Some("no".into()),
                ..mapper(ReplyFilter::Status(Comparison {
                    op: CmpOp::Eq,
                    value: 403,
                }))
            },
            ResponseMapper {
                status_code: Some(502),
                headers_to_add: vec![HeaderValueOption {
                    name: "x-mapped".into(),
                    value: "1".into(),
                    append_action: AppendAction::OverwriteIfExistsOrAdd,
                    keep_empty_value: false,
                }],
                ..mapper(ReplyFilter::ResponseFlags(vec!["UF".into(), "UH".into()]))
            },
        ],
        body_format: text("%RESPONSE_CODE% %RESPONSE_FLAGS%: %LOCAL_REPLY_BODY%"),
    };
    let out = rewrite(&cfg, reply(503, "no healthy upstream"), &facts("UH", false));
    assert_eq!(out.status(), 502);
    assert_eq!(out.headers()["x-mapped"], "1");
    assert_eq!(out.headers()["content-type"], "text/plain");
    assert_eq!(body_of(out), "502 UH: no healthy upstream");

    // No mapper matches: the format alone.
    let out = rewrite(&cfg, reply(404, "not found"), &facts("NR", false));
    assert_eq!(out.status(), 404);
    assert_eq!(body_of(out), "404 NR: not found");

    // A response the proxy did not make is never touched.
    let upstream = crate::http::text_response(503, "from upstream".into());
    let out = rewrite(&cfg, upstream, &facts("-", false));
    assert_eq!(body_of(out), "from upstream");
}

#[test]
fn json_bodies_keep_numbers_and_can_omit_empty_values() {
    let json = |omit| LocalReplyConfig {
        mappers: vec![],
        body_format: Some(BodyFormat {
            format: Format::Json(vec![
                (
                    "code".into(),
                    JsonValue::Template(Template::parse("%RESPONSE_CODE%").unwrap()),
                ),
                (
                    "message".into(),
                    JsonValue::Template(Template::parse("%LOCAL_REPLY_BODY%").unwrap()),
                ),
                (
                    "path".into(),
                    JsonValue::Template(Template::parse("%REQ(:path)%").unwrap()),
                ),
                (
                    "service".into(),
                    JsonValue::Literal(serde_json::json!("web")),
                ),
            ]),
            content_type: None,
            omit_empty_values: omit,
        }),
    };
    let out = rewrite(
        &json(false),
        reply(503, "upstream connect error"),
        &facts("UF", false),
    );
    assert_eq!(out.headers()["content-type"], "application/json");
    assert_eq!(
        body_of(out),
        "{\"code\":503,\"message\":\"upstream connect error\",\"path\":null,\"service\":\"web\"}\n"
    );
    let out = rewrite(&json(true), reply(503, "x"), &facts("UF", false));
    assert_eq!(
        body_of(out),
        "{\"code\":503,\"message\":\"x\",\"service\":\"web\"}\n"
    );
}

#[test]
fn grpc_replies_are_made_again_with_the_new_body() {
    let cfg = LocalReplyConfig {
        mappers: vec![ResponseMapper {
            body: Some("try later".into()),
            ..mapper(ReplyFilter::GrpcStatus {
                statuses: vec![14],
                exclude: false,
            })
        }],
        body_format: None,
    };
    let original = crate::error::grpc_local_reply(14, "no healthy upstream");
    let out = rewrite(
        &cfg,
        mark(original, 503, "no healthy upstream", None),
        &facts("UH", true),
    );
    assert_eq!(out.status(), 200);
    assert_eq!(out.headers()["grpc-status"], "14");
    assert_eq!(out.headers()["grpc-message"], "try later");
    // A mapped status changes the gRPC status; one the reply named itself stays otherwise.
    let cfg = LocalReplyConfig {
        mappers: vec![ResponseMapper {
            status_code: Some(404),
            ..mapper(ReplyFilter::NotHealthCheck)
        }],
        body_format: None,
    };
    let original = crate::error::grpc_local_reply(4, "timeout");
    let out = rewrite(
        &cfg,
        mark(original, 504, "timeout", Some(4)),
        &facts("UT", true),
    );
    assert_eq!(out.headers()["grpc-status"], "12");
}

#[test]
fn request_headers_and_reply_headers_in_formats() {
    let mut h = HeaderMap::new();
    h.insert("x-request-id", HeaderValue::from_static("abcdef123456"));
    let head = RequestHead {
        method: "GET",
        authority: "web",
        path: "/a",
        scheme: "http",
        headers: &h,
    };
    let f = Facts {
        request: Some(head),
        ..facts("-", false)
    };
    let cfg = LocalReplyConfig {
        mappers: vec![],
        body_format: text(
            "%REQ(x-trace?x-request-id):6% %REQ(:method)% %RESP(content-type)% %REQ(x-none)%",
        ),
    };
    assert_eq!(
        body_of(rewrite(&cfg, reply(404, ""), &f)),
        "abcdef GET text/plain -"
    );
    let present = crate::model::route::HeaderMatcher {
        name: "x-request-id".into(),
        rule: crate::model::route::HeaderRule::Present(true),
        invert: false,
        treat_missing_as_empty: false,
    };
    let cfg = LocalReplyConfig {
        mappers: vec![ResponseMapper {
            status_code: Some(418),
            ..mapper(ReplyFilter::Header(present))
        }],
        body_format: None,
    };
    assert_eq!(rewrite(&cfg, reply(404, ""), &f).status(), 418);
    // Without the request's head (the config did not keep it), a header filter fails.
    assert_eq!(
        rewrite(&cfg, reply(404, ""), &facts("-", false)).status(),
        404
    );
}

#[test]
fn start_time_is_rfc3339_with_milliseconds() {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_928_800_123);
    assert_eq!(rfc3339_millis(t), "2025-12-05T10:00:00.123Z");
}
