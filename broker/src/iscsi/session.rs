//! One iSCSI session on the data path (one per queue worker and path), driven from the
//! worker's io_uring: libiscsi builds and parses the PDUs, the worker's ring polls the socket.
//!
//! libiscsi runs its own socket loop (`iscsi_get_fd`, `iscsi_which_events`, `iscsi_service`):
//! here a `POLL_ADD` for input stays armed while the session is up, one for output is armed
//! while libiscsi has PDUs it could not write at once, and each poll's answer is handed to
//! `iscsi_service`. Commands queued in a round are written at once (`iscsi_service(POLLOUT)`
//! when the round's commands are in). A command's callback only records the answer; the
//! answers are read after `iscsi_service` returns, outside libiscsi.
//!
//! **What an answer means.** GOOD: done. TASK SET FULL or BUSY: the target's queue is full —
//! a congestion signal for the LUN's window, the command is offered again later
//! ([`Outcome::Congested`]). CHECK CONDITION with UNIT ATTENTION (a target reset, a LUN
//! change, a new session's first answer): sent again on this session, up to
//! [`UNIT_ATTENTION_RETRIES`] times. Any other CHECK CONDITION: the command's error (IOERR to
//! the guest), the session stays. A lost session — a socket error, `iscsi_service` failing, a
//! command unanswered for `io_timeout_s` — is a path failure: every command on it comes back
//! [`Outcome::Lost`] and the worker re-issues it through the dispatcher. The next command
//! routed here logs in again, synchronously, at most once per [`RECONNECT_EVERY`].

use std::ffi::{CString, c_int, c_void};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, squeue, types};

use super::ffi::{self, Context, Lib, Sense, Task, UnmapList};
use super::uri::IscsiUri;

/// A session that failed is logged into again at most this often.
pub const RECONNECT_EVERY: Duration = Duration::from_millis(250);
/// The initiator's name, as targets see it.
pub const INITIATOR: &str = "iqn.2026-12.org.weir:broker";
/// How often a command answered UNIT ATTENTION is sent again before it fails.
pub const UNIT_ATTENTION_RETRIES: u8 = 3;
/// The longest a login may take, seconds (libiscsi's own timeout).
const LOGIN_TIMEOUT_S: c_int = 3;
/// Blocks in one WRITE SAME (larger ranges are split).
const WRITE_SAME_BLOCKS: u64 = 65_535;

/// How a command on this session ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    /// The target refused it with this error (the command's, not the path's).
    Failed(String),
    /// The target's task set is full (TASK SET FULL, BUSY): offer it again later.
    Congested,
    /// The session went away before an answer.
    Lost(String),
}

/// A SCSI command, as the worker asks for it.
#[derive(Debug, Clone, Copy)]
pub enum Command {
    /// `iov`/`count`: guest buffers, valid until the command is handed back.
    Read {
        offset: u64,
        len: u32,
        iov: *mut libc::iovec,
        count: usize,
    },
    Write {
        offset: u64,
        len: u32,
        iov: *mut libc::iovec,
        count: usize,
    },
    Flush,
    /// Discard (UNMAP) or write zeroes (WRITE SAME of a zero block).
    Unmap {
        offset: u64,
        len: u64,
    },
    WriteZeroes {
        offset: u64,
        len: u64,
        unmap: bool,
    },
}

struct Pending {
    slot: usize,
    task: *mut Task,
    cmd: Command,
    since: Instant,
    unit_attentions: u8,
}

/// What callbacks write: the commands' answers, read after `iscsi_service` returns.
#[derive(Default)]
struct Answers {
    list: Vec<(usize, c_int, Option<Sense>)>,
}

/// A callback's private data: which command and where its answer goes.
struct Token {
    answers: *mut Answers,
    id: usize,
}

pub struct Session {
    uri: Arc<IscsiUri>,
    /// The LUN's block size and block count (from the LUN's first login).
    block: u32,
    blocks: u64,
    /// The LUN takes UNMAP (READ CAPACITY's LBPME).
    thin: bool,
    ctx: *mut Context,
    /// Bumped at every login: a poll armed on an earlier socket is ignored when it returns.
    generation: u32,
    poll_in: bool,
    poll_out: bool,
    pending: Vec<Option<Pending>>,
    free: Vec<usize>,
    outstanding: usize,
    answers: Box<Answers>,
    last_attempt: Option<Instant>,
    logins: u64,
    zero_block: Vec<u8>,
}

impl Session {
    pub fn new(uri: Arc<IscsiUri>, block: u32, blocks: u64, thin: bool) -> Self {
        Session {
            uri,
            block,
            blocks,
            thin,
            ctx: std::ptr::null_mut(),
            generation: 0,
            poll_in: false,
            poll_out: false,
            pending: Vec::new(),
            free: Vec::new(),
            outstanding: 0,
            answers: Box::default(),
            last_attempt: None,
            logins: 0,
            zero_block: vec![0u8; block as usize],
        }
    }

    pub fn is_up(&self) -> bool {
        !self.ctx.is_null()
    }

    /// Commands on this session (sent or waiting to be).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Logs in now (when the worker starts, rather than on its first command).
    pub fn connect(&mut self) -> Result<(), String> {
        self.ensure_up().map(|_| ())
    }

    /// Logs in when down (at most once per [`RECONNECT_EVERY`]).
    fn ensure_up(&mut self) -> Result<&'static Lib, String> {
        let lib = ffi::lib()?;
        if self.is_up() {
            return Ok(lib);
        }
        if self
            .last_attempt
            .is_some_and(|t| t.elapsed() < RECONNECT_EVERY)
        {
            return Err(format!("{}: not logged in (retrying shortly)", self.uri));
        }
        self.last_attempt = Some(Instant::now());
        let ctx = login(lib, &self.uri)?;
        // The size the LUN was opened with must still be there.
        match capacity(lib, ctx, &self.uri) {
            Ok((blocks, block, _)) if block == self.block && blocks >= self.blocks => {}
            Ok((blocks, block, _)) => {
                close(lib, ctx);
                return Err(format!(
                    "{}: the LUN now has {blocks} blocks of {block} bytes, not the {} of {} \
                     it was opened with",
                    self.uri, self.blocks, self.block
                ));
            }
            Err(e) => {
                close(lib, ctx);
                return Err(e);
            }
        }
        if self.logins > 0 {
            log::info!("iSCSI {}: logged in again", self.uri);
        }
        self.logins += 1;
        self.ctx = ctx;
        self.generation = self.generation.wrapping_add(1);
        Ok(lib)
    }

    /// Queues one command for `slot`; it goes out with the round's [`Session::flush`].
    pub fn queue(&mut self, slot: usize, cmd: Command) -> Result<(), String> {
        let lib = self.ensure_up()?;
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.pending.push(None);
                self.pending.len() - 1
            }
        };
        let task = match self.start(lib, id, cmd) {
            Ok(task) => task,
            Err(e) => {
                self.free.push(id);
                return Err(e);
            }
        };
        if let Some(p) = self.pending.get_mut(id) {
            *p = Some(Pending {
                slot,
                task,
                cmd,
                since: Instant::now(),
                unit_attentions: 0,
            });
        }
        self.outstanding += 1;
        Ok(())
    }

    /// Hands the command to libiscsi (it is written at the next `iscsi_service`).
    fn start(&mut self, lib: &Lib, id: usize, cmd: Command) -> Result<*mut Task, String> {
        let lun = c_int::from(self.uri.lun);
        let b = u64::from(self.block);
        let aligned = |off: u64, len: u64| off % b == 0 && len % b == 0;
        let token = Box::into_raw(Box::new(Token {
            answers: &mut *self.answers,
            id,
        }))
        .cast::<c_void>();
        let ctx = self.ctx;
        let bs = self.block as c_int;
        // SAFETY (every call below): `ctx` is this session's live, logged-in context; the
        // callback is `on_answer` with `token` (freed by it, or below when the call fails);
        // the iovecs (guest memory) stay valid until the command is handed back, which the
        // worker waits for; the unmap list and zero block are copied or held by the task
        // until it ends (the zero block lives in this session, which outlives its commands).
        let task = unsafe {
            match cmd {
                Command::Read { .. } | Command::Write { .. } => {
                    let (offset, len, iov, count, write) = match cmd {
                        Command::Read {
                            offset,
                            len,
                            iov,
                            count,
                        } => (offset, len, iov, count, false),
                        Command::Write {
                            offset,
                            len,
                            iov,
                            count,
                        } => (offset, len, iov, count, true),
                        _ => unreachable!(),
                    };
                    if !aligned(offset, u64::from(len)) {
                        drop(Box::from_raw(token.cast::<Token>()));
                        return Err(format!(
                            "a request at byte {offset} of {len} bytes is not aligned to the \
                             target's {b}-byte blocks"
                        ));
                    }
                    let (lba, n) = (offset / b, count as c_int);
                    if write {
                        (lib.write16_iov_task)(
                            ctx,
                            lun,
                            lba,
                            std::ptr::null_mut(),
                            len,
                            bs,
                            0,
                            0,
                            0,
                            0,
                            0,
                            on_answer,
                            token,
                            iov,
                            n,
                        )
                    } else {
                        (lib.read16_iov_task)(
                            ctx, lun, lba, len, bs, 0, 0, 0, 0, 0, on_answer, token, iov, n,
                        )
                    }
                }
                Command::Flush => {
                    (lib.synchronizecache16_task)(ctx, lun, 0, 0, 0, 0, on_answer, token)
                }
                Command::Unmap { offset, len } => {
                    let mut list = UnmapList {
                        lba: offset / b,
                        num: (len / b) as u32,
                    };
                    (lib.unmap_task)(ctx, lun, 0, 0, &mut list, 1, on_answer, token)
                }
                Command::WriteZeroes { offset, len, unmap } => (lib.writesame16_task)(
                    ctx,
                    lun,
                    offset / b,
                    self.zero_block.as_mut_ptr(),
                    self.block,
                    (len / b) as u32,
                    0,
                    c_int::from(unmap && self.thin),
                    0,
                    0,
                    on_answer,
                    token,
                ),
            }
        };
        if task.is_null() {
            // SAFETY: libiscsi took no callback for a command it did not create.
            drop(unsafe { Box::from_raw(token.cast::<Token>()) });
            return Err(format!(
                "{}: libiscsi would not build the command: {}",
                self.uri,
                ffi::error_of(lib, ctx)
            ));
        }
        Ok(task)
    }

    /// The commands a request turns into: UNMAP only on a thin LUN (a discard is advisory),
    /// WRITE SAME split into pieces a target takes.
    pub fn unmap_commands(&self, offset: u64, len: u64, out: &mut Vec<Command>) {
        if self.thin {
            out.push(Command::Unmap { offset, len });
        }
    }

    pub fn write_zeroes_commands(
        &self,
        offset: u64,
        len: u64,
        unmap: bool,
        out: &mut Vec<Command>,
    ) {
        let step = WRITE_SAME_BLOCKS * u64::from(self.block);
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let n = step.min(end - at);
            out.push(Command::WriteZeroes {
                offset: at,
                len: n,
                unmap,
            });
            at += n;
        }
    }

    /// Writes what libiscsi has queued, then arms the polls the session needs: input always,
    /// output while PDUs wait.
    pub fn sqes(
        &mut self,
        tag: u64,
        done: &mut Vec<(usize, Outcome)>,
        out: &mut Vec<squeue::Entry>,
    ) {
        if !self.is_up() {
            return;
        }
        let Ok(lib) = ffi::lib() else {
            return;
        };
        // SAFETY: a live context.
        if unsafe { (lib.out_queue_length)(self.ctx) } > 0 {
            self.service(lib, libc::POLLOUT as c_int, done);
            if !self.is_up() {
                return;
            }
        }
        // SAFETY: a live context.
        let (fd, events) = unsafe { ((lib.get_fd)(self.ctx), (lib.which_events)(self.ctx)) };
        let gen_tag = tag | (u64::from(self.generation) << 16);
        if !self.poll_in {
            self.poll_in = true;
            out.push(
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .build()
                    .user_data(gen_tag | KIND_IN),
            );
        }
        if events & libc::POLLOUT as c_int != 0 && !self.poll_out {
            self.poll_out = true;
            out.push(
                opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                    .build()
                    .user_data(gen_tag | KIND_OUT),
            );
        }
    }

    /// A poll armed by [`Session::sqes`] answered `res` (its events, or -errno).
    pub fn on_poll(&mut self, user_data: u64, res: i32, done: &mut Vec<(usize, Outcome)>) {
        let generation = ((user_data >> 16) & 0xffff_ffff) as u32;
        if generation != self.generation || !self.is_up() {
            // A poll of a socket already closed.
            return;
        }
        if user_data & 0xff == KIND_IN {
            self.poll_in = false;
        } else {
            self.poll_out = false;
        }
        let Ok(lib) = ffi::lib() else {
            return;
        };
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            self.fail(format!("poll: {e}"), done);
            return;
        }
        self.service(lib, res, done);
    }

    /// Lets libiscsi read and write (`revents`), then reads the answers it recorded.
    fn service(&mut self, lib: &Lib, revents: c_int, done: &mut Vec<(usize, Outcome)>) {
        // SAFETY: a live context; callbacks run inside and only record into `answers`.
        let r = unsafe { (lib.service)(self.ctx, revents) };
        let failed = (r < 0).then(|| ffi::error_of(lib, self.ctx));
        self.take_answers(lib, done);
        if revents & (libc::POLLHUP | libc::POLLERR) as c_int != 0 && failed.is_none() {
            self.fail("the target closed the connection".into(), done);
        } else if let Some(why) = failed {
            self.fail(why, done);
        }
    }

    /// Turns the recorded answers into outcomes; a UNIT ATTENTION goes out again.
    fn take_answers(&mut self, lib: &Lib, done: &mut Vec<(usize, Outcome)>) {
        let answers = std::mem::take(&mut self.answers.list);
        for (id, status, sense) in answers {
            let Some(p) = self.pending.get_mut(id).and_then(Option::take) else {
                continue;
            };
            // SAFETY: the task ended (its callback ran); libiscsi holds it no more.
            unsafe { (lib.free_scsi_task)(p.task) };
            let outcome = match status {
                ffi::STATUS_GOOD => Outcome::Ok,
                ffi::STATUS_TASK_SET_FULL | ffi::STATUS_BUSY => Outcome::Congested,
                ffi::STATUS_CANCELLED => Outcome::Lost("the session was closed".into()),
                ffi::STATUS_CHECK_CONDITION => {
                    let s = sense.unwrap_or_default();
                    if s.key == ffi::SENSE_UNIT_ATTENTION
                        && p.unit_attentions < UNIT_ATTENTION_RETRIES
                        && self.is_up()
                    {
                        log::info!(
                            "iSCSI {}: UNIT ATTENTION (asc/ascq {:04x}): the command goes again",
                            self.uri,
                            s.ascq
                        );
                        match self.start(lib, id, p.cmd) {
                            Ok(task) => {
                                self.pending[id] = Some(Pending {
                                    task,
                                    unit_attentions: p.unit_attentions + 1,
                                    ..p
                                });
                                continue;
                            }
                            Err(e) => Outcome::Failed(e),
                        }
                    } else {
                        Outcome::Failed(sense_text(&s))
                    }
                }
                other => Outcome::Failed(format!("SCSI status {other:#x}")),
            };
            self.outstanding = self.outstanding.saturating_sub(1);
            self.free.push(id);
            done.push((p.slot, outcome));
        }
    }

    /// Closes the session for `why`: every command on it comes back lost.
    pub fn fail(&mut self, why: String, done: &mut Vec<(usize, Outcome)>) {
        if !self.is_up() {
            return;
        }
        log::warn!("iSCSI {}: session lost: {why}", self.uri);
        let Ok(lib) = ffi::lib() else {
            return;
        };
        for p in self.pending.iter().flatten() {
            // SAFETY: a live context and a task it holds; the callback records CANCELLED.
            unsafe { (lib.cancel_task)(self.ctx, p.task) };
        }
        self.take_answers(lib, done);
        // A command cancel did not find (its PDU half-written) is lost too; its task is left
        // to libiscsi, which may still point to it: a leak, rather than a use after free.
        for (id, p) in self.pending.iter_mut().enumerate() {
            if let Some(p) = p.take() {
                self.free.push(id);
                done.push((p.slot, Outcome::Lost(why.clone())));
            }
        }
        self.outstanding = 0;
        self.close(lib);
    }

    fn close(&mut self, lib: &Lib) {
        // SAFETY: a live context; shutting the socket down first wakes the polls armed on it
        // (they hold the socket open until they return).
        unsafe {
            let fd = (lib.get_fd)(self.ctx);
            if fd >= 0 {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
        close(lib, self.ctx);
        self.ctx = std::ptr::null_mut();
        self.poll_in = false;
        self.poll_out = false;
    }

    /// Closes the session when its oldest command has waited longer than `limit`.
    pub fn expire(&mut self, limit: Duration, done: &mut Vec<(usize, Outcome)>) {
        let oldest = self.pending.iter().flatten().map(|p| p.since).min();
        if let Some(t) = oldest.filter(|t| t.elapsed() > limit) {
            let waited = t.elapsed().as_secs_f64();
            self.fail(format!("no answer for {waited:.1} s (io_timeout_s)"), done);
        }
    }

    /// Closes an idle session (the guest is gone; the next command logs in again).
    pub fn disconnect(&mut self) {
        if self.outstanding > 0 || !self.is_up() {
            return;
        }
        if let Ok(lib) = ffi::lib() {
            // SAFETY: a live, logged-in context with nothing of ours in flight.
            unsafe { (lib.logout_sync)(self.ctx) };
            self.close(lib);
        }
        self.last_attempt = None;
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.outstanding == 0 {
            self.disconnect();
        } else if self.is_up() {
            let mut lost = Vec::new();
            self.fail("the session is dropped".into(), &mut lost);
        }
    }
}

/// Poll kinds in a session's user data.
const KIND_IN: u64 = 1;
const KIND_OUT: u64 = 3;

/// libiscsi's callback: records the answer (and the sense data) for after `iscsi_service`.
unsafe extern "C" fn on_answer(
    _ctx: *mut Context,
    status: c_int,
    command_data: *mut c_void,
    private: *mut c_void,
) {
    // SAFETY: `private` is the Token boxed for this command by `Session::start`, handed to
    // this callback once.
    let token = unsafe { Box::from_raw(private.cast::<Token>()) };
    let mut sense = None;
    if status == ffi::STATUS_CHECK_CONDITION && !command_data.is_null() {
        if let Ok(lib) = ffi::lib() {
            let mut s = Sense::default();
            // SAFETY: `command_data` is the command's task (libiscsi passes it on an answer).
            unsafe { (lib.task_get_status)(command_data.cast::<Task>(), &mut s) };
            sense = Some(s);
        }
    }
    // SAFETY: the session's Answers (boxed, never moved) outlives its commands; callbacks
    // run on the session's thread, inside its calls into libiscsi.
    unsafe { (*token.answers).list.push((token.id, status, sense)) };
}

/// The sense data in words.
fn sense_text(s: &Sense) -> String {
    let key = match s.key {
        ffi::SENSE_NOT_READY => "NOT READY",
        ffi::SENSE_MEDIUM_ERROR => "MEDIUM ERROR",
        ffi::SENSE_ILLEGAL_REQUEST => "ILLEGAL REQUEST",
        ffi::SENSE_UNIT_ATTENTION => "UNIT ATTENTION",
        ffi::SENSE_DATA_PROTECTION => "DATA PROTECTION",
        _ => "error",
    };
    format!(
        "CHECK CONDITION: {key} (sense key {:#x}, asc/ascq {:04x})",
        s.key, s.ascq
    )
}

/// A new context logged in to `uri`'s LUN.
fn login(lib: &Lib, uri: &IscsiUri) -> Result<*mut Context, String> {
    let c = |s: &str| CString::new(s).map_err(|_| format!("{uri}: a NUL in the URI"));
    let (initiator, target, portal) = (c(INITIATOR)?, c(&uri.target)?, c(&uri.portal)?);
    // SAFETY: NUL-terminated strings, copied by libiscsi.
    let ctx = unsafe { (lib.create_context)(initiator.as_ptr()) };
    if ctx.is_null() {
        return Err(format!("{uri}: libiscsi could not create a context"));
    }
    // libiscsi's own log on stderr, for debugging a target: WEIR_ISCSI_LOG=1 (errors) .. 10.
    if let Some(level) = std::env::var("WEIR_ISCSI_LOG")
        .ok()
        .and_then(|v| v.parse::<c_int>().ok())
    {
        // SAFETY: a fresh context; libiscsi's own stderr logger.
        unsafe {
            (lib.set_log_level)(ctx, level);
            (lib.set_log_fn)(ctx, lib.log_to_stderr);
        }
    }
    // SAFETY: a fresh context; strings as above.
    let r = unsafe {
        (lib.set_targetname)(ctx, target.as_ptr());
        (lib.set_session_type)(ctx, ffi::SESSION_NORMAL);
        (lib.set_header_digest)(ctx, ffi::HEADER_DIGEST_NONE_CRC32C);
        // A lost session is the path's failure, handled by the broker (re-issue elsewhere),
        // not reconnected behind its back.
        (lib.set_noautoreconnect)(ctx, 1);
        (lib.set_timeout)(ctx, LOGIN_TIMEOUT_S);
        let r = (lib.full_connect_sync)(ctx, portal.as_ptr(), c_int::from(uri.lun));
        // Data commands time out by io_timeout_s, the broker's.
        (lib.set_timeout)(ctx, 0);
        r
    };
    if r != 0 {
        let e = ffi::error_of(lib, ctx);
        close(lib, ctx);
        return Err(format!("{uri}: login failed: {e}"));
    }
    Ok(ctx)
}

fn close(lib: &Lib, ctx: *mut Context) {
    // SAFETY: a context nobody uses after this.
    unsafe { (lib.destroy_context)(ctx) };
}

/// Logs out (so the target frees the session at once: some, like istgt, count sessions
/// against a limit and keep a vanished one for a while), then closes.
fn logout_and_close(lib: &Lib, ctx: *mut Context) {
    // SAFETY: a live, logged-in context with no commands of ours in flight.
    unsafe { (lib.logout_sync)(ctx) };
    close(lib, ctx);
}

/// READ CAPACITY (16): (blocks, block size, thin).
fn capacity(lib: &Lib, ctx: *mut Context, uri: &IscsiUri) -> Result<(u64, u32, bool), String> {
    // SAFETY: a live context; the task is freed below.
    let task = unsafe { (lib.readcapacity16_sync)(ctx, c_int::from(uri.lun)) };
    if task.is_null() {
        return Err(format!(
            "{uri}: READ CAPACITY (16) failed: {}",
            ffi::error_of(lib, ctx)
        ));
    }
    let mut sense = Sense::default();
    // SAFETY: a task the sync call returned; unmarshalled data lives in the task.
    unsafe {
        let status = (lib.task_get_status)(task, &mut sense);
        let rc = (lib.datain_unmarshall)(task).cast::<ffi::ReadCapacity16>();
        let r = if status != ffi::STATUS_GOOD {
            Err(format!("{uri}: READ CAPACITY (16): {}", sense_text(&sense)))
        } else if rc.is_null() {
            Err(format!(
                "{uri}: READ CAPACITY (16) answered nothing readable"
            ))
        } else {
            let rc = *rc;
            Ok((rc.returned_lba + 1, rc.block_length, rc.lbpme != 0))
        };
        (lib.free_scsi_task)(task);
        r
    }
}

/// A LUN's shape, read over a session of its own: (blocks, block size, thin).
pub fn inquire(uri: &IscsiUri) -> Result<(u64, u32, bool), String> {
    let lib = ffi::lib()?;
    let ctx = login(lib, uri)?;
    let r = capacity(lib, ctx, uri);
    logout_and_close(lib, ctx);
    r
}

/// The path checker's probe: a fresh login and a read of the first `len` bytes.
pub fn probe(uri: &IscsiUri, len: u32) -> Result<(), String> {
    let lib = ffi::lib()?;
    let ctx = login(lib, uri)?;
    let r = (|| {
        let (_, block, _) = capacity(lib, ctx, uri)?;
        let len = len.max(block) / block * block;
        // SAFETY: a live context; the task is freed below.
        let task = unsafe {
            (lib.read16_sync)(
                ctx,
                c_int::from(uri.lun),
                0,
                len,
                block as c_int,
                0,
                0,
                0,
                0,
                0,
            )
        };
        if task.is_null() {
            return Err(format!("read: {}", ffi::error_of(lib, ctx)));
        }
        let mut sense = Sense::default();
        // SAFETY: the task the sync call returned, freed once.
        let status = unsafe {
            let s = (lib.task_get_status)(task, &mut sense);
            (lib.free_scsi_task)(task);
            s
        };
        if status == ffi::STATUS_GOOD {
            Ok(())
        } else {
            Err(format!("read: status {status:#x}: {}", sense_text(&sense)))
        }
    })();
    logout_and_close(lib, ctx);
    r
}

// SAFETY: a session (its libiscsi context, its tasks' raw pointers into guest memory) is used
// by one thread at a time: the queue worker that owns it; moving it between threads with its
// worker is fine, libiscsi keeps no thread-local state.
unsafe impl Send for Session {}
