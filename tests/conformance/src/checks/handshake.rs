//! Handshake: the server says it is ready, which protocol it speaks, its
//! runtime name and an existing absolute workspace root.
use kruntimes_proto::runtime::v1::{HandshakeRequest, ProtocolVersion};

use crate::{Failure, ServerUnderTest, ensure};

/// Handshake answers ready, PROTOCOL_VERSION_V1, a non-empty runtime name, an
/// absolute workspace_root that exists, and a max_executions of 0 (no own
/// limit) or at least 50 (the concurrency check needs 50).
pub async fn handshake(s: &ServerUnderTest) -> Result<(), Failure> {
    let h = s
        .client()
        .handshake(HandshakeRequest {
            protocol_version: ProtocolVersion::V1 as i32,
        })
        .await
        .map_err(Failure::rpc("Handshake"))?
        .into_inner();
    ensure!(h.ready, "Handshake not ready: {}", h.message);
    ensure!(
        h.protocol_version == ProtocolVersion::V1 as i32,
        "Handshake protocol_version {} (want {})",
        h.protocol_version,
        ProtocolVersion::V1 as i32
    );
    ensure!(!h.runtime.is_empty(), "Handshake runtime name is empty");
    let root = std::path::Path::new(&h.workspace_root);
    ensure!(
        root.is_absolute(),
        "workspace_root {:?} is not absolute",
        h.workspace_root
    );
    ensure!(
        root.is_dir(),
        "workspace_root {:?} is not an existing directory",
        h.workspace_root
    );
    ensure!(
        h.max_executions == 0 || h.max_executions >= 50,
        "max_executions {} is below the 50 concurrent executions the suite runs",
        h.max_executions
    );
    Ok(())
}
