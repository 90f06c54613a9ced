//! Where things live in guest-physical memory (x86-64, the Linux 64-bit boot protocol).

/// The boot GDT and IDT.
pub const BOOT_GDT: u64 = 0x500;
pub const BOOT_IDT: u64 = 0x520;
/// PVH boot: `hvm_start_info`, its memory map, its module list (the initrd).
pub const PVH_INFO: u64 = 0x6000;
pub const PVH_MEMMAP: u64 = 0x6040;
pub const PVH_MODLIST: u64 = 0x6200;
/// The zero page (`struct boot_params`); its address is passed in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// The boot stack (grows down from here).
pub const BOOT_STACK: u64 = 0x8ff0;
/// Identity page tables for the first 1 GiB (PML4, PDPT, PD).
pub const PML4: u64 = 0x9000;
pub const PDPT: u64 = 0xa000;
pub const PD: u64 = 0xb000;
/// MP floating pointer and table (SMP guests without ACPI).
pub const MPTABLE: u64 = 0x9fc00;
/// The kernel command line.
pub const CMDLINE: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 4096;
/// Extended BIOS data area start: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at or above 1 MiB.
pub const HIMEM_START: u64 = 0x100000;
/// virtio-mmio devices: one 4 KiB window each from here, GSIs from `VIRTIO_GSI_BASE`.
pub const MMIO_START: u64 = 0xd000_0000;
pub const MMIO_SIZE: u64 = 0x1000;
pub const VIRTIO_GSI_BASE: u32 = 5;
/// The 8250 serial port and its interrupt.
pub const SERIAL_PORT: u16 = 0x3f8;
pub const SERIAL_GSI: u32 = 4;
/// A byte written here ends the guest with a failure (as QEMU's isa-debug-exit).
pub const DEBUG_EXIT_PORT: u16 = 0x501;
/// The i8042 command port: 0xFE there pulses the reset line.
pub const I8042_PORT: u16 = 0x64;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const LAPIC_START: u64 = 0xfee0_0000;
