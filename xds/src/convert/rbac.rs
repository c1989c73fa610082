//! RBAC filters (`envoy.filters.http.rbac`, `envoy.filters.network.rbac`) and the unified
//! matcher (`xds.type.matcher.v3.Matcher`) they take -> [`myelin_proxy::model::rbac`].
//!
//! What Myelin cannot evaluate is rejected, never dropped: CEL conditions, metadata and
//! filter state, extension permissions (`matcher`, `uri_template`), audit logging, inputs
//! and matchers other than those [`mr::MatchInput`] and [`mr::InputMatcher`] name.

use myelin_proxy::model::rbac as mr;
use xds_api::pb::envoy::config::rbac::v3 as pb;
use xds_api::pb::envoy::r#type::matcher::v3 as envoy_matcher;
use xds_api::pb::google::protobuf;
use xds_api::pb::xds::core::v3::TypedExtensionConfig;
use xds_api::pb::xds::r#type::matcher::v3 as xm;

use super::common::string_matcher;
use super::{ext, idx, join, listener, route, Cx, Reason};

const ACTION_URL: &str = "type.googleapis.com/envoy.config.rbac.v3.Action";
const HEADER_INPUT_URL: &str =
    "type.googleapis.com/envoy.type.matcher.v3.HttpRequestHeaderMatchInput";
const IP_MATCHER_URL: &str =
    "type.googleapis.com/envoy.extensions.matching.input_matchers.ip.v3.Ip";

/// Deeper rules or matchers than this are refused (a config is not a stack overflow).
const MAX_DEPTH: usize = 32;

/// Whether rules are for requests (the HTTP filter) or connections (the network filter).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layer {
    Http,
    Network,
}

/// The HTTP filter's settings (in a connection manager or a route's `RBACPerRoute`).
pub(super) fn http_rbac(cx: &mut Cx, p: &str, r: &ext::HttpRbac) -> Option<mr::RbacConfig> {
    let ext::HttpRbac {
        rules,
        shadow_rules,
        shadow_rules_stat_prefix,
        matcher,
        shadow_matcher,
        rules_stat_prefix: _,
        // Counters per policy: Myelin counts per filter (`myelin_proxy_rbac_total`) and
        // logs the deciding policy instead; nothing is decided differently.
        track_per_rule_stats: _,
    } = r;
    let before = cx.errs.len();
    let enforced = engine(
        cx,
        p,
        "rules",
        rules.as_ref(),
        "matcher",
        matcher.as_ref(),
        Layer::Http,
    );
    let shadow = engine(
        cx,
        p,
        "shadow_rules",
        shadow_rules.as_ref(),
        "shadow_matcher",
        shadow_matcher.as_ref(),
        Layer::Http,
    );
    (cx.errs.len() == before).then_some(mr::RbacConfig {
        enforced: enforced.flatten(),
        shadow: shadow.flatten(),
        shadow_prefix: shadow_rules_stat_prefix.clone(),
    })
}

/// The network filter's settings.
pub(super) fn network_rbac(cx: &mut Cx, p: &str, r: &ext::NetworkRbac) -> Option<mr::RbacConfig> {
    let ext::NetworkRbac {
        rules,
        shadow_rules,
        stat_prefix: _,
        enforcement_type,
        shadow_rules_stat_prefix: _,
        matcher,
        shadow_matcher,
        delay_deny,
        enforce_on_transport_ready,
    } = r;
    let before = cx.errs.len();
    // `CONTINUOUS` re-decides on metadata that protocol decoders (Mongo, Kafka, ...) emit;
    // Myelin has none, so once is all there is.
    if *enforcement_type != 0 {
        cx.reject(
            join(p, "enforcement_type"),
            Reason::UnsupportedValue("`CONTINUOUS`".into()),
        );
    }
    cx.unsupported(p, "delay_deny", delay_deny);
    // Myelin decides once the connection's chain is picked, after its TLS handshake when
    // the chain terminates TLS: `true` is what it does anyway.
    let _ = enforce_on_transport_ready;
    let enforced = engine(
        cx,
        p,
        "rules",
        rules.as_ref(),
        "matcher",
        matcher.as_ref(),
        Layer::Network,
    );
    let shadow = engine(
        cx,
        p,
        "shadow_rules",
        shadow_rules.as_ref(),
        "shadow_matcher",
        shadow_matcher.as_ref(),
        Layer::Network,
    );
    (cx.errs.len() == before).then_some(mr::RbacConfig {
        enforced: enforced.flatten(),
        shadow: shadow.flatten(),
        // The network filter's shadow decision goes to connection metadata, which
        // nothing in Myelin reads.
        shadow_prefix: String::new(),
    })
}

/// The engine of `rules` or `matcher` (the matcher wins when both are set, as in Envoy);
/// `Some(None)` when neither is.
fn engine(
    cx: &mut Cx,
    p: &str,
    rules_field: &str,
    rules: Option<&pb::Rbac>,
    matcher_field: &str,
    matcher: Option<&xm::Matcher>,
    layer: Layer,
) -> Option<Option<mr::RbacEngine>> {
    if let Some(m) = matcher {
        let m = match_tree(cx, &join(p, matcher_field), m, layer, 0)?;
        return Some(Some(mr::RbacEngine::Matcher(m)));
    }
    match rules {
        Some(r) => Some(Some(policies(cx, &join(p, rules_field), r)?)),
        None => Some(None),
    }
}

/// The policies of `rules` (header and path rules are taken in a network filter too, as
/// Envoy takes them: they never match a connection).
fn policies(cx: &mut Cx, p: &str, r: &pb::Rbac) -> Option<mr::RbacEngine> {
    let pb::Rbac {
        action,
        policies,
        audit_logging_options,
    } = r;
    cx.unsupported(p, "audit_logging_options", audit_logging_options);
    let action = match pb::rbac::Action::try_from(*action) {
        Ok(pb::rbac::Action::Allow) => mr::RbacAction::Allow,
        Ok(pb::rbac::Action::Deny) => mr::RbacAction::Deny,
        Ok(pb::rbac::Action::Log) => mr::RbacAction::Log,
        Err(_) => {
            cx.reject(
                join(p, "action"),
                Reason::Invalid(format!("{action} is not an action")),
            );
            return None;
        }
    };
    let mut named: Vec<_> = policies.iter().collect();
    named.sort_unstable_by_key(|(name, _)| *name);
    let mut out = Vec::with_capacity(named.len());
    let mut ok = true;
    for (name, policy) in named {
        let pp = format!("{}[{name:?}]", join(p, "policies"));
        match self::policy(cx, &pp, policy) {
            Some(policy) => out.push((name.clone(), policy)),
            None => ok = false,
        }
    }
    ok.then_some(mr::RbacEngine::Policies {
        action,
        policies: out,
    })
}

fn policy(cx: &mut Cx, p: &str, policy: &pb::Policy) -> Option<mr::RbacPolicy> {
    let pb::Policy {
        permissions,
        principals,
        condition,
        checked_condition,
    } = policy;
    // CEL expressions: Myelin has no CEL evaluator.
    cx.unsupported(p, "condition", condition);
    cx.unsupported(p, "checked_condition", checked_condition);
    if permissions.is_empty() {
        cx.reject(join(p, "permissions"), Reason::Missing);
    }
    if principals.is_empty() {
        cx.reject(join(p, "principals"), Reason::Missing);
    }
    let permissions: Option<Vec<_>> = permissions
        .iter()
        .enumerate()
        .map(|(i, x)| permission(cx, &idx(p, "permissions", i), x, 0))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    let principals: Option<Vec<_>> = principals
        .iter()
        .enumerate()
        .map(|(i, x)| principal(cx, &idx(p, "principals", i), x, 0))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    Some(mr::RbacPolicy {
        permissions: permissions?,
        principals: principals?,
    })
}

fn too_deep(cx: &mut Cx, p: &str, depth: usize) -> bool {
    if depth > MAX_DEPTH {
        cx.reject(
            p,
            Reason::Invalid(format!("nested more than {MAX_DEPTH} levels deep")),
        );
    }
    depth > MAX_DEPTH
}

/// `any` must be `true` (Envoy's validation).
fn any(cx: &mut Cx, p: &str, value: bool) -> Option<()> {
    if !value {
        cx.reject(join(p, "any"), Reason::Invalid("must be true".into()));
        return None;
    }
    Some(())
}

fn path_matcher(
    cx: &mut Cx,
    p: &str,
    m: &envoy_matcher::PathMatcher,
) -> Option<myelin_proxy::model::StringMatcher> {
    match &m.rule {
        Some(envoy_matcher::path_matcher::Rule::Path(s)) => string_matcher(cx, &join(p, "path"), s),
        None => {
            cx.reject(join(p, "path"), Reason::Missing);
            None
        }
    }
}

fn port(cx: &mut Cx, p: &str, value: i64) -> Option<u16> {
    match u16::try_from(value) {
        Ok(v) => Some(v),
        Err(_) => {
            cx.reject(p, Reason::Invalid(format!("{value} is not a port")));
            None
        }
    }
}

fn permission(cx: &mut Cx, p: &str, x: &pb::Permission, depth: usize) -> Option<mr::Permission> {
    use pb::permission::Rule as R;
    if too_deep(cx, p, depth) {
        return None;
    }
    let set = |cx: &mut Cx, f: &str, s: &pb::permission::Set| -> Option<Vec<mr::Permission>> {
        let fp = join(p, f);
        if s.rules.is_empty() {
            cx.reject(join(&fp, "rules"), Reason::Missing);
            return None;
        }
        let all: Vec<_> = s
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| permission(cx, &idx(&fp, "rules", i), r, depth + 1))
            .collect();
        all.into_iter().collect()
    };
    Some(match &x.rule {
        Some(R::AndRules(s)) => mr::Permission::And(set(cx, "and_rules", s)?),
        Some(R::OrRules(s)) => mr::Permission::Or(set(cx, "or_rules", s)?),
        Some(R::Any(v)) => {
            any(cx, p, *v)?;
            mr::Permission::Any
        }
        Some(R::Header(h)) => {
            mr::Permission::Header(route::header_matcher(cx, &join(p, "header"), h)?)
        }
        Some(R::UrlPath(m)) => mr::Permission::UrlPath(path_matcher(cx, &join(p, "url_path"), m)?),
        Some(R::DestinationIp(c)) => {
            mr::Permission::DestinationIp(listener::cidr(cx, &join(p, "destination_ip"), c)?)
        }
        Some(R::DestinationPort(v)) => {
            mr::Permission::DestinationPort(port(cx, &join(p, "destination_port"), i64::from(*v))?)
        }
        Some(R::DestinationPortRange(r)) => {
            let rp = join(p, "destination_port_range");
            let start = port(cx, &join(&rp, "start"), i64::from(r.start));
            let end = port(cx, &join(&rp, "end"), i64::from(r.end));
            mr::Permission::DestinationPortRange(start?, end?)
        }
        Some(R::NotRule(r)) => mr::Permission::Not(Box::new(permission(
            cx,
            &join(p, "not_rule"),
            r,
            depth + 1,
        )?)),
        Some(R::RequestedServerName(m)) => mr::Permission::RequestedServerName(string_matcher(
            cx,
            &join(p, "requested_server_name"),
            m,
        )?),
        Some(R::Metadata(_)) => return unsupported(cx, p, "metadata"),
        Some(R::Matcher(_)) => return unsupported(cx, p, "matcher"),
        Some(R::UriTemplate(_)) => return unsupported(cx, p, "uri_template"),
        None => {
            cx.reject(join(p, "rule"), Reason::Missing);
            return None;
        }
    })
}

fn unsupported<T>(cx: &mut Cx, p: &str, field: &str) -> Option<T> {
    cx.reject(join(p, field), Reason::NotSupported);
    None
}

fn principal(cx: &mut Cx, p: &str, x: &pb::Principal, depth: usize) -> Option<mr::Principal> {
    use pb::principal::Identifier as I;
    if too_deep(cx, p, depth) {
        return None;
    }
    let set = |cx: &mut Cx, f: &str, s: &pb::principal::Set| -> Option<Vec<mr::Principal>> {
        let fp = join(p, f);
        if s.ids.is_empty() {
            cx.reject(join(&fp, "ids"), Reason::Missing);
            return None;
        }
        let all: Vec<_> = s
            .ids
            .iter()
            .enumerate()
            .map(|(i, r)| principal(cx, &idx(&fp, "ids", i), r, depth + 1))
            .collect();
        all.into_iter().collect()
    };
    #[allow(deprecated)]
    Some(match &x.identifier {
        Some(I::AndIds(s)) => mr::Principal::And(set(cx, "and_ids", s)?),
        Some(I::OrIds(s)) => mr::Principal::Or(set(cx, "or_ids", s)?),
        Some(I::Any(v)) => {
            any(cx, p, *v)?;
            mr::Principal::Any
        }
        Some(I::Authenticated(a)) => mr::Principal::Authenticated(match &a.principal_name {
            Some(m) => Some(string_matcher(
                cx,
                &join(&join(p, "authenticated"), "principal_name"),
                m,
            )?),
            None => None,
        }),
        // Without PROXY protocol, the peer is the source.
        Some(I::SourceIp(c)) => {
            mr::Principal::SourceIp(listener::cidr(cx, &join(p, "source_ip"), c)?)
        }
        Some(I::DirectRemoteIp(c)) => {
            mr::Principal::DirectRemoteIp(listener::cidr(cx, &join(p, "direct_remote_ip"), c)?)
        }
        Some(I::RemoteIp(c)) => {
            mr::Principal::RemoteIp(listener::cidr(cx, &join(p, "remote_ip"), c)?)
        }
        Some(I::Header(h)) => {
            mr::Principal::Header(route::header_matcher(cx, &join(p, "header"), h)?)
        }
        Some(I::UrlPath(m)) => mr::Principal::UrlPath(path_matcher(cx, &join(p, "url_path"), m)?),
        Some(I::NotId(r)) => {
            mr::Principal::Not(Box::new(principal(cx, &join(p, "not_id"), r, depth + 1)?))
        }
        Some(I::Metadata(_)) => return unsupported(cx, p, "metadata"),
        Some(I::FilterState(_)) => return unsupported(cx, p, "filter_state"),
        None => {
            cx.reject(join(p, "identifier"), Reason::Missing);
            return None;
        }
    })
}

/// A match tree whose actions are RBAC actions (`envoy.config.rbac.v3.Action`).
fn match_tree(
    cx: &mut Cx,
    p: &str,
    m: &xm::Matcher,
    layer: Layer,
    depth: usize,
) -> Option<mr::Matcher<mr::RbacMatchAction>> {
    use xm::matcher::matcher_tree::TreeType as T;
    use xm::matcher::MatcherType as M;
    if too_deep(cx, p, depth) {
        return None;
    }
    let xm::Matcher {
        on_no_match,
        matcher_type,
    } = m;
    let on_no_match = match on_no_match {
        Some(o) => Some(Box::new(on_match(
            cx,
            &join(p, "on_no_match"),
            o,
            layer,
            depth,
        )?)),
        None => None,
    };
    let kind = match matcher_type {
        None => mr::MatcherKind::Empty,
        Some(M::MatcherList(list)) => {
            let lp = join(p, "matcher_list");
            if list.matchers.is_empty() {
                cx.reject(join(&lp, "matchers"), Reason::Missing);
                return None;
            }
            let all: Vec<_> = list
                .matchers
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let fp = idx(&lp, "matchers", i);
                    let predicate = match &f.predicate {
                        Some(x) => predicate(cx, &join(&fp, "predicate"), x, layer, depth),
                        None => {
                            cx.reject(join(&fp, "predicate"), Reason::Missing);
                            None
                        }
                    };
                    let then = match &f.on_match {
                        Some(o) => on_match(cx, &join(&fp, "on_match"), o, layer, depth),
                        None => {
                            cx.reject(join(&fp, "on_match"), Reason::Missing);
                            None
                        }
                    };
                    Some(mr::FieldMatcher {
                        predicate: predicate?,
                        on_match: then?,
                    })
                })
                .collect();
            mr::MatcherKind::List(all.into_iter().collect::<Option<_>>()?)
        }
        Some(M::MatcherTree(tree)) => {
            let tp = join(p, "matcher_tree");
            let input = match &tree.input {
                Some(i) => input(cx, &join(&tp, "input"), i, layer),
                None => {
                    cx.reject(join(&tp, "input"), Reason::Missing);
                    None
                }
            };
            let mut entries = |field: &str, map: &xm::matcher::matcher_tree::MatchMap| {
                let mp = join(&tp, field);
                let mut keys: Vec<_> = map.map.iter().collect();
                keys.sort_unstable_by_key(|(k, _)| *k);
                let all: Vec<_> = keys
                    .into_iter()
                    .map(|(k, o)| {
                        let kp = format!("{}[{k:?}]", join(&mp, "map"));
                        Some((k.clone(), on_match(cx, &kp, o, layer, depth)?))
                    })
                    .collect();
                all.into_iter().collect::<Option<Vec<_>>>()
            };
            match &tree.tree_type {
                Some(T::ExactMatchMap(map)) => {
                    let map = entries("exact_match_map", map);
                    mr::MatcherKind::Exact {
                        input: input?,
                        map: map?.into_iter().collect(),
                    }
                }
                Some(T::PrefixMatchMap(map)) => {
                    let mut map = entries("prefix_match_map", map)?;
                    // Longest first: the first key found is the longest that matches.
                    map.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
                    mr::MatcherKind::Prefix { input: input?, map }
                }
                Some(T::CustomMatch(c)) => {
                    cx.reject(
                        join(&tp, "custom_match"),
                        Reason::UnsupportedValue(format!("custom match tree `{}`", type_of(c))),
                    );
                    return None;
                }
                None => {
                    cx.reject(join(&tp, "tree_type"), Reason::Missing);
                    return None;
                }
            }
        }
    };
    Some(mr::Matcher { kind, on_no_match })
}

fn on_match(
    cx: &mut Cx,
    p: &str,
    o: &xm::matcher::OnMatch,
    layer: Layer,
    depth: usize,
) -> Option<mr::OnMatch<mr::RbacMatchAction>> {
    use xm::matcher::on_match::OnMatch as O;
    match &o.on_match {
        Some(O::Matcher(m)) => Some(mr::OnMatch::Matcher(Box::new(match_tree(
            cx,
            &join(p, "matcher"),
            m,
            layer,
            depth + 1,
        )?))),
        Some(O::Action(a)) => Some(mr::OnMatch::Action(action(cx, &join(p, "action"), a)?)),
        None => {
            cx.reject(p, Reason::Missing);
            None
        }
    }
}

fn type_of(c: &TypedExtensionConfig) -> &str {
    c.typed_config.as_ref().map_or("", |a| a.type_url.as_str())
}

/// The `Any` of an extension config, or a rejection.
fn typed<'a>(cx: &mut Cx, p: &str, c: &'a TypedExtensionConfig) -> Option<&'a protobuf::Any> {
    let any = c.typed_config.as_ref();
    if any.is_none() {
        cx.reject(join(p, "typed_config"), Reason::Missing);
    }
    any
}

fn action(cx: &mut Cx, p: &str, c: &TypedExtensionConfig) -> Option<mr::RbacMatchAction> {
    let any = typed(cx, p, c)?;
    let tp = join(p, "typed_config");
    if any.type_url != ACTION_URL {
        cx.reject(tp, Reason::UnknownType(any.type_url.clone()));
        return None;
    }
    let a = cx.decode::<pb::Action>(&tp, ACTION_URL, &any.value)?;
    let allow = match pb::rbac::Action::try_from(a.action) {
        Ok(pb::rbac::Action::Allow) => true,
        Ok(pb::rbac::Action::Deny) => false,
        // Envoy's matcher-based RBAC takes ALLOW and DENY only.
        _ => {
            cx.reject(
                join(&tp, "action"),
                Reason::UnsupportedValue(format!("action {}", a.action)),
            );
            return None;
        }
    };
    Some(mr::RbacMatchAction {
        name: a.name,
        allow,
    })
}

fn input(cx: &mut Cx, p: &str, c: &TypedExtensionConfig, layer: Layer) -> Option<mr::MatchInput> {
    let any = typed(cx, p, c)?;
    let tp = join(p, "typed_config");
    if any.type_url == HEADER_INPUT_URL {
        if layer == Layer::Network {
            // Envoy refuses HTTP inputs where there is no request.
            cx.reject(
                tp,
                Reason::UnsupportedValue("a request header input in a network filter".into()),
            );
            return None;
        }
        let h = cx.decode::<envoy_matcher::HttpRequestHeaderMatchInput>(
            &tp,
            HEADER_INPUT_URL,
            &any.value,
        )?;
        if h.header_name.is_empty() {
            cx.reject(join(&tp, "header_name"), Reason::Missing);
            return None;
        }
        return Some(mr::MatchInput::RequestHeader(
            h.header_name.to_ascii_lowercase(),
        ));
    }
    let name = any.type_url.rsplit('/').next().unwrap_or("");
    let input = match name.rsplit('.').next().unwrap_or("") {
        _ if !ext::INPUTS_WITHOUT_SETTINGS.contains(&name) => {
            cx.reject(tp, Reason::UnknownType(any.type_url.clone()));
            return None;
        }
        "SourceIPInput" => mr::MatchInput::SourceIp,
        "DirectSourceIPInput" => mr::MatchInput::DirectSourceIp,
        "SourcePortInput" => mr::MatchInput::SourcePort,
        "DestinationIPInput" => mr::MatchInput::DestinationIp,
        "DestinationPortInput" => mr::MatchInput::DestinationPort,
        "ServerNameInput" => mr::MatchInput::ServerName,
        "UriSanInput" => mr::MatchInput::UriSan,
        _ => unreachable!("INPUTS_WITHOUT_SETTINGS lists only these"),
    };
    cx.decode::<ext::NoSettings>(&tp, &any.type_url, &any.value)?;
    Some(input)
}

fn predicate(
    cx: &mut Cx,
    p: &str,
    x: &xm::matcher::matcher_list::Predicate,
    layer: Layer,
    depth: usize,
) -> Option<mr::Predicate> {
    use xm::matcher::matcher_list::predicate::single_predicate::Matcher as SM;
    use xm::matcher::matcher_list::predicate::MatchType as MT;
    if too_deep(cx, p, depth) {
        return None;
    }
    let list = |cx: &mut Cx, f: &str, l: &xm::matcher::matcher_list::predicate::PredicateList| {
        let lp = join(p, f);
        if l.predicate.len() < 2 {
            cx.reject(
                join(&lp, "predicate"),
                Reason::Invalid("needs at least two predicates".into()),
            );
            return None;
        }
        let all: Vec<_> = l
            .predicate
            .iter()
            .enumerate()
            .map(|(i, x)| predicate(cx, &idx(&lp, "predicate", i), x, layer, depth + 1))
            .collect();
        all.into_iter().collect::<Option<Vec<_>>>()
    };
    Some(match &x.match_type {
        Some(MT::SinglePredicate(s)) => {
            let sp = join(p, "single_predicate");
            let input = match &s.input {
                Some(i) => input(cx, &join(&sp, "input"), i, layer),
                None => {
                    cx.reject(join(&sp, "input"), Reason::Missing);
                    None
                }
            };
            let matcher = match &s.matcher {
                Some(SM::ValueMatch(m)) => xds_string_matcher(cx, &join(&sp, "value_match"), m)
                    .map(mr::InputMatcher::Value),
                Some(SM::CustomMatch(c)) => ip_matcher(cx, &join(&sp, "custom_match"), c),
                None => {
                    cx.reject(join(&sp, "matcher"), Reason::Missing);
                    None
                }
            };
            mr::Predicate::Single {
                input: input?,
                matcher: matcher?,
            }
        }
        Some(MT::OrMatcher(l)) => mr::Predicate::Or(list(cx, "or_matcher", l)?),
        Some(MT::AndMatcher(l)) => mr::Predicate::And(list(cx, "and_matcher", l)?),
        Some(MT::NotMatcher(x)) => mr::Predicate::Not(Box::new(predicate(
            cx,
            &join(p, "not_matcher"),
            x,
            layer,
            depth + 1,
        )?)),
        None => {
            cx.reject(join(p, "match_type"), Reason::Missing);
            return None;
        }
    })
}

fn ip_matcher(cx: &mut Cx, p: &str, c: &TypedExtensionConfig) -> Option<mr::InputMatcher> {
    let any = typed(cx, p, c)?;
    let tp = join(p, "typed_config");
    if any.type_url != IP_MATCHER_URL {
        cx.reject(tp, Reason::UnknownType(any.type_url.clone()));
        return None;
    }
    let ip = cx.decode::<ext::IpMatcher>(&tp, IP_MATCHER_URL, &any.value)?;
    if ip.cidr_ranges.is_empty() {
        cx.reject(join(&tp, "cidr_ranges"), Reason::Missing);
        return None;
    }
    let ranges: Vec<_> = ip
        .cidr_ranges
        .iter()
        .enumerate()
        .map(|(i, r)| listener::cidr(cx, &idx(&tp, "cidr_ranges", i), r))
        .collect();
    Some(mr::InputMatcher::Ip(
        ranges.into_iter().collect::<Option<_>>()?,
    ))
}

/// An `xds.type.matcher.v3.StringMatcher`: the same matcher as Envoy's own, another
/// package.
fn xds_string_matcher(
    cx: &mut Cx,
    p: &str,
    m: &xm::StringMatcher,
) -> Option<myelin_proxy::model::StringMatcher> {
    use envoy_matcher::string_matcher::MatchPattern as E;
    use xm::string_matcher::MatchPattern as X;
    let pattern = match &m.match_pattern {
        Some(X::Exact(s)) => E::Exact(s.clone()),
        Some(X::Prefix(s)) => E::Prefix(s.clone()),
        Some(X::Suffix(s)) => E::Suffix(s.clone()),
        Some(X::Contains(s)) => E::Contains(s.clone()),
        Some(X::SafeRegex(r)) => E::SafeRegex(envoy_matcher::RegexMatcher {
            regex: r.regex.clone(),
            ..Default::default()
        }),
        Some(X::Custom(_)) => {
            cx.reject(join(p, "custom"), Reason::NotSupported);
            return None;
        }
        None => {
            cx.reject(p, Reason::Missing);
            return None;
        }
    };
    let envoy = envoy_matcher::StringMatcher {
        ignore_case: m.ignore_case,
        match_pattern: Some(pattern),
    };
    string_matcher(cx, p, &envoy)
}

#[cfg(test)]
mod tests;
