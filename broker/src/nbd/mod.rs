//! The NBD backend: a LUN served by a Network Block Device server (nbdkit, qemu-nbd,
//! qemu-storage-daemon, nbd-server), spoken to natively from each queue worker's io_uring.
//!
//! - [`uri`]: `nbd://host:port/export` and `nbd+unix:///export?socket=...`.
//! - [`proto`]: the wire protocol: handshake, request and reply headers, a blocking client
//!   (the path checker's probe).
//! - [`conn`]: one connection on the data path: pipelined, zero-copy, failing over.
//! - [`nbdkit`]: a real nbdkit as a child process, for tests and benchmarks.
//!
//! Each path of an NBD LUN is an export URI (the LUN's `path`, or a path's own `device`: two
//! connections to one server, or two servers of one export); each queue worker opens its own
//! connection per path on first use. Several connections are one export only when the server
//! says so (`NBD_FLAG_CAN_MULTI_CONN`: a flush on one covers writes completed on all), so a
//! LUN with several paths needs it (docs/network.md).

pub mod conn;
pub mod nbdkit;
pub mod proto;
pub mod uri;

use std::sync::Arc;
use std::time::Duration;

pub use proto::{BlockingClient, ExportInfo, NbdError};
pub use uri::NbdUri;

/// The longest the LUN's first handshake (at broker start) may take.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// An NBD LUN's export, as found when the broker opened it.
#[derive(Debug, Clone)]
pub struct NbdExport {
    /// One URI per path.
    pub paths: Vec<Arc<NbdUri>>,
    /// What the first path's server said.
    pub info: ExportInfo,
}

/// The broker's checks of an NBD LUN's config, as `(field, problem)`: every URI parses, no
/// thin pool (a pool's chunks are files the broker allocates). Also refuses an NBD URI on a
/// LUN told to be a file, which would otherwise create a file of that name.
pub fn check_lun(i: usize, lun: &crate::config::LunConfig) -> Result<(), (String, String)> {
    use crate::config::LunBackend;
    let at = format!("lun[{i}]");
    let nbd = lun.backend() == LunBackend::Nbd;
    let uri_at = |field: String, p: &std::path::Path| -> Result<(), (String, String)> {
        let s = p.to_string_lossy();
        match (nbd, NbdUri::is_nbd(&s)) {
            (true, _) => NbdUri::parse(&s).map(|_| ()).map_err(|e| (field, e)),
            (false, true) => Err((
                field,
                format!(
                    "'{s}' is an NBD URI: set backend = \"nbd\" (or leave backend out) to use the export"
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
    if nbd && lun.pool.is_some() {
        return Err((
            format!("{at}.pool"),
            "an NBD LUN cannot be in a thin pool (the pool allocates files); remove pool".into(),
        ));
    }
    Ok(())
}
