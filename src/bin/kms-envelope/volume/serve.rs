//! `volume serve`: the volume over NBD, in the foreground, until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use kms_envelope::volume::nbd::{NbdError, NbdListener};
use kms_envelope::volume::BlockDevice;

use super::OpenArgs;
use crate::args::AwsArgs;
use crate::exit::{io_error, usage, Failure};
use crate::term::line_to_stderr;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub open: OpenArgs,
    /// A new Unix socket to serve on (mode 0600), in a directory of yours that nobody else can
    /// enter (created mode 0700 if missing). An existing path is refused.
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "listen",
        conflicts_with = "listen"
    )]
    pub socket: Option<PathBuf>,
    /// A loopback TCP address to serve on (127.0.0.1:PORT or [::1]:PORT), with --insecure-tcp:
    /// NBD has no authentication, so every local user can then read the volume.
    #[arg(long, value_name = "ADDR", requires = "insecure_tcp")]
    pub listen: Option<SocketAddr>,
    /// Accept that --listen lets every local user read and write the volume.
    #[arg(long)]
    pub insecure_tcp: bool,
}

pub fn serve(aws: &AwsArgs, a: &ServeArgs) -> Result<(), Failure> {
    let volume = Arc::new(a.open.open(aws)?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| io_error(format!("cannot start the NBD server's runtime: {e}")))?;
    let device: Arc<dyn BlockDevice> = volume.clone();
    let served = runtime.block_on(async {
        // Signals are caught before the socket exists, so none arriving after it is lost.
        let stop = shutdown_signal()?;
        let (listener, url) = match (&a.socket, a.listen) {
            (Some(path), _) => (
                NbdListener::bind_unix(path).map_err(nbd_failure)?,
                // Absolute, so that the URL works from any directory.
                format!(
                    "nbd+unix:///?socket={}",
                    std::path::absolute(path)
                        .unwrap_or_else(|_| path.clone())
                        .display()
                ),
            ),
            (None, Some(addr)) => {
                let l = NbdListener::bind_tcp(addr, a.insecure_tcp).map_err(nbd_failure)?;
                let at = l.local_addr().unwrap_or(addr);
                (l, format!("nbd://{at}"))
            }
            (None, None) => return Err(usage("give --socket PATH or --listen ADDR")),
        };
        line_to_stderr(&format!(
            "kms-envelope: serving {} at {url}; SIGTERM or SIGINT flushes and stops",
            a.open.input.display()
        ));
        listener.serve(device, stop).await.map_err(nbd_failure)
    });
    drop(runtime);
    // The server has flushed; closing also unlocks, and reports what Drop could only try.
    match Arc::try_unwrap(volume) {
        Ok(v) => super::close(v, &a.open.input).and(served),
        Err(_) => served,
    }
}

/// Completes on the first SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, Failure> {
    use tokio::signal::unix::{signal, SignalKind};
    let handler =
        |kind| signal(kind).map_err(|e| io_error(format!("cannot handle SIGTERM and SIGINT: {e}")));
    let mut term = handler(SignalKind::terminate())?;
    let mut int = handler(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

fn nbd_failure(e: NbdError) -> Failure {
    match e {
        NbdError::Io(_) | NbdError::Flush(_) => io_error(e.to_string()),
        _ => usage(e.to_string()),
    }
}
