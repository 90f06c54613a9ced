//! Request validation: the traffic cop. Every descriptor chain a guest posts is parsed into a
//! typed [`BlkRequest`] before anything touches storage, or rejected with the status the
//! virtio spec asks for (virtio 1.2 §5.2.6).
//!
//! The chain is read the way the spec defines it, not the way a friendly driver lays it out:
//! all device-readable descriptors come first and form one byte stream (the 16-byte header,
//! then, for writes, the data or the discard/write-zeroes segments); the device-writable ones
//! follow and form another (read data or the ID string, then the status byte, which is the last
//! byte of the chain). So a header split across descriptors, or data sharing a descriptor with
//! the header, parse the same as Linux's one-descriptor-per-part layout.
//!
//! A [`Rejection`] carries its status byte and counter; only a chain with no writable byte at
//! all cannot be answered with a status — it is still returned to the used ring (length 0), so
//! the queue never sticks.

use std::fmt;

use virtio_queue::DescriptorChain;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

pub const SECTOR_SIZE: u64 = 512;
pub const SECTOR_SHIFT: u32 = 9;
/// `VIRTIO_BLK_ID_BYTES`.
pub const ID_BYTES: usize = 20;

pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`: the only flag defined for a segment.
pub const SEGMENT_FLAG_UNMAP: u32 = 1;
const HEADER_LEN: u64 = 16;
const SEGMENT_LEN: u64 = 16;

/// What the parser needs to know about the disk a chain was posted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskLimits {
    pub capacity_sectors: u64,
    pub read_only: bool,
    /// Longest chain accepted (header + data descriptors + status).
    pub max_descriptors: usize,
    pub max_discard_segments: u32,
    pub max_discard_sectors: u32,
    pub max_write_zeroes_segments: u32,
    pub max_write_zeroes_sectors: u32,
}

/// A guest memory range the request reads from or writes into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRange {
    pub addr: GuestAddress,
    pub len: u32,
}

/// One range of a discard or write-zeroes request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectorRange {
    pub sector: u64,
    pub sectors: u32,
    pub unmap: bool,
}

/// A validated request: every range is inside the disk and inside guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkRequest {
    /// Read `len` bytes at `sector` into `data` (device-writable guest memory).
    Read {
        sector: u64,
        data: Vec<GuestRange>,
        len: u64,
    },
    /// Write `len` bytes from `data` (device-readable guest memory) at `sector`.
    Write {
        sector: u64,
        data: Vec<GuestRange>,
        len: u64,
    },
    Flush,
    /// Write the disk's serial into `buf`.
    GetId {
        buf: Vec<GuestRange>,
        len: u64,
    },
    Discard {
        ranges: Vec<SectorRange>,
    },
    WriteZeroes {
        ranges: Vec<SectorRange>,
    },
}

impl BlkRequest {
    /// Bytes the device writes into the chain's device-writable part on success (the used
    /// length), not counting the status byte.
    pub fn data_in_len(&self) -> u64 {
        match self {
            BlkRequest::Read { len, .. } => *len,
            BlkRequest::GetId { len, .. } => (*len).min(ID_BYTES as u64),
            _ => 0,
        }
    }

    pub fn kind(&self) -> RequestKind {
        match self {
            BlkRequest::Read { .. } => RequestKind::Read,
            BlkRequest::Write { .. } => RequestKind::Write,
            BlkRequest::Flush => RequestKind::Flush,
            BlkRequest::GetId { .. } => RequestKind::GetId,
            BlkRequest::Discard { .. } => RequestKind::Discard,
            BlkRequest::WriteZeroes { .. } => RequestKind::WriteZeroes,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Read,
    Write,
    Flush,
    GetId,
    Discard,
    WriteZeroes,
}

/// Why a chain was refused. Each class has its own counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// No device-writable byte to put a status in.
    NoStatusByte,
    /// The chain ended on a descriptor that still points onward: a loop, a next index out of
    /// the table, or a bad indirect table.
    Unterminated,
    /// More descriptors than the disk accepts.
    TooLong {
        descriptors: usize,
    },
    /// A descriptor lies (partly) outside guest memory.
    OutsideGuestMemory {
        addr: u64,
        len: u32,
    },
    /// A device-readable descriptor after a device-writable one, or data in the wrong
    /// direction for the request type.
    WrongDirection,
    /// Fewer than 16 readable bytes: no header.
    ShortHeader {
        readable: u64,
    },
    /// Data length not a multiple of 512 (or a segment list not a multiple of 16).
    BadLength {
        len: u64,
    },
    /// The sector range runs past the disk's end (or overflows).
    OutOfRange {
        sector: u64,
        len: u64,
    },
    UnknownType(u32),
    /// Discard/write-zeroes: a flag the spec does not define, or unmap on a discard.
    BadSegmentFlags {
        flags: u32,
    },
    /// Discard/write-zeroes: more segments or sectors than the disk advertised.
    SegmentLimit,
    ReadOnly,
}

/// Counter slots, one per rejection class (see [`Rejection::class`]).
pub const REJECTION_CLASSES: [&str; 12] = [
    "no_status_byte",
    "unterminated_chain",
    "chain_too_long",
    "outside_guest_memory",
    "wrong_direction",
    "short_header",
    "bad_length",
    "out_of_range",
    "unknown_type",
    "bad_segment_flags",
    "segment_limit",
    "read_only",
];

impl Rejection {
    /// The status byte the guest gets.
    pub fn status(&self) -> u8 {
        match self {
            Rejection::UnknownType(_) | Rejection::BadSegmentFlags { .. } => VIRTIO_BLK_S_UNSUPP,
            _ => VIRTIO_BLK_S_IOERR,
        }
    }

    /// Index into [`REJECTION_CLASSES`].
    pub fn class(&self) -> usize {
        match self {
            Rejection::NoStatusByte => 0,
            Rejection::Unterminated => 1,
            Rejection::TooLong { .. } => 2,
            Rejection::OutsideGuestMemory { .. } => 3,
            Rejection::WrongDirection => 4,
            Rejection::ShortHeader { .. } => 5,
            Rejection::BadLength { .. } => 6,
            Rejection::OutOfRange { .. } => 7,
            Rejection::UnknownType(_) => 8,
            Rejection::BadSegmentFlags { .. } => 9,
            Rejection::SegmentLimit => 10,
            Rejection::ReadOnly => 11,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NoStatusByte => write!(f, "chain has no device-writable status byte"),
            Rejection::Unterminated => write!(
                f,
                "chain does not terminate (loop, bad next index or bad indirect table)"
            ),
            Rejection::TooLong { descriptors } => write!(
                f,
                "chain has {descriptors} descriptors, more than the disk accepts"
            ),
            Rejection::OutsideGuestMemory { addr, len } => {
                write!(f, "descriptor {addr:#x}+{len} is outside guest memory")
            }
            Rejection::WrongDirection => {
                write!(f, "descriptor direction does not match the request")
            }
            Rejection::ShortHeader { readable } => {
                write!(f, "only {readable} readable bytes, no 16-byte header")
            }
            Rejection::BadLength { len } => {
                write!(f, "data length {len} is not a whole number of units")
            }
            Rejection::OutOfRange { sector, len } => {
                write!(f, "sector {sector} + {len} bytes runs past the disk")
            }
            Rejection::UnknownType(t) => write!(f, "unknown request type {t}"),
            Rejection::BadSegmentFlags { flags } => {
                write!(f, "segment flags {flags:#x} not supported")
            }
            Rejection::SegmentLimit => write!(f, "more segments or sectors than advertised"),
            Rejection::ReadOnly => write!(f, "write to a read-only disk"),
        }
    }
}

/// A parsed chain: its head (for the used ring), where its status byte goes, and the request
/// or the reason it was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedChain {
    pub head: u16,
    /// `None` only for [`Rejection::NoStatusByte`].
    pub status_addr: Option<GuestAddress>,
    pub outcome: Result<BlkRequest, Rejection>,
}

impl ParsedChain {
    /// The used-ring length when the request finishes with `status`: bytes the device wrote.
    pub fn used_len(&self, status: u8) -> u32 {
        let data = match (&self.outcome, status) {
            (Ok(req), VIRTIO_BLK_S_OK) => req.data_in_len(),
            _ => 0,
        };
        let status_byte = u64::from(self.status_addr.is_some());
        u32::try_from(data + status_byte).unwrap_or(u32::MAX)
    }
}

/// Parses one descriptor chain, read from `mem`, against `limits`.
pub fn parse_chain<M>(
    chain: DescriptorChain<M>,
    mem: &M::Target,
    limits: &DiskLimits,
) -> ParsedChain
where
    M: std::ops::Deref,
    M::Target: GuestMemoryBackend + Sized,
{
    let head = chain.head_index();
    parse_descriptors(head, chain, mem, limits)
}

/// [`parse_chain`] for a chain walked some other way (a request resubmitted after a restart is
/// found by its head, not popped from the avail ring: see [`ChainAt`]).
pub fn parse_descriptors<M>(
    head: u16,
    chain: impl Iterator<Item = Descriptor>,
    mem: &M,
    limits: &DiskLimits,
) -> ParsedChain
where
    M: GuestMemoryBackend,
{
    let mut readable: Vec<GuestRange> = Vec::new();
    let mut writable: Vec<GuestRange> = Vec::new();
    let mut count = 0usize;
    let mut terminated = true;
    let mut direction_error = false;
    let mut outside: Option<(u64, u32)> = None;
    let mut last_writable: Option<GuestRange> = None;
    // Walk the whole chain even past the limit: the status byte is its last byte, and only the
    // end tells a loop (never terminates) from a merely long chain. The iterator itself stops
    // after as many descriptors as the table holds.
    for desc in chain {
        count += 1;
        terminated = !Descriptor::has_next(&desc);
        let range = GuestRange {
            addr: desc.addr(),
            len: desc.len(),
        };
        if desc.is_write_only() && desc.len() > 0 {
            last_writable = Some(range);
        }
        if count > limits.max_descriptors {
            continue;
        }
        if desc.len() > 0 && outside.is_none() && !mem.check_range(desc.addr(), desc.len() as usize)
        {
            outside = Some((desc.addr().raw_value(), desc.len()));
        }
        if desc.is_write_only() {
            writable.push(range);
        } else {
            if !writable.is_empty() {
                direction_error = true;
            }
            readable.push(range);
        }
    }

    // The status byte is the last byte of the device-writable part; find it first so that
    // every later rejection can be answered.
    let status_addr = last_writable.and_then(|r| {
        let at = r.addr.checked_add(u64::from(r.len) - 1)?;
        mem.check_range(at, 1).then_some(at)
    });
    let Some(status_addr) = status_addr else {
        return ParsedChain {
            head,
            status_addr: None,
            outcome: Err(Rejection::NoStatusByte),
        };
    };
    let reject = |r: Rejection| ParsedChain {
        head,
        status_addr: Some(status_addr),
        outcome: Err(r),
    };
    if !terminated {
        return reject(Rejection::Unterminated);
    }
    if count > limits.max_descriptors {
        return reject(Rejection::TooLong { descriptors: count });
    }
    if let Some((addr, len)) = outside {
        return reject(Rejection::OutsideGuestMemory { addr, len });
    }
    if direction_error {
        return reject(Rejection::WrongDirection);
    }

    let readable_len: u64 = readable.iter().map(|r| u64::from(r.len)).sum();
    if readable_len < HEADER_LEN {
        return reject(Rejection::ShortHeader {
            readable: readable_len,
        });
    }
    let mut header = [0u8; HEADER_LEN as usize];
    if read_stream(mem, &readable, 0, &mut header).is_err() {
        return reject(Rejection::OutsideGuestMemory {
            addr: readable[0].addr.raw_value(),
            len: readable[0].len,
        });
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let out_data = sub_ranges(&readable, HEADER_LEN, readable_len - HEADER_LEN);
    let out_len = readable_len - HEADER_LEN;
    let writable_len: u64 = writable.iter().map(|r| u64::from(r.len)).sum();
    // Everything writable but the status byte.
    let in_len = writable_len - 1;
    let in_data = sub_ranges(&writable, 0, in_len);

    let outcome = match req_type {
        VIRTIO_BLK_T_IN => {
            if out_len != 0 {
                Err(Rejection::WrongDirection)
            } else {
                check_rw(sector, in_len, limits).map(|()| BlkRequest::Read {
                    sector,
                    data: in_data,
                    len: in_len,
                })
            }
        }
        VIRTIO_BLK_T_OUT => {
            if in_len != 0 {
                Err(Rejection::WrongDirection)
            } else if limits.read_only {
                Err(Rejection::ReadOnly)
            } else {
                check_rw(sector, out_len, limits).map(|()| BlkRequest::Write {
                    sector,
                    data: out_data,
                    len: out_len,
                })
            }
        }
        VIRTIO_BLK_T_FLUSH => Ok(BlkRequest::Flush),
        VIRTIO_BLK_T_GET_ID => {
            if in_len == 0 {
                Err(Rejection::BadLength { len: 0 })
            } else {
                Ok(BlkRequest::GetId {
                    buf: in_data,
                    len: in_len,
                })
            }
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES => {
            let discard = req_type == VIRTIO_BLK_T_DISCARD;
            if limits.read_only {
                Err(Rejection::ReadOnly)
            } else if in_len != 0 {
                Err(Rejection::WrongDirection)
            } else {
                parse_segments(mem, &out_data, out_len, discard, limits).map(|ranges| {
                    if discard {
                        BlkRequest::Discard { ranges }
                    } else {
                        BlkRequest::WriteZeroes { ranges }
                    }
                })
            }
        }
        other => Err(Rejection::UnknownType(other)),
    };
    ParsedChain {
        head,
        status_addr: Some(status_addr),
        outcome,
    }
}

fn check_rw(sector: u64, len: u64, limits: &DiskLimits) -> Result<(), Rejection> {
    if len % SECTOR_SIZE != 0 {
        return Err(Rejection::BadLength { len });
    }
    let end = sector
        .checked_mul(SECTOR_SIZE)
        .and_then(|start| start.checked_add(len));
    match end {
        Some(end) if end <= limits.capacity_sectors.saturating_mul(SECTOR_SIZE) => Ok(()),
        _ => Err(Rejection::OutOfRange { sector, len }),
    }
}

fn parse_segments<M: GuestMemoryBackend>(
    mem: &M,
    data: &[GuestRange],
    len: u64,
    discard: bool,
    limits: &DiskLimits,
) -> Result<Vec<SectorRange>, Rejection> {
    if len == 0 || len % SEGMENT_LEN != 0 {
        return Err(Rejection::BadLength { len });
    }
    let (max_segments, max_sectors) = if discard {
        (limits.max_discard_segments, limits.max_discard_sectors)
    } else {
        (
            limits.max_write_zeroes_segments,
            limits.max_write_zeroes_sectors,
        )
    };
    let n = len / SEGMENT_LEN;
    if n > u64::from(max_segments) {
        return Err(Rejection::SegmentLimit);
    }
    let mut ranges = Vec::with_capacity(n as usize);
    for i in 0..n {
        let mut raw = [0u8; SEGMENT_LEN as usize];
        read_stream(mem, data, i * SEGMENT_LEN, &mut raw)
            .map_err(|_| Rejection::BadLength { len })?;
        let sector = u64::from_le_bytes([
            raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7],
        ]);
        let sectors = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        let flags = u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]);
        if flags & !SEGMENT_FLAG_UNMAP != 0 || (discard && flags != 0) {
            return Err(Rejection::BadSegmentFlags { flags });
        }
        if sectors > max_sectors {
            return Err(Rejection::SegmentLimit);
        }
        let end = sector.checked_add(u64::from(sectors));
        if !matches!(end, Some(end) if end <= limits.capacity_sectors) {
            return Err(Rejection::OutOfRange {
                sector,
                len: u64::from(sectors) * SECTOR_SIZE,
            });
        }
        ranges.push(SectorRange {
            sector,
            sectors,
            unmap: flags & SEGMENT_FLAG_UNMAP != 0,
        });
    }
    Ok(ranges)
}

/// Copies `buf.len()` bytes starting `offset` bytes into the stream formed by `ranges`.
fn read_stream<M: GuestMemoryBackend>(
    mem: &M,
    ranges: &[GuestRange],
    offset: u64,
    buf: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    let mut filled = 0usize;
    for r in sub_ranges(ranges, offset, buf.len() as u64) {
        let n = r.len as usize;
        mem.read_slice(&mut buf[filled..filled + n], r.addr)?;
        filled += n;
    }
    Ok(())
}

/// The part of the stream formed by `ranges` from `offset` for `len` bytes, as ranges.
pub fn sub_ranges(ranges: &[GuestRange], offset: u64, len: u64) -> Vec<GuestRange> {
    let mut out = Vec::new();
    let mut skip = offset;
    let mut want = len;
    for r in ranges {
        if want == 0 {
            break;
        }
        let rlen = u64::from(r.len);
        if skip >= rlen {
            skip -= rlen;
            continue;
        }
        let take = (rlen - skip).min(want);
        out.push(GuestRange {
            addr: r.addr.unchecked_add(skip),
            len: take as u32,
        });
        want -= take;
        skip = 0;
    }
    out
}
/// The descriptors of the chain that starts at `head` in the descriptor table at `table`
/// (`size` entries), walked exactly as `virtio_queue::DescriptorChain` walks a popped chain:
/// one level of indirect table (a multiple of 16 bytes, at most 65 535 entries), a `next`
/// beyond the table ends the chain, and no more descriptors than the table holds are yielded
/// (a loop ends), nor more than 2³² bytes in all. Used to resubmit a request a previous broker
/// had in flight, which is known by its head only.
pub struct ChainAt<'m, M> {
    mem: &'m M,
    table: GuestAddress,
    size: u16,
    next: u16,
    ttl: u16,
    indirect: bool,
    bytes: u32,
}

impl<'m, M: GuestMemoryBackend> ChainAt<'m, M> {
    pub fn new(mem: &'m M, table: GuestAddress, size: u16, head: u16) -> Self {
        ChainAt {
            mem,
            table,
            size,
            next: head,
            ttl: size,
            indirect: false,
            bytes: 0,
        }
    }
}

impl<M: GuestMemoryBackend> Iterator for ChainAt<'_, M> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        if self.ttl == 0 || self.next >= self.size {
            return None;
        }
        let at = self
            .table
            .checked_add(u64::from(self.next) * DESCRIPTOR_LEN)?;
        let desc: Descriptor = self.mem.read_obj(at).ok()?;
        if desc.refers_to_indirect_table() {
            // Indirect tables do not nest (virtio 1.2 §2.7.5.3.1).
            if self.indirect || u64::from(desc.len()) % DESCRIPTOR_LEN != 0 {
                return None;
            }
            let entries = u64::from(desc.len()) / DESCRIPTOR_LEN;
            self.size = u16::try_from(entries).ok()?;
            self.table = desc.addr();
            self.next = 0;
            self.ttl = self.size;
            self.indirect = true;
            return self.next();
        }
        self.bytes = self.bytes.checked_add(desc.len())?;
        if desc.has_next() {
            self.next = desc.next();
            self.ttl -= 1;
        } else {
            self.ttl = 0;
        }
        Some(desc)
    }
}

const DESCRIPTOR_LEN: u64 = 16;
