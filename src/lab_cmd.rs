//! `weir lab`: the lab VM (docs/lab.md): an L1 Linux host with AMD-V KVM under QEMU TCG, where
//! `weir vm` boots Linux guests on a machine whose own KVM cannot.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weir_guest_images::ImageStore;
use weir_labvm::{HostKernel, LabContents, LabOptions};

#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Boot the lab VM, run a shell command in it (with `weir`, the Linux test guest at
    /// $WEIR_GUEST_IMAGE and the probe at $WEIR_PROBE_KERNEL), bring back its output, its exit
    /// status and what it wrote to $WEIR_LAB_RESULTS (/results).
    Run(LabRunArgs),
    /// Fetch the lab VM's kernel (Debian's cloud kernel with kvm-amd) into the image cache.
    Kernel,
}

#[derive(clap::Args)]
pub struct LabRunArgs {
    /// vCPUs of the lab VM (QEMU runs them on host threads: MTTCG).
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// RAM of the lab VM in MiB (its root filesystem and /tmp live in it).
    #[arg(long, default_value_t = 3072)]
    mem_mib: u64,
    /// Stop the lab VM after this many seconds (exit status 124).
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Where /results from inside lands [default: lab-results/<unix time>].
    #[arg(long)]
    results: Option<PathBuf>,
    /// A host file to copy in: `SRC[:DEST]` (DEST default: /lab/files/<name>). Repeatable.
    #[arg(long = "file")]
    files: Vec<String>,
    /// The script to run instead of the command words.
    #[arg(long)]
    script: Option<PathBuf>,
    /// Leave out the Linux test guest image (a faster boot when the command does not need it).
    #[arg(long)]
    no_guest_image: bool,
    /// Put QEMU (and its firmware) in too, for comparisons inside (`weir bench vm --guest
    /// linux`); adds ~60 MB and a few seconds of boot.
    #[arg(long)]
    with_qemu: bool,
    /// Do not copy the lab VM's console to the terminal as it runs.
    #[arg(long, short)]
    quiet: bool,
    /// The shell command to run inside (joined with spaces).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(command: LabCommand) -> Result<()> {
    match command {
        LabCommand::Kernel => {
            let root = ImageStore::from_env().root;
            let k = HostKernel::ensure(&root, &mut std::io::stdout())?;
            println!(
                "{} ({}, from {})",
                k.dir.display(),
                k.manifest.release,
                k.manifest.deb
            );
            Ok(())
        }
        LabCommand::Run(args) => lab_run(args),
    }
}

fn lab_run(args: LabRunArgs) -> Result<()> {
    let command = match (&args.script, args.command.is_empty()) {
        (Some(s), _) => {
            std::fs::read_to_string(s).with_context(|| format!("read --script {}", s.display()))?
        }
        (None, false) => args.command.join(" "),
        (None, true) => bail!("give a command to run in the lab VM (after --) or --script FILE"),
    };
    let mut files = Vec::new();
    for f in &args.files {
        let (src, dst) = match f.split_once(':') {
            Some((s, d)) => (PathBuf::from(s), d.to_string()),
            None => {
                let p = PathBuf::from(f);
                let name = p
                    .file_name()
                    .with_context(|| format!("--file {f}: no file name"))?
                    .to_string_lossy()
                    .to_string();
                (p, format!("/lab/files/{name}"))
            }
        };
        if !src.is_file() {
            bail!("--file {f}: {} is not a file", src.display());
        }
        files.push((src, dst));
    }
    let store = ImageStore::from_env();
    let guest_image = if args.no_guest_image {
        None
    } else {
        Some(
            store
                .ensure(false, &mut std::io::stderr())
                .context("the Linux test guest image (weir image build; or --no-guest-image)")?,
        )
    };
    let probe = weir_lab::probe::build().ok();
    let contents = LabContents {
        weir: Some(std::env::current_exe().context("locate the weir binary")?),
        guest_image,
        probe,
        files,
        qemu: args.with_qemu,
        command,
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let results = args
        .results
        .unwrap_or_else(|| PathBuf::from(format!("lab-results/{stamp}")));
    let work = tempfile::Builder::new()
        .prefix("weir-lab-")
        .tempdir()
        .context("create a work directory")?;
    let options = LabOptions {
        image_root: store.root.clone(),
        cpus: args.cpus,
        mem_mib: args.mem_mib,
        timeout: Duration::from_secs(args.timeout_s),
        echo: !args.quiet,
        ..LabOptions::default()
    };
    let run = weir_labvm::run(
        &options,
        &contents,
        work.path(),
        Some(&results),
        &mut std::io::stderr(),
    )?;
    if args.quiet {
        print!("{}", run.output);
    }
    let console_log = results.join("lab-console.log");
    std::fs::create_dir_all(&results).ok();
    std::fs::write(&console_log, &run.console).ok();
    eprintln!(
        "weir lab: {} in {:.1} s wall (L1 ready at {} s, -cpu {}); results in {}",
        match (run.exit, run.timed_out) {
            (Some(rc), _) => format!("exit status {rc}"),
            (None, true) => format!("timed out after {} s", args.timeout_s),
            (None, false) => "the VM ended without an exit status (see lab-console.log)".into(),
        },
        run.wall.as_secs_f64(),
        run.boot_uptime_s
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "?".into()),
        run.cpu_model,
        results.display()
    );
    if let Some(what) = run.known_flake {
        eprintln!(
            "weir lab: {what}, twice in a row: a failure of QEMU's nested-virtualization \
             emulation, not weir's (docs/lab.md)"
        );
    }
    match (run.exit, run.timed_out) {
        (Some(0), _) => Ok(()),
        (Some(rc), _) => std::process::exit(rc),
        (None, true) => std::process::exit(124),
        (None, false) => std::process::exit(1),
    }
}
