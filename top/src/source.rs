//! Where `weir top` reads from: the broker's control socket (`docs/broker.md`), asked each
//! refresh for the newest per-second telemetry sample, the topology (policies, tenants, paths)
//! and the path events. A broker that is down or restarting is an answer too
//! ([`Connection::Unreachable`]): the screen says so and keeps the last figures it had.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use weir_broker::control::{LunTopology, query};
use weir_broker::telemetry::TelemetrySample;
use weir_broker::thin::PoolSnapshot;

#[derive(Debug, Error)]
pub enum SourceError {
    #[error("cannot reach the broker at {path}: {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker at {path} answered '{command}' with something unexpected: {message}")]
    Answer {
        path: PathBuf,
        command: String,
        message: String,
    },
}

/// One path event (`failed`, `returning`, `restored`, `probe-failed`), as `paths` gives it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct PathEvent {
    pub at_s: f64,
    pub path: String,
    pub what: String,
    pub why: String,
}

/// Everything one refresh shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The newest per-second sample (none in the broker's first second).
    pub sample: Option<TelemetrySample>,
    pub luns: Vec<LunTopology>,
    /// Per LUN, its path events, oldest first.
    pub events: HashMap<String, Vec<PathEvent>>,
    /// Thin pools.
    pub pools: Vec<PoolSnapshot>,
}

/// The state of the link to the broker, for the header line.
#[derive(Debug, Clone, PartialEq)]
pub enum Connection {
    Connected,
    /// The last fetch failed; the figures shown are the last good ones.
    Unreachable {
        error: String,
        since_s: f64,
    },
    /// It failed before, or its clock went back (a restarted broker), and answers again;
    /// `at_s` on `weir top`'s own clock.
    Reconnected {
        at_s: f64,
    },
}

/// How long the header keeps saying "reconnected".
pub const RECONNECTED_SHOWN_S: f64 = 10.0;

/// Reads snapshots from one control socket.
pub struct ControlSource {
    path: PathBuf,
}

impl ControlSource {
    pub fn new(path: &Path) -> Self {
        ControlSource {
            path: path.to_path_buf(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ask<T: for<'de> Deserialize<'de>>(&self, command: &str) -> Result<T, SourceError> {
        let value = query(&self.path, command).map_err(|source| SourceError::Unreachable {
            path: self.path.clone(),
            source,
        })?;
        let answer_error = |message: String| SourceError::Answer {
            path: self.path.clone(),
            command: command.to_string(),
            message,
        };
        if let Some(e) = value.get("error") {
            return Err(answer_error(e.to_string()));
        }
        serde_json::from_value(value).map_err(|e| answer_error(e.to_string()))
    }

    pub fn fetch(&self) -> Result<Snapshot, SourceError> {
        let mut samples: Vec<TelemetrySample> = self.ask("telemetry 1")?;
        Ok(Snapshot {
            sample: samples.pop(),
            luns: self.ask("topology")?,
            events: self.ask("paths")?,
            pools: self.ask("pools")?,
        })
    }
}
