//! The i8042 keyboard controller, as much as Linux needs to find it quickly and to reboot
//! through it: the status register, the controller command byte (CTR), the self tests, and the
//! reset line (command 0xFE). No keyboard or mouse behind it.
//!
//! Without the CTR read the kernel's probe waits out its timeouts ("Can't read CTR while
//! initializing i8042": 2.2 s of every boot in the lab VM, each status read a port exit).
//! Commands and answers after Linux's drivers/input/serio/i8042.{c,h} and Firecracker's
//! `devices/legacy/i8042.rs`.

use std::collections::VecDeque;

/// Data port: answers to commands, parameters of commands.
pub const DATA_PORT: u16 = 0x60;
/// Status (read) and command (write) port.
pub const COMMAND_PORT: u16 = 0x64;

const STATUS_OUTPUT_FULL: u8 = 0x01;
/// "System flag": set once the controller passed its self test.
const STATUS_SYSTEM: u8 = 0x04;
/// The last write went to the command port.
const STATUS_COMMAND: u8 = 0x08;
/// Set: the keyboard is not locked (Linux warns "Keylock active" when it is clear).
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_AUX_DISABLE: u8 = 0xa7;
const CMD_AUX_ENABLE: u8 = 0xa8;
const CMD_AUX_TEST: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_KBD_DISABLE: u8 = 0xad;
const CMD_KBD_ENABLE: u8 = 0xae;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_PULSE_RESET: u8 = 0xfe;

const CTR_KBD_DISABLED: u8 = 0x10;
const CTR_AUX_DISABLED: u8 = 0x20;
const SELF_TEST_PASSED: u8 = 0x55;
/// What a keyboard command gets when no keyboard answers: "resend".
const NO_DEVICE: u8 = 0xfe;

/// What a write did.
#[derive(Debug, PartialEq, Eq)]
pub enum I8042Write {
    Done,
    /// The guest pulsed the reset line: the machine resets (weir vm ends the guest).
    Reset,
}

#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    status: u8,
    output: VecDeque<u8>,
    /// A command waiting for its parameter byte on the data port.
    pending: Option<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            ctr: CTR_KBD_DISABLED | CTR_AUX_DISABLED,
            status: STATUS_SYSTEM | STATUS_UNLOCKED,
            output: VecDeque::new(),
            pending: None,
        }
    }
}

impl I8042 {
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            COMMAND_PORT => {
                let full = if self.output.is_empty() {
                    0
                } else {
                    STATUS_OUTPUT_FULL
                };
                self.status | full
            }
            DATA_PORT => self.output.pop_front().unwrap_or(0),
            _ => 0xff,
        }
    }

    pub fn write(&mut self, port: u16, value: u8) -> I8042Write {
        match port {
            COMMAND_PORT => {
                self.status |= STATUS_COMMAND;
                self.pending = None;
                match value {
                    CMD_READ_CTR => self.output.push_back(self.ctr),
                    CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT => self.pending = Some(value),
                    CMD_SELF_TEST => self.output.push_back(SELF_TEST_PASSED),
                    CMD_AUX_TEST | CMD_KBD_TEST => self.output.push_back(0),
                    CMD_AUX_DISABLE => self.ctr |= CTR_AUX_DISABLED,
                    CMD_AUX_ENABLE => self.ctr &= !CTR_AUX_DISABLED,
                    CMD_KBD_DISABLE => self.ctr |= CTR_KBD_DISABLED,
                    CMD_KBD_ENABLE => self.ctr &= !CTR_KBD_DISABLED,
                    CMD_PULSE_RESET => return I8042Write::Reset,
                    _ => {}
                }
            }
            DATA_PORT => {
                self.status &= !STATUS_COMMAND;
                match self.pending.take() {
                    Some(CMD_WRITE_CTR) => self.ctr = value,
                    // Bit 0 of the output port is the reset line, active low.
                    Some(CMD_WRITE_OUTPUT_PORT) if value & 1 == 0 => return I8042Write::Reset,
                    Some(_) => {}
                    None => self.output.push_back(NO_DEVICE),
                }
            }
            _ => {}
        }
        I8042Write::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linux_reads_and_writes_the_command_byte_and_passes_the_self_test() {
        let mut c = I8042::default();
        assert_eq!(
            c.read(COMMAND_PORT) & STATUS_OUTPUT_FULL,
            0,
            "nothing to flush"
        );
        c.write(COMMAND_PORT, CMD_SELF_TEST);
        assert_eq!(c.read(COMMAND_PORT) & STATUS_OUTPUT_FULL, 1);
        assert_eq!(c.read(DATA_PORT), SELF_TEST_PASSED);
        c.write(COMMAND_PORT, CMD_READ_CTR);
        let ctr = c.read(DATA_PORT);
        assert_eq!(ctr, CTR_KBD_DISABLED | CTR_AUX_DISABLED);
        c.write(COMMAND_PORT, CMD_WRITE_CTR);
        assert_eq!(c.write(DATA_PORT, 0x47), I8042Write::Done);
        c.write(COMMAND_PORT, CMD_READ_CTR);
        assert_eq!(c.read(DATA_PORT), 0x47);
        assert_eq!(c.read(COMMAND_PORT) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn both_reset_paths_reset() {
        let mut c = I8042::default();
        assert_eq!(c.write(COMMAND_PORT, CMD_PULSE_RESET), I8042Write::Reset);
        c.write(COMMAND_PORT, CMD_WRITE_OUTPUT_PORT);
        assert_eq!(c.write(DATA_PORT, 0xfe), I8042Write::Reset);
        c.write(COMMAND_PORT, CMD_WRITE_OUTPUT_PORT);
        assert_eq!(c.write(DATA_PORT, 0xff), I8042Write::Done);
    }
}
