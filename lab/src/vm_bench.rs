//! `weir bench vm`: the probe guest under `weir vm` and under QEMU (`-accel kvm`, the same ELF
//! through its PVH note, `-M microvm` with virtio-mmio), on the same broker socket and LUN, one
//! run: IOPS and latency at QD1 and QD32, process start → first serial byte, and peak RSS with
//! and without the guest's RAM.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::broker::BrokerProcess;
use crate::probe::{ProbeReport, build};

#[derive(Debug, Clone)]
pub struct VmBenchRow {
    pub engine: String,
    pub iodepth: u32,
    pub iops: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub first_byte_ms: Option<f64>,
    /// Peak VmRSS and the part of it that is guest RAM (shared memfd pages), KiB.
    pub rss_kib: u64,
    pub guest_ram_kib: u64,
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `RssShmem:`).
pub(crate) fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Starts a VMM under watch: its serial file removed first (its first byte is what is timed),
/// stdin and stdout closed, stderr kept.
pub(crate) fn start_watched(
    engine: &str,
    cmd: &mut Command,
    serial: &Path,
) -> Result<(Instant, std::process::Child), String> {
    let _ = std::fs::remove_file(serial);
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{engine}: {e}"))?;
    Ok((started, child))
}

/// Keeps the peak VmRSS of `pid` and the RssShmem (guest RAM) at that peak.
pub(crate) fn sample_peak_rss(pid: u32, rss: &mut u64, shmem: &mut u64) {
    if let Some(v) = status_kib(pid, "VmRSS:") {
        if v > *rss {
            *rss = v;
            *shmem = status_kib(pid, "RssShmem:").unwrap_or(0);
        }
    }
}

/// Runs `cmd`, watching the serial file for its first byte and the process's memory.
fn run_one(
    engine: &str,
    mut cmd: Command,
    serial: &Path,
    iodepth: u32,
    limit: Duration,
) -> Result<VmBenchRow, String> {
    let (started, mut child) = start_watched(engine, &mut cmd, serial)?;
    let pid = child.id();
    let (mut first, mut rss, mut shmem) = (None, 0u64, 0u64);
    loop {
        if first.is_none() && std::fs::metadata(serial).is_ok_and(|m| m.len() > 0) {
            first = Some(started.elapsed());
        }
        sample_peak_rss(pid, &mut rss, &mut shmem);
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("{engine}: timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(serial).unwrap_or_default();
    let report = match ProbeReport::from_serial(&text) {
        Some(Ok(r)) => r,
        Some(Err(e)) => return Err(format!("{engine}: {e}")),
        None => {
            return Err(format!(
                "{engine}: no report; serial:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    };
    let p = report
        .phases
        .last()
        .ok_or_else(|| format!("{engine}: no phase"))?;
    if report.errors > 0 {
        return Err(format!("{engine}: {} I/O errors", report.errors));
    }
    Ok(VmBenchRow {
        engine: engine.to_string(),
        iodepth,
        iops: p.iops,
        p50_us: p.lat_us.p50,
        p99_us: p.lat_us.p99,
        first_byte_ms: first.map(|d| d.as_secs_f64() * 1000.0),
        rss_kib: rss,
        guest_ram_kib: shmem,
    })
}

/// The whole benchmark; returns the rows and the rendered table.
pub fn run_vm_bench(
    weir: &Path,
    work_dir: &Path,
    runtime_ms: u64,
) -> Result<(Vec<VmBenchRow>, String), String> {
    std::fs::create_dir_all(work_dir).map_err(|e| e.to_string())?;
    let probe = build().map_err(|e| e.to_string())?;
    let control = work_dir.join("broker.ctl");
    let socket = work_dir.join("probe.sock");
    let config = format!(
        "control_socket = {:?}\n[[lun]]\nname = \"bench\"\npath = {:?}\nsize = \"256MiB\"\n\
         [[disk]]\nsocket = {:?}\nlun = \"bench\"\ntenant = \"probe\"\n",
        control.display().to_string(),
        work_dir.join("bench.img").display().to_string(),
        socket.display().to_string()
    );
    let mut broker =
        BrokerProcess::start(weir, &config, Some(control), work_dir).map_err(|e| e.to_string())?;
    let khz = crate::host::host_tsc_khz().unwrap_or(1_000_000);
    // Write the whole LUN first: reads of a sparse file's holes never reach the disk.
    let serial = work_dir.join("prefill.serial");
    let mut cmd = Command::new(weir);
    cmd.arg("vm")
        .arg("--kernel")
        .arg(&probe)
        .args(["--mem", "64M", "--cmdline"])
        .arg(format!(
            "probe.verify=1 probe.iodepth=32 probe.tsc_khz={khz}"
        ))
        .arg("--serial")
        .arg(&serial)
        .arg("--disk")
        .arg(format!("socket={}", socket.display()));
    run_one("prefill", cmd, &serial, 32, Duration::from_secs(300))?;
    let mut rows = Vec::new();
    for qd in [1u32, 32] {
        let opts = format!(
            "probe.rw=randread probe.iodepth={qd} probe.runtime_ms={runtime_ms} probe.tsc_khz={khz}"
        );
        let serial = work_dir.join(format!("weir-vm-qd{qd}.serial"));
        let mut cmd = Command::new(weir);
        cmd.arg("vm")
            .arg("--kernel")
            .arg(&probe)
            .args(["--mem", "64M", "--cmdline", &opts, "--serial"])
            .arg(&serial)
            .arg("--disk")
            .arg(format!("socket={}", socket.display()));
        rows.push(run_one(
            "weir vm",
            cmd,
            &serial,
            qd,
            Duration::from_secs(120),
        )?);
        let serial = work_dir.join(format!("qemu-qd{qd}.serial"));
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-M",
            "microvm,rtc=off,acpi=off,memory-backend=mem",
            "-accel",
            "kvm",
            "-cpu",
            "host,-arch-capabilities",
            "-m",
            "64M",
            "-object",
            "memory-backend-memfd,id=mem,size=64M,share=on",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0x501,iosize=1",
            "-global",
            "virtio-mmio.force-legacy=false",
        ])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-chardev")
        .arg(format!("socket,id=c0,path={}", socket.display()))
        .args(["-device", "vhost-user-blk,chardev=c0", "-kernel"])
        .arg(&probe)
        .arg("-append")
        .arg(&opts);
        rows.push(run_one(
            "qemu -accel kvm",
            cmd,
            &serial,
            qd,
            Duration::from_secs(120),
        )?);
    }
    broker.stop();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<16} {:>4} {:>9} {:>8} {:>8} {:>14} {:>10} {:>12} {:>12}",
        "engine",
        "QD",
        "IOPS",
        "p50 us",
        "p99 us",
        "first byte ms",
        "RSS KiB",
        "guest KiB",
        "VMM KiB"
    );
    for r in &rows {
        let _ = writeln!(
            t,
            "{:<16} {:>4} {:>9.0} {:>8} {:>8} {:>14} {:>10} {:>12} {:>12}",
            r.engine,
            r.iodepth,
            r.iops,
            r.p50_us,
            r.p99_us,
            r.first_byte_ms.map_or("-".into(), |m| format!("{m:.1}")),
            r.rss_kib,
            r.guest_ram_kib,
            r.rss_kib.saturating_sub(r.guest_ram_kib)
        );
    }
    for qd in [1u32, 32] {
        let get = |e: &str| rows.iter().find(|r| r.engine == e && r.iodepth == qd);
        if let (Some(w), Some(q)) = (get("weir vm"), get("qemu -accel kvm")) {
            let _ = writeln!(
                t,
                "QD{qd}: weir vm / QEMU IOPS {:.2}x, p99 {:.2}x",
                w.iops / q.iops.max(1.0),
                w.p99_us as f64 / (q.p99_us.max(1)) as f64
            );
        }
    }
    let _ = writeln!(
        t,
        "(probe randread 4 KiB over a 256 MiB LUN written beforehand, {runtime_ms} ms per run, one \
         run each, same broker socket and LUN; RSS is the peak VmRSS sampled every 0.5 ms, guest = \
         its RssShmem, VMM = the rest)"
    );
    Ok((rows, t))
}
