//! The per-LUN dispatcher: the broker's tenants meet here.
//!
//! Every disk (tenant) mapped to a LUN hands its reads and writes to the LUN's
//! [`LunDispatcher`] instead of submitting them itself. The dispatcher orders them by mClock tags
//! (or FIFO) and lets at most `D` be outstanding (SFQ(D)), `D` set by the LUN's
//! `QueueDepthController` — the same `weir-sched` code `weir sim` runs, here on the real clock.
//! A request the dispatcher lets go becomes a *grant* in the owning queue thread's [`Inbox`]
//! (an eventfd in that thread's epoll set): only that thread may touch its guest's memory and
//! used ring, so it does the I/O.
//!
//! On an `emulated` LUN the grant first passes the array model ([`ArrayRuntime`]): QUEUE FULL
//! or BUSY is a congestion signal and the request is retried after `RETRY_DELAY_S`; an
//! accepted request is done when both the real I/O on the backing file and the model's service
//! have finished (the model's completion arrives as [`InboxEvent::ModelDone`]). The data is
//! always really stored.
//!
//! One [`SchedulerThread`] per broker runs the clock-driven parts: the model's completions,
//! controller ticks, retries and mClock timers (a limited tenant whose tag comes due).
//!
//! Lock order: dispatcher state → array model → array waiters → inbox. Inboxes are never held
//! while taking anything else; the clock thread takes the model and the waiters one after the
//! other, never nested.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use weir_sched::array::{Admission, EmulatedArray};
use weir_sched::cost::CostModel;
use weir_sched::depth::{DepthPolicy, Outcome, QueueDepthController};
use weir_sched::mclock::{MClock, TenantPolicy};
use weir_sched::sim::SchedulerKind;

/// Delay before a request the array refused is offered again.
pub const RETRY_DELAY_S: f64 = 0.001;
/// Controller tick period.
const TICK_S: f64 = 0.01;

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
        self.start.elapsed().as_secs_f64()
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
    /// Do the I/O of `slot` now.
    Granted {
        slot: usize,
        epoch: u64,
        dispatched_at: f64,
    },
    /// The array model finished serving `slot`.
    ModelDone { slot: usize },
}

/// A queue thread's mailbox.
#[derive(Debug)]
pub struct Inbox {
    events: Mutex<Vec<InboxEvent>>,
    fd: EventFd,
}

impl Inbox {
    pub fn new() -> std::io::Result<Self> {
        Ok(Inbox {
            events: Mutex::new(Vec::new()),
            fd: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    pub fn fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    fn push(&self, e: InboxEvent, signal: bool) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
        if signal {
            let _ = self.fd.write(1);
        }
    }

    /// Everything delivered so far.
    pub fn take(&self) -> Vec<InboxEvent> {
        // Read (reset) the eventfd before taking the events: an event pushed after the read
        // comes with its own write, so no wake-up is lost; at worst one is spurious.
        let _ = self.fd.read();
        std::mem::take(&mut *self.events.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

#[derive(Debug)]
struct Ticket {
    owner: Arc<Inbox>,
    slot: usize,
    bytes: u64,
    write: bool,
    /// When the request was first offered to the array (latency runs from there, so time lost
    /// to BUSY retries counts).
    first_dispatch: Option<f64>,
}

enum Queue {
    Mclock(MClock<Ticket>),
    Fifo(VecDeque<Ticket>),
}

struct DispatchState {
    queue: Queue,
    controller: QueueDepthController,
    in_flight: u32,
    retry: VecDeque<Ticket>,
    retry_at: f64,
}

/// The windows of the LUNs behind one port, capped together.
#[derive(Debug)]
pub struct PortBudget {
    pub budget: u32,
    windows: Vec<AtomicU64>,
}

impl PortBudget {
    pub fn new(budget: u32, luns: usize) -> Self {
        PortBudget {
            budget,
            windows: (0..luns).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// LUN `index`'s window after the cap: its proportional part when the windows behind
    /// the port add up to more than the budget (at least one).
    fn effective(&self, index: usize, own: u32) -> u32 {
        if let Some(w) = self.windows.get(index) {
            w.store(u64::from(own), Ordering::Relaxed);
        }
        let total: u64 = self.windows.iter().map(|w| w.load(Ordering::Relaxed)).sum();
        if total <= u64::from(self.budget) {
            return own;
        }
        ((u64::from(own) * u64::from(self.budget) / total.max(1)) as u32).max(1)
    }
}

/// Counters the telemetry reads.
#[derive(Debug, Default)]
pub struct DispatchCounters {
    pub window: AtomicU64,
    pub in_flight: AtomicU64,
    pub queued: AtomicU64,
    pub congestion: AtomicU64,
    pub halvings: AtomicU64,
}

impl std::fmt::Debug for LunDispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LunDispatcher")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// One LUN's scheduler and window.
pub struct LunDispatcher {
    pub name: String,
    array: Option<(Arc<ArrayRuntime>, usize)>,
    budget: Option<(Arc<PortBudget>, usize)>,
    state: Mutex<DispatchState>,
    pub counters: DispatchCounters,
}

impl LunDispatcher {
    /// `tenants` are the policies of the disks mapped to this LUN, in disk order.
    pub fn new(
        name: &str,
        tenants: Vec<TenantPolicy>,
        scheduler: SchedulerKind,
        depth: DepthPolicy,
        array: Option<(Arc<ArrayRuntime>, usize)>,
    ) -> Self {
        let queue = match scheduler {
            SchedulerKind::Mclock => Queue::Mclock(MClock::new(tenants, CostModel::default())),
            SchedulerKind::Fifo => Queue::Fifo(VecDeque::new()),
        };
        let controller = QueueDepthController::new(depth);
        let counters = DispatchCounters::default();
        counters
            .window
            .store(u64::from(controller.window()), Ordering::Relaxed);
        LunDispatcher {
            name: name.to_string(),
            array,
            budget: None,
            state: Mutex::new(DispatchState {
                queue,
                controller,
                in_flight: 0,
                retry: VecDeque::new(),
                retry_at: 0.0,
            }),
            counters,
        }
    }

    /// Puts this LUN under a port budget, as LUN `index` of the port.
    pub fn with_budget(mut self, budget: Arc<PortBudget>, index: usize) -> Self {
        self.budget = Some((budget, index));
        self
    }

    /// The window in force: the controller's, capped by the port budget.
    fn window(&self, st: &DispatchState) -> u32 {
        let own = st.controller.window();
        match &self.budget {
            Some((b, i)) => b.effective(*i, own),
            None => own,
        }
    }

    pub fn emulated(&self) -> bool {
        self.array.is_some()
    }

    /// Queues request `slot` of `owner` (tenant `tenant`).
    pub fn enqueue(
        &self,
        tenant: usize,
        owner: &Arc<Inbox>,
        slot: usize,
        bytes: u64,
        write: bool,
        now: f64,
    ) {
        let ticket = Ticket {
            owner: owner.clone(),
            slot,
            bytes,
            write,
            first_dispatch: None,
        };
        let mut st = self.lock();
        match &mut st.queue {
            Queue::Mclock(m) => m.enqueue(tenant, ticket, bytes, now),
            Queue::Fifo(q) => q.push_back(ticket),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DispatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets requests go while the window allows. Grants to `caller` are not signalled: the
    /// caller reads its inbox right after.
    pub fn pump(&self, now: f64, caller: Option<&Arc<Inbox>>) {
        let mut st = self.lock();
        loop {
            if st.in_flight >= self.window(&st) {
                break;
            }
            let from_retry = !st.retry.is_empty();
            let ticket = if from_retry {
                if st.retry_at > now {
                    break;
                }
                st.retry.pop_front()
            } else {
                match &mut st.queue {
                    Queue::Mclock(m) => m.dispatch(now).map(|(_, t, _)| t),
                    Queue::Fifo(q) => q.pop_front(),
                }
            };
            let Some(mut ticket) = ticket else { break };
            let first = *ticket.first_dispatch.get_or_insert(now);
            let epoch = st.controller.epoch();
            let admitted = match &self.array {
                None => Admission::Accepted,
                Some((array, lun)) => array.submit(now, *lun, &ticket),
            };
            match admitted {
                Admission::Accepted => {
                    st.in_flight += 1;
                    let signal = caller.is_none_or(|c| !Arc::ptr_eq(c, &ticket.owner));
                    ticket.owner.push(
                        InboxEvent::Granted {
                            slot: ticket.slot,
                            epoch,
                            dispatched_at: first,
                        },
                        signal,
                    );
                }
                Admission::QueueFull | Admission::Busy => {
                    self.counters.congestion.fetch_add(1, Ordering::Relaxed);
                    st.controller
                        .on_completion(now, epoch, Outcome::Congestion, 0.0);
                    st.retry.push_front(ticket);
                    st.retry_at = now + RETRY_DELAY_S;
                    break;
                }
            }
        }
        self.publish(&st);
    }

    /// A granted request finished (its I/O and, when emulated, the model's service).
    pub fn on_complete(&self, now: f64, epoch: u64, latency_s: f64) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        st.controller
            .on_completion(now, epoch, Outcome::Good, latency_s);
        self.publish(&st);
    }

    /// Takes back every request of `owner` not yet granted (its guest went away). Returns
    /// their slots.
    pub fn cancel_owner(&self, owner: &Arc<Inbox>) -> Vec<usize> {
        let mut st = self.lock();
        let mut slots = Vec::new();
        st.retry.retain(|t| {
            let mine = Arc::ptr_eq(&t.owner, owner);
            if mine {
                slots.push(t.slot);
            }
            !mine
        });
        match &mut st.queue {
            Queue::Fifo(q) => q.retain(|t| {
                let mine = Arc::ptr_eq(&t.owner, owner);
                if mine {
                    slots.push(t.slot);
                }
                !mine
            }),
            Queue::Mclock(m) => {
                for t in m.drain_where(|t| Arc::ptr_eq(&t.owner, owner)) {
                    slots.push(t.slot);
                }
            }
        }
        self.publish(&st);
        slots
    }

    /// Controller tick, then dispatch (the window may have grown, a retry or a tag come due).
    pub fn tick(&self, now: f64) {
        {
            let mut st = self.lock();
            let outstanding = st.in_flight;
            st.controller.tick(now, outstanding);
        }
        self.pump(now, None);
    }

    /// When this dispatcher next needs the clock thread: a retry or an mClock tag coming due.
    pub fn next_deadline(&self) -> Option<f64> {
        let st = self.lock();
        let retry = (!st.retry.is_empty()).then_some(st.retry_at);
        let tag = match &st.queue {
            Queue::Mclock(m) if st.in_flight < self.window(&st) => m.next_eligible(),
            _ => None,
        };
        [retry, tag]
            .into_iter()
            .flatten()
            .min_by(|a, b| a.total_cmp(b))
    }

    fn publish(&self, st: &DispatchState) {
        let queued = match &st.queue {
            Queue::Mclock(m) => m.queued(),
            Queue::Fifo(q) => q.len(),
        } + st.retry.len();
        self.counters
            .window
            .store(u64::from(st.controller.window()), Ordering::Relaxed);
        self.counters
            .in_flight
            .store(u64::from(st.in_flight), Ordering::Relaxed);
        self.counters.queued.store(queued as u64, Ordering::Relaxed);
        self.counters
            .halvings
            .store(st.controller.halvings(), Ordering::Relaxed);
    }
}

/// The emulated array: the model, and who waits for which of its completions.
pub struct ArrayRuntime {
    /// QUEUE FULL answers per port.
    pub queue_full: Vec<AtomicU64>,
    model: Mutex<EmulatedArray>,
    waiters: Mutex<HashMap<u64, (Arc<Inbox>, usize)>>,
    next_id: AtomicU64,
    /// Wakes the clock thread when a completion earlier than it planned for is scheduled.
    wake: Arc<(Mutex<bool>, Condvar)>,
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

    fn submit(&self, now: f64, lun: usize, t: &Ticket) -> Admission {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        let before = model.next_completion();
        let admission = model.submit(now, lun, id, t.bytes, t.write);
        if admission == Admission::QueueFull {
            if let Some(c) = model.lun_port(lun).and_then(|p| self.queue_full.get(p)) {
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
                .insert(id, (t.owner.clone(), t.slot));
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
                done.push(c.id);
            }
        }
        if done.is_empty() {
            return;
        }
        let mut waiters = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        for id in done {
            if let Some((owner, slot)) = waiters.remove(&id) {
                owner.push(InboxEvent::ModelDone { slot }, true);
            }
        }
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

/// A capacity change of an emulated LUN at a time on the broker's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CapacityEvent {
    pub at_s: f64,
    /// The LUN's index in the array model.
    pub lun: usize,
    pub capacity_pct: f64,
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
        mut events: Vec<CapacityEvent>,
        wake: Arc<(Mutex<bool>, Condvar)>,
    ) -> std::io::Result<Self> {
        events.sort_by(|a, b| a.at_s.total_cmp(&b.at_s));
        let stop = Arc::new(AtomicBool::new(false));
        let (stop2, wake2) = (stop.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                let mut next_tick = 0.0;
                let mut next_event = 0usize;
                while !stop2.load(Ordering::SeqCst) {
                    let now = clock.now();
                    while let Some(e) = events.get(next_event).filter(|e| e.at_s <= now) {
                        if let Some(a) = arrays.first() {
                            log::info!(
                                "t = {now:.1} s: emulated LUN #{} capacity {} %",
                                e.lun,
                                e.capacity_pct
                            );
                            a.set_capacity(e.lun, e.capacity_pct);
                        }
                        next_event += 1;
                    }
                    for a in &arrays {
                        a.fire_due(now);
                    }
                    if now >= next_tick {
                        next_tick = now + TICK_S;
                        for d in &dispatchers {
                            d.tick(now);
                        }
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
                            woken = cv
                                .wait_timeout(woken, Duration::from_secs_f64(wait))
                                .map(|(g, _)| g)
                                .unwrap_or_else(|p| p.into_inner().0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sched::array::LunModel;

    fn grants(inbox: &Inbox) -> Vec<usize> {
        inbox
            .take()
            .into_iter()
            .filter_map(|e| match e {
                InboxEvent::Granted { slot, .. } => Some(slot),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_window_of_two_alternates_between_equal_tenants_and_signals_other_owners() {
        let d = LunDispatcher::new(
            "l",
            vec![TenantPolicy::default(), TenantPolicy::default()],
            SchedulerKind::Mclock,
            DepthPolicy::Fixed { depth: 2 },
            None,
        );
        let (a, b) = (
            Arc::new(Inbox::new().unwrap()),
            Arc::new(Inbox::new().unwrap()),
        );
        for slot in 0..4 {
            d.enqueue(0, &a, slot, 4096, false, 0.0);
            d.enqueue(1, &b, 10 + slot, 4096, false, 0.0);
        }
        d.pump(0.0, Some(&a));
        assert_eq!((grants(&a), grants(&b)), (vec![0], vec![10]));
        assert_eq!(d.counters.in_flight.load(Ordering::Relaxed), 2);
        assert_eq!(d.counters.queued.load(Ordering::Relaxed), 6);
        // b was signalled (its eventfd is readable), a was not (it asked).
        assert!(a.fd.read().is_err(), "a's eventfd was not written");
        d.on_complete(0.001, 0, 0.001);
        d.pump(0.001, None);
        d.on_complete(0.002, 0, 0.001);
        d.pump(0.002, None);
        let (ga, gb) = (grants(&a).len(), grants(&b).len());
        assert_eq!((ga, gb), (1, 1), "equal weights alternate");
        // What a still had queued comes back to it; b's stay.
        assert_eq!(d.cancel_owner(&a).len(), 4 - 1 - ga);
        assert_eq!(d.counters.queued.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_port_budget_shares_its_queue_in_proportion() {
        let b = PortBudget::new(32, 2);
        assert_eq!(b.effective(0, 16), 16); // alone so far: 16 ≤ 32
        assert_eq!(b.effective(1, 48), 24); // 16 + 48 = 64 > 32: 48 · 32 / 64
        assert_eq!(b.effective(0, 16), 8);
        assert_eq!(b.effective(1, 16), 16); // 16 + 16 fits again
        assert_eq!(PortBudget::new(2, 3).effective(2, 1), 1, "never below one");
    }

    #[test]
    fn the_scheduler_thread_applies_capacity_events_on_time() {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let array = Arc::new(ArrayRuntime::new(
            EmulatedArray::new(&[32], &[(0, LunModel::default())], 1),
            wake.clone(),
        ));
        let clock = BrokerClock::new();
        let thread = SchedulerThread::start(
            clock,
            Vec::new(),
            vec![array.clone()],
            vec![CapacityEvent {
                at_s: 0.1,
                lun: 0,
                capacity_pct: 50.0,
            }],
            wake,
        )
        .unwrap();
        assert_eq!(array.servers(0), 16);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(array.servers(0), 8);
        drop(thread);
    }

    /// Liveness under load: two tenants, many tiny services, the clock thread completing them
    /// concurrently with the dispatcher. Every request must be granted and finished and the
    /// window must end empty. (A model completion that beat its waiter's registration used to be
    /// lost — a window slot leaked until the LUN starved, seen with real guests; this test does
    /// not reliably reproduce that narrow race, it guards the accounting around it.)
    #[test]
    fn every_request_finishes_under_racing_model_completions() {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let model = LunModel {
            servers: 4,
            read_base_us: 2.0,
            unit_mib_per_s: 1e9,
            busy_threshold: 4,
            ..LunModel::default()
        };
        let array = Arc::new(ArrayRuntime::new(
            EmulatedArray::new(&[64], &[(0, model)], 3),
            wake.clone(),
        ));
        let d = Arc::new(LunDispatcher::new(
            "l",
            vec![TenantPolicy::default(), TenantPolicy::default()],
            SchedulerKind::Mclock,
            DepthPolicy::Fixed { depth: 8 },
            Some((array.clone(), 0)),
        ));
        let clock = BrokerClock::new();
        let _thread =
            SchedulerThread::start(clock, vec![d.clone()], vec![array], Vec::new(), wake).unwrap();
        const PER_TENANT: usize = 4000;
        let workers: Vec<_> = (0..2usize)
            .map(|tenant| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let inbox = Arc::new(Inbox::new().unwrap());
                    let mut state: HashMap<usize, (Option<(u64, f64)>, bool)> = HashMap::new();
                    let (mut next, mut done) = (0usize, 0usize);
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while done < PER_TENANT {
                        assert!(
                            Instant::now() < deadline,
                            "tenant {tenant}: {done} of {PER_TENANT} finished"
                        );
                        while next < PER_TENANT && state.len() < 16 {
                            state.insert(next, (None, false));
                            d.enqueue(tenant, &inbox, next, 4096, false, clock.now());
                            next += 1;
                        }
                        d.pump(clock.now(), Some(&inbox));
                        for e in inbox.take() {
                            match e {
                                InboxEvent::Granted {
                                    slot,
                                    epoch,
                                    dispatched_at,
                                } => {
                                    state.get_mut(&slot).unwrap().0 = Some((epoch, dispatched_at));
                                }
                                InboxEvent::ModelDone { slot } => {
                                    state.get_mut(&slot).unwrap().1 = true
                                }
                            }
                        }
                        let finished: Vec<usize> = state
                            .iter()
                            .filter(|(_, (g, m))| g.is_some() && *m)
                            .map(|(s, _)| *s)
                            .collect();
                        for slot in finished {
                            let (g, _) = state.remove(&slot).unwrap();
                            let (epoch, at) = g.unwrap();
                            d.on_complete(clock.now(), epoch, clock.now() - at);
                            done += 1;
                        }
                        std::thread::yield_now();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(d.counters.in_flight.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_emulated_lun_answers_queue_full_with_a_retry_and_the_model_finishes_requests() {
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let model = LunModel {
            servers: 1,
            busy_threshold: 0,
            ..LunModel::default()
        };
        let array = Arc::new(ArrayRuntime::new(
            EmulatedArray::new(&[1], &[(0, model)], 1),
            wake,
        ));
        let d = LunDispatcher::new(
            "l",
            vec![TenantPolicy::default()],
            SchedulerKind::Fifo,
            DepthPolicy::Fixed { depth: 4 },
            Some((array.clone(), 0)),
        );
        let inbox = Arc::new(Inbox::new().unwrap());
        d.enqueue(0, &inbox, 1, 4096, false, 0.0);
        d.enqueue(0, &inbox, 2, 4096, false, 0.0);
        d.pump(0.0, Some(&inbox));
        // The port holds one request: the second is refused and waits for its retry.
        assert_eq!(grants(&inbox), vec![1]);
        assert_eq!(d.counters.congestion.load(Ordering::Relaxed), 1);
        assert_eq!(d.next_deadline(), Some(RETRY_DELAY_S));
        let done = array.next_completion().expect("the model serves slot 1");
        array.fire_due(done);
        assert_eq!(inbox.take(), vec![InboxEvent::ModelDone { slot: 1 }]);
        d.on_complete(done, 0, done);
        d.pump(done.max(RETRY_DELAY_S), None);
        assert_eq!(grants(&inbox), vec![2]);
    }
}
