//! Map keys and values shared by Myelin's kernel programs and the user-space loader.
//!
//! Every type is `#[repr(C)]` with explicit padding, so the kernel and user space agree
//! byte for byte (implicit padding has broken map lookups in more than one project).
//! Byte order lives in the types: [`NetAddr`] and [`NetPort`] hold network-order values
//! exactly as the kernel hands them over, and convert to host values in one place.
//!
//! Port conventions measured on Linux 6.18 (and stable since the fields were added):
//! - `bpf_sock_addr.user_port`: network order in the low 16 bits;
//! - `bpf_sock_ops.remote_port` and `sk_msg_md.remote_port`: network order shifted left by 16;
//! - `bpf_sock_ops.local_port` and `sk_msg_md.local_port`: host order.
#![no_std]

/// An IPv4 address in network byte order, as the kernel stores it in `__be32` fields
/// (`user_ip4`, `local_ip4`, `remote_ip4`). On a little-endian host the first octet is the
/// lowest byte of the `u32`.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetAddr(pub u32);

impl NetAddr {
    /// From the four octets, `a.b.c.d`.
    pub const fn from_octets(o: [u8; 4]) -> Self {
        NetAddr(u32::from_ne_bytes(o))
    }

    /// The four octets.
    pub const fn octets(self) -> [u8; 4] {
        self.0.to_ne_bytes()
    }

    /// True for 127.0.0.0/8.
    pub const fn is_loopback(self) -> bool {
        self.octets()[0] == 127
    }
}

/// A TCP port in network byte order.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetPort(pub u16);

impl NetPort {
    /// From a host-order port number.
    pub const fn from_host(port: u16) -> Self {
        NetPort(port.to_be())
    }

    /// The host-order port number.
    pub const fn host(self) -> u16 {
        u16::from_be(self.0)
    }

    /// From `bpf_sock_addr.user_port` (network order in the low 16 bits).
    pub const fn from_user_port(user_port: u32) -> Self {
        NetPort(user_port as u16)
    }

    /// Back into `bpf_sock_addr.user_port` form.
    pub const fn to_user_port(self) -> u32 {
        self.0 as u32
    }

    /// From `remote_port` of `bpf_sock_ops` / `sk_msg_md` (network order shifted left by 16).
    pub const fn from_remote_port(remote_port: u32) -> Self {
        NetPort((remote_port >> 16) as u16)
    }

    /// From `local_port` of `bpf_sock_ops` / `sk_msg_md` (host order).
    pub const fn from_local_port(local_port: u32) -> Self {
        NetPort::from_host(local_port as u16)
    }
}

/// A TCP connection's 4-tuple seen from one of its sockets: `src` is the socket's own
/// (local) end, `dst` the peer. The SOCKHASH stores every spliced socket under its own key;
/// the peer of a socket is found under [`SockKey::reversed`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub src_ip: NetAddr,
    pub dst_ip: NetAddr,
    pub src_port: NetPort,
    pub dst_port: NetPort,
}

impl SockKey {
    /// The same connection seen from the other end.
    pub const fn reversed(self) -> Self {
        SockKey {
            src_ip: self.dst_ip,
            dst_ip: self.src_ip,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// The destination an app asked for before `connect4` rewrote it to the proxy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrigDst {
    pub ip: NetAddr,
    pub port: NetPort,
    /// `ORIG_*` bits.
    pub flags: u16,
}

/// Set on an [`OrigDst`] whose socket must not be spliced (the workload opted out).
pub const ORIG_NO_SPLICE: u16 = 1;
/// Set on a cookie entry that marks the proxy's own upstream connection to a local pod: no
/// destination was rewritten, but both ends may be spliced.
pub const ORIG_PROXY_UPSTREAM: u16 = 2;

/// Node-wide settings, one entry in `MYELIN_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Where captured connections are sent (the proxy's capture listener).
    pub capture_ip: NetAddr,
    pub capture_port: NetPort,
    pub _pad0: u16,
    /// cgroup v2 id of the proxy's cgroup: its connections are never captured.
    pub proxy_cgroup: u64,
    /// `CFG_*` bits.
    pub flags: u32,
    pub _pad1: u32,
}

/// Rewrite connects of enrolled cgroups to the capture address. Without it nothing is
/// captured (the agent is not ready, or was told to stand aside).
pub const CFG_CAPTURE: u32 = 1;
/// Put sockets of spliceable workloads into the SOCKHASH and redirect their bytes.
pub const CFG_SPLICE: u32 = 2;

/// Per-workload settings, by cgroup id in `MYELIN_ENROLLED` and by pod IP in
/// `MYELIN_LOCAL_PODS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkloadFlags {
    /// `WL_*` bits.
    pub flags: u32,
}

/// The workload's sockets are never spliced (captured and proxied over plain TCP).
pub const WL_NO_SPLICE: u32 = 1;
/// STRICT inbound: a TCP connection to the workload is accepted only from the node's proxy
/// (its handshake SYN must be one of `MYELIN_PROXY_FLOWS`); any other SYN is dropped by the
/// `cgroup_skb` ingress program and counted by reason. Without it (PERMISSIVE), other
/// connections are let in and recorded in `MYELIN_PLAINTEXT`.
pub const WL_STRICT: u32 = 2;

/// A plaintext connection accepted by a local pod, by who it came from (`MYELIN_PLAINTEXT`):
/// the pod's address and port and the peer's address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PlainKey {
    pub pod_ip: NetAddr,
    pub peer_ip: NetAddr,
    pub pod_port: NetPort,
    pub _pad: u16,
}

/// Per CPU, the plaintext connections of one [`PlainKey`] opened and closed so far.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PlainCount {
    pub opened: u64,
    pub closed: u64,
}

/// Indexes into the per-CPU `MYELIN_COUNTERS` array.
pub mod counter {
    /// `connect()` calls of enrolled workloads rewritten to the proxy.
    pub const CONNECT_CAPTURED: u32 = 0;
    /// Sockets put into the SOCKHASH.
    pub const SOCK_INSERTED: u32 = 1;
    /// Messages redirected by `sk_msg` straight into the peer socket.
    pub const MSG_SPLICED: u32 = 2;
    /// Bytes redirected by `sk_msg`.
    pub const BYTES_SPLICED: u32 = 3;
    /// Messages that found no peer socket and went over plain TCP.
    pub const SPLICE_MISS: u32 = 4;
    /// Captured connections established without a recorded original destination.
    pub const ORIG_DST_MISS: u32 = 5;
    /// SOCKHASH updates that the kernel refused.
    pub const SOCK_INSERT_FAILED: u32 = 6;
    /// First messages that found their peer socket only after waiting for it.
    pub const PEER_WAITS: u32 = 7;
    /// SYNs to a STRICT workload dropped because they came from this node (a host process).
    pub const STRICT_DROP_NODE: u32 = 8;
    /// SYNs to a STRICT workload dropped because they came from a pod on this node that was
    /// not captured (e.g. an excluded port).
    pub const STRICT_DROP_LOCAL_POD: u32 = 9;
    /// SYNs to a STRICT workload dropped because they came from elsewhere (another node).
    pub const STRICT_DROP_REMOTE: u32 = 10;
    /// Connections accepted by a local pod that did not come through the proxy (PERMISSIVE).
    pub const PLAINTEXT_ACCEPTED: u32 = 11;
    /// The proxy's connections to local pods recorded as proxy flows.
    pub const PROXY_FLOWS: u32 = 12;
    /// Number of counters.
    pub const COUNT: u32 = 13;
}

/// Names of the pinned maps and programs, shared so the loader and any inspection tool agree.
pub mod names {
    pub const CONFIG: &str = "MYELIN_CONFIG";
    pub const ENROLLED: &str = "MYELIN_ENROLLED";
    pub const LOCAL_PODS: &str = "MYELIN_LOCAL_PODS";
    pub const EXCL_PORTS: &str = "MYELIN_EXCL_PORTS";
    pub const EXCL_CIDRS: &str = "MYELIN_EXCL_CIDRS";
    pub const COOKIE_DST: &str = "MYELIN_COOKIE_DST";
    pub const ORIG_DST: &str = "MYELIN_ORIG_DST";
    pub const SPLICED: &str = "MYELIN_SPLICED";
    pub const TCP_ONLY: &str = "MYELIN_TCP_ONLY";
    pub const SOCKS: &str = "MYELIN_SOCKS";
    pub const COUNTERS: &str = "MYELIN_COUNTERS";
    pub const PROXY_FLOWS: &str = "MYELIN_PROXY_FLOWS";
    pub const PLAINTEXT: &str = "MYELIN_PLAINTEXT";
    pub const PLAINTEXT_SOCKS: &str = "MYELIN_PLAINTEXT_SOCKS";
    pub const NODE_ADDRS: &str = "MYELIN_NODE_ADDRS";
    pub const PROG_CONNECT4: &str = "myelin_connect4";
    pub const PROG_SOCK_OPS: &str = "myelin_sockops";
    pub const PROG_SK_MSG: &str = "myelin_sk_msg";
    pub const PROG_INGRESS: &str = "myelin_ingress";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain data with explicit padding; any bit
    // pattern is a valid value.
    unsafe impl aya::Pod for super::NetAddr {}
    unsafe impl aya::Pod for super::NetPort {}
    unsafe impl aya::Pod for super::SockKey {}
    unsafe impl aya::Pod for super::OrigDst {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::WorkloadFlags {}
    unsafe impl aya::Pod for super::PlainKey {}
    unsafe impl aya::Pod for super::PlainCount {}
}

// Layout is part of the kernel ABI of our maps: check it at compile time.
const _: () = {
    assert!(core::mem::size_of::<SockKey>() == 12);
    assert!(core::mem::size_of::<OrigDst>() == 8);
    assert!(core::mem::size_of::<Config>() == 24);
    assert!(core::mem::size_of::<WorkloadFlags>() == 4);
    assert!(core::mem::size_of::<PlainKey>() == 12);
    assert!(core::mem::size_of::<PlainCount>() == 16);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_round_trip_through_kernel_encodings() {
        let p = NetPort::from_host(15001);
        assert_eq!(p.host(), 15001);
        // user_port: network order in the low 16 bits.
        assert_eq!(NetPort::from_user_port(p.to_user_port()), p);
        // sock_ops remote_port: network order << 16.
        assert_eq!(NetPort::from_remote_port((p.0 as u32) << 16), p);
        assert_eq!(NetPort::from_local_port(15001), p);
    }

    #[test]
    fn addr_octets_and_reverse_key() {
        let a = NetAddr::from_octets([10, 77, 1, 2]);
        assert_eq!(a.octets(), [10, 77, 1, 2]);
        assert!(NetAddr::from_octets([127, 0, 0, 53]).is_loopback());
        let k = SockKey {
            src_ip: a,
            dst_ip: NetAddr::from_octets([10, 77, 0, 1]),
            src_port: NetPort::from_host(40000),
            dst_port: NetPort::from_host(15001),
        };
        assert_eq!(k.reversed().reversed(), k);
        assert_eq!(k.reversed().src_port.host(), 15001);
    }
}
