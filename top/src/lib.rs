//! `weir top`: esxtop for the broker. Each second it asks the broker's control socket for the
//! newest telemetry, the topology and the path events ([`source`]), turns them into the rows of
//! four views ([`rows`]) — tenants, LUNs, paths, and the topology tree — and shows them on a
//! terminal ([`screen`]) or prints them as CSV or JSON lines ([`batch`], esxtop's `-b`).
//! Every column is defined in `docs/observability.md`.

pub mod batch;
pub mod rows;
pub mod screen;
pub mod source;
pub mod table;

use std::path::PathBuf;
use std::time::Duration;

use crate::rows::{Row, lun_rows, path_rows, tenant_rows, topology_lines};
use crate::source::Snapshot;
use crate::table::Table;

/// The four views, in the order Tab cycles them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Tenants,
    Luns,
    Paths,
    Topology,
}

impl View {
    pub const ALL: [View; 4] = [View::Tenants, View::Luns, View::Paths, View::Topology];

    pub fn name(self) -> &'static str {
        match self {
            View::Tenants => "tenants",
            View::Luns => "luns",
            View::Paths => "paths",
            View::Topology => "topology",
        }
    }

    /// The key that switches to it.
    pub fn key(self) -> char {
        match self {
            View::Tenants => 't',
            View::Luns => 'l',
            View::Paths => 'p',
            View::Topology => 'o',
        }
    }

    pub fn parse(s: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.name() == s)
    }

    /// The view as a table (the topology view is a one-column table of tree lines).
    pub fn table(self, snap: &Snapshot, filter: &str) -> Table {
        match self {
            View::Tenants => Table::of(&tenant_rows(snap), filter),
            View::Luns => Table::of(&lun_rows(snap), filter),
            View::Paths => Table::of(&path_rows(snap), filter),
            View::Topology => Table::of(&topology_lines(snap), filter),
        }
    }
}

/// What `weir top` was asked to do.
#[derive(Debug, Clone)]
pub struct TopOptions {
    pub control: PathBuf,
    /// Seconds between refreshes.
    pub delay: Duration,
    pub view: View,
    /// Batch mode: this many iterations (none: until interrupted).
    pub iterations: Option<u64>,
    pub format: batch::Format,
}

/// A topology line is a row too, so the tree filters like the tables.
impl Row for (String, rows::Mood) {
    const HEADERS: &'static [&'static str] = &["TOPOLOGY"];
    fn cells(&self) -> Vec<rows::Cell> {
        vec![rows::Cell::Text(self.0.clone())]
    }
    fn mood(&self) -> rows::Mood {
        self.1
    }
    fn key(&self) -> String {
        self.0.clone()
    }
}
