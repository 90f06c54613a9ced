//! What virtualization this host offers.
//!
//! Two facts decide how weir can run a Linux guest here:
//! - whether `/dev/kvm` opens and speaks the stable API, and
//! - whether KVM is backed by hardware virtualization (VT-x/AMD-V: `vmx`/`svm` in the CPU flags)
//!   or by PVM (`kvm_pvm`), which runs guest user mode natively but emulates guest kernel mode
//!   instruction by instruction. An ordinary Linux kernel cannot boot under PVM, so there the
//!   Linux test guests run under QEMU TCG and `weir vm` is exercised with the probe guest.
//!
//! Detection reads the real files and opens the real device; nothing is assumed.

use std::fmt;
use std::fs;
use std::path::Path;

use kvm_ioctls::Kvm;

/// The stable KVM API version every Linux since 2.6.22 reports.
const KVM_STABLE_API_VERSION: i32 = 12;

/// How KVM is implemented on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmFlavour {
    /// `/dev/kvm` backed by VT-x or AMD-V: Linux guests boot under KVM.
    Hardware {
        /// `vmx` (Intel) or `svm` (AMD).
        cpu_flag: &'static str,
    },
    /// `/dev/kvm` served by `kvm_pvm`: guest CPL3 runs natively, guest CPL0 is emulated.
    Pvm,
    /// `/dev/kvm` works, but neither hardware flags nor PVM were recognised.
    Unknown,
    /// `/dev/kvm` is missing or cannot be used.
    Unavailable {
        /// Why, in words a user can act on.
        reason: String,
    },
}

/// The facts about this host's virtualization that weir decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVirtualization {
    /// What backs `/dev/kvm`.
    pub flavour: KvmFlavour,
    /// `vmx` or `svm` present in `/proc/cpuinfo` (independent of whether KVM loaded).
    pub cpu_has_hw_virt: bool,
    /// The `kvm_pvm` module is loaded.
    pub pvm_loaded: bool,
}

impl HostVirtualization {
    /// Probes `/proc/cpuinfo`, `/sys/module` and `/dev/kvm`.
    pub fn detect() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let hw_flag = cpu_virt_flag(&cpuinfo);
        let pvm_loaded = Path::new("/sys/module/kvm_pvm").exists();
        let flavour = match open_kvm() {
            Err(reason) => KvmFlavour::Unavailable { reason },
            // PVM can be loaded beside kvm_intel/kvm_amd; if the CPU has no virtualization
            // flags, /dev/kvm can only be PVM.
            Ok(()) if pvm_loaded && hw_flag.is_none() => KvmFlavour::Pvm,
            Ok(()) => match hw_flag {
                Some(cpu_flag) => KvmFlavour::Hardware { cpu_flag },
                None => KvmFlavour::Unknown,
            },
        };
        HostVirtualization {
            flavour,
            cpu_has_hw_virt: hw_flag.is_some(),
            pvm_loaded,
        }
    }

    /// True when a stock Linux kernel can boot under KVM here.
    pub fn linux_boots_under_kvm(&self) -> bool {
        matches!(self.flavour, KvmFlavour::Hardware { .. })
    }

    /// True when `/dev/kvm` can create VMs at all (hardware or PVM).
    pub fn kvm_usable(&self) -> bool {
        !matches!(self.flavour, KvmFlavour::Unavailable { .. })
    }
}

impl fmt::Display for HostVirtualization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.flavour {
            KvmFlavour::Hardware { cpu_flag } => {
                write!(f, "KVM with hardware virtualization ({cpu_flag})")
            }
            KvmFlavour::Pvm => write!(
                f,
                "KVM via kvm_pvm (PVM, no VT-x/AMD-V): guest user mode runs natively, guest kernel \
                 mode is emulated, so Linux kernels cannot boot under KVM on this host"
            ),
            KvmFlavour::Unknown => write!(
                f,
                "KVM is usable but its backing is unknown (no vmx/svm flag, no kvm_pvm module)"
            ),
            KvmFlavour::Unavailable { reason } => write!(f, "no usable KVM: {reason}"),
        }
    }
}

fn cpu_virt_flag(cpuinfo: &str) -> Option<&'static str> {
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v)?;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

fn open_kvm() -> Result<(), String> {
    if !Path::new("/dev/kvm").exists() {
        return Err(
            "/dev/kvm does not exist (load kvm_intel/kvm_amd, or enable nested \
                    virtualization for this VM)"
                .to_string(),
        );
    }
    let kvm = Kvm::new().map_err(|e| {
        format!("/dev/kvm cannot be opened: {e} (run as root or join the 'kvm' group)")
    })?;
    let version = kvm.get_api_version();
    if version != KVM_STABLE_API_VERSION {
        return Err(format!(
            "/dev/kvm reports API version {version}, expected {KVM_STABLE_API_VERSION}"
        ));
    }
    kvm.create_vm()
        .map_err(|e| format!("/dev/kvm opens but KVM_CREATE_VM fails: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_virtualization_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse2\n";
        let amd = "flags\t\t: fpu svm sse4a\n";
        let none = "flags\t\t: fpu sse2 hypervisor\n";
        assert_eq!(cpu_virt_flag(intel), Some("vmx"));
        assert_eq!(cpu_virt_flag(amd), Some("svm"));
        assert_eq!(cpu_virt_flag(none), None);
        // A substring must not count: "svm_lock" is not "svm".
        assert_eq!(cpu_virt_flag("flags : svm_lock vmxx\n"), None);
    }
}
