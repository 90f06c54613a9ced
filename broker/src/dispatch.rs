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
//! One `SchedulerThread` (`crate::scheduler_thread`) per broker runs the clock-driven parts:
//! the model's completions, controller ticks, retries and mClock timers (a limited tenant
//! whose tag comes due). The inboxes and the clock live in `crate::inbox`, the array model at
//! run time in `crate::array_runtime`.
//!
//! Lock order: dispatcher state → array model → array waiters → inbox. Inboxes are never held
//! while taking anything else; the clock thread takes the model and the waiters one after the
//! other, never nested.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use weir_sched::array::{Admission, PortFault};
use weir_sched::cost::CostModel;
use weir_sched::depth::{DepthPolicy, QueueDepthController};
use weir_sched::dispatch::{Admitted, Dispatch, LunDispatch, Step, port_share};
use weir_sched::mclock::TenantPolicy;
use weir_sched::path::{MultipathPolicy, PathGroup, PathSet, PathState, PathStats};
use weir_sched::rng::SplitMix64;
use weir_sched::sim::SchedulerKind;

pub use crate::array_runtime::ArrayRuntime;
pub use crate::inbox::{BrokerClock, Inbox, InboxEvent};
use crate::lun::LunStore;
use crate::path_probe::{NBD_PROBE_WAIT, PROBE_WAIT, PathProber, ProbeOutcome};
pub use crate::scheduler_thread::{ArrayEvent, ArrayEventKind, SchedulerThread};

/// Delay before a request the array refused is offered again.
pub const RETRY_DELAY_S: f64 = 0.001;

impl weir_sched::dispatch::Attempted for Ticket {
    fn failed_at(&mut self) -> &mut Option<f64> {
        &mut self.failed_at
    }
}

/// A granted request handed back to the dispatcher by its queue thread (to go again).
#[derive(Debug, Clone, Copy)]
pub struct Returned<'a> {
    pub owner: &'a Arc<Inbox>,
    pub slot: usize,
    pub bytes: u64,
    pub write: bool,
    /// When it was first offered to the array.
    pub first_dispatch: f64,
    /// When a path first failed it, if one did.
    pub failed_at: Option<f64>,
}

impl Returned<'_> {
    fn ticket(self) -> Ticket {
        Ticket {
            owner: self.owner.clone(),
            slot: self.slot,
            bytes: self.bytes,
            write: self.write,
            first_dispatch: Some(self.first_dispatch),
            failed_at: self.failed_at,
        }
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
    /// When a path failed it, if one did.
    failed_at: Option<f64>,
}

struct DispatchState {
    /// The dispatch state and rule `weir sim` runs too.
    d: LunDispatch<Ticket>,
    /// Path events already logged (a sequence number: `PathSet::event_count`).
    events_logged: u64,
    /// Faults injected on paths without an array model.
    file_faults: Vec<FileFault>,
    rng: SplitMix64,
}

/// A fault injected by hand on a path that has no emulated port: `down` fails its requests
/// before they start, `error_rate` fails that share of them after their I/O (transport errors
/// of a real HBA, as seen by the initiator).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FileFault {
    pub down: bool,
    pub error_rate: f64,
}

/// One path of a LUN, as the dispatcher routes to it.
#[derive(Debug, Clone, PartialEq)]
pub struct PathRoute {
    pub name: String,
    /// The emulated array port, by index and name.
    pub port: Option<(usize, String)>,
    pub group: PathGroup,
    pub max_in_flight: u32,
}

/// A path's figures for telemetry and the control socket.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PathSnapshot {
    pub name: String,
    pub port: Option<String>,
    pub group: PathGroup,
    pub state: PathState,
    #[serde(flatten)]
    pub stats: PathStats,
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
        port_share(own, total, self.budget)
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
    /// `adaptive`: the knee estimate and the completions' index of dispersion φ, in
    /// thousandths (0: another window policy).
    pub knee_milli: AtomicU64,
    pub dispersion_milli: AtomicU64,
    /// Controller periods dropped because the broker's clock was late in them.
    pub late_periods: AtomicU64,
    /// Requests moved to another path after theirs failed.
    pub reissued: AtomicU64,
    /// Requests failed to the guest for want of a path.
    pub no_path_failures: AtomicU64,
    /// Longest fault → good answer via another path, µs.
    pub max_failover_us: AtomicU64,
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
    /// How the LUN orders its tenants' requests.
    pub scheduler: SchedulerKind,
    array: Option<(Arc<ArrayRuntime>, usize)>,
    budget: Option<(Arc<PortBudget>, usize)>,
    routes: Vec<PathRoute>,
    /// The store the path checker probes (file paths).
    store: Option<Arc<LunStore>>,
    host_share: f64,
    /// The checker's probes of file paths, each on its own thread (`crate::path_probe`).
    prober: PathProber,
    state: Mutex<DispatchState>,
    pub counters: DispatchCounters,
    /// Some path has an injected error rate (checked on every completion without the lock).
    flaky: AtomicBool,
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
        let counters = DispatchCounters::default();
        let routes = vec![PathRoute {
            name: "path0".into(),
            port: array.as_ref().map(|_| (0, "port0".into())),
            group: PathGroup::Optimized,
            max_in_flight: u32::MAX,
        }];
        let paths = PathSet::new(
            &[(PathGroup::Optimized, u32::MAX)],
            MultipathPolicy::default(),
        );
        LunDispatcher {
            name: name.to_string(),
            scheduler,
            array,
            budget: None,
            routes,
            store: None,
            host_share: 1.0,
            prober: PathProber::new(1),
            state: Mutex::new(DispatchState {
                d: LunDispatch::new(scheduler, tenants, CostModel::default(), depth, paths),
                events_logged: 0,
                file_faults: vec![FileFault::default()],
                rng: SplitMix64::new(0x5eed),
            }),
            counters,
            flaky: AtomicBool::new(false),
        }
        .published()
    }

    fn published(self) -> Self {
        {
            let st = self.lock();
            self.publish(&st);
        }
        self
    }

    /// Gives the LUN its paths (in place of the one default path) and the store the path
    /// checker probes.
    pub fn with_paths(
        mut self,
        routes: Vec<PathRoute>,
        policy: MultipathPolicy,
        store: Option<Arc<LunStore>>,
    ) -> Self {
        let groups: Vec<(PathGroup, u32)> =
            routes.iter().map(|r| (r.group, r.max_in_flight)).collect();
        {
            let st = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
            st.d.paths = PathSet::new(&groups, policy);
            st.file_faults = vec![FileFault::default(); routes.len()];
        }
        self.prober = PathProber::new(routes.len());
        self.routes = routes;
        self.store = store;
        self
    }

    /// This host's share of a target shared with other hosts (see
    /// `DepthPolicy::for_host_share`): kept so a policy changed at run time gets it too.
    pub fn with_host_share(mut self, share: f64) -> Self {
        self.host_share = share;
        self
    }

    pub fn routes(&self) -> &[PathRoute] {
        &self.routes
    }

    /// More than one path: an I/O error is a path's failure, and the request moves.
    pub fn multipath(&self) -> bool {
        self.routes.len() > 1
    }

    /// Puts this LUN under a port budget, as LUN `index` of the port.
    pub fn with_budget(mut self, budget: Arc<PortBudget>, index: usize) -> Self {
        self.budget = Some((budget, index));
        self
    }

    /// The window in force: the controller's, capped by the port budget.
    fn window(&self, st: &DispatchState) -> u32 {
        let own = st.d.controller.window();
        match &self.budget {
            Some((b, i)) => b.effective(*i, own),
            None => own,
        }
    }

    pub fn emulated(&self) -> bool {
        self.array.is_some()
    }

    /// `emulated` (the array model decides completion times), `file`, `nbd` or `iscsi`.
    pub fn backend(&self) -> &'static str {
        if self.emulated() {
            "emulated"
        } else {
            self.store.as_ref().map_or("file", |s| s.kind())
        }
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
            failed_at: None,
        };
        self.lock().d.enqueue(tenant, ticket, bytes, now);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DispatchState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets requests go while the window allows. Grants to `caller` are not signalled: the
    /// caller reads its inbox right after.
    pub fn pump(&self, now: f64, caller: Option<&Arc<Inbox>>) {
        let mut st = self.lock();
        let signal_for = |t: &Ticket| caller.is_none_or(|c| !Arc::ptr_eq(c, &t.owner));
        loop {
            let window = self.window(&st);
            let mut send = match st.d.next(now, window) {
                Step::Send(send) => send,
                Step::Idle => break,
                Step::Expired(failed) => {
                    self.counters
                        .no_path_failures
                        .fetch_add(failed.len() as u64, Ordering::Relaxed);
                    for t in failed {
                        let signal = signal_for(&t);
                        t.owner.push(InboxEvent::Failed { slot: t.slot }, signal);
                    }
                    break;
                }
            };
            let first = *send.item.first_dispatch.get_or_insert(now);
            let path = send.path;
            let admission = if st.file_faults.get(path).is_some_and(|f| f.down) {
                Admission::PortDown
            } else {
                match (&self.array, &self.routes[path].port) {
                    (Some((array, lun)), Some((port, _))) => array.submit(
                        now,
                        *lun,
                        *port,
                        &send.item.owner,
                        send.item.slot,
                        send.item.bytes,
                        send.item.write,
                        st.d.paths.policy().io_timeout_s,
                    ),
                    _ => Admission::Accepted,
                }
            };
            match st.d.admit(send, admission, now, RETRY_DELAY_S) {
                Admitted::Sent(Dispatch {
                    item: ticket,
                    path,
                    epoch,
                    ..
                }) => {
                    let signal = signal_for(&ticket);
                    ticket.owner.push(
                        InboxEvent::Granted {
                            slot: ticket.slot,
                            epoch,
                            dispatched_at: first,
                            path,
                            attempt_at: now,
                            failed_at: ticket.failed_at,
                        },
                        signal,
                    );
                }
                Admitted::Requeued => {}
                Admitted::Congested => break,
            }
        }
        self.log_path_events(&mut st);
        self.publish(&st);
    }

    fn log_path_events(&self, st: &mut DispatchState) {
        for e in st.d.paths.events_since(st.events_logged) {
            let path = self.routes.get(e.path).map_or("?", |r| r.name.as_str());
            let line = format!(
                "t = {:.3} s: LUN '{}' path '{}' {}: {}",
                e.at, self.name, path, e.what, e.why
            );
            if e.what == "restored" || e.what == "returning" {
                log::info!("{line}");
            } else {
                log::warn!("{line}");
            }
        }
        st.events_logged = st.d.paths.event_count();
    }

    /// A granted request finished well (its I/O and, when emulated, the model's service), on
    /// `path`, after `service_s` on it.
    #[allow(clippy::too_many_arguments)]
    pub fn on_complete(
        &self,
        now: f64,
        epoch: u64,
        latency_s: f64,
        path: usize,
        service_s: f64,
        bytes: u64,
        failed_at: Option<f64>,
    ) {
        let mut st = self.lock();
        st.d.completed(path, now, epoch, latency_s, service_s, bytes);
        if let Some(f) = failed_at {
            let us = ((now - f).max(0.0) * 1e6) as u64;
            self.counters
                .max_failover_us
                .fetch_max(us, Ordering::Relaxed);
        }
        self.publish(&st);
    }

    /// Whether a request that finished on `path` must count as failed although its I/O went
    /// well: an injected flaky fault on a path without a model.
    pub fn injected_error(&self, path: usize) -> bool {
        // Every completion asks: without an injected flaky fault, no lock.
        if !self.flaky.load(Ordering::Relaxed) {
            return false;
        }
        let mut st = self.lock();
        let rate = st.file_faults.get(path).map_or(0.0, |f| f.error_rate);
        rate > 0.0 && st.rng.next_f64() < rate
    }

    /// A granted request failed on `path` (transport error, I/O error on a multipath LUN,
    /// timeout): the path is failed and the request goes first to another path.
    pub fn reissue(&self, now: f64, path: usize, back: Returned<'_>, why: &str) {
        self.lock().d.failed(back.ticket(), path, now, why);
        self.pump(now, None);
    }

    /// A granted request came back TASK SET FULL or BUSY from the target: the window's
    /// congestion signal; the request is offered again after `RETRY_DELAY_S`.
    pub fn refused(&self, now: f64, path: usize, epoch: u64, back: Returned<'_>) {
        self.lock()
            .d
            .refused(back.ticket(), path, epoch, now, RETRY_DELAY_S);
        self.pump(now, None);
    }

    /// A granted request is given up without a verdict (its guest went away mid-failover).
    pub fn abandon(&self, path: usize) {
        let mut st = self.lock();
        st.d.abandoned(path);
        self.publish(&st);
    }

    /// Path checker: probes failed paths when due (emulated: the port answers; file: a real
    /// direct read through the path's own descriptor). The probes run without the LUN's lock,
    /// and a file probe is waited for at most `PROBE_WAIT`: a hung path must not freeze the
    /// LUN's tenants nor the scheduler thread that serves every LUN.
    pub fn check_paths(&self, now: f64) {
        let (to_probe, faults) = {
            let st = self.lock();
            if now < st.d.paths.next_check() {
                return;
            }
            let failed: Vec<usize> = (0..self.routes.len())
                .filter(|i| st.d.paths.state(*i) == PathState::Failed)
                .collect();
            (failed, st.file_faults.clone())
        };
        let answers: Vec<(usize, bool)> = to_probe
            .into_iter()
            .map(|i| (i, self.probe_path(i, &faults)))
            .collect();
        let mut st = self.lock();
        st.d.paths.check(now, |i| {
            answers
                .iter()
                .find(|(k, _)| *k == i)
                .is_some_and(|(_, ok)| *ok)
        });
        self.log_path_events(&mut st);
    }

    /// One probe of path `i`: does it answer now?
    fn probe_path(&self, i: usize, faults: &[FileFault]) -> bool {
        if faults.get(i).is_some_and(|f| f.down) {
            return false;
        }
        if let (Some((array, _)), Some((port, _))) = (
            &self.array,
            self.routes.get(i).and_then(|r| r.port.as_ref()),
        ) {
            return array.probe(*port);
        }
        let Some(store) = &self.store else {
            return true;
        };
        let outcome = match (store.nbd(), store.probe_file(i)) {
            _ if store.iscsi().is_some() => match store.iscsi().and_then(|l| l.paths.get(i)) {
                Some(uri) => {
                    self.prober
                        .probe_iscsi(i, uri.clone(), store.size_bytes, NBD_PROBE_WAIT)
                }
                None => ProbeOutcome::Failed(format!("no path {i}")),
            },
            (Some(export), _) => match export.paths.get(i) {
                Some(uri) => {
                    self.prober
                        .probe_nbd(i, uri.clone(), store.size_bytes, NBD_PROBE_WAIT)
                }
                None => ProbeOutcome::Failed(format!("no path {i}")),
            },
            (None, Ok(file)) => self.prober.probe(i, file, store.size_bytes, PROBE_WAIT),
            (None, Err(e)) => ProbeOutcome::Failed(format!("cannot open a probe descriptor: {e}")),
        };
        if !outcome.ok() {
            log::debug!(
                "LUN '{}' path '{}': probe: {outcome:?}",
                self.name,
                self.routes[i].name
            );
        }
        outcome.ok()
    }

    /// Injects a fault on a path without an emulated port (`path` by name).
    pub fn set_file_fault(&self, path: &str, fault: PortFault) -> Result<(), String> {
        let Some(i) = self.routes.iter().position(|r| r.name == path) else {
            let names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
            return Err(format!(
                "LUN '{}' has no path '{path}' (paths: {})",
                self.name,
                names.join(", ")
            ));
        };
        if let Some((_, port)) = &self.routes[i].port {
            return Err(format!(
                "path '{path}' of LUN '{}' goes through emulated port '{port}': fault the port",
                self.name
            ));
        }
        let mut st = self.lock();
        let f = &mut st.file_faults[i];
        match fault {
            PortFault::Down => f.down = true,
            PortFault::Up => f.down = false,
            PortFault::Flaky { error_rate } => f.error_rate = error_rate,
            PortFault::Healthy => *f = FileFault::default(),
            PortFault::Slow { .. } => {
                return Err(
                    "slow needs the array model: use an emulated LUN for latency faults".into(),
                );
            }
        }
        let flaky = st.file_faults.iter().any(|f| f.error_rate > 0.0);
        self.flaky.store(flaky, Ordering::Relaxed);
        log::warn!(
            "LUN '{}' path '{path}': injected fault {fault:?}",
            self.name
        );
        Ok(())
    }

    /// Every path's state and figures.
    pub fn path_snapshots(&self) -> Vec<PathSnapshot> {
        let st = self.lock();
        self.routes
            .iter()
            .enumerate()
            .map(|(i, r)| PathSnapshot {
                name: r.name.clone(),
                port: r.port.as_ref().map(|p| p.1.clone()),
                group: r.group,
                state: st.d.paths.state(i),
                stats: st.d.paths.stats(i).cloned().unwrap_or_default(),
            })
            .collect()
    }

    /// The path events so far, with path names.
    pub fn path_events(&self) -> Vec<serde_json::Value> {
        let st = self.lock();
        st.d.paths
            .events()
            .iter()
            .map(|e| {
                serde_json::json!({
                    "at_s": e.at,
                    "path": self.routes.get(e.path).map_or("?", |r| r.name.as_str()),
                    "what": e.what,
                    "why": e.why,
                })
            })
            .collect()
    }

    /// How long a request may stay unanswered on a path before the path counts as failed.
    pub fn io_timeout(&self) -> std::time::Duration {
        let s = self.lock().d.paths.policy().io_timeout_s;
        std::time::Duration::from_secs_f64(s.max(0.001))
    }

    pub fn selector(&self) -> String {
        self.lock().d.paths.policy().selector.to_string()
    }

    /// The window policy in force (`fixed:64`, `adaptive`, ...): it can change at run time.
    pub fn depth_policy(&self) -> String {
        self.lock().d.controller.policy().name()
    }

    /// A policy change: a fresh window controller (its epoch moves on, so completions of
    /// requests dispatched before do not feed the new one), and/or another path selector.
    pub fn set_policy(
        &self,
        depth: Option<DepthPolicy>,
        selector: Option<weir_sched::path::PathSelectorKind>,
    ) {
        let mut st = self.lock();
        if let Some(d) = depth {
            log::warn!("LUN '{}': window policy now {}", self.name, d.name());
            st.d.controller = QueueDepthController::new(d.for_host_share(self.host_share));
        }
        if let Some(sel) = selector {
            log::warn!("LUN '{}': path selector now {sel}", self.name);
            st.d.paths.set_selector(sel);
        }
        self.publish(&st);
    }

    /// Takes back every request of `owner` not yet granted (its guest went away). Returns
    /// their slots.
    pub fn cancel_owner(&self, owner: &Arc<Inbox>) -> Vec<usize> {
        let mut st = self.lock();
        let slots: Vec<usize> =
            st.d.drain_where(|t| Arc::ptr_eq(&t.owner, owner))
                .into_iter()
                .map(|t| t.slot)
                .collect();
        self.publish(&st);
        slots
    }

    /// The broker's clock ran `lag_s` late since the last tick (the controller decides
    /// whether its period still measures the storage).
    pub fn note_lateness(&self, lag_s: f64) {
        self.lock().d.controller.note_lateness(lag_s);
    }

    /// Controller tick, then dispatch (the window may have grown, a retry or a tag come due).
    pub fn tick(&self, now: f64) {
        {
            let mut st = self.lock();
            let outstanding = st.d.in_flight;
            st.d.controller.tick(now, outstanding);
        }
        self.pump(now, None);
    }

    /// When this dispatcher next needs the clock thread: a retry or an mClock tag coming due.
    pub fn next_deadline(&self) -> Option<f64> {
        let st = self.lock();
        let retry = st.d.retry_due();
        let hold = st.d.paths.hold_deadline();
        let tag = st.d.next_eligible(self.window(&st));
        [retry, tag, hold]
            .into_iter()
            .flatten()
            .min_by(|a, b| a.total_cmp(b))
    }

    fn publish(&self, st: &DispatchState) {
        self.counters
            .window
            .store(u64::from(st.d.controller.window()), Ordering::Relaxed);
        self.counters
            .in_flight
            .store(u64::from(st.d.in_flight), Ordering::Relaxed);
        self.counters
            .queued
            .store(st.d.queued() as u64, Ordering::Relaxed);
        self.counters
            .halvings
            .store(st.d.controller.halvings(), Ordering::Relaxed);
        self.counters
            .late_periods
            .store(st.d.controller.late_periods(), Ordering::Relaxed);
        let milli = |v: Option<f64>| v.map_or(0, |v| (v * 1000.0).round() as u64);
        self.counters
            .knee_milli
            .store(milli(st.d.controller.knee()), Ordering::Relaxed);
        self.counters
            .dispersion_milli
            .store(milli(st.d.controller.dispersion()), Ordering::Relaxed);
        self.counters
            .congestion
            .store(st.d.congestion, Ordering::Relaxed);
        self.counters
            .reissued
            .store(st.d.reissued, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "dispatch_tests.rs"]
mod tests;
