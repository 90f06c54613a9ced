//! The broker's seccomp filter: it maps every guest's RAM, so what it may ask the kernel is
//! cut down to what serving disks needs, as Firecracker and Cloud Hypervisor do for their
//! device threads.
//!
//! Installed once the broker is up (LUNs open, sockets listening), on every thread at once
//! (`SECCOMP_FILTER_FLAG_TSYNC`); threads started later inherit it. Not on the list: running
//! programs (`execve`), tracing or reading other processes (`ptrace`, `process_vm_*`), mounts,
//! modules, BPF, perf, keyrings, namespaces, reboot, and the rest.
//!
//! A call outside the list fails with EPERM instead of killing the broker: every guest's disk
//! depends on this one process, so a path nobody listed costs one failed operation (logged by
//! the code that made it), never every VM's storage. `WEIR_SECCOMP=log` lets such calls through
//! and has the kernel log them (`dmesg`, "audit: type=1326 … syscall=N") — how the list was
//! drawn: the whole test suite ran in that mode. `WEIR_SECCOMP=off` (or `seccomp = false` in
//! the config) leaves the broker unfiltered, for debugging.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum SandboxError {
    #[error("cannot build the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[source] seccompiler::Error),
    #[error("seccomp filters exist for x86_64 and aarch64 only, not {0}")]
    Arch(String),
}

/// How the filter treats a call outside the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeccompMode {
    /// Fail it with EPERM.
    Enforce,
    /// Let it through and have the kernel log it.
    Log,
    /// No filter.
    Off,
}

impl SeccompMode {
    /// `WEIR_SECCOMP` (`enforce`, `log`, `off`), else `default`.
    pub fn from_env(default: SeccompMode) -> SeccompMode {
        match std::env::var("WEIR_SECCOMP").as_deref() {
            Ok("log") => SeccompMode::Log,
            Ok("off") => SeccompMode::Off,
            Ok("enforce") => SeccompMode::Enforce,
            _ => default,
        }
    }
}

/// The system calls a running broker makes.
const ALLOWED: &[libc::c_long] = &[
    // Memory: guest RAM mappings (SET_MEM_TABLE), allocation, thread stacks.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Descriptors and files: images, probes' dups, pools' statfs and allocation scans, the dark
    // report, sockets re-created for the next guest.
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_close,
    libc::SYS_openat,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_statfs,
    libc::SYS_fstatfs,
    libc::SYS_fcntl,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_ioctl,
    libc::SYS_fallocate,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_getdents64,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_getcwd,
    libc::SYS_pipe2,
    libc::SYS_memfd_create,
    // io_uring, eventfds, epoll.
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    // Sockets: vhost-user (fds over SCM_RIGHTS), the control socket, /metrics.
    libc::SYS_socket,
    libc::SYS_bind,
    libc::SYS_listen,
    libc::SYS_accept,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    // Name lookups of a network LUN's host on reconnect (glibc's resolver batches its queries).
    libc::SYS_sendmmsg,
    libc::SYS_recvmmsg,
    // Threads and time.
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_clock_gettime,
    libc::SYS_gettimeofday,
    libc::SYS_prctl,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_getrusage,
    libc::SYS_sysinfo,
    // Signals: SIGTERM/SIGINT handling, panics' stack overflow guard.
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_rt_sigsuspend,
    libc::SYS_rt_sigpending,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_kill,
    libc::SYS_restart_syscall,
];

/// The filter as a BPF program.
pub fn filter(mode: SeccompMode) -> Result<BpfProgram, SandboxError> {
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH.into()))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|s| (*s, vec![])).collect();
    let mismatch = match mode {
        SeccompMode::Log => SeccompAction::Log,
        _ => SeccompAction::Errno(libc::EPERM as u32),
    };
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(SandboxError::Build)?;
    f.try_into().map_err(SandboxError::Build)
}

/// Installs the filter on every thread of the process (no-op when `mode` is `Off`).
pub fn install(mode: SeccompMode) -> Result<(), SandboxError> {
    if mode == SeccompMode::Off {
        return Ok(());
    }
    let prog = filter(mode)?;
    seccompiler::apply_filter_all_threads(&prog).map_err(SandboxError::Install)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_builds_for_this_machine() {
        assert!(!filter(SeccompMode::Enforce).unwrap().is_empty());
    }

    #[test]
    fn a_filtered_thread_cannot_run_a_program_but_serves_files() {
        // In a thread of a child process of its own: seccomp cannot be taken off again.
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sandbox::tests::filtered_child",
                "--ignored",
                "--nocapture",
            ])
            .env("WEIR_SANDBOX_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("exec refused: EPERM") && text.contains("file io ok"),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The child half of the test above (a filter cannot be removed from a process).
    #[test]
    #[ignore = "run in a child process by a_filtered_thread_cannot_run_a_program_but_serves_files"]
    fn filtered_child() {
        assert!(
            std::env::var("WEIR_SANDBOX_CHILD").is_ok(),
            "this installs a seccomp filter on the test process: run it only as the child"
        );
        install(SeccompMode::Enforce).unwrap();
        let e = std::process::Command::new("/bin/true")
            .status()
            .unwrap_err();
        if e.raw_os_error() == Some(libc::EPERM) {
            println!("exec refused: EPERM");
        } else {
            println!("exec: {e}");
        }
        let dir = std::env::temp_dir().join(format!("weir-sandbox-{}", std::process::id()));
        std::fs::write(&dir, b"x").unwrap();
        assert_eq!(std::fs::read(&dir).unwrap(), b"x");
        std::fs::remove_file(&dir).unwrap();
        println!("file io ok");
    }
}
