//! Unit tests of the LUN window controllers (`crate::depth`).

use super::*;

/// Drives `c` for `periods` control periods of 0.1 s with `outstanding` requests and
/// `per_period` completions of `latency_s` each; `late_s` of clock lateness per period.
fn drive(
    c: &mut QueueDepthController,
    from: f64,
    periods: u32,
    per_period: u32,
    latency_s: f64,
    late_s: f64,
) -> f64 {
    let mut now = from;
    for _ in 0..periods {
        for i in 0..per_period {
            let t = now + 0.1 * f64::from(i) / f64::from(per_period.max(1));
            c.on_completion(t, c.epoch(), Outcome::Good, latency_s);
        }
        now += 0.1;
        c.note_lateness(late_s);
        c.tick(now, c.window());
    }
    now
}

#[test]
fn a_late_clock_is_not_taken_for_a_stuck_device_or_a_slow_one() {
    // Adaptive: a period with requests outstanding and no completion is a stuck device
    // (halve) — unless the caller's clock was late in it (the broker was not run).
    for (late_s, halved) in [(0.0, true), (0.05, false)] {
        let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams::default()));
        drive(&mut c, 0.0, 10, 0, 0.004, late_s);
        assert_eq!(c.halvings() > 0, halved, "late {late_s}");
        assert_eq!(c.late_periods() > 0, !halved);
    }
    // The latency law (target 5 ms) moves the window on 1 ms latencies — not when the
    // clock was late for a fifth of each period; lateness under the share is noise.
    for (late_s, moves) in [(0.0, true), (0.02, false), (0.005, true)] {
        let mut c = QueueDepthController::new(DepthPolicy::Latency(LatencyParams {
            target_ms: Some(5.0),
            min: 4,
            max: 64,
            ..LatencyParams::default()
        }));
        let w0 = c.window();
        drive(&mut c, 0.0, 20, 50, 0.001, late_s);
        assert_eq!(
            c.window() != w0,
            moves,
            "late {late_s}: {} from {w0}",
            c.window()
        );
    }
}

#[test]
fn bounds_out_of_order_do_not_panic_the_latency_law() {
    // Refused by every config reader, but the controller itself must survive it: before,
    // `f64::clamp(64, 8)` panicked on the first latency update.
    let mut c = QueueDepthController::new(DepthPolicy::Latency(LatencyParams {
        target_ms: Some(5.0),
        min: 64,
        max: 8,
        ..LatencyParams::default()
    }));
    for i in 1..50 {
        let now = f64::from(i) * 0.1;
        for _ in 0..100 {
            c.on_completion(now, c.epoch(), Outcome::Good, 0.004);
        }
        c.tick(now, 8);
    }
    assert_eq!(c.window(), 64);
}

#[test]
fn short_forms_parse() {
    assert_eq!(
        DepthPolicy::from_short("fixed:64"),
        Some(DepthPolicy::Fixed { depth: 64 })
    );
    assert_eq!(DepthPolicy::from_short("aimd"), Some(DepthPolicy::aimd()));
    assert!(matches!(
        DepthPolicy::from_short("adaptive"),
        Some(DepthPolicy::Adaptive(_))
    ));
    assert!(matches!(
        DepthPolicy::from_short("latency:20"),
        Some(DepthPolicy::Latency(LatencyParams { target_ms: Some(t), .. })) if t == 20.0
    ));
    assert_eq!(DepthPolicy::from_short("fixed:0"), None);
    // A compared law of the LUN's own kind keeps the LUN's parameters.
    let written = DepthPolicy::Latency(LatencyParams {
        target_ms: Some(5.0),
        beta: 1.5,
        ..LatencyParams::default()
    });
    let short = |s: &str| DepthPolicy::from_short(s).unwrap();
    assert_eq!(short("latency").compared_on(Some(&written)), written);
    match short("latency:8").compared_on(Some(&written)) {
        DepthPolicy::Latency(p) => assert_eq!((p.target_ms, p.beta), (Some(8.0), 1.5)),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        short("aimd").compared_on(Some(&written)),
        DepthPolicy::aimd()
    );
    assert_eq!(DepthPolicy::from_short("fifo"), None);
    assert_eq!(
        DepthPolicy::from_short("fixed:64").unwrap().name(),
        "fixed:64"
    );
}

#[test]
fn aimd_halves_after_sample_size_signals_of_the_current_epoch_only() {
    let mut c = QueueDepthController::new(DepthPolicy::aimd());
    assert_eq!(c.window(), 32);
    let e = c.epoch();
    for _ in 0..3 {
        c.on_completion(0.0, e, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.window(), 32);
    c.on_completion(0.0, e, Outcome::Congestion, 0.0);
    assert_eq!(c.window(), 16);
    // Stale signals from the old epoch do not cut again.
    for _ in 0..10 {
        c.on_completion(0.0, e, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.window(), 16);
}

#[test]
fn aimd_recovers_fast_to_below_the_ceiling_then_probes_slowly() {
    let mut c = QueueDepthController::new(DepthPolicy::aimd());
    for _ in 0..4 {
        c.on_completion(0.0, 0, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.window(), 16);
    // 4 good completions per +1 until 31 (ceiling 32).
    for _ in 0..(4 * 20) {
        c.on_completion(0.1, c.epoch(), Outcome::Good, 0.001);
    }
    assert_eq!(c.window(), 31);
    // A probe needs probe_interval_s (2 s) since the last.
    c.on_completion(2.5, c.epoch(), Outcome::Good, 0.001);
    for _ in 0..3 {
        c.on_completion(2.5, c.epoch(), Outcome::Good, 0.001);
    }
    assert_eq!(c.window(), 32);
    for _ in 0..8 {
        c.on_completion(2.6, c.epoch(), Outcome::Good, 0.001);
    }
    assert_eq!(c.window(), 32, "no second probe within the interval");
}

#[test]
fn adaptive_cuts_on_busy_in_numbers_not_on_one() {
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams {
        min: 8,
        ..KneeParams::default()
    }));
    let now = drive(&mut c, 0.0, 1, 200, 0.004, 0.0);
    let w = c.window();
    assert!(w >= 8, "{w}");
    // Three BUSY among a period's good completions: a cost, not a knee.
    for i in 0..100 {
        c.on_completion(now + 0.0005 * f64::from(i), c.epoch(), Outcome::Good, 0.001);
        if i % 40 == 0 {
            c.on_completion(
                now + 0.0005 * f64::from(i),
                c.epoch(),
                Outcome::Congestion,
                0.0,
            );
        }
    }
    assert_eq!(c.halvings(), 0);
    // Four more (7 of 107 answers, where chance at 1 % gives 1 and n·p + z·√(n·p) is
    // 3.5): the array says where its knee is.
    let e = c.epoch();
    for _ in 0..4 {
        c.on_completion(now + 0.06, e, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.halvings(), 1);
    // The window goes below the one that drew them (not to half of it), and so does
    // the knee.
    assert!(c.window() < w, "{} after {w}", c.window());
    assert!(c.knee().is_some_and(|k| k < f64::from(w)), "{:?}", c.knee());
    // Answers to requests sent before the cut do not count again.
    for _ in 0..8 {
        c.on_completion(now + 0.07, e, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.halvings(), 1);

    // Ten BUSY beside 500 good answers (1.96 % of them) are still within chance of a 1 %
    // share (n·p + z·√(n·p) = 10.36 at 510 answers); an eleventh halves.
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(KneeParams {
        min: 8,
        ..KneeParams::default()
    }));
    let now = drive(&mut c, 0.0, 1, 200, 0.004, 0.0);
    for i in 0..500 {
        c.on_completion(now + 0.0001 * f64::from(i), c.epoch(), Outcome::Good, 0.004);
    }
    for _ in 0..10 {
        c.on_completion(now + 0.06, c.epoch(), Outcome::Congestion, 0.0);
    }
    assert_eq!(c.halvings(), 0, "10 of 510 answers");
    c.on_completion(now + 0.06, c.epoch(), Outcome::Congestion, 0.0);
    assert_eq!(c.halvings(), 1, "11 of 511 answers");
}

#[test]
fn refusals_at_a_window_that_ended_a_period_quiet_are_judged_when_its_period_ends() {
    // The window is pinned at 8; a first period there ends without refusals.
    let pinned = KneeParams {
        min: 8,
        max: 8,
        ..KneeParams::default()
    };
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(pinned.clone()));
    let now = drive(&mut c, 0.0, 1, 200, 0.004, 0.0);
    // Then a cluster: 10 refusals after 100 good answers. A window not yet known quiet
    // is cut on far fewer at once (`adaptive_cuts_on_busy_in_numbers_not_on_one`); this
    // one is cut mid-period only by a storm (5 % of 110 with the test's margin: 11).
    for i in 0..100 {
        c.on_completion(now + 0.0002 * f64::from(i), c.epoch(), Outcome::Good, 0.004);
    }
    for _ in 0..10 {
        c.on_completion(now + 0.02, c.epoch(), Outcome::Congestion, 0.0);
    }
    assert_eq!(
        c.halvings(),
        0,
        "a quiet window is cut mid-period only by a storm"
    );
    // Its period (a cruise: 0.6 s and 384 good answers) ends with the 10 still
    // significant above 1 % of 410 (n·p + z·√(n·p) = 8.8): now it is cut.
    for i in 0..300 {
        c.on_completion(
            now + 0.03 + 0.0002 * f64::from(i),
            c.epoch(),
            Outcome::Good,
            0.004,
        );
    }
    c.tick(now + 0.3, c.window());
    assert_eq!(c.halvings(), 0);
    c.tick(now + 0.6, c.window());
    assert_eq!(c.halvings(), 1, "judged at the period's end");

    // A storm cuts the quiet window at once: 10 of the first 30 answers (5 % would be
    // 1.5, with the test's margin 4.4).
    let mut c = QueueDepthController::new(DepthPolicy::Adaptive(pinned));
    let now = drive(&mut c, 0.0, 1, 200, 0.004, 0.0);
    for i in 0..20 {
        c.on_completion(now + 0.0005 * f64::from(i), c.epoch(), Outcome::Good, 0.004);
    }
    let e = c.epoch();
    for _ in 0..10 {
        c.on_completion(now + 0.011, e, Outcome::Congestion, 0.0);
    }
    assert_eq!(c.halvings(), 1, "a storm");
}

#[test]
fn on_a_lun_that_refused_a_deeper_window_is_reached_one_request_per_completion() {
    let params = KneeParams {
        min: 8,
        ..KneeParams::default()
    };
    // Never refused: start-up's doubling is the window at once.
    let mut quiet = QueueDepthController::new(DepthPolicy::Adaptive(params.clone()));
    drive(&mut quiet, 0.0, 1, 200, 0.004, 0.0);
    assert_eq!(quiet.window(), 16);
    // One BUSY (a cost, no cut): the same doubling is climbed by one per completion.
    let mut refused = QueueDepthController::new(DepthPolicy::Adaptive(params));
    refused.on_completion(0.0, refused.epoch(), Outcome::Congestion, 0.0);
    let now = drive(&mut refused, 0.0, 1, 200, 0.004, 0.0);
    assert_eq!((refused.halvings(), refused.window()), (0, 8));
    for (i, want) in [9, 10, 11].into_iter().enumerate() {
        let t = now + 0.001 * i as f64;
        refused.on_completion(t, refused.epoch(), Outcome::Good, 0.004);
        assert_eq!(refused.window(), want);
    }
    for _ in 0..10 {
        refused.on_completion(now + 0.01, refused.epoch(), Outcome::Good, 0.004);
    }
    assert_eq!(refused.window(), 16, "the ramp ends at the window asked");
}

#[test]
fn a_stalled_period_is_congestion() {
    let mut c = QueueDepthController::new(DepthPolicy::from_short("latency:5").unwrap());
    let w0 = c.window();
    c.on_completion(0.05, 0, Outcome::Good, 0.005);
    c.tick(0.1, 8);
    let w1 = c.window();
    assert!(w1 >= w0);
    c.tick(0.2, 8); // nothing completed in (0.1, 0.2] with 8 outstanding
    assert!(c.window() < w1.max(2), "{} vs {w1}", c.window());
    let mut f = QueueDepthController::new(DepthPolicy::Fixed { depth: 64 });
    f.tick(0.2, 64);
    assert_eq!(f.window(), 64, "fixed never moves");
}

#[test]
fn parda_law_moves_toward_the_target() {
    let mut c = QueueDepthController::new(DepthPolicy::from_short("latency:10").unwrap());
    let mut t = 0.0;
    // Latency twice the target: the window shrinks.
    c.w = 32.0;
    for _ in 0..40 {
        t += 0.1;
        c.on_completion(t, 0, Outcome::Good, 0.020);
        c.tick(t, 32);
    }
    assert!(c.window() <= 4, "{}", c.window());
    // Latency half the target: it grows, once the EWMA (α = 0.9) has seen it.
    for _ in 0..60 {
        t += 0.1;
        c.on_completion(t, 0, Outcome::Good, 0.005);
        c.tick(t, 4);
    }
    assert!(c.window() >= 32, "{}", c.window());
}
