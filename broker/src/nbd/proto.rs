//! The NBD wire protocol (the NBD project's proto.md): the fixed-newstyle handshake with
//! `NBD_OPT_GO` (falling back to `NBD_OPT_EXPORT_NAME` on servers without it), the 28-byte
//! request header and the 16-byte simple reply. Structured replies are not negotiated: every
//! reply to a read is a header followed by exactly the bytes asked for, which lets the data
//! go straight into guest memory.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use thiserror::Error;

use super::uri::{NbdAddress, NbdUri};

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
const OPT_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
const FLAG_NO_ZEROES: u16 = 1 << 1;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) | 1;
const INFO_EXPORT: u16 = 0;
const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags (the export's).
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
pub const TFLAG_SEND_FLUSH: u16 = 1 << 2;
pub const TFLAG_SEND_FUA: u16 = 1 << 3;
pub const TFLAG_SEND_TRIM: u16 = 1 << 5;
pub const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Request header bytes.
pub const REQUEST_BYTES: usize = 28;
/// Simple reply header bytes.
pub const REPLY_BYTES: usize = 16;

/// Command types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Cmd {
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    WriteZeroes = 6,
}

/// Command flag: a write-zeroes that must leave the range allocated.
pub const CMD_FLAG_NO_HOLE: u16 = 1 << 1;

#[derive(Debug, Error)]
pub enum NbdError {
    #[error("{uri}: cannot connect: {source}")]
    Connect {
        uri: String,
        #[source]
        source: io::Error,
    },
    #[error("{uri}: handshake: {source}")]
    Io {
        uri: String,
        #[source]
        source: io::Error,
    },
    #[error("{uri}: {why}")]
    Protocol { uri: String, why: String },
}

/// What the server says about its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExportInfo {
    pub size: u64,
    pub flags: u16,
    /// The server's minimum, preferred and maximum block sizes (`NBD_INFO_BLOCK_SIZE`), when
    /// it gave them.
    pub block_sizes: Option<(u32, u32, u32)>,
}

impl ExportInfo {
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }
    pub fn can(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
    /// The largest payload one request may carry: the server's maximum, else the protocol's
    /// advice of 32 MiB.
    pub fn max_payload(&self) -> u32 {
        self.block_sizes.map_or(32 << 20, |(_, _, max)| max)
    }
}

/// A connected socket, TCP or unix.
#[derive(Debug)]
pub enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Socket {
    fn connect(uri: &NbdUri, timeout: Duration) -> io::Result<Socket> {
        match &uri.address {
            NbdAddress::Tcp { host, port } => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            return Ok(Socket::Tcp(s));
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            NbdAddress::Unix(path) => UnixStream::connect(path).map(Socket::Unix),
        }
    }

    fn set_timeouts(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Tcp(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Socket::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
        }
    }

    /// Ends both directions: an operation waiting on the socket returns at once.
    pub fn shutdown(&self) {
        let _ = match self {
            Socket::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Socket::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Tcp(s) => s.as_fd(),
            Socket::Unix(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl Read for Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.read(buf),
            Socket::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Socket::Tcp(s) => s.write(buf),
            Socket::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Connects to `uri` and negotiates its export; `timeout` bounds the connect and each step of
/// the handshake. The socket comes back blocking, with no timeouts, in transmission phase.
pub fn connect(uri: &NbdUri, timeout: Duration) -> Result<(Socket, ExportInfo), NbdError> {
    let name = uri.to_string();
    let mut sock = Socket::connect(uri, timeout).map_err(|source| NbdError::Connect {
        uri: name.clone(),
        source,
    })?;
    let io_err = |source| NbdError::Io {
        uri: name.clone(),
        source,
    };
    sock.set_timeouts(Some(timeout)).map_err(io_err)?;
    let info = handshake(&mut sock, &uri.export, &name)?;
    sock.set_timeouts(None).map_err(io_err)?;
    Ok((sock, info))
}

fn handshake(s: &mut Socket, export: &str, uri: &str) -> Result<ExportInfo, NbdError> {
    let proto = |why: String| NbdError::Protocol {
        uri: uri.to_string(),
        why,
    };
    let io_err = |source| NbdError::Io {
        uri: uri.to_string(),
        source,
    };
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).map_err(io_err)?;
    let magic = u64::from_be_bytes(hello[0..8].try_into().unwrap_or_default());
    let opt = u64::from_be_bytes(hello[8..16].try_into().unwrap_or_default());
    if magic != NBDMAGIC {
        return Err(proto("not an NBD server (no NBDMAGIC)".into()));
    }
    if opt != IHAVEOPT {
        return Err(proto(
            "the server speaks oldstyle NBD; weir needs fixed newstyle (nbdkit, qemu-nbd, nbd-server 3.x)"
                .into(),
        ));
    }
    let hflags = u16::from_be_bytes([hello[16], hello[17]]);
    if hflags & FLAG_FIXED_NEWSTYLE == 0 {
        return Err(proto(
            "the server does not offer fixed newstyle negotiation".into(),
        ));
    }
    let no_zeroes = hflags & FLAG_NO_ZEROES != 0;
    let cflags = u32::from(FLAG_FIXED_NEWSTYLE) | if no_zeroes { 2 } else { 0 };
    s.write_all(&cflags.to_be_bytes()).map_err(io_err)?;

    // NBD_OPT_GO: name, and one info request (block sizes).
    let mut data = Vec::with_capacity(8 + export.len());
    data.extend_from_slice(&(export.len() as u32).to_be_bytes());
    data.extend_from_slice(export.as_bytes());
    data.extend_from_slice(&1u16.to_be_bytes());
    data.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
    send_option(s, OPT_GO, &data).map_err(io_err)?;
    let mut size_flags: Option<(u64, u16)> = None;
    let mut block_sizes = None;
    loop {
        let mut head = [0u8; 20];
        s.read_exact(&mut head).map_err(io_err)?;
        let magic = u64::from_be_bytes(head[0..8].try_into().unwrap_or_default());
        let rtype = u32::from_be_bytes(head[12..16].try_into().unwrap_or_default());
        let len = u32::from_be_bytes(head[16..20].try_into().unwrap_or_default());
        if magic != OPT_REPLY_MAGIC {
            return Err(proto("bad option reply magic".into()));
        }
        if len > 1 << 20 {
            return Err(proto(format!("option reply of {len} bytes")));
        }
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).map_err(io_err)?;
        match rtype {
            REP_ACK => break,
            REP_INFO if body.len() >= 2 => {
                let kind = u16::from_be_bytes([body[0], body[1]]);
                if kind == INFO_EXPORT && body.len() >= 12 {
                    let size = u64::from_be_bytes(body[2..10].try_into().unwrap_or_default());
                    let flags = u16::from_be_bytes([body[10], body[11]]);
                    size_flags = Some((size, flags));
                } else if kind == INFO_BLOCK_SIZE && body.len() >= 14 {
                    let at = |i: usize| {
                        u32::from_be_bytes(body[i..i + 4].try_into().unwrap_or_default())
                    };
                    block_sizes = Some((at(2), at(6), at(10)));
                }
            }
            REP_INFO => {}
            REP_ERR_UNSUP => return export_name(s, export, no_zeroes, uri),
            e if e & (1 << 31) != 0 => {
                let msg = String::from_utf8_lossy(&body);
                return Err(proto(format!(
                    "export '{export}' refused ({}){}",
                    rep_error_name(e),
                    if msg.is_empty() {
                        String::new()
                    } else {
                        format!(": {msg}")
                    }
                )));
            }
            _ => {}
        }
    }
    let (size, flags) = size_flags
        .ok_or_else(|| proto("NBD_OPT_GO acknowledged without the export's size".into()))?;
    Ok(ExportInfo {
        size,
        flags,
        block_sizes,
    })
}

/// The old way in, for servers without `NBD_OPT_GO`.
fn export_name(
    s: &mut Socket,
    export: &str,
    no_zeroes: bool,
    uri: &str,
) -> Result<ExportInfo, NbdError> {
    let io_err = |source| NbdError::Io {
        uri: uri.to_string(),
        source,
    };
    send_option(s, OPT_EXPORT_NAME, export.as_bytes()).map_err(io_err)?;
    let mut reply = vec![0u8; if no_zeroes { 10 } else { 134 }];
    s.read_exact(&mut reply).map_err(io_err)?;
    Ok(ExportInfo {
        size: u64::from_be_bytes(reply[0..8].try_into().unwrap_or_default()),
        flags: u16::from_be_bytes([reply[8], reply[9]]),
        block_sizes: None,
    })
}

fn send_option(s: &mut Socket, option: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(16 + data.len());
    msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
    msg.extend_from_slice(&option.to_be_bytes());
    msg.extend_from_slice(&(data.len() as u32).to_be_bytes());
    msg.extend_from_slice(data);
    s.write_all(&msg)
}

fn rep_error_name(e: u32) -> &'static str {
    match e & !(1 << 31) {
        1 => "unsupported option",
        2 => "policy",
        3 => "invalid",
        4 => "platform",
        5 => "TLS required",
        6 => "unknown export",
        7 => "shutdown",
        8 => "block size required",
        9 => "too big",
        _ => "error",
    }
}

/// The header of one request.
pub fn request(cmd: Cmd, flags: u16, handle: u64, offset: u64, len: u32) -> [u8; REQUEST_BYTES] {
    let mut h = [0u8; REQUEST_BYTES];
    h[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
    h[4..6].copy_from_slice(&flags.to_be_bytes());
    h[6..8].copy_from_slice(&(cmd as u16).to_be_bytes());
    h[8..16].copy_from_slice(&handle.to_be_bytes());
    h[16..24].copy_from_slice(&offset.to_be_bytes());
    h[24..28].copy_from_slice(&len.to_be_bytes());
    h
}

/// A simple reply's `(handle, error)`; `None` when the magic is wrong (a structured reply,
/// or a stream out of step: the connection cannot be trusted any more).
pub fn reply(h: &[u8; REPLY_BYTES]) -> Option<(u64, u32)> {
    let magic = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    if magic != SIMPLE_REPLY_MAGIC {
        return None;
    }
    let error = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let handle = u64::from_be_bytes(h[8..16].try_into().unwrap_or_default());
    Some((handle, error))
}

/// An NBD error number as the host's errno (the protocol fixes its own values).
pub fn errno(nbd_error: u32) -> i32 {
    match nbd_error {
        1 => libc::EPERM,
        5 => libc::EIO,
        12 => libc::ENOMEM,
        22 => libc::EINVAL,
        28 => libc::ENOSPC,
        75 => libc::EOVERFLOW,
        95 => libc::EOPNOTSUPP,
        108 => libc::ESHUTDOWN,
        _ => libc::EIO,
    }
}

/// A blocking client of one export, one request at a time: the path checker's probe and the
/// tests' view of what the server holds (the data path is [`super::conn`]).
pub struct BlockingClient {
    sock: Socket,
    pub info: ExportInfo,
    next: u64,
}

impl BlockingClient {
    pub fn connect(uri: &NbdUri, timeout: Duration) -> Result<Self, NbdError> {
        let (sock, info) = connect(uri, timeout)?;
        sock.set_timeouts(Some(timeout))
            .map_err(|source| NbdError::Io {
                uri: uri.to_string(),
                source,
            })?;
        Ok(BlockingClient {
            sock,
            info,
            next: 1,
        })
    }

    fn call(&mut self, cmd: Cmd, flags: u16, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let handle = self.next;
        self.next += 1;
        let len = u32::try_from(data.len()).map_err(io::Error::other)?;
        self.sock
            .write_all(&request(cmd, flags, handle, offset, len))?;
        if cmd == Cmd::Write {
            self.sock.write_all(data)?;
        }
        let mut h = [0u8; REPLY_BYTES];
        self.sock.read_exact(&mut h)?;
        let (got, error) =
            reply(&h).ok_or_else(|| io::Error::other("not a simple reply".to_string()))?;
        if got != handle {
            return Err(io::Error::other(format!("reply to {got}, asked {handle}")));
        }
        if error != 0 {
            return Err(io::Error::from_raw_os_error(errno(error)));
        }
        if cmd == Cmd::Read {
            self.sock.read_exact(data)?;
        }
        Ok(())
    }

    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.call(Cmd::Read, 0, offset, buf)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let mut d = data.to_vec();
        self.call(Cmd::Write, 0, offset, &mut d)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.call(Cmd::Flush, 0, 0, &mut [])
    }

    /// Says goodbye (`NBD_CMD_DISC`, no reply) and closes.
    pub fn disconnect(mut self) {
        let _ = self.sock.write_all(&request(Cmd::Disconnect, 0, 0, 0, 0));
        self.sock.shutdown();
    }
}
