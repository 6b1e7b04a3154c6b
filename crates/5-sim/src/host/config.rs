//! What a host runs: its configuration ([`HostConfig`]), the TCP parameters of its
//! applications ([`TcpConfig`], [`Congestion`]) and the applications themselves ([`AppSpec`]).

use super::*;
/// Configuration of a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostConfig {
    /// Name used in reports.
    pub name: String,
    /// The host's IPv4 address. Must lie in 100.64.0.0/10 (subscribers), 198.18.0.0/15 or
    /// 203.0.113.0/24 (servers).
    pub addr: Ipv4Addr,
    /// IP MTU in bytes (1500 gives a TCP MSS of 1460).
    pub mtu: usize,
    /// Bound of the device receive queue in packets; overflow is a counted drop
    /// ([`crate::DropCause::HostRxFull`]).
    pub rx_queue_packets: usize,
    /// Compute checksums on transmit and verify IPv4/TCP/UDP checksums on receive (a datagram
    /// that fails is dropped as [`crate::DropCause::HostRejected`]). If false, checksums are
    /// neither computed nor checked.
    pub checksums: bool,
}

impl HostConfig {
    /// A host with MTU 1500, a 1024-packet receive queue and checksums on.
    pub fn new(name: impl Into<String>, addr: Ipv4Addr) -> Self {
        HostConfig {
            name: name.into(),
            addr,
            mtu: 1500,
            rx_queue_packets: 1024,
            checksums: true,
        }
    }
}

/// TCP congestion control algorithm (smoltcp's implementations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Congestion {
    /// CUBIC (RFC 9438).
    #[default]
    Cubic,
    /// NewReno-style AIMD.
    Reno,
    /// No congestion control (window limited only by the peer).
    None,
}

/// TCP socket parameters used by TCP applications.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TcpConfig {
    /// Congestion control algorithm.
    pub congestion: Congestion,
    /// Receive buffer in bytes (≤ 1 GiB); the window scale follows from it.
    pub rx_buffer: usize,
    /// Send buffer in bytes.
    pub tx_buffer: usize,
    /// Nagle's algorithm.
    pub nagle: bool,
    /// Delayed-ACK timeout (`None` acks every segment at once).
    pub ack_delay: Option<Duration>,
}

impl Default for TcpConfig {
    /// Cubic, 256 KiB buffers (2 BDP at 1 Gbit/s and 1 ms RTT), Nagle off, 10 ms delayed ACK.
    fn default() -> Self {
        TcpConfig {
            congestion: Congestion::Cubic,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            nagle: false,
            ack_delay: Some(Duration::from_millis(10)),
        }
    }
}

/// An application to run on a host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AppSpec {
    /// A TCP client: connects to `dst` at `start`, sends `bytes` (forever if `None`), then
    /// closes. Completion is the time the connection reaches TIME-WAIT or CLOSED after our FIN.
    TcpSource {
        /// Server address and port.
        dst: SocketAddrV4,
        /// Bytes to send; `None` sends forever (iperf-like).
        bytes: Option<u64>,
        /// When to connect.
        start: Instant,
        /// Socket parameters.
        tcp: TcpConfig,
    },
    /// A TCP server that accepts up to `backlog` concurrent connections on `port`, reads and
    /// counts every byte (goodput), closes when the peer closes, and listens again.
    TcpSink {
        /// Listening port.
        port: u16,
        /// Number of listening sockets (concurrent connections), ≥ 1.
        backlog: usize,
        /// Socket parameters.
        tcp: TcpConfig,
    },
    /// A constant-bit-rate UDP source: one datagram of `payload_len` bytes every `interval`
    /// from `start` (inclusive) to `stop` (exclusive).
    UdpCbr {
        /// Destination address and port.
        dst: SocketAddrV4,
        /// UDP payload bytes per datagram (≤ MTU − 28).
        payload_len: usize,
        /// Time between datagrams (> 0).
        interval: Duration,
        /// First send time.
        start: Instant,
        /// No datagram is sent at or after this time.
        stop: Instant,
    },
    /// A UDP receiver counting datagrams and bytes on `port`.
    UdpSink {
        /// Bound port.
        port: u16,
    },
}
