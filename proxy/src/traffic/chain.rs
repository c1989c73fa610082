//! Filter-chain selection with Envoy's `FilterChainMatch` semantics.
//!
//! Envoy narrows the candidates one criterion at a time, in a fixed order: destination
//! port, destination IP, server name, transport protocol, application protocol. At each
//! step, if some chain matches the criterion specifically, only the most specific ones go
//! on; chains that leave the criterion empty are the fallback at that step only. If no
//! chain is left, the listener's default filter chain serves the connection (or it is
//! closed). So a chain for port 80 with no further criteria wins over a port-less chain
//! for 10.0.0.0/8, and a `10.1.0.0/16` chain beats a `10.0.0.0/8` one.
//!
//! The source criteria (`source_type`, `source_prefix_ranges`, `source_ports`) are not in
//! the model: the converter rejects them by field path.

use std::net::SocketAddr;

use crate::model::listener::{FilterChain, FilterChainMatch, Listener};

/// What is known about a connection when its chain is chosen.
#[derive(Debug, Clone, Copy)]
pub struct ChainContext<'a> {
    /// The original destination (or the bound listener's local address).
    pub dst: SocketAddr,
    /// TLS SNI, when the connection is TLS and sent one.
    pub server_name: Option<&'a str>,
    /// `tls` or `raw_buffer`.
    pub transport_protocol: &'a str,
    /// Detected application protocols (`http/1.1`, `h2c`, or TLS ALPN values).
    pub application_protocols: &'a [&'a str],
}

/// The chain that serves a connection, or `None` (close it). The returned index is the
/// chain's position in `filter_chains`, or `None` for the default chain.
pub fn select<'l>(
    listener: &'l Listener,
    cx: &ChainContext<'_>,
) -> Option<(Option<usize>, &'l FilterChain)> {
    let mut cands: Vec<(usize, &FilterChainMatch)> = listener
        .filter_chains
        .iter()
        .enumerate()
        .map(|(i, c)| (i, &c.filter_chain_match))
        .collect();
    narrow(&mut cands, |m| match m.destination_port {
        None => Some(0),
        Some(p) if p == cx.dst.port() => Some(1),
        Some(_) => None,
    });
    narrow(&mut cands, |m| {
        if m.prefix_ranges.is_empty() {
            return Some(0);
        }
        m.prefix_ranges
            .iter()
            .filter(|r| r.contains(cx.dst.ip()))
            .map(|r| 1 + u32::from(r.prefix_len))
            .max()
    });
    narrow(&mut cands, |m| {
        server_name_score(&m.server_names, cx.server_name)
    });
    narrow(&mut cands, |m| match &m.transport_protocol {
        None => Some(0),
        Some(t) if t == cx.transport_protocol => Some(1),
        Some(_) => None,
    });
    narrow(&mut cands, |m| {
        if m.application_protocols.is_empty() {
            Some(0)
        } else if m
            .application_protocols
            .iter()
            .any(|p| cx.application_protocols.contains(&p.as_str()))
        {
            Some(1)
        } else {
            None
        }
    });
    match cands.first() {
        Some(&(i, _)) => Some((Some(i), &listener.filter_chains[i])),
        None => listener.default_filter_chain.as_ref().map(|c| (None, c)),
    }
}

/// Keeps the candidates with the highest score; `None` drops a candidate.
fn narrow(
    cands: &mut Vec<(usize, &FilterChainMatch)>,
    score: impl Fn(&FilterChainMatch) -> Option<u32>,
) {
    let scored: Vec<Option<u32>> = cands.iter().map(|(_, m)| score(m)).collect();
    let Some(best) = scored.iter().flatten().max().copied() else {
        cands.clear();
        return;
    };
    let mut i = 0;
    cands.retain(|_| {
        let keep = scored[i] == Some(best);
        i += 1;
        keep
    });
}

/// Exact names beat wildcards, longer wildcards beat shorter ones; no SNI only matches
/// chains without server names.
fn server_name_score(names: &[String], sni: Option<&str>) -> Option<u32> {
    if names.is_empty() {
        return Some(0);
    }
    let sni = sni?.to_ascii_lowercase();
    names
        .iter()
        .filter_map(|n| {
            let n = n.to_ascii_lowercase();
            if n == sni {
                Some(u32::MAX)
            } else if let Some(suffix) = n.strip_prefix('*') {
                // `*.example.com` matches `a.example.com` (and `a.b.example.com`, as in
                // Envoy), never `example.com` itself.
                (sni.len() > suffix.len() && sni.ends_with(suffix)).then_some(suffix.len() as u32)
            } else {
                None
            }
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::listener::{CidrRange, NetworkFilter, TcpCluster, TcpProxy};

    fn chain(name: &str, m: FilterChainMatch) -> FilterChain {
        FilterChain {
            name: name.into(),
            filter_chain_match: m,
            rbac: std::sync::Arc::new([]),
            filter: NetworkFilter::TcpProxy(TcpProxy {
                stat_prefix: name.into(),
                cluster: TcpCluster::Cluster(name.into()),
                idle_timeout: None,
                tunneling: None,
            }),
            tls: None,
            handshake_timeout: None,
        }
    }

    fn range(s: &str) -> CidrRange {
        let (a, p) = s.split_once('/').unwrap();
        CidrRange {
            address: a.parse().unwrap(),
            prefix_len: p.parse().unwrap(),
        }
    }

    fn listener(chains: Vec<FilterChain>, default: bool) -> Listener {
        Listener {
            name: "l".into(),
            address: "0.0.0.0:15001".parse().unwrap(),
            bind_to_port: false,
            ipv4_compat: false,
            filter_chains: chains,
            default_filter_chain: default.then(|| chain("default", FilterChainMatch::default())),
            listener_filters: Default::default(),
        }
    }

    fn pick(
        l: &Listener,
        dst: &str,
        sni: Option<&str>,
        transport: &str,
        alpn: &[&str],
    ) -> Option<String> {
        let cx = ChainContext {
            dst: dst.parse().unwrap(),
            server_name: sni,
            transport_protocol: transport,
            application_protocols: alpn,
        };
        select(l, &cx).map(|(_, c)| c.name.clone())
    }

    #[test]
    fn most_specific_wins_level_by_level() {
        let l = listener(
            vec![
                chain("any", FilterChainMatch::default()),
                chain(
                    "port80",
                    FilterChainMatch {
                        destination_port: Some(80),
                        ..Default::default()
                    },
                ),
                chain(
                    "net8",
                    FilterChainMatch {
                        prefix_ranges: vec![range("10.0.0.0/8")],
                        ..Default::default()
                    },
                ),
                chain(
                    "net16",
                    FilterChainMatch {
                        prefix_ranges: vec![range("10.1.0.0/16")],
                        ..Default::default()
                    },
                ),
                chain(
                    "port443-sni",
                    FilterChainMatch {
                        destination_port: Some(443),
                        server_names: vec!["*.example.com".into()],
                        transport_protocol: Some("tls".into()),
                        ..Default::default()
                    },
                ),
                chain(
                    "port443-exact",
                    FilterChainMatch {
                        destination_port: Some(443),
                        server_names: vec!["api.example.com".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "port8080-h2c",
                    FilterChainMatch {
                        destination_port: Some(8080),
                        application_protocols: vec!["h2c".into()],
                        ..Default::default()
                    },
                ),
                chain(
                    "port8080-http",
                    FilterChainMatch {
                        destination_port: Some(8080),
                        application_protocols: vec!["http/1.1".into(), "http/1.0".into()],
                        ..Default::default()
                    },
                ),
            ],
            true,
        );
        /// (original destination, SNI, transport, application protocols, chain)
        type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            // Port beats address: port80 has no range but its port is specific.
            ("10.1.2.3:80", None, "raw_buffer", &[], "port80"),
            ("10.1.2.3:81", None, "raw_buffer", &[], "net16"),
            ("10.2.0.1:81", None, "raw_buffer", &[], "net8"),
            ("192.168.0.1:81", None, "raw_buffer", &[], "any"),
            (
                "192.168.0.1:443",
                Some("api.example.com"),
                "tls",
                &[],
                "port443-exact",
            ),
            (
                "192.168.0.1:443",
                Some("www.example.com"),
                "tls",
                &[],
                "port443-sni",
            ),
            // SNI matches the wildcard, but the transport is wrong: nothing left on 443.
            (
                "192.168.0.1:443",
                Some("www.example.com"),
                "raw_buffer",
                &[],
                "default",
            ),
            // No SNI: no 443 chain matches; no fallback to the port-less chains.
            ("192.168.0.1:443", None, "tls", &[], "default"),
            (
                "192.168.0.1:8080",
                None,
                "raw_buffer",
                &["http/1.1"],
                "port8080-http",
            ),
            (
                "192.168.0.1:8080",
                None,
                "raw_buffer",
                &["h2c"],
                "port8080-h2c",
            ),
            ("192.168.0.1:8080", None, "raw_buffer", &[], "default"),
        ];
        for (dst, sni, transport, alpn, want) in cases {
            assert_eq!(
                pick(&l, dst, *sni, transport, alpn).as_deref(),
                Some(*want),
                "{dst} sni={sni:?} {transport} {alpn:?}"
            );
        }
    }

    #[test]
    fn no_match_without_default_closes() {
        let l = listener(
            vec![chain(
                "port80",
                FilterChainMatch {
                    destination_port: Some(80),
                    ..Default::default()
                },
            )],
            false,
        );
        assert_eq!(pick(&l, "10.0.0.1:81", None, "raw_buffer", &[]), None);
        let cx = ChainContext {
            dst: "10.0.0.1:80".parse().unwrap(),
            server_name: None,
            transport_protocol: "raw_buffer",
            application_protocols: &[],
        };
        assert_eq!(select(&l, &cx).map(|(i, _)| i), Some(Some(0)));
    }

    #[test]
    fn server_name_scores() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(server_name_score(&[], None), Some(0));
        assert_eq!(server_name_score(&names(&["a.com"]), None), None);
        assert_eq!(
            server_name_score(&names(&["A.com"]), Some("a.COM")),
            Some(u32::MAX)
        );
        assert_eq!(server_name_score(&names(&["*.a.com"]), Some("a.com")), None);
        assert!(
            server_name_score(&names(&["*.b.a.com"]), Some("x.b.a.com"))
                > server_name_score(&names(&["*.a.com"]), Some("x.b.a.com"))
        );
    }
}
