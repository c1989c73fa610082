//! Pod to pod on one node: the destination side's work, done by the source's proxy.
//!
//! A connection between two pods of this node never leaves the node, so it takes no
//! HBONE tunnel and no TLS (the bytes stay in the kernel, or in this process). What the
//! HBONE server does for a tunnel still has to happen: the inbound policy authorizes the
//! source's identity, and the connection (or each request) is reported by the
//! destination too. Both happen only when mutual TLS is configured
//! ([`ProxyConfig::inbound_policy`]); without it there are no identities to check.
//!
//! [`decide`] is the pure decision, made once per upstream address of a connection (and
//! per HTTP attempt, where the endpoint may change): not per byte.

use std::net::SocketAddr;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

use crate::model::{ProxyConfig, Workload};
use crate::outbound::Source;
use crate::tls::SpiffeId;

/// Why a same-node connection was refused (the `reason` label of
/// `myelin_proxy_local_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The destination's allow list does not name the source's identity (the HBONE
    /// server's `denied`).
    Denied,
    /// The destination has an allow list and the source is not a workload: no identity.
    NoIdentity,
}

impl Refusal {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refusal::Denied => "denied",
            Refusal::NoIdentity => "no_identity",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The `reason` label of a same-node refusal.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RefusalLabels {
    pub(crate) reason: Refusal,
}

/// What a connection from `source` to `addr` needs beyond the source's own work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Local<'a> {
    /// Not a workload of this node, or mutual TLS is off: nothing.
    No,
    /// A workload of this node that accepts the source: report the destination side too,
    /// with this `connection_security_policy` ([`security`]).
    Allowed(&'a Workload, &'static str),
    /// A workload of this node that does not accept the source: refuse before connecting.
    Refused(Refusal),
}

/// What both reporters say of a same-node connection from `source`: `mutual_tls` when the
/// source has an identity of our trust domain (as ztunnel's same-node fast path does: the
/// node proxy vouches for both ends, no certificate is exchanged), `none` when it has not.
pub(crate) fn security(config: &ProxyConfig, source: &Source) -> &'static str {
    if identity(config, source).is_some() {
        "mutual_tls"
    } else {
        "none"
    }
}

/// The source's SPIFFE ID, if it is a workload of our trust domain (a source that is not
/// a workload has the `unknown` principal, which parses as nothing).
fn identity(config: &ProxyConfig, source: &Source) -> Option<SpiffeId> {
    source
        .principal
        .parse::<SpiffeId>()
        .ok()
        .filter(|id| id.trust_domain() == config.trust_domain)
}

/// Decides whether `addr` is a local workload and whether `source` may reach it. One hash
/// lookup when mutual TLS is on, none when it is off.
pub(crate) fn decide<'a>(config: &'a ProxyConfig, source: &Source, addr: SocketAddr) -> Local<'a> {
    let Some(policy) = config.inbound_policy() else {
        return Local::No;
    };
    let Some(w) = config.workload_by_ip(addr.ip()) else {
        return Local::No;
    };
    let id = identity(config, source);
    if let Some(allowed) = policy.allowed(&w.namespace, &w.name) {
        match &id {
            None => return Local::Refused(Refusal::NoIdentity),
            Some(id) if !allowed.contains(id) => return Local::Refused(Refusal::Denied),
            Some(_) => {}
        }
    }
    Local::Allowed(w, if id.is_some() { "mutual_tls" } else { "none" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::golden::UNKNOWN;
    use crate::model::InboundPolicy;

    fn wl(name: &str, ip: &str) -> Workload {
        Workload {
            name: name.into(),
            namespace: "test".into(),
            service_account: name.into(),
            ip: ip.parse().unwrap(),
        }
    }

    fn source(principal: &str) -> Source {
        Source {
            workload: "x".into(),
            namespace: "test".into(),
            principal: principal.into(),
        }
    }

    const WEB: &str = "spiffe://cluster.local/ns/test/sa/web";
    const OTHER: &str = "spiffe://cluster.local/ns/test/sa/other";
    const FOREIGN: &str = "spiffe://elsewhere.example/ns/test/sa/web";

    /// `None`: nothing to do; `Some(Ok((workload, security)))`; `Some(Err(refusal))`.
    type Want = Option<Result<(&'static str, &'static str), Refusal>>;

    #[test]
    fn decisions() {
        let workloads = vec![wl("db", "10.0.0.2"), wl("cache", "10.0.0.3")];
        let off = ProxyConfig::new(workloads.clone()).unwrap();
        let mut policy = InboundPolicy::default();
        policy
            .allow
            .insert("test/db".into(), vec![WEB.parse().unwrap()]);
        let on = ProxyConfig::new(workloads)
            .unwrap()
            .with_inbound_policy(policy);
        let db: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let cache: SocketAddr = "10.0.0.3:80".parse().unwrap();
        let outside: SocketAddr = "10.9.9.9:80".parse().unwrap();
        let table: [(&str, &ProxyConfig, &str, SocketAddr, Want); 9] = [
            ("mtls off: nothing to do", &off, WEB, db, None),
            ("mtls off, a source the list omits", &off, OTHER, db, None),
            ("not a local workload", &on, OTHER, outside, None),
            (
                "listed, allowed",
                &on,
                WEB,
                db,
                Some(Ok(("db", "mutual_tls"))),
            ),
            (
                "listed, other identity",
                &on,
                OTHER,
                db,
                Some(Err(Refusal::Denied)),
            ),
            (
                "listed, no identity",
                &on,
                UNKNOWN,
                db,
                Some(Err(Refusal::NoIdentity)),
            ),
            (
                "listed, another trust domain",
                &on,
                FOREIGN,
                db,
                Some(Err(Refusal::NoIdentity)),
            ),
            (
                "not listed",
                &on,
                OTHER,
                cache,
                Some(Ok(("cache", "mutual_tls"))),
            ),
            (
                "not listed, no identity",
                &on,
                UNKNOWN,
                cache,
                Some(Ok(("cache", "none"))),
            ),
        ];
        for (name, config, principal, addr, want) in table {
            let got = match decide(config, &source(principal), addr) {
                Local::No => None,
                Local::Allowed(w, security) => Some(Ok((w.name.as_str(), security))),
                Local::Refused(r) => Some(Err(r)),
            };
            assert_eq!(got, want, "{name}");
            if let Some(Ok((_, security))) = want {
                assert_eq!(
                    super::security(config, &source(principal)),
                    security,
                    "{name}"
                );
            }
        }
    }
}
