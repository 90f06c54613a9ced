//! The `adaptive` policy's window law: a search for the knee of the throughput curve.
//!
//! The knee is the depth `k` where throughput `X(D)` stops rising: below it every added
//! request adds throughput, beyond it only latency (by Little's law `L = D / X`). Arrays
//! signal it with QUEUE FULL/BUSY; files and block devices do not, and their latency is noisy,
//! so the law measures the curve directly, as BBR (Cardwell et al., ACM Queue 2016) measures a
//! path's bandwidth by probing above and below its estimate, and decides with one rule.
//!
//! **The rule (elasticity η).** Of two depths `a < b`, `b` is worth it when the throughput it
//! adds is at least η times the depth it adds, relatively:
//!
//! ```text
//!   X(b) / X(a) − 1  ≥  η · (b / a − 1)                      (1)
//! ```
//!
//! On a curve `X ∝ D` below the knee (elasticity 1) the deeper window always wins; on the flat
//! part (elasticity 0) never. η = 0.2 puts the knee where 20 % of each added request still
//! turns into throughput, the rest into latency (`d ln L / d ln D = 1 − d ln X / d ln D`);
//! with `g = 1.25` a step up must add ≥ 5 % throughput, i.e. latency may rise ≤ 19 % per step.
//! Why 0.2: a rule has a stable point only where the curve's elasticity falls through η. This
//! host's file and loop device (probe guests, 4 KiB reads) have an elasticity of about 0.3 all
//! the way from 14 to 64 in flight, then about 0: with η = 0.3 every depth in that range was as
//! good as the next, and the window random-walked (4.9 to 166 between runs, 33–117 k IOPS);
//! with 0.2 the knee is where the curve really flattens. In the simulated sweep 0.2 against 0.3
//! met the targets in 128 against 133 of 192 cases, with the throughput floor better (p5 0.933
//! against 0.901, worst 0.69 against 0.51, 8 cases below 0.85 against 11) and the latency
//! ceiling worse (p95 1.30 against 1.18). (0.5 lost throughput where the curve bends softly —
//! a link's round trip, random service; 0.15 went past the latency target; docs/scheduling.md.)
//!
//! **Measurement.** A period lasts at least `period_s`, at least four mean latencies (so a
//! window change has settled) and until `period_ios` requests completed (the throughput of a
//! period of `n` completions has a relative noise of about `1/√n`: 384 → 5 %), but at most
//! `10 · period_s`. Its throughput `X = n / t`; its mean in-flight `Q = Σ latency / t`
//! (Little). A period counts only if the window bound (`Q ≥ 0.7 · D`): when the tenants ask for
//! less than the window, the window says nothing about the device, and nothing is learnt.
//! Three such periods in a row with requests in flight bring the estimate down to what the
//! tenants use, `k ← max(P, ⌈Q⌉)` with `P` the period's peak in flight (tenants that come in
//! bursts average far below what their bursts need), measured again in a cruise (window
//! validation, RFC 7661): otherwise a window above the demand — a start-up that doubled
//! through a target's initial burst — is never measured again. An up probe the tenants do not
//! fill is followed by a down probe: the way up is closed, and a window whose cruise they fill
//! to 0.7 but whose up probes they never fill was otherwise held for good (101 over 80 in
//! flight, 3.6× the knee's latency, a whole phase of the sweep).
//! A probe whose relative step `s` is larger than a full step `g − 1` (small windows: 2 → 1 is
//! 100 %) decides on a threshold `η·s` that many fewer completions resolve, so it needs only
//! `period_ios · ((g − 1)/s)²` of them (at least 64): a down probe at `k = 2` runs at half the
//! throughput, and its length is its cost.
//!
//! **Noise beyond counting.** A device whose completions are burstier than a Poisson stream
//! (a few very slow requests on few units; a host whose CPUs the guests share) measures a
//! period of `n` completions within `√(φ/n)`, where φ is the index of dispersion of its
//! completion counts (`crate::dispersion`: measured from 0.1 s slices of every period). Every
//! count above is multiplied by φ. Longer probes cost more where they do not pay, so a probe
//! ends as soon as it has shown, by `DECIDED_Z` = 2 standard errors, that it will not move the
//! knee (a sequential test, looked at every tick; [`KneeSearch::decided`]). A probe that
//! would move it runs its full length.
//!
//! **Pooling** (`crate::curve`). Every period counted is pooled with the earlier ones at its
//! window, and rule (1) compares pooled figures: `X(w) = Σn / Σt`. Near the knee a full step
//! adds about as much throughput as one period's noise (5 %), so single periods decided by
//! coin toss, and the window walked up on lucky probes: 2 units of 1 ms behind a 2 ms link,
//! knee 8, held 6–15. The search probes the same few windows every cycle, so after `m` looks
//! a window's figure is `√m` times as precise. A period far off its window's pool (3.5
//! standard errors and 10 %) means the curve moved: the pool is dropped; weights age with a
//! 30 s time constant. (The sweep's `no-busy link 2000us` shapes, 64 cases: 54.7 % → 67.2 %
//! meeting the targets, latency p95 1.46 → 1.24.)
//!
//! **Phases.**
//! - *start*: `D` doubles each period (needing only 32 completions) while a doubling adds
//!   ≥ 20 % throughput over the last that did — rule (1) at a doubling, where BBR's start-up
//!   asks 25 % (a doubling below the knee adds 100 %; one of elasticity 0.3, a soft curve like
//!   an SSD's, 23 %, and start-up ending there left the search a quarter step per cycle to
//!   climb: `crate::knee_noise_tests`). A doubling that has not paid after one period is
//!   measured on, up to three periods, before it counts as a miss (a host's ±8 % per 0.1 s
//!   ended start-ups on one unlucky period). A miss is judged again (32 completions are
//!   ±18 %: one miss may be the previous period's luck — BBR waits three rounds): the last
//!   depth that paid is measured again, as long, and the doubling goes on if it paid against
//!   that period alone by 20 %, or by 10 % and two standard errors more (from a depth of 4:
//!   below it start-up still doubles on, as a miss confirmed at 1 or 2 leaves the search a
//!   request per probe to climb; `knee::start`). Start-up doubled on
//!   instead until stop 48 and ended at the second miss, which put 4× the end point's window
//!   on the device for 0.3 s: a flat knee of 5 at 1000 IOPS (`quick.toml`) saw 32 as a guest
//!   came up, and the victim's p99 was in those 0.3 s (three interleaved pairs: 1.64, 1.33,
//!   1.17× its solo p99 before, 1.14, 1.20, 1.17 with the recheck). The recheck also climbs
//!   soft curves further: its periods are three long on both sides, where the second
//!   doubling compared with one (`host_curve_grid` 83.1 % → 86.0 %). It ends start-up a
//!   doubling higher more often on bimodal devices (the sweep's seeds 1–4: 94.3 % → 91.7 %,
//!   docs/scheduling.md). A confirmed miss, or one miss
//!   and then a window the tenants do not fill, ends it at the last depth that paid, measured
//!   again in a cruise. That cruise then re-judges the deeper windows start-up tried against
//!   its own figure, with 2 standard errors to spare, and the deepest that passes rule (1)
//!   becomes the knee: start-up's end point is judged on one short period, and on a host
//!   whose throughput swings ±13 % per 0.1 s one lucky period there ends it far too low.
//!   Otherwise the first probe after that cruise looks down (stop 49): the doubling to the
//!   end point paid on one short period, so the end point is as likely past the knee as
//!   below it, and an up probe first let a flat curve's noise carry the window further up
//!   (`quick.toml`: start-up ended at 8 over a knee of 5, and up probes on one period's luck
//!   took it to 10 for 2 s before the first down probe; the sweep's seeds 1–4: 91.7 % →
//!   95.3 %, latency worst 1.71 → 1.36). Where the knee is above the end point, that down
//!   probe loses clearly and ends early (the sequential test below).
//!   A start-up window the tenants fill only in bursts (their peak reached it, their mean is
//!   under 0.7 of it) doubles unjudged, as Linux's slow start grows a window full at its peak
//!   (`tcp_is_cwnd_limited`), and counts as paid where its throughput paid; above their bursts
//!   window validation brings it down to them (below).
//! - *up*: one period at `u = max(g·k, k + 1)`; if (1) holds for `(k, u)`, `k ← u` and up again;
//!   if not, one period at the half step `1 + (g − 1)/2` (a knee inside the last step would
//!   otherwise hold `k` up to `1 / (1 + η(g − 1))` = 7 % short of it), then down.
//! - *down*: one period at `d = min(k / g, k − 1)`; unless (1) holds for `(d, k)`, `k ← d` and
//!   down again. If it does, one period at the half step `k / (1 + (g − 1)/2)`: a knee inside
//!   the step below would otherwise hold `k` up to `g` = 25 % above it, and the latency
//!   target (1.2× the knee's) is narrower than that (8 units of 100 µs behind 2 ms, knee 168:
//!   164 lost 6.8 %, so `k` held 205, 1.22× the knee's latency; the half step 182 lost 1.5 %
//!   and took it; the link shapes: 67.2 % → 84.4 %). A down probe that finds nothing makes
//!   the next wait 1, 2, 4, then 8 cycles (each costs up to `1 − 1/g` of a period's
//!   throughput, half of it at `k = 2`); a capacity drop does not need one (below).
//! - *cruise*: one period of at least `cruise_periods · period_s` at `k`, pooled into
//!   `X(k)`; then up.
//!
//! **Short of the best.** Rule (1) alone holds a curve whose elasticity stays near η over a
//! long range at the range's start: this host's loop device under two probe guests gives 60 k
//! IOPS at 16 in flight, 66 k at 32, 74 k at 40 (elasticity 0.23), and the window held 16–20,
//! 0.84 of an unbounded window's throughput, where the sweep's knee (within 5 % of the best)
//! is near 40. So a second criterion: a depth `b > a` is also worth it when `a`'s pooled
//! throughput is under `BEST_SHARE` = 0.95 of the best pooled at any window (taken `BEST_Z` = 2
//! standard errors low, `X_w · (1 − 2·√(φ/n_w))`) and `b` measured more than `a`. Up moves,
//! trials and down probes all use it: a down probe to a window short of the best, whose
//! throughput is below `k`'s, does not move `k`. (Sweep seeds 1–4: 88.0 % → 90.1 % of 192
//! cases; the host curves of `crate::knee_noise_tests`: 71.0 % → 76.4 % of 960; the traced
//! disk's model: median 0.872 → 0.931 of the best fixed window.)
//!
//! **Selection bias.** A probe that moved `k` won a comparison, so its one period likely
//! measured high (the winner's curse): taken as `X(k)`, it made up moves on noise stick (a
//! down probe had to beat it) and made the next cruise at the same window look like a
//! capacity drop. So a probe's period is only a provisional `X(k)`: the next cruise replaces
//! it (a cruise's own measurement is averaged), a down probe waits for that cruise, and the
//! capacity-drop test below compares cruises only. An up move whose gain is under twice
//! rule (1)'s threshold is on trial: the cruise at the new window must pass rule (1) against
//! the old `X(k)`, or `k` goes back. A gain of twice the threshold and more (the curve
//! below its knee, where a 25 % step adds up to 25 %) climbs on at once.
//!
//! A capacity drop shows at the end of the cruise: throughput at the same window fell below
//! 0.8 × a cruise-measured `X(k)`, and `k ← k · X / X(k)` (the knee moves with the capacity), measured again in
//! a cruise; a smaller drop shows in the next down probe (throughput no longer falls with the
//! window). A capacity return shows in the next up probe. With `g = 1.25` a move is a quarter of the window
//! per period, so a halving or doubling of the knee is followed within about
//! `cruise_periods + 4` periods.
//!
//! **Congestion.** QUEUE FULL or BUSY in numbers (`crate::depth`: at least 4 in a period and
//! 1 % of its answers) is the array naming its knee: the window that drew them, less one, caps
//! `k` and every probe for `cap_hold_s` (so the law does not knock the array over every
//! cycle); after that, probes may look above it again. The caller cuts the window to `k` at
//! once (`crate::depth`; until stop 42 it halved and climbed back, and each climb's burst
//! drew refusals that capped `k` one lower). Fewer signals are only a cost, which the period's throughput shows.
//! A refusal lower than the last one (the array changed) empties the pooled curve; one at or
//! above it keeps it (stop 43: an array that refuses the up probe past its knee every cycle
//! otherwise left rule (1) single periods to compare, and 8 units of 8 ms behind 500 µs held
//! 8 and 9 by turns where 9 serves 4.8 % more). An up probe of one request (`k + 1`) that the
//! array refused is one that failed: the next cycle probes down (a window a lucky probe
//! carried one past the knee otherwise cruised and probed up into a refusal every cycle,
//! never measured from below).
//! While the cap holds, an up probe that would pass it goes halfway between `k` and the cap
//! (a bisection), and a probe below the cap that drew no refusal and lost no throughput moves
//! `k` there: the array has named its knee, and a step of a few per cent is one no period of
//! hundreds of completions could judge by rule (1). (A 64-unit array refusing past its units,
//! climbing back after a capacity return: 62 → 78 refused, then 70, 66, 64, where it had held
//! 60–62, 0.94 of the best fixed depth, for the rest of the phase.)
//!
//! **Failure modes.** A device whose throughput keeps rising gently (elasticity just below η
//! over a long range) is held where the rule stops, unless a deeper window was measured
//! (start-up's, a probe's) at more than 1/0.95 of it; and such a curve is climbed a probe step
//! per cycle, too slowly for 3 s when start-up ended far below it on unlucky periods (±8 %
//! per 0.1 s: `crate::knee_noise_tests`, `host_curve_grid`; 16.5 % of those curves still
//! miss the targets). Integer windows cannot meet both targets where the knee's step adds
//! 5–9 % (2 units of 8 ms behind 500 µs: `X(2)/X(3)` = 0.94, docs/window-sweep.md). A target
//! that refuses at windows it serves smoothly (an array that counts its queue, behind a link)
//! holds the window where its refusals stay near 1 %, a little under the deepest window within
//! that share (0.91–0.94 of it at half capacity, 8 units of 100 µs behind 2 ms). Noise the dispersion estimate
//! does not see makes "short of the best" hold windows higher than the knee. A device with
//! a cliff whose recovery outlasts a probe (nbdkit's rate filter: past the knee throughput
//! falls 13–17 % and stays down while a backlog drains) makes every period after an up probe
//! measure the cliff: the window sits at the knee at the cliff's throughput (0.86 of the
//! peak; docs/network.md). A workload
//! whose demand changes within a period looks like a curve that moved. A period measures
//! requests per second, not cost: a mix of sizes that changes between the periods compared
//! moves the estimate (the rule sees only completions).

use crate::curve::{Curve, Pooled};
use crate::dispersion::Dispersion;

mod params;
mod start;
pub use params::KneeParams;

/// Completions a start-up period needs: a doubling's effect is far above its noise.
const START_IOS: u64 = 32;
/// Start-up ends at this many misses of one doubling: the first is judged again against a
/// new period at the depth below it.
const START_MISSES: u32 = 2;
/// A start-up period whose doubling has not paid goes on for up to this many `period_s`
/// before it counts as a miss: a host whose throughput swings ±8 % per 0.1 s (φ ≈ 30) made a
/// doubling of a soft curve miss on one unlucky 0.1 s, and start-up ended far below the flat
/// (`crate::knee_noise_tests`; 2: 80.8 % of the host curves, 3: 83.5 %, 4: 82.9 %, against
/// 76.4 %). A doubling that pays — below a hard knee it adds far more than 20 % — ends its
/// period at once, so start-up is as fast as before where the curve is steep.
const START_PERIODS: f64 = 3.0;
/// The fewest completions a probe period needs (its noise ≈ 12 %, for steps of 50 % and more).
const PROBE_IOS_MIN: u64 = 64;
/// Start-up doubles while a doubling adds at least this much throughput: rule (1)'s `η` at a
/// doubling (BBR asks 25 %, which a curve of elasticity 0.3 misses by 2 %). A doubling that
/// pays below a hard knee adds far more, and an overshoot is undone by the down probes.
const START_GROWTH: f64 = 0.2;
/// A cruise whose throughput falls below this share of the last at the same window is a
/// capacity drop (4σ of a 384-completion period's noise).
const DROP_SHARE: f64 = 0.8;
/// An up step whose throughput gain is at least this many times rule (1)'s threshold is
/// taken at once; a smaller one is on trial until a cruise at the new window confirms it.
const CLEAR_ELASTICITY: f64 = 2.0;
/// A probe ends early once rule (1)'s margin for staying is this many standard errors (1.5
/// and symmetric early ends, moves too, were tried: docs/window-sweep.md).
const DECIDED_Z: f64 = 2.0;
/// The same for a down probe. A down probe on a flat curve costs nothing and is looked at
/// every tick: at 2 standard errors those looks ended two of three down probes from 9 to 7
/// on `quick.toml`'s flat curve short and early, and held the window at twice the knee.
const DECIDED_DOWN_Z: f64 = 3.0;
/// A window is short of the best when its throughput is under this share of the best pooled
/// (the sweep's knee: the smallest window within 5 % of the best, `crate::sweep::KNEE_SHARE`).
const BEST_SHARE: f64 = 1.0 - crate::sweep::KNEE_SHARE;
/// Standard errors below its pooled figure at which the best throughput is taken.
const BEST_Z: f64 = 2.0;
/// Standard errors by which a window start-up tried must beat its end point's cruise.
const REVIEW_Z: f64 = 2.0;
/// A period counts only where the window bound: mean in-flight ≥ this share of it.
const BOUND_SHARE: f64 = 0.7;
/// Periods in a row in which the tenants, busy, fill less than the window: then the window
/// comes down to what they use (window validation, as TCP does it: RFC 7661).
const UNFILLED_PERIODS: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    Start,
    Up,
    /// A half step up, after a full one did not pay: a knee inside the last step.
    UpHalf,
    Down,
    /// A half step down, after a full one did not pay: a knee inside the step below.
    DownHalf,
    Cruise,
}

/// One measured period.
#[derive(Debug, Clone, Copy)]
pub struct Period {
    /// Completions per second.
    pub throughput: f64,
    /// Mean requests in flight (Σ latency ÷ period).
    pub mean_in_flight: f64,
    /// The most requests in flight at once in the period.
    pub peak_in_flight: f64,
    /// The window the period ran at.
    pub window: f64,
    /// Completions counted (the period's noise is `√(φ/n)`).
    pub completions: u64,
}

#[derive(Debug, Clone)]
pub struct KneeSearch {
    p: KneeParams,
    /// The knee estimate: the window outside probes.
    k: f64,
    /// Throughput measured at `k`.
    x_ref: Option<f64>,
    /// The completions behind `x_ref` (for an average of two, its equivalent count).
    ref_n: f64,
    /// The completions of the period being judged.
    period_n: f64,
    /// `x_ref` is a cruise's measurement, not one probe period's: a probe that moved the
    /// knee was chosen for its high throughput, and taking its one period as the reference
    /// once made the next cruise, at the same window, look like a capacity drop.
    ref_from_cruise: bool,
    /// The cruise under way measures the reference a down probe then compares with.
    down_after_cruise: bool,
    /// Start-up: the last depth whose doubling paid.
    start_prev: f64,
    /// Start-up: misses of the doubling being judged (a first one is judged again).
    start_misses: u32,
    /// Start-up: a doubling to `.0` missed, measuring `.1` over `.2` completions; the period
    /// under way measures the last depth that paid again.
    start_recheck: Option<(f64, f64, f64)>,
    /// Start-up ended: the cruise at its end point re-judges the deeper windows it tried.
    start_review: bool,
    phase: Phase,
    /// From a congestion signal: `(bound, until)`.
    cap: Option<(f64, f64)>,
    /// The window that drew the last congestion signal (kept after the cap expires).
    refused_at: Option<f64>,
    /// Down probes that found nothing back off: cycles to skip now, and the next backoff.
    down_skip: u32,
    down_backoff: u32,
    /// Periods in a row with requests in flight but the window unfilled.
    unfilled: u32,
    /// An up move on trial: the knee and throughput before it, until a cruise at the new
    /// knee confirms it.
    trial: Option<(f64, f64)>,
    /// The index of dispersion φ of the device's completions: a period needs φ times the
    /// completions a Poisson stream would.
    dispersion: Dispersion,
    /// Every counted period, pooled by window (`crate::curve`): the figures rule (1) compares.
    curve: Curve,
    /// The period just pooled: its throughput and completions.
    last: Option<(f64, f64)>,
    now: f64,
}

impl KneeSearch {
    pub fn new(p: KneeParams) -> Self {
        let min = f64::from(p.min.max(1));
        let start = f64::from(p.start).clamp(min, f64::from(p.max).max(min));
        KneeSearch {
            p,
            k: start,
            x_ref: None,
            ref_n: 0.0,
            period_n: 0.0,
            ref_from_cruise: false,
            down_after_cruise: false,
            start_prev: start,
            start_misses: 0,
            start_recheck: None,
            start_review: false,
            phase: Phase::Start,
            cap: None,
            refused_at: None,
            down_skip: 0,
            down_backoff: 0,
            unfilled: 0,
            trial: None,
            dispersion: Dispersion::default(),
            curve: Curve::default(),
            last: None,
            now: 0.0,
        }
    }

    pub fn params(&self) -> &KneeParams {
        &self.p
    }

    /// The knee estimate.
    pub fn knee(&self) -> f64 {
        self.k
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The index of dispersion φ the periods are sized by (1: Poisson).
    pub fn dispersion(&self) -> f64 {
        self.dispersion.phi()
    }

    /// The slices of the period that ends next gave these Allan pairs
    /// (`crate::dispersion`).
    pub fn note_dispersion(&mut self, sum: f64, pairs: u32) {
        self.dispersion.add(sum, pairs);
    }

    fn bounds(&self) -> (f64, f64) {
        let min = f64::from(self.p.min.max(1));
        (min, f64::from(self.p.max).max(min))
    }

    /// The highest window allowed now (`max`, or below a recent congestion).
    fn ceiling(&self) -> f64 {
        let (_, max) = self.bounds();
        self.cap_bound().map_or(max, |bound| bound.min(max))
    }

    fn up(&self) -> f64 {
        self.up_by(self.p.probe_gain)
    }

    /// The bound a recent QUEUE FULL/BUSY set, while it holds.
    fn cap_bound(&self) -> Option<f64> {
        match self.cap {
            Some((bound, until)) if self.now < until => Some(bound),
            _ => None,
        }
    }

    /// An up probe's window: `max(g·k, k + 1)`, or, where the array refused a window below
    /// that, halfway between `k` and the last window it took (a bisection: a knee climbed back
    /// to by quarter steps after a capacity return otherwise stopped at the last step below
    /// the refusal, up to `1 − 1/g` short of it).
    fn up_by(&self, gain: f64) -> f64 {
        let want = (self.k * gain).max(self.k + 1.0);
        let c = self.ceiling();
        if want > c {
            if let Some(b) = self.cap_bound().filter(|b| *b > self.k) {
                return (self.k + ((b - self.k) / 2.0).ceil()).min(c).round();
            }
        }
        want.min(c).round()
    }

    fn half_gain(&self) -> f64 {
        1.0 + (self.p.probe_gain - 1.0) / 2.0
    }

    fn down(&self) -> f64 {
        self.down_by(self.p.probe_gain)
    }

    fn down_by(&self, gain: f64) -> f64 {
        let (min, _) = self.bounds();
        (self.k / gain).min(self.k - 1.0).max(min).round()
    }

    /// The window to run at now.
    pub fn window(&self) -> f64 {
        match self.phase {
            Phase::Start | Phase::Cruise => self.k,
            Phase::Up => self.up(),
            Phase::UpHalf => self.up_by(self.half_gain()),
            Phase::Down => self.down(),
            Phase::DownHalf => self.down_by(self.half_gain()),
        }
    }

    /// Completions the current period needs.
    ///
    /// A probe decides whether throughput changed by at least `η · s` for its relative step
    /// `s`; `period_ios` completions resolve that (noise ≈ `1/√n`) for a full step `g − 1`
    /// at a large window. At small windows a step is far larger (2 → 1 is 100 %, and the
    /// threshold 20 % instead of 5 %), so the same confidence needs `(s_full / s)²` as many
    /// completions — and a shorter probe costs less: a down probe at `k = 2` runs at half the
    /// throughput for its whole period. Never more than `period_ios`, never below 64.
    ///
    /// All of it times the dispersion φ (`crate::dispersion`): a device noisier than its
    /// completions' count needs φ times as many for the same confidence. A probe whose
    /// outcome is clear sooner ends sooner ([`KneeSearch::decided`]).
    pub fn period_ios(&self) -> u64 {
        let full = (f64::from(self.p.period_ios) * self.dispersion.phi()).round() as u64;
        let step = match self.phase {
            Phase::Start => return START_IOS,
            Phase::Cruise => return full,
            Phase::Up | Phase::UpHalf => self.window() / self.k - 1.0,
            Phase::Down | Phase::DownHalf => self.k / self.window().max(1.0) - 1.0,
        };
        let full_step = self.p.probe_gain - 1.0;
        if step <= full_step || step <= 0.0 {
            return full;
        }
        let scaled = full as f64 * (full_step / step).powi(2);
        (scaled.round() as u64).clamp(PROBE_IOS_MIN.min(full), full)
    }

    /// Whether a probe period that measured `x` over `n` completions so far has already shown
    /// that it will not move the knee: rule (1)'s margin is `DECIDED_Z` standard errors on the
    /// side of staying (each side's relative noise `√(φ/n)`, the reference's over the
    /// completions behind it). A probe that costs throughput and teaches nothing — a down
    /// probe from the knee, where throughput falls with the window; an up probe on the flat —
    /// then ends at its shortest, and only a close call runs to `period_ios`. A probe that
    /// would move the knee always runs its full length: a move on an early look (the caller
    /// looks at every tick) would be the winner's curse again.
    pub fn decided(&self, x: f64, n: u64) -> bool {
        let Some(x0) = self.reference() else {
            return false;
        };
        if n == 0 || x <= 0.0 || x0 <= 0.0 {
            return false;
        }
        // Each look adds at least the shortest probe's completions of its own: the pool may
        // have decided already, but a probe that ends at once could never show a moved curve.
        let phi = self.dispersion.phi();
        if (n as f64) < PROBE_IOS_MIN as f64 * phi {
            return false;
        }
        let w = self.window();
        let ref_n = self.pooled(self.k).map_or(self.ref_n, |p| p.n);
        // This period so far, pooled with the earlier ones at its window.
        let Pooled { x, n } = self.curve.with(w, n as f64, n as f64 / x);
        let margin = match self.phase {
            Phase::Up | Phase::UpHalf if w > self.k => (x / x0 - 1.0) - self.threshold(self.k, w),
            Phase::Down | Phase::DownHalf if w < self.k => {
                (x0 / x - 1.0) - self.threshold(w, self.k)
            }
            _ => return false,
        };
        let se = (phi / n + phi / ref_n.max(1.0)).sqrt();
        let (stays, z) = match self.phase {
            Phase::Down | Phase::DownHalf => (margin, DECIDED_DOWN_Z),
            _ => (-margin, DECIDED_Z),
        };
        stays >= z * se
    }

    /// The throughput at `k` rule (1) compares with: the pool's, once a reference stands.
    fn reference(&self) -> Option<f64> {
        self.x_ref.map(|r| self.pooled(self.k).map_or(r, |p| p.x))
    }

    fn pooled(&self, w: f64) -> Option<Pooled> {
        self.curve.at(w)
    }

    /// The gain rule (1) asks of depth `b` over `a`: `η · (b/a − 1)`.
    fn threshold(&self, a: f64, b: f64) -> f64 {
        self.p.elasticity * (b / a - 1.0)
    }

    /// Depth `b > a` is worth it: rule (1), or `a` is short of the best throughput measured
    /// and `b` gets more.
    fn worth(&self, a: f64, xa: f64, b: f64, xb: f64) -> bool {
        self.pays(a, xa, b, xb) || (xb > xa && self.short_of_best(xa))
    }

    /// `x` is below `BEST_SHARE` of the best throughput pooled at any window, taken at its
    /// lower confidence bound (`BEST_Z` standard errors: the best of several noisy pools is
    /// biased high, and a window held up by a lucky pool is latency for nothing).
    fn short_of_best(&self, x: f64) -> bool {
        let phi = self.dispersion.phi();
        let best = self
            .curve
            .points()
            .map(|(_, p)| p.x * (1.0 - BEST_Z * (phi / p.n).sqrt()))
            .fold(0.0, f64::max);
        x < BEST_SHARE * best
    }

    /// Rule (1): depth `b > a` is worth it.
    fn pays(&self, a: f64, xa: f64, b: f64, xb: f64) -> bool {
        xa > 0.0 && xb / xa - 1.0 >= self.threshold(a, b)
    }

    /// The window changed for a reason other than a probe (a capacity drop, congestion,
    /// the tenants' demand, the end of start-up): nothing measured so far is its throughput.
    fn forget_reference(&mut self) {
        self.x_ref = None;
        self.ref_from_cruise = false;
        self.trial = None;
        // A window moved for another reason is not start-up's end point any more.
        self.start_review = false;
    }

    fn cruise(&mut self) {
        self.phase = Phase::Cruise;
    }

    /// The shortest the current period may be, s.
    pub fn min_period_s(&self) -> f64 {
        match self.phase {
            Phase::Cruise => self.p.period_s * f64::from(self.p.cruise_periods.max(1)),
            _ => self.p.period_s,
        }
    }

    /// Goes up if an up probe can look above `k` now, else down.
    fn probe(&mut self) {
        if self.up() > self.k {
            self.phase = Phase::Up;
        } else {
            self.probe_down();
        }
    }

    /// A down probe, unless the last ones found nothing: each costs up to `1 − 1/g` of a
    /// period's throughput (half of it at `k = 2`), so after a fruitless one the next waits
    /// 1, 2, 4, then 8 cycles. A capacity drop needs none: the cruise sees it.
    ///
    /// A down probe is judged against a cruise's throughput at `k`, never against the one
    /// probe period that moved `k` there: that period won its comparison, so it is likely to
    /// have measured high, and a down probe against it would hold the window up.
    fn probe_down(&mut self) {
        if !self.ref_from_cruise && self.x_ref.is_some() {
            self.down_after_cruise = true;
            self.cruise();
        } else if self.down_skip > 0 {
            self.down_skip -= 1;
            self.cruise();
        } else {
            self.phase = Phase::Down;
        }
    }

    /// A down probe found nothing: the next waits longer.
    fn down_failed(&mut self) {
        self.down_backoff = (self.down_backoff * 2).clamp(1, 8);
        self.down_skip = self.down_backoff;
        self.cruise();
    }

    /// The probe period just ended moved the knee to its window `w`: the reference is the pool
    /// there, this period included, until a cruise adds to it. (Taking the winning period
    /// out of the pool, against the winner's curse, did worse: 88.0 % of the sweep's cases
    /// against 89.1 %, and a wider spread on a flat curve with unmeasured noise.)
    fn probe_moved_to(&mut self, w: f64) {
        if let Some((x, n)) = self.last.take() {
            self.x_ref = Some(x);
            self.ref_n = n;
        }
        self.ref_from_cruise = false;
        self.k = w;
        self.moved();
    }

    fn moved(&mut self) {
        self.down_skip = 0;
        self.down_backoff = 0;
    }

    /// An array that refused a window recently has named its knee: a window below the refusal
    /// that it took without refusing, at no loss of throughput, is the knee's side of it
    /// (rule (1) would ask a step of 3 % to add 0.6 % of throughput, which a period of
    /// hundreds of completions cannot tell from noise; the array's answer can).
    fn below_refusal(&self, u: f64) -> bool {
        self.cap_bound().is_some_and(|b| u <= b)
    }

    /// An up probe at `u` measured `x`: moves the knee there when rule (1) says it paid, or
    /// when the array has refused a window above it and `u` lost nothing.
    /// Returns whether it moved, and whether the move is on trial: a gain under
    /// `CLEAR_ELASTICITY` times the rule's threshold is as likely one lucky period as a real
    /// one, so a cruise at `u` must confirm it against the throughput at `k` (on a flat curve
    /// measured ±5 % a period, an up probe past a 16-unit knee passed one time in four and
    /// the window crept to 30–55; docs/scheduling.md).
    fn move_up_if_it_paid(&mut self, u: f64, x: f64) -> (bool, bool) {
        match self.reference() {
            Some(x0)
                if u > self.k
                    && (self.worth(self.k, x0, u, x) || (self.below_refusal(u) && x >= x0)) =>
            {
                let gain = x / x0 - 1.0;
                let trial =
                    !self.below_refusal(u) && gain < CLEAR_ELASTICITY * self.threshold(self.k, u);
                let k0 = self.k;
                self.probe_moved_to(u);
                if trial {
                    self.trial = Some((k0, x0));
                    self.x_ref = None;
                }
                (true, trial)
            }
            _ => (false, false),
        }
    }

    /// A down probe at `d` measured `x`: moves the knee there unless rule (1) says the depth
    /// between `d` and `k` paid for itself. Returns whether it moved.
    fn move_down_if_it_did_not_pay(&mut self, d: f64, x: f64) -> bool {
        match self.reference() {
            Some(x0) if d < self.k && !self.worth(d, x, self.k, x0) => {
                self.probe_moved_to(d);
                true
            }
            _ => false,
        }
    }

    /// A period ended at `now`.
    pub fn on_period(&mut self, now: f64, m: Period) {
        self.now = now;
        let (min, _) = self.bounds();
        if m.mean_in_flight < BOUND_SHARE * m.window {
            // Window validation: tenants that are busy but leave the window unfilled period
            // after period teach the search nothing there, and a window far above their demand
            // is no window at all (a start-up that doubled through a target's burst sat at
            // 128 with 64 requests in flight, 4.7× the knee's latency: docs/network.md). It
            // comes down to what they use, and the search goes on from there.
            self.unfilled = if m.mean_in_flight > 0.0 {
                self.unfilled + 1
            } else {
                0
            };
            // What they use is their peak, not their mean: tenants that come in bursts
            // (guests that wake, submit a batch and halt) average far below the depth their
            // bursts reach, and a window at the mean queues every burst (eight probe guests
            // at QD 4 on a file: 12 in flight on average, bursts to 32; a window brought to
            // 15 cost 14 % of the throughput an unbounded one got; docs/scheduling.md).
            let used = m
                .peak_in_flight
                .max(m.mean_in_flight.ceil())
                .min(m.window)
                .max(min);
            if self.unfilled >= UNFILLED_PERIODS && used < self.k {
                self.unfilled = 0;
                self.k = used;
                self.forget_reference();
                self.start_misses = 0;
                self.cruise();
                return;
            }
            // The tenants asked for less than the window: nothing to learn. A probe is
            // abandoned (its depth was not tried); start-up waits for demand. An up probe the
            // tenants do not fill says the way up is closed: look down instead (a cruise that
            // the tenants fill to 0.7 of the window, followed by up probes they never fill,
            // held a window of 101 over 80 in flight, 3.6× the knee, for a whole phase).
            //
            // A start-up window that their bursts filled doubles unjudged, as Linux's slow
            // start grows a window that was full at its peak (`tcp_is_cwnd_limited`): the
            // tenants want more than it, the device is busy at under 0.7 of it on average, and
            // rule (1) can only be judged where the window binds. Eight probe guests at QD 4
            // on a two-core host keep 9–11 in flight at a window of 16 with bursts of 16
            // queued behind it: start-up waited there for seconds where 32 served 20–25 % more
            // (`weir bench broker`, docs/performance.md). Above their bursts the window comes
            // down to them through window validation, above.
            // A depth measured again after a miss, that the tenants left unfilled, judges
            // nothing: the miss stands as before the recheck.
            if self.phase == Phase::Start {
                self.start_recheck = None;
            }
            match self.phase {
                Phase::Up | Phase::UpHalf => self.probe_down(),
                Phase::Down | Phase::DownHalf => self.cruise(),
                Phase::Start if m.peak_in_flight >= m.window => {
                    // A doubling that paid all the same is one that paid: the next is judged
                    // against it (a miss at 8 then a doubling to 16 that paid 86 %, left
                    // unjudged, ended a start-up at 4 when 32 went unfilled).
                    if self
                        .x_ref
                        .is_some_and(|x0| self.doubling_paid(m.throughput, x0))
                    {
                        self.start_paid(m.throughput, m.completions as f64);
                    }
                    self.k = self.doubled();
                }
                _ => {}
            }
            // A start-up that already missed once doubled past what the tenants ask for: the
            // miss stands, and the last depth that paid is the estimate. Not when their
            // bursts reached the window: the demand is there, only not all the time (2 of 10
            // bench rounds of eight probe guests, likely this way while the guests were still
            // coming up, ended a start-up at 4 with bursts of 32 queued behind it).
            if self.phase == Phase::Start && self.start_misses > 0 && m.peak_in_flight < m.window {
                self.end_start();
            }
            return;
        }
        self.unfilled = 0;
        self.period_n = m.completions as f64;
        let x = m.throughput;
        // The reference as it stood before this period (a cruise is judged against it).
        let ref_before = self.reference();
        self.last = None;
        if x > 0.0 {
            self.last = Some((x, self.period_n));
            let full = f64::from(self.p.period_ios) * self.dispersion.phi();
            self.curve.add(
                now,
                m.window,
                self.period_n,
                self.period_n / x,
                self.dispersion.phi(),
                full,
            );
        }
        // Rule (1) compares pooled figures; start-up's doublings compare single periods.
        let xp = if self.phase == Phase::Start {
            x
        } else {
            self.pooled(m.window).map_or(x, |p| p.x)
        };
        let np = self.pooled(m.window).map_or(self.period_n, |p| p.n);
        match self.phase {
            Phase::Start => self.on_start_period(x),
            Phase::Up => {
                let u = m.window;
                let (moved, trial) = self.move_up_if_it_paid(u, xp);
                if moved {
                    if trial || self.up() <= self.k {
                        self.cruise();
                    }
                } else {
                    let half = self.up_by(self.half_gain());
                    if half > self.k && half < u {
                        self.phase = Phase::UpHalf;
                    } else {
                        self.probe_down();
                    }
                }
            }
            Phase::UpHalf => {
                if self.move_up_if_it_paid(m.window, xp).0 {
                    self.cruise();
                } else {
                    self.probe_down();
                }
            }
            Phase::Down => {
                let d = m.window;
                if self.move_down_if_it_did_not_pay(d, xp) {
                    if self.k <= min {
                        self.cruise();
                    }
                } else {
                    let half = self.down_by(self.half_gain());
                    if half < self.k && half > d {
                        self.phase = Phase::DownHalf;
                    } else {
                        self.down_failed();
                    }
                }
            }
            Phase::DownHalf => {
                if self.move_down_if_it_did_not_pay(m.window, xp) {
                    self.cruise();
                } else {
                    self.down_failed();
                }
            }
            Phase::Cruise => match self.x_ref {
                // An up move on trial: confirmed by the cruise at the new window, or undone.
                None if self.trial.is_some() => {
                    let Some((k0, x0)) = self.trial.take() else {
                        return;
                    };
                    let x0 = self.pooled(k0).map_or(x0, |p| p.x);
                    if self.worth(k0, x0, self.k, xp) {
                        self.x_ref = Some(xp);
                        self.ref_n = np;
                        self.ref_from_cruise = true;
                        self.probe();
                    } else {
                        self.k = k0;
                        self.x_ref = Some(x0);
                        self.ref_n = f64::from(self.p.period_ios);
                        self.ref_from_cruise = false;
                        self.probe_down();
                    }
                }
                Some(_)
                    if self.ref_from_cruise && ref_before.is_some_and(|x0| x < DROP_SHARE * x0) =>
                {
                    let x0 = ref_before.unwrap_or(x);
                    // Same window, far less throughput: the device lost capacity, and its knee
                    // moved down in proportion. Jump there and measure again, rather than walk
                    // down a quarter per probe.
                    self.k = (self.k * x / x0).round().max(min);
                    self.forget_reference();
                    self.curve.clear();
                    self.moved();
                }
                _ => {
                    // A probe's period as the reference is replaced, a cruise's averaged.
                    // The reference is the pool at `k`, this cruise included.
                    (self.x_ref, self.ref_n) = (Some(xp), np);
                    self.ref_from_cruise = true;
                    if std::mem::take(&mut self.start_review) && self.review_start(xp, np) {
                        return;
                    }
                    if std::mem::take(&mut self.down_after_cruise) {
                        self.probe_down();
                    } else {
                        self.probe();
                    }
                }
            },
        }
    }

    /// QUEUE FULL/BUSY drawn by `window` at `now`: the knee is below it.
    pub fn on_congestion(&mut self, now: f64, window: f64) {
        self.now = now;
        let (min, _) = self.bounds();
        let bound = (window - 1.0).max(min);
        self.cap = Some((bound, now + self.p.cap_hold_s));
        if self.refused_at.is_none_or(|r| window < r) {
            self.curve.clear();
        }
        self.refused_at = Some(window);
        if self.k > bound {
            self.k = bound;
            // The throughput measured at the old estimate is not this window's.
            self.forget_reference();
            self.moved();
        } else if matches!(self.phase, Phase::Up | Phase::UpHalf) && window <= self.k + 1.0 {
            // An up probe of one request that the array refused leaves nothing to bisect
            // above `k`: it failed as one that did not pay, and the next cycle looks down.
            // (Otherwise a window that a lucky up probe carried past the knee — 2 in flight
            // on one unit after a capacity drop, twice the knee's latency — cruised and
            // probed up into a refusal every cycle, never measured from below again. A
            // larger step that was refused is bisected instead: looking down first slowed
            // the climb after a capacity return, 0.78 of the best on 16 units behind 2 ms.)
            self.down_after_cruise = true;
        }
        self.cruise();
    }

    /// Advances the clock (the congestion cap expires).
    pub fn set_now(&mut self, now: f64) {
        self.now = now;
    }
}

#[cfg(test)]
mod tests;
