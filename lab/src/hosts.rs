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

/// Each host's throughput and its share of the cost the hosts completed over the seconds in
/// which at least two of them had requests waiting (`CostShares` with a host as the
/// contender: its tenants' cost summed, backlogged when any of them was).
pub fn judge(plans: &[BrokerPlan], tenants: &[TenantResult], warmup_s: usize) -> HostShares {
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
}
