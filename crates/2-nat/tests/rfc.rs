//! Packet vectors, one or more per RFC requirement (RFC 4787 UDP, RFC 5382 TCP, RFC 5508 ICMP;
//! RFC 6888 and the data-plane rules are in `rfc_cgn.rs`).
//! Every translated packet is re-checked with etherparse (`common::expect`).

mod common;

use common::*;
use core::time::Duration;
use flowshift_nat::{ConfigError, DropReason, Filtering, Nat, NatConfig, NatError, Verdict};
use flowshift_wire::Instant;
use std::collections::HashSet;
use std::net::Ipv4Addr;

// ===================================================================== RFC 4787 (UDP)

#[test]
fn rfc4787_req1_endpoint_independent_mapping() {
    let mut nat = new_nat();
    let a = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q1"));
    let b = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_Y, 123, b"q2"));
    let c = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_Z, 4000, b"q3"));
    assert_eq!(src(&a), EXT0);
    assert_eq!(
        (src(&a), sport(&a)),
        (src(&b), sport(&b)),
        "same mapping for a second destination"
    );
    assert_eq!(
        (src(&a), sport(&a)),
        (src(&c), sport(&c)),
        "same mapping for a third destination"
    );
    assert_eq!((dst(&b), dport(&b)), (SRV_Y, 123), "destination untouched");
    assert_eq!(nat.mapping_count(), 1);
    assert_eq!(nat.session_count(), 3);
    // A different internal port is a different mapping with a different external port
    // (no port overloading, REQ-4).
    let d = out(&mut nat, t0(), &udp(SUB_A, 4001, SRV_X, 53, b"q4"));
    assert_ne!(sport(&d), sport(&a));
    // Another subscriber using the same internal port gets its own external port.
    let e = out(&mut nat, t0(), &udp(SUB_B, 4000, SRV_X, 53, b"q5"));
    assert_ne!(sport(&e), sport(&a));
    assert_ne!(sport(&e), sport(&d));
    assert_eq!(nat.mapping_count(), 3);
}

#[test]
fn rfc4787_req2_paired_pooling() {
    let mut nat = new_nat();
    // Every session of one subscriber uses the same external address, whatever the protocol,
    // port or destination; subscribers of the other prefix use the other address.
    for (i, server) in [SRV_X, SRV_Y, SRV_Z].into_iter().enumerate() {
        let i = i as u16;
        let a = out(&mut nat, t0(), &udp(SUB_A, 5000 + i, server, 53, b"x"));
        let b = out(&mut nat, t0(), &tcp(SUB_A, 6000 + i, server, 80, SYN));
        let c = out(&mut nat, t0(), &echo_request(SUB_A, server, 100 + i, 1));
        let d = out(&mut nat, t0(), &udp(SUB_D, 5000 + i, server, 53, b"x"));
        let e = out(&mut nat, t0(), &tcp(SUB_D, 6000 + i, server, 80, SYN));
        let f = out(&mut nat, t0(), &udp(SUB_B, 5000 + i, server, 53, b"x"));
        for p in [&a, &b, &c, &f] {
            assert_eq!(src(p), EXT0);
        }
        for p in [&d, &e] {
            assert_eq!(src(p), EXT1);
        }
    }
}

#[test]
fn rfc4787_req3_port_range_never_below_port_min() {
    let cfg = NatConfig {
        port_min: 20000,
        port_max: 20000 + 3 * 64 + 10,
        block_size: 64,
        ..config()
    };
    let mut nat = Nat::new(cfg).unwrap();
    let mut seen = HashSet::new();
    for (s, sub) in [SUB_A, SUB_B, SUB_C].into_iter().enumerate() {
        for i in 0..60u16 {
            // Low, well-known and high source ports alike.
            let p = out(&mut nat, t0(), &udp(sub, i * 7 + s as u16, SRV_X, 53, b"x"));
            let port = sport(&p);
            assert!(
                (20000..20000 + 3 * 64).contains(&port),
                "port {port} outside the whole blocks of the range"
            );
            assert!(seen.insert(port), "external port {port} handed out twice");
        }
    }
    // Default configuration: nothing below 1024, even for a well-known internal port.
    let mut nat = new_nat();
    for sp in [0u16, 1, 53, 80, 1023] {
        let p = out(&mut nat, t0(), &udp(SUB_A, sp, SRV_X, 53, b"x"));
        assert!(
            sport(&p) >= 1024,
            "well-known external port {} used",
            sport(&p)
        );
        let p = out(&mut nat, t0(), &tcp(SUB_A, sp, SRV_X, 80, SYN));
        assert!(sport(&p) >= 1024);
    }
}

/// Asserts the mapping created at `t0()` is alive just before `t0() + timeout` and gone at
/// `t0() + timeout + granularity`; `first` creates it, `reply` is an inbound packet for it
/// built from the translated `first`.
fn check_idle_timeout(
    cfg: &NatConfig,
    timeout: Duration,
    first: &[u8],
    reply: impl Fn(&[u8]) -> Vec<u8>,
) {
    let gran = cfg.timer_granularity;
    // Alive.
    let mut nat = Nat::new(cfg.clone()).unwrap();
    let o = out(&mut nat, t0(), first);
    let just_before = t0() + timeout - Duration::from_millis(1);
    advance(&mut nat, just_before);
    assert_eq!(
        nat.mapping_count(),
        1,
        "mapping gone before its {timeout:?} timeout"
    );
    let r = inb(&mut nat, just_before, &reply(&o));
    assert_eq!((dst(&r), dport(&r)), (src(first), sport(first)));
    // Gone.
    let mut nat = Nat::new(cfg.clone()).unwrap();
    let o = out(&mut nat, t0(), first);
    let late = t0() + timeout + gran;
    advance(&mut nat, late);
    assert_eq!(
        nat.mapping_count(),
        0,
        "mapping still there one granularity after its {timeout:?} timeout"
    );
    assert_eq!(nat.session_count(), 0);
    expect_drop(&mut nat, late, &reply(&o), DropReason::NoMapping);
    nat.check_invariants().unwrap();
}

fn udp_reply(o: &[u8]) -> Vec<u8> {
    udp(dst(o), dport(o), src(o), sport(o), b"reply")
}

#[test]
fn rfc4787_req5_udp_timeout_at_least_2_min() {
    let first = udp(SUB_A, 4000, SRV_X, 53, b"q");
    // Default: 5 minutes (recommended).
    assert_eq!(config().timeouts.udp, Duration::from_secs(300));
    check_idle_timeout(&config(), Duration::from_secs(300), &first, udp_reply);
    // The shortest allowed: 2 minutes; alive at 119.999 s idle.
    let mut short = config();
    short.timeouts.udp = Duration::from_secs(120);
    check_idle_timeout(&short, Duration::from_secs(120), &first, udp_reply);
    // Below 2 minutes is refused.
    let mut bad = config();
    bad.timeouts.udp = Duration::from_secs(119);
    assert!(matches!(
        Nat::new(bad),
        Err(NatError::Config(ConfigError::TimeoutTooShort {
            name: "udp",
            ..
        }))
    ));
}

#[test]
fn rfc4787_req6_outbound_refresh() {
    for cfg in [
        config(),
        NatConfig {
            inbound_refresh: false,
            ..config()
        },
    ] {
        let mut nat = Nat::new(cfg).unwrap();
        out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q"));
        let refresh = t0() + Duration::from_secs(200);
        advance(&mut nat, refresh);
        // Outbound to another destination refreshes the mapping too (its session is new).
        out(&mut nat, refresh, &udp(SUB_A, 4000, SRV_X, 53, b"again"));
        advance(&mut nat, refresh + Duration::from_millis(299_999));
        assert_eq!(
            nat.mapping_count(),
            1,
            "outbound packet did not refresh the timer"
        );
        advance(&mut nat, refresh + Duration::from_secs(301));
        assert_eq!(
            nat.mapping_count(),
            0,
            "refreshed mapping not expired one granularity after its timeout"
        );
    }
}

#[test]
fn rfc4787_req6_inbound_refresh_is_configurable() {
    for inbound_refresh in [true, false] {
        let mut nat = Nat::new(NatConfig {
            inbound_refresh,
            ..config()
        })
        .unwrap();
        let o = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q"));
        let at = t0() + Duration::from_secs(200);
        advance(&mut nat, at);
        inb(&mut nat, at, &udp_reply(&o));
        advance(&mut nat, t0() + Duration::from_secs(301));
        assert_eq!(
            nat.mapping_count() == 1,
            inbound_refresh,
            "inbound_refresh={inbound_refresh}"
        );
        advance(&mut nat, at + Duration::from_secs(301));
        assert_eq!(nat.mapping_count(), 0);
    }
}

#[test]
fn rfc4787_req8_endpoint_independent_filtering() {
    let mut nat = new_nat();
    assert_eq!(nat.config().filtering, Filtering::EndpointIndependent);
    let o = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q"));
    // Any remote address and port may reach the mapping.
    for (rem, rport) in [(SRV_X, 53), (SRV_X, 9999), (SRV_Y, 53), (SRV_Z, 7)] {
        let r = inb(&mut nat, t0(), &udp(rem, rport, EXT0, sport(&o), b"hi"));
        assert_eq!((src(&r), sport(&r)), (rem, rport), "source untouched");
        assert_eq!((dst(&r), dport(&r)), (SUB_A, 4000));
    }
    // But nothing reaches a port without a mapping.
    expect_drop(
        &mut nat,
        t0(),
        &udp(SRV_Y, 53, EXT0, sport(&o) ^ 1, b"hi"),
        DropReason::NoMapping,
    );
}

#[test]
fn rfc4787_req8_address_dependent_filtering() {
    let mut nat = Nat::new(NatConfig {
        filtering: Filtering::AddressDependent,
        ..config()
    })
    .unwrap();
    let o = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q"));
    let ext_port = sport(&o);
    // The address sent to may answer from any port.
    inb(&mut nat, t0(), &udp(SRV_X, 53, EXT0, ext_port, b"a"));
    inb(&mut nat, t0(), &udp(SRV_X, 9999, EXT0, ext_port, b"b"));
    // Another address may not.
    expect_drop(
        &mut nat,
        t0(),
        &udp(SRV_Y, 53, EXT0, ext_port, b"c"),
        DropReason::Filtered,
    );
    // Until the mapping sends to it.
    out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_Y, 1234, b"d"));
    let r = inb(&mut nat, t0(), &udp(SRV_Y, 53, EXT0, ext_port, b"e"));
    assert_eq!((dst(&r), dport(&r)), (SUB_A, 4000));
    // TCP: an inbound SYN from an address the mapping never sent to is filtered as well.
    let t = out(&mut nat, t0(), &tcp(SUB_B, 7000, SRV_X, 80, SYN));
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_Y, 80, EXT0, sport(&t), SYN),
        DropReason::Filtered,
    );
    inb(&mut nat, t0(), &tcp(SRV_X, 8080, EXT0, sport(&t), SYN));
}

#[test]
fn rfc4787_req9_hairpinning() {
    let mut nat = new_nat();
    let a = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"a"));
    let b = out(&mut nat, t0(), &udp(SUB_B, 5000, SRV_X, 53, b"b"));
    let d = out(&mut nat, t0(), &udp(SUB_D, 6000, SRV_X, 53, b"d"));
    let (pa, pb, pd) = (sport(&a), sport(&b), sport(&d));
    // A -> B's external endpoint: B sees A's *external* source address and port.
    let to_b = udp(SUB_A, 4000, EXT0, pb, b"hello B");
    let h = inb(&mut nat, t0(), &to_b);
    assert_eq!(
        (src(&h), sport(&h)),
        (EXT0, pa),
        "hairpinned source must be A's external endpoint"
    );
    assert_eq!((dst(&h), dport(&h)), (SUB_B, 5000));
    assert_eq!(ttl(&h), ttl(&to_b) - 1, "TTL decremented once");
    assert_eq!(&h[28..], b"hello B");
    // B answers to what it saw.
    let back = inb(&mut nat, t0(), &udp(SUB_B, 5000, EXT0, pa, b"hello A"));
    assert_eq!((src(&back), sport(&back)), (EXT0, pb));
    assert_eq!((dst(&back), dport(&back)), (SUB_A, 4000));
    // Across groups: D (behind EXT1) reaches A and is seen as EXT1:pd.
    let x = inb(&mut nat, t0(), &udp(SUB_D, 6000, EXT0, pa, b"hello from D"));
    assert_eq!((src(&x), sport(&x)), (EXT1, pd));
    assert_eq!((dst(&x), dport(&x)), (SUB_A, 4000));
    assert_eq!(nat.counters().hairpinned, 3);
    // TCP hairpinning: B listens behind its mapping; A connects to it.
    let tb = out(&mut nat, t0(), &tcp(SUB_B, 8000, SRV_X, 80, SYN));
    let syn = inb(&mut nat, t0(), &tcp(SUB_A, 9000, EXT0, sport(&tb), SYN));
    assert_eq!(src(&syn), EXT0);
    assert_ne!(sport(&syn), 9000, "A's source port is translated");
    assert_eq!((dst(&syn), dport(&syn)), (SUB_B, 8000));
    let synack = inb(
        &mut nat,
        t0(),
        &tcp(SUB_B, 8000, EXT0, sport(&syn), SYN | ACK),
    );
    assert_eq!((src(&synack), sport(&synack)), (EXT0, sport(&tb)));
    assert_eq!((dst(&synack), dport(&synack)), (SUB_A, 9000));
    // Hairpin to an external port nobody holds.
    expect_drop(
        &mut nat,
        t0(),
        &udp(SUB_A, 4000, EXT0, 65535, b"?"),
        DropReason::NoMapping,
    );
    nat.check_invariants().unwrap();
}

// ===================================================================== RFC 5382 (TCP)

#[test]
fn rfc5382_req1_tcp_endpoint_independent_mapping() {
    let mut nat = new_nat();
    let a = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 80, SYN));
    let b = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_Y, 443, SYN));
    let c = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 8080, SYN));
    assert_eq!(src(&a), EXT0);
    assert_eq!(sport(&a), sport(&b));
    assert_eq!(sport(&a), sport(&c));
    assert_eq!((nat.mapping_count(), nat.session_count()), (1, 3));
    // Each session's replies come back to the same internal endpoint.
    for (o, rem, rport) in [(&a, SRV_X, 80), (&b, SRV_Y, 443), (&c, SRV_X, 8080)] {
        let r = inb(&mut nat, t0(), &tcp(rem, rport, EXT0, sport(o), SYN | ACK));
        assert_eq!((dst(&r), dport(&r)), (SUB_A, 40000));
    }
    let d = out(&mut nat, t0(), &tcp(SUB_A, 40001, SRV_X, 80, SYN));
    assert_ne!(sport(&d), sport(&a));
}

#[test]
fn rfc5382_only_outbound_syn_creates_mapping() {
    let mut nat = new_nat();
    for flags in [
        ACK,
        SYN | ACK,
        RST,
        RST | ACK,
        FIN | ACK,
        PSH | ACK,
        0,
        SYN | RST,
    ] {
        expect_drop(
            &mut nat,
            t0(),
            &tcp(SUB_A, 40000, SRV_X, 80, flags),
            DropReason::TcpNoSessionNonSyn,
        );
    }
    assert_eq!((nat.mapping_count(), nat.session_count()), (0, 0));
    assert!(
        nat.poll_event().is_none(),
        "no block allocated for refused packets"
    );
    let o = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 80, SYN));
    // Under an existing mapping, a non-SYN to a new remote still creates nothing.
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SUB_A, 40000, SRV_Y, 80, ACK),
        DropReason::TcpNoSessionNonSyn,
    );
    assert_eq!((nat.mapping_count(), nat.session_count()), (1, 1));
    // A SYN with ECN flags (ECE|CWR) is still a SYN.
    out(
        &mut nat,
        t0(),
        &tcp(SUB_A, 40002, SRV_X, 80, SYN | 0x40 | 0x80),
    );
    // The session's own packets pass whatever their flags.
    let d = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 80, ACK | PSH));
    assert_eq!(sport(&d), sport(&o));
}

#[test]
fn rfc5382_req4_unsolicited_inbound_syn_silently_dropped() {
    let mut nat = new_nat();
    // No mapping at all: dropped, nothing created, no event (no response is generated: the
    // verdict is a plain drop).
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_X, 80, EXT0, 40000, SYN),
        DropReason::NoMapping,
    );
    assert_eq!((nat.mapping_count(), nat.session_count()), (0, 0));
    assert!(nat.poll_event().is_none());
    // A port inside a block the subscriber holds, but not mapped: still no mapping.
    let o = out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 80, SYN));
    let unmapped = if sport(&o).is_multiple_of(2) {
        sport(&o) + 1
    } else {
        sport(&o) - 1
    };
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_Y, 80, EXT0, unmapped, SYN),
        DropReason::NoMapping,
    );
    // A UDP mapping on the same external port number does not open it for TCP.
    let u = out(&mut nat, t0(), &udp(SUB_B, 40000, SRV_X, 53, b"q"));
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_X, 53, EXT0, sport(&u), SYN),
        DropReason::NoMapping,
    );
    // Non-SYN from a remote without a session under an existing mapping.
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_Y, 80, EXT0, sport(&o), ACK),
        DropReason::TcpInboundNoSession,
    );
    assert_eq!((nat.mapping_count(), nat.session_count()), (2, 2));
}

fn tcp_established(nat: &mut Nat, at: Instant) -> Vec<u8> {
    let o = out(nat, at, &tcp(SUB_A, 40000, SRV_X, 80, SYN));
    inb(
        nat,
        at + Duration::from_secs(1),
        &tcp(SRV_X, 80, EXT0, sport(&o), SYN | ACK),
    );
    out(
        nat,
        at + Duration::from_secs(1),
        &tcp(SUB_A, 40000, SRV_X, 80, ACK),
    );
    o
}

#[test]
fn rfc5382_req5_established_timeout_2h4m() {
    let est = Duration::from_secs(2 * 3600 + 4 * 60);
    assert_eq!(config().timeouts.tcp_established, est);
    let last = t0() + Duration::from_secs(1);
    let mut nat = new_nat();
    let o = tcp_established(&mut nat, t0());
    advance(&mut nat, last + est - Duration::from_millis(1));
    assert_eq!(
        nat.session_count(),
        1,
        "established session expired before 2 h 4 min"
    );
    // Far beyond the transitory timeout, the connection still works.
    inb(
        &mut nat,
        last + est - Duration::from_millis(1),
        &tcp(SRV_X, 80, EXT0, sport(&o), ACK),
    );

    let mut nat = new_nat();
    tcp_established(&mut nat, t0());
    advance(&mut nat, last + est + config().timer_granularity);
    assert_eq!(nat.session_count(), 0);
    // Half-closed (FIN one way only) is still established.
    let mut nat = new_nat();
    let o = tcp_established(&mut nat, t0());
    out(&mut nat, last, &tcp(SUB_A, 40000, SRV_X, 80, FIN | ACK));
    advance(&mut nat, last + Duration::from_secs(3600));
    assert_eq!(
        nat.session_count(),
        1,
        "half-closed connection expired early"
    );
    inb(
        &mut nat,
        last + Duration::from_secs(3600),
        &tcp(SRV_X, 80, EXT0, sport(&o), ACK | PSH),
    );

    let mut bad = config();
    bad.timeouts.tcp_established = est - Duration::from_secs(1);
    assert!(Nat::new(bad).is_err());
}

#[test]
fn rfc5382_req5_transitory_4min() {
    let tr = Duration::from_secs(240);
    let gran = config().timer_granularity;
    assert_eq!(config().timeouts.tcp_transitory, tr);
    // SYN seen one way only.
    let mut nat = new_nat();
    out(&mut nat, t0(), &tcp(SUB_A, 40000, SRV_X, 80, SYN));
    advance(&mut nat, t0() + tr - Duration::from_millis(1));
    assert_eq!(nat.session_count(), 1);
    advance(&mut nat, t0() + tr + gran);
    assert_eq!(
        nat.session_count(),
        0,
        "half-open session outlived the transitory timeout"
    );

    // FIN both ways.
    let mut nat = new_nat();
    let o = tcp_established(&mut nat, t0());
    let fin_at = t0() + Duration::from_secs(100);
    advance(&mut nat, fin_at);
    out(&mut nat, fin_at, &tcp(SUB_A, 40000, SRV_X, 80, FIN | ACK));
    let last = fin_at + Duration::from_secs(1);
    inb(&mut nat, last, &tcp(SRV_X, 80, EXT0, sport(&o), FIN | ACK));
    advance(&mut nat, last + tr - Duration::from_millis(1));
    assert_eq!(nat.session_count(), 1);
    advance(&mut nat, last + tr + gran);
    assert_eq!(
        nat.session_count(),
        0,
        "closed session outlived the transitory timeout"
    );

    // RST (either direction).
    for inbound_rst in [false, true] {
        let mut nat = new_nat();
        let o = tcp_established(&mut nat, t0());
        let rst_at = t0() + Duration::from_secs(50);
        advance(&mut nat, rst_at);
        if inbound_rst {
            inb(&mut nat, rst_at, &tcp(SRV_X, 80, EXT0, sport(&o), RST));
        } else {
            out(&mut nat, rst_at, &tcp(SUB_A, 40000, SRV_X, 80, RST | ACK));
        }
        advance(&mut nat, rst_at + tr - Duration::from_millis(1));
        assert_eq!(nat.session_count(), 1);
        advance(&mut nat, rst_at + tr + gran);
        assert_eq!(
            nat.session_count(),
            0,
            "reset session outlived the transitory timeout"
        );
    }

    let mut bad = config();
    bad.timeouts.tcp_transitory = tr - Duration::from_secs(1);
    assert!(Nat::new(bad).is_err());
}

#[test]
fn rfc5382_simultaneous_open() {
    let mut nat = new_nat();
    // The remote's SYN arrives before ours: no mapping yet, silently dropped.
    expect_drop(
        &mut nat,
        t0(),
        &tcp(SRV_X, 6000, EXT0, 1024, SYN),
        DropReason::NoMapping,
    );
    let o = out(&mut nat, t0(), &tcp(SUB_A, 5000, SRV_X, 6000, SYN));
    // The remote's (retransmitted) bare SYN now crosses ours and is let in.
    let s = inb(&mut nat, t0(), &tcp(SRV_X, 6000, EXT0, sport(&o), SYN));
    assert_eq!((dst(&s), dport(&s)), (SUB_A, 5000));
    // Both sides answer SYN|ACK.
    out(&mut nat, t0(), &tcp(SUB_A, 5000, SRV_X, 6000, SYN | ACK));
    inb(
        &mut nat,
        t0(),
        &tcp(SRV_X, 6000, EXT0, sport(&o), SYN | ACK),
    );
    assert_eq!(nat.session_count(), 1);
    // Established: survives far beyond the transitory timeout.
    advance(&mut nat, t0() + Duration::from_secs(3600));
    assert_eq!(
        nat.session_count(),
        1,
        "simultaneous open did not reach the established state"
    );
    out(
        &mut nat,
        t0() + Duration::from_secs(3600),
        &tcp(SUB_A, 5000, SRV_X, 6000, ACK),
    );
}

// ===================================================================== RFC 5508 (ICMP)

#[test]
fn rfc5508_icmp_query_identifier_mapping() {
    let mut nat = new_nat();
    let a = out(&mut nat, t0(), &echo_request(SUB_A, SRV_X, 77, 1));
    assert_eq!(src(&a), EXT0);
    let id = icmp_ident(&a);
    assert!(
        id >= nat.config().port_min,
        "identifier drawn from the port range"
    );
    // Same identifier to another destination: the same external identifier.
    let b = out(&mut nat, t0(), &echo_request(SUB_A, SRV_Y, 77, 2));
    assert_eq!(icmp_ident(&b), id);
    // Another subscriber using identifier 77 gets a different one.
    let c = out(&mut nat, t0(), &echo_request(SUB_B, SRV_X, 77, 1));
    assert_ne!(icmp_ident(&c), id);
    // Replies go back with the original identifier.
    let r = inb(&mut nat, t0(), &echo_reply(SRV_X, EXT0, id, 1));
    assert_eq!((dst(&r), icmp_ident(&r)), (SUB_A, 77));
    let r = inb(&mut nat, t0(), &echo_reply(SRV_X, EXT0, icmp_ident(&c), 1));
    assert_eq!((dst(&r), icmp_ident(&r)), (SUB_B, 77));
    // Unsolicited requests to the external address are refused, even on a mapped identifier.
    expect_drop(
        &mut nat,
        t0(),
        &echo_request(SRV_X, EXT0, id, 1),
        DropReason::NoMapping,
    );
    expect_drop(
        &mut nat,
        t0(),
        &echo_request(SRV_X, EXT0, id ^ 1, 1),
        DropReason::NoMapping,
    );
    // A reply on an identifier nobody holds.
    let free_id = if id == 65535 { 65534 } else { id + 1 };
    if free_id != icmp_ident(&c) {
        expect_drop(
            &mut nat,
            t0(),
            &echo_reply(SRV_X, EXT0, free_id, 1),
            DropReason::NoMapping,
        );
    }
    // A subscriber's echo reply creates nothing.
    expect_drop(
        &mut nat,
        t0(),
        &echo_reply(SUB_C, SRV_X, 5, 1),
        DropReason::NoMapping,
    );
    assert_eq!(nat.mapping_count(), 2);
}

#[test]
fn rfc5508_icmp_query_filtering_follows_config() {
    // Endpoint-independent filtering (default): a reply from another host reaches the mapping.
    let mut nat = new_nat();
    let a = out(&mut nat, t0(), &echo_request(SUB_A, SRV_X, 77, 1));
    let r = inb(&mut nat, t0(), &echo_reply(SRV_Z, EXT0, icmp_ident(&a), 1));
    assert_eq!((dst(&r), icmp_ident(&r)), (SUB_A, 77));
    // Address-dependent: only the pinged host.
    let mut nat = Nat::new(NatConfig {
        filtering: Filtering::AddressDependent,
        ..config()
    })
    .unwrap();
    let a = out(&mut nat, t0(), &echo_request(SUB_A, SRV_X, 77, 1));
    expect_drop(
        &mut nat,
        t0(),
        &echo_reply(SRV_Z, EXT0, icmp_ident(&a), 1),
        DropReason::Filtered,
    );
    inb(&mut nat, t0(), &echo_reply(SRV_X, EXT0, icmp_ident(&a), 1));
}

#[test]
fn rfc5508_icmp_query_timeout_60s() {
    assert_eq!(config().timeouts.icmp, Duration::from_secs(60));
    check_idle_timeout(
        &config(),
        Duration::from_secs(60),
        &echo_request(SUB_A, SRV_X, 9, 1),
        |o| echo_reply(dst(o), src(o), icmp_ident(o), 1),
    );
}

#[test]
fn rfc5508_icmp_error_inbound_translated() {
    let originals = [
        udp(SUB_A, 4000, SRV_X, 53, b"a udp query"),
        tcp_with(SUB_A, 40000, SRV_Y, 443, SYN, 64, b""),
        tcp_with(SUB_B, 40001, SRV_Y, 443, SYN, 64, b"with data"),
        echo_request(SUB_A, SRV_Z, 4242, 7),
    ];
    for (ty, code) in [(3u8, 1u8), (3, 3), (3, 4), (11, 0), (12, 0)] {
        let mut nat = new_nat();
        for p in &originals {
            let o = out(&mut nat, t0(), p);
            // The original as the subscriber would see it quoted: only the TTL differs.
            let mut quoted_back = p.clone();
            set_ttl(&mut quoted_back, ttl(&o));
            // Whole packet quoted (RFC 1812), and only IP header + 8 bytes (RFC 792).
            for quote in [o.len(), 28] {
                let err = icmp_error(ROUTER, EXT0, ty, code, &o[..quote]);
                let e = inb(&mut nat, t0(), &err);
                assert_eq!(src(&e), ROUTER, "outer source untouched");
                assert_eq!(dst(&e), src(p), "outer destination = subscriber");
                assert_eq!(ttl(&e), ttl(&err) - 1);
                assert_eq!(e[20..22], [ty, code]);
                let inner = icmp_inner(&e);
                assert_eq!(inner.len(), quote);
                assert_eq!(
                    inner,
                    &quoted_back[..quote],
                    "quoted packet not restored (type {ty}, len {quote})"
                );
                assert_eq!((src(inner), dst(inner)), (src(p), dst(p)));
                assert_eq!(ports(inner), ports(p));
            }
        }
        // An error about a flow that has no session.
        let stray = udp(EXT0, 9, SRV_X, 53, b"");
        expect_drop(
            &mut nat,
            t0(),
            &icmp_error(ROUTER, EXT0, ty, code, &stray),
            DropReason::IcmpErrorNoSession,
        );
        // Inner source must be the external address the error was sent to.
        let o = out(&mut nat, t0(), &udp(SUB_C, 1, SRV_X, 53, b""));
        let mut wrong = o.clone();
        wrong[12..16].copy_from_slice(&EXT1);
        fix_ip_checksum(&mut wrong);
        expect_drop(
            &mut nat,
            t0(),
            &icmp_error(ROUTER, EXT0, ty, code, &wrong),
            DropReason::IcmpErrorNoSession,
        );
        // Bad ICMP checksum.
        let mut bad = icmp_error(ROUTER, EXT0, ty, code, &o);
        bad[22] ^= 0x5a;
        expect_drop(&mut nat, t0(), &bad, DropReason::BadIcmpChecksum);
        // Quote too short to hold the transport ports.
        expect_drop(
            &mut nat,
            t0(),
            &icmp_error(ROUTER, EXT0, ty, code, &o[..24]),
            DropReason::IcmpErrorMalformed,
        );
        nat.check_invariants().unwrap();
    }
}

#[test]
fn rfc5508_icmp_error_outbound_translated() {
    let mut nat = new_nat();
    // UDP: inbound packet to the subscriber, which answers port unreachable.
    let o = out(&mut nat, t0(), &udp(SUB_A, 4000, SRV_X, 53, b"q"));
    let reply = udp(SRV_X, 53, EXT0, sport(&o), b"answer");
    let r = inb(&mut nat, t0(), &reply);
    // TCP: an inbound segment the subscriber rejects with an ICMP error.
    let t = out(&mut nat, t0(), &tcp(SUB_B, 40000, SRV_Y, 443, SYN));
    let treply = tcp_with(SRV_Y, 443, EXT0, sport(&t), SYN | ACK, 50, b"");
    let tr = inb(&mut nat, t0(), &treply);
    // ICMP echo reply quoted in a time exceeded.
    let i = out(&mut nat, t0(), &echo_request(SUB_C, SRV_Z, 31, 1));
    let ireply = echo_reply(SRV_Z, EXT0, icmp_ident(&i), 1);
    let ir = inb(&mut nat, t0(), &ireply);
    for (orig, translated, ty, code) in [
        (&reply, &r, 3u8, 3u8),
        (&treply, &tr, 3, 10),
        (&ireply, &ir, 11, 0),
    ] {
        let sub = dst(translated);
        for quote in [translated.len(), 28] {
            let err = icmp_error(sub, src(orig), ty, code, &translated[..quote]);
            let e = out(&mut nat, t0(), &err);
            assert_eq!(src(&e), EXT0, "outer source = external address");
            assert_eq!(dst(&e), src(orig));
            assert_eq!(ttl(&e), ttl(&err) - 1);
            let mut want = orig.clone();
            set_ttl(&mut want, ttl(translated));
            assert_eq!(
                icmp_inner(&e),
                &want[..quote],
                "quoted packet not restored to the external view"
            );
        }
    }
    // About a flow without session.
    let stray = udp(SRV_X, 53, SUB_A, 4999, b"");
    expect_drop(
        &mut nat,
        t0(),
        &icmp_error(SUB_A, SRV_X, 3, 3, &stray),
        DropReason::IcmpErrorNoSession,
    );
    // Inner destination must be the subscriber sending the error.
    expect_drop(
        &mut nat,
        t0(),
        &icmp_error(SUB_B, SRV_X, 3, 3, &r),
        DropReason::IcmpErrorNoSession,
    );
    nat.check_invariants().unwrap();
}

#[test]
fn rfc5508_req7_hairpinned_icmp_error() {
    let mut nat = new_nat();
    // B has a mapping; A sends to it through the hairpin.
    let b = out(&mut nat, t0(), &udp(SUB_B, 5000, SRV_X, 53, b"b"));
    let to_b = udp(SUB_A, 4000, EXT0, sport(&b), b"hello B");
    let seen_by_b = inb(&mut nat, t0(), &to_b);
    let pa = sport(&seen_by_b);
    // B answers with port unreachable, quoting what it received, to the source it saw.
    let err = icmp_error(SUB_B, EXT0, 3, 3, &seen_by_b);
    let e = inb(&mut nat, t0(), &err);
    // A receives the error from B's external address, about its own packet as it sent it.
    assert_eq!((src(&e), dst(&e)), (EXT0, SUB_A));
    let inner = icmp_inner(&e);
    assert_eq!((src(inner), sport(inner)), (SUB_A, 4000));
    assert_eq!((dst(inner), dport(inner)), (EXT0, sport(&b)));
    let mut want = to_b.clone();
    set_ttl(&mut want, ttl(&seen_by_b));
    assert_eq!(inner, &want[..], "quoted packet not restored to A's view");
    assert_eq!(ttl(&e), ttl(&err) - 1, "TTL decremented once");
    assert_eq!(nat.counters().hairpinned, 2);
    // While A's mapping is frozen the second half cannot be done: refused, left unchanged.
    let g = nat.group_id(Ipv4Addr::from(EXT0)).unwrap();
    let a_map = nat
        .group_mappings(g)
        .unwrap()
        .into_iter()
        .find(|&id| nat.mapping_info(id).unwrap().external_port == pa)
        .unwrap();
    nat.set_frozen(a_map, true).unwrap();
    expect_drop(&mut nat, t0(), &err, DropReason::GroupDraining);
    nat.set_frozen(a_map, false).unwrap();
    // About a flow B never saw.
    let stray = udp(EXT0, 999, SUB_B, 5000, b"");
    expect_drop(
        &mut nat,
        t0(),
        &icmp_error(SUB_B, EXT0, 3, 3, &stray),
        DropReason::IcmpErrorNoSession,
    );
    nat.check_invariants().unwrap();
}

#[test]
fn icmp_error_bytes_past_total_length_untouched() {
    // The driver's buffer may be longer than the packet (Ethernet padding, a shared buffer).
    let mut nat = new_nat();
    let o = out(
        &mut nat,
        t0(),
        &tcp_with(SUB_A, 40000, SRV_X, 80, SYN, 64, b""),
    );
    // RFC 792 quote: IP header + 8 bytes; the TCP checksum would lie past the end.
    let err = icmp_error(ROUTER, EXT0, 3, 1, &o[..28]);
    let mut buf = err.clone();
    buf.extend_from_slice(&[0xee; 16]);
    assert_eq!(nat.process(t0(), &mut buf), Verdict::ToInside);
    assert_checksums_valid(&buf[..err.len()]);
    assert_eq!(
        &buf[err.len()..],
        &[0xee; 16],
        "bytes past the total length were modified"
    );
    // Same for a plain packet.
    let mut buf = udp(SRV_X, 80, EXT0, sport(&o), b"x");
    let n = buf.len();
    buf.extend_from_slice(&[0xee; 16]);
    nat.process(t0(), &mut buf);
    assert_eq!(&buf[n..], &[0xee; 16]);
}
