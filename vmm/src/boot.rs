//! Loading a kernel and describing the machine to it: the Linux 64-bit boot protocol.
//!
//! The kernel is an ELF `vmlinux` (or the probe guest, which enters the same way) or a
//! bzImage, loaded by linux-loader. The VMM writes the zero page (`struct boot_params`: the
//! setup header, the command line pointer, the initrd, the e820 map), an identity map of the
//! first 1 GiB and a flat GDT, and starts the boot vCPU in long mode at the kernel's 64-bit
//! entry with RSI pointing at the zero page (Documentation/arch/x86/boot.rst, "64-bit boot
//! protocol"). Sources: Firecracker's `arch/x86_64`, Cloud Hypervisor's `arch/src/x86_64`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::KernelLoader;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use crate::VmmError;
use crate::layout::*;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

/// The kind of kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// Which entry the boot vCPU takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// The Linux 64-bit boot protocol: long mode, RSI = the zero page.
    Linux64,
    /// PVH (Xen's direct boot, as QEMU and Firecracker use it): 32-bit protected mode, paging
    /// off, EBX = `hvm_start_info`.
    Pvh,
}

/// What the user asked for: PVH when the kernel has the note (`auto`), or one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootChoice {
    Auto,
    Linux64,
    Pvh,
}

/// What the boot vCPU needs.
#[derive(Debug, Clone)]
pub struct BootInfo {
    pub entry: u64,
    pub format: KernelFormat,
    pub mode: BootMode,
    /// The ELF carries a PVH entry note.
    pub pvh: bool,
    pub kernel_end: u64,
    pub initrd: Option<(u64, u64)>,
    /// The e820 map given to the guest: (start, size, type).
    pub e820: Vec<(u64, u64, u32)>,
}

fn detect(file: &mut File) -> Result<KernelFormat, VmmError> {
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic)
        .map_err(|e| VmmError::Kernel(format!("read: {e}")))?;
    if magic == *b"\x7fELF" {
        return Ok(KernelFormat::Elf);
    }
    let mut hdr = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))
        .and_then(|_| file.read_exact(&mut hdr))
        .map_err(|e| VmmError::Kernel(format!("read: {e}")))?;
    if hdr == *b"HdrS" {
        return Ok(KernelFormat::BzImage);
    }
    Err(VmmError::Kernel(
        "neither an ELF vmlinux nor a bzImage (no ELF magic, no 'HdrS' setup header)".into(),
    ))
}

/// Loads kernel, initrd and command line into `mem` and writes the zero page, GDT and page
/// tables.
pub fn load(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    choice: BootChoice,
) -> Result<BootInfo, VmmError> {
    let mut file =
        File::open(kernel).map_err(|e| VmmError::Kernel(format!("{}: {e}", kernel.display())))?;
    let format = detect(&mut file).map_err(|e| match e {
        VmmError::Kernel(m) => VmmError::Kernel(format!("{}: {m}", kernel.display())),
        other => other,
    })?;
    let loaded = match format {
        KernelFormat::Elf => Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))),
        KernelFormat::BzImage => {
            BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START)))
        }
    }
    .map_err(|e| VmmError::Kernel(format!("{}: {e}", kernel.display())))?;
    let kernel_end = loaded.kernel_load.raw_value() + loaded.kernel_end;
    let entry = match format {
        KernelFormat::Elf => loaded.kernel_load.raw_value(),
        // The 64-bit entry of a bzImage is 0x200 past where its protected-mode part loads.
        KernelFormat::BzImage => loaded.kernel_load.raw_value() + 0x200,
    };
    let pvh_entry = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(a) => Some(a.raw_value()),
        _ => None,
    };
    let pvh = pvh_entry.is_some();
    let mode = match (choice, pvh_entry) {
        (BootChoice::Linux64, _) | (BootChoice::Auto, None) => BootMode::Linux64,
        (BootChoice::Pvh | BootChoice::Auto, Some(_)) => BootMode::Pvh,
        (BootChoice::Pvh, None) => {
            return Err(VmmError::Kernel(format!(
                "{}: --boot pvh, but the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); use --boot linux64",
                kernel.display()
            )));
        }
    };

    let mut cl = Cmdline::new(CMDLINE_MAX).map_err(|e| VmmError::Config(e.to_string()))?;
    cl.insert_str(cmdline)
        .map_err(|e| VmmError::Config(format!("--cmdline: {e}")))?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE), &cl)
        .map_err(|e| VmmError::Config(format!("--cmdline: {e}")))?;

    // The initrd goes at the top of RAM, page-aligned, as far from the kernel as possible.
    let initrd = match initrd {
        None => None,
        Some(path) => {
            let mut f = File::open(path)
                .map_err(|e| VmmError::Kernel(format!("--initrd {}: {e}", path.display())))?;
            let size = f
                .metadata()
                .map_err(|e| VmmError::Kernel(format!("--initrd {}: {e}", path.display())))?
                .len();
            let addr = (ram_size.saturating_sub(size)) & !0xfff;
            if addr <= kernel_end {
                return Err(VmmError::Config(format!(
                    "--initrd {} ({} MiB) does not fit above the kernel in {} MiB of RAM; raise --mem",
                    path.display(),
                    size >> 20,
                    ram_size >> 20
                )));
            }
            let mut buf = Vec::with_capacity(size as usize);
            f.read_to_end(&mut buf)
                .map_err(|e| VmmError::Kernel(format!("--initrd {}: {e}", path.display())))?;
            mem.write_slice(&buf, GuestAddress(addr))
                .map_err(|e| VmmError::Memory(format!("write initrd: {e}")))?;
            Some((addr, size))
        }
    };

    let e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0x100000 - EBDA_START, E820_RESERVED),
        (HIMEM_START, ram_size - HIMEM_START, E820_RAM),
    ];
    let mut params = boot_params::default();
    if let Some(hdr) = loaded.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE as u32;
    params.hdr.cmdline_size = cl
        .as_cstring()
        .map(|c| c.as_bytes().len() as u32 + 1)
        .unwrap_or(1);
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (i, (addr, size, kind)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| VmmError::Memory(format!("write the zero page: {e}")))?;

    if mode == BootMode::Pvh {
        write_pvh_start_info(mem, &e820, initrd)?;
        write_gdt(mem, &PVH_GDT_ENTRIES)?;
    } else {
        write_gdt(mem, &BOOT_GDT_ENTRIES)?;
        write_page_tables(mem)?;
    }
    Ok(BootInfo {
        entry: match mode {
            BootMode::Pvh => pvh_entry.unwrap_or(entry),
            BootMode::Linux64 => entry,
        },
        format,
        mode,
        pvh,
        kernel_end,
        initrd,
        e820,
    })
}

/// A GDT entry from flags, base and limit (the usual packing).
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << 32)
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << 32)
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

/// The boot GDT: null, 64-bit code (0x08), data (0x10), TSS (0x18).
pub const BOOT_GDT_ENTRIES: [(u16, u32, u32); 4] = [
    (0, 0, 0),
    (0xa09b, 0, 0xfffff),
    (0xc093, 0, 0xfffff),
    (0x808b, 0, 0xfffff),
];

/// The PVH GDT: null, 32-bit code (0x08), data (0x10), TSS (0x18) — flat 4 GiB.
pub const PVH_GDT_ENTRIES: [(u16, u32, u32); 4] = [
    (0, 0, 0),
    (0xc09b, 0, 0xfffff),
    (0xc093, 0, 0xfffff),
    (0x008b, 0, 0x67),
];

fn write_gdt(mem: &GuestMemoryMmap, entries: &[(u16, u32, u32)]) -> Result<(), VmmError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::Memory(format!("write boot tables: {e}")))
    };
    for (i, (f, b, l)) in entries.iter().enumerate() {
        w(gdt_entry(*f, *b, *l), BOOT_GDT + i as u64 * 8)?;
    }
    w(0, BOOT_IDT)
}

/// `hvm_start_info` (version 1) with the command line, the initrd as module 0, and the e820
/// map as the PVH memory map (xen/include/public/arch-x86/hvm/start_info.h).
fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
) -> Result<(), VmmError> {
    use linux_loader::configurator::pvh::PvhBootConfigurator;
    use linux_loader::loader::elf::start_info::{
        hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
    };
    let mut info = hvm_start_info {
        magic: 0x336e_c578,
        version: 1,
        cmdline_paddr: CMDLINE,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|&(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
        params = BootParams::new::<hvm_start_info>(&info, GuestAddress(PVH_INFO));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                cmdline_paddr: 0,
                reserved: 0,
            }],
            GuestAddress(PVH_MODLIST),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| VmmError::Memory(format!("write hvm_start_info: {e}")))
}

fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), VmmError> {
    let w = |v: u64, at: u64| {
        mem.write_obj(v, GuestAddress(at))
            .map_err(|e| VmmError::Memory(format!("write boot tables: {e}")))
    };
    // PML4[0] → PDPT, PDPT[0] → PD, PD: 512 × 2 MiB identity pages (present, writable).
    w(PDPT | 0x03, PML4)?;
    w(PD | 0x03, PDPT)?;
    for i in 0..512u64 {
        w((i << 21) | 0x83, PD + i * 8)?;
    }
    Ok(())
}
