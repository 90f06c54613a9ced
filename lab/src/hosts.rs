//! Several hosts in one `weir run` (`[[host]]`): each host is a broker process of its own with
//! its guests, and the hosts share the scenario's real LUNs with no coordinator (PARDA, Gulati
//! et al., FAST '09; docs/scheduling.md). This module plans the brokers, lays their telemetry
//! on one clock, and judges the hosts' shares.

use std::path::{Path, PathBuf};

use weir_sched::metrics::{CostShares, TenantSeconds};
use weir_sched::sim::lane_name;

use crate::results::{HostResult, TenantResult};
use crate::scenario::RunScenario;

/// One broker of a policy run: the host it stands for (none: the only broker).
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerPlan {
    pub host: Option<String>,
    /// The host's share (`host_share` in its broker's configuration).
    pub share: f64,
    /// Where its configuration, log and control socket live.
    pub dir: PathBuf,
    /// The guests (by name) whose disks it serves.
    pub guests: Vec<String>,
    /// The network namespace it runs in (`[[host]] netns`), if any.
    pub netns: Option<String>,
}

impl BrokerPlan {
    pub fn control(&self) -> PathBuf {
        self.dir.join("broker.ctl")
    }
}

/// The brokers for the guests named in `guests` (those that run): one under `dir` without
/// hosts; with hosts, one per host with a guest, under `dir/host-<name>`. A host's share
/// defaults to its guests' weights (the same default as `weir sim`).
pub fn plan(s: &RunScenario, dir: &Path, guests: &[&str]) -> Vec<BrokerPlan> {
    if s.hosts.is_empty() {
        return vec![BrokerPlan {
            host: None,
            share: 1.0,
            dir: dir.to_path_buf(),
            guests: guests.iter().map(|g| g.to_string()).collect(),
            netns: None,
        }];
    }
    s.hosts
        .iter()
        .filter_map(|h| {
            let mine: Vec<_> = s
                .guests
                .iter()
                .filter(|g| g.host.as_ref() == Some(&h.name) && guests.contains(&g.name.as_str()))
                .collect();
            if mine.is_empty() {
                return None;
            }
            let weights: f64 = mine
                .iter()
                .flat_map(|g| g.disks.iter().map(|d| d.policy.weight))
                .sum();
            Some(BrokerPlan {
                host: Some(h.name.clone()),
                share: h.share.unwrap_or(weights),
                dir: dir.join(format!("host-{}", h.name)),
                guests: mine.iter().map(|g| g.name.clone()).collect(),
                netns: h.netns.clone(),
            })
        })
        .collect()
}

/// One broker's telemetry: its samples and when it started, seconds after the policy run.
pub struct HostTelemetry {
    pub host: Option<String>,
    pub started_s: f64,
    pub samples: Vec<serde_json::Value>,
}

/// Every broker's telemetry as one series on the first broker's clock: sample `k` holds each
/// host's sample of the same wall-clock second, its LUNs and paths named `lun@host` (as
/// `weir sim` names a host's lane), the host-pressure figures the worst of the brokers'. One
/// broker: its samples as they are.
pub fn merge(mut brokers: Vec<HostTelemetry>) -> Vec<serde_json::Value> {
    if brokers.len() == 1 && brokers[0].host.is_none() {
        return brokers.pop().map(|b| b.samples).unwrap_or_default();
    }
    let Some(first) = brokers.first() else {
        return Vec::new();
    };
    let t0 = first.started_s;
    let shifts: Vec<i64> = brokers
        .iter()
        .map(|b| (b.started_s - t0).round() as i64)
        .collect();
    let len = brokers
        .iter()
        .zip(&shifts)
        .map(|(b, s)| b.samples.len() as i64 + s)
        .max()
        .unwrap_or(0)
        .max(0) as usize;
    (0..len)
        .map(|k| {
            let mut merged = serde_json::json!({
                "t_s": k as f64 + 1.0, "interval_s": 1.0,
                "disks": [], "luns": [], "ports": [], "paths": [], "pools": [], "host": null,
            });
            for (b, shift) in brokers.iter().zip(&shifts) {
                let Some(sample) = usize::try_from(k as i64 - shift)
                    .ok()
                    .and_then(|j| b.samples.get(j))
                else {
                    continue;
                };
                if let Some(t) = sample["t_s"].as_f64().filter(|_| *shift == 0) {
                    merged["t_s"] = (t + b.started_s - t0).into();
                }
                add_host_sample(&mut merged, sample, b.host.as_deref());
            }
            merged
        })
        .collect()
}

fn add_host_sample(merged: &mut serde_json::Value, sample: &serde_json::Value, host: Option<&str>) {
    let rename = |v: &mut serde_json::Value, key: &str| {
        if let (Some(h), Some(name)) = (host, v[key].as_str().map(str::to_string)) {
            v[key] = lane_name(&name, h).into();
        }
    };
    for (array, key) in [
        ("disks", "lun"),
        ("luns", "lun"),
        ("paths", "lun"),
        ("ports", "port"),
        ("pools", "pool"),
    ] {
        for mut e in sample[array].as_array().cloned().unwrap_or_default() {
            rename(&mut e, key);
            if let Some(a) = merged[array].as_array_mut() {
                a.push(e);
            }
        }
    }
    let Some(h) = sample.get("host").filter(|h| h.is_object()) else {
        return;
    };
    if merged["host"].is_null() {
        merged["host"] = h.clone();
        return;
    }
    // The machine's pressure is one; each broker's lateness its own: keep the worst.
    if let Some(obj) = h.as_object() {
        for (k, v) in obj {
            if let (Some(new), Some(old)) = (v.as_f64(), merged["host"][k].as_f64()) {
                if new > old {
                    merged["host"][k] = v.clone();
                }
            }
        }
    }
}

/// The hosts of a policy run, judged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostShares {
    pub hosts: Vec<HostResult>,
    pub cost_jain: Option<f64>,
    pub cost_max_share_error: Option<f64>,
    pub contended_seconds: usize,
}

/// A host whose device latency in a second is at least this many times the median of the
/// other waiting hosts' is held back by its own path (its link's queue), not by the shared
/// target. PARDA's hosts all see the target's one latency; a host starved of CPU measured
/// 1.2× the others' (docs/network.md), a host behind a link that carries a third of its share
/// far more.
pub const HELD_LATENCY: f64 = 1.5;

/// Each host's device latency (its guests' disks, IOPS-weighted) in every telemetry second.
fn device_latency_per_second(
    telemetry: &[serde_json::Value],
    guests: &[String],
) -> Vec<Option<f64>> {
    telemetry
        .iter()
        .map(|sample| {
            let (mut w, mut sum) = (0.0, 0.0);
            for d in sample["disks"].as_array().into_iter().flatten() {
                if !d["tenant"]
                    .as_str()
                    .is_some_and(|t| guests.iter().any(|g| g == t))
                {
                    continue;
                }
                let iops = d["read_iops"].as_f64().unwrap_or(0.0)
                    + d["write_iops"].as_f64().unwrap_or(0.0);
                if let Some(l) = d["device_latency_us"].as_f64().filter(|_| iops > 0.0) {
                    w += iops;
                    sum += iops * l;
                }
            }
            (w > 0.0).then(|| sum / w)
        })
        .collect()
}

/// The mean of a host's per-second device latency over the seconds after the warm-up in which it
/// had requests waiting.
fn mean_latency(latency: &[Option<f64>], waiting: &[bool], warmup_s: usize) -> Option<f64> {
    let v: Vec<f64> = latency
        .iter()
        .zip(waiting)
        .skip(warmup_s)
        .filter(|(_, w)| **w)
        .filter_map(|(l, _)| *l)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Each host's throughput and its share of the cost the hosts completed over the seconds in
/// which at least two of them had requests waiting (`CostShares` with a host as the
/// contender: its tenants' cost summed, backlogged when any of them was).
///
/// A host held back by its own path in a second (its device latency ≥ [`HELD_LATENCY`] × the
/// other waiting hosts' median) is no contender in it: like a rate-capped tenant, it got what
/// its path let through (max-min fairness given its demand), and the others are judged on what
/// was left. Without this, a host behind a slow link read as shorted by the target (cost
/// got/due 0.32) and the others as favoured (1.37) when they split exactly what it could not
/// take.
pub fn judge(
    plans: &[BrokerPlan],
    tenants: &[TenantResult],
    telemetry: &[serde_json::Value],
    warmup_s: usize,
) -> HostShares {
    let hosts: Vec<&BrokerPlan> = plans.iter().filter(|p| p.host.is_some()).collect();
    if hosts.is_empty() {
        return HostShares::default();
    }
    let mine = |p: &BrokerPlan| -> Vec<&TenantResult> {
        tenants
            .iter()
            .filter(|t| t.ok && p.guests.contains(&t.name))
            .collect()
    };
    let series: Vec<(Vec<f64>, Vec<bool>)> = hosts
        .iter()
        .map(|p| {
            let ts = mine(p);
            let n = ts
                .iter()
                .map(|t| t.cost_per_second.len())
                .max()
                .unwrap_or(0);
            let cost = (0..n)
                .map(|k| ts.iter().filter_map(|t| t.cost_per_second.get(k)).sum())
                .collect();
            let backlogged = (0..n)
                .map(|k| ts.iter().any(|t| t.backlogged.get(k) == Some(&true)))
                .collect();
            (cost, backlogged)
        })
        .collect();
    let latency: Vec<Vec<Option<f64>>> = hosts
        .iter()
        .map(|p| device_latency_per_second(telemetry, &p.guests))
        .collect();
    // Over the seconds each host waited, held or not: what `held s` compares, shown beside it.
    let mean_latency: Vec<Option<f64>> = latency
        .iter()
        .zip(&series)
        .map(|(l, (_, waiting))| mean_latency(l, waiting, warmup_s))
        .collect();
    let mut held_s = vec![0usize; hosts.len()];
    let series: Vec<(Vec<f64>, Vec<bool>)> = series
        .iter()
        .enumerate()
        .map(|(h, (cost, backlogged))| {
            let waiting = |i: usize, k: usize| series[i].1.get(k) == Some(&true);
            let backlogged = backlogged
                .iter()
                .enumerate()
                .map(|(k, &b)| {
                    let mine = latency[h].get(k).copied().flatten();
                    let mut others: Vec<f64> = (0..hosts.len())
                        .filter(|&i| i != h && waiting(i, k))
                        .filter_map(|i| latency[i].get(k).copied().flatten())
                        .collect();
                    others.sort_by(f64::total_cmp);
                    let held = b
                        && k >= warmup_s
                        && match (mine, others.get(others.len() / 2)) {
                            (Some(l), Some(m)) => l >= HELD_LATENCY * m,
                            _ => false,
                        };
                    if held {
                        held_s[h] += 1;
                    }
                    b && !held
                })
                .collect();
            (cost.clone(), backlogged)
        })
        .collect();
    let seconds: Vec<TenantSeconds> = hosts
        .iter()
        .zip(&series)
        .map(|(p, (cost, backlogged))| TenantSeconds {
            group: 0,
            weight: p.share,
            limited: false,
            cost: cost.get(warmup_s..).unwrap_or(&[]),
            backlogged: backlogged.get(warmup_s..).unwrap_or(&[]),
        })
        .collect();
    let c = CostShares::of(&seconds);
    let iops: Vec<f64> = hosts
        .iter()
        .map(|p| mine(p).iter().map(|t| t.iops).sum())
        .collect();
    let (iops_sum, share_sum) = (
        iops.iter().sum::<f64>(),
        hosts.iter().map(|p| p.share).sum::<f64>(),
    );
    HostShares {
        hosts: hosts
            .iter()
            .zip(&iops)
            .enumerate()
            .map(|(i, (p, iops))| HostResult {
                name: p.host.clone().unwrap_or_default(),
                share: p.share,
                guests: p.guests.clone(),
                iops: *iops,
                cost_got_over_due: c.got_over_due.get(i).copied().flatten(),
                held_by_path_s: held_s[i],
                device_latency_us: mean_latency[i],
                iops_share_error: (iops_sum > 0.0 && share_sum > 0.0)
                    .then(|| (iops / iops_sum) / (p.share / share_sum) - 1.0),
            })
            .collect(),
        cost_jain: c.jain,
        cost_max_share_error: c.max_share_error,
        contended_seconds: c.contended_seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn telemetry_of_brokers_started_apart_lands_on_one_clock() {
        let sample = |t: f64, tenant: &str, lag: f64| {
            json!({"t_s": t, "interval_s": 1.0,
                   "disks": [{"tenant": tenant, "lun": "shared", "cost_per_s": 1.0}],
                   "luns": [{"lun": "shared", "window": 4}], "ports": [], "paths": [],
                   "host": {"clock_lag_max_ms": lag, "cpu_some_pct": 1.0}})
        };
        let merged = merge(vec![
            HostTelemetry {
                host: Some("h1".into()),
                started_s: 0.1,
                samples: (1..=4).map(|t| sample(t as f64, "a", 1.0)).collect(),
            },
            // Started 2 s later: its first second is the first broker's third.
            HostTelemetry {
                host: Some("h2".into()),
                started_s: 2.0,
                samples: (1..=3).map(|t| sample(t as f64, "b", 9.0)).collect(),
            },
        ]);
        assert_eq!(merged.len(), 5);
        let tenants = |k: usize| -> Vec<String> {
            merged[k]["disks"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["tenant"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(tenants(1), ["a"]);
        assert_eq!(tenants(2), ["a", "b"]);
        assert_eq!(tenants(4), ["b"]);
        assert_eq!(merged[2]["luns"][1]["lun"], "shared@h2");
        assert_eq!(merged[2]["disks"][0]["lun"], "shared@h1");
        assert_eq!(merged[2]["host"]["clock_lag_max_ms"], 9.0);
        assert_eq!(merged[0]["host"]["clock_lag_max_ms"], 1.0);
    }

    fn guest(name: &str, cost: f64, seconds: usize) -> TenantResult {
        TenantResult {
            name: name.into(),
            engine: "weir-probe".into(),
            lun: "shared".into(),
            host: None,
            weight: 1.0,
            reservation_iops: 0.0,
            limit_iops: 0.0,
            iops: cost,
            mbps: 0.0,
            lat_us: Default::default(),
            errors: 0,
            ok: true,
            cdf: vec![],
            per_second: vec![cost; seconds],
            per_second_start_s: 0,
            cost_per_second: vec![cost; seconds],
            backlogged: vec![true; seconds],
        }
    }

    /// Three hosts with shares 1:2:4 on one target; host 3's own link passes 460 reads/s, a
    /// third of its share, and the others split the rest 1:2 (tests/multi_host.rs measured
    /// that on real links). Host 3's latency is its link's queue: it is judged as held by its
    /// path, and hosts 1 and 2 as exact. The same figures with host 3's latency like the
    /// others' mean the target shorted it.
    #[test]
    fn a_host_held_by_its_own_path_is_not_judged_as_shorted() {
        let plans: Vec<BrokerPlan> = [("h1", 1.0, "a"), ("h2", 2.0, "b"), ("h3", 4.0, "c")]
            .iter()
            .map(|(h, share, g)| BrokerPlan {
                host: Some(h.to_string()),
                share: *share,
                dir: PathBuf::new(),
                guests: vec![g.to_string()],
                netns: None,
            })
            .collect();
        let tenants = [
            guest("a", 700.0, 10),
            guest("b", 1400.0, 10),
            guest("c", 460.0, 10),
        ];
        let telemetry = |c_latency_us: f64| -> Vec<serde_json::Value> {
            (0..10)
                .map(|_| {
                    json!({"disks": [
                        {"tenant": "a", "read_iops": 700.0, "device_latency_us": 5300.0},
                        {"tenant": "b", "read_iops": 1400.0, "device_latency_us": 5200.0},
                        {"tenant": "c", "read_iops": 460.0, "device_latency_us": c_latency_us},
                    ]})
                })
                .collect()
        };
        let held = judge(&plans, &tenants, &telemetry(21_000.0), 2);
        let got: Vec<Option<f64>> = held.hosts.iter().map(|h| h.cost_got_over_due).collect();
        assert_eq!(held.hosts[2].held_by_path_s, 8, "{held:?}");
        assert_eq!(held.hosts[0].held_by_path_s, 0);
        assert!(got[2].is_none(), "{got:?}");
        assert!((got[0].unwrap() - 1.0).abs() < 1e-9 && (got[1].unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(held.cost_jain, Some(1.0));
        assert_eq!(held.hosts[2].device_latency_us, Some(21_000.0));
        let shorted = judge(&plans, &tenants, &telemetry(5400.0), 2);
        assert_eq!(shorted.hosts[2].held_by_path_s, 0);
        let x3 = shorted.hosts[2].cost_got_over_due.unwrap();
        assert!(x3 < 0.4, "host 3 got {x3} of its due");
        assert!(shorted.cost_jain.unwrap() < 0.8);
    }
}
