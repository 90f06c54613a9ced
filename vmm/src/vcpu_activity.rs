//! What each vCPU thread is doing, kept by the thread itself and read when a guest times out.
//!
//! A guest that stops making progress is either held by its VMM (a vCPU thread outside
//! KVM_RUN: handling an exit, waiting on a lock) or stopped inside the kernel's KVM (the thread
//! in KVM_RUN, no exit for a long time). Only the first can be weir's doing: interrupt, NMI and
//! timer delivery to a running vCPU happen inside KVM (the in-kernel LAPIC, IOAPIC and PIT), so
//! a guest CPU that stops answering NMIs while its thread sits in KVM_RUN is the kernel's (or,
//! nested, the emulator's) matter. The timeout report says which it was, per vCPU.
//!
//! Then weir vm signals each vCPU thread (a real-time signal with an empty handler, every
//! 100 ms for up to 3 s). A thread in KVM_RUN returns at once with EINTR — a halted vCPU too —
//! and records its registers; one that stays inside through every signal is held in the kernel
//! (a host kernel, or under nesting the emulator, that stopped running it), which no userspace
//! VMM can cause: it cannot make a thread inside a system call ignore an unblocked signal.
//!
//! Cost: two clock reads and three relaxed stores per exit to userspace. Exits here are
//! configuration traffic only (the serial port, virtio-mmio registers); a disk's kicks and
//! completions never leave the kernel.

use std::sync::Mutex;
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
    /// The guest timed out: at its next return from KVM_RUN the thread records its registers
    /// in `answer` and stops. Nanoseconds since the machine was created when asked, plus one;
    /// 0 before.
    stop_requested: AtomicU64,
    answer: Mutex<Option<Answer>>,
}

/// A vCPU thread's answer to the stop request.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    /// Since the request.
    after: Duration,
    registers: String,
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
    /// KVM_RUN failed with another errno (stored in place of the address).
    Failed = 8,
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
            8 => Self::Failed,
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

    /// Asks the thread to stop at its next return from KVM_RUN (the caller signals it).
    pub(crate) fn request_stop(&self, created: Instant) {
        self.stop_requested
            .store(Self::stamp(created) + 1, Ordering::SeqCst);
    }

    /// Whether a stop was asked for (checked by the thread after every KVM_RUN).
    pub(crate) fn stop_requested(&self) -> bool {
        self.stop_requested.load(Ordering::SeqCst) != 0
    }

    /// How long ago the stop was asked for.
    pub(crate) fn since_stop_request(&self, created: Instant) -> Duration {
        let asked = self.stop_requested.load(Ordering::SeqCst).saturating_sub(1);
        Duration::from_nanos(Self::stamp(created).saturating_sub(asked))
    }

    /// The thread stopped `after` the request, with these registers.
    pub(crate) fn answer(&self, after: Duration, registers: String) {
        *self.answer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Answer { after, registers });
    }

    pub(crate) fn answered(&self) -> bool {
        self.answer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// What the stop request found, `waited` after it was made.
    pub(crate) fn signal_outcome(&self, waited: Duration) -> SignalOutcome {
        match &*self.answer.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(a) => SignalOutcome::Stopped {
                after: a.after,
                registers: a.registers.clone(),
            },
            None => SignalOutcome::NoAnswer { waited },
        }
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
            signal: None,
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

/// What signalling a vCPU thread at the timeout found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// The thread returned from KVM_RUN `after` the first signal; its registers then.
    Stopped { after: Duration, registers: String },
    /// It did not answer within `waited`: held inside KVM_RUN (or, outside it, in weir vm).
    NoAnswer { waited: Duration },
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
    /// At a timeout: what signalling the thread found.
    pub signal: Option<SignalOutcome>,
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
                ExitKind::Failed => format!("KVM_RUN failed (errno {addr})"),
            };
            write!(f, ", the last: {what}")?;
        }
        match (&self.signal, self.place) {
            (None, _) => {}
            (Some(SignalOutcome::Stopped { after, registers }), _) => write!(
                f,
                "; signalled, it left KVM_RUN in {:.2} s: {registers}",
                after.as_secs_f64()
            )?,
            (Some(SignalOutcome::NoAnswer { waited }), VcpuPlace::InKvmRun { .. }) => write!(
                f,
                "; it stayed inside KVM_RUN through {:.1} s of signals: held in the kernel",
                waited.as_secs_f64()
            )?,
            (Some(SignalOutcome::NoAnswer { waited }), _) => write!(
                f,
                "; it did not answer {:.1} s of signals: held in weir vm",
                waited.as_secs_f64()
            )?,
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
        // A KVM_RUN error other than EINTR/EAGAIN is told apart, with its errno.
        a.exited(created, ExitKind::Failed, 14);
        let s = a.snapshot(1, created.elapsed());
        assert_eq!(s.last_exit, Some((ExitKind::Failed, 14)));
        assert!(
            s.to_string()
                .ends_with("the last: KVM_RUN failed (errno 14)"),
            "{s}"
        );
    }

    #[test]
    fn the_signal_outcome_says_where_a_vcpu_was_held() {
        let created = Instant::now();
        let a = VcpuActivity::default();
        a.entering(created);
        assert!(!a.stop_requested() && !a.answered());
        a.request_stop(created);
        assert!(a.stop_requested());
        assert!(a.since_stop_request(created) < Duration::from_secs(1));
        let mut s = a.snapshot(0, created.elapsed());
        s.signal = Some(a.signal_outcome(Duration::from_secs(3)));
        assert!(
            s.to_string().ends_with(
                "; it stayed inside KVM_RUN through 3.0 s of signals: held in the kernel"
            ),
            "{s}"
        );
        a.answer(Duration::from_millis(20), "rip=0xffffffff81000000".into());
        assert!(a.answered());
        s.signal = Some(a.signal_outcome(Duration::from_secs(3)));
        assert!(
            s.to_string()
                .ends_with("; signalled, it left KVM_RUN in 0.02 s: rip=0xffffffff81000000"),
            "{s}"
        );
    }
}
