//! The HTTP filters a connection manager runs before its router (Envoy `http_filters`):
//! fault injection (`envoy.filters.http.fault`) and CORS (`envoy.filters.http.cors`), and
//! their per-route settings (`typed_per_filter_config` of a route, a virtual host or a
//! route table).
//!
//! A filter's per-route settings are found by the filter's name in the connection manager,
//! as in Envoy; the most specific level that has an entry wins (route, then virtual host,
//! then route table). CORS policies merge field by field across the levels, as Envoy's
//! CORS filter does.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Serialize, Serializer};

use super::listener::HeaderText;
use super::opt_duration_str;
use super::route::HeaderMatcher;
use super::types::StringMatcher;

/// The filters before the router, in the connection manager's order. Empty for most
/// connection managers: then a request pays one length check.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct HttpFilters(pub Vec<HttpFilter>);

impl HttpFilters {
    /// Whether there is no filter before the router.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One filter of a connection manager.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HttpFilter {
    /// Its name in the connection manager: the key of its per-route settings.
    pub name: String,
    /// `disabled`: off unless a route's settings turn it on.
    pub disabled: bool,
    /// What it is.
    pub kind: FilterKind,
}

/// The filters Myelin has.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Fault injection with the filter's own settings (used where no route has any) and
    /// the count of its faults in progress (`max_active_faults`).
    Fault {
        /// The settings of the filter itself.
        policy: Arc<FaultPolicy>,
        /// Faults of this filter in progress.
        active: ActiveFaults,
    },
    /// CORS: policies come from the routes only.
    Cors,
}

/// The faults of one fault filter in progress, shared by every request through it (a new
/// listener config starts a new count, as a new Envoy filter config does).
#[derive(Debug, Clone, Default)]
pub struct ActiveFaults(pub Arc<AtomicU32>);

impl ActiveFaults {
    /// Faults in progress now.
    pub fn now(&self) -> u32 {
        self.0.load(Ordering::Relaxed)
    }
}

// A counter is not configuration: two filters with the same settings are the same config.
impl PartialEq for ActiveFaults {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Serialize for ActiveFaults {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.now())
    }
}

/// Per-route settings of filters, by filter name.
pub type FilterSettings = BTreeMap<String, FilterSetting>;

/// One filter's settings at one level (`typed_per_filter_config` entry).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterSetting {
    /// The filter is off here (`FilterConfig.disabled`); `false` turns a filter that is
    /// disabled in the connection manager on.
    pub disabled: bool,
    /// The settings (`None`: only `disabled` was given).
    pub policy: Option<FilterPolicy>,
}

/// A filter's per-route settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterPolicy {
    /// `envoy.extensions.filters.http.fault.v3.HTTPFault`: replaces the filter's own.
    Fault(Arc<FaultPolicy>),
    /// `envoy.extensions.filters.http.cors.v3.CorsPolicy`.
    Cors(Arc<CorsPolicy>),
}

/// A fraction of requests (`type.v3.FractionalPercent`): `numerator` out of `denominator`
/// (100, 10,000 or 1,000,000), at most all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Fraction {
    /// Requests chosen per `denominator`.
    pub numerator: u32,
    /// 100, 10,000 or 1,000,000.
    pub denominator: u32,
}

impl Fraction {
    /// None of them (an unset `percentage` of a fault, as in Envoy).
    pub const NONE: Fraction = Fraction {
        numerator: 0,
        denominator: 100,
    };
    /// All of them.
    pub const ALL: Fraction = Fraction {
        numerator: 100,
        denominator: 100,
    };

    /// Whether a request whose roll (uniform in `0..u32::MAX`) is `roll` is chosen.
    pub fn chooses(&self, roll: u32) -> bool {
        if self.numerator >= self.denominator {
            return true;
        }
        // Envoy draws `random % denominator < numerator`.
        roll % self.denominator < self.numerator
    }

    /// The same denominator with at most `numerator` (a header's percentage is capped by
    /// the configured one).
    pub fn capped(self, numerator: u32) -> Fraction {
        Fraction {
            numerator: numerator.min(self.numerator),
            ..self
        }
    }
}

/// Fault injection settings (`HTTPFault`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultPolicy {
    /// Delay before the request goes on.
    pub delay: Option<FaultDelay>,
    /// Answer instead of forwarding (after the delay, if both happen).
    pub abort: Option<FaultAbort>,
    /// Only requests routed to this cluster (`upstream_cluster`).
    pub upstream_cluster: Option<String>,
    /// Only requests whose headers match all of these.
    pub headers: Vec<HeaderMatcher>,
    /// Only requests whose `x-envoy-downstream-service-node` is one of these.
    pub downstream_nodes: Vec<String>,
    /// No new fault while this many of the filter's faults are in progress.
    pub max_active_faults: Option<u32>,
}

/// A fault delay.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultDelay {
    /// How long.
    pub duration: DelaySource,
    /// Of which requests.
    pub percentage: Fraction,
}

/// Where a delay's length comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DelaySource {
    /// `fixed_delay`.
    Fixed(#[serde(serialize_with = "duration")] Duration),
    /// `header_delay`: the request's `x-envoy-fault-delay-request` (milliseconds), its
    /// share capped by `x-envoy-fault-delay-request-percentage`.
    Header,
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    opt_duration_str(&Some(*d), s)
}

/// A fault abort.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FaultAbort {
    /// The answer.
    pub status: AbortStatus,
    /// Of which requests.
    pub percentage: Fraction,
}

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AbortStatus {
    /// This HTTP status (200-599).
    Http(u16),
    /// This gRPC status (in a `200`, as Envoy does).
    Grpc(u32),
    /// `header_abort`: the request's `x-envoy-fault-abort-request` (an HTTP status) or
    /// `x-envoy-fault-abort-grpc-request` (a gRPC status), its share capped by
    /// `x-envoy-fault-abort-request-percentage`.
    Header,
}

/// A CORS policy (`envoy.extensions.filters.http.cors.v3.CorsPolicy`, or the deprecated
/// `cors` of a virtual host or route action). Unset fields are taken from the less specific
/// levels.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CorsPolicy {
    /// Origins allowed (any matcher; one that matches `*` allows all).
    pub allow_origin: Vec<StringMatcher>,
    /// `access-control-allow-methods` of preflight answers (`*`: the requested method).
    pub allow_methods: Option<HeaderText>,
    /// `access-control-allow-headers` of preflight answers (`*`: the requested headers).
    pub allow_headers: Option<HeaderText>,
    /// `access-control-expose-headers` of answers to allowed origins.
    pub expose_headers: Option<HeaderText>,
    /// `access-control-max-age` of preflight answers.
    pub max_age: Option<HeaderText>,
    /// `access-control-allow-credentials: true`.
    pub allow_credentials: Option<bool>,
    /// `access-control-allow-private-network: true` to preflights that ask for it.
    pub allow_private_network_access: Option<bool>,
    /// Preflights from origins not allowed go upstream (Envoy's default) instead of being
    /// answered without `access-control-allow-origin`.
    pub forward_not_matching_preflights: Option<bool>,
    /// Share of requests the policy is enforced on (`filter_enabled`); `None`: all.
    pub filter_enabled: Option<Fraction>,
    /// Share of requests whose origin is only checked and counted (`shadow_enabled`).
    pub shadow_enabled: Option<Fraction>,
}
