//! An NBD (Network Block Device) server for any [`BlockDevice`], on tokio.
//!
//! The protocol is the fixed-newstyle handshake and the simple-reply transmission phase of the
//! NBD protocol document (`doc/proto.md` of the NetworkBlockDevice project), written here
//! because no maintained, permissively licensed Rust crate serves it asynchronously with many
//! requests in flight (`tokio-nbd` is GPL; the `nbd` crate is synchronous, one request at a
//! time).
//!
//! Whoever reaches the server reads the device's plaintext, so access is narrow by
//! construction: a Unix socket is created mode 0600 inside a directory that only we can enter,
//! TCP is refused unless the address is loopback and the caller says `insecure_tcp`, and one
//! client is served at a time (a second one waits up to [`CLIENT_SLOT_WAIT`] for the first to
//! leave, then is answered `NBD_REP_ERR_POLICY` with a message and disconnected; no
//! `NBD_FLAG_CAN_MULTI_CONN` is advertised).
//!
//! ```no_run
//! # async fn run(device: std::sync::Arc<dyn kms_envelope::volume::BlockDevice>)
//! #     -> Result<(), kms_envelope::volume::nbd::NbdError> {
//! use kms_envelope::volume::nbd;
//! let stop = async { tokio::signal::ctrl_c().await.ok(); };
//! nbd::serve_unix(std::path::Path::new("/run/user/1000/vol/nbd.sock"), device, stop).await?;
//! # Ok(()) }
//! ```
//! Then, for example: `qemu-img convert -n -O raw disk.img 'nbd+unix:///?socket=/run/user/1000/vol/nbd.sock'`.

use std::ffi::OsString;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::BlockDevice;

// ---- Handshake phase -------------------------------------------------------------------------

/// `"NBDMAGIC"`: the first 8 bytes the server sends.
const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `"IHAVEOPT"`: sent by the server after `NBD_MAGIC` (newstyle negotiation) and by the client
/// before every option.
const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Magic that opens every option reply from the server.
const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;

/// Handshake flag: the server speaks fixed newstyle (unknown options get an error reply
/// instead of a disconnect).
const NBD_FLAG_FIXED_NEWSTYLE: u16 = 1 << 0;
/// Handshake flag: the server can leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
const NBD_FLAG_NO_ZEROES: u16 = 1 << 1;
/// Client flag: the client speaks fixed newstyle. We require it.
const NBD_FLAG_C_FIXED_NEWSTYLE: u32 = 1 << 0;
/// Client flag: do not send the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
const NBD_FLAG_C_NO_ZEROES: u32 = 1 << 1;

/// Option: choose an export and go straight to transmission (no error reply possible: an
/// unknown name makes the server close the connection).
const NBD_OPT_EXPORT_NAME: u32 = 1;
/// Option: the client gives up; the server answers `NBD_REP_ACK` and closes.
const NBD_OPT_ABORT: u32 = 2;
/// Option: list the exports (`NBD_REP_SERVER` each, then `NBD_REP_ACK`).
const NBD_OPT_LIST: u32 = 3;
/// Option: describe an export (`NBD_REP_INFO` replies, then `NBD_REP_ACK`), stay in haggling.
const NBD_OPT_INFO: u32 = 6;
/// Option: like `NBD_OPT_INFO`, then enter transmission after the `NBD_REP_ACK`.
const NBD_OPT_GO: u32 = 7;

/// Option reply: the option was accepted (or a list ended). No data.
const NBD_REP_ACK: u32 = 1;
/// Option reply: one export of a list: u32 name length, name.
const NBD_REP_SERVER: u32 = 2;
/// Option reply: one piece of export information: u16 info type, then its data.
const NBD_REP_INFO: u32 = 3;
/// Error replies have bit 31 set and may carry a message for the user.
const NBD_REP_FLAG_ERROR: u32 = 1 << 31;
/// Error reply: the option is unknown to this server.
const NBD_REP_ERR_UNSUP: u32 = NBD_REP_FLAG_ERROR | 1;
/// Error reply: the option is known and valid but the server's policy refuses it.
const NBD_REP_ERR_POLICY: u32 = NBD_REP_FLAG_ERROR | 2;
/// Error reply: the option is known but its data is malformed.
const NBD_REP_ERR_INVALID: u32 = NBD_REP_FLAG_ERROR | 3;
/// Error reply: the requested export does not exist.
const NBD_REP_ERR_UNKNOWN: u32 = NBD_REP_FLAG_ERROR | 6;

/// Info type: u64 export size, u16 transmission flags (always sent for INFO/GO).
const NBD_INFO_EXPORT: u16 = 0;
/// Info type: u32 minimum, u32 preferred, u32 maximum payload size.
const NBD_INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flag: MUST always be set.
const NBD_FLAG_HAS_FLAGS: u16 = 1 << 0;
/// Transmission flag: the server supports `NBD_CMD_FLUSH`.
const NBD_FLAG_SEND_FLUSH: u16 = 1 << 2;
/// Transmission flag: the server supports `NBD_CMD_FLAG_FUA`.
const NBD_FLAG_SEND_FUA: u16 = 1 << 3;
/// Transmission flag: the server supports `NBD_CMD_TRIM`.
const NBD_FLAG_SEND_TRIM: u16 = 1 << 5;
/// Transmission flag: the server supports `NBD_CMD_WRITE_ZEROES`.
const NBD_FLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;
/// What we advertise. Not `NBD_FLAG_CAN_MULTI_CONN` (bit 8): one client at a time.
const TRANSMISSION_FLAGS: u16 = NBD_FLAG_HAS_FLAGS
    | NBD_FLAG_SEND_FLUSH
    | NBD_FLAG_SEND_FUA
    | NBD_FLAG_SEND_TRIM
    | NBD_FLAG_SEND_WRITE_ZEROES;

// ---- Transmission phase ----------------------------------------------------------------------

/// Magic that opens every request.
const NBD_REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic that opens every simple reply.
const NBD_SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Command flag: the write must be durable before the reply (Force Unit Access).
const NBD_CMD_FLAG_FUA: u16 = 1 << 0;
/// Command flag on `NBD_CMD_WRITE_ZEROES`: do not punch a hole. Ignored: a volume's zero
/// marker is the same whatever the client prefers.
const NBD_CMD_FLAG_NO_HOLE: u16 = 1 << 1;

/// Command: read `length` bytes at `offset`.
const NBD_CMD_READ: u16 = 0;
/// Command: write the `length` bytes that follow the request at `offset`.
const NBD_CMD_WRITE: u16 = 1;
/// Command: the client disconnects (no reply; outstanding requests are finished first).
const NBD_CMD_DISC: u16 = 2;
/// Command: make every write answered so far durable.
const NBD_CMD_FLUSH: u16 = 3;
/// Command: the client no longer needs the range (we make it read as zeros).
const NBD_CMD_TRIM: u16 = 4;
/// Command: make the range read as zeros.
const NBD_CMD_WRITE_ZEROES: u16 = 6;

/// Error number: input/output error (also: a block that failed to authenticate).
const NBD_EIO: u32 = 5;
/// Error number: invalid argument (out-of-range read, unknown command, bad flags, too long).
const NBD_EINVAL: u32 = 22;
/// Error number: no space left (a write past the end of the device).
const NBD_ENOSPC: u32 = 28;

/// The longest READ or WRITE we accept (as qemu's NBD_MAX_BUFFER_SIZE): longer READs are
/// answered `NBD_EINVAL`; a longer WRITE closes the connection (its payload is not read).
pub const MAX_REQUEST_LEN: u32 = 32 << 20;
/// At most this many requests of one connection are being executed or answered at once.
const MAX_IN_FLIGHT: usize = 64;
/// At most this many payload bytes (READ and WRITE data) of one connection are held at once.
const BYTES_IN_FLIGHT: usize = 2 * MAX_REQUEST_LEN as usize;
/// The longest option data we read during the handshake (names are at most 4096 bytes).
const MAX_OPTION_LEN: u32 = 16 << 10;
/// A client must finish its handshake within this time, so that a stalled one cannot hold the
/// single client slot.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Once a WRITE's header has arrived, its payload must follow within this time, so that a
/// client stalled mid-request cannot hold the single client slot.
const PAYLOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A refused client must have taken its refusal within this time: a silent one would keep a
/// waiting place from the next client.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(5);
/// At shutdown, how long the replies of requests already read may take to reach a client that
/// does not read them.
const SHUTDOWN_REPLY_WAIT: Duration = Duration::from_secs(10);
/// How long a client that arrives while another is served waits for it to leave before it is
/// refused.
pub const CLIENT_SLOT_WAIT: Duration = Duration::from_secs(2);
/// How many clients may wait for the slot (or be answered their refusal) at once; more are
/// closed unanswered.
const MAX_WAITING: usize = 4;
/// The message a refused second client gets (qemu prints it).
const BUSY_MESSAGE: &str =
    "kms-envelope serves one NBD client at a time and another client is connected; retry when it has disconnected";

/// Why the NBD server could not start or stop cleanly.
#[derive(Debug)]
#[non_exhaustive]
pub enum NbdError {
    /// The directory that would hold the Unix socket lets someone else in (or is not ours).
    SocketDirectoryInsecure {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something already exists at the socket path; it is never removed for you.
    SocketExists {
        /// The path.
        path: PathBuf,
    },
    /// TCP was asked for without `insecure_tcp`.
    TcpNotAllowed {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A TCP address that is not loopback.
    NotLoopback {
        /// The address asked for.
        addr: SocketAddr,
    },
    /// A listener was created outside a tokio runtime (with I/O enabled), where it cannot
    /// work.
    NoRuntime,
    /// A flush of the device failed while serving (for a client's FLUSH or FUA, or after a
    /// client left) or at shutdown: writes may not be durable. The first failure is kept.
    Flush(io::Error),
    /// Creating, binding or accepting on the socket failed.
    Io(io::Error),
}

impl fmt::Display for NbdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NbdError::SocketDirectoryInsecure { dir, reason } => write!(
                f,
                "refusing to create the NBD socket in {}: {reason}; whoever can reach the socket \
                 reads the volume's plaintext, so use a directory of your own with mode 0700",
                dir.display()
            ),
            NbdError::SocketExists { path } => write!(
                f,
                "{} already exists; remove it yourself if it is a stale socket, or choose \
                 another path",
                path.display()
            ),
            NbdError::TcpNotAllowed { addr } => write!(
                f,
                "serving NBD on TCP {addr} lets every local user read the volume's plaintext; \
                 use a Unix socket, or pass --insecure-tcp to accept that"
            ),
            NbdError::NotLoopback { addr } => write!(
                f,
                "refusing to serve NBD on {addr}: NBD has no encryption or authentication, so \
                 only loopback addresses (127.0.0.1, ::1) are allowed"
            ),
            NbdError::Flush(e) => write!(
                f,
                "flushing the device failed while serving or at shutdown ({e}): writes a \
                 client was told were done may not be durable; check the volume"
            ),
            NbdError::NoRuntime => write!(
                f,
                "an NBD listener must be created inside a tokio runtime with I/O enabled (from \
                 an async task or Runtime::block_on)"
            ),
            NbdError::Io(e) => write!(f, "NBD server: {e}"),
        }
    }
}

impl std::error::Error for NbdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NbdError::Flush(e) | NbdError::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for NbdError {
    fn from(e: io::Error) -> Self {
        NbdError::Io(e)
    }
}

/// Serves `device` on a new Unix socket at `path` until `shutdown` completes.
///
/// The socket's directory must belong to us and let nobody else in (mode 0700); it is created
/// with mode 0700 if missing (its parent must exist). The socket is made mode 0600 and removed
/// when the server returns. See [`NbdListener::serve`] for the shutdown sequence.
///
/// # Errors
/// [`NbdError::SocketDirectoryInsecure`], [`NbdError::SocketExists`], binding errors, and a
/// failed flush ([`NbdError::Flush`]).
pub async fn serve_unix(
    path: &Path,
    device: Arc<dyn BlockDevice>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NbdError> {
    NbdListener::bind_unix(path)?.serve(device, shutdown).await
}

/// Serves `device` on the loopback TCP address `addr` until `shutdown` completes.
///
/// TCP has no access control: any local user can connect and read the plaintext, hence the
/// explicit `insecure_tcp`.
///
/// # Errors
/// [`NbdError::TcpNotAllowed`] without `insecure_tcp`, [`NbdError::NotLoopback`], binding
/// errors, and a failed flush ([`NbdError::Flush`]).
pub async fn serve_tcp(
    addr: SocketAddr,
    insecure_tcp: bool,
    device: Arc<dyn BlockDevice>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NbdError> {
    NbdListener::bind_tcp(addr, insecure_tcp)?
        .serve(device, shutdown)
        .await
}

/// A bound NBD listening socket, not yet serving: binding first lets a caller report a bad
/// path or address before it says "listening", and learn the port of `127.0.0.1:0`.
#[derive(Debug)]
pub struct NbdListener {
    inner: Listener,
}

#[derive(Debug)]
enum Listener {
    /// The file is held only so that dropping the listener removes it.
    Unix(UnixListener, #[allow(dead_code)] SocketFile),
    Tcp(TcpListener),
}

/// The socket file we created, named relative to its checked directory; removed on drop if
/// that name still is that very file.
#[derive(Debug)]
struct SocketFile {
    dir: OwnedFd,
    name: OsString,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        // Never unlink something that replaced our socket at the path.
        if let Ok(stat) = rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            if stat.st_dev == self.dev && stat.st_ino == self.ino {
                let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
            }
        }
    }
}

/// Serializes our umask changes: two overlapping set-and-restore pairs could leave the
/// narrowed umask in place for good.
static UMASK_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A typed error instead of tokio's panic when there is no runtime to register sockets with.
fn require_runtime() -> Result<(), NbdError> {
    tokio::runtime::Handle::try_current()
        .map(drop)
        .map_err(|_| NbdError::NoRuntime)
}

/// Registers a socket with tokio; a runtime without I/O enabled makes tokio panic, which
/// becomes [`NbdError::NoRuntime`] (tokio offers no way to ask first).
fn in_runtime<T>(register: impl FnOnce() -> io::Result<T>) -> Result<T, NbdError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(register))
        .map_err(|_| NbdError::NoRuntime)?
        .map_err(NbdError::Io)
}

impl NbdListener {
    /// Creates the Unix socket `path` (mode 0600) in a directory only we can enter.
    ///
    /// Must be called inside a tokio runtime with I/O enabled ([`NbdError::NoRuntime`] if not).
    ///
    /// # Errors
    /// [`NbdError::SocketDirectoryInsecure`] when the directory is not ours or lets group or
    /// others in, [`NbdError::SocketExists`] when anything is at `path`, or the I/O error.
    pub fn bind_unix(path: &Path) -> Result<NbdListener, NbdError> {
        require_runtime()?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path.file_name().ok_or_else(|| {
            NbdError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: the socket path must end in a file name",
                    path.display()
                ),
            ))
        })?;
        let dir_fd = open_socket_dir(&dir)?;
        let exists = || NbdError::SocketExists {
            path: path.to_path_buf(),
        };
        if rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok() {
            return Err(exists());
        }
        // Bound through the descriptor that was checked, so renaming directories around after
        // the check cannot move the socket into another one.
        let via = Path::new("/proc/self/fd")
            .join(dir_fd.as_raw_fd().to_string())
            .join(name);
        let bound = {
            let _lock = UMASK_LOCK
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // bind() creates the file with mode 0777 & !umask: make that at most 0700 (0600
            // below) from the first instant. Only narrows; restored at once.
            let old = rustix::process::umask(Mode::from_raw_mode(0o077));
            let bound = std::os::unix::net::UnixListener::bind(&via);
            rustix::process::umask(old);
            bound
        };
        let listener = bound.map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse | io::ErrorKind::AlreadyExists => exists(),
            io::ErrorKind::NotFound => NbdError::Io(io::Error::new(
                e.kind(),
                format!(
                    "binding the socket through {}: {e} (is /proc mounted?)",
                    via.display()
                ),
            )),
            _ => NbdError::Io(e),
        })?;
        let stat = rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(io::Error::from)?;
        // From here on, dropping `file` (an error, or a panic below) removes the socket.
        let file = SocketFile {
            dir: dir_fd,
            name: name.to_os_string(),
            dev: stat.st_dev,
            ino: stat.st_ino,
        };
        rustix::fs::chmodat(
            &file.dir,
            name,
            Mode::from_raw_mode(0o600),
            AtFlags::empty(),
        )
        .map_err(io::Error::from)?;
        listener.set_nonblocking(true)?;
        let listener = in_runtime(|| UnixListener::from_std(listener))?;
        Ok(NbdListener {
            inner: Listener::Unix(listener, file),
        })
    }

    /// Binds the loopback TCP address `addr` (port 0 picks a free port).
    ///
    /// Must be called inside a tokio runtime with I/O enabled ([`NbdError::NoRuntime`] if not).
    ///
    /// # Errors
    /// [`NbdError::TcpNotAllowed`] without `insecure_tcp`, [`NbdError::NotLoopback`] for any
    /// address but 127.0.0.0/8 and ::1, or the bind error.
    pub fn bind_tcp(addr: SocketAddr, insecure_tcp: bool) -> Result<NbdListener, NbdError> {
        require_runtime()?;
        if !addr.ip().is_loopback() {
            return Err(NbdError::NotLoopback { addr });
        }
        if !insecure_tcp {
            return Err(NbdError::TcpNotAllowed { addr });
        }
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        Ok(NbdListener {
            inner: Listener::Tcp(in_runtime(|| TcpListener::from_std(std_listener))?),
        })
    }

    /// The bound TCP address, `None` for a Unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.inner {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Serves `device` until `shutdown` completes, one client at a time.
    ///
    /// A client that connects while another is served waits up to [`CLIENT_SLOT_WAIT`] for it
    /// to leave (so that a script's next `qemu-img` right after the previous one is served),
    /// then is answered `NBD_REP_ERR_POLICY` with a message saying why, and disconnected. On
    /// `shutdown`: no new connection is accepted (the Unix socket file is removed), the
    /// client's requests already received are executed and answered, the connection is closed,
    /// and the device is flushed.
    ///
    /// # Errors
    /// [`NbdError::Flush`] when any flush of the device failed while serving (the first
    /// failure; each is also reported on stderr when it happens) or the final flush fails.
    pub async fn serve(
        self,
        device: Arc<dyn BlockDevice>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), NbdError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        // The single client slot, held by a connection until it is drained and flushed.
        let slot = Arc::new(Semaphore::new(1));
        let waiting = Arc::new(Semaphore::new(MAX_WAITING));
        let mut connections = tokio::task::JoinSet::new();
        let latch = Arc::new(FlushLatch::default());
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = accept(&self.inner) => accepted,
            };
            while connections.try_join_next().is_some() {}
            let stream = match accepted {
                Ok(stream) => stream,
                // A client that reset its connection before it was accepted: nothing to wait
                // for, and waiting would let a reset flood delay real clients.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    continue
                }
                Err(_) => {
                    // EMFILE and the like: do not spin; the client that caused it is gone.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(waiting) = waiting.clone().try_acquire_owned() else {
                continue; // too many clients queued already: close this one unanswered
            };
            let (slot, device, mut stop) = (slot.clone(), device.clone(), stop_rx.clone());
            let latch = latch.clone();
            connections.spawn(async move {
                let slot = tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => return,
                    slot = tokio::time::timeout(CLIENT_SLOT_WAIT, slot.acquire_owned()) => slot,
                };
                match slot {
                    Ok(Ok(slot)) => {
                        drop(waiting);
                        // Protocol errors only end this client's connection; flush failures
                        // are in `latch`, for serve's result.
                        let _ = serve_connection(stream, device, stop, latch).await;
                        drop(slot);
                    }
                    _ => {
                        tokio::select! {
                            _ = stop.wait_for(|stop| *stop) => {}
                            _ = tokio::time::timeout(REFUSAL_TIMEOUT, refuse(stream)) => {}
                        }
                    }
                }
            });
        }
        // Stop accepting (closing the listener, removing the socket file), then let the client's
        // requests already read finish and be answered, then flush.
        drop(self);
        let _ = stop_tx.send(true);
        while connections.join_next().await.is_some() {}
        let latch2 = latch.clone();
        let last = run_blocking(move || latch2.flush(&*device, "at shutdown")).await;
        match (latch.take(), last) {
            (Some(first), _) => Err(NbdError::Flush(first)),
            (None, last) => last.map_err(NbdError::Flush),
        }
    }
}

/// A connected client, whichever the socket kind.
enum Stream {
    Unix(tokio::net::UnixStream),
    Tcp(tokio::net::TcpStream),
}

async fn accept(listener: &Listener) -> io::Result<Stream> {
    match listener {
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Stream::Unix(s)),
        Listener::Tcp(l) => {
            let (s, _) = l.accept().await?;
            // Small replies (write acknowledgements) must not wait for Nagle's timer.
            s.set_nodelay(true)?;
            Ok(Stream::Tcp(s))
        }
    }
}

/// Opens `dir` (never through a symbolic link) and checks through that descriptor that it is
/// a directory of ours that nobody else can enter; creates it with mode 0700 when missing.
fn open_socket_dir(dir: &Path) -> Result<OwnedFd, NbdError> {
    let insecure = |reason: String| NbdError::SocketDirectoryInsecure {
        dir: dir.to_path_buf(),
        reason,
    };
    let open = || {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        rustix::fs::open(dir, flags, Mode::empty())
    };
    let opened = match open() {
        Err(Errno::NOENT) => {
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(NbdError::Io(e)),
                _ => {}
            }
            open()
        }
        opened => opened,
    };
    let fd = match opened {
        Ok(fd) => fd,
        Err(Errno::NOTDIR | Errno::LOOP) => {
            return Err(insecure(
                "it is not a directory (a symbolic link is not followed)".into(),
            ))
        }
        Err(e) => return Err(NbdError::Io(e.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
    let uid = rustix::process::geteuid().as_raw();
    if stat.st_uid != uid {
        return Err(insecure(format!(
            "it belongs to uid {}, not to us (uid {uid})",
            stat.st_uid
        )));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(insecure(format!(
            "its mode is {mode:04o}: group or others have access (chmod 700 it)"
        )));
    }
    Ok(fd)
}

/// The first failed flush of a server's device: a client that saw it (or none, after a
/// disconnect) may be gone, so [`NbdListener::serve`] returns it at the end.
#[derive(Default)]
struct FlushLatch(std::sync::Mutex<Option<io::Error>>);

impl FlushLatch {
    /// Flushes `device`; a failure is reported on stderr at once and kept.
    fn flush(&self, device: &dyn BlockDevice, when: &str) -> io::Result<()> {
        device.flush().inspect_err(|e| {
            eprintln!(
                "kms-envelope: NBD: flushing the device {when} failed: {e}; writes may not be \
                 durable"
            );
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })
    }

    fn take(&self) -> Option<io::Error> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// Runs a device call on tokio's blocking pool.
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(io::Error::other(format!("device task failed: {e}"))))
}

/// The NBD error number for a device error (see [`BlockDevice`] for the kinds it returns).
fn errno(e: &io::Error) -> u32 {
    match e.kind() {
        io::ErrorKind::InvalidInput => NBD_EINVAL,
        io::ErrorKind::StorageFull => NBD_ENOSPC,
        _ => NBD_EIO,
    }
}

// ---- Handshake -------------------------------------------------------------------------------

/// What the handshake ended with.
enum Negotiated {
    /// Enter transmission.
    Transmission,
    /// The client aborted, or was refused: close.
    Close,
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

async fn send_option_reply<W: AsyncWrite + Unpin>(
    wr: &mut W,
    option: u32,
    reply: u32,
    data: &[u8],
) -> io::Result<()> {
    let mut head = [0u8; 20];
    head[..8].copy_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    head[8..12].copy_from_slice(&option.to_be_bytes());
    head[12..16].copy_from_slice(&reply.to_be_bytes());
    // Every reply we send is far below 4 GiB.
    head[16..20].copy_from_slice(&(data.len() as u32).to_be_bytes());
    wr.write_all(&head).await?;
    wr.write_all(data).await
}

/// The fixed-newstyle handshake. With `busy`, every option but ABORT is refused with
/// `NBD_REP_ERR_POLICY` and [`BUSY_MESSAGE`].
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    size: u64,
    block_size: u32,
    busy: bool,
) -> io::Result<Negotiated>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&NBD_MAGIC.to_be_bytes()).await?;
    wr.write_all(&IHAVEOPT.to_be_bytes()).await?;
    wr.write_all(&(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES).to_be_bytes())
        .await?;
    wr.flush().await?;
    let client_flags = rd.read_u32().await?;
    // The protocol says: drop the connection on unknown client flags.
    if client_flags & !(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES) != 0
        || client_flags & NBD_FLAG_C_FIXED_NEWSTYLE == 0
    {
        return Err(bad(
            "client does not speak fixed newstyle or sent unknown flags",
        ));
    }
    let no_zeroes = client_flags & NBD_FLAG_C_NO_ZEROES != 0;
    loop {
        if rd.read_u64().await? != IHAVEOPT {
            return Err(bad("option without IHAVEOPT magic"));
        }
        let option = rd.read_u32().await?;
        let len = rd.read_u32().await?;
        if len > MAX_OPTION_LEN {
            return Err(bad("option data too long"));
        }
        let mut data = vec![0u8; len as usize];
        rd.read_exact(&mut data).await?;
        if option == NBD_OPT_ABORT {
            // The client may already be gone: a failed ACK is not an error.
            let _ = send_option_reply(wr, option, NBD_REP_ACK, &[]).await;
            let _ = wr.flush().await;
            return Ok(Negotiated::Close);
        }
        if busy {
            if option == NBD_OPT_EXPORT_NAME {
                // This option has no error reply: closing is the refusal.
                return Ok(Negotiated::Close);
            }
            send_option_reply(wr, option, NBD_REP_ERR_POLICY, BUSY_MESSAGE.as_bytes()).await?;
            wr.flush().await?;
            continue;
        }
        match option {
            NBD_OPT_EXPORT_NAME => {
                if !data.is_empty() {
                    return Ok(Negotiated::Close);
                }
                wr.write_all(&size.to_be_bytes()).await?;
                wr.write_all(&TRANSMISSION_FLAGS.to_be_bytes()).await?;
                if !no_zeroes {
                    wr.write_all(&[0u8; 124]).await?;
                }
                wr.flush().await?;
                return Ok(Negotiated::Transmission);
            }
            NBD_OPT_LIST => {
                if !data.is_empty() {
                    send_option_reply(wr, option, NBD_REP_ERR_INVALID, b"NBD_OPT_LIST has no data")
                        .await?;
                } else {
                    // One export, the default one, whose name is empty.
                    send_option_reply(wr, option, NBD_REP_SERVER, &0u32.to_be_bytes()).await?;
                    send_option_reply(wr, option, NBD_REP_ACK, &[]).await?;
                }
            }
            NBD_OPT_INFO | NBD_OPT_GO => match parse_info_request(&data) {
                Err(message) => {
                    send_option_reply(wr, option, NBD_REP_ERR_INVALID, message.as_bytes()).await?;
                }
                Ok(name) if !name.is_empty() => {
                    send_option_reply(
                        wr,
                        option,
                        NBD_REP_ERR_UNKNOWN,
                        b"this server has one export, the default one (empty name)",
                    )
                    .await?;
                }
                Ok(_) => {
                    let mut export = Vec::with_capacity(12);
                    export.extend_from_slice(&NBD_INFO_EXPORT.to_be_bytes());
                    export.extend_from_slice(&size.to_be_bytes());
                    export.extend_from_slice(&TRANSMISSION_FLAGS.to_be_bytes());
                    send_option_reply(wr, option, NBD_REP_INFO, &export).await?;
                    // Sent whether or not the client asked: minimum 1 means any alignment works.
                    let preferred = block_size.clamp(512, MAX_REQUEST_LEN);
                    let mut sizes = Vec::with_capacity(14);
                    sizes.extend_from_slice(&NBD_INFO_BLOCK_SIZE.to_be_bytes());
                    sizes.extend_from_slice(&1u32.to_be_bytes());
                    sizes.extend_from_slice(&preferred.to_be_bytes());
                    sizes.extend_from_slice(&MAX_REQUEST_LEN.to_be_bytes());
                    send_option_reply(wr, option, NBD_REP_INFO, &sizes).await?;
                    send_option_reply(wr, option, NBD_REP_ACK, &[]).await?;
                    if option == NBD_OPT_GO {
                        wr.flush().await?;
                        return Ok(Negotiated::Transmission);
                    }
                }
            },
            _ => {
                send_option_reply(wr, option, NBD_REP_ERR_UNSUP, b"option not supported").await?;
            }
        }
        wr.flush().await?;
    }
}

/// Parses NBD_OPT_INFO / NBD_OPT_GO data: u32 name length, name, u16 count, count × u16
/// info requests. Returns the export name.
fn parse_info_request(data: &[u8]) -> Result<&[u8], &'static str> {
    let invalid = "malformed NBD_OPT_INFO/NBD_OPT_GO data";
    let name_len = data
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or(invalid)?;
    let rest = &data[4..];
    if name_len > rest.len() {
        return Err(invalid);
    }
    let (name, rest) = rest.split_at(name_len);
    let count = rest
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
        .ok_or(invalid)?;
    // The info requests themselves only ask for optional replies; we send what we always send.
    if rest.len() != 2 + 2 * count {
        return Err(invalid);
    }
    Ok(name)
}

/// Answers a client that arrived while another is served, then closes.
async fn refuse(stream: Stream) {
    let (rd, wr) = split(stream);
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let _ = handshake(&mut rd, &mut wr, 0, 512, true).await;
}

type Reader = Box<dyn AsyncRead + Unpin + Send>;
type Writer = Box<dyn AsyncWrite + Unpin + Send>;

fn split(stream: Stream) -> (Reader, Writer) {
    match stream {
        Stream::Unix(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
        Stream::Tcp(s) => {
            let (r, w) = s.into_split();
            (Box::new(r), Box::new(w))
        }
    }
}

// ---- Transmission ----------------------------------------------------------------------------

/// One simple reply on its way to the writer task; the permits it holds are released once it
/// has been written, which bounds the memory of a connection.
struct Reply {
    cookie: u64,
    error: u32,
    data: Vec<u8>,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

/// Serves one client: handshake, then requests until DISCONNECT, EOF, a protocol violation or
/// shutdown; every request read is answered before the connection closes; then the device is
/// flushed (a client that disconnects without FLUSH still leaves its writes durable).
async fn serve_connection(
    stream: Stream,
    device: Arc<dyn BlockDevice>,
    mut stop: watch::Receiver<bool>,
    latch: Arc<FlushLatch>,
) -> io::Result<()> {
    let (rd, wr) = split(stream);
    let mut rd = BufReader::with_capacity(256 << 10, rd);
    let mut wr = BufWriter::with_capacity(256 << 10, wr);
    let size = device.size();
    let negotiated = tokio::select! {
        _ = stop.wait_for(|stop| *stop) => return Ok(()),
        n = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            handshake(&mut rd, &mut wr, size, device.block_size(), false),
        ) => n.map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "NBD handshake timed out"))??,
    };
    if let Negotiated::Close = negotiated {
        return Ok(());
    }

    // Unbounded in type only: every reply holds a permit of `count`, so at most MAX_IN_FLIGHT.
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let count = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let bytes = Arc::new(Semaphore::new(BYTES_IN_FLIGHT));
    // At shutdown the loop is dropped wherever it waits (a header, a payload, permits that a
    // client not reading its replies holds): requests not fully read are not in flight.
    let result = tokio::select! {
        biased;
        _ = stop.wait_for(|stop| *stop) => Ok(()),
        r = read_requests(&mut rd, &device, &latch, &tx, &count, &bytes) => r,
    };
    // The writer ends once every request task has sent its reply and dropped its sender. At
    // shutdown, a client that stops reading its replies cannot hold the server forever.
    drop(tx);
    let mut writer = writer;
    let written = tokio::select! {
        w = &mut writer => w.unwrap_or_else(|e| Err(io::Error::other(e))),
        _ = async {
            let _ = stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_REPLY_WAIT).await;
        } => {
            writer.abort();
            Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read its replies"))
        }
    };
    // Every request's permit comes back once its device call is done and its reply written or
    // dropped: only then does the flush below cover every write.
    let _all = count
        .acquire_many(MAX_IN_FLIGHT as u32)
        .await
        .map_err(io::Error::other)?;
    let device2 = device.clone();
    let flushed = run_blocking(move || latch.flush(&*device2, "after a client left")).await;
    result.and(written).and(flushed)
}

/// The request loop of one connection. Returns on DISCONNECT, EOF, or a protocol violation
/// (an error: the connection is closed).
async fn read_requests<R: AsyncRead + Unpin>(
    rd: &mut R,
    device: &Arc<dyn BlockDevice>,
    latch: &Arc<FlushLatch>,
    tx: &mpsc::UnboundedSender<Reply>,
    count: &Arc<Semaphore>,
    bytes: &Arc<Semaphore>,
) -> io::Result<()> {
    let size = device.size();
    loop {
        let mut head = [0u8; 28];
        match rd.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let magic = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes"));
        let flags = u16::from_be_bytes(head[4..6].try_into().expect("2 bytes"));
        let command = u16::from_be_bytes(head[6..8].try_into().expect("2 bytes"));
        let cookie = u64::from_be_bytes(head[8..16].try_into().expect("8 bytes"));
        let offset = u64::from_be_bytes(head[16..24].try_into().expect("8 bytes"));
        let length = u32::from_be_bytes(head[24..28].try_into().expect("4 bytes"));
        if magic != NBD_REQUEST_MAGIC {
            return Err(bad("request without the NBD request magic"));
        }
        if command == NBD_CMD_DISC {
            return Ok(());
        }
        if command == NBD_CMD_WRITE && length > MAX_REQUEST_LEN {
            // Its payload would have to be read to stay in step; the protocol allows closing.
            return Err(bad("WRITE longer than the maximum payload"));
        }
        let payload_len = match command {
            NBD_CMD_READ | NBD_CMD_WRITE => length.min(MAX_REQUEST_LEN),
            _ => 0,
        };
        let count_permit = count
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let bytes_permit = bytes
            .clone()
            .acquire_many_owned(payload_len)
            .await
            .map_err(io::Error::other)?;
        let mut payload = Vec::new();
        if command == NBD_CMD_WRITE {
            payload = vec![0u8; length as usize];
            tokio::time::timeout(PAYLOAD_TIMEOUT, rd.read_exact(&mut payload))
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        "WRITE payload did not arrive in time",
                    )
                })??;
        }
        let request = Request {
            command,
            flags,
            offset,
            length,
            payload,
        };
        let tx = tx.clone();
        let (device, latch) = (device.clone(), latch.clone());
        let permits = (count_permit, bytes_permit);
        match request.check(size) {
            Err(error) => {
                let _ = tx.send(Reply {
                    cookie,
                    error,
                    data: Vec::new(),
                    _permits: permits,
                });
            }
            Ok(()) => {
                // The device may block (disk I/O, AEAD): never on the runtime's threads.
                tokio::task::spawn_blocking(move || {
                    // A panicking device call must still be answered, or the client waits for
                    // that cookie forever; the panic hook has already reported it.
                    let executed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        request.execute(&*device, &latch)
                    }));
                    let (error, data) = match executed {
                        Ok(Ok(data)) => (0, data),
                        Ok(Err(e)) => (errno(&e), Vec::new()),
                        Err(_) => (NBD_EIO, Vec::new()),
                    };
                    let _ = tx.send(Reply {
                        cookie,
                        error,
                        data,
                        _permits: permits,
                    });
                });
            }
        }
    }
}

/// A transmission request with its payload.
struct Request {
    command: u16,
    flags: u16,
    offset: u64,
    length: u32,
    payload: Vec<u8>,
}

impl Request {
    /// Validates the request against the protocol and the device size: the error number to
    /// reply with, if any.
    fn check(&self, size: u64) -> Result<(), u32> {
        let allowed_flags = match self.command {
            // The protocol: FUA MUST be accepted on every command (old qemu sends FLUSH|FUA);
            // READ ignores it and FLUSH flushes anyway.
            NBD_CMD_READ | NBD_CMD_FLUSH | NBD_CMD_WRITE | NBD_CMD_TRIM => NBD_CMD_FLAG_FUA,
            NBD_CMD_WRITE_ZEROES => NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE,
            // CACHE, BLOCK_STATUS (needs structured replies), RESIZE and unknown commands.
            _ => return Err(NBD_EINVAL),
        };
        if self.flags & !allowed_flags != 0 {
            return Err(NBD_EINVAL);
        }
        if self.command == NBD_CMD_FLUSH {
            return Ok(());
        }
        if self.command == NBD_CMD_READ && self.length > MAX_REQUEST_LEN {
            return Err(NBD_EINVAL);
        }
        let end = self
            .offset
            .checked_add(u64::from(self.length))
            .ok_or(NBD_EINVAL)?;
        if end > size {
            // The protocol: ENOSPC for a write beyond the end, EINVAL for a read or trim.
            return Err(match self.command {
                NBD_CMD_WRITE | NBD_CMD_WRITE_ZEROES => NBD_ENOSPC,
                _ => NBD_EINVAL,
            });
        }
        Ok(())
    }

    /// Runs a checked request on the device; the data to send back (READ only).
    fn execute(self, device: &dyn BlockDevice, latch: &FlushLatch) -> io::Result<Vec<u8>> {
        let len = u64::from(self.length);
        match self.command {
            NBD_CMD_READ => {
                let mut buf = vec![0u8; self.length as usize];
                device.read_at(&mut buf, self.offset)?;
                return Ok(buf);
            }
            NBD_CMD_WRITE => device.write_at(&self.payload, self.offset)?,
            NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES if len > 0 => {
                device.write_zeroes(self.offset, len)?
            }
            NBD_CMD_TRIM | NBD_CMD_WRITE_ZEROES => {}
            _ => {
                // NBD_CMD_FLUSH: every write answered before it returned from the device
                // before this request was read, so the device's flush covers it.
                latch.flush(device, "for a client's FLUSH")?;
                return Ok(Vec::new());
            }
        }
        if self.flags & NBD_CMD_FLAG_FUA != 0 {
            latch.flush(device, "for a client's FUA write")?;
        }
        Ok(Vec::new())
    }
}

/// The single writer of a connection's replies; batches replies that are ready into one
/// socket write.
async fn write_replies(
    mut wr: BufWriter<Writer>,
    mut rx: mpsc::UnboundedReceiver<Reply>,
) -> io::Result<()> {
    let mut failed = None;
    while let Some(mut reply) = rx.recv().await {
        if failed.is_some() {
            // Keep draining so that request tasks never block; the client is gone.
            continue;
        }
        let result = async {
            loop {
                let mut head = [0u8; 16];
                head[..4].copy_from_slice(&NBD_SIMPLE_REPLY_MAGIC.to_be_bytes());
                head[4..8].copy_from_slice(&reply.error.to_be_bytes());
                head[8..16].copy_from_slice(&reply.cookie.to_be_bytes());
                wr.write_all(&head).await?;
                wr.write_all(&reply.data).await?;
                drop(reply);
                match rx.try_recv() {
                    Ok(next) => reply = next,
                    Err(_) => break,
                }
            }
            wr.flush().await
        }
        .await;
        if let Err(e) = result {
            failed = Some(e);
        }
    }
    let _ = wr.shutdown().await;
    failed.map_or(Ok(()), Err)
}
