//! Storage targets a scenario starts itself (`[[target]]`): a server such as nbdkit that its
//! real LUNs (`path = "nbd://..."`) reach, started fresh for every policy run — so no run
//! inherits another's cache, bucket or data — and stopped when the run ends.

use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// One `[[target]]` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    pub name: String,
    /// The program and its arguments; `{dir}` in an argument becomes the policy run's
    /// directory (a place for the target's files). It must stay in the foreground
    /// (`nbdkit -f`, `tgtd -f`).
    pub command: Vec<String>,
    /// When it is ready: `tcp:HOST:PORT` or `unix:PATH` accepts a connection. Unset: at once.
    #[serde(default)]
    pub ready: Option<String>,
    /// How long to wait for `ready`, s.
    #[serde(default = "ready_timeout")]
    pub ready_timeout_s: f64,
}

fn ready_timeout() -> f64 {
    10.0
}

/// What `ready` waits for.
#[derive(Debug, Clone, PartialEq)]
enum Ready {
    Tcp(String),
    Unix(PathBuf),
}

impl TargetSpec {
    /// The entry's problem, naming the field and the fix.
    pub fn problem(&self) -> Option<String> {
        if self.command.first().is_none_or(|c| c.is_empty()) {
            return Some(
                "command: give the program and its arguments, e.g. [\"nbdkit\", \"-f\", ...]"
                    .into(),
            );
        }
        if !(self.ready_timeout_s > 0.0 && self.ready_timeout_s <= 600.0) {
            return Some("ready_timeout_s must be above 0 and at most 600".into());
        }
        if let Some(r) = &self.ready {
            if let Err(e) = parse_ready(r) {
                return Some(format!("ready: {e}"));
            }
        }
        None
    }
}

fn parse_ready(r: &str) -> Result<Ready, String> {
    let hint = "use tcp:HOST:PORT or unix:PATH";
    match r.split_once(':') {
        Some(("tcp", addr))
            if addr
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
        {
            Ok(Ready::Tcp(addr.to_string()))
        }
        Some(("unix", p)) if !p.is_empty() => Ok(Ready::Unix(PathBuf::from(p))),
        _ => Err(format!("'{r}': {hint}")),
    }
}

/// A running target; stopped (SIGTERM, then SIGKILL after 3 s) when dropped.
pub struct RunningTarget {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl RunningTarget {
    /// Starts `spec` with its output in `dir/target-<name>.log` and waits until it is ready.
    pub fn start(spec: &TargetSpec, dir: &Path) -> Result<RunningTarget, String> {
        let args: Vec<String> = spec
            .command
            .iter()
            .map(|a| a.replace("{dir}", &dir.display().to_string()))
            .collect();
        let log = dir.join(format!("target-{}.log", spec.name));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("target {}: cannot start {}: {e}", spec.name, args[0]))?;
        let mut t = RunningTarget {
            name: spec.name.clone(),
            child,
            log,
        };
        let ready = spec.ready.as_deref().map(parse_ready).transpose()?;
        let deadline = Instant::now() + Duration::from_secs_f64(spec.ready_timeout_s);
        loop {
            if let Ok(Some(status)) = t.child.try_wait() {
                return Err(format!(
                    "target {} ({}) exited at start with {status}: {}",
                    spec.name,
                    args.join(" "),
                    t.log_tail()
                ));
            }
            let up = match &ready {
                None => true,
                Some(Ready::Tcp(a)) => {
                    a.to_socket_addrs()
                        .ok()
                        .into_iter()
                        .flatten()
                        .any(|s: SocketAddr| {
                            TcpStream::connect_timeout(&s, Duration::from_millis(200)).is_ok()
                        })
                }
                Some(Ready::Unix(p)) => UnixStream::connect(p).is_ok(),
            };
            if up {
                return Ok(t);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "target {} ({}) was not ready ({}) within {} s: {}",
                    spec.name,
                    args.join(" "),
                    spec.ready.as_deref().unwrap_or(""),
                    spec.ready_timeout_s,
                    t.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its output.
    pub fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for RunningTarget {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped (try_wait below reaps it).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str], ready: Option<&str>) -> TargetSpec {
        TargetSpec {
            name: "t".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            ready: ready.map(String::from),
            ready_timeout_s: 2.0,
        }
    }

    #[test]
    fn entries_are_checked_by_field() {
        assert!(spec(&[], None).problem().unwrap().starts_with("command"));
        assert!(
            spec(&["x"], Some("tcp:localhost"))
                .problem()
                .unwrap()
                .starts_with("ready")
        );
        assert!(spec(&["x"], Some("udp:a:1")).problem().is_some());
        assert_eq!(spec(&["x"], Some("tcp:127.0.0.1:10809")).problem(), None);
        assert_eq!(spec(&["x"], Some("unix:/tmp/s")).problem(), None);
    }

    #[test]
    fn a_target_is_started_waited_for_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        // A server on a Unix socket, ready once it listens; `{dir}` is the run directory.
        let t = RunningTarget::start(
            &spec(
                &[
                    "python3",
                    "-c",
                    "import socket,sys,time; s=socket.socket(socket.AF_UNIX); \
                     time.sleep(0.3); s.bind(sys.argv[1]); s.listen(); time.sleep(60)",
                    "{dir}/s",
                ],
                Some(&format!("unix:{}", sock.display())),
            ),
            dir.path(),
        )
        .unwrap();
        assert!(UnixStream::connect(&sock).is_ok());
        let pid = t.pid();
        drop(t);
        // SAFETY: signal 0 only asks whether the pid exists.
        assert_ne!(
            unsafe { libc::kill(pid as libc::pid_t, 0) },
            0,
            "still running"
        );
        // One that exits says so, with its output.
        let e = RunningTarget::start(
            &spec(
                &["sh", "-c", "echo no disk; exit 3"],
                Some("tcp:127.0.0.1:1"),
            ),
            dir.path(),
        )
        .map(|_| ())
        .unwrap_err();
        assert!(e.contains("no disk") || e.contains("exit"), "{e}");
        let e = RunningTarget::start(&spec(&["sleep", "30"], Some("tcp:127.0.0.1:1")), dir.path())
            .map(|_| ())
            .unwrap_err();
        assert!(e.contains("not ready"), "{e}");
    }
}
