//! Dark storage: capacity a LUN hands a guest that nothing uses. Read from the LUN itself —
//! its partition table (MBR, GPT) and the filesystem superblocks in it (ext2/3/4, XFS,
//! btrfs) — and from what the broker knows: which ranges were ever written, which disks map to
//! the LUN and when they were last connected (`docs/thin.md`).
//!
//! ```text
//! unpartitioned = size − Σ partitions                    (0 when a filesystem spans the disk)
//! unformatted   = Σ_partitions (partition − its filesystem)   (the whole partition if none)
//! dark          = unpartitioned + unformatted
//! ```
//!
//! Everything is parsed from bytes with bounds checks: a LUN's content is the guest's, and a
//! corrupt table or superblock yields "unknown", never a panic.

use std::fs::File;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

const SECTOR: u64 = 512;
/// The most bytes of allocated data read per LUN per report to look for all-zero chunks.
pub const ZERO_SCAN_LIMIT: u64 = 1 << 30;

/// A filesystem found by its superblock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FsInfo {
    /// `ext2`, `ext3`, `ext4`, `xfs`, `btrfs`.
    pub kind: String,
    pub size_bytes: u64,
}

/// One partition of the table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub number: u32,
    pub start_bytes: u64,
    pub size_bytes: u64,
    pub fs: Option<FsInfo>,
}

/// What the LUN's first sectors say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// `gpt`, `mbr` or `none`.
    pub table: String,
    pub partitions: Vec<Partition>,
    /// A filesystem on the whole LUN (no table).
    pub whole_disk_fs: Option<FsInfo>,
    pub unpartitioned_bytes: u64,
    pub unformatted_bytes: u64,
}

fn u16le(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32le(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64le(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn u32be(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64be(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads `len` bytes at `offset`, or `None` past the end or on an error.
/// `len` bytes at `offset`, or `None` past the end. (Callers add offsets with `checked_add`:
/// a garbage partition entry near `u64::MAX` must not overflow.)
fn read_at(f: &File, offset: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).ok()?;
    Some(buf)
}

/// The filesystem whose superblock sits at `base`, if any.
pub fn probe_fs(f: &File, base: u64) -> Option<FsInfo> {
    // ext2/3/4: superblock at +1024, magic 0xEF53 at 0x38.
    if let Some(sb) = read_at(f, base.checked_add(1024)?, 1024) {
        if u16le(&sb, 0x38) == Some(0xEF53) {
            let log = u32le(&sb, 0x18)?;
            if log > 16 {
                return None;
            }
            let block = 1024u64 << log;
            let incompat = u32le(&sb, 0x60)?;
            let compat = u32le(&sb, 0x5C)?;
            let hi = if incompat & 0x80 != 0 {
                u64::from(u32le(&sb, 0x150)?)
            } else {
                0
            };
            let blocks = (hi << 32) | u64::from(u32le(&sb, 0x04)?);
            // extents or 64bit or flex_bg: ext4; a journal: ext3.
            let kind = if incompat & (0x40 | 0x80 | 0x200) != 0 {
                "ext4"
            } else if compat & 0x4 != 0 {
                "ext3"
            } else {
                "ext2"
            };
            return Some(FsInfo {
                kind: kind.into(),
                size_bytes: blocks.checked_mul(block)?,
            });
        }
    }
    // XFS: "XFSB" at +0, block size (BE u32) at 4, data blocks (BE u64) at 8.
    if let Some(sb) = read_at(f, base, 512) {
        if sb.get(0..4) == Some(b"XFSB") {
            let size = u64::from(u32be(&sb, 4)?).checked_mul(u64be(&sb, 8)?)?;
            return Some(FsInfo {
                kind: "xfs".into(),
                size_bytes: size,
            });
        }
    }
    // btrfs: superblock at +64 KiB, magic "_BHRfS_M" at 0x40, total_bytes at 0x70.
    if let Some(sb) = read_at(f, base.checked_add(0x10000)?, 0x100) {
        if sb.get(0x40..0x48) == Some(b"_BHRfS_M") {
            return Some(FsInfo {
                kind: "btrfs".into(),
                size_bytes: u64le(&sb, 0x70)?,
            });
        }
    }
    None
}

/// GPT entries from the header at LBA 1, if there is one.
fn gpt(f: &File, size: u64) -> Option<Vec<(u32, u64, u64)>> {
    let hdr = read_at(f, SECTOR, 92)?;
    if hdr.get(0..8) != Some(b"EFI PART") {
        return None;
    }
    let entries_lba = u64le(&hdr, 72)?;
    let count = u32le(&hdr, 80)?.min(1024);
    let entry = u32le(&hdr, 84)?;
    if !(128..=4096).contains(&entry) {
        return None;
    }
    let table = read_at(
        f,
        entries_lba.checked_mul(SECTOR)?,
        (count * entry) as usize,
    )?;
    let mut out = Vec::new();
    for i in 0..count {
        let e = table.get((i * entry) as usize..((i + 1) * entry) as usize)?;
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (u64le(e, 32)?, u64le(e, 40)?);
        if last < first {
            continue;
        }
        let start = first.checked_mul(SECTOR)?;
        let len = (last - first + 1).checked_mul(SECTOR)?;
        if start < size {
            out.push((i + 1, start, len.min(size - start)));
        }
    }
    Some(out)
}

/// Primary MBR partitions (extended ones are counted whole; their logical partitions are not
/// followed), or `None` without a valid MBR or with a protective one.
fn mbr(f: &File, size: u64) -> Option<Vec<(u32, u64, u64)>> {
    let s = read_at(f, 0, 512)?;
    if s[510] != 0x55 || s[511] != 0xAA {
        return None;
    }
    let mut out = Vec::new();
    for i in 0..4u32 {
        let e = &s[446 + 16 * i as usize..446 + 16 * (i as usize + 1)];
        let kind = e[4];
        if kind == 0xEE {
            return None; // protective: GPT
        }
        let (lba, sectors) = (u64::from(u32le(e, 8)?), u64::from(u32le(e, 12)?));
        if kind == 0 || sectors == 0 {
            continue;
        }
        let start = lba * SECTOR;
        if start < size {
            out.push((i + 1, start, (sectors * SECTOR).min(size - start)));
        }
    }
    // A FAT or NTFS boot sector also ends in 55 AA, with no partition entries: not a table.
    (!out.is_empty()).then_some(out)
}

/// The LUN's partitions, filesystems and the dark bytes they leave.
pub fn layout(f: &File, size: u64) -> Layout {
    let (table, parts) = match gpt(f, size) {
        Some(p) => ("gpt", p),
        None => match mbr(f, size) {
            Some(p) => ("mbr", p),
            None => ("none", Vec::new()),
        },
    };
    if table == "none" {
        let fs = probe_fs(f, 0);
        let covered = fs.as_ref().map_or(0, |x| x.size_bytes.min(size));
        return Layout {
            table: table.into(),
            partitions: Vec::new(),
            unpartitioned_bytes: if fs.is_some() { 0 } else { size },
            unformatted_bytes: if fs.is_some() { size - covered } else { 0 },
            whole_disk_fs: fs,
        };
    }
    let partitions: Vec<Partition> = parts
        .into_iter()
        .map(|(number, start, len)| Partition {
            number,
            start_bytes: start,
            size_bytes: len,
            fs: probe_fs(f, start),
        })
        .collect();
    let partitioned: u64 = partitions.iter().map(|p| p.size_bytes).sum();
    let unformatted = partitions
        .iter()
        .map(|p| {
            p.size_bytes
                - p.fs
                    .as_ref()
                    .map_or(0, |fs| fs.size_bytes.min(p.size_bytes))
        })
        .sum();
    Layout {
        table: table.into(),
        partitions,
        whole_disk_fs: None,
        unpartitioned_bytes: size.saturating_sub(partitioned),
        unformatted_bytes: unformatted,
    }
}

/// Allocated (data-holding) ranges of `f` in `[0, size)`, by SEEK_DATA / SEEK_HOLE.
pub fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    let mut map = weir_sched::thin::ChunkMap::new(size, 4096);
    crate::thin::scan_allocation(f, &mut map, size)?;
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut start = 0;
    for (s, e) in map.holes() {
        if s > start {
            out.push((start, s));
        }
        start = e;
    }
    if start < size {
        out.push((start, size));
    }
    Ok(out)
}

/// Of the allocated ranges, how many bytes hold only zeroes (in whole `chunk`s), reading at
/// most [`ZERO_SCAN_LIMIT`] bytes. Returns (bytes scanned, zero bytes found).
pub fn zero_chunks(f: &File, allocated: &[(u64, u64)], chunk: u64) -> (u64, u64) {
    let mut buf = vec![0u8; chunk as usize];
    let (mut scanned, mut zero) = (0u64, 0u64);
    for &(s, e) in allocated {
        let mut at = s.next_multiple_of(chunk);
        while at + chunk <= e && scanned < ZERO_SCAN_LIMIT {
            if f.read_exact_at(&mut buf, at).is_err() {
                break;
            }
            scanned += chunk;
            if buf.iter().all(|b| *b == 0) {
                zero += chunk;
            }
            at += chunk;
        }
    }
    (scanned, zero)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(size: u64) -> (tempfile::TempDir, std::path::PathBuf, File) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(size).unwrap();
        (dir, p, f)
    }

    #[test]
    fn an_empty_lun_is_all_unpartitioned() {
        let (_d, _p, f) = image(64 << 20);
        let l = layout(&f, 64 << 20);
        assert_eq!(
            (l.table.as_str(), l.unpartitioned_bytes),
            ("none", 64 << 20)
        );
        assert_eq!(data_ranges(&f, 64 << 20).unwrap(), vec![]);
    }

    #[test]
    fn an_mbr_partition_with_a_smaller_ext2_leaves_both_kinds_of_dark() {
        let (_d, _p, f) = image(64 << 20);
        let mut s = vec![0u8; 512];
        let e = 446;
        s[e + 4] = 0x83;
        s[e + 8..e + 12].copy_from_slice(&2048u32.to_le_bytes());
        s[e + 12..e + 16].copy_from_slice(&(16u32 << 11).to_le_bytes()); // 16 MiB
        s[510] = 0x55;
        s[511] = 0xAA;
        f.write_all_at(&s, 0).unwrap();
        // An ext2 superblock at the partition's start + 1024: 10 MiB in 4 KiB blocks.
        let mut sb = vec![0u8; 1024];
        sb[0x04..0x08].copy_from_slice(&2560u32.to_le_bytes());
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes());
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes());
        f.write_all_at(&sb, (1 << 20) + 1024).unwrap();
        let l = layout(&f, 64 << 20);
        assert_eq!(l.table, "mbr");
        assert_eq!(l.partitions.len(), 1);
        let p = &l.partitions[0];
        assert_eq!((p.start_bytes, p.size_bytes), (1 << 20, 16 << 20));
        assert_eq!(
            p.fs,
            Some(FsInfo {
                kind: "ext2".into(),
                size_bytes: 10 << 20
            })
        );
        assert_eq!(l.unpartitioned_bytes, 48 << 20);
        assert_eq!(l.unformatted_bytes, 6 << 20);
        let ranges = data_ranges(&f, 64 << 20).unwrap();
        assert_eq!(ranges.first().map(|r| r.0), Some(0));
        // The written blocks are not zero; nothing else is allocated.
        let (scanned, zero) = zero_chunks(&f, &ranges, 4096);
        assert_eq!(zero, 0);
        assert!(scanned > 0);
    }

    #[test]
    fn garbage_is_unknown_never_a_panic() {
        let (_d, _p, f) = image(1 << 20);
        let mut junk = vec![0xFFu8; 1 << 20];
        junk[510] = 0x55;
        junk[511] = 0xAA;
        junk[512..520].copy_from_slice(b"EFI PART");
        f.write_all_at(&junk, 0).unwrap();
        let l = layout(&f, 1 << 20);
        assert!(l.unpartitioned_bytes <= 1 << 20);
        // A tiny file: every read past the end is refused cleanly.
        let (_d2, _p2, small) = image(100);
        let l = layout(&small, 100);
        assert_eq!(l.table, "none");
        assert_eq!(probe_fs(&small, u64::MAX - 10), None);
    }

    #[test]
    fn written_zeroes_are_found_as_reclaimable() {
        let (_d, _p, f) = image(1 << 20);
        f.write_all_at(&vec![0u8; 256 << 10], 0).unwrap();
        f.write_all_at(&[7u8; 4096], 512 << 10).unwrap();
        let ranges = data_ranges(&f, 1 << 20).unwrap();
        let (_, zero) = zero_chunks(&f, &ranges, 64 << 10);
        assert_eq!(zero, 256 << 10, "{ranges:?}");
    }
}

/// A disk mapped to the LUN, and how long it has been away.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskPresence {
    pub tenant: String,
    pub socket: std::path::PathBuf,
    pub connected: bool,
    /// Seconds since its guest disconnected (none while connected, or never connected).
    pub idle_s: Option<f64>,
    pub ever_connected: bool,
}

/// One LUN's dark-storage report (`dark` on the control socket, `weir dark`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LunDark {
    pub lun: String,
    pub path: std::path::PathBuf,
    pub size_bytes: u64,
    /// Bytes holding data in the image (SEEK_DATA); none for a block device.
    pub allocated_bytes: Option<u64>,
    /// Never-written bytes and the largest such ranges (at most 16, `[start, end)`).
    pub never_written_bytes: Option<u64>,
    pub never_written: Vec<(u64, u64)>,
    /// Bytes the guests wrote through the broker since it started.
    pub written_since_attach_bytes: u64,
    pub layout: Layout,
    /// `unpartitioned + unformatted`, and as a percentage of the LUN.
    pub dark_bytes: u64,
    pub dark_pct: f64,
    pub disks: Vec<DiskPresence>,
    /// No disk maps to it: all of it is forgotten capacity.
    pub unmapped: bool,
    /// Allocated data read to look for all-zero chunks, and the zero bytes found (reclaimable
    /// by a discard).
    pub zero_scan_bytes: u64,
    pub zero_allocated_bytes: u64,
}

/// The dark-storage report of every LUN of a broker.
pub fn report(state: &crate::server::BrokerState) -> Vec<LunDark> {
    use std::sync::atomic::Ordering;
    let now_ms = (state.clock.now() * 1000.0) as u64;
    state
        .luns
        .iter()
        .map(|lun| {
            let size = lun.size_bytes;
            let file = File::open(&lun.path).ok();
            let layout = file.as_ref().map_or(
                Layout {
                    table: "none".into(),
                    partitions: Vec::new(),
                    whole_disk_fs: None,
                    unpartitioned_bytes: size,
                    unformatted_bytes: 0,
                },
                |f| layout(f, size),
            );
            let ranges = match (&file, lun.block_device) {
                (Some(f), false) => data_ranges(f, size).ok(),
                _ => None,
            };
            let allocated = ranges
                .as_ref()
                .map(|r| r.iter().map(|(s, e)| e - s).sum::<u64>());
            let mut holes: Vec<(u64, u64)> = Vec::new();
            if let Some(r) = &ranges {
                let mut at = 0;
                for &(s, e) in r {
                    if s > at {
                        holes.push((at, s));
                    }
                    at = e;
                }
                if at < size {
                    holes.push((at, size));
                }
            }
            holes.sort_by_key(|(s, e)| std::cmp::Reverse(e - s));
            holes.truncate(16);
            holes.sort();
            let (zero_scan_bytes, zero_allocated_bytes) = match (&file, &ranges) {
                (Some(f), Some(r)) => zero_chunks(f, r, 64 << 10),
                _ => (0, 0),
            };
            let disks: Vec<DiskPresence> = state
                .disks
                .iter()
                .filter(|d| d.lun == lun.name)
                .map(|d| {
                    let connected = d.connected.load(Ordering::SeqCst);
                    let last = d.last_change_ms.load(Ordering::SeqCst);
                    DiskPresence {
                        tenant: d.tenant.clone(),
                        socket: d.socket.clone(),
                        connected,
                        idle_s: (!connected && last > 0)
                            .then(|| now_ms.saturating_sub(last) as f64 / 1000.0),
                        ever_connected: last > 0,
                    }
                })
                .collect();
            let dark = layout.unpartitioned_bytes + layout.unformatted_bytes;
            LunDark {
                lun: lun.name.clone(),
                path: lun.path.clone(),
                size_bytes: size,
                allocated_bytes: allocated,
                never_written_bytes: allocated.map(|a| size.saturating_sub(a)),
                never_written: holes,
                written_since_attach_bytes: state
                    .disks
                    .iter()
                    .filter(|d| d.lun == lun.name)
                    .map(|d| d.counters.write_bytes.load(Ordering::Relaxed))
                    .sum(),
                dark_bytes: dark,
                dark_pct: 100.0 * dark as f64 / size.max(1) as f64,
                unmapped: disks.is_empty(),
                disks,
                layout,
                zero_scan_bytes,
                zero_allocated_bytes,
            }
        })
        .collect()
}
