//! The queue worker's side of an iSCSI LUN: requests become SCSI commands on the session of
//! the path the dispatcher chose (`crate::iscsi::session`), whose socket the worker's io_uring
//! polls; what comes back is answered like a file's completion. A lost session is a path
//! failure (the request is re-issued through the dispatcher), TASK SET FULL / BUSY a
//! congestion signal (offered again, the window told).

use io_uring::{opcode, types};
use virtio_queue::Queue;

use super::remote::RemoteOutcome;
use super::{Op, QueueWorker, SimpleOp, WorkerError};
use crate::iscsi::IscsiLun;
use crate::iscsi::session::{Command, Outcome, Session};
use crate::request::SECTOR_SIZE;

/// Marks an iSCSI operation's user data (a request's is its slot index).
pub(super) const ISCSI_TAG: u64 = 1 << 62;
const KIND_TIMER: u64 = 2;
/// How often unanswered commands are looked at.
const TIMER_NS: u32 = 500_000_000;

/// The iSCSI state of one queue worker.
pub(super) struct IscsiPaths {
    sessions: Vec<Session>,
    /// Every path logged in once (at the guest's first command).
    logged_in: bool,
    /// Finished commands, answered at the next chance the worker holds the queue.
    done: Vec<(usize, Outcome)>,
    spare_done: Vec<(usize, Outcome)>,
    timer_armed: bool,
    sqes: Vec<io_uring::squeue::Entry>,
    cmds: Vec<Command>,
    timer: Box<types::Timespec>,
}

impl IscsiPaths {
    /// The worker's sessions, not logged in yet (see [`QueueWorker::submit_iscsi`]).
    pub fn new(lun: &IscsiLun) -> Self {
        let sessions: Vec<Session> = lun
            .paths
            .iter()
            .map(|u| Session::new(u.clone(), lun.block_size, lun.blocks, lun.thin))
            .collect();
        IscsiPaths {
            sessions,
            logged_in: false,
            done: Vec::new(),
            spare_done: Vec::new(),
            timer_armed: false,
            sqes: Vec::new(),
            cmds: Vec::new(),
            timer: Box::new(types::Timespec::new().nsec(TIMER_NS)),
        }
    }
}

// SAFETY: `cmds` is scratch space, cleared before each use; the pointers into guest memory it
// may still hold are never read again. The sessions are `Send` themselves.
unsafe impl Send for IscsiPaths {}

impl QueueWorker {
    /// Sends a granted request as commands on its path's session.
    ///
    /// The guest's first command logs every path in, one after the other: a target may take a
    /// second per login (istgt does, and takes one at a time), paid once here rather than on
    /// each path's first command; and not earlier, when the worker is made before a guest
    /// connects: an idle session nobody polls leaves the target's NOP-Ins unanswered, and
    /// targets drop such sessions (LIO after 45 s by default). From here on the sessions' polls
    /// stay armed, so the worker answers NOP-Ins while the guest is idle.
    pub(super) fn submit_iscsi(&mut self, slot: usize) {
        let Some(iscsi) = self.iscsi.as_mut() else {
            return;
        };
        if !iscsi.logged_in {
            iscsi.logged_in = true;
            for s in iscsi.sessions.iter_mut() {
                if let Err(e) = s.connect() {
                    log::warn!("iSCSI: {e}");
                }
            }
        }
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return;
        };
        let path = inflight.sched.as_ref().map_or(0, |s| s.path);
        inflight.started.get_or_insert_with(std::time::Instant::now);
        let mem = inflight.mem.clone();
        let Some(session) = iscsi.sessions.get_mut(path) else {
            self.unsubmitted
                .push((slot, format!("no iSCSI session for path {path}")));
            return;
        };
        let mut cmds = std::mem::take(&mut iscsi.cmds);
        cmds.clear();
        let pending = match &mut inflight.op {
            Op::Rw {
                write,
                offset,
                ranges,
                total,
                done,
                direct,
                iovecs,
            } => {
                // All or nothing: a SCSI command is not resumed part-way.
                *done = 0;
                *direct = false;
                super::guest_iovecs(&mem, ranges, 0, *total, iovecs);
                let (offset, len) = (*offset, *total as u32);
                let (iov, count) = (iovecs.as_mut_ptr(), iovecs.len());
                cmds.push(if *write {
                    Command::Write {
                        offset,
                        len,
                        iov,
                        count,
                    }
                } else {
                    Command::Read {
                        offset,
                        len,
                        iov,
                        count,
                    }
                });
                None
            }
            Op::Simple {
                what,
                pending,
                error,
            } => {
                *error = None;
                match what {
                    SimpleOp::Flush => cmds.push(Command::Flush),
                    SimpleOp::Ranges { zero, ranges } => {
                        for r in ranges.iter() {
                            let (off, len) =
                                (r.sector * SECTOR_SIZE, u64::from(r.sectors) * SECTOR_SIZE);
                            if *zero {
                                session.write_zeroes_commands(off, len, r.unmap, &mut cmds);
                            } else {
                                session.unmap_commands(off, len, &mut cmds);
                            }
                        }
                    }
                }
                Some(pending)
            }
        };
        if cmds.is_empty() {
            // A discard on a LUN that takes none: advisory, done.
            if let Some(p) = pending {
                *p = 1;
            }
            iscsi.done.push((slot, Outcome::Ok));
        } else {
            if let Some(p) = pending {
                *p = cmds.len() as u32;
            }
            for (i, cmd) in cmds.iter().enumerate() {
                if let Err(e) = session.queue(slot, *cmd) {
                    // Those queued before come back with the session; this one and the rest
                    // end now.
                    if let Op::Simple { pending, .. } = &mut inflight.op {
                        *pending = i as u32 + 1;
                    }
                    let outcome = if session.is_up() {
                        Outcome::Failed(e)
                    } else {
                        Outcome::Lost(e)
                    };
                    iscsi.done.push((slot, outcome));
                    break;
                }
            }
        }
        iscsi.cmds = cmds;
    }

    /// An iSCSI poll or the timer finished.
    pub(super) fn iscsi_event(&mut self, user_data: u64, res: i32) {
        let Some(iscsi) = self.iscsi.as_mut() else {
            return;
        };
        if user_data & 0xff == KIND_TIMER {
            iscsi.timer_armed = false;
            let limit = self.ctx.dispatcher.io_timeout();
            for s in &mut iscsi.sessions {
                s.expire(limit, &mut iscsi.done);
            }
            return;
        }
        let index = ((user_data >> 8) & 0xff) as usize;
        if let Some(s) = iscsi.sessions.get_mut(index) {
            s.on_poll(user_data, res, &mut iscsi.done);
        }
    }

    /// Writes what the sessions queued and arms their polls, and the timer while commands
    /// are out.
    pub(super) fn iscsi_push(&mut self) {
        let Some(mut iscsi) = self.iscsi.take() else {
            return;
        };
        let mut sqes = std::mem::take(&mut iscsi.sqes);
        for (i, s) in iscsi.sessions.iter_mut().enumerate() {
            s.sqes(ISCSI_TAG | ((i as u64) << 8), &mut iscsi.done, &mut sqes);
        }
        let waiting = iscsi.sessions.iter().any(|s| s.outstanding() > 0);
        if waiting && !iscsi.timer_armed {
            sqes.push(
                opcode::Timeout::new(&*iscsi.timer)
                    .build()
                    .user_data(ISCSI_TAG | KIND_TIMER),
            );
            iscsi.timer_armed = true;
        }
        for sqe in sqes.drain(..) {
            if let Err(e) = self.push(&sqe) {
                log::error!(
                    "disk {}: iSCSI: io_uring refused an operation: {e}",
                    self.ctx.name
                );
                let index = ((sqe.get_user_data() >> 8) & 0xff) as usize;
                if let Some(s) = iscsi.sessions.get_mut(index) {
                    s.fail(format!("io_uring refused a poll: {e}"), &mut iscsi.done);
                }
            }
        }
        iscsi.sqes = sqes;
        self.iscsi = Some(iscsi);
    }

    /// Answers (or offers again) what the sessions handed back.
    pub(super) fn iscsi_settle(&mut self, queue: &mut Queue) -> Result<bool, WorkerError> {
        let mut used = false;
        loop {
            let mut done = match self.iscsi.as_mut() {
                Some(n) if !n.done.is_empty() => {
                    let spare = std::mem::take(&mut n.spare_done);
                    std::mem::replace(&mut n.done, spare)
                }
                _ => break,
            };
            for (slot, outcome) in done.drain(..) {
                let remote = match outcome {
                    Outcome::Ok => RemoteOutcome::Ok,
                    Outcome::Failed(why) => {
                        RemoteOutcome::Failed(format!("the iSCSI target answered: {why}"))
                    }
                    Outcome::Congested => RemoteOutcome::Congested,
                    Outcome::Lost(why) => RemoteOutcome::Lost(why),
                };
                used |= self.remote_end(slot, remote, queue)?;
            }
            if let Some(n) = self.iscsi.as_mut() {
                n.spare_done = done;
            }
        }
        Ok(used)
    }

    /// Logs out of every idle session (the guest is gone).
    pub(super) fn iscsi_disconnect(&mut self) {
        if let Some(iscsi) = self.iscsi.as_mut() {
            for s in &mut iscsi.sessions {
                s.disconnect();
            }
        }
    }
}
