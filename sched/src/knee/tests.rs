//! Unit tests of the knee search (`crate::knee`): ideal devices, noisy ones, refusals.

use super::*;

/// An ideal device: `n` units of service time `s`.
fn device(n: f64, s: f64, w: f64) -> Period {
    Period {
        throughput: w.min(n) / s,
        mean_in_flight: w,
        peak_in_flight: w,
        window: w,
        completions: 384,
    }
}

fn run(k: &mut KneeSearch, n: f64, periods: usize, t0: f64) -> f64 {
    let mut t = t0;
    for _ in 0..periods {
        t += 0.1;
        let w = k.window();
        k.on_period(t, device(n, 0.004, w));
    }
    t
}

#[test]
fn finds_the_knee_and_follows_it_down_and_up() {
    let mut k = KneeSearch::new(KneeParams::default());
    let t = run(&mut k, 16.0, 30, 0.0);
    assert!((16.0..=20.0).contains(&k.knee()), "{}", k.knee());
    let t = run(&mut k, 8.0, 20, t);
    assert!((8.0..=10.0).contains(&k.knee()), "{}", k.knee());
    run(&mut k, 32.0, 30, t);
    assert!((31.0..=40.0).contains(&k.knee()), "{}", k.knee());
}

#[test]
fn a_noisy_device_lengthens_the_periods_and_a_clear_probe_ends_early() {
    // 16 units of 0.5 ms: 32 k IOPS, each period's completions counted as 0.1 s of them.
    let period = |w: f64| {
        let x = w.min(16.0) / 0.0005;
        Period {
            throughput: x,
            mean_in_flight: w,
            peak_in_flight: w,
            window: w,
            completions: (x * 0.1) as u64,
        }
    };
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for _ in 0..30 {
        t += 0.1;
        k.on_period(t, period(k.window()));
    }
    assert!((16.0..=20.0).contains(&k.knee()), "{}", k.knee());
    // The slices said φ = 20: a probe needs 20 × 384 completions for the same confidence.
    k.note_dispersion(20.0 * 5.0, 5);
    assert!((k.dispersion() - 20.0).abs() < 1e-9);
    for _ in 0..200 {
        if k.phase() == Phase::Down {
            break;
        }
        t += 0.1;
        k.on_period(t, period(k.window()));
    }
    assert_eq!(k.phase(), Phase::Down);
    assert_eq!(k.period_ios(), 20 * 384);
    // From the knee, a down probe loses a fifth of the throughput: far past rule (1)'s
    // 5 %, so a few thousand completions decide it, not 7680 (with the earlier looks at
    // that window pooled, fewer; but never fewer than 64 · φ of its own).
    let x = period(k.window()).throughput;
    assert!(!k.decided(x, 300));
    assert!(k.decided(x, 6000));
    // A reading that would move the knee (no throughput lost) always runs its full length.
    assert!(!k.decided(period(k.knee()).throughput, 1_000_000));
}

#[test]
fn one_lucky_start_up_period_does_not_end_the_start_up() {
    // A knee of 80; the period at D = 2 measures 50 % high and the one at 4 20 % low
    // (32 completions are ±18 %), so the doubling to 4 looks like +7 %. Ending there (as
    // one miss did) holds the window at 2; the next doubling shows the curve still rising.
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for luck in [1.0, 1.5, 0.8] {
        t += 0.1;
        let w = k.window();
        let mut p = device(80.0, 0.004, w);
        p.throughput *= luck;
        k.on_period(t, p);
    }
    run(&mut k, 80.0, 12, t);
    assert!((64.0..=128.0).contains(&k.knee()), "{}", k.knee());
}

#[test]
fn a_curve_that_rises_gently_is_not_taken_for_a_knee_further_up() {
    // Throughput ∝ D^0.2 (a doubling adds 15 %): no doubling pays, and two together (32 %)
    // must not either.
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for _ in 0..6 {
        t += 0.1;
        let w = k.window();
        k.on_period(
            t,
            Period {
                throughput: 1000.0 * w.powf(0.2),
                mean_in_flight: w,
                peak_in_flight: w,
                window: w,
                completions: 384,
            },
        );
    }
    assert!(k.knee() <= 2.0, "{}", k.knee());
}

#[test]
fn bursty_tenants_keep_the_window_their_bursts_reach() {
    // Eight guests of QD 4 that wake, submit and halt: 12 in flight on average, but every
    // burst reaches 32. The window stays where the bursts go, not at their mean.
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for _ in 0..40 {
        t += 0.1;
        let w = k.window();
        k.on_period(
            t,
            Period {
                throughput: 40_000.0 * w.min(16.0) / 16.0,
                mean_in_flight: 12.0_f64.min(0.95 * w),
                peak_in_flight: 32.0_f64.min(w),
                window: w,
                completions: 4000,
            },
        );
    }
    assert!(k.knee() >= 32.0, "{}", k.knee());
    // The same tenants, smooth (the peak is the mean): the window comes down to 12.
    for i in 0..3 {
        let w = k.window();
        k.on_period(
            t + f64::from(i + 1) * 0.1,
            Period {
                throughput: 40_000.0,
                mean_in_flight: 12.0,
                peak_in_flight: 12.0,
                window: w,
                completions: 4000,
            },
        );
    }
    assert_eq!(k.knee(), 12.0);
}

#[test]
fn a_window_the_tenants_leave_unfilled_comes_down_to_what_they_use_and_climbs_back() {
    let mut k = KneeSearch::new(KneeParams::default());
    run(&mut k, 16.0, 30, 0.0);
    assert!((16.0..=20.0).contains(&k.knee()), "{}", k.knee());
    // Busy tenants with 2 requests in flight: two unfilled periods teach nothing…
    let unfilled = |k: &mut KneeSearch, i: u32| {
        let w = k.window();
        k.on_period(
            10.0 + f64::from(i) * 0.1,
            Period {
                throughput: 100.0,
                mean_in_flight: 2.0,
                peak_in_flight: 2.0,
                window: w,
                completions: 384,
            },
        );
    };
    let before = k.knee();
    unfilled(&mut k, 0);
    unfilled(&mut k, 1);
    assert_eq!(k.knee(), before);
    // …the third brings the window down to what they use (RFC 7661's validation).
    unfilled(&mut k, 2);
    assert_eq!(k.knee(), 2.0);
    // Idle periods (nothing in flight) do not count as unfilled ones.
    let mut idle = KneeSearch::new(KneeParams::default());
    run(&mut idle, 16.0, 30, 0.0);
    let before = idle.knee();
    for i in 0..10 {
        let w = idle.window();
        idle.on_period(
            10.0 + f64::from(i) * 0.1,
            Period {
                throughput: 0.0,
                mean_in_flight: 0.0,
                peak_in_flight: 0.0,
                window: w,
                completions: 384,
            },
        );
    }
    assert_eq!(idle.knee(), before);
    // Demand back: the search climbs to the knee again (25 % per probe cycle).
    run(&mut k, 16.0, 60, 20.0);
    assert!((16.0..=20.0).contains(&k.knee()), "{}", k.knee());
}

#[test]
fn congestion_caps_probes_for_the_hold_then_lets_them_look_again() {
    let mut k = KneeSearch::new(KneeParams::default());
    run(&mut k, 64.0, 40, 0.0);
    assert!((61.0..=80.0).contains(&k.knee()), "{}", k.knee());
    k.on_congestion(4.0, 20.0);
    assert_eq!(k.knee(), 19.0);
    let t = run(&mut k, 64.0, 15, 4.0);
    assert!(k.knee() <= 19.0, "{} at {t}", k.knee());
    run(&mut k, 64.0, 40, t);
    assert!((61.0..=80.0).contains(&k.knee()), "{}", k.knee());
}

/// An array that refuses every window above its 64 units (BUSY at the knee), after a
/// capacity return from 32: the up probes climb by quarters (40, 50, 63), the next (78)
/// is refused, and the probes then bisect between the knee and the refusal: 64 after 4
/// refusals (each a halving of the window for the caller) and 13 periods (2 and 9 at
/// stop 36, climbing 40, 50, 62), where creeping down from the refusal one request per
/// cycle took 6 and 16.
#[test]
fn after_a_refusal_the_up_probes_bisect_to_the_window_the_array_takes() {
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = run(&mut k, 32.0, 40, 0.0);
    assert!((31.0..=40.0).contains(&k.knee()), "{}", k.knee());
    let mut top: f64 = 0.0;
    let mut at_64 = None;
    let mut refusals = 0;
    for i in 0..80 {
        t += 0.1;
        let w = k.window();
        if w > 64.0 {
            // Each refusal costs the caller a halving of the window.
            if at_64.is_none() {
                refusals += 1;
            }
            k.on_congestion(t, w);
        } else {
            k.on_period(t, device(64.0, 0.004, w));
        }
        top = top.max(k.knee());
        if k.knee() == 64.0 && at_64.is_none() {
            at_64 = Some(i);
        }
    }
    assert_eq!(k.knee(), 64.0, "top {top}");
    assert!(top <= 64.0, "the knee passed the refusal: {top}");
    assert!(
        at_64.is_some() && refusals <= 4,
        "64 reached after {at_64:?} periods and {refusals} refusals"
    );
}

/// A device of 16 units of 4 ms whose periods are measured with `sigma` of relative noise
/// per 0.1 s beyond counting noise (a TCG guest's bursty submissions): the time-weighted
/// mean window over 3–20 s and the highest window, per seed.
fn noisy_flat(seed: u64, sigma: f64) -> (f64, f64) {
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut k = KneeSearch::new(KneeParams::default());
    let (mut t, mut area, mut top) = (0.0, 0.0, 0.0f64);
    while t < 20.0 {
        let w = k.window();
        let x_true = w.min(16.0) / 0.004;
        let len = (k.period_ios() as f64 / x_true).max(k.min_period_s());
        let z: f64 = (0..12).map(|_| rng.next_f64()).sum::<f64>() - 6.0;
        let counting = 1.0 / (x_true * len).sqrt();
        let noise = (sigma * (0.1 / len).sqrt()).hypot(counting);
        let x = x_true * (1.0 + noise * z).max(0.1);
        if t >= 3.0 {
            area += w * len;
            top = top.max(w);
        }
        t += len;
        k.on_period(
            t,
            Period {
                throughput: x,
                mean_in_flight: w,
                peak_in_flight: w,
                window: w,
                completions: (x * len) as u64,
            },
        );
    }
    (area / (t - 3.0), top)
}

#[test]
fn up_moves_on_noise_do_not_carry_the_window_past_a_flat_knee() {
    // The knee is 16 and the time-weighted mean includes the probes at 20. Before the
    // selection-bias fixes (16 seeds), with counting noise only: means 17.6–30.1, tops 25–55.
    // Before pooling (stop 36, 64 seeds): counting noise, means p50 17.8, worst 20.5, tops
    // ≤ 35; ±15 % per 0.1 s unmeasured (no φ given) on top: means p50 23.3, p90 35.8, worst
    // 89.4, tops p90 74, worst 179. Pooled (stop 37): 16.4 / 18.5, tops ≤ 23; 20.8 / 26.5 /
    // 67.2, tops 58 / 114. 256 seeds since stop 48 (64 put single seeds' reshuffles in the
    // worst case): counting noise means p50 16.4, max 18.5, tops p98 25, max 33; ±15 %:
    // means p50 20.9, p90 33.7, p98 63.1, max 91.2, tops p90 68. Since a start-up miss is
    // judged again against a new period at the depth below it (`knee::start`), the ±15 %
    // tail is longer: 21.2 / 48.7 / 130.0 / 182, tops p90 89. The recheck compares two
    // periods three long, each ±9 % here but counted as ±3 % (φ left at 1), so a flat
    // doubling passes its 10 % plus two standard errors about one time in ten, and start-up
    // doubles on; the old second doubling had to pay 44 %. Asking the recheck for 20 % and
    // significance, with the two periods at `k` as a noise floor, brought that tail back
    // (32.9 / 63.1 / 126) and lost what the recheck gains on soft curves (`host_curve_grid`
    // 86.0 % → 79.7 %, p5 0.859 → 0.613). In the broker φ is measured, and
    // `crate::knee_noise_tests` (±15 %, φ measured) holds.
    let sorted = |sigma: f64| {
        let runs: Vec<(f64, f64)> = (1..=256).map(|s| noisy_flat(s, sigma)).collect();
        let mut means: Vec<f64> = runs.iter().map(|r| r.0).collect();
        let mut tops: Vec<f64> = runs.iter().map(|r| r.1).collect();
        means.sort_by(f64::total_cmp);
        tops.sort_by(f64::total_cmp);
        (means, tops)
    };
    // A top of 33 came from start-up asking 20 % of a doubling (was 25 %): a period at 16
    // measured 10 % low, so 32 paid by 22.8 %, and start-up ended at 2× the knee.
    let (means, tops) = sorted(0.0);
    assert!(
        means[255] <= 19.0 && tops[250] <= 25.0 && tops[255] <= 33.0,
        "counting noise: means {means:?}, tops {tops:?}"
    );
    // Noise the search is not told of (φ stays 1) is where "short of the best" (stop 40)
    // costs: the best pool's lower bound is then too tight, a lucky pool sets it, and up
    // moves come easier. In the broker φ is measured (`crate::knee_noise_tests`: ±15 % with φ
    // measured holds a flat knee of 16 at means ≤ 30).
    let (means, tops) = sorted(0.15);
    assert!(
        means[128] <= 22.0 && means[230] <= 52.0 && means[250] <= 135.0 && means[255] <= 190.0,
        "unmeasured noise: means {means:?}"
    );
    assert!(tops[230] <= 95.0, "unmeasured noise: tops {tops:?}");
}

/// One unit, and an array that takes one request waiting beside it (BUSY past 2): a window of
/// 2 serves no more than 1 at twice its latency. A lucky up probe carried the knee from 1 to
/// 2; the next up probe (3) is refused. That refusal must count as an up probe that failed
/// (a down probe follows), or the window cruises at 2 and probes up into a refusal every
/// cycle for good (the sweep's 2 units of 8 ms, BUSY one past, 8 tenants, at half capacity:
/// twice the knee's latency for a whole phase).
#[test]
fn an_up_probe_the_array_refuses_is_followed_by_a_down_probe() {
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    let mut lucky = true;
    let mut at_2 = 0;
    // A slow device: each period (384 completions at 250 per second) outlasts the hold of
    // a refusal's cap (2 s), so every cruise ends free to probe up again.
    for _ in 0..200 {
        t += 2.5;
        let w = k.window();
        if w > 2.0 {
            k.on_congestion(t, w);
            continue;
        }
        let mut p = device(1.0, 0.004, w);
        p.completions = 384;
        if w == 2.0 && k.phase() == Phase::Up && lucky {
            p.throughput *= 1.5;
            lucky = false;
        }
        k.on_period(t, p);
        if !lucky && k.knee() >= 2.0 {
            at_2 += 1;
        }
    }
    assert!(!lucky, "the lucky probe happened");
    assert_eq!(k.knee(), 1.0);
    assert!(at_2 <= 10, "{at_2} periods at 2 after the lucky probe");
}

/// The pooled curve is what lets rule (1) tell windows a few per cent apart. A refusal at a
/// window the array refused before says nothing new about the windows below it: the pools
/// stay (before stop 43 every refusal emptied them, and an array refusing the up probe past
/// its knee every cycle left rule (1) single periods to compare: 8 units of 8 ms behind
/// 500 µs held 8 and 9 by turns, where 9 serves 4.8 % more). A refusal lower than the last
/// one is a change (a capacity drop): they go.
#[test]
fn a_refusal_where_the_array_refused_before_keeps_the_pooled_curve() {
    let mut k = KneeSearch::new(KneeParams::default());
    let t = run(&mut k, 16.0, 30, 0.0);
    assert!(k.curve.points().count() > 0);
    k.on_congestion(t, 20.0);
    assert_eq!(k.curve.points().count(), 0, "the first refusal");
    let t = run(&mut k, 16.0, 10, t);
    let pooled = k.curve.points().count();
    assert!(pooled > 0);
    k.on_congestion(t, 20.0);
    assert_eq!(
        k.curve.points().count(),
        pooled,
        "refused where it refused before"
    );
    k.on_congestion(t, 24.0);
    assert_eq!(k.curve.points().count(), pooled, "refused above that");
    k.on_congestion(t, 12.0);
    assert_eq!(
        k.curve.points().count(),
        0,
        "refused lower: the array changed"
    );
}

/// A period at the search's current window.
fn period(k: &KneeSearch, throughput: f64, mean: f64, peak: f64) -> Period {
    let w = k.window();
    Period {
        throughput,
        mean_in_flight: mean.min(w),
        peak_in_flight: peak.min(w),
        window: w,
        completions: 4000,
    }
}

#[test]
fn a_start_up_window_the_bursts_fill_doubles_without_waiting() {
    // Eight probe guests of QD 4 on a two-core host: 9–11 in flight on average, bursts to
    // 28. At a window of 16 the mean is under 0.7 of it, and start-up used to wait there
    // until one period happened to fill it (seconds, on the bench).
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for _ in 0..8 {
        t += 0.1;
        let w = k.window();
        let p = period(
            &k,
            2_000.0 * w.min(28.0).powf(0.8),
            (0.9 * w).min(10.0),
            28.0,
        );
        k.on_period(t, p);
    }
    assert_eq!(k.knee(), 28.0, "{:?}", k.phase());
}

#[test]
fn a_doubling_its_bursts_filled_that_paid_counts_as_paid() {
    // The bench round that ended a start-up at 4: a noisy miss at 8, then 16 (filled by
    // bursts only) paid 86 % over 4, and 32 went unfilled. Unjudged, 16's gain did not
    // count, the miss at 8 stood, and start-up fell back to 4. Since stop 48 a miss is
    // judged again against a new period at the depth below it; here the tenants leave that
    // one unfilled (bursts only), so the recheck judges nothing, the miss stands, and the
    // bursts double the window on as before.
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for (x, mean, peak, window) in [
        (10_000.0, 1.0, 1.0, 1.0),
        (13_000.0, 1.9, 2.0, 2.0),
        (19_400.0, 3.8, 4.0, 4.0),
        (17_700.0, 7.7, 8.0, 8.0),
        (19_000.0, 2.0, 4.0, 4.0),
        (36_200.0, 3.0, 16.0, 8.0),
        (42_700.0, 10.0, 28.0, 16.0),
    ] {
        assert_eq!(k.window(), window, "{:?}", k.phase());
        t += 0.1;
        let p = period(&k, x, mean, peak);
        k.on_period(t, p);
    }
    assert!(k.knee() >= 16.0, "{} {:?}", k.knee(), k.phase());
    for _ in 0..2 {
        t += 0.1;
        let p = period(&k, 42_700.0, 10.0, 28.0);
        k.on_period(t, p);
    }
    assert_eq!(k.knee(), 28.0, "{:?}", k.phase());
}

#[test]
fn a_start_up_miss_is_judged_again_below_it_before_it_ends_the_start_up() {
    // A flat knee of 4 whose period at 4 read 10 % low: 8 paid over it by luck, 16 missed.
    // Start-up used to double on to 32 (a second miss) before it ended at 8 — 8× the knee
    // for 0.3 s, the victim's p99 in `quick.toml`. Now 8 is measured again and the miss
    // judged against it: start-up ends at 8, never above 16. Its cruise at 8 is followed
    // by a down probe (a start-up that ended on a miss likely overshot), which finds the
    // flat and takes the window down.
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    let mut top = 0.0f64;
    for x in [250.0, 500.0, 900.0, 1100.0, 1000.0, 1000.0, 1000.0] {
        top = top.max(k.window());
        t += 0.1;
        let w = k.window();
        k.on_period(t, period(&k, x, w, w));
    }
    assert_eq!(top, 16.0);
    assert_eq!(k.knee(), 8.0, "{:?}", k.phase());
    assert_eq!(k.phase(), Phase::Down);
    assert_eq!(k.window(), 6.0);
    t += 0.1;
    k.on_period(t, period(&k, 1000.0, 6.0, 6.0));
    assert_eq!(k.knee(), 6.0, "{:?}", k.phase());
    // A doubling that pays against the depth measured again goes on: a miss on one
    // period's luck does not end a start-up below a knee of 64.
    let mut k = KneeSearch::new(KneeParams::default());
    for (x, window) in [
        (1000.0, 1.0),
        (2000.0, 2.0),
        (4000.0, 4.0),
        (4400.0, 8.0),
        (3000.0, 4.0),
        (16_000.0, 16.0),
    ] {
        assert_eq!(k.window(), window, "{:?}", k.phase());
        t += 0.1;
        k.on_period(t, period(&k, x, window, window));
    }
    assert_eq!(k.phase(), Phase::Start);
    assert_eq!(k.window(), 32.0);
}

#[test]
fn below_a_depth_of_4_a_miss_doubles_on_instead_of_being_judged_again() {
    // Tenants still arriving made the doubling from 1 miss; judged again at 1, the miss was
    // confirmed and a `weir bench broker` round held 1–2 for 3 s. Below `RECHECK_FROM` the
    // window doubles on, and the next doubling must pay for both (1.44×).
    let mut k = KneeSearch::new(KneeParams::default());
    let mut t = 0.0;
    for (x, window) in [(1000.0, 1.0), (1100.0, 2.0), (2000.0, 4.0)] {
        assert_eq!(k.window(), window, "{:?}", k.phase());
        t += 0.1;
        k.on_period(t, period(&k, x, window, window));
    }
    assert_eq!(k.phase(), Phase::Start);
    assert_eq!(k.window(), 8.0);
}
