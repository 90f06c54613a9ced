//! The lab VM's kernel: Debian's cloud kernel and the modules the L1 host loads (KVM with
//! AMD-V, virtio-blk over PCI for the results disk), fetched once with `apt-get download` and
//! kept in the image cache beside the Linux test guest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::LabError;

/// The Debian package whose dependency names the kernel (bookworm's cloud flavour: small, with
/// `kvm.ko` and `kvm-amd.ko` as modules and the 8250 console built in).
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";
/// A kernel `.deb` to use instead of fetching one (a machine without the Debian mirror).
pub const KERNEL_DEB_ENV: &str = "WEIR_LAB_KERNEL_DEB";

/// The modules `/init` needs; their dependencies come along, and the load order is read from
/// the modules themselves (`modinfo -F depends`): it differs between kernel builds.
pub const MODULES: [&str; 9] = [
    "irqbypass",
    "kvm",
    "kvm-amd",
    "virtio",
    "virtio_ring",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
];

const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostKernelManifest {
    /// The `.deb` it came from (file name).
    pub deb: String,
    /// `uname -r` of the kernel.
    pub release: String,
    /// Every module to load, dependencies first.
    pub load_order: Vec<String>,
}

/// A fetched L1 kernel: `vmlinuz` and `modules/<name>.ko`.
#[derive(Debug, Clone)]
pub struct HostKernel {
    pub dir: PathBuf,
    pub vmlinuz: PathBuf,
    pub manifest: HostKernelManifest,
}

impl HostKernel {
    fn open(dir: &Path) -> Option<Self> {
        let manifest: HostKernelManifest =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).ok()?).ok()?;
        let kernel = HostKernel {
            dir: dir.to_path_buf(),
            vmlinuz: dir.join("vmlinuz"),
            manifest,
        };
        let complete = kernel.vmlinuz.is_file()
            && !kernel.manifest.load_order.is_empty()
            && kernel
                .manifest
                .load_order
                .iter()
                .all(|m| kernel.module(m).is_file());
        complete.then_some(kernel)
    }

    pub fn module(&self, name: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{name}.ko"))
    }

    /// The cached kernel, fetching it first when missing. `root` is the image cache
    /// (`weir image path`'s parent); the kernel goes to `root/lab-host/<package>`.
    pub fn ensure(root: &Path, progress: &mut dyn std::io::Write) -> Result<Self, LabError> {
        let base = root.join("lab-host");
        if let Some(deb) = std::env::var_os(KERNEL_DEB_ENV) {
            let deb = PathBuf::from(deb);
            let name = file_stem(&deb);
            let dir = base.join(&name);
            if let Some(k) = HostKernel::open(&dir) {
                return Ok(k);
            }
            return unpack(&deb, &dir, progress);
        }
        let package = match resolve_package() {
            Ok(p) => p,
            Err(e) => {
                // Offline: any kernel fetched before will do.
                if let Some(k) = newest_cached(&base) {
                    let _ = writeln!(
                        progress,
                        "lab VM: cannot ask apt which kernel is current ({e}); using {}",
                        k.dir.display()
                    );
                    return Ok(k);
                }
                return Err(e);
            }
        };
        let dir = base.join(&package);
        if let Some(k) = HostKernel::open(&dir) {
            return Ok(k);
        }
        let _ = writeln!(
            progress,
            "lab VM: fetching {package} (apt-get download) into {}",
            base.display()
        );
        let download = base.join(format!(".download-{}", std::process::id()));
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)
            .map_err(LabError::io(format!("create {}", download.display())))?;
        let out = Command::new("apt-get")
            .args(["download", &package])
            .current_dir(&download)
            .output()
            .map_err(LabError::io("run apt-get download"))?;
        if !out.status.success() {
            let _ = fs::remove_dir_all(&download);
            return Err(LabError::Kernel(format!(
                "apt-get download {package} failed: {}; or set {KERNEL_DEB_ENV} to a kernel .deb",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let deb = fs::read_dir(&download)
            .map_err(LabError::io(format!("list {}", download.display())))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .ok_or_else(|| LabError::Kernel(format!("apt-get download {package} left no .deb")))?;
        let kernel = unpack(&deb, &dir, progress);
        let _ = fs::remove_dir_all(&download);
        kernel
    }
}

fn file_stem(p: &Path) -> String {
    p.file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_else(|| "kernel".into())
}

fn newest_cached(base: &Path) -> Option<HostKernel> {
    let mut found: Vec<(std::time::SystemTime, HostKernel)> = fs::read_dir(base)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let k = HostKernel::open(&e.path())?;
            Some((e.metadata().ok()?.modified().ok()?, k))
        })
        .collect();
    found.sort_by_key(|(t, _)| *t);
    found.pop().map(|(_, k)| k)
}

/// `linux-image-6.1.0-47-cloud-amd64` from `apt-cache depends linux-image-cloud-amd64`.
fn resolve_package() -> Result<String, LabError> {
    let out = Command::new("apt-cache")
        .args(["depends", KERNEL_META_PACKAGE])
        .output()
        .map_err(LabError::io("run apt-cache depends"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_depends(&text).ok_or_else(|| {
        LabError::Kernel(format!(
            "apt-cache knows no kernel behind {KERNEL_META_PACKAGE} (run apt-get update, or set \
             {KERNEL_DEB_ENV} to a kernel .deb)"
        ))
    })
}

fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|p| p.trim().trim_matches(|c| c == '<' || c == '>').to_string())
        .find(|p| p.starts_with("linux-image-") && p != KERNEL_META_PACKAGE)
}

/// Unpacks `deb` and keeps the kernel and [`MODULES`] (decompressed) in `dir`.
fn unpack(
    deb: &Path,
    dir: &Path,
    progress: &mut dyn std::io::Write,
) -> Result<HostKernel, LabError> {
    let tmp = dir.with_file_name(format!(".unpack-{}-{}", file_stem(dir), std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let tree = tmp.join("tree");
    fs::create_dir_all(tmp.join("modules"))
        .map_err(LabError::io(format!("create {}", tmp.display())))?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tree)
        .output()
        .map_err(LabError::io("run dpkg-deb -x"))?;
    if !out.status.success() {
        return Err(LabError::Kernel(format!(
            "dpkg-deb -x {} failed: {}",
            deb.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let boot = tree.join("boot");
    let vmlinuz = fs::read_dir(&boot)
        .map_err(LabError::io(format!("list {}", boot.display())))?
        .flatten()
        .map(|e| e.path())
        .find(|p| file_stem(p).starts_with("vmlinuz-") || p.to_string_lossy().contains("/vmlinuz-"))
        .ok_or_else(|| LabError::Kernel(format!("{} holds no boot/vmlinuz-*", deb.display())))?;
    let release = vmlinuz
        .file_name()
        .map(|n| {
            n.to_string_lossy()
                .trim_start_matches("vmlinuz-")
                .to_string()
        })
        .unwrap_or_default();
    fs::copy(&vmlinuz, tmp.join("vmlinuz")).map_err(LabError::io("copy vmlinuz"))?;
    let mut all = Vec::new();
    walk(&tree.join("lib/modules"), &mut all);
    walk(&tree.join("usr/lib/modules"), &mut all);
    let mut load_order: Vec<String> = Vec::new();
    for m in MODULES {
        add_with_dependencies(m, &all, &tmp.join("modules"), deb, &mut load_order, 0)?;
    }
    let _ = fs::remove_dir_all(&tree);
    let manifest = HostKernelManifest {
        deb: deb
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default(),
        release,
        load_order,
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| LabError::Kernel(e.to_string()))?;
    fs::write(tmp.join(MANIFEST), json).map_err(LabError::io("write the manifest"))?;
    let _ = fs::remove_dir_all(dir);
    fs::rename(&tmp, dir).map_err(LabError::io(format!("rename to {}", dir.display())))?;
    let _ = writeln!(
        progress,
        "lab VM: kernel {} ready in {}",
        manifest.release,
        dir.display()
    );
    HostKernel::open(dir).ok_or_else(|| LabError::Kernel(format!("{} incomplete", dir.display())))
}

/// Module file names use `-` or `_` interchangeably with what `depends` says.
fn same_module(file: &Path, name: &str) -> bool {
    let f = file
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = f
        .trim_end_matches(".xz")
        .trim_end_matches(".zst")
        .trim_end_matches(".ko");
    f.contains(".ko") && stem.replace('-', "_") == name.replace('-', "_")
}

/// Copies module `name` (decompressed) after its dependencies, appending each to `order`.
fn add_with_dependencies(
    name: &str,
    all: &[PathBuf],
    out: &Path,
    deb: &Path,
    order: &mut Vec<String>,
    depth: u32,
) -> Result<(), LabError> {
    if order
        .iter()
        .any(|m| m.replace('-', "_") == name.replace('-', "_"))
    {
        return Ok(());
    }
    if depth > 16 {
        return Err(LabError::Kernel(format!(
            "module dependencies loop at {name}"
        )));
    }
    let Some(src) = all.iter().find(|p| same_module(p, name)) else {
        return Err(LabError::Kernel(format!(
            "{} has no module {name} (the lab VM needs KVM and virtio-blk as modules)",
            deb.display()
        )));
    };
    let dst = out.join(format!("{name}.ko"));
    let text = src.to_string_lossy();
    if text.ends_with(".xz") || text.ends_with(".zst") {
        let tool = if text.ends_with(".xz") { "xz" } else { "zstd" };
        let data = Command::new(tool)
            .arg("-dc")
            .arg(src)
            .output()
            .map_err(LabError::io(format!("run {tool} -dc")))?;
        fs::write(&dst, data.stdout).map_err(LabError::io(format!("write {}", dst.display())))?;
    } else {
        fs::copy(src, &dst).map_err(LabError::io(format!("copy {}", src.display())))?;
    }
    let depends = Command::new("modinfo")
        .args(["-F", "depends"])
        .arg(&dst)
        .output()
        .map_err(LabError::io("run modinfo (package kmod)"))?;
    let depends = String::from_utf8_lossy(&depends.stdout).to_string();
    for dep in depends.trim().split(',').filter(|d| !d.is_empty()) {
        add_with_dependencies(dep.trim(), all, out, deb, order, depth + 1)?;
    }
    order.push(name.to_string());
    Ok(())
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_package_comes_from_the_meta_packages_depends() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-47-cloud-amd64\n";
        assert_eq!(
            parse_depends(text).as_deref(),
            Some("linux-image-6.1.0-47-cloud-amd64")
        );
        assert_eq!(parse_depends("linux-image-cloud-amd64\n"), None);
    }
}
