//! Serial output on COM1 (0x3f8). At CPL3 it is buffered and written through the CPL0
//! syscall (user-mode port I/O faults under PVM); the CPL0 exception path writes directly.

use core::arch::asm;
use core::fmt::{self, Write};

const COM1: u16 = 0x3f8;

static mut BUF: [u8; 1024] = [0; 1024];
static mut LEN: usize = 0;

/// Buffers one byte (CPL3); a full buffer or a newline is written out.
fn push(c: u8) {
    // SAFETY: one CPU, the console is used by the workload only.
    unsafe {
        let buf = &raw mut BUF;
        (*buf)[LEN] = c;
        LEN += 1;
        if LEN == (*buf).len() || c == b'\n' {
            flush();
        }
    }
}

pub fn flush() {
    // SAFETY: as above.
    unsafe {
        let buf = core::slice::from_raw_parts((&raw const BUF) as *const u8, LEN);
        crate::sys_write(buf);
        LEN = 0;
    }
}

struct Serial;

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            if b == b'\n' {
                push(b'\r');
            }
            push(b);
        }
        Ok(())
    }
}

/// Formatted output from CPL3.
pub fn print(args: fmt::Arguments) {
    let _ = Serial.write_fmt(args);
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        $crate::console::print(format_args!($($arg)*));
        $crate::console::print(format_args!("\n"));
    }};
}

/// One byte straight to the port (CPL0 only).
fn putc_k(c: u8) {
    // SAFETY: port I/O at CPL0.
    unsafe { asm!("out dx, al", in("dx") COM1, in("al") c, options(nomem, nostack)) };
}

/// A string from CPL0, byte by byte (no formatting machinery).
pub fn puts(s: &str) {
    for b in s.bytes() {
        putc_k(b);
    }
}

/// A number in hex from CPL0, without core::fmt.
pub fn hex(v: u64) {
    putc_k(b'0');
    putc_k(b'x');
    let mut i = 16;
    while i > 0 {
        i -= 1;
        let d = ((v >> (i * 4)) & 0xf) as u8;
        putc_k(if d < 10 { b'0' + d } else { b'a' + d - 10 });
    }
}
