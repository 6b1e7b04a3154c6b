//! Packet I/O on one interface: an AF_PACKET socket with a TPACKET_V3 receive ring and
//! batched sends (`sendmmsg`), written against libc directly.
//!
//! Socket set-up, in the order the kernel requires: `PACKET_VNET_HDR` (optional),
//! `PACKET_VERSION = TPACKET_V3`, `PACKET_IGNORE_OUTGOING` (the node does not see its own
//! sends), `PACKET_QDISC_BYPASS` (optional), `PACKET_RX_RING` + `mmap`, `bind` to the interface
//! for every protocol, then promiscuous membership (frames to any MAC arrive, the switch's
//! rewritten ones and chained ones alike) and a large send buffer.
//!
//! **Receive.** The ring is `blocks` blocks of `block_size` bytes; the kernel fills a block
//! with frames and hands it over when it is full or after the retire timeout
//! ([`RETIRE_MS`]), so a lone frame waits at most that long. [`RxRing::poll`] walks
//! the handed-over blocks in order, gives each frame to a closure and returns the block. With
//! `vnet_hdr` each frame is preceded by its `virtio_net_hdr` (GSO super-frames of up to 64 KiB
//! arrive whole; a block must hold one). Frames the kernel could not store are counted by
//! [`RxRing::stats`] (`PACKET_STATISTICS`, reset by each read).
//!
//! **Send.** [`Tx`] implements [`FrameSink`]: up to 1024 frames per `sendmmsg`, each as two
//! iovecs (header, packet), non-blocking; a full socket returns 0 and [`Tx::wait_writable`]
//! waits for room.

use crate::frame::{FrameSink, RxFrame, TxFrame, VNET_HDR_LEN, VnetHdr};
use crate::sys::{Waker, os_error, poll_fds};
use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{Ordering, fence};
use std::time::Duration;

/// Block retire timeout of the receive ring (`tp_retire_blk_tov`), ms: the kernel hands over
/// a block at most this long after its first frame, which bounds how long a lone frame waits
/// in the ring and how late a blocked packet loop wakes for it. 1 is the least the field can
/// say (it counts milliseconds; 0 asks for a kernel default of several ms). Where the kernel
/// runs this timer on jiffies it rounds up to one tick (4 ms at HZ=250); on the 6.18 test
/// machine a lone frame's round trip through two such rings (node and injector) measured
/// about 1.9 ms, i.e. about 1 ms per ring.
pub const RETIRE_MS: u32 = 1;
/// Most frames per `sendmmsg` call (the kernel's `UIO_MAXIOV`).
const MAX_SEND: usize = 1024;
/// Send buffer asked for (forced when privileged).
const SNDBUF: libc::c_int = 4 << 20;
/// `tp_frame_size` for the ring request (V3 uses it only for sanity checks).
const FRAME_SIZE: usize = 2048;

/// What to open.
#[derive(Clone, Debug)]
pub struct SocketConfig {
    /// Interface name.
    pub interface: String,
    /// Exchange virtio-net headers (`PACKET_VNET_HDR`).
    pub vnet_hdr: bool,
    /// Bytes per ring block (a multiple of the page size).
    pub block_size: usize,
    /// Blocks in the ring.
    pub blocks: usize,
    /// `PACKET_QDISC_BYPASS`.
    pub qdisc_bypass: bool,
}

impl SocketConfig {
    /// The socket a node configuration asks for.
    pub fn from_node(cfg: &crate::NodeConfig) -> SocketConfig {
        SocketConfig {
            interface: cfg.interface.clone(),
            vnet_hdr: cfg.vnet_hdr,
            block_size: cfg.ring_block_kib as usize * 1024,
            blocks: cfg.ring_blocks as usize,
            qdisc_bypass: cfg.qdisc_bypass,
        }
    }
}

/// The mmap'ed receive ring.
pub struct RxRing {
    fd: RawFd,
    base: *mut u8,
    len: usize,
    block_size: usize,
    blocks: usize,
    next: usize,
    vnet: bool,
}

// SAFETY: the ring mapping is owned by this value alone (no aliasing handle escapes), and the
// kernel side synchronises through the block status words with the fences in `poll`.
unsafe impl Send for RxRing {}

/// The sending side.
pub struct Tx {
    fd: RawFd,
    iovs: Vec<libc::iovec>,
    msgs: Vec<libc::mmsghdr>,
}

// SAFETY: the iovec/mmsghdr scratch vectors hold pointers only during a `send` call.
unsafe impl Send for Tx {}

/// An AF_PACKET socket bound to one interface (see the module docs).
pub struct AfPacket {
    // Field order is drop order: unmap the ring, then close the descriptor.
    rx: RxRing,
    tx: Tx,
    _fd: OwnedFd,
    ifindex: u32,
}

fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    val: &T,
    what: &str,
) -> io::Result<()> {
    // SAFETY: `val` points at a live `T` of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (val as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(os_error(what));
    }
    Ok(())
}

impl AfPacket {
    /// Opens and configures the socket (needs CAP_NET_RAW).
    pub fn open(cfg: &SocketConfig) -> io::Result<AfPacket> {
        let name = CString::new(cfg.interface.as_str())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(os_error(&format!("interface {:?}", cfg.interface)));
        }
        // Protocol 0: receive nothing until the ring is set up and the socket is bound.
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(os_error("socket(AF_PACKET) (needs root or CAP_NET_RAW)"));
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let one: libc::c_int = 1;
        if cfg.vnet_hdr {
            setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                &one,
                "PACKET_VNET_HDR",
            )?;
        }
        let v3 = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_VERSION,
            &v3,
            "PACKET_VERSION V3",
        )?;
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_IGNORE_OUTGOING,
            &one,
            "PACKET_IGNORE_OUTGOING",
        )?;
        if cfg.qdisc_bypass {
            setsockopt(
                raw,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                &one,
                "PACKET_QDISC_BYPASS",
            )?;
        }
        let page = 4096usize;
        if cfg.block_size < 2 * FRAME_SIZE || !cfg.block_size.is_multiple_of(page) || cfg.blocks < 2
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "ring block size must be a multiple of 4 KiB, >= 4 KiB, with >= 2 blocks",
            ));
        }
        let req = libc::tpacket_req3 {
            tp_block_size: cfg.block_size as libc::c_uint,
            tp_block_nr: cfg.blocks as libc::c_uint,
            tp_frame_size: FRAME_SIZE as libc::c_uint,
            tp_frame_nr: (cfg.block_size / FRAME_SIZE * cfg.blocks) as libc::c_uint,
            tp_retire_blk_tov: RETIRE_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_RX_RING,
            &req,
            "PACKET_RX_RING",
        )?;
        let len = cfg.block_size * cfg.blocks;
        // SAFETY: maps the ring the kernel just allocated for this socket.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                raw,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(os_error("mmap of the receive ring"));
        }
        let rx = RxRing {
            fd: raw,
            base: base.cast(),
            len,
            block_size: cfg.block_size,
            blocks: cfg.blocks,
            next: 0,
            vnet: cfg.vnet_hdr,
        };
        // SAFETY: sockaddr_ll is plain data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex as libc::c_int;
        // SAFETY: a valid sockaddr_ll of the size passed.
        let r = unsafe {
            libc::bind(
                raw,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(os_error(&format!("bind to {:?}", cfg.interface)));
        }
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as libc::c_int,
            mr_type: libc::PACKET_MR_PROMISC as libc::c_ushort,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(
            raw,
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            &mreq,
            "PACKET_ADD_MEMBERSHIP promisc",
        )?;
        if setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            &SNDBUF,
            "SO_SNDBUFFORCE",
        )
        .is_err()
        {
            setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, &SNDBUF, "SO_SNDBUF")?;
        }
        Ok(AfPacket {
            rx,
            tx: Tx {
                fd: raw,
                iovs: Vec::with_capacity(2 * MAX_SEND),
                msgs: Vec::with_capacity(MAX_SEND),
            },
            _fd: fd,
            ifindex,
        })
    }

    /// The interface index the socket is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The receive and send sides, borrowed separately (the packet loop sends while it
    /// walks the ring).
    pub fn split(&mut self) -> (&mut RxRing, &mut Tx) {
        (&mut self.rx, &mut self.tx)
    }
}

/// Kernel counters of the receive ring since the previous read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Frames dropped because no block was free.
    pub drops: u64,
    /// Times the ring was frozen for lack of a free block.
    pub freezes: u64,
}

impl RxRing {
    /// Hands every frame of up to `max_blocks` retired blocks to `f`, in order, and returns the
    /// blocks to the kernel; the number of frames.
    pub fn poll(&mut self, max_blocks: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let hdr_len = std::mem::size_of::<libc::tpacket3_hdr>();
        let sll_off = (hdr_len + 15) & !15;
        let mut frames = 0;
        for _ in 0..max_blocks {
            // SAFETY: `next < blocks`, so the block lies inside the mapping.
            let block = unsafe { self.base.add(self.next * self.block_size) };
            let desc = block.cast::<libc::tpacket_block_desc>();
            // SAFETY: the block descriptor is at the start of the block; the status word is
            // read and written with volatile accesses because the kernel shares it.
            let status_ptr = unsafe { &raw mut (*desc).hdr.bh1.block_status };
            if unsafe { status_ptr.read_volatile() } & libc::TP_STATUS_USER == 0 {
                break;
            }
            fence(Ordering::Acquire);
            // SAFETY: as above; the block is ours until we write TP_STATUS_KERNEL back.
            let (num, first) = unsafe {
                (
                    (&raw const (*desc).hdr.bh1.num_pkts).read_volatile(),
                    (&raw const (*desc).hdr.bh1.offset_to_first_pkt).read_volatile(),
                )
            };
            let mut off = first as usize;
            for _ in 0..num {
                if off + sll_off + std::mem::size_of::<libc::sockaddr_ll>() > self.block_size {
                    break;
                }
                // SAFETY: in bounds (checked above); unaligned reads of plain data.
                let h: libc::tpacket3_hdr =
                    unsafe { block.add(off).cast::<libc::tpacket3_hdr>().read_unaligned() };
                let sll: libc::sockaddr_ll = unsafe {
                    block
                        .add(off + sll_off)
                        .cast::<libc::sockaddr_ll>()
                        .read_unaligned()
                };
                let (mac, snap) = (h.tp_mac as usize, h.tp_snaplen as usize);
                let vnet_ok = !self.vnet || mac >= VNET_HDR_LEN;
                if !vnet_ok || off + mac + snap > self.block_size {
                    break;
                }
                // SAFETY: `off + mac + snap` lies inside the block (checked above), and the
                // kernel does not write to a block it handed over.
                let data = unsafe { std::slice::from_raw_parts(block.add(off + mac), snap) };
                let vnet = self.vnet.then(|| {
                    // SAFETY: the header precedes the frame inside the block (checked above).
                    let b = unsafe {
                        block
                            .add(off + mac - VNET_HDR_LEN)
                            .cast::<[u8; VNET_HDR_LEN]>()
                            .read_unaligned()
                    };
                    VnetHdr::from_bytes(&b)
                });
                f(RxFrame {
                    data,
                    vnet,
                    truncated: h.tp_snaplen < h.tp_len,
                    vlan: h.tp_status & libc::TP_STATUS_VLAN_VALID != 0,
                    outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
                    csum_not_ready: h.tp_status & libc::TP_STATUS_CSUMNOTREADY != 0,
                    stamp_ns: u64::from(h.tp_sec) * 1_000_000_000 + u64::from(h.tp_nsec),
                });
                frames += 1;
                off += h.tp_next_offset as usize;
            }
            fence(Ordering::Release);
            // SAFETY: returns the block to the kernel.
            unsafe { status_ptr.write_volatile(libc::TP_STATUS_KERNEL) };
            self.next = (self.next + 1) % self.blocks;
        }
        frames
    }

    /// True if the next block is retired (frames wait in the ring for [`RxRing::poll`]).
    pub fn has_retired_block(&self) -> bool {
        // SAFETY: `next < blocks`, so the block descriptor lies inside the mapping; its status
        // word is shared with the kernel and read volatile, as in `poll`.
        let status = unsafe {
            let desc = self
                .base
                .add(self.next * self.block_size)
                .cast::<libc::tpacket_block_desc>();
            (&raw const (*desc).hdr.bh1.block_status).read_volatile()
        };
        status & libc::TP_STATUS_USER != 0
    }

    /// Waits up to `timeout` for a retired block, or for `waker` to be signalled.
    pub fn wait(&self, timeout: Duration, waker: Option<&Waker>) -> bool {
        match waker {
            Some(w) => poll_fds(&[(self.fd, libc::POLLIN), (w.fd(), libc::POLLIN)], timeout),
            None => poll_fds(&[(self.fd, libc::POLLIN)], timeout),
        }
    }

    /// Reads and resets the kernel's ring counters.
    pub fn stats(&self) -> io::Result<RingStats> {
        // SAFETY: plain data.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: buffer and length match.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(os_error("PACKET_STATISTICS"));
        }
        Ok(RingStats {
            drops: u64::from(st.tp_drops),
            freezes: u64::from(st.tp_freeze_q_cnt),
        })
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping created in `open`, exactly once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl FrameSink for Tx {
    fn send(&mut self, frames: &[TxFrame]) -> io::Result<usize> {
        let n = frames.len().min(MAX_SEND);
        if n == 0 {
            return Ok(0);
        }
        self.iovs.clear();
        self.msgs.clear();
        for f in &frames[..n] {
            let head = f.head();
            self.iovs.push(libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            });
            self.iovs.push(libc::iovec {
                iov_base: f.pkt.as_ptr() as *mut libc::c_void,
                iov_len: f.pkt.len(),
            });
        }
        for i in 0..n {
            // SAFETY: msghdr is plain data; all-zero is a valid empty header.
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            // SAFETY: `2 * i + 1 < iovs.len()`; the vector is not touched until the call ends.
            hdr.msg_iov = unsafe { self.iovs.as_mut_ptr().add(2 * i) };
            hdr.msg_iovlen = 2;
            self.msgs.push(libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            });
        }
        // SAFETY: `msgs` holds `n` headers whose iovecs point into `frames`, alive for the call.
        let r = unsafe {
            libc::sendmmsg(
                self.fd,
                self.msgs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(r as usize)
    }

    fn wait_writable(&mut self, timeout: Duration) {
        poll_fds(&[(self.fd, libc::POLLOUT)], timeout);
    }
}
