//! PROXY protocol headers come from whatever connects to a listener that reads them: the
//! listener filter must decide any bytes into a header, "read more", "no header" or an
//! error, consistently however they arrive, and never panic
//! (`myelin_proxy::fuzzing::proxy_protocol` checks the invariants).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| myelin_proxy::fuzzing::proxy_protocol(data));
