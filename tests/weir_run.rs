//! `weir run` end to end: real guests (QEMU with fio, and the probe under `weir vm`), results
//! checked against the schema and against the guests' own reports, failures recorded, nothing
//! left behind, the report rendered in headless Chromium.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn run_scenario(dir: &Path, toml: &str) -> (std::process::Output, PathBuf) {
    let file = dir.join("scenario.toml");
    std::fs::write(&file, toml).unwrap();
    let out = dir.join("results");
    (common::weir_run(&file, &out), out)
}

/// Nothing of the run is still running or listening.
fn nothing_left(out: &Path) {
    let needle = out.display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!cmd.contains(&needle), "still running: {cmd}");
        }
    }
    let mut stack = vec![out.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
                assert!(
                    !matches!(ext, "sock" | "ctl" | "img"),
                    "left behind: {}",
                    p.display()
                );
            }
        }
    }
}

const THREE_GUESTS: &str = r#"
duration_s = 8
warmup_s = 1
compare = ["fifo", "adaptive"]
[[port]]
name = "p0"
queue_limit = 128
[[lun]]
name = "shared"
port = "p0"
size_mib = 64
model = { servers = 4, read_base_us = 4000, write_base_us = 4000, busy_threshold = 64 }
[[guest]]
name = "light"
engine = "qemu"
memory_mib = 384
workload = { fio = "[light]\nioengine=psync\ndirect=1\nbs=4k\nrw=randread\n" }
[[guest.disk]]
lun = "shared"
[[guest]]
name = "heavy"
engine = "qemu"
memory_mib = 384
workload = { fio = "[heavy]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randread\niodepth=16\n" }
[[guest.disk]]
lun = "shared"
weight = 2
[[guest]]
name = "probe"
workload = { probe = "rw=randread iodepth=16" }
[[guest.disk]]
lun = "shared"
weight = 4
"#;

#[test]
fn three_guests_fifo_vs_adaptive_give_results_that_match_the_guests_and_the_schema() {
    if common::linux_guest_setup("weir_run_three").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("scenario.toml");
    std::fs::write(&file, THREE_GUESTS).unwrap();
    let out = dir.path().join("results");
    let (stdout, r) = common::weir_run_ok(&file, &out);
    assert!(
        stdout.contains("Jain") && stdout.contains("report: "),
        "{stdout}"
    );
    let policies = r["policies"].as_array().unwrap();
    assert_eq!(
        policies
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["fifo", "adaptive"]
    );
    for p in policies {
        let name = p["name"].as_str().unwrap();
        let tenants = p["tenants"].as_array().unwrap();
        assert!(p["failures"].as_array().unwrap().is_empty(), "{p}");
        // Each qemu tenant's IOPS is its guest's fio JSON, summed over jobs and directions.
        for t in tenants.iter().filter(|t| t["engine"] == "qemu") {
            let guest = t["name"].as_str().unwrap();
            let fio: Value = serde_json::from_str(
                &std::fs::read_to_string(out.join(name).join(format!("{guest}.fio.json"))).unwrap(),
            )
            .unwrap();
            let sum: f64 = fio["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["read"]["iops"].as_f64().unwrap() + j["write"]["iops"].as_f64().unwrap())
                .sum();
            let iops = t["iops"].as_f64().unwrap();
            assert!(
                sum > 0.0 && (iops / sum - 1.0).abs() <= 0.01,
                "{guest}: {iops} vs fio {sum}"
            );
        }
        // Metrics, recomputed here from the tenants.
        let x: Vec<f64> = tenants
            .iter()
            .map(|t| t["iops"].as_f64().unwrap())
            .collect();
        let w: Vec<f64> = tenants
            .iter()
            .map(|t| t["weight"].as_f64().unwrap())
            .collect();
        let n: Vec<f64> = x.iter().zip(&w).map(|(a, b)| a / b).collect();
        let jain =
            n.iter().sum::<f64>().powi(2) / (n.len() as f64 * n.iter().map(|v| v * v).sum::<f64>());
        let min_max =
            n.iter().cloned().fold(f64::MAX, f64::min) / n.iter().cloned().fold(0.0, f64::max);
        let (sx, sw) = (x.iter().sum::<f64>(), w.iter().sum::<f64>());
        let errs: Vec<f64> = x
            .iter()
            .zip(&w)
            .map(|(a, b)| ((a / sx) - (b / sw)).abs() / (b / sw))
            .collect();
        let m = &p["metrics"];
        let close = |a: f64, b: &Value| (a - b.as_f64().unwrap()).abs() < 1e-6;
        assert!(close(jain, &m["jain"]), "jain {jain} vs {}", m["jain"]);
        assert!(
            close(min_max, &m["min_max_ratio"]),
            "{min_max} vs {}",
            m["min_max_ratio"]
        );
        assert!(close(
            errs.iter().cloned().fold(0.0, f64::max),
            &m["max_share_error"]
        ));
        assert!(close(
            errs.iter().sum::<f64>() / errs.len() as f64,
            &m["mean_share_error"]
        ));
        assert!(close(sx, &m["aggregate_iops"]));
    }
    let agg = |i: usize| policies[i]["metrics"]["aggregate_iops"].as_f64().unwrap();
    let wc = policies[1]["metrics"]["work_conservation"]
        .as_f64()
        .unwrap();
    assert!((wc - agg(1) / agg(0)).abs() < 1e-9);
    // Telemetry: per-second samples of both policies.
    let tel = std::fs::read_to_string(out.join("telemetry.jsonl")).unwrap();
    for p in ["fifo", "adaptive"] {
        assert!(
            tel.lines()
                .any(|l| l.contains(&format!("\"policy\":\"{p}\"")))
        );
    }
    // `weir report` renders the same directory again.
    let o = Command::new(weir())
        .arg("report")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("adaptive"));
    nothing_left(&out);
}

const ONE_BAD_KERNEL: &str = r#"
duration_s = 3
[[port]]
name = "p0"
queue_limit = 64
[[lun]]
name = "l0"
port = "p0"
size_mib = 16
[[guest]]
name = "good"
workload = { probe = "rw=randread iodepth=4" }
[[guest.disk]]
lun = "l0"
[[guest]]
name = "broken"
kernel = "/nonexistent/kernel"
workload = { probe = "rw=randread iodepth=4" }
[[guest.disk]]
lun = "l0"
"#;

#[test]
fn a_guest_that_cannot_boot_is_recorded_and_the_run_goes_on_leaving_nothing_behind() {
    let missing = match weir_vmm::host::HostVirtualization::detect().flavour {
        weir_vmm::host::KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    };
    if !weir_lab::testenv::can_run("weir_run_failure", missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (o, out) = run_scenario(dir.path(), ONE_BAD_KERNEL);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("FAILED"), "{stdout}");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let sc = common::schema::results_schema();
    common::schema::validate(&r, &sc, &sc, "results").unwrap();
    let p = &r["policies"][0];
    let f = p["failures"].as_array().unwrap();
    assert_eq!(f.len(), 1, "{p}");
    assert_eq!(f[0]["guest"], "broken");
    assert!(
        f[0]["error"].as_str().unwrap().contains("nonexistent"),
        "{f:?}"
    );
    let good = &p["tenants"][0];
    assert_eq!(
        (good["name"].as_str(), good["ok"].as_bool()),
        (Some("good"), Some(true))
    );
    assert!(good["iops"].as_f64().unwrap() > 100.0);
    assert_eq!(p["tenants"][1]["ok"], false);
    nothing_left(&out);
}

#[test]
fn the_report_renders_in_headless_chromium_with_its_plots() {
    let chromium = ["chromium", "chromium-browser"].into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let kvm_missing = match weir_vmm::host::HostVirtualization::detect().flavour {
        weir_vmm::host::KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    };
    let missing = kvm_missing.or_else(|| {
        chromium
            .is_none()
            .then(|| "chromium is not installed (apt-get install chromium)".to_string())
    });
    if !weir_lab::testenv::can_run("weir_run_report", missing) {
        return;
    }
    let chromium = chromium.unwrap_or("chromium");
    let dir = tempfile::tempdir().unwrap();
    let scenario = ONE_BAD_KERNEL.replace("compare", "x").replace(
        "duration_s = 3",
        "duration_s = 3\ncompare = [\"fifo\", \"adaptive\"]",
    );
    let (o, out) = run_scenario(dir.path(), &scenario);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = out.join("report.html");
    let url = format!("file://{}", page.display());
    let profile = dir.path().join("chromium-profile");
    let dom = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let dom = String::from_utf8_lossy(&dom.stdout);
    // Two policy panels, four charts each, with drawn series.
    assert_eq!(dom.matches("class=\"policy\"").count(), 2, "{dom}");
    assert_eq!(dom.matches("class=\"chart\"").count(), 8);
    for title in [
        "Tenant throughput",
        "LUN window and congestion signals",
        "Latency CDF",
        "Path usage",
    ] {
        assert!(dom.contains(&format!("data-title=\"{title}\"")), "{title}");
    }
    assert!(dom.matches("class=\"series\"").count() >= 8, "series drawn");
    let shot = dir.path().join("report.png");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1300,2400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let png = std::fs::read(&shot).unwrap();
    assert_eq!(&png[1..4], b"PNG");
    // A page of charts compresses far worse than a blank one (a blank 1300×2400 PNG is ~10 KB).
    assert!(png.len() > 40_000, "screenshot {} bytes", png.len());
    eprintln!(
        "report screenshot: {} ({} bytes)",
        shot.display(),
        png.len()
    );
}

#[test]
fn ctrl_c_stops_the_guests_at_once_and_leaves_nothing_behind() {
    let missing = match weir_vmm::host::HostVirtualization::detect().flavour {
        weir_vmm::host::KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    };
    if !weir_lab::testenv::can_run("weir_run_interrupt", missing) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long.toml");
    std::fs::write(
        &file,
        ONE_BAD_KERNEL
            .replace(
                "duration_s = 3",
                "duration_s = 120\ncompare = [\"fifo\", \"adaptive\"]",
            )
            .replace("kernel = \"/nonexistent/kernel\"\n", ""),
    )
    .unwrap();
    let out = dir.path().join("results");
    let child = Command::new(weir())
        .args(["run", "--no-progress"])
        .arg(&file)
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until both guests are running, then interrupt.
    let t0 = std::time::Instant::now();
    while !(out.join("fifo/good.serial").exists() && out.join("fifo/broken.serial").exists()) {
        assert!(t0.elapsed().as_secs() < 60, "guests never started");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let stopped = std::time::Instant::now();
    let o = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "an interrupted run is not a success");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(
        took.as_secs() < 30,
        "stopped after {took:?}, not after the 120 s workload"
    );
    // What was measured is written; the second policy never started.
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["policies"].as_array().unwrap().len(), 1);
    assert!(!out.join("adaptive").exists());
    nothing_left(&out);
    eprintln!("interrupted run stopped in {took:?}");
}
