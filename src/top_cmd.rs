//! `weir top`: the broker's tenants, LUNs, paths and topology, live (`weir-top`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weir_top::batch::Format;
use weir_top::{TopOptions, View};

#[derive(clap::Args)]
pub struct TopArgs {
    /// The broker's control socket (its config's `control_socket`).
    #[arg(long, env = "WEIR_CONTROL", default_value = "/run/weir/broker.ctl")]
    control: PathBuf,
    /// Seconds between refreshes.
    #[arg(short = 'd', long, default_value_t = 1.0)]
    delay: f64,
    /// The view shown first (batch mode: the view written as CSV): tenants, luns, paths or
    /// topology.
    #[arg(long, default_value = "tenants")]
    view: String,
    /// Batch mode: no screen; print each refresh (CSV, or JSON lines with --json).
    #[arg(short = 'b', long)]
    batch: bool,
    /// Batch mode: stop after this many iterations [default: run until interrupted].
    #[arg(short = 'n', long)]
    iterations: Option<u64>,
    /// Batch mode: one JSON object per iteration holding every view.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Batch mode: CSV of the chosen view (the default).
    #[arg(long)]
    csv: bool,
}

pub fn run(args: TopArgs) -> Result<()> {
    let Some(view) = View::parse(&args.view) else {
        bail!(
            "--view {}: no such view; use tenants, luns, paths or topology",
            args.view
        );
    };
    if !(args.delay.is_finite() && (0.1..=3600.0).contains(&args.delay)) {
        bail!(
            "--delay {}: must be between 0.1 and 3600 seconds",
            args.delay
        );
    }
    if !args.batch && (args.iterations.is_some() || args.json || args.csv) {
        bail!("-n, --json and --csv are for batch mode: add -b");
    }
    let opts = TopOptions {
        control: args.control,
        delay: Duration::from_secs_f64(args.delay),
        view,
        iterations: args.iterations,
        format: if args.json { Format::Json } else { Format::Csv },
    };
    if args.batch {
        let stdout = std::io::stdout();
        weir_top::batch::run(&opts, &mut stdout.lock())?;
    } else {
        weir_top::screen::run(&opts).context("terminal")?;
    }
    Ok(())
}
