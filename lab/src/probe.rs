//! The probe guest: building it, running it under `weir vm` (or QEMU), reading its JSON.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;

pub const JSON_BEGIN: &str = "<<<WEIR:PROBE-JSON:BEGIN>>>";
pub const JSON_END: &str = "<<<WEIR:PROBE-JSON:END>>>";
pub const FATAL: &str = "<<<WEIR:PROBE-FATAL>>>";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot build the probe guest ({0}); it needs cargo and a C linker (cc)")]
    Build(String),
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the probe reported no JSON ({status}); serial:\n{serial}\nVMM:\n{vmm}")]
    NoReport {
        status: String,
        serial: String,
        vmm: String,
    },
    #[error("the probe's JSON does not parse: {0}")]
    Parse(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

/// Where the probe's sources are.
pub fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-images/probe")
}

/// A built probe ELF to use as it is (inside the lab VM there is no cargo to build one).
pub const PROBE_KERNEL_ENV: &str = "WEIR_PROBE_KERNEL";

/// Builds the probe (release) and returns its ELF, or the one `WEIR_PROBE_KERNEL` names.
pub fn build() -> Result<PathBuf, ProbeError> {
    if let Some(elf) = std::env::var_os(PROBE_KERNEL_ENV) {
        let elf = PathBuf::from(elf);
        return if elf.is_file() {
            Ok(elf)
        } else {
            Err(ProbeError::Build(format!(
                "{PROBE_KERNEL_ENV}={} is not a file",
                elf.display()
            )))
        };
    }
    let dir = source_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        // The workspace's own settings must not leak into the probe's build.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .current_dir(&dir)
        .output()
        .map_err(|e| ProbeError::Build(e.to_string()))?;
    if !out.status.success() {
        return Err(ProbeError::Build(
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    let elf = dir.join("target/release/weir-probe");
    if !elf.exists() {
        return Err(ProbeError::Build(format!(
            "{} missing after the build",
            elf.display()
        )));
    }
    Ok(elf)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct LatencyUs {
    pub mean: f64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProbePhase {
    pub name: String,
    pub bs: u64,
    pub iodepth: u32,
    pub ios: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub iops: f64,
    pub mib_s: f64,
    pub errors: u64,
    pub verify_errors: u64,
    /// Used entries for requests not in flight: answered twice, or never posted (older
    /// probes do not report it).
    #[serde(default)]
    pub unexpected: u64,
    pub lat_us: LatencyUs,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProbeDevice {
    pub base: u64,
    pub irq: u32,
    pub capacity_sectors: u64,
    pub queue_size: u32,
    pub event_idx: bool,
    pub read_only: bool,
    pub seg_max: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct HostileResult {
    pub class: String,
    pub expected: u8,
    pub status: u8,
    pub ok: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ProbeReport {
    pub probe: String,
    pub boot: String,
    pub mode: String,
    pub device: ProbeDevice,
    pub phases: Vec<ProbePhase>,
    pub hostile: Vec<HostileResult>,
    pub interrupts: u64,
    /// Times the vCPU halted waiting for an interrupt (`mode=halt`; older probes: 0).
    #[serde(default)]
    pub halts: u64,
    pub notifies: u64,
    /// Empty kicks sent by `probe.kick_flood_ms` (a hostile neighbour).
    #[serde(default)]
    pub flood_kicks: u64,
    pub errors: u64,
    pub verify_errors: u64,
}

impl ProbeReport {
    pub fn phase(&self, name: &str) -> Option<&ProbePhase> {
        self.phases.iter().find(|p| p.name == name)
    }

    /// The report between the markers of a serial transcript.
    pub fn from_serial(serial: &str) -> Option<Result<Self, ProbeError>> {
        let start = serial.find(JSON_BEGIN)? + JSON_BEGIN.len();
        let end = serial[start..].find(JSON_END)? + start;
        Some(
            serde_json::from_str(serial[start..end].trim())
                .map_err(|e| ProbeError::Parse(format!("{e}: {}", &serial[start..end]))),
        )
    }
}

/// A `weir vm` running the probe.
pub struct ProbeVm {
    pub child: Child,
    pub serial: PathBuf,
    pub vmm_log: PathBuf,
    pub started: Instant,
}

/// A guest still running when its handle goes (a test that panicked, a run cut short) is
/// killed: a probe polling a vanished broker would otherwise spin on a core for ever.
impl Drop for ProbeVm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished probe run left.
#[derive(Debug)]
pub struct ProbeRun {
    pub report: ProbeReport,
    pub exit_code: Option<i32>,
    pub serial: String,
    pub vmm_log: String,
    pub wall: Duration,
}

impl ProbeVm {
    /// Starts `weir vm` on `probe` with `disks` (`--disk` values) and the probe options.
    pub fn spawn(
        weir: &Path,
        probe: &Path,
        disks: &[String],
        options: &str,
        dir: &Path,
        name: &str,
    ) -> Result<Self, ProbeError> {
        Self::spawn_with(weir, probe, disks, options, dir, name, &[])
    }

    /// As [`ProbeVm::spawn`], with more `weir vm` arguments (`--boot pvh`, `--vcpus 2`).
    pub fn spawn_with(
        weir: &Path,
        probe: &Path,
        disks: &[String],
        options: &str,
        dir: &Path,
        name: &str,
        extra: &[&str],
    ) -> Result<Self, ProbeError> {
        let serial = dir.join(format!("{name}.serial"));
        let vmm_log = dir.join(format!("{name}.vmm.log"));
        let log = std::fs::File::create(&vmm_log).map_err(|source| ProbeError::Spawn {
            what: vmm_log.display().to_string(),
            source,
        })?;
        let mut cmd = Command::new(weir);
        cmd.arg("vm")
            .arg("--kernel")
            .arg(probe)
            .args(["--mem", "64M", "--cmdline", options, "--serial"])
            .arg(&serial);
        for d in disks {
            cmd.arg("--disk").arg(d);
        }
        cmd.args(extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ProbeError::Spawn {
                what: format!("{} vm", weir.display()),
                source,
            })?;
        Ok(ProbeVm {
            child,
            serial,
            vmm_log,
            started: Instant::now(),
        })
    }

    /// Waits for the guest to end (at most `limit`) and reads its report.
    pub fn wait(mut self, limit: Duration) -> Result<ProbeRun, ProbeError> {
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break s;
            }
            if self.started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(ProbeError::Timeout(limit));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let wall = self.started.elapsed();
        let serial = std::fs::read_to_string(&self.serial).unwrap_or_default();
        let vmm_log = std::fs::read_to_string(&self.vmm_log).unwrap_or_default();
        match ProbeReport::from_serial(&serial) {
            Some(Ok(report)) => Ok(ProbeRun {
                report,
                exit_code: status.code(),
                serial,
                vmm_log,
                wall,
            }),
            Some(Err(e)) => Err(e),
            None => Err(ProbeError::NoReport {
                status: format!("{status}"),
                serial,
                vmm: vmm_log,
            }),
        }
    }
}
