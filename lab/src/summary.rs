//! One line per fio job and direction: what a user reads after a run, and the comparison of a
//! guest's numbers with a baseline's (host fio on the same file) measured in the same run.

use std::fmt::Write as _;

use serde::Serialize;

use crate::fio::{FioDirection, FioReport};

/// A job's figures in one direction.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JobSummary {
    pub job: String,
    /// "read", "write" or "trim".
    pub direction: &'static str,
    pub iodepth: String,
    pub block_size: String,
    pub iops: f64,
    pub mib_per_s: f64,
    pub ios: u64,
    pub clat_p50_us: Option<f64>,
    pub clat_p99_us: Option<f64>,
    pub clat_p999_us: Option<f64>,
}

/// Summaries of every direction that did I/O, in job order.
pub fn summarise(report: &FioReport) -> Vec<JobSummary> {
    let mut rows = Vec::new();
    for job in &report.jobs {
        let opt = |k: &str, d: &str| job.options.get(k).cloned().unwrap_or_else(|| d.to_string());
        let dirs: [(&'static str, &FioDirection); 3] = [
            ("read", &job.read),
            ("write", &job.write),
            ("trim", &job.trim),
        ];
        for (direction, d) in dirs {
            if d.is_empty() {
                continue;
            }
            let us = |p: f64| d.clat_ns.percentile_ns(p).map(|ns| ns as f64 / 1000.0);
            rows.push(JobSummary {
                job: job.jobname.clone(),
                direction,
                iodepth: opt("iodepth", "1"),
                // fio lists only a job's own options, not inherited globals: derive the size.
                block_size: human_size(d.io_bytes / d.total_ios.max(1)),
                iops: d.iops,
                mib_per_s: d.bw_bytes as f64 / (1024.0 * 1024.0),
                ios: d.total_ios,
                clat_p50_us: us(50.0),
                clat_p99_us: us(99.0),
                clat_p999_us: us(99.9),
            });
        }
    }
    rows
}

fn human_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}m", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}k", b >> 10),
        b => format!("{b}"),
    }
}

/// A latency figure in µs, or "n/a" when there is none: a missing figure never prints as 0.
pub fn fmt_us(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "n/a".into())
}

/// A table of one run's jobs.
pub fn render(rows: &[JobSummary]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<5} {:>5} {:>4} {:>10} {:>9} {:>9} {:>9} {:>9}",
        "job", "dir", "bs", "qd", "IOPS", "MiB/s", "p50 us", "p99 us", "p99.9 us"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:<16} {:<5} {:>5} {:>4} {:>10.0} {:>9.1} {:>9} {:>9} {:>9}",
            r.job,
            r.direction,
            r.block_size,
            r.iodepth,
            r.iops,
            r.mib_per_s,
            fmt_us(r.clat_p50_us),
            fmt_us(r.clat_p99_us),
            fmt_us(r.clat_p999_us)
        );
    }
    s
}

/// The guest's rows beside the baseline's, matched by job and direction, with ratios
/// (guest / baseline).
pub fn render_comparison(
    guest: &[JobSummary],
    baseline: &[JobSummary],
    baseline_name: &str,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:<5} {:>4} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9}",
        "job",
        "dir",
        "qd",
        "guest IOPS",
        format!("{baseline_name} IOPS"),
        "ratio",
        "guest p50",
        format!("{baseline_name} p50"),
        "ratio",
        "guest p99",
        format!("{baseline_name} p99")
    );
    for g in guest {
        let Some(b) = baseline
            .iter()
            .find(|b| b.job == g.job && b.direction == g.direction)
        else {
            continue;
        };
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "{:<16} {:<5} {:>4} {:>10.0} {:>10.0} {:>7} {:>9} {:>9} {:>7} {:>9} {:>9}",
            g.job,
            g.direction,
            g.iodepth,
            g.iops,
            b.iops,
            ratio(Some(g.iops), Some(b.iops)),
            fmt_us(g.clat_p50_us),
            fmt_us(b.clat_p50_us),
            ratio(g.clat_p50_us, b.clat_p50_us),
            fmt_us(g.clat_p99_us),
            fmt_us(b.clat_p99_us),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_only_directions_with_io() {
        let json = r#"{"jobs":[{"jobname":"rw","error":0,"job options":{"iodepth":"32","bs":"4k"},
            "read":{"iops":100.0,"bw_bytes":409600,"io_bytes":409600,"total_ios":100,
                    "clat_ns":{"percentile":{"50.000000":2000,"99.000000":9000,"99.900000":9900}}},
            "write":{"iops":0.0,"total_ios":0}}]}"#;
        let report = FioReport::parse(json).unwrap();
        let rows = summarise(&report);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].direction, "read");
        assert_eq!(rows[0].iodepth, "32");
        assert_eq!(rows[0].block_size, "4k");
        assert_eq!(rows[0].clat_p99_us, Some(9.0));
        let table = render(&rows);
        assert!(table.contains("rw"), "{table}");
        let cmp = render_comparison(&rows, &rows, "host");
        assert!(cmp.contains("1.00"), "{cmp}");
    }
}
