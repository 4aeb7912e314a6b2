//! A connection to one Runtime Server (bash, python or custom) and what
//! runtimed knows of its health. Local-mode servers are kept healthy by the
//! supervisor; external ones are probed with the readiness handshake.

use crate::forgets::Forgets;
pub use kruntimes_proto::address::Address;
use kruntimes_proto::runtime::v1 as rpb;
use rpb::runtime_server_client::RuntimeServerClient;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Messages up to this size; chunks are at most 256 KiB, so this is headroom.
pub const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// Health of a Runtime Server as runtimed sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    /// Why not ready, for error messages.
    pub reason: String,
    /// Bumped each time the server (re)starts: executions started under an
    /// older generation are gone.
    pub generation: u64,
    /// Workspace root the server reported in its handshake.
    pub workspace_root: String,
    /// Where to take handed-off output pipes; only for a server reached
    /// through a Unix socket (so on this host) that offers one.
    pub handoff_socket: Option<std::path::PathBuf>,
}

pub struct RuntimeServer {
    pub name: String,
    pub address: Address,
    client: RuntimeServerClient<Channel>,
    health: watch::Sender<Health>,
    forgets: Forgets,
}

impl RuntimeServer {
    pub fn new(name: String, address: Address) -> Result<RuntimeServer, tonic::transport::Error> {
        let client = RuntimeServerClient::new(address.channel()?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let health = watch::channel(Health {
            ready: false,
            reason: format!("no handshake yet with the runtime server at {address}"),
            generation: 0,
            workspace_root: String::new(),
            handoff_socket: None,
        })
        .0;
        Ok(RuntimeServer {
            name,
            address,
            client,
            health,
            forgets: Forgets::default(),
        })
    }

    pub fn client(&self) -> RuntimeServerClient<Channel> {
        self.client.clone()
    }

    /// Finished executions waiting to be forgotten (see `forgets::run`).
    pub fn forgets(&self) -> &Forgets {
        &self.forgets
    }

    pub fn health(&self) -> Health {
        self.health.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Health> {
        self.health.subscribe()
    }

    pub fn set_health(&self, f: impl FnOnce(&mut Health)) {
        self.health.send_if_modified(|h| {
            let before = h.clone();
            f(h);
            *h != before
        });
    }

    /// Calls the readiness handshake once, bounded in time.
    pub async fn handshake(&self) -> Result<rpb::HandshakeResponse, String> {
        let mut client = self.client();
        let req = rpb::HandshakeRequest {
            protocol_version: rpb::ProtocolVersion::V1.into(),
        };
        match tokio::time::timeout(Duration::from_secs(5), client.handshake(req)).await {
            Err(_) => Err(format!(
                "runtime server at {} did not answer the handshake within 5s",
                self.address
            )),
            Ok(Err(s)) => Err(format!(
                "runtime server at {} is not reachable: {}",
                self.address,
                s.message()
            )),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }

    /// Applies a handshake result to the health state.
    pub fn record_handshake(
        &self,
        result: Result<rpb::HandshakeResponse, String>,
        new_generation: bool,
    ) {
        self.set_health(|h| {
            match result {
                Ok(r) if r.ready => {
                    h.ready = true;
                    h.reason.clear();
                    h.workspace_root = r.workspace_root;
                    h.handoff_socket = match &self.address {
                        Address::Unix(_) if !r.handoff_socket.is_empty() => {
                            Some(r.handoff_socket.into())
                        }
                        _ => None,
                    };
                }
                Ok(r) => {
                    h.ready = false;
                    h.reason = format!(
                        "runtime server at {} says it is not ready: {}",
                        self.address, r.message
                    );
                }
                Err(e) => {
                    h.ready = false;
                    h.reason = e;
                }
            }
            if new_generation {
                h.generation += 1;
            }
        });
    }

    /// For servers runtimed does not supervise: handshake until ready, then
    /// re-check periodically so an outage is noticed.
    pub async fn probe_forever(&self) {
        loop {
            let r = self.handshake().await;
            let ok = matches!(&r, Ok(h) if h.ready);
            let was_ready = self.health().ready;
            if ok != was_ready {
                match &r {
                    Ok(_) if ok => {
                        tracing::info!(runtime = %self.name, address = %self.address, "runtime server ready")
                    }
                    Ok(h) => {
                        tracing::warn!(runtime = %self.name, message = %h.message, "runtime server not ready")
                    }
                    Err(e) => {
                        tracing::warn!(runtime = %self.name, error = %e, "runtime server unreachable")
                    }
                }
            }
            self.record_handshake(r, false);
            let pause = if ok { 5_000 } else { 500 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }
}
