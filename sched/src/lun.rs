//! A LUN's settings: one type for the broker's `[[lun]]`, `weir sim`'s and `weir run`'s, and
//! one validator for what they share, so the algorithm meets the same LUN in the simulator and
//! the broker.
//!
//! The scheduling part (ports or paths, the array model, the window policy, the scheduler,
//! multipath, the thin pool) means the same everywhere. The backing-store part (`path`,
//! `size`, `read_only`, `shareable`, `direct`, `backend`) is the broker's: `weir sim` has no
//! store and refuses `path` and `backend = "file"`; `weir run` makes the store itself (a file
//! per LUN under its run directory, `size` of it).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::array::LunModel;
use crate::check;
use crate::depth::DepthPolicy;
use crate::path::{MultipathPolicy, PathGroup};
use crate::sim::{PortSpec, SchedulerKind};

/// What serves a LUN's requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LunBackend {
    /// The backing store at its own speed.
    #[default]
    File,
    /// The backing store holds the data, and a model of a congested array port and LUN
    /// (`port`, `model`) decides when each request completes and answers QUEUE FULL/BUSY.
    Emulated,
    /// An export of an NBD server: `path` (and each path's `device`) is its URI,
    /// `nbd://host:port/export` or `nbd+unix:///export?socket=/path`.
    Nbd,
    /// A LUN of an iSCSI target: `path` (and each path's `device`, one per portal) is its URI,
    /// `iscsi://host[:port]/target-iqn/lun`.
    Iscsi,
}

/// A byte count written as an integer or as a string with a unit ("256MiB", "1G", "4096").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => parse_size(&s)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// Parses "4096", "64K", "256MiB", "1GiB", "2G" (binary units; K/M/G/T and KiB/MiB/GiB/TiB).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("'{s}' is not a size (write e.g. 4096, \"64KiB\", \"256MiB\", \"1GiB\")")
    })?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (use KiB, MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Whether a LUN's `path` is written as an NBD URI (its scheme; the broker parses the rest).
pub fn is_nbd_uri(p: &std::path::Path) -> bool {
    p.to_str().is_some_and(|s| {
        s.starts_with("nbd://") || s.starts_with("nbd+unix://") || s.starts_with("nbd+tcp://")
    })
}

/// Whether a LUN's `path` is written as an iSCSI URI (its scheme; the broker parses the rest).
pub fn is_iscsi_uri(p: &std::path::Path) -> bool {
    p.to_str().is_some_and(|s| s.starts_with("iscsi://"))
}

fn default_true() -> bool {
    true
}

/// A LUN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunSpec {
    pub name: String,
    /// Backing file or block device (the broker's; required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Size the guest sees. A missing file is created sparse with this size; an existing one
    /// must be at least this large. Omitted: the backing store's size (`weir run`: 256 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<ByteSize>,
    /// The same as `size`, in MiB (older `weir run` scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_mib: Option<u64>,
    #[serde(default)]
    pub read_only: bool,
    /// Several disks may map to this LUN only when it is shareable.
    #[serde(default)]
    pub shareable: bool,
    /// Open with O_DIRECT (bypass the host page cache). Falls back, with a logged reason, when
    /// the backing store refuses it.
    #[serde(default = "default_true")]
    pub direct: bool,
    /// Default: `nbd` when `path` is an NBD URI, `file` when the LUN has another `path` (the
    /// broker), `emulated` when it has none (`weir sim`, `weir run`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<LunBackend>,
    /// The one port the LUN is reached through (emulated only); or give `paths`.
    #[serde(default)]
    pub port: Option<String>,
    /// Several paths to the LUN (multipath): each through its own array port when emulated,
    /// each its own descriptor onto the backing store (`device`, default the LUN's `path`).
    #[serde(default)]
    pub paths: Vec<PathSpec>,
    /// Path selector, failback, checker, hold and timeout settings.
    #[serde(default)]
    pub multipath: MultipathPolicy,
    /// The emulated LUN's service model (emulated only; defaults describe a small congested
    /// array LUN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<LunModel>,
    /// The dispatch window policy. Default: `adaptive` on emulated LUNs; on file LUNs a fixed
    /// window of 1024 (no throttling, scheduling still orders the tenants).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<DepthPolicy>,
    /// `mclock` (tenants' weights, reservations and limits) or `fifo` (arrival order).
    #[serde(default)]
    pub scheduler: SchedulerKind,
    /// The thin pool this LUN belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
}

/// One path of a LUN.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathSpec {
    /// Defaults to the port's name, else `path<N>`.
    #[serde(default)]
    pub name: Option<String>,
    /// The emulated array port (emulated LUNs).
    #[serde(default)]
    pub port: Option<String>,
    /// Another node for the same store (e.g. a second `/dev/sdX` of one multipath LUN);
    /// default: the LUN's `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<PathBuf>,
    #[serde(default)]
    pub group: PathGroup,
    /// Requests this path carries at most at once (an HBA's per-LUN queue depth).
    #[serde(default = "default_path_cap")]
    pub max_in_flight: u32,
}

fn default_path_cap() -> u32 {
    32
}

/// A LUN's path after defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedPath {
    pub name: String,
    pub port: Option<String>,
    /// The node to open (the LUN's `path` unless the path names its own `device`).
    pub device: Option<PathBuf>,
    pub group: PathGroup,
    pub max_in_flight: u32,
}

impl LunSpec {
    /// A LUN of the emulated array behind `port`, every other setting at its default.
    pub fn emulated(name: &str, port: &str) -> Self {
        LunSpec {
            port: Some(port.into()),
            backend: Some(LunBackend::Emulated),
            ..LunSpec::bare(name)
        }
    }

    /// A file-backed LUN with every other setting at its default.
    pub fn file(name: &str, path: &std::path::Path, size: Option<u64>, read_only: bool) -> Self {
        LunSpec {
            path: Some(path.to_path_buf()),
            size: size.map(ByteSize),
            read_only,
            backend: Some(LunBackend::File),
            ..LunSpec::bare(name)
        }
    }

    fn bare(name: &str) -> Self {
        LunSpec {
            name: name.to_string(),
            path: None,
            size: None,
            size_mib: None,
            read_only: false,
            shareable: false,
            direct: true,
            backend: None,
            port: None,
            paths: Vec::new(),
            multipath: MultipathPolicy::default(),
            model: None,
            depth: None,
            scheduler: SchedulerKind::default(),
            pool: None,
        }
    }

    /// The backend in force (see [`LunSpec::backend`]).
    pub fn backend(&self) -> LunBackend {
        self.backend.unwrap_or(match &self.path {
            Some(p) if is_nbd_uri(p) => LunBackend::Nbd,
            Some(p) if is_iscsi_uri(p) => LunBackend::Iscsi,
            Some(_) => LunBackend::File,
            None => LunBackend::Emulated,
        })
    }

    pub fn is_emulated(&self) -> bool {
        self.backend() == LunBackend::Emulated
    }

    /// The array model in force (emulated LUNs).
    pub fn model(&self) -> LunModel {
        self.model.clone().unwrap_or_default()
    }

    /// The window policy in force (see [`LunSpec::depth`]).
    pub fn depth_policy(&self) -> DepthPolicy {
        // Files and block devices keep a deep fixed window until the knee search holds there
        // (docs/scheduling.md: on this machine's disk it settled from 18 to 64 where the
        // device still gained throughput beyond).
        self.depth.clone().unwrap_or(match self.backend() {
            LunBackend::Emulated => DepthPolicy::default(),
            LunBackend::File | LunBackend::Nbd | LunBackend::Iscsi => {
                DepthPolicy::Fixed { depth: 1024 }
            }
        })
    }

    /// The size asked for, bytes (`size`, or `size_mib`).
    pub fn size_bytes(&self) -> Option<u64> {
        self.size
            .map(|s| s.0)
            .or(self.size_mib.map(|m| m.saturating_mul(1 << 20)))
    }

    /// The LUN's paths: its `paths` entries, or one path (its `port`, its `path`) with no cap
    /// of its own.
    pub fn resolved_paths(&self) -> Vec<ResolvedPath> {
        if self.paths.is_empty() {
            return vec![ResolvedPath {
                name: self.port.clone().unwrap_or_else(|| "path0".into()),
                port: self.port.clone(),
                device: self.path.clone(),
                group: PathGroup::Optimized,
                max_in_flight: u32::MAX,
            }];
        }
        self.paths
            .iter()
            .enumerate()
            .map(|(k, p)| ResolvedPath {
                name: p
                    .name
                    .clone()
                    .or_else(|| p.port.clone())
                    .unwrap_or_else(|| format!("path{k}")),
                port: p.port.clone(),
                device: p.device.clone().or_else(|| self.path.clone()),
                group: p.group,
                max_in_flight: p.max_in_flight,
            })
            .collect()
    }

    /// The problems every context refuses, as "field: message" with `lun[i]` in front:
    /// the name, port or paths (emulated LUNs reach each of `ports` by name; file LUNs have
    /// none, nor a model), path names and caps, multipath, the model, the window policy, the
    /// size.
    pub fn check_in(&self, i: usize, ports: &[PortSpec]) -> Result<(), String> {
        let at = format!("lun[{i}]");
        if self.name.is_empty() {
            return Err(format!("{at}.name: must not be empty"));
        }
        if self.port.is_some() && !self.paths.is_empty() {
            return Err(format!(
                "{at}.port: give either port or [[lun.paths]] entries (each with its port), not both"
            ));
        }
        if self.is_emulated() {
            if self.paths.is_empty() && self.port.is_none() {
                return Err(format!(
                    "{at}.port: an emulated LUN needs the [[port]] it sits behind (or [[lun.paths]])"
                ));
            }
            for (k, p) in self.resolved_paths().iter().enumerate() {
                let field = if self.paths.is_empty() {
                    format!("{at}.port")
                } else {
                    format!("{at}.paths[{k}].port")
                };
                match &p.port {
                    None => {
                        return Err(format!(
                            "{field}: each path of an emulated LUN goes through a [[port]]"
                        ));
                    }
                    Some(name) if !ports.iter().any(|x| &x.name == name) => {
                        return Err(format!("{field}: no [[port]] named '{name}'"));
                    }
                    Some(_) => {}
                }
            }
        } else if self.port.is_some()
            || self.model.is_some()
            || self.paths.iter().any(|p| p.port.is_some())
        {
            return Err(format!(
                "{at}.backend: port and model apply to emulated LUNs only: set backend = \"emulated\""
            ));
        }
        if self.backend() == LunBackend::Nbd {
            let uri = "nbd://host[:port]/export or nbd+unix:///export?socket=/path";
            if !self.path.as_deref().is_some_and(is_nbd_uri) {
                return Err(format!(
                    "{at}.path: backend = \"nbd\" needs the export's URI: {uri}"
                ));
            }
            if let Some(k) = self
                .paths
                .iter()
                .position(|p| p.device.as_deref().is_some_and(|d| !is_nbd_uri(d)))
            {
                return Err(format!(
                    "{at}.paths[{k}].device: a path of an NBD LUN is an export URI: {uri}"
                ));
            }
        }
        if self.backend() == LunBackend::Iscsi {
            let uri = "iscsi://host[:port]/target-iqn/lun";
            if !self.path.as_deref().is_some_and(is_iscsi_uri) {
                return Err(format!(
                    "{at}.path: backend = \"iscsi\" needs the target's URI: {uri}"
                ));
            }
            if let Some(k) = self
                .paths
                .iter()
                .position(|p| p.device.as_deref().is_some_and(|d| !is_iscsi_uri(d)))
            {
                return Err(format!(
                    "{at}.paths[{k}].device: a path of an iSCSI LUN is a target URI: {uri}"
                ));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (k, p) in self.resolved_paths().iter().enumerate() {
            if !names.insert(p.name.clone()) {
                return Err(format!(
                    "{at}.paths[{k}].name: '{}' names two paths of this LUN",
                    p.name
                ));
            }
            if p.max_in_flight == 0 {
                return Err(format!("{at}.paths[{k}].max_in_flight: must be at least 1"));
            }
        }
        if let Some(problem) = self.multipath.problem() {
            return Err(format!("{at}.{problem}"));
        }
        if let Some(m) = &self.model {
            check::within(&format!("{at}.model"), m)?;
        }
        if let Some(d) = &self.depth {
            check::within(&format!("{at}.depth"), d)?;
        }
        if self.size.is_some() && self.size_mib.is_some() {
            return Err(format!(
                "{at}.size_mib: give size or size_mib, not both (size = \"256MiB\")"
            ));
        }
        if let Some(size) = self.size_bytes() {
            if size == 0 || size % 512 != 0 {
                return Err(format!(
                    "{at}.size: {size} bytes: must be a positive multiple of 512"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str) -> PortSpec {
        PortSpec {
            name: name.into(),
            queue_limit: 32,
            budget: None,
            latency_us: 0.0,
        }
    }

    #[test]
    fn the_backend_follows_the_store_unless_given() {
        let l: LunSpec = toml::from_str("name = \"a\"\npath = \"/x\"").unwrap();
        assert_eq!(l.backend(), LunBackend::File);
        assert_eq!(l.depth_policy(), DepthPolicy::Fixed { depth: 1024 });
        let l: LunSpec = toml::from_str("name = \"a\"\nport = \"p\"").unwrap();
        assert_eq!(l.backend(), LunBackend::Emulated);
        assert_eq!(l.depth_policy(), DepthPolicy::default());
        let l: LunSpec =
            toml::from_str("name = \"a\"\npath = \"/x\"\nbackend = \"emulated\"\nport = \"p\"")
                .unwrap();
        assert!(l.is_emulated());
        assert!(l.check_in(0, &[port("p")]).is_ok());
    }

    #[test]
    fn one_validator_names_the_field() {
        let cases = [
            ("name = \"a\"", "lun[0].port"),
            (
                "name = \"a\"\nport = \"q\"",
                "lun[0].port: no [[port]] named 'q'",
            ),
            (
                "name = \"a\"\npath = \"/x\"\nmodel = { servers = 4 }",
                "lun[0].backend",
            ),
            (
                "name = \"a\"\nport = \"p\"\ndepth = { policy = \"fixed\", depth = 0 }",
                "lun[0].depth.depth",
            ),
            (
                "name = \"a\"\nport = \"p\"\nsize = 1000",
                "lun[0].size: 1000 bytes",
            ),
            (
                "name = \"a\"\nport = \"p\"\nsize = 4096\nsize_mib = 1",
                "lun[0].size_mib",
            ),
            (
                "name = \"a\"\n[[paths]]\nport = \"p\"\nmax_in_flight = 0",
                "lun[0].paths[0].max_in_flight",
            ),
        ];
        for (text, want) in cases {
            let l: LunSpec = toml::from_str(text).unwrap();
            let e = l.check_in(0, &[port("p")]).unwrap_err();
            assert!(e.starts_with(want), "{text}: {e}");
        }
    }

    #[test]
    fn size_mib_is_size_in_mib() {
        let l: LunSpec = toml::from_str("name = \"a\"\nsize_mib = 64").unwrap();
        assert_eq!(l.size_bytes(), Some(64 << 20));
    }
}
