//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// A workload's SPIFFE ID, in the Kubernetes form Istio and Linkerd use.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// Not `spiffe://...`.
    #[error("not a SPIFFE ID (no spiffe:// scheme): {0:?}")]
    Scheme(String),
    /// The trust domain is empty or has characters SPIFFE does not allow.
    #[error("invalid trust domain in {0:?} (lowercase letters, digits, '.', '-', '_')")]
    TrustDomain(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("not a workload identity (path must be /ns/<namespace>/sa/<service-account>): {0:?}")]
    Path(String),
}

fn valid_trust_domain(td: &str) -> bool {
    !td.is_empty()
        && td.len() <= 255
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
}

fn valid_segment(s: &str) -> bool {
    // Kubernetes names: DNS subdomains (service accounts) and labels (namespaces); both
    // fit SPIFFE's path segment rules.
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

impl SpiffeId {
    /// The identity of service account `sa` in namespace `ns` of `trust_domain`.
    pub fn new(trust_domain: &str, ns: &str, sa: &str) -> Result<Self, SpiffeIdError> {
        format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}").parse()
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .strip_prefix("spiffe://")
            .ok_or_else(|| SpiffeIdError::Scheme(s.to_owned()))?;
        let (td, path) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_trust_domain(td) {
            return Err(SpiffeIdError::TrustDomain(s.to_owned()));
        }
        let parts: Vec<&str> = path.split('/').collect();
        match parts.as_slice() {
            ["ns", ns, "sa", sa] if valid_segment(ns) && valid_segment(sa) => Ok(SpiffeId {
                trust_domain: td.to_owned(),
                namespace: (*ns).to_owned(),
                service_account: (*sa).to_owned(),
            }),
            _ => Err(SpiffeIdError::Path(s.to_owned())),
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let id: SpiffeId = "spiffe://cluster.local/ns/shop/sa/web".parse().unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "web")
        );
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(SpiffeId::new("cluster.local", "shop", "web").unwrap(), id);
        let bad = [
            ("https://cluster.local/ns/a/sa/b", "Scheme"),
            ("spiffe://Cluster.Local/ns/a/sa/b", "TrustDomain"),
            ("spiffe:///ns/a/sa/b", "TrustDomain"),
            ("spiffe://td/ns/a", "Path"),
            ("spiffe://td/ns/a/sa/b/c", "Path"),
            ("spiffe://td/ns//sa/b", "Path"),
            ("spiffe://td/ns/../sa/b", "Path"),
            ("spiffe://td/sa/b/ns/a", "Path"),
        ];
        for (s, kind) in bad {
            let e = s.parse::<SpiffeId>().unwrap_err();
            assert!(format!("{e:?}").starts_with(kind), "{s}: {e:?}");
        }
    }
}
