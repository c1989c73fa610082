//! Secrets to identities: what is installed, what is rejected (and that the last good
//! certificate stays), removal, and the bundle.

use std::time::{Duration, SystemTime};

use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::model::secret::{TlsCertificate, ValidationContext};
use crate::tls::ca::{serial_of, Ca, Issued};
use crate::tls::sni_for;

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "shop", sa).unwrap()
}

fn cert_secret(name: &str, cert_pem: &str, key_pem: &str) -> Arc<Secret> {
    Arc::new(Secret {
        name: name.into(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: DataSource::Inline(cert_pem.as_bytes().to_vec()),
            private_key: DataSource::Inline(key_pem.as_bytes().to_vec()),
        }),
    })
}

fn issued_secret(issued: &Issued) -> Arc<Secret> {
    cert_secret(
        &issued.id.to_string(),
        &issued.cert_pem(),
        &issued.key_pem(),
    )
}

fn bundle_secret(ca: &Ca) -> Arc<Secret> {
    Arc::new(Secret {
        name: BUNDLE_SECRET.into(),
        kind: SecretKind::ValidationContext(ValidationContext {
            trusted_ca: Some(DataSource::Inline(ca.cert_pem().as_bytes().to_vec())),
            match_subject_alt_names: vec![],
        }),
    })
}

/// The Secrets a control plane holds.
#[derive(Default)]
struct Secrets(HashMap<String, Arc<Secret>>);

impl Secrets {
    fn set(&mut self, s: &Arc<Secret>) {
        self.0.insert(s.name.clone(), s.clone());
    }
    fn lookup(&self) -> impl Fn(&str) -> Option<Arc<Secret>> + '_ {
        |name| self.0.get(name).cloned()
    }
}

fn sds(wanted: &[&SpiffeId]) -> (SdsIdentities, SdsMetrics) {
    let ids = Identities::without_bundle(TD).unwrap();
    let metrics = SdsMetrics::new(&mut Registry::default());
    let set = wanted.iter().map(|i| (*i).clone()).collect();
    (SdsIdentities::new(ids, set, metrics.clone()), metrics)
}

/// The serial of the certificate `server` presents for `expected` to a client holding
/// `client`'s certificate for `source`; `Err` if the handshake fails.
async fn presented(
    server: &Identities,
    client: &Identities,
    source: &SpiffeId,
    expected: &SpiffeId,
) -> Result<Vec<u8>, String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config());
    let connector = TlsConnector::from(Arc::new(
        client
            .client_config(source, vec![expected.clone()])
            .unwrap(),
    ));
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(sni_for(expected), b));
    let c = c.map_err(|e| e.to_string())?;
    s.map_err(|e| e.to_string())?;
    let (_, conn) = c.get_ref();
    Ok(serial_of(&conn.peer_certificates().unwrap()[0]).unwrap())
}

#[test]
fn names_to_subscribe_are_the_identities_and_the_bundle() {
    let (sds, _) = sds(&[&id("web"), &id("db")]);
    let names: Vec<String> = sds.secret_names().into_iter().collect();
    assert_eq!(
        names,
        [
            "ROOTCA",
            "spiffe://cluster.local/ns/shop/sa/db",
            "spiffe://cluster.local/ns/shop/sa/web"
        ]
    );
}

#[test]
fn good_rotated_bad_and_removed_certificates() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("web"), id("db"));
    let (mut sds, metrics) = sds(&[&web]);
    let ids = sds.identities().clone();
    let mut cp = Secrets::default();

    // Good: installed with the certificate's validity.
    let first = ca.issue(&web, HOUR).unwrap();
    cp.set(&issued_secret(&first));
    cp.set(&bundle_secret(&ca));
    sds.apply(cp.lookup());
    assert!(ids.has_bundle());
    let installed = ids.certificate(&web).expect("installed");
    // X.509 keeps whole seconds.
    let secs = |t: SystemTime| t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(secs(installed.not_after), secs(first.not_after));
    assert_eq!(metrics.applied(), 2);

    // The same Secret again: nothing to do.
    sds.apply(cp.lookup());
    assert_eq!(metrics.applied(), 2);

    // A new version: rotation.
    let second = ca.issue(&web, 2 * HOUR).unwrap();
    cp.set(&issued_secret(&second));
    sds.apply(cp.lookup());
    let rotated = ids.certificate(&web).unwrap();
    assert_eq!(secs(rotated.not_after), secs(second.not_after));
    assert_eq!(metrics.applied(), 3);

    // Bad versions, each rejected with its reason; the rotated certificate stays.
    let other = ca.issue(&db, HOUR).unwrap();
    let expired = {
        let now = SystemTime::now();
        ca.issue_between(&web, now - 2 * HOUR, now - HOUR).unwrap()
    };
    let name = web.to_string();
    let bad = [
        // db's certificate under web's name.
        (
            cert_secret(&name, &other.cert_pem(), &other.key_pem()),
            SecretRejection::NameMismatch,
        ),
        // web's certificate with db's key.
        (
            cert_secret(&name, &second.cert_pem(), &other.key_pem()),
            SecretRejection::KeyMismatch,
        ),
        (
            cert_secret(&name, &second.cert_pem(), "not a key"),
            SecretRejection::BadKey,
        ),
        (
            cert_secret(&name, "not a certificate", &second.key_pem()),
            SecretRejection::BadCertificate,
        ),
        (issued_secret(&expired), SecretRejection::Expired),
        (
            Arc::new(Secret {
                name: name.clone(),
                kind: bundle_secret(&ca).kind.clone(),
            }),
            SecretRejection::WrongKind,
        ),
        (
            Arc::new(Secret {
                name: name.clone(),
                kind: SecretKind::TlsCertificate(TlsCertificate {
                    certificate_chain: DataSource::Filename("/nonexistent/cert.pem".into()),
                    private_key: DataSource::Inline(second.key_pem().into_bytes()),
                }),
            }),
            SecretRejection::Unreadable,
        ),
    ];
    for (secret, reason) in bad {
        cp.set(&secret);
        sds.apply(cp.lookup());
        assert_eq!(metrics.rejected(reason), 1, "{reason:?}");
        assert_eq!(
            ids.certificate(&web),
            Some(rotated),
            "{reason:?} replaced the last good certificate"
        );
        // Counted once per version, not per snapshot.
        sds.apply(cp.lookup());
        assert_eq!(metrics.rejected(reason), 1, "{reason:?} counted again");
    }
    assert_eq!(metrics.applied(), 3);

    // Secrets for identities not on this node are not installed.
    cp.set(&issued_secret(&other));
    sds.apply(cp.lookup());
    assert!(ids.certificate(&db).is_none());

    // Removed: the identity goes.
    cp.0.remove(&name);
    sds.apply(cp.lookup());
    assert!(ids.certificate(&web).is_none());
}

#[test]
fn certificate_and_key_from_files() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let web = id("web");
    let issued = ca.issue(&web, HOUR).unwrap();
    let dir = std::env::temp_dir().join(format!("myelin-sds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("web.pem"), dir.join("web.key"));
    std::fs::write(&cert, issued.cert_pem()).unwrap();
    std::fs::write(&key, issued.key_pem()).unwrap();
    let (mut sds, metrics) = sds(&[&web]);
    let secret = Arc::new(Secret {
        name: web.to_string(),
        kind: SecretKind::TlsCertificate(TlsCertificate {
            certificate_chain: DataSource::Filename(cert),
            private_key: DataSource::Filename(key),
        }),
    });
    sds.apply(|n| (n == secret.name).then(|| secret.clone()));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(sds.identities().certificate(&web).is_some());
    assert_eq!(metrics.applied(), 1);
}

/// Handshakes follow the Secrets: no bundle refuses every peer; the bundle and the
/// certificates arrive and the server presents the SDS certificate; a rotated Secret is
/// presented from the next handshake on; a new bundle (another CA) changes whom the node
/// trusts, and a bad one keeps the last.
#[tokio::test]
async fn handshakes_use_the_sds_certificates_and_bundle() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("web"), id("db"));
    let (mut sds, metrics) = sds(&[&db]);
    let node = sds.identities().clone();
    // A client as another node would be: a certificate for web from the CA.
    let client = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    client.insert(&ca.issue(&web, HOUR).unwrap()).unwrap();

    let mut cp = Secrets::default();
    let first = ca.issue(&db, HOUR).unwrap();
    cp.set(&issued_secret(&first));
    sds.apply(cp.lookup());
    // A certificate but no bundle yet: the client is refused.
    assert!(presented(&node, &client, &web, &db).await.is_err());

    cp.set(&bundle_secret(&ca));
    sds.apply(cp.lookup());
    assert_eq!(
        presented(&node, &client, &web, &db).await.unwrap(),
        first.serial()
    );

    let second = ca.issue(&db, HOUR).unwrap();
    assert_ne!(second.serial(), first.serial());
    cp.set(&issued_secret(&second));
    sds.apply(cp.lookup());
    assert_eq!(
        presented(&node, &client, &web, &db).await.unwrap(),
        second.serial()
    );

    // A bundle that is not PEM: rejected, the last one stays.
    cp.set(&Arc::new(Secret {
        name: BUNDLE_SECRET.into(),
        kind: SecretKind::ValidationContext(ValidationContext {
            trusted_ca: Some(DataSource::Inline(b"garbage".to_vec())),
            match_subject_alt_names: vec![],
        }),
    }));
    sds.apply(cp.lookup());
    assert_eq!(metrics.rejected(SecretRejection::BadBundle), 1);
    assert!(presented(&node, &client, &web, &db).await.is_ok());

    // Another CA's bundle: web's certificate is no longer trusted.
    let other = Ca::generate(TD, 24 * HOUR).unwrap();
    cp.set(&bundle_secret(&other));
    sds.apply(cp.lookup());
    assert!(presented(&node, &client, &web, &db).await.is_err());

    // The bundle Secret removed: the last bundle stays.
    cp.0.remove(BUNDLE_SECRET);
    sds.apply(cp.lookup());
    assert!(node.has_bundle());
}
