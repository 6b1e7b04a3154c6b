//! The benchmark's fixture: the generated flows and their records, the source and destination
//! NATs (set-up, not timed), and the checks of the destination against the source afterwards.

use super::*;

/// One generated flow: its identity and the record that carries it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Flow {
    pub(super) proto: u8,
    pub(super) int: (Ipv4Addr, u16),
    pub(super) ext: (Ipv4Addr, u16),
    pub(super) remote: (Ipv4Addr, u16),
    pub(super) idle_ms: u32,
}

/// The sizes of the layout.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// Blocks per external address.
    pub(super) blocks: u32,
}

impl Layout {
    pub(super) fn new() -> Layout {
        let blocks = NatConfig::default().blocks_per_group();
        Layout { blocks }
    }

    /// States per group: every port of every block, for TCP and for UDP.
    pub(super) fn per_group(self) -> u32 {
        2 * self.blocks * BLOCK_SIZE
    }

    pub(super) fn external(g: u32) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, 1 + g as u8)
    }

    pub(super) fn group_config(g: u32) -> GroupConfig {
        GroupConfig {
            external: Self::external(g),
            subscribers: format!("100.{}.{}.0/24", 64 + g / 256, g % 256)
                .parse()
                .expect("valid prefix"),
        }
    }

    /// The `i`th flow: group by group, alternately TCP and UDP, ports in order.
    pub(super) fn flow(self, i: u32) -> Flow {
        let g = i / self.per_group();
        let j = i % self.per_group();
        let proto = if j.is_multiple_of(2) { 6 } else { 17 };
        let slot = j / 2;
        let block = slot / BLOCK_SIZE;
        let sub = Ipv4Addr::new(
            100,
            64 + (g / 256) as u8,
            (g % 256) as u8,
            1 + (block / BLOCKS_PER_SUB) as u8,
        );
        let int_port = 20_000 + ((block % BLOCKS_PER_SUB) * BLOCK_SIZE + slot % BLOCK_SIZE) as u16;
        Flow {
            proto,
            int: (sub, int_port),
            ext: (Self::external(g), PORT_MIN + slot as u16),
            remote: (
                Ipv4Addr::new(198, 18 + (i >> 16 & 1) as u8, (i >> 8) as u8, i as u8),
                if proto == 6 { 443 } else { 53 },
            ),
            idle_ms: i.wrapping_mul(7919) % 120_000,
        }
    }
}

/// The 24-byte record of a flow, written by hand from the documented layout
/// (`flowshift_nat::record`), so the test also checks the NAT's reading of it.
pub(super) fn record(f: &Flow) -> [u8; RECORD_LEN] {
    let mut r = [0u8; RECORD_LEN];
    r[0] = f.proto;
    r[1] = if f.proto == 6 { 3 } else { 0 }; // TCP established
    r[2] = 0;
    r[3] = 1; // record version
    r[4..8].copy_from_slice(&f.int.0.octets());
    r[8..10].copy_from_slice(&f.int.1.to_be_bytes());
    r[10..12].copy_from_slice(&f.ext.1.to_be_bytes());
    r[12..16].copy_from_slice(&f.remote.0.octets());
    r[16..18].copy_from_slice(&f.remote.1.to_be_bytes());
    r[20..24].copy_from_slice(&f.idle_ms.to_be_bytes());
    r
}

/// Source, destination, and the migration id of each source group.
pub(super) struct Setup {
    pub(super) layout: Layout,
    pub(super) src: Nat,
    pub(super) dst: Nat,
    /// Seconds the destination's [`Nat::reserve`] took (set-up, not in the transfer).
    pub(super) reserve_secs: f64,
    /// (source group, migration id, destination group), in sending order.
    pub(super) groups: Vec<(GroupId, MigrationId, GroupId)>,
}

pub(super) fn setup(states: u32) -> Result<Setup> {
    let layout = Layout::new();
    let n_groups = states.div_ceil(layout.per_group());
    let max = MAX_STATES.min(MAX_GROUPS * layout.per_group());
    if states == 0 || states > max {
        bail!("--states must be in 1..={max}");
    }
    let groups: Vec<GroupConfig> = (0..n_groups).map(Layout::group_config).collect();
    let base = NatConfig {
        max_sessions: states.max(1024),
        max_mappings: states.max(1024),
        ..NatConfig::with_groups(groups)
    };
    if base.port_min != PORT_MIN || base.block_size as u32 != BLOCK_SIZE {
        bail!("the layout assumes the NAT's default port range and block size");
    }
    let mut src = Nat::new(NatConfig {
        hash_seed: 0x51c0_ffee_0000_0001,
        rng_seed: 1,
        ..base.clone()
    })
    .context("source NAT")?;
    let mut dst = Nat::new(NatConfig {
        hash_seed: 0xd57c_0ffe_e000_0002,
        rng_seed: 2,
        ..base
    })
    .context("destination NAT")?;
    let mut bytes = Vec::with_capacity(layout.per_group() as usize * RECORD_LEN);
    let mut mapped = Vec::with_capacity(n_groups as usize);
    for g in 0..n_groups {
        let ext = Layout::external(g);
        let sg = src.group_id(ext).context("source group")?;
        let dg = dst.group_id(ext).context("destination group")?;
        bytes.clear();
        let first = g * layout.per_group();
        let last = (first + layout.per_group()).min(states);
        for i in first..last {
            bytes.extend_from_slice(&record(&layout.flow(i)));
        }
        src.import(sg, NOW, &bytes)
            .with_context(|| format!("filling source group {g}"))?;
        // What `Prepare` does: the destination reserves the blocks the source holds.
        let held: Vec<u32> = src.held_blocks(sg)?.iter().map(|h| h.block).collect();
        dst.reserve_blocks(dg, &held)
            .with_context(|| format!("reserving group {g}'s blocks"))?;
        mapped.push((sg, MigrationId::new(InstanceId(1), g as u64 + 1), dg));
    }
    // What the destination does when `Prepare` announces the mappings and records to come:
    // pre-size its tables so the imports do not grow them.
    let t = WallClock::now();
    dst.reserve(src.mapping_count() as usize, src.session_count() as usize);
    let reserve_secs = t.elapsed().as_secs_f64();
    if src.mapping_count() != states || src.session_count() != states {
        bail!(
            "source holds {} mappings, {} sessions; expected {states}",
            src.mapping_count(),
            src.session_count()
        );
    }
    Ok(Setup {
        layout,
        src,
        dst,
        reserve_secs,
        groups: mapped,
    })
}

/// A 64-byte-ish IPv4 packet (no Ethernet header) of `proto` from `src` to `dst`.
pub(super) fn packet(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Result<Vec<u8>> {
    let b = etherparse::PacketBuilder::ipv4(src.0.octets(), dst.0.octets(), 64);
    let mut out = Vec::with_capacity(64);
    if proto == 6 {
        b.tcp(src.1, dst.1, 1000, 65535)
            .ack(1)
            .write(&mut out, &[0u8; 4])?;
    } else {
        b.udp(src.1, dst.1).write(&mut out, &[0u8; 16])?;
    }
    Ok(out)
}

/// Exports every mapping of group `g`, records in the order a transfer sends them.
pub(super) fn export_group(nat: &Nat, g: GroupId) -> Result<Vec<[u8; RECORD_LEN]>> {
    let mut bytes = Vec::new();
    for id in nat.group_mappings(g)? {
        nat.export_mapping(id, NOW, &mut bytes)?;
    }
    Ok(bytes
        .chunks_exact(RECORD_LEN)
        .map(|c| c.try_into().expect("chunks_exact gives whole records"))
        .collect())
}

/// Exports every mapping of group `g`, records sorted.
pub(super) fn export_sorted(nat: &Nat, g: GroupId) -> Result<Vec<[u8; RECORD_LEN]>> {
    let mut recs = export_group(nat, g)?;
    recs.sort_unstable();
    Ok(recs)
}

/// Checks the destination against the source; returns the number of flows translated.
pub(super) fn verify(setup: &mut Setup, states: u32) -> Result<u32> {
    let (src, dst) = (&mut setup.src, &mut setup.dst);
    if dst.mapping_count() != states || dst.session_count() != states {
        bail!(
            "destination holds {} mappings and {} sessions, expected {states}",
            dst.mapping_count(),
            dst.session_count()
        );
    }
    dst.check_invariants()
        .map_err(|e| anyhow::anyhow!("destination invariant: {e}"))?;
    for &(sg, _, dg) in &setup.groups {
        let (s, d) = (src.group_stats(sg)?, dst.group_stats(dg)?);
        if (s.mappings, s.sessions, s.blocks_held) != (d.mappings, d.sessions, d.blocks_held) {
            bail!("group {sg:?}: source {s:?}, destination {d:?}");
        }
        if export_sorted(src, sg)? != export_sorted(dst, dg)? {
            bail!("group {sg:?}: the destination's records differ from the source's");
        }
    }
    // Translate a sample of flows on both sides: identical packets, both directions.
    let step = (states / SAMPLE_FLOWS.min(states)).max(1);
    let mut sampled = 0;
    for i in (0..states).step_by(step as usize) {
        let f = setup.layout.flow(i);
        let mut a = packet(f.proto, f.int, f.remote)?;
        let mut b = a.clone();
        let (va, vb) = (src.process(NOW, &mut a), dst.process(NOW, &mut b));
        if va != Verdict::ToOutside || vb != va || a != b {
            bail!("flow {i} ({f:?}) outbound: source {va:?}, destination {vb:?}");
        }
        if a[12..16] != f.ext.0.octets() || a[20..22] != f.ext.1.to_be_bytes() {
            bail!("flow {i} ({f:?}) leaves from the wrong external endpoint");
        }
        let mut a = packet(f.proto, f.remote, f.ext)?;
        let mut b = a.clone();
        let (va, vb) = (src.process(NOW, &mut a), dst.process(NOW, &mut b));
        if va != Verdict::ToInside || vb != va || a != b {
            bail!("flow {i} ({f:?}) inbound: source {va:?}, destination {vb:?}");
        }
        sampled += 1;
    }
    Ok(sampled)
}
