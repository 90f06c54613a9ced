//! libiscsi (1.19's ABI), loaded at run time with `dlopen`: the broker builds and runs without
//! it, and only a LUN that names an `iscsi://` target needs `libiscsi7` installed. The few
//! functions the backend calls are declared here by hand (there is no libiscsi crate); the
//! structs below mirror `<iscsi/scsi-lowlevel.h>` up to the fields read (sizes checked against
//! the header with a C compiler: `struct scsi_sense` 16 bytes, key at 4, ascq at 8;
//! `struct scsi_readcapacity16` 24 bytes).

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::sync::OnceLock;

/// `struct iscsi_context`, opaque.
#[repr(C)]
pub struct Context {
    _opaque: [u8; 0],
}

/// `struct scsi_task`, opaque but for its first field (`int status`).
#[repr(C)]
pub struct Task {
    _opaque: [u8; 0],
}

/// `struct scsi_sense`, with room to spare behind the fields read.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct Sense {
    pub error_type: u8,
    /// `enum scsi_sense_key`.
    pub key: c_int,
    /// ASC << 8 | ASCQ.
    pub ascq: c_int,
    _rest: [u32; 5],
}

/// `struct scsi_readcapacity16`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ReadCapacity16 {
    pub returned_lba: u64,
    pub block_length: u32,
    pub p_type: u8,
    pub prot_en: u8,
    pub p_i_exp: u8,
    pub lbppbe: u8,
    /// Logical block provisioning management enabled: the LUN is thin and takes UNMAP.
    pub lbpme: u8,
    /// Unmapped blocks read back as zeroes.
    pub lbprz: u8,
    pub lalba: u16,
}

/// `struct unmap_list`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct UnmapList {
    pub lba: u64,
    pub num: u32,
}

/// `iscsi_command_cb`.
pub type CommandCb = unsafe extern "C" fn(*mut Context, c_int, *mut c_void, *mut c_void);

pub const SESSION_NORMAL: c_int = 2;
pub const HEADER_DIGEST_NONE_CRC32C: c_int = 1;

pub const STATUS_GOOD: c_int = 0;
pub const STATUS_CHECK_CONDITION: c_int = 2;
pub const STATUS_BUSY: c_int = 8;
pub const STATUS_TASK_SET_FULL: c_int = 0x28;
pub const STATUS_CANCELLED: c_int = 0x0f00_0000;

pub const SENSE_UNIT_ATTENTION: c_int = 0x06;
pub const SENSE_NOT_READY: c_int = 0x02;
pub const SENSE_MEDIUM_ERROR: c_int = 0x03;
pub const SENSE_ILLEGAL_REQUEST: c_int = 0x05;
pub const SENSE_DATA_PROTECTION: c_int = 0x07;

/// The functions, resolved once.
pub struct Lib {
    pub create_context: unsafe extern "C" fn(*const c_char) -> *mut Context,
    pub destroy_context: unsafe extern "C" fn(*mut Context) -> c_int,
    pub set_targetname: unsafe extern "C" fn(*mut Context, *const c_char) -> c_int,
    pub set_session_type: unsafe extern "C" fn(*mut Context, c_int) -> c_int,
    pub set_header_digest: unsafe extern "C" fn(*mut Context, c_int) -> c_int,
    pub set_noautoreconnect: unsafe extern "C" fn(*mut Context, c_int),
    pub set_timeout: unsafe extern "C" fn(*mut Context, c_int) -> c_int,
    pub full_connect_sync: unsafe extern "C" fn(*mut Context, *const c_char, c_int) -> c_int,
    pub logout_sync: unsafe extern "C" fn(*mut Context) -> c_int,
    pub set_log_level: unsafe extern "C" fn(*mut Context, c_int),
    pub set_log_fn: unsafe extern "C" fn(*mut Context, unsafe extern "C" fn(c_int, *const c_char)),
    pub log_to_stderr: unsafe extern "C" fn(c_int, *const c_char),
    pub get_error: unsafe extern "C" fn(*mut Context) -> *const c_char,
    pub get_fd: unsafe extern "C" fn(*mut Context) -> c_int,
    pub which_events: unsafe extern "C" fn(*mut Context) -> c_int,
    pub service: unsafe extern "C" fn(*mut Context, c_int) -> c_int,
    pub out_queue_length: unsafe extern "C" fn(*mut Context) -> c_int,
    #[allow(clippy::type_complexity)]
    pub read16_iov_task: unsafe extern "C" fn(
        *mut Context,
        c_int,
        u64,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        CommandCb,
        *mut c_void,
        *mut libc::iovec,
        c_int,
    ) -> *mut Task,
    #[allow(clippy::type_complexity)]
    pub write16_iov_task: unsafe extern "C" fn(
        *mut Context,
        c_int,
        u64,
        *mut u8,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        CommandCb,
        *mut c_void,
        *mut libc::iovec,
        c_int,
    ) -> *mut Task,
    pub synchronizecache16_task: unsafe extern "C" fn(
        *mut Context,
        c_int,
        u64,
        u32,
        c_int,
        c_int,
        CommandCb,
        *mut c_void,
    ) -> *mut Task,
    pub unmap_task: unsafe extern "C" fn(
        *mut Context,
        c_int,
        c_int,
        c_int,
        *mut UnmapList,
        c_int,
        CommandCb,
        *mut c_void,
    ) -> *mut Task,
    #[allow(clippy::type_complexity)]
    pub writesame16_task: unsafe extern "C" fn(
        *mut Context,
        c_int,
        u64,
        *mut u8,
        u32,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        CommandCb,
        *mut c_void,
    ) -> *mut Task,
    pub readcapacity16_sync: unsafe extern "C" fn(*mut Context, c_int) -> *mut Task,
    pub read16_sync: unsafe extern "C" fn(
        *mut Context,
        c_int,
        u64,
        u32,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
        c_int,
    ) -> *mut Task,
    pub datain_unmarshall: unsafe extern "C" fn(*mut Task) -> *mut c_void,
    pub free_scsi_task: unsafe extern "C" fn(*mut Task),
    pub task_get_status: unsafe extern "C" fn(*mut Task, *mut Sense) -> c_int,
    pub cancel_task: unsafe extern "C" fn(*mut Context, *mut Task) -> c_int,
}

/// The library names tried, the packaged soname first.
const NAMES: &[&str] = &["libiscsi.so.7", "libiscsi.so"];

/// libiscsi, or why it cannot be had.
pub fn lib() -> Result<&'static Lib, String> {
    static LIB: OnceLock<Result<Lib, String>> = OnceLock::new();
    LIB.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn load() -> Result<Lib, String> {
    let mut handle = std::ptr::null_mut();
    for name in NAMES {
        let c = CString::new(*name).map_err(|e| e.to_string())?;
        // SAFETY: a NUL-terminated name; dlopen runs the library's initialisers, which
        // libiscsi does not have beyond libc's.
        handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if !handle.is_null() {
            break;
        }
    }
    if handle.is_null() {
        return Err(
            "libiscsi is not installed (libiscsi.so.7 not found): apt install libiscsi7 \
             (scripts/install-deps.sh does)"
                .into(),
        );
    }
    macro_rules! sym {
        ($name:literal) => {{
            let c = concat!($name, "\0");
            // SAFETY: `handle` is a live dlopen handle (never closed) and the name is
            // NUL-terminated.
            let p = unsafe { libc::dlsym(handle, c.as_ptr().cast()) };
            if p.is_null() {
                return Err(format!(
                    "libiscsi has no {} (version 1.19 or later is needed)",
                    $name
                ));
            }
            // SAFETY: the symbol is the function of that name in libiscsi, whose C prototype
            // (iscsi.h, scsi-lowlevel.h of 1.19) the field's type spells out.
            unsafe { fn_from(p) }
        }};
    }
    Ok(Lib {
        create_context: sym!("iscsi_create_context"),
        destroy_context: sym!("iscsi_destroy_context"),
        set_targetname: sym!("iscsi_set_targetname"),
        set_session_type: sym!("iscsi_set_session_type"),
        set_header_digest: sym!("iscsi_set_header_digest"),
        set_noautoreconnect: sym!("iscsi_set_noautoreconnect"),
        set_timeout: sym!("iscsi_set_timeout"),
        full_connect_sync: sym!("iscsi_full_connect_sync"),
        logout_sync: sym!("iscsi_logout_sync"),
        set_log_level: sym!("iscsi_set_log_level"),
        set_log_fn: sym!("iscsi_set_log_fn"),
        log_to_stderr: sym!("iscsi_log_to_stderr"),
        get_error: sym!("iscsi_get_error"),
        get_fd: sym!("iscsi_get_fd"),
        which_events: sym!("iscsi_which_events"),
        service: sym!("iscsi_service"),
        out_queue_length: sym!("iscsi_out_queue_length"),
        read16_iov_task: sym!("iscsi_read16_iov_task"),
        write16_iov_task: sym!("iscsi_write16_iov_task"),
        synchronizecache16_task: sym!("iscsi_synchronizecache16_task"),
        unmap_task: sym!("iscsi_unmap_task"),
        writesame16_task: sym!("iscsi_writesame16_task"),
        readcapacity16_sync: sym!("iscsi_readcapacity16_sync"),
        read16_sync: sym!("iscsi_read16_sync"),
        datain_unmarshall: sym!("scsi_datain_unmarshall"),
        free_scsi_task: sym!("scsi_free_scsi_task"),
        task_get_status: sym!("scsi_task_get_status"),
        cancel_task: sym!("iscsi_scsi_cancel_task"),
    })
}

/// A function pointer of type `F` from a symbol's address.
///
/// # Safety
/// `F` must be the `unsafe extern "C" fn` type of the function at `p`.
unsafe fn fn_from<F: Copy>(p: *mut c_void) -> F {
    assert_eq!(size_of::<F>(), size_of::<*mut c_void>());
    // SAFETY: same size (checked), and the caller vouches for the type.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

/// The context's last error message.
pub(super) fn error_of(lib: &Lib, ctx: *mut Context) -> String {
    // SAFETY: `ctx` is a live context; the message is a NUL-terminated string owned by it,
    // copied before anything else can change it.
    let p = unsafe { (lib.get_error)(ctx) };
    if p.is_null() {
        return "unknown error".into();
    }
    // SAFETY: as above.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}
