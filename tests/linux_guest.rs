//! The Linux test guest under QEMU: real kernel, real fio, real disk file.

mod common;

use std::time::Duration;

use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, GuestRunError, LinuxGuestSpec};

#[test]
fn guest_fio_randwrite_verify_then_randread_on_256mib_disk() {
    let Some((image, accel)) = common::linux_guest_setup("guest_fio_randwrite_verify") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let disk = common::raw_disk(dir.path(), "data.raw", 256);
    let mut spec = LinuxGuestSpec::new(
        "verify",
        &image,
        &with_target(&common::verify_then_read_job(32, 5), "/dev/vda"),
        accel,
        dir.path(),
    );
    spec.fio_timeout = Duration::from_secs(300);
    spec.disks.push(GuestDisk::RawFile {
        path: disk.clone(),
        serial: "weir-test-0".into(),
    });
    let run = match spec.run() {
        Ok(run) => run,
        Err(e) => panic!("guest run failed: {e}"),
    };
    assert_eq!(
        run.transcript.disks.first().map(String::as_str),
        Some("vda")
    );

    let write = run
        .report
        .job("randwrite-verify")
        .expect("write job in report");
    assert_eq!(write.error, 0, "verify or I/O error in the write job");
    // The whole 256 MiB was written, then every block read back and checked.
    assert_eq!(write.write.io_bytes, 256 << 20);
    assert_eq!(
        write.read.io_bytes,
        256 << 20,
        "verify must read back every block"
    );
    assert!(write.write.iops > 0.0);

    let read = run.report.job("randread").expect("read job in report");
    assert_eq!(read.error, 0);
    assert!(read.read.iops > 0.0 && read.read.total_ios > 0);
    assert!(read.read.clat_ns.percentile_ns(99.0).is_some());
    eprintln!(
        "guest: boot-to-init {:?} s, randwrite {:.0} IOPS, randread QD32 {:.0} IOPS, wall {:.1} s",
        run.transcript.init_uptime_s,
        write.write.iops,
        read.read.iops,
        run.wall_time.as_secs_f64()
    );

    // The guest's writes reached the host file: fio's verify header carries its magic
    // (0xacca) at the start of every 4 KiB block.
    let data = std::fs::read(&disk).unwrap();
    let blocks_with_header = data
        .chunks(4096)
        .filter(|b| b[0] == 0xca && b[1] == 0xac)
        .count();
    assert_eq!(blocks_with_header, (256 << 20) / 4096);
}

#[test]
fn guest_fio_failure_is_reported_with_the_guests_message() {
    let Some((image, accel)) = common::linux_guest_setup("guest_fio_failure") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // /dev/vdz does not exist: fio refuses to create a file without a size.
    let job = "[missing-device]\nfilename=/dev/vdz\nrw=randread\nioengine=psync\n";
    let mut spec = LinuxGuestSpec::new("broken", &image, job, accel, dir.path());
    spec.fio_timeout = Duration::from_secs(120);
    match spec.run() {
        Err(GuestRunError::FioFailed { exit, message, .. }) => {
            assert_ne!(exit, 0);
            assert!(message.contains("missing-device"), "{message}");
            assert!(message.contains("size="), "{message}");
        }
        Err(other) => panic!("expected the guest's fio failure, got: {other}"),
        Ok(_) => panic!("a job on a missing device must fail"),
    }
}
