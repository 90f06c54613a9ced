//! Thin pools on real storage with real guests: a real out-of-space on a small tmpfs holds
//! only the filling tenant's allocating writes while a neighbour goes on; growing the tmpfs
//! lets them finish and verify; with no space the hold ends in IOERR at `hold_s`; the forecast
//! of a steady writer; the dark-storage report of real partition tables and filesystems.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::probe::{self, ProbeVm};
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};
use weir_lab::testenv;
use weir_vmm::host::{HostVirtualization, KvmFlavour};

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

/// One test at a time: each runs several spinning probe guests and compares latencies; on two
/// cores, tests running side by side would measure each other.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn probe_setup(test: &str) -> Option<PathBuf> {
    let missing = match HostVirtualization::detect().flavour {
        KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    }
    .or_else(|| {
        // SAFETY: getuid has no arguments and cannot fail.
        (unsafe { libc::getuid() } != 0).then(|| "mounting a tmpfs needs root".to_string())
    });
    testenv::can_run(test, missing).then(|| probe::build().expect("the probe builds"))
}

/// A tmpfs of `mib` MiB mounted at `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, mib: u64) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}M"), "tmpfs"])
            .arg(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }

    fn resize(&self, mib: u64) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={mib}M")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount tmpfs");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn disk_counters(control: &Path, tenant: &str) -> Value {
    let stats = query(control, "stats").unwrap();
    stats
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["tenant"] == tenant)
        .unwrap()["counters"]
        .clone()
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    start.elapsed()
}

fn config(dir: &Path, pool: &str, extra_pool: &str) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let text = format!(
        "control_socket = {control}\n\
         [[pool]]\nname = \"p0\"\ndir = {pool_dir}\n{extra_pool}\n\
         [[lun]]\nname = \"a\"\npath = {a}\nsize = \"32MiB\"\npool = \"p0\"\n\
         [[lun]]\nname = \"b\"\npath = {b}\nsize = \"32MiB\"\npool = \"p0\"\n\
         [[lun]]\nname = \"unused\"\npath = {c}\nsize = \"8MiB\"\n\
         [[disk]]\nsocket = {sa}\nlun = \"a\"\ntenant = \"filler\"\n\
         [[disk]]\nsocket = {sb}\nlun = \"b\"\ntenant = \"neighbour\"\n",
        control = q(control.clone()),
        pool_dir = q(PathBuf::from(pool)),
        a = q(Path::new(pool).join("a.img")),
        b = q(Path::new(pool).join("b.img")),
        c = q(dir.join("unused.img")),
        sa = q(dir.join("a.sock")),
        sb = q(dir.join("b.sock")),
    );
    (text, control)
}

fn probe(probe: &Path, dir: &Path, socket: &str, options: &str, name: &str) -> ProbeVm {
    ProbeVm::spawn(
        &weir(),
        probe,
        &[format!("socket={}", dir.join(socket).display())],
        options,
        dir,
        name,
    )
    .expect("probe starts")
}

#[test]
fn a_real_out_of_space_holds_only_the_filler_and_growing_the_pool_lets_it_finish_verified() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(probe_elf) = probe_setup("thin_out_of_space") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    // Two 32 MiB LUNs on 16 MiB: overcommitted 4×.
    let fs = Tmpfs::mount(&pool_dir, 16);
    let (text, control) = config(dir.path(), pool_dir.to_str().unwrap(), "hold_s = 120");
    let broker =
        BrokerProcess::start(&weir(), &text, Some(control.clone()), dir.path()).expect("broker");
    let pools = query(&control, "pools").unwrap();
    assert_eq!(pools[0]["overcommit"].as_f64(), Some(4.0), "{pools}");

    // The neighbour writes its 6 MiB, then reads and overwrites them: its baseline, taken
    // while another guest reads disk a (a guest's vCPU costs the host a core whatever it does,
    // so the baseline has the same two guests as the run under test; only the pool differs).
    let neighbour = "probe.verify=1 probe.size_mib=6 probe.iodepth=8 probe.rw=randrw \
                     probe.runtime_ms=3000";
    let control_guest = probe(
        &probe_elf,
        dir.path(),
        "a.sock",
        "probe.iodepth=16 probe.rw=randread probe.runtime_ms=60000 probe.mode=irq",
        "control",
    );
    wait_until("the control guest reading", Duration::from_secs(30), || {
        disk_counters(&control, "filler")["reads"].as_u64() > Some(1000)
    });
    let before = probe(&probe_elf, dir.path(), "b.sock", neighbour, "before")
        .wait(Duration::from_secs(60))
        .unwrap();
    assert_eq!((before.report.errors, before.report.verify_errors), (0, 0));
    drop(control_guest);
    wait_until("disk a free", Duration::from_secs(10), || {
        query(&control, "stats").unwrap()[0]["connected"] == false
    });

    // The filler writes (and will verify) its whole 32 MiB: the tmpfs runs out.
    let filler = probe(
        &probe_elf,
        dir.path(),
        "a.sock",
        // Interrupt mode: a held guest sleeps instead of spinning on a core the neighbour needs.
        "probe.verify=1 probe.iodepth=16 probe.mode=irq",
        "filler",
    );
    let held_after = wait_until("the filler held", Duration::from_secs(60), || {
        disk_counters(&control, "filler")["held"].as_u64() > Some(0)
    });
    eprintln!("filler held after {held_after:?}");
    let pools = query(&control, "pools").unwrap();
    assert_eq!(pools[0]["fs_full"], true, "a real ENOSPC: {pools}");

    // While it is held: the neighbour reads and overwrites as before.
    let during = probe(&probe_elf, dir.path(), "b.sock", neighbour, "during")
        .wait(Duration::from_secs(60))
        .unwrap();
    assert_eq!((during.report.errors, during.report.verify_errors), (0, 0));
    let c = disk_counters(&control, "filler");
    assert!(c["held"].as_u64() > Some(0), "still held: {c}");
    assert_eq!(c["space_errors"], 0, "{c}");
    assert_eq!(c["io_errors"], 0, "{c}");
    let p99 = |r: &weir_lab::probe::ProbeRun| r.report.phase("randrw").unwrap().lat_us.p99;
    let (b, d) = (p99(&before), p99(&during));
    eprintln!(
        "neighbour randrw p99 before {b} µs, while the filler is held {d} µs ({:.2}×); IOPS {:.0} vs {:.0}",
        d as f64 / b as f64,
        before.report.phase("randrw").unwrap().iops,
        during.report.phase("randrw").unwrap().iops
    );
    // A polled probe's p99 on a shared 2-core host swings from 0.1 to 3 ms run to run (vCPU
    // preemption), so the property checked is the one a stall would break: the neighbour kept
    // its throughput and no request of it waited anywhere near a second (the filler's writes
    // were held for all of this run). The closing note reports the p99s.
    // Its IOPS move with the host's other load (seen: 38 k → 37 k, and 142 k → 28 k when the
    // filler's vCPU shared the cores), so the floor is absolute: a stalled neighbour would
    // complete next to nothing in its 3 s.
    let iops = |r: &weir_lab::probe::ProbeRun| r.report.phase("randrw").unwrap().iops;
    assert!(
        iops(&during) >= 1000.0,
        "the neighbour stalled: {:.0} -> {:.0} IOPS",
        iops(&before),
        iops(&during)
    );
    let max = during.report.phase("randrw").unwrap().lat_us.max;
    assert!(max < 1_000_000, "a neighbour request waited {max} µs");

    // Space appears (the tmpfs grows): the held writes resume by themselves and verify.
    fs.resize(128);
    let run = filler
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    assert_eq!(run.exit_code, Some(0), "{}", run.vmm_log);
    assert_eq!((run.report.errors, run.report.verify_errors), (0, 0));
    assert_eq!(run.report.phase("write").unwrap().ios, 8192);
    assert_eq!(run.report.phase("verify").unwrap().ios, 8192);
    let c = disk_counters(&control, "filler");
    assert_eq!(
        (c["held"].as_u64(), c["space_errors"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(c["held_total"].as_u64() >= Some(1));
    let pools = query(&control, "pools").unwrap();
    let events: Vec<f64> = pools[0]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"] == "threshold")
        .map(|e| e["value"].as_f64().unwrap())
        .collect();
    assert_eq!(
        events,
        vec![70.0, 85.0, 95.0],
        "each threshold once: {pools}"
    );
    drop(broker);
}

#[test]
fn with_no_space_the_hold_ends_in_io_errors_at_hold_s_for_the_filler_only() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(probe_elf) = probe_setup("thin_hold_expires") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let _fs = Tmpfs::mount(&pool_dir, 8);
    let (text, control) = config(dir.path(), pool_dir.to_str().unwrap(), "hold_s = 2");
    let _broker =
        BrokerProcess::start(&weir(), &text, Some(control.clone()), dir.path()).expect("broker");
    let neighbour = probe(
        &probe_elf,
        dir.path(),
        "b.sock",
        "probe.verify=1 probe.size_mib=2 probe.iodepth=4 probe.rw=randrw probe.runtime_ms=9000",
        "neighbour",
    );
    // The neighbour's region is written before the filler starts.
    wait_until("the neighbour's writes", Duration::from_secs(30), || {
        disk_counters(&control, "neighbour")["writes"].as_u64() >= Some(512)
    });
    let filler = probe(
        &probe_elf,
        dir.path(),
        "a.sock",
        "probe.iodepth=8 probe.rw=write probe.size_mib=32 probe.count=8192",
        "filler",
    );
    wait_until("the filler held", Duration::from_secs(60), || {
        disk_counters(&control, "filler")["held_total"].as_u64() > Some(0)
    });
    let held_at = Instant::now();
    wait_until("the first IOERR", Duration::from_secs(10), || {
        disk_counters(&control, "filler")["space_errors"].as_u64() > Some(0)
    });
    let after = held_at.elapsed().as_secs_f64();
    eprintln!("first IOERR {after:.2} s after the first hold (hold_s = 2)");
    assert!((1.0..=3.0).contains(&after), "{after} s");
    let run = neighbour.wait(Duration::from_secs(60)).unwrap();
    assert_eq!(run.exit_code, Some(0), "{}", run.vmm_log);
    assert_eq!((run.report.errors, run.report.verify_errors), (0, 0));
    let c = disk_counters(&control, "filler");
    assert_eq!(
        c["io_errors"], c["space_errors"],
        "every filler error is for space: {c}"
    );
    // The filler would go on meeting IOERRs every hold_s; it has shown what it had to.
    drop(filler);
    let c = disk_counters(&control, "neighbour");
    assert_eq!(
        (c["io_errors"].as_u64(), c["space_errors"].as_u64()),
        (Some(0), Some(0))
    );
}

#[test]
fn a_steady_writer_s_time_to_full_is_forecast_within_ten_percent_at_half_full() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let Some(probe_elf) = probe_setup("thin_forecast") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    std::fs::create_dir_all(&pool_dir).unwrap();
    // A 16 MiB quota; 1 MiB/s of sequential 4 KiB writes fills it in 16 s.
    let (text, control) = config(
        dir.path(),
        pool_dir.to_str().unwrap(),
        "capacity = \"16MiB\"\nhold_s = 60",
    );
    let _broker =
        BrokerProcess::start(&weir(), &text, Some(control.clone()), dir.path()).expect("broker");
    let filler = probe(
        &probe_elf,
        dir.path(),
        "a.sock",
        "probe.iodepth=4 probe.rw=write probe.size_mib=20 probe.count=5120 probe.rate_iops=256",
        "steady",
    );
    let start = Instant::now();
    let mut at_half: Option<(Instant, f64, Value)> = None;
    let full_at = loop {
        assert!(start.elapsed() < Duration::from_secs(60), "never full");
        let pool = query(&control, "pools").unwrap()[0].clone();
        if at_half.is_none() && pool["used_pct"].as_f64().unwrap() >= 50.0 {
            let f = pool["forecast"][0].clone();
            let ttf = f["time_to_full_s"]
                .as_f64()
                .expect("a forecast at half full");
            at_half = Some((Instant::now(), ttf, f));
        }
        if disk_counters(&control, "filler")["held_total"].as_u64() > Some(0) {
            break Instant::now();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (t50, predicted, f) = at_half.expect("passed half full");
    let actual = full_at.duration_since(t50).as_secs_f64();
    eprintln!("at 50 %: forecast {predicted:.2} s to full ({f}); actual {actual:.2} s");
    assert!(
        (predicted - actual).abs() <= 0.1 * actual,
        "forecast {predicted:.2} s vs actual {actual:.2} s"
    );
    // Let it finish: the pool grows over the control socket.
    let ok = query(&control, "pool grow p0 64MiB").unwrap();
    assert!(ok.get("ok").is_some(), "{ok}");
    let run = filler.wait(Duration::from_secs(60)).unwrap();
    assert_eq!((run.exit_code, run.report.errors), (Some(0), 0));
    let events = query(&control, "pools").unwrap()[0]["events"].clone();
    let thresholds = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["what"] == "threshold")
        .count();
    assert_eq!(thresholds, 3, "each threshold once: {events}");
    // The same events reached the per-second telemetry, each in the second it happened.
    let telemetry = query(&control, "telemetry").unwrap();
    let in_telemetry: usize = telemetry
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["pools"].as_array().cloned().unwrap_or_default())
        .map(|p| {
            p["events"]
                .as_array()
                .map_or(0, |e| e.iter().filter(|e| e["what"] == "threshold").count())
        })
        .sum();
    assert_eq!(in_telemetry, 3, "{telemetry}");
}

#[test]
fn a_linux_guest_s_fio_verify_survives_the_pool_running_out_and_growing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let test = "thin_linux_fio_verify";
    let Some((image, accel)) = common::linux_guest_setup(test) else {
        return;
    };
    // SAFETY: getuid has no arguments and cannot fail.
    let root = (unsafe { libc::getuid() } != 0).then(|| "mounting a tmpfs needs root".into());
    if !testenv::can_run(test, root) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool_dir = dir.path().join("pool");
    let fs = Tmpfs::mount(&pool_dir, 16);
    let (text, control) = config(dir.path(), pool_dir.to_str().unwrap(), "hold_s = 300");
    let broker =
        BrokerProcess::start(&weir(), &text, Some(control.clone()), dir.path()).expect("broker");
    // Every block of the 32 MiB LUN written once in random order with a checksum, then read
    // back and checked: the 16 MiB tmpfs runs out half-way.
    // Then the guest discards the whole disk: the pool gets its space back.
    let job = "[fill]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randwrite\niodepth=16\n\
               verify=crc32c\nverify_fatal=1\ndo_verify=1\n\n\
               [trim]\nstonewall\nioengine=psync\nrw=trim\nbs=1m\n";
    let mut spec = LinuxGuestSpec::new(
        "filler",
        &image,
        &with_target(job, "/dev/vda"),
        accel.clone(),
        dir.path(),
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(300);
    spec.disks.push(GuestDisk::VhostUser {
        socket: dir.path().join("a.sock"),
        queues: 1,
    });
    let guest = spec.spawn().expect("the guest starts");
    wait_until("fio's writes held", Duration::from_secs(180), || {
        disk_counters(&control, "filler")["held"].as_u64() > Some(0)
    });
    std::thread::sleep(Duration::from_secs(3));
    let c = disk_counters(&control, "filler");
    assert!(c["held"].as_u64() > Some(0), "still held: {c}");
    assert_eq!(c["io_errors"], 0);
    fs.resize(128);
    let run = guest
        .wait()
        .unwrap_or_else(|e| panic!("guest: {e}\nbroker:\n{}", broker.log()));
    assert!(
        run.report.failed_jobs().is_empty(),
        "{:?}",
        run.report.failed_jobs()
    );
    let w = &run.report.job("fill").unwrap().write;
    assert_eq!(w.io_bytes, 32 << 20, "every block written");
    let c = disk_counters(&control, "filler");
    assert_eq!(
        (c["io_errors"].as_u64(), c["space_errors"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(c["writes"].as_u64(), Some(8192));
    assert!(
        c["discards"].as_u64() >= Some(32),
        "fio's trims reached the broker: {c}"
    );
    let pool = query(&control, "pools").unwrap()[0].clone();
    let a = pool["luns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lun"] == "a")
        .unwrap()
        .clone();
    assert_eq!(
        a["allocated_bytes"], 0,
        "the discards freed every chunk: {pool}"
    );
    // The filesystem's free space is read at the pool's tick (250 ms): the last trims may be
    // newer than the last tick.
    let mut used = pool["used_bytes"].as_u64().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while used >= 8 << 20 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        used = query(&control, "pools").unwrap()[0]["used_bytes"]
            .as_u64()
            .unwrap();
    }
    assert!(
        used < 8 << 20,
        "the tmpfs got the space back: {used} bytes used"
    );
    assert!(
        c["reads"].as_u64() >= Some(8192),
        "verify read every block: {c}"
    );
    eprintln!(
        "fio: {} writes, {} of them held for space, write max latency {:.1} s",
        c["writes"],
        c["held_total"],
        w.lat_ns.max as f64 / 1e9
    );
}
