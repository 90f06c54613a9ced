//! The broker process: one listener thread per guest disk, a control socket, and an orderly
//! shutdown.
//!
//! Each disk's thread waits for a guest on its socket, serves it with a fresh [`BlkDevice`]
//! (no state leaks from one guest to the next), and when the guest goes away finishes every
//! request still in flight, then serves the socket again. Shutdown (SIGTERM/SIGINT, or
//! [`BrokerHandle::shutdown`]) closes every guest connection, answers what was in flight,
//! and returns.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use vhost::vhost_user::{BackendListener, Listener};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};
use weir_sched::array::{EmulatedArray, LunModel, PortModel};
use weir_sched::mclock::TenantPolicy;
use weir_sched::sim::EventAction;

use crate::config::{BrokerConfig, DiskConfig, LunConfig, MAX_SERIAL_BYTES};
use crate::control::ControlServer;
use crate::counters::{DiskCounters, RateLimitedLog};
use crate::device::{BlkDevice, BlkDeviceSpec};
use crate::dispatch::{
    ArrayEvent, ArrayEventKind, ArrayRuntime, BrokerClock, LunDispatcher, PathRoute, PortBudget,
    SchedulerThread,
};
use crate::health::ClockHealth;
use crate::lun::{LunError, LunStore};
use crate::metrics_http::MetricsServer;
use crate::request::ID_BYTES;
use crate::telemetry::PortTelemetry;
use crate::telemetry::TelemetryRecorder;
use crate::thin::{PoolThread, ThinPool};
use crate::vhost_session::VhostSession;
use crate::worker::DiskContext;

#[derive(Debug, Error)]
pub enum BrokerError {
    #[error(transparent)]
    Lun(#[from] LunError),
    #[error(
        "socket {0} already exists (another broker running, or left over from one): remove it, \
         or start with --replace"
    )]
    SocketExists(PathBuf),
    #[error("cannot listen on {path}: {message}")]
    Listen { path: PathBuf, message: String },
    #[error("metrics_listen: cannot listen on {addr}: {message} (pick a free port, or 0 for any)")]
    MetricsListen {
        addr: std::net::SocketAddr,
        message: String,
    },
    #[error("{0}")]
    Setup(String),
}

/// What the control API and tests see of one disk.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    pub socket: PathBuf,
    pub tenant: String,
    pub lun: String,
    pub queues: u16,
    /// The tenant's weight, reservation and limits, as configured.
    pub policy: TenantPolicy,
    pub counters: Arc<DiskCounters>,
    pub connected: Arc<AtomicBool>,
    /// Broker-clock milliseconds at the last connect or disconnect (0: never connected).
    pub last_change_ms: Arc<AtomicU64>,
}

/// The broker's shared state: LUNs and disks.
#[derive(Debug)]
pub struct BrokerState {
    pub luns: Vec<Arc<LunStore>>,
    pub disks: Vec<DiskInfo>,
    /// One per LUN, by name.
    pub dispatchers: Vec<Arc<LunDispatcher>>,
    /// The emulated array and its port names, when any LUN is emulated.
    pub array: Option<Arc<ArrayRuntime>>,
    pub port_names: Vec<String>,
    pub clock: BrokerClock,
    /// Thin pools, in config order.
    pub pools: Vec<Arc<ThinPool>>,
    /// Stops the broker (a control `handover`, a signal, [`BrokerHandle::shutdown`]).
    stop: Arc<StopSignal>,
}

impl BrokerState {
    /// Stops taking guests and answers what is in flight, then the broker exits: for a
    /// `--replace` handover. The disk sockets are unlinked first, so a guest that reconnects
    /// finds the next broker's socket, never this one's.
    pub fn request_stop(&self) {
        self.stop.shutdown();
    }
}

/// Stops a running broker.
#[derive(Clone)]
pub struct BrokerHandle {
    stop: Arc<StopSignal>,
    pub state: Arc<BrokerState>,
}

#[derive(Debug)]
struct StopSignal {
    requested: AtomicBool,
    event: EventFd,
    /// The live guest connections, to cut on shutdown.
    connections: Mutex<HashMap<usize, std::os::unix::net::UnixStream>>,
    /// The disk sockets, unlinked first on shutdown.
    sockets: Vec<PathBuf>,
}

impl StopSignal {
    fn shutdown(&self) {
        if self.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        for socket in &self.sockets {
            let _ = std::fs::remove_file(socket);
        }
        let _ = self.event.write(1);
        for handle in self
            .connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = handle.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl BrokerHandle {
    pub fn shutdown(&self) {
        self.stop.shutdown();
    }
}

/// A started broker: its threads, and a handle to stop it.
pub struct Broker {
    handle: BrokerHandle,
    threads: Vec<JoinHandle<()>>,
    control: Option<ControlServer>,
    metrics: Option<MetricsServer>,
    pools: Option<PoolThread>,
    telemetry: Option<TelemetryRecorder>,
    scheduler: Option<SchedulerThread>,
}

impl Broker {
    /// Answers one control command as the control socket would (for tools and fuzzing in
    /// the same process).
    pub fn control_answer(&self, command: &str) -> String {
        match &self.telemetry {
            Some(t) => crate::control::answer(&self.handle.state, &t.handle(), command),
            None => serde_json::json!({ "error": "the broker is stopping" }).to_string(),
        }
    }

    /// Opens every LUN and listens on every disk socket; returns once all are listening.
    pub fn start(config: &BrokerConfig, replace: bool) -> Result<Self, BrokerError> {
        let mut luns: HashMap<String, Arc<LunStore>> = HashMap::new();
        for lun in &config.luns {
            let store = open_lun(lun, replace)?;
            log::info!(
                "LUN '{}': {} ({} MiB{}{})",
                store.name,
                store.path.display(),
                store.size_bytes >> 20,
                if store.read_only { ", read-only" } else { "" },
                if store.direct_io() {
                    ", O_DIRECT"
                } else {
                    ", page cache"
                }
            );
            luns.insert(lun.name.clone(), Arc::new(store));
        }
        // The scheduling side: one emulated array holding every emulated LUN, one dispatcher
        // per LUN with the policies of the disks mapped to it, one clock thread.
        let clock = BrokerClock::new();
        let wake = Arc::new((Mutex::new(false), Condvar::new()));
        let emulated: Vec<&LunConfig> = config.luns.iter().filter(|l| l.is_emulated()).collect();
        let array = (!emulated.is_empty()).then(|| {
            let ports: Vec<PortModel> = config.ports.iter().map(|p| p.model()).collect();
            let models: Vec<LunModel> = emulated
                .iter()
                .map(|l| l.model.clone().unwrap_or_default())
                .collect();
            Arc::new(ArrayRuntime::new(
                EmulatedArray::new(&ports, &models, 1),
                wake.clone(),
            ))
        });
        // Port budgets: the emulated LUNs behind each port with a budget share one.
        let budgets: HashMap<String, (Arc<PortBudget>, Vec<String>)> = config
            .ports
            .iter()
            .filter_map(|p| {
                let budget = p.budget?;
                // A LUN counts against the budget of its first path's port.
                let members: Vec<String> = emulated
                    .iter()
                    .filter(|l| {
                        l.resolved_paths().first().and_then(|r| r.port.as_ref()) == Some(&p.name)
                    })
                    .map(|l| l.name.clone())
                    .collect();
                Some((
                    p.name.clone(),
                    (Arc::new(PortBudget::new(budget, members.len())), members),
                ))
            })
            .collect();
        let mut dispatchers: HashMap<String, Arc<LunDispatcher>> = HashMap::new();
        for lun in &config.luns {
            let tenants: Vec<_> = config
                .disks
                .iter()
                .filter(|d| d.lun == lun.name)
                .map(|d| d.tenant_policy())
                .collect();
            let in_array = emulated
                .iter()
                .position(|l| l.name == lun.name)
                .and_then(|i| array.clone().map(|a| (a, i)));
            let routes: Vec<PathRoute> = lun
                .resolved_paths()
                .into_iter()
                .map(|p| PathRoute {
                    port: in_array.as_ref().and_then(|_| {
                        let name = p.port.clone()?;
                        let i = config.ports.iter().position(|x| x.name == name)?;
                        Some((i, name))
                    }),
                    name: p.name,
                    group: p.group,
                    max_in_flight: p.max_in_flight,
                })
                .collect();
            let host_share = config.host_share.unwrap_or(1.0);
            let mut d = LunDispatcher::new(
                &lun.name,
                tenants,
                lun.scheduler,
                lun.depth_policy().for_host_share(host_share),
                in_array,
            )
            .with_paths(routes, lun.multipath.clone(), luns.get(&lun.name).cloned())
            .with_host_share(host_share);
            let first_port = lun.resolved_paths().first().and_then(|p| p.port.clone());
            if let Some((port, budget)) = first_port
                .as_ref()
                .and_then(|p| budgets.get(p))
                .map(|(b, members)| (members.iter().position(|m| *m == lun.name), b.clone()))
                .and_then(|(i, b)| i.map(|i| (i, b)))
            {
                d = d.with_budget(budget, port);
            }
            dispatchers.insert(lun.name.clone(), Arc::new(d));
        }
        let stop = Arc::new(StopSignal {
            requested: AtomicBool::new(false),
            event: EventFd::new(EFD_NONBLOCK).map_err(|e| BrokerError::Setup(e.to_string()))?,
            connections: Mutex::new(HashMap::new()),
            sockets: config.disks.iter().map(|d| d.socket.clone()).collect(),
        });
        let mut listeners = Vec::new();
        for disk in &config.disks {
            if disk.socket.exists() && !replace {
                return Err(BrokerError::SocketExists(disk.socket.clone()));
            }
            if let Some(dir) = disk.socket.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let listener = Listener::new(&disk.socket, true).map_err(|e| BrokerError::Listen {
                path: disk.socket.clone(),
                message: e.to_string(),
            })?;
            listeners.push(listener);
        }
        // Thin pools: each over the LUNs that name it, their allocation read from the images.
        let mut pools: Vec<Arc<ThinPool>> = Vec::new();
        let mut thin_of: HashMap<String, (Arc<ThinPool>, usize)> = HashMap::new();
        for pc in &config.pools {
            let members: Vec<(String, u64, PathBuf)> = config
                .luns
                .iter()
                .filter(|l| l.pool.as_deref() == Some(pc.name.as_str()))
                .filter_map(|l| luns.get(&l.name))
                .map(|s| (s.name.clone(), s.size_bytes, s.path.clone()))
                .collect();
            if let Some(lun) = members
                .iter()
                .filter_map(|(name, _, _)| luns.get(name))
                .find(|s| s.block_device)
            {
                return Err(BrokerError::Setup(format!(
                    "LUN '{}': a block device cannot be in thin pool '{}' (its images are \
                     sparse files)",
                    lun.name, pc.name
                )));
            }
            let pool = Arc::new(
                ThinPool::open(pc, &members)
                    .map_err(|e| BrokerError::Setup(format!("thin pool '{}': {e}", pc.name)))?,
            );
            let snap = pool.snapshot();
            log::info!(
                "pool '{}': {} of {} MiB used, {:.1}× overcommitted, {} LUN(s)",
                pc.name,
                snap.used_bytes >> 20,
                snap.capacity_bytes >> 20,
                snap.overcommit,
                members.len()
            );
            for (i, (name, _, _)) in members.iter().enumerate() {
                thin_of.insert(name.clone(), (pool.clone(), i));
            }
            pools.push(pool);
        }
        let mut disks = Vec::new();
        let mut servers = Vec::new();
        for (index, (disk, listener)) in config.disks.iter().zip(listeners).enumerate() {
            let lun = luns.get(&disk.lun).cloned().ok_or_else(|| {
                BrokerError::Setup(format!("disk {}: LUN {} missing", index, disk.lun))
            })?;
            let dispatcher = dispatchers.get(&disk.lun).cloned().ok_or_else(|| {
                BrokerError::Setup(format!("disk {index}: no dispatcher for {}", disk.lun))
            })?;
            // Tenant index: the disk's position among the disks of its LUN.
            let tenant = config.disks[..index]
                .iter()
                .filter(|d| d.lun == disk.lun)
                .count();
            let thin = thin_of.get(&disk.lun).cloned();
            if let Some(export) = lun.nbd() {
                // Each queue has its own connection: several are one export only with
                // multi-conn (a flush on one covers the writes completed on the others).
                let multi = export.info.can(crate::nbd::proto::TFLAG_CAN_MULTI_CONN);
                if disk.queues > 1 && !multi {
                    return Err(BrokerError::Setup(format!(
                        "disk[{index}].queues: {} does not advertise multi-conn, so each of \
                         {} queues' connections would flush only its own writes: set queues = 1, \
                         or serve the export with multi-conn",
                        export.paths[0], disk.queues
                    )));
                }
            }
            let server =
                DiskServer::new(index, disk, lun, listener, dispatcher, tenant, clock, thin);
            disks.push(server.info.clone());
            servers.push(server);
        }
        let mut lun_list: Vec<Arc<LunStore>> = luns.into_values().collect();
        lun_list.sort_by(|a, b| a.name.cmp(&b.name));
        let mut dispatcher_list: Vec<Arc<LunDispatcher>> = dispatchers.into_values().collect();
        dispatcher_list.sort_by(|a, b| a.name.cmp(&b.name));
        let state = Arc::new(BrokerState {
            luns: lun_list,
            disks,
            dispatchers: dispatcher_list.clone(),
            array: array.clone(),
            port_names: config.ports.iter().map(|p| p.name.clone()).collect(),
            clock,
            pools: pools.clone(),
            stop: stop.clone(),
        });
        let pool_thread =
            if pools.is_empty() {
                None
            } else {
                Some(PoolThread::start(pools, clock).map_err(|e| {
                    BrokerError::Setup(format!("cannot start the pool thread: {e}"))
                })?)
            };
        let handle = BrokerHandle {
            stop: stop.clone(),
            state: state.clone(),
        };
        let events: Vec<ArrayEvent> = config
            .events
            .iter()
            .filter_map(|e| {
                let kind = match e.action().ok()? {
                    EventAction::Capacity { lun, pct } => ArrayEventKind::Capacity {
                        lun: emulated.iter().position(|l| l.name == lun)?,
                        pct,
                    },
                    EventAction::Fault { port, fault } => ArrayEventKind::Fault {
                        port: config.ports.iter().position(|p| p.name == port)?,
                        fault,
                    },
                    EventAction::Policy {
                        lun,
                        depth,
                        selector,
                    } => ArrayEventKind::Policy {
                        dispatcher: dispatcher_list.iter().position(|d| d.name == lun)?,
                        depth,
                        selector,
                    },
                };
                let label = match (&e.lun, &e.port) {
                    (Some(l), _) if e.depth.is_some() || e.selector.is_some() => format!(
                        "LUN '{l}' policy {}",
                        e.depth.as_deref().or(e.selector.as_deref()).unwrap_or("?")
                    ),
                    (Some(l), _) => {
                        format!("LUN '{l}' capacity {} %", e.capacity_pct.unwrap_or(0.0))
                    }
                    (_, Some(p)) => format!("port '{p}' {}", e.fault.as_deref().unwrap_or("?")),
                    _ => String::new(),
                };
                Some(ArrayEvent {
                    at_s: e.at_s,
                    kind,
                    label,
                })
            })
            .collect();
        let ports: Vec<PortTelemetry> = match &array {
            Some(a) => config
                .ports
                .iter()
                .enumerate()
                .map(|(i, p)| PortTelemetry {
                    name: p.name.clone(),
                    index: i,
                    queue_limit: p.queue_limit,
                    array: a.clone(),
                })
                .collect(),
            None => Vec::new(),
        };
        let health = Arc::new(ClockHealth::default());
        let scheduler = SchedulerThread::start(
            clock,
            dispatcher_list.clone(),
            array.into_iter().collect(),
            events,
            wake,
            health.clone(),
        )
        .map_err(|e| BrokerError::Setup(format!("cannot start the scheduler thread: {e}")))?;
        let telemetry = TelemetryRecorder::start(
            state.disks.clone(),
            dispatcher_list,
            ports,
            state.pools.clone(),
            health,
            Duration::from_secs(1),
        )
        .map_err(|e| BrokerError::Setup(format!("cannot start telemetry: {e}")))?;
        let control = match &config.control_socket {
            Some(path) => Some(
                ControlServer::start(path, replace, state.clone(), telemetry.handle()).map_err(
                    |e| BrokerError::Listen {
                        path: path.clone(),
                        message: e.to_string(),
                    },
                )?,
            ),
            None => None,
        };
        let metrics = match config
            .metrics_addr()
            .map_err(|e| BrokerError::Setup(e.to_string()))?
        {
            Some(addr) => Some(MetricsServer::start(addr, state.clone()).map_err(|e| {
                BrokerError::MetricsListen {
                    addr,
                    message: e.to_string(),
                }
            })?),
            None => None,
        };
        let mut threads = Vec::new();
        for server in servers {
            let stop = stop.clone();
            let name = format!("disk-{}", server.index);
            let t = std::thread::Builder::new()
                .name(name)
                .spawn(move || server.run(&stop))
                .map_err(|e| BrokerError::Setup(e.to_string()))?;
            threads.push(t);
        }
        Ok(Broker {
            handle,
            threads,
            control,
            metrics,
            pools: pool_thread,
            telemetry: Some(telemetry),
            scheduler: Some(scheduler),
        })
    }

    pub fn handle(&self) -> BrokerHandle {
        self.handle.clone()
    }

    /// Where `/metrics` is served, when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().map(MetricsServer::addr)
    }

    /// Blocks until shutdown is requested and every disk has finished its in-flight I/O.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Every guest's I/O is answered: a broker taking over may have the images now.
        for lun in &self.handle.state.luns {
            lun.release_lock();
        }
        if let Some(control) = self.control.take() {
            control.stop();
        }
        if let Some(metrics) = self.metrics.take() {
            metrics.stop();
        }
        drop(self.telemetry.take());
        drop(self.pools.take());
        drop(self.scheduler.take());
    }
}

struct DiskServer {
    index: usize,
    info: DiskInfo,
    spec: BlkDeviceSpec,
    ctx: Arc<DiskContext>,
    listener: Listener,
}

impl DiskServer {
    #[allow(clippy::too_many_arguments)]
    fn new(
        index: usize,
        disk: &DiskConfig,
        lun: Arc<LunStore>,
        listener: Listener,
        dispatcher: Arc<LunDispatcher>,
        tenant_index: usize,
        clock: BrokerClock,
        thin: Option<(Arc<ThinPool>, usize)>,
    ) -> Self {
        let counters = Arc::new(DiskCounters::default());
        let spec = BlkDeviceSpec {
            num_queues: disk.queues,
            queue_size: disk.queue_size,
            capacity_sectors: lun.capacity_sectors(),
            read_only: lun.read_only,
            physical_block_bytes: 4096,
        };
        let mut serial = [0u8; ID_BYTES];
        let s = disk.serial.clone().unwrap_or_else(|| disk.tenant_name());
        let n = s.len().min(MAX_SERIAL_BYTES);
        serial[..n].copy_from_slice(&s.as_bytes()[..n]);
        let tenant = disk.tenant_name();
        let ctx = Arc::new(DiskContext {
            name: format!("{} ({})", tenant, disk.socket.display()),
            lun: lun.clone(),
            limits: spec.limits(),
            serial,
            counters: counters.clone(),
            bad_requests: RateLimitedLog::new(Duration::from_secs(1), 10),
            dispatcher,
            tenant: tenant_index,
            clock,
            thin,
        });
        DiskServer {
            index,
            info: DiskInfo {
                socket: disk.socket.clone(),
                tenant,
                lun: lun.name.clone(),
                queues: disk.queues,
                policy: disk.tenant_policy(),
                counters,
                connected: Arc::new(AtomicBool::new(false)),
                last_change_ms: Arc::new(AtomicU64::new(0)),
            },
            spec,
            ctx,
            listener,
        }
    }

    fn run(mut self, stop: &StopSignal) {
        let own_socket = socket_identity(&self.info.socket);
        while !stop.requested.load(Ordering::SeqCst) {
            match wait_readable(self.listener.as_raw_fd(), stop.event.as_raw_fd()) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    log::error!("disk {}: poll failed: {e}", self.ctx.name);
                    break;
                }
            }
            if stop.requested.load(Ordering::SeqCst) {
                break;
            }
            if let Err(e) = self.serve_one(stop) {
                log::error!("disk {}: {e}", self.ctx.name);
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        // Only our own: after a handover the path may already be the next broker's.
        if own_socket.is_some() && socket_identity(&self.info.socket) == own_socket {
            let _ = std::fs::remove_file(&self.info.socket);
        }
    }

    fn stamp(&self) {
        let ms = (self.ctx.clock.now() * 1000.0) as u64;
        self.info.last_change_ms.store(ms.max(1), Ordering::SeqCst);
    }

    /// Serves one guest connection from accept to disconnect.
    fn serve_one(&mut self, stop: &StopSignal) -> Result<(), String> {
        let device =
            BlkDevice::new(self.spec.clone(), self.ctx.clone()).map_err(|e| e.to_string())?;
        let session = VhostSession::new(device.clone(), &format!("disk-{}", self.index))
            .map_err(|e| format!("cannot start the queue threads: {e}"))?;
        let session = Arc::new(Mutex::new(session));
        let mut handler = {
            let mut listener = BackendListener::new(&mut self.listener, session.clone())
                .map_err(|e| format!("cannot listen: {e}"))?;
            loop {
                match listener.accept() {
                    Ok(Some(h)) => break h,
                    Ok(None) => continue,
                    Err(e) => return Err(format!("accepting a guest failed: {e}")),
                }
            }
        };
        self.info
            .counters
            .connections
            .fetch_add(1, Ordering::Relaxed);
        self.info.connected.store(true, Ordering::SeqCst);
        self.stamp();
        log::info!("disk {}: guest connected", self.ctx.name);
        if let Ok(conn) = handler.try_clone_connection() {
            // A shutdown requested while we were accepting must still cut this connection.
            if stop.requested.load(Ordering::SeqCst) {
                let _ = conn.shutdown(std::net::Shutdown::Both);
            }
            stop.connections
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(self.index, conn);
        }
        let error = loop {
            if let Err(e) = handler.handle_request() {
                break e;
            }
        };
        stop.connections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.index);
        drop(handler);
        // The queue threads stop first; only then may the in-flight requests be finished from
        // here without racing them.
        session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stop_threads();
        let pending = device.in_flight();
        device.drain();
        drop(session);
        self.info.connected.store(false, Ordering::SeqCst);
        self.stamp();
        log::info!(
            "disk {}: guest disconnected ({}); {pending} in-flight requests finished",
            self.ctx.name,
            match &error {
                vhost::vhost_user::Error::Disconnected
                | vhost::vhost_user::Error::PartialMessage => "socket closed".to_string(),
                e if stop.requested.load(Ordering::SeqCst) => format!("broker stopping: {e}"),
                e => e.to_string(),
            }
        );
        Ok(())
    }
}

/// Opens a LUN; with `--replace`, waits up to [`LOCK_WAIT`] for the previous broker's lock on
/// it to go: the kernel drops a killed process's file locks only when its io_uring instances
/// are torn down, a moment after the process is gone.
fn open_lun(lun: &LunConfig, replace: bool) -> Result<LunStore, LunError> {
    let start = std::time::Instant::now();
    loop {
        match LunStore::open(lun) {
            Err(LunError::Locked { .. }) if replace && start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(2));
            }
            other => return other,
        }
    }
}

const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The (device, inode) of a socket file, to tell ours from a successor's.
fn socket_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// `--replace` beside a running broker: asks the broker on `control` to hand over (stop
/// taking guests, answer what it has in flight, exit) and waits until its process is gone, so
/// that its LUN locks, sockets and ports are free. Returns the old broker's pid, or `None`
/// when no broker answers there (none ran, or a dead one left the socket behind).
pub fn take_over(control: &std::path::Path, limit: Duration) -> Result<Option<u32>, BrokerError> {
    let reply = match crate::control::query(control, "handover") {
        Ok(reply) => reply,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::Other => {
            // It hung up without an answer: it died (or is dying). Its locks are waited for
            // when the LUNs are opened.
            log::warn!(
                "--replace: the broker on {} hung up without answering 'handover' ({e}); \
                 going on",
                control.display()
            );
            return Ok(None);
        }
        Err(e) => {
            return Err(BrokerError::Setup(format!(
                "--replace: the broker on {} did not answer 'handover': {e}",
                control.display()
            )));
        }
    };
    let Some(pid) = reply["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
        return Err(BrokerError::Setup(format!(
            "--replace: the broker on {} refused to hand over: {reply}",
            control.display()
        )));
    };
    let start = std::time::Instant::now();
    while process_running(pid) {
        if start.elapsed() > limit {
            return Err(BrokerError::Setup(format!(
                "--replace: broker pid {pid} is still running {:.0} s after agreeing to hand \
                 over (stuck finishing its I/O?): stop it, then start again",
                limit.as_secs_f64()
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(Some(pid))
}

/// Whether `pid` is a running process (a zombie has already closed everything).
fn process_running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `fd` is readable (true) or `stop_fd` is (false).
fn wait_readable(fd: i32, stop_fd: i32) -> std::io::Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop_fd,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is a valid array of two pollfd structs for the duration of the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents != 0 {
            return Ok(false);
        }
        if fds[0].revents != 0 {
            return Ok(true);
        }
    }
}

/// Blocks SIGINT and SIGTERM in this thread and every thread it starts afterwards, and starts
/// a thread that turns them into a broker shutdown. Call before [`Broker::start`].
pub fn block_termination_signals() -> std::io::Result<SignalWaiter> {
    // SAFETY: sigset_t is plain data; the libc calls initialise it before use and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(SignalWaiter { set })
    }
}

/// Waits for SIGINT/SIGTERM (blocked by [`block_termination_signals`]).
pub struct SignalWaiter {
    set: libc::sigset_t,
}

impl SignalWaiter {
    /// Starts a thread that shuts the broker down on the first signal.
    pub fn shutdown_on_signal(self, handle: BrokerHandle) {
        let set = self.set;
        let _ = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut sig: libc::c_int = 0;
                // SAFETY: `set` holds SIGINT and SIGTERM, blocked in every thread; sigwait writes
                // the signal number into `sig`.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc == 0 {
                    log::warn!("signal {sig}: finishing in-flight I/O and stopping");
                    handle.shutdown();
                }
            });
    }
}
