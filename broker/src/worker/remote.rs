//! What a network backend's answer (NBD, iSCSI) means for the request it ends: shared by
//! both, so a lost connection, a target's error and a full task set are handled alike.

use virtio_queue::Queue;

use super::{Op, QueueWorker, WorkerError};

/// How one command of a request ended on a network path.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RemoteOutcome {
    Ok,
    /// The target refused it (the request's error, not the path's).
    Failed(String),
    /// TASK SET FULL or BUSY: offered again through the dispatcher, counted as congestion.
    Congested,
    /// The connection went away before an answer: a path failure.
    Lost(String),
}

impl QueueWorker {
    /// One command of the request in `slot` ended on a network path. The target's error is
    /// the request's (IOERR to the guest); a lost connection is the path's, whether or not the
    /// LUN has other paths, and a full task set the window's congestion signal: either way the
    /// request goes through the dispatcher again once all its commands are back.
    pub(super) fn remote_end(
        &mut self,
        slot: usize,
        outcome: RemoteOutcome,
        queue: &mut Queue,
    ) -> Result<bool, WorkerError> {
        let draining = self.draining;
        let Some(Some(inflight)) = self.slots.get_mut(slot) else {
            return Ok(false);
        };
        let head = inflight.head;
        let mut failure = None;
        match outcome {
            RemoteOutcome::Ok => {}
            RemoteOutcome::Failed(why) => {
                inflight.status = crate::request::VIRTIO_BLK_S_IOERR;
                failure = Some(why);
            }
            RemoteOutcome::Congested => match &mut inflight.sched {
                Some(s) if s.granted.is_some() && !draining => s.congested = true,
                _ => {
                    inflight.status = crate::request::VIRTIO_BLK_S_IOERR;
                    failure = Some("the target's task set is full".into());
                }
            },
            RemoteOutcome::Lost(why) => match &mut inflight.sched {
                Some(s) if s.granted.is_some() && !draining => {
                    s.io_failed.get_or_insert(why);
                }
                _ => {
                    inflight.status = crate::request::VIRTIO_BLK_S_IOERR;
                    failure = Some(why);
                }
            },
        }
        match &mut inflight.op {
            Op::Simple { pending, .. } => {
                *pending = pending.saturating_sub(1);
                if *pending > 0 {
                    if let Some(why) = failure {
                        self.io_error(head, &why);
                    }
                    return Ok(false);
                }
            }
            Op::Rw { total, done, .. } => *done = *total,
        }
        let granted = match &mut inflight.sched {
            Some(s) if s.granted.is_some() => {
                s.io_done = true;
                true
            }
            _ => false,
        };
        if let Some(why) = failure {
            self.io_error(head, &why);
        }
        if granted {
            self.settle(slot, queue)
        } else {
            Ok(self.finish(slot, queue))
        }
    }
}
