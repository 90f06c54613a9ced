//! The emulated array at run time: the model (`weir_sched::array`) on the broker's clock,
//! and who waits for which of its completions. The scheduler thread delivers completions as
//! they come due ([`ArrayRuntime::fire_due`]) and fails requests held past their timeout.
//!
//! Lock order: model → waiters → inbox (never nested the other way).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use weir_sched::array::{Admission, EmulatedArray, PortFault};

use crate::inbox::{Inbox, InboxEvent};

/// The emulated array: the model, and who waits for which of its completions.
pub struct ArrayRuntime {
    /// QUEUE FULL answers per port.
    pub queue_full: Vec<AtomicU64>,
    model: Mutex<EmulatedArray>,
    waiters: Mutex<HashMap<u64, Waiter>>,
    next_id: AtomicU64,
    /// Wakes the clock thread when a completion earlier than it planned for is scheduled.
    wake: Arc<(Mutex<bool>, Condvar)>,
}

impl std::fmt::Debug for ArrayRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArrayRuntime").finish_non_exhaustive()
    }
}

/// Who waits for a model completion, and until when it may take.
struct Waiter {
    owner: Arc<Inbox>,
    slot: usize,
    deadline: f64,
}

impl ArrayRuntime {
    pub fn new(model: EmulatedArray, wake: Arc<(Mutex<bool>, Condvar)>) -> Self {
        ArrayRuntime {
            queue_full: (0..model.ports()).map(|_| AtomicU64::new(0)).collect(),
            model: Mutex::new(model),
            waiters: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            wake,
        }
    }

    /// Offers `owner`'s request `slot` (`bytes`, a write or not) to the model's `port` for
    /// `lun`; an accepted one is answered through `owner`'s inbox, failed after `timeout_s`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn submit(
        &self,
        now: f64,
        lun: usize,
        port: usize,
        owner: &Arc<Inbox>,
        slot: usize,
        bytes: u64,
        write: bool,
        timeout_s: f64,
    ) -> Admission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let before = model.next_completion();
        let admission = model.submit(now, lun, port, id, bytes, write);
        if admission == Admission::QueueFull {
            if let Some(c) = self.queue_full.get(port) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
        if admission == Admission::Accepted {
            let after = model.next_completion();
            // Register the waiter before the model lock is released: the clock thread may
            // complete a very short service the moment it can take the lock, and a completion
            // without its waiter would be lost (and its request never answered).
            self.waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    id,
                    Waiter {
                        owner: owner.clone(),
                        slot,
                        deadline: now + timeout_s,
                    },
                );
            drop(model);
            if before.is_none_or(|b| after.is_some_and(|a| a < b)) {
                let (lock, cv) = &*self.wake;
                *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                cv.notify_one();
            }
        }
        admission
    }

    /// Delivers every model completion due by `now`.
    pub fn fire_due(&self, now: f64) {
        let mut done = Vec::new();
        {
            let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
            while let Some(c) = model.complete_next(now) {
                done.push((c.id, c.ok, c.at));
            }
        }
        if done.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for (id, ok, at) in done {
            // No waiter: the request timed out and was already answered as failed.
            if let Some(w) = waiters.remove(&id) {
                w.owner.push(
                    InboxEvent::ModelDone {
                        slot: w.slot,
                        ok,
                        at,
                    },
                    true,
                );
            }
        }
    }

    /// Fails every request the model has held past its path's I/O timeout (the initiator
    /// gives up on it; the model's late answer is then ignored).
    pub fn expire(&self, now: f64) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        let late: Vec<u64> = waiters
            .iter()
            .filter(|(_, w)| now >= w.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(w) = waiters.remove(&id) {
                w.owner.push(
                    InboxEvent::ModelDone {
                        slot: w.slot,
                        ok: false,
                        at: now,
                    },
                    true,
                );
            }
        }
    }

    /// A probe through port `port`.
    pub fn probe(&self, port: usize) -> bool {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .probe(port)
    }

    /// Applies a fault to port `port` now.
    pub fn set_port_fault(&self, now: f64, port: usize, fault: PortFault) {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_port_fault(now, port, fault);
        // Failed requests are due at once.
        let (lock, cv) = &*self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
    }

    pub fn next_completion(&self) -> Option<f64> {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_completion()
    }

    /// Scales LUN `lun`'s service units to `percent` of its model.
    pub fn set_capacity(&self, lun: usize, percent: f64) {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .set_capacity(lun, percent);
    }

    /// LUN `lun`'s service units in effect.
    pub fn servers(&self, lun: usize) -> u32 {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .servers(lun)
    }

    /// Requests the port holds now.
    pub fn port_outstanding(&self, port: usize) -> u32 {
        self.model
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .port_outstanding(port)
    }
}
