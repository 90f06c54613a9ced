//! The properties the scheduler exists for, checked on the virtual clock (seeded, exact).

use crate::array::LunModel;
use crate::depth::DepthPolicy;
use crate::mclock::TenantPolicy;
use crate::sim::*;

fn lun(depth: DepthPolicy, scheduler: SchedulerKind) -> LunSpec {
    LunSpec {
        name: "lun0".into(),
        port: "p0".into(),
        model: LunModel::default(),
        depth,
        scheduler,
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
        }],
        luns,
        tenants,
        events: vec![],
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

#[test]
fn aimd_converges_to_the_knee_and_follows_a_capacity_drop() {
    let mut s = scenario(
        vec![lun(DepthPolicy::aimd(), SchedulerKind::Mclock)],
        vec![closed("a", 1.0, 64), closed("b", 1.0, 64)],
        30.0,
    );
    s.events.push(EventSpec {
        at_s: 15.0,
        lun: "lun0".into(),
        capacity_pct: 50.0,
    });
    let r = run(&s).unwrap();
    let w = &r.luns[0].window;
    let within = |from: f64, to: f64, knee: f64| {
        w.iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .all(|(_, d)| (f64::from(*d) - knee).abs() <= 0.1 * knee + 1e-9)
    };
    eprintln!(
        "aimd windows: {:?}",
        w.iter().step_by(10).collect::<Vec<_>>()
    );
    assert!(r.luns[0].halvings >= 2);
    // AIMD sees only BUSY/QUEUE FULL, so it settles where the array starts answering BUSY:
    // servers + busy_threshold = 17 (the knee 16 + 6 %), within 10 % from 5 s until the drop,
    assert!(within(5.0, 15.0, 17.0), "{w:?}");
    // and 8 + 1 = 9 within 5 s of the 50 % drop at 15 s.
    assert!(within(20.0, 30.0, 9.0), "{w:?}");
}
