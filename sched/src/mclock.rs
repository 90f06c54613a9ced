//! Per-tenant reservations, limits and shares: mClock (Gulati, Merchant, Varman, OSDI '10).
//!
//! Each tenant `i` has a reservation `r_i` (IOPS it is guaranteed), a limit `l_i` (IOPS, and
//! optionally bytes/s, it never exceeds) and a weight `w_i` (its share of what is left). Every
//! request gets three tags when it reaches the head of its tenant's queue (tagging the head
//! only is equivalent for a FIFO queue and keeps reservation adjustments O(1)):
//!
//! ```text
//! R = max(R_prev + 1/r_i,      t_arrival)     reservation, in requests
//! L = max(L_prev + 1/l_i,      t_arrival)     IOPS limit          (and L_b with bytes/l_b_i)
//! P = max(P_prev + cost/w_i,   V)             proportional share, in cost units
//! ```
//!
//! R and L are real-time tags (their spacings are seconds). P is not: `cost/w_i` is in cost
//! units per share, unrelated to seconds, so P tags are compared with the system's virtual
//! time `V` — the P tag of the last request served in the weight phase — instead of the
//! clock, as start-time fair queueing does (Goyal, Vin, Cheng, SIGCOMM '96). Taking the max
//! with the clock, as the paper writes it, lets a busy tenant's P tags run ahead of real time
//! and a newly active tenant then starve it for as long.
//!
//! Dispatch at time `t`:
//! 1. *Reservation phase*: if the smallest head `R ≤ t`, serve that request.
//! 2. *Weight phase*: otherwise, among tenants whose head `L ≤ t` (and `L_b ≤ t`), serve the
//!    smallest `P`; then move that tenant's `R_prev` back by `1/r_i`, so service in the weight
//!    phase counts toward nothing it was not owed (the paper's R-tag adjustment).
//! 3. Otherwise nothing is eligible until [`MClock::next_eligible`].
//!
//! Because every tag is `max(previous + spacing, now)` (V for P), a tenant returning from idle
//! starts at the current time: it cannot hoard credit for the time it was idle. A backlogged limited
//! tenant's `L` tags advance by exactly `1/l_i` per request, so its rate is exactly `l_i`, with
//! no integer refill drift. Ties go to the lower tenant index, so runs are deterministic.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::cost::CostModel;

pub type TenantId = usize;

/// What a tenant is entitled to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicy {
    /// Share of the capacity left after reservations (> 0).
    #[serde(default = "one")]
    pub weight: f64,
    /// Guaranteed IOPS (0: none).
    #[serde(default)]
    pub reservation_iops: f64,
    /// IOPS cap (0: none).
    #[serde(default)]
    pub limit_iops: f64,
    /// Bytes/s cap (0: none).
    #[serde(default)]
    pub limit_bytes_per_s: f64,
}

fn one() -> f64 {
    1.0
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            weight: 1.0,
            reservation_iops: 0.0,
            limit_iops: 0.0,
            limit_bytes_per_s: 0.0,
        }
    }
}

impl TenantPolicy {
    /// A reason the policy is unusable, naming the field.
    pub fn problem(&self) -> Option<String> {
        if !(self.weight > 0.0 && self.weight.is_finite()) {
            return Some(format!("weight {} must be a positive number", self.weight));
        }
        for (name, v) in [
            ("reservation_iops", self.reservation_iops),
            ("limit_iops", self.limit_iops),
            ("limit_bytes_per_s", self.limit_bytes_per_s),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Some(format!("{name} {v} must be zero (none) or positive"));
            }
        }
        if self.limit_iops > 0.0 && self.reservation_iops > self.limit_iops {
            return Some(format!(
                "reservation_iops {} exceeds limit_iops {}: lower the reservation or raise the limit",
                self.reservation_iops, self.limit_iops
            ));
        }
        None
    }
}

/// Which rule dispatched a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Reservation,
    Weight,
}

#[derive(Debug, Clone)]
struct Queued<T> {
    item: T,
    bytes: u64,
    arrival: f64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Tags {
    r: f64,
    l: f64,
    lb: f64,
    p: f64,
}

#[derive(Debug, Clone)]
struct Tenant<T> {
    policy: TenantPolicy,
    queue: VecDeque<Queued<T>>,
    /// Tags of the head request (valid when the queue is not empty).
    head: Tags,
    /// Tags of the last tagged request.
    prev: Tags,
    tagged_once: bool,
}

/// The mClock scheduler over tenants `0..n`.
#[derive(Debug, Clone)]
pub struct MClock<T> {
    tenants: Vec<Tenant<T>>,
    cost: CostModel,
    queued: usize,
    /// Virtual time: the P tag of the last request served in the weight phase.
    vtime: f64,
}

impl<T> MClock<T> {
    pub fn new(policies: Vec<TenantPolicy>, cost: CostModel) -> Self {
        MClock {
            tenants: policies
                .into_iter()
                .map(|policy| Tenant {
                    policy,
                    queue: VecDeque::new(),
                    head: Tags::default(),
                    prev: Tags::default(),
                    tagged_once: false,
                })
                .collect(),
            cost,
            queued: 0,
            vtime: 0.0,
        }
    }

    pub fn tenants(&self) -> usize {
        self.tenants.len()
    }

    pub fn policy(&self, tenant: TenantId) -> &TenantPolicy {
        &self.tenants[tenant].policy
    }

    /// Changes a tenant's policy; takes effect from its next tagged request.
    pub fn set_policy(&mut self, tenant: TenantId, policy: TenantPolicy) {
        if let Some(t) = self.tenants.get_mut(tenant) {
            t.policy = policy;
        }
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn queued_for(&self, tenant: TenantId) -> usize {
        self.tenants.get(tenant).map_or(0, |t| t.queue.len())
    }

    /// Every queued request, in no particular order.
    pub fn for_each_queued(&self, mut f: impl FnMut(&T)) {
        for t in &self.tenants {
            t.queue.iter().for_each(|q| f(&q.item));
        }
    }

    /// Queues a request of `bytes` for `tenant`, arriving at `now`.
    pub fn enqueue(&mut self, tenant: TenantId, item: T, bytes: u64, now: f64) {
        let (cost, vtime) = (self.cost, self.vtime);
        let Some(t) = self.tenants.get_mut(tenant) else {
            return;
        };
        t.queue.push_back(Queued {
            item,
            bytes,
            arrival: now,
        });
        self.queued += 1;
        if t.queue.len() == 1 {
            tag_head(t, &cost, vtime);
        }
    }

    /// The next request to send to the device at `now`, if any is eligible.
    pub fn dispatch(&mut self, now: f64) -> Option<(TenantId, T, Phase)> {
        // Reservation phase: the most overdue reservation first.
        let mut best: Option<(f64, TenantId)> = None;
        for (i, t) in self.tenants.iter().enumerate() {
            if t.queue.is_empty() || t.policy.reservation_iops <= 0.0 {
                continue;
            }
            if t.head.r <= now && best.is_none_or(|(r, _)| t.head.r < r) {
                best = Some((t.head.r, i));
            }
        }
        if let Some((_, i)) = best {
            return self.pop(i, Phase::Reservation);
        }
        // Weight phase: smallest proportional tag among tenants under their limits.
        let mut best: Option<(f64, TenantId)> = None;
        for (i, t) in self.tenants.iter().enumerate() {
            if t.queue.is_empty() || t.head.l > now || t.head.lb > now {
                continue;
            }
            if best.is_none_or(|(p, _)| t.head.p < p) {
                best = Some((t.head.p, i));
            }
        }
        let (p, i) = best?;
        self.vtime = self.vtime.max(p);
        let t = &mut self.tenants[i];
        if t.policy.reservation_iops > 0.0 {
            // Served beyond its reservation: its reservation clock does not advance for this.
            let back = 1.0 / t.policy.reservation_iops;
            t.prev.r -= back;
            t.head.r -= back;
        }
        self.pop(i, Phase::Weight)
    }

    /// Removes and returns every queued request for which `pred` holds (their tenants' tags
    /// are re-derived for the new heads).
    pub fn drain_where(&mut self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        let (cost, vtime) = (self.cost, self.vtime);
        let mut out = Vec::new();
        for t in &mut self.tenants {
            let before = t.queue.len();
            let head_removed = t.queue.front().is_some_and(|q| pred(&q.item));
            let mut kept = VecDeque::with_capacity(before);
            for q in t.queue.drain(..) {
                if pred(&q.item) {
                    out.push(q.item);
                } else {
                    kept.push_back(q);
                }
            }
            t.queue = kept;
            self.queued -= before - t.queue.len();
            if head_removed && !t.queue.is_empty() {
                tag_head(t, &cost, vtime);
            }
        }
        out
    }

    /// The earliest time at which some queued request becomes eligible (`None` when nothing is
    /// queued). A timer for this time keeps a limited tenant moving when nothing else
    /// completes.
    pub fn next_eligible(&self) -> Option<f64> {
        self.tenants
            .iter()
            .filter(|t| !t.queue.is_empty())
            .map(|t| {
                let weight_time = t.head.l.max(t.head.lb);
                if t.policy.reservation_iops > 0.0 {
                    weight_time.min(t.head.r)
                } else {
                    weight_time
                }
            })
            .min_by(|a, b| a.total_cmp(b))
    }

    fn pop(&mut self, i: TenantId, phase: Phase) -> Option<(TenantId, T, Phase)> {
        let (cost, vtime) = (self.cost, self.vtime);
        let t = &mut self.tenants[i];
        let q = t.queue.pop_front()?;
        self.queued -= 1;
        if !t.queue.is_empty() {
            tag_head(t, &cost, vtime);
        }
        Some((i, q.item, phase))
    }
}

fn tag_head<T>(t: &mut Tenant<T>, cost: &CostModel, vtime: f64) {
    let Some(head) = t.queue.front() else { return };
    let a = head.arrival;
    let p = &t.policy;
    let spacing = |rate: f64, amount: f64| if rate > 0.0 { amount / rate } else { 0.0 };
    let tags = if t.tagged_once {
        Tags {
            r: (t.prev.r + spacing(p.reservation_iops, 1.0)).max(a),
            l: (t.prev.l + spacing(p.limit_iops, 1.0)).max(a),
            lb: (t.prev.lb + spacing(p.limit_bytes_per_s, head.bytes as f64)).max(a),
            p: (t.prev.p + cost.cost(head.bytes) / p.weight).max(vtime),
        }
    } else {
        Tags {
            r: a,
            l: a,
            lb: a,
            p: vtime,
        }
    };
    t.head = tags;
    t.prev = tags;
    t.tagged_once = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(weight: f64, reservation: f64, limit: f64) -> TenantPolicy {
        TenantPolicy {
            weight,
            reservation_iops: reservation,
            limit_iops: limit,
            limit_bytes_per_s: 0.0,
        }
    }

    /// A device that serves one request every `1/capacity` s, always backlogged tenants.
    fn serve(s: &mut MClock<u32>, capacity: f64, seconds: f64, sizes: &[u64]) -> Vec<u64> {
        let n = s.tenants();
        let mut served = vec![0u64; n];
        for (i, &size) in sizes.iter().enumerate() {
            for _ in 0..4 {
                s.enqueue(i, 0, size, 0.0);
            }
        }
        let mut now = 0.0;
        let step = 1.0 / capacity;
        while now < seconds {
            if let Some((i, _, _)) = s.dispatch(now) {
                served[i] += 1;
                s.enqueue(i, 0, sizes[i], now);
                now += step;
            } else {
                now = s.next_eligible().unwrap_or(now + step).max(now + 1e-9);
            }
        }
        served
    }

    #[test]
    fn weights_divide_a_saturated_device() {
        let mut s = MClock::new(
            vec![policy(1.0, 0.0, 0.0), policy(3.0, 0.0, 0.0)],
            CostModel::default(),
        );
        let served = serve(&mut s, 1000.0, 10.0, &[4096, 4096]);
        let share = served[1] as f64 / (served[0] + served[1]) as f64;
        assert!((share - 0.75).abs() < 0.002, "{served:?}");
    }

    #[test]
    fn weights_are_charged_by_cost() {
        // Equal weights, one tenant issues 64 KiB (cost 8.5): it gets 1/8.5 the requests.
        let mut s = MClock::new(
            vec![policy(1.0, 0.0, 0.0), policy(1.0, 0.0, 0.0)],
            CostModel::default(),
        );
        let served = serve(&mut s, 1000.0, 20.0, &[4096, 65536]);
        let ratio = served[0] as f64 / served[1] as f64;
        assert!((ratio - 8.5).abs() < 0.1, "{served:?}");
    }

    #[test]
    fn a_limit_is_exact_and_the_rest_goes_to_others() {
        let mut s = MClock::new(
            vec![policy(10.0, 0.0, 250.0), policy(1.0, 0.0, 0.0)],
            CostModel::default(),
        );
        let served = serve(&mut s, 1000.0, 10.0, &[4096, 4096]);
        assert!((served[0] as f64 - 2500.0).abs() <= 2.0, "{served:?}");
        assert!(served[1] >= 7490, "{served:?}");
    }

    #[test]
    fn reservations_come_first_then_weights() {
        // Tenant 0: reservation 600 of 1000, weight 1; tenant 1: weight 9. Tenant 0 gets its
        // 600 plus its share of nothing more: the weight phase gives the rest mostly to 1.
        let mut s = MClock::new(
            vec![policy(1.0, 600.0, 0.0), policy(9.0, 0.0, 0.0)],
            CostModel::default(),
        );
        let served = serve(&mut s, 1000.0, 10.0, &[4096, 4096]);
        assert!(served[0] >= 5990, "reservation honoured: {served:?}");
        assert!(
            served[0] <= 6100,
            "no double counting of weight-phase service: {served:?}"
        );
    }

    #[test]
    fn an_idle_tenant_does_not_hoard_credit() {
        let mut s = MClock::new(
            vec![policy(1.0, 0.0, 0.0), policy(1.0, 0.0, 0.0)],
            CostModel::default(),
        );
        // Tenant 0 alone for 5 s at 1000 IOPS.
        let mut now = 0.0;
        s.enqueue(0, 0, 4096, 0.0);
        while now < 5.0 {
            if let Some((i, _, _)) = s.dispatch(now) {
                s.enqueue(i, 0, 4096, now);
            }
            now += 0.001;
        }
        // Tenant 1 wakes up: over the next second both are backlogged and it must not take
        // the device for the 5 s it was idle.
        for _ in 0..4 {
            s.enqueue(1, 0, 4096, now);
        }
        let mut served = [0u32; 2];
        let end = now + 1.0;
        while now < end {
            if let Some((i, _, _)) = s.dispatch(now) {
                served[i] += 1;
                s.enqueue(i, 0, 4096, now);
            }
            now += 0.001;
        }
        let diff = (served[0] as i64 - served[1] as i64).abs();
        assert!(diff <= 10, "{served:?}");
    }

    #[test]
    fn byte_limit_caps_bandwidth() {
        // Weighted to take most of the device, so the byte limit is what binds.
        let mut p = policy(100.0, 0.0, 0.0);
        p.limit_bytes_per_s = 10.0 * 1048576.0;
        let mut s = MClock::new(vec![p, policy(1.0, 0.0, 0.0)], CostModel::default());
        let served = serve(&mut s, 1000.0, 10.0, &[65536, 4096]);
        let mib_per_s = served[0] as f64 * 65536.0 / 1048576.0 / 10.0;
        assert!((mib_per_s - 10.0).abs() < 0.1, "{mib_per_s} MiB/s");
    }

    #[test]
    fn policy_problems_name_the_field() {
        assert!(policy(0.0, 0.0, 0.0).problem().unwrap().contains("weight"));
        assert!(
            policy(1.0, 200.0, 100.0)
                .problem()
                .unwrap()
                .contains("reservation_iops")
        );
        assert!(
            policy(1.0, 0.0, -1.0)
                .problem()
                .unwrap()
                .contains("limit_iops")
        );
        assert!(policy(1.0, 50.0, 100.0).problem().is_none());
    }
}
