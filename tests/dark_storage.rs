//! The dark-storage report on real partition tables and filesystems: made by a Linux guest
//! through the broker (busybox fdisk and mke2fs), and by the real mkfs tools (ext4, XFS, btrfs)
//! on the host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};
use weir_lab::testenv;

const MIB: u64 = 1 << 20;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn lun<'a>(report: &'a Value, name: &str) -> &'a Value {
    report
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["lun"] == name)
        .unwrap_or_else(|| panic!("no LUN {name} in {report}"))
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A filesystem made by `mkfs` in its own file, copied into `image` at `offset`.
fn mkfs_into(mkfs: &[&str], size: u64, image: &Path, offset: u64) {
    let dir = image.parent().unwrap();
    let fs = dir.join(format!("fs-{offset}.img"));
    std::fs::File::create(&fs).unwrap().set_len(size).unwrap();
    run(Command::new(mkfs[0]).args(&mkfs[1..]).arg(&fs));
    run(Command::new("dd")
        .arg(format!("if={}", fs.display()))
        .arg(format!("of={}", image.display()))
        .args(["bs=1M", "conv=notrunc,sparse"])
        .arg(format!("seek={}", offset / MIB)));
    std::fs::remove_file(fs).unwrap();
}

fn sparse(path: &Path, size: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
}

fn missing_tools() -> Option<String> {
    ["sfdisk", "mkfs.ext4", "mkfs.xfs", "mkfs.btrfs"]
        .iter()
        .find(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|t| {
            format!(
                "{t} not found (scripts/install-deps.sh: fdisk, e2fsprogs, xfsprogs, btrfs-progs)"
            )
        })
}

#[test]
fn ext4_xfs_and_btrfs_made_by_their_own_tools_are_read_and_the_dark_bytes_counted() {
    if !testenv::can_run("dark_storage_host_filesystems", missing_tools()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 1 GiB: a GPT with one 256 MiB partition at 1 MiB holding a 200 MiB ext4.
    let gpt = d.join("gpt.img");
    sparse(&gpt, 1024 * MIB);
    let mut sf = Command::new("sfdisk")
        .arg(&gpt)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        sf.stdin.as_mut().unwrap(),
        b"label: gpt\nstart=2048, size=524288, type=L\n",
    )
    .unwrap();
    assert!(sf.wait().unwrap().success());
    mkfs_into(&["mkfs.ext4", "-q", "-F"], 200 * MIB, &gpt, MIB);
    // Whole-LUN XFS and btrfs, and a LUN nobody maps.
    let xfs = d.join("xfs.img");
    sparse(&xfs, 512 * MIB);
    mkfs_into(&["mkfs.xfs", "-q", "-f"], 400 * MIB, &xfs, 0);
    let btrfs = d.join("btrfs.img");
    sparse(&btrfs, 512 * MIB);
    mkfs_into(&["mkfs.btrfs", "-q", "-f"], 300 * MIB, &btrfs, 0);
    let spare = d.join("spare.img");
    sparse(&spare, 64 * MIB);

    let control = d.join("broker.ctl");
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut config = format!("control_socket = {}\n", q(&control));
    for (name, path) in [
        ("gpt", &gpt),
        ("xfs", &xfs),
        ("btrfs", &btrfs),
        ("spare", &spare),
    ] {
        config.push_str(&format!("[[lun]]\nname = \"{name}\"\npath = {}\n", q(path)));
    }
    for name in ["gpt", "xfs", "btrfs"] {
        config.push_str(&format!(
            "[[disk]]\nsocket = {}\nlun = \"{name}\"\n",
            q(&d.join(format!("{name}.sock")))
        ));
    }
    let _broker = BrokerProcess::start(&weir(), &config, Some(control.clone()), d).unwrap();
    let report = query(&control, "dark").unwrap();

    let g = lun(&report, "gpt");
    assert_eq!(g["layout"]["table"], "gpt", "{g}");
    let p = &g["layout"]["partitions"][0];
    assert_eq!(p["start_bytes"].as_u64(), Some(MIB));
    assert_eq!(p["size_bytes"].as_u64(), Some(256 * MIB));
    assert_eq!(p["fs"]["kind"], "ext4");
    assert_eq!(p["fs"]["size_bytes"].as_u64(), Some(200 * MIB));
    assert_eq!(g["layout"]["unpartitioned_bytes"].as_u64(), Some(768 * MIB));
    assert_eq!(g["layout"]["unformatted_bytes"].as_u64(), Some(56 * MIB));
    assert_eq!(g["dark_bytes"].as_u64(), Some(824 * MIB));
    // mkfs wrote metadata only: most of the LUN was never written.
    assert!(
        g["never_written_bytes"].as_u64().unwrap() > 900 * MIB,
        "{g}"
    );

    let x = lun(&report, "xfs");
    assert_eq!(x["layout"]["whole_disk_fs"]["kind"], "xfs", "{x}");
    assert_eq!(
        x["layout"]["whole_disk_fs"]["size_bytes"].as_u64(),
        Some(400 * MIB)
    );
    assert_eq!(x["layout"]["unformatted_bytes"].as_u64(), Some(112 * MIB));
    let b = lun(&report, "btrfs");
    assert_eq!(b["layout"]["whole_disk_fs"]["kind"], "btrfs", "{b}");
    assert_eq!(
        b["layout"]["whole_disk_fs"]["size_bytes"].as_u64(),
        Some(300 * MIB)
    );

    let s = lun(&report, "spare");
    assert_eq!(s["unmapped"], true);
    assert_eq!(s["dark_pct"].as_f64(), Some(100.0));
    // Never connected since the broker started: forgotten too.
    let text = Command::new(weir())
        .args(["dark", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    eprintln!("{text}");
    assert!(text.contains("spare: mapped to no disk"), "{text}");
    assert!(
        text.contains("gpt: no guest connected since the broker started"),
        "{text}"
    );
    assert!(text.contains("p1 256.0 MiB ext4 200.0 MiB"), "{text}");
}

#[test]
fn a_linux_guest_partitions_and_formats_its_disk_and_the_report_sees_it() {
    let test = "dark_storage_guest";
    let Some((image, accel)) = common::linux_guest_setup(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let control = d.join("broker.ctl");
    let socket = d.join("vm.sock");
    let config = format!(
        "control_socket = {:?}\n[[lun]]\nname = \"vm\"\npath = {:?}\nsize = \"1GiB\"\n\
         [[lun]]\nname = \"orphan\"\npath = {:?}\nsize = \"64MiB\"\n\
         [[disk]]\nsocket = {:?}\nlun = \"vm\"\ntenant = \"vm\"\n",
        control.display().to_string(),
        d.join("vm.img").display().to_string(),
        d.join("orphan.img").display().to_string(),
        socket.display().to_string(),
    );
    let broker = BrokerProcess::start(&weir(), &config, Some(control.clone()), d).unwrap();
    // busybox in the guest: an MBR with one 256 MiB partition at 1 MiB, a 200 MiB ext2 in it
    // (busybox counts the size in KiB: 204800), run by fio's exec_prerun (fio cuts option values at ';').
    let job = "[mkfs]\nioengine=psync\nrw=read\nbs=4k\nsize=4k\n\
               exec_prerun=sh -c \"printf 'o\\nn\\np\\n1\\n2048\\n+256M\\nw\\n' | fdisk -u /dev/vda || true && \
               mke2fs -b 4096 /dev/vda1 204800\"\n";
    let mut spec = LinuxGuestSpec::new(
        "vm",
        &image,
        &with_target(job, "/dev/vda"),
        accel.clone(),
        d,
    );
    spec.memory_mib = 256;
    spec.fio_timeout = Duration::from_secs(120);
    spec.disks.push(GuestDisk::VhostUser { socket, queues: 1 });
    let run = spec
        .spawn()
        .unwrap()
        .wait()
        .unwrap_or_else(|e| panic!("guest: {e}\nbroker:\n{}", broker.log()));
    let serial = std::fs::read_to_string(&run.serial_log).unwrap_or_default();
    assert!(
        run.report.failed_jobs().is_empty(),
        "{:?}",
        run.report.failed_jobs()
    );
    let report = query(&control, "dark").unwrap();
    let l = lun(&report, "vm");
    eprintln!("{l:#}");
    assert_eq!(
        l["layout"]["table"], "mbr",
        "{l}\nthe guest's console:\n{serial}"
    );
    let p = &l["layout"]["partitions"][0];
    assert_eq!(p["start_bytes"].as_u64(), Some(MIB), "{l}");
    // busybox's +256M may round to its geometry: within a MiB.
    let psize = p["size_bytes"].as_u64().unwrap();
    assert!(psize.abs_diff(256 * MIB) <= MIB, "{psize}");
    assert_eq!(p["fs"]["kind"], "ext2", "{l}");
    assert_eq!(p["fs"]["size_bytes"].as_u64(), Some(200 * MIB));
    let unpart = l["layout"]["unpartitioned_bytes"].as_u64().unwrap();
    assert!(
        unpart.abs_diff(768 * MIB) <= MIB,
        "≈ 768 MiB unpartitioned: {unpart}"
    );
    let unformatted = l["layout"]["unformatted_bytes"].as_u64().unwrap();
    assert!(
        unformatted.abs_diff(56 * MIB) <= MIB,
        "≈ 56 MiB unformatted: {unformatted}"
    );
    assert!(l["written_since_attach_bytes"].as_u64() > Some(0));
    let disk = &l["disks"][0];
    assert_eq!(
        (
            disk["connected"].as_bool(),
            disk["ever_connected"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert!(disk["idle_s"].as_f64().is_some());
    assert_eq!(lun(&report, "orphan")["unmapped"], true);
}
