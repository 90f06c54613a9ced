//! Can a run's figures be trusted? The broker keeps time on the host's real clock (the
//! emulated array serves on it, every latency is measured on it) and the guests run on the
//! host's CPUs, so a starved host distorts a run however fair the scheduler is. From the
//! broker's per-second `host` telemetry and the guests' idle gaps, each second is judged
//! against the thresholds below, and a run with too many distorted seconds is flagged, with
//! the reasons, in `results.json`, the terminal table and the report.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::guest_cpu::GuestCpuSecond;

/// The broker's clock thread woke this late past a deadline (normally tens of µs).
pub const CLOCK_LAG_MS: f64 = 10.0;
/// The broker's threads waited this long for a CPU per time they were run (a host with a
/// free core: 10–17 µs here; 8 busy loops beside a run on 2 cores: 135–534 µs), and at least
/// this share of the fastest device latency of the second: a wait of 300 µs stretches a
/// 100 µs device's figures, not a 4 ms one's.
pub const BROKER_WAKE_DELAY_US: f64 = 100.0;
pub const BROKER_WAKE_DELAY_SHARE: f64 = 0.1;
/// The broker's threads together waited this long per second for a CPU: a third of a core
/// kept runnable and not run. Each wake-up may be late by less than the limit above (a run of
/// many short waits beside 4 ms requests) while the broker as a whole is starved: three
/// guests at QD32 on this 2-core machine, quiet: 75-93 ms/s; the same beside six busy
/// threads: 941 ms/s on average, with the clock thread 9.7 ms late at worst.
pub const BROKER_CPU_WAIT_MS_PER_S: f64 = 300.0;
/// A guest's idle gaps are judged once it has had this many requests answered: a Linux
/// guest reads its partition table at boot, then its workload starts seconds later.
pub const GUEST_STARTED_IOS: f64 = 50.0;
/// A guest had nothing at the broker this long between two of its requests: it was not run
/// (a closed-loop or rate-limited workload asks far more often).
pub const GUEST_GAP_MS: f64 = 500.0;
/// A guest's threads (vCPUs and VMM) waited this long per second for a CPU: a guest with a
/// deep queue never idles at the broker, so this is how its starvation shows.
pub const GUEST_CPU_WAIT_MS_PER_S: f64 = 100.0;
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
    /// The guests' threads' wait for a CPU, ms per second, mean over guests and seconds
    /// (`crate::guest_cpu`).
    #[serde(default)]
    pub guest_cpu_wait_ms_mean: Option<f64>,
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

/// Judges one run: its broker's telemetry samples (`TelemetrySample`s as JSON) and its
/// guests' CPU waits.
pub fn assess(samples: &[serde_json::Value], guests: &[GuestCpuSecond]) -> Trust {
    let mut t = Trust {
        trusted: true,
        ..Trust::default()
    };
    let (mut lag, mut wait, mut gap) = (Tally::default(), Tally::default(), Tally::default());
    let mut broker_starved = Tally::default();
    let (mut some_sum, mut some_n, mut wait_sum, mut wait_n) = (0.0, 0usize, 0.0, 0usize);
    let mut gap_guests: Vec<String> = Vec::new();
    let mut answered: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    // Seconds (rounded, on the run's clock) → why each is distorted, and the host's pressure.
    let mut distorted: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut pressure: BTreeMap<i64, f64> = BTreeMap::new();
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
            if v >= BROKER_CPU_WAIT_MS_PER_S {
                broker_starved.add(v);
                reasons.push(format!("broker's threads waited {v:.0} ms/s for a CPU"));
            }
        }
        let fastest_device_us = s["disks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["device_latency_us"].as_f64())
            .fold(f64::INFINITY, f64::min);
        let wake_limit = if fastest_device_us.is_finite() {
            BROKER_WAKE_DELAY_US.max(BROKER_WAKE_DELAY_SHARE * fastest_device_us)
        } else {
            BROKER_WAKE_DELAY_US
        };
        if let Some(v) = host["broker_wake_delay_us"].as_f64() {
            if v >= wake_limit {
                wait.add(v);
                reasons.push(format!("broker waited {v:.0} µs for a CPU per run"));
            }
        }
        t.controller_held += host["controller_held"].as_u64().unwrap_or(0);
        let interval = s["interval_s"].as_f64().unwrap_or(1.0);
        for d in s["disks"].as_array().into_iter().flatten() {
            let tenant = d["tenant"].as_str().unwrap_or("?").to_string();
            // Requests answered before this second: all of them came before the gap that
            // ends in it, when it began in an earlier second.
            let before = answered.get(&tenant).copied().unwrap_or(0.0);
            let now =
                d["read_iops"].as_f64().unwrap_or(0.0) + d["write_iops"].as_f64().unwrap_or(0.0);
            answered.insert(tenant.clone(), before + now * interval);
            let Some(v) = d["longest_idle_gap_ms"].as_f64() else {
                continue;
            };
            if v >= GUEST_GAP_MS && before >= GUEST_STARTED_IOS {
                gap.add(v);
                reasons.push(format!("{tenant} asked nothing for {v:.0} ms"));
                if !gap_guests.contains(&tenant) {
                    gap_guests.push(tenant);
                }
            }
        }
        let second = s["t_s"].as_f64().unwrap_or(0.0).round() as i64;
        if let Some(v) = some.filter(|v| *v >= CPU_SOME_PCT) {
            pressure.insert(second, v);
        }
        if !reasons.is_empty() {
            distorted.entry(second).or_default().extend(reasons);
        }
    }
    let (mut starved, mut guest_sum, mut guest_n) = (Tally::default(), 0.0, 0usize);
    let mut starved_guests: Vec<&str> = Vec::new();
    for g in guests {
        guest_sum += g.cpu_wait_ms;
        guest_n += 1;
        if g.cpu_wait_ms >= GUEST_CPU_WAIT_MS_PER_S {
            starved.add(g.cpu_wait_ms);
            if !starved_guests.contains(&g.guest.as_str()) {
                starved_guests.push(&g.guest);
            }
            distorted
                .entry(g.t_s.round() as i64)
                .or_default()
                .push(format!(
                    "{} waited {:.0} ms/s for a CPU",
                    g.guest, g.cpu_wait_ms
                ));
        }
    }
    t.guest_cpu_wait_ms_mean = (guest_n > 0).then(|| guest_sum / guest_n as f64);
    t.distorted = distorted
        .into_iter()
        .map(|(second, mut reasons)| {
            if let Some(v) = pressure.get(&second) {
                reasons.push(format!("host CPU pressure {v:.0} %"));
            }
            DistortedSecond {
                t_s: second as f64,
                reasons,
            }
        })
        .collect();
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
    if broker_starved.seconds > 0 {
        t.reasons.push(format!(
            "the broker's threads together waited >= {BROKER_CPU_WAIT_MS_PER_S} ms/s for a CPU \
             in {} of {n} s (worst {:.0} ms/s): its clock, its wake-ups and every latency it \
             measures run late",
            broker_starved.seconds, broker_starved.worst
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
    if starved.seconds > 0 {
        t.reasons.push(format!(
            "guests {} waited >= {GUEST_CPU_WAIT_MS_PER_S} ms/s for a CPU in {} guest-seconds \
             (worst {:.0} ms/s): they ran slower than they would alone",
            starved_guests.join(", "),
            starved.seconds,
            starved.worst
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
            "interval_s": 1.0,
            "disks": [{"tenant": "victim", "longest_idle_gap_ms": gap_ms, "read_iops": 100.0,
                       "device_latency_us": 400.0}],
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
        let t = assess(&quiet, &[]);
        assert!(t.trusted, "{t:?}");
        assert_eq!(t.seconds, 20);
        assert!(t.distorted.is_empty() && t.reasons.is_empty());
        assert_eq!(summary(&t), None);

        let mut starved = quiet.clone();
        for i in [3, 7, 11] {
            starved[i] = second(i as f64, 35.0, 2400.0, Some(900.0));
        }
        let t = assess(&starved, &[]);
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
        let t = assess(&samples, &[]);
        assert!(t.trusted);
        assert_eq!(t.distorted.len(), 1);
        assert_eq!(t.distorted[0].t_s, 5.0);
    }

    #[test]
    fn a_boot_gap_and_a_wait_small_beside_the_device_latency_are_not_distortions() {
        // A guest that read its partition table (3 requests), then started its workload 2 s
        // later: the gap is its boot, not a stall. A 300 µs wait per run beside 4 ms requests
        // is under a tenth of them.
        let samples: Vec<_> = (0..10)
            .map(|i| {
                json!({
                    "t_s": f64::from(i), "interval_s": 1.0,
                    "disks": [{"tenant": "lin", "read_iops": if i == 0 { 3.0 } else if i < 3 { 0.0 } else { 50.0 },
                               "longest_idle_gap_ms": if i == 3 { Some(2300.0) } else { None },
                               "device_latency_us": 4000.0}],
                    "host": {"cpu_some_pct": 5.0, "broker_cpu_wait_ms": 10.0,
                             "broker_wake_delay_us": 300.0, "clock_lag_max_ms": 1.0,
                             "controller_held": 0}
                })
            })
            .collect();
        let t = assess(&samples, &[]);
        assert!(t.distorted.is_empty(), "{t:?}");
        // The same wait beside 400 µs requests is a distortion.
        let t = assess(
            &(0..10)
                .map(|i| second(f64::from(i), 0.1, 300.0, None))
                .collect::<Vec<_>>(),
            &[],
        );
        assert_eq!(t.distorted.len(), 10);
        assert!(!t.trusted);
    }

    #[test]
    fn a_guest_waiting_for_a_cpu_distorts_its_seconds() {
        let quiet: Vec<_> = (0..10)
            .map(|i| second(f64::from(i), 0.1, 12.0, None))
            .collect();
        let guests: Vec<GuestCpuSecond> = (0..10)
            .map(|i| GuestCpuSecond {
                t_s: f64::from(i) + 0.02,
                guest: "noisy".into(),
                cpu_wait_ms: if i % 2 == 0 { 450.0 } else { 3.0 },
            })
            .collect();
        let t = assess(&quiet, &guests);
        assert!(!t.trusted);
        assert_eq!(t.distorted.len(), 5);
        assert_eq!(t.distorted[1].t_s, 2.0);
        assert!(t.distorted[1].reasons[0].starts_with("noisy waited 450 ms/s"));
        assert!(
            t.reasons[0].contains("in 5 guest-seconds (worst 450 ms/s)"),
            "{t:?}"
        );
        assert_eq!(t.guest_cpu_wait_ms_mean, Some(226.5));
    }

    #[test]
    fn a_broker_starved_in_total_is_flagged_though_each_wake_up_is_short() {
        // Many short waits (60 µs per run, under the per-run limit) summing to 900 ms/s: the
        // broker kept a core's worth of work waiting.
        let samples: Vec<_> = (0..10)
            .map(|i| {
                let mut s = second(f64::from(i), 0.1, 60.0, None);
                s["host"]["broker_cpu_wait_ms"] = json!(if i < 4 { 900.0 } else { 80.0 });
                s
            })
            .collect();
        let t = assess(&samples, &[]);
        assert!(!t.trusted, "{t:?}");
        assert_eq!(t.distorted.len(), 4);
        assert!(t.distorted[0].reasons[0].contains("waited 900 ms/s"));
        assert!(
            t.reasons[0].contains("in 4 of 10 s (worst 900 ms/s)"),
            "{t:?}"
        );
        assert_eq!(t.broker_cpu_wait_ms_mean, Some(408.0));
    }

    #[test]
    fn samples_without_host_figures_are_not_judged() {
        let t = assess(&[json!({"t_s": 1.0, "disks": []})], &[]);
        assert!(t.trusted);
        assert_eq!(t.seconds, 0);
        assert_eq!(t.cpu_some_pct_mean, None);
    }
}
