//! A snapshot turned into the rows of each view: tenants, LUNs, paths (`docs/observability.md`
//! defines every column). Pure functions of a [`Snapshot`], shared by the screen and batch mode.
//!
//! Shares are judged in the scheduler's own unit, cost (`weir_sched::cost`: a 4 KiB request
//! costs 1, a 64 KiB one 8.5), over the last interval:
//!
//! ```text
//! SHR%_i  = cost_i / Σ_{j on the LUN} cost_j
//! ENT%_i  = w_i / Σ_{j on the LUN, active} w_j      active: did I/O, or had I/O waiting
//! ```
//!
//! ENT% is the weight share among the tenants competing in that second; it is what mClock
//! divides once reservations are met and limits applied, so a tenant with a reservation or a
//! limit, or one asking for less than its share (demand-limited), may rightly sit off it.

use serde::Serialize;
use weir_broker::control::serde_name;
use weir_broker::telemetry::DiskSample;
use weir_sched::path::PathState;

use crate::source::Snapshot;

/// One table cell: a number (sorted as a number) or text.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Num(Option<f64>, String),
    Text(String),
}

impl Cell {
    pub fn text(&self) -> &str {
        match self {
            Cell::Num(_, s) | Cell::Text(s) => s,
        }
    }

    fn num(v: f64, decimals: usize) -> Cell {
        Cell::Num(Some(v), format!("{v:.decimals$}"))
    }

    fn opt(v: Option<f64>, decimals: usize) -> Cell {
        match v {
            Some(v) => Cell::num(v, decimals),
            None => Cell::Num(None, "-".into()),
        }
    }

    fn int(v: u64) -> Cell {
        Cell::Num(Some(v as f64), v.to_string())
    }
}

/// How a row wants to be drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mood {
    Normal,
    /// Queueing, QUEUE FULL, a missed reservation: worth a look.
    Congested,
    /// A failed path, a disconnected tenant, errors.
    Bad,
}

/// A row of a view: its cells in column order, its mood.
pub trait Row {
    const HEADERS: &'static [&'static str];
    fn cells(&self) -> Vec<Cell>;
    fn mood(&self) -> Mood;
    /// Text the `/` filter matches against.
    fn key(&self) -> String;
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TenantRow {
    pub tenant: String,
    pub lun: String,
    pub disk: String,
    pub connected: bool,
    /// Requests at the store (ACTV) and waiting in the dispatcher (QUED).
    pub actv: u64,
    pub qued: u64,
    pub read_iops: f64,
    pub write_iops: f64,
    pub read_mb_s: f64,
    pub write_mb_s: f64,
    /// Mean latencies over the interval, ms: device, in the dispatcher, guest-visible.
    pub davg_ms: Option<f64>,
    pub kavg_ms: Option<f64>,
    pub gavg_ms: Option<f64>,
    pub cost_per_s: f64,
    pub weight: f64,
    /// Percent of the LUN's cost this tenant received, and the percent its weight entitles it
    /// to among the LUN's active tenants (none when idle).
    pub share_pct: Option<f64>,
    pub entitled_pct: Option<f64>,
    /// `-` (none), `met`, `MISS` (backlogged yet under its reservation).
    pub reservation: String,
    /// `-` (none), `under`, `HIT` (at its IOPS or bytes cap).
    pub limit: String,
    /// Malformed requests refused and I/O errors, per second.
    pub rejected_per_s: f64,
    pub io_errors_per_s: f64,
    /// Writes held for thin-pool space (the pool is full).
    pub held: u64,
}

/// At or above this fraction of a reservation or limit, it counts as met or hit: per-second
/// counts of a paced tenant wobble by a request or two.
const AT_FRACTION: f64 = 0.95;

fn active(d: &DiskSample) -> bool {
    d.cost_per_s > 0.0 || d.queued > 0 || d.in_flight > 0
}

pub fn tenant_rows(snap: &Snapshot) -> Vec<TenantRow> {
    let Some(sample) = &snap.sample else {
        return Vec::new();
    };
    let interval = sample.interval_s.max(1e-3);
    sample
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            // Telemetry lists disks in config order; topology groups them by LUN. Match the
            // i-th disk of this LUN in telemetry with the i-th tenant of the LUN in topology.
            let nth = sample.disks[..i].iter().filter(|o| o.lun == d.lun).count();
            let lun = snap.luns.iter().find(|l| l.name == d.lun);
            let topo = lun.and_then(|l| l.tenants.get(nth));
            let policy = topo.map(|t| t.policy.clone()).unwrap_or_default();
            let peers: Vec<(&DiskSample, f64)> = sample
                .disks
                .iter()
                .filter(|o| o.lun == d.lun)
                .enumerate()
                .map(|(k, o)| {
                    let w = lun
                        .and_then(|l| l.tenants.get(k))
                        .map_or(1.0, |t| t.policy.weight);
                    (o, w)
                })
                .collect();
            let lun_cost: f64 = peers.iter().map(|(o, _)| o.cost_per_s).sum();
            let active_weight: f64 = peers
                .iter()
                .filter(|(o, _)| active(o))
                .map(|(_, w)| w)
                .sum();
            let iops = d.read_iops + d.write_iops;
            let bytes_s = (d.read_mib_s + d.write_mib_s) * 1048576.0;
            let reservation = if policy.reservation_iops <= 0.0 {
                "-"
            } else if iops < AT_FRACTION * policy.reservation_iops && d.queued > 0 {
                "MISS"
            } else {
                "met"
            };
            let at_limit = (policy.limit_iops > 0.0 && iops >= AT_FRACTION * policy.limit_iops)
                || (policy.limit_bytes_per_s > 0.0
                    && bytes_s >= AT_FRACTION * policy.limit_bytes_per_s);
            let limit = if policy.limit_iops <= 0.0 && policy.limit_bytes_per_s <= 0.0 {
                "-"
            } else if at_limit {
                "HIT"
            } else {
                "under"
            };
            TenantRow {
                tenant: d.tenant.clone(),
                lun: d.lun.clone(),
                disk: topo
                    .and_then(|t| t.socket.file_name())
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
                connected: d.connected,
                // The disk's in-flight count holds what waits in the dispatcher too.
                actv: d.in_flight.saturating_sub(d.queued),
                qued: d.queued,
                read_iops: d.read_iops,
                write_iops: d.write_iops,
                read_mb_s: d.read_mib_s * 1.048576,
                write_mb_s: d.write_mib_s * 1.048576,
                davg_ms: d.device_latency_us.map(|v| v / 1000.0),
                kavg_ms: d.queue_latency_us.map(|v| v / 1000.0),
                gavg_ms: d.total_latency_us.map(|v| v / 1000.0),
                cost_per_s: d.cost_per_s,
                weight: policy.weight,
                share_pct: (lun_cost > 0.0).then(|| 100.0 * d.cost_per_s / lun_cost),
                entitled_pct: (active(d) && active_weight > 0.0)
                    .then(|| 100.0 * policy.weight / active_weight),
                reservation: reservation.into(),
                limit: limit.into(),
                rejected_per_s: d.rejected as f64 / interval,
                io_errors_per_s: d.io_errors as f64 / interval,
                held: d.held,
            }
        })
        .collect()
}

impl Row for TenantRow {
    const HEADERS: &'static [&'static str] = &[
        "TENANT", "LUN", "DISK", "CONN", "ACTV", "QUED", "READS/s", "WRITES/s", "MBREAD/s",
        "MBWRTN/s", "DAVG/ms", "KAVG/ms", "GAVG/ms", "COST/s", "WEIGHT", "SHR%", "ENT%", "RESV",
        "LIMIT", "REJ/s", "ERR/s", "HELD",
    ];

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.tenant.clone()),
            Cell::Text(self.lun.clone()),
            Cell::Text(self.disk.clone()),
            Cell::Text(if self.connected { "yes" } else { "NO" }.into()),
            Cell::int(self.actv),
            Cell::int(self.qued),
            Cell::num(self.read_iops, 0),
            Cell::num(self.write_iops, 0),
            Cell::num(self.read_mb_s, 2),
            Cell::num(self.write_mb_s, 2),
            Cell::opt(self.davg_ms, 2),
            Cell::opt(self.kavg_ms, 2),
            Cell::opt(self.gavg_ms, 2),
            Cell::num(self.cost_per_s, 0),
            Cell::num(self.weight, 1),
            Cell::opt(self.share_pct, 1),
            Cell::opt(self.entitled_pct, 1),
            Cell::Text(self.reservation.clone()),
            Cell::Text(self.limit.clone()),
            Cell::num(self.rejected_per_s, 0),
            Cell::num(self.io_errors_per_s, 0),
            Cell::int(self.held),
        ]
    }

    fn mood(&self) -> Mood {
        if !self.connected || self.io_errors_per_s > 0.0 || self.held > 0 {
            Mood::Bad
        } else if self.qued > 0 || self.reservation == "MISS" {
            Mood::Congested
        } else {
            Mood::Normal
        }
    }

    fn key(&self) -> String {
        format!("{} {} {}", self.tenant, self.lun, self.disk)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LunRow {
    pub lun: String,
    pub backend: String,
    pub scheduler: String,
    pub policy: String,
    /// The dispatch window D (esxtop's DQLEN).
    pub dqlen: u64,
    pub actv: u64,
    pub qued: u64,
    pub iops: f64,
    pub mb_s: f64,
    /// QUEUE FULL / BUSY answers per second.
    pub qfull_per_s: f64,
    pub halvings: u64,
    pub reissued_per_s: f64,
    pub paths_up: usize,
    pub paths: usize,
    pub selector: String,
    pub tenants: usize,
    /// The thin pool it is in and the pool's use, percent of capacity.
    pub pool: String,
    pub pool_used_pct: Option<f64>,
}

pub fn lun_rows(snap: &Snapshot) -> Vec<LunRow> {
    snap.luns
        .iter()
        .map(|l| {
            let sample = snap.sample.as_ref();
            let s = sample.and_then(|s| s.luns.iter().find(|x| x.lun == l.name));
            let disks = sample.map_or(Vec::new(), |s| {
                s.disks.iter().filter(|d| d.lun == l.name).collect()
            });
            let interval = sample.map_or(1.0, |s| s.interval_s.max(1e-3));
            LunRow {
                lun: l.name.clone(),
                backend: l.backend.clone(),
                scheduler: l.scheduler.clone(),
                policy: l.depth_policy.clone(),
                dqlen: s.map_or(0, |s| s.window),
                actv: s.map_or(0, |s| s.in_flight),
                qued: s.map_or(0, |s| s.queued),
                // Folded from +0.0: an empty f64 sum is -0.0, which prints as "-0".
                iops: disks
                    .iter()
                    .fold(0.0, |a, d| a + d.read_iops + d.write_iops),
                mb_s: disks
                    .iter()
                    .fold(0.0, |a, d| a + (d.read_mib_s + d.write_mib_s) * 1.048576),
                qfull_per_s: s.map_or(0.0, |s| s.congestion as f64 / interval),
                halvings: s.map_or(0, |s| s.halvings),
                reissued_per_s: s.map_or(0.0, |s| s.reissued as f64 / interval),
                paths_up: l
                    .paths
                    .iter()
                    .filter(|p| p.path.state != PathState::Failed)
                    .count(),
                paths: l.paths.len(),
                selector: l.selector.clone(),
                tenants: l.tenants.len(),
                pool: pool_of(snap, &l.name).map_or("-".into(), |p| p.name.clone()),
                pool_used_pct: pool_of(snap, &l.name).map(|p| p.used_pct),
            }
        })
        .collect()
}

/// The thin pool a LUN is in.
fn pool_of<'a>(snap: &'a Snapshot, lun: &str) -> Option<&'a weir_broker::thin::PoolSnapshot> {
    snap.pools
        .iter()
        .find(|p| p.luns.iter().any(|l| l.lun == lun))
}

impl Row for LunRow {
    const HEADERS: &'static [&'static str] = &[
        "LUN", "BACKEND", "SCHED", "POLICY", "DQLEN", "ACTV", "QUED", "IOPS", "MB/s", "QFULL/s",
        "HALV", "REISS/s", "PATHS", "SELECTOR", "TENANTS", "POOL", "POOL%",
    ];

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.lun.clone()),
            Cell::Text(self.backend.clone()),
            Cell::Text(self.scheduler.clone()),
            Cell::Text(self.policy.clone()),
            Cell::int(self.dqlen),
            Cell::int(self.actv),
            Cell::int(self.qued),
            Cell::num(self.iops, 0),
            Cell::num(self.mb_s, 2),
            Cell::num(self.qfull_per_s, 0),
            Cell::int(self.halvings),
            Cell::num(self.reissued_per_s, 0),
            Cell::Num(
                Some(self.paths_up as f64),
                format!("{}/{}", self.paths_up, self.paths),
            ),
            Cell::Text(self.selector.clone()),
            Cell::int(self.tenants as u64),
            Cell::Text(self.pool.clone()),
            Cell::opt(self.pool_used_pct, 1),
        ]
    }

    fn mood(&self) -> Mood {
        if self.paths_up < self.paths || self.pool_used_pct.is_some_and(|p| p >= 95.0) {
            Mood::Bad
        } else if self.qfull_per_s > 0.0
            || self.qued > 0
            || self.pool_used_pct.is_some_and(|p| p >= 85.0)
        {
            Mood::Congested
        } else {
            Mood::Normal
        }
    }

    fn key(&self) -> String {
        format!("{} {} {}", self.lun, self.backend, self.policy)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PathRow {
    pub lun: String,
    pub path: String,
    pub port: String,
    pub group: String,
    pub state: String,
    pub iops: f64,
    pub mb_s: f64,
    pub actv: u32,
    /// EWMA of the service time, ms.
    pub svct_ms: Option<f64>,
    /// Requests failed on the path (and moved to another), per second.
    pub errors_per_s: f64,
    /// The newest event of this path: `12.3s failed: ...`.
    pub last_event: String,
}

pub fn path_rows(snap: &Snapshot) -> Vec<PathRow> {
    let interval = snap.sample.as_ref().map_or(1.0, |s| s.interval_s.max(1e-3));
    let mut rows = Vec::new();
    for l in &snap.luns {
        for p in &l.paths {
            let s = snap.sample.as_ref().and_then(|s| {
                s.paths
                    .iter()
                    .find(|x| x.lun == l.name && x.path == p.path.name)
            });
            let last_event = snap
                .events
                .get(&l.name)
                .and_then(|evs| evs.iter().rev().find(|e| e.path == p.path.name))
                .map_or_else(String::new, |e| {
                    format!("{:.1}s {}: {}", e.at_s, e.what, e.why)
                });
            rows.push(PathRow {
                lun: l.name.clone(),
                path: p.path.name.clone(),
                port: p.path.port.clone().unwrap_or_else(|| "-".into()),
                group: serde_name(&p.path.group),
                // The topology's state is the newest (it is read after the sample).
                state: serde_name(&p.path.state),
                iops: s.map_or(0.0, |s| s.iops),
                mb_s: s.map_or(0.0, |s| s.mib_s * 1.048576),
                actv: p.path.stats.in_flight,
                svct_ms: p.path.stats.ewma_service_s.map(|v| v * 1000.0),
                errors_per_s: s.map_or(0.0, |s| s.errors as f64 / interval),
                last_event,
            });
        }
    }
    rows
}

impl Row for PathRow {
    const HEADERS: &'static [&'static str] = &[
        "LUN",
        "PATH",
        "PORT",
        "GROUP",
        "STATE",
        "IOPS",
        "MB/s",
        "ACTV",
        "SVCT/ms",
        "ERR/s",
        "LAST EVENT",
    ];

    fn cells(&self) -> Vec<Cell> {
        vec![
            Cell::Text(self.lun.clone()),
            Cell::Text(self.path.clone()),
            Cell::Text(self.port.clone()),
            Cell::Text(self.group.clone()),
            Cell::Text(self.state.clone()),
            Cell::num(self.iops, 0),
            Cell::num(self.mb_s, 2),
            Cell::int(u64::from(self.actv)),
            Cell::opt(self.svct_ms, 3),
            Cell::num(self.errors_per_s, 0),
            Cell::Text(self.last_event.clone()),
        ]
    }

    fn mood(&self) -> Mood {
        if self.state == "failed" {
            Mood::Bad
        } else if self.errors_per_s > 0.0 || self.state == "returning" {
            Mood::Congested
        } else {
            Mood::Normal
        }
    }

    fn key(&self) -> String {
        format!("{} {} {} {}", self.lun, self.path, self.port, self.state)
    }
}

/// The topology as an indented tree, one line each: guest (tenant) → disk → LUN → paths, then
/// the LUNs no disk maps to.
pub fn topology_lines(snap: &Snapshot) -> Vec<(String, Mood)> {
    let mut out = Vec::new();
    let mut tenants: Vec<&str> = snap
        .luns
        .iter()
        .flat_map(|l| l.tenants.iter().map(|t| t.tenant.as_str()))
        .collect();
    tenants.sort();
    tenants.dedup();
    for tenant in tenants {
        out.push((format!("guest {tenant}"), Mood::Normal));
        let disks: Vec<_> = snap
            .luns
            .iter()
            .flat_map(|l| l.tenants.iter().map(move |t| (l, t)))
            .filter(|(_, t)| t.tenant == tenant)
            .collect();
        for (di, (l, t)) in disks.iter().enumerate() {
            let last_disk = di + 1 == disks.len();
            let (branch, stem) = if last_disk {
                ("└─", "   ")
            } else {
                ("├─", "│  ")
            };
            out.push((
                format!(
                    "{branch} disk {}  {}  weight {}{}{}",
                    t.socket.display(),
                    if t.connected {
                        "connected"
                    } else {
                        "not connected"
                    },
                    t.policy.weight,
                    if t.policy.reservation_iops > 0.0 {
                        format!("  reservation {} IOPS", t.policy.reservation_iops)
                    } else {
                        String::new()
                    },
                    if t.policy.limit_iops > 0.0 {
                        format!("  limit {} IOPS", t.policy.limit_iops)
                    } else {
                        String::new()
                    },
                ),
                if t.connected { Mood::Normal } else { Mood::Bad },
            ));
            out.push((format!("{stem}└─ {}", lun_line(l)), Mood::Normal));
            path_lines(&mut out, l, &format!("{stem}   "));
        }
    }
    for p in &snap.pools {
        let mood = if p.fs_full || p.used_pct >= 95.0 {
            Mood::Bad
        } else if p.used_pct >= 85.0 {
            Mood::Congested
        } else {
            Mood::Normal
        };
        let ttf = p
            .forecast
            .get(1)
            .and_then(|f| f.time_to_full_s)
            .map_or(String::new(), |t| {
                format!("  full in ~{t:.0} s (10-min rate)")
            });
        out.push((
            format!(
                "pool {}  {} of {} MiB used ({:.1} %)  overcommit {:.1}×  {}{}{}",
                p.name,
                p.used_bytes >> 20,
                p.capacity_bytes >> 20,
                p.used_pct,
                p.overcommit,
                p.dir.display(),
                if p.fs_full { "  FILESYSTEM FULL" } else { "" },
                ttf
            ),
            mood,
        ));
        for (i, l) in p.luns.iter().enumerate() {
            let branch = if i + 1 == p.luns.len() {
                "└─"
            } else {
                "├─"
            };
            out.push((
                format!(
                    "{branch} LUN {}  {} of {} MiB allocated",
                    l.lun,
                    l.allocated_bytes >> 20,
                    l.size_bytes >> 20
                ),
                Mood::Normal,
            ));
        }
    }
    let unmapped: Vec<_> = snap.luns.iter().filter(|l| l.tenants.is_empty()).collect();
    if !unmapped.is_empty() {
        out.push(("(no disk)".into(), Mood::Congested));
        for l in unmapped {
            out.push((format!("└─ {}", lun_line(l)), Mood::Congested));
            path_lines(&mut out, l, "   ");
        }
    }
    out
}

fn lun_line(l: &weir_broker::control::LunTopology) -> String {
    format!(
        "LUN {}  {}  {} MiB  {}  {}  selector {}  store {}",
        l.name,
        l.backend,
        l.size_bytes >> 20,
        l.scheduler,
        l.depth_policy,
        l.selector,
        l.path.display()
    )
}

fn path_lines(out: &mut Vec<(String, Mood)>, l: &weir_broker::control::LunTopology, indent: &str) {
    for (i, p) in l.paths.iter().enumerate() {
        let branch = if i + 1 == l.paths.len() {
            "└─"
        } else {
            "├─"
        };
        let state = serde_name(&p.path.state);
        out.push((
            format!(
                "{indent}{branch} path {}  {}  {}{}{}",
                p.path.name,
                state,
                serde_name(&p.path.group),
                p.path
                    .port
                    .as_ref()
                    .map_or(String::new(), |port| format!("  port {port}")),
                p.device
                    .as_ref()
                    .map_or(String::new(), |d| format!("  {}", d.display())),
            ),
            if state == "failed" {
                Mood::Bad
            } else {
                Mood::Normal
            },
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use weir_broker::control::{LunTopology, PathTopology, TenantTopology};
    use weir_broker::dispatch::PathSnapshot;
    use weir_broker::telemetry::{LunSample, TelemetrySample};
    use weir_sched::mclock::TenantPolicy;
    use weir_sched::path::{PathGroup, PathStats};

    use super::*;

    fn disk(tenant: &str, iops: f64, bytes: u64, queued: u64) -> DiskSample {
        let cost = weir_sched::cost::CostModel::default().cost(bytes);
        DiskSample {
            tenant: tenant.into(),
            lun: "l".into(),
            read_iops: iops,
            write_iops: 0.0,
            read_mib_s: iops * bytes as f64 / 1048576.0,
            write_mib_s: 0.0,
            cost_per_s: iops * cost,
            // Two at the store while it does I/O, none when idle.
            in_flight: queued + if iops > 0.0 { 2 } else { 0 },
            queued,
            device_latency_us: Some(1000.0),
            queue_latency_us: None,
            total_latency_us: Some(1500.0),
            rejected: 0,
            io_errors: 0,
            connected: true,
            held: 0,
            longest_idle_gap_ms: None,
        }
    }

    fn tenant(name: &str, policy: TenantPolicy) -> TenantTopology {
        TenantTopology {
            tenant: name.into(),
            socket: PathBuf::from(format!("/run/{name}.sock")),
            connected: true,
            policy,
        }
    }

    fn snapshot(
        disks: Vec<DiskSample>,
        tenants: Vec<TenantTopology>,
        state: PathState,
    ) -> Snapshot {
        Snapshot {
            sample: Some(TelemetrySample {
                t_s: 10.0,
                interval_s: 1.0,
                disks,
                luns: vec![LunSample {
                    lun: "l".into(),
                    window: 16,
                    knee: None,
                    dispersion: None,
                    in_flight: 16,
                    queued: 3,
                    congestion: 4,
                    halvings: 1,
                    reissued: 0,
                    max_failover_ms: None,
                }],
                ports: Vec::new(),
                paths: Vec::new(),
                pools: Vec::new(),
                host: None,
            }),
            luns: vec![LunTopology {
                name: "l".into(),
                path: "/var/l.img".into(),
                size_bytes: 1 << 30,
                read_only: false,
                direct_io: true,
                direct_unavailable: None,
                disks: tenants.iter().map(|t| t.socket.clone()).collect(),
                backend: "emulated".into(),
                scheduler: "mclock".into(),
                depth_policy: "adaptive".into(),
                tenants,
                selector: "service-time".into(),
                paths: vec![PathTopology {
                    path: PathSnapshot {
                        name: "a".into(),
                        port: Some("p0".into()),
                        group: PathGroup::Optimized,
                        state,
                        stats: PathStats::default(),
                    },
                    device: None,
                }],
            }],
            events: Default::default(),
            pools: Vec::new(),
        }
    }

    fn weight(w: f64) -> TenantPolicy {
        TenantPolicy {
            weight: w,
            ..TenantPolicy::default()
        }
    }

    #[test]
    fn shares_are_in_cost_units_and_entitlement_counts_only_active_tenants() {
        // 1000 IOPS of 64 KiB (cost 8.5 each) against 8500 IOPS of 4 KiB: equal work.
        let snap = snapshot(
            vec![
                disk("big", 1000.0, 65536, 1),
                disk("small", 8500.0, 4096, 1),
                disk("idle", 0.0, 4096, 0),
            ],
            vec![
                tenant("big", weight(1.0)),
                tenant("small", weight(1.0)),
                tenant("idle", weight(2.0)),
            ],
            PathState::Active,
        );
        let rows = tenant_rows(&snap);
        assert_eq!(rows.len(), 3);
        let share = |i: usize| rows[i].share_pct.unwrap();
        assert!((share(0) - 50.0).abs() < 1e-9, "{}", share(0));
        assert!((share(1) - 50.0).abs() < 1e-9);
        assert_eq!(rows[2].share_pct, Some(0.0));
        // The idle tenant's weight 2 is not in the divisor: it was not competing.
        assert_eq!(rows[0].entitled_pct, Some(50.0));
        assert_eq!(rows[2].entitled_pct, None);
        assert_eq!(rows[0].disk, "big.sock");
        assert_eq!((rows[0].actv, rows[0].qued), (2, 1), "ACTV excludes QUED");
        assert_eq!(rows[0].davg_ms, Some(1.0));
        assert_eq!(rows[0].kavg_ms, None, "a missing figure stays missing");
    }

    #[test]
    fn a_backlogged_tenant_under_its_reservation_misses_it_and_a_capped_one_hits_its_limit() {
        let snap = snapshot(
            vec![
                disk("r", 400.0, 4096, 5),
                disk("r-idle", 400.0, 4096, 0),
                disk("cap", 1990.0, 4096, 7),
            ],
            vec![
                tenant(
                    "r",
                    TenantPolicy {
                        reservation_iops: 500.0,
                        ..weight(1.0)
                    },
                ),
                tenant(
                    "r-idle",
                    TenantPolicy {
                        reservation_iops: 500.0,
                        ..weight(1.0)
                    },
                ),
                tenant(
                    "cap",
                    TenantPolicy {
                        limit_iops: 2000.0,
                        ..weight(1.0)
                    },
                ),
            ],
            PathState::Active,
        );
        let rows = tenant_rows(&snap);
        assert_eq!(rows[0].reservation, "MISS");
        assert_eq!(rows[0].mood(), Mood::Congested);
        assert_eq!(rows[1].reservation, "met", "asking for less is not a miss");
        assert_eq!(rows[2].limit, "HIT");
        assert_eq!(rows[0].limit, "-");
    }

    #[test]
    fn lun_rows_count_up_paths_and_congestion_per_second() {
        let snap = snapshot(
            vec![disk("a", 100.0, 4096, 0)],
            vec![tenant("a", weight(1.0))],
            PathState::Failed,
        );
        let l = &lun_rows(&snap)[0];
        assert_eq!((l.dqlen, l.actv, l.qued), (16, 16, 3));
        assert_eq!((l.paths_up, l.paths), (0, 1));
        assert_eq!(l.qfull_per_s, 4.0);
        assert_eq!(l.mood(), Mood::Bad, "a failed path");
        let p = &path_rows(&snap)[0];
        assert_eq!((p.state.as_str(), p.mood()), ("failed", Mood::Bad));
        let tree = topology_lines(&snap);
        let text: Vec<&str> = tree.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(text[0], "guest a");
        assert!(text[1].contains("disk /run/a.sock  connected"), "{text:?}");
        assert!(text[2].contains("LUN l  emulated"), "{text:?}");
        assert!(text[3].contains("path a  failed"), "{text:?}");
        assert_eq!(tree[3].1, Mood::Bad);
    }

    #[test]
    fn no_sample_yet_gives_no_tenant_rows_and_zero_lun_figures() {
        let mut snap = snapshot(Vec::new(), Vec::new(), PathState::Active);
        snap.sample = None;
        assert!(tenant_rows(&snap).is_empty());
        let l = &lun_rows(&snap)[0];
        assert_eq!((l.iops, l.mb_s), (0.0, 0.0));
        assert_eq!(l.cells()[7].text(), "0", "not -0");
        let tree = topology_lines(&snap);
        assert_eq!(tree[0].0, "(no disk)", "a LUN no disk maps to");
    }
}
