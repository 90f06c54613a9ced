//! The properties the scheduler exists for, checked on the virtual clock (seeded, exact).

use crate::array::LunModel;
use crate::depth::DepthPolicy;
use crate::mclock::TenantPolicy;
use crate::sim::*;
use crate::sweep::{POLICY_REFUSAL_SLACK, REFUSAL_BUDGET};

fn lun(depth: DepthPolicy, scheduler: SchedulerKind) -> LunSpec {
    LunSpec {
        model: Some(LunModel::default()),
        depth: Some(depth),
        scheduler,
        ..LunSpec::emulated("lun0", "p0")
    }
}

fn closed(name: &str, weight: f64, depth: u32) -> TenantSpec {
    TenantSpec {
        name: name.into(),
        lun: "lun0".into(),
        policy: TenantPolicy {
            weight,
            ..TenantPolicy::default()
        },
        workload: Workload::Closed {
            depth,
            bytes: 4096,
            read_pct: 100.0,
        },
        start_s: 0.0,
        stop_s: None,
        alloc_pct: 0.0,
        host: None,
    }
}

fn scenario(luns: Vec<LunSpec>, tenants: Vec<TenantSpec>, duration_s: f64) -> SimScenario {
    SimScenario {
        seed: 7,
        duration_s,
        warmup_s: 2.0,
        retry_delay_us: 1000.0,
        cost: Default::default(),
        ports: vec![PortSpec {
            name: "p0".into(),
            queue_limit: 32,
            budget: None,
            latency_us: 0.0,
        }],
        luns,
        tenants,
        events: vec![],
        compare: vec![],
        victim: None,
        pools: vec![],
        hosts: Vec::new(),
    }
}

fn eight_weighted(depth: DepthPolicy, scheduler: SchedulerKind) -> SimScenario {
    let weights = [1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0];
    let tenants = weights
        .iter()
        .enumerate()
        .map(|(i, w)| closed(&format!("t{i}"), *w, 32))
        .collect();
    scenario(vec![lun(depth, scheduler)], tenants, 30.0)
}

#[test]
fn weighted_shares_on_a_saturated_lun() {
    let r = run(&eight_weighted(
        DepthPolicy::Fixed { depth: 16 },
        SchedulerKind::Mclock,
    ))
    .unwrap();
    let jain = r.jain.unwrap();
    eprintln!(
        "weights 1:1:2:2:4:4:8:8 -> IOPS {:?}, Jain {jain:.4}, max share error {:.3}",
        r.tenants.iter().map(|t| t.iops.round()).collect::<Vec<_>>(),
        r.max_share_error
    );
    assert!(jain >= 0.99, "Jain {jain}");
    assert!(
        r.max_share_error <= 0.05,
        "max share error {}",
        r.max_share_error
    );
}

#[test]
fn fifo_ignores_weights_and_scheduling_conserves_work() {
    let fifo = run(&eight_weighted(
        DepthPolicy::Fixed { depth: 16 },
        SchedulerKind::Fifo,
    ))
    .unwrap();
    let mclock = run(&eight_weighted(
        DepthPolicy::Fixed { depth: 16 },
        SchedulerKind::Mclock,
    ))
    .unwrap();
    eprintln!(
        "fifo: Jain {:.3} share error {:.2}, {:.0} IOPS; mclock {:.0} IOPS",
        fifo.jain.unwrap(),
        fifo.max_share_error,
        fifo.aggregate_iops,
        mclock.aggregate_iops
    );
    assert!(fifo.max_share_error > 0.5, "FIFO does not honour weights");
    assert!(
        mclock.aggregate_iops >= 0.95 * fifo.aggregate_iops,
        "work conservation {:.3}",
        mclock.aggregate_iops / fifo.aggregate_iops
    );
}

#[test]
fn a_limit_holds_within_one_percent_every_second() {
    let mut limited = closed("limited", 1.0, 64);
    limited.policy.limit_iops = 500.0;
    let s = scenario(
        vec![lun(DepthPolicy::Fixed { depth: 16 }, SchedulerKind::Mclock)],
        vec![limited, closed("other", 1.0, 64)],
        12.0,
    );
    let r = run(&s).unwrap();
    let per_second = &r.tenants[0].per_second;
    eprintln!("limited tenant per second: {per_second:?}");
    assert_eq!(per_second.len(), 10);
    for n in per_second {
        assert!((*n as f64 - 500.0).abs() <= 5.0, "{per_second:?}");
    }
    assert!(
        r.tenants[1].iops > 3000.0,
        "the rest goes to the other tenant"
    );
}

#[test]
fn same_seed_same_result_different_seed_different() {
    let s = eight_weighted(DepthPolicy::aimd(), SchedulerKind::Mclock);
    let a = serde_json::to_string(&run(&s).unwrap()).unwrap();
    let b = serde_json::to_string(&run(&s).unwrap()).unwrap();
    assert_eq!(a, b);
    let mut s2 = s.clone();
    s2.seed = 8;
    assert_ne!(a, serde_json::to_string(&run(&s2).unwrap()).unwrap());
}

/// Two QD64 tenants under `depth`, a 50 % capacity drop at 15 s, on an array with
/// `busy_threshold` waiting slots.
fn drop_run(depth: DepthPolicy, busy_threshold: u32) -> SimResult {
    let mut l = lun(depth, SchedulerKind::Mclock);
    l.model.get_or_insert_with(LunModel::default).busy_threshold = busy_threshold;
    let mut s = scenario(
        vec![l],
        vec![closed("a", 1.0, 64), closed("b", 1.0, 64)],
        30.0,
    );
    s.events.push(EventSpec::capacity(15.0, "lun0", 50.0));
    run(&s).unwrap()
}

fn windows_within(r: &SimResult, from: f64, to: f64, target: f64) -> bool {
    r.luns[0]
        .window
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .all(|(_, d)| (f64::from(*d) - target).abs() <= 0.1 * target + 1e-9)
}

#[test]
fn aimd_converges_to_where_the_array_signals_and_follows_a_capacity_drop() {
    // AIMD sees only BUSY/QUEUE FULL, so it settles at the last window the array does not
    // refuse: servers + busy_threshold. An array that signals at its knee (no waiting slots)
    // puts AIMD at the knee: 16 within 5 s, 8 within 5 s of the drop, every 100 ms sample
    // within 10 %.
    let at_knee = drop_run(DepthPolicy::aimd(), 0);
    eprintln!(
        "aimd, BUSY at the knee: {:?}",
        at_knee.luns[0]
            .window
            .iter()
            .step_by(10)
            .collect::<Vec<_>>()
    );
    assert!(windows_within(&at_knee, 5.0, 15.0, 16.0));
    assert!(windows_within(&at_knee, 20.0, 30.0, 8.0));
    // Throughput per phase against the best fixed depth on the same array.
    for (from, to) in [(5.0, 15.0), (20.0, 30.0)] {
        let best = [6u32, 8, 12, 16, 24, 32]
            .iter()
            .map(|d| phase_throughput(&drop_run(DepthPolicy::Fixed { depth: *d }, 0), from, to))
            .fold(0.0, f64::max);
        let got = phase_throughput(&at_knee, from, to);
        eprintln!(
            "aimd {from}-{to} s: {got:.0} IOPS = {:.3} of the best fixed depth",
            got / best
        );
        assert!(got >= 0.95 * best, "{got} vs {best}");
    }
    // With one waiting slot (the default model) it settles one above the knee: 17, then 9.
    let one_slot = drop_run(DepthPolicy::aimd(), 1);
    assert!(windows_within(&one_slot, 5.0, 15.0, 17.0));
    assert!(windows_within(&one_slot, 20.0, 30.0, 9.0));
    assert!(one_slot.luns[0].halvings >= 2);
}

fn phase_throughput(r: &SimResult, from: f64, to: f64) -> f64 {
    // Completions per second across tenants within [from, to) (per_second starts at warm-up).
    let warm = 2.0;
    r.tenants
        .iter()
        .map(|t| {
            t.per_second
                .iter()
                .enumerate()
                .filter(|(i, _)| warm + *i as f64 >= from && warm + (*i as f64) < to)
                .map(|(_, n)| *n as f64)
                .sum::<f64>()
        })
        .sum::<f64>()
        / (to - from)
}

/// One-second means of a LUN's window (sampled every 100 ms), as `(second, mean)`.
fn window_seconds(r: &SimResult) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let w = &r.luns[0].window;
    let last = w.last().map_or(0.0, |x| x.0);
    let mut sec = 0.0;
    while sec + 1.0 <= last + 1e-9 {
        let v: Vec<f64> = w
            .iter()
            .filter(|(t, _)| *t >= sec && *t < sec + 1.0)
            .map(|x| f64::from(x.1))
            .collect();
        if !v.is_empty() {
            out.push((sec, v.iter().sum::<f64>() / v.len() as f64));
        }
        sec += 1.0;
    }
    out
}

#[test]
fn adaptive_converges_to_the_knee_holds_it_and_follows_a_capacity_drop() {
    // The default model: one waiting slot.
    let with_drop = |depth: DepthPolicy| drop_run(depth, 1);
    let adaptive = with_drop(DepthPolicy::default());
    let seconds = window_seconds(&adaptive);
    eprintln!(
        "adaptive, 1 s mean windows: {:?}",
        seconds
            .iter()
            .map(|x| (x.0, (x.1 * 10.0).round() / 10.0))
            .collect::<Vec<_>>()
    );
    // The knee search probes 25 % above and below its estimate one period in every eight or
    // so, so 1 s means wander by up to a quarter; the phase mean must sit on the knee.
    let near = |from: f64, to: f64, knee: f64| {
        let inside: Vec<f64> = seconds
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, d)| *d)
            .collect();
        let mean = inside.iter().sum::<f64>() / inside.len() as f64;
        // Plus one: this model takes one waiting request without BUSY, so `knee + 1` costs
        // nothing and the search may hold it (aimd settles there too).
        !inside.is_empty()
            && (mean - knee).abs() <= 0.1 * knee + 1.0
            && inside.iter().all(|d| (d - knee).abs() <= 0.25 * knee + 1.0)
    };
    // Knee 16 from 3 s on until the drop; knee 8 from 3 s after it.
    assert!(near(3.0, 15.0, 16.0), "{seconds:?}");
    assert!(near(18.0, 30.0, 8.0), "{seconds:?}");

    // Throughput in each phase against the best fixed depth for that phase.
    let fixed: Vec<SimResult> = [6, 8, 10, 12, 16, 20, 24, 32]
        .iter()
        .map(|d| with_drop(DepthPolicy::Fixed { depth: *d }))
        .collect();
    for (from, to) in [(5.0, 15.0), (20.0, 30.0)] {
        let best = fixed
            .iter()
            .map(|r| phase_throughput(r, from, to))
            .fold(0.0, f64::max);
        let got = phase_throughput(&adaptive, from, to);
        eprintln!(
            "{from}-{to} s: adaptive {got:.0} IOPS = {:.3} of the best fixed depth ({best:.0})",
            got / best
        );
        assert!(got >= 0.95 * best, "{from}-{to} s: {got} vs {best}");
    }
}

#[test]
fn noisy_neighbour_tail_with_adaptive_depth_and_with_a_deep_fixed_window() {
    let mut victim = closed("victim", 1.0, 1);
    victim.workload = Workload::Closed {
        depth: 1,
        bytes: 4096,
        read_pct: 100.0,
    };
    let aggressors = |n: usize| {
        (0..n)
            .map(|i| closed(&format!("aggr{i}"), 1.0, 128))
            .collect::<Vec<_>>()
    };
    let solo = run(&scenario(
        vec![lun(DepthPolicy::default(), SchedulerKind::Mclock)],
        vec![victim.clone()],
        20.0,
    ))
    .unwrap();
    let with = |policy: DepthPolicy| {
        let mut t = vec![victim.clone()];
        t.extend(aggressors(7));
        run(&scenario(vec![lun(policy, SchedulerKind::Mclock)], t, 20.0)).unwrap()
    };
    let adaptive = with(DepthPolicy::default());
    let fixed64 = with(DepthPolicy::Fixed { depth: 64 });
    let solo_p99 = solo.tenants[0].lat_p99_us;
    let a = adaptive.tenants[0].lat_p99_us / solo_p99;
    let f = fixed64.tenants[0].lat_p99_us / solo_p99;
    eprintln!(
        "victim p99: solo {solo_p99:.0} us; with 7 QD128 aggressors: adaptive {:.0} us ({a:.2}x), fixed:64 {:.0} us ({f:.2}x)",
        adaptive.tenants[0].lat_p99_us, fixed64.tenants[0].lat_p99_us
    );
    assert!(a <= 1.5, "adaptive victim p99 ratio {a}");
    // On this array (BUSY past one waiting request) a deep fixed window no longer hurts much:
    // while a refused request waits for its retry, no more is in flight than at the refusal,
    // so the window is held near what the array takes (stop 42: 1.07× against adaptive's
    // 1.06×; before, every refusal stopped the LUN for 1 ms and the victim waited behind it).
    assert!(f <= 1.5, "fixed:64 victim p99 ratio {f}");
    // An array that never refuses (a file, a block device) queues all of a deep window.
    let quiet = |policy: DepthPolicy| {
        let mut t = vec![victim.clone()];
        t.extend(aggressors(7));
        let mut l = lun(policy, SchedulerKind::Mclock);
        l.model = Some(LunModel {
            busy_threshold: 65536,
            ..LunModel::default()
        });
        run(&scenario(vec![l], t, 20.0)).unwrap().tenants[0].lat_p99_us / solo_p99
    };
    let (qa, qf) = (
        quiet(DepthPolicy::default()),
        quiet(DepthPolicy::Fixed { depth: 64 }),
    );
    eprintln!("never BUSY: adaptive {qa:.2}x, fixed:64 {qf:.2}x");
    assert!(
        qa <= 1.5,
        "adaptive victim p99 ratio {qa} on an array that never refuses"
    );
    assert!(
        qf >= qa + 0.1,
        "a deep fixed window hurts the victim more: {qf} against {qa} (measured 1.29 against 1.07)"
    );
}

#[test]
fn reservations_hold_and_fall_back_to_max_min_fairness_when_capacity_cannot_cover_them() {
    // Capacity ≈ 3900 IOPS; reservations 1200 + 1000 + 530 = 2730 (70 %); a fourth tenant
    // has none but weight 10. At 12 s capacity halves (≈ 1950 < 2730).
    let mut tenants = Vec::new();
    for (name, r) in [("r1200", 1200.0), ("r1000", 1000.0), ("r530", 530.0)] {
        let mut t = closed(name, 1.0, 64);
        t.policy.reservation_iops = r;
        tenants.push(t);
    }
    tenants.push(closed("best-effort", 10.0, 64));
    let mut s = scenario(
        vec![lun(DepthPolicy::default(), SchedulerKind::Mclock)],
        tenants,
        22.0,
    );
    s.events.push(EventSpec::capacity(12.0, "lun0", 50.0));
    let r = run(&s).unwrap();
    // per_second[i] covers [2 + i, 3 + i): before the cut, seconds 2..12 are i = 0..10.
    let reserved = [1200.0, 1000.0, 530.0];
    let mut met = 0;
    let mut windows = 0;
    for (t, want) in r.tenants.iter().zip(reserved) {
        for n in &t.per_second[..10] {
            windows += 1;
            if *n as f64 >= want * 0.99 {
                met += 1;
            }
        }
    }
    eprintln!(
        "before the cut: {met}/{windows} one-second windows at their reservation; per second: {:?}",
        r.tenants
            .iter()
            .map(|t| t.per_second.clone())
            .collect::<Vec<_>>()
    );
    assert!(met as f64 >= 0.99 * windows as f64);
    // After the cut (from 14 s, i = 12..20) the reservations exceed capacity. A tenant that
    // falls behind its R tags is re-tagged from its requests' arrival (tags never lie in the
    // past), so the reserved tenants share capacity max-min fairly: a reservation that fits in
    // an equal split is met in full, the others split what is left equally. The tenant without
    // a reservation waits until capacity returns: reservations come first.
    let after: Vec<f64> = r
        .tenants
        .iter()
        .map(|t| t.per_second[12..20].iter().sum::<u64>() as f64 / 8.0)
        .collect();
    let total_reserved: f64 = after[..3].iter().sum();
    let expected = max_min_fair(total_reserved, &reserved);
    eprintln!("after the cut: got {after:?}, max-min fair {expected:?}");
    for (got, want) in after.iter().zip(&expected) {
        assert!(
            (got - want).abs() <= 0.02 * want,
            "after the cut: {after:?} vs {expected:?}"
        );
    }
    assert!(
        after[3] < 0.02 * total_reserved,
        "best-effort after the cut: {after:?}"
    );
}

/// Water-filling: `capacity` split among demands, each capped at its demand.
fn max_min_fair(capacity: f64, demands: &[f64]) -> Vec<f64> {
    let mut alloc = vec![0.0; demands.len()];
    let mut left = capacity;
    let mut open: Vec<usize> = (0..demands.len()).collect();
    while !open.is_empty() {
        let share = left / open.len() as f64;
        let (fits, rest): (Vec<usize>, Vec<usize>) =
            open.iter().partition(|&&i| demands[i] <= share);
        if fits.is_empty() {
            for i in rest {
                alloc[i] = share;
            }
            break;
        }
        for i in fits {
            alloc[i] = demands[i];
            left -= demands[i];
        }
        open = rest;
    }
    alloc
}

// ---- multipath ----

fn shipped(name: &str) -> SimScenario {
    let text = match name {
        "imbalance" => include_str!("../../scenarios/sim-path-imbalance.toml"),
        "failure" => include_str!("../../scenarios/sim-path-failure.toml"),
        "thin" => include_str!("../../scenarios/sim-thin-pool.toml"),
        _ => unreachable!(),
    };
    toml::from_str(text).unwrap()
}

/// The same scenario with the LUN on one of its paths only.
fn only_path(s: &SimScenario, k: usize) -> SimScenario {
    let mut one = s.clone();
    one.compare = vec!["first-available".into()];
    let p = one.luns[0].paths[k].clone();
    one.luns[0].paths = vec![p];
    one
}

#[test]
fn selectors_on_two_paths_one_three_times_slower() {
    let s = shipped("imbalance");
    let alone: Vec<f64> = (0..2)
        .map(|k| run_compare(&only_path(&s, k)).unwrap()[0].1.aggregate_iops)
        .collect();
    let ideal: f64 = alone.iter().sum();
    let results = run_compare(&s).unwrap();
    println!("{}", render(&results));
    println!(
        "alone: fast {:.0} IOPS, slow {:.0} IOPS; ideal (sum) {:.0}",
        alone[0], alone[1], ideal
    );
    println!("{:<18} {:>9} {:>9}", "selector", "IOPS", "of ideal");
    let mut of_ideal = std::collections::HashMap::new();
    for (name, r) in &results {
        let f = r.aggregate_iops / ideal;
        println!("{:<18} {:>9.0} {:>8.1}%", name, r.aggregate_iops, f * 100.0);
        of_ideal.insert(name.as_str(), f);
    }
    assert!(of_ideal["service-time"] >= 0.90, "{of_ideal:?}");
    assert!(of_ideal["least-queue-depth"] >= 0.90, "{of_ideal:?}");
    assert!(of_ideal["round-robin"] < 0.90, "{of_ideal:?}");
    assert!(of_ideal["first-available"] < 0.90, "{of_ideal:?}");
    // The slow path really is about 3× slower per request.
    let st = &results[3].1.luns[0].paths;
    let ratio = st[1].ewma_service_us.unwrap() / st[0].ewma_service_us.unwrap();
    assert!((2.5..3.5).contains(&ratio), "{ratio}");
}

#[test]
fn a_path_fails_under_load_nothing_is_lost_and_it_fails_back_once() {
    let s = shipped("failure");
    let r = run(&s).unwrap();
    println!("{}", render(&[("service-time".into(), r.clone())]));
    let t = &r.tenants[0];
    assert_eq!(t.errors, 0, "no error reaches the tenant");
    let l = &r.luns[0];
    assert!(
        l.reissued > 0,
        "requests were in flight on the path that failed"
    );
    assert_eq!(
        l.reissued_ok, l.reissued,
        "every one of them finished on the other path"
    );
    let failover = l.max_failover_s.unwrap();
    assert!(failover < 1.0, "failover took {failover} s");
    let kinds: Vec<(&str, &str)> = l
        .path_events
        .iter()
        .map(|e| (e.path.as_str(), e.event.what))
        .collect();
    assert_eq!(
        kinds,
        [("a", "failed"), ("a", "returning"), ("a", "restored")],
        "one failure, one failback: no flapping"
    );
    let at = |k: usize| l.path_events[k].event.at;
    assert!((at(0) - 10.0).abs() < 0.01, "{}", at(0));
    // Port back at 20 s; the checker runs each second; 5 s stable.
    assert!(at(1) >= 20.0 && at(1) <= 21.0 + 1e-9, "{}", at(1));
    assert!((at(2) - at(1) - 5.0).abs() < 0.02, "{}", at(2));
    // per_second[i] covers [2 + i, 3 + i): path a carries nothing from 11 s to its return,
    // and takes its share again after.
    let a = &l.paths[0].per_second;
    assert!(a[9..=17].iter().all(|n| *n == 0), "{a:?}");
    assert!(a[25..].iter().all(|n| *n > 1000), "{a:?}");
    // The tenant kept going throughout: no second without completions.
    assert!(t.per_second.iter().all(|n| *n > 1000), "{:?}", t.per_second);
}

#[test]
fn all_paths_down_past_the_hold_fails_requests_at_the_bound_then_recovers() {
    let mut s = shipped("failure");
    s.luns[0].multipath.hold_s = 3.0;
    s.events = vec![
        EventSpec::fault(5.0, "a", "down"),
        EventSpec::fault(5.0, "b", "down"),
        EventSpec::fault(12.0, "b", "up"),
    ];
    s.duration_s = 20.0;
    let r = run(&s).unwrap();
    let t = &r.tenants[0];
    let first = t.first_error_s.expect("requests failed");
    let last = t.last_error_s.unwrap();
    assert!((first - 8.0).abs() <= 1.0, "first IOERR at {first} s");
    assert!(t.errors >= 48, "the held requests failed: {}", t.errors);
    // b answers the checker at 12-13 s and, with no other path, is used at once.
    let l = &r.luns[0];
    let restored = l
        .path_events
        .iter()
        .find(|e| e.event.what == "restored")
        .expect("b came back")
        .event
        .at;
    assert!((12.0..=13.0 + 1e-9).contains(&restored), "{restored}");
    assert!(
        last <= restored + 0.01,
        "no error after the path returned: {last}"
    );
    // per_second[i] covers [2 + i, 3 + i): good I/O again from 14 s.
    assert!(
        t.per_second[12..].iter().all(|n| *n > 1000),
        "{:?}",
        t.per_second
    );
    assert!(
        t.per_second[4..9].iter().all(|n| *n == 0),
        "{:?}",
        t.per_second
    );
}

#[test]
fn a_flaky_path_is_taken_out_and_requests_still_succeed() {
    let mut s = shipped("failure");
    let mut flaky = EventSpec::fault(5.0, "a", "flaky");
    flaky.error_rate = Some(0.05);
    s.events = vec![flaky];
    s.duration_s = 15.0;
    let r = run(&s).unwrap();
    assert_eq!(r.tenants[0].errors, 0);
    let l = &r.luns[0];
    assert_eq!(l.reissued, l.reissued_ok);
    // Each failback is followed by another failure while the link stays flaky, never an
    // unbounded flap: at most one round per failback time.
    let failures = l
        .path_events
        .iter()
        .filter(|e| e.event.what == "failed")
        .count();
    assert!((1..=3).contains(&failures), "{:?}", l.path_events);
}

#[test]
fn scenario_errors_name_the_field() {
    let mut s = shipped("failure");
    s.luns[0].port = Some("a".into());
    assert!(validate(&s).unwrap_err().contains("not both"));
    let mut s = shipped("failure");
    s.luns[0].paths[1].port = Some("nope".into());
    assert_eq!(
        validate(&s).unwrap_err(),
        "lun[0].paths[1].port: no [[port]] named 'nope'"
    );
    // One LUN type with the broker's: the store fields are the broker's, and a simulation
    // says so rather than ignore them.
    let mut s = shipped("failure");
    s.luns[0].path = Some("/var/lib/x.img".into());
    assert!(validate(&s).unwrap_err().starts_with("lun[0].path"));
    let mut s = shipped("failure");
    s.luns[0].backend = Some(crate::lun::LunBackend::File);
    assert!(validate(&s).unwrap_err().starts_with("lun[0].backend"));
    let mut s = shipped("failure");
    s.events = vec![EventSpec::fault(1.0, "a", "slow")];
    assert!(validate(&s).unwrap_err().contains("needs factor"));
    let mut s = shipped("imbalance");
    s.compare = vec!["round-robin:0".into()];
    assert!(run_compare(&s).unwrap_err().contains("compare[0]"));
}

#[test]
fn numbers_the_engine_cannot_hold_are_refused_before_it_runs() {
    // Each of these panicked, aborted or grew memory without bound before it was checked.
    let base = || shipped("failure");
    let mut s = base();
    s.duration_s = f64::INFINITY;
    assert!(validate(&s).unwrap_err().starts_with("duration_s"));
    let mut s = base();
    s.duration_s = 1e15;
    assert!(validate(&s).unwrap_err().starts_with("duration_s"));
    let mut s = base();
    s.luns[0].depth = Some(DepthPolicy::Latency(crate::depth::LatencyParams {
        target_ms: Some(5.0),
        min: 64,
        max: 8,
        ..Default::default()
    }));
    assert!(
        validate(&s).unwrap_err().starts_with("lun[0].depth.min"),
        "{:?}",
        validate(&s)
    );
    let mut s = base();
    s.tenants[0].workload = Workload::Open {
        rate_iops: f64::INFINITY,
        bytes: 4096,
        read_pct: 100.0,
    };
    assert!(
        validate(&s)
            .unwrap_err()
            .starts_with("tenant[0].workload.rate_iops")
    );
    let mut s = base();
    s.luns[0]
        .model
        .get_or_insert_with(LunModel::default)
        .unit_mib_per_s = 0.0;
    assert!(
        validate(&s)
            .unwrap_err()
            .starts_with("lun[0].model.unit_mib_per_s")
    );
    let mut s = base();
    s.tenants.push(s.tenants[0].clone());
    assert!(validate(&s).unwrap_err().contains("used twice"));
}

#[test]
fn a_policy_change_event_replaces_the_window_controller_mid_run() {
    let mut s = scenario(
        vec![lun(DepthPolicy::Fixed { depth: 32 }, SchedulerKind::Mclock)],
        vec![closed("a", 1.0, 64)],
        10.0,
    );
    let mut e = EventSpec::capacity(5.0, "lun0", 100.0);
    e.capacity_pct = None;
    e.depth = Some("fixed:4".into());
    s.events.push(e);
    let r = run(&s).unwrap();
    let w = &r.luns[0].window;
    assert!(
        w.iter().filter(|(t, _)| *t < 4.9).all(|(_, d)| *d == 32),
        "{w:?}"
    );
    assert!(
        w.iter().filter(|(t, _)| *t > 5.1).all(|(_, d)| *d == 4),
        "{w:?}"
    );
    // Two parameters at once are refused, naming them.
    let mut bad = EventSpec::capacity(1.0, "lun0", 50.0);
    bad.depth = Some("aimd".into());
    assert!(bad.action().unwrap_err().contains("one thing"));
}

/// The margin call, over seeds: the pool runs out at ≈ 4.3 s and grows at 12 s. A pool-wide
/// stall stops every tenant for those seconds; per-tenant hold stops only the filler, which then
/// catches up with no error; error fails only the filler's allocating writes.
#[test]
fn thin_pool_out_of_space_stalls_everyone_pool_wide_and_only_the_filler_under_hold() {
    let full = 5..12; // whole seconds inside the out-of-space period
    for seed in 1..=10 {
        let mut s = shipped("thin");
        s.seed = seed;
        let results = run_compare(&s).unwrap();
        let by = |policy: &str, tenant: &str| -> TenantResult {
            let r = &results.iter().find(|(n, _)| n == policy).unwrap().1;
            r.tenants.iter().find(|t| t.name == tenant).unwrap().clone()
        };
        for t in ["filler", "db", "web"] {
            let stall = by("pool:pool-stall", t);
            assert!(
                full.clone().all(|sec| stall.per_second[sec] == 0),
                "seed {seed}: {t} ran during a pool-wide stall: {:?}",
                stall.per_second
            );
            assert_eq!(stall.errors, 0);
        }
        for t in ["db", "web"] {
            for policy in ["pool:hold", "pool:error"] {
                // Never stalled: every second at least a quarter of its best (the adaptive
                // window alone moves it by half on some seeds, an issue of its own).
                let r = by(policy, t);
                let min = r.per_second[full.clone()]
                    .iter()
                    .min()
                    .copied()
                    .unwrap_or(0);
                let max = r.per_second.iter().max().copied().unwrap_or(0);
                assert!(
                    min * 4 > max,
                    "seed {seed} {policy}: {t} stalled: {:?}",
                    r.per_second
                );
                assert_eq!(r.errors, 0, "seed {seed} {policy}: {t}");
            }
        }
        let held = by("pool:hold", "filler");
        assert_eq!(held.errors, 0, "seed {seed}: held, never failed");
        assert!(full.clone().all(|sec| held.per_second[sec] == 0));
        // ≈ 1550 held writes plus 200/s new ones: the backlog drains within four seconds.
        let after: u64 = held.per_second[12..16].iter().sum();
        assert!(
            after > 2000,
            "seed {seed}: the backlog after 12 s: {:?}",
            held.per_second
        );
        let failed = by("pool:error", "filler");
        assert!(failed.errors > 1000, "seed {seed}: {}", failed.errors);
        let pools = &results[0].1.pools;
        assert!(
            pools[0].full_at_s.is_some_and(|t| (3.5..5.0).contains(&t)),
            "seed {seed}: {pools:?}"
        );
    }
}

/// The robustness sweep on a reduced grid (the full one: `scenarios/sweep-window.toml`):
/// array shapes with and without BUSY, a link round trip, several tenant counts and a
/// capacity drop and return, three seeds each. The knee search must hold the window near the
/// knee and the throughput near the best fixed depth of every phase — and do better than
/// PARDA's latency law, whose failure on a flat latency curve is what it replaces.
#[test]
fn the_knee_search_holds_across_seeds_and_array_shapes() {
    let grid: crate::sweep::SweepGrid = toml::from_str(
        r#"
        seeds = 3
        policies = ["adaptive", "latency"]
        servers = [4, 16]
        service = [{ mean_us = 1000 }, { mean_us = 4000 }]
        busy = ["knee", "one-past", "never"]
        link_us = [0, 500]
        tenants = [2, 8]
        phase_s = 8
        "#,
    )
    .unwrap();
    let r = crate::sweep::run(&grid, 2).unwrap();
    eprint!("{}", crate::sweep::render(&r));
    let adaptive = &r.policies[0];
    let latency = &r.policies[1];
    let oracle = &r.policies[2];
    assert_eq!(adaptive.cases, 36);
    // The judge resolves its targets: a window held at each phase's knee meets them (phases
    // long enough for the slow shapes; 100 % here, 98.4 % on the full grid's seeds 1–4).
    assert_eq!(oracle.policy, crate::sweep::ORACLE);
    assert!(oracle.meeting >= 0.95, "knee oracle {}", oracle.meeting);
    let [p5, median, worst] = adaptive.throughput_ratio;
    // Stop 36: p5 0.978, median 0.992, worst 0.958, 88.9 % meeting. Stop 37, with BUSY now
    // crossed with the links (`SweepGrid::shapes`; the cases changed): 0.957, 0.989, 0.909,
    // 88.9 %. Stop 38, refusals judged and a halving only on a significant share: 0.972,
    // 0.991, 0.909, 94.4 %.
    assert!(
        median >= 0.95 && p5 >= 0.93 && worst >= 0.9 && adaptive.meeting >= 0.8,
        "throughput ÷ best fixed: p5 {p5}, median {median}, worst {worst}; meeting {}",
        adaptive.meeting
    );
    // η = 0.2 trades latency for a throughput floor (knee.rs): p95 1.45 here at stop 25.
    let lat_p95 = adaptive.latency_ratio[1];
    assert!(
        lat_p95 <= 1.5,
        "latency ÷ latency at the knee, p95 {lat_p95}"
    );
    assert!(
        worst > latency.throughput_ratio[2],
        "PARDA's worst case is the one this replaces"
    );
    // Refusals (stop 38): the adaptive window halves on them and stays within the budget
    // (worst 1.0 % of answers here); PARDA's law does not hear them (39 phases over, 41.5 %).
    assert_eq!(
        adaptive.refusing_phases, 0,
        "worst {}",
        adaptive.worst_refused_share
    );
    assert!(latency.refusing_phases > 0, "the refusal target judges");
    let [w5, wmed, w95] = adaptive.window_ratio;
    assert!(
        (0.85..=1.15).contains(&wmed) && w5 >= 0.5 && w95 <= 1.6,
        "window ÷ knee p5 {w5}, median {wmed}, p95 {w95}"
    );
    assert!(
        adaptive.meeting > latency.meeting && adaptive.below_floor < latency.below_floor,
        "adaptive {} meeting, {} below 0.85; latency {} and {}",
        adaptive.meeting,
        adaptive.below_floor,
        latency.meeting,
        latency.below_floor
    );
}

/// The seeds that used to fail (issue 11: 12 of 40 far from the knee under PARDA's law):
/// `scenarios/sim-congested-array.toml`'s LUN, 3–13 s, every seed from 1 to 40.
#[test]
fn the_adaptive_window_sits_on_the_knee_for_every_seed() {
    let mut worst = (f64::INFINITY, 0);
    for seed in 1..=40 {
        let mut s = congested_array_scenario();
        s.seed = seed;
        let run = |depth: DepthPolicy| {
            let mut s = s.clone();
            s.luns[0].depth = Some(depth);
            crate::sim::run(&s).unwrap()
        };
        let adaptive = run(DepthPolicy::default());
        let fixed = run(DepthPolicy::Fixed { depth: 16 });
        let windows: Vec<f64> = adaptive.luns[0]
            .window
            .iter()
            .filter(|(t, _)| (3.0..13.0).contains(t))
            .map(|(_, w)| f64::from(*w))
            .collect();
        let mean = windows.iter().sum::<f64>() / windows.len() as f64;
        assert!(
            (13.0..=18.0).contains(&mean),
            "seed {seed}: mean window {mean:.1} over 3–13 s (knee 16)"
        );
        let ratio = phase_throughput(&adaptive, 3.0, 13.0) / phase_throughput(&fixed, 3.0, 13.0);
        if ratio < worst.0 {
            worst = (ratio, seed);
        }
    }
    eprintln!(
        "worst throughput ÷ fixed:16 over 3–13 s: {:.3} (seed {})",
        worst.0, worst.1
    );
    assert!(
        worst.0 >= 0.8,
        "seed {}: {:.3} of fixed:16",
        worst.1,
        worst.0
    );
}

fn congested_array_scenario() -> SimScenario {
    let mut s: SimScenario =
        toml::from_str(include_str!("../../scenarios/sim-congested-array.toml")).unwrap();
    s.compare.clear();
    s.victim = None;
    s
}

/// Issue 11's misleading case: weights 1:3:5, request sizes 4, 64 and 16 KiB, the third tenant
/// 8 s late. mClock divides cost, and only while tenants wait: judged that way it is fair, and
/// FIFO is not; the IOPS-based figure over the whole run calls both unfair.
#[test]
fn fairness_is_judged_in_cost_over_the_contended_seconds() {
    let mut s: SimScenario =
        toml::from_str(include_str!("../../scenarios/sim-mixed-sizes.toml")).unwrap();
    s.compare.clear();
    let mclock = run(&s).unwrap();
    for l in &mut s.luns {
        l.scheduler = SchedulerKind::Fifo;
    }
    let fifo = run(&s).unwrap();
    eprintln!("mclock {:?}\nfifo {:?}", mclock.cost, fifo.cost);
    assert!(mclock.cost.contended_seconds >= 25, "{:?}", mclock.cost);
    let err = mclock.cost.max_share_error.expect("contenders were judged");
    assert!(err <= 0.05, "mClock's cost share error {err}");
    assert!(fifo.cost.max_share_error.unwrap() > 0.3, "{:?}", fifo.cost);
    // The whole-run IOPS figure: sizes and the idle start make mClock look unfair.
    assert!(mclock.max_share_error > 1.0, "{}", mclock.max_share_error);
}

/// An array behind a 500 µs link that answers BUSY as soon as one request waits beyond its 16
/// units counts the requests whose answers are still on the wire: windows past 17 draw BUSY
/// now and then and still serve more (seed 1: `fixed:18` 0.26 % of answers BUSY, +6 %;
/// `fixed:19` 0.98 %, +11 %; `fixed:20` 2.9 %, +15 %, since a refusal no longer stops the
/// LUN). `adaptive` used to halve on the first BUSY and sat at 17; it cuts on BUSY in numbers
/// (4 in a period and 1 % of its answers) and must serve ≥ 0.915× the best of those windows
/// within the sweep's refusal budget, with its own refusals within the policy's (stop 42:
/// 0.92–0.96 of `fixed:19`, 0.37–0.9 % refused; stop 41's code, against the same reference,
/// 0.92–0.95). Sitting at 17 gives 0.902–0.903.
#[test]
fn a_few_busy_answers_are_a_cost_not_a_knee() {
    let base: SimScenario = toml::from_str(
        r#"
        duration_s = 10
        warmup_s = 3
        retry_delay_us = 1000
        [[port]]
        name = "port"
        queue_limit = 65536
        latency_us = 500
        [[lun]]
        name = "lun"
        port = "port"
        model = { servers = 16, read_base_us = 1000, write_base_us = 1000, busy_threshold = 1 }
        [[tenant]]
        name = "t0"
        lun = "lun"
        workload = { kind = "closed", depth = 36 }
        [[tenant]]
        name = "t1"
        lun = "lun"
        workload = { kind = "closed", depth = 36 }
        "#,
    )
    .unwrap();
    for seed in 1..=5 {
        // Throughput, and BUSY as a share of all answers, after the warm-up.
        let figures = |depth: DepthPolicy| {
            let mut s = base.clone();
            s.seed = seed;
            s.luns[0].depth = Some(depth);
            let r = run(&s).unwrap();
            let l = &r.luns[0];
            let good: u64 = l.per_second.iter().skip(3).sum();
            let refused: u64 = l.per_second_refused.iter().skip(3).sum();
            assert!(good > 0, "seed {seed}: no completions");
            (l.iops, refused as f64 / (good + refused) as f64)
        };
        let best = (17..=20)
            .map(|d| figures(DepthPolicy::Fixed { depth: d }))
            .filter(|(_, refused)| *refused <= REFUSAL_BUDGET)
            .map(|(iops, _)| iops)
            .fold(0.0, f64::max);
        assert!(best > 0.0, "seed {seed}: no fixed window within the budget");
        let (adaptive, refused) = figures(DepthPolicy::default());
        assert!(
            adaptive >= 0.915 * best && refused <= POLICY_REFUSAL_SLACK * REFUSAL_BUDGET,
            "seed {seed}: adaptive {adaptive:.0} IOPS ({:.2} % BUSY), best quiet fixed 17–20 {best:.0}",
            100.0 * refused
        );
    }
}
