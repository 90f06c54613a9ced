//! A LUN's backing store: a regular file or a block device, opened for direct I/O when it
//! allows it; or an NBD export (`crate::nbd`), whose connections the queue workers own.
//!
//! Two descriptors are kept: one with O_DIRECT (the data path, zero-copy into guest memory,
//! no host page cache) and one without, used when the store refuses O_DIRECT or a guest's
//! buffer is not aligned for it. Linux keeps the two coherent: a direct write invalidates the
//! cached pages it covers, a direct read first writes back dirty cached pages.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::config::{LunBackend, LunConfig};
use crate::iscsi::{IscsiLun, IscsiUri};
use crate::nbd::{BlockingClient, NbdExport, NbdUri};
use crate::request::SECTOR_SIZE;

#[derive(Debug, Error)]
pub enum LunError {
    #[error("LUN '{lun}': cannot open {path}: {source}")]
    Open {
        lun: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "LUN '{lun}': {path} holds {actual} bytes, less than the configured size {wanted}; grow it or lower lun.size"
    )]
    TooSmall {
        lun: String,
        path: PathBuf,
        actual: u64,
        wanted: u64,
    },
    #[error("LUN '{lun}': no path: give the backing file or block device")]
    NoPath { lun: String },
    #[error("LUN '{lun}': {path} does not exist; give lun.size so the broker can create it")]
    MissingNoSize { lun: String, path: PathBuf },
    #[error(
        "LUN '{lun}': {path} is in use by another process (another weir broker, or QEMU): \
         two writers would corrupt it; stop the other or give this LUN another image"
    )]
    Locked { lun: String, path: PathBuf },
    #[error("LUN '{lun}': {path} has size 0")]
    Empty { lun: String, path: PathBuf },
    #[error("LUN '{lun}': {why}")]
    Nbd { lun: String, why: String },
    #[error("LUN '{lun}': iSCSI: {why}")]
    Iscsi { lun: String, why: String },
    #[error("LUN '{lun}': {context}: {source}")]
    Io {
        lun: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// An open backing store.
#[derive(Debug)]
pub struct LunStore {
    pub name: String,
    pub path: PathBuf,
    /// Bytes the guest sees (a multiple of 512).
    pub size_bytes: u64,
    pub read_only: bool,
    pub block_device: bool,
    backing: Backing,
    /// Why O_DIRECT is not in use, when it is not.
    pub direct_unavailable: Option<String>,
}

#[derive(Debug)]
enum Backing {
    Files {
        /// O_DIRECT descriptor, when the store accepted O_DIRECT.
        direct: Option<File>,
        buffered: File,
        /// One pair of descriptors per path (multipath: each path its own way to the store).
        paths: Vec<PathFds>,
    },
    /// The export and each path's URI as configured.
    Nbd {
        export: NbdExport,
        devices: Vec<PathBuf>,
    },
    /// The target's LUN and each path's URI as configured.
    Iscsi {
        lun: IscsiLun,
        devices: Vec<PathBuf>,
    },
}

/// A path's own descriptors onto the store.
#[derive(Debug)]
struct PathFds {
    device: PathBuf,
    direct: Option<File>,
    buffered: File,
}

/// A network LUN's URI per path (a path's `device`, else the LUN's `path`), parsed, and the
/// devices as configured.
#[allow(clippy::type_complexity)]
fn path_uris<U>(
    cfg: &LunConfig,
    path: &Path,
    parse: impl Fn(&str) -> Result<U, String>,
) -> Result<(Vec<std::sync::Arc<U>>, Vec<PathBuf>), String> {
    let mut uris = Vec::new();
    let mut devices = Vec::new();
    for p in cfg.resolved_paths() {
        let device = p.device.clone().unwrap_or_else(|| path.to_path_buf());
        uris.push(std::sync::Arc::new(parse(&device.to_string_lossy())?));
        devices.push(device);
    }
    Ok((uris, devices))
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl LunStore {
    pub fn open(cfg: &LunConfig) -> Result<Self, LunError> {
        let name = cfg.name.clone();
        let Some(path) = cfg.path.clone() else {
            return Err(LunError::NoPath { lun: name });
        };
        match cfg.backend() {
            LunBackend::Nbd => return Self::open_nbd(cfg, path),
            LunBackend::Iscsi => return Self::open_iscsi(cfg, path),
            _ => {}
        }
        let open_err = |source| LunError::Open {
            lun: name.clone(),
            path: path.clone(),
            source,
        };
        let exists = path.exists();
        if !exists && cfg.size_bytes().is_none() {
            return Err(LunError::MissingNoSize { lun: name, path });
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(!cfg.read_only);
        if !exists {
            opts.create(true);
        }
        let buffered = opts.open(&path).map_err(open_err)?;
        match lock_image(&buffered, cfg.read_only) {
            Ok(()) => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES)) => {
                return Err(LunError::Locked { lun: name, path });
            }
            Err(source) => {
                return Err(LunError::Io {
                    lun: name,
                    context: format!("lock {}", path.display()),
                    source,
                });
            }
        }
        let meta = buffered.metadata().map_err(open_err)?;
        let block_device = meta.file_type().is_block_device();
        let mut actual = if block_device {
            block_device_size(buffered.as_raw_fd()).map_err(|source| LunError::Io {
                lun: name.clone(),
                context: format!("BLKGETSIZE64 on {}", path.display()),
                source,
            })?
        } else {
            meta.len()
        };
        if let Some(wanted) = cfg.size_bytes() {
            if !block_device && actual < wanted {
                if exists && actual > 0 {
                    return Err(LunError::TooSmall {
                        lun: name,
                        path,
                        actual,
                        wanted,
                    });
                }
                buffered.set_len(wanted).map_err(|source| LunError::Io {
                    lun: name.clone(),
                    context: format!("size new file {} to {wanted} bytes", path.display()),
                    source,
                })?;
                actual = wanted;
            } else if actual < wanted {
                return Err(LunError::TooSmall {
                    lun: name,
                    path,
                    actual,
                    wanted,
                });
            }
        }
        let size_bytes = cfg.size_bytes().unwrap_or(actual) / SECTOR_SIZE * SECTOR_SIZE;
        if size_bytes == 0 {
            return Err(LunError::Empty { lun: name, path });
        }
        let (direct, direct_unavailable) = if cfg.direct {
            match opts
                .clone()
                .create(false)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
            {
                Ok(f) => (Some(f), None),
                Err(e) => {
                    let why = format!("O_DIRECT refused ({e}); using the page cache");
                    log::warn!("LUN '{name}' on {}: {why}", path.display());
                    (None, Some(why))
                }
            }
        } else {
            (None, Some("direct = false in the config".to_string()))
        };
        let mut paths = Vec::new();
        for p in cfg.resolved_paths() {
            // A path without its own device opens the LUN's.
            let device = p.device.clone().unwrap_or_else(|| path.clone());
            let open_path = |custom: i32| {
                let mut o = OpenOptions::new();
                o.read(true).write(!cfg.read_only).custom_flags(custom);
                o.open(&device)
            };
            let buffered = open_path(0).map_err(|source| LunError::Open {
                lun: name.clone(),
                path: device.clone(),
                source,
            })?;
            let direct = if direct.is_some() {
                open_path(libc::O_DIRECT).ok()
            } else {
                None
            };
            paths.push(PathFds {
                device,
                direct,
                buffered,
            });
        }
        Ok(LunStore {
            name,
            path,
            size_bytes,
            read_only: cfg.read_only,
            block_device,
            backing: Backing::Files {
                direct,
                buffered,
                paths,
            },
            direct_unavailable,
        })
    }

    /// An NBD LUN: each path's export is asked for its size and flags (at least one must
    /// answer now; a path that does not is failed by its first request and checked back).
    fn open_nbd(cfg: &LunConfig, path: PathBuf) -> Result<Self, LunError> {
        let name = cfg.name.clone();
        let fail = |why: String| LunError::Nbd {
            lun: name.clone(),
            why,
        };
        let (uris, devices) = path_uris(cfg, &path, NbdUri::parse).map_err(&fail)?;
        let mut info = None;
        let mut errors = Vec::new();
        for uri in &uris {
            match BlockingClient::connect(uri, crate::nbd::OPEN_TIMEOUT) {
                Ok(c) => {
                    let i = c.info;
                    c.disconnect();
                    match info {
                        None => info = Some(i),
                        Some(first) if first.size != i.size => {
                            return Err(fail(format!(
                                "{uri} holds {} bytes and {} holds {}: the paths are not one export",
                                i.size, uris[0], first.size
                            )));
                        }
                        Some(_) => {}
                    }
                }
                Err(e) => {
                    log::warn!("LUN '{name}': {e}; the path starts failed");
                    errors.push(e.to_string());
                }
            }
        }
        let Some(info) = info else {
            return Err(fail(format!("no path answers: {}", errors.join("; "))));
        };
        if uris.len() > 1 && !info.can(crate::nbd::proto::TFLAG_CAN_MULTI_CONN) {
            return Err(fail(format!(
                "{} does not advertise multi-conn, so a flush on one connection need not cover \
                 writes on another: give the LUN one path, or serve the export with multi-conn \
                 (nbdkit does; qemu-storage-daemon: --export nbd,...,multi-conn=on)",
                uris[0]
            )));
        }
        if info.read_only() && !cfg.read_only {
            return Err(fail(format!(
                "{} is read-only: set read_only = true on the LUN",
                uris[0]
            )));
        }
        if let Some(wanted) = cfg.size_bytes() {
            if info.size < wanted {
                return Err(LunError::TooSmall {
                    lun: name,
                    path,
                    actual: info.size,
                    wanted,
                });
            }
        }
        let size_bytes = cfg.size_bytes().unwrap_or(info.size) / SECTOR_SIZE * SECTOR_SIZE;
        if size_bytes == 0 {
            return Err(LunError::Empty { lun: name, path });
        }
        Ok(LunStore {
            name,
            path,
            size_bytes,
            read_only: cfg.read_only,
            block_device: false,
            backing: Backing::Nbd {
                export: NbdExport { paths: uris, info },
                devices,
            },
            direct_unavailable: Some("an NBD export: the server decides caching".into()),
        })
    }

    /// An iSCSI LUN: each path logs in and reads the LUN's capacity (at least one must answer
    /// now; a path that does not is failed by its first command and checked back).
    fn open_iscsi(cfg: &LunConfig, path: PathBuf) -> Result<Self, LunError> {
        let name = cfg.name.clone();
        let fail = |why: String| LunError::Iscsi {
            lun: name.clone(),
            why,
        };
        let (uris, devices) = path_uris(cfg, &path, IscsiUri::parse).map_err(&fail)?;
        crate::iscsi::ffi::lib().map_err(&fail)?;
        let mut shape: Option<(u64, u32, bool)> = None;
        let mut errors = Vec::new();
        for uri in &uris {
            match crate::iscsi::session::inquire(uri) {
                Ok(s) => match shape {
                    None => shape = Some(s),
                    Some(first) if (first.0, first.1) != (s.0, s.1) => {
                        return Err(fail(format!(
                            "{uri} has {} blocks of {} bytes and {} has {} of {}: the paths are \
                             not one LUN",
                            s.0, s.1, uris[0], first.0, first.1
                        )));
                    }
                    Some(_) => {}
                },
                Err(e) => {
                    log::warn!("LUN '{name}': {e}; the path starts failed");
                    errors.push(e);
                }
            }
        }
        let Some((blocks, block_size, thin)) = shape else {
            return Err(fail(format!("no path answers: {}", errors.join("; "))));
        };
        if block_size != SECTOR_SIZE as u32 {
            return Err(fail(format!(
                "the LUN's blocks are {block_size} bytes; the broker serves iSCSI LUNs of \
                 512-byte blocks only (a guest's 512-byte requests could not be sent)"
            )));
        }
        let lun = IscsiLun {
            paths: uris,
            blocks,
            block_size,
            thin,
        };
        let actual = lun.size_bytes();
        if let Some(wanted) = cfg.size_bytes() {
            if actual < wanted {
                return Err(LunError::TooSmall {
                    lun: name,
                    path,
                    actual,
                    wanted,
                });
            }
        }
        let size_bytes = cfg.size_bytes().unwrap_or(actual) / SECTOR_SIZE * SECTOR_SIZE;
        if size_bytes == 0 {
            return Err(LunError::Empty { lun: name, path });
        }
        Ok(LunStore {
            name,
            path,
            size_bytes,
            read_only: cfg.read_only,
            block_device: false,
            backing: Backing::Iscsi { lun, devices },
            direct_unavailable: Some("an iSCSI LUN: the target decides caching".into()),
        })
    }

    /// The export, when this LUN is an NBD export.
    pub fn nbd(&self) -> Option<&NbdExport> {
        match &self.backing {
            Backing::Nbd { export, .. } => Some(export),
            _ => None,
        }
    }

    /// The target's LUN, when this LUN is an iSCSI LUN.
    pub fn iscsi(&self) -> Option<&IscsiLun> {
        match &self.backing {
            Backing::Iscsi { lun, .. } => Some(lun),
            _ => None,
        }
    }

    /// `file` or `nbd` (the dispatcher says `emulated` over a file).
    pub fn kind(&self) -> &'static str {
        match &self.backing {
            Backing::Nbd { .. } => "nbd",
            Backing::Iscsi { .. } => "iscsi",
            Backing::Files { .. } => "file",
        }
    }

    /// The descriptor for data I/O through path `path`: direct when available and the
    /// request is aligned for it.
    pub fn path_data_fd(&self, path: usize, aligned: bool) -> (RawFd, bool) {
        let Backing::Files { paths, .. } = &self.backing else {
            return (-1, false);
        };
        match paths.get(path) {
            Some(p) => match &p.direct {
                Some(f) if aligned => (f.as_raw_fd(), true),
                _ => (p.buffered.as_raw_fd(), false),
            },
            None => self.data_fd(aligned),
        }
    }

    /// The descriptor for a path's FLUSH, DISCARD and WRITE_ZEROES: its buffered one (an
    /// fdatasync through it flushes the page cache too; fallocate and discard take no
    /// alignment).
    pub fn path_control_fd(&self, path: usize) -> RawFd {
        let Backing::Files {
            buffered, paths, ..
        } = &self.backing
        else {
            return -1;
        };
        paths
            .get(path)
            .map_or(buffered.as_raw_fd(), |p| p.buffered.as_raw_fd())
    }

    /// The device path `path` opens.
    pub fn path_device(&self, path: usize) -> Option<&Path> {
        match &self.backing {
            Backing::Files { paths, .. } => paths.get(path).map(|p| p.device.as_path()),
            Backing::Nbd { devices, .. } | Backing::Iscsi { devices, .. } => {
                devices.get(path).map(PathBuf::as_path)
            }
        }
    }

    /// The path checker's own descriptor onto path `path` (a dup, so a probe that outlives
    /// the LUN reads from a descriptor nobody reuses): the direct one when the store took
    /// O_DIRECT, so the page cache cannot answer for a dead device (`crate::path_probe`).
    pub fn probe_file(&self, path: usize) -> std::io::Result<File> {
        let Backing::Files { paths, .. } = &self.backing else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a network path is probed over the network",
            ));
        };
        let p = paths.get(path).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no path {path}"))
        })?;
        p.direct.as_ref().unwrap_or(&p.buffered).try_clone()
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.size_bytes / SECTOR_SIZE
    }

    /// The descriptor for data I/O: direct when available and the request is aligned for it.
    pub fn data_fd(&self, aligned: bool) -> (RawFd, bool) {
        let Backing::Files {
            direct, buffered, ..
        } = &self.backing
        else {
            return (-1, false);
        };
        match direct {
            Some(f) if aligned => (f.as_raw_fd(), true),
            _ => (buffered.as_raw_fd(), false),
        }
    }

    /// Releases the image lock before the broker exits (after its last I/O was answered), so
    /// a broker taking over can open the image at once.
    pub fn release_lock(&self) {
        if let Backing::Files { buffered, .. } = &self.backing {
            unlock_image(buffered);
        }
    }

    pub fn direct_io(&self) -> bool {
        matches!(
            &self.backing,
            Backing::Files {
                direct: Some(_),
                ..
            }
        )
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes an open-file-description lock on the whole image: exclusive for a writable LUN,
/// shared for a read-only one. It lives as long as the descriptor (the broker's lifetime, or
/// until the LUN is dropped) and, unlike a process lock, is not lost when another descriptor
/// of the same file closes. QEMU takes OFD locks on its images too, so a broker and a QEMU
/// writing one image refuse each other as well.
fn lock_image(file: &File, read_only: bool) -> std::io::Result<()> {
    // SAFETY: an all-zero flock is a valid value (start 0, length 0: the whole file).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if read_only {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the flock `lock` points at, which outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the image's lock up (a broker handing over, its I/O all answered): at once, where
/// closing the descriptors releases it only when the kernel drops the last reference (an
/// io_uring instance still being torn down holds one).
fn unlock_image(file: &File) {
    // SAFETY: an all-zero flock is a valid value (start 0, length 0: the whole file).
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_UNLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the flock `lock` points at, which outlives the call.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
}

fn block_device_size(fd: RawFd) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(fd, BLKGETSIZE64, &mut size as *mut u64) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(path: &Path, size: Option<u64>) -> LunConfig {
        LunConfig::file("l", path, size, false)
    }

    #[test]
    fn creates_a_missing_file_with_the_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("new.img");
        let lun = LunStore::open(&cfg(&p, Some(1 << 20))).unwrap();
        assert_eq!(lun.size_bytes, 1 << 20);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1 << 20);
        assert!(
            lun.direct_io(),
            "O_DIRECT works on this machine's filesystems"
        );
    }

    #[test]
    fn a_second_writer_of_one_image_is_refused_and_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("one.img");
        let first = LunStore::open(&cfg(&p, Some(1 << 20))).unwrap();
        let e = LunStore::open(&cfg(&p, Some(1 << 20))).unwrap_err();
        assert!(matches!(e, LunError::Locked { .. }), "{e}");
        assert!(e.to_string().contains("in use by another process"), "{e}");
        drop(first);
        let ro = |p: &Path| LunConfig::file("l", p, None, true);
        let a = LunStore::open(&ro(&p)).unwrap();
        let _b = LunStore::open(&ro(&p)).unwrap();
        assert!(matches!(
            LunStore::open(&cfg(&p, None)),
            Err(LunError::Locked { .. })
        ));
        drop(a);
    }

    #[test]
    fn refuses_a_missing_file_without_size_and_a_short_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("absent.img");
        assert!(matches!(
            LunStore::open(&cfg(&p, None)),
            Err(LunError::MissingNoSize { .. })
        ));
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let e = LunStore::open(&cfg(&p, Some(1 << 20))).unwrap_err();
        assert!(matches!(e, LunError::TooSmall { .. }), "{e}");
        assert!(e.to_string().contains("lun.size"));
    }

    #[test]
    fn an_nbd_lun_is_asked_for_its_size_and_refused_what_it_cannot_be() {
        if let Some(why) = crate::nbd::nbdkit::missing() {
            assert!(std::env::var("WEIR_REQUIRE_KVM").is_err(), "{why}");
            eprintln!("SKIPPED: {why}");
            return;
        }
        use crate::nbd::nbdkit::Nbdkit;
        let dir = tempfile::tempdir().unwrap();
        let nbd = |p: &Path| {
            let uri = format!("nbd+unix:///?socket={}", p.display());
            let mut c = cfg(Path::new(&uri), None);
            c.backend = None;
            c
        };
        let (rw, ro, single) = (
            dir.path().join("rw.sock"),
            dir.path().join("ro.sock"),
            dir.path().join("single.sock"),
        );
        let _rw = Nbdkit::unix(&rw, &["memory", "3M"]).unwrap();
        let _ro = Nbdkit::unix(&ro, &["-r", "memory", "1M"]).unwrap();
        let _single = Nbdkit::unix(
            &single,
            &[
                "--filter=multi-conn",
                "memory",
                "1M",
                "multi-conn-mode=disable",
            ],
        )
        .unwrap();
        let lun = LunStore::open(&nbd(&rw)).unwrap();
        assert_eq!((lun.size_bytes, lun.kind()), (3 << 20, "nbd"));
        assert!(lun.nbd().is_some());
        let mut big = nbd(&rw);
        big.size = Some(crate::config::ByteSize(4 << 20));
        assert!(matches!(
            LunStore::open(&big),
            Err(LunError::TooSmall { .. })
        ));
        let e = LunStore::open(&nbd(&ro)).unwrap_err().to_string();
        assert!(e.contains("read_only = true"), "{e}");
        let mut two = nbd(&single);
        two.paths = vec![
            toml::from_str("name = 'a'").unwrap(),
            toml::from_str("name = 'b'").unwrap(),
        ];
        let e = LunStore::open(&two).unwrap_err().to_string();
        assert!(e.contains("multi-conn") && e.contains("one path"), "{e}");
        let e = LunStore::open(&nbd(&dir.path().join("nobody.sock")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no path answers") && e.contains("cannot connect"),
            "{e}"
        );
    }
}
