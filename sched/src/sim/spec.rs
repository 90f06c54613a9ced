//! What `weir sim` reads: the scenario (ports, LUNs and their paths, tenants, events) and its
//! validation, which names the entry and field of every problem.

use serde::{Deserialize, Serialize};

use crate::array::{PortFault, PortModel};
use crate::check;
use crate::cost::CostModel;
use crate::depth::DepthPolicy;
use crate::lun::LunSpec;
use crate::mclock::TenantPolicy;
use crate::path::PathSelectorKind;
use crate::sim_pool::PoolSpec;

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
    /// Hosts sharing the array, each with its own broker (PARDA): a tenant naming a `host`
    /// reaches its LUN through that host's dispatcher and window; the hosts' dispatchers for
    /// one LUN share the array LUN and see only their own requests. None: one host.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
}

/// One host of several sharing the array.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    pub name: String,
    /// The host's share (PARDA's `β` is scaled by it, `DepthPolicy::for_host_share`).
    /// Default: the sum of its tenants' weights on the LUN.
    #[serde(default)]
    pub share: Option<f64>,
    /// `weir run` only: the network namespace (`ip netns add NAME`, made beforehand) the host's
    /// broker runs in, so that its traffic to the target crosses that namespace's links (and
    /// any `tc` shaping on them). `weir sim` has no network and ignores it.
    #[serde(default)]
    pub netns: Option<String>,
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
    /// The `[[host]]` whose broker this tenant's requests go through (with hosts declared).
    #[serde(default)]
    pub host: Option<String>,
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

/// Problems with a scenario, naming the entry and field.
pub fn validate(s: &SimScenario) -> Result<(), String> {
    validate_with(s, false)
}

/// The same for `weir run`, whose LUNs may also be real storage (a `path`: a file, a block
/// device, an NBD or iSCSI URI), checked by the broker's rules.
pub fn validate_for_run(s: &SimScenario) -> Result<(), String> {
    validate_with(s, true)
}

fn validate_with(s: &SimScenario, real_stores: bool) -> Result<(), String> {
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
    unique("host", s.hosts.iter().map(|h| h.name.as_str()))?;
    for (i, h) in s.hosts.iter().enumerate() {
        if let Some(share) = h.share {
            check::positive(&format!("host[{i}].share"), share, 1e9)?;
        }
    }
    for (i, t) in s.tenants.iter().enumerate() {
        match (&t.host, s.hosts.is_empty()) {
            (Some(h), false) if !s.hosts.iter().any(|x| &x.name == h) => {
                return Err(format!("tenant[{i}].host: no [[host]] named '{h}'"));
            }
            (Some(_), true) => {
                return Err(format!(
                    "tenant[{i}].host: no [[host]] entries: declare the hosts, or remove host"
                ));
            }
            (None, false) => {
                return Err(format!(
                    "tenant[{i}].host: with [[host]] entries every tenant names its host"
                ));
            }
            _ => {}
        }
    }
    if !s.hosts.is_empty() {
        if let Some(i) = s.ports.iter().position(|p| p.budget.is_some()) {
            return Err(format!(
                "port[{i}].budget: a port budget is one broker's; with [[host]] entries remove it"
            ));
        }
    }
    for (i, p) in s.ports.iter().enumerate() {
        check::within(&format!("port[{i}]"), p)?;
    }
    for (i, l) in s.luns.iter().enumerate() {
        // What only a simulation refuses (it has no store), then the broker's validator.
        if real_stores && l.path.is_some() {
            l.check_in(i, &s.ports)?;
            continue;
        }
        if l.path.is_some() {
            return Err(format!(
                "lun[{i}].path: weir sim models the array and has no store; remove path (weir run uses it)"
            ));
        }
        if !l.is_emulated() {
            return Err(format!(
                "lun[{i}].backend: weir sim models emulated LUNs only; remove backend = \"{}\"",
                format!("{:?}", l.backend()).to_lowercase()
            ));
        }
        l.check_in(i, &s.ports)?;
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

/// Each name non-empty and used once, or the entry (`kind[i].name`) that is not.
pub fn unique<'a>(kind: &str, names: impl Iterator<Item = &'a str>) -> Result<(), String> {
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
