//! The server side of h2spec's "http2" section (summerwind/h2spec), with its "hpack" and
//! "generic" sections after it, as our own table of cases run end to end: an in-process control plane, the agent, a captured HTTP listener
//! routed to an HTTP/1 upstream, and one raw TCP connection per case that speaks frames
//! written by hand (h2spec itself is a Go binary, not installable here).
//!
//! Each case is named by its h2spec id (`section/number`, numbered as h2spec lists them)
//! and keeps h2spec's facts: what is sent, and what is accepted as the answer. A connection
//! error is a GOAWAY with one of the codes or the connection closed; a stream error is, in
//! addition, a RST_STREAM with one of the codes. Two things are stricter than h2spec: a
//! GOAWAY or RST_STREAM with another code fails the case (h2spec goes on reading and passes
//! when the connection then closes), and every case runs, h2spec's "strict" ones included.
//! Every read is bounded (h2spec waits 1 s per event, here 2 s): a server that says nothing
//! fails the case instead of hanging the test. Where RFC 9113, which obsoletes the RFC 7540
//! that h2spec checks, lets the server answer otherwise, the case says so.
//!
//! The cases of a section run concurrently, each on its own connection; a section's
//! failures are reported together.

use std::fmt;
use std::time::Duration;

use crate::support::*;
use futures_util::future::join_all;
use myelin_xds::ads::{type_url, AdsProtocol};
use myelin_xds::testing::ControlPlane;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one read waits for the server.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The captured listener's port.
const PORT: u16 = 18_400;
/// The stream cap the listener announces (the proxy's default is 200; a small one keeps
/// 5.1.2's burst of requests, and their upstream connections, small).
const MAX_STREAMS: u32 = 16;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
/// A type no specification defines (the one h2spec sends).
const UNKNOWN: u8 = 0x16;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
/// Both, for a request without a body in one frame.
const ES_EH: u8 = END_STREAM | END_HEADERS;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const STREAM_CLOSED: u32 = 0x5;
const FRAME_SIZE_ERROR: u32 = 0x6;
const REFUSED_STREAM: u32 = 0x7;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;

const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// h2spec's `--max-header-length` default: the length of each dummy field's value.
const DUMMY_LEN: usize = 4000;

// ---- the node under test ------------------------------------------------------------------

struct Env {
    node: Node,
    _cp: ControlPlane,
    _up: HttpUpstream,
}

/// A node whose captured listener on `vip(PORT)` routes everything to an HTTP/1 upstream
/// that answers `upstream <path>` (10 bytes for `/`: h2spec's flow-control cases need a
/// body of at least 5).
async fn env() -> Env {
    let up = http_upstream("upstream").await;
    let cp = ControlPlane::start().await;
    let streams = format!("  max_concurrent_streams: {MAX_STREAMS}");
    cp.update(|b| {
        b.set(
            "l",
            &http_listener_with("l", PORT, "web", &["http2_protocol_options:", &streams]),
        );
        b.set("web", &route_to("web", "web"));
        b.set("web", &eds_cluster("web"));
        b.set("web", &endpoints("web", &[up.addr]));
    });
    let node = Node::start(&cp, AdsProtocol::StateOfTheWorld).await;
    for (t, name) in [
        (type_url::LISTENER, "l"),
        (type_url::ROUTE, "web"),
        (type_url::CLUSTER, "web"),
        (type_url::ENDPOINT, "web"),
    ] {
        node.wait_applied(t, &[name], &cp.version(t)).await;
    }
    Env {
        node,
        _cp: cp,
        _up: up,
    }
}

// ---- frames and header blocks by hand -----------------------------------------------------

fn frame(kind: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A frame head announcing `len` bytes, without its payload.
fn head(kind: u8, flags: u8, id: u32, len: usize) -> Vec<u8> {
    let mut h = frame(kind, flags, id, &[]);
    h[..3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    h
}

fn headers(id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(HEADERS, flags, id, block)
}

fn continuation(id: u32, flags: u8, block: &[u8]) -> Vec<u8> {
    frame(CONTINUATION, flags, id, block)
}

fn data(id: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    frame(DATA, flags, id, payload)
}

fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let payload: Vec<u8> = values
        .iter()
        .flat_map(|(id, v)| id.to_be_bytes().into_iter().chain(v.to_be_bytes()))
        .collect();
    frame(SETTINGS, 0, 0, &payload)
}

fn window_update(id: u32, inc: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, id, &inc.to_be_bytes())
}

fn rst(id: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, id, &code.to_be_bytes())
}

fn ping(flags: u8, payload: [u8; 8]) -> Vec<u8> {
    frame(PING, flags, 0, &payload)
}

fn goaway(last: u32, code: u32) -> Vec<u8> {
    let mut p = last.to_be_bytes().to_vec();
    p.extend_from_slice(&code.to_be_bytes());
    frame(GOAWAY, 0, 0, &p)
}

/// PRIORITY on `id`: depends on `dep` (not exclusive) with `weight`.
fn priority(id: u32, dep: u32, weight: u8) -> Vec<u8> {
    let mut p = dep.to_be_bytes().to_vec();
    p.push(weight);
    frame(PRIORITY, 0, id, &p)
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn int(out: &mut Vec<u8>, n: u8, flags: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing and with plain strings (RFC 7541
/// 6.2.2): no dynamic table, so every block stands alone.
fn block<N: AsRef<str>, V: AsRef<str>>(fields: &[(N, V)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0x00);
        for s in [n.as_ref(), v.as_ref()] {
            int(&mut out, 7, 0, s.len());
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// h2spec's common request fields with `method`, then `extra`.
fn request(method: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let f: Vec<(String, String)> = [
        (":method", method),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "svc.test"),
    ]
    .iter()
    .chain(extra)
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    f
}

fn get_block() -> Vec<u8> {
    block(&request("GET", &[]))
}

fn post_block() -> Vec<u8> {
    block(&request("POST", &[]))
}

/// `n` fields `x-dummy<i>` of `DUMMY_LEN` bytes each (h2spec's `DummyHeaders`).
fn dummy(n: usize) -> Vec<u8> {
    let fields: Vec<(String, String)> = (0..n)
        .map(|i| (format!("x-dummy{i}"), "x".repeat(DUMMY_LEN)))
        .collect();
    block(&fields)
}

// ---- a raw connection ---------------------------------------------------------------------

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    id: u32,
    payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    fn code(&self) -> Option<u32> {
        let at = match self.kind {
            RST_STREAM => 0,
            GOAWAY => 4,
            _ => return None,
        };
        let b = self.payload.get(at..at + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

enum Event {
    Frame(Frame),
    Closed,
    Timeout,
    Failed(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Frame(fr) => {
                let name = match fr.kind {
                    DATA => "DATA",
                    HEADERS => "HEADERS",
                    PRIORITY => "PRIORITY",
                    RST_STREAM => "RST_STREAM",
                    SETTINGS => "SETTINGS",
                    PUSH_PROMISE => "PUSH_PROMISE",
                    PING => "PING",
                    GOAWAY => "GOAWAY",
                    WINDOW_UPDATE => "WINDOW_UPDATE",
                    CONTINUATION => "CONTINUATION",
                    _ => "unknown frame",
                };
                write!(
                    f,
                    "{name} (stream {}, flags {:#x}, length {}",
                    fr.id,
                    fr.flags,
                    fr.payload.len()
                )?;
                if let Some(c) = fr.code() {
                    write!(f, ", code {c:#x}")?;
                }
                write!(f, ")")
            }
            Event::Closed => write!(f, "connection closed"),
            Event::Timeout => write!(f, "nothing within {TIMEOUT:?}"),
            Event::Failed(e) => write!(f, "read failed: {e}"),
        }
    }
}

struct Conn {
    io: TcpStream,
    buf: Vec<u8>,
    closed: bool,
    /// The server's SETTINGS, as received in the handshake.
    settings: Vec<(u16, u32)>,
}

impl Conn {
    async fn open(env: &Env) -> Conn {
        Conn {
            io: env.node.connect(vip(PORT)).await,
            buf: Vec::new(),
            closed: false,
            settings: Vec::new(),
        }
    }

    /// Writes `bytes`; a server that closed early is seen by the next read.
    async fn send(&mut self, bytes: &[u8]) {
        let _ = self.io.write_all(bytes).await;
    }

    /// The next frame, or the end, or nothing within `TIMEOUT`.
    async fn next(&mut self) -> Event {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let h: Vec<u8> = self.buf.drain(..9).collect();
                    let payload = self.buf.drain(..len).collect();
                    return Event::Frame(Frame {
                        kind: h[3],
                        flags: h[4],
                        id: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
                        payload,
                    });
                }
            }
            if self.closed {
                return Event::Closed;
            }
            let mut chunk = [0u8; 16 << 10];
            match tokio::time::timeout(TIMEOUT, self.io.read(&mut chunk)).await {
                Err(_) => return Event::Timeout,
                Ok(Ok(0)) => self.closed = true,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
                // h2spec counts a reset as a close, as the kernel sends one when the server
                // closes with our bytes unread.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    self.closed = true;
                    // What was buffered is lost with a reset.
                    self.buf.clear();
                }
                Ok(Err(e)) => return Event::Failed(e.to_string()),
            }
        }
    }

    /// h2spec's handshake: the preface and SETTINGS (INITIAL_WINDOW_SIZE 65535), the
    /// server's SETTINGS acknowledged, and ours acknowledged by the server.
    async fn handshake(&mut self) -> Result<(), String> {
        self.send(PREFACE).await;
        self.send(&settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]))
            .await;
        let (mut acked, mut got) = (false, false);
        while !(acked && got) {
            match self.next().await {
                Event::Frame(f) if f.kind == SETTINGS && f.flags & ACK != 0 => acked = true,
                Event::Frame(f) if f.kind == SETTINGS => {
                    got = true;
                    self.settings = f
                        .payload
                        .chunks_exact(6)
                        .map(|s| {
                            (
                                u16::from_be_bytes([s[0], s[1]]),
                                u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                            )
                        })
                        .collect();
                    self.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                Event::Frame(_) => {}
                other => return Err(format!("handshake: {other}")),
            }
        }
        Ok(())
    }
}

// ---- cases --------------------------------------------------------------------------------

/// What a case waits for, with h2spec's acceptance rules.
enum Expect {
    /// GOAWAY with one of the codes, or the connection closed.
    ConnectionError(&'static [u32]),
    /// RST_STREAM or GOAWAY with one of the codes, or the connection closed.
    StreamError(&'static [u32]),
    /// The connection closed (frames before it are skipped).
    Closed,
    /// A DATA or HEADERS frame with END_STREAM.
    StreamEnd,
    /// A frame of this type.
    Kind(u8),
    /// A HEADERS frame on this stream (h2spec's `VerifyHeadersFrame`).
    HeadersOn(u32),
    /// A PING ACK, or the connection closed.
    PingAckOrClosed,
    /// The first frame is a SETTINGS frame, not an ACK (the server's preface).
    ServerSettings,
    /// The first SETTINGS frame is an ACK.
    SettingsAck,
    /// A PING ACK with `answer`, and no PING carrying `never` before it.
    PingAck { answer: [u8; 8], never: [u8; 8] },
    /// The first DATA frame is this long.
    DataLen(usize),
    /// The first GOAWAY has this code.
    Goaway(u32),
    /// The first RST_STREAM is on this stream with this code.
    Rst(u32, u32),
}

enum Step {
    Send(Vec<u8>),
    /// Bytes made from the server's SETTINGS.
    SendFor(fn(&Conn) -> Vec<u8>),
    Expect(Expect),
}

use Expect::*;
use Step::Expect as Then;
use Step::Send;

struct Case {
    id: &'static str,
    /// h2spec's handshake first (else the case writes the preface itself).
    handshake: bool,
    steps: Vec<Step>,
}

/// A case that starts after the handshake.
fn case(id: &'static str, steps: Vec<Step>) -> Case {
    Case {
        id,
        handshake: true,
        steps,
    }
}

/// A case that sends `bytes` (frames concatenated) after the handshake, then expects.
fn sends(id: &'static str, bytes: &[Vec<u8>], expect: Expect) -> Case {
    case(id, vec![Send(bytes.concat()), Then(expect)])
}

async fn expect(conn: &mut Conn, e: &Expect) -> Result<(), String> {
    // What came before, for the failure message.
    let mut seen: Vec<String> = Vec::new();
    loop {
        let ev = conn.next().await;
        let fail = |why: &str| Err(format!("{ev}{why}, after [{}]", seen.join(", ")));
        let Event::Frame(f) = &ev else {
            return match (&ev, e) {
                (Event::Closed, ConnectionError(_) | StreamError(_) | Closed | PingAckOrClosed) => {
                    Ok(())
                }
                _ => fail(""),
            };
        };
        let code = f.code();
        let done = match e {
            ConnectionError(codes) | StreamError(codes) if f.kind == GOAWAY => {
                if !codes.contains(&code.unwrap_or(u32::MAX)) {
                    return fail(": another code");
                }
                true
            }
            StreamError(codes) if f.kind == RST_STREAM => {
                if !codes.contains(&code.unwrap_or(u32::MAX)) {
                    return fail(": another code");
                }
                true
            }
            StreamEnd => matches!(f.kind, DATA | HEADERS) && f.flags & END_STREAM != 0,
            Kind(k) => f.kind == *k,
            HeadersOn(id) => f.kind == HEADERS && f.id == *id,
            PingAckOrClosed => f.kind == PING && f.flags & ACK != 0,
            ServerSettings => {
                if f.kind != SETTINGS || f.flags & ACK != 0 {
                    return fail(": not the server's SETTINGS first");
                }
                true
            }
            SettingsAck if f.kind == SETTINGS => {
                if f.flags & ACK == 0 {
                    return fail(": not an ACK");
                }
                true
            }
            PingAck { answer, never } if f.kind == PING => {
                if f.payload == never {
                    return fail(": a PING ACK was answered");
                }
                f.flags & ACK != 0 && f.payload == answer
            }
            DataLen(n) if f.kind == DATA => {
                if f.payload.len() != *n {
                    return fail(&format!(": not {n} bytes"));
                }
                true
            }
            Goaway(c) if f.kind == GOAWAY => {
                if code != Some(*c) {
                    return fail(&format!(": not code {c:#x}"));
                }
                true
            }
            Rst(id, c) if f.kind == RST_STREAM => {
                if f.id != *id || code != Some(*c) {
                    return fail(&format!(": not stream {id} with code {c:#x}"));
                }
                true
            }
            _ => false,
        };
        if done {
            return Ok(());
        }
        seen.push(ev.to_string());
    }
}

async fn run(env: &Env, c: &Case) -> Result<(), String> {
    let mut conn = Conn::open(env).await;
    if c.handshake {
        conn.handshake().await?;
    }
    for (i, step) in c.steps.iter().enumerate() {
        match step {
            Send(bytes) => conn.send(bytes).await,
            Step::SendFor(make) => {
                let bytes = make(&conn);
                conn.send(&bytes).await;
            }
            Then(e) => expect(&mut conn, e)
                .await
                .map_err(|why| format!("step {i}: {why}"))?,
        }
    }
    Ok(())
}

/// Runs a section's cases concurrently on one node; fails with every failed case.
async fn section(cases: Vec<Case>) {
    let env = env().await;
    let results = join_all(cases.iter().map(|c| run(&env, c))).await;
    let failed: Vec<String> = cases
        .iter()
        .zip(results)
        .filter_map(|(c, r)| r.err().map(|why| format!("{}: {why}", c.id)))
        .collect();
    assert!(failed.is_empty(), "failed cases:\n{}", failed.join("\n"));
}

// ---- 3. Starting HTTP/2 ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_5_connection_preface() {
    section(vec![
        Case {
            id: "3.5/1",
            handshake: false,
            steps: vec![
                Send([PREFACE.to_vec(), settings(&[])].concat()),
                Then(ServerSettings),
            ],
        },
        // The proxy's protocol detection takes this for HTTP/1.1 (it is not the preface):
        // a 400 and the connection closed, which is what h2spec asks.
        Case {
            id: "3.5/2",
            handshake: false,
            steps: vec![
                Send(b"INVALID CONNECTION PREFACE\r\n\r\n".to_vec()),
                Then(Closed),
            ],
        },
    ])
    .await;
}

// ---- 4. HTTP Frames -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s4_http_frames() {
    let post = post_block();
    let get = get_block();
    let big = block(
        &request("GET", &[])
            .into_iter()
            .chain((0..5).map(|i| (format!("x-dummy{i}"), "x".repeat(DUMMY_LEN))))
            .collect::<Vec<_>>(),
    );
    section(vec![
        // 4.1 Frame Format: unknown types, undefined flags and the reserved bit are ignored.
        sends(
            "4.1/1",
            &[frame(UNKNOWN, 0, 0, &[0; 8]), ping(0, [0; 8])],
            Kind(PING),
        ),
        sends("4.1/2", &[frame(PING, 0x16, 0, &[0; 8])], Kind(PING)),
        sends(
            "4.1/3",
            &[frame(PING, 0x16, 0x8000_0000, &[0; 8])],
            Kind(PING),
        ),
        // 4.2 Frame Size.
        sends(
            "4.2/1",
            &[
                headers(1, END_HEADERS, &post),
                data(1, END_STREAM, &[b'x'; 16_384]),
            ],
            Kind(HEADERS),
        ),
        sends(
            "4.2/2",
            &[
                headers(1, END_HEADERS, &post),
                data(1, END_STREAM, &[b'x'; 16_385]),
            ],
            StreamError(&[FRAME_SIZE_ERROR]),
        ),
        sends(
            "4.2/3",
            &[headers(1, ES_EH, &big)],
            ConnectionError(&[FRAME_SIZE_ERROR]),
        ),
        // 4.3 Header Compression and Decompression: a literal with incremental indexing
        // cut off before its name.
        sends(
            "4.3/1",
            &[headers(1, ES_EH, &[0x40])],
            ConnectionError(&[COMPRESSION_ERROR]),
        ),
        sends(
            "4.3/2",
            &[
                headers(1, 0, &get),
                priority(1, 0, 255),
                continuation(1, END_HEADERS, &dummy(1)),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "4.3/3",
            &[
                headers(1, 0, &get),
                headers(3, ES_EH, &get),
                continuation(1, END_HEADERS, &dummy(1)),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
    ])
    .await;
}

// ---- 5. Streams and Multiplexing ------------------------------------------------------------

/// SETTINGS_INITIAL_WINDOW_SIZE 0 (so no response can end), then one request more than the
/// server's stream cap.
fn over_the_stream_cap(conn: &Conn) -> Vec<u8> {
    let cap = conn
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v)
        .expect("the server announces SETTINGS_MAX_CONCURRENT_STREAMS");
    let get = get_block();
    let mut out = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    for i in 0..=cap {
        out.extend(headers(1 + 2 * i, ES_EH, &get));
    }
    out
}

/// A request answered (both sides ended), then `frame` on its stream.
fn after_end(id: &'static str, frame: Vec<u8>, codes: &'static [u32]) -> Case {
    case(
        id,
        vec![
            Send(headers(1, ES_EH, &get_block())),
            Then(StreamEnd),
            Send(frame),
            Then(ConnectionError(codes)),
        ],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_1_stream_states() {
    let get = get_block();
    let test = b"test";
    section(vec![
        // idle: anything but HEADERS and PRIORITY is a connection error.
        sends(
            "5.1/1",
            &[data(1, END_STREAM, test)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.1/2",
            &[rst(1, CANCEL)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.1/3",
            &[window_update(1, 100)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.1/4",
            &[continuation(1, END_HEADERS, &get)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        // half-closed (remote): DATA, HEADERS, CONTINUATION are STREAM_CLOSED. Whether the
        // stream is still half-closed when they come (its response on the way) or already
        // closed (answered), the server's answer must be one of these.
        sends(
            "5.1/5",
            &[headers(1, ES_EH, &get), data(1, END_STREAM, test)],
            StreamError(&[STREAM_CLOSED]),
        ),
        sends(
            "5.1/6",
            &[headers(1, ES_EH, &get), headers(1, ES_EH, &get)],
            StreamError(&[STREAM_CLOSED]),
        ),
        sends(
            "5.1/7",
            &[headers(1, ES_EH, &get), continuation(1, END_HEADERS, &get)],
            StreamError(&[STREAM_CLOSED, PROTOCOL_ERROR]),
        ),
        // closed, by the client's RST_STREAM.
        sends(
            "5.1/8",
            &[
                headers(1, END_HEADERS, &get),
                rst(1, CANCEL),
                data(1, END_STREAM, test),
            ],
            StreamError(&[STREAM_CLOSED]),
        ),
        sends(
            "5.1/9",
            &[
                headers(1, END_HEADERS, &get),
                rst(1, CANCEL),
                headers(1, ES_EH, &get),
            ],
            StreamError(&[STREAM_CLOSED]),
        ),
        sends(
            "5.1/10",
            &[
                headers(1, END_HEADERS, &get),
                rst(1, CANCEL),
                continuation(1, END_HEADERS, &dummy(1)),
            ],
            StreamError(&[STREAM_CLOSED, PROTOCOL_ERROR]),
        ),
        // closed, both sides ended: RFC 9113 5.1 lets the server treat any frame but
        // PRIORITY, WINDOW_UPDATE and RST_STREAM as a connection error STREAM_CLOSED.
        after_end("5.1/11", data(1, END_STREAM, test), &[STREAM_CLOSED]),
        after_end("5.1/12", headers(1, ES_EH, &get), &[STREAM_CLOSED]),
        after_end(
            "5.1/13",
            continuation(1, END_HEADERS, &dummy(1)),
            &[STREAM_CLOSED, PROTOCOL_ERROR],
        ),
        // 5.1.1 Stream Identifiers.
        sends(
            "5.1.1/1",
            &[headers(2, ES_EH, &get)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.1.1/2",
            &[headers(5, ES_EH, &get), headers(3, ES_EH, &get)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.1.1/3",
            &[headers(5, ES_EH, &get), headers(5, ES_EH, &get)],
            StreamError(&[STREAM_CLOSED]),
        ),
        // 5.1.2 Stream Concurrency.
        case(
            "5.1.2/1",
            vec![
                Step::SendFor(over_the_stream_cap),
                Then(StreamError(&[PROTOCOL_ERROR, REFUSED_STREAM])),
            ],
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s5_3_to_5_5_priority_errors_extensions() {
    let get = get_block();
    let mut self_dependent = 1u32.to_be_bytes().to_vec();
    self_dependent.push(255);
    self_dependent.extend_from_slice(&get);
    let bad_ping = frame(PING, 0, 3, &[0; 8]);
    section(vec![
        // 5.3.1 Stream Dependencies: RFC 9113 deprecates the priority scheme (5.3.2) but
        // keeps a frame's own stream as its dependency a stream error (5.3.1).
        sends(
            "5.3.1/1",
            &[headers(1, ES_EH | PRIORITY_FLAG, &self_dependent)],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "5.3.1/2",
            &[priority(1, 1, 255)],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        // 5.4.1 Connection Error Handling: closed, and (h2spec's strict case) a GOAWAY
        // first.
        sends("5.4.1/1", std::slice::from_ref(&bad_ping), Closed),
        sends("5.4.1/2", &[bad_ping], Kind(GOAWAY)),
        // 5.5 Extending HTTP/2.
        sends(
            "5.5/1",
            &[frame(UNKNOWN, 0, 0, &[0; 8]), ping(0, [0; 8])],
            Kind(PING),
        ),
        sends(
            "5.5/2",
            &[headers(1, END_STREAM, &get), frame(UNKNOWN, 0, 0, &[0; 8])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
    ])
    .await;
}

// ---- 6. Frame Definitions -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_1_to_6_4_data_headers_priority_rst_stream() {
    let get = get_block();
    let post = post_block();
    let post_4 = block(&request("POST", &[("content-length", "4")]));
    // HEADERS, END_STREAM | END_HEADERS | PADDED, whose pad length is beyond the frame.
    let mut bad_pad = head(HEADERS, ES_EH | PADDED, 1, get.len() + 1);
    bad_pad.push((get.len() + 2) as u8);
    bad_pad.extend_from_slice(&get);
    section(vec![
        // 6.1 DATA.
        sends(
            "6.1/1",
            &[data(0, END_STREAM, b"test")],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.1/2",
            &[headers(1, ES_EH, &post), data(1, END_STREAM, b"test")],
            StreamError(&[STREAM_CLOSED]),
        ),
        sends(
            "6.1/3",
            &[
                headers(1, END_HEADERS, &post_4),
                frame(DATA, END_STREAM | PADDED, 1, b"\x06Test"),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        // 6.2 HEADERS.
        sends(
            "6.2/1",
            &[
                headers(1, 0, &get),
                priority(1, 0, 255),
                continuation(1, END_HEADERS, &dummy(1)),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.2/2",
            &[
                headers(1, 0, &get),
                headers(3, ES_EH, &get),
                continuation(1, END_HEADERS, &dummy(1)),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.2/3",
            &[headers(0, ES_EH, &get)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends("6.2/4", &[bad_pad], StreamError(&[PROTOCOL_ERROR])),
        // 6.3 PRIORITY.
        sends(
            "6.3/1",
            &[priority(0, 0, 255)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.3/2",
            &[
                headers(1, ES_EH, &get),
                frame(PRIORITY, 0, 1, &[0x80, 0, 0, 1]),
            ],
            StreamError(&[FRAME_SIZE_ERROR]),
        ),
        sends(
            "6.3/3",
            &[priority(3, 0, 255), headers(1, ES_EH, &get)],
            Kind(HEADERS),
        ),
        // 6.4 RST_STREAM.
        sends(
            "6.4/1",
            &[rst(0, CANCEL)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.4/2",
            &[rst(1, CANCEL)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.4/3",
            &[headers(1, ES_EH, &get), frame(RST_STREAM, 0, 1, &[0; 3])],
            StreamError(&[FRAME_SIZE_ERROR]),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_5_settings() {
    let get = get_block();
    // Announces 9 bytes, sends 8: the length alone is the error.
    let short = [head(SETTINGS, 0, 0, 9), vec![0, 3, 0, 0, 0, 0x64, 0, 2]];
    section(vec![
        sends(
            "6.5/1",
            &[frame(SETTINGS, ACK, 0, &[0])],
            ConnectionError(&[FRAME_SIZE_ERROR]),
        ),
        sends(
            "6.5/2",
            &[frame(SETTINGS, 0, 1, &[0, 3, 0, 0, 0, 0x64])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.5/3",
            &short,
            StreamError(&[PROTOCOL_ERROR, FRAME_SIZE_ERROR]),
        ),
        // 6.5.2 Defined SETTINGS Parameters.
        sends(
            "6.5.2/1",
            &[settings(&[(SETTINGS_ENABLE_PUSH, 2)])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.5.2/2",
            &[settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1 << 31)])],
            ConnectionError(&[FLOW_CONTROL_ERROR]),
        ),
        sends(
            "6.5.2/3",
            &[settings(&[(SETTINGS_MAX_FRAME_SIZE, 16_383)])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.5.2/4",
            &[settings(&[(SETTINGS_MAX_FRAME_SIZE, 1 << 24)])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.5.2/5",
            &[settings(&[(0xff, 1)]), ping(0, [0; 8])],
            Kind(PING),
        ),
        // 6.5.3 Settings Synchronization: values in order (the last window wins), and an
        // ACK at once.
        case(
            "6.5.3/1",
            vec![
                Send(settings(&[
                    (SETTINGS_INITIAL_WINDOW_SIZE, 100),
                    (SETTINGS_INITIAL_WINDOW_SIZE, 1),
                ])),
                Then(Kind(SETTINGS)),
                Send(headers(1, ES_EH, &get)),
                Then(DataLen(1)),
            ],
        ),
        sends(
            "6.5.3/2",
            &[settings(&[(SETTINGS_ENABLE_PUSH, 0)])],
            SettingsAck,
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_7_to_6_8_ping_goaway() {
    let h2spec = *b"h2spec\0\0";
    section(vec![
        sends(
            "6.7/1",
            &[ping(0, h2spec)],
            PingAck {
                answer: h2spec,
                never: *b"invalid\0",
            },
        ),
        sends(
            "6.7/2",
            &[ping(ACK, *b"invalid\0"), ping(0, h2spec)],
            PingAck {
                answer: h2spec,
                never: *b"invalid\0",
            },
        ),
        sends(
            "6.7/3",
            &[frame(PING, 0, 1, &[0; 8])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        // h2spec sends it on stream 1 too: the stream is the first error (RFC 9113 6.7 makes
        // the length alone FRAME_SIZE_ERROR).
        sends(
            "6.7/4",
            &[frame(PING, 0, 1, &[0; 6])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.8/1",
            &[frame(GOAWAY, 0, 1, &[0; 8])],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_9_window_update() {
    let get = get_block();
    let max = (1u32 << 31) - 1;
    section(vec![
        sends(
            "6.9/1",
            &[window_update(0, 0)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.9/2",
            &[headers(1, END_HEADERS, &get), window_update(1, 0)],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.9/3",
            &[frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1])],
            ConnectionError(&[FRAME_SIZE_ERROR]),
        ),
        // 6.9.1 The Flow-Control Window.
        case(
            "6.9.1/1",
            vec![
                Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1)])),
                Then(Kind(SETTINGS)),
                Send(headers(1, ES_EH, &get)),
                Then(DataLen(1)),
            ],
        ),
        sends(
            "6.9.1/2",
            &[window_update(0, max), window_update(0, max)],
            Goaway(FLOW_CONTROL_ERROR),
        ),
        sends(
            "6.9.1/3",
            &[
                headers(1, END_HEADERS, &get),
                window_update(1, max),
                window_update(1, max),
            ],
            Rst(1, FLOW_CONTROL_ERROR),
        ),
        // 6.9.2 Initial Flow-Control Window Size.
        case(
            "6.9.2/1",
            vec![
                Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)])),
                Then(Kind(SETTINGS)),
                Send(headers(1, ES_EH, &get)),
                Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 1)])),
                Then(Kind(SETTINGS)),
                Then(DataLen(1)),
            ],
        ),
        case(
            "6.9.2/2",
            vec![
                Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 3)])),
                Then(Kind(SETTINGS)),
                Send(headers(1, ES_EH, &get)),
                Then(Kind(DATA)),
                // The stream's window goes to -1 ...
                Send(settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 2)])),
                Then(Kind(SETTINGS)),
                // ... and to 1.
                Send(window_update(1, 2)),
                Then(DataLen(1)),
            ],
        ),
        sends(
            "6.9.2/3",
            &[frame(SETTINGS, 0, 0, &[0, 4, 0x80, 0, 0, 0])],
            ConnectionError(&[FLOW_CONTROL_ERROR]),
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s6_10_continuation() {
    let get = get_block();
    let post = post_block();
    let d = dummy(1);
    section(vec![
        sends(
            "6.10/1",
            &[
                headers(1, END_STREAM, &get),
                continuation(1, 0, &d),
                continuation(1, END_HEADERS, &d),
            ],
            Kind(HEADERS),
        ),
        sends(
            "6.10/2",
            &[
                headers(1, 0, &post),
                continuation(1, 0, &d),
                data(1, END_STREAM, b"test"),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.10/3",
            &[
                headers(1, END_STREAM, &get),
                continuation(0, END_HEADERS, &d),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.10/4",
            &[headers(1, ES_EH, &get), continuation(1, END_HEADERS, &d)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.10/5",
            &[
                headers(1, END_STREAM, &get),
                continuation(1, END_HEADERS, &d),
                continuation(1, END_HEADERS, &d),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "6.10/6",
            &[
                headers(1, 0, &post),
                data(1, END_STREAM, b"test"),
                continuation(1, 0, &d),
                continuation(0, END_HEADERS, &d),
            ],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
    ])
    .await;
}

// ---- 7. Error Codes -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s7_error_codes() {
    section(vec![
        // Unknown codes trigger nothing special: a GOAWAY with no stream in flight closes
        // the connection, a RST_STREAM ends its stream only.
        sends("7/1", &[goaway(0, 0xff)], Closed),
        sends(
            "7/2",
            &[
                headers(1, END_HEADERS, &post_block()),
                rst(1, 0xff),
                ping(0, [0; 8]),
            ],
            Kind(PING),
        ),
    ])
    .await;
}

// ---- 8. HTTP Message Exchanges --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s8_http_message_exchanges() {
    let post = post_block();
    let with = |extra: &[(&str, &str)]| block(&request("GET", extra));
    let malformed = |id, block: Vec<u8>| {
        sends(
            id,
            &[headers(1, ES_EH, &block)],
            StreamError(&[PROTOCOL_ERROR]),
        )
    };
    let common = request("GET", &[]);
    let without = |name: &str| {
        block(
            &common
                .iter()
                .filter(|(n, _)| n != name)
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let post_1 = block(&request("POST", &[("content-length", "1")]));
    let mut push = 3u32.to_be_bytes().to_vec();
    push.extend_from_slice(&get_block());
    section(vec![
        // 8.1: trailers without END_STREAM.
        sends(
            "8.1/1",
            &[
                headers(1, END_HEADERS, &post),
                data(1, 0, b"test"),
                headers(1, END_HEADERS, &block(&[("x-test", "ok")])),
            ],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        // 8.1.2 HTTP Header Fields (RFC 9113 8.2 and 8.3).
        malformed("8.1.2/1", with(&[("X-TEST", "ok")])),
        malformed("8.1.2.1/1", with(&[(":test", "ok")])),
        malformed("8.1.2.1/2", with(&[(":status", "200")])),
        sends(
            "8.1.2.1/3",
            &[
                headers(1, END_HEADERS, &post),
                data(1, 0, b"test"),
                headers(1, END_HEADERS, &block(&[(":method", "POST")])),
            ],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        malformed(
            "8.1.2.1/4",
            block(
                &[("x-test".to_string(), "ok".to_string())]
                    .into_iter()
                    .chain(common.iter().cloned())
                    .collect::<Vec<_>>(),
            ),
        ),
        malformed("8.1.2.2/1", with(&[("connection", "keep-alive")])),
        malformed(
            "8.1.2.2/2",
            with(&[("trailers", "test"), ("te", "trailers, deflate")]),
        ),
        malformed(
            "8.1.2.3/1",
            block(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", ""),
                (":authority", "svc.test"),
            ]),
        ),
        malformed("8.1.2.3/2", without(":method")),
        malformed("8.1.2.3/3", without(":scheme")),
        malformed("8.1.2.3/4", without(":path")),
        malformed("8.1.2.3/5", with(&[(":method", "GET")])),
        malformed("8.1.2.3/6", with(&[(":scheme", "http")])),
        malformed("8.1.2.3/7", with(&[(":method", "/")])),
        // 8.1.2.6 Malformed Requests and Responses: content-length against the DATA.
        sends(
            "8.1.2.6/1",
            &[
                headers(1, END_HEADERS, &post_1),
                data(1, END_STREAM, b"test"),
            ],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        sends(
            "8.1.2.6/2",
            &[
                headers(1, END_HEADERS, &post_1),
                data(1, 0, b"test"),
                data(1, END_STREAM, b"test"),
            ],
            StreamError(&[PROTOCOL_ERROR]),
        ),
        // 8.2 Server Push: a client cannot push.
        sends(
            "8.2/1",
            &[frame(PUSH_PROMISE, END_HEADERS, 1, &push)],
            ConnectionError(&[PROTOCOL_ERROR]),
        ),
    ])
    .await;
}

// ---- h2spec's "hpack" section (RFC 7541) ----------------------------------------------------

/// A request whose block starts with a table size update one above the table size the
/// server announced (4,096 when it announces none), acknowledged in the handshake.
fn table_above_the_announced(conn: &Conn) -> Vec<u8> {
    const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
    let table = conn
        .settings
        .iter()
        .find(|(id, _)| *id == SETTINGS_HEADER_TABLE_SIZE)
        .map_or(4_096, |(_, v)| *v);
    let mut b = Vec::new();
    int(&mut b, 5, 0x20, table as usize + 1);
    b.extend(get_block());
    headers(1, ES_EH, &b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_decoding_errors() {
    // Each is h2spec's common request with a bad representation after (or before) it, a
    // decoding error: a connection error COMPRESSION_ERROR (RFC 9113 4.3).
    let with = |rep: &[u8]| headers(1, ES_EH, &[get_block(), rep.to_vec()].concat());
    let compression = || ConnectionError(&[COMPRESSION_ERROR]);
    section(vec![
        // 2.3.3 Index Address Space: index 126, beyond both tables.
        sends("hpack/2.3.3/1", &[with(b"\xfe")], compression()),
        // 4.2 Maximum Table Size: a size update at the end of the block.
        sends("hpack/4.2/1", &[with(b"\x21")], compression()),
        // 5.2 String Literal Representation: `x-test: test` with Huffman padding longer
        // than 7 bits, padding of zeros, and the EOS symbol inside.
        sends(
            "hpack/5.2/1",
            &[with(b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x49\x50\x9f\xff")],
            compression(),
        ),
        sends(
            "hpack/5.2/2",
            &[with(b"\x00\x85\xf2\xb2\x4a\x84\xff\x83\x49\x50\x90")],
            compression(),
        ),
        sends(
            "hpack/5.2/3",
            &[with(
                b"\x00\x85\xf2\xb2\x4a\x87\xff\xff\xff\xfd\x25\x42\x7f",
            )],
            compression(),
        ),
        // 6.1 Indexed Header Field Representation: index 0.
        sends("hpack/6.1/1", &[with(b"\x80")], compression()),
        // 6.3 Dynamic Table Size Update: above SETTINGS_HEADER_TABLE_SIZE.
        case(
            "hpack/6.3/1",
            vec![
                Step::SendFor(table_above_the_announced),
                Then(compression()),
            ],
        ),
    ])
    .await;
}

// ---- h2spec's "generic" section: what a server must take ----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generic_accepted() {
    let get = get_block();
    let post = post_block();
    let answered = || HeadersOn(1);
    let with = |rep: &[u8]| headers(1, ES_EH, &[get.clone(), rep.to_vec()].concat());
    let before = |rep: &[u8]| headers(1, ES_EH, &[rep.to_vec(), get.clone()].concat());
    let mut padded_headers = vec![8];
    padded_headers.extend_from_slice(&get);
    padded_headers.extend_from_slice(&[0; 8]);
    let mut prioritized = vec![0, 0, 0, 0, 255];
    prioritized.extend_from_slice(&get);
    let window_0 = settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 0)]);
    section(vec![
        // 1 Starting HTTP/2: the server's SETTINGS first.
        Case {
            id: "generic/1/1",
            handshake: false,
            steps: vec![
                Send(
                    [
                        PREFACE.to_vec(),
                        settings(&[(SETTINGS_INITIAL_WINDOW_SIZE, 65_535)]),
                    ]
                    .concat(),
                ),
                Then(ServerSettings),
            ],
        },
        // 2 Streams and Multiplexing: frames allowed on idle, half-closed (remote) and
        // closed streams.
        sends(
            "generic/2/1",
            &[priority(1, 0, 255), ping(0, [0; 8])],
            Kind(PING),
        ),
        sends(
            "generic/2/2",
            &[
                window_0.clone(),
                headers(1, ES_EH, &get),
                window_update(1, 1),
            ],
            Kind(DATA),
        ),
        sends(
            "generic/2/3",
            &[
                window_0,
                headers(1, ES_EH, &get),
                priority(1, 0, 255),
                window_update(1, 1),
            ],
            Kind(DATA),
        ),
        sends(
            "generic/2/4",
            &[headers(1, ES_EH, &get), rst(1, CANCEL), ping(0, [0; 8])],
            PingAckOrClosed,
        ),
        case(
            "generic/2/5",
            vec![
                Send(headers(1, ES_EH, &get)),
                Then(StreamEnd),
                Send([priority(1, 0, 255), ping(0, [0; 8])].concat()),
                Then(PingAckOrClosed),
            ],
        ),
        // 3.4, 3.7, 3.8: RST_STREAM, PING and GOAWAY taken.
        sends(
            "generic/3.4/1",
            &[
                headers(1, END_HEADERS, &get),
                rst(1, CANCEL),
                ping(0, [0; 8]),
            ],
            PingAckOrClosed,
        ),
        sends(
            "generic/3.7/1",
            &[ping(0, *b"h2spec\0\0")],
            PingAck {
                answer: *b"h2spec\0\0",
                never: *b"invalid\0",
            },
        ),
        sends(
            "generic/3.8/1",
            &[frame(GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\0h2spec")],
            Closed,
        ),
        // 3.10 CONTINUATION: the block split in two and in three.
        sends(
            "generic/3.10/1",
            &[
                headers(1, END_STREAM, &get[..5]),
                continuation(1, END_HEADERS, &get[5..]),
            ],
            answered(),
        ),
        sends(
            "generic/3.10/2",
            &[
                headers(1, END_STREAM, &get[..5]),
                continuation(1, 0, &get[5..10]),
                continuation(1, END_HEADERS, &get[10..]),
            ],
            answered(),
        ),
        // 3.1 DATA: one, several, padded.
        sends(
            "generic/3.1/1",
            &[headers(1, END_HEADERS, &post), data(1, END_STREAM, b"test")],
            answered(),
        ),
        sends(
            "generic/3.1/2",
            &[
                headers(1, END_HEADERS, &post),
                data(1, 0, b"test"),
                data(1, END_STREAM, b"test"),
            ],
            answered(),
        ),
        sends(
            "generic/3.1/3",
            &[
                headers(1, END_HEADERS, &post),
                frame(DATA, END_STREAM | PADDED, 1, b"\x06testpadded"),
            ],
            answered(),
        ),
        // 3.2 HEADERS: plain, padded, with priority.
        sends("generic/3.2/1", &[headers(1, ES_EH, &get)], answered()),
        sends(
            "generic/3.2/2",
            &[headers(1, ES_EH | PADDED, &padded_headers)],
            answered(),
        ),
        sends(
            "generic/3.2/3",
            &[headers(1, ES_EH | PRIORITY_FLAG, &prioritized)],
            answered(),
        ),
        // 3.3 PRIORITY: weights 1 and 256, a dependency, exclusive, an idle stream above.
        sends(
            "generic/3.3/1",
            &[priority(1, 0, 0), headers(1, ES_EH, &get)],
            answered(),
        ),
        sends(
            "generic/3.3/2",
            &[priority(1, 0, 255), headers(1, ES_EH, &get)],
            answered(),
        ),
        sends(
            "generic/3.3/3",
            &[priority(3, 1, 0), headers(1, ES_EH, &get)],
            answered(),
        ),
        sends(
            "generic/3.3/4",
            &[priority(1, 0x8000_0000, 0), headers(1, ES_EH, &get)],
            answered(),
        ),
        sends(
            "generic/3.3/5",
            &[priority(3, 0, 255), headers(1, ES_EH, &get)],
            answered(),
        ),
        // 3.5 SETTINGS: every defined parameter, acknowledged.
        sends(
            "generic/3.5/1",
            &[settings(&[
                (0x1, 4_096),
                (SETTINGS_ENABLE_PUSH, 1),
                (SETTINGS_MAX_CONCURRENT_STREAMS, 100),
                (SETTINGS_INITIAL_WINDOW_SIZE, 65_535),
                (SETTINGS_MAX_FRAME_SIZE, 16_384),
                (0x6, 100),
            ])],
            SettingsAck,
        ),
        // 3.9 WINDOW_UPDATE on the connection and on a stream.
        sends(
            "generic/3.9/1",
            &[window_update(0, 1), ping(0, [0; 8])],
            Kind(PING),
        ),
        sends(
            "generic/3.9/2",
            &[headers(1, ES_EH, &get), window_update(1, 1)],
            Kind(HEADERS),
        ),
        // 4 HTTP Message Exchanges: GET, HEAD, POST, POST with trailers.
        sends("generic/4/1", &[headers(1, ES_EH, &get)], answered()),
        sends(
            "generic/4/2",
            &[headers(1, ES_EH, &block(&request("HEAD", &[])))],
            answered(),
        ),
        sends(
            "generic/4/3",
            &[headers(1, END_HEADERS, &post), data(1, END_STREAM, b"test")],
            answered(),
        ),
        sends(
            "generic/4/4",
            &[
                headers(
                    1,
                    END_HEADERS,
                    &block(&request("POST", &[("trailer", "x-test")])),
                ),
                data(1, 0, b"test"),
                headers(1, ES_EH, &block(&[("x-test", "ok")])),
            ],
            answered(),
        ),
        // 5 HPACK: each representation after the common request (`user-agent` or
        // `x-test`, plain and Huffman-coded; h2spec sends the same bytes for 5/12 and
        // 5/13), and table size updates before it.
        sends("generic/5/1", &[with(b"\xba")], answered()),
        sends(
            "generic/5/2",
            &[with(
                b"\x40\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
            )],
            answered(),
        ),
        sends(
            "generic/5/3",
            &[with(b"\x40\x0auser-agent\x06h2spec")],
            answered(),
        ),
        sends(
            "generic/5/4",
            &[with(b"\x40\x06x-test\x06h2spec")],
            answered(),
        ),
        sends(
            "generic/5/5",
            &[with(b"\x40\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4")],
            answered(),
        ),
        sends(
            "generic/5/6",
            &[with(b"\x00\x0auser-agent\x06h2spec")],
            answered(),
        ),
        sends(
            "generic/5/7",
            &[with(
                b"\x00\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
            )],
            answered(),
        ),
        sends(
            "generic/5/8",
            &[with(b"\x00\x06x-test\x06h2spec")],
            answered(),
        ),
        sends(
            "generic/5/9",
            &[with(b"\x00\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4")],
            answered(),
        ),
        sends(
            "generic/5/10",
            &[with(b"\x10\x0auser-agent\x06h2spec")],
            answered(),
        ),
        sends(
            "generic/5/11",
            &[with(
                b"\x10\x87\xb5\x05\xb1\x61\xcc\x5a\x93\x84\x9c\x48\xac\xa4",
            )],
            answered(),
        ),
        sends(
            "generic/5/12",
            &[with(b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4")],
            answered(),
        ),
        sends(
            "generic/5/13",
            &[with(b"\x10\x85\xf2\xb2\x4a\x84\xff\x84\x9c\x48\xac\xa4")],
            answered(),
        ),
        sends("generic/5/14", &[before(b"\x20")], answered()),
        sends("generic/5/15", &[before(b"\x20\x3f\xe1\x1f")], answered()),
    ])
    .await;
}
