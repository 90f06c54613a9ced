//! The broker's scheduling with real guests: a victim and an aggressor on one congested
//! (emulated) array LUN.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};

const VICTIM_JOB: &str = "[victim]\nioengine=psync\ndirect=1\nbs=4k\nrw=randread\nrate_iops=100\ntime_based=1\nruntime=14\n";
const AGGRESSOR_JOB: &str = "[aggressor]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randread\niodepth=64\ntime_based=1\nruntime=18\n";

/// One emulated LUN shared by both tenants (both only read, so sharing the store is safe),
/// queueing deep inside the array (BUSY only past 64 waiting requests): with a deep window the
/// victim's requests wait behind the aggressor's in the array's queue; with an adaptive window
/// the array's queue stays short and mClock puts the victim's request first in the broker.
fn config(dir: &Path, policy: &str) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let mut c = format!(
        "control_socket = {:?}\n[[port]]\nname = \"p0\"\nqueue_limit = 128\n",
        control.display().to_string()
    );
    c.push_str(&format!(
        "[[lun]]\nname = \"shared\"\npath = {:?}\nsize = \"64MiB\"\nshareable = true\nbackend = \"emulated\"\n\
         port = \"p0\"\nmodel = {{ servers = 16, busy_threshold = 64 }}\ndepth = {policy}\n",
        dir.join("shared.img").display().to_string()
    ));
    for tenant in ["victim", "aggressor"] {
        c.push_str(&format!(
            "[[disk]]\nsocket = {:?}\nlun = \"shared\"\ntenant = \"{tenant}\"\n",
            dir.join(format!("{tenant}.sock")).display().to_string()
        ));
    }
    (c, control)
}

fn victim_p99_us(
    policy: &str,
    image: &weir_guest_images::GuestImage,
    accel: &weir_lab::host::AccelChoice,
) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let (cfg, control) = config(dir.path(), policy);
    let broker = BrokerProcess::start(
        &PathBuf::from(env!("CARGO_BIN_EXE_weir")),
        &cfg,
        Some(control.clone()),
        dir.path(),
    )
    .expect("broker starts");
    let spec = |name: &str, job: &str| {
        let mut s = LinuxGuestSpec::new(
            name,
            image,
            &with_target(job, "/dev/vda"),
            accel.clone(),
            dir.path(),
        );
        s.memory_mib = 384;
        s.fio_timeout = Duration::from_secs(120);
        s.disks.push(GuestDisk::VhostUser {
            socket: dir.path().join(format!("{name}.sock")),
            queues: 1,
        });
        s
    };
    let aggressor = spec("aggressor", AGGRESSOR_JOB).spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let victim = spec("victim", VICTIM_JOB)
        .run()
        .unwrap_or_else(|e| panic!("victim: {e}\n{}", broker.log()));
    let aggr = aggressor
        .wait()
        .unwrap_or_else(|e| panic!("aggressor: {e}\n{}", broker.log()));
    let telemetry = query(&control, "telemetry").unwrap();
    // Telemetry names the port and both LUNs every second, with the aggressor's window.
    let last = telemetry
        .as_array()
        .and_then(|s| s.last())
        .cloned()
        .expect("samples");
    assert_eq!(last["ports"][0]["port"], "p0", "{last}");
    assert_eq!(last["ports"][0]["queue_limit"], 128, "{last}");
    assert_eq!(last["luns"][0]["lun"], "shared", "{last}");
    // The LUN's mean window over the seconds the aggressor was busy.
    let windows: Vec<f64> = telemetry
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["disks"][1]["read_iops"].as_f64().unwrap_or(0.0) > 100.0)
        .filter_map(|s| s["luns"][0]["window"].as_f64())
        .collect();
    // No sample is no figure: an empty mean (or a missing p99 read as 0) would pass any "less
    // than" below.
    assert!(
        windows.len() >= 3,
        "the aggressor was busy in only {} telemetry seconds",
        windows.len()
    );
    // The median second: the knee search's excursions (an up probe that a noisy period let
    // through, undone a few periods later) are seconds, not the window it holds. CI runs on 2
    // shared cores with TCG guests, where a period's throughput swings ±15 %: the mean over
    // 11–15 s came out 20–24 in most runs and 33.8 and 39.6 in two, and one run's window
    // went 16 → 63 (median 32) before the knee search stopped trusting one lucky probe
    // period (docs/window-sweep.md, "Selection bias"); after it, 14–23 (median 18).
    eprintln!("{policy}: window per busy second {windows:?}");
    let mut sorted = windows.clone();
    sorted.sort_by(f64::total_cmp);
    let median_window = sorted[sorted.len() / 2];
    let v = victim.report.job("victim").unwrap();
    let a = aggr.report.job("aggressor").unwrap();
    (
        v.read
            .clat_ns
            .percentile_ns(99.0)
            .expect("the victim's fio reported a p99") as f64
            / 1000.0,
        a.read.iops,
        median_window,
    )
}

#[test]
fn adaptive_depth_protects_a_victim_that_a_deep_fixed_window_hurts() {
    let Some((image, accel)) = common::linux_guest_setup("broker_scheduling") else {
        return;
    };
    let (fixed_p99, fixed_aggr, fixed_window) =
        victim_p99_us("{ policy = \"fixed\", depth = 64 }", &image, &accel);
    let (adaptive_p99, adaptive_aggr, adaptive_window) =
        victim_p99_us("{ policy = \"adaptive\" }", &image, &accel);
    eprintln!(
        "victim fio p99: fixed:64 {fixed_p99:.0} us (aggressor {fixed_aggr:.0} IOPS, window {fixed_window:.1}); \
         adaptive {adaptive_p99:.0} us (aggressor {adaptive_aggr:.0} IOPS, median window {adaptive_window:.1})"
    );
    assert_eq!(fixed_window, 64.0);
    assert!(
        adaptive_window < 32.0,
        "adaptive found a shallower window: {adaptive_window}"
    );
    assert!(
        adaptive_p99 < fixed_p99,
        "victim p99 adaptive {adaptive_p99} vs fixed:64 {fixed_p99}"
    );
    // At the knee (window 16-20, the LUN's 16 servers) the aggressor gets 0.945-0.950 of
    // fixed:64's IOPS (three runs of this test, 2026-12-06; each figure repeats within 0.5 %).
    // The knee search's known excursions below the knee (issue 11: its sweep's worst phase is
    // 0.775 of the best fixed depth) cost more: one CI run's window fell 18 -> 13 as the
    // victim finished and stayed there for the last 5 s, 0.895. The bound leaves room for one
    // such excursion in a run, not for a window held below the knee throughout; the figures
    // of each run are printed above.
    assert!(
        adaptive_aggr >= 0.85 * fixed_aggr,
        "adaptive keeps the aggressor's throughput: {adaptive_aggr} vs {fixed_aggr}"
    );
}
