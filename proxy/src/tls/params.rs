//! A TLS context's `tls_params` beyond the versions: the TLS 1.2 cipher suites, the key
//! exchange groups (`ecdh_curves`) and the signature algorithms a handshake may use.
//!
//! Names are BoringSSL's, as Envoy takes them. Each is known and spoken by Myelin (rustls
//! with *ring*), known to BoringSSL but not spoken by Myelin (CBC suites, RSA key
//! exchange, P-521, post-quantum hybrids, SHA-1 signatures: [`Known::NotImplemented`]), or
//! not a name at all. The converter rejects the last, leaves out the second and keeps the
//! rest ([`crate::model::listener::TlsAlgorithms`]); this module turns what is kept into a
//! rustls crypto provider and signature-scheme filters.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::CertificateDer;
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme, SupportedCipherSuite};

use crate::model::listener::TlsAlgorithms;

/// What Myelin makes of an algorithm's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Spoken; the canonical name (BoringSSL's spelling).
    Supported(&'static str),
    /// A BoringSSL name Myelin does not speak.
    NotImplemented,
    /// Not a name BoringSSL knows.
    Unknown,
}

/// TLS 1.2 suites by BoringSSL name, with rustls' implementation (`None`: not spoken).
fn suites() -> [(&'static str, Option<SupportedCipherSuite>); 20] {
    use rustls::crypto::ring::cipher_suite as cs;
    [
        (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "ECDHE-RSA-AES128-GCM-SHA256",
            Some(cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            Some(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "ECDHE-RSA-AES256-GCM-SHA384",
            Some(cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305",
            Some(cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        (
            "ECDHE-RSA-CHACHA20-POLY1305",
            Some(cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        ("ECDHE-PSK-CHACHA20-POLY1305", None),
        ("ECDHE-ECDSA-AES128-SHA", None),
        ("ECDHE-RSA-AES128-SHA", None),
        ("ECDHE-PSK-AES128-CBC-SHA", None),
        ("ECDHE-ECDSA-AES256-SHA", None),
        ("ECDHE-RSA-AES256-SHA", None),
        ("ECDHE-PSK-AES256-CBC-SHA", None),
        ("AES128-GCM-SHA256", None),
        ("AES256-GCM-SHA384", None),
        ("AES128-SHA", None),
        ("PSK-AES128-CBC-SHA", None),
        ("AES256-SHA", None),
        ("PSK-AES256-CBC-SHA", None),
        ("DES-CBC3-SHA", None),
    ]
}

/// Key exchange groups by name (BoringSSL's, then its aliases) and canonical name.
fn groups() -> [(
    &'static str,
    &'static str,
    Option<&'static dyn SupportedKxGroup>,
); 11] {
    use rustls::crypto::ring::kx_group as kx;
    [
        ("X25519", "X25519", Some(kx::X25519)),
        ("P-256", "P-256", Some(kx::SECP256R1)),
        ("prime256v1", "P-256", Some(kx::SECP256R1)),
        ("P-384", "P-384", Some(kx::SECP384R1)),
        ("secp384r1", "P-384", Some(kx::SECP384R1)),
        ("P-521", "P-521", None),
        ("secp521r1", "P-521", None),
        ("P-224", "P-224", None),
        ("secp224r1", "P-224", None),
        ("X25519Kyber768Draft00", "X25519Kyber768Draft00", None),
        ("X25519MLKEM768", "X25519MLKEM768", None),
    ]
}

/// Signature algorithms by BoringSSL's IANA-style name.
const SCHEMES: [(&str, Option<SignatureScheme>); 13] = [
    ("rsa_pkcs1_sha256", Some(SignatureScheme::RSA_PKCS1_SHA256)),
    ("rsa_pkcs1_sha384", Some(SignatureScheme::RSA_PKCS1_SHA384)),
    ("rsa_pkcs1_sha512", Some(SignatureScheme::RSA_PKCS1_SHA512)),
    (
        "ecdsa_secp256r1_sha256",
        Some(SignatureScheme::ECDSA_NISTP256_SHA256),
    ),
    (
        "ecdsa_secp384r1_sha384",
        Some(SignatureScheme::ECDSA_NISTP384_SHA384),
    ),
    ("rsa_pss_rsae_sha256", Some(SignatureScheme::RSA_PSS_SHA256)),
    ("rsa_pss_rsae_sha384", Some(SignatureScheme::RSA_PSS_SHA384)),
    ("rsa_pss_rsae_sha512", Some(SignatureScheme::RSA_PSS_SHA512)),
    ("ed25519", Some(SignatureScheme::ED25519)),
    ("ecdsa_secp521r1_sha512", None),
    ("rsa_pkcs1_sha1", None),
    ("ecdsa_sha1", None),
    ("rsa_pkcs1_md5_sha1", None),
];

/// A TLS 1.2 cipher suite's name.
pub fn cipher_suite(name: &str) -> Known {
    match suites().into_iter().find(|(n, _)| *n == name) {
        Some((n, Some(_))) => Known::Supported(n),
        Some((_, None)) => Known::NotImplemented,
        None => Known::Unknown,
    }
}

/// A key exchange group's name (`ecdh_curves`).
pub fn curve(name: &str) -> Known {
    match groups().into_iter().find(|(n, _, _)| *n == name) {
        Some((_, canonical, Some(_))) => Known::Supported(canonical),
        Some(_) => Known::NotImplemented,
        None => Known::Unknown,
    }
}

/// A signature algorithm's name: BoringSSL's IANA-style names (`rsa_pss_rsae_sha256`) or
/// its `KEY+HASH` pairs (`RSA-PSS+SHA256`, `ECDSA+SHA384`, `Ed25519`).
pub fn signature_algorithm(name: &str) -> Known {
    let iana = match name.to_ascii_uppercase().as_str() {
        "RSA+SHA1" => "rsa_pkcs1_sha1",
        "RSA+SHA256" => "rsa_pkcs1_sha256",
        "RSA+SHA384" => "rsa_pkcs1_sha384",
        "RSA+SHA512" => "rsa_pkcs1_sha512",
        "ECDSA+SHA1" => "ecdsa_sha1",
        "ECDSA+SHA256" => "ecdsa_secp256r1_sha256",
        "ECDSA+SHA384" => "ecdsa_secp384r1_sha384",
        "ECDSA+SHA512" => "ecdsa_secp521r1_sha512",
        "RSA-PSS+SHA256" | "PSS+SHA256" => "rsa_pss_rsae_sha256",
        "RSA-PSS+SHA384" | "PSS+SHA384" => "rsa_pss_rsae_sha384",
        "RSA-PSS+SHA512" | "PSS+SHA512" => "rsa_pss_rsae_sha512",
        "ED25519" => "ed25519",
        _ => name,
    };
    match SCHEMES.iter().find(|(n, _)| *n == iana) {
        Some((n, Some(_))) => Known::Supported(n),
        Some((_, None)) => Known::NotImplemented,
        None => Known::Unknown,
    }
}

/// The crypto provider for a context: *ring*'s, with the TLS 1.2 suites and the key
/// exchange groups narrowed and ordered as `alg` says (TLS 1.3's suites are not
/// configurable, as in Envoy).
pub(crate) fn provider_for(alg: &TlsAlgorithms) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if let Some(names) = &alg.cipher_suites {
        let tls13 = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
            .copied();
        let tls12 = names.iter().filter_map(|n| {
            suites()
                .into_iter()
                .find(|(name, _)| name == n)
                .and_then(|(_, s)| s)
        });
        p.cipher_suites = tls13.chain(tls12).collect();
    }
    if let Some(names) = &alg.ecdh_curves {
        p.kx_groups = names
            .iter()
            .filter_map(|n| {
                groups()
                    .into_iter()
                    .find(|(name, _, _)| name == n)
                    .and_then(|(_, _, g)| g)
            })
            .collect();
    }
    Arc::new(p)
}

/// The signature schemes `alg` allows, in its order; `None`: any the provider has.
pub(crate) fn schemes(alg: &TlsAlgorithms) -> Option<Arc<[SignatureScheme]>> {
    let names = alg.signature_algorithms.as_ref()?;
    Some(
        names
            .iter()
            .filter_map(|n| {
                SCHEMES
                    .iter()
                    .find(|(name, _)| name == n)
                    .and_then(|(_, s)| *s)
            })
            .collect(),
    )
}

/// A signing key that signs only with the allowed schemes.
#[derive(Debug)]
struct RestrictedKey {
    inner: Arc<dyn SigningKey>,
    allowed: Arc<[SignatureScheme]>,
}

impl SigningKey for RestrictedKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let offered: Vec<SignatureScheme> = offered
            .iter()
            .filter(|s| self.allowed.contains(s))
            .copied()
            .collect();
        self.inner.choose_scheme(&offered)
    }

    fn public_key(&self) -> Option<rustls::pki_types::SubjectPublicKeyInfoDer<'_>> {
        self.inner.public_key()
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        self.inner.algorithm()
    }
}

/// `key` restricted to `allowed` when there is a restriction.
pub(crate) fn restrict_key(
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn SigningKey>,
    allowed: Option<&Arc<[SignatureScheme]>>,
) -> CertifiedKey {
    match allowed {
        None => CertifiedKey::new(chain, key),
        Some(allowed) => CertifiedKey::new(
            chain,
            Arc::new(RestrictedKey {
                inner: key,
                allowed: allowed.clone(),
            }),
        ),
    }
}

/// Whether a peer's signature with `scheme` may be accepted.
pub(crate) fn allows(allowed: Option<&Arc<[SignatureScheme]>>, scheme: SignatureScheme) -> bool {
    allowed.is_none_or(|a| a.contains(&scheme))
}

/// The schemes to advertise for verifying peers: `all`, narrowed by `allowed`.
pub(crate) fn narrow(
    all: Vec<SignatureScheme>,
    allowed: Option<&Arc<[SignatureScheme]>>,
) -> Vec<SignatureScheme> {
    match allowed {
        None => all,
        Some(a) => a.iter().filter(|s| all.contains(s)).copied().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            cipher_suite("ECDHE-RSA-AES128-GCM-SHA256"),
            Known::Supported("ECDHE-RSA-AES128-GCM-SHA256")
        );
        assert_eq!(cipher_suite("AES256-GCM-SHA384"), Known::NotImplemented);
        assert_eq!(cipher_suite("TLS_AES_128_GCM_SHA256"), Known::Unknown);
        assert_eq!(cipher_suite("ecdhe-rsa-aes128-gcm-sha256"), Known::Unknown);
        assert_eq!(curve("prime256v1"), Known::Supported("P-256"));
        assert_eq!(curve("X25519MLKEM768"), Known::NotImplemented);
        assert_eq!(curve("ECDHE-RSA-AES128-GCM-SHA256"), Known::Unknown);
        assert_eq!(
            signature_algorithm("RSA-PSS+SHA256"),
            Known::Supported("rsa_pss_rsae_sha256")
        );
        assert_eq!(
            signature_algorithm("ecdsa_secp256r1_sha256"),
            Known::Supported("ecdsa_secp256r1_sha256")
        );
        assert_eq!(signature_algorithm("rsa_pkcs1_sha1"), Known::NotImplemented);
        assert_eq!(signature_algorithm("RSA-PSS-RSAE-SHA256"), Known::Unknown);
    }

    #[test]
    fn providers_narrow_tls12_suites_and_groups_in_order() {
        let alg = TlsAlgorithms {
            cipher_suites: Some(vec![
                "ECDHE-RSA-AES256-GCM-SHA384".into(),
                "ECDHE-RSA-AES128-GCM-SHA256".into(),
            ]),
            ecdh_curves: Some(vec!["P-384".into(), "X25519".into()]),
            signature_algorithms: None,
        };
        let p = provider_for(&alg);
        let tls12: Vec<String> = p
            .cipher_suites
            .iter()
            .filter(|s| matches!(s, SupportedCipherSuite::Tls12(_)))
            .map(|s| format!("{:?}", s.suite()))
            .collect();
        assert_eq!(
            tls12,
            [
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            ]
        );
        assert_eq!(
            p.cipher_suites
                .iter()
                .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
                .count(),
            3,
            "TLS 1.3 suites stay"
        );
        let groups: Vec<String> = p
            .kx_groups
            .iter()
            .map(|g| format!("{:?}", g.name()))
            .collect();
        assert_eq!(groups, ["secp384r1", "X25519"]);
        let none = provider_for(&TlsAlgorithms::default());
        assert_eq!(none.cipher_suites.len(), 9);
    }
}
