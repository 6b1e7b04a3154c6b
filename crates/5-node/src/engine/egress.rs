//! The sending side of the packet thread: queued frames sent in batches, recycled buffers.

use crate::config::MacAddr;
use crate::frame::{FrameSink, Peers, TxFrame};
use crate::stats::IoCounters;
use std::time::Duration;
use tracing::warn;

/// Most recycled packet buffers kept (with [`POOL_BUF_MAX`]: at most 128 MiB).
const POOL_MAX: usize = 1024;
/// Largest buffer kept for reuse (a GSO frame's).
const POOL_BUF_MAX: usize = 128 << 10;
/// Times a full socket is waited for (1 ms each) before the rest of a batch is dropped.
const TX_WAITS: u32 = 2;

/// The sending side of the packet thread: addresses, the frames waiting for the socket and
/// the recycled buffers.
pub(super) struct Egress {
    pub(super) mac: MacAddr,
    pub(super) inside: MacAddr,
    pub(super) outside: MacAddr,
    pub(super) peers: Peers,
    pub(super) vnet: bool,
    pub(super) batch: usize,
    pub(super) tx: Vec<TxFrame>,
    pub(super) pool: Vec<Vec<u8>>,
}

impl Egress {
    pub(super) fn queue_tx<S: FrameSink>(&mut self, f: TxFrame, io: &mut IoCounters, sink: &mut S) {
        self.tx.push(f);
        if self.tx.len() >= self.batch {
            self.flush_tx(io, sink);
        }
    }

    /// Sends the queued frames; a socket that stays full drops the rest (counted).
    pub(super) fn flush_tx<S: FrameSink>(&mut self, io: &mut IoCounters, sink: &mut S) {
        let mut tx = std::mem::take(&mut self.tx);
        let (mut off, mut waits) = (0, 0);
        while off < tx.len() {
            match sink.send(&tx[off..]) {
                Ok(0) if waits < TX_WAITS => {
                    waits += 1;
                    sink.wait_writable(Duration::from_millis(1));
                }
                Ok(0) => {
                    io.tx_queue_full += (tx.len() - off) as u64;
                    break;
                }
                Ok(n) => {
                    for f in &tx[off..off + n] {
                        io.tx_packets += 1;
                        io.tx_bytes += f.wire_len() as u64;
                    }
                    off += n;
                }
                Err(e) => {
                    io.tx_errors += 1;
                    if io.tx_errors.is_power_of_two() {
                        warn!(error = %e, len = tx[off].wire_len(), total = io.tx_errors, "send refused a frame");
                    }
                    off += 1;
                }
            }
        }
        for f in tx.drain(..) {
            self.recycle(f.pkt);
        }
        self.tx = tx;
    }

    pub(super) fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.pool.len() < POOL_MAX && buf.capacity() <= POOL_BUF_MAX {
            buf.clear();
            self.pool.push(buf);
        }
    }
}
