//! Golden metrics: rate, errors and latency per workload pair, recorded once per request
//! (when its response has ended) and once per opaque connection.
//!
//! Two namings, chosen at start ([`Naming`]): Myelin's own (`myelin_requests_total`,
//! `myelin_request_duration_seconds`, ...) and Istio's standard names and label names
//! (`istio_requests_total`, `istio_request_duration_milliseconds`, `source_workload_namespace`,
//! ...), so Istio, Kiali and Grafana dashboards work unchanged. The label values are the
//! same in both.
//!
//! Cardinality guard: each metric keeps at most [`GuardConfig::max_series`] label sets; a
//! new one beyond the cap is recorded under a single overflow label set (every label
//! `overflow`) and counted in `myelin_metrics_series_overflow_total`; a label set that has
//! not been touched for [`GuardConfig::idle_expiry`] is removed and counted in
//! `myelin_metrics_series_expired_total`.
//!
//! Recording is on every request's path, so a label set that is already known costs one hash
//! of its values, one lookup and the metric updates: the guard's index keeps each label set's
//! metric handles, so the families' own maps (which hash the whole label set again, per
//! family) and the label allocations are only paid when a label set is new. A connection
//! remembers the label sets of its last requests ([`ConnGolden`]): the next request with the
//! same labels (most are) skips the hash and the comparison of its 13 values too.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::clock::{AtomicCoarse, Coarse};
use crate::lock;

/// Which names the golden metrics carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Naming {
    /// `myelin_requests_total{source_namespace=...}`, durations in seconds.
    #[default]
    Myelin,
    /// `istio_requests_total{source_workload_namespace=...}`, durations in milliseconds.
    Istio,
}

/// Limits of the cardinality guard.
#[derive(Debug, Clone, Copy)]
pub struct GuardConfig {
    /// Label sets per metric.
    pub max_series: usize,
    /// Label sets not touched for this long are removed.
    pub idle_expiry: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            max_series: 10_000,
            idle_expiry: Duration::from_secs(600),
        }
    }
}

/// Label value used when a value is not known (Istio's convention).
pub const UNKNOWN: &str = "unknown";

/// [`UNKNOWN`] as a label value: one shared allocation, cloned per request.
pub fn unknown() -> Arc<str> {
    static LABEL: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from(UNKNOWN));
    LABEL.clone()
}

/// A request's source: workload, namespace and principal (SPIFFE ID). One per client
/// connection, shared by its requests' records.
#[derive(Debug, Clone)]
pub struct SourceLabels {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub principal: Arc<str>,
}

/// A request's destination: workload, namespace, service (host name) and principal. A
/// connection keeps its last request's and shares them with the next when they match.
#[derive(Debug, Clone)]
pub struct DestinationLabels {
    pub workload: Arc<str>,
    pub namespace: Arc<str>,
    pub service: Arc<str>,
    pub principal: Arc<str>,
}

/// Everything known about one finished request. The labels are shared (one reference
/// count each per request, not one per label).
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `source` (the client's node) or `destination`.
    pub reporter: &'static str,
    pub source: Arc<SourceLabels>,
    pub destination: Arc<DestinationLabels>,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status (trailers, or headers of a trailers-only response); `None`: not gRPC.
    pub grpc_status: Option<u32>,
    /// Envoy response flags (`-` for none).
    pub response_flags: &'static str,
    /// `mutual_tls`, `none` (plaintext) or `unknown`.
    pub connection_security_policy: &'static str,
    pub duration: Duration,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// Everything known about one finished opaque TCP connection.
#[derive(Debug, Clone)]
pub struct TcpRecord {
    pub reporter: &'static str,
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_principal: Arc<str>,
    pub connection_security_policy: &'static str,
}

type Labels = Vec<(&'static str, Arc<str>)>;

const REQUEST_LABELS: [[&str; 2]; 13] = [
    ["reporter", "reporter"],
    ["source_workload", "source_workload"],
    ["source_namespace", "source_workload_namespace"],
    ["source_principal", "source_principal"],
    ["destination_workload", "destination_workload"],
    ["destination_namespace", "destination_workload_namespace"],
    ["destination_service", "destination_service"],
    ["destination_principal", "destination_principal"],
    ["request_protocol", "request_protocol"],
    ["response_code", "response_code"],
    ["grpc_status", "grpc_response_status"],
    ["response_flags", "response_flags"],
    ["connection_security_policy", "connection_security_policy"],
];

const TCP_LABELS: [[&str; 2]; 9] = [
    ["reporter", "reporter"],
    ["source_workload", "source_workload"],
    ["source_namespace", "source_workload_namespace"],
    ["source_principal", "source_principal"],
    ["destination_workload", "destination_workload"],
    ["destination_namespace", "destination_workload_namespace"],
    ["destination_service", "destination_service"],
    ["destination_principal", "destination_principal"],
    ["connection_security_policy", "connection_security_policy"],
];

fn names(table: &[[&'static str; 2]], naming: Naming) -> Vec<&'static str> {
    let i = match naming {
        Naming::Myelin => 0,
        Naming::Istio => 1,
    };
    table.iter().map(|row| row[i]).collect()
}

/// One label set in use: its labels, its last use and its metric handles (`H`).
struct Entry<H> {
    labels: Labels,
    live: Arc<Liveness>,
    handles: H,
}

/// A label set's last use (expiry is minutes: the coarse clock) and whether it is still in
/// its families; shared with the connections that remember it ([`ConnGolden`]). Both are
/// read and written only under the lock of the label set's [`Series`].
#[derive(Debug)]
struct Liveness {
    last: AtomicCoarse,
    /// Cleared when the label set expires (its handles are then out of the families).
    alive: AtomicBool,
}

/// The label sets in use by one group of families, indexed by a hash of their values so that
/// a known one is found without building its labels.
struct Series<H> {
    /// Seeded per process, like std's, and several times faster than SipHash on the ~200
    /// bytes of a label set (hashed on every request).
    hasher: foldhash::fast::RandomState,
    by_hash: HashMap<u64, Vec<Entry<H>>, foldhash::fast::RandomState>,
    len: usize,
    overflow: Labels,
    /// Created on the first overflow; never expires.
    overflow_handles: Option<H>,
}

impl<H: Clone> Series<H> {
    fn new(overflow: Labels) -> Self {
        Series {
            hasher: foldhash::fast::RandomState::default(),
            by_hash: HashMap::default(),
            len: 0,
            overflow,
            overflow_handles: None,
        }
    }

    fn hash(&self, values: &[&str]) -> u64 {
        let mut h = self.hasher.build_hasher();
        for v in values {
            h.write(v.as_bytes());
            // A separator, so that ("ab", "c") and ("a", "bc") differ.
            h.write_u8(0xff);
        }
        h.finish()
    }

    /// Removes the label sets idle for `expiry` or longer, appending their labels to `out`.
    fn expire(&mut self, expiry: Duration, out: &mut Vec<Labels>) {
        let before = out.len();
        self.by_hash.retain(|_, bucket| {
            bucket.retain(|e| {
                let keep = e.live.last.load().elapsed() < expiry;
                if !keep {
                    e.live.alive.store(false, Ordering::Relaxed);
                    out.push(e.labels.clone());
                }
                keep
            });
            !bucket.is_empty()
        });
        self.len -= out.len() - before;
    }
}

/// The request metrics of one label set.
#[derive(Clone)]
struct RequestHandles(Arc<RequestMetrics>);

struct RequestMetrics {
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// `n` in decimal, written into `buf` (no allocation on the request path).
fn decimal(mut n: u32, buf: &mut [u8; 10]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("ASCII digits")
}

/// The golden metrics.
pub struct GoldenMetrics {
    naming: Naming,
    guard: GuardConfig,
    request_names: Vec<&'static str>,
    tcp_names: Vec<&'static str>,
    requests: Family<Labels, Counter>,
    duration: Family<Labels, Histogram, fn() -> Histogram>,
    request_bytes: Family<Labels, Histogram, fn() -> Histogram>,
    response_bytes: Family<Labels, Histogram, fn() -> Histogram>,
    tcp_sent: Family<Labels, Counter>,
    tcp_received: Family<Labels, Counter>,
    tcp_opened: Family<Labels, Counter>,
    tcp_closed: Family<Labels, Counter>,
    request_series: Mutex<Series<RequestHandles>>,
    tcp_series: Mutex<Series<TcpCounters>>,
    overflowed: Counter,
    expired: Counter,
}

impl std::fmt::Debug for GoldenMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoldenMetrics")
            .field("naming", &self.naming)
            .field("guard", &self.guard)
            .finish_non_exhaustive()
    }
}

fn duration_seconds() -> Histogram {
    // 0.5 ms .. ~65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn duration_millis() -> Histogram {
    // Istio's buckets.
    Histogram::new([
        0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
        30000.0, 60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
    ])
}

fn sizes() -> Histogram {
    // 1 B .. 1 GB in decades (Istio's size buckets).
    Histogram::new(exponential_buckets(1.0, 10.0, 10))
}

impl GoldenMetrics {
    /// Registers the metrics in `root` (no prefix: the names carry `myelin_` or `istio_`).
    pub fn new(root: &mut Registry, naming: Naming, guard: GuardConfig) -> Self {
        let request_names = names(&REQUEST_LABELS, naming);
        let tcp_names = names(&TCP_LABELS, naming);
        let overflow = |names: &[&'static str]| -> Labels {
            names.iter().map(|n| (*n, Arc::from("overflow"))).collect()
        };
        let m = GoldenMetrics {
            naming,
            guard,
            requests: Family::default(),
            duration: Family::new_with_constructor(match naming {
                Naming::Myelin => duration_seconds,
                Naming::Istio => duration_millis,
            }),
            request_bytes: Family::new_with_constructor(sizes),
            response_bytes: Family::new_with_constructor(sizes),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            request_series: Mutex::new(Series::new(overflow(&request_names))),
            tcp_series: Mutex::new(Series::new(overflow(&tcp_names))),
            request_names,
            tcp_names,
            overflowed: Counter::default(),
            expired: Counter::default(),
        };
        let p = match naming {
            Naming::Myelin => "myelin",
            Naming::Istio => "istio",
        };
        root.register(
            format!("{p}_requests"),
            "Requests, by source and destination workload, response code and flags",
            m.requests.clone(),
        );
        match naming {
            Naming::Myelin => root.register_with_unit(
                "myelin_request_duration",
                "Request duration, from the request's start to the end of the response",
                Unit::Seconds,
                m.duration.clone(),
            ),
            Naming::Istio => root.register(
                "istio_request_duration_milliseconds",
                "Request duration in milliseconds",
                m.duration.clone(),
            ),
        }
        root.register_with_unit(
            format!("{p}_request"),
            "Request body sizes",
            Unit::Bytes,
            m.request_bytes.clone(),
        );
        root.register_with_unit(
            format!("{p}_response"),
            "Response body sizes",
            Unit::Bytes,
            m.response_bytes.clone(),
        );
        root.register(
            format!("{p}_tcp_sent_bytes"),
            "Bytes the client sent on opaque TCP connections",
            m.tcp_sent.clone(),
        );
        root.register(
            format!("{p}_tcp_received_bytes"),
            "Bytes the client received on opaque TCP connections",
            m.tcp_received.clone(),
        );
        root.register(
            format!("{p}_tcp_connections_opened"),
            "Opaque TCP connections opened",
            m.tcp_opened.clone(),
        );
        root.register(
            format!("{p}_tcp_connections_closed"),
            "Opaque TCP connections closed",
            m.tcp_closed.clone(),
        );
        root.register(
            "myelin_metrics_series_overflow",
            "Golden-metric samples recorded under the overflow label set because a metric had reached its series cap",
            m.overflowed.clone(),
        );
        root.register(
            "myelin_metrics_series_expired",
            "Golden-metric label sets removed after being idle",
            m.expired.clone(),
        );
        m
    }

    /// Metrics registered nowhere (tests, tools).
    pub fn unregistered() -> Self {
        Self::new(
            &mut Registry::default(),
            Naming::Myelin,
            GuardConfig::default(),
        )
    }

    /// The naming in use.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Records one finished request.
    pub fn record_request(&self, r: &RequestRecord) {
        let (handles, _) = self.request_handles(r);
        self.observe(&handles, r);
    }

    /// The handles of `r`'s label set, found by its values, with its liveness (none for the
    /// overflow set: a label set recorded there is admitted once there is room again).
    fn request_handles(&self, r: &RequestRecord) -> (RequestHandles, Option<Arc<Liveness>>) {
        let (mut code_buf, mut grpc_buf) = ([0; 10], [0; 10]);
        let code = decimal(r.response_code.into(), &mut code_buf);
        let grpc = r.grpc_status.map_or("-", |s| decimal(s, &mut grpc_buf));
        let (s, d) = (&r.source, &r.destination);
        let values: [&str; 13] = [
            r.reporter,
            &s.workload,
            &s.namespace,
            &s.principal,
            &d.workload,
            &d.namespace,
            &d.service,
            &d.principal,
            r.request_protocol,
            code,
            grpc,
            r.response_flags,
            r.connection_security_policy,
        ];
        self.admit(&self.request_series, &self.request_names, &values, |l| {
            RequestHandles(Arc::new(RequestMetrics {
                requests: self.requests.get_or_create_owned(l),
                duration: self.duration.get_or_create_owned(l),
                request_bytes: self.request_bytes.get_or_create_owned(l),
                response_bytes: self.response_bytes.get_or_create_owned(l),
            }))
        })
    }

    /// Whether a remembered label set is still in its families; if so, it counts as used now.
    fn touch(&self, live: &Liveness) -> bool {
        let _series = lock(&self.request_series);
        let alive = live.alive.load(Ordering::Relaxed);
        if alive {
            live.last.store(Coarse::now());
        }
        alive
    }

    /// Records `r` into its label set's handles `h`.
    fn observe(&self, h: &RequestHandles, r: &RequestRecord) {
        let m = &h.0;
        m.requests.inc();
        let d = match self.naming {
            Naming::Myelin => r.duration.as_secs_f64(),
            Naming::Istio => r.duration.as_secs_f64() * 1000.0,
        };
        m.duration.observe(d);
        m.request_bytes.observe(r.request_bytes as f64);
        m.response_bytes.observe(r.response_bytes as f64);
    }

    /// The counters of one opaque connection: bump `opened` now, the byte counters as
    /// bytes flow, `closed` at the end.
    pub fn tcp(&self, r: &TcpRecord) -> TcpCounters {
        let values: [&str; 9] = [
            r.reporter,
            &r.source_workload,
            &r.source_namespace,
            &r.source_principal,
            &r.destination_workload,
            &r.destination_namespace,
            &r.destination_service,
            &r.destination_principal,
            r.connection_security_policy,
        ];
        self.admit(&self.tcp_series, &self.tcp_names, &values, |l| {
            TcpCounters {
                sent: self.tcp_sent.get_or_create_owned(l),
                received: self.tcp_received.get_or_create_owned(l),
                opened: self.tcp_opened.get_or_create_owned(l),
                closed: self.tcp_closed.get_or_create_owned(l),
            }
        })
        .0
    }

    /// The metric handles to record into, with their label set's liveness: those of
    /// `values` if it is known or the cap allows it (`make` creates them for a new label
    /// set), else the overflow set's (no liveness).
    fn admit<H: Clone>(
        &self,
        series: &Mutex<Series<H>>,
        names: &[&'static str],
        values: &[&str],
        make: impl FnOnce(&Labels) -> H,
    ) -> (H, Option<Arc<Liveness>>) {
        let mut s = lock(series);
        let now = Coarse::now();
        let hash = s.hash(values);
        let known = s.by_hash.get_mut(&hash).and_then(|bucket| {
            bucket.iter_mut().find(|e| {
                e.labels
                    .iter()
                    .map(|(_, v)| &**v)
                    .eq(values.iter().copied())
            })
        });
        if let Some(e) = known {
            e.live.last.store(now);
            return (e.handles.clone(), Some(e.live.clone()));
        }
        if s.len >= self.guard.max_series {
            self.overflowed.inc();
            if s.overflow_handles.is_none() {
                s.overflow_handles = Some(make(&s.overflow));
            }
            return (s.overflow_handles.clone().expect("just set"), None);
        }
        let labels: Labels = names
            .iter()
            .zip(values)
            .map(|(n, v)| (*n, Arc::from(*v)))
            .collect();
        let handles = make(&labels);
        let live = Arc::new(Liveness {
            last: AtomicCoarse::new(now),
            alive: AtomicBool::new(true),
        });
        s.by_hash.entry(hash).or_default().push(Entry {
            labels,
            live: live.clone(),
            handles: handles.clone(),
        });
        s.len += 1;
        (handles, Some(live))
    }

    /// Removes label sets idle for longer than the expiry. The agent calls it periodically.
    pub fn expire_idle(&self) {
        let expiry = self.guard.idle_expiry;
        let mut expired = Vec::new();
        lock(&self.request_series).expire(expiry, &mut expired);
        lock(&self.tcp_series).expire(expiry, &mut expired);
        for labels in &expired {
            for f in [
                &self.requests,
                &self.tcp_sent,
                &self.tcp_received,
                &self.tcp_opened,
                &self.tcp_closed,
            ] {
                f.remove(labels);
            }
            for f in [&self.duration, &self.request_bytes, &self.response_bytes] {
                f.remove(labels);
            }
            self.expired.inc();
        }
    }
}

/// One connection's way into the golden metrics: it remembers the label set of its last
/// request for each reporter, and a request with the same labels (the same source and
/// destination records, code, gRPC status, flags, protocol and policy: nearly every request
/// on a connection) records into it without hashing and comparing the 13 values. A
/// remembered label set that has expired since is looked up again.
pub struct ConnGolden {
    metrics: Arc<GoldenMetrics>,
    /// `[source, destination]` reporter.
    memo: Mutex<[Option<Memo>; 2]>,
}

/// A label set a connection recorded into, by the record fields it came from. The label
/// records are compared by address: a connection shares them between its requests.
struct Memo {
    source: Arc<SourceLabels>,
    destination: Arc<DestinationLabels>,
    reporter: &'static str,
    request_protocol: &'static str,
    response_flags: &'static str,
    connection_security_policy: &'static str,
    response_code: u16,
    grpc_status: Option<u32>,
    live: Arc<Liveness>,
    handles: RequestHandles,
}

impl Memo {
    fn matches(&self, r: &RequestRecord) -> bool {
        // Equal strings mostly share their address (the same constant): that is checked first.
        let same = |a: &str, b: &str| std::ptr::eq(a, b) || a == b;
        Arc::ptr_eq(&self.source, &r.source)
            && Arc::ptr_eq(&self.destination, &r.destination)
            && self.response_code == r.response_code
            && self.grpc_status == r.grpc_status
            && same(self.reporter, r.reporter)
            && same(self.response_flags, r.response_flags)
            && same(self.request_protocol, r.request_protocol)
            && same(
                self.connection_security_policy,
                r.connection_security_policy,
            )
    }
}

impl ConnGolden {
    pub fn new(metrics: Arc<GoldenMetrics>) -> Self {
        Self {
            metrics,
            memo: Mutex::new([None, None]),
        }
    }

    /// Records one finished request of this connection.
    pub fn record_request(&self, r: &RequestRecord) {
        let slot = usize::from(r.reporter != "source");
        let mut memo = lock(&self.memo);
        if let Some(m) = memo[slot].as_ref().filter(|m| m.matches(r)) {
            if self.metrics.touch(&m.live) {
                self.metrics.observe(&m.handles, r);
                return;
            }
        }
        let (handles, live) = self.metrics.request_handles(r);
        self.metrics.observe(&handles, r);
        memo[slot] = live.map(|live| Memo {
            source: r.source.clone(),
            destination: r.destination.clone(),
            reporter: r.reporter,
            request_protocol: r.request_protocol,
            response_flags: r.response_flags,
            connection_security_policy: r.connection_security_policy,
            response_code: r.response_code,
            grpc_status: r.grpc_status,
            live,
            handles,
        });
    }
}

impl std::fmt::Debug for ConnGolden {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnGolden")
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// The counters of one opaque connection's label set.
#[derive(Debug, Clone)]
pub struct TcpCounters {
    pub sent: Counter,
    pub received: Counter,
    pub opened: Counter,
    pub closed: Counter,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    fn record(dst: &str, code: u16) -> RequestRecord {
        RequestRecord {
            reporter: "source",
            source: Arc::new(SourceLabels {
                workload: "client".into(),
                namespace: "ns-a".into(),
                principal: "spiffe://cluster.local/ns/ns-a/sa/client".into(),
            }),
            destination: Arc::new(DestinationLabels {
                workload: dst.into(),
                namespace: "ns-b".into(),
                service: format!("{dst}.ns-b.svc.cluster.local").into(),
                principal: UNKNOWN.into(),
            }),
            request_protocol: "grpc",
            response_code: code,
            grpc_status: Some(0),
            response_flags: "-",
            connection_security_policy: "none",
            duration: Duration::from_millis(12),
            request_bytes: 100,
            response_bytes: 2000,
        }
    }

    fn scrape(r: &Registry) -> String {
        let mut out = String::new();
        encode(&mut out, r).unwrap();
        out
    }

    /// The value of the `myelin_requests_total` series of `out` with all of `labels`.
    fn requests_total(out: &str, labels: &[(&str, &str)]) -> Option<String> {
        out.lines()
            .find(|l| {
                l.starts_with("myelin_requests_total{")
                    && labels
                        .iter()
                        .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(str::to_owned)
    }

    #[test]
    fn myelin_and_istio_names() {
        let mut reg = Registry::default();
        let m = GoldenMetrics::new(&mut reg, Naming::Myelin, GuardConfig::default());
        m.record_request(&record("server", 200));
        m.record_request(&record("server", 200));
        let out = scrape(&reg);
        assert!(out.contains("myelin_requests_total{reporter=\"source\",source_workload=\"client\",source_namespace=\"ns-a\",source_principal=\"spiffe://cluster.local/ns/ns-a/sa/client\",destination_workload=\"server\",destination_namespace=\"ns-b\",destination_service=\"server.ns-b.svc.cluster.local\",destination_principal=\"unknown\",request_protocol=\"grpc\",response_code=\"200\",grpc_status=\"0\",response_flags=\"-\",connection_security_policy=\"none\"} 2"), "{out}");
        assert!(
            out.contains("# TYPE myelin_request_duration_seconds histogram"),
            "{out}"
        );
        assert!(
            out.contains("# TYPE myelin_request_bytes histogram"),
            "{out}"
        );

        let mut reg = Registry::default();
        let m = GoldenMetrics::new(&mut reg, Naming::Istio, GuardConfig::default());
        m.record_request(&record("server", 503));
        let out = scrape(&reg);
        assert!(out.contains("istio_requests_total{reporter=\"source\",source_workload=\"client\",source_workload_namespace=\"ns-a\","), "{out}");
        assert!(out.contains("grpc_response_status=\"0\""), "{out}");
        assert!(
            out.contains("# TYPE istio_request_duration_milliseconds histogram"),
            "{out}"
        );
        // 12 ms lands in the 25 ms bucket, not the 10 ms one.
        let bucket = |le: &str| {
            out.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "istio_request_duration_milliseconds_bucket{{le=\"{le}\""
                    ))
                })
                .and_then(|l| l.rsplit(' ').next())
                .map(str::to_owned)
        };
        assert_eq!(bucket("10.0").as_deref(), Some("0"), "{out}");
        assert_eq!(bucket("25.0").as_deref(), Some("1"), "{out}");
        assert!(
            out.contains("# TYPE istio_response_bytes histogram"),
            "{out}"
        );
        let c = m.tcp(&TcpRecord {
            reporter: "source",
            source_workload: "a".into(),
            source_namespace: "n".into(),
            source_principal: UNKNOWN.into(),
            destination_workload: "b".into(),
            destination_namespace: "n".into(),
            destination_service: "b".into(),
            destination_principal: UNKNOWN.into(),
            connection_security_policy: "none",
        });
        c.opened.inc();
        c.sent.inc_by(10);
        let out = scrape(&reg);
        assert!(out.contains("istio_tcp_sent_bytes_total{reporter=\"source\",source_workload=\"a\",source_workload_namespace=\"n\""), "{out}");
        assert!(out.contains("istio_tcp_connections_opened_total{"), "{out}");
    }

    #[test]
    fn cap_and_expiry() {
        let mut reg = Registry::default();
        let m = GoldenMetrics::new(
            &mut reg,
            Naming::Myelin,
            GuardConfig {
                max_series: 2,
                idle_expiry: Duration::from_millis(50),
            },
        );
        m.record_request(&record("a", 200));
        m.record_request(&record("b", 200));
        m.record_request(&record("c", 200));
        m.record_request(&record("a", 200));
        let out = scrape(&reg);
        assert!(out.contains("destination_workload=\"a\""), "{out}");
        assert!(!out.contains("destination_workload=\"c\""), "{out}");
        assert!(
            out.contains("myelin_requests_total{reporter=\"overflow\""),
            "{out}"
        );
        assert!(
            out.contains("myelin_metrics_series_overflow_total 1"),
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(60));
        m.record_request(&record("b", 200));
        m.expire_idle();
        let out = scrape(&reg);
        assert!(!out.contains("destination_workload=\"a\""), "{out}");
        assert!(out.contains("destination_workload=\"b\""), "{out}");
        assert!(
            out.contains("myelin_metrics_series_expired_total 1"),
            "{out}"
        );
        // Room again: a new label set is admitted.
        m.record_request(&record("d", 200));
        assert!(scrape(&reg).contains("destination_workload=\"d\""));
        // The overflow set is not an idle series: it stays.
        assert!(scrape(&reg).contains("myelin_requests_total{reporter=\"overflow\""));
    }

    #[test]
    fn a_known_label_set_counts_into_the_same_series() {
        let mut reg = Registry::default();
        let m = GoldenMetrics::new(&mut reg, Naming::Myelin, GuardConfig::default());
        for code in [200, 200, 503, 200] {
            m.record_request(&record("a", code));
        }
        let mut r = record("a", 200);
        r.grpc_status = None;
        m.record_request(&r);
        let out = scrape(&reg);
        let count = |code: &str, grpc: &str| {
            requests_total(&out, &[("response_code", code), ("grpc_status", grpc)])
        };
        assert_eq!(count("200", "0").as_deref(), Some("3"), "{out}");
        assert_eq!(count("503", "0").as_deref(), Some("1"), "{out}");
        assert_eq!(count("200", "-").as_deref(), Some("1"), "{out}");
        assert!(out.contains("myelin_request_bytes_count{"), "{out}");
        assert_eq!(lock(&m.request_series).len, 3);
    }

    #[test]
    fn a_connection_records_into_the_label_sets_it_remembers_until_they_expire() {
        let mut reg = Registry::default();
        let m = Arc::new(GoldenMetrics::new(
            &mut reg,
            Naming::Myelin,
            GuardConfig {
                max_series: 10,
                idle_expiry: Duration::from_millis(50),
            },
        ));
        let conn = ConnGolden::new(m.clone());
        let count = |reporter: &str, code: &str| {
            requests_total(
                &scrape(&reg),
                &[("reporter", reporter), ("response_code", code)],
            )
        };
        let ok = record("a", 200);
        let mut failed = ok.clone();
        failed.response_code = 503;
        let mut dest = ok.clone();
        dest.reporter = "destination";
        for r in [&ok, &ok, &failed, &ok, &dest, &ok, &dest] {
            conn.record_request(r);
        }
        // A connection's records and the agent's own lookup meet in the same series.
        m.record_request(&record("a", 200));
        assert_eq!(count("source", "200").as_deref(), Some("5"));
        assert_eq!(count("source", "503").as_deref(), Some("1"));
        assert_eq!(count("destination", "200").as_deref(), Some("2"));
        assert_eq!(lock(&m.request_series).len, 3);
        {
            let memo = lock(&conn.memo);
            assert!(memo[0].as_ref().is_some_and(|m| m.response_code == 200));
            assert!(memo[1]
                .as_ref()
                .is_some_and(|m| m.reporter == "destination"));
        }
        // Expired while remembered: recorded again, not into handles out of their families.
        std::thread::sleep(Duration::from_millis(60));
        m.expire_idle();
        assert_eq!(lock(&m.request_series).len, 0);
        assert_eq!(count("source", "200"), None);
        conn.record_request(&ok);
        conn.record_request(&ok);
        assert_eq!(count("source", "200").as_deref(), Some("2"));
        assert_eq!(lock(&m.request_series).len, 1);
        // Recording through the memory keeps a label set from expiring.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            conn.record_request(&ok);
            m.expire_idle();
        }
        assert_eq!(count("source", "200").as_deref(), Some("6"));
    }

    #[test]
    fn decimals() {
        let mut buf = [0; 10];
        assert_eq!(decimal(0, &mut buf), "0");
        assert_eq!(decimal(200, &mut buf), "200");
        assert_eq!(decimal(u32::MAX, &mut buf), "4294967295");
    }
}
