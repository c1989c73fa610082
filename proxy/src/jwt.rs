//! JWT authentication (`envoy.filters.http.jwt_authn`, run by [`crate::filters`]): a
//! request's requirement ([`JwtRequirement`], from the filter's `rules` or the route's
//! `requirement_name`) is checked against the tokens it carries, as Envoy's
//! `jwt_authn` filter and its `jwt_verify_lib` do, in their order:
//!
//! 1. a token is found where its provider says (`from_headers`, `from_params`,
//!    `from_cookies`; by default `Authorization: Bearer` and `access_token`);
//! 2. it must be three base64url parts, its `iss` the provider's `issuer`;
//! 3. `exp` and `nbf` hold (with `clock_skew_seconds`), `exp` within `max_lifetime`;
//! 4. one of its `aud` is one of the provider's `audiences`;
//! 5. a key of the provider's JWKS (inline, or fetched from a cluster and cached) with its
//!    `kid` and `alg` verifies its signature (`jsonwebtoken`, over `ring`).
//!
//! A request that fails is answered `401` with Envoy's message and
//! `www-authenticate: Bearer realm="<url>"` (`error="invalid_token"` unless the token was
//! missing), `403` when its audience is not allowed. A token that passes is removed from
//! the request unless `forward`, its payload and claims copied into headers as configured.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode};
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Map, Value};
use std::sync::Arc;

use crate::model::jwt::{Jwks, JwtConfig, JwtProvider, JwtRequirement, RemoteJwks};
use crate::services::{Pending, Services};
use crate::traffic::router::RequestHead;

/// Why a request's token does not do (Envoy's `jwt_verify_lib` statuses, by their text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Missing,
    BadFormat,
    UnknownIssuer,
    Expired,
    NotYetValid,
    NoExpiration,
    LifetimeTooLong,
    AudienceNotAllowed,
    SubjectNotAllowed,
    KidAlgMismatch,
    JwksFetchFailed,
    VerificationFails,
}

impl Failure {
    /// Envoy's words for it, the body of the answer.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Failure::Missing => "Jwt is missing",
            Failure::BadFormat => {
                "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
            }
            Failure::UnknownIssuer => "Jwt issuer is not configured",
            Failure::Expired => "Jwt is expired",
            Failure::NotYetValid => "Jwt not yet valid",
            Failure::NoExpiration => "Jwt doesn't have expiration",
            Failure::LifetimeTooLong => "Jwt lifetime exceeds the allowed maximum",
            Failure::AudienceNotAllowed => "Audiences in Jwt are not allowed",
            Failure::SubjectNotAllowed => "Jwt subject is not allowed",
            Failure::KidAlgMismatch => "Jwks doesn't have key to match kid or alg from Jwt",
            Failure::JwksFetchFailed => "Jwks remote fetch is failed",
            Failure::VerificationFails => "Jwt verification fails",
        }
    }

    /// The answer's status: `403` for an audience not allowed, else `401`.
    pub(crate) fn status(self) -> u16 {
        match self {
            Failure::AudienceNotAllowed => 403,
            _ => 401,
        }
    }
}

/// What a request that passed gets: headers removed (tokens not forwarded) and set
/// (payloads, claims), in order.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Passed {
    pub(crate) remove: Vec<HeaderName>,
    pub(crate) set: Vec<(HeaderName, HeaderValue)>,
    /// A provider with `clear_route_cache` set a header: the route is chosen again.
    pub(crate) clear_route: bool,
}

/// Where a token was found.
#[derive(Debug, Clone, PartialEq)]
enum Location {
    Header(HeaderName),
    Param,
    Cookie,
}

/// The outcome of one requirement.
enum Outcome {
    Passed(Passed),
    Missing,
    Failed(Failure),
}

/// Checks `requirement` for the request `head`: `Ok` with what to change in the request,
/// or why it fails.
pub(crate) async fn check(
    config: &JwtConfig,
    requirement: &JwtRequirement,
    head: &RequestHead<'_>,
    services: &dyn Services,
) -> Result<Passed, Failure> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let cx = Checking {
        config,
        head,
        services,
        now,
    };
    match cx.requirement(requirement).await {
        Outcome::Passed(p) => Ok(p),
        Outcome::Missing => Err(Failure::Missing),
        Outcome::Failed(f) => Err(f),
    }
}

/// A CORS preflight (`bypass_cors_preflight`): `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`.
pub(crate) fn is_cors_preflight(head: &RequestHead<'_>) -> bool {
    head.method == Method::OPTIONS.as_str()
        && head.headers.contains_key(header::ORIGIN)
        && head
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// The `www-authenticate` value of a failure's answer, `uri` (the request's) its realm.
pub(crate) fn challenge(uri: &str, failure: Failure) -> String {
    let mut value = format!("Bearer realm=\"{uri}\"");
    if failure != Failure::Missing {
        value.push_str(", error=\"invalid_token\"");
    }
    value
}

struct Checking<'a> {
    config: &'a JwtConfig,
    head: &'a RequestHead<'a>,
    services: &'a dyn Services,
    now: u64,
}

impl Checking<'_> {
    /// Boxed: requirements nest.
    fn requirement<'s>(&'s self, r: &'s JwtRequirement) -> Pending<'s, Outcome> {
        Box::pin(self.requirement_now(r))
    }

    async fn requirement_now(&self, r: &JwtRequirement) -> Outcome {
        match r {
            JwtRequirement::Provider { name, audiences } => {
                let Some(provider) = self.config.providers.get(name) else {
                    // Checked with the config; a provider gone is no token of it.
                    return Outcome::Missing;
                };
                let Some((token, at)) = tokens(provider, self.head).into_iter().next() else {
                    return Outcome::Missing;
                };
                match self.verify(provider, audiences.as_deref(), &token).await {
                    Ok(payload) => Outcome::Passed(effects(provider, &token, at, &payload)),
                    Err(f) => Outcome::Failed(f),
                }
            }
            JwtRequirement::Any(list) => {
                let mut failed = None;
                for r in list {
                    match self.requirement(r).await {
                        Outcome::Passed(p) => return Outcome::Passed(p),
                        Outcome::Missing => {}
                        Outcome::Failed(f) => {
                            failed.get_or_insert(f);
                        }
                    }
                }
                failed.map_or(Outcome::Missing, Outcome::Failed)
            }
            JwtRequirement::All(list) => {
                let mut passed = Passed::default();
                for r in list {
                    match self.requirement(r).await {
                        Outcome::Passed(p) => {
                            passed.remove.extend(p.remove);
                            passed.set.extend(p.set);
                            passed.clear_route |= p.clear_route;
                        }
                        other => return other,
                    }
                }
                Outcome::Passed(passed)
            }
            JwtRequirement::AllowMissing => match self.any_token().await {
                None => Outcome::Passed(Passed::default()),
                Some(Ok(p)) => Outcome::Passed(p),
                Some(Err(f)) => Outcome::Failed(f),
            },
            JwtRequirement::AllowMissingOrFailed => match self.any_token().await {
                Some(Ok(p)) => Outcome::Passed(p),
                _ => Outcome::Passed(Passed::default()),
            },
        }
    }

    /// The first token any provider finds, checked by the provider whose issuer it names
    /// (or the one that found it); `None`: no token anywhere.
    async fn any_token(&self) -> Option<Result<Passed, Failure>> {
        let mut found = None;
        for provider in self.config.providers.values() {
            if let Some((token, at)) = tokens(provider, self.head).into_iter().next() {
                found = Some((provider, token, at));
                break;
            }
        }
        let (finder, token, at) = found?;
        let issuer = payload_of(&token)
            .ok()
            .and_then(|p| p.get("iss").and_then(Value::as_str).map(str::to_owned));
        let provider = self
            .config
            .providers
            .values()
            .find(|p| p.issuer.is_some() && p.issuer == issuer)
            .unwrap_or(finder);
        Some(
            self.verify(provider, None, &token)
                .await
                .map(|payload| effects(provider, &token, at, &payload)),
        )
    }

    /// Verifies `token` for `provider`, in Envoy's order; its payload when it passes.
    async fn verify(
        &self,
        provider: &JwtProvider,
        audiences: Option<&[String]>,
        token: &str,
    ) -> Result<Map<String, Value>, Failure> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::BadFormat)?;
        let payload = payload_of(token)?;
        if let Some(issuer) = &provider.issuer {
            if payload.get("iss").and_then(Value::as_str) != Some(issuer) {
                return Err(Failure::UnknownIssuer);
            }
        }
        let number = |k: &str| payload.get(k).and_then(Value::as_u64);
        let skew = provider.clock_skew;
        match number("exp") {
            Some(exp) if self.now > exp.saturating_add(skew) => return Err(Failure::Expired),
            Some(exp) => {
                if let Some(max) = provider.max_lifetime {
                    let start = number("iat").unwrap_or(self.now);
                    if exp.saturating_sub(start) > max {
                        return Err(Failure::LifetimeTooLong);
                    }
                }
            }
            None if provider.require_expiration || provider.max_lifetime.is_some() => {
                return Err(Failure::NoExpiration)
            }
            None => {}
        }
        if number("nbf").is_some_and(|nbf| self.now.saturating_add(skew) < nbf) {
            return Err(Failure::NotYetValid);
        }
        let audiences = audiences.unwrap_or(&provider.audiences);
        if !audiences.is_empty() {
            let allowed = |a: &Value| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
            let ok = match payload.get("aud") {
                Some(Value::Array(list)) => list.iter().any(allowed),
                Some(a) => allowed(a),
                None => false,
            };
            if !ok {
                return Err(Failure::AudienceNotAllowed);
            }
        }
        if let Some(subjects) = &provider.subjects {
            let sub = payload.get("sub").and_then(Value::as_str).unwrap_or("");
            if !subjects.matches(sub) {
                return Err(Failure::SubjectNotAllowed);
            }
        }
        let keys = self.keys(provider).await?;
        let alg = format!("{:?}", header.alg);
        let candidates: Vec<_> = keys
            .keys
            .iter()
            .filter(|k| header.kid.is_none() || k.common.key_id == header.kid)
            .filter(|k| {
                k.common
                    .key_algorithm
                    .is_none_or(|a| format!("{a:?}") == alg)
            })
            .collect();
        if candidates.is_empty() {
            return Err(Failure::KidAlgMismatch);
        }
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        // The claims were checked above, Envoy's way.
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        let verified = candidates.iter().any(|k| {
            jsonwebtoken::DecodingKey::from_jwk(k).is_ok_and(|key| {
                jsonwebtoken::decode::<serde::de::IgnoredAny>(token, &key, &validation).is_ok()
            })
        });
        if verified {
            Ok(payload)
        } else {
            Err(Failure::VerificationFails)
        }
    }

    /// The provider's keys: inline, or the remote JWKS (cached for `cache_duration`; a
    /// failed refetch keeps the keys it had).
    async fn keys(&self, provider: &JwtProvider) -> Result<Arc<JwkSet>, Failure> {
        let remote = match &provider.jwks {
            Jwks::Local(keys) => return Ok(keys.clone()),
            Jwks::Remote(r) => r,
        };
        let cached = remote
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some((at, keys)) = &cached {
            if at.elapsed() < remote.cache_duration {
                return Ok(keys.clone());
            }
        }
        match fetch(self.services, remote).await {
            Ok(keys) => {
                let keys = Arc::new(keys);
                *remote.cache.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((Instant::now(), keys.clone()));
                Ok(keys)
            }
            Err(error) => {
                tracing::debug!(
                    target: "myelin::jwt",
                    provider = %provider.name,
                    uri = %remote.uri,
                    %error,
                    "JWKS fetch failed"
                );
                cached.map(|(_, k)| k).ok_or(Failure::JwksFetchFailed)
            }
        }
    }
}

/// Fetches and reads a remote JWKS.
async fn fetch(services: &dyn Services, remote: &RemoteJwks) -> Result<JwkSet, String> {
    let req = Request::get(remote.uri.as_str())
        .header(header::ACCEPT, "application/json")
        .body(Bytes::new())
        .map_err(|e| e.to_string())?;
    let reply = tokio::time::timeout(
        remote.timeout.max(Duration::from_millis(1)),
        services.send(&remote.cluster, req, false),
    )
    .await
    .map_err(|_| format!("no answer within {:?}", remote.timeout))??;
    if reply.status != StatusCode::OK {
        return Err(format!("HTTP status {}", reply.status.as_u16()));
    }
    let text = std::str::from_utf8(&reply.body).map_err(|_| "a body that is not UTF-8")?;
    crate::model::jwt::parse_jwks(text)
}

/// The JSON payload of a token (its second part), unverified.
fn payload_of(token: &str) -> Result<Map<String, Value>, Failure> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::BadFormat);
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Failure::BadFormat)?;
    serde_json::from_slice(&bytes).map_err(|_| Failure::BadFormat)
}

/// The tokens a request carries where `provider` looks, in its order.
fn tokens(provider: &JwtProvider, head: &RequestHead<'_>) -> Vec<(String, Location)> {
    let mut out = Vec::new();
    let mut from_header = |name: &str, prefix: &str| {
        for v in head.headers.get_all(name) {
            let Ok(v) = v.to_str() else { continue };
            let rest = if prefix.is_empty() {
                Some(v)
            } else if prefix.eq_ignore_ascii_case("Bearer ") {
                // The scheme is case-insensitive (RFC 7235).
                v.get(..prefix.len())
                    .filter(|p| p.eq_ignore_ascii_case(prefix))
                    .map(|_| &v[prefix.len()..])
            } else {
                v.strip_prefix(prefix)
            };
            let token = rest
                .map(|r| r.trim().split([',', ' ']).next().unwrap_or(""))
                .unwrap_or("");
            if !token.is_empty() {
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                    out.push((token.to_owned(), Location::Header(n)));
                }
            }
        }
    };
    if provider.default_locations() {
        from_header("authorization", "Bearer ");
    }
    for (name, prefix) in &provider.from_headers {
        from_header(name, prefix);
    }
    let params: Vec<&str> = if provider.default_locations() {
        vec!["access_token"]
    } else {
        provider.from_params.iter().map(String::as_str).collect()
    };
    if !params.is_empty() {
        if let Some(query) = head.path.split_once('?').map(|(_, q)| q) {
            for pair in query.split('&') {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                if params.contains(&k) && !v.is_empty() {
                    out.push((v.to_owned(), Location::Param));
                }
            }
        }
    }
    for cookie in &provider.from_cookies {
        for v in head.headers.get_all(header::COOKIE) {
            let Ok(v) = v.to_str() else { continue };
            for pair in v.split(';') {
                if let Some((k, val)) = pair.trim().split_once('=') {
                    if k == cookie && !val.is_empty() {
                        out.push((val.to_owned(), Location::Cookie));
                    }
                }
            }
        }
    }
    out
}

/// What a verified token of `provider` changes in the request.
fn effects(
    provider: &JwtProvider,
    token: &str,
    at: Location,
    payload: &Map<String, Value>,
) -> Passed {
    let mut passed = Passed::default();
    if !provider.forward {
        if let Location::Header(h) = at {
            passed.remove.push(h);
        }
    }
    if let Some(h) = &provider.forward_payload_header {
        let part = token.split('.').nth(1).unwrap_or("");
        let value = if provider.pad_forward_payload_header {
            // base64url with padding: the same bytes, re-encoded.
            URL_SAFE_NO_PAD
                .decode(part)
                .map(|b| base64::engine::general_purpose::URL_SAFE.encode(b))
                .unwrap_or_else(|_| part.to_owned())
        } else {
            part.to_owned()
        };
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            passed.set.push((n, v));
        }
    }
    for (h, claim) in &provider.claim_to_headers {
        // A nested claim by its dotted path, as Envoy reads it.
        let mut value = None;
        let mut at: Option<&Map<String, Value>> = Some(payload);
        for (i, part) in claim.split('.').enumerate() {
            let Some(m) = at else { break };
            let v = m.get(part);
            if i == claim.split('.').count() - 1 {
                value = v;
            } else {
                at = v.and_then(Value::as_object);
            }
        }
        let text = match value {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(Value::Bool(b)) => Some(b.to_string()),
            // A list of strings, comma separated, as Envoy writes it.
            Some(Value::Array(a)) if a.iter().all(Value::is_string) => Some(
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            _ => None,
        };
        if let Some(t) = text {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(h.as_bytes()),
                HeaderValue::from_str(&t),
            ) {
                passed.set.push((n, v));
            }
        }
    }
    // Envoy clears the route cache when such a provider's token passed and it added to
    // the request (its claims, its payload).
    passed.clear_route = provider.clear_route_cache && !passed.set.is_empty();
    passed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use http::HeaderMap;
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
    use serde_json::json;

    use crate::model::jwt::{Jwks, JwtProvider};

    /// A P-256 key: its signer and its JWK (`kid`).
    struct Key {
        pair: EcdsaKeyPair,
        jwk: Value,
    }

    fn key(kid: &str) -> Key {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Key { pair, jwk }
    }

    /// A token of `claims` signed by `key` (ES256, its `kid`).
    fn token(key: &Key, claims: Value) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": key.jwk["kid"]});
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = key
            .pair
            .sign(&SystemRandom::new(), message.as_bytes())
            .unwrap();
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn provider(keys: &[&Key]) -> JwtProvider {
        let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
        JwtProvider {
            name: "p".into(),
            issuer: Some("https://issuer".into()),
            audiences: vec!["web".into()],
            jwks: Jwks::Local(Arc::new(
                crate::model::jwt::parse_jwks(&set.to_string()).unwrap(),
            )),
            forward: false,
            from_headers: vec![],
            from_params: vec![],
            from_cookies: vec![],
            forward_payload_header: Some("x-payload".into()),
            pad_forward_payload_header: false,
            claim_to_headers: vec![
                ("x-sub".into(), "sub".into()),
                ("x-team".into(), "org.team".into()),
            ],
            clock_skew: 60,
            max_lifetime: None,
            require_expiration: false,
            subjects: None,
            clear_route_cache: false,
        }
    }

    fn config(p: JwtProvider) -> JwtConfig {
        JwtConfig {
            providers: BTreeMap::from([("p".to_owned(), Arc::new(p))]),
            rules: vec![],
            requirement_map: BTreeMap::new(),
            bypass_cors_preflight: false,
            strip_failure_response: false,
        }
    }

    struct NoFetch;

    impl Services for NoFetch {
        fn send<'a>(
            &'a self,
            _: &'a str,
            _: Request<Bytes>,
            _: bool,
        ) -> crate::services::Pending<'a, Result<crate::services::Reply, String>> {
            Box::pin(async { Err("no fetch in unit tests".to_owned()) })
        }

        fn send_detached(&self, _: &str, _: Request<Bytes>, _: Duration) {}

        fn open<'a>(
            &'a self,
            _: &'a str,
        ) -> crate::services::Pending<'a, Result<crate::services::Opener, String>> {
            Box::pin(async { Err("no streams in unit tests".to_owned()) })
        }
    }

    async fn run(
        c: &JwtConfig,
        r: &JwtRequirement,
        headers: &[(&str, &str)],
        path: &str,
    ) -> Result<Passed, Failure> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let head = RequestHead {
            method: "GET",
            authority: "web",
            path,
            scheme: "http",
            headers: &h,
        };
        check(c, r, &head, &NoFetch).await
    }

    fn bearer(t: &str) -> String {
        format!("Bearer {t}")
    }

    #[tokio::test]
    async fn tokens_are_checked_in_envoys_order() {
        let k1 = key("k1");
        let stranger = key("k1");
        let c = config(provider(&[&k1]));
        let p = JwtRequirement::Provider {
            name: "p".into(),
            audiences: None,
        };
        let good = json!({"iss": "https://issuer", "aud": ["x", "web"], "sub": "alice",
                          "exp": now() + 600, "org": {"team": "blue"}});
        let passed = run(
            &c,
            &p,
            &[("authorization", &bearer(&token(&k1, good.clone())))],
            "/",
        )
        .await
        .unwrap();
        assert_eq!(passed.remove, [header::AUTHORIZATION]);
        let set: Vec<(&str, &str)> = passed
            .set
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(set[1..], [("x-sub", "alice"), ("x-team", "blue")]);
        assert_eq!(set[0].0, "x-payload");
        let payload = URL_SAFE_NO_PAD.decode(set[0].1).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&payload).unwrap(), good);

        // The query parameter `access_token` by default, and the scheme in any case.
        let t = token(&k1, good.clone());
        assert!(run(&c, &p, &[], &format!("/x?a=1&access_token={t}"))
            .await
            .is_ok());
        assert!(
            run(&c, &p, &[("authorization", &format!("bearer {t}"))], "/")
                .await
                .is_ok()
        );

        let (c, p) = (&c, &p);
        let with = |claims: Value| {
            let t = token(&k1, claims);
            async move {
                run(c, p, &[("authorization", &bearer(&t))], "/")
                    .await
                    .unwrap_err()
            }
        };
        assert_eq!(run(c, p, &[], "/").await.unwrap_err(), Failure::Missing);
        assert_eq!(
            run(c, p, &[("authorization", "Bearer abc")], "/")
                .await
                .unwrap_err(),
            Failure::BadFormat
        );
        assert_eq!(
            with(json!({"iss": "https://other", "aud": "web"})).await,
            Failure::UnknownIssuer
        );
        assert_eq!(
            with(json!({"iss": "https://issuer", "aud": "web", "exp": now() - 61})).await,
            Failure::Expired
        );
        assert_eq!(
            with(json!({"iss": "https://issuer", "aud": "web", "nbf": now() + 61})).await,
            Failure::NotYetValid
        );
        assert_eq!(
            with(json!({"iss": "https://issuer", "aud": "api"})).await,
            Failure::AudienceNotAllowed
        );
        // Within the clock skew.
        let t = token(
            &k1,
            json!({"iss": "https://issuer", "aud": "web", "exp": now() - 30}),
        );
        assert!(run(c, p, &[("authorization", &bearer(&t))], "/")
            .await
            .is_ok());
        // Signed by another key of the same `kid`; a `kid` the JWKS lacks.
        let forged = token(&stranger, good.clone());
        assert_eq!(
            run(c, p, &[("authorization", &bearer(&forged))], "/")
                .await
                .unwrap_err(),
            Failure::VerificationFails
        );
        let other = token(&key("k2"), good.clone());
        assert_eq!(
            run(c, p, &[("authorization", &bearer(&other))], "/")
                .await
                .unwrap_err(),
            Failure::KidAlgMismatch
        );
        assert_eq!(Failure::AudienceNotAllowed.status(), 403);
        assert_eq!(Failure::Expired.status(), 401);

        // Audiences of the requirement in place of the provider's.
        let pa = JwtRequirement::Provider {
            name: "p".into(),
            audiences: Some(vec!["api".into()]),
        };
        let api = token(&k1, json!({"iss": "https://issuer", "aud": "api"}));
        assert!(run(c, &pa, &[("authorization", &bearer(&api))], "/")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn requirements_combine() {
        let k1 = key("k1");
        let mut strict = provider(&[&k1]);
        strict.require_expiration = true;
        strict.max_lifetime = Some(3600);
        strict.subjects = Some(crate::model::StringMatcher {
            pattern: crate::model::StringPattern::Prefix("spiffe://".into()),
            ignore_case: false,
        });
        let c = config(strict);
        let p = || JwtRequirement::Provider {
            name: "p".into(),
            audiences: None,
        };
        let claims = |sub: &str, exp: Option<u64>| {
            let mut c = json!({"iss": "https://issuer", "aud": "web", "sub": sub, "iat": now()});
            if let Some(e) = exp {
                c["exp"] = json!(e);
            }
            c
        };
        let auth = |t: &str| [("authorization".to_owned(), bearer(t))];
        let good = token(&k1, claims("spiffe://a", Some(now() + 60)));
        let long = token(&k1, claims("spiffe://a", Some(now() + 7200)));
        let no_exp = token(&k1, claims("spiffe://a", None));
        let bad_sub = token(&k1, claims("alice", Some(now() + 60)));
        let h = |t: &[(String, String)]| {
            t.iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        let go = |r: JwtRequirement, hs: Vec<(String, String)>| {
            let c = &c;
            async move {
                let hs: Vec<(&str, &str)> =
                    hs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                run(c, &r, &hs, "/").await
            }
        };
        assert!(go(p(), h(&auth(&good))).await.is_ok());
        assert_eq!(
            go(p(), h(&auth(&long))).await.unwrap_err(),
            Failure::LifetimeTooLong
        );
        assert_eq!(
            go(p(), h(&auth(&no_exp))).await.unwrap_err(),
            Failure::NoExpiration
        );
        assert_eq!(
            go(p(), h(&auth(&bad_sub))).await.unwrap_err(),
            Failure::SubjectNotAllowed
        );

        // allow_missing: none is fine, a bad one is not; allow_missing_or_failed: anything.
        assert!(go(JwtRequirement::AllowMissing, vec![]).await.is_ok());
        assert_eq!(
            go(JwtRequirement::AllowMissing, h(&auth(&bad_sub)))
                .await
                .unwrap_err(),
            Failure::SubjectNotAllowed
        );
        assert!(go(JwtRequirement::AllowMissingOrFailed, h(&auth(&bad_sub)))
            .await
            .is_ok());
        let ok = go(JwtRequirement::AllowMissingOrFailed, h(&auth(&good)))
            .await
            .unwrap();
        assert!(!ok.set.is_empty(), "a valid token is still used");
        // Any: the provider or nothing; All: a missing token fails.
        let any = JwtRequirement::Any(vec![p(), JwtRequirement::AllowMissing]);
        assert!(go(any.clone(), vec![]).await.is_ok());
        assert!(go(any, h(&auth(&good))).await.is_ok());
        let all = JwtRequirement::All(vec![p(), p()]);
        assert_eq!(go(all.clone(), vec![]).await.unwrap_err(), Failure::Missing);
        assert!(go(all, h(&auth(&good))).await.is_ok());
    }

    #[test]
    fn challenges_and_preflights() {
        let h = HeaderMap::new();
        let head = RequestHead {
            method: "GET",
            authority: "shop.example",
            path: "/cart?id=1",
            scheme: "https",
            headers: &h,
        };
        let uri = "https://shop.example/cart?id=1";
        assert_eq!(
            challenge(uri, Failure::Missing),
            "Bearer realm=\"https://shop.example/cart?id=1\""
        );
        assert_eq!(
            challenge(uri, Failure::Expired),
            "Bearer realm=\"https://shop.example/cart?id=1\", error=\"invalid_token\""
        );
        assert!(!is_cors_preflight(&head));
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_static("https://a"));
        h.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        let head = RequestHead {
            method: "OPTIONS",
            headers: &h,
            ..head
        };
        assert!(is_cors_preflight(&head));
    }
}
