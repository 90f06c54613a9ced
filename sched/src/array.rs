//! A model of a congested storage array, driven by the caller's clock.
//!
//! The array has ports; each LUN sits behind one port. A LUN has `servers` parallel service
//! units (think spindles or controller slots): a request is served at once when a unit is
//! free and waits in the LUN's FIFO otherwise, so latency rises with outstanding I/O and
//! throughput saturates at `servers` outstanding requests — the knee. Service time is
//! exponential around a mean that grows with size (`base + bytes / bandwidth`, separately for
//! reads and writes).
//!
//! Two congestion signals, answered at once without service, as SCSI arrays do:
//! - **QUEUE FULL** when the port already holds `port_queue_limit` requests (all LUNs behind it);
//! - **BUSY** when the LUN already has `busy_threshold` requests waiting beyond its servers.
//!
//! Capacity events scale a LUN's servers (a 50 % drop halves them, moving the knee), at a
//! given time; [`EmulatedArray::set_capacity`] applies one. Everything is seeded: the same seed
//! and the same calls give the same completions.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// One LUN's service model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunModel {
    /// Parallel service units: the knee, in outstanding requests.
    #[serde(default = "default_servers")]
    pub servers: u32,
    /// Mean service time of a read, microseconds, before the size part.
    #[serde(default = "default_read_base_us")]
    pub read_base_us: f64,
    /// Mean service time of a write, microseconds, before the size part.
    #[serde(default = "default_write_base_us")]
    pub write_base_us: f64,
    /// Transfer rate per service unit, MiB/s: adds `bytes / bandwidth` to the service time.
    #[serde(default = "default_unit_mib_per_s")]
    pub unit_mib_per_s: f64,
    /// Waiting requests (beyond `servers`) the LUN accepts before it answers BUSY.
    #[serde(default = "default_busy_threshold")]
    pub busy_threshold: u32,
}

fn default_servers() -> u32 {
    16
}
fn default_read_base_us() -> f64 {
    4000.0
}
fn default_write_base_us() -> f64 {
    5000.0
}
fn default_unit_mib_per_s() -> f64 {
    40.0
}
fn default_busy_threshold() -> u32 {
    1
}

impl Default for LunModel {
    /// A small congested array LUN: 16 units of ~4 ms reads, about 4000 IOPS of 4 KiB reads at
    /// the knee, BUSY just past it.
    fn default() -> Self {
        LunModel {
            servers: default_servers(),
            read_base_us: default_read_base_us(),
            write_base_us: default_write_base_us(),
            unit_mib_per_s: default_unit_mib_per_s(),
            busy_threshold: default_busy_threshold(),
        }
    }
}

impl LunModel {
    /// Mean service time in seconds.
    pub fn mean_service_s(&self, bytes: u64, write: bool) -> f64 {
        let base = if write {
            self.write_base_us
        } else {
            self.read_base_us
        };
        base / 1e6 + bytes as f64 / (self.unit_mib_per_s * 1048576.0)
    }

    /// Throughput at the knee for a request size and mix (requests/s).
    pub fn peak_iops(&self, bytes: u64, write: bool) -> f64 {
        f64::from(self.servers) / self.mean_service_s(bytes, write)
    }
}

/// How the array answered a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    QueueFull,
    Busy,
}

#[derive(Debug, Clone)]
struct Waiting {
    id: u64,
    service_s: f64,
}

#[derive(Debug, Clone)]
struct LunState {
    port: usize,
    model: LunModel,
    /// Servers in effect after capacity events.
    servers: u32,
    busy_units: u32,
    waiting: VecDeque<Waiting>,
    rng: SplitMix64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Event {
    at: f64,
    seq: u64,
    lun: usize,
    id: u64,
}

impl Eq for Event {}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (time, sequence): deterministic order for equal times.
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArrayCompletion {
    pub id: u64,
    pub lun: usize,
    pub at: f64,
}

/// The array: ports and LUNs, seeded.
#[derive(Debug, Clone)]
pub struct EmulatedArray {
    port_limits: Vec<u32>,
    port_outstanding: Vec<u32>,
    luns: Vec<LunState>,
    events: BinaryHeap<Event>,
    seq: u64,
}

impl EmulatedArray {
    /// `ports[i]` is port i's queue limit; `luns` are `(port, model)`.
    pub fn new(ports: &[u32], luns: &[(usize, LunModel)], seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        EmulatedArray {
            port_limits: ports.to_vec(),
            port_outstanding: vec![0; ports.len()],
            luns: luns
                .iter()
                .map(|(port, model)| LunState {
                    port: *port,
                    servers: model.servers.max(1),
                    model: model.clone(),
                    busy_units: 0,
                    waiting: VecDeque::new(),
                    rng: rng.fork(),
                })
                .collect(),
            events: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Scales LUN `lun`'s servers to `percent` of its model (at least one). Requests already
    /// in service finish; fewer start from now on.
    pub fn set_capacity(&mut self, lun: usize, percent: f64) {
        if let Some(l) = self.luns.get_mut(lun) {
            l.servers = ((f64::from(l.model.servers) * percent / 100.0).round() as u32).max(1);
        }
    }

    pub fn servers(&self, lun: usize) -> u32 {
        self.luns.get(lun).map_or(0, |l| l.servers)
    }

    /// Requests held by LUN `lun` (in service and waiting).
    pub fn outstanding(&self, lun: usize) -> u32 {
        self.luns
            .get(lun)
            .map_or(0, |l| l.busy_units + l.waiting.len() as u32)
    }

    /// The port LUN `lun` sits behind.
    pub fn lun_port(&self, lun: usize) -> Option<usize> {
        self.luns.get(lun).map(|l| l.port)
    }

    pub fn ports(&self) -> usize {
        self.port_limits.len()
    }

    pub fn port_outstanding(&self, port: usize) -> u32 {
        self.port_outstanding.get(port).copied().unwrap_or(0)
    }

    /// Offers request `id` to LUN `lun` at `now`.
    pub fn submit(&mut self, now: f64, lun: usize, id: u64, bytes: u64, write: bool) -> Admission {
        let Some(l) = self.luns.get_mut(lun) else {
            return Admission::QueueFull;
        };
        let port = l.port;
        if self.port_outstanding[port] >= self.port_limits[port] {
            return Admission::QueueFull;
        }
        if l.busy_units >= l.servers && l.waiting.len() as u32 >= l.model.busy_threshold {
            return Admission::Busy;
        }
        let mean = l.model.mean_service_s(bytes, write);
        let service_s = l.rng.exponential(mean);
        self.port_outstanding[port] += 1;
        if l.busy_units < l.servers {
            l.busy_units += 1;
            self.seq += 1;
            self.events.push(Event {
                at: now + service_s,
                seq: self.seq,
                lun,
                id,
            });
        } else {
            l.waiting.push_back(Waiting { id, service_s });
        }
        Admission::Accepted
    }

    /// When the next request finishes, if any is in service.
    pub fn next_completion(&self) -> Option<f64> {
        self.events.peek().map(|e| e.at)
    }

    /// Finishes the next request if it is due by `now`, starting the next waiting one.
    pub fn complete_next(&mut self, now: f64) -> Option<ArrayCompletion> {
        if self.events.peek()?.at > now {
            return None;
        }
        let e = self.events.pop()?;
        let l = &mut self.luns[e.lun];
        self.port_outstanding[l.port] -= 1;
        l.busy_units -= 1;
        // After a capacity drop more units may be busy than exist; start work only below it.
        if l.busy_units < l.servers {
            if let Some(w) = l.waiting.pop_front() {
                l.busy_units += 1;
                self.seq += 1;
                self.events.push(Event {
                    at: e.at + w.service_s,
                    seq: self.seq,
                    lun: e.lun,
                    id: w.id,
                });
            }
        }
        Some(ArrayCompletion {
            id: e.id,
            lun: e.lun,
            at: e.at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed loop at depth `d` against one LUN for `secs`: (IOPS, mean latency s).
    fn closed_loop(d: u32, secs: f64, model: LunModel) -> (f64, f64, u64) {
        let mut a = EmulatedArray::new(&[1024], &[(0, model)], 1);
        let mut started = std::collections::HashMap::new();
        let mut next_id = 0u64;
        let mut rejected = 0u64;
        for _ in 0..d {
            match a.submit(0.0, 0, next_id, 4096, false) {
                Admission::Accepted => {
                    started.insert(next_id, 0.0);
                }
                _ => rejected += 1,
            }
            next_id += 1;
        }
        let (mut done, mut lat_sum) = (0u64, 0.0);
        while let Some(t) = a.next_completion() {
            if t > secs {
                break;
            }
            let c = a.complete_next(t).unwrap();
            lat_sum += t - started.remove(&c.id).unwrap();
            done += 1;
            if a.submit(t, 0, next_id, 4096, false) == Admission::Accepted {
                started.insert(next_id, t);
            } else {
                rejected += 1;
            }
            next_id += 1;
        }
        (done as f64 / secs, lat_sum / done as f64, rejected)
    }

    #[test]
    fn throughput_saturates_at_the_knee_and_latency_rises_after_it() {
        let model = LunModel {
            busy_threshold: 1000,
            ..LunModel::default()
        };
        let peak = model.peak_iops(4096, false);
        let (iops4, lat4, _) = closed_loop(4, 20.0, model.clone());
        let (iops16, lat16, _) = closed_loop(16, 20.0, model.clone());
        let (iops32, lat32, _) = closed_loop(32, 20.0, model.clone());
        assert!(
            (iops4 / (peak / 4.0) - 1.0).abs() < 0.05,
            "{iops4} vs {}",
            peak / 4.0
        );
        assert!((iops16 / peak - 1.0).abs() < 0.05, "{iops16} vs {peak}");
        assert!((iops32 / peak - 1.0).abs() < 0.05, "saturated: {iops32}");
        assert!(
            (lat16 / lat4 - 1.0).abs() < 0.1,
            "flat below the knee: {lat4} {lat16}"
        );
        assert!(
            lat32 > 1.8 * lat16,
            "queueing past the knee: {lat16} {lat32}"
        );
    }

    #[test]
    fn busy_past_the_knee_and_queue_full_at_the_port() {
        let mut a = EmulatedArray::new(
            &[20],
            &[(0, LunModel::default()), (0, LunModel::default())],
            3,
        );
        let admissions: Vec<Admission> =
            (0..18).map(|i| a.submit(0.0, 0, i, 4096, false)).collect();
        // 16 in service, 1 waiting (busy_threshold 1), the 18th is BUSY.
        assert!(admissions[..17].iter().all(|x| *x == Admission::Accepted));
        assert_eq!(admissions[17], Admission::Busy);
        // The port holds 17; three more on the other LUN fill it to 20, then QUEUE FULL.
        for i in 0..3 {
            assert_eq!(a.submit(0.0, 1, 100 + i, 4096, false), Admission::Accepted);
        }
        assert_eq!(a.submit(0.0, 1, 200, 4096, false), Admission::QueueFull);
        assert_eq!(a.port_outstanding(0), 20);
    }

    #[test]
    fn a_capacity_drop_moves_the_knee() {
        let model = LunModel {
            busy_threshold: 1000,
            ..LunModel::default()
        };
        let mut a = EmulatedArray::new(&[1024], &[(0, model)], 5);
        a.set_capacity(0, 50.0);
        assert_eq!(a.servers(0), 8);
        for i in 0..16 {
            a.submit(0.0, 0, i, 4096, false);
        }
        assert_eq!(a.outstanding(0), 16);
        // Only 8 are in service: 8 completions are scheduled.
        assert_eq!(a.events.len(), 8);
    }

    #[test]
    fn same_seed_same_completions() {
        let run = |seed| {
            let mut a = EmulatedArray::new(&[64], &[(0, LunModel::default())], seed);
            for i in 0..32 {
                a.submit(0.0, 0, i, 4096, i % 2 == 0);
            }
            let mut out = Vec::new();
            while let Some(t) = a.next_completion() {
                out.push(a.complete_next(t).unwrap().at.to_bits());
            }
            out
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
