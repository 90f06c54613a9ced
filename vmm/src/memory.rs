//! Guest RAM: one memfd, mapped shared, so the broker can map the same pages (vhost-user
//! hands it the fd) and KVM backs the guest with them.

use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::VmmError;

/// Where guest RAM below 4 GiB ends at most: the rest of the 32-bit space holds device MMIO
/// (virtio-mmio from [`crate::layout::MMIO_START`], the IOAPIC and LAPIC).
pub const MAX_LOW_RAM: u64 = 3 << 30;

/// The guest's RAM and the memfd behind it.
#[derive(Debug)]
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    pub memfd: File,
    pub size: u64,
}

impl GuestRam {
    pub fn new(size: u64) -> Result<Self, VmmError> {
        if !((16 << 20)..=MAX_LOW_RAM).contains(&size) {
            return Err(VmmError::Config(format!(
                "--mem {} MiB: must be 16 MiB to {} MiB",
                size >> 20,
                MAX_LOW_RAM >> 20
            )));
        }
        let name = c"weir-guest-ram";
        // SAFETY: memfd_create with a valid NUL-terminated name; the fd is owned by the File.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(VmmError::Memory(format!(
                "memfd_create: {}",
                std::io::Error::last_os_error()
            )));
        }
        // SAFETY: fd was just returned by memfd_create and nothing else owns it.
        let memfd = unsafe { File::from_raw_fd(fd) };
        memfd
            .set_len(size)
            .map_err(|e| VmmError::Memory(format!("size guest RAM to {size} bytes: {e}")))?;
        let file = memfd
            .try_clone()
            .map_err(|e| VmmError::Memory(e.to_string()))?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )
        .map_err(|e| VmmError::Memory(format!("map guest RAM: {e}")))?;
        let memory = GuestMemoryMmap::from_regions(vec![region])
            .map_err(|e| VmmError::Memory(format!("guest memory: {e}")))?;
        Ok(GuestRam {
            memory,
            memfd,
            size,
        })
    }
}
