//! The control API: a unix socket answering one-line commands with one line of JSON.
//!
//! Commands: `stats` (per-disk counters), `topology` (disk → LUN → backing store),
//! `telemetry [N]` (the last N per-second samples). Documented in `docs/broker.md`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmm_sys_util::eventfd::EventFd;

use weir_sched::array::PortFault;

use crate::counters::DiskCountersSnapshot;
use crate::dispatch::PathSnapshot;
use crate::server::BrokerState;
use crate::telemetry::TelemetryHandle;

#[derive(Debug, Serialize)]
pub struct DiskStats {
    pub socket: PathBuf,
    pub tenant: String,
    pub lun: String,
    pub connected: bool,
    pub counters: DiskCountersSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LunTopology {
    pub name: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub read_only: bool,
    pub direct_io: bool,
    pub direct_unavailable: Option<String>,
    pub disks: Vec<PathBuf>,
    /// `file` or `emulated`.
    #[serde(default)]
    pub backend: String,
    /// How tenants are ordered (`mclock`, `fifo`) and the window policy in force.
    #[serde(default)]
    pub scheduler: String,
    #[serde(default)]
    pub depth_policy: String,
    /// The disks mapped to this LUN with their tenants' policies.
    #[serde(default)]
    pub tenants: Vec<TenantTopology>,
    /// The path selector and each path's state and figures.
    pub selector: String,
    pub paths: Vec<PathTopology>,
}

/// A disk mapped to a LUN: the tenant, its socket and what it was promised.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TenantTopology {
    pub tenant: String,
    pub socket: PathBuf,
    pub connected: bool,
    #[serde(flatten)]
    pub policy: weir_sched::mclock::TenantPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathTopology {
    #[serde(flatten)]
    pub path: PathSnapshot,
    /// The node this path opens.
    pub device: Option<PathBuf>,
}

/// The name a value serialises to (a kebab-case enum's variant, as the control API writes it).
pub fn serde_name<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The `stats` answer.
pub fn stats(state: &BrokerState) -> Vec<DiskStats> {
    state
        .disks
        .iter()
        .map(|d| DiskStats {
            socket: d.socket.clone(),
            tenant: d.tenant.clone(),
            lun: d.lun.clone(),
            connected: d.connected.load(Ordering::SeqCst),
            counters: d.counters.snapshot(),
        })
        .collect()
}

/// The `topology` answer.
pub fn topology(state: &BrokerState) -> Vec<LunTopology> {
    state
        .luns
        .iter()
        .map(|l| {
            let d = state.dispatchers.iter().find(|d| d.name == l.name);
            (l, d)
        })
        .map(|(l, d)| LunTopology {
            backend: d.map_or("file", |d| d.backend()).into(),
            scheduler: d.map_or(String::new(), |d| serde_name(&d.scheduler)),
            depth_policy: d.map_or(String::new(), |d| d.depth_policy()),
            tenants: state
                .disks
                .iter()
                .filter(|disk| disk.lun == l.name)
                .map(|disk| TenantTopology {
                    tenant: disk.tenant.clone(),
                    socket: disk.socket.clone(),
                    connected: disk.connected.load(Ordering::SeqCst),
                    policy: disk.policy.clone(),
                })
                .collect(),
            selector: d.map_or(String::new(), |d| d.selector()),
            paths: d
                .map(|d| d.path_snapshots())
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, path)| PathTopology {
                    path,
                    device: l.path_device(i).map(|p| p.to_path_buf()),
                })
                .collect(),
            name: l.name.clone(),
            path: l.path.clone(),
            size_bytes: l.size_bytes,
            read_only: l.read_only,
            direct_io: l.direct_io(),
            direct_unavailable: l.direct_unavailable.clone(),
            disks: state
                .disks
                .iter()
                .filter(|d| d.lun == l.name)
                .map(|d| d.socket.clone())
                .collect(),
        })
        .collect()
}

/// Every LUN's path events so far.
pub fn path_events(state: &BrokerState) -> serde_json::Value {
    serde_json::Value::Object(
        state
            .dispatchers
            .iter()
            .map(|d| (d.name.clone(), serde_json::Value::Array(d.path_events())))
            .collect(),
    )
}

/// `fault TARGET FAULT`: TARGET is an emulated port's name or `LUN/PATH` for a path without
/// one; FAULT is down, up, healthy, slow:K or flaky:P.
pub fn inject_fault(state: &BrokerState, target: &str, fault: &str) -> Result<String, String> {
    let parsed = match fault.split_once(':') {
        None => match fault {
            "down" => PortFault::Down,
            "up" => PortFault::Up,
            "healthy" => PortFault::Healthy,
            _ => {
                return Err(format!(
                    "unknown fault '{fault}'; use down, up, healthy, slow:K or flaky:P"
                ));
            }
        },
        Some(("slow", k)) => PortFault::Slow {
            factor: k
                .parse()
                .map_err(|_| format!("slow:K takes a factor, not '{k}'"))?,
        },
        Some(("flaky", p)) => PortFault::Flaky {
            error_rate: p
                .parse()
                .map_err(|_| format!("flaky:P takes an error rate, not '{p}'"))?,
        },
        Some(_) => {
            return Err(format!(
                "unknown fault '{fault}'; use down, up, healthy, slow:K or flaky:P"
            ));
        }
    };
    if let Some(p) = parsed.problem() {
        return Err(p);
    }
    if let Some(i) = state.port_names.iter().position(|p| p == target) {
        let Some(array) = &state.array else {
            return Err(format!("port '{target}' has no emulated LUN behind it"));
        };
        array.set_port_fault(state.clock.now(), i, parsed);
        log::warn!("control: port '{target}' fault {fault}");
        return Ok(format!("port '{target}': {fault}"));
    }
    let Some((lun, path)) = target.split_once('/') else {
        return Err(format!(
            "no port named '{target}'; name a port ({}) or LUN/PATH",
            state.port_names.join(", ")
        ));
    };
    let Some(d) = state.dispatchers.iter().find(|d| d.name == lun) else {
        return Err(format!("no LUN named '{lun}'"));
    };
    d.set_file_fault(path, parsed)?;
    Ok(format!("LUN '{lun}' path '{path}': {fault}"))
}

/// `pool grow NAME SIZE`: a new capacity (quota) for a thin pool; held writes resume.
fn pool_command(state: &BrokerState, args: &[&str]) -> Result<String, String> {
    let usage = || "usage: pool grow NAME SIZE (e.g. pool grow pool0 2GiB)".to_string();
    match args {
        ["grow", name, size] => {
            let Some(pool) = state.pools.iter().find(|p| p.name == *name) else {
                let known: Vec<&str> = state.pools.iter().map(|p| p.name.as_str()).collect();
                return Err(format!(
                    "no pool named '{name}' (pools: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ));
            };
            let bytes = crate::config::parse_size(size)?;
            pool.set_capacity(bytes)?;
            Ok(format!("pool '{name}': capacity {bytes} bytes"))
        }
        _ => Err(usage()),
    }
}

/// The JSON answer to one command line.
pub fn answer(state: &BrokerState, telemetry: &TelemetryHandle, command: &str) -> String {
    let mut words = command.split_whitespace();
    if command.trim_start().starts_with("fault") {
        let _ = words.next();
        let reply = match (words.next(), words.next(), words.next()) {
            (Some(target), Some(fault), None) => inject_fault(state, target, fault),
            _ => Err("usage: fault PORT|LUN/PATH down|up|healthy|slow:K|flaky:P".into()),
        };
        return match reply {
            Ok(done) => serde_json::json!({ "ok": done }).to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
    }
    if command.trim_start().starts_with("policy") {
        let args: Vec<&str> = command.split_whitespace().skip(1).collect();
        return match policy_command(state, &args) {
            Ok(done) => serde_json::json!({ "ok": done }).to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
    }
    if command.trim_start().starts_with("pool ") {
        let reply = pool_command(state, &command.split_whitespace().collect::<Vec<_>>()[1..]);
        return match reply {
            Ok(done) => serde_json::json!({ "ok": done }).to_string(),
            Err(e) => serde_json::json!({ "error": e }).to_string(),
        };
    }
    let result = match (words.next().unwrap_or(""), words.next()) {
        ("handover", None) => {
            // `weir broker --replace` beside this one: it waits for this process to exit. The
            // stop itself comes after the answer is written (`serve`): stopping first could
            // end the process before the successor learns which pid to wait for.
            Ok(serde_json::json!({ "ok": "handing over", "pid": std::process::id() }).to_string())
        }
        ("dark", None) => serde_json::to_string(&crate::dark::report(state)),
        ("pools", None) => serde_json::to_string(
            &state.pools.iter().map(|p| p.snapshot()).collect::<Vec<_>>(),
        ),
        ("paths", None) => serde_json::to_string(&path_events(state)),
        ("stats", None) => serde_json::to_string(&stats(state)),
        ("topology", None) => serde_json::to_string(&topology(state)),
        ("telemetry", None) => serde_json::to_string(&telemetry.recent(None)),
        ("telemetry", Some(n)) => match n.parse::<usize>() {
            Ok(n) => serde_json::to_string(&telemetry.recent(Some(n))),
            Err(_) => Ok(serde_json::json!({ "error": format!("telemetry takes a count of seconds, not '{n}'") }).to_string()),
        },
        (other, _) => Ok(serde_json::json!({
            "error": format!("unknown command '{}'; try 'stats', 'topology', 'paths', 'pools', 'pool grow NAME SIZE', 'dark', 'telemetry [N]', 'fault TARGET FAULT', 'policy LUN depth|selector VALUE' or 'handover'", other)
        })
        .to_string()),
    };
    result.unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }).to_string())
}

pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// Written on stop: wakes the accept loop's poll.
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(
        path: &Path,
        replace: bool,
        state: Arc<BrokerState>,
        telemetry: TelemetryHandle,
    ) -> std::io::Result<Self> {
        if path.exists() {
            if !replace {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "control socket exists: remove it or start with --replace",
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        // The control socket changes the broker (faults, pools): its owner only. A peer that
        // connected in the moment before the chmod is still refused by its credentials.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        listener.set_nonblocking(true)?;
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let wake = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let wake2 = wake.clone();
        let thread = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if let Err(why) = admit(&stream, &connections) {
                                log::warn!("control socket: refused a connection: {why}");
                                let reply = serde_json::json!({ "error": why }).to_string();
                                let _ = (&stream).write_all(format!("{reply}\n").as_bytes());
                                continue;
                            }
                            let state = state.clone();
                            let telemetry = telemetry.clone();
                            let count = connections.clone();
                            let spawned = std::thread::Builder::new()
                                .name("control-conn".into())
                                .spawn(move || {
                                    serve(stream, &state, &telemetry);
                                    count.fetch_sub(1, Ordering::SeqCst);
                                });
                            if spawned.is_err() {
                                connections.fetch_sub(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            // Wake at once for the next client or a stop (a fixed sleep here
                            // cost every command up to 20 ms; a poll timeout, every stop).
                            wait_readable(&listener, &wake2);
                        }
                        Err(e) => {
                            log::warn!("control socket: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            wake,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.wake.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

/// `policy LUN depth SPEC` or `policy LUN selector NAME`: a LUN's window policy or path
/// selector, changed live (what a scenario's `[[event]]` with `depth`/`selector` does).
fn policy_command(state: &BrokerState, args: &[&str]) -> Result<String, String> {
    const USAGE: &str = "usage: policy LUN depth fixed:N|aimd|latency|latency:MS|adaptive, or \
                         policy LUN selector NAME";
    let [lun, what, value] = args else {
        return Err(USAGE.into());
    };
    let dispatcher = state
        .dispatchers
        .iter()
        .find(|d| d.name == *lun)
        .ok_or_else(|| format!("no LUN '{lun}'"))?;
    match *what {
        "depth" => {
            let depth = weir_sched::depth::DepthPolicy::from_short(value).ok_or_else(|| {
                format!("depth '{value}': use fixed:N, aimd, latency, latency:MS, adaptive")
            })?;
            dispatcher.set_policy(Some(depth), None);
        }
        "selector" => {
            let selector = weir_sched::path::PathSelectorKind::try_from(value.to_string())?;
            dispatcher.set_policy(None, Some(selector));
        }
        _ => return Err(USAGE.into()),
    }
    Ok(format!("LUN '{lun}': {what} {value}"))
}

/// Connections served at once; more wait for one to end (a local client cannot make the
/// broker spawn threads without bound).
const MAX_CONNECTIONS: usize = 16;
/// The longest command line: commands are a few words.
const MAX_COMMAND_BYTES: u64 = 4096;

/// Whether a connection may be served: the broker's own user or root, and a free place.
fn admit(stream: &UnixStream, connections: &AtomicUsize) -> Result<(), String> {
    let uid = peer_uid(stream).map_err(|e| format!("cannot read the peer's credentials: {e}"))?;
    // SAFETY: geteuid has no arguments and cannot fail.
    let me = unsafe { libc::geteuid() };
    if uid != me && uid != 0 {
        return Err(format!(
            "uid {uid} may not use this broker's control socket (owner uid {me})"
        ));
    }
    if connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
        connections.fetch_sub(1, Ordering::SeqCst);
        return Err(format!(
            "{MAX_CONNECTIONS} control connections are open; close one"
        ));
    }
    Ok(())
}

/// Waits until `listener` has a connection to accept or `wake` is written (a stop).
fn wait_readable(listener: &UnixListener, wake: &EventFd) {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: wake.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    // SAFETY: poll reads and writes the two pollfds `fds` holds, which outlive the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
}

/// The connected peer's user (SO_PEERCRED).
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes at most `len` bytes into `cred`, which outlives the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn serve(stream: UnixStream, state: &BrokerState, telemetry: &TelemetryHandle) {
    let _ = stream.set_nonblocking(false);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_COMMAND_BYTES).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_COMMAND_BYTES {
            let reply = serde_json::json!({
                "error": format!("command longer than {MAX_COMMAND_BYTES} bytes")
            });
            let _ = writer.write_all(format!("{reply}\n").as_bytes());
            return;
        }
        let line = line.trim_end_matches(['\n', '\r']).to_string();
        if writer
            .write_all(format!("{}\n", answer(state, telemetry, &line)).as_bytes())
            .is_err()
        {
            return;
        }
        if line.split_whitespace().eq(["handover"]) {
            log::warn!("handover requested: finishing in-flight I/O and exiting");
            let _ = writer.flush();
            state.request_stop();
            return;
        }
    }
}

/// Sends one command to a broker's control socket and returns its JSON answer.
pub fn query(path: &Path, command: &str) -> std::io::Result<serde_json::Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(std::io::Error::other)
}
