//! Which certificate an HBONE server presents for an identity: one mTLS handshake as
//! `source`, nothing sent after it. For diagnostics and tests (has a rotation reached the
//! node? which identity answers this SNI?).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::ca::serial_of;
use super::{sni_for, spiffe_id_of, Identities, SpiffeId};

/// The leaf certificate a server presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Its serial number (big-endian bytes).
    pub serial: Vec<u8>,
}

/// Handshakes with the HBONE server at `node` as `source` (its certificate from
/// `identities`), asking for `expected`, within `timeout`; the server's certificate is
/// verified as the HBONE client verifies it.
pub async fn probe(
    identities: &Identities,
    source: &SpiffeId,
    expected: &SpiffeId,
    node: SocketAddr,
    timeout: Duration,
) -> io::Result<Presented> {
    let config = identities
        .client_config(source, vec![expected.clone()])
        .map_err(io::Error::other)?;
    let handshake = async {
        let tcp = TcpStream::connect(node).await?;
        TlsConnector::from(Arc::new(config))
            .connect(sni_for(expected), tcp)
            .await
    };
    let tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    let (_, conn) = tls.get_ref();
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::other("no server certificate"))?;
    Ok(Presented {
        id: spiffe_id_of(leaf).map_err(|r| io::Error::other(r.as_str()))?,
        serial: serial_of(leaf).unwrap_or_default(),
    })
}
