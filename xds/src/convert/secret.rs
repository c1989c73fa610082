//! Secret -> [`model::Secret`], and the validation context shared with upstream TLS.

use myelin_proxy::model::{self, secret as ms};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::common::{data_source, string_matcher};
use super::{idx, join, Cx, Reason, Rejection};

/// Converts an SDS resource.
pub fn secret(s: &pb::Secret) -> Result<model::Secret, Vec<Rejection>> {
    use pb::secret::Type as T;
    let mut cx = Cx::default();
    let pb::Secret { name, r#type } = s;
    if name.is_empty() {
        cx.reject("name", Reason::Missing);
    }
    let kind = match r#type {
        Some(T::TlsCertificate(c)) => {
            tls_certificate(&mut cx, "tls_certificate", c).map(ms::SecretKind::TlsCertificate)
        }
        Some(T::ValidationContext(v)) => validation_context(&mut cx, "validation_context", v)
            .map(ms::SecretKind::ValidationContext),
        Some(T::SessionTicketKeys(_)) => {
            cx.reject("session_ticket_keys", Reason::NotSupported);
            None
        }
        Some(T::GenericSecret(_)) => {
            cx.reject("generic_secret", Reason::NotSupported);
            None
        }
        None => {
            cx.reject(
                "tls_certificate",
                Reason::Invalid(
                    "one of `tls_certificate` or `validation_context` is required".into(),
                ),
            );
            None
        }
    };
    match kind {
        Some(kind) => cx.finish(model::Secret {
            name: name.clone(),
            kind,
        }),
        None => Err(cx.errs),
    }
}

pub(crate) fn tls_certificate(
    cx: &mut Cx,
    p: &str,
    c: &pb::TlsCertificate,
) -> Option<ms::TlsCertificate> {
    let pb::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
    } = c;
    cx.unsupported(p, "pkcs12", pkcs12);
    cx.unsupported(p, "watched_directory", watched_directory);
    cx.unsupported(p, "private_key_provider", private_key_provider);
    cx.unsupported(p, "password", password);
    cx.unsupported(p, "ocsp_staple", ocsp_staple);
    cx.unsupported(
        p,
        "signed_certificate_timestamp",
        signed_certificate_timestamp,
    );
    let chain = match certificate_chain {
        Some(d) => data_source(cx, &join(p, "certificate_chain"), d),
        None => {
            cx.reject(join(p, "certificate_chain"), Reason::Missing);
            None
        }
    };
    let key = match private_key {
        Some(d) => data_source(cx, &join(p, "private_key"), d),
        None => {
            cx.reject(join(p, "private_key"), Reason::Missing);
            None
        }
    };
    Some(ms::TlsCertificate {
        certificate_chain: chain?,
        private_key: key?,
    })
}

#[allow(deprecated)]
pub(crate) fn validation_context(
    cx: &mut Cx,
    p: &str,
    v: &pb::CertificateValidationContext,
) -> Option<ms::ValidationContext> {
    use pb::subject_alt_name_matcher::SanType as S;
    let pb::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
    } = v;
    cx.unsupported(
        p,
        "ca_certificate_provider_instance",
        ca_certificate_provider_instance,
    );
    cx.unsupported(p, "system_root_certs", system_root_certs);
    cx.unsupported(p, "watched_directory", watched_directory);
    cx.unsupported(p, "verify_certificate_spki", verify_certificate_spki);
    cx.unsupported(p, "verify_certificate_hash", verify_certificate_hash);
    cx.unsupported(
        p,
        "require_signed_certificate_timestamp",
        require_signed_certificate_timestamp,
    );
    cx.unsupported(p, "crl", crl);
    cx.unsupported(p, "allow_expired_certificate", allow_expired_certificate);
    cx.unsupported(p, "trust_chain_verification", trust_chain_verification);
    cx.unsupported(p, "custom_validator_config", custom_validator_config);
    cx.unsupported(p, "only_verify_leaf_cert_crl", only_verify_leaf_cert_crl);
    cx.unsupported(p, "max_verify_depth", max_verify_depth);
    if !match_subject_alt_names.is_empty() {
        cx.reject(
            join(p, "match_subject_alt_names"),
            Reason::Deprecated {
                field: "match_subject_alt_names",
                instead: "use `match_typed_subject_alt_names`",
            },
        );
    }
    let trusted_ca = trusted_ca
        .as_ref()
        .and_then(|d| data_source(cx, &join(p, "trusted_ca"), d));
    let mut sans = Vec::new();
    for (i, m) in match_typed_subject_alt_names.iter().enumerate() {
        let mp = idx(p, "match_typed_subject_alt_names", i);
        let san_type = match S::try_from(m.san_type) {
            Ok(S::Email) => ms::SanType::Email,
            Ok(S::Dns) => ms::SanType::Dns,
            Ok(S::Uri) => ms::SanType::Uri,
            Ok(S::IpAddress) => ms::SanType::IpAddress,
            Ok(S::Unspecified) | Err(_) => {
                cx.reject(join(&mp, "san_type"), Reason::Missing);
                continue;
            }
        };
        let Some(matcher) = m.matcher.as_ref() else {
            cx.reject(join(&mp, "matcher"), Reason::Missing);
            continue;
        };
        if let Some(matcher) = string_matcher(cx, &join(&mp, "matcher"), matcher) {
            sans.push(ms::SanMatcher { san_type, matcher });
        }
    }
    Some(ms::ValidationContext {
        trusted_ca,
        match_subject_alt_names: sans,
    })
}
