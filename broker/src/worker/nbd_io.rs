//! The queue worker's side of an NBD LUN: requests go to the connection of the path the
//! dispatcher chose (`crate::nbd::conn`), on the worker's own io_uring; what comes back is
//! answered like a file's completion. A lost connection is a path failure: the request is
//! re-issued through the dispatcher (another path, or held until the checker sees this one
//! back), so a server restart costs the guest no error.

use std::sync::Arc;

use io_uring::{opcode, types};
use virtio_queue::Queue;

use super::remote::RemoteOutcome;
use super::{Op, QueueWorker, SimpleOp, WorkerError};
use crate::nbd::conn::{Conn, Outcome};
use crate::nbd::proto::{
    CMD_FLAG_NO_HOLE, Cmd, TFLAG_SEND_FLUSH, TFLAG_SEND_TRIM, TFLAG_SEND_WRITE_ZEROES,
};
use crate::request::SECTOR_SIZE;

/// Marks an NBD operation's user data (a request's is its slot index).
pub(super) const NBD_TAG: u64 = 1 << 63;
const KIND_TIMER: u64 = 2;
/// How often unanswered requests are looked at.
const TIMER_NS: u32 = 500_000_000;

/// The NBD state of one queue worker.
pub(super) struct NbdPaths {
    pub conns: Vec<Conn>,
    /// Finished requests, answered at the next chance the worker holds the queue.
    pub done: Vec<(usize, Outcome)>,
    spare_done: Vec<(usize, Outcome)>,
    timer_armed: bool,
    /// Operations to start, gathered per round (kept for its capacity).
    sqes: Vec<io_uring::squeue::Entry>,
    timer: Box<types::Timespec>,
    flags: u16,
    max_payload: u32,
}

impl NbdPaths {
    pub fn new(export: &crate::nbd::NbdExport, size: u64) -> Self {
        NbdPaths {
            conns: export
                .paths
                .iter()
                .map(|u| Conn::new(Arc::clone(u), size))
                .collect(),
            done: Vec::new(),
            spare_done: Vec::new(),
            timer_armed: false,
            sqes: Vec::new(),
            timer: Box::new(types::Timespec::new().nsec(TIMER_NS)),
            flags: export.info.flags,
            max_payload: export.info.max_payload(),
        }
    }
}

/// A request that does not go out on its connection.
enum NotSent {
    /// It ended at once (nothing to do, or the connection is down).
    Now(Outcome),
    /// The export cannot do it.
    Refused(String),
}
use NotSent::{Now, Refused};

impl QueueWorker {
    /// Sends a granted request on its path's connection.
    pub(super) fn submit_nbd(&mut self, slot: usize) {
        let Some(nbd) = self.nbd.as_mut() else {
            return;
        };
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return;
        };
        let path = inflight.sched.as_ref().map_or(0, |s| s.path);
        inflight.started.get_or_insert_with(std::time::Instant::now);
        let mem = inflight.mem.clone();
        let Some(conn) = nbd.conns.get_mut(path) else {
            self.unsubmitted
                .push((slot, format!("no NBD connection for path {path}")));
            return;
        };
        let result = match &mut inflight.op {
            Op::Rw {
                write,
                offset,
                ranges,
                total,
                done,
                direct,
                iovecs,
            } => {
                // All or nothing: an NBD request is not resumed part-way.
                *done = 0;
                *direct = false;
                if *total > u64::from(nbd.max_payload) {
                    Err(Refused(format!(
                        "a request of {total} bytes: the NBD export takes at most {}",
                        nbd.max_payload
                    )))
                } else {
                    super::guest_iovecs(&mem, ranges, 0, *total, iovecs);
                    let cmd = if *write { Cmd::Write } else { Cmd::Read };
                    conn.queue(
                        slot,
                        cmd,
                        0,
                        *offset,
                        *total as u32,
                        iovecs.as_ptr(),
                        iovecs.len(),
                    )
                    .map_err(|e| Now(Outcome::Lost(e)))
                }
            }
            Op::Simple {
                what,
                pending,
                error,
            } => {
                *error = None;
                let mut cmds: Vec<(Cmd, u16, u64, u32)> = Vec::new();
                let mut unsupported = false;
                match what {
                    // An export that takes no flush has nothing volatile to flush.
                    SimpleOp::Flush if nbd.flags & TFLAG_SEND_FLUSH != 0 => {
                        cmds.push((Cmd::Flush, 0, 0, 0));
                    }
                    SimpleOp::Flush => {}
                    SimpleOp::Ranges { zero, ranges } => {
                        for r in ranges.iter() {
                            let (off, len) =
                                (r.sector * SECTOR_SIZE, r.sectors * SECTOR_SIZE as u32);
                            if *zero {
                                if nbd.flags & TFLAG_SEND_WRITE_ZEROES == 0 {
                                    unsupported = true;
                                }
                                let f = if r.unmap { 0 } else { CMD_FLAG_NO_HOLE };
                                cmds.push((Cmd::WriteZeroes, f, off, len));
                            } else if nbd.flags & TFLAG_SEND_TRIM != 0 {
                                // A discard is advisory: an export without TRIM keeps the data.
                                cmds.push((Cmd::Trim, 0, off, len));
                            }
                        }
                    }
                }
                if unsupported {
                    Err(Refused(
                        "the NBD export does not take WRITE_ZEROES".to_string(),
                    ))
                } else if cmds.is_empty() {
                    *pending = 1;
                    Err(Now(Outcome::Ok))
                } else {
                    *pending = cmds.len() as u32;
                    let mut r = Ok(());
                    for (i, (cmd, flags, off, len)) in cmds.into_iter().enumerate() {
                        if let Err(e) = conn.queue(slot, cmd, flags, off, len, std::ptr::null(), 0)
                        {
                            // The commands queued before this one come back lost with the
                            // connection; this one and those after it are lost now.
                            *pending = i as u32 + 1;
                            r = Err(Now(Outcome::Lost(e)));
                            break;
                        }
                    }
                    r
                }
            }
        };
        match result {
            Ok(()) => {}
            Err(Now(outcome)) => nbd.done.push((slot, outcome)),
            // Not the path's fault: answered IOERR at the next chance.
            Err(Refused(why)) => self.unsubmitted.push((slot, why)),
        }
    }

    /// An NBD operation (send, receive or the timer) finished.
    pub(super) fn nbd_event(&mut self, user_data: u64, res: i32) {
        let Some(nbd) = self.nbd.as_mut() else {
            return;
        };
        let kind = user_data & 0xff;
        if kind == KIND_TIMER {
            nbd.timer_armed = false;
            let limit = self.ctx.dispatcher.io_timeout();
            for c in &mut nbd.conns {
                c.expire(limit, &mut nbd.done);
            }
            return;
        }
        let index = ((user_data & !NBD_TAG) >> 8) as usize;
        let Some(conn) = nbd.conns.get_mut(index) else {
            return;
        };
        if kind == 0 {
            conn.on_send(res, &mut nbd.done);
        } else {
            conn.on_recv(res, &mut nbd.done);
        }
    }

    /// Starts what the connections have to send and receive, and the timer while requests
    /// are out.
    pub(super) fn nbd_push(&mut self) {
        let Some(mut nbd) = self.nbd.take() else {
            return;
        };
        let mut sqes = std::mem::take(&mut nbd.sqes);
        for (i, c) in nbd.conns.iter_mut().enumerate() {
            c.sqes(NBD_TAG | ((i as u64) << 8), &mut sqes);
        }
        let waiting = nbd.conns.iter().any(|c| c.outstanding() > 0);
        if waiting && !nbd.timer_armed {
            sqes.push(
                opcode::Timeout::new(&*nbd.timer)
                    .build()
                    .user_data(NBD_TAG | KIND_TIMER),
            );
            nbd.timer_armed = true;
        }
        for sqe in sqes.drain(..) {
            if let Err(e) = self.push(&sqe) {
                // The ring would not take it: the connection cannot go on in step.
                log::error!(
                    "disk {}: NBD: io_uring refused an operation: {e}",
                    self.ctx.name
                );
                let why = format!("io_uring refused an operation: {e}");
                let index = ((sqe.get_user_data() & !NBD_TAG) >> 8) as usize;
                if let Some(c) = nbd.conns.get_mut(index) {
                    c.fail(why, &mut nbd.done);
                }
            }
        }
        nbd.sqes = sqes;
        self.nbd = Some(nbd);
    }

    /// Answers (or re-issues) what the connections handed back.
    pub(super) fn nbd_settle(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        let mut used = false;
        loop {
            // Swapped with a spare list: what settling hands back lands in the other one, and
            // neither is allocated again.
            let mut done = match self.nbd.as_mut() {
                Some(n) if !n.done.is_empty() => {
                    let spare = std::mem::take(&mut n.spare_done);
                    std::mem::replace(&mut n.done, spare)
                }
                _ => break,
            };
            for (slot, outcome) in done.drain(..) {
                used |= self.nbd_end(slot, outcome, queue)?;
            }
            if let Some(n) = self.nbd.as_mut() {
                n.spare_done = done;
            }
        }
        Ok(used)
    }

    /// One NBD command of the request in `slot` ended: the server's error is the request's,
    /// a lost connection the path's.
    fn nbd_end(
        &mut self,
        slot: usize,
        outcome: Outcome,
        queue: &mut Queue,
    ) -> Result<bool, WorkerError> {
        let remote = match outcome {
            Outcome::Ok => RemoteOutcome::Ok,
            Outcome::Failed(errno) => RemoteOutcome::Failed(format!(
                "the NBD server answered: {}",
                std::io::Error::from_raw_os_error(errno)
            )),
            Outcome::Lost(why) => RemoteOutcome::Lost(why),
        };
        self.remote_end(slot, remote, queue)
    }

    /// Says goodbye on every idle connection (the guest is gone).
    pub(super) fn nbd_disconnect(&mut self) {
        if let Some(nbd) = self.nbd.as_mut() {
            for c in &mut nbd.conns {
                c.disconnect();
            }
        }
    }
}
