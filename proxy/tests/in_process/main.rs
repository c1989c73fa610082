//! The proxy in process, end to end: real servers, the real proxy and real client sockets
//! on loopback (`e2e`), and HBONE's source side between two loopback "nodes" (`hbone`).
//!
//! One test binary for both (each linked the proxy again in release); `access_log.rs`
//! (it installs the process's tracing subscriber) and `allocations.rs` (its counting
//! allocator is the process's) stay their own.

#[path = "../support/mod.rs"]
mod support;

mod e2e;
mod hbone;
