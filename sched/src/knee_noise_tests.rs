//! The `adaptive` controller end to end on a device whose throughput is noisier than its
//! completions' count: slices, the dispersion estimate φ and the probes' early decisions
//! together (`crate::dispersion`, `crate::knee`). Virtual clock, seeded.

use crate::depth::{DepthPolicy, Outcome, QueueDepthController};
use crate::knee::KneeParams;
use crate::rng::SplitMix64;

/// What a run measured over 3–20 s.
#[derive(Debug)]
struct Run {
    /// Time-weighted mean window, and the highest.
    mean_window: f64,
    top: u32,
    /// Completions ÷ what the knee depth would have completed.
    throughput: f64,
    phi: f64,
}

/// The completions of one tick from `now` at `rate` (exponential gaps; `carry` holds the time
/// into the next tick), each of `latency` s, handed to `c`. Returns how many.
fn complete_tick(
    c: &mut QueueDepthController,
    rng: &mut SplitMix64,
    carry: &mut f64,
    now: f64,
    tick: f64,
    rate: f64,
    latency: f64,
) -> u32 {
    let mut n = 0u32;
    loop {
        *carry += rng.exponential(1.0 / rate);
        if *carry > tick {
            *carry -= tick;
            return n;
        }
        n += 1;
        c.on_completion(now + carry.min(tick), c.epoch(), Outcome::Good, latency);
    }
}

/// A device of `units` units of `service_s` each (throughput `min(D, units) / service_s`),
/// whose rate in each 0.1 s slice is off by a uniform factor of relative spread `sigma`
/// (a host whose CPUs the guests and the broker share). 10 ms ticks, 20 s.
fn run(seed: u64, units: f64, service_s: f64, sigma: f64) -> Run {
    let mut rng = SplitMix64::new(seed);
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams::default()));
    let tick = 0.01;
    let (mut now, mut factor) = (0.0, 1.0);
    let (mut area, mut top, mut done, mut due) = (0.0, 0u32, 0.0, 0.0);
    let mut carry = 0.0;
    for i in 0..2000u32 {
        if i % 10 == 0 {
            factor = 1.0 + sigma * 3f64.sqrt() * (2.0 * rng.next_f64() - 1.0);
        }
        let w = c.window();
        let busy = f64::from(w).min(units);
        let rate = busy / service_s * factor;
        let latency = service_s * (f64::from(w) / units).max(1.0);
        let n = complete_tick(&mut c, &mut rng, &mut carry, now, tick, rate, latency);
        now += tick;
        if now > 3.0 {
            area += f64::from(w) * tick;
            top = top.max(w);
            done += f64::from(n);
            due += units / service_s * factor * tick;
        }
        c.tick(now, w);
    }
    Run {
        mean_window: area / (now - 3.0),
        top,
        throughput: done / due,
        phi: c.dispersion().unwrap_or(1.0),
    }
}

#[test]
fn a_noisy_host_does_not_walk_the_window_off_a_flat_knee() {
    // 16 units of 0.5 ms (32 k IOPS, knee 16). Counting noise alone: φ stays near 1 and the
    // search is as tight as before. ±15 % per 0.1 s (φ = 1 + σ²·N ≈ 73 at N = 3200 a slice;
    // measured 13–92, as the noise steps on fixed 0.1 s boundaries that the slices straddle):
    // with 384-completion periods (φ measured but not used) the mean window over 3–20 s was
    // 19–63 over these 12 seeds (tops to 129); sized by φ, with early decisions, 18–26 (tops
    // 25–50).
    for (sigma, worst_mean, median_mean, top) in [(0.0, 19.0, 17.0, 25), (0.15, 30.0, 22.0, 64)] {
        let runs: Vec<Run> = (1..=12).map(|s| run(s, 16.0, 0.0005, sigma)).collect();
        let mut means: Vec<f64> = runs.iter().map(|r| r.mean_window).collect();
        means.sort_by(f64::total_cmp);
        assert!(
            means[11] <= worst_mean && means[6] <= median_mean,
            "σ {sigma}: means {means:.1?}\n{runs:#?}"
        );
        for (seed, r) in runs.iter().enumerate() {
            assert!(
                r.throughput >= 0.95 && r.top <= top,
                "σ {sigma} seed {}: {r:?}",
                seed + 1
            );
            if sigma > 0.0 {
                assert!(r.phi > 5.0, "σ {sigma} seed {}: {r:?}", seed + 1);
            } else {
                assert!(r.phi < 2.0, "seed {}: {r:?}", seed + 1);
            }
        }
    }
}

/// A host-like curve: throughput `peak · (min(D, flat) / flat)^e` (elasticity `e` up to
/// `flat`, none beyond), its rate off by a uniform factor of spread `sigma` in each 0.1 s;
/// latency by Little's law. 10 ms ticks for `secs`. Returns the window at each second and the
/// completions over 3 s to the end ÷ the peak's.
fn run_curve(seed: u64, flat: f64, e: f64, sigma: f64, secs: f64) -> (Vec<u32>, f64) {
    const PEAK: f64 = 100_000.0;
    let mut rng = SplitMix64::new(seed);
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams::default()));
    let tick = 0.01;
    let (mut now, mut factor, mut done, mut carry) = (0.0, 1.0, 0.0, 0.0);
    let mut per_s = Vec::new();
    for i in 0..(secs / tick).round() as u32 {
        if i % 10 == 0 {
            factor = 1.0 + sigma * 3f64.sqrt() * (2.0 * rng.next_f64() - 1.0);
        }
        if i % 100 == 0 {
            per_s.push(c.window());
        }
        let w = f64::from(c.window());
        let x = PEAK * (w.min(flat) / flat).powf(e);
        let latency = w / x;
        let n = complete_tick(&mut c, &mut rng, &mut carry, now, tick, x * factor, latency);
        now += tick;
        if now > 3.0 {
            done += f64::from(n);
        }
        c.tick(now, c.window());
    }
    (per_s, done / (PEAK * (secs - 3.0)))
}

#[test]
fn a_gently_rising_curve_is_climbed_to_where_it_flattens() {
    // Elasticity 0.5 up to 32 in flight, flat beyond, ±6 % per 0.1 s (φ ≈ 40 at 100 k IOPS,
    // as this host's file and loop device measure): over 3–8 s every seed holds ≥ 0.95 of the
    // peak (measured 0.971–0.997). Elasticity 0.3 (just above η = 0.2) is not climbed in that
    // time: its start-up ends low, and a 25 % step's gain clears rule (1)'s bar by 2 %, under
    // one period's noise (medians 0.38–0.46 of the peak over 3–8 s, worst 0.30; over 3–30 s
    // medians 0.53–0.63: it climbs, slowly; docs/scheduling.md).
    for seed in 1..=12 {
        let (windows, share) = run_curve(seed, 32.0, 0.5, 0.06, 8.0);
        assert!(
            share >= 0.95,
            "seed {seed}: {share:.3} of the peak, windows {windows:?}"
        );
    }
}
