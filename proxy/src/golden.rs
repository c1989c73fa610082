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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

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

/// Everything known about one finished request.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// `source` (the client's node) or `destination`.
    pub reporter: &'static str,
    /// Source workload, namespace and principal (SPIFFE ID).
    pub source_workload: Arc<str>,
    pub source_namespace: Arc<str>,
    pub source_principal: Arc<str>,
    /// Destination workload, namespace, service (host name) and principal.
    pub destination_workload: Arc<str>,
    pub destination_namespace: Arc<str>,
    pub destination_service: Arc<str>,
    pub destination_principal: Arc<str>,
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

/// The label sets in use by one group of families, with their last use.
struct Series {
    seen: HashMap<Labels, Instant>,
    overflow: Labels,
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
    request_series: Mutex<Series>,
    tcp_series: Mutex<Series>,
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

fn lock(m: &Mutex<Series>) -> MutexGuard<'_, Series> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            request_series: Mutex::new(Series {
                seen: HashMap::new(),
                overflow: overflow(&request_names),
            }),
            tcp_series: Mutex::new(Series {
                seen: HashMap::new(),
                overflow: overflow(&tcp_names),
            }),
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
        let code = r.response_code.to_string();
        let grpc = r
            .grpc_status
            .map_or_else(|| "-".to_string(), |s| s.to_string());
        let values: [&str; 13] = [
            r.reporter,
            &r.source_workload,
            &r.source_namespace,
            &r.source_principal,
            &r.destination_workload,
            &r.destination_namespace,
            &r.destination_service,
            &r.destination_principal,
            r.request_protocol,
            &code,
            &grpc,
            r.response_flags,
            r.connection_security_policy,
        ];
        let labels = self.admit(&self.request_series, &self.request_names, &values);
        self.requests.get_or_create(&labels).inc();
        let d = match self.naming {
            Naming::Myelin => r.duration.as_secs_f64(),
            Naming::Istio => r.duration.as_secs_f64() * 1000.0,
        };
        self.duration.get_or_create(&labels).observe(d);
        self.request_bytes
            .get_or_create(&labels)
            .observe(r.request_bytes as f64);
        self.response_bytes
            .get_or_create(&labels)
            .observe(r.response_bytes as f64);
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
        let labels = self.admit(&self.tcp_series, &self.tcp_names, &values);
        TcpCounters {
            sent: self.tcp_sent.get_or_create_owned(&labels),
            received: self.tcp_received.get_or_create_owned(&labels),
            opened: self.tcp_opened.get_or_create_owned(&labels),
            closed: self.tcp_closed.get_or_create_owned(&labels),
        }
    }

    /// The label set to record under: `values` if the cap allows, else the overflow set.
    fn admit(&self, series: &Mutex<Series>, names: &[&'static str], values: &[&str]) -> Labels {
        let labels: Labels = names
            .iter()
            .zip(values)
            .map(|(n, v)| (*n, Arc::from(*v)))
            .collect();
        let mut s = lock(series);
        let now = Instant::now();
        if let Some(seen) = s.seen.get_mut(&labels) {
            *seen = now;
            return labels;
        }
        if s.seen.len() >= self.guard.max_series {
            self.overflowed.inc();
            return s.overflow.clone();
        }
        s.seen.insert(labels.clone(), now);
        labels
    }

    /// Removes label sets idle for longer than the expiry. The agent calls it periodically.
    pub fn expire_idle(&self) {
        let expiry = self.guard.idle_expiry;
        let mut expired = Vec::new();
        for s in [&self.request_series, &self.tcp_series] {
            let mut s = lock(s);
            s.seen.retain(|labels, seen| {
                let keep = seen.elapsed() < expiry;
                if !keep {
                    expired.push(labels.clone());
                }
                keep
            });
        }
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
            source_workload: "client".into(),
            source_namespace: "ns-a".into(),
            source_principal: "spiffe://cluster.local/ns/ns-a/sa/client".into(),
            destination_workload: dst.into(),
            destination_namespace: "ns-b".into(),
            destination_service: format!("{dst}.ns-b.svc.cluster.local").into(),
            destination_principal: UNKNOWN.into(),
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
    }
}
