//! Thin pools in the broker: which chunks each LUN image holds, the pool's use against its
//! capacity, the forecast, and who waits for space (`docs/thin.md`; the arithmetic is in
//! `weir_sched::thin`).
//!
//! The queue workers ask [`ThinPool::reserve`] before a write; a write that needs chunks the
//! pool cannot give is *held* by its own queue worker — that tenant's allocating writes only:
//! its reads, its overwrites of allocated chunks and every other tenant go on. A write the
//! filesystem refuses (ENOSPC, EDQUOT: a real out-of-space) is held the same way and marks the
//! pool full until the filesystem has more room. The pool thread ([`PoolThread`]) looks at the
//! filesystem every [`POOL_TICK`], samples the forecast each second, logs threshold events, and
//! wakes the workers that hold writes so they retry (in order) or, past `hold_s`, fail them.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_sched::thin::{
    ChunkMap, FORECAST_WINDOWS_S, Forecaster, PoolEvent, ThresholdWatch, WindowForecast,
};

use crate::config::{OnFull, PoolConfig};
use crate::dispatch::{BrokerClock, Inbox};

/// How often the pool thread looks at the filesystem and wakes waiting writers.
pub const POOL_TICK: Duration = Duration::from_millis(250);
/// Pool events kept for the control socket.
const EVENTS_KEPT: usize = 256;

/// One LUN of a pool.
#[derive(Debug)]
struct ThinLun {
    name: String,
    size: u64,
    map: ChunkMap,
    allocated_at_attach: u64,
    forecaster: Forecaster,
}

#[derive(Debug)]
struct PoolState {
    luns: Vec<ThinLun>,
    /// The configured quota (grown by `pool grow`), or none: the filesystem's size.
    quota: Option<u64>,
    fs_total: u64,
    fs_free: u64,
    /// A write met ENOSPC/EDQUOT: no new chunks until the filesystem's free space grows past
    /// what it was then.
    fs_full_at_free: Option<u64>,
    forecaster: Forecaster,
    watch: ThresholdWatch,
    events: Vec<PoolEvent>,
    last_sample_s: f64,
}

impl PoolState {
    fn capacity(&self) -> u64 {
        self.quota.unwrap_or(self.fs_total)
    }

    fn allocated(&self, chunk: u64) -> u64 {
        self.luns
            .iter()
            .map(|l| l.map.allocated_chunks())
            .sum::<u64>()
            * chunk
    }

    /// Against a quota, use is the chunks handed out (as dm-thin counts it). Against the
    /// filesystem's own size it is what the filesystem says is used: it allocates in its own
    /// blocks, so a scattered 4 KiB write takes 4 KiB of it, not a chunk.
    fn used(&self, chunk: u64) -> u64 {
        match self.quota {
            Some(_) => self.allocated(chunk),
            None => self.fs_total.saturating_sub(self.fs_free),
        }
    }
}

/// What a write may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// Go on; these chunks were newly allocated for it (give them back if it never happens).
    Granted(Vec<u64>),
    /// No space: hold it (or fail it, by the pool's `on_full`).
    Full,
}

/// A pool as the control socket, telemetry and `weir top` see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolSnapshot {
    pub name: String,
    pub dir: PathBuf,
    pub chunk_bytes: u64,
    pub capacity_bytes: u64,
    /// Whether the capacity is a quota (config or `pool grow`) or the filesystem's size.
    pub quota: bool,
    /// Against a quota: the chunks handed out; against the filesystem: what it says is used.
    pub used_bytes: u64,
    /// The chunks the pool's LUNs hold.
    pub allocated_bytes: u64,
    pub used_pct: f64,
    /// Σ LUN sizes ÷ capacity.
    pub overcommit: f64,
    pub fs_total_bytes: u64,
    pub fs_free_bytes: u64,
    /// A write met ENOSPC/EDQUOT and the filesystem has not grown since.
    pub fs_full: bool,
    pub on_full: OnFull,
    pub hold_s: f64,
    pub luns: Vec<PoolLunSnapshot>,
    /// Per window (1 min, 10 min, 1 h): rate and time to full with its band.
    pub forecast: Vec<WindowForecast>,
    pub events: Vec<PoolEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PoolLunSnapshot {
    pub lun: String,
    pub size_bytes: u64,
    pub allocated_bytes: u64,
    pub allocated_since_attach_bytes: i64,
    /// Per forecast window: this LUN's share of the pool's growth (none when the pool did not
    /// grow) — which LUNs drive the forecast.
    pub growth_share: Vec<Option<f64>>,
}

/// A pool shared by the queue workers of its LUNs' disks.
#[derive(Debug)]
pub struct ThinPool {
    pub name: String,
    pub dir: PathBuf,
    pub chunk: u64,
    pub on_full: OnFull,
    pub hold_s: f64,
    state: Mutex<PoolState>,
    waiters: Mutex<Vec<Weak<Inbox>>>,
}

/// The filesystem's size and free space under `dir` (statvfs), bytes.
pub fn fs_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: statvfs writes only into the zeroed struct we pass; `c` is a valid C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = st.f_frsize as u64;
    Ok((st.f_blocks as u64 * frsize, st.f_bavail as u64 * frsize))
}

/// Marks in `map` every range of `file` that holds data (SEEK_DATA / SEEK_HOLE).
pub fn scan_allocation(file: &File, map: &mut ChunkMap, size: u64) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on a descriptor we own; no memory involved.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            // ENXIO: no data past `pos`.
            return if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(e)
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        map.mark_data(data as u64, (hole - data) as u64);
        pos = hole;
    }
    Ok(())
}

impl ThinPool {
    /// A pool over `luns` (name, guest size, image path): their allocation read from the files.
    pub fn open(config: &PoolConfig, luns: &[(String, u64, PathBuf)]) -> std::io::Result<Self> {
        let chunk = config.chunk.0;
        let mut thin = Vec::new();
        for (name, size, path) in luns {
            let mut map = ChunkMap::new(*size, chunk);
            let file = File::open(path)?;
            scan_allocation(&file, &mut map, *size)?;
            thin.push(ThinLun {
                name: name.clone(),
                size: *size,
                allocated_at_attach: map.allocated_chunks(),
                map,
                forecaster: Forecaster::default(),
            });
        }
        let (fs_total, fs_free) = fs_space(&config.dir)?;
        Ok(ThinPool {
            name: config.name.clone(),
            dir: config.dir.clone(),
            chunk,
            on_full: config.on_full,
            hold_s: config.hold_s,
            state: Mutex::new(PoolState {
                luns: thin,
                quota: config.capacity.map(|c| c.0),
                fs_total,
                fs_free,
                fs_full_at_free: None,
                forecaster: Forecaster::default(),
                watch: ThresholdWatch::new(&config.thresholds_pct),
                events: Vec::new(),
                last_sample_s: f64::NEG_INFINITY,
            }),
            waiters: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn lun_index(&self, name: &str) -> Option<usize> {
        self.lock().luns.iter().position(|l| l.name == name)
    }

    /// A write of `[offset, offset + len)` on LUN `lun`: the chunks it needs, if the pool has
    /// them.
    pub fn reserve(&self, lun: usize, offset: u64, len: u64) -> Reservation {
        let mut st = self.lock();
        let chunk = self.chunk;
        let Some(needed) = st.luns.get(lun).map(|l| l.map.needed(offset, len)) else {
            return Reservation::Granted(Vec::new());
        };
        if needed == 0 {
            return Reservation::Granted(Vec::new());
        }
        // Without a quota the filesystem itself says when it is full (ENOSPC).
        let over_quota = st
            .quota
            .is_some_and(|q| st.allocated(chunk) + needed * chunk > q);
        if st.fs_full_at_free.is_some() || over_quota {
            return Reservation::Full;
        }
        Reservation::Granted(st.luns[lun].map.allocate(offset, len))
    }

    /// Gives back chunks a write reserved and never wrote (it failed for good).
    pub fn unreserve(&self, lun: usize, chunks: &[u64]) {
        if chunks.is_empty() {
            return;
        }
        if let Some(l) = self.lock().luns.get_mut(lun) {
            l.map.clear(chunks);
        }
        self.wake();
    }

    /// The filesystem refused a write (ENOSPC/EDQUOT): no new chunks until it has more room.
    pub fn filesystem_full(&self) {
        let free = fs_space(&self.dir).map(|(_, f)| f).unwrap_or(0);
        let mut st = self.lock();
        if st.fs_full_at_free.is_none() {
            log::warn!(
                "pool '{}': the filesystem under {} is full ({} KiB free): allocating writes \
                 are {}",
                self.name,
                self.dir.display(),
                free >> 10,
                match self.on_full {
                    OnFull::Hold => "held",
                    OnFull::Error => "failed",
                }
            );
        }
        st.fs_free = free;
        st.fs_full_at_free = Some(free);
    }

    /// True while a write met ENOSPC/EDQUOT and the filesystem has not grown since.
    pub fn filesystem_is_full(&self) -> bool {
        self.lock().fs_full_at_free.is_some()
    }

    /// A discard or write-zeroes with unmap punched `[offset, offset + len)`: frees the chunks
    /// it covered whole and wakes the writers waiting for space.
    pub fn released(&self, lun: usize, offset: u64, len: u64) {
        let mut st = self.lock();
        let freed = st
            .luns
            .get_mut(lun)
            .map_or(0, |l| l.map.release(offset, len));
        if freed > 0 {
            // Punching holes gave the filesystem room back, whatever it said before.
            st.fs_full_at_free = None;
            drop(st);
            self.wake();
        }
    }

    /// `pool grow`: a new quota (never below what is used).
    pub fn set_capacity(&self, bytes: u64) -> Result<(), String> {
        let mut st = self.lock();
        let used = st.allocated(self.chunk);
        if bytes < used {
            return Err(format!(
                "{bytes} bytes is below what the pool already uses ({used} bytes)"
            ));
        }
        st.quota = Some(bytes);
        drop(st);
        log::warn!("pool '{}': capacity now {} MiB", self.name, bytes >> 20);
        self.wake();
        Ok(())
    }

    /// A queue worker holding writes wants to hear when space may have appeared.
    pub fn wait_for_space(&self, inbox: &Arc<Inbox>) {
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|x| x.strong_count() > 0);
        if !w.iter().any(|x| x.as_ptr() == Arc::as_ptr(inbox)) {
            w.push(Arc::downgrade(inbox));
        }
    }

    /// Tells every waiting worker to retry (or expire) its held writes. Each worker
    /// registers again if it still holds some.
    fn wake(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap_or_else(|p| p.into_inner()));
        for w in waiters.iter().filter_map(Weak::upgrade) {
            w.space_retry();
        }
    }

    /// The pool thread's period: the filesystem's space, the forecast (once a second), events.
    pub fn tick(&self, now_s: f64) {
        let space = fs_space(&self.dir);
        let mut st = self.lock();
        if let Ok((total, free)) = space {
            st.fs_total = total;
            st.fs_free = free;
            if let Some(then) = st.fs_full_at_free {
                // Room for at least one chunk more than when it was full: try again.
                if free >= then + self.chunk {
                    log::warn!(
                        "pool '{}': the filesystem has room again ({} KiB free)",
                        self.name,
                        free >> 10
                    );
                    st.fs_full_at_free = None;
                }
            }
        }
        if now_s - st.last_sample_s >= 1.0 {
            st.last_sample_s = now_s;
            let used = st.used(self.chunk);
            let capacity = st.capacity().max(1);
            st.forecaster.sample(now_s, used);
            for l in &mut st.luns {
                let bytes = l.map.allocated_chunks() * self.chunk;
                l.forecaster.sample(now_s, bytes);
            }
            let ttf = st
                .forecaster
                .forecast(FORECAST_WINDOWS_S[1], capacity, used)
                .time_to_full_s;
            let used_pct = 100.0 * used as f64 / capacity as f64;
            let events = st.watch.observe(now_s, used_pct, ttf);
            for e in &events {
                match e.what.as_str() {
                    "threshold" => log::warn!(
                        "pool '{}': {:.1} % used, past the {} % threshold",
                        self.name,
                        e.used_pct,
                        e.value
                    ),
                    _ => log::warn!(
                        "pool '{}': full within {:.0} s at the 10-minute rate ({:.1} % used)",
                        self.name,
                        e.value,
                        e.used_pct
                    ),
                }
            }
            st.events.extend(events);
            let excess = st.events.len().saturating_sub(EVENTS_KEPT);
            st.events.drain(..excess);
        }
        drop(st);
        self.wake();
    }

    pub fn snapshot(&self) -> PoolSnapshot {
        let st = self.lock();
        let capacity = st.capacity();
        let used = st.used(self.chunk);
        let pool_growth: Vec<Option<f64>> = FORECAST_WINDOWS_S
            .iter()
            .map(|w| st.forecaster.growth(*w))
            .collect();
        PoolSnapshot {
            name: self.name.clone(),
            dir: self.dir.clone(),
            chunk_bytes: self.chunk,
            capacity_bytes: capacity,
            quota: st.quota.is_some(),
            used_bytes: used,
            allocated_bytes: st.allocated(self.chunk),
            used_pct: 100.0 * used as f64 / capacity.max(1) as f64,
            overcommit: st.luns.iter().map(|l| l.size).sum::<u64>() as f64 / capacity.max(1) as f64,
            fs_total_bytes: st.fs_total,
            fs_free_bytes: st.fs_free,
            fs_full: st.fs_full_at_free.is_some(),
            on_full: self.on_full,
            hold_s: self.hold_s,
            luns: st
                .luns
                .iter()
                .map(|l| PoolLunSnapshot {
                    lun: l.name.clone(),
                    size_bytes: l.size,
                    allocated_bytes: l.map.allocated_chunks() * self.chunk,
                    allocated_since_attach_bytes: (l.map.allocated_chunks() as i64
                        - l.allocated_at_attach as i64)
                        * self.chunk as i64,
                    growth_share: FORECAST_WINDOWS_S
                        .iter()
                        .zip(&pool_growth)
                        .map(|(w, pool)| match (l.forecaster.growth(*w), pool) {
                            (Some(g), Some(p)) if *p > 0.0 => Some(g / p),
                            _ => None,
                        })
                        .collect(),
                })
                .collect(),
            forecast: FORECAST_WINDOWS_S
                .iter()
                .map(|w| st.forecaster.forecast(*w, capacity, used))
                .collect(),
            events: st.events.clone(),
        }
    }

    /// The chunk map of one LUN (for the dark-storage report).
    pub fn lun_holes(&self, lun: usize) -> Option<Vec<(u64, u64)>> {
        self.lock().luns.get(lun).map(|l| l.map.holes())
    }
}

/// Ticks every pool.
pub struct PoolThread {
    stop: Arc<crate::stopper::Stopper>,
    thread: Option<JoinHandle<()>>,
}

impl PoolThread {
    pub fn start(pools: Vec<Arc<ThinPool>>, clock: BrokerClock) -> std::io::Result<Self> {
        let stop = Arc::new(crate::stopper::Stopper::default());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("thin-pools".into())
            .spawn(move || {
                loop {
                    let now = clock.now();
                    for p in &pools {
                        p.tick(now);
                    }
                    if stop2.sleep(POOL_TICK) {
                        return;
                    }
                }
            })?;
        Ok(PoolThread {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for PoolThread {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ByteSize;

    fn pool(dir: &Path, capacity: u64) -> (ThinPool, PathBuf) {
        let img = dir.join("a.img");
        let f = File::create(&img).unwrap();
        f.set_len(4 << 20).unwrap();
        // Data in the first 64 KiB only.
        std::os::unix::fs::FileExt::write_at(&f, &[1u8; 4096], 0).unwrap();
        let cfg = PoolConfig {
            name: "p".into(),
            dir: dir.to_path_buf(),
            capacity: Some(ByteSize(capacity)),
            chunk: ByteSize(64 << 10),
            thresholds_pct: vec![70.0, 85.0, 95.0],
            on_full: OnFull::Hold,
            hold_s: 5.0,
        };
        let p = ThinPool::open(&cfg, &[("a".into(), 4 << 20, img.clone())]).unwrap();
        (p, img)
    }

    #[test]
    fn existing_data_is_found_and_the_quota_refuses_what_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = pool(dir.path(), 256 << 10); // 4 chunks
        let s = p.snapshot();
        assert_eq!(
            s.used_bytes,
            64 << 10,
            "the written chunk, found by SEEK_DATA"
        );
        assert_eq!(s.overcommit, 16.0);
        // An overwrite of the allocated chunk needs nothing.
        assert_eq!(p.reserve(0, 0, 4096), Reservation::Granted(vec![]));
        assert_eq!(
            p.reserve(0, 64 << 10, 3 * (64 << 10)),
            Reservation::Granted(vec![1, 2, 3])
        );
        assert_eq!(p.reserve(0, 1 << 20, 4096), Reservation::Full);
        p.unreserve(0, &[3]);
        assert_eq!(p.reserve(0, 1 << 20, 4096), Reservation::Granted(vec![16]));
        // A discard of chunks 1–2 frees them.
        p.released(0, 64 << 10, 2 * (64 << 10));
        assert_eq!(p.snapshot().used_bytes, 2 * (64 << 10));
        assert!(p.set_capacity(64 << 10).is_err(), "below use");
        p.set_capacity(1 << 20).unwrap();
        assert_eq!(p.snapshot().capacity_bytes, 1 << 20);
    }

    #[test]
    fn a_full_filesystem_holds_new_chunks_until_a_discard() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = pool(dir.path(), 4 << 20);
        p.filesystem_full();
        assert_eq!(p.reserve(0, 1 << 20, 4096), Reservation::Full);
        assert_eq!(
            p.reserve(0, 0, 4096),
            Reservation::Granted(vec![]),
            "overwrites go on"
        );
        p.released(0, 0, 64 << 10);
        assert!(matches!(p.reserve(0, 1 << 20, 4096), Reservation::Granted(v) if v == [16]));
    }

    #[test]
    fn a_waiting_worker_is_woken_once_per_registration() {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = pool(dir.path(), 4 << 20);
        let inbox = Arc::new(Inbox::new().unwrap());
        p.wait_for_space(&inbox);
        p.wait_for_space(&inbox);
        p.set_capacity(8 << 20).unwrap();
        let events = inbox.take();
        assert_eq!(events.len(), 1, "{events:?}");
        p.set_capacity(9 << 20).unwrap();
        assert!(inbox.take().is_empty(), "not registered any more");
    }
}
