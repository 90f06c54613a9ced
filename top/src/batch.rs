//! Batch mode (esxtop's `-b`): `-n N` iterations, each a fresh telemetry second, written as CSV
//! rows of one view (a header once, a `time_s` column first) or as one JSON object per line
//! holding every view. A second the broker could not be reached writes nothing to stdout and
//! one line to stderr; the run fails only if no iteration got an answer.

use std::io::Write;
use std::time::{Duration, Instant};

use serde::Serialize;
use thiserror::Error;

use crate::TopOptions;
use crate::rows::{LunRow, PathRow, TenantRow, lun_rows, path_rows, tenant_rows, topology_lines};
use crate::source::{ControlSource, Snapshot, SourceError};
use crate::table::csv_field;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Json,
}

#[derive(Debug, Error)]
pub enum BatchError {
    #[error("no answer from the broker in {iterations} iteration(s): {last}")]
    NeverAnswered { iterations: u64, last: SourceError },
    #[error("cannot write the output: {0}")]
    Write(#[from] std::io::Error),
}

/// One JSON line.
#[derive(Serialize)]
struct JsonIteration<'a> {
    /// The telemetry second's end, on the broker's clock.
    t_s: Option<f64>,
    interval_s: Option<f64>,
    tenants: Vec<TenantRow>,
    luns: Vec<LunRow>,
    paths: Vec<PathRow>,
    topology: Vec<&'a str>,
}

/// Waits for a telemetry second newer than `after` (at most two periods), so consecutive
/// iterations are consecutive seconds rather than the same one read twice.
fn next_snapshot(
    source: &ControlSource,
    after: Option<f64>,
    delay: Duration,
) -> Result<Snapshot, SourceError> {
    let give_up = Instant::now() + delay * 2 + Duration::from_millis(500);
    loop {
        let snap = source.fetch()?;
        let t = snap.sample.as_ref().map(|s| s.t_s);
        let fresh = match (t, after) {
            (Some(t), Some(a)) => t > a,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if fresh || Instant::now() >= give_up {
            return Ok(snap);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn run(opts: &TopOptions, out: &mut impl Write) -> Result<(), BatchError> {
    let source = ControlSource::new(&opts.control);
    let mut last_t = None;
    let mut answered = 0u64;
    let mut last_error = None;
    let mut header_written = false;
    let mut i = 0u64;
    while opts.iterations.is_none_or(|n| i < n) {
        if i > 0 {
            std::thread::sleep(opts.delay.saturating_sub(Duration::from_millis(50)));
        }
        i += 1;
        let snap = match next_snapshot(&source, last_t, opts.delay) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("weir top: {e}");
                last_error = Some(e);
                continue;
            }
        };
        answered += 1;
        last_t = snap.sample.as_ref().map(|s| s.t_s);
        match opts.format {
            Format::Json => {
                let lines = topology_lines(&snap);
                let it = JsonIteration {
                    t_s: last_t,
                    interval_s: snap.sample.as_ref().map(|s| s.interval_s),
                    tenants: tenant_rows(&snap),
                    luns: lun_rows(&snap),
                    paths: path_rows(&snap),
                    topology: lines.iter().map(|(l, _)| l.as_str()).collect(),
                };
                let line = serde_json::to_string(&it).map_err(std::io::Error::other)?;
                writeln!(out, "{line}")?;
            }
            Format::Csv => {
                let table = opts.view.table(&snap, "");
                if !header_written {
                    let mut h = vec!["time_s".to_string()];
                    h.extend(table.headers.iter().map(|s| csv_field(s)));
                    writeln!(out, "{}", h.join(","))?;
                    header_written = true;
                }
                let t = last_t.map_or(String::new(), |t| format!("{t:.3}"));
                for (cells, _) in &table.rows {
                    let mut fields = vec![t.clone()];
                    fields.extend(cells.iter().map(|c| csv_field(c.text())));
                    writeln!(out, "{}", fields.join(","))?;
                }
            }
        }
        out.flush()?;
    }
    match (answered, last_error) {
        (0, Some(last)) => Err(BatchError::NeverAnswered {
            iterations: i,
            last,
        }),
        _ => Ok(()),
    }
}
