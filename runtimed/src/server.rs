//! Wires runtimed together: directories, Runtime Servers (external or
//! supervised built-ins), the gRPC API with health and reflection on loopback
//! TCP and an optional Unix socket, metrics, and graceful shutdown.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::runtime_server::{Address, RuntimeServer};
use crate::service::{Service, State};
use crate::supervisor::{ServerCommand, supervise};
use kruntimes_proto::runtimed::v1::runtimed_server::RuntimedServer;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{Semaphore, watch};
use tonic::service::Routes;
use tonic::transport::Server;

/// How long shutdown waits to send the Forgets still queued for an external
/// Runtime Server.
const FLUSH_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// The longest `--shutdown-grace-ms` the built-in servers accept.
const LOCAL_SHUTDOWN_GRACE_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// The grace a built-in server gives its Runs when it stops: runtimed's
/// default grace, as a Cancel would give them, up to the servers' bound.
fn local_shutdown_grace(cfg: &Config) -> std::time::Duration {
    cfg.run_grace().min(LOCAL_SHUTDOWN_GRACE_MAX)
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bash server binary: flag, else next to this executable, else PATH.
fn bash_server_program(cfg: &Config) -> PathBuf {
    if let Some(p) = &cfg.bash_server {
        return p.clone();
    }
    const NAME: &str = "kruntimes-bash-runtime";
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let sibling = dir.join(NAME);
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from(NAME)
}

fn local_command(cfg: &Config, runtime: &str, socket: &Path) -> Result<ServerCommand, BoxError> {
    let listen = OsString::from(format!("unix:{}", socket.display()));
    let workspace = cfg.workspace().into_os_string();
    let mut args: Vec<OsString>;
    let program = match runtime {
        "bash" => {
            args = vec![];
            bash_server_program(cfg)
        }
        "python" => {
            args = vec!["-m".into(), "kruntimes_runtime".into()];
            if let Some(p) = &cfg.python_preload {
                args.push("--preload".into());
                args.push(p.into());
            }
            cfg.python.clone()
        }
        other => {
            return Err(format!(
                "--local-runtimes names {other:?}; the built-in runtimes are bash and python"
            )
            .into());
        }
    };
    // Runs still running when runtimed stops get that grace, and the
    // server the time to use it.
    let grace = local_shutdown_grace(cfg);
    args.extend([
        "--listen".into(),
        listen,
        "--workspace".into(),
        workspace,
        "--shutdown-grace-ms".into(),
        grace.as_millis().to_string().into(),
    ]);
    Ok(ServerCommand {
        program,
        args,
        socket: socket.to_path_buf(),
        stop_grace: crate::supervisor::stop_grace(grace),
    })
}

/// Runs runtimed until SIGTERM or SIGINT.
pub async fn serve(cfg: Config) -> Result<(), BoxError> {
    let workspace = cfg.workspace();
    let mut dirs = vec![cfg.data_dir.clone(), cfg.spool_dir(), workspace.clone()];
    // The default store lives in the data directory; a configured one (a PVC
    // mount, a bucket) must exist already.
    if cfg.artifact_store.is_none() {
        dirs.push(cfg.data_dir.join("artifacts"));
    }
    for dir in &dirs {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create directory {}: {e}", dir.display()))?;
    }
    let metrics_addr = cfg.metrics_addr()?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    let mut runtimes = BTreeMap::new();
    // Awaited at shutdown: a supervisor dropped mid-stop would leave its
    // server unreaped and the Runs it had not killed yet running.
    let mut supervisors = tokio::task::JoinSet::new();
    let supervised = cfg.runtimes.is_empty();
    if supervised {
        let sockets = cfg.socket_dir();
        std::fs::create_dir_all(&sockets)?;
        std::fs::set_permissions(&sockets, std::fs::Permissions::from_mode(0o700))?;
        for name in &cfg.local_runtimes {
            let socket = sockets.join(format!("{name}.sock"));
            let cmd = local_command(&cfg, name, &socket)?;
            let server = Arc::new(RuntimeServer::new(name.clone(), Address::Unix(socket))?);
            supervisors.spawn(supervise(server.clone(), cmd, shutdown_rx.clone()));
            runtimes.insert(name.clone(), server);
        }
    } else {
        for spec in &cfg.runtimes {
            let (name, addr) = spec.split_once('=').ok_or_else(|| {
                format!("--runtime {spec:?} must be NAME=ADDRESS (e.g. bash=unix:/run/kruntimes/bash.sock)")
            })?;
            crate::validate::run_id("--runtime name", name).map_err(|e| e.to_string())?;
            let address = Address::parse(addr).map_err(|e| format!("--runtime {name}: {e}"))?;
            let server = Arc::new(RuntimeServer::new(name.to_string(), address)?);
            let probe = server.clone();
            tokio::spawn(async move { probe.probe_forever().await });
            runtimes.insert(name.to_string(), server);
        }
    }

    for server in runtimes.values() {
        tokio::spawn(crate::forgets::run(server.clone()));
    }

    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = metrics_addr {
        let m = metrics.clone();
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listener, m).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }

    let journal = cfg.records_journal();
    let (records, saved) = crate::records::Records::open(&journal).map_err(|e| {
        format!(
            "cannot open the run records journal {}: {e}",
            journal.display()
        )
    })?;
    let runs = crate::run::Registry::new(metrics.spool_files_recycled.clone());
    let state = Arc::new(State {
        runs: Arc::new(runs),
        runtimes,
        supervised,
        permits: Arc::new(Semaphore::new(cfg.max_runs as usize)),
        max_runs: cfg.max_runs,
        metrics,
        spool_dir: cfg.spool_dir(),
        records: Arc::new(records),
        workspace: crate::workspace::Workspace::new(workspace.clone()),
        log_cap: cfg.log_cap_bytes,
        artifacts: Arc::new(crate::collect::Artifacts::from_config(&cfg)?),
        spool_budget: cfg.spool_budget_bytes,
        max_finished_runs: cfg.max_finished_runs as usize,
        grace_period_ms: cfg.grace_period_ms,
        tidy: Default::default(),
    });
    let leftovers = crate::shelf::Shelf::clear_leftovers(&cfg.spool_dir());
    if leftovers > 0 {
        tracing::info!(
            files = leftovers,
            "deleted recycled spool files left by an earlier runtimed"
        );
    }
    let known: std::collections::HashSet<&str> = saved.iter().map(|r| r.id.as_str()).collect();
    let unclaimed = state.workspace.remove_unclaimed(|id| known.contains(id));
    if unclaimed > 0 {
        tracing::info!(
            runs = unclaimed,
            "removed the empty workspace directories of runs that were never started"
        );
    }
    crate::recovery::recover(&state, &cfg, saved);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<RuntimedServer<Service>>()
        .await;
    // Per-runtime readiness as gRPC health services named `runtime/<name>`,
    // so probes and `krt local` can wait for a specific runtime.
    for (name, server) in &state.runtimes {
        let reporter = health_reporter.clone();
        let service = format!("runtime/{name}");
        let mut health = server.subscribe();
        tokio::spawn(async move {
            loop {
                let status = if health.borrow_and_update().ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(&service, status).await;
                if health.changed().await.is_err() {
                    return;
                }
            }
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(kruntimes_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let api = RuntimedServer::new(Service(state.clone()))
        .max_decoding_message_size(crate::runtime_server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(crate::runtime_server::MAX_MESSAGE_BYTES);
    let routes = Routes::new(api)
        .add_service(health_service)
        .add_service(reflection)
        .prepare();

    let builder = || {
        Server::builder()
            .tcp_nodelay(true)
            // Large windows: output streams are bulk transfers.
            .initial_stream_window_size(4 << 20)
            .initial_connection_window_size(8 << 20)
            .trace_fn(|req| tracing::info_span!("grpc", path = %req.uri().path()))
    };

    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    tracing::info!(addr = %tcp.local_addr()?, "runtimed API listening");
    let mut tasks = tokio::task::JoinSet::new();
    {
        let routes = routes.clone();
        let mut rx = shutdown_rx.clone();
        // A custom incoming stream ignores the builder's tcp_nodelay: set it
        // here, or Nagle adds ~40 ms to every small response.
        let incoming = tonic::transport::server::TcpIncoming::from(tcp).with_nodelay(Some(true));
        tasks.spawn(async move {
            builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }
    if let Some(path) = &cfg.unix_socket {
        let listener = kruntimes_proto::listen::bind_private_unix(path)
            .map_err(|e| format!("cannot listen on {}: {e}", path.display()))?;
        tracing::info!(path = %path.display(), "runtimed API listening on unix socket");
        let mut rx = shutdown_rx.clone();
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        tasks.spawn(async move {
            builder()
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = rx.wait_for(|s| *s).await;
                })
                .await
        });
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let failed: Option<BoxError> = tokio::select! {
        _ = term.recv() => {
            tracing::info!("SIGTERM: shutting down");
            None
        }
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("SIGINT: shutting down");
            None
        }
        Some(r) = tasks.join_next() => match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.into()),
            Err(e) => Some(e.into()),
        },
    };
    // Runs that finished just before: saved, cleaned up and queued to be
    // forgotten before the servers go.
    state.tidy.finish_all(FLUSH_PATIENCE).await;
    state.workspace.discard_prenamed();
    if !state.supervised {
        // External servers outlive runtimed: what it has not forgotten yet
        // they would keep until their own restart.
        for server in state.runtimes.values() {
            let flush = crate::forgets::flush(server);
            if tokio::time::timeout(FLUSH_PATIENCE, flush).await.is_err() {
                tracing::warn!(runtime = %server.name, "could not forget finished executions before shutting down");
            }
        }
    }
    let _ = shutdown_tx.send(true);
    // Servers stop accepting; supervisors stop their Runtime Servers, which
    // end their Runs (SIGTERM, the grace, SIGKILL to each group) first.
    let deadline = tokio::time::sleep(
        crate::supervisor::stop_grace(local_shutdown_grace(&cfg))
            + std::time::Duration::from_secs(2),
    );
    tokio::pin!(deadline);
    while !(tasks.is_empty() && supervisors.is_empty()) {
        tokio::select! {
            _ = tasks.join_next(), if !tasks.is_empty() => {}
            _ = supervisors.join_next(), if !supervisors.is_empty() => {}
            _ = &mut deadline => {
                tracing::warn!(
                    api = tasks.len(),
                    runtime_servers = supervisors.len(),
                    "shutdown deadline passed with these still stopping; exiting anyway"
                );
                break;
            }
        }
    }
    if state.supervised {
        // The Runs the servers ended on the way out: each gives its permit
        // back once it is finished, then saves at once (finish_all above
        // told the bookkeeping not to wait any more).
        let all = state.permits.acquire_many(state.max_runs);
        if tokio::time::timeout(FLUSH_PATIENCE, all).await.is_err() {
            tracing::warn!(
                "runs ended by the runtime servers' stop did not all finish before shutdown"
            );
        }
        state.tidy.finish_all(FLUSH_PATIENCE).await;
    }
    if let Some(path) = &cfg.unix_socket {
        let _ = std::fs::remove_file(path);
    }
    failed.map_or(Ok(()), Err)
}
