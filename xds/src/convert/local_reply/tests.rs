//! `local_reply_config` from Envoy YAML (the file source's path, which also makes the
//! protobuf the xDS path decodes), and its rejections.

use myelin_proxy::model::listener as ml;
use myelin_proxy::model::local_reply as lr;
use xds_api::pb::envoy::config::listener::v3 as lpb;

use super::super::listener;
use super::super::test_util::{hcm_listener, messages};

/// A listener whose connection manager has `config` (YAML keys, unindented) as its
/// `local_reply_config`.
fn with_local_reply(config: &str) -> lpb::Listener {
    let config: String = config.lines().map(|l| format!("  {l}\n")).collect();
    hcm_listener("", &format!("local_reply_config:\n{config}"))
}

fn config_of(l: &myelin_proxy::model::Listener) -> &lr::LocalReplyConfig {
    match &l.filter_chains[0].filter {
        ml::NetworkFilter::HttpConnectionManager(h) => h.local_reply.as_deref().unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn envoys_documented_example() {
    // The example of Envoy's "Local reply modification" page, in substance.
    let l = listener(&with_local_reply(
        r#"
mappers:
- filter:
    status_code_filter:
      comparison: {op: EQ, value: {default_value: 400, runtime_key: key_b}}
  headers_to_add:
  - header: {key: foo, value: bar}
    append_action: OVERWRITE_IF_EXISTS_OR_ADD
  status_code: 401
  body: {inline_string: "not allowed"}
- filter:
    and_filter:
      filters:
      - header_filter: {header: {name: test-header, present_match: true}}
      - response_flag_filter: {flags: [UH, UF]}
  body_format_override:
    json_format:
      level: TRACE
      user_agent: "%REQ(USER-AGENT)%"
      response_body: "%LOCAL_REPLY_BODY%"
      code: "%RESPONSE_CODE%"
      nested: {flags: "%RESPONSE_FLAGS%", n: 3}
body_format:
  text_format: "%LOCAL_REPLY_BODY% %REQ(:path)%\n"
  content_type: text/html; charset=UTF-8
"#,
    ))
    .unwrap();
    let c = config_of(&l);
    assert_eq!(c.mappers.len(), 2);
    let m = &c.mappers[0];
    assert_eq!(
        m.filter,
        lr::ReplyFilter::Status(lr::Comparison {
            op: lr::CmpOp::Eq,
            value: 400
        })
    );
    assert_eq!(m.status_code, Some(401));
    assert_eq!(m.body.as_deref(), Some("not allowed"));
    assert_eq!(m.headers_to_add[0].name, "foo");
    let m = &c.mappers[1];
    let lr::ReplyFilter::And(fs) = &m.filter else {
        panic!("{:?}", m.filter)
    };
    assert!(matches!(fs[0], lr::ReplyFilter::Header(_)));
    assert_eq!(
        fs[1],
        lr::ReplyFilter::ResponseFlags(vec!["UH".into(), "UF".into()])
    );
    let f = m.body_format_override.as_ref().unwrap();
    let lr::Format::Json(fields) = &f.format else {
        panic!("{:?}", f.format)
    };
    let keys: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        ["code", "level", "nested", "response_body", "user_agent"]
    );
    assert!(c.reads_request_headers());
    let b = c.body_format.as_ref().unwrap();
    assert_eq!(b.content_type.as_deref(), Some("text/html; charset=UTF-8"));
    let lr::Format::Text(t) = &b.format else {
        panic!()
    };
    assert_eq!(t.to_string(), "%LOCAL_REPLY_BODY% %REQ(:path)%\n");
}

#[test]
fn bad_configs_are_rejected_by_path() {
    let at = "filter_chains[0].filters[0].typed_config.local_reply_config";
    for (config, want) in [
        (
            "mappers: [{status_code: 700, filter: {not_health_check_filter: {}}}]",
            format!("{at}.mappers[0].status_code: 700 is not in 200..=599"),
        ),
        (
            "mappers: [{status_code: 500}]",
            format!("{at}.mappers[0].filter: required but not set"),
        ),
        (
            "mappers: [{filter: {runtime_filter: {runtime_key: k}}}]",
            format!("{at}.mappers[0].filter.runtime_filter: not supported"),
        ),
        (
            "mappers: [{filter: {response_flag_filter: {flags: [XX]}}}]",
            format!("{at}.mappers[0].filter.response_flag_filter.flags[0]: \"XX\" is not a response flag"),
        ),
        (
            "body_format: {text_format: \"%UPSTREAM_HOST%\"}",
            format!("{at}.body_format.text_format: command operator `%UPSTREAM_HOST%` is not supported in local replies (supported: LOCAL_REPLY_BODY, RESPONSE_CODE, RESPONSE_FLAGS, PROTOCOL, START_TIME, DURATION, REQ(...), RESP(...))"),
        ),
        (
            "body_format: {json_format: {a: {b: \"%BAD\"}}}",
            format!("{at}.body_format.json_format.a.b: a `%` without its closing `%` in \"%BAD\""),
        ),
        (
            "mappers: [{filter: {not_health_check_filter: {}}, body: {filename: /etc/x}}]",
            format!("{at}.mappers[0].body.filename: not supported"),
        ),
    ] {
        let e = messages(listener(&with_local_reply(config)));
        assert_eq!(e, [want], "{config}");
    }
}
