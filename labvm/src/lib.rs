//! The lab VM: a Linux "host" (L1) with hardware-virtualization KVM, booted under QEMU TCG
//! with AMD-V and nested paging emulated (`-cpu EPYC,+svm,+npt`), so that `weir vm` can boot
//! Linux guests (L2) on a machine whose own KVM cannot (PVM here; see
//! shared/design/ENVIRONMENT.md).
//!
//! L1 runs Debian's cloud kernel ([`host_kernel`]) with an initramfs holding busybox, `kvm.ko`
//! and `kvm-amd.ko`, `weir` with its libraries, the Linux test guest and the probe
//! ([`initramfs`]). Its `/init` runs one shell command with the output on the serial console
//! and writes `/results` as a tar stream onto a raw results disk that the host unpacks
//! ([`machine`]). Everything in L1 and L2 runs at TCG speed: the lab VM proves function, not
//! speed.

pub mod host_kernel;
pub mod initramfs;
pub mod machine;

use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

pub use host_kernel::HostKernel;
pub use initramfs::LabContents;
pub use machine::{LabRun, LabVmConfig};

#[derive(Debug, Error)]
pub enum LabError {
    #[error("lab VM kernel: {0}")]
    Kernel(String),
    #[error("lab VM image: {0}")]
    Image(String),
    #[error("lab VM: {0}")]
    Qemu(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl LabError {
    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let context = context.into();
        move |source| LabError::Io { context, source }
    }
}

/// What a caller sets for one command in the lab VM.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// The image cache (the lab kernel goes to `lab-host/` in it).
    pub image_root: PathBuf,
    pub qemu: PathBuf,
    pub cpus: u32,
    pub mem_mib: u64,
    pub timeout: Duration,
    pub echo: bool,
    /// Retry once when the run ends in QEMU's known nested double fault.
    pub retry_known_flake: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            image_root: weir_guest_images::ImageStore::from_env().root,
            qemu: PathBuf::from("qemu-system-x86_64"),
            cpus: 2,
            mem_mib: 3072,
            timeout: Duration::from_secs(900),
            echo: false,
            retry_known_flake: true,
        }
    }
}

/// Runs `contents.command` in a fresh lab VM; `/results` lands in `results` (when given).
/// `work` holds the initramfs, the console log and the results disk while it runs.
pub fn run(
    options: &LabOptions,
    contents: &LabContents,
    work: &Path,
    results: Option<&Path>,
    progress: &mut dyn std::io::Write,
) -> Result<LabRun, LabError> {
    std::fs::create_dir_all(work).map_err(LabError::io(format!("create {}", work.display())))?;
    let kernel = HostKernel::ensure(&options.image_root, progress)?;
    let image = initramfs::build(&kernel, contents, work)?;
    let initramfs = work.join("lab-initramfs.cpio.gz");
    std::fs::write(&initramfs, image)
        .map_err(LabError::io(format!("write {}", initramfs.display())))?;
    let config = LabVmConfig {
        qemu: options.qemu.clone(),
        kernel: kernel.vmlinuz.clone(),
        initramfs,
        cpus: options.cpus,
        mem_mib: options.mem_mib,
        results_disk_mib: 512,
        timeout: options.timeout,
        echo: options.echo,
        work_dir: work.to_path_buf(),
    };
    let first = config.run(results)?;
    if let (Some(what), true) = (first.known_flake, options.retry_known_flake) {
        let _ = writeln!(
            progress,
            "lab VM: {what}: a known failure of QEMU's TCG SVM emulation (infrastructure, not \
             weir's; docs/lab.md); retrying once"
        );
        let _ = std::fs::rename(work.join("console.log"), work.join("console.flake.log"));
        return config.run(results);
    }
    Ok(first)
}
