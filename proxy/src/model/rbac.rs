//! Role-based access control (Envoy's `envoy.filters.http.rbac` and
//! `envoy.filters.network.rbac`): who may reach what, as policies (`rules`: an action and
//! named policies of permissions and principals) or as a match tree (`matcher`: the
//! unified matcher API, whose actions are allow or deny). Evaluated by
//! [`crate::rbac`].

use serde::Serialize;
use std::collections::HashMap;

use super::listener::CidrRange;
use super::route::HeaderMatcher;
use super::types::StringMatcher;

/// One RBAC filter's settings (the connection manager's, or a route's in its place).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RbacConfig {
    /// Enforced: a request (connection) it denies is refused. `None`: nothing enforced (a
    /// route's `RBACPerRoute` without `rbac` turns the filter off this way).
    pub enforced: Option<RbacEngine>,
    /// Shadow: evaluated and counted, never enforced.
    pub shadow: Option<RbacEngine>,
    /// `shadow_rules_stat_prefix`: put before the names of the dynamic metadata the shadow
    /// decision is left in (`shadow_effective_policy_id`, `shadow_engine_result`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub shadow_prefix: String,
}

/// How a decision is reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RbacEngine {
    /// `rules`: with `Allow`, allowed when a policy matches; with `Deny`, denied when one
    /// does; with `Log`, always allowed.
    Policies {
        /// What a match means.
        action: RbacAction,
        /// The policies by name, in name order (the first that matches names the
        /// decision, as in Envoy, whose map is ordered).
        policies: Vec<(String, RbacPolicy)>,
    },
    /// `matcher`: the action of the first match; none (no `on_no_match` either) denies.
    Matcher(Matcher<RbacMatchAction>),
}

/// What a matching policy means (`envoy.config.rbac.v3.RBAC.Action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RbacAction {
    /// `ALLOW`.
    Allow,
    /// `DENY`.
    Deny,
    /// `LOG`: allowed either way; a match is only recorded.
    Log,
}

/// The action of a match tree's leaf (`envoy.config.rbac.v3.Action`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RbacMatchAction {
    /// The name the decision is recorded under.
    pub name: String,
    /// `ALLOW` or `DENY` (`LOG`, which Envoy's matcher does not take either, is rejected
    /// at conversion).
    pub allow: bool,
}

/// One named policy: it matches when one of its permissions and one of its principals
/// do.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RbacPolicy {
    /// What is done (at least one).
    pub permissions: Vec<Permission>,
    /// Who does it (at least one).
    pub principals: Vec<Principal>,
}

/// What a request or connection does (`envoy.config.rbac.v3.Permission`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// `any`.
    Any,
    /// `and_rules`: all of them.
    And(Vec<Permission>),
    /// `or_rules`: one of them.
    Or(Vec<Permission>),
    /// `not_rule`.
    Not(Box<Permission>),
    /// `header`: a request header (never matches a connection).
    Header(HeaderMatcher),
    /// `url_path`: the request's path without its query (never matches a connection).
    UrlPath(StringMatcher),
    /// `destination_ip`: the address the client connected to.
    DestinationIp(CidrRange),
    /// `destination_port`.
    DestinationPort(u16),
    /// `destination_port_range`: `[start, end)`.
    DestinationPortRange(u16, u16),
    /// `requested_server_name`: the TLS SNI (empty without TLS).
    RequestedServerName(StringMatcher),
}

/// Who makes a request or connection (`envoy.config.rbac.v3.Principal`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Principal {
    /// `any`.
    Any,
    /// `and_ids`: all of them.
    And(Vec<Principal>),
    /// `or_ids`: one of them.
    Or(Vec<Principal>),
    /// `not_id`.
    Not(Box<Principal>),
    /// `authenticated`: a client with an identity (a certificate's URI SAN, or a workload
    /// of this node's); with a matcher, one whose identity it matches.
    Authenticated(Option<StringMatcher>),
    /// `direct_remote_ip`: the connection's physical peer, whatever a PROXY protocol
    /// header said.
    DirectRemoteIp(CidrRange),
    /// The deprecated `source_ip`: the connection's remote address (the client a PROXY
    /// protocol header named, else the peer; never `x-forwarded-for`).
    SourceIp(CidrRange),
    /// `remote_ip`: the client as the connection manager worked it out
    /// (`x-forwarded-for` with trusted hops, `use_remote_address`); the peer for a
    /// connection.
    RemoteIp(CidrRange),
    /// `header`: a request header (never matches a connection).
    Header(HeaderMatcher),
    /// `url_path` (never matches a connection).
    UrlPath(StringMatcher),
}

/// A match tree of the unified matcher API (`xds.type.matcher.v3.Matcher`) whose leaves
/// are actions of type `A`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Matcher<A> {
    /// How the input is matched.
    pub kind: MatcherKind<A>,
    /// What applies when nothing matched.
    pub on_no_match: Option<Box<OnMatch<A>>>,
}

/// A matcher's body.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatcherKind<A> {
    /// No body: only `on_no_match` applies.
    Empty,
    /// `matcher_list`: the first field matcher whose predicate holds.
    List(Vec<FieldMatcher<A>>),
    /// `matcher_tree` with `exact_match_map`: the input's value looked up.
    Exact {
        /// What is looked up.
        input: MatchInput,
        /// Values to what they lead to.
        map: HashMap<String, OnMatch<A>>,
    },
    /// `matcher_tree` with `prefix_match_map`: the longest key the input's value starts
    /// with.
    Prefix {
        /// What is looked up.
        input: MatchInput,
        /// Keys to what they lead to, longest key first.
        map: Vec<(String, OnMatch<A>)>,
    },
}

/// One entry of a matcher list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldMatcher<A> {
    /// What must hold.
    pub predicate: Predicate,
    /// What follows when it does.
    pub on_match: OnMatch<A>,
}

/// What a match leads to.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnMatch<A> {
    /// An action: the result.
    Action(A),
    /// A nested matcher, whose result is the result (no match in it: no match).
    Matcher(Box<Matcher<A>>),
}

/// A predicate of a matcher list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Predicate {
    /// `single_predicate`: an input's value against a matcher; an input with no value
    /// does not match.
    Single {
        /// What is read.
        input: MatchInput,
        /// What must hold of it.
        matcher: InputMatcher,
    },
    /// `or_matcher`.
    Or(Vec<Predicate>),
    /// `and_matcher`.
    And(Vec<Predicate>),
    /// `not_matcher`.
    Not(Box<Predicate>),
}

/// What a matcher reads of a request or connection (the input extensions Myelin has).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchInput {
    /// `HttpRequestHeaderMatchInput`: a request header's values joined with `,` (none for
    /// a connection).
    RequestHeader(String),
    /// `SourceIPInput`: the client as the connection manager worked it out.
    SourceIp,
    /// `DirectSourceIPInput`: the connection's peer.
    DirectSourceIp,
    /// `SourcePortInput`.
    SourcePort,
    /// `DestinationIPInput`.
    DestinationIp,
    /// `DestinationPortInput`.
    DestinationPort,
    /// `ServerNameInput`: the TLS SNI (none without one).
    ServerName,
    /// `UriSanInput`: the client's identity (none without one).
    UriSan,
}

/// What must hold of an input's value.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputMatcher {
    /// `value_match`.
    Value(StringMatcher),
    /// `custom_match` with the `Ip` input matcher: an address in one of the ranges.
    Ip(Vec<CidrRange>),
}
