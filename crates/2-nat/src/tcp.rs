//! TCP session tracking per RFC 5382: which packets change a session's state, and which idle
//! timeout ("established" or "transitory") applies in each state.

use flowshift_wire::packet::tcp_flags::{FIN, RST, SYN};

/// Direction of a packet relative to the subscriber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// From a subscriber towards the outside.
    Out,
    /// From the outside towards a subscriber.
    In,
}

/// The state of a tracked TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TcpState {
    /// SYN seen outbound only (partially open).
    SynOut = 1,
    /// SYN seen inbound only (inbound-initiated under an existing mapping).
    SynIn = 2,
    /// SYNs seen in both directions.
    Established = 3,
    /// FIN seen outbound only (half closed).
    FinOut = 4,
    /// FIN seen inbound only (half closed).
    FinIn = 5,
    /// FINs seen in both directions.
    FinBoth = 6,
    /// RST seen.
    Reset = 7,
}

/// Which idle timeout applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum TimeoutClass {
    /// TCP established (>= 2 h 4 min).
    TcpEstablished = 0,
    /// TCP transitory (>= 4 min): SYN one way only, FIN both ways, or RST (RFC 5382 REQ-5).
    TcpTransitory = 1,
    /// UDP (>= 2 min).
    Udp = 2,
    /// ICMP query (60 s).
    Icmp = 3,
}

impl TcpState {
    /// Decodes the export byte.
    pub fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => TcpState::SynOut,
            2 => TcpState::SynIn,
            3 => TcpState::Established,
            4 => TcpState::FinOut,
            5 => TcpState::FinIn,
            6 => TcpState::FinBoth,
            7 => TcpState::Reset,
            _ => return None,
        })
    }

    /// The timeout class of this state.
    pub fn class(self) -> TimeoutClass {
        match self {
            TcpState::Established | TcpState::FinOut | TcpState::FinIn => {
                TimeoutClass::TcpEstablished
            }
            TcpState::SynOut | TcpState::SynIn | TcpState::FinBoth | TcpState::Reset => {
                TimeoutClass::TcpTransitory
            }
        }
    }

    /// The state after a packet with `flags` travelling in `dir`.
    pub fn next(self, dir: Dir, flags: u8) -> TcpState {
        use TcpState::*;
        if flags & RST != 0 {
            return Reset;
        }
        let mut s = self;
        if flags & SYN != 0 {
            s = match (s, dir) {
                (SynOut, Dir::In) | (SynIn, Dir::Out) => Established,
                // A new connection reusing the 4-tuple after the old one closed.
                (FinBoth | Reset, Dir::Out) => SynOut,
                (FinBoth | Reset, Dir::In) => SynIn,
                (s, _) => s,
            };
        }
        if flags & FIN != 0 {
            s = match (s, dir) {
                (Established, Dir::Out) => FinOut,
                (Established, Dir::In) => FinIn,
                (FinIn, Dir::Out) | (FinOut, Dir::In) => FinBoth,
                (s, _) => s,
            };
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TcpState::*;
    use flowshift_wire::packet::tcp_flags::ACK;

    #[test]
    fn three_way_handshake_and_close() {
        let s = SynOut.next(Dir::In, SYN | ACK);
        assert_eq!(s, Established);
        assert_eq!(s.next(Dir::Out, ACK), Established);
        let s = s.next(Dir::Out, FIN | ACK);
        assert_eq!((s, s.class()), (FinOut, TimeoutClass::TcpEstablished));
        let s = s.next(Dir::In, FIN | ACK);
        assert_eq!((s, s.class()), (FinBoth, TimeoutClass::TcpTransitory));
    }

    #[test]
    fn simultaneous_open_and_reset() {
        assert_eq!(SynOut.next(Dir::In, SYN), Established);
        assert_eq!(Established.next(Dir::In, RST | ACK), Reset);
        assert_eq!(Reset.class(), TimeoutClass::TcpTransitory);
        assert_eq!(Reset.next(Dir::Out, SYN), SynOut);
        assert_eq!(
            SynOut.next(Dir::Out, SYN),
            SynOut,
            "retransmitted SYN changes nothing"
        );
    }
}
