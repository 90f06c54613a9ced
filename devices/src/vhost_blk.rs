//! The vhost-user-blk frontend: a virtio block device whose queues the broker serves.
//!
//! At connect it asks the backend for its features, protocol features, queue count and
//! configuration space. When the driver sets DRIVER_OK it forwards, in order: the accepted
//! features, the memory table (the guest RAM memfd), and per queue its size, addresses
//! (translated to this process's mapping, as vhost-user wants frontend virtual addresses),
//! base index, call eventfd (an irqfd on the device's GSI) and kick eventfd (an ioeventfd on
//! QueueNotify with the queue's index), then enables the rings. From then on the data path is
//! guest ↔ broker only.
//!
//! When the backend goes away (a broker killed and restarted, or replaced with `--replace`) a
//! monitor thread connects again every 10 ms and replays all of it, with the inflight region
//! (`VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`) the first backend gave us, so the new one resubmits
//! what the old one had in flight. The vCPUs keep running meanwhile: their kicks wait in the
//! eventfds, which KVM keeps, and the same eventfds go to the new backend.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserInflight, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::VirtioDevice;
use crate::virtio_mmio::QueueConfig;

const VIRTIO_ID_BLOCK: u32 = 2;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `struct virtio_blk_config` as far as the fields we may forward go.
const CONFIG_SIZE: u32 = 60;

#[derive(Debug, thiserror::Error)]
pub enum VhostBlkError {
    #[error("cannot connect to {path}: {source} (is `weir broker` serving it?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: vhost::Error,
    },
    #[error("{path}: {what}: {source}")]
    Protocol {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error("{path}: the backend offers {offered} queue(s), {wanted} asked for")]
    Queues {
        path: PathBuf,
        offered: u64,
        wanted: u16,
    },
    #[error("{path}: the backend is not connected")]
    Gone { path: PathBuf },
    #[error("{path}: the backend came back without features the driver accepted ({missing:#x})")]
    Features { path: PathBuf, missing: u64 },
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// How often a lost backend is tried again.
const RECONNECT_EVERY: Duration = Duration::from_millis(10);
/// How often the wait for a lost backend is logged.
const RECONNECT_LOG_EVERY: Duration = Duration::from_secs(5);

/// What the driver activated: replayed to every backend connection after the first.
#[derive(Debug, Clone)]
struct Active {
    features: u64,
    queues: Vec<QueueConfig>,
}

/// The connection to the backend and everything needed to make it again.
struct Link {
    path: PathBuf,
    /// `None` while the backend is gone.
    frontend: Option<Frontend>,
    queues: u16,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    memory: GuestMemoryMmap,
    memfd: i32,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    active: Option<Active>,
    /// The inflight region the backend gave us (GET_INFLIGHT_FD): kept across backend
    /// restarts, so the next one can resubmit what the last one had in flight; dropped on a
    /// device reset.
    inflight: Option<(VhostUserInflight, File)>,
}

impl Link {
    fn proto(&self, what: &'static str) -> impl Fn(vhost::Error) -> VhostBlkError + use<> {
        let path = self.path.clone();
        move |source| VhostBlkError::Protocol {
            path: path.clone(),
            what,
            source,
        }
    }

    fn frontend(&mut self) -> Result<&mut Frontend, VhostBlkError> {
        let path = self.path.clone();
        self.frontend.as_mut().ok_or(VhostBlkError::Gone { path })
    }

    /// SET_OWNER and the feature negotiation, on a fresh connection. A backend that comes back
    /// offering less than the driver accepted is refused (the guest would lose features).
    fn handshake(&mut self, first: bool) -> Result<(), VhostBlkError> {
        let (e_owner, e_feat, e_pf, e_spf, e_qn) = (
            self.proto("SET_OWNER"),
            self.proto("GET_FEATURES"),
            self.proto("GET_PROTOCOL_FEATURES"),
            self.proto("SET_PROTOCOL_FEATURES"),
            self.proto("GET_QUEUE_NUM"),
        );
        let queues = self.queues;
        let path = self.path.clone();
        let frontend = self.frontend()?;
        frontend.set_owner().map_err(e_owner)?;
        let features = frontend.get_features().map_err(e_feat)?;
        let mut protocol = VhostUserProtocolFeatures::empty();
        if features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = frontend.get_protocol_features().map_err(e_pf)?;
            protocol = offered
                & (VhostUserProtocolFeatures::CONFIG
                    | VhostUserProtocolFeatures::MQ
                    | VhostUserProtocolFeatures::INFLIGHT_SHMFD);
            frontend.set_protocol_features(protocol).map_err(e_spf)?;
        }
        if protocol.contains(VhostUserProtocolFeatures::MQ) {
            let offered = frontend.get_queue_num().map_err(e_qn)?;
            if offered < u64::from(queues) {
                return Err(VhostBlkError::Queues {
                    path,
                    offered,
                    wanted: queues,
                });
            }
        } else if queues > 1 {
            return Err(VhostBlkError::Queues {
                path,
                offered: 1,
                wanted: queues,
            });
        }
        if !first {
            let accepted = self.active.as_ref().map_or(0, |a| a.features);
            if accepted & !features != 0 {
                return Err(VhostBlkError::Features {
                    path,
                    missing: accepted & !features,
                });
            }
        }
        self.backend_features = features;
        self.protocol = protocol;
        Ok(())
    }

    fn host_addr(&self, gpa: u64) -> Result<u64, String> {
        self.memory
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|e| format!("queue address {gpa:#x} is not in guest RAM: {e}"))
    }

    /// Gives the backend the activated device: features, memory, the inflight region and the
    /// rings. After a reconnect each ring's base is the used index in guest memory (what was
    /// answered); a backend with the inflight region recomputes it from there.
    fn start(&mut self, reconnect: bool) -> Result<(), String> {
        let Some(active) = self.active.clone() else {
            return Ok(());
        };
        let err = |what: &str| {
            let what = what.to_string();
            move |e: vhost::Error| format!("{what}: {e}")
        };
        let mut f = active.features;
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            f |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        let region = self
            .memory
            .iter()
            .next()
            .ok_or_else(|| "no guest RAM".to_string())?;
        use vm_memory::GuestMemoryRegion;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: self.memfd,
        };
        let mut rings = Vec::new();
        for (i, q) in active.queues.iter().enumerate() {
            if !q.ready {
                continue;
            }
            let cfg = VringConfigData {
                queue_max_size: q.max_size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host_addr(q.desc)?,
                used_ring_addr: self.host_addr(q.device)?,
                avail_ring_addr: self.host_addr(q.driver)?,
                log_addr: None,
            };
            let base = if reconnect {
                self.memory
                    .read_obj::<u16>(GuestAddress(q.device.wrapping_add(2)))
                    .map_err(|e| format!("queue {i}: cannot read the used index: {e}"))?
            } else {
                0
            };
            rings.push((i, q.size, cfg, base));
        }
        let inflight_size = active.queues.iter().map(|q| q.size).max().unwrap_or(0);
        let with_protocol = self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let use_inflight = self
            .protocol
            .contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD)
            && inflight_size > 0;
        let mut inflight = self.inflight.take();
        let result = (|| -> Result<(), String> {
            let frontend = self.frontend.as_mut().ok_or("the backend is gone")?;
            frontend.set_features(f).map_err(err("SET_FEATURES"))?;
            frontend
                .set_mem_table(&[info])
                .map_err(err("SET_MEM_TABLE"))?;
            if use_inflight {
                if inflight.is_none() {
                    let ask = VhostUserInflight::new(0, 0, self.queues, inflight_size);
                    inflight = Some(
                        frontend
                            .get_inflight_fd(&ask)
                            .map_err(err("GET_INFLIGHT_FD"))?,
                    );
                }
                if let Some((region, file)) = &inflight {
                    frontend
                        .set_inflight_fd(region, file.as_raw_fd())
                        .map_err(err("SET_INFLIGHT_FD"))?;
                }
            }
            for (i, size, cfg, base) in &rings {
                let i = *i;
                frontend
                    .set_vring_num(i, *size)
                    .map_err(err("SET_VRING_NUM"))?;
                frontend
                    .set_vring_addr(i, cfg)
                    .map_err(err("SET_VRING_ADDR"))?;
                frontend
                    .set_vring_base(i, *base)
                    .map_err(err("SET_VRING_BASE"))?;
                frontend
                    .set_vring_call(i, &self.calls[i])
                    .map_err(err("SET_VRING_CALL"))?;
                frontend
                    .set_vring_kick(i, &self.kicks[i])
                    .map_err(err("SET_VRING_KICK"))?;
                // With protocol features negotiated, rings start disabled.
                if with_protocol {
                    frontend
                        .set_vring_enable(i, true)
                        .map_err(err("SET_VRING_ENABLE"))?;
                }
            }
            Ok(())
        })();
        self.inflight = inflight;
        result
    }
}

/// Watches the backend connection and makes it again when the backend goes away (a broker
/// killed and restarted, or replaced): the vCPUs never wait for it; their kicks wait in the
/// eventfds and the new backend takes them.
struct Monitor {
    stop: Arc<EventFd>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    fn start(link: Arc<Mutex<Link>>, reconnects: Arc<AtomicU64>) -> Result<Self, VhostBlkError> {
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK).map_err(VhostBlkError::EventFd)?);
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("vhost-link".into())
                .spawn(move || watch(&link, &stop, &reconnects))
                .map_err(VhostBlkError::EventFd)?
        };
        Ok(Monitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `fd` for the peer hanging up and `stop` for readability, up to `timeout_ms` (-1:
/// forever). Returns (hung up, stop requested).
fn poll_hangup(fd: Option<i32>, stop: i32, timeout_ms: i32) -> (bool, bool) {
    let mut fds = [
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: fd.unwrap_or(-1),
            events: libc::POLLRDHUP,
            revents: 0,
        },
    ];
    // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call; a
    // negative fd is ignored by poll.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout_ms) };
    if rc <= 0 {
        return (false, false);
    }
    let hung = fds[1].revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0;
    (hung, fds[0].revents != 0)
}

fn watch(link: &Mutex<Link>, stop: &EventFd, reconnects: &AtomicU64) {
    let lock = || link.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        // A private duplicate: the connection may be replaced while we poll it.
        let fd = lock().frontend.as_ref().map(|f| {
            // SAFETY: dup of a valid, open descriptor; the result is owned by `owned` below.
            unsafe { libc::dup(f.as_raw_fd()) }
        });
        // SAFETY: `fd`, when non-negative, is the fresh duplicate made above, owned here.
        let owned = fd
            .filter(|fd| *fd >= 0)
            .map(|fd| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let (hung, stopped) = poll_hangup(
            owned.as_ref().map(|f| f.as_raw_fd()),
            stop.as_raw_fd(),
            if owned.is_some() { -1 } else { 0 },
        );
        if stopped {
            return;
        }
        if owned.is_some() && !hung {
            continue;
        }
        let path = {
            let mut l = lock();
            l.frontend = None;
            l.path.clone()
        };
        log::warn!(
            "{}: the backend went away; reconnecting (the guest's I/O waits)",
            path.display()
        );
        let lost = Instant::now();
        let mut logged = Instant::now();
        loop {
            if poll_hangup(None, stop.as_raw_fd(), RECONNECT_EVERY.as_millis() as i32).1 {
                return;
            }
            let Ok(stream) = UnixStream::connect(&path) else {
                if logged.elapsed() >= RECONNECT_LOG_EVERY {
                    log::warn!(
                        "{}: still waiting for the backend ({:.0} s)",
                        path.display(),
                        lost.elapsed().as_secs_f64()
                    );
                    logged = Instant::now();
                }
                continue;
            };
            let mut l = lock();
            let queues = u64::from(l.queues);
            l.frontend = Some(Frontend::from_stream(stream, queues));
            let replay = l
                .handshake(false)
                .map_err(|e| e.to_string())
                .and_then(|()| l.start(true));
            match replay {
                Ok(()) => {
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    log::warn!(
                        "{}: backend back after {:.0} ms",
                        path.display(),
                        lost.elapsed().as_secs_f64() * 1000.0
                    );
                    break;
                }
                Err(e) => {
                    log::warn!("{}: reconnect failed: {e}; trying again", path.display());
                    l.frontend = None;
                }
            }
        }
    }
}

/// One vhost-user-blk disk.
pub struct VhostUserBlk {
    path: PathBuf,
    link: Arc<Mutex<Link>>,
    queue_sizes: Vec<u16>,
    config: Vec<u8>,
    /// Per queue: (kick, call).
    pub kicks: Vec<EventFd>,
    pub calls: Vec<EventFd>,
    /// Connections made again after the backend went away.
    pub reconnects: Arc<AtomicU64>,
    _monitor: Monitor,
}

impl VhostUserBlk {
    /// Connects and learns what the backend offers. `memory` is the guest RAM; `memfd` its fd.
    pub fn connect(
        path: &Path,
        queues: u16,
        queue_size: u16,
        memory: GuestMemoryMmap,
        memfd: i32,
    ) -> Result<Self, VhostBlkError> {
        let frontend = Frontend::connect(path, u64::from(queues)).map_err(|source| {
            VhostBlkError::Connect {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for _ in 0..queues {
            kicks.push(EventFd::new(0).map_err(VhostBlkError::EventFd)?);
            calls.push(EventFd::new(0).map_err(VhostBlkError::EventFd)?);
        }
        let clone = |v: &Vec<EventFd>| -> Result<Vec<EventFd>, VhostBlkError> {
            v.iter()
                .map(|e| e.try_clone().map_err(VhostBlkError::EventFd))
                .collect()
        };
        let mut link = Link {
            path: path.to_path_buf(),
            frontend: Some(frontend),
            queues,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            memory,
            memfd,
            kicks: clone(&kicks)?,
            calls: clone(&calls)?,
            active: None,
            inflight: None,
        };
        link.handshake(true)?;
        let link = Arc::new(Mutex::new(link));
        let reconnects = Arc::new(AtomicU64::new(0));
        let monitor = Monitor::start(link.clone(), reconnects.clone())?;
        let mut blk = VhostUserBlk {
            path: path.to_path_buf(),
            link,
            queue_sizes: vec![queue_size; usize::from(queues)],
            config: vec![0; CONFIG_SIZE as usize],
            kicks,
            calls,
            reconnects,
            _monitor: monitor,
        };
        blk.refresh_config();
        Ok(blk)
    }

    fn link(&self) -> std::sync::MutexGuard<'_, Link> {
        self.link.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Capacity in 512-byte sectors, from the configuration space.
    pub fn capacity(&self) -> u64 {
        u64::from_le_bytes(self.config[..8].try_into().unwrap_or([0; 8]))
    }

    fn refresh_config(&mut self) {
        let mut link = self.link();
        if !link.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return;
        }
        let Some(frontend) = link.frontend.as_mut() else {
            // The backend is away: the last copy stands.
            return;
        };
        let buf = vec![0u8; CONFIG_SIZE as usize];
        match frontend.get_config(0, CONFIG_SIZE, VhostUserConfigFlags::WRITABLE, &buf) {
            Ok((_, payload)) => {
                let n = payload.len().min(self.config.len());
                drop(link);
                self.config[..n].copy_from_slice(&payload[..n]);
            }
            Err(e) => log::warn!("{}: GET_CONFIG: {e}", self.path.display()),
        }
    }

    fn features_offered(&self) -> u64 {
        self.link().backend_features
    }

    pub fn socket(&self) -> &Path {
        &self.path
    }

    pub fn kick_fd(&self, q: usize) -> Option<i32> {
        self.kicks.get(q).map(|e| e.as_raw_fd())
    }
}

impl VirtioDevice for VhostUserBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }
    fn features(&self) -> u64 {
        self.features_offered() & !VHOST_USER_F_PROTOCOL_FEATURES
    }
    fn read_config(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 {
            // The driver starts reading the config: take a fresh copy (capacity may change).
            self.refresh_config();
        }
        let start = offset as usize;
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.config.get(start + i).copied().unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "{}: config write of {} bytes at {offset:#x} ignored",
            self.path.display(),
            data.len()
        );
    }
    fn activate(&mut self, features: u64, queues: &[QueueConfig]) -> Result<(), String> {
        let mut link = self.link();
        link.active = Some(Active {
            features,
            queues: queues.to_vec(),
        });
        let result = link.start(false);
        if result.is_err() && link.frontend.is_none() {
            // The backend went away meanwhile: the reconnect replays this activation.
            log::warn!(
                "{}: activated while the backend is away; it gets the rings when it returns",
                self.path.display()
            );
            return Ok(());
        }
        result.map_err(|e| format!("{}: {e}", self.path.display()))
    }
    fn reset(&mut self) {
        let mut link = self.link();
        let started: Vec<usize> = link
            .active
            .take()
            .map(|a| {
                a.queues
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| q.ready)
                    .map(|(i, _)| i)
                    .collect()
            })
            .unwrap_or_default();
        // A reset guest starts its rings from zero: nothing in flight to carry over.
        link.inflight = None;
        if let Some(frontend) = link.frontend.as_mut() {
            for i in started {
                let _ = frontend.set_vring_enable(i, false);
                // Stopping a ring (GET_VRING_BASE) makes the backend answer what it has in
                // flight and forget the ring, so the next activation starts it afresh with
                // the next inflight region.
                let _ = frontend.get_vring_base(i);
            }
        }
    }
    fn notify(&mut self, queue: u32) {
        // Only reached when no ioeventfd matched: pass the kick on by hand.
        if let Some(k) = self.kicks.get(queue as usize) {
            let _ = k.write(1);
        }
    }
}
