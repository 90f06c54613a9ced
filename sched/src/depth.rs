//! The per-LUN dispatch window `D`: how many requests the broker keeps outstanding on a LUN.
//!
//! Deep windows buy throughput, shallow windows buy fairness and latency (SFQ(D), Jin et al.,
//! SIGMETRICS '04); the right `D` sits at the array's knee, and the knee moves. Four policies:
//!
//! **`fixed`**: `D` is constant — the baseline.
//!
//! **`aimd`**: VMware's adaptive queue depth (KB 1008113: halve after `QFullSampleSize`
//! QUEUE FULL/BUSY, +1 after `QFullThreshold` good completions), with the windows the KB leaves
//! open made explicit:
//! - Every dispatched request carries the controller's *epoch*. A congestion signal (QUEUE
//!   FULL or BUSY) counts only if its request was dispatched in the current epoch: requests
//!   issued under a window that has already been cut say nothing about the new one (one cut per
//!   round trip, as TCP does).
//! - `qfull_sample_size` counted signals halve `D` (`D ← max(min, ⌊D/2⌋)`), remember the window
//!   that congested as the *ceiling*, start a new epoch, and reset both counters.
//! - A congestion signal resets the good streak; `qfull_threshold` consecutive good completions
//!   raise `D` by one while `D + 1 < ceiling` (recovery toward the last known-good window), and
//!   beyond that by at most one per `probe_interval_s` (probing for new room, so a stable
//!   array is not knocked over every few milliseconds).
//!
//! **`latency`**: PARDA (Gulati, Ahmad, Waldspurger, FAST '09). Every `period_s`:
//! `L ← (1−α)·l + α·L` from the period's mean device latency `l`, then
//! `D ← (1−γ)·D + γ·((𝓛/L)·D + β)`, clamped to `[min, max]`. With `target_ms` unset, the
//! target 𝓛 is found as vSphere 5.1+ does — the latency at 90 % of peak throughput — by a
//! start-up sweep: `D` grows by `sweep_step` per period from `min` while throughput still
//! rises by more than 2 %; the target is the latency of the smallest swept window whose
//! throughput reached 90 % of the sweep's peak.
//!
//! PARDA's law has no information below the knee, where latency is flat: a target a few
//! per cent under the flat latency (a noisy sweep's estimate) makes it shrink `D` to its fixed
//! point `β / (1 − 𝓛/L)`, one a little above lets it grow to where latency reaches the target,
//! past the knee (docs/scheduling.md: the root cause of the failing seeds).
//!
//! **`adaptive`** (default): the knee search of [`crate::knee`] steers — the depth where
//! throughput stops rising, measured by probing above and below it. Congestion signals of the
//! current epoch *cut* `D` once the current period has drawn [`ADAPTIVE_BUSY_MIN`] of them and
//! more than chance at [`ADAPTIVE_BUSY_SHARE`] of its answers gives (`n·p + z·√(n·p)`,
//! [`ADAPTIVE_BUSY_Z`]): the knee is capped below the window `W` that drew them, and
//! `D ← min(k, W − 1)` at once. Fewer signals are left to the knee search, which sees their
//! cost in the period's throughput. At a window that has ended a period quiet (the deepest
//! such since the last cut at or below it), only a storm ([`ADAPTIVE_BUSY_STORM`], 5 %) cuts
//! mid-period; a smaller share is judged once, when the period ends (stop 43). Judged at every
//! refusal, the test looked dozens of times a period, and a window that refuses 0.85 % on
//! average, in clusters (bimodal service behind a link), was cut below it every 15–20 s.
//! Until stop 42 the cut was a halving with a climb back (+1 per 4 good completions): behind a
//! link, the halving's gap and the climb's refill came back a round trip later as bursts that
//! the array refused again, and each such cut capped the knee one lower (8 units of 100 µs
//! behind 2 ms: `k` 80 → 61 in 16 ms, at a window that serves 34.7 k IOPS with 0.45 %
//! refused; docs/window-sweep.md, "Refusals without a storm"). On a LUN that has refused at least once, a deeper window asked by the knee search
//! is reached one request per good completion (the *ramp*), not in one burst of the step.
//!
//! In every policy, a period in which requests were outstanding but **none completed** counts
//! as congestion (a halving), never as health: a stalled device must not look idle (the lesson
//! of Linux iocost's fix f91ffe89).

use serde::{Deserialize, Serialize};

use crate::dispersion::SliceMeter;
use crate::knee::{KneeParams, KneeSearch, Period};

/// Good completions per +1 of the `adaptive` policy's recovery after a halving for a stall.
pub const ADAPTIVE_RECOVERY_IOS: u32 = 4;

/// `adaptive` cuts on QUEUE FULL/BUSY once the current period has drawn at least this many
/// of them, of the current epoch…
pub const ADAPTIVE_BUSY_MIN: u64 = 4;
/// …and they are significantly more than this share of its answers (`busy_significant`). A
/// target behind a link that counts the
/// requests still on their way back answers BUSY now and then at windows that serve more than
/// any window below them (0.2 % of answers, +6 %; 1 %, +10 %); a window past a real knee draws
/// far more (a sharp array refuses every request beyond its units). VMware's adaptive queue
/// depth tolerates 32 QUEUE FULLs per halving for the same reason.
pub const ADAPTIVE_BUSY_SHARE: f64 = 0.01;

/// Standard deviations (of a Poisson count) above [`ADAPTIVE_BUSY_SHARE`] of `n` answers that
/// refusals must reach to cut: 1 % one-sided. A window at a knee behind a link that refuses
/// 0.4 % on average draws 4 refusals in a period of 384 answers one time in 15 (1.5 expected),
/// and each halving held it under the knee (8 units of 1 ms behind 2 ms, 8 tenants: the
/// window at 0.85–0.93 of it, throughput 0.84–0.93× the best quiet depth). With the test, the
/// sweep's BUSY shapes (seeds 1–4) met the targets in 95.3 % of cases against 89.1 %, their
/// refusals 0.70 % of answers at p95 against 0.43 % (stop 38, docs/window-sweep.md).
pub const ADAPTIVE_BUSY_Z: f64 = 2.33;

/// The refusals among `n` answers that say the share is above [`ADAPTIVE_BUSY_SHARE`], not
/// chance: `n·p + z·√(n·p)`. A storm passes it at once (4 of the first 40 answers).
fn busy_significant(n: f64) -> f64 {
    busy_above(n, ADAPTIVE_BUSY_SHARE)
}

/// The share of refusals that cuts a quiet window at once, mid-period (with the same test as
/// `busy_significant`): a storm (a capacity drop, an array that changed), not the clusters
/// of a window near the knee, whose share is judged when the period ends.
pub const ADAPTIVE_BUSY_STORM: f64 = 0.05;

fn busy_above(n: f64, share: f64) -> f64 {
    let mean = n * share;
    mean + ADAPTIVE_BUSY_Z * mean.sqrt()
}

/// A control period in which the caller's clock was late for more than this share of its
/// length is not a measurement of the storage ([`QueueDepthController::note_lateness`]).
pub const LATE_SHARE: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case", deny_unknown_fields)]
pub enum DepthPolicy {
    Fixed {
        depth: u32,
    },
    Aimd {
        #[serde(default = "d_sample")]
        qfull_sample_size: u32,
        #[serde(default = "d_threshold")]
        qfull_threshold: u32,
        #[serde(default = "d_probe")]
        probe_interval_s: f64,
        #[serde(default = "d_min")]
        min: u32,
        #[serde(default = "d_max")]
        max: u32,
    },
    Latency(LatencyParams),
    Adaptive(KneeParams),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyParams {
    /// Latency target 𝓛 in ms; unset: found automatically.
    #[serde(default)]
    pub target_ms: Option<f64>,
    /// EWMA weight of the past, α.
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// Smoothing of the window update, γ.
    #[serde(default = "d_gamma")]
    pub gamma: f64,
    /// Additive term β (PARDA scales it by the host's shares; one broker, one LUN: 1).
    #[serde(default = "d_beta")]
    pub beta: f64,
    #[serde(default = "d_period")]
    pub period_s: f64,
    #[serde(default = "d_sweep")]
    pub sweep_step: u32,
    #[serde(default = "d_min")]
    pub min: u32,
    #[serde(default = "d_max")]
    pub max: u32,
}

fn d_sample() -> u32 {
    4
}
fn d_threshold() -> u32 {
    4
}
fn d_probe() -> f64 {
    2.0
}
fn d_min() -> u32 {
    1
}
fn d_max() -> u32 {
    64
}
fn d_alpha() -> f64 {
    0.9
}
fn d_gamma() -> f64 {
    0.5
}
fn d_beta() -> f64 {
    0.25
}
fn d_period() -> f64 {
    0.1
}
fn d_sweep() -> u32 {
    2
}

impl Default for LatencyParams {
    fn default() -> Self {
        LatencyParams {
            target_ms: None,
            alpha: d_alpha(),
            gamma: d_gamma(),
            beta: d_beta(),
            period_s: d_period(),
            sweep_step: d_sweep(),
            min: d_min(),
            max: d_max(),
        }
    }
}

impl Default for DepthPolicy {
    fn default() -> Self {
        DepthPolicy::Adaptive(KneeParams::default())
    }
}

impl DepthPolicy {
    pub fn aimd() -> Self {
        DepthPolicy::Aimd {
            qfull_sample_size: d_sample(),
            qfull_threshold: d_threshold(),
            probe_interval_s: d_probe(),
            min: d_min(),
            max: d_max(),
        }
    }

    /// Parses the short forms used by `compare = [...]`: `fixed:64`, `aimd`, `latency`,
    /// `latency:20` (target ms), `adaptive`, `adaptive:0.3` (elasticity η).
    pub fn from_short(s: &str) -> Option<Self> {
        let (name, arg) = s.split_once(':').map_or((s, None), |(a, b)| (a, Some(b)));
        match (name, arg) {
            ("fixed", Some(d)) => d
                .parse()
                .ok()
                .filter(|d| *d > 0)
                .map(|depth| DepthPolicy::Fixed { depth }),
            ("aimd", None) => Some(DepthPolicy::aimd()),
            ("latency", t) => {
                let target_ms = match t {
                    Some(t) => Some(t.parse().ok().filter(|v: &f64| *v > 0.0)?),
                    None => None,
                };
                Some(DepthPolicy::Latency(LatencyParams {
                    target_ms,
                    ..LatencyParams::default()
                }))
            }
            ("adaptive", e) => {
                let mut p = KneeParams::default();
                if let Some(e) = e {
                    p.elasticity = e.parse().ok().filter(|v: &f64| *v > 0.0 && *v < 1.0)?;
                }
                Some(DepthPolicy::Adaptive(p))
            }
            _ => None,
        }
    }

    /// The policy a `compare` entry (this, from [`Self::from_short`]) puts on a LUN whose own
    /// window policy is `written`: the same law keeps the LUN's parameters — `latency` on a
    /// LUN written with `target_ms = 5, beta = 1.5` runs with them — and takes only what the
    /// short form names (`latency:MS`'s target, `adaptive:E`'s elasticity); another law comes
    /// with its defaults.
    pub fn compared_on(self, written: Option<&DepthPolicy>) -> DepthPolicy {
        match (self, written) {
            (DepthPolicy::Latency(short), Some(DepthPolicy::Latency(w))) => {
                let mut p = w.clone();
                if short.target_ms.is_some() {
                    p.target_ms = short.target_ms;
                }
                DepthPolicy::Latency(p)
            }
            (DepthPolicy::Adaptive(short), Some(DepthPolicy::Adaptive(w))) => {
                let mut p = w.clone();
                if short.elasticity != KneeParams::default().elasticity {
                    p.elasticity = short.elasticity;
                }
                DepthPolicy::Adaptive(p)
            }
            (short, _) => short,
        }
    }

    /// The policy as a host with share `share` of a target shared with other hosts runs it:
    /// PARDA's `β` in proportion to the share (`latency`: `β ← β · share`), so that hosts
    /// whose windows follow the same latency settle at windows — and throughputs — in the
    /// ratio of their shares (`D* = β / (1 − 𝓛/L)`). Other policies have no share to scale.
    pub fn for_host_share(self, share: f64) -> DepthPolicy {
        match self {
            DepthPolicy::Latency(mut p) => {
                p.beta *= share;
                DepthPolicy::Latency(p)
            }
            other => other,
        }
    }

    pub fn name(&self) -> String {
        match self {
            DepthPolicy::Fixed { depth } => format!("fixed:{depth}"),
            DepthPolicy::Aimd { .. } => "aimd".into(),
            DepthPolicy::Latency(p) => p
                .target_ms
                .map_or("latency".into(), |t| format!("latency:{t}")),
            DepthPolicy::Adaptive(p) if p.elasticity == KneeParams::default().elasticity => {
                "adaptive".into()
            }
            DepthPolicy::Adaptive(p) => format!("adaptive:{}", p.elasticity),
        }
    }
}

/// How a request ended, as the controller sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Good,
    /// QUEUE FULL or BUSY from the array.
    Congestion,
}

#[derive(Debug, Clone)]
enum Sweep {
    /// Start-up: growing D to find the latency target.
    Running {
        samples: Vec<(u32, f64, f64)>,
        flat_periods: u32,
    },
    Done,
}

/// Sets one LUN's window.
#[derive(Debug, Clone)]
pub struct QueueDepthController {
    policy: DepthPolicy,
    /// The window as a real number (PARDA's law is continuous); `window()` rounds it.
    w: f64,
    epoch: u64,
    bad: u32,
    good: u32,
    ceiling: u32,
    last_probe: f64,
    /// `adaptive`: climbing back after a halving for a stall.
    recovering: bool,
    /// The time of the latest `on_completion`/`tick` call.
    now: f64,
    // Per-period measurements.
    period_start: f64,
    period_completions: u64,
    period_latency_sum: f64,
    /// The most requests in flight at once in the current period (at a dispatch).
    period_peak: u32,
    /// `adaptive`: QUEUE FULL/BUSY of the current epoch in the current period.
    period_busy: u64,
    /// `adaptive`: the current period cut into slices, for the noise of its throughput.
    slices: SliceMeter,
    ewma_latency: Option<f64>,
    target_s: Option<f64>,
    sweep: Sweep,
    halvings: u64,
    /// `adaptive`: the knee search, and the window the current period runs at.
    knee: Option<KneeSearch>,
    period_window: f64,
    /// The caller's clock lateness summed over the current period, s, and the periods
    /// dropped for it.
    period_late_s: f64,
    late_periods: u64,
    /// `latency`: the integer window shown between ticks, and the error-diffusion remainder
    /// that makes its time average the real-valued `w` (see [`QueueDepthController::window`]).
    shown: Option<u32>,
    dither: f64,
    /// `adaptive`: while the window climbs to a deeper one the knee search asked for, on a LUN
    /// that has refused, the window shown, one deeper per good completion.
    ramp: Option<u32>,
    /// The LUN answered QUEUE FULL/BUSY at least once.
    refused_once: bool,
    /// `adaptive`: the deepest window whose period ended without significant refusals since
    /// the last cut at or below it (0: none). Refusals at or below it are judged when the
    /// period ends, not as they come (unless a storm).
    quiet_window: f64,
}

impl QueueDepthController {
    pub fn new(policy: DepthPolicy) -> Self {
        let (w, target_s, sweep) = match &policy {
            DepthPolicy::Fixed { depth } => (f64::from(*depth), None, Sweep::Done),
            DepthPolicy::Aimd { max, .. } => (f64::from(*max).min(32.0), None, Sweep::Done),
            DepthPolicy::Adaptive(p) => (f64::from(p.min.max(1)), None, Sweep::Done),
            DepthPolicy::Latency(p) => match p.target_ms {
                Some(t) => (f64::from(p.min.max(4)), Some(t / 1e3), Sweep::Done),
                None => (
                    f64::from(p.min),
                    None,
                    Sweep::Running {
                        samples: Vec::new(),
                        flat_periods: 0,
                    },
                ),
            },
        };
        let ceiling = match &policy {
            DepthPolicy::Aimd { max, .. } => *max + 1,
            _ => u32::MAX,
        };
        let knee = match &policy {
            DepthPolicy::Adaptive(p) => Some(KneeSearch::new(p.clone())),
            _ => None,
        };
        QueueDepthController {
            policy,
            w,
            epoch: 0,
            bad: 0,
            good: 0,
            ceiling,
            last_probe: 0.0,
            recovering: false,
            now: 0.0,
            period_start: 0.0,
            period_completions: 0,
            period_latency_sum: 0.0,
            period_peak: 0,
            period_busy: 0,
            slices: SliceMeter::default(),
            ewma_latency: None,
            target_s,
            sweep,
            halvings: 0,
            knee,
            period_window: w,
            period_late_s: 0.0,
            late_periods: 0,
            shown: None,
            dither: 0.0,
            ramp: None,
            refused_once: false,
            quiet_window: 0.0,
        }
    }

    pub fn policy(&self) -> &DepthPolicy {
        &self.policy
    }

    /// The window now.
    /// The dispatch window. `latency` (PARDA) dithers between `⌊w⌋` and `⌈w⌉` from tick to
    /// tick so that the window's time average is `w` itself: at the small windows of a
    /// host's share of a shared target (PARDA's fixed point `β / (1 − 𝓛/L)` is 3.7 for a
    /// share of 1 in `scenarios/sim-three-hosts.toml`) rounding alone skews the hosts' ratio
    /// by up to 1/(2w) — 1:1.75:3.6 where the shares say 1:2:4.
    pub fn window(&self) -> u32 {
        let w = match self.shown {
            // Set at the last tick; a halving since moves `w` away from it.
            Some(shown) if (f64::from(shown) - self.w).abs() < 1.0 => shown,
            _ => self.w.round() as u32,
        };
        self.ramp.map_or(w, |r| r.min(w)).max(1)
    }

    /// `latency`: the next tick's integer window (error diffusion of `w`'s fraction).
    fn dither_window(&mut self) {
        if !matches!(self.policy, DepthPolicy::Latency(_)) {
            self.shown = None;
            return;
        }
        let base = self.w.floor();
        self.dither += self.w - base;
        let up = if self.dither >= 1.0 {
            self.dither -= 1.0;
            1.0
        } else {
            0.0
        };
        self.shown = Some((base + up) as u32);
    }

    /// The epoch to stamp on a request dispatched now.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The latency target in use (seconds), once known.
    pub fn target_s(&self) -> Option<f64> {
        self.target_s
    }

    pub fn halvings(&self) -> u64 {
        self.halvings
    }

    /// `adaptive`: the index of dispersion its periods are sized by (1: Poisson).
    pub fn dispersion(&self) -> Option<f64> {
        self.knee.as_ref().map(KneeSearch::dispersion)
    }

    /// `adaptive`: the knee estimate (the window outside probes and recoveries).
    pub fn knee(&self) -> Option<f64> {
        self.knee.as_ref().map(KneeSearch::knee)
    }

    fn bounds(&self) -> (f64, f64) {
        let (min, max) = match &self.policy {
            DepthPolicy::Fixed { depth } => (*depth, *depth),
            DepthPolicy::Aimd { min, max, .. } => (*min, *max),
            DepthPolicy::Latency(p) => (p.min, p.max),
            DepthPolicy::Adaptive(p) => (p.min, p.max),
        };
        // Every config reader refuses min > max or 0 (`crate::check`); a controller built
        // around that still must not panic in `f64::clamp` on the scheduler thread.
        let min = min.max(1);
        (f64::from(min), f64::from(max.max(min)))
    }

    /// Ends the start-up sweep: the target is the latency of the smallest window that
    /// reached 90 % of the peak throughput seen.
    fn finish_sweep(&mut self, fallback_latency: f64) {
        if let Sweep::Running { samples, .. } = &self.sweep {
            if samples.is_empty() {
                // Nothing measured yet: keep sweeping.
                return;
            }
            // One period's mean latency is noisy; the target is the mean over the swept
            // windows from the first that reached 90 % of the peak up to the peak's own.
            let (peak_w, peak) =
                samples.iter().fold(
                    (0, 0.0),
                    |best, s| if s.1 > best.1 { (s.0, s.1) } else { best },
                );
            let near: Vec<f64> = samples
                .iter()
                .filter(|s| s.1 >= 0.9 * peak && s.0 <= peak_w)
                .map(|s| s.2)
                .collect();
            let target = if near.is_empty() {
                fallback_latency
            } else {
                near.iter().sum::<f64>() / near.len() as f64
            };
            self.target_s = Some(target);
            // Start the law where the sweep found the peak, in equilibrium, rather than from
            // the overshoot the sweep ended on (whose latency would drag the EWMA for seconds).
            self.ewma_latency = Some(target);
            self.w = f64::from(peak_w).max(1.0);
        }
        self.sweep = Sweep::Done;
    }

    /// A stalled device: back off, but this is no evidence about where the array congests, so
    /// the ceiling (the window that congested) is not moved down to here — once completions
    /// resume, the recovery climbs straight back to where the window was.
    fn halve_for_stall(&mut self) {
        let (min, _) = self.bounds();
        if self.ceiling == u32::MAX {
            self.ceiling = self.window() + 1;
        }
        self.recovering = true;
        self.w = (self.w / 2.0).floor().max(min);
        self.ramp = None;
        self.epoch += 1;
        self.bad = 0;
        self.good = 0;
        self.halvings += 1;
    }

    /// The share of refusals that cuts mid-period: at a window that ended a period quiet, only
    /// a storm; its occasional clusters are judged when the period ends (one look, not one per
    /// refusal).
    fn busy_share_now(&self) -> f64 {
        if self.period_window <= self.quiet_window {
            ADAPTIVE_BUSY_STORM
        } else {
            ADAPTIVE_BUSY_SHARE
        }
    }

    fn halve(&mut self) {
        self.recovering = true;
        if self.quiet_window >= self.window() as f64 {
            self.quiet_window = 0.0;
        }
        // Congestion during the sweep ends it: the array has shown where it saturates.
        if matches!(self.sweep, Sweep::Running { .. }) {
            let l = self.ewma_latency.unwrap_or(0.0);
            self.finish_sweep(l);
        }
        let (min, _) = self.bounds();
        self.ceiling = self.window();
        if let Some(k) = &mut self.knee {
            k.on_congestion(self.now, f64::from(self.ceiling));
        }
        match self.knee.as_ref().map(KneeSearch::window) {
            // `adaptive` goes to the capped knee at once rather than to half the window (the
            // module header: a cut, not a halving).
            Some(k) => {
                self.w = k.min(f64::from(self.ceiling) - 1.0).max(min);
                self.recovering = false;
                self.start_period(self.now);
            }
            None => self.w = (self.w / 2.0).floor().max(min),
        }
        self.ramp = None;
        self.epoch += 1;
        self.bad = 0;
        self.good = 0;
        self.period_busy = 0;
        self.halvings += 1;
    }

    /// A request stamped with `epoch` ended at `now` after `latency_s` at the device.
    pub fn on_completion(&mut self, now: f64, epoch: u64, outcome: Outcome, latency_s: f64) {
        self.now = now;
        match outcome {
            Outcome::Good => {
                self.period_completions += 1;
                self.period_latency_sum += latency_s;
                self.slices.on_completion();
            }
            Outcome::Congestion => self.refused_once = true,
        }
        match self.policy.clone() {
            DepthPolicy::Fixed { .. } | DepthPolicy::Latency(_) => {}
            DepthPolicy::Adaptive(_) => match outcome {
                Outcome::Congestion if epoch == self.epoch => {
                    self.period_busy += 1;
                    let answers = (self.period_completions + self.period_busy) as f64;
                    if self.period_busy >= ADAPTIVE_BUSY_MIN
                        && self.period_busy as f64 >= busy_above(answers, self.busy_share_now())
                    {
                        self.halve();
                    }
                }
                Outcome::Congestion => {}
                Outcome::Good => {
                    if let Some(r) = self.ramp {
                        self.ramp = (r + 1 < self.w.round() as u32).then_some(r + 1);
                    }
                    // After a halving, climb back to the knee (+1 per ADAPTIVE_RECOVERY_IOS
                    // good completions), then the knee search steers again.
                    self.good += 1;
                    if self.good >= ADAPTIVE_RECOVERY_IOS && self.recovering {
                        self.good = 0;
                        let target = self.knee.as_ref().map_or(self.w, KneeSearch::window);
                        self.w = (self.w.floor() + 1.0).min(target);
                        if self.w >= target {
                            self.recovering = false;
                            // The recovery's periods measured a moving window: start afresh.
                            self.start_period(now);
                        }
                    }
                }
            },
            DepthPolicy::Aimd {
                qfull_sample_size,
                qfull_threshold,
                probe_interval_s,
                max,
                ..
            } => match outcome {
                Outcome::Congestion => {
                    if epoch == self.epoch {
                        self.good = 0;
                        self.bad += 1;
                        if self.bad >= qfull_sample_size.max(1) {
                            self.halve();
                        }
                    }
                }
                Outcome::Good => {
                    self.good += 1;
                    if self.good >= qfull_threshold.max(1) {
                        self.good = 0;
                        let d = self.window();
                        if d + 1 < self.ceiling {
                            self.w = f64::from((d + 1).min(max));
                        } else if now - self.last_probe >= probe_interval_s && d < max {
                            self.w = f64::from(d + 1);
                            self.last_probe = now;
                        }
                    }
                }
            },
        }
    }

    /// A request was sent: `in_flight` are out now (with it). The period's peak is what
    /// bursty tenants use of the window, which their mean in flight understates.
    pub fn note_in_flight(&mut self, in_flight: u32) {
        self.period_peak = self.period_peak.max(in_flight);
    }

    /// Called periodically (at least every control period) with the requests outstanding on
    /// the LUN. Runs the latency law and the stall rule.
    pub fn tick(&mut self, now: f64, outstanding: u32) {
        self.tick_law(now, outstanding);
        self.dither_window();
    }

    fn tick_law(&mut self, now: f64, outstanding: u32) {
        self.now = now;
        if self.knee.is_some() {
            self.tick_knee(now, outstanding);
            return;
        }
        let period = match &self.policy {
            DepthPolicy::Latency(p) => p.period_s,
            _ => 0.1,
        };
        // The epsilon keeps a caller ticking exactly every period from skipping alternate
        // periods to floating-point rounding.
        if now - self.period_start < period - 1e-9 {
            return;
        }
        let elapsed = now - self.period_start;
        let completions = self.period_completions;
        let mean_latency = (completions > 0).then(|| self.period_latency_sum / completions as f64);
        let late = !matches!(self.policy, DepthPolicy::Fixed { .. }) && self.too_late(elapsed);
        self.start_period(now);
        if late {
            return;
        }

        if completions == 0 {
            if outstanding > 0 && !matches!(self.policy, DepthPolicy::Fixed { .. }) {
                self.halve_for_stall();
            }
            return;
        }
        let params = match &self.policy {
            DepthPolicy::Latency(p) => p.clone(),
            _ => return,
        };
        let Some(l) = mean_latency else { return };
        let ewma = match self.ewma_latency {
            Some(prev) => (1.0 - params.alpha) * l + params.alpha * prev,
            None => l,
        };
        self.ewma_latency = Some(ewma);
        let (min, max) = self.bounds();

        if let Sweep::Running {
            samples,
            flat_periods,
        } = &mut self.sweep
        {
            let throughput = completions as f64 / elapsed;
            let prev_best = samples.iter().map(|s| s.1).fold(0.0, f64::max);
            samples.push((self.w.round() as u32, throughput, l));
            if throughput > prev_best * 1.02 {
                *flat_periods = 0;
            } else {
                *flat_periods += 1;
            }
            if *flat_periods < 3 && self.w < max {
                self.w = (self.w + f64::from(params.sweep_step)).min(max);
                return;
            }
            self.finish_sweep(l);
        }
        let Some(target) = self.target_s else { return };
        let w = self.w;
        let next = (1.0 - params.gamma) * w + params.gamma * ((target / ewma) * w + params.beta);
        self.w = next.clamp(min, max);
    }

    /// The caller's clock ran `lag_s` late (its thread woke that long after a deadline: a
    /// host starved of CPU). Lateness stretches the latencies and thins the completions a
    /// period sees for reasons that are not the storage's; a period whose summed lateness
    /// passes [`LATE_SHARE`] of its length is dropped and the window holds, and a period
    /// with no completions is not taken for a stuck device when the clock was late in it.
    pub fn note_lateness(&mut self, lag_s: f64) {
        self.period_late_s += lag_s.max(0.0);
    }

    /// Periods dropped for lateness so far.
    pub fn late_periods(&self) -> u64 {
        self.late_periods
    }

    /// Whether the period that ends now (`elapsed` long) was too late to learn from; counts it.
    fn too_late(&mut self, elapsed: f64) -> bool {
        let late = self.period_late_s > LATE_SHARE * elapsed;
        if late {
            self.late_periods += 1;
        }
        late
    }

    fn start_period(&mut self, now: f64) {
        self.period_start = now;
        self.period_late_s = 0.0;
        self.period_completions = 0;
        self.period_latency_sum = 0.0;
        self.period_peak = 0;
        self.period_busy = 0;
        self.period_window = self.w;
        self.slices.start(now);
    }

    /// `adaptive`: ends a measurement period when it has enough completions, hands it to the
    /// knee search and applies the window it asks for. Periods that saw a halving or a
    /// recovery are not measurements of one window and are dropped.
    fn tick_knee(&mut self, now: f64, outstanding: u32) {
        let Some(knee) = self.knee.as_mut() else {
            return;
        };
        knee.set_now(now);
        let p = knee.params().clone();
        let elapsed = now - self.period_start;
        self.slices.tick(now, p.period_s);
        if elapsed < p.period_s - 1e-9 {
            return;
        }
        let n = self.period_completions;
        if n == 0 {
            if outstanding > 0 && !self.too_late(elapsed) {
                self.halve_for_stall();
            }
            self.start_period(now);
            return;
        }
        if self.recovering || (self.w - self.period_window).abs() > 1e-9 {
            self.start_period(now);
            return;
        }
        let latency_sum = self.period_latency_sum;
        let mean_latency = latency_sum / n as f64;
        let min_s = knee.min_period_s();
        let settled = elapsed >= min_s - 1e-9 && elapsed >= 4.0 * mean_latency;
        let long_enough = elapsed >= 10.0 * min_s
            || (settled
                && (n >= knee.period_ios() || knee.decided(n as f64 / elapsed, n))
                && !knee.start_needs_more(n as f64 / elapsed, elapsed));
        if !long_enough {
            return;
        }
        if self.too_late(elapsed) {
            log::debug!(target: "weir::knee", "t={now:.3} period dropped: the clock ran late");
            self.start_period(now);
            return;
        }
        let answers = (n + self.period_busy) as f64;
        if self.period_busy >= ADAPTIVE_BUSY_MIN
            && self.period_busy as f64 >= busy_significant(answers)
        {
            self.halve();
            return;
        }
        // The deepest quiet one: a down probe's quiet period does not make the knee's
        // window, which ended periods quiet before it, new again.
        self.quiet_window = self.quiet_window.max(self.period_window);
        let before = self.window();
        let Some(knee) = self.knee.as_mut() else {
            return;
        };
        let (sum, pairs) = self.slices.pairs();
        knee.note_dispersion(sum, pairs);
        let period = Period {
            throughput: n as f64 / elapsed,
            mean_in_flight: latency_sum / elapsed,
            peak_in_flight: f64::from(self.period_peak.max(outstanding)),
            window: self.period_window,
            completions: n,
        };
        let phase = knee.phase();
        knee.on_period(now, period);
        self.w = knee.window();
        // The search's trace, period by period (`RUST_LOG=weir::knee=debug`): how a real
        // device's start-up and probes went is otherwise visible only as one window a second.
        log::debug!(
            target: "weir::knee",
            "t={now:.3} {phase:?} window={} n={n} s={elapsed:.3} x={:.0} in_flight={:.1} \
             peak={} phi={:.2} -> {:?} knee={} window={}",
            period.window,
            period.throughput,
            period.mean_in_flight,
            period.peak_in_flight,
            knee.dispersion(),
            knee.phase(),
            knee.knee(),
            self.w,
        );
        // On a LUN that refuses, a deeper window is reached one request per good completion:
        // a step sent at once lands on the array in the same instant, and an array that
        // counts its queue refuses that burst at a window it serves smoothly. A device that
        // never refused gets the step at once (the noisy flat knee of `knee_noise_tests`
        // walked off with the ramp).
        self.ramp = (self.refused_once && self.w.round() as u32 > before + 1).then_some(before);
        self.start_period(now);
    }
}

#[cfg(test)]
mod tests;
