//! `weir bench broker`: the broker against qemu-storage-daemon and host fio, side by side, on
//! the same backing file, in one run.
//!
//! Two frontends: the probe guest under `weir vm` ([`probe_frontend`], the default where KVM
//! runs it: fast enough to tell backends apart) and a Linux guest with fio under QEMU (this
//! module; under TCG it is CPU-bound at a few thousand IOPS).
//!
//! With the QEMU frontend, one QEMU guest runs fio 4 KiB random reads at QD1 and QD32 against (a) `weir broker` and
//! (b) `qemu-storage-daemon --export vhost-user-blk` (`cache.direct=on,aio=io_uring`), both
//! over vhost-user-blk; then host fio runs the same job on the file. The backends' CPU time is
//! read from `/proc/<pid>/stat` around each guest run and divided by the I/Os they served.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_guest_images::GuestImage;

use crate::broker::BrokerProcess;
use crate::fiojob::with_target;
use crate::host::AccelChoice;
use crate::hostfio::run_host_fio;
use crate::qemu::{GuestDisk, LinuxGuestSpec};
use crate::summary::{JobSummary, summarise};

pub mod probe_frontend;

pub const RANDREAD_JOB: &str = "\
[global]
ioengine=io_uring
direct=1
bs=4k
rw=randread
randrepeat=0
time_based=1
runtime=10

[randread-qd1]
iodepth=1

[randread-qd32]
stonewall
iodepth=32
";

#[derive(Debug)]
pub struct BenchOptions {
    pub weir_binary: PathBuf,
    pub image: GuestImage,
    pub accel: AccelChoice,
    pub work_dir: PathBuf,
    pub disk_mib: u64,
    pub job: String,
    /// Rounds of (weir, qemu-storage-daemon), alternating which goes first; the table reports
    /// medians and ranges over them. A TCG guest's figures move by 10–20 % run to run here.
    pub rounds: u32,
}

#[derive(Debug)]
pub struct BackendResult {
    pub name: String,
    pub rows: Vec<JobSummary>,
    /// Backend process CPU seconds (user + system) during the guest run.
    pub cpu_seconds: Option<f64>,
    /// I/Os the guest completed (from fio).
    pub ios: u64,
}

impl BackendResult {
    pub fn cpu_us_per_io(&self) -> Option<f64> {
        self.cpu_seconds
            .filter(|_| self.ios > 0)
            .map(|s| s * 1e6 / self.ios as f64)
    }
}

/// CPU time of a process, in seconds (utime + stime from /proc/<pid>/stat).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks)
}

fn guest_run(
    opts: &BenchOptions,
    name: &str,
    socket: &Path,
    pid: Option<u32>,
) -> Result<BackendResult, String> {
    let mut spec = LinuxGuestSpec::new(
        name,
        &opts.image,
        &with_target(&opts.job, "/dev/vda"),
        opts.accel.clone(),
        &opts.work_dir,
    );
    spec.fio_timeout = Duration::from_secs(300);
    spec.disks.push(GuestDisk::VhostUser {
        socket: socket.to_path_buf(),
        queues: 1,
    });
    let cpu0 = pid.and_then(process_cpu_seconds);
    let run = spec.run().map_err(|e| format!("{name}: {e}"))?;
    let cpu1 = pid.and_then(process_cpu_seconds);
    let rows = summarise(&run.report);
    let ios = rows.iter().map(|r| r.ios).sum();
    Ok(BackendResult {
        name: name.to_string(),
        rows,
        cpu_seconds: cpu0.zip(cpu1).map(|(a, b)| b - a),
        ios,
    })
}

/// Fills the backing file with data so that reads hit allocated blocks, not holes.
pub(crate) fn prefill(path: &Path, mib: u64) -> Result<(), String> {
    let status = Command::new("fio")
        .args([
            "--name=prefill",
            "--rw=write",
            "--bs=1m",
            "--direct=1",
            "--ioengine=io_uring",
        ])
        .arg(format!("--size={mib}m"))
        .arg(format!("--filename={}", path.display()))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("host fio: {e}"))?;
    status
        .success()
        .then_some(())
        .ok_or_else(|| "prefilling the backing file with host fio failed".to_string())
}

pub(crate) struct Qsd {
    pub(crate) child: Child,
}

impl Qsd {
    pub(crate) fn start(file: &Path, socket: &Path) -> Result<Self, String> {
        // Its log lies beside its socket; `locking=off` because weir's broker may hold the
        // same file at the same time (the probe bench keeps both up and alternates).
        let log_path = socket.with_extension("log");
        let log =
            fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let mut child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=f,filename={},cache.direct=on,aio=io_uring,locking=off",
                file.display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=e,node-name=f,addr.type=unix,addr.path={},writable=on",
                socket.display()
            ))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("qemu-storage-daemon: {e} (apt-get install qemu-utils)"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "qemu-storage-daemon did not create its socket: {}",
                    fs::read_to_string(&log_path).unwrap_or_default().trim()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Qsd { child })
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs all three, in one go, on one file: `rounds` rounds of both vhost-user backends, then
/// host fio once. Returns one result per backend and round.
pub fn run_broker_bench(opts: &BenchOptions) -> Result<Vec<BackendResult>, String> {
    fs::create_dir_all(&opts.work_dir).map_err(|e| e.to_string())?;
    let file = opts.work_dir.join("bench.img");
    fs::File::create(&file)
        .and_then(|f| f.set_len(opts.disk_mib << 20))
        .map_err(|e| format!("create {}: {e}", file.display()))?;
    prefill(&file, opts.disk_mib)?;
    let mut results = Vec::new();

    let socket = opts.work_dir.join("weir.sock");
    let config = format!(
        "[[lun]]\nname = \"bench\"\npath = {:?}\n[[disk]]\nsocket = {:?}\nlun = \"bench\"\ntenant = \"bench\"\n",
        file.display().to_string(),
        socket.display().to_string()
    );
    let qsd_socket = opts.work_dir.join("qsd.sock");
    let run_weir = |round: u32| -> Result<BackendResult, String> {
        let broker = BrokerProcess::start(
            &opts.weir_binary,
            &config,
            None,
            &opts.work_dir.join(format!("broker-{round}")),
        )
        .map_err(|e| e.to_string())?;
        guest_run(opts, "weir-broker", &socket, broker.pid())
    };
    let run_qsd = || -> Result<BackendResult, String> {
        let qsd = Qsd::start(&file, &qsd_socket)?;
        guest_run(
            opts,
            "qemu-storage-daemon",
            &qsd_socket,
            Some(qsd.child.id()),
        )
    };
    for round in 0..opts.rounds.max(1) {
        eprintln!("round {}/{}", round + 1, opts.rounds.max(1));
        if round % 2 == 0 {
            results.push(run_weir(round)?);
            results.push(run_qsd()?);
        } else {
            results.push(run_qsd()?);
            results.push(run_weir(round)?);
        }
    }

    let report = run_host_fio(&opts.job, &file, &opts.work_dir).map_err(|e| e.to_string())?;
    let rows = summarise(&report);
    results.push(BackendResult {
        name: "host-fio".into(),
        ios: rows.iter().map(|r| r.ios).sum(),
        rows,
        cpu_seconds: None,
    });
    let _ = fs::remove_file(&file);
    Ok(results)
}

/// One backend's figures for one job over all rounds.
#[derive(Debug, Clone)]
pub struct JobAggregate {
    pub backend: String,
    pub job: String,
    pub rounds: usize,
    pub iops_median: f64,
    pub iops_min: f64,
    pub iops_max: f64,
    pub p50_us_median: f64,
    pub p99_us_median: f64,
}

/// Median, minimum and maximum of a set of rounds' figures (NaN, ∞, 0 when empty).
pub(crate) fn spread(v: Vec<f64>) -> (f64, f64, f64) {
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(v), min, max)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Medians and ranges per backend and job, in first-seen order.
pub fn aggregate(results: &[BackendResult]) -> Vec<JobAggregate> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in results {
        for row in &r.rows {
            let k = (r.name.clone(), row.job.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
    }
    keys.into_iter()
        .map(|(backend, job)| {
            let rows: Vec<&JobSummary> = results
                .iter()
                .filter(|r| r.name == backend)
                .flat_map(|r| r.rows.iter().filter(|x| x.job == job))
                .collect();
            let (iops_median, iops_min, iops_max) = spread(rows.iter().map(|r| r.iops).collect());
            JobAggregate {
                rounds: rows.len(),
                iops_min,
                iops_max,
                iops_median,
                p50_us_median: median(rows.iter().filter_map(|r| r.clat_p50_us).collect()),
                p99_us_median: median(rows.iter().filter_map(|r| r.clat_p99_us).collect()),
                backend,
                job,
            }
        })
        .collect()
}

/// The comparison table: each job's median IOPS (with range) and latency per backend, weir's
/// ratios to qemu-storage-daemon and both backends' CPU time per I/O.
pub fn render_bench(results: &[BackendResult]) -> String {
    let agg = aggregate(results);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<20} {:<14} {:>6} {:>9} {:>17} {:>8} {:>8}",
        "backend", "job", "rounds", "IOPS", "(min-max)", "p50 us", "p99 us"
    );
    for a in &agg {
        let _ = writeln!(
            s,
            "{:<20} {:<14} {:>6} {:>9.0} {:>17} {:>8.0} {:>8.0}",
            a.backend,
            a.job,
            a.rounds,
            a.iops_median,
            format!("({:.0}-{:.0})", a.iops_min, a.iops_max),
            a.p50_us_median,
            a.p99_us_median
        );
    }
    let find = |backend: &str, job: &str| agg.iter().find(|a| a.backend == backend && a.job == job);
    let _ = writeln!(
        s,
        "\nweir / qemu-storage-daemon, medians (target: IOPS ≥ 1.00x, p50 ≤ 1.00x):"
    );
    for w in agg.iter().filter(|a| a.backend == "weir-broker") {
        if let Some(q) = find("qemu-storage-daemon", &w.job) {
            let _ = writeln!(
                s,
                "  {:<14} IOPS {:.2}x   p50 {:.2}x   p99 {:.2}x",
                w.job,
                w.iops_median / q.iops_median,
                w.p50_us_median / q.p50_us_median,
                w.p99_us_median / q.p99_us_median
            );
        }
    }
    for backend in ["weir-broker", "qemu-storage-daemon"] {
        let (cpu, ios) = results
            .iter()
            .filter(|r| r.name == backend)
            .fold((0.0, 0u64), |(c, n), r| {
                (c + r.cpu_seconds.unwrap_or(0.0), n + r.ios)
            });
        if ios > 0 {
            let _ = writeln!(
                s,
                "  {backend} CPU: {cpu:.2} s for {ios} I/Os = {:.1} us per I/O",
                cpu * 1e6 / ios as f64
            );
        }
    }
    let _ = writeln!(s, "\nguest / host fio on the same file (median IOPS):");
    for a in agg.iter().filter(|a| a.backend != "host-fio") {
        if let Some(h) = find("host-fio", &a.job) {
            let _ = writeln!(
                s,
                "  {:<20} {:<14} {:.2}",
                a.backend,
                a.job,
                a.iops_median / h.iops_median
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges_per_backend_and_job() {
        let row = |job: &str, iops: f64| JobSummary {
            job: job.into(),
            direction: "read",
            iodepth: "1".into(),
            block_size: "4k".into(),
            iops,
            mib_per_s: 0.0,
            ios: 10,
            clat_p50_us: Some(iops / 100.0),
            clat_p99_us: Some(iops / 10.0),
            clat_p999_us: None,
        };
        let r = |name: &str, iops: f64| BackendResult {
            name: name.into(),
            rows: vec![row("qd1", iops)],
            cpu_seconds: Some(1.0),
            ios: 10,
        };
        let results = vec![r("a", 100.0), r("b", 50.0), r("a", 300.0), r("a", 200.0)];
        let agg = aggregate(&results);
        assert_eq!(agg.len(), 2);
        assert_eq!(
            (
                agg[0].iops_median,
                agg[0].iops_min,
                agg[0].iops_max,
                agg[0].rounds
            ),
            (200.0, 100.0, 300.0, 3)
        );
        assert_eq!(agg[0].p50_us_median, 2.0);
        assert_eq!(agg[1].iops_median, 50.0);
        assert_eq!(median(vec![1.0, 4.0]), 2.5);
    }

    #[test]
    fn reads_cpu_time_of_this_process() {
        // Spins until the process's CPU time moved by 0.1 s: on a loaded host (other tests,
        // a build) 200 ms of wall time can hold far less than 100 ms of this thread's CPU.
        let before = process_cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let start = Instant::now();
        let mut after = before;
        while after - before < 0.1 && start.elapsed() < Duration::from_secs(20) {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            after = process_cpu_seconds(std::process::id()).unwrap();
        }
        std::hint::black_box(x);
        assert!(
            after - before >= 0.1,
            "spun {:?}, measured {} s of CPU",
            start.elapsed(),
            after - before
        );
    }
}
