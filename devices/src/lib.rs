//! The devices a `weir vm` guest sees.
//!
//! This crate holds the virtio-mmio transport (virtio 1.x, version 2), the vhost-user-blk
//! frontend device that forwards features, the memory table and vring setup to the broker and
//! then steps out of the data path (QueueNotify is an ioeventfd the broker polls, the broker's
//! call eventfd is an irqfd), and the 8250 serial port. Nothing here touches a block request's
//! data.

pub mod serial;
pub mod vhost_blk;
pub mod virtio_mmio;

use virtio_mmio::QueueConfig;

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    fn queue_max_sizes(&self) -> &[u16];
    /// Features offered to the driver.
    fn features(&self) -> u64;
    fn read_config(&mut self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK with these features and queues.
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String>;
    fn reset(&mut self);
    /// A queue notification that reached the VMM (no ioeventfd matched).
    fn notify(&mut self, queue: u32);
}
