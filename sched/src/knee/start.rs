//! Start-up: the window doubles from `start` until a doubling stops paying (`crate::knee`,
//! "Phases"; docs/scheduling.md).

use super::{DECIDED_Z, KneeSearch, Phase, REVIEW_Z, START_GROWTH, START_MISSES, START_PERIODS};

/// A miss is judged again from this depth up (the last that paid); below it start-up doubles
/// on and ends at the second miss, as before stop 48.
const RECHECK_FROM: f64 = 4.0;

impl KneeSearch {
    /// Start-up's next window: twice this one, under the ceiling.
    pub(super) fn doubled(&self) -> f64 {
        (self.k * 2.0).min(self.ceiling())
    }

    /// A start-up period that measured `x` over `elapsed` s goes on: its doubling has not
    /// paid so far, and a miss is judged on `START_PERIODS` periods' time. A period that
    /// measures a depth again after a miss runs as long, whatever it reads.
    pub fn start_needs_more(&self, x: f64, elapsed: f64) -> bool {
        let short = elapsed < START_PERIODS * self.p.period_s - 1e-9;
        match (self.phase, self.x_ref) {
            (Phase::Start, _) if self.start_recheck.is_some() => short,
            (Phase::Start, Some(x0)) => short && !self.doubling_paid(x, x0),
            _ => false,
        }
    }

    /// A start-up doubling that measured `x` paid over the last that did (`x0`): 20 % per
    /// doubling since (after a miss the next must pay for both: on a curve that keeps rising
    /// gently two doublings add 20 % where one does not, and that is not a knee further up).
    pub(super) fn doubling_paid(&self, x: f64, x0: f64) -> bool {
        x >= x0 * (1.0 + START_GROWTH).powi(self.start_misses as i32 + 1)
    }

    /// The start-up period at `k` paid, measuring `x` over `n` completions: the next doubling
    /// is judged against it.
    pub(super) fn start_paid(&mut self, x: f64, n: f64) {
        self.x_ref = Some(x);
        self.ref_n = n;
        self.ref_from_cruise = false;
        self.start_prev = self.k;
        self.start_misses = 0;
    }

    /// Start-up ends at the last depth that paid, measured again in a cruise that then
    /// re-judges the deeper windows start-up tried ([`KneeSearch::review_start`]), and
    /// otherwise probes down first: the doubling to this depth paid on one short period, so
    /// it is as likely past the knee as below it, and an up probe first let a flat curve's
    /// noise carry the window further up before any down probe (`quick.toml`: 8, then 10,
    /// over a knee of 5 for 2 s; the sweep's seeds 1–4: 91.7 % → 95.3 % of the cases).
    pub(super) fn end_start(&mut self) {
        self.k = self.start_prev;
        self.forget_reference();
        self.start_review = true;
        self.down_after_cruise = true;
        self.cruise();
    }

    /// The cruise at start-up's end point measured `x` over `n` pooled completions. Start-up
    /// judged each doubling on one short period, and its end point's figure is one of them:
    /// on a host whose throughput swings ±13 % per 0.1 s (φ ≈ 35), one lucky period at 2 and
    /// an unlucky one at 4 ended a start-up at 2 that then measured 13.4 k IOPS in its cruise
    /// against 27.8 k at 8 (a loop device, probe guests; 0.27 of `fixed:1024` over 8 s).
    /// A deeper window start-up tried that beats the cruise by rule (1) with `REVIEW_Z`
    /// standard errors to spare becomes the knee (the deepest such), measured again in a
    /// cruise. Returns whether it moved.
    pub(super) fn review_start(&mut self, x: f64, n: f64) -> bool {
        let phi = self.dispersion.phi();
        let k = self.k;
        let deeper = self
            .curve
            .points()
            .filter(|&(w, p)| {
                w > k
                    && w <= self.ceiling()
                    && p.x / x - 1.0
                        >= self.threshold(k, w) + REVIEW_Z * (phi / p.n + phi / n.max(1.0)).sqrt()
            })
            .map(|(w, _)| w)
            .max_by(f64::total_cmp);
        let Some(w) = deeper else {
            return false;
        };
        self.k = w;
        self.forget_reference();
        // A deeper window paid: the curve rises here, so the next probe looks up.
        self.down_after_cruise = false;
        self.moved();
        self.cruise();
        true
    }

    /// The doubling to `k` paid, measuring `x` over `n` completions: the next one, unless
    /// the window cannot double any more (then the search probes from here).
    fn double_on(&mut self, x: f64, n: f64) {
        self.start_paid(x, n);
        self.k = self.doubled();
        if self.k <= self.start_prev {
            self.probe();
        }
    }

    /// A start-up period ended at `k`, counted, measuring `x` over `self.period_n`
    /// completions.
    pub(super) fn on_start_period(&mut self, x: f64) {
        if let Some((w, xw, nw)) = self.start_recheck.take() {
            // This period measured the last depth that paid again, after the doubling
            // above it missed: the doubling is judged once more, against this period alone
            // (the earlier one at this depth won its comparison, so it likely read high).
            let gain = xw / x - 1.0;
            let phi = self.dispersion.phi();
            let se = (phi / nw.max(1.0) + phi / self.period_n.max(1.0)).sqrt();
            if gain >= START_GROWTH || gain - START_GROWTH / 2.0 >= DECIDED_Z * se {
                self.k = w;
                self.double_on(xw, nw);
            } else {
                self.end_start();
            }
            return;
        }
        match self.x_ref {
            Some(x0) if !self.doubling_paid(x, x0) => {
                // This doubling did not pay. A start-up period is short (32 completions:
                // ±18 % each), so one miss may be the last period's luck (a knee of 80 was
                // once taken for 2 on the first); BBR waits for three rounds without
                // growth. Start-up used to double on and end at the second miss in a row,
                // which put 4× the end point's window on the device for a period
                // (`quick.toml`: 32 over a knee of 5 as a guest came up, the victim's p99).
                // Instead it measures the last depth that paid again, below the miss, and
                // judges the doubling against that (`START_MISSES`).
                self.start_misses += 1;
                if self.start_misses >= START_MISSES || self.doubled() <= self.k {
                    self.end_start();
                } else if self.start_prev < RECHECK_FROM {
                    // Below a few requests, doubling on past a miss costs a few requests of
                    // latency, and a miss confirmed there ends start-up where each probe
                    // adds one (tenants still arriving made the doubling from 1 miss, and a
                    // `weir bench broker` round held 1–2 for 3 s: 0.31 of fifo's IOPS). The
                    // next doubling must pay for both.
                    self.k = self.doubled();
                } else {
                    self.start_recheck = Some((self.k, x, self.period_n));
                    self.k = self.start_prev;
                }
            }
            _ => self.double_on(x, self.period_n),
        }
    }
}
