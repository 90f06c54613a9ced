//! One LUN's dispatch state and rule, shared by the broker (on the real clock) and `weir sim`
//! (on a virtual one): the tenants' queue (mClock tags or one FIFO), the requests waiting for a
//! retry after QUEUE FULL/BUSY, the requests whose path failed under them, the window
//! controller, what is in flight, and the LUN's paths.
//!
//! The caller asks [`LunDispatch::next`] for the next request to send and reports what became
//! of it: [`sent`](LunDispatch::sent) (the array took it), [`port_down`](LunDispatch::port_down),
//! [`congested`](LunDispatch::congested) (QUEUE FULL/BUSY), then [`completed`](LunDispatch::completed)
//! or [`failed`](LunDispatch::failed). Order of service: re-issued requests first (they already
//! waited), then the retry once it is due, then the tenants' queue. While a retry waits, the
//! LUN keeps what was in flight at the refusal and no more: completions free slots, and the
//! tenants' requests (before the retry is due) or the retry (after) fill them one by one.
//! Holding every request until the retry was due let what was in flight finish, and the
//! window then left in one burst that the array refused again: behind a 500 µs link, an
//! array of 64 units that refuses one request past them served 65 k IOPS at `fixed:78` and
//! 108 k at `fixed:65`, where a smooth flow serves up to 640 k (docs/scheduling.md).

use std::collections::VecDeque;

use crate::array::Admission;
use crate::cost::CostModel;
use crate::depth::{DepthPolicy, Outcome, QueueDepthController};
use crate::mclock::{MClock, TenantPolicy};
use crate::path::{PathSet, Selection};
use crate::sim::SchedulerKind;

/// What the admission rule needs of a request: when a path first failed it (a request moved
/// to another path is counted once, however many paths fail it).
pub trait Attempted {
    fn failed_at(&mut self) -> &mut Option<f64>;
}

/// What became of a request the array answered ([`LunDispatch::admit`]).
#[derive(Debug)]
pub enum Admitted<T> {
    /// The array took it: the caller starts it (and its completion comes later).
    Sent(Dispatch<T>),
    /// Its path's port is down: the path failed, the request goes first elsewhere; the caller
    /// may send the next one.
    Requeued,
    /// QUEUE FULL or BUSY: a congestion signal; until the retry has gone, no more is in
    /// flight than at the refusal.
    Congested,
}

/// A LUN's window after its port's budget: when the windows of the LUNs behind the port add
/// up to `total` > `budget`, each gets its proportional part of the budget (at least one).
pub fn port_share(own: u32, total: u64, budget: u32) -> u32 {
    if total <= u64::from(budget) {
        return own;
    }
    ((u64::from(own) * u64::from(budget) / total.max(1)) as u32).max(1)
}

/// Where a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Its path failed under it; it is sent again elsewhere.
    Reissue,
    /// The array answered QUEUE FULL or BUSY; it is offered again.
    Retry,
    /// First time out of the tenants' queue.
    Fresh,
}

/// A request to send now: `item` through `path`; `epoch` is the controller's, for its
/// completion.
#[derive(Debug)]
pub struct Dispatch<T> {
    pub item: T,
    pub path: usize,
    pub epoch: u64,
    pub source: Source,
}

/// What [`LunDispatch::next`] decided.
#[derive(Debug)]
pub enum Step<T> {
    Send(Dispatch<T>),
    /// Nothing can leave now: the window or the paths are full, the retry is not due, or
    /// nothing waits.
    Idle,
    /// No path has been usable for the hold time: these requests must fail.
    Expired(Vec<T>),
}

enum TenantQueue<T> {
    Mclock(MClock<T>),
    Fifo(VecDeque<T>),
}

/// One LUN's dispatcher state.
pub struct LunDispatch<T> {
    queue: TenantQueue<T>,
    reissue: VecDeque<T>,
    retry: VecDeque<T>,
    retry_at: f64,
    /// While a retry waits, fresh requests go only into the slots completions free: in flight
    /// stays at most what it was at the refusal.
    retry_hold: u32,
    pub controller: QueueDepthController,
    /// Requests sent and not yet finished.
    pub in_flight: u32,
    pub paths: PathSet,
    /// QUEUE FULL/BUSY answers, and requests moved to another path after theirs failed
    /// them (each counted once), so far.
    pub congestion: u64,
    pub reissued: u64,
}

impl<T> LunDispatch<T> {
    pub fn new(
        scheduler: SchedulerKind,
        tenants: Vec<TenantPolicy>,
        cost: CostModel,
        depth: DepthPolicy,
        paths: PathSet,
    ) -> Self {
        LunDispatch {
            queue: match scheduler {
                SchedulerKind::Mclock => TenantQueue::Mclock(MClock::new(tenants, cost)),
                SchedulerKind::Fifo => TenantQueue::Fifo(VecDeque::new()),
            },
            reissue: VecDeque::new(),
            retry: VecDeque::new(),
            retry_at: 0.0,
            retry_hold: 0,
            controller: QueueDepthController::new(depth),
            in_flight: 0,
            paths,
            congestion: 0,
            reissued: 0,
        }
    }

    /// Every request waiting in the broker: re-issues, BUSY retries and the tenants' queue.
    pub fn for_each_waiting(&self, mut f: impl FnMut(&T)) {
        self.reissue.iter().for_each(&mut f);
        self.retry.iter().for_each(&mut f);
        match &self.queue {
            TenantQueue::Mclock(m) => m.for_each_queued(f),
            TenantQueue::Fifo(q) => q.iter().for_each(f),
        }
    }

    /// A new request of `tenant`.
    pub fn enqueue(&mut self, tenant: usize, item: T, bytes: u64, now: f64) {
        match &mut self.queue {
            TenantQueue::Mclock(m) => m.enqueue(tenant, item, bytes, now),
            TenantQueue::Fifo(q) => q.push_back(item),
        }
    }

    /// The next request to send while the LUN's window (after any port budget) is `window`.
    pub fn next(&mut self, now: f64, window: u32) -> Step<T> {
        if self.in_flight >= window {
            return Step::Idle;
        }
        let path = match self.paths.select(now) {
            Selection::Path(p) => p,
            Selection::Wait => return Step::Idle,
            Selection::NoPath => {
                if self.paths.hold_expired(now) {
                    return Step::Expired(self.drain_where(|_| true));
                }
                return Step::Idle;
            }
        };
        let (item, source) = if let Some(item) = self.reissue.pop_front() {
            (item, Source::Reissue)
        } else if !self.retry.is_empty() {
            if self.retry_at <= now && self.in_flight < self.retry_hold.max(1) {
                match self.retry.pop_front() {
                    Some(item) => (item, Source::Retry),
                    None => return Step::Idle,
                }
            } else if self.retry_at > now && self.in_flight < self.retry_hold {
                match self.fresh(now) {
                    Some(item) => (item, Source::Fresh),
                    None => return Step::Idle,
                }
            } else {
                return Step::Idle;
            }
        } else {
            match self.fresh(now) {
                Some(item) => (item, Source::Fresh),
                None => return Step::Idle,
            }
        };
        Step::Send(Dispatch {
            item,
            path,
            epoch: self.controller.epoch(),
            source,
        })
    }

    /// The tenants' next request.
    fn fresh(&mut self, now: f64) -> Option<T> {
        match &mut self.queue {
            TenantQueue::Mclock(m) => m.dispatch(now).map(|(_, item, _)| item),
            TenantQueue::Fifo(q) => q.pop_front(),
        }
    }

    /// The array took the request sent on `path`.
    pub fn sent(&mut self, path: usize, now: f64) {
        self.in_flight += 1;
        self.controller.note_in_flight(self.in_flight);
        self.paths.on_dispatch(path, now);
    }

    /// `path`'s port refused the request (it is down): the path fails, the request goes first.
    pub fn port_down(&mut self, item: T, path: usize, now: f64) {
        self.paths.on_dispatch(path, now);
        self.paths.on_failure(path, now, "port down");
        self.reissue.push_front(item);
    }

    /// QUEUE FULL or BUSY: a congestion signal; the request is offered again after `delay_s`.
    pub fn congested(&mut self, item: T, epoch: u64, now: f64, delay_s: f64) {
        self.controller
            .on_completion(now, epoch, Outcome::Congestion, 0.0);
        self.retry_hold = if self.retry.is_empty() {
            self.in_flight
        } else {
            self.retry_hold.min(self.in_flight)
        };
        self.retry.push_front(item);
        self.retry_at = now + delay_s;
    }

    /// A sent request finished well: `latency_s` since it first left (for the controller),
    /// `service_s` on its path (for the path's estimate).
    #[allow(clippy::too_many_arguments)]
    pub fn completed(
        &mut self,
        path: usize,
        now: f64,
        epoch: u64,
        latency_s: f64,
        service_s: f64,
        bytes: u64,
    ) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.paths.on_success(path, now, service_s, bytes);
        self.controller
            .on_completion(now, epoch, Outcome::Good, latency_s);
    }

    /// A sent request came back TASK SET FULL or BUSY from a real target (it was counted in
    /// flight): a congestion signal, as an array model's refusal at admission is; the request
    /// is offered again after `delay_s`.
    pub fn refused(&mut self, item: T, path: usize, epoch: u64, now: f64, delay_s: f64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.paths.on_abandon(path);
        self.congestion += 1;
        self.congested(item, epoch, now, delay_s);
    }

    /// A sent request is given up without a verdict (its owner went away).
    pub fn abandoned(&mut self, path: usize) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.paths.on_abandon(path);
    }

    /// Takes out every waiting request `pred` selects (re-issues, retries, the tenants' queue).
    pub fn drain_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut out = Vec::new();
        take_where(&mut self.reissue, &mut pred, &mut out);
        take_where(&mut self.retry, &mut pred, &mut out);
        match &mut self.queue {
            TenantQueue::Mclock(m) => out.extend(m.drain_where(&mut pred)),
            TenantQueue::Fifo(q) => take_where(q, &mut pred, &mut out),
        }
        out
    }

    /// Requests waiting (not sent).
    pub fn queued(&self) -> usize {
        let q = match &self.queue {
            TenantQueue::Mclock(m) => m.queued(),
            TenantQueue::Fifo(q) => q.len(),
        };
        q + self.retry.len() + self.reissue.len()
    }

    /// When the waiting retry is due, if one waits.
    pub fn retry_due(&self) -> Option<f64> {
        (!self.retry.is_empty()).then_some(self.retry_at)
    }

    /// When an mClock tag comes due (a limited or reserved tenant), while the window has room.
    pub fn next_eligible(&self, window: u32) -> Option<f64> {
        match &self.queue {
            TenantQueue::Mclock(m) if self.in_flight < window => m.next_eligible(),
            _ => None,
        }
    }
}

impl<T: Attempted> LunDispatch<T> {
    /// The array's answer `admission` to `d`, sent at `now`: the one rule the broker and
    /// `weir sim` share. A refused request is offered again after `retry_delay_s`.
    pub fn admit(
        &mut self,
        mut d: Dispatch<T>,
        admission: Admission,
        now: f64,
        retry_delay_s: f64,
    ) -> Admitted<T> {
        match admission {
            Admission::Accepted => {
                self.sent(d.path, now);
                Admitted::Sent(d)
            }
            Admission::PortDown => {
                self.note_failure(&mut d.item, now);
                self.port_down(d.item, d.path, now);
                Admitted::Requeued
            }
            Admission::QueueFull | Admission::Busy => {
                self.congestion += 1;
                self.congested(d.item, d.epoch, now, retry_delay_s);
                Admitted::Congested
            }
        }
    }

    /// A sent request failed on `path` (transport error, timeout, I/O error on a multipath
    /// LUN): the path fails and the request is sent again elsewhere.
    pub fn failed(&mut self, mut item: T, path: usize, now: f64, why: &str) {
        self.note_failure(&mut item, now);
        self.in_flight = self.in_flight.saturating_sub(1);
        self.paths.on_failure(path, now, why);
        self.reissue.push_back(item);
    }

    fn note_failure(&mut self, item: &mut T, now: f64) {
        let first = item.failed_at();
        if first.is_none() {
            *first = Some(now);
            self.reissued += 1;
        }
    }
}

/// Moves the items of `q` that `pred` selects to `out`, keeping the others in order.
fn take_where<T>(q: &mut VecDeque<T>, pred: &mut impl FnMut(&T) -> bool, out: &mut Vec<T>) {
    let mut kept = VecDeque::with_capacity(q.len());
    for item in q.drain(..) {
        if pred(&item) {
            out.push(item);
        } else {
            kept.push_back(item);
        }
    }
    *q = kept;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{MultipathPolicy, PathGroup};

    fn one_path() -> PathSet {
        PathSet::new(
            &[(PathGroup::Optimized, u32::MAX)],
            MultipathPolicy::default(),
        )
    }

    /// FIFO, a fixed window of 8, one path.
    fn fifo_on_one_path() -> LunDispatch<R> {
        LunDispatch::new(
            SchedulerKind::Fifo,
            vec![],
            CostModel::default(),
            DepthPolicy::Fixed { depth: 8 },
            one_path(),
        )
    }

    /// A request in the tests: an id, and when a path first failed it.
    #[derive(Debug, PartialEq)]
    struct R(u32, Option<f64>);

    impl Attempted for R {
        fn failed_at(&mut self) -> &mut Option<f64> {
            &mut self.1
        }
    }

    #[test]
    fn a_refused_request_is_retried_first_and_a_failed_one_before_everything() {
        let mut d = fifo_on_one_path();
        for i in 0..3 {
            d.enqueue(0, R(i, None), 4096, 0.0);
        }
        let Step::Send(send) = d.next(0.0, 8) else {
            panic!()
        };
        assert!(matches!(
            d.admit(send, Admission::QueueFull, 0.0, 0.001),
            Admitted::Congested
        ));
        // Nothing was in flight at the refusal: nothing leaves until the retry is due, and
        // then the retry goes first (a SCSI initiator retries first).
        assert!(matches!(d.next(0.0005, 8), Step::Idle));
        let Step::Send(send) = d.next(0.001, 8) else {
            panic!()
        };
        assert_eq!((send.item.0, send.source), (0, Source::Retry));
        let Admitted::Sent(Dispatch { item, .. }) =
            d.admit(send, Admission::Accepted, 0.001, 0.001)
        else {
            panic!()
        };
        d.failed(item, 0, 0.002, "test");
        // The only path failed: nothing leaves until the checker takes it back.
        assert!(matches!(d.next(0.002, 8), Step::Idle));
        d.paths.check(0.003, |_| true);
        let order: Vec<(u32, Source)> = (0..3)
            .filter_map(|_| match d.next(0.003, 8) {
                Step::Send(send) => {
                    let source = send.source;
                    match d.admit(send, Admission::Accepted, 0.003, 0.001) {
                        Admitted::Sent(s) => Some((s.item.0, source)),
                        _ => None,
                    }
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            order,
            [(0, Source::Reissue), (1, Source::Fresh), (2, Source::Fresh)]
        );
        assert_eq!((d.in_flight, d.queued()), (3, 0));
        assert_eq!((d.congestion, d.reissued), (1, 1));
    }

    /// Sends the next request and has the array take it; its id.
    fn send_accepted(d: &mut LunDispatch<R>, now: f64) -> Option<(u32, Source)> {
        let Step::Send(send) = d.next(now, 8) else {
            return None;
        };
        let source = send.source;
        match d.admit(send, Admission::Accepted, now, 0.001) {
            Admitted::Sent(s) => Some((s.item.0, source)),
            _ => None,
        }
    }

    #[test]
    fn while_a_retry_waits_only_the_slots_completions_free_are_filled() {
        // Stopping the whole LUN until the retry was due let everything in flight finish, and
        // the window then left in one burst, which the array refused again: a storm that
        // outlived the window that started it (docs/scheduling.md).
        let mut d = fifo_on_one_path();
        for i in 0..6 {
            d.enqueue(0, R(i, None), 4096, 0.0);
        }
        for i in 0..3 {
            assert_eq!(send_accepted(&mut d, 0.0), Some((i, Source::Fresh)));
        }
        let Step::Send(send) = d.next(0.0, 8) else {
            panic!()
        };
        assert!(matches!(
            d.admit(send, Admission::Busy, 0.0, 0.001),
            Admitted::Congested
        ));
        // Three were in flight at the refusal: no more than three until the retry has gone.
        assert_eq!(send_accepted(&mut d, 0.0002), None);
        d.completed(0, 0.0003, 0, 0.0003, 0.0003, 4096);
        assert_eq!(send_accepted(&mut d, 0.0003), Some((4, Source::Fresh)));
        assert_eq!(send_accepted(&mut d, 0.0003), None);
        // Due, the retry also waits for a free slot, and then goes before the tenants' queue.
        assert_eq!(send_accepted(&mut d, 0.0011), None);
        d.completed(0, 0.0012, 0, 0.0012, 0.0012, 4096);
        assert_eq!(send_accepted(&mut d, 0.0012), Some((3, Source::Retry)));
        // The retry gone, the window rules again.
        assert_eq!(send_accepted(&mut d, 0.0012), Some((5, Source::Fresh)));
        assert_eq!((d.in_flight, d.queued(), d.congestion), (4, 0, 1));
    }

    #[test]
    fn a_sent_request_refused_by_the_target_leaves_the_window_and_is_retried_first() {
        // A real target answers TASK SET FULL after the request went out (it was in flight).
        let mut d = fifo_on_one_path();
        for i in 0..2 {
            d.enqueue(0, R(i, None), 4096, 0.0);
        }
        let Step::Send(send) = d.next(0.0, 8) else {
            panic!()
        };
        let Admitted::Sent(Dispatch { item, epoch, .. }) =
            d.admit(send, Admission::Accepted, 0.0, 0.001)
        else {
            panic!()
        };
        assert_eq!(d.in_flight, 1);
        d.refused(item, 0, epoch, 0.0002, 0.001);
        assert_eq!((d.in_flight, d.congestion, d.reissued), (0, 1, 0));
        assert_eq!(
            d.paths.stats(0).map(|s| s.in_flight),
            Some(0),
            "the path holds it no more"
        );
        assert!(
            matches!(d.next(0.0005, 8), Step::Idle),
            "not before its retry"
        );
        let Step::Send(send) = d.next(0.0013, 8) else {
            panic!()
        };
        assert_eq!((send.item.0, send.source), (0, Source::Retry));
    }

    #[test]
    fn a_request_moved_to_another_path_is_counted_once_however_many_fail_it() {
        let mut d: LunDispatch<R> = LunDispatch::new(
            SchedulerKind::Fifo,
            vec![],
            CostModel::default(),
            DepthPolicy::Fixed { depth: 8 },
            PathSet::new(
                &[
                    (PathGroup::Optimized, u32::MAX),
                    (PathGroup::Optimized, u32::MAX),
                ],
                MultipathPolicy::default(),
            ),
        );
        d.enqueue(0, R(7, None), 4096, 0.0);
        // Its first path's port is down, then the second fails it after the I/O.
        let Step::Send(send) = d.next(0.0, 8) else {
            panic!()
        };
        assert!(matches!(
            d.admit(send, Admission::PortDown, 0.0, 0.001),
            Admitted::Requeued
        ));
        let Step::Send(send) = d.next(0.0, 8) else {
            panic!()
        };
        assert_eq!((send.item.1, send.source), (Some(0.0), Source::Reissue));
        let Admitted::Sent(sent) = d.admit(send, Admission::Accepted, 0.0, 0.001) else {
            panic!()
        };
        d.failed(sent.item, sent.path, 0.01, "transport error");
        assert_eq!(d.reissued, 1, "one request moved, whatever failed it twice");
    }

    #[test]
    fn with_no_path_past_the_hold_everything_waiting_expires() {
        let mut d: LunDispatch<u32> = LunDispatch::new(
            SchedulerKind::Mclock,
            vec![TenantPolicy::default()],
            CostModel::default(),
            DepthPolicy::Fixed { depth: 8 },
            PathSet::new(
                &[(PathGroup::Optimized, 8)],
                MultipathPolicy {
                    hold_s: 1.0,
                    ..MultipathPolicy::default()
                },
            ),
        );
        d.enqueue(0, 7, 4096, 0.0);
        let Step::Send(Dispatch { item, path, .. }) = d.next(0.0, 8) else {
            panic!()
        };
        d.port_down(item, path, 0.0);
        d.enqueue(0, 8, 4096, 0.1);
        assert!(matches!(d.next(0.5, 8), Step::Idle));
        match d.next(1.0, 8) {
            Step::Expired(mut v) => {
                v.sort();
                assert_eq!(v, vec![7, 8]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(d.queued(), 0);
    }
}
