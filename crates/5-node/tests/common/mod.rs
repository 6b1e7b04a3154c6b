//! Shared test helpers: configurations, an engine without threads, a capturing frame sink,
//! packet builders (etherparse, independent of the workspace's parser) and checksum checks.
#![allow(dead_code)]

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use flowshift_node::NodeConfig;
use flowshift_node::control::{self, ControlEnds};
use flowshift_node::engine::{Engine, Links};
use flowshift_node::frame::{
    ETH_HLEN, FrameSink, TxFrame, VNET_F_NEEDS_CSUM, VNET_HDR_LEN, VnetHdr,
};
use flowshift_node::stats::{ControlCounters, SnapshotCell, TransferCounters};
use flowshift_node::transfer::{self, TransferEnds};
use flowshift_trust::pki::{Party, ScratchPki};
use std::path::Path;
use std::sync::{Arc, OnceLock};

pub const NODE1: [u8; 6] = [2, 0xf5, 0, 0, 0, 1];
pub const NODE2: [u8; 6] = [2, 0xf5, 0, 0, 0, 2];
pub const INSIDE: [u8; 6] = [2, 0xf5, 0, 0, 1, 0];
pub const OUTSIDE: [u8; 6] = [2, 0xf5, 0, 0, 2, 0];
pub const EXT: [u8; 4] = [198, 18, 0, 1];
pub const SERVER: [u8; 4] = [203, 0, 113, 10];

/// Credentials for nodes 1..=3, the controller, the operator and the monitor, shared by this
/// test binary's tests (in cargo's per-crate temp folder under target/).
pub fn pki() -> &'static ScratchPki {
    static PKI: OnceLock<ScratchPki> = OnceLock::new();
    PKI.get_or_init(|| {
        let parties = [
            Party::Node(1),
            Party::Node(2),
            Party::Node(3),
            Party::Controller,
            Party::Operator,
            Party::Monitor,
        ];
        ScratchPki::new(Path::new(env!("CARGO_TARGET_TMPDIR")), &parties).expect("test PKI")
    })
}

/// A `/metrics` client of node `node`'s endpoint `ep` presenting `party`'s certificate.
pub fn metrics_client(
    ep: flowshift_http::Endpoint,
    node: u16,
    party: Party,
) -> flowshift_http::Client {
    let creds = flowshift_trust::Credentials::load(&pki().files(party)).unwrap();
    flowshift_http::Client::new(ep).with_tls(Some(flowshift_http::ClientTls {
        config: creds.client_config().unwrap(),
        server_name: flowshift_trust::server_name(&flowshift_trust::node_name(node)).unwrap(),
    }))
}

/// Accepts one control connection on `l` as a fake controller would: mutual TLS with
/// `party`'s credentials (the controller's, or an impostor's); a line reader (10 s read
/// timeout) and a writer. The handshake's error if it fails.
pub fn accept_control(
    l: &std::net::TcpListener,
    party: Party,
) -> std::io::Result<(
    std::io::BufReader<flowshift_trust::split::TlsReader>,
    flowshift_trust::split::TlsWriter,
)> {
    let creds = flowshift_trust::Credentials::load(&pki().files(party)).unwrap();
    let (tcp, _) = l.accept()?;
    let (conn, tcp) = flowshift_trust::split::accept(
        tcp,
        creds.server_config().unwrap(),
        std::time::Duration::from_secs(5),
    )?;
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    tcp.set_write_timeout(Some(std::time::Duration::from_secs(10)))?;
    let (r, w) = flowshift_trust::split::split(conn, tcp)?;
    Ok((std::io::BufReader::new(r), w))
}

/// Node `id`'s TLS client configuration.
pub fn client_tls(id: u16) -> Arc<rustls::ClientConfig> {
    flowshift_trust::Credentials::load(&pki().files(Party::Node(id)))
        .unwrap()
        .client_config()
        .unwrap()
}

/// A node configuration: node `id` of two (1 and 2), serving 198.18.0.1 <- 100.64.0.0/16 if
/// `serves`; `extra` is appended to the top-level keys.
pub fn config(
    id: u16,
    serves: bool,
    transfer: &str,
    peer_transfer: &str,
    extra: &str,
) -> NodeConfig {
    let peer = if id == 1 { 2 } else { 1 };
    let tls = pki().toml(Party::Node(id));
    let groups = if serves {
        r#"groups = [{ external = "198.18.0.1", subscribers = "100.64.0.0/16" }]"#
    } else {
        ""
    };
    NodeConfig::parse(&format!(
        r#"
id = {id}
interface = "lo"
mac = "02:f5:00:00:00:0{id}"
inside_next_hop = "02:f5:00:00:01:00"
outside_next_hop = "02:f5:00:00:02:00"
controller = "127.0.0.1:9"
transfer_listen = "{transfer}"
tls = {tls}
{extra}
[[peers]]
id = {peer}
mac = "02:f5:00:00:00:0{peer}"
transfer = "{peer_transfer}"
[nat]
{groups}
[migration]
rto_initial = 20
"#
    ))
    .expect("test configuration")
}

/// The far ends of an engine's queues (kept alive so the engine's sends succeed).
pub struct Ends {
    pub transfer: TransferEnds,
    pub control: ControlEnds,
    pub snapshot: Arc<SnapshotCell>,
    pub transfer_counters: Arc<TransferCounters>,
    pub control_counters: Arc<ControlCounters>,
}

/// An engine for `cfg` with fresh queues.
pub fn engine(cfg: &NodeConfig) -> (Engine, Ends) {
    let ids: Vec<_> = cfg.peers.iter().map(|p| p.id).collect();
    let waker = Arc::new(flowshift_node::sys::Waker::new().expect("eventfd"));
    let (tlink, tends) = transfer::link(&ids, 1024, waker.clone());
    let (clink, cends) = control::link(64, 4096, waker);
    let snapshot = Arc::new(SnapshotCell::default());
    let tc = Arc::new(TransferCounters::default());
    let cc = Arc::new(ControlCounters::default());
    let e = Engine::new(
        cfg,
        cfg.build_instance().expect("instance"),
        Links {
            transfer: tlink,
            control: clink,
            snapshot: snapshot.clone(),
            transfer_counters: tc.clone(),
            control_counters: cc.clone(),
        },
    );
    (
        e,
        Ends {
            transfer: tends,
            control: cends,
            snapshot,
            transfer_counters: tc,
            control_counters: cc,
        },
    )
}

/// Keeps every frame sent, as `(virtio-net header if any, Ethernet frame)`.
#[derive(Default)]
pub struct Capture {
    pub frames: Vec<(Option<VnetHdr>, Vec<u8>)>,
}

impl FrameSink for Capture {
    fn send(&mut self, frames: &[TxFrame]) -> std::io::Result<usize> {
        for f in frames {
            let head = f.head();
            let (vnet, eth) = if head.len() == VNET_HDR_LEN + ETH_HLEN {
                let v: [u8; VNET_HDR_LEN] = head[..VNET_HDR_LEN].try_into().unwrap();
                (Some(VnetHdr::from_bytes(&v)), &head[VNET_HDR_LEN..])
            } else {
                (None, head)
            };
            let mut frame = eth.to_vec();
            frame.extend_from_slice(&f.pkt);
            self.frames.push((vnet, frame));
        }
        Ok(frames.len())
    }
    fn wait_writable(&mut self, _: std::time::Duration) {}
}

impl Capture {
    pub fn take(&mut self) -> Vec<(Option<VnetHdr>, Vec<u8>)> {
        std::mem::take(&mut self.frames)
    }
}

/// An Ethernet frame with a TCP segment (full, correct checksums).
#[allow(clippy::too_many_arguments)]
pub fn tcp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    syn: bool,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(eth_src, eth_dst)
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1000, 65535);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// An Ethernet frame with a UDP datagram (full, correct checksums).
pub fn udp_frame(
    eth_src: [u8; 6],
    eth_dst: [u8; 6],
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(eth_src, eth_dst)
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, payload)
        .unwrap();
    out
}

fn ones_sum(bytes: &[u8], mut sum: u32) -> u32 {
    for c in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Turns a frame's full L4 checksum into the partial one a sender with checksum offload
/// leaves (the folded pseudo-header sum), and returns the virtio-net header announcing it.
pub fn make_partial(frame: &mut [u8], gso_size: u16) -> VnetHdr {
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let proto = frame[ETH_HLEN + 9];
    let l4 = ETH_HLEN + ihl;
    let l4_len = frame.len() - l4;
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&frame[ETH_HLEN + 12..ETH_HLEN + 20]);
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(l4_len as u16).to_be_bytes());
    let p = ones_sum(&pseudo, 0) as u16;
    let off = if proto == 6 { 16 } else { 6 };
    frame[l4 + off..l4 + off + 2].copy_from_slice(&p.to_be_bytes());
    VnetHdr {
        flags: VNET_F_NEEDS_CSUM,
        gso_type: if gso_size == 0 {
            0
        } else if proto == 6 {
            1
        } else {
            5
        },
        hdr_len: (l4 + if proto == 6 { 20 } else { 8 }) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: off as u16,
    }
}

/// Completes a partial checksum the way a device would: the one's-complement sum of the L4
/// bytes from `csum_start` (the field holding the pseudo-header seed), complemented.
pub fn complete_partial(frame: &mut [u8], vnet: VnetHdr) {
    let start = usize::from(vnet.csum_start);
    let at = start + usize::from(vnet.csum_offset);
    let c = !(ones_sum(&frame[start..], 0) as u16);
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

/// Parsed view of a translated frame: addresses, ports, and whether every checksum is right
/// (recomputed from scratch by etherparse).
#[derive(Debug)]
pub struct Seen {
    pub eth_src: [u8; 6],
    pub eth_dst: [u8; 6],
    pub ethertype: u16,
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub ttl: u8,
    pub ip_ok: bool,
    pub l4_ok: bool,
    pub payload_len: usize,
}

pub fn inspect(frame: &[u8]) -> Seen {
    let ethertype = u16::from_be_bytes([frame[12], frame[13]]);
    let ip_start = ETH_HLEN;
    let p = SlicedPacket::from_ip(&frame[ip_start..]).expect("IPv4 packet");
    let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header().to_header();
    let ip_ok = h.calc_header_checksum() == h.header_checksum;
    let (sport, dport, l4_ok, payload_len) = match &p.transport {
        Some(TransportSlice::Tcp(t)) => {
            let th = t.to_header();
            let ok = th
                .calc_checksum_ipv4(&h, t.payload())
                .is_ok_and(|c| c == th.checksum);
            (th.source_port, th.destination_port, ok, t.payload().len())
        }
        Some(TransportSlice::Udp(u)) => {
            let uh = u.to_header();
            let ok = uh
                .calc_checksum_ipv4(&h, u.payload())
                .is_ok_and(|c| c == uh.checksum);
            (uh.source_port, uh.destination_port, ok, u.payload().len())
        }
        _ => panic!("not TCP or UDP"),
    };
    Seen {
        eth_src: frame[6..12].try_into().unwrap(),
        eth_dst: frame[..6].try_into().unwrap(),
        ethertype,
        src: h.source,
        dst: h.destination,
        sport,
        dport,
        ttl: h.time_to_live,
        ip_ok,
        l4_ok,
        payload_len,
    }
}
