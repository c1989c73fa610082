//! The rate limit service of global rate limiting (`envoy.filters.http.ratelimit`, run by
//! [`crate::filters`]): a request's descriptors go to
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` as one unary gRPC call to
//! the cluster the filter names, over the proxy's own upstream pools (so the service's
//! cluster gets its load balancing, health, TLS and circuit breakers like any other), and
//! its answer says whether the request is over a limit, as Envoy's rate limit client
//! (`ratelimit_impl.cc`) reads it:
//!
//! - `OK` and `OVER_LIMIT` are answers; `UNKNOWN`, a gRPC status other than `OK`, a
//!   response that is not one message, a connection failure, no answer within the
//!   filter's `timeout`: an error (the filter's `failure_mode_deny` says what then);
//! - the answer's `response_headers_to_add` go on the response (or the `429`), its
//!   `request_headers_to_add` on the request, its `raw_body` is the `429`'s body;
//! - its descriptor statuses make the `x-ratelimit-*` headers ([`x_ratelimit_headers`]).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use prost::Message;

use crate::filters::{Descriptor, StreamDone};
use crate::model::filter::GrpcService;
use crate::services::{HeaderValueProto, Reply, Services};

const PATH: &str = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

// The messages of `envoy/service/ratelimit/v3/rls.proto` (and the descriptor of
// `envoy/extensions/common/ratelimit/v3/ratelimit.proto`) the proxy writes and reads, with
// their tags there. Declared with prost rather than taken from `xds-api`: the proxy crate
// carries no xDS types (its model is the interface), and it needs these few fields only;
// the integration tests talk to `xds-api`'s generated server, so the two must agree.

/// `RateLimitRequest`.
#[derive(Clone, PartialEq, Message)]
struct RateLimitRequest {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(message, repeated, tag = "2")]
    descriptors: Vec<DescriptorProto>,
    /// 0: one hit (the service's default).
    #[prost(uint32, tag = "3")]
    hits_addend: u32,
}

/// `RateLimitDescriptor`.
#[derive(Clone, PartialEq, Message)]
struct DescriptorProto {
    #[prost(message, repeated, tag = "1")]
    entries: Vec<Entry>,
    /// Unset: the request's `hits_addend`.
    #[prost(message, optional, tag = "3")]
    hits_addend: Option<UInt64Value>,
}

/// `google.protobuf.UInt64Value`.
#[derive(Clone, PartialEq, Message)]
struct UInt64Value {
    #[prost(uint64, tag = "1")]
    value: u64,
}

/// `RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// `RateLimitResponse`.
#[derive(Clone, PartialEq, Message)]
struct RateLimitResponse {
    /// `Code`: 0 `UNKNOWN`, 1 `OK`, 2 `OVER_LIMIT`.
    #[prost(int32, tag = "1")]
    overall_code: i32,
    #[prost(message, repeated, tag = "2")]
    statuses: Vec<DescriptorStatus>,
    #[prost(message, repeated, tag = "3")]
    response_headers_to_add: Vec<HeaderValueProto>,
    #[prost(message, repeated, tag = "4")]
    request_headers_to_add: Vec<HeaderValueProto>,
    #[prost(bytes = "bytes", tag = "5")]
    raw_body: Bytes,
}

/// `RateLimitResponse.DescriptorStatus`.
#[derive(Clone, PartialEq, Message)]
pub(crate) struct DescriptorStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(message, optional, tag = "2")]
    current_limit: Option<CurrentLimit>,
    #[prost(uint32, tag = "3")]
    limit_remaining: u32,
    #[prost(message, optional, tag = "4")]
    duration_until_reset: Option<ProtoDuration>,
}

/// `RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, Message)]
struct CurrentLimit {
    #[prost(uint32, tag = "1")]
    requests_per_unit: u32,
    /// `Unit`: 0 `UNKNOWN`, then `SECOND`, `MINUTE`, `HOUR`, `DAY`, `MONTH`, `YEAR`.
    #[prost(int32, tag = "2")]
    unit: i32,
    #[prost(string, tag = "3")]
    name: String,
}

/// `google.protobuf.Duration`.
#[derive(Clone, PartialEq, Message)]
struct ProtoDuration {
    #[prost(int64, tag = "1")]
    seconds: i64,
    #[prost(int32, tag = "2")]
    nanos: i32,
}

/// The service's answer.
#[derive(Debug, Default)]
pub(crate) struct Answer {
    pub(crate) over_limit: bool,
    pub(crate) statuses: Vec<DescriptorStatus>,
    /// For the response (or the answer to a request over a limit).
    pub(crate) response_headers: Vec<(HeaderName, HeaderValue)>,
    /// For the request going upstream.
    pub(crate) request_headers: Vec<(HeaderName, HeaderValue)>,
    /// The body of the answer to a request over a limit.
    pub(crate) body: Bytes,
}

/// Tells the service about the descriptors of a stream that ended
/// (`apply_on_stream_done`), not waiting for its answer (Envoy ignores it too).
pub(crate) fn report(services: &dyn Services, done: StreamDone) {
    let service = &done.policy.service;
    match request(
        service,
        &done.domain,
        &done.descriptors,
        done.policy.timeout,
    ) {
        Ok(req) => services.send_detached(&service.cluster, req, done.policy.timeout),
        Err(error) => {
            tracing::debug!(target: "myelin::ratelimit", %error, "stream-done call not sent")
        }
    }
}

/// Asks `service` about `descriptors` in `domain`, within `timeout`; `Err`: why there is
/// no answer.
pub(crate) async fn ask(
    services: &dyn Services,
    service: &GrpcService,
    domain: &str,
    descriptors: &[Descriptor],
    timeout: Duration,
) -> Result<Answer, String> {
    let req = request(service, domain, descriptors, timeout)?;
    let reply = tokio::time::timeout(timeout, services.send(&service.cluster, req, true))
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))??;
    answer(reply)
}

/// The call: a `RateLimitRequest` in a gRPC frame.
fn request(
    service: &GrpcService,
    domain: &str,
    descriptors: &[Descriptor],
    timeout: Duration,
) -> Result<Request<Bytes>, String> {
    let message = RateLimitRequest {
        domain: domain.to_owned(),
        descriptors: descriptors
            .iter()
            .map(|d| DescriptorProto {
                hits_addend: d.hits.map(|value| UInt64Value { value }),
                entries: d
                    .entries
                    .iter()
                    .map(|(key, value)| Entry {
                        key: key.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            })
            .collect(),
        hits_addend: 0,
    };
    crate::services::grpc_request(service, PATH, &message, timeout)
}

/// Reads the service's reply.
fn answer(reply: Reply) -> Result<Answer, String> {
    let body = reply.grpc_message()?;
    let r = RateLimitResponse::decode(body).map_err(|e| format!("the response message: {e}"))?;
    let over_limit = match r.overall_code {
        1 => false,
        2 => true,
        c => return Err(format!("overall_code {c} (neither OK nor OVER_LIMIT)")),
    };
    Ok(Answer {
        over_limit,
        statuses: r.statuses,
        response_headers: headers(r.response_headers_to_add),
        request_headers: headers(r.request_headers_to_add),
        body: r.raw_body,
    })
}

/// The headers a service named; those that are not valid HTTP are left out.
fn headers(list: Vec<HeaderValueProto>) -> Vec<(HeaderName, HeaderValue)> {
    list.into_iter()
        .filter_map(|h| {
            let name = HeaderName::from_bytes(h.key.as_bytes()).ok()?;
            let value = if h.raw_value.is_empty() {
                HeaderValue::from_str(&h.value).ok()?
            } else {
                HeaderValue::from_bytes(&h.raw_value).ok()?
            };
            Some((name, value))
        })
        .collect()
}

/// The `x-ratelimit-*` headers of an answer's descriptor statuses (Envoy's
/// `XRateLimitHeaderUtils`, draft 03 of the IETF rate limit headers): the limit with the
/// fewest requests remaining, and every limit's quota policy.
pub(crate) fn x_ratelimit_headers(statuses: &[DescriptorStatus]) -> Vec<(HeaderName, HeaderValue)> {
    let mut least: Option<&DescriptorStatus> = None;
    let mut policies = String::new();
    for s in statuses {
        let Some(limit) = &s.current_limit else {
            continue;
        };
        if least.is_none_or(|l| s.limit_remaining < l.limit_remaining) {
            least = Some(s);
        }
        let window: u64 = match limit.unit {
            1 => 1,
            2 => 60,
            3 => 3_600,
            4 => 86_400,
            5 => 30 * 86_400,
            6 => 365 * 86_400,
            _ => 0,
        };
        if window != 0 {
            policies.push_str(&format!(", {};w={window}", limit.requests_per_unit));
            if !limit.name.is_empty() {
                policies.push_str(&format!(";name=\"{}\"", limit.name));
            }
        }
    }
    let Some(least) = least else {
        return Vec::new();
    };
    let limit = least
        .current_limit
        .as_ref()
        .map_or(0, |l| l.requests_per_unit);
    let reset = least.duration_until_reset.as_ref().map_or(0, |d| d.seconds);
    [
        ("x-ratelimit-limit", format!("{limit}{policies}")),
        ("x-ratelimit-remaining", least.limit_remaining.to_string()),
        ("x-ratelimit-reset", reset.to_string()),
    ]
    .into_iter()
    .filter_map(|(n, v)| Some((HeaderName::from_static(n), HeaderValue::from_str(&v).ok()?)))
    .collect()
}

/// A service's reply: `OVER_LIMIT` or `OK`, with headers for the response and the request.
#[cfg(test)]
pub(crate) fn test_reply(
    over_limit: bool,
    response_headers: &[(&str, &str)],
    request_headers: &[(&str, &str)],
) -> Reply {
    use bytes::{BufMut, BytesMut};
    use http::{HeaderMap, StatusCode};
    let list = |l: &[(&str, &str)]| {
        l.iter()
            .map(|(k, v)| HeaderValueProto {
                key: (*k).to_owned(),
                value: (*v).to_owned(),
                raw_value: vec![],
            })
            .collect()
    };
    let message = RateLimitResponse {
        overall_code: if over_limit { 2 } else { 1 },
        response_headers_to_add: list(response_headers),
        request_headers_to_add: list(request_headers),
        ..Default::default()
    };
    let mut body = BytesMut::new();
    body.put_u8(0);
    body.put_u32(message.encoded_len() as u32);
    message.encode(&mut body).expect("a BytesMut grows");
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    Reply {
        status: StatusCode::OK,
        headers: HeaderMap::new(),
        body: body.freeze(),
        trailers: Some(trailers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut, BytesMut};
    use http::{HeaderMap, StatusCode};

    fn service() -> GrpcService {
        GrpcService {
            cluster: "rls".into(),
            authority: "rls.example".into(),
            metadata: vec![("x-tenant".into(), "a".into())],
        }
    }

    fn reply(message: &RateLimitResponse, status: &str) -> Reply {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(message.encoded_len() as u32);
        message.encode(&mut body).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_str(status).unwrap());
        Reply {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: body.freeze(),
            trailers: Some(trailers),
        }
    }

    fn status(limit: u32, unit: i32, name: &str, remaining: u32, reset: i64) -> DescriptorStatus {
        DescriptorStatus {
            code: 1,
            current_limit: Some(CurrentLimit {
                requests_per_unit: limit,
                unit,
                name: name.into(),
            }),
            limit_remaining: remaining,
            duration_until_reset: Some(ProtoDuration {
                seconds: reset,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn the_request_is_a_framed_rate_limit_request() {
        let descriptors = vec![
            Descriptor {
                entries: vec![("generic_key".to_owned(), "a".to_owned())],
                hits: None,
            },
            Descriptor {
                entries: vec![
                    ("destination_cluster".to_owned(), "web".to_owned()),
                    ("user".to_owned(), "x".to_owned()),
                ],
                hits: Some(7),
            },
        ];
        let req = request(&service(), "edge", &descriptors, Duration::from_millis(20)).unwrap();
        assert_eq!(
            req.uri().to_string(),
            "http://rls.example/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        );
        assert_eq!(req.headers()["content-type"], "application/grpc");
        assert_eq!(req.headers()["grpc-timeout"], "20m");
        assert_eq!(req.headers()["x-tenant"], "a");
        let mut body = req.into_body();
        assert_eq!(body.get_u8(), 0);
        assert_eq!(body.get_u32() as usize, body.len());
        let m = RateLimitRequest::decode(body).unwrap();
        assert_eq!(m.domain, "edge");
        assert_eq!(m.descriptors.len(), 2);
        assert_eq!(m.descriptors[1].entries[1].key, "user");
        assert_eq!(m.descriptors[1].entries[1].value, "x");
        assert_eq!(m.descriptors[0].hits_addend, None);
        assert_eq!(m.descriptors[1].hits_addend.as_ref().unwrap().value, 7);
    }

    #[test]
    fn answers_and_errors() {
        let over = RateLimitResponse {
            overall_code: 2,
            response_headers_to_add: vec![HeaderValueProto {
                key: "x-why".into(),
                value: "quota".into(),
                raw_value: vec![],
            }],
            request_headers_to_add: vec![HeaderValueProto {
                key: "bad name".into(),
                value: "dropped".into(),
                raw_value: vec![],
            }],
            raw_body: Bytes::from_static(b"slow down"),
            ..Default::default()
        };
        let a = answer(reply(&over, "0")).unwrap();
        assert!(a.over_limit);
        assert_eq!(a.response_headers[0].0, "x-why");
        assert!(a.request_headers.is_empty());
        assert_eq!(a.body, "slow down");
        let ok = RateLimitResponse {
            overall_code: 1,
            ..Default::default()
        };
        assert!(!answer(reply(&ok, "0")).unwrap().over_limit);
        let unknown = RateLimitResponse::default();
        assert!(answer(reply(&unknown, "0"))
            .unwrap_err()
            .contains("overall_code 0"));
        assert_eq!(answer(reply(&ok, "14")).unwrap_err(), "grpc-status 14");
        let mut no_status = reply(&ok, "0");
        no_status.trailers = None;
        assert_eq!(answer(no_status).unwrap_err(), "no grpc-status");
        let mut cut = reply(&over, "0");
        cut.body.truncate(cut.body.len() - 1);
        assert!(answer(cut).unwrap_err().contains("framed in"));
        let mut http = reply(&ok, "0");
        http.status = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(answer(http).unwrap_err(), "HTTP status 503");
    }

    #[test]
    fn x_ratelimit_headers_name_the_tightest_limit_and_all_policies() {
        let h = x_ratelimit_headers(&[
            status(100, 2, "", 40, 30),
            status(10, 1, "per-ip", 3, 1),
            // No limit (a descriptor the service has no rule for): not counted.
            DescriptorStatus {
                code: 1,
                ..Default::default()
            },
        ]);
        let get = |n: &str| h.iter().find(|(k, _)| k == n).unwrap().1.clone();
        assert_eq!(
            get("x-ratelimit-limit"),
            "10, 100;w=60, 10;w=1;name=\"per-ip\""
        );
        assert_eq!(get("x-ratelimit-remaining"), "3");
        assert_eq!(get("x-ratelimit-reset"), "1");
        assert!(x_ratelimit_headers(&[]).is_empty());
    }
}
