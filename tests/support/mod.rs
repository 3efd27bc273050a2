//! The test kit's KMS part: moto's KMS server on a free loopback port, a fault-injecting proxy
//! in front of it (`proxy`), and AWS configuration pointing at either. The rest of the kit needs
//! no AWS and is included by path by the binaries that use it: `vectors` (the public ESDK
//! vectors), `keyrings` (counting, planted, raw), `data` (the generator), `adaptors` (every way
//! to read and write a message), `tamper` (the corpus of altered messages, and the one layout
//! function), `alloc` (a counting allocator). `files` (trees of files, and a run killed
//! mid-tree) and `cli` (the binary aimed at moto) build on this module.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod files;
pub mod proxy;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_kms::config::retry::RetryConfig;
use aws_sdk_kms::config::Credentials;
use kms_envelope::keyring::{KmsKeyring, KmsKeyringBuilder};

/// moto's server as a child process. It also watches its parent and exits when the test binary
/// does, so no server outlives the tests even though statics are never dropped.
pub struct Moto {
    child: Child,
    pub port: u16,
}

const LAUNCH: &str = r#"
import os, sys, threading, time
parent = os.getppid()
def watch():
    while os.getppid() == parent:
        time.sleep(0.2)
    os._exit(0)
threading.Thread(target=watch, daemon=True).start()
from moto.server import main
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"#;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Moto {
    /// Starts moto's server. Panics at once, saying what to install, when `moto.server` does
    /// not import, and as soon as the server exits during start-up (with what it printed).
    pub fn start() -> Moto {
        let check = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdin(Stdio::null())
            .output();
        match check {
            Ok(out) if out.status.success() => {}
            Ok(out) => panic!(
                "moto's server does not import ({}): run scripts/test.sh, which installs it, or \
                 `python3 -m pip install 'moto[server]'`",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!(
                "python3 does not run ({e}): the KMS tests need python3 with moto's server; \
                 scripts/test.sh installs it (`python3 -m pip install 'moto[server]'`)"
            ),
        }
        let port = free_port();
        let log = tempfile::tempfile().expect("a temporary file for moto's output");
        let mut child = Command::new("python3")
            .args(["-c", LAUNCH, &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.try_clone().expect("moto's log"))
            .spawn()
            .expect("python3 with moto[server] (scripts/test.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let mut said = String::new();
                let _ = std::io::Seek::rewind(&mut &log);
                let _ = std::io::Read::read_to_string(&mut &log, &mut said);
                panic!(
                    "moto_server exited during start-up ({status}); it said:\n{}",
                    said.trim()
                );
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not start on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One moto per test binary.
pub fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

/// AWS configuration with static test credentials, aimed at `endpoint`.
pub fn sdk_config(endpoint: &str, region: &str) -> SdkConfig {
    let endpoint = endpoint.to_owned();
    let region = region.to_owned();
    std::thread::spawn(move || {
        tokio::runtime::Runtime::new().unwrap().block_on(
            aws_config::defaults(BehaviorVersion::latest())
                .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
                .region(Region::new(region))
                .endpoint_url(endpoint)
                .load(),
        )
    })
    .join()
    .unwrap()
}

/// A plain KMS client, for setting keys up.
pub fn kms_client(endpoint: &str, region: &str) -> aws_sdk_kms::Client {
    aws_sdk_kms::Client::new(&sdk_config(endpoint, region))
}

/// Runs a future to completion on a fresh runtime (for setup calls from sync tests).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Creates a symmetric key (optionally multi-Region) and returns its ARN.
pub fn create_key(client: &aws_sdk_kms::Client, multi_region: bool) -> String {
    block_on(async {
        client
            .create_key()
            .multi_region(multi_region)
            .description("kms-envelope test key")
            .send()
            .await
            .unwrap()
            .key_metadata
            .unwrap()
            .arn
            .unwrap()
    })
}

/// A fresh symmetric key in this binary's moto, in us-east-1.
pub fn new_key() -> String {
    create_key(&kms_client(&moto().endpoint(), "us-east-1"), false)
}

/// A KMS keyring builder aimed at `endpoint` (moto or a proxy in front of it), with three
/// quick attempts so that throttling tests retry without waiting long.
pub fn kms_builder(endpoint: &str) -> KmsKeyringBuilder {
    KmsKeyring::builder()
        .sdk_config(sdk_config(endpoint, "us-east-1"))
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(3)
                .with_initial_backoff(Duration::from_millis(10)),
        )
}
