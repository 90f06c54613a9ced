//! The chaos soak (`scripts/soak.sh`): four guests — a Linux guest under QEMU writing with fio
//! `verify=crc32c` and three probe guests under `weir vm` with verify, two of them sharing a
//! two-path LUN — run through one broker while a seeded script, at random moments, kills and
//! restarts the broker, hands it over with `--replace`, fails and restores a path, changes
//! the LUN's window policy and path selector, and disconnects a guest (killing it and
//! starting another). At the end: no I/O or verify error in any guest that was not killed on
//! purpose, no request answered twice, every fault recovered; the broker's RSS and open file
//! descriptors are sampled every second and must not grow past the first third's.
//!
//! `WEIR_SOAK_SECONDS` (default 40, what CI runs) and `WEIR_SOAK_SEED` (default 14).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::probe::ProbeVm;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};
use weir_sched::rng::SplitMix64;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(dir: &Path) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let q = |p: PathBuf| format!("{:?}", p.display().to_string());
    let text = format!(
        "control_socket = {ctl}\n\
         [[lun]]\nname = \"fio\"\npath = {fio}\nsize = \"64MiB\"\n\
         [[lun]]\nname = \"m\"\npath = {m}\nsize = \"32MiB\"\nshareable = true\n\
         [[lun.paths]]\nname = \"a\"\n[[lun.paths]]\nname = \"b\"\n\
         [[lun]]\nname = \"q\"\npath = {qi}\nsize = \"32MiB\"\n\
         [[disk]]\nsocket = {s0}\nlun = \"fio\"\ntenant = \"fio\"\n\
         [[disk]]\nsocket = {s1}\nlun = \"m\"\ntenant = \"p0\"\n\
         [[disk]]\nsocket = {s2}\nlun = \"m\"\ntenant = \"p1\"\n\
         [[disk]]\nsocket = {s3}\nlun = \"q\"\ntenant = \"p2\"\n",
        ctl = q(control.clone()),
        fio = q(dir.join("fio.img")),
        m = q(dir.join("m.img")),
        qi = q(dir.join("q.img")),
        s0 = q(dir.join("fio.sock")),
        s1 = q(dir.join("p0.sock")),
        s2 = q(dir.join("p1.sock")),
        s3 = q(dir.join("p2.sock")),
    );
    (text, control)
}

/// (RSS KiB, open descriptors) of a process.
fn footprint(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some((rss, fds))
}

fn probe_vm(probe: &Path, dir: &Path, name: &str, runtime_ms: u64, n: usize) -> ProbeVm {
    ProbeVm::spawn(
        &weir(),
        probe,
        &[format!(
            "socket={}",
            dir.join(format!("{name}.sock")).display()
        )],
        &format!(
            "probe.verify=1 probe.iodepth=16 probe.rw=randrw probe.runtime_ms={runtime_ms} \
             probe.rate_iops=3000"
        ),
        dir,
        &format!("{name}-{n}"),
    )
    .expect("a probe guest starts")
}

#[derive(Default, Debug)]
struct Tally {
    kills: u32,
    handovers: u32,
    path_faults: u32,
    path_restores: u32,
    policy_changes: u32,
    guest_disconnects: u32,
}

#[test]
fn chaos_soak_keeps_every_guest_s_data_and_the_broker_s_footprint_flat() {
    let Some(probe) = common::probe_guest_setup("soak") else {
        return;
    };
    let Some((image, accel)) = common::linux_guest_setup("soak") else {
        return;
    };
    let seconds = env_u64("WEIR_SOAK_SECONDS", 40);
    let seed = env_u64("WEIR_SOAK_SEED", 14);
    let dir = tempfile::tempdir().unwrap();
    let (text, control) = config(dir.path());
    let mut broker =
        BrokerProcess::start(&weir(), &text, Some(control.clone()), dir.path()).expect("starts");

    // fio writes with a verify every 256 blocks for the whole soak, then stops.
    let job = format!(
        "[soak]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randwrite\niodepth=32\n\
         verify=crc32c\nverify_backlog=256\nverify_fatal=1\ntime_based=1\nruntime={}\n",
        seconds + 10
    );
    let mut spec = LinuxGuestSpec::new(
        "fio",
        &image,
        &with_target(&job, "/dev/vda"),
        accel,
        dir.path(),
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(seconds + 300);
    spec.disks.push(GuestDisk::VhostUser {
        socket: dir.path().join("fio.sock"),
        queues: 1,
    });
    let fio = spec.spawn().expect("the fio guest starts");
    let writes = |disk: usize| {
        query(&control, "stats")
            .ok()
            .and_then(|s| s[disk]["counters"]["writes"].as_u64())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while writes(0) < 200 {
        assert!(
            Instant::now() < deadline,
            "fio never wrote:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let runtime_ms = seconds * 1000;
    let mut probes: Vec<(String, ProbeVm)> = ["p0", "p1", "p2"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                probe_vm(&probe, dir.path(), n, runtime_ms, 0),
            )
        })
        .collect();
    let mut killed_guests = Vec::new();

    let mut rng = SplitMix64::new(seed);
    let mut tally = Tally::default();
    let mut path_down = false;
    let mut samples: Vec<(f64, u64, u64)> = Vec::new();
    let start = Instant::now();
    let mut next_action = start + Duration::from_millis(1000 + rng.below(2000));
    let mut next_sample = start;
    let depths = ["fixed:8", "fixed:64", "aimd", "latency", "adaptive"];
    let selectors = ["round-robin", "service-time", "least-queue-depth"];
    let mut spawned = 0;
    // The chaos runs for `seconds`, leaving the last 5 s quiet so the guests end cleanly.
    while start.elapsed() < Duration::from_secs(seconds.saturating_sub(5)) {
        let now = Instant::now();
        if now >= next_sample {
            if let Some((rss, fds)) = broker.pid().and_then(footprint) {
                samples.push((start.elapsed().as_secs_f64(), rss, fds));
            }
            next_sample += Duration::from_secs(1);
        }
        if now >= next_action {
            let ask = |cmd: &str| {
                let reply = query(&control, cmd).unwrap_or_default();
                assert!(reply["error"].is_null(), "{cmd}: {reply}");
            };
            match rng.below(6) {
                0 => {
                    broker.kill();
                    broker.restart(&weir()).expect("restarts after a kill");
                    tally.kills += 1;
                }
                1 => {
                    broker.restart(&weir()).expect("takes over");
                    tally.handovers += 1;
                }
                2 if !path_down => {
                    ask("fault m/a down");
                    path_down = true;
                    tally.path_faults += 1;
                }
                2 => {
                    ask("fault m/a up");
                    path_down = false;
                    tally.path_restores += 1;
                }
                3 => {
                    let d = depths[rng.below(depths.len() as u64) as usize];
                    ask(&format!("policy m depth {d}"));
                    tally.policy_changes += 1;
                }
                4 => {
                    let s = selectors[rng.below(selectors.len() as u64) as usize];
                    ask(&format!("policy m selector {s}"));
                    tally.policy_changes += 1;
                }
                _ => {
                    // Disconnect a probe guest (kill it) and start another in its place.
                    let i = rng.below(probes.len() as u64) as usize;
                    let (name, mut vm) = probes.remove(i);
                    let _ = vm.child.kill();
                    let _ = vm.child.wait();
                    killed_guests.push(name.clone());
                    spawned += 1;
                    let left = Duration::from_secs(seconds).saturating_sub(start.elapsed());
                    let ms = (left.as_millis() as u64).max(3000);
                    probes.push((
                        name.clone(),
                        probe_vm(&probe, dir.path(), &name, ms, spawned),
                    ));
                    tally.guest_disconnects += 1;
                }
            }
            next_action = Instant::now() + Duration::from_millis(1500 + rng.below(2500));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A path left failed would be a fault not recovered: restore it, the LUN must heal.
    if path_down {
        let _ = query(&control, "fault m/a up");
        tally.path_restores += 1;
    }
    let mut failures = Vec::new();
    for (name, vm) in probes {
        match vm.wait(Duration::from_secs(seconds + 120)) {
            Ok(run) => {
                let bad = run.exit_code != Some(0)
                    || run.report.errors != 0
                    || run.report.verify_errors != 0
                    || run.report.phases.iter().any(|p| p.unexpected != 0);
                if bad {
                    failures.push(format!("{name}: {:?}\n{}", run.report, run.vmm_log));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    let fio = fio.wait();
    let log = broker.log();
    eprintln!(
        "soak {seconds} s, seed {seed}: {tally:?}; guests killed on purpose {killed_guests:?}"
    );
    match &fio {
        Ok(run) => {
            let j = run.report.job("soak").expect("the soak job");
            eprintln!(
                "fio: {} writes, {:.0} MiB, error {}, write max {:.0} ms",
                j.write.total_ios,
                j.write.io_bytes as f64 / 1048576.0,
                j.error,
                j.write.clat_ns.max as f64 / 1e6
            );
            if j.error != 0 {
                failures.push(format!(
                    "fio error {} (a verify failure is EILSEQ)",
                    j.error
                ));
            }
        }
        Err(e) => failures.push(format!("fio: {e}")),
    }
    // Footprint: the samples of the last third against the first third's peak.
    let third = samples.len() / 3;
    let peak = |s: &[(f64, u64, u64)]| {
        s.iter()
            .fold((0, 0), |(r, f), &(_, rss, fds)| (r.max(rss), f.max(fds)))
    };
    let (early_rss, early_fds) = peak(&samples[..third.max(1).min(samples.len())]);
    let (late_rss, late_fds) = peak(&samples[samples.len() - third..]);
    eprintln!(
        "broker footprint: first third peak {early_rss} KiB RSS, {early_fds} fds; last third \
         peak {late_rss} KiB RSS, {late_fds} fds ({} samples)",
        samples.len()
    );
    assert!(
        failures.is_empty(),
        "{}\nbroker log:\n{log}",
        failures.join("\n")
    );
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        tally.kills + tally.handovers > 0 || seconds < 10,
        "{tally:?}"
    );
    // Every restart starts a fresh process, so growth shows within the soak's later part:
    // allow a quarter over the early peak (allocator and page-cache noise), no more.
    assert!(
        late_rss <= early_rss + early_rss / 4 + 4096,
        "RSS grew: {early_rss} → {late_rss} KiB"
    );
    assert!(
        late_fds <= early_fds + 16,
        "descriptors grew: {early_fds} → {late_fds}"
    );
}
