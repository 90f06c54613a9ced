//! The iSCSI backend with real guests and real targets:
//! - tgt serving one LUN through two portals: a probe guest writes and verifies through both
//!   paths while one path's TCP connections are killed (`ss -K`); the guest must see no error
//!   and no wrong byte, the commands must move to the other portal, the path must come back.
//! - istgt with a short LU queue that answers TASK SET FULL: the adaptive window must meet the
//!   refusals, the guest must see none of them.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_broker::iscsi::targets::{self, Istgt, IstgtLu, Tgtd};
use weir_lab::broker::BrokerProcess;
use weir_lab::probe::ProbeVm;
use weir_lab::testenv;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn counter(control: &std::path::Path, name: &str) -> u64 {
    query(control, "stats")
        .ok()
        .and_then(|s| s[0]["counters"][name].as_u64())
        .unwrap_or(0)
}

/// Kills every TCP connection to `ip:port` (the kernel aborts them: `ss -K`).
fn kill_connections(ip: &str, port: u16) -> String {
    let out = Command::new("ss")
        .args(["-K", "dst", ip, "dport", "=", &port.to_string()])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A broker serving one guest disk (`g.sock` in `dir`) on LUN `lun0`, whose `[[lun]]` table
/// goes on with `lun_body` (path, window, multipath, paths); with its control socket.
fn broker_on(dir: &std::path::Path, lun_body: &str) -> (BrokerProcess, PathBuf) {
    let control = dir.join("broker.ctl");
    let config = format!(
        "control_socket = {control:?}\n[[lun]]\nname = \"lun0\"\n{lun_body}\n\
         [[disk]]\nsocket = {sock:?}\nlun = \"lun0\"\ntenant = \"guest\"\n",
        control = control.display().to_string(),
        sock = dir.join("g.sock").display().to_string(),
    );
    let broker =
        BrokerProcess::start(&weir(), &config, Some(control.clone()), dir).expect("starts");
    (broker, control)
}

/// The LUN through tgtd's two portals as paths `a` and `b`, with `multipath`.
fn two_portals(target: &Tgtd, multipath: &str) -> String {
    format!(
        "path = {a:?}\nmultipath = {multipath}\n\
         [[lun.paths]]\nname = \"a\"\n[[lun.paths]]\nname = \"b\"\ndevice = {b:?}",
        a = target.uri(0).to_string(),
        b = target.uri(1).to_string(),
    )
}

/// A probe guest on the broker's disk in `dir`.
fn guest_on(probe: &std::path::Path, dir: &std::path::Path, args: &str) -> ProbeVm {
    ProbeVm::spawn(
        &weir(),
        probe,
        &[format!("socket={}", dir.join("g.sock").display())],
        args,
        dir,
        "guest",
    )
    .expect("probe starts")
}

#[test]
fn a_probe_guest_verifies_through_two_tgt_portals_while_one_portals_connections_die() {
    let Some(probe) = common::probe_guest_setup("broker_iscsi") else {
        return;
    };
    if !testenv::can_run("broker_iscsi", targets::missing("tgtd")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = common::raw_disk(dir.path(), "lun.img", 64);
    let port = free_port();
    let (pa, pb) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let target =
        Tgtd::start("iqn.2026-12.org.weir:two-portals", &image, &[&pa, &pb]).expect("tgtd starts");
    let (mut broker, control) = broker_on(
        dir.path(),
        &two_portals(
            &target,
            "{ selector = \"round-robin:8\", failback_s = 1, checker_interval_s = 0.2 }",
        ),
    );
    let topo = query(&control, "topology").unwrap();
    assert_eq!(topo[0]["backend"], "iscsi", "{topo}");
    let guest = guest_on(
        &probe,
        dir.path(),
        "probe.verify=1 probe.iodepth=16 probe.rw=randrw probe.runtime_ms=6000",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter(&control, "writes") < 2000 {
        assert!(
            Instant::now() < deadline,
            "the guest never wrote\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Portal b's connections die under load, twice (the second time after the path came
    // back: a fresh session's first answers may carry a UNIT ATTENTION).
    let killed = kill_connections("127.0.0.2", port);
    assert!(killed.contains("ESTAB"), "no connection to kill: {killed}");
    std::thread::sleep(Duration::from_millis(1500));
    let mid = query(&control, "topology").unwrap();
    let _ = kill_connections("127.0.0.2", port);
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
    let stats = query(&control, "stats").unwrap();
    let counters = &stats[0]["counters"];
    assert_eq!(counters["io_errors"], 0, "{stats}");
    let retries = counters["path_retries"].as_u64().unwrap_or(0);
    assert!(retries > 0, "commands moved off the dead session: {stats}");
    let events = query(&control, "paths").unwrap();
    let kinds: Vec<&str> = events["lun0"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds.first(), Some(&"failed"), "{events}");
    let telemetry = query(&control, "telemetry").unwrap();
    let failover_ms = telemetry
        .as_array()
        .and_then(|s| s.last())
        .and_then(|s| s["luns"][0]["max_failover_ms"].as_f64())
        .expect("a failover time in telemetry");
    let topo = query(&control, "topology").unwrap();
    let done = |k: usize| topo[0]["paths"][k]["completed"].as_u64().unwrap_or(0);
    eprintln!(
        "iSCSI failover: {retries} commands moved, longest {failover_ms:.1} ms; events {kinds:?}; \
         path b mid-run {}; completed on a {} and b {}; randrw {:.0} IOPS",
        mid[0]["paths"][1]["state"],
        done(0),
        done(1),
        run.report.phase("randrw").map_or(0.0, |p| p.iops)
    );
    assert!(failover_ms < 1000.0, "failover took {failover_ms} ms");
    // The image holds what the guest verified; and path b came back after the cuts.
    assert!(done(1) > 0, "path b carried commands");
    assert!(kinds.contains(&"restored"), "path b came back: {events}");
    broker.stop();
    drop(target);
}

/// A session between commands must still answer its target's NOP-In pings, or the target
/// drops it: tgtd pings every second and drops a connection that leaves one unanswered. A probe
/// guest reads one block a second for 8 s over two portals taken in turn, so each session idles
/// ~2 s between commands. No path may fail, no command move. (With the input poll armed only
/// while commands are out, this fails: tgtd drops the idle sessions.)
#[test]
fn an_idle_session_answers_the_targets_pings() {
    let Some(probe) = common::probe_guest_setup("broker_iscsi_nop") else {
        return;
    };
    if !testenv::can_run("broker_iscsi_nop", targets::missing("tgtd")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = common::raw_disk(dir.path(), "lun.img", 16);
    let port = free_port();
    let (pa, pb) = (format!("127.0.0.1:{port}"), format!("127.0.0.2:{port}"));
    let target = Tgtd::start("iqn.2026-12.org.weir:nop", &image, &[&pa, &pb]).expect("tgtd");
    target.update("nop_interval", "1").expect("nop_interval");
    target.update("nop_count", "1").expect("nop_count");
    let (mut broker, control) = broker_on(
        dir.path(),
        &two_portals(&target, "{ selector = \"round-robin:1\" }"),
    );
    let run = guest_on(
        &probe,
        dir.path(),
        "probe.rw=randread probe.iodepth=1 probe.rate_iops=1 probe.runtime_ms=8000",
    )
    .wait(Duration::from_secs(60))
    .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    assert_eq!(run.exit_code, Some(0), "{}\n{}", run.vmm_log, broker.log());
    assert_eq!(run.report.errors, 0);
    let events = query(&control, "paths").unwrap();
    let stats = query(&control, "stats").unwrap();
    let retries = stats[0]["counters"]["path_retries"].as_u64().unwrap_or(0);
    let reads = run.report.phase("randread").map_or(0, |p| p.ios);
    eprintln!("idle sessions: {reads} reads, {retries} moved, path events {events}");
    assert!(reads >= 6, "the guest read about once a second: {reads}");
    assert!(
        events["lun0"].as_array().is_none_or(|e| e.is_empty()),
        "a path failed: the target dropped an idle session\n{events}\n{}",
        broker.log()
    );
    assert_eq!(retries, 0, "{stats}");
    broker.stop();
    drop(target);
}

/// `weir vm --disk path=iscsi://...`: the VM process's private broker logs in to the target;
/// the probe's verified writes land in tgtd's backing file.
#[test]
fn weir_vm_takes_an_iscsi_lun_as_its_disk() {
    let Some(probe) = common::probe_guest_setup("weir_vm_iscsi") else {
        return;
    };
    if !testenv::can_run("weir_vm_iscsi", targets::missing("tgtd")) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = common::raw_disk(dir.path(), "lun.img", 8);
    let portal = format!("127.0.0.1:{}", free_port());
    let target = Tgtd::start("iqn.2026-12.org.weir:vm", &image, &[&portal]).expect("tgtd");
    let run = ProbeVm::spawn(
        &weir(),
        &probe,
        &[format!("path={}", target.uri(0))],
        "probe.verify=1 probe.iodepth=8",
        dir.path(),
        "vm",
    )
    .unwrap()
    .wait(Duration::from_secs(60))
    .unwrap();
    assert_eq!(run.exit_code, Some(0), "{}", run.vmm_log);
    assert_eq!((run.report.errors, run.report.verify_errors), (0, 0));
    assert_eq!(run.report.device.capacity_sectors, 8 << 20 >> 9);
    // The probe's pattern (each sector starts with its number) is in tgtd's backing file.
    let data = std::fs::read(&image).unwrap();
    assert_eq!(&data[512..520], &1u64.to_le_bytes());
    drop(target);
}

/// Per telemetry interval (a second): congestion answers (TASK SET FULL / BUSY), the guest's
/// IOPS (reads and writes) and the window at its end.
fn seconds(control: &std::path::Path) -> Vec<(f64, f64, f64)> {
    let telemetry = query(control, "telemetry").unwrap();
    telemetry
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let lun = &s["luns"][0];
            (
                lun["congestion"].as_f64().unwrap_or(0.0),
                s["disks"][0]["read_iops"].as_f64().unwrap_or(0.0)
                    + s["disks"][0]["write_iops"].as_f64().unwrap_or(0.0),
                lun["window"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

/// What one run on istgt gave.
struct IstgtRun {
    /// The guest's best phase.
    iops: f64,
    /// Per second: (refusals, IOPS, window).
    per_second: Vec<(f64, f64, f64)>,
    /// The broker's I/O errors and the guest's.
    errors: u64,
    verify_errors: u64,
    /// UNIT ATTENTIONs the broker sent again.
    unit_attentions: u64,
}

/// istgt's LU for the verify test and the read bench: QueueDepth 2, an LU queue long enough for
/// every session's window (it never refuses), writes through its cache.
const ISTGT_ROOMY: IstgtLu = IstgtLu {
    queue_depth: 2,
    max_sessions: 16,
};

/// istgt's LU that refuses: QueueDepth 2 and MaxSessions 1, so its queue holds 2 waiting
/// commands while four sessions may each have 2 out. One LU thread runs the commands one at a
/// time, slower than they arrive over TCP: past ~3 out, the queue overflows.
const ISTGT_REFUSING: IstgtLu = IstgtLu {
    queue_depth: 2,
    max_sessions: 1,
};

/// One probe guest run on an istgt LU reached through `sessions` sessions (paths to the one
/// portal, taken in turn).
fn istgt_run(
    probe: &std::path::Path,
    lu: IstgtLu,
    sessions: usize,
    window: &str,
    probe_args: &str,
) -> IstgtRun {
    let dir = tempfile::tempdir().unwrap();
    // 16 MiB: a verifying guest writes every block first, and under a refusing fixed window
    // that runs at ~1 k IOPS.
    let image = common::raw_disk(dir.path(), "lun.img", 16);
    let target =
        Istgt::start(&dir.path().join("istgt"), &image, 16, free_port(), lu).expect("istgt starts");
    let uri = target.uri.to_string();
    let paths: String = (0..sessions)
        .map(|i| format!("[[lun.paths]]\nname = \"s{i}\"\ndevice = {uri:?}\n"))
        .collect();
    let (mut broker, control) = broker_on(
        dir.path(),
        &format!(
            "path = {uri:?}\ndepth = {window}\nmultipath = {{ selector = \"round-robin:1\" }}\n\
             {paths}"
        ),
    );
    let guest = guest_on(probe, dir.path(), probe_args);
    let run = guest
        .wait(Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}\n{}", broker.log()));
    assert_eq!(run.exit_code, Some(0), "{}\n{}", run.vmm_log, broker.log());
    let per_second = seconds(&control);
    let errors = counter(&control, "io_errors") + run.report.errors;
    let unit_attentions = broker.log().matches("UNIT ATTENTION").count() as u64;
    broker.stop();
    drop(target);
    let iops = run.report.phases.iter().map(|p| p.iops).fold(0.0, f64::max);
    IstgtRun {
        iops,
        per_second,
        errors,
        verify_errors: run.report.verify_errors,
        unit_attentions,
    }
}

/// istgt is a second, unrelated target implementation, and one that answers TASK SET FULL: its
/// LU queue ([`ISTGT_REFUSING`]) is shorter than the windows of the four sessions the broker
/// logs in (a second each, one at a time). A probe guest writes and verifies through them:
/// - under `fixed:8` the target refuses (the window outruns its queue), and the guest sees no
///   error and no wrong byte: every refused command was offered again;
/// - under `adaptive` the window settles below the refusals: from two seconds after the
///   guest's I/O starts, at most 1 % of the commands are refused (measured: 0–4 a second at
///   ~20 k IOPS, docs/network.md). It met refusals in every run measured (4–16, when its probe
///   passed the queue), but that is not asserted: a search that stays below the queue from the
///   start is right too.
///
/// (istgt's power-on UNIT ATTENTION is taken by libiscsi's login, which sends TEST UNIT READY
/// until the LUN is ready: the data path does not see it; the count is printed.)
#[test]
fn istgt_refuses_a_deep_window_and_the_adaptive_window_settles_below_it() {
    let Some(probe) = common::probe_guest_setup("broker_iscsi_istgt") else {
        return;
    };
    if !testenv::can_run("broker_iscsi_istgt", targets::missing("istgt")) {
        return;
    }
    let mut refused_total = Vec::new();
    // Under fixed:8 the target refuses about one command in ten (until stop 42 each refusal
    // held the LUN's dispatch for the retry delay and it crawled at ~1.5 k IOPS; now a refusal
    // holds only the depth, and it runs at 12-15 k). The run must leave ≥ 3 settled seconds:
    // 5 s left 2 once the LUN no longer crawled, 3 s once left 2 on a loaded host.
    for (window, runtime_ms) in [
        ("{ policy = \"fixed\", depth = 8 }", 7000),
        ("{ policy = \"adaptive\" }", 9000),
    ] {
        let args = format!(
            "probe.verify=1 probe.iodepth=32 probe.rw=randrw probe.runtime_ms={runtime_ms}"
        );
        let IstgtRun {
            iops,
            per_second: per_s,
            errors,
            verify_errors,
            unit_attentions,
        } = istgt_run(&probe, ISTGT_REFUSING, 4, window, &args);
        let refused: f64 = per_s.iter().map(|s| s.0).sum();
        eprintln!(
            "istgt, {window}: {iops:.0} IOPS, {refused} TASK SET FULL, {unit_attentions} UNIT \
             ATTENTIONs sent again; per second (refused, IOPS, window): {per_s:?}"
        );
        assert_eq!((errors, verify_errors), (0, 0), "{window}");
        refused_total.push(refused);
        // The seconds the guest's I/O ran, from two after its first (the window's search),
        // without the last (the guest stopping mid-second).
        let first = per_s
            .iter()
            .position(|s| s.1 > 0.0)
            .unwrap_or_else(|| panic!("{window}: no second with I/O: {per_s:?}"));
        let end = per_s.len().saturating_sub(1);
        let settled = &per_s[(first + 2).min(end)..end];
        assert!(
            settled.len() >= 3,
            "{window}: {} settled seconds",
            settled.len()
        );
        if window.contains("adaptive") {
            let (r, io): (f64, f64) = settled
                .iter()
                .fold((0.0, 0.0), |a, s| (a.0 + s.0, a.1 + s.1));
            assert!(
                r <= 0.01 * (r + io),
                "adaptive: {r} refused of {} commands once settled: {per_s:?}",
                r + io
            );
        }
    }
    assert!(
        refused_total[0] > 0.0,
        "istgt never refused under fixed:8 (its LU queue holds 2): the test proves nothing"
    );
}

/// Not a test: the adaptive window against fixed ones on istgt (QueueDepth 2), interleaved
/// rounds, probe 4 KiB random reads at QD 64; prints IOPS and TASK SET FULL answers. By hand:
/// `cargo test --release --test broker_iscsi istgt_windows -- --ignored --nocapture`.
#[test]
#[ignore]
fn istgt_windows_adaptive_against_fixed() {
    windows_bench(
        ISTGT_ROOMY,
        2,
        "probe.iodepth=64 probe.rw=randread probe.runtime_ms=6000",
    );
}

/// Not a test: the same on an istgt LU that refuses (QueueDepth 2, MaxSessions 1, four
/// sessions), probe 4 KiB random writes at QD 64 for 12 s (the first ~4 s are istgt's logins).
/// By hand:
/// `cargo test --release --test broker_iscsi istgt_refusing -- --ignored --nocapture`.
#[test]
#[ignore]
fn istgt_refusing_windows_adaptive_against_fixed() {
    windows_bench(
        ISTGT_REFUSING,
        4,
        "probe.iodepth=64 probe.rw=randwrite probe.runtime_ms=12000",
    );
}

/// Interleaved rounds (`WEIR_ROUNDS`, 3) of fixed windows and `adaptive` on one istgt shape;
/// `WEIR_PROBE_ARGS` replaces the probe's arguments.
fn windows_bench(lu: IstgtLu, sessions: usize, probe_args: &str) {
    let probe_args = std::env::var("WEIR_PROBE_ARGS").unwrap_or_else(|_| probe_args.to_string());
    let probe_args = probe_args.as_str();
    let Some(probe) = common::probe_guest_setup("broker_iscsi_bench") else {
        return;
    };
    let rounds: usize = std::env::var("WEIR_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let windows = [
        "{ policy = \"fixed\", depth = 1 }",
        "{ policy = \"fixed\", depth = 2 }",
        "{ policy = \"fixed\", depth = 4 }",
        "{ policy = \"fixed\", depth = 8 }",
        "{ policy = \"fixed\", depth = 64 }",
        "{ policy = \"adaptive\" }",
    ];
    let mut rows: Vec<Vec<(f64, f64)>> = vec![Vec::new(); windows.len()];
    for round in 0..rounds {
        for k in 0..windows.len() {
            let k = (k + round) % windows.len();
            let IstgtRun {
                iops,
                per_second: per_s,
                errors,
                ..
            } = istgt_run(&probe, lu, sessions, windows[k], probe_args);
            assert_eq!(errors, 0);
            let refused: f64 = per_s.iter().map(|s| s.0).sum();
            eprintln!(
                "round {round} {}: {iops:.0} IOPS, {refused} refused; per second (refused, \
                 IOPS, window): {per_s:?}",
                windows[k]
            );
            rows[k].push((iops, refused));
        }
    }
    for (k, w) in windows.iter().enumerate() {
        let mut iops: Vec<f64> = rows[k].iter().map(|r| r.0).collect();
        iops.sort_by(f64::total_cmp);
        let refused: f64 = rows[k].iter().map(|r| r.1).sum();
        eprintln!(
            "{w}: median {:.0} IOPS [{:.0}–{:.0}], {refused} TASK SET FULL in all",
            iops[iops.len() / 2],
            iops[0],
            iops[iops.len() - 1]
        );
    }
}

/// Not a test: what the iSCSI hop costs. A probe guest under `weir vm` reads 4 KiB at random at
/// QD 32 for 4 s from one 256 MiB image in the host's page cache, served two ways in
/// interleaved rounds: a file LUN (`direct = false`) and tgtd's LUN over TCP on 127.0.0.1.
/// Prints IOPS and CPU per I/O of the broker and of tgtd. By hand (`WEIR_ROUNDS=5`):
/// `cargo test --release --test broker_iscsi iscsi_hop -- --ignored --nocapture`.
#[test]
#[ignore]
fn iscsi_hop_cost_against_a_file_lun() {
    let Some(probe) = common::probe_guest_setup("broker_iscsi_hop") else {
        return;
    };
    let rounds: usize = std::env::var("WEIR_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let runtime_ms: u32 = std::env::var("WEIR_RUNTIME_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4000);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun.img");
    std::fs::write(&image, vec![0x5au8; 256 << 20]).unwrap();
    // Per backend, per round: (IOPS, broker µs/IO, target µs/IO).
    type Rounds = Vec<(f64, f64, f64)>;
    let mut rows: Vec<(&str, Rounds)> = vec![("file", vec![]), ("iscsi", vec![])];
    for round in 0..rounds {
        for (k, row) in rows.iter_mut().enumerate() {
            let sub = dir.path().join(format!("r{round}-{k}"));
            std::fs::create_dir_all(&sub).unwrap();
            let target = (k == 1).then(|| {
                let portal = format!("127.0.0.1:{}", free_port());
                Tgtd::start("iqn.2026-12.org.weir:hop", &image, &[&portal]).unwrap()
            });
            let path = match &target {
                None => format!("{:?}\ndirect = false", image.display().to_string()),
                Some(t) => format!("{:?}", t.uri(0).to_string()),
            };
            let control = sub.join("broker.ctl");
            let config = format!(
                "control_socket = {control:?}\n[[lun]]\nname = \"l\"\npath = {path}\n\
                 [[disk]]\nsocket = {sock:?}\nlun = \"l\"\n",
                control = control.display().to_string(),
                sock = sub.join("g.sock").display().to_string(),
            );
            let mut broker =
                BrokerProcess::start(&weir(), &config, Some(control), &sub).expect("starts");
            let cpu = |pid: Option<u32>| {
                pid.and_then(weir_lab::bench::process_cpu_seconds)
                    .unwrap_or(0.0)
            };
            let tpid = target.as_ref().map(Tgtd::pid);
            let (b0, t0) = (cpu(broker.pid()), cpu(tpid));
            let run = ProbeVm::spawn(
                &weir(),
                &probe,
                &[format!("socket={}", sub.join("g.sock").display())],
                &format!("probe.rw=randread probe.iodepth=32 probe.runtime_ms={runtime_ms}"),
                &sub,
                "g",
            )
            .unwrap()
            .wait(Duration::from_secs(60))
            .unwrap();
            let (b1, t1) = (cpu(broker.pid()), cpu(tpid));
            let p = run.report.phase("randread").expect("randread");
            let ios = p.ios.max(1) as f64;
            row.1
                .push((p.iops, (b1 - b0) * 1e6 / ios, (t1 - t0) * 1e6 / ios));
            broker.stop();
        }
    }
    let med = |mut x: Vec<f64>| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    };
    println!("backend      IOPS median [range]       broker µs/IO   tgtd µs/IO");
    for (name, v) in &rows {
        let mut iops: Vec<f64> = v.iter().map(|r| r.0).collect();
        iops.sort_by(f64::total_cmp);
        println!(
            "{name:<10} {:>9.0} [{:.0}–{:.0}] {:>12.2} {:>14.2}",
            med(iops.clone()),
            iops[0],
            iops[iops.len() - 1],
            med(v.iter().map(|r| r.1).collect()),
            med(v.iter().map(|r| r.2).collect()),
        );
    }
}
