//! The PROXY protocol (HAProxy's `proxy-protocol.txt`, v1 text and v2 binary), as Envoy
//! speaks it: read at the start of a connection to a listener with the `proxy_protocol`
//! listener filter ([`read`]), written at the start of each upstream connection of a
//! cluster with the `upstream_proxy_protocol` transport socket ([`upstream_header`],
//! [`send`]).
//!
//! Which bytes are a header is decided by a pure function of the bytes read so far
//! ([`decide`], table-tested below) with Envoy's rules (`proxy_protocol.cc`): the version
//! by its signature; v1 at most 108 bytes, `PROXY UNKNOWN` and v2 `LOCAL` leave the
//! addresses alone; a v2 `PROXY` must name IPv4 or IPv6 (stream or datagram); addresses
//! must be unicast. The parsing of the header itself is `ppp`'s.
//!
//! What a header says replaces the connection's remote address (the client, for
//! `x-forwarded-for`, RBAC `remote_ip`/`source_ip`, hash policies, ext_authz) and its
//! local address (the destination, for filter chain matching and RBAC); the physical peer
//! stays what RBAC `direct_remote_ip` sees and what the source workload is found by (a
//! pod cannot claim another's identity with a header).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::model::proxy_protocol::{
    ProxyProtocolListener, ProxyProtocolVersion, TlvFilter, UpstreamProxyProtocol,
};

/// The v2 signature.
const V2_SIGNATURE: &[u8] = ppp::v2::PROTOCOL_PREFIX;
/// The v1 signature (`PROXY` and its separator).
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header Envoy takes, CR LF included.
const MAX_V1: usize = 108;
/// The fixed part of a v2 header.
const V2_FIXED: usize = 16;

/// What a header said about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    pub(crate) version: ProxyProtocolVersion,
    /// The client and the address it connected to; `None` for v1 `UNKNOWN` and v2
    /// `LOCAL` (the connection's own addresses stand).
    pub(crate) addresses: Option<(SocketAddr, SocketAddr)>,
    /// The v2 TLVs the listener passes through (`pass_through_tlvs`), in wire order.
    pub(crate) tlvs: Vec<(u8, Bytes)>,
}

/// What a connection's PROXY protocol header said besides its addresses, kept with the
/// connection (shared by its requests).
#[derive(Debug)]
pub(crate) struct Proxied {
    /// The physical peer (RBAC `direct_remote_ip`).
    pub(crate) direct: SocketAddr,
    /// The TLVs passed through, for upstream headers.
    pub(crate) tlvs: Vec<(u8, Bytes)>,
}

/// The physical peer of a connection whose client is `peer`: `peer` itself unless a PROXY
/// protocol header named the client (`proxied`).
pub(crate) fn direct(peer: SocketAddr, proxied: Option<&Proxied>) -> SocketAddr {
    proxied.map_or(peer, |p| p.direct)
}

/// What the bytes read so far are.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Not enough to tell.
    NeedMore,
    /// Not a header of an allowed version, and the listener serves such connections
    /// (`allow_requests_without_proxy_protocol`): every byte is the application's.
    NotFound,
    /// A header of this many bytes.
    Header(Received, usize),
    /// A header of a version the listener does not take: the connection is closed.
    Disallowed(ProxyProtocolVersion),
    /// Not a valid header (of this version, when its signature was seen).
    Invalid(Option<ProxyProtocolVersion>, String),
}

/// Decides what `buf`, the first bytes of a connection, begins with.
pub(crate) fn decide(buf: &[u8], cfg: &ProxyProtocolListener) -> Decision {
    let like = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        buf[..n] == sig[..n]
    };
    let (v2_like, v1_like) = (like(V2_SIGNATURE), like(V1_SIGNATURE));
    if cfg.optional
        && !(v2_like && cfg.allows(ProxyProtocolVersion::V2))
        && !(v1_like && cfg.allows(ProxyProtocolVersion::V1))
    {
        return Decision::NotFound;
    }
    if buf.is_empty() {
        return Decision::NeedMore;
    }
    if v2_like {
        if buf.len() < V2_SIGNATURE.len() {
            return Decision::NeedMore;
        }
        if !cfg.allows(ProxyProtocolVersion::V2) {
            return Decision::Disallowed(ProxyProtocolVersion::V2);
        }
        return v2(buf, &cfg.pass_through);
    }
    if v1_like {
        if buf.len() < V1_SIGNATURE.len() {
            return Decision::NeedMore;
        }
        if !cfg.allows(ProxyProtocolVersion::V1) {
            return Decision::Disallowed(ProxyProtocolVersion::V1);
        }
        return v1(buf);
    }
    Decision::Invalid(
        None,
        "the connection does not open with a PROXY protocol header".into(),
    )
}

fn invalid(version: ProxyProtocolVersion, why: impl std::fmt::Display) -> Decision {
    Decision::Invalid(Some(version), why.to_string())
}

/// Envoy takes only unicast addresses of the family the header names.
fn unicast(a: SocketAddr) -> bool {
    match a.ip() {
        IpAddr::V4(ip) => !ip.is_unspecified() && !ip.is_multicast() && !ip.is_broadcast(),
        IpAddr::V6(ip) => !ip.is_unspecified() && !ip.is_multicast(),
    }
}

fn addresses(
    version: ProxyProtocolVersion,
    src: SocketAddr,
    dst: SocketAddr,
) -> Result<(SocketAddr, SocketAddr), Decision> {
    if !unicast(src) || !unicast(dst) {
        return Err(invalid(
            version,
            format!("the addresses {src} and {dst} are not both unicast"),
        ));
    }
    Ok((src, dst))
}

fn v1(buf: &[u8]) -> Decision {
    let v = ProxyProtocolVersion::V1;
    let window = &buf[..buf.len().min(MAX_V1)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            invalid(v, format!("no CR LF within {MAX_V1} bytes"))
        } else {
            Decision::NeedMore
        };
    };
    let len = cr + 2;
    let header = match ppp::v1::Header::try_from(&buf[..len]) {
        Ok(h) => h,
        Err(e) => return invalid(v, e),
    };
    let addresses = match header.addresses {
        ppp::v1::Addresses::Unknown => None,
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        )),
    };
    let addresses = match addresses.map(|(s, d)| self::addresses(v, s, d)).transpose() {
        Ok(a) => a,
        Err(d) => return d,
    };
    Decision::Header(
        Received {
            version: v,
            addresses,
            tlvs: Vec::new(),
        },
        len,
    )
}

fn v2(buf: &[u8], pass: &TlvFilter) -> Decision {
    let v = ProxyProtocolVersion::V2;
    if buf.len() < V2_FIXED {
        return Decision::NeedMore;
    }
    // LOCAL: whatever follows is skipped, whatever its family says (Envoy's reading; `ppp`
    // would check the addresses' length against the family).
    if buf[12] == 0x20 {
        let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if buf.len() < len {
            return Decision::NeedMore;
        }
        return Decision::Header(
            Received {
                version: v,
                addresses: None,
                tlvs: Vec::new(),
            },
            len,
        );
    }
    let header = match ppp::v2::Header::try_from(buf) {
        Ok(h) => h,
        Err(ppp::v2::ParseError::Incomplete(_) | ppp::v2::ParseError::Partial(..)) => {
            return Decision::NeedMore
        }
        Err(e) => return invalid(v, e),
    };
    if header.protocol == ppp::v2::Protocol::Unspecified {
        return invalid(v, "the transport protocol is unspecified");
    }
    let (src, dst) = match header.addresses {
        ppp::v2::Addresses::IPv4(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        ppp::v2::Addresses::IPv6(a) => (
            SocketAddr::from((a.source_address, a.source_port)),
            SocketAddr::from((a.destination_address, a.destination_port)),
        ),
        ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => {
            return invalid(v, "the address family is neither IPv4 nor IPv6")
        }
    };
    let addresses = match self::addresses(v, src, dst) {
        Ok(a) => a,
        Err(d) => return d,
    };
    let mut tlvs = Vec::new();
    for tlv in header.tlvs() {
        match tlv {
            Ok(t) if pass.passes(t.kind) => {
                tlvs.push((t.kind, Bytes::copy_from_slice(&t.value)));
            }
            Ok(_) => {}
            Err(e) => return invalid(v, format!("its TLVs: {e}")),
        }
    }
    Decision::Header(
        Received {
            version: v,
            addresses: Some(addresses),
            tlvs,
        },
        header.len(),
    )
}

/// What [`read`] found.
#[derive(Debug)]
pub(crate) enum Read {
    /// A header; the bytes read after it.
    Header(Received, Bytes),
    /// No header, which the listener allows: the bytes read, all the application's.
    NotFound(Bytes),
}

/// Why [`read`] gave up; the connection is closed, except after a timeout when the
/// listener says to go on (`continue_on_listener_filters_timeout`) with the bytes read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("invalid PROXY protocol header: {1}")]
    Invalid(Option<ProxyProtocolVersion>, String),
    #[error("PROXY protocol {} header not allowed on this listener", .0.as_str())]
    Disallowed(ProxyProtocolVersion),
    #[error("the connection ended before its PROXY protocol header did")]
    Closed,
    #[error("no whole PROXY protocol header within {0:?}")]
    TimedOut(Duration, Bytes),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads the PROXY protocol header `cfg` expects at the start of `io`, until `deadline`
/// (`None`: no bound). Reads no byte past what it needs to decide but what a read returns
/// with it: those come back with the outcome.
pub(crate) async fn read<T: AsyncRead + Unpin>(
    io: &mut T,
    cfg: &ProxyProtocolListener,
    timeout: Option<Duration>,
) -> Result<Read, ReadError> {
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match decide(&buf, cfg) {
            Decision::NeedMore => {}
            Decision::NotFound => return Ok(Read::NotFound(buf.freeze())),
            Decision::Header(received, len) => {
                let rest = buf.split_off(len).freeze();
                return Ok(Read::Header(received, rest));
            }
            Decision::Disallowed(v) => return Err(ReadError::Disallowed(v)),
            Decision::Invalid(v, why) => return Err(ReadError::Invalid(v, why)),
        }
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(512));
        }
        let n = match deadline {
            None => io.read_buf(&mut buf).await?,
            Some(d) => match tokio::time::timeout_at(d, io.read_buf(&mut buf)).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ReadError::TimedOut(
                        timeout.unwrap_or_default(),
                        buf.freeze(),
                    ))
                }
            },
        };
        if n == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// What an upstream connection sends before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Header {
    /// These bytes.
    Bytes(Bytes),
    /// A v1 header with the upstream connection's own addresses: what Envoy sends when
    /// there is no downstream connection (health checks, calls of filters to services).
    V1Own,
}

/// The downstream connection an upstream one is made for: its client and the address it
/// connected to (as a PROXY protocol header said, else the connection's own), and the
/// TLVs its header passed through.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Downstream<'a> {
    pub(crate) remote: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) tlvs: &'a [(u8, Bytes)],
}

impl<'a> Downstream<'a> {
    /// A connection from `remote` to `local` and the TLVs its header (if any) passed.
    pub(crate) fn of(remote: SocketAddr, local: SocketAddr, proxied: Option<&'a Proxied>) -> Self {
        Self {
            remote,
            local,
            tlvs: proxied.map_or(&[], |p| &p.tlvs[..]),
        }
    }
}

/// The header `cfg` sends on a connection made for `downstream` (`None`: no downstream).
pub(crate) fn upstream_header(
    cfg: &UpstreamProxyProtocol,
    downstream: Option<Downstream<'_>>,
) -> Header {
    let Some(d) = downstream else {
        return match cfg.version {
            ProxyProtocolVersion::V1 => Header::V1Own,
            ProxyProtocolVersion::V2 => Header::Bytes(Bytes::from_static(V2_LOCAL)),
        };
    };
    let (src, dst) = (canonical(d.remote), canonical(d.local));
    Header::Bytes(match cfg.version {
        ProxyProtocolVersion::V1 => v1_header(Some((src, dst))),
        ProxyProtocolVersion::V2 => v2_header(cfg, src, dst, d.tlvs),
    })
}

/// The v2 `LOCAL` header: no addresses, no TLVs.
const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

/// IPv4 addresses of a dual-stack socket as IPv4.
fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// `PROXY TCP4|TCP6 src dst sport dport\r\n`, or `PROXY UNKNOWN\r\n` when the two
/// addresses are not of one family (or not known).
pub(crate) fn v1_header(addresses: Option<(SocketAddr, SocketAddr)>) -> Bytes {
    let line = match addresses {
        Some((s, d)) if s.is_ipv4() == d.is_ipv4() => format!(
            "PROXY {} {} {} {} {}\r\n",
            if s.is_ipv4() { "TCP4" } else { "TCP6" },
            s.ip(),
            d.ip(),
            s.port(),
            d.port()
        ),
        _ => "PROXY UNKNOWN\r\n".to_owned(),
    };
    Bytes::from(line)
}

/// A v2 `PROXY` header over a stream: the addresses, then the configured TLVs (a type
/// repeated among them taken once, the first), then the downstream's TLVs that
/// `pass_through` lets pass and whose type is not among the configured ones (Envoy's
/// order and precedence). TLVs that would take the header past its 65,535-byte limit are
/// left out, as Envoy does. Addresses of two families make a `LOCAL` header.
fn v2_header(
    cfg: &UpstreamProxyProtocol,
    src: SocketAddr,
    dst: SocketAddr,
    downstream_tlvs: &[(u8, Bytes)],
) -> Bytes {
    if src.is_ipv4() != dst.is_ipv4() {
        return Bytes::from_static(V2_LOCAL);
    }
    let addresses = ppp::v2::Addresses::from((src, dst));
    let room = usize::from(u16::MAX) - addresses.len();
    let mut used = 0;
    let mut builder = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    );
    let mut added: Vec<u8> = Vec::new();
    let mut configured: Vec<(u8, &[u8])> = Vec::new();
    for t in &cfg.added_tlvs {
        if !added.contains(&t.kind) {
            added.push(t.kind);
            configured.push((t.kind, t.value.as_slice()));
        }
    }
    let passed = downstream_tlvs
        .iter()
        .filter(|(k, _)| cfg.pass_through.passes(*k) && !added.contains(k))
        .map(|(k, v)| (*k, v.as_ref()));
    for (kind, value) in configured.iter().copied().chain(passed) {
        let size = 3 + value.len();
        if used + size > room {
            tracing::debug!(
                kind,
                len = value.len(),
                "PROXY protocol TLV left out: the header would be too long"
            );
            continue;
        }
        used += size;
        builder = builder
            .write_tlv(kind, value)
            .expect("writing to a Vec cannot fail");
    }
    Bytes::from(
        builder
            .build()
            .expect("the length was kept under the limit"),
    )
}

/// Writes `header` on a freshly made upstream connection `io` (before TLS), whose own
/// addresses `own` are (for [`Header::V1Own`]; `None` when it has none, a tunnel).
pub(crate) async fn send<T: AsyncWrite + Unpin>(
    io: &mut T,
    header: &Header,
    own: Option<(SocketAddr, SocketAddr)>,
) -> std::io::Result<()> {
    match header {
        Header::Bytes(b) => io.write_all(b).await,
        Header::V1Own => {
            let own = own.map(|(local, peer)| (canonical(local), canonical(peer)));
            io.write_all(&v1_header(own)).await
        }
    }
}

/// [`decide`] on `data` after a control byte choosing the listener's settings, with its
/// invariants asserted (the fuzz target's, and the unit tests'): a header is a prefix of
/// the input that decides the same alone and whose shorter prefixes all wait for more; an
/// input that waits has only prefixes that wait.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_decide(data: &[u8]) {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let mut disallowed = Vec::new();
    if control & 2 != 0 {
        disallowed.push(ProxyProtocolVersion::V1);
    }
    if control & 4 != 0 {
        disallowed.push(ProxyProtocolVersion::V2);
    }
    let cfg = ProxyProtocolListener {
        optional: control & 1 != 0,
        disallowed,
        pass_through: match (control >> 3) & 3 {
            0 => TlvFilter::None,
            1 => TlvFilter::All,
            _ => TlvFilter::Only(vec![control, 0xE0]),
        },
        stat_prefix: "".into(),
    };
    match decide(data, &cfg) {
        Decision::Header(received, len) => {
            assert!(len <= data.len(), "a header longer than its input");
            assert_eq!(
                decide(&data[..len], &cfg),
                Decision::Header(received, len),
                "the header alone decides otherwise"
            );
            for cut in 0..len {
                assert_eq!(
                    decide(&data[..cut], &cfg),
                    Decision::NeedMore,
                    "a prefix of a header ({cut} of {len} bytes) did not wait"
                );
            }
        }
        Decision::NeedMore => {
            for cut in 0..data.len() {
                assert_eq!(
                    decide(&data[..cut], &cfg),
                    Decision::NeedMore,
                    "a prefix of an input that waits did not wait"
                );
            }
        }
        Decision::NotFound | Decision::Disallowed(_) | Decision::Invalid(..) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::proxy_protocol::Tlv;

    fn strict() -> ProxyProtocolListener {
        ProxyProtocolListener::default()
    }

    fn v2_proxy(src: &str, dst: &str, tlvs: &[(u8, &[u8])]) -> Vec<u8> {
        let src: SocketAddr = src.parse().unwrap();
        let dst: SocketAddr = dst.parse().unwrap();
        let mut b = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (src, dst),
        );
        for (k, v) in tlvs {
            b = b.write_tlv(*k, v).unwrap();
        }
        b.build().unwrap()
    }

    fn header(d: Decision) -> (Received, usize) {
        match d {
            Decision::Header(r, n) => (r, n),
            other => panic!("not a header: {other:?}"),
        }
    }

    #[test]
    fn v1_headers() {
        let line = b"PROXY TCP4 192.0.2.1 10.0.0.7 56324 443\r\nGET / HTTP/1.1\r\n";
        let (r, n) = header(decide(line, &strict()));
        assert_eq!(n, 41);
        assert_eq!(&line[n..n + 3], b"GET");
        assert_eq!(r.version, ProxyProtocolVersion::V1);
        assert_eq!(
            r.addresses,
            Some((
                "192.0.2.1:56324".parse().unwrap(),
                "10.0.0.7:443".parse().unwrap()
            ))
        );
        let (r, _) = header(decide(
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n",
            &strict(),
        ));
        assert_eq!(
            r.addresses,
            Some((
                "[2001:db8::1]:1000".parse().unwrap(),
                "[2001:db8::2]:80".parse().unwrap()
            ))
        );
        // UNKNOWN: the connection's own addresses stand; the rest of its line is skipped.
        let (r, n) = header(decide(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nx", &strict()));
        assert_eq!((r.addresses, n), (None, 35));
        // Partial headers wait, whole ones of the wrong shape do not.
        for partial in [&b""[..], b"P", b"PROX", b"PROXY ", b"PROXY TCP4 192.0.2.1 "] {
            assert_eq!(
                decide(partial, &strict()),
                Decision::NeedMore,
                "{partial:?}"
            );
        }
        for bad in [
            &b"PROXY TCP4 192.0.2.1 10.0.0.7 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.7 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 10.0.0.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 10.0.0.7 1 99999\r\n",
            // Not unicast.
            b"PROXY TCP4 0.0.0.0 10.0.0.7 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 224.0.0.1 1 2\r\n",
            b"PROXY TCP4 255.255.255.255 10.0.0.7 1 2\r\n",
        ] {
            assert!(
                matches!(
                    decide(bad, &strict()),
                    Decision::Invalid(Some(ProxyProtocolVersion::V1), _)
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // No CR LF within 108 bytes.
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(matches!(decide(&long, &strict()), Decision::Invalid(..)));
    }

    #[test]
    fn v2_headers() {
        let mut bytes = v2_proxy(
            "192.0.2.1:56324",
            "10.0.0.7:443",
            &[(0x02, b"example.com"), (0xE0, b"x")],
        );
        let whole = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01");
        let pass_all = ProxyProtocolListener {
            pass_through: TlvFilter::All,
            ..strict()
        };
        let (r, n) = header(decide(&bytes, &pass_all));
        assert_eq!(n, whole);
        assert_eq!(r.version, ProxyProtocolVersion::V2);
        assert_eq!(
            r.addresses,
            Some((
                "192.0.2.1:56324".parse().unwrap(),
                "10.0.0.7:443".parse().unwrap()
            ))
        );
        assert_eq!(
            r.tlvs,
            vec![
                (0x02, Bytes::from_static(b"example.com")),
                (0xE0, Bytes::from_static(b"x"))
            ]
        );
        // TLVs pass only as the listener says.
        assert!(header(decide(&bytes, &strict())).0.tlvs.is_empty());
        let only = ProxyProtocolListener {
            pass_through: TlvFilter::Only(vec![0xE0]),
            ..strict()
        };
        assert_eq!(
            header(decide(&bytes, &only)).0.tlvs,
            vec![(0xE0, Bytes::from_static(b"x"))]
        );
        // Any prefix of the header waits for the rest.
        for cut in [1, 11, 12, 15, 16, whole - 1] {
            assert_eq!(
                decide(&bytes[..cut], &strict()),
                Decision::NeedMore,
                "{cut}"
            );
        }
        // IPv6, and datagram (taken as Envoy takes it).
        let mut six = v2_proxy("[2001:db8::1]:1", "[2001:db8::2]:2", &[]);
        let (r, _) = header(decide(&six, &strict()));
        assert_eq!(r.addresses.unwrap().0, "[2001:db8::1]:1".parse().unwrap());
        six[13] = 0x22;
        assert!(matches!(decide(&six, &strict()), Decision::Header(..)));
        // LOCAL: addresses left alone, whatever follows skipped.
        let mut local = V2_LOCAL.to_vec();
        local[15] = 4;
        local.extend_from_slice(b"abcdGET");
        let (r, n) = header(decide(&local, &strict()));
        assert_eq!((r.addresses, n), (None, 20));
        // Unspecified family or transport, bad version, cut TLVs, not unicast: invalid.
        let mut unspec = v2_proxy("192.0.2.1:1", "10.0.0.7:2", &[]);
        unspec[13] = 0x00;
        let mut no_transport = v2_proxy("192.0.2.1:1", "10.0.0.7:2", &[]);
        no_transport[13] = 0x10;
        let mut version = v2_proxy("192.0.2.1:1", "10.0.0.7:2", &[]);
        version[12] = 0x31;
        let mut cut_tlv = v2_proxy("192.0.2.1:1", "10.0.0.7:2", &[(1, b"abc")]);
        let len = cut_tlv.len();
        // Its TLV (type, length, "abc") says 9 bytes.
        cut_tlv[len - 5..len - 3].copy_from_slice(&9u16.to_be_bytes());
        for (what, bad) in [
            ("unspecified family", unspec),
            ("no transport", no_transport),
            ("version 3", version),
            ("cut TLV", cut_tlv),
            ("any address", v2_proxy("0.0.0.0:1", "10.0.0.7:2", &[])),
        ] {
            assert!(
                matches!(
                    decide(&bad, &strict()),
                    Decision::Invalid(Some(ProxyProtocolVersion::V2), _)
                ),
                "{what}: {:?}",
                decide(&bad, &strict())
            );
        }
    }

    #[test]
    fn optional_and_disallowed() {
        let optional = ProxyProtocolListener {
            optional: true,
            ..strict()
        };
        // Plain HTTP: served as it is, decided at its first byte.
        assert_eq!(decide(b"G", &optional), Decision::NotFound);
        assert_eq!(decide(b"GET / HTTP/1.1\r\n", &optional), Decision::NotFound);
        assert!(matches!(
            decide(b"GET / HTTP/1.1\r\n", &strict()),
            Decision::Invalid(None, _)
        ));
        // A prefix of a signature waits (Envoy's reading: a short request that looks like
        // one waits for the timeout).
        assert_eq!(decide(b"PRO", &optional), Decision::NeedMore);
        assert_eq!(decide(b"\r\n\r\n", &optional), Decision::NeedMore);
        // `PROXY` is no HTTP method, but "PRI * HTTP/2.0" (h2c) is not a header either.
        assert_eq!(decide(b"PRI * HTTP/2.0\r\n", &optional), Decision::NotFound);
        assert!(matches!(
            decide(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", &optional),
            Decision::Header(..)
        ));
        // Disallowed versions: closed when required, data when optional.
        let no_v1 = ProxyProtocolListener {
            disallowed: vec![ProxyProtocolVersion::V1],
            ..strict()
        };
        let v1 = b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n";
        assert_eq!(
            decide(v1, &no_v1),
            Decision::Disallowed(ProxyProtocolVersion::V1)
        );
        let v2 = v2_proxy("1.2.3.4:1", "5.6.7.8:2", &[]);
        assert!(matches!(decide(&v2, &no_v1), Decision::Header(..)));
        let no_v2_optional = ProxyProtocolListener {
            disallowed: vec![ProxyProtocolVersion::V2],
            optional: true,
            ..strict()
        };
        assert_eq!(decide(&v2, &no_v2_optional), Decision::NotFound);
        assert!(matches!(decide(v1, &no_v2_optional), Decision::Header(..)));
    }

    /// The fuzz target's invariants over every settings byte, on headers and on them cut,
    /// corrupted and followed by bytes.
    #[test]
    fn decisions_are_consistent() {
        let mut inputs: Vec<Vec<u8>> = vec![
            b"PROXY TCP4 192.0.2.1 10.0.0.7 56324 443\r\nGET".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
            b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n".to_vec(),
            V2_LOCAL.to_vec(),
            v2_proxy("192.0.2.1:1", "10.0.0.7:2", &[(0xE0, b"x"), (1, b"yy")]),
            v2_proxy("[2001:db8::1]:1", "[2001:db8::2]:2", &[]),
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        ];
        let mut more = Vec::new();
        let mut seed = 0x9E37_79B9u32;
        for input in &inputs {
            for i in 0..input.len() {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let mut flipped = input.clone();
                flipped[i] ^= (seed >> 24) as u8 | 1;
                more.push(flipped);
                more.push(input[..i].to_vec());
            }
        }
        inputs.extend(more);
        for control in 0..32u8 {
            for input in &inputs {
                let mut data = vec![control];
                data.extend_from_slice(input);
                check_decide(&data);
            }
        }
    }

    #[tokio::test]
    async fn read_keeps_what_follows() {
        let (mut client, mut server) = tokio::io::duplex(64);
        let cfg = strict();
        let reading = tokio::spawn(async move {
            let r = read(&mut server, &cfg, Some(Duration::from_secs(5))).await;
            (r, server)
        });
        // The header in two pieces, the request right behind its end.
        client
            .write_all(b"PROXY TCP4 192.0.2.1 10.0")
            .await
            .unwrap();
        tokio::task::yield_now().await;
        client.write_all(b".0.7 56324 443\r\nGET /").await.unwrap();
        let (r, _server) = reading.await.unwrap();
        match r.unwrap() {
            Read::Header(h, rest) => {
                assert_eq!(h.addresses.unwrap().0, "192.0.2.1:56324".parse().unwrap());
                assert_eq!(&rest[..], b"GET /");
            }
            other => panic!("{other:?}"),
        }
        // A client that stops halfway: closed at the end, timed out with the bytes.
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PROXY TCP4").await.unwrap();
        let r = read(&mut server, &strict(), Some(Duration::from_millis(50))).await;
        match r {
            Err(ReadError::TimedOut(_, bytes)) => assert_eq!(&bytes[..], b"PROXY TCP4"),
            other => panic!("{other:?}"),
        }
        drop(client);
        assert!(matches!(
            read(&mut server, &strict(), None).await,
            Err(ReadError::Closed)
        ));
    }

    #[test]
    fn upstream_headers() {
        let d = Downstream {
            remote: "192.0.2.1:56324".parse().unwrap(),
            local: "10.0.0.7:443".parse().unwrap(),
            tlvs: &[
                (0x02, Bytes::from_static(b"down.example")),
                (0xE0, Bytes::from_static(b"d")),
            ],
        };
        let v1 = UpstreamProxyProtocol {
            version: ProxyProtocolVersion::V1,
            pass_through: TlvFilter::None,
            added_tlvs: vec![],
        };
        assert_eq!(
            upstream_header(&v1, Some(d)),
            Header::Bytes(Bytes::from_static(
                b"PROXY TCP4 192.0.2.1 10.0.0.7 56324 443\r\n"
            ))
        );
        assert_eq!(upstream_header(&v1, None), Header::V1Own);
        // A dual-stack socket's IPv4 client is written as IPv4.
        let mapped = Downstream {
            remote: "[::ffff:192.0.2.1]:1".parse().unwrap(),
            local: "[::ffff:10.0.0.7]:2".parse().unwrap(),
            tlvs: &[],
        };
        assert_eq!(
            upstream_header(&v1, Some(mapped)),
            Header::Bytes(Bytes::from_static(b"PROXY TCP4 192.0.2.1 10.0.0.7 1 2\r\n"))
        );
        let mixed = Downstream {
            remote: "192.0.2.1:1".parse().unwrap(),
            local: "[2001:db8::2]:2".parse().unwrap(),
            tlvs: &[],
        };
        assert_eq!(
            upstream_header(&v1, Some(mixed)),
            Header::Bytes(Bytes::from_static(b"PROXY UNKNOWN\r\n"))
        );

        // v2: what the listener reads back; configured TLVs first and winning their type.
        let v2 = UpstreamProxyProtocol {
            version: ProxyProtocolVersion::V2,
            pass_through: TlvFilter::All,
            added_tlvs: vec![
                Tlv {
                    kind: 0x02,
                    value: b"configured.example".to_vec(),
                },
                Tlv {
                    kind: 0xF0,
                    value: b"1".to_vec(),
                },
                Tlv {
                    kind: 0xF0,
                    value: b"2".to_vec(),
                },
            ],
        };
        let Header::Bytes(bytes) = upstream_header(&v2, Some(d)) else {
            panic!()
        };
        let pass_all = ProxyProtocolListener {
            pass_through: TlvFilter::All,
            ..strict()
        };
        let (r, n) = header(decide(&bytes, &pass_all));
        assert_eq!(n, bytes.len());
        assert_eq!(r.addresses, Some((d.remote, d.local)));
        assert_eq!(
            r.tlvs,
            vec![
                (0x02, Bytes::from_static(b"configured.example")),
                (0xF0, Bytes::from_static(b"1")),
                (0xE0, Bytes::from_static(b"d")),
            ]
        );
        // Pass-through unset: only the configured ones.
        let own_only = UpstreamProxyProtocol {
            pass_through: TlvFilter::None,
            ..v2.clone()
        };
        let Header::Bytes(bytes) = upstream_header(&own_only, Some(d)) else {
            panic!()
        };
        assert_eq!(header(decide(&bytes, &pass_all)).0.tlvs.len(), 2);
        // No downstream, or two families: LOCAL.
        assert_eq!(
            upstream_header(&v2, None),
            Header::Bytes(Bytes::from_static(V2_LOCAL))
        );
        assert_eq!(
            upstream_header(&v2, Some(mixed)),
            Header::Bytes(Bytes::from_static(V2_LOCAL))
        );
        let (r, n) = header(decide(V2_LOCAL, &strict()));
        assert_eq!((r.addresses, n), (None, 16));
        // TLVs that do not fit are left out, the header stays valid.
        let big = UpstreamProxyProtocol {
            added_tlvs: vec![
                Tlv {
                    kind: 1,
                    value: vec![b'a'; 40_000],
                },
                Tlv {
                    kind: 2,
                    value: vec![b'b'; 40_000],
                },
                Tlv {
                    kind: 3,
                    value: vec![b'c'; 10],
                },
            ],
            ..v2
        };
        let Header::Bytes(bytes) = upstream_header(&big, Some(d)) else {
            panic!()
        };
        let kinds: Vec<u8> = header(decide(&bytes, &pass_all))
            .0
            .tlvs
            .iter()
            .map(|t| t.0)
            .collect();
        assert_eq!(kinds, vec![1, 3, 0xE0]);
    }

    #[tokio::test]
    async fn v1_own_addresses() {
        let mut out = Vec::new();
        let own = Some((
            "10.0.0.1:40000".parse().unwrap(),
            "10.0.0.2:80".parse().unwrap(),
        ));
        send(&mut out, &Header::V1Own, own).await.unwrap();
        assert_eq!(out, b"PROXY TCP4 10.0.0.1 10.0.0.2 40000 80\r\n");
        out.clear();
        send(&mut out, &Header::V1Own, None).await.unwrap();
        assert_eq!(out, b"PROXY UNKNOWN\r\n");
    }
}
