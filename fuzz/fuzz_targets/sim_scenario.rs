//! `weir sim` scenarios: parsed, validated, and — when small enough to run in a moment — run.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_sched::sim::{self, SimScenario, Workload};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = toml::from_str::<SimScenario>(text) else {
        return;
    };
    if sim::validate(&s).is_err() {
        return;
    }
    // Running is the engine's test too, but only for scenarios that finish in milliseconds.
    let small = s.duration_s <= 0.5
        && s.tenants.len() <= 4
        && s.compare.len() <= 2
        && s.tenants.iter().all(|t| match &t.workload {
            Workload::Closed { depth, .. } => *depth <= 64,
            Workload::Open { rate_iops, .. } => *rate_iops <= 20_000.0,
        });
    if small {
        let _ = sim::run_compare(&s);
    }
});
