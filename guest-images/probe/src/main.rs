//! The probe guest: boots like a vmlinux (64-bit boot protocol, RSI = zero page) or through
//! its PVH note (QEMU `-kernel`), sets up the bare minimum at CPL0 — its own page tables with
//! user access, GDT, TSS, IDT, SSE, the LAPIC — and drops to CPL3, where the workload runs
//! natively even under PVM (whose CPL0 is emulated). The workload drives virtio-mmio block
//! devices from the command line and prints JSON on the serial port.

#![no_std]
#![no_main]

mod console;
mod options;
mod virtio;
mod workload;

use core::arch::{asm, global_asm};
use core::sync::atomic::{AtomicU64, Ordering};

/// Found by `weir vm` to tell the probe from a Linux kernel.
#[used]
#[unsafe(no_mangle)]
pub static WEIR_PROBE_MARKER: [u8; 16] = *b"WEIR-PROBE-GUEST";

const KSTACK_SIZE: usize = 64 * 1024;
const USTACK_SIZE: usize = 1024 * 1024;

#[repr(C, align(4096))]
struct Stack<const N: usize>([u8; N]);

static mut KSTACK: Stack<KSTACK_SIZE> = Stack([0; KSTACK_SIZE]);
static mut ISTACK: Stack<KSTACK_SIZE> = Stack([0; KSTACK_SIZE]);
static mut USTACK: Stack<USTACK_SIZE> = Stack([0; USTACK_SIZE]);

/// The zero page (64-bit boot) or the PVH start info, whichever we came in with.
#[unsafe(no_mangle)]
static mut BOOT_PARAMS: u64 = 0;
#[unsafe(no_mangle)]
static mut PVH_INFO: u32 = 0;

#[repr(C, align(4096))]
struct Table([u64; 512]);

#[unsafe(no_mangle)]
static mut PML4: Table = Table([0; 512]);
#[unsafe(no_mangle)]
static mut PDPT: Table = Table([0; 512]);
/// Four page directories: 4 GiB in 2 MiB pages.
#[unsafe(no_mangle)]
static mut PDS: [Table; 4] = [const { Table([0; 512]) }; 4];

/// null, kernel code 0x08, kernel data 0x10, user data 0x18 (|3), user code 0x20 (|3), TSS 0x28.
#[unsafe(no_mangle)]
static mut GDT: [u64; 7] = [
    0,
    0x00af_9a00_0000_ffff,
    0x00cf_9200_0000_ffff,
    0x00cf_f200_0000_ffff,
    0x00af_fa00_0000_ffff,
    0,
    0,
];
/// `lgdt` operand: limit, then base (the 32-bit PVH path reads the low half of the base).
#[unsafe(no_mangle)]
static mut GDT_PTR: [u16; 5] = [0; 5];

#[repr(C, packed)]
struct Tss {
    _r0: u32,
    rsp0: u64,
    rsp1: u64,
    rsp2: u64,
    _r1: u64,
    ist: [u64; 7],
    _r2: u64,
    _r3: u16,
    iomap: u16,
}

static mut TSS: Tss = Tss {
    _r0: 0,
    rsp0: 0,
    rsp1: 0,
    rsp2: 0,
    _r1: 0,
    ist: [0; 7],
    _r2: 0,
    _r3: 0,
    iomap: 104,
};

#[repr(C, align(16))]
struct Idt([u64; 512]);
static mut IDT: Idt = Idt([0; 512]);

/// Interrupts taken on the device vector (counted by the CPL0 stub).
#[unsafe(no_mangle)]
pub static IRQ_COUNT: AtomicU64 = AtomicU64::new(0);

/// Waits through `sys_wait_irq` (halt mode), reported as `halts`.
pub static HALTS: AtomicU64 = AtomicU64::new(0);

/// The vector the virtio interrupts arrive on.
pub const IRQ_VECTOR: u8 = 0x40;

global_asm!(
    r#"
    .section .text.boot, "ax"
    .code64
    .global _start
_start:
    cli
    mov [rip + BOOT_PARAMS], rsi
    lea rsp, [rip + {kstack}]
    add rsp, {kstack_size}
    mov rax, cr0
    and rax, -5
    or rax, 2
    mov cr0, rax
    mov rax, cr4
    or rax, 0x600
    mov cr4, rax
    xor edi, edi
    call {kmain}
2:  hlt
    jmp 2b

    .code32
    .global _start32
_start32:
    cli
    // The PVH ABI gives no stack: take ours before the first push.
    mov esp, offset {kstack}
    add esp, {kstack_size}
    mov [PVH_INFO], ebx
    mov eax, offset PDPT
    or eax, 7
    mov [PML4], eax
    xor ecx, ecx
3:  mov eax, ecx
    shl eax, 12
    add eax, offset PDS
    or eax, 7
    mov [PDPT + ecx * 8], eax
    inc ecx
    cmp ecx, 4
    jb 3b
    xor ecx, ecx
4:  mov eax, ecx
    shl eax, 21
    or eax, 0x87
    mov [PDS + ecx * 8], eax
    inc ecx
    cmp ecx, 2048
    jb 4b
    mov eax, offset PML4
    mov cr3, eax
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov ecx, 0xc0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, -5
    or eax, 0x80000003
    mov cr0, eax
    mov word ptr [GDT_PTR], 55
    mov dword ptr [GDT_PTR + 2], offset GDT
    lgdt [GDT_PTR]
    mov eax, offset pvh_long_mode
    push 0x08
    push eax
    retf
    .code64
pvh_long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + {kstack}]
    add rsp, {kstack_size}
    mov edi, 1
    call {kmain}
6:  hlt
    jmp 6b

    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long _start32
    .balign 4

    .text
    // The system call is `ud2` at CPL3: rax = 1 write(rdi = buf, rsi = len) to COM1;
    // rax = 2 exit(rdi = code); rax = 3 wait for an interrupt unless IRQ_COUNT is no longer
    // rdi (checked with interrupts off; `sti; hlt` leaves no gap for one to slip through). Port I/O must happen at CPL0, and under PVM the usual ways
    // there fail: user-mode `in`/`out` fault whatever IOPL says, `syscall` does not leave CPL3,
    // `int n` raises #UD. Exceptions do reach the guest's CPL0 handlers, so #UD it is.
    .global ud_entry
ud_entry:
    push rcx
    mov rcx, [rsp + 8]
    test qword ptr [rsp + 16], 3
    jz 14f
    cmp word ptr [rcx], 0x0b0f
    jne 14f
    add qword ptr [rsp + 8], 2
    pop rcx
    jmp syscall_entry
14: pop rcx
    push 0
    push 6
    jmp exc_common

    .global syscall_entry
syscall_entry:
    cmp rax, 1
    jne 8f
    push rcx
    push rsi
    push rdx
    mov rcx, rsi
    mov rsi, rdi
    mov dx, 0x3f8
    test rcx, rcx
    jz 13f
12: mov al, [rsi]
    out dx, al
    inc rsi
    dec rcx
    jnz 12b
13: pop rdx
    pop rsi
    pop rcx
    iretq
8:  cmp rax, 2
    jne 9f
    test rdi, rdi
    jnz 10f
    mov al, 0xfe
    out 0x64, al
10: mov eax, edi
    mov dx, 0x501
    out dx, al
    mov al, 0xfe
    out 0x64, al
11: hlt
    jmp 11b
9:  cmp rax, 3
    jne 15f
    cmp [rip + IRQ_COUNT], rdi
    jne 15f
    sti
    hlt
15: iretq

    .global irq_stub
irq_stub:
    push rax
    lock inc qword ptr [rip + IRQ_COUNT]
    mov eax, 0xfee000b0
    mov dword ptr [rax], 0
    pop rax
    iretq

exc_common:
    mov rdi, rsp
    and rsp, -16
    call {exception}
7:  hlt
    jmp 7b
"#,
    kstack = sym KSTACK,
    kstack_size = const KSTACK_SIZE,
    kmain = sym kernel_main,
    exception = sym exception,
);

macro_rules! exc_stub {
    ($n:literal) => {
        concat!(
            ".global exc_",
            $n,
            "\nexc_",
            $n,
            ":\n push 0\n push ",
            $n,
            "\n jmp exc_common\n"
        )
    };
    ($n:literal, err) => {
        concat!(
            ".global exc_",
            $n,
            "\nexc_",
            $n,
            ":\n push ",
            $n,
            "\n jmp exc_common\n"
        )
    };
}

global_asm!(
    ".text",
    exc_stub!(0),
    exc_stub!(1),
    exc_stub!(2),
    exc_stub!(3),
    exc_stub!(4),
    exc_stub!(5),
    exc_stub!(6),
    exc_stub!(7),
    exc_stub!(8, err),
    exc_stub!(9),
    exc_stub!(10, err),
    exc_stub!(11, err),
    exc_stub!(12, err),
    exc_stub!(13, err),
    exc_stub!(14, err),
    exc_stub!(15),
    exc_stub!(16),
    exc_stub!(17, err),
    exc_stub!(18),
    exc_stub!(19),
    ".section .rodata",
    ".balign 8",
    ".global EXC_TABLE",
    "EXC_TABLE:",
    ".quad exc_0, exc_1, exc_2, exc_3, exc_4, exc_5, exc_6, exc_7, exc_8, exc_9",
    ".quad exc_10, exc_11, exc_12, exc_13, exc_14, exc_15, exc_16, exc_17, exc_18, exc_19",
    ".text",
);

unsafe extern "C" {
    static EXC_TABLE: [u64; 20];
    fn irq_stub();
    fn ud_entry();
}

/// Writes `buf` to the serial port (through the CPL0 syscall).
pub fn sys_write(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: our own system call (ud2, see ud_entry): rax = 1, rdi = buffer, rsi = length; nothing clobbered.
    unsafe {
        asm!("ud2", inout("rax") 1u64 => _, in("rdi") buf.as_ptr(), in("rsi") buf.len(),
             options(nostack));
    }
}

/// Halts the vCPU until an interrupt arrives, unless one arrived since `irq_count()` read
/// `seen`. The vCPU's host thread sleeps meanwhile, as a real guest's idle loop does.
pub fn sys_wait_irq(seen: u64) {
    HALTS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: our own syscall ABI: rax = 3, rdi = the count seen; nothing clobbered.
    unsafe {
        asm!("ud2", inout("rax") 3u64 => _, in("rdi") seen, options(nostack));
    }
}

/// Arms the LAPIC timer, periodic, on the device's vector: a halted probe wakes at least
/// every `period_ns` even if an interrupt were lost (KVM's APIC bus runs at 1 GHz).
pub fn arm_tick(period_ns: u32) {
    let lapic = 0xfee0_0000u64;
    // SAFETY: LAPIC registers, identity-mapped and user-accessible.
    unsafe {
        core::ptr::write_volatile((lapic + 0x3e0) as *mut u32, 0xb);
        core::ptr::write_volatile((lapic + 0x320) as *mut u32, 1 << 17 | u32::from(IRQ_VECTOR));
        core::ptr::write_volatile((lapic + 0x380) as *mut u32, period_ns);
    }
}

/// Ends the VM: 0 is a clean power-off (i8042 reset); anything else goes to the debug exit
/// port 0x501, which `weir vm` reports as a guest failure.
pub fn sys_exit(code: u8) -> ! {
    // SAFETY: our own syscall ABI: rax = 2, rdi = code; it does not return.
    unsafe {
        asm!("ud2", in("rax") 2u64, in("rdi") u64::from(code), options(noreturn));
    }
}

fn idt_gate(handler: u64, dpl: u64) -> (u64, u64) {
    let low = (handler & 0xffff)
        | (0x08 << 16)
        | ((0x8e | (dpl << 5)) << 40)
        | ((handler & 0xffff_0000) << 32);
    (low, handler >> 32)
}

/// An `lidt` operand.
static mut IDT_PTR: [u16; 5] = [0; 5];

/// CPL0, once: tables, then off to CPL3. Runs emulated under PVM, whose instruction emulator
/// knows no SSE: every store here is volatile so the compiler cannot vectorise it.
unsafe extern "C" fn kernel_main(pvh: u64) -> ! {
    use core::ptr::write_volatile as put;
    // SAFETY: single CPU, interrupts off, nothing else runs: the statics are ours.
    unsafe {
        if pvh == 0 {
            // Our own identity map of the first 4 GiB, user-accessible (the workload at CPL3
            // touches its rings, buffers and the device windows directly).
            let pml4 = (&raw mut PML4) as *mut u64;
            let pdpt = (&raw mut PDPT) as *mut u64;
            let pds = (&raw mut PDS) as *mut u64;
            put(pml4, pdpt as u64 | 7);
            let mut i = 0u64;
            while i < 4 {
                put(pdpt.add(i as usize), (pds as u64 + i * 4096) | 7);
                i += 1;
            }
            let mut j = 0u64;
            while j < 2048 {
                put(pds.add(j as usize), (j << 21) | 0x87);
                j += 1;
            }
            asm!("mov cr3, {}", in(reg) pml4 as u64, options(nostack));
        }
        // TSS descriptor, GDT, segments, task register.
        let tss = &raw mut TSS;
        let isp = (&raw mut ISTACK) as u64 + KSTACK_SIZE as u64;
        put(&raw mut (*tss).rsp0, isp);
        let base = tss as u64;
        let limit = (core::mem::size_of::<Tss>() - 1) as u64;
        let gdt = (&raw mut GDT) as *mut u64;
        put(
            gdt.add(5),
            (limit & 0xffff)
                | ((base & 0xff_ffff) << 16)
                | (0x89 << 40)
                | (((base >> 24) & 0xff) << 56),
        );
        put(gdt.add(6), base >> 32);
        let ptr = (&raw mut GDT_PTR) as *mut u16;
        let gdt_base = gdt as u64;
        put(ptr, 55);
        put(ptr.add(1), gdt_base as u16);
        put(ptr.add(2), (gdt_base >> 16) as u16);
        put(ptr.add(3), (gdt_base >> 32) as u16);
        put(ptr.add(4), (gdt_base >> 48) as u16);
        asm!(
            "lgdt [{ptr}]",
            "push 0x08",
            "lea rax, [rip + 2f]",
            "push rax",
            "retfq",
            "2:",
            "mov ax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "mov ax, 0x28",
            "ltr ax",
            ptr = in(reg) ptr,
            out("rax") _,
        );
        // IDT: the first 20 exceptions and the device vector.
        let idt = (&raw mut IDT) as *mut u64;
        let table = (&raw const EXC_TABLE) as *const u64;
        let mut v = 0usize;
        while v < 20 {
            let (lo, hi) = idt_gate(core::ptr::read_volatile(table.add(v)), 0);
            put(idt.add(v * 2), lo);
            put(idt.add(v * 2 + 1), hi);
            v += 1;
        }
        let (lo, hi) = idt_gate(irq_stub as *const () as u64, 0);
        put(idt.add(IRQ_VECTOR as usize * 2), lo);
        put(idt.add(IRQ_VECTOR as usize * 2 + 1), hi);
        let idtr = (&raw mut IDT_PTR) as *mut u16;
        put(idtr, (256 * 16 - 1) as u16);
        put(idtr.add(1), idt as u64 as u16);
        put(idtr.add(2), (idt as u64 >> 16) as u16);
        put(idtr.add(3), (idt as u64 >> 32) as u16);
        put(idtr.add(4), (idt as u64 >> 48) as u16);
        asm!("lidt [{}]", in(reg) idtr, options(nostack));
        // #UD doubles as the system call (see ud_entry).
        let (lo, hi) = idt_gate(ud_entry as *const () as u64, 0);
        put(idt.add(6 * 2), lo);
        put(idt.add(6 * 2 + 1), hi);
        // The 8259s masked (KVM routes GSIs to them too); the LAPIC software-enabled.
        asm!("out 0x21, al", "out 0xa1, al", in("al") 0xffu8, options(nostack));
        put(0xfee0_00f0 as *mut u32, 0x1ff);
        // To CPL3, interrupts on.
        // As if called: the ABI wants rsp ≡ 8 (mod 16) at function entry.
        let usp = (&raw mut USTACK) as u64 + USTACK_SIZE as u64 - 8;
        asm!(
            "push 0x1b",
            "push {usp}",
            "push 0x3202",
            "push 0x23",
            "push {entry}",
            "iretq",
            usp = in(reg) usp,
            entry = in(reg) user_main as *const () as u64,
            options(noreturn),
        );
    }
}

/// CPL3 from here on.
extern "C" fn user_main() -> ! {
    // SAFETY: written once by the boot path before any of this ran.
    let (zero_page, pvh) = unsafe { (BOOT_PARAMS, u64::from(PVH_INFO)) };
    let cmdline = options::boot_cmdline(zero_page, pvh);
    if workload::run(cmdline, pvh != 0) {
        shutdown()
    }
    console::flush();
    sys_exit(2)
}

/// Pulses the i8042 reset line: `weir vm` exits 0, QEMU (`-no-reboot`) exits.
pub fn shutdown() -> ! {
    console::flush();
    sys_exit(0)
}

#[repr(C)]
struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

extern "C" fn exception(frame: *const ExceptionFrame) -> ! {
    // SAFETY: the stub passes its stack pointer, which points at this layout.
    let f = unsafe { &*frame };
    let cr2: u64;
    // SAFETY: reading CR2 at CPL0 (exceptions run there).
    unsafe { asm!("mov {}, cr2", out(reg) cr2, options(nostack)) };
    // No core::fmt here: it may use SSE, which PVM's CPL0 emulator lacks.
    console::puts("\n<<<WEIR:PROBE-FATAL>>> exception ");
    console::hex(f.vector);
    console::puts(" error ");
    console::hex(f.error);
    console::puts(" rip ");
    console::hex(f.rip);
    console::puts(" cs ");
    console::hex(f.cs);
    console::puts(" rsp ");
    console::hex(f.rsp);
    console::puts(" cr2 ");
    console::hex(cr2);
    console::puts("\n");
    // SAFETY: at CPL0: the debug exit port, then the reset line if nobody listens there.
    unsafe {
        asm!("out dx, al", in("dx") 0x501u16, in("al") 0x10u8, options(nostack));
        asm!("out 0x64, al", in("al") 0xfeu8, options(nostack));
    }
    triple_fault()
}

/// Ends the VM with a triple fault (`weir vm` exits non-zero and prints the registers).
fn triple_fault() -> ! {
    let empty: [u16; 5] = [0; 5];
    // SAFETY: at CPL0, an empty IDT makes the next exception a triple fault: that is the point.
    unsafe {
        asm!("lidt [{}]", "int3", in(reg) &empty, options(nostack));
    }
    loop {
        core::hint::spin_loop();
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    console::print(format_args!("\n<<<WEIR:PROBE-FATAL>>> panic: {info}\n"));
    console::flush();
    sys_exit(1)
}

/// Reads the time stamp counter (native at CPL3).
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc has no side effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn irq_count() -> u64 {
    IRQ_COUNT.load(Ordering::SeqCst)
}

// The compiler's memory intrinsics: the probe has no libc.

/// # Safety
/// As C's memcpy.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep movsb copies forward n bytes.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dst => _, inout("rsi") src => _, options(nostack));
    }
    dst
}

/// # Safety
/// As C's memmove.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize + n) {
        // SAFETY: forward copy is safe when dst does not overlap the tail of src.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: backward copy with the direction flag, restored after.
    unsafe {
        asm!(
            "std",
            "rep movsb",
            "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack)
        );
    }
    dst
}

/// # Safety
/// As C's memset.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller's contract; rep stosb writes n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dst => _, in("al") c as u8, options(nostack));
    }
    dst
}

/// # Safety
/// As C's memcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within both buffers per the caller's contract.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// # Safety
/// As C's bcmp.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}
