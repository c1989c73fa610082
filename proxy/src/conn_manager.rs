//! What an HTTP connection manager does to headers itself, before its routes see a request
//! and before the client sees a response: `x-forwarded-for` and `x-forwarded-proto`, the
//! internal/external decision and the `x-envoy-*` headers it cleans, `x-request-id`, `via`
//! and `server`. The rules are Envoy's (`ConnectionManagerUtility::mutateRequestHeaders`,
//! `mutateResponseHeaders`, the UUID request ID extension, `HeaderUtility::stripPortFromHost`
//! and `stripTrailingHostDot`), configured by [`HeaderHandling`].

use std::net::{IpAddr, SocketAddr};

use http::header::{Entry, HeaderMap, HeaderName, HeaderValue, HOST, SERVER, VIA};
use http::{Method, Request, Uri};

use crate::model::listener::{
    HeaderHandling, HostNormalization, RequestScheme, ServerHeader, StripPort,
};

/// `x-forwarded-for`.
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-request-id`.
pub(crate) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");
/// `x-forwarded-client-cert` (XFCC).
const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
const X_ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Request headers that steer an Envoy (retries, timeouts, tracing), honoured only from
/// internal clients: removed from every other request, as Envoy does.
const INTERNAL_ONLY: [&str; 10] = [
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-force-trace",
    "x-envoy-ip-tags",
];

/// Removed from edge requests too: what one Envoy tells the next about its caller.
const EDGE_ONLY: [&str; 3] = [
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
];

/// What the request side decided, for the response side and the access log.
#[derive(Debug, Default)]
pub(crate) struct RequestFacts {
    /// The request's `x-request-id` after the connection manager's rules.
    pub(crate) request_id: Option<HeaderValue>,
    /// The scheme `x-forwarded-proto` names after the rules (`http` when it names neither):
    /// an HTTP/1 request's scheme (Envoy's `:scheme` for a request without one).
    pub(crate) scheme: RequestScheme,
    /// The request is to be answered this status: its client address was to come from a
    /// header that has none (`ClientAddressHeader::reject_status`).
    pub(crate) reject: Option<u16>,
    /// The client's address as worked out from the rules (`x-forwarded-for` and trusted
    /// hops, `use_remote_address`, a custom header); `None`: the connection's peer is all
    /// there is (Envoy's downstream remote address stays the peer's then).
    pub(crate) client: Option<IpAddr>,
}

/// Applies `h` to a request that came on a connection from `peer` (`tls`: over TLS with
/// a client certificate; never yet, see [`HeaderHandling::client_cert_details`]).
/// `keep_id`: the caller wants the request ID in the facts (the access log); the response
/// side takes it when `h` says so.
pub(crate) fn mutate_request(
    h: &HeaderHandling,
    headers: &mut HeaderMap,
    peer: SocketAddr,
    tls: bool,
    keep_id: bool,
) -> RequestFacts {
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    let mut reject = None;
    // Whose request this is: the peer, or what trusted proxies in front of us say.
    let (client, single_address) = if h.use_remote_address {
        let single = !headers.contains_key(X_FORWARDED_FOR);
        let trusted = match h.xff_num_trusted_hops {
            0 => None,
            n => last_xff_address(headers, n - 1).0,
        };
        if !h.skip_xff_append {
            append_xff(headers, peer.ip());
        }
        headers.insert(X_FORWARDED_PROTO, proto.clone());
        (Some(trusted.unwrap_or(peer.ip())), single)
    } else if let Some(c) = &h.client_address_header {
        // Envoy's custom header extension: the header's first value, an IP address; else
        // the connection's peer, not trusted (or the request is refused).
        let found = headers
            .get(c.name.as_str())
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<IpAddr>().ok());
        match found {
            Some(ip) => (Some(ip), c.trusted),
            None => {
                reject = c.reject_status;
                (Some(peer.ip()), false)
            }
        }
    } else {
        last_xff_address(headers, h.xff_num_trusted_hops)
    };
    let scheme = if let Some(s) = h.scheme_to_overwrite {
        // `scheme_header_transformation`: Envoy sets `x-forwarded-proto` with `:scheme`.
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(s.as_str()));
        s
    } else {
        // One lookup for the read and the write (a custom header name is hashed byte by byte).
        match headers.entry(X_FORWARDED_PROTO) {
            Entry::Occupied(v) => {
                RequestScheme::parse(v.get().as_bytes()).unwrap_or(RequestScheme::Http)
            }
            Entry::Vacant(v) => {
                v.insert(proto);
                if tls {
                    RequestScheme::Https
                } else {
                    RequestScheme::Http
                }
            }
        }
    };
    // Internal: exactly one address in `x-forwarded-for` (after the append), and that one
    // in the configured ranges. Without `x-forwarded-for` and `use_remote_address`, nobody
    // is internal.
    let internal =
        single_address && client.is_some_and(|ip| h.internal_cidrs.iter().any(|c| c.contains(ip)));
    let edge = !internal && h.use_remote_address;
    // One pass over the names first: most requests carry no `x-envoy-*` header and no
    // XFCC at all.
    let (mut envoy, mut xfcc) = (false, false);
    for k in headers.keys() {
        envoy |= k.as_str().starts_with("x-envoy-");
        xfcc |= *k == XFCC;
    }
    if xfcc {
        use crate::model::listener::ForwardClientCert as F;
        let keep = match h.forward_client_cert {
            F::AlwaysForwardOnly => true,
            F::ForwardOnly => tls,
            // With a client certificate these would write its details; no connection
            // manager terminates TLS yet, so this is the no-certificate rule: removed.
            F::Sanitize | F::AppendForward | F::SanitizeSet => false,
        };
        if !keep {
            headers.remove(XFCC);
        }
    }
    if envoy {
        headers.remove(X_ENVOY_INTERNAL);
        if !internal {
            if edge {
                for name in EDGE_ONLY {
                    headers.remove(name);
                }
            }
            for name in INTERNAL_ONLY {
                headers.remove(name);
            }
        }
    }
    if internal {
        headers.insert(X_ENVOY_INTERNAL, HeaderValue::from_static("true"));
    }
    if let Some(via) = &h.via {
        append_listed(headers, VIA, via.value());
    }
    if edge {
        if let Some(ip) = client {
            if let Ok(v) = HeaderValue::from_str(&ip.to_string()) {
                headers.insert(X_ENVOY_EXTERNAL_ADDRESS, v);
            }
        }
    }
    if h.generate_request_id {
        let keep_external = h.preserve_external_request_id || !edge;
        match headers.entry(X_REQUEST_ID) {
            Entry::Occupied(v) if keep_external && !v.get().is_empty() => {}
            Entry::Occupied(mut v) => {
                v.insert(uuid_v4(fastrand::u128(..)));
            }
            Entry::Vacant(v) => {
                v.insert(uuid_v4(fastrand::u128(..)));
            }
        }
    }
    RequestFacts {
        // A clone of a generated value is a copy's worth of bookkeeping: only on demand.
        request_id: (keep_id || h.always_set_request_id_in_response)
            .then(|| headers.get(X_REQUEST_ID).cloned())
            .flatten(),
        scheme,
        reject,
        client,
    }
}

/// `https`, for a request whose URI does not say (HTTP/1 in origin form) but whose
/// `x-forwarded-proto` does: kept as an extension, read by [`request_scheme`].
#[derive(Debug, Clone, Copy)]
struct Https;

/// Settles a request's scheme once the header rules ran (`scheme`: what
/// [`mutate_request`] found): HTTP/2's `:scheme` and an absolute URI's are the client's own
/// and kept (Envoy trusts them) unless `overwrite` says otherwise; a request without one
/// takes `scheme`. Nothing is stored for the common case, a plain `http` HTTP/1 request.
pub(crate) fn settle_scheme<B>(
    req: &mut Request<B>,
    scheme: RequestScheme,
    overwrite: Option<RequestScheme>,
) {
    match (req.uri().scheme(), overwrite) {
        (Some(_), Some(new)) => set_uri_scheme(req, new),
        (Some(_), None) => {}
        (None, _) if scheme == RequestScheme::Https => {
            req.extensions_mut().insert(Https);
        }
        (None, _) => {}
    }
}

/// `scheme_header_transformation.match_upstream`: the scheme of a request going to an
/// HTTP/2 upstream (one whose URI has a scheme) is the upstream connection's.
pub(crate) fn match_upstream_scheme<B>(req: &mut Request<B>, tls: bool) {
    if req.uri().scheme().is_some() {
        let s = if tls {
            RequestScheme::Https
        } else {
            RequestScheme::Http
        };
        set_uri_scheme(req, s);
    }
}

/// Sets the scheme of a URI that has one (so also an authority and a path).
fn set_uri_scheme<B>(req: &mut Request<B>, s: RequestScheme) {
    if req.uri().scheme_str() == Some(s.as_str()) {
        return;
    }
    let mut parts = req.uri().clone().into_parts();
    parts.scheme = Some(match s {
        RequestScheme::Http => http::uri::Scheme::HTTP,
        RequestScheme::Https => http::uri::Scheme::HTTPS,
    });
    // With a scheme there are an authority and a path: this cannot fail.
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// A request's scheme as routes match it (`:scheme`), redirects keep it and an HTTP/2
/// upstream is told it: its URI's (HTTP/2, absolute form), else what
/// [`settle_scheme`] found in `x-forwarded-proto`, else `http`.
pub(crate) fn request_scheme<B>(req: &Request<B>) -> &str {
    match req.uri().scheme_str() {
        Some(s) => s,
        None if req.extensions().get::<Https>().is_some() => "https",
        None => "http",
    }
}

/// Applies the host rules `h` to a request that came to `listener_port`: its `Host` (or,
/// without one, its URI's authority, HTTP/2's `:authority`) rewritten in place.
pub(crate) fn normalize_host<B>(h: &HostNormalization, req: &mut Request<B>, listener_port: u16) {
    let connect = req.method() == Method::CONNECT;
    if let Some(v) = req.headers().get(HOST) {
        let new = v
            .to_str()
            .ok()
            .and_then(|host| normalized_host(h, host, listener_port, connect));
        if let Some(v) = new.and_then(|n| HeaderValue::from_str(&n).ok()) {
            req.headers_mut().insert(HOST, v);
        }
        return;
    }
    let new = req
        .uri()
        .authority()
        .and_then(|a| normalized_host(h, a.as_str(), listener_port, connect))
        .and_then(|n| n.parse().ok());
    if let Some(authority) = new {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// `host` after the rules `h` (`None`: unchanged). The port is taken off only when it is a
/// number (and, for `Matching`, `listener_port`), and never from a `CONNECT`'s authority
/// (`host:port` by definition); an IPv6 literal keeps its brackets.
fn normalized_host(
    h: &HostNormalization,
    host: &str,
    listener_port: u16,
    connect: bool,
) -> Option<String> {
    let (mut name, mut port) = match port_start(host) {
        Some(i) => (&host[..i], Some(&host[i..])),
        None => (host, None),
    };
    let mut changed = false;
    if h.strip_trailing_dot {
        if let Some(n) = name.strip_suffix('.') {
            name = n;
            changed = true;
        }
    }
    if let (Some(p), false) = (port, connect) {
        let number = p[1..].parse::<u32>().ok();
        let strip = match h.strip_port {
            StripPort::Keep => false,
            StripPort::Any => number.is_some(),
            StripPort::Matching => number == Some(u32::from(listener_port)),
        };
        if strip {
            port = None;
            changed = true;
        }
    }
    changed.then(|| format!("{name}{}", port.unwrap_or("")))
}

/// Where `host`'s `:port` starts: its last `:`, unless that is inside an IPv6 literal
/// (`[...]`, RFC 3986 section 3.2.2).
fn port_start(host: &str) -> Option<usize> {
    let colon = host.rfind(':')?;
    match host.rfind(']') {
        Some(end) if end > colon => None,
        _ => Some(colon),
    }
}

/// Applies `h` to a response (from upstream or the proxy's own) to the request of `facts`.
pub(crate) fn mutate_response(h: &HeaderHandling, headers: &mut HeaderMap, facts: &RequestFacts) {
    if h.always_set_request_id_in_response {
        if let Some(id) = &facts.request_id {
            headers.insert(X_REQUEST_ID, id.clone());
        }
    }
    if let Some(via) = &h.via {
        append_listed(headers, VIA, via.value());
    }
    match &h.server {
        ServerHeader::Overwrite(name) => {
            headers.insert(SERVER, name.value().clone());
        }
        ServerHeader::AppendIfAbsent(name) => {
            if !headers.contains_key(SERVER) {
                headers.insert(SERVER, name.value().clone());
            }
        }
        ServerHeader::PassThrough => {}
    }
}

/// The address `skip` entries from the right of `x-forwarded-for` (all its lines as one
/// list), if there are that many and it parses; and whether the list has exactly one entry.
fn last_xff_address(headers: &HeaderMap, skip: u32) -> (Option<IpAddr>, bool) {
    let entries = || {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    let count = entries().count();
    let skip = skip as usize;
    if count <= skip {
        return (None, false);
    }
    let ip = entries()
        .nth(count - 1 - skip)
        .and_then(|e| e.parse::<IpAddr>().ok());
    (ip, count == 1)
}

/// Appends `ip` to `x-forwarded-for` (one header, comma-separated, as Envoy writes it).
fn append_xff(headers: &mut HeaderMap, ip: IpAddr) {
    match HeaderValue::from_str(&ip.to_string()) {
        Ok(v) => append_listed(headers, X_FORWARDED_FOR, &v),
        Err(_) => unreachable!("an IP address is a valid header value"),
    }
}

/// `name: <existing lines joined with ", ">, value`.
fn append_listed(headers: &mut HeaderMap, name: HeaderName, value: &HeaderValue) {
    let existing = headers
        .get_all(&name)
        .iter()
        .filter(|v| !v.is_empty())
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>();
    if existing.is_empty() {
        headers.insert(name, value.clone());
        return;
    }
    let mut joined = existing.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(value.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(name, v);
    }
}

/// IDs are cut from one buffer per thread, [`ID_CHUNK`] at a time: a request's ID then costs
/// no allocation of its own (a chunk is freed when the last ID cut from it is).
const ID_CHUNK: usize = 64;

thread_local! {
    static IDS: std::cell::RefCell<bytes::BytesMut> = std::cell::RefCell::new(bytes::BytesMut::new());
}

/// `bits` as an RFC 4122 version 4 UUID (`xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`), the form
/// of Envoy's request IDs. Not from a cryptographic generator: a request ID names a request,
/// it guards nothing (fastrand's per-thread generator is seeded from the OS at start).
fn uuid_v4(bits: u128) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Where each byte's two digits go, around the dashes (a fixed pattern the compiler
    // unrolls: no per-character branch).
    const AT: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];
    let bits = (bits & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let mut out = *b"00000000-0000-0000-0000-000000000000";
    for (&at, b) in AT.iter().zip(bits.to_be_bytes()) {
        out[at] = HEX[usize::from(b >> 4)];
        out[at + 1] = HEX[usize::from(b & 0xf)];
    }
    let id = IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < out.len() {
            *ids = bytes::BytesMut::with_capacity(out.len() * ID_CHUNK);
        }
        ids.extend_from_slice(&out);
        ids.split_to(out.len()).freeze()
    });
    HeaderValue::from_maybe_shared(id).expect("hex digits and dashes are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::listener::{CidrRange, HeaderText};

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn get<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    const PEER: &str = "10.1.2.3:40000";

    fn cidr(s: &str) -> CidrRange {
        let (a, l) = s.split_once('/').unwrap();
        CidrRange {
            address: a.parse().unwrap(),
            prefix_len: l.parse().unwrap(),
        }
    }

    #[test]
    fn uuids_are_version_4() {
        for bits in [0, u128::MAX, 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef] {
            let v = uuid_v4(bits);
            let s = v.to_str().unwrap();
            assert_eq!(s.len(), 36, "{s}");
            let parts: Vec<_> = s.split('-').map(str::len).collect();
            assert_eq!(parts, [8, 4, 4, 4, 12], "{s}");
            assert_eq!(&s[14..15], "4", "version nibble: {s}");
            assert!("89ab".contains(&s[19..20]), "variant nibble: {s}");
        }
        assert_eq!(
            uuid_v4(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
            "01234567-89ab-4def-8123-456789abcdef"
        );
        assert_ne!(uuid_v4(fastrand::u128(..)), uuid_v4(fastrand::u128(..)));
    }

    /// Envoy's defaults: the client is whoever `x-forwarded-for` names, nothing is
    /// appended, a request ID is added when missing and kept when present.
    #[test]
    fn defaults_keep_forwarded_headers_and_add_what_is_missing() {
        let h = HeaderHandling::default();
        let mut req = headers(&[]);
        let facts = mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-forwarded-for"), None);
        assert_eq!(get(&req, "x-forwarded-proto"), Some("http"));
        let id = get(&req, "x-request-id").expect("generated").to_owned();
        assert_eq!(facts.request_id.as_ref().unwrap(), id.as_str());

        let mut req = headers(&[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "abc"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-internal", "true"),
            ("x-envoy-downstream-service-cluster", "front"),
        ]);
        mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-forwarded-for"), Some("192.0.2.7"));
        assert_eq!(get(&req, "x-forwarded-proto"), Some("https"));
        assert_eq!(get(&req, "x-request-id"), Some("abc"));
        // No internal ranges: nobody is internal, so the steering headers go, and the
        // claim of being internal with them. Not an edge request: the caller's name stays.
        assert_eq!(get(&req, "x-envoy-retry-on"), None);
        assert_eq!(get(&req, "x-envoy-internal"), None);
        assert_eq!(
            get(&req, "x-envoy-downstream-service-cluster"),
            Some("front")
        );
        assert_eq!(get(&req, "x-envoy-external-address"), None);
    }

    #[test]
    fn remote_address_is_appended_and_makes_edge_requests() {
        let h = HeaderHandling {
            use_remote_address: true,
            ..HeaderHandling::default()
        };
        let mut req = headers(&[
            ("x-forwarded-for", "192.0.2.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "from-outside"),
            ("x-envoy-downstream-service-cluster", "spoofed"),
        ]);
        mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-forwarded-for"), Some("192.0.2.7, 10.1.2.3"));
        // Overwritten: the connection says what the scheme was.
        assert_eq!(get(&req, "x-forwarded-proto"), Some("http"));
        assert_eq!(get(&req, "x-envoy-external-address"), Some("10.1.2.3"));
        assert_eq!(get(&req, "x-envoy-downstream-service-cluster"), None);
        let id = get(&req, "x-request-id").unwrap();
        assert_ne!(id, "from-outside", "an edge request gets a new ID");
        assert_eq!(id.len(), 36);

        let preserving = HeaderHandling {
            preserve_external_request_id: true,
            skip_xff_append: true,
            ..h.clone()
        };
        let mut req = headers(&[("x-request-id", "from-outside")]);
        mutate_request(&preserving, &mut req, PEER.parse().unwrap(), true, true);
        assert_eq!(get(&req, "x-request-id"), Some("from-outside"));
        assert_eq!(get(&req, "x-forwarded-for"), None);
        assert_eq!(get(&req, "x-forwarded-proto"), Some("https"));
    }

    #[test]
    fn trusted_hops_pick_the_client_from_the_right() {
        // Two proxies we trust appended the last two entries: the client is the third
        // from the right.
        let h = HeaderHandling {
            use_remote_address: true,
            xff_num_trusted_hops: 2,
            internal_cidrs: vec![cidr("203.0.113.0/24")],
            ..HeaderHandling::default()
        };
        let mut req = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9, 10.0.0.1")]);
        mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-envoy-external-address"), Some("203.0.113.9"));
        assert_eq!(
            get(&req, "x-forwarded-for"),
            Some("198.51.100.1, 203.0.113.9, 10.0.0.1, 10.1.2.3")
        );
        // Not internal: the list had more than one entry.
        assert_eq!(get(&req, "x-envoy-internal"), None);

        // Without use_remote_address, the hops count from the right of the list as it came.
        let h = HeaderHandling {
            xff_num_trusted_hops: 1,
            ..HeaderHandling::default()
        };
        assert_eq!(
            last_xff_address(&req, 1).0,
            Some("10.0.0.1".parse().unwrap())
        );
        assert_eq!(last_xff_address(&headers(&[]), 0), (None, false));
        assert_eq!(
            last_xff_address(&headers(&[("x-forwarded-for", "garbage")]), 0),
            (None, true)
        );
        let mut req = headers(&[("x-forwarded-for", "a"), ("x-forwarded-for", "192.0.2.1")]);
        mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-envoy-external-address"), None);
    }

    #[test]
    fn internal_clients_keep_their_steering_headers() {
        let h = HeaderHandling {
            use_remote_address: true,
            internal_cidrs: vec![cidr("10.0.0.0/8")],
            ..HeaderHandling::default()
        };
        let mut req = headers(&[("x-envoy-retry-on", "5xx"), ("x-request-id", "mine")]);
        mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-envoy-internal"), Some("true"));
        assert_eq!(get(&req, "x-envoy-retry-on"), Some("5xx"));
        assert_eq!(get(&req, "x-request-id"), Some("mine"));
        assert_eq!(get(&req, "x-envoy-external-address"), None);
        // The same client from outside the ranges is external.
        let mut req = headers(&[("x-envoy-retry-on", "5xx")]);
        mutate_request(&h, &mut req, "192.0.2.1:1".parse().unwrap(), false, true);
        assert_eq!(get(&req, "x-envoy-internal"), None);
        assert_eq!(get(&req, "x-envoy-retry-on"), None);
    }

    /// Without a client certificate, only `ALWAYS_FORWARD_ONLY` lets a client's XFCC
    /// through: otherwise any client could name itself someone else to the upstream.
    #[test]
    fn client_cert_header_is_only_forwarded_when_always_asked() {
        use crate::model::listener::ForwardClientCert as F;
        let claim = "By=spiffe://cluster.local/ns/a/sa/b;URI=spiffe://cluster.local/ns/x/sa/admin";
        for (mode, kept) in [
            (F::Sanitize, false),
            (F::ForwardOnly, false),
            (F::AppendForward, false),
            (F::SanitizeSet, false),
            (F::AlwaysForwardOnly, true),
        ] {
            let h = HeaderHandling {
                forward_client_cert: mode,
                ..HeaderHandling::default()
            };
            let mut req = headers(&[("x-forwarded-client-cert", claim), ("x-other", "1")]);
            mutate_request(&h, &mut req, PEER.parse().unwrap(), false, false);
            assert_eq!(
                get(&req, "x-forwarded-client-cert"),
                kept.then_some(claim),
                "{mode:?}"
            );
            assert_eq!(get(&req, "x-other"), Some("1"));
        }
    }

    #[test]
    fn via_server_and_request_id_on_the_way_back() {
        let h = HeaderHandling {
            via: HeaderText::new("1.1 myelin"),
            always_set_request_id_in_response: true,
            ..HeaderHandling::default()
        };
        let mut req = headers(&[("via", "1.0 fred")]);
        let facts = mutate_request(&h, &mut req, PEER.parse().unwrap(), false, true);
        assert_eq!(get(&req, "via"), Some("1.0 fred, 1.1 myelin"));
        let mut resp = headers(&[("server", "nginx")]);
        mutate_response(&h, &mut resp, &facts);
        assert_eq!(get(&resp, "server"), Some(ServerHeader::DEFAULT_NAME));
        assert_eq!(get(&resp, "via"), Some("1.1 myelin"));
        assert_eq!(
            resp.get("x-request-id"),
            facts.request_id.as_ref(),
            "the request's ID"
        );

        for (server, upstream, want) in [
            (
                ServerHeader::AppendIfAbsent(HeaderText::new("s").unwrap()),
                Some("nginx"),
                Some("nginx"),
            ),
            (
                ServerHeader::AppendIfAbsent(HeaderText::new("s").unwrap()),
                None,
                Some("s"),
            ),
            (ServerHeader::PassThrough, Some("nginx"), Some("nginx")),
            (ServerHeader::PassThrough, None, None),
            (
                ServerHeader::Overwrite(HeaderText::new("s").unwrap()),
                None,
                Some("s"),
            ),
        ] {
            let h = HeaderHandling {
                server: server.clone(),
                ..HeaderHandling::default()
            };
            let mut resp = headers(
                &upstream
                    .map(|u| ("server", u))
                    .into_iter()
                    .collect::<Vec<_>>(),
            );
            mutate_response(&h, &mut resp, &RequestFacts::default());
            assert_eq!(get(&resp, "server"), want, "{server:?} {upstream:?}");
            assert_eq!(get(&resp, "x-request-id"), None);
        }
    }

    #[test]
    fn host_rules_are_envoys() {
        let rules = |strip_port, strip_trailing_dot| HostNormalization {
            strip_port,
            strip_trailing_dot,
        };
        let (any, matching, keep) = (StripPort::Any, StripPort::Matching, StripPort::Keep);
        // (rules, host, CONNECT, result; `None`: unchanged), the listener on port 80.
        for (h, host, connect, want) in [
            (rules(any, false), "web:8080", false, Some("web")),
            (rules(any, false), "web", false, None),
            (rules(any, false), "web:http", false, None),
            (rules(any, false), "web:8080", true, None),
            (rules(matching, false), "web:80", false, Some("web")),
            (rules(matching, false), "web:8080", false, None),
            (rules(any, false), "[::1]:80", false, Some("[::1]")),
            (rules(any, false), "[::1]", false, None),
            (
                rules(keep, true),
                "web.example.",
                false,
                Some("web.example"),
            ),
            (
                rules(keep, true),
                "web.example.:80",
                false,
                Some("web.example:80"),
            ),
            (
                rules(keep, true),
                "web.example.:80",
                true,
                Some("web.example:80"),
            ),
            (
                rules(any, true),
                "web.example.:80",
                false,
                Some("web.example"),
            ),
            (rules(keep, true), "web.example", false, None),
        ] {
            assert_eq!(
                normalized_host(&h, host, 80, connect).as_deref(),
                want,
                "{h:?} {host} connect={connect}"
            );
        }
    }

    #[test]
    fn the_host_header_or_the_authority_is_rewritten() {
        let h = HostNormalization {
            strip_port: StripPort::Any,
            strip_trailing_dot: false,
        };
        let mut req = Request::get("/a?b")
            .header(HOST, "web:81")
            .body(())
            .unwrap();
        normalize_host(&h, &mut req, 80);
        assert_eq!(get(req.headers(), "host"), Some("web"));
        // HTTP/2: the authority is the URI's.
        let mut req = Request::get("http://web:81/a?b").body(()).unwrap();
        normalize_host(&h, &mut req, 80);
        assert_eq!(req.uri().to_string(), "http://web/a?b");
    }

    /// Envoy's `:scheme`: HTTP/2's (or an absolute URI's) as it came, else what
    /// `x-forwarded-proto` says after the header rules; `scheme_header_transformation`
    /// overwrites both.
    #[test]
    fn the_request_scheme_is_envoys() {
        let scheme_of = |h: &HeaderHandling, uri: &str, xfp: Option<&str>| {
            let mut req = Request::get(uri).body(()).unwrap();
            if let Some(v) = xfp {
                req.headers_mut()
                    .insert(X_FORWARDED_PROTO, HeaderValue::from_str(v).unwrap());
            }
            let facts = mutate_request(h, req.headers_mut(), PEER.parse().unwrap(), false, false);
            settle_scheme(&mut req, facts.scheme, h.scheme_to_overwrite);
            (
                request_scheme(&req).to_owned(),
                get(req.headers(), "x-forwarded-proto").map(str::to_owned),
                req.uri().to_string(),
            )
        };
        let own = HeaderHandling::default();
        let s = |a: &str, b: &str, c: &str| (a.to_owned(), Some(b.to_owned()), c.to_owned());
        // HTTP/1 in origin form: from `x-forwarded-proto` (trusted by default), any case.
        assert_eq!(scheme_of(&own, "/a", None), s("http", "http", "/a"));
        assert_eq!(
            scheme_of(&own, "/a", Some("https")),
            s("https", "https", "/a")
        );
        assert_eq!(
            scheme_of(&own, "/a", Some("HTTPS")),
            s("https", "HTTPS", "/a")
        );
        assert_eq!(
            scheme_of(&own, "/a", Some("gopher")),
            s("http", "gopher", "/a")
        );
        // HTTP/2's `:scheme` is the client's own, whatever `x-forwarded-proto` says.
        assert_eq!(
            scheme_of(&own, "https://web/a", Some("http")),
            s("https", "http", "https://web/a")
        );
        // At the edge, `x-forwarded-proto` is the connection's (plain here).
        let edge = HeaderHandling {
            use_remote_address: true,
            ..HeaderHandling::default()
        };
        assert_eq!(
            scheme_of(&edge, "/a", Some("https")),
            s("http", "http", "/a")
        );
        // Overwritten: `:scheme` and `x-forwarded-proto` both.
        let https = HeaderHandling {
            scheme_to_overwrite: Some(RequestScheme::Https),
            ..HeaderHandling::default()
        };
        assert_eq!(
            scheme_of(&https, "/a", Some("http")),
            s("https", "https", "/a")
        );
        assert_eq!(
            scheme_of(&https, "http://web/a?b", None),
            s("https", "https", "https://web/a?b")
        );
        let http = HeaderHandling {
            scheme_to_overwrite: Some(RequestScheme::Http),
            ..HeaderHandling::default()
        };
        assert_eq!(
            scheme_of(&http, "https://web/a", Some("https")),
            s("http", "http", "http://web/a")
        );
    }

    /// Envoy's custom header original IP detection: the client is the header's address
    /// (trusted, it may make the request internal); without one, the peer (not trusted), or
    /// a refusal when the extension says so.
    #[test]
    fn the_client_address_may_come_from_a_header() {
        use crate::model::listener::ClientAddressHeader;
        let h = |trusted, reject_status| HeaderHandling {
            internal_cidrs: vec![cidr("10.0.0.0/8")],
            client_address_header: Some(ClientAddressHeader {
                name: "x-real-client-ip".into(),
                trusted,
                reject_status,
            }),
            ..HeaderHandling::default()
        };
        let run = |h: &HeaderHandling, pairs: &[(&str, &str)]| {
            let mut req = headers(pairs);
            let facts = mutate_request(h, &mut req, PEER.parse().unwrap(), false, false);
            (get(&req, "x-envoy-internal").is_some(), facts.reject)
        };
        let inside = [("x-real-client-ip", " 10.9.9.9 ")];
        let outside = [("x-real-client-ip", "192.0.2.1")];
        assert_eq!(run(&h(true, None), &inside), (true, None));
        assert_eq!(run(&h(true, None), &outside), (false, None));
        // Not trusted: the address is the client's, but cannot make it internal.
        assert_eq!(run(&h(false, None), &inside), (false, None));
        // Missing or not an address: the peer (10.1.2.3, in the range) is not trusted.
        assert_eq!(run(&h(true, None), &[]), (false, None));
        assert_eq!(
            run(&h(true, Some(403)), &[("x-real-client-ip", "nope")]),
            (false, Some(403))
        );
        // `x-forwarded-for` is not read.
        assert_eq!(
            run(&h(true, None), &[("x-forwarded-for", "10.9.9.9")]),
            (false, None)
        );
    }
}
