//! The proxy's own replies rewritten by a connection manager's `local_reply_config`
//! ([`crate::model::local_reply`]), as Envoy's `LocalReply::rewrite` does: where a reply is
//! made it is marked ([`mark`]) with its status and body as they were before any gRPC
//! conversion; when the response is about to go out, [`rewrite`] applies the first matching
//! mapper and the body format, then makes the gRPC reply again for a gRPC client (the new
//! body as `grpc-message`, the new status mapped unless the reply named its own gRPC
//! status). Responses without the mark (from upstream, CORS preflights) are left alone.

use std::time::{Duration, SystemTime};

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Response};

use crate::error::ProxyBody;
use crate::model::local_reply::{
    BodyFormat, Format, JsonValue, LocalReplyConfig, Operator, Piece, ReplyFilter, Template,
};
use crate::traffic::router::RequestHead;

/// What a reply the proxy made was, before any gRPC conversion (a response extension).
#[derive(Debug, Clone)]
pub(crate) struct LocalReply {
    /// Its HTTP status.
    code: u16,
    /// Its body.
    body: String,
    /// The gRPC status it named itself (a fault's `grpc_status`, a stream past its
    /// duration); others are mapped from the HTTP status.
    grpc_status: Option<u32>,
}

/// Marks `resp` as a local reply of status `code` with `body` (what it was before a gRPC
/// conversion), and the gRPC status it names itself if any.
pub(crate) fn mark(
    mut resp: Response<ProxyBody>,
    code: u16,
    body: &str,
    grpc_status: Option<u32>,
) -> Response<ProxyBody> {
    resp.extensions_mut().insert(LocalReply {
        code,
        body: body.to_owned(),
        grpc_status,
    });
    resp
}

/// What a reply's rewrite may read besides the reply.
pub(crate) struct Facts<'a> {
    /// Its response flags (`-`: none).
    pub(crate) flags: &'static str,
    /// The request was gRPC.
    pub(crate) grpc: bool,
    /// The request's head, when the config reads it.
    pub(crate) request: Option<RequestHead<'a>>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub(crate) protocol: &'static str,
    /// Since the request began.
    pub(crate) elapsed: Duration,
}

/// `resp` after `cfg`: unchanged unless it is a marked local reply that a mapper matches or
/// that a body format applies to.
pub(crate) fn rewrite(
    cfg: &LocalReplyConfig,
    mut resp: Response<ProxyBody>,
    facts: &Facts<'_>,
) -> Response<ProxyBody> {
    let Some(mark) = resp.extensions_mut().remove::<LocalReply>() else {
        return resp;
    };
    let grpc_status = facts.grpc.then(|| {
        mark.grpc_status
            .unwrap_or_else(|| crate::error::grpc::status_of_http(status(mark.code)))
    });
    let mapper = cfg
        .mappers
        .iter()
        .find(|m| matches(&m.filter, mark.code, grpc_status, facts));
    let format = mapper
        .and_then(|m| m.body_format_override.as_ref())
        .or(cfg.body_format.as_ref());
    if mapper.is_none() && format.is_none() {
        return resp;
    }
    let (parts, _) = resp.into_parts();
    let mut headers = parts.headers;
    let mut code = mark.code;
    let mut body = mark.body;
    if let Some(m) = mapper {
        code = m.status_code.unwrap_or(code);
        if let Some(b) = &m.body {
            body.clone_from(b);
        }
        crate::traffic::router::mutate_headers(&mut headers, &m.headers_to_add, &[]);
    }
    let mut content_type = None;
    if let Some(f) = format {
        let r = Render {
            code,
            body: &body,
            headers: &headers,
            facts,
        };
        content_type = Some(f.content_type.clone().unwrap_or_else(|| {
            match f.format {
                Format::Text(_) => "text/plain",
                Format::Json(_) => "application/json",
            }
            .to_owned()
        }));
        body = r.format(f);
    }
    let mut reply = if facts.grpc {
        // A gRPC client gets the reply as gRPC again: the (new) body as its message; the
        // status it named itself, else the (new) HTTP status mapped.
        let status = match (mapper.and_then(|m| m.status_code), mark.grpc_status) {
            (None, Some(own)) => own,
            _ => crate::error::grpc::status_of_http(status(code)),
        };
        for h in [CONTENT_LENGTH, CONTENT_TYPE] {
            headers.remove(h);
        }
        headers.remove("grpc-status");
        headers.remove("grpc-message");
        let mut r = crate::error::grpc_local_reply(status, &body);
        r.headers_mut().extend(headers);
        r
    } else {
        let mut r = crate::http::local_response(code, body);
        headers.remove(CONTENT_LENGTH);
        r.headers_mut().extend(headers);
        if let Some(ct) = content_type.and_then(|c| HeaderValue::from_str(&c).ok()) {
            r.headers_mut().insert(CONTENT_TYPE, ct);
        }
        r
    };
    *reply.extensions_mut() = parts.extensions;
    reply
}

fn status(code: u16) -> http::StatusCode {
    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

/// Whether a reply of status `code` (and gRPC status, to a gRPC client) passes `f`.
fn matches(f: &ReplyFilter, code: u16, grpc: Option<u32>, facts: &Facts<'_>) -> bool {
    match f {
        ReplyFilter::Status(c) => c.holds(u64::from(code)),
        ReplyFilter::Duration(c) => c.holds(facts.elapsed.as_millis() as u64),
        ReplyFilter::NotHealthCheck => true,
        ReplyFilter::And(fs) => fs.iter().all(|f| matches(f, code, grpc, facts)),
        ReplyFilter::Or(fs) => fs.iter().any(|f| matches(f, code, grpc, facts)),
        ReplyFilter::Header(m) => facts.request.as_ref().is_some_and(|r| m.matches(r)),
        ReplyFilter::ResponseFlags(want) => {
            facts.flags != "-"
                && (want.is_empty() || facts.flags.split(',').any(|f| want.iter().any(|w| w == f)))
        }
        ReplyFilter::GrpcStatus { statuses, exclude } => match grpc {
            Some(s) => statuses.contains(&s) != *exclude,
            None => false,
        },
    }
}

/// What a format renders from.
struct Render<'a> {
    code: u16,
    body: &'a str,
    headers: &'a HeaderMap,
    facts: &'a Facts<'a>,
}

/// An operator's value: text, or a number (which a JSON format keeps as a number).
enum Value {
    Text(String),
    Number(u64),
}

impl Render<'_> {
    fn format(&self, f: &BodyFormat) -> String {
        match &f.format {
            Format::Text(t) => self.text(t, f.omit_empty_values),
            Format::Json(fields) => {
                let mut out = serde_json::to_string(&self.object(fields, f.omit_empty_values))
                    .unwrap_or_default();
                // One JSON object per line, as Envoy's JSON formatter writes it.
                out.push('\n');
                out
            }
        }
    }

    fn text(&self, t: &Template, omit_empty: bool) -> String {
        let mut out = String::new();
        for p in &t.0 {
            match p {
                Piece::Text(s) => out.push_str(s),
                Piece::Op(op) => match self.value(op) {
                    Some(Value::Text(s)) => out.push_str(&s),
                    Some(Value::Number(n)) => out.push_str(&n.to_string()),
                    // Envoy writes `-` for a value it does not have.
                    None if !omit_empty => out.push('-'),
                    None => {}
                },
            }
        }
        out
    }

    fn object(
        &self,
        fields: &[(String, JsonValue)],
        omit_empty: bool,
    ) -> serde_json::Map<String, serde_json::Value> {
        let mut map = serde_json::Map::new();
        for (k, v) in fields {
            let value = match v {
                JsonValue::Literal(l) => l.clone(),
                JsonValue::Object(inner) => {
                    serde_json::Value::Object(self.object(inner, omit_empty))
                }
                // One operator alone keeps its type (a number stays a number).
                JsonValue::Template(Template(pieces)) if pieces.len() == 1 => match &pieces[0] {
                    Piece::Op(op) => match self.value(op) {
                        Some(Value::Text(s)) => serde_json::Value::String(s),
                        Some(Value::Number(n)) => serde_json::Value::from(n),
                        None => serde_json::Value::Null,
                    },
                    Piece::Text(s) => serde_json::Value::String(s.clone()),
                },
                JsonValue::Template(t) => serde_json::Value::String(self.text(t, omit_empty)),
            };
            let empty = match &value {
                serde_json::Value::Null => true,
                serde_json::Value::String(s) => s.is_empty(),
                _ => false,
            };
            if !(omit_empty && empty) {
                map.insert(k.clone(), value);
            }
        }
        map
    }

    fn value(&self, op: &Operator) -> Option<Value> {
        let cut = |v: String, max: &Option<usize>| match max {
            Some(n) => v.chars().take(*n).collect(),
            None => v,
        };
        match op {
            Operator::LocalReplyBody => Some(Value::Text(self.body.to_owned())),
            Operator::ResponseCode => Some(Value::Number(u64::from(self.code))),
            Operator::ResponseFlags => Some(Value::Text(self.facts.flags.to_owned())),
            Operator::Protocol => Some(Value::Text(self.facts.protocol.to_owned())),
            Operator::StartTime => Some(Value::Text(rfc3339_millis(
                SystemTime::now() - self.facts.elapsed,
            ))),
            Operator::Duration => Some(Value::Number(self.facts.elapsed.as_millis() as u64)),
            Operator::Req {
                name,
                alternative,
                max_len,
            } => {
                let r = self.facts.request.as_ref()?;
                let v = r
                    .header(name)
                    .or_else(|| alternative.as_deref().and_then(|a| r.header(a)))?;
                Some(Value::Text(cut(v, max_len)))
            }
            Operator::Resp {
                name,
                alternative,
                max_len,
            } => {
                let v = self
                    .headers
                    .get(name.as_str())
                    .or_else(|| alternative.as_deref().and_then(|a| self.headers.get(a)))?
                    .to_str()
                    .ok()?;
                Some(Value::Text(cut(v.to_owned(), max_len)))
            }
        }
    }
}

/// `2026-12-05T10:00:00.123Z`, Envoy's default `START_TIME`.
fn rfc3339_millis(t: SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

#[cfg(test)]
mod tests;
