//! Cross-node mTLS configured entirely over xDS, in process: two "nodes" (loopback) each
//! with a store fed by ADS from one in-process control plane. Node A's proxy learns from
//! EDS that endpoints on 127.0.0.2 are meshed workloads on node B (`myelin.io/hbone`
//! metadata; no standalone remote workloads) and tunnels to B's HBONE server as its
//! client workload; both nodes' certificates and trust bundle are SDS Secrets. The node
//! must present the endpoint's identity, else one of the cluster's SAN list (SNI names
//! them all); an endpoint with nothing to verify against fails closed. A pushed new
//! Secret version is the certificate B presents from the next handshake on; a bad one is
//! rejected and the rotated one stays.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use myelin_proxy::golden::{GoldenMetrics, Naming};
use myelin_proxy::hbone::{self, HboneMetrics};
use myelin_proxy::metrics::ProxyMetrics;
use myelin_proxy::model::{ProxyConfig, Workload};
use myelin_proxy::tls::ca::{Ca, Issued};
use myelin_proxy::tls::probe::probe;
use myelin_proxy::tls::sds::{SdsIdentities, SdsMetrics, SecretRejection, BUNDLE_SECRET};
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_proxy::traffic::mesh::HboneLookup;
use myelin_proxy::{drain, OrigDstLookup, Proxy};
use myelin_xds::ads::{AdsClient, AdsConfig};
use myelin_xds::store::ConfigStore;
use myelin_xds::testing::{ControlPlane, WAIT};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinHandle;
use xds_api::pb::envoy::config::cluster::v3::Cluster;
use xds_api::pb::envoy::config::core::v3::Node as NodePb;
use xds_api::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use xds_api::pb::envoy::extensions::transport_sockets::tls::v3::Secret;

use crate::support::{eds_cluster, set, tcp_listener, vip, yaml};

const TD: &str = "cluster.local";
const HOUR: Duration = Duration::from_secs(3600);
const POD_IP: &str = "127.0.0.2";

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "test-ns", sa).unwrap()
}

fn cert_secret(name: &str, i: &Issued) -> Secret {
    yaml(&format!(
        "name: \"{name}\"\ntls_certificate: {{ certificate_chain: {{ inline_string: {:?} }}, private_key: {{ inline_string: {:?} }} }}\n",
        i.cert_pem(),
        i.key_pem()
    ))
}

fn bundle(ca: &Ca) -> Secret {
    yaml(&format!(
        "name: {BUNDLE_SECRET}\nvalidation_context: {{ trusted_ca: {{ inline_string: {:?} }} }}\n",
        ca.cert_pem()
    ))
}

/// Endpoint `addr` of `cluster`, meshed on `node` (`identity`: the metadata's, if any).
fn meshed(
    cluster: &str,
    addr: SocketAddr,
    node: SocketAddr,
    identity: Option<&SpiffeId>,
) -> ClusterLoadAssignment {
    let identity = identity.map_or(String::new(), |i| format!(", identity: \"{i}\""));
    yaml(&format!(
        r#"
cluster_name: {cluster}
endpoints:
- lb_endpoints:
  - endpoint: {{address: {{socket_address: {{address: "{}", port_value: {}}}}}}}
    metadata: {{filter_metadata: {{"myelin.io/hbone": {{node: "{node}"{identity}}}}}}}
"#,
        addr.ip(),
        addr.port()
    ))
}

/// An EDS cluster whose upstream TLS context lists `sans` (exact URI SANs).
fn cluster_with_sans(name: &str, sans: &[&SpiffeId]) -> Cluster {
    let sans: Vec<String> = sans
        .iter()
        .map(|s| format!("{{ san_type: URI, matcher: {{ exact: \"{s}\" }} }}"))
        .collect();
    yaml(&format!(
        r#"
name: {name}
type: EDS
eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}
transport_socket:
  name: envoy.transport_sockets.tls
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
    common_tls_context:
      validation_context: {{ match_typed_subject_alt_names: [{}] }}
"#,
        sans.join(", ")
    ))
}

/// A TCP echo server on the "remote pod" address, counting connections.
async fn echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind((POD_IP, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            n.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, accepted)
}

/// A store fed by ADS from `cp` as node `node_id`, with the SDS identities `wanted`.
fn xds_node(
    cp: &ControlPlane,
    node_id: &str,
    wanted: &[&SpiffeId],
    tasks: &mut Vec<JoinHandle<()>>,
) -> (Arc<ConfigStore>, Arc<Identities>, SdsMetrics) {
    let store = Arc::new(ConfigStore::new());
    let ids = Identities::without_bundle(TD).unwrap();
    let metrics = SdsMetrics::new(&mut Registry::default());
    let sds = SdsIdentities::new(
        ids.clone(),
        wanted.iter().map(|i| (*i).clone()).collect::<BTreeSet<_>>(),
        metrics.clone(),
    );
    store.want_secrets(sds.secret_names());
    tasks.push(tokio::spawn(myelin_xds::sds::follow(store.clone(), sds)));
    let config = AdsConfig::new(
        cp.uri(),
        NodePb {
            id: node_id.into(),
            ..Default::default()
        },
    );
    tasks.push(tokio::spawn(AdsClient::new(config, store.clone()).run()));
    (store, ids, metrics)
}

#[derive(Default)]
struct Lookup(std::sync::Mutex<std::collections::HashMap<SocketAddr, SocketAddr>>);

impl OrigDstLookup for Lookup {
    fn original_dst(&self, peer: SocketAddr, _local: SocketAddr) -> Option<SocketAddr> {
        self.0.lock().unwrap().get(&peer).copied()
    }
}

async fn wait_for(what: &str, pred: impl Fn() -> bool) {
    let ok = tokio::time::timeout(WAIT, async {
        while !pred() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(ok.is_ok(), "never: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eds_metadata_and_sds_secrets_drive_cross_node_mtls() {
    let ca = Ca::generate(TD, 24 * HOUR).unwrap();
    let (client, db, payments) = (id("client-sa"), id("db"), id("payments"));
    let mut tasks = Vec::new();
    let cp = ControlPlane::start().await;

    // Node B: the HBONE server for pod db, its certificate from SDS.
    let hbone_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node_b = hbone_listener.local_addr().unwrap();
    let (_b_store, b_ids, b_sds) = xds_node(&cp, "node-b", &[&db], &mut tasks);
    let mut b_registry = Registry::default();
    let b_hbone = Arc::new(HboneMetrics::new(&mut b_registry));
    let b_golden = Arc::new(GoldenMetrics::new(
        &mut b_registry,
        Naming::Myelin,
        Default::default(),
    ));
    let db_pod = Workload {
        name: "db".into(),
        namespace: "test-ns".into(),
        service_account: "db".into(),
        ip: POD_IP.parse().unwrap(),
    };
    let server = hbone::Server::new(
        b_ids.clone(),
        Arc::new(ProxyConfig::new(vec![db_pod]).unwrap()),
        b_hbone.clone(),
        b_golden,
    );
    let (_b_signal, b_watch) = drain::channel();
    tokio::spawn(async move { server.serve(hbone_listener, b_watch).await });

    // Node A: the client workload on 127.0.0.1; no standalone remote workloads.
    let (a_store, a_ids, _) = xds_node(&cp, "node-a", &[&client], &mut tasks);
    let client_pod = Workload {
        name: "client".into(),
        namespace: "test-ns".into(),
        service_account: "client-sa".into(),
        ip: "127.0.0.1".parse().unwrap(),
    };
    let mut a_registry = Registry::default();
    let metrics = Arc::new(ProxyMetrics::new(
        a_registry.sub_registry_with_prefix("myelin"),
    ));
    let lookup = Arc::new(Lookup::default());
    let a_client = Arc::new(hbone::Client::new(
        a_ids.clone(),
        hbone::ClientConfig::default(),
    ));
    let proxy = Proxy::new(
        Arc::new(ProxyConfig::new(vec![client_pod]).unwrap()),
        lookup.clone(),
        metrics,
    )
    .with_hbone(a_client.clone());
    let handle = proxy.traffic();
    tasks.push(tokio::spawn(myelin_xds::feed::feed(
        a_store,
        handle.clone(),
    )));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let (_a_signal, a_watch) = drain::channel();
    tokio::spawn(proxy.serve(listener, a_watch));

    let (pinned, _) = echo().await;
    let (by_sans, _) = echo().await;
    let (unverifiable, plain_accepts) = echo().await;
    let db_v1 = ca.issue(&db, HOUR).unwrap();
    cp.update(|b| {
        set(b, BUNDLE_SECRET, &bundle(&ca));
        set(
            b,
            &client.to_string(),
            &cert_secret(&client.to_string(), &ca.issue(&client, HOUR).unwrap()),
        );
        set(b, &db.to_string(), &cert_secret(&db.to_string(), &db_v1));
        // The endpoint names its identity.
        set(b, "pinned", &tcp_listener("pinned", 18201, "db-pinned"));
        set(b, "db-pinned", &eds_cluster("db-pinned"));
        set(
            b,
            "db-pinned",
            &meshed("db-pinned", pinned, node_b, Some(&db)),
        );
        // The cluster's SAN list says who may answer (payments is not on node B).
        set(b, "sans", &tcp_listener("sans", 18202, "db-sans"));
        set(
            b,
            "db-sans",
            &cluster_with_sans("db-sans", &[&payments, &db]),
        );
        set(b, "db-sans", &meshed("db-sans", by_sans, node_b, None));
        // Meshed, with nothing to verify the node against.
        set(
            b,
            "unverifiable",
            &tcp_listener("unverifiable", 18203, "db-plain"),
        );
        set(b, "db-plain", &eds_cluster("db-plain"));
        set(
            b,
            "db-plain",
            &meshed("db-plain", unverifiable, node_b, None),
        );
    });
    wait_for("certificates, bundles and endpoints on both nodes", || {
        let t = handle.load();
        a_ids.has_bundle()
            && a_ids.certificate(&client).is_some()
            && b_ids.has_bundle()
            && b_ids.certificate(&db).is_some()
            && t.hbone_endpoint(pinned).is_some()
            && t.hbone_endpoint(by_sans).is_some()
            && t.listener("unverifiable").is_some()
            && matches!(
                t.hbone_endpoint(unverifiable),
                Some(HboneLookup::Invalid(_))
            )
    })
    .await;

    let connect = |dst: SocketAddr| {
        let lookup = lookup.clone();
        async move {
            let sock = TcpSocket::new_v4().unwrap();
            sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            lookup
                .0
                .lock()
                .unwrap()
                .insert(sock.local_addr().unwrap(), dst);
            // A connection the proxy refuses at once can fail here already (its reset
            // may arrive before the connect completes): an error, not a panic.
            sock.connect(proxy_addr).await
        }
    };
    let echo_through = |port: u16| {
        let connect = &connect;
        async move {
            let mut s = connect(vip(port)).await.map_err(|e| e.to_string())?;
            s.write_all(b"over hbone").await.unwrap();
            let mut buf = [0u8; 10];
            tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
                .await
                .map_err(|_| "timeout".to_string())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(buf)
        }
    };
    assert_eq!(echo_through(18201).await.unwrap(), *b"over hbone");
    assert_eq!(b_hbone.tunnel_count(), 1);
    assert_eq!(echo_through(18202).await.unwrap(), *b"over hbone");
    assert_eq!(b_hbone.tunnel_count(), 2);
    // Fails closed: no tunnel, and no plaintext connection to the pod either.
    assert!(echo_through(18203).await.is_err());
    assert_eq!(b_hbone.tunnel_count(), 2);
    assert_eq!(plain_accepts.load(Ordering::SeqCst), 0);

    // Rotation over SDS: the next handshake presents the new certificate.
    let presented = || probe(&a_ids, &client, &db, node_b, Duration::from_secs(5));
    assert_eq!(presented().await.unwrap().serial, db_v1.serial());
    let db_v2 = ca.issue(&db, 2 * HOUR).unwrap();
    cp.set(&db.to_string(), &cert_secret(&db.to_string(), &db_v2));
    let deadline = tokio::time::Instant::now() + WAIT;
    while presented().await.unwrap().serial != db_v2.serial() {
        assert!(tokio::time::Instant::now() < deadline, "never rotated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A bad version (another identity's certificate under db's name): rejected, v2 stays.
    let stray = ca.issue(&payments, HOUR).unwrap();
    cp.set(&db.to_string(), &cert_secret(&db.to_string(), &stray));
    wait_for("the bad Secret rejected", || {
        b_sds.rejected(SecretRejection::NameMismatch) == 1
    })
    .await;
    let now = presented().await.unwrap();
    assert_eq!((now.id, now.serial), (db.clone(), db_v2.serial()));
    // Traffic still flows.
    assert_eq!(echo_through(18201).await.unwrap(), *b"over hbone");
    for t in tasks {
        t.abort();
    }
}
