//! The lab VM's initramfs: busybox, the KVM and virtio modules, `weir` with its shared
//! libraries, the Linux test guest and the probe, the files a run asks for, `/init` and the
//! command. Built per run (the command changes), gzip'd fast.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use flate2::Compression;
use flate2::write::GzEncoder;
use weir_guest_images::{CpioWriter, GuestImage, shared_library_closure};

use crate::LabError;
use crate::host_kernel::HostKernel;

const INIT: &str = include_str!("init.sh");
const BUSYBOX: &str = "/bin/busybox";

/// Where things are inside the lab VM.
pub const GUEST_IMAGE_DIR: &str = "/images/linux";
pub const PROBE_PATH: &str = "/images/weir-probe";
pub const RESULTS_DIR: &str = "/results";

/// What goes into one run's initramfs.
#[derive(Debug, Clone, Default)]
pub struct LabContents {
    /// The `weir` binary (stripped into the image when `strip` is there).
    pub weir: Option<PathBuf>,
    pub guest_image: Option<GuestImage>,
    pub probe: Option<PathBuf>,
    /// `(host path, path inside)`.
    pub files: Vec<(PathBuf, String)>,
    /// QEMU with its libraries and the firmware `-M microvm` and q35 load, for comparisons
    /// inside (`weir bench vm --guest linux`).
    pub qemu: bool,
    /// The shell script `/init` runs.
    pub command: String,
}

/// The QEMU binary and the firmware files it loads (SeaBIOS, qboot, the PVH and linuxboot
/// option ROMs).
const QEMU_FILES: [&str; 8] = [
    "/usr/share/seabios/bios-256k.bin",
    "/usr/share/seabios/bios-microvm.bin",
    "/usr/share/qemu/pvh.bin",
    "/usr/share/qemu/linuxboot_dma.bin",
    "/usr/share/qemu/linuxboot.bin",
    "/usr/share/qemu/kvmvapic.bin",
    "/usr/share/qemu/qboot.rom",
    "/usr/share/seabios/vgabios-stdvga.bin",
];
const QEMU: &str = "/usr/bin/qemu-system-x86_64";

struct Tree {
    w: CpioWriter,
    dirs: BTreeSet<String>,
}

impl Tree {
    fn dir(&mut self, dir: &str) {
        let mut acc = String::new();
        for part in dir.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if self.dirs.insert(acc.clone()) {
                self.w.dir(&acc, 0o755);
            }
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        let path = path.trim_start_matches('/');
        if let Some(parent) = Path::new(path).parent() {
            self.dir(&parent.to_string_lossy());
        }
        self.w.file(path, mode, data);
    }

    fn copy(&mut self, host: &Path, inside: &str, mode: u32) -> Result<(), LabError> {
        let data = fs::read(host).map_err(LabError::io(format!("read {}", host.display())))?;
        self.file(inside, mode, &data);
        Ok(())
    }

    /// A dynamically linked program and every library it loads, at their host paths.
    fn program(
        &mut self,
        host: &Path,
        inside: &str,
        libs_seen: &mut BTreeSet<String>,
    ) -> Result<(), LabError> {
        self.copy(host, inside, 0o755)?;
        let libs = shared_library_closure(&host.to_string_lossy())
            .map_err(|e| LabError::Image(format!("libraries of {}: {e}", host.display())))?;
        for lib in libs {
            if libs_seen.insert(lib.clone()) {
                self.copy(Path::new(&lib), &lib, 0o755)?;
            }
        }
        Ok(())
    }
}

/// A copy of `binary` without its debug sections (a 70 MB release `weir` becomes ~8 MB), or
/// the binary itself when `strip` is missing.
fn stripped(binary: &Path, work: &Path) -> PathBuf {
    let out = work.join("weir.stripped");
    let ok = Command::new("strip")
        .arg("-o")
        .arg(&out)
        .arg(binary)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok { out } else { binary.to_path_buf() }
}

/// The gzip'd newc archive; `work` is a scratch directory.
pub fn build(
    kernel: &HostKernel,
    contents: &LabContents,
    work: &Path,
) -> Result<Vec<u8>, LabError> {
    let mut t = Tree {
        w: CpioWriter::new(),
        dirs: BTreeSet::new(),
    };
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "results",
        "lab/bin",
        "lib/modules",
    ] {
        t.dir(d);
    }
    // The kernel opens /dev/console before /init mounts devtmpfs.
    t.w.char_device("dev/console", 0o600, 5, 1);
    t.file("init", 0o755, INIT.as_bytes());
    if !Path::new(BUSYBOX).is_file() {
        return Err(LabError::Image(format!(
            "{BUSYBOX} is missing; it comes with Debian package 'busybox-static'"
        )));
    }
    t.copy(Path::new(BUSYBOX), "bin/busybox", 0o755)?;
    t.w.symlink("bin/sh", "busybox");
    for m in &kernel.manifest.load_order {
        t.copy(&kernel.module(m), &format!("lib/modules/{m}.ko"), 0o644)?;
    }
    t.file(
        "lab/modules",
        0o644,
        kernel.manifest.load_order.join("\n").as_bytes(),
    );

    let mut env = String::from("export HOME=/tmp\n");
    env.push_str(&format!("export WEIR_LAB_RESULTS={RESULTS_DIR}\n"));
    let mut libs = BTreeSet::new();
    if let Some(weir) = &contents.weir {
        let bin = stripped(weir, work);
        t.program(&bin, "lab/bin/weir", &mut libs)?;
    }
    if let Some(image) = &contents.guest_image {
        t.copy(&image.bzimage, &format!("{GUEST_IMAGE_DIR}/bzImage"), 0o644)?;
        t.copy(&image.vmlinux, &format!("{GUEST_IMAGE_DIR}/vmlinux"), 0o644)?;
        t.copy(
            &image.initramfs,
            &format!("{GUEST_IMAGE_DIR}/initramfs.cpio.gz"),
            0o644,
        )?;
        t.copy(
            &image.dir.join("manifest.json"),
            &format!("{GUEST_IMAGE_DIR}/manifest.json"),
            0o644,
        )?;
        env.push_str(&format!(
            "export {}={GUEST_IMAGE_DIR}\n",
            weir_guest_images::GUEST_IMAGE_ENV
        ));
    }
    if let Some(probe) = &contents.probe {
        t.copy(probe, PROBE_PATH, 0o755)?;
        env.push_str(&format!("export WEIR_PROBE_KERNEL={PROBE_PATH}\n"));
    }
    if contents.qemu {
        t.program(Path::new(QEMU), QEMU, &mut libs)?;
        for f in QEMU_FILES {
            // Resolve symlinks on the host: the firmware's bytes go in under the QEMU path.
            if Path::new(f).exists() {
                t.copy(Path::new(f), f, 0o644)?;
            }
        }
        // QEMU's own data directory, where Debian links the SeaBIOS images from.
        for f in ["bios-256k.bin", "bios-microvm.bin"] {
            let src = Path::new("/usr/share/seabios").join(f);
            if src.exists() {
                t.copy(&src, &format!("/usr/share/qemu/{f}"), 0o644)?;
            }
        }
    }
    for (host, inside) in &contents.files {
        let mode = fs::metadata(host)
            .map(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o777
            })
            .map_err(LabError::io(format!("stat {}", host.display())))?;
        t.copy(host, inside, mode)?;
    }
    t.file("lab/env", 0o644, env.as_bytes());
    t.file("lab/cmd.sh", 0o755, contents.command.as_bytes());

    let cpio = t.w.finish();
    let mut gz = GzEncoder::new(Vec::with_capacity(cpio.len() / 2), Compression::fast());
    gz.write_all(&cpio)
        .map_err(LabError::io("compress the initramfs"))?;
    gz.finish().map_err(LabError::io("compress the initramfs"))
}
