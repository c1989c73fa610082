//! The processes of the L7 benchmark, in the benchmark node's network namespace, on its
//! loopback: the backend (nginx, one worker, a fixed small body), nginx and haproxy as
//! reverse proxies (one worker each, Debian's packages), and the Envoy config that makes the
//! `myelin` agent the same hop (a `bind_to_port` listener routing everything to a STATIC
//! cluster). For `myelin-mesh` a second backend runs in the backend pod and the client in the
//! client pod. Every config is written under the run's scratch directory.
//!
//! All three proxies take HTTP/1.1 and h2c (HTTP/2 prior knowledge) from the client and speak
//! HTTP/1.1 with keep-alive to the backend, reusing upstream connections: nginx with an
//! `upstream { keepalive }` pool, haproxy with its default connection reuse, Myelin with its
//! per-endpoint pool (its default for a cluster without `http2_protocol_options`).

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

/// The fixed response body of the backend (100 bytes, like `myelin-bench`'s small file).
pub const BODY: &str =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz!\n";

/// Ports on the node's loopback (its own netns: nothing else binds there).
pub mod port {
    /// The backend, HTTP/1.1.
    pub const BACKEND_H1: u16 = 18080;
    /// The backend, h2c (for the direct HTTP/2 runs).
    pub const BACKEND_H2: u16 = 18081;
    pub const NGINX_H1: u16 = 18090;
    pub const NGINX_H2: u16 = 18091;
    /// haproxy detects the h2c preface itself: one port for both.
    pub const HAPROXY: u16 = 18092;
    /// Myelin sniffs the protocol: one port for both.
    pub const MYELIN: u16 = 18093;
    /// `myelin-hyper-floor` sniffs it too.
    pub const HYPER_FLOOR: u16 = 18094;
    /// The same binary as `codec-floor`.
    pub const CODEC_FLOOR: u16 = 18095;
}

fn nginx_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
"
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "    access_log off;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
"
    )
}

/// The backend: one nginx process answering every request with [`BODY`] (and a
/// `Content-Length`), over HTTP/1.1 and h2c, on `listen` (the node's loopback, or any
/// address of the backend pod for `myelin-mesh`).
pub fn backend_nginx(dir: &Path, listen: Ipv4Addr) -> String {
    let mut s = nginx_common(dir);
    let _ = write!(
        s,
        "http {{
{common}    default_type text/plain;
    server {{
        listen {listen}:{h1};
        listen {listen}:{h2} http2;
        location / {{ return 200 \"{body}\"; }}
    }}
}}
",
        common = nginx_http_common(dir),
        h1 = port::BACKEND_H1,
        h2 = port::BACKEND_H2,
        body = BODY.escape_default(),
    );
    s
}

/// nginx as the reverse proxy: one process, an upstream keep-alive pool to the backend.
pub fn proxy_nginx(dir: &Path) -> String {
    let mut s = nginx_common(dir);
    let _ = write!(
        s,
        "http {{
{common}    upstream backend {{
        server 127.0.0.1:{backend};
        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{h1};
        listen 127.0.0.1:{h2} http2;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }}
    }}
}}
",
        common = nginx_http_common(dir),
        backend = port::BACKEND_H1,
        h1 = port::NGINX_H1,
        h2 = port::NGINX_H2,
    );
    s
}

/// haproxy as the reverse proxy: one thread, HTTP mode, no logging.
pub fn proxy_haproxy() -> String {
    format!(
        "global
    nbthread 1
    maxconn 4096

defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s

frontend bench
    bind 127.0.0.1:{listen}
    default_backend backend

backend backend
    server backend 127.0.0.1:{backend}
",
        listen = port::HAPROXY,
        backend = port::BACKEND_H1,
    )
}

/// The Envoy sections that make the agent the hop, two ways:
/// - `bench` (the `myelin` target): a reverse proxy on the node's loopback, a listener with
///   `bind_to_port` (the default) and an HTTP connection manager whose one route sends
///   everything to a STATIC cluster of the loopback backend;
/// - `mesh` (the `myelin-mesh` target): the listener of the backend pod's address
///   (`bind_to_port: false`), which the client pod's captured connections reach, with the same
///   route to a STATIC cluster of the backend pod: the hop as the mesh makes it.
pub fn myelin_envoy(backend_pod: Ipv4Addr) -> String {
    let hcm = |name: &str, cluster: &str| {
        format!(
            r#"    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          # The readiness probe (`conformance::mesh::http_get`) speaks HTTP/1.0, which a
          # connection manager refuses by default (426), as Envoy's does.
          http_protocol_options: {{ accept_http_10: true }}
          route_config:
            name: {name}
            virtual_hosts:
            - name: {cluster}
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: {cluster} }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
"#
        )
    };
    let cluster = |name: &str, addr: Ipv4Addr| {
        format!(
            r#"  - name: {name}
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {addr}, port_value: {port} }} }} }}
"#,
            port = port::BACKEND_H1,
        )
    };
    format!(
        r#"static_resources:
  listeners:
  - name: bench
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: {listen} }} }}
{bench}  - name: mesh
    address: {{ socket_address: {{ address: {backend_pod}, port_value: {backend} }} }}
    bind_to_port: false
{mesh}  clusters:
{loopback}{pod}"#,
        listen = port::MYELIN,
        backend = port::BACKEND_H1,
        bench = hcm("bench", "backend"),
        mesh = hcm("mesh", "backend-pod"),
        loopback = cluster("backend", Ipv4Addr::LOCALHOST),
        pod = cluster("backend-pod", backend_pod),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_100_bytes_and_survives_nginx_quoting() {
        assert_eq!(BODY.len(), 100);
        let conf = backend_nginx(Path::new("/tmp/x"), Ipv4Addr::LOCALHOST);
        assert!(conf.contains(r#"return 200 "0123"#), "{conf}");
        assert!(conf.contains(r#"!\n";"#), "{conf}");
    }
}
