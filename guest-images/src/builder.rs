//! Building the Linux test guest into the image cache.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cpio::CpioWriter;
use crate::recipe::{
    INIT_SCRIPT, ImageRecipe, KERNEL_CONFIG_FRAGMENT, KERNEL_SOURCE_PACKAGE, KERNEL_SOURCE_TARBALL,
    RecipeError,
};

const MANIFEST: &str = "manifest.json";
/// An image directory to use as it is, instead of the cache's image for the host's recipe.
pub const GUEST_IMAGE_ENV: &str = "WEIR_GUEST_IMAGE";
const BUSYBOX: &str = "/bin/busybox";
const FIO: &str = "/usr/bin/fio";

#[derive(Debug, Error)]
pub enum BuildError {
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    #[error("'{tool}' is not on PATH; it is needed to {why}. Run scripts/install-deps.sh")]
    MissingTool { tool: String, why: String },
    #[error(
        "{path} is missing; it comes with Debian package '{package}'. Run scripts/install-deps.sh"
    )]
    MissingFile { path: String, package: String },
    #[error("{step} failed ({status}); last lines of {log}:\n{tail}")]
    StepFailed {
        step: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "kernel config option {0} from guest-images/linux/kernel.config did not take effect \
         (a dependency is missing from the fragment)"
    )]
    ConfigOptionLost(String),
    #[error("no image for the current recipe (hash {hash}) in {dir}; run `weir image build`")]
    NotBuilt { hash: String, dir: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// What a built image is made of; stored as `manifest.json` beside the files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImageManifest {
    pub recipe_hash: String,
    pub packages: Vec<(String, String)>,
    pub kernel_release: String,
    pub vmlinux_bytes: u64,
    pub bzimage_bytes: u64,
    pub initramfs_bytes: u64,
    pub initramfs_unpacked_bytes: u64,
    pub build_seconds: f64,
    pub built_unix_time: u64,
}

/// A built Linux test guest.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    pub manifest: ImageManifest,
}

impl GuestImage {
    fn open(dir: &Path) -> Option<Self> {
        let manifest: ImageManifest =
            serde_json::from_slice(&fs::read(dir.join(MANIFEST)).ok()?).ok()?;
        let image = GuestImage {
            dir: dir.to_path_buf(),
            vmlinux: dir.join("vmlinux"),
            bzimage: dir.join("bzImage"),
            initramfs: dir.join("initramfs.cpio.gz"),
            manifest,
        };
        let intact = [
            (&image.vmlinux, image.manifest.vmlinux_bytes),
            (&image.bzimage, image.manifest.bzimage_bytes),
            (&image.initramfs, image.manifest.initramfs_bytes),
        ]
        .iter()
        .all(|(p, len)| fs::metadata(p).map(|m| m.len() == *len).unwrap_or(false));
        intact.then_some(image)
    }
}

/// The cache directory holding one image directory per recipe hash.
#[derive(Debug, Clone)]
pub struct ImageStore {
    pub root: PathBuf,
}

impl ImageStore {
    /// `WEIR_IMAGE_DIR`, else `~/.cache/weir/images` (`$XDG_CACHE_HOME` honoured).
    pub fn from_env() -> Self {
        if let Some(dir) = std::env::var_os("WEIR_IMAGE_DIR") {
            return ImageStore { root: dir.into() };
        }
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        ImageStore {
            root: cache.join("weir").join("images"),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    /// The image for the host's current recipe, if it has been built; `WEIR_GUEST_IMAGE` (an
    /// image directory) names one directly, as inside the lab VM, where there is no dpkg to
    /// read the recipe from.
    pub fn locate(&self) -> Result<GuestImage, BuildError> {
        if let Some(dir) = std::env::var_os(GUEST_IMAGE_ENV) {
            return GuestImage::open(Path::new(&dir)).ok_or_else(|| BuildError::NotBuilt {
                hash: format!("given by {GUEST_IMAGE_ENV}"),
                dir: dir.into(),
            });
        }
        let hash = ImageRecipe::from_host()?.hash();
        GuestImage::open(&self.root.join(&hash)).ok_or(BuildError::NotBuilt {
            hash,
            dir: self.root.clone(),
        })
    }

    /// Returns the cached image for the current recipe, building it first if needed (or if
    /// `force`). Progress goes to `progress` (a terminal, usually).
    pub fn ensure(&self, force: bool, progress: &mut dyn Write) -> Result<GuestImage, BuildError> {
        if std::env::var_os(GUEST_IMAGE_ENV).is_some() {
            return self.locate();
        }
        let recipe = ImageRecipe::from_host()?;
        let hash = recipe.hash();
        let final_dir = self.root.join(&hash);
        if !force {
            if let Some(image) = GuestImage::open(&final_dir) {
                let _ = writeln!(
                    progress,
                    "image {hash} is up to date: {}",
                    final_dir.display()
                );
                return Ok(image);
            }
        }
        check_prerequisites()?;
        fs::create_dir_all(&self.root)
            .map_err(io_err(format!("create {}", self.root.display())))?;
        remove_abandoned_builds(&self.root);
        let tmp = self
            .root
            .join(format!(".building-{hash}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let result = build_into(&recipe, &tmp, progress);
        match result {
            Ok(()) => {
                if final_dir.exists() {
                    fs::remove_dir_all(&final_dir)
                        .map_err(io_err(format!("replace {}", final_dir.display())))?;
                }
                fs::rename(&tmp, &final_dir).map_err(io_err(format!(
                    "rename {} to {}",
                    tmp.display(),
                    final_dir.display()
                )))?;
                GuestImage::open(&final_dir).ok_or(BuildError::NotBuilt {
                    hash,
                    dir: self.root.clone(),
                })
            }
            Err(e) => {
                // Keep the logs of a failed build for the user; drop the bulky source tree.
                let _ = fs::remove_dir_all(tmp.join("linux"));
                Err(e)
            }
        }
    }
}

/// Temporary build directories whose builder process is gone.
fn remove_abandoned_builds(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(".building-") else {
            continue;
        };
        let pid = rest.rsplit('-').next().unwrap_or("");
        if !Path::new("/proc").join(pid).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

fn check_prerequisites() -> Result<(), BuildError> {
    let tools = [
        ("tar", "unpack the kernel source"),
        ("xz", "unpack the kernel source"),
        ("make", "build the kernel"),
        ("gcc", "build the kernel"),
        ("flex", "build the kernel config tools"),
        ("bison", "build the kernel config tools"),
        ("bc", "build the kernel"),
        ("ldd", "find fio's shared libraries"),
    ];
    for (tool, why) in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !found {
            return Err(BuildError::MissingTool {
                tool: tool.into(),
                why: why.into(),
            });
        }
    }
    for (path, package) in [
        (KERNEL_SOURCE_TARBALL, KERNEL_SOURCE_PACKAGE),
        (BUSYBOX, "busybox-static"),
        (FIO, "fio"),
        ("/usr/include/libelf.h", "libelf-dev"),
        ("/usr/include/openssl/ssl.h", "libssl-dev"),
    ] {
        if !Path::new(path).exists() {
            return Err(BuildError::MissingFile {
                path: path.into(),
                package: package.into(),
            });
        }
    }
    Ok(())
}

fn build_into(
    recipe: &ImageRecipe,
    out: &Path,
    progress: &mut dyn Write,
) -> Result<(), BuildError> {
    let started = Instant::now();
    let hash = recipe.hash();
    let _ = writeln!(
        progress,
        "building Linux test guest image {hash} in {}",
        out.display()
    );
    for (pkg, ver) in &recipe.package_versions {
        let _ = writeln!(progress, "  from {pkg} {ver}");
    }

    let kernel = ensure_kernel(recipe, out, progress)?;
    for name in ["vmlinux", "bzImage"] {
        let (from, to) = (kernel.join(name), out.join(name));
        if fs::hard_link(&from, &to).is_err() {
            fs::copy(&from, &to).map_err(io_err(format!("copy {name}")))?;
        }
    }
    fs::copy(
        kernel.join("kernel.config.full"),
        out.join("kernel.config.full"),
    )
    .map_err(io_err("copy kernel config"))?;
    let release = fs::read_to_string(kernel.join("release"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();

    step(
        progress,
        4,
        "assembling initramfs",
        "busybox-static, fio and its shared libraries, /init",
    );
    let cpio = build_initramfs()?;
    let unpacked = cpio.len() as u64;
    let mut gz = GzEncoder::new(Vec::new(), Compression::new(6));
    gz.write_all(&cpio).map_err(io_err("compress initramfs"))?;
    let packed = gz.finish().map_err(io_err("compress initramfs"))?;
    fs::write(out.join("initramfs.cpio.gz"), &packed).map_err(io_err("write initramfs"))?;

    let len = |name: &str| fs::metadata(out.join(name)).map(|m| m.len()).unwrap_or(0);
    let manifest = ImageManifest {
        recipe_hash: hash,
        packages: recipe.package_versions.clone(),
        kernel_release: release,
        vmlinux_bytes: len("vmlinux"),
        bzimage_bytes: len("bzImage"),
        initramfs_bytes: packed.len() as u64,
        initramfs_unpacked_bytes: unpacked,
        build_seconds: started.elapsed().as_secs_f64(),
        built_unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BuildError::Io {
        context: "serialise manifest".into(),
        source: io::Error::other(e),
    })?;
    // The manifest is written last: an image directory without one is never used.
    fs::write(out.join(MANIFEST), json).map_err(io_err("write manifest"))?;
    step(
        progress,
        5,
        "done",
        &format!(
            "kernel {} ({} KiB bzImage), initramfs {} KiB ({} KiB unpacked), {:.0} s",
            manifest.kernel_release,
            manifest.bzimage_bytes / 1024,
            manifest.initramfs_bytes / 1024,
            unpacked / 1024,
            manifest.build_seconds
        ),
    );
    Ok(())
}

/// The kernel for this recipe, from `<root>/kernels/<kernel-hash>/`, built there first when
/// missing. `image_tmp` is the image's temporary build directory, beside which the kernel
/// cache lives.
fn ensure_kernel(
    recipe: &ImageRecipe,
    image_tmp: &Path,
    progress: &mut dyn Write,
) -> Result<PathBuf, BuildError> {
    let root = image_tmp.parent().unwrap_or(image_tmp).join("kernels");
    let khash = recipe.kernel_hash();
    let dir = root.join(&khash);
    let complete = |d: &Path| {
        ["vmlinux", "bzImage", "kernel.config.full", "release"]
            .iter()
            .all(|f| d.join(f).exists())
    };
    if complete(&dir) {
        step(
            progress,
            1,
            "kernel",
            &format!("reusing cached build {khash}"),
        );
        step(progress, 2, "kernel", "configured");
        step(progress, 3, "kernel", "built");
        return Ok(dir);
    }
    fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
    remove_abandoned_builds(&root);
    let out = root.join(format!(".building-{khash}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).map_err(io_err(format!("create {}", out.display())))?;
    let src_parent = out.join("linux");
    fs::create_dir_all(&src_parent).map_err(io_err("create source dir"))?;
    step(progress, 1, "unpacking", KERNEL_SOURCE_TARBALL);
    run_logged(
        Command::new("tar")
            .arg("-C")
            .arg(&src_parent)
            .arg("-xf")
            .arg(KERNEL_SOURCE_TARBALL),
        "unpack kernel source",
        &out.join("unpack.log"),
        None,
    )?;
    let src = fs::read_dir(&src_parent)
        .map_err(io_err("read source dir"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("Makefile").exists())
        .ok_or_else(|| BuildError::MissingFile {
            path: format!("{}/*/Makefile", src_parent.display()),
            package: KERNEL_SOURCE_PACKAGE.into(),
        })?;

    step(
        progress,
        2,
        "configuring kernel",
        "tinyconfig + guest-images/linux/kernel.config",
    );
    let fragment = out.join("kernel.config");
    fs::write(&fragment, KERNEL_CONFIG_FRAGMENT).map_err(io_err("write config fragment"))?;
    run_logged(
        Command::new("make").arg("-C").arg(&src).arg("tinyconfig"),
        "make tinyconfig",
        &out.join("config.log"),
        None,
    )?;
    run_logged(
        Command::new(src.join("scripts/kconfig/merge_config.sh"))
            .current_dir(&src)
            .args(["-m", ".config"])
            .arg(&fragment),
        "merge kernel config fragment",
        &out.join("merge.log"),
        None,
    )?;
    run_logged(
        Command::new("make").arg("-C").arg(&src).arg("olddefconfig"),
        "make olddefconfig",
        &out.join("olddefconfig.log"),
        None,
    )?;
    verify_config(&src.join(".config"))?;

    let jobs = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    step(
        progress,
        3,
        "building kernel",
        &format!("make -j{jobs} vmlinux bzImage"),
    );
    let result = run_logged(
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .arg(format!("-j{jobs}"))
            .args(["vmlinux", "bzImage"]),
        "kernel build",
        &out.join("kernel-build.log"),
        Some(progress),
    );
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&src_parent);
        return Err(e);
    }
    let release = Command::new("make")
        .arg("-C")
        .arg(&src)
        .args(["-s", "kernelrelease"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    fs::copy(src.join("vmlinux"), out.join("vmlinux")).map_err(io_err("copy vmlinux"))?;
    fs::copy(src.join("arch/x86/boot/bzImage"), out.join("bzImage"))
        .map_err(io_err("copy bzImage"))?;
    fs::copy(src.join(".config"), out.join("kernel.config.full"))
        .map_err(io_err("copy .config"))?;
    fs::write(out.join("release"), &release).map_err(io_err("write release"))?;
    fs::remove_dir_all(&src_parent).map_err(io_err("remove kernel source tree"))?;
    if dir.exists() {
        let _ = fs::remove_dir_all(&dir);
    }
    fs::rename(&out, &dir).map_err(io_err(format!(
        "rename {} to {}",
        out.display(),
        dir.display()
    )))?;
    Ok(dir)
}

fn step(progress: &mut dyn Write, n: u32, what: &str, detail: &str) {
    let _ = writeln!(progress, "[{n}/5] {what}: {detail}");
    let _ = progress.flush();
}

/// Runs a build step with its output in `log`; on failure the log's tail is in the error.
/// With `ticker`, prints a line every 15 s so a long kernel build visibly moves.
fn run_logged(
    cmd: &mut Command,
    what: &str,
    log: &Path,
    mut ticker: Option<&mut dyn Write>,
) -> Result<(), BuildError> {
    let file = fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let err_file = file.try_clone().map_err(io_err("dup log"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(err_file)
        .spawn()
        .map_err(io_err(format!("start {what}")))?;
    let started = Instant::now();
    let mut last_tick = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(io_err(format!("wait for {what}")))?
        {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Some(t) = ticker.as_deref_mut() {
            if last_tick.elapsed() >= Duration::from_secs(15) {
                last_tick = Instant::now();
                let lines = fs::read_to_string(log)
                    .map(|s| s.lines().count())
                    .unwrap_or(0);
                let _ = writeln!(
                    t,
                    "      {what}: {:.0} s, {lines} build steps so far",
                    started.elapsed().as_secs_f64()
                );
                let _ = t.flush();
            }
        }
    };
    if status.success() {
        return Ok(());
    }
    let text = fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(25).collect();
    Err(BuildError::StepFailed {
        step: what.into(),
        status: status.to_string(),
        log: log.to_path_buf(),
        tail: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
    })
}

fn verify_config(config: &Path) -> Result<(), BuildError> {
    let have = fs::read_to_string(config).map_err(io_err("read .config"))?;
    for line in KERNEL_CONFIG_FRAGMENT.lines() {
        let line = line.trim();
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !key.starts_with("CONFIG_") {
            continue;
        }
        let ok = if value == "n" {
            !have.lines().any(|l| l.starts_with(&format!("{key}=")))
        } else {
            have.lines().any(|l| l == line)
        };
        if !ok {
            return Err(BuildError::ConfigOptionLost(line.to_string()));
        }
    }
    Ok(())
}

/// The initramfs as an uncompressed newc archive.
fn build_initramfs() -> Result<Vec<u8>, BuildError> {
    let mut w = CpioWriter::new();
    let mut dirs: Vec<String> = Vec::new();
    let mut add_dir = |w: &mut CpioWriter, dir: &str| {
        let mut acc = String::new();
        for part in dir.trim_matches('/').split('/').filter(|p| !p.is_empty()) {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            if !dirs.contains(&acc) {
                w.dir(&acc, 0o755);
                dirs.push(acc.clone());
            }
        }
    };
    for d in ["bin", "dev", "proc", "sys", "tmp", "usr/bin", "weir"] {
        add_dir(&mut w, d);
    }
    // The kernel opens /dev/console before /init mounts devtmpfs.
    w.char_device("dev/console", 0o600, 5, 1);
    w.file("init", 0o755, INIT_SCRIPT.as_bytes());
    let busybox = fs::read(BUSYBOX).map_err(io_err(format!("read {BUSYBOX}")))?;
    w.file("bin/busybox", 0o755, &busybox);
    w.symlink("bin/sh", "busybox");
    let fio = fs::read(FIO).map_err(io_err(format!("read {FIO}")))?;
    w.file("usr/bin/fio", 0o755, &fio);
    for lib in shared_library_closure(FIO)? {
        let parent = Path::new(&lib)
            .parent()
            .map(|p| p.to_string_lossy().to_string())
            .unwrap_or_default();
        add_dir(&mut w, &parent);
        // Follow symlinks on the host: the guest gets the real bytes under the needed name.
        let bytes = fs::read(&lib).map_err(io_err(format!("read {lib}")))?;
        w.file(&lib, 0o755, &bytes);
    }
    Ok(w.finish())
}

/// The absolute paths of every shared object `binary` loads, its dynamic loader included.
pub fn shared_library_closure(binary: &str) -> Result<Vec<String>, BuildError> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(io_err(format!("run ldd {binary}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let libs = parse_ldd(&text).map_err(|missing| BuildError::MissingFile {
        path: missing,
        package: format!("a library {binary} needs (apt-get install --reinstall fio)"),
    })?;
    Ok(libs)
}

fn parse_ldd(text: &str) -> Result<Vec<String>, String> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once("=>") {
            let rest = rest.trim();
            if rest.starts_with("not found") {
                return Err(name.trim().to_string());
            }
            if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(path.to_string());
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(path.to_string());
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output_with_loader_and_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert_eq!(
            parse_ldd("\tlibfoo.so.2 => not found\n"),
            Err("libfoo.so.2".to_string())
        );
    }

    #[test]
    fn a_directory_without_manifest_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("vmlinux"), b"x").unwrap();
        assert!(GuestImage::open(dir.path()).is_none());
    }

    #[test]
    fn a_truncated_file_invalidates_the_image() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["vmlinux", "bzImage", "initramfs.cpio.gz"] {
            fs::write(dir.path().join(f), b"abcd").unwrap();
        }
        let manifest = ImageManifest {
            recipe_hash: "h".into(),
            packages: vec![],
            kernel_release: "6.1".into(),
            vmlinux_bytes: 4,
            bzimage_bytes: 4,
            initramfs_bytes: 4,
            initramfs_unpacked_bytes: 4,
            build_seconds: 1.0,
            built_unix_time: 0,
        };
        fs::write(
            dir.path().join(MANIFEST),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        assert!(GuestImage::open(dir.path()).is_some());
        fs::write(dir.path().join("bzImage"), b"ab").unwrap();
        assert!(GuestImage::open(dir.path()).is_none());
    }
}
