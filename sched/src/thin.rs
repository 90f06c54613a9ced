//! Thin pools without the margin call: chunk accounting, an open time-to-full forecast, and
//! threshold events that do not flap. No I/O and no clock: the broker feeds it what its LUNs
//! allocate and free, and the time; `weir sim` can feed it a model's. `docs/thin.md` has the
//! whole story.
//!
//! **Accounting.** A pool of capacity `C` bytes hands out chunks of `c` bytes (64 KiB by
//! default, dm-thin's block size) to the sparse images of its LUNs. Each LUN keeps a bitmap of
//! its allocated chunks ([`ChunkMap`]); a write needing chunks not yet allocated reserves them
//! first, and is refused (held by the broker) when `used + new·c > C`. Discards and
//! write-zeroes with unmap free the chunks they cover whole. Overcommit is `Σ LUN sizes ÷ C`.
//!
//! **Forecast.** Every second the pool's used bytes `u(t)` are sampled. Over each window `W`
//! (1 min, 10 min, 1 h) the allocation rate is the least-squares slope of `u` against `t`
//!
//! ```text
//! r_W = Σ (t_i − t̄)(u_i − ū) / Σ (t_i − t̄)²
//! se_W = sqrt( Σ (u_i − û_i)² / (n − 2) / Σ (t_i − t̄)² )        (the slope's standard error)
//! TTF_W = (C − u_now) / r_W       band: (C − u_now) / (r_W ± 2·se_W)
//! ```
//!
//! reported only while `r_W > 0` and the window holds at least [`MIN_FORECAST_SAMPLES`]
//! samples. A least-squares slope, not the last delta: one burst does not swing it, and its
//! standard error says how much to trust it (a steady writer's band is narrow, a bursty one's
//! wide). Which LUNs drive it: each LUN's growth over the window ÷ the pool's.
//!
//! **Thresholds** (default 70 / 85 / 95 % of `C`): crossing one upwards fires an event once;
//! it re-arms only after use falls [`THRESHOLD_REARM_PCT`] points below it, so use hovering at
//! a threshold does not flap.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// The forecast windows, seconds: 1 minute, 10 minutes, 1 hour.
pub const FORECAST_WINDOWS_S: [f64; 3] = [60.0, 600.0, 3600.0];
/// A window's rate needs this many samples.
pub const MIN_FORECAST_SAMPLES: usize = 5;
/// Points (percent of capacity) use must fall below a threshold before it can fire again.
pub const THRESHOLD_REARM_PCT: f64 = 5.0;
/// A "full within" event fires when the 10-minute window's forecast falls under this, s.
pub const FULL_WITHIN_WARN_S: f64 = 3600.0;

/// Which chunks of one LUN hold data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMap {
    chunk: u64,
    bits: Vec<u64>,
    chunks: u64,
    allocated: u64,
}

impl ChunkMap {
    /// An empty map for `size` bytes in chunks of `chunk` bytes (a power of two).
    pub fn new(size: u64, chunk: u64) -> Self {
        let chunks = size.div_ceil(chunk);
        ChunkMap {
            chunk,
            bits: vec![0; chunks.div_ceil(64) as usize],
            chunks,
            allocated: 0,
        }
    }

    pub fn chunk_bytes(&self) -> u64 {
        self.chunk
    }

    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    pub fn allocated_chunks(&self) -> u64 {
        self.allocated
    }

    pub fn is_allocated(&self, i: u64) -> bool {
        i < self.chunks && self.bits[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    fn set(&mut self, i: u64, on: bool) -> bool {
        if i >= self.chunks {
            return false;
        }
        let (w, b) = ((i / 64) as usize, 1u64 << (i % 64));
        let was = self.bits[w] & b != 0;
        if on {
            self.bits[w] |= b;
        } else {
            self.bits[w] &= !b;
        }
        if was != on {
            if on {
                self.allocated += 1;
            } else {
                self.allocated -= 1;
            }
        }
        was != on
    }

    /// The chunks `[offset, offset + len)` touches.
    fn touched(&self, offset: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        let end = offset
            .saturating_add(len)
            .div_ceil(self.chunk)
            .min(self.chunks);
        (offset / self.chunk).min(end)..end
    }

    /// How many chunks a write of `[offset, offset + len)` would allocate.
    pub fn needed(&self, offset: u64, len: u64) -> u64 {
        self.touched(offset, len)
            .filter(|&i| !self.is_allocated(i))
            .count() as u64
    }

    /// Marks the chunks a write touches; returns the ones it newly allocated.
    pub fn allocate(&mut self, offset: u64, len: u64) -> Vec<u64> {
        self.touched(offset, len)
            .filter(|&i| self.set(i, true))
            .collect()
    }

    /// Marks data found in the backing file (SEEK_DATA) at start.
    pub fn mark_data(&mut self, offset: u64, len: u64) {
        for i in self.touched(offset, len) {
            self.set(i, true);
        }
    }

    /// Clears chunks (a write that never happened gives its reservation back).
    pub fn clear(&mut self, chunks: &[u64]) {
        for &i in chunks {
            self.set(i, false);
        }
    }

    /// A discard of `[offset, offset + len)`: frees the chunks it covers whole (a partly
    /// covered chunk keeps the rest of its data). Returns how many it freed.
    pub fn release(&mut self, offset: u64, len: u64) -> u64 {
        let first = offset.div_ceil(self.chunk);
        let end = (offset.saturating_add(len) / self.chunk).min(self.chunks);
        (first..end).filter(|&i| self.set(i, false)).count() as u64
    }

    /// The byte ranges never written (no chunk allocated), merged, in order.
    pub fn holes(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for i in 0..self.chunks {
            if self.is_allocated(i) {
                continue;
            }
            let (s, e) = (i * self.chunk, (i + 1) * self.chunk);
            match out.last_mut() {
                Some(last) if last.1 == s => last.1 = e,
                _ => out.push((s, e)),
            }
        }
        out
    }
}

/// One forecast window's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowForecast {
    pub window_s: f64,
    pub samples: usize,
    /// Allocation rate, bytes/s (least-squares slope) and its standard error.
    pub rate_bytes_per_s: f64,
    pub rate_stderr: f64,
    /// Seconds until full at that rate, and the band from rate ± 2 standard errors (`None`
    /// when the rate is not positive; `hi` is `None` when the lower rate is not positive).
    pub time_to_full_s: Option<f64>,
    pub time_to_full_lo_s: Option<f64>,
    pub time_to_full_hi_s: Option<f64>,
}

/// Samples of used bytes over time, with their least-squares forecast.
#[derive(Debug, Clone, Default)]
pub struct Forecaster {
    samples: VecDeque<(f64, f64)>,
}

impl Forecaster {
    pub fn sample(&mut self, t: f64, used_bytes: u64) {
        self.samples.push_back((t, used_bytes as f64));
        let keep_after = t - FORECAST_WINDOWS_S[FORECAST_WINDOWS_S.len() - 1];
        while self.samples.front().is_some_and(|(s, _)| *s < keep_after) {
            self.samples.pop_front();
        }
    }

    /// The used bytes `window_s` ago (the oldest sample inside the window) and now.
    pub fn growth(&self, window_s: f64) -> Option<f64> {
        let now = self.samples.back()?;
        let first = self.samples.iter().find(|(t, _)| *t >= now.0 - window_s)?;
        Some(now.1 - first.1)
    }

    /// The window's rate, and the time to fill what is free *now* (`used_now`, which may be
    /// newer than the last sample) at that rate.
    pub fn forecast(&self, window_s: f64, capacity: u64, used_now: u64) -> WindowForecast {
        let now_t = self.samples.back().map_or(0.0, |s| s.0);
        let pts: Vec<(f64, f64)> = self
            .samples
            .iter()
            .copied()
            .filter(|(t, _)| *t >= now_t - window_s)
            .collect();
        let n = pts.len();
        let mut f = WindowForecast {
            window_s,
            samples: n,
            rate_bytes_per_s: 0.0,
            rate_stderr: 0.0,
            time_to_full_s: None,
            time_to_full_lo_s: None,
            time_to_full_hi_s: None,
        };
        if n < MIN_FORECAST_SAMPLES {
            return f;
        }
        let nf = n as f64;
        let tm = pts.iter().map(|p| p.0).sum::<f64>() / nf;
        let um = pts.iter().map(|p| p.1).sum::<f64>() / nf;
        let stt: f64 = pts.iter().map(|p| (p.0 - tm).powi(2)).sum();
        if stt <= 0.0 {
            return f;
        }
        let slope = pts.iter().map(|p| (p.0 - tm) * (p.1 - um)).sum::<f64>() / stt;
        let resid: f64 = pts
            .iter()
            .map(|p| (p.1 - (um + slope * (p.0 - tm))).powi(2))
            .sum();
        let se = (resid / (nf - 2.0) / stt).sqrt();
        f.rate_bytes_per_s = slope;
        f.rate_stderr = se;
        let free = capacity.saturating_sub(used_now) as f64;
        let ttf = |r: f64| (r > 0.0).then(|| free / r);
        f.time_to_full_s = ttf(slope);
        if f.time_to_full_s.is_some() {
            f.time_to_full_lo_s = ttf(slope + 2.0 * se);
            f.time_to_full_hi_s = ttf(slope - 2.0 * se);
        }
        f
    }
}

/// A threshold crossing, or the forecast saying full soon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolEvent {
    pub at_s: f64,
    /// `threshold` or `full-within`.
    pub what: String,
    /// The threshold crossed (percent), or the forecast time to full (s).
    pub value: f64,
    pub used_pct: f64,
}

/// Fires each threshold once per upward crossing, re-armed below `threshold − 5` points.
#[derive(Debug, Clone)]
pub struct ThresholdWatch {
    thresholds: Vec<f64>,
    armed: Vec<bool>,
    full_soon_armed: bool,
}

impl ThresholdWatch {
    pub fn new(thresholds_pct: &[f64]) -> Self {
        ThresholdWatch {
            thresholds: thresholds_pct.to_vec(),
            armed: vec![true; thresholds_pct.len()],
            full_soon_armed: true,
        }
    }

    /// The events of one sample: `used_pct` now, and the 10-minute forecast.
    pub fn observe(&mut self, at_s: f64, used_pct: f64, ttf_s: Option<f64>) -> Vec<PoolEvent> {
        let mut out = Vec::new();
        for (th, armed) in self.thresholds.iter().zip(self.armed.iter_mut()) {
            if *armed && used_pct >= *th {
                *armed = false;
                out.push(PoolEvent {
                    at_s,
                    what: "threshold".into(),
                    value: *th,
                    used_pct,
                });
            } else if !*armed && used_pct < th - THRESHOLD_REARM_PCT {
                *armed = true;
            }
        }
        match ttf_s {
            Some(t) if t < FULL_WITHIN_WARN_S && self.full_soon_armed => {
                self.full_soon_armed = false;
                out.push(PoolEvent {
                    at_s,
                    what: "full-within".into(),
                    value: t,
                    used_pct,
                });
            }
            // Re-armed once the forecast is comfortably past the warning (or growth stopped).
            Some(t) if t > 2.0 * FULL_WITHIN_WARN_S => self.full_soon_armed = true,
            None => self.full_soon_armed = true,
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K64: u64 = 64 << 10;

    #[test]
    fn a_write_allocates_the_chunks_it_touches_once() {
        let mut m = ChunkMap::new(1 << 20, K64); // 16 chunks
        assert_eq!(m.chunks(), 16);
        assert_eq!(m.needed(0, 4096), 1);
        assert_eq!(m.allocate(0, 4096), vec![0]);
        assert_eq!(
            m.needed(4096, 4096),
            0,
            "same chunk: an overwrite needs nothing"
        );
        // 8 KiB straddling chunks 0 and 1.
        assert_eq!(m.needed(K64 - 4096, 8192), 1);
        assert_eq!(m.allocate(K64 - 4096, 8192), vec![1]);
        assert_eq!(m.allocated_chunks(), 2);
        // Past the end: clipped, never a panic.
        assert_eq!(m.needed(u64::MAX - 10, 100), 0);
        assert!(m.allocate(16 * K64, 4096).is_empty());
    }

    #[test]
    fn a_discard_frees_only_the_chunks_it_covers_whole() {
        let mut m = ChunkMap::new(1 << 20, K64);
        m.allocate(0, 4 * K64);
        assert_eq!(m.release(4096, K64), 0, "covers no chunk whole");
        assert_eq!(m.release(K64, 2 * K64), 2);
        assert_eq!(m.allocated_chunks(), 2);
        assert_eq!(m.holes(), vec![(K64, 3 * K64), (4 * K64, 16 * K64)]);
        m.clear(&[0]);
        assert_eq!(m.allocated_chunks(), 1);
    }

    #[test]
    fn a_steady_writer_gets_an_exact_rate_and_time_to_full_with_a_narrow_band() {
        let mut f = Forecaster::default();
        let cap = 100 << 20;
        for s in 0..=30 {
            f.sample(s as f64, s * (1 << 20)); // 1 MiB/s
        }
        let w = f.forecast(60.0, cap, 30 << 20);
        assert!((w.rate_bytes_per_s - 1048576.0).abs() < 1e-6, "{w:?}");
        assert!((w.time_to_full_s.unwrap() - 70.0).abs() < 1e-6);
        assert!(w.rate_stderr < 1e-6);
        assert_eq!(w.samples, 31);
        // The 1-minute window forgets what came before it.
        let mut g = Forecaster::default();
        for s in 0..=200 {
            let used = if s < 100 { s * 2 } else { 200 + (s - 100) } << 20;
            g.sample(s as f64, used);
        }
        let w = g.forecast(60.0, cap << 2, 300 << 20);
        assert!((w.rate_bytes_per_s / 1048576.0 - 1.0).abs() < 1e-9, "{w:?}");
        let h = g.forecast(3600.0, cap << 2, 300 << 20);
        assert!(
            h.rate_bytes_per_s > w.rate_bytes_per_s,
            "the hour saw the 2 MiB/s part"
        );
    }

    #[test]
    fn no_forecast_without_samples_or_without_growth() {
        let mut f = Forecaster::default();
        f.sample(0.0, 10);
        assert_eq!(f.forecast(60.0, 100, 10).time_to_full_s, None);
        for s in 1..10 {
            f.sample(s as f64, 10);
        }
        let w = f.forecast(60.0, 100, 10);
        assert_eq!((w.rate_bytes_per_s, w.time_to_full_s), (0.0, None));
        let mut shrinking = Forecaster::default();
        for s in 0..10 {
            shrinking.sample(s as f64, 1000 - s * 10);
        }
        assert_eq!(shrinking.forecast(60.0, 2000, 910).time_to_full_s, None);
    }

    #[test]
    fn a_noisy_writer_gets_a_band_around_its_forecast() {
        let mut f = Forecaster::default();
        let mut rng = crate::rng::SplitMix64::new(7);
        let mut used = 0u64;
        for s in 0..60 {
            used += (rng.next_f64() * 2.0 * 1048576.0) as u64; // mean 1 MiB/s, bursty
            f.sample(s as f64, used);
        }
        let w = f.forecast(60.0, 1 << 30, used);
        let (lo, mid, hi) = (
            w.time_to_full_lo_s.unwrap(),
            w.time_to_full_s.unwrap(),
            w.time_to_full_hi_s.unwrap(),
        );
        assert!(lo < mid && mid < hi, "{w:?}");
        assert!((w.rate_bytes_per_s / 1048576.0 - 1.0).abs() < 0.2, "{w:?}");
    }

    #[test]
    fn thresholds_fire_once_and_do_not_flap_around_the_line() {
        let mut w = ThresholdWatch::new(&[70.0, 85.0, 95.0]);
        let mut fired = Vec::new();
        for (i, pct) in [60.0, 70.5, 69.8, 70.2, 69.0, 71.0, 86.0, 96.0, 50.0, 72.0]
            .iter()
            .enumerate()
        {
            for e in w.observe(i as f64, *pct, None) {
                fired.push((i, e.value));
            }
        }
        // 70 at 70.5; hovering 69–71 fires nothing; 85, 95; after falling to 50, 70 again.
        assert_eq!(fired, vec![(1, 70.0), (6, 85.0), (7, 95.0), (9, 70.0)]);
        let e = w.observe(10.0, 72.0, Some(1800.0));
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].what, "full-within");
        assert!(w.observe(11.0, 72.0, Some(1700.0)).is_empty(), "once");
    }
}
