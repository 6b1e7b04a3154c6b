//! [`Driver`]: where [`Instance::drain`] puts what an instance produced. Every driver (the
//! Linux node's packet thread, the simulator's NAT element, the two-instance harness) drains
//! through it, so the driver contract is followed in one place.

use crate::instance::Instance;
use crate::{InstanceId, MigrationEvent, Output};
use flowshift_wire::Instant;

/// The receiving end of [`Instance::drain`]. Each method takes ownership of one item; none
/// may call back into the instance (the drain holds it).
pub trait Driver<M> {
    /// A packet to send or chain, or a dropped packet handed back.
    fn output(&mut self, out: Output<M>);
    /// A frame for the state-transfer channel to instance `to`.
    fn transmit(&mut self, to: InstanceId, frame: Vec<u8>);
    /// An event for the controller.
    fn event(&mut self, event: MigrationEvent);
    /// A mapping-log event of the NAT (port blocks allocated, released, migrated). Ignored by
    /// default; draining it anyway keeps the NAT's bounded event queue from overflowing.
    fn nat_event(&mut self, event: flowshift_nat::Event) {
        let _ = event;
    }
}

impl<M: Copy> Instance<M> {
    /// Follows the driver contract once: hands every queued output, then every transfer frame,
    /// then every event and NAT mapping-log event to `d`, and returns
    /// [`poll_timeout`](Self::poll_timeout). Call it after every `handle_*` call and command.
    pub fn drain(&mut self, d: &mut impl Driver<M>) -> Instant {
        while let Some(o) = self.poll_output() {
            d.output(o);
        }
        while let Some((to, frame)) = self.poll_transmit() {
            d.transmit(to, frame);
        }
        while let Some(e) = self.poll_event() {
            d.event(e);
        }
        while let Some(e) = self.poll_nat_event() {
            d.nat_event(e);
        }
        self.poll_timeout()
    }
}
