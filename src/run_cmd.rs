//! `weir run` and `weir report`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use weir_guest_images::ImageStore;
use weir_lab::host::{AccelChoice, HostFacts};
use weir_lab::runner::{self, RunEnv};
use weir_lab::scenario::{self, Engine};
use weir_vmm::host::HostVirtualization;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The scenario (TOML; see docs/scenarios.md).
    pub scenario: PathBuf,
    /// Results directory [default: runs/<scenario>-<unix time>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bars (logs and CI).
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    let virt = HostVirtualization::detect();
    let hw = virt.linux_boots_under_kvm();
    let text = weir_sched::check::read_config_text(&args.scenario)
        .with_context(|| format!("cannot read scenario {}", args.scenario.display()))?;
    let s = scenario::load(&args.scenario).map_err(anyhow::Error::msg)?;
    let r = scenario::resolve(&s, &args.scenario, hw)
        .map_err(|e| anyhow::anyhow!("scenario {}: {e}", args.scenario.display()))?;
    // Everything checked before anything starts: engines, images, the output directory.
    let needs_image = r.guests.iter().any(|(e, _)| *e != Engine::WeirProbe);
    let needs_probe = r.guests.iter().any(|(e, _)| *e == Engine::WeirProbe);
    if needs_probe && !virt.kvm_usable() {
        bail!(
            "scenario {}: weir-probe guests need /dev/kvm ({virt})",
            args.scenario.display()
        );
    }
    let needs_qemu = r.guests.iter().any(|(e, _)| *e == Engine::Qemu);
    let image = if needs_image {
        if let Some(m) = weir_lab::testenv::qemu_missing().filter(|_| needs_qemu) {
            bail!(
                "scenario {}: qemu guests need QEMU: {m}",
                args.scenario.display()
            );
        }
        Some(ImageStore::from_env().ensure(false, &mut std::io::stdout())?)
    } else {
        None
    };
    let probe = if needs_probe {
        Some(weir_lab::probe::build().context("building the probe guest")?)
    } else {
        None
    };
    let out = args.out.unwrap_or_else(|| runner::default_out(&r.name));
    if out.join("results.json").exists() {
        bail!(
            "{} already holds results; give another --out",
            out.display()
        );
    }
    let out = std::fs::canonicalize(".")?.join(out);
    let accel = AccelChoice::for_linux_guest(&virt);
    let count = |e: Engine| r.guests.iter().filter(|(x, _)| *x == e).count();
    let mut engines = Vec::new();
    if count(Engine::Weir) > 0 {
        engines.push(format!(
            "{} Linux guest(s) in weir vm (KVM, hardware virtualization)",
            count(Engine::Weir)
        ));
    }
    if count(Engine::Qemu) > 0 {
        engines.push(format!(
            "{} Linux guest(s) under QEMU ({accel})",
            count(Engine::Qemu)
        ));
    }
    if count(Engine::WeirProbe) > 0 {
        engines.push(format!(
            "{} probe guest(s) in weir vm",
            count(Engine::WeirProbe)
        ));
    }
    println!("guests: {}", engines.join("; "));
    if count(Engine::Qemu) > 0 && !hw {
        println!(
            "note: this host's KVM cannot boot Linux, so Linux guests run under QEMU TCG; for \
             Linux in weir vm (engine = \"weir\") run the scenario in the lab VM: weir lab run \
             --file {0} -- weir run /lab/files/{1} --out /results/run (docs/lab.md)",
            args.scenario.display(),
            args.scenario
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default()
        );
    }
    println!(
        "running {} ({} guest(s), {} policy run(s){}) into {}",
        r.name,
        s.guests.len(),
        r.policies.len() as u32 * s.repeat,
        if s.victim.is_some() {
            " + victim solo runs"
        } else {
            ""
        },
        out.display()
    );
    let env = RunEnv {
        weir: std::env::current_exe()?,
        image,
        probe,
        accel,
        facts: HostFacts::collect(&virt),
        hw_virt: hw,
        tsc_khz: weir_lab::host::host_tsc_khz().unwrap_or(1_000_000),
        progress: !args.no_progress,
    };
    let results = runner::run(&r, &text, &env, &out).map_err(anyhow::Error::msg)?;
    println!("\n{}", weir_lab::report::terminal(&results));
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

pub fn report(dir: &Path) -> Result<()> {
    let (table, page) = weir_lab::report::rerender(dir).map_err(anyhow::Error::msg)?;
    println!("{table}");
    println!("report: {}", page.display());
    Ok(())
}

/// A `weir run` scenario as a simulation (guests become tenants of their workload's shape).
pub fn sim_scenario(path: &Path) -> Result<weir_sched::sim::SimScenario> {
    let s = scenario::load(path).map_err(anyhow::Error::msg)?;
    let r = scenario::resolve(&s, path, true).map_err(anyhow::Error::msg)?;
    Ok(scenario::to_sim(&s, &r.guests))
}
