//! Myelin's xDS side: the ADS client (state-of-the-world and delta), the resource cache and
//! the conversion of Envoy v3 resources into the proxy's model (`myelin_proxy::model`), plus
//! the Envoy-bootstrap file source.
//!
//! Empty on purpose: the spine issue only reserves the crate (and the `static_resources`
//! section of the config file, which the agent rejects by name until this crate reads it).
//! The xDS issue fills it; it will depend on `myelin-proxy`, never the other way round.
