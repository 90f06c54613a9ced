//! The descriptor-chain parser against arbitrary descriptor tables, indirect tables, avail
//! rings and guest memory layouts (two regions with a hole between): every chain the queue
//! hands out must parse to a request or a rejection, never a panic. And `ChainAt` (the walk a
//! restarted broker uses to resubmit a request it knows by its head only) must yield exactly
//! the descriptors the queue's own chain does.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use weir_broker::request::{ChainAt, DiskLimits, parse_chain};

/// Guest memory: 64 KiB at 0 (rings, tables, buffers), a hole, 16 KiB at 1 MiB.
const LOW: usize = 64 << 10;
const HIGH_AT: u64 = 1 << 20;
const HIGH: usize = 16 << 10;

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let (head, body) = data.split_at(16);
    // One mapping for the whole run (mapping per input would be most of the time spent),
    // rewritten in full from each input so no input sees another's bytes.
    static MEM: OnceLock<GuestMemoryMmap<()>> = OnceLock::new();
    let mem = MEM.get_or_init(|| {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), LOW), (GuestAddress(HIGH_AT), HIGH)])
            .unwrap()
    });
    let mut low = vec![0u8; LOW];
    let n = body.len().min(LOW);
    low[..n].copy_from_slice(&body[..n]);
    mem.write_slice(&low, GuestAddress(0)).unwrap();
    let mut high = vec![0u8; HIGH];
    if body.len() > LOW {
        let rest = &body[LOW..];
        let m = rest.len().min(HIGH);
        high[..m].copy_from_slice(&rest[..m]);
    }
    mem.write_slice(&high, GuestAddress(HIGH_AT)).unwrap();
    let size = 1u16 << (1 + head[0] % 8);
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    // Rings inside the low region (aligned as the spec wants), placed by the input.
    let desc = u64::from(head[1] % 8) * 0x1000;
    let avail = 0x8000 + u64::from(head[2] % 8) * 0x800;
    let used = 0xc000 + u64::from(head[3] % 4) * 0x1000;
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_event_idx(head[4] & 1 != 0);
    q.set_ready(true);
    if !q.is_valid(mem) {
        return;
    }
    let limits = DiskLimits {
        capacity_sectors: u64::from_le_bytes(head[8..16].try_into().unwrap()) >> (head[5] % 64),
        read_only: head[4] & 2 != 0,
        max_descriptors: 1 + usize::from(head[6]),
        max_discard_segments: 1 + u32::from(head[7] % 16),
        max_discard_sectors: 1 << 21,
        max_write_zeroes_segments: 1 + u32::from(head[7] >> 4),
        max_write_zeroes_sectors: 1 << 21,
    };
    let Ok(mut iter) = q.iter(mem) else {
        return;
    };
    let mut popped = 0;
    while let Some(chain) = iter.next() {
        let walked: Vec<_> = ChainAt::new(mem, GuestAddress(desc), size, chain.head_index())
            .map(|d| (d.addr(), d.len(), d.flags(), d.next()))
            .collect();
        let from_queue: Vec<_> = chain
            .clone()
            .map(|d| (d.addr(), d.len(), d.flags(), d.next()))
            .collect();
        assert_eq!(walked, from_queue, "ChainAt differs from the queue's chain");
        let parsed = parse_chain(chain, mem, &limits);
        let _ = parsed.used_len(0);
        let _ = parsed.used_len(1);
        popped += 1;
        if popped > 512 {
            break;
        }
    }
});
