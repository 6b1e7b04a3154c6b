//! The analysis of a probe record: losses, reordering (end to end and per direction), the
//! round-trip timeline and the added delay around a migration.

use super::ProbeRecord;

/// One answered probe, times in ms relative to an origin.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Answer {
    /// Sequence number.
    pub seq: u64,
    /// Send time (ms).
    pub sent_ms: f64,
    /// Round trip (ms).
    pub rtt_ms: f64,
    /// Subscriber -> echo (ms).
    pub forward_ms: f64,
    /// Echo -> subscriber (ms).
    pub return_ms: f64,
}

/// A probe record, analysed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analysis {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered (each counted once).
    pub received: u64,
    /// Probes never answered.
    pub lost: u64,
    /// Echoes that arrived back with a lower sequence number than one already received.
    pub reordered: u64,
    /// Of the probes the echo saw, those it saw after a higher sequence number.
    pub reordered_forward: u64,
    /// Echoes that arrived back after one the echo had sent later.
    pub reordered_return: u64,
    /// Echoes received more than once.
    pub duplicates: u64,
    /// Answered probes by sequence number.
    pub answers: Vec<Answer>,
    /// Send times (ms) of the lost probes.
    pub lost_ms: Vec<f64>,
    /// Send times (ms) of the probes counted in `reordered`.
    pub reordered_ms: Vec<f64>,
    /// Send times (ms) of the probes counted in `reordered_forward`.
    pub reordered_forward_ms: Vec<f64>,
    /// Send times (ms) of the probes counted in `reordered_return`.
    pub reordered_return_ms: Vec<f64>,
}

/// Analyses `rec` with times relative to `origin_ns` (Unix ns).
pub fn analyse(rec: &ProbeRecord, origin_ns: u64) -> Analysis {
    let ms = |t: u64| (t as f64 - origin_ns as f64) / 1e6;
    let mut first: Vec<Option<[u64; 4]>> = vec![None; rec.send_ns.len()];
    let mut a = Analysis {
        sent: rec.sent,
        ..Analysis::default()
    };
    let mut max_seq = None;
    let mut max_idx = None;
    for r in &rec.replies {
        let Some(slot) = first.get_mut(r[0] as usize) else {
            continue;
        };
        if slot.is_some() {
            a.duplicates += 1;
            continue;
        }
        *slot = Some(*r);
        if max_seq.is_some_and(|m| r[0] < m) {
            a.reordered += 1;
            a.reordered_ms.push(ms(rec.send_ns[r[0] as usize]));
        }
        max_seq = max_seq.max(Some(r[0]));
        if max_idx.is_some_and(|m| r[3] < m) {
            a.reordered_return += 1;
            a.reordered_return_ms.push(ms(rec.send_ns[r[0] as usize]));
        }
        max_idx = max_idx.max(Some(r[3]));
    }
    // The echo's view: first arrivals in the echo's order.
    let mut at_echo: Vec<[u64; 4]> = first.iter().flatten().copied().collect();
    at_echo.sort_by_key(|r| r[3]);
    let mut m = None;
    for r in &at_echo {
        if m.is_some_and(|m| r[0] < m) {
            a.reordered_forward += 1;
            a.reordered_forward_ms.push(ms(rec.send_ns[r[0] as usize]));
        }
        m = m.max(Some(r[0]));
    }
    for (seq, (slot, &sent)) in first.iter().zip(&rec.send_ns).enumerate() {
        match slot {
            Some(r) => a.answers.push(Answer {
                seq: seq as u64,
                sent_ms: ms(sent),
                rtt_ms: (r[2] as f64 - sent as f64) / 1e6,
                forward_ms: (r[1] as f64 - sent as f64) / 1e6,
                return_ms: (r[2] as f64 - r[1] as f64) / 1e6,
            }),
            None => a.lost_ms.push(ms(sent)),
        }
    }
    a.received = a.answers.len() as u64;
    a.lost = a.sent - a.received;
    a
}

/// The `q` quantile of sorted values (nearest rank); 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Added delay: (pre-migration median RTT, p99 and max of RTT minus that median over probes
/// sent in `[from_ms, to_ms]`). The baseline is the probes sent in the second before
/// `from_ms`.
pub fn added_delay(answers: &[Answer], from_ms: f64, to_ms: f64) -> (f64, f64, f64) {
    let mut base: Vec<f64> = answers
        .iter()
        .filter(|a| a.sent_ms >= from_ms - 1000.0 && a.sent_ms < from_ms)
        .map(|a| a.rtt_ms)
        .collect();
    base.sort_by(f64::total_cmp);
    let baseline = quantile(&base, 0.5);
    let mut added: Vec<f64> = answers
        .iter()
        .filter(|a| a.sent_ms >= from_ms && a.sent_ms <= to_ms)
        .map(|a| a.rtt_ms - baseline)
        .collect();
    added.sort_by(f64::total_cmp);
    (
        baseline,
        quantile(&added, 0.99),
        added.last().copied().unwrap_or(0.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn analysis_counts_loss_reordering_per_direction_and_delay() {
        let ms = 1_000_000u64;
        let origin = 1_000 * ms;
        let send_ns: Vec<u64> = (0..6).map(|i| origin + i * ms).collect();
        // Probe 2 lost; the echo sees 4 before 3 (forward reordering), and the echo of 1
        // (the echo's second) arrives back after the echo's third and fourth (return
        // reordering; its times are not consistent with that, the analysis goes by order).
        let rec = ProbeRecord {
            rate_per_s: 1000,
            sent: 6,
            send_ns: send_ns.clone(),
            replies: vec![
                [0, send_ns[0] + ms / 4, send_ns[0] + ms / 2, 0],
                [4, send_ns[4] + ms / 4, send_ns[4] + ms / 2, 2],
                [3, send_ns[3] + 2 * ms, send_ns[3] + 3 * ms, 3],
                [1, send_ns[1] + ms / 4, send_ns[1] + ms / 2, 1],
                [5, send_ns[5] + ms / 4, send_ns[5] + ms / 2, 4],
                [5, send_ns[5] + ms / 4, send_ns[5] + ms / 2, 4],
            ],
            ..ProbeRecord::default()
        };
        let a = analyse(&rec, origin);
        assert_eq!((a.sent, a.received, a.lost, a.duplicates), (6, 5, 1, 1));
        assert_eq!(a.reordered, 2, "3 after 4, 1 after 3");
        assert_eq!(a.reordered_forward, 1, "the echo saw 3 after 4");
        assert_eq!(
            a.reordered_return, 1,
            "1 (echoed 2nd) came back after later echoes"
        );
        assert_eq!(a.lost_ms, vec![2.0]);
        assert_eq!(a.reordered_ms, vec![3.0, 1.0]);
        assert_eq!(a.reordered_forward_ms, vec![3.0], "probe 3, sent at 3 ms");
        assert_eq!(a.reordered_return_ms, vec![1.0], "probe 1, sent at 1 ms");
        let three = a.answers.iter().find(|x| x.seq == 3).unwrap();
        assert!((three.rtt_ms - 3.0).abs() < 1e-9);
        assert!((three.forward_ms - 2.0).abs() < 1e-9);
        assert!((three.return_ms - 1.0).abs() < 1e-9);
        assert!((three.sent_ms - 3.0).abs() < 1e-9);
        let (base, p99, max) = added_delay(&a.answers, 3.0, 10.0);
        assert!((base - 0.5).abs() < 1e-9, "{base}");
        assert!((max - 2.5).abs() < 1e-9);
        assert!((p99 - 2.5).abs() < 1e-9);
    }
}
