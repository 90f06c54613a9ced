//! The broker is not a single point of failure: killed (SIGKILL) under load and started again,
//! it takes its guests back with no error — a probe guest under `weir vm` and a Linux guest
//! under QEMU running fio with verify — resubmitting what the dead broker had in flight from
//! the frontends' inflight regions. The stall each restart costs the guests is measured.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::probe::ProbeVm;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};
use weir_sched::rng::SplitMix64;

/// The tests measure stalls: one at a time, so no test's guests compete with another's for the
/// two cores (a TCG guest holds one by itself).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until every disk of the broker on `control` has its guest connected again; how long
/// since `from` (at most 5 s).
fn all_reconnected(control: &Path, from: Instant) -> Duration {
    let limit = from + Duration::from_secs(5);
    loop {
        let connected = query(control, "stats")
            .ok()
            .and_then(|s| {
                s.as_array()
                    .map(|d| d.iter().all(|d| d["connected"] == true))
            })
            .unwrap_or(false);
        if connected || Instant::now() > limit {
            return from.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

/// A broker config with one file LUN and disk per name (`<name>.img`, `<name>.sock`).
fn config(dir: &Path, names: &[&str], mib: u64) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let mut c = format!("control_socket = {:?}\n", control.display().to_string());
    for name in names {
        c.push_str(&format!(
            "[[lun]]\nname = \"{name}\"\npath = {:?}\nsize = \"{mib}MiB\"\n\
             [[disk]]\nsocket = {:?}\nlun = \"{name}\"\ntenant = \"{name}\"\n",
            dir.join(format!("{name}.img")).display().to_string(),
            dir.join(format!("{name}.sock")).display().to_string(),
        ));
    }
    (c, control)
}

/// Requests the broker has taken from its guests and not answered, over all disks.
fn in_flight(control: &Path) -> u64 {
    query(control, "stats")
        .ok()
        .and_then(|s| {
            s.as_array().map(|d| {
                d.iter()
                    .filter_map(|d| d["counters"]["in_flight"].as_u64())
                    .sum()
            })
        })
        .unwrap_or(0)
}

fn writes_of(control: &Path, disk: usize) -> u64 {
    query(control, "stats")
        .ok()
        .and_then(|s| s[disk]["counters"]["writes"].as_u64())
        .unwrap_or(0)
}

/// Kills the broker `times` times at seeded random moments `gap` apart, each time starting a
/// new one at once; returns per restart (kill → new broker ready, kill → every guest
/// connected to it again).
fn kill_and_restart(
    broker: &mut BrokerProcess,
    control: &Path,
    seed: u64,
    times: usize,
    gap: (Duration, Duration),
) -> Vec<(Duration, Duration)> {
    let mut rng = SplitMix64::new(seed);
    let mut downtime = Vec::new();
    for _ in 0..times {
        let span = gap.1.saturating_sub(gap.0).as_secs_f64();
        std::thread::sleep(gap.0 + Duration::from_secs_f64(span * rng.next_f64()));
        // Kill while the broker holds requests (it does most of the time; in between, the
        // guest's next requests are still in its avail ring and nothing is left to resubmit).
        let busy_by = Instant::now() + Duration::from_millis(200);
        while Instant::now() < busy_by && in_flight(control) == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
        let killed = Instant::now();
        broker.kill();
        broker.restart(&weir()).expect("the broker starts again");
        let ready = killed.elapsed();
        downtime.push((ready, all_reconnected(control, killed)));
    }
    downtime
}

/// The requests each restarted broker resubmitted, from its log.
fn resubmissions(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split("resubmitting ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The probe's phases, one line: name, requests, longest wait.
fn phases(run: &weir_lab::probe::ProbeRun) -> String {
    run.report
        .phases
        .iter()
        .map(|p| format!("{} {} IOs, max {} µs", p.name, p.ios, p.lat_us.max))
        .collect::<Vec<_>>()
        .join("; ")
}

fn lines(text: &str, what: &str) -> String {
    text.lines()
        .filter(|l| l.contains(what))
        .collect::<Vec<_>>()
        .join("\n")
}

fn probe_checks(run: &weir_lab::probe::ProbeRun, broker: &BrokerProcess, restarts: usize) {
    assert_eq!(run.exit_code, Some(0), "{}\n{}", run.vmm_log, broker.log());
    assert_eq!(
        (run.report.errors, run.report.verify_errors),
        (0, 0),
        "{}",
        run.vmm_log
    );
    for phase in &run.report.phases {
        assert_eq!(
            phase.unexpected, 0,
            "a request was answered twice: {phase:?}"
        );
        assert!(
            phase.lat_us.max < 1_000_000,
            "{}: the longest request waited {} µs (≥ 1 s)",
            phase.name,
            phase.lat_us.max
        );
    }
    assert!(
        run.vmm_log.matches("backend back after").count() >= restarts,
        "the guest reconnected {restarts} times:\n{}",
        run.vmm_log
    );
}

#[test]
fn a_probe_guest_under_weir_vm_survives_three_broker_kills_with_no_error() {
    let Some(probe) = common::probe_guest_setup("broker_restart_probe") else {
        return;
    };
    let _one = serial();
    let dir = tempfile::tempdir().unwrap();
    let (c, control) = config(dir.path(), &["p"], 64);
    let mut broker =
        BrokerProcess::start(&weir(), &c, Some(control.clone()), dir.path()).expect("starts");
    let vm = ProbeVm::spawn(
        &weir(),
        &probe,
        &[format!("socket={}", dir.path().join("p.sock").display())],
        "probe.verify=1 probe.iodepth=16 probe.rw=randrw probe.runtime_ms=12000",
        dir.path(),
        "vm",
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while writes_of(&control, 0) < 500 {
        assert!(Instant::now() < deadline, "the guest never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    let downtime = kill_and_restart(
        &mut broker,
        &control,
        0x5eed,
        3,
        (Duration::from_millis(500), Duration::from_millis(1500)),
    );
    // A kill can land when the broker holds none of the guest's requests (they are in the
    // avail ring, between two of the guest's batches; about 1 kill in 3 to 9 here): then there
    // is nothing to resubmit. Kill again, up to 5 times, until something was.
    let mut extra = 0;
    while resubmissions(&broker.log()).is_empty() && extra < 5 {
        kill_and_restart(
            &mut broker,
            &control,
            extra,
            1,
            (Duration::from_millis(100), Duration::from_millis(300)),
        );
        extra += 1;
    }
    let run = vm
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\nbroker:\n{}", broker.log()));
    let log = broker.log();
    eprintln!(
        "(kill → ready, kill → all guests back) {downtime:?}; resubmitted {:?} ({} fresh \
         region starts); guest: {}\n{}",
        resubmissions(&log),
        log.matches("inflight tracking starts on a fresh region")
            .count(),
        phases(&run),
        lines(&run.vmm_log, "backend back"),
    );
    probe_checks(&run, &broker, 3);
    assert!(run.report.phase("randrw").expect("randrw").ios > 1000);
    // Some kill must have found requests to resubmit (see above).
    assert!(
        resubmissions(&log).iter().sum::<u64>() > 0,
        "nothing was resubmitted:\n{log}"
    );
}

/// A broker with a fio LUN and a probe LUN, a Linux guest under QEMU writing the fio LUN with
/// `verify=crc32c` at QD32 (then verifying, then reading), and a probe guest under `weir vm`
/// with verify at QD16, both under way.
struct Load {
    dir: tempfile::TempDir,
    control: PathBuf,
    broker: BrokerProcess,
    fio: weir_lab::qemu::RunningGuest,
    probe: ProbeVm,
}

fn start_load(
    image: &weir_guest_images::GuestImage,
    accel: weir_lab::host::AccelChoice,
    probe: &Path,
) -> Load {
    let dir = tempfile::tempdir().unwrap();
    let (c, control) = config(dir.path(), &["fio", "p"], 64);
    let broker =
        BrokerProcess::start(&weir(), &c, Some(control.clone()), dir.path()).expect("starts");
    let mut spec = LinuxGuestSpec::new(
        "fio",
        image,
        &with_target(&common::verify_then_read_job(32, 3), "/dev/vda"),
        accel,
        dir.path(),
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(300);
    spec.disks.push(GuestDisk::VhostUser {
        socket: dir.path().join("fio.sock"),
        queues: 1,
    });
    let fio = spec.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    while writes_of(&control, 0) < 1000 {
        assert!(
            Instant::now() < deadline,
            "fio never wrote:\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let vm = ProbeVm::spawn(
        &weir(),
        probe,
        &[format!("socket={}", dir.path().join("p.sock").display())],
        "probe.verify=1 probe.iodepth=16 probe.rw=randrw probe.runtime_ms=6000 probe.rate_iops=5000",
        dir.path(),
        "vm",
    )
    .unwrap();
    while writes_of(&control, 1) < 500 {
        assert!(Instant::now() < deadline, "the probe never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    Load {
        dir,
        control,
        broker,
        fio,
        probe: vm,
    }
}

/// Waits for both guests and checks what must hold after any number of restarts: no I/O or
/// verify error, every block written once, no request answered twice, none waiting a second.
/// Returns the fio and probe runs and the broker's log.
fn finish_load(
    load: Load,
    restarts: usize,
) -> (weir_lab::qemu::GuestRun, weir_lab::probe::ProbeRun, String) {
    let Load {
        dir: _dir,
        control,
        broker,
        fio,
        probe,
    } = load;
    let run = probe
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("probe: {e}\nbroker:\n{}", broker.log()));
    let fio = fio
        .wait()
        .unwrap_or_else(|e| panic!("fio: {e}\nbroker:\n{}", broker.log()));
    let w = fio.report.job("randwrite-verify").expect("the write job");
    let r = fio.report.job("randread").expect("the read job");
    assert_eq!(
        w.error, 0,
        "fio write/verify error (a verify failure is EILSEQ)"
    );
    assert_eq!(r.error, 0, "fio read error");
    assert_eq!(w.write.io_bytes, 64 << 20, "every block written once");
    for (what, max_ns) in [
        ("write", w.write.clat_ns.max),
        ("verify", w.read.clat_ns.max),
        ("read", r.read.clat_ns.max),
    ] {
        assert!(
            max_ns < 1_000_000_000,
            "fio {what}: the longest request took {:.0} ms (≥ 1 s)",
            max_ns as f64 / 1e6
        );
    }
    probe_checks(&run, &broker, restarts);
    let stats = query(&control, "stats").unwrap();
    for disk in stats.as_array().unwrap() {
        assert_eq!(disk["counters"]["io_errors"], 0, "{disk}");
    }
    let log = broker.log();
    (fio, run, log)
}

/// The case: a Linux guest under QEMU writing with fio `verify=crc32c` at QD32 and a
/// probe guest under `weir vm` with verify, through one broker SIGKILLed and restarted 3 times
/// at seeded random moments: no I/O error, no verify error, no request answered twice, and no
/// request waits a second.
#[test]
fn fio_with_verify_under_qemu_and_a_probe_survive_three_broker_kills() {
    let Some((image, accel)) = common::linux_guest_setup("broker_restart_qemu") else {
        return;
    };
    let Some(probe) = common::probe_guest_setup("broker_restart_qemu") else {
        return;
    };
    let _one = serial();
    let mut load = start_load(&image, accel, &probe);
    let downtime = kill_and_restart(
        &mut load.broker,
        &load.control,
        0xfeed,
        3,
        (Duration::from_millis(700), Duration::from_millis(1500)),
    );
    let (fio, run, log) = finish_load(load, 3);
    let w = fio.report.job("randwrite-verify").expect("the write job");
    let r = fio.report.job("randread").expect("the read job");
    eprintln!(
        "(kill → ready, kill → all guests back) {downtime:?}; resubmitted {:?}; fio write max \
         {:.1} ms ({} IOs), read max {:.1} ms; probe: {}",
        resubmissions(&log),
        w.write.clat_ns.max as f64 / 1e6,
        w.write.total_ios,
        r.read.clat_ns.max as f64 / 1e6,
        phases(&run),
    );
}

/// The reconnect gaps `weir vm` logged ("backend back after N ms"), in ms.
fn reconnect_gaps_ms(vmm_log: &str) -> Vec<u64> {
    vmm_log
        .lines()
        .filter_map(|l| l.split("backend back after ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

/// `weir broker --replace` beside a running broker under the same load: the old one finishes
/// what it has in flight and exits, the new one takes the guests; 3 handovers, no error, and
/// the guests wait for the new broker no more than 200 ms each time.
#[test]
fn replace_hands_the_guests_over_under_load_with_a_short_stall() {
    let Some((image, accel)) = common::linux_guest_setup("broker_replace") else {
        return;
    };
    let Some(probe) = common::probe_guest_setup("broker_replace") else {
        return;
    };
    let _one = serial();
    let mut load = start_load(&image, accel, &probe);
    let mut rng = SplitMix64::new(0xa11ce);
    let mut handover = Vec::new();
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(700 + rng.below(800)));
        let asked = Instant::now();
        load.broker
            .restart(&weir())
            .expect("the new broker takes over");
        handover.push((asked.elapsed(), all_reconnected(&load.control, asked)));
    }
    let (fio, run, log) = finish_load(load, 3);
    let w = fio.report.job("randwrite-verify").expect("the write job");
    let r = fio.report.job("randread").expect("the read job");
    let gaps = reconnect_gaps_ms(&run.vmm_log);
    eprintln!(
        "(--replace → ready, → all guests back) {handover:?}; weir vm reconnect gaps {gaps:?} \
         ms; {}; fio write max {:.1} ms, verify max {:.1} ms, read max {:.1} ms; probe: {}",
        lines(&log, "took over from"),
        w.write.clat_ns.max as f64 / 1e6,
        w.read.clat_ns.max as f64 / 1e6,
        r.read.clat_ns.max as f64 / 1e6,
        phases(&run),
    );
    assert_eq!(gaps.len(), 3, "{}", run.vmm_log);
    for gap in &gaps {
        assert!(*gap <= 200, "the guest waited {gap} ms for the new broker");
    }
    // A handover leaves nothing in flight for the next broker: the old one answered it all.
    assert_eq!(resubmissions(&log).iter().sum::<u64>(), 0, "{log}");
    assert_eq!(log.matches("took over from broker pid").count(), 3, "{log}");
}
