//! The report of a `weir run`: tables for the terminal, and a self-contained `report.html`
//! (inline SVG, no scripts, no network) with one panel per policy: tenant throughput over
//! time, the LUN window and congestion signals over time, latency CDFs, path usage.

use std::fmt::Write as _;
use std::path::Path;

use weir_sched::metrics;

use crate::results::{PolicyResult, Results};
use crate::summary::fmt_us;

fn label(p: &PolicyResult, repeats: bool) -> String {
    if repeats {
        format!("{}#{}", p.name, p.repeat)
    } else {
        p.name.clone()
    }
}

/// Policies × metrics, then tenants × throughput and latency, then failures.
pub fn terminal(r: &Results) -> String {
    let repeats = r.policies.iter().any(|p| p.repeat > 0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "scenario {}{}",
        r.scenario,
        r.purpose
            .as_deref()
            .map(|p| format!(": {p}"))
            .unwrap_or_default()
    );
    let rows: Vec<metrics::PolicyRow> = r
        .policies
        .iter()
        .map(|p| {
            let m = &p.metrics;
            metrics::PolicyRow {
                name: label(p, repeats),
                aggregate_iops: m.aggregate_iops,
                cost: metrics::CostShares {
                    jain: m.cost_jain,
                    max_share_error: m.cost_max_share_error,
                    mean_share_error: m.cost_mean_share_error,
                    contended_seconds: m.contended_seconds,
                    got_over_due: Vec::new(),
                },
                jain: m.jain,
                min_max_ratio: m.min_max_ratio,
                max_share_error: m.max_share_error,
                mean_share_error: m.mean_share_error,
                reservation_conformance: m.reservation_conformance,
                victim_p99_ratio: m.victim_p99_ratio,
                victim_p999_ratio: m.victim_p999_ratio,
                work_conservation: m.work_conservation,
                congestion: None,
            }
        })
        .collect();
    s.push_str(&metrics::policy_table(&rows));
    let _ = writeln!(
        s,
        "(Jain, max/mean err: shares in cost units over the contended seconds (cont.s: seconds in \
         which two or more tenants of a LUN had requests waiting in the broker; a tenant that was \
         not waiting got what it asked); IOPS-Jain, IOPS-err, min/max: weight-normalised IOPS \
         from the guests' own reports over the whole run; resv: 1 s windows at >= 99 % of the \
         reservation; v.p99/v.p999: victim tail with everyone / alone; work: IOPS / fifo's)\n"
    );
    let _ = writeln!(
        s,
        "{:<20} {:<12} {:>6} {:>9} {:>8} {:>9} {:>9} {:>9} {:>6}",
        "policy", "tenant", "weight", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "errors"
    );
    for p in &r.policies {
        let rows = p
            .tenants
            .iter()
            .map(|t| (t, if t.ok { "" } else { "  FAILED" }))
            .chain(p.victim_solo.iter().map(|v| (v, "  (alone)")));
        for (t, mark) in rows {
            let _ = writeln!(
                s,
                "{:<20} {:<12} {:>6} {:>9.0} {:>8.1} {:>9} {:>9} {:>9} {:>6}{mark}",
                label(p, repeats),
                t.name,
                t.weight,
                t.iops,
                t.mbps,
                fmt_us(t.lat_us.p50),
                fmt_us(t.lat_us.p99),
                fmt_us(t.lat_us.p999),
                t.errors,
            );
        }
    }
    s.push_str(&host_table(r, repeats));
    if repeats {
        s.push_str(&spread(r));
        let _ = writeln!(s);
    }
    for p in &r.policies {
        for f in &p.failures {
            let _ = writeln!(
                s,
                "FAILED under {}: {}: {}",
                label(p, repeats),
                f.guest,
                f.error.lines().next().unwrap_or("")
            );
        }
    }
    for p in &r.policies {
        let runs = std::iter::once(("", Some(&p.trust))).chain(std::iter::once((
            " (victim alone)",
            p.victim_solo_trust.as_ref(),
        )));
        for (which, t) in runs {
            if let Some(line) = t.and_then(crate::trust::summary) {
                let _ = writeln!(s, "DISTORTED under {}{which}: {line}", label(p, repeats));
            }
        }
    }
    let _ = writeln!(s, "host: {}; {} s", r.host.kvm, r.wall_s.round());
    s
}

/// With `[[host]]` entries: per policy, each host's share and what it got.
fn host_table(r: &Results, repeats: bool) -> String {
    let mut s = String::new();
    if r.policies.iter().all(|p| p.hosts.is_empty()) {
        return s;
    }
    let _ = writeln!(
        s,
        "\n{:<20} {:<12} {:>6} {:>9} {:>9} {:>12} {:>7} {:>8}  guests",
        "policy", "host", "share", "IOPS", "IOPS-err", "cost got/due", "held s", "dev ms"
    );
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:+.1}%", v * 100.0));
    for p in &r.policies {
        for h in &p.hosts {
            let _ = writeln!(
                s,
                "{:<20} {:<12} {:>6} {:>9.0} {:>9} {:>12} {:>7} {:>8}  {}",
                label(p, repeats),
                h.name,
                h.share,
                h.iops,
                pct(h.iops_share_error),
                h.cost_got_over_due
                    .map_or("-".into(), |x| format!("{x:.3}")),
                h.held_by_path_s,
                h.device_latency_us
                    .map_or("-".into(), |l| format!("{:.2}", l / 1000.0)),
                h.guests.join(" "),
            );
        }
        let m = &p.metrics;
        let _ = writeln!(
            s,
            "{:<20} hosts: Jain {} max err {} over {} contended s (cost units)",
            label(p, repeats),
            m.host_cost_jain.map_or("-".into(), |j| format!("{j:.3}")),
            m.host_cost_max_share_error
                .map_or("-".into(), |e| format!("{:.1}%", e * 100.0)),
            m.host_contended_seconds,
        );
    }
    let _ = writeln!(
        s,
        "(each host a broker of its own; cost got/due: the cost it completed over what its share \
         was due in the seconds two or more hosts had requests waiting, 1 = exact; IOPS-err: its \
         fraction of the hosts' IOPS over its fraction of the shares, whole run, guests' reports; \
         held s: seconds its device latency was ≥ 1.5× the other waiting hosts', so its own path \
         held it back and it was judged as demand-limited, not as a contender; dev ms: its mean \
         device latency while it had requests waiting)"
    );
    s
}

/// With `repeat > 1`: per policy, the mean and range over the repeats.
fn spread(r: &Results) -> String {
    let mut names: Vec<&str> = Vec::new();
    for p in &r.policies {
        if !names.contains(&p.name.as_str()) {
            names.push(&p.name);
        }
    }
    let stat = |v: &[f64]| -> String {
        if v.is_empty() {
            return "-".into();
        }
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |a, x| (a.0.min(*x), a.1.max(*x)));
        if mean.abs() >= 100.0 {
            format!("{mean:.0} [{lo:.0}, {hi:.0}]")
        } else {
            format!("{mean:.3} [{lo:.3}, {hi:.3}]")
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nover repeats: mean [min, max]\n{:<20} {:>4} {:>24} {:>24} {:>24} {:>24}",
        "policy", "runs", "IOPS", "Jain", "max share err", "v.p99"
    );
    for n in names {
        let runs: Vec<&PolicyResult> = r.policies.iter().filter(|p| p.name == n).collect();
        let col = |f: &dyn Fn(&PolicyResult) -> Option<f64>| {
            stat(&runs.iter().filter_map(|p| f(p)).collect::<Vec<f64>>())
        };
        let _ = writeln!(
            s,
            "{:<20} {:>4} {:>24} {:>24} {:>24} {:>24}",
            n,
            runs.len(),
            col(&|p| Some(p.metrics.aggregate_iops)),
            col(&|p| p.metrics.jain),
            col(&|p| Some(p.metrics.max_share_error)),
            col(&|p| p.metrics.victim_p99_ratio),
        );
    }
    s
}

/// Telemetry lines: `(policy, repeat, sample)`.
pub fn read_telemetry(path: &Path) -> Vec<(String, u32, serde_json::Value)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((
                v["policy"].as_str()?.to_string(),
                v["repeat"].as_u64()? as u32,
                v["sample"].clone(),
            ))
        })
        .collect()
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line chart in SVG. `log_x`: logarithmic x axis.
pub fn line_chart(
    title: &str,
    xl: &str,
    yl: &str,
    series: &[(String, Vec<(f64, f64)>)],
    log_x: bool,
) -> String {
    let (w, h, l, r, t, b) = (560.0, 260.0, 60.0, 130.0, 28.0, 40.0);
    let fx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, y)| (fx(*x), *y)))
        .collect();
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg class=\"chart\" data-title=\"{}\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <text x=\"{}\" y=\"18\" font-size=\"13\" font-weight=\"bold\">{}</text>",
        esc(title),
        l,
        esc(title)
    );
    if pts.is_empty() {
        let _ = write!(
            s,
            "<text x=\"{l}\" y=\"{}\" font-size=\"12\" fill=\"#888\">no data</text></svg>",
            h / 2.0
        );
        return s;
    }
    let (mut x0, mut x1) = pts
        .iter()
        .fold((f64::MAX, f64::MIN), |a, p| (a.0.min(p.0), a.1.max(p.0)));
    let y1 = pts.iter().fold(0.0f64, |a, p| a.max(p.1)) * 1.05 + 1e-9;
    if x1 <= x0 {
        x1 = x0 + 1.0;
        x0 -= 0.0;
    }
    let px = |x: f64| l + (fx(x) - x0) / (x1 - x0) * (w - l - r);
    let py = |y: f64| h - b - y / y1 * (h - t - b);
    let _ = write!(
        s,
        "<line x1=\"{l}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"#333\"/><line x1=\"{l}\" y1=\"{t}\" x2=\"{l}\" y2=\"{}\" stroke=\"#333\"/>",
        h - b,
        w - r,
        h - b,
        h - b
    );
    let unlog = |v: f64| if log_x { 10f64.powf(v) } else { v };
    for k in 0..=4 {
        let fxv = x0 + (x1 - x0) * k as f64 / 4.0;
        let xv = unlog(fxv);
        let xpos = l + (fxv - x0) / (x1 - x0) * (w - l - r);
        let _ = write!(
            s,
            "<text x=\"{xpos:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"middle\">{}</text>",
            h - b + 14.0,
            if xv >= 100.0 {
                format!("{xv:.0}")
            } else {
                format!("{xv:.1}")
            }
        );
        let yv = y1 * k as f64 / 4.0;
        let _ = write!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\">{:.0}</text><line x1=\"{l}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            l - 4.0,
            py(yv) + 3.0,
            yv,
            py(yv),
            w - r,
            py(yv)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{}\" y=\"{}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\
         <text x=\"12\" y=\"{}\" font-size=\"11\" transform=\"rotate(-90 12 {})\" text-anchor=\"middle\">{}</text>",
        l + (w - l - r) / 2.0,
        h - 6.0,
        esc(xl),
        t + (h - t - b) / 2.0,
        t + (h - t - b) / 2.0,
        esc(yl)
    );
    for (i, (name, p)) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let coords: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            "<polyline class=\"series\" data-series=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"1.6\" points=\"{}\"/>\
             <rect x=\"{}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{}\" y=\"{}\" font-size=\"11\">{}</text>",
            esc(name),
            coords.join(" "),
            w - r + 8.0,
            t + 14.0 * i as f64,
            w - r + 22.0,
            t + 9.0 + 14.0 * i as f64,
            esc(name)
        );
    }
    s.push_str("</svg>");
    s
}

fn samples<'a>(
    tel: &'a [(String, u32, serde_json::Value)],
    p: &PolicyResult,
) -> Vec<&'a serde_json::Value> {
    tel.iter()
        .filter(|(n, r, _)| *n == p.name && *r == p.repeat)
        .map(|(_, _, s)| s)
        .collect()
}

/// Series `name → (t, value)` from telemetry: `array` is `disks`, `luns` or `paths`.
fn series(
    samples: &[&serde_json::Value],
    array: &str,
    name: impl Fn(&serde_json::Value) -> Option<String>,
    value: impl Fn(&serde_json::Value) -> f64,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut out: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for s in samples {
        let t = s["t_s"].as_f64().unwrap_or(0.0);
        for e in s[array].as_array().into_iter().flatten() {
            let Some(n) = name(e) else { continue };
            let v = value(e);
            match out.iter_mut().find(|(k, _)| *k == n) {
                Some((_, pts)) => pts.push((t, v)),
                None => out.push((n, vec![(t, v)])),
            }
        }
    }
    out
}

/// The whole report as one self-contained HTML page.
pub fn html(r: &Results, tel: &[(String, u32, serde_json::Value)]) -> String {
    let repeats = r.policies.iter().any(|p| p.repeat > 0);
    let mut h = String::new();
    let _ = write!(
        h,
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>weir run: {}</title><style>\
         body{{font-family:sans-serif;margin:20px;color:#222}} table{{border-collapse:collapse;margin:8px 0}}\
         td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f4f4f4}}\
         td:first-child,th:first-child{{text-align:left}} section{{margin:24px 0;border-top:2px solid #444}}\
         .charts{{display:flex;flex-wrap:wrap;gap:12px}} pre{{background:#f8f8f8;padding:8px}}\
         </style></head><body><h1>weir run: {}</h1><p>{}</p><p>host: {} — {} ({} CPUs), kernel {}; {:.0} s</p>",
        esc(&r.scenario),
        esc(&r.scenario),
        esc(r.purpose.as_deref().unwrap_or("")),
        esc(&r.host.kvm),
        esc(&r.host.cpu),
        r.host.cpus,
        esc(&r.host.kernel),
        r.wall_s
    );
    let _ = write!(h, "<h2>Summary</h2><pre>{}</pre>", esc(&terminal(r)));
    for p in &r.policies {
        let smp = samples(tel, p);
        let _ = write!(
            h,
            "<section class=\"policy\" data-policy=\"{}\"><h2>{}</h2><div class=\"charts\">",
            esc(&label(p, repeats)),
            esc(&label(p, repeats))
        );
        let iops = series(
            &smp,
            "disks",
            |d| d["tenant"].as_str().map(String::from),
            |d| d["read_iops"].as_f64().unwrap_or(0.0) + d["write_iops"].as_f64().unwrap_or(0.0),
        );
        h.push_str(&line_chart(
            "Tenant throughput",
            "seconds",
            "IOPS",
            &iops,
            false,
        ));
        let mut lun = series(
            &smp,
            "luns",
            |l| l["lun"].as_str().map(|n| format!("{n} window D")),
            |l| l["window"].as_f64().unwrap_or(0.0),
        );
        lun.extend(series(
            &smp,
            "luns",
            |l| l["lun"].as_str().map(|n| format!("{n} QFULL/BUSY/s")),
            |l| l["congestion"].as_f64().unwrap_or(0.0),
        ));
        h.push_str(&line_chart(
            "LUN window and congestion signals",
            "seconds",
            "D / signals per s",
            &lun,
            false,
        ));
        let cdf: Vec<(String, Vec<(f64, f64)>)> = p
            .tenants
            .iter()
            .filter(|t| t.ok && !t.cdf.is_empty())
            .map(|t| {
                (
                    t.name.clone(),
                    t.cdf.iter().map(|(pct, us)| (*us, *pct)).collect(),
                )
            })
            .collect();
        h.push_str(&line_chart(
            "Latency CDF",
            "completion latency, us (log)",
            "percentile",
            &cdf,
            true,
        ));
        let paths = series(
            &smp,
            "paths",
            |x| Some(format!("{}/{}", x["lun"].as_str()?, x["path"].as_str()?)),
            |x| x["iops"].as_f64().unwrap_or(0.0),
        );
        h.push_str(&line_chart(
            "Path usage",
            "seconds",
            "IOPS per path",
            &paths,
            false,
        ));
        h.push_str("</div>");
        let _ = write!(
            h,
            "<table><tr><th>tenant</th><th>weight</th><th>IOPS</th><th>MB/s</th><th>p50 us</th><th>p99 us</th><th>p99.9 us</th><th>errors</th></tr>"
        );
        for t in &p.tenants {
            let _ = write!(
                h,
                "<tr><td>{}{}</td><td>{}</td><td>{:.0}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&t.name),
                if t.ok { "" } else { " (failed)" },
                t.weight,
                t.iops,
                t.mbps,
                fmt_us(t.lat_us.p50),
                fmt_us(t.lat_us.p99),
                fmt_us(t.lat_us.p999),
                t.errors
            );
        }
        h.push_str("</table>");
        if let Some(line) = crate::trust::summary(&p.trust) {
            let seconds: Vec<String> = p
                .trust
                .distorted
                .iter()
                .map(|d| format!("t = {} s: {}", d.t_s, d.reasons.join(", ")))
                .collect();
            let _ = write!(
                h,
                "<p class=\"distorted\" style=\"color:#a00\"><b>Distorted run — do not trust                  these figures.</b> {}</p><pre>{}</pre>",
                esc(&line),
                esc(&seconds.join("\n"))
            );
        }
        for f in &p.failures {
            let _ = write!(
                h,
                "<p><b>{}</b> failed: <code>{}</code></p>",
                esc(&f.guest),
                esc(&f.error)
            );
        }
        h.push_str("</section>");
    }
    h.push_str("</body></html>");
    h
}

/// `weir report DIR`: the report from a results directory, again.
pub fn rerender(dir: &Path) -> Result<(String, std::path::PathBuf), String> {
    let text = std::fs::read_to_string(dir.join("results.json"))
        .map_err(|e| format!("{}: {e}", dir.join("results.json").display()))?;
    let r: Results = serde_json::from_str(&text).map_err(|e| format!("results.json: {e}"))?;
    if r.schema != crate::results::SCHEMA {
        return Err(format!(
            "results.json has schema {}, this weir reads {}",
            r.schema,
            crate::results::SCHEMA
        ));
    }
    let tel = read_telemetry(&dir.join("telemetry.jsonl"));
    let page = dir.join("report.html");
    std::fs::write(&page, html(&r, &tel)).map_err(|e| e.to_string())?;
    Ok((terminal(&r), page))
}
