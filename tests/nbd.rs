//! The NBD server driven by real clients (`qemu-io`, `qemu-img`) and by a raw socket that
//! misbehaves on purpose.
//!
//! Without `qemu-io`/`qemu-img` the client tests print why and pass, unless `CI=true`, where
//! their absence fails the run.
#![cfg(feature = "volume")]

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kms_envelope::volume::nbd::{NbdError, NbdListener};
use kms_envelope::volume::BlockDevice;

// ---- A file-backed device -------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Write(u64),
    Zero(u64),
    Flush,
}

/// A raw file served as a device; optionally fails reads of one block, or sleeps in every
/// call so that requests overlap.
struct FileDevice {
    file: File,
    size: u64,
    bad_block: Option<u64>,
    delay: Duration,
    events: Mutex<Vec<Event>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    calls: AtomicUsize,
    /// A write at this offset panics (a device bug).
    panic_at: Option<u64>,
    /// This many flushes fail (EIO) before flushes succeed again, as fsync does on Linux.
    failing_flushes: AtomicUsize,
}

const BLOCK: u64 = 4096;

impl FileDevice {
    fn create(path: &Path, size: u64) -> FileDevice {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap();
        if file.metadata().unwrap().len() != size {
            file.set_len(size).unwrap();
        }
        FileDevice {
            file,
            size,
            bad_block: None,
            delay: Duration::ZERO,
            events: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            calls: AtomicUsize::new(0),
            panic_at: None,
            failing_flushes: AtomicUsize::new(0),
        }
    }

    fn check(&self, offset: u64, len: u64, write: bool) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ if write => Err(io::Error::new(io::ErrorKind::StorageFull, "past the end")),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "past the end")),
        }
    }

    fn enter(&self) -> InFlight<'_> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        InFlight(&self.in_flight)
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }
}

struct InFlight<'a>(&'a AtomicUsize);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }
    fn block_size(&self) -> u32 {
        BLOCK as u32
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let _g = self.enter();
        self.check(offset, buf.len() as u64, false)?;
        if let Some(bad) = self.bad_block {
            let first = offset / BLOCK;
            let last = (offset + buf.len() as u64).saturating_sub(1) / BLOCK;
            if !buf.is_empty() && (first..=last).contains(&bad) {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "block tampered"));
            }
        }
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, data: &[u8], offset: u64) -> io::Result<()> {
        let _g = self.enter();
        self.check(offset, data.len() as u64, true)?;
        if self.panic_at == Some(offset) {
            panic!("device bug at offset {offset}");
        }
        self.file.write_all_at(data, offset)?;
        self.events.lock().unwrap().push(Event::Write(offset));
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        let _g = self.enter();
        self.check(offset, len, true)?;
        let zeros = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.file
                .write_all_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        self.events.lock().unwrap().push(Event::Zero(offset));
        Ok(())
    }
    fn flush(&self) -> io::Result<()> {
        let failing = self.failing_flushes.load(Ordering::SeqCst);
        if failing > 0 {
            self.failing_flushes.store(failing - 1, Ordering::SeqCst);
            return Err(io::Error::other("EIO from fsync"));
        }
        self.file.sync_data()?;
        self.events.lock().unwrap().push(Event::Flush);
        Ok(())
    }
}

// ---- A server in the background -------------------------------------------------------------

struct Server {
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), NbdError>>>,
    uri: String,
    socket: Option<PathBuf>,
}

impl Server {
    fn unix(socket: &Path, device: Arc<dyn BlockDevice>) -> Server {
        let rt = runtime();
        let listener = rt
            .block_on(async { NbdListener::bind_unix(socket) })
            .unwrap();
        let uri = format!("nbd+unix:///?socket={}", socket.display());
        Server::start(rt, listener, device, uri, Some(socket.to_path_buf()))
    }

    fn tcp(device: Arc<dyn BlockDevice>) -> Server {
        let rt = runtime();
        let listener = rt
            .block_on(async { NbdListener::bind_tcp("127.0.0.1:0".parse().unwrap(), true) })
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let uri = format!("nbd://{addr}");
        Server::start(rt, listener, device, uri, None)
    }

    fn start(
        rt: tokio::runtime::Runtime,
        listener: NbdListener,
        device: Arc<dyn BlockDevice>,
        uri: String,
        socket: Option<PathBuf>,
    ) -> Server {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = rt.spawn(listener.serve(device, async {
            let _ = rx.await;
        }));
        Server {
            rt,
            stop: Some(tx),
            task: Some(task),
            uri,
            socket,
        }
    }

    /// Triggers shutdown and waits for the server to return.
    fn stop(mut self) -> Result<(), NbdError> {
        let _ = self.stop.take().unwrap().send(());
        let task = self.task.take().unwrap();
        self.rt.block_on(task).unwrap()
    }

    fn raw(&self) -> UnixStream {
        let s = UnixStream::connect(self.socket.as_ref().unwrap()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A private directory for the socket (the server creates it 0700) and a path in it.
fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run").join("nbd.sock")
}

// ---- qemu ------------------------------------------------------------------------------------

fn have_qemu() -> bool {
    let found = ["qemu-io", "qemu-img"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    });
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "qemu-io and qemu-img are required under CI=true (apt-get install qemu-utils)"
        );
        eprintln!(
            "SKIPPED: qemu-io/qemu-img not found; install qemu-utils to run the NBD client tests"
        );
    }
    found
}

fn qemu_io(uri: &str, commands: &[&str]) -> Output {
    let mut cmd = Command::new("qemu-io");
    // Write-back, as a real guest: qemu-io's default (write-through) adds a FLUSH per write.
    cmd.args(["-f", "raw", "-t", "writeback", uri]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs qemu-io and requires every command to have succeeded.
fn qemu_io_ok(uri: &str, commands: &[&str]) -> String {
    let out = qemu_io(uri, commands);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("failed"), "{all}");
    assert!(!all.contains("error"), "{all}");
    all
}

fn qemu_img(args: &[&str]) -> Output {
    Command::new("qemu-img").args(args).output().unwrap()
}

fn qemu_img_ok(args: &[&str]) {
    let out = qemu_img(args);
    assert!(out.status.success(), "qemu-img {args:?}: {}", text(&out));
}

/// `qemu-img convert` of `src` into the export, `compare`, and `convert` back out to `out`,
/// which must then hold `data`.
fn convert_in_and_out(src: &str, uri: &str, out: &Path, data: &[u8]) {
    qemu_img_ok(&["convert", "-n", "-f", "raw", "-O", "raw", src, uri]);
    qemu_img_ok(&["compare", "-f", "raw", "-F", "raw", src, uri]);
    qemu_img_ok(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        uri,
        out.to_str().unwrap(),
    ]);
    assert!(std::fs::read(out).unwrap() == data, "converted out differs");
}

/// Deterministic bytes with runs of zeros in them (so that qemu-img sends WRITE_ZEROES too).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = vec![0u8; len];
    for (i, chunk) in out.chunks_mut(64 << 10).enumerate() {
        if i % 5 == 3 {
            continue; // a zero run
        }
        for b in chunk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
    }
    out
}

// ---- Tests with real clients ----------------------------------------------------------------

#[test]
fn qemu_io_writes_and_reads_back_over_unix_and_tcp() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 4 << 20));
    for server in [
        Server::unix(&socket_in(dir.path()), device.clone()),
        Server::tcp(device.clone()),
    ] {
        let out = qemu_io_ok(
            &server.uri,
            &[
                "write -P 0xab 4096 4k",
                "read -P 0xab 4096 4k",
                "write -P 0x5c 1000 3000", // unaligned
                "read -P 0x5c 1000 3000",
                "read -P 0 0 1000",
            ],
        );
        assert!(out.contains("read 3000/3000 bytes at offset 1000"), "{out}");
        server.stop().unwrap();
    }
    // The bytes reached the file itself.
    let mut buf = vec![0u8; 4096];
    device.file.read_exact_at(&mut buf, 3999).unwrap();
    assert_eq!((buf[0], buf[1], buf[97], buf[4095]), (0x5c, 0, 0xab, 0xab));
    // The socket file is removed at shutdown.
    assert!(!socket_in(dir.path()).exists());
}

#[test]
fn aio_batches_are_served_with_many_requests_in_flight() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut device = FileDevice::create(&dir.path().join("disk"), 8 << 20);
    device.delay = Duration::from_millis(30);
    let device = Arc::new(device);
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let mut commands = Vec::new();
    for i in 0..16u64 {
        commands.push(format!("aio_write -P {} {} 64k", 0x10 + i, i * 65536));
    }
    commands.push("aio_flush".into());
    for i in 0..16u64 {
        commands.push(format!("aio_read -P {} {} 64k", 0x10 + i, i * 65536));
    }
    commands.push("aio_flush".into());
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    let out = qemu_io_ok(&server.uri, &commands);
    assert_eq!(out.matches("read 65536/65536 bytes").count(), 16, "{out}");
    server.stop().unwrap();
    let max = device.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max >= 4,
        "requests were served one at a time (max in flight {max})"
    );
}

#[test]
fn qemu_img_convert_in_compare_and_convert_out() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let size = 6 << 20;
    let source = dir.path().join("source.img");
    let data = pattern(size, 7);
    std::fs::write(&source, &data).unwrap();
    let backing = dir.path().join("disk");
    // The target starts with other bytes everywhere, so that zero runs must really be written.
    std::fs::write(&backing, vec![0xeeu8; size]).unwrap();
    let device = Arc::new(FileDevice::create(&backing, size as u64));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let src = source.to_str().unwrap();
    convert_in_and_out(src, &server.uri, &dir.path().join("out.img"), &data);
    server.stop().unwrap();
    assert!(std::fs::read(&backing).unwrap() == data, "device differs");
    // qemu-img compare notices a difference too (the check can fail).
    device.file.write_all_at(&[0xee; 4096], 8192).unwrap();
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let differ = qemu_img(&["compare", "-f", "raw", "-F", "raw", src, &server.uri]);
    assert_eq!(differ.status.code(), Some(1), "{}", text(&differ));
    server.stop().unwrap();
}

#[test]
fn write_zeroes_and_discard_make_ranges_read_as_zeros() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    qemu_io_ok(
        &server.uri,
        &[
            "write -P 0xcd 0 256k",
            "write -z 0 32k",      // WRITE_ZEROES with NO_HOLE
            "write -z -u 64k 32k", // WRITE_ZEROES that may punch a hole
            "discard 128k 16k",    // TRIM
            "read -P 0 0 32k",
            "read -P 0xcd 32k 32k",
            "read -P 0 64k 32k",
            "read -P 0xcd 96k 32k",
            "read -P 0 128k 16k",
            "read -P 0xcd 144k 112k",
        ],
    );
    server.stop().unwrap();
    let zeros = device
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Zero(_)))
        .count();
    assert_eq!(zeros, 3, "{:?}", device.events());
}

#[test]
fn fua_write_and_flush_reach_the_device_before_the_reply() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    qemu_io_ok(
        &server.uri,
        &[
            "write -f -P 1 0 4k", // FUA
            "write -P 2 4096 4k",
            "write -P 3 8192 4k",
            "flush",
            "write -P 4 12288 4k",
        ],
    );
    server.stop().unwrap();
    let events = device.events();
    let position = |e: Event| events.iter().position(|x| *x == e).unwrap();
    let (w0, w1, w2, w3) = (
        position(Event::Write(0)),
        position(Event::Write(4096)),
        position(Event::Write(8192)),
        position(Event::Write(12288)),
    );
    assert!(
        events[w0..w1].contains(&Event::Flush),
        "FUA write not flushed before its reply: {events:?}"
    );
    assert!(
        !events[w1..w2].contains(&Event::Flush),
        "a plain write was flushed: {events:?}"
    );
    assert!(
        events[w2..w3].contains(&Event::Flush),
        "FLUSH missing: {events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Flush), "{events:?}");
}

#[test]
fn a_block_that_fails_to_read_is_eio_and_the_others_still_read() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut device = FileDevice::create(&dir.path().join("disk"), 1 << 20);
    device.bad_block = Some(3);
    let device = Arc::new(device);
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let out = qemu_io(
        &server.uri,
        &[
            "read -P 0 0 12k",
            "read 12k 4k",
            "read -P 0 16k 4k",
            "read 8k 8k",
        ],
    );
    let all = text(&out);
    assert_eq!(all.matches("Input/output error").count(), 2, "{all}");
    assert!(all.contains("read 12288/12288 bytes at offset 0"), "{all}");
    assert!(
        all.contains("read 4096/4096 bytes at offset 16384"),
        "{all}"
    );
    server.stop().unwrap();
}

#[test]
fn a_second_client_is_refused_with_a_reason_while_one_is_served() {
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let mut first = server.raw();
    greet(&mut first, 1);
    go(&mut first);
    let out = qemu_io(&server.uri, &["read 0 4k"]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("one NBD client at a time"), "{all}");
    // The first client is still served.
    send_request(&mut first, 0, 0, 7, 0, 512, &[]);
    assert_eq!(read_reply(&mut first, 512), (0, 7));
    drop(first);
    // Once it is gone, the next client is served (the server notices the EOF promptly).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = qemu_io(&server.uri, &["read -P 0 0 4k"]);
        if out.status.success() && !text(&out).contains("failed") {
            break;
        }
        assert!(Instant::now() < deadline, "{}", text(&out));
        std::thread::sleep(Duration::from_millis(50));
    }
    server.stop().unwrap();
}

// ---- Access checks ---------------------------------------------------------------------------

#[test]
fn the_socket_is_private_and_nothing_is_overwritten_or_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let device: Arc<dyn BlockDevice> =
        Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let rt = runtime();
    let _enter = rt.enter();

    // A missing directory is created 0700; the socket is 0600.
    let socket = socket_in(dir.path());
    let listener = NbdListener::bind_unix(&socket).unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    // A second server at the same path is refused, and the first one's socket stays.
    let again = NbdListener::bind_unix(&socket).unwrap_err();
    assert!(matches!(again, NbdError::SocketExists { .. }), "{again}");
    assert!(socket.exists());
    drop(listener);
    assert!(!socket.exists(), "the socket file was left behind");

    // Anything already at the path is refused and left alone.
    let existing = dir.path().join("run").join("keep");
    std::fs::write(&existing, b"mine").unwrap();
    let err = NbdListener::bind_unix(&existing).unwrap_err();
    assert!(matches!(err, NbdError::SocketExists { .. }), "{err}");
    assert!(err.to_string().contains("remove it yourself"), "{err}");
    assert_eq!(std::fs::read(&existing).unwrap(), b"mine");

    // A directory others can enter is refused.
    let open_dir = dir.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = NbdListener::bind_unix(&open_dir.join("s")).unwrap_err();
    assert!(
        matches!(err, NbdError::SocketDirectoryInsecure { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("0755"), "{err}");
    assert!(!open_dir.join("s").exists());

    // A symbolic link in place of the directory is refused (not followed).
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(socket.parent().unwrap(), &link).unwrap();
    let err = NbdListener::bind_unix(&link.join("s")).unwrap_err();
    assert!(
        matches!(err, NbdError::SocketDirectoryInsecure { .. }),
        "{err}"
    );

    // A directory owned by someone else is refused (only root can set that up here).
    if rustix::process::geteuid().is_root() {
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::chown(&theirs, Some(4242), Some(4242)).unwrap();
        let err = NbdListener::bind_unix(&theirs.join("s")).unwrap_err();
        assert!(err.to_string().contains("uid 4242"), "{err}");
    }

    // TCP: loopback only, and only when asked for explicitly.
    for addr in [
        "0.0.0.0:0",
        "192.0.2.1:10809",
        "[::]:0",
        "[::ffff:127.0.0.1]:0",
    ] {
        let err = NbdListener::bind_tcp(addr.parse().unwrap(), true).unwrap_err();
        assert!(matches!(err, NbdError::NotLoopback { .. }), "{addr}: {err}");
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    let err = NbdListener::bind_tcp("127.0.0.1:0".parse().unwrap(), false).unwrap_err();
    assert!(matches!(err, NbdError::TcpNotAllowed { .. }), "{err}");
    assert!(err.to_string().contains("--insecure-tcp"), "{err}");
    let tcp = NbdListener::bind_tcp("[::1]:0".parse().unwrap(), true);
    // An IPv6-less machine cannot bind ::1; the address itself was accepted.
    if let Err(e) = tcp {
        assert!(matches!(e, NbdError::Io(_)), "{e}");
    }
    drop(device);
}

// ---- Hostile input on a raw socket -----------------------------------------------------------

const IHAVEOPT: u64 = 0x4948_4156_454f_5054;

fn read_exact_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).unwrap();
    buf
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b.try_into().unwrap())
}

/// Reads the server greeting and sends the client flags.
fn greet(s: &mut UnixStream, client_flags: u32) {
    let hello = read_exact_n(s, 18);
    assert_eq!(&hello[..8], b"NBDMAGIC");
    assert_eq!(&hello[8..16], b"IHAVEOPT");
    assert_eq!(u16::from_be_bytes([hello[16], hello[17]]), 0b11);
    s.write_all(&client_flags.to_be_bytes()).unwrap();
}

fn send_option(s: &mut UnixStream, option: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&option.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// (option, reply type, data)
fn read_option_reply(s: &mut UnixStream) -> (u32, u32, Vec<u8>) {
    let head = read_exact_n(s, 20);
    assert_eq!(
        u64::from_be_bytes(head[..8].try_into().unwrap()),
        0x0003_e889_0455_65a9
    );
    let len = be_u32(&head[16..20]) as usize;
    (
        be_u32(&head[8..12]),
        be_u32(&head[12..16]),
        read_exact_n(s, len),
    )
}

fn info_data(name: &[u8], requests: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name);
    d.extend_from_slice(&(requests.len() as u16).to_be_bytes());
    for r in requests {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// NBD_OPT_GO on the default export; returns (size, transmission flags, block sizes).
fn go(s: &mut UnixStream) -> (u64, u16, [u32; 3]) {
    send_option(s, 7, &info_data(b"", &[3]));
    let (mut size, mut flags, mut sizes) = (0, 0, [0; 3]);
    loop {
        let (option, reply, data) = read_option_reply(s);
        assert_eq!(option, 7);
        match reply {
            1 => return (size, flags, sizes),
            3 if data[..2] == [0, 0] => {
                size = u64::from_be_bytes(data[2..10].try_into().unwrap());
                flags = u16::from_be_bytes([data[10], data[11]]);
            }
            3 if data[..2] == [0, 3] => {
                sizes = [
                    be_u32(&data[2..6]),
                    be_u32(&data[6..10]),
                    be_u32(&data[10..14]),
                ];
            }
            other => panic!("unexpected reply {other:#x}"),
        }
    }
}

fn send_request(
    s: &mut UnixStream,
    flags: u16,
    command: u16,
    cookie: u64,
    offset: u64,
    length: u32,
    payload: &[u8],
) {
    let mut m = 0x2560_9513u32.to_be_bytes().to_vec();
    m.extend_from_slice(&flags.to_be_bytes());
    m.extend_from_slice(&command.to_be_bytes());
    m.extend_from_slice(&cookie.to_be_bytes());
    m.extend_from_slice(&offset.to_be_bytes());
    m.extend_from_slice(&length.to_be_bytes());
    m.extend_from_slice(payload);
    s.write_all(&m).unwrap();
}

/// (error, cookie); reads `data_len` bytes of data after a successful reply.
fn read_reply(s: &mut UnixStream, data_len: usize) -> (u32, u64) {
    let head = read_exact_n(s, 16);
    assert_eq!(be_u32(&head[..4]), 0x6744_6698);
    let error = be_u32(&head[4..8]);
    if error == 0 {
        read_exact_n(s, data_len);
    }
    (error, u64::from_be_bytes(head[8..16].try_into().unwrap()))
}

/// The server has closed the connection (EOF or reset), within the read timeout.
fn assert_closed(s: &mut UnixStream) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue, // replies still in flight before the close
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("connection not closed: {e}"),
        }
    }
}

#[test]
fn hostile_clients_get_errors_or_a_disconnect_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1u64 << 20;
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), size));
    let server = Server::unix(&socket_in(dir.path()), device.clone());

    // Garbage instead of the client flags and options.
    let mut s = server.raw();
    let _ = read_exact_n(&mut s, 18);
    s.write_all(&[0xff; 200]).unwrap();
    assert_closed(&mut s);

    // Not fixed newstyle.
    let mut s = server.raw();
    greet(&mut s, 0);
    assert_closed(&mut s);

    // An option with a 4 GiB length.
    let mut s = server.raw();
    greet(&mut s, 1);
    s.write_all(&IHAVEOPT.to_be_bytes()).unwrap();
    s.write_all(&7u32.to_be_bytes()).unwrap();
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    assert_closed(&mut s);

    // Unknown options, malformed INFO, unknown export: error replies, then GO works.
    let mut s = server.raw();
    greet(&mut s, 0b11);
    send_option(&mut s, 8, &[]); // STRUCTURED_REPLY: we send simple replies only
    assert_eq!(read_option_reply(&mut s).1, 0x8000_0001);
    send_option(&mut s, 0x1234, b"whatever");
    assert_eq!(read_option_reply(&mut s).1, 0x8000_0001);
    send_option(&mut s, 6, &[0, 0, 0, 9, b'x']); // name length past the data
    assert_eq!(read_option_reply(&mut s).1, 0x8000_0003);
    send_option(&mut s, 6, &info_data(b"other", &[]));
    let (_, reply, message) = read_option_reply(&mut s);
    assert_eq!(reply, 0x8000_0006);
    assert!(String::from_utf8_lossy(&message).contains("one export"));
    send_option(&mut s, 3, &[]); // LIST: one export, the default one
    assert_eq!(read_option_reply(&mut s), (3, 2, vec![0, 0, 0, 0]));
    assert_eq!(read_option_reply(&mut s).1, 1);
    let (export_size, flags, sizes) = go(&mut s);
    assert_eq!(export_size, size);
    // HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES, not CAN_MULTI_CONN.
    assert_eq!(flags, 0b110_1101);
    assert_eq!(sizes, [1, 4096, 32 << 20]);

    // Transmission: error replies keep the connection, and invalid requests never reach the
    // device (the server checks ranges itself, overflow included).
    let calls = device.calls.load(Ordering::SeqCst);
    send_request(&mut s, 0, 0, 1, 0, u32::MAX, &[]); // READ longer than the maximum
    assert_eq!(read_reply(&mut s, 0), (22, 1));
    send_request(&mut s, 0, 0, 2, u64::MAX - 100, 4096, &[]); // offset + length overflows
    assert_eq!(read_reply(&mut s, 0), (22, 2));
    send_request(&mut s, 0, 0, 3, size - 100, 4096, &[]); // READ past the end
    assert_eq!(read_reply(&mut s, 0), (22, 3));
    send_request(&mut s, 0, 1, 4, size - 100, 200, &[9; 200]); // WRITE past the end
    assert_eq!(read_reply(&mut s, 0), (28, 4));
    send_request(&mut s, 0, 99, 5, 0, 0, &[]); // unknown command
    assert_eq!(read_reply(&mut s, 0), (22, 5));
    send_request(&mut s, 0, 7, 6, 0, 4096, &[]); // BLOCK_STATUS without structured replies
    assert_eq!(read_reply(&mut s, 0), (22, 6));
    send_request(&mut s, 1 << 3, 0, 7, 0, 4096, &[]); // a flag READ does not take
    assert_eq!(read_reply(&mut s, 0), (22, 7));
    send_request(&mut s, 0, 4, 8, u64::MAX, 1, &[]); // TRIM overflowing
    assert_eq!(read_reply(&mut s, 0), (22, 8));
    assert_eq!(device.calls.load(Ordering::SeqCst), calls);
    send_request(&mut s, 0, 1, 9, 512, 4, b"good"); // and a good write still works
    assert_eq!(read_reply(&mut s, 0), (0, 9));
    send_request(&mut s, 0, 0, 10, 512, 4, &[]);
    let head = read_exact_n(&mut s, 16);
    assert_eq!(be_u32(&head[4..8]), 0);
    assert_eq!(read_exact_n(&mut s, 4), b"good");
    // A WRITE longer than the maximum: its payload is not read, the connection is closed.
    send_request(&mut s, 0, 1, 11, 0, (32 << 20) + 1, &[]);
    assert_closed(&mut s);

    // A request with a wrong magic closes the connection.
    let mut s = server.raw();
    greet(&mut s, 1);
    go(&mut s);
    s.write_all(&[0x42; 28]).unwrap();
    assert_closed(&mut s);

    // NBD_OPT_EXPORT_NAME with NO_ZEROES: size and flags, no 124 zeros; an unknown name closes.
    let mut s = server.raw();
    greet(&mut s, 0b11);
    send_option(&mut s, 1, b"");
    let export = read_exact_n(&mut s, 10);
    assert_eq!(u64::from_be_bytes(export[..8].try_into().unwrap()), size);
    send_request(&mut s, 0, 0, 12, 512, 4, &[]);
    let head = read_exact_n(&mut s, 16); // a reply right after, so no zero padding was sent
    assert_eq!(be_u32(&head[..4]), 0x6744_6698);
    assert_eq!(read_exact_n(&mut s, 4), b"good");
    send_request(&mut s, 0, 2, 13, 0, 0, &[]); // DISCONNECT
    assert_closed(&mut s);
    let mut s = server.raw();
    greet(&mut s, 1);
    send_option(&mut s, 1, b"nope");
    assert_closed(&mut s);

    // ABORT is acknowledged.
    let mut s = server.raw();
    greet(&mut s, 1);
    send_option(&mut s, 2, &[]);
    assert_eq!(read_option_reply(&mut s).1, 1);
    assert_closed(&mut s);

    // After all that, a real client is served.
    if have_qemu() {
        qemu_io_ok(&server.uri, &["write -P 0x77 0 4k", "read -P 0x77 0 4k"]);
    }
    server.stop().unwrap();
}

#[test]
fn shutdown_answers_the_requests_already_read_then_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = FileDevice::create(&dir.path().join("disk"), 1 << 20);
    device.delay = Duration::from_millis(300);
    let device = Arc::new(device);
    let socket = socket_in(dir.path());
    let server = Server::unix(&socket, device.clone());
    let mut s = server.raw();
    greet(&mut s, 1);
    go(&mut s);
    for i in 0..4u64 {
        send_request(&mut s, 0, 1, 100 + i, i * 4096, 4096, &[i as u8 + 1; 4096]);
    }
    // Let the server read them (each takes 300 ms on the device), then stop it.
    std::thread::sleep(Duration::from_millis(100));
    let stopper = std::thread::spawn(move || server.stop());
    let mut cookies: Vec<u64> = (0..4)
        .map(|_| {
            let (error, cookie) = read_reply(&mut s, 0);
            assert_eq!(error, 0);
            cookie
        })
        .collect();
    cookies.sort_unstable();
    assert_eq!(cookies, [100, 101, 102, 103]);
    assert_closed(&mut s);
    stopper.join().unwrap().unwrap();
    let events = device.events();
    let last_write = events.iter().rposition(|e| matches!(e, Event::Write(_)));
    assert_eq!(last_write, Some(3), "{events:?}");
    assert_eq!(events.last(), Some(&Event::Flush), "{events:?}");
    let mut buf = [0u8; 1];
    device.file.read_exact_at(&mut buf, 3 * 4096).unwrap();
    assert_eq!(buf[0], 4);
    assert!(!socket.exists());
}

#[test]
fn shutdown_does_not_hang_on_a_client_that_stops_reading_replies() {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 64 << 20));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let mut s = server.raw();
    greet(&mut s, 1);
    go(&mut s);
    // 256 MiB of replies that are never read: the server's writer blocks on a full socket.
    for i in 0..8 {
        send_request(&mut s, 0, 0, i, 0, 32 << 20, &[]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    server.stop().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop(s);
}

// ---- A real encrypted volume -----------------------------------------------------------------

#[test]
fn a_volume_round_trips_through_qemu_img_and_a_tampered_block_is_eio() {
    use kms_envelope::volume::{Volume, VolumeOptions};
    if !have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keyring = kms_envelope::RawAesKeyring::new("nbd-test", "k", &[7; 32]).unwrap();
    let image = dir.path().join("vol");
    let size = 8u64 << 20;
    let volume = Volume::create(&image, size, &keyring, VolumeOptions::default()).unwrap();
    let source = dir.path().join("source.img");
    let data = pattern(size as usize, 11);
    std::fs::write(&source, &data).unwrap();
    let src = source.to_str().unwrap();

    let socket = socket_in(dir.path());
    let server = Server::unix(&socket, Arc::new(volume));
    convert_in_and_out(src, &server.uri, &dir.path().join("out.img"), &data);
    server.stop().unwrap();
    // The server dropped its handles: the image is unlocked, and what it wrote is durable.
    let volume = Volume::open(&image, &keyring).unwrap();
    let mut back = vec![0u8; size as usize];
    volume.read_at(&mut back, 0).unwrap();
    assert!(back == data, "reopened volume differs");
    volume.close().unwrap();
    // The image holds no plaintext block.
    let raw = std::fs::read(&image).unwrap();
    assert!(!raw.windows(64).any(|w| w == &data[4096..4160]));

    // One flipped bit in block 5's sealed data: that block is EIO over NBD, the others read.
    let info = Volume::info(&image).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    let at = info.data_offset + 5 * 4096 + 100;
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 1], at).unwrap();
    drop(f);
    let volume = Volume::open(&image, &keyring).unwrap();
    let server = Server::unix(&socket, Arc::new(volume));
    let out = qemu_io(&server.uri, &["read 0 20k", "read 20k 4k", "read 24k 1m"]);
    let all = text(&out);
    assert_eq!(all.matches("Input/output error").count(), 1, "{all}");
    assert!(all.contains("read 20480/20480 bytes at offset 0"), "{all}");
    assert!(
        all.contains("read 1048576/1048576 bytes at offset 24576"),
        "{all}"
    );
    server.stop().unwrap();
}

/// The protocol: with NBD_FLAG_SEND_FUA negotiated the server MUST accept FUA on every command
/// (old qemu sends FLUSH|FUA); it is meaningless on READ and FLUSH.
#[test]
fn fua_is_accepted_on_read_and_flush() {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let mut s = server.raw();
    greet(&mut s, 1);
    go(&mut s);
    send_request(&mut s, 0, 1, 1, 0, 4, b"data");
    assert_eq!(read_reply(&mut s, 0), (0, 1));
    send_request(&mut s, 1, 3, 2, 0, 0, &[]); // FLUSH | FUA
    assert_eq!(read_reply(&mut s, 0), (0, 2));
    assert_eq!(device.events().last(), Some(&Event::Flush));
    send_request(&mut s, 1, 0, 3, 0, 4, &[]); // READ | FUA
    let head = read_exact_n(&mut s, 16);
    assert_eq!(be_u32(&head[4..8]), 0);
    assert_eq!(read_exact_n(&mut s, 4), b"data");
    send_request(&mut s, 0, 2, 4, 0, 0, &[]);
    assert_closed(&mut s);
    server.stop().unwrap();
}

/// A device call that panics still gets its reply (EIO), and the connection keeps serving.
#[test]
fn a_device_panic_is_answered_eio() {
    let dir = tempfile::tempdir().unwrap();
    let mut device = FileDevice::create(&dir.path().join("disk"), 1 << 20);
    device.panic_at = Some(8192);
    let server = Server::unix(&socket_in(dir.path()), Arc::new(device));
    let mut s = server.raw();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    greet(&mut s, 1);
    go(&mut s);
    send_request(&mut s, 0, 1, 77, 8192, 4, b"boom");
    assert_eq!(read_reply(&mut s, 0), (5, 77));
    send_request(&mut s, 0, 1, 78, 0, 4, b"good");
    assert_eq!(read_reply(&mut s, 0), (0, 78));
    send_request(&mut s, 0, 2, 79, 0, 0, &[]);
    assert_closed(&mut s);
    server.stop().unwrap();
}

/// The flush after a client disconnects without FLUSH fails (and, like fsync, the next one
/// succeeds): serve() must still report it rather than return Ok.
#[test]
fn a_failed_flush_after_a_disconnect_is_reported_by_serve() {
    let dir = tempfile::tempdir().unwrap();
    let device = FileDevice::create(&dir.path().join("disk"), 1 << 20);
    device.failing_flushes.store(1, Ordering::SeqCst);
    let device = Arc::new(device);
    let server = Server::unix(&socket_in(dir.path()), device.clone());
    let mut s = server.raw();
    greet(&mut s, 1);
    go(&mut s);
    send_request(&mut s, 0, 1, 1, 0, 4096, &[9; 4096]);
    assert_eq!(read_reply(&mut s, 0), (0, 1));
    send_request(&mut s, 0, 2, 2, 0, 0, &[]); // DISCONNECT, no FLUSH
    assert_closed(&mut s);
    // The connection's flush has run (and failed) once its task is done: wait for it.
    let t = Instant::now();
    while device.failing_flushes.load(Ordering::SeqCst) > 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no flush after the disconnect"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
    match server.stop() {
        Err(NbdError::Flush(e)) => assert!(e.to_string().contains("EIO"), "{e}"),
        other => panic!("a failed flush of client writes was not reported: {other:?}"),
    }
    assert_eq!(device.events().last(), Some(&Event::Flush)); // the final flush still ran
}

/// Outside a tokio runtime, binding is a typed error (not a panic) and leaves nothing behind.
#[test]
fn binding_outside_a_runtime_is_an_error_and_leaves_no_socket() {
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_in(dir.path());
    let r = std::panic::catch_unwind(|| NbdListener::bind_unix(&socket).map(|_| ()));
    let err = r
        .expect("bind_unix panicked outside a runtime")
        .unwrap_err();
    assert!(matches!(err, NbdError::NoRuntime), "{err}");
    assert!(err.to_string().contains("tokio runtime"), "{err}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "socket left behind"
    );
    let r = std::panic::catch_unwind(|| {
        NbdListener::bind_tcp("127.0.0.1:0".parse().unwrap(), true).map(|_| ())
    });
    let err = r.expect("bind_tcp panicked outside a runtime").unwrap_err();
    assert!(matches!(err, NbdError::NoRuntime), "{err}");
    // A runtime without I/O: the same error, and the socket file is removed again.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let _enter = rt.enter();
    let r = std::panic::catch_unwind(|| NbdListener::bind_unix(&socket).map(|_| ()));
    let err = r.expect("bind_unix panicked without I/O").unwrap_err();
    assert!(matches!(err, NbdError::NoRuntime), "{err}");
    assert!(
        std::fs::symlink_metadata(&socket).is_err(),
        "socket left behind"
    );
}

/// The socket directory is checked and bound through one open descriptor: someone who can
/// rename entries in its parent and swaps our 0700 directory for an open one (atomically,
/// with RENAME_EXCHANGE) between the check and bind() never gets the socket into theirs.
#[test]
fn a_swapped_socket_directory_never_receives_the_socket() {
    let base = tempfile::tempdir().unwrap();
    let parent = base.path().join("shared");
    std::fs::create_dir(&parent).unwrap();
    let good = parent.join("run");
    let evil = parent.join("evil");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(&evil).unwrap();
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (g, e, st) = (good.clone(), evil.clone(), stop.clone());
    let swapper = std::thread::spawn(move || {
        while !st.load(Ordering::Relaxed) {
            let _ = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &g,
                rustix::fs::CWD,
                &e,
                rustix::fs::RenameFlags::EXCHANGE,
            );
        }
    });
    let rt = runtime();
    let _enter = rt.enter();
    let sock = good.join("nbd.sock");
    let t = Instant::now();
    let (mut tries, mut landed) = (0, 0);
    while t.elapsed() < Duration::from_secs(3) && landed == 0 {
        tries += 1;
        let listener = NbdListener::bind_unix(&sock);
        // Whichever name it has now, the open (0777) directory must not hold the socket.
        // (Looked at through one descriptor each, as the names keep changing.)
        for d in [&good, &evil] {
            let Ok(fd) = rustix::fs::open(d, rustix::fs::OFlags::DIRECTORY, 0.into()) else {
                continue;
            };
            let open = rustix::fs::fstat(&fd).unwrap().st_mode & 0o777 == 0o777;
            let flags = rustix::fs::AtFlags::SYMLINK_NOFOLLOW;
            if open && rustix::fs::statat(&fd, "nbd.sock", flags).is_ok() {
                landed += 1;
            }
        }
        drop(listener);
        for d in [&good, &evil] {
            let _ = std::fs::remove_file(d.join("nbd.sock"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    assert_eq!(
        landed, 0,
        "socket bound inside the open directory ({tries} tries)"
    );
    assert!(tries > 50, "too few tries to mean anything: {tries}");
}

/// Silent clients that queue for the slot are refused within a few seconds, so they cannot
/// keep every waiting place from the next client for long.
#[test]
fn silent_waiting_clients_are_dropped_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device);
    let mut first = server.raw();
    greet(&mut first, 1);
    go(&mut first);
    // Four clients that never speak take every waiting place.
    let silent: Vec<UnixStream> = (0..4).map(|_| server.raw()).collect();
    std::thread::sleep(Duration::from_millis(8500));
    let mut next = server.raw();
    let mut hello = [0u8; 18];
    let got = next.read(&mut hello);
    assert_eq!(
        got.ok(),
        Some(18),
        "a client that came after them got no greeting"
    );
    assert_eq!(&hello[..8], b"NBDMAGIC");
    drop(silent);
    send_request(&mut first, 0, 2, 1, 0, 0, &[]);
    assert_closed(&mut first);
    server.stop().unwrap();
}

/// A client that stops in the middle of a WRITE payload loses the slot after the payload
/// timeout (30 s), and the next client is served.
#[test]
fn a_stalled_write_payload_does_not_hold_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let device = Arc::new(FileDevice::create(&dir.path().join("disk"), 1 << 20));
    let server = Server::unix(&socket_in(dir.path()), device);
    let mut s = server.raw();
    s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
    greet(&mut s, 1);
    go(&mut s);
    send_request(&mut s, 0, 1, 1, 0, 4096, &[1; 100]); // the payload never completes
    let t = Instant::now();
    assert_closed(&mut s);
    assert!(t.elapsed() < Duration::from_secs(38), "{:?}", t.elapsed());
    std::thread::sleep(Duration::from_millis(200));
    let mut other = server.raw();
    greet(&mut other, 1);
    go(&mut other);
    send_request(&mut other, 0, 2, 2, 0, 0, &[]);
    assert_closed(&mut other);
    server.stop().unwrap();
}
