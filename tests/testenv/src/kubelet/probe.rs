//! Container probes (readiness, liveness, startup) with the real kubelet's
//! thresholds and timings: exec, httpGet, grpc (grpc.health.v1) and tcpSocket.
//! Network probes connect from inside the Pod to the Pod IP (or `host`), as the
//! real kubelet does, so a server bound only to 127.0.0.1 fails them here too.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::process::{Launch, Namespaces, spawn};
use super::sandbox::Sandbox;

/// Longest HTTP response head read from an httpGet probe.
const MAX_HTTP_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeKind {
    Readiness,
    Liveness,
    Startup,
}

/// A probe outcome reported to the Pod worker when the thresholds flip it.
#[derive(Debug, Clone)]
pub struct ProbeResult {
    pub container: String,
    pub generation: u64,
    pub kind: ProbeKind,
    pub success: bool,
    pub message: String,
}

/// What a probe needs to reach into the container.
#[derive(Clone)]
pub struct ProbeTarget {
    pub sandbox: Arc<Sandbox>,
    pub mount_ns: Arc<OwnedFd>,
    pub pod_ip: IpAddr,
    pub launch: Launch,
    pub env_id: String,
}

/// Runs `probe` until the task is aborted, sending results on threshold changes.
pub async fn run(
    kind: ProbeKind,
    probe: Probe,
    container: Container,
    generation: u64,
    target: ProbeTarget,
    tx: mpsc::UnboundedSender<ProbeResult>,
) {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
    let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
    let (mut successes, mut failures) = (0, 0);
    let mut last: Option<bool> = None;
    loop {
        let outcome =
            match tokio::time::timeout(timeout, probe_once(&probe, &container, &target, timeout))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(format!("probe timed out after {}s", timeout.as_secs())),
            };
        let message = match &outcome {
            Ok(()) => {
                successes += 1;
                failures = 0;
                String::new()
            }
            Err(m) => {
                failures += 1;
                successes = 0;
                m.clone()
            }
        };
        let verdict = if successes >= success_threshold {
            Some(true)
        } else if failures >= failure_threshold {
            Some(false)
        } else {
            None
        };
        if let Some(v) = verdict
            && (last != Some(v) || (!v && kind != ProbeKind::Readiness))
        {
            last = Some(v);
            let _ = tx.send(ProbeResult {
                container: container.name.clone(),
                generation,
                kind,
                success: v,
                message,
            });
            if kind == ProbeKind::Startup && v {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

fn resolve_port(port: &IntOrString, container: &Container) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("invalid probe port {p}: must be 1..=65535")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("probe port {name:?} is not a named port of the container")),
    }
}

fn probe_host(host: Option<&str>, target: &ProbeTarget) -> Result<IpAddr, String> {
    match host.filter(|h| !h.is_empty()) {
        None => Ok(target.pod_ip),
        Some("localhost") => Ok(IpAddr::from([127, 0, 0, 1])),
        Some(h) => h
            .parse()
            .map_err(|_| format!("probe host {h:?} must be an IP address here")),
    }
}

async fn probe_once(
    probe: &Probe,
    container: &Container,
    target: &ProbeTarget,
    timeout: Duration,
) -> Result<(), String> {
    if let Some(exec) = &probe.exec {
        let mut launch = target.launch.clone();
        launch.argv = exec.command.clone().unwrap_or_default();
        let ns = Namespaces {
            net: target.sandbox.net_fd(),
            uts: target.sandbox.uts_fd(),
            mnt: target.mount_ns.as_fd(),
        };
        let mut child =
            spawn(&launch, ns, None, &target.env_id).map_err(|e| format!("exec probe: {e}"))?;
        let pid = child.id();
        let waited =
            tokio::time::timeout(timeout, tokio::task::spawn_blocking(move || child.wait())).await;
        return match waited {
            Ok(Ok(Ok(status))) if status.success() => Ok(()),
            Ok(Ok(Ok(status))) => Err(format!("exec probe failed: {status}")),
            Ok(Ok(Err(e))) => Err(format!("exec probe: {e}")),
            Ok(Err(e)) => Err(format!("exec probe: {e}")),
            Err(_) => {
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err(format!("exec probe timed out after {}s", timeout.as_secs()))
            }
        };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::new(
            probe_host(tcp.host.as_deref(), target)?,
            resolve_port(&tcp.port, container)?,
        );
        target
            .sandbox
            .connect(addr, timeout)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        return Ok(());
    }
    if let Some(http) = &probe.http_get {
        if http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"))
        {
            return Err("HTTPS probes are not supported by the test kubelet".into());
        }
        let addr = SocketAddr::new(
            probe_host(http.host.as_deref(), target)?,
            resolve_port(&http.port, container)?,
        );
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut head = format!("GET {path} HTTP/1.1\r\n");
        let headers = http.http_headers.clone().unwrap_or_default();
        if !headers.iter().any(|h| h.name.eq_ignore_ascii_case("host")) {
            head.push_str(&format!("Host: {addr}\r\n"));
        }
        if !headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("user-agent"))
        {
            head.push_str("User-Agent: kube-probe/1.34\r\n");
        }
        for h in &headers {
            head.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        head.push_str("Accept: */*\r\nConnection: close\r\n\r\n");
        let mut stream = target
            .sandbox
            .connect(addr, timeout)
            .await
            .map_err(|e| format!("dial tcp {addr}: {e}"))?;
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("http probe write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") && buf.len() < MAX_HTTP_HEAD {
            let n = stream
                .read(&mut chunk)
                .await
                .map_err(|e| format!("http probe read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        let code: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("http probe: malformed response {:?}", line.lines().next()))?;
        return if (200..400).contains(&code) {
            Ok(())
        } else {
            Err(format!("HTTP probe failed with statuscode: {code}"))
        };
    }
    if let Some(grpc) = &probe.grpc {
        let port = u16::try_from(grpc.port)
            .map_err(|_| format!("invalid grpc probe port {}", grpc.port))?;
        let addr = SocketAddr::new(target.pod_ip, port);
        let sandbox = target.sandbox.clone();
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| e.to_string())?;
        let channel = endpoint
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let sandbox = sandbox.clone();
                async move {
                    let s = sandbox.connect(addr, timeout).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(s))
                }
            }))
            .await
            .map_err(|e| format!("grpc probe: failed to connect service {addr:?}: {e}"))?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp = client
            .check(tonic_health::pb::HealthCheckRequest {
                service: grpc.service.clone().unwrap_or_default(),
            })
            .await
            .map_err(|e| format!("grpc probe: {e}"))?
            .into_inner();
        return if resp.status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        {
            Ok(())
        } else {
            Err(format!(
                "service unhealthy (responded with {})",
                resp.status
            ))
        };
    }
    Err("probe has no handler".into())
}
