//! `kruntimes-test-kubelet`: the test kubelet as a standalone process, for a
//! control plane started elsewhere (e.g. `kruntimes-testenv up` without its
//! embedded kubelet, or to debug Pods by hand). Needs root (namespaces, mounts).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::Parser;
use kruntimes_testenv::{Error, ImageRule, Kubelet, KubeletConfig, Result};

#[derive(Parser)]
#[command(about = "Test kubelet: runs Pods bound to its Node as local processes")]
struct Cli {
    /// Kubeconfig with rights to manage nodes, leases, pods, events and tokens.
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: PathBuf,
    /// YAML/JSON KubeletConfig (nodeName, stateDir, images, back-off, ...).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides nodeName.
    #[arg(long)]
    node_name: Option<String>,
    /// Overrides stateDir (default /tmp/kruntimes-test-kubelet).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Extra image rule IMAGE=PROGRAM (repeatable).
    #[arg(long = "image", value_name = "IMAGE=PROGRAM")]
    images: Vec<String>,
    /// Host address Pods' API traffic goes to (default: the kubeconfig's server).
    #[arg(long)]
    api_server: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube-rs logs every failed request at error level: noise while
            // polling an API server that is still starting.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client::client::builder=off".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let mut cfg = match &cli.config {
        Some(path) => KubeletConfig::from_file(path)?,
        None => KubeletConfig::new("/tmp/kruntimes-test-kubelet"),
    };
    if let Some(n) = cli.node_name {
        cfg.node_name = n;
    }
    if let Some(d) = cli.state_dir {
        cfg.state_dir = d;
    }
    for spec in &cli.images {
        let (image, program) = spec.split_once('=').ok_or_else(|| Error::Invalid {
            field: "--image".into(),
            value: spec.clone(),
            reason: "expected IMAGE=PROGRAM".into(),
        })?;
        cfg.map_image(ImageRule::command(image, program));
    }
    cfg.validate()?;
    let client = kruntimes_testenv::kubeconfig::client_from(&cli.kubeconfig).await?;
    let api = match cli.api_server {
        Some(a) => a,
        None => api_server_of(&cli.kubeconfig)?,
    };
    let env_id = format!("kubelet-{}", std::process::id());
    let kubelet = Kubelet::start(client, cfg, api, &env_id).await?;
    tracing::info!(
        node = kubelet.node_name(),
        "test kubelet running; Ctrl-C stops it"
    );
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("stopping pods");
    kubelet.shutdown().await;
    Ok(())
}

/// host:port of the kubeconfig's current cluster.
fn api_server_of(path: &std::path::Path) -> Result<SocketAddr> {
    let kc = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(format!("reading {}: {e}", path.display())))?;
    let ctx_name = kc.current_context.clone().unwrap_or_default();
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref().map(|c| c.cluster.clone()))
        .unwrap_or_default();
    let server = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref().and_then(|c| c.server.clone()))
        .ok_or_else(|| Error::Kubeconfig("no server for the current context".into()))?;
    let hostport = server
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::invalid("server", server.clone(), "must be host:port"))
}
