//! Starting and stopping a `weir broker` process for an experiment or a test.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BrokerProcessError {
    #[error("cannot start broker {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("broker did not become ready within {0:?}; its output:\n{1}")]
    NotReady(Duration, String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// A running `weir broker`. Dropping it stops the broker (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct BrokerProcess {
    child: Option<Child>,
    /// Processes replaced by [`restart`](Self::restart) while running, reaped on drop.
    previous: Vec<Child>,
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub control_socket: Option<PathBuf>,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
}

impl BrokerProcess {
    /// Writes `config_toml` to `work_dir/broker.toml`, starts `binary broker --config …`, and
    /// waits until it says it is ready. Its output goes to `work_dir/broker.log`.
    pub fn start(
        binary: &Path,
        config_toml: &str,
        control_socket: Option<PathBuf>,
        work_dir: &Path,
    ) -> Result<Self, BrokerProcessError> {
        Self::start_in(binary, config_toml, control_socket, work_dir, None)
    }

    /// As [`start`](Self::start), inside the network namespace `netns` (`ip netns exec`,
    /// which enters it and then runs the broker in its own place: the child is the broker).
    /// Its unix sockets (guest disks, control) are the filesystem's and work from anywhere.
    pub fn start_in(
        binary: &Path,
        config_toml: &str,
        control_socket: Option<PathBuf>,
        work_dir: &Path,
        netns: Option<&str>,
    ) -> Result<Self, BrokerProcessError> {
        if let Some(ns) = netns {
            let path = Path::new("/run/netns").join(ns);
            if !path.exists() {
                return Err(BrokerProcessError::Io {
                    context: format!(
                        "network namespace '{ns}' ([[host]] netns): {} does not exist; make it \
                         first (ip netns add {ns}) with a route to the LUN's target",
                        path.display()
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
        }
        let io = |context: &str| {
            let context = context.to_string();
            move |source| BrokerProcessError::Io { context, source }
        };
        fs::create_dir_all(work_dir).map_err(io("create work dir"))?;
        let config_path = work_dir.join("broker.toml");
        fs::write(&config_path, config_toml).map_err(io("write broker.toml"))?;
        let log_path = work_dir.join("broker.log");
        fs::File::create(&log_path).map_err(io("create broker.log"))?;
        let mut process = BrokerProcess {
            child: None,
            previous: Vec::new(),
            config_path,
            log_path,
            control_socket,
            netns: netns.map(str::to_string),
        };
        process.spawn(binary, false)?;
        Ok(process)
    }

    /// Starts the broker process (again), appending to its log, and waits until it is ready.
    /// `replace`: pass `--replace` (take over the sockets a dead or running broker left).
    fn spawn(&mut self, binary: &Path, replace: bool) -> Result<(), BrokerProcessError> {
        let io = |context: &str| {
            let context = context.to_string();
            move |source| BrokerProcessError::Io { context, source }
        };
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(binary);
                c
            }
            None => Command::new(binary),
        };
        command.arg("broker").arg("--config").arg(&self.config_path);
        if replace {
            command.arg("--replace");
        }
        let mut child = command
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BrokerProcessError::Spawn {
                binary: binary.to_path_buf(),
                source,
            })?;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let (tx, rx) = mpsc::channel::<String>();
        // Both streams go to the log file; the stdout reader also reports readiness.
        let log = fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)
            .map_err(io("open broker.log"))?;
        let log2 = log.try_clone().map_err(io("dup broker.log"))?;
        if let Some(out) = stdout {
            std::thread::spawn(move || copy_lines(out, log, Some(tx)));
        }
        if let Some(err) = stderr {
            std::thread::spawn(move || copy_lines(err, log2, None));
        }
        let timeout = Duration::from_secs(20);
        let ready = loop {
            match rx.recv_timeout(timeout) {
                Ok(line) if line.contains("weir broker ready") => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        self.child = Some(child);
        if !ready {
            self.stop();
            return Err(BrokerProcessError::NotReady(timeout, self.log()));
        }
        Ok(())
    }

    /// SIGKILL: the broker dies with whatever it had in flight (a crash, for the tests of
    /// restart and reconnect).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a new broker on the same config with `--replace` (after [`kill`](Self::kill),
    /// or beside a running one for a handover) and waits until it is ready.
    pub fn restart(&mut self, binary: &Path) -> Result<(), BrokerProcessError> {
        if let Some(old) = self.child.take() {
            // A handover: the old process exits by itself once the new one took over.
            self.previous.push(old);
        }
        self.spawn(binary, true)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGTERM, wait up to 10 s for the orderly drain, then SIGKILL. Returns the exit status
    /// when the broker exited by itself.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        self.stop();
        for mut old in self.previous.drain(..) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }
}

fn copy_lines(stream: impl std::io::Read, mut log: fs::File, tx: Option<mpsc::Sender<String>>) {
    use std::io::Write;
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(log, "{line}");
        if let Some(tx) = &tx {
            let _ = tx.send(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_network_namespace_is_named_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = BrokerProcess::start_in(
            Path::new("/bin/true"),
            "",
            None,
            dir.path(),
            Some("weir-no-such-namespace"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("'weir-no-such-namespace' ([[host]] netns)")
                && err.contains("ip netns add weir-no-such-namespace"),
            "{err}"
        );
    }
}
