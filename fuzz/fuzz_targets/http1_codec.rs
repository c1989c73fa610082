//! HTTP/1.1 bytes from apps and upstreams are untrusted: the proxy's own codec must parse
//! any of them into a head, "not complete", or an error, decode any body the same however
//! the bytes arrive, and never panic (`myelin_proxy::fuzzing::http1` checks the invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myelin_proxy::fuzzing::http1(data));
