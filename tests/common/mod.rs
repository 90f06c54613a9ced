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
