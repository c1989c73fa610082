//! A connection manager's `local_reply_config`: how the replies the proxy makes itself (no
//! route, no healthy upstream, timeouts, direct responses and redirects, fault aborts, rate
//! limits, refused requests) are rewritten before they go out, as Envoy's `LocalReply`
//! does. Responses from upstream are never touched.
//!
//! Mappers are tried in order; the first whose filter matches may set the status, the body,
//! a body format of its own and headers. Then the body is formatted: the mapper's format,
//! else the config's, else the body as it is. Formats are Envoy's substitution format
//! strings (text or JSON) with a subset of its command operators ([`Operator`]), parsed
//! once with the config.

use std::fmt;

use serde::{Serialize, Serializer};

use super::route::{HeaderMatcher, HeaderValueOption};

/// `local_reply_config`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalReplyConfig {
    /// `mappers`, in order: the first that matches applies.
    pub mappers: Vec<ResponseMapper>,
    /// `body_format`: the body of every local reply (unless a mapper has its own).
    pub body_format: Option<BodyFormat>,
}

impl LocalReplyConfig {
    /// Whether anything here reads the request's headers (`%REQ(...)%`, header filters):
    /// only then are they kept until the reply is made.
    pub fn reads_request_headers(&self) -> bool {
        self.mappers.iter().any(|m| {
            m.filter.reads_request_headers()
                || m.body_format_override
                    .as_ref()
                    .is_some_and(BodyFormat::reads_request_headers)
        }) || self
            .body_format
            .as_ref()
            .is_some_and(BodyFormat::reads_request_headers)
    }
}

/// One `ResponseMapper`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResponseMapper {
    /// Which local replies it applies to.
    pub filter: ReplyFilter,
    /// `status_code`: the reply's new status.
    pub status_code: Option<u16>,
    /// `body`: the reply's new body (before formatting: `%LOCAL_REPLY_BODY%`).
    pub body: Option<String>,
    /// `body_format_override`.
    pub body_format_override: Option<BodyFormat>,
    /// `headers_to_add`.
    pub headers_to_add: Vec<HeaderValueOption>,
}

/// An access-log filter (`config.accesslog.v3.AccessLogFilter`), as a mapper uses it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyFilter {
    /// `status_code_filter`: the reply's status.
    Status(Comparison),
    /// `duration_filter`: milliseconds since the request began.
    Duration(Comparison),
    /// `not_health_check_filter`: no request here is a health check (Myelin has no health
    /// check filter), so always true.
    NotHealthCheck,
    /// `and_filter`.
    And(Vec<ReplyFilter>),
    /// `or_filter`.
    Or(Vec<ReplyFilter>),
    /// `header_filter`: a request header.
    Header(HeaderMatcher),
    /// `response_flag_filter`: any of these flags (empty: any flag at all).
    ResponseFlags(Vec<String>),
    /// `grpc_status_filter`: the reply's gRPC status is (or, `exclude`, is not) one of
    /// these; a reply to a request that is not gRPC has none.
    GrpcStatus {
        /// gRPC status codes.
        statuses: Vec<u32>,
        /// Matches the other statuses instead.
        exclude: bool,
    },
}

impl ReplyFilter {
    fn reads_request_headers(&self) -> bool {
        match self {
            ReplyFilter::Header(_) => true,
            ReplyFilter::And(fs) | ReplyFilter::Or(fs) => {
                fs.iter().any(ReplyFilter::reads_request_headers)
            }
            _ => false,
        }
    }
}

/// `ComparisonFilter`: a number compared with `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Comparison {
    /// How.
    pub op: CmpOp,
    /// With what (`RuntimeUInt32.default_value`; there is no runtime).
    pub value: u32,
}

impl Comparison {
    /// Whether `n` passes.
    pub fn holds(&self, n: u64) -> bool {
        let v = u64::from(self.value);
        match self.op {
            CmpOp::Eq => n == v,
            CmpOp::Ge => n >= v,
            CmpOp::Le => n <= v,
            CmpOp::Ne => n != v,
        }
    }
}

/// `ComparisonFilter.Op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    /// `EQ`.
    Eq,
    /// `GE`.
    Ge,
    /// `LE`.
    Le,
    /// `NE`.
    Ne,
}

/// A `SubstitutionFormatString`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BodyFormat {
    /// Text or JSON.
    pub format: Format,
    /// `content_type` (default `text/plain` for text, `application/json` for JSON).
    pub content_type: Option<String>,
    /// `omit_empty_values`: text: an operator without a value is empty, not `-`; JSON:
    /// such fields are left out.
    pub omit_empty_values: bool,
}

impl BodyFormat {
    fn reads_request_headers(&self) -> bool {
        match &self.format {
            Format::Text(t) => t.reads_request_headers(),
            Format::Json(fields) => fields.iter().any(|(_, v)| v.reads_request_headers()),
        }
    }
}

/// A format: `text_format` / `text_format_source`, or `json_format`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// A line of text with operators.
    Text(Template),
    /// A JSON object whose string values are templates (a value that is one operator alone
    /// keeps the operator's type: `%RESPONSE_CODE%` is a number).
    Json(Vec<(String, JsonValue)>),
}

/// A value of a JSON format.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JsonValue {
    /// A template.
    Template(Template),
    /// A nested object.
    Object(Vec<(String, JsonValue)>),
    /// Any other JSON value, as it is.
    Literal(serde_json::Value),
}

impl JsonValue {
    fn reads_request_headers(&self) -> bool {
        match self {
            JsonValue::Template(t) => t.reads_request_headers(),
            JsonValue::Object(fields) => fields.iter().any(|(_, v)| v.reads_request_headers()),
            JsonValue::Literal(_) => false,
        }
    }
}

/// A substitution format string, parsed: text and command operators.
#[derive(Debug, Clone, PartialEq)]
pub struct Template(pub Vec<Piece>);

impl Template {
    fn reads_request_headers(&self) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Piece::Op(Operator::Req { .. })))
    }

    /// Parses Envoy's format string syntax: `%OPERATOR%`, `%OPERATOR(arg)%`,
    /// `%OPERATOR(arg):N%` (at most N characters), `%%` for a `%`.
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('%') {
            text.push_str(&rest[..i]);
            rest = &rest[i + 1..];
            if let Some(r) = rest.strip_prefix('%') {
                text.push('%');
                rest = r;
                continue;
            }
            let end = rest
                .find('%')
                .ok_or_else(|| format!("a `%` without its closing `%` in {s:?}"))?;
            let op = Operator::parse(&rest[..end])?;
            rest = &rest[end + 1..];
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Op(op));
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.0 {
            match p {
                Piece::Text(t) => f.write_str(&t.replace('%', "%%"))?,
                Piece::Op(o) => write!(f, "%{o}%")?,
            }
        }
        Ok(())
    }
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Part of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Text as it is.
    Text(String),
    /// A command operator.
    Op(Operator),
}

/// The command operators a local reply's format may use (Envoy's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    /// `LOCAL_REPLY_BODY`: the reply's body before formatting.
    LocalReplyBody,
    /// `RESPONSE_CODE`.
    ResponseCode,
    /// `RESPONSE_FLAGS` (`-` when none).
    ResponseFlags,
    /// `PROTOCOL`: `HTTP/1.1` or `HTTP/2`.
    Protocol,
    /// `START_TIME`: when the request began (RFC 3339, milliseconds, UTC).
    StartTime,
    /// `DURATION`: milliseconds since the request began.
    Duration,
    /// `REQ(name?alternative):max`: a request header.
    Req {
        /// The header.
        name: String,
        /// Read when `name` is absent.
        alternative: Option<String>,
        /// At most this many characters.
        max_len: Option<usize>,
    },
    /// `RESP(name?alternative):max`: a header of the reply.
    Resp {
        /// The header.
        name: String,
        /// Read when `name` is absent.
        alternative: Option<String>,
        /// At most this many characters.
        max_len: Option<usize>,
    },
}

impl Operator {
    fn parse(s: &str) -> Result<Operator, String> {
        let (head, max_len) = match s.rsplit_once("):") {
            Some((h, n)) => (
                format!("{h})"),
                Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("`%{s}%`: {n:?} is not a length"))?,
                ),
            ),
            None => (s.to_owned(), None),
        };
        let header = |arg: &str| -> Result<(String, Option<String>), String> {
            let (name, alt) = match arg.split_once('?') {
                Some((n, a)) => (n, Some(a.to_ascii_lowercase())),
                None => (arg, None),
            };
            // Pseudo-headers (`:path`, `:method`, `:authority`) too, as in Envoy.
            let bare = name.strip_prefix(':').unwrap_or(name);
            if bare.is_empty() || http::HeaderName::from_bytes(bare.as_bytes()).is_err() {
                return Err(format!("`%{s}%`: {name:?} is not a header name"));
            }
            Ok((name.to_ascii_lowercase(), alt))
        };
        let plain = |op: Operator| match max_len {
            None => Ok(op),
            Some(_) => Err(format!("`%{s}%`: a length only applies to REQ and RESP")),
        };
        match head.as_str() {
            "LOCAL_REPLY_BODY" => plain(Operator::LocalReplyBody),
            "RESPONSE_CODE" => plain(Operator::ResponseCode),
            "RESPONSE_FLAGS" => plain(Operator::ResponseFlags),
            "PROTOCOL" => plain(Operator::Protocol),
            "START_TIME" => plain(Operator::StartTime),
            "DURATION" => plain(Operator::Duration),
            h => {
                if let Some(arg) = h.strip_prefix("REQ(").and_then(|a| a.strip_suffix(')')) {
                    let (name, alternative) = header(arg)?;
                    Ok(Operator::Req {
                        name,
                        alternative,
                        max_len,
                    })
                } else if let Some(arg) = h.strip_prefix("RESP(").and_then(|a| a.strip_suffix(')'))
                {
                    let (name, alternative) = header(arg)?;
                    Ok(Operator::Resp {
                        name,
                        alternative,
                        max_len,
                    })
                } else {
                    Err(format!(
                        "command operator `%{s}%` is not supported in local replies (supported: \
                         LOCAL_REPLY_BODY, RESPONSE_CODE, RESPONSE_FLAGS, PROTOCOL, START_TIME, \
                         DURATION, REQ(...), RESP(...))"
                    ))
                }
            }
        }
    }
}

impl fmt::Display for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header = |f: &mut fmt::Formatter<'_>,
                      op: &str,
                      name: &str,
                      alt: &Option<String>,
                      max: &Option<usize>| {
            write!(f, "{op}({name}")?;
            if let Some(a) = alt {
                write!(f, "?{a}")?;
            }
            f.write_str(")")?;
            if let Some(m) = max {
                write!(f, ":{m}")?;
            }
            Ok(())
        };
        match self {
            Operator::LocalReplyBody => f.write_str("LOCAL_REPLY_BODY"),
            Operator::ResponseCode => f.write_str("RESPONSE_CODE"),
            Operator::ResponseFlags => f.write_str("RESPONSE_FLAGS"),
            Operator::Protocol => f.write_str("PROTOCOL"),
            Operator::StartTime => f.write_str("START_TIME"),
            Operator::Duration => f.write_str("DURATION"),
            Operator::Req {
                name,
                alternative,
                max_len,
            } => header(f, "REQ", name, alternative, max_len),
            Operator::Resp {
                name,
                alternative,
                max_len,
            } => header(f, "RESP", name, alternative, max_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_and_print_back() {
        let t = Template::parse("%RESPONSE_CODE% %REQ(X-Id?X-Request-Id):8% 100%% done").unwrap();
        assert_eq!(
            t.0,
            [
                Piece::Op(Operator::ResponseCode),
                Piece::Text(" ".into()),
                Piece::Op(Operator::Req {
                    name: "x-id".into(),
                    alternative: Some("x-request-id".into()),
                    max_len: Some(8)
                }),
                Piece::Text(" 100% done".into()),
            ]
        );
        assert_eq!(
            t.to_string(),
            "%RESPONSE_CODE% %REQ(x-id?x-request-id):8% 100%% done"
        );
        for (bad, says) in [
            ("%UPSTREAM_HOST%", "`%UPSTREAM_HOST%` is not supported"),
            ("%RESPONSE_CODE", "without its closing"),
            ("%REQ(a b)%", "is not a header name"),
            ("%RESPONSE_CODE():3%", "is not supported"),
            ("%REQ(x):n%", "is not a length"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn comparisons() {
        let c = |op, value| Comparison { op, value };
        assert!(c(CmpOp::Ge, 500).holds(503));
        assert!(!c(CmpOp::Ge, 500).holds(404));
        assert!(c(CmpOp::Le, 499).holds(404));
        assert!(c(CmpOp::Eq, 404).holds(404));
        assert!(c(CmpOp::Ne, 404).holds(503));
    }
}
