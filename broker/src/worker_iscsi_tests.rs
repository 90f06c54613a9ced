//! The queue worker on an iSCSI LUN, against a real target (tgtd): the data path, and a
//! killed and restarted target.

use super::*;
use crate::iscsi::targets::Tgtd;

/// A loopback port nobody listens on now.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Whether the targets can run here; under WEIR_REQUIRE_KVM=1 (CI) they must.
fn targets_missing(program: &str) -> bool {
    let Some(why) = crate::iscsi::targets::missing(program) else {
        return false;
    };
    let required = matches!(
        std::env::var("WEIR_REQUIRE_KVM").as_deref(),
        Ok("1" | "true" | "yes")
    );
    assert!(!required, "{program} is required here: {why}");
    eprintln!("SKIPPED: {why}");
    true
}

/// A disk on the iSCSI LUN `uri` (tgtd or istgt already serving it), window `depth`.
fn iscsi_disk_on(
    dir: tempfile::TempDir,
    backing: std::path::PathBuf,
    uri: &str,
    sessions: usize,
    policy: weir_sched::path::MultipathPolicy,
    depth: DepthPolicy,
) -> Disk {
    let mut cfg = LunConfig::file("lun0", std::path::Path::new(uri), None, false);
    cfg.backend = None;
    cfg.multipath = policy;
    // `sessions` paths to the same URI: as many sessions on this one queue.
    if sessions > 1 {
        cfg.paths = (0..sessions)
            .map(|i| crate::config::LunPathConfig {
                name: Some(format!("path{i}")),
                port: None,
                device: Some(uri.into()),
                group: weir_sched::path::PathGroup::Optimized,
                max_in_flight: u32::MAX,
            })
            .collect();
    }
    assert_eq!(cfg.backend(), crate::config::LunBackend::Iscsi);
    let lun = Arc::new(LunStore::open(&cfg).unwrap());
    assert_eq!((lun.size_bytes, lun.kind()), (DISK_BYTES, "iscsi"));
    let routes = (0..sessions)
        .map(|i| crate::dispatch::PathRoute {
            name: format!("path{i}"),
            port: None,
            group: weir_sched::path::PathGroup::Optimized,
            max_in_flight: u32::MAX,
        })
        .collect();
    let base = disk_on(dir, backing, false);
    let dispatcher = LunDispatcher::new(
        "lun0",
        vec![TenantPolicy::default()],
        SchedulerKind::Mclock,
        depth,
        None,
    )
    .with_paths(routes, cfg.multipath.clone(), Some(lun.clone()));
    let ctx = Arc::new(DiskContext {
        name: "iscsi-test".into(),
        lun,
        limits: base.ctx.limits,
        serial: base.ctx.serial,
        counters: Arc::new(DiskCounters::default()),
        bad_requests: RateLimitedLog::new(Duration::from_secs(1), 100),
        dispatcher: Arc::new(dispatcher),
        tenant: 0,
        thin: None,
        clock: BrokerClock::new(),
    });
    Disk { ctx, ..base }
}

/// A disk on tgtd's LUN 1 over a file of DISK_BYTES, or `None` when tgtd cannot run here.
fn tgtd_disk(hold_s: f64) -> Option<(Disk, Tgtd)> {
    if targets_missing("tgtd") {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("lun.img");
    std::fs::write(&backing, vec![0u8; DISK_BYTES as usize]).unwrap();
    let portal = format!("127.0.0.1:{}", free_port());
    let target = Tgtd::start("iqn.2026-12.org.weir:test", &backing, &[&portal]).unwrap();
    let policy = weir_sched::path::MultipathPolicy {
        hold_s,
        ..Default::default()
    };
    let uri = target.uri(0).to_string();
    let d = iscsi_disk_on(
        dir,
        backing,
        &uri,
        1,
        policy,
        DepthPolicy::Fixed { depth: 1024 },
    );
    Some((d, target))
}

/// What the backing file holds at `offset`.
fn backing_at(d: &Disk, offset: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&d.path).unwrap();
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn an_iscsi_lun_reads_writes_flushes_and_zeroes_through_tgtd() {
    let Some((d, _target)) = tgtd_disk(30.0) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    b.good_roundtrip(8, 0xa7);
    // Eight writes in flight at once on one session; tgtd stores them in its backing file.
    pipelined_writes(&mut b, 8, 0x10);
    for i in 0..8u64 {
        let back = backing_at(&d, i * 4096, 4096);
        assert!(back.iter().all(|&x| x == 0x10 + i as u8), "block {i}");
    }
    // Reads come back into guest memory, many at once.
    let mut b = Bench::new(&mem, &d);
    for i in 0..8u64 {
        let (h, dd, s) = (
            0x40_0000 + i * 0x1_0000,
            0x80_0000 + i * 0x1_0000,
            0xc0_0000 + i * 16,
        );
        header(&mem, h, VIRTIO_BLK_T_IN, 8 * i);
        mem.write_slice(&[0u8; 4096], GuestAddress(dd)).unwrap();
        b.post(&[(h, 16, 0), (dd, 4096, F_WRITE), (s, 1, F_WRITE)]);
    }
    assert_eq!(b.run().len(), 8);
    for i in 0..8u64 {
        let mut back = [0u8; 4096];
        mem.read_slice(&mut back, GuestAddress(0x80_0000 + i * 0x1_0000))
            .unwrap();
        assert!(back.iter().all(|&x| x == 0x10 + i as u8), "read {i}");
    }
    // A read whose buffer is split over three descriptors lands in all three.
    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    let r = b.post(&[
        (H, 16, 0),
        (0x20_0000, 512, F_WRITE),
        (0x30_0000, 2048, F_WRITE),
        (0x21_0000, 1536, F_WRITE),
        (0x1f_0000, 1, F_WRITE),
    ]);
    assert_eq!(b.run(), vec![(u32::from(r), 4097)]);
    let mut split = vec![0u8; 4096];
    mem.read_slice(&mut split[..512], GuestAddress(0x20_0000))
        .unwrap();
    mem.read_slice(&mut split[512..2560], GuestAddress(0x30_0000))
        .unwrap();
    mem.read_slice(&mut split[2560..], GuestAddress(0x21_0000))
        .unwrap();
    assert!(split.iter().all(|&x| x == 0x10), "split read");

    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    let f = b.post(&[(H, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(f), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);

    // Zero sectors 8..16 (WRITE SAME of a zero block): they read back as zeroes. A discard on
    // this thick LUN (no LBPME) is advisory: answered OK, the data stays.
    for (kind, sector) in [
        (VIRTIO_BLK_T_WRITE_ZEROES, 8u64),
        (VIRTIO_BLK_T_DISCARD, 16),
    ] {
        header(&mem, H, kind, 0);
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        mem.write_slice(&seg, GuestAddress(D)).unwrap();
        let h = b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
        assert_eq!(b.run(), vec![(u32::from(h), 1)]);
        assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK, "type {kind}");
    }
    assert!(backing_at(&d, 8 * 512, 4096).iter().all(|&x| x == 0));
    assert!(backing_at(&d, 16 * 512, 4096).iter().all(|&x| x == 0x12));
    let counters = d.ctx.counters.snapshot();
    assert_eq!(counters.io_errors, 0);
    assert_eq!((counters.writes, counters.reads), (9, 10));
}

#[test]
fn a_killed_target_holds_commands_and_the_restarted_one_takes_them() {
    let Some((d, mut target)) = tgtd_disk(20.0) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    pipelined_writes(&mut b, 2, 0x20);
    target.kill();
    let checker = Checker::start(&d);
    // Written while the target is gone: the writes wait, and land when it is back.
    let mut b = Bench::new(&mem, &d);
    let status = post_writes(&mut b, 3, 0x60);
    let early = b.run_live(3, Duration::from_millis(1500));
    assert!(
        early.is_empty(),
        "nothing answered while the target is down: {early:?}"
    );
    target.restart().unwrap();
    let restarted = std::time::Instant::now();
    let late = b.run_live(3, Duration::from_secs(15));
    let waited = restarted.elapsed();
    checker.stop();
    assert_eq!(late.len(), 3, "all answered once the target is back");
    for st in status {
        assert_eq!(b.status(st), VIRTIO_BLK_S_OK);
    }
    eprintln!("answered {waited:?} after the restart");
    for i in 0..3u64 {
        let back = backing_at(&d, i * 4096, 4096);
        assert!(back.iter().all(|&x| x == 0x60 + i as u8), "block {i}");
    }
    let counters = d.ctx.counters.snapshot();
    assert_eq!(counters.io_errors, 0, "the guest saw no error");
    assert!(counters.path_retries >= 1, "{counters:?}");
}
