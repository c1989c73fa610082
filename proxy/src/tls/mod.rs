//! Workload identity and mutual TLS between nodes: SPIFFE IDs ([`SpiffeId`]), the
//! embedded CA of standalone mode ([`ca::Ca`]), the per-node certificate store
//! ([`Identities`]) and the peer verification the HBONE client and server use
//! ([`verify`]). rustls with ring, TLS 1.3 only, ALPN `h2`.

pub mod ca;
mod id;
pub mod rotate;
pub mod store;
pub mod verify;

pub use id::{SpiffeId, SpiffeIdError};
pub use store::{sni_for, Identities, IdentityError};
pub use verify::{spiffe_id_of, RejectReason};

#[cfg(test)]
mod tests;
