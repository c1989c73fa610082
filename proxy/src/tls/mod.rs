//! Workload identity and mutual TLS between nodes: SPIFFE IDs ([`SpiffeId`]), the
//! embedded CA of standalone mode ([`ca::Ca`]), the per-node certificate store
//! ([`Identities`]), fed by the CA's rotation ([`rotate`]) or by SDS Secrets ([`sds`]),
//! and the peer verification the HBONE client and server use ([`verify`]). rustls with
//! ring; between nodes TLS 1.3 only, ALPN `h2`. [`origin`]: TLS to upstream hosts outside
//! the mesh (a cluster's `UpstreamTlsContext`), TLS 1.2 or 1.3.

pub mod ca;
mod id;
mod material;
pub mod origin;
pub mod params;
pub mod probe;
pub mod rotate;
pub mod sds;
pub mod store;
pub mod terminate;
pub mod verify;

pub use id::{SpiffeId, SpiffeIdError};
pub use store::{sni_for, sni_for_any, CertInfo, Identities, IdentityError};
pub use verify::{spiffe_id_of, RejectReason};

#[cfg(test)]
mod tests;
