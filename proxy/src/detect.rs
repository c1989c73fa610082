//! Protocol detection ("sniffing") on a freshly accepted connection.
//!
//! The decision is a pure function of the bytes seen so far ([`classify`]), table-tested
//! below; [`detect`] only does the reading. It decides as soon as the bytes prove it
//! either way: a client that sends non-HTTP bytes is forwarded at once, without waiting
//! for the timeout. A client that sends nothing within the sniff timeout is assumed to
//! speak a server-first protocol (SMTP, MySQL, ...) and is forwarded as opaque TCP.
//! Bytes read here are never lost: the stream comes back wrapped in a [`Rewind`].

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::stream::Rewind;

/// The application protocol of a captured connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c): the client opened with the connection preface.
    Http2,
    /// Anything else: forwarded as a byte stream.
    Opaque,
}

impl Protocol {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Opaque => "opaque",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> fmt::Result {
        fmt::Write::write_str(encoder, self.as_str())
    }
}

/// HTTP/1.x request methods we recognise, each followed by the space that ends the
/// method token in a request line (RFC 9112 section 3).
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The preface is the longest thing we look for: we never need more bytes to decide.
const MAX_SNIFF: usize = H2_PREFACE.len();

/// What the bytes seen so far say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Definitely this protocol.
    Is(Protocol),
    /// Still a prefix of some HTTP method: read more.
    NeedMore,
}

/// Classifies the first bytes of a client-first connection.
pub(crate) fn classify(buf: &[u8]) -> Verdict {
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Verdict::Is(Protocol::Http2);
    }
    let mut could_be_http = H2_PREFACE.starts_with(buf);
    for m in METHODS {
        if buf.starts_with(m) {
            return Verdict::Is(Protocol::Http1);
        }
        if m.starts_with(buf) {
            could_be_http = true;
        }
    }
    if could_be_http {
        Verdict::NeedMore
    } else {
        Verdict::Is(Protocol::Opaque)
    }
}

/// Reads from `io` until the protocol is known, at most `timeout`. Returns the protocol
/// and the stream with the sniffed bytes put back in front.
///
/// An empty read (client half-closed) or a timeout ends detection as [`Protocol::Opaque`]:
/// the byte-stream path preserves half-close and lets a server-first server speak.
pub(crate) async fn detect<T>(io: T, timeout: Duration) -> io::Result<(Protocol, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    detect_or(io, timeout, std::future::pending()).await
}

/// [`detect`], also ending as [`Protocol::Opaque`] as soon as `server_spoke` resolves:
/// a server that speaks first (its connection already open, as behind the HBONE server)
/// is not kept waiting for the sniff timeout.
pub(crate) async fn detect_or<T>(
    io: T,
    timeout: Duration,
    server_spoke: impl std::future::Future<Output = ()>,
) -> io::Result<(Protocol, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    detect_after(Bytes::new(), io, timeout, server_spoke).await
}

/// [`detect`] on a connection whose first bytes, `read`, were read already (those after
/// a PROXY protocol header): they are classified first, and come back in front of the
/// stream with what is read after them.
pub(crate) async fn detect_from<T>(
    read: Bytes,
    io: T,
    timeout: Duration,
) -> io::Result<(Protocol, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    detect_after(read, io, timeout, std::future::pending()).await
}

async fn detect_after<T>(
    read: Bytes,
    mut io: T,
    timeout: Duration,
    server_spoke: impl std::future::Future<Output = ()>,
) -> io::Result<(Protocol, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    if let Verdict::Is(p) = classify(&read[..read.len().min(MAX_SNIFF)]) {
        return Ok((p, Rewind::new(read, io)));
    }
    // Still undecided: shorter than the longest thing looked for.
    tokio::pin!(server_spoke);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut buf = [0u8; MAX_SNIFF];
    buf[..read.len()].copy_from_slice(&read);
    let mut len = read.len();
    let protocol = loop {
        // An empty buffer is a prefix of every method, so this never decides before the
        // first read; a full buffer always decides (it holds a whole longest method).
        if let Verdict::Is(p) = classify(&buf[..len]) {
            break p;
        }
        if len == MAX_SNIFF {
            break Protocol::Opaque;
        }
        // Only ever read the bytes we may still need: nothing beyond MAX_SNIFF. (`read`
        // is cancel-safe: when the server speaks first, no byte is lost.)
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, io.read(&mut buf[len..])) => r,
            () = &mut server_spoke => break Protocol::Opaque,
        };
        match read {
            Ok(Ok(0)) | Err(_) => break Protocol::Opaque,
            Ok(Ok(n)) => len += n,
            Ok(Err(e)) => return Err(e),
        }
    };
    let prefix = Bytes::copy_from_slice(&buf[..len]);
    Ok((protocol, Rewind::new(prefix, io)))
}

/// What a TLS ClientHello says (Envoy's `tls_inspector`): the SNI and the ALPN list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ClientHelloInfo {
    /// The server name, when the client sent one.
    pub(crate) server_name: Option<String>,
    /// The ALPN protocols, in the client's order.
    pub(crate) alpn: Vec<String>,
}

/// The largest ClientHello read before giving up on it (Envoy's `tls_inspector` default
/// `max_client_hello_size`).
const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// What the bytes seen so far say about a ClientHello: `Ok(Some)` parsed, `Ok(None)` a
/// prefix of one (read more), `Err` not a ClientHello. rustls' `Acceptor` parses a copy
/// (records, fragments and extensions as rustls reads them for real); nothing here is
/// kept but the two fields.
pub(crate) fn parse_client_hello(buf: &[u8]) -> Result<Option<ClientHelloInfo>, ()> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Err(()),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => {
            let hello = accepted.client_hello();
            Ok(Some(ClientHelloInfo {
                server_name: hello.server_name().map(str::to_owned),
                alpn: hello
                    .alpn()
                    .map(|ps| {
                        ps.map(|p| String::from_utf8_lossy(p).into_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            }))
        }
        Ok(None) => Ok(None),
        Err(_) => Err(()),
    }
}

/// Reads a TLS ClientHello on `stream` (whose sniffed bytes begin one) until it is whole,
/// within `timeout` and [`MAX_CLIENT_HELLO`] bytes: what it says (`None`: not a
/// ClientHello after all, too large, or not whole in time) and the stream with every byte
/// put back.
pub(crate) async fn client_hello<T>(
    stream: Rewind<T>,
    timeout: Option<Duration>,
) -> io::Result<(Option<ClientHelloInfo>, Rewind<T>)>
where
    T: AsyncRead + Unpin,
{
    let (prefix, mut io) = stream.into_parts();
    let mut buf = bytes::BytesMut::from(&prefix[..]);
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    let info = loop {
        match parse_client_hello(&buf) {
            Ok(Some(info)) => break Some(info),
            Err(()) => break None,
            Ok(None) if buf.len() >= MAX_CLIENT_HELLO => break None,
            Ok(None) => {}
        }
        buf.reserve(4096);
        let read = match deadline {
            Some(d) => tokio::time::timeout_at(d, io.read_buf(&mut buf)).await,
            None => Ok(io.read_buf(&mut buf).await),
        };
        match read {
            Ok(Ok(0)) | Err(_) => break None,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
    };
    Ok((info, Rewind::new(buf.freeze(), io)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    use Protocol::{Http1, Http2, Opaque};
    use Verdict::{Is, NeedMore};

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GE", NeedMore),
            (b"GET", NeedMore),
            (b"GET ", Is(Http1)),
            (b"GET / HTTP/1.1\r\n", Is(Http1)),
            (b"POST /x HTTP/1.1", Is(Http1)),
            (b"PUT ", Is(Http1)),
            (b"DELETE ", Is(Http1)),
            (b"HEAD ", Is(Http1)),
            (b"OPTIONS * HTTP/1.1", Is(Http1)),
            (b"PATCH ", Is(Http1)),
            (b"CONNECT host:443 HTTP/1.1", Is(Http1)),
            (b"TRACE ", Is(Http1)),
            // Prefixes shared by several methods.
            (b"P", NeedMore),
            (b"PU", NeedMore),
            (b"PA", NeedMore),
            (b"CONNEC", NeedMore),
            (b"OPTIONS", NeedMore),
            // Decided as soon as the bytes rule HTTP out.
            (b"X", Is(Opaque)),
            (b"GEX", Is(Opaque)),
            (b"GETX", Is(Opaque)),
            (b"get ", Is(Opaque)),
            (b"GET\t", Is(Opaque)),
            (b"\x16\x03\x01", Is(Opaque)), // TLS ClientHello
            (b"PRI * HTTP/2.0", NeedMore), // a prefix of the HTTP/2 preface
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Is(Http2)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0", Is(Http2)),
            (b"PRI * HTTP/1.1", Is(Opaque)),
            (b"SSH-2.0-", Is(Opaque)),
            (b"\0", Is(Opaque)),
            (b"POSTGRES", Is(Opaque)),
        ];
        for (input, want) in cases {
            assert_eq!(
                classify(input),
                *want,
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    async fn run(chunks: &[&[u8]], close: bool) -> (Protocol, Vec<u8>, tokio::time::Duration) {
        let (mut client, server) = tokio::io::duplex(1024);
        for c in chunks {
            client.write_all(c).await.unwrap();
        }
        let start = tokio::time::Instant::now();
        // Keep the client open (or not) while detecting.
        let client = if close {
            drop(client);
            None
        } else {
            Some(client)
        };
        let (p, mut io) = detect(server, Duration::from_millis(100)).await.unwrap();
        let elapsed = start.elapsed();
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        (p, all, elapsed)
    }

    #[tokio::test(start_paused = true)]
    async fn detect_http_without_waiting() {
        let (p, bytes, elapsed) = run(&[b"GET / HTTP/1.1\r\n\r\n"], false).await;
        assert_eq!(p, Http1);
        assert_eq!(bytes, b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn detect_opaque_without_waiting() {
        let (p, bytes, elapsed) = run(&[b"\x16\x03\x01\x00\x05hello"], false).await;
        assert_eq!(p, Opaque);
        assert_eq!(bytes, b"\x16\x03\x01\x00\x05hello");
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn detect_server_first_times_out_to_opaque() {
        let (p, bytes, elapsed) = run(&[], false).await;
        assert_eq!(p, Opaque);
        assert!(bytes.is_empty());
        assert_eq!(elapsed, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn detect_partial_method_then_silence_is_opaque() {
        let (p, bytes, elapsed) = run(&[b"GE"], false).await;
        assert_eq!(p, Opaque);
        assert_eq!(bytes, b"GE");
        assert_eq!(elapsed, Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn detect_eof_is_opaque() {
        let (p, bytes, elapsed) = run(&[b"PO"], true).await;
        assert_eq!(p, Opaque);
        assert_eq!(bytes, b"PO");
        assert_eq!(elapsed, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn detect_ends_when_the_server_speaks_first() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GE").await.unwrap();
        let start = tokio::time::Instant::now();
        let spoke = tokio::time::sleep(Duration::from_millis(10));
        let (p, mut io) = detect_or(server, Duration::from_millis(100), spoke)
            .await
            .unwrap();
        assert_eq!(p, Opaque);
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        drop(client);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"GE", "bytes read before the server spoke are kept");
    }

    #[tokio::test(start_paused = true)]
    async fn detect_method_split_across_writes() {
        let (mut client, server) = tokio::io::duplex(1024);
        let det = tokio::spawn(detect(server, Duration::from_millis(100)));
        for b in [&b"O"[..], b"PTI", b"ONS", b" * HTTP/1.1\r\n"] {
            client.write_all(b).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(client);
        let (p, mut io) = det.await.unwrap().unwrap();
        assert_eq!(p, Http1);
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, b"OPTIONS * HTTP/1.1\r\n");
    }

    /// A real ClientHello (rustls' client, SNI and ALPN set), as bytes on the wire.
    fn client_hello_bytes(sni: &str, alpn: &[&str]) -> Vec<u8> {
        #[derive(Debug)]
        struct AnyServer;
        impl rustls::client::danger::ServerCertVerifier for AnyServer {
            fn verify_server_cert(
                &self,
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &[rustls::pki_types::CertificateDer<'_>],
                _: &rustls::pki_types::ServerName<'_>,
                _: &[u8],
                _: rustls::pki_types::UnixTime,
            ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
                unreachable!("no server answers")
            }
            fn verify_tls12_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                unreachable!("no server answers")
            }
            fn verify_tls13_signature(
                &self,
                _: &[u8],
                _: &rustls::pki_types::CertificateDer<'_>,
                _: &rustls::DigitallySignedStruct,
            ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error>
            {
                unreachable!("no server answers")
            }
            fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
                vec![rustls::SignatureScheme::ECDSA_NISTP256_SHA256]
            }
        }
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::store::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer))
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn client_hello_says_sni_and_alpn_once_whole() {
        let hello = client_hello_bytes("api.example.com", &["h2", "http/1.1"]);
        assert!(hello.len() > 100, "{} bytes", hello.len());
        let want = ClientHelloInfo {
            server_name: Some("api.example.com".into()),
            alpn: vec!["h2".into(), "http/1.1".into()],
        };
        assert_eq!(parse_client_hello(&hello), Ok(Some(want)));
        for cut in [1, 5, 6, 40, hello.len() - 1] {
            assert_eq!(parse_client_hello(&hello[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse_client_hello(b"GET / HTTP/1.1\r\n\r\n"), Err(()));
        // A TLS record that is not a handshake.
        assert_eq!(parse_client_hello(b"\x17\x03\x03\x00\x05hello"), Err(()));
    }

    #[tokio::test]
    async fn client_hello_is_read_whole_and_every_byte_kept() {
        let hello = client_hello_bytes("db.internal", &[]);
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let (first, rest) = hello.split_at(3);
        let writer = {
            let rest = rest.to_vec();
            tokio::spawn(async move {
                // The rest of the hello in pieces, then application bytes.
                for chunk in rest.chunks(50) {
                    client.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
                client.write_all(b"after").await.unwrap();
                drop(client);
            })
        };
        let stream = Rewind::new(Bytes::copy_from_slice(first), server);
        let (info, mut io) = client_hello(stream, Some(Duration::from_secs(5)))
            .await
            .unwrap();
        writer.await.unwrap();
        assert_eq!(
            info,
            Some(ClientHelloInfo {
                server_name: Some("db.internal".into()),
                alpn: vec![],
            })
        );
        let mut all = Vec::new();
        io.read_to_end(&mut all).await.unwrap();
        assert!(all.starts_with(&hello), "the hello is replayed");
        assert!(all.ends_with(b"after"));
        assert_eq!(all.len(), hello.len() + 5);
    }
}
