//! The NBD backend with real guests and a real server: probe guests under `weir vm` write and
//! verify a LUN that is an nbdkit export, reached over two paths (two nbdkit processes serving
//! one image, each a unix socket); one server is killed mid-run and started again. The guest
//! must see no error and no wrong byte, the requests on the dead connection must move to the
//! other path within a second, and the path must come back.

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

fn uri(socket: &Path) -> String {
    format!("nbd+unix:///?socket={}", socket.display())
}

fn writes_of(control: &Path) -> u64 {
    query(control, "stats")
        .ok()
        .and_then(|s| s[0]["counters"]["writes"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_probe_guest_verifies_through_two_nbd_paths_while_one_server_dies_and_returns() {
    let Some(probe) = common::probe_guest_setup("broker_nbd") else {
        return;
    };
    if !testenv::can_run("broker_nbd", nbdkit::missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = common::raw_disk(dir.path(), "lun.img", 64);
    let file = format!("file={}", image.display());
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let mut a = Nbdkit::unix(&sa, &["file", &file]).expect("nbdkit a");
    let _b = Nbdkit::unix(&sb, &["file", &file]).expect("nbdkit b");
    let control = dir.path().join("broker.ctl");
    let config = format!(
        "control_socket = {control:?}\n\
         [[lun]]\nname = \"lun0\"\npath = {a:?}\n\
         multipath = {{ selector = \"round-robin:8\", failback_s = 1, checker_interval_s = 0.2 }}\n\
         [[lun.paths]]\nname = \"a\"\ndevice = {a:?}\n\
         [[lun.paths]]\nname = \"b\"\ndevice = {b:?}\n\
         [[disk]]\nsocket = {sock:?}\nlun = \"lun0\"\ntenant = \"guest\"\n",
        control = control.display().to_string(),
        a = uri(&sa),
        b = uri(&sb),
        sock = dir.path().join("g.sock").display().to_string(),
    );
    let mut broker =
        BrokerProcess::start(&weir(), &config, Some(control.clone()), dir.path()).expect("starts");
    let topo = query(&control, "topology").unwrap();
    assert_eq!(topo[0]["backend"], "nbd", "{topo}");
    let guest = ProbeVm::spawn(
        &weir(),
        &probe,
        &[format!("socket={}", dir.path().join("g.sock").display())],
        "probe.verify=1 probe.iodepth=16 probe.rw=randrw probe.runtime_ms=6000",
        dir.path(),
        "guest",
    )
    .expect("probe starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while writes_of(&control) < 2000 {
        assert!(
            Instant::now() < deadline,
            "the guest never wrote\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Server a dies (its connections drop mid-request); it is back 1.5 s later. Restarted from
    // this thread: nbdkit dies with the thread that started it.
    a.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let mid = query(&control, "topology").unwrap();
    a.restart().expect("nbdkit a again");
    let run = guest
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    assert_eq!(run.exit_code, Some(0), "{}\n{}", run.vmm_log, broker.log());
    assert_eq!(
        (run.report.errors, run.report.verify_errors),
        (0, 0),
        "the guest saw an error\n{}",
        broker.log()
    );
    for phase in &run.report.phases {
        assert_eq!(
            phase.unexpected, 0,
            "a request was answered twice: {phase:?}"
        );
    }
    assert!(run.report.phase("randrw").expect("randrw").ios > 1000);
    assert_eq!(mid[0]["paths"][0]["state"], "failed", "{mid}");
    assert_eq!(mid[0]["paths"][1]["state"], "active", "{mid}");
    let stats = query(&control, "stats").unwrap();
    let counters = &stats[0]["counters"];
    assert_eq!(counters["io_errors"], 0, "{stats}");
    let retries = counters["path_retries"].as_u64().unwrap_or(0);
    assert!(
        retries > 0,
        "requests moved off the dead connection: {stats}"
    );
    let events = query(&control, "paths").unwrap();
    let kinds: Vec<&str> = events["lun0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.first(), Some(&"failed"), "{events}");
    assert_eq!(
        kinds.last(),
        Some(&"restored"),
        "path a came back: {events}"
    );
    let telemetry = query(&control, "telemetry").unwrap();
    let failover_ms = telemetry
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["luns"][0]["max_failover_ms"].as_f64())
        .expect("a failover time in telemetry");
    let topo = query(&control, "topology").unwrap();
    let done = |k: usize| topo[0]["paths"][k]["completed"].as_u64().unwrap_or(0);
    eprintln!(
        "NBD failover: {retries} requests moved, longest {failover_ms:.1} ms; events {kinds:?}; \
         completed on a {} and b {}; randrw {:.0} IOPS",
        done(0),
        done(1),
        run.report.phase("randrw").map_or(0.0, |p| p.iops)
    );
    assert!(failover_ms < 1000.0, "failover took {failover_ms} ms");
    broker.stop();
}
