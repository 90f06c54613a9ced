//! `weir bench vm --guest linux`: the Linux test guest's kernel booted under `weir vm` and
//! under `qemu-system-x86_64 -accel kvm`, both as `-M microvm` (qboot, no PCI: QEMU's fastest
//! boot) and as `-M q35` (SeaBIOS, PCI: QEMU's default PC, as `weir guest` runs it), the same
//! vmlinux (PVH entry) and the same
//! initramfs, guest RAM a shared memfd in both, rounds interleaved. The initramfs is the test
//! guest's `/init` and busybox without fio: fio's library closure (85 MB unpacked) would make
//! the guest's own unpacking most of the time measured, the same in both VMMs; `--full-initramfs`
//! boots the image's own. Measured: process start → first serial byte,
//! → the guest's `/init` (its `WEIR-GUEST-INIT` line), → the process's end (the guest powers
//! off at once without a fio job), and peak RSS split into guest RAM (RssShmem) and the VMM's
//! own. Needs hardware-virtualization KVM: on this PVM host, run it in the lab VM
//! (`weir lab run --with-qemu -- weir bench vm --guest linux`, docs/lab.md).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::io::Write as _;
use std::path::PathBuf;

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::Serialize;
use weir_guest_images::{CpioWriter, GuestImage, recipe_init_script};

pub const WEIR_VM: &str = "weir vm";
pub const QEMU_MICROVM: &str = "qemu -accel kvm (microvm)";
pub const QEMU_Q35: &str = "qemu -accel kvm (q35)";
const ENGINES: [&str; 3] = [WEIR_VM, QEMU_MICROVM, QEMU_Q35];

/// The guest's command line in both VMMs: no i8042 probing, the i8042 reset ends weir vm.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 i8042.noaux i8042.nokbd";

#[derive(Debug, Clone, Serialize)]
pub struct BootRow {
    pub engine: String,
    pub round: u32,
    pub first_byte_ms: Option<f64>,
    pub init_ms: Option<f64>,
    pub end_ms: f64,
    /// Peak VmRSS and the part of it that is guest RAM (shared memfd pages), KiB.
    pub rss_kib: u64,
    pub guest_ram_kib: u64,
}

impl BootRow {
    pub fn vmm_kib(&self) -> u64 {
        self.rss_kib.saturating_sub(self.guest_ram_kib)
    }
}

fn boot_once(
    engine: &str,
    round: u32,
    mut cmd: Command,
    serial: &Path,
    limit: Duration,
) -> Result<BootRow, String> {
    let (started, mut child) = crate::vm_bench::start_watched(engine, &mut cmd, serial)?;
    let pid = child.id();
    let (mut first, mut init, mut rss, mut shmem) = (None, None, 0u64, 0u64);
    let mut checked_len = 0u64;
    loop {
        let len = std::fs::metadata(serial).map_or(0, |m| m.len());
        if first.is_none() && len > 0 {
            first = Some(started.elapsed());
        }
        if init.is_none() && len > checked_len {
            checked_len = len;
            let text = std::fs::read(serial).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains("WEIR-GUEST-INIT") {
                init = Some(started.elapsed());
            }
        }
        crate::vm_bench::sample_peak_rss(pid, &mut rss, &mut shmem);
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{engine}: timed out after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let end = started.elapsed();
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&std::fs::read(serial).unwrap_or_default()).to_string();
    if init.is_none() && text.contains("WEIR-GUEST-INIT") {
        init = Some(end);
    }
    if init.is_none() {
        return Err(format!(
            "{engine}: the guest never reached /init ({}); serial tail:\n{}\n{}",
            out.status,
            crate::serial::tail(&text, 20),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok(BootRow {
        engine: engine.to_string(),
        round,
        first_byte_ms: first.map(ms),
        init_ms: init.map(ms),
        end_ms: ms(end),
        rss_kib: rss,
        guest_ram_kib: shmem,
    })
}

/// The test guest's `/init` with busybox and nothing else (it finds no fio job, says so and
/// powers off), gzip'd like the image's.
fn boot_initramfs(work_dir: &Path) -> Result<PathBuf, String> {
    const BUSYBOX: &str = "/bin/busybox";
    let busybox = std::fs::read(BUSYBOX)
        .map_err(|e| format!("{BUSYBOX}: {e} (Debian package busybox-static)"))?;
    let mut w = CpioWriter::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "usr", "usr/bin"] {
        w.dir(d, 0o755);
    }
    w.char_device("dev/console", 0o600, 5, 1);
    w.file("init", 0o755, recipe_init_script().as_bytes());
    w.file("bin/busybox", 0o755, &busybox);
    w.symlink("bin/sh", "busybox");
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&w.finish()).map_err(|e| e.to_string())?;
    let bytes = gz.finish().map_err(|e| e.to_string())?;
    let path = work_dir.join("boot-initramfs.cpio.gz");
    std::fs::write(&path, bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn weir_cmd(weir: &Path, kernel: &Path, initrd: &Path, serial: &Path, mem_mib: u32) -> Command {
    let mut c = Command::new(weir);
    c.arg("vm")
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initrd)
        .args(["--mem", &format!("{mem_mib}M"), "--cmdline", CMDLINE])
        .arg("--serial")
        .arg(serial);
    c
}

fn qemu_cmd(machine: &str, kernel: &Path, initrd: &Path, serial: &Path, mem_mib: u32) -> Command {
    let mut c = Command::new(crate::qemu::QEMU_BINARY);
    c.args([
        "-M",
        &format!("{machine},memory-backend=mem"),
        "-object",
        &format!("memory-backend-memfd,id=mem,size={mem_mib}M,share=on"),
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-m",
        &format!("{mem_mib}M"),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ])
    .arg("-serial")
    .arg(format!("file:{}", serial.display()))
    .arg("-kernel")
    .arg(kernel)
    .arg("-initrd")
    .arg(initrd)
    .args(["-append", CMDLINE]);
    c
}

fn median(mut v: Vec<f64>) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let m = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some((m, v[0], v[n - 1]))
}

/// Boots the guest `rounds` times under each VMM, interleaved (the order alternates by round).
pub fn run_linux_boot_bench(
    weir: &Path,
    image: &GuestImage,
    rounds: u32,
    full_initramfs: bool,
    work_dir: &Path,
) -> Result<(Vec<BootRow>, String), String> {
    std::fs::create_dir_all(work_dir).map_err(|e| e.to_string())?;
    let initrd = if full_initramfs {
        image.initramfs.clone()
    } else {
        boot_initramfs(work_dir)?
    };
    let initrd_kib = std::fs::metadata(&initrd).map_or(0, |m| m.len() >> 10);
    let mem_mib = 256;
    // A boot takes 7-25 s in the lab VM; a guest stuck in the emulator is left after this.
    let limit = Duration::from_secs(120);
    let mut rows = Vec::new();
    let mut failures = Vec::new();
    for round in 0..rounds {
        // Each round starts with the next engine: none always goes first.
        let order: Vec<&str> = (0..ENGINES.len())
            .map(|i| ENGINES[(i + round as usize) % ENGINES.len()])
            .collect();
        for engine in order {
            let tag = match engine {
                WEIR_VM => "weir-vm",
                QEMU_MICROVM => "qemu-microvm",
                _ => "qemu-q35",
            };
            let serial = work_dir.join(format!("{tag}-{round}.serial"));
            let cmd = match engine {
                WEIR_VM => weir_cmd(weir, &image.vmlinux, &initrd, &serial, mem_mib),
                QEMU_MICROVM => qemu_cmd("microvm", &image.vmlinux, &initrd, &serial, mem_mib),
                _ => qemu_cmd("q35", &image.vmlinux, &initrd, &serial, mem_mib),
            };
            // Under nested TCG an occasional boot dies in the emulator (either VMM): record it,
            // say so, and go on with the other rounds.
            match boot_once(engine, round, cmd, &serial, limit) {
                Ok(row) => rows.push(row),
                Err(e) => failures.push(format!("{engine} round {round}: {e}")),
            }
        }
    }
    if rows.is_empty() {
        return Err(failures.join("\n"));
    }
    let what = if full_initramfs {
        format!("the image's initramfs ({initrd_kib} KiB, fio and its libraries)")
    } else {
        format!("the test guest's /init and busybox only ({initrd_kib} KiB)")
    };
    let mut table = render(&rows, rounds, mem_mib, &what);
    for f in &failures {
        let _ = writeln!(table, "FAILED boot (left out of the figures): {f}");
    }
    Ok((rows, table))
}

fn render(rows: &[BootRow], rounds: u32, mem_mib: u32, initramfs: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "{:<28} {:>22} {:>22} {:>22} {:>10} {:>10} {:>10}",
        "engine", "first byte ms", "/init ms", "end ms", "RSS KiB", "guest KiB", "VMM KiB"
    );
    let stat = |engine: &str, f: &dyn Fn(&BootRow) -> Option<f64>| {
        median(
            rows.iter()
                .filter(|r| r.engine == engine)
                .filter_map(f)
                .collect(),
        )
    };
    let fmt = |s: Option<(f64, f64, f64)>| {
        s.map_or("-".into(), |(m, lo, hi)| {
            format!("{m:.0} ({lo:.0}-{hi:.0})")
        })
    };
    for engine in ENGINES {
        let _ = writeln!(
            t,
            "{:<28} {:>22} {:>22} {:>22} {:>10.0} {:>10.0} {:>10.0}",
            engine,
            fmt(stat(engine, &|r| r.first_byte_ms)),
            fmt(stat(engine, &|r| r.init_ms)),
            fmt(stat(engine, &|r| Some(r.end_ms))),
            stat(engine, &|r| Some(r.rss_kib as f64)).map_or(0.0, |s| s.0),
            stat(engine, &|r| Some(r.guest_ram_kib as f64)).map_or(0.0, |s| s.0),
            stat(engine, &|r| Some(r.vmm_kib() as f64)).map_or(0.0, |s| s.0),
        );
    }
    for qemu in [QEMU_MICROVM, QEMU_Q35] {
        let ratio = |f: &dyn Fn(&BootRow) -> Option<f64>| match (stat(WEIR_VM, f), stat(qemu, f)) {
            (Some(w), Some(q)) => format!("{:.2}x", w.0 / q.0.max(1e-9)),
            _ => "-".into(),
        };
        let _ = writeln!(
            t,
            "weir vm / {qemu}: start -> /init {}, first byte {}, VMM RSS {} (medians)",
            ratio(&|r| r.init_ms),
            ratio(&|r| r.first_byte_ms),
            ratio(&|r| Some(r.vmm_kib() as f64)),
        );
    }
    let _ = writeln!(
        t,
        "(the Linux test guest's vmlinux through its PVH entry; initramfs: {initramfs}; no fio \
         job, so /init powers off at once; {mem_mib} MiB, 1 vCPU; {rounds} round(s) per VMM, \
         interleaved; medians (min-max); RSS is the peak VmRSS sampled every ms, guest = its \
         RssShmem, VMM = the rest)"
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_gives_medians_ranges_and_the_ratio() {
        let row = |engine: &str, round, init| BootRow {
            engine: engine.into(),
            round,
            first_byte_ms: Some(init / 4.0),
            init_ms: Some(init),
            end_ms: init + 100.0,
            rss_kib: 150_000,
            guest_ram_kib: 148_000,
        };
        let rows = vec![
            row(WEIR_VM, 0, 1000.0),
            row(QEMU_MICROVM, 0, 3000.0),
            row(WEIR_VM, 1, 1200.0),
            row(QEMU_MICROVM, 1, 2000.0),
            row(WEIR_VM, 2, 1100.0),
            row(QEMU_MICROVM, 2, 2200.0),
        ];
        let t = render(&rows, 3, 256, "test");
        assert!(t.contains("1100 (1000-1200)"), "{t}");
        assert!(t.contains("2200 (2000-3000)"), "{t}");
        assert!(t.contains("(microvm): start -> /init 0.50x"), "{t}");
    }
}
