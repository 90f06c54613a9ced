//! Scheduler + controller cost per dispatched I/O, with 64 backlogged tenants on one LUN.
//!
//! Per iteration: one completion fed to the queue-depth controller, one request enqueued for
//! the tenant that completed (closed loop), one dispatch decision (mClock tags over 64 tenants).
//! That is the broker's per-I/O scheduling work. Run: `cargo bench -p weir-sched`.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use weir_sched::cost::CostModel;
use weir_sched::depth::{DepthPolicy, Outcome, QueueDepthController};
use weir_sched::mclock::{MClock, TenantPolicy};

fn bench(c: &mut Criterion) {
    let tenants = 64;
    let policies: Vec<TenantPolicy> = (0..tenants)
        .map(|i| TenantPolicy {
            weight: f64::from(1 + i % 8),
            reservation_iops: if i % 4 == 0 { 10.0 } else { 0.0 },
            limit_iops: if i % 5 == 0 { 1e6 } else { 0.0 },
            limit_bytes_per_s: 0.0,
        })
        .collect();
    let mut sched: MClock<u64> = MClock::new(policies, CostModel::default());
    for t in 0..tenants as usize {
        for _ in 0..8 {
            sched.enqueue(t, 0, 4096, 0.0);
        }
    }
    let mut ctl = QueueDepthController::new(DepthPolicy::default());
    let mut now = 0.0f64;
    let mut next_tenant = 0usize;
    c.bench_function("mclock64+adaptive per I/O", |b| {
        b.iter(|| {
            now += 1e-6;
            ctl.on_completion(now, ctl.epoch(), Outcome::Good, 0.004);
            ctl.tick(now, 16);
            sched.enqueue(next_tenant, 0, 4096, now);
            if let Some((t, item, _)) = sched.dispatch(now) {
                next_tenant = t;
                black_box(item);
            }
            black_box(ctl.window());
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
