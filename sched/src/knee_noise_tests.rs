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
/// into this tick of the next completion), each of `latency` s, handed to `c`. Returns how
/// many.
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
        if *carry > tick {
            // The next completion falls in a later tick: it is kept, not drawn again (a
            // redraw lost one completion a tick, 10 % at 1000 IOPS).
            *carry -= tick;
            return n;
        }
        n += 1;
        c.on_completion(now + *carry, c.epoch(), Outcome::Good, latency);
        *carry += rng.exponential(1.0 / rate);
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

#[test]
fn a_gently_rising_curve_is_climbed_to_where_it_flattens() {
    // Elasticity 0.5 up to 32 in flight, flat beyond, ±6 % per 0.1 s (φ ≈ 40 at 100 k IOPS,
    // as this host's file and loop device measure): over 3–8 s every seed holds ≥ 0.95 of the
    // peak (measured 0.971–0.997). Elasticity 0.3 (just above η = 0.2) was not climbed in
    // that time while start-up asked 25 % of a doubling (stop 31: medians 0.38–0.46 of the
    // peak over 3–8 s); `a_soft_curve_is_climbed_to_its_flat_within_three_seconds` below.
    for seed in 1..=12 {
        // `peak · (min(D, 32) / 32)^0.5`: bend 1, so one elasticity all the way.
        let h = HostCurve {
            bend: 1.0,
            e_low: 0.5,
            flat: 32.0,
            e_high: 0.5,
            sigma: 0.06,
            demand: u32::MAX,
        };
        let r = run_host_curve(seed, h, 8.0, 3.0);
        assert!(r.throughput >= 0.95, "seed {seed}: {r:?}");
    }
}

/// A host's device curve, in the shape measured on this machine's file and loop device
/// (docs/window-real-storage.md, "Weights on real storage"): throughput rises with elasticity `e_low`
/// up to `bend` in flight, with `e_high` from there to `flat`, and no further; each 0.1 s its
/// rate is off by a uniform factor of spread `sigma` (guests and broker share the CPUs, the
/// device completes in batches: φ ≈ 1 + σ²·N, 17–190 measured at ~10 000 completions a
/// slice). The tenants keep `demand` requests outstanding.
#[derive(Clone, Copy, Debug)]
struct HostCurve {
    bend: f64,
    e_low: f64,
    flat: f64,
    e_high: f64,
    sigma: f64,
    demand: u32,
}

impl HostCurve {
    /// Throughput at `d` in flight ÷ the peak.
    fn share(&self, d: f64) -> f64 {
        let d = d.clamp(1.0, self.flat);
        if d >= self.bend {
            (d / self.flat).powf(self.e_high)
        } else {
            (self.bend / self.flat).powf(self.e_high) * (d / self.bend).powf(self.e_low)
        }
    }

    /// The best fixed window's throughput ÷ the peak (`demand` may sit below `flat`).
    fn best(&self) -> f64 {
        self.share(f64::from(self.demand))
    }

    /// The sweep's knee (`crate::sweep::KNEE_SHARE`): the smallest window within 5 % of the
    /// best fixed window.
    fn knee(&self) -> u32 {
        (1..=self.demand)
            .find(|&d| self.share(f64::from(d)) >= (1.0 - crate::sweep::KNEE_SHARE) * self.best())
            .unwrap_or(self.demand)
    }
}

/// What the `adaptive` window did on a [`HostCurve`] over `judged_from` s to the end.
#[derive(Debug)]
struct CurveRun {
    /// Completions ÷ the best fixed window's.
    throughput: f64,
    /// Mean latency ÷ the latency at the knee.
    latency: f64,
    /// The window at each second.
    windows: Vec<u32>,
}

const CURVE_PEAK: f64 = 100_000.0;

fn run_host_curve(seed: u64, h: HostCurve, secs: f64, judged_from: f64) -> CurveRun {
    let mut rng = SplitMix64::new(seed);
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams::default()));
    let tick = 0.01;
    let (mut now, mut factor, mut carry) = (0.0, 1.0, 0.0);
    let (mut done, mut due, mut latency_sum) = (0.0, 0.0, 0.0);
    let mut windows = Vec::new();
    for i in 0..(secs / tick).round() as u32 {
        if i % 10 == 0 {
            factor = 1.0 + h.sigma * 3f64.sqrt() * (2.0 * rng.next_f64() - 1.0);
        }
        if i % 100 == 0 {
            windows.push(c.window());
        }
        let in_flight = c.window().min(h.demand);
        let x = CURVE_PEAK * h.share(f64::from(in_flight)) * factor;
        let latency = f64::from(in_flight) / x;
        c.note_in_flight(in_flight);
        let n = complete_tick(&mut c, &mut rng, &mut carry, now, tick, x, latency);
        now += tick;
        if now > judged_from + 1e-9 {
            done += f64::from(n);
            due += CURVE_PEAK * h.best() * factor * tick;
            latency_sum += f64::from(n) * latency;
        }
        c.tick(now, in_flight);
    }
    let knee = f64::from(h.knee());
    let knee_latency = knee / (CURVE_PEAK * h.share(knee));
    CurveRun {
        throughput: done / due,
        latency: latency_sum / done.max(1.0) / knee_latency,
        windows,
    }
}

/// The host-curve grid: soft curves like this machine's disk, which the sweep's array
/// shapes (units of exponential or bimodal service) do not have.
fn host_curves() -> Vec<HostCurve> {
    let mut v = Vec::new();
    for (bend, e_low) in [(4.0, 1.0), (16.0, 0.7)] {
        for e_high in [0.3, 0.5] {
            for flat in [32.0, 64.0, 128.0] {
                for sigma in [0.03, 0.08] {
                    for demand_x in [1.0, 4.0] {
                        v.push(HostCurve {
                            bend,
                            e_low,
                            flat,
                            e_high,
                            sigma,
                            demand: (flat * demand_x) as u32,
                        });
                    }
                }
            }
        }
    }
    v
}

/// Judged over 3–10 s as the sweep judges a phase (`scenarios/sweep-window.toml`'s targets:
/// ≥ 0.95 of the best fixed window, ≤ 1.2× the knee's latency). Prints every case with
/// `--nocapture`; `WEIR_CURVE_SEEDS` sets the seeds (default 20).
#[test]
#[ignore = "a report: cargo test --release -p weir-sched host_curve_grid -- --ignored --nocapture"]
fn host_curve_grid() {
    let seeds: u64 = std::env::var("WEIR_CURVE_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let secs: f64 = std::env::var("WEIR_CURVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let from: f64 = std::env::var("WEIR_CURVE_FROM")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let curves = host_curves();
    let cases: Vec<(HostCurve, u64)> = curves
        .iter()
        .flat_map(|h| (1..=seeds).map(move |s| (*h, s)))
        .collect();
    let results: Vec<(HostCurve, u64, CurveRun)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = cases
            .chunks(cases.len().div_ceil(2))
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|&(h, s)| (h, s, run_host_curve(s, h, secs, from)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks
            .into_iter()
            .flat_map(|j| j.join().expect("a worker panicked"))
            .collect()
    });
    let mut met = 0;
    let mut thr: Vec<f64> = Vec::new();
    for (h, s, r) in &results {
        let ok = r.throughput >= 0.95 && r.latency <= 1.2;
        met += usize::from(ok);
        thr.push(r.throughput);
        println!(
            "{} bend {} e_low {} e_high {} flat {} sigma {} demand {} knee {} seed {s}: thr {:.3} lat {:.2} windows {:?}",
            if ok { "ok  " } else { "MISS" },
            h.bend,
            h.e_low,
            h.e_high,
            h.flat,
            h.sigma,
            h.demand,
            h.knee(),
            r.throughput,
            r.latency,
            r.windows
        );
    }
    thr.sort_by(f64::total_cmp);
    println!(
        "host curves: {met} of {} cases meet the targets ({:.1} %); throughput p5 {:.3}, median {:.3}, worst {:.3}",
        results.len(),
        100.0 * met as f64 / results.len() as f64,
        thr[thr.len() / 20],
        thr[thr.len() / 2],
        thr[0]
    );
}

#[test]
fn a_soft_curve_is_climbed_to_its_flat_within_three_seconds() {
    // Elasticity 0.3 from `bend` to 64 in flight (just above η = 0.2: a doubling adds 23 %),
    // ±3 % per 0.1 s, seeds 1–8. Start-up used to end at the first doublings under BBR's
    // 25 %, far below the flat, and the search then climbed a quarter per probe cycle: median
    // seeds 0.61 (bend 4) and 0.88 (bend 16) of the best fixed window over 3–10 s. Start-up
    // now doubles while a doubling pays by rule (1) (20 %): 0.979 and 0.983. The worst seeds
    // still end start-up at 4 or 16 on one unlucky period (0.62, 0.75): the `host_curve_grid`
    // report names them.
    for (bend, e_low) in [(4.0, 1.0), (16.0, 0.7)] {
        let h = HostCurve {
            bend,
            e_low,
            flat: 64.0,
            e_high: 0.3,
            sigma: 0.03,
            demand: 64,
        };
        let mut runs: Vec<(u64, CurveRun)> = (1..=8)
            .map(|s| (s, run_host_curve(s, h, 10.0, 3.0)))
            .collect();
        runs.sort_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput));
        let median = &runs[runs.len() / 2].1;
        assert!(
            median.throughput >= 0.95 && median.latency <= 1.2,
            "bend {bend}: median seed {median:?}\nall: {runs:#?}"
        );
    }
}

/// This host's loop device as the broker's trace saw it (stop 40, docs/window-real-storage.md): two
/// probe guests at QD 32 keep ~40 in flight; 15 k IOPS at 2, 60 k at 16, 66 k at 32, 74 k at
/// 40 and beyond (elasticity ≈ 0.67 to 16, 0.23 from there to 40), ±6 % per 0.1 s (φ ≈ 37).
const TRACED_DISK: HostCurve = HostCurve {
    bend: 16.0,
    e_low: 0.67,
    flat: 40.0,
    e_high: 0.23,
    sigma: 0.06,
    demand: 40,
};

#[test]
fn the_traced_disk_is_held_near_its_flat() {
    // Rule (1) alone held this curve at 16–20 (median seed 0.872 of the best fixed window over
    // 3–10 s, 15 of 20 seeds under 0.95); with "short of the best" (`crate::knee`) 0.931;
    // with a start-up miss measured on to three periods 0.948 (worst 0.82 → 0.83: start-up's
    // end on unlucky periods).
    let runs: Vec<CurveRun> = (1..=20)
        .map(|s| run_host_curve(s, TRACED_DISK, 10.0, 3.0))
        .collect();
    let mut thr: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
    thr.sort_by(f64::total_cmp);
    assert!(
        thr[10] >= 0.94 && thr[0] >= 0.8,
        "throughput ÷ the best fixed window, sorted: {thr:.3?}\n{runs:#?}"
    );
}

/// Start-up on a flat knee of `units` units of `service_s` (counting noise only): the highest
/// window in the first 3 s ÷ the knee, and the seconds spent at 3× the knee or more.
fn start_up_overshoot(seed: u64, units: f64, service_s: f64) -> (f64, f64) {
    let windows = flat_knee_windows(seed, units, service_s, 3.0);
    let top = windows.iter().copied().max().unwrap_or(0);
    let over = windows
        .iter()
        .filter(|&&w| f64::from(w) >= 3.0 * units)
        .count() as f64
        * FLAT_TICK_S;
    (f64::from(top) / units, over)
}

#[test]
fn start_up_does_not_run_far_past_a_small_flat_knee() {
    // `quick.toml`'s shape: a few units of 4 ms (1000–2000 IOPS), 200 seeds each. A start-up
    // period there has ~100 completions (±10 %), so a doubling past the knee pays its 20 % by
    // luck now and then, and the next misses. Start-up used to double on after a miss and end
    // at the second, with 4× its end point on the device for 0.3 s: the highest window ÷ the
    // knee, median, 4.0 / 6.4 / 5.3 / 4.0 for 4 / 5 / 6 / 8 units, and the seconds at ≥ 3×
    // the knee, mean, 0.37 / 0.62 / 0.39 / 0.32. A miss is now judged again against a new
    // period at the depth below it (`knee::start`): 2.0 / 3.2 / 2.7 / 2.0 and 0.07 / 0.37 /
    // 0.09 / 0.02.
    let mut over_sum = 0.0;
    for units in [4.0, 5.0, 6.0, 8.0] {
        let runs: Vec<(f64, f64)> = (1..=200)
            .map(|s| start_up_overshoot(s, units, 0.004))
            .collect();
        let mut tops: Vec<f64> = runs.iter().map(|r| r.0).collect();
        tops.sort_by(f64::total_cmp);
        let over = runs.iter().map(|r| r.1).sum::<f64>() / runs.len() as f64;
        assert!(
            tops[100] <= 3.2,
            "{units} units: highest window ÷ knee, sorted: {tops:?}"
        );
        over_sum += over;
    }
    assert!(
        over_sum <= 0.8,
        "seconds at ≥ 3× the knee, summed means: {over_sum:.2}"
    );
}

/// The simulated clock's step in [`flat_knee_windows`].
const FLAT_TICK_S: f64 = 0.01;

/// The window at every tick of `secs` seconds on a flat knee: `units` units of `service_s`
/// each, throughput `min(w, units) / service_s`, completions a Poisson stream.
fn flat_knee_windows(seed: u64, units: f64, service_s: f64, secs: f64) -> Vec<u32> {
    let mut rng = SplitMix64::new(seed);
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams::default()));
    let tick = FLAT_TICK_S;
    let (mut now, mut carry) = (0.0, 0.0);
    let mut windows = Vec::new();
    for _ in 0..(secs / tick).round() as u32 {
        let w = c.window();
        windows.push(w);
        let rate = f64::from(w).min(units) / service_s;
        let latency = service_s * (f64::from(w) / units).max(1.0);
        complete_tick(&mut c, &mut rng, &mut carry, now, tick, rate, latency);
        now += tick;
        c.tick(now, w);
    }
    windows
}

#[test]
fn after_start_up_the_window_comes_down_to_a_small_flat_knee() {
    // `quick.toml`'s window target: within 1.25× the knee while the neighbour runs, from its
    // first seconds. Start-up ends a doubling past a flat knee now and then (a doubling pays
    // its 20 % on one short period's luck); the first probe after it used to look up, and up
    // probes on a flat curve pass on noise too, so the window stayed at 1.6–2.6× the knee
    // for seconds before a down probe came (`quick.toml`: 8 and 10 over 5 until 7 s). Now the
    // first probe after start-up looks down. Mean window ÷ knee over 1–6 s, 200 seeds each of
    // 4 / 5 / 6 / 8 units of 4 ms, the median and the 90th percentile: before, 1.07 / 1.40 /
    // 1.26 / 1.05 and 1.87 / 1.78 / 1.61 / 1.15; now 1.06 / 1.23 / 1.10 / 1.04 and 1.51 /
    // 1.59 / 1.36 / 1.11. (Skipping the cruise at start-up's end, the recheck's period as the
    // down probe's reference, gave 1.16 and 1.50 at 5 units, but walked a noisy host's
    // window off its knee: `a_noisy_host_does_not_walk_the_window_off_a_flat_knee`.)
    for units in [4.0, 5.0, 6.0, 8.0] {
        let mut means: Vec<f64> = (1..=200)
            .map(|seed| {
                let w = flat_knee_windows(seed, units, 0.004, 6.0);
                let judged = &w[100..];
                judged.iter().map(|&x| f64::from(x)).sum::<f64>() / judged.len() as f64 / units
            })
            .collect();
        means.sort_by(f64::total_cmp);
        let (median, p90) = (means[100], means[180]);
        eprintln!("{units} units: mean window ÷ knee over 1–6 s, median {median:.2}, p90 {p90:.2}");
        assert!(
            median <= 1.25 && p90 <= 1.6,
            "{units} units: mean window ÷ knee over 1–6 s, sorted: {means:.2?}"
        );
    }
}
