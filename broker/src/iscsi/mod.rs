//! The iSCSI backend: a LUN of an iSCSI target (tgt, istgt, LIO, an array), spoken to through
//! libiscsi from each queue worker's io_uring.
//!
//! - `ffi`: libiscsi, loaded at run time, its few functions declared by hand.
//! - `uri`: `iscsi://host[:port]/target-iqn/lun`.
//! - `session`: one session on the data path: commands, answers, failure.
//! - `targets`: real tgtd and istgt daemons, for tests and benchmarks.
//!
//! Each path of an iSCSI LUN is a URI (the LUN's `path`, or a path's own `device`: the same
//! target through several portals, or several targets of one backing store); each queue worker
//! logs in once per path on first use. TASK SET FULL and BUSY are the LUN window's congestion
//! signal (docs/network.md).

pub mod ffi;
pub mod session;
pub mod targets;
pub mod uri;

use std::sync::Arc;

pub use uri::IscsiUri;

/// An iSCSI LUN, as found when the broker opened it.
#[derive(Debug, Clone)]
pub struct IscsiLun {
    /// One URI per path.
    pub paths: Vec<Arc<IscsiUri>>,
    pub blocks: u64,
    pub block_size: u32,
    /// The LUN is thin-provisioned (READ CAPACITY's LBPME): it takes UNMAP.
    pub thin: bool,
}

impl IscsiLun {
    pub fn size_bytes(&self) -> u64 {
        self.blocks.saturating_mul(u64::from(self.block_size))
    }
}

/// The broker's checks of an iSCSI LUN's config, as `(field, problem)` (see
/// [`crate::nbd::check_network_lun`]).
pub fn check_lun(i: usize, lun: &crate::config::LunConfig) -> Result<(), (String, String)> {
    crate::nbd::check_network_lun(
        i,
        lun,
        crate::config::LunBackend::Iscsi,
        "iSCSI",
        "iscsi",
        "target",
        IscsiUri::is_iscsi,
        |s| IscsiUri::parse(s).map(|_| ()),
    )
}
