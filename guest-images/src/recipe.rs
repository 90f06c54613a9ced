//! What goes into the Linux test guest, and the hash that names a built image.
//!
//! The hash covers everything that changes the bytes of the image: the kernel config fragment,
//! the init script, the builder's own version, and the exact Debian versions of the packages the
//! image is built from. Upgrading `fio` on the host therefore yields a new image directory
//! rather than a stale one.

use std::process::Command;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// Bumped when the build procedure changes in a way the inputs below do not show.
const BUILDER_REVISION: u32 = 1;

/// The kernel config fragment merged over `make tinyconfig`.
pub const KERNEL_CONFIG_FRAGMENT: &str = include_str!("../linux/kernel.config");
/// The initramfs `/init`.
pub const INIT_SCRIPT: &str = include_str!("../linux/init.sh");

/// Debian packages the image is built from.
pub const KERNEL_SOURCE_PACKAGE: &str = "linux-source-6.1";
pub const KERNEL_SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
pub const SOURCE_PACKAGES: [&str; 3] = [KERNEL_SOURCE_PACKAGE, "busybox-static", "fio"];

#[derive(Debug, Error)]
pub enum RecipeError {
    #[error(
        "Debian package '{0}' is not installed; run scripts/install-deps.sh \
         (or: apt-get install {0})"
    )]
    MissingPackage(String),
    #[error("cannot run dpkg-query to read package versions: {0} (is this Debian or Ubuntu?)")]
    Dpkg(#[source] std::io::Error),
}

/// The inputs of one image build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecipe {
    /// `(package, version)` for each of [`SOURCE_PACKAGES`].
    pub package_versions: Vec<(String, String)>,
}

impl ImageRecipe {
    /// Reads the installed versions of the source packages.
    pub fn from_host() -> Result<Self, RecipeError> {
        let mut package_versions = Vec::new();
        for pkg in SOURCE_PACKAGES {
            package_versions.push((pkg.to_string(), installed_version(pkg)?));
        }
        Ok(ImageRecipe { package_versions })
    }

    /// Hex SHA-256 prefix naming the kernel build: only what changes the kernel's bytes, so
    /// an initramfs change does not rebuild the kernel.
    pub fn kernel_hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("builder-revision {BUILDER_REVISION}\n"));
        for (pkg, ver) in &self.package_versions {
            if pkg == KERNEL_SOURCE_PACKAGE {
                h.update(format!("package {pkg} {ver}\n"));
            }
        }
        h.update(b"kernel.config\n");
        h.update(KERNEL_CONFIG_FRAGMENT);
        hex8(&h.finalize())
    }

    /// Hex SHA-256 prefix naming the image directory.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("builder-revision {BUILDER_REVISION}\n"));
        for (pkg, ver) in &self.package_versions {
            h.update(format!("package {pkg} {ver}\n"));
        }
        h.update(b"kernel.config\n");
        h.update(KERNEL_CONFIG_FRAGMENT);
        h.update(b"init.sh\n");
        h.update(INIT_SCRIPT);
        hex8(&h.finalize())
    }
}

fn hex8(digest: &[u8]) -> String {
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn installed_version(pkg: &str) -> Result<String, RecipeError> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Version}", pkg])
        .output()
        .map_err(RecipeError::Dpkg)?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_once('\t') {
        Some((status, version)) if out.status.success() && status.ends_with(" installed") => {
            Ok(version.trim().to_string())
        }
        _ => Err(RecipeError::MissingPackage(pkg.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(fio: &str) -> ImageRecipe {
        ImageRecipe {
            package_versions: vec![
                ("linux-source-6.1".into(), "6.1.1".into()),
                ("busybox-static".into(), "1:1.35".into()),
                ("fio".into(), fio.into()),
            ],
        }
    }

    #[test]
    fn hash_is_stable_and_tracks_package_versions() {
        assert_eq!(recipe("3.33-3").hash(), recipe("3.33-3").hash());
        assert_ne!(recipe("3.33-3").hash(), recipe("3.34-1").hash());
        assert_eq!(recipe("3.33-3").hash().len(), 16);
        // fio is not in the kernel: the kernel build is shared.
        assert_eq!(
            recipe("3.33-3").kernel_hash(),
            recipe("3.34-1").kernel_hash()
        );
    }

    #[test]
    fn init_script_and_fragment_carry_what_the_runner_relies_on() {
        assert!(INIT_SCRIPT.contains("/weir/job.fio"));
        assert!(INIT_SCRIPT.contains("<<<WEIR:FIO-JSON:BEGIN>>>"));
        assert!(KERNEL_CONFIG_FRAGMENT.contains("CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES=y"));
        assert!(KERNEL_CONFIG_FRAGMENT.contains("CONFIG_PVH=y"));
    }
}
