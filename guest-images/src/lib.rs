//! Guest images weir boots: the Linux test guest, built from Debian packages.
//!
//! The Linux guest is a minimal kernel from Debian's `linux-source-6.1` (`tinyconfig` plus the
//! fragment in `linux/kernel.config`, everything built in) and an initramfs holding
//! `busybox-static`, Debian's `fio` with its shared-library closure, and the `/init` in
//! `linux/init.sh`. [`ImageStore::ensure`] builds it into a directory named after the recipe's
//! hash and reuses it while the recipe is unchanged; a build happens in a temporary directory
//! renamed into place at the end, so a half-built image is never mistaken for a good one.
//!
//! A run hands the guest its fio job by appending a small cpio archive to the initramfs
//! ([`job_initrd`]); the kernel unpacks concatenated archives in order.

mod builder;
mod cpio;
mod recipe;

pub use builder::{
    BuildError, GUEST_IMAGE_ENV, GuestImage, ImageManifest, ImageStore, shared_library_closure,
};
pub use cpio::CpioWriter;
pub use recipe::{ImageRecipe, RecipeError};

/// The `/init` script baked into the Linux test guest.
pub fn recipe_init_script() -> &'static str {
    recipe::INIT_SCRIPT
}

use std::io::Write;

use flate2::Compression;
use flate2::write::GzEncoder;

/// Path of the fio job inside the guest; `linux/init.sh` reads it from there.
pub const GUEST_JOB_PATH: &str = "weir/job.fio";

/// Builds the initrd for one run: the image's initramfs followed by a gzip'd cpio archive
/// that adds the fio job at [`GUEST_JOB_PATH`].
pub fn job_initrd(base_initramfs: &[u8], fio_job: &str) -> std::io::Result<Vec<u8>> {
    let mut archive = CpioWriter::new();
    archive.dir("weir", 0o755);
    archive.file(GUEST_JOB_PATH, 0o644, fio_job.as_bytes());
    let cpio = archive.finish();
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(&cpio)?;
    let tail = gz.finish()?;
    let mut out = Vec::with_capacity(base_initramfs.len() + tail.len() + 4);
    out.extend_from_slice(base_initramfs);
    // The kernel looks for the next archive after 4-byte alignment padding of zeroes.
    while out.len() % 4 != 0 {
        out.push(0);
    }
    out.extend_from_slice(&tail);
    Ok(out)
}
