//! The traffic cop under test: malformed chains built in real guest memory with
//! `MockSplitQueue`, run through the real queue worker onto a real file over io_uring. Each
//! test asserts the status byte the guest gets, the counter, and that the next well-formed
//! request on the same queue still completes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::Queue;
use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};

use crate::config::LunConfig;
use crate::counters::{DiskCounters, RateLimitedLog};
use crate::dispatch::{BrokerClock, LunDispatcher};
use crate::lun::LunStore;
use crate::request::*;
use crate::worker::{DiskContext, GuestMem, QueueWorker};
use weir_sched::depth::DepthPolicy;
use weir_sched::mclock::TenantPolicy;
use weir_sched::sim::SchedulerKind;

pub(crate) const F_NEXT: u16 = 1;
pub(crate) const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
pub(crate) const QUEUE_SIZE: u16 = 32;
const DISK_BYTES: u64 = 1 << 20;
const MAX_DESCRIPTORS: usize = 8;

pub(crate) struct Disk {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pub(crate) ctx: Arc<DiskContext>,
}

pub(crate) fn disk(read_only: bool) -> Disk {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    std::fs::write(&path, vec![0u8; DISK_BYTES as usize]).unwrap();
    disk_on(dir, path, read_only)
}

/// A disk over `path` (a file or a block device) of `DISK_BYTES`.
fn disk_on(dir: tempfile::TempDir, path: std::path::PathBuf, read_only: bool) -> Disk {
    let lun = LunStore::open(&LunConfig::file("lun0", &path, Some(DISK_BYTES), read_only)).unwrap();
    let mut serial = [0u8; ID_BYTES];
    serial[..9].copy_from_slice(b"weir-test");
    let ctx = Arc::new(DiskContext {
        name: "test".into(),
        lun: Arc::new(lun),
        limits: DiskLimits {
            capacity_sectors: DISK_BYTES / SECTOR_SIZE,
            read_only,
            max_descriptors: MAX_DESCRIPTORS,
            max_discard_segments: 1,
            max_discard_sectors: 1 << 21,
            max_write_zeroes_segments: 1,
            max_write_zeroes_sectors: 1 << 21,
        },
        serial,
        counters: Arc::new(DiskCounters::default()),
        bad_requests: RateLimitedLog::new(Duration::from_secs(1), 100),
        dispatcher: Arc::new(LunDispatcher::new(
            "lun0",
            vec![TenantPolicy::default()],
            SchedulerKind::Mclock,
            DepthPolicy::Fixed { depth: 1024 },
            None,
        )),
        tenant: 0,
        thin: None,
        clock: BrokerClock::new(),
    });
    Disk {
        _dir: dir,
        path,
        ctx,
    }
}

pub(crate) fn memory() -> GuestMem {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x0400_0000)]).unwrap()
}

pub(crate) fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

pub(crate) fn header(mem: &GuestMem, at: u64, req_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&req_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

/// A test bench: guest memory, a mock split queue in it, the device queue, and a worker.
struct Bench<'a> {
    mem: &'a GuestMem,
    atomic: GuestMemoryAtomic<GuestMem>,
    mock: MockSplitQueue<'a, GuestMem>,
    queue: Queue,
    worker: QueueWorker,
    next_index: u16,
    used_seen: u16,
}

impl<'a> Bench<'a> {
    fn new(mem: &'a GuestMem, disk: &Disk) -> Self {
        let mock = MockSplitQueue::create(mem, GuestAddress(0), QUEUE_SIZE);
        let queue: Queue = mock.create_queue().unwrap();
        Bench {
            mem,
            atomic: GuestMemoryAtomic::new(mem.clone()),
            mock,
            queue,
            worker: QueueWorker::new(disk.ctx.clone(), QUEUE_SIZE).unwrap(),
            next_index: 0,
            used_seen: 0,
        }
    }

    /// Posts a chain whose descriptors are given with explicit flags; NEXT links are set to
    /// the following entry unless the flags already carry NEXT (then `next` is kept).
    fn post(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let base = self.next_index;
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == descs.len();
                let flags = if last { flags } else { flags | F_NEXT };
                desc(addr, len, flags, base + i as u16 + 1)
            })
            .collect();
        self.post_raw(&raw)
    }

    fn post_raw(&mut self, raw: &[RawDescriptor]) -> u16 {
        let base = self.next_index;
        self.mock.add_desc_chains(raw, base).unwrap();
        self.next_index += raw.len() as u16;
        base
    }

    /// Runs the worker until everything posted is answered; returns the new used entries.
    fn run(&mut self) -> Vec<(u32, u32)> {
        self.worker
            .process_available(&mut self.queue, &self.atomic)
            .unwrap();
        self.worker.drain(&mut self.queue).unwrap();
        self.take_used()
    }

    /// New used entries since the last look.
    fn take_used(&mut self) -> Vec<(u32, u32)> {
        let used_ring = self.mock.used_addr();
        let idx: u16 = self.mem.read_obj(used_ring.unchecked_add(2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = used_ring.unchecked_add(4 + 8 * u64::from(self.used_seen % QUEUE_SIZE));
            let id: u32 = self.mem.read_obj(at).unwrap();
            let len: u32 = self.mem.read_obj(at.unchecked_add(4)).unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Runs the worker as its queue thread does (no draining: the guest is there), until `n`
    /// requests are answered or `limit` passes.
    fn run_live(&mut self, n: usize, limit: Duration) -> Vec<(u32, u32)> {
        self.worker
            .process_available(&mut self.queue, &self.atomic)
            .unwrap();
        let deadline = std::time::Instant::now() + limit;
        let mut out = Vec::new();
        loop {
            out.extend(self.take_used());
            if out.len() >= n || std::time::Instant::now() >= deadline {
                return out;
            }
            let mut fds = [
                libc::pollfd {
                    fd: self.worker.completion_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: self.worker.inbox_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds, for the length given.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
            self.worker.reap(&mut self.queue).unwrap();
        }
    }

    fn status(&self, at: u64) -> u8 {
        self.mem.read_obj(GuestAddress(at)).unwrap()
    }

    /// A well-formed 4 KiB write of `byte` at `sector` followed by a read of it back; asserts
    /// both complete OK and the data round-trips.
    fn good_roundtrip(&mut self, sector: u64, byte: u8) {
        let (h, d, s) = (0x20_0000, 0x21_0000, 0x22_0000);
        header(self.mem, h, VIRTIO_BLK_T_OUT, sector);
        self.mem
            .write_slice(&[byte; 4096], GuestAddress(d))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
        let w = self.post(&[(h, 16, 0), (d, 4096, 0), (s, 1, F_WRITE)]);
        let used = self.run();
        assert_eq!(
            used,
            vec![(u32::from(w), 1)],
            "the next good write must complete"
        );
        assert_eq!(self.status(s), VIRTIO_BLK_S_OK);

        let (h, d, s) = (0x23_0000, 0x24_0000, 0x25_0000);
        header(self.mem, h, VIRTIO_BLK_T_IN, sector);
        self.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
        let r = self.post(&[(h, 16, 0), (d, 4096, F_WRITE), (s, 1, F_WRITE)]);
        let used = self.run();
        assert_eq!(used, vec![(u32::from(r), 4097)]);
        assert_eq!(self.status(s), VIRTIO_BLK_S_OK);
        let mut back = [0u8; 4096];
        self.mem.read_slice(&mut back, GuestAddress(d)).unwrap();
        assert!(
            back.iter().all(|&b| b == byte),
            "read back what was written"
        );
    }
}

/// Posts `bad`, runs it, asserts the status and the counter, then proves the queue still works.
fn assert_rejected(
    read_only: bool,
    class: &str,
    expected_status: Option<u8>,
    bad: impl FnOnce(&mut Bench, u64) -> u16,
) {
    let d = disk(read_only);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    let status_at = 0x1f_0000;
    b.mem.write_obj(0xeeu8, GuestAddress(status_at)).unwrap();
    let head = bad(&mut b, status_at);
    let used = b.run();
    assert_eq!(
        used.len(),
        1,
        "{class}: the bad chain is returned exactly once"
    );
    assert_eq!(used[0].0, u32::from(head), "{class}");
    match expected_status {
        Some(st) => {
            assert_eq!(b.status(status_at), st, "{class}: status byte");
            assert_eq!(used[0].1, 1, "{class}: only the status byte was written");
        }
        None => assert_eq!(used[0].1, 0, "{class}: no status byte to write"),
    }
    let snapshot = d.ctx.counters.snapshot();
    assert_eq!(
        snapshot.rejected[class], 1,
        "{class}: counter; all: {:?}",
        snapshot.rejected
    );
    assert_eq!(
        d.ctx.counters.rejected_total(),
        1,
        "{class}: only this class counted"
    );
    if read_only {
        // Reads still work on a read-only disk.
        let (h, dd, s) = (0x23_0000, 0x24_0000, 0x25_0000);
        header(b.mem, h, VIRTIO_BLK_T_IN, 0);
        let r = b.post(&[(h, 16, 0), (dd, 512, F_WRITE), (s, 1, F_WRITE)]);
        assert_eq!(b.run(), vec![(u32::from(r), 513)]);
        assert_eq!(b.status(s), VIRTIO_BLK_S_OK);
    } else {
        b.good_roundtrip(16, 0x5a);
    }
}

const H: u64 = 0x10_0000;
const D: u64 = 0x11_0000;

#[test]
fn write_then_read_reaches_the_file() {
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    b.good_roundtrip(8, 0xa7);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[8 * 512..8 * 512 + 4096].iter().all(|&x| x == 0xa7));
    assert!(file[..8 * 512].iter().all(|&x| x == 0));
    let c = d.ctx.counters.snapshot();
    assert_eq!(
        (c.writes, c.write_bytes, c.reads, c.read_bytes),
        (1, 4096, 1, 4096)
    );
}

#[test]
fn header_and_data_may_share_and_split_descriptors() {
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    // Header split 10 + 6 bytes; the second part carries the first 512 data bytes too.
    header(&mem, H, VIRTIO_BLK_T_OUT, 2);
    let mut hdr = [0u8; 16];
    mem.read_slice(&mut hdr, GuestAddress(H)).unwrap();
    mem.write_slice(&hdr[..10], GuestAddress(0x30_0000))
        .unwrap();
    mem.write_slice(&hdr[10..], GuestAddress(0x31_0000))
        .unwrap();
    mem.write_slice(&[0x42; 1024], GuestAddress(0x31_0006))
        .unwrap();
    let head = b.post(&[
        (0x30_0000, 10, 0),
        (0x31_0000, 6 + 1024, 0),
        (0x32_0000, 1, F_WRITE),
    ]);
    assert_eq!(b.run(), vec![(u32::from(head), 1)]);
    assert_eq!(b.status(0x32_0000), VIRTIO_BLK_S_OK);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[1024..2048].iter().all(|&x| x == 0x42));
}

#[test]
fn misaligned_guest_buffers_fall_back_to_the_page_cache() {
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_OUT, 4);
    mem.write_slice(&[0x33; 512], GuestAddress(D + 3)).unwrap();
    let head = b.post(&[(H, 16, 0), (D + 3, 512, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(head), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[2048..2560].iter().all(|&x| x == 0x33));
}

#[test]
fn flush_get_id_discard_and_write_zeroes() {
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    b.good_roundtrip(0, 0x77);

    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    let f = b.post(&[(H, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(f), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);

    header(&mem, H, VIRTIO_BLK_T_GET_ID, 0);
    let g = b.post(&[(H, 16, 0), (D, 20, F_WRITE), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(g), 21)]);
    let mut id = [0u8; 20];
    mem.read_slice(&mut id, GuestAddress(D)).unwrap();
    assert_eq!(&id[..9], b"weir-test");
    assert!(id[9..].iter().all(|&x| x == 0));

    // Discard sectors 0..8 (the 4 KiB just written): they read back as zeroes.
    header(&mem, H, VIRTIO_BLK_T_DISCARD, 0);
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(D)).unwrap();
    let dc = b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(dc), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[..4096].iter().all(|&x| x == 0));

    b.good_roundtrip(16, 0x99);
    header(&mem, H, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    seg[0..8].copy_from_slice(&16u64.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(D)).unwrap();
    let wz = b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(wz), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[16 * 512..16 * 512 + 4096].iter().all(|&x| x == 0));
    let c = d.ctx.counters.snapshot();
    assert_eq!(
        (c.flushes, c.get_ids, c.discards, c.write_zeroes),
        (1, 1, 1, 1)
    );
}

#[test]
fn chain_without_a_writable_byte_is_returned_without_status() {
    assert_rejected(false, "no_status_byte", None, |b, _| {
        header(b.mem, H, VIRTIO_BLK_T_IN, 0);
        b.post(&[(H, 16, 0), (D, 512, 0)])
    });
}

#[test]
fn looping_chain_is_rejected() {
    assert_rejected(
        false,
        "unterminated_chain",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_IN, 0);
            let base = b.next_index;
            // header -> status -> header -> ... : the status descriptor points back.
            b.post_raw(&[
                desc(H, 16, F_NEXT, base + 1),
                desc(s, 1, F_WRITE | F_NEXT, base),
            ])
        },
    );
}

#[test]
fn chain_pointing_outside_the_table_is_rejected() {
    assert_rejected(
        false,
        "unterminated_chain",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_IN, 0);
            let base = b.next_index;
            b.post_raw(&[
                desc(H, 16, F_NEXT, base + 1),
                desc(s, 1, F_WRITE | F_NEXT, 4000),
            ])
        },
    );
}

#[test]
fn overlong_chain_is_rejected() {
    assert_rejected(false, "chain_too_long", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
        let mut descs = vec![(H, 16, 0)];
        for i in 0..MAX_DESCRIPTORS as u64 {
            descs.push((D + i * 512, 512, 0));
        }
        descs.push((s, 1, F_WRITE));
        b.post(&descs)
    });
}

#[test]
fn descriptor_outside_guest_memory_is_rejected() {
    assert_rejected(
        false,
        "outside_guest_memory",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_IN, 0);
            b.post(&[(H, 16, 0), (0x1_0000_0000, 4096, F_WRITE), (s, 1, F_WRITE)])
        },
    );
}

#[test]
fn readable_after_writable_is_rejected() {
    assert_rejected(
        false,
        "wrong_direction",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
            b.post(&[
                (H, 16, 0),
                (D, 512, F_WRITE),
                (D + 512, 512, 0),
                (s, 1, F_WRITE),
            ])
        },
    );
}

#[test]
fn read_with_device_readable_data_is_rejected() {
    assert_rejected(
        false,
        "wrong_direction",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_IN, 0);
            b.post(&[(H, 16, 0), (D, 512, 0), (s, 1, F_WRITE)])
        },
    );
}

#[test]
fn write_with_device_writable_data_is_rejected() {
    assert_rejected(
        false,
        "wrong_direction",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
            b.post(&[(H, 16, 0), (D, 512, F_WRITE), (s, 1, F_WRITE)])
        },
    );
}

#[test]
fn short_header_is_rejected() {
    assert_rejected(false, "short_header", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_IN, 0);
        b.post(&[(H, 8, 0), (D, 512, F_WRITE), (s, 1, F_WRITE)])
    });
}

#[test]
fn data_not_a_multiple_of_512_is_rejected() {
    assert_rejected(false, "bad_length", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
        b.post(&[(H, 16, 0), (D, 1000, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn access_past_the_end_is_rejected() {
    assert_rejected(false, "out_of_range", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_IN, DISK_BYTES / 512 - 1);
        b.post(&[(H, 16, 0), (D, 1024, F_WRITE), (s, 1, F_WRITE)])
    });
}

#[test]
fn sector_overflow_is_rejected() {
    assert_rejected(false, "out_of_range", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_OUT, u64::MAX / 256);
        b.post(&[(H, 16, 0), (D, 512, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn unknown_type_is_unsupported() {
    assert_rejected(false, "unknown_type", Some(VIRTIO_BLK_S_UNSUPP), |b, s| {
        header(b.mem, H, 99, 0);
        b.post(&[(H, 16, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn looping_indirect_table_is_rejected() {
    assert_rejected(
        false,
        "unterminated_chain",
        Some(VIRTIO_BLK_S_IOERR),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_IN, 0);
            let table = 0x30_0000;
            b.mem
                .write_obj(desc(H, 16, F_NEXT, 1), GuestAddress(table))
                .unwrap();
            b.mem
                .write_obj(desc(s, 1, F_WRITE | F_NEXT, 0), GuestAddress(table + 16))
                .unwrap();
            b.post(&[(table, 32, F_INDIRECT)])
        },
    );
}

#[test]
fn oversized_indirect_table_is_rejected() {
    assert_rejected(false, "chain_too_long", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
        let table = 0x30_0000;
        let n = 64u16;
        for i in 0..n {
            let d = if i == 0 {
                desc(H, 16, F_NEXT, 1)
            } else if i == n - 1 {
                desc(s, 1, F_WRITE, 0)
            } else {
                desc(D + u64::from(i) * 512, 512, F_NEXT, i + 1)
            };
            b.mem
                .write_obj(d, GuestAddress(table + 16 * u64::from(i)))
                .unwrap();
        }
        b.post(&[(table, 16 * u32::from(n), F_INDIRECT)])
    });
}

fn segment(b: &Bench, at: u64, sector: u64, sectors: u32, flags: u32) {
    let mut seg = [0u8; 16];
    seg[0..8].copy_from_slice(&sector.to_le_bytes());
    seg[8..12].copy_from_slice(&sectors.to_le_bytes());
    seg[12..16].copy_from_slice(&flags.to_le_bytes());
    b.mem.write_slice(&seg, GuestAddress(at)).unwrap();
}

#[test]
fn discard_past_the_end_is_rejected() {
    assert_rejected(false, "out_of_range", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_DISCARD, 0);
        segment(b, D, DISK_BYTES / 512 - 4, 8, 0);
        b.post(&[(H, 16, 0), (D, 16, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn discard_with_unmap_flag_is_unsupported() {
    assert_rejected(
        false,
        "bad_segment_flags",
        Some(VIRTIO_BLK_S_UNSUPP),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_DISCARD, 0);
            segment(b, D, 0, 8, SEGMENT_FLAG_UNMAP);
            b.post(&[(H, 16, 0), (D, 16, 0), (s, 1, F_WRITE)])
        },
    );
}

#[test]
fn write_zeroes_with_unknown_flag_is_unsupported() {
    assert_rejected(
        false,
        "bad_segment_flags",
        Some(VIRTIO_BLK_S_UNSUPP),
        |b, s| {
            header(b.mem, H, VIRTIO_BLK_T_WRITE_ZEROES, 0);
            segment(b, D, 0, 8, 0x4);
            b.post(&[(H, 16, 0), (D, 16, 0), (s, 1, F_WRITE)])
        },
    );
}

#[test]
fn more_segments_than_advertised_are_rejected() {
    assert_rejected(false, "segment_limit", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_DISCARD, 0);
        segment(b, D, 0, 8, 0);
        segment(b, D + 16, 8, 8, 0);
        b.post(&[(H, 16, 0), (D, 32, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn segment_list_of_bad_length_is_rejected() {
    assert_rejected(false, "bad_length", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_WRITE_ZEROES, 0);
        b.post(&[(H, 16, 0), (D, 12, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn write_to_read_only_disk_is_rejected() {
    assert_rejected(true, "read_only", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_OUT, 0);
        b.post(&[(H, 16, 0), (D, 512, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn discard_on_read_only_disk_is_rejected() {
    assert_rejected(true, "read_only", Some(VIRTIO_BLK_S_IOERR), |b, s| {
        header(b.mem, H, VIRTIO_BLK_T_DISCARD, 0);
        segment(b, D, 0, 8, 0);
        b.post(&[(H, 16, 0), (D, 16, 0), (s, 1, F_WRITE)])
    });
}

#[test]
fn a_burst_of_bad_chains_never_blocks_good_ones() {
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    // Fill most of the queue with garbage of every kind, interleaved with good writes.
    let mut expect_ok = Vec::new();
    for i in 0..6u64 {
        header(&mem, H + i * 0x100, 1000 + i as u32, 0);
        b.post(&[(H + i * 0x100, 16, 0), (0x1f_0000 + i, 1, F_WRITE)]);
        let h = 0x40_0000 + i * 0x1_0000;
        header(&mem, h, VIRTIO_BLK_T_OUT, i * 8);
        mem.write_slice(&[i as u8 + 1; 4096], GuestAddress(h + 0x1000))
            .unwrap();
        let head = b.post(&[(h, 16, 0), (h + 0x1000, 4096, 0), (h + 0x3000, 1, F_WRITE)]);
        expect_ok.push((head, h + 0x3000));
    }
    let used = b.run();
    assert_eq!(used.len(), 12);
    for (head, status) in expect_ok {
        assert!(used.contains(&(u32::from(head), 1)));
        assert_eq!(b.status(status), VIRTIO_BLK_S_OK);
    }
    assert_eq!(
        d.ctx.counters.rejected[crate::request::Rejection::UnknownType(0).class()]
            .load(Ordering::Relaxed),
        6
    );
    let file = std::fs::read(&d.path).unwrap();
    for i in 0..6usize {
        assert!(
            file[i * 4096..(i + 1) * 4096]
                .iter()
                .all(|&x| x == i as u8 + 1)
        );
    }
}

#[test]
fn flush_discard_and_write_zeroes_take_a_path_through_the_dispatcher() {
    // Before, these three went straight to the primary descriptor: no window, no path
    // selection, no failover (and a blocking ioctl on block devices).
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    let completed = || d.ctx.dispatcher.path_snapshots()[0].stats.completed;
    b.good_roundtrip(0, 0x77);
    assert_eq!(completed(), 2);
    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    b.post(&[(H, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    b.run();
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    assert_eq!(completed(), 3);
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    mem.write_slice(&seg, GuestAddress(D)).unwrap();
    for t in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        header(&mem, H, t, 0);
        b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
        b.run();
        assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    }
    assert_eq!(completed(), 5);
}

#[test]
fn a_head_offered_again_while_in_flight_is_ignored() {
    // A guest that puts a head in the avail ring twice must not get two used entries for it,
    // nor make the broker hold more requests than the queue has heads.
    let d = disk(false);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_OUT, 8);
    let w = b.post(&[(H, 16, 0), (D, 4096, 0), (0x1f_0000, 1, F_WRITE)]);
    // Offer head `w` three more times before the first is answered.
    let avail = b.mock.avail_addr();
    for _ in 0..3 {
        let idx: u16 = mem.read_obj(avail.unchecked_add(2)).unwrap();
        let at = avail.unchecked_add(4 + 2 * u64::from(idx % QUEUE_SIZE));
        mem.write_obj(w, at).unwrap();
        mem.write_obj(idx.wrapping_add(1), avail.unchecked_add(2))
            .unwrap();
    }
    b.worker.process_available(&mut b.queue, &b.atomic).unwrap();
    assert_eq!(b.worker.in_flight(), 1);
    let used = b.run();
    assert_eq!(used, vec![(u32::from(w), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    b.good_roundtrip(16, 0x55);
}

/// A loop device over a file; detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

#[test]
fn discard_and_write_zeroes_on_a_block_device_run_on_io_uring() {
    // SAFETY: getuid has no arguments and cannot fail.
    if unsafe { libc::getuid() } != 0 {
        // CI runs as root; a developer's unprivileged run cannot make a loop device.
        eprintln!("SKIPPED: loop devices need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("backing.img");
    std::fs::write(&backing, vec![0x11u8; DISK_BYTES as usize]).unwrap();
    let out = std::process::Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(out.status.success(), "losetup");
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    let d = disk_on(dir, std::path::PathBuf::from(&dev.0), false);
    assert!(d.ctx.lun.block_device);
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    b.good_roundtrip(0, 0x77);
    b.good_roundtrip(64, 0x78);
    let mut seg = [0u8; 16];
    seg[8..12].copy_from_slice(&8u32.to_le_bytes());
    for (t, sector) in [
        (VIRTIO_BLK_T_DISCARD, 0u64),
        (VIRTIO_BLK_T_WRITE_ZEROES, 64),
    ] {
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&seg, GuestAddress(D)).unwrap();
        header(&mem, H, t, 0);
        b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
        b.run();
        assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK, "type {t}");
    }
    // Write-zeroes must zero; a discard on a loop device punches the backing file (zeroes).
    let mut block = vec![0u8; 4096];
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(&dev.0).unwrap();
    f.read_at(&mut block, 64 * 512).unwrap();
    assert!(block.iter().all(|&x| x == 0), "write-zeroes left data");
    // This kernel takes the block layer's io_uring discard (6.12+), and loop devices pass a
    // discard to the backing file as a hole.
    f.read_at(&mut block, 0).unwrap();
    assert!(
        block.iter().all(|&x| x == 0),
        "the discard did not reach the device"
    );
    let c = d.ctx.counters.snapshot();
    assert_eq!((c.discards, c.write_zeroes, c.io_errors), (1, 1, 0));
}

/// An NBD LUN on a real nbdkit serving `image` (the `file` plugin, so the data outlives a
/// server restart) over a unix socket, with `hold_s` as the multipath hold; or `None` when
/// nbdkit is missing here (a failure under WEIR_REQUIRE_KVM=1, as CI sets).
fn nbd_disk(
    filters: &[&str],
    params: &[&str],
    hold_s: f64,
) -> Option<(Disk, crate::nbd::nbdkit::Nbdkit)> {
    let policy = weir_sched::path::MultipathPolicy {
        hold_s,
        ..Default::default()
    };
    nbd_disk_with(filters, params, policy)
}

/// The same with the LUN's multipath policy given whole.
fn nbd_disk_with(
    filters: &[&str],
    params: &[&str],
    policy: weir_sched::path::MultipathPolicy,
) -> Option<(Disk, crate::nbd::nbdkit::Nbdkit)> {
    if let Some(why) = crate::nbd::nbdkit::missing() {
        let required = matches!(
            std::env::var("WEIR_REQUIRE_KVM").as_deref(),
            Ok("1" | "true" | "yes")
        );
        assert!(!required, "nbdkit is required here: {why}");
        eprintln!("SKIPPED: {why}");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lun.img");
    std::fs::write(&path, vec![0u8; DISK_BYTES as usize]).unwrap();
    let socket = dir.path().join("nbd.sock");
    let file = format!("file={}", path.display());
    let mut args: Vec<&str> = filters.to_vec();
    args.extend(["file", file.as_str()]);
    args.extend(params);
    let server = crate::nbd::nbdkit::Nbdkit::unix(&socket, &args).unwrap();
    let uri = format!("nbd+unix:///?socket={}", socket.display());
    let mut cfg = LunConfig::file("lun0", std::path::Path::new(&uri), None, false);
    cfg.backend = None;
    cfg.multipath = policy;
    assert_eq!(cfg.backend(), crate::config::LunBackend::Nbd);
    let lun = Arc::new(LunStore::open(&cfg).unwrap());
    assert_eq!(lun.size_bytes, DISK_BYTES);
    let routes = vec![crate::dispatch::PathRoute {
        name: "path0".into(),
        port: None,
        group: weir_sched::path::PathGroup::Optimized,
        max_in_flight: u32::MAX,
    }];
    let base = disk_on(dir, path, false);
    let dispatcher = LunDispatcher::new(
        "lun0",
        vec![TenantPolicy::default()],
        SchedulerKind::Mclock,
        DepthPolicy::Fixed { depth: 1024 },
        None,
    )
    .with_paths(routes, cfg.multipath.clone(), Some(lun.clone()));
    let ctx = Arc::new(DiskContext {
        name: "nbd-test".into(),
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
    Some((Disk { ctx, ..base }, server))
}

/// The path checker and dispatcher pump the broker's scheduler thread runs, on a thread of the
/// test's.
struct Checker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Checker {
    fn start(d: &Disk) -> Checker {
        let dispatcher = d.ctx.dispatcher.clone();
        let clock = d.ctx.clock;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                dispatcher.check_paths(clock.now());
                dispatcher.pump(clock.now(), None);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Checker { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// Posts `n` 4 KiB writes (sector `8 i`, byte `first + i`) at once, runs them, asserts all OK.
fn pipelined_writes(b: &mut Bench, n: u64, first: u8) {
    let status = post_writes(b, n, first);
    assert_eq!(b.run().len(), n as usize, "every write answered once");
    for s in status {
        assert_eq!(b.status(s), VIRTIO_BLK_S_OK);
    }
}

/// Posts those writes without running them; returns where each one's status byte lands.
fn post_writes(b: &mut Bench, n: u64, first: u8) -> Vec<u64> {
    (0..n)
        .map(|i| {
            let (h, d, s) = (
                0x40_0000 + i * 0x1_0000,
                0x80_0000 + i * 0x1_0000,
                0xc0_0000 + i * 16,
            );
            header(b.mem, h, VIRTIO_BLK_T_OUT, 8 * i);
            b.mem
                .write_slice(&[first.wrapping_add(i as u8); 4096], GuestAddress(d))
                .unwrap();
            b.mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
            b.post(&[(h, 16, 0), (d, 4096, 0), (s, 1, F_WRITE)]);
            s
        })
        .collect()
}

#[test]
fn an_nbd_lun_reads_writes_flushes_discards_and_zeroes_through_nbdkit() {
    let Some((d, server)) = nbd_disk(&[], &[], 30.0) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    b.good_roundtrip(8, 0xa7);
    // Eight writes in flight at once on one connection (pipelined, matched by handle).
    pipelined_writes(&mut b, 8, 0x10);
    // The server holds them: read through a connection of its own.
    let mut c = crate::nbd::BlockingClient::connect(&server.uri, Duration::from_secs(5)).unwrap();
    for i in 0..8u64 {
        let mut back = vec![0u8; 4096];
        c.read(i * 4096, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0x10 + i as u8), "block {i}");
    }
    // And reads come back into guest memory, many at once (a fresh queue: the mock's
    // descriptor table holds 32 entries).
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

    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_FLUSH, 0);
    let f = b.post(&[(H, 16, 0), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(f), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);

    // Discard sectors 0..8 and zero 8..16: both read back as zeroes from the server.
    for (kind, sector) in [(VIRTIO_BLK_T_DISCARD, 0u64), (VIRTIO_BLK_T_WRITE_ZEROES, 8)] {
        header(&mem, H, kind, 0);
        let mut seg = [0u8; 16];
        seg[0..8].copy_from_slice(&sector.to_le_bytes());
        seg[8..12].copy_from_slice(&8u32.to_le_bytes());
        mem.write_slice(&seg, GuestAddress(D)).unwrap();
        let h = b.post(&[(H, 16, 0), (D, 16, 0), (0x1f_0000, 1, F_WRITE)]);
        assert_eq!(b.run(), vec![(u32::from(h), 1)]);
        assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK, "type {kind}");
        let mut back = vec![0xffu8; 4096];
        c.read(sector * 512, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0), "type {kind}: zeroes");
    }
    let counters = d.ctx.counters.snapshot();
    assert_eq!(counters.io_errors, 0);
    assert_eq!((counters.writes, counters.reads), (9, 9));
    c.disconnect();
}

#[test]
fn the_servers_error_is_the_requests_and_the_connection_stays() {
    // nbdkit's error filter answers every read with EIO (the connection is fine).
    let Some((d, _server)) = nbd_disk(&["--filter=error"], &["error-pread-rate=1"], 30.0) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_IN, 0);
    let r = b.post(&[(H, 16, 0), (D, 4096, F_WRITE), (0x1f_0000, 1, F_WRITE)]);
    assert_eq!(b.run(), vec![(u32::from(r), 1)]);
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_IOERR);
    assert_eq!(d.ctx.counters.snapshot().io_errors, 1);
    // The path did not fail: writes on the same connection go on.
    pipelined_writes(&mut b, 4, 0x50);
    let paths = d.ctx.dispatcher.path_snapshots();
    assert_eq!(
        paths[0].state,
        weir_sched::path::PathState::Active,
        "{paths:?}"
    );
}

#[test]
fn a_lost_server_holds_requests_and_a_restarted_one_takes_them() {
    let Some((d, mut server)) = nbd_disk(&[], &[], 20.0) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    pipelined_writes(&mut b, 2, 0x20);
    server.kill();
    // The checker the scheduler thread runs, here on a thread of the test's.
    let checker = Checker::start(&d);
    // Written while the server is gone: the writes wait, and land when it is back. (The
    // server is restarted from this thread: nbdkit dies with the thread that started it.)
    let mut b = Bench::new(&mem, &d);
    let status = post_writes(&mut b, 3, 0x60);
    let early = b.run_live(3, Duration::from_millis(1500));
    assert!(
        early.is_empty(),
        "nothing answered while the server is down: {early:?}"
    );
    server.restart().unwrap();
    let restarted = std::time::Instant::now();
    let late = b.run_live(3, Duration::from_secs(15));
    let waited = restarted.elapsed();
    checker.stop();
    assert_eq!(late.len(), 3, "all answered once the server is back");
    for st in status {
        assert_eq!(b.status(st), VIRTIO_BLK_S_OK);
    }
    eprintln!("answered {waited:?} after the restart");
    let mut c = crate::nbd::BlockingClient::connect(&server.uri, Duration::from_secs(5)).unwrap();
    for i in 0..3u64 {
        let mut back = vec![0u8; 4096];
        c.read(i * 4096, &mut back).unwrap();
        assert!(back.iter().all(|&x| x == 0x60 + i as u8), "block {i}");
    }
    let counters = d.ctx.counters.snapshot();
    assert_eq!(counters.io_errors, 0, "the guest saw no error");
    assert!(counters.path_retries >= 1, "{counters:?}");
}

#[test]
fn a_hung_server_times_out_and_its_requests_wait_for_it() {
    let policy = weir_sched::path::MultipathPolicy {
        hold_s: 20.0,
        io_timeout_s: 0.5,
        checker_interval_s: 0.2,
        failback_s: 0.0,
        ..Default::default()
    };
    let Some((d, server)) = nbd_disk_with(&[], &[], policy) else {
        return;
    };
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    pipelined_writes(&mut b, 1, 0x30);
    // The server stops answering (SIGSTOP: its socket still accepts, nothing comes back).
    let pid = server.pid() as i32;
    // SAFETY: kill(2) with a signal number; the pid is our own child's.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let checker = Checker::start(&d);
    let mut b = Bench::new(&mem, &d);
    header(&mem, H, VIRTIO_BLK_T_OUT, 64);
    mem.write_slice(&[0x44; 4096], GuestAddress(D)).unwrap();
    let w = b.post(&[(H, 16, 0), (D, 4096, 0), (0x1f_0000, 1, F_WRITE)]);
    let early = b.run_live(1, Duration::from_millis(2000));
    assert!(
        early.is_empty(),
        "no answer from a stopped server: {early:?}"
    );
    let failed = d.ctx.dispatcher.path_snapshots()[0].state;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let late = b.run_live(1, Duration::from_secs(10));
    checker.stop();
    assert_eq!(
        failed,
        weir_sched::path::PathState::Failed,
        "the timeout failed the path"
    );
    assert_eq!(
        late,
        vec![(u32::from(w), 1)],
        "answered once the server runs again"
    );
    assert_eq!(b.status(0x1f_0000), VIRTIO_BLK_S_OK);
    let counters = d.ctx.counters.snapshot();
    assert_eq!(counters.io_errors, 0);
    assert!(counters.path_retries >= 1, "{counters:?}");
    let mut c = crate::nbd::BlockingClient::connect(&server.uri, Duration::from_secs(5)).unwrap();
    let mut back = vec![0u8; 4096];
    c.read(64 * 512, &mut back).unwrap();
    assert!(back.iter().all(|&x| x == 0x44));
}

#[test]
fn small_and_large_nbd_reads_in_flight_together_land_byte_exact() {
    let Some((d, server)) = nbd_disk(&[], &[], 30.0) else {
        return;
    };
    // The export holds a pattern no two offsets share within 251 bytes.
    let pattern: Vec<u8> = (0..DISK_BYTES).map(|i| (i % 251) as u8).collect();
    let mut c = crate::nbd::BlockingClient::connect(&server.uri, Duration::from_secs(5)).unwrap();
    c.write(0, &pattern).unwrap();
    let mem = memory();
    let mut b = Bench::new(&mem, &d);
    // Four 4 KiB reads, a 192 KiB read (received straight into guest memory past its first
    // buffered bytes), and a 512-byte read at an odd sector: all at once.
    let reads: [(u64, u32); 6] = [
        (1, 4096),
        (9, 4096),
        (100, 192 << 10),
        (17, 4096),
        (33, 512),
        (1001, 4096),
    ];
    for (i, &(sector, len)) in reads.iter().enumerate() {
        let i = i as u64;
        let (h, dd, s) = (
            0x40_0000 + i * 0x1_0000,
            0x100_0000 + i * 0x10_0000,
            0xc0_0000 + i * 16,
        );
        header(&mem, h, VIRTIO_BLK_T_IN, sector);
        b.post(&[(h, 16, 0), (dd, len, F_WRITE), (s, 1, F_WRITE)]);
    }
    assert_eq!(b.run().len(), reads.len());
    for (i, &(sector, len)) in reads.iter().enumerate() {
        let dd = 0x100_0000 + i as u64 * 0x10_0000;
        let mut back = vec![0u8; len as usize];
        mem.read_slice(&mut back, GuestAddress(dd)).unwrap();
        let at = (sector * 512) as usize;
        assert!(
            back == pattern[at..at + len as usize],
            "read {i} at sector {sector}"
        );
        assert_eq!(b.status(0xc0_0000 + i as u64 * 16), VIRTIO_BLK_S_OK);
    }
}

#[path = "worker_iscsi_tests.rs"]
mod iscsi;
