//! Several hosts, one shared target, no coordinator (PARDA, Gulati et al., FAST '09): three
//! brokers — three processes, each with its own guest — share one nbdkit export shaped into a
//! congested array (every read delayed 2 ms, 160 Mbit/s in all: about 4.9 k reads of 4 KiB per
//! second). Each broker sees only its own requests; each sizes its LUN window by PARDA's law
//! from the latency it observes, with `β` in proportion to its host's share (1 : 2 : 4). The
//! hosts' throughput must come out in their shares, and when one host stops, the others must
//! take up its capacity within seconds.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_broker::nbd::nbdkit::{self, Nbdkit};
use weir_lab::broker::BrokerProcess;
use weir_lab::probe::ProbeVm;
use weir_lab::testenv;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn reads_of(control: &Path) -> u64 {
    query(control, "stats")
        .ok()
        .and_then(|s| s[0]["counters"]["reads"].as_u64())
        .unwrap_or(0)
}

fn window_of(control: &Path) -> f64 {
    query(control, "telemetry")
        .ok()
        .and_then(|t| t.as_array().and_then(|s| s.last().cloned()))
        .and_then(|s| s["luns"][0]["window"].as_f64())
        .unwrap_or(0.0)
}

struct Host {
    broker: BrokerProcess,
    control: PathBuf,
    guest: Option<ProbeVm>,
}

#[test]
fn three_brokers_share_one_nbd_target_by_their_host_shares() {
    let Some(probe) = common::probe_guest_setup("multi_host") else {
        return;
    };
    if !testenv::can_run("multi_host", nbdkit::missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = 10950;
    let _target = Nbdkit::tcp(
        port,
        &[
            "-t",
            "64",
            "--filter=rate",
            "--filter=delay",
            "memory",
            "64M",
            "rdelay=2ms",
            "rate=160M",
        ],
    )
    .expect("nbdkit");
    let shares = [1.0, 2.0, 4.0];
    let mut hosts: Vec<Host> = shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let sub = dir.path().join(format!("host{i}"));
            std::fs::create_dir_all(&sub).unwrap();
            let control = sub.join("broker.ctl");
            let config = format!(
                "control_socket = {control:?}\nhost_share = {share}\n\
                 [[lun]]\nname = \"shared\"\npath = \"nbd://127.0.0.1:{port}/\"\n\
                 depth = {{ policy = \"latency\", target_ms = 5, beta = 1.5, max = 256 }}\n\
                 [[disk]]\nsocket = {sock:?}\nlun = \"shared\"\ntenant = \"vm{i}\"\n",
                control = control.display().to_string(),
                sock = sub.join("g.sock").display().to_string(),
            );
            let broker = BrokerProcess::start(&weir(), &config, Some(control.clone()), &sub)
                .expect("broker starts");
            let guest = ProbeVm::spawn(
                &weir(),
                &probe,
                &[format!("socket={}", sub.join("g.sock").display())],
                "probe.rw=randread probe.iodepth=48 probe.runtime_ms=60000 probe.mode=halt",
                &sub,
                "g",
            )
            .expect("probe starts");
            Host {
                broker,
                control,
                guest: Some(guest),
            }
        })
        .collect();
    // Settle, then measure 8 s.
    std::thread::sleep(Duration::from_secs(5));
    let measure = |hosts: &[Host], secs: u64| -> Vec<f64> {
        let before: Vec<u64> = hosts.iter().map(|h| reads_of(&h.control)).collect();
        let t = Instant::now();
        std::thread::sleep(Duration::from_secs(secs));
        let dt = t.elapsed().as_secs_f64();
        hosts
            .iter()
            .zip(before)
            .map(|(h, b)| (reads_of(&h.control) - b) as f64 / dt)
            .collect()
    };
    let iops = measure(&hosts, 8);
    let windows: Vec<f64> = hosts.iter().map(|h| window_of(&h.control)).collect();
    let total: f64 = iops.iter().sum();
    let ratios: Vec<f64> = iops.iter().map(|x| x / iops[0]).collect();
    eprintln!(
        "three hosts, shares 1:2:4: {iops:.0?} IOPS (total {total:.0}), ratios {ratios:.2?}, \
         windows {windows:.1?}"
    );
    // Host 3 stops; the other two take its capacity.
    let stopped_at = Instant::now();
    drop(hosts[2].guest.take());
    hosts[2].broker.stop();
    std::thread::sleep(Duration::from_secs(3));
    let two = measure(&hosts[..2], 3);
    let two_total: f64 = two.iter().sum();
    eprintln!(
        "host 3 stopped: {two:.0?} IOPS (total {two_total:.0}, was {total:.0}) from {:?} after",
        stopped_at.elapsed() - Duration::from_secs(2)
    );
    let logs: String = hosts
        .iter()
        .map(|h| format!("--- {}:\n{}\n", h.control.display(), h.broker.log()))
        .collect();
    // The guests still run (their runtime outlasts the test): killed with their brokers.
    let running: Vec<bool> = hosts
        .iter_mut()
        .map(|h| {
            h.guest
                .as_mut()
                .is_some_and(|g| g.child.try_wait().ok().flatten().is_none())
        })
        .collect();
    for h in &mut hosts {
        drop(h.guest.take());
        h.broker.stop();
    }
    assert!(
        two_total >= 0.9 * total,
        "the two remaining hosts did not take up the third's capacity: {two_total:.0} of \
         {total:.0}; guests running {running:?}\n{logs}"
    );
    // Within 20 %, not the 10 % the simulated FIFO array holds (1.2 %, `sim_hosts_tests`):
    // nbdkit's own service is not proportional to the windows — fixed windows 5:10:20 on
    // this target get 1:1.98:3.75, the deepest connection waiting longest — and PARDA's fixed
    // point `D = β·share / (1 − 𝓛/L)` turns a host's latency excess into a larger window cut
    // (×𝓛/(L − 𝓛), about 2.5 here). Measured: host 3 at 3.3–3.6× host 1 (docs/network.md).
    for (k, want) in [(1, 2.0), (2, 4.0)] {
        assert!(
            (ratios[k] / want - 1.0).abs() <= 0.20,
            "host {} got {:.2}× host 1's throughput, its share says {want}",
            k + 1,
            ratios[k]
        );
    }
}
