//! The throughput curve as measured so far: every period the knee search counted, pooled by
//! window.
//!
//! The knee search decides by comparing the throughput of two windows (rule (1) of
//! `crate::knee`). One period of `n` completions measures it within `√(φ/n)` (≈ 5 % at the
//! default 384), and near the knee a step of 25 % adds about that much: one period's
//! comparison is then a coin toss, and a window walked up on lucky probes (2 units of 1 ms
//! behind a 2 ms link: the knee 8, the window 6–15, latency up to 1.6× the knee's). The knee
//! search probes the same few windows cycle after cycle (`k`, `g·k`, its half step, `k/g`), so
//! their periods are pooled: a window's throughput is
//!
//! ```text
//!   X(w) = Σ nᵢ / Σ tᵢ          over the periods i at w, each weighted e^{−age/τ}
//! ```
//!
//! with `n` completions in `t` seconds, and its relative noise `√(φ / Σ nᵢ)`: after `m` looks
//! at the same window it is `√m` times as precise as one.
//!
//! **Forgetting.** The pool must not outlive the curve it measured. A period whose throughput
//! differs from its window's pooled figure by more than `CHANGE_Z` standard errors and by more
//! than `CHANGE_SHARE` is a moved curve (a capacity change, a new workload): everything pooled
//! is dropped and that period starts the pool again. Slower drift ages out: weights decay with
//! `τ = MEMORY_S`, and a window's pool holds at most `MAX_PERIODS` full periods' worth of
//! completions (older ones scaled down), so its noise floor is `1/√MAX_PERIODS` of a period's.
//!
//! **Failure modes.** A drift of less than `CHANGE_SHARE` within `τ` is averaged with what was
//! before it. Pooling does not remove selection bias from the periods that moved the knee
//! (the winner's curse, `crate::knee`); it dilutes it among the periods that follow.

/// Standard errors between a period and its window's pool that say the curve moved.
const CHANGE_Z: f64 = 3.5;
/// ... and the least relative difference that does (smaller shifts are averaged in).
const CHANGE_SHARE: f64 = 0.1;
/// Weights decay with this time constant, s.
const MEMORY_S: f64 = 30.0;
/// A window's pool holds at most this many full periods' completions.
const MAX_PERIODS: f64 = 8.0;

/// One window's pooled measurement.
#[derive(Debug, Clone, Copy)]
struct Point {
    window: f64,
    /// Completions, decayed.
    n: f64,
    /// Seconds, decayed alike.
    t: f64,
}

/// The pooled throughput curve.
#[derive(Debug, Clone, Default)]
pub struct Curve {
    points: Vec<Point>,
    /// When the weights were last aged.
    aged_at: f64,
}

/// A pooled figure: throughput and the completions behind it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pooled {
    pub x: f64,
    pub n: f64,
}

impl Curve {
    pub fn clear(&mut self) {
        self.points.clear();
    }

    fn find(&self, window: f64) -> Option<&Point> {
        self.points.iter().find(|p| (p.window - window).abs() < 0.5)
    }

    /// The pooled throughput at `window`, if any period was counted there.
    pub fn at(&self, window: f64) -> Option<Pooled> {
        self.find(window)
            .filter(|p| p.t > 0.0 && p.n > 0.0)
            .map(|p| Pooled {
                x: p.n / p.t,
                n: p.n,
            })
    }

    /// Every window's pooled figure.
    pub fn points(&self) -> impl Iterator<Item = (f64, Pooled)> + '_ {
        self.points
            .iter()
            .filter(|p| p.t > 0.0 && p.n > 0.0)
            .map(|p| {
                (
                    p.window,
                    Pooled {
                        x: p.n / p.t,
                        n: p.n,
                    },
                )
            })
    }

    /// What the pool at `window` would say with a further `n` completions in `t` seconds.
    pub fn with(&self, window: f64, n: f64, t: f64) -> Pooled {
        let (pn, pt) = self.find(window).map_or((0.0, 0.0), |p| (p.n, p.t));
        let (n, t) = (pn + n, pt + t);
        Pooled {
            x: if t > 0.0 { n / t } else { 0.0 },
            n,
        }
    }

    /// A period at `window`: `n` completions in `t` seconds, ending at `now`, on a device of
    /// dispersion `phi`, whose full period is `full_ios` completions. Returns whether it showed
    /// the curve moved (everything else was forgotten).
    pub fn add(&mut self, now: f64, window: f64, n: f64, t: f64, phi: f64, full_ios: f64) -> bool {
        if n <= 0.0 || t <= 0.0 {
            return false;
        }
        let decay = (-(now - self.aged_at).max(0.0) / MEMORY_S).exp();
        self.aged_at = now;
        for p in &mut self.points {
            p.n *= decay;
            p.t *= decay;
        }
        let moved = self.at(window).is_some_and(|pool| {
            let x = n / t;
            let rel = x / pool.x - 1.0;
            let se = (phi / n + phi / pool.n).sqrt();
            rel.abs() > CHANGE_SHARE && rel.abs() > CHANGE_Z * se
        });
        if moved {
            self.points.clear();
        }
        match self
            .points
            .iter_mut()
            .find(|p| (p.window - window).abs() < 0.5)
        {
            Some(p) => {
                p.n += n;
                p.t += t;
                let cap = MAX_PERIODS * full_ios.max(1.0);
                if p.n > cap {
                    p.t *= cap / p.n;
                    p.n = cap;
                }
            }
            None => self.points.push(Point { window, n, t }),
        }
        moved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_at_one_window_pool_by_their_completions() {
        let mut c = Curve::default();
        c.add(1.0, 8.0, 400.0, 0.2, 1.0, 384.0);
        c.add(2.0, 8.0, 1200.0, 0.5, 1.0, 384.0);
        let p = c.at(8.0).unwrap();
        // 1600 completions (aged a little) over 0.7 s, nearer the longer period's 2400/s.
        assert!((p.x - 1600.0 / 0.7).abs() < 20.0, "{p:?}");
        assert!(p.n > 1500.0 && p.n <= 1600.0, "{p:?}");
        assert!(c.at(10.0).is_none());
    }

    #[test]
    fn a_period_far_off_its_pool_forgets_the_curve() {
        let mut c = Curve::default();
        c.add(1.0, 8.0, 1000.0, 0.5, 1.0, 384.0);
        c.add(2.0, 10.0, 1000.0, 0.48, 1.0, 384.0);
        // 5 % off, within noise: pooled.
        assert!(!c.add(3.0, 8.0, 1000.0, 0.525, 1.0, 384.0));
        assert_eq!(c.points.len(), 2);
        // Half the throughput at the same window: the capacity halved.
        assert!(c.add(4.0, 8.0, 1000.0, 1.0, 1.0, 384.0));
        assert!(c.at(10.0).is_none());
        assert!((c.at(8.0).unwrap().x - 1000.0).abs() < 1e-9);
    }

    #[test]
    fn a_pool_is_capped_and_ages() {
        let mut c = Curve::default();
        for i in 0..100 {
            c.add(f64::from(i) * 0.1, 4.0, 384.0, 0.1, 1.0, 384.0);
        }
        assert!(c.at(4.0).unwrap().n <= 8.0 * 384.0 + 1e-9);
        c.add(200.0, 5.0, 384.0, 0.1, 1.0, 384.0);
        assert!(c.at(4.0).unwrap().n < 0.1 * 384.0);
    }
}
