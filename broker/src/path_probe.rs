//! The path checker's probe of a file or block-device path: multipathd's `directio` checker.
//!
//! Two rules, each learned the hard way:
//! - **Read around the page cache.** A buffered read of a block the host has cached is
//!   answered from memory: a path whose device died looks healthy for as long as the page
//!   stays cached. The probe reads with O_DIRECT (the path's own direct descriptor) whenever
//!   the store took O_DIRECT; stores that refuse it (tmpfs) are memory anyway.
//! - **Never wait on a hung path.** A read of a dead SAN path can block for minutes. The probe
//!   runs on its own thread; the checker waits at most [`PROBE_WAIT`] for it and counts
//!   silence as a failure. A probe still stuck at the next check is not started twice: the path
//!   stays failed until its last probe returns and a new one answers.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The longest the path checker waits for one probe. A healthy path answers a 4 KiB direct
/// read in well under a millisecond; a path slower than this is not one to fail back to.
pub const PROBE_WAIT: Duration = Duration::from_millis(50);

/// The longest the path checker waits for an NBD path's probe: a connection, a handshake of
/// two round trips and a read, on a network whose round trip may be milliseconds.
pub const NBD_PROBE_WAIT: Duration = Duration::from_millis(200);

/// The probe's own bound on each step of its connection (it runs on in the background after
/// the checker stopped waiting, at most this long per step).
const NBD_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Bytes one probe reads at offset 0: one logical block on any device (512 or 4096).
const PROBE_BYTES: usize = 4096;

/// What one probe found.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeOutcome {
    /// The read returned the bytes asked for.
    Answered,
    /// The read failed or came back short.
    Failed(String),
    /// No answer within the wait; the read goes on in the background.
    NoAnswer,
    /// The previous probe of this path has not returned yet.
    StillHung { for_s: f64 },
}

impl ProbeOutcome {
    pub fn ok(&self) -> bool {
        *self == ProbeOutcome::Answered
    }
}

/// Probes of one LUN's paths: at most one in flight per path.
#[derive(Debug)]
pub struct PathProber {
    in_flight: Vec<Arc<InFlight>>,
}

#[derive(Debug, Default)]
struct InFlight {
    busy: AtomicBool,
    since: std::sync::Mutex<Option<Instant>>,
}

impl PathProber {
    pub fn new(paths: usize) -> Self {
        PathProber {
            in_flight: (0..paths).map(|_| Arc::default()).collect(),
        }
    }

    /// Reads `len` bytes (at most [`PROBE_BYTES`]) at offset 0 of `file`, on a thread of its
    /// own, waiting at most `wait`. `file` is the probe's own descriptor (a dup), so a
    /// probe that outlives its LUN reads from a descriptor nobody else reuses.
    pub fn probe(&self, path: usize, file: File, len: u64, wait: Duration) -> ProbeOutcome {
        let len = len.min(PROBE_BYTES as u64) as usize;
        self.run(path, wait, move || read_block(&file, len))
    }

    /// Probes an NBD path: a fresh connection, its handshake and a read of the first block,
    /// waited for at most `wait` (the data path's own connection reconnects by itself when the
    /// path is used again).
    pub fn probe_nbd(
        &self,
        path: usize,
        uri: Arc<crate::nbd::NbdUri>,
        len: u64,
        wait: Duration,
    ) -> ProbeOutcome {
        let len = len.min(PROBE_BYTES as u64) as usize;
        self.run(
            path,
            wait,
            move || match crate::nbd::BlockingClient::connect(&uri, NBD_PROBE_TIMEOUT) {
                Ok(mut c) => {
                    let mut buf = vec![0u8; len];
                    let r = c.read(0, &mut buf);
                    c.disconnect();
                    match r {
                        Ok(()) => ProbeOutcome::Answered,
                        Err(e) => ProbeOutcome::Failed(format!("read: {e}")),
                    }
                }
                Err(e) => ProbeOutcome::Failed(e.to_string()),
            },
        )
    }

    /// Probes an iSCSI path: a fresh login, READ CAPACITY and a read of the first blocks,
    /// waited for at most `wait`.
    pub fn probe_iscsi(
        &self,
        path: usize,
        uri: Arc<crate::iscsi::IscsiUri>,
        len: u64,
        wait: Duration,
    ) -> ProbeOutcome {
        let len = len.min(PROBE_BYTES as u64) as u32;
        self.run(path, wait, move || {
            match crate::iscsi::session::probe(&uri, len) {
                Ok(()) => ProbeOutcome::Answered,
                Err(e) => ProbeOutcome::Failed(e),
            }
        })
    }

    /// Runs `read` as path `path`'s probe on a thread of its own, waiting at most `wait`.
    fn run(
        &self,
        path: usize,
        wait: Duration,
        read: impl FnOnce() -> ProbeOutcome + Send + 'static,
    ) -> ProbeOutcome {
        let Some(slot) = self.in_flight.get(path) else {
            return ProbeOutcome::Failed(format!("no path {path}"));
        };
        if slot.busy.swap(true, Ordering::AcqRel) {
            let since = *slot.since.lock().unwrap_or_else(|p| p.into_inner());
            return ProbeOutcome::StillHung {
                for_s: since.map_or(0.0, |t| t.elapsed().as_secs_f64()),
            };
        }
        *slot.since.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let (tx, rx) = mpsc::sync_channel(1);
        let done = Arc::clone(slot);
        let spawned = std::thread::Builder::new()
            .name("weir-path-probe".into())
            .spawn(move || {
                let outcome = read();
                done.busy.store(false, Ordering::Release);
                // The checker may have stopped waiting; then nobody hears this, on purpose.
                let _ = tx.send(outcome);
            });
        if let Err(e) = spawned {
            slot.busy.store(false, Ordering::Release);
            return ProbeOutcome::Failed(format!("cannot start a probe thread: {e}"));
        }
        rx.recv_timeout(wait).unwrap_or(ProbeOutcome::NoAnswer)
    }
}

/// One aligned read at offset 0: aligned for O_DIRECT on any logical block size.
fn read_block(file: &File, len: usize) -> ProbeOutcome {
    let mut buf = vec![0u8; 2 * PROBE_BYTES];
    let start = buf.as_ptr().align_offset(PROBE_BYTES);
    let block = &mut buf[start..start + len];
    match file.read_at(block, 0) {
        Ok(n) if n == len => ProbeOutcome::Answered,
        Ok(n) => ProbeOutcome::Failed(format!("short read: {n} of {len} bytes")),
        Err(e) => ProbeOutcome::Failed(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readable_file_answers_and_a_short_one_fails() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lun.img");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let prober = PathProber::new(1);
        let f = File::open(&p).unwrap();
        assert_eq!(prober.probe(0, f, 8192, PROBE_WAIT), ProbeOutcome::Answered);
        std::fs::write(&p, vec![7u8; 100]).unwrap();
        let f = File::open(&p).unwrap();
        assert!(matches!(
            prober.probe(0, f, 8192, PROBE_WAIT),
            ProbeOutcome::Failed(_)
        ));
    }

    #[test]
    fn a_hung_read_is_not_waited_for_nor_started_twice() {
        // A read that blocks until the test lets it go, as a dead SAN path's does.
        let prober = PathProber::new(1);
        let (release, hung) = mpsc::channel::<()>();
        let t = Instant::now();
        let outcome = prober.run(0, Duration::from_millis(30), move || {
            let _ = hung.recv();
            ProbeOutcome::Answered
        });
        assert_eq!(outcome, ProbeOutcome::NoAnswer);
        assert!(t.elapsed() < Duration::from_secs(5));
        let again = prober.run(0, Duration::from_millis(30), || ProbeOutcome::Answered);
        assert!(matches!(again, ProbeOutcome::StillHung { .. }), "{again:?}");
        // The read returns once the "device" answers; the next probe runs again.
        release.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while prober.in_flight[0].busy.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        assert_eq!(
            prober.probe(0, f, 4096, Duration::from_secs(5)),
            ProbeOutcome::Answered
        );
    }
}
