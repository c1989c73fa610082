use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Buf;
use http::{header, Request};

use super::*;
use crate::model::ext_proc::{ForwardRules, MutationRules};
use crate::model::StringMatcher;
use crate::services::{BoolValue, Opened, Opener};

/// The connection manager's buffer limit most tests run with (Envoy's default).
const LIMIT: usize = 1 << 20;

/// What the scripted processor does with the next message.
enum Step {
    /// Answers it.
    Answer(ProcessingResponse),
    /// Answers it with these messages, in turn.
    Answers(Vec<ProcessingResponse>),
    /// Ends the stream cleanly (`grpc-status: 0`).
    Close,
    /// Ends the stream with this status.
    Fail(u32),
    /// Never answers.
    Hang,
}

/// A processor in process: `open` hands the stream to a task that answers each message
/// with the next step, keeping the messages and the call's headers.
#[derive(Default)]
struct Scripted {
    steps: Mutex<VecDeque<Step>>,
    seen: Arc<Mutex<Vec<ProcessingRequest>>>,
    heads: Arc<Mutex<Vec<HeaderMap>>>,
    /// Set once the proxy half-closed the stream.
    ended: Arc<Mutex<bool>>,
}

impl Scripted {
    fn new(steps: Vec<Step>) -> Scripted {
        Scripted {
            steps: Mutex::new(steps.into()),
            ..Scripted::default()
        }
    }
}

impl Services for Scripted {
    fn send<'a>(
        &'a self,
        _: &'a str,
        _: Request<Bytes>,
        _: bool,
    ) -> crate::services::Pending<'a, Result<crate::services::Reply, String>> {
        Box::pin(async { Err("unary calls are not scripted".to_owned()) })
    }

    fn send_detached(&self, _: &str, _: Request<Bytes>, _: Duration) {}

    fn open<'a>(
        &'a self,
        cluster: &'a str,
    ) -> crate::services::Pending<'a, Result<Opener, String>> {
        assert_eq!(cluster, "processor");
        let steps: Vec<Step> = self.steps.lock().unwrap().drain(..).collect();
        let (seen, ended, heads) = (self.seen.clone(), self.ended.clone(), self.heads.clone());
        let opener: Opener = Box::new(move |req| {
            Box::pin(async move { Ok(Scripted::answer(req, steps, seen, ended, heads)) })
        });
        Box::pin(async move { Ok(opener) })
    }
}

impl Scripted {
    /// The processor's side of a stream: a task answering each message with the next step.
    fn answer(
        req: Request<ProxyBody>,
        steps: Vec<Step>,
        seen: Arc<Mutex<Vec<ProcessingRequest>>>,
        ended: Arc<Mutex<bool>>,
        heads: Arc<Mutex<Vec<HeaderMap>>>,
    ) -> Opened {
        let (parts, mut body) = req.into_parts();
        assert_eq!(parts.uri.path(), PROCESS_PATH);
        heads.lock().unwrap().push(parts.headers);
        let (mut tx, answers) = http_body_util::Channel::<Bytes, BodyError>::new(4);
        tokio::spawn(async move {
            let mut steps = steps.into_iter();
            let mut buf = BytesMut::new();
            loop {
                while buf.len() >= 5 {
                    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                    if buf.len() < 5 + len {
                        break;
                    }
                    buf.advance(5);
                    let m = ProcessingRequest::decode(buf.split_to(len).freeze()).unwrap();
                    seen.lock().unwrap().push(m);
                    match steps.next() {
                        Some(Step::Answer(a)) => {
                            let _ = tx.send_data(crate::services::grpc_frame(&a)).await;
                        }
                        Some(Step::Answers(all)) => {
                            for a in all {
                                let _ = tx.send_data(crate::services::grpc_frame(&a)).await;
                            }
                        }
                        Some(Step::Close) | None => {
                            let mut t = HeaderMap::new();
                            t.insert("grpc-status", HeaderValue::from(0));
                            let _ = tx.send_trailers(t).await;
                        }
                        Some(Step::Fail(code)) => {
                            let mut t = HeaderMap::new();
                            t.insert("grpc-status", HeaderValue::from(code));
                            let _ = tx.send_trailers(t).await;
                        }
                        Some(Step::Hang) => {}
                    }
                }
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            buf.extend_from_slice(&d);
                        }
                    }
                    _ => break,
                }
            }
            *ended.lock().unwrap() = true;
            // The proxy half-closed: end the call.
            let mut t = HeaderMap::new();
            t.insert("grpc-status", HeaderValue::from(0));
            let _ = tx.send_trailers(t).await;
        });
        let mut response = Response::new(answers.boxed());
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        Opened {
            response,
            held: None,
        }
    }
}

fn policy(f: impl FnOnce(&mut ExtProcPolicy)) -> Arc<ExtProcPolicy> {
    let mut p = ExtProcPolicy {
        service: GrpcService {
            cluster: "processor".into(),
            authority: "processor".into(),
            metadata: vec![("x-tenant".into(), "a".into())],
        },
        mode: ProcessingMode::default(),
        message_timeout: Duration::from_millis(200),
        failure_mode_allow: false,
        rules: MutationRules::default(),
        forward: ForwardRules::default(),
        route_cache: RouteCache::Default,
        disable_immediate_response: false,
        allow_mode_override: false,
        stat_prefix: "p".into(),
    };
    f(&mut p);
    Arc::new(p)
}

fn set(name: &str, value: &str, append_action: i32) -> HeaderValueOptionProto {
    HeaderValueOptionProto {
        header: Some(HeaderValueProto {
            key: name.into(),
            value: String::new(),
            raw_value: value.as_bytes().to_vec(),
        }),
        append: None,
        append_action,
    }
}

fn headers_answer(request: bool, mutation: HeaderMutation, clear: bool) -> Step {
    let h = HeadersResponse {
        response: Some(CommonResponse {
            status: 0,
            header_mutation: Some(mutation),
            body_mutation: None,
            clear_route_cache: clear,
        }),
    };
    Step::Answer(ProcessingResponse {
        mode_override: None,
        override_message_timeout: None,
        response: Some(if request {
            Answered::RequestHeaders(h)
        } else {
            Answered::ResponseHeaders(h)
        }),
    })
}

fn request_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("x-user", HeaderValue::from_static("alice"));
    h.insert("x-secret", HeaderValue::from_static("s3cret"));
    h.insert("x-old", HeaderValue::from_static("1"));
    h
}

fn head(h: &HeaderMap) -> RequestHead<'_> {
    RequestHead {
        method: "GET",
        authority: "svc",
        path: "/a?x=1",
        scheme: "http",
        headers: h,
    }
}

fn told(m: &ProcessingRequest) -> (Vec<(String, String)>, bool) {
    let h = match m.request.as_ref().unwrap() {
        Phase::RequestHeaders(h) | Phase::ResponseHeaders(h) => h,
        Phase::RequestBody(_) | Phase::ResponseBody(_) => panic!("a body"),
    };
    let fields = h
        .headers
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .map(|v| {
            (
                v.key.clone(),
                String::from_utf8(v.raw_value.clone()).unwrap(),
            )
        })
        .collect();
    (fields, h.end_of_stream)
}

/// Waits (a second at most) for the proxy to half-close the processor's stream.
async fn half_closed(services: &Scripted) {
    for _ in 0..100 {
        if *services.ended.lock().unwrap() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the stream was not half-closed");
}

fn count(metrics: &ProxyMetrics, outcome: &'static str) -> u64 {
    metrics
        .ext_proc
        .get_or_create(&crate::metrics::RateLimitLabels {
            stat_prefix: crate::metrics::StatPrefix("p".into()),
            outcome,
        })
        .get()
}

fn ok_response() -> Response<ProxyBody> {
    let mut resp = crate::http::text_response(200, "hello".into());
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_static("1"));
    resp
}

#[tokio::test]
async fn both_heads_are_told_and_changed_as_the_rules_allow() {
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(
            true,
            HeaderMutation {
                set_headers: vec![
                    set("x-added", "yes", 0),
                    set("x-user", "bob", 2),
                    set("x-missing", "no", 3),
                    set(":path", "/b?y=2", 2),
                    // Refused by the default rules: counted and skipped.
                    set("host", "elsewhere", 2),
                    set("x-envoy-internal", "1", 2),
                ],
                remove_headers: vec!["x-old".into(), ":method".into()],
            },
            true,
        ),
        headers_answer(
            false,
            HeaderMutation {
                set_headers: vec![set(":status", "201", 2), set("x-seen", "1", 0)],
                remove_headers: vec!["x-upstream".into()],
            },
            false,
        ),
    ]);
    let policy = policy(|p| {
        p.forward = ForwardRules {
            allowed: None,
            disallowed: vec![StringMatcher::exact("x-secret")],
        }
    });
    let mut exchange = Exchange::new(&policy, None, LIMIT).unwrap();
    let h = request_headers();
    let Processed::Continue(Continued {
        changes, reroute, ..
    }) = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    assert!(reroute, "clear_route_cache");
    let [changes] = &changes[..] else {
        panic!("{changes:?}")
    };
    assert_eq!(changes.path(), Some("/b?y=2"));
    let mut upstream = request_headers();
    changes.apply(&mut upstream);
    assert_eq!(upstream["x-added"], "yes");
    assert_eq!(upstream["x-user"], "bob");
    assert!(!upstream.contains_key("x-missing"));
    assert!(!upstream.contains_key("x-old"));
    assert!(!upstream.contains_key("host") && !upstream.contains_key("x-envoy-internal"));
    assert_eq!(count(&metrics, "rejected_mutation"), 3);
    assert!(exchange.wants_response());

    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["x-seen"], "1");
    assert!(!resp.headers().contains_key("x-upstream"));
    assert_eq!(count(&metrics, "continue"), 2);

    let seen = services.seen.lock().unwrap().clone();
    let (fields, eos) = told(&seen[0]);
    assert!(eos);
    for (k, v) in [
        (":authority", "svc"),
        (":path", "/a?x=1"),
        (":method", "GET"),
        (":scheme", "http"),
        ("x-user", "alice"),
    ] {
        assert!(fields.contains(&(k.into(), v.into())), "{k} in {fields:?}");
    }
    assert!(
        !fields.iter().any(|(k, _)| k == "x-secret"),
        "forward_rules"
    );
    let (fields, eos) = told(&seen[1]);
    assert!(!eos, "the response has a body");
    assert!(fields.contains(&(":status".into(), "200".into())));
    assert!(fields.contains(&("x-upstream".into(), "1".into())));
    assert_eq!(services.heads.lock().unwrap()[0]["x-tenant"], "a");
    // Half-closed after the last message: the processor sees the end of the stream.
    half_closed(&services).await;
}

#[tokio::test]
async fn an_immediate_response_answers_the_request() {
    let metrics = ProxyMetrics::unregistered();
    let immediate = |grpc_status: Option<u32>| {
        Step::Answer(ProcessingResponse {
            mode_override: None,
            override_message_timeout: None,
            response: Some(Answered::ImmediateResponse(ImmediateResponse {
                status: Some(HttpStatus { code: 403 }),
                headers: Some(HeaderMutation {
                    set_headers: vec![set("x-why", "policy", 2)],
                    remove_headers: vec![],
                }),
                body: Bytes::from_static(b"denied here"),
                grpc_status: grpc_status.map(|status| GrpcStatus { status }),
                details: "d".into(),
            })),
        })
    };
    let h = request_headers();
    let services = Scripted::new(vec![immediate(None)]);
    let mut exchange = Exchange::new(&policy(|_| {}), None, LIMIT).unwrap();
    let Processed::Answer((resp, flags)) = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap()
    else {
        panic!("went on")
    };
    assert_eq!((resp.status().as_u16(), flags), (403, "-"));
    assert_eq!(resp.headers()["x-why"], "policy");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"denied here");
    assert!(!exchange.wants_response());

    // With the body buffered too: the head's answer is in before the body is read, and
    // the body never is.
    let services = Scripted::new(vec![immediate(None)]);
    let mut exchange = Exchange::new(&buffered(|_| {}), None, LIMIT).unwrap();
    let (body, noted) = (read(b"hello", true), Noted::default());
    let read_by = reader(&body, &services, &noted);
    let Processed::Answer((resp, _)) = exchange
        .request(&services, &head(&h), read_by, false, false, &metrics)
        .await
        .unwrap()
    else {
        panic!("went on")
    };
    assert_eq!(resp.status(), 403);
    assert_eq!(noted.get(), None);

    // To a gRPC client: its grpc-status, trailers-only.
    let services = Scripted::new(vec![immediate(Some(7))]);
    let mut exchange = Exchange::new(&policy(|_| {}), None, LIMIT).unwrap();
    let Processed::Answer((resp, _)) = exchange
        .request(&services, &head(&h), no_body(), true, true, &metrics)
        .await
        .unwrap()
    else {
        panic!("went on")
    };
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["grpc-status"], "7");
    assert_eq!(count(&metrics, "immediate_response"), 3);

    // Ignored with disable_immediate_response: processing stops, the request goes on.
    let services = Scripted::new(vec![immediate(None)]);
    let p = policy(|p| p.disable_immediate_response = true);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let processed = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap();
    assert!(matches!(
        processed,
        Processed::Continue(Continued { reroute: false, .. })
    ));
    assert!(!exchange.wants_response());
    assert_eq!(count(&metrics, "immediate_response_ignored"), 1);
}

#[tokio::test(start_paused = true)]
async fn failures_answer_500_or_504_unless_failure_mode_allow() {
    let h = request_headers();
    let run = |steps: Vec<Step>, allow: bool| {
        let h = &h;
        async move {
            let metrics = ProxyMetrics::unregistered();
            let services = Scripted::new(steps);
            let p = policy(|p| p.failure_mode_allow = allow);
            let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
            let processed = exchange
                .request(&services, &head(h), no_body(), true, false, &metrics)
                .await
                .unwrap();
            let status = match processed {
                Processed::Answer((resp, _)) => Some(resp.status().as_u16()),
                Processed::Continue(_) => None,
            };
            (status, exchange.wants_response(), metrics)
        }
    };
    let (status, wants, m) = run(vec![Step::Hang], false).await;
    assert_eq!((status, wants), (Some(504), false));
    assert_eq!(count(&m, "timeout"), 1);
    let (status, _, m) = run(vec![Step::Fail(14)], false).await;
    assert_eq!(status, Some(500));
    assert_eq!(count(&m, "error"), 1);
    let (status, wants, m) = run(vec![Step::Hang], true).await;
    assert_eq!((status, wants), (None, false));
    assert_eq!(count(&m, "failure_mode_allowed"), 1);
    // A clean close ends processing without an error; so does an answer out of turn.
    let (status, wants, m) = run(vec![Step::Close], false).await;
    assert_eq!((status, wants), (None, false));
    assert_eq!(count(&m, "closed"), 1);
    let out_of_turn = headers_answer(false, HeaderMutation::default(), false);
    let (status, wants, m) = run(vec![out_of_turn], false).await;
    assert_eq!((status, wants), (None, false));
    assert_eq!(count(&m, "spurious"), 1);
}

#[tokio::test]
async fn invalid_or_refused_changes_are_a_500_with_disallow_is_error() {
    let h = request_headers();
    let cases = [
        (
            HeaderMutation {
                set_headers: vec![set("host", "elsewhere", 2)],
                remove_headers: vec![],
            },
            true,
        ),
        (
            HeaderMutation {
                set_headers: vec![set("x-bad", "a\nb", 2)],
                remove_headers: vec![],
            },
            false,
        ),
        (
            HeaderMutation {
                set_headers: vec![set(":path", "no-slash", 2)],
                remove_headers: vec![],
            },
            false,
        ),
    ];
    for (mutation, disallow_is_error) in cases {
        let metrics = ProxyMetrics::unregistered();
        let services = Scripted::new(vec![headers_answer(true, mutation, false)]);
        let p = policy(|p| p.rules.disallow_is_error = disallow_is_error);
        let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
        let processed = exchange
            .request(&services, &head(&h), no_body(), true, false, &metrics)
            .await
            .unwrap();
        let Processed::Answer((resp, _)) = processed else {
            panic!("went on")
        };
        assert_eq!(resp.status(), 500);
        assert_eq!(count(&metrics, "invalid"), 1);
    }
    // The deprecated `append: true` joins values.
    let metrics = ProxyMetrics::unregistered();
    let mut joined = set("x-user", "bob", 0);
    joined.append = Some(BoolValue { value: true });
    let services = Scripted::new(vec![headers_answer(
        true,
        HeaderMutation {
            set_headers: vec![joined],
            remove_headers: vec![],
        },
        false,
    )]);
    let mut exchange = Exchange::new(&policy(|_| {}), None, LIMIT).unwrap();
    let Processed::Continue(Continued { changes, .. }) = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    let mut upstream = request_headers();
    changes.iter().for_each(|c| c.apply(&mut upstream));
    assert_eq!(upstream["x-user"], "alice,bob");
}

#[tokio::test]
async fn routes_turn_the_filter_off_or_override_mode_and_service() {
    let metrics = ProxyMetrics::unregistered();
    let p = policy(|_| {});
    assert!(Exchange::new(&p, Some(&ExtProcRoute::Disabled), LIMIT).is_none());
    let route = ExtProcRoute::Overrides {
        mode: Some(ProcessingMode {
            request_headers: false,
            response_headers: true,
            ..ProcessingMode::default()
        }),
        service: None,
        metadata: vec![("x-tenant".into(), "b".into())],
    };
    let mut exchange = Exchange::new(&p, Some(&route), LIMIT).unwrap();
    let services = Scripted::new(vec![headers_answer(
        false,
        HeaderMutation {
            set_headers: vec![set("x-seen", "1", 0)],
            remove_headers: vec![],
        },
        false,
    )]);
    let h = request_headers();
    let processed = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap();
    assert!(matches!(
        processed,
        Processed::Continue(Continued { reroute: false, .. })
    ));
    assert!(
        services.seen.lock().unwrap().is_empty(),
        "request headers skipped"
    );
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.headers()["x-seen"], "1");
    let heads = services.heads.lock().unwrap();
    assert_eq!(heads.len(), 1);
    assert_eq!(
        heads[0]["x-tenant"], "b",
        "the route's metadata replaces the service's"
    );
}

/// An answer to a body message (or, with `status` 1, a `CONTINUE_AND_REPLACE` to a
/// head: `head` then says which).
fn common_answer(
    what: fn(HeadersResponse) -> Answered,
    status: i32,
    set_headers: Vec<HeaderValueOptionProto>,
    body: Option<Mutation>,
) -> Step {
    Step::Answer(ProcessingResponse {
        mode_override: None,
        override_message_timeout: None,
        response: Some(what(HeadersResponse {
            response: Some(CommonResponse {
                status,
                header_mutation: Some(HeaderMutation {
                    set_headers,
                    remove_headers: vec![],
                }),
                body_mutation: body.map(|m| BodyMutation { mutation: Some(m) }),
                clear_route_cache: false,
            }),
        })),
    })
}

fn body_told(m: &ProcessingRequest) -> (Bytes, bool) {
    match m.request.as_ref().unwrap() {
        Phase::RequestBody(b) | Phase::ResponseBody(b) => (b.body.clone(), b.end_of_stream),
        other => panic!("not a body: {other:?}"),
    }
}

fn buffered(f: impl FnOnce(&mut ProcessingMode)) -> Arc<ExtProcPolicy> {
    policy(|p| {
        p.mode.request_body = BodyMode::Buffered;
        p.mode.response_body = BodyMode::Buffered;
        f(&mut p.mode);
    })
}

/// When the exchange read the request's body: how many messages the processor had been
/// sent by then, and how many bytes it asked for.
#[derive(Default)]
struct Noted(Mutex<Option<(usize, usize)>>);

impl Noted {
    fn get(&self) -> Option<(usize, usize)> {
        *self.0.lock().unwrap()
    }
}

/// A request's body to be read: `body`, noted in `noted` when it is.
fn reader<'a>(
    body: &'a ReadAhead,
    services: &'a Scripted,
    noted: &'a Noted,
) -> Option<impl FnOnce(usize) -> Read + 'a> {
    Some(move |at_least| {
        let told = services.seen.lock().unwrap().len();
        *noted.0.lock().unwrap() = Some((told, at_least));
        std::future::ready(Ok(body.clone()))
    })
}

/// Processes the request (`h`, then `body` if the mode tells it) with `exchange`, which
/// lets it go on: how, and when the body was read.
async fn continued(
    exchange: &mut Exchange,
    services: &Scripted,
    h: &HeaderMap,
    body: ReadAhead,
    metrics: &ProxyMetrics,
) -> (Continued, Noted) {
    let noted = Noted::default();
    let read_by = reader(&body, services, &noted);
    let head = head(h);
    let processed = exchange.request(services, &head, read_by, false, false, metrics);
    let Processed::Continue(c) = processed.await.unwrap() else {
        panic!("answered")
    };
    (c, noted)
}

/// What a test's body reader gives.
type Read = std::future::Ready<Result<ReadAhead, BodyError>>;

/// A request without a body to read.
fn no_body() -> Option<fn(usize) -> Read> {
    None
}

fn read(data: &'static [u8], whole: bool) -> ReadAhead {
    ReadAhead {
        data: Bytes::from_static(data),
        whole,
        trailers: None,
    }
}

async fn body_of(resp: Response<ProxyBody>) -> Bytes {
    resp.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn buffered_bodies_are_told_whole_and_replaced() {
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(
            true,
            HeaderMutation {
                set_headers: vec![set("x-after-head", "1", 2)],
                remove_headers: vec![],
            },
            false,
        ),
        // The new body's length set in the same answer: it matches.
        common_answer(
            Answered::RequestBody,
            0,
            vec![set("content-length", "3", 2), set("x-after-body", "1", 2)],
            Some(Mutation::Body(Bytes::from_static(b"abc"))),
        ),
        headers_answer(
            false,
            HeaderMutation {
                set_headers: vec![],
                remove_headers: vec!["content-length".into()],
            },
            false,
        ),
        common_answer(
            Answered::ResponseBody,
            0,
            vec![set("x-seen-body", "1", 2)],
            Some(Mutation::Body(Bytes::from_static(b"HELLO, WORLD"))),
        ),
    ]);
    let p = buffered(|_| {});
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut h = request_headers();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let body = read(b"hello", true);
    let noted = Noted::default();
    let Processed::Continue(c) = exchange
        .request(
            &services,
            &head(&h),
            reader(&body, &services, &noted),
            false,
            false,
            &metrics,
        )
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    assert_eq!(c.body.as_deref(), Some(&b"abc"[..]));
    // The body was read once the head's answer was in, the limit and a byte of it.
    assert_eq!(noted.get(), Some((1, LIMIT + 1)));
    let mut upstream = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut upstream));
    assert_eq!(upstream[header::CONTENT_LENGTH], "3");
    assert_eq!(upstream["x-after-head"], "1");
    assert_eq!(upstream["x-after-body"], "1");

    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.headers()["x-seen-body"], "1");
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(&body_of(resp).await[..], b"HELLO, WORLD");
    assert_eq!(count(&metrics, "continue"), 4);

    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(!told(&seen[0]).1, "the request has a body");
    assert_eq!(body_told(&seen[1]), (Bytes::from_static(b"hello"), true));
    assert_eq!(body_told(&seen[3]), (Bytes::from_static(b"hello"), true));
}

#[tokio::test]
async fn a_body_told_alone_loses_its_length_and_header_changes() {
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        common_answer(
            Answered::RequestBody,
            0,
            // Ignored: the headers went on without the processor.
            vec![set("x-late", "1", 2)],
            Some(Mutation::ClearBody(true)),
        ),
        common_answer(Answered::ResponseBody, 0, vec![], None),
    ]);
    let p = buffered(|m| {
        m.request_headers = false;
        m.response_headers = false;
    });
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut h = request_headers();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let mut body = read(b"hello", true);
    body.trailers = Some(request_headers());
    let noted = Noted::default();
    let Processed::Continue(c) = exchange
        .request(
            &services,
            &head(&h),
            reader(&body, &services, &noted),
            false,
            false,
            &metrics,
        )
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    assert_eq!(c.body.as_deref(), Some(&b""[..]), "clear_body");
    assert_eq!(noted.get(), Some((0, LIMIT + 1)), "no head told first");
    let mut upstream = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut upstream));
    assert!(!upstream.contains_key(header::CONTENT_LENGTH));
    assert!(!upstream.contains_key("x-late"));

    // The response's body unchanged, its length gone, its trailers kept.
    let mut resp = ok_response();
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(0));
    *resp.body_mut() = frames_body(Bytes::from_static(b"hello"), Some(trailers));
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    let collected = resp.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"hello");
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    for m in &seen {
        assert_eq!(
            body_told(m),
            (Bytes::from_static(b"hello"), false),
            "trailers follow"
        );
    }
}

#[tokio::test]
async fn continue_and_replace_replaces_the_body_unsent() {
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        common_answer(
            Answered::RequestHeaders,
            1,
            vec![],
            Some(Mutation::Body(Bytes::from_static(b"replaced"))),
        ),
        common_answer(
            Answered::ResponseHeaders,
            1,
            vec![set(":status", "202", 2)],
            Some(Mutation::Body(Bytes::from_static(b"new answer"))),
        ),
    ]);
    let p = buffered(|_| {});
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut h = request_headers();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let body = read(b"hello", true);
    let noted = Noted::default();
    let Processed::Continue(c) = exchange
        .request(
            &services,
            &head(&h),
            reader(&body, &services, &noted),
            false,
            false,
            &metrics,
        )
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    assert_eq!(c.body.as_deref(), Some(&b"replaced"[..]));
    assert_eq!(
        noted.get(),
        None,
        "the client's body is not read for the processor"
    );
    let mut upstream = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut upstream));
    assert!(!upstream.contains_key(header::CONTENT_LENGTH));
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 202);
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(&body_of(resp).await[..], b"new answer");
    assert_eq!(
        services.seen.lock().unwrap().len(),
        2,
        "no body message after CONTINUE_AND_REPLACE"
    );
}

#[tokio::test]
async fn bodies_over_the_limit_or_of_the_wrong_length_are_refused() {
    // A request body longer than the limit: 413 after its head was told.
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![headers_answer(true, HeaderMutation::default(), false)]);
    let p = buffered(|_| {});
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let h = request_headers();
    let long = read(b"more than was read", false);
    let noted = Noted::default();
    let Processed::Answer((resp, _)) = exchange
        .request(
            &services,
            &head(&h),
            reader(&long, &services, &noted),
            false,
            false,
            &metrics,
        )
        .await
        .unwrap()
    else {
        panic!("went on")
    };
    assert_eq!(resp.status(), 413);
    assert_eq!(noted.get(), Some((1, LIMIT + 1)));
    assert_eq!(count(&metrics, "body_too_large"), 1);
    assert_eq!(services.seen.lock().unwrap().len(), 1);

    // A response body longer than the limit: 500.
    let services = Scripted::new(vec![headers_answer(
        false,
        HeaderMutation::default(),
        false,
    )]);
    let exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut resp = crate::http::text_response(200, "x".repeat(LIMIT + 1));
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(count(&metrics, "body_too_large"), 2);

    // The limit is the connection manager's: with 4 bytes, a whole 5-byte request body
    // (read whole because another filter wanted more of it) is a 413, and a 5-byte
    // response body a 500.
    let services = Scripted::new(vec![headers_answer(true, HeaderMutation::default(), false)]);
    let mut exchange = Exchange::new(&p, None, 4).unwrap();
    let whole = read(b"hello", true);
    let noted = Noted::default();
    let Processed::Answer((resp, _)) = exchange
        .request(
            &services,
            &head(&h),
            reader(&whole, &services, &noted),
            false,
            false,
            &metrics,
        )
        .await
        .unwrap()
    else {
        panic!("went on")
    };
    assert_eq!(resp.status(), 413);
    assert_eq!(noted.get(), Some((1, 5)));
    let services = Scripted::new(vec![headers_answer(
        false,
        HeaderMutation::default(),
        false,
    )]);
    let exchange = Exchange::new(&p, None, 4).unwrap();
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(count(&metrics, "body_too_large"), 4);

    // A new body whose length the headers contradict: invalid, a 500 (or, failing
    // open, the request goes on as it came).
    for allow in [false, true] {
        let metrics = ProxyMetrics::unregistered();
        let services = Scripted::new(vec![
            headers_answer(true, HeaderMutation::default(), false),
            common_answer(
                Answered::RequestBody,
                0,
                vec![],
                Some(Mutation::Body(Bytes::from_static(b"longer than five"))),
            ),
        ]);
        let p = buffered(|_| {});
        let p = Arc::new(ExtProcPolicy {
            failure_mode_allow: allow,
            ..(*p).clone()
        });
        let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
        let mut h = request_headers();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
        let body = read(b"hello", true);
        let noted = Noted::default();
        let processed = exchange
            .request(
                &services,
                &head(&h),
                reader(&body, &services, &noted),
                false,
                false,
                &metrics,
            )
            .await
            .unwrap();
        match processed {
            Processed::Answer((resp, _)) => assert!(!allow && resp.status() == 500),
            Processed::Continue(c) => assert!(allow && c.body.is_none()),
        }
        assert_eq!(count(&metrics, "invalid"), 1);
    }

    // A response body: the same check; failing open, the body goes on as it came.
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(false, HeaderMutation::default(), false),
        common_answer(
            Answered::ResponseBody,
            0,
            vec![],
            Some(Mutation::Body(Bytes::from_static(b"longer"))),
        ),
    ]);
    let p = buffered(|_| {});
    let p = Arc::new(ExtProcPolicy {
        failure_mode_allow: true,
        ..(*p).clone()
    });
    let exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(&body_of(resp).await[..], b"hello");
    assert_eq!(count(&metrics, "invalid"), 1);
}

#[tokio::test]
async fn a_body_that_fails_while_read_is_the_clients_error() {
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![headers_answer(true, HeaderMutation::default(), false)]);
    let mut exchange = Exchange::new(&buffered(|_| {}), None, LIMIT).unwrap();
    let h = request_headers();
    let failing = Some(|_| std::future::ready(Err::<ReadAhead, BodyError>("reset".into())));
    let processed = exchange
        .request(&services, &head(&h), failing, false, false, &metrics)
        .await;
    assert_eq!(
        processed.err().map(|e| e.to_string()).as_deref(),
        Some("reset")
    );
    // The processor was told the head only, and its stream was half-closed.
    assert_eq!(services.seen.lock().unwrap().len(), 1);
    half_closed(&services).await;
}

#[tokio::test]
async fn buffered_partial_tells_the_body_up_to_the_limit_and_the_rest_follows() {
    let partial = buffered(|m| {
        m.request_body = BodyMode::BufferedPartial;
        m.response_body = BodyMode::BufferedPartial;
    });
    let upper = |what| common_answer(what, 0, vec![], Some(Mutation::Body("HEL!".into())));
    // A request body longer than the limit (4): what was read of it (5 bytes, past the
    // limit) is told with `end_of_stream` false and replaced; the rest is the client's.
    // The length goes although the head was told (the processor saw it).
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        upper(Answered::RequestBody),
        headers_answer(false, HeaderMutation::default(), false),
        upper(Answered::ResponseBody),
    ]);
    let mut exchange = Exchange::new(&partial, None, 4).unwrap();
    let mut h = request_headers();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
    let (c, noted) = continued(
        &mut exchange,
        &services,
        &h,
        read(b"hello", false),
        &metrics,
    )
    .await;
    assert_eq!(noted.get(), Some((1, 4)), "up to the limit, after the head");
    assert_eq!(
        (c.body.as_deref(), c.replaces),
        (Some(&b"HEL!"[..]), Some(5))
    );
    let mut upstream = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut upstream));
    assert!(!upstream.contains_key(header::CONTENT_LENGTH));
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(
        told(&seen[0])
            .0
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1,
        "11"
    );
    assert_eq!(body_told(&seen[1]), (Bytes::from_static(b"hello"), false));

    // The response's body in frames: held until the limit is passed, told in part, and
    // the new part goes before the rest; its length gone, though its head was told.
    let frames = ["hel", "lo wor", "ld"].map(|d| Ok(http_body::Frame::data(Bytes::from(d))));
    let mut resp = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("11"));
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(resp.status(), 200);
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(&body_of(resp).await[..], b"HEL!ld");
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(
        told(&seen[2])
            .0
            .iter()
            .find(|(k, _)| k == "content-length")
            .unwrap()
            .1,
        "11"
    );
    assert_eq!(
        body_told(&seen[3]),
        (Bytes::from_static(b"hello wor"), false)
    );

    // Bodies that end within the limit are told whole, as with `BUFFERED`, and nothing
    // is over the limit: no 413, no 500.
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        common_answer(Answered::RequestBody, 0, vec![], None),
        headers_answer(false, HeaderMutation::default(), false),
        common_answer(Answered::ResponseBody, 0, vec![], None),
    ]);
    let mut exchange = Exchange::new(&partial, None, LIMIT).unwrap();
    let (c, _) = continued(&mut exchange, &services, &h, read(b"hello", true), &metrics).await;
    assert_eq!((c.body, c.replaces), (None, None));
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(&body_of(resp).await[..], b"hello");
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(body_told(&seen[1]), (Bytes::from_static(b"hello"), true));
    assert_eq!(body_told(&seen[3]), (Bytes::from_static(b"hello"), true));
    assert_eq!(count(&metrics, "body_too_large"), 0);
}

fn streamed(f: impl FnOnce(&mut ExtProcPolicy)) -> Arc<ExtProcPolicy> {
    policy(|p| {
        p.mode.request_body = BodyMode::Streamed;
        p.mode.response_body = BodyMode::Streamed;
        f(p);
    })
}

/// A body of these frames, its end known only when it comes (as a chunked one).
fn frames(data: &[&'static str]) -> ProxyBody {
    let frames: Vec<_> = data
        .iter()
        .map(|d| Ok(http_body::Frame::data(Bytes::from_static(d.as_bytes()))))
        .collect();
    StreamBody::new(futures_util::stream::iter(frames)).boxed()
}

/// Processes the request's head with `exchange`: its body to be told as it goes on.
async fn streamed_request(
    exchange: &mut Exchange,
    services: &Scripted,
    h: &HeaderMap,
    metrics: &ProxyMetrics,
) -> Continued {
    let never = read(b"never read", false);
    let (c, noted) = continued(exchange, services, h, never, metrics).await;
    assert_eq!(noted.get(), None, "a streamed body is not read ahead");
    c
}

#[tokio::test]
async fn streamed_bodies_are_told_chunk_by_chunk_and_go_on_as_answered() {
    let p = streamed(|_| {});
    let metrics = ProxyMetrics::unregistered();
    let chunk = |what, mutation| common_answer(what, 0, vec![set("x-ignored", "1", 2)], mutation);
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        chunk(Answered::RequestBody, Some(Mutation::Body("AB".into()))),
        chunk(Answered::RequestBody, None),
        chunk(Answered::RequestBody, Some(Mutation::ClearBody(true))),
        chunk(Answered::RequestBody, Some(Mutation::Body("!".into()))),
        headers_answer(false, HeaderMutation::default(), false),
        chunk(
            Answered::ResponseBody,
            Some(Mutation::Body("HELLO!".into())),
        ),
    ]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut h = request_headers();
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("6"));
    let c = streamed_request(&mut exchange, &services, &h, &metrics).await;
    // The length goes with the head (the chunks may change), after it was told.
    let mut upstream = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut upstream));
    assert!(!upstream.contains_key(header::CONTENT_LENGTH));
    assert!(exchange.wants_response());
    // Each chunk as its answer left it; the end told apart, as it came apart; header
    // changes in a chunk's answer are not made (the head went on).
    let body = c
        .streamed
        .expect("streamed")
        .body(frames(&["ab", "cd", "ef"]));
    let sent = body.collect().await.unwrap().to_bytes();
    assert_eq!(&sent[..], b"ABcd!");
    let seen = services.seen.lock().unwrap().clone();
    let bodies: Vec<_> = seen[1..5].iter().map(body_told).collect();
    assert_eq!(
        bodies,
        [
            (Bytes::from_static(b"ab"), false),
            (Bytes::from_static(b"cd"), false),
            (Bytes::from_static(b"ef"), false),
            (Bytes::new(), true),
        ]
    );
    assert_eq!(count(&metrics, "continue"), 5);

    // The response: its head answered, then its body chunk by chunk, its length gone. A
    // body whose end comes with its last data (one frame here) tells it with that chunk.
    let mut resp = ok_response();
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
    let flags = exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(flags, None);
    assert!(!resp.headers().contains_key(header::CONTENT_LENGTH));
    assert_eq!(&body_of(resp).await[..], b"HELLO!");
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(body_told(&seen[6]), (Bytes::from_static(b"hello"), true));
    assert_eq!(seen.len(), 7);
    half_closed(&services).await;
}

#[tokio::test(start_paused = true)]
async fn a_streamed_chunk_waits_for_its_answer_under_the_limit_and_a_late_one_is_504() {
    // The first chunk is never answered: with a limit of 4, 3-byte chunks are told until
    // 4 bytes are out (two of five), then the body is not read on; the answer is late.
    let p = streamed(|_| {});
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        Step::Hang,
        Step::Hang,
    ]);
    let mut exchange = Exchange::new(&p, None, 4).unwrap();
    let h = request_headers();
    let c = streamed_request(&mut exchange, &services, &h, &metrics).await;
    let body = c
        .streamed
        .unwrap()
        .body(frames(&["abc", "def", "ghi", "jkl", "mno"]));
    let err = body.collect().await.expect_err("the body fails");
    assert!(err.to_string().contains("external processing"), "{err}");
    assert_eq!(
        services.seen.lock().unwrap().len(),
        3,
        "the head and two chunks"
    );
    assert_eq!(count(&metrics, "timeout"), 1);
    // The request's answer is the failure's, whatever the upstream made of the cut body.
    let mut resp = crate::http::text_response(400, "downstream request aborted".into());
    let flags = exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!((resp.status().as_u16(), flags), (504, Some("-")));

    // With `failure_mode_allow`, the chunks told and the rest go on unchanged.
    let p = streamed(|p| p.failure_mode_allow = true);
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        Step::Hang,
    ]);
    let mut exchange = Exchange::new(&p, None, 4).unwrap();
    let c = streamed_request(&mut exchange, &services, &h, &metrics).await;
    let body = c.streamed.unwrap().body(frames(&["abc", "def", "ghi"]));
    assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"abcdefghi");
    let mut resp = ok_response();
    let flags = exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!((resp.status().as_u16(), flags), (200, None));
    assert_eq!(
        services.seen.lock().unwrap().len(),
        3,
        "the response untold"
    );
}

#[tokio::test]
async fn an_immediate_response_to_a_streamed_chunk_answers_the_request() {
    let p = streamed(|_| {});
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        headers_answer(true, HeaderMutation::default(), false),
        common_answer(Answered::RequestBody, 0, vec![], None),
        Step::Answer(ProcessingResponse {
            mode_override: None,
            override_message_timeout: None,
            response: Some(Answered::ImmediateResponse(ImmediateResponse {
                status: Some(HttpStatus { code: 413 }),
                headers: None,
                body: "too much".into(),
                grpc_status: None,
                details: String::new(),
            })),
        }),
    ]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let h = request_headers();
    let c = streamed_request(&mut exchange, &services, &h, &metrics).await;
    let mut body = c.streamed.unwrap().body(frames(&["ok", "bad", "more"]));
    // The first chunk goes on; the second is answered for the request.
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.data_ref().unwrap(), &Bytes::from_static(b"ok"));
    assert!(body.frame().await.unwrap().is_err());
    let mut resp = crate::http::text_response(400, "downstream request aborted".into());
    let flags = exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!((resp.status().as_u16(), flags), (413, Some("-")));
    assert_eq!(&body_of(resp).await[..], b"too much");
    assert_eq!(count(&metrics, "immediate_response"), 1);

    // A response's chunk answered so: the response is cut short (its head went).
    let services = Scripted::new(vec![Step::Answer(ProcessingResponse {
        mode_override: None,
        override_message_timeout: None,
        response: Some(Answered::ImmediateResponse(ImmediateResponse::default())),
    })]);
    let p = streamed(|p| {
        p.mode.request_headers = false;
        p.mode.response_headers = false;
        p.mode.request_body = BodyMode::None;
    });
    let exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let mut resp = ok_response();
    *resp.body_mut() = frames(&["hello"]);
    let flags = exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!((resp.status().as_u16(), flags), (200, None));
    assert!(resp.into_body().collect().await.is_err());
    let seen = services.seen.lock().unwrap().clone();
    assert_eq!(body_told(&seen[0]), (Bytes::from_static(b"hello"), false));
}

/// `headers_answer` with a `mode_override`.
fn overriding(request: bool, mode: ModeOverride) -> Step {
    let Step::Answer(mut a) = headers_answer(request, HeaderMutation::default(), false) else {
        unreachable!()
    };
    a.mode_override = Some(mode);
    Step::Answer(a)
}

#[tokio::test]
async fn a_mode_override_in_an_answer_to_a_head_changes_the_rest_when_allowed() {
    // Allowed: the request's body is then told (BUFFERED), the response's head not.
    let p = policy(|p| p.allow_mode_override = true);
    let buffered_no_response = ModeOverride {
        request_header_mode: 1,
        response_header_mode: 2,
        request_body_mode: 2,
        response_body_mode: 0,
        request_trailer_mode: 0,
        response_trailer_mode: 0,
    };
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        overriding(true, buffered_no_response.clone()),
        common_answer(
            Answered::RequestBody,
            0,
            vec![],
            Some(Mutation::Body("new".into())),
        ),
    ]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let h = request_headers();
    let (c, noted) = continued(&mut exchange, &services, &h, read(b"old", true), &metrics).await;
    assert_eq!(
        noted.get(),
        Some((1, LIMIT + 1)),
        "read after the head's answer"
    );
    assert_eq!(c.body.as_deref(), Some(&b"new"[..]));
    assert!(
        !exchange.wants_response(),
        "the response is not processed now"
    );
    assert_eq!(count(&metrics, "mode_override"), 1);
    half_closed(&services).await;

    // Not allowed: the same answer leaves the mode as configured.
    let p = policy(|_| {});
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![overriding(true, buffered_no_response.clone())]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let (_, noted) = continued(&mut exchange, &services, &h, read(b"old", true), &metrics).await;
    assert_eq!(noted.get(), None, "no body told");
    assert!(exchange.wants_response());
    assert_eq!(count(&metrics, "mode_override"), 0);

    // One Myelin cannot follow (trailers sent) is ignored whole; an answer to the
    // response's head may override too: its body is then streamed.
    let p = policy(|p| p.allow_mode_override = true);
    let metrics = ProxyMetrics::unregistered();
    let trailers = ModeOverride {
        request_body_mode: 2,
        request_trailer_mode: 1,
        ..buffered_no_response.clone()
    };
    let streamed_response = ModeOverride {
        response_body_mode: 1,
        ..buffered_no_response
    };
    let services = Scripted::new(vec![
        overriding(true, trailers),
        overriding(false, streamed_response),
        common_answer(
            Answered::ResponseBody,
            0,
            vec![],
            Some(Mutation::Body("HI".into())),
        ),
    ]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let (_, noted) = continued(&mut exchange, &services, &h, read(b"old", true), &metrics).await;
    assert_eq!(noted.get(), None, "the override was ignored");
    assert_eq!(count(&metrics, "mode_override_ignored"), 1);
    let mut resp = ok_response();
    exchange
        .response(&services, &mut resp, false, &metrics)
        .await;
    assert_eq!(&body_of(resp).await[..], b"HI");
    assert_eq!(count(&metrics, "mode_override"), 1);
}

#[tokio::test]
async fn an_answer_asking_for_more_time_is_ignored() {
    // Without `max_message_timeout` (Myelin takes none) Envoy ignores the message; the
    // real answer that follows is taken.
    let more_time = ProcessingResponse {
        override_message_timeout: Some(NotRead {}),
        ..ProcessingResponse::default()
    };
    let Step::Answer(real) = headers_answer(
        true,
        HeaderMutation {
            set_headers: vec![set("x-added", "yes", 0)],
            remove_headers: vec![],
        },
        false,
    ) else {
        unreachable!()
    };
    let services = Scripted::new(vec![Step::Answers(vec![more_time, real])]);
    let metrics = ProxyMetrics::unregistered();
    let mut exchange = Exchange::new(&policy(|_| {}), None, LIMIT).unwrap();
    let h = request_headers();
    let Processed::Continue(c) = exchange
        .request(&services, &head(&h), no_body(), true, false, &metrics)
        .await
        .unwrap()
    else {
        panic!("answered")
    };
    let mut changed = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut changed));
    assert_eq!(changed["x-added"], "yes");
    assert_eq!(count(&metrics, "spurious"), 0);
}

#[tokio::test]
async fn a_head_told_is_held_for_the_bodys_answer_whatever_an_override_says_of_heads() {
    // The override turns heads off (and the body on) after the request's head was told:
    // that head is still held, so the body's answer changes it.
    let p = policy(|p| p.allow_mode_override = true);
    let skip_heads_buffer_body = ModeOverride {
        request_header_mode: 2,
        response_header_mode: 2,
        request_body_mode: 2,
        response_body_mode: 0,
        request_trailer_mode: 0,
        response_trailer_mode: 0,
    };
    let metrics = ProxyMetrics::unregistered();
    let services = Scripted::new(vec![
        overriding(true, skip_heads_buffer_body),
        common_answer(
            Answered::RequestBody,
            0,
            vec![set("x-from-body", "1", 2)],
            None,
        ),
    ]);
    let mut exchange = Exchange::new(&p, None, LIMIT).unwrap();
    let h = request_headers();
    let (c, noted) = continued(&mut exchange, &services, &h, read(b"old", true), &metrics).await;
    assert_eq!(noted.get(), Some((1, LIMIT + 1)));
    let mut changed = h.clone();
    c.changes.iter().for_each(|c| c.apply(&mut changed));
    assert_eq!(changed["x-from-body"], "1");
}
