//! Report pieces shared by the simulator experiment ([`crate::experiment`]) and the testbed
//! experiment ([`crate::testbed`]): algorithm names, goodput statistics, the fig1c plot and
//! table, JSON output. Depends on neither experiment (it is what breaks their import circle).

use crate::plot::{self, Figure, Series, Span};
use anyhow::{Context, Result};
use flowshift_migration::Algorithm;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Name used in reports: [`Algorithm::as_str`].
pub fn algorithm_name(a: Algorithm) -> &'static str {
    a.as_str()
}

pub(crate) fn round(x: f64, d: i32) -> f64 {
    let p = 10f64.powi(d);
    (x * p).round() / p
}

/// Re-bins (bin start ms, Mbit/s) goodput into bins of `bin_ms` aligned to multiples of it
/// (the mean of the fine bins each holds; fine bins must divide `bin_ms`).
pub(crate) fn rebin(bins: &[(f64, f64)], bin_ms: f64) -> Vec<(f64, f64)> {
    let mut out: BTreeMap<i64, (f64, usize)> = BTreeMap::new();
    for &(t, v) in bins {
        let e = out.entry((t / bin_ms + 1e-9).floor() as i64).or_default();
        e.0 += v;
        e.1 += 1;
    }
    out.into_iter()
        .map(|(k, (sum, n))| (k as f64 * bin_ms, sum / n as f64))
        .collect()
}

/// The lowest goodput bin during a migration divided by the median bin before it: bins
/// (start ms, Mbit/s) of width `bin_ms`; "during" is every bin overlapping `[from_ms, to_ms +
/// bin_ms]` (request to done, plus one bin); "before" every bin starting at or after
/// `base_from_ms` and ending by `from_ms`. `None` without a baseline.
pub(crate) fn goodput_min_bin_ratio(
    bins: &[(f64, f64)],
    bin_ms: f64,
    base_from_ms: f64,
    from_ms: f64,
    to_ms: f64,
) -> Option<f64> {
    let mut base: Vec<f64> = bins
        .iter()
        .filter(|(t, _)| *t >= base_from_ms && *t + bin_ms <= from_ms + 1e-9)
        .map(|(_, v)| *v)
        .collect();
    base.sort_by(f64::total_cmp);
    let median = match base.len() {
        0 => return None,
        n if n % 2 == 1 => base[n / 2],
        n => (base[n / 2 - 1] + base[n / 2]) / 2.0,
    };
    let min = bins
        .iter()
        .filter(|(t, _)| *t + bin_ms > from_ms && *t <= to_ms + bin_ms)
        .map(|(_, v)| *v)
        .min_by(f64::total_cmp)?;
    (median > 0.0).then(|| round(min / median, 3))
}

pub(crate) fn write_json(path: &Path, v: &Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string_pretty(v)? + "\n")
        .with_context(|| format!("writing {}", path.display()))
}

/// One algorithm's goodput curve and phases for [`write_goodput_plot`].
pub(crate) struct GoodputCurve<'a> {
    /// Legend label.
    pub label: &'a str,
    /// (ms, Mbit/s).
    pub points: &'a [(f64, f64)],
    /// (phase name, start ms, end ms), shaded in the curve's colour.
    pub phases: &'a [(String, f64, f64)],
}

/// Writes the fig1c goodput plot (SVG and PNG at `path` with the extensions added).
pub(crate) fn write_goodput_plot(
    title: &str,
    y_label: &str,
    curves: &[GoodputCurve],
    path: &std::path::Path,
) -> Result<()> {
    let fig = Figure {
        title,
        x_label: "time (ms)",
        y_label,
        series: curves
            .iter()
            .map(|c| Series {
                label: c.label,
                points: c.points,
            })
            .collect(),
        spans: curves
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                c.phases.iter().map(move |(n, s, e)| Span {
                    label: n,
                    start: *s,
                    end: *e,
                    series: i,
                })
            })
            .collect(),
        log_y: false,
        log_x: false,
    };
    plot::write(&fig, path)
}

/// Prints the fig1c table of `runs` (the `runs` array of `fig1c.json`, simulator or
/// testbed); a field a back end does not have prints as `-`.
pub(crate) fn print_fig1c_table(runs: &Value) {
    println!(
        "{:<12} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>11} {:>9} {:>6} {:>6} {:>7} {:>15}",
        "algorithm",
        "lost",
        "p_lost",
        "reorder",
        "buffered",
        "retrans",
        "freeze_ms",
        "halted_ms",
        "dly_p99",
        "dly_max",
        "mig_ms",
        "expired",
        "transferred",
        "bytes",
        "Mb/s<",
        "Mb/s~",
        "min_bin",
        "cpu% n1/n2/ovs"
    );
    let int = |v: &Value| v.as_u64().map_or("-".to_owned(), |x| x.to_string());
    let num = |v: &Value, d: usize| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.d$}"));
    for r in runs.as_array().into_iter().flatten() {
        let c = &r["cpu_pct"];
        let cpu = if c.is_object() {
            format!(
                "{}/{}/{}",
                num(&c["node1"], 0),
                num(&c["node2"], 0),
                num(&c["ovs_vswitchd"], 0)
            )
        } else {
            "-".to_owned()
        };
        println!(
            "{:<12} {:>6} {:>7} {:>7} {:>8} {:>7} {:>9} {:>9} {:>8} {:>8} {:>9} {:>7} {:>11} {:>9} {:>6} {:>6} {:>7} {:>15}",
            r["algorithm"].as_str().unwrap_or("?"),
            int(&r["packets_lost"]),
            int(&r["probes_lost"]),
            int(&r["reordered_packets"]),
            int(&r["packets_buffered"]),
            int(&r["retransmits"]),
            num(&r["max_freeze_ms"], 2),
            num(&r["halted_ms"], 2),
            num(&r["added_delay_ms_p99"], 2),
            num(&r["added_delay_ms_max"], 2),
            num(&r["migration_ms"], 1),
            int(&r["states_expired_idle"]),
            int(&r["states_transferred"]),
            int(&r["bytes_transferred"]),
            num(&r["goodput_before_mbps"], 0),
            num(&r["goodput_during_mbps"], 0),
            num(&r["goodput_min_bin_ratio"], 3),
            cpu,
        );
    }
    println!(
        "  lost: packets the NAT nodes lost to the migration; p_lost, reorder, dly_*: the probe stream on the testbed\n  (added RTT over the migration and after), every data packet in the simulator (one-way); Mb/s< before, Mb/s~\n  from the request to 1 s after done; min_bin: lowest 100 ms goodput bin during the migration / median bin before"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_bin_ratio_compares_the_worst_migration_bin_with_the_median_before() {
        // 10 ms bins of 900, with a dip to 300 for 50 ms at 1200..1250 ms.
        let fine: Vec<(f64, f64)> = (0..300)
            .map(|i| {
                let t = i as f64 * 10.0;
                (
                    t,
                    if (1200.0..1250.0).contains(&t) {
                        300.0
                    } else {
                        900.0
                    },
                )
            })
            .collect();
        let coarse = rebin(&fine, 100.0);
        assert_eq!(coarse.len(), 30);
        assert_eq!(coarse[12], (1200.0, 600.0));
        let r = goodput_min_bin_ratio(&coarse, 100.0, 500.0, 1000.0, 1150.0).unwrap();
        assert!((r - 600.0 / 900.0).abs() < 1e-3, "{r}");
        // The dip lies beyond done + one bin: not counted.
        let r = goodput_min_bin_ratio(&coarse, 100.0, 500.0, 1000.0, 1050.0).unwrap();
        assert_eq!(r, 1.0);
        assert_eq!(goodput_min_bin_ratio(&coarse, 100.0, 0.0, 50.0, 60.0), None);
    }
}
