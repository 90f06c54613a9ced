//! The path checker on a real dead device: a LUN on a loop device whose backing filesystem is
//! shut down (every read of the device fails with EIO) while the device's first block is still
//! in the host's page cache. A buffered probe is answered from that cache and fails the path
//! back onto a dead device; the checker's direct probe must see the EIO and keep it failed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::probe::{self, ProbeVm};
use weir_lab::testenv;
use weir_vmm::host::{HostVirtualization, KvmFlavour};

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An ext4 image mounted through a loop device, with a loop device over a file on it; all
/// undone on drop.
struct DeadableDevice {
    mount: PathBuf,
    device: String,
}

impl DeadableDevice {
    fn new(dir: &Path) -> DeadableDevice {
        let fs_img = dir.join("fs.img");
        std::fs::File::create(&fs_img)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        run("mkfs.ext4", &["-q", "-F", fs_img.to_str().unwrap()]);
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).unwrap();
        run(
            "mount",
            &[
                "-o",
                "loop",
                fs_img.to_str().unwrap(),
                mount.to_str().unwrap(),
            ],
        );
        let lun = mount.join("lun.img");
        std::fs::write(&lun, vec![0x5au8; 8 << 20]).unwrap();
        let device = run("losetup", &["-f", "--show", lun.to_str().unwrap()]);
        DeadableDevice { mount, device }
    }

    /// Every read and write of the filesystem fails from now on (the ext4/XFS shutdown ioctl,
    /// as a storage controller's loss looks to the host).
    fn kill(&self) {
        run(
            "xfs_io",
            &["-x", "-c", "shutdown", self.mount.to_str().unwrap()],
        );
    }
}

impl Drop for DeadableDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
        let _ = Command::new("umount").arg(&self.mount).status();
    }
}

fn path_state(control: &Path, path: &str) -> String {
    let topo = query(control, "topology").expect("topology");
    let luns = topo.as_array().cloned().unwrap_or_default();
    for l in luns {
        for p in l["paths"].as_array().cloned().unwrap_or_default() {
            if p["name"] == path {
                return p["state"].as_str().unwrap_or("").to_string();
            }
        }
    }
    panic!("no path {path} in {topo}");
}

/// How many times the checker has put `path` back in use (restored or returning).
fn restorations(control: &Path, path: &str) -> usize {
    let events = query(control, "paths").expect("paths");
    events["l"]
        .as_array()
        .map(|e| {
            e.iter()
                .filter(|e| {
                    e["path"] == path && (e["what"] == "restored" || e["what"] == "returning")
                })
                .count()
        })
        .unwrap_or(0)
}

fn dd(device: &str, direct: bool) -> bool {
    let mut args = vec![
        format!("if={device}"),
        "of=/dev/null".into(),
        "bs=4096".into(),
        "count=1".into(),
    ];
    if direct {
        args.push("iflag=direct".into());
    }
    Command::new("dd")
        .args(&args)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn a_dead_device_with_a_cached_first_block_is_not_failed_back() {
    let missing = match HostVirtualization::detect().flavour {
        KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    }
    .or_else(|| {
        // SAFETY: getuid has no arguments and cannot fail.
        (unsafe { libc::getuid() } != 0).then(|| "loop devices and mounts need root".to_string())
    });
    if !testenv::can_run(
        "a_dead_device_with_a_cached_first_block_is_not_failed_back",
        missing,
    ) {
        return;
    }
    let probe_kernel = probe::build().expect("the probe builds");
    let dir = tempfile::tempdir().unwrap();
    let dev = DeadableDevice::new(dir.path());
    let control = dir.path().join("broker.ctl");
    let config = format!(
        "control_socket = {control:?}\n\
         [[lun]]\nname = \"l\"\npath = {dev:?}\n\
         multipath = {{ failback_s = 0, checker_interval_s = 0.2 }}\n\
         [[lun.paths]]\nname = \"a\"\n[[lun.paths]]\nname = \"b\"\n\
         [[disk]]\nsocket = {sock:?}\nlun = \"l\"\n",
        control = control.display().to_string(),
        dev = dev.device,
        sock = dir.path().join("g.sock").display().to_string(),
    );
    let mut broker =
        BrokerProcess::start(&weir(), &config, Some(control.clone()), dir.path()).unwrap();
    // A guest reading keeps the paths in use: a path fails on a request's error.
    let guest = ProbeVm::spawn(
        &weir(),
        &probe_kernel,
        &[format!("socket={}", dir.path().join("g.sock").display())],
        "probe.rw=randread probe.iodepth=1 probe.runtime_ms=6000",
        dir.path(),
        "reader",
    )
    .expect("probe starts");
    let reply = query(&control, "fault l/a down").unwrap();
    assert!(reply.get("ok").is_some(), "{reply}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while path_state(&control, "a") != "failed" {
        assert!(Instant::now() < deadline, "path a never failed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Cache the device's first block, then kill the device under it.
    assert!(dd(&dev.device, false));
    dev.kill();
    assert!(
        !dd(&dev.device, true),
        "the device still reads after shutdown"
    );
    eprintln!(
        "buffered read of the dead device's first block {}",
        if dd(&dev.device, false) {
            "still succeeds (from the page cache): the trap this test is about"
        } else {
            "fails too"
        }
    );
    let reply = query(&control, "fault l/a up").unwrap();
    assert!(reply.get("ok").is_some(), "{reply}");
    let events_before = restorations(&control, "a");
    // Ten checker intervals: a probe answered from the cache would have restored it by now
    // (the guest's next failed read would fail it again, so count restorations, not states).
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let restored = restorations(&control, "a") - events_before;
    assert_eq!(
        restored,
        0,
        "path a was taken back onto a dead device {restored} times: {}",
        query(&control, "paths").unwrap()
    );
    assert_eq!(path_state(&control, "a"), "failed", "{}", broker.log());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the control socket answered slowly"
    );
    drop(guest);
    broker.stop();
}
