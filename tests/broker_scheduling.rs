//! The broker's scheduling with real guests: a victim and an aggressor behind one congested
//! (emulated) array port.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};

const VICTIM_JOB: &str = "[victim]\nioengine=psync\ndirect=1\nbs=4k\nrw=randread\nrate_iops=100\ntime_based=1\nruntime=14\n";
const AGGRESSOR_JOB: &str = "[aggressor]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randread\niodepth=64\ntime_based=1\nruntime=18\n";

/// Two emulated LUNs behind one port of 32: the aggressor's LUN queues deep (BUSY only past
/// 64 waiting), so a deep window fills the port and the victim meets QUEUE FULL.
fn config(dir: &Path, policy: &str) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let mut c = format!(
        "control_socket = {:?}\n[[port]]\nname = \"p0\"\nqueue_limit = 32\n",
        control.display().to_string()
    );
    for (lun, busy) in [("victim-lun", 1), ("aggressor-lun", 64)] {
        c.push_str(&format!(
            "[[lun]]\nname = \"{lun}\"\npath = {:?}\nsize = \"64MiB\"\nbackend = \"emulated\"\nport = \"p0\"\n\
             model = {{ servers = 16, busy_threshold = {busy} }}\ndepth = {policy}\n",
            dir.join(format!("{lun}.img")).display().to_string()
        ));
    }
    for (tenant, lun) in [("victim", "victim-lun"), ("aggressor", "aggressor-lun")] {
        c.push_str(&format!(
            "[[disk]]\nsocket = {:?}\nlun = \"{lun}\"\ntenant = \"{tenant}\"\n",
            dir.join(format!("{tenant}.sock")).display().to_string()
        ));
    }
    (c, control)
}

fn victim_p99_us(
    policy: &str,
    image: &weir_guest_images::GuestImage,
    accel: &weir_lab::host::AccelChoice,
) -> (f64, f64, u64) {
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
    let congestion: u64 = telemetry
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["luns"].as_array().cloned().unwrap_or_default())
        .map(|l| l["congestion"].as_u64().unwrap_or(0))
        .sum();
    let v = victim.report.job("victim").unwrap();
    let a = aggr.report.job("aggressor").unwrap();
    (
        v.read.clat_ns.percentile_ns(99.0).unwrap_or(0) as f64 / 1000.0,
        a.read.iops,
        congestion,
    )
}

#[test]
fn adaptive_depth_protects_a_victim_that_a_deep_fixed_window_hurts() {
    let Some((image, accel)) = common::linux_guest_setup("broker_scheduling") else {
        return;
    };
    let (fixed_p99, fixed_aggr, fixed_cong) =
        victim_p99_us("{ policy = \"fixed\", depth = 64 }", &image, &accel);
    let (adaptive_p99, adaptive_aggr, adaptive_cong) =
        victim_p99_us("{ policy = \"adaptive\" }", &image, &accel);
    eprintln!(
        "victim fio p99: fixed:64 {fixed_p99:.0} us (aggressor {fixed_aggr:.0} IOPS, {fixed_cong} QUEUE FULL/BUSY); \
         adaptive {adaptive_p99:.0} us (aggressor {adaptive_aggr:.0} IOPS, {adaptive_cong} QUEUE FULL/BUSY)"
    );
    assert!(
        fixed_cong > adaptive_cong,
        "the deep window provokes more congestion"
    );
    assert!(
        adaptive_p99 < fixed_p99,
        "victim p99 adaptive {adaptive_p99} vs fixed:64 {fixed_p99}"
    );
}
