//! What a simulation gives: per tenant, LUN, path and pool, serialisable.

use serde::Serialize;

use crate::metrics;
use crate::path::{PathEvent, PathState};
use crate::sim_pool::PoolFullPolicy;

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
    /// `adaptive`: the index of dispersion of the completions at the end, which sizes its
    /// measurement periods (1: Poisson; `sched/src/dispersion.rs`).
    pub dispersion: Option<f64>,
    pub iops: f64,
    /// Good completions in each whole second after warm-up, and their mean device latency
    /// (dispatch to answer, µs; `None` in a second without completions).
    pub per_second: Vec<u64>,
    pub per_second_device_lat_us: Vec<Option<f64>>,
    /// BUSY/QUEUE FULL answers in each whole second after warm-up.
    pub per_second_refused: Vec<u64>,
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
    /// The victim's p99 (p99.9) with everyone ÷ alone; set by [`run_compare`](crate::sim::run_compare).
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
