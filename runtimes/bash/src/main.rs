//! kruntimes-bash-runtime: the built-in bash Runtime Server. Serves
//! `kruntimes.runtime.v1.RuntimeServer` and `grpc.health.v1` on a private Unix
//! socket or a loopback TCP port; stops cleanly on SIGTERM/SIGINT, cancelling
//! running executions with a bounded grace.
mod attach;
mod config;
mod error;
mod execution;
mod executions;
mod handshake;
mod output;
mod pump;
mod reaper;
mod sched;
mod service;
mod spawn;
mod supervisor;
mod validate;
mod workspace;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use kruntimes_proto::quiet::QuietUnixStream;
use kruntimes_proto::runtime::v1::runtime_server_server::RuntimeServerServer;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::config::{Config, ListenAddr};
use crate::executions::{Executions, Limits};
use crate::reaper::Reaper;
use crate::service::Service;
use crate::workspace::Workspace;

/// Requests carry up to 1 MiB of script plus 1 MiB of argv/env; leave room so
/// oversized input gets our clear error rather than a transport error.
const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// How long in-flight RPCs get to finish after executions were stopped.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Listen(String),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServeError {
    let context = context.into();
    move |source| ServeError::Io { context, source }
}

fn main() -> ExitCode {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    // This thread runs the runtime when it has one thread; the runtime's
    // other threads ask for themselves (a new thread starts from the default).
    sched::request_short_slice();
    // One thread by default: the work is I/O bound and small per event,
    // and on the few cores a Runtime Pod has, wake-ups handed between worker
    // threads cost more than they save (measured: about 8 context switches
    // per trivial Run instead of 12-17, and less CPU per Run and per GiB).
    let mut builder = if config.worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.worker_threads as usize);
        b
    };
    let runtime = match builder
        .enable_all()
        .on_thread_start(sched::request_short_slice)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "bash runtime server failed");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), ServeError> {
    // First, before any child exists: become subreaper and start reaping.
    let reaper = Reaper::install().map_err(io_err("installing the child reaper"))?;
    let workspace = Workspace::open(&config.workspace).map_err(io_err(format!(
        "opening workspace {}",
        config.workspace.display()
    )))?;
    let bash = find_bash(config.bash.as_deref());
    let limits = Limits {
        max_running: usize::try_from(config.max_executions).unwrap_or(usize::MAX),
        max_retained: usize::try_from(config.max_retained).unwrap_or(usize::MAX),
        buffer_bytes: usize::try_from(config.buffer_bytes).unwrap_or(usize::MAX),
    };
    // Output pipes can only be handed to a client on this host: one that
    // reaches us through a Unix socket.
    let handoff_socket = match &config.listen {
        ListenAddr::Unix(path) => Some(handoff_path(path)),
        ListenAddr::Tcp(_) => None,
    };
    let execs = Arc::new(Executions::new(
        reaper,
        Arc::new(workspace),
        bash,
        limits,
        handoff_socket.clone(),
    ));

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<RuntimeServerServer<Service>>().await;
    let service = RuntimeServerServer::new(Service::new(Arc::clone(&execs)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let router = Server::builder()
        .add_service(health_service)
        .add_service(service);

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop = async {
        let _ = stop_rx.await;
    };
    let mut socket_path = None;
    let mut server = match &config.listen {
        ListenAddr::Unix(path) => {
            let listener = kruntimes_proto::listen::bind_private_unix(path)
                .map_err(|e| ServeError::Listen(e.to_string()))?;
            socket_path = Some(path.clone());
            if let Some(h) = &handoff_socket {
                let listener = kruntimes_proto::listen::bind_private_unix(h)
                    .map_err(|e| ServeError::Listen(e.to_string()))?;
                tokio::spawn(serve_handoffs(listener, Arc::clone(&execs)));
            }
            tracing::info!(socket = %path.display(), workspace = %execs.workspace().root().display(), "serving");
            tokio::spawn(router.serve_with_incoming_shutdown(
                // Read-only registrations: see kruntimes_proto::quiet.
                UnixListenerStream::new(listener).map(|conn| conn.and_then(QuietUnixStream::new)),
                stop,
            ))
        }
        ListenAddr::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(io_err(format!("binding {addr}")))?;
            let local = listener
                .local_addr()
                .map_err(io_err("reading the bound address"))?;
            tracing::info!(address = %local, workspace = %execs.workspace().root().display(), "serving");
            tokio::spawn(
                router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop),
            )
        }
    };

    let mut sigterm =
        signal(SignalKind::terminate()).map_err(io_err("installing SIGTERM handler"))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(io_err("installing SIGINT handler"))?;
    let early = tokio::select! {
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
        r = &mut server => Some(r),
    };
    if let Some(r) = early {
        remove_socket(socket_path.as_deref());
        remove_socket(handoff_socket.as_deref());
        return match r {
            Ok(r) => r.map_err(ServeError::from),
            Err(e) => Err(ServeError::Listen(format!("server task failed: {e}"))),
        };
    }

    tracing::info!("stop requested");
    health
        .set_not_serving::<RuntimeServerServer<Service>>()
        .await;
    execs
        .shutdown(Duration::from_millis(config.shutdown_grace_ms))
        .await;
    let _ = stop_tx.send(());
    if tokio::time::timeout(SERVER_STOP_TIMEOUT, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("open RPCs did not finish in {SERVER_STOP_TIMEOUT:?}; stopping anyway");
        server.abort();
    }
    remove_socket(socket_path.as_deref());
    remove_socket(handoff_socket.as_deref());
    tracing::info!("stopped");
    Ok(())
}

/// bash for Scripts: the configured path, else `bash` on the server's PATH.
/// A missing bash is not fatal: Handshake reports not ready and says why.
fn find_bash(configured: Option<&Path>) -> PathBuf {
    if let Some(p) = configured {
        return p.to_path_buf();
    }
    let path = std::env::var_os("PATH");
    match spawn::resolve_program("bash", path.as_deref(), Path::new("/")) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "bash not found; Scripts cannot run");
            PathBuf::from("bash")
        }
    }
}

/// The handoff socket beside the gRPC socket `path`: `<path>.handoff`.
fn handoff_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".handoff");
    PathBuf::from(name)
}

/// Answers handoff requests, one task per connection.
async fn serve_handoffs(listener: tokio::net::UnixListener, execs: Arc<Executions>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                let execs = Arc::clone(&execs);
                tokio::spawn(async move {
                    if let Err(e) =
                        kruntimes_proto::handoff::answer(conn, |r| execs.handoff_fd(r)).await
                    {
                        tracing::warn!(error = %e, "handoff request failed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accepting on the handoff socket failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn remove_socket(path: Option<&Path>) {
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}
