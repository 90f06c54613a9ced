//! The queue's idle check: a kick or an interrupt lost between the guest and the broker must
//! cost the guest a second, not its disk. A real queue worker on a real file over io_uring,
//! the rings in guest memory built with `MockSplitQueue`, the device driven as its queue
//! thread drives it.

use std::io::Read;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryAtomic};

use crate::device::{BlkDevice, BlkDeviceSpec};
use crate::request::VIRTIO_BLK_T_IN;
use crate::worker_tests::{F_WRITE, QUEUE_SIZE, desc, disk, header, memory};

#[test]
fn an_idle_queue_takes_requests_no_kick_announced_and_interrupts_a_guest_left_behind() {
    let d = disk(false);
    let mem = memory();
    let mock = MockSplitQueue::create(&mem, GuestAddress(0), QUEUE_SIZE);
    let atomic = GuestMemoryAtomic::new(mem.clone());
    let spec = BlkDeviceSpec {
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        capacity_sectors: d.ctx.limits.capacity_sectors,
        read_only: false,
        physical_block_bytes: 4096,
    };
    let device = BlkDevice::new(spec, d.ctx.clone()).unwrap();
    device.update_memory(atomic.clone());
    let vring = VringRwLock::new(atomic, QUEUE_SIZE).unwrap();
    vring.set_queue_size(QUEUE_SIZE);
    vring
        .set_queue_info(
            mock.desc_table_addr().0,
            mock.avail_addr().0,
            mock.used_addr().0,
        )
        .unwrap();
    vring.set_queue_event_idx(true);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let (mut interrupts, call) = std::io::pipe().unwrap();
    vring.set_call(Some(std::fs::File::from(std::os::fd::OwnedFd::from(call))));
    let counters = &d.ctx.counters;
    let used_idx = || -> u16 { mem.read_obj(mock.used_addr().unchecked_add(2)).unwrap() };
    // The guest's `used_event`, after the avail ring's entries.
    let used_event = mock
        .avail_addr()
        .unchecked_add(4 + 2 * u64::from(QUEUE_SIZE));

    // Nothing posted: an idle check finds nothing.
    device.idle_check(0, &vring).unwrap();
    assert_eq!(counters.unkicked.load(Ordering::Relaxed), 0);
    assert_eq!(counters.resignals.load(Ordering::Relaxed), 0);

    // The guest posts a read and its kick is lost: the idle check takes it.
    let (h, data, status) = (0x20_0000, 0x21_0000, 0x22_0000);
    header(&mem, h, VIRTIO_BLK_T_IN, 8);
    mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
    mock.add_desc_chains(
        &[
            desc(h, 16, 1, 1),
            desc(data, 4096, F_WRITE | 1, 2),
            desc(status, 1, F_WRITE, 0),
        ],
        0,
    )
    .unwrap();
    device.idle_check(0, &vring).unwrap();
    assert_eq!(counters.unkicked.load(Ordering::Relaxed), 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx() != 1 {
        assert!(
            Instant::now() < deadline,
            "the unkicked read was not answered"
        );
        std::thread::sleep(Duration::from_millis(5));
        device.service(0, &vring).unwrap();
    }
    assert_eq!(mem.read_obj::<u8>(GuestAddress(status)).unwrap(), 0);
    let mut signal = [0u8; 8];
    interrupts.read_exact(&mut signal).unwrap();

    // The guest has not caught up (its used_event still 0, one answer past it): interrupted
    // again, and counted.
    device.idle_check(0, &vring).unwrap();
    assert_eq!(counters.resignals.load(Ordering::Relaxed), 1);
    interrupts.read_exact(&mut signal).unwrap();

    // Caught up: nothing more, and no request was taken twice.
    mem.write_obj(1u16.to_le(), used_event).unwrap();
    device.idle_check(0, &vring).unwrap();
    assert_eq!(counters.resignals.load(Ordering::Relaxed), 1);
    assert_eq!(counters.unkicked.load(Ordering::Relaxed), 1);
    assert_eq!(used_idx(), 1);
    assert_eq!(counters.reads.load(Ordering::Relaxed), 1);
}
