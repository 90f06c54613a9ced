//! `weir run`: one scenario, once per policy (and repeat), each time a fresh broker and fresh
//! guests; their results, the broker's telemetry, and the report.
//!
//! Everything it starts it stops: on success, on a guest's failure (recorded, the others go
//! on), on timeouts and on Ctrl-C (SIGINT/SIGTERM). Sockets and LUN images are removed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use weir_guest_images::GuestImage;
use weir_sched::lun::{ByteSize, LunBackend};

use crate::broker::BrokerProcess;
use crate::fio::FioReport;
use crate::fiojob::with_target;
use crate::guest_cpu::{GuestCpuSecond, GuestCpuWatch};
use crate::host::{AccelChoice, HostFacts};
use crate::hosts::{BrokerPlan, HostTelemetry};
use crate::probe::{ProbeReport, ProbeVm};
use crate::qemu::{GuestDisk, LinuxGuestSpec};
use crate::results::{self, GuestFailure, HostInfo, Latency, PolicyResult, Results, TenantResult};
use crate::scenario::{Engine, Resolved, RunScenario, luns_for};

/// Set by SIGINT/SIGTERM: stop what runs, tear down, report what was measured.
static ABORT: AtomicBool = AtomicBool::new(false);
/// Every guest process alive, so an abort can kill them.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

extern "C" fn on_signal(_: libc::c_int) {
    ABORT.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

fn register(pid: u32) {
    CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).push(pid);
}
fn unregister(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|p| *p != pid);
}
fn kill_all() {
    for pid in CHILDREN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        // SAFETY: kill(2) on a pid we started and have not reaped.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
}

pub fn aborted() -> bool {
    ABORT.load(Ordering::SeqCst)
}

/// What the run needs from the host.
pub struct RunEnv {
    pub weir: PathBuf,
    pub image: Option<GuestImage>,
    pub probe: Option<PathBuf>,
    pub accel: AccelChoice,
    pub facts: HostFacts,
    pub hw_virt: bool,
    pub tsc_khz: u64,
    pub progress: bool,
}

/// How one guest ended.
enum Outcome {
    Fio(FioReport),
    Probe(ProbeReport),
    Failed(String),
}

struct GuestPlan {
    name: String,
    engine: Engine,
    text: String,
    start_s: f64,
    duration_s: f64,
    memory_mib: Option<u32>,
    vcpus: u32,
    kernel: Option<PathBuf>,
}

fn toml_table(v: impl serde::Serialize) -> Result<toml::Table, String> {
    match toml::Value::try_from(v).map_err(|e| e.to_string())? {
        toml::Value::Table(t) => Ok(t),
        other => Err(format!("not a table: {other}")),
    }
}

/// The broker configuration of `broker` for `policy`: its control socket under its directory,
/// the LUNs its guests use (an emulated LUN on an image under `dir`; a LUN with a `path` as
/// written: a file, a block device, an NBD or iSCSI URI), a disk per guest at `dir/<guest>.sock`.
fn broker_config(
    s: &RunScenario,
    policy: &str,
    dir: &Path,
    broker: &BrokerPlan,
) -> Result<String, String> {
    let mut root = toml::Table::new();
    root.insert(
        "control_socket".into(),
        broker.control().display().to_string().into(),
    );
    if broker.host.is_some() {
        root.insert("host_share".into(), broker.share.into());
    }
    let ports: Vec<toml::Value> = s
        .ports
        .iter()
        .map(|p| toml_table(p).map(toml::Value::Table))
        .collect::<Result<_, _>>()?;
    root.insert("port".into(), toml::Value::Array(ports));
    let specs: Vec<&crate::scenario::GuestSpec> = broker
        .guests
        .iter()
        .map(|g| {
            s.guests
                .iter()
                .find(|x| &x.name == g)
                .ok_or("guest vanished")
        })
        .collect::<Result<_, _>>()?;
    let mut luns = Vec::new();
    for mut l in luns_for(s, policy) {
        let used = specs
            .iter()
            .any(|g| g.disks.iter().any(|d| d.lun == l.name));
        if broker.host.is_some() && !used {
            continue;
        }
        if l.path.is_none() {
            // The scenario's LUN is the broker's (one type, weir_sched::lun): only the store
            // is added, a file per LUN under the run directory.
            l.size = Some(ByteSize(l.size_bytes().unwrap_or(256 << 20)));
            l.size_mib = None;
            l.path = Some(dir.join(format!("{}.img", l.name)));
            l.backend = Some(LunBackend::Emulated);
        }
        l.shareable = true;
        luns.push(toml::Value::Table(toml_table(&l)?));
    }
    root.insert("lun".into(), toml::Value::Array(luns));
    let mut disks = Vec::new();
    for spec in &specs {
        let d = &spec.disks[0];
        let mut t = toml_table(&d.policy)?;
        t.insert(
            "socket".into(),
            dir.join(format!("{}.sock", spec.name))
                .display()
                .to_string()
                .into(),
        );
        t.insert("lun".into(), d.lun.clone().into());
        t.insert("tenant".into(), spec.name.clone().into());
        disks.push(toml::Value::Table(t));
    }
    root.insert("disk".into(), toml::Value::Array(disks));
    if !s.events.is_empty() {
        let events: Vec<toml::Value> = s
            .events
            .iter()
            .map(|e| toml_table(e).map(toml::Value::Table))
            .collect::<Result<_, _>>()?;
        root.insert("event".into(), toml::Value::Array(events));
    }
    toml::to_string(&root).map_err(|e| e.to_string())
}

/// One guest, start to end.
fn run_guest(
    g: &GuestPlan,
    env: &RunEnv,
    dir: &Path,
    seed: u64,
    bar: &ProgressBar,
    watch: &GuestCpuWatch,
) -> Outcome {
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < g.start_s {
        if aborted() {
            return Outcome::Failed("aborted before it started".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bar.set_message(format!("{}: starting ({:?})", g.name, g.engine));
    let socket = dir.join(format!("{}.sock", g.name));
    match g.engine {
        Engine::WeirProbe => {
            let Some(probe) = g.kernel.clone().or_else(|| env.probe.clone()) else {
                return Outcome::Failed("the probe guest is not built".into());
            };
            let mut opts: Vec<String> = g
                .text
                .split_whitespace()
                .map(|o| {
                    if o.starts_with("probe.") {
                        o.to_string()
                    } else {
                        format!("probe.{o}")
                    }
                })
                .collect();
            if !opts
                .iter()
                .any(|o| o.starts_with("probe.runtime_ms") || o.starts_with("probe.count"))
            {
                opts.push(format!(
                    "probe.runtime_ms={}",
                    (g.duration_s * 1000.0) as u64
                ));
            }
            // Like a real guest, the probe halts its vCPU while it waits (and KVM does not
            // poll for it): a polling probe takes a whole core per guest, and on a small host
            // the broker then waits for a CPU and every latency in the run stretches. A
            // workload that says `mode=` keeps its own.
            let halt = !opts.iter().any(|o| o.starts_with("probe.mode="));
            if halt {
                opts.push("probe.mode=halt".into());
            }
            opts.push(format!("probe.seed={seed}"));
            opts.push(format!("probe.tsc_khz={}", env.tsc_khz));
            // weir vm keeps the time limit itself: at its timeout it says where each vCPU was
            // (inside KVM_RUN and held there by the kernel, or in weir vm) before it stops the
            // guest, and the failure carries that report (a SIGKILL from here would not).
            let limit = g.duration_s + 60.0;
            let limit_arg = format!("{limit}");
            let mut extra: Vec<&str> = vec!["--timeout", &limit_arg];
            if halt {
                extra.extend(["--halt-poll-us", "0"]);
            }
            let vm = match ProbeVm::spawn_with(
                &env.weir,
                &probe,
                &[format!("socket={}", socket.display())],
                &opts.join(" "),
                dir,
                &g.name,
                &extra,
            ) {
                Ok(vm) => vm,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let pid = vm.child.id();
            register(pid);
            watch.add(&g.name, pid);
            bar.set_message(format!("{}: running (weir vm, pid {pid})", g.name));
            // Past weir vm's own limit only if weir vm itself hangs (its report takes ≤ 3 s).
            let r = vm.wait(Duration::from_secs_f64(limit + 15.0));
            watch.remove(&g.name);
            unregister(pid);
            match r {
                Ok(run) if run.exit_code == Some(0) => Outcome::Probe(run.report),
                Ok(run) => Outcome::Failed(format!(
                    "weir vm exited with {:?}; errors {} verify errors {}: {}",
                    run.exit_code,
                    run.report.errors,
                    run.report.verify_errors,
                    run.vmm_log.lines().last().unwrap_or("")
                )),
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
        Engine::Qemu | Engine::Weir | Engine::Auto => {
            let Some(image) = &env.image else {
                return Outcome::Failed("the Linux guest image is not built".into());
            };
            // A verifying job keeps its own size/loops; the duration is then its time limit
            // (docs/scenarios.md).
            let job = if crate::fiojob::verifies(&g.text) {
                format!("[global]\nrandseed={seed}\n{}", g.text)
            } else {
                format!(
                    "[global]\nruntime={}\ntime_based=1\nrandseed={seed}\n{}",
                    g.duration_s, g.text
                )
            };
            let mut spec = LinuxGuestSpec::new(
                &g.name,
                image,
                &with_target(&job, "/dev/vda"),
                env.accel.clone(),
                dir,
            );
            if g.engine == Engine::Weir {
                spec = spec.under_weir_vm(&env.weir, image);
            }
            if let Some(k) = &g.kernel {
                spec.kernel = k.clone();
            }
            if let Some(m) = g.memory_mib {
                spec.memory_mib = m;
            }
            spec.vcpus = g.vcpus;
            spec.fio_timeout = Duration::from_secs_f64(g.duration_s + 120.0);
            spec.disks.push(GuestDisk::VhostUser {
                socket: socket.clone(),
                queues: 1,
            });
            let running = match spec.spawn() {
                Ok(r) => r,
                Err(e) => return Outcome::Failed(e.to_string()),
            };
            let pid = running.pid();
            if let Some(p) = pid {
                register(p);
                watch.add(&g.name, p);
            }
            bar.set_message(format!(
                "{}: running ({}, pid {})",
                g.name,
                if g.engine == Engine::Weir {
                    "weir vm"
                } else {
                    "qemu"
                },
                pid.unwrap_or(0)
            ));
            let r = running.wait();
            watch.remove(&g.name);
            if let Some(p) = pid {
                unregister(p);
            }
            match r {
                Ok(run) => {
                    if let Some(raw) = &run.transcript.fio_output {
                        let _ = std::fs::write(dir.join(format!("{}.fio.json", g.name)), raw);
                    }
                    Outcome::Fio(run.report)
                }
                Err(e) => Outcome::Failed(e.to_string()),
            }
        }
    }
}

fn percentile_key(p: &str) -> Option<f64> {
    p.parse().ok()
}

fn tenant_from(
    g: &GuestPlan,
    s: &RunScenario,
    outcome: &Outcome,
    telemetry: &[serde_json::Value],
) -> TenantResult {
    let spec = s.guests.iter().find(|x| x.name == g.name);
    let disk = spec.and_then(|x| x.disks.first());
    let mut t = TenantResult {
        name: g.name.clone(),
        engine: match g.engine {
            Engine::WeirProbe => "weir-probe".into(),
            Engine::Weir => "weir".into(),
            _ => "qemu".into(),
        },
        lun: disk.map(|d| d.lun.clone()).unwrap_or_default(),
        host: spec.and_then(|x| x.host.clone()),
        weight: disk.map_or(1.0, |d| d.policy.weight),
        reservation_iops: disk.map_or(0.0, |d| d.policy.reservation_iops),
        limit_iops: disk.map_or(0.0, |d| d.policy.limit_iops),
        iops: 0.0,
        mbps: 0.0,
        lat_us: Latency::default(),
        errors: 0,
        ok: false,
        cdf: Vec::new(),
        per_second: Vec::new(),
        per_second_start_s: 0,
        cost_per_second: Vec::new(),
        backlogged: Vec::new(),
    };
    match outcome {
        Outcome::Fio(r) => {
            t.ok = true;
            for j in &r.jobs {
                t.iops += j.read.iops + j.write.iops;
                t.mbps += (j.read.bw_bytes + j.write.bw_bytes) as f64 / 1e6;
                if j.error != 0 {
                    t.errors += 1;
                }
            }
            // Latency from the job that did the most I/O (its reads, or writes if none).
            if let Some(j) = r
                .jobs
                .iter()
                .max_by_key(|j| j.read.total_ios + j.write.total_ios)
            {
                let d = if j.read.total_ios >= j.write.total_ios {
                    &j.read
                } else {
                    &j.write
                };
                let us = |p: f64| d.clat_ns.percentile_ns(p).map(|ns| ns as f64 / 1000.0);
                t.lat_us = Latency {
                    p50: us(50.0),
                    p99: us(99.0),
                    p999: us(99.9),
                };
                let mut cdf: Vec<(f64, f64)> = d
                    .clat_ns
                    .percentile
                    .iter()
                    .filter_map(|(k, v)| Some((percentile_key(k)?, *v as f64 / 1000.0)))
                    .collect();
                cdf.sort_by(|a, b| a.0.total_cmp(&b.0));
                t.cdf = cdf;
            }
        }
        Outcome::Probe(r) => {
            t.ok = true;
            if let Some(p) = r.phases.last() {
                t.iops = p.iops;
                t.mbps = p.mib_s * 1.048576;
                // A phase that completed nothing has no percentiles (the probe prints 0s).
                let us = |v: u64| (p.ios > 0).then_some(v as f64);
                t.lat_us = Latency {
                    p50: us(p.lat_us.p50),
                    p99: us(p.lat_us.p99),
                    p999: us(p.lat_us.p999),
                };
                t.cdf = vec![
                    (50.0, p.lat_us.p50 as f64),
                    (99.0, p.lat_us.p99 as f64),
                    (99.9, p.lat_us.p999 as f64),
                    (100.0, p.lat_us.max as f64),
                ];
            }
            t.errors = r.errors + r.verify_errors;
        }
        Outcome::Failed(_) => {}
    }
    // Every telemetry second of the run, this guest's disk in it (or none yet).
    let disk = |s: &serde_json::Value| -> Option<serde_json::Value> {
        s["disks"]
            .as_array()?
            .iter()
            .find(|d| d["tenant"] == g.name.as_str())
            .cloned()
    };
    let disks: Vec<Option<serde_json::Value>> = telemetry.iter().map(disk).collect();
    let series: Vec<f64> = disks
        .iter()
        .map(|d| {
            d.as_ref().map_or(0.0, |d| {
                d["read_iops"].as_f64().unwrap_or(0.0) + d["write_iops"].as_f64().unwrap_or(0.0)
            })
        })
        .collect();
    let first = series.iter().position(|v| *v > 0.0).unwrap_or(series.len());
    let last = series
        .iter()
        .rposition(|v| *v > 0.0)
        .map_or(first, |l| l + 1);
    t.per_second = series[first..last.max(first)].to_vec();
    t.per_second_start_s = first;
    t.cost_per_second = disks
        .iter()
        .map(|d| {
            d.as_ref()
                .and_then(|d| d["cost_per_s"].as_f64())
                .unwrap_or(0.0)
        })
        .collect();
    t.backlogged = disks
        .iter()
        .map(|d| d.as_ref().and_then(|d| d["queued"].as_u64()).unwrap_or(0) > 0)
        .collect();
    t
}

struct PolicyRun {
    hosts: crate::hosts::HostShares,
    tenants: Vec<TenantResult>,
    failures: Vec<GuestFailure>,
    telemetry: Vec<serde_json::Value>,
    guest_cpu: Vec<GuestCpuSecond>,
    wall_s: f64,
}

fn run_policy(
    r: &Resolved,
    env: &RunEnv,
    policy: &str,
    repeat: u32,
    dir: &Path,
    only: Option<&str>,
    mp: &MultiProgress,
) -> Result<PolicyRun, String> {
    let s = &r.scenario;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let plans: Vec<GuestPlan> = s
        .guests
        .iter()
        .zip(&r.guests)
        .filter(|(g, _)| only.is_none_or(|o| o == g.name))
        .map(|(g, (engine, text))| GuestPlan {
            name: g.name.clone(),
            engine: *engine,
            text: text.clone(),
            start_s: if only.is_some() { 0.0 } else { g.start_s },
            duration_s: g.duration_s.unwrap_or(s.duration_s),
            memory_mib: g.memory_mib,
            vcpus: g.vcpus,
            kernel: g.kernel.clone(),
        })
        .collect();
    // The targets first (fresh for every run), then the brokers that reach them.
    let mut targets = Vec::new();
    for t in &s.targets {
        // Not in CHILDREN: an abort ends the guests, and the run then stops its targets.
        targets.push(crate::target::RunningTarget::start(t, dir)?);
    }
    let names: Vec<&str> = plans.iter().map(|g| g.name.as_str()).collect();
    let broker_plans = crate::hosts::plan(s, dir, &names);
    let started = Instant::now();
    let mut brokers = Vec::new();
    for b in &broker_plans {
        let config = broker_config(s, policy, dir, b)?;
        let on = b
            .host
            .as_ref()
            .map_or(String::new(), |h| format!(" on host {h}"));
        let at = started.elapsed().as_secs_f64();
        let broker = BrokerProcess::start_in(
            &env.weir,
            &config,
            Some(b.control()),
            &b.dir,
            b.netns.as_deref(),
        )
        .map_err(|e| format!("broker for {policy}{on}: {e}"))?;
        brokers.push((broker, at));
    }
    let style = ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
        .map_err(|e| e.to_string())?;
    let all_done = AtomicBool::new(false);
    let guest_watch = GuestCpuWatch::start(started);
    let watch = &guest_watch;
    let outcomes: Vec<Outcome> = std::thread::scope(|scope| {
        // Ctrl-C: kill every guest now rather than when its workload would have ended.
        scope.spawn(|| {
            while !all_done.load(Ordering::SeqCst) {
                if aborted() {
                    kill_all();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let handles: Vec<_> = plans
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let bar = mp.add(ProgressBar::new(
                    ((g.start_s + g.duration_s) * 10.0) as u64 + 1,
                ));
                bar.set_style(style.clone());
                bar.set_message(format!("{}: waiting", g.name));
                let ticker_bar = bar.clone();
                let total = g.start_s + g.duration_s;
                let seed = s.seed.wrapping_add(i as u64 * 7919 + u64::from(repeat));
                scope.spawn(move || {
                    let done = Arc::new(AtomicBool::new(false));
                    let d2 = done.clone();
                    let t0 = Instant::now();
                    let ticker = std::thread::spawn(move || {
                        while !d2.load(Ordering::SeqCst) {
                            let e = t0.elapsed().as_secs_f64().min(total);
                            ticker_bar.set_position((e * 10.0) as u64);
                            std::thread::sleep(Duration::from_millis(200));
                        }
                    });
                    let o = run_guest(g, env, dir, seed, &bar, watch);
                    done.store(true, Ordering::SeqCst);
                    let _ = ticker.join();
                    match &o {
                        Outcome::Failed(e) => bar.abandon_with_message(format!(
                            "{}: FAILED: {}",
                            g.name,
                            e.lines().next().unwrap_or("")
                        )),
                        _ => bar.finish_with_message(format!("{}: done", g.name)),
                    }
                    o
                })
            })
            .collect();
        let outcomes = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Outcome::Failed("guest thread panicked".into()))
            })
            .collect();
        all_done.store(true, Ordering::SeqCst);
        outcomes
    });
    let mut per_broker = Vec::new();
    for (b, (mut broker, at)) in broker_plans.iter().zip(brokers) {
        let samples = weir_broker::control::query(&b.control(), "telemetry")
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        broker.stop();
        let _ = std::fs::write(b.dir.join("broker.log"), broker.log());
        per_broker.push(HostTelemetry {
            host: b.host.clone(),
            started_s: at,
            samples,
        });
    }
    let telemetry = crate::hosts::merge(per_broker);
    drop(targets);
    // Nothing left behind: sockets, the control sockets, the LUN images (only those the run
    // made: a LUN's own `path` is the user's).
    for d in std::iter::once(dir.to_path_buf()).chain(broker_plans.iter().map(|b| b.dir.clone())) {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let ours = match p.extension().and_then(|x| x.to_str()) {
                Some("sock" | "ctl") => true,
                Some("img") => !s
                    .luns
                    .iter()
                    .any(|l| l.path.as_deref() == Some(p.as_path())),
                _ => false,
            };
            if ours {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let mut failures = Vec::new();
    let mut tenants = Vec::new();
    for (g, o) in plans.iter().zip(&outcomes) {
        if let Outcome::Failed(e) = o {
            failures.push(GuestFailure {
                guest: g.name.clone(),
                error: e.clone(),
            });
        }
        tenants.push(tenant_from(g, s, o, &telemetry));
    }
    let hosts = crate::hosts::judge(
        &broker_plans,
        &tenants,
        &telemetry,
        s.warmup_s.round() as usize,
    );
    Ok(PolicyRun {
        hosts,
        tenants,
        failures,
        telemetry,
        guest_cpu: guest_watch.finish(),
        wall_s: started.elapsed().as_secs_f64(),
    })
}

/// Runs every policy (× repeat) of the scenario into `out`; writes `scenario.toml`,
/// `telemetry.jsonl`, `results.json`, `report.html`.
pub fn run(r: &Resolved, scenario_text: &str, env: &RunEnv, out: &Path) -> Result<Results, String> {
    install_signal_handlers();
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    std::fs::write(out.join("scenario.toml"), scenario_text).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mp = if env.progress {
        MultiProgress::new()
    } else {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    };
    let mut telemetry_lines = String::new();
    let mut policies = Vec::new();
    let s = &r.scenario;
    for repeat in 0..s.repeat {
        for policy in &r.policies {
            if aborted() {
                break;
            }
            let label = if s.repeat > 1 {
                format!("{policy}#{repeat}")
            } else {
                policy.clone()
            };
            let _ = mp.println(format!("== {label} =="));
            let dir = out.join(label.replace(':', "-"));
            let run = run_policy(r, env, policy, repeat, &dir, None, &mp)?;
            for sample in &run.telemetry {
                let line =
                    serde_json::json!({ "policy": policy, "repeat": repeat, "sample": sample });
                let _ = writeln!(telemetry_lines, "{line}");
            }
            let victim_solo = match (&s.victim, repeat) {
                (Some(v), 0) if !aborted() => {
                    let _ = mp.println(format!("== {label}: {v} alone =="));
                    let solo = run_policy(
                        r,
                        env,
                        policy,
                        repeat,
                        &dir.join("victim-solo"),
                        Some(v),
                        &mp,
                    )?;
                    Some((
                        solo.tenants.into_iter().find(|t| t.ok),
                        crate::trust::assess(&solo.telemetry, &solo.guest_cpu),
                    ))
                }
                _ => None,
            };
            let (victim_solo, victim_solo_trust) = match victim_solo {
                Some((t, trust)) => (t, Some(trust)),
                None => (None, None),
            };
            let trust = crate::trust::assess(&run.telemetry, &run.guest_cpu);
            if let Some(line) = crate::trust::summary(&trust) {
                let _ = mp.println(format!("== {label}: DISTORTED: {line}"));
            }
            let warmup = s.warmup_s.round() as usize;
            let mut metrics = results::compute_metrics(&run.tenants, warmup);
            metrics.host_cost_jain = run.hosts.cost_jain;
            metrics.host_cost_max_share_error = run.hosts.cost_max_share_error;
            metrics.host_contended_seconds = run.hosts.contended_seconds;
            policies.push(PolicyResult {
                name: policy.clone(),
                repeat,
                wall_s: run.wall_s,
                tenants: run.tenants,
                metrics,
                failures: run.failures,
                victim_solo,
                trust,
                victim_solo_trust,
                hosts: run.hosts.hosts,
            });
        }
    }
    results::finish(&mut policies, s.victim.as_deref());
    let results = Results {
        schema: results::SCHEMA.into(),
        scenario: r.name.clone(),
        purpose: s.purpose.clone(),
        started_unix_s: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            .saturating_sub(started.elapsed().as_secs()),
        wall_s: started.elapsed().as_secs_f64(),
        host: HostInfo {
            hardware_virtualization: env.hw_virt,
            kvm: env.facts.kvm.clone(),
            engines: s
                .guests
                .iter()
                .zip(&r.guests)
                .map(|(g, (e, _))| match e {
                    Engine::WeirProbe => format!("{}: weir-probe (weir vm, KVM)", g.name),
                    Engine::Weir => format!("{}: weir (Linux in weir vm, KVM)", g.name),
                    _ => format!("{}: qemu ({})", g.name, env.accel),
                })
                .collect(),
            kernel: env.facts.kernel.clone(),
            cpu: env.facts.cpu.clone(),
            cpus: env.facts.cpus,
        },
        policies,
    };
    std::fs::write(out.join("telemetry.jsonl"), telemetry_lines).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(&results).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), json).map_err(|e| e.to_string())?;
    let telemetry = crate::report::read_telemetry(&out.join("telemetry.jsonl"));
    std::fs::write(
        out.join("report.html"),
        crate::report::html(&results, &telemetry),
    )
    .map_err(|e| e.to_string())?;
    if aborted() {
        kill_all();
        return Err(format!(
            "interrupted; what was measured is in {}",
            out.display()
        ));
    }
    Ok(results)
}

pub fn default_out(name: &str) -> PathBuf {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("runs/{name}-{t}"))
}
