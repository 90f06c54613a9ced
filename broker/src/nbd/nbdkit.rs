//! A real nbdkit server as a child process, for the tests and benchmarks that need an NBD
//! peer: started on a unix socket or a loopback TCP port, waited for until it answers the
//! handshake, killed when dropped. Filters (`delay`, `rate`, `error`) shape it into a slow,
//! narrow or faulty target. The server runs with `--exit-with-parent`, whose "parent" is the
//! thread that started it: start (and restart) it from a thread that outlives its use.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::proto::BlockingClient;
use super::uri::{NbdAddress, NbdUri};

/// A running nbdkit.
pub struct Nbdkit {
    child: Child,
    pub uri: NbdUri,
    args: Vec<String>,
}

/// Why nbdkit cannot run here, if it cannot (the package is missing).
pub fn missing() -> Option<String> {
    let ok = Command::new("nbdkit")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then(|| "nbdkit not found (scripts/install-deps.sh installs it)".to_string())
}

impl Nbdkit {
    /// `nbdkit [filters] plugin args...` on a unix socket at `socket`.
    pub fn unix(socket: &Path, plugin_and_args: &[&str]) -> std::io::Result<Nbdkit> {
        let uri = NbdUri {
            address: NbdAddress::Unix(socket.to_path_buf()),
            export: String::new(),
        };
        let mut args = vec!["-U".to_string(), socket.display().to_string()];
        args.extend(plugin_and_args.iter().map(|s| s.to_string()));
        Self::start(uri, args)
    }

    /// The same on 127.0.0.1:`port`.
    pub fn tcp(port: u16, plugin_and_args: &[&str]) -> std::io::Result<Nbdkit> {
        let uri = NbdUri {
            address: NbdAddress::Tcp {
                host: "127.0.0.1".into(),
                port,
            },
            export: String::new(),
        };
        let mut args = vec![
            "-i".to_string(),
            "127.0.0.1".to_string(),
            "-p".to_string(),
            port.to_string(),
        ];
        args.extend(plugin_and_args.iter().map(|s| s.to_string()));
        Self::start(uri, args)
    }

    fn start(uri: NbdUri, args: Vec<String>) -> std::io::Result<Nbdkit> {
        let child = spawn(&uri, &args)?;
        let mut k = Nbdkit { child, uri, args };
        k.wait_ready(Duration::from_secs(10))?;
        Ok(k)
    }

    fn wait_ready(&mut self, limit: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "nbdkit {} exited at start: {status}",
                    self.args.join(" ")
                )));
            }
            if let Ok(c) = BlockingClient::connect(&self.uri, Duration::from_millis(500)) {
                c.disconnect();
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(std::io::Error::other(format!(
                    "nbdkit {} did not answer within {limit:?}",
                    self.args.join(" ")
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (to kill it from outside, or to read its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server at once (a crash: connections drop).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same server again, on the same address (after [`Nbdkit::kill`]).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        self.child = spawn(&self.uri, &self.args)?;
        self.wait_ready(Duration::from_secs(10))
    }

    /// The unix socket, when it listens on one.
    pub fn socket(&self) -> Option<PathBuf> {
        match &self.uri.address {
            NbdAddress::Unix(p) => Some(p.clone()),
            NbdAddress::Tcp { .. } => None,
        }
    }
}

fn spawn(uri: &NbdUri, args: &[String]) -> std::io::Result<Child> {
    if let NbdAddress::Unix(p) = &uri.address {
        let _ = std::fs::remove_file(p);
    }
    Command::new("nbdkit")
        .args(["-f", "--exit-with-parent"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
}

impl Drop for Nbdkit {
    fn drop(&mut self) {
        self.kill();
    }
}
