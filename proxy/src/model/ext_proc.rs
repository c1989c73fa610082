//! External processing (`envoy.filters.http.ext_proc`): a gRPC service of the operator's
//! (`envoy.service.ext_proc.v3.ExternalProcessor`) is told a request's headers and its
//! response's headers (and, held or chunk by chunk, their bodies) over one stream per request, and may
//! change them or answer the request itself. Run by [`crate::ext_proc`] from the filter chain and again when the
//! response comes.

use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::filter::GrpcService;
use super::types::{Regex, StringMatcher};

/// The filter's settings (`ExternalProcessor`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExtProcPolicy {
    /// The processor (`grpc_service`).
    pub service: GrpcService,
    /// What is sent (`processing_mode`).
    pub mode: ProcessingMode,
    /// How long the processor may take to answer each message (`message_timeout`, 200 ms
    /// by default; zero: every answer is late).
    #[serde(serialize_with = "millis")]
    pub message_timeout: Duration,
    /// An unusable stream (not opened, failed, late) lets the request and response go on
    /// unprocessed (`failure_mode_allow`), instead of a `500` (a `504` when late).
    pub failure_mode_allow: bool,
    /// Which header changes the processor may make (`mutation_rules`).
    pub rules: MutationRules,
    /// Which headers the processor is told (`forward_rules`).
    pub forward: ForwardRules,
    /// When the route is chosen again after the request's headers were processed.
    pub route_cache: RouteCache,
    /// The processor's `immediate_response` is ignored and processing stops
    /// (`disable_immediate_response`).
    pub disable_immediate_response: bool,
    /// The processor may change the mode for the rest of the request in its answer to a
    /// head (`allow_mode_override`, the answer's `mode_override`).
    pub allow_mode_override: bool,
    /// `stat_prefix`: a label of the filter's counter.
    pub stat_prefix: Arc<str>,
}

/// Which parts of a request and its response go to the processor (`ProcessingMode`;
/// bodies are sent held (`BUFFERED`, `BUFFERED_PARTIAL`), chunk by chunk (`STREAMED`) or
/// not at all (`NONE`), trailers never: their modes must be `SKIP`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProcessingMode {
    /// `request_header_mode` is `SEND` (or `DEFAULT`).
    pub request_headers: bool,
    /// `response_header_mode` is `SEND` (or `DEFAULT`).
    pub response_headers: bool,
    /// `request_body_mode`.
    pub request_body: BodyMode,
    /// `response_body_mode`.
    pub response_body: BodyMode,
}

impl Default for ProcessingMode {
    /// Envoy's default: both headers sent.
    fn default() -> Self {
        ProcessingMode {
            request_headers: true,
            response_headers: true,
            request_body: BodyMode::None,
            response_body: BodyMode::None,
        }
    }
}

/// How a body goes to the processor (`BodySendMode`). Both held modes hold at most the
/// connection manager's buffer limit (the listener's `per_connection_buffer_limit_bytes`, 1
/// MiB by default) and send it after the head, held until the processor answers; a
/// streamed body has at most that limit told and not answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum BodyMode {
    /// `NONE`: not sent.
    None,
    /// `BUFFERED`: the whole body. A longer request body is answered `413`, a longer
    /// response body `500`, as Envoy's buffering filters do.
    Buffered,
    /// `BUFFERED_PARTIAL`: the body up to the limit, the rest (when longer) going on
    /// untold after the processor's answer; `content-length` is removed (the processor may
    /// change the part it sees).
    BufferedPartial,
    /// `STREAMED`: each chunk told as it comes and sent on as its answer leaves it, in
    /// order, after the head went; `content-length` is removed.
    Streamed,
}

impl BodyMode {
    /// The body is sent.
    pub fn sent(self) -> bool {
        self != BodyMode::None
    }

    /// The body is told in part or in chunks: its `content-length` goes with the head.
    pub fn told_in_part(self) -> bool {
        matches!(self, BodyMode::BufferedPartial | BodyMode::Streamed)
    }

    /// A `BodySendMode` value Myelin takes (not `FULL_DUPLEX_STREAMED`, 4, nor unknown
    /// ones), from config or from a processor's `mode_override`.
    pub fn from_proto(v: i32) -> Option<BodyMode> {
        match v {
            0 => Some(BodyMode::None),
            1 => Some(BodyMode::Streamed),
            2 => Some(BodyMode::Buffered),
            3 => Some(BodyMode::BufferedPartial),
            _ => None,
        }
    }
}

/// Whether a `HeaderSendMode` value sends the headers (`DEFAULT`, `SEND`) or not (`SKIP`);
/// `None`: unknown.
pub fn headers_sent(v: i32) -> Option<bool> {
    match v {
        0 | 1 => Some(true),
        2 => Some(false),
        _ => None,
    }
}

/// `HeaderMutationRules` (Envoy's `MutationRules::Checker`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MutationRules {
    /// `allow_all_routing`: `host`, `:authority`, `:method` and `:scheme` may change too.
    pub allow_all_routing: bool,
    /// `allow_envoy`: `x-envoy-*` headers may change too.
    pub allow_envoy: bool,
    /// `disallow_system`: no `:`-header may change.
    pub disallow_system: bool,
    /// `disallow_all`: no header may change (unless `allow_expression` matches it).
    pub disallow_all: bool,
    /// `allow_expression`: names (lower case, whole) that may always change, unless
    /// `disallow_expression` matches them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allow_expression: Option<Regex>,
    /// `disallow_expression`: names that may never change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disallow_expression: Option<Regex>,
    /// `disallow_is_error`: a disallowed change fails the exchange (a `500`) instead of
    /// being skipped.
    pub disallow_is_error: bool,
}

impl MutationRules {
    /// Whether the header `name` (lower case) may be changed (Envoy's `isAllowed`).
    pub fn allows(&self, name: &str) -> bool {
        if self
            .disallow_expression
            .as_ref()
            .is_some_and(|r| r.is_full_match(name))
        {
            return false;
        }
        if self
            .allow_expression
            .as_ref()
            .is_some_and(|r| r.is_full_match(name))
        {
            return true;
        }
        if self.disallow_all {
            return false;
        }
        let routing = matches!(name, "host" | ":authority" | ":method" | ":scheme");
        if routing && !self.allow_all_routing {
            return false;
        }
        if self.disallow_system && name.starts_with(':') {
            return false;
        }
        self.allow_envoy || !name.starts_with("x-envoy")
    }
}

/// `HeaderForwardingRules`: which headers the processor is told.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ForwardRules {
    /// `allowed_headers` (`None`: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<Vec<StringMatcher>>,
    /// `disallowed_headers`: never told, even when allowed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub disallowed: Vec<StringMatcher>,
}

impl ForwardRules {
    /// Whether the header `name` is told.
    pub fn forwards(&self, name: &str) -> bool {
        !self.disallowed.iter().any(|m| m.matches(name))
            && self
                .allowed
                .as_ref()
                .is_none_or(|a| a.iter().any(|m| m.matches(name)))
    }
}

/// `route_cache_action` (with the older `disable_clear_route_cache`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteCache {
    /// `DEFAULT`: chosen again when the processor's answer says `clear_route_cache`.
    #[default]
    Default,
    /// `CLEAR`: chosen again after every answer to the request's headers.
    Clear,
    /// `RETAIN` (or `disable_clear_route_cache`): never chosen again.
    Retain,
}

/// A route's `ExtProcPerRoute`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtProcRoute {
    /// `disabled: true`: no processing on the route.
    Disabled,
    /// `overrides`.
    Overrides {
        /// `processing_mode`, in place of the filter's.
        #[serde(skip_serializing_if = "Option::is_none")]
        mode: Option<ProcessingMode>,
        /// `grpc_service`, in place of the filter's.
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<GrpcService>,
        /// `grpc_initial_metadata`: more headers on the stream's request (replacing the
        /// service's of the same name).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        metadata: Vec<(String, String)>,
    },
}

fn millis<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_rules_follow_envoys_checker() {
        let default = MutationRules::default();
        for name in ["x-user", ":path", ":status", "content-type"] {
            assert!(default.allows(name), "{name}");
        }
        for name in ["host", ":authority", ":method", ":scheme", "x-envoy-foo"] {
            assert!(!default.allows(name), "{name}");
        }
        let routing = MutationRules {
            allow_all_routing: true,
            allow_envoy: true,
            ..MutationRules::default()
        };
        assert!(routing.allows(":authority") && routing.allows("x-envoy-foo"));
        let system = MutationRules {
            disallow_system: true,
            ..MutationRules::default()
        };
        assert!(!system.allows(":path") && system.allows("x-user"));
        let expressions = MutationRules {
            disallow_all: true,
            allow_expression: Some(Regex::new("x-allowed-.*").unwrap()),
            disallow_expression: Some(Regex::new("x-allowed-not").unwrap()),
            ..MutationRules::default()
        };
        assert!(expressions.allows("x-allowed-1"));
        assert!(!expressions.allows("x-allowed-not"));
        assert!(!expressions.allows("x-user"));
        // The allow expression wins over the routing rule, as in Envoy.
        let host = MutationRules {
            allow_expression: Some(Regex::new("host").unwrap()),
            ..MutationRules::default()
        };
        assert!(host.allows("host") && !host.allows(":authority"));
    }

    #[test]
    fn forward_rules_disallow_over_allow() {
        let all = ForwardRules::default();
        assert!(all.forwards("anything"));
        let rules = ForwardRules {
            allowed: Some(vec![StringMatcher::exact("a"), StringMatcher::exact("b")]),
            disallowed: vec![StringMatcher::exact("b")],
        };
        assert!(rules.forwards("a"));
        assert!(!rules.forwards("b"));
        assert!(!rules.forwards("c"));
    }
}
