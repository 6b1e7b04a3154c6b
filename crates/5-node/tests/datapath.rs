//! The node's packet path without a socket: frames in, the real NAT instance, frames out.
//! Partial checksums of GSO frames are repaired (then completed here as a device would and
//! compared with a full recomputation); frames are classified by ethertype and source MAC.

mod common;

use common::*;
use flowshift_node::frame::{ETHERTYPE_CHAIN, ETHERTYPE_IPV4, RxFrame, VNET_F_NEEDS_CSUM, VnetHdr};
use flowshift_wire::Instant;

const SUB: [u8; 4] = [100, 64, 0, 5];

fn feed(
    e: &mut flowshift_node::engine::Engine,
    cap: &mut Capture,
    frame: &[u8],
    vnet: Option<VnetHdr>,
) {
    let now = Instant::from_millis(1);
    e.rx_frame(now, RxFrame::plain(frame, vnet), cap);
    e.flush_rx(now, cap);
}

/// Sends an outbound SYN so that the subscriber endpoint has a mapping; its external port.
fn open_tcp(e: &mut flowshift_node::engine::Engine, cap: &mut Capture, vnet: bool) -> u16 {
    let syn = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, true, &[]);
    feed(e, cap, &syn, vnet.then(VnetHdr::default));
    let out = cap.take();
    assert_eq!(out.len(), 1, "the SYN is translated");
    let s = inspect(&out[0].1);
    assert_eq!(s.src, EXT);
    assert!(s.ip_ok && s.l4_ok);
    s.sport
}

#[test]
fn partial_tcp_checksums_of_gso_frames_are_repaired() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, _ends) = engine(&cfg);
    let mut cap = Capture::default();
    let ext_port = open_tcp(&mut e, &mut cap, true);

    // Outbound: a 30 kB TSO super-frame with a partial checksum.
    let payload: Vec<u8> = (0..30_000u32).map(|i| (i * 7 + 3) as u8).collect();
    let mut f = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, false, &payload);
    let vnet = make_partial(&mut f, 1448);
    feed(&mut e, &mut cap, &f, Some(vnet));
    let mut out = cap.take();
    assert_eq!(out.len(), 1);
    let (v, frame) = &mut out[0];
    let v = v.expect("sent with a virtio-net header");
    assert_eq!(
        (v.flags, v.gso_type, v.gso_size, v.csum_start, v.csum_offset),
        (VNET_F_NEEDS_CSUM, 1, 1448, 34, 16),
        "offload metadata preserved"
    );
    assert_eq!(frame.len(), f.len());
    complete_partial(frame, v);
    let s = inspect(frame);
    assert_eq!(
        (s.src, s.sport, s.dst, s.dport),
        (EXT, ext_port, SERVER, 80)
    );
    assert!(s.ip_ok, "IP header checksum");
    assert!(
        s.l4_ok,
        "completed TCP checksum equals a full recomputation"
    );
    assert_eq!(s.payload_len, payload.len());
    assert_eq!(
        (s.eth_dst, s.eth_src, s.ethertype),
        (OUTSIDE, NODE1, ETHERTYPE_IPV4)
    );

    // Inbound: the reply super-frame to the external endpoint.
    let mut f = tcp_frame(
        OUTSIDE,
        NODE1,
        SERVER,
        80,
        EXT,
        ext_port,
        false,
        &payload[..20_000],
    );
    let vnet = make_partial(&mut f, 1448);
    feed(&mut e, &mut cap, &f, Some(vnet));
    let mut out = cap.take();
    assert_eq!(out.len(), 1);
    let (v, frame) = &mut out[0];
    let v = v.unwrap();
    assert_eq!((v.gso_type, v.gso_size), (1, 1448));
    complete_partial(frame, v);
    let s = inspect(frame);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (SERVER, 80, SUB, 40000));
    assert!(s.ip_ok && s.l4_ok);
    assert_eq!((s.eth_dst, s.eth_src), (INSIDE, NODE1));
    assert_eq!(e.io().rx_bad_vnet_hdr, 0);
}

#[test]
fn partial_udp_checksums_are_repaired_both_ways() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, _ends) = engine(&cfg);
    let mut cap = Capture::default();
    let payload = vec![0x5au8; 1200];
    let mut f = udp_frame(INSIDE, NODE1, SUB, 5000, SERVER, 53, &payload);
    let vnet = make_partial(&mut f, 0);
    feed(&mut e, &mut cap, &f, Some(vnet));
    let mut out = cap.take();
    let (v, frame) = &mut out[0];
    complete_partial(frame, v.unwrap());
    let s = inspect(frame);
    assert_eq!((s.src, s.dst, s.dport), (EXT, SERVER, 53));
    assert!(s.ip_ok && s.l4_ok);
    let ext_port = s.sport;

    let mut f = udp_frame(OUTSIDE, NODE1, SERVER, 53, EXT, ext_port, &payload);
    let vnet = make_partial(&mut f, 0);
    feed(&mut e, &mut cap, &f, Some(vnet));
    let mut out = cap.take();
    let (v, frame) = &mut out[0];
    complete_partial(frame, v.unwrap());
    let s = inspect(frame);
    assert_eq!((s.src, s.sport, s.dst, s.dport), (SERVER, 53, SUB, 5000));
    assert!(s.ip_ok && s.l4_ok);
}

#[test]
fn full_checksums_stay_valid_with_and_without_vnet_headers() {
    for vnet in [true, false] {
        let extra = if vnet {
            "vnet_hdr = true"
        } else {
            "vnet_hdr = false"
        };
        let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", extra);
        let (mut e, _ends) = engine(&cfg);
        let mut cap = Capture::default();
        let ext_port = open_tcp(&mut e, &mut cap, vnet);
        let f = tcp_frame(OUTSIDE, NODE1, SERVER, 80, EXT, ext_port, false, b"hello");
        feed(&mut e, &mut cap, &f, vnet.then(VnetHdr::default));
        let out = cap.take();
        assert_eq!(out[0].0.is_some(), vnet);
        if let Some(v) = out[0].0 {
            assert_eq!(v, VnetHdr::default());
        }
        let s = inspect(&out[0].1);
        assert_eq!((s.dst, s.dport, s.ttl), (SUB, 40000, 63));
        assert!(s.ip_ok && s.l4_ok);
    }
}

#[test]
fn frames_are_classified_by_ethertype_and_source_mac() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, _ends) = engine(&cfg);
    let mut cap = Capture::default();
    let v = Some(VnetHdr::default());

    // Switch IPv4, padded to the Ethernet minimum: translated, padding not sent on.
    let mut small = udp_frame(INSIDE, NODE1, SUB, 6000, SERVER, 53, b"x");
    let ip_len = small.len() - 14;
    small.resize(60, 0);
    feed(&mut e, &mut cap, &small, v);
    let out = cap.take();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].1.len(), 14 + ip_len);

    // ARP and IPv6: not for the NAT.
    let mut arp = small.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    feed(&mut e, &mut cap, &arp, v);
    let mut v6 = small.clone();
    v6[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    feed(&mut e, &mut cap, &v6, v);
    // A chained frame from a stranger: refused.
    let mut stranger = udp_frame([2, 0xf5, 0, 0, 0, 9], NODE1, SUB, 6001, SERVER, 53, b"y");
    stranger[12..14].copy_from_slice(&ETHERTYPE_CHAIN.to_be_bytes());
    feed(&mut e, &mut cap, &stranger, v);
    // A runt.
    feed(&mut e, &mut cap, &small[..10], v);
    assert!(cap.take().is_empty());

    // A chained frame from the peer: processed as chained (counted by the engine too).
    let mut chained = udp_frame(NODE2, NODE1, SUB, 6002, SERVER, 53, b"z");
    chained[12..14].copy_from_slice(&ETHERTYPE_CHAIN.to_be_bytes());
    feed(&mut e, &mut cap, &chained, v);
    let out = cap.take();
    assert_eq!(out.len(), 1);
    let s = inspect(&out[0].1);
    assert_eq!(
        (s.src, s.eth_dst, s.ethertype),
        (EXT, OUTSIDE, ETHERTYPE_IPV4)
    );

    // A malformed virtio-net header (checksum field past the packet): dropped.
    let mut f = udp_frame(INSIDE, NODE1, SUB, 6003, SERVER, 53, b"w");
    let mut bad = make_partial(&mut f, 0);
    bad.csum_offset = 500;
    feed(&mut e, &mut cap, &f, Some(bad));
    assert!(cap.take().is_empty());

    let st = e.status(Instant::from_millis(2));
    let c = &st.counters;
    assert_eq!(c.io.rx_packets, 7);
    assert_eq!(c.io.rx_not_ipv4, 2);
    assert_eq!(c.io.rx_chain_unknown_peer, 1);
    assert_eq!(c.io.rx_truncated, 1);
    assert_eq!(c.io.rx_chained, 1);
    assert_eq!(c.io.rx_bad_vnet_hdr, 1);
    assert_eq!(c.migration.chained_in, 1);
    assert_eq!(c.io.tx_packets, 2);
    assert_eq!(c.io.tx_to_outside, 2);
    assert_eq!(c.nat.translated_out, 2);
    assert_eq!(c.nat.drops_of(flowshift_nat::DropReason::NotOurs), 0);
    assert_eq!(c.total_losses(), 0);
    assert_eq!((c.transfer.frames_out, c.control.connects), (0, 0));
    assert_eq!(st.groups.len(), 1);
    assert_eq!(
        (st.groups[0].mappings, st.groups[0].mode),
        (2, flowshift_nat::GroupMode::Active)
    );
}

/// With the realtime clock given, a batch reaches the NAT at its first frame's kernel stamp
/// (the thread may have read the ring late): the new mapping is stamped with the arrival,
/// kept between the previous iteration and `now`.
#[test]
fn a_batch_reaches_the_nat_at_its_kernel_arrival_stamp() {
    let cfg = config(1, true, "127.0.0.1:1", "127.0.0.1:2", "");
    let (mut e, _ends) = engine(&cfg);
    let mut cap = Capture::default();
    const REAL: u64 = 1_800_000_000_000_000_000;
    let ms = Instant::from_millis;
    e.stamp_clock(ms(10), REAL);
    e.stamp_clock(ms(20), REAL + 10_000_000);
    let last_seen = |e: &flowshift_node::engine::Engine, port: u16| {
        let nat = e.instance().nat();
        let g = nat.group_id(EXT.into()).unwrap();
        nat.group_mappings(g)
            .unwrap()
            .into_iter()
            .map(|id| nat.mapping_info(id).unwrap())
            .find(|m| m.internal.port() == port)
            .map(|m| m.last_seen)
    };
    // Received 4 ms before this iteration began.
    let syn = tcp_frame(INSIDE, NODE1, SUB, 40000, SERVER, 80, true, &[]);
    let f = RxFrame {
        stamp_ns: REAL + 6_000_000,
        ..RxFrame::plain(&syn, None)
    };
    e.rx_frame(ms(20), f, &mut cap);
    e.flush_rx(ms(20), &mut cap);
    assert_eq!(cap.take().len(), 1);
    assert_eq!(last_seen(&e, 40000), Some(ms(16)));
    // A stamp from before the previous iteration: the NAT's time does not go back past it.
    let syn = tcp_frame(INSIDE, NODE1, SUB, 40001, SERVER, 80, true, &[]);
    let f = RxFrame {
        stamp_ns: REAL - 5_000_000,
        ..RxFrame::plain(&syn, None)
    };
    e.rx_frame(ms(20), f, &mut cap);
    e.flush_rx(ms(20), &mut cap);
    assert_eq!(
        last_seen(&e, 40001),
        Some(ms(16)),
        "not before the last batch"
    );
    // Unstamped: the caller's time.
    let syn = tcp_frame(INSIDE, NODE1, SUB, 40002, SERVER, 80, true, &[]);
    e.rx_frame(ms(20), RxFrame::plain(&syn, None), &mut cap);
    e.flush_rx(ms(20), &mut cap);
    assert_eq!(last_seen(&e, 40002), Some(ms(20)));
}
