//! `kruntimes-testenv-container`: the process test Pods run (image
//! `kruntimes.test/container`). Subcommands:
//! - `serve --listen ADDR [--reply TEXT] [--term-file PATH]`: answers every TCP
//!   connection with an HTTP 200 whose body is TEXT (default: $HOSTNAME); on
//!   SIGTERM appends "SIGTERM <host pid>" to PATH and exits 0.
//! - `fetch URL`: HTTP GET (plain http, host resolved via /etc/hosts), prints the body.
//! - `grpc-health --listen ADDR`: a grpc.health.v1 server reporting SERVING.
//! - `api`: in-cluster kube client (env + projected token), prints the server version.
//! - `exit CODE`: exits with CODE.

use std::io::Write;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve {
        #[arg(long)]
        listen: String,
        #[arg(long)]
        reply: Option<String>,
        #[arg(long)]
        term_file: Option<String>,
    },
    Fetch {
        url: String,
    },
    GrpcHealth {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
    Api,
    Exit {
        code: i32,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let code = match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    };
    std::process::exit(code);
}

async fn run(cli: Cli) -> Result<i32, Box<dyn std::error::Error>> {
    match cli.command {
        Cmd::Exit { code } => Ok(code),
        Cmd::Serve {
            listen,
            reply,
            term_file,
        } => {
            let reply = reply
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_default();
            let listener = tokio::net::TcpListener::bind(&listen).await?;
            eprintln!("serving on {listen} (pid {})", std::process::id());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                tokio::select! {
                    _ = term.recv() => {
                        if let Some(path) = &term_file {
                            let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
                            // Our pid is 1 in the container's PID namespace; /proc is
                            // the host's, so /proc/self names the host pid.
                            let host_pid = std::fs::read_link("/proc/self")
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|_| std::process::id().to_string());
                            writeln!(f, "SIGTERM {host_pid}")?;
                        }
                        eprintln!("SIGTERM received, exiting");
                        return Ok(0);
                    }
                    conn = listener.accept() => {
                        let (mut conn, _) = conn?;
                        let reply = reply.clone();
                        tokio::spawn(async move {
                            let mut buf = [0u8; 1024];
                            // Read what the client sent first (HTTP request or nothing).
                            let _ = tokio::time::timeout(
                                std::time::Duration::from_millis(200),
                                conn.read(&mut buf),
                            ).await;
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
                                reply.len()
                            );
                            let _ = conn.write_all(resp.as_bytes()).await;
                        });
                    }
                }
            }
        }
        Cmd::Fetch { url } => {
            let rest = url
                .strip_prefix("http://")
                .ok_or("only http:// URLs are supported")?;
            let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
            let mut conn = tokio::net::TcpStream::connect(hostport).await?;
            conn.write_all(
                format!("GET /{path} HTTP/1.1\r\nhost: {hostport}\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            )
            .await?;
            let mut resp = Vec::new();
            conn.read_to_end(&mut resp).await?;
            let text = String::from_utf8_lossy(&resp);
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
            println!("{body}");
            Ok(0)
        }
        Cmd::GrpcHealth { listen } => {
            let (reporter, service) = tonic_health::server::health_reporter();
            reporter
                .set_service_status("", tonic_health::ServingStatus::Serving)
                .await;
            tonic::transport::Server::builder()
                .add_service(service)
                .serve(listen)
                .await?;
            Ok(0)
        }
        Cmd::Api => {
            let config = kube::Config::incluster()?;
            let client = kube::Client::try_from(config)?;
            let version = client.apiserver_version().await?;
            println!("{}", version.git_version);
            Ok(0)
        }
    }
}
