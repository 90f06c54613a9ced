//! One validator for the settings every weir config shares: the broker's config, `weir sim`'s
//! and `weir run`'s scenarios all hold depth policies, array models, ports, cost models and
//! workloads, and all of them go through [`Check`] here before anything runs.
//!
//! Why bounds and not only "positive": a number a user can type is a number the scheduler
//! thread will compute with. `inf` seconds becomes a vector of `inf` per-second buckets,
//! `min > max` panics `f64::clamp`, a zero bandwidth makes every service time infinite. Each
//! bound below is far beyond any real array (a minute-long service time, 65 536 requests in
//! flight) and well inside what the arithmetic survives.
//!
//! A problem is a `String` that names the field (relative to the value checked; callers
//! prefix it with [`within`]) and says what would be accepted.

use crate::array::LunModel;
use crate::cost::CostModel;
use crate::depth::{DepthPolicy, LatencyParams};
use crate::knee::KneeParams;
use crate::sim::{PortSpec, Workload};

/// The largest window, queue limit or port budget: far above any HBA's or array's.
pub const MAX_DEPTH: u32 = 65_536;
/// The longest service time or link latency an array model may have, µs (one minute).
pub const MAX_SERVICE_US: f64 = 60e6;
/// The longest scenario, seconds of (virtual or real) time: one day.
pub const MAX_DURATION_S: f64 = 86_400.0;
/// The highest open-loop arrival rate, requests per second.
pub const MAX_RATE_IOPS: f64 = 10e6;
/// The largest request a workload may describe (virtio-blk's `size_max` is far smaller).
pub const MAX_REQUEST_BYTES: u64 = 1 << 30;

/// Something whose settings can be wrong.
pub trait Check {
    /// The first problem found, naming the field and what would be accepted.
    fn check(&self) -> Result<(), String>;
}

/// Runs `value`'s check with its problem's field prefixed by `at` (`lun[2].depth` + `min`
/// → `lun[2].depth.min`).
pub fn within(at: &str, value: &impl Check) -> Result<(), String> {
    value.check().map_err(|p| format!("{at}.{p}"))
}

/// `v` is a finite number in `[lo, hi]`.
pub fn number(field: &str, v: f64, lo: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field}: {v} must be a number from {lo} to {hi}"))
    }
}

/// `v` is a finite number in `(0, hi]`.
pub fn positive(field: &str, v: f64, hi: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 && v <= hi {
        Ok(())
    } else {
        Err(format!(
            "{field}: {v} must be a positive number, at most {hi}"
        ))
    }
}

/// `v` is a whole number in `[lo, hi]`.
pub fn count(field: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{field}: {v} must be from {lo} to {hi}"))
    }
}

/// A `[min, max]` pair in order.
pub fn ordered(min: u32, max: u32) -> Result<(), String> {
    if min <= max {
        Ok(())
    } else {
        Err(format!(
            "min: {min} is above max {max}: lower min or raise max"
        ))
    }
}

impl Check for LatencyParams {
    fn check(&self) -> Result<(), String> {
        if let Some(t) = self.target_ms {
            positive("target_ms", t, 60_000.0)?;
        }
        number("alpha", self.alpha, 0.0, 0.999)?;
        number("gamma", self.gamma, 0.001, 1.0)?;
        number("beta", self.beta, 0.0, 1000.0)?;
        number("period_s", self.period_s, 0.001, 60.0)?;
        count("sweep_step", u64::from(self.sweep_step), 1, 1024)?;
        count("min", u64::from(self.min), 1, u64::from(MAX_DEPTH))?;
        count("max", u64::from(self.max), 1, u64::from(MAX_DEPTH))?;
        ordered(self.min, self.max)
    }
}

impl Check for KneeParams {
    fn check(&self) -> Result<(), String> {
        number("period_s", self.period_s, 0.001, 60.0)?;
        count("period_ios", u64::from(self.period_ios), 1, 1 << 20)?;
        number("probe_gain", self.probe_gain, 1.01, 4.0)?;
        number("elasticity", self.elasticity, 0.01, 0.99)?;
        count("cruise_periods", u64::from(self.cruise_periods), 1, 1000)?;
        number("cap_hold_s", self.cap_hold_s, 0.0, 3600.0)?;
        count("start", u64::from(self.start), 1, u64::from(MAX_DEPTH))?;
        count("min", u64::from(self.min), 1, u64::from(MAX_DEPTH))?;
        count("max", u64::from(self.max), 1, u64::from(MAX_DEPTH))?;
        ordered(self.min, self.max)
    }
}

impl Check for DepthPolicy {
    fn check(&self) -> Result<(), String> {
        match self {
            DepthPolicy::Fixed { depth } => count("depth", u64::from(*depth), 1, 1 << 20),
            DepthPolicy::Aimd {
                qfull_sample_size,
                qfull_threshold,
                probe_interval_s,
                min,
                max,
            } => {
                count("qfull_sample_size", u64::from(*qfull_sample_size), 1, 1024)?;
                count("qfull_threshold", u64::from(*qfull_threshold), 1, 1024)?;
                number("probe_interval_s", *probe_interval_s, 0.01, 3600.0)?;
                count("min", u64::from(*min), 1, u64::from(MAX_DEPTH))?;
                count("max", u64::from(*max), 1, u64::from(MAX_DEPTH))?;
                ordered(*min, *max)
            }
            DepthPolicy::Latency(p) => p.check(),
            DepthPolicy::Adaptive(p) => p.check(),
        }
    }
}

impl Check for LunModel {
    fn check(&self) -> Result<(), String> {
        count("servers", u64::from(self.servers), 1, u64::from(MAX_DEPTH))?;
        number("read_base_us", self.read_base_us, 0.0, MAX_SERVICE_US)?;
        number("slow_pct", self.slow_pct, 0.0, 100.0)?;
        number("slow_us", self.slow_us, 0.0, MAX_SERVICE_US)?;
        number("write_base_us", self.write_base_us, 0.0, MAX_SERVICE_US)?;
        positive("unit_mib_per_s", self.unit_mib_per_s, 1e12)?;
        // 0 is meaningful: BUSY as soon as every unit is busy (an array that signals at its
        // knee).
        count(
            "busy_threshold",
            u64::from(self.busy_threshold),
            0,
            u64::from(MAX_DEPTH),
        )?;
        if self.read_base_us == 0.0 && self.unit_mib_per_s >= 1e12 {
            return Err(
                "read_base_us: 0 with an unbounded unit_mib_per_s makes service free; give one \
                 of them a real value"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Check for PortSpec {
    fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name: must not be empty".into());
        }
        count(
            "queue_limit",
            u64::from(self.queue_limit),
            1,
            u64::from(MAX_DEPTH),
        )?;
        if let Some(b) = self.budget {
            count("budget", u64::from(b), 1, u64::from(MAX_DEPTH))?;
        }
        number("latency_us", self.latency_us, 0.0, MAX_SERVICE_US)
    }
}

impl Check for CostModel {
    fn check(&self) -> Result<(), String> {
        number("base", self.base, 0.0, 1e6)?;
        number("per_4k", self.per_4k, 0.0, 1e6)?;
        if self.base + self.per_4k <= 0.0 {
            return Err("base: base and per_4k are both 0, so every request would be free".into());
        }
        Ok(())
    }
}

impl Check for Workload {
    fn check(&self) -> Result<(), String> {
        let (bytes, read_pct) = match self {
            Workload::Closed {
                depth,
                bytes,
                read_pct,
            } => {
                count("depth", u64::from(*depth), 1, u64::from(MAX_DEPTH))?;
                (*bytes, *read_pct)
            }
            Workload::Open {
                rate_iops,
                bytes,
                read_pct,
            } => {
                positive("rate_iops", *rate_iops, MAX_RATE_IOPS)?;
                (*bytes, *read_pct)
            }
        };
        count("bytes", bytes, 512, MAX_REQUEST_BYTES)?;
        number("read_pct", read_pct, 0.0, 100.0)
    }
}

/// The largest config, scenario or job file weir reads: they are a few kilobytes; anything
/// this size is the wrong file.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads a config, scenario or job file — the one place this crate touches a file, so that
/// every reader refuses the same things: what is not a regular file (`/dev/zero` would be read
/// until memory runs out, a FIFO would block) and what is over [`MAX_CONFIG_BYTES`].
pub fn read_config_text(path: &std::path::Path) -> std::io::Result<String> {
    use std::io::{Error, ErrorKind, Read};
    let f = std::fs::File::open(path)?;
    if !f.metadata()?.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file: give a config file",
        ));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::new(
            ErrorKind::InvalidData,
            format!("over {MAX_CONFIG_BYTES} bytes: not a config file"),
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_bounds_out_of_order_are_refused_by_name() {
        let p = DepthPolicy::Latency(LatencyParams {
            target_ms: Some(5.0),
            min: 64,
            max: 8,
            ..LatencyParams::default()
        });
        let e = within("lun[0].depth", &p).unwrap_err();
        assert!(e.starts_with("lun[0].depth.min: 64 is above max 8"), "{e}");
    }

    #[test]
    fn non_finite_and_zero_values_are_refused() {
        assert!(DepthPolicy::Fixed { depth: 0 }.check().is_err());
        let m = LunModel {
            unit_mib_per_s: 0.0,
            ..LunModel::default()
        };
        assert!(m.check().unwrap_err().starts_with("unit_mib_per_s"));
        let m = LunModel {
            read_base_us: f64::NAN,
            ..LunModel::default()
        };
        assert!(m.check().unwrap_err().starts_with("read_base_us"));
        let m = LunModel {
            write_base_us: -1.0,
            ..LunModel::default()
        };
        assert!(m.check().unwrap_err().starts_with("write_base_us"));
        let w = Workload::Open {
            rate_iops: f64::INFINITY,
            bytes: 4096,
            read_pct: 100.0,
        };
        assert!(w.check().unwrap_err().starts_with("rate_iops"));
        assert!(DepthPolicy::default().check().is_ok());
        assert!(LunModel::default().check().is_ok());
        assert!(CostModel::default().check().is_ok());
    }

    #[test]
    fn config_reads_refuse_devices_and_huge_files() {
        let e = read_config_text(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let dir = std::env::temp_dir().join(format!("weir-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
        let e = read_config_text(&big).unwrap_err();
        assert!(e.to_string().contains("not a config file"), "{e}");
        std::fs::write(&big, "a = 1\n").unwrap();
        assert_eq!(read_config_text(&big).unwrap(), "a = 1\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
