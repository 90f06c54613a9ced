//! fio job files as weir hands them out: the same job text runs in a guest against its disk
//! and on the host against the backing file, so the two are comparable line for line.

use std::fmt::Write as _;

/// Prefixes `job` with a `[global]` section naming the target file or device. fio merges
/// several `[global]` sections in order, so the job's own globals still apply; a job that names
/// its own `filename` keeps it.
pub fn with_target(job: &str, filename: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "; added by weir: the target of every job below");
    let _ = writeln!(s, "[global]");
    let _ = writeln!(s, "filename={filename}");
    s.push_str(job);
    s
}

/// Whether any job verifies what it wrote (`verify=` other than `0`/`null`). fio's verify
/// follows its own size and loops: forced `time_based`, a randrw job with a bssplit re-reads
/// blocks whose header another pass rewrote and reports "bad header rand_seed" (with QEMU's own
/// virtio-blk too, no broker involved), so `weir run` leaves such jobs untimed.
pub fn verifies(job: &str) -> bool {
    job.lines().any(|line| {
        let line = line.split(['#', ';']).next().unwrap_or("").trim();
        match line.split_once('=') {
            Some((k, v)) => k.trim() == "verify" && !matches!(v.trim(), "" | "0" | "null"),
            None => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_verifying_job_is_told_from_one_that_is_not() {
        assert!(verifies(
            "[w]\nrw=randrw\nverify=crc32c\nbssplit=8k/50:64k/50\n"
        ));
        assert!(verifies("[global]\n verify = md5 \n[a]\n"));
        assert!(!verifies("[w]\nrw=randread\n"));
        assert!(!verifies("[w]\nverify=0\n; verify=crc32c\n"));
        assert!(!verifies("[w]\ndo_verify=1\nverify_backlog=8\n"));
    }

    #[test]
    fn target_precedes_the_jobs_globals() {
        let job = "[global]\nbs=4k\n[a]\nrw=read\n";
        let out = with_target(job, "/dev/vda");
        let target = out.find("filename=/dev/vda").unwrap();
        assert!(target < out.find("bs=4k").unwrap());
        assert!(out.ends_with(job));
    }
}
