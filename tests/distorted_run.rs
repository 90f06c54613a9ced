//! A run on a starved host says so. Busy threads (three per core) run beside `weir run`; the
//! broker's clock, its threads' and the guests' wait for a CPU must show it, and every policy
//! run must be flagged with its reasons in `results.json`, the terminal and the report. Its own
//! binary: the busy threads would distort any test running beside it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

const SCENARIO: &str = r#"
duration_s = 12
warmup_s = 1
compare = ["fifo", "adaptive"]
[[port]]
name = "p0"
queue_limit = 128
[[lun]]
name = "shared"
port = "p0"
size_mib = 64
model = { servers = 8, read_base_us = 4000, write_base_us = 4000, busy_threshold = 64 }
[[guest]]
name = "victim"
workload = { probe = "rw=randread iodepth=1 rate_iops=100" }
[[guest.disk]]
lun = "shared"
[[guest]]
name = "noisy1"
workload = { probe = "rw=randread iodepth=32" }
[[guest.disk]]
lun = "shared"
[[guest]]
name = "noisy2"
workload = { probe = "rw=randread iodepth=32" }
[[guest.disk]]
lun = "shared"
"#;

#[test]
fn a_run_beside_a_cpu_hog_is_flagged_in_the_results_the_table_and_the_report() {
    if common::probe_guest_setup("distorted_run").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.toml");
    std::fs::write(&file, SCENARIO).unwrap();
    let out = dir.path().join("results");

    let stop = Arc::new(AtomicBool::new(false));
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let hogs: Vec<_> = (0..cores * 3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        })
        .collect();
    let o = common::weir_run(&file, &out);
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let sc = common::schema::results_schema();
    common::schema::validate(&r, &sc, &sc, "results").unwrap();

    let mut aggregate = std::collections::HashMap::new();
    for p in r["policies"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        assert!(p["failures"].as_array().unwrap().is_empty(), "{p}");
        let trust = &p["trust"];
        eprintln!(
            "{name}: {} IOPS, distorted {} of {} s: {}",
            p["metrics"]["aggregate_iops"],
            trust["distorted"].as_array().map_or(0, Vec::len),
            trust["seconds"],
            trust["reasons"]
        );
        assert_eq!(trust["trusted"], false, "{name}: not flagged: {trust}");
        let reasons = trust["reasons"].as_array().unwrap();
        assert!(
            reasons
                .iter()
                .any(|x| x.as_str().unwrap().contains("broker")),
            "{name}: {trust}"
        );
        assert!(trust["seconds"].as_u64().unwrap() >= 8, "{trust}");
        assert!(
            trust["broker_cpu_wait_ms_mean"].as_f64().unwrap() > 0.0,
            "{trust}"
        );
        assert!(
            stdout.contains(&format!("DISTORTED under {name}:")),
            "{stdout}"
        );
        aggregate.insert(
            name.to_string(),
            p["metrics"]["aggregate_iops"].as_f64().unwrap(),
        );
    }
    // The report says it too.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("Distorted run"), "no banner in the report");
    // Side by side in one go, same hog: adaptive once collapsed to 0.16× fifo's (window 1);
    // the first knee search gave 0.48–1.25× over five runs (2026-12-04). Issue 11 asks ≥ 0.8×:
    // the knee search judges throughput, which a late clock stretches for every depth alike,
    // and drops a period its clock was late for. Measured at stop 47 (this scenario, ten runs
    // with six busy loops beside it): 0.94–1.12×; `scenarios/noisy-neighbour.toml` the same
    // way 0.98–1.14× (docs/scheduling.md, the starved clock).
    let (fifo, adaptive) = (aggregate["fifo"], aggregate["adaptive"]);
    let ratio = adaptive / fifo.max(1.0);
    eprintln!("adaptive ÷ fifo beside the hog: {ratio:.2}");
    assert!(
        ratio >= 0.8,
        "adaptive served {adaptive:.0} IOPS beside the hog, {ratio:.2}× fifo's {fifo:.0}: the \
         window took the broker's own lateness for congestion"
    );
}
