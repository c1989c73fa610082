//! The library side of Myelin's benchmarks: what the benchmarks `myelin-xds-scale`,
//! `myelin-l7-bench` and `myelin-handshake-bench` run (so that their smoke tests run the same
//! code at a small scale), the external tools they drive (wrk's report, where tools live),
//! and memory measurement.
//! The macro benchmark `myelin-bench` (test-bed node, nginx, wrk) is a binary of its own.

pub mod handshake;
pub mod l7;
pub mod memory;
pub mod run;
pub mod tools;
pub mod wrk;
pub mod xds_scale;
