//! Loads Myelin's kernel programs, attaches them to the node's cgroup, pins everything under
//! bpffs (`/sys/fs/bpf/myelin/<instance>`) and hands out typed handles for the maps.
//!
//! Restarts: maps are pinned by name and reused by the next load, so the SOCKHASH (with the
//! `sk_msg` program attached to it) and the original-destination table survive the agent.
//! The cgroup links are pinned too; a new agent attaches its freshly loaded programs and only
//! then unpins the old links, so there is never a moment with no capture program attached.
//! (For that moment both run; the second `connect4` sees the capture address and leaves it.)
//!
//! [`uninstall`] detaches and unpins everything of one instance.

use std::{
    fs, io,
    net::{Ipv4Addr, SocketAddrV4},
    os::{fd::AsFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuHashMap, SockHash},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SkMsg, SockOps,
    },
    Ebpf, EbpfLoader,
};
use myelin_ebpf_common::{
    counter, names, Config, NetAddr, NetPort, OrigDst, PlainCount, PlainKey, SockKey, WorkloadFlags,
};
pub use myelin_ebpf_common::{CFG_CAPTURE, CFG_SPLICE, WL_NO_SPLICE, WL_STRICT};

/// The kernel object built by `build.rs`.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/myelin-ebpf"));

/// Root of all Myelin pins on bpffs.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf/myelin";

/// Errors of loading, attaching and map access.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bpffs is not mounted at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf): {0}")]
    NoBpffs(String),
    #[error("loading the kernel programs failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("link of program {name}: {source}")]
    Link {
        name: &'static str,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("instance name {0:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    BadInstance(String),
}

type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
    move |source| Error::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> Error {
    move |source| Error::Program { name, source }
}

/// The cgroup v2 mount point, probed from /proc/self/mountinfo (hybrid systems mount it at
/// /sys/fs/cgroup/unified, unified ones at /sys/fs/cgroup).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let path = Path::new("/proc/self/mountinfo");
    let info = fs::read_to_string(path).map_err(io_err("reading", path))?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next() != Some("cgroup2") {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .ok_or_else(|| Error::Io {
            what: "finding a cgroup2 mount in",
            path: path.to_owned(),
            source: io::Error::new(io::ErrorKind::NotFound, "cgroup v2 is not mounted"),
        })
}

/// Where one instance keeps its pins.
pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS_ROOT).join(instance)
}

fn check_instance(instance: &str) -> Result<()> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && instance
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadInstance(instance.to_owned()))
    }
}

/// Mounts bpffs at /sys/fs/bpf when it is not mounted yet (a fresh VM often has the empty
/// directory only).
pub fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(io_err("reading", Path::new("/proc/self/mounts")))?;
    if mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let _dev = f.next();
        f.next() == Some("/sys/fs/bpf") && f.next() == Some("bpf")
    }) {
        return Ok(());
    }
    let target = c"/sys/fs/bpf";
    // SAFETY: plain mount(2) with static NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::NoBpffs(io::Error::last_os_error().to_string()));
    }
    Ok(())
}

/// The cgroup v2 id of a cgroup directory (its kernfs inode number), as
/// `bpf_get_current_cgroup_id()` reports it.
pub fn cgroup_id(path: &Path) -> Result<u64> {
    Ok(fs::metadata(path)
        .map_err(io_err("stat of cgroup", path))?
        .ino())
}

/// What to load and where to attach.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Names the pin directory; unique per agent on a machine.
    pub instance: String,
    /// cgroup v2 directory holding the node's pods and the proxy.
    pub cgroup: PathBuf,
}

/// The loaded, attached and pinned programs with typed handles to their maps.
pub struct Dataplane {
    // Keeps program fds open for the lifetime of the agent.
    _ebpf: Ebpf,
    pin_dir: PathBuf,
    config: Array<MapData, Config>,
    enrolled: HashMap<MapData, u64, WorkloadFlags>,
    local_pods: HashMap<MapData, NetAddr, WorkloadFlags>,
    excl_ports: HashMap<MapData, NetPort, u32>,
    excl_cidrs: LpmTrie<MapData, [u8; 4], u32>,
    node_addrs: HashMap<MapData, NetAddr, u32>,
    orig_dst: Arc<OrigDstMap>,
    plaintext: Arc<PlaintextMap>,
    counters: Arc<Counters>,
    /// True when pinned maps from an earlier run were reused.
    pub reused_pins: bool,
}

/// Read side of `MYELIN_ORIG_DST`, shared with the proxy's accept path.
pub struct OrigDstMap {
    map: HashMap<MapData, SockKey, OrigDst>,
}

impl OrigDstMap {
    /// The original destination of the app socket `app` connected to `capture`.
    pub fn get(&self, app: SocketAddrV4, capture: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = SockKey {
            src_ip: NetAddr::from_octets(app.ip().octets()),
            dst_ip: NetAddr::from_octets(capture.ip().octets()),
            src_port: NetPort::from_host(app.port()),
            dst_port: NetPort::from_host(capture.port()),
        };
        let v = self.map.get(&key, 0).ok()?;
        Some(SocketAddrV4::new(
            Ipv4Addr::from(v.ip.octets()),
            v.port.host(),
        ))
    }
}

/// Read side of `MYELIN_PLAINTEXT`: connections local pods accepted from anyone but the
/// proxy (PERMISSIVE plaintext).
pub struct PlaintextMap {
    map: PerCpuHashMap<MapData, PlainKey, PlainCount>,
}

/// One `MYELIN_PLAINTEXT` entry: the connections `peer` opened to `pod`, and of them closed,
/// so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaintextCount {
    pub pod: SocketAddrV4,
    pub peer: Ipv4Addr,
    pub opened: u64,
    pub closed: u64,
}

impl PlaintextMap {
    /// Every entry with its per-CPU counts summed. Entries only grow until the LRU evicts
    /// them, so callers turn them into metrics by difference.
    pub fn read(&self) -> Vec<PlaintextCount> {
        self.map
            .iter()
            .filter_map(|r| r.ok())
            .map(|(k, v)| PlaintextCount {
                pod: SocketAddrV4::new(Ipv4Addr::from(k.pod_ip.octets()), k.pod_port.host()),
                peer: Ipv4Addr::from(k.peer_ip.octets()),
                opened: v.iter().map(|c| c.opened).sum(),
                closed: v.iter().map(|c| c.closed).sum(),
            })
            .collect()
    }
}

impl std::fmt::Debug for PlaintextMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaintextMap").finish_non_exhaustive()
    }
}

/// The per-CPU kernel counters, summed.
pub struct Counters {
    map: PerCpuArray<MapData, u64>,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterValues {
    pub connects_captured: u64,
    pub sockets_inserted: u64,
    pub messages_spliced: u64,
    pub bytes_spliced: u64,
    pub splice_misses: u64,
    pub orig_dst_misses: u64,
    pub socket_insert_failures: u64,
    pub peer_waits: u64,
    /// SYNs to STRICT workloads dropped, by where they came from.
    pub strict_drops_node: u64,
    pub strict_drops_local_pod: u64,
    pub strict_drops_remote: u64,
    pub plaintext_accepted: u64,
    pub proxy_flows: u64,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for OrigDstMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrigDstMap").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir)
            .field("reused_pins", &self.reused_pins)
            .finish_non_exhaustive()
    }
}

impl Counters {
    fn sum(&self, idx: u32) -> u64 {
        self.map
            .get(&idx, 0)
            .map(|v| v.iter().copied().sum())
            .unwrap_or(0)
    }

    /// Reads all counters.
    pub fn read(&self) -> CounterValues {
        CounterValues {
            connects_captured: self.sum(counter::CONNECT_CAPTURED),
            sockets_inserted: self.sum(counter::SOCK_INSERTED),
            messages_spliced: self.sum(counter::MSG_SPLICED),
            bytes_spliced: self.sum(counter::BYTES_SPLICED),
            splice_misses: self.sum(counter::SPLICE_MISS),
            orig_dst_misses: self.sum(counter::ORIG_DST_MISS),
            socket_insert_failures: self.sum(counter::SOCK_INSERT_FAILED),
            peer_waits: self.sum(counter::PEER_WAITS),
            strict_drops_node: self.sum(counter::STRICT_DROP_NODE),
            strict_drops_local_pod: self.sum(counter::STRICT_DROP_LOCAL_POD),
            strict_drops_remote: self.sum(counter::STRICT_DROP_REMOTE),
            plaintext_accepted: self.sum(counter::PLAINTEXT_ACCEPTED),
            proxy_flows: self.sum(counter::PROXY_FLOWS),
        }
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map> {
    ebpf.take_map(name).ok_or(Error::Map {
        name,
        source: aya::maps::MapError::InvalidName {
            name: name.to_owned(),
        },
    })
}

impl Dataplane {
    /// Loads the programs (reusing pinned maps), attaches them to `opts.cgroup`, pins maps and
    /// links. Capture stays off until [`Dataplane::set_config`] turns it on.
    pub fn install(opts: &InstallOptions) -> Result<Dataplane> {
        check_instance(&opts.instance)?;
        ensure_bpffs()?;
        let pin_dir = pin_dir(&opts.instance);
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for d in [&maps_dir, &links_dir] {
            fs::create_dir_all(d).map_err(io_err("creating", d))?;
        }
        let reused_pins = maps_dir.join(names::SOCKS).exists();

        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .load(PROGRAMS)?;

        let cgroup =
            fs::File::open(&opts.cgroup).map_err(io_err("opening cgroup", &opts.cgroup))?;

        let connect4: &mut CgroupSockAddr = ebpf
            .program_mut(names::PROG_CONNECT4)
            .ok_or(Error::Program {
                name: names::PROG_CONNECT4,
                source: missing(),
            })?
            .try_into()
            .map_err(prog_err(names::PROG_CONNECT4))?;
        connect4.load().map_err(prog_err(names::PROG_CONNECT4))?;
        // bpf_link attachments to a cgroup are always "multi" (flags must be 0): they coexist
        // with other programs on the same hook, e.g. the previous agent's during a restart.
        let id = connect4
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(prog_err(names::PROG_CONNECT4))?;
        let link = FdLink::try_from(
            connect4
                .take_link(id)
                .map_err(prog_err(names::PROG_CONNECT4))?,
        )
        .map_err(|e| Error::Link {
            name: names::PROG_CONNECT4,
            source: e,
        })?;
        replace_pinned_link(link, &links_dir.join("connect4"))?;

        let sockops: &mut SockOps = ebpf
            .program_mut(names::PROG_SOCK_OPS)
            .ok_or(Error::Program {
                name: names::PROG_SOCK_OPS,
                source: missing(),
            })?
            .try_into()
            .map_err(prog_err(names::PROG_SOCK_OPS))?;
        sockops.load().map_err(prog_err(names::PROG_SOCK_OPS))?;
        let id = sockops
            .attach(cgroup.as_fd(), CgroupAttachMode::Single)
            .map_err(prog_err(names::PROG_SOCK_OPS))?;
        let link = FdLink::try_from(
            sockops
                .take_link(id)
                .map_err(prog_err(names::PROG_SOCK_OPS))?,
        )
        .map_err(|e| Error::Link {
            name: names::PROG_SOCK_OPS,
            source: e,
        })?;
        replace_pinned_link(link, &links_dir.join("sockops"))?;

        let ingress: &mut CgroupSkb = ebpf
            .program_mut(names::PROG_INGRESS)
            .ok_or(Error::Program {
                name: names::PROG_INGRESS,
                source: missing(),
            })?
            .try_into()
            .map_err(prog_err(names::PROG_INGRESS))?;
        ingress.load().map_err(prog_err(names::PROG_INGRESS))?;
        let id = ingress
            .attach(
                cgroup.as_fd(),
                CgroupSkbAttachType::Ingress,
                CgroupAttachMode::Single,
            )
            .map_err(prog_err(names::PROG_INGRESS))?;
        let link = FdLink::try_from(
            ingress
                .take_link(id)
                .map_err(prog_err(names::PROG_INGRESS))?,
        )
        .map_err(|e| Error::Link {
            name: names::PROG_INGRESS,
            source: e,
        })?;
        replace_pinned_link(link, &links_dir.join("ingress"))?;

        // sk_msg attaches to the SOCKHASH itself; the pinned map keeps it attached.
        let socks: SockHash<MapData, SockKey> = take_map(&mut ebpf, names::SOCKS)?
            .try_into()
            .map_err(map_err(names::SOCKS))?;
        let sk_msg: &mut SkMsg = ebpf
            .program_mut(names::PROG_SK_MSG)
            .ok_or(Error::Program {
                name: names::PROG_SK_MSG,
                source: missing(),
            })?
            .try_into()
            .map_err(prog_err(names::PROG_SK_MSG))?;
        sk_msg.load().map_err(prog_err(names::PROG_SK_MSG))?;
        let id = sk_msg
            .attach(socks.fd())
            .map_err(prog_err(names::PROG_SK_MSG))?;
        // The attachment lives in the pinned map; dropping the link would detach the program
        // when the agent exits, so keep it attached for the sockets that outlive the agent.
        std::mem::forget(sk_msg.take_link(id).map_err(prog_err(names::PROG_SK_MSG))?);

        let config = take_map(&mut ebpf, names::CONFIG)?
            .try_into()
            .map_err(map_err(names::CONFIG))?;
        let enrolled = take_map(&mut ebpf, names::ENROLLED)?
            .try_into()
            .map_err(map_err(names::ENROLLED))?;
        let local_pods = take_map(&mut ebpf, names::LOCAL_PODS)?
            .try_into()
            .map_err(map_err(names::LOCAL_PODS))?;
        let excl_ports = take_map(&mut ebpf, names::EXCL_PORTS)?
            .try_into()
            .map_err(map_err(names::EXCL_PORTS))?;
        let excl_cidrs = take_map(&mut ebpf, names::EXCL_CIDRS)?
            .try_into()
            .map_err(map_err(names::EXCL_CIDRS))?;
        let orig_dst = Arc::new(OrigDstMap {
            map: take_map(&mut ebpf, names::ORIG_DST)?
                .try_into()
                .map_err(map_err(names::ORIG_DST))?,
        });
        let counters = Arc::new(Counters {
            map: take_map(&mut ebpf, names::COUNTERS)?
                .try_into()
                .map_err(map_err(names::COUNTERS))?,
        });
        let node_addrs = take_map(&mut ebpf, names::NODE_ADDRS)?
            .try_into()
            .map_err(map_err(names::NODE_ADDRS))?;
        let plaintext = Arc::new(PlaintextMap {
            map: take_map(&mut ebpf, names::PLAINTEXT)?
                .try_into()
                .map_err(map_err(names::PLAINTEXT))?,
        });

        Ok(Dataplane {
            _ebpf: ebpf,
            pin_dir,
            config,
            enrolled,
            local_pods,
            excl_ports,
            excl_cidrs,
            node_addrs,
            orig_dst,
            plaintext,
            counters,
            reused_pins,
        })
    }

    /// The pin directory of this instance.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Writes the node-wide settings (capture address, proxy cgroup, `CFG_*` flags).
    pub fn set_config(
        &mut self,
        capture: SocketAddrV4,
        proxy_cgroup: u64,
        flags: u32,
    ) -> Result<()> {
        let cfg = Config {
            capture_ip: NetAddr::from_octets(capture.ip().octets()),
            capture_port: NetPort::from_host(capture.port()),
            proxy_cgroup,
            flags,
            ..Config::default()
        };
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    /// The node-wide `CFG_*` flags currently in force.
    pub fn config_flags(&self) -> u32 {
        self.config.get(&0, 0).map(|c| c.flags).unwrap_or(0)
    }

    /// Changes only the `CFG_*` flags.
    pub fn set_flags(&mut self, flags: u32) -> Result<()> {
        let mut cfg = self.config.get(&0, 0).map_err(map_err(names::CONFIG))?;
        cfg.flags = flags;
        self.config.set(0, cfg, 0).map_err(map_err(names::CONFIG))
    }

    /// Enrolls a workload's cgroup: its TCP connects are captured. `flags` are `WL_*` bits.
    pub fn enroll(&mut self, cgroup_id: u64, flags: u32) -> Result<()> {
        self.enrolled
            .insert(cgroup_id, WorkloadFlags { flags }, 0)
            .map_err(map_err(names::ENROLLED))
    }

    /// Stops capturing a cgroup.
    pub fn unenroll(&mut self, cgroup_id: u64) -> Result<()> {
        ignore_missing(self.enrolled.remove(&cgroup_id), names::ENROLLED)
    }

    /// Records a pod IP on this node: the proxy's connections to it may be spliced.
    pub fn add_local_pod(&mut self, ip: Ipv4Addr, flags: u32) -> Result<()> {
        self.local_pods
            .insert(
                NetAddr::from_octets(ip.octets()),
                WorkloadFlags { flags },
                0,
            )
            .map_err(map_err(names::LOCAL_PODS))
    }

    /// Forgets a pod IP.
    pub fn remove_local_pod(&mut self, ip: Ipv4Addr) -> Result<()> {
        ignore_missing(
            self.local_pods.remove(&NetAddr::from_octets(ip.octets())),
            names::LOCAL_PODS,
        )
    }

    /// Replaces the sets of destination ports and CIDRs that are never captured.
    pub fn set_exclusions(&mut self, ports: &[u16], cidrs: &[(Ipv4Addr, u8)]) -> Result<()> {
        let old: Vec<NetPort> = self.excl_ports.keys().filter_map(|k| k.ok()).collect();
        for p in old {
            let _ = self.excl_ports.remove(&p);
        }
        for p in ports {
            self.excl_ports
                .insert(NetPort::from_host(*p), 1, 0)
                .map_err(map_err(names::EXCL_PORTS))?;
        }
        let old: Vec<Key<[u8; 4]>> = self.excl_cidrs.keys().filter_map(|k| k.ok()).collect();
        for k in old {
            let _ = self.excl_cidrs.remove(&k);
        }
        for (ip, len) in cidrs {
            self.excl_cidrs
                .insert(&Key::new(u32::from(*len), ip.octets()), 1, 0)
                .map_err(map_err(names::EXCL_CIDRS))?;
        }
        Ok(())
    }

    /// Replaces the set of this node's own addresses (names the reason of a STRICT drop).
    pub fn set_node_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        let old: Vec<NetAddr> = self.node_addrs.keys().filter_map(|k| k.ok()).collect();
        for a in old {
            let _ = self.node_addrs.remove(&a);
        }
        for a in addrs {
            self.node_addrs
                .insert(NetAddr::from_octets(a.octets()), 1, 0)
                .map_err(map_err(names::NODE_ADDRS))?;
        }
        Ok(())
    }

    /// The record of plaintext connections accepted by local pods.
    pub fn plaintext(&self) -> Arc<PlaintextMap> {
        self.plaintext.clone()
    }

    /// The original-destination table, for the proxy.
    pub fn orig_dst(&self) -> Arc<OrigDstMap> {
        self.orig_dst.clone()
    }

    /// The kernel counters.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }
}

/// Deleting a key that is not there is success (idempotent removal).
fn ignore_missing(r: Result<(), aya::maps::MapError>, name: &'static str) -> Result<()> {
    match r {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(source) => Err(Error::Map { name, source }),
    }
}

fn missing() -> aya::programs::ProgramError {
    aya::programs::ProgramError::UnexpectedProgramType
}

/// Pins `link` at `path`, replacing (and so detaching) whatever link was pinned there.
fn replace_pinned_link(link: FdLink, path: &Path) -> Result<()> {
    let old = PinnedLink::from_pin(path).ok();
    // bpffs refuses names with a dot.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push("_new");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_file(&tmp);
    let pinned = link.pin(&tmp).map_err(|source| Error::Pin {
        path: tmp.clone(),
        source,
    })?;
    // The new link is attached and pinned: now the old one may go.
    if let Some(old) = old {
        old.unpin().map_err(io_err("unpinning", path))?;
    }
    fs::rename(&tmp, path).map_err(io_err("renaming pin", &tmp))?;
    let _ = pinned;
    Ok(())
}

/// Detaches and unpins everything of `instance`. Missing pins are fine (idempotent).
pub fn uninstall(instance: &str) -> Result<bool> {
    check_instance(instance)?;
    let dir = pin_dir(instance);
    if !dir.exists() {
        return Ok(false);
    }
    let links_dir = dir.join("links");
    if let Ok(entries) = fs::read_dir(&links_dir) {
        for e in entries.flatten() {
            if let Ok(link) = PinnedLink::from_pin(e.path()) {
                let _ = link.unpin();
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    fs::remove_dir_all(&dir).map_err(io_err("removing", &dir))?;
    let _ = fs::remove_dir(BPFFS_ROOT); // only when empty
    Ok(true)
}
