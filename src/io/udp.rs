use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// A bound UDP socket and what the kernel granted.
#[derive(Debug)]
pub struct BoundUdp {
    /// The socket, non-blocking.
    pub socket: UdpSocket,
    /// The bound address (the real port when port 0 was asked for).
    pub local: SocketAddr,
    /// `SO_RCVBUF` asked for, bytes.
    pub rcvbuf_requested: usize,
    /// `SO_RCVBUF` read back (Linux reports twice the granted size, which counts overhead).
    pub rcvbuf_effective: usize,
    /// Whether `SO_RXQ_OVFL` (kernel drop counter) is on.
    pub rxq_ovfl: bool,
}

fn setsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `fd` is an open socket owned by the caller; the option value is a valid c_int
    // whose size is passed alongside it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Binds a non-blocking UDP socket with an explicit receive buffer. When the kernel caps
/// `SO_RCVBUF` below the request (`net.core.rmem_max`), `SO_RCVBUFFORCE` is tried (it needs
/// `CAP_NET_ADMIN`); the effective size is read back either way. `reuse_port` lets several
/// sockets (one per rx thread) share the address.
pub fn bind_udp(addr: SocketAddr, rcvbuf: usize, reuse_port: bool) -> io::Result<BoundUdp> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if rcvbuf > 0 {
        socket.set_recv_buffer_size(rcvbuf)?;
        // Linux reports double the granted size.
        if socket.recv_buffer_size()? < rcvbuf.saturating_mul(2) {
            let v = libc::c_int::try_from(rcvbuf).unwrap_or(libc::c_int::MAX);
            let _ = setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, v);
        }
    }
    let rxq_ovfl = setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1).is_ok();
    // Kernel receive timestamps (CLOCK_REALTIME) for receive-to-applied latency.
    let _ = setsockopt_int(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let rcvbuf_effective = socket.recv_buffer_size()?;
    let socket: UdpSocket = socket.into();
    let local = socket.local_addr()?;
    Ok(BoundUdp { socket, local, rcvbuf_requested: rcvbuf, rcvbuf_effective, rxq_ovfl })
}

fn sockaddr_to_std(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which is smaller than
            // sockaddr_storage and has no stricter alignment.
            let a: &libc::sockaddr_in = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(storage as *const libc::sockaddr_storage).cast() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn std_to_sockaddr(addr: &SocketAddr, storage: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let sa: socket2::SockAddr = (*addr).into();
    let len = sa.len() as usize;
    // SAFETY: `sa` holds `len` valid bytes of a sockaddr, and `len` ≤ size_of::<sockaddr_storage>()
    // (socket2 stores addresses in a sockaddr_storage).
    unsafe {
        std::ptr::copy_nonoverlapping(
            sa.as_ptr().cast::<u8>(),
            (storage as *mut libc::sockaddr_storage).cast::<u8>(),
            len,
        );
    }
    sa.len()
}

const CMSG_BUF: usize = 64;

/// Recycled buffers for one `recvmmsg` call of up to `capacity` datagrams.
pub struct RecvBatch {
    slot: usize,
    data: Vec<u8>,
    lens: Vec<usize>,
    truncated: Vec<bool>,
    rx_ns: Vec<u64>,
    addrs: Vec<libc::sockaddr_storage>,
    cmsgs: Vec<[u64; CMSG_BUF / 8]>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    received: usize,
    kernel_drops: Option<u32>,
    /// When [`RecvBatch::poll_kernel_drops`] last asked the kernel (ns, the caller's clock).
    drops_read_ns: u64,
}

// SAFETY: the raw pointers inside `iovecs` and `hdrs` only ever point into this struct's own
// heap buffers and are rebuilt before each use, so moving the batch to another thread is sound.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch").field("capacity", &self.lens.len()).field("slot", &self.slot).finish()
    }
}

/// How often `RecvBatch::poll_kernel_drops` asks the kernel at most: the drops of a burst's
/// end show within this (or, on a socket gone quiet, by its reader's next poll timeout).
pub const DROPS_READ_EVERY_NS: u64 = 50_000_000;

impl RecvBatch {
    /// Buffers for `capacity` datagrams of at most `slot` bytes each. Pages of the slots are only
    /// touched as large datagrams arrive, so a 64 KiB slot costs little for small heartbeats.
    pub fn new(capacity: usize, slot: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            slot,
            data: vec![0; capacity * slot],
            lens: vec![0; capacity],
            truncated: vec![false; capacity],
            rx_ns: vec![0; capacity],
            // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
            // bytes are a valid value.
            addrs: vec![unsafe { zeroed() }; capacity],
            cmsgs: vec![[0; CMSG_BUF / 8]; capacity],
            // SAFETY: as above.
            iovecs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; capacity],
            received: 0,
            kernel_drops: None,
            drops_read_ns: 0,
        }
    }

    /// Receives up to `capacity` datagrams without blocking. Returns how many (0 = nothing
    /// pending).
    pub fn recv(&mut self, socket: &impl AsRawFd) -> io::Result<usize> {
        let n = self.lens.len();
        for i in 0..n {
            self.iovecs[i] =
                libc::iovec { iov_base: self.data[i * self.slot..].as_mut_ptr().cast(), iov_len: self.slot };
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovecs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_BUF as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at live buffers of this batch with their true lengths;
        // the kernel writes at most those lengths. The socket fd is open for the call.
        let rc = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            self.received = 0;
            return if e.kind() == io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let got = rc as usize;
        self.received = got;
        for i in 0..got {
            let h = &self.hdrs[i];
            self.lens[i] = (h.msg_len as usize).min(self.slot);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
            self.rx_ns[i] = 0;
            // SAFETY: the control buffer was filled by the kernel up to msg_controllen; the
            // CMSG_* macros walk it within those bounds.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                        self.kernel_drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<u32>()));
                    } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                        let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                        self.rx_ns[i] =
                            (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64);
                    }
                    c = libc::CMSG_NXTHDR(&h.msg_hdr, c);
                }
            }
        }
        Ok(got)
    }

    /// Datagrams of the last `recv`.
    pub fn len(&self) -> usize {
        self.received
    }

    /// True when the last `recv` got nothing.
    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// Datagram `i` of the last `recv`: bytes, source, and whether the kernel truncated it.
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>, bool) {
        let start = i * self.slot;
        (&self.data[start..start + self.lens[i]], sockaddr_to_std(&self.addrs[i]), self.truncated[i])
    }

    /// Datagram `i` of the last `recv` without its source: bytes, and whether the kernel
    /// truncated it.
    pub fn datagram(&self, i: usize) -> (&[u8], bool) {
        let start = i * self.slot;
        (&self.data[start..start + self.lens[i]], self.truncated[i])
    }

    /// The kernel's receive time of datagram `i` (ns since the epoch), or 0 when unknown.
    pub fn rx_ns(&self, i: usize) -> u64 {
        self.rx_ns[i]
    }

    /// The kernel's cumulative count of datagrams dropped on this socket, as last reported.
    pub fn kernel_drops(&self) -> Option<u32> {
        self.kernel_drops
    }

    /// Reads the kernel's drop count of `socket` (`SO_MEMINFO`), for when no datagram has
    /// arrived since the drops to carry it (`SO_RXQ_OVFL` only rides on received datagrams, so
    /// drops at the end of a burst would otherwise stay unreported); remembered as the latest.
    /// Called each time the socket runs empty, it asks the kernel at most once per
    /// 50 ms of `now_ns` (`DROPS_READ_EVERY_NS`; the syscall would otherwise come with every
    /// wake-up of a lightly loaded socket); `None` asks now (at a stop).
    pub fn poll_kernel_drops(&mut self, socket: &impl AsRawFd, now_ns: Option<u64>) -> Option<u32> {
        if let Some(now) = now_ns {
            if now.saturating_sub(self.drops_read_ns) < DROPS_READ_EVERY_NS {
                return self.kernel_drops;
            }
            self.drops_read_ns = now;
        }
        let mut info = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
        let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `info` and updates `len`.
        let rc = unsafe {
            libc::getsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len)
        };
        if rc == 0 && len as usize >= std::mem::size_of_val(&info) {
            let drops = info[libc::SK_MEMINFO_DROPS as usize];
            self.kernel_drops = Some(self.kernel_drops.map_or(drops, |k| k.max(drops)));
        }
        self.kernel_drops
    }
}

/// Reused buffers for `sendmmsg` of up to `capacity` datagrams.
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<libc::sockaddr_storage>,
    addr_lens: Vec<libc::socklen_t>,
    iovecs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    len: usize,
}

// SAFETY: as for RecvBatch, the pointers are rebuilt before each use and point into owned data.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").field("len", &self.len).finish()
    }
}

impl SendBatch {
    /// Room for `capacity` datagrams.
    pub fn new(capacity: usize) -> SendBatch {
        let capacity = capacity.max(1);
        SendBatch {
            bufs: (0..capacity).map(|_| Vec::new()).collect(),
            // SAFETY: plain C structs; all-zero bytes are valid values.
            addrs: vec![unsafe { zeroed() }; capacity],
            addr_lens: vec![0; capacity],
            // SAFETY: as above.
            iovecs: vec![unsafe { zeroed() }; capacity],
            // SAFETY: as above.
            hdrs: vec![unsafe { zeroed() }; capacity],
            len: 0,
        }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True when no more datagrams fit.
    pub fn is_full(&self) -> bool {
        self.len == self.bufs.len()
    }

    /// Copies queued datagram `i` into `into`.
    pub fn copy_out(&self, i: usize, into: &mut Vec<u8>) {
        into.clear();
        if let Some(b) = self.bufs.get(i) {
            into.extend_from_slice(b);
        }
    }

    /// Drops everything queued.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Queues a datagram: `fill` writes its bytes into a cleared, reused buffer.
    pub fn push(&mut self, to: &SocketAddr, fill: impl FnOnce(&mut Vec<u8>)) -> bool {
        if self.is_full() {
            return false;
        }
        let i = self.len;
        self.bufs[i].clear();
        fill(&mut self.bufs[i]);
        self.addr_lens[i] = std_to_sockaddr(to, &mut self.addrs[i]);
        self.len += 1;
        true
    }

    /// Sends everything queued (retrying on a partial send), then clears the batch. Returns the
    /// number sent; on `WouldBlock` the unsent rest stays queued.
    pub fn flush(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut sent = 0;
        while sent < self.len {
            let n = self.len - sent;
            for i in 0..n {
                let j = sent + i;
                self.iovecs[i] =
                    libc::iovec { iov_base: self.bufs[j].as_mut_ptr().cast(), iov_len: self.bufs[j].len() };
                let h = &mut self.hdrs[i];
                h.msg_hdr.msg_name = (&mut self.addrs[j] as *mut libc::sockaddr_storage).cast();
                h.msg_hdr.msg_namelen = self.addr_lens[j];
                h.msg_hdr.msg_iov = &mut self.iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = std::ptr::null_mut();
                h.msg_hdr.msg_controllen = 0;
                h.msg_hdr.msg_flags = 0;
            }
            // SAFETY: the headers point at live, initialised buffers with their true lengths.
            let rc = unsafe { libc::sendmmsg(socket.as_raw_fd(), self.hdrs.as_mut_ptr(), n as libc::c_uint, 0) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock && sent > 0 {
                    break;
                }
                self.shift(sent);
                return Err(e);
            }
            sent += rc as usize;
        }
        self.shift(sent);
        Ok(sent)
    }

    fn shift(&mut self, sent: usize) {
        if sent >= self.len {
            self.len = 0;
            return;
        }
        self.bufs[..self.len].rotate_left(sent);
        self.addrs[..self.len].rotate_left(sent);
        self.addr_lens[..self.len].rotate_left(sent);
        self.len -= sent;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recvmmsg_and_sendmmsg_over_loopback() {
        let rx = bind_udp("127.0.0.1:0".parse().expect("addr"), 1 << 20, false).expect("bind");
        assert!(rx.rcvbuf_effective > 0);
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut out = SendBatch::new(8);
        for i in 0..5u8 {
            assert!(out.push(&rx.local, |b| b.extend_from_slice(&[i; 100])));
        }
        assert_eq!(out.flush(&tx).expect("send"), 5);
        // A datagram larger than the slot is reported as truncated.
        tx.send_to(&[9u8; 300], rx.local).expect("send");
        let mut batch = RecvBatch::new(16, 200);
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = batch.recv(&rx.socket).expect("recv");
            for i in 0..n {
                let (d, from, trunc) = batch.get(i);
                assert_eq!(from, Some(tx.local_addr().expect("addr")));
                got.push((d.to_vec(), trunc));
            }
            if got.len() == 6 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got.len(), 6);
        for (i, (d, trunc)) in got.iter().take(5).enumerate() {
            assert_eq!(d, &vec![i as u8; 100]);
            assert!(!trunc);
        }
        assert!(got[5].1, "truncated flag");
        assert_eq!(got[5].0.len(), 200);
    }
}
