//! The devices a `weir vm` guest sees.
//!
//! This crate holds the virtio-mmio transport (virtio 1.x, version 2), the vhost-user-blk
//! frontend device that forwards features, the memory table and vring setup to the broker and
//! then steps out of the data path (QueueNotify is an ioeventfd the broker polls, the broker's
//! call eventfd is an irqfd), the 8250 serial port, the i8042 reset line, and the MMIO/PIO bus
//! that dispatches trapped accesses. Nothing here touches a block request's data.
