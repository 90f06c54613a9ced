//! `weir dark`: capacity handed to guests that nothing uses (`docs/thin.md`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use weir_broker::control::query;
use weir_broker::dark::LunDark;

#[derive(clap::Args)]
pub struct DarkArgs {
    /// The broker's control socket.
    #[arg(long, env = "WEIR_CONTROL", default_value = "/run/weir/broker.ctl")]
    control: PathBuf,
    /// The report as JSON (the control socket's `dark` answer).
    #[arg(long)]
    json: bool,
    /// A disk away this long (seconds) counts as forgotten.
    #[arg(long, default_value_t = 3600.0)]
    idle_s: f64,
}

fn mib(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

pub fn run(args: DarkArgs) -> Result<()> {
    let answer = query(&args.control, "dark")
        .with_context(|| format!("cannot ask the broker at {}", args.control.display()))?;
    if let Some(e) = answer.get("error") {
        bail!("the broker answered: {e}");
    }
    if args.json {
        println!("{answer}");
        return Ok(());
    }
    let luns: Vec<LunDark> = serde_json::from_value(answer).context("the broker's dark report")?;
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>5} {:>13} {:>11} {:>7} {:>9}  layout",
        "LUN",
        "SIZE MiB",
        "ALLOC",
        "NEVER WR",
        "TABLE",
        "UNPARTITIONED",
        "UNFORMATTED",
        "DARK%",
        "ZERO MiB"
    );
    for l in &luns {
        let parts: Vec<String> = l
            .layout
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "p{} {} MiB{}",
                    p.number,
                    mib(p.size_bytes),
                    p.fs.as_ref().map_or(" (no filesystem)".to_string(), |fs| {
                        format!(" {} {} MiB", fs.kind, mib(fs.size_bytes))
                    })
                )
            })
            .chain(
                l.layout
                    .whole_disk_fs
                    .iter()
                    .map(|fs| format!("whole disk {} {} MiB", fs.kind, mib(fs.size_bytes))),
            )
            .collect();
        println!(
            "{:<12} {:>9} {:>9} {:>9} {:>5} {:>13} {:>11} {:>7.1} {:>9}  {}",
            l.lun,
            mib(l.size_bytes),
            l.allocated_bytes.map_or("-".into(), mib),
            l.never_written_bytes.map_or("-".into(), mib),
            l.layout.table,
            mib(l.layout.unpartitioned_bytes),
            mib(l.layout.unformatted_bytes),
            l.dark_pct,
            mib(l.zero_allocated_bytes),
            if parts.is_empty() {
                "nothing".to_string()
            } else {
                parts.join(", ")
            }
        );
    }
    let forgotten: Vec<String> = luns
        .iter()
        .filter_map(|l| {
            if l.unmapped {
                return Some(format!("{}: mapped to no disk", l.lun));
            }
            let away = l
                .disks
                .iter()
                .all(|d| !d.connected && d.idle_s.is_none_or(|s| s >= args.idle_s));
            away.then(|| {
                let ever = l.disks.iter().any(|d| d.ever_connected);
                format!(
                    "{}: {}",
                    l.lun,
                    if ever {
                        format!("no guest connected for {:.0}+ s", args.idle_s)
                    } else {
                        "no guest connected since the broker started".to_string()
                    }
                )
            })
        })
        .collect();
    if !forgotten.is_empty() {
        println!("\nforgotten LUNs:");
        for f in forgotten {
            println!("  {f}");
        }
    }
    Ok(())
}
