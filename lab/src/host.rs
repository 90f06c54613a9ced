//! Host facts the lab decides on and records beside every result.

use std::fmt;
use std::fs;

use weir_vmm::host::HostVirtualization;

/// How QEMU accelerates a Linux guest on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn qemu_arg(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The accelerator for a Linux guest under QEMU, and the reason, in words for the user.
#[derive(Debug, Clone)]
pub struct AccelChoice {
    pub accel: Accel,
    pub why: String,
}

impl AccelChoice {
    pub fn for_linux_guest(virt: &HostVirtualization) -> Self {
        if virt.linux_boots_under_kvm() {
            AccelChoice {
                accel: Accel::Kvm,
                why: format!("{virt}: QEMU uses -accel kvm"),
            }
        } else {
            AccelChoice {
                accel: Accel::Tcg,
                why: format!("{virt}; Linux guests run under QEMU TCG (software emulation)"),
            }
        }
    }
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "accel {}: {}", self.accel.qemu_arg(), self.why)
    }
}

/// The host's TSC frequency in kHz, when the kernel logged it.
///
/// Several TCG guests started together hang calibrating their TSC against a PIT that the busy
/// host emulates too slowly; `tsc_early_khz=` on the guest command line skips the calibration.
/// TCG's TSC follows the host's, so the host's frequency is the right value.
pub fn host_tsc_khz() -> Option<u64> {
    let from_cpuinfo = || {
        let text = fs::read_to_string("/proc/cpuinfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("cpu MHz"))?;
        let mhz: f64 = line.split_once(':')?.1.trim().parse().ok()?;
        Some((mhz * 1000.0).round() as u64)
    };
    dmesg_tsc_khz().or_else(from_cpuinfo)
}

fn dmesg_tsc_khz() -> Option<u64> {
    let out = std::process::Command::new("dmesg").output().ok()?;
    parse_tsc_mhz_line(&String::from_utf8_lossy(&out.stdout))
}

fn parse_tsc_mhz_line(log: &str) -> Option<u64> {
    // "tsc: Refined TSC clocksource calibration: 2596.135 MHz" beats "tsc: Detected ... MHz".
    let pick = |needle: &str| {
        log.lines()
            .rev()
            .find(|l| l.contains(needle))
            .and_then(|l| {
                let before = l.split(" MHz").next()?;
                let mhz: f64 = before.rsplit(' ').next()?.parse().ok()?;
                Some((mhz * 1000.0).round() as u64)
            })
    };
    pick("Refined TSC clocksource calibration").or_else(|| pick("tsc: Detected"))
}

/// Facts recorded with every result: what ran where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HostFacts {
    pub kernel: String,
    pub cpu: String,
    pub cpus: usize,
    pub hardware_virtualization: bool,
    pub kvm: String,
}

impl HostFacts {
    pub fn collect(virt: &HostVirtualization) -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cpu = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|t| {
                t.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_default();
        HostFacts {
            kernel,
            cpu,
            cpus: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            hardware_virtualization: virt.cpu_has_hw_virt,
            kvm: virt.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_from_kernel_log_prefers_refined_calibration() {
        let log = "[    0.000063] tsc: Detected 2596.136 MHz processor\n\
                   [    1.2] tsc: Refined TSC clocksource calibration: 2596.001 MHz\n";
        assert_eq!(parse_tsc_mhz_line(log), Some(2_596_001));
        let log = "[    0.000063] tsc: Detected 2596.136 MHz processor\n";
        assert_eq!(parse_tsc_mhz_line(log), Some(2_596_136));
        assert_eq!(parse_tsc_mhz_line("nothing here"), None);
    }
}
