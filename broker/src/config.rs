//! The broker's configuration file (TOML), documented in `docs/broker.md`.
//!
//! Parsing is strict (`deny_unknown_fields`): a typo is an error, never a silent default. Every
//! error names the entry and the field, and says how to fix it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use weir_sched::check;
use weir_sched::mclock::TenantPolicy;
use weir_sched::sim::{EventAction, EventSpec};

pub use weir_sched::lun::{
    ByteSize, LunBackend, LunSpec as LunConfig, PathSpec as LunPathConfig, ResolvedPath, parse_size,
};

/// The largest queue count a disk may ask for (virtio-blk MQ).
pub const MAX_QUEUES: u16 = 16;
/// The largest virtqueue size a disk may ask for.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// virtio-blk's device ID string is at most 20 bytes (`VIRTIO_BLK_ID_BYTES`).
pub const MAX_SERIAL_BYTES: usize = 20;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read broker config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("broker config: {field}: {message}")]
    Invalid { field: String, message: String },
}

/// A problem from `weir_sched::check` ("field: message") as a config error.
fn field_problem(problem: String) -> ConfigError {
    match problem.split_once(": ") {
        Some((field, message)) => invalid(field, message),
        None => invalid("config", problem),
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A whole broker configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// Unix socket for the control API (telemetry, topology).
    #[serde(default)]
    pub control_socket: Option<PathBuf>,
    /// This host's share of targets it shares with other hosts' brokers (PARDA): every LUN's
    /// `latency` window law runs with `β · host_share` (docs/network.md). Unset: one host.
    #[serde(default)]
    pub host_share: Option<f64>,
    /// `host:port` to serve Prometheus' `/metrics` on (e.g. "127.0.0.1:9464"); none: off.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// The seccomp filter on the broker's threads (`broker/src/sandbox.rs`); off only to debug.
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Ports of the emulated array (only LUNs with `backend = "emulated"` sit behind one).
    #[serde(default, rename = "port")]
    pub ports: Vec<PortConfig>,
    /// Thin pools: directories whose LUN images are sparse files sharing one capacity
    /// (docs/thin.md).
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolConfig>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<LunConfig>,
    #[serde(default, rename = "disk")]
    pub disks: Vec<DiskConfig>,
    /// Capacity changes of emulated LUNs and port faults, on the broker's clock (the same
    /// entries as `weir sim`'s).
    #[serde(default, rename = "event")]
    pub events: Vec<EventSpec>,
}

/// What a pool does with a write that needs space it does not have.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFull {
    /// Hold that tenant's allocating writes (only those) until space appears, at most
    /// `hold_s`, then answer them IOERR.
    #[default]
    Hold,
    /// Answer them IOERR at once.
    Error,
}

/// A thin pool: sparse LUN images in one directory, sharing one capacity.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    pub name: String,
    /// The directory holding the pool's LUN images (on the filesystem whose space they share).
    pub dir: PathBuf,
    /// A quota below the filesystem's size; omitted: the filesystem's own size.
    #[serde(default)]
    pub capacity: Option<ByteSize>,
    /// Allocation unit, a power of two from 4 KiB to 64 MiB (dm-thin's default block: 64 KiB).
    #[serde(default = "default_chunk")]
    pub chunk: ByteSize,
    /// Use thresholds, percent of capacity, ascending.
    #[serde(default = "default_thresholds")]
    pub thresholds_pct: Vec<f64>,
    #[serde(default)]
    pub on_full: OnFull,
    /// Longest hold of a write waiting for space, seconds.
    #[serde(default = "default_hold_s")]
    pub hold_s: f64,
}

fn default_chunk() -> ByteSize {
    ByteSize(64 << 10)
}
fn default_thresholds() -> Vec<f64> {
    vec![70.0, 85.0, 95.0]
}
fn default_hold_s() -> f64 {
    30.0
}

impl PoolConfig {
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let f = |field: &str| format!("pool[{i}].{field}");
        if self.name.is_empty() {
            return Err(invalid(f("name"), "must not be empty"));
        }
        if !self.dir.is_dir() {
            return Err(invalid(
                f("dir"),
                format!(
                    "{} is not a directory: create it (the pool's LUN images live there)",
                    self.dir.display()
                ),
            ));
        }
        let chunk = self.chunk.0;
        if !chunk.is_power_of_two() || !(4096..=64 << 20).contains(&chunk) {
            return Err(invalid(
                f("chunk"),
                format!("{chunk} bytes: must be a power of two from 4KiB to 64MiB"),
            ));
        }
        if self.capacity.is_some_and(|c| c.0 < chunk) {
            return Err(invalid(f("capacity"), "must hold at least one chunk"));
        }
        let t = &self.thresholds_pct;
        if t.iter().any(|p| !p.is_finite() || *p <= 0.0 || *p > 100.0)
            || t.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(invalid(
                f("thresholds_pct"),
                format!("{t:?}: percentages in (0, 100], ascending, e.g. [70, 85, 95]"),
            ));
        }
        if !self.hold_s.is_finite() || !(0.0..=3600.0).contains(&self.hold_s) {
            return Err(invalid(
                f("hold_s"),
                format!("{}: seconds from 0 to 3600", self.hold_s),
            ));
        }
        Ok(())
    }
}

/// A port of the emulated array: the same entry as `weir sim`'s `[[port]]` (name, queue
/// limit, the broker's budget for the windows behind it, link latency).
pub type PortConfig = weir_sched::sim::PortSpec;

/// A guest disk: one vhost-user-blk socket mapped to one LUN.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    pub socket: PathBuf,
    pub lun: String,
    /// The tenant this disk's I/O is accounted to (defaults to the socket's file stem).
    #[serde(default)]
    pub tenant: Option<String>,
    /// Returned by VIRTIO_BLK_T_GET_ID (at most 20 bytes).
    #[serde(default)]
    pub serial: Option<String>,
    #[serde(default = "default_queues")]
    pub queues: u16,
    #[serde(default = "default_queue_size")]
    pub queue_size: u16,
    /// The tenant's `weight`, `reservation_iops`, `limit_iops` and `limit_bytes_per_s`, the
    /// same fields (and defaults) as a `weir sim` tenant.
    #[serde(flatten)]
    pub policy: TenantPolicy,
}

impl DiskConfig {
    pub fn tenant_policy(&self) -> TenantPolicy {
        self.policy.clone()
    }
}

fn default_true() -> bool {
    true
}
fn default_queues() -> u16 {
    1
}
fn default_queue_size() -> u16 {
    256
}

impl BrokerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            weir_sched::check::read_config_text(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: BrokerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Cross-field rules serde cannot express.
    /// The address `/metrics` is served on, parsed: an IP address and a port, no host name
    /// (the broker resolves nothing).
    pub fn metrics_addr(&self) -> Result<Option<std::net::SocketAddr>, ConfigError> {
        self.metrics_listen
            .as_deref()
            .map(|text| {
                text.parse().map_err(|_| {
                    invalid(
                        "metrics_listen",
                        format!(
                            "'{text}' is not an address and port: write e.g. \"127.0.0.1:9464\" \
                             or \"[::1]:9464\""
                        ),
                    )
                })
            })
            .transpose()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.disks.is_empty() {
            return Err(invalid(
                "disk",
                "no [[disk]] entries: the broker would serve nothing",
            ));
        }
        self.metrics_addr()?;
        if let Some(share) = self.host_share {
            if !share.is_finite() || share <= 0.0 {
                return Err(invalid(
                    "host_share",
                    format!(
                        "{share}: a positive number (the sum of this host's tenants' weights, say)"
                    ),
                ));
            }
        }
        // Ports first: LUNs refer to them.
        for (i, p) in self.ports.iter().enumerate() {
            check::within(&format!("port[{i}]"), p).map_err(field_problem)?;
            if self.ports[..i].iter().any(|q| q.name == p.name) {
                return Err(invalid(
                    format!("port[{i}].name"),
                    format!("'{}' names two ports", p.name),
                ));
            }
        }
        let mut pools: HashMap<&str, &PoolConfig> = HashMap::new();
        for (i, pool) in self.pools.iter().enumerate() {
            pool.validate(i)?;
            if pools.insert(pool.name.as_str(), pool).is_some() {
                return Err(invalid(
                    format!("pool[{i}].name"),
                    format!("'{}' names two pools", pool.name),
                ));
            }
        }
        for (i, lun) in self.luns.iter().enumerate() {
            let Some(name) = &lun.pool else { continue };
            let Some(pool) = pools.get(name.as_str()) else {
                return Err(invalid(
                    format!("lun[{i}].pool"),
                    format!("no pool named '{name}': add a [[pool]] with that name"),
                ));
            };
            let Some(image) = &lun.path else {
                continue; // refused below: a broker LUN needs its path
            };
            let parent = image
                .parent()
                .and_then(|p| p.canonicalize().ok())
                .unwrap_or_default();
            if pool.dir.canonicalize().ok() != Some(parent) {
                return Err(invalid(
                    format!("lun[{i}].path"),
                    format!(
                        "{} is not in pool '{name}''s directory {}: put the image there",
                        image.display(),
                        pool.dir.display()
                    ),
                ));
            }
            if !lun.paths.is_empty() {
                return Err(invalid(
                    format!("lun[{i}].paths"),
                    "a thin LUN has one path (its image file in the pool)",
                ));
            }
        }
        let mut luns: HashMap<&str, &LunConfig> = HashMap::new();
        for (i, lun) in self.luns.iter().enumerate() {
            // The backing store first: a LUN without a `path` defaults to emulated, and a user
            // who forgot the path must hear about the path, not about a missing port.
            if lun.path.is_none() {
                return Err(invalid(
                    format!("lun[{i}].path"),
                    "missing: the backing file or block device (an emulated LUN keeps its data there too)",
                ));
            }
            // What every context refuses (weir_sched::lun).
            lun.check_in(i, &self.ports).map_err(field_problem)?;
            crate::nbd::check_lun(i, lun).map_err(|(field, why)| invalid(field, why))?;
            crate::iscsi::check_lun(i, lun).map_err(|(field, why)| invalid(field, why))?;
            if luns.insert(lun.name.as_str(), lun).is_some() {
                return Err(invalid(
                    format!("lun[{i}].name"),
                    format!("'{}' is defined twice; LUN names must be unique", lun.name),
                ));
            }
        }
        let mut sockets = HashSet::new();
        let mut users: HashMap<&str, usize> = HashMap::new();
        for (i, disk) in self.disks.iter().enumerate() {
            if !sockets.insert(&disk.socket) {
                return Err(invalid(
                    format!("disk[{i}].socket"),
                    format!("{} is used by two disks", disk.socket.display()),
                ));
            }
            if !luns.contains_key(disk.lun.as_str()) {
                let mut known: Vec<&str> = luns.keys().copied().collect();
                known.sort();
                return Err(invalid(
                    format!("disk[{i}].lun"),
                    format!(
                        "no LUN named '{}' (defined: {})",
                        disk.lun,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
            *users.entry(disk.lun.as_str()).or_default() += 1;
            if let Some(problem) = disk.tenant_policy().problem() {
                return Err(invalid(format!("disk[{i}]"), problem));
            }
            if disk.queues == 0 || disk.queues > MAX_QUEUES {
                return Err(invalid(
                    format!("disk[{i}].queues"),
                    format!("{}: must be 1 to {MAX_QUEUES}", disk.queues),
                ));
            }
            if !disk.queue_size.is_power_of_two()
                || disk.queue_size < 2
                || disk.queue_size > MAX_QUEUE_SIZE
            {
                return Err(invalid(
                    format!("disk[{i}].queue_size"),
                    format!(
                        "{}: must be a power of two from 2 to {MAX_QUEUE_SIZE}",
                        disk.queue_size
                    ),
                ));
            }
            if let Some(serial) = &disk.serial {
                if serial.len() > MAX_SERIAL_BYTES {
                    return Err(invalid(
                        format!("disk[{i}].serial"),
                        format!(
                            "'{serial}' is {} bytes; virtio-blk allows {MAX_SERIAL_BYTES}",
                            serial.len()
                        ),
                    ));
                }
            }
        }
        for (i, e) in self.events.iter().enumerate() {
            if !(e.at_s.is_finite() && e.at_s >= 0.0) {
                return Err(invalid(format!("event[{i}].at_s"), "must be 0 or more"));
            }
            let action = e.action().map_err(|m| invalid(format!("event[{i}]"), m))?;
            if let EventAction::Policy { depth: Some(d), .. } = &action {
                check::within(&format!("event[{i}].depth"), d).map_err(field_problem)?;
            }
            match action {
                EventAction::Capacity { lun, .. } => match luns.get(lun.as_str()) {
                    None => {
                        return Err(invalid(
                            format!("event[{i}].lun"),
                            format!("no LUN named '{lun}'"),
                        ));
                    }
                    Some(l) if !l.is_emulated() => {
                        return Err(invalid(
                            format!("event[{i}].lun"),
                            format!(
                                "'{lun}' is not emulated: capacity events apply to backend = \"emulated\""
                            ),
                        ));
                    }
                    Some(_) => {}
                },
                EventAction::Policy { lun, .. } => {
                    if !luns.contains_key(lun.as_str()) {
                        return Err(invalid(
                            format!("event[{i}].lun"),
                            format!("no LUN named '{lun}'"),
                        ));
                    }
                }
                EventAction::Fault { port, .. } => {
                    if !self.ports.iter().any(|p| p.name == port) {
                        return Err(invalid(
                            format!("event[{i}].port"),
                            format!("no [[port]] named '{port}'"),
                        ));
                    }
                }
            }
        }
        for (name, count) in users {
            if count > 1 && !luns[name].shareable {
                return Err(invalid(
                    format!("lun '{name}'"),
                    format!(
                        "{count} disks map to it; set shareable = true on the LUN to allow that"
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn lun(&self, name: &str) -> Option<&LunConfig> {
        self.luns.iter().find(|l| l.name == name)
    }
}

impl DiskConfig {
    /// The tenant name: configured, or the socket's file stem.
    pub fn tenant_name(&self) -> String {
        self.tenant.clone().unwrap_or_else(|| {
            self.socket
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "tenant".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
control_socket = "/tmp/weir.ctl"
[[lun]]
name = "lun0"
path = "/tmp/lun0.img"
size = "256MiB"
[[lun]]
name = "shared"
path = "/tmp/shared.img"
size = 1048576
shareable = true
read_only = true
[[disk]]
socket = "/tmp/vm1.sock"
lun = "lun0"
tenant = "vm1"
serial = "vm1-disk0"
queues = 2
[[disk]]
socket = "/tmp/vm2.sock"
lun = "shared"
[[disk]]
socket = "/tmp/vm3.sock"
lun = "shared"
"#;

    #[test]
    fn parses_a_full_config() {
        let c = BrokerConfig::parse(GOOD).unwrap();
        assert_eq!(c.luns[0].size, Some(ByteSize(256 << 20)));
        assert!(c.luns[0].direct);
        assert_eq!(c.disks[0].queues, 2);
        assert_eq!(c.disks[1].queue_size, 256);
        assert_eq!(c.disks[1].tenant_name(), "vm2");
        assert_eq!(c.disks[0].tenant_name(), "vm1");
    }

    fn err(text: &str) -> String {
        BrokerConfig::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_nbd_lun_is_checked_by_its_uri() {
        let lun =
            |extra: &str| format!("[[lun]]\nname='a'\n{extra}\n[[disk]]\nsocket='/s'\nlun='a'\n");
        // The scheme says nbd; no file is looked at.
        let c = BrokerConfig::parse(&lun("path='nbd://127.0.0.1:10809/disk'")).unwrap();
        assert_eq!(c.luns[0].backend(), LunBackend::Nbd);
        let c = BrokerConfig::parse(&lun(
            "path='nbd+unix:///?socket=/run/a.sock'\n[[lun.paths]]\nname='a'\n\
             [[lun.paths]]\nname='b'\ndevice='nbd+unix:///?socket=/run/b.sock'",
        ))
        .unwrap();
        assert_eq!(c.luns[0].resolved_paths().len(), 2);
        for (extra, field, why) in [
            ("path='nbd://host:0/x'", "lun[0].path", "port 0"),
            ("path='nbd+unix:///x'", "lun[0].path", "socket="),
            (
                "path='/x'\nbackend='nbd'",
                "lun[0].path",
                "needs the export's URI",
            ),
            (
                "path='nbd://h/x'\nbackend='file'",
                "lun[0].path",
                "set backend = \"nbd\"",
            ),
            (
                "path='nbd://h/x'\n[[lun.paths]]\ndevice='/dev/sdb'",
                "lun[0].paths[0].device",
                "an export URI",
            ),
            (
                "path='nbd://h/x'\nport='p'",
                "lun[0].backend",
                "emulated LUNs only",
            ),
        ] {
            let e = err(&lun(extra));
            assert!(e.contains(field) && e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn an_iscsi_lun_is_checked_by_its_uri() {
        let lun =
            |extra: &str| format!("[[lun]]\nname='a'\n{extra}\n[[disk]]\nsocket='/s'\nlun='a'\n");
        // The scheme says iscsi; no file is looked at, no target asked.
        let c = BrokerConfig::parse(&lun(
            "path='iscsi://10.0.0.5/iqn.2026-12.x:v/1'\n[[lun.paths]]\nname='a'\n\
             [[lun.paths]]\nname='b'\ndevice='iscsi://10.0.1.5:3261/iqn.2026-12.x:v/1'",
        ))
        .unwrap();
        assert_eq!(c.luns[0].backend(), LunBackend::Iscsi);
        assert_eq!(c.luns[0].resolved_paths().len(), 2);
        for (extra, field, why) in [
            ("path='iscsi://h/iqn.x'", "lun[0].path", "names no LUN"),
            ("path='iscsi://u%p@h/iqn.x/1'", "lun[0].path", "CHAP"),
            (
                "path='/x'\nbackend='iscsi'",
                "lun[0].path",
                "needs the target's URI",
            ),
            (
                "path='iscsi://h/iqn.x/1'\nbackend='file'",
                "lun[0].path",
                "set backend = \"iscsi\"",
            ),
            (
                "path='iscsi://h/iqn.x/1'\n[[lun.paths]]\ndevice='/dev/sdb'",
                "lun[0].paths[0].device",
                "a target URI",
            ),
        ] {
            let e = err(&lun(extra));
            assert!(e.contains(field) && e.contains(why), "{extra}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_fix() {
        let e = err("[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='b'\n");
        assert!(
            e.contains("disk[0].lun") && e.contains("no LUN named 'b'") && e.contains("defined: a"),
            "{e}"
        );
        // A forgotten path is named as such (without one, the LUN would default to emulated).
        let e = err("[[lun]]\nname='a'\n[[disk]]\nsocket='/s'\nlun='a'\n");
        assert!(e.contains("lun[0].path") && e.contains("missing"), "{e}");
        let e = err("[[lun]]\nname='a'\npath='/x'\nsize='12QB'\n[[disk]]\nsocket='/s'\nlun='a'\n");
        assert!(e.contains("unknown unit"), "{e}");
        let e = err("[[lun]]\nname='a'\npath='/x'\nsize=1000\n[[disk]]\nsocket='/s'\nlun='a'\n");
        assert!(
            e.contains("lun[0].size") && e.contains("multiple of 512"),
            "{e}"
        );
        let e = err(
            "[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\n[[disk]]\nsocket='/t'\nlun='a'\n",
        );
        assert!(e.contains("shareable = true"), "{e}");
        let e = err("[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\nqueues=0\n");
        assert!(e.contains("disk[0].queues"), "{e}");
        let e =
            err("[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\nqueue_size=100\n");
        assert!(
            e.contains("disk[0].queue_size") && e.contains("power of two"),
            "{e}"
        );
        let e = err(
            "[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\nserial='123456789012345678901'\n",
        );
        assert!(e.contains("disk[0].serial"), "{e}");
        let e = err("[[lun]]\nname='a'\npath='/x'\n");
        assert!(e.contains("no [[disk]]"), "{e}");
        let e =
            err("host_share = 0\n[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\n");
        assert!(e.contains("host_share") && e.contains("positive"), "{e}");
        let e = err(
            "[[lun]]\nname='a'\npath='/x'\n[[lun]]\nname='a'\npath='/y'\n[[disk]]\nsocket='/s'\nlun='a'\n",
        );
        assert!(e.contains("lun[1].name") && e.contains("twice"), "{e}");
        let e = err(
            "[[lun]]\nname='a'\npath='/x'\nbackend='emulated'\n[[disk]]\nsocket='/s'\nlun='a'\n",
        );
        assert!(e.contains("lun[0].port") && e.contains("[[port]]"), "{e}");
        let e = err(
            "[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\n[[event]]\nat_s=1\nlun='a'\ncapacity_pct=50\n",
        );
        assert!(
            e.contains("event[0].lun") && e.contains("not emulated"),
            "{e}"
        );
        let e = err("[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\nweight=0\n");
        assert!(e.contains("disk[0]") && e.contains("weight"), "{e}");
        let e = err("[[lun]]\nname='a'\npath='/x'\n[[disk]]\nsocket='/s'\nlun='a'\nwieght=2\n");
        assert!(
            e.contains("wieght"),
            "a typo in a flattened tenant field is still refused: {e}"
        );
        let e = err("[[disk]]\nsocket='/s'\nlun='a'\nqueus=2\n");
        assert!(e.contains("unknown field") && e.contains("queus"), "{e}");
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    const MULTIPATH: &str = "[[port]]\nname='a'\nqueue_limit=64\n[[port]]\nname='b'\nqueue_limit=64\nlatency_us=300\n\
        [[lun]]\nname='l'\npath='/x'\nbackend='emulated'\nmultipath={ selector='round-robin:1000', hold_s=5 }\n\
        [[lun.paths]]\nport='a'\n[[lun.paths]]\nport='b'\ngroup='non-optimized'\nmax_in_flight=8\n\
        [[disk]]\nsocket='/s'\nlun='l'\n\
        [[event]]\nat_s=3\nport='a'\nfault='slow'\nfactor=3\n";

    #[test]
    fn multipath_luns_and_port_faults_parse() {
        let c = BrokerConfig::parse(MULTIPATH).unwrap();
        let paths = c.luns[0].resolved_paths();
        assert_eq!(paths.len(), 2);
        assert_eq!((paths[0].name.as_str(), paths[0].max_in_flight), ("a", 32));
        assert_eq!(paths[1].group, weir_sched::path::PathGroup::NonOptimized);
        assert_eq!(paths[1].device, Some(PathBuf::from("/x")));
        assert_eq!(c.luns[0].multipath.hold_s, 5.0);
        assert_eq!(c.ports[1].latency_us, 300.0);
        // Without paths: one path, the LUN's own.
        let one = LunConfig::file("f", Path::new("/y"), None, false).resolved_paths();
        assert_eq!(
            (one.len(), one[0].device.as_deref()),
            (1, Some(Path::new("/y")))
        );
    }

    #[test]
    fn multipath_errors_name_the_field() {
        let e = err(&MULTIPATH.replace("[[lun.paths]]\nport='b'", "[[lun.paths]]\nport='c'"));
        assert!(
            e.contains("lun[0].paths[1].port") && e.contains("no [[port]] named 'c'"),
            "{e}"
        );
        let e = err(&MULTIPATH.replace("selector='round-robin:1000'", "selector='fastest'"));
        assert!(e.contains("not a path selector"), "{e}");
        let e = err(&MULTIPATH.replace("fault='slow'\nfactor=3", "fault='slow'"));
        assert!(e.contains("event[0]") && e.contains("needs factor"), "{e}");
        let e = err(&MULTIPATH.replace("[[lun.paths]]\nport='b'", "[[lun.paths]]\nport='a'"));
        assert!(e.contains("names two paths"), "{e}");
        let e = err(&MULTIPATH.replace("backend='emulated'", "backend='emulated'\nport='a'"));
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn numbers_the_scheduler_cannot_use_are_refused_by_field() {
        // Each of these was accepted before and reached the scheduler thread: min > max
        // panicked its clamp, a zero bandwidth or depth stalled the LUN, NaN and negative
        // service times broke the array model.
        let lun = |extra: &str| {
            MULTIPATH.replace(
                "backend='emulated'\n",
                &format!("backend='emulated'\n{extra}\n"),
            )
        };
        for (extra, field) in [
            (
                "depth={ policy='latency', target_ms=5, min=64, max=8 }",
                "lun[0].depth.min",
            ),
            ("depth={ policy='fixed', depth=0 }", "lun[0].depth.depth"),
            ("model={ unit_mib_per_s=0 }", "lun[0].model.unit_mib_per_s"),
            ("model={ read_base_us=-5 }", "lun[0].model.read_base_us"),
            ("model={ write_base_us=nan }", "lun[0].model.write_base_us"),
            (
                "depth={ policy='adaptive', period_s=inf }",
                "lun[0].depth.period_s",
            ),
        ] {
            let e = err(&lun(extra));
            assert!(e.contains(field), "{extra}: {e}");
        }
        let e = err(&MULTIPATH.replace("latency_us=300", "latency_us=-1"));
        assert!(e.contains("port[1].latency_us"), "{e}");
        let e = err(&MULTIPATH.replace("name='b'", "name='a'"));
        assert!(e.contains("names two ports"), "{e}");
        // BUSY at the knee (0 waiting slots) is a real array's behaviour and stays allowed.
        BrokerConfig::parse(&lun("model={ busy_threshold=0 }")).unwrap();
    }

    #[test]
    fn a_thin_pool_is_checked_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display().to_string();
        let text = |pool: &str, lun_path: &str| {
            format!(
                "[[pool]]\nname = 'p'\ndir = '{d}'\n{pool}\n\
                 [[lun]]\nname = 'l'\npath = '{lun_path}'\nsize = '1MiB'\npool = 'p'\n\
                 [[disk]]\nsocket = '{d}/s.sock'\nlun = 'l'\n"
            )
        };
        let ok = BrokerConfig::parse(&text("capacity = '4MiB'", &format!("{d}/l.img"))).unwrap();
        assert_eq!(ok.pools[0].chunk.0, 64 << 10);
        assert_eq!(ok.pools[0].on_full, OnFull::Hold);
        let err = |t: String| BrokerConfig::parse(&t).unwrap_err().to_string();
        let e = err(text("", "/elsewhere/l.img"));
        assert!(
            e.contains("lun[0].path") && e.contains("not in pool 'p'"),
            "{e}"
        );
        let e = err(text("chunk = '48KiB'", &format!("{d}/l.img")));
        assert!(
            e.contains("pool[0].chunk") && e.contains("power of two"),
            "{e}"
        );
        let e = err(text("thresholds_pct = [90, 80]", &format!("{d}/l.img")));
        assert!(
            e.contains("pool[0].thresholds_pct") && e.contains("ascending"),
            "{e}"
        );
        let e = err(text("hold_s = -1", &format!("{d}/l.img")));
        assert!(e.contains("pool[0].hold_s"), "{e}");
        let e = err(text("on_full = 'panic'", &format!("{d}/l.img")));
        assert!(e.contains("on_full"), "{e}");
        let e = err(text("", &format!("{d}/l.img"))
            .replace(&format!("dir = '{d}'"), "dir = '/nonexistent-weir'"));
        assert!(e.contains("pool[0].dir") && e.contains("create it"), "{e}");
        let e = err(text("", &format!("{d}/l.img")).replace("pool = 'p'", "pool = 'q'"));
        assert!(
            e.contains("lun[0].pool") && e.contains("no pool named 'q'"),
            "{e}"
        );
    }
}
