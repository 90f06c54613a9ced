//! Real iSCSI targets as child processes, for the tests and benchmarks that need one: tgt's
//! `tgtd` (several portals onto one LUN) and `istgt` (a LU queue that answers TASK SET FULL
//! when it overflows). Each runs in the foreground on loopback ports the caller picks and is
//! killed (SIGKILL: tgtd ignores SIGTERM while it has targets) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::uri::IscsiUri;

/// Why `program` cannot run here, if it cannot (the package is missing, or not root).
pub fn missing(program: &str) -> Option<String> {
    let found = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join(program).is_file())
            || Path::new("/usr/sbin").join(program).is_file()
    });
    if !found {
        return Some(format!(
            "{program} not found (scripts/install-deps.sh installs tgt and istgt)"
        ));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(format!("{program} needs root"));
    }
    if let Err(e) = super::ffi::lib() {
        return Some(e);
    }
    None
}

fn program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.is_file() {
        sbin
    } else {
        PathBuf::from(name)
    }
}

/// Waits until `uri`'s LUN answers a login, at most `wait`.
fn wait_for(uri: &IscsiUri, wait: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + wait;
    loop {
        match super::session::inquire(uri) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(std::io::Error::other(format!("{uri} never answered: {e}")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// A running tgtd with one target and one LUN (LUN 1) on a backing file, reachable through
/// one or more loopback portals.
pub struct Tgtd {
    child: Child,
    control: u16,
    pub target: String,
    pub portals: Vec<String>,
    backing: PathBuf,
}

impl Tgtd {
    /// tgtd serving `backing` as `target`'s LUN 1 through `portals` ("127.0.0.1:3261", ...).
    pub fn start(target: &str, backing: &Path, portals: &[&str]) -> std::io::Result<Tgtd> {
        let first = portals
            .first()
            .ok_or_else(|| std::io::Error::other("tgtd needs a portal"))?;
        // The management socket's number (tgtd takes small ones only); derived from the first
        // portal's port, which keeps instances apart.
        let port: u16 = first
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad portal {first}")))?;
        let control = 100 + port % 3900;
        let child = Command::new(program("tgtd"))
            .args(["-f", "-C", &control.to_string(), "--iscsi"])
            .arg(format!("portal={first}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut t = Tgtd {
            child,
            control,
            target: target.to_string(),
            portals: portals.iter().map(|p| p.to_string()).collect(),
            backing: backing.to_path_buf(),
        };
        t.configure()?;
        Ok(t)
    }

    fn adm(&self, args: &[&str]) -> std::io::Result<()> {
        let out = Command::new(program("tgtadm"))
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "tgtadm {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    fn configure(&mut self) -> std::io::Result<()> {
        // The management socket appears once tgtd is up.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.adm(&["--op", "show", "--mode", "target"]) {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!("tgtd exited: {status}")));
            }
        }
        for portal in self.portals.iter().skip(1) {
            self.adm(&[
                "--op",
                "new",
                "--mode",
                "portal",
                "--param",
                &format!("portal={portal}"),
            ])?;
        }
        let backing = self.backing.display().to_string();
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            &self.target,
        ])?;
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            "1",
            "-b",
            &backing,
        ])?;
        self.adm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        for i in 0..self.portals.len() {
            wait_for(&self.uri(i), Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Sets one of the target's parameters (`tgtadm --op update --mode target`), e.g.
    /// `nop_interval` and `nop_count`: tgtd then pings each connection every `nop_interval`
    /// seconds (NOP-In) and drops one that leaves `nop_count` pings unanswered.
    pub fn update(&self, name: &str, value: &str) -> std::io::Result<()> {
        self.adm(&[
            "--op", "update", "--mode", "target", "--tid", "1", "-n", name, "-v", value,
        ])
    }

    /// tgtd's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The LUN through portal `i`.
    pub fn uri(&self, i: usize) -> IscsiUri {
        IscsiUri {
            portal: self.portals[i].clone(),
            target: self.target.clone(),
            lun: 1,
        }
    }

    /// Kills tgtd (every session through every portal drops) and starts it again with the
    /// same target; returns once the LUN answers.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let portals: Vec<&str> = self.portals.iter().map(String::as_str).collect();
        let fresh = Tgtd::start(&self.target, &self.backing, &portals)?;
        *self = fresh;
        Ok(())
    }

    /// Kills tgtd now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // tgtd leaves its management socket and lock behind.
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}", self.control));
        let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}.lock", self.control));
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How istgt's one LU is set up.
#[derive(Clone, Copy, Debug)]
pub struct IstgtLu {
    /// `QueueDepth`: each session's command window (istgt's MaxCmdSN runs `QueueDepth` ahead
    /// of the commands it has answered), and with `max_sessions` the LU queue's length.
    pub queue_depth: u32,
    /// The global `MaxSessions`. istgt does not cap sessions by it: it only sizes the LU queue,
    /// which holds `queue_depth` × `max_sessions` waiting commands and answers the next TASK
    /// SET FULL (istgt_lu_disk.c, `istgt_lu_disk_queue`). More sessions than `max_sessions`,
    /// each with a full window, can overflow it.
    pub max_sessions: u32,
}

/// A running istgt serving one file as LUN 0 of `iqn.2026-12.weir:disk1` ([`IstgtLu`]).
pub struct Istgt {
    child: Child,
    pub uri: IscsiUri,
    _dir: PathBuf,
}

impl Istgt {
    /// istgt on 127.0.0.1:`port` (its unit control on `port` + 1) over `backing` of
    /// `size_mib` MiB, created in `dir`.
    pub fn start(
        dir: &Path,
        backing: &Path,
        size_mib: u64,
        port: u16,
        lu: IstgtLu,
    ) -> std::io::Result<Istgt> {
        let IstgtLu {
            queue_depth,
            max_sessions,
        } = lu;
        std::fs::create_dir_all(dir)?;
        let auth = dir.join("auth.conf");
        std::fs::write(&auth, "")?;
        let conf = dir.join("istgt.conf");
        std::fs::write(
            &conf,
            format!(
                "[Global]\n  NodeBase \"iqn.2026-12.weir\"\n  PidFile {pid}\n  AuthFile {auth}\n\
                 \x20 LogFacility \"local7\"\n  Timeout 30\n  NopInInterval 20\n\
                 \x20 DiscoveryAuthMethod None\n  MaxSessions {max_sessions}\n  MaxConnections 4\n\
                 \x20 MaxR2T 32\n  MaxOutstandingR2T 16\n  DefaultTime2Wait 2\n\
                 \x20 DefaultTime2Retain 60\n  FirstBurstLength 262144\n\
                 \x20 MaxBurstLength 1048576\n  MaxRecvDataSegmentLength 262144\n\
                 \x20 InitialR2T Yes\n  ImmediateData Yes\n  DataPDUInOrder Yes\n\
                 \x20 DataSequenceInOrder Yes\n  ErrorRecoveryLevel 0\n\n\
                 [UnitControl]\n  AuthMethod None\n  Portal UC1 127.0.0.1:{uc}\n\
                 \x20 Netmask 127.0.0.1\n\n\
                 [PortalGroup1]\n  Portal DA1 127.0.0.1:{port}\n\n\
                 [InitiatorGroup1]\n  InitiatorName \"ALL\"\n  Netmask 127.0.0.0/8\n\n\
                 [LogicalUnit1]\n  TargetName disk1\n  Mapping PortalGroup1 InitiatorGroup1\n\
                 \x20 AuthMethod None\n  UseDigest Auto\n  UnitType Disk\n\
                 \x20 QueueDepth {queue_depth}\n  LUN0 Storage {backing} {size_mib}MB\n",
                pid = dir.join("istgt.pid").display(),
                auth = auth.display(),
                uc = port + 1,
                backing = backing.display(),
            ),
        )?;
        let child = Command::new(program("istgt"))
            .arg("-c")
            .arg(&conf)
            .arg("-D")
            .arg("-q")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut t = Istgt {
            child,
            uri: IscsiUri {
                portal: format!("127.0.0.1:{port}"),
                target: "iqn.2026-12.weir:disk1".into(),
                lun: 0,
            },
            _dir: dir.to_path_buf(),
        };
        if let Err(e) = wait_for(&t.uri, Duration::from_secs(10)) {
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(std::io::Error::other(format!("istgt exited: {status}")));
            }
            return Err(e);
        }
        Ok(t)
    }
}

impl Drop for Istgt {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
