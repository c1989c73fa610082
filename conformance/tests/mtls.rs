//! The agent's HBONE server (mTLS issue, destination side), through the real `myelin`
//! binary: the agent issues its pods' certificates from the CA files of `myelin.mtls` and
//! serves HBONE on the node address; a client in the node's network namespace, holding a
//! certificate from the same CA (as another node's agent would), tunnels to a pod, and
//! certificates from another CA, of another trust domain, or expired are refused with
//! their own counted reasons. The source side (the proxy choosing HBONE for endpoints on
//! other nodes) is not wired yet, so no second node runs here.
//!
//! Needs root and a built `myelin` (`cargo build --release -p myelin`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use myelin_proxy::hbone::{baggage, Client, ClientConfig, PoolKey, TunnelError};
use myelin_proxy::tls::ca::Ca;
use myelin_proxy::tls::{Identities, SpiffeId};
use myelin_testbed::mesh::in_netns;
use myelin_testbed::{podtool_command, testbed_ready, Mesh, MeshOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TD: &str = "cluster.local";
const ECHO: u16 = 9000;
const HOUR: Duration = Duration::from_secs(3600);

/// A directory removed at drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Identities holding one certificate for `id`, from `issuer`, trusting `trusted`.
fn client_ids(
    trusted: &Ca,
    issuer: &Ca,
    id: &SpiffeId,
    expired: bool,
) -> std::sync::Arc<Identities> {
    let ids = Identities::new(TD, &[trusted.cert_der().clone()]).unwrap();
    let issued = if expired {
        let now = SystemTime::now();
        issuer
            .issue_between(id, now - 2 * HOUR, now - HOUR)
            .unwrap()
    } else {
        issuer.issue(id, HOUR).unwrap()
    };
    ids.insert(&issued).unwrap();
    ids
}

#[test]
fn agent_hbone_server_tunnels_to_its_pod_and_refuses_bad_certificates() -> Result<()> {
    if !testbed_ready(&[]) {
        return Ok(());
    }
    let ca = Ca::generate(TD, 24 * HOUR)?;
    let dir = TempDir(std::env::temp_dir().join(format!("myelin-mtls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let (cert, key) = (dir.0.join("ca.pem"), dir.0.join("ca.key"));
    std::fs::write(&cert, ca.cert_pem())?;
    std::fs::write(&key, ca.key_pem())?;

    let mut opts = MeshOptions::pods(&["db"]);
    opts.myelin = format!(
        "  mtls: {{ ca_cert: {}, ca_key: {}, cert_lifetime: 1h }}\n",
        cert.display(),
        key.display()
    );
    let mesh = Mesh::start("mtls", opts)?;
    let db = mesh.pod("db");
    let mut echo_cmd = podtool_command()?;
    echo_cmd
        .args(["echo-server", "--port", &ECHO.to_string()])
        .stdout(std::process::Stdio::piped());
    let mut echo = db.spawn(echo_cmd)?;
    echo.next_line(Duration::from_secs(10))?;

    let node = std::net::SocketAddr::from((mesh.node.addr, myelin_proxy::hbone::PORT));
    let target = std::net::SocketAddr::from((db.ip, ECHO));
    let db_id = SpiffeId::new(TD, "test", "db")?;
    let web = SpiffeId::new(TD, "test", "web")?;
    let key = |source: &SpiffeId| PoolKey {
        source: source.clone(),
        node,
        expected: db_id.clone(),
    };
    let other_ca = Ca::generate("other.example", 24 * HOUR)?;
    let stranger = SpiffeId::new("other.example", "test", "web")?;

    let outcome = in_netns(&mesh.node.netns_path(), || -> Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            // A good client: the bytes go through, both ways.
            let client = Client::new(client_ids(&ca, &ca, &web, false), ClientConfig::default());
            let mut headers = http::HeaderMap::new();
            headers.insert("baggage", baggage("test", "web").context("baggage")?);
            let mut t = client
                .connect(&key(&web), target, headers)
                .await
                .context("tunnel to the pod through the agent")?;
            t.write_all(b"through hbone").await?;
            let mut buf = [0u8; 13];
            tokio::time::timeout(Duration::from_secs(5), t.read_exact(&mut buf)).await??;
            anyhow::ensure!(&buf == b"through hbone", "echo came back as {buf:?}");
            drop(t);

            // Not a pod of this node: 404.
            let elsewhere = std::net::SocketAddr::from((mesh.node.addr, ECHO));
            match client
                .connect(&key(&web), elsewhere, http::HeaderMap::new())
                .await
            {
                Err(TunnelError::Refused { status, .. }) if status == 404 => {}
                other => anyhow::bail!("a tunnel to a non-pod got {other:?}"),
            }

            // Refused at the handshake: another CA, another trust domain, expired.
            for ids in [
                client_ids(&ca, &other_ca, &web, false),
                client_ids(&ca, &ca, &stranger, false),
                client_ids(&ca, &ca, &web, true),
            ] {
                let source = ids.certificates()[0].0.clone();
                let c = Client::new(ids, ClientConfig::default());
                let r = c
                    .connect(&key(&source), target, http::HeaderMap::new())
                    .await;
                anyhow::ensure!(r.is_err(), "a bad certificate for {source} got a tunnel");
            }
            Ok(())
        })
    })?;
    outcome?;
    // The counters are updated as the handshakes fail; give the last a moment.
    std::thread::sleep(Duration::from_millis(200));
    for reason in [
        "untrusted_issuer",
        "other_trust_domain",
        "expired",
        "unknown_destination",
    ] {
        let n = mesh.metric("myelin_hbone_refused_total", &[("reason", reason)])?;
        assert_eq!(n, 1.0, "refusals counted as {reason}\n{}", mesh.log());
    }
    assert_eq!(mesh.metric("myelin_hbone_tunnels_total", &[])?, 1.0);
    let opened = mesh.metric(
        "myelin_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("source_workload", "web"),
            ("source_principal", "spiffe://cluster.local/ns/test/sa/web"),
            ("destination_workload", "db"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/test/sa/db",
            ),
            ("connection_security_policy", "mutual_tls"),
        ],
    )?;
    assert_eq!(opened, 1.0, "{}", mesh.metrics()?);
    // The workload's certificate is issued and its expiry exported.
    let left = mesh.metric(
        "myelin_identity_cert_expiry_seconds",
        &[("identity", "spiffe://cluster.local/ns/test/sa/db")],
    )?;
    assert!(left > 3000.0 && left <= 3600.0, "seconds left: {left}");
    Ok(())
}
