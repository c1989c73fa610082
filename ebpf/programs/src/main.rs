//! Myelin's kernel programs: capture at `connect()`, track established sockets, splice bytes.
//!
//! - `cgroup/connect4`: TCP connects of enrolled cgroups are rewritten to the node proxy's
//!   capture address; the original destination is kept by socket cookie.
//! - `sockops`: on ESTABLISHED, captured app sockets and the proxy's matching sockets go into
//!   `MYELIN_SOCKS` under their own 4-tuple, and the original destination moves from the
//!   cookie to the 4-tuple where the proxy can read it.
//! - `sk_msg`: a message sent on a spliced socket is redirected straight into the peer
//!   socket's receive queue; no peer means plain TCP (pass, never drop).
//! - `cgroup_skb/ingress`: a SYN to a STRICT workload that is not one of the proxy's own
//!   connections is dropped (the mesh cannot be bypassed from the host or another node).
//!   `sock_ops` records the proxy's flows at `TCP_CONNECT_CB` and, at a pod's
//!   `PASSIVE_ESTABLISHED`, tells proxied connections from plaintext ones (PERMISSIVE).
//!
//! Every entry point is a thin wrapper over a `try_*` helper and returns a real verdict.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{
        sk_action::SK_PASS, BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB, BPF_TCP_CLOSE,
    },
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, cgroup_sock_addr, map, sk_msg, sock_ops},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, LruPerCpuHashMap, PerCpuArray, SockHash,
    },
    programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext},
    EbpfContext,
};
use myelin_ebpf_common::{
    counter, Config, NetAddr, NetPort, OrigDst, PlainCount, PlainKey, SockKey, WorkloadFlags,
    CFG_CAPTURE, CFG_SPLICE, ORIG_NO_SPLICE, ORIG_PROXY_UPSTREAM, WL_NO_SPLICE, WL_STRICT,
};

const AF_INET: u32 = 2;
const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;
/// `connect4` verdict: let the (possibly rewritten) connect proceed.
const ALLOW: i32 = 1;

#[map]
static MYELIN_CONFIG: Array<Config> = Array::pinned(1, 0);
/// Enrolled workloads by cgroup v2 id.
#[map]
static MYELIN_ENROLLED: HashMap<u64, WorkloadFlags> = HashMap::pinned(16384, 0);
/// Workloads on this node by IP: the proxy's connections to them may be spliced.
#[map]
static MYELIN_LOCAL_PODS: HashMap<NetAddr, WorkloadFlags> = HashMap::pinned(16384, 0);
/// Destination ports never captured.
#[map]
static MYELIN_EXCL_PORTS: HashMap<NetPort, u32> = HashMap::pinned(1024, 0);
/// Destination CIDRs never captured (key data: the address in network order).
#[map]
static MYELIN_EXCL_CIDRS: LpmTrie<[u8; 4], u32> = LpmTrie::pinned(1024, BPF_F_NO_PREALLOC);
/// Original destination by socket cookie, from `connect4` until ESTABLISHED.
#[map]
static MYELIN_COOKIE_DST: LruHashMap<u64, OrigDst> = LruHashMap::pinned(65536, 0);
/// Original destination by the app socket's 4-tuple (app -> capture address); read by the proxy.
#[map]
static MYELIN_ORIG_DST: LruHashMap<SockKey, OrigDst> = LruHashMap::pinned(65536, 0);
/// Every socket put into `MYELIN_SOCKS`, by its own key, with `END_*` bits. The passive end
/// of a connection joins only if its active peer is here; `sk_msg` waits here for a peer
/// that is a few microseconds late (see `try_sk_msg`).
#[map]
static MYELIN_SPLICED: LruHashMap<SockKey, u32> = LruHashMap::pinned(131072, 0);
const END_ACTIVE: u32 = 1;
const END_PASSIVE: u32 = 2;
/// Sockets that already sent bytes over plain TCP: they stay on TCP for their whole life, so
/// redirected bytes can never overtake bytes still in flight on the TCP path.
#[map]
static MYELIN_TCP_ONLY: LruHashMap<SockKey, u32> = LruHashMap::pinned(65536, 0);
#[map]
static MYELIN_SOCKS: SockHash<SockKey> = SockHash::pinned(65536, 0);
#[map]
static MYELIN_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(counter::COUNT, 0);
/// The proxy's connections to local pods, by 4-tuple as the pod receives them (src = the
/// proxy's end): recorded at `TCP_CONNECT_CB`, before the SYN leaves, and removed when the
/// pod accepts. The only SYNs a STRICT workload takes.
#[map]
static MYELIN_PROXY_FLOWS: LruHashMap<SockKey, u32> = LruHashMap::pinned(65536, 0);
/// Connections local pods accepted from anyone but the proxy (PERMISSIVE plaintext), counted
/// by pod address, pod port and peer address; user space turns them into metrics.
#[map]
static MYELIN_PLAINTEXT: LruPerCpuHashMap<PlainKey, PlainCount> =
    LruPerCpuHashMap::pinned(16384, 0);
/// The pods' accepted plaintext sockets (own key), so their close is counted too.
#[map]
static MYELIN_PLAINTEXT_SOCKS: LruHashMap<SockKey, u32> = LruHashMap::pinned(65536, 0);
/// This node's own addresses (the agent's network namespace), to name the drop reason.
#[map]
static MYELIN_NODE_ADDRS: HashMap<NetAddr, u32> = HashMap::pinned(256, 0);

const BPF_F_NO_PREALLOC: u32 = 1;

#[inline(always)]
fn count(idx: u32, n: u64) {
    if let Some(p) = MYELIN_COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, valid for the lifetime of the program run.
        unsafe { *p += n };
    }
}

#[inline(always)]
fn config() -> Option<&'static Config> {
    MYELIN_CONFIG.get(0)
}

// ---------------------------------------------------------------------------------------------
// cgroup/connect4

#[cgroup_sock_addr(connect4)]
pub fn myelin_connect4(ctx: SockAddrContext) -> i32 {
    // Never fail a connect because of us: errors mean "not captured".
    let _ = try_connect4(&ctx);
    ALLOW
}

fn try_connect4(ctx: &SockAddrContext) -> Result<(), ()> {
    // SAFETY: the context pointer is valid for this program run.
    let sa = unsafe { &mut *ctx.sock_addr };
    if sa.user_family != AF_INET || sa.type_ != SOCK_STREAM || sa.protocol != IPPROTO_TCP {
        return Ok(()); // UDP (DNS included) and other families are never captured
    }
    let cfg = config().ok_or(())?;
    if cfg.flags & CFG_CAPTURE == 0 {
        return Ok(());
    }
    let dst_ip = NetAddr(sa.user_ip4);
    let dst_port = NetPort::from_user_port(sa.user_port);
    // SAFETY: plain helper call in task context.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };

    if cgroup == cfg.proxy_cgroup {
        // The proxy's own connections are never captured. Its connections to local pods are
        // marked for sock_ops: they are proxy flows (STRICT lets them in) and may be spliced.
        // SAFETY: read-only lookup of a plain value.
        if let Some(pod) = unsafe { MYELIN_LOCAL_PODS.get(&dst_ip) } {
            let mark = OrigDst {
                ip: dst_ip,
                port: dst_port,
                flags: ORIG_PROXY_UPSTREAM | no_splice(pod),
            };
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            MYELIN_COOKIE_DST
                .insert(&cookie, &mark, 0)
                .map_err(|_| ())?;
        }
        return Ok(());
    }

    // SAFETY: read-only lookup of a plain value.
    let wl = match unsafe { MYELIN_ENROLLED.get(&cgroup) } {
        Some(wl) => *wl,
        None => return Ok(()),
    };
    if dst_ip.is_loopback() || (dst_ip == cfg.capture_ip && dst_port == cfg.capture_port) {
        return Ok(());
    }
    // SAFETY: read-only lookups.
    if unsafe { MYELIN_EXCL_PORTS.get(&dst_port) }.is_some() {
        return Ok(());
    }
    if MYELIN_EXCL_CIDRS
        .get(&Key::new(32, dst_ip.octets()))
        .is_some()
    {
        return Ok(());
    }

    let orig = OrigDst {
        ip: dst_ip,
        port: dst_port,
        flags: no_splice(&wl),
    };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    MYELIN_COOKIE_DST
        .insert(&cookie, &orig, 0)
        .map_err(|_| ())?;
    sa.user_ip4 = cfg.capture_ip.0;
    sa.user_port = cfg.capture_port.to_user_port();
    count(counter::CONNECT_CAPTURED, 1);
    Ok(())
}

/// `ORIG_NO_SPLICE` for a socket of (or to) a workload that opted out of splicing.
#[inline(always)]
fn no_splice(wl: &WorkloadFlags) -> u16 {
    if wl.flags & WL_NO_SPLICE != 0 {
        ORIG_NO_SPLICE
    } else {
        0
    }
}

// ---------------------------------------------------------------------------------------------
// sockops

#[sock_ops]
pub fn myelin_sockops(ctx: SockOpsContext) -> u32 {
    let _ = try_sockops(&ctx);
    0
}

#[inline(always)]
fn own_key(ctx: &SockOpsContext) -> SockKey {
    SockKey {
        src_ip: NetAddr(ctx.local_ip4()),
        dst_ip: NetAddr(ctx.remote_ip4()),
        src_port: NetPort::from_local_port(ctx.local_port()),
        dst_port: NetPort::from_remote_port(ctx.remote_port()),
    }
}

fn try_sockops(ctx: &SockOpsContext) -> Result<(), ()> {
    if ctx.family() != AF_INET {
        return Ok(());
    }
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => tcp_connect(ctx),
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => active_established(ctx),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => passive_established(ctx),
        BPF_SOCK_OPS_STATE_CB => {
            if ctx.arg(1) == BPF_TCP_CLOSE {
                let key = own_key(ctx);
                let _ = MYELIN_SPLICED.remove(&key);
                let _ = MYELIN_TCP_ONLY.remove(&key);
                let _ = MYELIN_ORIG_DST.remove(&key);
                if MYELIN_PLAINTEXT_SOCKS.remove(&key).is_ok() {
                    plaintext_count(&key, |c| c.closed += 1, PlainCount::default());
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Before the SYN of an active open leaves (the local port is bound): a proxy connection to
/// a local pod becomes a proxy flow, so a STRICT pod's ingress program lets its SYN in.
fn tcp_connect(ctx: &SockOpsContext) -> Result<(), ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup of a plain value.
    match unsafe { MYELIN_COOKIE_DST.get(&cookie) } {
        Some(p) if p.flags & ORIG_PROXY_UPSTREAM != 0 => {}
        _ => return Ok(()),
    }
    MYELIN_PROXY_FLOWS
        .insert(&own_key(ctx), &1, 0)
        .map_err(|_| ())?;
    count(counter::PROXY_FLOWS, 1);
    Ok(())
}

fn active_established(ctx: &SockOpsContext) -> Result<(), ()> {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: read-only lookup; the value is copied out before the remove below.
    let pending = match unsafe { MYELIN_COOKIE_DST.get(&cookie) } {
        Some(p) => *p,
        None => {
            // A socket of an enrolled app that connected to the capture address without going
            // through connect4 (e.g. programs re-attached mid-connect) has no original
            // destination: count it, the proxy will refuse it.
            let cfg = config().ok_or(())?;
            let key = own_key(ctx);
            if key.dst_ip == cfg.capture_ip && key.dst_port == cfg.capture_port {
                count(counter::ORIG_DST_MISS, 1);
            }
            return Ok(());
        }
    };
    let _ = MYELIN_COOKIE_DST.remove(&cookie);
    let key = own_key(ctx);
    if pending.flags & ORIG_PROXY_UPSTREAM == 0 {
        MYELIN_ORIG_DST.insert(&key, &pending, 0).map_err(|_| ())?;
    }
    if pending.flags & ORIG_NO_SPLICE != 0 || !splicing() {
        return Ok(());
    }
    // Close notifications clean up the per-socket entries.
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    insert(ctx, key)?;
    MYELIN_SPLICED.insert(&key, &END_ACTIVE, 0).map_err(|_| ())
}

/// Sockets go into the SOCKHASH only while splicing is on: a socket in a sockmap
/// gets the kernel's tcp_bpf receive path even when its bytes travel over TCP, and that path
/// is what misbehaves for blocking readers (see `try_sk_msg`).
#[inline(always)]
fn splicing() -> bool {
    config().is_some_and(|c| c.flags & CFG_SPLICE != 0)
}

fn passive_established(ctx: &SockOpsContext) -> Result<(), ()> {
    let key = own_key(ctx);
    if record_inbound(&key) {
        // Its close is counted too.
        let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        let _ = MYELIN_PLAINTEXT_SOCKS.insert(&key, &1, 0);
    }
    // Only the other end of a connection whose active end we spliced.
    // SAFETY: read-only lookup.
    match unsafe { MYELIN_SPLICED.get(&key.reversed()) } {
        Some(f) if *f & END_ACTIVE != 0 => {}
        _ => return Ok(()),
    }
    let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
    insert(ctx, key)?;
    MYELIN_SPLICED.insert(&key, &END_PASSIVE, 0).map_err(|_| ())
}

/// A local pod accepted a connection (`key` seen from the pod's socket): the proxy's flows are
/// forgotten (they are in); anything else not from the pod itself is plaintext that went
/// around the proxy, recorded for PERMISSIVE's metrics (true). (A STRICT pod only gets here
/// for the proxy's connections and loopback: the ingress program dropped the other SYNs.)
#[inline(always)]
fn record_inbound(key: &SockKey) -> bool {
    // SAFETY: read-only lookup.
    if unsafe { MYELIN_LOCAL_PODS.get(&key.src_ip) }.is_none() {
        return false;
    }
    if MYELIN_PROXY_FLOWS.remove(&key.reversed()).is_ok() {
        return false;
    }
    if key.dst_ip.is_loopback() || key.dst_ip == key.src_ip {
        return false;
    }
    plaintext_count(
        key,
        |c| c.opened += 1,
        PlainCount {
            opened: 1,
            closed: 0,
        },
    );
    count(counter::PLAINTEXT_ACCEPTED, 1);
    true
}

/// Updates this CPU's count of the pod socket `key`'s [`PlainKey`], or inserts `first`.
#[inline(always)]
fn plaintext_count(key: &SockKey, update: impl FnOnce(&mut PlainCount), first: PlainCount) {
    let pk = PlainKey {
        pod_ip: key.src_ip,
        peer_ip: key.dst_ip,
        pod_port: key.src_port,
        _pad: 0,
    };
    match MYELIN_PLAINTEXT.get_ptr_mut(&pk) {
        // SAFETY: this CPU's slot of a per-CPU value.
        Some(c) => update(unsafe { &mut *c }),
        None => {
            let _ = MYELIN_PLAINTEXT.insert(&pk, &first, 0);
        }
    }
}

#[inline(always)]
fn insert(ctx: &SockOpsContext, mut key: SockKey) -> Result<(), ()> {
    // SAFETY: ctx.ops is the live bpf_sock_ops of this run.
    match MYELIN_SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, 0) {
        Ok(()) => {
            count(counter::SOCK_INSERTED, 1);
            Ok(())
        }
        Err(_) => {
            count(counter::SOCK_INSERT_FAILED, 1);
            Err(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sk_msg

#[sk_msg]
pub fn myelin_sk_msg(ctx: SkMsgContext) -> u32 {
    try_sk_msg(&ctx);
    // A redirect that succeeded already carried the verdict; on a miss the bytes go over TCP.
    SK_PASS
}

fn try_sk_msg(ctx: &SkMsgContext) {
    // SAFETY: the context pointer is valid for this program run.
    let md = unsafe { &*ctx.msg };
    let own = SockKey {
        src_ip: NetAddr(md.local_ip4),
        dst_ip: NetAddr(md.remote_ip4),
        src_port: NetPort::from_local_port(md.local_port),
        dst_port: NetPort::from_remote_port(md.remote_port),
    };
    // SAFETY: read-only lookup.
    if !splicing() || unsafe { MYELIN_TCP_ONLY.get(&own) }.is_some() {
        return;
    }
    let size = md.size;
    let mut peer = own.reversed();
    let mut verdict = MYELIN_SOCKS.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64);
    if verdict != SK_PASS as i64 && wait_for_peer(&own, &peer) {
        verdict = MYELIN_SOCKS.redirect_msg(ctx, &mut peer, BPF_F_INGRESS as u64);
    }
    if verdict == SK_PASS as i64 {
        count(counter::MSG_SPLICED, 1);
        count(counter::BYTES_SPLICED, size as u64);
    } else {
        // The peer is not (yet, or no longer) spliced: this socket stays on TCP from now on,
        // so redirected bytes can never overtake bytes still queued on the TCP path.
        count(counter::SPLICE_MISS, 1);
        let _ = MYELIN_TCP_ONLY.insert(&own, &1, 0);
    }
}

/// How long the first message of a fresh connection may wait for its peer socket.
const PEER_WAIT_NS: u64 = 200_000;
/// Upper bound on the lookups of that wait (the verifier needs a bounded loop).
const PEER_WAIT_SPINS: u32 = 4096;

/// The race this closes: `connect()` returns as soon as the SYN-ACK is processed
/// (`tcp_finish_connect` wakes the caller *before* `tcp_send_ack`), so on a multi-core node
/// the app can send its first bytes while the handshake's last ACK is still being processed
/// on another CPU, i.e. before the proxy's accepted socket reaches PASSIVE_ESTABLISHED and
/// the SOCKHASH. Falling back to TCP then is correct but costly: the app's socket stays in
/// the SOCKHASH with bytes on the TCP path, TCP ACKs wake its waiters, and the kernel's
/// `tcp_bpf_recvmsg` (one `sk_wait_event`, no retry loop; net/ipv4/tcp_bpf.c) returns
/// `EAGAIN` to a *blocking* reader woken without data. Measured: a full-duplex blocking
/// stream failed whenever exactly this one miss happened. The peer is microseconds away, so
/// an active end's message that finds no peer waits for it, bounded in time and lookups.
#[inline(always)]
fn wait_for_peer(own: &SockKey, peer: &SockKey) -> bool {
    // Only active ends wait (their passive peer is the one that can be late); a socket that
    // already fell back to TCP never waits again.
    // SAFETY: read-only lookups.
    match unsafe { MYELIN_SPLICED.get(own) } {
        Some(f) if *f & END_ACTIVE != 0 => {}
        _ => return false,
    }
    let start = unsafe { bpf_ktime_get_ns() };
    for _ in 0..PEER_WAIT_SPINS {
        if unsafe { MYELIN_SPLICED.get(peer) }.is_some() {
            count(counter::PEER_WAITS, 1);
            return true;
        }
        if unsafe { bpf_ktime_get_ns() } - start > PEER_WAIT_NS {
            break;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// cgroup_skb/ingress

/// `cgroup_skb` verdicts.
const SKB_DROP: i32 = 0;
const SKB_PASS: i32 = 1;
/// `ETH_P_IP` as `__sk_buff.protocol` holds it (network order).
const ETH_P_IP_BE: u32 = (0x0800u16).to_be() as u32;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// Runs for every packet delivered to a socket under the node's cgroup. Only a SYN (not
/// SYN-ACK) to a STRICT workload's socket is judged: the rest of a connection follows its
/// handshake, and the workload's own active connections never see a bare SYN. The packet
/// starts at its IP header here.
#[cgroup_skb(ingress)]
pub fn myelin_ingress(ctx: SkBuffContext) -> i32 {
    match try_ingress(&ctx) {
        Ok(Some(reason)) => {
            count(reason, 1);
            SKB_DROP
        }
        // Never drop what we could not parse: errors mean "not ours to judge".
        Ok(None) | Err(_) => SKB_PASS,
    }
}

/// `Some(counter)`: drop, counted under that reason.
fn try_ingress(ctx: &SkBuffContext) -> Result<Option<u32>, ()> {
    let skb = ctx.skb.skb;
    // SAFETY: the context pointer is valid for this program run.
    if unsafe { (*skb).protocol } != ETH_P_IP_BE {
        return Ok(None); // IPv6 is not judged yet (nor captured)
    }
    // SAFETY: plain helper call on this run's skb.
    let cgroup = unsafe { bpf_skb_cgroup_id(skb) };
    // SAFETY: read-only lookup of a plain value.
    match unsafe { MYELIN_ENROLLED.get(&cgroup) } {
        Some(wl) if wl.flags & WL_STRICT != 0 => {}
        _ => return Ok(None),
    }
    let vihl: u8 = ctx.load(0).map_err(|_| ())?;
    let proto: u8 = ctx.load(9).map_err(|_| ())?;
    if vihl >> 4 != 4 || proto != IPPROTO_TCP as u8 {
        return Ok(None);
    }
    let l4 = ((vihl & 0x0f) as usize) * 4;
    let flags: u8 = ctx.load(l4 + 13).map_err(|_| ())?;
    if flags & TCP_FLAG_SYN == 0 || flags & TCP_FLAG_ACK != 0 {
        return Ok(None);
    }
    let src = NetAddr(ctx.load(12).map_err(|_| ())?);
    if src.is_loopback() {
        return Ok(None);
    }
    let flow = SockKey {
        src_ip: src,
        dst_ip: NetAddr(ctx.load(16).map_err(|_| ())?),
        src_port: NetPort(ctx.load(l4).map_err(|_| ())?),
        dst_port: NetPort(ctx.load(l4 + 2).map_err(|_| ())?),
    };
    if flow.src_ip == flow.dst_ip {
        return Ok(None); // the pod to itself
    }
    // SAFETY: read-only lookups.
    if unsafe { MYELIN_PROXY_FLOWS.get(&flow) }.is_some() {
        return Ok(None);
    }
    let reason = if unsafe { MYELIN_NODE_ADDRS.get(&src) }.is_some() {
        counter::STRICT_DROP_NODE
    } else if unsafe { MYELIN_LOCAL_PODS.get(&src) }.is_some() {
        counter::STRICT_DROP_LOCAL_POD
    } else {
        counter::STRICT_DROP_REMOTE
    };
    Ok(Some(reason))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
