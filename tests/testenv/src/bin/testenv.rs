//! `kruntimes-testenv up`: starts a control plane and test kubelet by hand for
//! debugging, prints the admin kubeconfig path and waits for Ctrl-C.

use clap::{Parser, Subcommand};
use kruntimes_testenv::{ImageRule, TestEnv, TestEnvOptions};

#[derive(Parser)]
#[command(about = "Real Kubernetes control plane + test kubelet for kruntimes tests")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start etcd, kube-apiserver, kube-controller-manager and a test kubelet;
    /// print the kubeconfig; stop everything on Ctrl-C.
    Up {
        /// Keep the state dir (logs, PKI, kubeconfig) after stopping.
        #[arg(long)]
        keep: bool,
        /// Extra image rule IMAGE=PROGRAM (repeatable): containers using IMAGE
        /// run PROGRAM unless they set `command`.
        #[arg(long = "image", value_name = "IMAGE=PROGRAM")]
        images: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // kube-rs logs every failed request at error level: noise while
            // polling an API server that is still starting.
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> kruntimes_testenv::Result<()> {
    let Command::Up { keep, images } = cli.command;
    if keep {
        // SAFETY: single-threaded at this point; read by ControlPlane::start.
        unsafe { std::env::set_var(kruntimes_testenv::controlplane::KEEP_ENV, "1") };
    }
    let mut opts = TestEnvOptions::default();
    for spec in images {
        let (image, program) =
            spec.split_once('=')
                .ok_or_else(|| kruntimes_testenv::Error::Invalid {
                    field: "--image".into(),
                    value: spec.clone(),
                    reason: "expected IMAGE=PROGRAM".into(),
                })?;
        opts.images.push(ImageRule::command(image, program));
    }
    eprintln!("starting control plane and test kubelet...");
    let env = TestEnv::start(opts).await?;
    let cp = env.control_plane();
    eprintln!("API server:   {}", cp.server_url());
    eprintln!("node:         {}", env.kubelet().node_name());
    eprintln!("state dir:    {}", cp.state_dir().display());
    eprintln!("logs:         {}/logs", cp.state_dir().display());
    eprintln!("kubectl:      {}", cp.binaries().kubectl.display());
    eprintln!(
        "try:          KUBECONFIG={} {} get nodes",
        cp.kubeconfig_path().display(),
        cp.binaries().kubectl.display()
    );
    eprintln!("Ctrl-C stops everything.");
    // stdout carries only the kubeconfig path, for scripts.
    println!("{}", cp.kubeconfig_path().display());
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("stopping...");
    drop(env);
    Ok(())
}
