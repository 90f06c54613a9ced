//! The broker's figures as Prometheus metrics (`/metrics`, text format 0.0.4).
//!
//! Every value is read from the live counters at scrape time — the same atomics the control
//! socket's `stats` and per-second `telemetry` read — so a scrape never disagrees with them and
//! the data path pays nothing for Prometheus. Names follow Prometheus' conventions: base units
//! (seconds, bytes), `_total` on counters, one family per quantity with the dimension in a
//! label (`op`, `stage`, `state`). Every family is documented in `docs/observability.md`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::control::serde_name;
use crate::counters::{DiskCounters, LATENCY_BUCKETS_US, LatencyHistogram};
use crate::request::REJECTION_CLASSES;
use crate::server::BrokerState;

/// The Content-Type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Collects families by name, keeping the order in which they first appear.
#[derive(Default)]
struct Families {
    order: Vec<String>,
    by_name: HashMap<String, MetricFamily>,
}

impl Families {
    fn add(&mut self, name: &str, help: &str, kind: MetricType, metric: Metric) {
        let family = self.by_name.entry(name.to_string()).or_insert_with(|| {
            self.order.push(name.to_string());
            let mut f = MetricFamily::default();
            f.set_name(name.to_string());
            f.set_help(help.to_string());
            f.set_field_type(kind);
            f
        });
        family.mut_metric().push(metric);
    }

    fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(label_pairs(labels));
        let mut c = Counter::default();
        c.set_value(value);
        m.set_counter(c);
        self.add(name, help, MetricType::COUNTER, m);
    }

    fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: f64) {
        let mut m = Metric::from_label(label_pairs(labels));
        let mut g = Gauge::default();
        g.set_value(value);
        m.set_gauge(g);
        self.add(name, help, MetricType::GAUGE, m);
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        hist: &LatencyHistogram,
        sum_ns: &AtomicU64,
    ) {
        let cumulative = hist.cumulative();
        let mut h = Histogram::default();
        h.set_bucket(
            LATENCY_BUCKETS_US
                .iter()
                .zip(cumulative.iter())
                .map(|(&bound_us, &count)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(bound_us as f64 / 1e6);
                    b.set_cumulative_count(count);
                    b
                })
                .collect(),
        );
        // The +Inf bucket is implied by the count (the encoder writes it).
        h.set_sample_count(cumulative[LATENCY_BUCKETS_US.len()]);
        h.set_sample_sum(sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let mut m = Metric::from_label(label_pairs(labels));
        m.set_histogram(h);
        self.add(name, help, MetricType::HISTOGRAM, m);
    }

    fn into_vec(mut self) -> Vec<MetricFamily> {
        self.order
            .iter()
            .filter_map(|n| self.by_name.remove(n))
            .collect()
    }
}

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut p = LabelPair::default();
            p.set_name(k.to_string());
            p.set_value(v.to_string());
            p
        })
        .collect()
}

/// The disk's socket file name: tenants need not be unique, sockets are.
fn disk_label(socket: &std::path::Path) -> String {
    socket.file_name().map_or_else(
        || socket.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn disk_families(f: &mut Families, tenant: &str, lun: &str, disk: &str, c: &DiskCounters) {
    let l = |x: &AtomicU64| x.load(Ordering::Relaxed) as f64;
    let base = [("tenant", tenant), ("lun", lun), ("disk", disk)];
    let with = |k: &'static str, v: &'static str| {
        let mut v4: Vec<(&str, &str)> = base.to_vec();
        v4.push((k, v));
        v4
    };
    for (op, counter) in [
        ("read", &c.reads),
        ("write", &c.writes),
        ("flush", &c.flushes),
        ("discard", &c.discards),
        ("write_zeroes", &c.write_zeroes),
        ("get_id", &c.get_ids),
    ] {
        f.counter(
            "weir_disk_ops_total",
            "Requests answered successfully, by operation.",
            &with("op", op),
            l(counter),
        );
    }
    for (op, counter) in [("read", &c.read_bytes), ("write", &c.write_bytes)] {
        f.counter(
            "weir_disk_bytes_total",
            "Bytes transferred by successful requests, by operation.",
            &with("op", op),
            l(counter),
        );
    }
    f.counter(
        "weir_disk_cost_units_total",
        "Work done in the scheduler's cost units (a 4 KiB request costs 1): what weights divide.",
        &base,
        l(&c.cost_milli) / 1000.0,
    );
    f.counter(
        "weir_disk_io_errors_total",
        "Valid requests the backing store failed (the guest got IOERR).",
        &base,
        l(&c.io_errors),
    );
    for (class, counter) in REJECTION_CLASSES.iter().zip(c.rejected.iter()) {
        f.counter(
            "weir_disk_rejected_requests_total",
            "Malformed requests refused by validation, by class.",
            &with("class", class),
            l(counter),
        );
    }
    f.counter(
        "weir_disk_path_retries_total",
        "Requests sent again through another path after theirs failed (unseen by the guest).",
        &base,
        l(&c.path_retries),
    );
    f.counter(
        "weir_disk_resubmitted_total",
        "Requests a previous broker process left in flight, resubmitted after a restart.",
        &base,
        l(&c.resubmitted),
    );
    f.gauge(
        "weir_disk_held_writes",
        "Writes held now for thin-pool space (this tenant's allocating writes only).",
        &base,
        l(&c.held),
    );
    f.counter(
        "weir_disk_held_writes_total",
        "Writes ever held for thin-pool space.",
        &base,
        l(&c.held_total),
    );
    f.counter(
        "weir_disk_space_errors_total",
        "Writes answered IOERR for want of thin-pool space (on_full = error, or past hold_s).",
        &base,
        l(&c.space_errors),
    );
    f.counter(
        "weir_disk_kicks_total",
        "Queue notifications received from the guest.",
        &base,
        l(&c.kicks),
    );
    f.counter(
        "weir_disk_unkicked_total",
        "Requests found in an idle queue's avail ring that no kick announced (lost kicks).",
        &base,
        l(&c.unkicked),
    );
    f.counter(
        "weir_disk_resignals_total",
        "Interrupts sent again to a guest that had not caught up with the used ring after a \
         second of quiet (lost interrupts).",
        &base,
        l(&c.resignals),
    );
    f.counter(
        "weir_disk_interrupts_total",
        "Interrupts (call eventfd writes) sent to the guest.",
        &base,
        l(&c.notifications),
    );
    f.gauge(
        "weir_disk_in_flight",
        "Requests taken from the guest and not yet answered: queued plus active.",
        &base,
        l(&c.in_flight),
    );
    f.gauge(
        "weir_disk_active",
        "Requests at the backing store now (esxtop ACTV).",
        &base,
        (c.in_flight.load(Ordering::Relaxed)).saturating_sub(c.queued.load(Ordering::Relaxed))
            as f64,
    );
    f.gauge(
        "weir_disk_queued",
        "Requests waiting in the LUN dispatcher now (esxtop QUED).",
        &base,
        l(&c.queued),
    );
    for (stage, hist, sum) in [
        ("device", &c.latency.device, &c.device_latency_ns),
        ("queue", &c.latency.queue, &c.queue_latency_ns),
        ("total", &c.latency.total, &c.total_latency_ns),
    ] {
        f.histogram(
            "weir_disk_latency_seconds",
            "Request latency by stage: device (DAVG), queue in the dispatcher (KAVG), \
             total from the guest's request to its answer (GAVG).",
            &with("stage", stage),
            hist,
            sum,
        );
    }
}

/// Every metric family of the broker, at this instant.
pub fn gather(state: &BrokerState) -> Vec<MetricFamily> {
    let mut f = Families::default();
    for d in &state.disks {
        let disk = disk_label(&d.socket);
        let base = [
            ("tenant", d.tenant.as_str()),
            ("lun", d.lun.as_str()),
            ("disk", disk.as_str()),
        ];
        f.gauge(
            "weir_disk_connected",
            "1 while a guest is attached to the disk's socket.",
            &base,
            if d.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        f.gauge(
            "weir_disk_weight",
            "The tenant's mClock weight (its share of what reservations leave).",
            &base,
            d.policy.weight,
        );
        f.gauge(
            "weir_disk_reservation_iops",
            "The tenant's guaranteed IOPS (0: none).",
            &base,
            d.policy.reservation_iops,
        );
        f.gauge(
            "weir_disk_limit_iops",
            "The tenant's IOPS cap (0: none).",
            &base,
            d.policy.limit_iops,
        );
        disk_families(&mut f, &d.tenant, &d.lun, &disk, &d.counters);
    }
    for lun in &state.dispatchers {
        let c = &lun.counters;
        let l = |x: &AtomicU64| x.load(Ordering::Relaxed) as f64;
        let name = [("lun", lun.name.as_str())];
        let scheduler = serde_name(&lun.scheduler);
        let (depth_policy, selector) = (lun.depth_policy(), lun.selector());
        f.gauge(
            "weir_lun_info",
            "The LUN's policies (always 1): scheduler, window policy and path selector.",
            &[
                ("lun", lun.name.as_str()),
                ("backend", lun.backend()),
                ("scheduler", scheduler.as_str()),
                ("depth_policy", depth_policy.as_str()),
                ("selector", selector.as_str()),
            ],
            1.0,
        );
        f.gauge(
            "weir_lun_window",
            "The LUN's dispatch window D: requests it lets reach the store at once (DQLEN).",
            &name,
            l(&c.window),
        );
        // `adaptive` only: where its knee search is, and how noisy it finds the store.
        let knee = l(&c.knee_milli);
        if knee > 0.0 {
            f.gauge(
                "weir_lun_knee",
                "The adaptive window's knee estimate: the depth past which throughput stops rising.",
                &name,
                knee / 1000.0,
            );
            f.gauge(
                "weir_lun_knee_dispersion",
                "Index of dispersion of the LUN's completions (1: Poisson); the knee search's periods are that many times longer.",
                &name,
                l(&c.dispersion_milli) / 1000.0,
            );
        }
        f.gauge(
            "weir_lun_in_flight",
            "Requests dispatched to the store and not yet finished.",
            &name,
            l(&c.in_flight),
        );
        f.gauge(
            "weir_lun_queued",
            "Requests waiting in the dispatcher (tenant queues and retries).",
            &name,
            l(&c.queued),
        );
        f.counter(
            "weir_lun_congestion_total",
            "QUEUE FULL / BUSY answers from the (emulated) array.",
            &name,
            l(&c.congestion),
        );
        f.counter(
            "weir_lun_window_halvings_total",
            "Times the adaptive window was cut.",
            &name,
            l(&c.halvings),
        );
        f.counter(
            "weir_lun_reissued_total",
            "Requests moved to another path after theirs failed.",
            &name,
            l(&c.reissued),
        );
        for p in lun.path_snapshots() {
            let state_name = serde_name(&p.state);
            let labels = [("lun", lun.name.as_str()), ("path", p.name.as_str())];
            f.gauge(
                "weir_path_up",
                "1 while the path can carry I/O (active or standby), 0 when failed.",
                &labels,
                if p.state == weir_sched::path::PathState::Failed {
                    0.0
                } else {
                    1.0
                },
            );
            let group = serde_name(&p.group);
            f.gauge(
                "weir_path_info",
                "The path's state, ALUA-like group and emulated port (always 1).",
                &[
                    ("lun", lun.name.as_str()),
                    ("path", p.name.as_str()),
                    ("state", state_name.as_str()),
                    ("group", group.as_str()),
                    ("port", p.port.as_deref().unwrap_or("")),
                ],
                1.0,
            );
            f.counter(
                "weir_path_ops_total",
                "Requests the path completed.",
                &labels,
                p.stats.completed as f64,
            );
            f.counter(
                "weir_path_bytes_total",
                "Bytes the path carried.",
                &labels,
                p.stats.bytes as f64,
            );
            f.counter(
                "weir_path_errors_total",
                "Requests that failed on the path (and moved to another).",
                &labels,
                p.stats.errors as f64,
            );
            f.gauge(
                "weir_path_in_flight",
                "Requests on the path now.",
                &labels,
                f64::from(p.stats.in_flight),
            );
            if let Some(s) = p.stats.ewma_service_s {
                f.gauge(
                    "weir_path_service_time_seconds",
                    "EWMA of the path's service time (what service-time selection weighs).",
                    &labels,
                    s,
                );
            }
        }
    }
    if let Some(array) = &state.array {
        for (i, port) in state.port_names.iter().enumerate() {
            let labels = [("port", port.as_str())];
            f.counter(
                "weir_port_queue_full_total",
                "QUEUE FULL answers from the emulated array port.",
                &labels,
                array
                    .queue_full
                    .get(i)
                    .map_or(0.0, |c| c.load(Ordering::Relaxed) as f64),
            );
            f.gauge(
                "weir_port_outstanding",
                "Requests the emulated array port holds now.",
                &labels,
                f64::from(array.port_outstanding(i)),
            );
        }
    }
    for pool in &state.pools {
        let snap = pool.snapshot();
        let name = [("pool", snap.name.as_str())];
        f.gauge(
            "weir_pool_capacity_bytes",
            "The pool's capacity: its quota, or its filesystem's size.",
            &name,
            snap.capacity_bytes as f64,
        );
        f.gauge(
            "weir_pool_used_bytes",
            "Use against the capacity: chunks handed out (quota) or the filesystem's use.",
            &name,
            snap.used_bytes as f64,
        );
        f.gauge(
            "weir_pool_allocated_bytes",
            "Chunks the pool's LUNs hold.",
            &name,
            snap.allocated_bytes as f64,
        );
        f.gauge(
            "weir_pool_overcommit_ratio",
            "Sum of the pool's LUN sizes over its capacity.",
            &name,
            snap.overcommit,
        );
        f.gauge(
            "weir_pool_filesystem_full",
            "1 while a write met ENOSPC/EDQUOT and the filesystem has not grown since.",
            &name,
            if snap.fs_full { 1.0 } else { 0.0 },
        );
        for w in &snap.forecast {
            let window = format!("{}s", w.window_s);
            let labels = [("pool", snap.name.as_str()), ("window", window.as_str())];
            f.gauge(
                "weir_pool_allocation_rate_bytes_per_second",
                "Least-squares allocation rate over the window.",
                &labels,
                w.rate_bytes_per_s,
            );
            if let Some(t) = w.time_to_full_s {
                f.gauge(
                    "weir_pool_time_to_full_seconds",
                    "Forecast time until the pool is full at the window's rate.",
                    &labels,
                    t,
                );
            }
        }
        for lun in &snap.luns {
            f.gauge(
                "weir_lun_allocated_bytes",
                "Chunks a thin LUN holds in its pool.",
                &[("pool", snap.name.as_str()), ("lun", lun.lun.as_str())],
                lun.allocated_bytes as f64,
            );
        }
    }
    f.into_vec()
}

/// The text exposition of [`gather`].
pub fn render(state: &BrokerState) -> Result<String, prometheus::Error> {
    let mut out = Vec::new();
    TextEncoder::new().encode(&gather(state), &mut out)?;
    String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
}
