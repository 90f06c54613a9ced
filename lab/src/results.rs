//! `results.json`: what a `weir run` measured, in a documented, versioned schema
//! (`docs/scenarios.md`), and the fairness metrics computed from it.

use crate::trust::Trust;
use serde::{Deserialize, Serialize};
use weir_sched::metrics;

pub const SCHEMA: &str = "weir-run-results/1";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Results {
    pub schema: String,
    pub scenario: String,
    pub purpose: Option<String>,
    pub started_unix_s: u64,
    pub wall_s: f64,
    pub host: HostInfo,
    pub policies: Vec<PolicyResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostInfo {
    pub hardware_virtualization: bool,
    pub kvm: String,
    /// The engine each guest ran on, as `name: engine (accelerator)`.
    pub engines: Vec<String>,
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PolicyResult {
    pub name: String,
    /// 0 .. repeat - 1.
    pub repeat: u32,
    pub wall_s: f64,
    pub tenants: Vec<TenantResult>,
    pub metrics: Metrics,
    /// Guests that did not deliver results, and why.
    pub failures: Vec<GuestFailure>,
    /// The victim alone under this policy, when the scenario names one.
    pub victim_solo: Option<TenantResult>,
    /// Whether the host let the broker keep time and the guests run (`crate::trust`); the
    /// victim-alone run's verdict beside it.
    #[serde(default)]
    pub trust: Trust,
    #[serde(default)]
    pub victim_solo_trust: Option<Trust>,
    /// With `[[host]]` entries: each host (a broker of its own) and its share.
    #[serde(default)]
    pub hosts: Vec<HostResult>,
}

/// One host of several sharing the scenario's LUNs (`[[host]]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostResult {
    pub name: String,
    /// Its share (`host_share` in its broker).
    pub share: f64,
    pub guests: Vec<String>,
    /// Its guests' IOPS, from their own reports.
    pub iops: f64,
    /// Cost it completed over cost its share was due, over the seconds in which at least two
    /// hosts had requests waiting (1 = exactly its share); `null` when it never contended.
    pub cost_got_over_due: Option<f64>,
    /// Seconds in which it waited but was held back by its own path (its device latency
    /// ≥ `HELD_LATENCY` × the other waiting hosts'): judged then as demand-limited, not as a
    /// contender (`crate::hosts::judge`).
    #[serde(default)]
    pub held_by_path_s: usize,
    /// Its guests' mean device latency over the seconds it had requests waiting, µs (what the
    /// held-by-path judgement compares).
    #[serde(default)]
    pub device_latency_us: Option<f64>,
    /// Extra, IOPS over the whole run: its fraction of the hosts' IOPS over its fraction of
    /// the shares, less 1.
    pub iops_share_error: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestFailure {
    pub guest: String,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Latency {
    /// `None` (`null` in results.json, "n/a" in tables) when the guest reported no such
    /// percentile: a missing figure must never read as the best possible one (0 µs).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantResult {
    pub name: String,
    pub engine: String,
    pub lun: String,
    /// The `[[host]]` whose broker served it (with hosts declared).
    #[serde(default)]
    pub host: Option<String>,
    pub weight: f64,
    pub reservation_iops: f64,
    pub limit_iops: f64,
    /// From the guest's own report (fio JSON or the probe's): reads + writes per second.
    pub iops: f64,
    pub mbps: f64,
    /// Completion latency, µs.
    pub lat_us: Latency,
    pub errors: u64,
    pub ok: bool,
    /// `(percentile, µs)` points of the latency distribution, ascending.
    pub cdf: Vec<(f64, f64)>,
    /// IOPS per second seen by the broker (telemetry), from the guest's first I/O: second
    /// `per_second_start_s` of the run's clock.
    pub per_second: Vec<f64>,
    /// Where `per_second` starts on the run's clock (seconds from the policy run's first
    /// telemetry sample).
    #[serde(default)]
    pub per_second_start_s: usize,
    /// On the run's clock (from its first telemetry second): the cost the broker completed for
    /// this tenant in each second (the scheduler's units), and whether it had requests waiting
    /// in the broker at that second.
    #[serde(default)]
    pub cost_per_second: Vec<f64>,
    #[serde(default)]
    pub backlogged: Vec<bool>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Metrics {
    /// Fairness in cost units over the contended seconds (`weir_sched::metrics::CostShares`):
    /// the figures to judge the scheduler by.
    #[serde(default)]
    pub cost_jain: Option<f64>,
    #[serde(default)]
    pub cost_max_share_error: Option<f64>,
    #[serde(default)]
    pub cost_mean_share_error: Option<f64>,
    #[serde(default)]
    pub contended_seconds: usize,
    /// The IOPS-based figures over the whole run, from the guests' own reports (extras: idle
    /// seconds and request sizes distort them).
    pub jain: Option<f64>,
    pub min_max_ratio: Option<f64>,
    pub max_share_error: f64,
    pub mean_share_error: f64,
    pub reservation_conformance: Option<f64>,
    pub victim_p99_ratio: Option<f64>,
    pub victim_p999_ratio: Option<f64>,
    pub work_conservation: Option<f64>,
    pub aggregate_iops: f64,
    /// With `[[host]]` entries: fairness between the hosts by their shares, in cost units
    /// over the seconds in which at least two hosts had requests waiting.
    #[serde(default)]
    pub host_cost_jain: Option<f64>,
    #[serde(default)]
    pub host_cost_max_share_error: Option<f64>,
    #[serde(default)]
    pub host_contended_seconds: usize,
}

/// Metrics over the tenants that delivered results (weights normalise IOPS, as in `weir sim`).
pub fn compute_metrics(tenants: &[TenantResult], warmup_s: usize) -> Metrics {
    let f = metrics::Fairness::of(tenants.iter().filter(|t| t.ok).map(|t| {
        (
            t.iops,
            t.weight,
            t.reservation_iops,
            t.per_second.get(warmup_s..).unwrap_or(&[]),
        )
    }));
    let ok: Vec<&TenantResult> = tenants.iter().filter(|t| t.ok).collect();
    // Tenants compete within one broker's LUN: with several hosts, each host's share of a LUN
    // is judged between the hosts (`crate::hosts::judge`).
    fn group_of(t: &TenantResult) -> (&str, Option<&str>) {
        (t.lun.as_str(), t.host.as_deref())
    }
    let mut groups: Vec<(&str, Option<&str>)> = ok.iter().map(|t| group_of(t)).collect();
    groups.sort_unstable();
    groups.dedup();
    let seconds: Vec<metrics::TenantSeconds> = ok
        .iter()
        .map(|t| metrics::TenantSeconds {
            group: groups.iter().position(|g| *g == group_of(t)).unwrap_or(0),
            weight: t.weight,
            limited: t.limit_iops > 0.0,
            cost: t.cost_per_second.get(warmup_s..).unwrap_or(&[]),
            backlogged: t.backlogged.get(warmup_s..).unwrap_or(&[]),
        })
        .collect();
    let c = metrics::CostShares::of(&seconds);
    Metrics {
        cost_jain: c.jain,
        cost_max_share_error: c.max_share_error,
        cost_mean_share_error: c.mean_share_error,
        contended_seconds: c.contended_seconds,
        jain: f.jain,
        min_max_ratio: f.min_max_ratio,
        max_share_error: f.max_share_error,
        mean_share_error: f.mean_share_error,
        reservation_conformance: f.reservation_conformance,
        victim_p99_ratio: None,
        victim_p999_ratio: None,
        work_conservation: None,
        aggregate_iops: f.aggregate,
        host_cost_jain: None,
        host_cost_max_share_error: None,
        host_contended_seconds: 0,
    }
}

/// Fills the cross-policy metrics: victim ratios (with its solo run) and work conservation
/// against `fifo` of the same repeat.
pub fn finish(policies: &mut [PolicyResult], victim: Option<&str>) {
    // The victim runs alone once per policy (the first repeat); later repeats compare with it.
    let solos: Vec<(String, TenantResult)> = policies
        .iter()
        .filter_map(|p| Some((p.name.clone(), p.victim_solo.clone()?)))
        .collect();
    for p in policies.iter_mut() {
        let solo = p.victim_solo.clone().or_else(|| {
            solos
                .iter()
                .find(|(n, _)| *n == p.name)
                .map(|(_, s)| s.clone())
        });
        if let (Some(v), Some(solo)) = (victim, &solo) {
            if let Some(t) = p.tenants.iter().find(|t| t.name == v && t.ok) {
                let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
                    (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                    _ => None,
                };
                p.metrics.victim_p99_ratio = ratio(t.lat_us.p99, solo.lat_us.p99);
                p.metrics.victim_p999_ratio = ratio(t.lat_us.p999, solo.lat_us.p999);
            }
        }
    }
    let fifo: Vec<(u32, f64)> = policies
        .iter()
        .filter(|p| p.name == "fifo")
        .map(|p| (p.repeat, p.metrics.aggregate_iops))
        .collect();
    for p in policies.iter_mut() {
        if let Some((_, f)) = fifo.iter().find(|(r, _)| *r == p.repeat) {
            p.metrics.work_conservation = (*f > 0.0).then(|| p.metrics.aggregate_iops / f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str, weight: f64, iops: f64, p99: f64) -> TenantResult {
        TenantResult {
            name: name.into(),
            engine: "weir-probe".into(),
            lun: "l".into(),
            host: None,
            weight,
            reservation_iops: 0.0,
            limit_iops: 0.0,
            iops,
            mbps: 0.0,
            lat_us: Latency {
                p50: Some(p99 / 2.0),
                p99: Some(p99),
                p999: Some(p99 * 2.0),
            },
            errors: 0,
            ok: true,
            cdf: vec![],
            per_second: vec![],
            per_second_start_s: 0,
            cost_per_second: vec![],
            backlogged: vec![],
        }
    }

    #[test]
    fn metrics_and_cross_policy_ratios() {
        let run = |name: &str, repeat: u32, a: f64, b: f64, solo: bool| {
            let tenants = vec![tenant("v", 1.0, a, 100.0 * b), tenant("n", 2.0, b, 10.0)];
            PolicyResult {
                name: name.into(),
                repeat,
                wall_s: 1.0,
                metrics: compute_metrics(&tenants, 0),
                tenants,
                failures: vec![],
                victim_solo: solo.then(|| tenant("v", 1.0, 100.0, 100.0)),
                trust: Trust::default(),
                victim_solo_trust: None,
                hosts: vec![],
            }
        };
        let mut p = vec![
            run("fifo", 0, 100.0, 200.0, true),
            run("adaptive", 0, 100.0, 300.0, true),
            run("fifo", 1, 100.0, 100.0, false),
        ];
        finish(&mut p, Some("v"));
        // Weighted 1:2 and served 100:200: exact shares, Jain 1.
        assert!((p[0].metrics.jain.unwrap() - 1.0).abs() < 1e-12);
        assert!(p[0].metrics.max_share_error < 1e-12);
        assert_eq!(p[1].metrics.work_conservation, Some(400.0 / 300.0));
        // Victim p99 (100·b) over its solo p99 (100); the second repeat uses the first's solo.
        assert_eq!(p[0].metrics.victim_p99_ratio, Some(200.0));
        assert_eq!(p[2].metrics.victim_p99_ratio, Some(100.0));
        assert_eq!(p[2].metrics.work_conservation, Some(1.0));
    }
}
