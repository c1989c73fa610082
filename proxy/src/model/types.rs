//! Small value types shared by several resource models: compiled regexes, string
//! matchers, data sources and metadata values.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Serialize, Serializer};

/// A compiled regular expression that must match the *whole* input, like Envoy's
/// `safe_regex` (RE2 full match). Compares and serializes as its source text.
#[derive(Clone)]
pub struct Regex {
    source: String,
    full: regex::Regex,
    // Unanchored, for rewrites that substitute every match (`regex_rewrite`).
    any: regex::Regex,
}

impl Regex {
    /// Compiles `source`; the error says what is wrong with it.
    pub fn new(source: &str) -> Result<Self, regex::Error> {
        let any = regex::Regex::new(source)?;
        let full = regex::Regex::new(&format!("^(?:{source})$"))?;
        Ok(Self {
            source: source.to_owned(),
            full,
            any,
        })
    }

    /// The expression as written in the config.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the whole of `s` matches.
    pub fn is_full_match(&self, s: &str) -> bool {
        self.full.is_match(s)
    }

    /// Replaces every match in `s` with `substitution` (`\1`-style groups as in Envoy are
    /// written `$1` here; the converter translates them).
    pub fn replace_all(&self, s: &str, substitution: &str) -> String {
        self.any.replace_all(s, substitution).into_owned()
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.source)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Serialize for Regex {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// How a string is matched (Envoy `type.matcher.v3.StringMatcher`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StringPattern {
    /// The whole string equals this.
    Exact(String),
    /// The string starts with this.
    Prefix(String),
    /// The string ends with this.
    Suffix(String),
    /// The string contains this.
    Contains(String),
    /// The whole string matches this regex.
    SafeRegex(Regex),
}

/// A string matcher; `ignore_case` applies to all but regexes (as in Envoy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StringMatcher {
    /// What to match.
    pub pattern: StringPattern,
    /// ASCII case-insensitive comparison (not for `SafeRegex`).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// An exact, case-sensitive matcher.
    pub fn exact(s: impl Into<String>) -> Self {
        Self {
            pattern: StringPattern::Exact(s.into()),
            ignore_case: false,
        }
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let fold = |s: &str| {
            if self.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.to_owned()
            }
        };
        match &self.pattern {
            StringPattern::Exact(p) => fold(value) == fold(p),
            StringPattern::Prefix(p) => fold(value).starts_with(&fold(p)),
            StringPattern::Suffix(p) => fold(value).ends_with(&fold(p)),
            StringPattern::Contains(p) => fold(value).contains(&fold(p)),
            StringPattern::SafeRegex(r) => r.is_full_match(value),
        }
    }
}

/// Where some bytes (a certificate, a key, a response body) come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DataSource {
    /// Read from this file (when the secret is loaded, not at conversion).
    Filename(PathBuf),
    /// Given inline (`inline_bytes` or `inline_string`).
    Inline(#[serde(serialize_with = "lossy_str")] Vec<u8>),
}

fn lossy_str<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(b))
}

/// A metadata value (`google.protobuf.Value`), serialized as plain JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum MetadataValue {
    /// `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number (JSON numbers are doubles).
    Number(f64),
    /// A string.
    String(String),
    /// A list.
    List(Vec<MetadataValue>),
    /// An object.
    Struct(BTreeMap<String, MetadataValue>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_full_match_and_rewrite() {
        let r = Regex::new("/api/v[0-9]+").unwrap();
        assert!(r.is_full_match("/api/v1"));
        assert!(!r.is_full_match("/api/v1/x"));
        assert_eq!(r.replace_all("/api/v1/x", "/v"), "/v/x");
        assert_eq!(r, Regex::new("/api/v[0-9]+").unwrap());
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!("/api/v[0-9]+")
        );
        assert!(Regex::new("(").is_err());
    }

    #[test]
    fn string_matchers() {
        let m = |pattern, ignore_case| StringMatcher {
            pattern,
            ignore_case,
        };
        let cases = [
            (m(StringPattern::Exact("Ab".into()), false), "Ab", true),
            (m(StringPattern::Exact("Ab".into()), false), "ab", false),
            (m(StringPattern::Exact("Ab".into()), true), "ab", true),
            (m(StringPattern::Prefix("/a".into()), false), "/ab", true),
            (
                m(StringPattern::Suffix(".com".into()), false),
                "x.com",
                true,
            ),
            (
                m(StringPattern::Contains("mid".into()), false),
                "amidb",
                true,
            ),
            (
                m(StringPattern::SafeRegex(Regex::new("a+").unwrap()), false),
                "aaa",
                true,
            ),
            (
                m(StringPattern::SafeRegex(Regex::new("a+").unwrap()), false),
                "aab",
                false,
            ),
        ];
        for (i, (matcher, input, want)) in cases.iter().enumerate() {
            assert_eq!(
                matcher.matches(input),
                *want,
                "case {i}: {matcher:?} {input}"
            );
        }
    }
}
