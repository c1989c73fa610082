//! xDS resources from a control plane are untrusted input: decoding and converting any bytes
//! as any of the resource types Myelin reads must return a model or rejections, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_xds::convert::{resource, type_url};

const TYPES: [&str; 5] = [
    type_url::LISTENER,
    type_url::ROUTE_CONFIGURATION,
    type_url::CLUSTER,
    type_url::CLUSTER_LOAD_ASSIGNMENT,
    type_url::SECRET,
];

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else { return };
    let url = TYPES[usize::from(which) % TYPES.len()];
    let _ = resource(url, bytes);
});
