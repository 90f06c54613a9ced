//! Deterministic simulation: the broker's scheduling logic ([`MClock`](crate::mclock::MClock), the
//! [`QueueDepthController`](crate::depth::QueueDepthController)) driving the
//! [`EmulatedArray`](crate::array::EmulatedArray) on a virtual clock, with seeded
//! synthetic tenants. The same seed gives the same result, byte for byte.
//!
//! Per LUN, requests wait in the scheduler (mClock tags, or one FIFO for the `fifo` baseline)
//! and are dispatched while the LUN's in-flight count is below its window `D` (SFQ(D)), the sum
//! of the windows behind a port being capped by the port's budget. A request the array answers
//! with QUEUE FULL or BUSY is a congestion signal for the controller and is retried first, after
//! `retry_delay_us`, as a SCSI initiator retries it.

//!
//! Rooms: `spec` (the scenario and its validation), `hosts` (several hosts' brokers on one
//! array), `engine` (a run), `results` (what it gives), `render` (the terminal table).

use crate::depth::DepthPolicy;
use crate::path::PathSelectorKind;
use crate::sim_pool::PoolFullPolicy;

mod engine;
mod hosts;
mod render;
mod results;
mod spec;

pub use engine::run;
pub use hosts::lane_name;
pub use render::render;
pub use results::*;
pub use spec::*;

pub use crate::lun::{LunSpec, PathSpec};

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
                l.depth = Some(policy.clone().compared_on(l.depth.as_ref()));
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
