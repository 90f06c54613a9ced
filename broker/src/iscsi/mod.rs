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

/// The broker's checks of an iSCSI LUN's config, as `(field, problem)`: every URI parses, no
/// thin pool, and an iSCSI URI on a LUN told to be something else is refused.
pub fn check_lun(i: usize, lun: &crate::config::LunConfig) -> Result<(), (String, String)> {
    use crate::config::LunBackend;
    let at = format!("lun[{i}]");
    let iscsi = lun.backend() == LunBackend::Iscsi;
    let uri_at = |field: String, p: &std::path::Path| -> Result<(), (String, String)> {
        let s = p.to_string_lossy();
        match (iscsi, IscsiUri::is_iscsi(&s)) {
            (true, _) => IscsiUri::parse(&s).map(|_| ()).map_err(|e| (field, e)),
            (false, true) => Err((
                field,
                format!(
                    "'{s}' is an iSCSI URI: set backend = \"iscsi\" (or leave backend out) to \
                     use the target"
                ),
            )),
            (false, false) => Ok(()),
        }
    };
    if let Some(p) = &lun.path {
        uri_at(format!("{at}.path"), p)?;
    }
    for (k, p) in lun.paths.iter().enumerate() {
        if let Some(d) = &p.device {
            uri_at(format!("{at}.paths[{k}].device"), d)?;
        }
    }
    if iscsi && lun.pool.is_some() {
        return Err((
            format!("{at}.pool"),
            "an iSCSI LUN cannot be in a thin pool (the pool allocates files); remove pool".into(),
        ));
    }
    Ok(())
}
