//! The test bed's suites: nodes and pods in network namespaces and cgroups, the real agent
//! and real clients, one module per capability.
//!
//! One test binary rather than one per file: each file compiled and linked the test bed, the
//! proxy and the xDS crate's clients again, which cost CI a release link of minutes per
//! suite. Every node is its own network namespace (its own addresses and ports), so suites
//! running side by side share nothing but the CPUs; test names keep their module
//! (`cargo test -p myelin-testbed --test suites l7::`).

mod support;

mod demo;
mod l7;
mod metrics;
mod mtls;
mod resilience;
mod spine;
mod testbed;
mod xds;
