//! TLS for the tests: a CA issuing leaf certificates (rcgen), PEM helpers, the crypto
//! provider the proxy uses (ring), and a rustls server that reports its handshakes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A CA for the tests' certificates.
pub struct TestCa {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (DNS SANs): certificate and key PEM.
    pub fn leaf(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

impl TestCa {
    /// A client leaf whose only SAN is the URI `uri` (a SPIFFE ID): certificate and key
    /// PEM.
    pub fn uri_leaf(&self, uri: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

pub fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap()
}

pub fn key(pem: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap()
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// YAML of a PEM as an inline string.
pub fn inline(pem: &str) -> String {
    format!("{{inline_string: {}}}", serde_json::to_string(pem).unwrap())
}

/// A TLS server on loopback that answers every request with what its connection's
/// handshake carried: `sni=<name|none> alpn=<proto|none> version=<TLSv1_x> client=<yes|none>`.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    pub handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub async fn tls_upstream(config: rustls::ServerConfig) -> TlsUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let handshakes = Arc::new(AtomicUsize::new(0));
    let counter = handshakes.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let conn = tls.get_ref().1;
                let alpn = conn.alpn_protocol().map(|p| p.to_vec());
                let about = format!(
                    "sni={} alpn={} version={:?} client={}",
                    conn.server_name().unwrap_or("none"),
                    alpn.as_deref()
                        .map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned()),
                    conn.protocol_version().unwrap(),
                    if conn.peer_certificates().is_some() {
                        "yes"
                    } else {
                        "none"
                    },
                );
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let resp = Response::builder()
                            .header("x-server", "tls")
                            .body(Full::new(Bytes::from(about.clone())))
                            .unwrap();
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                let io = TokioIo::new(tls);
                if alpn.as_deref() == Some(b"h2") {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, svc)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                }
            });
        }
    });
    TlsUpstream {
        addr,
        handshakes,
        task,
    }
}

/// A server config: TLS 1.2 and 1.3 (or only `versions`), ALPN `h2` and `http/1.1`, and
/// client certificates required when `clients` names their CA.
pub fn server_config(
    cert: &(String, String),
    versions: &[&'static rustls::SupportedProtocolVersion],
    clients: Option<&TestCa>,
) -> rustls::ServerConfig {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(chain(&ca.pem).remove(0)).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain(&cert.0), key(&cert.1))
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
