//! A small fio: the job from the command line, phases, latency histograms, JSON out.
//!
//! Options (all `probe.<key>=<value>`):
//! - `verify=1`: first write every block of the region once in random order with a
//!   per-sector pattern (sector number and a hash of it), then read every block back and check it;
//! - `rw=randread|randwrite|randrw|read|write` (with `rwmixread=70`), `bs=4096`, `iodepth=32`,
//!   `runtime_ms=N` or `count=N`, `rate_iops=N`: the main phase (reads are verified when the
//!   region was written with `verify=1`); `ramp_ms=N`: the same workload for N ms first, in a
//!   phase of its own named `ramp` (fio's `ramp_time`: the main phase's figures start after
//!   the backend's start-up);
//! - `size_mib=N`: the region (default: the whole disk); `mode=poll|irq|halt` (poll: spin on
//!   the used ring, no interrupts; irq: interrupts, spinning until one arrives; halt:
//!   interrupts, the vCPU halted while it waits — a real guest's idle, its host thread asleep);
//!   `event_idx=0|1`;
//!   `queue_size=256` (the ring size asked for, at most the device's), `hostile=1`: malformed requests first, each checked for its status, with normal I/O
//!   around them; `tsc_khz=N`: the TSC rate (for latencies), `seed=N`.

use core::ptr::addr_of_mut;

use crate::options::Options;
use crate::virtio::{Blk, S_IOERR, S_OK, S_UNSUPP, Seg, T_IN, T_OUT};
use crate::{irq_count, println, rdtsc};

const MAX_DATA: usize = 8 << 20;
#[repr(C, align(4096))]
struct Data([u8; MAX_DATA]);
static mut DATA: Data = Data([0; MAX_DATA]);

/// Latency histogram: 1 µs buckets below 32.768 ms, 32 µs buckets from there to ~1.08 s.
const FINE: usize = 32768;
const COARSE_US: u64 = 32;
const BUCKETS: usize = 65536;
static mut HIST: [u32; BUCKETS] = [0; BUCKETS];

fn bucket(lat_us: u64) -> usize {
    if (lat_us as usize) < FINE {
        lat_us as usize
    } else {
        (FINE + ((lat_us - FINE as u64) / COARSE_US) as usize).min(BUCKETS - 1)
    }
}

/// The upper edge of bucket `i`, µs.
fn bucket_us(i: usize) -> u64 {
    if i < FINE {
        i as u64
    } else {
        FINE as u64 + (i - FINE) as u64 * COARSE_US + COARSE_US - 1
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn mix(seed: u64, sector: u64, word: u64) -> u64 {
    let mut r = Rng(seed ^ sector.wrapping_mul(0x1000_0000_01b3) ^ (word << 48));
    r.next()
}

/// Fills `buf` (a whole number of sectors starting at `sector`) with the pattern.
fn fill(buf: &mut [u8], sector: u64, seed: u64) {
    for (s, chunk) in buf.chunks_mut(512).enumerate() {
        let sec = sector + s as u64;
        for (w, word) in chunk.chunks_mut(8).enumerate() {
            let v = if w == 0 {
                sec
            } else {
                mix(seed, sec, w as u64)
            };
            word.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// Sectors of `buf` that do not hold the pattern.
fn check(buf: &[u8], sector: u64, seed: u64) -> u64 {
    let mut bad = 0;
    for (s, chunk) in buf.chunks(512).enumerate() {
        let sec = sector + s as u64;
        let ok = chunk.chunks(8).enumerate().all(|(w, word)| {
            let v = if w == 0 {
                sec
            } else {
                mix(seed, sec, w as u64)
            };
            word == v.to_le_bytes()
        });
        if !ok {
            bad += 1;
        }
    }
    bad
}

/// A full-period walk over `0..n` in scrambled order (LCG over the next power of two).
struct Permutation {
    n: u64,
    m: u64,
    x: u64,
    left: u64,
}
impl Permutation {
    fn new(n: u64, seed: u64) -> Self {
        let m = n.next_power_of_two().max(2);
        Permutation {
            n,
            m,
            x: seed % m,
            left: n,
        }
    }
    fn next(&mut self) -> Option<u64> {
        if self.left == 0 {
            return None;
        }
        loop {
            self.x = (self
                .x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407))
                & (self.m - 1);
            if self.x < self.n {
                self.left -= 1;
                return Some(self.x);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// Every block once, in scrambled order.
    Cover,
    Random,
    Sequential,
}

struct Phase {
    name: &'static str,
    read_pct: u64,
    order: Order,
    count: u64,
    runtime_cycles: u64,
    verify_reads: bool,
}

struct PhaseResult {
    ios: u64,
    bytes: u64,
    cycles: u64,
    errors: u64,
    verify_errors: u64,
    lat_sum_us: u64,
    lat_max_us: u64,
    /// Used entries for heads not in flight (answered twice, or never posted).
    unexpected: u64,
}

struct Job {
    bs: u64,
    depth: u16,
    blocks: u64,
    seed: u64,
    tsc_khz: u64,
    irq_mode: bool,
    /// Halt the vCPU while waiting for an interrupt (irq mode only).
    halt: bool,
    rate_iops: u64,
}

fn us(cycles: u64, tsc_khz: u64) -> u64 {
    cycles * 1000 / tsc_khz.max(1)
}

fn run_phase(blk: &mut Blk, job: &Job, p: &Phase, rng: &mut Rng) -> PhaseResult {
    // SAFETY: the histogram and the data area are used by this phase alone.
    let hist = unsafe { &mut *addr_of_mut!(HIST) };
    hist.fill(0);
    let data = unsafe { &mut (*addr_of_mut!(DATA)).0 };
    let spb = job.bs / 512;
    let mut perm = Permutation::new(job.blocks, job.seed ^ 0x5a5a);
    let mut seq = 0u64;
    // Per slot: (block, is_read, submit tsc).
    let mut slots = [(0u64, false, 0u64); 256];
    // Per slot: posted and not yet answered. A device that answers a request twice (or one
    // never posted) is counted as an error, not believed: a restarted backend must answer
    // each request exactly once.
    let mut busy = [false; 256];
    let mut free: [u16; 256] = [0; 256];
    debug_assert!(job.depth as usize <= slots.len());
    let mut nfree = job.depth as usize;
    for (i, f) in free.iter_mut().enumerate().take(nfree) {
        *f = i as u16;
    }
    let mut r = PhaseResult {
        ios: 0,
        bytes: 0,
        cycles: 0,
        errors: 0,
        verify_errors: 0,
        lat_sum_us: 0,
        lat_max_us: 0,
        unexpected: 0,
    };
    let start = rdtsc();
    let per_io = (job.tsc_khz * 1000).checked_div(job.rate_iops).unwrap_or(0);
    let mut issued = 0u64;
    let mut in_flight = 0usize;
    let mut done_issuing = false;
    let mut last_irqs = irq_count();
    blk.want_interrupts(job.irq_mode);
    loop {
        // Submit while slots are free.
        let old = blk.avail_idx();
        let mut posted = 0;
        while nfree > 0 && !done_issuing {
            let now = rdtsc();
            if (p.count > 0 && issued >= p.count)
                || (p.runtime_cycles > 0 && now - start >= p.runtime_cycles)
            {
                done_issuing = true;
                break;
            }
            if per_io > 0 && now < start + issued * per_io {
                break;
            }
            let block = match p.order {
                Order::Cover => match perm.next() {
                    Some(b) => b,
                    None => {
                        done_issuing = true;
                        break;
                    }
                },
                Order::Random => rng.next() % job.blocks,
                Order::Sequential => {
                    seq = (seq + 1) % job.blocks;
                    seq
                }
            };
            let is_read = rng.next() % 100 < p.read_pct;
            nfree -= 1;
            let slot = free[nfree];
            let buf =
                &mut data[slot as usize * job.bs as usize..(slot as usize + 1) * job.bs as usize];
            if !is_read {
                fill(buf, block * spb, job.seed);
            }
            slots[slot as usize] = (block, is_read, rdtsc());
            busy[slot as usize] = true;
            blk.post_rw(
                slot,
                if is_read { T_IN } else { T_OUT },
                block * spb,
                buf.as_ptr() as u64,
                job.bs as u32,
            );
            issued += 1;
            in_flight += 1;
            posted += 1;
        }
        if posted > 0 {
            blk.notify(old);
        }
        if in_flight == 0 && done_issuing {
            break;
        }
        if job.irq_mode {
            // Wait for the interrupt handler (CPL0) to count one, then look at the ring. The
            // used ring is looked at too: interrupts were asked for (used_event written and
            // fenced) before, so an answer published before that write is seen here, and
            // one published after it interrupts.
            let t0 = rdtsc();
            while irq_count() == last_irqs && !blk.has_used() && rdtsc() - t0 < job.tsc_khz * 20 {
                if job.halt {
                    crate::sys_wait_irq(last_irqs);
                } else {
                    core::hint::spin_loop();
                }
            }
            last_irqs = irq_count();
        }
        let tsc_khz = job.tsc_khz;
        blk.reap(|head, _len| {
            let Some(&(block, is_read, t)) = slots.get(head as usize / 3) else {
                return;
            };
            let slot = head / 3;
            if head % 3 != 0 || !busy.get(slot as usize).copied().unwrap_or(false) {
                r.errors += 1;
                r.unexpected += 1;
                return;
            }
            busy[slot as usize] = false;
            let lat = us(rdtsc() - t, tsc_khz);
            hist[bucket(lat)] += 1;
            r.lat_sum_us += lat;
            r.lat_max_us = r.lat_max_us.max(lat);
            r.ios += 1;
            r.bytes += job.bs;
            if Blk::status(slot) != S_OK {
                r.errors += 1;
            } else if is_read && p.verify_reads {
                let buf =
                    &data[slot as usize * job.bs as usize..(slot as usize + 1) * job.bs as usize];
                r.verify_errors += check(buf, block * spb, job.seed);
            }
            free[nfree] = slot;
            nfree += 1;
            in_flight -= 1;
        });
        if job.irq_mode {
            blk.want_interrupts(true);
        }
    }
    r.cycles = rdtsc() - start;
    r
}

fn percentile(q: f64, total: u64) -> u64 {
    // SAFETY: read after the phase that filled it.
    let hist = unsafe { &*addr_of_mut!(HIST) };
    let want = (total * (q * 1000.0) as u64).div_ceil(1000);
    let mut seen = 0u64;
    for (i, n) in hist.iter().enumerate() {
        seen += u64::from(*n);
        if seen >= want.max(1) {
            return bucket_us(i);
        }
    }
    bucket_us(BUCKETS - 1)
}

fn print_phase(p: &Phase, r: &PhaseResult, job: &Job, first: bool) {
    let secs = r.cycles as f64 / (job.tsc_khz.max(1) as f64 * 1000.0);
    let iops = if secs > 0.0 { r.ios as f64 / secs } else { 0.0 };
    crate::console::print(format_args!(
        "{}{{\"name\":\"{}\",\"bs\":{},\"iodepth\":{},\"ios\":{},\"bytes\":{},\"seconds\":{:.4},\"iops\":{:.1},\"mib_s\":{:.2},\"errors\":{},\"verify_errors\":{},\"unexpected\":{},\"lat_us\":{{\"mean\":{:.1},\"p50\":{},\"p99\":{},\"p999\":{},\"max\":{}}}}}",
        if first { "" } else { "," },
        p.name,
        job.bs,
        job.depth,
        r.ios,
        r.bytes,
        secs,
        iops,
        r.bytes as f64 / secs.max(1e-9) / 1048576.0,
        r.errors,
        r.verify_errors,
        r.unexpected,
        r.lat_sum_us as f64 / r.ios.max(1) as f64,
        percentile(0.50, r.ios),
        percentile(0.99, r.ios),
        percentile(0.999, r.ios),
        r.lat_max_us
    ));
}

/// One malformed request class: its chain and the status the broker must answer.
struct Hostile {
    class: &'static str,
    expect: u8,
    ok: bool,
    got: u8,
}

/// Sends each malformed class with a good read beside it; checks both answers.
fn hostile(blk: &mut Blk, job: &Job) -> [Hostile; 7] {
    // SAFETY: the data area is idle between phases.
    let data = unsafe { &mut (*addr_of_mut!(DATA)).0 };
    let buf = data.as_mut_ptr() as u64;
    let good = buf + 4096;
    let cap = blk.capacity;
    let classes: [(&'static str, u8); 7] = [
        ("unknown_type", S_UNSUPP),
        ("out_of_range", S_IOERR),
        ("bad_length", S_IOERR),
        ("wrong_direction", S_IOERR),
        ("short_header", S_IOERR),
        ("outside_guest_memory", S_IOERR),
        ("no_status_byte", 0xee),
    ];
    let mut out = classes.map(|(class, expect)| Hostile {
        class,
        expect,
        ok: false,
        got: 0,
    });
    // Hostile chains use the 8 head slots kept free at the top of the queue; good reads slot 0.
    let top = blk.qsize / 3 - 8;
    for (k, h) in out.iter_mut().enumerate() {
        let head = top + k as u16;
        let first = head * 3;
        let hdr = Blk::header_addr(head);
        let st = Blk::status_addr(head);
        let set_hdr = |kind: u64, sector: u64| {
            // SAFETY: this slot's header and status, not in flight.
            unsafe {
                core::ptr::write_volatile(hdr as *mut u64, kind);
                core::ptr::write_volatile((hdr + 8) as *mut u64, sector);
                core::ptr::write_volatile(st as *mut u8, 0xee);
            }
        };
        let hseg = |len| Seg {
            addr: hdr,
            len,
            write: false,
        };
        let sseg = Seg {
            addr: st,
            len: 1,
            write: true,
        };
        let dseg = |addr, len, write| Seg { addr, len, write };
        let old = blk.avail_idx();
        match h.class {
            "unknown_type" => {
                set_hdr(0xff, 0);
                blk.post_chain(first, &[hseg(16), dseg(buf, 512, true), sseg]);
            }
            "out_of_range" => {
                set_hdr(0, cap);
                blk.post_chain(first, &[hseg(16), dseg(buf, 512, true), sseg]);
            }
            "bad_length" => {
                set_hdr(0, 0);
                blk.post_chain(first, &[hseg(16), dseg(buf, 100, true), sseg]);
            }
            "wrong_direction" => {
                set_hdr(0, 0);
                blk.post_chain(first, &[hseg(16), dseg(buf, 512, false), sseg]);
            }
            "short_header" => {
                set_hdr(0, 0);
                blk.post_chain(first, &[hseg(8), dseg(buf, 512, true), sseg]);
            }
            "outside_guest_memory" => {
                set_hdr(0, 0);
                blk.post_chain(first, &[hseg(16), dseg(0x40_0000_0000, 4096, true), sseg]);
            }
            _ => {
                set_hdr(1, 0);
                blk.post_chain(first, &[hseg(16), dseg(buf, 512, false)]);
            }
        }
        // A good read of block 0 right behind it.
        blk.post_rw(0, T_IN, 0, good, job.bs as u32);
        blk.notify(old);
        let mut seen = (false, false);
        let t0 = rdtsc();
        while !(seen.0 && seen.1) && rdtsc() - t0 < job.tsc_khz * 5000 {
            blk.reap(|id, len| {
                if id == first {
                    seen.0 = true;
                    h.got = Blk::status(head);
                    h.ok = h.got == h.expect && (h.expect != 0xee || len == 0);
                } else if id == 0 {
                    seen.1 = true;
                    if Blk::status(0) != S_OK {
                        h.ok = false;
                    }
                }
            });
        }
        if !(seen.0 && seen.1) {
            h.ok = false;
        }
    }
    out
}

/// Runs the job; false when it could not run or found errors.
pub fn run(cmdline: &'static str, pvh: bool) -> bool {
    let o = Options::parse(cmdline);
    println!(
        "weir-probe: {}",
        if pvh {
            "PVH entry"
        } else {
            "64-bit boot protocol"
        }
    );
    let Some(dev) = o.devices[o.num("disk", 0) as usize % 8] else {
        println!("<<<WEIR:PROBE-FATAL>>> no virtio_mmio.device= on the command line: {cmdline}");
        return false;
    };
    let halt = o.get("mode") == Some("halt");
    let irq_mode = halt || o.get("mode") == Some("irq");
    let want_queue = o.num("queue_size", 256).min(1024) as u16;
    let mut blk = match Blk::init(dev.base, dev.irq, o.num("event_idx", 1) != 0, want_queue) {
        Ok(b) => b,
        Err(e) => {
            println!("<<<WEIR:PROBE-FATAL>>> virtio-blk at {:#x}: {e}", dev.base);
            return false;
        }
    };
    if irq_mode {
        blk.route_irq(crate::IRQ_VECTOR);
    }
    if halt {
        // A safety net against a lost interrupt (at most 10 ms), and the clock of a
        // rate-limited job: with nothing in flight only the tick wakes the vCPU for its next
        // request, so it ticks at a quarter of the request interval (at least every 250 µs).
        let rate = o.num("rate_iops", 0);
        let period_ns = match 1_000_000_000u64.checked_div(rate) {
            Some(interval_ns) => (interval_ns / 4).clamp(250_000, 10_000_000),
            None => 10_000_000,
        };
        crate::arm_tick(period_ns as u32);
    }
    let bs = o.num("bs", 4096).clamp(512, 1 << 20) / 512 * 512;
    // Three descriptors per request; eight slots stay free for hostile chains.
    let max_depth = (u64::from(blk.qsize) / 3 - 8)
        .min(248)
        .min(MAX_DATA as u64 / bs);
    let depth = o.num("iodepth", 1).clamp(1, max_depth) as u16;
    let region = o
        .get("size_mib")
        .and_then(crate::options::parse_num)
        .map_or(blk.capacity * 512, |m| (m << 20).min(blk.capacity * 512));
    let job = Job {
        bs,
        depth,
        blocks: (region / bs).max(1),
        seed: o.num("seed", 0x77e1),
        tsc_khz: o.num("tsc_khz", 1_000_000),
        irq_mode,
        halt,
        rate_iops: o.num("rate_iops", 0),
    };
    let mut rng = Rng(job.seed);
    let mut phases: [Option<Phase>; 4] = [None, None, None, None];
    let verify = o.num("verify", 0) != 0;
    if verify {
        phases[0] = Some(Phase {
            name: "write",
            read_pct: 0,
            order: Order::Cover,
            count: 0,
            runtime_cycles: 0,
            verify_reads: false,
        });
        phases[1] = Some(Phase {
            name: "verify",
            read_pct: 100,
            order: Order::Cover,
            count: 0,
            runtime_cycles: 0,
            verify_reads: true,
        });
    }
    if let Some(rw) = o.get("rw") {
        let (read_pct, order) = match rw {
            "randread" => (100, Order::Random),
            "randwrite" => (0, Order::Random),
            "randrw" => (o.num("rwmixread", 50).min(100), Order::Random),
            "read" => (100, Order::Sequential),
            "write" => (0, Order::Sequential),
            _ => {
                println!(
                    "<<<WEIR:PROBE-FATAL>>> probe.rw={rw}: use randread, randwrite, randrw, read or write"
                );
                return false;
            }
        };
        let ramp_ms = o.num("ramp_ms", 0);
        if ramp_ms > 0 {
            phases[2] = Some(Phase {
                name: "ramp",
                read_pct,
                order,
                count: 0,
                runtime_cycles: ramp_ms * job.tsc_khz,
                verify_reads: verify,
            });
        }
        let runtime_ms = o.num("runtime_ms", 0);
        let count = o.num("count", if runtime_ms == 0 { job.blocks } else { 0 });
        phases[3] = Some(Phase {
            name: rw,
            read_pct,
            order,
            count,
            runtime_cycles: runtime_ms * job.tsc_khz,
            verify_reads: verify,
        });
    }
    if blk.read_only && verify {
        println!("<<<WEIR:PROBE-FATAL>>> the disk is read-only; drop probe.verify");
        return false;
    }
    let hostile_results = (o.num("hostile", 0) != 0).then(|| hostile(&mut blk, &job));
    // A neighbour that only burns its vCPU: `spin_ms` with no kicks, `kick_flood_ms` kicking
    // the device with nothing to do as fast as it can (the broker must not let that starve
    // other guests).
    let spin_ms = o.num("spin_ms", 0);
    let flood_ms = o.num("kick_flood_ms", 0);
    let mut flood_kicks = 0u64;
    for (ms, kick) in [(spin_ms, false), (flood_ms, true)] {
        let end = rdtsc() + ms * job.tsc_khz;
        while ms > 0 && rdtsc() < end {
            if kick {
                blk.empty_kick();
                flood_kicks += 1;
            } else {
                core::hint::spin_loop();
            }
        }
    }
    crate::console::print(format_args!(
        "<<<WEIR:PROBE-JSON:BEGIN>>>\n{{\"probe\":\"weir-probe\",\"boot\":\"{}\",\"mode\":\"{}\",\"device\":{{\"base\":{},\"irq\":{},\"capacity_sectors\":{},\"queue_size\":{},\"event_idx\":{},\"read_only\":{},\"seg_max\":{}}},\"phases\":[",
        if pvh { "pvh" } else { "linux64" },
        match (irq_mode, halt) {
            (_, true) => "halt",
            (true, _) => "irq",
            _ => "poll",
        },
        dev.base,
        dev.irq,
        blk.capacity,
        blk.qsize,
        blk.event_idx,
        blk.read_only,
        blk.seg_max
    ));
    let (mut errors, mut verify_errors) = (0, 0);
    let mut first = true;
    for p in phases.iter().flatten() {
        let r = run_phase(&mut blk, &job, p, &mut rng);
        errors += r.errors;
        verify_errors += r.verify_errors;
        print_phase(p, &r, &job, first);
        first = false;
    }
    crate::console::print(format_args!("],\"hostile\":["));
    if let Some(h) = &hostile_results {
        for (i, x) in h.iter().enumerate() {
            crate::console::print(format_args!(
                "{}{{\"class\":\"{}\",\"expected\":{},\"status\":{},\"ok\":{}}}",
                if i == 0 { "" } else { "," },
                x.class,
                x.expect,
                x.got,
                x.ok
            ));
        }
    }
    crate::console::print(format_args!(
        "],\"interrupts\":{},\"halts\":{},\"notifies\":{},\"flood_kicks\":{},\"errors\":{},\"verify_errors\":{}}}\n<<<WEIR:PROBE-JSON:END>>>\n",
        irq_count(),
        crate::HALTS.load(core::sync::atomic::Ordering::Relaxed),
        blk.notifies,
        flood_kicks,
        errors,
        verify_errors
    ));
    let hostile_ok = hostile_results.is_none_or(|h| h.iter().all(|x| x.ok));
    errors == 0 && verify_errors == 0 && hostile_ok
}
