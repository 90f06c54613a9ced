//! Several hosts on one array (`crate::sim::hosts`, PARDA): the shipped three-host scenario
//! over seeds — throughput in the hosts' shares while all run, the stopped host's capacity
//! taken up by the others, each host seeing only its own requests.

use crate::sim::{SimScenario, run};

fn three_hosts(seed: u64) -> SimScenario {
    let mut s: SimScenario =
        toml::from_str(include_str!("../../scenarios/sim-three-hosts.toml")).unwrap();
    s.seed = seed;
    s
}

/// Mean IOPS of `tenant` over seconds `from..to` of the run (per_second starts after warm-up).
fn mean(r: &crate::sim::SimResult, tenant: usize, from: f64, to: f64, warmup: f64) -> f64 {
    let ps = &r.tenants[tenant].per_second;
    let (a, b) = ((from - warmup) as usize, (to - warmup) as usize);
    ps[a..b].iter().sum::<u64>() as f64 / (b - a) as f64
}

#[test]
fn three_hosts_get_their_shares_of_one_array_and_take_up_a_stopped_hosts_capacity() {
    let mut worst_ratio_error: f64 = 0.0;
    let mut worst_takeup: f64 = f64::MAX;
    for seed in 1..=8 {
        let s = three_hosts(seed);
        let r = run(&s).unwrap();
        let w = s.warmup_s;
        // All three: seconds 6–12 (two seconds to settle after warm-up).
        let all: Vec<f64> = (0..3).map(|t| mean(&r, t, 6.0, 12.0, w)).collect();
        let total: f64 = all.iter().sum();
        for (t, share) in [(1, 2.0), (2, 4.0)] {
            let err = (all[t] / all[0] / share - 1.0).abs();
            worst_ratio_error = worst_ratio_error.max(err);
            assert!(
                err <= 0.10,
                "seed {seed}: host {} got {:.2}× host 1, its share says {share} ({all:.0?})",
                t + 1,
                all[t] / all[0]
            );
        }
        // h3 stops at 12 s; from 14 s (within 2 s) the other two carry the array, still 1:2.
        let two: Vec<f64> = (0..2).map(|t| mean(&r, t, 14.0, 20.0, w)).collect();
        let takeup = (two[0] + two[1]) / total;
        worst_takeup = worst_takeup.min(takeup);
        assert!(
            takeup >= 0.9,
            "seed {seed}: two hosts carry {takeup:.2} of what three did ({two:.0?} vs {all:.0?})"
        );
        assert!(
            (two[1] / two[0] / 2.0 - 1.0).abs() <= 0.10,
            "seed {seed}: the two remaining hosts keep 1:2: {two:.0?}"
        );
        // Each host's lane is its own dispatcher: named after the LUN and the host.
        let names: Vec<&str> = r.luns.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["shared@h1", "shared@h2", "shared@h3"]);
    }
    eprintln!(
        "three hosts, 8 seeds: worst share error {:.1} %, worst take-up {:.2}",
        worst_ratio_error * 100.0,
        worst_takeup
    );
}

#[test]
fn a_hosts_share_defaults_to_its_tenants_weights_and_mistakes_are_named() {
    let mut s = three_hosts(1);
    for h in &mut s.hosts {
        h.share = None;
    }
    // Weights 1, 2, 4 on the hosts' tenants say the same as shares 1, 2, 4.
    for (t, w) in s.tenants.iter_mut().zip([1.0, 2.0, 4.0]) {
        t.policy.weight = w;
    }
    let r = run(&s).unwrap();
    let all: Vec<f64> = (0..3).map(|t| mean(&r, t, 6.0, 12.0, s.warmup_s)).collect();
    assert!((all[2] / all[0] / 4.0 - 1.0).abs() <= 0.10, "{all:.0?}");
    let mut bad = three_hosts(1);
    bad.tenants[0].host = Some("h9".into());
    assert!(
        run(&bad)
            .unwrap_err()
            .contains("tenant[0].host: no [[host]] named 'h9'")
    );
    let mut bad = three_hosts(1);
    bad.tenants[1].host = None;
    assert!(
        run(&bad)
            .unwrap_err()
            .contains("every tenant names its host")
    );
    let mut bad = three_hosts(1);
    bad.ports[0].budget = Some(8);
    assert!(run(&bad).unwrap_err().contains("port[0].budget"));
}
