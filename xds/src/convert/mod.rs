//! Envoy v3 resources (types from `xds-api`) -> the proxy's model
//! ([`myelin_proxy::model`]), one resource at a time.
//!
//! Every field either changes what Myelin does, is ignored because it does not change
//! traffic (stats names, access logs, ...), or is rejected with its field path: a
//! control plane that sets something Myelin cannot honour gets a NACK that says so
//! instead of silently different traffic. Each function collects every problem of its
//! resource, not only the first. The table of fields is `xds/SUPPORTED.md`.
//!
//! Paths are relative to the resource (`filter_chains[0].filters[0].typed_config...`);
//! callers that know where the resource sits prefix them with [`Rejection::prefixed`].

use std::time::Duration;

use prost::Message;
use xds_api::pb::google::protobuf;

mod cluster;
mod compressor;
mod endpoint;
pub(crate) mod ext;
mod ext_authz;
mod ext_proc;
mod filter;
mod health_check;
pub mod json;
mod jwt;
pub(crate) mod lb_policy;
mod listener;
mod local_reply;
mod proxy_protocol;
mod rbac;
mod route;
mod secret;

pub use cluster::cluster;
pub use endpoint::cluster_load_assignment;
pub use listener::listener;
pub use route::route_configuration;
pub use secret::secret;

use myelin_proxy::model;

/// Type URLs of the resource types Myelin converts.
pub mod type_url {
    /// LDS.
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    /// RDS.
    pub const ROUTE_CONFIGURATION: &str =
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    /// CDS.
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    /// EDS.
    pub const CLUSTER_LOAD_ASSIGNMENT: &str =
        "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    /// SDS.
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";
}

/// One problem with one field of a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Field path inside the resource, e.g. `virtual_hosts[1].routes[3].match.safe_regex.regex`.
    pub path: String,
    /// What is wrong.
    pub reason: Reason,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

impl std::error::Error for Rejection {}

impl Rejection {
    /// The same rejection with `prefix` in front of its path (e.g. `listeners[0]`).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.path = join(prefix, &self.path);
        self
    }
}

/// Why a field is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Changes behaviour in a way Myelin does not implement.
    #[error("not supported")]
    NotSupported,
    /// This value of the field is not supported.
    #[error("{0} is not supported")]
    UnsupportedValue(String),
    /// An old (v1/v2 or deprecated v3) form.
    #[error("deprecated form `{field}` is not accepted; {instead}")]
    Deprecated {
        /// The field as written.
        field: &'static str,
        /// What to use instead.
        instead: &'static str,
    },
    /// A regex that does not compile.
    #[error("`{regex}` is not a valid regex: {error}")]
    BadRegex {
        /// The expression.
        regex: String,
        /// The compiler's complaint (first line).
        error: String,
    },
    /// A required field is missing.
    #[error("required but not set")]
    Missing,
    /// A value out of range or malformed.
    #[error("{0}")]
    Invalid(String),
    /// An `Any` of a type this field does not take.
    #[error("type `{0}` is not supported here")]
    UnknownType(String),
    /// Bytes that do not decode as the type they claim.
    #[error("cannot decode as {type_url}: {error}")]
    Decode {
        /// The claimed type.
        type_url: String,
        /// Decoder message.
        error: String,
    },
    /// The encoding has fields the schema Myelin was built with does not know.
    #[error(
        "{0} bytes of fields unknown to Myelin's Envoy API schema (a newer or removed v2 field?)"
    )]
    UnknownFields(usize),
}

/// A converted resource of any type (see [`resource`]). Not boxed: one lives only from its
/// conversion until the store takes it, once per resource per update.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// LDS.
    Listener(model::Listener),
    /// RDS.
    RouteConfiguration(model::RouteConfiguration),
    /// CDS.
    Cluster(model::Cluster),
    /// EDS.
    ClusterLoadAssignment(model::ClusterLoadAssignment),
    /// SDS.
    Secret(model::Secret),
}

/// Decodes and converts one resource of an xDS response by its type URL. A decode
/// error, unknown fields or an unknown type are rejections like any other, so the ADS
/// client can NACK this resource and still apply the others of the response.
pub fn resource(type_url: &str, bytes: &[u8]) -> Result<Resource, Vec<Rejection>> {
    fn go<M: Message + Default, T>(
        type_url: &str,
        bytes: &[u8],
        conv: fn(&M) -> Result<T, Vec<Rejection>>,
        wrap: fn(T) -> Resource,
    ) -> Result<Resource, Vec<Rejection>> {
        let mut cx = Cx::default();
        let Some(m) = cx.decode::<M>("", type_url, bytes) else {
            return Err(cx.errs);
        };
        match conv(&m) {
            Ok(v) if cx.errs.is_empty() => Ok(wrap(v)),
            Ok(_) => Err(cx.errs),
            Err(more) => {
                cx.errs.extend(more);
                Err(cx.errs)
            }
        }
    }
    match type_url {
        type_url::LISTENER => go(type_url, bytes, listener, Resource::Listener),
        type_url::ROUTE_CONFIGURATION => go(
            type_url,
            bytes,
            route_configuration,
            Resource::RouteConfiguration,
        ),
        type_url::CLUSTER => go(type_url, bytes, cluster, Resource::Cluster),
        type_url::CLUSTER_LOAD_ASSIGNMENT => go(
            type_url,
            bytes,
            cluster_load_assignment,
            Resource::ClusterLoadAssignment,
        ),
        type_url::SECRET => go(type_url, bytes, secret, Resource::Secret),
        other => Err(vec![Rejection {
            path: String::new(),
            reason: Reason::UnknownType(other.to_owned()),
        }]),
    }
}

/// [`resource`] for a `google.protobuf.Any`.
pub fn any(any: &protobuf::Any) -> Result<Resource, Vec<Rejection>> {
    resource(&any.type_url, &any.value)
}

/// `a.b`, `a[0]` or `b` when `a` is empty.
pub(crate) fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

/// `a[i]`.
pub(crate) fn idx(prefix: &str, field: &str, i: usize) -> String {
    format!("{}[{i}]", join(prefix, field))
}

/// The rejections collected while converting one resource.
#[derive(Debug, Default)]
pub(crate) struct Cx {
    pub(crate) errs: Vec<Rejection>,
}

impl Cx {
    pub(crate) fn reject(&mut self, path: impl Into<String>, reason: Reason) {
        self.errs.push(Rejection {
            path: path.into(),
            reason,
        });
    }

    /// Rejects `path.field` if `value` is not the proto default (i.e. set).
    pub(crate) fn unsupported<T: Default + PartialEq>(
        &mut self,
        path: &str,
        field: &str,
        value: &T,
    ) {
        if *value != T::default() {
            self.reject(join(path, field), Reason::NotSupported);
        }
    }

    /// Ok(v) if nothing was rejected.
    pub(crate) fn finish<T>(self, v: T) -> Result<T, Vec<Rejection>> {
        if self.errs.is_empty() {
            Ok(v)
        } else {
            Err(self.errs)
        }
    }

    /// Decodes `bytes` as `M`, rejecting decode errors and unknown fields (prost drops
    /// fields it does not know, which would otherwise be a silent ignore).
    pub(crate) fn decode<M: Message + Default>(
        &mut self,
        path: &str,
        type_url: &str,
        bytes: &[u8],
    ) -> Option<M> {
        match M::decode(bytes) {
            Ok(m) => {
                let known = m.encoded_len();
                if known < bytes.len() {
                    self.reject(path, Reason::UnknownFields(bytes.len() - known));
                }
                Some(m)
            }
            Err(e) => {
                self.reject(
                    path,
                    Reason::Decode {
                        type_url: type_url.to_owned(),
                        error: e.to_string(),
                    },
                );
                None
            }
        }
    }

    /// A non-negative duration.
    pub(crate) fn duration(&mut self, path: &str, d: &protobuf::Duration) -> Option<Duration> {
        if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
            self.reject(
                path,
                Reason::Invalid(format!(
                    "duration {}s {}ns is negative or malformed",
                    d.seconds, d.nanos
                )),
            );
            return None;
        }
        Some(Duration::new(d.seconds as u64, d.nanos as u32))
    }

    /// An optional duration where zero means "disabled" (`None`) and unset means `default`.
    pub(crate) fn timeout(
        &mut self,
        path: &str,
        d: &Option<protobuf::Duration>,
        default: Option<Duration>,
    ) -> Option<Duration> {
        match d {
            None => default,
            Some(d) => self.duration(path, d).filter(|d| !d.is_zero()),
        }
    }

    /// Compiles a regex, rejecting it with the compiler's message.
    pub(crate) fn regex(&mut self, path: &str, source: &str) -> Option<model::Regex> {
        match model::Regex::new(source) {
            Ok(r) => Some(r),
            Err(e) => {
                let error = match &e {
                    regex::Error::Syntax(s) => s
                        .lines()
                        .rev()
                        .find(|l| l.starts_with("error:"))
                        .map(|l| l.trim_start_matches("error:").trim().to_owned())
                        .unwrap_or_else(|| s.clone()),
                    other => other.to_string(),
                };
                self.reject(
                    path,
                    Reason::BadRegex {
                        regex: source.to_owned(),
                        error,
                    },
                );
                None
            }
        }
    }

    /// A wrapped `u32` that must lie in `range` (Envoy's validation rule for the field);
    /// `None` when unset or rejected.
    pub(crate) fn u32_in(
        &mut self,
        path: &str,
        v: &Option<protobuf::UInt32Value>,
        range: std::ops::RangeInclusive<u32>,
    ) -> Option<u32> {
        let v = v.as_ref()?.value;
        if range.contains(&v) {
            Some(v)
        } else {
            self.reject(
                path,
                Reason::Invalid(format!(
                    "{v} is outside {}..={}",
                    range.start(),
                    range.end()
                )),
            );
            None
        }
    }

    /// A `u16` from a `u32` field (ports, status codes).
    pub(crate) fn u16(&mut self, path: &str, v: u32, what: &str) -> Option<u16> {
        match u16::try_from(v) {
            Ok(v) => Some(v),
            Err(_) => {
                self.reject(path, Reason::Invalid(format!("{what} {v} is out of range")));
                None
            }
        }
    }
}

/// Shared sub-message conversions.
pub(crate) mod common {
    use super::*;
    use xds_api::pb::envoy::config::core::v3 as core;
    use xds_api::pb::envoy::r#type::matcher::v3 as matcher;

    pub(crate) fn regex_matcher(
        cx: &mut Cx,
        path: &str,
        m: &matcher::RegexMatcher,
    ) -> Option<model::Regex> {
        #[allow(deprecated)]
        let matcher::RegexMatcher { regex, engine_type } = m;
        // `google_re2` is the only engine and its settings are deprecated no-ops.
        let _ = engine_type;
        cx.regex(&join(path, "regex"), regex)
    }

    pub(crate) fn string_matcher(
        cx: &mut Cx,
        path: &str,
        m: &matcher::StringMatcher,
    ) -> Option<model::StringMatcher> {
        use matcher::string_matcher::MatchPattern as P;
        let matcher::StringMatcher {
            ignore_case,
            match_pattern,
        } = m;
        let pattern = match match_pattern {
            Some(P::Exact(s)) => model::StringPattern::Exact(s.clone()),
            Some(P::Prefix(s)) => model::StringPattern::Prefix(s.clone()),
            Some(P::Suffix(s)) => model::StringPattern::Suffix(s.clone()),
            Some(P::Contains(s)) => model::StringPattern::Contains(s.clone()),
            Some(P::SafeRegex(r)) => {
                model::StringPattern::SafeRegex(regex_matcher(cx, &join(path, "safe_regex"), r)?)
            }
            Some(P::Custom(_)) => {
                cx.reject(join(path, "custom"), Reason::NotSupported);
                return None;
            }
            None => {
                cx.reject(path, Reason::Missing);
                return None;
            }
        };
        Some(model::StringMatcher {
            pattern,
            ignore_case: *ignore_case,
        })
    }

    pub(crate) fn data_source(
        cx: &mut Cx,
        path: &str,
        d: &core::DataSource,
    ) -> Option<model::DataSource> {
        use core::data_source::Specifier as S;
        let core::DataSource {
            watched_directory,
            specifier,
        } = d;
        cx.unsupported(path, "watched_directory", watched_directory);
        match specifier {
            Some(S::Filename(f)) => Some(model::DataSource::Filename(f.into())),
            Some(S::InlineBytes(b)) => Some(model::DataSource::Inline(b.clone())),
            Some(S::InlineString(s)) => Some(model::DataSource::Inline(s.clone().into_bytes())),
            Some(S::EnvironmentVariable(_)) => {
                cx.reject(join(path, "environment_variable"), Reason::NotSupported);
                None
            }
            None => {
                cx.reject(path, Reason::Missing);
                None
            }
        }
    }

    /// A body from a `DataSource`: inline text or UTF-8 bytes; `Ok(None)` when no source
    /// is set; files and environment variables rejected (`Err`, after the rejection).
    pub(crate) fn inline_text(
        cx: &mut Cx,
        path: &str,
        d: &core::DataSource,
    ) -> Result<Option<String>, ()> {
        use core::data_source::Specifier as S;
        cx.unsupported(path, "watched_directory", &d.watched_directory);
        match &d.specifier {
            None => Ok(None),
            Some(S::InlineString(s)) => Ok(Some(s.clone())),
            Some(S::InlineBytes(b)) => match String::from_utf8(b.clone()) {
                Ok(s) => Ok(Some(s)),
                Err(_) => {
                    cx.reject(
                        join(path, "inline_bytes"),
                        Reason::Invalid("not UTF-8".into()),
                    );
                    Err(())
                }
            },
            Some(S::Filename(_)) => {
                cx.reject(join(path, "filename"), Reason::NotSupported);
                Err(())
            }
            Some(S::EnvironmentVariable(_)) => {
                cx.reject(join(path, "environment_variable"), Reason::NotSupported);
                Err(())
            }
        }
    }

    pub(crate) fn header_value_options(
        cx: &mut Cx,
        path: &str,
        field: &str,
        opts: &[core::HeaderValueOption],
    ) -> Vec<model::route::HeaderValueOption> {
        use core::header_value_option::HeaderAppendAction as A;
        use model::route::AppendAction;
        let mut out = Vec::new();
        for (i, o) in opts.iter().enumerate() {
            let p = idx(path, field, i);
            #[allow(deprecated)]
            let core::HeaderValueOption {
                header,
                append,
                append_action,
                keep_empty_value,
            } = o;
            let Some(h) = header else {
                cx.reject(join(&p, "header"), Reason::Missing);
                continue;
            };
            let core::HeaderValue {
                key,
                value,
                raw_value,
            } = h;
            let value = if raw_value.is_empty() {
                value.clone()
            } else if !value.is_empty() {
                cx.reject(
                    join(&p, "header.raw_value"),
                    Reason::Invalid("set together with `value`".into()),
                );
                continue;
            } else {
                match String::from_utf8(raw_value.clone()) {
                    Ok(v) => v,
                    Err(_) => {
                        cx.reject(
                            join(&p, "header.raw_value"),
                            Reason::Invalid("not UTF-8".into()),
                        );
                        continue;
                    }
                }
            };
            if key.is_empty() {
                cx.reject(join(&p, "header.key"), Reason::Missing);
                continue;
            }
            let action = match (append, A::try_from(*append_action)) {
                (Some(_), Ok(a)) if a != A::AppendIfExistsOrAdd => {
                    cx.reject(
                        join(&p, "append"),
                        Reason::Invalid("set together with `append_action`".into()),
                    );
                    continue;
                }
                (Some(b), _) => {
                    if b.value {
                        AppendAction::AppendIfExistsOrAdd
                    } else {
                        AppendAction::OverwriteIfExistsOrAdd
                    }
                }
                (None, Ok(A::AppendIfExistsOrAdd)) => AppendAction::AppendIfExistsOrAdd,
                (None, Ok(A::AddIfAbsent)) => AppendAction::AddIfAbsent,
                (None, Ok(A::OverwriteIfExistsOrAdd)) => AppendAction::OverwriteIfExistsOrAdd,
                (None, Ok(A::OverwriteIfExists)) => AppendAction::OverwriteIfExists,
                (None, Err(_)) => {
                    cx.reject(
                        join(&p, "append_action"),
                        Reason::UnsupportedValue(format!("value {append_action}")),
                    );
                    continue;
                }
            };
            out.push(model::route::HeaderValueOption {
                name: key.to_ascii_lowercase(),
                value,
                append_action: action,
                keep_empty_value: *keep_empty_value,
            });
        }
        out
    }

    pub(crate) fn metadata_value(v: &protobuf::Value) -> model::MetadataValue {
        use protobuf::value::Kind;
        match &v.kind {
            None | Some(Kind::NullValue(_)) => model::MetadataValue::Null,
            Some(Kind::BoolValue(b)) => model::MetadataValue::Bool(*b),
            Some(Kind::NumberValue(n)) => model::MetadataValue::Number(*n),
            Some(Kind::StringValue(s)) => model::MetadataValue::String(s.clone()),
            Some(Kind::ListValue(l)) => {
                model::MetadataValue::List(l.values.iter().map(metadata_value).collect())
            }
            Some(Kind::StructValue(s)) => model::MetadataValue::Struct(
                s.fields
                    .iter()
                    .map(|(k, v)| (k.clone(), metadata_value(v)))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// The rejection messages of a failed conversion, or a panic with the value.
    pub(crate) fn messages<T: std::fmt::Debug>(r: Result<T, Vec<Rejection>>) -> Vec<String> {
        match r {
            Ok(v) => panic!("expected rejections, converted to {v:#?}"),
            Err(errs) => errs.iter().map(ToString::to_string).collect(),
        }
    }

    pub(crate) fn dur(secs: i64, nanos: i32) -> Option<protobuf::Duration> {
        Some(protobuf::Duration {
            seconds: secs,
            nanos,
        })
    }

    pub(crate) fn u32v(v: u32) -> Option<protobuf::UInt32Value> {
        Some(protobuf::UInt32Value { value: v })
    }

    pub(crate) fn boolv(v: bool) -> Option<protobuf::BoolValue> {
        Some(protobuf::BoolValue { value: v })
    }

    pub(crate) fn any<M: prost::Name>(m: &M) -> protobuf::Any {
        protobuf::Any::from_msg(m).unwrap()
    }

    /// A listener on port 80 with one connection manager (RDS `r`), read from Envoy YAML:
    /// `filters` (list items) go before its router, `more` (keys) after `http_filters`;
    /// both written unindented.
    pub(crate) fn hcm_listener(
        filters: &str,
        more: &str,
    ) -> xds_api::pb::envoy::config::listener::v3::Listener {
        let indent = |text: &str, by: &str| -> String {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| format!("{by}{l}\n"))
                .collect()
        };
        let text = format!(
            r#"
name: l
address: {{socket_address: {{address: 0.0.0.0, port_value: 80}}}}
filter_chains:
- filters:
  - name: envoy.filters.network.http_connection_manager
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
      stat_prefix: s
      rds: {{route_config_name: r, config_source: {{ads: {{}}}}}}
      http_filters:
{filters}      - name: envoy.filters.http.router
        typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
{more}"#,
            filters = indent(filters, "      "),
            more = indent(more, "      "),
        );
        json::from_value(serde_yaml::from_str(&text).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatcher_rejects_unknown_type_and_garbage() {
        let e = messages(resource("type.googleapis.com/foo.Bar", b""));
        assert_eq!(
            e,
            ["type `type.googleapis.com/foo.Bar` is not supported here"]
        );
        let e = messages(resource(type_url::CLUSTER, b"\xff\xff"));
        assert!(
            e[0].starts_with(
                "cannot decode as type.googleapis.com/envoy.config.cluster.v3.Cluster"
            ),
            "{e:?}"
        );
        // Field 1000 (varint) is not in the schema: rejected, not dropped.
        let e = messages(resource(type_url::SECRET, &[0xc0, 0x3e, 0x01]));
        assert_eq!(
            e[0],
            "3 bytes of fields unknown to Myelin's Envoy API schema (a newer or removed v2 field?)"
        );
    }

    use test_util::messages;

    #[test]
    fn regex_error_message() {
        let mut cx = Cx::default();
        assert!(cx.regex("m.safe_regex.regex", "(").is_none());
        assert_eq!(
            cx.errs[0].to_string(),
            "m.safe_regex.regex: `(` is not a valid regex: unclosed group"
        );
    }

    #[test]
    fn paths() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(idx("a", "b", 2), "a.b[2]");
        let r = Rejection {
            path: "filter_chains[0]".into(),
            reason: Reason::NotSupported,
        };
        assert_eq!(
            r.prefixed("listeners[3]").to_string(),
            "listeners[3].filter_chains[0]: not supported"
        );
    }
}

#[cfg(test)]
mod tests_cluster;
#[cfg(test)]
mod tests_files;
#[cfg(test)]
mod tests_listener;
#[cfg(test)]
mod tests_route;
