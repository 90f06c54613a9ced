//! `weir top` as a person uses it: in a real terminal (tmux), against a broker serving three
//! probe guests under `weir vm`; the screen is read back with `capture-pane`. Then batch mode,
//! and the broker restarting under it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_lab::broker::BrokerProcess;
use weir_lab::probe::{self, ProbeVm};
use weir_lab::testenv;
use weir_vmm::host::{HostVirtualization, KvmFlavour};

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

/// A detached tmux session running one command; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let name = format!("weir-top-test-{}", std::process::id());
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                &name,
                "-x",
                "230",
                "-y",
                "40",
                command,
            ])
            .status()
            .expect("tmux runs");
        assert!(status.success(), "tmux new-session failed");
        Tmux { name }
    }

    fn keys(&self, keys: &str) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.name, keys])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    fn screen(&self) -> String {
        self.capture(false)
    }

    /// The pane's text; with `escapes`, its colours as SGR sequences too.
    fn capture(&self, escapes: bool) -> String {
        let mut args = vec!["capture-pane", "-p", "-t", &self.name];
        if escapes {
            args.push("-e");
        }
        let out = Command::new("tmux")
            .args(&args)
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls the screen until `ok` holds; returns it and how long that took. A screen is
    /// judged only when a second capture 30 ms later is the same: `weir top` redraws once a
    /// second, and a capture in the middle of a redraw holds rows cut short (one CI run read
    /// vm2's tenant row drawn only up to GAVG/ms).
    fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let s = self.screen();
            std::thread::sleep(Duration::from_millis(30));
            if s == self.screen() && ok(&s) {
                return (s, start.elapsed());
            }
            if start.elapsed() > limit {
                panic!("weir top never showed {what} within {limit:?}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// The table's cells by column title: the header row (the one starting with `first`) names the
/// columns, every other row starting with `│` is split on runs of spaces.
fn table(screen: &str, first: &str) -> Vec<std::collections::HashMap<String, String>> {
    let lines: Vec<&str> = screen
        .lines()
        .map(|l| l.trim_matches(|c| c == '│' || c == ' '))
        .collect();
    let Some(h) = lines.iter().position(|l| l.starts_with(first)) else {
        return Vec::new();
    };
    let headers: Vec<String> = lines[h]
        .split_whitespace()
        .map(|s| s.trim_end_matches(['↓', '↑']).to_string())
        .collect();
    lines[h + 1..]
        .iter()
        .take_while(|l| !l.is_empty() && !l.starts_with('└'))
        .map(|l| {
            headers
                .iter()
                .cloned()
                .zip(l.split_whitespace().map(str::to_string))
                .collect()
        })
        .collect()
}

fn config(dir: &Path) -> (String, PathBuf) {
    let control = dir.join("broker.ctl");
    let d = |n: &str| format!("{:?}", dir.join(n).display().to_string());
    let text = format!(
        "control_socket = {control}\n\
         [[port]]\nname = \"pa\"\nqueue_limit = 64\n\
         [[port]]\nname = \"pb\"\nqueue_limit = 64\n\
         [[lun]]\nname = \"shared\"\npath = {shared}\nsize = \"32MiB\"\nshareable = true\n\
         backend = \"emulated\"\nmodel = {{ servers = 8, read_base_us = 400, write_base_us = 600 }}\n\
         paths = [ {{ name = \"a\", port = \"pa\" }}, {{ name = \"b\", port = \"pb\" }} ]\n\
         [[lun]]\nname = \"solo\"\npath = {solo}\nsize = \"32MiB\"\n\
         [[lun]]\nname = \"spare\"\npath = {spare}\nsize = \"8MiB\"\n\
         [[disk]]\nsocket = {s0}\nlun = \"shared\"\ntenant = \"vm0\"\nweight = 1\n\
         [[disk]]\nsocket = {s1}\nlun = \"shared\"\ntenant = \"vm1\"\nweight = 4\n\
         [[disk]]\nsocket = {s2}\nlun = \"solo\"\ntenant = \"vm2\"\nlimit_iops = 3000\n",
        control = d("broker.ctl"),
        shared = d("shared.img"),
        solo = d("solo.img"),
        spare = d("spare.img"),
        s0 = d("vm0.sock"),
        s1 = d("vm1.sock"),
        s2 = d("vm2.sock"),
    );
    (text, control)
}

#[test]
fn weir_top_shows_every_tenant_lun_and_path_live_and_a_failed_path_within_two_seconds() {
    let test = "weir_top_in_tmux";
    let missing = match HostVirtualization::detect().flavour {
        KvmFlavour::Unavailable { reason } => Some(reason),
        _ => None,
    }
    .or_else(|| {
        (!Command::new("tmux")
            .arg("-V")
            .output()
            .is_ok_and(|o| o.status.success()))
        .then(|| "tmux not found (scripts/install-deps.sh)".to_string())
    });
    if !testenv::can_run(test, missing) {
        return;
    }
    let probe = probe::build().expect("the probe guest builds");
    let dir = tempfile::tempdir().unwrap();
    let (config_text, control) = config(dir.path());
    let mut broker = BrokerProcess::start(&weir(), &config_text, Some(control.clone()), dir.path())
        .expect("broker");
    let guests: Vec<ProbeVm> = (0..3)
        .map(|i| {
            ProbeVm::spawn(
                &weir(),
                &probe,
                &[format!(
                    "socket={}",
                    dir.path().join(format!("vm{i}.sock")).display()
                )],
                "probe.iodepth=16 probe.rw=randread probe.runtime_ms=9000",
                dir.path(),
                &format!("vm{i}"),
            )
            .expect("probe starts")
        })
        .collect();

    let top = Tmux::start(&format!(
        "{} top --control {}",
        weir().display(),
        control.display()
    ));
    // Tenants: all three, each with its LUN and reads flowing.
    let (screen, _) = top.wait_for("three tenants reading", Duration::from_secs(20), |s| {
        let rows = table(s, "TENANT");
        // Every row whole, to its last column (see `wait_for`).
        rows.len() == 3
            && rows.iter().all(|r| {
                r.get("READS/s")
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v > 0.0)
                    && r.contains_key("HELD")
            })
    });
    eprintln!("{screen}");
    let rows = table(&screen, "TENANT");
    let lun_of = |t: &str| {
        rows.iter()
            .find(|r| r["TENANT"] == t)
            .map(|r| r["LUN"].clone())
    };
    assert_eq!(lun_of("vm0").as_deref(), Some("shared"));
    assert_eq!(lun_of("vm1").as_deref(), Some("shared"));
    assert_eq!(lun_of("vm2").as_deref(), Some("solo"));
    assert!(screen.contains("connected"), "{screen}");
    let vm2 = rows.iter().find(|r| r["TENANT"] == "vm2").unwrap();
    assert_eq!(vm2["WEIGHT"], "1.0");

    // LUNs: the window, the policy, both paths up.
    top.keys("l");
    let (screen, _) = top.wait_for("the LUN view", Duration::from_secs(5), |s| {
        let rows = table(s, "LUN");
        rows.len() == 3
            && rows.iter().all(|r| {
                ["BACKEND", "PATHS", "IOPS"]
                    .iter()
                    .all(|k| r.contains_key(*k))
            })
    });
    let luns = table(&screen, "LUN");
    let shared = luns.iter().find(|r| r["LUN"] == "shared").unwrap();
    assert_eq!(
        (shared["BACKEND"].as_str(), shared["PATHS"].as_str()),
        ("emulated", "2/2"),
        "{screen}"
    );
    for lun in ["shared", "solo"] {
        let row = luns.iter().find(|r| r["LUN"] == lun).unwrap();
        assert!(row["IOPS"].parse::<f64>().unwrap() > 0.0, "{screen}");
    }

    // Topology: guest → disk → LUN → paths, and the LUN no disk maps to.
    top.keys("o");
    let (screen, _) = top.wait_for("the topology tree", Duration::from_secs(5), |s| {
        s.contains("guest vm0") && s.contains("(no disk)")
    });
    eprintln!("{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no '{needle}' in the tree:\n{screen}"))
    };
    let g = at("guest vm2");
    assert!(lines[g + 1].contains("└─ disk") && lines[g + 1].contains("vm2.sock"));
    assert!(lines[g + 2].contains("└─ LUN solo"), "{screen}");
    assert!(lines[g + 3].contains("└─ path path0"), "{screen}");
    let g = at("guest vm0");
    assert!(lines[g + 2].contains("└─ LUN shared"), "{screen}");
    assert!(lines[g + 3].contains("├─ path a"), "{screen}");
    assert!(lines[g + 4].contains("└─ path b"), "{screen}");
    assert!(lines[at("(no disk)") + 1].contains("LUN spare"), "{screen}");

    // Paths: a port faulted over the control socket shows as failed within 2 s.
    top.keys("p");
    // Every path a tenant uses carries I/O; the spare LUN's path carries none.
    let (screen, _) = top.wait_for("the paths carrying I/O", Duration::from_secs(5), |s| {
        let rows = table(s, "LUN");
        let iops = |lun: &str, path: &str| {
            rows.iter()
                .find(|r| r["LUN"] == lun && r["PATH"] == path)
                .and_then(|r| r["IOPS"].parse::<f64>().ok())
        };
        rows.len() == 4
            && [("shared", "a"), ("shared", "b"), ("solo", "path0")]
                .iter()
                .all(|(l, p)| iops(l, p).is_some_and(|v| v > 0.0))
            && iops("spare", "path0") == Some(0.0)
    });
    eprintln!("{screen}");
    let answer = query(&control, "fault pa down").unwrap();
    assert!(answer.get("ok").is_some(), "{answer}");
    let (screen, took) = top.wait_for("path a failed", Duration::from_secs(5), |s| {
        table(s, "LUN")
            .iter()
            .any(|r| r["PATH"] == "a" && r["STATE"] == "failed")
    });
    eprintln!("{screen}\npath a shown failed {took:?} after the fault");
    assert!(
        took <= Duration::from_secs(2),
        "shown failed after {took:?}"
    );
    assert!(screen.contains("s failed: "), "the last event: {screen}");
    // The failed path's row is red, the healthy one's is not.
    let coloured = top.capture(true);
    let row_of = |path: &str| {
        coloured
            .lines()
            .find(|l| {
                l.contains("shared") && l.contains(&format!(" {path} ")) && l.contains("optimized")
            })
            .unwrap_or_else(|| panic!("no row for path {path}:\n{coloured}"))
            .to_string()
    };
    // Red as tmux writes it back: the 8-colour SGR 31 or palette index 1.
    let sgr_red = |l: &str| l.contains("\x1b[31m") || l.contains("\x1b[38;5;1m");
    assert!(
        sgr_red(&row_of("a")),
        "failed path not red: {:?}",
        row_of("a")
    );
    assert!(
        !sgr_red(&row_of("b")),
        "healthy path red: {:?}",
        row_of("b")
    );
    query(&control, "fault pa up").unwrap();

    // Sorted by reads per second, largest first: `s` steps through the columns.
    top.keys("t");
    let mut presses = 0;
    while !top.screen().contains("READS/s↓") {
        assert!(presses < 25, "s never reached READS/s:\n{}", top.screen());
        top.keys("s");
        presses += 1;
        std::thread::sleep(Duration::from_millis(150));
    }
    let screen = top.screen();
    let reads: Vec<f64> = table(&screen, "TENANT")
        .iter()
        .map(|r| r["READS/s"].parse().unwrap())
        .collect();
    assert!(reads.windows(2).all(|w| w[0] >= w[1]), "{screen}");

    for g in guests {
        let run = g
            .wait(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}\nbroker:\n{}", broker.log()));
        assert_eq!(run.exit_code, Some(0), "{}", run.vmm_log);
        assert_eq!(run.report.errors, 0);
    }

    // Batch mode: JSON lines with every view, consecutive seconds.
    let out = Command::new(weir())
        .args(["top", "-b", "-n", "2", "--json", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = String::from_utf8(out.stdout).unwrap();
    let its: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(its.len(), 2, "{lines}");
    assert!(its[1]["t_s"].as_f64() > its[0]["t_s"].as_f64(), "{lines}");
    assert_eq!(its[0]["tenants"].as_array().unwrap().len(), 3);
    assert_eq!(its[0]["paths"].as_array().unwrap().len(), 4);
    // CSV: a header once, then one row per path per iteration.
    let out = Command::new(weir())
        .args(["top", "-b", "-n", "2", "--view", "paths", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(
        csv.starts_with("time_s,LUN,PATH,PORT,GROUP,STATE,"),
        "{csv}"
    );
    assert_eq!(csv.lines().count(), 1 + 2 * 4, "{csv}");

    // The broker goes away: weir top says so and keeps its last figures; it comes back (a
    // restart on the same config): weir top reconnects and says that too.
    broker.stop();
    top.wait_for("the broker unreachable", Duration::from_secs(5), |s| {
        s.contains("UNREACHABLE")
    });
    let again = dir.path().join("again");
    let _broker = BrokerProcess::start(&weir(), &config_text, Some(control.clone()), &again)
        .expect("the broker starts again");
    top.wait_for("the reconnection", Duration::from_secs(5), |s| {
        s.contains("reconnected")
    });
    top.keys("q");
    let gone = Instant::now();
    while Command::new("tmux")
        .args(["has-session", "-t", &top.name])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(gone.elapsed() < Duration::from_secs(5), "q did not quit");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn batch_mode_without_a_broker_fails_with_the_socket_named() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("nobody.ctl");
    let out = Command::new(weir())
        .args(["top", "-b", "-n", "1", "--control"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody.ctl"), "{err}");
    let out = Command::new(weir())
        .args(["top", "--view", "disks", "--control"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("tenants, luns, paths or topology"),
        "{err}"
    );
}
