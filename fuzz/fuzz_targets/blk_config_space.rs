//! The virtio-blk config space the broker serves to a vhost-user frontend's GET_CONFIG, for
//! any device shape and any offset and size the frontend asks: answered, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_broker::device::BlkDeviceSpec;

fuzz_target!(|data: &[u8]| {
    if data.len() < 24 {
        return;
    }
    let u32_at = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap());
    let spec = BlkDeviceSpec {
        num_queues: u16::from_le_bytes([data[0], data[1]]),
        queue_size: u16::from_le_bytes([data[2], data[3]]),
        capacity_sectors: u64::from_le_bytes(data[4..12].try_into().unwrap()),
        read_only: data[12] & 1 != 0,
        physical_block_bytes: u32_at(13),
    };
    let (offset, size) = (u32_at(17), u32_at(20) % 4096);
    let out = spec.read_config(offset, size);
    assert_eq!(out.len(), size as usize);
    let _ = spec.limits();
});
