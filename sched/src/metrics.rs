//! Fairness measures (shared/design/ALGORITHMS.md §6), computed the same way by `weir sim`,
//! `weir run` and the tests.

/// Jain's fairness index `J = (Σx)² / (n·Σx²)` of entitlement-normalised throughputs
/// `x_i = T_i / E_i`: 1 when every tenant gets the same multiple of its entitlement, 1/n when
/// one tenant gets everything. `None` for no tenants or all-zero throughput.
pub fn jain(normalised: &[f64]) -> Option<f64> {
    let n = normalised.len() as f64;
    let sum: f64 = normalised.iter().sum();
    let sum_sq: f64 = normalised.iter().map(|x| x * x).sum();
    (n > 0.0 && sum_sq > 0.0).then(|| sum * sum / (n * sum_sq))
}

/// `min x_i / max x_i` of normalised throughputs.
pub fn min_max_ratio(normalised: &[f64]) -> Option<f64> {
    let max = normalised.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = normalised.iter().copied().fold(f64::INFINITY, f64::min);
    (!normalised.is_empty() && max > 0.0).then(|| min / max)
}

/// Share error of each tenant: `|T_i/ΣT − w_i/Σw| / (w_i/Σw)`.
pub fn share_errors(throughput: &[f64], weights: &[f64]) -> Vec<f64> {
    let total_t: f64 = throughput.iter().sum();
    let total_w: f64 = weights.iter().sum();
    throughput
        .iter()
        .zip(weights)
        .map(|(t, w)| {
            let want = w / total_w;
            let got = if total_t > 0.0 { t / total_t } else { 0.0 };
            (got - want).abs() / want
        })
        .collect()
}

/// `(max, mean)` of [`share_errors`].
pub fn share_error_max_mean(throughput: &[f64], weights: &[f64]) -> (f64, f64) {
    let e = share_errors(throughput, weights);
    let max = e.iter().copied().fold(0.0, f64::max);
    let mean = if e.is_empty() {
        0.0
    } else {
        e.iter().sum::<f64>() / e.len() as f64
    };
    (max, mean)
}

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank method; sorts a copy.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// The fairness figures `weir sim` and `weir run` both report, from per-tenant throughput,
/// weights, and (for tenants with a reservation) the per-second counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Fairness {
    pub jain: Option<f64>,
    pub min_max_ratio: Option<f64>,
    pub max_share_error: f64,
    pub mean_share_error: f64,
    /// Share of (tenant, second) windows in which a tenant with a reservation got at least
    /// 99 % of it; `None` without reservations.
    pub reservation_conformance: Option<f64>,
    pub aggregate: f64,
}

impl Fairness {
    /// `tenants`: (throughput, weight, reservation, per-second counts).
    pub fn of<'a>(tenants: impl IntoIterator<Item = (f64, f64, f64, &'a [f64])>) -> Self {
        let (mut x, mut w) = (Vec::new(), Vec::new());
        let (mut windows, mut met) = (0u64, 0u64);
        for (iops, weight, reservation, per_second) in tenants {
            x.push(iops);
            w.push(weight);
            if reservation > 0.0 {
                for n in per_second {
                    windows += 1;
                    if *n >= 0.99 * reservation {
                        met += 1;
                    }
                }
            }
        }
        let normalised: Vec<f64> = x.iter().zip(&w).map(|(i, w)| i / w).collect();
        let (max_share_error, mean_share_error) = share_error_max_mean(&x, &w);
        Fairness {
            jain: jain(&normalised),
            min_max_ratio: min_max_ratio(&normalised),
            max_share_error,
            mean_share_error,
            reservation_conformance: (windows > 0).then(|| met as f64 / windows as f64),
            aggregate: x.iter().sum(),
        }
    }
}

/// One tenant's seconds, for [`CostShares`].
#[derive(Debug, Clone, Copy)]
pub struct TenantSeconds<'a> {
    /// Tenants compete only within a group (a LUN).
    pub group: usize,
    pub weight: f64,
    /// A tenant under an IOPS or bandwidth limit is held back by design: it is judged as
    /// demand-limited, never as a contender.
    pub limited: bool,
    /// Cost completed in each second.
    pub cost: &'a [f64],
    /// Whether it had requests waiting in the broker in each second.
    pub backlogged: &'a [bool],
}

/// Fairness in the scheduler's own units, over the time the tenants compete.
///
/// In each second and group, the tenants with requests waiting in the broker are the
/// contenders `B`; the others got what they asked for (max-min fairness given their demand:
/// a rate-capped victim is never "behind its weight"). The capacity the contenders shared is
/// the group's completed cost less the others', `R = Σ_g c_i − Σ_{g∖B} c_i`, and a contender's
/// due is `R · w_i / Σ_B w`. Summed over the seconds with at least two contenders, each
/// contender gets `x_i = Σ c_i / Σ due_i`; Jain's index is over the `x_i`, the share error of a
/// tenant `|Σ c_i − Σ due_i| / Σ due_i`.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct CostShares {
    pub jain: Option<f64>,
    pub max_share_error: Option<f64>,
    pub mean_share_error: Option<f64>,
    /// Seconds (of any group) with at least two contenders.
    pub contended_seconds: usize,
    /// Per tenant, in order: `x_i = Σ c_i / Σ due_i` (`None` if it never contended).
    pub got_over_due: Vec<Option<f64>>,
}

impl CostShares {
    pub fn of(tenants: &[TenantSeconds]) -> Self {
        let n = tenants.len();
        let (mut got, mut due) = (vec![0.0; n], vec![0.0; n]);
        let seconds = tenants.iter().map(|t| t.cost.len()).max().unwrap_or(0);
        let mut groups: Vec<usize> = tenants.iter().map(|t| t.group).collect();
        groups.sort_unstable();
        groups.dedup();
        let mut contended = 0;
        for g in groups {
            let members: Vec<usize> = (0..n).filter(|&i| tenants[i].group == g).collect();
            for sec in 0..seconds {
                let cost = |i: usize| tenants[i].cost.get(sec).copied().unwrap_or(0.0);
                let contender = |i: usize| {
                    !tenants[i].limited && tenants[i].backlogged.get(sec).copied().unwrap_or(false)
                };
                let b: Vec<usize> = members.iter().copied().filter(|&i| contender(i)).collect();
                if b.len() < 2 {
                    continue;
                }
                contended += 1;
                let shared: f64 = b.iter().map(|&i| cost(i)).sum();
                let weights: f64 = b.iter().map(|&i| tenants[i].weight).sum();
                for &i in &b {
                    got[i] += cost(i);
                    due[i] += shared * tenants[i].weight / weights;
                }
            }
        }
        let judged: Vec<usize> = (0..n).filter(|&i| due[i] > 0.0).collect();
        let x: Vec<f64> = judged.iter().map(|&i| got[i] / due[i]).collect();
        let errors: Vec<f64> = x.iter().map(|x| (x - 1.0).abs()).collect();
        CostShares {
            jain: jain(&x),
            max_share_error: errors.iter().copied().reduce(f64::max),
            mean_share_error: (!errors.is_empty())
                .then(|| errors.iter().sum::<f64>() / errors.len() as f64),
            contended_seconds: contended,
            got_over_due: (0..n)
                .map(|i| (due[i] > 0.0).then(|| got[i] / due[i]))
                .collect(),
        }
    }
}

/// One row of the policies × metrics table that `weir sim` and `weir run` print.
#[derive(Debug, Clone, Default)]
pub struct PolicyRow {
    pub name: String,
    pub aggregate_iops: f64,
    /// [`CostShares`]: in cost units, over the contended seconds.
    pub cost: CostShares,
    /// The IOPS-based figures over the whole run (kept as labelled extras).
    pub jain: Option<f64>,
    pub min_max_ratio: Option<f64>,
    pub max_share_error: f64,
    pub mean_share_error: f64,
    pub reservation_conformance: Option<f64>,
    pub victim_p99_ratio: Option<f64>,
    pub victim_p999_ratio: Option<f64>,
    pub work_conservation: Option<f64>,
    /// QUEUE FULL/BUSY answers (the simulation counts them); the column shows when any row has it.
    pub congestion: Option<u64>,
}

/// The policies × metrics table, header included.
pub fn policy_table(rows: &[PolicyRow]) -> String {
    use std::fmt::Write as _;
    let opt = |v: Option<f64>, pct: bool| match v {
        Some(x) if pct => format!("{:.1}%", x * 100.0),
        Some(x) => format!("{x:.3}"),
        None => "-".to_string(),
    };
    let cong = rows.iter().any(|r| r.congestion.is_some());
    let mut s = String::new();
    let _ = write!(
        s,
        "{:<20} {:>9} {:>7} {:>8} {:>8} {:>6} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
        "policy",
        "IOPS",
        "Jain",
        "max err",
        "mean err",
        "cont.s",
        "IOPS-Jain",
        "IOPS-err",
        "min/max",
        "resv",
        "v.p99",
        "v.p999",
        "work"
    );
    let _ = writeln!(
        s,
        "{}",
        if cong {
            format!(" {:>6}", "cong")
        } else {
            String::new()
        }
    );
    for r in rows {
        let _ = write!(
            s,
            "{:<20} {:>9.0} {:>7} {:>8} {:>8} {:>6} {:>9} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7}",
            r.name,
            r.aggregate_iops,
            opt(r.cost.jain, false),
            opt(r.cost.max_share_error, true),
            opt(r.cost.mean_share_error, true),
            r.cost.contended_seconds,
            opt(r.jain, false),
            opt(Some(r.max_share_error), true),
            opt(r.min_max_ratio, false),
            opt(r.reservation_conformance, true),
            opt(r.victim_p99_ratio, false),
            opt(r.victim_p999_ratio, false),
            opt(r.work_conservation, false),
        );
        let _ = writeln!(
            s,
            "{}",
            match (cong, r.congestion) {
                (true, Some(c)) => format!(" {c:>6}"),
                (true, None) => format!(" {:>6}", "-"),
                _ => String::new(),
            }
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jain_is_one_when_equal_and_one_over_n_when_one_takes_all() {
        assert_eq!(jain(&[3.0, 3.0, 3.0]), Some(1.0));
        assert!((jain(&[1.0, 0.0, 0.0, 0.0]).unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(jain(&[]), None);
    }

    #[test]
    fn share_error_against_weights() {
        let (max, mean) = share_error_max_mean(&[100.0, 200.0], &[1.0, 2.0]);
        assert!(max < 1e-12 && mean < 1e-12);
        let e = share_errors(&[150.0, 150.0], &[1.0, 2.0]);
        assert!((e[0] - 0.5).abs() < 1e-12 && (e[1] - 0.25).abs() < 1e-12);
    }

    fn seconds<'a>(
        group: usize,
        weight: f64,
        cost: &'a [f64],
        backlogged: &'a [bool],
    ) -> TenantSeconds<'a> {
        TenantSeconds {
            group,
            weight,
            limited: false,
            cost,
            backlogged,
        }
    }

    #[test]
    fn cost_shares_judge_only_contended_seconds_and_only_contenders() {
        // 1:3 weights served 1:3 while both wait; in second 2 the first is idle (not waiting)
        // and the second takes everything: no contest, not counted.
        let (a, b) = ([100.0, 100.0, 0.0], [300.0, 300.0, 400.0]);
        let t = [true, true, false];
        let all = [true; 3];
        let r = CostShares::of(&[seconds(0, 1.0, &a, &t), seconds(0, 3.0, &b, &all)]);
        assert_eq!(r.contended_seconds, 2);
        assert!((r.jain.unwrap() - 1.0).abs() < 1e-12, "{r:?}");
        assert!(r.max_share_error.unwrap() < 1e-12);
        // A rate-capped third tenant that never waits got what it asked: the other two share
        // the rest by weight, and it is not judged.
        let capped = [50.0, 50.0, 50.0];
        let never = [false; 3];
        let r = CostShares::of(&[
            seconds(0, 1.0, &a, &t),
            seconds(0, 3.0, &b, &all),
            seconds(0, 8.0, &capped, &never),
        ]);
        assert!(r.max_share_error.unwrap() < 1e-12, "{r:?}");
        // 1:1 served 1:3: both 50 % off.
        let r = CostShares::of(&[seconds(0, 1.0, &a, &t), seconds(0, 1.0, &b, &all)]);
        assert!((r.max_share_error.unwrap() - 0.5).abs() < 1e-9, "{r:?}");
        // Different groups never compete; a group with one contender has no contested second.
        let r = CostShares::of(&[seconds(0, 1.0, &a, &all), seconds(1, 1.0, &b, &all)]);
        assert_eq!((r.contended_seconds, r.jain), (0, None));
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(min_max_ratio(&[1.0, 2.0, 4.0]), Some(0.25));
    }
}
