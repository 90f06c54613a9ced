//! One virtqueue's worker: pops chains, validates them, runs valid I/O on io_uring straight
//! into guest memory, and answers every chain exactly once.
//!
//! Each queue has its own io_uring (submission and completion on the queue's thread, no locks
//! on the data path). Reads and writes become `readv`/`writev` whose iovecs point into guest
//! memory: no bounce copy. FLUSH is `fdatasync`; DISCARD punches a hole and WRITE_ZEROES zeroes
//! a range (`fallocate`), or the block-device ioctls. A short transfer is continued where it
//! stopped; an O_DIRECT request the store refuses as misaligned (EINVAL) is retried through the
//! page cache. The guest memory mapping an in-flight request points into is kept alive by the
//! request itself until its completion has been reaped.

use std::collections::VecDeque;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend,
    GuestMemoryLoadGuard, GuestMemoryMmap,
};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

use crate::config::OnFull;
use crate::counters::{DiskCounters, RateLimitedLog};
use crate::dispatch::{BrokerClock, Inbox, InboxEvent, LunDispatcher};
use crate::inflight::QueueInflight;
use crate::lun::LunStore;
use crate::request::{
    BlkRequest, DiskLimits, GuestRange, ID_BYTES, ParsedChain, RequestKind, SECTOR_SHIFT,
    SECTOR_SIZE, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, parse_chain, parse_descriptors,
};
use crate::thin::{Reservation, ThinPool};

mod iscsi_io;
mod nbd_io;
mod remote;

pub type GuestMem = GuestMemoryMmap<()>;

/// The longest a disconnecting guest's (or a stopping broker's) in-flight requests are
/// waited for.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
pub type GuestMemAtomic = GuestMemoryAtomic<GuestMem>;

/// What all queues of one disk share.
#[derive(Debug)]
pub struct DiskContext {
    /// For log lines: the disk's socket or tenant.
    pub name: String,
    pub lun: Arc<LunStore>,
    pub limits: DiskLimits,
    /// VIRTIO_BLK_T_GET_ID answer, NUL-padded.
    pub serial: [u8; ID_BYTES],
    pub counters: Arc<DiskCounters>,
    pub bad_requests: RateLimitedLog,
    /// The LUN's dispatcher, shared with the other disks on the LUN; reads and writes go
    /// through it.
    pub dispatcher: Arc<LunDispatcher>,
    /// This disk's tenant index in the dispatcher.
    pub tenant: usize,
    pub clock: BrokerClock,
    /// The thin pool the LUN belongs to, and the LUN's index in it.
    pub thin: Option<(Arc<ThinPool>, usize)>,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot set up io_uring: {0}")]
    Uring(#[source] std::io::Error),
    #[error("io_uring submit failed: {0}")]
    Submit(#[source] std::io::Error),
}

enum Op {
    Rw {
        write: bool,
        offset: u64,
        ranges: Vec<GuestRange>,
        total: u64,
        done: u64,
        direct: bool,
        /// The iovecs of the SQE in flight; must outlive it.
        iovecs: Vec<libc::iovec>,
    },
    /// FLUSH, DISCARD or WRITE_ZEROES: one SQE per range (one for a flush); completes when
    /// every SQE has. Described here, submitted when the dispatcher grants it, on the path it
    /// chose.
    Simple {
        what: SimpleOp,
        pending: u32,
        /// The first error among this attempt's SQEs.
        error: Option<String>,
    },
}

enum SimpleOp {
    Flush,
    Ranges {
        zero: bool,
        ranges: Vec<crate::request::SectorRange>,
    },
}

struct Inflight {
    head: u16,
    status_addr: GuestAddress,
    kind: RequestKind,
    used_len_ok: u32,
    bytes: u64,
    status: u8,
    op: Op,
    mem: GuestMemoryLoadGuard<GuestMem>,
    submitted: Instant,
    /// When the I/O was handed to the backing store (the grant, for dispatched requests).
    started: Option<Instant>,
    /// Set for requests that go through the LUN dispatcher.
    sched: Option<Scheduled>,
    /// Thin LUNs: chunks this write newly allocated (given back if it fails for good), and
    /// the byte ranges a discard or write-zeroes punched (freed when it succeeds).
    reserved: Vec<u64>,
    punched: Vec<(u64, u64)>,
}

/// A dispatched request's progress.
#[derive(Debug, Clone, Default)]
struct Scheduled {
    /// `(epoch, first dispatch time)` once the dispatcher granted it.
    granted: Option<(u64, f64)>,
    /// The path of the current attempt and when it left.
    path: usize,
    attempt_at: f64,
    /// When a path failed this request before, if one did.
    failed_at: Option<f64>,
    io_done: bool,
    model_done: bool,
    /// When the emulated array finished it (broker clock): the storage's own answer time.
    model_at: Option<f64>,
    /// The model answered with a transport error (or the attempt timed out).
    model_failed: bool,
    /// The I/O itself failed (on a multipath LUN this fails the path, not the request).
    io_failed: Option<String>,
    /// The filesystem had no space for this write (thin LUN): hold it, do not answer.
    no_space: bool,
    /// The target answered TASK SET FULL or BUSY: offer it again, not an error.
    congested: bool,
}

impl Inflight {
    fn new(
        parsed_head: u16,
        status_addr: GuestAddress,
        kind: RequestKind,
        used_len_ok: u32,
        bytes: u64,
        op: Op,
        mem: GuestMemoryLoadGuard<GuestMem>,
    ) -> Self {
        Inflight {
            head: parsed_head,
            status_addr,
            kind,
            used_len_ok,
            bytes,
            status: VIRTIO_BLK_S_OK,
            op,
            mem,
            submitted: Instant::now(),
            started: None,
            sched: None,
            reserved: Vec::new(),
            punched: Vec::new(),
        }
    }
}

// SAFETY: the raw iovec pointers in `Op::Rw` point into guest memory kept mapped by `mem`,
// which travels with them; an `Inflight` is only ever touched by the one worker that owns it.
unsafe impl Send for Inflight {}

/// The worker for one virtqueue.
pub struct QueueWorker {
    ctx: Arc<DiskContext>,
    ring: IoUring,
    slots: Vec<Option<Inflight>>,
    free: Vec<usize>,
    completion_event: EventFd,
    inbox: Arc<Inbox>,
    /// The guest is gone: finish what is in flight without waiting for the array model.
    draining: bool,
    /// Writes waiting for thin-pool space, oldest first, with when they were first held.
    held: VecDeque<(usize, Instant)>,
    /// Granted requests io_uring refused to take, with why: answered IOERR at the next
    /// chance (nothing will complete them).
    unsubmitted: Vec<(usize, String)>,
    /// Which descriptor heads are in flight: a guest that offers one twice is refused the
    /// second time, so slots never outnumber the queue's size.
    heads_in_flight: Vec<bool>,
    /// The shared inflight region's part for this queue, when the frontend negotiated one:
    /// every taken head is marked there until its used element is published.
    inflight: Option<QueueInflight>,
    /// Heads a previous broker had in flight, to take before the avail ring (oldest first).
    resubmit: Vec<u16>,
    /// How many queued SQEs make the next `io_uring_enter` in this round (see `push`).
    next_submit: usize,
    /// Completions taken from the ring, reused between wake-ups.
    cqes: Vec<(u64, i32)>,
    /// iovec arrays of finished requests, for the next ones.
    spare_iovecs: SpareIovecs,
    /// An NBD LUN's connections (one per path), driven on `ring`.
    nbd: Option<nbd_io::NbdPaths>,
    /// An iSCSI LUN's sessions (one per path), driven on `ring`.
    iscsi: Option<iscsi_io::IscsiPaths>,
}

/// Emptied iovec arrays kept for their capacity.
#[derive(Default)]
struct SpareIovecs(Vec<Vec<libc::iovec>>);

// SAFETY: every array in here is empty (cleared before it is kept): no pointer into guest
// memory is held, only the allocation.
unsafe impl Send for SpareIovecs {}

/// At most this many spare iovec arrays are kept (a queue's worth).
const SPARE_IOVECS: usize = 1024;

/// The largest batch of SQEs held back before the kernel sees them. Measured with the probe at
/// QD32 on this machine's disk: handing all of a round's requests over in one system call at
/// the end left the device idle while the thread parsed them (65 k IOPS); 1, 2, 4, 8, 8, ...
/// gave 78 k, as did one call per request (with four times the system calls).
const SUBMIT_BATCH_MAX: usize = 8;

impl QueueWorker {
    pub fn new(ctx: Arc<DiskContext>, queue_size: u16) -> Result<Self, WorkerError> {
        let entries = u32::from(queue_size).next_power_of_two().max(8);
        // COOP_TASKRUN: a completion does not interrupt this thread with an IPI while it runs;
        // the kernel posts it at the thread's next system call (it makes one per wake-up at
        // least), and still wakes the thread when it sleeps. Only this queue's threads touch
        // the ring, under the worker's lock. Measured A/B against the default (probe, 4 KiB,
        // 7 rounds, round-by-round ratios): randread +3 % (QD32) and +9 % (QD128), CPU per I/O
        // 0.93-0.96x; randwrite 0.99-1.09x (two runs).
        let ring = IoUring::builder()
            .setup_coop_taskrun()
            .build(entries)
            .map_err(WorkerError::Uring)?;
        let completion_event = EventFd::new(EFD_NONBLOCK).map_err(WorkerError::Uring)?;
        ring.submitter()
            .register_eventfd(completion_event.as_raw_fd())
            .map_err(WorkerError::Uring)?;
        let inbox = Arc::new(Inbox::new().map_err(WorkerError::Uring)?);
        Ok(QueueWorker {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            completion_event,
            inbox,
            draining: false,
            held: VecDeque::new(),
            unsubmitted: Vec::new(),
            heads_in_flight: vec![false; usize::from(queue_size)],
            inflight: None,
            resubmit: Vec::new(),
            next_submit: 1,
            cqes: Vec::new(),
            spare_iovecs: SpareIovecs::default(),
            nbd: ctx
                .lun
                .nbd()
                .map(|e| nbd_io::NbdPaths::new(e, ctx.lun.size_bytes)),
            iscsi: ctx.lun.iscsi().map(iscsi_io::IscsiPaths::new),
            ctx,
        })
    }

    /// Becomes readable when io_uring has completions to reap.
    pub fn completion_fd(&self) -> i32 {
        self.completion_event.as_raw_fd()
    }

    /// Becomes readable when the dispatcher granted a request or the array model finished one.
    pub fn inbox_fd(&self) -> i32 {
        self.inbox.fd()
    }

    pub fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Tracks this queue's requests in `inflight` from now on, and takes `resubmit` (the heads
    /// a previous broker left in flight, oldest first) before anything new in the avail ring.
    pub fn track_inflight(&mut self, inflight: QueueInflight, resubmit: Vec<u16>) {
        self.inflight = Some(inflight);
        self.resubmit = resubmit;
    }

    /// Pops and handles every available chain. Returns true when entries were added to the
    /// used ring (rejections and synchronous requests answer at once).
    pub fn process_available(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemAtomic,
    ) -> Result<bool, WorkerError> {
        let guard = mem.memory();
        let mut used = false;
        if !self.resubmit.is_empty() {
            let table = GuestAddress(queue.desc_table());
            let size = queue.size();
            for head in std::mem::take(&mut self.resubmit) {
                if self
                    .heads_in_flight
                    .get(usize::from(head))
                    .is_none_or(|busy| *busy)
                {
                    continue;
                }
                let chain = crate::request::ChainAt::new(&*guard, table, size, head);
                let parsed = parse_descriptors(head, chain, &*guard, &self.ctx.limits);
                self.ctx
                    .counters
                    .resubmitted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                used |= self.dispatch(parsed, queue, &guard)?;
            }
        }
        while let Some(chain) = queue.pop_descriptor_chain(&*guard) {
            let head = chain.head_index();
            if self
                .heads_in_flight
                .get(usize::from(head))
                .is_none_or(|busy| *busy)
            {
                // The guest offered a head it has not got back (or one beyond the queue):
                // answering it would put one head in the used ring twice. Its driver is
                // broken; drop the chain, say so, and keep the queue going.
                let name = &self.ctx.name;
                self.ctx.bad_requests.warn(|| {
                    format!(
                        "disk {name}: the guest offered head {head} while it is in flight; ignored"
                    )
                });
                continue;
            }
            if let Some(inflight) = &mut self.inflight {
                inflight.begin(head);
            }
            let parsed = parse_chain(chain, &*guard, &self.ctx.limits);
            used |= self.dispatch(parsed, queue, &guard)?;
        }
        used |= self.answer_unsubmitted(queue);
        self.ctx
            .dispatcher
            .pump(self.ctx.clock.now(), Some(&self.inbox));
        used |= self.drain_inbox(queue)?;
        self.flush_submissions()?;
        Ok(used)
    }

    fn dispatch(
        &mut self,
        parsed: ParsedChain,
        queue: &mut Queue,
        guard: &GuestMemoryLoadGuard<GuestMem>,
    ) -> Result<bool, WorkerError> {
        let head = parsed.head;
        // Both lengths before the request moves out of `parsed` (no copy of its ranges).
        let used_len_ok = parsed.used_len(VIRTIO_BLK_S_OK);
        let used_len_err = parsed.used_len(VIRTIO_BLK_S_IOERR);
        let status_addr = parsed.status_addr;
        let request = match parsed.outcome {
            Err(rejection) => {
                self.ctx.counters.rejected[rejection.class()]
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = &self.ctx.name;
                self.ctx
                    .bad_requests
                    .warn(|| format!("disk {name}: rejected request (head {head}): {rejection}"));
                let status = rejection.status();
                if let Some(addr) = status_addr {
                    let _ = guard.write_obj(status, addr);
                }
                // A rejected request wrote no data: the status byte alone, whatever status.
                self.add_used(queue, guard, head, used_len_err);
                return Ok(true);
            }
            Ok(req) => req,
        };
        let Some(status_addr) = status_addr else {
            return Ok(false);
        };
        let kind = request.kind();
        match request {
            BlkRequest::GetId { buf, .. } => {
                let mut written = 0usize;
                for r in buf {
                    if written >= ID_BYTES {
                        break;
                    }
                    let n = (r.len as usize).min(ID_BYTES - written);
                    let _ = guard.write_slice(&self.ctx.serial[written..written + n], r.addr);
                    written += n;
                }
                self.answer_now(
                    queue,
                    guard,
                    head,
                    status_addr,
                    VIRTIO_BLK_S_OK,
                    kind,
                    used_len_ok,
                );
                Ok(true)
            }
            BlkRequest::Read { sector, data, len } | BlkRequest::Write { sector, data, len } => {
                let write = kind == RequestKind::Write;
                if len == 0 {
                    self.answer_now(
                        queue,
                        guard,
                        head,
                        status_addr,
                        VIRTIO_BLK_S_OK,
                        kind,
                        used_len_ok,
                    );
                    return Ok(true);
                }
                let mut inflight = Inflight::new(
                    head,
                    status_addr,
                    kind,
                    used_len_ok,
                    len,
                    Op::Rw {
                        write,
                        offset: sector << SECTOR_SHIFT,
                        ranges: data,
                        total: len,
                        done: 0,
                        direct: true,
                        iovecs: self.spare_iovecs.0.pop().unwrap_or_default(),
                    },
                    guard.clone(),
                );
                inflight.sched = Some(Scheduled::default());
                let slot = self.alloc(inflight);
                if write {
                    if let Some((pool, lun)) = &self.ctx.thin {
                        match pool.reserve(*lun, sector << SECTOR_SHIFT, len) {
                            Reservation::Granted(chunks) => {
                                if let Some(Some(i)) = self.slots.get_mut(slot) {
                                    i.reserved = chunks;
                                }
                            }
                            Reservation::Full => return Ok(self.hold_for_space(slot, queue)),
                        }
                    }
                }
                self.enqueue(slot);
                Ok(false)
            }
            BlkRequest::Flush => {
                let what = SimpleOp::Flush;
                self.enqueue_simple(head, status_addr, kind, used_len_ok, what, guard);
                Ok(false)
            }
            BlkRequest::Discard { ranges } | BlkRequest::WriteZeroes { ranges } => {
                let zero = kind == RequestKind::WriteZeroes;
                let what = SimpleOp::Ranges { zero, ranges };
                self.enqueue_simple(head, status_addr, kind, used_len_ok, what, guard);
                Ok(false)
            }
        }
    }

    /// A FLUSH, DISCARD or WRITE_ZEROES goes through the dispatcher like a read or write: it
    /// takes a place in the LUN's window (a cache flush is array work too), the path the
    /// selector picks, failover when that path fails.
    fn enqueue_simple(
        &mut self,
        head: u16,
        status_addr: GuestAddress,
        kind: RequestKind,
        used_len_ok: u32,
        what: SimpleOp,
        guard: &GuestMemoryLoadGuard<GuestMem>,
    ) {
        let punched = match (&what, self.ctx.thin.is_some()) {
            (SimpleOp::Ranges { ranges, .. }, true) => ranges
                .iter()
                .map(|r| (r.sector * SECTOR_SIZE, u64::from(r.sectors) * SECTOR_SIZE))
                .collect(),
            _ => Vec::new(),
        };
        let mut inflight = Inflight::new(
            head,
            status_addr,
            kind,
            used_len_ok,
            0,
            Op::Simple {
                what,
                pending: 0,
                error: None,
            },
            guard.clone(),
        );
        inflight.punched = punched;
        inflight.sched = Some(Scheduled::default());
        let slot = self.alloc(inflight);
        self.enqueue(slot);
    }

    /// Answers a request that needs no I/O (or finished synchronously) on the spot.
    #[allow(clippy::too_many_arguments)]
    fn answer_now(
        &self,
        queue: &mut Queue,
        guard: &GuestMem,
        head: u16,
        status_addr: GuestAddress,
        status: u8,
        kind: RequestKind,
        used_len: u32,
    ) {
        let _ = guard.write_obj(status, status_addr);
        if status == VIRTIO_BLK_S_OK {
            self.ctx.counters.completed(kind, 0);
        }
        self.add_used(queue, guard, head, used_len);
    }

    fn alloc(&mut self, mut inflight: Inflight) -> usize {
        if let Some(busy) = self.heads_in_flight.get_mut(usize::from(inflight.head)) {
            *busy = true;
        }
        if inflight.sched.is_none() {
            inflight.started = Some(inflight.submitted);
        }
        self.ctx.counters.request_taken();
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(inflight);
                i
            }
            None => {
                self.slots.push(Some(inflight));
                self.slots.len() - 1
            }
        }
    }

    /// Queues one SQE, handing full submission queues to the kernel. An error here is the
    /// request's (the caller answers it IOERR), never the queue's.
    fn push(&mut self, sqe: &squeue::Entry) -> std::io::Result<()> {
        loop {
            // SAFETY: every buffer an SQE points at (iovec arrays in `Op::Rw`, guest memory
            // kept mapped by the request's memory guard) lives in `self.slots` until the
            // completion is reaped.
            let pushed = unsafe { self.ring.submission().push(sqe) };
            if pushed.is_ok() {
                // Pipelined submission: the first request of a round goes to the kernel at
                // once, then batches of 2, 4, 8, 8, ...: the device starts on the first while
                // this thread parses the rest, and the system calls stay few.
                // This SQE is queued whatever the early submit does: an error here must not
                // reach the caller (it would answer a request io_uring still holds). The SQEs
                // stay in the ring and go with the round's final flush, which reports.
                if self.ring.submission().len() >= self.next_submit {
                    let _ = self.ring.submit();
                    self.next_submit = (self.next_submit * 2).min(SUBMIT_BATCH_MAX);
                }
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    /// Starts (or restarts) the I/O of a granted request.
    fn submit(&mut self, slot: usize) {
        if self.nbd.is_some() {
            self.submit_nbd(slot);
            return;
        }
        if self.iscsi.is_some() {
            self.submit_iscsi(slot);
            return;
        }
        let simple = matches!(
            self.slots.get(slot),
            Some(Some(Inflight {
                op: Op::Simple { .. },
                ..
            }))
        );
        let result = if simple {
            self.submit_simple(slot)
        } else {
            self.submit_rw(slot)
        };
        if let Err(e) = result {
            // Nothing will come back from io_uring for this request: answer it at the next
            // chance (the callers hold no queue here).
            self.unsubmitted.push((slot, e.to_string()));
        }
    }

    /// Submits a FLUSH, DISCARD or WRITE_ZEROES on its path: `fdatasync`, or one `fallocate`
    /// (files, and write-zeroes on block devices) or block-layer discard per range.
    fn submit_simple(&mut self, slot: usize) -> std::io::Result<()> {
        let lun = self.ctx.lun.clone();
        let thin = self.ctx.thin.is_some();
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return Ok(());
        };
        let path = inflight.sched.as_ref().map_or(0, |s| s.path);
        inflight.started.get_or_insert_with(Instant::now);
        let fd = types::Fd(lun.path_control_fd(path));
        let Op::Simple {
            what,
            pending,
            error,
        } = &mut inflight.op
        else {
            return Ok(());
        };
        *error = None;
        let sqes: Vec<squeue::Entry> = match what {
            SimpleOp::Flush => vec![
                opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            ],
            SimpleOp::Ranges { zero, ranges } => ranges
                .iter()
                .map(|r| {
                    let (offset, len) =
                        (r.sector * SECTOR_SIZE, u64::from(r.sectors) * SECTOR_SIZE);
                    range_sqe(fd, lun.block_device, *zero, r.unmap, thin, offset, len)
                })
                .collect(),
        };
        *pending = sqes.len() as u32;
        let total = sqes.len() as u32;
        for (i, sqe) in sqes.into_iter().enumerate() {
            if let Err(e) = self.push(&sqe.user_data(slot as u64)) {
                if i == 0 {
                    return Err(e);
                }
                // Some are in flight: the request ends when they do, with this error.
                if let Some(Some(Inflight {
                    op: Op::Simple { pending, error, .. },
                    ..
                })) = self.slots.get_mut(slot)
                {
                    *pending = i as u32;
                    *error = Some(format!("submitting range {} of {total}: {e}", i + 1));
                }
                return Ok(());
            }
        }
        Ok(())
    }

    /// (Re)submits the rest of a read or write from where it stands.
    fn submit_rw(&mut self, slot: usize) -> std::io::Result<()> {
        let lun = self.ctx.lun.clone();
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return Ok(());
        };
        let path = inflight.sched.as_ref().map(|s| s.path);
        let mem = inflight.mem.clone();
        inflight.started.get_or_insert_with(Instant::now);
        let Op::Rw {
            write,
            offset,
            ranges,
            total,
            done,
            direct,
            iovecs,
        } = &mut inflight.op
        else {
            return Ok(());
        };
        guest_iovecs(&mem, ranges, *done, *total - *done, iovecs);
        let aligned = iovecs.iter().all(|v| {
            (v.iov_base as usize) % SECTOR_SIZE as usize == 0
                && v.iov_len % SECTOR_SIZE as usize == 0
        });
        let (fd, is_direct) = match path {
            Some(p) => lun.path_data_fd(p, aligned && *direct),
            None => lun.data_fd(aligned && *direct),
        };
        *direct = is_direct;
        let at = *offset + *done;
        let n = u32::try_from(iovecs.len()).unwrap_or(u32::MAX);
        let sqe = if *write {
            opcode::Writev::new(types::Fd(fd), iovecs.as_ptr(), n)
                .offset(at)
                .build()
        } else {
            opcode::Readv::new(types::Fd(fd), iovecs.as_ptr(), n)
                .offset(at)
                .build()
        }
        .user_data(slot as u64);
        self.push(&sqe)
    }

    /// Reaps every available completion. Returns true when entries were added to the used
    /// ring.
    pub fn reap(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        let _ = self.completion_event.read();
        let mut used = false;
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            let found = !cqes.is_empty();
            for &(user_data, res) in &cqes {
                if user_data & nbd_io::NBD_TAG != 0 {
                    self.nbd_event(user_data, res);
                } else if user_data & iscsi_io::ISCSI_TAG != 0 {
                    self.iscsi_event(user_data, res);
                } else {
                    used |= self.complete(user_data as usize, res, queue)?;
                }
            }
            used |= self.nbd_settle(queue)?;
            used |= self.iscsi_settle(queue)?;
            self.cqes = cqes;
            if !found {
                break;
            }
        }
        used |= self.drain_inbox(queue)?;
        self.ctx
            .dispatcher
            .pump(self.ctx.clock.now(), Some(&self.inbox));
        used |= self.drain_inbox(queue)?;
        used |= self.answer_unsubmitted(queue);
        self.flush_submissions()?;
        Ok(used)
    }

    /// Acts on grants (do the I/O) and model completions (answer when the I/O is done too).
    fn drain_inbox(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        let mut used = false;
        for event in self.inbox.take() {
            match event {
                InboxEvent::Granted {
                    slot,
                    epoch,
                    dispatched_at,
                    path,
                    attempt_at,
                    failed_at,
                } => {
                    if let Some(Some(Inflight { sched: Some(s), .. })) = self.slots.get_mut(slot) {
                        s.granted = Some((epoch, dispatched_at));
                        s.path = path;
                        s.attempt_at = attempt_at;
                        s.failed_at = failed_at;
                        self.ctx
                            .counters
                            .queued
                            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        self.submit(slot);
                    }
                }
                InboxEvent::ModelDone { slot, ok, at } => {
                    let ready = match self.slots.get_mut(slot) {
                        Some(Some(Inflight { sched: Some(s), .. })) if !s.model_done => {
                            s.model_done = true;
                            s.model_at = Some(at);
                            s.model_failed = !ok;
                            s.io_done
                        }
                        _ => false,
                    };
                    if ready {
                        used |= self.settle(slot, queue)?;
                    }
                }
                InboxEvent::SpaceRetry => {
                    used |= self.retry_held(queue)?;
                }
                InboxEvent::Failed { slot } => {
                    if let Some(Some(inflight)) = self.slots.get_mut(slot) {
                        inflight.status = VIRTIO_BLK_S_IOERR;
                        let head = inflight.head;
                        // Never granted (or given back): nothing to tell the dispatcher.
                        if let Some(s) = &mut inflight.sched {
                            s.granted = None;
                        }
                        self.ctx
                            .counters
                            .queued
                            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        self.io_error(head, "no path to the LUN for longer than the hold time");
                        used |= self.finish(slot, queue);
                    }
                }
            }
        }
        Ok(used)
    }

    /// Hands a read or write to the LUN dispatcher: it decides when; the grant comes back
    /// through the inbox.
    fn enqueue(&mut self, slot: usize) {
        let Some(Some(inflight)) = self.slots.get(slot) else {
            return;
        };
        // The array model serves a flush, discard or write-zeroes as a write of no data.
        let (bytes, write) = (inflight.bytes, inflight.kind != RequestKind::Read);
        self.ctx
            .counters
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ctx.dispatcher.enqueue(
            self.ctx.tenant,
            &self.inbox,
            slot,
            bytes,
            write,
            self.ctx.clock.now(),
        );
    }

    /// A write that needs thin-pool space the pool does not have: held (this tenant's
    /// allocating writes only), or failed at once when the pool says `on_full = "error"`.
    /// Returns true when the used ring got an entry.
    fn hold_for_space(&mut self, slot: usize, queue: &mut Queue) -> bool {
        let Some((pool, _)) = self.ctx.thin.clone() else {
            return false;
        };
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return false;
        };
        if pool.on_full == OnFull::Error || self.draining {
            inflight.status = VIRTIO_BLK_S_IOERR;
            let head = inflight.head;
            self.ctx
                .counters
                .space_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.io_error(head, &format!("thin pool '{}' is full", pool.name));
            return self.finish(slot, queue);
        }
        let counters = &self.ctx.counters;
        counters
            .held
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters
            .held_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.held.is_empty() {
            let (name, pool_name) = (&self.ctx.name, &pool.name);
            self.ctx.bad_requests.warn(|| {
                format!(
                    "disk {name}: thin pool '{pool_name}' is full: holding this tenant's \
                     allocating writes (at most {} s)",
                    pool.hold_s
                )
            });
        }
        self.held.push_back((slot, Instant::now()));
        pool.wait_for_space(&self.inbox);
        false
    }

    /// The filesystem refused a dispatched write (ENOSPC/EDQUOT): its grant goes back to the
    /// dispatcher as a completion, the write waits for space like one the pool refused.
    fn hold_after_no_space(&mut self, slot: usize, queue: &mut Queue) -> bool {
        let now = self.ctx.clock.now();
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return false;
        };
        if let Some(s) = &mut inflight.sched {
            if let Some((epoch, dispatched_at)) = s.granted.take() {
                self.ctx.dispatcher.on_complete(
                    now,
                    epoch,
                    now - dispatched_at,
                    s.path,
                    now - s.attempt_at,
                    inflight.bytes,
                    s.failed_at,
                );
            }
            *s = Scheduled::default();
        }
        inflight.status = VIRTIO_BLK_S_OK;
        inflight.started = None;
        if let Op::Rw { done, direct, .. } = &mut inflight.op {
            *done = 0;
            *direct = true;
        }
        if let Some((pool, _)) = &self.ctx.thin {
            pool.filesystem_full();
        }
        self.hold_for_space(slot, queue)
    }

    /// Held writes past `hold_s` (or all of them, when the guest is gone) get IOERR.
    fn expire_held(&mut self, queue: &mut Queue, all: bool) -> bool {
        let Some((pool, _)) = self.ctx.thin.clone() else {
            return false;
        };
        let limit = Duration::from_secs_f64(pool.hold_s);
        let mut used = false;
        while let Some(&(slot, since)) = self.held.front() {
            if !all && since.elapsed() < limit {
                break;
            }
            self.held.pop_front();
            self.ctx
                .counters
                .held
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            self.ctx
                .counters
                .space_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(Some(inflight)) = self.slots.get_mut(slot) {
                inflight.status = VIRTIO_BLK_S_IOERR;
                let head = inflight.head;
                let why = if all {
                    format!(
                        "held for thin pool '{}' space when the guest went away",
                        pool.name
                    )
                } else {
                    format!(
                        "no space in thin pool '{}' for {:.1} s (hold_s)",
                        pool.name,
                        since.elapsed().as_secs_f64()
                    )
                };
                self.io_error(head, &why);
                used |= self.finish(slot, queue);
            }
        }
        used
    }

    /// Space may have appeared: held writes go on in the order they came, as far as the pool
    /// lets them; those past `hold_s` fail.
    fn retry_held(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        let Some((pool, lun)) = self.ctx.thin.clone() else {
            return Ok(false);
        };
        let used = self.expire_held(queue, false);
        while let Some(&(slot, _)) = self.held.front() {
            let Some(Some(inflight)) = self.slots.get(slot) else {
                self.held.pop_front();
                continue;
            };
            let Op::Rw { offset, total, .. } = &inflight.op else {
                self.held.pop_front();
                continue;
            };
            if pool.filesystem_is_full() {
                break;
            }
            match pool.reserve(lun, *offset, *total) {
                Reservation::Granted(chunks) => {
                    self.held.pop_front();
                    self.ctx
                        .counters
                        .held
                        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    if let Some(Some(i)) = self.slots.get_mut(slot) {
                        i.reserved.extend(chunks);
                    }
                    self.enqueue(slot);
                }
                // In order: the next held write waits behind this one.
                Reservation::Full => break,
            }
        }
        if !self.held.is_empty() {
            pool.wait_for_space(&self.inbox);
        }
        // The caller (reap) pumps the dispatcher and takes the grants.
        Ok(used)
    }

    /// Hands queued SQEs to the kernel; no system call when there are none.
    fn flush_submissions(&mut self) -> Result<(), WorkerError> {
        self.nbd_push();
        self.iscsi_push();
        self.next_submit = 1;
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.ring.submit().map_err(WorkerError::Submit)?;
        Ok(())
    }

    fn complete(&mut self, slot: usize, res: i32, queue: &mut Queue) -> Result<bool, WorkerError> {
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return Ok(false);
        };
        let head = inflight.head;
        let mut retry = false;
        let mut error: Option<String> = None;
        match &mut inflight.op {
            Op::Rw {
                done,
                total,
                direct,
                ..
            } => {
                if res == -libc::EINVAL && *direct {
                    // The store refused this buffer for O_DIRECT: go through the page cache.
                    *direct = false;
                    self.ctx
                        .counters
                        .buffered_fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    retry = true;
                } else if (res == -libc::ENOSPC || res == -libc::EDQUOT)
                    && self
                        .ctx
                        .thin
                        .as_ref()
                        .is_some_and(|(p, _)| p.on_full == OnFull::Hold)
                    && !self.draining
                {
                    // A real out-of-space: this write waits for room; nobody else does.
                    if let Some(s) = &mut inflight.sched {
                        s.no_space = true;
                    }
                } else if res < 0 {
                    error = Some(std::io::Error::from_raw_os_error(-res).to_string());
                } else if res == 0 {
                    error = Some(format!(
                        "unexpected end of backing store after {done} of {total} bytes"
                    ));
                } else {
                    *done += res as u64;
                    retry = *done < *total;
                }
            }
            Op::Simple {
                what,
                pending,
                error: first_error,
            } => {
                *pending = pending.saturating_sub(1);
                let bdev_discard = matches!(what, SimpleOp::Ranges { zero: false, .. })
                    && self.ctx.lun.block_device;
                if bdev_discard && (res == -libc::EOPNOTSUPP || res == -libc::EINVAL) {
                    // A discard is advisory (the device "may" deallocate): a device or kernel
                    // without it leaves the data, which the guest may not rely on anyway.
                    self.ctx.bad_requests.warn(|| {
                        "block device does not take discards; answering them OK".to_string()
                    });
                } else if res < 0 && first_error.is_none() {
                    *first_error = Some(std::io::Error::from_raw_os_error(-res).to_string());
                }
                if *pending > 0 {
                    // Wait for the request's other SQEs.
                    return Ok(false);
                }
                error = first_error.take();
            }
        }
        let multipath = self.ctx.dispatcher.multipath() && !self.draining;
        if let Some(e) = error {
            match self.slots.get_mut(slot) {
                // On a multipath LUN an I/O error is the path's: the request moves.
                Some(Some(Inflight {
                    sched:
                        Some(
                            s @ Scheduled {
                                granted: Some(_), ..
                            },
                        ),
                    ..
                })) if multipath => {
                    s.io_failed = Some(e);
                }
                Some(Some(inflight)) => {
                    inflight.status = VIRTIO_BLK_S_IOERR;
                    self.io_error(head, &e);
                }
                _ => {}
            }
        } else if retry {
            self.submit(slot);
            return Ok(false);
        }
        // A dispatched request on an emulated LUN is answered when the model is done too.
        if let Some(Some(Inflight { sched: Some(s), .. })) = self.slots.get_mut(slot) {
            s.io_done = true;
            if self.ctx.dispatcher.emulated() && !s.model_done && !self.draining {
                return Ok(false);
            }
        }
        self.settle(slot, queue)
    }

    /// The I/O (and the model) are done: answer the request, or — when its path failed it —
    /// send it again through another path. The guest sees no error while a path lives.
    fn settle(&mut self, slot: usize, queue: &mut Queue) -> Result<bool, WorkerError> {
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return Ok(false);
        };
        let Some(s) = &mut inflight.sched else {
            return Ok(self.finish(slot, queue));
        };
        if s.no_space {
            return Ok(self.hold_after_no_space(slot, queue));
        }
        let Some((_, first_dispatch)) = s.granted else {
            return Ok(self.finish(slot, queue));
        };
        let injected = || self.ctx.dispatcher.injected_error(s.path);
        let why = if s.congested {
            Some(String::new())
        } else if s.model_failed {
            Some("transport error or I/O timeout".to_string())
        } else if let Some(e) = s.io_failed.take() {
            Some(format!("I/O error: {e}"))
        } else if !self.draining && injected() {
            Some("injected transport error".to_string())
        } else {
            None
        };
        let Some(why) = why else {
            return Ok(self.finish(slot, queue));
        };
        if self.draining {
            // The guest is gone: nobody to retry for.
            self.ctx.dispatcher.abandon(s.path);
            s.granted = None;
            inflight.status = VIRTIO_BLK_S_IOERR;
            return Ok(self.finish(slot, queue));
        }
        let (path, failed_at, congested, epoch) = (s.path, s.failed_at, s.congested, s.granted);
        *s = Scheduled {
            // A refusal is no failure: the failover clock does not start.
            failed_at: if congested {
                failed_at
            } else {
                Some(failed_at.unwrap_or(self.ctx.clock.now()))
            },
            ..Scheduled::default()
        };
        inflight.status = VIRTIO_BLK_S_OK;
        match &mut inflight.op {
            Op::Rw { done, direct, .. } => {
                *done = 0;
                *direct = true;
            }
            Op::Simple { pending, error, .. } => {
                *pending = 0;
                *error = None;
            }
        }
        let (bytes, write) = (inflight.bytes, inflight.kind != RequestKind::Read);
        self.ctx
            .counters
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let back = crate::dispatch::Returned {
            owner: &self.inbox,
            slot,
            bytes,
            write,
            first_dispatch,
            failed_at,
        };
        let now = self.ctx.clock.now();
        if congested {
            let epoch = epoch.map_or(0, |(e, _)| e);
            self.ctx.dispatcher.refused(now, path, epoch, back);
        } else {
            self.ctx
                .counters
                .path_retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.ctx.dispatcher.reissue(now, path, back, &why);
        }
        // The grant may already be in the inbox (the dispatcher pumped).
        let used = self.drain_inbox(queue)?;
        self.flush_submissions()?;
        Ok(used)
    }

    /// Answers the request in `slot` and frees the slot; tells the dispatcher when it went
    /// through it.
    fn finish(&mut self, slot: usize, queue: &mut Queue) -> bool {
        let Some(mut inflight) = self.slots.get_mut(slot).and_then(Option::take) else {
            return false;
        };
        self.free.push(slot);
        if let Some(busy) = self.heads_in_flight.get_mut(usize::from(inflight.head)) {
            *busy = false;
        }
        // The guest's answer first: it can post its next request while the books are kept.
        let ok = inflight.status == VIRTIO_BLK_S_OK;
        let _ = inflight
            .mem
            .write_obj(inflight.status, inflight.status_addr);
        let len = if ok { inflight.used_len_ok } else { 1 };
        self.add_used(queue, &inflight.mem, inflight.head, len);
        let done = Instant::now();
        if let Some(Scheduled {
            granted: Some((epoch, dispatched_at)),
            path,
            attempt_at,
            failed_at,
            model_at,
            ..
        }) = inflight.sched
        {
            // An emulated LUN is timed by its model: a late delivery (the broker starved of
            // CPU) is not the storage's latency, and the window must not shrink for it.
            let now = self.ctx.clock.at(done);
            let end = model_at.map_or(now, |at| at.min(now));
            self.ctx.dispatcher.on_complete(
                now,
                epoch,
                end - dispatched_at,
                path,
                end - attempt_at,
                inflight.bytes,
                failed_at,
            );
        }
        let counters = &self.ctx.counters;
        counters.request_answered();
        let ns = |d: std::time::Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let started = inflight.started.unwrap_or(inflight.submitted);
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        let (device_ns, queue_ns, total_ns) = (
            ns(done.saturating_duration_since(started)),
            ns(started.saturating_duration_since(inflight.submitted)),
            ns(done.saturating_duration_since(inflight.submitted)),
        );
        counters.device_latency_ns.fetch_add(device_ns, relaxed);
        counters.queue_latency_ns.fetch_add(queue_ns, relaxed);
        counters.total_latency_ns.fetch_add(total_ns, relaxed);
        counters.latency.device.record_ns(device_ns);
        counters.latency.queue.record_ns(queue_ns);
        counters.latency.total.record_ns(total_ns);
        counters.device_completions.fetch_add(1, relaxed);
        if let Some((pool, lun)) = &self.ctx.thin {
            if ok {
                for (offset, len) in &inflight.punched {
                    pool.released(*lun, *offset, *len);
                }
            } else {
                pool.unreserve(*lun, &inflight.reserved);
            }
        }
        if ok {
            self.ctx.counters.completed(inflight.kind, inflight.bytes);
        }
        // Its iovec array serves the next request (no allocation per request).
        if let Op::Rw { iovecs, .. } = &mut inflight.op {
            if self.spare_iovecs.0.len() < SPARE_IOVECS {
                let mut v = std::mem::take(iovecs);
                v.clear();
                self.spare_iovecs.0.push(v);
            }
        }
        true
    }

    /// Answers IOERR the granted requests io_uring would not take.
    fn answer_unsubmitted(&mut self, queue: &mut Queue) -> bool {
        let mut used = false;
        if self.nbd.is_some() {
            // What the NBD connections handed back while no queue was at hand.
            match self.nbd_settle(queue) {
                Ok(u) => used |= u,
                Err(e) => log::error!("disk {}: {e}", self.ctx.name),
            }
        }
        if self.iscsi.is_some() {
            match self.iscsi_settle(queue) {
                Ok(u) => used |= u,
                Err(e) => log::error!("disk {}: {e}", self.ctx.name),
            }
        }
        for (slot, why) in std::mem::take(&mut self.unsubmitted) {
            if let Some(Some(inflight)) = self.slots.get_mut(slot) {
                inflight.status = VIRTIO_BLK_S_IOERR;
                let head = inflight.head;
                self.io_error(head, &format!("io_uring refused the request: {why}"));
                used |= self.finish(slot, queue);
            }
        }
        used
    }

    fn io_error(&self, head: u16, what: &str) {
        self.ctx
            .counters
            .io_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = &self.ctx.name;
        let lun = &self.ctx.lun.name;
        self.ctx
            .bad_requests
            .warn(|| format!("disk {name}: I/O error on LUN '{lun}' (head {head}): {what}"));
    }

    fn add_used(&self, queue: &mut Queue, mem: &GuestMem, head: u16, len: u32) {
        if let Some(inflight) = &self.inflight {
            inflight.before_used(head);
        }
        let result = queue.add_used(mem, head, len);
        if let Some(inflight) = &self.inflight {
            inflight.after_used(head, queue.next_used());
        }
        if let Err(e) = result {
            let name = &self.ctx.name;
            self.ctx
                .bad_requests
                .warn(|| format!("disk {name}: cannot return head {head} to the used ring: {e}"));
        }
    }

    /// Waits for every in-flight request and answers it. Used when a guest disconnects or the
    /// broker shuts down: nothing acknowledged is lost, nothing submitted is abandoned.
    pub fn drain(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        self.draining = true;
        // Writes held for space have nobody left to wait for.
        let mut used = self.expire_held(queue, true);
        // Take back what the dispatcher still holds first: after that no new grant for this
        // queue can appear, and every grant already made is in the inbox.
        let cancelled = self.ctx.dispatcher.cancel_owner(&self.inbox);
        used |= self.drain_inbox(queue)?;
        // Requests the dispatcher still held: do them now, outside the schedule.
        for slot in cancelled {
            if let Some(Some(inflight)) = self.slots.get_mut(slot) {
                inflight.sched = None;
                self.ctx
                    .counters
                    .queued
                    .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                self.submit(slot);
            }
        }
        used |= self.answer_unsubmitted(queue);
        self.flush_submissions()?;
        // Requests whose I/O is done but whose array-model service is not: nothing will come
        // from io_uring for them, and the model is not waited for any more. Answer them now.
        let model_waits: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Some(Inflight {
                    sched: Some(sc), ..
                }) if sc.io_done => Some(i),
                _ => None,
            })
            .collect();
        for slot in model_waits {
            used |= self.settle(slot, queue)?;
        }
        let deadline = Instant::now() + DRAIN_LIMIT;
        while self.in_flight() > 0 {
            if Instant::now() >= deadline {
                // A store that does not answer (a hung path, a dead NFS server) must not hold
                // the disk's thread and the broker's shutdown forever. The requests stay in
                // their slots, guest memory mapped, so a late completion writes nowhere else.
                log::error!(
                    "disk {}: {} requests still in flight after {} s of draining; giving up on them",
                    self.ctx.name,
                    self.in_flight(),
                    DRAIN_LIMIT.as_secs()
                );
                break;
            }
            let wait = types::Timespec::new().nsec(200_000_000);
            let args = types::SubmitArgs::new().timespec(&wait);
            match self.ring.submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {}
                Err(e) => return Err(WorkerError::Submit(e)),
            }
            used |= self.reap(queue)?;
        }
        self.nbd_disconnect();
        self.iscsi_disconnect();
        Ok(used)
    }
}

/// The iovecs of `len` bytes of a request's guest ranges from byte `from` on, into `out`
/// (cleared first). The pointers stay valid while `mem` (the request's guard) lives.
fn guest_iovecs(
    mem: &GuestMemoryLoadGuard<GuestMem>,
    ranges: &[GuestRange],
    from: u64,
    len: u64,
    out: &mut Vec<libc::iovec>,
) {
    out.clear();
    for r in crate::request::sub_ranges(ranges, from, len) {
        for slice in mem.get_slices(r.addr, r.len as usize).flatten() {
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
    }
}

/// `_IO(0x12, 0)`: the block layer's asynchronous discard through io_uring (Linux 6.12).
const BLOCK_URING_CMD_DISCARD: u32 = 0x1200;

/// The SQE for one range of a DISCARD or WRITE_ZEROES.
///
/// Files: a discard punches a hole (reads back zeroes); a write-zeroes zeroes the range and
/// keeps it allocated unless the guest allowed unmapping, except on a thin LUN, where zeroes
/// are a hole (as dm-thin does it) so the pool gets its chunks back. Block devices: a discard
/// is the block layer's own discard, asynchronous through io_uring; a write-zeroes is
/// `fallocate(ZERO_RANGE)`, which the block layer turns into WRITE ZEROES (io_uring runs it on
/// its workers: never a blocking ioctl on the queue's thread).
fn range_sqe(
    fd: types::Fd,
    block_device: bool,
    zero: bool,
    unmap: bool,
    thin: bool,
    offset: u64,
    len: u64,
) -> squeue::Entry {
    if block_device && !zero {
        let mut cmd = [0u8; 16];
        cmd[..8].copy_from_slice(&len.to_ne_bytes());
        return opcode::UringCmd16::new(fd, BLOCK_URING_CMD_DISCARD)
            .addr(Some(offset))
            .cmd(cmd)
            .build();
    }
    let mode = if block_device || (zero && !unmap && !thin) {
        libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
    } else {
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
    };
    opcode::Fallocate::new(fd, len)
        .offset(offset)
        .mode(mode)
        .build()
}
