//! The library side of Myelin's benchmarks: what the in-process benchmark `myelin-xds-scale`
//! runs (so that its smoke test runs the same code at a small scale), and memory measurement.
//! The macro benchmark `myelin-bench` (test-bed node, nginx, wrk) is a binary of its own.

pub mod memory;
pub mod xds_scale;
