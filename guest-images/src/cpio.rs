//! A writer for the "newc" cpio format the Linux initramfs unpacker reads.
//!
//! Written here rather than shelling out to `cpio` so that device nodes (`/dev/console`) can be
//! archived without root, and the archive is byte-for-byte reproducible (fixed mtimes and
//! inode numbers). Format: `Documentation/driver-api/early-userspace/buffer-format.rst`.

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Accumulates entries of a newc archive in memory.
#[derive(Debug, Default)]
pub struct CpioWriter {
    buf: Vec<u8>,
    next_ino: u32,
}

impl CpioWriter {
    pub fn new() -> Self {
        CpioWriter {
            buf: Vec::new(),
            next_ino: 1,
        }
    }

    /// Adds a directory. Parents must be added first.
    pub fn dir(&mut self, path: &str, perm: u32) {
        self.entry(path, S_IFDIR | perm, 2, (0, 0), &[]);
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) {
        self.entry(path, S_IFREG | perm, 1, (0, 0), data);
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes());
    }

    /// Adds a character device node.
    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) {
        self.entry(path, S_IFCHR | perm, 1, (major, minor), &[]);
    }

    /// Appends the trailer and returns the archive.
    pub fn finish(mut self) -> Vec<u8> {
        self.header("TRAILER!!!", 0, 0, (0, 0), 0, 0);
        self.pad_to(4);
        self.buf
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        let path = path.trim_start_matches('/');
        let ino = self.next_ino;
        self.next_ino += 1;
        self.header(path, ino, mode, rdev, nlink, data.len() as u32);
        self.buf.extend_from_slice(data);
        self.pad_to(4);
    }

    fn header(&mut self, name: &str, ino: u32, mode: u32, rdev: (u32, u32), nlink: u32, size: u32) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: fixed for reproducible archives
            size,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad_to(4);
    }

    fn pad_to(&mut self, align: usize) {
        while self.buf.len() % align != 0 {
            self.buf.push(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_is_aligned_and_terminated() {
        let mut w = CpioWriter::new();
        w.dir("weir", 0o755);
        w.file("weir/job.fio", 0o644, b"[job]\nrw=read\n");
        let out = w.finish();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("weir/job.fio\0"));
        assert!(text.contains("[job]\nrw=read\n"));
        assert!(text.contains("TRAILER!!!\0"));
        // Second header starts 4-byte aligned right after the first entry.
        let second = text
            .find("070701")
            .and_then(|first| text[first + 6..].find("070701"));
        assert_eq!(second.map(|s| (s + 6) % 4), Some(0));
    }

    /// The system's own cpio (installed by scripts/install-deps.sh) must list what we wrote.
    #[test]
    fn system_cpio_reads_our_archive() {
        let mut w = CpioWriter::new();
        w.dir("bin", 0o755);
        w.file("bin/hello", 0o755, b"#!/bin/sh\necho hi\n");
        w.symlink("bin/sh", "busybox");
        w.char_device("console", 0o600, 5, 1);
        let archive = w.finish();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).expect("write");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("cpio -t -v < {}", path.display()))
            .output()
            .expect("run cpio");
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("bin/hello"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with('c') && l.contains("console")),
            "{listing}"
        );
    }
}
