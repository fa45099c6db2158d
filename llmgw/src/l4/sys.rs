//! The few system calls aya does not wrap: BPF_OBJ_GET / BPF_LINK_DETACH /
//! link info on pinned links, BPF_MAP_UPDATE_BATCH, capability and bpffs
//! checks, the bpffs mount, the (optional) RLIMIT_MEMLOCK raise, and the
//! host's interface addresses and their changes (netlink).

use std::{
    ffi::CString,
    io,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// `union bpf_attr`, large enough for the commands used here.
#[repr(C, align(8))]
struct Attr([u8; 128]);

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: `attr` is a zeroed, properly sized bpf_attr for `cmd`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut Attr,
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cpath(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Opens a pinned object.
pub(crate) fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = cpath(path)?;
    let mut attr = Attr([0; 128]);
    attr.0[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Writes one entry (`BPF_ANY`): `key` and `value` in the map's layouts.
pub(crate) fn map_update_elem(
    map: std::os::fd::BorrowedFd<'_>,
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr([0; 128]);
    // struct { map_fd: u32, pad, key: u64, value: u64, flags: u64 }
    attr.0[..4].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(key.as_ptr() as u64).to_ne_bytes());
    attr.0[16..24].copy_from_slice(&(value.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

/// Writes `count` entries in one call (kernel 5.6+; hash maps and LPM tries
/// alike): `keys` and `values` hold them back to back, in the map's key and
/// value layouts.
/// On error, also returns how many were written before it.
pub(crate) fn map_update_batch(
    map: std::os::fd::BorrowedFd<'_>,
    keys: &[u8],
    values: &[u8],
    count: u32,
) -> Result<(), (io::Error, u32)> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr([0; 128]);
    // struct { in_batch, out_batch, keys, values: u64; count, map_fd: u32;
    //          elem_flags, flags: u64 }
    attr.0[16..24].copy_from_slice(&(keys.as_ptr() as u64).to_ne_bytes());
    attr.0[24..32].copy_from_slice(&(values.as_ptr() as u64).to_ne_bytes());
    attr.0[32..36].copy_from_slice(&count.to_ne_bytes());
    attr.0[36..40].copy_from_slice(&(map.as_raw_fd() as u32).to_ne_bytes());
    match bpf(BPF_MAP_UPDATE_BATCH, &mut attr) {
        Ok(_) => Ok(()),
        Err(e) => {
            let mut done = [0u8; 4];
            done.copy_from_slice(&attr.0[32..36]);
            Err((e, u32::from_ne_bytes(done)))
        }
    }
}

/// Detaches a link even while other processes hold it open (kernel 5.9+).
pub(crate) fn link_detach(link: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let mut attr = Attr([0; 128]);
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

/// `(link id, program id, ifindex)` of an XDP link; ifindex 0 once the link
/// is detached or its interface is gone.
pub(crate) fn xdp_link_info(link: &OwnedFd) -> io::Result<(u32, u32, u32)> {
    use std::os::fd::AsRawFd as _;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose
    // xdp member starts with ifindex.
    let mut info = [0u64; 16];
    let mut attr = Attr([0; 128]);
    attr.0[..4].copy_from_slice(&(link.as_raw_fd() as u32).to_ne_bytes());
    attr.0[4..8].copy_from_slice(&((info.len() * 8) as u32).to_ne_bytes());
    attr.0[8..16].copy_from_slice(&(info.as_mut_ptr() as u64).to_ne_bytes());
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let word = |i: usize| info[i / 2].to_ne_bytes();
    let u32_at = |i: usize| {
        let w = word(i);
        let h = if i.is_multiple_of(2) {
            &w[..4]
        } else {
            &w[4..]
        };
        u32::from_ne_bytes([h[0], h[1], h[2], h[3]])
    };
    Ok((u32_at(1), u32_at(2), u32_at(4)))
}

/// Takes an exclusive flock on the directory `dir`; held until the returned
/// file is closed (or the process dies). Waits up to a second for a holder
/// that is going away: a lock outlives its owner's close while a process
/// forked meanwhile still has the descriptor (until it execs).
pub(crate) fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(dir)?;
    let mut tries = 20;
    loop {
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        tries -= 1;
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) || tries == 0 {
            return Err(e);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Whether `path` is on a BPF filesystem.
pub(crate) fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = cpath(path) else { return false };
    // SAFETY: statfs fills `buf`; we only read it when the call succeeds.
    unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs at `path`.
pub(crate) fn mount_bpffs(path: &Path) -> io::Result<()> {
    let target = cpath(path)?;
    let src = c"bpf";
    // SAFETY: plain mount(2) with valid C strings.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process.
fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// `None` when the process may load and attach XDP programs, else what is
/// missing.
pub(crate) fn missing_privileges() -> Option<String> {
    let Some(caps) = effective_caps() else {
        return Some("cannot read the capabilities of this process".into());
    };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let bpf = has(CAP_BPF) || has(CAP_SYS_ADMIN);
    let net = has(CAP_NET_ADMIN) || has(CAP_SYS_ADMIN);
    match (bpf, net) {
        (true, true) => None,
        (false, true) => Some("CAP_BPF missing (run as root or grant CAP_BPF)".into()),
        (true, false) => Some("CAP_NET_ADMIN missing".into()),
        (false, false) => Some("not root: CAP_BPF and CAP_NET_ADMIN missing".into()),
    }
}

/// Whether the process may mount filesystems.
pub(crate) fn may_mount() -> bool {
    effective_caps().is_some_and(|c| c & (1u64 << CAP_SYS_ADMIN) != 0)
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF memory to it;
/// kernels since 5.11 use memcg accounting, so failure is not an error.
pub(crate) fn raise_memlock() -> io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Every IPv4 and IPv6 address of this network namespace's interfaces
/// (getifaddrs), deduplicated.
pub(crate) fn interface_addresses() -> io::Result<Vec<std::net::IpAddr>> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says how
            // long it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            let ip = match family {
                libc::AF_INET => {
                    // SAFETY: an AF_INET sockaddr is a sockaddr_in.
                    let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                        sin.sin_addr.s_addr,
                    ))))
                }
                libc::AF_INET6 => {
                    // SAFETY: an AF_INET6 sockaddr is a sockaddr_in6.
                    let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            };
            if let Some(ip) = ip
                && !out.contains(&ip)
            {
                out.push(ip);
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// A new `NETLINK_ROUTE` socket.
fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new socket nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A netlink socket subscribed to the kernel's address announcements
/// (`RTM_NEWADDR` / `RTM_DELADDR`, IPv4 and IPv6) in this network namespace.
pub(crate) struct AddressEvents(OwnedFd);

impl AddressEvents {
    pub(crate) fn open() -> io::Result<Self> {
        use std::os::fd::AsRawFd as _;
        let fd = route_socket()?;
        // SAFETY: an all-zero sockaddr_nl is valid; fields set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
        // SAFETY: `sa` is a sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self(fd))
    }

    /// Blocks until the kernel announces an address change (or the socket's
    /// buffer overflowed, which means changes were missed: also a change).
    pub(crate) fn wait(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reads into `buf`, within its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ENOBUFS) => return Ok(()),
                _ => return Err(e),
            }
        }
    }
}

/// The index of interface `name` in this network namespace.
pub(crate) fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name; if_nametoindex only reads it.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// The ids of the XDP programs attached to interface `ifindex` of this
/// network namespace, as rtnetlink reports them (`IFLA_XDP`): empty when
/// none is, or the interface is not here.
pub(crate) fn xdp_prog_ids(ifindex: u32) -> io::Result<Vec<u32>> {
    use std::os::fd::AsRawFd as _;
    const RTM_NEWLINK: u16 = 16;
    const RTM_GETLINK: u16 = 18;
    const NLMSG_ERROR: u16 = 2;
    const IFLA_XDP: u16 = 43;
    // IFLA_XDP_PROG_ID, _DRV_PROG_ID, _SKB_PROG_ID, _HW_PROG_ID.
    const PROG_IDS: [u16; 4] = [4, 5, 6, 7];
    let fd = route_socket()?;
    // nlmsghdr (16 bytes) + ifinfomsg (16 bytes).
    let mut req = [0u8; 32];
    req[0..4].copy_from_slice(&32u32.to_ne_bytes());
    req[4..6].copy_from_slice(&RTM_GETLINK.to_ne_bytes());
    req[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[20..24].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    // SAFETY: sends `req` to the kernel (the default destination of an
    // unbound netlink socket).
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: reads into `buf`, within its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let msg = &buf[..n as usize];
    let u16_at = |b: &[u8], i: usize| b.get(i..i + 2).map(|x| u16::from_ne_bytes([x[0], x[1]]));
    match u16_at(msg, 4) {
        Some(RTM_NEWLINK) => {}
        Some(NLMSG_ERROR) => return Ok(Vec::new()), // ENODEV: not here
        _ => return Err(io::Error::other("unexpected rtnetlink answer")),
    }
    let len = (u16_at(msg, 0).unwrap_or(0) as usize).min(msg.len());
    let attrs = |b: &'_ [u8]| {
        let mut out = Vec::new();
        let mut i = 0;
        while let (Some(l), Some(t)) = (u16_at(b, i), u16_at(b, i + 2)) {
            let l = l as usize;
            if l < 4 || i + l > b.len() {
                break;
            }
            out.push((t & 0x3fff, b[i + 4..i + l].to_vec()));
            i += (l + 3) & !3;
        }
        out
    };
    let mut ids = Vec::new();
    for (t, v) in attrs(&msg[32.min(len)..len]) {
        if t != IFLA_XDP {
            continue;
        }
        for (t, v) in attrs(&v) {
            if PROG_IDS.contains(&t) && v.len() >= 4 {
                let id = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
                if id != 0 && !ids.contains(&id) {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}
