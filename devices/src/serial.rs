//! The 8250 UART on 0x3f8 (vm-superio), its interrupt an irqfd on GSI 4, output to a sink.

use std::io::Write;
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// Raises the serial interrupt by writing the irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest output goes, remembering when the first byte arrived.
pub struct ConsoleSink {
    out: Box<dyn Write + Send>,
    pub first_byte: Option<Instant>,
    pub bytes: u64,
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.first_byte.is_none() && !buf.is_empty() {
            self.first_byte = Some(Instant::now());
        }
        self.bytes += buf.len() as u64;
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The guest's serial console.
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, vm_superio::serial::NoEvents, ConsoleSink>,
}

impl SerialConsole {
    /// `irq` is the eventfd registered as the GSI's irqfd.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialConsole {
            uart: Serial::new(
                EventFdTrigger(irq),
                ConsoleSink {
                    out,
                    first_byte: None,
                    bytes: 0,
                },
            ),
        }
    }

    /// A byte written to port base + `offset`.
    pub fn write(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.uart.write(offset, value) {
            log::debug!("serial: {e:?}");
        }
        if offset == 0 && value == b'\n' {
            let _ = self.uart.writer_mut().flush();
        }
    }

    pub fn read(&mut self, offset: u8) -> u8 {
        self.uart.read(offset)
    }

    pub fn first_byte(&self) -> Option<Instant> {
        self.uart.writer().first_byte
    }

    pub fn flush(&mut self) {
        let _ = self.uart.writer_mut().flush();
    }
}
