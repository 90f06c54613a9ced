//! Several hosts, one shared target, no coordinator (PARDA, Gulati et al., FAST '09), as a
//! user runs it: `weir run scenarios/three-hosts.toml`. Three brokers — three processes, each
//! with its own probe guest — share one nbdkit export that the run starts itself, shaped into
//! a congested array (every read delayed 2 ms, 80 Mbit/s in all: about 2.56 k reads of 4 KiB
//! per second). Each broker sees only its own requests and sizes its LUN window by PARDA's law
//! from the latency it observes, with `β` in proportion to its host's share (1 : 2 : 4). The
//! hosts' throughput must come out in their shares, and when host 3's guest stops (at 20 s),
//! the others must take up its capacity within seconds.

mod common;

use std::path::Path;
use std::process::Command;

use weir_broker::nbd::nbdkit;
use weir_lab::testenv;

/// Seconds `[from, to)` of the run's clock summed per host, from the guests' per-second
/// series (each starts at its `per_second_start_s`), as IOPS.
fn per_host(results: &serde_json::Value, from: usize, to: usize) -> Vec<f64> {
    let p = &results["policies"][0];
    let hosts = p["hosts"].as_array().expect("hosts in results.json");
    hosts
        .iter()
        .map(|h| {
            let guests: Vec<&str> = h["guests"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|g| g.as_str())
                .collect();
            let total: f64 = p["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| guests.contains(&t["name"].as_str().unwrap_or("")))
                .map(|t| {
                    let start = t["per_second_start_s"].as_u64().unwrap_or(0) as usize;
                    let series = t["per_second"].as_array().unwrap();
                    (from..to)
                        .filter_map(|s| s.checked_sub(start).and_then(|k| series.get(k)))
                        .filter_map(|v| v.as_f64())
                        .sum::<f64>()
                })
                .sum();
            total / (to - from) as f64
        })
        .collect()
}

fn nbdkit_left(port: &str) -> bool {
    Command::new("pgrep")
        .args(["-f", &format!("nbdkit.*-p {port}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn three_hosts_share_one_nbd_target_by_their_shares_in_weir_run() {
    if common::probe_guest_setup("multi_host").is_none() {
        return;
    }
    if !testenv::can_run("multi_host", nbdkit::missing()) {
        return;
    }
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/three-hosts.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("results");
    let (stdout, r) = common::weir_run_ok(&scenario, &out);
    eprintln!("{stdout}");
    let p = &r["policies"][0];
    assert_eq!(p["failures"].as_array().map(Vec::len), Some(0), "{p}");
    let shares: Vec<f64> = p["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["share"].as_f64().unwrap())
        .collect();
    assert_eq!(shares, [1.0, 2.0, 4.0]);
    assert!(
        p["metrics"]["host_contended_seconds"].as_u64().unwrap_or(0) >= 15,
        "the hosts competed for too few seconds: {}",
        p["metrics"]
    );
    // All three compete from the warm-up (5 s) until host 3's guest stops (20 s).
    let three = per_host(&r, 6, 19);
    let total: f64 = three.iter().sum();
    let fractions: Vec<f64> = three.iter().map(|x| x / total).collect();
    eprintln!(
        "three hosts, s 6–19: {three:.0?} IOPS, fractions {fractions:.3?} (due 1/7, 2/7, 4/7)"
    );
    // Host 3 stops: the two others take up its capacity within 5 s.
    let two = per_host(&r, 24, 29);
    let two_total: f64 = two.iter().sum();
    eprintln!("host 3 stopped, s 24–29: {two:.0?} IOPS (total {two_total:.0}, was {total:.0})");
    assert!(
        two_total >= 0.9 * total,
        "the two remaining hosts did not take up the third's capacity: {two_total:.0} of {total:.0}"
    );
    // Within 10 % of each host's share of the throughput, no coordinator: three hosts, then
    // the two that remain.
    assert!(
        (two[1] / two[0] / 2.0 - 1.0).abs() <= 0.10,
        "the two remaining hosts got 1:{:.2}, their shares say 1:2",
        two[1] / two[0]
    );
    for (k, f) in fractions.iter().enumerate() {
        let due = shares[k] / 7.0;
        assert!(
            (f / due - 1.0).abs() <= 0.10,
            "host {} got {:.3} of the throughput, its share says {due:.3}",
            k + 1,
            f
        );
    }
    // The host table's own judgement, in cost units over the contended seconds, says the same.
    let err = p["metrics"]["host_cost_max_share_error"]
        .as_f64()
        .expect("a host share error");
    assert!(err <= 0.10, "host table: max share error {err:.3}");
    assert!(
        !nbdkit_left("10970"),
        "the scenario's nbdkit outlived the run"
    );
}
