//! `weir vm`: one KVM guest in this process.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weir_broker::config::{BrokerConfig, DiskConfig, LunConfig};
use weir_broker::server::Broker;
use weir_vmm::host::HostVirtualization;
use weir_vmm::machine::{Machine, SerialOut, VmConfig};

#[derive(clap::Args)]
pub struct VmArgs {
    /// Kernel: an ELF vmlinux (or the probe guest), or a bzImage.
    #[arg(long)]
    pub kernel: PathBuf,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// The Linux test guest's fio job: appended to `--initrd` (the image's initramfs) at
    /// /weir/job.fio, which its /init runs, printing fio's JSON on the console.
    #[arg(long, requires = "initrd")]
    pub fio_job: Option<PathBuf>,
    /// Kernel command line (virtio-mmio disks are announced after it).
    #[arg(long, default_value = "console=ttyS0 reboot=k panic=-1")]
    pub cmdline: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
    /// Guest RAM: MiB, or with a unit (512M, 1G).
    #[arg(long, default_value = "256M")]
    pub mem: String,
    /// A disk: `socket=PATH[,queues=N][,queue_size=N]` (a `weir broker` vhost-user-blk
    /// socket), or `path=FILE[,queues=N]` (a private broker in this process). Repeatable.
    #[arg(long = "disk")]
    pub disks: Vec<String>,
    /// `stdio` or a file for the guest's serial console.
    #[arg(long, default_value = "stdio")]
    pub serial: String,
    /// Stop the guest after this many seconds (exit status 124).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Boot protocol: `auto` (PVH when the kernel carries the PVH note, else the 64-bit Linux
    /// boot protocol), `pvh`, or `linux64`.
    #[arg(long, default_value = "auto")]
    pub boot: String,
    /// How long (µs) KVM polls a halted vCPU before its thread sleeps (KVM_CAP_HALT_POLL;
    /// 0: sleep at once, the core is free for others). Default: the host's `halt_poll_ns`.
    #[arg(long)]
    pub halt_poll_us: Option<u32>,
}

enum DiskArg {
    Socket {
        path: PathBuf,
        queues: u16,
        queue_size: u16,
    },
    File {
        path: PathBuf,
        queues: u16,
        queue_size: u16,
    },
}

fn parse_disk(s: &str, i: usize) -> Result<DiskArg> {
    let mut socket = None;
    let mut file = None;
    let mut queues = 1u16;
    let mut queue_size = 256u16;
    for part in s.split(',') {
        let (k, v) = part.split_once('=').with_context(|| {
            format!("--disk #{i} '{s}': '{part}' is not key=value (use socket=PATH or path=FILE)")
        })?;
        match k {
            "socket" => socket = Some(PathBuf::from(v)),
            "path" => file = Some(PathBuf::from(v)),
            "queues" => {
                queues = v
                    .parse()
                    .ok()
                    .filter(|q| (1..=16).contains(q))
                    .with_context(|| format!("--disk #{i}: queues={v}: use 1 to 16"))?
            }
            "queue_size" => {
                queue_size = v
                    .parse()
                    .ok()
                    .filter(|q: &u16| q.is_power_of_two() && (2..=1024).contains(q))
                    .with_context(|| {
                        format!("--disk #{i}: queue_size={v}: use a power of two from 2 to 1024")
                    })?
            }
            other => bail!("--disk #{i}: unknown key '{other}' (socket, path, queues, queue_size)"),
        }
    }
    match (socket, file) {
        (Some(path), None) => Ok(DiskArg::Socket {
            path,
            queues,
            queue_size,
        }),
        (None, Some(path)) => Ok(DiskArg::File {
            path,
            queues,
            queue_size,
        }),
        _ => bail!("--disk #{i} '{s}': give exactly one of socket=PATH or path=FILE"),
    }
}

fn parse_mem(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&t[..i], t[i..].trim()),
        None => (t, ""),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("--mem {s}: not a size (use 256, 256M or 1G)"))?;
    let mib = match unit {
        "" | "M" | "MiB" | "m" => n,
        "G" | "GiB" | "g" => n * 1024,
        _ => bail!("--mem {s}: unknown unit '{unit}' (M or G)"),
    };
    Ok(mib)
}

/// The probe guest carries this marker; Linux kernels do not.
fn is_probe(kernel: &Path) -> bool {
    std::fs::read(kernel)
        .map(|b| b.windows(16).any(|w| w == b"WEIR-PROBE-GUEST"))
        .unwrap_or(false)
}

fn rss_kib() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.starts_with("VmRSS")
                || l.starts_with("RssAnon")
                || l.starts_with("RssFile")
                || l.starts_with("RssShmem")
        })
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let kib = v.split_whitespace().next()?.parse().ok()?;
            Some((k.to_string(), kib))
        })
        .collect()
}

pub fn run(args: VmArgs) -> Result<()> {
    let created = Instant::now();
    let virt = HostVirtualization::detect();
    let probe = is_probe(&args.kernel);
    eprintln!("weir vm: host: {virt}");
    if !probe && !virt.linux_boots_under_kvm() {
        eprintln!(
            "weir vm: this host's KVM cannot run a Linux kernel past its early boot (guest kernel \
             mode is emulated instruction by instruction); starting it anyway, its early log \
             shows the boot protocol. To run Linux with fio here use `weir guest` (QEMU TCG); to \
             test `weir vm` use the probe guest (guest-images/probe)."
        );
    }
    let mem_mib = parse_mem(&args.mem)?;
    let boot = match args.boot.as_str() {
        "auto" => weir_vmm::boot::BootChoice::Auto,
        "pvh" => weir_vmm::boot::BootChoice::Pvh,
        "linux64" => weir_vmm::boot::BootChoice::Linux64,
        other => bail!("--boot {other}: use auto, pvh or linux64"),
    };
    let disks: Vec<DiskArg> = args
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| parse_disk(d, i))
        .collect::<Result<_>>()?;
    let mut cmdline = args.cmdline.clone();
    if probe && !cmdline.contains("probe.tsc_khz=") {
        if let Some(khz) = weir_lab::host::host_tsc_khz() {
            cmdline.push_str(&format!(" probe.tsc_khz={khz}"));
        }
    }
    // Private brokers for path= disks: a socket in a directory only this process uses, made
    // only when a disk needs it and removed before the process exits (`exit` runs no
    // destructors: thousands of empty directories were once left in /tmp by `weir run`).
    let mut private_dir: Option<tempfile::TempDir> = None;
    let mut private_config = BrokerConfig {
        control_socket: None,
        host_share: None,
        metrics_listen: None,
        // The private broker shares the VMM's process, which needs KVM's ioctls and more:
        // the filter is the standalone broker's.
        seccomp: false,
        pools: Vec::new(),
        ports: Vec::new(),
        luns: Vec::new(),
        disks: Vec::new(),
        events: Vec::new(),
    };
    let mut sockets: Vec<(PathBuf, u16, u16)> = Vec::new();
    for (i, d) in disks.iter().enumerate() {
        match d {
            DiskArg::Socket {
                path,
                queues,
                queue_size,
            } => sockets.push((path.clone(), *queues, *queue_size)),
            DiskArg::File {
                path,
                queues,
                queue_size,
            } => {
                let dir = match &private_dir {
                    Some(d) => d.path().to_path_buf(),
                    None => {
                        let d = tempfile::Builder::new()
                            .prefix("weir-vm-")
                            .tempdir()
                            .context("temporary directory for the private broker")?;
                        let path = d.path().to_path_buf();
                        private_dir = Some(d);
                        path
                    }
                };
                let socket = dir.join(format!("disk{i}.sock"));
                let mut lun = LunConfig::file(&format!("disk{i}"), path, None, false);
                if weir_sched::lun::is_nbd_uri(path) || weir_sched::lun::is_iscsi_uri(path) {
                    // `path=nbd://...` or `path=iscsi://...`: the export or target's LUN,
                    // reached by the private broker's own client.
                    lun.backend = None;
                }
                private_config.luns.push(lun);
                private_config.disks.push(DiskConfig {
                    socket: socket.clone(),
                    lun: format!("disk{i}"),
                    tenant: Some(format!("disk{i}")),
                    serial: None,
                    queues: *queues,
                    queue_size: *queue_size,
                    policy: Default::default(),
                });
                sockets.push((socket, *queues, *queue_size));
            }
        }
    }
    let _private_broker = if private_config.disks.is_empty() {
        None
    } else {
        private_config
            .validate()
            .context("--disk path=: private broker")?;
        Some(Broker::start(&private_config, true).context("private broker for --disk path=")?)
    };
    // Lives until the guest has loaded it.
    let mut job_initrd_file = None;
    let initrd = match (&args.fio_job, &args.initrd) {
        (Some(job), Some(base)) => {
            let job_text = std::fs::read_to_string(job)
                .with_context(|| format!("--fio-job {}", job.display()))?;
            let base_bytes =
                std::fs::read(base).with_context(|| format!("--initrd {}", base.display()))?;
            let bytes = weir_guest_images::job_initrd(&base_bytes, &job_text)
                .context("append the fio job to the initrd")?;
            let file = tempfile::NamedTempFile::new().context("a temporary initrd")?;
            std::fs::write(file.path(), bytes).context("write the temporary initrd")?;
            let path = file.path().to_path_buf();
            job_initrd_file = Some(file);
            Some(path)
        }
        _ => args.initrd.clone(),
    };
    let config = VmConfig {
        kernel: args.kernel.clone(),
        initrd,
        cmdline,
        vcpus: args.vcpus,
        mem_mib,
        serial: if args.serial == "stdio" {
            SerialOut::Stdio
        } else {
            SerialOut::File(PathBuf::from(&args.serial))
        },
        timeout: args.timeout.map(Duration::from_secs_f64),
        boot,
        halt_poll_us: args.halt_poll_us,
    };
    let mut machine = Machine::new(config, created)?;
    let mut announce = Vec::new();
    for (i, (socket, queues, queue_size)) in sockets.iter().enumerate() {
        announce.push(machine.add_vhost_user_blk(i as u32, socket, *queues, *queue_size)?);
    }
    let boot = machine.load(&announce.join(" "))?.clone();
    drop(job_initrd_file);
    eprintln!(
        "weir vm: {} {} ({:?}{}), {:?} entry {:#x}, {} MiB, {} vCPU(s), {} disk(s)",
        if probe { "probe guest" } else { "kernel" },
        args.kernel.display(),
        boot.format,
        if boot.pvh { ", PVH note" } else { "" },
        boot.mode,
        boot.entry,
        mem_mib,
        args.vcpus,
        sockets.len()
    );
    let report = machine.run()?;
    let rss = rss_kib();
    let get = |k: &str| rss.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
    eprintln!(
        "weir vm: ended: {:?}; first serial byte {}; RSS {} KiB (guest RAM in it {} KiB, VMM {} KiB)",
        report.end,
        report
            .first_serial_byte
            .map_or("never".to_string(), |d| format!(
                "{:.1} ms after start",
                d.as_secs_f64() * 1000.0
            )),
        get("VmRSS"),
        get("RssShmem"),
        get("RssAnon") + get("RssFile")
    );
    if report.end == weir_vmm::machine::VmEnd::TimedOut {
        // Which vCPU held the guest up, and where: in weir vm (an exit not finished) or inside
        // KVM_RUN (the kernel's, or under nesting the emulator's, side).
        for v in &report.vcpus {
            eprintln!("weir vm: at the timeout, {v}");
        }
    }
    if let Some(dir) = private_dir {
        if let Err(e) = dir.close() {
            eprintln!("weir vm: could not remove the private broker's directory: {e}");
        }
    }
    std::process::exit(report.end.exit_code());
}
