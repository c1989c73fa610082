//! Handshakes over in-memory pipes between an HBONE-style server and client built from
//! [`Identities`]: what is accepted, and every refusal with its own reason.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::ca::Ca;
use super::*;

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

/// A node holding `ids`, issued by `ca`, trusting `ca`.
fn node(ca: &Ca, ids: &[&SpiffeId]) -> Arc<Identities> {
    let n = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    for i in ids {
        n.insert(&ca.issue(i, HOUR).unwrap()).unwrap();
    }
    n
}

/// The outcome of one handshake: what each side saw of the other, or its refusal.
#[derive(Debug)]
struct Outcome {
    server: Result<SpiffeId, RejectReason>,
    client: Result<SpiffeId, RejectReason>,
}

async fn handshake(
    server: &Identities,
    client: &Identities,
    source: &SpiffeId,
    expected: &SpiffeId,
) -> Outcome {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.server_config());
    let connector = TlsConnector::from(Arc::new(
        client
            .client_config(source, vec![expected.clone()])
            .unwrap(),
    ));
    let server_side = async move {
        match acceptor.accept(a).await {
            Ok(s) => {
                let (_, conn) = s.get_ref();
                assert_eq!(conn.alpn_protocol(), Some(store::ALPN_H2));
                Ok(spiffe_id_of(&conn.peer_certificates().unwrap()[0]).unwrap())
            }
            Err(e) => Err(RejectReason::of_io(&e)),
        }
    };
    // The client's stream lives until both sides are done: a TLS 1.3 server still
    // writes (session tickets) after the client considers the handshake complete.
    let client_side = async move {
        match connector.connect(sni_for(expected), b).await {
            Ok(s) => {
                let (_, conn) = s.get_ref();
                let id = spiffe_id_of(&conn.peer_certificates().unwrap()[0]).unwrap();
                (Ok(id), Some(s))
            }
            Err(e) => (Err(RejectReason::of_io(&e)), None),
        }
    };
    let (server, (client, _stream)) = tokio::join!(server_side, client_side);
    Outcome { server, client }
}

#[tokio::test]
async fn mutual_tls_with_spiffe_identities() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("shop", "web"), id("shop", "db"));
    let a = node(&ca, &[&web]);
    let b = node(&ca, &[&db]);
    let o = handshake(&b, &a, &web, &db).await;
    assert_eq!(o.server, Ok(web.clone()), "{o:?}");
    assert_eq!(o.client, Ok(db.clone()), "{o:?}");
}

#[tokio::test]
async fn refusals_have_distinct_reasons() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("shop", "web"), id("shop", "db"));
    let server = node(&ca, &[&db]);

    // A client whose CA (another trust domain's) the server does not trust.
    let other_ca = Ca::generate("other.example", 24 * HOUR).unwrap();
    let foreign = Identities::new(TD, &[ca.cert_der().clone()]).unwrap();
    foreign
        .insert(&other_ca.issue(&web, HOUR).unwrap())
        .unwrap();
    let o = handshake(&server, &foreign, &web, &db).await;
    // (In TLS 1.3 the client finishes before the server has judged its certificate: it
    // learns of the refusal from the alert on its first read.)
    assert_eq!(o.server, Err(RejectReason::UntrustedIssuer), "{o:?}");

    // Signed by our CA, but for another trust domain.
    let stranger = SpiffeId::new("other.example", "shop", "web").unwrap();
    let c = node(&ca, &[]);
    c.insert(&ca.issue(&stranger, HOUR).unwrap()).unwrap();
    let o = handshake(&server, &c, &stranger, &db).await;
    assert_eq!(o.server, Err(RejectReason::OtherTrustDomain), "{o:?}");

    // Expired.
    let now = SystemTime::now();
    let c = node(&ca, &[]);
    c.insert(&ca.issue_between(&web, now - 2 * HOUR, now - HOUR).unwrap())
        .unwrap();
    let o = handshake(&server, &c, &web, &db).await;
    assert_eq!(o.server, Err(RejectReason::Expired), "{o:?}");

    // The server is not who the client expected: the server presents db's certificate
    // under the SNI of the identity expected, so this needs a server that holds the
    // expected SNI but a different certificate: a node that answers every SNI with db.
    let c = node(&ca, &[&web]);
    let impostor = id("shop", "payments");
    let rogue = node(&ca, &[&db]);
    // The rogue registers db's certificate under the payments SNI.
    let mut db_as_payments = ca.issue(&db, HOUR).unwrap();
    db_as_payments.id = impostor.clone();
    rogue.insert(&db_as_payments).unwrap();
    let o = handshake(&rogue, &c, &web, &impostor).await;
    assert_eq!(o.client, Err(RejectReason::WrongIdentity), "{o:?}");
}

#[tokio::test]
async fn rotation_applies_to_the_next_handshake() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db) = (id("shop", "web"), id("shop", "db"));
    let a = node(&ca, &[&web]);
    let b = node(&ca, &[&db]);
    let before = b.certificate(&db).unwrap();
    let renewed = ca.issue(&db, 2 * HOUR).unwrap();
    b.insert(&renewed).unwrap();
    let after = b.certificate(&db).unwrap();
    assert!(after.not_after > before.not_after);
    let (x, y) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(b.server_config());
    let connector = TlsConnector::from(Arc::new(a.client_config(&web, vec![db.clone()]).unwrap()));
    let (s, c) = tokio::join!(acceptor.accept(x), connector.connect(sni_for(&db), y));
    s.unwrap();
    let c = c.unwrap();
    assert_eq!(
        c.get_ref().1.peer_certificates().unwrap()[0],
        renewed.cert,
        "the renewed certificate is presented"
    );
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = Ca::generate(TD, HOUR).unwrap();
    let again = Ca::from_pem(TD, ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.cert_der(), ca.cert_der());
    let issued = again.issue(&id("a", "b"), HOUR).unwrap();
    assert_eq!(spiffe_id_of(&issued.cert), Ok(id("a", "b")));
}

/// With several acceptable identities (a cluster's SAN list), the SNI names them all and
/// the server presents the first one it holds; the client accepts any of them, and
/// nothing else.
#[tokio::test]
async fn sni_naming_several_identities_picks_the_first_the_server_holds() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (web, db, payments, cache) = (
        id("shop", "web"),
        id("shop", "db"),
        id("shop", "payments"),
        id("shop", "cache"),
    );
    let a = node(&ca, &[&web]);
    let b = node(&ca, &[&db, &cache]);
    let connect = |expected: Vec<SpiffeId>| {
        let (x, y) = tokio::io::duplex(64 * 1024);
        let acceptor = TlsAcceptor::from(b.server_config());
        let connector =
            TlsConnector::from(Arc::new(a.client_config(&web, expected.clone()).unwrap()));
        async move {
            let (s, c) = tokio::join!(
                acceptor.accept(x),
                connector.connect(sni_for_any(&expected), y)
            );
            let _ = s;
            c.map(|c| spiffe_id_of(&c.get_ref().1.peer_certificates().unwrap()[0]).unwrap())
        }
    };
    // payments is not on b: db, the next named, is presented.
    assert_eq!(
        connect(vec![payments.clone(), db.clone()]).await.unwrap(),
        db
    );
    assert_eq!(
        connect(vec![cache.clone(), db.clone()]).await.unwrap(),
        cache
    );
    // None of the named identities is on b: no certificate, no connection.
    assert!(connect(vec![payments.clone()]).await.is_err());
    assert!(connect(vec![]).await.is_err());
    // Seven names fit in one SNI.
    let many: Vec<SpiffeId> = (0..6)
        .map(|i| id("shop", &format!("n{i}")))
        .chain([db.clone()])
        .collect();
    assert_eq!(store::SNI_MAX_IDENTITIES, many.len());
    assert_eq!(connect(many).await.unwrap(), db);
}
