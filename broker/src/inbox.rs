//! The broker's clock and the queue threads' mailboxes: what the dispatchers and the array
//! model tell the thread that owns a guest's memory (grants, model completions, failures).

use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// Seconds since the broker started: the one clock every dispatcher and model shares.
#[derive(Debug, Clone, Copy)]
pub struct BrokerClock {
    start: Instant,
}

impl BrokerClock {
    pub fn new() -> Self {
        BrokerClock {
            start: Instant::now(),
        }
    }
    pub fn now(&self) -> f64 {
        self.at(Instant::now())
    }
    /// The clock's reading at `t` (one `Instant::now()` serves several uses).
    pub fn at(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.start).as_secs_f64()
    }
}

impl Default for BrokerClock {
    fn default() -> Self {
        Self::new()
    }
}

/// What a queue thread is told by the dispatcher and the array model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum InboxEvent {
    /// Do the I/O of `slot` now, on path `path`.
    Granted {
        slot: usize,
        epoch: u64,
        dispatched_at: f64,
        path: usize,
        /// When this attempt left (service time runs from here).
        attempt_at: f64,
        /// When a path failed this request before, if one did.
        failed_at: Option<f64>,
    },
    /// The array model finished serving `slot`: well, or with a transport error (`ok` false:
    /// the request must be re-issued on another path).
    /// `at`: when the model finished it, on the broker's clock. The window controller times
    /// the storage by it, not by when a (possibly starved) thread got round to delivering it.
    ModelDone { slot: usize, ok: bool, at: f64 },
    /// No path for longer than the hold time: answer `slot` with an I/O error.
    Failed { slot: usize },
    /// A thin pool may have space again (or a held write's time is up): look at the writes
    /// held for space.
    SpaceRetry,
}

/// A queue thread's mailbox.
#[derive(Debug)]
pub struct Inbox {
    events: Mutex<Vec<InboxEvent>>,
    pub(crate) fd: EventFd,
    /// The eventfd was written since the last `take`: only then is it read (a system call
    /// per look would cost the data path three per wake-up for nothing).
    signalled: AtomicBool,
}

impl Inbox {
    pub fn new() -> std::io::Result<Self> {
        Ok(Inbox {
            events: Mutex::new(Vec::new()),
            fd: EventFd::new(EFD_NONBLOCK)?,
            signalled: AtomicBool::new(false),
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    pub(crate) fn push(&self, e: InboxEvent, signal: bool) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
        if signal {
            // Write, then flag: every write is followed by a flag that makes a later `take`
            // read the eventfd, so it never stays readable (epoll is level-triggered).
            let _ = self.fd.write(1);
            self.signalled.store(true, Ordering::SeqCst);
        }
    }

    /// A thin pool's nudge to a worker holding writes for space.
    pub fn space_retry(&self) {
        self.push(InboxEvent::SpaceRetry, true);
    }

    /// Everything delivered so far.
    pub fn take(&self) -> Vec<InboxEvent> {
        // Read (reset) the eventfd before taking the events: an event pushed after the read
        // comes with its own write, so no wake-up is lost; at worst one is spurious.
        if self.signalled.swap(false, Ordering::SeqCst) {
            let _ = self.fd.read();
        }
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
