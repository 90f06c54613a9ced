//! Weights on real storage, measured: two probe guests under `weir vm` (4 KiB random reads)
//! share one LUN backed by a file on this machine's disk, then by a loop block device over such
//! a file, with weights 1 and 4. A file or block device never answers BUSY, so only the window
//! keeps requests waiting in the broker, where mClock divides them. Run by hand (root, for
//! losetup): `WEIR_PROBE_QD=200 cargo test --release --test real_storage_weights -- --ignored
//! --nocapture` (`WEIR_THROTTLE_IOPS=N` caps the device with the blkio cgroup).
//!
//! What it showed (docs/window-real-storage.md, "Weights on real storage"): the weights hold exactly
//! (4.00) once the window binds and each guest keeps more requests outstanding than its share of
//! the window — QD 200 here; at QD 32 the heavier guest's queue in the broker empties whenever
//! its own turnaround lags (a knee of ~40 on this disk is more than 80 % of 32), and mClock has
//! nothing of it to favour. Not yet a test of a property: the knee search's window on these
//! devices (18–144) costs 0.6–1.0 of the throughput. The test below holds the window at 32 and
//! checks the scheduler's part: 3.98–4.00 here on both, six runs on a quiet host (3.44 once
//! while a build took both cores: a starved guest cannot keep its queue full). Four guests
//! 1:2:4:8 (`four_guests_1_2_4_8_against_unweighted`, by hand): Jain 1.0000 in cost units on
//! both at `fixed:32`, 0.99–1.00 under `adaptive`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::probe::ProbeVm;

const LUN_MIB: u64 = 256;
const RUN_MS: u64 = 8000;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

/// A file of `LUN_MIB` MiB of real data on the machine's disk (not tmpfs, not sparse: reads of
/// holes or unwritten extents never reach the device).
fn data_file(dir: &Path) -> PathBuf {
    let path = dir.join("lun.img");
    let out = Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "oflag=direct"])
        .arg(format!("of={}", path.display()))
        .arg(format!("count={LUN_MIB}"))
        .output()
        .expect("dd runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// A loop device over `file` with direct I/O, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| Loop(String::from_utf8_lossy(&out.stdout).trim().to_string()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// `major:minor` of a device number (glibc's encoding).
fn dev_pair(dev: u64) -> String {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    format!("{major}:{minor}")
}

/// The block device a path's I/O goes to: itself when it is one, else the device it lives on.
fn block_device_of(path: &Path) -> String {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).unwrap();
    dev_pair(if m.file_type().is_block_device() {
        m.rdev()
    } else {
        m.dev()
    })
}

/// A blkio (cgroup v1) group holding the broker, with a read IOPS cap on one block device: the
/// kernel's own throttle makes the storage the bottleneck (as a cloud disk's IOPS cap does),
/// which this machine's disk is not for two CPU-bound probe guests. Removed on drop.
struct Throttle(PathBuf);

impl Throttle {
    fn apply(pid: u32, device: &str, iops: u64) -> Throttle {
        let dir = PathBuf::from(format!(
            "/sys/fs/cgroup/blkio/weir-test-{}-{pid}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("a blkio cgroup (cgroup v1, root)");
        std::fs::write(
            dir.join("blkio.throttle.read_iops_device"),
            format!("{device} {iops}"),
        )
        .expect("the throttle rule");
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).expect("the broker moves in");
        Throttle(dir)
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        if let Ok(pids) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for pid in pids.lines() {
                let _ = std::fs::write("/sys/fs/cgroup/blkio/cgroup.procs", pid);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// What one run measured over the seconds every guest was backlogged.
#[derive(Debug)]
struct Shares {
    /// Cost per second of each guest (in the order of the weights), over the seconds every
    /// guest had requests waiting in the broker.
    cost: Vec<f64>,
    /// The same over every second all guests ran.
    active_cost: Vec<f64>,
    /// The guests' IOPS and the LUN's window, over every second all ran.
    iops: f64,
    mean_window: f64,
    /// The LUN's window and the guests' IOPS in each second all ran (to read a run by).
    windows: Vec<u64>,
    per_second_iops: Vec<u64>,
    /// `adaptive`: the knee search's estimate and the completions' dispersion φ at the end
    /// of each second all ran (a broker that reports them).
    knees: Vec<(f64, f64)>,
    seconds: usize,
    active_seconds: usize,
}

#[allow(clippy::too_many_arguments)]
fn run(
    broker_bin: &Path,
    dir: &Path,
    probe: &Path,
    backing: &str,
    depth: Option<&str>,
    throttle_iops: Option<u64>,
    qd: u32,
    weights: &[u32],
) -> Shares {
    let tenants: Vec<String> = (0..weights.len()).map(|i| format!("g{i}")).collect();
    let control = dir.join("broker.ctl");
    let mut c = format!(
        "control_socket = {:?}\n[[lun]]\nname = \"shared\"\npath = {backing:?}\nshareable = true\nread_only = true\n",
        control.display().to_string()
    );
    if let Some(d) = depth {
        c.push_str(&format!("depth = {d}\n"));
    }
    // A ring of 256 carries at most 77 of the probe's requests (three descriptors each).
    let queue_size = if qd > 77 { 1024 } else { 256 };
    for (tenant, weight) in tenants.iter().zip(weights) {
        c.push_str(&format!(
            "[[disk]]\nsocket = {:?}\nlun = \"shared\"\ntenant = \"{tenant}\"\nweight = {weight}\nqueue_size = {queue_size}\n",
            dir.join(format!("{tenant}.sock")).display().to_string()
        ));
    }
    let mut broker =
        BrokerProcess::start(broker_bin, &c, Some(control.clone()), dir).expect("broker starts");
    let _throttle = throttle_iops.map(|iops| {
        Throttle::apply(
            broker.pid().expect("the broker runs"),
            &block_device_of(Path::new(backing)),
            iops,
        )
    });
    let options = format!(
        "probe.iodepth={qd} probe.queue_size={queue_size} probe.rw=randread probe.mode=halt probe.size_mib={LUN_MIB} probe.runtime_ms={RUN_MS}"
    );
    let guests: Vec<ProbeVm> = tenants
        .iter()
        .map(|t| {
            let disk = format!(
                "socket={},queue_size={queue_size}",
                dir.join(format!("{t}.sock")).display()
            );
            ProbeVm::spawn(&weir(), probe, &[disk], &options, dir, t).unwrap()
        })
        .collect();
    for g in guests {
        let r = g
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\nbroker:\n{}", broker.log()));
        assert_eq!(r.exit_code, Some(0), "{}", r.vmm_log);
        assert_eq!(r.report.errors, 0);
    }
    let telemetry = query(&control, "telemetry").unwrap();
    let _ = broker.stop();
    let samples = telemetry.as_array().expect("telemetry samples");
    let busy =
        |s: &&serde_json::Value, i: usize| s["disks"][i]["read_iops"].as_f64().unwrap_or(0.0) > 0.0;
    // Seconds in which both guests had requests waiting in the broker: the seconds in which
    // the scheduler divided something.
    let backlogged: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| {
            (0..weights.len())
                .all(|i| busy(s, i) && s["disks"][i]["queued"].as_u64().unwrap_or(0) > 0)
        })
        .collect();
    // Seconds in which both ran (a window that never binds has no backlog, and no division).
    let active: Vec<&serde_json::Value> = samples
        .iter()
        .filter(|s| (0..weights.len()).all(|i| busy(s, i)))
        .collect();
    let mean = |set: &[&serde_json::Value], f: &dyn Fn(&serde_json::Value) -> f64| {
        set.iter().map(|s| f(s)).sum::<f64>() / set.len().max(1) as f64
    };
    let cost =
        |i: usize| move |s: &serde_json::Value| s["disks"][i]["cost_per_s"].as_f64().unwrap_or(0.0);
    let iops = |s: &serde_json::Value| {
        (0..weights.len())
            .map(|i| s["disks"][i]["read_iops"].as_f64().unwrap_or(0.0))
            .sum::<f64>()
    };
    Shares {
        cost: (0..weights.len())
            .map(|i| mean(&backlogged, &cost(i)))
            .collect(),
        active_cost: (0..weights.len())
            .map(|i| mean(&active, &cost(i)))
            .collect(),
        iops: mean(&active, &iops),
        mean_window: mean(&active, &|s| s["luns"][0]["window"].as_f64().unwrap_or(0.0)),
        windows: active
            .iter()
            .map(|s| s["luns"][0]["window"].as_f64().unwrap_or(0.0) as u64)
            .collect(),
        per_second_iops: active.iter().map(|s| iops(s) as u64).collect(),
        knees: active
            .iter()
            .filter_map(|s| {
                let l = &s["luns"][0];
                Some((l["knee"].as_f64()?, l["dispersion"].as_f64()?))
            })
            .collect(),
        seconds: backlogged.len(),
        active_seconds: active.len(),
    }
}

/// A directory under target/ (the machine's disk, not tmpfs) holding the data file, the file's
/// path and a loop device over it.
fn storage() -> (tempfile::TempDir, String, Loop) {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let file = data_file(dir.path());
    let lo = Loop::attach(&file).expect("losetup --direct-io (root)");
    (dir, file.display().to_string(), lo)
}

/// Three interleaved rounds of the deep fixed window (weights ignored), `adaptive` 1:4 and
/// `adaptive` 1:1 on the file and on the loop device (run by hand:
/// `cargo test --release --test real_storage_weights -- --ignored --nocapture`).
#[test]
#[ignore]
fn rounds_fixed_1024_against_the_default_window() {
    let Some(probe) = common::probe_guest_setup("real_storage_weights_rounds") else {
        return;
    };
    let (dir, file_path, lo) = storage();
    // `WEIR_BROKER_BINS=a:b` runs each configuration once per broker binary in every round
    // (an A/B of two builds, interleaved); by default the one built here.
    let bins: Vec<PathBuf> = std::env::var("WEIR_BROKER_BINS")
        .map(|v| v.split(':').map(PathBuf::from).collect())
        .unwrap_or_else(|_| vec![weir()]);
    for round in 1..=3 {
        for (kind, backing) in [("file", file_path.as_str()), ("loop", lo.0.as_str())] {
            for bin in &bins {
                for (depth, weights) in [
                    ("{ policy = \"fixed\", depth = 1024 }", [1, 4]),
                    ("{ policy = \"adaptive\" }", [1, 4]),
                    ("{ policy = \"adaptive\" }", [1, 1]),
                ] {
                    let throttle = std::env::var("WEIR_THROTTLE_IOPS")
                        .ok()
                        .and_then(|v| v.parse().ok());
                    let qd = std::env::var("WEIR_PROBE_QD")
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(32);
                    let s = run(
                        bin,
                        dir.path(),
                        &probe,
                        backing,
                        Some(depth),
                        throttle,
                        qd,
                        &weights,
                    );
                    eprintln!(
                        "round {round} {kind} {} {} {}:{}: ratio {:.2} over {} backlogged s, {:.2} over {} s; {:.0} IOPS, window {:.1}\n  windows {:?}\n  IOPS {:?}\n  (knee, φ) {:.1?}",
                        bin.display(),
                        if depth.contains("fixed") {
                            "fixed:1024"
                        } else {
                            "adaptive"
                        },
                        weights[0],
                        weights[1],
                        s.cost[1] / s.cost[0],
                        s.seconds,
                        s.active_cost[1] / s.active_cost[0],
                        s.active_seconds,
                        s.iops,
                        s.mean_window,
                        s.windows,
                        s.per_second_iops,
                        s.knees,
                    );
                }
            }
        }
    }
}

/// The scheduler on real storage: weights 1:4 on a file LUN on this machine's disk and on a
/// loop device over it, a window that binds (fixed 32) and guests that ask for more than it
/// (QD 200 each). mClock's shares in cost units, over the seconds both guests had requests
/// waiting in the broker, must be 1:4 within 10 %. (The adaptive window's own choice on these
/// devices is the bench above: it does not bind reliably yet.)
#[test]
fn weights_hold_on_a_file_and_a_loop_device_when_the_window_binds() {
    let Some(probe) = common::probe_guest_setup("real_storage_weights") else {
        return;
    };
    let (dir, file_path, lo) = storage();
    for (kind, backing) in [("file", file_path.as_str()), ("loop", lo.0.as_str())] {
        let s = run(
            &weir(),
            dir.path(),
            &probe,
            backing,
            Some("{ policy = \"fixed\", depth = 32 }"),
            None,
            200,
            &[1, 4],
        );
        let ratio = s.cost[1] / s.cost[0];
        eprintln!(
            "{kind}: ratio {ratio:.2} over {} backlogged s of {}; {:.0} IOPS",
            s.seconds, s.active_seconds, s.iops
        );
        assert!(
            s.seconds >= 4,
            "{kind}: only {} seconds with both guests waiting in the broker: {s:?}",
            s.seconds
        );
        assert!(
            (3.6..=4.4).contains(&ratio),
            "{kind}: weight-4 / weight-1 cost {ratio:.2}, not 4 ± 10 %: {s:?}"
        );
    }
}

/// Jain's index of cost ÷ weight: 1 when every guest got exactly its weighted share.
fn jain(cost: &[f64], weights: &[u32]) -> f64 {
    let x: Vec<f64> = cost
        .iter()
        .zip(weights)
        .map(|(c, w)| c / f64::from(*w))
        .collect();
    let sum: f64 = x.iter().sum();
    let sq: f64 = x.iter().map(|v| v * v).sum();
    sum * sum / (x.len() as f64 * sq)
}

/// Four guests, weights 1:2:4:8, beside the same four unweighted, on the file and on the loop
/// device, three interleaved rounds (run by hand:
/// `cargo test --release --test real_storage_weights four -- --ignored --nocapture`;
/// `WEIR_DEPTH` sets the window, default `fixed:32`, as TOML: `'{ policy = "adaptive" }'`).
/// Prints Jain's index of cost ÷ weight over the seconds all four were backlogged, and the
/// weighted aggregate ÷ the unweighted one.
#[test]
#[ignore]
fn four_guests_1_2_4_8_against_unweighted() {
    let Some(probe) = common::probe_guest_setup("real_storage_weights_four") else {
        return;
    };
    let depth = std::env::var("WEIR_DEPTH")
        .unwrap_or_else(|_| "{ policy = \"fixed\", depth = 32 }".to_string());
    let qd = std::env::var("WEIR_PROBE_QD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let (dir, file_path, lo) = storage();
    for round in 1..=3 {
        for (kind, backing) in [("file", file_path.as_str()), ("loop", lo.0.as_str())] {
            let with = |weights: &[u32]| {
                run(
                    &weir(),
                    dir.path(),
                    &probe,
                    backing,
                    Some(&depth),
                    None,
                    qd,
                    weights,
                )
            };
            let flat = with(&[1, 1, 1, 1]);
            let weighted = with(&[1, 2, 4, 8]);
            let shares: Vec<String> = weighted
                .cost
                .iter()
                .map(|c| format!("{:.3}", c / weighted.cost.iter().sum::<f64>()))
                .collect();
            eprintln!(
                "round {round} {kind}: 1:2:4:8 cost Jain {:.4} over {} backlogged s of {} (shares {}, ideal 0.067 0.133 0.267 0.533), {:.0} IOPS, window {:.1}; unweighted Jain {:.4}, {:.0} IOPS; aggregate weighted ÷ unweighted {:.3}",
                jain(&weighted.cost, &[1, 2, 4, 8]),
                weighted.seconds,
                weighted.active_seconds,
                shares.join(" "),
                weighted.iops,
                weighted.mean_window,
                jain(&flat.cost, &[1, 1, 1, 1]),
                flat.iops,
                weighted.iops / flat.iops,
            );
        }
    }
}
