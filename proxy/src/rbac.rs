//! RBAC decisions ([`crate::model::rbac`]): Envoy's RBAC engine and the unified matcher
//! it can be given instead, over what a request or a connection says of itself
//! ([`Subject`]). Pure: the HTTP filter (`filters.rs`) and the connection check
//! (`outbound.rs`) answer and count.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use tracing::debug;

use crate::metrics::ProxyMetrics;
use crate::model::rbac::{
    FieldMatcher, InputMatcher, MatchInput, Matcher, MatcherKind, OnMatch, Permission, Predicate,
    Principal, RbacAction, RbacConfig, RbacEngine, RbacMatchAction, RbacPolicy,
};
use crate::traffic::router::RequestHead;

/// What one RBAC filter's settings decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked<'c> {
    /// The enforced rules let it through.
    pub(crate) allowed: bool,
    /// What the shadow rules decided, when there are some.
    pub(crate) shadow: Option<Decision<'c>>,
}

/// Runs one RBAC filter's settings for `s`: the shadow rules decide and are counted, the
/// enforced ones decide. `filter`: `http` or `network`, for the count.
pub(crate) fn check<'c>(
    config: &'c RbacConfig,
    s: &Subject<'_>,
    filter: &'static str,
    metrics: &ProxyMetrics,
) -> Checked<'c> {
    let mut shadow_decision = None;
    if let Some(shadow) = &config.shadow {
        let d = shadow.decide(s);
        shadow_decision = Some(d);
        let result = if d.allowed {
            "shadow_allowed"
        } else {
            "shadow_denied"
        };
        metrics.rbac(filter, result);
        debug!(target: "myelin::rbac", filter, peer = %s.peer, principal = s.principal.unwrap_or("-"), policy = d.policy.unwrap_or("none"), result, "shadow rules");
    }
    let Some(engine) = &config.enforced else {
        return Checked {
            allowed: true,
            shadow: shadow_decision,
        };
    };
    let d = engine.decide(s);
    let result = if d.allowed { "allowed" } else { "denied" };
    metrics.rbac(filter, result);
    if !d.allowed {
        debug!(target: "myelin::rbac", filter, peer = %s.peer, principal = s.principal.unwrap_or("-"), policy = d.policy.unwrap_or("none"), "denied");
    }
    Checked {
        allowed: d.allowed,
        shadow: shadow_decision,
    }
}

/// What RBAC reads of a request or a connection.
#[derive(Clone, Copy)]
pub(crate) struct Subject<'a> {
    /// The request (HTTP filter); `None` for a connection, where header and path rules
    /// never match.
    pub(crate) head: Option<&'a RequestHead<'a>>,
    /// The connection's remote address (the deprecated `source_ip`, `SourcePortInput`):
    /// its peer, or the client a PROXY protocol header named.
    pub(crate) peer: SocketAddr,
    /// The connection's physical peer (`direct_remote_ip`, `DirectSourceIPInput`),
    /// whatever a PROXY protocol header said.
    pub(crate) direct: IpAddr,
    /// The client as the connection manager worked it out (`remote_ip`): from
    /// `x-forwarded-for` and the like, else the peer.
    pub(crate) remote_ip: IpAddr,
    /// Where the client connected to: the original destination of a captured connection,
    /// a listener's own address otherwise.
    pub(crate) local: SocketAddr,
    /// The TLS SNI the client sent to a listener that terminates TLS.
    pub(crate) sni: Option<&'a str>,
    /// The client's identity: its certificate's (URI SAN, else DNS SAN, else subject),
    /// or the SPIFFE ID of a workload of this node (the node vouches for the pods it
    /// captures, as for the same-node inbound policy).
    pub(crate) principal: Option<&'a str>,
}

/// What an engine decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision<'c> {
    /// Let through.
    pub(crate) allowed: bool,
    /// The policy (or matcher action) that decided; `None` when none matched.
    pub(crate) policy: Option<&'c str>,
}

impl RbacEngine {
    /// The decision for `s`.
    pub(crate) fn decide(&self, s: &Subject<'_>) -> Decision<'_> {
        match self {
            RbacEngine::Policies { action, policies } => {
                let matched = policies
                    .iter()
                    .find(|(_, p)| p.matches(s))
                    .map(|(name, _)| name.as_str());
                let allowed = match action {
                    RbacAction::Allow => matched.is_some(),
                    RbacAction::Deny => matched.is_none(),
                    RbacAction::Log => true,
                };
                Decision {
                    allowed,
                    policy: matched,
                }
            }
            // No action at all (nothing matched, no `on_no_match`) denies.
            RbacEngine::Matcher(m) => match m.find(s) {
                Some(RbacMatchAction { name, allow }) => Decision {
                    allowed: *allow,
                    policy: Some(name),
                },
                None => Decision {
                    allowed: false,
                    policy: None,
                },
            },
        }
    }
}

impl RbacPolicy {
    fn matches(&self, s: &Subject<'_>) -> bool {
        self.permissions.iter().any(|p| p.matches(s))
            && self.principals.iter().any(|p| p.matches(s))
    }
}

impl Permission {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Permission::Any => true,
            Permission::And(all) => all.iter().all(|p| p.matches(s)),
            Permission::Or(any) => any.iter().any(|p| p.matches(s)),
            Permission::Not(p) => !p.matches(s),
            Permission::Header(h) => s.head.is_some_and(|head| h.matches(head)),
            Permission::UrlPath(m) => url_path(s).is_some_and(|p| m.matches(p)),
            Permission::DestinationIp(c) => c.contains(s.local.ip()),
            Permission::DestinationPort(port) => s.local.port() == *port,
            Permission::DestinationPortRange(start, end) => {
                (*start..*end).contains(&s.local.port())
            }
            Permission::RequestedServerName(m) => m.matches(s.sni.unwrap_or("")),
        }
    }
}

impl Principal {
    fn matches(&self, s: &Subject<'_>) -> bool {
        match self {
            Principal::Any => true,
            Principal::And(all) => all.iter().all(|p| p.matches(s)),
            Principal::Or(any) => any.iter().any(|p| p.matches(s)),
            Principal::Not(p) => !p.matches(s),
            Principal::Authenticated(name) => match (s.principal, name) {
                (Some(id), Some(m)) => m.matches(id),
                (Some(_), None) => true,
                (None, _) => false,
            },
            Principal::DirectRemoteIp(c) => c.contains(s.direct),
            Principal::SourceIp(c) => c.contains(s.peer.ip()),
            Principal::RemoteIp(c) => c.contains(s.remote_ip),
            Principal::Header(h) => s.head.is_some_and(|head| h.matches(head)),
            Principal::UrlPath(m) => url_path(s).is_some_and(|p| m.matches(p)),
        }
    }
}

/// The request's path without query or fragment, as Envoy's `url_path` reads it.
fn url_path<'a>(s: &Subject<'a>) -> Option<&'a str> {
    let path = s.head?.path;
    Some(path.split(['?', '#']).next().unwrap_or(path))
}

/// An input's value.
enum Value<'a> {
    Text(Cow<'a, str>),
    Ip(IpAddr),
    Port(u16),
}

impl Value<'_> {
    fn text(&self) -> Cow<'_, str> {
        match self {
            Value::Text(t) => Cow::Borrowed(t.as_ref()),
            Value::Ip(ip) => Cow::Owned(ip.to_string()),
            Value::Port(p) => Cow::Owned(p.to_string()),
        }
    }

    fn ip(&self) -> Option<IpAddr> {
        match self {
            Value::Text(t) => t.parse().ok(),
            Value::Ip(ip) => Some(*ip),
            Value::Port(_) => None,
        }
    }
}

impl MatchInput {
    fn read<'a>(&self, s: &Subject<'a>) -> Option<Value<'a>> {
        Some(match self {
            MatchInput::RequestHeader(name) => Value::Text(Cow::Owned(s.head?.header(name)?)),
            MatchInput::SourceIp => Value::Ip(s.remote_ip),
            MatchInput::DirectSourceIp => Value::Ip(s.direct),
            MatchInput::SourcePort => Value::Port(s.peer.port()),
            MatchInput::DestinationIp => Value::Ip(s.local.ip()),
            MatchInput::DestinationPort => Value::Port(s.local.port()),
            MatchInput::ServerName => Value::Text(Cow::Borrowed(s.sni?)),
            MatchInput::UriSan => Value::Text(Cow::Borrowed(s.principal?)),
        })
    }
}

impl<A> Matcher<A> {
    /// The action the tree leads `s` to; `None` when nothing matched and there is no
    /// `on_no_match`.
    pub(crate) fn find(&self, s: &Subject<'_>) -> Option<&A> {
        let found = match &self.kind {
            MatcherKind::Empty => None,
            MatcherKind::List(list) => list
                .iter()
                .find(|FieldMatcher { predicate, .. }| predicate.holds(s))
                .map(|f| &f.on_match),
            MatcherKind::Exact { input, map } => {
                input.read(s).and_then(|v| map.get(v.text().as_ref()))
            }
            MatcherKind::Prefix { input, map } => input.read(s).and_then(|v| {
                let v = v.text();
                map.iter()
                    .find(|(k, _)| v.starts_with(k.as_str()))
                    .map(|(_, m)| m)
            }),
        };
        match found {
            Some(m) => m.resolve(s),
            None => self.on_no_match.as_deref()?.resolve(s),
        }
    }
}

impl<A> OnMatch<A> {
    fn resolve(&self, s: &Subject<'_>) -> Option<&A> {
        match self {
            OnMatch::Action(a) => Some(a),
            OnMatch::Matcher(m) => m.find(s),
        }
    }
}

impl Predicate {
    fn holds(&self, s: &Subject<'_>) -> bool {
        match self {
            Predicate::Single { input, matcher } => {
                let Some(v) = input.read(s) else {
                    return false;
                };
                match matcher {
                    InputMatcher::Value(m) => m.matches(&v.text()),
                    InputMatcher::Ip(ranges) => v
                        .ip()
                        .is_some_and(|ip| ranges.iter().any(|c| c.contains(ip))),
                }
            }
            Predicate::Or(any) => any.iter().any(|p| p.holds(s)),
            Predicate::And(all) => all.iter().all(|p| p.holds(s)),
            Predicate::Not(p) => !p.holds(s),
        }
    }
}

#[cfg(test)]
mod tests;
