//! The JSON access log: one line per request and per opaque connection on the
//! `myelin::access` target, only when `access_log` is on. Its own test binary, because it
//! installs the process's tracing subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use http::{header, Request, StatusCode};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn get(path: &str) -> Request<ClientBody> {
    Request::get(path)
        .header(header::HOST, "upstream.test")
        .body(empty())
        .unwrap()
}

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn access_lines(&self) -> Vec<serde_json::Value> {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.lines()
            .filter(|l| l.contains("myelin::access"))
            .filter_map(|l| l.find('{').map(|i| &l[i..]))
            .map(|j| serde_json::from_str(j).expect("an access line is JSON"))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_json_line_per_request_and_connection_when_on() -> anyhow::Result<()> {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let server = http_server().await?;
    let mut on = config();
    on.access_log = true;
    let proxy = TestProxy::start(on).await?;
    let mut client = http_client(proxy.connect(server.addr).await?).await?;
    let resp = client.send_request(get("/hello?x=1")).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    body_string(resp).await?;
    // An opaque connection.
    let echo = echo_server().await?;
    let mut s = proxy.connect(echo).await?;
    s.write_all(b"\x00opaque").await?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await?;
    drop(s);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let lines = loop {
        let lines = captured.access_lines();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let http = lines
        .iter()
        .find(|l| l["method"] == "GET")
        .expect("a request line");
    assert_eq!(http["path"], "/hello?x=1");
    assert_eq!(http["response_code"], 200);
    assert_eq!(http["source_workload"], "client");
    assert_eq!(http["bytes_sent"], 5);
    assert!(http["duration_ms"].as_f64().unwrap() >= http["response_headers_ms"].as_f64().unwrap());
    let tcp = lines
        .iter()
        .find(|l| l["kind"] == "tcp")
        .expect("a connection line");
    assert_eq!(tcp["bytes_sent"], 7);
    assert_eq!(tcp["bytes_received"], 7);

    // Off (the default): nothing more is logged.
    let off = TestProxy::start(config()).await?;
    let before = captured.access_lines().len();
    let mut client = http_client(off.connect(server.addr).await?).await?;
    body_string(client.send_request(get("/hello")).await?).await?;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(captured.access_lines().len(), before);
    Ok(())
}
