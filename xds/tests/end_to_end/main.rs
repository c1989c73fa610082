//! The xDS side end to end, in process: the real ADS client against the in-process control
//! plane over gRPC on loopback, the store, `feed`, and the proxy serving real sockets, one
//! module per capability.
//!
//! One test binary rather than one per file: each file linked on its own compiled `support`
//! and the clients' generic code again, and the release build of 24 binaries took more than
//! half of CI's time. Bound ports are unique across the modules (they share one process now);
//! the captured listeners' destination ports (`support::vip`) are per node and may repeat.
//! `routed_path.rs` stays its own binary: its counting allocator is the process's.

mod support;

mod ads;
mod auth_filters;
mod compressor;
mod conn_manager;
mod connection_life;
mod downstream_tls;
mod ext_authz;
mod ext_proc;
mod global_rate_limit;
mod h2spec;
mod hbone_eds;
mod health_checks;
mod http_filters;
mod jwt;
mod l7;
mod local_rate_limit;
mod mirror;
mod proxy_protocol;
mod rbac;
mod sds;
mod stateful_session;
mod store;
mod timeouts;
mod traffic;
mod upstream_tls;
