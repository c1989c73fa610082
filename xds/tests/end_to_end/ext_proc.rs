//! Envoy's external processing filter (`envoy.filters.http.ext_proc`) end to end: listeners
//! from xDS with the filter as Envoy Gateway writes it for an `EnvoyExtensionPolicy`, a
//! real processor (tonic's server of `xds-api`'s `envoy.service.ext_proc.v3
//! .ExternalProcessor`, one bidirectional stream per request) behind a cluster of its own,
//! acting on what each request's headers ask of it and recording every message.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::*;
use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use hyper::Request as HyperRequest;
use hyper_util::rt::TokioIo;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use xds_api::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use xds_api::pb::envoy::config::listener::v3::Listener;
use xds_api::pb::envoy::config::route::v3::RouteConfiguration;
use xds_api::pb::envoy::r#type::v3::HttpStatus;
use xds_api::pb::envoy::service::ext_proc::v3::body_mutation::Mutation;
use xds_api::pb::envoy::service::ext_proc::v3::external_processor_server::{
    ExternalProcessor, ExternalProcessorServer,
};
use xds_api::pb::envoy::service::ext_proc::v3::processing_request::Request as Phase;
use xds_api::pb::envoy::service::ext_proc::v3::processing_response::Response as Answered;
use xds_api::pb::envoy::service::ext_proc::v3::{
    BodyMutation, BodyResponse, CommonResponse, HeaderMutation, HeadersResponse, HttpBody,
    HttpHeaders, ImmediateResponse, ProcessingRequest, ProcessingResponse,
};

/// The filter as Envoy Gateway writes it: both heads processed, 0.3 s per message.
const PORT: u16 = 18631;
/// `failure_mode_allow` (Envoy Gateway's `failOpen`), request headers only.
const FAIL_OPEN_PORT: u16 = 18632;
/// Both bodies buffered (Envoy Gateway's `processingMode` with `body: Buffered`).
const BODY_PORT: u16 = 18633;
const FILTER: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor";
const PER_ROUTE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute";
const NAME: &str = "envoy.filters.http.ext_proc/envoyextensionpolicy/default/policy/extproc/0";

/// One stream as the processor saw it: the call's metadata and each message's phase with
/// the headers it carried (and whether they ended the stream).
#[derive(Debug, Clone, Default)]
struct Seen {
    metadata: HashMap<String, String>,
    messages: Vec<(&'static str, HashMap<String, String>, bool)>,
}

/// The processor: acts on the request's `x-action`, records every stream.
#[derive(Default)]
struct Processor {
    streams: Arc<Mutex<Vec<Seen>>>,
}

fn option(key: &str, value: &str, append_action: i32) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            raw_value: value.as_bytes().to_vec(),
            ..Default::default()
        }),
        append_action,
        ..Default::default()
    }
}

fn headers_of(h: &HttpHeaders) -> HashMap<String, String> {
    h.headers
        .iter()
        .flat_map(|m| &m.headers)
        .map(|v| {
            (
                v.key.clone(),
                String::from_utf8_lossy(&v.raw_value).into_owned(),
            )
        })
        .collect()
}

fn body_of(b: &HttpBody) -> HashMap<String, String> {
    HashMap::from([("body".into(), String::from_utf8_lossy(&b.body).into_owned())])
}

fn continue_with(mutation: HeaderMutation, clear_route_cache: bool) -> HeadersResponse {
    HeadersResponse {
        response: Some(CommonResponse {
            header_mutation: Some(mutation),
            clear_route_cache,
            ..Default::default()
        }),
    }
}

type Answers = Pin<Box<dyn Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalProcessor for Processor {
    type ProcessStream = Answers;

    async fn process(
        &self,
        req: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Answers>, Status> {
        let metadata = req
            .metadata()
            .iter()
            .filter_map(|kv| match kv {
                tonic::metadata::KeyAndValueRef::Ascii(k, v) => {
                    Some((k.to_string(), v.to_str().ok()?.to_owned()))
                }
                _ => None,
            })
            .collect();
        let mut incoming = req.into_inner();
        let streams = self.streams.clone();
        let index = {
            let mut s = streams.lock().unwrap();
            s.push(Seen {
                metadata,
                ..Seen::default()
            });
            s.len() - 1
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut action = String::new();
            while let Some(Ok(m)) = incoming.next().await {
                // A body is recorded as a `body` "header".
                let (phase, headers, eos) = match &m.request {
                    Some(Phase::RequestHeaders(h)) => {
                        ("request_headers", headers_of(h), h.end_of_stream)
                    }
                    Some(Phase::ResponseHeaders(h)) => {
                        ("response_headers", headers_of(h), h.end_of_stream)
                    }
                    Some(Phase::RequestBody(b)) => ("request_body", body_of(b), b.end_of_stream),
                    Some(Phase::ResponseBody(b)) => ("response_body", body_of(b), b.end_of_stream),
                    _ => ("other", HashMap::new(), false),
                };
                streams.lock().unwrap()[index]
                    .messages
                    .push((phase, headers.clone(), eos));
                let answer = match phase {
                    "request_headers" => {
                        action = headers.get("x-action").cloned().unwrap_or_default();
                        match action.as_str() {
                            "deny" => Answered::ImmediateResponse(ImmediateResponse {
                                status: Some(HttpStatus { code: 403 }),
                                headers: Some(HeaderMutation {
                                    set_headers: vec![option("x-why", "processor", 2)],
                                    ..Default::default()
                                }),
                                body: b"denied by the processor".to_vec(),
                                ..Default::default()
                            }),
                            "slow" => {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                                Answered::RequestHeaders(HeadersResponse::default())
                            }
                            // Ends the call without answering: processing is over.
                            "close" => return,
                            "reroute" => Answered::RequestHeaders(continue_with(
                                HeaderMutation {
                                    set_headers: vec![option("x-route", "b", 2)],
                                    ..Default::default()
                                },
                                true,
                            )),
                            _ => {
                                let user = headers.get("x-user").cloned().unwrap_or_default();
                                let mut set = vec![
                                    option("x-added", "yes", 0),
                                    option("x-user", &format!("processed-{user}"), 2),
                                    // Refused by the default mutation rules.
                                    option("host", "elsewhere", 2),
                                ];
                                if let Some(p) = headers.get("x-rewrite") {
                                    set.push(option(":path", p, 2));
                                }
                                Answered::RequestHeaders(continue_with(
                                    HeaderMutation {
                                        set_headers: set,
                                        remove_headers: vec!["x-secret".into()],
                                    },
                                    false,
                                ))
                            }
                        }
                    }
                    // "upper": the request's body upper-cased (its length kept), a header
                    // added with it; the response's body replaced (its length removed
                    // with its head).
                    "request_body" if action == "deny-body" => {
                        Answered::ImmediateResponse(ImmediateResponse {
                            status: Some(HttpStatus { code: 403 }),
                            body: b"denied by the processor".to_vec(),
                            ..Default::default()
                        })
                    }
                    "request_body" => {
                        // The body itself when short, else its length.
                        let body = &headers["body"];
                        let told = match body.len() {
                            0..=64 => body.clone(),
                            n => format!("{n} bytes"),
                        };
                        let mut answer = continue_with(
                            HeaderMutation {
                                set_headers: vec![option("x-body-told", &told, 2)],
                                ..Default::default()
                            },
                            false,
                        );
                        if action == "upper" {
                            answer.response.as_mut().unwrap().body_mutation = Some(BodyMutation {
                                mutation: Some(Mutation::Body(
                                    headers["body"].to_uppercase().into_bytes(),
                                )),
                            });
                        }
                        Answered::RequestBody(BodyResponse {
                            response: answer.response,
                        })
                    }
                    "response_body" => {
                        let mut answer = continue_with(
                            HeaderMutation {
                                set_headers: vec![option("x-body-seen", "yes", 2)],
                                ..Default::default()
                            },
                            false,
                        );
                        if action == "upper" {
                            answer.response.as_mut().unwrap().body_mutation = Some(BodyMutation {
                                mutation: Some(Mutation::Body(
                                    b"replaced by the processor".to_vec(),
                                )),
                            });
                        }
                        Answered::ResponseBody(BodyResponse {
                            response: answer.response,
                        })
                    }
                    _ => {
                        let mut set = vec![option("x-proc-response", "seen", 0)];
                        if action == "created" {
                            set.push(option(":status", "201", 2));
                        }
                        let mut remove = vec!["x-upstream".to_owned()];
                        if action == "upper" {
                            remove.push("content-length".into());
                        }
                        Answered::ResponseHeaders(continue_with(
                            HeaderMutation {
                                set_headers: set,
                                remove_headers: remove,
                            },
                            false,
                        ))
                    }
                };
                let answer = ProcessingResponse {
                    response: Some(answer),
                    ..Default::default()
                };
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        let answers = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(answers)))
    }
}

async fn processor(p: Arc<Processor>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(ExternalProcessorServer::from_arc(p))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    addr
}

fn listeners() -> Vec<Listener> {
    vec![
        filtered_listener(
            "proc",
            PORT,
            &format!(
                r#"
- name: {NAME}
  typed_config:
    "@type": {FILTER}
    grpc_service:
      envoy_grpc: {{cluster_name: proc, authority: "proc.default:9000"}}
      timeout: 10s
      initial_metadata: [{{key: x-tenant, value: a}}]
    message_timeout: 0.3s
    stat_prefix: gw
"#
            ),
        ),
        filtered_listener(
            "fail-open",
            FAIL_OPEN_PORT,
            &format!(
                r#"
- name: {NAME}
  typed_config:
    "@type": {FILTER}
    grpc_service: {{envoy_grpc: {{cluster_name: proc}}}}
    failure_mode_allow: true
    message_timeout: 0.3s
    processing_mode: {{request_header_mode: SEND, response_header_mode: SKIP}}
    stat_prefix: open
"#
            ),
        ),
        filtered_listener(
            "bodies",
            BODY_PORT,
            &format!(
                r#"
- name: {NAME}
  typed_config:
    "@type": {FILTER}
    grpc_service: {{envoy_grpc: {{cluster_name: proc}}}}
    message_timeout: 0.3s
    processing_mode: {{request_body_mode: BUFFERED, response_body_mode: BUFFERED}}
    stat_prefix: bodies
"#
            ),
        ),
    ]
}

fn routes() -> RouteConfiguration {
    yaml(&format!(
        r#"
name: r
virtual_hosts:
- name: all
  domains: ["*"]
  routes:
  - match: {{prefix: /, headers: [{{name: x-route, string_match: {{exact: b}}}}]}}
    direct_response: {{status: 200, body: {{inline_string: "route b"}}}}
  - match: {{prefix: /off}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {NAME}: {{"@type": {PER_ROUTE}, disabled: true}}
  - match: {{prefix: /responses-only}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {NAME}:
        "@type": {PER_ROUTE}
        overrides:
          processing_mode: {{request_header_mode: SKIP}}
          grpc_initial_metadata: [{{key: x-tenant, value: b}}]
  - match: {{prefix: /partial}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {NAME}:
        "@type": {PER_ROUTE}
        overrides:
          processing_mode:
            request_body_mode: BUFFERED_PARTIAL
            response_body_mode: BUFFERED_PARTIAL
  - match: {{prefix: /streamed}}
    route: {{cluster: web}}
    typed_per_filter_config:
      {NAME}:
        "@type": {PER_ROUTE}
        overrides:
          processing_mode: {{request_body_mode: STREAMED, response_body_mode: STREAMED}}
  - match: {{prefix: /}}
    route: {{cluster: web}}
"#
    ))
}

fn outcome(node: &Node, prefix: &str, outcome: &str) -> f64 {
    node.metric(&format!(
        "myelin_proxy_ext_proc_total{{stat_prefix=\"{prefix}\",outcome=\"{outcome}\"}}"
    ))
}

/// A node with the three listeners, the echo upstream (`hits` counts its requests) and
/// the processor (`p`); the control plane lives as long as the bed.
struct Bed {
    hits: Arc<AtomicUsize>,
    p: Arc<Processor>,
    _cp: ControlPlane,
    node: Node,
}

async fn bed() -> Bed {
    let hits = Arc::new(AtomicUsize::new(0));
    let web = echo_upstream(hits.clone()).await;
    let p = Arc::new(Processor::default());
    let proc_addr = processor(p.clone()).await;
    let cp = ControlPlane::start().await;
    let ls = listeners();
    cp.update(|b| {
        for l in &ls {
            set(b, &l.name, l);
        }
        set(b, "r", &routes());
        set(b, "web", &eds_cluster("web"));
        set(b, "web", &endpoints("web", &[web]));
        set(b, "proc", &h2_cluster("proc"));
        set(b, "proc", &endpoints("proc", &[proc_addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (url, names) in [
        (type_url::LISTENER, &["proc", "fail-open", "bodies"][..]),
        (type_url::ROUTE, &["r"]),
        (type_url::ENDPOINT, &["web", "proc"]),
    ] {
        node.wait_applied(url, names, &cp.version(url)).await;
    }
    Bed {
        hits,
        p,
        _cp: cp,
        node,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_sees_and_changes_both_heads_over_xds() {
    let Bed {
        hits, p, _cp, node, ..
    } = bed().await;
    let streams = || p.streams.lock().unwrap().clone();
    let get = |port: u16, path: &'static str, headers: &'static [(&'static str, &'static str)]| {
        let node = &node;
        async move { request(node, port, "GET", path, headers).await }
    };

    // Both heads: the request's changed on its way up (set, overwritten, removed, a new
    // path; `host` refused by the default rules), the response's on its way back.
    let a = get(
        PORT,
        "/shop?x=1",
        &[
            ("x-user", "alice"),
            ("x-secret", "s3cr3t"),
            ("x-rewrite", "/rewritten?y=2"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let mut lines = a.body.lines();
    assert_eq!(lines.next(), Some("/rewritten?y=2"));
    let seen: Vec<&str> = lines.collect();
    assert!(seen.contains(&"x-added: yes"), "{seen:?}");
    assert!(seen.contains(&"x-user: processed-alice"), "{seen:?}");
    assert!(!seen.iter().any(|l| l.starts_with("x-secret")), "{seen:?}");
    assert!(!seen.contains(&"host: elsewhere"), "{seen:?}");
    assert_eq!(a.header("x-proc-response"), Some("seen"));
    assert_eq!(a.header("x-upstream"), None);
    // One stream for the request, both messages on it, with the pseudo-headers.
    let s = streams();
    assert_eq!(s.len(), 1);
    let first = &s[0];
    assert_eq!(
        first.metadata.get("x-tenant").map(String::as_str),
        Some("a")
    );
    assert_eq!(first.messages.len(), 2);
    let (phase, h, eos) = &first.messages[0];
    assert_eq!((*phase, *eos), ("request_headers", true));
    assert_eq!(h.get(":path").map(String::as_str), Some("/shop?x=1"));
    assert_eq!(h.get(":method").map(String::as_str), Some("GET"));
    assert_eq!(h.get("x-secret").map(String::as_str), Some("s3cr3t"));
    let (phase, h, eos) = &first.messages[1];
    assert_eq!((*phase, *eos), ("response_headers", false));
    assert_eq!(h.get(":status").map(String::as_str), Some("200"));
    assert_eq!(h.get("x-upstream").map(String::as_str), Some("echo"));

    // The response's status changed.
    let a = get(PORT, "/made", &[("x-action", "created")]).await;
    assert_eq!(a.status, 201);

    // An immediate response: the processor's status, header and body; no upstream hit.
    let before = hits.load(Ordering::Relaxed);
    let a = get(PORT, "/shop", &[("x-action", "deny")]).await;
    assert_eq!(a.status, 403);
    assert_eq!(a.body, "denied by the processor");
    assert_eq!(a.header("x-why"), Some("processor"));
    assert_eq!(hits.load(Ordering::Relaxed), before);

    // The route chosen again with the processor's header.
    let a = get(PORT, "/shop", &[("x-action", "reroute")]).await;
    assert_eq!((a.status.as_u16(), a.body.as_str()), (200, "route b"));

    // Too slow (1 s against 0.3 s): a 504, or with failure_mode_allow the request goes on.
    let a = get(PORT, "/shop", &[("x-action", "slow")]).await;
    assert_eq!(a.status, 504);
    assert!(a.took < Duration::from_millis(900), "{:?}", a.took);
    let a = get(
        FAIL_OPEN_PORT,
        "/shop",
        &[("x-action", "slow"), ("x-user", "bob")],
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        a.body.lines().any(|l| l == "x-user: bob"),
        "unchanged: {}",
        a.body
    );

    // The processor ending the call: the request goes on unchanged.
    let a = get(PORT, "/shop", &[("x-action", "close"), ("x-user", "carol")]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.lines().any(|l| l == "x-user: carol"), "{}", a.body);

    // Off on a route: no stream. A route that sends only the response's head, with its
    // own metadata.
    let before = streams().len();
    let a = get(PORT, "/off", &[("x-user", "dave")]).await;
    assert!(a.body.lines().any(|l| l == "x-user: dave"), "{}", a.body);
    assert_eq!(streams().len(), before);
    let a = get(PORT, "/responses-only", &[("x-user", "erin")]).await;
    assert!(a.body.lines().any(|l| l == "x-user: erin"), "{}", a.body);
    assert_eq!(a.header("x-proc-response"), Some("seen"));
    let last = streams().last().unwrap().clone();
    assert_eq!(last.metadata.get("x-tenant").map(String::as_str), Some("b"));
    assert_eq!(last.messages.len(), 1);
    assert_eq!(last.messages[0].0, "response_headers");

    assert_eq!(outcome(&node, "gw", "immediate_response"), 1.0);
    assert_eq!(outcome(&node, "gw", "timeout"), 1.0);
    assert_eq!(outcome(&node, "gw", "closed"), 1.0);
    // `host` refused once for each of the two requests the default branch answered.
    assert_eq!(outcome(&node, "gw", "rejected_mutation"), 2.0);
    assert_eq!(outcome(&node, "open", "timeout"), 1.0);
    assert_eq!(outcome(&node, "open", "failure_mode_allowed"), 1.0);
}

/// A POST of `body` to the `bodies` listener with `headers`: with its length, or chunked
/// (`chunked`: in pieces of 64 KiB).
async fn post(node: &Node, body: Bytes, chunked: bool, headers: &[(&str, &str)]) -> Answer {
    post_to(node, "/upload", body, chunked, headers).await
}

/// [`post`] to `path`.
async fn post_to(
    node: &Node,
    path: &str,
    body: Bytes,
    chunked: bool,
    headers: &[(&str, &str)],
) -> Answer {
    let stream = node.connect(vip(BODY_PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = HyperRequest::post(path).header("host", "web");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = if chunked {
        body.chunks(64 << 10)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect()
    } else {
        req = req.header("content-length", body.len());
        vec![Ok(Frame::data(body))]
    };
    let req = req
        .body(StreamBody::new(tokio_stream::iter(frames)))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    Answer::read(resp, started.elapsed()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_sees_and_replaces_buffered_bodies_over_xds() {
    let Bed {
        hits, p, _cp, node, ..
    } = bed().await;
    let streams = || p.streams.lock().unwrap().clone();

    // Told whole, the request's after its head, the response's after its head; the
    // request's body upper-cased on its way up (its length kept), a header added with
    // the body's answer (the head is still held); the response's body replaced (its
    // length removed by the processor with the head).
    let a = post(
        &node,
        Bytes::from_static(b"hello processor"),
        false,
        &[("x-action", "upper")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body, "replaced by the processor");
    assert_eq!(a.header("x-body-seen"), Some("yes"));
    assert_eq!(a.header("content-length"), None);
    let s = streams();
    let messages: Vec<_> = s[0]
        .messages
        .iter()
        .map(|(p, h, eos)| (*p, h.get("body").cloned(), *eos))
        .collect();
    assert_eq!(messages[0], ("request_headers", None, false));
    assert_eq!(
        messages[1],
        ("request_body", Some("hello processor".into()), true)
    );
    assert_eq!(messages[2].0, "response_headers");
    let (phase, told, eos) = &messages[3];
    assert_eq!((*phase, *eos), ("response_body", true));
    // What the upstream echoed: the new body and the header the body's answer added.
    let echoed = told.as_deref().unwrap();
    assert!(echoed.contains("body: HELLO PROCESSOR\n"), "{echoed}");
    assert!(
        echoed.contains("x-body-told: hello processor\n"),
        "{echoed}"
    );
    assert!(echoed.contains("content-length: 15\n"), "{echoed}");

    // Unchanged bodies go on as they came, a chunked one too.
    let a = post(&node, Bytes::from_static(b"as it was"), true, &[]).await;
    assert_eq!(a.status, 200);
    assert!(a.body.contains("body: as it was\n"), "{}", a.body);
    assert_eq!(a.header("x-body-seen"), Some("yes"));

    // A request body over the limit (1 MiB): 413, the upstream not asked.
    let before = hits.load(Ordering::Relaxed);
    let big = Bytes::from(vec![b'a'; (1 << 20) + 1]);
    let a = post(&node, big, true, &[]).await;
    assert_eq!(a.status, 413);
    assert_eq!(hits.load(Ordering::Relaxed), before);
    // One of exactly the limit is told and goes up; the upstream's echo of it is over
    // the limit for the response's body: a 500, as in Envoy.
    let limit = Bytes::from(vec![b'a'; 1 << 20]);
    let before = hits.load(Ordering::Relaxed);
    let a = post(&node, limit, false, &[]).await;
    assert_eq!(a.status, 500);
    assert_eq!(hits.load(Ordering::Relaxed), before + 1);
    let last = streams().last().unwrap().clone();
    assert_eq!(last.messages[1].1["body"].len(), 1 << 20);
    assert_eq!(last.messages.len(), 3, "no response body told");

    // The head is told at once and the body read only after its answer (as in Envoy): a
    // processor that answers the head itself does so while the client still holds most
    // of its body.
    let stream = node.connect(vip(BODY_PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"the start"))))
        .await
        .unwrap();
    let req = HyperRequest::post("/upload")
        .header("host", "web")
        .header("x-action", "deny")
        .header("content-length", "100000")
        .body(StreamBody::new(ReceiverStream::new(rx)))
        .unwrap();
    let (before, started) = (hits.load(Ordering::Relaxed), std::time::Instant::now());
    let resp = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("answered with the body still held")
        .unwrap();
    let a = Answer::read(resp, started.elapsed()).await;
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (403, "denied by the processor")
    );
    assert_eq!(hits.load(Ordering::Relaxed), before);
    let last = streams().last().unwrap().clone();
    let phases: Vec<_> = last.messages.iter().map(|(p, _, eos)| (*p, *eos)).collect();
    assert_eq!(phases, [("request_headers", false)]);
    drop(tx);

    assert_eq!(outcome(&node, "bodies", "body_too_large"), 2.0);
    assert!(outcome(&node, "bodies", "continue") >= 12.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_partial_tells_bodies_up_to_the_limit_over_xds() {
    let Bed { p, _cp, node, .. } = bed().await;
    // A body past the listener's limit (1 MiB) on a route that overrides the mode to
    // BUFFERED_PARTIAL: not refused; the part read up to the limit is told (not the
    // end) and upper-cased by the processor, the rest goes up untold, as it came.
    let total = (1 << 20) + (100 << 10);
    let a = post_to(
        &node,
        "/partial",
        Bytes::from(vec![b'a'; total]),
        true,
        &[("x-action", "upper")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let s = p.streams.lock().unwrap().clone();
    let m = &s.last().unwrap().messages;
    let phases: Vec<_> = m.iter().map(|(p, _, eos)| (*p, *eos)).collect();
    assert_eq!(
        phases,
        [
            ("request_headers", false),
            ("request_body", false),
            ("response_headers", false),
            ("response_body", false),
        ]
    );
    let told = |i: usize| m[i].1["body"].len();
    let request_told = told(1);
    assert!((1 << 20..total).contains(&request_told), "{request_told}");
    // The response (the upstream's echo, longer than the limit too) is told in part and
    // that part replaced; the rest of the echo follows it.
    let response_told = told(3);
    assert!(response_told >= 1 << 20, "{response_told}");
    let rest = a
        .body
        .strip_prefix("replaced by the processor")
        .unwrap_or_else(|| panic!("{}", &a.body[..64]));
    // What the upstream was sent (the echo: the told part, then the rest): the body's
    // told part upper-cased, then its rest as it was.
    let echo = format!("{}{rest}", m[3].1["body"]);
    let (_, sent) = echo.split_once("body: ").unwrap();
    let want = "A".repeat(request_told) + &"a".repeat(total - request_told) + "\n";
    assert!(
        sent == want,
        "{} bytes sent, {} wanted",
        sent.len(),
        want.len()
    );
    assert_eq!(a.header("content-length"), None);
    assert_eq!(outcome(&node, "bodies", "body_too_large"), 0.0);
}

/// A POST to `/streamed` on the `bodies` listener whose body the test sends as it likes
/// (`tx`), with its length (`length`, else chunked) and `headers`.
async fn streamed_post(
    node: &Node,
    length: Option<usize>,
    headers: &[(&str, &str)],
) -> (
    tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    tokio::task::JoinHandle<Answer>,
) {
    let stream = node.connect(vip(BODY_PORT)).await;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
    let mut req = HyperRequest::post("/streamed").header("host", "web");
    if let Some(n) = length {
        req = req.header("content-length", n);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(StreamBody::new(ReceiverStream::new(rx))).unwrap();
    let answer = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let resp = sender.send_request(req).await.unwrap();
        Answer::read(resp, started.elapsed()).await
    });
    (tx, answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_bodies_are_told_as_they_come_over_xds() {
    let Bed {
        hits, p, _cp, node, ..
    } = bed().await;
    let streams = || p.streams.lock().unwrap().clone();
    let told = |phase: &str| -> Vec<(String, bool)> {
        let s = streams();
        let m = &s.last().unwrap().messages;
        m.iter()
            .filter(|(p, ..)| *p == phase)
            .map(|(_, h, eos)| (h["body"].clone(), *eos))
            .collect()
    };

    // On a route overriding both body modes to STREAMED: the first part of the body is
    // told (and upper-cased) while the client still holds the rest, which a held mode
    // would wait for; the rest follows, the end told with it or apart.
    let (first, second) = ("first part, ", "second part");
    let length = first.len() + second.len();
    let (tx, answer) = streamed_post(&node, Some(length), &[("x-action", "upper")]).await;
    tx.send(Ok(Frame::data(Bytes::from_static(first.as_bytes()))))
        .await
        .unwrap();
    let mut seen = false;
    for _ in 0..500 {
        if streams()
            .last()
            .is_some_and(|s| s.messages.iter().any(|m| m.0 == "request_body"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(seen, "the first chunk told while the client holds the rest");
    assert_eq!(told("request_body"), [(first.to_owned(), false)]);
    tx.send(Ok(Frame::data(Bytes::from_static(second.as_bytes()))))
        .await
        .unwrap();
    drop(tx);
    let a = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    // The request's chunks: all told, in order, the last one ending it.
    let request = told("request_body");
    let joined: String = request.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(joined, format!("{first}{second}"));
    assert!(request.last().unwrap().1 && request.iter().rev().skip(1).all(|(_, eos)| !eos));
    // The response (the upstream's echo) told chunk by chunk too, each replaced by the
    // processor; the echo shows the upstream got the upper-cased chunks, without the
    // client's length (the chunks may change it) and without the header the processor
    // set with a chunk's answer (the head had gone on).
    let response = told("response_body");
    assert!(response.last().unwrap().1);
    assert_eq!(a.body, "replaced by the processor".repeat(response.len()));
    assert_eq!(a.header("content-length"), None);
    let echo: String = response.iter().map(|(b, _)| b.as_str()).collect();
    assert!(echo.contains("body: FIRST PART, SECOND PART\n"), "{echo}");
    assert!(!echo.contains("content-length"), "{echo}");
    assert!(!echo.contains("x-body-told"), "{echo}");

    // A processor that answers a chunk itself answers the request; the upstream, which
    // had the head and the chunks before, is left.
    let before = hits.load(Ordering::Relaxed);
    let (tx, answer) = streamed_post(&node, None, &[("x-action", "deny-body")]).await;
    tx.send(Ok(Frame::data(Bytes::from_static(b"not this"))))
        .await
        .unwrap();
    let a = tokio::time::timeout(Duration::from_secs(10), answer)
        .await
        .expect("answered with the body still open")
        .unwrap();
    assert_eq!(
        (a.status.as_u16(), a.body.as_str()),
        (403, "denied by the processor")
    );
    drop(tx);
    let phases: Vec<_> = streams()
        .last()
        .unwrap()
        .messages
        .iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(phases, ["request_headers", "request_body"]);
    assert!(hits.load(Ordering::Relaxed) <= before + 1);
    assert_eq!(outcome(&node, "bodies", "immediate_response"), 1.0);
}
