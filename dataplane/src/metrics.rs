//! Agent-level metrics: the kernel's counters (read on each scrape) and the splice mode.

use std::sync::Arc;

use myelin_ebpf_loader::Counters;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::ConstCounter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::selftest::SpliceState;

/// Exposes the per-CPU kernel counters, summed at scrape time.
#[derive(Debug)]
pub struct KernelCollector {
    counters: Arc<Counters>,
}

impl KernelCollector {
    pub fn new(counters: Arc<Counters>) -> Self {
        Self { counters }
    }
}

impl Collector for KernelCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let v = self.counters.read();
        for (name, help, value) in [
            ("captured_connections", "TCP connects of enrolled pods rewritten to the node proxy (kernel)", v.connects_captured),
            ("spliced_sockets", "Sockets put into the splice map (kernel)", v.sockets_inserted),
            ("spliced_messages", "Messages redirected socket to socket without crossing TCP/IP (kernel)", v.messages_spliced),
            ("spliced_bytes", "Bytes redirected socket to socket without crossing TCP/IP (kernel)", v.bytes_spliced),
            ("splice_misses", "Messages on spliced sockets that found no peer and went over TCP (kernel)", v.splice_misses),
            ("kernel_orig_dst_misses", "Connections to the capture address established without a recorded original destination (kernel)", v.orig_dst_misses),
            ("splice_insert_failures", "Sockets the kernel refused to put into the splice map", v.socket_insert_failures),
            ("splice_peer_waits", "First messages of a connection that waited (microseconds) for the peer socket to be spliced", v.peer_waits),
            ("inbound_plaintext_connections", "Connections local pods accepted from outside the proxy (PERMISSIVE plaintext; kernel)", v.plaintext_accepted),
            ("inbound_proxy_connections", "The proxy's connections to local pods, the ones STRICT workloads accept (kernel)", v.proxy_flows),
        ] {
            let c = ConstCounter::new(value);
            let m = encoder.encode_descriptor(name, help, None, c.metric_type())?;
            c.encode(m)?;
        }
        let mut family = encoder.encode_descriptor(
            "strict_dropped_connections",
            "TCP handshakes to STRICT workloads dropped by the kernel because they did not come through the node's proxy, by where they came from (node: a process of this node; local_pod: an uncaptured pod of this node; remote: anything else, e.g. another node)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, value) in [
            ("node", v.strict_drops_node),
            ("local_pod", v.strict_drops_local_pod),
            ("remote", v.strict_drops_remote),
        ] {
            let labels = ReasonLabels {
                reason: reason.into(),
            };
            ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkloadLabels {
    workload: String,
    namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// `myelin_splice_mode{mode} 1`, the reasons splicing was turned down, and which workloads
/// are spliced.
#[derive(Debug, Clone)]
pub struct SpliceMetrics {
    mode: Family<ModeLabels, Gauge>,
    fallbacks: Family<ReasonLabels, Gauge>,
    workloads: Family<WorkloadLabels, Gauge>,
}

impl SpliceMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            mode: Family::default(),
            fallbacks: Family::default(),
            workloads: Family::default(),
        };
        registry.register(
            "splice_mode",
            "The node's splice mode (1 for the mode in force): spliced, tcp, or pending during the self-test",
            m.mode.clone(),
        );
        registry.register(
            "workload_spliced",
            "1 when the workload's connections are spliced, 0 when they are proxied over plain TCP",
            m.workloads.clone(),
        );
        registry.register(
            "splice_fallback",
            "1 when the startup self-test or the configuration turned splicing (partly) off, by reason",
            m.fallbacks.clone(),
        );
        m
    }

    /// Records the decided state.
    pub fn record(&self, s: &SpliceState) {
        self.mode.clear();
        self.mode
            .get_or_create(&ModeLabels {
                mode: s.mode.to_string(),
            })
            .set(1);
        for r in &s.fallback_reasons {
            self.fallbacks
                .get_or_create(&ReasonLabels { reason: r.clone() })
                .set(1);
        }
        for w in &s.workloads {
            self.workloads
                .get_or_create(&WorkloadLabels {
                    workload: w.name.clone(),
                    namespace: w.namespace.clone(),
                })
                .set(i64::from(w.spliced));
        }
    }
}
