//! `myelin run`: load and attach the kernel programs, start the proxy, decide the splice mode
//! with a self-test, serve admin and metrics, and drain on SIGTERM/SIGINT.
//!
//! Order matters: the capture listener is bound and the proxy is accepting, with the static
//! resources of the file already published to it, before capture is switched on in the kernel,
//! so an enrolled pod never sees a refused connection (or a config the file does not describe)
//! because the agent is half started. ADS runs beside it (`crate::xds`); readiness does not
//! wait for the control plane.

use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use myelin_ebpf_loader::{cgroup_id, Counters, Dataplane, InstallOptions, OrigDstMap};
use myelin_proxy::{
    drain, golden::GoldenMetrics, metrics::ProxyMetrics, traffic::TrafficHandle, OrigDstLookup,
    Proxy,
};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tracing::{error, info, warn};

use crate::{
    admin,
    config::{Config, SpliceSetting},
    inbound,
    metrics::{KernelCollector, SpliceMetrics},
    mtls::Mtls,
    selftest::{self, SpliceMode, SpliceState},
    xds::{Xds, XdsDump, XdsView},
};

/// Options from the command line that override the file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--no-splice`: force splicing off.
    pub no_splice: bool,
    /// `--uninstall-on-exit`.
    pub uninstall_on_exit: bool,
}

/// What `/config_dump` shows.
#[derive(Debug, Serialize)]
pub struct Effective {
    pub config: Config,
    pub proxy: myelin_proxy::model::ProxyConfig,
    pub splice: SpliceState,
    pub kernel: KernelInfo,
}

/// Where the kernel side lives.
#[derive(Debug, Clone, Serialize)]
pub struct KernelInfo {
    pub pin_dir: String,
    pub reused_pins: bool,
    pub proxy_cgroup_id: u64,
}

/// Shared state of a running agent, read by the admin server.
#[derive(Debug)]
pub struct AgentState {
    pub ready: std::sync::atomic::AtomicBool,
    pub effective: ArcSwap<Effective>,
    /// The xDS store and ADS client, read when `/config_dump` is asked for.
    pub xds: XdsView,
}

/// What `/config_dump` shows: the agent's [`Effective`] state and, under `xds`, the config
/// store and the ADS client as they are at the time of the request.
#[derive(Debug, Serialize)]
pub struct ConfigDumpView<'a> {
    #[serde(flatten)]
    pub effective: &'a Effective,
    pub xds: XdsDump,
}

impl AgentState {
    /// The `/config_dump` document as of now, pretty JSON.
    pub fn config_dump_json(&self) -> serde_json::Result<Vec<u8>> {
        let effective = self.effective.load();
        serde_json::to_vec_pretty(&ConfigDumpView {
            effective: &effective,
            xds: self.xds.dump(),
        })
    }
}

struct MapLookup(Arc<OrigDstMap>);

impl OrigDstLookup for MapLookup {
    fn original_dst(&self, peer: SocketAddr, local: SocketAddr) -> Option<SocketAddr> {
        let v4 = |a: SocketAddr| match a.ip().to_canonical() {
            std::net::IpAddr::V4(ip) => Some(SocketAddrV4::new(ip, a.port())),
            std::net::IpAddr::V6(_) => None,
        };
        self.0.get(v4(peer)?, v4(local)?).map(SocketAddr::V4)
    }
}

/// How often idle golden-metric series are looked for: half the expiry, between 1 s and
/// 30 s. An idle series is gone at most one interval after `idle_expiry`.
pub fn expiry_sweep_interval(idle_expiry: Duration) -> Duration {
    (idle_expiry / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Removes idle golden-metric series periodically (on the admin runtime).
async fn expire_idle_series(golden: Arc<GoldenMetrics>, idle_expiry: Duration) {
    let mut tick = tokio::time::interval(expiry_sweep_interval(idle_expiry));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        golden.expire_idle();
    }
}

/// The cgroup v2 directory of the calling process.
pub fn own_cgroup(cgroup2: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .context("no cgroup v2 entry (0::) in /proc/self/cgroup")?;
    Ok(cgroup2.join(rel.trim_start_matches('/')))
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(config: Config, opts: RunOptions) -> anyhow::Result<()> {
    let cgroup2 = myelin_ebpf_loader::cgroup2_mount().context("probing the cgroup v2 mount")?;
    let own = own_cgroup(&cgroup2)?;
    if !own.starts_with(&config.cgroup_root) {
        anyhow::bail!(
            "the agent runs in cgroup {} which is outside cgroup_root {}: the kernel programs \
             only see sockets below cgroup_root, so the proxy's own connections could not be \
             told apart from the pods' (start the agent inside cgroup_root)",
            own.display(),
            config.cgroup_root.display()
        );
    }
    let proxy_cgroup = cgroup_id(&own)?;
    let mut workload_ids = Vec::new();
    for (i, w) in config.workloads.iter().enumerate() {
        let id = cgroup_id(&w.cgroup).with_context(|| {
            format!(
                "myelin.workloads[{i}].cgroup = {:?}: cannot stat the cgroup (does the pod exist?)",
                w.cgroup.display()
            )
        })?;
        if id == proxy_cgroup {
            anyhow::bail!("myelin.workloads[{i}].cgroup is the agent's own cgroup");
        }
        workload_ids.push(id);
    }

    // The config store with the file's static resources, published to the proxy's traffic
    // handle before the proxy exists; the ADS client is built here and started below.
    let xds = Xds::new(&config)?;

    let mut dp = Dataplane::install(&InstallOptions {
        instance: config.instance.clone(),
        cgroup: config.cgroup_root.clone(),
    })
    .context("installing the kernel programs")?;
    info!(pin_dir = %dp.pin_dir().display(), reused = dp.reused_pins, "kernel programs attached");

    // Capture off until the proxy is accepting.
    dp.set_config(config.capture, proxy_cgroup, 0)?;
    dp.set_exclusions(&config.excluded_ports, &config.excluded_cidrs)?;
    // Until the self-test has decided, no workload is spliced; STRICT holds from here on.
    for (w, id) in config.workloads.iter().zip(&workload_ids) {
        let flags = inbound::kernel_flags(w, false);
        dp.enroll(*id, flags)?;
        dp.add_local_pod(w.ip, flags)?;
    }
    match inbound::node_addresses() {
        Ok(addrs) => dp.set_node_addrs(&addrs)?,
        Err(e) => {
            warn!(error = %e, "listing the node's addresses (STRICT drops from this node will be counted as remote)")
        }
    }

    let mut registry = Registry::default();
    // The golden metrics carry their own prefix (`myelin_` or, with `naming: istio`,
    // Istio's `istio_`), so they sit on the root registry.
    let golden = Arc::new(GoldenMetrics::new(
        &mut registry,
        config.metrics.naming.into(),
        config.metrics.guard(),
    ));
    let sub = registry.sub_registry_with_prefix("myelin");
    let proxy_metrics = Arc::new(ProxyMetrics::new(sub));
    let splice_metrics = SpliceMetrics::new(sub);
    sub.register_collector(Box::new(KernelCollector::new(dp.counters())));
    xds.register(sub);
    // Certificates are issued here, before anything serves.
    let mtls = match &config.mtls {
        Some(m) => Some(Mtls::new(m, &config, &xds, sub)?),
        None => None,
    };
    let registry = Arc::new(registry);

    let proxy_config = Arc::new(config.proxy_config());
    let initial = SpliceState::pending();
    let state = Arc::new(AgentState {
        ready: Default::default(),
        effective: ArcSwap::from_pointee(Effective {
            config: config.clone(),
            proxy: (*proxy_config).clone(),
            splice: initial,
            kernel: KernelInfo {
                pin_dir: dp.pin_dir().display().to_string(),
                reused_pins: dp.reused_pins,
                proxy_cgroup_id: proxy_cgroup,
            },
        }),
        xds: xds.view(),
    });

    // Admin and metrics on their own small runtime, so control work never stalls traffic.
    let admin_handle = admin::spawn(
        config.admin_address,
        config.metrics_address,
        state.clone(),
        registry.clone(),
        vec![
            Box::pin(expire_idle_series(
                golden.clone(),
                config.metrics.idle_expiry,
            )),
            Box::pin(inbound::record_plaintext(
                dp.plaintext(),
                golden.clone(),
                proxy_config.clone(),
            )),
        ],
    )?;

    // The feed and the ADS client on their own runtime, like admin: control work off the data
    // path. The traffic handle already holds the static config.
    let traffic = xds.traffic();
    let control = xds.spawn()?;

    // One worker per CPU the agent may use; with one CPU, a single-threaded runtime on this
    // thread: the same one event loop, without the work-stealing scheduler's cross-thread
    // bookkeeping on every wake-up (benches/RESULTS.md).
    let rt = match std::thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("myelin-proxy")
            .build(),
    }
    .context("building the proxy runtime")?;

    let dp = Arc::new(Mutex::new(dp));
    let result = rt.block_on(serve(
        config.clone(),
        opts.clone(),
        dp.clone(),
        proxy_config,
        proxy_metrics,
        golden,
        traffic,
        splice_metrics,
        state.clone(),
        workload_ids,
        mtls,
    ));
    drop(control);
    drop(admin_handle);

    if config.uninstall_on_exit || opts.uninstall_on_exit {
        drop(dp);
        match myelin_ebpf_loader::uninstall(&config.instance) {
            Ok(_) => info!(instance = %config.instance, "kernel programs detached and unpinned"),
            Err(e) => error!(%e, "uninstall failed"),
        }
    }
    // Otherwise the programs stay pinned and capturing: with no proxy listening, enrolled
    // pods' connects are refused (fail closed) until the next agent is ready.
    result
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    config: Config,
    opts: RunOptions,
    dp: Arc<Mutex<Dataplane>>,
    proxy_config: Arc<myelin_proxy::model::ProxyConfig>,
    proxy_metrics: Arc<ProxyMetrics>,
    golden: Arc<GoldenMetrics>,
    traffic: TrafficHandle,
    splice_metrics: SpliceMetrics,
    state: Arc<AgentState>,
    workload_ids: Vec<u64>,
    mtls: Option<Mtls>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.capture)
        .await
        .with_context(|| {
            format!(
                "binding the capture listener on {} (is another agent running on this node?)",
                config.capture
            )
        })?;
    let (orig_dst, counters): (Arc<OrigDstMap>, Arc<Counters>) = {
        let dp = dp.lock().expect("dataplane lock");
        (dp.orig_dst(), dp.counters())
    };
    let (signal, watch) = drain::channel();
    if let Some(m) = &mtls {
        m.start(proxy_config.clone(), golden.clone(), watch.clone())
            .await?;
    }
    let proxy = Proxy::new(
        proxy_config.clone(),
        Arc::new(MapLookup(orig_dst)),
        proxy_metrics,
    )
    .with_traffic(traffic)
    .with_golden(golden);
    let proxy = match &mtls {
        Some(m) => proxy.with_hbone(Arc::new(
            myelin_proxy::hbone::Client::new(
                m.identities.clone(),
                myelin_proxy::hbone::ClientConfig::default(),
            )
            .with_metrics(m.hbone_metrics.clone()),
        )),
        None => proxy,
    };
    let proxy_task = tokio::spawn(proxy.serve(listener, watch));

    let forced_off = opts.no_splice || config.splice == SpliceSetting::Off;
    let mut splice = selftest::decide(&config, &dp, &counters, forced_off).await;
    if let Some(err) = &splice.capture_error {
        anyhow::bail!("capture self-test failed: {err}");
    }
    {
        let mut dp = dp.lock().expect("dataplane lock");
        for (w, id) in config.workloads.iter().zip(&workload_ids) {
            let spliced = splice.splices(w.splice);
            let flags = inbound::kernel_flags(w, spliced);
            dp.enroll(*id, flags)?;
            dp.add_local_pod(w.ip, flags)?;
            splice.workloads.push(selftest::WorkloadSpliceState {
                name: w.name.clone(),
                namespace: w.namespace.clone(),
                policy: w.splice,
                spliced,
            });
        }
    }
    let spliced = splice.workloads.iter().filter(|w| w.spliced).count();
    if spliced == 0 && splice.mode == SpliceMode::Spliced {
        splice.mode = SpliceMode::Tcp;
        if splice.reason.is_empty() {
            splice.reason = "no workload's splice policy allows splicing".into();
        }
    }
    match splice.mode {
        SpliceMode::Tcp => {
            warn!(reason = %splice.reason, "splice mode: tcp (captured connections are proxied over plain TCP)")
        }
        _ => info!(
            spliced_workloads = spliced,
            of = config.workloads.len(),
            blocking_safe = splice.blocking_safe,
            reason = %splice.reason,
            "splice mode: spliced"
        ),
    }
    splice_metrics.record(&splice);
    {
        let cur = state.effective.load();
        state.effective.store(Arc::new(Effective {
            config: cur.config.clone(),
            proxy: cur.proxy.clone(),
            splice: splice.clone(),
            kernel: cur.kernel.clone(),
        }));
    }
    state.ready.store(true, std::sync::atomic::Ordering::SeqCst);
    info!(capture = %config.capture, workloads = config.workloads.len(), "ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: draining"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: draining"),
    }
    state
        .ready
        .store(false, std::sync::atomic::Ordering::SeqCst);
    // The proxy closes what is left at its own deadline; give it a moment past that.
    let drained = signal
        .drain(proxy_config.drain_deadline + Duration::from_secs(1))
        .await;
    info!(?drained, "drained");
    proxy_task.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_interval_follows_the_expiry() {
        let s = Duration::from_secs;
        for (expiry, every) in [
            (s(600), s(30)),
            (s(40), s(20)),
            (s(5), Duration::from_millis(2500)),
            (s(1), s(1)),
        ] {
            assert_eq!(expiry_sweep_interval(expiry), every, "{expiry:?}");
        }
    }
}
