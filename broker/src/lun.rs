//! A LUN's backing store: a regular file or a block device, opened for direct I/O when it
//! allows it.
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

use crate::config::LunConfig;
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
    /// O_DIRECT descriptor, when the store accepted O_DIRECT.
    direct: Option<File>,
    buffered: File,
    /// Why O_DIRECT is not in use, when it is not.
    pub direct_unavailable: Option<String>,
    /// One pair of descriptors per path (multipath: each path its own way to the store).
    paths: Vec<PathFds>,
}

/// A path's own descriptors onto the store.
#[derive(Debug)]
struct PathFds {
    device: PathBuf,
    direct: Option<File>,
    buffered: File,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

impl LunStore {
    pub fn open(cfg: &LunConfig) -> Result<Self, LunError> {
        let name = cfg.name.clone();
        let Some(path) = cfg.path.clone() else {
            return Err(LunError::NoPath { lun: name });
        };
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
            direct,
            buffered,
            direct_unavailable,
            paths,
        })
    }

    /// The descriptor for data I/O through path `path`: direct when available and the
    /// request is aligned for it.
    pub fn path_data_fd(&self, path: usize, aligned: bool) -> (RawFd, bool) {
        match self.paths.get(path) {
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
        self.paths
            .get(path)
            .map_or(self.buffered.as_raw_fd(), |p| p.buffered.as_raw_fd())
    }

    /// The device path `path` opens.
    pub fn path_device(&self, path: usize) -> Option<&Path> {
        self.paths.get(path).map(|p| p.device.as_path())
    }

    /// The path checker's own descriptor onto path `path` (a dup, so a probe that outlives
    /// the LUN reads from a descriptor nobody reuses): the direct one when the store took
    /// O_DIRECT, so the page cache cannot answer for a dead device (`crate::path_probe`).
    pub fn probe_file(&self, path: usize) -> std::io::Result<File> {
        let p = self.paths.get(path).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no path {path}"))
        })?;
        p.direct.as_ref().unwrap_or(&p.buffered).try_clone()
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.size_bytes / SECTOR_SIZE
    }

    /// The descriptor for data I/O: direct when available and the request is aligned for it.
    pub fn data_fd(&self, aligned: bool) -> (RawFd, bool) {
        match &self.direct {
            Some(f) if aligned => (f.as_raw_fd(), true),
            _ => (self.buffered.as_raw_fd(), false),
        }
    }

    /// Releases the image lock before the broker exits (after its last I/O was answered), so
    /// a broker taking over can open the image at once.
    pub fn release_lock(&self) {
        unlock_image(&self.buffered);
    }

    pub fn direct_io(&self) -> bool {
        self.direct.is_some()
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
}
