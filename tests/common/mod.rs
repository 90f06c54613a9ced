//! Shared setup of the cross-process tests: the guest image and the accelerator, or a clear
//! skip (a failure under WEIR_REQUIRE_KVM=1).

#![allow(dead_code)]

pub mod schema;

use std::path::Path;

use weir_guest_images::{GuestImage, ImageStore};
use weir_lab::host::AccelChoice;
use weir_lab::testenv;
use weir_vmm::host::HostVirtualization;

/// The built Linux test guest and how QEMU should run it, or `None` when the test must skip.
pub fn linux_guest_setup(test: &str) -> Option<(GuestImage, AccelChoice)> {
    if !testenv::can_run(test, testenv::qemu_missing()) {
        return None;
    }
    let image = match ImageStore::from_env().locate() {
        Ok(image) => image,
        Err(e) => {
            testenv::can_run(test, Some(e.to_string()));
            return None;
        }
    };
    let accel = AccelChoice::for_linux_guest(&HostVirtualization::detect());
    eprintln!("{test}: {accel}");
    Some((image, accel))
}

/// The probe guest's ELF, or `None` when the test must skip (no usable KVM; a failure under
/// WEIR_REQUIRE_KVM=1).
pub fn probe_guest_setup(test: &str) -> Option<std::path::PathBuf> {
    use weir_vmm::host::KvmFlavour;
    let missing = match HostVirtualization::detect().flavour {
        KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    };
    if !testenv::can_run(test, missing) {
        return None;
    }
    Some(weir_lab::probe::build().expect("the probe guest builds"))
}

/// A sparse raw disk of `mib` MiB.
pub fn raw_disk(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
    let path = dir.join(name);
    let f = std::fs::File::create(&path).expect("create disk");
    f.set_len(mib << 20).expect("size disk");
    path
}

/// Checksummed random writes over the whole disk (every block read back and verified), then
/// random reads for `read_runtime_s`, both at `iodepth`. The target is added by the runner.
pub fn verify_then_read_job(iodepth: u32, read_runtime_s: u32) -> String {
    format!(
        "[global]\nioengine=io_uring\ndirect=1\nbs=4k\nrandrepeat=1\n\n\
         [randwrite-verify]\nrw=randwrite\niodepth={iodepth}\nverify=crc32c\nverify_fatal=1\ndo_verify=1\n\n\
         [randread]\nstonewall\nrw=randread\niodepth={iodepth}\nruntime={read_runtime_s}\ntime_based=1\n"
    )
}

/// `weir run --no-progress SCENARIO --out OUT`, as a user runs it.
pub fn weir_run(scenario: &Path, out: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["run", "--no-progress"])
        .arg(scenario)
        .arg("--out")
        .arg(out)
        .output()
        .expect("weir runs")
}

/// The same, which must succeed: its terminal output and `results.json`, checked against the
/// results schema.
pub fn weir_run_ok(scenario: &Path, out: &Path) -> (String, serde_json::Value) {
    let o = weir_run(scenario, out);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "weir run failed: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(out.join("results.json")).expect("results.json written");
    let r: serde_json::Value = serde_json::from_str(&text).expect("results.json is JSON");
    let sc = schema::results_schema();
    schema::validate(&r, &sc, &sc, "results").unwrap();
    (stdout, r)
}
