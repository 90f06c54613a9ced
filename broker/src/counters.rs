//! Per-disk counters and the rate-limited log for misbehaving guests.
//!
//! Counters are atomics: queue workers add, the control API and tests read, nobody locks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_sched::cost::CostModel;

use crate::request::{REJECTION_CLASSES, RequestKind};

/// Upper bounds of the latency histograms' buckets, µs: 1, 2.5 and 5 per decade from 10 µs to
/// 10 s (Prometheus' `le` labels, in seconds, are these ÷ 10⁶). A bucket counts the requests
/// whose latency was at most its bound and above the previous one; the last, unbounded bucket
/// (`+Inf`) takes the rest. Fine enough that a percentile read from the buckets lands within a
/// factor of 2.5 of the true one, coarse enough to cost one atomic add per request.
pub const LATENCY_BUCKETS_US: [u64; 19] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A latency histogram with the fixed [`LATENCY_BUCKETS_US`] bounds: per-bucket counts only (the
/// sum and count live in [`DiskCounters`]' `*_latency_ns` and `device_completions`).
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Non-cumulative counts; index `LATENCY_BUCKETS_US.len()` is the `+Inf` bucket.
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

impl LatencyHistogram {
    pub fn record_ns(&self, ns: u64) {
        let us = ns.div_ceil(1000);
        let i = LATENCY_BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (Prometheus' `_bucket{le=...}`), the last one `+Inf`.
    pub fn cumulative(&self) -> [u64; LATENCY_BUCKETS_US.len() + 1] {
        let mut out = [0u64; LATENCY_BUCKETS_US.len() + 1];
        let mut sum = 0u64;
        for (o, b) in out.iter_mut().zip(&self.buckets) {
            sum += b.load(Ordering::Relaxed);
            *o = sum;
        }
        out
    }
}

/// The three latencies the broker measures per request, as esxtop names them.
#[derive(Debug, Default)]
pub struct LatencyHistograms {
    /// At the backing store (and array model): DAVG.
    pub device: LatencyHistogram,
    /// Waiting in the LUN dispatcher: KAVG.
    pub queue: LatencyHistogram,
    /// From the guest's request to its answer: GAVG.
    pub total: LatencyHistogram,
}

#[derive(Debug, Default)]
pub struct DiskCounters {
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub writes: AtomicU64,
    pub write_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub discards: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub get_ids: AtomicU64,
    /// Valid requests the backing store failed (the guest got IOERR).
    pub io_errors: AtomicU64,
    /// Requests moved from the O_DIRECT descriptor to the buffered one (misaligned buffers).
    pub buffered_fallbacks: AtomicU64,
    /// Requests sent again through another path after theirs failed them (never seen by the
    /// guest).
    pub path_retries: AtomicU64,
    pub rejected: [AtomicU64; REJECTION_CLASSES.len()],
    /// Guest connections accepted on this disk's socket.
    pub connections: AtomicU64,
    /// Interrupts (call eventfd writes) sent to the guest.
    pub notifications: AtomicU64,
    /// Queue notifications (kicks) received from the guest.
    pub kicks: AtomicU64,
    /// A queue idle for a second with requests in its avail ring that no kick announced (a
    /// lost kick), taken then; and used entries the guest had not caught up with, signalled
    /// again (a lost interrupt). A healthy guest and broker have neither.
    pub unkicked: AtomicU64,
    pub resignals: AtomicU64,
    /// Requests taken from the guest and not yet answered (a gauge): waiting in the LUN
    /// dispatcher (`queued`) or at the backing store.
    pub in_flight: AtomicU64,
    /// Sum of submission-to-completion times of answered backing-store requests, ns, and how
    /// many there were: the device latency (esxtop's DAVG) over any interval is the ratio of
    /// the two deltas.
    pub device_latency_ns: AtomicU64,
    pub device_completions: AtomicU64,
    /// Sum of time spent waiting in the LUN dispatcher (KAVG) and of the whole time from the
    /// guest's request to its answer (GAVG), ns, over the same completions.
    pub queue_latency_ns: AtomicU64,
    pub total_latency_ns: AtomicU64,
    /// Requests waiting in the LUN dispatcher (a gauge).
    pub queued: AtomicU64,
    /// Thin LUNs: writes held for pool space now (a gauge), ever held, and answered IOERR for
    /// want of space (`on_full = "error"`, or held past `hold_s`).
    pub held: AtomicU64,
    pub held_total: AtomicU64,
    pub space_errors: AtomicU64,
    /// Work completed in the scheduler's cost units (`weir_sched::cost`, a 4 KiB request = 1),
    /// in thousandths: what weights divide, so shares are judged in it.
    pub cost_milli: AtomicU64,
    /// Requests a previous broker process had taken and not answered, resubmitted by this one
    /// from the frontend's inflight region after a restart.
    pub resubmitted: AtomicU64,
    pub latency: LatencyHistograms,
    /// When the disk last had nothing at the broker (ns on [`idle_clock_ns`]'s clock, 0 while
    /// something is), and the longest such idle gap that ended with a new request since
    /// telemetry last read it, µs: a closed-loop guest that stops asking for this long is
    /// not being run (its host is starved), whatever the storage does.
    idle_since_ns: AtomicU64,
    longest_idle_gap_us: AtomicU64,
}

/// A point-in-time copy of [`DiskCounters`], serialisable.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiskCountersSnapshot {
    pub reads: u64,
    pub read_bytes: u64,
    pub writes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub discards: u64,
    pub write_zeroes: u64,
    pub get_ids: u64,
    pub io_errors: u64,
    pub buffered_fallbacks: u64,
    pub path_retries: u64,
    pub rejected: std::collections::BTreeMap<String, u64>,
    pub connections: u64,
    pub notifications: u64,
    pub kicks: u64,
    #[serde(default)]
    pub unkicked: u64,
    #[serde(default)]
    pub resignals: u64,
    pub in_flight: u64,
    pub device_latency_ns: u64,
    pub device_completions: u64,
    pub queue_latency_ns: u64,
    pub total_latency_ns: u64,
    pub queued: u64,
    /// Cost units completed, in thousandths (see [`DiskCounters::cost_milli`]).
    #[serde(default)]
    pub cost_milli: u64,
    #[serde(default)]
    pub held: u64,
    #[serde(default)]
    pub held_total: u64,
    #[serde(default)]
    pub space_errors: u64,
    #[serde(default)]
    pub resubmitted: u64,
}

/// Nanoseconds on one monotonic clock for the whole process (never 0).
fn idle_clock_ns() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let start = START.get_or_init(std::time::Instant::now);
    u64::try_from(start.elapsed().as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl DiskCounters {
    /// A request was taken from the guest: one more in flight; when the disk had nothing
    /// before, the idle gap that ends here is measured.
    pub fn request_taken(&self) {
        if self.in_flight.fetch_add(1, Ordering::Relaxed) == 0 {
            let since = self.idle_since_ns.swap(0, Ordering::Relaxed);
            if since != 0 {
                let gap_us = idle_clock_ns().saturating_sub(since) / 1000;
                self.longest_idle_gap_us
                    .fetch_max(gap_us, Ordering::Relaxed);
            }
        }
    }

    /// A request was answered: one fewer in flight; the disk goes idle when it was the last.
    pub fn request_answered(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.idle_since_ns.store(idle_clock_ns(), Ordering::Relaxed);
        }
    }

    /// The longest idle gap between two requests that ended since the last call, µs (0: none).
    pub fn take_longest_idle_gap_us(&self) -> u64 {
        self.longest_idle_gap_us.swap(0, Ordering::Relaxed)
    }

    /// Counts a completed request.
    pub fn completed(&self, kind: RequestKind, bytes: u64) {
        if matches!(kind, RequestKind::Read | RequestKind::Write) {
            // Charged as the LUN dispatcher's mClock charges it (the broker's default model).
            let milli = (CostModel::default().cost(bytes) * 1000.0).round() as u64;
            self.cost_milli.fetch_add(milli, Ordering::Relaxed);
        }
        let (count, byte_counter) = match kind {
            RequestKind::Read => (&self.reads, Some(&self.read_bytes)),
            RequestKind::Write => (&self.writes, Some(&self.write_bytes)),
            RequestKind::Flush => (&self.flushes, None),
            RequestKind::GetId => (&self.get_ids, None),
            RequestKind::Discard => (&self.discards, None),
            RequestKind::WriteZeroes => (&self.write_zeroes, None),
        };
        count.fetch_add(1, Ordering::Relaxed);
        if let Some(b) = byte_counter {
            b.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    pub fn snapshot(&self) -> DiskCountersSnapshot {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DiskCountersSnapshot {
            reads: l(&self.reads),
            read_bytes: l(&self.read_bytes),
            writes: l(&self.writes),
            write_bytes: l(&self.write_bytes),
            flushes: l(&self.flushes),
            discards: l(&self.discards),
            write_zeroes: l(&self.write_zeroes),
            get_ids: l(&self.get_ids),
            io_errors: l(&self.io_errors),
            buffered_fallbacks: l(&self.buffered_fallbacks),
            path_retries: l(&self.path_retries),
            rejected: REJECTION_CLASSES
                .iter()
                .zip(self.rejected.iter())
                .map(|(name, c)| (name.to_string(), l(c)))
                .collect(),
            connections: l(&self.connections),
            notifications: l(&self.notifications),
            kicks: l(&self.kicks),
            unkicked: l(&self.unkicked),
            resignals: l(&self.resignals),
            in_flight: l(&self.in_flight),
            device_latency_ns: l(&self.device_latency_ns),
            device_completions: l(&self.device_completions),
            queue_latency_ns: l(&self.queue_latency_ns),
            total_latency_ns: l(&self.total_latency_ns),
            queued: l(&self.queued),
            cost_milli: l(&self.cost_milli),
            held: l(&self.held),
            held_total: l(&self.held_total),
            space_errors: l(&self.space_errors),
            resubmitted: l(&self.resubmitted),
        }
    }
}

/// Lets through at most `burst` messages per `period`; counts what it drops and reports the
/// count with the next message it lets through. A guest spamming bad requests cannot flood the
/// broker's log.
#[derive(Debug)]
pub struct RateLimitedLog {
    period: Duration,
    burst: u32,
    state: Mutex<(Instant, u32, u64)>,
}

impl RateLimitedLog {
    pub fn new(period: Duration, burst: u32) -> Self {
        RateLimitedLog {
            period,
            burst,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// Returns the line to log (with a suppressed-count suffix) or `None` when over the limit.
    pub fn admit(&self, now: Instant, line: impl FnOnce() -> String) -> Option<String> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(st.0) >= self.period {
            *st = (now, 0, st.2);
        }
        if st.1 >= self.burst {
            st.2 += 1;
            return None;
        }
        st.1 += 1;
        let dropped = std::mem::take(&mut st.2);
        let mut text = line();
        if dropped > 0 {
            text.push_str(&format!(" ({dropped} similar messages suppressed)"));
        }
        Some(text)
    }

    pub fn warn(&self, line: impl FnOnce() -> String) {
        if let Some(text) = self.admit(Instant::now(), line) {
            log::warn!("{text}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_admits_a_burst_per_period_and_reports_drops() {
        let log = RateLimitedLog::new(Duration::from_secs(1), 2);
        let t0 = Instant::now();
        assert!(log.admit(t0, || "a".into()).is_some());
        assert!(log.admit(t0, || "b".into()).is_some());
        assert!(log.admit(t0, || "c".into()).is_none());
        assert!(
            log.admit(t0 + Duration::from_millis(500), || "d".into())
                .is_none()
        );
        let next = log
            .admit(t0 + Duration::from_millis(1001), || "e".into())
            .unwrap();
        assert_eq!(next, "e (2 similar messages suppressed)");
    }

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_holds_it() {
        let h = LatencyHistogram::default();
        h.record_ns(0); // le 10 µs
        h.record_ns(10_000); // exactly 10 µs: le 10 µs
        h.record_ns(10_001); // le 25 µs
        h.record_ns(4_000_000); // 4 ms: le 5 ms
        h.record_ns(20_000_000_000); // 20 s: +Inf
        let c = h.cumulative();
        assert_eq!((c[0], c[1], c[7], c[8]), (2, 3, 3, 4));
        assert_eq!(c[LATENCY_BUCKETS_US.len() - 1], 4, "le 10 s");
        assert_eq!(c[LATENCY_BUCKETS_US.len()], 5, "+Inf holds all");
        assert!(c.windows(2).all(|w| w[0] <= w[1]), "cumulative");
    }

    #[test]
    fn reads_and_writes_are_charged_in_cost_units() {
        let c = DiskCounters::default();
        c.completed(RequestKind::Read, 4096);
        c.completed(RequestKind::Write, 65536);
        c.completed(RequestKind::Flush, 0);
        assert_eq!(c.snapshot().cost_milli, 1000 + 8500);
    }

    #[test]
    fn counters_snapshot_names_every_rejection_class() {
        let c = DiskCounters::default();
        c.completed(RequestKind::Read, 4096);
        c.completed(RequestKind::Write, 512);
        c.rejected[3].fetch_add(2, Ordering::Relaxed);
        let s = c.snapshot();
        assert_eq!(
            (s.reads, s.read_bytes, s.writes, s.write_bytes),
            (1, 4096, 1, 512)
        );
        assert_eq!(s.rejected.len(), REJECTION_CLASSES.len());
        assert_eq!(s.rejected["outside_guest_memory"], 2);
        assert_eq!(c.rejected_total(), 2);
    }
}
