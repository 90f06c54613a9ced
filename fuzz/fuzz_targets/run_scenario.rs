//! `weir run` scenarios: parsing and resolving (engines, workloads, the simulation they
//! make) with no guest started.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(s) = toml::from_str::<weir_lab::scenario::RunScenario>(text) else {
        return;
    };
    for hw in [false, true] {
        if let Ok(r) = weir_lab::scenario::resolve(&s, Path::new("/nonexistent/x.toml"), hw) {
            let _ = weir_lab::scenario::to_sim(&s, &r.guests);
        }
    }
});
