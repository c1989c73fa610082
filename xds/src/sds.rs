//! Workload certificates from SDS: keeps the proxy's identities
//! ([`myelin_proxy::tls::sds::SdsIdentities`]) in step with the Secrets of the
//! [`ConfigStore`] (from ADS or the bootstrap's static secrets), as [`crate::feed`] does
//! for the traffic config. The naming convention (a Secret per SPIFFE ID, `ROOTCA` for the
//! bundle) and the checks are the proxy's; this is the plumbing.

use std::sync::Arc;

use myelin_proxy::tls::sds::SdsIdentities;

use crate::store::ConfigStore;

/// Subscribes the store to the Secrets `sds` needs (its identities and the bundle; call
/// [`ConfigStore::want_secrets`] before the ADS client starts, so its first SDS request
/// names them), then applies the current Secrets and every later change, for as long as
/// the task runs.
pub async fn follow(store: Arc<ConfigStore>, mut sds: SdsIdentities) {
    store.want_secrets(sds.secret_names());
    let mut changes = store.subscribe();
    loop {
        changes.borrow_and_update();
        let snap = store.snapshot();
        sds.apply(|name| snap.secret(name).cloned());
        if changes.changed().await.is_err() {
            return;
        }
    }
}
