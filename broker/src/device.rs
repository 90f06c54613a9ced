//! The vhost-user-blk device one guest disk is served as: features, config space, and the
//! glue between the queue threads ([`crate::vhost_session`]) and the queue workers.
//!
//! One thread per virtqueue, each owning its queue's io_uring. The io_uring completion eventfd
//! of each worker is in that thread's epoll set, so kicks and completions are handled on the
//! same thread without locks being contended.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use vhost::vhost_user::message::VhostUserVirtioFeatures;
use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::inflight::QueueInflight;

use crate::request::{DiskLimits, SECTOR_SIZE};
use crate::worker::{DiskContext, GuestMemAtomic, QueueWorker, WorkerError};

/// A queue this long without an event is checked for a lost kick or interrupt.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

// Feature bits (virtio 1.2 §5.2.3 and §6).
pub const VIRTIO_BLK_F_SIZE_MAX: u64 = 1;
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 2;
pub const VIRTIO_BLK_F_RO: u64 = 5;
pub const VIRTIO_BLK_F_BLK_SIZE: u64 = 6;
pub const VIRTIO_BLK_F_FLUSH: u64 = 9;
pub const VIRTIO_BLK_F_TOPOLOGY: u64 = 10;
pub const VIRTIO_BLK_F_MQ: u64 = 12;
pub const VIRTIO_BLK_F_DISCARD: u64 = 13;
pub const VIRTIO_BLK_F_WRITE_ZEROES: u64 = 14;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 29;
pub const VIRTIO_F_VERSION_1: u64 = 32;

/// Largest single segment a guest may hand us.
pub const SIZE_MAX_BYTES: u32 = 1 << 20;
/// Sectors one discard or write-zeroes segment may cover (1 GiB).
pub const MAX_DISCARD_SECTORS: u32 = (1 << 30) / SECTOR_SIZE as u32;
pub const MAX_DISCARD_SEGMENTS: u32 = 1;

/// The static description of a disk's device: what it offers a guest.
#[derive(Debug, Clone)]
pub struct BlkDeviceSpec {
    pub num_queues: u16,
    pub queue_size: u16,
    pub capacity_sectors: u64,
    pub read_only: bool,
    /// Host block size the backing store prefers (physical block, for the topology).
    pub physical_block_bytes: u32,
}

impl BlkDeviceSpec {
    pub fn seg_max(&self) -> u32 {
        u32::from(self.queue_size).saturating_sub(2).max(1)
    }

    pub fn limits(&self) -> DiskLimits {
        DiskLimits {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            max_descriptors: self.seg_max() as usize + 2,
            max_discard_segments: MAX_DISCARD_SEGMENTS,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_segments: MAX_DISCARD_SEGMENTS,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
        }
    }

    pub fn features(&self) -> u64 {
        let mut f = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_TOPOLOGY
            | 1 << VIRTIO_BLK_F_MQ
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if self.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        f
    }

    /// A frontend's GET_CONFIG: `size` bytes from `offset` (vhost caps `size` at its config
    /// message's 256 bytes); bytes past the config space read as zero.
    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let config = self.config_space();
        let start = (offset as usize).min(config.len());
        let end = start.saturating_add(size as usize).min(config.len());
        let mut out = config[start..end].to_vec();
        out.resize(size as usize, 0);
        out
    }

    /// `struct virtio_blk_config` (virtio 1.2 §5.2.4), little-endian, up to
    /// `write_zeroes_may_unmap` and its padding.
    pub fn config_space(&self) -> Vec<u8> {
        let mut c = vec![0u8; 60];
        let put32 =
            |c: &mut Vec<u8>, at: usize, v: u32| c[at..at + 4].copy_from_slice(&v.to_le_bytes());
        c[0..8].copy_from_slice(&self.capacity_sectors.to_le_bytes());
        put32(&mut c, 8, SIZE_MAX_BYTES);
        put32(&mut c, 12, self.seg_max());
        // geometry (16..20) left zero: meaningless for virtio.
        put32(&mut c, 20, SECTOR_SIZE as u32);
        // topology: physical_block_exp, alignment_offset, min_io_size (in logical blocks),
        // opt_io_size.
        let phys = self.physical_block_bytes.max(SECTOR_SIZE as u32);
        c[24] = (phys / SECTOR_SIZE as u32).trailing_zeros() as u8;
        c[25] = 0;
        c[26..28].copy_from_slice(&((phys / SECTOR_SIZE as u32) as u16).to_le_bytes());
        put32(&mut c, 28, 0);
        c[32] = 0; // writeback: not a negotiable feature here; FLUSH is honoured.
        c[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        put32(&mut c, 36, MAX_DISCARD_SECTORS);
        put32(&mut c, 40, MAX_DISCARD_SEGMENTS);
        put32(&mut c, 44, phys / SECTOR_SIZE as u32);
        put32(&mut c, 48, MAX_DISCARD_SECTORS);
        put32(&mut c, 52, MAX_DISCARD_SEGMENTS);
        c[56] = 1; // write_zeroes_may_unmap
        c
    }
}

struct DeviceInner {
    spec: BlkDeviceSpec,
    ctx: Arc<DiskContext>,
    mem: RwLock<GuestMemAtomic>,
    workers: Vec<Mutex<QueueWorker>>,
    /// The vrings of the current session, kept so that in-flight requests can be answered
    /// after its queue threads have stopped.
    vrings: Mutex<Vec<Option<VringRwLock<GuestMemAtomic>>>>,
}

/// The vhost-user-blk device of one guest connection: its queue workers and what it offers.
/// Cheap to clone (the queue threads each hold one); a new one is made per connection so no
/// state leaks between guests. [`crate::vhost_session`] speaks the protocol around it.
#[derive(Clone)]
pub struct BlkDevice {
    inner: Arc<DeviceInner>,
}

impl BlkDevice {
    pub fn new(spec: BlkDeviceSpec, ctx: Arc<DiskContext>) -> Result<Self, WorkerError> {
        let queues = spec.num_queues as usize;
        let mut workers = Vec::new();
        for _ in 0..spec.num_queues {
            workers.push(Mutex::new(QueueWorker::new(ctx.clone(), spec.queue_size)?));
        }
        Ok(BlkDevice {
            inner: Arc::new(DeviceInner {
                spec,
                ctx,
                mem: RwLock::new(GuestMemoryAtomic::new(GuestMemoryMmap::new())),
                workers,
                vrings: Mutex::new(vec![None; queues]),
            }),
        })
    }

    pub fn inbox_fd(&self, q: usize) -> Option<i32> {
        self.inner
            .workers
            .get(q)
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).inbox_fd())
    }

    pub fn completion_fd(&self, q: usize) -> Option<i32> {
        self.inner
            .workers
            .get(q)
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).completion_fd())
    }

    pub fn features(&self) -> u64 {
        self.inner.spec.features()
    }

    pub fn read_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.inner.spec.read_config(offset, size)
    }

    pub fn max_queue_size(&self) -> u16 {
        self.inner.spec.queue_size
    }

    pub fn update_memory(&self, mem: GuestMemAtomic) {
        *self.inner.mem.write().unwrap_or_else(|p| p.into_inner()) = mem;
    }

    pub(crate) fn remember_vring(&self, q: usize, vring: VringRwLock<GuestMemAtomic>) {
        if let Some(slot) = self
            .inner
            .vrings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(q)
        {
            *slot = Some(vring);
        }
    }

    /// Queue `q` tracks its requests in `part` from now on, and resubmits `heads` first.
    pub(crate) fn track_inflight(&self, q: usize, part: QueueInflight, heads: Vec<u16>) {
        if let Some(worker) = self.inner.workers.get(q) {
            worker
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .track_inflight(part, heads);
        }
    }

    /// A kick on queue `q`.
    pub(crate) fn kicked(&self, q: usize, vring: &VringRwLock<GuestMemAtomic>) -> io::Result<()> {
        self.inner
            .ctx
            .counters
            .kicks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.service_queue(q, vring, false)
    }

    /// Completions, dispatcher grants, or a start: reap and take what is new.
    pub(crate) fn service(&self, q: usize, vring: &VringRwLock<GuestMemAtomic>) -> io::Result<()> {
        self.service_queue(q, vring, true)
    }

    /// The guest memory as the frontend last mapped it.
    fn memory(&self) -> GuestMemAtomic {
        self.inner
            .mem
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Queue `q` saw no event for [`IDLE_CHECK`]: looks for what a lost notification would
    /// hide, since either would stall the guest for good. With nothing in flight (kicks on),
    /// chains in the avail ring mean a kick was lost: they are taken now. Used entries past
    /// the index the guest asked to be interrupted at (EVENT_IDX) mean it was not told, or
    /// its interrupt was lost: it is signalled again (harmless if it was only slow). Both are
    /// counted and said, rate-limited: a healthy guest and broker have neither.
    pub(crate) fn idle_check(
        &self,
        q: usize,
        vring: &VringRwLock<GuestMemAtomic>,
    ) -> io::Result<()> {
        let Some(worker) = self.inner.workers.get(q) else {
            return Ok(());
        };
        let mem = self.memory();
        let (unkicked, behind) = {
            let worker = worker.lock().unwrap_or_else(|p| p.into_inner());
            let state = vring.get_ref();
            let queue = state.get_queue();
            if !(queue.ready() && state.is_enabled()) || worker.in_flight() > 0 {
                return Ok(());
            }
            let guard = mem.memory();
            let next_avail = std::num::Wrapping(queue.next_avail());
            let next_used = std::num::Wrapping(queue.next_used());
            let unkicked = queue
                .avail_idx(&*guard, Ordering::Acquire)
                .map_or(0, |a| (a - next_avail).0);
            let behind = if queue.event_idx_enabled() {
                // `used_event` follows the avail ring's entries (virtio 1.2, 2.7.6); the
                // queue keeps its reader private.
                let addr = 4 + 2 * u64::from(queue.size());
                queue
                    .avail_ring()
                    .checked_add(addr)
                    .and_then(|a| guard.load::<u16>(GuestAddress(a), Ordering::Acquire).ok())
                    .map_or(0, |e| (next_used - std::num::Wrapping(u16::from_le(e))).0)
            } else {
                0
            };
            (unkicked, behind)
        };
        let ctx = &self.inner.ctx;
        let relaxed = Ordering::Relaxed;
        if unkicked > 0 {
            ctx.counters.unkicked.fetch_add(1, relaxed);
            let name = &ctx.name;
            ctx.bad_requests.warn(|| {
                format!("disk {name}: queue {q}: {unkicked} requests waited a second without a kick; taken now")
            });
            return self.service_queue(q, vring, false);
        }
        // `behind` counts from the guest's `used_event` to `next_used`: 0 when it has seen
        // everything; a guest that has not consumed the entries past its event asked for an
        // interrupt there.
        if behind > 0 && behind < 0x8000 {
            ctx.counters.resignals.fetch_add(1, relaxed);
            let name = &ctx.name;
            ctx.bad_requests.warn(|| {
                format!("disk {name}: queue {q}: the guest had not caught up with {behind} answers after a second; interrupted again")
            });
            ctx.counters.notifications.fetch_add(1, relaxed);
            vring.signal_used_queue()?;
        }
        Ok(())
    }

    pub fn num_queues(&self) -> usize {
        self.inner.spec.num_queues as usize
    }

    /// Finishes every request still in flight on every queue and signals the guest: used when
    /// the guest disconnects or the broker stops, after the queue threads have exited.
    pub fn drain(&self) {
        for q in 0..self.num_queues() {
            self.drain_queue(q);
        }
    }

    /// Finishes every request in flight on queue `q` and signals the guest.
    pub fn drain_queue(&self, q: usize) {
        let vring = self
            .inner
            .vrings
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(q)
            .cloned()
            .flatten();
        let Some(vring) = vring else { return };
        let Some(worker) = self.inner.workers.get(q) else {
            return;
        };
        let mut worker = worker.lock().unwrap_or_else(|p| p.into_inner());
        if worker.in_flight() == 0 {
            return;
        }
        let used = {
            let mut state = vring.get_mut();
            worker.drain(state.get_queue_mut())
        };
        match used {
            Ok(true) => {
                let _ = vring.signal_used_queue();
            }
            Ok(false) => {}
            Err(e) => log::error!("disk {}: draining queue {q}: {e}", self.inner.ctx.name),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.inner
            .workers
            .iter()
            .map(|w| w.lock().unwrap_or_else(|p| p.into_inner()).in_flight())
            .sum()
    }

    /// Handles a kick (`completions == false`) or an io_uring completion event: reaps what
    /// finished, takes every new chain, and interrupts the guest once for all of it.
    ///
    /// While requests are in flight the guest's kicks stay off: the next completion brings
    /// this thread back anyway, and it takes new chains then. A kick costs the guest an exit
    /// (a TCG memory-region dispatch, an ioeventfd write, a PVM/VT-x exit); at queue depth 32
    /// most of them are saved. When nothing is in flight kicks are turned back on, and the
    /// avail ring is checked once more so that a chain posted in between is not missed.
    fn service_queue(
        &self,
        q: usize,
        vring: &VringRwLock<GuestMemAtomic>,
        completions: bool,
    ) -> io::Result<()> {
        let Some(worker) = self.inner.workers.get(q) else {
            return Ok(());
        };
        let mem = self.memory();
        let mut used = false;
        {
            let mut worker = worker.lock().unwrap_or_else(|p| p.into_inner());
            let mut state = vring.get_mut();
            let ready = state.get_queue().ready() && state.is_enabled();
            if !ready && !completions {
                let name = &self.inner.ctx.name;
                let in_flight = worker.in_flight();
                self.inner.ctx.bad_requests.warn(|| {
                    format!("disk {name}: queue {q} event while the queue is stopped ({in_flight} in flight)")
                });
            }
            let result = (|| -> Result<(), WorkerError> {
                if completions {
                    used |= worker.reap(state.get_queue_mut())?;
                }
                if !ready {
                    // Stopped by the frontend: finish what is in flight, take nothing new.
                    return Ok(());
                }
                loop {
                    let _ = state.disable_notification();
                    used |= worker.process_available(state.get_queue_mut(), &mem)?;
                    if worker.in_flight() > 0 {
                        return Ok(());
                    }
                    match state.enable_notification() {
                        Ok(true) => continue,
                        _ => return Ok(()),
                    }
                }
            })();
            if let Err(e) = result {
                log::error!("disk {}: queue {q}: {e}", self.inner.ctx.name);
            }
        }
        if used {
            self.signal(vring)?;
        }
        Ok(())
    }

    fn signal(&self, vring: &VringRwLock<GuestMemAtomic>) -> io::Result<()> {
        // With EVENT_IDX the guest says when it wants an interrupt; without, always.
        if vring.needs_notification().unwrap_or(true) {
            self.inner
                .ctx
                .counters
                .notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            vring.signal_used_queue()?;
        }
        Ok(())
    }
}
