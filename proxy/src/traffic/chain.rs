//! Filter-chain selection (Envoy FilterChainMatch semantics).
