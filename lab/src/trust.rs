//! Can a run's figures be trusted? The broker keeps time on the host's real clock (the
//! emulated array serves on it, every latency is measured on it) and the guests run on the
//! host's CPUs, so a starved host distorts a run however fair the scheduler is. From the
//! broker's per-second `host` telemetry and the guests' idle gaps, each second is judged
//! against the thresholds below, and a run with too many distorted seconds is flagged, with
//! the reasons, in `results.json`, the terminal table and the report.

use serde::{Deserialize, Serialize};

/// The broker's clock thread woke this late past a deadline (normally tens of µs).
pub const CLOCK_LAG_MS: f64 = 10.0;
/// The broker's threads waited this long for a CPU per time they were run (a host with a
/// free core: 10–17 µs here; 8 busy loops beside a run on 2 cores: 135–534 µs).
pub const BROKER_WAKE_DELAY_US: f64 = 100.0;
/// A guest had nothing at the broker this long between two of its requests: it was not run
/// (a closed-loop or rate-limited workload asks far more often).
pub const GUEST_GAP_MS: f64 = 500.0;
/// Host CPU pressure (PSI `some`): named as context for a flagged second, not a flag by
/// itself — the guests of a run keep the CPUs busy by design.
pub const CPU_SOME_PCT: f64 = 50.0;
/// A run is flagged when at least this share of its seconds (and at least three) are
/// distorted: a quiet run here sees its clock 10–17 ms late in a second or two.
pub const DISTORTED_SHARE: f64 = 0.1;

/// One distorted second: when (seconds since the broker started) and why.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DistortedSecond {
    pub t_s: f64,
    pub reasons: Vec<String>,
}

/// The verdict on one run (one policy, one broker).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Trust {
    /// False: the run's figures are distorted by the host, see `reasons`.
    pub trusted: bool,
    /// One line per kind of distortion: how many seconds, how bad.
    pub reasons: Vec<String>,
    /// Seconds judged, and the distorted ones.
    pub seconds: usize,
    pub distorted: Vec<DistortedSecond>,
    /// Means over the run, for context: host CPU pressure (PSI some, %), the broker's wait
    /// for a CPU (ms/s), the worst clock lateness (ms), window-controller periods dropped
    /// for lateness. Null where the broker did not report them.
    pub cpu_some_pct_mean: Option<f64>,
    pub broker_cpu_wait_ms_mean: Option<f64>,
    pub clock_lag_worst_ms: Option<f64>,
    pub controller_held: u64,
}

#[derive(Default)]
struct Tally {
    seconds: usize,
    worst: f64,
}

impl Tally {
    fn add(&mut self, v: f64) {
        self.seconds += 1;
        self.worst = self.worst.max(v);
    }
}

/// Judges the telemetry samples of one run (`TelemetrySample`s as JSON).
pub fn assess(samples: &[serde_json::Value]) -> Trust {
    let mut t = Trust {
        trusted: true,
        ..Trust::default()
    };
    let (mut lag, mut wait, mut gap) = (Tally::default(), Tally::default(), Tally::default());
    let (mut some_sum, mut some_n, mut wait_sum, mut wait_n) = (0.0, 0usize, 0.0, 0usize);
    let mut gap_guests: Vec<String> = Vec::new();
    for s in samples {
        let Some(host) = s.get("host").filter(|h| !h.is_null()) else {
            continue;
        };
        t.seconds += 1;
        let mut reasons = Vec::new();
        let some = host["cpu_some_pct"].as_f64();
        if let Some(v) = some {
            some_sum += v;
            some_n += 1;
        }
        if let Some(v) = host["clock_lag_max_ms"].as_f64() {
            t.clock_lag_worst_ms = Some(t.clock_lag_worst_ms.unwrap_or(0.0).max(v));
            if v >= CLOCK_LAG_MS {
                lag.add(v);
                reasons.push(format!("broker clock {v:.0} ms late"));
            }
        }
        if let Some(v) = host["broker_cpu_wait_ms"].as_f64() {
            wait_sum += v;
            wait_n += 1;
        }
        if let Some(v) = host["broker_wake_delay_us"].as_f64() {
            if v >= BROKER_WAKE_DELAY_US {
                wait.add(v);
                reasons.push(format!("broker waited {v:.0} µs for a CPU per run"));
            }
        }
        t.controller_held += host["controller_held"].as_u64().unwrap_or(0);
        for d in s["disks"].as_array().into_iter().flatten() {
            let Some(v) = d["longest_idle_gap_ms"].as_f64() else {
                continue;
            };
            if v >= GUEST_GAP_MS {
                let tenant = d["tenant"].as_str().unwrap_or("?").to_string();
                gap.add(v);
                reasons.push(format!("{tenant} asked nothing for {v:.0} ms"));
                if !gap_guests.contains(&tenant) {
                    gap_guests.push(tenant);
                }
            }
        }
        if !reasons.is_empty() {
            if let Some(v) = some.filter(|v| *v >= CPU_SOME_PCT) {
                reasons.push(format!("host CPU pressure {v:.0} %"));
            }
            t.distorted.push(DistortedSecond {
                t_s: s["t_s"].as_f64().unwrap_or(0.0).round(),
                reasons,
            });
        }
    }
    t.cpu_some_pct_mean = (some_n > 0).then(|| some_sum / some_n as f64);
    t.broker_cpu_wait_ms_mean = (wait_n > 0).then(|| wait_sum / wait_n as f64);
    let n = t.seconds;
    if lag.seconds > 0 {
        t.reasons.push(format!(
            "the broker's clock thread ran >= {CLOCK_LAG_MS} ms late in {} of {n} s (worst {:.0} ms): \
             the emulated array's service and every latency are stretched",
            lag.seconds, lag.worst
        ));
    }
    if wait.seconds > 0 {
        t.reasons.push(format!(
            "the broker's threads waited >= {BROKER_WAKE_DELAY_US} µs for a CPU each time they \
             had work in {} of {n} s (worst {:.0} µs)",
            wait.seconds, wait.worst
        ));
    }
    if gap.seconds > 0 {
        t.reasons.push(format!(
            "guests {} stopped asking for >= {GUEST_GAP_MS} ms in {} guest-seconds (worst {:.0} ms): \
             they were not run",
            gap_guests.join(", "),
            gap.seconds,
            gap.worst
        ));
    }
    if let Some(v) = t.cpu_some_pct_mean.filter(|_| !t.reasons.is_empty()) {
        t.reasons
            .push(format!("host CPU pressure (PSI some) {v:.0} % on average"));
    }
    let limit = ((n as f64 * DISTORTED_SHARE).ceil() as usize).max(3);
    t.trusted = t.distorted.len() < limit;
    t
}

/// One line for the terminal table: empty when the run can be trusted.
pub fn summary(t: &Trust) -> Option<String> {
    (!t.trusted).then(|| {
        format!(
            "{} of {} s distorted by the host: {}",
            t.distorted.len(),
            t.seconds,
            t.reasons.join("; ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn second(t: f64, lag_ms: f64, wake_us: f64, gap_ms: Option<f64>) -> serde_json::Value {
        json!({
            "t_s": t,
            "disks": [{"tenant": "victim", "longest_idle_gap_ms": gap_ms}],
            "host": {"cpu_some_pct": 70.0, "broker_cpu_wait_ms": 80.0,
                     "broker_wake_delay_us": wake_us,
                     "clock_lag_max_ms": lag_ms, "controller_held": 1}
        })
    }

    #[test]
    fn a_quiet_run_is_trusted_and_a_starved_one_is_flagged_with_its_reasons() {
        let quiet: Vec<_> = (0..20)
            .map(|i| second(f64::from(i), 0.1, 12.0, Some(12.0)))
            .collect();
        let t = assess(&quiet);
        assert!(t.trusted, "{t:?}");
        assert_eq!(t.seconds, 20);
        assert!(t.distorted.is_empty() && t.reasons.is_empty());
        assert_eq!(summary(&t), None);

        let mut starved = quiet.clone();
        for i in [3, 7, 11] {
            starved[i] = second(i as f64, 35.0, 2400.0, Some(900.0));
        }
        let t = assess(&starved);
        assert!(!t.trusted);
        assert_eq!(t.distorted.len(), 3);
        assert_eq!(t.clock_lag_worst_ms, Some(35.0));
        assert_eq!(t.controller_held, 20);
        let all = t.reasons.join("\n");
        for needle in [
            "3 of 20 s (worst 35 ms)",
            "(worst 2400 µs)",
            "guests victim",
            "70 %",
        ] {
            assert!(all.contains(needle), "{needle:?} missing from {all}");
        }
        assert!(summary(&t).is_some_and(|s| s.starts_with("3 of 20 s distorted")));
    }

    #[test]
    fn one_distorted_second_is_named_but_does_not_flag_the_run() {
        let mut samples: Vec<_> = (0..20)
            .map(|i| second(f64::from(i), 0.1, 12.0, None))
            .collect();
        samples[5] = second(5.0, 20.0, 12.0, None);
        let t = assess(&samples);
        assert!(t.trusted);
        assert_eq!(t.distorted.len(), 1);
        assert_eq!(t.distorted[0].t_s, 5.0);
    }

    #[test]
    fn samples_without_host_figures_are_not_judged() {
        let t = assess(&[json!({"t_s": 1.0, "disks": []})]);
        assert!(t.trusted);
        assert_eq!(t.seconds, 0);
        assert_eq!(t.cpu_some_pct_mean, None);
    }
}
