//! HPACK encoding of the server's header blocks (RFC 7541); decoding stays `loona-hpack`'s.
//!
//! Why our own encoder: `loona-hpack`'s looks every field up by comparing its bytes with
//! each of the 61 static entries and then the dynamic ones. That was ~2.5k of the ~43k
//! instructions of a routed h2c request (callgrind, RESULTS "an HTTP/2 server of our own")
//! for the ~8 fields of a response. Here a name's static index is one `match`, `:status`
//! has its own path, and the dynamic table (a handful of entries in practice) is searched
//! by length first.
//!
//! What goes into the dynamic table follows the `h2` crate's choice: every field, except
//! values that are sensitive (`HeaderValue::set_sensitive`, sent "never indexed"), those of
//! names whose values rarely repeat (content-length, etag, location, cookies, ...), and
//! fields too large for a quarter of the table. Strings are sent without Huffman coding
//! (as `loona-hpack` did): it saves bytes on the wire, not CPU.

use std::collections::VecDeque;

use bytes::{BufMut, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::StatusCode;

/// RFC 7541 4.1: an entry's size is its name and value plus 32.
const ENTRY_OVERHEAD: usize = 32;
/// The first index past the static table.
const DYNAMIC_BASE: usize = 62;
/// `content-length` in the static table.
pub(super) const CONTENT_LENGTH: usize = 28;

pub(crate) struct Encoder {
    /// Newest first: the entry at position `i` has index `DYNAMIC_BASE + i`.
    table: VecDeque<Entry>,
    /// The table's size by RFC 7541's measure.
    size: usize,
    /// The size the table may have: the peer's SETTINGS_HEADER_TABLE_SIZE, at most `limit`.
    max: usize,
    /// The most this encoder uses, whatever the peer allows.
    limit: usize,
    /// Size updates the next block starts with: the smallest size since the last block and
    /// the size now (RFC 7541 4.2).
    update: Option<(usize, usize)>,
}

struct Entry {
    /// The name then the value, in one allocation.
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }

    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

impl Encoder {
    /// An encoder whose table may hold up to `limit` (the protocol's initial size is 4096).
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            table: VecDeque::new(),
            size: 0,
            max: limit,
            limit,
            update: None,
        }
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE: the table shrinks now, and the next block
    /// announces the change.
    pub(crate) fn set_max_table_size(&mut self, peer: usize) {
        let size = peer.min(self.limit);
        self.update = Some(match self.update {
            Some((low, _)) => (low.min(size), size),
            None => (size, size),
        });
        self.max = size;
        self.evict_for(0);
    }

    /// What a header block starts with: the size updates owed, if any.
    pub(crate) fn begin_block(&mut self, out: &mut BytesMut) {
        if let Some((low, now)) = self.update.take() {
            if low < now {
                integer(out, low, 5, 0x20);
            }
            integer(out, now, 5, 0x20);
        }
    }

    pub(crate) fn status(&mut self, out: &mut BytesMut, status: StatusCode) {
        let index = match status.as_u16() {
            200 => 8,
            204 => 9,
            206 => 10,
            304 => 11,
            400 => 12,
            404 => 13,
            500 => 14,
            _ => {
                // Literal without indexing, the name `:status` (8) from the static table.
                integer(out, 8, 4, 0x00);
                string(out, status.as_str().as_bytes());
                return;
            }
        };
        integer(out, index, 7, 0x80);
    }

    /// A field with a static name index, never put in the table (content-length).
    pub(crate) fn unindexed(&mut self, out: &mut BytesMut, name_index: usize, value: &[u8]) {
        integer(out, name_index, 4, 0x00);
        string(out, value);
    }

    pub(crate) fn field(&mut self, out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
        let sensitive = value.is_sensitive();
        let n = name.as_str().as_bytes();
        let v = value.as_bytes();
        let indexable = !sensitive
            && !skips_value_index(name)
            && n.len() + v.len() + ENTRY_OVERHEAD <= self.max / 4;
        // The dynamic table: the whole field, or else its name.
        let mut name_index = None;
        for (i, e) in self.table.iter().enumerate() {
            if e.name_len != n.len() || e.name() != n {
                continue;
            }
            if indexable && e.value() == v {
                integer(out, DYNAMIC_BASE + i, 7, 0x80);
                return;
            }
            name_index.get_or_insert(DYNAMIC_BASE + i);
        }
        let name_index = static_name_index(name).or(name_index);
        // Literal with incremental indexing (01), never indexed (0001) or without
        // indexing (0000); the name by index, or as a string after an index of 0.
        let (mask, prefix) = if indexable {
            (0x40, 6)
        } else if sensitive {
            (0x10, 4)
        } else {
            (0x00, 4)
        };
        match name_index {
            Some(i) => integer(out, i, prefix, mask),
            None => {
                out.put_u8(mask);
                string(out, n);
            }
        }
        string(out, v);
        if indexable {
            self.insert(n, v);
        }
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        self.evict_for(size);
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.table.push_front(Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        });
        self.size += size;
    }

    /// Drops the oldest entries until `room` more fits.
    fn evict_for(&mut self, room: usize) {
        while self.size + room > self.max {
            let Some(e) = self.table.pop_back() else {
                break;
            };
            self.size -= e.size();
        }
    }
}

/// RFC 7541 5.1: `value` with an N-bit prefix, the bits above it from `mask`.
pub(super) fn integer(out: &mut BytesMut, value: usize, prefix: u8, mask: u8) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.put_u8(mask | value as u8);
        return;
    }
    out.put_u8(mask | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.put_u8((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.put_u8(rest as u8);
}

/// RFC 7541 5.2, without Huffman coding.
fn string(out: &mut BytesMut, s: &[u8]) {
    integer(out, s.len(), 7, 0x00);
    out.put_slice(s);
}

/// Names whose values rarely repeat: indexing them would only churn the table (the `h2`
/// crate's list).
fn skips_value_index(name: &HeaderName) -> bool {
    [
        header::AGE,
        header::AUTHORIZATION,
        header::CONTENT_LENGTH,
        header::ETAG,
        header::IF_MODIFIED_SINCE,
        header::IF_NONE_MATCH,
        header::LOCATION,
        header::COOKIE,
        header::SET_COOKIE,
    ]
    .contains(name)
}

/// The first static table entry with this name (RFC 7541 Appendix A).
fn static_name_index(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        ":authority" => 1,
        ":method" => 2,
        ":path" => 4,
        ":scheme" => 6,
        ":status" => 8,
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => CONTENT_LENGTH,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `block` with `loona-hpack`'s decoder (the one the server reads requests with)
    /// into (name, value) pairs.
    fn decode(d: &mut loona_hpack::Decoder<'_>, block: &[u8]) -> Vec<(String, String)> {
        let mut got = Vec::new();
        d.decode_with_cb(block, |n, v| {
            got.push((
                String::from_utf8(n.into_owned()).unwrap(),
                String::from_utf8(v.into_owned()).unwrap(),
            ))
        })
        .expect("a block the decoder takes");
        got
    }

    fn block(e: &mut Encoder, status: u16, fields: &[(&str, &str)]) -> BytesMut {
        let mut out = BytesMut::new();
        e.begin_block(&mut out);
        e.status(&mut out, StatusCode::from_u16(status).unwrap());
        for (n, v) in fields {
            let mut value = HeaderValue::from_str(v).unwrap();
            if *n == "authorization" {
                value.set_sensitive(true);
            }
            e.field(
                &mut out,
                &HeaderName::from_bytes(n.as_bytes()).unwrap(),
                &value,
            );
        }
        out
    }

    fn expect(status: u16, fields: &[(&str, &str)]) -> Vec<(String, String)> {
        std::iter::once((":status".to_owned(), status.to_string()))
            .chain(fields.iter().map(|(n, v)| (n.to_string(), v.to_string())))
            .collect()
    }

    #[test]
    fn integers_across_prefix_boundaries() {
        for (value, prefix, want) in [
            (10usize, 5u8, vec![0x0a]),
            (1337, 5, vec![0x1f, 0x9a, 0x0a]),
            (31, 5, vec![0x1f, 0x00]),
            (127, 7, vec![0x7f, 0x00]),
            (28, 4, vec![0x0f, 0x0d]),
        ] {
            let mut out = BytesMut::new();
            integer(&mut out, value, prefix, 0);
            assert_eq!(&out[..], &want[..], "{value} with a {prefix}-bit prefix");
        }
    }

    #[test]
    fn repeated_fields_become_one_byte_and_decode_the_same() {
        let mut e = Encoder::new(4096);
        let mut d = loona_hpack::Decoder::new();
        let fields = [
            ("content-type", "text/plain"),
            ("server", "backend"),
            ("x-served-by", "pod-a"),
            ("etag", "\"abc\""),
        ];
        let first = block(&mut e, 200, &fields);
        assert_eq!(decode(&mut d, &first), expect(200, &fields));
        let second = block(&mut e, 200, &fields);
        assert_eq!(decode(&mut d, &second), expect(200, &fields));
        // :status 200 and three fields from the tables: one byte each; the etag (never
        // indexed by value) by its static name (two bytes) and its literal value.
        assert_eq!(second.len(), 4 + 2 + 1 + 5, "{second:?}");
        // A new value for a known name: the name comes from the dynamic table.
        let third = block(&mut e, 503, &[("x-served-by", "pod-b")]);
        assert_eq!(
            decode(&mut d, &third),
            expect(503, &[("x-served-by", "pod-b")])
        );
    }

    #[test]
    fn sensitive_values_are_never_indexed() {
        let mut e = Encoder::new(4096);
        let mut d = loona_hpack::Decoder::new();
        let fields = [("authorization", "Bearer secret")];
        for _ in 0..2 {
            let b = block(&mut e, 200, &fields);
            // 0001 prefix and the static name index 23 (15 + 8).
            assert_eq!(&b[1..3], &[0x1f, 0x08]);
            assert_eq!(decode(&mut d, &b), expect(200, &fields));
        }
        assert!(e.table.is_empty());
    }

    #[test]
    fn table_size_changes_evict_and_are_announced() {
        let mut e = Encoder::new(4096);
        let mut d = loona_hpack::Decoder::new();
        let many: Vec<(String, String)> = (0..200)
            .map(|i| (format!("x-h{}", i % 7), format!("value-{i}")))
            .collect();
        let fields: Vec<(&str, &str)> =
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        // More than the table holds: the oldest entries go, and the decoder agrees.
        for chunk in fields.chunks(30) {
            let b = block(&mut e, 200, chunk);
            assert_eq!(decode(&mut d, &b), expect(200, chunk));
            assert!(e.size <= 4096);
        }
        // The peer shrinks the table to 0 and grows it again before the next block: both
        // sizes are announced, the smallest first, and the table is empty.
        e.set_max_table_size(0);
        e.set_max_table_size(1024);
        assert!(e.table.is_empty());
        let b = block(&mut e, 200, &fields[..10]);
        assert_eq!(&b[..3], &[0x20, 0x3f, 0xe1]);
        assert_eq!(decode(&mut d, &b), expect(200, &fields[..10]));
        // Above our limit, the limit.
        e.set_max_table_size(1 << 20);
        let b = block(&mut e, 200, &fields[10..20]);
        assert_eq!(&b[..3], &[0x3f, 0xe1, 0x1f]);
        assert_eq!(decode(&mut d, &b), expect(200, &fields[10..20]));
    }
}
