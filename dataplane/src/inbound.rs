//! The inbound side the kernel enforces (STRICT) or records (PERMISSIVE), in user space: the
//! node's own addresses for the drop reasons, each workload's kernel flags, and the
//! plaintext connections local pods accepted, turned into destination-side golden TCP
//! metrics with `connection_security_policy="none"`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use myelin_ebpf_loader::{PlaintextCount, PlaintextMap, WL_NO_SPLICE, WL_STRICT};
use myelin_proxy::golden::{GoldenMetrics, TcpRecord, UNKNOWN};
use myelin_proxy::model::ProxyConfig;

use crate::config::{InboundMode, Workload};

/// How often the kernel's plaintext record is read into the metrics.
pub const PLAINTEXT_POLL: Duration = Duration::from_secs(1);

/// The `WL_*` bits of a workload in the kernel maps.
pub fn kernel_flags(w: &Workload, spliced: bool) -> u32 {
    let mut flags = 0;
    if !spliced {
        flags |= WL_NO_SPLICE;
    }
    if w.mtls_mode == InboundMode::Strict {
        flags |= WL_STRICT;
    }
    flags
}

/// The IPv4 addresses of this network namespace's interfaces (the agent runs in the node's):
/// a STRICT drop of a SYN from one of them is counted as `node`.
pub fn node_addresses() -> std::io::Result<Vec<Ipv4Addr>> {
    let mut out: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
        .map_err(std::io::Error::from)?
        .filter_map(|i| i.address?.as_sockaddr_in().map(|a| a.ip()))
        .filter(|ip| !ip.is_loopback())
        .collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// Turns the kernel's cumulative per-(pod, port, peer) counts into metric increments.
#[derive(Debug, Default)]
pub struct PlaintextRecorder {
    seen: HashMap<(SocketAddrV4, Ipv4Addr), (u64, u64)>,
}

impl PlaintextRecorder {
    /// Records what changed since the last call. An entry the LRU evicted and the kernel
    /// started again counts from zero (its new counts are all new).
    pub fn record(&mut self, now: &[PlaintextCount], golden: &GoldenMetrics, pc: &ProxyConfig) {
        let mut next = HashMap::with_capacity(now.len());
        for c in now {
            let key = (c.pod, c.peer);
            let (opened0, closed0) = match self.seen.get(&key) {
                Some(&(o, cl)) if o <= c.opened && cl <= c.closed => (o, cl),
                _ => (0, 0),
            };
            next.insert(key, (c.opened, c.closed));
            let (opened, closed) = (c.opened - opened0, c.closed - closed0);
            if opened == 0 && closed == 0 {
                continue;
            }
            let counters = golden.tcp(&record(c, pc));
            counters.opened.inc_by(opened);
            counters.closed.inc_by(closed);
        }
        self.seen = next;
    }
}

/// The destination-side labels of plaintext from `c.peer` into `c.pod`: the source is named
/// by address when it is a known workload, but has no principal (nothing authenticated it).
fn record(c: &PlaintextCount, pc: &ProxyConfig) -> TcpRecord {
    let unknown = || Arc::<str>::from(UNKNOWN);
    let peer = IpAddr::V4(c.peer);
    let (src_workload, src_ns) = if let Some(w) = pc.workload_by_ip(peer) {
        (w.name.as_str().into(), w.namespace.as_str().into())
    } else if let Some(r) = pc.remote_by_ip(peer) {
        (r.name.as_str().into(), r.namespace.as_str().into())
    } else {
        (unknown(), unknown())
    };
    let (dst_workload, dst_ns, dst_principal) = match pc.workload_by_ip(IpAddr::V4(*c.pod.ip())) {
        Some(w) => (
            w.name.as_str().into(),
            w.namespace.as_str().into(),
            pc.principal(w).into(),
        ),
        None => (unknown(), unknown(), unknown()),
    };
    TcpRecord {
        reporter: "destination",
        source_workload: src_workload,
        source_namespace: src_ns,
        source_principal: unknown(),
        destination_service: Arc::clone(&dst_workload),
        destination_workload: dst_workload,
        destination_namespace: dst_ns,
        destination_principal: dst_principal,
        connection_security_policy: "none",
    }
}

/// Reads the kernel's plaintext record into the golden metrics every [`PLAINTEXT_POLL`].
pub async fn record_plaintext(
    map: Arc<PlaintextMap>,
    golden: Arc<GoldenMetrics>,
    pc: Arc<ProxyConfig>,
) {
    let mut recorder = PlaintextRecorder::default();
    let mut tick = tokio::time::interval(PLAINTEXT_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = map.read();
        recorder.record(&now, &golden, &pc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use myelin_proxy::golden::{GuardConfig, Naming};
    use prometheus_client::{encoding::text::encode, registry::Registry};

    fn count(pod: &str, peer: &str, opened: u64, closed: u64) -> PlaintextCount {
        PlaintextCount {
            pod: pod.parse().unwrap(),
            peer: peer.parse().unwrap(),
            opened,
            closed,
        }
    }

    fn value(text: &str, metric: &str, needle: &str) -> u64 {
        text.lines()
            .find(|l| l.starts_with(metric) && l.contains(needle))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse().unwrap())
            .unwrap_or(0)
    }

    #[test]
    fn cumulative_counts_become_increments_with_plaintext_labels() {
        let mut registry = Registry::default();
        let golden = GoldenMetrics::new(&mut registry, Naming::Myelin, GuardConfig::default());
        let pc = ProxyConfig::new(vec![myelin_proxy::model::Workload {
            name: "db".into(),
            namespace: "test".into(),
            service_account: "db".into(),
            ip: "10.77.1.2".parse().unwrap(),
        }])
        .unwrap();
        let mut r = PlaintextRecorder::default();
        r.record(&[count("10.77.1.2:9000", "10.99.7.2", 2, 1)], &golden, &pc);
        r.record(&[count("10.77.1.2:9000", "10.99.7.2", 5, 1)], &golden, &pc);
        // Evicted and started again: its counts are new.
        r.record(&[count("10.77.1.2:9000", "10.99.7.2", 1, 1)], &golden, &pc);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let labels = r#"destination_workload="db",destination_namespace="test""#;
        assert_eq!(
            value(&text, "myelin_tcp_connections_opened_total", labels),
            6,
            "{text}"
        );
        assert_eq!(
            value(&text, "myelin_tcp_connections_closed_total", labels),
            2
        );
        let line = text
            .lines()
            .find(|l| l.starts_with("myelin_tcp_connections_opened_total"))
            .unwrap();
        for want in [
            r#"reporter="destination""#,
            r#"source_workload="unknown""#,
            r#"source_principal="unknown""#,
            r#"destination_principal="spiffe://cluster.local/ns/test/sa/db""#,
            r#"connection_security_policy="none""#,
        ] {
            assert!(line.contains(want), "{want} in {line}");
        }
    }
}
