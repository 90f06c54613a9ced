//! The clock-driven half of scheduling, one thread per broker: the array model's completions
//! and timeouts, scheduled array events (capacity, faults, policy changes), controller ticks,
//! path checks, retries and mClock timers, and the thread's own lateness
//! (`crate::health`), which the window controllers are told of.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use weir_sched::array::PortFault;
use weir_sched::depth::DepthPolicy;

use crate::array_runtime::ArrayRuntime;
use crate::dispatch::LunDispatcher;
use crate::health::{ClockHealth, LATE_LIMIT_S};
use crate::inbox::BrokerClock;

/// Controller tick period.
const TICK_S: f64 = 0.01;

/// A change to the emulated array at a time on the broker's clock.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayEventKind {
    /// LUN (index in the model) capacity, percent of its model.
    Capacity { lun: usize, pct: f64 },
    /// A fault on a port (index in the model).
    Fault { port: usize, fault: PortFault },
    /// A LUN's policy changes (index in the scheduler thread's dispatcher list).
    Policy {
        dispatcher: usize,
        depth: Option<DepthPolicy>,
        selector: Option<weir_sched::path::PathSelectorKind>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ArrayEvent {
    pub at_s: f64,
    pub kind: ArrayEventKind,
    /// For the log.
    pub label: String,
}

/// The clock-driven half of scheduling, for every LUN and array of a broker.
pub struct SchedulerThread {
    stop: Arc<AtomicBool>,
    wake: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl SchedulerThread {
    pub fn start(
        clock: BrokerClock,
        dispatchers: Vec<Arc<LunDispatcher>>,
        arrays: Vec<Arc<ArrayRuntime>>,
        mut events: Vec<ArrayEvent>,
        wake: Arc<(Mutex<bool>, Condvar)>,
        health: Arc<ClockHealth>,
    ) -> std::io::Result<Self> {
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, wake2) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                let mut next_tick = 0.0;
                let mut next_event = 0usize;
                // The deadline the thread last slept for, and how late it has woken since the
                // controllers' last tick (wake-ups late by more than LATE_LIMIT_S, summed).
                let mut slept_for: Option<f64> = None;
                let mut late_since_tick = 0.0;
                while !stop2.load(Ordering::SeqCst) {
                    let now = clock.now();
                    if let Some(deadline) = slept_for.take() {
                        let lag = now - deadline;
                        health.woke_late(lag);
                        if lag > LATE_LIMIT_S {
                            late_since_tick += lag;
                        }
                    }
                    while let Some(e) = events.get(next_event).filter(|e| e.at_s <= now) {
                        log::warn!("t = {now:.1} s: scheduled event: {}", e.label);
                        match &e.kind {
                            ArrayEventKind::Capacity { lun, pct } => {
                                if let Some(a) = arrays.first() {
                                    a.set_capacity(*lun, *pct)
                                }
                            }
                            ArrayEventKind::Fault { port, fault } => {
                                if let Some(a) = arrays.first() {
                                    a.set_port_fault(now, *port, *fault)
                                }
                            }
                            ArrayEventKind::Policy {
                                dispatcher,
                                depth,
                                selector,
                            } => {
                                if let Some(d) = dispatchers.get(*dispatcher) {
                                    d.set_policy(depth.clone(), *selector);
                                }
                            }
                        }
                        next_event += 1;
                    }
                    for a in &arrays {
                        a.fire_due(now);
                    }
                    if now >= next_tick {
                        next_tick = now + TICK_S;
                        for a in &arrays {
                            a.expire(now);
                        }
                        for d in &dispatchers {
                            d.check_paths(now);
                            if late_since_tick > 0.0 {
                                d.note_lateness(late_since_tick);
                            }
                            d.tick(now);
                        }
                        late_since_tick = 0.0;
                    } else {
                        for d in &dispatchers {
                            if d.next_deadline().is_some_and(|t| t <= now) {
                                d.pump(now, None);
                            }
                        }
                    }
                    let deadline = arrays
                        .iter()
                        .filter_map(|a| a.next_completion())
                        .chain(dispatchers.iter().filter_map(|d| d.next_deadline()))
                        .chain(events.get(next_event).map(|e| e.at_s))
                        .fold(next_tick, f64::min);
                    let wait = (deadline - clock.now()).max(0.0);
                    if wait > 0.0 {
                        let (lock, cv) = &*wake2;
                        let mut woken = lock.lock().unwrap_or_else(|p| p.into_inner());
                        if !*woken {
                            let (guard, timed_out) = cv
                                .wait_timeout(woken, Duration::from_secs_f64(wait))
                                .map(|(g, t)| (g, t.timed_out()))
                                .unwrap_or_else(|p| {
                                    let (g, t) = p.into_inner();
                                    (g, t.timed_out())
                                });
                            woken = guard;
                            // Only a wake-up by the timer says how late the thread runs.
                            if timed_out {
                                slept_for = Some(deadline);
                            }
                        }
                        *woken = false;
                    }
                }
            })?;
        Ok(SchedulerThread {
            stop,
            wake,
            thread: Some(thread),
        })
    }
}

impl Drop for SchedulerThread {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let (lock, cv) = &*self.wake;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
