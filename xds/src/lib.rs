//! Myelin's xDS side: the conversion of Envoy v3 resources (types from `xds-api`) into the
//! proxy's model (`myelin_proxy::model`), resource by resource with field-path rejections
//! (`convert`), Envoy bootstrap files through the same conversion (`bootstrap`), the config
//! store that keeps the last good resources as atomic snapshots (`store`), the tasks that
//! follow it into the proxy's traffic config (`feed`) and workload certificates (`sds`), and
//! the ADS client, state-of-the-world and delta (`ads`), with an in-process control plane for
//! tests behind the `testing` feature.
//!
//! Dependency direction: this crate depends on `myelin-proxy`, never the other way round.

#![forbid(unsafe_code)]

pub mod ads;
pub mod bootstrap;
pub mod convert;
pub mod feed;
pub mod sds;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
