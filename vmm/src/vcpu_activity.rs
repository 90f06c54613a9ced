//! What each vCPU thread is doing, kept by the thread itself and read when a guest times out.
//!
//! A guest that stops making progress is either held by its VMM (a vCPU thread outside
//! KVM_RUN: handling an exit, waiting on a lock) or stopped inside the kernel's KVM (the thread
//! in KVM_RUN, no exit for a long time). Only the first can be weir's doing: interrupt, NMI and
//! timer delivery to a running vCPU happen inside KVM (the in-kernel LAPIC, IOAPIC and PIT), so
//! a guest CPU that stops answering NMIs while its thread sits in KVM_RUN is the kernel's (or,
//! nested, the emulator's) matter. The timeout report says which it was, per vCPU.
//!
//! Cost: two clock reads and three relaxed stores per exit to userspace. Exits here are
//! configuration traffic only (the serial port, virtio-mmio registers); a disk's kicks and
//! completions never leave the kernel.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One vCPU thread's activity.
#[derive(Debug, Default)]
pub(crate) struct VcpuActivity {
    /// Nanoseconds since the machine was created at the last entry to or return from KVM_RUN,
    /// shifted left by one, the low bit set while inside; 0 before the first entry.
    state: AtomicU64,
    /// Exits to userspace so far.
    exits: AtomicU64,
    /// The last exit to userspace: [`ExitKind`] in the top byte, the port or address below.
    last_exit: AtomicU64,
}

/// What a vCPU's last exit to userspace was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitKind {
    IoOut = 1,
    IoIn = 2,
    MmioRead = 3,
    MmioWrite = 4,
    Hlt = 5,
    /// KVM_RUN returned EINTR or EAGAIN (a signal; an AP waiting for its SIPI).
    Interrupted = 6,
    Other = 7,
}

impl ExitKind {
    fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            1 => Self::IoOut,
            2 => Self::IoIn,
            3 => Self::MmioRead,
            4 => Self::MmioWrite,
            5 => Self::Hlt,
            6 => Self::Interrupted,
            7 => Self::Other,
            _ => return None,
        })
    }
}

const ADDR_MASK: u64 = (1 << 56) - 1;

impl VcpuActivity {
    fn stamp(created: Instant) -> u64 {
        // u64 nanoseconds last 584 years.
        created.elapsed().as_nanos() as u64
    }

    /// The thread is about to enter KVM_RUN.
    pub(crate) fn entering(&self, created: Instant) {
        self.state
            .store((Self::stamp(created) << 1) | 1, Ordering::Relaxed);
    }

    /// KVM_RUN returned with `kind` (at port or address `addr`).
    pub(crate) fn exited(&self, created: Instant, kind: ExitKind, addr: u64) {
        self.state
            .store(Self::stamp(created) << 1, Ordering::Relaxed);
        self.exits.fetch_add(1, Ordering::Relaxed);
        self.last_exit.store(
            ((kind as u64) << 56) | (addr & ADDR_MASK),
            Ordering::Relaxed,
        );
    }

    /// The state `now` (time since the machine was created).
    pub(crate) fn snapshot(&self, id: usize, now: Duration) -> VcpuState {
        let state = self.state.load(Ordering::Relaxed);
        let last = self.last_exit.load(Ordering::Relaxed);
        let at = Duration::from_nanos(state >> 1);
        VcpuState {
            id,
            place: match (state, state & 1) {
                (0, _) => VcpuPlace::NotStarted,
                (_, 1) => VcpuPlace::InKvmRun {
                    since: at,
                    for_: now.saturating_sub(at),
                },
                _ => VcpuPlace::InVmm {
                    since: at,
                    for_: now.saturating_sub(at),
                },
            },
            exits: self.exits.load(Ordering::Relaxed),
            last_exit: ExitKind::from_byte((last >> 56) as u8).map(|k| (k, last & ADDR_MASK)),
        }
    }
}

/// Where a vCPU thread was when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VcpuPlace {
    /// It never entered KVM_RUN.
    NotStarted,
    /// Inside KVM_RUN since `since` (after the machine's creation), for `for_`.
    InKvmRun { since: Duration, for_: Duration },
    /// In weir's code (an exit being handled) since `since`, for `for_`.
    InVmm { since: Duration, for_: Duration },
}

/// One vCPU's state when the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuState {
    pub id: usize,
    pub place: VcpuPlace,
    /// Exits to userspace before.
    pub exits: u64,
    /// The last exit to userspace and its port or address.
    pub last_exit: Option<(ExitKind, u64)>,
}

impl std::fmt::Display for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vCPU {}: ", self.id)?;
        match self.place {
            VcpuPlace::NotStarted => write!(f, "never entered KVM_RUN")?,
            VcpuPlace::InKvmRun { since, for_ } => write!(
                f,
                "inside KVM_RUN for {:.1} s (entered {:.1} s after start)",
                for_.as_secs_f64(),
                since.as_secs_f64()
            )?,
            VcpuPlace::InVmm { since, for_ } => write!(
                f,
                "outside KVM_RUN, in weir vm, for {:.1} s (since {:.1} s after start)",
                for_.as_secs_f64(),
                since.as_secs_f64()
            )?,
        }
        write!(f, "; {} exits to weir vm", self.exits)?;
        if let Some((kind, addr)) = self.last_exit {
            let what = match kind {
                ExitKind::IoOut => format!("port {addr:#x} write"),
                ExitKind::IoIn => format!("port {addr:#x} read"),
                ExitKind::MmioRead => format!("MMIO {addr:#x} read"),
                ExitKind::MmioWrite => format!("MMIO {addr:#x} write"),
                ExitKind::Hlt => "HLT".to_string(),
                ExitKind::Interrupted => "KVM_RUN interrupted (EINTR/EAGAIN)".to_string(),
                ExitKind::Other => "another exit".to_string(),
            };
            write!(f, ", the last: {what}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vcpu_is_placed_inside_or_outside_kvm_run_with_its_last_exit() {
        let created = Instant::now() - Duration::from_secs(10);
        let a = VcpuActivity::default();
        assert_eq!(
            a.snapshot(0, created.elapsed()).place,
            VcpuPlace::NotStarted
        );
        a.entering(created);
        let s = a.snapshot(1, created.elapsed() + Duration::from_secs(5));
        match s.place {
            VcpuPlace::InKvmRun { since, for_ } => {
                assert!(since >= Duration::from_secs(10));
                assert!(for_ >= Duration::from_secs(5) && for_ < Duration::from_secs(6));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.exits, 0);
        assert_eq!(s.last_exit, None);
        a.exited(created, ExitKind::IoOut, 0x3f8);
        let s = a.snapshot(1, created.elapsed());
        assert!(matches!(s.place, VcpuPlace::InVmm { .. }), "{s}");
        assert_eq!(s.exits, 1);
        assert_eq!(s.last_exit, Some((ExitKind::IoOut, 0x3f8)));
        let text = s.to_string();
        assert!(
            text.starts_with("vCPU 1: outside KVM_RUN, in weir vm, for "),
            "{text}"
        );
        assert!(
            text.ends_with("1 exits to weir vm, the last: port 0x3f8 write"),
            "{text}"
        );
        a.entering(created);
        a.exited(created, ExitKind::MmioWrite, 0xd000_0050);
        a.entering(created);
        let s = a.snapshot(1, created.elapsed());
        assert!(matches!(s.place, VcpuPlace::InKvmRun { .. }));
        assert!(
            s.to_string()
                .ends_with("2 exits to weir vm, the last: MMIO 0xd0000050 write"),
            "{s}"
        );
    }
}
