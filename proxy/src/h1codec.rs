//! The HTTP/1.1 wire format of the upstream client of our own (`upstream::Pools::own_h1`;
//! see benches/RESULTS.md, "Session of 2026-12-01 20:05": hyper's client costs ~3 us of user
//! time per request, and an exchange in the request's own future took 17-29 % off the CPU
//! per HTTP/2 request).
//!
//! Pure functions over byte buffers, no I/O: the request head and a chunked request body
//! written out, the response head parsed (with `httparse`, as hyper does), how the response
//! body is framed (RFC 9112 section 6.3), and the body decoded incrementally from whatever
//! bytes have arrived (`Content-Length`, chunked with trailers, or up to the close). The I/O
//! is `h1client`.

use std::mem::MaybeUninit;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// Most headers a response head may have (hyper's default is 100).
pub(crate) const MAX_HEADERS: usize = 100;

/// What is wrong with the upstream's bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum WireError {
    #[error("malformed response head: {0}")]
    Head(String),
    #[error("invalid header {0:?}")]
    Header(String),
    #[error("invalid content-length")]
    ContentLength,
    #[error("malformed chunk: {0}")]
    Chunk(&'static str),
}

/// How the request body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body and no framing header (GET, HEAD, ... without a body).
    None,
    Length(u64),
    Chunked,
}

/// Writes the request line and headers to `out`. `headers` must already be end-to-end
/// (hop-by-hop ones stripped by the caller); `host`, when given, goes first as the `Host`
/// field (for a request that came without one: HTTP/2's `:authority`), else `headers` must
/// carry it. Framing headers are written from `framing`, any in `headers` are skipped.
pub(crate) fn encode_request_head(
    method: &Method,
    path_and_query: &str,
    host: Option<&str>,
    headers: &HeaderMap,
    framing: RequestFraming,
    out: &mut BytesMut,
) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.extend_from_slice(if path_and_query.is_empty() {
        b"/"
    } else {
        path_and_query.as_bytes()
    });
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        put_field(out, name, value);
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => put_content_length(n, out),
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends a `content-length` field line (`itoa`: `write!` goes through the formatting
/// machinery, a few hundred instructions for every message with a length).
fn put_content_length(n: u64, out: &mut BytesMut) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one header (or trailer) field line.
fn put_field(out: &mut impl BufMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// Appends one chunk of a chunked body to `out`. An empty `data` writes nothing:
/// an empty chunk is the body's end.
pub(crate) fn encode_chunk(data: &[u8], out: &mut BytesMut) {
    if data.is_empty() {
        return;
    }
    chunk_header(data.len(), out);
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Appends the size line of a chunk of `len` bytes (not zero: that is the body's end).
pub(crate) fn chunk_header(len: usize, out: &mut BytesMut) {
    use std::fmt::Write as _;
    // Writing to a BytesMut cannot fail.
    let _ = write!(out, "{len:x}\r\n");
}

/// Appends the end of a chunked body, with its trailer fields, to `out`.
pub(crate) fn encode_last_chunk(trailers: Option<&HeaderMap>, out: &mut BytesMut) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in trailers.into_iter().flatten() {
        put_field(out, name, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    /// Without `connection`, `keep-alive`, `transfer-encoding` and `content-length` (the
    /// framing is in `body`), except a HEAD response's `content-length`.
    pub(crate) headers: HeaderMap,
    pub(crate) body: BodyFraming,
    /// The connection can carry another request after this response's body.
    pub(crate) keep_alive: bool,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body (HEAD, 1xx, 204, 304, or `content-length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes (never reused).
    UntilClose,
}

/// The headers of a parsed head, by name and where the value is in the head's bytes:
/// most heads have fewer than 16, kept on the stack (an allocation per message else).
type Kept = smallvec::SmallVec<[(HeaderName, std::ops::Range<usize>); 16]>;

/// Parses a response head at the start of `buf`. `Ok(None)`: not complete yet. On success
/// the head's bytes are consumed from `buf`. `request` is the method the response answers
/// (HEAD responses have no body).
pub(crate) fn parse_response_head(
    buf: &mut BytesMut,
    request: &Method,
) -> Result<Option<ResponseHead>, WireError> {
    // Uninitialised slots: zeroing 100 of them cost more than parsing a small head.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(WireError::Head(e.to_string())),
    };
    let code = parsed
        .code
        .ok_or_else(|| WireError::Head("no status".into()))?;
    let status =
        StatusCode::from_u16(code).map_err(|_| WireError::Head(format!("status {code}")))?;
    let http11 = parsed.version == Some(1);
    let mut keep_alive = http11;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    // End-to-end fields by name and where their value sits in the head: the values become
    // slices of the head's bytes below (as hyper does), not an allocation each.
    let mut kept = Kept::new();
    let base = buf.as_ptr() as usize;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Header(h.name.to_owned()))?;
        if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && !http11 {
                    keep_alive = true;
                }
            }
            continue;
        }
        if name == header::CONTENT_LENGTH {
            let n = parse_content_length(h.value)?;
            // Repeated with the same value is allowed (RFC 9110 8.6), different is not.
            if length.is_some_and(|l| l != n) {
                return Err(WireError::ContentLength);
            }
            length = Some(n);
            // A HEAD response's length is the one a GET would get: the client's to see.
            if *request != Method::HEAD {
                continue;
            }
        }
        if name == header::TRANSFER_ENCODING {
            // Only the last coding decides; chunked anywhere but last is not framing.
            for coding in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if coding.is_empty() {
                    continue;
                }
                chunked = coding.eq_ignore_ascii_case(b"chunked");
                other_coding |= !chunked;
            }
            continue;
        }
        if name.as_str() == "keep-alive" {
            continue;
        }
        let start = h.value.as_ptr() as usize - base;
        kept.push((name, start..start + h.value.len()));
    }
    let head = buf.split_to(n).freeze();
    // Room for the `server` header a connection manager writes.
    let mut headers = HeaderMap::with_capacity(kept.len() + 1);
    // Drained, not moved into an iterator: `into_iter` copies the whole inline array
    // (760 bytes) first.
    for (name, range) in kept.drain(..) {
        let value = HeaderValue::from_maybe_shared(head.slice(range))
            .map_err(|_| WireError::Header(name.as_str().to_owned()))?;
        headers.append(name, value);
    }
    let no_body = *request == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let body = if no_body {
        BodyFraming::Empty
    } else if chunked || other_coding {
        // RFC 9112 6.3: transfer-encoding overrides content-length, and a message with both
        // is not reused. A final coding other than chunked: the body runs to the close.
        if length.is_some() {
            keep_alive = false;
        }
        if chunked {
            BodyFraming::Chunked
        } else {
            keep_alive = false;
            BodyFraming::UntilClose
        }
    } else {
        match length {
            Some(0) => BodyFraming::Empty,
            Some(n) => BodyFraming::Length(n),
            None => {
                keep_alive = false;
                BodyFraming::UntilClose
            }
        }
    };
    Ok(Some(ResponseHead {
        status,
        headers,
        body,
        keep_alive,
    }))
}

/// Why the HTTP/1.1 server of our own leaves a request to hyper (`h1server`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unserved(pub(crate) &'static str);

/// A request head the HTTP/1.1 server of our own serves.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) req: http::Request<()>,
    /// The client lets the connection be reused (no `connection: close`).
    pub(crate) keep_alive: bool,
    /// How its body is framed: `Empty`, `Length` or `Chunked`.
    pub(crate) body: BodyFraming,
    /// The client sent `Expect: 100-continue` and waits for `100 Continue` before its
    /// body (only with a body to wait for).
    pub(crate) expect_continue: bool,
}

/// Parses a request head at the start of `buf` for the HTTP/1.1 server of our own, which
/// serves HTTP/1.1 requests with a body framed by one valid `content-length` or by
/// `transfer-encoding: chunked` alone, or none, and without an upgrade, `CONNECT` or an
/// `Expect` other than `100-continue`: for anything else (and any head that does not
/// parse) `Err(Unserved)`, and the connection goes to hyper with `buf` untouched (hyper
/// answers what is wrong with it as it always did). `Ok(None)`: not complete yet. On success the head's bytes are consumed
/// from `buf`. Headers are passed on as sent, hop-by-hop ones included (the proxy strips
/// those).
pub(crate) fn parse_request_head(buf: &mut BytesMut) -> Result<Option<RequestHead>, Unserved> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let n = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Unserved("malformed head")),
    };
    if parsed.version != Some(1) {
        return Err(Unserved("not HTTP/1.1"));
    }
    let method = parsed.method.unwrap_or_default();
    if method == "CONNECT" {
        return Err(Unserved("CONNECT"));
    }
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| Unserved("method"))?;
    let mut keep_alive = true;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut kept = Kept::new();
    let base = buf.as_ptr() as usize;
    for h in parsed.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| Unserved("header"))?;
        if name == header::CONNECTION {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Err(Unserved("upgrade"));
                }
            }
        } else if name == header::CONTENT_LENGTH {
            let n = parse_content_length(h.value).map_err(|_| Unserved("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Unserved("content-length"));
            }
            length = Some(n);
        } else if name == header::TRANSFER_ENCODING {
            // Only `chunked` alone: other codings, or chunked given twice, are hyper's to
            // refuse.
            if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(Unserved("transfer-encoding"));
            }
            chunked = true;
        } else if name == header::UPGRADE {
            return Err(Unserved("upgrade"));
        } else if name == header::EXPECT {
            // The one expectation there is (RFC 9110 10.1.1); others are hyper's to
            // answer. The header goes upstream as sent, as hyper's server passes it on.
            if !h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                return Err(Unserved("expect"));
            }
            expect_continue = true;
        }
        let start = h.value.as_ptr() as usize - base;
        kept.push((name, start..start + h.value.len()));
    }
    let body = match (length, chunked) {
        // Both: a request smuggling pattern (RFC 9112 6.1); hyper refuses it.
        (Some(_), true) => return Err(Unserved("content-length and transfer-encoding")),
        (None, true) => BodyFraming::Chunked,
        (Some(0) | None, false) => BodyFraming::Empty,
        (Some(n), false) => BodyFraming::Length(n),
    };
    let path = parsed.path.unwrap_or_default();
    let path_at = path.as_ptr() as usize - base;
    let path = path_at..path_at + path.len();
    let head = buf.split_to(n).freeze();
    let built = (|| {
        let mut req = http::Request::new(());
        *req.uri_mut() = http::Uri::from_maybe_shared(head.slice(path))
            .map_err(|_| Unserved("request target"))?;
        *req.method_mut() = method;
        let headers = req.headers_mut();
        // Room for what the connection manager adds to most requests (`x-forwarded-proto`,
        // `x-request-id`) without growing the map again.
        headers.reserve(kept.len() + 2);
        // Drained: see `parse_response_head`.
        for (name, range) in kept.drain(..) {
            let value = HeaderValue::from_maybe_shared(head.slice(range))
                .map_err(|_| Unserved("header"))?;
            headers.append(name, value);
        }
        Ok(req)
    })();
    let req = match built {
        Ok(req) => req,
        Err(e) => {
            // Put the head back: hyper reads the connection from its start.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            return Err(e);
        }
    };
    Ok(Some(RequestHead {
        req,
        keep_alive,
        expect_continue: expect_continue && body != BodyFraming::Empty,
        body,
    }))
}

/// How a response body goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body (a response to HEAD, 1xx, 204, 304): the headers as they are.
    None,
    Length(u64),
    Chunked,
}

/// Writes the status line and headers of a response to `out`: the framing header from
/// `framing` (any in `headers` are skipped, except with [`ResponseFraming::None`], where
/// a HEAD response's `content-length` says what a GET would get), and `connection: close`
/// when the connection ends after it. Header names go out lowercase, as Envoy's HTTP/1
/// codec sends them by default.
pub(crate) fn encode_response_head(
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    close: bool,
    out: &mut BytesMut,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && framing != ResponseFraming::None)
        {
            continue;
        }
        put_field(out, name, value);
    }
    match framing {
        ResponseFraming::None => {}
        ResponseFraming::Length(n) => put_content_length(n, out),
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A `content-length` value (digits only, as RFC 9110 8.6 has it).
pub(crate) fn parse_content_length(v: &[u8]) -> Result<u64, WireError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(WireError::ContentLength);
    }
    // At most 19 digits: fits a u64.
    Ok(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// What [`BodyDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    /// The chunked body's trailer fields (non-empty), before `End`.
    Trailers(HeaderMap),
    /// The body is complete.
    End,
    /// More bytes are needed.
    NeedMore,
}

/// Decodes a response body from the connection's read buffer, a piece at a time.
#[derive(Debug)]
pub(crate) struct BodyDecoder {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Length(u64),
    /// Before a chunk-size line.
    ChunkSize,
    /// Inside a chunk's data, this much left.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// After the last chunk: trailer fields up to an empty line.
    Trailers,
    UntilClose,
    Done,
}

/// Longest chunk-size line (size, extensions) or trailer section accepted.
const MAX_LINE: usize = 8 * 1024;

impl BodyDecoder {
    pub(crate) fn new(framing: BodyFraming) -> Self {
        let state = match framing {
            BodyFraming::Empty | BodyFraming::Length(0) => State::Done,
            BodyFraming::Length(n) => State::Length(n),
            BodyFraming::Chunked => State::ChunkSize,
            BodyFraming::UntilClose => State::UntilClose,
        };
        BodyDecoder { state }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The body bytes still to come, when the framing says (a length, or nothing left).
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self.state {
            State::Length(n) => Some(n),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The next piece of the body from `buf` (consumed as decoded).
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, WireError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Length(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::Done
                    } else {
                        State::Length(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::UntilClose => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    return Ok(Decoded::Data(buf.split().freeze()));
                }
                State::ChunkSize => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::NeedMore);
                    };
                    let size = parse_chunk_size(&line)?;
                    self.state = if size == 0 {
                        State::Trailers
                    } else {
                        State::ChunkData(size)
                    };
                }
                State::ChunkData(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::ChunkEnd
                    } else {
                        State::ChunkData(left)
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                State::ChunkEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(WireError::Chunk("no CRLF after the data"));
                    }
                    buf.advance(2);
                    self.state = State::ChunkSize;
                }
                State::Trailers => {
                    // The whole trailer section at once, so a partial one is never parsed.
                    // It ends at the first empty line: no trailers at all is one CRLF.
                    let Some(end) = buf
                        .starts_with(b"\r\n")
                        .then_some(2)
                        .or_else(|| find(buf, b"\r\n\r\n").map(|i| i + 4))
                    else {
                        if buf.len() > MAX_LINE {
                            return Err(WireError::Chunk("trailer section too long"));
                        }
                        return Ok(Decoded::NeedMore);
                    };
                    // As for a section still coming (whole or in pieces, one outcome).
                    if end > MAX_LINE + 1 {
                        return Err(WireError::Chunk("trailer section too long"));
                    }
                    let section = buf.split_to(end);
                    self.state = State::Done;
                    if end == 2 {
                        return Ok(Decoded::End);
                    }
                    return Ok(Decoded::Trailers(parse_trailers(&section)?));
                }
            }
        }
    }
}

/// One CRLF-terminated line (without the CRLF), consumed from `buf`.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, WireError> {
    match find(buf, b"\r\n") {
        // The same limit as for a line still coming: whole or in pieces, one outcome.
        Some(i) if i >= MAX_LINE => Err(WireError::Chunk("chunk-size line too long")),
        Some(i) => {
            let line = buf.split_to(i);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err(WireError::Chunk("chunk-size line too long")),
        None => Ok(None),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The hexadecimal size before any `;` extension.
fn parse_chunk_size(line: &[u8]) -> Result<u64, WireError> {
    // RFC 9112 7.1: hex digits, then only spaces or tabs before an extension: nothing
    // before the digits, no bare CR (a lenient size is how request smuggling starts).
    let size = line.split(|b| *b == b';').next().unwrap_or_default();
    let end = size
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(0, |i| i + 1);
    let size = &size[..end];
    if size.is_empty() || size.len() > 15 {
        return Err(WireError::Chunk("bad size"));
    }
    size.iter().try_fold(0u64, |n, d| {
        let v = (*d as char)
            .to_digit(16)
            .ok_or(WireError::Chunk("bad size"))?;
        Ok(n * 16 + u64::from(v))
    })
}

fn parse_trailers(section: &[u8]) -> Result<HeaderMap, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, fields))) => {
            let mut map = HeaderMap::with_capacity(fields.len());
            for f in fields {
                let name = HeaderName::from_bytes(f.name.as_bytes())
                    .map_err(|_| WireError::Header(f.name.to_owned()))?;
                let value = HeaderValue::from_bytes(f.value)
                    .map_err(|_| WireError::Header(f.name.to_owned()))?;
                map.append(name, value);
            }
            Ok(map)
        }
        _ => Err(WireError::Chunk("malformed trailers")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &str, method: Method) -> Result<Option<ResponseHead>, WireError> {
        parse_response_head(&mut BytesMut::from(bytes), &method)
    }

    #[test]
    fn request_head_has_the_framing_we_choose() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("svc"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        let mut out = BytesMut::new();
        encode_request_head(
            &Method::POST,
            "/p?q=1",
            None,
            &h,
            RequestFraming::Length(5),
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nhost: svc\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 5\r\n\r\n"
        );
        let mut out = BytesMut::new();
        encode_request_head(&Method::GET, "", None, &h, RequestFraming::None, &mut out);
        assert!(out.starts_with(b"GET / HTTP/1.1\r\n"));
        assert!(!String::from_utf8_lossy(&out).contains("content-length"));
        // A request without `Host` (from HTTP/2): the authority given goes first.
        h.remove(header::HOST);
        let mut out = BytesMut::new();
        let host = Some("svc.ns:8080");
        encode_request_head(&Method::GET, "/x", host, &h, RequestFraming::None, &mut out);
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "GET /x HTTP/1.1\r\nhost: svc.ns:8080\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let framing = |s: &str, m: Method| {
            let h = head(s, m).unwrap().unwrap();
            (h.body, h.keep_alive)
        };
        use BodyFraming::*;
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::GET),
            (Length(3), true)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", Method::HEAD),
            (Empty, true)
        );
        // The length a GET would get stays for the client of a HEAD; a GET's is framing.
        let with_length = |m: Method| {
            let h = head("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\n", m);
            h.unwrap()
                .unwrap()
                .headers
                .get(header::CONTENT_LENGTH)
                .cloned()
        };
        assert_eq!(with_length(Method::HEAD).unwrap(), "3");
        assert_eq!(with_length(Method::GET), None);
        assert_eq!(
            framing("HTTP/1.1 204 No Content\r\n\r\n", Method::GET),
            (Empty, true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET
            ),
            (Empty, true)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET
            ),
            (Chunked, true)
        );
        // Both: chunked wins, the connection is not reused.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET
            ),
            (Chunked, false)
        );
        // Chunked not last: up to the close.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                Method::GET
            ),
            (UntilClose, false)
        );
        assert_eq!(
            framing("HTTP/1.1 200 OK\r\n\r\n", Method::GET),
            (UntilClose, false)
        );
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\n",
                Method::GET
            ),
            (Length(1), false)
        );
        assert_eq!(
            framing("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n", Method::GET),
            (Length(1), false)
        );
        assert_eq!(
            framing(
                "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\n",
                Method::GET
            ),
            (Length(1), true)
        );
        // Same content-length twice is one; two different ones are an error.
        assert_eq!(
            framing(
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n",
                Method::GET
            ),
            (Length(2), true)
        );
        for bad in ["1, 2", "-1", "+1", "0x1", "", "99999999999999999999"] {
            let s = format!("HTTP/1.1 200 OK\r\ncontent-length: {bad}\r\n\r\n");
            assert_eq!(
                head(&s, Method::GET).unwrap_err(),
                WireError::ContentLength,
                "{bad}"
            );
        }
    }

    #[test]
    fn a_partial_head_waits_and_consumes_nothing() {
        let full = "HTTP/1.1 200 OK\r\nx-a: b\r\ncontent-length: 2\r\n\r\nhi";
        for cut in 0..full.len() - 2 {
            let mut buf = BytesMut::from(&full[..cut]);
            assert!(
                parse_response_head(&mut buf, &Method::GET)
                    .unwrap()
                    .is_none(),
                "{cut}"
            );
            assert_eq!(buf.len(), cut);
        }
        let mut buf = BytesMut::from(full);
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(h.headers["x-a"], "b");
        assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
        assert_eq!(&buf[..], b"hi");
        assert!(head("HTTP/1.1 abc OK\r\n\r\n", Method::GET).is_err());
    }

    #[test]
    fn header_values_are_kept_in_order_and_byte_for_byte() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nX-A: 1\r\nconnection: keep-alive\r\nx-b:  two words \r\n\
               set-cookie: a=1\r\nSet-Cookie: b=2\r\nx-latin: caf\xe9\r\nx-empty:\r\n\
               content-length: 0\r\n\r\nnext"[..],
        );
        let h = parse_response_head(&mut buf, &Method::GET)
            .unwrap()
            .unwrap();
        assert_eq!(h.headers["x-a"], "1");
        assert_eq!(h.headers["x-b"], "two words");
        let cookies: Vec<_> = h.headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.headers["x-latin"].as_bytes(), b"caf\xe9");
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(h.headers.len(), 6);
        assert!(!h.headers.contains_key(header::CONNECTION));
        assert_eq!(h.body, BodyFraming::Empty);
        assert_eq!(&buf[..], b"next");
        // A control byte in a value is the upstream's error, not a header we pass on.
        assert!(head("HTTP/1.1 200 OK\r\nx-a: a\x01b\r\n\r\n", Method::GET).is_err());
    }

    #[test]
    fn plain_requests_are_ours_the_rest_is_hyper_s() {
        let mut buf = BytesMut::from(
            &b"GET http://shop/a?b=1 HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\nx-a: 2\r\n\
               content-length: 0\r\n\r\nGET /next"[..],
        );
        let RequestHead {
            req,
            keep_alive,
            body,
            expect_continue,
        } = parse_request_head(&mut buf).unwrap().unwrap();
        assert!(keep_alive && !expect_continue);
        assert_eq!(body, BodyFraming::Empty);
        assert_eq!(req.method(), Method::GET);
        assert_eq!(req.uri().authority().unwrap(), "shop");
        assert_eq!(req.uri().path_and_query().unwrap(), "/a?b=1");
        assert_eq!(req.version(), http::Version::HTTP_11);
        let xa: Vec<_> = req.headers().get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(req.headers()[header::CONTENT_LENGTH], "0");
        assert_eq!(&buf[..], b"GET /next");
        // Incomplete: nothing consumed.
        assert!(parse_request_head(&mut buf).unwrap().is_none());
        assert_eq!(&buf[..], b"GET /next");

        for (head, method, keep_alive, body, expect_continue) in [
            (
                "DELETE /x HTTP/1.1\r\nConnection: Close\r\n\r\n",
                Method::DELETE,
                false,
                BodyFraming::Empty,
                false,
            ),
            (
                "POST /x HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
                Method::POST,
                true,
                BodyFraming::Length(3),
                false,
            ),
            (
                "PUT /x HTTP/1.1\r\ntransfer-encoding: Chunked \r\n\r\n3\r\nabc",
                Method::PUT,
                true,
                BodyFraming::Chunked,
                false,
            ),
            (
                "PUT /x HTTP/1.1\r\nExpect: 100-Continue\r\ncontent-length: 3\r\n\r\n",
                Method::PUT,
                true,
                BodyFraming::Length(3),
                true,
            ),
            // Nothing to wait for: no `100 Continue` either.
            (
                "PUT /x HTTP/1.1\r\nexpect: 100-continue\r\n\r\n",
                Method::PUT,
                true,
                BodyFraming::Empty,
                false,
            ),
        ] {
            let mut buf = BytesMut::from(head);
            let parsed = parse_request_head(&mut buf).unwrap().unwrap();
            assert_eq!(
                (
                    parsed.req.method(),
                    parsed.keep_alive,
                    parsed.body,
                    parsed.expect_continue
                ),
                (&method, keep_alive, body, expect_continue),
                "{head:?}"
            );
            // The body's bytes stay for the body's decoder.
            assert!(
                head.ends_with(std::str::from_utf8(&buf).unwrap()),
                "{head:?}"
            );
        }

        for (head, why) in [
            ("POST /x HTTP/1.1\r\ncontent-length: x\r\n\r\n", "content-length"),
            ("POST /x HTTP/1.1\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n", "content-length"),
            ("POST /x HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n", "transfer-encoding"),
            ("POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n", "transfer-encoding"),
            ("POST /x HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n", "content-length and transfer-encoding"),
            ("GET /ws HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", "upgrade"),
            ("GET /ws HTTP/1.1\r\nupgrade: h2c\r\n\r\n", "upgrade"),
            ("CONNECT a:443 HTTP/1.1\r\n\r\n", "CONNECT"),
            ("PUT /x HTTP/1.1\r\nexpect: 200-ok\r\n\r\n", "expect"),
            ("GET / HTTP/1.0\r\n\r\n", "not HTTP/1.1"),
            ("GET / HTTP/1.1\r\nbad header\r\n\r\n", "malformed head"),
            ("GET /a\x7fb HTTP/1.1\r\n\r\n", "malformed head"),
        ] {
            let mut buf = BytesMut::from(head);
            assert_eq!(parse_request_head(&mut buf).unwrap_err(), Unserved(why), "{head:?}");
            // Untouched: hyper reads the request from its start.
            assert_eq!(&buf[..], head.as_bytes(), "{head:?}");
        }
    }

    #[test]
    fn response_heads_carry_our_framing() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        h.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let head = |status: u16, framing, close| {
            let mut out = BytesMut::new();
            let status = StatusCode::from_u16(status).unwrap();
            encode_response_head(status, &h, framing, close, &mut out);
            String::from_utf8(out.to_vec()).unwrap()
        };
        assert_eq!(
            head(200, ResponseFraming::Length(5), false),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\n"
        );
        assert_eq!(
            head(503, ResponseFraming::Chunked, true),
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n\
             transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        // A HEAD response keeps the length a GET would have.
        assert_eq!(
            head(200, ResponseFraming::None, false),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 99\r\n\r\n"
        );
        assert!(head(599, ResponseFraming::Length(0), false).starts_with("HTTP/1.1 599 \r\n"));
    }

    /// The data, the trailers, the bytes left in the buffer.
    type Body = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Decodes `wire` fed in pieces of `step` bytes.
    fn decode_in_steps(framing: BodyFraming, wire: &[u8], step: usize) -> Result<Body, WireError> {
        let mut d = BodyDecoder::new(framing);
        let mut buf = BytesMut::new();
        let (mut data, mut trailers) = (Vec::new(), None);
        let mut fed = 0;
        loop {
            match d.decode(&mut buf)? {
                Decoded::Data(b) => {
                    assert!(!b.is_empty());
                    data.extend_from_slice(&b);
                }
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore => {
                    assert!(
                        fed < wire.len(),
                        "needs more after all {} bytes",
                        wire.len()
                    );
                    let n = step.min(wire.len() - fed);
                    buf.extend_from_slice(&wire[fed..fed + n]);
                    fed += n;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_however_the_bytes_arrive() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\ngrpc-status: 0\r\nx-t: 1\r\n\r\nNEXT";
        for step in 1..wire.len() {
            let (data, trailers, left) = decode_in_steps(BodyFraming::Chunked, wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
            let t = trailers.unwrap();
            assert_eq!(t["grpc-status"], "0");
            assert_eq!(t["x-t"], "1");
            // The next response's bytes stay in the buffer (some may not have been fed).
            assert!(b"NEXT".starts_with(&left), "step {step}: {left:?}");
        }
        let (data, trailers, _) =
            decode_in_steps(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((data.as_slice(), trailers), (&b"abc"[..], None));
    }

    #[test]
    fn chunks_we_encode_decode_to_the_same_body() {
        let mut wire = BytesMut::new();
        encode_chunk(b"hello", &mut wire);
        encode_chunk(b"", &mut wire);
        encode_chunk(&[b'x'; 300], &mut wire);
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("0"));
        encode_last_chunk(Some(&t), &mut wire);
        assert!(wire.starts_with(b"5\r\nhello\r\n12c\r\n"));
        let (data, trailers, left) = decode_in_steps(BodyFraming::Chunked, &wire, 7).unwrap();
        assert_eq!(&data[..5], b"hello");
        assert_eq!(data.len(), 305);
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert!(left.is_empty());
        let mut end = BytesMut::new();
        encode_last_chunk(None, &mut end);
        assert_eq!(&end[..], b"0\r\n\r\n");
    }

    #[test]
    fn overlong_lines_fail_whole_or_in_pieces() {
        let long_ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE));
        let long_trailer = format!("0\r\nx-t: {}\r\n\r\n", "t".repeat(MAX_LINE));
        for wire in [long_ext, long_trailer] {
            for step in [1, 7, 4096, wire.len()] {
                let got = decode_in_steps(BodyFraming::Chunked, wire.as_bytes(), step);
                assert!(got.is_err(), "step {step}: {got:?}");
            }
        }
        // Just under the limit: fine either way.
        let ext = format!("5;{}\r\nhello\r\n0\r\n\r\n", "e".repeat(MAX_LINE - 3));
        for step in [1, 4096, ext.len()] {
            let (data, _, _) = decode_in_steps(BodyFraming::Chunked, ext.as_bytes(), step).unwrap();
            assert_eq!(data, b"hello");
        }
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"x\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"10000000000000000\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5\r \r\nhello\r\n0\r\n\r\n",
        ] {
            assert!(
                decode_in_steps(BodyFraming::Chunked, wire, 64).is_err(),
                "{}",
                String::from_utf8_lossy(wire)
            );
        }
        // Spaces or tabs before an extension are allowed; the empty trailer section is one
        // CRLF, and what follows it is the next message's.
        let (data, _, left) = decode_in_steps(
            BodyFraming::Chunked,
            b"5 \t;x=y\r\nhello\r\n0\r\n\r\n\r\nGET",
            64,
        )
        .unwrap();
        assert_eq!((&data[..], &left[..]), (&b"hello"[..], &b"\r\nGET"[..]));
        let long = vec![b'1'; MAX_LINE + 1];
        assert!(decode_in_steps(BodyFraming::Chunked, &long, MAX_LINE + 1).is_err());
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        for step in 1..8 {
            let (data, _, left) =
                decode_in_steps(BodyFraming::Length(5), b"helloHTTP/1.1", step).unwrap();
            assert_eq!(data, b"hello");
            assert!(b"HTTP/1.1".starts_with(&left));
        }
        let mut d = BodyDecoder::new(BodyFraming::Empty);
        assert!(d.is_done());
        assert_eq!(d.decode(&mut BytesMut::from("x")).unwrap(), Decoded::End);
        let mut d = BodyDecoder::new(BodyFraming::UntilClose);
        let mut buf = BytesMut::from("abc");
        assert_eq!(
            d.decode(&mut buf).unwrap(),
            Decoded::Data(Bytes::from("abc"))
        );
        assert_eq!(d.decode(&mut buf).unwrap(), Decoded::NeedMore);
    }
}
