//! Secret -> [`model::Secret`], and what the upstream and downstream TLS contexts share:
//! certificates, validation contexts, the `CommonTlsContext`.

use myelin_proxy::model::{self, cluster as mc, secret as ms};
use xds_api::pb::envoy::config::core::v3 as core;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3 as pb;

use super::common::{data_source, string_matcher};
use super::{ext, idx, join, Cx, Reason, Rejection};

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

const RAW_BUFFER_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

/// The encoded TLS context of a transport socket at `p` whose `typed_config` is `tls_url`
/// (the upstream or the downstream context); `None` for `raw_buffer` (plain bytes) and for
/// anything else, which is rejected.
pub(crate) fn tls_transport_socket<'a>(
    cx: &mut Cx,
    p: &str,
    t: &'a core::TransportSocket,
    tls_url: &str,
) -> Option<&'a [u8]> {
    let any = match &t.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(any)) => any,
        None => {
            cx.reject(join(p, "typed_config"), Reason::Missing);
            return None;
        }
    };
    match any.type_url.as_str() {
        RAW_BUFFER_URL => None,
        url if url == tls_url => Some(&any.value),
        other => {
            cx.reject(
                join(p, "typed_config"),
                Reason::UnsupportedValue(format!("transport socket `{}` (type `{other}`)", t.name)),
            );
            None
        }
    }
}

/// What a `CommonTlsContext` gives either side of TLS.
#[derive(Debug, Default)]
pub(crate) struct CommonTls {
    /// `tls_certificates` (inline), then `tls_certificate_sds_secret_configs` (by name).
    pub certificates: Vec<mc::CertificateSource>,
    /// `validation_context`, `validation_context_sds_secret_config` or
    /// `combined_validation_context`.
    pub validation: Option<mc::ValidationSource>,
    /// `alpn_protocols`, as written.
    pub alpn_protocols: Vec<String>,
}

/// A `CommonTlsContext` at `p`, for clusters and listeners alike. `tls_params` is left to
/// the caller (each side takes a different part of it).
pub(crate) fn common_tls_context(cx: &mut Cx, p: &str, c: &ext::CommonTlsContext) -> CommonTls {
    let ext::CommonTlsContext {
        tls_params: _,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        validation_context,
        validation_context_sds_secret_config,
        combined_validation_context,
        validation_context_certificate_provider,
        validation_context_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log: _,
        custom_tls_certificate_selector,
    } = c;
    cx.unsupported(
        p,
        "tls_certificate_provider_instance",
        tls_certificate_provider_instance,
    );
    cx.unsupported(
        p,
        "tls_certificate_certificate_provider",
        tls_certificate_certificate_provider,
    );
    cx.unsupported(
        p,
        "tls_certificate_certificate_provider_instance",
        tls_certificate_certificate_provider_instance,
    );
    cx.unsupported(
        p,
        "validation_context_certificate_provider",
        validation_context_certificate_provider,
    );
    cx.unsupported(
        p,
        "validation_context_certificate_provider_instance",
        validation_context_certificate_provider_instance,
    );
    cx.unsupported(p, "custom_handshaker", custom_handshaker);
    cx.unsupported(
        p,
        "custom_tls_certificate_selector",
        custom_tls_certificate_selector,
    );
    let mut out = CommonTls {
        alpn_protocols: alpn_protocols.clone(),
        ..CommonTls::default()
    };
    for (i, c) in tls_certificates.iter().enumerate() {
        if let Some(c) = tls_certificate(cx, &idx(p, "tls_certificates", i), c) {
            out.certificates.push(mc::CertificateSource::Inline(c));
        }
    }
    for s in tls_certificate_sds_secret_configs {
        out.certificates
            .push(mc::CertificateSource::Sds(s.name.clone()));
    }
    out.validation = match (
        validation_context,
        validation_context_sds_secret_config,
        combined_validation_context,
    ) {
        (None, None, None) => None,
        (Some(v), None, None) => self::validation_context(cx, &join(p, "validation_context"), v)
            .map(mc::ValidationSource::Inline),
        (None, Some(s), None) => Some(mc::ValidationSource::Sds(s.name.clone())),
        (None, None, Some(c)) => {
            combined_validation(cx, &join(p, "combined_validation_context"), c)
        }
        _ => {
            cx.reject(
                join(p, "validation_context"),
                Reason::Invalid("more than one validation context type is set".into()),
            );
            None
        }
    };
    out
}

fn combined_validation(
    cx: &mut Cx,
    p: &str,
    c: &ext::CombinedValidationContext,
) -> Option<mc::ValidationSource> {
    let ext::CombinedValidationContext {
        default_validation_context,
        validation_context_sds_secret_config,
        validation_context_certificate_provider,
        validation_context_certificate_provider_instance,
    } = c;
    cx.unsupported(
        p,
        "validation_context_certificate_provider",
        validation_context_certificate_provider,
    );
    cx.unsupported(
        p,
        "validation_context_certificate_provider_instance",
        validation_context_certificate_provider_instance,
    );
    let default = match default_validation_context {
        Some(v) => validation_context(cx, &join(p, "default_validation_context"), v),
        None => {
            cx.reject(join(p, "default_validation_context"), Reason::Missing);
            None
        }
    };
    let sds = match validation_context_sds_secret_config {
        Some(s) => Some(s.name.clone()),
        None => {
            cx.reject(
                join(p, "validation_context_sds_secret_config"),
                Reason::Missing,
            );
            None
        }
    };
    Some(mc::ValidationSource::Combined {
        default: default?,
        sds: sds?,
    })
}
