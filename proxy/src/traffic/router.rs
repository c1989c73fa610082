//! The routing decision for one HTTP request, as a pure function of the request head and
//! a route configuration (Envoy `RouteConfiguration` semantics), plus the path and header
//! rewrites a chosen route asks for.
//!
//! Virtual hosts are chosen by `:authority` the way Envoy does it, independent of their
//! order: an exact domain, else the longest suffix wildcard (`*.example.com`), else the
//! longest prefix wildcard (`example.*`), else `*`. Within the virtual host the first
//! route whose match holds wins. The domain index is built once per route configuration
//! ([`RouteTable::new`]), so a request costs a hash lookup, not a scan of every domain.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::model::listener::WeightedCluster;
use crate::model::route::{
    AppendAction, HeaderMatcher, HeaderRule, HeaderValueOption, PathMatch, PathRedirect,
    QueryParameterMatcher, QueryParameterRule, Redirect, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost,
};
use crate::model::route::{DomainMatch, HashKey, HashPolicy};

/// A route configuration with its domain index.
#[derive(Debug)]
pub struct RouteTable {
    /// The configuration.
    pub config: Arc<RouteConfiguration>,
    /// foldhash (looked up on every request): its keys come from the control plane, so a
    /// client's `Host` cannot make them collide.
    exact: HashMap<String, usize, foldhash::fast::RandomState>,
    /// (suffix, virtual host), longest suffix first.
    suffix: Vec<(String, usize)>,
    /// (prefix, virtual host), longest prefix first.
    prefix: Vec<(String, usize)>,
    any: Option<usize>,
}

impl RouteTable {
    /// Indexes the domains of `config`'s virtual hosts. When two virtual hosts claim the
    /// same domain the first one keeps it.
    pub fn new(config: Arc<RouteConfiguration>) -> Self {
        let mut exact = HashMap::default();
        let mut suffix = Vec::new();
        let mut prefix = Vec::new();
        let mut any = None;
        for (i, vh) in config.virtual_hosts.iter().enumerate() {
            for d in &vh.domains {
                match d {
                    DomainMatch::Exact(s) => {
                        exact.entry(s.clone()).or_insert(i);
                    }
                    DomainMatch::Suffix(s) => suffix.push((s.clone(), i)),
                    DomainMatch::Prefix(s) => prefix.push((s.clone(), i)),
                    DomainMatch::Any => {
                        any.get_or_insert(i);
                    }
                }
            }
        }
        // Stable sorts: among equal lengths the earlier virtual host stays first.
        suffix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        prefix.sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        RouteTable {
            config,
            exact,
            suffix,
            prefix,
            any,
        }
    }

    /// The virtual host for `authority` (compared case-insensitively, port included as
    /// given, as Envoy does without `strip_matching_host_port`, unless the table says
    /// `ignore_port_in_host_matching`).
    pub fn virtual_host(&self, authority: &str) -> Option<&VirtualHost> {
        let authority = if self.config.ignore_port_in_host_matching {
            split_host_port(authority).0
        } else {
            authority
        };
        // Host names come lowercase almost always: no copy for them.
        let host: Cow<'_, str> = if authority.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(authority.to_ascii_lowercase())
        } else {
            Cow::Borrowed(authority)
        };
        let i = self
            .exact
            .get(host.as_ref())
            .copied()
            .or_else(|| {
                self.suffix
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|&(_, i)| i)
            })
            .or_else(|| {
                self.prefix
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|&(_, i)| i)
            })
            .or(self.any)?;
        self.config.virtual_hosts.get(i)
    }

    /// The virtual host and the first of its routes that matches `req`.
    pub fn find(&self, req: &RequestHead<'_>) -> Option<(&VirtualHost, &Route)> {
        let vh = self.virtual_host(req.authority)?;
        let route = vh.routes.iter().find(|r| r.route_match.matches(req))?;
        Some((vh, route))
    }
}

/// The parts of a request routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// `:method`.
    pub method: &'a str,
    /// `:authority` (the `Host` header for HTTP/1).
    pub authority: &'a str,
    /// `:path`: path and query string.
    pub path: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl RequestHead<'_> {
    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        split_query(self.path).0
    }

    /// A `CONNECT` that asks for a tunnel to its authority: no path (an extended CONNECT,
    /// RFC 8441, has one and is routed by it).
    pub fn is_connect(&self) -> bool {
        self.method == "CONNECT" && self.path.is_empty()
    }

    /// A header's value as Envoy's matchers see it: pseudo-headers from the request line,
    /// several values joined with `,`; `None` when absent.
    pub(crate) fn header(&self, name: &str) -> Option<String> {
        match name {
            ":method" => return Some(self.method.to_owned()),
            ":authority" | "host" => return Some(self.authority.to_owned()),
            ":path" => return Some(self.path.to_owned()),
            ":scheme" => return Some(self.scheme.to_owned()),
            _ => {}
        }
        let mut values = self.headers.get_all(name).iter().peekable();
        values.peek()?;
        let joined: Vec<&str> = values.map(|v| v.to_str().unwrap_or("")).collect();
        Some(joined.join(","))
    }
}

fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    }
}

impl RouteMatch {
    /// Whether `req` satisfies the path, header and query criteria.
    pub fn matches(&self, req: &RequestHead<'_>) -> bool {
        self.path_matches(req)
            && self.headers.iter().all(|h| h.matches(req))
            && (self.query_parameters.is_empty() || {
                let query = split_query(req.path).1.unwrap_or("");
                self.query_parameters.iter().all(|q| q.matches(query))
            })
    }

    fn path_matches(&self, req: &RequestHead<'_>) -> bool {
        // A `CONNECT` (not an extended one) has no path: only `connect_matcher` takes it.
        let connect = req.is_connect();
        if let PathMatch::Connect = self.path {
            return connect;
        }
        if connect {
            return false;
        }
        let path = req.path_only();
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        let starts = |s: &str, p: &str| {
            s.len() >= p.len() && s.is_char_boundary(p.len()) && eq(&s[..p.len()], p)
        };
        match &self.path {
            PathMatch::Prefix(p) => starts(path, p),
            PathMatch::Path(p) => eq(path, p),
            // Regexes carry their own case handling (`(?i)`), as in Envoy.
            PathMatch::SafeRegex(r) => r.is_full_match(path),
            PathMatch::PathSeparatedPrefix(p) => {
                starts(path, p) && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/')
            }
            PathMatch::Connect => unreachable!("answered above"),
        }
    }
}

impl HeaderMatcher {
    /// Whether `req`'s headers satisfy this criterion.
    pub(crate) fn matches(&self, req: &RequestHead<'_>) -> bool {
        let value = req.header(&self.name);
        let raw = match &self.rule {
            HeaderRule::Present(want) => value.is_some() == *want,
            HeaderRule::Value(m) => match value {
                Some(v) => m.matches(&v),
                None if self.treat_missing_as_empty => m.matches(""),
                // A missing header fails a value match; `invert` turns that into a match.
                None => false,
            },
        };
        raw != self.invert
    }
}

impl QueryParameterMatcher {
    fn matches(&self, query: &str) -> bool {
        let first = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
            .find(|(k, _)| percent_decode(k) == self.name)
            .map(|(_, v)| percent_decode(v));
        match (&self.rule, first) {
            (QueryParameterRule::Present, found) => found.is_some(),
            (QueryParameterRule::Value(m), Some(v)) => m.matches(&v),
            (QueryParameterRule::Value(_), None) => false,
        }
    }
}

/// `%XX` decoding of a query component (Envoy decodes before matching). Invalid escapes
/// stay as they are.
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The hash of a request for ring-hash and Maglev clusters (Envoy's `hash_policy`): each
/// policy that finds its value mixes it in; a `terminal` one that found a value ends the
/// list. `None` when no policy found a value (the balancer then picks at random).
pub fn request_hash(
    policies: &[HashPolicy],
    req: &RequestHead<'_>,
    source: std::net::IpAddr,
) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hash: Option<u64> = None;
    for p in policies {
        let value = match &p.key {
            HashKey::Header(name) => req.header(name),
            HashKey::Cookie(name) => cookie(req.headers, name),
            HashKey::QueryParameter(name) => {
                let query = split_query(req.path).1.unwrap_or("");
                query
                    .split('&')
                    .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
                    .find(|(k, _)| percent_decode(k) == *name)
                    .map(|(_, v)| percent_decode(v))
            }
            HashKey::SourceIp => Some(source.to_canonical().to_string()),
        };
        let Some(value) = value else {
            continue;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        value.hash(&mut h);
        let v = h.finish();
        hash = Some(match hash {
            Some(prev) => prev.rotate_left(1) ^ v,
            None => v,
        });
        if p.terminal {
            break;
        }
    }
    hash
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The cluster of a weighted choice for a roll in `0..u64::MAX`: cluster `i` is chosen
/// with probability `weight_i / sum(weights)`.
pub fn pick_weighted(clusters: &[WeightedCluster], roll: u64) -> Option<&str> {
    pick_weighted_index(clusters, roll).map(|i| clusters[i].name.as_str())
}

/// The index in `clusters` of [`pick_weighted`]'s choice.
pub fn pick_weighted_index(clusters: &[WeightedCluster], roll: u64) -> Option<usize> {
    let total: u64 = clusters.iter().map(|c| u64::from(c.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = roll % total;
    for (i, c) in clusters.iter().enumerate() {
        let w = u64::from(c.weight);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

/// The new `:path` when the route rewrites it (`prefix_rewrite` replaces the matched
/// prefix, `regex_rewrite` substitutes every match in the path); the query string is kept.
pub fn rewrite_path(action: &RouteAction, m: &RouteMatch, path: &str) -> Option<String> {
    let (p, query) = split_query(path);
    let new = if let Some(with) = &action.prefix_rewrite {
        let matched = match &m.path {
            PathMatch::Prefix(pre) | PathMatch::PathSeparatedPrefix(pre) => pre.len(),
            PathMatch::Path(full) => full.len(),
            // The converter rejects prefix_rewrite on regex matches (Envoy does too); a
            // `CONNECT` has no path to rewrite.
            PathMatch::SafeRegex(_) | PathMatch::Connect => return None,
        };
        format!("{with}{}", p.get(matched..).unwrap_or(""))
    } else if let Some(rr) = &action.regex_rewrite {
        rr.pattern.replace_all(p, &rr.substitution)
    } else {
        return None;
    };
    Some(match query {
        Some(q) => format!("{new}?{q}"),
        None => new,
    })
}

/// The `Location` of a redirect for `req`, which matched with `m`.
pub fn redirect_location(r: &Redirect, m: &RouteMatch, req: &RequestHead<'_>) -> String {
    let scheme = r.scheme.as_deref().unwrap_or(req.scheme);
    let (req_host, req_port) = split_host_port(req.authority);
    let host = r.host.as_deref().unwrap_or(req_host);
    let port = match r.port {
        Some(p) => Some(p.to_string()),
        // A scheme change drops the port the old scheme implied (Envoy does the same).
        None if r.scheme.is_some() => None,
        None => req_port.map(str::to_owned),
    };
    let (path, query) = split_query(req.path);
    let mut new_path = match &r.path {
        Some(PathRedirect::Path(p)) => p.clone(),
        Some(PathRedirect::Prefix(with)) => {
            let matched = match &m.path {
                PathMatch::Prefix(pre) | PathMatch::PathSeparatedPrefix(pre) => pre.len(),
                _ => 0,
            };
            format!("{with}{}", path.get(matched..).unwrap_or(""))
        }
        Some(PathRedirect::Regex(rr)) => rr.pattern.replace_all(path, &rr.substitution),
        None => path.to_owned(),
    };
    if let (false, Some(q)) = (r.strip_query, query) {
        new_path.push('?');
        new_path.push_str(q);
    }
    match port {
        Some(p) => format!("{scheme}://{host}:{p}{new_path}"),
        None => format!("{scheme}://{host}{new_path}"),
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    // `[v6]:port`, `host:port`, or a bare host.
    if let Some(rest) = authority.strip_prefix('[') {
        if let Some((h, tail)) = rest.split_once(']') {
            return (&authority[..h.len() + 2], tail.strip_prefix(':'));
        }
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => (h, Some(p)),
        _ => (authority, None),
    }
}

/// Applies one level of header additions and removals (Envoy `HeaderValueOption`
/// semantics). Values that are not valid header values are skipped (the converter checks
/// names and values, so this is only a guard).
pub fn mutate_headers(headers: &mut HeaderMap, add: &[HeaderValueOption], remove: &[String]) {
    for name in remove {
        headers.remove(name.as_str());
    }
    for h in add {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) else {
            continue;
        };
        if h.value.is_empty() && !h.keep_empty_value {
            continue;
        }
        match h.append_action {
            AppendAction::AppendIfExistsOrAdd => {
                headers.append(name, value);
            }
            AppendAction::AddIfAbsent => {
                if !headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
            AppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(name, value);
            }
            AppendAction::OverwriteIfExists => {
                if headers.contains_key(&name) {
                    headers.insert(name, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
