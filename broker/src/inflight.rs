//! Inflight tracking (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`): what a broker had taken from a
//! guest's queues and not yet answered, kept in shared memory the frontend holds on to, so a
//! broker started after a crash resubmits exactly those requests and answers each once.
//!
//! The frontend asks for the region with GET_INFLIGHT_FD (we create a memfd, zeroed, and map
//! it), keeps the fd across the backend's death, and hands it to the next backend with
//! SET_INFLIGHT_FD. The layout per queue is libvhost-user's split-ring one
//! (`VuVirtqInflight`), so a region means the same to either implementation:
//!
//! ```text
//! u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//! desc[desc_num] { u8 inflight; u8 pad[5]; u16 next; u64 counter; }
//! ```
//!
//! Each queue's part is `16 + 16·queue_size` bytes rounded up to 64. The protocol, per
//! request with head `h` (libvhost-user's `vu_queue_inflight_get/pre_put/post_put`):
//!
//! 1. taken from the avail ring: `desc[h].counter = c++`, then `desc[h].inflight = 1`;
//! 2. before its used element is published: `last_batch_head = h`;
//! 3. after the used index moved past it: `desc[h].inflight = 0`, then `used_idx = used->idx`.
//!
//! Recovery: if `used_idx` differs from the ring's used index, the broker died between 2's
//! publication and 3, and `last_batch_head` was answered already: clear it. Every other head
//! still marked is resubmitted, oldest `counter` first, and the ring's next-avail index is
//! `used->idx + resubmitted` (everything taken was either answered or is in flight). A used
//! element is published one at a time (`virtio_queue`'s `add_used` moves the index each call),
//! so one `last_batch_head` covers the window.
//!
//! The region is written by the frontend too (it zeroes it on a device reset), so every value
//! read from it is checked before use: heads beyond the ring are ignored.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering, fence};

const HEADER_BYTES: usize = 16;
const DESC_BYTES: usize = 16;
const QUEUE_ALIGN: usize = 64;
/// The version a region is stamped with once a queue has used it.
pub const INFLIGHT_VERSION: u16 = 1;

/// Bytes one queue of `queue_size` entries takes in the region.
pub fn queue_region_bytes(queue_size: u16) -> usize {
    (HEADER_BYTES + DESC_BYTES * usize::from(queue_size)).div_ceil(QUEUE_ALIGN) * QUEUE_ALIGN
}

#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("inflight region: {0}")]
    Io(#[from] io::Error),
    #[error(
        "inflight region of {size} bytes is too small for {queues} queue(s) of {queue_size} \
         entries ({needed} bytes)"
    )]
    TooSmall {
        size: u64,
        queues: u16,
        queue_size: u16,
        needed: u64,
    },
    #[error("inflight region: {queues} queue(s) of {queue_size} entries is not a valid shape")]
    Shape { queues: u16, queue_size: u16 },
}

/// A mapped inflight region: `queues` parts of `queue_size` entries each.
pub struct InflightRegion {
    file: File,
    ptr: *mut u8,
    len: usize,
    queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is shared memory accessed only through atomics (see `QueueInflight`); the
// pointer stays valid until `Drop` unmaps it, after every `Arc` holder is gone.
unsafe impl Send for InflightRegion {}
// SAFETY: as above: all access is atomic.
unsafe impl Sync for InflightRegion {}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("len", &self.len)
            .field("queues", &self.queues)
            .field("queue_size", &self.queue_size)
            .finish()
    }
}

impl InflightRegion {
    /// A fresh, zeroed region in a memfd (GET_INFLIGHT_FD).
    pub fn create(queues: u16, queue_size: u16) -> Result<Self, InflightError> {
        if queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::Shape { queues, queue_size });
        }
        let len = queue_region_bytes(queue_size) * usize::from(queues);
        // SAFETY: the name is a NUL-terminated literal; memfd_create returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"weir-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len as u64)?;
        Self::map(file, len, 0, queues, queue_size)
    }

    /// The region a frontend hands back (SET_INFLIGHT_FD), as it describes it.
    pub fn adopt(
        file: File,
        mmap_size: u64,
        mmap_offset: u64,
        queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        if queues == 0 || queue_size == 0 || queue_size > 32768 {
            return Err(InflightError::Shape { queues, queue_size });
        }
        let needed = (queue_region_bytes(queue_size) * usize::from(queues)) as u64;
        let file_len = file.metadata()?.len();
        if mmap_size < needed || mmap_offset.saturating_add(needed) > file_len {
            return Err(InflightError::TooSmall {
                size: mmap_size.min(file_len.saturating_sub(mmap_offset)),
                queues,
                queue_size,
                needed,
            });
        }
        Self::map(file, needed as usize, mmap_offset, queues, queue_size)
    }

    fn map(
        file: File,
        len: usize,
        offset: u64,
        queues: u16,
        queue_size: u16,
    ) -> Result<Self, InflightError> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset out of range"))?;
        // SAFETY: a fresh shared mapping of `len` bytes of a file at least that long past
        // `offset` (checked by the callers); the kernel picks the address.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error().into());
        }
        Ok(InflightRegion {
            file,
            ptr: ptr.cast(),
            len,
            queues,
            queue_size,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn queues(&self) -> u16 {
        self.queues
    }

    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Queue `q`'s part, for a ring of `ring_size` entries (at most the region's queue size).
    pub fn queue(self: &Arc<Self>, q: u16, ring_size: u16) -> Option<QueueInflight> {
        if q >= self.queues || ring_size == 0 || ring_size > self.queue_size {
            return None;
        }
        Some(QueueInflight {
            region: self.clone(),
            offset: queue_region_bytes(self.queue_size) * usize::from(q),
            ring_size,
            counter: 0,
        })
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `map`, unmapped once, here.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One queue's part of the region, used by the queue's worker.
pub struct QueueInflight {
    region: Arc<InflightRegion>,
    offset: usize,
    ring_size: u16,
    /// The next request's `counter`: larger than any in the region.
    counter: u64,
}

impl std::fmt::Debug for QueueInflight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueInflight")
            .field("offset", &self.offset)
            .field("ring_size", &self.ring_size)
            .field("counter", &self.counter)
            .finish()
    }
}

/// What recovery found in a queue's part.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Heads to resubmit, oldest first.
    pub heads: Vec<u16>,
    /// The region had never been used for this queue (a fresh region, or a guest reset).
    pub fresh: bool,
    /// `last_batch_head` was answered but not yet cleared when the old broker died.
    pub cleared_last_batch: bool,
}

impl QueueInflight {
    fn at<T>(&self, byte: usize) -> &T {
        debug_assert!(self.offset + byte + std::mem::size_of::<T>() <= self.region.len);
        debug_assert!((self.offset + byte) % std::mem::align_of::<T>() == 0);
        // SAFETY: every caller passes an offset inside this queue's part, aligned for `T` (the
        // layout's fields are naturally aligned and the mapping is page-aligned); `T` is an
        // atomic integer, valid for any bit pattern the frontend may write.
        unsafe { &*self.region.ptr.add(self.offset + byte).cast::<T>() }
    }

    fn version(&self) -> &AtomicU16 {
        self.at(8)
    }
    fn desc_num(&self) -> &AtomicU16 {
        self.at(10)
    }
    fn last_batch_head(&self) -> &AtomicU16 {
        self.at(12)
    }
    fn used_idx(&self) -> &AtomicU16 {
        self.at(14)
    }
    fn flag(&self, head: u16) -> &AtomicU8 {
        self.at(HEADER_BYTES + DESC_BYTES * usize::from(head))
    }
    fn counter_of(&self, head: u16) -> &AtomicU64 {
        self.at(HEADER_BYTES + DESC_BYTES * usize::from(head) + 8)
    }

    /// Reads what a previous broker left, given the used index now in the guest's ring, and
    /// readies the part for this broker. Call before the queue takes any request.
    pub fn recover(&mut self, ring_used_idx: u16) -> Recovered {
        let mut out = Recovered::default();
        let version = self.version().load(Ordering::Acquire);
        let desc_num = self.desc_num().load(Ordering::Acquire);
        if version != INFLIGHT_VERSION || desc_num != self.ring_size {
            // Never used, or used with another ring size (the guest was reset): nothing in it
            // can be trusted, start clean.
            for head in 0..self.ring_size {
                self.flag(head).store(0, Ordering::Relaxed);
                self.counter_of(head).store(0, Ordering::Relaxed);
            }
            self.desc_num().store(self.ring_size, Ordering::Relaxed);
            self.last_batch_head().store(0, Ordering::Relaxed);
            self.used_idx().store(ring_used_idx, Ordering::Relaxed);
            self.version().store(INFLIGHT_VERSION, Ordering::Release);
            self.counter = 1;
            out.fresh = true;
            return out;
        }
        log::debug!(
            "inflight recover: region used_idx {} ring used_idx {ring_used_idx}, marked {}",
            self.used_idx().load(Ordering::Acquire),
            (0..self.ring_size)
                .filter(|&h| self.flag(h).load(Ordering::Acquire) == 1)
                .count()
        );
        if self.used_idx().load(Ordering::Acquire) != ring_used_idx {
            let last = self.last_batch_head().load(Ordering::Acquire);
            if last < self.ring_size {
                self.flag(last).store(0, Ordering::Release);
                out.cleared_last_batch = true;
            }
            self.used_idx().store(ring_used_idx, Ordering::Release);
        }
        let mut marked: Vec<(u64, u16)> = (0..self.ring_size)
            .filter(|&h| self.flag(h).load(Ordering::Acquire) == 1)
            .map(|h| (self.counter_of(h).load(Ordering::Acquire), h))
            .collect();
        marked.sort_unstable();
        self.counter = marked.last().map_or(1, |(c, _)| c.saturating_add(1));
        out.heads = marked.into_iter().map(|(_, h)| h).collect();
        out
    }

    /// Step 1: `head` was taken from the avail ring.
    pub fn begin(&mut self, head: u16) {
        if head >= self.ring_size {
            return;
        }
        self.counter_of(head).store(self.counter, Ordering::Relaxed);
        self.counter = self.counter.wrapping_add(1);
        self.flag(head).store(1, Ordering::Release);
    }

    /// Step 2: `head`'s used element is about to be published.
    pub fn before_used(&self, head: u16) {
        self.last_batch_head().store(head, Ordering::Release);
        fence(Ordering::SeqCst);
    }

    /// Step 3: the used index is now `used_idx`, past `head`.
    pub fn after_used(&self, head: u16, used_idx: u16) {
        fence(Ordering::SeqCst);
        if head < self.ring_size {
            self.flag(head).store(0, Ordering::Release);
        }
        self.used_idx().store(used_idx, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_libvhost_user_layout() {
        assert_eq!(queue_region_bytes(1), 64);
        assert_eq!(queue_region_bytes(128), 16 + 128 * 16 + 48);
        assert_eq!(queue_region_bytes(256) % 64, 0);
    }

    #[test]
    fn a_fresh_region_has_nothing_to_resubmit() {
        let region = Arc::new(InflightRegion::create(2, 128).unwrap());
        let mut q = region.queue(1, 128).unwrap();
        let r = q.recover(7);
        assert!(r.fresh);
        assert!(r.heads.is_empty());
    }

    /// A broker that dies with requests in flight leaves them for the next one, oldest first;
    /// what it answered is not resubmitted, including the one answered between publishing its
    /// used element and clearing its mark.
    #[test]
    fn a_new_broker_resubmits_what_the_old_one_left_in_flight_once() {
        let region = Arc::new(InflightRegion::create(1, 16).unwrap());
        let mut old = region.queue(0, 16).unwrap();
        assert!(old.recover(0).fresh);
        for head in [5, 2, 9, 11] {
            old.begin(head);
        }
        // 2 answered cleanly (used idx 0 → 1).
        old.before_used(2);
        old.after_used(2, 1);
        // 9 published (used idx 1 → 2) but the broker dies before clearing it.
        old.before_used(9);
        drop(old);
        let mut new = region.queue(0, 16).unwrap();
        let r = new.recover(2);
        assert!(!r.fresh);
        assert!(r.cleared_last_batch);
        assert_eq!(r.heads, vec![5, 11]);
        // The new broker's own requests come after the resubmitted ones.
        new.begin(3);
        let again = region.queue(0, 16).unwrap().recover(2);
        assert_eq!(again.heads, vec![5, 11, 3]);
    }

    #[test]
    fn a_region_from_a_different_ring_size_is_started_clean() {
        let region = Arc::new(InflightRegion::create(1, 64).unwrap());
        let mut q = region.queue(0, 64).unwrap();
        q.recover(0);
        q.begin(40);
        let r = region.queue(0, 32).unwrap().recover(0);
        assert!(r.fresh);
        assert!(r.heads.is_empty());
    }

    #[test]
    fn an_adopted_region_must_hold_every_queue() {
        let region = InflightRegion::create(1, 128).unwrap();
        let file = region.file().try_clone().unwrap();
        let err = InflightRegion::adopt(file, region.len() as u64, 0, 2, 128).unwrap_err();
        assert!(err.to_string().contains("too small"), "{err}");
        let file = region.file().try_clone().unwrap();
        let adopted =
            Arc::new(InflightRegion::adopt(file, region.len() as u64, 0, 1, 128).unwrap());
        // Both mappings see one memory.
        let mut a = Arc::new(region).queue(0, 128).unwrap();
        a.recover(0);
        a.begin(77);
        assert_eq!(adopted.queue(0, 128).unwrap().recover(0).heads, vec![77]);
    }
}
