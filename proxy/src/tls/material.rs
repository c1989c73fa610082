//! What the proxy's TLS contexts are made of, shared by the client side ([`super::origin`])
//! and the server side ([`super::terminate`]): certificates and keys, validation contexts
//! (inline, from SDS, or combined) and Envoy's subject-alternative-name rules.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, Error, RootCertStore, SupportedProtocolVersion};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::model::cluster::{CertificateSource, ValidationSource};
use crate::model::listener::TlsVersion;
use crate::model::secret::{SanMatcher, SanType, Secret, SecretKind, TlsCertificate};
use crate::model::{DataSource, StringPattern};

/// Looks an SDS Secret up by name.
pub(crate) trait Secrets: Fn(&str) -> Option<Arc<Secret>> {}
impl<F: Fn(&str) -> Option<Arc<Secret>>> Secrets for F {}

/// The certificate `source` names: inline, or the SDS Secret's.
pub(crate) fn certificate(
    source: &CertificateSource,
    secret: &impl Secrets,
) -> Result<TlsCertificate, String> {
    match source {
        CertificateSource::Inline(c) => Ok(c.clone()),
        CertificateSource::Sds(name) => match secret(name).as_deref() {
            Some(Secret {
                kind: SecretKind::TlsCertificate(c),
                ..
            }) => Ok(c.clone()),
            Some(_) => Err(format!(
                "SDS secret {name:?} is a validation context, not a certificate"
            )),
            None => Err(format!("SDS secret {name:?} has not arrived")),
        },
    }
}

/// A validation context as the verifier takes it: the trust anchors' PEM (`None`: the
/// chain is not verified) and the SAN rules.
pub(crate) type Validation = (Option<Vec<u8>>, Vec<SanMatcher>);

/// The validation context in force: inline, from SDS, or an SDS one merged into inline
/// defaults (protobuf merge, as Envoy's `combined_validation_context`: the Secret's
/// `trusted_ca` when set, the SAN rules of both).
pub(crate) fn validation(
    source: Option<&ValidationSource>,
    secret: &impl Secrets,
) -> Result<Option<Validation>, String> {
    let from_sds = |name: &str| match secret(name).as_deref() {
        Some(Secret {
            kind: SecretKind::ValidationContext(v),
            ..
        }) => Ok(v.clone()),
        Some(_) => Err(format!(
            "SDS secret {name:?} is a certificate, not a validation context"
        )),
        None => Err(format!("SDS secret {name:?} has not arrived")),
    };
    let v = match source {
        None => return Ok(None),
        Some(ValidationSource::Inline(v)) => v.clone(),
        Some(ValidationSource::Sds(name)) => from_sds(name)?,
        Some(ValidationSource::Combined { default, sds }) => {
            let dynamic = from_sds(sds)?;
            let mut v = default.clone();
            if dynamic.trusted_ca.is_some() {
                v.trusted_ca = dynamic.trusted_ca;
            }
            v.match_subject_alt_names
                .extend(dynamic.match_subject_alt_names);
            v
        }
    };
    let ca = match &v.trusted_ca {
        Some(d) => Some(read(d, "trusted_ca")?),
        None => None,
    };
    Ok(Some((ca, v.match_subject_alt_names)))
}

/// The protocol versions from `min` to `max` (TLS 1.2 and 1.3 when unset, Envoy's defaults).
pub(crate) fn versions(
    min: Option<TlsVersion>,
    max: Option<TlsVersion>,
) -> Result<Vec<&'static SupportedProtocolVersion>, String> {
    let (min, max) = (
        min.unwrap_or(TlsVersion::Tls12),
        max.unwrap_or(TlsVersion::Tls13),
    );
    let v: Vec<_> = [
        (TlsVersion::Tls13, &rustls::version::TLS13),
        (TlsVersion::Tls12, &rustls::version::TLS12),
    ]
    .into_iter()
    .filter(|(v, _)| (min..=max).contains(v))
    .map(|(_, p)| p)
    .collect();
    if v.is_empty() {
        return Err("the minimum TLS version is above the maximum".into());
    }
    Ok(v)
}

/// The trust anchors of a `trusted_ca` (PEM): at least one.
pub(crate) fn roots(pem: &[u8]) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("trusted_ca is not PEM certificates: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("trusted_ca holds an unusable certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("trusted_ca holds no PEM certificate".into());
    }
    Ok(Arc::new(roots))
}

pub(crate) fn read(d: &DataSource, what: &str) -> Result<Vec<u8>, String> {
    match d {
        DataSource::Inline(b) => Ok(b.clone()),
        DataSource::Filename(p) => {
            std::fs::read(p).map_err(|e| format!("reading {what} from {}: {e}", p.display()))
        }
    }
}

pub(crate) fn certificate_chain_and_key(
    c: &TlsCertificate,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let chain_pem = read(&c.certificate_chain, "certificate_chain")?;
    let key_pem = read(&c.private_key, "private_key")?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate_chain is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("certificate_chain holds no PEM certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("private_key is not a PEM private key: {e}"))?;
    Ok((chain, key))
}

/// Why a server certificate's names were refused.
#[derive(Debug)]
pub(crate) struct NoMatchingSan;

impl std::fmt::Display for NoMatchingSan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no subject alternative name of the certificate matches the cluster's rules")
    }
}

impl std::error::Error for NoMatchingSan {}

/// Whether a DNS SAN (possibly `*.`-wildcarded) covers `name` (Envoy's `dnsNameMatch`).
pub(crate) fn dns_name_match(name: &str, san: &str) -> bool {
    if name.eq_ignore_ascii_case(san) {
        return true;
    }
    let Some(rest) = san.strip_prefix("*.") else {
        return false;
    };
    name.split_once('.')
        .is_some_and(|(first, tail)| !first.is_empty() && tail.eq_ignore_ascii_case(rest))
}

pub(crate) fn san_matches(rules: &[SanMatcher], cert: &CertificateDer<'_>) -> Result<bool, Error> {
    let bad = |_| Error::InvalidCertificate(CertificateError::BadEncoding);
    let (_, x509) = X509Certificate::from_der(cert.as_ref()).map_err(bad)?;
    let Some(san) = x509
        .subject_alternative_name()
        .map_err(|_| Error::InvalidCertificate(CertificateError::BadEncoding))?
    else {
        return Ok(false);
    };
    for name in &san.value.general_names {
        let (kind, value) = match name {
            GeneralName::DNSName(d) => (SanType::Dns, (*d).to_owned()),
            GeneralName::URI(u) => (SanType::Uri, (*u).to_owned()),
            GeneralName::RFC822Name(e) => (SanType::Email, (*e).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => (
                    SanType::IpAddress,
                    std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")).to_string(),
                ),
                16 => (
                    SanType::IpAddress,
                    std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))
                        .to_string(),
                ),
                _ => continue,
            },
            _ => continue,
        };
        for r in rules.iter().filter(|r| r.san_type == kind) {
            let hit = match (&r.matcher.pattern, kind) {
                (StringPattern::Exact(p), SanType::Dns) => dns_name_match(p, &value),
                _ => r.matcher.matches(&value),
            };
            if hit {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_dns_sans_cover_one_label() {
        assert!(dns_name_match("api.example.com", "api.example.com"));
        assert!(dns_name_match("API.example.com", "api.EXAMPLE.com"));
        assert!(dns_name_match("api.example.com", "*.example.com"));
        assert!(!dns_name_match("a.api.example.com", "*.example.com"));
        assert!(!dns_name_match("example.com", "*.example.com"));
        assert!(!dns_name_match(".example.com", "*.example.com"));
        assert!(!dns_name_match("api.example.com", "*.other.com"));
    }
}
