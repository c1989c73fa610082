//! The Myelin node agent: configuration, wiring of the kernel programs, the proxy and the xDS
//! client, the startup self-test, the admin API, and the standalone demo.
//!
//! `main.rs` is a thin CLI over this library.

pub mod admin;
pub mod agent;
pub mod config;
pub mod demo;
pub mod hugetext;
pub mod inbound;
pub mod metrics;
pub mod mtls;
pub mod selftest;
pub mod xds;

/// Exit status for a bad configuration (sysexits' EX_USAGE... EX_DATAERR is 65; Envoy and
/// ztunnel-style tools use 64 for "usage/config": we follow the contract).
pub const EXIT_CONFIG: i32 = 64;
