//! One `weir broker` process serving real QEMU guests over vhost-user-blk.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fio::FioReport;
use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};

const LUN_MIB: u64 = 128;

const BUSY_WRITER: &str = "[busy]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randwrite\niodepth=32\ntime_based=1\nruntime=120\n";

/// Waits until the broker has served `writes` writes on its first disk.
fn wait_for_writes(control: &Path, writes: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let stats = query(control, "stats").unwrap();
        if stats[0]["counters"]["writes"].as_u64().unwrap_or(0) > writes {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "guest never started writing: {stats}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn broker_config(dir: &Path, luns: &[(&str, &str)]) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let mut c = format!("control_socket = {:?}\n", control.display().to_string());
    for (name, _) in luns {
        c.push_str(&format!(
            "[[lun]]\nname = \"{name}\"\npath = {:?}\nsize = \"{LUN_MIB}MiB\"\n",
            dir.join(format!("{name}.img")).display().to_string()
        ));
    }
    for (name, tenant) in luns {
        c.push_str(&format!(
            "[[disk]]\nsocket = {:?}\nlun = \"{name}\"\ntenant = \"{tenant}\"\n",
            dir.join(format!("{tenant}.sock")).display().to_string()
        ));
    }
    (c, control)
}

fn weir_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn guest(
    name: &str,
    image: &weir_guest_images::GuestImage,
    accel: &weir_lab::host::AccelChoice,
    job: &str,
    socket: PathBuf,
    dir: &Path,
) -> LinuxGuestSpec {
    let mut spec = LinuxGuestSpec::new(
        name,
        image,
        &with_target(job, "/dev/vda"),
        accel.clone(),
        dir,
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(300);
    spec.disks.push(GuestDisk::VhostUser { socket, queues: 1 });
    spec
}

fn total_bytes(report: &FioReport) -> (u64, u64) {
    report.jobs.iter().fold((0, 0), |(r, w), j| {
        (r + j.read.io_bytes, w + j.write.io_bytes)
    })
}

fn within_one_percent(broker: u64, fio: u64) -> bool {
    let diff = broker.abs_diff(fio) as f64;
    diff <= 0.01 * fio as f64
}

#[test]
fn two_guests_on_two_luns_verify_and_counters_match_fio() {
    let Some((image, accel)) = common::linux_guest_setup("broker_two_guests") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, control) = broker_config(dir.path(), &[("lun-a", "vm-a"), ("lun-b", "vm-b")]);
    let broker = BrokerProcess::start(&weir_binary(), &config, Some(control.clone()), dir.path())
        .expect("broker starts");

    let a = guest(
        "vm-a",
        &image,
        &accel,
        &common::verify_then_read_job(16, 4),
        dir.path().join("vm-a.sock"),
        dir.path(),
    )
    .spawn()
    .unwrap();
    let b = guest(
        "vm-b",
        &image,
        &accel,
        &common::verify_then_read_job(16, 4),
        dir.path().join("vm-b.sock"),
        dir.path(),
    )
    .spawn()
    .unwrap();
    let ra = a
        .wait()
        .unwrap_or_else(|e| panic!("vm-a: {e}\nbroker log:\n{}", broker.log()));
    let rb = b
        .wait()
        .unwrap_or_else(|e| panic!("vm-b: {e}\nbroker log:\n{}", broker.log()));

    let stats = query(&control, "stats").expect("control socket answers");
    let disks = stats.as_array().expect("stats is a list");
    for (run, tenant) in [(&ra, "vm-a"), (&rb, "vm-b")] {
        let w = run.report.job("randwrite-verify").unwrap();
        assert_eq!(w.error, 0, "{tenant}: fio error (verify failure is EILSEQ)");
        assert_eq!(
            w.write.io_bytes,
            LUN_MIB << 20,
            "{tenant}: whole LUN written"
        );
        assert_eq!(
            w.read.io_bytes,
            LUN_MIB << 20,
            "{tenant}: whole LUN verified"
        );
        let r = run.report.job("randread").unwrap();
        assert_eq!(r.error, 0);
        assert!(r.read.iops > 0.0);

        let d = disks
            .iter()
            .find(|d| d["tenant"] == tenant)
            .unwrap_or_else(|| panic!("{tenant} missing from stats: {stats}"));
        let (fio_read, fio_write) = total_bytes(&run.report);
        let broker_read = d["counters"]["read_bytes"].as_u64().unwrap();
        let broker_write = d["counters"]["write_bytes"].as_u64().unwrap();
        eprintln!(
            "{tenant}: fio read {fio_read} write {fio_write}; broker read {broker_read} write {broker_write}; \
             randread QD16 {:.0} IOPS",
            r.read.iops
        );
        assert!(
            within_one_percent(broker_read, fio_read),
            "{tenant}: read bytes {broker_read} vs fio {fio_read}"
        );
        assert!(
            within_one_percent(broker_write, fio_write),
            "{tenant}: write bytes {broker_write} vs fio {fio_write}"
        );
        let rejected: u64 = d["counters"]["rejected"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(rejected, 0, "a Linux guest sends no malformed requests");
    }
    // Per-second telemetry saw both tenants working, with a device latency, and nothing is left
    // in flight once the guests are gone.
    let telemetry = query(&control, "telemetry").expect("telemetry answers");
    let samples = telemetry.as_array().expect("a list of samples");
    assert!(samples.len() >= 5, "{telemetry}");
    for tenant in ["vm-a", "vm-b"] {
        let busy_seconds = samples
            .iter()
            .filter_map(|s| {
                s["disks"]
                    .as_array()?
                    .iter()
                    .find(|d| d["tenant"] == tenant)
                    .cloned()
            })
            .filter(|d| {
                d["write_iops"].as_f64().unwrap_or(0.0) + d["read_iops"].as_f64().unwrap_or(0.0)
                    > 100.0
            })
            .filter(|d| d["device_latency_us"].as_f64().is_some_and(|l| l > 0.0))
            .count();
        assert!(
            busy_seconds >= 3,
            "{tenant}: {busy_seconds} busy seconds in {telemetry}"
        );
    }
    let last = query(&control, "stats").unwrap();
    for d in last.as_array().unwrap() {
        assert_eq!(d["counters"]["in_flight"], 0, "{last}");
    }
    drop(broker);
}

const PATTERN_WRITE: &str = "\
[global]
ioengine=psync
direct=1
bs=64k

[pattern-a]
rw=write
offset=1m
size=2m
buffer_pattern=0x5eedf00d

[pattern-b]
rw=write
offset=100m
size=512k
buffer_pattern=0xc0ffee11
";

const PATTERN_VERIFY: &str = "\
[global]
ioengine=psync
direct=1
bs=64k
verify=pattern
verify_fatal=1

[pattern-a]
rw=read
offset=1m
size=2m
verify_pattern=0x5eedf00d

[pattern-b]
rw=read
offset=100m
size=512k
verify_pattern=0xc0ffee11
";

fn pattern_holds(data: &[u8], pattern: u32) -> bool {
    let p = pattern.to_be_bytes();
    data.chunks(4).all(|c| c == p)
}

#[test]
fn backing_file_holds_what_the_guest_wrote_and_a_second_guest_can_attach() {
    let Some((image, accel)) = common::linux_guest_setup("broker_backing_file") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, control) = broker_config(dir.path(), &[("lun-p", "vm-p")]);
    let mut broker =
        BrokerProcess::start(&weir_binary(), &config, Some(control.clone()), dir.path())
            .expect("broker starts");
    let socket = dir.path().join("vm-p.sock");

    let writer = guest(
        "writer",
        &image,
        &accel,
        PATTERN_WRITE,
        socket.clone(),
        dir.path(),
    );
    let run = writer
        .run()
        .unwrap_or_else(|e| panic!("writer: {e}\nbroker log:\n{}", broker.log()));
    assert!(run.report.failed_jobs().is_empty());

    // The socket is served again: a second guest reads the patterns back and fio verifies.
    let reader = guest(
        "reader",
        &image,
        &accel,
        PATTERN_VERIFY,
        socket.clone(),
        dir.path(),
    );
    let run = reader
        .run()
        .unwrap_or_else(|e| panic!("reader: {e}\nbroker log:\n{}", broker.log()));
    assert!(run.report.failed_jobs().is_empty());
    assert_eq!(run.report.job("pattern-a").unwrap().read.io_bytes, 2 << 20);

    let stats = query(&control, "stats").unwrap();
    assert_eq!(stats[0]["counters"]["connections"], 2, "{stats}");

    let status = broker.stop().expect("broker exits by itself on SIGTERM");
    assert!(status.success(), "broker exit status {status}");
    assert!(!socket.exists(), "broker removes its sockets on exit");

    let data = std::fs::read(dir.path().join("lun-p.img")).unwrap();
    assert_eq!(data.len() as u64, LUN_MIB << 20);
    let mib = 1 << 20;
    assert!(
        pattern_holds(&data[mib..3 * mib], 0x5eedf00d),
        "pattern A at 1 MiB"
    );
    assert!(
        pattern_holds(&data[100 * mib..100 * mib + 512 * 1024], 0xc0ffee11),
        "pattern B at 100 MiB"
    );
    assert!(data[..mib].iter().all(|&b| b == 0), "nothing before 1 MiB");
    assert!(
        data[3 * mib..100 * mib].iter().all(|&b| b == 0),
        "nothing between the patterns"
    );
    assert!(
        data[100 * mib + 512 * 1024..].iter().all(|&b| b == 0),
        "nothing after pattern B"
    );
}

#[test]
fn a_guest_killed_mid_io_leaves_the_broker_serving() {
    let Some((image, accel)) = common::linux_guest_setup("broker_guest_killed") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, control) = broker_config(dir.path(), &[("lun-k", "vm-k")]);
    let broker = BrokerProcess::start(&weir_binary(), &config, Some(control.clone()), dir.path())
        .expect("broker starts");
    let socket = dir.path().join("vm-k.sock");
    let victim = guest(
        "victim",
        &image,
        &accel,
        BUSY_WRITER,
        socket.clone(),
        dir.path(),
    )
    .spawn()
    .unwrap();
    // Wait until the guest is really writing, then kill its QEMU outright.
    wait_for_writes(&control, 2000);
    let pid = victim.pid().unwrap();
    // SAFETY: kill(2) on the QEMU child this test started.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
    drop(victim);

    // The broker notices, finishes what was in flight, and serves the socket again.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while query(&control, "stats").unwrap()[0]["connected"] == true {
        assert!(
            std::time::Instant::now() < deadline,
            "broker never saw the disconnect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = guest(
        "after",
        &image,
        &accel,
        &common::verify_then_read_job(16, 4),
        socket,
        dir.path(),
    )
    .run()
    .unwrap_or_else(|e| panic!("second guest: {e}\nbroker log:\n{}", broker.log()));
    assert!(after.report.failed_jobs().is_empty());
    assert!(
        broker.log().contains("in-flight requests finished"),
        "{}",
        broker.log()
    );
}

#[test]
fn sigterm_under_load_answers_in_flight_io_and_exits_zero() {
    let Some((image, accel)) = common::linux_guest_setup("broker_sigterm") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (config, control) = broker_config(dir.path(), &[("lun-t", "vm-t")]);
    let mut broker =
        BrokerProcess::start(&weir_binary(), &config, Some(control.clone()), dir.path())
            .expect("broker starts");
    let guest = guest(
        "busy",
        &image,
        &accel,
        BUSY_WRITER,
        dir.path().join("vm-t.sock"),
        dir.path(),
    )
    .spawn()
    .unwrap();
    wait_for_writes(&control, 2000);
    let started = std::time::Instant::now();
    let status = broker
        .stop()
        .expect("broker exits by itself within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status}");
    eprintln!("broker stopped {:?} after SIGTERM", started.elapsed());
    let log = broker.log();
    assert!(
        log.contains("finishing in-flight I/O and stopping"),
        "{log}"
    );
    assert!(log.contains("in-flight requests finished"), "{log}");
    drop(guest);
}
