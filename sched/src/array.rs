//! A model of a congested storage array, driven by the caller's clock.
//!
//! The array has ports and LUNs. A LUN has `servers` parallel service
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
//! A request reaches its LUN through a port of the initiator's choosing (its path); a port
//! adds its link's round-trip latency and can be faulted — down, slow (×k), flaky (error
//! rate) — from a schedule or by hand ([`EmulatedArray::set_port_fault`]).
//!
//! Capacity events scale a LUN's servers (a 50 % drop halves them, moving the knee), at a
//! given time; [`EmulatedArray::set_capacity`] applies one. Everything is seeded: the same seed
//! and the same calls give the same completions.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, VecDeque};

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
    /// Bimodal service: this share of requests (%) is slow, its mean `slow_us` (plus the size
    /// part) instead of the base — a cache miss, a busy spindle. 0: every request alike.
    #[serde(default)]
    pub slow_pct: f64,
    #[serde(default)]
    pub slow_us: f64,
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
            slow_pct: 0.0,
            slow_us: 0.0,
        }
    }
}

impl LunModel {
    /// Mean service time in seconds (over fast and slow requests).
    pub fn mean_service_s(&self, bytes: u64, write: bool) -> f64 {
        let p = self.slow_pct / 100.0;
        (1.0 - p) * self.fast_service_s(bytes, write) + p * self.slow_service_s(bytes)
    }

    fn size_part_s(&self, bytes: u64) -> f64 {
        bytes as f64 / (self.unit_mib_per_s * 1048576.0)
    }

    fn fast_service_s(&self, bytes: u64, write: bool) -> f64 {
        let base = if write {
            self.write_base_us
        } else {
            self.read_base_us
        };
        base / 1e6 + self.size_part_s(bytes)
    }

    fn slow_service_s(&self, bytes: u64) -> f64 {
        self.slow_us / 1e6 + self.size_part_s(bytes)
    }

    /// Throughput at the knee for a request size and mix (requests/s).
    pub fn peak_iops(&self, bytes: u64, write: bool) -> f64 {
        f64::from(self.servers) / self.mean_service_s(bytes, write)
    }
}

/// One array port (a path's target port): its queue and its link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortModel {
    /// Requests the port holds at most; beyond it, QUEUE FULL.
    pub queue_limit: u32,
    /// Round-trip time the link adds to every request through this port, µs.
    pub latency_us: f64,
}

/// A fault injected on a port, from then on.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PortFault {
    /// Link lost: requests in flight through the port fail at once, new ones are refused.
    Down,
    /// Link back (clears `down` only).
    Up,
    /// Every request through the port takes `factor` times as long.
    Slow { factor: f64 },
    /// Each request through the port fails with probability `error_rate`.
    Flaky { error_rate: f64 },
    /// Clears every fault.
    Healthy,
}

impl PortFault {
    pub fn problem(&self) -> Option<String> {
        match *self {
            PortFault::Slow { factor } if !(factor.is_finite() && factor >= 1.0) => {
                Some("slow.factor must be at least 1".into())
            }
            PortFault::Flaky { error_rate } if !(0.0..=1.0).contains(&error_rate) => {
                Some("flaky.error_rate must be between 0 and 1".into())
            }
            _ => None,
        }
    }
}

/// How the array answered a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Accepted,
    QueueFull,
    Busy,
    /// The port is down: a transport error, not congestion.
    PortDown,
}

#[derive(Debug, Clone)]
struct Waiting {
    id: u64,
    service_s: f64,
}

#[derive(Debug, Clone)]
struct LunState {
    model: LunModel,
    /// Servers in effect after capacity events.
    servers: u32,
    busy_units: u32,
    waiting: VecDeque<Waiting>,
    rng: SplitMix64,
}

#[derive(Debug, Clone)]
struct PortState {
    model: PortModel,
    outstanding: u32,
    down: bool,
    slow: f64,
    error_rate: f64,
    rng: SplitMix64,
}

/// A request the array holds.
#[derive(Debug, Clone, Copy)]
struct Pending {
    lun: usize,
    port: usize,
    submitted: f64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stage {
    /// A service unit finished the request (internal: the link delivers it later).
    Served { lun: usize },
    /// The answer reaches the initiator.
    Deliver { fail: bool },
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Event {
    at: f64,
    seq: u64,
    id: u64,
    stage: Stage,
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
    pub port: usize,
    pub at: f64,
    /// False: a transport error (port down, flaky link); the data was not transferred.
    pub ok: bool,
}

/// The array: ports and LUNs, seeded.
#[derive(Debug, Clone)]
pub struct EmulatedArray {
    ports: Vec<PortState>,
    luns: Vec<LunState>,
    pending: HashMap<u64, Pending>,
    events: BinaryHeap<Event>,
    seq: u64,
}

impl EmulatedArray {
    /// Any LUN is reachable through any port: which one a request takes is the initiator's
    /// choice (its path).
    pub fn new(ports: &[PortModel], luns: &[LunModel], seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        // LUNs draw first, so a one-port array replays the streams it had before ports had
        // generators of their own.
        let luns = luns
            .iter()
            .map(|model| LunState {
                servers: model.servers.max(1),
                model: model.clone(),
                busy_units: 0,
                waiting: VecDeque::new(),
                rng: rng.fork(),
            })
            .collect();
        EmulatedArray {
            ports: ports
                .iter()
                .map(|model| PortState {
                    model: model.clone(),
                    outstanding: 0,
                    down: false,
                    slow: 1.0,
                    error_rate: 0.0,
                    rng: rng.fork(),
                })
                .collect(),
            luns,
            pending: HashMap::new(),
            events: BinaryHeap::new(),
            seq: 0,
        }
    }

    /// Ports with only a queue limit (no link latency).
    pub fn port_limits(limits: &[u32]) -> Vec<PortModel> {
        limits
            .iter()
            .map(|&queue_limit| PortModel {
                queue_limit,
                latency_us: 0.0,
            })
            .collect()
    }

    /// Scales LUN `lun`'s servers to `percent` of its model (at least one). Requests already
    /// in service finish; fewer start from now on.
    pub fn set_capacity(&mut self, lun: usize, percent: f64) {
        if let Some(l) = self.luns.get_mut(lun) {
            l.servers = ((f64::from(l.model.servers) * percent / 100.0).round() as u32).max(1);
        }
    }

    /// Applies a fault to port `port` at `now`.
    pub fn set_port_fault(&mut self, now: f64, port: usize, fault: PortFault) {
        let Some(p) = self.ports.get_mut(port) else {
            return;
        };
        match fault {
            PortFault::Down => {
                if !p.down {
                    p.down = true;
                    let mut lost: Vec<u64> = self
                        .pending
                        .iter()
                        .filter(|(_, r)| r.port == port)
                        .map(|(id, _)| *id)
                        .collect();
                    lost.sort_unstable();
                    for id in lost {
                        self.push(now, id, Stage::Deliver { fail: true });
                    }
                }
            }
            PortFault::Up => p.down = false,
            PortFault::Slow { factor } => p.slow = factor.max(1.0),
            PortFault::Flaky { error_rate } => p.error_rate = error_rate.clamp(0.0, 1.0),
            PortFault::Healthy => {
                p.down = false;
                p.slow = 1.0;
                p.error_rate = 0.0;
            }
        }
    }

    /// A probe (TEST UNIT READY) through port `port`: answered unless the port is down.
    pub fn probe(&self, port: usize) -> bool {
        self.ports.get(port).is_some_and(|p| !p.down)
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

    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    pub fn port_outstanding(&self, port: usize) -> u32 {
        self.ports.get(port).map_or(0, |p| p.outstanding)
    }

    fn push(&mut self, at: f64, id: u64, stage: Stage) {
        self.seq += 1;
        self.events.push(Event {
            at,
            seq: self.seq,
            id,
            stage,
        });
    }

    /// Offers request `id` (unique per submission) to LUN `lun` through port `port` at `now`.
    pub fn submit(
        &mut self,
        now: f64,
        lun: usize,
        port: usize,
        id: u64,
        bytes: u64,
        write: bool,
    ) -> Admission {
        let (Some(l), Some(p)) = (self.luns.get_mut(lun), self.ports.get_mut(port)) else {
            return Admission::PortDown;
        };
        if p.down {
            return Admission::PortDown;
        }
        if p.outstanding >= p.model.queue_limit {
            return Admission::QueueFull;
        }
        if l.busy_units >= l.servers && l.waiting.len() as u32 >= l.model.busy_threshold {
            return Admission::Busy;
        }
        let slow = l.model.slow_pct > 0.0 && l.rng.next_f64() * 100.0 < l.model.slow_pct;
        let mean = if slow {
            l.model.slow_service_s(bytes)
        } else {
            l.model.fast_service_s(bytes, write)
        };
        let service_s = l.rng.exponential(mean);
        p.outstanding += 1;
        self.pending.insert(
            id,
            Pending {
                lun,
                port,
                submitted: now,
            },
        );
        if l.busy_units < l.servers {
            l.busy_units += 1;
            self.push(now + service_s, id, Stage::Served { lun });
        } else {
            l.waiting.push_back(Waiting { id, service_s });
        }
        Admission::Accepted
    }

    /// When the next event is due (a completion, or internal progress toward one).
    pub fn next_completion(&self) -> Option<f64> {
        self.events.peek().map(|e| e.at)
    }

    /// The next request answered by `now`, if any, doing the array's internal work due
    /// before it.
    pub fn complete_next(&mut self, now: f64) -> Option<ArrayCompletion> {
        loop {
            if self.events.peek()?.at > now {
                return None;
            }
            let e = self.events.pop()?;
            match e.stage {
                Stage::Served { lun } => {
                    let l = &mut self.luns[lun];
                    l.busy_units -= 1;
                    // After a capacity drop more units may be busy than exist; start work
                    // only below it.
                    if l.busy_units < l.servers {
                        if let Some(w) = l.waiting.pop_front() {
                            l.busy_units += 1;
                            let at = e.at + w.service_s;
                            self.push(at, w.id, Stage::Served { lun });
                        }
                    }
                    if let Some(r) = self.pending.get(&e.id).copied() {
                        let p = &self.ports[r.port];
                        // The whole trip through a slow port takes `slow` times as long;
                        // written so that a plain port delivers at exactly the service end.
                        let link = p.model.latency_us / 1e6;
                        let at = e.at + link + (p.slow - 1.0) * (e.at - r.submitted + link);
                        self.push(at, e.id, Stage::Deliver { fail: false });
                    }
                }
                Stage::Deliver { fail } => {
                    // A request failed by a port going down is answered once, then forgotten.
                    let Some(r) = self.pending.remove(&e.id) else {
                        continue;
                    };
                    let p = &mut self.ports[r.port];
                    p.outstanding -= 1;
                    let flaky = p.error_rate > 0.0 && p.rng.next_f64() < p.error_rate;
                    return Some(ArrayCompletion {
                        id: e.id,
                        lun: r.lun,
                        port: r.port,
                        at: e.at,
                        ok: !fail && !flaky,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Closed loop at depth `d` against one LUN for `secs`: (IOPS, mean latency s).
    fn closed_loop(d: u32, secs: f64, model: LunModel) -> (f64, f64, u64) {
        let mut a = EmulatedArray::new(&EmulatedArray::port_limits(&[1024]), &[model], 1);
        let mut started = std::collections::HashMap::new();
        let mut next_id = 0u64;
        let mut rejected = 0u64;
        for _ in 0..d {
            match a.submit(0.0, 0, 0, next_id, 4096, false) {
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
            if a.submit(t, 0, 0, next_id, 4096, false) == Admission::Accepted {
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
            &EmulatedArray::port_limits(&[20]),
            &[LunModel::default(), LunModel::default()],
            3,
        );
        let admissions: Vec<Admission> = (0..18)
            .map(|i| a.submit(0.0, 0, 0, i, 4096, false))
            .collect();
        // 16 in service, 1 waiting (busy_threshold 1), the 18th is BUSY.
        assert!(admissions[..17].iter().all(|x| *x == Admission::Accepted));
        assert_eq!(admissions[17], Admission::Busy);
        // The port holds 17; three more on the other LUN fill it to 20, then QUEUE FULL.
        for i in 0..3 {
            assert_eq!(
                a.submit(0.0, 1, 0, 100 + i, 4096, false),
                Admission::Accepted
            );
        }
        assert_eq!(a.submit(0.0, 1, 0, 200, 4096, false), Admission::QueueFull);
        assert_eq!(a.port_outstanding(0), 20);
    }

    #[test]
    fn a_capacity_drop_moves_the_knee() {
        let model = LunModel {
            busy_threshold: 1000,
            ..LunModel::default()
        };
        let mut a = EmulatedArray::new(&EmulatedArray::port_limits(&[1024]), &[model], 5);
        a.set_capacity(0, 50.0);
        assert_eq!(a.servers(0), 8);
        for i in 0..16 {
            a.submit(0.0, 0, 0, i, 4096, false);
        }
        assert_eq!(a.outstanding(0), 16);
        // Only 8 are in service: 8 service ends are scheduled.
        assert_eq!(a.events.len(), 8);
    }

    #[test]
    fn same_seed_same_completions() {
        let run = |seed| {
            let mut a = EmulatedArray::new(
                &EmulatedArray::port_limits(&[64]),
                &[LunModel::default()],
                seed,
            );
            for i in 0..32 {
                a.submit(0.0, 0, 0, i, 4096, i % 2 == 0);
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

    #[test]
    fn a_port_adds_its_latency_and_a_slow_port_multiplies_the_time() {
        let model = LunModel {
            read_base_us: 1000.0,
            unit_mib_per_s: 1e12,
            ..LunModel::default()
        };
        let ports = [
            PortModel {
                queue_limit: 64,
                latency_us: 0.0,
            },
            PortModel {
                queue_limit: 64,
                latency_us: 2000.0,
            },
        ];
        // Closed loop of one, port by port: mean latency ≈ service + link.
        let run = |port: usize, slow: f64| {
            let mut a = EmulatedArray::new(&ports, std::slice::from_ref(&model), 7);
            if slow > 1.0 {
                a.set_port_fault(0.0, port, PortFault::Slow { factor: slow });
            }
            let (mut now, mut sum) = (0.0, 0.0);
            for i in 0..4000 {
                assert_eq!(a.submit(now, 0, port, i, 4096, false), Admission::Accepted);
                let c = loop {
                    let t = a.next_completion().unwrap();
                    if let Some(c) = a.complete_next(t) {
                        break c;
                    }
                };
                assert!(c.ok && c.port == port);
                sum += c.at - now;
                now = c.at;
            }
            sum / 4000.0
        };
        let (fast, far, slow) = (run(0, 1.0), run(1, 1.0), run(0, 3.0));
        assert!((fast / 0.001 - 1.0).abs() < 0.05, "{fast}");
        assert!((far / 0.003 - 1.0).abs() < 0.05, "{far}");
        assert!((slow / 0.003 - 1.0).abs() < 0.05, "{slow}");
    }

    #[test]
    fn a_port_going_down_fails_what_it_holds_and_refuses_more_until_up() {
        let ports = EmulatedArray::port_limits(&[64, 64]);
        let mut a = EmulatedArray::new(&ports, &[LunModel::default()], 2);
        for i in 0..4 {
            a.submit(0.0, 0, (i % 2) as usize, i, 4096, false);
        }
        a.set_port_fault(0.001, 0, PortFault::Down);
        assert!(!a.probe(0) && a.probe(1));
        assert_eq!(a.submit(0.001, 0, 0, 9, 4096, false), Admission::PortDown);
        let mut answers = Vec::new();
        while let Some(t) = a.next_completion() {
            if let Some(c) = a.complete_next(t) {
                answers.push((c.id, c.ok, c.at));
            }
        }
        // Requests 0 and 2 (port 0) fail at the fault, once each; 1 and 3 finish well.
        assert_eq!(answers.len(), 4);
        assert!(
            answers
                .iter()
                .filter(|x| !x.1)
                .all(|x| x.0 % 2 == 0 && x.2 == 0.001)
        );
        assert_eq!(answers.iter().filter(|x| x.1).count(), 2);
        assert_eq!(a.port_outstanding(0), 0);
        a.set_port_fault(0.5, 0, PortFault::Up);
        assert_eq!(a.submit(0.5, 0, 0, 10, 4096, false), Admission::Accepted);
    }

    #[test]
    fn a_flaky_port_fails_about_its_error_rate() {
        let mut a = EmulatedArray::new(
            &EmulatedArray::port_limits(&[64]),
            &[LunModel::default()],
            4,
        );
        a.set_port_fault(0.0, 0, PortFault::Flaky { error_rate: 0.2 });
        let (mut now, mut failed) = (0.0, 0);
        for i in 0..5000 {
            a.submit(now, 0, 0, i, 4096, false);
            let c = loop {
                let t = a.next_completion().unwrap();
                if let Some(c) = a.complete_next(t) {
                    break c;
                }
            };
            failed += u32::from(!c.ok);
            now = c.at;
        }
        assert!((900..1100).contains(&failed), "{failed} of 5000");
    }
}
