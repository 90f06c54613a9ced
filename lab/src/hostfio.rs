//! fio on the host: the baseline a guest's figures are compared with, run on the same file.

use std::path::Path;
use std::process::Command;

use crate::fio::{FioParseError, FioReport};
use crate::fiojob::with_target;

#[derive(Debug, thiserror::Error)]
pub enum HostFioError {
    #[error("cannot run host fio: {0} (install fio: scripts/install-deps.sh)")]
    Spawn(#[source] std::io::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("host fio failed ({status}): {stderr}")]
    Failed { status: String, stderr: String },
    #[error(transparent)]
    Parse(#[from] FioParseError),
}

/// Runs `job` on the host against `target`; the job text and JSON output are kept in
/// `work_dir` as `host.fio` and `host.fio.json`.
pub fn run_host_fio(job: &str, target: &Path, work_dir: &Path) -> Result<FioReport, HostFioError> {
    // fio runs in `work_dir`, so every path handed to it must be absolute.
    let work_dir = &std::fs::canonicalize(work_dir).map_err(|source| HostFioError::Io {
        context: format!("resolve {}", work_dir.display()),
        source,
    })?;
    let target = &std::fs::canonicalize(target).map_err(|source| HostFioError::Io {
        context: format!("resolve {}", target.display()),
        source,
    })?;
    let job_path = work_dir.join("host.fio");
    let out_path = work_dir.join("host.fio.json");
    std::fs::write(&job_path, with_target(job, &target.to_string_lossy())).map_err(|source| {
        HostFioError::Io {
            context: format!("write {}", job_path.display()),
            source,
        }
    })?;
    let out = Command::new("fio")
        .arg("--output-format=json")
        .arg(format!("--output={}", out_path.display()))
        .arg(&job_path)
        .current_dir(work_dir)
        .output()
        .map_err(HostFioError::Spawn)?;
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    if !out.status.success() {
        return Err(HostFioError::Failed {
            status: out.status.to_string(),
            stderr: format!(
                "{}{}",
                text.lines()
                    .take_while(|l| !l.starts_with('{'))
                    .collect::<Vec<_>>()
                    .join("\n"),
                String::from_utf8_lossy(&out.stderr)
            ),
        });
    }
    Ok(FioReport::parse(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative run directory (the CLI's default `runs/…`) must work: fio runs inside it.
    #[test]
    fn host_fio_runs_in_a_relative_work_dir() {
        // A directory under the current one, named relatively (no chdir: tests share the cwd).
        let dir = tempfile::tempdir_in(".").unwrap();
        let rel = Path::new(dir.path().file_name().unwrap());
        let disk = rel.join("disk.raw");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(4 << 20)
            .unwrap();
        let job = "[w]\nrw=write\nbs=64k\nioengine=psync\n";
        let report = run_host_fio(job, &disk, rel).expect("host fio in a relative directory");
        assert_eq!(report.job("w").unwrap().write.io_bytes, 4 << 20);
    }
}
