//! Multipath: which of a LUN's paths the next request takes, and each path's health.
//!
//! A [`PathSet`] holds one LUN's paths. The caller (the broker's dispatcher, or `weir sim`)
//! asks [`PathSet::select`] for a path before it sends a request, and reports back every
//! dispatch, success and failure; it runs the path checker ([`PathSet::check`]) with its own
//! probe. Time is an argument, as everywhere in this crate.
//!
//! Selectors (sources in `docs/multipath.md`):
//! - `first-available`: every request on the first working path found, switching only when it
//!   fails — VMware NMP's MRU/Fixed at boot, "the first available port". The baseline.
//! - `round-robin[:N]`: the next path after N requests (default 1; VMware's default is 1000).
//!   It does not look at load: when the path whose turn it is is full, the LUN waits for it,
//!   as a request queued on a busy path waits there.
//! - `least-queue-depth`: the path with the fewest requests in flight (dm `queue-length`, NVMe
//!   `queue-depth`).
//! - `service-time`: the smallest `(1 + in_flight) × S`, `S` an EWMA of the path's service time
//!   (weight 0.95 on the past, dm `historical-service-time`); a path with nothing in flight and
//!   no completion for `paths × S` gets the next request as a probe, so a stale estimate is
//!   refreshed. Two damping rules keep one odd request from flapping the choice: a sample moves
//!   `S` by at most a factor 4, and the path last chosen keeps the next request unless another
//!   scores at least 10 % better.
//!
//! Health: a failed request marks its path `Failed`. The checker probes failed paths every
//! `checker_interval_s`; a path whose probes succeed for `failback_s` without a failure in
//! between is used again (failback). A path that fails again on the way back starts over, so a
//! flapping link stays out — unless no path is usable at all, when the first path to answer
//! is taken back at once. When no path is usable the LUN's requests are held;
//! [`PathSet::hold_expired`] says when they have waited `hold_s` and must fail.
//!
//! Priority groups (ALUA-like): requests use the usable paths of the best group present —
//! `optimized`, then `non-optimized`, then `standby`; the other usable paths stand by.

use std::fmt;

use serde::{Deserialize, Serialize};

/// How requests are spread over a LUN's paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum PathSelectorKind {
    FirstAvailable,
    RoundRobin {
        ios: u32,
    },
    LeastQueueDepth,
    #[default]
    ServiceTime,
}

impl PathSelectorKind {
    /// `first-available`, `round-robin`, `round-robin:1000`, `least-queue-depth`,
    /// `service-time`.
    pub fn from_short(s: &str) -> Option<Self> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        match (name, arg) {
            ("first-available", None) => Some(PathSelectorKind::FirstAvailable),
            ("round-robin", None) => Some(PathSelectorKind::RoundRobin { ios: 1 }),
            ("round-robin", Some(n)) => n
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .map(|ios| PathSelectorKind::RoundRobin { ios }),
            ("least-queue-depth", None) => Some(PathSelectorKind::LeastQueueDepth),
            ("service-time", None) => Some(PathSelectorKind::ServiceTime),
            _ => None,
        }
    }

    /// True for a name `from_short` knows without parsing its argument.
    pub fn is_selector_name(s: &str) -> bool {
        let name = s.split(':').next().unwrap_or(s);
        matches!(
            name,
            "first-available" | "round-robin" | "least-queue-depth" | "service-time"
        )
    }
}

impl fmt::Display for PathSelectorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathSelectorKind::FirstAvailable => f.write_str("first-available"),
            PathSelectorKind::RoundRobin { ios: 1 } => f.write_str("round-robin"),
            PathSelectorKind::RoundRobin { ios } => write!(f, "round-robin:{ios}"),
            PathSelectorKind::LeastQueueDepth => f.write_str("least-queue-depth"),
            PathSelectorKind::ServiceTime => f.write_str("service-time"),
        }
    }
}

impl TryFrom<String> for PathSelectorKind {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        PathSelectorKind::from_short(&s).ok_or_else(|| {
            format!(
                "'{s}' is not a path selector (use first-available, round-robin, round-robin:N, least-queue-depth, service-time)"
            )
        })
    }
}

impl From<PathSelectorKind> for String {
    fn from(k: PathSelectorKind) -> String {
        k.to_string()
    }
}

/// ALUA-like priority group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PathGroup {
    #[default]
    Optimized,
    NonOptimized,
    Standby,
}

/// Multipath settings of one LUN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultipathPolicy {
    #[serde(default)]
    pub selector: PathSelectorKind,
    /// Seconds a returning path must probe well before it is used again.
    #[serde(default = "d_failback")]
    pub failback_s: f64,
    /// How often failed paths are probed.
    #[serde(default = "d_checker")]
    pub checker_interval_s: f64,
    /// With no usable path, requests are held this long, then failed with an I/O error.
    #[serde(default = "d_hold")]
    pub hold_s: f64,
    /// A request outstanding on a path this long fails the path and is re-issued.
    #[serde(default = "d_timeout")]
    pub io_timeout_s: f64,
}

fn d_failback() -> f64 {
    5.0
}
fn d_checker() -> f64 {
    1.0
}
fn d_hold() -> f64 {
    30.0
}
fn d_timeout() -> f64 {
    30.0
}

impl Default for MultipathPolicy {
    fn default() -> Self {
        MultipathPolicy {
            selector: PathSelectorKind::default(),
            failback_s: d_failback(),
            checker_interval_s: d_checker(),
            hold_s: d_hold(),
            io_timeout_s: d_timeout(),
        }
    }
}

impl MultipathPolicy {
    /// What is wrong with the settings, naming the field.
    pub fn problem(&self) -> Option<String> {
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(self.failback_s.is_finite() && self.failback_s >= 0.0) {
            return Some("multipath.failback_s must be 0 or more".into());
        }
        if !positive(self.checker_interval_s) {
            return Some("multipath.checker_interval_s must be positive".into());
        }
        if !(self.hold_s.is_finite() && self.hold_s >= 0.0) {
            return Some("multipath.hold_s must be 0 or more".into());
        }
        if !positive(self.io_timeout_s) {
            return Some("multipath.io_timeout_s must be positive".into());
        }
        None
    }
}

/// A path's state as reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PathState {
    /// Carrying requests (usable, in the group in use).
    Active,
    /// Usable but in a lower priority group than the one in use.
    Standby,
    /// Out of use: failed, or probing well but not yet for `failback_s`.
    Failed,
}

impl fmt::Display for PathState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathState::Active => "active",
            PathState::Standby => "standby",
            PathState::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Health {
    Up,
    Failed,
    /// Probes succeed since this time.
    Returning {
        since: f64,
    },
}

/// Something that happened to a path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathEvent {
    pub at: f64,
    pub path: usize,
    /// `failed`, `returning`, `restored`, `probe-failed`.
    pub what: &'static str,
    pub why: String,
}

/// One path's figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathStats {
    pub in_flight: u32,
    pub dispatched: u64,
    pub completed: u64,
    pub bytes: u64,
    pub errors: u64,
    /// EWMA of the service time, seconds (none before the first completion).
    pub ewma_service_s: Option<f64>,
}

#[derive(Debug, Clone)]
struct PathRuntime {
    group: PathGroup,
    cap: u32,
    health: Health,
    stats: PathStats,
    last_activity: f64,
}

/// What [`PathSet::select`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Path(usize),
    /// Paths are usable but the chosen one (or all) is at its in-flight cap.
    Wait,
    /// No usable path.
    NoPath,
}

/// EWMA weight of the past in the service-time estimate (dm-historical-service-time).
const EWMA_PAST: f64 = 0.95;
/// A sample moves the estimate by at most this factor.
const SAMPLE_CLAMP: f64 = 4.0;
/// Another path must score this much better to take the next request from the last one.
const HYSTERESIS: f64 = 1.10;

/// One LUN's paths.
#[derive(Debug, Clone)]
pub struct PathSet {
    policy: MultipathPolicy,
    paths: Vec<PathRuntime>,
    /// first-available's path, round-robin's turn, service-time's last choice.
    current: Option<usize>,
    rr_count: u32,
    /// Since when no path is usable.
    no_path_since: Option<f64>,
    next_check: f64,
    /// The latest events, at most `EVENTS_KEPT` (between `EVENTS_KEPT` and twice that before a
    /// trim): a path flapping for weeks must not grow the broker's memory.
    events: Vec<PathEvent>,
    /// Events trimmed from the front so far.
    events_dropped: u64,
}

/// Path events a `PathSet` keeps (the latest ones); older ones were logged when they happened.
pub const EVENTS_KEPT: usize = 4096;

impl PathSet {
    /// `paths` are `(group, in-flight cap)` in configuration order.
    pub fn new(paths: &[(PathGroup, u32)], policy: MultipathPolicy) -> Self {
        PathSet {
            paths: paths
                .iter()
                .map(|(group, cap)| PathRuntime {
                    group: *group,
                    cap: (*cap).max(1),
                    health: Health::Up,
                    stats: PathStats::default(),
                    last_activity: 0.0,
                })
                .collect(),
            policy,
            current: None,
            rr_count: 0,
            no_path_since: None,
            next_check: 0.0,
            events: Vec::new(),
            events_dropped: 0,
        }
    }

    fn record(&mut self, e: PathEvent) {
        self.events.push(e);
        if self.events.len() >= 2 * EVENTS_KEPT {
            let excess = self.events.len() - EVENTS_KEPT;
            self.events.drain(..excess);
            self.events_dropped += excess as u64;
        }
    }

    pub fn policy(&self) -> &MultipathPolicy {
        &self.policy
    }

    /// Switches the selector (a policy change); the next request is chosen afresh.
    pub fn set_selector(&mut self, selector: PathSelectorKind) {
        self.policy.selector = selector;
        self.current = None;
        self.rr_count = 0;
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    fn usable_group(&self) -> Option<PathGroup> {
        self.paths
            .iter()
            .filter(|p| p.health == Health::Up)
            .map(|p| p.group)
            .min()
    }

    pub fn state(&self, i: usize) -> PathState {
        let Some(p) = self.paths.get(i) else {
            return PathState::Failed;
        };
        if p.health != Health::Up {
            PathState::Failed
        } else if Some(p.group) == self.usable_group() {
            PathState::Active
        } else {
            PathState::Standby
        }
    }

    pub fn stats(&self, i: usize) -> Option<&PathStats> {
        self.paths.get(i).map(|p| &p.stats)
    }

    /// The path events kept (the latest, oldest first).
    pub fn events(&self) -> &[PathEvent] {
        &self.events
    }

    /// Events recorded so far, trimmed ones included: the sequence number of the next one.
    pub fn event_count(&self) -> u64 {
        self.events_dropped + self.events.len() as u64
    }

    /// The kept events from sequence number `from` on (for callers that forward them as they
    /// come; events trimmed before they asked are gone).
    pub fn events_since(&self, from: u64) -> &[PathEvent] {
        let start = usize::try_from(from.saturating_sub(self.events_dropped)).unwrap_or(usize::MAX);
        self.events.get(start..).unwrap_or(&[])
    }

    /// True while at least one path is usable.
    pub fn any_usable(&self) -> bool {
        self.usable_group().is_some()
    }

    /// The path for the next request.
    pub fn select(&mut self, now: f64) -> Selection {
        let Some(group) = self.usable_group() else {
            self.no_path_since.get_or_insert(now);
            return Selection::NoPath;
        };
        self.no_path_since = None;
        let candidates: Vec<usize> = (0..self.paths.len())
            .filter(|&i| self.paths[i].health == Health::Up && self.paths[i].group == group)
            .collect();
        let has_room = |s: &Self, i: usize| s.paths[i].stats.in_flight < s.paths[i].cap;
        match self.policy.selector {
            PathSelectorKind::FirstAvailable => {
                let cur = match self.current.filter(|c| candidates.contains(c)) {
                    Some(c) => c,
                    None => candidates[0],
                };
                self.current = Some(cur);
                if has_room(self, cur) {
                    Selection::Path(cur)
                } else {
                    Selection::Wait
                }
            }
            PathSelectorKind::RoundRobin { ios } => {
                let cur = match self.current.filter(|c| candidates.contains(c)) {
                    Some(c) if self.rr_count < ios => c,
                    Some(c) => {
                        self.rr_count = 0;
                        candidates
                            .iter()
                            .copied()
                            .find(|&i| i > c)
                            .unwrap_or(candidates[0])
                    }
                    None => {
                        self.rr_count = 0;
                        candidates[0]
                    }
                };
                self.current = Some(cur);
                if has_room(self, cur) {
                    Selection::Path(cur)
                } else {
                    Selection::Wait
                }
            }
            PathSelectorKind::LeastQueueDepth => {
                // Ties go to the path after the last chosen, so equal paths alternate.
                let start = self.current.map_or(0, |c| c + 1);
                let n = self.paths.len();
                let best = (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| candidates.contains(i) && has_room(self, *i))
                    .min_by_key(|&i| self.paths[i].stats.in_flight);
                match best {
                    Some(i) => {
                        self.current = Some(i);
                        Selection::Path(i)
                    }
                    None => Selection::Wait,
                }
            }
            PathSelectorKind::ServiceTime => {
                let open: Vec<usize> = candidates
                    .iter()
                    .copied()
                    .filter(|&i| has_room(self, i))
                    .collect();
                if open.is_empty() {
                    return Selection::Wait;
                }
                let n = self.paths.len() as f64;
                // A path never measured, or idle and stale, gets a probe.
                let probe = open.iter().copied().find(|&i| {
                    let p = &self.paths[i];
                    match p.stats.ewma_service_s {
                        None => true,
                        Some(s) => p.stats.in_flight == 0 && now - p.last_activity > n * s,
                    }
                });
                let choice = probe.unwrap_or_else(|| {
                    let score = |i: usize| {
                        let p = &self.paths[i].stats;
                        f64::from(1 + p.in_flight) * p.ewma_service_s.unwrap_or(0.0)
                    };
                    let best = open
                        .iter()
                        .copied()
                        .min_by(|a, b| score(*a).total_cmp(&score(*b)))
                        .unwrap_or(open[0]);
                    match self.current.filter(|c| open.contains(c)) {
                        Some(c) if score(best) * HYSTERESIS > score(c) => c,
                        _ => best,
                    }
                });
                self.current = Some(choice);
                Selection::Path(choice)
            }
        }
    }

    /// A request left on path `i`.
    pub fn on_dispatch(&mut self, i: usize, now: f64) {
        if let Some(p) = self.paths.get_mut(i) {
            p.stats.in_flight += 1;
            p.stats.dispatched += 1;
            p.last_activity = p.last_activity.max(now);
        }
        self.rr_count += 1;
    }

    /// A request on path `i` finished well after `service_s`.
    pub fn on_success(&mut self, i: usize, now: f64, service_s: f64, bytes: u64) {
        let Some(p) = self.paths.get_mut(i) else {
            return;
        };
        p.stats.in_flight = p.stats.in_flight.saturating_sub(1);
        p.stats.completed += 1;
        p.stats.bytes += bytes;
        p.last_activity = now;
        let sample = service_s.max(0.0);
        p.stats.ewma_service_s = Some(match p.stats.ewma_service_s {
            None => sample,
            Some(s) => {
                let clamped = sample.clamp(s / SAMPLE_CLAMP, s * SAMPLE_CLAMP);
                EWMA_PAST * s + (1.0 - EWMA_PAST) * clamped
            }
        });
    }

    /// A request on path `i` failed (transport error or timeout): the path is failed; the
    /// caller re-issues the request. Returns true when this took the path out of use.
    pub fn on_failure(&mut self, i: usize, now: f64, why: &str) -> bool {
        let Some(p) = self.paths.get_mut(i) else {
            return false;
        };
        p.stats.in_flight = p.stats.in_flight.saturating_sub(1);
        p.stats.errors += 1;
        self.mark_failed(i, now, why)
    }

    /// A request on path `i` is taken back without a verdict (its owner went away).
    pub fn on_abandon(&mut self, i: usize) {
        if let Some(p) = self.paths.get_mut(i) {
            p.stats.in_flight = p.stats.in_flight.saturating_sub(1);
        }
    }

    fn mark_failed(&mut self, i: usize, now: f64, why: &str) -> bool {
        let p = &mut self.paths[i];
        if p.health == Health::Failed {
            return false;
        }
        p.health = Health::Failed;
        self.record(PathEvent {
            at: now,
            path: i,
            what: "failed",
            why: why.to_string(),
        });
        if !self.any_usable() {
            self.no_path_since.get_or_insert(now);
        }
        true
    }

    /// When the checker next wants to run.
    pub fn next_check(&self) -> f64 {
        self.next_check
    }

    /// The path checker: when due, probes every path not known good with `probe(i)` (true:
    /// the path answers) and moves paths back once they have answered for `failback_s`.
    /// Returns true when it ran.
    pub fn check(&mut self, now: f64, mut probe: impl FnMut(usize) -> bool) -> bool {
        if now < self.next_check {
            return false;
        }
        self.next_check = now + self.policy.checker_interval_s;
        for i in 0..self.paths.len() {
            let health = self.paths[i].health;
            if health == Health::Up {
                continue;
            }
            if !probe(i) {
                if let Health::Returning { .. } = health {
                    self.paths[i].health = Health::Failed;
                    self.record(PathEvent {
                        at: now,
                        path: i,
                        what: "probe-failed",
                        why: "failed again while returning; the stable time starts over".into(),
                    });
                }
                continue;
            }
            // With nothing else usable a path that answers is taken back at once: waiting
            // out the stable time would only fail more requests.
            if !self.any_usable() {
                self.restore(i, now);
                continue;
            }
            match health {
                Health::Failed if self.policy.failback_s > 0.0 => {
                    self.paths[i].health = Health::Returning { since: now };
                    self.record(PathEvent {
                        at: now,
                        path: i,
                        what: "returning",
                        why: format!(
                            "probe answered; back after {} s stable",
                            self.policy.failback_s
                        ),
                    });
                }
                Health::Failed => self.restore(i, now),
                Health::Returning { since } if now - since >= self.policy.failback_s - 1e-9 => {
                    self.restore(i, now)
                }
                _ => {}
            }
        }
        true
    }

    fn restore(&mut self, i: usize, now: f64) {
        self.paths[i].health = Health::Up;
        self.paths[i].last_activity = now;
        self.record(PathEvent {
            at: now,
            path: i,
            what: "restored",
            why: if self.any_usable() {
                "stable for the failback time".into()
            } else {
                "answered while no other path was usable".into()
            },
        });
        if self.any_usable() {
            self.no_path_since = None;
        }
    }

    /// True when no path has been usable for `hold_s`: held requests must fail now, and new
    /// ones at once, until a path returns.
    pub fn hold_expired(&self, now: f64) -> bool {
        self.no_path_since
            .is_some_and(|t| now - t >= self.policy.hold_s - 1e-9)
    }

    /// When the hold of requests without a path ends, if it is running.
    pub fn hold_deadline(&self) -> Option<f64> {
        self.no_path_since.map(|t| t + self.policy.hold_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kind: PathSelectorKind, n: usize, cap: u32) -> PathSet {
        PathSet::new(
            &vec![(PathGroup::Optimized, cap); n],
            MultipathPolicy {
                selector: kind,
                ..MultipathPolicy::default()
            },
        )
    }

    fn pick(s: &mut PathSet, now: f64) -> usize {
        match s.select(now) {
            Selection::Path(i) => {
                s.on_dispatch(i, now);
                i
            }
            other => panic!("no path: {other:?}"),
        }
    }

    #[test]
    fn short_forms_round_trip() {
        for s in [
            "first-available",
            "round-robin",
            "round-robin:1000",
            "least-queue-depth",
            "service-time",
        ] {
            assert_eq!(PathSelectorKind::from_short(s).unwrap().to_string(), s);
        }
        assert!(PathSelectorKind::from_short("round-robin:0").is_none());
        assert!(PathSelectorKind::try_from("fastest".to_string()).is_err());
    }

    #[test]
    fn first_available_sticks_to_one_path_until_it_fails() {
        let mut s = set(PathSelectorKind::FirstAvailable, 2, 4);
        assert_eq!(
            (0..4).map(|_| pick(&mut s, 0.0)).collect::<Vec<_>>(),
            [0; 4]
        );
        assert_eq!(
            s.select(0.0),
            Selection::Wait,
            "full, and it never spills over"
        );
        assert!(s.on_failure(0, 1.0, "test"));
        assert_eq!(pick(&mut s, 1.0), 1);
        assert_eq!(s.state(0), PathState::Failed);
    }

    #[test]
    fn round_robin_switches_every_n_and_waits_for_a_full_path() {
        let mut s = set(PathSelectorKind::RoundRobin { ios: 2 }, 2, 3);
        let order: Vec<usize> = (0..5).map(|_| pick(&mut s, 0.0)).collect();
        assert_eq!(order, [0, 0, 1, 1, 0]);
        // Path 0 has 3 in flight (its cap); its turn continues: wait, though path 1 has room.
        assert_eq!(s.select(0.0), Selection::Wait);
    }

    #[test]
    fn least_queue_depth_fills_the_emptier_path() {
        let mut s = set(PathSelectorKind::LeastQueueDepth, 2, 8);
        for _ in 0..4 {
            pick(&mut s, 0.0);
        }
        assert_eq!(s.stats(0).unwrap().in_flight, 2);
        s.on_success(0, 0.001, 0.001, 4096);
        s.on_success(0, 0.001, 0.001, 4096);
        assert_eq!(pick(&mut s, 0.001), 0);
        assert_eq!(pick(&mut s, 0.001), 0);
    }

    #[test]
    fn service_time_prefers_the_fast_path_in_proportion() {
        let mut s = set(PathSelectorKind::ServiceTime, 2, 64);
        // Learn: path 0 takes 1 ms, path 1 3 ms.
        for _ in 0..50 {
            let i = pick(&mut s, 0.0);
            s.on_success(i, 0.0, if i == 0 { 0.001 } else { 0.003 }, 4096);
        }
        let (mut a, mut b) = (0, 0);
        for _ in 0..40 {
            match pick(&mut s, 0.0) {
                0 => a += 1,
                _ => b += 1,
            }
        }
        // (1 + a) · 1 ≈ (1 + b) · 3 → about three on the fast path for one on the slow.
        assert!(a > 2 * b && b > 0, "fast {a} slow {b}");
    }

    #[test]
    fn one_slow_sample_does_not_move_the_estimate_far() {
        let mut s = set(PathSelectorKind::ServiceTime, 1, 8);
        for _ in 0..20 {
            pick(&mut s, 0.0);
            s.on_success(0, 0.0, 0.001, 4096);
        }
        pick(&mut s, 0.0);
        s.on_success(0, 0.0, 1.0, 4096); // one 1000× outlier
        let e = s.stats(0).unwrap().ewma_service_s.unwrap();
        assert!(e < 0.0012, "{e}");
    }

    #[test]
    fn failback_needs_the_stable_time_and_a_flap_starts_it_over() {
        let mut s = PathSet::new(
            &[(PathGroup::Optimized, 4), (PathGroup::Optimized, 4)],
            MultipathPolicy {
                failback_s: 3.0,
                checker_interval_s: 1.0,
                ..MultipathPolicy::default()
            },
        );
        pick(&mut s, 0.0);
        s.on_failure(0, 0.5, "io error");
        let mut t = 1.0;
        // Probes: ok at 1, 2; fails at 3; ok from 4 → back at 7.
        while t <= 10.0 {
            s.check(t, |_| t != 3.0);
            if s.state(0) == PathState::Active {
                break;
            }
            t += 1.0;
        }
        assert_eq!(t, 7.0);
        let kinds: Vec<&str> = s.events().iter().map(|e| e.what).collect();
        assert_eq!(
            kinds,
            [
                "failed",
                "returning",
                "probe-failed",
                "returning",
                "restored"
            ]
        );
    }

    #[test]
    fn a_path_flapping_for_ever_keeps_a_bounded_event_list() {
        let mut s = PathSet::new(
            &[(PathGroup::Optimized, 4), (PathGroup::Optimized, 4)],
            MultipathPolicy {
                failback_s: 0.0,
                checker_interval_s: 1.0,
                ..MultipathPolicy::default()
            },
        );
        let mut seen = 0u64;
        for i in 0..20_000 {
            let t = f64::from(i);
            s.on_failure(0, t, "io error");
            s.check(t + 0.5, |_| true);
            let new = s.events_since(seen).len() as u64;
            seen += new;
            assert_eq!(seen, s.event_count(), "a forwarder sees every event once");
        }
        assert_eq!(s.event_count(), 40_000);
        assert!(s.events().len() < 2 * EVENTS_KEPT);
        assert_eq!(s.events().last().unwrap().what, "restored");
    }

    #[test]
    fn groups_standby_and_no_path_hold() {
        let mut s = PathSet::new(
            &[(PathGroup::NonOptimized, 4), (PathGroup::Optimized, 4)],
            MultipathPolicy {
                hold_s: 2.0,
                ..MultipathPolicy::default()
            },
        );
        assert_eq!(pick(&mut s, 0.0), 1);
        assert_eq!(
            (s.state(0), s.state(1)),
            (PathState::Standby, PathState::Active)
        );
        s.on_failure(1, 1.0, "down");
        assert_eq!(pick(&mut s, 1.0), 0, "the non-optimized path takes over");
        s.on_failure(0, 1.5, "down");
        assert_eq!(s.select(1.5), Selection::NoPath);
        assert!(!s.hold_expired(3.4));
        assert!(s.hold_expired(3.5));
        assert_eq!(s.hold_deadline(), Some(3.5));
    }
}
