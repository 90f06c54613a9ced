//! vCPU state at power-on for the 64-bit boot protocol: CPUID from KVM's supported set (with
//! the hypervisor bit and each vCPU's APIC ID), the MSRs Linux expects, the LAPIC's LINT pins,
//! long mode with the boot GDT and identity page tables, and the entry registers.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment,
};
use kvm_ioctls::{Kvm, VcpuFd};

use crate::VmmError;
use crate::boot::{BOOT_GDT_ENTRIES, gdt_entry};
use crate::layout::*;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;

const X86_CR0_PE: u64 = 1;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// KVM's supported CPUID, adjusted for vCPU `id` of `count`.
pub fn cpuid_for(kvm: &Kvm, id: u8, count: u8) -> Result<CpuId, VmmError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::Kvm(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // Initial APIC ID, logical processor count, and "running under a hypervisor".
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                e.ecx |= 1 << 31;
                if count > 1 {
                    e.edx |= 1 << 28; // HTT: the count above is meaningful
                }
            }
            0xb => {
                e.edx = u32::from(id); // x2APIC ID
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

fn segment(index: u16, entry: u64) -> kvm_segment {
    let flags = ((entry >> 40) & 0xf0ff) as u16;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: index * 8,
        type_: (flags & 0xf) as u8,
        present: ((flags >> 7) & 1) as u8,
        dpl: ((flags >> 5) & 3) as u8,
        db: ((flags >> 14) & 1) as u8,
        s: ((flags >> 4) & 1) as u8,
        l: ((flags >> 13) & 1) as u8,
        g: ((flags >> 15) & 1) as u8,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts the boot vCPU in long mode at `entry` with RSI = the zero page.
pub fn setup_boot_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), VmmError> {
    let kvm_err = |what: &str| {
        let what = what.to_string();
        move |e: kvm_ioctls::Error| VmmError::Kvm(format!("{what}: {e}"))
    };
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let code = segment(1, gdt_entry(BOOT_GDT_ENTRIES[1].0, 0, 0xfffff));
    let data = segment(2, gdt_entry(BOOT_GDT_ENTRIES[2].0, 0, 0xfffff));
    let tss = segment(3, gdt_entry(BOOT_GDT_ENTRIES[3].0, 0, 0xfffff));
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (BOOT_GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;
    sregs.cr3 = PML4;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(())
}

/// Puts the boot vCPU at a PVH entry: 32-bit protected mode, flat segments, paging off,
/// EBX = `hvm_start_info` (the PVH boot ABI, Xen's `docs/misc/pvh.pandoc`).
pub fn setup_pvh_vcpu(vcpu: &VcpuFd, entry: u64) -> Result<(), VmmError> {
    use crate::boot::PVH_GDT_ENTRIES;
    let kvm_err = |what: &str| {
        let what = what.to_string();
        move |e: kvm_ioctls::Error| VmmError::Kvm(format!("{what}: {e}"))
    };
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let seg = |i: usize| {
        let (f, b, l) = PVH_GDT_ENTRIES[i];
        let mut s = segment(i as u16, gdt_entry(f, b, l));
        s.limit = if i == 3 { l } else { 0xffff_ffff };
        s
    };
    sregs.gdt.base = BOOT_GDT;
    sregs.gdt.limit = (PVH_GDT_ENTRIES.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT;
    sregs.idt.limit = 7;
    sregs.cs = seg(1);
    let data = seg(2);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = seg(3);
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rbx: PVH_INFO,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(())
}

/// CPUID, MSRs, FPU and LAPIC of vCPU `id` (every vCPU; APs then wait for INIT/SIPI in KVM).
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, id: u8, count: u8) -> Result<(), VmmError> {
    let kvm_err = |what: &str| {
        let what = what.to_string();
        move |e: kvm_ioctls::Error| VmmError::Kvm(format!("{what}: {e}"))
    };
    vcpu.set_cpuid2(&cpuid_for(kvm, id, count)?)
        .map_err(kvm_err("KVM_SET_CPUID2"))?;
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, 1),          // fast strings
        (MSR_MTRR_DEF_TYPE, (1 << 11) | 6), // MTRRs on, default write-back
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|e| VmmError::Kvm(format!("MSRs: {e:?}")))?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        log::warn!(
            "vCPU {id}: KVM took {set} of {} boot MSRs (index {:#x} refused)",
            entries.len(),
            entries[set].index
        );
    }
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm_err("KVM_SET_FPU"))?;
    // LINT0 as ExtINT (the 8259's line), LINT1 as NMI, as a PC's BIOS leaves them.
    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let set_lvt = |regs: &mut [i8], offset: usize, mode: u32| {
        let mut v = u32::from_le_bytes([
            regs[offset] as u8,
            regs[offset + 1] as u8,
            regs[offset + 2] as u8,
            regs[offset + 3] as u8,
        ]);
        v = (v & !0x700) | (mode << 8);
        for (i, b) in v.to_le_bytes().iter().enumerate() {
            regs[offset + i] = *b as i8;
        }
    };
    set_lvt(&mut lapic.regs, 0x350, 0x7); // LVT LINT0: ExtINT
    set_lvt(&mut lapic.regs, 0x360, 0x4); // LVT LINT1: NMI
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    Ok(())
}
