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

/// One row of the policies × metrics table that `weir sim` and `weir run` print.
#[derive(Debug, Clone, Default)]
pub struct PolicyRow {
    pub name: String,
    pub aggregate_iops: f64,
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
        "{:<20} {:>9} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
        "policy",
        "IOPS",
        "Jain",
        "min/max",
        "max err",
        "mean err",
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
            "{:<20} {:>9.0} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7}",
            r.name,
            r.aggregate_iops,
            opt(r.jain, false),
            opt(r.min_max_ratio, false),
            opt(Some(r.max_share_error), true),
            opt(Some(r.mean_share_error), true),
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

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 1.0), Some(100.0));
        assert_eq!(min_max_ratio(&[1.0, 2.0, 4.0]), Some(0.25));
    }
}
