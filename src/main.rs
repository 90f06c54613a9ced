//! `weir`: the command line. Each subcommand is a thin layer over a workspace crate.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use weir_broker::config::BrokerConfig;
use weir_broker::server::{Broker, block_termination_signals};
use weir_guest_images::ImageStore;
use weir_lab::fiojob::with_target;
use weir_lab::host::{AccelChoice, HostFacts};
use weir_lab::hostfio::run_host_fio;
use weir_lab::qemu::GuestDisk;
use weir_lab::qemu::LinuxGuestSpec;
use weir_lab::summary::{render, render_comparison, summarise};
use weir_vmm::host::HostVirtualization;

mod dark_cmd;
mod lab_cmd;
mod run_cmd;
mod top_cmd;
mod vm_cmd;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A KVM micro-hypervisor with a fair, shared I/O broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build or locate the Linux test guest image.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Say what virtualization this host has and how weir will run guests on it.
    Host,
    /// Boot one Linux test guest under QEMU, run a fio job in it, print IOPS and latency.
    Guest(GuestArgs),
    /// Run the I/O broker: serve every configured guest disk as a vhost-user-blk socket.
    Broker(BrokerArgs),
    /// Run one KVM guest in this process (Linux kernel or the probe guest), its disks served by
    /// weir broker over vhost-user-blk through virtio-mmio.
    Vm(vm_cmd::VmArgs),
    /// Run a scenario: the broker and guests with fio (or the probe) inside, once per policy,
    /// into a results directory with results.json and report.html.
    Run(run_cmd::RunArgs),
    /// The broker live, like esxtop: tenants, LUNs, paths and the topology, each second from
    /// its control socket; -b for batch output (CSV or JSON lines).
    Top(top_cmd::TopArgs),
    /// Dark storage: per LUN, capacity no partition or filesystem covers, never-written
    /// ranges, allocated zeroes, and LUNs no guest uses.
    Dark(dark_cmd::DarkArgs),
    /// Re-render a results directory's report (report.html and the tables).
    Report { dir: PathBuf },
    /// Simulate a scenario's broker part (LUNs, array, tenants, policies) on a virtual clock:
    /// seeded, deterministic, seconds instead of minutes.
    Sim {
        scenario: PathBuf,
        /// Print the full results as JSON (windows over time, per-second counts).
        #[arg(long)]
        json: bool,
        /// Override the scenario's seed.
        #[arg(long)]
        seed: Option<u64>,
        /// The file is a sweep grid (seeds × array shapes, `scenarios/sweep-window.toml`): run
        /// every case and print, per window policy, the share meeting the targets and the
        /// distribution of throughput ÷ best fixed depth, window ÷ knee, latency ÷ latency at
        /// the knee, with the worst cases.
        #[arg(long)]
        sweep: bool,
        /// With --sweep: seeds 1..=N instead of the grid's.
        #[arg(long, requires = "sweep")]
        seeds: Option<u64>,
    },
    /// The lab VM: an L1 Linux host with AMD-V KVM under QEMU TCG, for `weir vm` with Linux
    /// guests where this host's KVM cannot boot them (docs/lab.md).
    Lab {
        #[command(subcommand)]
        command: lab_cmd::LabCommand,
    },
    /// Benchmarks (measurements, not tests).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// weir broker vs qemu-storage-daemon vs host fio on one file, rounds interleaved. The
    /// probe frontend (default) runs a matrix of patterns, block sizes and queue depths plus
    /// the scheduling overhead; the qemu frontend runs fio in a Linux guest (QD1, QD32).
    Broker {
        /// `probe` (the probe guest under weir vm: fast) or `qemu` (fio in a Linux guest).
        #[arg(long, default_value = "probe")]
        frontend: String,
        /// Backing file size in MiB.
        #[arg(long, default_value_t = 1024)]
        disk_mib: u64,
        /// qemu frontend: fio job to run instead of the built-in randread QD1/QD32 job.
        #[arg(long)]
        job: Option<PathBuf>,
        /// Where logs and results go [default: runs/bench-broker-<unix time>].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rounds of every backend (order rotating); medians and ranges are reported
        /// [default: 5 with the probe, 3 with qemu].
        #[arg(long)]
        rounds: Option<u32>,
        /// probe frontend: milliseconds per run.
        #[arg(long, default_value_t = 2000)]
        runtime_ms: u64,
        /// probe frontend: patterns (randread, randwrite, randrw70), comma-separated.
        #[arg(
            long,
            default_value = "randread,randwrite,randrw70",
            value_delimiter = ','
        )]
        rw: Vec<String>,
        /// probe frontend: block sizes in KiB, comma-separated.
        #[arg(long, default_value = "4,64", value_delimiter = ',')]
        bs_kib: Vec<u64>,
        /// probe frontend: queue depths (1–128), comma-separated.
        #[arg(long, default_value = "1,32,128", value_delimiter = ',')]
        qd: Vec<u32>,
        /// probe frontend: skip the scheduling overhead part (8 guests, fifo vs mclock).
        #[arg(long)]
        no_sched: bool,
        /// probe frontend: another weir binary whose broker runs as a fourth backend, for an
        /// A/B of two builds in one interleaved run.
        #[arg(long)]
        baseline: Option<PathBuf>,
        /// probe frontend: `poll` (the probe spins on the used ring) or `halt` (it halts for
        /// interrupts, KVM halt polling off: its core is free for the backends).
        #[arg(long, default_value = "poll")]
        probe_mode: String,
    },
    /// The probe guest under weir vm and under QEMU -accel kvm (same ELF via PVH, same broker
    /// socket): IOPS and latency at QD1 and QD32, start → first serial byte, RSS.
    Vm {
        /// `probe`: the probe guest's I/O and start-up; `linux`: the Linux test guest's boot
        /// (weir vm vs QEMU microvm, both -accel kvm: needs VT-x/AMD-V, e.g. the lab VM).
        #[arg(long, default_value = "probe", value_parser = ["probe", "linux"])]
        guest: String,
        /// Boots per VMM (`--guest linux`), interleaved.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// `--guest linux`: boot the image's own initramfs (with fio's 85 MB of libraries)
        /// instead of its /init and busybox alone.
        #[arg(long)]
        full_initramfs: bool,
        /// Milliseconds of random reads per run.
        #[arg(long, default_value_t = 5000)]
        runtime_ms: u64,
        /// Where logs and results go [default: runs/bench-vm-<unix time>].
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct BrokerArgs {
    /// Broker configuration (TOML; see docs/broker.md).
    #[arg(long)]
    config: PathBuf,
    /// Take over from a running broker on the same control socket (it finishes its in-flight
    /// I/O and exits; guests reconnect to this one), or take the sockets a dead one left.
    #[arg(long)]
    replace: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DiskPath {
    Broker,
    Qemu,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build the image (kernel from linux-source-6.1, busybox + fio initramfs), or reuse the
    /// cached one when its recipe is unchanged.
    Build {
        /// Image cache directory [default: $WEIR_IMAGE_DIR or ~/.cache/weir/images].
        #[arg(long)]
        out: Option<PathBuf>,
        /// Rebuild even if a valid image for this recipe exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the directory of the image for the current recipe (fails if not built).
    Path {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct GuestArgs {
    /// fio job file; the target (filename=) is added by weir. [default: scenarios/fio/quick.fio]
    #[arg(long)]
    job: Option<PathBuf>,
    /// Raw file to attach as /dev/vda [default: a new sparse file in the run directory].
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Size of the new disk file, in MiB.
    #[arg(long, default_value_t = 256)]
    disk_size_mib: u64,
    #[arg(long, default_value_t = 512)]
    memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// The guest stops fio after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
    /// Also run the same job with host fio on the same file and print the ratios.
    #[arg(long)]
    host_baseline: bool,
    /// How the disk reaches the guest: through weir's broker (vhost-user-blk) or QEMU's own
    /// virtio-blk on the file (the baseline).
    #[arg(long, value_enum, default_value_t = DiskPath::Broker)]
    via: DiskPath,
    /// Virtqueues of the broker disk (multi-queue; the guest uses up to one per vCPU).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Run directory for logs and results [default: runs/guest-<unix time>].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Image cache directory [default: $WEIR_IMAGE_DIR or ~/.cache/weir/images].
    #[arg(long)]
    image_dir: Option<PathBuf>,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Image { command } => image(command),
        Command::Host => host(),
        Command::Guest(args) => guest(args),
        Command::Broker(args) => broker(args),
        Command::Vm(args) => vm_cmd::run(args),
        Command::Run(args) => run_cmd::run(args),
        Command::Report { dir } => run_cmd::report(&dir),
        Command::Top(args) => top_cmd::run(args),
        Command::Dark(args) => dark_cmd::run(args),
        Command::Bench { command } => bench(command),
        Command::Lab { command } => lab_cmd::run(command),
        Command::Sim {
            scenario,
            json,
            sweep: true,
            seeds,
            ..
        } => sim_sweep(&scenario, json, seeds),
        Command::Sim {
            scenario,
            json,
            seed,
            ..
        } => sim(&scenario, json, seed),
    };
    if let Err(e) = result {
        eprintln!("weir: error: {e:#}");
        std::process::exit(1);
    }
}

fn store(out: Option<PathBuf>) -> ImageStore {
    out.map(ImageStore::at).unwrap_or_else(ImageStore::from_env)
}

fn image(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Build { out, force } => {
            let image = store(out).ensure(force, &mut std::io::stdout())?;
            println!("{}", image.dir.display());
        }
        ImageCommand::Path { out } => println!("{}", store(out).locate()?.dir.display()),
    }
    Ok(())
}

/// How long `--replace` waits for the running broker to finish its I/O and exit (its own drain
/// limit is 30 s).
const HANDOVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(40);

fn broker(args: BrokerArgs) -> Result<()> {
    use weir_broker::sandbox::SeccompMode;
    let config = BrokerConfig::load(&args.config)?;
    // Before any thread starts, so that every broker thread inherits the blocked signals and
    // only the signal thread sees them.
    let signals = block_termination_signals().context("cannot block SIGINT/SIGTERM")?;
    if args.replace {
        if let Some(control) = &config.control_socket {
            let asked = std::time::Instant::now();
            if let Some(pid) = weir_broker::server::take_over(control, HANDOVER_LIMIT)? {
                println!(
                    "took over from broker pid {pid} ({:.0} ms after asking)",
                    asked.elapsed().as_secs_f64() * 1000.0
                );
            }
        }
    }
    let broker = Broker::start(&config, args.replace)?;
    signals.shutdown_on_signal(broker.handle());
    for disk in &broker.handle().state.disks {
        println!(
            "serving {} (tenant {}, LUN {}, {} queue{})",
            disk.socket.display(),
            disk.tenant,
            disk.lun,
            disk.queues,
            if disk.queues == 1 { "" } else { "s" }
        );
    }
    if let Some(ctl) = &config.control_socket {
        println!("control socket {}", ctl.display());
    }
    if let Some(addr) = broker.metrics_addr() {
        println!("metrics http://{addr}/metrics");
    }
    let mode = SeccompMode::from_env(if config.seccomp {
        SeccompMode::Enforce
    } else {
        SeccompMode::Off
    });
    weir_broker::sandbox::install(mode)?;
    if mode != SeccompMode::Enforce {
        println!("seccomp filter: {mode:?}");
    }
    println!("weir broker ready");
    broker.wait();
    println!("weir broker stopped");
    Ok(())
}

fn bench(command: BenchCommand) -> Result<()> {
    match command {
        BenchCommand::Vm {
            guest,
            rounds,
            full_initramfs,
            runtime_ms,
            out,
        } if guest == "linux" => {
            let virt = HostVirtualization::detect();
            println!("host: {virt}");
            if !virt.linux_boots_under_kvm() {
                bail!(
                    "weir bench vm --guest linux boots Linux under KVM, which needs VT-x/AMD-V; \
                     this host's KVM cannot: run it in the lab VM: weir lab run --with-qemu -- \
                     weir bench vm --guest linux --out /results/bench (docs/lab.md)"
                );
            }
            let _ = runtime_ms;
            let image = ImageStore::from_env().ensure(false, &mut std::io::stdout())?;
            let work_dir =
                fs::canonicalize(".")?.join(out.unwrap_or_else(|| run_dir("bench-vm-linux")));
            println!("benchmarking in {} ...", work_dir.display());
            let (rows, table) = weir_lab::vm_bench_linux::run_linux_boot_bench(
                &std::env::current_exe()?,
                &image,
                rounds.max(1),
                full_initramfs,
                &work_dir,
            )
            .map_err(anyhow::Error::msg)?;
            print!("{table}");
            fs::write(work_dir.join("bench.txt"), &table)?;
            fs::write(
                work_dir.join("bench.json"),
                serde_json::to_string_pretty(&rows)?,
            )?;
            println!("written to {}", work_dir.join("bench.txt").display());
        }
        BenchCommand::Vm {
            runtime_ms, out, ..
        } => {
            println!("host: {}", HostVirtualization::detect());
            let work_dir = fs::canonicalize(".")?.join(out.unwrap_or_else(|| run_dir("bench-vm")));
            println!("benchmarking in {} ...", work_dir.display());
            let (_, table) =
                weir_lab::vm_bench::run_vm_bench(&std::env::current_exe()?, &work_dir, runtime_ms)
                    .map_err(anyhow::Error::msg)?;
            print!("{table}");
            fs::write(work_dir.join("bench.txt"), &table)?;
            println!("written to {}", work_dir.join("bench.txt").display());
        }
        BenchCommand::Broker {
            frontend,
            disk_mib,
            job,
            out,
            rounds,
            runtime_ms,
            rw,
            bs_kib,
            qd,
            no_sched,
            baseline,
            probe_mode,
        } => {
            if frontend == "probe" {
                let patterns = rw
                    .iter()
                    .map(|p| {
                        weir_lab::bench::probe_frontend::Pattern::parse(p).with_context(|| {
                            format!("--rw {p}: use randread, randwrite or randrw70")
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                if let Some(bad) = qd.iter().find(|&&q| !(1..=128).contains(&q)) {
                    bail!("--qd {bad}: queue depths run from 1 to 128");
                }
                if let Some(bad) = bs_kib
                    .iter()
                    .find(|&&b| !(1..=1024).contains(&b) || !b.is_power_of_two())
                {
                    bail!("--bs-kib {bad}: a power of two from 1 to 1024 KiB");
                }
                if job.is_some() {
                    bail!("--job is for --frontend qemu (the probe runs its own matrix)");
                }
                let work_dir =
                    fs::canonicalize(".")?.join(out.unwrap_or_else(|| run_dir("bench-broker")));
                let opts = weir_lab::bench::probe_frontend::ProbeBenchOptions {
                    weir_binary: std::env::current_exe()?,
                    work_dir: work_dir.clone(),
                    disk_mib,
                    rounds: rounds.unwrap_or(5),
                    runtime_ms,
                    patterns,
                    block_sizes: bs_kib.iter().map(|k| k * 1024).collect(),
                    depths: qd,
                    sched_overhead: !no_sched,
                    baseline: baseline.map(fs::canonicalize).transpose()?,
                    probe_mode: weir_lab::bench::probe_frontend::ProbeMode::parse(&probe_mode)
                        .with_context(|| format!("--probe-mode {probe_mode}: use poll or halt"))?,
                };
                println!(
                    "benchmarking in {} ({} cases x {} backends x {} rounds, {} ms each) ...",
                    work_dir.display(),
                    opts.cases().len(),
                    if opts.baseline.is_some() { 4 } else { 3 },
                    opts.rounds,
                    runtime_ms
                );
                let runs = weir_lab::bench::probe_frontend::run_probe_bench(&opts)
                    .map_err(anyhow::Error::msg)?;
                let table = weir_lab::bench::probe_frontend::render(&runs);
                fs::write(work_dir.join("bench.txt"), &table)?;
                let json = serde_json::json!({
                    "runs": runs,
                    "aggregates": weir_lab::bench::probe_frontend::aggregate(&runs),
                    "paired": weir_lab::bench::probe_frontend::paired(&runs),
                });
                fs::write(
                    work_dir.join("bench.json"),
                    serde_json::to_string_pretty(&json)?,
                )?;
                println!("\n{table}");
                println!("written to {}/bench.{{txt,json}}", work_dir.display());
                return Ok(());
            }
            if frontend != "qemu" {
                bail!("--frontend {frontend}: use probe or qemu");
            }
            let rounds = rounds.unwrap_or(3);
            let virt = HostVirtualization::detect();
            let accel = AccelChoice::for_linux_guest(&virt);
            println!("host: {accel}");
            let image = ImageStore::from_env().ensure(false, &mut std::io::stdout())?;
            let job = match job {
                Some(p) => weir_sched::check::read_config_text(&p)
                    .with_context(|| format!("read {}", p.display()))?,
                None => weir_lab::bench::RANDREAD_JOB.to_string(),
            };
            let work_dir =
                fs::canonicalize(".")?.join(out.unwrap_or_else(|| run_dir("bench-broker")));
            let opts = weir_lab::bench::BenchOptions {
                weir_binary: std::env::current_exe()?,
                image,
                accel,
                work_dir: work_dir.clone(),
                disk_mib,
                job,
                rounds,
            };
            println!(
                "benchmarking in {} (one guest per backend, then host fio) ...",
                work_dir.display()
            );
            let results = weir_lab::bench::run_broker_bench(&opts).map_err(anyhow::Error::msg)?;
            let table = weir_lab::bench::render_bench(&results);
            fs::write(work_dir.join("bench.txt"), &table)?;
            println!("\n{table}");
        }
    }
    Ok(())
}

fn sim(path: &std::path::Path, json: bool, seed: Option<u64>) -> Result<()> {
    let text = weir_sched::check::read_config_text(path)
        .with_context(|| format!("cannot read scenario {}", path.display()))?;
    // A `weir run` scenario (with [[guest]] entries) simulates too.
    let mut scenario: weir_sched::sim::SimScenario = if text.contains("[[guest]]") {
        run_cmd::sim_scenario(path)?
    } else {
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?
    };
    if let Some(seed) = seed {
        scenario.seed = seed;
    }
    let results = weir_sched::sim::run_compare(&scenario)
        .map_err(|e| anyhow::anyhow!("scenario {}: {e}", path.display()))?;
    if json {
        let out: Vec<serde_json::Value> = results
            .iter()
            .map(|(name, r)| serde_json::json!({ "policy": name, "result": r }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} (seed {}, {} s simulated, {} s warm-up)\n",
            path.display(),
            scenario.seed,
            scenario.duration_s,
            scenario.warmup_s
        );
        print!("{}", weir_sched::sim::render(&results));
    }
    Ok(())
}

fn sim_sweep(path: &std::path::Path, json: bool, seeds: Option<u64>) -> Result<()> {
    let text = weir_sched::check::read_config_text(path)
        .with_context(|| format!("cannot read sweep grid {}", path.display()))?;
    let mut grid: weir_sched::sweep::SweepGrid =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("sweep grid {}: {e}", path.display()))?;
    if let Some(n) = seeds {
        grid.seeds = n;
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let result = weir_sched::sweep::run(&grid, threads)
        .map_err(|e| anyhow::anyhow!("sweep grid {}: {e}", path.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&result)?);
    } else {
        println!(
            "{} ({:.1} s on {threads} threads)\n",
            path.display(),
            started.elapsed().as_secs_f64()
        );
        print!("{}", weir_sched::sweep::render(&result));
    }
    Ok(())
}

fn run_dir(prefix: &str) -> PathBuf {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    PathBuf::from(format!("runs/{prefix}-{t}"))
}

fn host() -> Result<()> {
    let virt = HostVirtualization::detect();
    let facts = HostFacts::collect(&virt);
    println!("kernel:  {}", facts.kernel);
    println!("cpu:     {} ({} cpus)", facts.cpu, facts.cpus);
    println!("kvm:     {virt}");
    println!("{}", AccelChoice::for_linux_guest(&virt));
    Ok(())
}

fn guest(args: GuestArgs) -> Result<()> {
    let virt = HostVirtualization::detect();
    let accel = AccelChoice::for_linux_guest(&virt);
    println!("host: {accel}");

    let image = store(args.image_dir).ensure(false, &mut std::io::stdout())?;
    let job_path = args
        .job
        .unwrap_or_else(|| PathBuf::from("scenarios/fio/quick.fio"));
    let job = weir_sched::check::read_config_text(&job_path).with_context(|| {
        format!(
            "cannot read fio job {} (give one with --job FILE)",
            job_path.display()
        )
    })?;
    let out = args.out.unwrap_or_else(|| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        PathBuf::from(format!("runs/guest-{t}"))
    });
    fs::create_dir_all(&out)
        .with_context(|| format!("cannot create run directory {}", out.display()))?;
    let (disk, made_disk) = match args.disk {
        Some(d) => {
            if !d.exists() {
                bail!(
                    "--disk {} does not exist (omit --disk to get a fresh {} MiB file)",
                    d.display(),
                    args.disk_size_mib
                );
            }
            (d, false)
        }
        None => {
            if args.disk_size_mib == 0 {
                bail!("--disk-size-mib must be at least 1");
            }
            let d = out.join("disk.raw");
            let f = fs::File::create(&d).with_context(|| format!("create {}", d.display()))?;
            f.set_len(args.disk_size_mib << 20)?;
            (d, true)
        }
    };

    let disk = fs::canonicalize(&disk)?;
    let mut spec = LinuxGuestSpec::new(
        "guest0",
        &image,
        &with_target(&job, "/dev/vda"),
        accel,
        &out,
    );
    spec.memory_mib = args.memory_mib;
    spec.vcpus = args.vcpus;
    spec.fio_timeout = Duration::from_secs(args.timeout_s);
    let broker = match args.via {
        DiskPath::Qemu => {
            spec.disks.push(GuestDisk::RawFile {
                path: disk.clone(),
                serial: "weir-disk0".into(),
            });
            None
        }
        DiskPath::Broker => {
            let socket = fs::canonicalize(&out)?.join("guest0-disk0.sock");
            let config = BrokerConfig::parse(&format!(
                "[[lun]]\nname = \"lun0\"\npath = {:?}\n\n[[disk]]\nsocket = {:?}\nlun = \"lun0\"\ntenant = \"guest0\"\nserial = \"weir-disk0\"\nqueues = {}\n",
                disk.display().to_string(),
                socket.display().to_string(),
                args.queues
            ))?;
            let broker = Broker::start(&config, true)?;
            spec.disks.push(GuestDisk::VhostUser {
                socket,
                queues: args.queues,
            });
            Some(broker)
        }
    };
    println!(
        "booting guest0 ({} MiB, {} vCPU) with {} as /dev/vda via {}; serial log {}",
        spec.memory_mib,
        spec.vcpus,
        disk.display(),
        match args.via {
            DiskPath::Broker => "weir broker (vhost-user-blk)",
            DiskPath::Qemu => "QEMU virtio-blk",
        },
        spec.serial_log().display()
    );
    let run = spec.run();
    if let Some(broker) = broker {
        let handle = broker.handle();
        handle.shutdown();
        broker.wait();
        for d in &handle.state.disks {
            let c = d.counters.snapshot();
            println!(
                "broker: {} served {} reads ({} MiB), {} writes ({} MiB), {} flushes, {} rejected requests, {} guest interrupts, {} kicks",
                d.tenant,
                c.reads,
                c.read_bytes >> 20,
                c.writes,
                c.write_bytes >> 20,
                c.flushes,
                d.counters.rejected_total(),
                c.notifications,
                c.kicks
            );
        }
    }
    let run = run?;
    fs::write(
        out.join("guest0.fio.json"),
        run.transcript.fio_output.as_deref().unwrap_or(""),
    )?;
    let rows = summarise(&run.report);
    println!(
        "guest0 finished in {:.1} s (kernel booted to /init in {} s, guest kernel {})",
        run.wall_time.as_secs_f64(),
        run.transcript
            .init_uptime_s
            .map(|s| format!("{s:.2}"))
            .unwrap_or_else(|| "?".into()),
        run.transcript.kernel_release.as_deref().unwrap_or("?"),
    );
    println!(
        "\nfio inside the guest (clat percentiles):\n{}",
        render(&rows)
    );

    if args.host_baseline {
        println!(
            "running the same job with host fio on {} ...",
            disk.display()
        );
        let host = run_host_fio(&job, &disk, &out)?;
        let host_rows = summarise(&host);
        println!("\nhost fio on the same file:\n{}", render(&host_rows));
        println!(
            "guest vs host (ratio = guest / host):\n{}",
            render_comparison(&rows, &host_rows, "host")
        );
    }
    if made_disk {
        let _ = fs::remove_file(&disk);
    }
    println!("results: {}", out.display());
    Ok(())
}
