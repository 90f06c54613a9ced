//! Per-second telemetry: every second the broker turns each disk's counters into rates and
//! keeps the last [`TELEMETRY_SECONDS`] samples, served by the control API (`telemetry`).
//! Telemetry is data, not logs: serialisable structs, one per second.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::counters::DiskCountersSnapshot;
use crate::dispatch::{ArrayRuntime, LunDispatcher, PathSnapshot};
use crate::health::{ClockHealth, HostSample, HostSampler};
use crate::server::DiskInfo;
use crate::thin::ThinPool;

/// Samples kept: five minutes.
pub const TELEMETRY_SECONDS: usize = 300;

/// One disk (tenant) over one interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DiskSample {
    pub tenant: String,
    pub lun: String,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_mib_s: f64,
    pub write_mib_s: f64,
    /// Work completed per second in the scheduler's cost units (a 4 KiB request = 1): what
    /// the tenants' weights divide.
    #[serde(default)]
    pub cost_per_s: f64,
    /// Requests taken from the guest and not yet answered at the end of the interval: those
    /// waiting in the dispatcher (`queued`) and those at the backing store.
    pub in_flight: u64,
    /// Requests waiting in the LUN dispatcher at the end of the interval.
    pub queued: u64,
    /// Mean time at the backing store (and array model) over the interval (DAVG), µs.
    pub device_latency_us: Option<f64>,
    /// Mean time waiting in the LUN dispatcher (KAVG), µs.
    pub queue_latency_us: Option<f64>,
    /// Mean time from the guest's request to its answer (GAVG), µs.
    pub total_latency_us: Option<f64>,
    pub rejected: u64,
    pub io_errors: u64,
    pub connected: bool,
    /// Writes held for thin-pool space at the end of the interval.
    #[serde(default)]
    pub held: u64,
    /// The longest time in the interval the guest had nothing at the broker between two of
    /// its requests, ms (null: no such gap ended in it). A closed-loop guest that stops
    /// asking for hundreds of ms was not being run.
    #[serde(default)]
    pub longest_idle_gap_ms: Option<f64>,
}

/// One LUN's dispatcher at the end of an interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LunSample {
    pub lun: String,
    /// The dispatch window D.
    pub window: u64,
    /// `adaptive`: the knee estimate and the completions' index of dispersion φ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knee: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dispersion: Option<f64>,
    /// Requests dispatched and not yet finished.
    pub in_flight: u64,
    /// Requests waiting in the dispatcher (tenant queues and retries).
    pub queued: u64,
    /// QUEUE FULL/BUSY answers from the (emulated) array during the interval.
    pub congestion: u64,
    /// Window halvings so far.
    pub halvings: u64,
    /// Requests moved to another path during the interval.
    pub reissued: u64,
    /// The longest fault → good answer via another path so far, ms (none yet: null).
    pub max_failover_ms: Option<f64>,
}

/// One path of a LUN over one interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PathSample {
    pub lun: String,
    pub path: String,
    pub port: Option<String>,
    /// `active`, `standby` or `failed` at the end of the interval.
    pub state: String,
    pub iops: f64,
    pub mib_s: f64,
    pub in_flight: u32,
    /// EWMA of the path's service time, µs.
    pub service_time_us: Option<f64>,
    /// Requests that failed on this path during the interval (and moved to another).
    pub errors: u64,
}

/// One emulated array port at the end of an interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PortSample {
    pub port: String,
    pub queue_limit: u32,
    /// Requests the port holds.
    pub outstanding: u32,
    /// QUEUE FULL answers during the interval.
    pub queue_full: u64,
}

/// Where a port's figures come from.
#[derive(Clone)]
pub struct PortTelemetry {
    pub name: String,
    pub index: usize,
    pub queue_limit: u32,
    pub array: Arc<ArrayRuntime>,
}

/// One thin pool at the end of an interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolSample {
    pub pool: String,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub used_pct: f64,
    pub fs_full: bool,
    /// The 10-minute forecast's time to full, s.
    pub time_to_full_s: Option<f64>,
    /// Threshold and full-within events of the interval.
    pub events: Vec<weir_sched::thin::PoolEvent>,
}

/// All disks, LUNs and ports over one interval ending `t_s` seconds after the broker started.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TelemetrySample {
    pub t_s: f64,
    pub interval_s: f64,
    pub disks: Vec<DiskSample>,
    pub luns: Vec<LunSample>,
    pub ports: Vec<PortSample>,
    pub paths: Vec<PathSample>,
    #[serde(default)]
    pub pools: Vec<PoolSample>,
    /// Whether the broker kept time: host CPU pressure, its own wait for a CPU, its clock's
    /// lateness (absent in samples from older brokers).
    #[serde(default)]
    pub host: Option<HostSample>,
}

/// Rates between two counter snapshots taken `dt` seconds apart.
pub fn disk_sample(
    info: &DiskInfo,
    before: &DiskCountersSnapshot,
    after: &DiskCountersSnapshot,
    dt: f64,
) -> DiskSample {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / dt;
    let mib = 1048576.0;
    let completions = after
        .device_completions
        .saturating_sub(before.device_completions);
    let latency_ns = after
        .device_latency_ns
        .saturating_sub(before.device_latency_ns);
    let rejected = |s: &DiskCountersSnapshot| s.rejected.values().sum::<u64>();
    let mean_us = |ns: u64| (completions > 0).then(|| ns as f64 / completions as f64 / 1000.0);
    DiskSample {
        tenant: info.tenant.clone(),
        lun: info.lun.clone(),
        read_iops: rate(after.reads, before.reads),
        write_iops: rate(after.writes, before.writes),
        read_mib_s: rate(after.read_bytes, before.read_bytes) / mib,
        write_mib_s: rate(after.write_bytes, before.write_bytes) / mib,
        cost_per_s: rate(after.cost_milli, before.cost_milli) / 1000.0,
        in_flight: after.in_flight,
        queued: after.queued,
        device_latency_us: mean_us(latency_ns),
        queue_latency_us: mean_us(
            after
                .queue_latency_ns
                .saturating_sub(before.queue_latency_ns),
        ),
        total_latency_us: mean_us(
            after
                .total_latency_ns
                .saturating_sub(before.total_latency_ns),
        ),
        rejected: rejected(after).saturating_sub(rejected(before)),
        io_errors: after.io_errors.saturating_sub(before.io_errors),
        connected: info.connected.load(Ordering::SeqCst),
        held: after.held,
        longest_idle_gap_ms: None,
    }
}

/// The ring of samples and the thread that fills it.
pub struct TelemetryRecorder {
    samples: Arc<Mutex<VecDeque<TelemetrySample>>>,
    stop: Arc<crate::stopper::Stopper>,
    thread: Option<JoinHandle<()>>,
}

impl TelemetryRecorder {
    pub fn start(
        disks: Vec<DiskInfo>,
        luns: Vec<Arc<LunDispatcher>>,
        ports: Vec<PortTelemetry>,
        pools: Vec<Arc<ThinPool>>,
        health: Arc<ClockHealth>,
        period: Duration,
    ) -> std::io::Result<Self> {
        let samples = Arc::new(Mutex::new(VecDeque::with_capacity(TELEMETRY_SECONDS)));
        let stop = Arc::new(crate::stopper::Stopper::default());
        let (samples2, stop2) = (samples.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("telemetry".into())
            .spawn(move || {
                let start = Instant::now();
                let mut last_at = Instant::now();
                let mut last_queue_full: Vec<u64> = ports
                    .iter()
                    .map(|p| {
                        p.array
                            .queue_full
                            .get(p.index)
                            .map_or(0, |c| c.load(Ordering::Relaxed))
                    })
                    .collect();
                let mut last_congestion: Vec<u64> = luns
                    .iter()
                    .map(|l| l.counters.congestion.load(Ordering::Relaxed))
                    .collect();
                let mut last_reissued: Vec<u64> = luns
                    .iter()
                    .map(|l| l.counters.reissued.load(Ordering::Relaxed))
                    .collect();
                let mut last_paths: Vec<Vec<PathSnapshot>> =
                    luns.iter().map(|l| l.path_snapshots()).collect();
                let mut last: Vec<DiskCountersSnapshot> =
                    disks.iter().map(|d| d.counters.snapshot()).collect();
                // Per pool, the newest event already reported.
                let mut pool_seen: Vec<f64> = vec![f64::NEG_INFINITY; pools.len()];
                let mut host = HostSampler::new();
                let late_periods = |luns: &[Arc<LunDispatcher>]| -> u64 {
                    luns.iter()
                        .map(|l| l.counters.late_periods.load(Ordering::Relaxed))
                        .sum()
                };
                let mut last_late = late_periods(&luns);
                let mut next = last_at + period;
                while !stop2.is_stopped() {
                    let now = Instant::now();
                    if now < next {
                        stop2.sleep(next - now);
                        continue;
                    }
                    next += period;
                    let dt = now.duration_since(last_at).as_secs_f64();
                    let current: Vec<DiskCountersSnapshot> =
                        disks.iter().map(|d| d.counters.snapshot()).collect();
                    let sample = TelemetrySample {
                        t_s: now.duration_since(start).as_secs_f64(),
                        interval_s: dt,
                        disks: disks
                            .iter()
                            .zip(last.iter().zip(&current))
                            .map(|(info, (b, a))| DiskSample {
                                longest_idle_gap_ms: match info.counters.take_longest_idle_gap_us()
                                {
                                    0 => None,
                                    us => Some(us as f64 / 1000.0),
                                },
                                ..disk_sample(info, b, a, dt)
                            })
                            .collect(),
                        host: Some({
                            let late = late_periods(&luns);
                            let held = late.saturating_sub(last_late);
                            last_late = late;
                            host.sample(&health, dt, held)
                        }),
                        luns: luns
                            .iter()
                            .zip(last_congestion.iter_mut().zip(last_reissued.iter_mut()))
                            .map(|(l, (before, before_reissued))| {
                                let c = &l.counters;
                                let milli = |a: &AtomicU64| match a.load(Ordering::Relaxed) {
                                    0 => None,
                                    v => Some(v as f64 / 1000.0),
                                };
                                let congestion = c.congestion.load(Ordering::Relaxed);
                                let delta = congestion.saturating_sub(*before);
                                *before = congestion;
                                let reissued = c.reissued.load(Ordering::Relaxed);
                                let reissued_delta = reissued.saturating_sub(*before_reissued);
                                *before_reissued = reissued;
                                LunSample {
                                    lun: l.name.clone(),
                                    window: c.window.load(Ordering::Relaxed),
                                    knee: milli(&c.knee_milli),
                                    dispersion: milli(&c.dispersion_milli),
                                    in_flight: c.in_flight.load(Ordering::Relaxed),
                                    queued: c.queued.load(Ordering::Relaxed),
                                    congestion: delta,
                                    halvings: c.halvings.load(Ordering::Relaxed),
                                    reissued: reissued_delta,
                                    max_failover_ms: match c.max_failover_us.load(Ordering::Relaxed)
                                    {
                                        0 if reissued == 0 => None,
                                        us => Some(us as f64 / 1000.0),
                                    },
                                }
                            })
                            .collect(),
                        paths: luns
                            .iter()
                            .zip(last_paths.iter_mut())
                            .flat_map(|(l, before)| {
                                let now_paths = l.path_snapshots();
                                let out: Vec<PathSample> = now_paths
                                    .iter()
                                    .enumerate()
                                    .map(|(i, p)| {
                                        let b = before.get(i).map(|b| &b.stats);
                                        let d = |f: fn(&weir_sched::path::PathStats) -> u64| {
                                            f(&p.stats).saturating_sub(b.map_or(0, f))
                                        };
                                        PathSample {
                                            lun: l.name.clone(),
                                            path: p.name.clone(),
                                            port: p.port.clone(),
                                            state: p.state.to_string(),
                                            iops: d(|s| s.completed) as f64 / dt,
                                            mib_s: d(|s| s.bytes) as f64 / dt / 1048576.0,
                                            in_flight: p.stats.in_flight,
                                            service_time_us: p
                                                .stats
                                                .ewma_service_s
                                                .map(|v| v * 1e6),
                                            errors: d(|s| s.errors),
                                        }
                                    })
                                    .collect();
                                *before = now_paths;
                                out
                            })
                            .collect(),
                        pools: pools
                            .iter()
                            .zip(pool_seen.iter_mut())
                            .map(|(p, seen)| {
                                let snap = p.snapshot();
                                let events: Vec<_> = snap
                                    .events
                                    .iter()
                                    .filter(|e| e.at_s > *seen)
                                    .cloned()
                                    .collect();
                                if let Some(e) = events.last() {
                                    *seen = e.at_s;
                                }
                                PoolSample {
                                    pool: snap.name.clone(),
                                    capacity_bytes: snap.capacity_bytes,
                                    used_bytes: snap.used_bytes,
                                    used_pct: snap.used_pct,
                                    fs_full: snap.fs_full,
                                    time_to_full_s: snap
                                        .forecast
                                        .get(1)
                                        .and_then(|f| f.time_to_full_s),
                                    events,
                                }
                            })
                            .collect(),
                        ports: ports
                            .iter()
                            .zip(last_queue_full.iter_mut())
                            .map(|(p, before)| {
                                let qf = p
                                    .array
                                    .queue_full
                                    .get(p.index)
                                    .map_or(0, |c| c.load(Ordering::Relaxed));
                                let delta = qf.saturating_sub(*before);
                                *before = qf;
                                PortSample {
                                    port: p.name.clone(),
                                    queue_limit: p.queue_limit,
                                    outstanding: p.array.port_outstanding(p.index),
                                    queue_full: delta,
                                }
                            })
                            .collect(),
                    };
                    let mut ring = samples2.lock().unwrap_or_else(|p| p.into_inner());
                    if ring.len() == TELEMETRY_SECONDS {
                        ring.pop_front();
                    }
                    ring.push_back(sample);
                    drop(ring);
                    last = current;
                    last_at = now;
                }
            })?;
        Ok(TelemetryRecorder {
            samples,
            stop,
            thread: Some(thread),
        })
    }

    /// The last `n` samples (all when `n` is `None`), oldest first.
    pub fn recent(&self, n: Option<usize>) -> Vec<TelemetrySample> {
        self.handle().recent(n)
    }

    pub fn handle(&self) -> TelemetryHandle {
        TelemetryHandle {
            samples: self.samples.clone(),
        }
    }
}

impl Drop for TelemetryRecorder {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Read access to the samples, for the control API.
#[derive(Clone)]
pub struct TelemetryHandle {
    samples: Arc<Mutex<VecDeque<TelemetrySample>>>,
}

impl TelemetryHandle {
    pub fn recent(&self, n: Option<usize>) -> Vec<TelemetrySample> {
        let ring = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let skip = n.map_or(0, |n| ring.len().saturating_sub(n));
        ring.iter().skip(skip).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::DiskCounters;
    use std::sync::atomic::AtomicBool;

    fn disk() -> (DiskInfo, Arc<DiskCounters>) {
        let counters = Arc::new(DiskCounters::default());
        let info = DiskInfo {
            socket: "/tmp/x.sock".into(),
            tenant: "t".into(),
            lun: "l".into(),
            queues: 1,
            policy: Default::default(),
            counters: counters.clone(),
            connected: Arc::new(AtomicBool::new(true)),
            last_change_ms: Default::default(),
        };
        (info, counters)
    }

    #[test]
    fn rates_and_device_latency_from_counter_deltas() {
        let (info, counters) = disk();
        let before = counters.snapshot();
        for _ in 0..100 {
            counters.completed(crate::request::RequestKind::Read, 4096);
        }
        counters
            .device_latency_ns
            .fetch_add(100 * 250_000, Ordering::Relaxed);
        counters
            .device_completions
            .fetch_add(100, Ordering::Relaxed);
        let after = counters.snapshot();
        let s = disk_sample(&info, &before, &after, 0.5);
        assert_eq!(s.read_iops, 200.0);
        assert!((s.read_mib_s - 200.0 * 4096.0 / 1048576.0).abs() < 1e-9);
        assert_eq!(s.device_latency_us, Some(250.0));
        assert_eq!(s.cost_per_s, 200.0, "a 4 KiB read costs 1");
        assert_eq!(s.write_iops, 0.0);
    }

    #[test]
    fn the_recorder_keeps_one_sample_per_period() {
        let (info, _counters) = disk();
        let rec = TelemetryRecorder::start(
            vec![info],
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Arc::default(),
            Duration::from_millis(100),
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(550));
        let n = rec.recent(None).len();
        assert!((4..=6).contains(&n), "{n} samples in 550 ms at 100 ms");
        assert_eq!(rec.recent(Some(2)).len(), 2);
    }
}
