//! Workload certificates over SDS, end to end in process: the in-process control plane
//! serves `Secret`s (a certificate per SPIFFE ID, the `ROOTCA` bundle), the real ADS client
//! subscribes to the names the node's identities need, the store keeps them, and
//! `myelin_xds::sds::follow` installs them into the proxy's `Identities`: a pushed new
//! version rotates the certificate, a bad one is rejected and counted while the last good
//! one stays, a removed one removes the identity. SotW and delta.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use myelin_proxy::tls::ca::{Ca, Issued};
use myelin_proxy::tls::sds::{SdsIdentities, SdsMetrics, SecretRejection, BUNDLE_SECRET};
use myelin_proxy::tls::{CertInfo, Identities, SpiffeId};
use myelin_xds::ads::{type_url, AdsClient, AdsConfig, AdsProtocol};
use myelin_xds::store::ConfigStore;
use myelin_xds::testing::{ControlPlane, WAIT};
use xds_api::pb::envoy::config::core::v3::{data_source::Specifier, DataSource, Node};
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::{
    secret, CertificateValidationContext, Secret, TlsCertificate,
};

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);

fn inline(s: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(Specifier::InlineString(s.into())),
        ..Default::default()
    })
}

fn cert_secret(name: &str, cert_pem: &str, key_pem: &str) -> Secret {
    Secret {
        name: name.into(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(cert_pem),
            private_key: inline(key_pem),
            ..Default::default()
        })),
    }
}

fn issued_secret(i: &Issued) -> Secret {
    cert_secret(&i.id.to_string(), &i.cert_pem(), &i.key_pem())
}

fn bundle(ca: &Ca) -> Secret {
    Secret {
        name: BUNDLE_SECRET.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: inline(ca.cert_pem()),
                ..Default::default()
            },
        )),
    }
}

/// Waits (bounded) until `pred` holds.
async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "never: {what}");
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

fn expires(c: Option<CertInfo>) -> Option<u64> {
    c.map(|c| secs(c.not_after))
}

async fn certificates_follow_the_secrets(protocol: AdsProtocol) {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let web = SpiffeId::new(TD, "shop", "web").unwrap();
    let db = SpiffeId::new(TD, "shop", "db").unwrap();
    let first = ca.issue(&web, HOUR).unwrap();
    let cp = ControlPlane::start().await;
    cp.update(|b| {
        b.set(&web.to_string(), &issued_secret(&first))
            .set(BUNDLE_SECRET, &bundle(&ca))
            // Another node's identity: not asked for, never installed.
            .set(
                &db.to_string(),
                &issued_secret(&ca.issue(&db, HOUR).unwrap()),
            );
    });

    let store = Arc::new(ConfigStore::new());
    let ids = Identities::without_bundle(TD).unwrap();
    let metrics = SdsMetrics::new(&mut prometheus_client::registry::Registry::default());
    let sds = SdsIdentities::new(ids.clone(), BTreeSet::from([web.clone()]), metrics.clone());
    // As the agent does: the names are wanted before the client starts.
    store.want_secrets(sds.secret_names());
    let follow = tokio::spawn(myelin_xds::sds::follow(store.clone(), sds));
    let mut config = AdsConfig::new(
        cp.uri(),
        Node {
            id: "node-a".into(),
            ..Default::default()
        },
    );
    config.protocol = protocol;
    let client = tokio::spawn(AdsClient::new(config, store.clone()).run());

    // SDS asks for exactly the node's identity and the bundle.
    let req = cp
        .wait_for_request(|r| r.type_url == type_url::SECRET && !r.resource_names.is_empty())
        .await;
    let names: BTreeSet<&str> = req.resource_names.iter().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([BUNDLE_SECRET, "spiffe://cluster.local/ns/shop/sa/web"])
    );
    wait_for("web's certificate and the bundle installed", || {
        ids.has_bundle() && ids.certificate(&web).is_some()
    })
    .await;
    assert_eq!(expires(ids.certificate(&web)), Some(secs(first.not_after)));
    assert!(ids.certificate(&db).is_none());

    // A new version: rotation.
    let second = ca.issue(&web, 2 * HOUR).unwrap();
    cp.set(&web.to_string(), &issued_secret(&second));
    wait_for("the rotated certificate", || {
        expires(ids.certificate(&web)) == Some(secs(second.not_after))
    })
    .await;

    // db's certificate under web's name: rejected and counted, the rotated one stays.
    let dbs = ca.issue(&db, HOUR).unwrap();
    cp.set(
        &web.to_string(),
        &cert_secret(&web.to_string(), &dbs.cert_pem(), &dbs.key_pem()),
    );
    wait_for("the mismatched Secret rejected", || {
        metrics.rejected(SecretRejection::NameMismatch) == 1
    })
    .await;
    assert_eq!(expires(ids.certificate(&web)), Some(secs(second.not_after)));
    // The right certificate with another key: rejected too.
    cp.set(
        &web.to_string(),
        &cert_secret(&web.to_string(), &second.cert_pem(), &dbs.key_pem()),
    );
    wait_for("the Secret with the wrong key rejected", || {
        metrics.rejected(SecretRejection::KeyMismatch) == 1
    })
    .await;
    assert_eq!(expires(ids.certificate(&web)), Some(secs(second.not_after)));

    if protocol == AdsProtocol::Delta {
        // Removed by the server: the identity has no certificate any more.
        cp.remove(type_url::SECRET, &web.to_string());
        wait_for("web's certificate removed", || {
            ids.certificate(&web).is_none()
        })
        .await;
    }
    client.abort();
    follow.abort();
}

#[tokio::test]
async fn sotw_certificates_follow_the_secrets() {
    certificates_follow_the_secrets(AdsProtocol::StateOfTheWorld).await;
}

#[tokio::test]
async fn delta_certificates_follow_the_secrets() {
    certificates_follow_the_secrets(AdsProtocol::Delta).await;
}
