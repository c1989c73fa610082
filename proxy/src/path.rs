//! The connection manager's path normalization (`normalize_path`, `merge_slashes`,
//! `path_with_escaped_slashes_action`): what Envoy's
//! `ConnectionManagerUtility::maybeNormalizePath` does to a request's path before routing,
//! as a pure function from the configuration and the `:path` to a [`PathVerdict`].
//!
//! In Envoy's order, on the path only (the query, from the first `?`, is kept as it came):
//! 1. escaped slashes (`PathUtil::unescapeSlashes`): `%2F`/`%2f` become `/` and `%5C`/`%5c`
//!    become `\`; with `REJECT_REQUEST` a path that had any is refused, with
//!    `UNESCAPE_AND_REDIRECT` it is redirected to (after the steps below);
//! 2. `normalize_path` (`PathUtil::canonicalPath`): Chromium's `url::CanonicalizePath`, the
//!    version Envoy builds (with the percent-decoding of unreserved characters that
//!    Chromium dropped in 2023): see [`canonicalize`];
//! 3. `merge_slashes` (`PathUtil::mergeSlashes`): runs of `/` become one.
//!
//! The common path needs none of it, so each step scans before it allocates.

use std::borrow::Cow;

use crate::model::listener::{EscapedSlashes, PathNormalization};

/// What the connection manager does with a request after normalizing its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathVerdict {
    /// The path is already normal: route and forward the request as it came.
    Keep,
    /// Route and forward the request with this path (and the original query).
    Rewrite(String),
    /// Answer with a redirect to this path and query (`UNESCAPE_AND_REDIRECT`).
    Redirect(String),
    /// Answer 400: the path cannot be normalized, or has escaped slashes that
    /// `REJECT_REQUEST` refuses.
    Reject,
}

/// Normalizes `path_and_query` (a request's `:path`) as the connection manager is
/// configured to.
pub(crate) fn normalize(cfg: &PathNormalization, path_and_query: &str) -> PathVerdict {
    // An asterisk-form target (`OPTIONS *`) has no path to normalize; origin-form paths
    // always start with `/`.
    if !path_and_query.starts_with('/') {
        return PathVerdict::Keep;
    }
    let (path, query) =
        path_and_query.split_at(path_and_query.find('?').unwrap_or(path_and_query.len()));
    let mut path = Cow::Borrowed(path);
    let mut redirect = false;
    if cfg.escaped_slashes != EscapedSlashes::KeepUnchanged {
        if let Some(unescaped) = unescape_slashes(&path) {
            match cfg.escaped_slashes {
                EscapedSlashes::RejectRequest => return PathVerdict::Reject,
                EscapedSlashes::UnescapeAndRedirect => redirect = true,
                EscapedSlashes::UnescapeAndForward | EscapedSlashes::KeepUnchanged => {}
            }
            path = Cow::Owned(unescaped);
        }
    }
    if cfg.normalize {
        match canonicalize(&path) {
            Err(Invalid) => return PathVerdict::Reject,
            Ok(Some(canonical)) => path = Cow::Owned(canonical),
            Ok(None) => {}
        }
    }
    if cfg.merge_slashes {
        if let Some(merged) = merge_slashes(&path) {
            path = Cow::Owned(merged);
        }
    }
    match path {
        Cow::Borrowed(_) => PathVerdict::Keep,
        Cow::Owned(mut p) => {
            p.push_str(query);
            if redirect {
                PathVerdict::Redirect(p)
            } else {
                PathVerdict::Rewrite(p)
            }
        }
    }
}

/// Envoy's `PathUtil::unescapeSlashes`: `%2F`, `%2f` to `/` and `%5C`, `%5c` to `\`, left to
/// right; `None` when there are none.
fn unescape_slashes(path: &str) -> Option<String> {
    let b = path.as_bytes();
    let escaped_slash = |i: usize| -> Option<u8> {
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(b'2'), Some(b'F' | b'f')) => Some(b'/'),
            (Some(b'5'), Some(b'C' | b'c')) => Some(b'\\'),
            _ => None,
        }
    };
    let first = memchr_all(b, b'%').find(|&i| escaped_slash(i).is_some())?;
    let mut out = Vec::with_capacity(b.len());
    out.extend_from_slice(&b[..first]);
    let mut i = first;
    while i < b.len() {
        if b[i] == b'%' {
            if let Some(c) = escaped_slash(i) {
                out.push(c);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    // Only ASCII sequences were replaced by ASCII bytes: still UTF-8.
    String::from_utf8(out).ok()
}

/// The positions of `byte` in `b`.
fn memchr_all(b: &[u8], byte: u8) -> impl Iterator<Item = usize> + '_ {
    b.iter()
        .enumerate()
        .filter_map(move |(i, &c)| (c == byte).then_some(i))
}

/// Envoy's `PathUtil::mergeSlashes`: a path with `//` becomes its non-empty segments joined
/// by `/`, with a leading and a trailing `/` when it had them (so `//` stays `//`, as in
/// Envoy); `None` when there is no `//`.
fn merge_slashes(path: &str) -> Option<String> {
    if !path.contains("//") {
        return None;
    }
    let mut out = String::with_capacity(path.len());
    if path.starts_with('/') {
        out.push('/');
    }
    for (n, segment) in path.split('/').filter(|s| !s.is_empty()).enumerate() {
        if n > 0 {
            out.push('/');
        }
        out.push_str(segment);
    }
    if path.ends_with('/') {
        out.push('/');
    }
    Some(out)
}

/// A path `normalize_path` refuses: it has a NUL, raw or escaped (`%00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Invalid;

// Chromium's character classes for paths (`kPathCharLookup` in url/url_canon_path.cc, the
// table Envoy builds, "designed to match exactly what IE does").
/// Copied as it is, escaped or not.
const PASS: u8 = 0;
/// Needs a look in [`canonicalize`]'s loop.
const SPECIAL: u8 = 1;
/// Percent-encoded in the output.
const ESCAPE: u8 = 2 | SPECIAL;
/// Decoded in the output when it comes percent-encoded (the unreserved characters of RFC 3986
/// section 2.3, but `.`, which only dot segments decode).
const UNESCAPE: u8 = 4;
/// Not allowed: the path is invalid.
const INVALID: u8 = 8 | SPECIAL;

const PATH_CLASS: [u8; 256] = {
    let mut t = [ESCAPE; 256];
    let mut c = 0;
    while c < 128 {
        t[c] = match c as u8 {
            0 => INVALID,
            1..=0x1f | b' ' | b'"' | b'#' | b'%' | b'<' | b'>' | b'?' | b'\\' | b'^' | b'`' => {
                ESCAPE
            }
            b'{' | b'|' | b'}' | 0x7f => ESCAPE,
            b'.' => SPECIAL,
            b'-' | b'_' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' => UNESCAPE,
            _ => PASS,
        };
        c += 1;
    }
    t
};

/// Chromium's `IsDot`: the length of a `.` or `%2e`/`%2E` at `i`, else 0.
fn dot_len(p: &[u8], i: usize) -> usize {
    match p.get(i) {
        Some(b'.') => 1,
        Some(b'%') if p.get(i + 1) == Some(&b'2') && matches!(p.get(i + 2), Some(b'e' | b'E')) => 3,
        _ => 0,
    }
}

fn is_slash(c: u8) -> bool {
    c == b'/' || c == b'\\'
}

/// What a dot after a slash is (Chromium's `ClassifyAfterDot`), with how many more input
/// bytes it takes.
enum Dot {
    /// Part of a name (`.well-known`).
    Name,
    /// `.`: the current directory.
    Current(usize),
    /// `..`: up one.
    Up(usize),
}

fn classify_after_dot(p: &[u8], after: usize) -> Dot {
    match p.get(after) {
        None => return Dot::Current(0),
        Some(&c) if is_slash(c) => return Dot::Current(1),
        Some(_) => {}
    }
    let second = dot_len(p, after);
    if second > 0 {
        match p.get(after + second) {
            None => return Dot::Up(second),
            Some(&c) if is_slash(c) => return Dot::Up(second + 1),
            Some(_) => {}
        }
    }
    Dot::Name
}

/// Chromium's `DecodeEscaped`: the byte of a `%XX` at `i`.
fn decode_escaped(p: &[u8], i: usize) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    match (p.get(i), p.get(i + 1), p.get(i + 2)) {
        (Some(b'%'), Some(&h), Some(&l)) => Some((hex(h)? * 16 + hex(l)?) as u8),
        _ => None,
    }
}

/// Whether [`canonicalize`] would change `p`: anything but plain characters, and dots that
/// follow a slash as a whole segment.
fn needs_canonicalizing(p: &[u8]) -> bool {
    if p.first().is_none_or(|&c| c != b'/') {
        return true;
    }
    // A `.` right after a slash that is a whole `.` or `..` segment.
    let dot_segment = |dot: usize| {
        p.get(dot) == Some(&b'.') && !matches!(classify_after_dot(p, dot + 1), Dot::Name)
    };
    p.iter().enumerate().any(|(i, &c)| match c {
        b'/' => dot_segment(i + 1),
        b'.' => false,
        _ => PATH_CLASS[usize::from(c)] & SPECIAL != 0,
    })
}

/// Envoy's `normalize_path`: Chromium's `url::CanonicalizePath` on the path. `None` when the
/// path is already canonical.
///
/// - dot segments (`.`, `..`, also as `%2e`, either case) are removed (RFC 3986 section
///   5.2.4), never above the root;
/// - `\` is a slash;
/// - percent-encoded unreserved characters (`A-Z a-z 0-9 - _ ~`) are decoded, other escapes
///   are kept as they came (hex case too: `%2f` stays `%2f`); a `%` not followed by two hex
///   digits is kept, but one that would become an escape once an escape after it is decoded
///   (`%%30%30`) is written `%25`;
/// - characters a URL may not hold (controls, space, `"`, `<`, `>`, `^`, `` ` ``, `{`, `|`,
///   `}`, DEL, non-ASCII bytes) are percent-encoded;
/// - a NUL, raw or `%00`, makes the path [`Invalid`].
///
/// Runs of slashes are kept (that is `merge_slashes`). Envoy's tests for it
/// (test/common/http/path_utility_test.cc) are among the cases below.
fn canonicalize(path: &str) -> Result<Option<String>, Invalid> {
    let p = path.as_bytes();
    if !needs_canonicalizing(p) {
        return Ok(None);
    }
    let out = canonical(p)?;
    if out == p {
        return Ok(None);
    }
    // Every byte written is ASCII: non-ASCII input bytes are percent-encoded.
    String::from_utf8(out).map(Some).map_err(|_| Invalid)
}

/// The work of [`canonicalize`], always done.
fn canonical(p: &[u8]) -> Result<Vec<u8>, Invalid> {
    let mut out: Vec<u8> = Vec::with_capacity(p.len() + 8);
    if p.first().is_none_or(|&c| !is_slash(c)) {
        out.push(b'/');
    }
    let mut valid = true;
    // Where the last `%` that began no escape sequence went in `out`.
    let mut bare_percent: Option<usize> = None;
    let mut i = 0;
    while i < p.len() {
        let c = p[i];
        let class = PATH_CLASS[c as usize];
        if class & SPECIAL == 0 {
            out.push(c);
            i += 1;
            continue;
        }
        let dot = dot_len(p, i);
        if dot > 0 {
            if out.last() == Some(&b'/') {
                match classify_after_dot(p, i + dot) {
                    Dot::Name => {
                        out.push(b'.');
                        i += dot;
                    }
                    Dot::Current(more) => i += dot + more,
                    Dot::Up(more) => {
                        back_up_to_previous_slash(&mut out);
                        i += dot + more;
                    }
                }
            } else {
                out.push(b'.');
                i += dot;
            }
        } else if c == b'\\' {
            out.push(b'/');
            i += 1;
        } else if c == b'%' {
            match decode_escaped(p, i) {
                Some(v) if PATH_CLASS[v as usize] & UNESCAPE != 0 => {
                    out.push(v);
                    if let Some(at) = bare_percent {
                        if at + 3 >= out.len() {
                            check_nested_escape(p, i + 3, at, &mut out);
                        }
                    }
                }
                Some(v) => {
                    // Kept as it came, hex case and all.
                    out.extend_from_slice(&p[i..i + 3]);
                    if PATH_CLASS[v as usize] & INVALID == INVALID {
                        valid = false;
                    }
                }
                None => {
                    bare_percent = Some(out.len());
                    out.push(b'%');
                    i += 1;
                    continue;
                }
            }
            i += 3;
        } else {
            if class == INVALID {
                valid = false;
            }
            push_escaped(&mut out, c);
            i += 1;
        }
    }
    if !valid {
        return Err(Invalid);
    }
    Ok(out)
}

/// Chromium's `BackUpToPreviousSlash`: `out` ends with a slash; drop the segment before it
/// (never the root).
fn back_up_to_previous_slash(out: &mut Vec<u8>) {
    let last = out.len() - 1;
    if last == 0 {
        return;
    }
    let mut i = last - 1;
    while i > 0 && out[i] != b'/' {
        i -= 1;
    }
    out.truncate(i + 1);
}

/// Chromium's `CheckForNestedEscapes`: a byte was just decoded within two bytes after a bare
/// `%` (at `percent` in `out`); if that `%` and what follows it now read as an escape
/// sequence, write the `%` as `%25` so that decoding the result again cannot change it.
fn check_nested_escape(p: &[u8], next: usize, percent: usize, out: &mut Vec<u8>) {
    let len = out.len();
    let decoded = out[len - 1];
    // `out` ends with `%c`: look at the next input byte too.
    let append_next = percent + 2 == len;
    if append_next {
        match p.get(next) {
            Some(&c) if c < 0x80 => out.push(c),
            _ => return,
        }
    }
    if decode_escaped(out, percent).is_some() {
        if !append_next {
            out.push(out[percent + 1]);
        }
        out[percent + 1] = b'2';
        out[percent + 2] = b'5';
        out.push(decoded);
    } else if append_next {
        out.truncate(len);
    }
}

fn push_escaped(out: &mut Vec<u8>, c: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'%', HEX[usize::from(c >> 4)], HEX[usize::from(c & 0xf)]]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(
        normalize: bool,
        merge_slashes: bool,
        escaped_slashes: EscapedSlashes,
    ) -> PathNormalization {
        PathNormalization {
            normalize,
            merge_slashes,
            escaped_slashes,
        }
    }

    /// `normalize_path` alone: (input, output); `None` for "unchanged", `Err` for "rejected".
    #[test]
    fn canonicalize_table() {
        let ok = |s: &'static str| Ok(Some(s));
        let same = Ok(None);
        let cases: &[(&str, Result<Option<&str>, Invalid>)] = &[
            // Already normal: nothing to do.
            ("/", same),
            ("/xyz", same),
            ("/x/y/z", same),
            ("/a/b/", same),
            ("/A/B/C", same), // no case normalization
            ("/.well-known/x", same),
            ("/a/..b/c", same),
            ("/a/.b./c", same),
            ("/a/b..", same),
            ("/a/b.", same),
            ("/a//b", same), // slashes are merge_slashes' business
            ("/!$&'()*+,;=:@[]", same),
            // Dot segments (RFC 3986 section 5.2.4).
            ("/a/b/../c", ok("/a/c")),
            ("/a/b/./c", ok("/a/b/c")),
            ("/a/./b/../c", ok("/a/c")),
            ("/a/b/../../../../c", ok("/c")),
            ("/..", ok("/")),
            ("/.", ok("/")),
            ("/../a", ok("/a")),
            ("/../a/b", ok("/a/b")),
            ("/./a/b", ok("/a/b")),
            ("/a/b/..", ok("/a/")),
            ("/a/b/.", ok("/a/b/")),
            ("/a/b/../", ok("/a/")),
            ("/a/../b//c", ok("/b//c")),
            ("/a//../b", ok("/a/b")), // `..` drops the empty segment
            // Escaped dots are dots, in either case and mixed with plain ones.
            ("/a/b/%2e%2e/c", ok("/a/c")),
            ("/a/b/%2E%2E/c", ok("/a/c")),
            ("/a/b/%2E./c", ok("/a/c")),
            ("/a/b/.%2e/c", ok("/a/c")),
            ("/a/b/%2E/c", ok("/a/b/c")),
            ("/a%2eb", ok("/a.b")), // a dot in a name is decoded too
            // Backslashes are slashes.
            ("/a/..\\c", ok("/c")),
            ("/a\\b", ok("/a/b")),
            ("\\a", ok("/a")),
            // Unreserved characters are decoded, others kept as they came.
            ("/%41", ok("/A")),
            ("/%61%7A%7e%2D%5f%30", ok("/az~-_0")),
            ("/%2f", same),
            ("/a/%2F%2f/c", same),
            ("/%5c%25", same),
            ("/%c0%af", same),
            ("/%3F%23", same),
            ("/%2x", same), // not an escape: kept
            ("/a%", same),  // nor this
            ("/a%4", same), // nor this
            ("/%%41", ok("/%A")),
            // A bare `%` that would turn into an escape once its neighbour is decoded.
            ("/%%30%30", ok("/%2500")),
            ("/%%300", ok("/%2500")),
            ("/%3%30", ok("/%2530")),
            // Characters a URL may not hold are percent-encoded (uppercase hex).
            ("/a b", ok("/a%20b")),
            ("/\"{|}^`<>", ok("/%22%7B%7C%7D%5E%60%3C%3E")),
            ("/caf\u{e9}", ok("/caf%C3%A9")),
            ("/\u{7f}", ok("/%7F")),
            // NUL, raw or escaped, cannot be normalized (Envoy's `InvalidPaths`).
            ("/xyz/.%00../abc", Err(Invalid)),
            ("/xyz/%00.%00./abc", Err(Invalid)),
            ("/xyz/AAAAA%%0000/abc", Err(Invalid)),
            ("/a\0b", Err(Invalid)),
        ];
        for (input, want) in cases {
            let got = canonicalize(input);
            let got = got.as_ref().map(|o| o.as_deref()).map_err(|e| *e);
            assert_eq!(got, *want, "canonicalize({input:?})");
        }
    }

    /// The scan that spares the common path an allocation never skips a path that
    /// canonicalizing would change; and a canonical path stays as it is.
    #[test]
    fn scan_agrees_with_the_canonicalizer() {
        let alphabet: &[u8] = b"/.\\%2eEAa-0f";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..50_000 {
            let len = rng.usize(1..10);
            let mut p = vec![b'/'];
            p.extend((0..len).map(|_| alphabet[rng.usize(..alphabet.len())]));
            // `%00` is invalid, and the alphabet can spell it.
            let Ok(canon) = canonical(&p) else { continue };
            if !needs_canonicalizing(&p) {
                assert_eq!(canon, p, "skipped {:?}", String::from_utf8_lossy(&p));
            }
            assert_eq!(
                canonical(&canon),
                Ok(canon.clone()),
                "twice {:?}",
                String::from_utf8_lossy(&p)
            );
        }
        for common in [
            "/",
            "/api/v1/users/42",
            "/static/app.min.js",
            "/.well-known/x",
            "/a_b-c~d",
        ] {
            assert!(!needs_canonicalizing(common.as_bytes()), "{common}");
        }
    }

    #[test]
    fn merge_slashes_table() {
        // Envoy's `PathUtilityTest.MergeSlashes`, on the path part.
        let cases: &[(&str, Option<&str>)] = &[
            ("/a", None),
            ("/a/b/c/", None),
            ("//a/b/c", Some("/a/b/c")),
            ("/a//b/c", Some("/a/b/c")),
            ("/a//b/c/", Some("/a/b/c/")),
            ("/a/b/c//", Some("/a/b/c/")),
            ("/a///b/c", Some("/a/b/c")),
            ("/a////b/c", Some("/a/b/c")),
            ("//a/", Some("/a/")),
            // Envoy keeps a path of only slashes as `//`.
            ("//", Some("//")),
            ("///", Some("//")),
        ];
        for (input, want) in cases {
            assert_eq!(
                merge_slashes(input).as_deref(),
                *want,
                "merge_slashes({input:?})"
            );
        }
    }

    #[test]
    fn unescape_slashes_table() {
        // Envoy's `PathUtilityTest.UnescapeSlashes`.
        let cases: &[(&str, Option<&str>)] = &[
            ("/", None),
            ("%2f%2F", Some("//")),
            ("/a%2Fb%2fc/", Some("/a/b/c/")),
            ("%2b", None),
            ("/a/b/c", None),
            ("%2f%2F%5c%5C", Some("//\\\\")),
            ("/a%%2Fb", Some("/a%/b")),
            ("/a%252Fb", None),
            ("/a%2", None),
            ("/%2f\u{e9}", Some("//\u{e9}")),
        ];
        for (input, want) in cases {
            assert_eq!(
                unescape_slashes(input).as_deref(),
                *want,
                "unescape_slashes({input:?})"
            );
        }
    }

    /// The whole step, as the connection manager applies it to a `:path`.
    #[test]
    fn normalize_table() {
        use EscapedSlashes::{
            KeepUnchanged as Keep, RejectRequest as Reject, UnescapeAndForward as Forward,
            UnescapeAndRedirect as Redirect,
        };
        use PathVerdict as V;
        let off = cfg(false, false, Keep);
        let norm = cfg(true, false, Keep);
        let merge = cfg(false, true, Keep);
        let both = cfg(true, true, Keep);
        let rw = |s: &str| V::Rewrite(s.to_owned());
        let redirect = |s: &str| V::Redirect(s.to_owned());
        let cases: Vec<(PathNormalization, &str, PathVerdict)> = vec![
            // All off: nothing, whatever the path.
            (off, "/a/../b//c", V::Keep),
            (off, "/a%2Fb", V::Keep),
            // normalize_path.
            (norm, "/a/b", V::Keep),
            (norm, "/a/../b", rw("/b")),
            (norm, "/a/./b/../c", rw("/a/c")),
            (norm, "/%41", rw("/A")),
            (norm, "/%2e%2e/a", rw("/a")),
            (norm, "/a/%2f/..", rw("/a/")), // `%2f` is a name, not a slash
            (norm, "/a%00", V::Reject),
            // The query is never touched, by any step.
            (norm, "/a?b=../c", V::Keep),
            (norm, "/x/../a?b=../c&d=%41", rw("/a?b=../c&d=%41")),
            (norm, "/a?", V::Keep),
            (both, "//x/../a//b?c=//d/../e", rw("/a/b?c=//d/../e")),
            (merge, "/a//b?", rw("/a/b?")),
            (merge, "//a/?b", rw("/a/?b")),
            (merge, "/a/b?a=///c", V::Keep),
            // merge_slashes, after normalize_path.
            (merge, "//a//b", rw("/a/b")),
            (merge, "/a/../b", V::Keep),
            (both, "/a/../b//c", rw("/b/c")),
            (both, "/a/..//b", rw("/b")),
            (both, "/a%2F%2Fb", V::Keep),
            // Escaped slashes: kept by default (and by normalize_path).
            (norm, "/a%2Fb", V::Keep),
            (cfg(false, false, Reject), "/a%2Fb", V::Reject),
            (cfg(false, false, Reject), "/a%5cb", V::Reject),
            (cfg(false, false, Reject), "/a/b?c=%2F", V::Keep), // the query's are fine
            (cfg(false, false, Reject), "/a/b", V::Keep),
            (cfg(false, false, Forward), "/a%2Fb", rw("/a/b")),
            (cfg(false, false, Forward), "/a%5Cb", rw("/a\\b")),
            (cfg(true, false, Forward), "/a%5Cb", rw("/a/b")), // then `\` is a slash
            (cfg(true, false, Forward), "/a/b%2F..%2Fc", rw("/a/c")),
            (cfg(true, true, Forward), "/a%2F%2Fb", rw("/a/b")),
            (
                cfg(false, false, Redirect),
                "/a%2fb?x=1",
                redirect("/a/b?x=1"),
            ),
            (cfg(false, false, Redirect), "/a/b", V::Keep),
            // The redirect goes to the fully normalized path...
            // (the `..` drops the empty segment between the unescaped slashes).
            (
                cfg(true, true, Redirect),
                "/a%2F%2F../b//c",
                redirect("/a/b/c"),
            ),
            // ...but other normalization alone does not redirect.
            (cfg(true, true, Redirect), "/a/../b//c", rw("/b/c")),
            // Not an origin-form path: left alone.
            (both, "*", V::Keep),
        ];
        for (c, input, want) in cases {
            assert_eq!(normalize(&c, input), want, "normalize({c:?}, {input:?})");
        }
    }
}
