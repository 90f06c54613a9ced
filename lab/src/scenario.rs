//! `weir run` scenarios: the broker part (ports, LUNs, events — the same entries `weir sim`
//! reads), the guests with their disks and workloads, and what to compare. Documented in
//! `docs/scenarios.md`. Parsing is strict; every error names the entry and the field.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use weir_sched::depth::DepthPolicy;
use weir_sched::mclock::TenantPolicy;
use weir_sched::path::PathSelectorKind;
use weir_sched::sim::{EventSpec, HostSpec, LunSpec, PortSpec, SimScenario, TenantSpec, Workload};

/// A whole scenario.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RunScenario {
    /// Defaults to the file's stem.
    #[serde(default)]
    pub name: Option<String>,
    /// What the scenario shows (one line, printed with the results).
    #[serde(default)]
    pub purpose: Option<String>,
    /// Workload seconds of each guest unless the guest says otherwise.
    pub duration_s: f64,
    /// Seconds at the start of each guest's workload left out of per-second figures.
    #[serde(default)]
    pub warmup_s: f64,
    #[serde(default = "one")]
    pub repeat: u32,
    /// Policies run side by side: `fifo`, depth policies (`fixed:N`, `aimd`, `latency`,
    /// `adaptive`) or path selectors; empty: the LUNs as written.
    #[serde(default)]
    pub compare: Vec<String>,
    /// A guest whose tail latency is compared with a solo run of it under each policy.
    #[serde(default)]
    pub victim: Option<String>,
    #[serde(default = "seed")]
    pub seed: u64,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortSpec>,
    #[serde(rename = "lun")]
    pub luns: Vec<LunSpec>,
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
    #[serde(rename = "guest")]
    pub guests: Vec<GuestSpec>,
    /// Hosts, each a broker process of its own with its guests, sharing the scenario's real
    /// LUNs with no coordinator (PARDA: each host's window scaled by its `share`). None: one
    /// broker serves every guest.
    #[serde(default, rename = "host")]
    pub hosts: Vec<HostSpec>,
    /// Storage servers the run starts itself, fresh for every policy run, before the brokers.
    #[serde(default, rename = "target")]
    pub targets: Vec<crate::target::TargetSpec>,
}

fn one() -> u32 {
    1
}
fn seed() -> u64 {
    1
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    /// `weir` with hardware virtualization, else `weir-probe` for probe workloads and `qemu`
    /// for fio jobs.
    #[default]
    Auto,
    /// The Linux test guest in `weir vm` (needs VT-x/AMD-V).
    Weir,
    /// The probe guest in `weir vm`.
    WeirProbe,
    /// The Linux test guest under QEMU (KVM when usable, else TCG).
    Qemu,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuestSpec {
    pub name: String,
    #[serde(default)]
    pub engine: Engine,
    #[serde(default = "one_u32")]
    pub vcpus: u32,
    #[serde(default)]
    pub memory_mib: Option<u32>,
    /// Another kernel than the test image's (a path; mostly for tests of failure handling).
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(rename = "disk")]
    pub disks: Vec<GuestDisk>,
    pub workload: GuestWorkload,
    /// Seconds after the run starts before this guest starts.
    #[serde(default)]
    pub start_s: f64,
    /// Workload seconds (default: the scenario's).
    #[serde(default)]
    pub duration_s: Option<f64>,
    /// The `[[host]]` whose broker serves this guest's disk (required with hosts declared).
    #[serde(default)]
    pub host: Option<String>,
}

fn one_u32() -> u32 {
    1
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuestDisk {
    pub lun: String,
    #[serde(flatten)]
    pub policy: TenantPolicy,
}

/// Exactly one of: an inline fio job, a `.fio` file (relative to the scenario), or the probe
/// guest's options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct GuestWorkload {
    #[serde(default)]
    pub fio: Option<String>,
    #[serde(default)]
    pub fio_file: Option<PathBuf>,
    /// `probe.<key>=<value>` options without the prefix, e.g. `rw=randread iodepth=32`.
    #[serde(default)]
    pub probe: Option<String>,
}

/// A validated scenario with everything resolved.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub scenario: RunScenario,
    pub name: String,
    /// Per guest: the engine in use and its workload text (fio job, or probe options).
    pub guests: Vec<(Engine, String)>,
    pub policies: Vec<String>,
}

pub fn load(path: &Path) -> Result<RunScenario, String> {
    let text = weir_sched::check::read_config_text(path)
        .map_err(|e| format!("cannot read scenario {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| {
        let hint = if text.contains("[[tenant]]") {
            "\n(this looks like a `weir sim` scenario: its [[tenant]]s are synthetic; `weir run` \
             needs [[guest]] entries, see docs/scenarios.md)"
        } else {
            ""
        };
        format!("scenario {}: {e}{hint}", path.display())
    })
}

/// Checks every field and resolves engines and workloads; `base` is the scenario's directory,
/// `hw_virt` whether Linux can run under KVM here.
pub fn resolve(s: &RunScenario, file: &Path, hw_virt: bool) -> Result<Resolved, String> {
    let base = file.parent().unwrap_or(Path::new("."));
    use weir_sched::check::{self, MAX_DURATION_S};
    check::positive("duration_s", s.duration_s, MAX_DURATION_S)?;
    check::number("warmup_s", s.warmup_s, 0.0, MAX_DURATION_S)?;
    if s.repeat == 0 || s.repeat > 20 {
        return Err("repeat must be 1 to 20".into());
    }
    if s.guests.is_empty() {
        return Err("no [[guest]] entries: nothing would run".into());
    }
    let mut names = std::collections::HashSet::new();
    let mut guests = Vec::new();
    for (i, g) in s.guests.iter().enumerate() {
        if g.name.is_empty()
            || !g
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "guest[{i}].name '{}': use letters, digits, '-' and '_'",
                g.name
            ));
        }
        if !names.insert(g.name.clone()) {
            return Err(format!("guest[{i}].name '{}' is used twice", g.name));
        }
        if g.disks.len() != 1 {
            return Err(format!(
                "guest[{i}] ({}): give exactly one [[guest.disk]] (this version attributes a \
                 guest's fio results to one tenant)",
                g.name
            ));
        }
        let d = &g.disks[0];
        if !s.luns.iter().any(|l| l.name == d.lun) {
            return Err(format!("guest[{i}].disk[0].lun: no LUN named '{}'", d.lun));
        }
        if let Some(p) = d.policy.problem() {
            return Err(format!("guest[{i}].disk[0]: {p}"));
        }
        check::number(
            &format!("guest[{i}].start_s"),
            g.start_s,
            0.0,
            MAX_DURATION_S,
        )?;
        if let Some(d) = g.duration_s {
            check::positive(&format!("guest[{i}].duration_s"), d, MAX_DURATION_S)?;
        }
        check::count(&format!("guest[{i}].vcpus"), u64::from(g.vcpus), 1, 64)?;
        if let Some(m) = g.memory_mib {
            check::count(&format!("guest[{i}].memory_mib"), u64::from(m), 16, 65536)?;
        }
        let w = &g.workload;
        let given = [w.fio.is_some(), w.fio_file.is_some(), w.probe.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if given != 1 {
            return Err(format!(
                "guest[{i}].workload: give exactly one of fio (inline job), fio_file, probe"
            ));
        }
        let engine = match (g.engine, w.probe.is_some()) {
            (Engine::Auto, true) => Engine::WeirProbe,
            (Engine::Auto, false) if hw_virt => Engine::Weir,
            (Engine::Auto, false) => Engine::Qemu,
            (e, _) => e,
        };
        match (engine, w.probe.is_some()) {
            (Engine::WeirProbe, false) => {
                return Err(format!(
                    "guest[{i}] ({}): engine weir-probe runs the probe guest: give \
                     workload.probe (its options), or use engine qemu for a fio job",
                    g.name
                ));
            }
            (Engine::Weir | Engine::Qemu, true) => {
                return Err(format!(
                    "guest[{i}] ({}): workload.probe runs only on engine weir-probe",
                    g.name
                ));
            }
            (Engine::Weir, _) if !hw_virt => {
                return Err(format!(
                    "guest[{i}] ({}): engine weir boots Linux in weir vm, which needs hardware \
                     virtualization (VT-x/AMD-V); this host's KVM cannot run Linux: use engine \
                     qemu (TCG here) or weir-probe, or run the scenario in the lab VM (weir lab \
                     run --file SCENARIO -- weir run /lab/files/SCENARIO; docs/lab.md)",
                    g.name
                ));
            }
            _ => {}
        }
        let text = if let Some(job) = &w.fio {
            job.clone()
        } else if let Some(f) = &w.fio_file {
            let p = if f.is_absolute() {
                f.clone()
            } else {
                base.join(f)
            };
            weir_sched::check::read_config_text(&p)
                .map_err(|e| format!("guest[{i}].workload.fio_file {}: {e}", p.display()))?
        } else {
            w.probe.clone().unwrap_or_default()
        };
        if let Some(k) = &g.kernel {
            // A missing kernel is the guest's failure at run time, recorded, not the
            // scenario's: the others still run. Only say so here.
            if !k.exists() {
                log::warn!(
                    "guest[{i}] ({}): kernel {} does not exist; it will fail to boot",
                    g.name,
                    k.display()
                );
            }
        }
        shape(&text).map_err(|e| format!("guest[{i}].workload: {e}"))?;
        guests.push((engine, text));
    }
    if let Some((i, l)) = s.luns.iter().enumerate().find(|(_, l)| l.pool.is_some()) {
        return Err(format!(
            "lun[{i}] ({}).pool: weir run does not set up thin pools yet; simulate them with \
             weir sim, or run them with weir broker's [[pool]] (docs/thin.md)",
            l.name
        ));
    }
    // The broker part must also make a valid simulation (same rules, same messages); a
    // guest is the simulation's tenant of the same index.
    weir_sched::sim::validate_for_run(&to_sim(s, &guests)).map_err(|e| {
        match e.strip_prefix("tenant[") {
            Some(rest) => format!("guest[{rest} (from its disk and workload)"),
            None => e,
        }
    })?;
    weir_sched::sim::unique("target", s.targets.iter().map(|t| t.name.as_str()))?;
    for (i, t) in s.targets.iter().enumerate() {
        if let Some(p) = t.problem() {
            return Err(format!("target[{i}] ({}).{p}", t.name));
        }
    }
    // Hosts share a LUN only through storage they all reach: an emulated LUN is a model
    // inside one broker, so each host would get an array of its own.
    for (i, l) in s.luns.iter().enumerate() {
        let mut on: Vec<&str> = s
            .guests
            .iter()
            .filter(|g| g.disks.iter().any(|d| d.lun == l.name))
            .filter_map(|g| g.host.as_deref())
            .collect();
        on.sort_unstable();
        on.dedup();
        if on.len() > 1 && l.is_emulated() {
            return Err(format!(
                "lun[{i}] ({}).path: guests on hosts {} share this LUN, but an emulated LUN \
                 (no path) is a model inside one broker, so each host would get its own array; \
                 give it storage every host reaches: a file, a block device, nbd://... or \
                 iscsi://... (docs/scenarios.md, several hosts)",
                l.name,
                on.join(", ")
            ));
        }
    }
    if let Some(v) = &s.victim {
        if !s.guests.iter().any(|g| &g.name == v) {
            return Err(format!("victim: no guest named '{v}'"));
        }
    }
    let mut policies = Vec::new();
    for (i, p) in s.compare.iter().enumerate() {
        if p != "fifo"
            && DepthPolicy::from_short(p).is_none()
            && PathSelectorKind::from_short(p).is_none()
        {
            return Err(format!(
                "compare[{i}]: '{p}' is not a policy (fifo, fixed:N, aimd, latency, adaptive) nor a \
                 path selector (first-available, round-robin[:N], least-queue-depth, service-time)"
            ));
        }
        policies.push(p.clone());
    }
    if policies.is_empty() {
        policies.push("as-written".into());
    }
    for (i, e) in s.events.iter().enumerate() {
        e.action().map_err(|m| format!("event[{i}]: {m}"))?;
    }
    let name = s.name.clone().unwrap_or_else(|| {
        file.file_stem()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".into())
    });
    Ok(Resolved {
        scenario: s.clone(),
        name,
        guests,
        policies,
    })
}

/// The LUNs with `policy` applied (depth policy, fifo, or path selector).
pub fn luns_for(s: &RunScenario, policy: &str) -> Vec<LunSpec> {
    let mut luns = s.luns.clone();
    for l in &mut luns {
        if policy == "fifo" {
            l.scheduler = weir_sched::sim::SchedulerKind::Fifo;
        } else if let Some(d) = DepthPolicy::from_short(policy) {
            l.depth = Some(d.compared_on(l.depth.as_ref()));
        } else if let Some(sel) = PathSelectorKind::from_short(policy) {
            l.multipath.selector = sel;
        }
    }
    luns
}

/// A fio job's or probe workload's shape, for the simulation: (iodepth, bytes, read %, rate).
/// Forms it does not model (`bs=4k-64k`, `bssplit`) leave the default; numbers it cannot hold
/// are errors, naming the option.
fn shape(text: &str) -> Result<(u32, u64, f64, f64), String> {
    let mut depth = 1u32;
    let mut bs = 4096u64;
    let mut read = 100.0;
    let mut rate = 0.0;
    let mut mix = None;
    let mut rw = String::new();
    for tok in text.split(|c: char| c.is_whitespace()) {
        let tok = tok.trim();
        let Some((k, v)) = tok.split_once('=') else {
            continue;
        };
        let k = k.trim_start_matches("probe.");
        match k {
            "iodepth" => depth = v.parse().unwrap_or(depth),
            "bs" => match size(v) {
                Ok(n) => bs = n,
                Err(SizeError::TooLarge) => {
                    return Err(format!(
                        "{tok}: larger than any request weir models ({} bytes at most)",
                        weir_sched::check::MAX_REQUEST_BYTES
                    ));
                }
                Err(SizeError::NotASize) => {}
            },
            "rw" | "readwrite" => rw = v.to_string(),
            "rwmixread" => mix = v.parse().ok(),
            "rate_iops" => rate = v.parse().unwrap_or(0.0),
            _ => {}
        }
    }
    if rw.contains("write") && !rw.contains("rw") {
        read = 0.0;
    } else if rw.contains("rw") || rw == "randrw" {
        read = mix.unwrap_or(50.0);
    }
    Ok((depth.max(1), bs, read, rate))
}

#[derive(Debug, PartialEq)]
enum SizeError {
    /// Not `N`, `Nk`, `Nm` or `Ng`.
    NotASize,
    /// A size, but beyond `MAX_REQUEST_BYTES`.
    TooLarge,
}

/// A fio size (`4096`, `4k`, `1m`, `1g`; fio's k is 1024).
fn size(v: &str) -> Result<u64, SizeError> {
    let v = v.trim().to_ascii_lowercase();
    let (n, mult) = if let Some(n) = v.strip_suffix('k') {
        (n, 1u64 << 10)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 1 << 20)
    } else if let Some(n) = v.strip_suffix('g') {
        (n, 1 << 30)
    } else {
        (v.as_str(), 1)
    };
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SizeError::NotASize);
    }
    n.parse::<u64>()
        .ok()
        .and_then(|x| x.checked_mul(mult))
        .filter(|x| *x <= weir_sched::check::MAX_REQUEST_BYTES)
        .ok_or(SizeError::TooLarge)
}

/// The scenario as a simulation: each guest becomes a tenant with its workload's shape
/// (closed loop at its iodepth, or open at its rate).
pub fn to_sim(s: &RunScenario, workloads: &[(Engine, String)]) -> SimScenario {
    SimScenario {
        seed: s.seed,
        duration_s: s.duration_s,
        warmup_s: s.warmup_s.min(s.duration_s / 2.0),
        retry_delay_us: 1000.0,
        cost: Default::default(),
        ports: s.ports.clone(),
        luns: s.luns.clone(),
        tenants: s
            .guests
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let (depth, bytes, read_pct, rate) = workloads
                    .get(i)
                    .and_then(|(_, t)| shape(t).ok())
                    .unwrap_or((1, 4096, 100.0, 0.0));
                TenantSpec {
                    name: g.name.clone(),
                    lun: g.disks.first().map(|d| d.lun.clone()).unwrap_or_default(),
                    policy: g
                        .disks
                        .first()
                        .map(|d| d.policy.clone())
                        .unwrap_or_default(),
                    workload: if rate > 0.0 {
                        Workload::Open {
                            rate_iops: rate,
                            bytes,
                            read_pct,
                        }
                    } else {
                        Workload::Closed {
                            depth,
                            bytes,
                            read_pct,
                        }
                    },
                    start_s: g.start_s,
                    stop_s: g.duration_s.map(|d| g.start_s + d),
                    alloc_pct: 0.0,
                    host: g.host.clone(),
                }
            })
            .collect(),
        events: s.events.clone(),
        compare: s.compare.clone(),
        victim: s.victim.clone(),
        pools: Vec::new(),
        hosts: s.hosts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
duration_s = 10
compare = ["fifo", "adaptive"]
victim = "a"
[[port]]
name = "p0"
queue_limit = 32
[[lun]]
name = "l0"
port = "p0"
[[guest]]
name = "a"
workload = { probe = "rw=randread iodepth=1" }
[[guest.disk]]
lun = "l0"
[[guest]]
name = "b"
workload = { fio = "[b]\nrw=randwrite\nbs=8k\niodepth=16\n" }
[[guest.disk]]
lun = "l0"
weight = 2
"#;

    #[test]
    fn a_scenario_resolves_engines_and_simulates() {
        let s: RunScenario = toml::from_str(GOOD).unwrap();
        let r = resolve(&s, Path::new("scenarios/x.toml"), false).unwrap();
        assert_eq!(r.name, "x");
        assert_eq!(r.guests[0].0, Engine::WeirProbe);
        assert_eq!(r.guests[1].0, Engine::Qemu);
        assert_eq!(r.policies, ["fifo", "adaptive"]);
        let sim = to_sim(&s, &r.guests);
        assert_eq!(
            sim.tenants[1].workload,
            Workload::Closed {
                depth: 16,
                bytes: 8192,
                read_pct: 0.0
            }
        );
        assert_eq!(sim.tenants[1].policy.weight, 2.0);
        assert!(weir_sched::sim::run_compare(&sim).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        let bad = |from: &str, to: &str| {
            let s: RunScenario = toml::from_str(&GOOD.replacen(from, to, 1)).unwrap();
            resolve(&s, Path::new("x.toml"), false).unwrap_err()
        };
        assert!(
            bad("lun = \"l0\"\n[[guest]]", "lun = \"nope\"\n[[guest]]")
                .contains("guest[0].disk[0].lun")
        );
        assert!(bad("\"adaptive\"]", "\"fastest\"]").contains("compare[1]"));
        assert!(bad("victim = \"a\"", "victim = \"z\"").contains("victim"));
        let e = bad("name = \"b\"\n", "name = \"b\"\nengine = \"weir\"\n");
        assert!(
            e.contains("hardware virtualization") && e.contains("qemu"),
            "{e}"
        );
        let e = bad(
            "workload = { probe = \"rw=randread iodepth=1\" }",
            "workload = { }",
        );
        assert!(e.contains("exactly one of fio"), "{e}");
        assert!(toml::from_str::<RunScenario>(&GOOD.replace("duration_s", "duraton_s")).is_err());
    }

    #[test]
    fn every_shipped_run_scenario_resolves() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let mut n = 0;
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".toml") || name.starts_with("sim-") || name.starts_with("sweep") {
                continue;
            }
            let s = load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
            resolve(&s, &p, true).unwrap_or_else(|e| panic!("{name}: {e}"));
            n += 1;
        }
        assert!(n >= 8, "only {n} run scenarios in {}", dir.display());
    }

    #[test]
    fn hosts_are_named_and_share_only_real_luns() {
        let three = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/three-hosts.toml");
        let text = std::fs::read_to_string(&three).unwrap();
        let bad = |from: &str, to: &str| {
            let s: RunScenario = toml::from_str(&text.replacen(from, to, 1)).unwrap();
            resolve(&s, &three, false).unwrap_err()
        };
        let e = bad("host = \"h2\"", "host = \"h9\"");
        assert!(e.contains("guest[1].host") && e.contains("h9"), "{e}");
        let e = bad("host = \"h2\"\n", "");
        assert!(e.contains("guest[1].host"), "{e}");
        // The shared LUN as an emulated array: each host's broker would model its own.
        let e = bad(
            "path = \"nbd://127.0.0.1:10970/\"",
            "port = \"p0\"\nmodel = { servers = 1 }",
        );
        let e2 = {
            let t = text
                .replacen(
                    "path = \"nbd://127.0.0.1:10970/\"",
                    "port = \"p0\"\nmodel = { servers = 1 }",
                    1,
                )
                .replacen(
                    "[[lun]]",
                    "[[port]]\nname = \"p0\"\nqueue_limit = 64\n\n[[lun]]",
                    1,
                );
            let s: RunScenario = toml::from_str(&t).unwrap();
            resolve(&s, &three, false).unwrap_err()
        };
        assert!(e.contains("lun[0]"), "{e}");
        assert!(
            e2.contains("lun[0] (shared).path") && e2.contains("h1, h2, h3"),
            "{e2}"
        );
        let e = bad(
            "ready = \"tcp:127.0.0.1:10970\"",
            "ready = \"127.0.0.1:10970\"",
        );
        assert!(e.contains("target[0] (nbdkit).ready"), "{e}");
        let e = bad("command = [\"nbdkit\",", "command = [\"\",");
        assert!(e.contains("target[0] (nbdkit).command"), "{e}");
        // A real LUN's own fields are checked by the broker's rules.
        let e = bad(
            "path = \"nbd://127.0.0.1:10970/\"",
            "path = \"nbd://127.0.0.1:10970/\"\nmodel = { servers = 1 }",
        );
        assert!(
            e.contains("lun[0].backend") && e.contains("emulated"),
            "{e}"
        );
    }

    #[test]
    fn inputs_that_overflowed_or_read_forever_are_refused() {
        let bad = |from: &str, to: &str| {
            let s: RunScenario = toml::from_str(&GOOD.replacen(from, to, 1)).unwrap();
            resolve(&s, Path::new("x.toml"), false).unwrap_err()
        };
        // 99999999999999999 KiB wrapped silently in release and panicked in debug.
        let e = bad("bs=8k", "bs=99999999999999999k");
        assert!(e.starts_with("guest[1].workload: bs="), "{e}");
        let e = bad(
            "workload = { fio = \"[b]\\nrw=randwrite\\nbs=8k\\niodepth=16\\n\" }",
            "workload = { fio_file = \"/dev/zero\" }",
        );
        assert!(e.contains("not a regular file"), "{e}");
        let e = bad("duration_s = 10", "duration_s = inf");
        assert!(e.starts_with("duration_s"), "{e}");
        let e = bad("duration_s = 10", "duration_s = 1e15");
        assert!(e.starts_with("duration_s"), "{e}");
        let e = bad("iodepth=16", "iodepth=16 rate_iops=1e300");
        assert!(e.starts_with("guest[1].workload.rate_iops"), "{e}");
        assert_eq!(size("4k"), Ok(4096));
        assert_eq!(size("1g"), Ok(1 << 30));
        assert_eq!(size("4k-64k"), Err(SizeError::NotASize));
    }
}
