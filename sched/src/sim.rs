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
use std::collections::BinaryHeap;

use serde::{Deserialize, Serialize};

use crate::array::{Admission, EmulatedArray, LunModel, PortFault, PortModel};
use crate::check;
use crate::cost::CostModel;
use crate::depth::{DepthPolicy, QueueDepthController};
use crate::dispatch::{Dispatch, LunDispatch, Source, Step};
use crate::mclock::TenantPolicy;
use crate::metrics;
use crate::path::{MultipathPolicy, PathEvent, PathGroup, PathSelectorKind, PathSet, PathState};
use crate::rng::SplitMix64;
use crate::sim_pool::{Admit, Held, PoolFullPolicy, PoolRun, PoolSpec};

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
    /// `latency`, `adaptive`) applied to every LUN, `fifo` (no scheduling, the LUNs' own
    /// depth policies), or path selectors (`first-available`, `round-robin[:N]`,
    /// `least-queue-depth`, `service-time`) applied to every LUN's paths. Empty: run the
    /// scenario as written.
    #[serde(default)]
    pub compare: Vec<String>,
    /// A tenant whose tail latency is compared with a solo run of it (same policy, no other
    /// tenants): `victim_p99_ratio` and `victim_p999_ratio`.
    #[serde(default)]
    pub victim: Option<String>,
    /// Thin pools (`crate::sim_pool`): LUNs naming one share its capacity.
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolSpec>,
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
    /// Round-trip time the port's link adds to each request, µs.
    #[serde(default)]
    pub latency_us: f64,
}

impl PortSpec {
    /// The port as the array model takes it.
    pub fn model(&self) -> PortModel {
        PortModel {
            queue_limit: self.queue_limit,
            latency_us: self.latency_us,
        }
    }
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
    /// The one port the LUN is reached through; or give `paths`.
    #[serde(default)]
    pub port: Option<String>,
    /// Several paths (multipath), each through a port.
    #[serde(default)]
    pub paths: Vec<PathSpec>,
    #[serde(default)]
    pub multipath: MultipathPolicy,
    /// The LUN's size for real runs (`weir run` backs it with a file); the simulation ignores it.
    #[serde(default)]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub model: LunModel,
    #[serde(default)]
    pub depth: DepthPolicy,
    #[serde(default)]
    pub scheduler: SchedulerKind,
    /// The thin pool the LUN is in (`weir sim` only).
    #[serde(default)]
    pub pool: Option<String>,
}

/// One path of a LUN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    /// Defaults to the port's name.
    #[serde(default)]
    pub name: Option<String>,
    pub port: String,
    #[serde(default)]
    pub group: PathGroup,
    /// Requests this path carries at most at once (an HBA's per-LUN queue depth).
    #[serde(default = "d_path_cap")]
    pub max_in_flight: u32,
}

fn d_path_cap() -> u32 {
    32
}

impl PathSpec {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.port)
    }
}

impl LunSpec {
    /// The LUN's paths: `path` entries, or the one `port`.
    pub fn path_list(&self) -> Vec<PathSpec> {
        if !self.paths.is_empty() {
            return self.paths.clone();
        }
        self.port
            .iter()
            .map(|p| PathSpec {
                name: None,
                port: p.clone(),
                group: PathGroup::Optimized,
                max_in_flight: u32::MAX,
            })
            .collect()
    }
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
    /// Percent of its writes that need a new chunk of its LUN's thin pool.
    #[serde(default)]
    pub alloc_pct: f64,
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

/// Something that happens at a time: a LUN's capacity changes (`lun`, `capacity_pct`), a LUN's
/// policy changes (`lun` with `depth` — a short form such as `fixed:16` or `adaptive` — or
/// `selector`, a path selector), or a port is faulted (`port`, `fault` = down | up | slow |
/// flaky | healthy, with `factor` for slow and `error_rate` for flaky).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSpec {
    pub at_s: f64,
    #[serde(default)]
    pub lun: Option<String>,
    /// Capacity of the LUN from then on, percent of its model.
    #[serde(default)]
    pub capacity_pct: Option<f64>,
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub fault: Option<String>,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub error_rate: Option<f64>,
    /// The LUN's window policy from then on (short form).
    #[serde(default)]
    pub depth: Option<String>,
    /// The LUN's path selector from then on.
    #[serde(default)]
    pub selector: Option<String>,
}

/// What an event does, checked.
#[derive(Debug, Clone, PartialEq)]
pub enum EventAction {
    Capacity {
        lun: String,
        pct: f64,
    },
    Fault {
        port: String,
        fault: PortFault,
    },
    /// A policy change: a fresh window controller, or another path selector.
    Policy {
        lun: String,
        depth: Option<DepthPolicy>,
        selector: Option<PathSelectorKind>,
    },
}

impl EventSpec {
    /// LUN `lun`'s capacity becomes `pct` % of its model at `at_s`.
    pub fn capacity(at_s: f64, lun: &str, pct: f64) -> Self {
        EventSpec {
            at_s,
            lun: Some(lun.into()),
            capacity_pct: Some(pct),
            port: None,
            fault: None,
            factor: None,
            error_rate: None,
            depth: None,
            selector: None,
        }
    }

    /// Port `port` gets `fault` (`down`, `up`, `healthy`; `slow` and `flaky` need their
    /// parameter set afterwards) at `at_s`.
    pub fn fault(at_s: f64, port: &str, fault: &str) -> Self {
        EventSpec {
            at_s,
            lun: None,
            capacity_pct: None,
            port: Some(port.into()),
            fault: Some(fault.into()),
            factor: None,
            error_rate: None,
            depth: None,
            selector: None,
        }
    }

    /// The event's action, or what is wrong with it (without the `event[i]` prefix).
    pub fn action(&self) -> Result<EventAction, String> {
        match (&self.lun, &self.port) {
            (Some(lun), None) => {
                if self.fault.is_some() || self.factor.is_some() || self.error_rate.is_some() {
                    return Err("fault, factor and error_rate go with port, not lun".into());
                }
                let given = [
                    self.capacity_pct.is_some(),
                    self.depth.is_some(),
                    self.selector.is_some(),
                ];
                if given.iter().filter(|g| **g).count() > 1 {
                    return Err(
                        "a lun event changes one thing: capacity_pct, depth or selector".into(),
                    );
                }
                if let Some(d) = &self.depth {
                    let depth = DepthPolicy::from_short(d).ok_or_else(|| {
                        format!("depth '{d}': use fixed:N, aimd, latency, latency:MS, adaptive")
                    })?;
                    return Ok(EventAction::Policy {
                        lun: lun.clone(),
                        depth: Some(depth),
                        selector: None,
                    });
                }
                if let Some(sel) = &self.selector {
                    let selector = PathSelectorKind::try_from(sel.clone())?;
                    return Ok(EventAction::Policy {
                        lun: lun.clone(),
                        depth: None,
                        selector: Some(selector),
                    });
                }
                let pct = self.capacity_pct.ok_or(
                    "a lun event needs capacity_pct (percent of the model), depth or selector",
                )?;
                if !(pct.is_finite() && pct > 0.0 && pct <= 1000.0) {
                    return Err("capacity_pct must be a positive percentage, at most 1000".into());
                }
                Ok(EventAction::Capacity {
                    lun: lun.clone(),
                    pct,
                })
            }
            (None, Some(port)) => {
                if self.capacity_pct.is_some() || self.depth.is_some() || self.selector.is_some() {
                    return Err("capacity_pct, depth and selector go with lun, not port".into());
                }
                let fault = match self.fault.as_deref() {
                    Some("down") => PortFault::Down,
                    Some("up") => PortFault::Up,
                    Some("healthy") => PortFault::Healthy,
                    Some("slow") => PortFault::Slow {
                        factor: self
                            .factor
                            .ok_or("fault = \"slow\" needs factor (e.g. 3)")?,
                    },
                    Some("flaky") => PortFault::Flaky {
                        error_rate: self
                            .error_rate
                            .ok_or("fault = \"flaky\" needs error_rate (e.g. 0.01)")?,
                    },
                    Some(other) => {
                        return Err(format!(
                            "fault '{other}' is not one of down, up, slow, flaky, healthy"
                        ));
                    }
                    None => {
                        return Err(
                            "a port event needs fault (down, up, slow, flaky, healthy)".into()
                        );
                    }
                };
                if let Some(p) = fault.problem() {
                    return Err(p);
                }
                Ok(EventAction::Fault {
                    port: port.clone(),
                    fault,
                })
            }
            _ => Err("give either lun (with capacity_pct) or port (with fault)".into()),
        }
    }
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
    /// Cost completed in each whole second after warm-up (the scheduler's units).
    pub per_second_cost: Vec<f64>,
    /// Whether the tenant had requests waiting in the broker for at least half of each second.
    pub per_second_backlogged: Vec<bool>,
    /// The tenant's LUN (tenants compete only within one) and whether it has a limit.
    #[serde(skip)]
    pub lun_index: usize,
    #[serde(skip)]
    pub limited: bool,
    /// Requests answered with an I/O error (no path for longer than the hold time).
    pub errors: u64,
    /// When the first and the last of them were answered, s.
    pub first_error_s: Option<f64>,
    pub last_error_s: Option<f64>,
}

/// One path's figures.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathResult {
    pub name: String,
    pub port: String,
    pub iops: f64,
    pub errors: u64,
    pub state_at_end: PathState,
    pub ewma_service_us: Option<f64>,
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
    /// `adaptive`: the knee estimate at the end.
    pub knee: Option<f64>,
    pub iops: f64,
    /// Good completions in each whole second after warm-up, and their mean device latency
    /// (dispatch to answer, µs; `None` in a second without completions).
    pub per_second: Vec<u64>,
    pub per_second_device_lat_us: Vec<Option<f64>>,
    pub selector: String,
    pub paths: Vec<PathResult>,
    pub path_events: Vec<NamedPathEvent>,
    /// Requests re-issued on another path after their path failed under them.
    pub reissued: u64,
    /// Of those, answered well in the end.
    pub reissued_ok: u64,
    /// The longest time from a path failing a request to that request's good answer via
    /// another path, s.
    pub max_failover_s: Option<f64>,
}

/// A path event with the path's name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NamedPathEvent {
    pub path: String,
    #[serde(flatten)]
    pub event: PathEvent,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SimResult {
    pub seed: u64,
    pub duration_s: f64,
    pub tenants: Vec<TenantResult>,
    pub luns: Vec<LunResult>,
    pub aggregate_iops: f64,
    /// Fairness in cost units over the contended seconds ([`metrics::CostShares`]): the figure
    /// to judge the scheduler by.
    pub cost: metrics::CostShares,
    /// Jain's index of weight-normalised IOPS over all tenants and the whole run (an extra:
    /// idle seconds and request sizes distort it).
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
    /// Thin pools at the end of the run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pools: Vec<PoolResult>,
}

impl SimResult {
    /// [`metrics::CostShares`] of the tenants' per-second cost and backlog.
    pub fn cost_shares(&self) -> metrics::CostShares {
        let seconds: Vec<metrics::TenantSeconds> = self
            .tenants
            .iter()
            .map(|t| metrics::TenantSeconds {
                group: t.lun_index,
                weight: t.weight,
                limited: t.limited,
                cost: &t.per_second_cost,
                backlogged: &t.per_second_backlogged,
            })
            .collect();
        metrics::CostShares::of(&seconds)
    }
}

/// A thin pool at the end of a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PoolResult {
    pub name: String,
    pub on_full: PoolFullPolicy,
    pub capacity_mib: f64,
    pub used_mib: f64,
    /// When an allocating write first found no space.
    pub full_at_s: Option<f64>,
    /// The most requests waiting for space at once.
    pub held_max: usize,
}

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
    /// The port the port budget is counted on (the first path's).
    port: usize,
    /// The dispatch state and rule the broker runs too.
    d: LunDispatch<Request>,
    window_log: Vec<(f64, u32)>,
    congestion: u64,
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
    reissued: u64,
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
        } else if let Some(policy) = name.strip_prefix("pool:") {
            let on_full = PoolFullPolicy::from_name(policy).ok_or_else(|| {
                format!("compare[{i}]: '{name}': use pool:hold, pool:error or pool:pool-stall")
            })?;
            for p in &mut variant.pools {
                p.on_full = on_full;
            }
        } else if PathSelectorKind::is_selector_name(name) {
            let selector = PathSelectorKind::from_short(name).ok_or_else(|| {
                format!("compare[{i}]: '{name}' is not a path selector (round-robin:N needs N ≥ 1)")
            })?;
            for l in &mut variant.luns {
                l.multipath.selector = selector;
            }
        } else {
            let policy = DepthPolicy::from_short(name).ok_or_else(|| {
                format!(
                    "compare[{i}]: '{name}' is not a policy (use fifo, fixed:N, aimd, latency, latency:MS, adaptive, or a path selector: first-available, round-robin[:N], least-queue-depth, service-time)"
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
    let rows: Vec<metrics::PolicyRow> = results
        .iter()
        .map(|(name, r)| metrics::PolicyRow {
            name: name.clone(),
            aggregate_iops: r.aggregate_iops,
            cost: r.cost_shares(),
            jain: r.jain,
            min_max_ratio: r.min_max_ratio,
            max_share_error: r.max_share_error,
            mean_share_error: r.mean_share_error,
            reservation_conformance: r.reservation_conformance,
            victim_p99_ratio: r.victim_p99_ratio,
            victim_p999_ratio: r.victim_p999_ratio,
            work_conservation: r.work_conservation,
            congestion: Some(r.luns.iter().map(|l| l.congestion_signals).sum()),
        })
        .collect();
    let mut s = metrics::policy_table(&rows);
    let _ = writeln!(
        s,
        "(Jain, max/mean err: shares in cost units over the contended seconds (cont.s: seconds with \
         two or more tenants of a LUN waiting in the broker; a tenant that was not waiting got what \
         it asked); IOPS-Jain, IOPS-err, min/max: weight-normalised IOPS over the whole run; resv: \
         1 s windows at ≥ 99 % of the reservation; v.p99/v.p999: victim tail with everyone ÷ alone; \
         work: IOPS ÷ fifo's; cong: QUEUE FULL/BUSY answers)"
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
            let _ = writeln!(s, "  {:<18} {:<8} {}", name, l.name, means.join(" "));
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "{:<18} {:<12} {:>6} {:>9} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
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
                "{:<18} {:<12} {:>6} {:>9.0} {:>9.2} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
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
    if results
        .iter()
        .any(|(_, r)| r.luns.iter().any(|l| l.paths.len() > 1))
    {
        let _ = writeln!(
            s,
            "\n{:<18} {:<8} {:<10} {:>9} {:>7} {:>7} {:>10} {:>9} {:>9} {:>12}",
            "policy",
            "LUN",
            "path",
            "IOPS",
            "share",
            "errors",
            "S us",
            "state",
            "reissued",
            "failover ms"
        );
        for (name, r) in results {
            for l in r.luns.iter().filter(|l| l.paths.len() > 1) {
                let total: f64 = l.paths.iter().map(|p| p.iops).sum();
                for (k, p) in l.paths.iter().enumerate() {
                    let _ = writeln!(
                        s,
                        "{:<18} {:<8} {:<10} {:>9.0} {:>6.1}% {:>7} {:>10} {:>9} {:>9} {:>12}",
                        name,
                        l.name,
                        p.name,
                        p.iops,
                        if total > 0.0 {
                            p.iops / total * 100.0
                        } else {
                            0.0
                        },
                        p.errors,
                        p.ewma_service_us.map_or("-".into(), |v| format!("{v:.0}")),
                        p.state_at_end.to_string(),
                        if k == 0 {
                            l.reissued.to_string()
                        } else {
                            String::new()
                        },
                        match (k, l.max_failover_s) {
                            (0, Some(f)) => format!("{:.1}", f * 1000.0),
                            (0, None) => "-".into(),
                            _ => String::new(),
                        }
                    );
                }
            }
        }
        let mut any = false;
        for (name, r) in results {
            for l in &r.luns {
                for e in &l.path_events {
                    if !any {
                        let _ = writeln!(s, "\npath events:");
                        any = true;
                    }
                    let _ = writeln!(
                        s,
                        "  {:<18} {:>8.3} s  {}/{}  {}: {}",
                        name, e.event.at, l.name, e.path, e.event.what, e.event.why
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "(share: of the LUN's IOPS; S: EWMA service time; reissued: requests moved to another \
             path after theirs failed; failover: longest fault → good answer via another path)"
        );
    }
    if results.iter().any(|(_, r)| !r.pools.is_empty()) {
        let _ = writeln!(s, "\nthin pools: completions per second, per tenant");
        for (name, r) in results {
            let _ = writeln!(s, "  {name}");
            for p in &r.pools {
                let _ = writeln!(
                    s,
                    "    pool {} ({:?}): {:.0} of {:.0} MiB used at the end, first full at {}, \
                     at most {} requests waiting for space",
                    p.name,
                    p.on_full,
                    p.used_mib,
                    p.capacity_mib,
                    p.full_at_s.map_or("never".into(), |t| format!("{t:.2} s")),
                    p.held_max
                );
            }
            for t in &r.tenants {
                let secs: Vec<String> = t.per_second.iter().map(|n| n.to_string()).collect();
                let _ = writeln!(
                    s,
                    "    {:<12} errors {:>6}  {}",
                    t.name,
                    t.errors,
                    secs.join(" ")
                );
            }
        }
    }
    s
}

/// Problems with a scenario, naming the entry and field.
pub fn validate(s: &SimScenario) -> Result<(), String> {
    check::positive("duration_s", s.duration_s, check::MAX_DURATION_S)?;
    if !(s.warmup_s >= 0.0 && s.warmup_s < s.duration_s) {
        return Err("warmup_s must be at least 0 and less than duration_s".into());
    }
    check::number(
        "retry_delay_us",
        s.retry_delay_us,
        0.0,
        check::MAX_SERVICE_US,
    )?;
    check::within("cost", &s.cost)?;
    unique("port", s.ports.iter().map(|p| p.name.as_str()))?;
    unique("lun", s.luns.iter().map(|l| l.name.as_str()))?;
    unique("tenant", s.tenants.iter().map(|t| t.name.as_str()))?;
    for (i, p) in s.ports.iter().enumerate() {
        check::within(&format!("port[{i}]"), p)?;
    }
    for (i, l) in s.luns.iter().enumerate() {
        check::within(&format!("lun[{i}].model"), &l.model)?;
        check::within(&format!("lun[{i}].depth"), &l.depth)?;
        match (&l.port, l.paths.is_empty()) {
            (Some(_), false) => {
                return Err(format!(
                    "lun[{i}] ({}): give either port or [[lun.paths]] entries, not both",
                    l.name
                ));
            }
            (None, true) => {
                return Err(format!(
                    "lun[{i}] ({}): no port; give port = \"...\" or [[lun.paths]] entries",
                    l.name
                ));
            }
            _ => {}
        }
        for (k, p) in l.path_list().iter().enumerate() {
            if !s.ports.iter().any(|x| x.name == p.port) {
                let field = if l.paths.is_empty() {
                    format!("lun[{i}].port")
                } else {
                    format!("lun[{i}].paths[{k}].port")
                };
                return Err(format!("{field}: no port named '{}'", p.port));
            }
            if p.max_in_flight == 0 {
                return Err(format!(
                    "lun[{i}].paths[{k}].max_in_flight must be at least 1"
                ));
            }
        }
        if let Some(p) = l.multipath.problem() {
            return Err(format!("lun[{i}].{p}"));
        }
    }
    for (i, p) in s.pools.iter().enumerate() {
        if let Some(problem) = p.problem() {
            return Err(format!("pool[{i}] ({}): {problem}", p.name));
        }
        if s.pools[..i].iter().any(|q| q.name == p.name) {
            return Err(format!("pool[{i}].name: '{}' names two pools", p.name));
        }
    }
    for (i, l) in s.luns.iter().enumerate() {
        if let Some(pool) = &l.pool {
            if !s.pools.iter().any(|p| &p.name == pool) {
                return Err(format!("lun[{i}].pool: no pool named '{pool}'"));
            }
        }
    }
    for (i, t) in s.tenants.iter().enumerate() {
        if !s.luns.iter().any(|l| l.name == t.lun) {
            return Err(format!("tenant[{i}].lun: no LUN named '{}'", t.lun));
        }
        if !(0.0..=100.0).contains(&t.alloc_pct) {
            return Err(format!("tenant[{i}].alloc_pct must be 0 to 100"));
        }
        if let Some(p) = t.policy.problem() {
            return Err(format!("tenant[{i}] ({}): {p}", t.name));
        }
        check::within(&format!("tenant[{i}].workload"), &t.workload)?;
        check::number(
            &format!("tenant[{i}].start_s"),
            t.start_s,
            0.0,
            check::MAX_DURATION_S,
        )?;
        if let Some(stop) = t.stop_s {
            check::number(
                &format!("tenant[{i}].stop_s"),
                stop,
                t.start_s,
                check::MAX_DURATION_S,
            )?;
        }
    }
    for (i, e) in s.events.iter().enumerate() {
        check::number(
            &format!("event[{i}].at_s"),
            e.at_s,
            0.0,
            check::MAX_DURATION_S,
        )?;
        let action = e.action().map_err(|m| format!("event[{i}]: {m}"))?;
        if let EventAction::Policy { depth: Some(d), .. } = &action {
            check::within(&format!("event[{i}].depth"), d)?;
        }
        match action {
            EventAction::Capacity { lun, .. } if !s.luns.iter().any(|l| l.name == lun) => {
                return Err(format!("event[{i}].lun: no LUN named '{lun}'"));
            }
            EventAction::Fault { port, .. } if !s.ports.iter().any(|p| p.name == port) => {
                return Err(format!("event[{i}].port: no port named '{port}'"));
            }
            EventAction::Policy { lun, .. } if !s.luns.iter().any(|l| l.name == lun) => {
                return Err(format!("event[{i}].lun: no LUN named '{lun}'"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Names given twice among `kind` entries.
fn unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
    let mut seen = std::collections::HashSet::new();
    for (i, n) in names.enumerate() {
        if n.is_empty() {
            return Err(format!("{kind}[{i}].name: must not be empty"));
        }
        if !seen.insert(n) {
            return Err(format!(
                "{kind}[{i}].name: '{n}' is used twice; names must be unique"
            ));
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
    let port_models: Vec<PortModel> = s.ports.iter().map(PortSpec::model).collect();
    let lun_models: Vec<LunModel> = s.luns.iter().map(|l| l.model.clone()).collect();
    let mut array = EmulatedArray::new(&port_models, &lun_models, rng.next_u64());
    let seconds = (s.duration_s - s.warmup_s).ceil() as usize;

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
            let tenant_policies: Vec<TenantPolicy> = members
                .iter()
                .map(|&i| s.tenants[i].policy.clone())
                .collect();
            let paths = l.path_list();
            let path_ports: Vec<usize> = paths.iter().map(|p| port_index(&p.port)).collect();
            let groups: Vec<(PathGroup, u32)> =
                paths.iter().map(|p| (p.group, p.max_in_flight)).collect();
            LunRun {
                port: path_ports.first().copied().unwrap_or(0),
                d: LunDispatch::new(
                    l.scheduler,
                    tenant_policies,
                    s.cost,
                    l.depth.clone(),
                    PathSet::new(&groups, l.multipath.clone()),
                ),
                window_log: Vec::new(),
                congestion: 0,
                completions: 0,
                members,
                at_array: std::collections::HashMap::new(),
                retry_scheduled: None,
                path_per_second: vec![vec![0; seconds]; path_ports.len()],
                per_second: vec![0; seconds],
                per_second_lat_s: vec![0.0; seconds],
                path_ports,
                reissued: 0,
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
                EventAction::Capacity { lun, pct } => array.set_capacity(lun_index(lun), *pct),
                EventAction::Fault { port, fault } => {
                    array.set_port_fault(now, port_index(port), *fault)
                }
                EventAction::Policy {
                    lun,
                    depth,
                    selector,
                } => {
                    let l = &mut luns[lun_index(lun)];
                    if let Some(d) = depth {
                        l.d.controller = QueueDepthController::new(d.clone());
                    }
                    if let Some(sel) = selector {
                        l.d.paths.set_selector(*sel);
                    }
                }
            }
            next_event += 1;
        }

        if t_array == Some(next) {
            let Some(c) = array.complete_next(now) else {
                continue;
            };
            let lun = c.lun;
            // Gone: the request timed out on its path and was re-issued.
            let Some(mut req) = luns[lun].at_array.remove(&c.id) else {
                continue;
            };
            let l = &mut luns[lun];
            if !c.ok {
                req.failed_at.get_or_insert(now);
                l.reissued += 1;
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
                            if let Some(mut req) = l.at_array.remove(&id) {
                                req.failed_at.get_or_insert(now);
                                l.reissued += 1;
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
                let specs = spec.path_list();
                LunResult {
                    name: spec.name.clone(),
                    policy: spec.depth.name(),
                    window: l.window_log.clone(),
                    congestion_signals: l.congestion,
                    halvings: l.d.controller.halvings(),
                    latency_target_us: l.d.controller.target_s().map(|t| t * 1e6),
                    knee: l.d.controller.knee(),
                    iops: l.completions as f64 / s.duration_s,
                    per_second: l.per_second.clone(),
                    per_second_device_lat_us: l
                        .per_second
                        .iter()
                        .zip(&l.per_second_lat_s)
                        .map(|(n, sum)| (*n > 0).then(|| sum / *n as f64 * 1e6))
                        .collect(),
                    selector: spec.multipath.selector.to_string(),
                    paths: specs
                        .iter()
                        .enumerate()
                        .map(|(k, p)| {
                            let st = l.d.paths.stats(k).cloned().unwrap_or_default();
                            let per_second = l.path_per_second[k].clone();
                            PathResult {
                                name: p.display_name().to_string(),
                                port: p.port.clone(),
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
                            path: specs
                                .get(e.path)
                                .map_or("?".into(), |p| p.display_name().to_string()),
                            event: e.clone(),
                        })
                        .collect(),
                    reissued: l.reissued,
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
    let total: u32 = luns
        .iter()
        .filter(|o| o.port == l.port)
        .map(|o| o.d.controller.window())
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
        let Dispatch {
            item: mut req,
            path,
            epoch,
            source,
        } = match l.d.next(now, window) {
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
        if source == Source::Fresh {
            req.dispatched = now;
        }
        req.epoch = epoch;
        req.path = path;
        req.attempt_at = now;
        // Array ids are per attempt, unique over the array: a re-issued request must not be
        // confused with its first attempt, which the array may still be serving.
        l.attempts += 1;
        let attempt = ((lun as u64) << 40) | l.attempts;
        match array.submit(now, lun, l.path_ports[path], attempt, req.bytes, req.write) {
            Admission::Accepted => {
                l.d.sent(path, now);
                l.at_array.insert(attempt, req);
            }
            Admission::PortDown => {
                if source != Source::Reissue {
                    req.failed_at.get_or_insert(now);
                    l.reissued += 1;
                }
                l.d.port_down(req, path, now);
            }
            Admission::QueueFull | Admission::Busy => {
                l.congestion += 1;
                l.d.congested(req, epoch, now, s.retry_delay_us / 1e6);
                return;
            }
        }
    }
}
