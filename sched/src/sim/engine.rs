//! The engine: one run of a scenario on the virtual clock — arrivals, the LUN dispatchers
//! (`crate::dispatch`, as in the broker), the array model, events, ticks and the figures.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::*;
use crate::array::{EmulatedArray, LunModel, PortModel};
use crate::depth::QueueDepthController;
use crate::dispatch::{Admitted, Attempted, LunDispatch, Source, Step, port_share};
use crate::mclock::TenantPolicy;
use crate::metrics;
use crate::path::{PathGroup, PathSet};
use crate::rng::SplitMix64;
use crate::sim_pool::{Admit, Held, PoolRun};

/// How often controllers tick and windows are sampled (seconds).
const TICK_S: f64 = 0.01;
/// A runaway guard: far beyond any scenario's event count.
const MAX_STEPS: u64 = 2_000_000_000;

#[derive(Debug, Clone)]
struct Request {
    tenant: usize,
    bytes: u64,
    write: bool,
    arrived: f64,
    dispatched: f64,
    epoch: u64,
    /// This attempt: its path and when it left.
    path: usize,
    attempt_at: f64,
    /// When a path failed it, if one did (for the failover time).
    failed_at: Option<f64>,
}

impl Attempted for Request {
    fn failed_at(&mut self) -> &mut Option<f64> {
        &mut self.failed_at
    }
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

struct LunRun {
    /// The array LUN this lane's requests go to (its own index without hosts).
    array_lun: usize,
    /// The port the port budget is counted on (the first path's).
    port: usize,
    /// The dispatch state and rule the broker runs too.
    d: LunDispatch<Request>,
    window_log: Vec<(f64, u32)>,
    completions: u64,
    /// Tenant index in the LUN's mClock → global tenant index.
    members: Vec<usize>,
    /// Requests at the array, by id.
    at_array: std::collections::HashMap<u64, Request>,
    /// When a retry event is pending for this LUN.
    retry_scheduled: Option<f64>,
    /// Array port of each path.
    path_ports: Vec<usize>,
    path_per_second: Vec<Vec<u64>>,
    /// Good completions and their summed device latency (s) in each second after warm-up.
    per_second: Vec<u64>,
    per_second_lat_s: Vec<f64>,
    /// BUSY/QUEUE FULL answers in each second after warm-up.
    per_second_refused: Vec<u64>,
    reissued_ok: u64,
    max_failover_s: Option<f64>,
    /// Requests failed for want of a path, to be answered by the main loop.
    failed: Vec<Request>,
    attempts: u64,
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
    /// Cost completed in each second after warm-up (the scheduler's units).
    per_second_cost: Vec<f64>,
    /// Control ticks in each second in which the tenant had requests waiting in the broker.
    backlog_ticks: Vec<u32>,
    errors: u64,
    first_error_s: Option<f64>,
    last_error_s: Option<f64>,
}

impl TenantRun {
    /// A request of this tenant answered with an I/O error at `now`.
    fn note_error(&mut self, now: f64) {
        self.errors += 1;
        self.first_error_s.get_or_insert(now);
        self.last_error_s = Some(now);
    }
}

/// Runs the scenario.
pub fn run(original: &SimScenario) -> Result<SimResult, String> {
    validate(original)?;
    // Several hosts: one lane (dispatcher and window) per LUN and host, one array LUN.
    let lanes = super::hosts::expand(original);
    let s = &lanes.scenario;
    let mut rng = SplitMix64::new(s.seed);
    let port_index = |name: &str| s.ports.iter().position(|p| p.name == name).unwrap_or(0);
    let array_index = |name: &str| {
        original
            .luns
            .iter()
            .position(|l| l.name == name)
            .unwrap_or(0)
    };
    let lun_index = |name: &str| s.luns.iter().position(|l| l.name == name).unwrap_or(0);
    let port_models: Vec<PortModel> = s.ports.iter().map(PortSpec::model).collect();
    let lun_models: Vec<LunModel> = original.luns.iter().map(|l| l.model()).collect();
    let mut array = EmulatedArray::new(&port_models, &lun_models, rng.next_u64());
    let seconds = (s.duration_s - s.warmup_s).ceil() as usize;

    let mut luns: Vec<LunRun> = s
        .luns
        .iter()
        .zip(&lanes.array_lun)
        .map(|(l, &array_lun)| {
            let members: Vec<usize> = s
                .tenants
                .iter()
                .enumerate()
                .filter(|(_, t)| t.lun == l.name)
                .map(|(i, _)| i)
                .collect();
            let tenant_policies: Vec<TenantPolicy> = members
                .iter()
                .map(|&i| s.tenants[i].policy.clone())
                .collect();
            let paths = l.resolved_paths();
            let path_ports: Vec<usize> = paths
                .iter()
                .map(|p| port_index(p.port.as_deref().unwrap_or_default()))
                .collect();
            let groups: Vec<(PathGroup, u32)> =
                paths.iter().map(|p| (p.group, p.max_in_flight)).collect();
            LunRun {
                array_lun,
                port: path_ports.first().copied().unwrap_or(0),
                d: LunDispatch::new(
                    l.scheduler,
                    tenant_policies,
                    s.cost,
                    l.depth_policy(),
                    PathSet::new(&groups, l.multipath.clone()),
                ),
                window_log: Vec::new(),
                completions: 0,
                members,
                at_array: std::collections::HashMap::new(),
                retry_scheduled: None,
                path_per_second: vec![vec![0; seconds]; path_ports.len()],
                per_second: vec![0; seconds],
                per_second_lat_s: vec![0.0; seconds],
                per_second_refused: vec![0; seconds],
                path_ports,
                reissued_ok: 0,
                max_failover_s: None,
                failed: Vec::new(),
                attempts: 0,
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
                per_second: vec![0; seconds],
                per_second_cost: vec![0.0; seconds],
                backlog_ticks: vec![0; seconds],
                errors: 0,
                first_error_s: None,
                last_error_s: None,
            }
        })
        .collect();

    let mut pools: Vec<PoolRun<Request>> = s.pools.iter().map(PoolRun::new).collect();
    let lun_pool: Vec<Option<usize>> = s
        .luns
        .iter()
        .map(|l| {
            l.pool
                .as_ref()
                .and_then(|name| s.pools.iter().position(|p| &p.name == name))
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
    let mut events: Vec<(f64, EventAction)> = s
        .events
        .iter()
        .map(|e| e.action().map(|a| (e.at_s, a)))
        .collect::<Result<_, _>>()?;
    events.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut next_event = 0usize;
    let mut now = 0.0;

    let mut iterations = 0u64;
    loop {
        iterations += 1;
        if iterations > MAX_STEPS {
            return Err(format!(
                "simulation made no progress after {MAX_STEPS} steps at t = {now} s (a bug)"
            ));
        }
        // Requests failed for want of a path are answered (with an error) here.
        for l in &mut luns {
            for req in std::mem::take(&mut l.failed) {
                tenants[req.tenant].note_error(now);
                if let Workload::Closed { .. } = s.tenants[req.tenant].workload {
                    // fio with continue_on_error would reissue at once; a short pause keeps a
                    // failing closed loop from spinning at one instant.
                    push(
                        &mut heap,
                        now + s.retry_delay_us / 1e6,
                        Ev::Arrival(req.tenant),
                    );
                }
            }
        }
        // The next thing to happen: a timed event, an array completion, or a tag becoming
        // eligible (limits and reservations).
        let t_heap = heap.peek().map(|e| e.at);
        let t_array = array.next_completion();
        let t_elig = luns
            .iter()
            .filter_map(|l| {
                l.d.next_eligible(effective_window(&luns, l, s))
                    .filter(|t| *t > now)
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
        while next_event < events.len() && events[next_event].0 <= now {
            match &events[next_event].1 {
                EventAction::Capacity { lun, pct } => array.set_capacity(array_index(lun), *pct),
                EventAction::Fault { port, fault } => {
                    array.set_port_fault(now, port_index(port), *fault)
                }
                EventAction::Policy {
                    lun,
                    depth,
                    selector,
                } => {
                    // Every host's lane of the LUN, each with its host's share.
                    let target = array_index(lun);
                    for (k, l) in luns.iter_mut().enumerate() {
                        if lanes.array_lun[k] != target {
                            continue;
                        }
                        if let Some(d) = depth {
                            let d = d.clone().for_host_share(lanes.share[k]);
                            l.d.controller = QueueDepthController::new(d);
                        }
                        if let Some(sel) = selector {
                            l.d.paths.set_selector(*sel);
                        }
                    }
                }
            }
            next_event += 1;
        }

        if t_array == Some(next) {
            let Some(c) = array.complete_next(now) else {
                continue;
            };
            // The lane (a host's dispatcher) is in the attempt's id; `c.lun` is the array's.
            let lun = (c.id >> 40) as usize;
            // Gone: the request timed out on its path and was re-issued.
            let Some(req) = luns[lun].at_array.remove(&c.id) else {
                continue;
            };
            let l = &mut luns[lun];
            if !c.ok {
                let path = req.path;
                l.d.failed(req, path, now, "transport error");
                dispatch(&mut luns, lun, &mut array, now, s);
                schedule_retries(&mut luns, &mut heap, &mut push, now);
                continue;
            }
            l.d.completed(
                req.path,
                now,
                req.epoch,
                now - req.dispatched,
                now - req.attempt_at,
                req.bytes,
            );
            if let Some(failed_at) = req.failed_at {
                l.reissued_ok += 1;
                let f = now - failed_at;
                l.max_failover_s = Some(l.max_failover_s.map_or(f, |m: f64| m.max(f)));
            }
            l.completions += 1;
            if now >= s.warmup_s {
                let sec = (now - s.warmup_s) as usize;
                if let Some(slot) = l
                    .path_per_second
                    .get_mut(req.path)
                    .and_then(|v| v.get_mut(sec))
                {
                    *slot += 1;
                }
                if let (Some(n), Some(sum)) =
                    (l.per_second.get_mut(sec), l.per_second_lat_s.get_mut(sec))
                {
                    *n += 1;
                    *sum += now - req.dispatched;
                }
            }
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
                if let Some(slot) = t.per_second_cost.get_mut(sec) {
                    *slot += s.cost.cost(req.bytes);
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
                        tenant: i,
                        bytes,
                        write,
                        arrived: now,
                        dispatched: now,
                        epoch: 0,
                        path: 0,
                        attempt_at: now,
                        failed_at: None,
                    };
                    let lun = t.lun;
                    let local = t.local;
                    if let Some(p) = lun_pool[lun] {
                        let alloc = write && t.rng.next_f64() * 100.0 < spec.alloc_pct;
                        match pools[p].admit(i, alloc, now) {
                            Admit::Go => {}
                            Admit::Hold => {
                                pools[p].hold(Held {
                                    req,
                                    tenant: i,
                                    alloc,
                                    since: now,
                                });
                                continue;
                            }
                            Admit::Error => {
                                // Answered at once; a closed loop comes back after a pause.
                                tenants[i].note_error(now);
                                if let Workload::Closed { .. } = spec.workload {
                                    push(&mut heap, now + s.retry_delay_us / 1e6, Ev::Arrival(i));
                                }
                                continue;
                            }
                        }
                    }
                    luns[lun].d.enqueue(local, req, bytes, now);
                    dispatch(&mut luns, lun, &mut array, now, s);
                }
                Ev::Retry(lun) => {
                    luns[lun].retry_scheduled = None;
                    dispatch(&mut luns, lun, &mut array, now, s);
                }
                Ev::Tick => {
                    for pool in &mut pools {
                        let released = pool.tick(now);
                        for h in released.failed {
                            tenants[h.tenant].note_error(now);
                            if let Workload::Closed { .. } = s.tenants[h.tenant].workload {
                                push(
                                    &mut heap,
                                    now + s.retry_delay_us / 1e6,
                                    Ev::Arrival(h.tenant),
                                );
                            }
                        }
                        for h in released.go {
                            let (lun, local) = (tenants[h.tenant].lun, tenants[h.tenant].local);
                            let bytes = h.req.bytes;
                            luns[lun].d.enqueue(local, h.req, bytes, now);
                        }
                    }
                    if now >= s.warmup_s {
                        // Who has requests waiting in the broker: the tenants the scheduler
                        // is dividing among in this tick.
                        let sec = (now - s.warmup_s) as usize;
                        let mut waiting = vec![false; tenants.len()];
                        for l in luns.iter() {
                            l.d.for_each_waiting(|r| waiting[r.tenant] = true);
                        }
                        for (t, w) in tenants.iter_mut().zip(waiting) {
                            if let (true, Some(n)) = (w, t.backlog_ticks.get_mut(sec)) {
                                *n += 1;
                            }
                        }
                    }
                    for lun in 0..luns.len() {
                        let l = &mut luns[lun];
                        let outstanding = l.d.in_flight;
                        l.d.controller.tick(now, outstanding);
                        let w = l.d.controller.window();
                        let log = &mut l.window_log;
                        let sample_due = log.last().is_none_or(|(t, _)| now - t >= 0.1 - 1e-9);
                        if sample_due {
                            log.push(((now * 1000.0).round() / 1000.0, w));
                        }
                        // Requests stuck on a path past the I/O timeout fail it and move.
                        let timeout = l.d.paths.policy().io_timeout_s;
                        let mut late: Vec<u64> = l
                            .at_array
                            .iter()
                            .filter(|(_, r)| now - r.attempt_at >= timeout)
                            .map(|(id, _)| *id)
                            .collect();
                        late.sort_unstable();
                        for id in late {
                            if let Some(req) = l.at_array.remove(&id) {
                                let path = req.path;
                                l.d.failed(req, path, now, "I/O timeout");
                            }
                        }
                        let ports = &l.path_ports;
                        l.d.paths.check(now, |i| array.probe(ports[i]));
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
                per_second_cost: t.per_second_cost.clone(),
                // Ticks are TICK_S apart: half a second's worth.
                per_second_backlogged: t
                    .backlog_ticks
                    .iter()
                    .map(|n| f64::from(*n) * TICK_S >= 0.5)
                    .collect(),
                lun_index: t.lun,
                limited: spec.policy.limit_iops > 0.0 || spec.policy.limit_bytes_per_s > 0.0,
                errors: t.errors,
                first_error_s: t.first_error_s,
                last_error_s: t.last_error_s,
            }
        })
        .collect();
    let per_second: Vec<Vec<f64>> = tenant_results
        .iter()
        .map(|t| t.per_second.iter().map(|n| *n as f64).collect())
        .collect();
    let f = metrics::Fairness::of(s.tenants.iter().zip(&tenant_results).zip(&per_second).map(
        |((spec, t), ps)| {
            (
                t.iops,
                t.weight,
                spec.policy.reservation_iops,
                ps.as_slice(),
            )
        },
    ));
    let mut result = SimResult {
        cost: metrics::CostShares::default(),
        min_max_ratio: f.min_max_ratio,
        reservation_conformance: f.reservation_conformance,
        victim_p99_ratio: None,
        victim_p999_ratio: None,
        work_conservation: None,
        seed: s.seed,
        duration_s: s.duration_s,
        aggregate_iops: f.aggregate,
        jain: f.jain,
        max_share_error: f.max_share_error,
        mean_share_error: f.mean_share_error,
        pools: pools
            .iter()
            .map(|p| PoolResult {
                name: p.spec.name.clone(),
                on_full: p.spec.on_full,
                capacity_mib: p.capacity_mib(),
                used_mib: p.used_mib(),
                full_at_s: p.full_at_s,
                held_max: p.held_max,
            })
            .collect(),
        tenants: tenant_results,
        luns: s
            .luns
            .iter()
            .zip(&luns)
            .map(|(spec, l)| {
                let specs = spec.resolved_paths();
                LunResult {
                    name: spec.name.clone(),
                    policy: spec.depth_policy().name(),
                    window: l.window_log.clone(),
                    congestion_signals: l.d.congestion,
                    halvings: l.d.controller.halvings(),
                    latency_target_us: l.d.controller.target_s().map(|t| t * 1e6),
                    knee: l.d.controller.knee(),
                    dispersion: l.d.controller.dispersion(),
                    iops: l.completions as f64 / s.duration_s,
                    per_second: l.per_second.clone(),
                    per_second_device_lat_us: l
                        .per_second
                        .iter()
                        .zip(&l.per_second_lat_s)
                        .map(|(n, sum)| (*n > 0).then(|| sum / *n as f64 * 1e6))
                        .collect(),
                    per_second_refused: l.per_second_refused.clone(),
                    selector: spec.multipath.selector.to_string(),
                    paths: specs
                        .iter()
                        .enumerate()
                        .map(|(k, p)| {
                            let st = l.d.paths.stats(k).cloned().unwrap_or_default();
                            let per_second = l.path_per_second[k].clone();
                            PathResult {
                                name: p.name.clone(),
                                port: p.port.clone().unwrap_or_default(),
                                iops: per_second.iter().sum::<u64>() as f64 / measured_s,
                                errors: st.errors,
                                state_at_end: l.d.paths.state(k),
                                ewma_service_us: st.ewma_service_s.map(|v| v * 1e6),
                                per_second,
                            }
                        })
                        .collect(),
                    path_events: l
                        .d
                        .paths
                        .events()
                        .iter()
                        .map(|e| NamedPathEvent {
                            path: specs.get(e.path).map_or("?".into(), |p| p.name.clone()),
                            event: e.clone(),
                        })
                        .collect(),
                    reissued: l.d.reissued,
                    reissued_ok: l.reissued_ok,
                    max_failover_s: l.max_failover_s,
                }
            })
            .collect(),
    };
    result.cost = result.cost_shares();
    Ok(result)
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
        if let Some(at) = l.d.retry_due() {
            if l.retry_scheduled.is_none() && at > now {
                l.retry_scheduled = Some(at);
                push(heap, at, Ev::Retry(i));
            }
        }
    }
}

/// The LUN's window after the port budget: when the windows behind a port add up to more than
/// its budget, each gets its proportional part (at least one).
fn effective_window(luns: &[LunRun], l: &LunRun, s: &SimScenario) -> u32 {
    let w = l.d.controller.window();
    let Some(budget) = s.ports.get(l.port).and_then(|p| p.budget) else {
        return w;
    };
    let total: u64 = luns
        .iter()
        .filter(|o| o.port == l.port)
        .map(|o| u64::from(o.d.controller.window()))
        .sum();
    port_share(w, total, budget)
}

fn dispatch(luns: &mut [LunRun], lun: usize, array: &mut EmulatedArray, now: f64, s: &SimScenario) {
    loop {
        let window = effective_window(luns, &luns[lun], s);
        let l = &mut luns[lun];
        let mut send = match l.d.next(now, window) {
            Step::Send(send) => send,
            Step::Idle => return,
            Step::Expired(failed) => {
                // Answered with an error by the main loop.
                l.failed.extend(failed);
                return;
            }
        };
        // Device latency runs from the first attempt: time lost to BUSY/QUEUE FULL retries is
        // the LUN's, and it is what a latency controller must see when the array bounces
        // requests instead of queueing them.
        if send.source == Source::Fresh {
            send.item.dispatched = now;
        }
        send.item.epoch = send.epoch;
        send.item.path = send.path;
        send.item.attempt_at = now;
        // Array ids are per attempt, unique over the array: a re-issued request must not be
        // confused with its first attempt, which the array may still be serving.
        l.attempts += 1;
        let attempt = ((lun as u64) << 40) | l.attempts;
        let port = l.path_ports[send.path];
        let admission = array.submit(
            now,
            l.array_lun,
            port,
            attempt,
            send.item.bytes,
            send.item.write,
        );
        match l.d.admit(send, admission, now, s.retry_delay_us / 1e6) {
            Admitted::Sent(sent) => {
                l.at_array.insert(attempt, sent.item);
            }
            Admitted::Requeued => {}
            Admitted::Congested => {
                if now >= s.warmup_s {
                    let sec = (now - s.warmup_s) as usize;
                    if let Some(n) = l.per_second_refused.get_mut(sec) {
                        *n += 1;
                    }
                }
                return;
            }
        }
    }
}
