//! fio's JSON output (`--output-format=json`, fio 3.x) as Rust types.
//!
//! Only the fields weir reports are typed; unknown fields are ignored, so newer fio versions
//! still parse. Latencies are kept in nanoseconds as fio gives them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum FioParseError {
    #[error("no JSON object in fio's output (it printed: {0:?})")]
    NoJson(String),
    #[error("fio's JSON does not parse: {0}")]
    Json(#[from] serde_json::Error),
    #[error("fio's JSON has no jobs")]
    NoJobs,
}

/// One fio run's report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FioReport {
    #[serde(rename = "fio version", default)]
    pub fio_version: String,
    pub jobs: Vec<FioJob>,
    /// Lines fio printed into its output before the JSON (warnings, job errors).
    #[serde(skip)]
    pub preamble: Vec<String>,
}

/// One job (or job group) of a report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FioJob {
    pub jobname: String,
    /// The errno that ended the job; 0 when it ran cleanly. A verify failure is EILSEQ (84).
    #[serde(default)]
    pub error: i32,
    #[serde(default)]
    pub read: FioDirection,
    #[serde(default)]
    pub write: FioDirection,
    #[serde(default)]
    pub trim: FioDirection,
    #[serde(rename = "job options", default)]
    pub options: BTreeMap<String, String>,
}

/// Totals for one direction (read, write or trim) of a job.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FioDirection {
    #[serde(default)]
    pub io_bytes: u64,
    #[serde(default)]
    pub bw_bytes: u64,
    #[serde(default)]
    pub iops: f64,
    /// Milliseconds.
    #[serde(default)]
    pub runtime: u64,
    #[serde(default)]
    pub total_ios: u64,
    /// Submission to completion (what the device and everything under the guest's block
    /// layer took).
    #[serde(default)]
    pub clat_ns: LatencyStats,
    /// Issue to completion, including submission.
    #[serde(default)]
    pub lat_ns: LatencyStats,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LatencyStats {
    #[serde(default)]
    pub min: u64,
    #[serde(default)]
    pub max: u64,
    #[serde(default)]
    pub mean: f64,
    /// Percentile ("99.000000") to nanoseconds; absent when fio recorded no I/O.
    #[serde(default)]
    pub percentile: BTreeMap<String, u64>,
}

impl LatencyStats {
    /// The latency at percentile `p` (e.g. 99.0) in nanoseconds, if fio reported it.
    pub fn percentile_ns(&self, p: f64) -> Option<u64> {
        self.percentile
            .iter()
            .find(|(k, _)| k.parse::<f64>().is_ok_and(|v| (v - p).abs() < 1e-6))
            .map(|(_, v)| *v)
    }
}

impl FioDirection {
    pub fn is_empty(&self) -> bool {
        self.total_ios == 0
    }
}

impl FioReport {
    /// Parses what fio wrote with `--output-format=json`. fio writes job errors (e.g.
    /// "you need to specify size=") into the same output before the JSON; those are kept in
    /// [`FioReport::preamble`].
    pub fn parse(text: &str) -> Result<Self, FioParseError> {
        // Offsets from the text itself (`split_inclusive` keeps each line's own terminator):
        // a guest's serial console ends lines in "\r\n", which `lines()` would hide and so
        // shift every offset after it — into the middle of a character, even.
        let start = text
            .split_inclusive('\n')
            .scan(0usize, |offset, line| {
                let at = *offset;
                *offset += line.len();
                Some((at, line))
            })
            .find(|(_, line)| line.trim_start().starts_with('{'))
            .map(|(at, line)| at + (line.len() - line.trim_start().len()))
            .ok_or_else(|| FioParseError::NoJson(text.chars().take(400).collect()))?;
        let mut report: FioReport = serde_json::from_str(&text[start..])?;
        if report.jobs.is_empty() {
            return Err(FioParseError::NoJobs);
        }
        report.preamble = text[..start]
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
        Ok(report)
    }

    /// Jobs that ended with an error, as `(name, errno)`.
    pub fn failed_jobs(&self) -> Vec<(&str, i32)> {
        self.jobs
            .iter()
            .filter(|j| j.error != 0)
            .map(|j| (j.jobname.as_str(), j.error))
            .collect()
    }

    /// The job called `name`.
    pub fn job(&self, name: &str) -> Option<&FioJob> {
        self.jobs.iter().find(|j| j.jobname == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"t: you need to specify size=
{
  "fio version" : "fio-3.33",
  "jobs" : [
    {
      "jobname" : "rr",
      "groupid" : 0,
      "error" : 0,
      "job options" : { "rw" : "randread", "bs" : "4k" },
      "read" : {
        "io_bytes" : 4096000, "bw_bytes" : 40960000, "iops" : 10000.5, "runtime" : 100,
        "total_ios" : 1000,
        "clat_ns" : { "min" : 10, "max" : 900, "mean" : 50.5,
                      "percentile" : { "50.000000" : 40, "99.000000" : 800, "99.900000" : 880 } },
        "lat_ns" : { "min" : 12, "max" : 901, "mean" : 52.0 }
      },
      "write" : { "io_bytes" : 0, "iops" : 0.0, "total_ios" : 0,
                  "clat_ns" : { "min" : 0, "max" : 0, "mean" : 0.0 } },
      "unknown_field" : [1, 2]
    }
  ]
}
"#;

    #[test]
    fn parses_report_and_keeps_preamble() {
        let r = FioReport::parse(SAMPLE).unwrap();
        assert_eq!(r.fio_version, "fio-3.33");
        assert_eq!(r.preamble, vec!["t: you need to specify size="]);
        let j = r.job("rr").unwrap();
        assert_eq!(j.read.total_ios, 1000);
        assert!((j.read.iops - 10000.5).abs() < 1e-9);
        assert_eq!(j.read.clat_ns.percentile_ns(99.0), Some(800));
        assert_eq!(j.read.clat_ns.percentile_ns(99.9), Some(880));
        assert_eq!(j.read.clat_ns.percentile_ns(95.0), None);
        assert!(j.write.is_empty());
        assert_eq!(j.options.get("bs").map(String::as_str), Some("4k"));
        assert!(r.failed_jobs().is_empty());
    }

    #[test]
    fn a_serial_consoles_crlf_lines_and_multibyte_text_before_the_json_parse() {
        // Found by the lab_outputs fuzz target: offsets counted with `lines()` were one short
        // per "\r\n" line, so the JSON was cut wrong — or the cut fell inside a character and
        // panicked.
        let crlf = format!(
            "fio: héllo\r\nwarn: ✓ ok\r\n{}",
            SAMPLE.replace('\n', "\r\n")
        );
        let r = FioReport::parse(&crlf).unwrap();
        assert_eq!(r.job("rr").unwrap().read.total_ios, 1000);
        assert_eq!(r.preamble.len(), 3);
        let indented = format!("x\n   {SAMPLE}");
        assert!(FioReport::parse(&indented).is_ok());
        // The fuzzer's input, as it was: an error, not a panic.
        let found = [
            120u8, 10, 10, 10, 10, 10, 8, 10, 10, 10, 17, 158, 10, 10, 10, 0, 0, 0, 0, 0, 255, 255,
            13, 13, 13, 10, 8, 42, 10, 10, 10, 10, 10, 10, 10, 10, 101, 255, 255, 255, 255, 255,
            255, 115, 112, 255, 255, 13, 13, 13, 10, 10, 10, 10, 98, 125, 246, 10, 123, 34, 106,
            10, 10, 0, 78, 10, 62, 62, 62, 45, 10, 10, 17, 158, 10, 10, 114,
        ];
        assert!(FioReport::parse(&String::from_utf8_lossy(&found)).is_err());
    }

    #[test]
    fn rejects_output_without_json() {
        let e = FioReport::parse("fio: failed to open job file\n").unwrap_err();
        assert!(
            matches!(e, FioParseError::NoJson(ref s) if s.contains("job file")),
            "{e}"
        );
        assert!(matches!(
            FioReport::parse("{\"jobs\": []}"),
            Err(FioParseError::NoJobs)
        ));
        assert!(matches!(
            FioReport::parse("{\"jobs\": [ {"),
            Err(FioParseError::Json(_))
        ));
    }

    /// The real fio on this host produces JSON this module reads.
    #[test]
    fn parses_real_fio_output() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        let out = std::process::Command::new("fio")
            .args([
                "--name=probe",
                "--rw=randwrite",
                "--bs=4k",
                "--size=1M",
                "--ioengine=psync",
                "--output-format=json",
            ])
            .arg(format!("--filename={}", file.display()))
            .output()
            .expect("fio must be installed (scripts/install-deps.sh)");
        let report = FioReport::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let job = report.job("probe").unwrap();
        assert_eq!(job.error, 0);
        assert_eq!(job.write.io_bytes, 1 << 20);
        assert_eq!(job.write.total_ios, 256);
        assert!(job.write.clat_ns.percentile_ns(50.0).is_some());
    }
}
