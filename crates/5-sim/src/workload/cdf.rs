//! Published empirical flow-size distributions, as tables of (flow size in bytes, cumulative
//! probability) points, and inverse-CDF sampling from them.
//!
//! Between two points a size is interpolated linearly in the probability (the convention of
//! the simulation and traffic-generator code the tables come from, e.g. `gen_random_cdf` in
//! HKUST-SING/TrafficGenerator `src/common/cdf.c`), so within a segment sizes are uniform.
//! Sizes become data packets of [`MSS`] bytes, rounded up (a flow has at least one packet).

use serde::Serialize;

/// Payload bytes of one data packet (Ethernet MTU 1500 minus IPv4 and TCP headers), the
/// unit of the packet-based tables these byte tables correspond to.
pub const MSS: f64 = 1460.0;

/// One published flow-size CDF.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct EmpiricalCdf {
    /// Short name (`websearch`, `datamining`, `internet`).
    pub name: &'static str,
    /// Where the distribution was measured and where the tabulated points come from.
    pub source: &'static str,
    /// (flow size in bytes, P[size <= bytes]), sizes non-decreasing, probabilities
    /// non-decreasing from 0 to exactly 1.
    pub points: &'static [(f64, f64)],
}

/// Web search: the DCTCP paper's query and background traffic of a production web-search
/// cluster (M. Alizadeh et al., "Data Center TCP (DCTCP)", SIGCOMM 2010, Figure 4, the
/// background-flow size distribution), as tabulated for the pFabric (SIGCOMM 2013) and HULL
/// era simulations. Points: HKUST-SING/TrafficGenerator `conf/DCTCP_CDF.txt` (bytes), the same
/// points as its `conf/CDF_dctcp.txt` in packets of 1460 bytes (6, 13, 19, 33, 53, 133, 667,
/// 1333, 3333, 6667, 20000 packets). Mean about 1.7 MB; 53 % of flows up to 80 kB; largest
/// 30 MB.
pub const WEBSEARCH: EmpiricalCdf = EmpiricalCdf {
    name: "websearch",
    source: "DCTCP (Alizadeh et al., SIGCOMM 2010, Fig. 4); points from HKUST-SING/TrafficGenerator conf/DCTCP_CDF.txt",
    points: &[
        (0.0, 0.0),
        (10_000.0, 0.15),
        (20_000.0, 0.2),
        (30_000.0, 0.3),
        (50_000.0, 0.4),
        (80_000.0, 0.53),
        (200_000.0, 0.6),
        (1_000_000.0, 0.7),
        (2_000_000.0, 0.8),
        (5_000_000.0, 0.9),
        (10_000_000.0, 0.97),
        (30_000_000.0, 1.0),
    ],
};

/// Data mining: flow sizes in a large cluster running data-mining jobs (A. Greenberg et al.,
/// "VL2: A Scalable and Flexible Data Center Network", SIGCOMM 2009, Figure 2, flow size
/// distribution), as used by pFabric and later datacenter transport papers. Points:
/// HKUST-SING/TrafficGenerator `conf/VL2_CDF.txt` (bytes); its packet version
/// `conf/CDF_vl2.txt` has coarser points (half the flows one packet, 99 % up to 66,667
/// packets). Mean about 12.7 MB, carried by the 2 % of flows above 100 MB; 80 % of flows are
/// at most 10 kB; largest 1 GB.
pub const DATAMINING: EmpiricalCdf = EmpiricalCdf {
    name: "datamining",
    source: "VL2 (Greenberg et al., SIGCOMM 2009, Fig. 2); points from HKUST-SING/TrafficGenerator conf/VL2_CDF.txt",
    points: &[
        (0.0, 0.0),
        (180.0, 0.1),
        (216.0, 0.2),
        (560.0, 0.3),
        (900.0, 0.4),
        (1_100.0, 0.5),
        (1_870.0, 0.6),
        (3_160.0, 0.7),
        (10_000.0, 0.8),
        (400_000.0, 0.9),
        (3_160_000.0, 0.95),
        (100_000_000.0, 0.98),
        (1_000_000_000.0, 1.0),
    ],
};

/// Internet mix: unidirectional flows (NetFlow, no sampling, 300-s active and 15-s inactive
/// timeout) on the Internet-facing border link of a university network with 8,000 students in
/// dormitories (69 % of the traffic, residential-like), 30 days, 4.0 billion flows (P.
/// Jurkiewicz, G. Rzym, P. Boryło, "How Many Mice Make an Elephant? Modelling Flow Length and
/// Size Distribution of Internet Traffic", arXiv:1809.03486, 2018). Points: the "flows of size
/// up to (octets)" table of piotrjurkiewicz/flow-models `data/agh_201506/README.md` (flows %
/// column), from 64 B to 1 GB; that table ends at 99.9997 % at 1 GB, closed here with 1.0 at
/// 10 GB (the last 0.0003 % of flows). Mean in the data set 68 kB per flow. Not a CAIDA
/// backbone link (no CAIDA flow-size table could be cited point by point), but the traffic of
/// an access network behind one border router: what a CGNAT sees.
pub const INTERNET: EmpiricalCdf = EmpiricalCdf {
    name: "internet",
    source: "AGH border link 2015-06 (Jurkiewicz et al., arXiv:1809.03486); points from piotrjurkiewicz/flow-models data/agh_201506/README.md",
    points: &[
        (0.0, 0.0),
        (64.0, 0.043082),
        (128.0, 0.323376),
        (256.0, 0.568711),
        (512.0, 0.711101),
        (1_024.0, 0.790397),
        (1_500.0, 0.826085),
        (4_096.0, 0.897285),
        (10_000.0, 0.940991),
        (100_000.0, 0.984030),
        (1_000_000.0, 0.996050),
        (10_000_000.0, 0.999165),
        (100_000_000.0, 0.999876),
        (1_000_000_000.0, 0.999997),
        (10_000_000_000.0, 1.0),
    ],
};

impl EmpiricalCdf {
    /// The size (bytes) at cumulative probability `u` in [0, 1] (clamped), interpolated
    /// linearly between the two points around it.
    pub fn bytes_at(&self, u: f64) -> f64 {
        let u = if u.is_finite() {
            u.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let pts = self.points;
        let i = pts.partition_point(|&(_, p)| p < u);
        let Some(&(v1, p1)) = pts.get(i) else {
            return pts.last().map_or(0.0, |p| p.0);
        };
        let Some(&(v0, p0)) = i.checked_sub(1).and_then(|j| pts.get(j)) else {
            return v1;
        };
        if p1 <= p0 {
            v1
        } else {
            v0 + (u - p0) * (v1 - v0) / (p1 - p0)
        }
    }

    /// Data packets of a flow of `bytes` bytes: `ceil(bytes / MSS)`, at least 1, at most
    /// `u32::MAX`.
    pub fn packets(bytes: f64) -> u32 {
        let p = (bytes / MSS).ceil();
        if p.is_finite() {
            p.clamp(1.0, u32::MAX as f64) as u32
        } else {
            1
        }
    }

    /// Mean flow size (bytes) of the interpolated distribution: each segment uniform.
    pub fn mean_bytes(&self) -> f64 {
        self.points
            .windows(2)
            .map(|w| (w[1].1 - w[0].1) * (w[0].0 + w[1].0) / 2.0)
            .sum()
    }

    /// Whether the table is a CDF: at least two points, sizes and probabilities finite,
    /// non-negative and non-decreasing, the first probability 0 and the last exactly 1.
    pub fn is_valid(&self) -> bool {
        let p = self.points;
        p.len() >= 2
            && p.iter()
                .all(|&(v, q)| v.is_finite() && v >= 0.0 && (0.0..=1.0).contains(&q))
            && p.windows(2).all(|w| w[1].0 >= w[0].0 && w[1].1 >= w[0].1)
            && p.first().is_some_and(|f| f.1 == 0.0)
            && p.last().is_some_and(|l| l.1 == 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const ALL: [EmpiricalCdf; 3] = [WEBSEARCH, DATAMINING, INTERNET];

    #[test]
    fn tables_are_monotone_and_end_at_one() {
        for c in ALL {
            assert!(c.is_valid(), "{} is not a CDF", c.name);
            assert_eq!(c.bytes_at(0.0), 0.0, "{}", c.name);
            assert_eq!(c.bytes_at(1.0), c.points.last().unwrap().0, "{}", c.name);
        }
    }

    #[test]
    fn sampled_quantiles_match_the_table() {
        // 200,000 draws from a fixed seed; every tabulated point's probability is matched by
        // the sampled share of sizes at or below its size within 0.5 percentage points.
        for c in ALL {
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            let n = 200_000;
            let mut draws: Vec<f64> = (0..n).map(|_| c.bytes_at(rng.random::<f64>())).collect();
            draws.sort_by(f64::total_cmp);
            for &(v, p) in &c.points[1..] {
                let share = draws.partition_point(|&x| x <= v) as f64 / n as f64;
                assert!(
                    (share - p).abs() < 0.005,
                    "{}: P[size <= {v}] sampled {share}, table {p}",
                    c.name
                );
            }
            let median = draws[n / 2];
            let want = c.bytes_at(0.5);
            assert!(
                (median - want).abs() <= want * 0.05 + 1.0,
                "{}: median {median} vs {want}",
                c.name
            );
        }
    }

    #[test]
    fn means_and_packet_rounding() {
        // Means of the interpolated distributions (each segment uniform).
        let ws = WEBSEARCH.mean_bytes();
        assert!((1.6e6..1.8e6).contains(&ws), "websearch mean {ws}");
        let dm = DATAMINING.mean_bytes();
        assert!((1.2e7..1.35e7).contains(&dm), "datamining mean {dm}");
        assert_eq!(EmpiricalCdf::packets(0.0), 1);
        assert_eq!(EmpiricalCdf::packets(1460.0), 1);
        assert_eq!(EmpiricalCdf::packets(1461.0), 2);
        assert_eq!(EmpiricalCdf::packets(f64::NAN), 1);
        assert_eq!(EmpiricalCdf::packets(30_000_000.0), 20_548);
    }
}
