//! Boots the Linux test guest under `qemu-system-x86_64` (or `weir vm`) and collects its fio
//! result.
//!
//! QEMU: q35 machine, the image's bzImage and initramfs (plus an appended archive holding the
//! fio job), the serial console captured to a file, `-no-reboot` so the guest's power-off or
//! reboot ends QEMU. KVM when the host has hardware virtualization, TCG otherwise
//! ([`AccelChoice`]). `weir vm` ([`Vmm::Weir`]): the image's vmlinux through its PVH entry,
//! the same initrd and console file, virtio-mmio disks; the guest ends with an i8042 reset.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use thiserror::Error;
use weir_guest_images::{GuestImage, job_initrd};

use crate::fio::{FioParseError, FioReport};
use crate::host::{Accel, AccelChoice, host_tsc_khz};
use crate::serial::{GuestTranscript, tail};

/// How many serial-log lines an error shows.
const TAIL_LINES: usize = 30;
/// Slack the host gives the guest beyond the guest's own fio watchdog before killing QEMU.
const HOST_TIMEOUT_SLACK: Duration = Duration::from_secs(60);
/// How much longer the host waits than the VMM's own timeout (`weir vm --timeout`) before it
/// kills the VMM: time for `weir vm` to end by itself and report where each vCPU was.
const VMM_REPORT_GRACE: Duration = Duration::from_secs(15);

pub const QEMU_BINARY: &str = "qemu-system-x86_64";

#[derive(Debug, Error)]
pub enum GuestRunError {
    #[error("cannot start {QEMU_BINARY}: {0} (install it: scripts/install-deps.sh)")]
    Spawn(#[source] std::io::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "guest '{guest}' did not finish within {timeout:?}; its VMM was killed. Serial log tail:\n{tail}"
    )]
    Timeout {
        guest: String,
        timeout: Duration,
        tail: String,
    },
    #[error("the VMM of guest '{guest}' failed ({status}): {stderr}\nSerial log tail:\n{tail}")]
    Qemu {
        guest: String,
        status: String,
        stderr: String,
        tail: String,
    },
    #[error("guest '{guest}' could not run fio: {message}")]
    Guest { guest: String, message: String },
    #[error("fio failed in guest '{guest}' (exit {exit}): {message}")]
    FioFailed {
        guest: String,
        exit: i32,
        message: String,
        /// fio's report, when it still produced one (e.g. a verify error).
        report: Option<Box<FioReport>>,
    },
    #[error("guest '{guest}' printed no usable fio result: {reason}. Serial log tail:\n{tail}")]
    MalformedOutput {
        guest: String,
        reason: String,
        tail: String,
    },
}

/// How often QEMU tries a vhost-user socket again after its backend went away.
pub const VHOST_RECONNECT_MS: u32 = 20;

/// A disk the guest sees, in the order given (`/dev/vda`, `/dev/vdb`, …).
#[derive(Debug, Clone)]
pub enum GuestDisk {
    /// A raw file through QEMU's own virtio-blk-pci (`aio=threads`: io_uring and native stalled
    /// under TCG at QD32 in some runs here).
    RawFile { path: PathBuf, serial: String },
    /// A vhost-user-blk socket served by `weir broker` (or any vhost-user-blk backend). Guest
    /// RAM becomes a shared memfd so the backend can map it.
    VhostUser { socket: PathBuf, queues: u16 },
}

/// Which VMM boots the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vmm {
    Qemu,
    /// `weir vm` from this `weir` binary (needs hardware-virtualization KVM).
    Weir(PathBuf),
}

/// One Linux guest to boot, with the fio job it runs.
#[derive(Debug, Clone)]
pub struct LinuxGuestSpec {
    pub name: String,
    pub vmm: Vmm,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub fio_job: String,
    pub disks: Vec<GuestDisk>,
    pub memory_mib: u32,
    pub vcpus: u32,
    /// The guest's own watchdog: fio is stopped after this long.
    pub fio_timeout: Duration,
    pub accel: AccelChoice,
    /// Where the serial log and the per-run initrd go.
    pub work_dir: PathBuf,
}

impl LinuxGuestSpec {
    pub fn new(
        name: &str,
        image: &GuestImage,
        fio_job: &str,
        accel: AccelChoice,
        work_dir: &Path,
    ) -> Self {
        LinuxGuestSpec {
            name: name.to_string(),
            vmm: Vmm::Qemu,
            kernel: image.bzimage.clone(),
            initramfs: image.initramfs.clone(),
            fio_job: fio_job.to_string(),
            disks: Vec::new(),
            memory_mib: 512,
            vcpus: 1,
            fio_timeout: Duration::from_secs(600),
            accel,
            work_dir: work_dir.to_path_buf(),
        }
    }

    pub fn serial_log(&self) -> PathBuf {
        self.work_dir.join(format!("{}.serial.log", self.name))
    }

    fn initrd_path(&self) -> PathBuf {
        self.work_dir.join(format!("{}.initrd", self.name))
    }

    fn cmdline(&self) -> String {
        let mut c = String::from("console=ttyS0 panic=-1 quiet loglevel=4");
        if let Some(khz) = host_tsc_khz() {
            c.push_str(&format!(" tsc_early_khz={khz}"));
        }
        c.push_str(&format!(
            " weir.timeout={}",
            self.fio_timeout.as_secs().max(1)
        ));
        c
    }

    /// Boots under `weir vm` (`weir` is the binary) with the image's vmlinux: no decompression,
    /// the PVH entry.
    pub fn under_weir_vm(mut self, weir: &Path, image: &GuestImage) -> Self {
        self.vmm = Vmm::Weir(weir.to_path_buf());
        self.kernel = image.vmlinux.clone();
        self
    }

    /// The full `weir vm` command line (after the binary).
    pub fn weir_vm_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["vm".into()];
        let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
        push(&["--kernel", &self.kernel.to_string_lossy()]);
        push(&["--initrd", &self.initrd_path().to_string_lossy()]);
        // No ACPI under weir vm: the guest's /init ends it with an i8042 reset (reboot=k); the
        // i8042 driver's port probing would only cost time.
        push(&[
            "--cmdline",
            &format!("{} reboot=k i8042.noaux i8042.nokbd", self.cmdline()),
        ]);
        push(&["--vcpus", &self.vcpus.to_string()]);
        push(&["--mem", &format!("{}M", self.memory_mib)]);
        push(&["--serial", &self.serial_log().to_string_lossy()]);
        push(&[
            "--timeout",
            &(self.fio_timeout + HOST_TIMEOUT_SLACK)
                .as_secs()
                .to_string(),
        ]);
        for disk in &self.disks {
            match disk {
                GuestDisk::RawFile { path, .. } => {
                    push(&["--disk", &format!("path={}", path.display())]);
                }
                GuestDisk::VhostUser { socket, queues } => {
                    push(&[
                        "--disk",
                        &format!("socket={},queues={queues}", socket.display()),
                    ]);
                }
            }
        }
        a
    }

    /// The full QEMU command line.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &[&str]| a.extend(s.iter().map(|x| x.to_string()));
        push(&["-name", &format!("weir-{}", self.name)]);
        let vhost_user = self
            .disks
            .iter()
            .any(|d| matches!(d, GuestDisk::VhostUser { .. }));
        if vhost_user {
            push(&[
                "-object",
                &format!(
                    "memory-backend-memfd,id=mem,size={}M,share=on",
                    self.memory_mib
                ),
            ]);
            push(&["-M", "q35,memory-backend=mem"]);
        } else {
            push(&["-M", "q35"]);
        }
        push(&["-accel", self.accel.accel.qemu_arg()]);
        push(&[
            "-cpu",
            if self.accel.accel == Accel::Kvm {
                "host"
            } else {
                "max"
            },
        ]);
        push(&[
            "-smp",
            &self.vcpus.to_string(),
            "-m",
            &self.memory_mib.to_string(),
        ]);
        push(&[
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ]);
        push(&["-serial", &format!("file:{}", self.serial_log().display())]);
        push(&["-kernel", &self.kernel.to_string_lossy()]);
        push(&["-initrd", &self.initrd_path().to_string_lossy()]);
        push(&["-append", &self.cmdline()]);
        for (i, disk) in self.disks.iter().enumerate() {
            match disk {
                GuestDisk::RawFile { path, serial } => {
                    push(&[
                        "-drive",
                        &format!(
                            "file={},format=raw,if=none,id=d{i},cache=none,aio=threads",
                            path.display()
                        ),
                    ]);
                    push(&[
                        "-device",
                        &format!("virtio-blk-pci,drive=d{i},serial={serial}"),
                    ]);
                }
                GuestDisk::VhostUser { socket, queues } => {
                    push(&[
                        "-chardev",
                        // reconnect-ms: when the broker dies (or is replaced) QEMU connects
                        // again by itself and hands the new one the inflight region, so the
                        // guest sees a stall, not an error.
                        &format!(
                            "socket,id=vu{i},path={},reconnect-ms={VHOST_RECONNECT_MS}",
                            socket.display()
                        ),
                    ]);
                    push(&[
                        "-device",
                        &format!("vhost-user-blk-pci,chardev=vu{i},num-queues={queues}"),
                    ]);
                }
            }
        }
        a
    }

    /// Starts QEMU; [`RunningGuest::wait`] collects the result.
    pub fn spawn(&self) -> Result<RunningGuest, GuestRunError> {
        fs::create_dir_all(&self.work_dir).map_err(|source| GuestRunError::Io {
            context: format!("create {}", self.work_dir.display()),
            source,
        })?;
        let base = fs::read(&self.initramfs).map_err(|source| GuestRunError::Io {
            context: format!("read initramfs {}", self.initramfs.display()),
            source,
        })?;
        let initrd = job_initrd(&base, &self.fio_job).map_err(|source| GuestRunError::Io {
            context: "build job initrd".into(),
            source,
        })?;
        fs::write(self.initrd_path(), initrd).map_err(|source| GuestRunError::Io {
            context: format!("write {}", self.initrd_path().display()),
            source,
        })?;
        let _ = fs::remove_file(self.serial_log());
        let stderr_path = self.work_dir.join(format!(
            "{}.{}.stderr",
            self.name,
            if self.vmm == Vmm::Qemu {
                "qemu"
            } else {
                "weir-vm"
            }
        ));
        let stderr = fs::File::create(&stderr_path).map_err(|source| GuestRunError::Io {
            context: format!("create {}", stderr_path.display()),
            source,
        })?;
        let (program, args) = match &self.vmm {
            Vmm::Qemu => (PathBuf::from(QEMU_BINARY), self.qemu_args()),
            Vmm::Weir(weir) => (weir.clone(), self.weir_vm_args()),
        };
        log::info!(
            "starting guest {}: {} {}",
            self.name,
            program.display(),
            args.join(" ")
        );
        let child = Command::new(&program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(GuestRunError::Spawn)?;
        Ok(RunningGuest {
            spec: self.clone(),
            child: Some(child),
            started: Instant::now(),
            stderr_path,
        })
    }

    /// Boots the guest, waits for it, and returns its fio result.
    pub fn run(&self) -> Result<GuestRun, GuestRunError> {
        self.spawn()?.wait()
    }
}

/// A guest whose QEMU is running. Dropping it kills QEMU: no stray processes.
#[derive(Debug)]
pub struct RunningGuest {
    spec: LinuxGuestSpec,
    child: Option<Child>,
    started: Instant,
    stderr_path: PathBuf,
}

/// A guest run that ended with a fio report.
#[derive(Debug, Clone)]
pub struct GuestRun {
    pub report: FioReport,
    pub transcript: GuestTranscript,
    pub serial_log: PathBuf,
    pub wall_time: Duration,
}

impl RunningGuest {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn wait(mut self) -> Result<GuestRun, GuestRunError> {
        let timeout = self.spec.fio_timeout + HOST_TIMEOUT_SLACK + VMM_REPORT_GRACE;
        let name = self.spec.name.clone();
        let mut child = self.child.take().ok_or_else(|| GuestRunError::Io {
            context: "guest already collected".into(),
            source: std::io::Error::other("no child"),
        })?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if self.started.elapsed() > timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(GuestRunError::Timeout {
                        guest: name,
                        timeout,
                        tail: tail(&self.serial_text(), TAIL_LINES),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(source) => {
                    return Err(GuestRunError::Io {
                        context: format!("wait for QEMU of guest {name}"),
                        source,
                    });
                }
            }
        };
        let wall_time = self.started.elapsed();
        let log = self.serial_text();
        let _ = fs::remove_file(self.spec.initrd_path());
        if !status.success() {
            return Err(GuestRunError::Qemu {
                guest: name,
                status: status.to_string(),
                stderr: fs::read_to_string(&self.stderr_path)
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
                tail: tail(&log, TAIL_LINES),
            });
        }
        let report = interpret(&name, &log)?;
        Ok(GuestRun {
            report: report.0,
            transcript: report.1,
            serial_log: self.spec.serial_log(),
            wall_time,
        })
    }

    fn serial_text(&self) -> String {
        fs::read(self.spec.serial_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for RunningGuest {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Turns a serial log into a fio report, or the most specific error it supports.
pub fn interpret(guest: &str, log: &str) -> Result<(FioReport, GuestTranscript), GuestRunError> {
    let t = GuestTranscript::parse(log);
    let malformed = |reason: String| GuestRunError::MalformedOutput {
        guest: guest.to_string(),
        reason,
        tail: tail(log, TAIL_LINES),
    };
    if let Some(message) = &t.guest_error {
        return Err(GuestRunError::Guest {
            guest: guest.to_string(),
            message: format!("{message}. Serial log tail:\n{}", tail(log, TAIL_LINES)),
        });
    }
    if t.watchdog_fired {
        return Err(GuestRunError::FioFailed {
            guest: guest.to_string(),
            exit: t.fio_exit.unwrap_or(124),
            // What the guest's kernel said meanwhile (hung tasks, I/O errors) is the lead.
            message: format!(
                "the guest's watchdog stopped fio (it ran past weir.timeout). Serial log \
                 tail:\n{}",
                tail(log, TAIL_LINES)
            ),
            report: None,
        });
    }
    let exit = t.fio_exit;
    let parsed = t.fio_output.as_deref().map(FioReport::parse);
    let stderr = t.fio_stderr.clone().unwrap_or_default();
    match (exit, parsed) {
        (None, _) => Err(malformed(
            "the guest never printed fio's exit status".into(),
        )),
        (Some(0), Some(Ok(report))) => {
            if let Some((job, errno)) = report.failed_jobs().first() {
                return Err(GuestRunError::FioFailed {
                    guest: guest.to_string(),
                    exit: 0,
                    message: format!("job '{job}' ended with error {errno}; {}", stderr.trim()),
                    report: Some(Box::new(report)),
                });
            }
            Ok((report, t))
        }
        (Some(0), Some(Err(e))) => Err(malformed(e.to_string())),
        (Some(0), None) => Err(malformed(
            "fio exited 0 but its JSON block is missing".into(),
        )),
        (Some(code), parsed) => {
            let report = parsed.and_then(Result::ok);
            let mut message: Vec<String> = Vec::new();
            if let Some(r) = &report {
                message.extend(r.preamble.iter().cloned());
            } else if let Some(out) = &t.fio_output {
                message.extend(
                    out.lines()
                        .take_while(|l| !l.starts_with('{'))
                        .map(str::to_string),
                );
            }
            message.extend(stderr.lines().map(str::to_string));
            message.dedup();
            let message = if message.is_empty() {
                "fio printed nothing on stderr".to_string()
            } else {
                message.join("\n")
            };
            Err(GuestRunError::FioFailed {
                guest: guest.to_string(),
                exit: code,
                message,
                report: report.map(Box::new),
            })
        }
    }
}

impl From<FioParseError> for GuestRunError {
    fn from(e: FioParseError) -> Self {
        GuestRunError::MalformedOutput {
            guest: String::new(),
            reason: e.to_string(),
            tail: String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serial::{JSON_BEGIN, JSON_END, STDERR_BEGIN, STDERR_END};

    fn log(json: &str, stderr: &str, exit: i32) -> String {
        format!(
            "WEIR-GUEST-INIT uptime_s=0.9 kernel=6.1\n{JSON_BEGIN}\n{json}{JSON_END}\n\
             {STDERR_BEGIN}\n{stderr}{STDERR_END}\nWEIR-FIO-EXIT={exit}\n"
        )
    }

    const OK_JSON: &str = "{\"jobs\": [{\"jobname\": \"a\", \"error\": 0, \"read\": {\"iops\": 5.0, \"total_ios\": 10}}]}\n";

    #[test]
    fn a_clean_run_yields_the_report() {
        let (r, t) = interpret("g", &log(OK_JSON, "", 0)).unwrap();
        assert_eq!(r.jobs[0].read.total_ios, 10);
        assert_eq!(t.init_uptime_s, Some(0.9));
    }

    #[test]
    fn a_failed_fio_carries_the_guests_message_not_a_parse_error() {
        let json =
            "t: you need to specify size=\n{\"jobs\": [{\"jobname\": \"t\", \"error\": 22}]}\n";
        let err =
            interpret("g", &log(json, "fio: pid=0, err=22/file:filesetup.c\n", 1)).unwrap_err();
        match err {
            GuestRunError::FioFailed {
                exit,
                message,
                report,
                ..
            } => {
                assert_eq!(exit, 1);
                assert!(message.contains("you need to specify size="), "{message}");
                assert!(message.contains("err=22"), "{message}");
                assert!(report.is_some());
            }
            other => panic!("expected FioFailed, got {other}"),
        }
    }

    #[test]
    fn a_job_error_with_exit_zero_is_still_a_failure() {
        let json = "{\"jobs\": [{\"jobname\": \"v\", \"error\": 84}]}\n";
        let err = interpret("g", &log(json, "verify: bad header\n", 0)).unwrap_err();
        assert!(
            matches!(err, GuestRunError::FioFailed { ref message, .. } if message.contains("84")),
            "{err}"
        );
    }

    #[test]
    fn truncated_json_is_malformed_with_the_log_tail() {
        let err = interpret("g", &log("{\"jobs\": [\n", "", 0)).unwrap_err();
        match err {
            GuestRunError::MalformedOutput { tail, .. } => {
                assert!(tail.contains("WEIR-FIO-EXIT=0"))
            }
            other => panic!("expected MalformedOutput, got {other}"),
        }
        let err = interpret("g", "Kernel panic - not syncing\n").unwrap_err();
        assert!(
            matches!(err, GuestRunError::MalformedOutput { ref tail, .. } if tail.contains("Kernel panic"))
        );
    }
}
