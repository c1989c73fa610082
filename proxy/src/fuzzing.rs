//! Entry points for `fuzz/` (feature `fuzzing`): the HTTP/1.1 wire format of the proxy's own
//! client and server, its HTTP/2 server and the PROXY protocol listener filter read bytes
//! from apps, load balancers and upstreams, which are untrusted. Each entry
//! point panics when an invariant breaks, which is what the fuzzer looks for.

use bytes::BytesMut;
use http::Method;

use crate::h1codec::{self, BodyDecoder, BodyFraming, Decoded, WireError};

/// Parses `data` as a request head (the server's side) and as a response head to a GET or
/// a HEAD (the client's side), then decodes what follows as the body the head announced,
/// once in one piece and once fed in pieces of `step` bytes: both must give the same
/// result, a head that is not served or not complete must leave the buffer as it was, and
/// a body never yields more bytes than it was given.
pub fn http1(data: &[u8]) {
    let Some((&control, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(control % 16) + 1;

    let mut buf = BytesMut::from(data);
    match h1codec::parse_request_head(&mut buf) {
        Ok(Some(head)) => {
            assert!(
                data.ends_with(&buf),
                "the head is not a prefix of the input"
            );
            decode_both_ways(head.body, &buf, step);
        }
        Ok(None) | Err(_) => assert_eq!(&buf[..], data, "an unserved head was consumed"),
    }

    let method = if control & 0x80 == 0 {
        Method::GET
    } else {
        Method::HEAD
    };
    let mut buf = BytesMut::from(data);
    match h1codec::parse_response_head(&mut buf, &method) {
        Ok(Some(head)) => {
            assert!(
                data.ends_with(&buf),
                "the head is not a prefix of the input"
            );
            if method == Method::HEAD {
                assert_eq!(head.body, BodyFraming::Empty, "a HEAD response with a body");
            }
            decode_both_ways(head.body, &buf, step);
        }
        Ok(None) => assert_eq!(&buf[..], data, "an incomplete head was consumed"),
        Err(_) => {}
    }

    // Any bytes as a chunked body, and the chunks we encode of them decoding back to them.
    decode_both_ways(BodyFraming::Chunked, data, step);
    let mut wire = BytesMut::new();
    for piece in data.chunks(step) {
        h1codec::encode_chunk(piece, &mut wire);
    }
    h1codec::encode_last_chunk(None, &mut wire);
    let (body, trailers, rest) = decode(BodyFraming::Chunked, &wire, wire.len());
    assert_eq!(
        body.as_deref(),
        Ok(data),
        "encoded chunks decode to something else"
    );
    assert!(trailers == 0 && rest.is_empty());
}

/// What decoding gave: the body (or the error), how many trailer fields, the bytes left.
type Decoding = (Result<Vec<u8>, WireError>, usize, Vec<u8>);

fn decode_both_ways(framing: BodyFraming, wire: &[u8], step: usize) {
    let whole = decode(framing, wire, wire.len().max(1));
    let pieces = decode(framing, wire, step);
    if let Ok(body) = &whole.0 {
        assert!(body.len() <= wire.len(), "a body longer than its bytes");
    }
    // An error may be found at a different point, but not a different outcome.
    match (&whole.0, &pieces.0) {
        (Ok(_), Ok(_)) => assert_eq!(whole, pieces, "the body depends on how bytes arrive"),
        (Err(_), Err(_)) => {}
        _ => panic!("decoding in pieces of {step} changed the outcome: {whole:?} vs {pieces:?}"),
    }
}

/// Decodes `wire` under `framing`, fed `step` bytes at a time; a body that wants more
/// after the last byte is cut short (`Ok` with what it had, as at a connection's close).
fn decode(framing: BodyFraming, wire: &[u8], step: usize) -> Decoding {
    let mut decoder = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let (mut body, mut trailers, mut fed) = (Vec::new(), 0, 0);
    loop {
        match decoder.decode(&mut buf) {
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data frame");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::Trailers(t)) => trailers += t.len(),
            Ok(Decoded::End) => {
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&wire[fed..]);
                return (Ok(body), trailers, rest);
            }
            Ok(Decoded::NeedMore) if fed < wire.len() => {
                let n = step.min(wire.len() - fed);
                buf.extend_from_slice(&wire[fed..fed + n]);
                fed += n;
            }
            Ok(Decoded::NeedMore) => return (Ok(body), trailers, buf.to_vec()),
            Err(e) => return (Err(e), trailers, Vec::new()),
        }
    }
}

/// Feeds `data` as frames after the client preface to the HTTP/2 server (`h2server`), whose
/// handler echoes each request body, then closes the client's side. The server must not
/// panic, must end once its client has gone, and what it writes must be whole frames.
pub fn http2(data: &[u8]) {
    use std::time::Duration;

    use http::Response;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::h2server::{self, Limits, PREFACE};

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let (client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(h2server::serve(
            server,
            // Extended CONNECT on, so `:protocol` is parsed and checked too.
            Limits {
                extended_connect: true,
                ..Limits::default()
            },
            |req: http::Request<crate::body::RequestBody>| async move {
                Response::new(req.into_body())
            },
            h2server::Never,
        ));
        let input = [&PREFACE[..], data].concat();
        let (mut rd, mut wr) = tokio::io::split(client);
        let write = async move {
            let _ = wr.write_all(&input).await;
            let _ = wr.shutdown().await;
            wr
        };
        let read = async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            out
        };
        let (_, out) = tokio::time::timeout(Duration::from_secs(10), async {
            tokio::join!(write, read)
        })
        .await
        .expect("the server ends after its client has gone");
        served.await.expect("the server does not panic");
        // Whole frames: each head's length is followed by that many bytes.
        let mut rest = &out[..];
        while !rest.is_empty() {
            assert!(rest.len() >= 9, "a frame head cut short");
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(rest.len() >= 9 + len, "a frame cut short");
            rest = &rest[9 + len..];
        }
    });
}

/// Decides what `data` (after a control byte choosing the listener's settings) begins with
/// as the PROXY protocol listener filter does, checking its invariants
/// (`proxy_protocol::check_decide`).
pub fn proxy_protocol(data: &[u8]) {
    crate::proxy_protocol::check_decide(data);
}

#[cfg(test)]
mod tests {
    /// The fuzz target's invariants on inputs of each kind it should reach (the seeds a
    /// fuzzer would start from), every control byte.
    #[test]
    fn invariants_hold_on_seed_inputs() {
        let seeds: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello",
            b"POST /x HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: 1\r\n\r\nGET",
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabcdef",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext\r\nabc\r\n0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\n\r\nuntil the close",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            b"\xff\x00 not http at all",
            // Found by the fuzzer: a size line with bare CRs, then CRLFs after the last chunk.
            b"  \r \r0\r\n\r\n\r\n@",
        ];
        for seed in seeds {
            for control in [0u8, 1, 2, 5, 15, 0x80, 0x83, 0xff] {
                let mut input = vec![control];
                input.extend_from_slice(seed);
                super::http1(&input);
            }
        }
    }
}
