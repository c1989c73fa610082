//! TLS secrets (Envoy `extensions.transport_sockets.tls.v3.Secret`): certificates with
//! their keys, and validation contexts (trust anchors and accepted peer names).

use serde::{Serialize, Serializer};

use super::types::{DataSource, StringMatcher};

/// A named secret (the SDS resource).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Secret {
    /// The SDS resource name.
    pub name: String,
    /// What it holds.
    pub kind: SecretKind,
}

/// What a secret holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecretKind {
    /// A certificate and its key.
    TlsCertificate(TlsCertificate),
    /// Trust anchors and peer name rules.
    ValidationContext(ValidationContext),
}

/// A certificate chain and its private key (PEM).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TlsCertificate {
    /// The certificate chain.
    pub certificate_chain: DataSource,
    /// The private key; an inline key never appears in `/config_dump`.
    #[serde(serialize_with = "redact_key")]
    pub private_key: DataSource,
}

fn redact_key<S: Serializer>(k: &DataSource, s: S) -> Result<S::Ok, S::Error> {
    match k {
        DataSource::Filename(_) => k.serialize(s),
        DataSource::Inline(_) => s.serialize_str("[redacted]"),
    }
}

/// How a peer certificate is verified.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ValidationContext {
    /// Trust anchors (PEM); `None`: no chain verification (as in Envoy).
    pub trusted_ca: Option<DataSource>,
    /// The peer certificate must have a SAN matching one of these (any, if empty).
    pub match_subject_alt_names: Vec<SanMatcher>,
}

/// A subject-alternative-name rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SanMatcher {
    /// Which SAN kind.
    pub san_type: SanType,
    /// The value rule (e.g. a SPIFFE ID, exact).
    pub matcher: StringMatcher,
}

/// SAN kinds (Envoy `SubjectAltNameMatcher.SanType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    /// `rfc822Name`.
    Email,
    /// `dNSName`.
    Dns,
    /// `uniformResourceIdentifier` (SPIFFE IDs).
    Uri,
    /// `iPAddress`.
    IpAddress,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_key_is_redacted() {
        let c = TlsCertificate {
            certificate_chain: DataSource::Inline(b"CERT".to_vec()),
            private_key: DataSource::Inline(b"KEY".to_vec()),
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"certificate_chain": {"inline": "CERT"}, "private_key": "[redacted]"})
        );
        let c = TlsCertificate {
            private_key: DataSource::Filename("/k.pem".into()),
            ..c
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap()["private_key"],
            serde_json::json!({"filename": "/k.pem"})
        );
    }
}
