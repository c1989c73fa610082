//! HTTP/2 frames from apps are untrusted: the proxy's own server (`h2server`) must answer
//! any bytes after the preface with frames, resets or a GOAWAY, end once the client has
//! gone, and never panic (`myelin_proxy::fuzzing::http2` checks it).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myelin_proxy::fuzzing::http2(data));
