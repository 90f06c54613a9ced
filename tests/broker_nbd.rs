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

/// fio in a Linux guest under QEMU (vhost-user-blk) writes a 96 MiB NBD LUN with
/// `verify=crc32c` at QD 32, reads every block back and checks it, then reads at random; the
/// data must also be in nbdkit's image file (read past the broker, from the file).
#[test]
fn fio_in_a_qemu_guest_verifies_an_nbd_lun() {
    let Some((image, accel)) = common::linux_guest_setup("broker_nbd_fio") else {
        return;
    };
    if !testenv::can_run("broker_nbd_fio", nbdkit::missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = common::raw_disk(dir.path(), "lun.img", 96);
    let socket = dir.path().join("nbd.sock");
    let _server =
        Nbdkit::unix(&socket, &["file", &format!("file={}", backing.display())]).expect("nbdkit");
    let control = dir.path().join("broker.ctl");
    let config = format!(
        "control_socket = {control:?}\n\
         [[lun]]\nname = \"lun0\"\npath = {uri:?}\n\
         [[disk]]\nsocket = {sock:?}\nlun = \"lun0\"\ntenant = \"guest\"\n",
        control = control.display().to_string(),
        uri = uri(&socket),
        sock = dir.path().join("guest.sock").display().to_string(),
    );
    let mut broker =
        BrokerProcess::start(&weir(), &config, Some(control.clone()), dir.path()).expect("starts");
    let job = common::verify_then_read_job(32, 3);
    let mut spec = weir_lab::qemu::LinuxGuestSpec::new(
        "guest",
        &image,
        &weir_lab::fiojob::with_target(&job, "/dev/vda"),
        accel,
        dir.path(),
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(240);
    spec.disks.push(weir_lab::qemu::GuestDisk::VhostUser {
        socket: dir.path().join("guest.sock"),
        queues: 1,
    });
    let run = spec
        .run()
        .unwrap_or_else(|e| panic!("guest: {e}\n{}", broker.log()));
    for j in &run.report.jobs {
        assert_eq!(j.error, 0, "fio job {} error {}", j.jobname, j.error);
    }
    let w = run.report.job("randwrite-verify").expect("the write job");
    assert_eq!(w.write.io_bytes, 96 << 20, "every block written once");
    assert_eq!(w.read.io_bytes, 96 << 20, "and read back and verified");
    let stats = query(&control, "stats").unwrap();
    assert_eq!(stats[0]["counters"]["io_errors"], 0, "{stats}");
    // fio's verify header begins every 4 KiB block it wrote: the image holds what the guest
    // wrote, not zeroes.
    let data = std::fs::read(&backing).unwrap();
    let written = data
        .chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count();
    assert_eq!(written, (96 << 20) / 4096, "every block reached the export");
    eprintln!(
        "fio through NBD: write {:.0} IOPS, verify and random read {:.0} IOPS",
        w.write.iops,
        run.report.job("randread").map_or(0.0, |j| j.read.iops)
    );
    broker.stop();
}

/// Not a test: what the NBD hop costs. A probe guest under `weir vm` reads 4 KiB at random at
/// QD 32 for 4 s from one 256 MiB image in the host's page cache, served three ways, in
/// interleaved rounds: a file LUN (`direct = false`), an NBD LUN through nbdkit's file plugin
/// on a unix socket, and the same over TCP on 127.0.0.1. Prints IOPS and CPU per I/O of the
/// broker and of nbdkit. Run by hand (`WEIR_ROUNDS=5` for five rounds):
/// `cargo test --release --test broker_nbd nbd_hop -- --ignored --nocapture`.
/// Here, 5 rounds: file 575 k IOPS (1.71 µs broker CPU per read), NBD over the unix socket
/// 146 k (2.23 µs; nbdkit 3.96 µs), over TCP 145 k (2.04; 4.64) — docs/network.md.
#[test]
#[ignore]
fn nbd_hop_cost_against_a_file_lun() {
    let Some(probe) = common::probe_guest_setup("broker_nbd_bench") else {
        return;
    };
    let rounds: usize = std::env::var("WEIR_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("lun.img");
    std::fs::write(&image, vec![0x5au8; 256 << 20]).unwrap();
    let file = format!("file={}", image.display());
    // Per backend, per round: (IOPS, broker µs/IO, nbdkit µs/IO).
    type Rounds = Vec<(f64, f64, f64)>;
    let mut rows: Vec<(&str, Rounds)> =
        vec![("file", vec![]), ("nbd unix", vec![]), ("nbd tcp", vec![])];
    for round in 0..rounds {
        for (k, row) in rows.iter_mut().enumerate() {
            let sub = dir.path().join(format!("r{round}-{k}"));
            std::fs::create_dir_all(&sub).unwrap();
            let server = match k {
                0 => None,
                1 => Some(Nbdkit::unix(&sub.join("nbd.sock"), &["file", &file]).unwrap()),
                _ => Some(Nbdkit::tcp(10900 + round as u16, &["file", &file]).unwrap()),
            };
            let path = match &server {
                None => format!("{:?}\ndirect = false", image.display().to_string()),
                Some(s) => format!("{:?}", s.uri.to_string()),
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
            let (b0, n0) = (cpu(broker.pid()), cpu(server.as_ref().map(|s| s.pid())));
            let run = ProbeVm::spawn(
                &weir(),
                &probe,
                &[format!("socket={}", sub.join("g.sock").display())],
                "probe.rw=randread probe.iodepth=32 probe.runtime_ms=4000",
                &sub,
                "g",
            )
            .unwrap()
            .wait(Duration::from_secs(60))
            .unwrap();
            let (b1, n1) = (cpu(broker.pid()), cpu(server.as_ref().map(|s| s.pid())));
            let p = run.report.phase("randread").expect("randread");
            let ios = p.ios.max(1) as f64;
            row.1
                .push((p.iops, (b1 - b0) * 1e6 / ios, (n1 - n0) * 1e6 / ios));
            broker.stop();
        }
    }
    println!("backend      IOPS median [range]       broker µs/IO   nbdkit µs/IO");
    for (name, v) in &rows {
        let mut iops: Vec<f64> = v.iter().map(|r| r.0).collect();
        iops.sort_by(f64::total_cmp);
        let med = |mut x: Vec<f64>| {
            x.sort_by(f64::total_cmp);
            x[x.len() / 2]
        };
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

/// Not a test: the `adaptive` window on real targets with a knee. nbdkit shaped by its delay
/// and rate filters is a device whose throughput stops rising at `rate × delay` requests in
/// flight (no QUEUE FULL, no BUSY: only the curve). A probe guest (4 KiB random reads, QD 64)
/// runs against each shape under fixed windows around the knee and under `adaptive`; printed:
/// IOPS, the broker's mean device latency and window (its per-second telemetry after the first
/// three seconds), adaptive ÷ the best fixed window, and latency ÷ the latency at the knee (the
/// smallest fixed window within 5 % of the best). Run by hand:
/// `cargo test --release --test broker_nbd adaptive_on -- --ignored --nocapture`.
///
/// Here (docs/network.md): the rate filter serves up to 1.2× its rate while no request waits
/// in it and exactly its rate once one does, so each rate shape's curve peaks at `rate × delay`
/// and falls 13–17 % past it (a cliff, as some arrays have). `adaptive` holds 13.8 and 14.7 on
/// the first two (peaks at 13 and 15) but measures the cliff's plateau, 0.86–0.87 of the peak:
/// every probe above the knee backlogs the filter. The thread shapes (3–8) are flat past their
/// knee; there `adaptive` got 0.957–0.999 of the best fixed window in every run.
#[test]
#[ignore]
fn adaptive_on_shaped_nbd_targets() {
    let Some(probe) = common::probe_guest_setup("broker_nbd_adaptive") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // (delay, rate in bit/s or none, nbdkit's threads). A rate shape's knee is rate/32768
    // reads/s × delay; a thread shape (no rate filter) serves `threads` reads at a time, each
    // taking the delay: an M/D/c device whose knee is `threads`, flat past it, as an array's
    // parallelism is. (nbdkit's delay filter takes whole milliseconds: no sub-millisecond
    // shape.)
    let shapes: [(&str, Option<&str>, u32); 9] = [
        ("2ms", Some("160M"), 128),
        ("1ms", Some("320M"), 128),
        ("5ms", Some("80M"), 128),
        ("2ms", None, 8),
        ("1ms", None, 16),
        ("5ms", None, 32),
        ("1ms", None, 4),
        ("2ms", None, 2),
        ("3ms", None, 12),
    ];
    // `WEIR_SHAPES=2,3` runs the third and fourth shapes only.
    let only: Option<Vec<usize>> = std::env::var("WEIR_SHAPES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect());
    for (n, (delay, rate, threads)) in shapes.iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.contains(&n)) {
            continue;
        }
        let delay_s = delay.trim_end_matches("ms").parse::<f64>().unwrap() / 1e3;
        let (reads_s, knee) = match rate {
            Some(rate) => {
                let reads_s = rate.trim_end_matches('M').parse::<f64>().unwrap() * 1e6 / 32768.0;
                (reads_s, (reads_s * delay_s).ceil().max(1.0) as u32)
            }
            None => (f64::from(*threads) / delay_s, *threads),
        };
        let threads_arg = threads.to_string();
        let rdelay = format!("rdelay={delay}");
        let mut args = vec!["-t", &threads_arg];
        let rate_arg = rate.map(|r| format!("rate={r}"));
        if rate_arg.is_some() {
            args.push("--filter=rate");
        }
        args.extend(["--filter=delay", "memory", "64M", &rdelay]);
        if let Some(r) = &rate_arg {
            args.push(r);
        }
        let server = Nbdkit::tcp(10960 + n as u16, &args).unwrap();
        let mut policies: Vec<String> = [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0]
            .iter()
            .map(|f| format!("fixed:{}", ((f64::from(knee) * f).round() as u32).max(1)))
            .collect();
        policies.dedup();
        policies.push("adaptive".into());
        let mut rows = Vec::new();
        for policy in &policies {
            let sub = dir.path().join(format!("{n}-{policy}").replace(':', "-"));
            std::fs::create_dir_all(&sub).unwrap();
            let depth = match policy.strip_prefix("fixed:") {
                Some(d) => format!("{{ policy = \"fixed\", depth = {d} }}"),
                None => "{ policy = \"adaptive\" }".to_string(),
            };
            let control = sub.join("broker.ctl");
            let config = format!(
                "control_socket = {control:?}\n[[lun]]\nname = \"l\"\npath = {uri:?}\n\
                 depth = {depth}\n[[disk]]\nsocket = {sock:?}\nlun = \"l\"\n",
                control = control.display().to_string(),
                uri = server.uri.to_string(),
                sock = sub.join("g.sock").display().to_string(),
            );
            let mut broker =
                BrokerProcess::start(&weir(), &config, Some(control.clone()), &sub).unwrap();
            let run = ProbeVm::spawn(
                &weir(),
                &probe,
                &[format!("socket={}", sub.join("g.sock").display())],
                "probe.rw=randread probe.iodepth=64 probe.runtime_ms=9000 probe.mode=halt",
                &sub,
                "g",
            )
            .unwrap()
            .wait(Duration::from_secs(60))
            .unwrap();
            // The broker's seconds with I/O, the first three left out: nbdkit's rate filter
            // starts with a full bucket (a burst), and the window policy with its start-up.
            let telemetry = query(&control, "telemetry").unwrap();
            let busy: Vec<&serde_json::Value> = telemetry
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["disks"][0]["read_iops"].as_f64().unwrap_or(0.0) > 0.0)
                .skip(3)
                .collect();
            let mean = |f: &dyn Fn(&serde_json::Value) -> Option<f64>| {
                let v: Vec<f64> = busy.iter().filter_map(|x| f(x)).collect();
                v.iter().sum::<f64>() / v.len().max(1) as f64
            };
            let iops = mean(&|x| x["disks"][0]["read_iops"].as_f64());
            let lat = mean(&|x| x["disks"][0]["device_latency_us"].as_f64());
            let window = mean(&|x| x["luns"][0]["window"].as_f64());
            let _ = run;
            broker.stop();
            rows.push((policy.clone(), iops, lat, window));
        }
        let best = rows
            .iter()
            .filter(|r| r.0 != "adaptive")
            .map(|r| r.1)
            .fold(0.0, f64::max);
        let knee_row = rows
            .iter()
            .find(|r| r.0 != "adaptive" && r.1 >= 0.95 * best)
            .cloned()
            .unwrap();
        println!(
            "shape rdelay={delay} rate={rate:?} threads={threads}: {reads_s:.0} reads/s, knee \
             by construction {knee}; measured (smallest within 5 % of the best) {}",
            knee_row.0
        );
        for (policy, iops, lat, window) in &rows {
            println!(
                "  {policy:<10} {iops:>8.0} IOPS  mean {lat:>8.0} µs  window {window:>6.1}  \
                 ÷best {:.3}  lat÷knee {:.2}",
                iops / best,
                lat / knee_row.2
            );
        }
    }
}
