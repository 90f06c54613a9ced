//! A virtio-blk driver over virtio-mmio (version 2, modern), split queue, EVENT_IDX, run at
//! CPL3: register accesses are plain loads and stores to the identity-mapped device window.

use core::ptr::{addr_of_mut, read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC_LOW: u64 = 0x080;
const QUEUE_DESC_HIGH: u64 = 0x084;
const QUEUE_DRIVER_LOW: u64 = 0x090;
const QUEUE_DRIVER_HIGH: u64 = 0x094;
const QUEUE_DEVICE_LOW: u64 = 0x0a0;
const QUEUE_DEVICE_HIGH: u64 = 0x0a4;
const CONFIG: u64 = 0x100;

const ST_ACK: u32 = 1;
const ST_DRIVER: u32 = 2;
const ST_DRIVER_OK: u32 = 4;
const ST_FEATURES_OK: u32 = 8;
const ST_FAILED: u32 = 128;

const F_RO: u64 = 1 << 5;
const F_SEG_MAX: u64 = 1 << 2;
const F_EVENT_IDX: u64 = 1 << 29;
const F_VERSION_1: u64 = 1 << 32;

const D_NEXT: u16 = 1;
const D_WRITE: u16 = 2;

pub const MAX_QUEUE: usize = 1024;

#[repr(C)]
#[derive(Clone, Copy)]
struct Desc {
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
}

#[repr(C, align(4096))]
struct QueueMem([u8; 64 * 1024]);
static mut QMEM: QueueMem = QueueMem([0; 64 * 1024]);

/// Request headers (16 bytes each) and status bytes, one per descriptor head slot.
#[repr(C, align(4096))]
struct Headers([[u64; 2]; MAX_QUEUE]);
static mut HEADERS: Headers = Headers([[0; 2]; MAX_QUEUE]);
#[repr(C, align(64))]
struct Statuses([u8; MAX_QUEUE]);
static mut STATUSES: Statuses = Statuses([0; MAX_QUEUE]);

pub struct Blk {
    base: u64,
    pub irq: u32,
    pub qsize: u16,
    pub event_idx: bool,
    pub capacity: u64,
    pub seg_max: u32,
    pub read_only: bool,
    #[allow(dead_code)]
    pub features: u64,
    desc: *mut Desc,
    avail: *mut u16,
    used: *mut u8,
    avail_idx: u16,
    last_used: u16,
    pub notifies: u64,
}

fn r32(base: u64, off: u64) -> u32 {
    // SAFETY: the device window is identity-mapped and user-accessible.
    unsafe { read_volatile((base + off) as *const u32) }
}
fn w32(base: u64, off: u64, v: u32) {
    // SAFETY: as above.
    unsafe { write_volatile((base + off) as *mut u32, v) }
}

/// A buffer in a request chain: address, length, device-writable.
#[derive(Clone, Copy)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

impl Blk {
    /// Brings the device up (reset, features, one queue, DRIVER_OK).
    pub fn init(
        base: u64,
        irq: u32,
        want_event_idx: bool,
        want_queue: u16,
    ) -> Result<Blk, &'static str> {
        if r32(base, MAGIC) != 0x7472_6976 {
            return Err("no virtio-mmio magic at the announced address");
        }
        if r32(base, VERSION) != 2 {
            return Err("virtio-mmio version is not 2 (modern)");
        }
        if r32(base, DEVICE_ID) != 2 {
            return Err("not a block device");
        }
        w32(base, STATUS, 0);
        w32(base, STATUS, ST_ACK);
        w32(base, STATUS, ST_ACK | ST_DRIVER);
        w32(base, DEVICE_FEATURES_SEL, 0);
        let lo = u64::from(r32(base, DEVICE_FEATURES));
        w32(base, DEVICE_FEATURES_SEL, 1);
        let hi = u64::from(r32(base, DEVICE_FEATURES));
        let offered = lo | (hi << 32);
        if offered & F_VERSION_1 == 0 {
            w32(base, STATUS, ST_FAILED);
            return Err("device does not offer VIRTIO_F_VERSION_1");
        }
        let mut accept = F_VERSION_1 | (offered & (F_RO | F_SEG_MAX));
        if want_event_idx {
            accept |= offered & F_EVENT_IDX;
        }
        w32(base, DRIVER_FEATURES_SEL, 0);
        w32(base, DRIVER_FEATURES, accept as u32);
        w32(base, DRIVER_FEATURES_SEL, 1);
        w32(base, DRIVER_FEATURES, (accept >> 32) as u32);
        w32(base, STATUS, ST_ACK | ST_DRIVER | ST_FEATURES_OK);
        if r32(base, STATUS) & ST_FEATURES_OK == 0 {
            w32(base, STATUS, ST_FAILED);
            return Err("device refused our features");
        }
        w32(base, QUEUE_SEL, 0);
        let max = r32(base, QUEUE_NUM_MAX);
        if max == 0 {
            return Err("queue 0 unavailable");
        }
        // QEMU's virtio-mmio reports 1024 whatever the backend takes: ask for what was asked.
        let qsize = (max as usize)
            .min(MAX_QUEUE)
            .min(usize::from(want_queue.max(16))) as u16;
        // Layout in QMEM: descriptors, then the available ring, then (4 KiB aligned) used.
        let mem = addr_of_mut!(QMEM) as u64;
        let desc = mem;
        let avail = desc + 16 * u64::from(qsize);
        let used = (avail + 6 + 2 * u64::from(qsize) + 4095) & !4095;
        // SAFETY: QMEM is ours and large enough for a 1024-entry queue.
        unsafe { core::ptr::write_bytes(mem as *mut u8, 0, 64 * 1024) };
        w32(base, QUEUE_NUM, u32::from(qsize));
        w32(base, QUEUE_DESC_LOW, desc as u32);
        w32(base, QUEUE_DESC_HIGH, (desc >> 32) as u32);
        w32(base, QUEUE_DRIVER_LOW, avail as u32);
        w32(base, QUEUE_DRIVER_HIGH, (avail >> 32) as u32);
        w32(base, QUEUE_DEVICE_LOW, used as u32);
        w32(base, QUEUE_DEVICE_HIGH, (used >> 32) as u32);
        w32(base, QUEUE_READY, 1);
        w32(
            base,
            STATUS,
            ST_ACK | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK,
        );
        let cfg = |off: u64| r32(base, CONFIG + off);
        let capacity = u64::from(cfg(0)) | (u64::from(cfg(4)) << 32);
        let negotiated = accept;
        Ok(Blk {
            base,
            irq,
            qsize,
            event_idx: negotiated & F_EVENT_IDX != 0,
            capacity,
            seg_max: if negotiated & F_SEG_MAX != 0 {
                cfg(12)
            } else {
                0
            },
            read_only: negotiated & F_RO != 0,
            features: negotiated,
            desc: desc as *mut Desc,
            avail: avail as *mut u16,
            used: used as *mut u8,
            avail_idx: 0,
            last_used: 0,
            notifies: 0,
        })
    }

    /// Routes the device's interrupt to `vector` on the boot CPU (IOAPIC, edge, unmasked).
    pub fn route_irq(&self, vector: u8) {
        let ioapic = 0xfec0_0000u64;
        let write = |reg: u32, v: u32| {
            // SAFETY: IOAPIC registers, identity-mapped.
            unsafe {
                write_volatile(ioapic as *mut u32, reg);
                write_volatile((ioapic + 0x10) as *mut u32, v);
            }
        };
        write(0x10 + 2 * self.irq + 1, 0);
        write(0x10 + 2 * self.irq, u32::from(vector));
    }

    /// Asks for an interrupt at the next completion (`true`) or for none (`false`).
    pub fn want_interrupts(&mut self, on: bool) {
        let q = u64::from(self.qsize);
        // SAFETY: the flags word and used_event live in our available ring.
        unsafe {
            if self.event_idx {
                let used_event = self.avail.add(2 + q as usize);
                let v = if on {
                    self.last_used
                } else {
                    self.last_used.wrapping_add(0x8000)
                };
                write_volatile(used_event, v);
            } else {
                write_volatile(self.avail, if on { 0 } else { 1 });
            }
        }
        fence(Ordering::SeqCst);
    }

    /// Writes descriptor `i`.
    fn set_desc(&mut self, i: u16, seg: Seg, next: Option<u16>) {
        let d = Desc {
            addr: seg.addr,
            len: seg.len,
            flags: if seg.write { D_WRITE } else { 0 } | if next.is_some() { D_NEXT } else { 0 },
            next: next.unwrap_or(0),
        };
        // SAFETY: i < qsize, inside the descriptor table.
        unsafe { write_volatile(self.desc.add(usize::from(i)), d) };
    }

    /// Header and status addresses of head slot `head`.
    pub fn header_addr(head: u16) -> u64 {
        // SAFETY: taking an address only.
        (unsafe { addr_of_mut!(HEADERS.0[usize::from(head)]) }) as u64
    }
    pub fn status_addr(head: u16) -> u64 {
        // SAFETY: taking an address only.
        (unsafe { addr_of_mut!(STATUSES.0[usize::from(head)]) }) as u64
    }
    pub fn status(head: u16) -> u8 {
        // SAFETY: a byte the device writes; read volatile.
        unsafe { read_volatile(Self::status_addr(head) as *const u8) }
    }

    /// Posts a chain on descriptors `first..first + segs.len()`, head `first`.
    pub fn post_chain(&mut self, first: u16, segs: &[Seg]) {
        for (k, s) in segs.iter().enumerate() {
            let i = first + k as u16;
            let next = (k + 1 < segs.len()).then_some(i + 1);
            self.set_desc(i, *s, next);
        }
        let q = usize::from(self.qsize);
        // SAFETY: the ring entry and index live in our available ring.
        unsafe {
            write_volatile(self.avail.add(2 + usize::from(self.avail_idx) % q), first);
            fence(Ordering::SeqCst);
            self.avail_idx = self.avail_idx.wrapping_add(1);
            write_volatile(self.avail.add(1), self.avail_idx);
        }
    }

    /// A standard read or write on head slot `head` (descriptors 3·head .. 3·head + 2).
    pub fn post_rw(&mut self, head: u16, kind: u32, sector: u64, data: u64, len: u32) {
        // SAFETY: the header and status belong to this slot, not in flight.
        unsafe {
            let h = Self::header_addr(head) as *mut u64;
            write_volatile(h, u64::from(kind));
            write_volatile(h.add(1), sector);
            write_volatile(Self::status_addr(head) as *mut u8, 0xee);
        }
        let segs = [
            Seg {
                addr: Self::header_addr(head),
                len: 16,
                write: false,
            },
            Seg {
                addr: data,
                len,
                write: kind == T_IN,
            },
            Seg {
                addr: Self::status_addr(head),
                len: 1,
                write: true,
            },
        ];
        self.post_chain(head * 3, &segs);
    }

    /// Tells the device about new chains, when it wants to hear (EVENT_IDX) — an MMIO write
    /// that the VMM turns into an ioeventfd, never a VMM exit.
    pub fn notify(&mut self, old_idx: u16) {
        fence(Ordering::SeqCst);
        let need = if self.event_idx {
            let q = usize::from(self.qsize);
            // SAFETY: avail_event sits after the used ring.
            let event = unsafe { read_volatile(self.used.add(4 + 8 * q) as *const u16) };
            let new = self.avail_idx;
            new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old_idx)
        } else {
            // SAFETY: the used ring's flags word.
            unsafe { read_volatile(self.used as *const u16) & 1 == 0 }
        };
        if need {
            self.notifies += 1;
            w32(self.base, QUEUE_NOTIFY, 0);
        }
    }

    /// A kick with nothing new in the avail ring: what a hostile (or broken) driver floods
    /// the device with.
    pub fn empty_kick(&mut self) {
        w32(self.base, QUEUE_NOTIFY, 0);
    }

    pub fn avail_idx(&self) -> u16 {
        self.avail_idx
    }

    /// Whether the device has published used entries not yet taken.
    pub fn has_used(&self) -> bool {
        // SAFETY: the used ring's index, written by the device.
        unsafe { read_volatile(self.used.add(2) as *const u16) != self.last_used }
    }

    /// Takes every new used entry: `(head, length)`.
    pub fn reap(&mut self, mut f: impl FnMut(u16, u32)) -> usize {
        let q = usize::from(self.qsize);
        let mut n = 0;
        loop {
            // SAFETY: the used ring's index, written by the device.
            let idx = unsafe { read_volatile(self.used.add(2) as *const u16) };
            if idx == self.last_used {
                break;
            }
            fence(Ordering::SeqCst);
            while self.last_used != idx {
                let slot = usize::from(self.last_used) % q;
                // SAFETY: used elements are (u32 id, u32 len) after the 4-byte header.
                let (id, len) = unsafe {
                    let e = self.used.add(4 + 8 * slot) as *const u32;
                    (read_volatile(e), read_volatile(e.add(1)))
                };
                self.last_used = self.last_used.wrapping_add(1);
                f(id as u16, len);
                n += 1;
            }
        }
        n
    }
}
