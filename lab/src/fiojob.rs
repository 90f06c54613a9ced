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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_precedes_the_jobs_globals() {
        let job = "[global]\nbs=4k\n[a]\nrw=read\n";
        let out = with_target(job, "/dev/vda");
        let target = out.find("filename=/dev/vda").unwrap();
        assert!(target < out.find("bs=4k").unwrap());
        assert!(out.ends_with(job));
    }
}
