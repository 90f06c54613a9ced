//! An Intel MultiProcessor table (MP spec 1.4) so an SMP guest without ACPI finds its CPUs,
//! the IOAPIC and the ISA interrupt wiring. Layout after Firecracker's `arch/x86_64/mptable.rs`.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::VmmError;
use crate::layout::{IOAPIC_START, LAPIC_START, MPTABLE};

const APIC_VERSION: u8 = 0x14;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the floating pointer and the configuration table for `cpus` processors.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), VmmError> {
    let ioapic_id = cpus;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        // Processor entry (20 bytes).
        entries.push(0);
        entries.push(id);
        entries.push(APIC_VERSION);
        entries.push(0x1 | if id == 0 { 0x2 } else { 0 }); // enabled, BSP
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    // Bus entry: ISA (8 bytes).
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    // IOAPIC entry (8 bytes).
    entries.extend_from_slice(&[2, ioapic_id, APIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    // I/O interrupt entries: ISA IRQ n → IOAPIC pin n (8 bytes each).
    for irq in 0..16u8 {
        entries.extend_from_slice(&[
            3, 0, /* INT */
            0, 0, 0, /* bus */
            irq, ioapic_id, irq,
        ]);
        count += 1;
    }
    // Local interrupt entries: ExtINT on LINT0, NMI on LINT1, to every LAPIC.
    entries.extend_from_slice(&[4, 3 /* ExtINT */, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, 1 /* NMI */, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let table_addr = MPTABLE + 16;
    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"WEIR    "); // OEM id
    header.extend_from_slice(b"weir vm     "); // product id
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    header.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    header.push(0); // extended checksum
    header.push(0);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // revision
    fp.push(0); // checksum, below
    fp.extend_from_slice(&[0u8; 5]); // features: a configuration table is present
    fp[10] = checksum(&fp);

    let w = |bytes: &[u8], at: u64| {
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(|e| VmmError::Memory(format!("write MP table: {e}")))
    };
    w(&fp, MPTABLE)?;
    w(&table, table_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_sum_to_zero() {
        let ram = crate::memory::GuestRam::new(32 << 20).unwrap();
        write(&ram.memory, 4).unwrap();
        let mut fp = [0u8; 16];
        ram.memory
            .read_slice(&mut fp, GuestAddress(MPTABLE))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(fp.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let mut hdr = [0u8; 44];
        ram.memory
            .read_slice(&mut hdr, GuestAddress(MPTABLE + 16))
            .unwrap();
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        ram.memory
            .read_slice(&mut table, GuestAddress(MPTABLE + 16))
            .unwrap();
        assert_eq!(&table[..4], b"PCMP");
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        // 4 CPUs + bus + IOAPIC + 16 IRQs + 2 local.
        assert_eq!(
            u16::from_le_bytes([table[34], table[35]]),
            4 + 1 + 1 + 16 + 2
        );
    }
}
