//! Were the guests run? A guest starved of CPU submits fewer requests and the run's
//! throughput falls for a reason that is not the storage's or the scheduler's — with a deep
//! queue it never goes idle at the broker, so only its own threads can tell. Every second the
//! watcher reads each guest process's threads' `schedstat` (the vCPU threads and the VMM's)
//! and records how long they were runnable but not running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use weir_broker::health::{SchedStat, read_task_schedstats};

/// One guest over one second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GuestCpuSecond {
    /// Seconds since the policy run started (its broker's clock, give or take its start-up).
    pub t_s: f64,
    pub guest: String,
    /// Time its threads were runnable and not running, summed, ms per second.
    pub cpu_wait_ms: f64,
}

#[derive(Default)]
struct Shared {
    guests: HashMap<String, u32>,
    last: HashMap<String, HashMap<u32, SchedStat>>,
    seconds: Vec<GuestCpuSecond>,
}

/// Samples the guests registered with it, every second, until dropped or finished.
pub struct GuestCpuWatch {
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GuestCpuWatch {
    pub fn start(started: Instant) -> Self {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (shared2, stop2) = (shared.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last_at = Instant::now();
            while !stop2.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if last_at.elapsed() < Duration::from_secs(1) {
                    continue;
                }
                let dt = last_at.elapsed().as_secs_f64();
                last_at = Instant::now();
                let t_s = started.elapsed().as_secs_f64();
                let mut sh = shared2.lock().unwrap_or_else(|p| p.into_inner());
                let guests: Vec<(String, u32)> =
                    sh.guests.iter().map(|(g, p)| (g.clone(), *p)).collect();
                for (guest, pid) in guests {
                    let now = read_task_schedstats(&pid.to_string());
                    if now.is_empty() {
                        continue;
                    }
                    if let Some(before) = sh.last.get(&guest) {
                        let ns: u64 = now
                            .iter()
                            .map(|(tid, s)| {
                                let b = before.get(tid).map_or(0, |b| b.run_delay_ns);
                                s.run_delay_ns.saturating_sub(b)
                            })
                            .sum();
                        sh.seconds.push(GuestCpuSecond {
                            t_s,
                            guest: guest.clone(),
                            cpu_wait_ms: ns as f64 / 1e6 / dt,
                        });
                    }
                    sh.last.insert(guest, now);
                }
            }
        });
        GuestCpuWatch {
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Watches guest `name`, process `pid`, from now on.
    pub fn add(&self, name: &str, pid: u32) {
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        sh.guests.insert(name.to_string(), pid);
        sh.last
            .insert(name.to_string(), read_task_schedstats(&pid.to_string()));
    }

    /// Stops watching guest `name` (its process ended).
    pub fn remove(&self, name: &str) {
        let mut sh = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        sh.guests.remove(name);
        sh.last.remove(name);
    }

    /// Stops the watcher and gives what it recorded.
    pub fn finish(mut self) -> Vec<GuestCpuSecond> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        std::mem::take(
            &mut self
                .shared
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .seconds,
        )
    }
}

impl Drop for GuestCpuWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
