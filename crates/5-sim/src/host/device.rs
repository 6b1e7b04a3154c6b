//! The virtual device under a host's smoltcp interface: receive and transmit tokens over
//! the simulator's packet buffers, with the transmit budget that gives egress backpressure,
//! and the conversion between virtual time and smoltcp time.

use super::*;
pub(crate) struct SimDevice {
    pub(super) rx: VecDeque<Vec<u8>>,
    pub(super) spent: Vec<Vec<u8>>,
    pub tx: Vec<Vec<u8>>,
    pub free: Vec<Vec<u8>>,
    pub(super) budget: usize,
    pub(super) exhausted: bool,
    pub(super) caps: DeviceCapabilities,
}

pub(crate) struct SimRx<'a> {
    buf: Vec<u8>,
    spent: &'a mut Vec<Vec<u8>>,
}

pub(crate) struct SimTx<'a> {
    tx: &'a mut Vec<Vec<u8>>,
    free: &'a mut Vec<Vec<u8>>,
    budget: &'a mut usize,
    mtu: usize,
}

impl phy::RxToken for SimRx<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let SimRx { buf, spent } = self;
        let r = f(&buf);
        spent.push(buf);
        r
    }
}

impl phy::TxToken for SimTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.mtu.max(len)));
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.tx.push(buf);
        *self.budget = self.budget.saturating_sub(1);
        r
    }
}

impl phy::Device for SimDevice {
    type RxToken<'a> = SimRx<'a>;
    type TxToken<'a> = SimTx<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let buf = self.rx.pop_front()?;
        // Replies generated while receiving (RST, immediate ACK) are not budgeted: refusing
        // them would stall ingress. They may overflow the link queue (a counted drop).
        Some((
            SimRx {
                buf,
                spent: &mut self.spent,
            },
            SimTx {
                tx: &mut self.tx,
                free: &mut self.free,
                budget: &mut self.budget,
                mtu: self.caps.max_transmission_unit,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.budget == 0 {
            self.exhausted = true;
            return None;
        }
        Some(SimTx {
            tx: &mut self.tx,
            free: &mut self.free,
            budget: &mut self.budget,
            mtu: self.caps.max_transmission_unit,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.caps.clone()
    }
}
pub(crate) fn to_smol(t: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros((t.as_nanos() / 1000) as i64)
}

pub(super) fn from_smol(t: smoltcp::time::Instant) -> Instant {
    Instant::from_nanos((t.total_micros().max(0) as u64).saturating_mul(1000))
}
