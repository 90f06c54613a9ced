//! How noisy a device's throughput is, measured: the index of dispersion of its completions.
//!
//! The knee search compares the throughput of two periods. If completions were a Poisson
//! stream, a period of `n` of them would measure its throughput within about `1/√n`, and a
//! fixed `period_ios` would buy a fixed confidence. Real devices and service-time mixes are
//! noisier: two service units with 10 % of requests 40× slower (a cache miss), or a host's
//! file whose throughput swings ±10–15 % per 0.1 s because the guests and the broker share two
//! cores. Then the relative variance of a period of `n` completions is `φ / n`, where
//!
//! ```text
//!   φ = Var[N(τ)] / E[N(τ)]                                   (index of dispersion)
//! ```
//!
//! is the variance-to-mean ratio of the completions `N(τ)` counted in slices of length `τ`
//! (1 for Poisson; the squared coefficient of variation of the service time for a renewal
//! stream of it). To keep the confidence that `period_ios` was chosen for, a period needs
//! `φ · period_ios` completions.
//!
//! **Estimator.** A period at one window is cut into slices of `τ = period_s`; the first slice
//! is dropped (the window changed at its start and the device was still settling). Of two
//! consecutive slices with rates `r₁`, `r₂` (completions ÷ slice length), the Allan estimate
//!
//! ```text
//!   φ̂ = ½ (r₂ − r₁)² · τ̄ / r̄          (r̄ = (r₁ + r₂)/2, τ̄ their mean length)
//! ```
//!
//! is unbiased for `φ` of a stationary stream, and a trend (a capacity change within the
//! period) enters it only through the step between two slices, not through the spread of the
//! whole period. The estimates are averaged with a decay of `DECAY` per pair (a memory of about
//! ten pairs: one cruise gives five); `φ` is held to `[1, MAX]`: a stream more regular than
//! Poisson (many units of exponential service behave close to it) keeps `period_ios` as is.
//!
//! **Failure modes.** Noise correlated over longer than a slice (a device that alternates
//! fast and slow seconds) is under-counted: slices then look alike and the periods stay short.
//! A capacity change inside a cruise counts once as noise and lengthens the next probes for a
//! few cycles.

/// Weight of an older pair against the next.
const DECAY: f64 = 0.9;
/// The largest φ taken: beyond, a period is cut by its time limit anyway.
const MAX: f64 = 256.0;

/// Cuts one period into slices and collects the Allan pairs of its slices' rates.
#[derive(Debug, Clone, Default)]
pub struct SliceMeter {
    slice_start: f64,
    count: u64,
    /// Slices closed in this period.
    slices: u32,
    /// The last closed slice's rate and length, once past the first slice.
    prev: Option<(f64, f64)>,
    /// Σ φ̂ over the pairs so far, and the number of pairs.
    sum: f64,
    pairs: u32,
}

impl SliceMeter {
    /// A new period starts at `now` (its window is new: nothing carries over).
    pub fn start(&mut self, now: f64) {
        *self = SliceMeter {
            slice_start: now,
            ..SliceMeter::default()
        };
    }

    pub fn on_completion(&mut self) {
        self.count += 1;
    }

    /// Closes the slice under way if it lasted `slice_s`.
    pub fn tick(&mut self, now: f64, slice_s: f64) {
        let len = now - self.slice_start;
        if len < slice_s - 1e-9 || len <= 0.0 {
            return;
        }
        let rate = self.count as f64 / len;
        self.slices += 1;
        if self.slices > 1 {
            if let Some((r1, len1)) = self.prev {
                let mean = (r1 + rate) / 2.0;
                if mean > 0.0 {
                    self.sum += 0.5 * (rate - r1).powi(2) * (len + len1) / 2.0 / mean;
                    self.pairs += 1;
                }
            }
            self.prev = Some((rate, len));
        }
        self.slice_start = now;
        self.count = 0;
    }

    /// `(Σ φ̂, pairs)` of the period so far.
    pub fn pairs(&self) -> (f64, u32) {
        (self.sum, self.pairs)
    }
}

/// The running estimate of φ.
#[derive(Debug, Clone)]
pub struct Dispersion {
    num: f64,
    den: f64,
}

impl Default for Dispersion {
    fn default() -> Self {
        Dispersion { num: 0.0, den: 0.0 }
    }
}

impl Dispersion {
    /// Adds a period's pairs (`sum` of their φ̂ over `pairs` of them).
    pub fn add(&mut self, sum: f64, pairs: u32) {
        if pairs == 0 || !sum.is_finite() {
            return;
        }
        let keep = DECAY.powi(pairs as i32);
        self.num = self.num * keep + sum;
        self.den = self.den * keep + f64::from(pairs);
    }

    /// φ, in `[1, MAX]` (1 before any pair).
    pub fn phi(&self) -> f64 {
        if self.den <= 0.0 {
            return 1.0;
        }
        (self.num / self.den).clamp(1.0, MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Feeds `slices` slices of 0.1 s whose counts come from `count`, ticking every 10 ms.
    fn measure(slices: u32, mut count: impl FnMut() -> u64) -> Dispersion {
        let mut m = SliceMeter::default();
        m.start(0.0);
        let mut d = Dispersion::default();
        for s in 0..slices {
            for _ in 0..count() {
                m.on_completion();
            }
            let now = f64::from(s + 1) * 0.1;
            m.tick(now - 0.05, 0.1);
            m.tick(now, 0.1);
        }
        let (sum, pairs) = m.pairs();
        d.add(sum, pairs);
        d
    }

    /// Counts of mean `mean` with Poisson's variance (a normal approximation: the means here
    /// are in the thousands).
    fn poisson(rng: &mut SplitMix64, mean: f64) -> u64 {
        let z = {
            let u1 = rng.next_f64().max(1e-12);
            let u2 = rng.next_f64();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        };
        (mean + z * mean.sqrt()).round().max(0.0) as u64
    }

    #[test]
    fn a_poisson_stream_measures_about_one_and_a_noisy_one_its_excess() {
        for seed in 1..=8 {
            let mut rng = SplitMix64::new(seed);
            let d = measure(200, || poisson(&mut rng, 1000.0));
            assert!(d.phi() < 1.5, "seed {seed}: Poisson φ {}", d.phi());
            // ±10 % per slice around 1000 a slice: φ = 0.01 · 1000² / 1000 = 10.
            let mut rng = SplitMix64::new(seed);
            let noisy = measure(200, || {
                let f = 1.0 + 0.1 * (2.0 * rng.next_f64() - 1.0) * 3f64.sqrt();
                poisson(&mut rng, 1000.0 * f)
            });
            let phi = noisy.phi();
            assert!((6.0..16.0).contains(&phi), "seed {seed}: noisy φ {phi}");
        }
    }

    #[test]
    fn the_first_slice_and_a_partial_one_are_not_counted() {
        let mut m = SliceMeter::default();
        m.start(0.0);
        for _ in 0..5000 {
            m.on_completion();
        }
        m.tick(0.1, 0.1);
        for _ in 0..100 {
            m.on_completion();
        }
        m.tick(0.2, 0.1);
        for _ in 0..100 {
            m.on_completion();
        }
        m.tick(0.3, 0.1);
        m.tick(0.35, 0.1);
        let (sum, pairs) = m.pairs();
        assert_eq!(pairs, 1);
        assert!(sum.abs() < 1e-9, "{sum}");
        assert_eq!(Dispersion::default().phi(), 1.0);
    }
}
