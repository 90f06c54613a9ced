//! Deterministic simulation: the broker's scheduling logic ([`MClock`], the
//! [`QueueDepthController`]) driving the [`EmulatedArray`] on a virtual clock, with seeded
//! synthetic tenants. The same seed gives the same result, byte for byte.
//!
//! Per LUN, requests wait in the scheduler (mClock tags, or one FIFO for the `fifo` baseline)
//! and are dispatched while the LUN's in-flight count is below its window `D` (SFQ(D)), the sum
//! of the windows behind a port being capped by the port's budget. A request the array answers
//! with QUEUE FULL or BUSY is a congestion signal for the controller and is retried first, after
//! `retry_delay_us`, as a SCSI initiator retries it.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::array::{Admission, EmulatedArray, LunModel};
use crate::cost::CostModel;
use crate::depth::{DepthPolicy, Outcome, QueueDepthController};
use crate::mclock::{MClock, TenantPolicy};
use crate::metrics;
use crate::rng::SplitMix64;

/// How often controllers tick and windows are sampled (seconds).
const TICK_S: f64 = 0.01;
/// A runaway guard: far beyond any scenario's event count.
const MAX_STEPS: u64 = 2_000_000_000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimScenario {
    #[serde(default = "d_seed")]
    pub seed: u64,
    pub duration_s: f64,
    /// Seconds at the start left out of throughput and latency figures.
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default = "d_retry")]
    pub retry_delay_us: f64,
    #[serde(default)]
    pub cost: CostModel,
    #[serde(rename = "port")]
    pub ports: Vec<PortSpec>,
    #[serde(rename = "lun")]
    pub luns: Vec<LunSpec>,
    #[serde(rename = "tenant")]
    pub tenants: Vec<TenantSpec>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
    /// Policies to run side by side: depth policies in short form (`fixed:64`, `aimd`,
    /// `latency`, `adaptive`) applied to every LUN, and `fifo` (no scheduling, the LUNs' own
    /// depth policies). Empty: run the scenario as written.
    #[serde(default)]
    pub compare: Vec<String>,
    /// A tenant whose tail latency is compared with a solo run of it (same policy, no other
    /// tenants): `victim_p99_ratio` and `victim_p999_ratio`.
    #[serde(default)]
    pub victim: Option<String>,
}

fn d_seed() -> u64 {
    1
}
fn d_retry() -> f64 {
    1000.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    /// The array's port queue: beyond it, QUEUE FULL.
    pub queue_limit: u32,
    /// The broker's budget: the windows of the LUNs behind this port sum to at most this.
    #[serde(default)]
    pub budget: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SchedulerKind {
    /// mClock tags per tenant.
    #[default]
    Mclock,
    /// One FIFO in arrival order: no scheduling (the baseline).
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    pub name: String,
    pub port: String,
    #[serde(default)]
    pub model: LunModel,
    #[serde(default)]
    pub depth: DepthPolicy,
    #[serde(default)]
    pub scheduler: SchedulerKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSpec {
    pub name: String,
    pub lun: String,
    #[serde(flatten)]
    pub policy: TenantPolicy,
    pub workload: Workload,
    #[serde(default)]
    pub start_s: f64,
    #[serde(default)]
    pub stop_s: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Workload {
    /// Keeps `depth` requests outstanding (fio's iodepth).
    Closed {
        depth: u32,
        #[serde(default = "d_bytes")]
        bytes: u64,
        #[serde(default = "d_read_pct")]
        read_pct: f64,
    },
    /// Poisson arrivals at `rate_iops`, however long they wait.
    Open {
        rate_iops: f64,
        #[serde(default = "d_bytes")]
        bytes: u64,
        #[serde(default = "d_read_pct")]
        read_pct: f64,
    },
}

fn d_bytes() -> u64 {
    4096
}
fn d_read_pct() -> f64 {
    100.0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub at_s: f64,
    pub lun: String,
    /// Capacity of the LUN from then on, percent of its model.
    pub capacity_pct: f64,
}

/// One tenant's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantResult {
    pub name: String,
    pub weight: f64,
    pub iops: f64,
    pub mib_per_s: f64,
    /// Guest-visible latency (queueing in the broker + device), µs.
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    /// Mean device latency (DAVG) and broker queueing (KAVG), µs.
    pub device_lat_mean_us: f64,
    pub queue_lat_mean_us: f64,
    /// Completions in each whole second after warm-up.
    pub per_second: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LunResult {
    pub name: String,
    pub policy: String,
    /// `(time s, window)` every 100 ms.
    pub window: Vec<(f64, u32)>,
    pub congestion_signals: u64,
    pub halvings: u64,
    pub latency_target_us: Option<f64>,
    pub iops: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimResult {
    pub seed: u64,
    pub duration_s: f64,
    pub tenants: Vec<TenantResult>,
    pub luns: Vec<LunResult>,
    pub aggregate_iops: f64,
    /// Jain's index of weight-normalised IOPS over all tenants.
    pub jain: Option<f64>,
    pub max_share_error: f64,
    pub mean_share_error: f64,
    pub min_max_ratio: Option<f64>,
    /// Share of (tenant, second) windows in which a tenant with a reservation got at least 99 %
    /// of it; `None` without reservations.
    pub reservation_conformance: Option<f64>,
    /// The victim's p99 (p99.9) with everyone ÷ alone; set by [`run_compare`].
    pub victim_p99_ratio: Option<f64>,
    pub victim_p999_ratio: Option<f64>,
    /// Aggregate IOPS ÷ the `fifo` run's, when `fifo` is compared.
    pub work_conservation: Option<f64>,
}

#[derive(Debug, Clone)]
struct Request {
    id: u64,
    tenant: usize,
    bytes: u64,
    write: bool,
    arrived: f64,
    dispatched: f64,
    epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Ev {
    Arrival(usize),
    Retry(usize),
    Tick,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Timed {
    at: f64,
    seq: u64,
    ev: Ev,
}
impl Eq for Timed {}
impl Ord for Timed {
    fn cmp(&self, o: &Self) -> Ordering {
        o.at.total_cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}
impl PartialOrd for Timed {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

enum LunQueue {
    Mclock(MClock<Request>),
    Fifo(VecDeque<Request>),
}

struct LunRun {
    port: usize,
    queue: LunQueue,
    retry: VecDeque<Request>,
    retry_at: f64,
    in_flight: u32,
    controller: QueueDepthController,
    window_log: Vec<(f64, u32)>,
    congestion: u64,
    completions: u64,
    /// Tenant index in the LUN's mClock → global tenant index.
    members: Vec<usize>,
    /// Requests at the array, by id.
    at_array: std::collections::HashMap<u64, Request>,
    /// When a retry event is pending for this LUN.
    retry_scheduled: Option<f64>,
}

struct TenantRun {
    lun: usize,
    local: usize,
    rng: SplitMix64,
    latencies: Vec<f64>,
    device_sum: f64,
    queue_sum: f64,
    measured: u64,
    bytes: u64,
    per_second: Vec<u64>,
}

/// Runs the scenario once per entry of `compare` (or once as written), in order.
pub fn run_compare(s: &SimScenario) -> Result<Vec<(String, SimResult)>, String> {
    let mut variants: Vec<(String, SimScenario)> = Vec::new();
    if s.compare.is_empty() {
        variants.push(("as-written".to_string(), s.clone()));
    }
    for (i, name) in s.compare.iter().enumerate() {
        let mut variant = s.clone();
        if name == "fifo" {
            for l in &mut variant.luns {
                l.scheduler = SchedulerKind::Fifo;
            }
        } else {
            let policy = DepthPolicy::from_short(name).ok_or_else(|| {
                format!(
                    "compare[{i}]: '{name}' is not a policy (use fifo, fixed:N, aimd, latency, latency:MS, adaptive)"
                )
            })?;
            for l in &mut variant.luns {
                l.depth = policy.clone();
            }
        }
        variants.push((name.clone(), variant));
    }
    let victim = match &s.victim {
        Some(v) => Some(
            s.tenants
                .iter()
                .position(|t| &t.name == v)
                .ok_or_else(|| format!("victim: no tenant named '{v}'"))?,
        ),
        None => None,
    };
    let mut out = Vec::new();
    for (name, variant) in variants {
        let mut result = run(&variant)?;
        if let Some(v) = victim {
            let mut solo = variant.clone();
            solo.tenants = vec![variant.tenants[v].clone()];
            let alone = run(&solo)?;
            let ratio = |with: f64, without: f64| (without > 0.0).then(|| with / without);
            result.victim_p99_ratio =
                ratio(result.tenants[v].lat_p99_us, alone.tenants[0].lat_p99_us);
            result.victim_p999_ratio =
                ratio(result.tenants[v].lat_p999_us, alone.tenants[0].lat_p999_us);
        }
        out.push((name, result));
    }
    if let Some(fifo) = out
        .iter()
        .find(|(n, _)| n == "fifo")
        .map(|(_, r)| r.aggregate_iops)
    {
        for (_, r) in &mut out {
            r.work_conservation = (fifo > 0.0).then(|| r.aggregate_iops / fifo);
        }
    }
    Ok(out)
}

/// A text table of a comparison: per policy the fairness measures, the window over time, and
/// each tenant's throughput and latency.
pub fn render(results: &[(String, SimResult)]) -> String {
    use std::fmt::Write as _;
    let opt = |v: Option<f64>, pct: bool| match v {
        Some(x) if pct => format!("{:.1}%", x * 100.0),
        Some(x) => format!("{x:.3}"),
        None => "-".to_string(),
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:>8} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "policy",
        "IOPS",
        "Jain",
        "min/max",
        "max err",
        "mean err",
        "resv",
        "v.p99",
        "v.p999",
        "work",
        "cong"
    );
    for (name, r) in results {
        let _ = writeln!(
            s,
            "{:<12} {:>8.0} {:>7} {:>7} {:>8} {:>8} {:>7} {:>7} {:>7} {:>7} {:>6}",
            name,
            r.aggregate_iops,
            opt(r.jain, false),
            opt(r.min_max_ratio, false),
            opt(Some(r.max_share_error), true),
            opt(Some(r.mean_share_error), true),
            opt(r.reservation_conformance, true),
            opt(r.victim_p99_ratio, false),
            opt(r.victim_p999_ratio, false),
            opt(r.work_conservation, false),
            r.luns.iter().map(|l| l.congestion_signals).sum::<u64>()
        );
    }
    let _ = writeln!(
        s,
        "(Jain, min/max and share errors on weight-normalised IOPS; resv: 1 s windows at ≥ 99 % of the \
         reservation; v.p99/v.p999: victim tail with everyone ÷ alone; work: IOPS ÷ fifo's; cong: \
         QUEUE FULL/BUSY answers)"
    );
    let _ = writeln!(s, "\nwindow D per LUN, 1 s means:");
    for (name, r) in results {
        for l in &r.luns {
            let mut means = Vec::new();
            let mut sec = 0.0;
            while sec < r.duration_s {
                let v: Vec<f64> = l
                    .window
                    .iter()
                    .filter(|(t, _)| *t >= sec && *t < sec + 1.0)
                    .map(|x| f64::from(x.1))
                    .collect();
                if !v.is_empty() {
                    means.push(format!("{:.0}", v.iter().sum::<f64>() / v.len() as f64));
                }
                sec += 1.0;
            }
            let _ = writeln!(s, "  {:<12} {:<8} {}", name, l.name, means.join(" "));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<12} {:<12} {:>6} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "policy",
        "tenant",
        "weight",
        "IOPS",
        "MiB/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "DAVG us",
        "KAVG us"
    );
    for (name, r) in results {
        for t in &r.tenants {
            let _ = writeln!(
                s,
                "{:<12} {:<12} {:>6} {:>9.0} {:>9.2} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
                name,
                t.name,
                t.weight,
                t.iops,
                t.mib_per_s,
                t.lat_p50_us,
                t.lat_p99_us,
                t.lat_p999_us,
                t.device_lat_mean_us,
                t.queue_lat_mean_us
            );
        }
    }
    s
}

/// Problems with a scenario, naming the entry and field.
pub fn validate(s: &SimScenario) -> Result<(), String> {
    if s.duration_s.is_nan() || s.duration_s <= 0.0 {
        return Err("duration_s must be positive".into());
    }
    if s.warmup_s < 0.0 || s.warmup_s >= s.duration_s {
        return Err("warmup_s must be at least 0 and less than duration_s".into());
    }
    for (i, l) in s.luns.iter().enumerate() {
        if !s.ports.iter().any(|p| p.name == l.port) {
            return Err(format!("lun[{i}].port: no port named '{}'", l.port));
        }
        if l.model.servers == 0 {
            return Err(format!("lun[{i}].model.servers must be at least 1"));
        }
    }
    for (i, t) in s.tenants.iter().enumerate() {
        if !s.luns.iter().any(|l| l.name == t.lun) {
            return Err(format!("tenant[{i}].lun: no LUN named '{}'", t.lun));
        }
        if let Some(p) = t.policy.problem() {
            return Err(format!("tenant[{i}] ({}): {p}", t.name));
        }
        match &t.workload {
            Workload::Closed { depth: 0, .. } => {
                return Err(format!("tenant[{i}].workload.depth must be at least 1"));
            }
            Workload::Open { rate_iops, .. } if rate_iops.is_nan() || *rate_iops <= 0.0 => {
                return Err(format!("tenant[{i}].workload.rate_iops must be positive"));
            }
            _ => {}
        }
    }
    for (i, e) in s.events.iter().enumerate() {
        if !s.luns.iter().any(|l| l.name == e.lun) {
            return Err(format!("event[{i}].lun: no LUN named '{}'", e.lun));
        }
    }
    Ok(())
}

/// Runs the scenario.
pub fn run(s: &SimScenario) -> Result<SimResult, String> {
    validate(s)?;
    let mut rng = SplitMix64::new(s.seed);
    let port_index = |name: &str| s.ports.iter().position(|p| p.name == name).unwrap_or(0);
    let lun_index = |name: &str| s.luns.iter().position(|l| l.name == name).unwrap_or(0);
    let array_luns: Vec<(usize, LunModel)> = s
        .luns
        .iter()
        .map(|l| (port_index(&l.port), l.model.clone()))
        .collect();
    let limits: Vec<u32> = s.ports.iter().map(|p| p.queue_limit).collect();
    let mut array = EmulatedArray::new(&limits, &array_luns, rng.next_u64());

    let mut luns: Vec<LunRun> = s
        .luns
        .iter()
        .map(|l| {
            let members: Vec<usize> = s
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| t.lun == l.name)
                .map(|(i, _)| i)
                .collect();
            let queue = match l.scheduler {
                SchedulerKind::Mclock => LunQueue::Mclock(MClock::new(
                    members
                        .iter()
                        .map(|&i| s.tenants[i].policy.clone())
                        .collect(),
                    s.cost,
                )),
                SchedulerKind::Fifo => LunQueue::Fifo(VecDeque::new()),
            };
            LunRun {
                port: port_index(&l.port),
                queue,
                retry: VecDeque::new(),
                retry_at: 0.0,
                in_flight: 0,
                controller: QueueDepthController::new(l.depth.clone()),
                window_log: Vec::new(),
                congestion: 0,
                completions: 0,
                members,
                at_array: std::collections::HashMap::new(),
                retry_scheduled: None,
            }
        })
        .collect();
    let mut tenants: Vec<TenantRun> = s
        .tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let lun = lun_index(&t.lun);
            TenantRun {
                lun,
                local: luns[lun].members.iter().position(|&m| m == i).unwrap_or(0),
                rng: rng.fork(),
                latencies: Vec::new(),
                device_sum: 0.0,
                queue_sum: 0.0,
                measured: 0,
                bytes: 0,
                per_second: vec![0; (s.duration_s - s.warmup_s).ceil() as usize],
            }
        })
        .collect();

    let mut heap: BinaryHeap<Timed> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |heap: &mut BinaryHeap<Timed>, at: f64, ev: Ev| {
        seq += 1;
        heap.push(Timed { at, seq, ev });
    };
    for (i, t) in s.tenants.iter().enumerate() {
        match t.workload {
            Workload::Closed { depth, .. } => {
                for _ in 0..depth {
                    push(&mut heap, t.start_s, Ev::Arrival(i));
                }
            }
            Workload::Open { .. } => push(&mut heap, t.start_s, Ev::Arrival(i)),
        }
    }
    push(&mut heap, 0.0, Ev::Tick);
    let mut events: Vec<&EventSpec> = s.events.iter().collect();
    events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
    let mut next_event = 0usize;
    let mut next_id = 0u64;
    let mut now = 0.0;

    let mut iterations = 0u64;
    loop {
        iterations += 1;
        if iterations > MAX_STEPS {
            return Err(format!(
                "simulation made no progress after {MAX_STEPS} steps at t = {now} s (a bug)"
            ));
        }
        // The next thing to happen: a timed event, an array completion, or a tag becoming
        // eligible (limits and reservations).
        let t_heap = heap.peek().map(|e| e.at);
        let t_array = array.next_completion();
        let t_elig = luns
            .iter()
            .filter_map(|l| match &l.queue {
                LunQueue::Mclock(m) if l.in_flight < effective_window(&luns, l, s) => {
                    m.next_eligible().filter(|t| *t > now)
                }
                _ => None,
            })
            .min_by(|a, b| a.total_cmp(b));
        let next = [t_heap, t_array, t_elig]
            .into_iter()
            .flatten()
            .min_by(|a, b| a.total_cmp(b));
        let Some(next) = next else { break };
        if next > s.duration_s {
            break;
        }
        now = next.max(now);
        while next_event < events.len() && events[next_event].at_s <= now {
            let e = events[next_event];
            array.set_capacity(lun_index(&e.lun), e.capacity_pct);
            next_event += 1;
        }

        if t_array == Some(next) {
            let Some(c) = array.complete_next(now) else {
                continue;
            };
            let lun = c.lun;
            let Some(req) = luns[lun].at_array.remove(&c.id) else {
                continue;
            };
            let l = &mut luns[lun];
            l.in_flight -= 1;
            l.completions += 1;
            l.controller
                .on_completion(now, req.epoch, Outcome::Good, now - req.dispatched);
            let t = &mut tenants[req.tenant];
            if now >= s.warmup_s {
                t.latencies.push(now - req.arrived);
                t.device_sum += now - req.dispatched;
                t.queue_sum += req.dispatched - req.arrived;
                t.measured += 1;
                t.bytes += req.bytes;
                let sec = (now - s.warmup_s) as usize;
                if let Some(slot) = t.per_second.get_mut(sec) {
                    *slot += 1;
                }
            }
            if let Workload::Closed { .. } = s.tenants[req.tenant].workload {
                push(&mut heap, now, Ev::Arrival(req.tenant));
            }
            dispatch(&mut luns, lun, &mut array, now, s);
            schedule_retries(&mut luns, &mut heap, &mut push, now);
            continue;
        }
        if t_heap == Some(next) {
            let Some(ev) = heap.pop() else { continue };
            match ev.ev {
                Ev::Arrival(i) => {
                    let spec = &s.tenants[i];
                    if spec.stop_s.is_some_and(|stop| now >= stop) {
                        continue;
                    }
                    let (bytes, read_pct) = match spec.workload {
                        Workload::Closed {
                            bytes, read_pct, ..
                        }
                        | Workload::Open {
                            bytes, read_pct, ..
                        } => (bytes, read_pct),
                    };
                    let t = &mut tenants[i];
                    let write = t.rng.next_f64() * 100.0 >= read_pct;
                    if let Workload::Open { rate_iops, .. } = spec.workload {
                        let gap = t.rng.exponential(1.0 / rate_iops);
                        push(&mut heap, now + gap, Ev::Arrival(i));
                    }
                    let req = Request {
                        id: next_id,
                        tenant: i,
                        bytes,
                        write,
                        arrived: now,
                        dispatched: now,
                        epoch: 0,
                    };
                    next_id += 1;
                    let lun = t.lun;
                    let local = t.local;
                    match &mut luns[lun].queue {
                        LunQueue::Mclock(m) => m.enqueue(local, req, bytes, now),
                        LunQueue::Fifo(q) => q.push_back(req),
                    }
                    dispatch(&mut luns, lun, &mut array, now, s);
                }
                Ev::Retry(lun) => {
                    luns[lun].retry_scheduled = None;
                    dispatch(&mut luns, lun, &mut array, now, s);
                }
                Ev::Tick => {
                    for lun in 0..luns.len() {
                        let outstanding = luns[lun].in_flight;
                        luns[lun].controller.tick(now, outstanding);
                        let w = luns[lun].controller.window();
                        let log = &mut luns[lun].window_log;
                        let sample_due = log.last().is_none_or(|(t, _)| now - t >= 0.1 - 1e-9);
                        if sample_due {
                            log.push(((now * 1000.0).round() / 1000.0, w));
                        }
                        dispatch(&mut luns, lun, &mut array, now, s);
                    }
                    push(&mut heap, now + TICK_S, Ev::Tick);
                }
            }
            schedule_retries(&mut luns, &mut heap, &mut push, now);
            continue;
        }
        // A tag became eligible.
        for lun in 0..luns.len() {
            dispatch(&mut luns, lun, &mut array, now, s);
        }
        schedule_retries(&mut luns, &mut heap, &mut push, now);
    }

    let measured_s = s.duration_s - s.warmup_s;
    let tenant_results: Vec<TenantResult> = s
        .tenants
        .iter()
        .zip(&tenants)
        .map(|(spec, t)| {
            let us = |q: f64| metrics::percentile(&t.latencies, q).map_or(0.0, |v| v * 1e6);
            let n = t.measured.max(1) as f64;
            TenantResult {
                name: spec.name.clone(),
                weight: spec.policy.weight,
                iops: t.measured as f64 / measured_s,
                mib_per_s: t.bytes as f64 / measured_s / 1048576.0,
                lat_p50_us: us(0.50),
                lat_p99_us: us(0.99),
                lat_p999_us: us(0.999),
                device_lat_mean_us: t.device_sum / n * 1e6,
                queue_lat_mean_us: t.queue_sum / n * 1e6,
                per_second: t.per_second.clone(),
            }
        })
        .collect();
    let iops: Vec<f64> = tenant_results.iter().map(|t| t.iops).collect();
    let weights: Vec<f64> = tenant_results.iter().map(|t| t.weight).collect();
    let normalised: Vec<f64> = iops.iter().zip(&weights).map(|(i, w)| i / w).collect();
    let (max_err, mean_err) = metrics::share_error_max_mean(&iops, &weights);
    let mut windows = 0u64;
    let mut met = 0u64;
    for (spec, t) in s.tenants.iter().zip(&tenant_results) {
        let r = spec.policy.reservation_iops;
        if r > 0.0 {
            for n in &t.per_second {
                windows += 1;
                if *n as f64 >= 0.99 * r {
                    met += 1;
                }
            }
        }
    }
    Ok(SimResult {
        min_max_ratio: metrics::min_max_ratio(&normalised),
        reservation_conformance: (windows > 0).then(|| met as f64 / windows as f64),
        victim_p99_ratio: None,
        victim_p999_ratio: None,
        work_conservation: None,
        seed: s.seed,
        duration_s: s.duration_s,
        aggregate_iops: iops.iter().sum(),
        jain: metrics::jain(&normalised),
        max_share_error: max_err,
        mean_share_error: mean_err,
        tenants: tenant_results,
        luns: s
            .luns
            .iter()
            .zip(&luns)
            .map(|(spec, l)| LunResult {
                name: spec.name.clone(),
                policy: spec.depth.name(),
                window: l.window_log.clone(),
                congestion_signals: l.congestion,
                halvings: l.controller.halvings(),
                latency_target_us: l.controller.target_s().map(|t| t * 1e6),
                iops: l.completions as f64 / s.duration_s,
            })
            .collect(),
    })
}

/// Makes sure every LUN holding a rejected request has a retry event at its retry time.
fn schedule_retries(
    luns: &mut [LunRun],
    heap: &mut BinaryHeap<Timed>,
    push: &mut impl FnMut(&mut BinaryHeap<Timed>, f64, Ev),
    now: f64,
) {
    // A retry already due waits for the window to open: the next completion dispatches it.
    for (i, l) in luns.iter_mut().enumerate() {
        if !l.retry.is_empty() && l.retry_scheduled.is_none() && l.retry_at > now {
            l.retry_scheduled = Some(l.retry_at);
            push(heap, l.retry_at, Ev::Retry(i));
        }
    }
}

/// The LUN's window after the port budget: when the windows behind a port add up to more than
/// its budget, each gets its proportional part (at least one).
fn effective_window(luns: &[LunRun], l: &LunRun, s: &SimScenario) -> u32 {
    let w = l.controller.window();
    let Some(budget) = s.ports.get(l.port).and_then(|p| p.budget) else {
        return w;
    };
    let total: u32 = luns
        .iter()
        .filter(|o| o.port == l.port)
        .map(|o| o.controller.window())
        .sum();
    if total <= budget {
        return w;
    }
    ((u64::from(w) * u64::from(budget) / u64::from(total.max(1))) as u32).max(1)
}

fn dispatch(luns: &mut [LunRun], lun: usize, array: &mut EmulatedArray, now: f64, s: &SimScenario) {
    loop {
        let window = effective_window(luns, &luns[lun], s);
        let l = &mut luns[lun];
        if l.in_flight >= window {
            return;
        }
        let from_retry = !l.retry.is_empty();
        let req = if from_retry {
            if l.retry_at > now {
                return;
            }
            l.retry.pop_front()
        } else {
            match &mut l.queue {
                LunQueue::Mclock(m) => m.dispatch(now).map(|(_, r, _)| r),
                LunQueue::Fifo(q) => q.pop_front(),
            }
        };
        let Some(mut req) = req else { return };
        // Device latency runs from the first attempt: time lost to BUSY/QUEUE FULL retries is
        // the LUN's, and it is what a latency controller must see when the array bounces
        // requests instead of queueing them.
        if !from_retry {
            req.dispatched = now;
        }
        req.epoch = l.controller.epoch();
        match array.submit(now, lun, req.id, req.bytes, req.write) {
            Admission::Accepted => {
                l.in_flight += 1;
                l.at_array.insert(req.id, req);
            }
            Admission::QueueFull | Admission::Busy => {
                l.congestion += 1;
                l.controller
                    .on_completion(now, req.epoch, Outcome::Congestion, 0.0);
                l.retry.push_front(req);
                l.retry_at = now + s.retry_delay_us / 1e6;
                return;
            }
        }
    }
}
