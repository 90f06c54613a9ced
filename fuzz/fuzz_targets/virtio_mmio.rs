//! `weir vm`'s virtio-mmio register interface: any sequence of reads and writes of any size
//! at any offset, from a driver that may skip steps, never panics the VMM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_devices::VirtioDevice;
use weir_devices::virtio_mmio::{QueueConfig, VirtioMmio};

struct Dev;
impl VirtioDevice for Dev {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 128]
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 29) | (1 << 6)
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8)
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(&mut self, _: u64, q: &[QueueConfig]) -> Result<(), String> {
        if q.iter().any(|q| q.ready && q.size > q.max_size) {
            return Err("queue too big".into());
        }
        Ok(())
    }
    fn reset(&mut self) {}
    fn notify(&mut self, _: u32) {}
}

fuzz_target!(|data: &[u8]| {
    let mut t = VirtioMmio::new("fuzz", Box::new(Dev));
    // Each op: [kind|size, offset lo, offset hi, value (4 bytes)].
    for op in data.chunks_exact(7) {
        let offset = u64::from(u16::from_le_bytes([op[1], op[2]]) % 0x200);
        let size = [1usize, 2, 4, 8, 3][usize::from(op[0] >> 1) % 5];
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&op[3..7]);
        if op[0] & 1 == 0 {
            t.read(offset, &mut buf[..size]);
        } else {
            t.write(offset, &buf[..size]);
        }
    }
});
