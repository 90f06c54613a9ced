//! The broker's `/metrics` scraped by a real Prometheus (Debian's package), checked with
//! `promtool`, and its latency histogram set against fio's own percentiles in a real guest.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use weir_broker::control::query;
use weir_broker::counters::LATENCY_BUCKETS_US;
use weir_lab::broker::BrokerProcess;
use weir_lab::fiojob::with_target;
use weir_lab::qemu::{GuestDisk, LinuxGuestSpec};
use weir_lab::testenv;

fn weir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weir"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// One HTTP/1.0 GET on loopback: status code and body.
fn get(port: u16, target: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {target} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_string()))
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus server scraping one target every second; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, target_port: u16) -> Prometheus {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: weir\n    static_configs:\n      \
                 - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let p = Prometheus { child, port };
        let start = Instant::now();
        while !get(port, "/-/ready").is_ok_and(|(c, _)| c == 200) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready in 30 s:\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query's vector: (labels, value) per series.
    fn query(&self, promql: &str) -> Vec<(serde_json::Value, f64)> {
        let (code, body) = get(
            self.port,
            &format!("/api/v1/query?query={}", url_encode(promql)),
        )
        .expect("prometheus answers");
        assert_eq!(code, 200, "{promql}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let value = r["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// Waits until the target has been scraped successfully at least twice after now.
    fn wait_for_fresh_scrapes(&self) {
        let since = Instant::now();
        std::thread::sleep(Duration::from_millis(2200));
        let up = self.query("up{job=\"weir\"}");
        assert_eq!(up.len(), 1, "{up:?}");
        assert_eq!(up[0].1, 1.0, "the scrape failed; {:?}", since.elapsed());
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing_tools() -> Option<String> {
    for tool in ["prometheus", "promtool"] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!(
                "{tool} not found (Debian's prometheus package; scripts/install-deps.sh)"
            ));
        }
    }
    None
}

/// The cumulative `(le, count)` pairs of one histogram series in a text exposition.
fn buckets(text: &str, series: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|l| l.starts_with("weir_disk_latency_seconds_bucket{") && l.contains(series))
        .map(|l| {
            let le = l.split("le=\"").nth(1).unwrap().split('"').next().unwrap();
            let count = l.rsplit(' ').next().unwrap().parse().unwrap();
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, count)
        })
        .collect()
}

#[test]
fn a_real_prometheus_scrapes_the_broker_and_the_histogram_agrees_with_fio() {
    let test = "prometheus_scrape";
    let Some((image, accel)) = common::linux_guest_setup(test) else {
        return;
    };
    if !testenv::can_run(test, missing_tools()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let control = dir.path().join("broker.ctl");
    let metrics_port = free_port();
    let socket = dir.path().join("vm.sock");
    // A steady device: a fixed 3 ms link plus a short exponential service, so the latency sits
    // well inside one histogram bucket (2.5–5 ms) for fio and the broker alike.
    let config = format!(
        "control_socket = {control:?}\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\n\
         [[port]]\nname = \"p0\"\nqueue_limit = 64\nlatency_us = 3000\n\
         [[lun]]\nname = \"lun0\"\npath = {lun:?}\nsize = \"64MiB\"\nbackend = \"emulated\"\n\
         port = \"p0\"\nmodel = {{ servers = 16, read_base_us = 200, write_base_us = 200 }}\n\
         [[disk]]\nsocket = {socket:?}\nlun = \"lun0\"\ntenant = \"vm\"\n",
        control = control.display().to_string(),
        lun = dir.path().join("lun0.img").display().to_string(),
        socket = socket.display().to_string(),
    );
    let broker = BrokerProcess::start(&weir(), &config, Some(control.clone()), dir.path())
        .expect("broker starts");
    let prom = Prometheus::start(dir.path(), metrics_port);

    let job = "[steady]\nioengine=io_uring\ndirect=1\nbs=4k\nrw=randread\niodepth=1\n\
               time_based=1\nruntime=10\n";
    let mut spec = LinuxGuestSpec::new(
        "vm",
        &image,
        &with_target(job, "/dev/vda"),
        accel.clone(),
        dir.path(),
    );
    spec.memory_mib = 384;
    spec.fio_timeout = Duration::from_secs(120);
    spec.disks.push(GuestDisk::VhostUser {
        socket: socket.clone(),
        queues: 1,
    });
    let guest = spec.spawn().expect("the guest starts");

    // While fio runs: Prometheus' figure is never ahead of the broker's own counter, and at
    // most a scrape interval (and the query's own time) behind it.
    let reads = || {
        query(&control, "stats").unwrap()[0]["counters"]["reads"]
            .as_u64()
            .unwrap() as f64
    };
    let start = Instant::now();
    while reads() < 200.0 {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "fio never reached 200 reads\n{}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut live_checks = 0;
    for _ in 0..3 {
        // Two and a half scrape intervals: room for one slow or missed scrape on a busy host.
        let before = reads();
        std::thread::sleep(Duration::from_millis(2500));
        let mid = reads();
        let v = prom.query("weir_disk_ops_total{op=\"read\",tenant=\"vm\",lun=\"lun0\"}");
        // Long enough for several reads (a TCG guest at QD1 does one every few ms): a query
        // answered faster than one read must not look like fio's end.
        std::thread::sleep(Duration::from_millis(300));
        let after = reads();
        if after == mid {
            break; // fio has finished: the exact check below covers it
        }
        assert_eq!(v.len(), 1, "{v:?}");
        let scraped = v[0].1;
        eprintln!("live: broker {before} .. {mid} .. {after}, prometheus {scraped}");
        assert!(
            scraped <= after,
            "prometheus {scraped} ahead of the broker {after}"
        );
        assert!(
            scraped >= before,
            "prometheus {scraped} more than 2.5 scrape intervals behind the broker ({before})"
        );
        live_checks += 1;
    }
    assert!(live_checks > 0, "fio ended before any live comparison");

    let run = guest
        .wait()
        .unwrap_or_else(|e| panic!("guest: {e}\nbroker:\n{}", broker.log()));
    let fio = run
        .report
        .job("steady")
        .expect("fio's steady job")
        .read
        .clone();
    assert!(fio.total_ios > 500, "{} reads", fio.total_ios);

    // Quiet now: Prometheus holds exactly the broker's counters.
    prom.wait_for_fresh_scrapes();
    let stats = query(&control, "stats").unwrap();
    let c = &stats[0]["counters"];
    let scraped = |q: &str| {
        let v = prom.query(q);
        assert_eq!(v.len(), 1, "{q}: {v:?}");
        v[0].1
    };
    assert_eq!(
        scraped("weir_disk_ops_total{op=\"read\"}"),
        c["reads"].as_f64().unwrap()
    );
    assert_eq!(
        scraped("weir_disk_bytes_total{op=\"read\"}"),
        c["read_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        scraped("weir_disk_latency_seconds_count{stage=\"total\"}"),
        c["device_completions"].as_f64().unwrap()
    );
    assert_eq!(scraped("weir_path_up{lun=\"lun0\"}"), 1.0);
    assert!(scraped("weir_lun_window{lun=\"lun0\"}") >= 1.0);
    assert_eq!(
        scraped("weir_disk_cost_units_total"),
        c["reads"].as_f64().unwrap(),
        "a 4 KiB read costs 1"
    );

    // promtool lints the exposition: names, units, HELP and TYPE all as Prometheus wants them.
    let (code, text) = get(metrics_port, "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // The median's bucket in the broker's histogram of guest-visible latency holds fio's
    // median completion latency.
    let total = buckets(&text, "stage=\"total\"");
    assert_eq!(total.len(), LATENCY_BUCKETS_US.len() + 1, "{text}");
    let count = total.last().unwrap().1;
    let i = total.iter().position(|(_, c)| *c >= count / 2.0).unwrap();
    let (lo, hi) = (if i == 0 { 0.0 } else { total[i - 1].0 }, total[i].0);
    let fio_p50 = fio.clat_ns.percentile_ns(50.0).expect("fio's p50") as f64 / 1e9;
    eprintln!(
        "median bucket ({lo}, {hi}] s; fio clat p50 {fio_p50} s; broker GAVG mean {} s",
        c["total_latency_ns"].as_f64().unwrap() / count / 1e9
    );
    assert!(
        lo < fio_p50 && fio_p50 <= hi,
        "fio's p50 {fio_p50} s outside the broker's median bucket ({lo}, {hi}]"
    );
    // Prometheus' own estimate from the same buckets lands in that bucket too.
    let q = scraped("histogram_quantile(0.5, weir_disk_latency_seconds_bucket{stage=\"total\"})");
    assert!(
        lo <= q && q <= hi,
        "histogram_quantile {q} outside ({lo}, {hi}]"
    );

    // The shipped Grafana dashboard's every query parses and, for the tenant panels, finds
    // this broker's series.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "30s")
                .replace("$lun", ".*")
                .replace("$tenant", ".*");
            let result = prom.query(&expr);
            if panel["title"] == "IOPS per tenant" {
                assert_eq!(result.len(), 1, "{expr}: {result:?}");
            }
            queries += 1;
        }
    }
    assert!(queries >= 15, "{queries} dashboard queries");

    drop(prom);
    drop(broker);
}
