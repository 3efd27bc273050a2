//! A loopback HTTP proxy between the SDK and moto that forwards each request, or answers it
//! with KMS's own JSON error document, resets the connection, or stalls, as a test decides.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// The KMS operation, from `X-Amz-Target` (`Decrypt`, `GenerateDataKey`, …).
    pub operation: String,
    /// The JSON body.
    pub body: String,
}

/// What to do with a request.
#[derive(Debug, Clone)]
pub enum Fault {
    Forward,
    /// Answer with this HTTP status and KMS error type.
    Error(u16, &'static str),
    /// Close the connection without answering.
    Reset,
    /// Wait this long, then forward.
    Delay(Duration),
}

type Decide = dyn Fn(&Request) -> Fault + Send + Sync;

pub struct Proxy {
    pub port: u16,
    /// Every request seen, in order.
    pub log: Arc<Mutex<Vec<Request>>>,
    pub faults: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn start(
        upstream: u16,
        decide: impl Fn(&Request) -> Fault + Send + Sync + 'static,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let faults = Arc::new(AtomicUsize::new(0));
        let decide: Arc<Decide> = Arc::new(decide);
        let (log2, faults2) = (log.clone(), faults.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (decide, log, faults) = (decide.clone(), log2.clone(), faults2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &*decide, &log, &faults);
                });
            }
        });
        Proxy { port, log, faults }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// How many requests of `operation` passed through (forwarded or not).
    pub fn count(&self, operation: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.operation == operation)
            .count()
    }
}

fn read_head(conn: &mut TcpStream) -> std::io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok(Some((buf, rest)));
        }
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn serve(
    mut conn: TcpStream,
    upstream: u16,
    decide: &Decide,
    log: &Mutex<Vec<Request>>,
    faults: &AtomicUsize,
) -> std::io::Result<()> {
    let Some((head, mut body)) = read_head(&mut conn)? else {
        return Ok(());
    };
    let head = String::from_utf8_lossy(&head).into_owned();
    let len: usize = header(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while body.len() < len {
        let mut chunk = vec![0u8; len - body.len()];
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let operation = header(&head, "x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let request = Request {
        operation,
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    log.lock().unwrap().push(request.clone());
    match decide(&request) {
        Fault::Forward => {}
        Fault::Delay(d) => std::thread::sleep(d),
        Fault::Reset => {
            faults.fetch_add(1, Ordering::SeqCst);
            return conn.shutdown(Shutdown::Both);
        }
        Fault::Error(status, kind) => {
            faults.fetch_add(1, Ordering::SeqCst);
            let doc =
                format!(r#"{{"__type":"{kind}","message":"injected {kind} by the test proxy"}}"#);
            let reply = format!(
                "HTTP/1.1 {status} Error\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 x-amzn-RequestId: 00000000-0000-0000-0000-000000000000\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{doc}",
                doc.len()
            );
            conn.write_all(reply.as_bytes())?;
            return conn.shutdown(Shutdown::Both);
        }
    }
    // Forward with `Connection: close`, relay the answer until the server closes.
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    let mut out = String::new();
    for line in head.trim_end().lines() {
        if !line.to_ascii_lowercase().starts_with("connection:") {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(&body)?;
    let mut reply = Vec::new();
    up.read_to_end(&mut reply)?;
    conn.write_all(&reply)?;
    conn.shutdown(Shutdown::Both)
}
