//! The terminal table of a comparison.

use super::*;
use crate::metrics;

/// A text table of a comparison: per policy the fairness measures, the window over time, and
/// each tenant's throughput and latency.
pub fn render(results: &[(String, SimResult)]) -> String {
    use std::fmt::Write as _;
    let rows: Vec<metrics::PolicyRow> = results
        .iter()
        .map(|(name, r)| metrics::PolicyRow {
            name: name.clone(),
            aggregate_iops: r.aggregate_iops,
            cost: r.cost_shares(),
            jain: r.jain,
            min_max_ratio: r.min_max_ratio,
            max_share_error: r.max_share_error,
            mean_share_error: r.mean_share_error,
            reservation_conformance: r.reservation_conformance,
            victim_p99_ratio: r.victim_p99_ratio,
            victim_p999_ratio: r.victim_p999_ratio,
            work_conservation: r.work_conservation,
            congestion: Some(r.luns.iter().map(|l| l.congestion_signals).sum()),
        })
        .collect();
    let mut s = metrics::policy_table(&rows);
    let _ = writeln!(
        s,
        "(Jain, max/mean err: shares in cost units over the contended seconds (cont.s: seconds with \
         two or more tenants of a LUN waiting in the broker; a tenant that was not waiting got what \
         it asked); IOPS-Jain, IOPS-err, min/max: weight-normalised IOPS over the whole run; resv: \
         1 s windows at ≥ 99 % of the reservation; v.p99/v.p999: victim tail with everyone ÷ alone; \
         work: IOPS ÷ fifo's; cong: QUEUE FULL/BUSY answers)"
    );
    let _ = writeln!(s, "\nwindow D per LUN, 1 s means:");
    for (name, r) in results {
        for l in &r.luns {
            let mut means = Vec::new();
            let mut sec = 0.0;
            while sec < r.duration_s {
                let v: Vec<f64> = l
                    .window
                    .iter()
                    .filter(|(t, _)| *t >= sec && *t < sec + 1.0)
                    .map(|x| f64::from(x.1))
                    .collect();
                if !v.is_empty() {
                    means.push(format!("{:.0}", v.iter().sum::<f64>() / v.len() as f64));
                }
                sec += 1.0;
            }
            // The knee search's end state: where it is, and how noisy it found the device.
            let knee = match (l.knee, l.dispersion) {
                (Some(k), Some(phi)) => format!("   (knee {k:.0}, dispersion φ {phi:.1})"),
                _ => String::new(),
            };
            let _ = writeln!(s, "  {:<18} {:<8} {}{knee}", name, l.name, means.join(" "));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<18} {:<12} {:>6} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "policy",
        "tenant",
        "weight",
        "IOPS",
        "MiB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "DAVG us",
        "KAVG us"
    );
    for (name, r) in results {
        for t in &r.tenants {
            let _ = writeln!(
                s,
                "{:<18} {:<12} {:>6} {:>9.0} {:>9.2} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
                name,
                t.name,
                t.weight,
                t.iops,
                t.mib_per_s,
                t.lat_p50_us,
                t.lat_p99_us,
                t.lat_p999_us,
                t.device_lat_mean_us,
                t.queue_lat_mean_us
            );
        }
    }
    if results
        .iter()
        .any(|(_, r)| r.luns.iter().any(|l| l.paths.len() > 1))
    {
        let _ = writeln!(
            s,
            "\n{:<18} {:<8} {:<10} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9} {:>12}",
            "policy",
            "LUN",
            "path",
            "IOPS",
            "share",
            "errors",
            "S us",
            "state",
            "reissued",
            "failover ms"
        );
        for (name, r) in results {
            for l in r.luns.iter().filter(|l| l.paths.len() > 1) {
                let total: f64 = l.paths.iter().map(|p| p.iops).sum();
                for (k, p) in l.paths.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{:<18} {:<8} {:<10} {:>9.0} {:>6.1}% {:>7} {:>10} {:>9} {:>9} {:>12}",
                        name,
                        l.name,
                        p.name,
                        p.iops,
                        if total > 0.0 {
                            p.iops / total * 100.0
                        } else {
                            0.0
                        },
                        p.errors,
                        p.ewma_service_us.map_or("-".into(), |v| format!("{v:.0}")),
                        p.state_at_end.to_string(),
                        if k == 0 {
                            l.reissued.to_string()
                        } else {
                            String::new()
                        },
                        match (k, l.max_failover_s) {
                            (0, Some(f)) => format!("{:.1}", f * 1000.0),
                            (0, None) => "-".into(),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        let mut any = false;
        for (name, r) in results {
            for l in &r.luns {
                for e in &l.path_events {
                    if !any {
                        let _ = writeln!(s, "\npath events:");
                        any = true;
                    }
                    let _ = writeln!(
                        s,
                        "  {:<18} {:>8.3} s  {}/{}  {}: {}",
                        name, e.event.at, l.name, e.path, e.event.what, e.event.why
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "(share: of the LUN's IOPS; S: EWMA service time; reissued: requests moved to another \
             path after theirs failed; failover: longest fault → good answer via another path)"
        );
    }
    if results.iter().any(|(_, r)| !r.pools.is_empty()) {
        let _ = writeln!(s, "\nthin pools: completions per second, per tenant");
        for (name, r) in results {
            let _ = writeln!(s, "  {name}");
            for p in &r.pools {
                let _ = writeln!(
                    s,
                    "    pool {} ({:?}): {:.0} of {:.0} MiB used at the end, first full at {}, \
                     at most {} requests waiting for space",
                    p.name,
                    p.on_full,
                    p.used_mib,
                    p.capacity_mib,
                    p.full_at_s.map_or("never".into(), |t| format!("{t:.2} s")),
                    p.held_max
                );
            }
            for t in &r.tenants {
                let secs: Vec<String> = t.per_second.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(
                    s,
                    "    {:<12} errors {:>6}  {}",
                    t.name,
                    t.errors,
                    secs.join(" ")
                );
            }
        }
    }
    s
}
