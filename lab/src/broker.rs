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
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub control_socket: Option<PathBuf>,
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
        let io = |context: &str| {
            let context = context.to_string();
            move |source| BrokerProcessError::Io { context, source }
        };
        fs::create_dir_all(work_dir).map_err(io("create work dir"))?;
        let config_path = work_dir.join("broker.toml");
        fs::write(&config_path, config_toml).map_err(io("write broker.toml"))?;
        let log_path = work_dir.join("broker.log");
        let mut child = Command::new(binary)
            .arg("broker")
            .arg("--config")
            .arg(&config_path)
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
        let log = fs::File::create(&log_path).map_err(io("create broker.log"))?;
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
        let mut process = BrokerProcess {
            child: Some(child),
            config_path,
            log_path: log_path.clone(),
            control_socket,
        };
        if !ready {
            process.stop();
            let text = fs::read_to_string(&log_path).unwrap_or_default();
            return Err(BrokerProcessError::NotReady(timeout, text));
        }
        Ok(process)
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
