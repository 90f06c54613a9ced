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

/// The broker's checks of an NBD LUN's config, as `(field, problem)` (see
/// [`check_network_lun`]).
pub fn check_lun(i: usize, lun: &crate::config::LunConfig) -> Result<(), (String, String)> {
    check_network_lun(
        i,
        lun,
        crate::config::LunBackend::Nbd,
        "NBD",
        "nbd",
        "export",
        NbdUri::is_nbd,
        |s| NbdUri::parse(s).map(|_| ()),
    )
}

/// The checks every network LUN's config gets, as `(field, problem)`: every URI parses, no
/// thin pool (a pool's chunks are files the broker allocates), and a URI of this kind on a LUN
/// told to be something else is refused (it would otherwise create a file of that name).
#[allow(clippy::too_many_arguments)]
pub fn check_network_lun(
    i: usize,
    lun: &crate::config::LunConfig,
    backend: crate::config::LunBackend,
    kind: &str,
    backend_name: &str,
    what: &str,
    is_uri: impl Fn(&str) -> bool,
    parse: impl Fn(&str) -> Result<(), String>,
) -> Result<(), (String, String)> {
    let at = format!("lun[{i}]");
    let network = lun.backend() == backend;
    let uri_at = |field: String, p: &std::path::Path| -> Result<(), (String, String)> {
        let s = p.to_string_lossy();
        match (network, is_uri(&s)) {
            (true, _) => parse(&s).map_err(|e| (field, e)),
            (false, true) => Err((
                field,
                format!(
                    "'{s}' is an {kind} URI: set backend = \"{backend_name}\" (or leave backend \
                     out) to use the {what}"
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
    if network && lun.pool.is_some() {
        return Err((
            format!("{at}.pool"),
            format!(
                "an {kind} LUN cannot be in a thin pool (the pool allocates files); remove pool"
            ),
        ));
    }
    Ok(())
}
