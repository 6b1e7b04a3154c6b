//! The shaped server link ([`Shaping`]): the HTB plan for a link rate and its `tc` commands.

use super::PROBE_PORT;

/// Largest Ethernet frame on the testbed (MTU 1500 + 14-byte header).
const FRAME: u64 = 1514;
/// Flows the bulk queue is sized for (the poster's 100 iperf flows).
const SIZED_FOR_FLOWS: u64 = 100;

/// The controlled bottleneck: the server link (switch port `fsR-out` <-> `srv0`) shaped in both
/// directions by an HTB tree on the egress side of each end (`fsR-out` in the switch's
/// namespace: subscribers -> servers, the iperf3 data; `srv0` in the server namespace: servers
/// -> subscribers, ACKs and probe echoes). Pure: [`Shaping::tc_commands`] are the `tc`
/// argument lists, `bed/network.rs` runs them.
///
/// ```text
/// 1:   htb, default class 1:20
/// 1:1  rate R ceil R                       (the link)
/// 1:10 rate P ceil R prio 0 -> pfifo       UDP to/from PROBE_PORT (u32 filter)
/// 1:20 rate R-P ceil R prio 1 -> bfifo L   everything else (drop-tail)
/// ```
///
/// * **Queue (`limit_bytes`, L).** The bulk class ends in a byte-bounded drop-tail FIFO of
///   `max(4 ms at R, 100 flows x 3 full frames)`: 500 kB at 1 Gbit/s (about 330 frames, 3.3 per
///   flow). With 100 TCP flows sharing one drop-tail queue, a few packets per flow keep most
///   windows at 4+ segments, so a loss is repaired by fast retransmit rather than a timeout
///   (Morris, "TCP behavior with many flows", ICNP'97); the BDP/sqrt(N) rule would give only a
///   few kB here, since the base RTT is below 1 ms. The queueing delay it can add stays <= 4 ms
///   at 1 Gbit/s.
/// * **Burst (`burst_bytes`).** `max(0.5 ms at R, 16 kB)`: 62.5 kB at 1 Gbit/s. The switch and
///   the nodes send in batches of up to 32-64 frames; a smaller bucket makes the shaper's timer
///   (on a loaded 2-core machine) cost throughput below R. Half a millisecond at line rate is
///   invisible in 100 ms goodput bins.
/// * **Probe class (P).** `min(10 Mbit/s, R/10)` guaranteed, priority 0: the probe stream
///   (about 1 Mbit/s) shares the link but not the bulk queue, so it measures what the migration
///   does to a subscriber's packets (loss, reordering, delay in the switch and the nodes), not
///   the drop-tail losses the 100 TCP flows cause by design.
///
/// The rate counts whole Ethernet frames: at 1 Gbit/s TCP goodput tops out near 956 Mbit/s
/// (1448 payload bytes per 1514-byte frame).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shaping {
    /// Link rate, bits per second.
    pub rate_bps: u64,
    /// Bucket size of every class, bytes.
    pub burst_bytes: u64,
    /// Bulk queue bound, bytes.
    pub limit_bytes: u64,
    /// Rate guaranteed to the probe class, bits per second.
    pub probe_rate_bps: u64,
}

impl Shaping {
    /// The plan for a link of `rate_bps` (at least 1 Mbit/s).
    pub fn for_rate(rate_bps: u64) -> Shaping {
        let bytes_per_ms = rate_bps / 8 / 1000;
        Shaping {
            rate_bps,
            burst_bytes: (bytes_per_ms / 2).max(16 << 10),
            limit_bytes: (bytes_per_ms * 4).max(SIZED_FOR_FLOWS * 3 * FRAME),
            probe_rate_bps: (rate_bps / 10).min(10_000_000),
        }
    }

    /// `tc` argument lists that shape the egress of `dev`; probe packets are recognised by
    /// UDP `port_field` (`dport` towards the echo, `sport` from it) equal to [`PROBE_PORT`].
    pub fn tc_commands(&self, dev: &str, port_field: &str) -> Vec<Vec<String>> {
        let r = format!("{}bit", self.rate_bps);
        let p = format!("{}bit", self.probe_rate_bps);
        let bulk = format!("{}bit", self.rate_bps - self.probe_rate_bps);
        let b = self.burst_bytes.to_string();
        let q = FRAME.to_string();
        let port = PROBE_PORT.to_string();
        let limit = self.limit_bytes.to_string();
        let cmds: [&[&str]; 7] = [
            &[
                "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "20",
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate", &r,
                "ceil", &r, "burst", &b, "cburst", &b, "quantum", &q,
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:1", "classid", "1:10", "htb", "rate", &p,
                "ceil", &r, "burst", &b, "cburst", &b, "prio", "0", "quantum", &q,
            ],
            &[
                "class", "add", "dev", dev, "parent", "1:1", "classid", "1:20", "htb", "rate",
                &bulk, "ceil", &r, "burst", &b, "cburst", &b, "prio", "1", "quantum", &q,
            ],
            &[
                "qdisc", "add", "dev", dev, "parent", "1:10", "handle", "10:", "pfifo", "limit",
                "1000",
            ],
            &[
                "qdisc", "add", "dev", dev, "parent", "1:20", "handle", "20:", "bfifo", "limit",
                &limit,
            ],
            &[
                "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
                "match", "ip", "protocol", "17", "0xff", "match", "ip", port_field, &port,
                "0xffff", "flowid", "1:10",
            ],
        ];
        cmds.iter()
            .map(|c| c.iter().map(|s| (*s).to_owned()).collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_rates_parse_and_shaping_is_sized_for_100_flows() {
        let s = Shaping::for_rate(1_000_000_000);
        assert_eq!(s.limit_bytes, 500_000);
        assert_eq!(s.burst_bytes, 62_500);
        assert_eq!(s.probe_rate_bps, 10_000_000);
        assert!(s.limit_bytes >= 100 * 3 * FRAME);
        let slow = Shaping::for_rate(10_000_000);
        assert_eq!(slow.limit_bytes, 100 * 3 * FRAME);
        assert_eq!(slow.burst_bytes, 16 << 10);
        assert_eq!(slow.probe_rate_bps, 1_000_000);
        let cmds = s.tc_commands("srv0", "sport");
        assert_eq!(cmds.len(), 7);
        assert!(
            cmds[0]
                .join(" ")
                .starts_with("qdisc replace dev srv0 root handle 1: htb")
        );
        assert!(
            cmds[3]
                .join(" ")
                .contains("rate 990000000bit ceil 1000000000bit")
        );
        assert!(
            cmds[6]
                .join(" ")
                .contains("match ip sport 7001 0xffff flowid 1:10")
        );
    }
}
