//! Is the broker keeping time? The emulated array and every latency the window controllers
//! see are measured on the broker's real clock, so a broker starved of CPU (another job on
//! the host, too many guests for the cores) inflates latency for reasons that are not the
//! storage's. This module measures that, so a run can say when its figures cannot be trusted
//! and the controllers can refuse to learn from it:
//!
//! - the scheduler thread's lateness: how long after the deadline it slept for it actually
//!   ran (a timer wake-up is normally late by tens of µs; milliseconds mean a starved thread);
//! - host CPU pressure from `/proc/pressure/cpu` (PSI, Linux ≥ 4.20): the share of time in
//!   which at least one runnable task waited for a CPU (`some`);
//! - the broker's own wait for a CPU: the `run_delay` of each of its threads
//!   (`/proc/self/task/*/schedstat`, field 2: ns runnable but not running), summed, and per
//!   time a thread was run (field 3), which separates a starved broker from a busy one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Lateness of the scheduler thread that counts against a controller period
/// (`QueueDepthController::note_lateness`): the thread ticks every 10 ms and a timer wake-up
/// is normally late by tens of µs, so 4 ms late is the CPU's doing.
pub const LATE_LIMIT_S: f64 = 0.004;

/// The scheduler thread's lateness, shared with the telemetry.
#[derive(Debug, Default)]
pub struct ClockHealth {
    /// Worst lateness since telemetry last read it, µs.
    max_lag_us: AtomicU64,
}

impl ClockHealth {
    /// The thread woke `lag_s` after the deadline it slept for.
    pub fn woke_late(&self, lag_s: f64) {
        let us = (lag_s.max(0.0) * 1e6) as u64;
        self.max_lag_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn take_max_lag_us(&self) -> u64 {
        self.max_lag_us.swap(0, Ordering::Relaxed)
    }
}

/// The host and the broker over one telemetry interval.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HostSample {
    /// Share of the interval in which at least one runnable task on the host waited for a
    /// CPU (PSI `some`), %; null where the kernel has no PSI.
    pub cpu_some_pct: Option<f64>,
    /// Time the broker's threads spent runnable but not running, summed over its threads,
    /// ms per second of the interval; null where schedstat is not readable. It grows with
    /// the I/O rate (every wake-up waits a little), so it is context, not a verdict.
    pub broker_cpu_wait_ms: Option<f64>,
    /// The broker threads' mean wait for a CPU per time they were run, µs: a few µs on a
    /// host with a free core, milliseconds on a starved one.
    #[serde(default)]
    pub broker_wake_delay_us: Option<f64>,
    /// The scheduler thread's worst lateness past a deadline in the interval, ms.
    pub clock_lag_max_ms: f64,
    /// Window-controller periods dropped in the interval because the clock was late in
    /// them (all LUNs).
    pub controller_held: u64,
}

/// Reads PSI and the broker threads' run delay between two calls.
#[derive(Debug, Default)]
pub struct HostSampler {
    last_some_us: Option<u64>,
    last_run_delay_ns: HashMap<u32, SchedStat>,
}

/// One thread's `schedstat`: ns runnable but not running, and times it was run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SchedStat {
    pub run_delay_ns: u64,
    pub runs: u64,
}

impl HostSampler {
    pub fn new() -> Self {
        HostSampler {
            last_some_us: read_psi_some_total_us(),
            last_run_delay_ns: read_thread_run_delays(),
        }
    }

    /// The interval of `dt` seconds since the previous call, in which the window
    /// controllers dropped `controller_held` periods.
    pub fn sample(&mut self, clock: &ClockHealth, dt: f64, controller_held: u64) -> HostSample {
        let dt = dt.max(1e-3);
        let some = read_psi_some_total_us();
        let cpu_some_pct = match (self.last_some_us, some) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / 1e6 / dt * 100.0),
            _ => None,
        };
        self.last_some_us = some;
        let delays = read_thread_run_delays();
        // A thread born in the interval waited all of its run delay in it.
        let (mut wait_ns, mut runs) = (0u64, 0u64);
        for (tid, d) in &delays {
            let before = self.last_run_delay_ns.get(tid).copied().unwrap_or_default();
            wait_ns += d.run_delay_ns.saturating_sub(before.run_delay_ns);
            runs += d.runs.saturating_sub(before.runs);
        }
        let broker_cpu_wait_ms = (!delays.is_empty()).then(|| wait_ns as f64 / 1e6 / dt);
        let broker_wake_delay_us =
            (!delays.is_empty() && runs > 0).then(|| wait_ns as f64 / 1e3 / runs as f64);
        self.last_run_delay_ns = delays;
        HostSample {
            cpu_some_pct,
            broker_cpu_wait_ms,
            broker_wake_delay_us,
            clock_lag_max_ms: clock.take_max_lag_us() as f64 / 1000.0,
            controller_held,
        }
    }
}

/// `total=` of the `some` line of `/proc/pressure/cpu`, µs.
fn read_psi_some_total_us() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/pressure/cpu").ok()?;
    parse_psi_some_total_us(&text)
}

fn parse_psi_some_total_us(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("some "))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Each thread of this process: its run delay and run count so far.
fn read_thread_run_delays() -> HashMap<u32, SchedStat> {
    read_task_schedstats("self")
}

/// Each thread of process `pid` (`"self"` for this one): its run delay and run count so far
/// (empty when the process is gone or schedstat is not readable).
pub fn read_task_schedstats(pid: &str) -> HashMap<u32, SchedStat> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return HashMap::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let tid: u32 = e.file_name().to_str()?.parse().ok()?;
            let text = std::fs::read_to_string(e.path().join("schedstat")).ok()?;
            Some((tid, parse_schedstat(&text)?))
        })
        .collect()
}

fn parse_schedstat(text: &str) -> Option<SchedStat> {
    let mut f = text.split_whitespace().skip(1);
    Some(SchedStat {
        run_delay_ns: f.next()?.parse().ok()?,
        runs: f.next()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psi_and_schedstat_lines_parse() {
        let psi = "some avg10=0.27 avg60=1.89 avg300=11.96 total=2374813672\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        assert_eq!(parse_psi_some_total_us(psi), Some(2374813672));
        assert_eq!(parse_psi_some_total_us("garbage"), None);
        assert_eq!(
            parse_schedstat("123456 7890 12\n"),
            Some(SchedStat {
                run_delay_ns: 7890,
                runs: 12
            })
        );
        assert_eq!(parse_schedstat("123456 7890"), None);
    }

    #[test]
    fn a_busy_sibling_thread_shows_as_broker_cpu_wait_when_cores_are_oversubscribed() {
        // Every thread spinning for a while on more threads than cores: each waits for a CPU
        // part of the time, and the sampler must see it (where schedstat exists).
        let clock = ClockHealth::default();
        let mut s = HostSampler::new();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinners: Vec<_> = (0..cores * 3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Sampled while the spinners still exist (their tasks are listed).
        let sample = s.sample(&clock, 0.3, 0);
        stop.store(true, Ordering::Relaxed);
        for t in spinners {
            t.join().unwrap();
        }
        clock.woke_late(0.007);
        let next = s.sample(&clock, 0.3, 0);
        assert_eq!(next.clock_lag_max_ms, 7.0);
        if std::path::Path::new("/proc/self/schedstat").exists() {
            let ms = sample.broker_cpu_wait_ms.expect("schedstat is there");
            assert!(ms > 10.0, "3 spinners per core waited only {ms} ms/s");
            let us = sample.broker_wake_delay_us.expect("schedstat is there");
            assert!(
                us > 100.0,
                "3 spinners per core waited only {us} µs per run"
            );
        }
        if std::path::Path::new("/proc/pressure/cpu").exists() {
            let pct = sample.cpu_some_pct.expect("PSI is there");
            assert!(pct > 5.0, "PSI some {pct} % with 3 spinners per core");
        }
    }
}
