//! `weir sim`: same seed, same output, byte for byte; a bad scenario names the field.

use std::process::Command;

fn weir_sim(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("sim")
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn same_seed_same_bytes_and_a_different_seed_differs() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/sim-congested-array.toml"
    );
    let a = weir_sim(&[path, "--json"]);
    let b = weir_sim(&[path, "--json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout);
    let c = weir_sim(&[path, "--json", "--seed", "99"]);
    assert_ne!(a.stdout, c.stdout);
    let table = weir_sim(&[path]);
    let text = String::from_utf8_lossy(&table.stdout);
    for policy in ["fixed:16", "fixed:64", "aimd", "latency", "adaptive"] {
        assert!(text.contains(policy), "{text}");
    }
}

#[test]
fn a_bad_scenario_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "duration_s = 5\n[[port]]\nname = \"p0\"\nqueue_limit = 32\n[[lun]]\nname = \"l\"\nport = \"p9\"\n[[tenant]]\nname = \"t\"\nlun = \"l\"\nworkload = { kind = \"closed\", depth = 1 }\n",
    )
    .unwrap();
    let out = weir_sim(&[p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("lun[0].port") && err.contains("p9"),
        "{err}"
    );
    std::fs::write(&p, "duration_s = 5\ncompare = [\"fastest\"]\n[[port]]\nname = \"p0\"\nqueue_limit = 32\n[[lun]]\nname = \"l\"\nport = \"p0\"\n[[tenant]]\nname = \"t\"\nlun = \"l\"\nworkload = { kind = \"closed\", depth = 1 }\n").unwrap();
    let out = weir_sim(&[p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("compare[0]"), "{err}");
}

#[test]
fn a_sweep_prints_each_policy_and_its_worst_cases_and_a_bad_grid_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("grid.toml");
    std::fs::write(
        &p,
        "seeds = 1\npolicies = [\"adaptive\", \"aimd\"]\nservers = [4]\nservice = [{ mean_us = 1000 }]\nbusy = [\"never\"]\nphase_s = 5\n",
    )
    .unwrap();
    let out = weir_sim(&["--sweep", p.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 shapes × 1 seeds"), "{text}");
    assert!(
        text.contains("worst cases of adaptive")
            && text.contains("worst cases of aimd")
            && text.contains("knee-oracle"),
        "{text}"
    );
    let json = weir_sim(&["--sweep", p.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        v["cases"].as_array().map(Vec::len),
        Some(3),
        "one case per policy, and the knee oracle"
    );
    assert_eq!(v["cases"][2]["policy"], "knee-oracle");
    // 4 units of 1 ms at half capacity serve 2000/s: 20 000 completions take 10 s, after a
    // settling of 3 s.
    assert_eq!(v["cases"][0]["phase_s"], 13.0);
    assert_eq!(v["cases"][0]["phases"].as_array().map(Vec::len), Some(3));
    std::fs::write(&p, "seeds = 1\npolicies = [\"fastest\"]\nservers = [4]\nservice = [{ mean_us = 1000 }]\nbusy = [\"never\"]\n").unwrap();
    let out = weir_sim(&["--sweep", p.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("policies") && err.contains("fastest"),
        "{err}"
    );
}
