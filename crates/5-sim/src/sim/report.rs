//! What a run measured: goodput per bin and in a window, and the [`Report`] of a whole run
//! (a child module of `sim`, so it reads the simulator's tables directly).

use super::*;

impl Sim {
    fn sink_bins(&self, apps: &[AppId]) -> Vec<&[u64]> {
        let all: Vec<AppId> = (0..self.apps.len() as u32).map(AppId).collect();
        let sel = if apps.is_empty() { &all[..] } else { apps };
        sel.iter()
            .filter_map(|a| {
                let (element, idx) = *self.apps.get(a.0 as usize)?;
                match &self.elements[element.0 as usize].kind {
                    NodeKind::Host(h) => h.apps.get(idx).map(|a| a.bins.as_slice()),
                    NodeKind::Element(_) => None,
                }
            })
            .collect()
    }

    /// Goodput of the given sink applications (all applications if `apps` is empty), summed,
    /// per goodput bin: `(bin start in ms, Mbit/s)` for every complete bin up to now.
    /// Goodput counts payload bytes read by the receiving application in the bin.
    pub fn goodput(&self, apps: &[AppId]) -> Vec<(f64, f64)> {
        let bin_ns = self.bin.as_nanos().max(1) as u64;
        let n = (self.net.now.as_nanos() / bin_ns) as usize;
        let mut sum = vec![0u64; n];
        for bins in self.sink_bins(apps) {
            for (s, b) in sum.iter_mut().zip(bins) {
                *s += *b;
            }
        }
        let bin_s = self.bin.as_secs_f64();
        sum.iter()
            .enumerate()
            .map(|(i, &b)| {
                (
                    (i as u64 * bin_ns) as f64 / 1e6,
                    b as f64 * 8.0 / bin_s / 1e6,
                )
            })
            .collect()
    }

    /// Mean goodput in bit/s of the given sinks (all if empty) over the bins that start in
    /// `[from, to)` (bin-aligned).
    pub fn mean_goodput_bps(&self, apps: &[AppId], from: Instant, to: Instant) -> f64 {
        let bin_ns = self.bin.as_nanos().max(1) as u64;
        let (a, b) = (
            from.as_nanos().div_ceil(bin_ns) as usize,
            (to.as_nanos() / bin_ns) as usize,
        );
        if b <= a {
            return 0.0;
        }
        let bytes: u64 = self
            .sink_bins(apps)
            .iter()
            .map(|bins| bins.iter().take(b).skip(a).sum::<u64>())
            .sum();
        bytes as f64 * 8.0 / ((b - a) as f64 * self.bin.as_secs_f64())
    }

    /// Builds the report, including the end-of-run ledger scan and invariant checks.
    pub fn report(&self) -> Report {
        let ledger = &self.net.ledger;
        let mut violations: Vec<String> = ledger.violations.clone();
        let mut live = ledger.live_snapshot();
        let mut in_flight = 0u64;
        let mut held = 0u64;
        let mut bad_ticks = 0u64;
        for l in &self.net.links {
            l.for_each_packet(&mut |p| {
                in_flight += 1;
                if !live.tick(p.meta.id) {
                    bad_ticks += 1;
                }
            });
        }
        for pkt in self.net.wire.iter().flatten() {
            in_flight += 1;
            if !live.tick(pkt.meta.id) {
                bad_ticks += 1;
            }
        }
        for slot in &self.elements {
            if let NodeKind::Element(e) = &slot.kind {
                e.held_packets(&mut |id| {
                    held += 1;
                    if !live.tick(id) {
                        bad_ticks += 1;
                    }
                });
            }
        }
        if bad_ticks > 0 {
            violations.push(format!(
                "{bad_ticks} packets found in the network that were already retired or seen twice"
            ));
        }
        let unaccounted_ids: Vec<u64> = live.remaining().take(10).collect();
        let unaccounted = live.remaining().count() as u64;
        if unaccounted > 0 {
            violations.push(format!(
                "{unaccounted} packets unaccounted for (created, never delivered/dropped, not in flight or held), e.g. ids {unaccounted_ids:?}"
            ));
        }
        let dropped_total = ledger.dropped_total();
        let sum = ledger.delivered_to_hosts
            + ledger.consumed_by_elements
            + dropped_total
            + in_flight
            + held
            + unaccounted;
        if sum != ledger.created + bad_ticks {
            violations.push(format!(
                "ledger does not balance: created {} != delivered {} + consumed {} + dropped {} + in flight {} + held {} + unaccounted {}",
                ledger.created,
                ledger.delivered_to_hosts,
                ledger.consumed_by_elements,
                dropped_total,
                in_flight,
                held,
                unaccounted
            ));
        }
        let ledger_report = LedgerReport {
            created: ledger.created,
            delivered_to_hosts: ledger.delivered_to_hosts,
            consumed_by_elements: ledger.consumed_by_elements,
            dropped: ledger.drops.iter().map(|(c, n)| (c.name(), *n)).collect(),
            element_drops: ledger
                .element_drops
                .iter()
                .map(|((element, r), n)| {
                    (
                        format!("{}:{}", self.elements[element.0 as usize].name, r),
                        *n,
                    )
                })
                .collect(),
            in_flight_at_end: in_flight,
            held_by_elements_at_end: held,
            unaccounted,
            unaccounted_ids,
        };
        let count = self.delay.len();
        let delay = DelaySummary {
            count,
            mean_ns: if count > 0 {
                self.delay_sum as f64 / count as f64
            } else {
                0.0
            },
            p50_ns: self.delay.value_at_quantile(0.5),
            p99_ns: self.delay.value_at_quantile(0.99),
            max_ns: self.delay_max,
        };
        let mut hosts = Vec::new();
        for slot in &self.elements {
            if let NodeKind::Host(h) = &slot.kind {
                hosts.push(HostReport {
                    name: slot.name.clone(),
                    addr: h.cfg.addr.to_string(),
                    stats: h.stats.clone(),
                });
            }
        }
        let apps = self
            .apps
            .iter()
            .filter_map(
                |&(element, idx)| match &self.elements[element.0 as usize].kind {
                    NodeKind::Host(h) => h.apps.get(idx).map(|a| AppReport {
                        host: self.elements[element.0 as usize].name.clone(),
                        stats: a.stats.clone(),
                    }),
                    NodeKind::Element(_) => None,
                },
            )
            .collect();
        Report {
            seed: self.seed,
            now_ns: self.net.now.as_nanos(),
            events: self.events,
            timer_spins: self.timer_spins,
            ledger: ledger_report,
            links: self
                .net
                .links
                .iter()
                .map(|l| LinkReport {
                    name: l.name.clone(),
                    config: l.cfg.clone(),
                    stats: l.stats.clone(),
                    queued_bytes_at_end: l.queued_bytes() as u64,
                })
                .collect(),
            hosts,
            apps,
            flows: summarize_flows(&self.net.flows),
            delay,
            goodput_mbps: self.goodput(&[]),
            violations,
        }
    }
}
