//! Booting the lab VM under QEMU TCG with AMD-V and nested paging emulated, running one command
//! in it, and bringing back its output, its exit status and its `/results`.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::LabError;

/// The CPU model: it must say AMD (kvm_amd refuses others) and carry NPT (without it the
/// nested kernel dies before its first line). `EPYC` is the fastest under TCG.
pub const CPU_MODEL: &str = "EPYC,+svm,+npt";
/// Where QEMU lacks the EPYC model.
pub const CPU_MODEL_FALLBACK: &str = "max";

/// One lab VM run.
#[derive(Debug, Clone)]
pub struct LabVmConfig {
    pub qemu: PathBuf,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub cpus: u32,
    pub mem_mib: u64,
    /// Size of the disk `/results` comes back on.
    pub results_disk_mib: u64,
    pub timeout: Duration,
    /// Copy the console to this process's stdout as it arrives.
    pub echo: bool,
    /// The console log, the results disk.
    pub work_dir: PathBuf,
}

/// A lab VM that shows no sign of life this long before the command's end marker is frozen
/// ([`sign_of_life`]).
pub const FROZEN_AFTER: Duration = Duration::from_secs(90);

/// Whether a console line shows the lab VM's userspace still runs. Before the command starts
/// (`WEIR-LAB-BEGIN`) any line does: the L1 is booting. After it only init.sh's own lines do
/// (the heartbeat every 5 s, the end marker): kernel messages go on when userspace has
/// stopped. Seen 2026-12-06: "soft lockup - CPU#1 stuck for 26s! [kworker/1:1:35]" every
/// 28 s to 522 s, the heartbeat gone from 28 s on, and the run held to its 600 s timeout.
pub fn sign_of_life(line: &str, begun: bool) -> bool {
    !begun || line.starts_with("WEIR-LAB-")
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct LabRun {
    /// The command's exit status (`None`: the VM ended without reporting one).
    pub exit: Option<i32>,
    /// Everything on the console.
    pub console: String,
    /// The command's own output (between the markers).
    pub output: String,
    /// Seconds from QEMU's start to the command's start, as the L1 kernel counts them.
    pub boot_uptime_s: Option<f64>,
    pub wall: Duration,
    pub timed_out: bool,
    /// A failure of QEMU's nested-virtualization emulation (see [`known_flake`]).
    pub known_flake: Option<&'static str>,
    pub cpu_model: String,
}

/// The CPU model this QEMU offers.
pub fn cpu_model(qemu: &Path) -> String {
    let help = Command::new(qemu)
        .args(["-cpu", "help"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    // "  EPYC   (alias …)" (QEMU 10) or "x86 EPYC …" (older).
    let has_epyc = help
        .lines()
        .any(|l| l.split_whitespace().take(2).any(|w| w == "EPYC"));
    if has_epyc {
        CPU_MODEL.into()
    } else {
        CPU_MODEL_FALLBACK.into()
    }
}

/// Failures that are the emulator's, not weir's, by their exact signatures:
/// - the L2 kernel's double fault on the first instruction of `entry_SYSCALL_64` (the user
///   stack still loaded) in long syscall-heavy nested runs (ENVIRONMENT.md: 1 in 17 runs of
///   10 s fio, never during boot);
/// - the L1 kernel overflowing its stack in page faults taken on the page-fault entry itself
///   (`asm_exc_page_fault`), in a KVM vCPU thread: a host kernel crash no userspace VMM can
///   cause legitimately, seen once in four runs of three Linux guests and a probe at once.
pub fn known_flake(console: &str) -> Option<&'static str> {
    if console.lines().any(|l| l.contains("double fault")) && console.contains("entry_SYSCALL_64") {
        return Some("the nested guest's double fault at entry_SYSCALL_64");
    }
    // `RIP: asm_exc_page_fault+0x4` with a call trace, or `RIP: exc_page_fault+0x7` when the
    // panic ("corrupted stack end detected inside scheduler") cuts the trace short.
    if console.contains("stack guard page was hit") && console.contains("exc_page_fault") {
        return Some("the lab VM kernel's page-fault recursion (stack guard page hit)");
    }
    // The same overflow found later, by the scheduler's check of the stack's end marker (the
    // guard-page report does not always make it to the console first).
    if console.contains("corrupted stack end detected inside scheduler") {
        return Some("the lab VM kernel's stack overflow (corrupted stack end)");
    }
    if console.lines().any(|l| wedged_vcpu_thread(l).is_some()) {
        return Some(WEDGED);
    }
    None
}

const WEDGED: &str = "the lab VM kernel's CPU stuck for a minute or more in a KVM vCPU thread (a \
                      soft lockup: QEMU's SVM emulation no longer returning from the nested guest)";

/// A soft lockup the L1 kernel reports in a KVM vCPU thread (`weir vm`'s `vcpuN`, QEMU's
/// `CPU N/KVM`) stuck for [`WEDGED_AFTER_S`] or more: the seconds. The thread sits in the L1
/// kernel's KVM (entering the nested guest) without scheduling — a CPU the emulator no longer
/// brings back from the nested guest; a userspace VMM cannot hold a CPU in the kernel. Seen
/// 2026-12-06: "soft lockup - CPU#1 stuck for 23s! [vcpu0:309]", repeated every 28 s to 388 s,
/// the lab command's deadline never reached. (A soft lockup of another task — swapper once,
/// 101 s — recovered by itself and is not this.)
pub fn wedged_vcpu_thread(line: &str) -> Option<u64> {
    let rest = line.split("soft lockup - CPU#").nth(1)?;
    let secs: u64 = rest
        .split("stuck for ")
        .nth(1)?
        .split('s')
        .next()?
        .parse()
        .ok()?;
    let task = rest.split('[').nth(1)?;
    let vcpu = task.starts_with("vcpu") || (task.starts_with("CPU ") && task.contains("/KVM"));
    (vcpu && secs >= WEDGED_AFTER_S).then_some(secs)
}

/// How long a vCPU thread's soft lockup must last to count as a wedged CPU.
pub const WEDGED_AFTER_S: u64 = 60;

/// The lab VM ended by itself after its command started, without the command's end marker and
/// without a word from its kernel: a reset of the emulated machine (QEMU's `-no-reboot` turns
/// a triple fault into an exit). Userspace cannot do that; the L1 kernel would print a panic
/// (loglevel 3 keeps them) before `panic=-1` rebooted it. Seen once in a CI run, 18 s into
/// three Linux guests under weir vm.
pub fn silent_reset(console: &str, timed_out: bool) -> Option<&'static str> {
    let kernel_spoke = [
        "Kernel panic",
        "BUG:",
        "Oops",
        "RIP:",
        "watchdog:",
        "Call Trace",
    ]
    .iter()
    .any(|w| console.contains(w));
    (!timed_out
        && console.contains("WEIR-LAB-BEGIN")
        && !console.contains("WEIR-LAB-END")
        && !kernel_spoke)
        .then_some(
            "the lab VM reset itself with no kernel message (a triple fault in QEMU's emulation)",
        )
}

fn parse_exit(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("WEIR-LAB-EXIT="))
        .and_then(|v| v.trim().parse().ok())
}

fn between(console: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in console.lines().filter(|l| !l.starts_with("WEIR-LAB-ALIVE")) {
        if line.starts_with("WEIR-LAB-BEGIN") {
            inside = true;
            continue;
        }
        if line.starts_with("WEIR-LAB-END") {
            break;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

fn boot_uptime(console: &str) -> Option<f64> {
    console
        .lines()
        .find(|l| l.starts_with("WEIR-LAB-BEGIN"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("uptime_s="))?
        .parse()
        .ok()
}

impl LabVmConfig {
    fn args(&self, cpu: &str, results_disk: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        // Not `thread=single`: with one TCG thread the three-guest lab run's nested guests had
        // not passed their early boot after 195 s (multi: /init in ~20 s; docs/lab.md).
        push(&["-accel", "tcg,thread=multi", "-cpu", cpu]);
        push(&[
            "-smp",
            &self.cpus.to_string(),
            "-m",
            &format!("{}M", self.mem_mib),
        ]);
        // No default NIC (its option ROM costs seconds under TCG), no monitor, no display.
        push(&[
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
            "-serial",
            "stdio",
        ]);
        push(&["-kernel", &self.kernel.to_string_lossy()]);
        push(&["-initrd", &self.initramfs.to_string_lossy()]);
        // mitigations=off: a test rig, not a security boundary, and less for QEMU's TCG SVM
        // emulation to get wrong. It did not cure the L1 stack overflows of Debian's 6.1.0-57
        // (2 clean runs right after turning it off, then 4 overflows in a row: docs/lab.md).
        push(&[
            "-append",
            "console=ttyS0 panic=-1 quiet loglevel=3 mitigations=off",
        ]);
        push(&[
            "-drive",
            &format!(
                "file={},format=raw,if=virtio,cache=unsafe",
                results_disk.display()
            ),
        ]);
        a
    }

    /// Boots the VM, waits for it to power off (or the timeout), and unpacks `/results` into
    /// `results` when given.
    pub fn run(&self, results: Option<&Path>) -> Result<LabRun, LabError> {
        fs::create_dir_all(&self.work_dir)
            .map_err(LabError::io(format!("create {}", self.work_dir.display())))?;
        let disk = self.work_dir.join("results.img");
        let f =
            fs::File::create(&disk).map_err(LabError::io(format!("create {}", disk.display())))?;
        f.set_len(self.results_disk_mib << 20)
            .map_err(LabError::io("size the results disk"))?;
        drop(f);
        let cpu = cpu_model(&self.qemu);
        let started = Instant::now();
        let mut child = Command::new(&self.qemu)
            .args(self.args(&cpu, &disk))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                LabError::Qemu(format!(
                    "cannot start {}: {e} (apt-get install qemu-system-x86)",
                    self.qemu.display()
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| LabError::Qemu("no stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| LabError::Qemu("no stderr".into()))?;
        let (tx, rx) = mpsc::channel::<String>();
        let echo = self.echo;
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf).replace('\r', "");
                        if echo {
                            let mut o = std::io::stdout().lock();
                            let _ = o.write_all(line.as_bytes());
                            let _ = o.flush();
                        }
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
            s
        });
        let mut console = String::new();
        let mut timed_out = false;
        let mut frozen = false;
        let mut last_life = Instant::now();
        let mut begun = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if sign_of_life(&line, begun) {
                        last_life = Instant::now();
                    }
                    begun |= line.contains("WEIR-LAB-BEGIN");
                    console.push_str(&line);
                    if wedged_vcpu_thread(&line).is_some() {
                        // It does not come back (388 s, the one time seen): no use waiting;
                        // `known_flake` names it from the console.
                        let _ = child.kill();
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if started.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                break;
            }
            // The command runs with a heartbeat every 5 s (init.sh), and the L1 boots to its
            // command in seconds: no sign of life for FROZEN_AFTER before the end marker is a
            // VM that stopped (seen in boot and mid-command), not a slow command.
            if !console.contains("WEIR-LAB-END") && last_life.elapsed() > FROZEN_AFTER {
                frozen = true;
                let _ = child.kill();
                break;
            }
        }
        let status = child.wait().map_err(LabError::io("wait for QEMU"))?;
        let _ = reader.join();
        while let Ok(line) = rx.try_recv() {
            console.push_str(&line);
        }
        let qemu_err = err_reader.join().unwrap_or_default();
        let wall = started.elapsed();
        fs::write(self.work_dir.join("console.log"), &console)
            .map_err(LabError::io("write console.log"))?;
        let exit = parse_exit(&console);
        if exit.is_none() && !timed_out && !status.success() {
            // QEMU itself failed (a bad option, a missing accelerator): its words, not ours.
            let reason: String = qemu_err
                .lines()
                .filter(|l| !l.contains("TCG doesn't support requested feature"))
                .collect::<Vec<_>>()
                .join("\n");
            if !reason.trim().is_empty() {
                return Err(LabError::Qemu(format!(
                    "QEMU ended with {status}: {}",
                    reason.trim()
                )));
            }
        }
        if let (Some(dir), Some(_)) = (results, exit) {
            fs::create_dir_all(dir).map_err(LabError::io(format!("create {}", dir.display())))?;
            let out = Command::new("tar")
                .arg("-xf")
                .arg(&disk)
                .arg("-C")
                .arg(dir)
                .output()
                .map_err(LabError::io("run tar"))?;
            if !out.status.success() {
                return Err(LabError::Image(format!(
                    "unpacking the results disk into {} failed: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        let _ = fs::remove_file(&disk);
        Ok(LabRun {
            exit,
            output: between(&console),
            boot_uptime_s: boot_uptime(&console),
            known_flake: known_flake(&console)
                .or(silent_reset(&console, timed_out || frozen))
                .or(frozen.then_some(
                    "the lab VM froze: no heartbeat for 90 s (QEMU's emulation stopped, or its \
                     kernel locked up; a hung command keeps the heartbeat going)",
                )),
            console,
            wall,
            timed_out,
            cpu_model: cpu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_init_sh_lines_are_life_once_the_command_runs() {
        let lockup =
            "[   84.66] watchdog: BUG: soft lockup - CPU#1 stuck for 52s! [kworker/1:1:35]";
        assert!(sign_of_life(lockup, false), "booting: any line");
        assert!(!sign_of_life(lockup, true));
        assert!(!sign_of_life("some command output", true));
        assert!(sign_of_life("WEIR-LAB-ALIVE uptime_s=10.9", true));
        assert!(sign_of_life("WEIR-LAB-END", true));
    }

    #[test]
    fn the_console_yields_status_output_and_boot_time() {
        let console = "noise\nWEIR-LAB-BEGIN uptime_s=5.85 kvm=yes\nhello\nWEIR-LAB-ALIVE uptime_s=10.9\n\
                       world\n\nWEIR-LAB-END\n\
                       WEIR-LAB-EXIT=3\n[  9.1] reboot: Power down\n";
        assert_eq!(parse_exit(console), Some(3));
        assert_eq!(between(console), "hello\nworld\n\n");
        assert_eq!(boot_uptime(console), Some(5.85));
        assert_eq!(parse_exit("WEIR-LAB-BEGIN\nKernel panic\n"), None);
    }

    #[test]
    fn only_the_exact_signatures_are_known_flakes() {
        let l2 = "PANIC: double fault, error_code: 0x0\nRIP: 0010:entry_SYSCALL_64+0x0/0x..\n";
        assert!(known_flake(l2).is_some());
        let l1 = "BUG: TASK stack guard page was hit at 0\nRIP: 0010:asm_exc_page_fault+0x4\n";
        assert!(known_flake(l1).is_some());
        let short = "BUG: TASK stack guard page was hit at 00000000baabc558\n\
                     RIP: 0010:exc_page_fault+0x7/0x170\n\
                     Kernel panic - not syncing: corrupted stack end detected inside scheduler\n";
        assert!(known_flake(short).is_some());
        assert!(
            known_flake(
                "Kernel panic - not syncing: corrupted stack end detected inside scheduler\n"
            )
            .is_some()
        );
        assert!(known_flake("PANIC: double fault\nRIP: 0010:do_idle+0x1\n").is_none());
        assert!(known_flake("BUG: unable to handle page fault\n").is_none());
        assert!(known_flake("BUG: TASK stack guard page was hit\nRIP: do_sys_poll\n").is_none());
        let lockup = |secs: u32, task: &str| {
            format!("[  252.584370] watchdog: BUG: soft lockup - CPU#1 stuck for {secs}s! [{task}]")
        };
        assert_eq!(wedged_vcpu_thread(&lockup(75, "vcpu0:309")), Some(75));
        assert_eq!(wedged_vcpu_thread(&lockup(61, "CPU 1/KVM:412")), Some(61));
        assert!(known_flake(&lockup(75, "vcpu0:309")).is_some());
        assert_eq!(
            wedged_vcpu_thread(&lockup(49, "vcpu0:309")),
            None,
            "not a minute yet"
        );
        assert_eq!(
            wedged_vcpu_thread(&lockup(101, "swapper/0:0")),
            None,
            "not a vCPU thread"
        );
        let begun = "WEIR-LAB-BEGIN uptime_s=3.50 kvm=yes\n";
        assert!(silent_reset(begun, false).is_some());
        assert!(
            silent_reset(begun, true).is_none(),
            "a timeout is not a reset"
        );
        assert!(
            silent_reset("Linux version 6.1\n", false).is_none(),
            "not begun"
        );
        let panicked = format!("{begun}Kernel panic - not syncing: Fatal exception\n");
        assert!(silent_reset(&panicked, false).is_none());
        let ended = format!("{begun}WEIR-LAB-END\nWEIR-LAB-EXIT=1\n");
        assert!(silent_reset(&ended, false).is_none());
    }
}
